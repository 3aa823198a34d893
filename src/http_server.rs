//! Serving the HTTP listeners (the router's API, a relay's `/metrics`) with
//! the limits a listener open to the internet needs.
//!
//! - A cap on open connections per listener and per source address (IPv6
//!   grouped by /64, as the failure limits and bans do). Connections from a
//!   trusted proxy are exempt from the per-address cap: every client comes
//!   through them. Above a cap a connection gets `503` with `Retry-After`
//!   at once and is closed; nothing of it is read.
//! - When the listener is full, an address holding its fair share of it
//!   (the cap divided by the addresses connected) is refused; anyone else
//!   gets the slot of the connection idle longest (no request in flight),
//!   so idle connections can never keep people out.
//! - Time limits: a new connection's first byte must arrive within
//!   `header_timeout`, and every request head within `header_timeout` of its
//!   first byte (however the bytes trickle); a request body within
//!   `body_timeout` of its head; a keep-alive connection with nothing in
//!   flight and no bytes moving is closed after `idle_timeout`.
//!
//! - TLS, when the listener has it: the handshake must complete within
//!   `header_timeout` of the first byte; a failed or stalled handshake is
//!   counted (`<prefix>_http_tls_failures_total`) and closed.
//!
//! - Long polls (a waiting participant's poll) are held in a budget of
//!   their own, a quarter of the listener's connections: past it a poll is
//!   answered at once (`Retry-After`), and when the listener is full a
//!   held poll is answered early to make room, as an idle connection is
//!   closed ([`LongPoll`]).
//!
//! - Over a cap, a listener serving TLS answers inside TLS (a client sees
//!   a `503` with `Retry-After`, not a protocol error), with at most
//!   [`REFUSALS_IN_TLS`] such handshakes at once; past that, or when the
//!   handshake does not finish within a second, the connection is closed.
//!
//! Each listener's caps come out of the process's file-descriptor limit
//! ([`FdBudget`]), so that one listener can never starve another, or a
//! relay's QUIC socket, of descriptors.

use std::collections::HashMap;
use std::future::Future;
use std::net::{IpAddr, SocketAddr};
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use prometheus::{IntCounterVec, IntGauge, Opts, Registry};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use tokio::time::Instant;
use tracing::{debug, warn};

use crate::policy::files::LimitsSection;

/// The limits of one listener.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Limits {
    pub max_connections: usize,
    pub max_per_address: usize,
    pub header_timeout: Duration,
    pub body_timeout: Duration,
    pub idle_timeout: Duration,
}

impl Limits {
    /// The limits `[limits]` asks for (before [`FdBudget::fit`]).
    pub fn from_policy(l: &LimitsSection) -> Self {
        Limits {
            max_connections: l.http_connections_per_listener as usize,
            max_per_address: l.http_connections_per_address as usize,
            header_timeout: Duration::from_secs(l.http_header_timeout_secs.into()),
            body_timeout: Duration::from_secs(l.http_body_timeout_secs.into()),
            idle_timeout: Duration::from_secs(l.http_idle_timeout_secs.into()),
        }
    }
}

/// Descriptors kept back from the HTTP listeners for everything else a
/// process opens: QUIC sockets, the store, outgoing reports, log files.
pub const FD_RESERVE: u64 = 512;

/// The process's file-descriptor limit and how it is shared among the
/// HTTP listeners it runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FdBudget {
    /// The soft limit in force (after [`FdBudget::raise`]).
    pub limit: u64,
}

impl FdBudget {
    /// Raises the soft limit to the hard limit where the system allows it
    /// and returns the limit in force.
    pub fn raise() -> FdBudget {
        let limit = match rlimit::increase_nofile_limit(u64::MAX) {
            Ok(n) => n,
            Err(e) => {
                warn!(error = %e, "cannot read or raise the file-descriptor limit; assuming 1024");
                1024
            }
        };
        FdBudget { limit }
    }

    /// `wanted` for each of `listeners` listeners of this process, lowered
    /// so that all of them together, plus [`FD_RESERVE`], fit within the
    /// limit. Says so in the log when it had to lower them.
    pub fn fit(&self, wanted: &Limits, listeners: usize) -> Limits {
        let listeners = listeners.max(1) as u64;
        let share = (self.limit.saturating_sub(FD_RESERVE) / listeners).max(16) as usize;
        let mut fitted = wanted.clone();
        if wanted.max_connections > share {
            warn!(
                wanted = wanted.max_connections,
                allowed = share,
                fd_limit = self.limit,
                listeners,
                "HTTP connections per listener lowered to fit the file-descriptor limit (raise `ulimit -n` for more)"
            );
            fitted.max_connections = share;
        }
        fitted.max_per_address = fitted.max_per_address.min(fitted.max_connections);
        fitted
    }
}

