//! One call across every engine: Chromium on WebTransport, Firefox,
//! WebKit (no WebTransport: it joins over WebSocket) and a native client
//! on QUIC, in the clear and end-to-end encrypted. Each page sees every
//! other's video move and hears their audio; a host removes the WebKit
//! participant, whose page says why. Without a browser these tests skip
//! loudly; CI sets `RR_REQUIRE_BROWSER=1`, which makes a skip a failure.

mod support;

use std::collections::{HashMap, HashSet};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use residency_relay::client::e2ee::{self, Group, Secret};
use residency_relay::client::frames::{MAX_DATAGRAM, Packetizer, Reassembler};
use residency_relay::wire::control::{ServerMessage, TrackKind};
use residency_relay::wire::datagram::{self, HEADER_LEN};
use serde_json::{Value, json};
use support::browser::{Browser, Kind, decoded, host_invite, in_call, link, reassembled, runtime};
use support::cluster::{self, ACME, Cluster};

/// One call at a time: two cores cannot encode for more.
static ONE_AT_A_TIME: Mutex<()> = Mutex::new(());

const ROUTER: &str = "de-fra-router";

/// `url` with `query` before its fragment.
fn with_query(url: &str, query: &str) -> String {
    match url.split_once('#') {
        Some((base, fragment)) => format!("{base}?{query}#{fragment}"),
        None => format!("{url}?{query}"),
    }
}

/// What the native participant saw of each browser, by participant id.
type Seen = HashMap<String, u32>;

/// The native participant: publishes 30 frames/s of synthetic video
/// (encrypted with `key` when given), subscribes to every page's video
/// and counts the frames it puts together (decrypted) from each, until
/// each of `pages` gave 60 and it is told to `stop` (or, should the test
/// fail before telling it, after 5 minutes).
async fn native(
    joined: residency_relay::client::join::Joined,
    key: Option<Secret>,
    pages: Vec<String>,
    mut stop: tokio::sync::oneshot::Receiver<()>,
) -> Seen {
    let mut client = cluster::connect(&joined, "127.0.0.2").await;
    let mut group = key.map(|k| Group::new(&k, client.participant.clone(), false));
    if let Some(g) = &group {
        client.send_e2ee(g.announce()).await.unwrap();
    }
    let track = client
        .publish_declared(TrackKind::Video, "x-synthetic", None, group.is_some())
        .await
        .unwrap();
    let (sender, datagrams) = (client.sender(), client.datagrams());
    let room = if group.is_some() {
        e2ee::MAX_OVERHEAD
    } else {
        0
    };
    let mut p = Packetizer::new(track, MAX_DATAGRAM - room);
    let mut tick = tokio::time::interval(Duration::from_millis(33));
    let mut videos: HashMap<_, String> = HashMap::new();
    // The pages published before this participant came: their tracks are
    // in its welcome.
    for info in client.initial_tracks.clone() {
        if info.kind == TrackKind::Video && pages.contains(&info.participant.0) {
            client.subscribe(info.track).await.unwrap();
            videos.insert(info.track, info.participant.0.clone());
        }
    }
    let mut reassemblers: HashMap<_, Reassembler> = HashMap::new();
    let mut seen = Seen::new();
    let mut asked = HashMap::new();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(300);
    let mut n = 0u32;
    let done = |seen: &Seen| {
        pages
            .iter()
            .all(|p| seen.get(p).copied().unwrap_or(0) >= 60)
    };
    let mut stopped = false;
    while tokio::time::Instant::now() < deadline && !(stopped && done(&seen)) {
        tokio::select! {
            _ = &mut stop, if !stopped => stopped = true,
            _ = tick.tick() => {
                let frame = vec![(n % 251) as u8; 3000];
                for d in p.packetize(&frame, n % 30 == 0, residency_relay::clock::unix_micros()).unwrap() {
                    let d = match &mut group {
                        Some(g) => g.encrypt(0, &d).unwrap(),
                        None => d,
                    };
                    let _ = sender.send_raw(d.into());
                }
                n += 1;
            }
            event = client.next_event() => {
                let Ok(event) = event else {
                    panic!("the native participant's connection ended: {event:?}, close code {:?}", client.close_code());
                };
                if let ServerMessage::TrackPublished(info) = &event {
                    if info.kind == TrackKind::Video && pages.contains(&info.participant.0) {
                        client.subscribe(info.track).await.unwrap();
                        videos.insert(info.track, info.participant.0.clone());
                    }
                }
                if let Some(g) = &mut group {
                    client.drive_e2ee(g, &event).await.unwrap();
                }
            }
            d = datagrams.next() => {
                let Ok(d) = d else { break };
                let Ok(header) = datagram::parse(&d) else { continue };
                let Some(who) = videos.get(&header.track) else { continue };
                let whole = match &mut group {
                    Some(g) => {
                        let Some(plain) = g.decrypt(&d, Instant::now()) else { continue };
                        let mut whole = d[..HEADER_LEN].to_vec();
                        whole.extend_from_slice(&plain);
                        whole
                    }
                    None => d.to_vec(),
                };
                let r = reassemblers.entry(header.track).or_insert_with(|| Reassembler::new(true));
                let out = r.push(&whole);
                // At most one keyframe request per track per half second,
                // as the page paces its own: more would go over the
                // relay's control-message rate and cost the connection.
                let due = asked.get(&header.track).is_none_or(|at: &Instant| at.elapsed() >= Duration::from_millis(500));
                if out.want_keyframe && due {
                    asked.insert(header.track, Instant::now());
                    let _ = client.request_keyframe(header.track).await;
                }
                if out.frame.is_some() {
                    *seen.entry(who.clone()).or_default() += 1;
                }
            }
        }
    }
    client.leave().await;
    seen
}

