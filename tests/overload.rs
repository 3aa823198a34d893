//! Limits under overload: refused joins with a clear code and Retry-After,
//! not worse service for those already in.

mod support;

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use residency_relay::client::Client;
use residency_relay::client::join::JoinError;
use residency_relay::wire::control::TrackKind;
use residency_relay::wire::datagram::{Flags, MediaHeader};
use serde_json::json;
use support::cluster::{
    Cluster, connect, join_from, open_conference, request, sample, wait_participants,
};
use support::wait::until;

fn refusal(e: JoinError) -> (u16, String) {
    match e {
        JoinError::Refused { status, code, .. } => (status, code),
        other => panic!("expected a refusal, got {other}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_full_relay_refuses_newcomers_and_keeps_serving_those_in() {
    // Zurich's relay takes 12 participants.
    let mut c = Cluster::new(|t| t.replace("max_participants = 200", "max_participants = 12"));
    c.start("ch-zrh-router", &["ch-zrh-1"]).await;
    let router = c.url("ch-zrh-router");
    let conf = open_conference(&router, "ch").await;
    let id = conf["id"].as_str().unwrap().to_owned();
    let passcode = conf["passcode"].as_str().unwrap().to_owned();

    let mut clients: Vec<Client> = Vec::new();
    for _ in 0..12 {
        let j = join_from(&router, &id, &passcode, "127.0.0.5")
            .await
            .unwrap();
        clients.push(connect(&j, "127.0.0.5").await);
    }
    let track = clients[0]
        .publish(TrackKind::Audio, "opus", None)
        .await
        .unwrap();
    let received: Vec<Arc<AtomicU64>> = (1..12).map(|_| Arc::default()).collect();
    for (client, count) in clients[1..].iter_mut().zip(&received) {
        client
            .subscribe_announced(track, Duration::from_secs(5))
            .await
            .unwrap();
        let datagrams = client.datagrams();
        let count = count.clone();
        tokio::spawn(async move {
            while datagrams.next().await.is_ok() {
                count.fetch_add(1, Ordering::Relaxed);
            }
        });
    }
    // The router counts the relay full once its report has the twelve.
    wait_participants(&router, &conf, 12).await;
    let before: Vec<u64> = received.iter().map(|r| r.load(Ordering::Relaxed)).collect();

    // The publisher keeps sending while 20 newcomers are refused.
    let publisher = clients.remove(0);
    let sender = tokio::spawn(async move {
        for sequence in 0..300u32 {
            publisher
                .send_media(
                    &MediaHeader {
                        track,
                        sequence,
                        flags: Flags::default(),
                        info: residency_relay::wire::datagram::Info::NONE,
                    },
                    &[1; 200],
                )
                .unwrap();
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        publisher
    });
    for _ in 0..20 {
        let r = request(
            "POST",
            &format!("{router}/v1/conferences/{id}/join"),
            Some("127.0.0.5"),
            None,
            Some(json!({ "passcode": passcode, "display_name": "late" })),
        )
        .await;
        assert_eq!(r.status, 503, "{}", String::from_utf8_lossy(&r.body));
        assert_eq!(r.json()["error"]["code"], "at_capacity");
        assert_eq!(r.header("retry-after"), Some("5"));
    }
    let _publisher = sender.await.unwrap();
    until(
        "every subscriber's 300 datagrams",
        Duration::from_secs(10),
        || async {
            let got: Vec<u64> = received
                .iter()
                .zip(&before)
                .map(|(r, b)| r.load(Ordering::Relaxed) - b)
                .collect();
            if got.iter().all(|n| *n >= 300) {
                Ok(())
            } else {
                Err(format!("{got:?}"))
            }
        },
    )
    .await;
    // Everyone already in got everything sent meanwhile.
    for (r, b) in received.iter().zip(before) {
        assert_eq!(r.load(Ordering::Relaxed) - b, 300);
    }
    c.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn conference_address_and_connection_limits_answer_clearly() {
    let mut c = Cluster::new(|t| {
        format!(
            "{t}\n[limits]\nconference_max_participants = 3\njoins_per_address_per_minute = 6\nrelay_connections_per_address = 2\n"
        )
    });
    c.start("de-fra-router", &["de-fra-1"]).await;
    let router = c.url("de-fra-router");
    let conf = open_conference(&router, "eu").await;
    let id = conf["id"].as_str().unwrap().to_owned();
    let passcode = conf["passcode"].as_str().unwrap().to_owned();

    // Three participants; the fourth finds the conference full.
    let mut joined = Vec::new();
    for ip in ["127.0.0.2", "127.0.0.2", "127.0.0.4"] {
        joined.push((join_from(&router, &id, &passcode, ip).await.unwrap(), ip));
    }
    let e = join_from(&router, &id, &passcode, "127.0.0.4")
        .await
        .unwrap_err();
    assert_eq!(refusal(e), (503, "conference_full".into()));

    // The relay takes two connections from one address, not three.
    let mut kept = Vec::new();
    for (j, ip) in &joined[..2] {
        kept.push(connect(j, ip).await);
    }
    let third = Client::connect(
        "127.0.0.2:0".parse().unwrap(),
        joined[2].0.quic_addr,
        &joined[2].0.cert_sha256,
        &joined[2].0.ticket,
    )
    .await;
    assert!(third.is_err());
    let m = c.relay_metrics("de-fra-1").await;
    assert_eq!(sample(&m, "rr_relay_connection_refusals_total"), 1.0);
    // From another address it connects.
    kept.push(connect(&joined[2].0, joined[2].1).await);

    // One address may try six joins a minute, then 429 with Retry-After
    // (two conferences, so the conference limit of three stays out of it).
    let mut urls = Vec::new();
    for _ in 0..2 {
        let other = open_conference(&router, "eu").await;
        urls.push((
            format!(
                "{router}/v1/conferences/{}/join",
                other["id"].as_str().unwrap()
            ),
            other["passcode"].clone(),
        ));
    }
    let mut statuses = Vec::new();
    for k in 0..7 {
        let (url, passcode) = &urls[k % 2];
        let r = request(
            "POST",
            url,
            Some("127.0.0.6"),
            None,
            Some(json!({ "passcode": passcode, "display_name": "x" })),
        )
        .await;
        statuses.push(r.status);
        if r.status == 429 {
            assert_eq!(r.json()["error"]["code"], "too_many_joins_from_address");
            assert!(r.header("retry-after").is_some());
        }
    }
    assert_eq!(statuses, [200, 200, 200, 200, 200, 200, 429]);
    c.shutdown().await;
}
