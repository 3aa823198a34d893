//! One shard: a task owning a [`Core`] for the conferences that hash to
//! it ([`super::shards`]), with their connections' handles.
//!
//! It takes events from its queue in batches, feeds them to the core, hands
//! control messages to each connection's writer and then sends every
//! datagram the batch produced. It never awaits a peer: datagrams leave
//! through `Connection::send_datagram`, which does not block. A subscriber
//! whose QUIC send buffer is full keeps its datagrams in the core's bounded
//! queue, where the drop policy applies, and is tried again
//! [`BACKLOG_RETRY`] later; with nothing queued and no event, the shard
//! sleeps until an event arrives (an idle relay does not wake).

use std::collections::HashMap;
use std::time::{Duration, Instant};

use tokio::sync::{mpsc, oneshot};
use tracing::{info, warn};
use web_transport_quinn::Session;

use super::peer::Peer;
use super::shards::{Event, Snapshot};
use super::{Metrics, link};
use crate::clock::unix_now;
use crate::forward::{Admission, ConnId, Core, IngressDrop, Permissions};
use crate::ticket::{TicketError, Verifier};
use crate::wire::channel::Enforcement;
use crate::wire::control::{ClientMessage, ParticipantId, ServerMessage};
use crate::wire::link::LinkMessage;
use crate::wire::{GOING_AWAY_DRAIN, GOING_AWAY_MOVED, GOING_AWAY_SHUTDOWN, close_code};

/// How soon a subscriber whose QUIC send buffer was full is tried again.
pub(super) const BACKLOG_RETRY: Duration = Duration::from_millis(1);

/// Events taken from the queue before the datagrams they made are sent.
const BATCH: usize = 1024;

/// Where a connection's control messages go.
enum Sink {
    Client(mpsc::Sender<ServerMessage>),
    /// A cascade link: only track announcements cross it.
    Link(mpsc::Sender<LinkMessage>),
}

impl Sink {
    /// Sends what this kind of connection takes; `Err` when it does not
    /// keep up.
    fn send(&self, message: ServerMessage) -> Result<(), ()> {
        match self {
            Sink::Client(tx) => tx.try_send(message).map_err(|_| ()),
            Sink::Link(tx) => {
                let m = match message {
                    ServerMessage::TrackPublished(info) => LinkMessage::TrackPublished(info),
                    ServerMessage::TrackUnpublished { track } => {
                        LinkMessage::TrackUnpublished { track }
                    }
                    _ => return Ok(()),
                };
                tx.try_send(m).map_err(|_| ())
            }
        }
    }
}

struct Handle {
    conn: Peer,
    control: Sink,
    /// What its transport may hold unsent ([`super::peer::QUIC_BACKLOG`];
    /// `usize::MAX` for links: the whole buffer).
    backlog: usize,
    /// Holds the participant's place in `rr_relay_client_connections`.
    _counted: Option<Counted>,
}

/// One in a gauge until dropped.
struct Counted(prometheus::IntGauge);

impl Counted {
    fn new(gauge: prometheus::IntGauge) -> Self {
        gauge.inc();
        Counted(gauge)
    }
}

impl Drop for Counted {
    fn drop(&mut self) {
        self.0.dec();
    }
}

/// Enforcement events kept for the next report.
const MAX_PENDING_EVENTS: usize = 1000;

/// Control messages waiting for a slow reader before it is disconnected.
pub(super) const CONTROL_BACKLOG: usize = 1024;

