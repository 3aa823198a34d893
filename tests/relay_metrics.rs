//! The relay's exported metrics: exact names, bounded labels, and no
//! personal data after a scripted call.

mod support;

use std::collections::BTreeSet;

use residency_relay::client::Client;
use residency_relay::forward::CoreConfig;
use residency_relay::ticket::Grants;
use residency_relay::wire::control::TrackKind;
use residency_relay::wire::datagram::{Flags, MediaHeader};
use support::relay::{TestRelay, claims, sign_dev};

#[tokio::test]
async fn names_and_labels_are_exact_and_carry_no_personal_data() {
    let mut relay =
        TestRelay::start_with_workers("de-ber-1", "127.0.1.2", CoreConfig::default(), 4).await;
    let mut c = claims(
        "de-ber-1",
        "alice-private-participant",
        Grants {
            publish: true,
            subscribe: true,
            moderate: false,
        },
    );
    c.conference = "eu-secretconference".into();
    c.display_name = "Alice Secretname".into();
    let mut alice = Client::connect(
        "127.0.0.77:0".parse().unwrap(),
        relay.quic,
        &relay.fingerprint,
        &sign_dev(&c),
    )
    .await
    .unwrap();
    let track = alice.publish(TrackKind::Video, "vp8", None).await.unwrap();
    alice
        .send_media(
            &MediaHeader {
                track,
                sequence: 0,
                flags: Flags::default(),
                info: residency_relay::wire::datagram::Info::NONE,
            },
            b"x",
        )
        .unwrap();
    let (status, text) = relay.get("/metrics").await;
    assert_eq!(status, 200);

    let names: BTreeSet<&str> = text
        .lines()
        .filter_map(|l| l.strip_prefix("# TYPE "))
        .map(|l| l.split(' ').next().unwrap())
        .collect();
    let expected: BTreeSet<&str> = [
        "rr_relay_active_speaker_changes_total",
        "rr_relay_address_validations_total",
        "rr_relay_build_info",
        "rr_relay_bytes_delivered_total",
        "rr_relay_bytes_received_total",
        "rr_relay_cascade_bytes_received_total",
        "rr_relay_cascade_bytes_sent_total",
        "rr_relay_cascade_links",
        "rr_relay_cascade_refusals_total",
        "rr_relay_certificate_expiry_timestamp_seconds",
        "rr_relay_certificate_renewals_total",
        "rr_relay_client_connections",
        "rr_relay_connections",
        "rr_relay_conferences",
        "rr_relay_connection_refusals_total",
        "rr_relay_control_errors_total",
        "rr_relay_control_rate_limited_total",
        "rr_relay_datagrams_received_total",
        "rr_relay_datagrams_sent_total",
        "rr_relay_deliveries_total",
        "rr_relay_e2ee_messages_total",
        "rr_relay_forward_seconds",
        "rr_relay_http_connections_closed_total",
        "rr_relay_http_connections_open",
        "rr_relay_http_connections_refused_total",
        "rr_relay_ingress_drops_total",
        "rr_relay_keyframe_requests_total",
        "rr_relay_layer_switches_total",
        "rr_relay_moderation_disconnects_total",
        "rr_relay_participants",
        "rr_relay_queue_drops_total",
        "rr_relay_reloads_total",
        "rr_relay_router_reports_total",
        "rr_relay_send_failures_total",
        "rr_relay_sessions_total",
        "rr_relay_shard_connections",
        "rr_relay_shard_datagrams_total",
        "rr_relay_shard_imbalance",
        "rr_relay_shard_queue_depth",
        "rr_relay_subscriber_congested_ticks_total",
        "rr_relay_ticket_refusals_total",
        "rr_relay_uplink_sheds_total",
        "rr_relay_video_paused_total",
        "rr_relay_webtransport_refusals_total",
        "rr_relay_websocket_acme_certificates_total",
        "rr_relay_websocket_acme_failures_total",
        "rr_relay_websocket_certificate_expiry_timestamp_seconds",
        "rr_relay_websocket_http_connections_closed_total",
        "rr_relay_websocket_http_connections_open",
        "rr_relay_websocket_http_connections_refused_total",
        "rr_relay_websocket_http_tls_failures_total",
        "rr_relay_websocket_refusals_total",
        "rr_relay_workers",
        // The standard process metrics, unprefixed.
        "process_cpu_seconds_total",
        "process_max_fds",
        "process_open_fds",
        "process_resident_memory_bytes",
        "process_start_time_seconds",
        "process_threads",
        "process_virtual_memory_bytes",
    ]
    .into_iter()
    .collect();
    assert_eq!(names, expected);

    // Only bounded label names.
    for line in text.lines().filter(|l| !l.starts_with('#')) {
        if let Some((_, labels)) = line.split_once('{') {
            for pair in labels.split('}').next().unwrap().split(',') {
                let name = pair.split('=').next().unwrap();
                assert!(
                    [
                        "relay",
                        "reason",
                        "origin",
                        "outcome",
                        "version",
                        "jurisdiction",
                        "shard",
                        "transport",
                        "le"
                    ]
                    .contains(&name),
                    "label {name} in {line}"
                );
            }
        }
    }
    assert!(
        text.contains(
            "rr_relay_queue_drops_total{reason=\"evicted_keyframe\",relay=\"de-ber-1\"} 0"
        )
    );
    assert!(text.contains(
        "rr_relay_moderation_disconnects_total{reason=\"conference_ended\",relay=\"de-ber-1\"} 0"
    ));
    assert!(text.contains(
        "rr_relay_ticket_refusals_total{origin=\"signed\",reason=\"revoked\",relay=\"de-ber-1\"} 0"
    ));
    // One series per shard, and only for the four shards there are.
    assert!(text.contains("rr_relay_workers{relay=\"de-ber-1\"} 4"));
    for line in text.lines().filter(|l| l.contains("shard=")) {
        let shard = line
            .split("shard=\"")
            .nth(1)
            .unwrap()
            .split('"')
            .next()
            .unwrap();
        assert!(["0", "1", "2", "3"].contains(&shard), "{line}");
    }
    assert_eq!(
        text.lines()
            .filter(|l| l.starts_with("rr_relay_shard_datagrams_total{"))
            .count(),
        4
    );
    // CPU time as a float the process really used, not whole seconds.
    let cpu = residency_relay::relay::metrics::sample(&text, "process_cpu_seconds_total").unwrap();
    assert!(cpu > 0.0 && cpu < 3600.0, "{cpu}");
    // No address, name, participant or conference id.
    for secret in [
        "127.0.0.77",
        "alice-private-participant",
        "Alice Secretname",
        "secretconference",
    ] {
        assert!(!text.contains(secret), "{secret} leaked into metrics");
    }
    alice.leave().await;
    relay.stop().await;
}
