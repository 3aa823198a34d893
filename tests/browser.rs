//! The call page in a real browser: Debian's Chromium, headless, driven by
//! playwright-core (`tests/browser/driver.mjs`), with a fake camera and
//! microphone, against routers and relays of the dev config running in
//! this process. Without Chromium or `npm ci` these tests skip loudly; CI
//! sets `RR_REQUIRE_BROWSER=1`, which makes a skip a failure.

mod support;

use std::sync::Mutex;
use std::time::Duration;

use residency_relay::client::frames::{MAX_DATAGRAM, Packetizer, Reassembler};
use residency_relay::wire::control::{ServerMessage, TrackKind};
use residency_relay::wire::datagram;
use serde_json::{Value, json};
use support::browser::{Browser, decoded, host_invite, in_call, link, reassembled, runtime};
use support::cluster::{self, ACME, ADMIN, Cluster};
use support::wait::until_blocking;

/// One Chromium at a time: two cores cannot encode for more.
static ONE_AT_A_TIME: Mutex<()> = Mutex::new(());

const EU_RELAYS: [&str; 4] = ["de-fra-1", "de-ber-1", "ie-dub-1", "nl-ams-1"];
const ROUTER: &str = "de-fra-router";

fn peer_id(snapshot: &Value) -> String {
    snapshot["participant"]
        .as_str()
        .unwrap_or_default()
        .to_owned()
}

/// Pages "a" (Ada) and "b" (Bob) join through `url`; their snapshots once
/// both are in the call.
fn join_two(b: &mut Browser, url: &str) -> (Value, Value) {
    b.join("a", url, "Ada", None);
    b.join("b", url, "Bob", None);
    let sa = b.wait_for("a", Duration::from_secs(30), "in call", in_call);
    let sb = b.wait_for("b", Duration::from_secs(30), "in call", in_call);
    (sa, sb)
}

#[test]
fn two_browsers_see_and_hear_each_other_and_the_media_stays_in_the_eu() {
    let _one = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    let Some(mut b) = Browser::launch() else {
        return;
    };
    let rt = runtime();
    let c = rt.block_on(Cluster::running(
        ROUTER,
        &["de-fra-1", "ie-dub-1", "us-nyc-1", "ch-zrh-1"],
    ));
    let router = c.url(ROUTER);
    let conf = rt.block_on(cluster::open_conference(&router, "eu"));
    let url = link(&router, &conf);
    let (sa, sb) = join_two(&mut b, &url);
    let (pa, pb) = (peer_id(&sa), peer_id(&sb));
    assert!(
        sa["residency"].as_str().unwrap().starts_with(
            "This call stays in the European Union and EEA (GDPR); your media goes through"
        ),
        "{}",
        sa["residency"]
    );
    // The fragment (passcode) left the address bar.
    let shown = b.cmd(json!({"op": "url", "page": "a"}));
    assert!(!shown.as_str().unwrap().contains('#'), "{shown}");
    for (page, other) in [("a", &pb), ("b", &pa)] {
        b.wait_for(
            page,
            Duration::from_secs(60),
            "100 video and 50 audio frames decoded",
            |s| decoded(s, other, "video") >= 100 && decoded(s, other, "audio") >= 50,
        );
    }
    let sa = b.snapshot("a");
    assert_eq!(sa["roster"], json!(["Ada", "Bob"]), "{:#}", sa["roster"]);
    assert!(EU_RELAYS.contains(&sa["relay"].as_str().unwrap()));

    // Someone placed in the US (through a proxy the config trusts) is
    // served by a relay inside the EU all the same.
    b.join(
        "us",
        &url,
        "Cleo",
        Some(json!({"X-Forwarded-For": "127.0.0.3"})),
    );
    let su = b.wait_for("us", Duration::from_secs(30), "in call", in_call);
    let relay = su["relay"].as_str().unwrap();
    assert!(EU_RELAYS.contains(&relay), "placed on {relay}");
    b.wait_for("us", Duration::from_secs(30), "video from Ada", |s| {
        decoded(s, &pa, "video") >= 30
    });

    // Two live tiles, drawn and moving: a later screenshot differs from
    // the first, and the remote tile's canvas is not one flat colour.
    let dir = support::repo().join("target/browser");
    std::fs::create_dir_all(&dir).unwrap();
    let (one, two) = (dir.join("call-1.png"), dir.join("call-2.png"));
    b.screenshot("a", &one);
    let x = std::fs::read(&one).unwrap();
    let y = until_blocking("the call moving on screen", Duration::from_secs(10), || {
        b.screenshot("a", &two);
        let y = std::fs::read(&two).unwrap();
        if y != x {
            Ok(y)
        } else {
            Err(format!("{} bytes, as the first", y.len()))
        }
    });
    assert!(
        x.len() > 10_000 && x != y,
        "screenshots: {} and {} bytes, equal: {}",
        x.len(),
        y.len(),
        x == y
    );
    let tiles = b.eval(
        "a",
        r#"(() => {
            const tiles = [...document.querySelectorAll(".tile")];
            const remote = document.querySelector(".tile[data-participant] canvas");
            const px = remote.getContext("2d").getImageData(0, 0, remote.width, remote.height).data;
            const colours = new Set();
            for (let i = 0; i < px.length; i += 4 * 97) colours.add((px[i] << 16) | (px[i + 1] << 8) | px[i + 2]);
            return { tiles: tiles.length, colours: colours.size };
        })()"#,
    );
    assert!(
        tiles["tiles"].as_u64().unwrap() >= 2 && tiles["colours"].as_u64().unwrap() > 1,
        "{tiles}"
    );

    // Nothing of the call touched the relays outside the EU.
    for outside in ["us-nyc-1", "ch-zrh-1"] {
        let m = rt.block_on(c.relay_metrics(outside));
        assert_eq!(
            cluster::sample(&m, "rr_relay_bytes_received_total"),
            0.0,
            "{outside}"
        );
        assert_eq!(
            cluster::sample(&m, "rr_relay_bytes_delivered_total"),
            0.0,
            "{outside}"
        );
    }
    // The relay counts its browser participants by transport.
    let m = rt.block_on(c.relay_metrics(sa["relay"].as_str().unwrap()));
    assert!(
        m.lines().any(|l| l.starts_with("rr_relay_sessions_total{")
            && l.contains("transport=\"webtransport\"")
            && !l.ends_with(" 0")),
        "no webtransport sessions counted"
    );
    b.click("b", "#leave");
    b.wait_for("a", Duration::from_secs(10), "Bob left", |s| {
        !s["roster"].as_array().unwrap().contains(&json!("Bob"))
    });
    rt.block_on(c.shutdown());
}