/// Runs shard `index` until every sender of its queue is gone.
pub(super) async fn run(
    index: usize,
    tap: Option<super::Tap>,
    log_full_addresses: Vec<String>,
    mut core: Core,
    mut verifier: Verifier,
    mut events: mpsc::Receiver<Event>,
    metrics: Metrics,
) {
    let shard = metrics.shard(index);
    let mut handles: HashMap<ConnId, Handle> = HashMap::new();
    let mut st = LoopState {
        log_full_addresses,
        tap,
        ..LoopState::default()
    };
    let mut ready = Vec::new();
    let mut backlog = Vec::new();
    let mut last = core.counters().clone();
    let mut counted_connections = 0i64;
    let mut open = true;
    // Paths are sampled and layers re-chosen on a steady beat; a missed
    // beat (a long batch) is not made up in a burst.
    let mut tick = tokio::time::interval(crate::forward::estimate::TICK);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    while open {
        // Wake on work: an event, the tick, or (only while a subscriber's
        // send buffer was full) the retry.
        let first = if backlog.is_empty() {
            tokio::select! {
                event = events.recv() => Some(event),
                _ = tick.tick() => {
                    core.tick(Instant::now(), |id| sample(&handles, id));
                    None
                }
            }
        } else {
            tokio::select! {
                event = events.recv() => Some(event),
                () = tokio::time::sleep(BACKLOG_RETRY) => None,
                _ = tick.tick() => {
                    core.tick(Instant::now(), |id| sample(&handles, id));
                    None
                }
            }
        };
        // Handles one event; 1 if it was a datagram.
        let mut take = |e: Event| {
            let datagram = u64::from(matches!(e, Event::Datagram(..)));
            handle_event(e, &mut core, &mut verifier, &mut handles, &mut st, &metrics);
            // Per event, so a burst of messages to one client within a
            // batch is not mistaken for a client that does not read.
            flush_control(&mut core, &mut handles);
            datagram
        };
        let mut datagrams = match first {
            Some(Some(e)) => take(e),
            Some(None) => {
                open = false;
                0
            }
            None => 0,
        };
        // Take whatever else is already waiting before sending, so one
        // send pass serves a batch.
        datagrams += take_waiting(&mut events, &mut take);
        // Media came in: let the tasks already woken run once (the
        // publishers' connection tasks among them) and take what they
        // queued too, so each subscriber gets its datagrams in one go and
        // its QUIC driver sends them in one batch (measured in the commit
        // that added this: loss at 80 % of the direct rate, N = 100,
        // 12–15 % without, 2.0–2.6 % with).
        if datagrams > 0 {
            tokio::task::yield_now().await;
            datagrams += take_waiting(&mut events, &mut take);
        }
        flush_control(&mut core, &mut handles);
        core.take_ready(&mut ready);
        ready.append(&mut backlog);
        let (mut sent, mut failed) = (0u64, 0u64);
        for conn in ready.drain(..) {
            let Some(h) = handles.get(&conn) else {
                while core.poll_datagram(conn).is_some() {}
                continue;
            };
            // Asked once per connection and pass; QUIC's driver only frees
            // space meanwhile, so counting down stays on the safe side.
            let mut space = h.conn.datagram_send_buffer_space(h.backlog);
            while let Some(len) = core.next_datagram_len(conn) {
                if space < len {
                    backlog.push(conn);
                    break;
                }
                let Some(d) = core.poll_datagram(conn) else {
                    break;
                };
                space -= len;
                if let Some(tap) = &st.tap {
                    (tap.0)(super::Tapped::DatagramOut(&d));
                }
                match h.conn.send_datagram(d) {
                    Ok(()) => sent += 1,
                    Err(_) => failed += 1,
                }
            }
        }
        metrics.datagrams_sent.inc_by(sent);
        metrics.send_failures.inc_by(failed);
        shard.datagrams.inc_by(datagrams);
        shard.queue_depth.set(events.len() as i64);
        if let Some(at) = st.first_arrival.take() {
            metrics.forward_seconds.observe(at.elapsed().as_secs_f64());
        }
        let connections = handles.len() as i64;
        metrics.connections.add(connections - counted_connections);
        shard.connections.set(connections);
        counted_connections = connections;
        metrics.sync(core.counters(), &mut last);
    }
    metrics.connections.sub(counted_connections);
}

/// What a participant's transport reports, for the core's tick.
fn sample(handles: &HashMap<ConnId, Handle>, id: ConnId) -> crate::forward::PathSample {
    handles
        .get(&id)
        .map(|h| h.conn.path_sample())
        .unwrap_or_default()
}