/// A listener's connection metrics: `<prefix>_http_connections_open`,
/// `<prefix>_http_connections_refused_total{reason}` (`listener_full`,
/// `address_full`), `<prefix>_http_connections_closed_total{reason}`
/// (`idle`, `head_timeout`, `evicted`),
/// `<prefix>_http_tls_failures_total{reason}` (`handshake`, `timeout`),
/// `<prefix>_http_long_polls_held` and
/// `<prefix>_http_long_polls_cut_total{reason}` (`budget_full`, `evicted`).
#[derive(Debug, Clone)]
pub struct ConnMetrics {
    pub open: IntGauge,
    pub refused: IntCounterVec,
    pub closed: IntCounterVec,
    pub tls_failures: IntCounterVec,
    pub long_polls: IntGauge,
    pub long_polls_cut: IntCounterVec,
}

impl ConnMetrics {
    /// Registers the metrics in `registry` (names get the registry's prefix).
    pub fn register(registry: &Registry) -> Self {
        let open = IntGauge::new(
            "http_connections_open",
            "HTTP connections open on this listener.",
        )
        .unwrap_or_else(|e| panic!("http_connections_open: {e}"));
        let refused = by_reason(
            "http_connections_refused_total",
            "HTTP connections refused at once, by the cap they hit.",
            &["listener_full", "address_full"],
        );
        let closed = by_reason(
            "http_connections_closed_total",
            "HTTP connections closed by this side: idle too long, a request head not complete in time, or evicted to make room.",
            &["idle", "head_timeout", "evicted"],
        );
        let tls_failures = by_reason(
            "http_tls_failures_total",
            "TLS handshakes that failed (a client that does not trust the certificate, or not speaking TLS) or did not complete in time.",
            &["handshake", "timeout"],
        );
        let long_polls = IntGauge::new(
            "http_long_polls_held",
            "Long polls (waiting participants' polls) held open on this listener.",
        )
        .unwrap_or_else(|e| panic!("http_long_polls_held: {e}"));
        let long_polls_cut = by_reason(
            "http_long_polls_cut_total",
            "Long polls answered before their time: the listener's long-poll budget was full, or the listener needed the connection.",
            &["budget_full", "evicted"],
        );
        let _ = registry.register(Box::new(open.clone()));
        let _ = registry.register(Box::new(refused.clone()));
        let _ = registry.register(Box::new(closed.clone()));
        ConnMetrics {
            open,
            refused,
            closed,
            tls_failures,
            long_polls,
            long_polls_cut,
        }
    }

    /// Also exports the long-poll metrics (listeners whose app holds long
    /// polls: the router's).
    pub fn with_long_polls(self, registry: &Registry) -> Self {
        let _ = registry.register(Box::new(self.long_polls.clone()));
        let _ = registry.register(Box::new(self.long_polls_cut.clone()));
        self
    }

    /// Also exports `<prefix>_http_tls_failures_total` (listeners serving TLS).
    pub fn with_tls(self, registry: &Registry) -> Self {
        let _ = registry.register(Box::new(self.tls_failures.clone()));
        self
    }
}

/// A counter with a `reason` label, every one of `reasons` present from the
/// start (at 0).
fn by_reason(name: &str, help: &str, reasons: &[&str]) -> IntCounterVec {
    let c = IntCounterVec::new(Opts::new(name, help), &["reason"])
        .unwrap_or_else(|e| panic!("{name}: {e}"));
    for reason in reasons {
        c.with_label_values(&[reason]);
    }
    c
}

/// Which peers are proxies whose clients share their address.
pub type TrustedProxy = Arc<dyn Fn(IpAddr) -> bool + Send + Sync>;

/// What [`serve`] needs besides the listener and the app.
#[derive(Clone)]
pub struct Options {
    pub limits: Limits,
    pub metrics: ConnMetrics,
    pub trusted_proxy: TrustedProxy,
    /// TLS for every connection; `None`: plain HTTP.
    pub tls: Option<tokio_rustls::TlsAcceptor>,
    /// For connections that carry live media: the unsent bytes each may
    /// keep in the kernel (`TCP_NOTSENT_LOWAT`: the socket takes no more
    /// while it holds this many not yet sent), so that what a slow reader
    /// cannot take waits where the relay's drop policy applies, while
    /// what is in flight still grows with the path (a small `SO_SNDBUF`
    /// would cap that too: a window per round trip). Such connections
    /// also use BBR congestion control where the kernel has it, which
    /// keeps the path's own queue short. `None`: the system's defaults.
    pub unsent_limit: Option<u32>,
}

impl std::fmt::Debug for Options {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Options")
            .field("limits", &self.limits)
            .field("tls", &self.tls.is_some())
            .finish_non_exhaustive()
    }
}

