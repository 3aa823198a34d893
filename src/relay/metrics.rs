//! The relay's Prometheus metrics. Labels come only from bounded, typed sets
//! (reason codes); never an address, name, participant or conference id.

use prometheus::{
    Encoder, Gauge, IntCounter, IntCounterVec, IntGauge, Opts, Registry, TextEncoder,
};

use crate::forward::{Counters, DropReason};
use crate::ticket::TicketError;
use crate::wire::datagram::DatagramError;

/// Handles to every relay metric.
#[derive(Debug, Clone)]
pub struct Metrics {
    registry: Registry,
    /// The WebSocket listener's connection metrics
    /// (`rr_relay_websocket_http_*`), apart from the HTTP listener's.
    websocket_registry: Registry,
    pub connections: IntGauge,
    pub datagrams_received: IntCounter,
    pub bytes_received: IntCounter,
    pub deliveries: IntCounter,
    pub bytes_delivered: IntCounter,
    pub datagrams_sent: IntCounter,
    pub send_failures: IntCounter,
    pub ingress_drops: IntCounterVec,
    pub queue_drops: IntCounterVec,
    pub ticket_refusals: IntCounterVec,
    pub control_errors: IntCounter,
    pub keyframe_requests: IntCounter,
    pub e2ee_messages: IntCounter,
    pub layer_switches: IntCounter,
    pub video_paused: IntCounter,
    pub uplink_sheds: IntCounter,
    pub speaker_changes: IntCounter,
    pub congested_ticks: IntCounterVec,
    pub moderation_disconnects: IntCounterVec,
    /// Reports to routers by outcome.
    pub router_reports: IntCounterVec,
    pub reloads: IntCounterVec,
    pub cascade_refusals: IntCounterVec,
    pub connection_refusals: IntCounterVec,
    /// Participants admitted, by transport (`native`, `webtransport`).
    pub sessions: IntCounterVec,
    /// Participants connected now, by transport.
    pub client_connections: prometheus::IntGaugeVec,
    /// Browser connections whose HTTP/3 WebTransport handshake failed, by
    /// reason.
    pub webtransport_refusals: IntCounterVec,
    /// When the certificate in use expires (Unix seconds).
    pub certificate_expiry: IntGauge,
    /// Self-signed certificates replaced before they expired.
    pub certificate_renewals: IntCounter,
    /// Retry packets sent: connections asked to prove their address first.
    pub address_validations: IntCounter,
    /// Control messages over a participant's rate, dropped, and
    /// participants disconnected for going on.
    pub control_rate_limited: IntCounterVec,
    /// The HTTP listener's connections.
    pub http: crate::http_server::ConnMetrics,
    /// The WebSocket listener's connections (caps, timeouts, TLS).
    pub websocket_http: crate::http_server::ConnMetrics,
    /// WebSocket connections refused or closed for what they sent, by
    /// reason.
    pub websocket_refusals: IntCounterVec,
    /// When the WebSocket listener's certificate expires (files or ACME).
    pub websocket_certificate_expiry: IntGauge,
    /// Certificates obtained over ACME, and attempts that failed.
    pub acme_certificates: IntCounter,
    pub acme_failures: IntCounter,
    pub cascade_links: IntGauge,
    pub cascade_bytes_received: IntCounter,
    pub cascade_bytes_sent: IntCounter,
    /// Participants and conferences per jurisdiction of the relay.
    pub participants: prometheus::IntGaugeVec,
    pub conferences: prometheus::IntGaugeVec,
    /// Datagram arrival at the relay to its batch handed to QUIC.
    pub forward_seconds: prometheus::Histogram,
    /// `process_cpu_seconds_total`, … (unprefixed, no relay label).
    process: crate::process_metrics::ProcessMetrics,
    /// Per shard, labelled `shard="0"`…: datagrams handled, events waiting,
    /// connections.
    shard_datagrams: IntCounterVec,
    shard_queue_depth: prometheus::IntGaugeVec,
    shard_connections: prometheus::IntGaugeVec,
    /// Shards running.
    workers: IntGauge,
    /// Busiest shard's datagrams over the mean since the previous scrape.
    shard_imbalance: Gauge,
    /// Each shard's datagram count at the previous scrape.
    imbalance_last: std::sync::Arc<std::sync::Mutex<Vec<u64>>>,
}