/// Hands `take` the events already waiting, at most [`BATCH`]; the sum
/// of what it returned (the datagrams among them).
fn take_waiting(events: &mut mpsc::Receiver<Event>, take: &mut impl FnMut(Event) -> u64) -> u64 {
    let mut datagrams = 0;
    for _ in 0..BATCH {
        match events.try_recv() {
            Ok(e) => datagrams += take(e),
            Err(_) => break,
        }
    }
    datagrams
}

/// The core task's state besides the core.
#[derive(Debug, Default)]
struct LoopState {
    revoked: Revocations,
    /// Cascade links up: (conference, peer relay) → connection.
    links: HashMap<(String, String), ConnId>,
    /// Enforcement events for the next report.
    pending: Vec<Enforcement>,
    /// Conferences with links but no participant here, since when.
    idle_since: HashMap<String, Instant>,
    /// Arrival of the first datagram handled since the last send pass.
    first_arrival: Option<Instant>,
    /// From [`super::Settings::log_full_addresses`].
    log_full_addresses: Vec<String>,
    /// Of the trust the core's verifier holds (see [`super::Trust`]).
    trust_generation: u64,
    /// From [`super::Settings::tap`].
    tap: Option<super::Tap>,
}

impl LoopState {
    fn enforcement(&mut self, event: Enforcement) {
        if self.pending.len() < MAX_PENDING_EVENTS {
            self.pending.push(event);
        }
    }
}

/// A link whose conference has had no participant here this long is closed.
const IDLE_LINK_AFTER: Duration = Duration::from_secs(5);

/// Participants removed and conferences ended by the router: tickets issued
/// up to then are refused, for as long as such a ticket could be valid.
#[derive(Debug, Default)]
struct Revocations {
    participants: HashMap<(String, String), u64>,
    conferences: HashMap<String, u64>,
    /// Conferences moved off this relay by the router, and when.
    moved: HashMap<String, u64>,
}

impl Revocations {
    fn check(&self, claims: &crate::ticket::Claims) -> Result<(), TicketError> {
        let key = (claims.conference.clone(), claims.participant.clone());
        let revoked_at = self
            .conferences
            .get(&claims.conference)
            .copied()
            .or_else(|| self.participants.get(&key).copied());
        match revoked_at {
            Some(at)
                if claims.issued_at <= at || self.conferences.contains_key(&claims.conference) =>
            {
                Err(TicketError::Revoked)
            }
            _ => self.check_moved(&claims.conference, claims.issued_at),
        }
    }

    /// Refuses what was issued for a conference up to its move off this relay.
    fn check_moved(&self, conference: &str, issued_at: u64) -> Result<(), TicketError> {
        match self.moved.get(conference) {
            Some(at) if issued_at <= *at => Err(TicketError::Revoked),
            _ => Ok(()),
        }
    }

    /// Forgets revocations no ticket can outlive.
    fn prune(&mut self, now: u64) {
        let horizon = crate::ticket::MAX_LIFETIME_SECS + 2 * crate::ticket::CLOCK_SKEW_SECS;
        self.participants
            .retain(|_, at| now.saturating_sub(*at) <= horizon);
        self.conferences
            .retain(|_, at| now.saturating_sub(*at) <= horizon);
        self.moved
            .retain(|_, at| now.saturating_sub(*at) <= horizon);
    }
}

/// What handling one event may touch: the shard's core, its trust, its
/// connections and the loop's state.
struct Shard<'a> {
    core: &'a mut Core,
    verifier: &'a mut Verifier,
    handles: &'a mut HashMap<ConnId, Handle>,
    st: &'a mut LoopState,
    metrics: &'a Metrics,
}

type HelloReply = oneshot::Sender<Result<(ConnId, mpsc::Receiver<ServerMessage>), TicketError>>;
type LinkReply = oneshot::Sender<Result<(ConnId, mpsc::Receiver<LinkMessage>), TicketError>>;