#[test]
fn every_refusal_and_removal_has_its_message() {
    let _one = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    let Some(mut b) = Browser::launch() else {
        return;
    };
    let rt = runtime();
    let c = rt.block_on(Cluster::running(ROUTER, &["de-fra-1"]));
    let router = c.url(ROUTER);
    let conf = rt.block_on(cluster::open_conference(&router, "eu"));
    let id = conf["id"].as_str().unwrap().to_owned();
    let message = |b: &mut Browser, page: &str, what: &str, text: &str| {
        let text = text.to_owned();
        b.wait_for(page, Duration::from_secs(20), what, move |s| {
            s["message"].as_str().is_some_and(|m| m.contains(&text))
        })
    };

    // A wrong passcode, then too many of them (from one address).
    let wrong = format!("{router}/j/{id}#p=wrongwrong");
    let elsewhere = Some(json!({"X-Forwarded-For": "127.0.0.9"}));
    b.join("w", &wrong, "Eve", elsewhere.clone());
    message(&mut b, "w", "wrong passcode", "That passcode is not right");
    for _ in 0..5 {
        b.click("w", "#join-button");
        b.wait_for("w", Duration::from_secs(20), "the attempt answered", |s| {
            s["phase"] == "refused"
        });
    }
    let s = message(
        &mut b,
        "w",
        "too many attempts",
        "Too many attempts. Try again in",
    );
    assert!(
        s["message"].as_str().unwrap().contains("seconds"),
        "{}",
        s["message"]
    );

    // A host by invitation, and a guest with the passcode.
    let invite = host_invite(&rt, &router, &id);
    b.open("host", &format!("{router}/j/{id}#i={invite}"), None);
    b.fill("host", "#display-name", "Hana");
    b.click("host", "#join-button");
    let sh = b.wait_for("host", Duration::from_secs(30), "host in call", in_call);
    assert_eq!(sh["host"], true);
    b.join("guest", &link(&router, &conf), "Gus", None);
    let sg = b.wait_for("guest", Duration::from_secs(30), "guest in call", in_call);
    let guest = peer_id(&sg);
    b.wait_for(
        "host",
        Duration::from_secs(20),
        "guest in the roster",
        |s| s["roster"].as_array().unwrap().contains(&json!("Gus")),
    );

    // Removal: the guest's page says so; the relay closed with code 5.
    b.click(
        "host",
        &format!("#roster li[data-participant=\"{guest}\"] button[data-action=\"remove\"]"),
    );
    let s = message(
        &mut b,
        "guest",
        "removal",
        "A host removed you from the call",
    );
    assert_eq!(s["phase"], "ended");
    assert!(
        s["closeCodes"].as_array().unwrap().contains(&json!(5)),
        "{}",
        s["closeCodes"]
    );

    // Locked: a newcomer is told.
    b.click("host", "#lock");
    until_blocking("the lock", Duration::from_secs(10), || {
        let status = b.eval("host", "document.getElementById('host-status').textContent");
        if status.as_str().is_some_and(|s| s.starts_with("Locked")) {
            Ok(())
        } else {
            Err(status)
        }
    });
    b.join("late", &link(&router, &conf), "Lou", None);
    message(
        &mut b,
        "late",
        "locked",
        "The host has locked this conference",
    );
    b.click("host", "#unlock");

    // The host ends the conference: everyone in it is told, and a join
    // afterwards hears it has ended.
    b.join("guest2", &link(&router, &conf), "Gia", None);
    b.wait_for("guest2", Duration::from_secs(30), "in call", in_call);
    b.click("host", "#end");
    message(&mut b, "guest2", "end", "for everyone");
    message(&mut b, "host", "end", "for everyone");
    b.join("after", &link(&router, &conf), "Abe", None);
    message(&mut b, "after", "ended", "This conference has ended");
    rt.block_on(c.shutdown());
}