/// One shard's metrics.
#[derive(Debug, Clone)]
pub struct ShardMetrics {
    pub datagrams: IntCounter,
    pub queue_depth: IntGauge,
    pub connections: IntGauge,
}

/// The value of the first sample of `name` (exactly that metric, any
/// labels) in Prometheus text, e.g. `rr_relay_bytes_delivered_total`.
pub fn sample(text: &str, name: &str) -> Option<f64> {
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .find(|l| l.starts_with(name) && l[name.len()..].starts_with(['{', ' ']))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
}

fn counter(registry: &Registry, name: &str, help: &str) -> IntCounter {
    let c = IntCounter::with_opts(Opts::new(name, help))
        .unwrap_or_else(|e| unreachable_metric(name, e));
    let _ = registry.register(Box::new(c.clone()));
    c
}

fn counter_vec(
    registry: &Registry,
    name: &str,
    help: &str,
    label: &str,
    values: &[&str],
) -> IntCounterVec {
    let c = IntCounterVec::new(Opts::new(name, help), &[label])
        .unwrap_or_else(|e| unreachable_metric(name, e));
    let _ = registry.register(Box::new(c.clone()));
    // Every label value exists from the start, at zero.
    for v in values {
        let _ = c.get_metric_with_label_values(&[v]);
    }
    c
}

fn gauge(registry: &Registry, name: &str, help: &str) -> IntGauge {
    let g =
        IntGauge::with_opts(Opts::new(name, help)).unwrap_or_else(|e| unreachable_metric(name, e));
    let _ = registry.register(Box::new(g.clone()));
    g
}

/// A gauge by `label`, with a series for each of `values` from the start.
fn gauge_vec(
    registry: &Registry,
    name: &str,
    help: &str,
    label: &str,
    values: &[&str],
) -> prometheus::IntGaugeVec {
    let g = prometheus::IntGaugeVec::new(Opts::new(name, help), &[label])
        .unwrap_or_else(|e| unreachable_metric(name, e));
    let _ = registry.register(Box::new(g.clone()));
    for v in values {
        let _ = g.get_metric_with_label_values(&[v]);
    }
    g
}

/// A refusal counter by `reason` and `origin` (`signed`, `forged`).
fn refusal_vec(registry: &Registry, name: &str, help: &str, reasons: &[&str]) -> IntCounterVec {
    let c = IntCounterVec::new(Opts::new(name, help), &["reason", "origin"])
        .unwrap_or_else(|e| unreachable_metric(name, e));
    let _ = registry.register(Box::new(c.clone()));
    for r in reasons {
        for o in ["signed", "forged"] {
            let _ = c.get_metric_with_label_values(&[r, o]);
        }
    }
    c
}

/// Metric names and help texts are constants of this file; a failure here
/// is a programming error caught by the metrics test, not input.
#[cold]
fn unreachable_metric(name: &str, e: prometheus::Error) -> ! {
    panic!("metric {name} is malformed: {e}")
}

impl Metrics {
    pub fn new(relay_id: &str) -> Self {
        Self::with_jurisdictions(relay_id, &[])
    }

