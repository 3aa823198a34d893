//! A participant on a network that blocks UDP (as many corporate, hotel
//! and school networks do) joins by itself over WebSocket: Chromium runs
//! inside a network namespace of this test's whose policy routing
//! blackholes every UDP packet (`ip rule add ipproto udp blackhole`), and
//! reaches the router and relay over a veth pair. The call works both
//! ways with a native participant on QUIC outside the namespace.
//!
//! Needs root (network namespaces) and Chromium; CI runs as root and sets
//! `RR_REQUIRE_BROWSER=1`, which makes a skip a failure.

mod support;

use std::time::{Duration, Instant};

use residency_relay::client::frames::{MAX_DATAGRAM, Packetizer, Reassembler};
use residency_relay::wire::control::{ServerMessage, TrackKind};
use residency_relay::wire::datagram;
use support::browser::{Browser, Kind, in_call, link, reassembled, runtime};
use support::cluster::{self, Cluster};

const ROUTER: &str = "de-fra-router";

/// How long the page may take from the join click to the call over
/// WebSocket when UDP is blocked: its 2 s head start for WebTransport, a
/// TCP and TLS connection and the upgrade on loopback, and the join
/// itself, with room for a loaded CI machine.
const FALLBACK_BOUND: Duration = Duration::from_secs(10);

#[test]
fn a_participant_whose_network_blocks_udp_joins_over_websocket_by_itself() {
    if !support::netns::is_root() {
        assert!(
            std::env::var("RR_REQUIRE_BROWSER").as_deref() != Ok("1"),
            "this test is required here but needs root for its network namespace"
        );
        eprintln!("\n*** SKIPPING: network namespaces need root ***\n");
        return;
    }
    let _ = tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
        .with_test_writer()
        .try_init();
    let ns = support::netns::Namespace::new("noudp", std::process::id() % 250 + 1)
        .and_then(|ns| ns.block_udp().map(|()| ns))
        .expect("a network namespace with UDP blackholed");
    let Some(mut b) = Browser::launch_in(Kind::Chromium, Some(&ns.name)) else {
        return;
    };
    let host = ns.host.clone();
    // The Frankfurt router's public listener and relay de-fra-1 on this
    // side of the veth pair; the relays' channel stays on loopback.
    let rt = runtime();
    // The Frankfurt router's certificate for that address too (see
    // support::netns::dev_router_certificate).
    let dir = tempfile::tempdir().unwrap();
    let cert = dir.path().join("router.crt");
    support::netns::dev_router_certificate(&host, &cert);
    let c = rt.block_on(async {
        let mut c = Cluster::new(|text| support::netns::on_host(text, &host, &cert));
        c.start(ROUTER, &["de-fra-1"]).await;
        c
    });
    let router = c.url(ROUTER);
    assert!(router.contains(&ns.host), "{router}");
    let conf = rt.block_on(cluster::open_conference(&router, "eu"));

    // Inside the namespace, nothing of UDP gets out: the page's
    // WebTransport cannot connect, and it moves to WebSocket by itself.
    let clicked = Instant::now();
    b.join("a", &link(&router, &conf), "Ada", None);
    let s = b.wait_for("a", FALLBACK_BOUND, "in the call over WebSocket", in_call);
    let took = clicked.elapsed();
    assert_eq!(s["transport"], "websocket", "{:#}", s["transports"]);
    assert_eq!(s["relay"], "de-fra-1");
    eprintln!("joined over WebSocket {took:?} after the join click");
    let page = s["participant"].as_str().unwrap().to_owned();

    // The call both ways with a native participant on QUIC outside.
    let joined = rt
        .block_on(cluster::join_from(
            &router,
            conf["id"].as_str().unwrap(),
            conf["passcode"].as_str().unwrap(),
            &ns.host,
        ))
        .unwrap();
    let native = joined.participant_id.clone();
    let from = ns.host.clone();
    let task = rt.spawn(async move {
        let mut client = cluster::connect(&joined, &from).await;
        let track = client.publish(TrackKind::Video, "x-synthetic", None).await.unwrap();
        let (sender, datagrams) = (client.sender(), client.datagrams());
        let mut p = Packetizer::new(track, MAX_DATAGRAM);
        let mut tick = tokio::time::interval(Duration::from_millis(33));
        let mut video = client
            .initial_tracks
            .iter()
            .find(|t| t.participant.0 == page && t.kind == TrackKind::Video)
            .map(|t| t.track);
        if let Some(v) = video {
            client.subscribe(v).await.unwrap();
        }
        let mut r = Reassembler::new(true);
        let (mut frames, mut n) = (0u32, 0u32);
        let mut asked = Instant::now() - Duration::from_secs(1);
        let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
        while tokio::time::Instant::now() < deadline && (frames < 60 || n < 150) {
            tokio::select! {
                _ = tick.tick() => {
                    let frame = vec![(n % 251) as u8; 3000];
                    for d in p.packetize(&frame, n % 30 == 0, residency_relay::clock::unix_micros()).unwrap() {
                        let _ = sender.send_raw(d.into());
                    }
                    n += 1;
                }
                event = client.next_event() => {
                    if let Ok(ServerMessage::TrackPublished(info)) = event {
                        if info.participant.0 == page && info.kind == TrackKind::Video {
                            client.subscribe(info.track).await.unwrap();
                            video = Some(info.track);
                        }
                    }
                }
                d = datagrams.next() => {
                    let Ok(d) = d else { break };
                    if video.is_none() || datagram::parse(&d).map(|h| h.track).ok() != video {
                        continue;
                    }
                    let out = r.push(&d);
                    if out.want_keyframe && asked.elapsed() >= Duration::from_millis(500) {
                        asked = Instant::now();
                        let _ = client.request_keyframe(video.unwrap()).await;
                    }
                    if out.frame.is_some() {
                        frames += 1;
                    }
                }
            }
        }
        client.leave().await;
        frames
    });
    b.wait_for(
        "a",
        Duration::from_secs(60),
        "the native participant's frames",
        |s| reassembled(s, &native, "video") >= 60,
    );
    let frames = rt.block_on(task).unwrap();
    assert!(
        frames >= 60,
        "the native participant put {frames} of the page's frames together"
    );
    let m = rt.block_on(c.relay_metrics("de-fra-1"));
    assert!(
        m.lines().any(|l| l.starts_with("rr_relay_sessions_total")
            && l.contains("transport=\"websocket\"")
            && l.ends_with(" 1")),
        "{m}"
    );
    rt.block_on(c.shutdown());
}
