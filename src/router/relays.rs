//! What the router knows of the relays: their last reports (health, load,
//! certificate, conferences), which relay carries which conference, and the
//! moderation commands waiting for each.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::sync::Notify;
use tracing::{info, warn};

use super::Shared;
use super::channel::{Action, Command, ConferenceLoad, RelayReport, STALE_AFTER};
use crate::policy::{Policy, RelayIdx};
use crate::select::{Health, RelayState};

/// Commands kept per relay; beyond it the oldest go (a relay that far
/// behind is not reporting and will refuse old tickets on restart anyway).
const MAX_COMMANDS: usize = 10_000;

#[derive(Debug, Default)]
struct Entry {
    last_report: Option<Instant>,
    report: Option<RelayReport>,
    /// Tickets issued for it since its last report (so a burst of joins
    /// does not all land on the relay that looked emptiest).
    pending_joins: u32,
    commands: VecDeque<Command>,
    notify: Arc<Notify>,
    healthy: bool,
}

#[derive(Debug, Default)]
struct Inner {
    relays: Vec<Entry>,
    /// Conference → the relay that carries it. Until relays cascade, one
    /// relay carries a whole conference.
    assigned: HashMap<String, RelayIdx>,
    next_seq: u64,
}

/// The router's view of every relay in the inventory.
#[derive(Debug)]
pub struct Registry {
    inner: Mutex<Inner>,
}

/// One relay's share of a conference, as it last reported.
#[derive(Debug, Clone)]
pub struct ConferenceOnRelay {
    pub relay: RelayIdx,
    pub load: ConferenceLoad,
}