    /// Metrics of a relay inside `jurisdictions` (the label values of the
    /// per-jurisdiction gauges, all present from the start).
    pub fn with_jurisdictions(relay_id: &str, jurisdictions: &[String]) -> Self {
        let registry = Registry::new_custom(
            Some("rr_relay".into()),
            Some(std::iter::once(("relay".to_owned(), relay_id.to_owned())).collect()),
        )
        .unwrap_or_else(|e| unreachable_metric("registry", e));
        let websocket_registry = Registry::new_custom(
            Some("rr_relay_websocket".into()),
            Some(std::iter::once(("relay".to_owned(), relay_id.to_owned())).collect()),
        )
        .unwrap_or_else(|e| unreachable_metric("registry", e));
        let malformed: Vec<&str> = [
            DatagramError::Truncated(0),
            DatagramError::Oversized(0),
            DatagramError::UnsupportedVersion(0),
            DatagramError::ReservedFlags(0),
        ]
        .iter()
        .map(|e| e.code())
        .chain([
            "unknown_connection",
            "unknown_track",
            "not_owner",
            "bad_info",
        ])
        .collect();
        let queue: Vec<&str> = DropReason::ALL.iter().map(|r| r.code()).collect();
        let tickets: Vec<&str> = TicketError::ALL.iter().map(|e| e.code()).collect();
        let transports: Vec<&str> = super::shards::Transport::ALL
            .iter()
            .map(|t| t.label())
            .collect();
        let inside: Vec<&str> = jurisdictions.iter().map(String::as_str).collect();
        let connections = gauge(&registry, "connections", "Admitted client connections.");
        let cascade_links = gauge(
            &registry,
            "cascade_links",
            "Cascade links up to other relays (one per conference and peer).",
        );
        let build = IntGauge::with_opts(
            Opts::new("build_info", "Build of the relay; always 1.")
                .const_label("version", env!("CARGO_PKG_VERSION")),
        )
        .unwrap_or_else(|e| unreachable_metric("build_info", e));
        build.set(1);
        let _ = registry.register(Box::new(build));
        // Shard label values are declared by `with_shards`.
        let shard_queue_depth = gauge_vec(
            &registry,
            "shard_queue_depth",
            "Events (datagrams, control messages) waiting for the shard, at its last pass.",
            "shard",
            &[],
        );
        let shard_connections = gauge_vec(
            &registry,
            "shard_connections",
            "Connections (participants and cascade links) the shard serves.",
            "shard",
            &[],
        );
        let workers = gauge(
            &registry,
            "workers",
            "Shards (core tasks) the relay runs; each serves the conferences whose id hashes to it.",
        );
        let shard_imbalance = Gauge::with_opts(Opts::new(
            "shard_imbalance",
            "Datagrams handled by the busiest shard over the mean of all shards, since the previous scrape: 1 is even, the number of shards is all in one; 0 when none were handled.",
        ))
        .unwrap_or_else(|e| unreachable_metric("shard_imbalance", e));
        let _ = registry.register(Box::new(shard_imbalance.clone()));
        Metrics {
            process: crate::process_metrics::ProcessMetrics::new(),
            shard_datagrams: counter_vec(
                &registry,
                "shard_datagrams_total",
                "Media datagrams handled, per shard.",
                "shard",
                &[],
            ),
            shard_queue_depth,
            shard_connections,
            workers,
            shard_imbalance,
            imbalance_last: Default::default(),
            connections,
            datagrams_received: counter(
                &registry,
                "datagrams_received_total",
                "Media datagrams received.",
            ),
            bytes_received: counter(&registry, "bytes_received_total", "Media bytes received."),
            deliveries: counter(
                &registry,
                "deliveries_total",
                "Datagram copies queued for subscribers.",
            ),
            bytes_delivered: counter(
                &registry,
                "bytes_delivered_total",
                "Bytes queued for subscribers.",
            ),
            datagrams_sent: counter(
                &registry,
                "datagrams_sent_total",
                "Datagrams handed to QUIC for sending.",
            ),
            send_failures: counter(
                &registry,
                "send_failures_total",
                "Datagrams QUIC refused to send.",
            ),
            ingress_drops: counter_vec(
                &registry,
                "ingress_drops_total",
                "Received datagrams not forwarded, by reason.",
                "reason",
                &malformed,
            ),
            queue_drops: counter_vec(
                &registry,
                "queue_drops_total",
                "Datagrams dropped from subscriber queues, by reason.",
                "reason",
                &queue,
            ),
            ticket_refusals: refusal_vec(
                &registry,
                "ticket_refusals_total",
                "Join tickets refused, by reason and origin: signed by a key of the policy (its claims are facts) or forged (unsigned, or not signed by such a key).",
                &tickets,
            ),
            control_errors: counter(
                &registry,
                "control_errors_total",
                "Control messages answered with an error, or undecodable.",
            ),
            keyframe_requests: counter(
                &registry,
                "keyframe_requests_total",
                "Keyframe requests sent to publishers.",
            ),
            e2ee_messages: counter(
                &registry,
                "e2ee_messages_total",
                "End-to-end encryption key messages handed to participants, unread (one per recipient).",
            ),
            layer_switches: counter(
                &registry,
                "layer_switches_total",
                "Subscribers switched to another spatial layer of a video track (at its keyframe).",
            ),
            video_paused: counter(
                &registry,
                "video_paused_total",
                "Subscriptions whose video was paused because the subscriber's path carries no more than audio.",
            ),
            uplink_sheds: counter(
                &registry,
                "uplink_sheds_total",
                "Publishers told to stop their top layer because their uplink loses datagrams.",
            ),
            speaker_changes: counter(
                &registry,
                "active_speaker_changes_total",
                "Conferences whose active speaker changed (by the audio levels in datagram headers).",
            ),
            congested_ticks: counter_vec(
                &registry,
                "subscriber_congested_ticks_total",
                "Subscriber path samples (every 200 ms) that showed congestion, by the first sign seen (reason).",
                "reason",
                &["drops", "backlog", "loss", "delay"],
            ),
            moderation_disconnects: counter_vec(
                &registry,
                "moderation_disconnects_total",
                "Participants disconnected on a router's command or because the policy in force places the relay outside their conference's jurisdiction (moved), by reason.",
                "reason",
                &["kicked", "conference_ended", "moved"],
            ),
            router_reports: counter_vec(
                &registry,
                "router_reports_total",
                "Reports to routers by outcome: accepted; refused (an answer other than 200: a wrong credential, say); tls (the router's certificate failed verification or the TLS handshake did); unreachable (no connection or no answer in time).",
                "outcome",
                &["accepted", "refused", "tls", "unreachable"],
            ),
            reloads: counter_vec(
                &registry,
                "reloads_total",
                "Policy reloads (SIGHUP or admin endpoint) by outcome.",
                "outcome",
                &["applied", "rejected"],
            ),
            cascade_refusals: refusal_vec(
                &registry,
                "cascade_refusals_total",
                "Cascade links refused, by reason and origin: signed by a key of the policy (its claims are facts) or forged (unsigned, or not signed by such a key).",
                &tickets,
            ),
            cascade_links,
            connection_refusals: counter_vec(
                &registry,
                "connection_refusals_total",
                "Connections refused before the handshake, by reason.",
                "reason",
                &["per_address"],
            ),
            sessions: counter_vec(
                &registry,
                "sessions_total",
                "Participants admitted, by transport: native (QUIC, ALPN residency-relay/1), webtransport (browsers, HTTP/3) or websocket (TLS over TCP).",
                "transport",
                &transports,
            ),
            client_connections: gauge_vec(
                &registry,
                "client_connections",
                "Participants connected, by transport.",
                "transport",
                &transports,
            ),
            webtransport_refusals: counter_vec(
                &registry,
                "webtransport_refusals_total",
                "Browser connections (ALPN h3) closed before a WebTransport session was up, by reason: http3_handshake (no valid SETTINGS or CONNECT), connect_response (the answer could not be sent), timeout (no session within the hello timeout).",
                "reason",
                &["http3_handshake", "connect_response", "timeout"],
            ),
            certificate_expiry: gauge(
                &registry,
                "certificate_expiry_timestamp_seconds",
                "When the relay's self-signed certificate expires, in Unix seconds (it is renewed with a third of its lifetime left); 0 for a certificate from files, which its operator renews.",
            ),
            certificate_renewals: counter(
                &registry,
                "certificate_renewals_total",
                "Self-signed certificates replaced before they expired (new connections get the new one; open connections keep theirs).",
            ),
            address_validations: counter(
                &registry,
                "address_validations_total",
                "Retry packets sent: new connections asked to prove their source address before the relay keeps any state for them.",
            ),
            control_rate_limited: counter_vec(
                &registry,
                "control_rate_limited_total",
                "Control messages over a participant's rate (dropped, answered with an error) and participants disconnected for going on (disconnected).",
                "outcome",
                &["dropped", "disconnected"],
            ),
            http: crate::http_server::ConnMetrics::register(&registry),
            websocket_http: crate::http_server::ConnMetrics::register(&websocket_registry)
                .with_tls(&websocket_registry),
            websocket_certificate_expiry: gauge(
                &websocket_registry,
                "certificate_expiry_timestamp_seconds",
                "When the WebSocket listener's certificate (from files or ACME) expires, in Unix seconds; 0 while an ACME certificate is awaited or for the relay's own certificate (rr_relay_certificate_expiry_timestamp_seconds).",
            ),
            acme_certificates: counter(
                &websocket_registry,
                "acme_certificates_total",
                "Certificates obtained over ACME for the WebSocket listener (renewals included).",
            ),
            acme_failures: counter(
                &websocket_registry,
                "acme_failures_total",
                "ACME orders that failed (tried again later; the certificate in force stays).",
            ),
            websocket_refusals: counter_vec(
                &registry,
                "websocket_refusals_total",
                "WebSocket connections refused or closed for what they sent, by reason: not_websocket (a request that is not an upgrade to the relay's subprotocol), text_message, bad_kind (a message of no known kind), oversized (a message over the limit), malformed (not a valid WebSocket frame), no_hello (no hello within the hello timeout), silent (nothing heard for the idle timeout), stalled (a message could not be written for 10 s: the peer does not read).",
                "reason",
                &[
                    "not_websocket",
                    "text_message",
                    "bad_kind",
                    "oversized",
                    "malformed",
                    "no_hello",
                    "silent",
                    "stalled",
                ],
            ),
            cascade_bytes_received: counter(
                &registry,
                "cascade_bytes_received_total",
                "Media bytes received over cascade links.",
            ),
            cascade_bytes_sent: counter(
                &registry,
                "cascade_bytes_sent_total",
                "Media bytes sent over cascade links.",
            ),
            participants: gauge_vec(
                &registry,
                "participants",
                "Participants connected, per jurisdiction of their conference.",
                "jurisdiction",
                &inside,
            ),
            conferences: gauge_vec(
                &registry,
                "conferences",
                "Conferences with participants here, per jurisdiction.",
                "jurisdiction",
                &inside,
            ),
            forward_seconds: {
                let h = prometheus::Histogram::with_opts(
                    prometheus::HistogramOpts::new(
                        "forward_seconds",
                        "From a datagram's arrival to its batch being handed to QUIC (the first datagram of each batch).",
                    )
                    .buckets(vec![0.00005, 0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.1]),
                )
                .unwrap_or_else(|e| unreachable_metric("forward_seconds", e));
                let _ = registry.register(Box::new(h.clone()));
                h
            },
            registry,
            websocket_registry,
        }
    }