/// One open connection, as the listener sees it.
#[derive(Debug)]
struct Tracked {
    /// Milliseconds since the listener started, at the last byte moved.
    last_activity: AtomicU64,
    /// When the first byte of a request head not yet complete arrived
    /// (milliseconds since the listener started, plus one; 0: none).
    head_started: AtomicU64,
    in_flight: AtomicUsize,
    /// Requests in flight whose body is still being read.
    reading_body: AtomicUsize,
    /// Requests in flight held as long polls ([`LongPoll::hold`]).
    held: AtomicUsize,
    /// Upgraded connections (WebSocket) still open ([`Upgrade::keep`]).
    upgraded: AtomicUsize,
    upgrade_ended: tokio::sync::Notify,
    evict: tokio::sync::Notify,
    /// The listener wants this connection back: its long polls answer now.
    released: AtomicBool,
    release: tokio::sync::Notify,
}

impl Tracked {
    fn new(now_ms: u64) -> Self {
        Tracked {
            last_activity: AtomicU64::new(now_ms),
            head_started: AtomicU64::new(0),
            in_flight: AtomicUsize::new(0),
            reading_body: AtomicUsize::new(0),
            held: AtomicUsize::new(0),
            upgraded: AtomicUsize::new(0),
            upgrade_ended: tokio::sync::Notify::new(),
            evict: tokio::sync::Notify::new(),
            released: AtomicBool::new(false),
            release: tokio::sync::Notify::new(),
        }
    }
}

/// A request's connection, for a handler that upgrades it (WebSocket):
/// the upgraded connection keeps its place in the listener's caps.
#[derive(Debug, Clone)]
pub struct Upgrade(Arc<Tracked>);

impl Upgrade {
    /// Holds the connection's place until the returned guard drops: it
    /// counts as a request in flight (so it is never taken for an idle
    /// connection) and the listener's slot for it is given back only then.
    pub fn keep(&self) -> Upgraded {
        self.0.in_flight.fetch_add(1, Ordering::Relaxed);
        self.0.upgraded.fetch_add(1, Ordering::AcqRel);
        Upgraded(self.0.clone())
    }
}

/// An upgraded connection's hold on its listener slot ([`Upgrade::keep`]).
#[derive(Debug)]
pub struct Upgraded(Arc<Tracked>);

impl Drop for Upgraded {
    fn drop(&mut self) {
        self.0.in_flight.fetch_sub(1, Ordering::Relaxed);
        self.0.upgraded.fetch_sub(1, Ordering::AcqRel);
        self.0.upgrade_ended.notify_waiters();
    }
}

/// Long polls held on one listener, and its budget for them.
#[derive(Debug)]
struct PollBudget {
    held: AtomicUsize,
    max: usize,
}

/// A request's standing as a long poll, in its extensions on every request
/// [`serve`] passes to the app. A handler that holds its answer until
/// something happens takes [`LongPoll::hold`] first: within the listener's
/// budget it may hold, and must answer as soon as [`Held::released`]
/// resolves (the listener needs the connection); past the budget it
/// answers at once.
#[derive(Debug, Clone)]
pub struct LongPoll {
    tracked: Arc<Tracked>,
    budget: Arc<PollBudget>,
    metrics: ConnMetrics,
}

impl LongPoll {
    /// A place in the listener's long-poll budget, or `None` (counted) when
    /// it is full: the handler then answers at once, with `Retry-After`.
    pub fn hold(&self) -> Option<Held> {
        let taken = self
            .budget
            .held
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
                (n < self.budget.max).then_some(n + 1)
            });
        if taken.is_err() {
            self.metrics
                .long_polls_cut
                .with_label_values(&["budget_full"])
                .inc();
            return None;
        }
        self.tracked.held.fetch_add(1, Ordering::Relaxed);
        self.metrics.long_polls.inc();
        Some(Held(self.clone()))
    }
}

/// A long poll within its listener's budget, given back when dropped.
#[derive(Debug)]
pub struct Held(LongPoll);

impl Held {
    /// Resolves when the listener needs this connection: the handler
    /// answers now, with `connection: close`.
    pub async fn released(&self) {
        let t = &self.0.tracked;
        let notified = t.release.notified();
        tokio::pin!(notified);
        notified.as_mut().enable();
        if t.released.load(Ordering::Acquire) {
            return;
        }
        notified.await;
    }
}

impl Drop for Held {
    fn drop(&mut self) {
        self.0.tracked.held.fetch_sub(1, Ordering::Relaxed);
        self.0.budget.held.fetch_sub(1, Ordering::AcqRel);
        self.0.metrics.long_polls.dec();
    }
}

#[derive(Debug, Default)]
struct Table {
    next_id: u64,
    open: HashMap<u64, Arc<Tracked>>,
    per_address: HashMap<IpAddr, usize>,
}

/// The body of the answer to a connection over a cap.
const REFUSAL_BODY: &str =
    r#"{"error":{"code":"too_many_connections","message":"too many connections; try again soon"}}"#;