#[test]
fn a_drained_relay_moves_the_browser_and_its_video_resumes() {
    let _one = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    let Some(mut b) = Browser::launch() else {
        return;
    };
    let rt = runtime();
    let c = rt.block_on(Cluster::running(ROUTER, &["de-fra-1", "de-ber-1"]));
    let router = c.url(ROUTER);
    let conf = rt.block_on(cluster::open_conference(&router, "eu"));
    let url = link(&router, &conf);
    let (sa, sb) = join_two(&mut b, &url);
    let (pa, pb) = (peer_id(&sa), peer_id(&sb));
    b.wait_for("a", Duration::from_secs(30), "video before", |s| {
        decoded(s, &pb, "video") >= 30
    });
    // Drain the relay page a is on now. On a loaded machine a page's first
    // connection may fail and move it before the drain (even to the other
    // relay); what counts is what the drain itself does, so each page's
    // moves and going_away codes are compared with its own at the drain.
    let (sa, sb) = (b.snapshot("a"), b.snapshot("b"));
    let first = sa["relay"].as_str().unwrap().to_owned();
    let r = rt.block_on(cluster::request(
        "POST",
        &format!("{router}/v1/admin/relays/{first}/drain"),
        None,
        Some(ADMIN),
        None,
    ));
    assert_eq!(r.status, 200);
    for (page, other, at_drain) in [("a", pb.clone(), sa), ("b", pa.clone(), sb)] {
        let on_drained = at_drain["relay"] == json!(first);
        let moved = if on_drained {
            let moves = at_drain["moves"].as_u64().unwrap();
            let told = at_drain["goingAway"].as_array().unwrap().len();
            let moved = b.wait_for(page, Duration::from_secs(30), "moved", |s| {
                s["moves"].as_u64() > Some(moves) && in_call(s) && s["relay"] != json!(first)
            });
            // The relay told the page why: code 2, draining.
            assert_eq!(
                moved["goingAway"].as_array().unwrap()[told..],
                [json!(2)],
                "{page}: {}",
                moves_of(&moved)
            );
            moved
        } else {
            eprintln!(
                "{page} was not on {first} at the drain: {}",
                moves_of(&at_drain)
            );
            b.snapshot(page)
        };
        let before = decoded(&moved, &other, "video");
        b.wait_for(page, Duration::from_secs(30), "video resumed", move |s| {
            decoded(s, &other, "video") >= before + 60
        });
    }
    rt.block_on(c.shutdown());
}