    /// Adds what the core counted since `last`, then remembers it.
    pub fn sync(&self, now: &Counters, last: &mut Counters) {
        let d = |a: u64, b: u64| a.saturating_sub(b);
        self.datagrams_received
            .inc_by(d(now.datagrams_received, last.datagrams_received));
        self.bytes_received
            .inc_by(d(now.bytes_received, last.bytes_received));
        self.deliveries.inc_by(d(now.deliveries, last.deliveries));
        self.bytes_delivered
            .inc_by(d(now.bytes_delivered, last.bytes_delivered));
        self.control_errors
            .inc_by(d(now.control_errors, last.control_errors));
        self.keyframe_requests
            .inc_by(d(now.keyframe_requests, last.keyframe_requests));
        self.e2ee_messages
            .inc_by(d(now.e2ee_messages, last.e2ee_messages));
        self.cascade_bytes_received
            .inc_by(d(now.link_bytes_in, last.link_bytes_in));
        self.cascade_bytes_sent
            .inc_by(d(now.link_bytes_out, last.link_bytes_out));
        for (label, a, b) in [
            (
                "unknown_connection",
                now.ingress_unknown_connection,
                last.ingress_unknown_connection,
            ),
            (
                "unknown_track",
                now.ingress_unknown_track,
                last.ingress_unknown_track,
            ),
            ("not_owner", now.ingress_not_owner, last.ingress_not_owner),
            ("bad_info", now.ingress_bad_info, last.ingress_bad_info),
        ] {
            self.ingress_drops
                .with_label_values(&[label])
                .inc_by(d(a, b));
        }
        self.layer_switches
            .inc_by(d(now.layer_switches, last.layer_switches));
        self.video_paused
            .inc_by(d(now.video_paused, last.video_paused));
        self.uplink_sheds
            .inc_by(d(now.uplink_sheds, last.uplink_sheds));
        self.speaker_changes
            .inc_by(d(now.speaker_changes, last.speaker_changes));
        for (i, label) in ["drops", "backlog", "loss", "delay"].iter().enumerate() {
            self.congested_ticks
                .with_label_values(&[label])
                .inc_by(d(now.congested_ticks[i], last.congested_ticks[i]));
        }
        for reason in DropReason::ALL {
            let i = reason.index();
            self.queue_drops
                .with_label_values(&[reason.code()])
                .inc_by(d(now.queue_drops[i], last.queue_drops[i]));
        }
        *last = now.clone();
    }

