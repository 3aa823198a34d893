//! The far end of a participant's or link's connection, as a shard sees
//! it: somewhere to send datagrams without waiting, ask how much room is
//! left for them, and close with a code. QUIC (native, WebTransport and
//! cascade links) and WebSocket ([`super::websocket`]) peers look the same
//! to the shard, so the drop policy and moderation apply to both alike.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use bytes::Bytes;
use tokio::sync::mpsc;
use web_transport_quinn::Session;

/// A connection a shard holds. The QUIC session is held inline, as it was
/// before WebSocket peers existed: the forwarding loop reaches it for
/// every datagram, and boxing it would add a pointer chase there.
#[derive(Debug, Clone)]
#[allow(clippy::large_enum_variant)]
pub(super) enum Peer {
    /// A native connection or cascade link (a raw session), or a browser's
    /// WebTransport session, whose datagrams the crate prefixes.
    Quic(Session),
    WebSocket(Outbox),
}

/// Datagram bytes a QUIC connection may hold unsent (its send buffer,
/// set where the endpoints are configured).
pub(super) const QUIC_DATAGRAM_BUFFER: usize = 256 << 10;

/// Of those, what the shard hands a participant's connection at most:
/// enough to keep a fast path busy between two passes, little enough that
/// a slow path's backlog waits in the core's queue, where audio goes
/// first, the drop policy applies and the estimator sees it (a full 256
/// KiB buffer is five seconds at 400 kbit/s). Sizing it by the congestion
/// window instead (8–48 KiB) was tried: on the shaped test a path now and
/// then stalled for seconds after its window collapsed.
pub(super) const QUIC_BACKLOG: usize = 48 << 10;

impl Peer {
    /// Bytes of datagrams the shard may hand over now, the transport
    /// holding at most `backlog` unsent (QUIC; `usize::MAX`: its whole
    /// buffer, as for cascade links).
    pub(super) fn datagram_send_buffer_space(&self, backlog: usize) -> usize {
        match self {
            Peer::Quic(s) => s
                .datagram_send_buffer_space()
                .saturating_sub(QUIC_DATAGRAM_BUFFER.saturating_sub(backlog)),
            Peer::WebSocket(o) => o.space(),
        }
    }

    /// What the transport says of the path, for the core's estimator.
    pub(super) fn path_sample(&self) -> crate::forward::PathSample {
        match self {
            Peer::Quic(s) => {
                let connection: &quinn::Connection = s;
                let path = connection.stats().path;
                crate::forward::PathSample {
                    rtt: Some(path.rtt),
                    lost_packets: path.lost_packets,
                    sent_packets: path.sent_packets,
                    backlog_bytes: QUIC_DATAGRAM_BUFFER
                        .saturating_sub(s.datagram_send_buffer_space())
                        as u64,
                }
            }
            Peer::WebSocket(o) => crate::forward::PathSample {
                backlog_bytes: o.queued() as u64,
                ..Default::default()
            },
        }
    }

    /// Sends one datagram; never waits.
    pub(super) fn send_datagram(&self, datagram: Bytes) -> Result<(), ()> {
        match self {
            Peer::Quic(s) => s.send_datagram(datagram).map_err(|_| ()),
            Peer::WebSocket(o) => o.send(Outgoing::Datagram(datagram)),
        }
    }

    /// Closes with an application close code ([`crate::wire::close_code`]).
    pub(super) fn close(&self, code: u32, reason: &[u8]) {
        match self {
            Peer::Quic(s) => s.close(code, reason),
            Peer::WebSocket(o) => {
                let _ = o.send(Outgoing::Close(code, reason.to_vec()));
            }
        }
    }

    pub(super) fn remote_address(&self) -> SocketAddr {
        match self {
            Peer::Quic(s) => s.remote_address(),
            Peer::WebSocket(o) => o.remote,
        }
    }
}

/// What a WebSocket participant's connection task sends for the shard.
#[derive(Debug)]
pub(super) enum Outgoing {
    Datagram(Bytes),
    /// Close with this application code and reason; nothing after it.
    Close(u32, Vec<u8>),
}

/// A WebSocket participant's datagrams on their way to its connection
/// task. Unbounded as a channel but not in bytes: a shard sends only as
/// much as [`Outbox::space`] allows, which is what the connection has
/// not yet written into its (small) socket buffer, so a slow reader's
/// backlog stays in the core's queue, where the drop policy applies.
#[derive(Debug, Clone)]
pub(super) struct Outbox {
    tx: mpsc::UnboundedSender<Outgoing>,
    /// Datagram bytes handed over and not yet written to the socket.
    queued: Arc<AtomicUsize>,
    budget: usize,
    remote: SocketAddr,
}

impl Outbox {
    /// An outbox for a connection from `remote` holding at most `budget`
    /// bytes of datagrams, and its receiving end.
    pub(super) fn new(remote: SocketAddr, budget: usize) -> (Outbox, Inbox) {
        let (tx, rx) = mpsc::unbounded_channel();
        let queued = Arc::new(AtomicUsize::new(0));
        (
            Outbox {
                tx,
                queued: queued.clone(),
                budget,
                remote,
            },
            Inbox { rx, queued },
        )
    }

    fn queued(&self) -> usize {
        self.queued.load(Ordering::Acquire)
    }

    fn space(&self) -> usize {
        self.budget
            .saturating_sub(self.queued.load(Ordering::Acquire))
    }

    fn send(&self, out: Outgoing) -> Result<(), ()> {
        if let Outgoing::Datagram(d) = &out {
            self.queued.fetch_add(d.len(), Ordering::AcqRel);
        }
        self.tx.send(out).map_err(|_| ())
    }
}

/// The connection task's end of an [`Outbox`].
#[derive(Debug)]
pub(super) struct Inbox {
    rx: mpsc::UnboundedReceiver<Outgoing>,
    queued: Arc<AtomicUsize>,
}

impl Inbox {
    pub(super) async fn recv(&mut self) -> Option<Outgoing> {
        self.rx.recv().await
    }

    /// What is waiting now, without waiting; a datagram's room stays
    /// taken until [`Inbox::written`] says it is in the socket.
    pub(super) fn try_recv(&mut self) -> Option<Outgoing> {
        self.rx.try_recv().ok()
    }

    /// Datagrams of `len` bytes in all are in the socket: their room is
    /// free.
    pub(super) fn written(&self, len: usize) {
        self.queued.fetch_sub(len, Ordering::AcqRel);
    }
}
