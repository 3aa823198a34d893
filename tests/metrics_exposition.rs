//! The exported metrics after a scripted call: the documented names, only
//! bounded labels, no personal data; samples are written for `promtool
//! check metrics` (run here when installed, and by `.ci/run` always).

mod support;

use std::time::Duration;

use residency_relay::wire::control::TrackKind;
use residency_relay::wire::datagram::{Flags, MediaHeader};
use serde_json::json;
use support::cluster::{Cluster, connect, open_conference, request};
use support::wait::{REPORTS, until};

/// What the router's metrics must show after the call (each a part of a line).
const ROUTER_SERIES: [&str; 7] = [
    "rr_router_route_decisions_total{jurisdiction=\"eu\",outcome=\"relay_chosen\",router=\"de-fra-router\"} 2",
    "rr_router_join_refusals_total{reason=\"wrong_passcode\",router=\"de-fra-router\"} 1",
    "rr_router_moderation_total{action=\"kick\",router=\"de-fra-router\"} 1",
    "rr_router_build_info{version=\"",
    "rr_router_http_tls_failures_total{reason=\"handshake\",router=\"de-fra-router\"} ",
    "rr_router_tls_cert_expiry_timestamp_seconds{router=\"de-fra-router\"} 2112019311",
    "\nprocess_cpu_seconds_total ",
];

/// What Frankfurt's metrics must show after the call.
const RELAY_SERIES: [&str; 7] = [
    "rr_relay_router_reports_total{outcome=\"tls\",relay=\"de-fra-1\"} 0",
    "\nprocess_resident_memory_bytes ",
    "rr_relay_shard_connections{shard=\"",
    "rr_relay_cascade_links{relay=\"de-fra-1\"} 1",
    "rr_relay_forward_seconds_count{relay=\"de-fra-1\"}",
    "rr_relay_participants{jurisdiction=\"eu\",relay=\"de-fra-1\"} 1",
    "rr_relay_conferences{jurisdiction=\"eu\",relay=\"de-fra-1\"} 1",
];

