//! End-to-end encryption on the call page, in Chromium (see tests/browser.rs
//! for the driver): the page's WebCrypto implementation against the RFC
//! vectors, an encrypted call between browsers whose keys change when the
//! host removes someone, and a browser and the native client decrypting
//! each other across a cascade link. Skipped loudly without Chromium,
//! failed instead when RR_REQUIRE_BROWSER=1.

mod support;

use std::sync::Mutex;
use std::time::{Duration, Instant};

use residency_relay::client::e2ee::{self, Group, Secret};
use residency_relay::client::frames::{MAX_DATAGRAM, Packetizer, Reassembler};
use residency_relay::wire::control::{ServerMessage, TrackKind};
use residency_relay::wire::datagram::{self, HEADER_LEN};
use serde_json::{Value, json};
use support::browser::{Browser, decoded, host_invite, in_call, link, runtime};
use support::cluster::{self, ACME, Cluster};

static ONE_AT_A_TIME: Mutex<()> = Mutex::new(());

const ROUTER: &str = "de-fra-router";

fn e2ee_conference(rt: &tokio::runtime::Runtime, router: &str) -> Value {
    let conf = rt.block_on(cluster::create(
        router,
        ACME,
        json!({"residency": "eu", "waiting_room": false, "e2ee": true}),
    ));
    assert_eq!(conf["e2ee"], true);
    conf
}

fn guest_link(router: &str, conf: &Value, key: Option<&Secret>) -> String {
    let mut url = link(router, conf);
    if let Some(k) = key {
        url.push_str(&format!("&k={}", k.to_base64()));
    }
    url
}

/// A host's link to conference `id` on `router`: a host invitation and
/// the key, both in the fragment.
fn host_link(rt: &tokio::runtime::Runtime, router: &str, id: &str, key: &Secret) -> String {
    let invite = host_invite(rt, router, id);
    format!("{router}/j/{id}#i={invite}&k={}", key.to_base64())
}

fn decrypted(s: &Value, participant: &str, kind: &str) -> u64 {
    s["peers"][participant][kind]["decrypted"]
        .as_u64()
        .unwrap_or(0)
}

fn failures(s: &Value, participant: &str, kind: &str) -> u64 {
    s["peers"][participant][kind]["decryptFailures"]
        .as_u64()
        .unwrap_or(0)
}

#[test]
fn the_page_passes_the_rfc_9605_and_rfc_9180_vectors_in_chromium() {
    let _one = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    let Some(mut b) = Browser::launch() else {
        return;
    };
    let rt = runtime();
    let c = rt.block_on(Cluster::running(ROUTER, &[]));
    let router = c.url(ROUTER);
    b.open("v", &format!("{router}/"), None);
    let dir = support::repo().join("tests");
    let body = std::fs::read_to_string(dir.join("browser/e2ee_vectors.js")).unwrap();
    // The files' texts, not parsed: some numbers exceed 2^53.
    let text = |name: &str| {
        serde_json::to_string(&std::fs::read_to_string(dir.join("vectors").join(name)).unwrap())
            .unwrap()
    };
    let js = format!(
        "import('/static/e2ee.js').then((m) => (async (m, sframe, hpke) => {{\n{body}\n}})(m, {}, {}))",
        text("rfc9605.json"),
        text("rfc9180-base-x25519-sha256-aes128gcm.json"),
    );
    let result = b.eval("v", &js);
    assert_eq!(result["failures"], json!([]), "{result:#}");
    let checked = &result["checked"];
    let n = |k: &str| checked[k].as_u64().unwrap_or(0);
    // Given the texts, every header vector is read exactly.
    assert_eq!(n("header"), 289, "{checked:#}");
    assert_eq!(n("header_rounded"), 0, "{checked:#}");
    assert!(
        n("sframe") >= 1,
        "the AES_128_GCM_SHA256_128 vector: {checked:#}"
    );
    assert!(
        n("hpke_open") >= 257 && n("hpke_seal") >= 257,
        "{checked:#}"
    );
    assert!(
        n("hpke_derive_key_pair") >= 1 && n("hpke_export") >= 3,
        "{checked:#}"
    );
    assert!(n("scheme_round_trip") >= 1, "{checked:#}");
    rt.block_on(c.shutdown());
}