/// The answer to a connection over a cap.
fn refusal() -> &'static [u8] {
    static ANSWER: std::sync::OnceLock<Vec<u8>> = std::sync::OnceLock::new();
    ANSWER.get_or_init(|| {
        format!(
            "HTTP/1.1 503 Service Unavailable\r\ncontent-type: application/json\r\nretry-after: 1\r\nconnection: close\r\ncontent-length: {}\r\n\r\n{REFUSAL_BODY}",
            REFUSAL_BODY.len()
        )
        .into_bytes()
    })
}

/// Over-cap connections answered inside TLS at once, per listener; past
/// that they are closed unanswered. Each costs a handshake (a fraction of a
/// millisecond of CPU) and a descriptor for at most [`REFUSAL_HANDSHAKE`].
pub const REFUSALS_IN_TLS: usize = 64;

/// How long an over-cap TLS client has to finish its handshake.
const REFUSAL_HANDSHAKE: Duration = Duration::from_secs(1);

/// Answers an over-cap connection with [`refusal`] inside TLS, in a task
/// of its own, unless [`REFUSALS_IN_TLS`] are being answered already.
fn refuse_in_tls(
    stream: TcpStream,
    acceptor: tokio_rustls::TlsAcceptor,
    refusing: &Arc<AtomicUsize>,
) {
    if refusing.fetch_add(1, Ordering::AcqRel) >= REFUSALS_IN_TLS {
        refusing.fetch_sub(1, Ordering::AcqRel);
        return;
    }
    let refusing = refusing.clone();
    tokio::spawn(async move {
        let _ = tokio::time::timeout(REFUSAL_HANDSHAKE, async move {
            use tokio::io::{AsyncReadExt, AsyncWriteExt};
            let mut tls = acceptor.accept(stream).await?;
            // The request head is read off first (closing over unread
            // bytes would reset the connection before the answer is
            // read); its body, if any, is not waited for.
            let mut head = Vec::new();
            let mut buf = [0u8; 2048];
            while head.len() < 16 << 10 && !head.windows(4).any(|w| w == b"\r\n\r\n") {
                match tls.read(&mut buf).await? {
                    0 => break,
                    n => head.extend_from_slice(&buf[..n]),
                }
            }
            tls.write_all(refusal()).await?;
            tls.shutdown().await?;
            // What else the client sends (a body) is read off until it
            // closes, briefly, for the same reason.
            let _ = tokio::time::timeout(Duration::from_millis(250), async {
                while matches!(tls.read(&mut buf).await, Ok(n) if n > 0) {}
            })
            .await;
            Ok::<(), std::io::Error>(())
        })
        .await;
        refusing.fetch_sub(1, Ordering::AcqRel);
    });
}

/// Serves `app` on `listener` within `options` until `shutdown` resolves,
/// then lets requests in flight finish (up to 10 s).
pub async fn serve(
    listener: tokio::net::TcpListener,
    app: axum::Router,
    options: Options,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let started = Instant::now();
    let table = Arc::new(Mutex::new(Table::default()));
    let polls = Arc::new(PollBudget {
        held: AtomicUsize::new(0),
        max: (options.limits.max_connections / 4).max(1),
    });
    let refusing = Arc::new(AtomicUsize::new(0));
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let mut shutdown = std::pin::pin!(shutdown);
    let mut tasks = tokio::task::JoinSet::new();
    loop {
        let (stream, peer) = tokio::select! {
            _ = &mut shutdown => break,
            accepted = listener.accept() => match accepted {
                Ok(a) => a,
                Err(e) => {
                    // Out of descriptors or a connection reset while queued:
                    // keep serving those already in.
                    debug!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(5)).await;
                    continue;
                }
            },
        };
        while tasks.try_join_next().is_some() {}
        let group = address_group(peer.ip().to_canonical());
        let exempt = (options.trusted_proxy)(peer.ip().to_canonical());
        if let Some(limit) = options.unsent_limit {
            live_media(&stream, limit);
        }
        let admitted = admit(&table, &options, group, exempt, started);
        let tracked = match admitted {
            Ok(t) => t,
            Err(reason) => {
                options.metrics.refused.with_label_values(&[reason]).inc();
                // Plain HTTP: best effort, and never blocking: what the
                // client already sent is read off (closing over unread
                // bytes would reset the connection before the answer is
                // read), one write into an empty socket buffer never
                // blocks, then it is closed. TLS: the same inside a
                // handshake, in a task of its own.
                match &options.tls {
                    None => {
                        let mut sink = [0u8; 4096];
                        for _ in 0..4 {
                            if !matches!(stream.try_read(&mut sink), Ok(n) if n > 0) {
                                break;
                            }
                        }
                        let _ = stream.try_write(refusal());
                    }
                    Some(acceptor) => refuse_in_tls(stream, acceptor.clone(), &refusing),
                }
                continue;
            }
        };
        options.metrics.open.inc();
        let slot = Slot {
            table: table.clone(),
            id: tracked.0,
            group,
            open: options.metrics.open.clone(),
        };
        let (app, options, polls) = (app.clone(), options.clone(), polls.clone());
        let mut stop = stop_rx.clone();
        tasks.spawn(async move {
            // Given back however the task ends, a panic included.
            let _slot = slot;
            if first_byte(&stream, &options, &tracked.1, &mut stop).await {
                let _ = stream.set_nodelay(true);
                tracked
                    .1
                    .last_activity
                    .store(started.elapsed().as_millis() as u64, Ordering::Relaxed);
                // Boxed: the HTTP connection's state is allocated only now,
                // not carried by every idle connection's task.
                Box::pin(serve_connection(
                    stream,
                    peer,
                    app,
                    &options,
                    Conn {
                        tracked: tracked.1.clone(),
                        polls,
                        started,
                    },
                    &mut stop,
                ))
                .await;
            }
        });
    }
    let _ = stop_tx.send(true);
    let _ = tokio::time::timeout(Duration::from_secs(10), async {
        while tasks.join_next().await.is_some() {}
    })
    .await;
    Ok(())
}