    /// Declares `shards` shards: their label values exist from now on.
    pub fn with_shards(self, shards: usize) -> Self {
        self.workers.set(shards as i64);
        for i in 0..shards {
            let _ = self.shard(i);
        }
        *self
            .imbalance_last
            .lock()
            .unwrap_or_else(|e| e.into_inner()) = vec![0; shards];
        self
    }

    /// The metrics of shard `index`.
    pub fn shard(&self, index: usize) -> ShardMetrics {
        let label = index.to_string();
        ShardMetrics {
            datagrams: self.shard_datagrams.with_label_values(&[&label]),
            queue_depth: self.shard_queue_depth.with_label_values(&[&label]),
            connections: self.shard_connections.with_label_values(&[&label]),
        }
    }

    fn update_imbalance(&self) {
        let mut last = self
            .imbalance_last
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        let now: Vec<u64> = (0..last.len())
            .map(|i| {
                self.shard_datagrams
                    .with_label_values(&[&i.to_string()])
                    .get()
            })
            .collect();
        let deltas: Vec<u64> = now
            .iter()
            .zip(last.iter())
            .map(|(n, l)| n.saturating_sub(*l))
            .collect();
        let total: u64 = deltas.iter().sum();
        let busiest = deltas.iter().copied().max().unwrap_or(0);
        self.shard_imbalance.set(if total == 0 {
            0.0
        } else {
            busiest as f64 * deltas.len() as f64 / total as f64
        });
        *last = now;
    }

    /// The Prometheus text exposition.
    pub fn render(&self) -> String {
        self.update_imbalance();
        let mut families = self.registry.gather();
        families.extend(self.websocket_registry.gather());
        families.extend(self.process.gather());
        let mut out = Vec::new();
        let _ = TextEncoder::new().encode(&families, &mut out);
        String::from_utf8(out).unwrap_or_default()
    }
}
