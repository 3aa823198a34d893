//! A subscriber that stops reading does not reduce what another receives.

mod support;

use std::time::Duration;

use residency_relay::client::Client;
use residency_relay::client::synthetic::{self, ReceiveStats};
use residency_relay::forward::CoreConfig;
use residency_relay::wire::control::TrackKind;
use residency_relay::wire::datagram::{Flags, MediaHeader};
use support::relay::{PUBLISHER, TestRelay, VIEWER, claims, sign_dev};

#[tokio::test]
async fn a_stalled_subscriber_costs_the_others_nothing() {
    let mut relay = TestRelay::start(
        "de-fra-1",
        "127.0.1.1",
        CoreConfig {
            queue_packets: 64,
            ..CoreConfig::default()
        },
    )
    .await;
    let join = |who: &'static str, grants| {
        let ticket = sign_dev(&claims("de-fra-1", who, grants));
        let quic = relay.quic;
        let pin = relay.fingerprint.clone();
        async move {
            Client::connect("127.0.0.2:0".parse().unwrap(), quic, &pin, &ticket)
                .await
                .unwrap()
        }
    };
    let mut alice = join("alice", PUBLISHER).await;
    let track = alice.publish(TrackKind::Video, "vp8", None).await.unwrap();
    let mut reader = join("reader", VIEWER).await;
    let mut stalled = join("stalled", VIEWER).await;
    reader.subscribe(track).await.unwrap();
    stalled.subscribe(track).await.unwrap();

    const N: u32 = 1000;
    let receiving = tokio::spawn(async move {
        let mut stats = ReceiveStats::default();
        while stats.packets < u64::from(N) {
            match tokio::time::timeout(Duration::from_secs(5), reader.recv_media()).await {
                Ok(Ok(d)) => stats.record(&d),
                _ => break,
            }
        }
        (stats, reader)
    });
    // `stalled` never reads a datagram.
    for sequence in 0..N {
        let payload = synthetic::payload(1000);
        alice
            .send_media(
                &MediaHeader {
                    track,
                    sequence,
                    flags: Flags::default(),
                    info: residency_relay::wire::datagram::Info::NONE,
                },
                &payload,
            )
            .unwrap();
        // 10 packets per 5 ms (16 Mbit/s): the reader's 64-packet queue
        // rides out a ~30 ms scheduling hiccup on a loaded 2-core machine,
        // while the stalled subscriber's queue is full after 64 packets. If
        // the stalled queue held back the shared path, the reader would lose
        // nearly all of the remaining 936.
        if sequence % 10 == 9 {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }
    let (stats, reader) = receiving.await.unwrap();
    assert_eq!(
        stats.packets,
        u64::from(N),
        "the reading subscriber lost {}",
        stats.lost()
    );
    assert_eq!(stats.lost(), 0);
    reader.leave().await;
    stalled.leave().await;
    alice.leave().await;
    relay.stop().await;
}