fn handle_event(
    event: Event,
    core: &mut Core,
    verifier: &mut Verifier,
    handles: &mut HashMap<ConnId, Handle>,
    st: &mut LoopState,
    metrics: &Metrics,
) {
    let shard = |core, verifier, handles, st| Shard {
        core,
        verifier,
        handles,
        st,
        metrics,
    };
    match event {
        Event::Hello {
            conn,
            transport,
            claims,
            recheck,
            reply,
        } => shard(core, verifier, handles, st).hello(conn, transport, claims, recheck, reply),
        Event::LinkUp {
            conn,
            conference,
            peer,
            claims,
            recheck,
            reply,
        } => shard(core, verifier, handles, st)
            .link_up(conn, conference, peer, claims, recheck, reply),
        Event::Link(id, message) => {
            if let Some(tap) = &st.tap {
                (tap.0)(super::Tapped::Link(&message));
            }
            link_message(id, message, core, metrics)
        }
        Event::Enforcement(event) => st.enforcement(event),
        Event::Control(id, message) => {
            if let Some(tap) = &st.tap {
                (tap.0)(super::Tapped::Control(&message));
            }
            let leaving = matches!(message, ClientMessage::Leave {});
            core.handle_control_at(id, message, Instant::now());
            if leaving {
                if let Some(h) = handles.remove(&id) {
                    h.conn.close(close_code::NORMAL, b"left");
                }
            }
        }
        Event::RateLimited(id) => core.handle_rate_limited(id),
        Event::BadControl(id) => {
            metrics.control_errors.inc();
            core.handle_closed(id);
            if let Some(h) = handles.remove(&id) {
                h.conn
                    .close(close_code::PROTOCOL, b"malformed control message");
            }
        }
        Event::Datagram(id, datagram, at) => {
            st.first_arrival.get_or_insert(at);
            if let Some(tap) = &st.tap {
                (tap.0)(super::Tapped::DatagramIn(&datagram));
            }
            if let Err(IngressDrop::Malformed(e)) =
                core.handle_datagram(id, datagram, Instant::now())
            {
                metrics.ingress_drops.with_label_values(&[e.code()]).inc();
            }
        }
        Event::Closed(id) => {
            core.handle_closed(id);
            handles.remove(&id);
            st.links.retain(|_, l| *l != id);
        }
        Event::Snapshot(serves, reply) => {
            shard(core, verifier, handles, st).snapshot(serves, reply)
        }
        Event::Command(action) => shard(core, verifier, handles, st).command(action),
        Event::Reload {
            verifier: next,
            log_full_addresses,
            generation,
        } => shard(core, verifier, handles, st).reload(next, log_full_addresses, generation),
        Event::Shutdown => {
            for h in handles.values() {
                let _ = h.control.send(ServerMessage::GoingAway {
                    code: GOING_AWAY_SHUTDOWN,
                    reason: "relay shutting down; reconnect through the router".into(),
                });
            }
        }
    }
}