#[test]
fn an_encrypted_call_between_browsers_changes_keys_when_the_host_removes_someone() {
    let _one = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    let Some(mut b) = Browser::launch() else {
        return;
    };
    let rt = runtime();
    let c = rt.block_on(Cluster::running(ROUTER, &["de-fra-1"]));
    let router = c.url(ROUTER);
    let conf = e2ee_conference(&rt, &router);
    let id = conf["id"].as_str().unwrap().to_owned();
    let key = Secret::random().unwrap();

    // Without the key the page does not join the media, and says why.
    b.join("nokey", &guest_link(&router, &conf, None), "Nina", None);
    b.wait_for("nokey", Duration::from_secs(20), "the no-key message", |s| {
        s["message"]
            == "This call is end-to-end encrypted and your link has no key. Ask the host for the full link."
    });
    b.close("nokey");

    b.join("host", &host_link(&rt, &router, &id, &key), "Hana", None);
    b.join("bob", &guest_link(&router, &conf, Some(&key)), "Bob", None);
    b.join(
        "carol",
        &guest_link(&router, &conf, Some(&key)),
        "Carol",
        None,
    );
    let mut ids = Vec::new();
    for page in ["host", "bob", "carol"] {
        let s = b.wait_for(page, Duration::from_secs(30), "in call", in_call);
        assert_eq!(s["e2ee"]["enabled"], true, "{page}");
        ids.push(s["participant"].as_str().unwrap().to_owned());
    }
    // The key left the address bar with the rest of the fragment.
    let shown = b.cmd(json!({"op": "url", "page": "bob"}));
    assert!(!shown.as_str().unwrap().contains('#'), "{shown}");
    let (hana, bob, carol) = (ids[0].clone(), ids[1].clone(), ids[2].clone());
    for (page, others) in [
        ("host", [&bob, &carol]),
        ("bob", [&hana, &carol]),
        ("carol", [&hana, &bob]),
    ] {
        b.wait_for(
            page,
            Duration::from_secs(60),
            "encrypted media from both others decoded, badge shown",
            |s| {
                others
                    .iter()
                    .all(|o| decoded(s, o, "video") >= 30 && decrypted(s, o, "video") >= 30)
                    && s["e2ee"]["badge"] == true
            },
        );
    }
    let codes: Vec<Value> = ["host", "bob", "carol"]
        .iter()
        .map(|p| b.snapshot(p)["e2ee"]["safetyCode"].clone())
        .collect();
    assert!(
        codes[0].as_str().is_some_and(|c| c.len() == 14),
        "{codes:?}"
    );
    assert!(codes.iter().all(|c| *c == codes[0]), "{codes:?}");
    let s = b.snapshot("bob");
    assert_eq!(s["e2ee"]["epoch"], 0);
    for o in [&hana, &carol] {
        assert_eq!(failures(&s, o, "video"), 0, "{:#}", s["peers"]);
    }
    let page_text = b.cmd(json!({"op": "text", "page": "bob", "selector": "body"}));
    let page_text = page_text.as_str().unwrap_or_default();
    assert!(page_text.contains("End-to-end encrypted"), "{page_text}");
    assert!(
        page_text.contains("Anyone who holds the link holds the key."),
        "the page says what it does not hide: {page_text}"
    );

    // The host removes Carol from its page (Carol still connected): a new
    // epoch, a visible key change, media decrypts again under it, and
    // Carol is out.
    b.click(
        "host",
        &format!("#roster li[data-participant=\"{carol}\"] button[data-action=\"remove-and-ban\"]"),
    );
    for page in ["host", "bob"] {
        b.wait_for(
            page,
            Duration::from_secs(20),
            "epoch 1 and its notice",
            |s| {
                s["e2ee"]["epoch"] == 1
                    && s["e2ee"]["notices"].as_array().is_some_and(|n| {
                        n.iter()
                            .any(|t| t.as_str().is_some_and(|t| t.starts_with("Keys changed")))
                    })
            },
        );
    }
    let (h, bb) = (b.snapshot("host"), b.snapshot("bob"));
    assert!(
        h["e2ee"]["notices"]
            .as_array()
            .unwrap()
            .iter()
            .any(|t| t.as_str().is_some_and(|t| t.contains("Carol was removed"))),
        "{:#}",
        h["e2ee"]["notices"]
    );
    assert_eq!(h["e2ee"]["safetyCode"], bb["e2ee"]["safetyCode"]);
    assert_ne!(h["e2ee"]["safetyCode"], codes[0]);
    let before = decoded(&bb, &hana, "video");
    b.wait_for(
        "bob",
        Duration::from_secs(30),
        "the host's video under epoch 1, badge back",
        |s| decoded(s, &hana, "video") >= before + 30 && s["e2ee"]["badge"] == true,
    );
    let sc = b.snapshot("carol");
    assert_ne!(sc["phase"], "in_call", "{:#}", sc["phase"]);
    assert_eq!(sc["e2ee"]["epoch"], 0, "carol never got epoch 1");
    rt.block_on(c.shutdown());
}