/// Counts a new connection from `group`, evicting the longest-idle
/// connection when the listener is full; or says which cap refused it.
fn admit(
    table: &Mutex<Table>,
    options: &Options,
    group: IpAddr,
    exempt: bool,
    started: Instant,
) -> Result<(u64, Arc<Tracked>), &'static str> {
    let mut t = table.lock().unwrap_or_else(|e| e.into_inner());
    let from_address = t.per_address.get(&group).copied().unwrap_or(0);
    if !exempt && from_address >= options.limits.max_per_address {
        return Err("address_full");
    }
    if t.open.len() >= options.limits.max_connections {
        // Full. An address already holding its fair share of the listener
        // is refused outright (the cheapest answer, and the one a flood
        // from a few thousand addresses gets); anyone else takes a slot.
        let share = (options.limits.max_connections / t.per_address.len().max(1)).max(1);
        if !exempt && from_address >= share {
            return Err("listener_full");
        }
        // The connection whose bytes moved longest ago, with no request in
        // flight but one waiting for its body (a stalled upload is no
        // better than an idle connection): a client that just connected
        // and is sending its request has the newest activity and goes last.
        let idlest = t
            .open
            .values()
            .filter(|c| {
                c.in_flight.load(Ordering::Relaxed)
                    <= c.reading_body.load(Ordering::Relaxed) + c.held.load(Ordering::Relaxed)
            })
            .map(|c| (c.last_activity.load(Ordering::Relaxed), c))
            .min_by_key(|(at, _)| *at)
            .map(|(_, c)| c.clone());
        match idlest {
            // Its slot is taken over now; the evicted connection's own task
            // closes it and gives back nothing more.
            Some(c) => {
                if c.held.load(Ordering::Relaxed) > 0 {
                    // A held poll is answered (with `connection: close`)
                    // rather than cut: its client learns to come back.
                    c.released.store(true, Ordering::Release);
                    c.release.notify_waiters();
                    options
                        .metrics
                        .long_polls_cut
                        .with_label_values(&["evicted"])
                        .inc();
                } else {
                    c.evict.notify_one();
                }
                options.metrics.closed.with_label_values(&["evicted"]).inc();
                // Mark it busy so it is not picked twice.
                c.in_flight.fetch_add(1 << 20, Ordering::Relaxed);
            }
            None => return Err("listener_full"),
        }
    }
    let id = t.next_id;
    t.next_id += 1;
    let tracked = Arc::new(Tracked::new(started.elapsed().as_millis() as u64));
    t.open.insert(id, tracked.clone());
    *t.per_address.entry(group).or_default() += 1;
    Ok((id, tracked))
}

/// A connection's place in the listener's table, given back when dropped.
struct Slot {
    table: Arc<Mutex<Table>>,
    id: u64,
    group: IpAddr,
    open: IntGauge,
}

impl Drop for Slot {
    fn drop(&mut self) {
        let mut t = self.table.lock().unwrap_or_else(|e| e.into_inner());
        t.open.remove(&self.id);
        if let Some(n) = t.per_address.get_mut(&self.group) {
            *n = n.saturating_sub(1);
            if *n == 0 {
                t.per_address.remove(&self.group);
            }
        }
        self.open.dec();
    }
}

/// Waits for a connection's first byte (within the header timeout); until
/// then it costs a socket and a small task, not an HTTP connection's
/// buffers, so idle connections stay cheap. `false` if it never came, the
/// connection was evicted or the listener is stopping.
async fn first_byte(
    stream: &TcpStream,
    options: &Options,
    tracked: &Tracked,
    stop: &mut tokio::sync::watch::Receiver<bool>,
) -> bool {
    let mut one = [0u8; 1];
    tokio::select! {
        // A peek, not readiness alone: readiness may be reported before
        // any byte is there.
        first = tokio::time::timeout(options.limits.header_timeout, stream.peek(&mut one)) => {
            match first {
                Ok(Ok(n)) => n > 0,
                Ok(Err(_)) => false,
                Err(_) => {
                    options.metrics.closed.with_label_values(&["idle"]).inc();
                    false
                }
            }
        }
        _ = tracked.evict.notified() => false,
        _ = stop.changed() => false,
    }
}