impl Shard<'_> {
    /// `hello`: the ticket again under the trust in force, then admission.
    fn hello(
        self,
        conn: Box<Peer>,
        transport: super::Transport,
        claims: crate::ticket::Claims,
        recheck: super::Recheck,
        reply: HelloReply,
    ) {
        let Shard {
            core,
            verifier,
            handles,
            st,
            metrics,
        } = self;
        let generation = st.trust_generation;
        let revoked = &mut st.revoked;
        match
        // Checked under an older trust (a reload came since): again,
        // under this one (keys, jurisdictions, relay).
        (if recheck.generation == generation {
            Ok(())
        } else {
            verifier.check(&recheck.ticket, unix_now()).map(|_| ())
        })
        .and_then(|()| revoked.check(&claims))
        // The trust may have changed since the connection task checked
        // the ticket (a reload): the jurisdiction must still be taken.
        .and_then(|()| {
            if verifier.trusts(&claims.jurisdiction) {
                Ok(())
            } else {
                Err(TicketError::ForeignJurisdiction)
            }
        })
        .and_then(|()| verifier.remember(&claims, unix_now()))
    {
        Ok(()) => {
            info!(
                client = %crate::redact::Addr::new(
                    conn.remote_address().ip(),
                    st.log_full_addresses.contains(&claims.jurisdiction),
                ),
                participant = %crate::redact::Id(&claims.participant),
                name = %crate::redact::Name(&claims.display_name),
                "participant admitted"
            );
            let id = core.admit(Admission {
                conference: claims.conference,
                participant: ParticipantId(claims.participant),
                display_name: claims.display_name,
                permissions: Permissions {
                    publish: claims.grants.publish,
                    subscribe: claims.grants.subscribe,
                    moderate: claims.grants.moderate,
                },
                e2ee: claims.e2ee,
            });
            // Room for what the admission queued for the newcomer at
            // once (its welcome, the tracks after it, who is here),
            // which grows with the conference, beside the backlog a
            // reader may fall behind by.
            let (tx, rx) = mpsc::channel(CONTROL_BACKLOG + core.pending_control());
            metrics.sessions.with_label_values(&[transport.label()]).inc();
            handles.insert(
                id,
                Handle {
                    conn: *conn,
                    control: Sink::Client(tx),
                    backlog: super::peer::QUIC_BACKLOG,
                    _counted: Some(Counted::new(
                        metrics
                            .client_connections
                            .with_label_values(&[transport.label()]),
                    )),
                },
            );
            if reply.send(Ok((id, rx))).is_err() {
                // The connection task is gone already.
                core.handle_closed(id);
                handles.remove(&id);
            }
        }
        Err(e) => {
            metrics
                .ticket_refusals
                .with_label_values(&[e.code(), "signed"])
                .inc();
            // No client address in the log: the refusal reason only.
            info!(reason = e.code(), "ticket refused");
            st.enforcement(Enforcement {
                conference: claims.conference.clone(),
                kind: "ticket".into(),
                reason: e.code().into(),
                peer: None,
                at: unix_now(),
            });
            let _ = reply.send(Err(e));
        }
    }
    }

    /// A cascade link up: admitted unless ended, outside, or refused.
    fn link_up(
        self,
        conn: quinn::Connection,
        conference: String,
        peer: String,
        claims: Option<crate::ticket::CascadeClaims>,
        recheck: Option<super::Recheck>,
        reply: LinkReply,
    ) {
        let Shard {
            core,
            verifier,
            handles,
            st,
            ..
        } = self;
        let generation = st.trust_generation;
        // An ended conference takes no links, whoever asks.
        let ended = st.revoked.conferences.contains_key(&conference);
        // Under the trust in force now (a reload may have come since the
        // handshake), both ends must be inside the conference's jurisdiction.
        let inside = crate::wire::conference::jurisdiction_of(&conference)
            .and_then(|j| verifier.link_target(&peer, j))
            .is_some();
        let stale = recheck.as_ref().filter(|r| r.generation != generation);
        let checked = if ended {
            Err(TicketError::Revoked)
        } else if !inside {
            Err(TicketError::PeerOutsideJurisdiction)
        } else if let Some(Err(e)) =
            stale.map(|r| verifier.check_cascade(&r.ticket, r.ip, r.cert.as_deref(), unix_now()))
        {
            Err(e)
        } else {
            claims.as_ref().map_or(Ok(()), |c| {
                st.revoked
                    .check_moved(&c.conference, c.issued_at)
                    .and_then(|()| verifier.remember_cascade(c, unix_now()))
            })
        };
        let key = (conference.clone(), peer.clone());
        match checked {
            // Counted and reported by the connection task, which has the ticket.
            Err(e) => {
                let _ = reply.send(Err(e));
            }
            Ok(()) => {
                // A newer link for the same conference and peer replaces
                // the old one (the peer restarted, or both ends retried).
                if let Some(old) = st.links.remove(&key) {
                    core.handle_closed(old);
                    if let Some(h) = handles.remove(&old) {
                        h.conn.close(close_code::NORMAL, b"replaced");
                    }
                }
                let id = core.admit_link(&conference, &peer);
                let (tx, rx) = mpsc::channel(link::LINK_BACKLOG);
                handles.insert(
                    id,
                    Handle {
                        conn: Peer::Quic(Session::raw(conn)),
                        control: Sink::Link(tx),
                        backlog: usize::MAX,
                        _counted: None,
                    },
                );
                st.links.insert(key.clone(), id);
                if reply.send(Ok((id, rx))).is_err() {
                    core.handle_closed(id);
                    handles.remove(&id);
                    st.links.remove(&key);
                }
                info!(link_to = %peer, "cascade link admitted");
            }
        }
    }

    /// What the next report to a router serving `serves` carries; idle links close.
    fn snapshot(self, serves: Vec<String>, reply: oneshot::Sender<Snapshot>) {
        let Shard {
            core, handles, st, ..
        } = self;
        let conferences = core.conference_stats();
        // Links of conferences nobody here takes part in any more carry
        // nothing anyone here wants: close them after a grace period.
        let now = Instant::now();
        let idle: Vec<String> = conferences
            .iter()
            .filter(|c| c.participants == 0)
            .map(|c| c.id.clone())
            .collect();
        st.idle_since.retain(|c, _| idle.contains(c));
        for c in idle {
            let since = *st.idle_since.entry(c.clone()).or_insert(now);
            if now.duration_since(since) >= IDLE_LINK_AFTER {
                for id in core.connections_of(&c, None) {
                    core.handle_closed(id);
                    if let Some(h) = handles.remove(&id) {
                        h.conn.close(close_code::NORMAL, b"link idle");
                    }
                }
                st.links.retain(|(conf, _), _| *conf != c);
                st.idle_since.remove(&c);
            }
        }
        let counters = core.counters();
        let _ = reply.send(Snapshot {
            participants: core.participants() as u32,
            bytes_total: counters.bytes_received + counters.bytes_delivered,
            conferences: core.conference_stats(),
            links: core.link_stats(),
            events: {
                // Each event goes to the router serving its conference.
                let (mine, rest): (Vec<_>, Vec<_>) =
                    std::mem::take(&mut st.pending).into_iter().partition(|e| {
                        crate::wire::conference::jurisdiction_of(&e.conference)
                            .is_some_and(|j| serves.iter().any(|s| s == j))
                    });
                let horizon = unix_now().saturating_sub(60);
                st.pending = rest.into_iter().filter(|e| e.at >= horizon).collect();
                mine
            },
        });
        st.revoked.prune(unix_now());
    }

    /// A router's command: kick, end, drain, move or unlink.
    fn command(self, action: crate::wire::channel::Action) {
        let Shard {
            core,
            handles,
            st,
            metrics,
            ..
        } = self;
        let revoked = &mut st.revoked;
        use crate::wire::channel::Action;
        let now = unix_now();
        let (conns, message, code) = match &action {
            Action::Kick {
                conference,
                participant,
                reason,
                at,
            } => {
                // The router's clock, which stamped the tickets; never
                // earlier than ours, so skew only widens the refusal.
                revoked
                    .participants
                    .insert((conference.clone(), participant.clone()), (*at).max(now));
                (
                    core.connections_of(conference, Some(participant)),
                    // Routers refuse longer reasons; one from an older
                    // router is cut, never left to break the message.
                    ServerMessage::Kicked {
                        reason: crate::wire::control::fit_label(reason),
                    },
                    "kicked",
                )
            }
            Action::End { conference, at } => {
                revoked
                    .conferences
                    .insert(conference.clone(), (*at).max(now));
                st.links.retain(|(c, _), _| c != conference);
                (
                    core.connections_of(conference, None),
                    ServerMessage::ConferenceEnded {},
                    "conference_ended",
                )
            }
            Action::Drain {} => {
                for h in handles.values() {
                    if let Sink::Client(tx) = &h.control {
                        let _ = tx.try_send(ServerMessage::GoingAway {
                            code: GOING_AWAY_DRAIN,
                            reason: "relay draining; reconnect through the router".into(),
                        });
                    }
                }
                return;
            }
            Action::Move { conference, at } => {
                // Tickets and links for it issued up to now are refused.
                st.revoked.moved.insert(conference.clone(), (*at).max(now));
                move_out(core, handles, st, metrics, conference);
                return;
            }
            Action::Unlink { conference, peer } => {
                close_link(core, handles, st, conference, peer);
                return;
            }
            // Links are dialled by the report task, which has the endpoint.
            Action::Link { .. } => return,
        };
        for id in conns {
            let is_link = core.link_peer(id).is_some();
            core.handle_closed(id);
            if let Some(h) = handles.remove(&id) {
                if is_link {
                    h.conn
                        .close(close_code::CONFERENCE_ENDED, b"conference ended");
                    continue;
                }
                metrics
                    .moderation_disconnects
                    .with_label_values(&[code])
                    .inc();
                // The writer sends this last message, then closes the
                // connection with the matching code.
                let _ = h.control.send(message.clone());
            }
        }
        flush_control(core, handles);
    }

    /// A reloaded policy: adopt its trust; move out what it places outside.
    fn reload(self, next: Verifier, log_full_addresses: Vec<String>, generation: u64) {
        let Shard {
            core,
            verifier,
            handles,
            st,
            metrics,
        } = self;
        st.trust_generation = generation;
        let before = verifier.jurisdictions();
        verifier.adopt(next);
        st.log_full_addresses = log_full_addresses;
        let inside = verifier.jurisdictions();
        for j in before.iter().filter(|j| !inside.contains(j)) {
            let _ = metrics.participants.remove_label_values(&[j.as_str()]);
            let _ = metrics.conferences.remove_label_values(&[j.as_str()]);
        }
        // Conferences of jurisdictions the relay is no longer in leave it.
        let outside: Vec<String> = core
            .conference_stats()
            .into_iter()
            .map(|c| c.id)
            .filter(|id| {
                crate::wire::conference::jurisdiction_of(id)
                    .is_some_and(|j| !inside.iter().any(|i| i == j))
            })
            .collect();
        for conference in &outside {
            move_out(core, handles, st, metrics, conference);
        }
        // Links to peers the policy no longer places inside close.
        let foreign: Vec<(String, String)> = st
            .links
            .keys()
            .filter(|(conference, peer)| {
                crate::wire::conference::jurisdiction_of(conference)
                    .is_none_or(|j| verifier.link_target(peer, j).is_none())
            })
            .cloned()
            .collect();
        for (conference, peer) in foreign {
            close_link(core, handles, st, &conference, &peer);
        }
    }
}