/// What a snapshot says about a page's moves, for failure messages.
fn moves_of(s: &Value) -> Value {
    json!({
        "relay": s["relay"], "moves": s["moves"], "goingAway": s["goingAway"],
        "closeCodes": s["closeCodes"], "relays": s["relays"], "errors": s["errors"],
    })
}

#[test]
fn a_certificate_renewed_under_a_live_call_drops_nobody() {
    let _one = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    let Some(mut b) = Browser::launch() else {
        return;
    };
    let rt = runtime();
    let mut c = Cluster::new(|t| t);
    // Renewed with a third of its lifetime left: about 7 s after start.
    c.cert_lifetime = Some(Duration::from_secs(460));
    rt.block_on(c.start(ROUTER, &["de-fra-1"]));
    let router = c.url(ROUTER);
    let conf = rt.block_on(cluster::open_conference(&router, "eu"));
    let url = link(&router, &conf);
    let fra = c
        .policy
        .relay(c.policy.relay_idx("de-fra-1").unwrap())
        .http_addr;
    let old = rt.block_on(cluster::request(
        "GET",
        &format!("http://{fra}/cert"),
        None,
        None,
        None,
    ));
    let (old, successor) = (
        old.json()["sha256"].as_str().unwrap().to_owned(),
        old.json()["next_sha256"].as_str().unwrap().to_owned(),
    );
    let (sa, sb) = join_two(&mut b, &url);
    let pb = peer_id(&sb);
    let relay = sa["relay"].as_str().unwrap().to_owned();
    let http = c
        .policy
        .relay(c.policy.relay_idx(&relay).unwrap())
        .http_addr;
    // Wait for the renewal.
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    loop {
        let m = rt.block_on(c.relay_metrics(&relay));
        if cluster::sample(&m, "rr_relay_certificate_renewals_total") >= 1.0 {
            break;
        }
        assert!(std::time::Instant::now() < deadline, "no renewal");
        std::thread::sleep(Duration::from_millis(300));
    }
    let new = rt.block_on(cluster::request(
        "GET",
        &format!("http://{http}/cert"),
        None,
        None,
        None,
    ));
    let new = new.json()["sha256"].as_str().unwrap().to_owned();
    assert_ne!(old, new);
    // The successor announced before the renewal is what came in force:
    // join answers from before it (which name both) stay good.
    assert_eq!(new, successor);
    let before = decoded(&b.snapshot("a"), &pb, "video");
    b.wait_for("a", Duration::from_secs(20), "video goes on", |s| {
        decoded(s, &pb, "video") >= before + 60
    });
    for page in ["a", "b"] {
        let s = b.snapshot(page);
        assert_eq!(s["moves"], 0, "{page} was dropped: {:#}", s["closeCodes"]);
        assert!(in_call(&s));
    }
    // A newcomer gets the new hash, and its successor's, and connects.
    b.join("c", &url, "Cid", None);
    b.wait_for("c", Duration::from_secs(30), "newcomer in call", in_call);
    let answer = b.eval("c", "window.rr.state.answer.relay");
    assert_eq!(answer["cert_sha256"], json!(new));
    assert!(
        answer["cert_sha256_next"]
            .as_str()
            .is_some_and(|n| n != new),
        "{answer}"
    );
    rt.block_on(c.shutdown());
}

