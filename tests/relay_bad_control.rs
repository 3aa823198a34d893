//! Malformed or oversized control messages close only the sender's
//! connection, are counted, and leave everyone else's media flowing.

mod support;

use std::time::Duration;

use residency_relay::client::Client;
use residency_relay::forward::CoreConfig;
use residency_relay::wire::control::TrackKind;
use residency_relay::wire::datagram::{Flags, MediaHeader};
use support::relay::{PUBLISHER, TestRelay, VIEWER, claims, sign_dev};

async fn join(relay: &TestRelay, who: &str, grants: residency_relay::ticket::Grants) -> Client {
    let ticket = sign_dev(&claims("ie-dub-1", who, grants));
    Client::connect(
        "127.0.0.4:0".parse().unwrap(),
        relay.quic,
        &relay.fingerprint,
        &ticket,
    )
    .await
    .unwrap()
}

#[tokio::test]
async fn bad_control_frames_close_only_their_sender() {
    let mut relay = TestRelay::start("ie-dub-1", "127.0.1.3", CoreConfig::default()).await;
    let mut alice = join(&relay, "alice", PUBLISHER).await;
    let track = alice.publish(TrackKind::Audio, "opus", None).await.unwrap();
    let mut bob = join(&relay, "bob", VIEWER).await;
    bob.subscribe(track).await.unwrap();

    let frames: [&[u8]; 3] = [
        // Well framed, but not JSON.
        b"\x00\x00\x00\x05\x01{bad",
        // A length far over the 16 KiB limit.
        b"\x00\x10\x00\x00\x01",
        // An unknown message type.
        b"\x00\x00\x00\x14\x01{\"type\":\"teleport\"}",
    ];
    for frame in frames {
        let mut mallory = join(&relay, "mallory", PUBLISHER).await;
        mallory.send_control_raw(frame).await.unwrap();
        let closed = tokio::time::timeout(Duration::from_secs(5), async {
            while mallory.close_reason().is_none() {
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        })
        .await;
        assert!(closed.is_ok(), "mallory was not disconnected for {frame:?}");
        assert!(
            mallory
                .close_reason()
                .unwrap()
                .contains("malformed control message")
        );
    }

    for i in 0..5u32 {
        alice
            .send_media(
                &MediaHeader {
                    track,
                    sequence: i,
                    flags: Flags::default(),
                    info: residency_relay::wire::datagram::Info::NONE,
                },
                b"on air",
            )
            .unwrap();
    }
    for _ in 0..5 {
        let d = tokio::time::timeout(Duration::from_secs(5), bob.recv_media())
            .await
            .unwrap()
            .unwrap();
        assert!(d.ends_with(b"on air"));
    }
    let (_, metrics) = relay.get("/metrics").await;
    assert!(
        metrics.contains("rr_relay_control_errors_total{relay=\"ie-dub-1\"} 3"),
        "{metrics}"
    );
    alice.leave().await;
    bob.leave().await;
    relay.stop().await;
}

/// A connection that never opens its control stream is closed when the
/// hello timeout passes (its address slot is given back, and nothing keeps
/// it open: not even the tasks that refuse its extra streams).
#[tokio::test]
async fn a_connection_without_a_control_stream_is_closed_after_the_hello_timeout() {
    let mut relay = TestRelay::start("ie-dub-1", "127.0.1.3", CoreConfig::default()).await;
    let endpoint =
        residency_relay::client::endpoint("127.0.0.1:0".parse().unwrap(), &relay.fingerprint)
            .unwrap();
    let conn = endpoint
        .connect(relay.quic, "relay")
        .unwrap()
        .await
        .unwrap();
    // A unidirectional stream, which the native protocol has none of.
    let mut uni = conn.open_uni().await.unwrap();
    let _ = uni.write_all(b"nobody reads this").await;
    let closed = tokio::time::timeout(Duration::from_secs(15), conn.closed()).await;
    assert!(closed.is_ok(), "the relay kept a silent connection open");
    relay.stop().await;
}
