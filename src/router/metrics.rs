//! The router's Prometheus metrics (`rr_router_*`). Labels come from bounded
//! sets only: jurisdiction ids this router serves, route templates, status
//! codes, reasons and outcomes. Never an address, a name, a participant or
//! a conference id.

use prometheus::{
    Encoder, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGaugeVec, Opts, Registry,
    TextEncoder,
};

use crate::policy::{Policy, Router};

/// Why a join was refused (the `reason` label of `rr_router_join_refusals_total`).
pub const JOIN_REFUSALS: &[&str] = &[
    "bad_request",
    "unknown_conference",
    "wrong_passcode",
    "passcode_required",
    "bad_invite",
    "bad_rejoin",
    "rate_limited",
    "locked",
    "banned",
    "ended",
    "denied",
    "no_relay_in_jurisdiction",
    "no_healthy_relay",
    "at_capacity",
    "conference_full",
    "store_error",
];

#[derive(Debug, Clone)]
pub struct RouterMetrics {
    registry: Registry,
    /// `process_cpu_seconds_total`, … (unprefixed, no router label).
    process: crate::process_metrics::ProcessMetrics,
    pub http_requests: IntCounterVec,
    pub conferences_created: IntCounterVec,
    pub joins: IntCounterVec,
    pub join_refusals: IntCounterVec,
    pub join_seconds: HistogramVec,
    pub relays_healthy: IntGaugeVec,
    pub relay_reports: IntCounterVec,
    pub moderation: IntCounterVec,
    pub enforcement: IntCounterVec,
    pub store_errors: IntCounter,
    /// Requests answered 503 because the store could not be reached.
    pub store_unavailable: IntCounter,
    /// 1 while the store answers its health check.
    pub store_up: prometheus::IntGauge,
    /// 1 while this replica holds the planner lease (always 1 on SQLite).
    pub planner: prometheus::IntGauge,
    pub route_decisions: IntCounterVec,
    pub participants: IntGaugeVec,
    pub conferences: IntGaugeVec,
    pub misdirected: IntCounter,
    /// Waiting-room polls cut short by another poll of the same
    /// participant, by reason (`superseded`, `in_progress`).
    pub waiting_polls: IntCounterVec,
    pub residency_moves: IntCounterVec,
    pub reloads: IntCounterVec,
    /// Rows the retention purge deleted, by kind.
    pub records_purged: IntCounterVec,
    /// The HTTP listener's connections.
    pub http: crate::http_server::ConnMetrics,
    /// The relay channel's own listener's connections
    /// (`rr_router_relay_channel_http_*`, exported only with `relay_listen`).
    pub channel_http: crate::http_server::ConnMetrics,
    channel_registry: Option<Registry>,
    /// `notAfter` of the certificate served (Unix seconds); exported only
    /// when the router serves HTTPS itself.
    pub tls_cert_expiry: prometheus::IntGauge,
    /// Certificates obtained over ACME, and orders that failed; exported
    /// by routers serving HTTPS (0 for one serving certificate files).
    pub acme_certificates: IntCounter,
    pub acme_failures: IntCounter,
}

fn must<T>(name: &str, r: Result<T, prometheus::Error>) -> T {
    // Names, help texts and label names are constants of this file; a
    // failure is a programming error that the metrics test catches.
    r.unwrap_or_else(|e| panic!("metric {name} is malformed: {e}"))
}