/// What a connection's task shares with the listener.
struct Conn {
    tracked: Arc<Tracked>,
    polls: Arc<PollBudget>,
    started: Instant,
}

async fn serve_connection(
    stream: TcpStream,
    peer: SocketAddr,
    app: axum::Router,
    options: &Options,
    conn: Conn,
    stop: &mut tokio::sync::watch::Receiver<bool>,
) {
    let (tracked, started) = (conn.tracked.clone(), conn.started);
    let watched = Watched {
        inner: stream,
        tracked: tracked.clone(),
        started,
    };
    match &options.tls {
        None => serve_http(watched, peer, app, options, conn, stop).await,
        Some(acceptor) => {
            // The handshake's bytes start a "head" (Watched::received), so
            // it also counts against the head limit; it has its own
            // deadline here as well, as nothing else reads it.
            let handshake = tokio::select! {
                h = tokio::time::timeout(options.limits.header_timeout, acceptor.accept(watched)) => h,
                _ = tracked.evict.notified() => return,
                _ = stop.changed() => return,
            };
            let failed = match handshake {
                Ok(Ok(tls)) => {
                    // An ACME validation (TLS-ALPN-01) is over once its
                    // handshake is: nothing else is served on it.
                    if tls.get_ref().1.alpn_protocol() == Some(crate::acme::ACME_TLS_ALPN) {
                        return;
                    }
                    // The handshake was not a request head: the head and
                    // idle limits start over from here (a browser may hold
                    // a fresh connection ready before it sends anything).
                    tracked.head_started.store(0, Ordering::Relaxed);
                    tracked
                        .last_activity
                        .store(started.elapsed().as_millis() as u64, Ordering::Relaxed);
                    return serve_http(tls, peer, app, options, conn, stop).await;
                }
                Ok(Err(e)) => {
                    debug!(error = %e, "TLS handshake failed");
                    "handshake"
                }
                Err(_) => "timeout",
            };
            options
                .metrics
                .tls_failures
                .with_label_values(&[failed])
                .inc();
        }
    }
}

async fn serve_http<S>(
    stream: S,
    peer: SocketAddr,
    app: axum::Router,
    options: &Options,
    conn: Conn,
    stop: &mut tokio::sync::watch::Receiver<bool>,
) where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let Conn {
        tracked,
        polls,
        started,
    } = conn;
    let io = hyper_util::rt::TokioIo::new(stream);
    let body_timeout = options.limits.body_timeout;
    let in_flight = tracked.clone();
    let long_poll = LongPoll {
        tracked: tracked.clone(),
        budget: polls,
        metrics: options.metrics.clone(),
    };
    let service =
        hyper::service::service_fn(move |request: hyper::Request<hyper::body::Incoming>| {
            let mut app = app.clone();
            let guard = InFlight::new(in_flight.clone());
            let (mut parts, body) = request.into_parts();
            parts.extensions.insert(axum::extract::ConnectInfo(peer));
            parts.extensions.insert(long_poll.clone());
            parts.extensions.insert(Upgrade(in_flight.clone()));
            let body = Deadline::new(body, body_timeout, in_flight.clone());
            let unread = body.unread.clone();
            let request = axum::http::Request::from_parts(parts, axum::body::Body::new(body));
            async move {
                let mut response = tower_service::Service::call(&mut app, request).await;
                // Answered before its body was read (a refusal from the
                // headers alone, or a body nobody wanted): what of it is on
                // its way is read off, a little and briefly, so that the
                // connection can serve the next request. Closing over
                // unread bytes would reset it and cut the answer short at
                // the client; a body too large or too slow to read off ends
                // the connection with this answer, which says so.
                let rest = unread.and_then(|u| u.lock().unwrap_or_else(|e| e.into_inner()).take());
                if let Some(rest) = rest {
                    if !read_off(rest).await {
                        if let Ok(r) = &mut response {
                            r.headers_mut().insert(
                                axum::http::header::CONNECTION,
                                axum::http::HeaderValue::from_static("close"),
                            );
                        }
                    }
                }
                drop(guard);
                response
            }
        });
    let mut builder = hyper::server::conn::http1::Builder::new();
    builder
        .timer(hyper_util::rt::TokioTimer::new())
        .header_read_timeout(None)
        .max_buf_size(64 << 10);
    let connection = builder.serve_connection(io, service).with_upgrades();
    // Boxed, so that it can be dropped before an upgraded connection is
    // waited for: a failed upgrade's handle lives in it, and the handler
    // waiting on that handle only learns of the failure when it goes.
    let mut connection = Box::pin(connection);
    // The head and idle limits are kept here rather than by hyper, whose
    // head timer also runs between requests and would make the idle
    // limit the head limit.
    let idle = options.limits.idle_timeout.as_millis() as u64;
    let head = options.limits.header_timeout.as_millis() as u64;
    let check_every = (options
        .limits
        .idle_timeout
        .min(options.limits.header_timeout)
        / 4)
    .max(Duration::from_millis(50));
    let mut stopping = false;
    loop {
        tokio::select! {
            result = connection.as_mut() => {
                if let Err(e) = result {
                    debug!(error = %e, "HTTP connection ended with an error");
                }
                break;
            }
            _ = tracked.evict.notified() => return,
            changed = stop.changed(), if !stopping => {
                stopping = true;
                if changed.is_ok() {
                    connection.as_mut().graceful_shutdown();
                }
            }
            _ = tokio::time::sleep(check_every) => {
                let now = started.elapsed().as_millis() as u64;
                if tracked.in_flight.load(Ordering::Relaxed) == 0 {
                    let head_started = tracked.head_started.load(Ordering::Relaxed);
                    if head_started != 0 && now + 1 >= head_started + head {
                        // A head that never ends (bytes may still trickle).
                        options.metrics.closed.with_label_values(&["head_timeout"]).inc();
                        return;
                    }
                    let last = tracked.last_activity.load(Ordering::Relaxed);
                    if head_started == 0 && now.saturating_sub(last) >= idle {
                        options.metrics.closed.with_label_values(&["idle"]).inc();
                        return;
                    }
                }
            }
        }
    }
    drop(connection);
    // An upgraded connection lives on in its handler's task: its slot is
    // given back when that ends.
    while tracked.upgraded.load(Ordering::Acquire) > 0 {
        let ended = tracked.upgrade_ended.notified();
        if tracked.upgraded.load(Ordering::Acquire) == 0 {
            break;
        }
        ended.await;
    }
}