/// Takes `conference` off this relay because the policy in force places the
/// relay outside its jurisdiction: its participants are told to reconnect
/// through the router (which places them inside) and disconnected, so no
/// more of its media passes here; its links close.
fn move_out(
    core: &mut Core,
    handles: &mut HashMap<ConnId, Handle>,
    st: &mut LoopState,
    metrics: &Metrics,
    conference: &str,
) {
    st.links.retain(|(c, _), _| c != conference);
    st.idle_since.remove(conference);
    let mut moved = 0u32;
    for id in core.connections_of(conference, None) {
        let is_link = core.link_peer(id).is_some();
        core.handle_closed(id);
        if let Some(h) = handles.remove(&id) {
            if is_link {
                h.conn.close(close_code::MOVED, b"moved");
                continue;
            }
            moved += 1;
            metrics
                .moderation_disconnects
                .with_label_values(&["moved"])
                .inc();
            // The writer sends this last message, then closes the connection.
            let _ = h.control.send(ServerMessage::GoingAway {
                code: GOING_AWAY_MOVED,
                reason: "relay outside the jurisdiction; rejoin via the router".into(),
            });
        }
    }
    warn!(
        jurisdiction = crate::wire::conference::jurisdiction_of(conference).unwrap_or_default(),
        participants = moved,
        "conference moved off this relay: the policy in force places it outside the conference's jurisdiction"
    );
    flush_control(core, handles);
}

