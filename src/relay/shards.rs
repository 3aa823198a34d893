//! Which shard serves a conference, and what shards are told.
//!
//! A relay runs W shards (`relay --workers N`, default one per core), each
//! a task owning its own [`crate::forward::Core`] ([`super::shard`]). A
//! conference lives in exactly one shard, chosen by a stable hash of its
//! id ([`shard_of`]): its participants, its cascade links, its tickets'
//! nonces and its revocations all meet there, so shards never talk to each
//! other. Connection tasks send their conference's events straight to its
//! shard; only relay-wide events (reports, reload, drain, shutdown) go to
//! every shard.

use std::sync::Arc;
use std::time::Instant;

use bytes::Bytes;
use tokio::sync::{mpsc, oneshot};

use super::Recheck;
use crate::forward::ConnId;
use crate::ticket::{TicketError, Verifier};
use crate::wire::channel::Enforcement;
use crate::wire::control::{ClientMessage, ServerMessage};
use crate::wire::link::LinkMessage;

/// How a participant reached the relay (the `transport` metric label).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Transport {
    /// The native protocol (ALPN `residency-relay/1`).
    Native,
    /// WebTransport over HTTP/3 (ALPN `h3`), from browsers.
    WebTransport,
    /// WebSocket over TLS over TCP ([`super::websocket`]), from browsers
    /// and networks without UDP.
    WebSocket,
}

impl Transport {
    pub const ALL: [Transport; 3] = [
        Transport::Native,
        Transport::WebTransport,
        Transport::WebSocket,
    ];

    pub fn label(self) -> &'static str {
        match self {
            Transport::Native => "native",
            Transport::WebTransport => "webtransport",
            Transport::WebSocket => "websocket",
        }
    }
}

/// Events waiting for a shard before senders wait.
pub(super) const SHARD_QUEUE: usize = 8192;

/// The shard of `conference` among `shards`: FNV-1a of the id, so every
/// connection of a conference, on any relay with the same number of
/// shards, finds the same one. Conference ids carry 128 random bits, so
/// conferences spread evenly.
pub fn shard_of(conference: &str, shards: usize) -> usize {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in conference.bytes() {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    (h % shards.max(1) as u64) as usize
}

/// The way to every shard of a relay.
#[derive(Debug, Clone)]
pub(super) struct Shards {
    senders: Arc<[mpsc::Sender<Event>]>,
}

impl Shards {
    pub(super) fn new(senders: Vec<mpsc::Sender<Event>>) -> Self {
        Shards {
            senders: senders.into(),
        }
    }

    /// The shard serving `conference`.
    pub(super) fn of(&self, conference: &str) -> &mpsc::Sender<Event> {
        &self.senders[shard_of(conference, self.senders.len())]
    }

    /// Sends `event()` to every shard; `Err` once the relay is stopping.
    pub(super) async fn broadcast(&self, event: impl Fn() -> Event) -> Result<(), ()> {
        for s in self.senders.iter() {
            s.send(event()).await.map_err(|_| ())?;
        }
        Ok(())
    }

    /// Every shard's snapshot for a router serving `serves`, merged;
    /// `None` once the relay is stopping.
    pub(super) async fn snapshot(&self, serves: &[String]) -> Option<Snapshot> {
        let mut replies = Vec::with_capacity(self.senders.len());
        for s in self.senders.iter() {
            let (tx, rx) = oneshot::channel();
            s.send(Event::Snapshot(serves.to_vec(), tx)).await.ok()?;
            replies.push(rx);
        }
        let mut all = Snapshot::default();
        for rx in replies {
            let part = rx.await.ok()?;
            all.participants += part.participants;
            all.bytes_total += part.bytes_total;
            all.conferences.extend(part.conferences);
            all.links.extend(part.links);
            all.events.extend(part.events);
        }
        Some(all)
    }
}

/// What a shard hands the reporters (merged over all shards by
/// [`Shards::snapshot`]).
#[derive(Debug, Clone, Default)]
pub(super) struct Snapshot {
    pub(super) participants: u32,
    /// Media bytes received plus queued for subscribers since start.
    pub(super) bytes_total: u64,
    pub(super) conferences: Vec<crate::forward::ConferenceStats>,
    pub(super) links: Vec<crate::forward::LinkStats>,
    /// Enforcement events since the last snapshot.
    pub(super) events: Vec<Enforcement>,
}

pub(super) enum Event {
    /// A connection whose ticket passed [`Verifier::check`]; the core does
    /// the replay check and admits it.
    Hello {
        /// Boxed: a session is large, and the queue holds many events.
        conn: Box<super::peer::Peer>,
        transport: Transport,
        claims: crate::ticket::Claims,
        recheck: Recheck,
        reply: oneshot::Sender<Result<(ConnId, mpsc::Receiver<ServerMessage>), TicketError>>,
    },
    Control(ConnId, ClientMessage),
    BadControl(ConnId),
    /// A control message dropped for going over the participant's rate.
    RateLimited(ConnId),
    /// A media datagram and when it arrived.
    Datagram(ConnId, Bytes, Instant),
    Closed(ConnId),
    Shutdown,
    /// For a report to a router serving these jurisdictions.
    Snapshot(Vec<String>, oneshot::Sender<Snapshot>),
    Command(crate::wire::channel::Action),
    /// A cascade link passed its handshake (`claims` on the accepting side,
    /// for the replay check); the core admits it unless the same link is
    /// already up.
    LinkUp {
        conn: quinn::Connection,
        conference: String,
        peer: String,
        claims: Option<crate::ticket::CascadeClaims>,
        /// On the accepting side.
        recheck: Option<Recheck>,
        reply: oneshot::Sender<Result<(ConnId, mpsc::Receiver<LinkMessage>), TicketError>>,
    },
    Link(ConnId, LinkMessage),
    Enforcement(Enforcement),
    /// A reloaded policy: the trust to adopt, and the jurisdictions whose
    /// logs may show full addresses.
    Reload {
        verifier: Verifier,
        log_full_addresses: Vec<String>,
        generation: u64,
    },
}