#[test]
fn a_browser_and_a_native_client_exchange_frames_across_a_cascade_link() {
    let _one = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    let Some(mut b) = Browser::launch() else {
        return;
    };
    let rt = runtime();
    let c = rt.block_on(Cluster::running(ROUTER, &["de-fra-1", "ie-dub-1"]));
    let router = c.url(ROUTER);
    let conf = rt.block_on(cluster::open_conference(&router, "eu"));
    b.join("a", &link(&router, &conf), "Ada", None);
    let sa = b.wait_for("a", Duration::from_secs(30), "in call", in_call);
    let browser = peer_id(&sa);
    // The native participant is in Ireland: the Dublin relay takes it.
    let joined = rt
        .block_on(cluster::join_from(
            &router,
            conf["id"].as_str().unwrap(),
            conf["passcode"].as_str().unwrap(),
            "127.0.0.4",
        ))
        .unwrap();
    assert_ne!(
        Some(joined.relay_id.as_str()),
        sa["relay"].as_str(),
        "not across a link"
    );
    let native = joined.participant_id.clone();
    let (tx, rx) = std::sync::mpsc::channel();
    rt.spawn(async move {
        let mut client = cluster::connect(&joined, "127.0.0.4").await;
        let track = client
            .publish(TrackKind::Video, "x-synthetic", None)
            .await
            .unwrap();
        let datagrams = client.datagrams();
        // Publish 30 frames/s of 3 KiB, a keyframe every 30.
        let sender = tokio::spawn({
            let client = client.sender();
            async move {
                let mut p = Packetizer::new(track, MAX_DATAGRAM);
                let mut tick = tokio::time::interval(Duration::from_millis(33));
                for n in 0u32..600 {
                    tick.tick().await;
                    let frame = vec![(n % 251) as u8; 3000 + (n as usize % 7) * 100];
                    for d in p
                        .packetize(&frame, n % 30 == 0, residency_relay::clock::unix_micros())
                        .unwrap()
                    {
                        let _ = client.send_raw(d.into());
                    }
                }
            }
        });
        // Subscribe to the browser's video as it is announced over the link.
        let mut video = None;
        while video.is_none() {
            if let Ok(ServerMessage::TrackPublished(info)) = client.next_event().await {
                if info.participant.0 == browser && info.kind == TrackKind::Video {
                    client.subscribe(info.track).await.unwrap();
                    video = Some(info.track);
                }
            }
        }
        let video = video.unwrap();
        let mut r = Reassembler::new(true);
        let mut frames = Vec::new();
        while frames.len() < 150 {
            let Ok(d) = tokio::time::timeout(Duration::from_secs(30), datagrams.next()).await
            else {
                break;
            };
            let Ok(d) = d else { break };
            if datagram::parse(&d).map(|h| h.track) != Ok(video) {
                continue;
            }
            let o = r.push(&d);
            if o.want_keyframe {
                let _ = client.request_keyframe(video).await;
            }
            if let Some(f) = o.frame {
                frames.push((f.number, f.data.len(), f.keyframe));
            }
        }
        let _ = tx.send(frames);
        sender.await.unwrap();
        client.leave().await;
    });
    let frames = rx
        .recv_timeout(Duration::from_secs(90))
        .expect("native side finished");
    assert!(
        frames.len() >= 150,
        "native reassembled {} frames",
        frames.len()
    );
    // What the native side put together is what the page says it sent.
    let s = b.snapshot("a");
    let sent: std::collections::HashMap<u64, (u64, bool)> = s["sentLog"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["kind"] == "video")
        .map(|e| {
            (
                e["frame"].as_u64().unwrap(),
                (
                    e["bytes"].as_u64().unwrap(),
                    e["keyframe"].as_bool().unwrap(),
                ),
            )
        })
        .collect();
    let mut checked = 0;
    for (number, len, key) in &frames {
        if let Some((bytes, keyframe)) = sent.get(&u64::from(*number)) {
            assert_eq!((*len as u64, *key), (*bytes, *keyframe), "frame {number}");
            checked += 1;
        }
    }
    assert!(
        checked >= 100,
        "only {checked} frames matched the page's log"
    );
    assert!(
        frames.iter().any(|f| f.2),
        "no keyframe reached the native side"
    );
    // And the page reassembled the native participant's frames.
    b.wait_for(
        "a",
        Duration::from_secs(30),
        "frames from the native client",
        |s| {
            reassembled(s, &native, "video") >= 100
                && s["peers"][&native]["video"]["keyframes"].as_u64() >= Some(3)
        },
    );
    rt.block_on(c.shutdown());
}

