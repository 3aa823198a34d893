//! What the router knows of the relays: their last reports (health, load,
//! certificate, conferences), which relay carries which conference, and the
//! moderation commands waiting for each; and how commands and placements
//! go through the replicas ([`send`], [`pending`], [`place`], [`forget`]).
//! The planner that acts on it is [`super::planner`].

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::sync::Notify;
use tracing::warn;

use super::Shared;
use crate::policy::{Policy, RelayIdx};
use crate::select::{Health, RelayState};
use crate::store::StoreError;
use crate::wire::channel::{Action, Command, ConferenceLoad, LinkLoad, RelayReport, STALE_AFTER};

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
    /// When its conference usage was last written to the store.
    persisted: Option<Instant>,
}

/// How often a relay's per-conference usage is written to the store.
const PERSIST_EVERY: Duration = Duration::from_secs(5);

#[derive(Debug, Default)]
struct Inner {
    /// By relay id: ids outlive a policy reload, positions do not.
    relays: HashMap<String, Entry>,
    /// Conference → relays (ids) given tickets for it, and when last.
    placed: HashMap<String, Vec<(String, Instant)>>,
    /// Cascade links commanded: (conference, dialer, acceptor) → when.
    link_commands: HashMap<(String, String, String), Instant>,
    /// Relays told to move a conference out or close one of its links:
    /// (conference, relay, peer or "") → when.
    move_commands: HashMap<(String, String, String), Instant>,
    next_seq: u64,
    /// Tickets issued per conference lately, not yet in relay reports.
    recent_tickets: HashMap<String, VecDeque<Instant>>,
}

impl Inner {
    /// Relays of `policy` carrying `conference`: those reporting
    /// participants of it, and those given a ticket for it lately.
    fn hosting(&self, policy: &Policy, conference: &str, now: Instant) -> Vec<RelayIdx> {
        let ids = self
            .carrying(now, Some(conference))
            .remove(conference)
            .map(|(relays, _)| relays)
            .unwrap_or_default();
        indices(policy, &ids)
    }

    /// Conference → (ids of the relays carrying it, sorted; participants
    /// reported), for one conference or all: relays reporting participants
    /// of it, and relays given a ticket for it within [`PLACED_FRESH`].
    /// Relays no longer in the policy are included: they still carry it.
    fn carrying(&self, now: Instant, only: Option<&str>) -> HashMap<String, (Vec<String>, u32)> {
        let wanted = |id: &str| only.is_none_or(|o| o == id);
        let mut out: HashMap<String, (Vec<String>, u32)> = HashMap::new();
        for (relay, e) in &self.relays {
            for c in fresh_report(e, now)
                .into_iter()
                .flat_map(|r| r.conferences.iter())
            {
                if c.participants > 0 && wanted(&c.id) {
                    let entry = out.entry(c.id.clone()).or_default();
                    entry.0.push(relay.clone());
                    entry.1 += c.participants;
                }
            }
        }
        for (id, placed) in self.placed.iter().filter(|(id, _)| wanted(id)) {
            for (r, at) in placed {
                if now.duration_since(*at) < PLACED_FRESH {
                    let entry = out.entry(id.clone()).or_default();
                    if !entry.0.contains(r) {
                        entry.0.push(r.clone());
                    }
                }
            }
        }
        for (relays, _) in out.values_mut() {
            relays.sort();
        }
        out
    }

    fn state(&self, relay: &str, now: Instant) -> RelayState {
        self.relays.get(relay).map_or(UNHEALTHY, |e| state(e, now))
    }
}

/// A relay's last report, unless it is stale (a relay that stopped
/// reporting carries nothing the router can count on).
fn fresh_report(e: &Entry, now: Instant) -> Option<&RelayReport> {
    e.last_report
        .filter(|at| now.duration_since(*at) < STALE_AFTER)
        .and(e.report.as_ref())
}

/// The positions in `policy` of the relays `ids` that it still lists.
fn indices(policy: &Policy, ids: &[String]) -> Vec<RelayIdx> {
    let mut out: Vec<RelayIdx> = ids.iter().filter_map(|id| policy.relay_idx(id)).collect();
    out.sort();
    out
}