#[test]
fn a_browser_and_the_native_client_decrypt_each_other_across_a_cascade_link() {
    let _one = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    let Some(mut b) = Browser::launch() else {
        return;
    };
    let rt = runtime();
    let c = rt.block_on(Cluster::running(ROUTER, &["de-fra-1", "ie-dub-1"]));
    let router = c.url(ROUTER);
    let conf = e2ee_conference(&rt, &router);
    let key = Secret::random().unwrap();
    b.join("a", &guest_link(&router, &conf, Some(&key)), "Ada", None);
    let sa = b.wait_for("a", Duration::from_secs(30), "in call", in_call);
    let browser = sa["participant"].as_str().unwrap().to_owned();
    // The native participant is in Ireland: the Dublin relay takes it.
    let joined = rt
        .block_on(cluster::join_from(
            &router,
            conf["id"].as_str().unwrap(),
            conf["passcode"].as_str().unwrap(),
            "127.0.0.4",
        ))
        .unwrap();
    assert!(joined.e2ee);
    assert_ne!(
        Some(joined.relay_id.as_str()),
        sa["relay"].as_str(),
        "not across a link"
    );
    let native = joined.participant_id.clone();
    let (tx, rx) = std::sync::mpsc::channel();
    let secret = key.clone();
    rt.spawn(async move {
        let mut client = cluster::connect(&joined, "127.0.0.4").await;
        let mut group = Group::new(&secret, client.participant.clone(), false);
        client.send_e2ee(group.announce()).await.unwrap();
        let track = client
            .publish_declared(TrackKind::Video, "x-synthetic", None, true)
            .await
            .unwrap();
        let sender = client.sender();
        let datagrams = client.datagrams();
        // 30 frames/s of 3 KiB, a keyframe every 30, each datagram
        // encrypted; fragments leave room for the SFrame overhead.
        let mut p = Packetizer::new(track, MAX_DATAGRAM - e2ee::MAX_OVERHEAD);
        let mut tick = tokio::time::interval(Duration::from_millis(33));
        let mut video = None;
        let mut r = Reassembler::new(true);
        let (mut frames, mut vp8_keyframes, mut undecryptable) = (0u32, 0u32, 0u32);
        let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
        let mut n = 0u32;
        while tokio::time::Instant::now() < deadline && (frames < 100 || n < 300) {
            tokio::select! {
                _ = tick.tick() => {
                    let frame = vec![(n % 251) as u8; 3000];
                    for d in p.packetize(&frame, n % 30 == 0, residency_relay::clock::unix_micros()).unwrap() {
                        let sealed = group.encrypt(0, &d).unwrap();
                        let _ = sender.send_raw(sealed.into());
                    }
                    n += 1;
                }
                event = client.next_event() => {
                    let Ok(event) = event else { break };
                    if let ServerMessage::TrackPublished(info) = &event {
                        if info.participant.0 == browser && info.kind == TrackKind::Video {
                            assert!(info.encrypted, "the page declares its tracks encrypted");
                            client.subscribe(info.track).await.unwrap();
                            video = Some(info.track);
                        }
                    }
                    client.drive_e2ee(&mut group, &event).await.unwrap();
                }
                d = datagrams.next() => {
                    let Ok(d) = d else { break };
                    if video.is_none() || datagram::parse(&d).map(|h| h.track).ok() != video {
                        continue;
                    }
                    let Some(plain) = group.decrypt(&d, Instant::now()) else {
                        undecryptable += 1;
                        continue;
                    };
                    let mut whole = d[..HEADER_LEN].to_vec();
                    whole.extend_from_slice(&plain);
                    if let Some(f) = r.push(&whole).frame {
                        frames += 1;
                        // A VP8 keyframe's start code (RFC 6386 §9.1): the
                        // browser's real encoder output came through.
                        if f.keyframe && f.data.get(3..6) == Some(&[0x9d, 0x01, 0x2a][..]) {
                            vp8_keyframes += 1;
                        }
                    }
                }
            }
        }
        let _ = tx.send((frames, vp8_keyframes, undecryptable, group.stats));
        client.leave().await;
    });
    // The page decrypts the native participant's datagrams and puts its
    // frames together.
    b.wait_for(
        "a",
        Duration::from_secs(60),
        "the native client's encrypted frames",
        |s| {
            decrypted(s, &native, "video") >= 300
                && s["peers"][&native]["video"]["frames"].as_u64() >= Some(100)
        },
    );
    let s = b.snapshot("a");
    assert_eq!(
        failures(&s, &native, "video"),
        0,
        "{:#}",
        s["peers"][&native]
    );
    let (frames, vp8_keyframes, undecryptable, stats) = rx
        .recv_timeout(Duration::from_secs(90))
        .expect("native side finished");
    assert!(
        frames >= 100,
        "native reassembled {frames} frames of the page's video"
    );
    assert!(vp8_keyframes >= 1, "no VP8 keyframe decrypted");
    assert_eq!(undecryptable, 0, "{stats:?}");
    rt.block_on(c.shutdown());
}