/// Audio from `participant` that `snapshot`'s page played, and how loud
/// (RMS, 0 for silence).
/// What a page played of `participant`'s audio: samples, and the loudest
/// level so far (the current level of a page starved of CPU flickers to
/// 0 between reports, which made "everyone heard at once" a coin toss).
fn heard(snapshot: &Value, participant: &str) -> (u64, f64) {
    let peer = &snapshot["audio"]["peers"][participant];
    (
        peer["played"].as_u64().unwrap_or(0),
        peer["peak"].as_f64().unwrap_or(0.0),
    )
}

fn call_of_four(e2ee: bool) {
    let _one = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    let (Some(mut chromium), Some(mut firefox), Some(mut webkit)) = (
        Browser::launch_kind(Kind::Chromium),
        Browser::launch_kind(Kind::Firefox),
        Browser::launch_kind(Kind::WebKit),
    ) else {
        return;
    };
    let rt = runtime();
    let c = rt.block_on(Cluster::running(ROUTER, &["de-fra-1", "us-nyc-1"]));
    let router = c.url(ROUTER);
    let conf = rt.block_on(cluster::create(
        &router,
        ACME,
        json!({"residency": "eu", "waiting_room": false, "e2ee": e2ee}),
    ));
    let id = conf["id"].as_str().unwrap().to_owned();
    let key = e2ee.then(|| Secret::random().unwrap());
    let with_key = |url: String| match &key {
        Some(k) => format!("{url}&k={}", k.to_base64()),
        None => url,
    };
    let host = with_key(format!(
        "{router}/j/{id}#i={}",
        host_invite(&rt, &router, &id)
    ));
    let guest = with_key(link(&router, &conf));

    // Chromium, the host, on WebTransport; Firefox as it chooses (it has
    // WebTransport); WebKit falls back to WebSocket by itself.
    let mut pages: Vec<(&str, &mut Browser, &str)> = vec![
        ("c", &mut chromium, "Hana"),
        ("f", &mut firefox, "Fred"),
        ("w", &mut webkit, "Wanda"),
    ];
    for (page, b, name) in pages.iter_mut() {
        let url = if *page == "c" {
            with_query(&host, "transport=webtransport")
        } else {
            guest.clone()
        };
        b.join(page, &url, name, None);
    }
    let mut ids = HashMap::new();
    for (page, b, _) in pages.iter_mut() {
        let s = b.wait_for(page, Duration::from_secs(60), "in call", in_call);
        ids.insert(*page, s["participant"].as_str().unwrap().to_owned());
        let transport = s["transport"].as_str().unwrap_or_default().to_owned();
        let expected = match *page {
            "c" | "f" => "webtransport",
            _ => "websocket",
        };
        assert_eq!(transport, expected, "page {page}: {:#}", s["transports"]);
        assert_eq!(s["e2ee"]["enabled"], e2ee, "page {page}: {:#}", s["e2ee"]);
    }

    // The native participant, on QUIC.
    let joined = rt
        .block_on(cluster::join_from(
            &router,
            &id,
            conf["passcode"].as_str().unwrap(),
            "127.0.0.2",
        ))
        .unwrap();
    let native_id = joined.participant_id.clone();
    let page_ids: Vec<String> = ids.values().cloned().collect();
    let (stop_native, stop) = tokio::sync::oneshot::channel();
    let native_task = rt.spawn(native(joined, key.clone(), page_ids, stop));

    // Every page decodes every other page's video and plays its audio,
    // loud enough not to be silence, and puts the native client's frames
    // together.
    for (page, b, _) in pages.iter_mut() {
        let others: Vec<String> = ids
            .iter()
            .filter(|(p, _)| *p != page)
            .map(|(_, id)| id.clone())
            .collect();
        let native_id = native_id.clone();
        b.wait_for(
            page,
            Duration::from_secs(90),
            "video, audio and native frames from everyone",
            |s| {
                others.iter().all(|o| {
                    let (played, level) = heard(s, o);
                    decoded(s, o, "video") >= 30
                        && decoded(s, o, "audio") >= 30
                        && played > 0
                        && level > 0.0
                }) && reassembled(s, &native_id, "video") >= 30
            },
        );
    }
    // Video keeps moving: more frames decoded a little later.
    for (page, b, _) in pages.iter_mut() {
        let before: HashMap<String, u64> = ids
            .iter()
            .filter(|(p, _)| *p != page)
            .map(|(_, id)| (id.clone(), decoded(&b.snapshot(page), id, "video")))
            .collect();
        b.wait_for(
            page,
            Duration::from_secs(30),
            "more video from everyone",
            |s| {
                before
                    .iter()
                    .all(|(id, n)| decoded(s, id, "video") >= n + 10)
            },
        );
    }
    if e2ee {
        // Every page shows the mark: all it renders decrypts, and no
        // datagram failed to while the keys stayed the same.
        for (page, b, _) in pages.iter_mut() {
            let s = b.wait_for(page, Duration::from_secs(20), "the end-to-end mark", |s| {
                s["e2ee"]["badge"] == true
            });
            assert_eq!(
                s["e2ee"]["decryptFailures"],
                0,
                "page {page}: {:#}\ntransports {} errors {} close codes {} moves {} relays {} roster {}",
                s["e2ee"],
                s["transports"],
                s["errors"],
                s["closeCodes"],
                s["moves"],
                s["relays"],
                s["roster"]
            );
            assert!(
                s["e2ee"]["decrypted"].as_u64() > Some(1000),
                "page {page}: {:#}",
                s["e2ee"]
            );
        }
    }
    let _ = stop_native.send(());
    let seen = rt.block_on(native_task).unwrap();
    for (page, id) in &ids {
        assert!(
            seen.get(id).copied().unwrap_or(0) >= 60,
            "native got {seen:?} of page {page}"
        );
    }
    // The host removes the WebKit participant from its page; WebKit's
    // page says why, and its relay connection (WebSocket) closed with
    // the removal's code.
    let wanda = ids["w"].clone();
    chromium.wait_for("c", Duration::from_secs(20), "Wanda in the roster", |s| {
        s["roster"].as_array().unwrap().contains(&json!("Wanda"))
    });
    chromium.click(
        "c",
        &format!("#roster li[data-participant=\"{wanda}\"] button[data-action=\"remove\"]"),
    );
    let s = webkit.wait_for("w", Duration::from_secs(20), "removed", |s| {
        s["message"]
            .as_str()
            .is_some_and(|m| m.contains("A host removed you from the call"))
    });
    assert_eq!(s["phase"], "ended");
    assert!(
        s["closeCodes"].as_array().unwrap().contains(&json!(5)),
        "{}",
        s["closeCodes"]
    );
    let dir = support::repo().join("target/browser");
    std::fs::create_dir_all(&dir).unwrap();
    webkit.screenshot(
        "w",
        &dir.join(format!(
            "webkit-removed{}.png",
            if e2ee { "-e2ee" } else { "" }
        )),
    );
    firefox.screenshot(
        "f",
        &dir.join(format!(
            "firefox-call{}.png",
            if e2ee { "-e2ee" } else { "" }
        )),
    );

    // Nothing of the call reached the relay outside the EU.
    let m = rt.block_on(c.relay_metrics("us-nyc-1"));
    assert_eq!(cluster::sample(&m, "rr_relay_bytes_received_total"), 0.0);
    let m = rt.block_on(c.relay_metrics("de-fra-1"));
    let transports: HashSet<&str> = ["native", "webtransport", "websocket"].into();
    for t in transports {
        assert!(
            m.lines().any(|l| l.starts_with("rr_relay_sessions_total")
                && l.contains(&format!("transport=\"{t}\""))
                && !l.ends_with(" 0")),
            "no {t} session on de-fra-1"
        );
    }
    rt.block_on(c.shutdown());
}

#[test]
fn chromium_firefox_webkit_and_a_native_client_hold_one_call() {
    call_of_four(false);
}

#[test]
fn chromium_firefox_webkit_and_a_native_client_hold_one_end_to_end_encrypted_call() {
    call_of_four(true);
}