const UNHEALTHY: RelayState = RelayState {
    health: Health::Unhealthy,
    participants: 0,
    bitrate_bps: 0,
};

/// Tickets count toward a conference's size this long (until reported).
const RECENT_TICKETS: Duration = Duration::from_secs(3);

/// A ticket counts its relay as carrying the conference for this long
/// (until the relay reports the participant).
const PLACED_FRESH: Duration = Duration::from_secs(20);

/// A cascade link not reported up this long after its command is commanded again.
const LINK_RETRY: Duration = Duration::from_secs(8);

fn state(e: &Entry, now: Instant) -> RelayState {
    match (&e.report, e.last_report) {
        (Some(r), Some(at)) if now.duration_since(at) < STALE_AFTER => RelayState {
            health: if r.draining {
                Health::Draining
            } else {
                Health::Healthy
            },
            participants: r.participants.saturating_add(e.pending_joins),
            bitrate_bps: r.bitrate_bps,
        },
        _ => UNHEALTHY,
    }
}

/// A placement nobody reports any more is forgotten after this.
const FORGET_PLACEMENT_AFTER: Duration = Duration::from_secs(600);

/// The router's view of every relay in the inventory.
#[derive(Debug)]
pub struct Registry {
    inner: Mutex<Inner>,
    /// This run's command numbering (see [`crate::wire::channel::ReportReply::epoch`]).
    epoch: u64,
}

/// What [`Registry::record`] hands back.
#[derive(Debug)]
pub struct Recorded {
    /// Commands not yet acknowledged.
    pub commands: Vec<Command>,
    /// To wait on when there are none.
    pub notify: Arc<Notify>,
    /// Conferences in the previous report but not this one, as last reported.
    pub vanished: Vec<ConferenceLoad>,
    /// Likewise for cascade links.
    pub vanished_links: Vec<LinkLoad>,
}

/// Something a relay carries that the policy in force does not allow.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Misplaced {
    /// `relay` is outside `conference`'s jurisdiction.
    Relay { conference: String, relay: String },
    /// `relay` (inside) has a link for `conference` to `peer` (outside).
    Link {
        conference: String,
        relay: String,
        peer: String,
    },
}

impl Misplaced {
    fn key(&self) -> (String, String, String) {
        match self {
            Misplaced::Relay { conference, relay } => {
                (conference.clone(), relay.clone(), String::new())
            }
            Misplaced::Link {
                conference,
                relay,
                peer,
            } => (conference.clone(), relay.clone(), peer.clone()),
        }
    }
}

/// One relay's share of a conference, as it last reported.
#[derive(Debug, Clone)]
pub struct ConferenceOnRelay {
    /// Relay id (a relay removed from the policy still reports what it carried).
    pub relay: String,
    pub load: ConferenceLoad,
}

impl Registry {
    pub fn new() -> Self {
        let mut epoch = [0u8; 8];
        if getrandom::fill(&mut epoch).is_err() {
            // Distinct per run is all that matters.
            epoch = crate::clock::unix_now().to_le_bytes();
        }
        Self::with_epoch(u64::from_le_bytes(epoch))
    }

    /// A registry numbering commands in `epoch` (replicas share the
    /// store's, since any of them may deliver a command).
    pub fn with_epoch(epoch: u64) -> Self {
        Registry {
            inner: Mutex::new(Inner::default()),
            epoch: epoch.max(1),
        }
    }

    /// Takes a report of `relay` that another replica received `age` ago:
    /// what it carries and its health, not its commands (those are in the
    /// shared store).
    pub fn record_remote(&self, relay: &str, report: RelayReport, age: Duration, now: Instant) {
        let mut inner = self.lock();
        let e = inner.relays.entry(relay.to_owned()).or_default();
        let at = now.checked_sub(age).unwrap_or(now - STALE_AFTER);
        // A report this replica received itself since is newer.
        if e.last_report.is_some_and(|last| last > at) {
            return;
        }
        e.last_report = Some(at);
        e.report = Some(report);
        e.pending_joins = 0;
    }