/// Counts a request in flight on its connection until dropped.
struct InFlight(Arc<Tracked>);

impl InFlight {
    fn new(t: Arc<Tracked>) -> Self {
        t.in_flight.fetch_add(1, Ordering::Relaxed);
        // The head is complete: the service is called with it.
        t.head_started.store(0, Ordering::Relaxed);
        InFlight(t)
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.in_flight.fetch_sub(1, Ordering::Relaxed);
    }
}

/// A TCP stream that notes when bytes last moved.
struct Watched {
    inner: TcpStream,
    tracked: Arc<Tracked>,
    started: Instant,
}

impl Watched {
    fn touch(&self) {
        self.tracked
            .last_activity
            .store(self.started.elapsed().as_millis() as u64, Ordering::Relaxed);
    }

    /// Bytes arrived: with no request in flight they begin (or continue) a
    /// request head.
    fn received(&self) {
        self.touch();
        let t = &self.tracked;
        if t.in_flight.load(Ordering::Relaxed) == 0 && t.head_started.load(Ordering::Relaxed) == 0 {
            t.head_started.store(
                self.started.elapsed().as_millis() as u64 + 1,
                Ordering::Relaxed,
            );
        }
    }
}

impl AsyncRead for Watched {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let before = buf.filled().len();
        let poll = Pin::new(&mut self.inner).poll_read(cx, buf);
        if buf.filled().len() > before {
            self.received();
        }
        poll
    }
}

impl AsyncWrite for Watched {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        data: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        let poll = Pin::new(&mut self.inner).poll_write(cx, data);
        if matches!(poll, Poll::Ready(Ok(n)) if n > 0) {
            self.touch();
        }
        poll
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

/// The body of a request ran past its deadline.
#[derive(Debug, thiserror::Error)]
#[error("the request body did not arrive within {0:?}")]
pub struct BodyTimedOut(Duration);

/// A request body that must be complete within a time of its head
/// (a trickle of bytes does not extend it).
struct Deadline {
    /// `None` once given to [`Deadline::unread`].
    inner: Option<hyper::body::Incoming>,
    sleep: Pin<Box<tokio::time::Sleep>>,
    after: Duration,
    /// Counted in `reading_body` until the body ends or is dropped.
    reading: Option<Arc<Tracked>>,
    /// Where the body goes when it is dropped before its end, for the
    /// service to read off; `None`: there was no body.
    unread: Option<Arc<Mutex<Option<hyper::body::Incoming>>>>,
}

/// How much of a body nobody read is read off after the answer, and for
/// how long, before the connection is closed instead.
const READ_OFF_BYTES: usize = 64 << 10;
const READ_OFF_TIME: Duration = Duration::from_millis(250);

/// Reads off what is left of a request body, within [`READ_OFF_BYTES`] and
/// [`READ_OFF_TIME`]; whether it ended.
async fn read_off(mut body: hyper::body::Incoming) -> bool {
    use http_body_util::BodyExt;
    tokio::time::timeout(READ_OFF_TIME, async {
        let mut read = 0;
        while let Some(frame) = body.frame().await {
            match frame {
                Ok(f) => read += f.data_ref().map_or(0, |d| d.len()),
                Err(_) => return false,
            }
            if read > READ_OFF_BYTES {
                return false;
            }
        }
        true
    })
    .await
    .unwrap_or(false)
}

impl Deadline {
    fn new(inner: hyper::body::Incoming, after: Duration, tracked: Arc<Tracked>) -> Self {
        use http_body::Body as _;
        let reading = (!inner.is_end_stream()).then(|| {
            tracked.reading_body.fetch_add(1, Ordering::Relaxed);
            tracked
        });
        let unread = reading.is_some().then(|| Arc::new(Mutex::new(None)));
        Deadline {
            inner: Some(inner),
            sleep: Box::pin(tokio::time::sleep(after)),
            after,
            reading,
            unread,
        }
    }