/// Closes `conference`'s cascade link to `peer`, if up.
fn close_link(
    core: &mut Core,
    handles: &mut HashMap<ConnId, Handle>,
    st: &mut LoopState,
    conference: &str,
    peer: &str,
) {
    let key = (conference.to_owned(), peer.to_owned());
    if let Some(id) = st.links.remove(&key) {
        core.handle_closed(id);
        if let Some(h) = handles.remove(&id) {
            h.conn
                .close(close_code::MOVED, b"peer outside the jurisdiction");
        }
        warn!(link_to = %peer, "cascade link closed: the policy in force places the peer outside the conference's jurisdiction");
    }
}

/// A cascade link's control message.
fn link_message(id: ConnId, message: LinkMessage, core: &mut Core, metrics: &Metrics) {
    match message {
        LinkMessage::TrackPublished(info) => {
            if !core.link_publish(id, info) {
                metrics.control_errors.inc();
            }
        }
        LinkMessage::TrackUnpublished { track } => core.link_unpublish(id, track),
        LinkMessage::Subscribe { track } => {
            // A track that left meanwhile: nothing to send.
            let _ = core.link_subscribe(id, track);
        }
        LinkMessage::Unsubscribe { track } => core.link_unsubscribe(id, track),
        LinkMessage::KeyframeRequest { track, layer } => {
            core.link_keyframe_request(id, track, layer, Instant::now())
        }
        LinkMessage::Layers { track, active } => {
            let mask = active
                .iter()
                .filter(|l| **l < crate::wire::datagram::MAX_LAYERS)
                .fold(0u8, |m, l| m | 1 << l);
            core.link_layers(id, track, mask);
        }
        LinkMessage::E2ee {
            from,
            host,
            to,
            data,
        } => {
            if !core.link_e2ee(id, from, host, to, data) {
                metrics.control_errors.inc();
            }
        }
        LinkMessage::ParticipantJoined {
            participant,
            display_name,
        } => {
            if !core.link_participant_joined(id, participant, display_name) {
                metrics.control_errors.inc();
            }
        }
        LinkMessage::ParticipantLeft { participant } => {
            // Announced before this side knew of the link: nothing to undo.
            let _ = core.link_participant_left(id, participant);
        }
        LinkMessage::LinkHello { .. } | LinkMessage::LinkWelcome {} | LinkMessage::Error { .. } => {
            metrics.control_errors.inc()
        }
    }
}