    /// Wakes the report of `relay` held here, if any (a command for it was
    /// stored by another replica).
    pub fn wake(&self, relay: &str) {
        let inner = self.lock();
        if let Some(e) = inner.relays.get(relay) {
            e.notify.notify_waiters();
            e.notify.notify_one();
        }
    }

    /// Wakes every held report (after missing announcements).
    pub fn wake_all(&self) {
        let inner = self.lock();
        for e in inner.relays.values() {
            e.notify.notify_waiters();
            e.notify.notify_one();
        }
    }

    /// The notifier `relay`'s held report waits on.
    pub fn notifier(&self, relay: &str) -> Arc<Notify> {
        self.lock()
            .relays
            .entry(relay.to_owned())
            .or_default()
            .notify
            .clone()
    }

    /// Undoes [`Registry::place`]'s record of `relay` for `conference`
    /// (another replica placed it first elsewhere).
    pub fn unplace(&self, conference: &str, relay: &str) {
        let mut inner = self.lock();
        if let Some(placed) = inner.placed.get_mut(conference) {
            placed.retain(|(r, _)| r != relay);
        }
        if let Some(e) = inner.relays.get_mut(relay) {
            e.pending_joins = e.pending_joins.saturating_sub(1);
        }
        if let Some(recent) = inner.recent_tickets.get_mut(conference) {
            recent.pop_back();
        }
    }