impl RouterMetrics {
    pub fn new(router_id: &str, policy: &Policy, me: &Router) -> Self {
        let registry = must(
            "registry",
            Registry::new_custom(
                Some("rr_router".into()),
                Some(std::iter::once(("router".to_owned(), router_id.to_owned())).collect()),
            ),
        );
        let counter_vec = |name: &str, help: &str, labels: &[&str]| {
            let c = must(name, IntCounterVec::new(Opts::new(name, help), labels));
            let _ = registry.register(Box::new(c.clone()));
            c
        };
        let served: Vec<&str> = me
            .jurisdictions
            .iter()
            .map(|j| policy.jurisdiction(*j).id.as_str())
            .collect();
        let channel_registry = me.relay_listen.map(|_| {
            must(
                "registry",
                Registry::new_custom(
                    Some("rr_router_relay_channel".into()),
                    Some(std::iter::once(("router".to_owned(), router_id.to_owned())).collect()),
                ),
            )
        });
        let unexported = Registry::new();
        // The series of a router serving HTTPS (its certificate, and ACME):
        // exported by such routers only.
        let https_only = |m: Box<dyn prometheus::core::Collector>| {
            if me.serves_https() {
                let _ = registry.register(m);
            }
        };
        let m = RouterMetrics {
            process: crate::process_metrics::ProcessMetrics::new(),
            http_requests: counter_vec(
                "http_requests_total",
                "HTTP requests answered, by route template and status code.",
                &["route", "status"],
            ),
            conferences_created: counter_vec(
                "conferences_created_total",
                "Conferences created, by jurisdiction.",
                &["jurisdiction"],
            ),
            joins: counter_vec(
                "joins_total",
                "Join requests by jurisdiction and outcome (ticket, waiting, refused).",
                &["jurisdiction", "outcome"],
            ),
            join_refusals: counter_vec(
                "join_refusals_total",
                "Refused joins by reason.",
                &["reason"],
            ),
            join_seconds: {
                let h = must(
                    "join_seconds",
                    HistogramVec::new(
                        HistogramOpts::new(
                            "join_seconds",
                            "Time to answer a join request that got a ticket.",
                        )
                        .buckets(vec![
                            0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0,
                        ]),
                        &["jurisdiction"],
                    ),
                );
                let _ = registry.register(Box::new(h.clone()));
                h
            },
            relays_healthy: {
                let g = must(
                    "relays_healthy",
                    IntGaugeVec::new(
                        Opts::new(
                            "relays_healthy",
                            "Relays inside the jurisdiction reporting and not draining.",
                        ),
                        &["jurisdiction"],
                    ),
                );
                let _ = registry.register(Box::new(g.clone()));
                g
            },
            relay_reports: counter_vec(
                "relay_reports_total",
                "Relay reports by outcome (accepted, bad_credential, unknown_relay, outside_jurisdiction, malformed).",
                &["outcome"],
            ),
            moderation: counter_vec(
                "moderation_total",
                "Moderation actions by kind.",
                &["action"],
            ),
            enforcement: counter_vec(
                "enforcement_events_total",
                "Tickets and cascade links relays refused for this router's conferences, by kind.",
                &["kind"],
            ),
            waiting_polls: {
                let c = counter_vec(
                    "waiting_polls_cut_total",
                    "Waiting-room polls cut short by another poll of the same participant (one is held per wait token): ended by a newer one (superseded), or refused because one began less than a second ago (in_progress).",
                    &["reason"],
                );
                for reason in ["superseded", "in_progress"] {
                    c.with_label_values(&[reason]);
                }
                c
            },
            store_errors: {
                let c = must(
                    "store_errors_total",
                    IntCounter::new("store_errors_total", "Store operations that failed."),
                );
                let _ = registry.register(Box::new(c.clone()));
                c
            },
            store_unavailable: {
                let c = must(
                    "store_unavailable_total",
                    IntCounter::new(
                        "store_unavailable_total",
                        "Requests answered 503 store_unavailable: the store could not be reached.",
                    ),
                );
                let _ = registry.register(Box::new(c.clone()));
                c
            },
            store_up: {
                let g = must(
                    "store_up",
                    prometheus::IntGauge::new(
                        "store_up",
                        "1 while the store answers its health check, else 0.",
                    ),
                );
                g.set(1);
                let _ = registry.register(Box::new(g.clone()));
                g
            },
            planner: {
                let g = must(
                    "planner",
                    prometheus::IntGauge::new(
                        "planner",
                        "1 while this router plans cascade links and residency moves (with replicas, the holder of the planner lease).",
                    ),
                );
                g.set(1);
                let _ = registry.register(Box::new(g.clone()));
                g
            },
            route_decisions: counter_vec(
                "route_decisions_total",
                "Relay selections for joins, by jurisdiction and outcome (relay_chosen or the refusal reason).",
                &["jurisdiction", "outcome"],
            ),
            participants: {
                let g = must(
                    "participants",
                    IntGaugeVec::new(
                        Opts::new(
                            "participants",
                            "Participants on relays, per jurisdiction, as relays last reported.",
                        ),
                        &["jurisdiction"],
                    ),
                );
                let _ = registry.register(Box::new(g.clone()));
                g
            },
            conferences: {
                let g = must(
                    "conferences",
                    IntGaugeVec::new(
                        Opts::new(
                            "conferences",
                            "Conferences with participants on relays, per jurisdiction.",
                        ),
                        &["jurisdiction"],
                    ),
                );
                let _ = registry.register(Box::new(g.clone()));
                g
            },
            misdirected: {
                let c = must(
                    "misdirected_total",
                    IntCounter::new(
                        "misdirected_total",
                        "Requests for a jurisdiction this router does not serve (answered 421).",
                    ),
                );
                let _ = registry.register(Box::new(c.clone()));
                c
            },
            residency_moves: counter_vec(
                "residency_moves_total",
                "Relays told to move a conference's participants because the policy in force places the relay outside the conference's jurisdiction, by jurisdiction.",
                &["jurisdiction"],
            ),
            reloads: counter_vec(
                "reloads_total",
                "Policy reloads (SIGHUP or admin endpoint) by outcome (applied, rejected).",
                &["outcome"],
            ),
            records_purged: {
                let c = counter_vec(
                    "records_purged_total",
                    "Rows the retention purge deleted, by kind (participants, bans, invites, audit, abuse_reports, relay_use, link_use, conferences).",
                    &["kind"],
                );
                for (kind, _) in crate::store::Purged::default().by_kind() {
                    c.with_label_values(&[kind]);
                }
                c
            },
            http: {
                let http =
                    crate::http_server::ConnMetrics::register(&registry).with_long_polls(&registry);
                if me.serves_https() {
                    http.with_tls(&registry)
                } else {
                    http
                }
            },
            channel_http: {
                let r = channel_registry.as_ref().unwrap_or(&unexported);
                let http = crate::http_server::ConnMetrics::register(r);
                if me.serves_https() {
                    http.with_tls(r)
                } else {
                    http
                }
            },
            channel_registry: channel_registry.clone(),
            tls_cert_expiry: {
                let g = must(
                    "tls_cert_expiry_timestamp_seconds",
                    prometheus::IntGauge::new(
                        "tls_cert_expiry_timestamp_seconds",
                        "When the certificate the router serves HTTPS with expires (notAfter, Unix seconds).",
                    ),
                );
                https_only(Box::new(g.clone()));
                g
            },
            acme_certificates: {
                let c = must(
                    "acme_certificates_total",
                    IntCounter::new(
                        "acme_certificates_total",
                        "Certificates obtained over ACME for the router's HTTPS (renewals included).",
                    ),
                );
                https_only(Box::new(c.clone()));
                c
            },
            acme_failures: {
                let c = must(
                    "acme_failures_total",
                    IntCounter::new(
                        "acme_failures_total",
                        "ACME orders that failed (tried again later; the certificate in force stays).",
                    ),
                );
                https_only(Box::new(c.clone()));
                c
            },
            registry,
        };
        let build = must(
            "build_info",
            prometheus::IntGauge::with_opts(
                Opts::new("build_info", "Build of the router; always 1.")
                    .const_label("version", env!("CARGO_PKG_VERSION")),
            ),
        );
        build.set(1);
        let _ = m.registry.register(Box::new(build));
        m.prepare(&served);
        for r in JOIN_REFUSALS {
            let _ = m.join_refusals.get_metric_with_label_values(&[r]);
        }
        for o in ["applied", "rejected"] {
            let _ = m.reloads.get_metric_with_label_values(&[o]);
        }
        for o in [
            "accepted",
            "bad_credential",
            "unknown_relay",
            "outside_jurisdiction",
            "malformed",
        ] {
            let _ = m.relay_reports.get_metric_with_label_values(&[o]);
        }
        for k in ["ticket", "cascade"] {
            let _ = m.enforcement.get_metric_with_label_values(&[k]);
        }
        for a in [
            "lock", "unlock", "kick", "ban", "end", "admit", "deny", "report",
        ] {
            let _ = m.moderation.get_metric_with_label_values(&[a]);
        }
        m
    }