/// A status message for everyone from `sender`, claiming `epoch`, with the
/// mac anyone holding the link can make (docs/e2ee.md).
fn forged_status(key: &Secret, sender: &str, epoch: u32) -> e2ee::Outgoing {
    use base64::Engine as _;
    use hmac::{KeyInit as _, Mac as _};
    let mut m = hmac::Hmac::<sha2::Sha256>::new_from_slice(&e2ee::auth_key(key)).unwrap();
    let body = [&[0x03u8][..], &epoch.to_be_bytes(), &[0]].concat();
    m.update(&body);
    m.update(sender.as_bytes());
    let tag = m.finalize().into_bytes();
    e2ee::Outgoing {
        to: None,
        data: base64::engine::general_purpose::URL_SAFE_NO_PAD.encode([&body[..], &tag].concat()),
    }
}

#[test]
fn a_participant_who_is_not_a_host_cannot_move_the_hosts_keys() {
    let _one = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    let Some(mut b) = Browser::launch() else {
        return;
    };
    let rt = runtime();
    let c = rt.block_on(Cluster::running(ROUTER, &["de-fra-1"]));
    let router = c.url(ROUTER);
    let conf = e2ee_conference(&rt, &router);
    let id = conf["id"].as_str().unwrap().to_owned();
    let key = Secret::random().unwrap();
    b.join("host", &host_link(&rt, &router, &id, &key), "Hana", None);
    let s = b.wait_for("host", Duration::from_secs(30), "in call", in_call);
    let code = s["e2ee"]["safetyCode"].clone();
    assert_eq!(s["e2ee"]["epoch"], 0);

    // A guest with the link (a native client) says, again and again, with
    // a valid mac, that it holds keys of epoch 2^31 - 2.
    let joined = rt
        .block_on(cluster::join_from(
            &router,
            &id,
            conf["passcode"].as_str().unwrap(),
            "127.0.0.2",
        ))
        .unwrap();
    assert_ne!(joined.role, "host");
    let (tx, rx) = std::sync::mpsc::channel::<()>();
    let attacker_key = key.clone();
    let attack = rt.spawn(async move {
        let mut client = cluster::connect(&joined, "127.0.0.2").await;
        let group = Group::new(&attacker_key, client.participant.clone(), false);
        client.send_e2ee(group.announce()).await.unwrap();
        let me = client.participant.0.clone();
        let mut sent = 0u32;
        while rx.try_recv().is_err() {
            client
                .send_e2ee(forged_status(&attacker_key, &me, 0x7fff_fffe - sent % 2))
                .await
                .unwrap();
            sent += 1;
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
        client.leave().await;
        sent
    });
    // The host's page notices the claim once, offers the host its own
    // decision, and changes nothing: the same epoch and safety code, no
    // "Keys changed", for 12 s of claims (the earlier page jumped every 5 s).
    let noticed = |s: &Value| {
        s["e2ee"]["notices"].as_array().map_or(0, |n| {
            n.iter()
                .filter(|t| {
                    t.as_str()
                        .is_some_and(|t| t.contains("which no host here made"))
                })
                .count()
        })
    };
    b.wait_for("host", Duration::from_secs(20), "the claim noticed", |s| {
        noticed(s) >= 1
    });
    let until = Instant::now() + Duration::from_secs(12);
    while Instant::now() < until {
        let s = b.snapshot("host");
        assert_eq!(s["e2ee"]["epoch"], 0, "{:#}", s["e2ee"]);
        assert_eq!(s["e2ee"]["safetyCode"], code, "{:#}", s["e2ee"]);
        assert_eq!(noticed(&s), 1, "{:#}", s["e2ee"]["notices"]);
        assert!(
            !s["e2ee"]["notices"]
                .as_array()
                .unwrap()
                .iter()
                .any(|t| t.as_str().is_some_and(|t| t.starts_with("Keys changed"))),
            "{:#}",
            s["e2ee"]["notices"]
        );
        std::thread::sleep(Duration::from_millis(500));
    }
    let dir = support::repo().join("target/browser");
    std::fs::create_dir_all(&dir).unwrap();
    let shot = dir.join("e2ee-claim-ignored.png");
    b.screenshot("host", &shot);
    assert!(std::fs::metadata(&shot).unwrap().len() > 10_000);
    let shown = b.cmd(json!({"op": "text", "page": "host", "selector": "#e2ee-takeover"}));
    assert!(
        shown
            .as_str()
            .is_some_and(|t| t.contains("New keys for everyone")),
        "{shown}"
    );
    tx.send(()).unwrap();
    let sent = rt.block_on(attack).unwrap();
    assert!(sent >= 40, "only {sent} claims were sent");
    rt.block_on(c.shutdown());
}