#[test]
fn a_host_runs_the_waiting_room_mutes_bans_and_reads_the_report_from_the_page() {
    let _one = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    let Some(mut b) = Browser::launch() else {
        return;
    };
    let rt = runtime();
    let c = rt.block_on(Cluster::running(ROUTER, &["de-fra-1"]));
    let router = c.url(ROUTER);
    let conf = rt.block_on(cluster::create(
        &router,
        ACME,
        json!({"residency": "eu", "waiting_room": true}),
    ));
    let id = conf["id"].as_str().unwrap().to_owned();
    let invite = host_invite(&rt, &router, &id);
    b.join("host", &format!("{router}/j/{id}#i={invite}"), "Hana", None);
    b.wait_for("host", Duration::from_secs(30), "host in call", in_call);

    // A guest waits until the host admits them from the page.
    let ireland = Some(json!({"X-Forwarded-For": "127.0.0.4"}));
    b.join("guest", &link(&router, &conf), "Gus", ireland.clone());
    b.wait_for("guest", Duration::from_secs(20), "waiting", |s| {
        s["phase"] == "waiting"
    });
    let text = b.cmd(json!({"op": "text", "page": "guest", "selector": "#waiting-text"}));
    assert_eq!(text, json!("Waiting for the host to let you in…"));
    b.click("host", "#waiting-list li button[data-action=\"admit\"]");
    let sg = b.wait_for("guest", Duration::from_secs(30), "admitted", in_call);
    let guest = peer_id(&sg);
    // Another is denied.
    b.join("other", &link(&router, &conf), "Oda", None);
    b.wait_for("other", Duration::from_secs(20), "waiting", |s| {
        s["phase"] == "waiting"
    });
    b.click("host", "#waiting-list li button[data-action=\"deny\"]");
    b.wait_for("other", Duration::from_secs(20), "denied", |s| {
        s["message"] == "The host did not let you in."
    });

    // Muting the camera stops its frames; unmuting starts them again.
    let sh = b.wait_for(
        "guest",
        Duration::from_secs(30),
        "video from the host",
        |s| {
            s["peers"].as_object().is_some_and(|p| {
                p.values()
                    .any(|v| v["video"]["decoded"].as_u64() >= Some(30))
            })
        },
    );
    assert!(sh["phase"] == "in_call");
    b.click("host", "#mute-video");
    until_blocking("the camera muted", Duration::from_secs(10), || {
        let muted = b.eval("host", "window.rr.state.call?.muted.video === true");
        if muted == json!(true) {
            Ok(())
        } else {
            Err(muted)
        }
    });
    let before = b.snapshot("host")["sent"]["video"]["frames"]
        .as_u64()
        .unwrap();
    // No video frame while the microphone goes on sending: 50 audio
    // frames (a second at 20 ms each) is 30 camera frames' time, counted
    // by the page itself rather than slept.
    let audio = b.snapshot("host")["sent"]["audio"]["frames"]
        .as_u64()
        .unwrap();
    b.wait_for(
        "host",
        Duration::from_secs(10),
        "a second of audio",
        move |s| s["sent"]["audio"]["frames"].as_u64() >= Some(audio + 50),
    );
    let after = b.snapshot("host")["sent"]["video"]["frames"]
        .as_u64()
        .unwrap();
    assert_eq!(before, after, "video sent while muted");
    b.click("host", "#mute-video");
    b.wait_for("host", Duration::from_secs(10), "video again", move |s| {
        s["sent"]["video"]["frames"].as_u64() > Some(after + 30)
    });

    // The signed residency report, from the page.
    b.click("host", "#residency-report");
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    let report = loop {
        let text = b.eval("host", "document.getElementById('report').textContent");
        if let Ok(report) = serde_json::from_str::<Value>(text.as_str().unwrap_or_default()) {
            break report;
        }
        assert!(std::time::Instant::now() < deadline, "no report shown");
        std::thread::sleep(Duration::from_millis(200));
    };
    assert_eq!(report["report"]["conference"], json!(id), "{report:#}");
    assert_eq!(report["signature"]["algorithm"], "ed25519", "{report:#}");

    // The page's manage token moderates but mints no invitations (which
    // would outlive the host's removal).
    let minted = b.eval(
        "host",
        &format!(
            r#"fetch("/v1/conferences/{id}/invites", {{method: "POST",
                headers: {{authorization: "Bearer " + window.rr.state.answer.manage_token}},
                body: JSON.stringify({{display_name: "Sly", role: "host"}})}}).then(r => r.status)"#
        ),
    );
    assert_eq!(minted, json!(403));

    // Remove and ban: the guest cannot come back.
    b.click(
        "host",
        &format!("#roster li[data-participant=\"{guest}\"] button[data-action=\"remove-and-ban\"]"),
    );
    b.wait_for("guest", Duration::from_secs(20), "removed", |s| {
        s["phase"] == "ended"
    });
    b.close("guest");
    b.join("guest", &link(&router, &conf), "Gus", ireland);
    b.wait_for("guest", Duration::from_secs(20), "banned", |s| {
        s["message"]
            .as_str()
            .is_some_and(|m| m.contains("You cannot join it again"))
    });
    rt.block_on(c.shutdown());
}