/// `rr_relay_cascade_bytes_sent_total` in a relay's metrics (0 until it shows).
fn cascade_bytes_sent(text: &str) -> f64 {
    text.lines()
        .find(|l| l.starts_with("rr_relay_cascade_bytes_sent_total"))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse::<f64>().ok())
        .unwrap_or(0.0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn metrics_after_a_call_are_bounded_and_free_of_personal_data() {
    let mut c = Cluster::new(|t| t);
    c.start("de-fra-router", &["de-fra-1", "ie-dub-1"]).await;
    let router = c.url("de-fra-router");
    let conf = open_conference(&router, "eu").await;
    let id = conf["id"].as_str().unwrap().to_owned();
    let passcode = conf["passcode"].as_str().unwrap().to_owned();
    let join = |ip: &'static str, name: &'static str| {
        let (router, id, passcode) = (router.clone(), id.clone(), passcode.clone());
        async move {
            residency_relay::client::join::join(
                &router,
                &id,
                &residency_relay::client::join::Credential::Passcode(passcode),
                name,
                Some(ip.parse().unwrap()),
                Duration::from_secs(10),
            )
            .await
            .unwrap()
        }
    };
    let alice = join("127.0.0.2", "Alice Secretname").await;
    let bob = join("127.0.0.4", "Bob Hiddenname").await;
    let mut a = connect(&alice, "127.0.0.2").await;
    let mut b = connect(&bob, "127.0.0.4").await;
    let track = a.publish(TrackKind::Audio, "opus", None).await.unwrap();
    b.subscribe_announced(track, Duration::from_secs(10))
        .await
        .unwrap();
    for sequence in 0..200u32 {
        a.send_media(
            &MediaHeader {
                track,
                sequence,
                flags: Flags::default(),
                info: residency_relay::wire::datagram::Info::NONE,
            },
            b"x",
        )
        .unwrap();
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    // A wrong passcode and a kick, for the refusal and moderation series.
    let r = request(
        "POST",
        &format!("{router}/v1/conferences/{id}/join"),
        Some("127.0.0.5"),
        None,
        Some(json!({ "passcode": "nope", "display_name": "Mallory Q" })),
    )
    .await;
    assert_eq!(r.status, 403);
    let host = format!("Bearer {}", conf["host_token"].as_str().unwrap());
    let r = request(
        "POST",
        &format!(
            "{router}/v1/conferences/{id}/participants/{}/kick",
            bob.participant_id
        ),
        None,
        Some(&host),
        None,
    )
    .await;
    assert_eq!(r.status, 200);

    // The relay's gauges and cascade counters are those of its last report
    // to the router: the metrics are read until they carry the call.
    let at_least_sent = 10.0 * 200.0 * 0.5;
    let (router_text, relay_text) = until("the call in the metrics", REPORTS, || async {
        let router_text = String::from_utf8(
            request("GET", &format!("{router}/metrics"), None, None, None)
                .await
                .body
                .to_vec(),
        )
        .unwrap();
        let relay_text = c.relay_metrics("de-fra-1").await;
        let missing: Vec<&str> = ROUTER_SERIES
            .iter()
            .filter(|n| !router_text.contains(*n))
            .chain(RELAY_SERIES.iter().filter(|n| !relay_text.contains(*n)))
            .copied()
            .collect();
        let sent = cascade_bytes_sent(&relay_text);
        if missing.is_empty() && sent >= at_least_sent {
            Ok((router_text, relay_text))
        } else {
            Err(format!("missing {missing:?}; cascade bytes sent {sent}"))
        }
    })
    .await;

    let dir = std::path::Path::new(env!("CARGO_TARGET_TMPDIR")).join("metrics");
    std::fs::create_dir_all(&dir).unwrap();
    let samples = vec![
        ("router.prom", router_text.clone()),
        ("relay-de-fra-1.prom", relay_text.clone()),
        ("relay-ie-dub-1.prom", c.relay_metrics("ie-dub-1").await),
    ];
    for (file, text) in &samples {
        std::fs::write(dir.join(file), text).unwrap();
        // No address, name, participant id, conference id or passcode.
        for secret in [
            "127.0.0.",
            "Alice",
            "Secretname",
            "Hiddenname",
            "Mallory",
            alice.participant_id.as_str(),
            bob.participant_id.as_str(),
            id.as_str(),
            &id[3..],
            passcode.as_str(),
        ] {
            assert!(!text.contains(secret), "{file} contains {secret}");
        }
        // Only bounded label names.
        for line in text.lines().filter(|l| !l.starts_with('#')) {
            if let Some((_, labels)) = line.split_once('{') {
                for pair in labels.split('}').next().unwrap().split(',') {
                    let name = pair.split('=').next().unwrap();
                    assert!(
                        [
                            "relay",
                            "router",
                            "reason",
                            "version",
                            "jurisdiction",
                            "outcome",
                            "route",
                            "status",
                            "action",
                            "kind",
                            "origin",
                            "shard",
                            "transport",
                            "le"
                        ]
                        .contains(&name),
                        "label {name} in {file}: {line}"
                    );
                }
            }
        }
    }
    // The documented series carry the call.
    for (text, needle) in ROUTER_SERIES
        .iter()
        .map(|n| (&router_text, n))
        .chain(RELAY_SERIES.iter().map(|n| (&relay_text, n)))
    {
        assert!(text.contains(needle), "missing {needle}");
    }
    let sent = cascade_bytes_sent(&relay_text);
    assert!(sent >= at_least_sent, "cascade bytes sent {sent}");
    // Every series the shipped dashboard and alert rules use is exported.
    let exported: String = samples.iter().map(|(_, t)| t.as_str()).collect();
    for file in [
        "config/grafana/residency-relay.json",
        "config/prometheus-alerts.example.yml",
    ] {
        let text = std::fs::read_to_string(support::repo().join(file)).unwrap();
        let mut names: Vec<&str> = text
            .split(|ch: char| !(ch.is_ascii_alphanumeric() || ch == '_'))
            .filter(|w| w.starts_with("rr_"))
            .collect();
        names.sort_unstable();
        names.dedup();
        assert!(names.len() >= 8, "{file} uses {names:?}");
        for name in names {
            assert!(
                exported.lines().any(|l| l.starts_with(name)),
                "{file} uses {name}, which no router or relay exports"
            );
        }
    }
    // promtool, when this machine has it (CI installs it and checks the
    // samples again after the tests).
    if let Ok(out) = std::process::Command::new("promtool")
        .arg("--version")
        .output()
    {
        if out.status.success() {
            for (file, _) in &samples {
                let check = std::process::Command::new("sh")
                    .arg("-c")
                    .arg(format!(
                        "promtool check metrics < {}",
                        dir.join(file).display()
                    ))
                    .output()
                    .unwrap();
                assert!(
                    check.status.success(),
                    "promtool on {file}: {}{}",
                    String::from_utf8_lossy(&check.stdout),
                    String::from_utf8_lossy(&check.stderr)
                );
            }
        }
    }
    a.leave().await;
    c.shutdown().await;
}
