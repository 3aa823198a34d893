//! The relay's shards: conferences spread over them, and a conference's
//! participants always meet in the one shard its id hashes to (cascade
//! links too: `tests/cascade.rs` runs its relays with three shards).

mod support;

use std::collections::HashMap;
use std::time::Duration;

use residency_relay::client::Client;
use residency_relay::forward::CoreConfig;
use residency_relay::relay::{self, metrics::sample};
use residency_relay::wire::control::TrackKind;
use residency_relay::wire::datagram::{Flags, MediaHeader};
use support::relay::{PUBLISHER, TestRelay, VIEWER, claims, sign_dev};

#[test]
fn conference_ids_spread_evenly_and_stably() {
    let ids: Vec<String> = (0..4000)
        .map(|i| {
            format!(
                "eu-{:026x}",
                (i as u128).wrapping_mul(0x9e37_79b9_7f4a_7c15_f39c_c060_5ced_c835)
            )
        })
        .map(|id| id[..29].to_owned())
        .collect();
    let mut per = [0usize; 4];
    for id in &ids {
        let s = relay::shard_of(id, 4);
        assert_eq!(s, relay::shard_of(id, 4), "stable");
        per[s] += 1;
    }
    // 1,000 expected each; a fair hash stays well within ±15 %.
    for n in per {
        assert!((850..=1150).contains(&n), "{per:?}");
    }
    assert!(ids.iter().all(|id| relay::shard_of(id, 1) == 0));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_participant_of_a_conference_lands_in_its_shard() {
    const SHARDS: usize = 4;
    let mut r =
        TestRelay::start_with_workers("de-fra-1", "127.0.1.1", CoreConfig::default(), SHARDS).await;
    let conferences: Vec<String> = (0..8).map(|i| format!("eu-shardtest{i}")).collect();
    let mut expected: HashMap<usize, usize> = HashMap::new();
    let mut calls = Vec::new();
    for (i, conference) in conferences.iter().enumerate() {
        *expected
            .entry(relay::shard_of(conference, SHARDS))
            .or_default() += 2;
        let join = |who: String, grants| {
            let mut c = claims("de-fra-1", &who, grants);
            c.conference = conference.clone();
            let ticket = sign_dev(&c);
            let (quic, pin) = (r.quic, r.fingerprint.clone());
            async move {
                Client::connect("127.0.0.2:0".parse().unwrap(), quic, &pin, &ticket)
                    .await
                    .unwrap()
            }
        };
        let mut publisher = join(format!("p{i}"), PUBLISHER).await;
        let mut viewer = join(format!("v{i}"), VIEWER).await;
        let track = publisher
            .publish(TrackKind::Video, "vp8", None)
            .await
            .unwrap();
        viewer.subscribe(track).await.unwrap();
        calls.push((publisher, viewer, track));
    }
    // Conferences spread: more than one shard is in use.
    assert!(expected.len() > 1, "{expected:?}");
    // Media crosses every conference: publisher and viewer share a core.
    for (i, (publisher, viewer, track)) in calls.iter().enumerate() {
        let header = MediaHeader {
            track: *track,
            sequence: i as u32,
            flags: Flags::KEYFRAME,
            info: residency_relay::wire::datagram::Info::NONE,
        };
        publisher.send_media(&header, b"frame").unwrap();
        let got = tokio::time::timeout(Duration::from_secs(5), viewer.recv_media())
            .await
            .expect("media within 5 s")
            .unwrap();
        assert!(got.ends_with(b"frame"));
    }
    let (_, text) = r.get("/metrics").await;
    for shard in 0..SHARDS {
        let name = format!("rr_relay_shard_connections{{shard=\"{shard}\"");
        let line = text.lines().find(|l| l.starts_with(&name)).unwrap();
        let n: usize = line.rsplit(' ').next().unwrap().parse().unwrap();
        assert_eq!(
            n,
            expected.get(&shard).copied().unwrap_or(0),
            "shard {shard}: {line}"
        );
    }
    assert_eq!(sample(&text, "rr_relay_connections"), Some(16.0));
    for (publisher, viewer, _) in calls {
        publisher.leave().await;
        viewer.leave().await;
    }
    r.stop().await;
}