fn flush_control(core: &mut Core, handles: &mut HashMap<ConnId, Handle>) {
    while let Some((id, request)) = core.poll_link_request() {
        let Some(Handle {
            control: Sink::Link(tx),
            ..
        }) = handles.get(&id)
        else {
            continue;
        };
        let message = match request {
            crate::forward::LinkRequest::Subscribe(track) => LinkMessage::Subscribe { track },
            crate::forward::LinkRequest::Unsubscribe(track) => LinkMessage::Unsubscribe { track },
            crate::forward::LinkRequest::KeyframeRequest(track, layer) => {
                LinkMessage::KeyframeRequest { track, layer }
            }
            crate::forward::LinkRequest::Layers(track, mask) => LinkMessage::Layers {
                track,
                active: (0..crate::wire::datagram::MAX_LAYERS)
                    .filter(|l| mask & (1 << l) != 0)
                    .collect(),
            },
            crate::forward::LinkRequest::E2ee {
                from,
                host,
                to,
                data,
            } => LinkMessage::E2ee {
                from,
                host,
                to,
                data,
            },
            crate::forward::LinkRequest::ParticipantJoined {
                participant,
                display_name,
            } => LinkMessage::ParticipantJoined {
                participant,
                display_name,
            },
            crate::forward::LinkRequest::ParticipantLeft { participant } => {
                LinkMessage::ParticipantLeft { participant }
            }
        };
        if tx.try_send(message).is_err() {
            core.handle_closed(id);
            if let Some(h) = handles.remove(&id) {
                h.conn.close(close_code::SLOW_CONTROL, b"link backlog full");
            }
        }
    }
    while let Some((id, message)) = core.poll_control() {
        let Some(h) = handles.get(&id) else { continue };
        if h.control.send(message).is_err() {
            // The client does not read its control stream: it only hurts
            // itself, and is disconnected rather than buffered without bound.
            core.handle_closed(id);
            if let Some(h) = handles.remove(&id) {
                h.conn
                    .close(close_code::SLOW_CONTROL, b"control messages not read");
            }
        }
    }
}