    /// Makes every bounded label value of the `served` jurisdictions exist,
    /// at zero (at start, and for jurisdictions a reload adds).
    pub fn prepare(&self, served: &[&str]) {
        let m = self;
        for j in served {
            let _ = m.participants.get_metric_with_label_values(&[j]);
            let _ = m.conferences.get_metric_with_label_values(&[j]);
            for o in [
                "relay_chosen",
                "no_relay_in_jurisdiction",
                "no_healthy_relay",
                "at_capacity",
            ] {
                let _ = m.route_decisions.get_metric_with_label_values(&[j, o]);
            }
            let _ = m.conferences_created.get_metric_with_label_values(&[j]);
            let _ = m.relays_healthy.get_metric_with_label_values(&[j]);
            let _ = m.residency_moves.get_metric_with_label_values(&[j]);
            for outcome in ["ticket", "waiting", "refused"] {
                let _ = m.joins.get_metric_with_label_values(&[j, outcome]);
            }
        }
    }

    /// Drops the gauges of a jurisdiction this router no longer serves
    /// (after a reload), so they do not show a frozen value.
    pub fn forget_jurisdiction(&self, jurisdiction: &str) {
        let _ = self.participants.remove_label_values(&[jurisdiction]);
        let _ = self.conferences.remove_label_values(&[jurisdiction]);
        let _ = self.relays_healthy.remove_label_values(&[jurisdiction]);
    }

    /// The text exposition format.
    pub fn render(&self) -> String {
        let mut families = self.registry.gather();
        if let Some(r) = &self.channel_registry {
            families.extend(r.gather());
        }
        families.extend(self.process.gather());
        let mut out = Vec::new();
        let _ = TextEncoder::new().encode(&families, &mut out);
        String::from_utf8(out).unwrap_or_default()
    }
}