    fn done(&mut self) {
        if let Some(t) = self.reading.take() {
            t.reading_body.fetch_sub(1, Ordering::Relaxed);
        }
    }
}

impl Drop for Deadline {
    fn drop(&mut self) {
        if self.reading.is_some() {
            if let (Some(unread), Some(inner)) = (&self.unread, self.inner.take()) {
                *unread.lock().unwrap_or_else(|e| e.into_inner()) = Some(inner);
            }
        }
        self.done();
    }
}

impl http_body::Body for Deadline {
    type Data = Bytes;
    type Error = Box<dyn std::error::Error + Send + Sync>;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<http_body::Frame<Bytes>, Self::Error>>> {
        let this = &mut *self;
        let Some(inner) = this.inner.as_mut() else {
            return Poll::Ready(None);
        };
        match Pin::new(&mut *inner).poll_frame(cx) {
            Poll::Ready(frame) => {
                if frame.is_none() || inner.is_end_stream() {
                    this.done();
                }
                Poll::Ready(frame.map(|f| f.map_err(Into::into)))
            }
            Poll::Pending => match this.sleep.as_mut().poll(cx) {
                Poll::Ready(()) => Poll::Ready(Some(Err(Box::new(BodyTimedOut(this.after))))),
                Poll::Pending => Poll::Pending,
            },
        }
    }

    fn is_end_stream(&self) -> bool {
        self.inner.as_ref().is_none_or(|b| b.is_end_stream())
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.inner
            .as_ref()
            .map_or_else(|| http_body::SizeHint::with_exact(0), |b| b.size_hint())
    }
}

/// The group an address is counted under: IPv6 clients by their /64 (one
/// subscriber's usual allocation), IPv4 by address. The connection caps
/// here, and the router's failure limits and bans
/// (`router::ids::address_hash`), all group addresses by it.
pub fn address_group(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V4(_) => ip,
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => IpAddr::V4(v4),
            None => {
                let mut o = v6.octets();
                o[8..].fill(0);
                IpAddr::from(o)
            }
        },
    }
}

/// Sets a live-media connection's socket up (see [`Options::unsent_limit`]).
/// Each option is best effort: a kernel without BBR keeps its default
/// congestion control.
fn live_media(stream: &tokio::net::TcpStream, unsent_limit: u32) {
    let socket = socket2::SockRef::from(stream);
    #[cfg(target_os = "linux")]
    {
        static SAID: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);
        let _ = socket.set_tcp_notsent_lowat(unsent_limit);
        // An unprivileged process may choose only what
        // net.ipv4.tcp_allowed_congestion_control lists.
        if let Err(e) = socket.set_tcp_congestion(b"bbr")
            && !SAID.swap(true, std::sync::atomic::Ordering::Relaxed)
        {
            tracing::warn!(
                error = %e,
                "BBR congestion control is not available to this process (load tcp_bbr and list it in net.ipv4.tcp_allowed_congestion_control, or give CAP_NET_ADMIN): media connections keep the system's default"
            );
        }
    }
    #[cfg(not(target_os = "linux"))]
    let _ = socket.set_send_buffer_size(unsent_limit as usize);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn listener_caps_fit_the_descriptor_limit() {
        let wanted = Limits {
            max_connections: 4096,
            max_per_address: 64,
            header_timeout: Duration::from_secs(5),
            body_timeout: Duration::from_secs(10),
            idle_timeout: Duration::from_secs(30),
        };
        let budget = FdBudget { limit: 20_000 };
        let fitted = budget.fit(&wanted, 9);
        assert!(fitted.max_connections * 9 + FD_RESERVE as usize <= 20_000);
        assert_eq!(budget.fit(&wanted, 1), wanted);
        let tiny = FdBudget { limit: 600 }.fit(&wanted, 4);
        assert_eq!(tiny.max_connections, 22);
        assert_eq!(tiny.max_per_address, 22);
    }
}