impl Registry {
    pub fn new(policy: &Policy) -> Self {
        let mut inner = Inner::default();
        inner
            .relays
            .resize_with(policy.relays().len(), Entry::default);
        Registry {
            inner: Mutex::new(inner),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        // A panic while holding the lock cannot leave the registry
        // inconsistent in a way that matters more than stopping routing.
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Health and load of every relay, indexed by [`RelayIdx`], as selection reads them.
    pub fn states(&self, now: Instant) -> Vec<RelayState> {
        let inner = self.lock();
        inner
            .relays
            .iter()
            .map(|e| match (&e.report, e.last_report) {
                (Some(r), Some(at)) if now.duration_since(at) < STALE_AFTER => RelayState {
                    health: if r.draining {
                        Health::Draining
                    } else {
                        Health::Healthy
                    },
                    participants: r.participants.saturating_add(e.pending_joins),
                    bitrate_bps: r.bitrate_bps,
                },
                _ => RelayState {
                    health: Health::Unhealthy,
                    participants: 0,
                    bitrate_bps: 0,
                },
            })
            .collect()
    }

    /// Stores a report; returns the relay's commands not yet acknowledged
    /// and the notifier to wait on when there are none.
    pub fn record(
        &self,
        relay: RelayIdx,
        report: RelayReport,
        now: Instant,
    ) -> (Vec<Command>, Arc<Notify>) {
        let mut inner = self.lock();
        let Some(e) = inner.relays.get_mut(relay.index()) else {
            return (Vec::new(), Arc::new(Notify::new()));
        };
        while e.commands.front().is_some_and(|c| c.seq <= report.ack) {
            e.commands.pop_front();
        }
        e.last_report = Some(now);
        e.report = Some(report);
        e.pending_joins = 0;
        (e.commands.iter().cloned().collect(), e.notify.clone())
    }

    /// Commands for `relay` not yet acknowledged.
    pub fn commands(&self, relay: RelayIdx) -> Vec<Command> {
        let inner = self.lock();
        inner
            .relays
            .get(relay.index())
            .map(|e| e.commands.iter().cloned().collect())
            .unwrap_or_default()
    }

    /// Queues `action` for each of `relays` and wakes their held reports.
    pub fn command(&self, relays: impl IntoIterator<Item = RelayIdx>, action: &Action) {
        let mut inner = self.lock();
        for relay in relays {
            inner.next_seq += 1;
            let seq = inner.next_seq;
            let Some(e) = inner.relays.get_mut(relay.index()) else {
                continue;
            };
            if e.commands.len() >= MAX_COMMANDS {
                e.commands.pop_front();
                warn!(
                    relay = relay.index(),
                    "relay is not taking commands; dropped the oldest"
                );
            }
            e.commands.push_back(Command {
                seq,
                action: action.clone(),
            });
            e.notify.notify_waiters();
            e.notify.notify_one();
        }
    }

    /// The relay carrying `conference`, if one was chosen.
    pub fn assigned(&self, conference: &str) -> Option<RelayIdx> {
        self.lock().assigned.get(conference).copied()
    }

    /// Records that a ticket for `relay` was issued for `conference`.
    pub fn joined(&self, conference: &str, relay: RelayIdx) {
        let mut inner = self.lock();
        inner.assigned.insert(conference.to_owned(), relay);
        if let Some(e) = inner.relays.get_mut(relay.index()) {
            e.pending_joins = e.pending_joins.saturating_add(1);
        }
    }

    /// Forgets the placement of an ended conference.
    pub fn forget(&self, conference: &str) {
        self.lock().assigned.remove(conference);
    }

    /// The certificate fingerprint `relay` last reported.
    pub fn cert(&self, relay: RelayIdx) -> Option<String> {
        let inner = self.lock();
        inner
            .relays
            .get(relay.index())?
            .report
            .as_ref()
            .map(|r| r.cert_sha256.clone())
    }

    /// Every relay's last-reported share of `conference`.
    pub fn conference(&self, conference: &str) -> Vec<ConferenceOnRelay> {
        let inner = self.lock();
        inner
            .relays
            .iter()
            .enumerate()
            .filter_map(|(i, e)| {
                let r = e.report.as_ref()?;
                let load = r.conferences.iter().find(|c| c.id == conference)?;
                Some(ConferenceOnRelay {
                    relay: RelayIdx(i as u32),
                    load: load.clone(),
                })
            })
            .collect()
    }

    /// When each relay last reported and what (for the operator's listing).
    pub fn reports(&self, now: Instant) -> Vec<(Option<Duration>, Option<RelayReport>)> {
        let inner = self.lock();
        inner
            .relays
            .iter()
            .map(|e| {
                (
                    e.last_report.map(|at| now.duration_since(at)),
                    e.report.clone(),
                )
            })
            .collect()
    }

    /// Updates each relay's health flag; returns those that changed.
    fn refresh(&self, now: Instant) -> Vec<(RelayIdx, bool)> {
        let mut inner = self.lock();
        let mut changed = Vec::new();
        for (i, e) in inner.relays.iter_mut().enumerate() {
            let healthy = e
                .last_report
                .is_some_and(|at| now.duration_since(at) < STALE_AFTER)
                && e.report.as_ref().is_some_and(|r| !r.draining);
            if healthy != e.healthy {
                e.healthy = healthy;
                changed.push((RelayIdx(i as u32), healthy));
            }
        }
        changed
    }
}

/// Every half second: log relays turning healthy or unhealthy and update
/// the per-jurisdiction healthy-relay gauges.
pub(super) async fn watch(shared: Arc<Shared>) {
    let mut tick = tokio::time::interval(Duration::from_millis(500));
    loop {
        tick.tick().await;
        let now = Instant::now();
        for (relay, healthy) in shared.relays.refresh(now) {
            let id = &shared.policy.relay(relay).id;
            if healthy {
                info!(relay = %id, "relay healthy");
            } else {
                warn!(relay = %id, "relay unhealthy: stopped reporting or draining; no new joins");
            }
        }
        let states = shared.relays.states(now);
        for j in &shared.me.jurisdictions {
            let jurisdiction = shared.policy.jurisdiction(*j);
            let healthy = jurisdiction
                .relays()
                .filter(|r| states[r.index()].health == Health::Healthy)
                .count();
            shared
                .metrics
                .relays_healthy
                .with_label_values(&[jurisdiction.id.as_str()])
                .set(healthy as i64);
        }
    }
}
