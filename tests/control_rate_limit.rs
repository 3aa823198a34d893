//! One participant floods the control stream with publish/unpublish pairs:
//! past its budget the relay drops them with a `rate_limited` error, then
//! disconnects it; the other members see no flood.

mod support;

use std::time::Duration;

use residency_relay::client::{Client, ClientError};
use residency_relay::forward::CoreConfig;
use residency_relay::wire::ErrorCode;
use residency_relay::wire::close_code;
use residency_relay::wire::control::{self, ClientMessage, ServerMessage, TrackKind};
use support::relay::{PUBLISHER, TestRelay, VIEWER, claims, sign_dev};

async fn join(relay: &TestRelay, who: &str, grants: residency_relay::ticket::Grants) -> Client {
    Client::connect(
        "127.0.0.1:0".parse().unwrap(),
        relay.quic,
        &relay.fingerprint,
        &sign_dev(&claims("de-fra-1", who, grants)),
    )
    .await
    .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_control_flood_is_cut_off_before_it_reaches_anyone() {
    let mut relay = TestRelay::start("de-fra-1", "127.0.1.1", CoreConfig::default()).await;
    let mut mallory = join(&relay, "mallory", PUBLISHER).await;
    let mut bob = join(&relay, "bob", VIEWER).await;

    // Bob counts the announcements he receives.
    let counter = tokio::spawn(async move {
        let mut announcements = 0u32;
        while let Ok(Ok(m)) = tokio::time::timeout(Duration::from_secs(3), bob.next_event()).await {
            if matches!(
                m,
                ServerMessage::TrackPublished(_) | ServerMessage::TrackUnpublished { .. }
            ) {
                announcements += 1;
            }
        }
        (announcements, bob)
    });

    // 5,000 publish/unpublish pairs, as fast as the relay answers.
    let mut published = 0u32;
    let mut rate_limited = 0u32;
    let mut closed = false;
    for _ in 0..5000 {
        match mallory.publish(TrackKind::Video, "vp8", None).await {
            Ok(track) => {
                published += 1;
                let mut frame = Vec::new();
                control::encode(&ClientMessage::Unpublish { track }, &mut frame).unwrap();
                if mallory.send_control_raw(&frame).await.is_err() {
                    closed = true;
                    break;
                }
            }
            // Unpublishes dropped leave tracks behind, so the track limit
            // may answer too.
            Err(ClientError::Refused { code, .. }) => {
                assert!(
                    code == ErrorCode::RateLimited.code()
                        || code == ErrorCode::TooManyTracks.code(),
                    "error {code}"
                );
                if code == ErrorCode::RateLimited.code() {
                    rate_limited += 1;
                }
            }
            Err(_) => {
                closed = true;
                break;
            }
        }
    }
    assert!(closed, "the flooding participant stayed connected");
    assert!(
        rate_limited >= 1,
        "no rate_limited error before the disconnect"
    );
    assert_eq!(
        tokio::time::timeout(Duration::from_secs(5), mallory.closed())
            .await
            .unwrap(),
        Some(close_code::RATE_LIMITED.into())
    );
    // The burst went through (20 messages: 10 pairs), hardly more.
    assert!(
        (5..=30).contains(&published),
        "{published} publishes passed"
    );

    let (announcements, bob) = counter.await.unwrap();
    assert!(
        (10..=60).contains(&announcements),
        "bob received {announcements} announcements"
    );
    assert_eq!(bob.close_code(), None, "bob was disconnected");

    let (_, metrics) = relay.get("/metrics").await;
    for outcome in ["dropped", "disconnected"] {
        let prefix = format!(
            "rr_relay_control_rate_limited_total{{outcome=\"{outcome}\",relay=\"de-fra-1\"}} "
        );
        let n: f64 = metrics
            .lines()
            .find_map(|l| l.strip_prefix(prefix.as_str()))
            .and_then(|v| v.parse().ok())
            .unwrap_or_else(|| panic!("no {prefix}"));
        assert!(n >= 1.0, "{prefix}{n}");
    }
    bob.leave().await;
    relay.stop().await;
}
