//! Every ticket failure is refused over QUIC with its code and counted; a
//! refused client harms no one already in the conference.

mod support;

use std::time::Duration;

use residency_relay::client::{Client, ClientError};
use residency_relay::forward::CoreConfig;
use residency_relay::ticket::{self, Claims, TicketError};
use residency_relay::wire::control::TrackKind;
use residency_relay::wire::datagram::{Flags, MediaHeader};
use support::relay::{PUBLISHER, TestRelay, VIEWER, claims, sign_dev, unix_now};

async fn try_join(relay: &TestRelay, ticket: &str) -> Result<Client, ClientError> {
    Client::connect(
        "127.0.0.9:0".parse().unwrap(),
        relay.quic,
        &relay.fingerprint,
        ticket,
    )
    .await
}

#[tokio::test]
async fn each_ticket_failure_is_refused_with_its_code() {
    let mut relay = TestRelay::start("de-fra-1", "127.0.1.1", CoreConfig::default()).await;
    // A call in progress.
    let ticket_a = sign_dev(&claims("de-fra-1", "alice", PUBLISHER));
    let mut alice = try_join(&relay, &ticket_a).await.unwrap();
    let track = alice.publish(TrackKind::Audio, "opus", None).await.unwrap();
    let mut bob = try_join(&relay, &sign_dev(&claims("de-fra-1", "bob", VIEWER)))
        .await
        .unwrap();
    bob.subscribe(track).await.unwrap();

    let other_key = ticket::parse_signing_key(&"11".repeat(32)).unwrap();
    let with = |f: &dyn Fn(&mut Claims)| {
        let mut c = claims("de-fra-1", "eve", PUBLISHER);
        f(&mut c);
        c
    };
    let cases: Vec<(String, TicketError)> = vec![
        ("v1.garbage".to_owned(), TicketError::Malformed),
        (
            ticket::sign(&with(&|_| {}), &other_key),
            TicketError::BadSignature,
        ),
        (
            sign_dev(&with(&|c| c.jurisdiction = "us".into())),
            TicketError::ForeignJurisdiction,
        ),
        (
            sign_dev(&with(&|c| c.relay = "ie-dub-1".into())),
            TicketError::WrongRelay,
        ),
        (
            sign_dev(&with(&|c| {
                c.issued_at = unix_now() - 120;
                c.expires_at = unix_now() - 60;
            })),
            TicketError::Expired,
        ),
        (
            sign_dev(&with(&|c| c.expires_at = c.issued_at + 3600)),
            TicketError::BadValidity,
        ),
        (ticket_a.clone(), TicketError::Replayed),
    ];
    for (ticket, expected) in &cases {
        match try_join(&relay, ticket).await {
            Err(ClientError::Refused { code, message }) => {
                assert_eq!(code, expected.wire_code(), "{expected:?}: {message}");
            }
            other => panic!(
                "{expected:?}: expected a refusal, got {:?}",
                other.map(|_| "admitted")
            ),
        }
    }

    // Alice and Bob were not disturbed.
    for i in 0..5u32 {
        alice
            .send_media(
                &MediaHeader {
                    track,
                    sequence: i,
                    flags: Flags::default(),
                    info: residency_relay::wire::datagram::Info::NONE,
                },
                b"still here",
            )
            .unwrap();
    }
    for _ in 0..5 {
        let d = tokio::time::timeout(Duration::from_secs(5), bob.recv_media())
            .await
            .unwrap()
            .unwrap();
        assert!(d.ends_with(b"still here"));
    }
    let (_, metrics) = relay.get("/metrics").await;
    for (_, e) in &cases {
        // Unsigned, or not signed by a key the policy gives the claimed
        // jurisdiction: forged.
        let origin = match e {
            TicketError::Malformed
            | TicketError::BadSignature
            | TicketError::ForeignJurisdiction => "forged",
            _ => "signed",
        };
        let line = format!(
            "rr_relay_ticket_refusals_total{{origin=\"{origin}\",reason=\"{}\",relay=\"de-fra-1\"}} 1",
            e.code()
        );
        assert!(metrics.contains(&line), "missing {line}");
    }
    assert!(metrics.contains("rr_relay_connections{relay=\"de-fra-1\"} 2"));
    alice.leave().await;
    bob.leave().await;
    relay.stop().await;
}