    /// This run's epoch.
    pub fn epoch(&self) -> u64 {
        self.epoch
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        // A panic while holding the lock cannot leave the registry
        // inconsistent in a way that matters more than stopping routing.
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Health and load of every relay of `policy`, indexed by [`RelayIdx`],
    /// as selection reads them.
    pub fn states(&self, policy: &Policy, now: Instant) -> Vec<RelayState> {
        let inner = self.lock();
        policy
            .relays()
            .iter()
            .map(|r| inner.state(&r.id, now))
            .collect()
    }

    /// Chooses the relay for a participant of `conference` and records the
    /// choice, atomically: `decide` gets every relay's state and the relays
    /// carrying the conference (known to this run, else `hint`, e.g. from
    /// the store after a restart), so concurrent joins see each other.
    pub fn place<E>(
        &self,
        policy: &Policy,
        conference: &str,
        hint: Option<RelayIdx>,
        now: Instant,
        decide: impl FnOnce(&[RelayState], &[RelayIdx], u32) -> Result<RelayIdx, E>,
    ) -> Result<RelayIdx, E> {
        let mut inner = self.lock();
        let states: Vec<RelayState> = policy
            .relays()
            .iter()
            .map(|r| inner.state(&r.id, now))
            .collect();
        let mut hosting = inner.hosting(policy, conference, now);
        if hosting.is_empty() {
            hosting.extend(hint);
        }
        // The conference's size: what relays reported, plus tickets issued
        // since (a report is at most a second or so old).
        let reported: u32 = inner
            .relays
            .values()
            .filter_map(|e| fresh_report(e, now))
            .flat_map(|r| r.conferences.iter())
            .filter(|c| c.id == conference)
            .map(|c| c.participants)
            .sum();
        let recent = inner
            .recent_tickets
            .entry(conference.to_owned())
            .or_default();
        // Oldest first: the expired ones leave from the front.
        while recent
            .front()
            .is_some_and(|at| now.duration_since(*at) >= RECENT_TICKETS)
        {
            recent.pop_front();
        }
        let size = reported.saturating_add(recent.len() as u32);
        let relay = decide(&states, &hosting, size)?;
        let id = policy.relay(relay).id.clone();
        inner
            .recent_tickets
            .entry(conference.to_owned())
            .or_default()
            .push_back(now);
        let placed = inner.placed.entry(conference.to_owned()).or_default();
        placed.retain(|(r, _)| *r != id);
        placed.push((id.clone(), now));
        let e = inner.relays.entry(id).or_default();
        e.pending_joins = e.pending_joins.saturating_add(1);
        Ok(relay)
    }

    /// Relays of `policy` carrying `conference` now.
    pub fn hosting(&self, policy: &Policy, conference: &str, now: Instant) -> Vec<RelayIdx> {
        self.lock().hosting(policy, conference, now)
    }

    /// The cascade links to command now: every pair of healthy relays
    /// inside `policy` carrying a conference is linked (the lower id dials),
    /// unless the dialer reports the link up or it was commanded a moment ago.
    pub fn plan_links(&self, policy: &Policy, now: Instant) -> Vec<(String, RelayIdx, RelayIdx)> {
        let mut inner = self.lock();
        // Conference → relays carrying it, built once per plan; draining
        // relays keep their links while participants remain.
        let carrying = inner.carrying(now, None);
        let mut wanted = Vec::new();
        for (conference, (hosting, _)) in carrying {
            let hosting: Vec<RelayIdx> = indices(policy, &hosting)
                .into_iter()
                .filter(|r| inner.state(&policy.relay(*r).id, now).health != Health::Unhealthy)
                .collect();
            for (i, a) in hosting.iter().enumerate() {
                for b in &hosting[i + 1..] {
                    let (from, peer) = (&policy.relay(*a).id, &policy.relay(*b).id);
                    let up = inner
                        .relays
                        .get(from)
                        .and_then(|e| e.report.as_ref())
                        .is_some_and(|r| {
                            r.links
                                .iter()
                                .any(|l| l.conference == conference && l.peer == *peer)
                        });
                    let key = (conference.clone(), from.clone(), peer.clone());
                    let recent = inner
                        .link_commands
                        .get(&key)
                        .is_some_and(|at| now.duration_since(*at) < LINK_RETRY);
                    if up || recent {
                        continue;
                    }
                    inner.link_commands.insert(key, now);
                    // Track ids carry their relay's prefix across links: two
                    // relays with the same (one started before an inventory
                    // change moved the other's position) would mix tracks up.
                    let base = |id: &str| {
                        inner
                            .relays
                            .get(id)
                            .and_then(|e| e.report.as_ref())
                            .map(|r| r.track_base)
                            .filter(|b| *b != 0)
                    };
                    if base(from).is_some() && base(from) == base(peer) {
                        warn!(relay = %from, peer = %peer, "not linking relays with the same track id prefix: restart one of them");
                        continue;
                    }
                    wanted.push((conference.clone(), *a, *b));
                }
            }
        }
        wanted
    }

    /// What `policy` no longer allows of what relays carry, for the
    /// conferences of `served` jurisdictions: a relay carrying a conference
    /// outside its jurisdiction (its country edited, the jurisdiction's
    /// countries changed, the relay removed) must give it up; a relay inside
    /// with a link to a peer outside must close that link. Each at most once
    /// per [`LINK_RETRY`] while it remains.
    pub fn misplaced(
        &self,
        policy: &Policy,
        served: &[crate::policy::JurisdictionIdx],
        now: Instant,
    ) -> Vec<Misplaced> {
        let mut inner = self.lock();
        let jurisdiction = |conference: &str| {
            crate::wire::conference::jurisdiction_of(conference)
                .and_then(|j| policy.jurisdiction_idx(j))
                .filter(|j| served.contains(j))
                .map(|j| policy.jurisdiction(j))
        };
        let inside = |relay: &str, j: &crate::policy::Jurisdiction| {
            policy.relay_idx(relay).is_some_and(|r| j.contains(r))
        };
        let mut out = Vec::new();
        for (conference, (relays, _)) in inner.carrying(now, None) {
            let Some(j) = jurisdiction(&conference) else {
                continue;
            };
            for relay in relays.into_iter().filter(|r| !inside(r, j)) {
                out.push(Misplaced::Relay {
                    conference: conference.clone(),
                    relay,
                });
            }
        }
        for (relay, e) in &inner.relays {
            for l in fresh_report(e, now)
                .into_iter()
                .flat_map(|r| r.links.iter())
            {
                let Some(j) = jurisdiction(&l.conference) else {
                    continue;
                };
                // A relay outside gives the whole conference up instead.
                if inside(relay, j) && !inside(&l.peer, j) {
                    out.push(Misplaced::Link {
                        conference: l.conference.clone(),
                        relay: relay.clone(),
                        peer: l.peer.clone(),
                    });
                }
            }
        }
        out.retain(|m| {
            inner
                .move_commands
                .get(&m.key())
                .is_none_or(|at| now.duration_since(*at) >= LINK_RETRY)
        });
        for m in &out {
            inner.move_commands.insert(m.key(), now);
            if let Misplaced::Relay { conference, relay } = m {
                // No new tickets count it as carrying the conference.
                if let Some(placed) = inner.placed.get_mut(conference) {
                    placed.retain(|(r, _)| r != relay);
                }
            }
        }
        out
    }

    /// Stores a report of relay `relay` (an id of the policy); returns its
    /// commands not yet acknowledged and the notifier to wait on when there
    /// are none.
    pub fn record(&self, relay: &str, report: RelayReport, now: Instant) -> Recorded {
        let mut inner = self.lock();
        let e = inner.relays.entry(relay.to_owned()).or_default();
        // An acknowledgement of another run's numbering means nothing here.
        if report.epoch == self.epoch {
            while e.commands.front().is_some_and(|c| c.seq <= report.ack) {
                e.commands.pop_front();
            }
        }
        e.last_report = Some(now);
        // Conferences that left this relay since its last report, with the
        // last counts it gave for them.
        let (vanished, vanished_links) = e
            .report
            .take()
            .map(|old| {
                (
                    old.conferences
                        .into_iter()
                        .filter(|c| !report.conferences.iter().any(|n| n.id == c.id))
                        .collect(),
                    old.links
                        .into_iter()
                        .filter(|l| {
                            !report
                                .links
                                .iter()
                                .any(|n| n.conference == l.conference && n.peer == l.peer)
                        })
                        .collect(),
                )
            })
            .unwrap_or_default();
        e.report = Some(report);
        e.pending_joins = 0;
        Recorded {
            commands: e.commands.iter().cloned().collect(),
            notify: e.notify.clone(),
            vanished,
            vanished_links,
        }
    }

    /// Whether `relay`'s usage is due to be written (and marks it written).
    pub fn persist_due(&self, relay: &str, now: Instant) -> bool {
        let mut inner = self.lock();
        let e = inner.relays.entry(relay.to_owned()).or_default();
        let due = e
            .persisted
            .is_none_or(|at| now.duration_since(at) >= PERSIST_EVERY);
        if due {
            e.persisted = Some(now);
        }
        due
    }

    /// Commands for `relay` not yet acknowledged.
    pub fn commands(&self, relay: &str) -> Vec<Command> {
        let inner = self.lock();
        inner
            .relays
            .get(relay)
            .map(|e| e.commands.iter().cloned().collect())
            .unwrap_or_default()
    }

    /// Queues `action` for each of `relays` (ids) and wakes their held reports.
    pub fn command<'a>(&self, relays: impl IntoIterator<Item = &'a str>, action: &Action) {
        let mut inner = self.lock();
        for relay in relays {
            inner.next_seq += 1;
            let seq = inner.next_seq;
            let e = inner.relays.entry(relay.to_owned()).or_default();
            if e.commands.len() >= MAX_COMMANDS {
                e.commands.pop_front();
                warn!(
                    relay = %relay,
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

    /// Forgets placements no relay has reported for a while (conferences
    /// that emptied without being ended).
    pub(super) fn trim(&self, now: Instant) {
        let mut inner = self.lock();
        let reported: std::collections::HashSet<String> = inner
            .relays
            .values()
            .filter_map(|e| e.report.as_ref())
            .flat_map(|r| r.conferences.iter().map(|c| c.id.clone()))
            .collect();
        inner
            .recent_tickets
            .retain(|_, t| t.iter().any(|at| now.duration_since(*at) < RECENT_TICKETS));
        inner.placed.retain(|id, relays| {
            relays.retain(|(_, at)| now.duration_since(*at) <= FORGET_PLACEMENT_AFTER);
            reported.contains(id) || !relays.is_empty()
        });
        inner
            .link_commands
            .retain(|_, at| now.duration_since(*at) <= FORGET_PLACEMENT_AFTER);
        inner
            .move_commands
            .retain(|_, at| now.duration_since(*at) <= FORGET_PLACEMENT_AFTER);
    }

    /// Forgets the placement of an ended conference.
    pub fn forget(&self, conference: &str) {
        let mut inner = self.lock();
        inner.placed.remove(conference);
        inner.link_commands.retain(|(c, _, _), _| c != conference);
        inner.move_commands.retain(|(c, _, _), _| c != conference);
    }

    /// The certificate fingerprint `relay` last reported.
    pub fn cert(&self, relay: &str) -> Option<String> {
        self.certs(relay).map(|(current, _)| current)
    }

    /// The fingerprints `relay` last reported: its certificate's and its
    /// successor's (self-signed certificates only).
    pub fn certs(&self, relay: &str) -> Option<(String, Option<String>)> {
        let inner = self.lock();
        inner
            .relays
            .get(relay)?
            .report
            .as_ref()
            .map(|r| (r.cert_sha256.clone(), r.next_cert_sha256.clone()))
    }

    /// Every relay's last-reported share of `conference`, by relay id.
    pub fn conference(&self, conference: &str) -> Vec<ConferenceOnRelay> {
        let inner = self.lock();
        let mut out: Vec<ConferenceOnRelay> = inner
            .relays
            .iter()
            .filter_map(|(id, e)| {
                let r = e.report.as_ref()?;
                let load = r.conferences.iter().find(|c| c.id == conference)?;
                Some(ConferenceOnRelay {
                    relay: id.clone(),
                    load: load.clone(),
                })
            })
            .collect();
        out.sort_by(|a, b| a.relay.cmp(&b.relay));
        out
    }

    /// When each relay of `policy` last reported and what (for the
    /// operator's listing), in the policy's order.
    pub fn reports(
        &self,
        policy: &Policy,
        now: Instant,
    ) -> Vec<(Option<Duration>, Option<RelayReport>)> {
        let inner = self.lock();
        policy
            .relays()
            .iter()
            .map(|r| match inner.relays.get(&r.id) {
                Some(e) => (
                    e.last_report.map(|at| now.duration_since(at)),
                    e.report.clone(),
                ),
                None => (None, None),
            })
            .collect()
    }

    /// Every relay's last-reported cascade links of `conference`: (relay id, link).
    pub fn conference_links(&self, conference: &str) -> Vec<(String, LinkLoad)> {
        let inner = self.lock();
        let mut out: Vec<(String, LinkLoad)> = inner
            .relays
            .iter()
            .flat_map(|(id, e)| {
                e.report
                    .iter()
                    .flat_map(|r| r.links.iter())
                    .filter(|l| l.conference == conference)
                    .map(move |l| (id.clone(), l.clone()))
            })
            .collect();
        out.sort_by(|a, b| (&a.0, &a.1.peer).cmp(&(&b.0, &b.1.peer)));
        out
    }

    /// Conferences carried now: id, ids of the relays carrying it, participants.
    pub fn live_conferences(&self, now: Instant) -> Vec<(String, Vec<String>, u32)> {
        let mut list: Vec<_> = self
            .lock()
            .carrying(now, None)
            .into_iter()
            .map(|(id, (r, p))| (id, r, p))
            .collect();
        list.sort_by(|a, b| a.0.cmp(&b.0));
        list
    }

    /// Participants and conferences per jurisdiction id, from the last
    /// reports that are not stale.
    pub fn load_by_jurisdiction(&self, now: Instant) -> HashMap<String, (i64, i64)> {
        let inner = self.lock();
        let mut seen: std::collections::HashSet<&str> = std::collections::HashSet::new();
        let mut out: HashMap<String, (i64, i64)> = HashMap::new();
        for r in inner.relays.values().filter_map(|e| fresh_report(e, now)) {
            for c in &r.conferences {
                let Some(j) = crate::wire::conference::jurisdiction_of(&c.id) else {
                    continue;
                };
                let e = out.entry(j.to_owned()).or_default();
                e.0 += i64::from(c.participants);
                if c.participants > 0 && seen.insert(c.id.as_str()) {
                    e.1 += 1;
                }
            }
        }
        out
    }

    /// Updates each relay's health flag; returns the ids of those that changed.
    pub(super) fn refresh(&self, now: Instant) -> Vec<(String, bool)> {
        let mut inner = self.lock();
        let mut changed = Vec::new();
        for (id, e) in inner.relays.iter_mut() {
            let healthy = e
                .last_report
                .is_some_and(|at| now.duration_since(at) < STALE_AFTER)
                && e.report.as_ref().is_some_and(|r| !r.draining);
            if healthy != e.healthy {
                e.healthy = healthy;
                changed.push((id.clone(), healthy));
            }
        }
        changed.sort();
        changed
    }
}

impl Default for Registry {
    fn default() -> Self {
        Self::new()
    }
}

/// Queues `action` for each of `relays`: in this router's memory, or with
/// replicas in the shared store, where whichever replica a relay reports
/// to delivers it. Stored before this returns, so a request answered after
/// it cannot lose its command with the replica that answered.
pub async fn send(shared: &Shared, relays: &[&str], action: &Action) -> Result<(), StoreError> {
    send_fenced(shared, relays, action, None).await.map(|_| ())
}

/// [`send`] for the planner: with replicas, only while this replica still
/// holds the planner lease with `term` (`false`, nothing queued, if not).
pub(super) async fn send_fenced(
    shared: &Shared,
    relays: &[&str],
    action: &Action,
    term: Option<i64>,
) -> Result<bool, StoreError> {
    shared
        .replicas
        .queue_commands(relays, action, term.map(|t| (shared.me.id.as_str(), t)))
        .await
}

/// The commands for `relay` not yet acknowledged, after taking its
/// acknowledgement of `ack` in numbering `epoch`.
pub async fn pending(
    shared: &Shared,
    relay: &str,
    epoch: u64,
    ack: u64,
) -> Result<Vec<Command>, StoreError> {
    let ack = (epoch == shared.relays.epoch()).then_some(ack);
    shared.replicas.pending_commands(relay, ack).await
}

/// Chooses the relay for a participant of `conference` (as
/// [`Registry::place`]); with replicas, the first placement of a
/// conference is claimed in the shared store, and a replica that lost the
/// race places again on the winner's relay (or, if `decide` will not take
/// it, keeps its own, which the planner links).
pub async fn place<E>(
    shared: &Shared,
    conference: &str,
    hint: Option<RelayIdx>,
    decide: impl Fn(&[RelayState], &[RelayIdx], u32) -> Result<RelayIdx, E>,
) -> Result<Result<RelayIdx, E>, StoreError> {
    let policy = &shared.policy;
    let first = shared
        .relays
        .hosting(policy, conference, Instant::now())
        .is_empty();
    if !first {
        return Ok(shared
            .relays
            .place(policy, conference, hint, Instant::now(), decide));
    }
    let claimed = shared
        .replicas
        .placement(conference, PLACED_FRESH)
        .await?
        .and_then(|id| policy.relay_idx(&id));
    let relay = match shared.relays.place(
        policy,
        conference,
        claimed.or(hint),
        Instant::now(),
        &decide,
    ) {
        Ok(r) => r,
        Err(e) => return Ok(Err(e)),
    };
    let mine = policy.relay(relay).id.as_str();
    let winner = shared
        .replicas
        .claim_placement(conference, mine, PLACED_FRESH)
        .await?;
    if winner == mine {
        return Ok(Ok(relay));
    }
    shared.relays.unplace(conference, mine);
    Ok(shared.relays.place(
        policy,
        conference,
        policy.relay_idx(&winner),
        Instant::now(),
        decide,
    ))
}

/// Forgets an ended conference's placement, here and with replicas.
pub async fn forget(shared: &Shared, conference: &str) -> Result<(), StoreError> {
    shared.relays.forget(conference);
    shared.replicas.forget_placement(conference).await
}
