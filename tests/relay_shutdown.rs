//! Graceful shutdown: clients are told the relay is going away, readiness
//! turns off, and the relay stops within its grace time.

mod support;

use std::time::{Duration, Instant};

use residency_relay::client::Client;
use residency_relay::forward::CoreConfig;
use residency_relay::wire::GOING_AWAY_SHUTDOWN;
use residency_relay::wire::control::ServerMessage;
use support::relay::{PUBLISHER, TestRelay, claims, sign_dev};

#[tokio::test]
async fn clients_hear_going_away_and_the_relay_stops_in_time() {
    let mut relay = TestRelay::start("ie-dub-1", "127.0.1.3", CoreConfig::default()).await;
    assert_eq!(relay.get("/readyz").await.0, 200);
    assert_eq!(relay.get("/healthz").await.0, 200);
    let (status, cert) = relay.get("/cert").await;
    assert_eq!(status, 200);
    assert!(cert.contains(&relay.fingerprint));

    let ticket = sign_dev(&claims("ie-dub-1", "alice", PUBLISHER));
    let mut alice = Client::connect(
        "127.0.0.4:0".parse().unwrap(),
        relay.quic,
        &relay.fingerprint,
        &ticket,
    )
    .await
    .unwrap();
    let started = Instant::now();
    let stopping = tokio::spawn(async move {
        relay.stop().await;
        relay
    });
    let event = tokio::time::timeout(Duration::from_secs(5), alice.next_event())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        std::mem::discriminant(&event),
        std::mem::discriminant(&ServerMessage::GoingAway {
            code: 0,
            reason: String::new()
        })
    );
    if let ServerMessage::GoingAway { code, .. } = event {
        assert_eq!(code, GOING_AWAY_SHUTDOWN);
    }
    // Alice does not leave; the relay closes anyway after its 2 s grace.
    let _relay = stopping.await.unwrap();
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "took {:?}",
        started.elapsed()
    );
}

#[tokio::test]
async fn pinning_refuses_a_different_certificate() {
    let mut relay = TestRelay::start("de-ber-1", "127.0.1.2", CoreConfig::default()).await;
    let ticket = sign_dev(&claims("de-ber-1", "alice", PUBLISHER));
    let wrong = "00".repeat(32);
    let result = Client::connect("127.0.0.2:0".parse().unwrap(), relay.quic, &wrong, &ticket).await;
    assert!(result.is_err(), "connected despite a wrong pin");
    relay.stop().await;
}
