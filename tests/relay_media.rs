//! Over loopback QUIC: publish → subscribers receive exactly the bytes sent,
//! in order; bad datagrams are dropped and counted without harming others.

mod support;

use std::time::Duration;

use bytes::Bytes;
use residency_relay::client::Client;
use residency_relay::forward::CoreConfig;
use residency_relay::wire::control::TrackKind;
use residency_relay::wire::datagram::{self, Flags, MediaHeader, TrackId};
use support::relay::{PUBLISHER, TestRelay, VIEWER, claims, sign_dev};

async fn join(
    relay: &TestRelay,
    from: &str,
    participant: &str,
    grants: residency_relay::ticket::Grants,
) -> Client {
    let ticket = sign_dev(&claims("de-fra-1", participant, grants));
    Client::connect(
        format!("{from}:0").parse().unwrap(),
        relay.quic,
        &relay.fingerprint,
        &ticket,
    )
    .await
    .unwrap_or_else(|e| panic!("{participant} could not join: {e}"))
}

async fn receive(client: &Client, n: usize) -> Vec<Bytes> {
    let mut got = Vec::new();
    while got.len() < n {
        match tokio::time::timeout(Duration::from_secs(5), client.recv_media()).await {
            Ok(Ok(d)) => got.push(d),
            _ => break,
        }
    }
    got
}

#[tokio::test]
async fn two_subscribers_receive_exactly_what_was_sent() {
    let mut relay = TestRelay::start("de-fra-1", "127.0.1.1", CoreConfig::default()).await;
    let mut alice = join(&relay, "127.0.0.2", "alice", PUBLISHER).await;
    let track = alice.publish(TrackKind::Video, "vp8", None).await.unwrap();
    let mut bob = join(&relay, "127.0.0.3", "bob", VIEWER).await;
    let mut carol = join(&relay, "127.0.0.4", "carol", VIEWER).await;
    assert_eq!(bob.initial_tracks.len(), 1);
    assert_eq!(bob.initial_tracks[0].track, track);
    bob.subscribe(track).await.unwrap();
    carol.subscribe(track).await.unwrap();

    let mut sent = Vec::new();
    for i in 0..200u32 {
        let header = MediaHeader {
            track,
            sequence: i,
            flags: if i % 50 == 0 {
                Flags::KEYFRAME
            } else {
                Flags::default()
            },
            info: residency_relay::wire::datagram::Info::NONE,
        };
        // An opaque payload, as an end-to-end encrypted frame would be.
        let payload: Vec<u8> = (0..900).map(|k| (k as u32 * 31 + i) as u8).collect();
        let mut d = Vec::new();
        datagram::encode(&header, &payload, &mut d);
        alice.send_media(&header, &payload).unwrap();
        sent.push(Bytes::from(d));
        if i % 20 == 19 {
            // Pace a little: loopback loses nothing, but a burst can outrun
            // the receivers' datagram buffers.
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
    }
    let (got_bob, got_carol) = tokio::join!(receive(&bob, 200), receive(&carol, 200));
    for (who, got) in [("bob", &got_bob), ("carol", &got_carol)] {
        let sequences: Vec<u32> = got
            .iter()
            .map(|d| datagram::parse(d).unwrap().sequence)
            .collect();
        assert_eq!(
            sequences,
            (0..200).collect::<Vec<_>>(),
            "{who} received these sequences"
        );
        assert!(got == &sent, "{who} received different bytes");
    }

    let (_, metrics) = relay.get("/metrics").await;
    assert!(
        metrics.contains("rr_relay_datagrams_received_total{relay=\"de-fra-1\"} 200"),
        "{metrics}"
    );
    assert!(
        metrics.contains("rr_relay_deliveries_total{relay=\"de-fra-1\"} 400"),
        "{metrics}"
    );
    alice.leave().await;
    bob.leave().await;
    carol.leave().await;
    relay.stop().await;
}

#[tokio::test]
async fn malformed_and_foreign_datagrams_are_dropped_and_counted() {
    let mut relay = TestRelay::start("de-fra-1", "127.0.1.1", CoreConfig::default()).await;
    let mut alice = join(&relay, "127.0.0.2", "alice", PUBLISHER).await;
    let track = alice.publish(TrackKind::Audio, "opus", None).await.unwrap();
    let mut mallory = join(&relay, "127.0.0.5", "mallory", PUBLISHER).await;
    let mut bob = join(&relay, "127.0.0.3", "bob", VIEWER).await;
    bob.subscribe(track).await.unwrap();

    // Mallory: too short, wrong version, reserved flags, someone else's
    // track, an unknown track, a layer on a track that has none.
    mallory
        .send_raw(Bytes::from_static(b"\x20\x00\x00"))
        .unwrap();
    mallory
        .send_raw(Bytes::from_static(
            b"\x60\x00\x00\x00\x01\x00\x00\x00\x01\x00xx",
        ))
        .unwrap();
    mallory
        .send_raw(Bytes::from_static(
            b"\x58\x00\x00\x00\x01\x00\x00\x00\x01\x00xx",
        ))
        .unwrap();
    mallory
        .send_media(
            &MediaHeader {
                track,
                sequence: 9,
                flags: Flags::default(),
                info: residency_relay::wire::datagram::Info::NONE,
            },
            b"spoof",
        )
        .unwrap();
    mallory
        .send_media(
            &MediaHeader {
                track: TrackId(77),
                sequence: 9,
                flags: Flags::default(),
                info: residency_relay::wire::datagram::Info::NONE,
            },
            b"x",
        )
        .unwrap();
    // Mallory's own track still works for her.
    let own = mallory
        .publish(TrackKind::Data, "none", None)
        .await
        .unwrap();
    mallory
        .send_media(
            &MediaHeader {
                track: own,
                sequence: 1,
                flags: Flags::default(),
                info: residency_relay::wire::datagram::Info::NONE,
            },
            b"fine",
        )
        .unwrap();
    // A data track has no layers: an info byte there is refused.
    mallory
        .send_media(
            &MediaHeader {
                track: own,
                sequence: 2,
                flags: Flags::default(),
                info: residency_relay::wire::datagram::Info::layer(1),
            },
            b"lying",
        )
        .unwrap();
    // Alice is unaffected.
    for i in 0..10u32 {
        alice
            .send_media(
                &MediaHeader {
                    track,
                    sequence: i,
                    flags: Flags::default(),
                    info: residency_relay::wire::datagram::Info::NONE,
                },
                b"audio",
            )
            .unwrap();
    }
    let got = receive(&bob, 10).await;
    assert_eq!(got.len(), 10);
    assert!(
        got.iter().all(|d| datagram::payload(d) == b"audio"),
        "bob received only alice's audio"
    );

    // Counters land within a few ticks of the core loop.
    let mut metrics = String::new();
    for _ in 0..50 {
        metrics = relay.get("/metrics").await.1;
        if metrics.contains("reason=\"unknown_track\",relay=\"de-fra-1\"} 1") {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    for reason in [
        "truncated",
        "unsupported_version",
        "reserved_flags",
        "not_owner",
        "unknown_track",
        "bad_info",
    ] {
        let line =
            format!("rr_relay_ingress_drops_total{{reason=\"{reason}\",relay=\"de-fra-1\"}} 1");
        assert!(metrics.contains(&line), "missing {line}\n{metrics}");
    }
    alice.leave().await;
    bob.leave().await;
    mallory.leave().await;
    relay.stop().await;
}
