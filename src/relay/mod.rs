//! The relay process: the tokio/quinn shell around the forwarding core.
//!
//! One task owns the [`Core`] and the ticket [`Verifier`]; each connection
//! has a task that does the handshake, reads the control stream and
//! datagrams, and writes control messages. They meet only through channels:
//! the core task never awaits a peer. Datagrams leave through
//! `Connection::send_datagram`, which does not block; a subscriber whose QUIC
//! send buffer is full keeps its datagrams in the core's bounded queue,
//! where the drop policy applies, and is retried on the next tick.
//!
//! The shell moves bytes; it never parses payloads.

mod link;
pub mod metrics;
pub mod rate;
pub mod tls;

use std::collections::HashMap;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use tokio::sync::{mpsc, oneshot};
use tracing::{debug, info, warn};

use crate::forward::{Admission, ConnId, Core, CoreConfig, IngressDrop, Permissions};
use crate::policy::{ReloadError, Reloaded};
use crate::ticket::{TicketError, Verifier};
use crate::wire::ErrorCode;
use crate::wire::channel::Enforcement;
use crate::wire::control::{
    self, ClientMessage, ControlError, Decoder, ParticipantId, ServerMessage,
};
use crate::wire::link::LinkMessage;
pub use metrics::Metrics;
pub use tls::Identity;

/// QUIC application close codes the relay uses.
pub mod close_code {
    /// Normal close (leave, or after `going_away`).
    pub const NORMAL: u32 = 0;
    /// The ticket was refused.
    pub const TICKET_REFUSED: u32 = 1;
    /// The control stream broke the protocol.
    pub const PROTOCOL: u32 = 2;
    /// The client did not read its control messages.
    pub const SLOW_CONTROL: u32 = 3;
    /// The relay is shutting down.
    pub const GOING_AWAY: u32 = 4;
    /// A host removed the participant.
    pub const KICKED: u32 = 5;
    /// A host ended the conference.
    pub const CONFERENCE_ENDED: u32 = 6;
    /// A cascade link was refused.
    pub const CASCADE_REFUSED: u32 = 7;
    /// The policy in force places the relay outside the conference's
    /// jurisdiction: reconnect through the router (after `going_away`).
    pub const MOVED: u32 = 8;
    /// The source address has its limit of connections.
    pub const TOO_MANY_CONNECTIONS: u32 = 9;
    /// The participant kept sending control messages over its rate.
    pub const RATE_LIMITED: u32 = 10;
}

/// `going_away` code: the policy in force no longer places this relay
/// inside the conference's jurisdiction; reconnect through the router,
/// which sends you to a relay inside it.
pub const GOING_AWAY_MOVED: u16 = 3;

/// `going_away` code: the operator is draining the relay; reconnect through
/// the router, which sends you to another relay of the jurisdiction.
pub const GOING_AWAY_DRAIN: u16 = 2;

/// `going_away` code: the relay is shutting down.
pub const GOING_AWAY_SHUTDOWN: u16 = 1;

/// How a relay runs.
#[derive(Debug)]
pub struct Settings {
    pub relay_id: String,
    pub identity: Identity,
    pub verifier: Verifier,
    pub core: CoreConfig,
    /// How long connected clients get to leave after `going_away`.
    pub shutdown_grace: Duration,
    /// How long a new connection may take to send `hello`.
    pub hello_timeout: Duration,
    /// Routers to report to and take moderation commands from; empty for a
    /// relay that runs alone (tickets minted by hand).
    pub routers: Vec<RouterLink>,
    /// The credential presented to routers.
    pub credential: Option<String>,
    /// Jurisdictions whose logs may show full client addresses.
    pub log_full_addresses: Vec<String>,
    /// Connections accepted from one address at once.
    pub max_connections_per_address: u32,
    /// Handshakes of unproven addresses in progress above which newcomers
    /// must prove their address with a Retry first (0: always).
    pub unvalidated_handshakes: usize,
    /// Per-participant control-message budgets.
    pub control_limits: rate::ControlLimits,
    /// Caps and timeouts of the HTTP listener (fitted to the process's
    /// descriptor limit by the caller).
    pub http: crate::http_server::Limits,
    /// How to reload the policy (`POST /v1/admin/reload` with the relay's
    /// credential, SIGHUP); `None` refuses reloads.
    pub reload: Option<Reloading>,
}

/// Where a relay's policy comes from, and the policy it started with.
#[derive(Debug, Clone)]
pub struct Reloading {
    pub source: crate::policy::Source,
    pub policy: Arc<crate::policy::Policy>,
    /// Whether SIGHUP reloads.
    pub on_sighup: bool,
}

/// What changes of the relay's settings when its policy is reloaded.
#[derive(Debug)]
struct Reconfigured {
    verifier: Verifier,
    /// Routers to report to; `None` keeps those of now.
    routers: Option<Vec<RouterLink>>,
    log_full_addresses: Vec<String>,
    max_connections_per_address: u32,
    /// The relay is no longer in the inventory.
    removed: bool,
}

/// The trust of the policy in force, read by each new connection, with its
/// generation (one more per reload).
type Trust = Arc<std::sync::RwLock<(u64, Arc<Verifier>)>>;

fn trusted(trust: &Trust) -> (u64, Arc<Verifier>) {
    trust.read().unwrap_or_else(|e| e.into_inner()).clone()
}

/// What the core needs to check a handshake again when the trust changed
/// after its connection task checked it.
#[derive(Debug)]
pub(crate) struct Recheck {
    pub ticket: String,
    /// The dialer's address (cascade links).
    pub ip: std::net::IpAddr,
    /// The trust generation it was checked under.
    pub generation: u64,
}

/// A router this relay reports to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RouterLink {
    pub url: String,
    /// Jurisdiction ids the router serves that the relay is in: only their
    /// conferences appear in reports to it.
    pub jurisdictions: Vec<String>,
    /// Every jurisdiction the router serves: enforcement events naming
    /// their conferences go to it (a relay outside a jurisdiction still
    /// reports the tickets for it that it refused).
    pub serves: Vec<String>,
}

impl RouterLink {
    /// The routers serving at least one of `relay`'s jurisdictions.
    pub fn for_relay(
        policy: &crate::policy::Policy,
        relay: crate::policy::RelayIdx,
    ) -> Vec<RouterLink> {
        let mine: Vec<&str> = policy
            .jurisdictions_of(relay)
            .map(|j| j.id.as_str())
            .collect();
        policy
            .routers()
            .iter()
            .filter_map(|r| {
                let shared: Vec<String> = r
                    .jurisdictions
                    .iter()
                    .map(|j| policy.jurisdiction(*j).id.clone())
                    .filter(|j| mine.contains(&j.as_str()))
                    .collect();
                (!shared.is_empty()).then(|| RouterLink {
                    url: r.relay_url.clone(),
                    jurisdictions: shared,
                    serves: r
                        .jurisdictions
                        .iter()
                        .map(|j| policy.jurisdiction(*j).id.clone())
                        .collect(),
                })
            })
            .collect()
    }
}

/// What the core task hands the reporters.
#[derive(Debug, Clone, Default)]
struct Snapshot {
    participants: u32,
    /// Media bytes received plus queued for subscribers since start.
    bytes_total: u64,
    conferences: Vec<crate::forward::ConferenceStats>,
    links: Vec<crate::forward::LinkStats>,
    /// Enforcement events since the last snapshot.
    events: Vec<Enforcement>,
}

/// Errors that stop the relay from starting.
#[derive(Debug, thiserror::Error)]
pub enum RelayError {
    #[error("TLS setup failed: {0}")]
    Tls(String),
    #[error("cannot serve QUIC: {0}")]
    Io(#[from] std::io::Error),
}

enum Event {
    /// A connection whose ticket passed [`Verifier::check`]; the core does
    /// the replay check and admits it.
    Hello {
        conn: quinn::Connection,
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
    conn: quinn::Connection,
    control: Sink,
}

/// Enforcement events kept for the next report.
const MAX_PENDING_EVENTS: usize = 1000;

/// Control messages waiting for a slow reader before it is disconnected.
const CONTROL_BACKLOG: usize = 1024;

/// Serves QUIC on `socket` and HTTP (`/metrics`, `/healthz`, `/readyz`,
/// `/cert`) on `http` until `shutdown` resolves, then tells clients it is
/// going away and closes within `shutdown_grace`.
pub async fn run(
    socket: std::net::UdpSocket,
    http: tokio::net::TcpListener,
    settings: Settings,
    shutdown: impl Future<Output = ()>,
) -> Result<(), RelayError> {
    let fingerprint = settings.identity.fingerprint();
    let crypto = tls::server_config(settings.identity).map_err(RelayError::Tls)?;
    let mut server = quinn::ServerConfig::with_crypto(Arc::new(crypto));
    let mut transport = quinn::TransportConfig::default();
    transport
        .max_concurrent_bidi_streams(1u32.into())
        .max_concurrent_uni_streams(0u32.into())
        // Enough for bursts; beyond it datagrams wait in the core's queue,
        // where the drop policy and keyframe requests apply.
        .datagram_receive_buffer_size(Some(1 << 20))
        .datagram_send_buffer_size(256 << 10)
        .keep_alive_interval(Some(Duration::from_secs(5)));
    server.transport_config(Arc::new(transport));
    enlarge_socket_buffers(&socket);
    let endpoint = quinn::Endpoint::new(
        quinn::EndpointConfig::default(),
        Some(server),
        socket,
        Arc::new(quinn::TokioRuntime),
    )?;
    let metrics =
        Metrics::with_jurisdictions(&settings.relay_id, &settings.verifier.jurisdictions());
    let ready = Arc::new(AtomicBool::new(true));
    info!(relay = %settings.relay_id, addr = %endpoint.local_addr()?, cert_sha256 = %fingerprint, "relay serving QUIC");

    let (events_tx, events_rx) = mpsc::channel::<Event>(8192);
    // Connection tasks check signatures (stateless) with the trust in force
    // when they start; the core task keeps the nonces.
    let trust: Trust = Arc::new(std::sync::RwLock::new((
        0,
        Arc::new(settings.verifier.clone()),
    )));
    let max_per_address = Arc::new(AtomicU32::new(settings.max_connections_per_address));
    let reporting = Reporting {
        relay_id: settings.relay_id.clone(),
        credential: settings.credential.clone().unwrap_or_default(),
        cert_sha256: fingerprint.clone(),
        events: events_tx.clone(),
        ready: ready.clone(),
        endpoint: endpoint.clone(),
        trust: trust.clone(),
        track_base: settings.core.track_id_base,
    };
    let reporters = Arc::new(std::sync::Mutex::new(Reporters {
        running: settings
            .routers
            .iter()
            .map(|link| reporting.spawn(link))
            .collect(),
    }));
    let (reload_tx, reload_rx) = mpsc::channel(4);
    let reloader = settings.reload.clone().map(|reloading| {
        tokio::spawn(reload_loop(
            Reloader {
                reloading,
                relay_id: settings.relay_id.clone(),
                credential: settings.credential.clone(),
                events: events_tx.clone(),
                trust: trust.clone(),
                max_per_address: max_per_address.clone(),
                reporters: reporters.clone(),
                reporting: reporting.clone(),
                metrics: metrics.clone(),
                not_before: settings.verifier.not_before(),
                generation: 0,
                removed: false,
            },
            reload_rx,
        ))
    });
    let hangups = settings
        .reload
        .as_ref()
        .is_some_and(|r| r.on_sighup)
        // Listening before serving: a SIGHUP from then on reloads (and
        // never falls to the default action, which ends the process).
        .then(|| {
            tokio::spawn(reload_on_hangup(
                reload_tx.clone(),
                crate::policy::Hangups::new(),
            ))
        });
    let http_task = tokio::spawn(serve_http(
        http,
        Http {
            metrics: metrics.clone(),
            ready: ready.clone(),
            fingerprint: fingerprint.clone(),
            credential: settings.credential.clone(),
            reload: reload_tx,
            limits: settings.http.clone(),
        },
    ));
    let core_task = tokio::spawn(core_loop(
        settings.log_full_addresses.clone(),
        Core::new(settings.core),
        settings.verifier,
        events_rx,
        metrics.clone(),
    ));

    // Connections per source address, counted once the address is known to
    // be real: established connections, and handshakes of addresses that
    // proved themselves with a Retry token. Handshakes of unproven
    // addresses count only towards `handshaking`; above
    // `unvalidated_handshakes` of them, newcomers must prove their address
    // first, so packets with a forged source cost one Retry packet and no
    // state, and can never lock a real address (a peer relay's included)
    // out.
    let per_address: Arc<std::sync::Mutex<HashMap<std::net::IpAddr, u32>>> = Arc::default();
    let handshaking = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let unvalidated_limit = settings.unvalidated_handshakes;
    let control_limits = settings.control_limits;
    let accept = async {
        while let Some(incoming) = endpoint.accept().await {
            let ip = incoming.remote_address().ip().to_canonical();
            let validated = incoming.remote_address_validated();
            if !validated && handshaking.load(Ordering::Relaxed) >= unvalidated_limit {
                metrics.address_validations.inc();
                if incoming.retry().is_err() {
                    // Only an already validated incoming cannot be retried.
                    debug!("retry refused by quinn");
                }
                continue;
            }
            let full = {
                let counts = per_address.lock().unwrap_or_else(|e| e.into_inner());
                counts.get(&ip).copied().unwrap_or(0) >= max_per_address.load(Ordering::Relaxed)
            };
            if full {
                metrics
                    .connection_refusals
                    .with_label_values(&["per_address"])
                    .inc();
                incoming.refuse();
                continue;
            }
            // A proven address is counted now, checked and counted at once.
            let counted = if validated {
                let Some(slot) = AddressSlot::try_take(
                    &per_address,
                    ip,
                    max_per_address.load(Ordering::Relaxed),
                ) else {
                    metrics
                        .connection_refusals
                        .with_label_values(&["per_address"])
                        .inc();
                    incoming.refuse();
                    continue;
                };
                Some(slot)
            } else {
                None
            };
            handshaking.fetch_add(1, Ordering::Relaxed);
            let events = events_tx.clone();
            let metrics = metrics.clone();
            let hello_timeout = settings.hello_timeout;
            let trust = trust.clone();
            let per_address = per_address.clone();
            let handshaking = handshaking.clone();
            let max_per_address = max_per_address.clone();
            tokio::spawn(async move {
                let handshake = incoming.await;
                handshaking.fetch_sub(1, Ordering::Relaxed);
                let Ok(conn) = handshake else {
                    debug!("handshake failed");
                    return;
                };
                // The handshake completed: the address is real now.
                let slot = match counted {
                    Some(slot) => slot,
                    None => {
                        let max = max_per_address.load(Ordering::Relaxed);
                        let Some(slot) = AddressSlot::try_take(&per_address, ip, max) else {
                            metrics
                                .connection_refusals
                                .with_label_values(&["per_address"])
                                .inc();
                            conn.close(
                                close_code::TOO_MANY_CONNECTIONS.into(),
                                b"too many connections from this address",
                            );
                            return;
                        };
                        slot
                    }
                };
                if let Err(reason) =
                    serve_connection(conn, events, metrics, trust, hello_timeout, control_limits)
                        .await
                {
                    debug!(reason, "connection ended");
                }
                drop(slot);
            });
        }
    };
    tokio::select! {
        _ = accept => {}
        _ = shutdown => {}
    }

    info!(relay = %settings.relay_id, "shutting down: refusing new connections, telling clients");
    ready.store(false, Ordering::Relaxed);
    for task in [reloader, hangups].into_iter().flatten() {
        task.abort();
    }
    // Tell the routers at once, so no new joins are sent here.
    let links: Vec<RouterLink> = {
        let mut r = reporters.lock().unwrap_or_else(|e| e.into_inner());
        r.running
            .drain(..)
            .map(|reporter| {
                reporter.task.abort();
                reporter.link.borrow().clone()
            })
            .collect()
    };
    let finals: Vec<_> = links
        .into_iter()
        .map(|link| {
            final_report(
                link,
                settings.relay_id.clone(),
                settings.credential.clone().unwrap_or_default(),
                fingerprint.clone(),
            )
        })
        .collect();
    futures_join_all(finals).await;
    endpoint.set_server_config(None);
    let _ = events_tx.send(Event::Shutdown).await;
    let deadline = tokio::time::Instant::now() + settings.shutdown_grace;
    while endpoint.open_connections() > 0 && tokio::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    endpoint.close(close_code::GOING_AWAY.into(), b"relay shutting down");
    let _ = tokio::time::timeout(Duration::from_secs(1), endpoint.wait_idle()).await;
    drop(events_tx);
    let _ = tokio::time::timeout(Duration::from_secs(1), core_task).await;
    http_task.abort();
    Ok(())
}

/// The report tasks running, one per router URL, and how to tell each what
/// its router serves after a reload.
#[derive(Debug)]
struct Reporters {
    running: Vec<Reporter>,
}

#[derive(Debug)]
struct Reporter {
    link: tokio::sync::watch::Sender<RouterLink>,
    task: tokio::task::JoinHandle<()>,
}

impl Reporter {
    fn url(&self) -> String {
        self.link.borrow().url.clone()
    }
}

/// What every report task needs besides its router.
#[derive(Debug, Clone)]
struct Reporting {
    relay_id: String,
    credential: String,
    cert_sha256: String,
    events: mpsc::Sender<Event>,
    ready: Arc<AtomicBool>,
    endpoint: quinn::Endpoint,
    trust: Trust,
    /// This run's track id prefix, fixed at start.
    track_base: u32,
}

impl Reporting {
    fn spawn(&self, link: &RouterLink) -> Reporter {
        let (tx, rx) = tokio::sync::watch::channel(link.clone());
        Reporter {
            link: tx,
            task: tokio::spawn(report_loop(rx, self.clone())),
        }
    }
}

/// What a reload replaces, and where.
struct Reloader {
    reloading: Reloading,
    relay_id: String,
    credential: Option<String>,
    events: mpsc::Sender<Event>,
    trust: Trust,
    max_per_address: Arc<AtomicU32>,
    reporters: Arc<std::sync::Mutex<Reporters>>,
    reporting: Reporting,
    metrics: Metrics,
    /// The start-time floor of tickets ([`Verifier::issued_after`]).
    not_before: u64,
    /// Of the trust in force.
    generation: u64,
    /// A reload found the relay gone from the inventory.
    removed: bool,
}

/// A reload request and where its outcome goes.
type ReloadRequest = oneshot::Sender<Result<Reloaded, ReloadError>>;

/// Applies reload requests one at a time.
async fn reload_loop(mut r: Reloader, mut requests: mpsc::Receiver<ReloadRequest>) {
    while let Some(reply) = requests.recv().await {
        let outcome = r.reload().await;
        match &outcome {
            Ok(done) => {
                r.metrics.reloads.with_label_values(&["applied"]).inc();
                info!(relay = %r.relay_id, changes = done.changes.len(), restart_needed = done.restart_needed.len(), "policy reloaded");
                for change in &done.changes {
                    info!(relay = %r.relay_id, change = %change, "policy change");
                }
                for setting in &done.restart_needed {
                    warn!(relay = %r.relay_id, setting = %setting, "changed setting takes effect at restart");
                }
            }
            Err(e) => {
                r.metrics.reloads.with_label_values(&["rejected"]).inc();
                warn!(relay = %r.relay_id, error = %e, "policy reload refused; the policy in force stays");
            }
        }
        let _ = reply.send(outcome);
    }
}

/// Asks for a reload on every SIGHUP (outcome in the log and metrics).
async fn reload_on_hangup(
    requests: mpsc::Sender<ReloadRequest>,
    mut hangups: crate::policy::Hangups,
) {
    while hangups.next().await {
        info!("SIGHUP: reloading the policy");
        let (tx, rx) = oneshot::channel();
        if requests.send(tx).await.is_err() {
            return;
        }
        let _ = rx.await;
    }
}

impl Reloader {
    async fn reload(&mut self) -> Result<Reloaded, ReloadError> {
        let source = self.reloading.source.clone();
        let policy = tokio::task::spawn_blocking(move || source.load())
            .await
            .map_err(|e| ReloadError::Refused(format!("reload failed: {e}")))?
            .map_err(ReloadError::Invalid)?;
        let old = self.reloading.policy.clone();
        let next = reconfigure(&policy, &self.relay_id, self.credential.as_deref())?;
        if self.removed && !next.removed {
            return Err(ReloadError::Refused(format!(
                "relay '{}' was removed from the inventory by an earlier reload and has given up its conferences; restart it to take it back",
                self.relay_id
            )));
        }
        let mut restart_needed = restart_needed(&old, &policy, &self.relay_id);
        restart_needed.extend(crate::logging::reload(old.logging(), policy.logging()));
        let changes = crate::policy::diff(&old, &policy);
        // Tickets issued before the relay started stay refused (the nonces
        // seen before it started are gone).
        let verifier = next.verifier.issued_after(self.not_before);
        self.generation += 1;
        // The core first: it adopts the trust, moves conferences whose
        // jurisdiction the relay left and closes links to peers outside
        // before anything else changes.
        self.events
            .send(Event::Reload {
                verifier: verifier.clone(),
                log_full_addresses: next.log_full_addresses,
                generation: self.generation,
            })
            .await
            .map_err(|_| ReloadError::Refused("the relay is stopping".into()))?;
        *self.trust.write().unwrap_or_else(|e| e.into_inner()) =
            (self.generation, Arc::new(verifier));
        self.max_per_address
            .store(next.max_connections_per_address, Ordering::Relaxed);
        if next.removed {
            self.removed = true;
            // Out of the inventory: it takes nothing any more; its routers
            // hear it is draining.
            self.reporting.ready.store(false, Ordering::Relaxed);
            restart_needed.push(format!(
                "relay '{}' is no longer in the inventory: it now refuses every ticket and link and has given up its conferences; stop it",
                self.relay_id
            ));
        }
        if let Some(routers) = next.routers {
            let dropped = {
                let mut reporters = self.reporters.lock().unwrap_or_else(|e| e.into_inner());
                // Reporters to router URLs that stay keep running (and
                // their command numbering) with what the router serves now;
                // new URLs get one; dropped ones stop.
                let (kept, dropped): (Vec<_>, Vec<_>) = reporters
                    .running
                    .drain(..)
                    .partition(|r| routers.iter().any(|l| l.url == r.url()));
                for r in &dropped {
                    r.task.abort();
                }
                reporters.running = kept;
                for link in routers {
                    match reporters.running.iter().find(|r| r.url() == link.url) {
                        Some(r) => {
                            r.link.send_replace(link);
                        }
                        None => {
                            let reporter = self.reporting.spawn(&link);
                            reporters.running.push(reporter);
                        }
                    }
                }
                dropped
                    .into_iter()
                    .map(|r| r.link.borrow().clone())
                    .collect::<Vec<_>>()
            };
            // The routers no longer reported to hear it is draining.
            for link in dropped {
                final_report(
                    link,
                    self.relay_id.clone(),
                    self.reporting.credential.clone(),
                    self.reporting.cert_sha256.clone(),
                )
                .await;
            }
        }
        self.reloading.policy = Arc::new(policy);
        Ok(Reloaded {
            changes,
            restart_needed,
        })
    }
}

/// The settings of relay `id` that a reload of `policy` replaces. A relay
/// the inventory no longer lists trusts nothing (it gives up every
/// conference); refused when its credential no longer matches.
fn reconfigure(
    policy: &crate::policy::Policy,
    id: &str,
    credential: Option<&str>,
) -> Result<Reconfigured, ReloadError> {
    let log_full_addresses = policy.full_address_jurisdictions();
    let max_connections_per_address = policy.limits().relay_connections_per_address;
    let Some(idx) = policy.relay_idx(id) else {
        return Ok(Reconfigured {
            verifier: Verifier::new(id, HashMap::new()),
            routers: None,
            log_full_addresses,
            max_connections_per_address,
            removed: true,
        });
    };
    let r = policy.relay(idx);
    if let (Some(secret), Some(hash)) = (credential, &r.credential_sha256) {
        if !crate::router::ids::secret_matches(hash, secret) {
            return Err(ReloadError::Refused(format!(
                "relay '{id}': credential_sha256 no longer matches this relay's credential; restart it with the new credential"
            )));
        }
    }
    Ok(Reconfigured {
        verifier: policy.ticket_verifier(idx),
        routers: Some(if credential.is_some() {
            RouterLink::for_relay(policy, idx)
        } else {
            Vec::new()
        }),
        log_full_addresses,
        max_connections_per_address,
        removed: false,
    })
}

/// Settings of relay `id` that changed but only a restart applies.
fn restart_needed(
    old: &crate::policy::Policy,
    new: &crate::policy::Policy,
    id: &str,
) -> Vec<String> {
    let (Some(a), Some(b)) = (
        old.relay_idx(id).map(|i| old.relay(i)),
        new.relay_idx(id).map(|i| new.relay(i)),
    ) else {
        return Vec::new();
    };
    let mut out = Vec::new();
    if a.quic_addr != b.quic_addr {
        out.push(format!(
            "relay '{id}' quic_addr {} -> {}",
            a.quic_addr, b.quic_addr
        ));
    }
    if a.http_addr != b.http_addr {
        out.push(format!(
            "relay '{id}' http_addr {} -> {}",
            a.http_addr, b.http_addr
        ));
    }
    if a.tls != b.tls {
        out.push(format!("relay '{id}' tls files"));
    }
    out
}

/// What the relay's HTTP listener serves from.
struct Http {
    metrics: Metrics,
    ready: Arc<AtomicBool>,
    fingerprint: String,
    /// Authenticates `POST /v1/admin/reload` (the credential the relay
    /// presents to routers); without one, reloads are by SIGHUP only.
    credential: Option<String>,
    reload: mpsc::Sender<ReloadRequest>,
    limits: crate::http_server::Limits,
}

async fn serve_http(listener: tokio::net::TcpListener, http: Http) {
    use axum::http::StatusCode;
    use axum::routing::{get, post};
    let Http {
        metrics,
        ready,
        fingerprint,
        credential,
        reload,
        limits,
    } = http;
    let options = crate::http_server::Options {
        limits,
        metrics: metrics.http.clone(),
        // Operators and their Prometheus reach the relay directly.
        trusted_proxy: Arc::new(|_| false),
    };
    let app = axum::Router::new()
        .route(
            "/metrics",
            get(move || {
                let metrics = metrics.clone();
                async move {
                    (
                        [(
                            axum::http::header::CONTENT_TYPE,
                            "text/plain; version=0.0.4",
                        )],
                        metrics.render(),
                    )
                }
            }),
        )
        .route("/healthz", get(|| async { "ok\n" }))
        .route(
            "/readyz",
            get(move || {
                let ready = ready.load(Ordering::Relaxed);
                async move {
                    if ready {
                        (StatusCode::OK, "ready\n")
                    } else {
                        (StatusCode::SERVICE_UNAVAILABLE, "shutting down\n")
                    }
                }
            }),
        )
        .route(
            "/cert",
            get(move || {
                let body = serde_json::json!({ "sha256": fingerprint });
                async move { axum::Json(body) }
            }),
        )
        .route(
            "/v1/admin/reload",
            post(move |headers: axum::http::HeaderMap| {
                let (credential, reload) = (credential.clone(), reload.clone());
                async move { reload_endpoint(credential, reload, headers).await }
            }),
        );
    if let Err(e) = crate::http_server::serve(listener, app, options, std::future::pending()).await
    {
        warn!(error = %e, "HTTP listener stopped");
    }
}

/// `POST /v1/admin/reload`: `200` with what changed, `422` with every
/// problem of files that do not load, `409` when this relay cannot run
/// them (the policy in force stays), `401` without the relay's credential.
async fn reload_endpoint(
    credential: Option<String>,
    reload: mpsc::Sender<ReloadRequest>,
    headers: axum::http::HeaderMap,
) -> (axum::http::StatusCode, axum::Json<serde_json::Value>) {
    use axum::http::StatusCode;
    use serde_json::json;
    let error = |status: StatusCode, code: &str, message: String| {
        (
            status,
            axum::Json(json!({ "error": { "code": code, "message": message } })),
        )
    };
    let presented = headers
        .get(axum::http::header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "));
    let authentic = match (&credential, presented) {
        (Some(secret), Some(token)) => {
            crate::router::ids::secret_matches(&crate::router::ids::sha256(secret), token)
        }
        _ => false,
    };
    if !authentic {
        return error(
            StatusCode::UNAUTHORIZED,
            "unauthorized",
            "give the relay's credential as a bearer token".into(),
        );
    }
    let (tx, rx) = oneshot::channel();
    if reload.send(tx).await.is_err() {
        return error(
            StatusCode::CONFLICT,
            "reload_refused",
            "this relay was started without policy files to reload".into(),
        );
    }
    match rx.await {
        Ok(Ok(done)) => (
            StatusCode::OK,
            axum::Json(json!({
                "applied": true,
                "changes": done.changes,
                "restart_needed": done.restart_needed,
            })),
        ),
        Ok(Err(ReloadError::Invalid(e))) => {
            let problems: Vec<serde_json::Value> = e
                .problems
                .iter()
                .map(|p| json!({ "file": p.file.display().to_string(), "field": p.field, "message": p.message }))
                .collect();
            (
                StatusCode::UNPROCESSABLE_ENTITY,
                axum::Json(json!({ "error": {
                    "code": "invalid_config",
                    "message": format!("{} problem(s) in the policy files; the policy in force stays", problems.len()),
                    "problems": problems,
                }})),
            )
        }
        Ok(Err(ReloadError::Refused(message))) => error(
            StatusCode::CONFLICT,
            "reload_refused",
            format!("{message}; the policy in force stays"),
        ),
        Err(_) => error(
            StatusCode::SERVICE_UNAVAILABLE,
            "stopping",
            "the relay is stopping".into(),
        ),
    }
}

/// Seconds since the Unix epoch (0 if the clock is before it).
pub fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

async fn core_loop(
    log_full_addresses: Vec<String>,
    mut core: Core,
    mut verifier: Verifier,
    mut events: mpsc::Receiver<Event>,
    metrics: Metrics,
) {
    let mut handles: HashMap<ConnId, Handle> = HashMap::new();
    let mut st = LoopState {
        log_full_addresses,
        ..LoopState::default()
    };
    let mut ready = Vec::new();
    let mut backlog = Vec::new();
    let mut last = core.counters().clone();
    let mut tick = tokio::time::interval(Duration::from_millis(1));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut open = true;
    while open {
        tokio::select! {
            event = events.recv() => match event {
                Some(e) => {
                    handle_event(e, &mut core, &mut verifier, &mut handles, &mut st, &metrics);
                    flush_control(&mut core, &mut handles);
                }
                None => open = false,
            },
            _ = tick.tick() => {}
        }
        // Take whatever else is already waiting before flushing, so one
        // flush serves a batch.
        for _ in 0..1024 {
            match events.try_recv() {
                Ok(e) => {
                    handle_event(e, &mut core, &mut verifier, &mut handles, &mut st, &metrics);
                    // Per event, so a burst of messages to one client within
                    // a batch is not mistaken for a client that does not read.
                    flush_control(&mut core, &mut handles);
                }
                Err(_) => break,
            }
        }
        flush_control(&mut core, &mut handles);
        core.take_ready(&mut ready);
        ready.append(&mut backlog);
        for conn in ready.drain(..) {
            let Some(h) = handles.get(&conn) else {
                while core.poll_datagram(conn).is_some() {}
                continue;
            };
            while let Some(len) = core.next_datagram_len(conn) {
                if h.conn.datagram_send_buffer_space() < len {
                    backlog.push(conn);
                    break;
                }
                let Some(d) = core.poll_datagram(conn) else {
                    break;
                };
                match h.conn.send_datagram(d) {
                    Ok(()) => metrics.datagrams_sent.inc(),
                    Err(_) => metrics.send_failures.inc(),
                }
            }
        }
        if let Some(at) = st.first_arrival.take() {
            metrics.forward_seconds.observe(at.elapsed().as_secs_f64());
        }
        metrics.connections.set(handles.len() as i64);
        metrics.sync(core.counters(), &mut last);
    }
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
    /// From [`Settings::log_full_addresses`].
    log_full_addresses: Vec<String>,
    /// Of the trust the core's verifier holds (see [`Trust`]).
    trust_generation: u64,
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

fn handle_event(
    event: Event,
    core: &mut Core,
    verifier: &mut Verifier,
    handles: &mut HashMap<ConnId, Handle>,
    st: &mut LoopState,
    metrics: &Metrics,
) {
    let generation = st.trust_generation;
    let revoked = &mut st.revoked;
    match event {
        Event::Hello {
            conn,
            claims,
            recheck,
            reply,
        } => match
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
                });
                let (tx, rx) = mpsc::channel(CONTROL_BACKLOG);
                handles.insert(
                    id,
                    Handle {
                        conn,
                        control: Sink::Client(tx),
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
        },
        Event::LinkUp {
            conn,
            conference,
            peer,
            claims,
            recheck,
            reply,
        } => {
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
                stale.map(|r| verifier.check_cascade(&r.ticket, r.ip, unix_now()))
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
                            h.conn.close(close_code::NORMAL.into(), b"replaced");
                        }
                    }
                    let id = core.admit_link(&conference, &peer);
                    let (tx, rx) = mpsc::channel(link::LINK_BACKLOG);
                    handles.insert(
                        id,
                        Handle {
                            conn,
                            control: Sink::Link(tx),
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
        Event::Link(id, message) => match message {
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
            LinkMessage::KeyframeRequest { track } => {
                core.link_keyframe_request(id, track, Instant::now())
            }
            LinkMessage::LinkHello { .. }
            | LinkMessage::LinkWelcome {}
            | LinkMessage::Error { .. } => metrics.control_errors.inc(),
        },
        Event::Enforcement(event) => st.enforcement(event),
        Event::Control(id, message) => {
            let leaving = matches!(message, ClientMessage::Leave {});
            core.handle_control(id, message);
            if leaving {
                if let Some(h) = handles.remove(&id) {
                    h.conn.close(close_code::NORMAL.into(), b"left");
                }
            }
        }
        Event::RateLimited(id) => core.handle_rate_limited(id),
        Event::BadControl(id) => {
            metrics.control_errors.inc();
            core.handle_closed(id);
            if let Some(h) = handles.remove(&id) {
                h.conn
                    .close(close_code::PROTOCOL.into(), b"malformed control message");
            }
        }
        Event::Datagram(id, datagram, at) => {
            st.first_arrival.get_or_insert(at);
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
                            h.conn.close(close_code::NORMAL.into(), b"link idle");
                        }
                    }
                    st.links.retain(|(conf, _), _| *conf != c);
                    st.idle_since.remove(&c);
                }
            }
            metrics.cascade_links.set(st.links.len() as i64);
            // Per-jurisdiction gauges (every known jurisdiction reset first,
            // so one that emptied shows 0).
            let mut per: HashMap<&str, (i64, i64)> = HashMap::new();
            for c in &conferences {
                if c.participants == 0 {
                    continue;
                }
                if let Some(j) = crate::wire::conference::jurisdiction_of(&c.id) {
                    let e = per.entry(j).or_default();
                    e.0 += i64::from(c.participants);
                    e.1 += 1;
                }
            }
            for j in verifier.jurisdictions() {
                let (p, n) = per.get(j.as_str()).copied().unwrap_or_default();
                metrics.participants.with_label_values(&[j.as_str()]).set(p);
                metrics.conferences.with_label_values(&[j.as_str()]).set(n);
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
        Event::Command(action) => {
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
                            .close(close_code::CONFERENCE_ENDED.into(), b"conference ended");
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
        Event::Reload {
            verifier: next,
            log_full_addresses,
            generation,
        } => {
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
                h.conn.close(close_code::MOVED.into(), b"moved");
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
                .close(close_code::MOVED.into(), b"peer outside the jurisdiction");
        }
        warn!(link_to = %peer, "cascade link closed: the policy in force places the peer outside the conference's jurisdiction");
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
            crate::forward::LinkRequest::KeyframeRequest(track) => {
                LinkMessage::KeyframeRequest { track }
            }
        };
        if tx.try_send(message).is_err() {
            core.handle_closed(id);
            if let Some(h) = handles.remove(&id) {
                h.conn
                    .close(close_code::SLOW_CONTROL.into(), b"link backlog full");
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
                h.conn.close(
                    close_code::SLOW_CONTROL.into(),
                    b"control messages not read",
                );
            }
        }
    }
}

/// Reads until one whole control message is decoded (client control
/// streams and cascade links share the framing).
async fn read_message<M: for<'de> serde::Deserialize<'de> + control::Labels>(
    recv: &mut quinn::RecvStream,
    decoder: &mut Decoder,
) -> Result<Option<M>, ControlError> {
    loop {
        if let Some(m) = decoder.next_message::<M>()? {
            return Ok(Some(m));
        }
        match recv.read_chunk(control::MAX_FRAME_LEN, true).await {
            Ok(Some(chunk)) => decoder.push(&chunk.bytes),
            Ok(None) | Err(_) => return Ok(None),
        }
    }
}

async fn write_message<M: serde::Serialize>(
    send: &mut quinn::SendStream,
    message: &M,
) -> Result<(), ()> {
    let mut frame = Vec::new();
    control::encode(message, &mut frame).map_err(|_| ())?;
    send.write_all(&frame).await.map_err(|_| ())
}

/// One connection counted against its source address until dropped.
struct AddressSlot {
    counts: Arc<std::sync::Mutex<HashMap<std::net::IpAddr, u32>>>,
    ip: std::net::IpAddr,
}

impl AddressSlot {
    /// Counts a connection from `ip`, unless it already has `max`: checked
    /// and counted under one lock.
    fn try_take(
        counts: &Arc<std::sync::Mutex<HashMap<std::net::IpAddr, u32>>>,
        ip: std::net::IpAddr,
        max: u32,
    ) -> Option<Self> {
        let mut c = counts.lock().unwrap_or_else(|e| e.into_inner());
        let n = c.entry(ip).or_default();
        if *n >= max {
            if *n == 0 {
                c.remove(&ip);
            }
            return None;
        }
        *n += 1;
        Some(AddressSlot {
            counts: counts.clone(),
            ip,
        })
    }
}

impl Drop for AddressSlot {
    fn drop(&mut self) {
        let mut c = self.counts.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(n) = c.get_mut(&self.ip) {
            *n = n.saturating_sub(1);
            if *n == 0 {
                c.remove(&self.ip);
            }
        }
    }
}

async fn serve_connection(
    conn: quinn::Connection,
    events: mpsc::Sender<Event>,
    metrics: Metrics,
    trust: Trust,
    hello_timeout: Duration,
    control_limits: rate::ControlLimits,
) -> Result<(), &'static str> {
    let protocol = conn
        .handshake_data()
        .and_then(|h| h.downcast::<quinn::crypto::rustls::HandshakeData>().ok())
        .and_then(|h| h.protocol);
    if protocol.as_deref() == Some(crate::wire::CASCADE_ALPN) {
        return link::accept(conn, events, metrics, trust, hello_timeout).await;
    }
    let (mut send, mut recv) = tokio::time::timeout(hello_timeout, conn.accept_bi())
        .await
        .map_err(|_| "no control stream in time")?
        .map_err(|_| "connection lost before the control stream")?;
    let mut decoder = Decoder::new();
    let first = tokio::time::timeout(hello_timeout, read_message(&mut recv, &mut decoder))
        .await
        .map_err(|_| "no hello in time")?;
    let ticket = match first {
        Ok(Some(ClientMessage::Hello { ticket })) => ticket,
        Ok(Some(_)) | Ok(None) | Err(_) => {
            metrics.control_errors.inc();
            let _ = write_message(
                &mut send,
                &ServerMessage::Error {
                    code: ErrorCode::OutOfOrder.code(),
                    message: "the first message must be hello".into(),
                },
            )
            .await;
            let _ = send.finish();
            conn.close(close_code::PROTOCOL.into(), b"expected hello");
            return Err("no hello");
        }
    };
    // The trust in force when the hello arrived.
    let (generation, checker) = trusted(&trust);
    let checked = match checker.check(&ticket, unix_now()) {
        Ok(claims) => {
            let (reply_tx, reply_rx) = oneshot::channel();
            events
                .send(Event::Hello {
                    conn: conn.clone(),
                    claims,
                    recheck: Recheck {
                        ticket: ticket.clone(),
                        ip: conn.remote_address().ip(),
                        generation,
                    },
                    reply: reply_tx,
                })
                .await
                .map_err(|_| "relay stopping")?;
            reply_rx.await.map_err(|_| "relay stopping")?
        }
        Err(refusal) => {
            // Only a ticket a router of the policy really signed names a
            // conference worth recording; anyone can write the claims of
            // a forgery.
            // A bad signature under a trusted key is no better under the
            // same keys again: only other refusals are worth the check.
            let attested = match refusal {
                TicketError::BadSignature | TicketError::Malformed => None,
                _ => checker.attest(&ticket),
            };
            let origin = if attested.is_some() {
                "signed"
            } else {
                "forged"
            };
            metrics
                .ticket_refusals
                .with_label_values(&[refusal.code(), origin])
                .inc();
            // No client address in the log: the refusal reason only.
            info!(reason = refusal.code(), origin, "ticket refused");
            // The router of the conference named hears of it (a ticket for
            // one jurisdiction presented to a relay outside it).
            if let Some(claims) = attested {
                let _ = events
                    .send(Event::Enforcement(Enforcement {
                        conference: claims.conference,
                        kind: "ticket".into(),
                        reason: refusal.code().into(),
                        peer: None,
                        at: unix_now(),
                    }))
                    .await;
            }
            Err(refusal)
        }
    };
    let (id, mut control_rx) = match checked {
        Ok(admitted) => admitted,
        Err(refusal) => {
            let _ = write_message(
                &mut send,
                &ServerMessage::Error {
                    code: refusal.wire_code(),
                    message: refusal.to_string(),
                },
            )
            .await;
            let _ = send.finish();
            // Give the error a moment to leave before closing.
            let _ = tokio::time::timeout(Duration::from_millis(200), send.stopped()).await;
            conn.close(close_code::TICKET_REFUSED.into(), refusal.code().as_bytes());
            return Err("ticket refused");
        }
    };

    let writer_conn = conn.clone();
    let writer = tokio::spawn(async move {
        while let Some(message) = control_rx.recv().await {
            let going_away = matches!(message, ServerMessage::GoingAway { .. });
            if write_message(&mut send, &message).await.is_err() {
                // Cannot encode or cannot write: the client would miss
                // events silently, so end the connection instead.
                writer_conn.close(
                    close_code::PROTOCOL.into(),
                    b"control message not delivered",
                );
                break;
            }
            if going_away {
                let _ = send.finish();
            }
            let removed = match message {
                ServerMessage::Kicked { .. } => Some((close_code::KICKED, &b"kicked"[..])),
                ServerMessage::ConferenceEnded {} => {
                    Some((close_code::CONFERENCE_ENDED, &b"conference ended"[..]))
                }
                ServerMessage::GoingAway {
                    code: GOING_AWAY_MOVED,
                    ..
                } => Some((close_code::MOVED, &b"moved"[..])),
                _ => None,
            };
            if let Some((code, reason)) = removed {
                let _ = send.finish();
                // Give the message a moment to arrive before closing.
                let _ = tokio::time::timeout(Duration::from_millis(200), send.stopped()).await;
                writer_conn.close(code.into(), reason);
                break;
            }
        }
    });
    let mut rate = rate::ControlRate::new(control_limits, Instant::now());
    let outcome = loop {
        tokio::select! {
            datagram = conn.read_datagram() => match datagram {
                Ok(d) => {
                    if events.send(Event::Datagram(id, d, Instant::now())).await.is_err() {
                        break "relay stopping";
                    }
                }
                Err(_) => break "closed",
            },
            message = read_message(&mut recv, &mut decoder) => match message {
                Ok(Some(m)) => match rate.check(&m, Instant::now()) {
                    rate::Verdict::Pass => {
                        let leaving = matches!(m, ClientMessage::Leave {});
                        if events.send(Event::Control(id, m)).await.is_err() {
                            break "relay stopping";
                        }
                        if leaving {
                            break "left";
                        }
                    }
                    rate::Verdict::Drop => {
                        metrics.control_rate_limited.with_label_values(&["dropped"]).inc();
                        if events.send(Event::RateLimited(id)).await.is_err() {
                            break "relay stopping";
                        }
                    }
                    rate::Verdict::Disconnect => {
                        metrics
                            .control_rate_limited
                            .with_label_values(&["disconnected"])
                            .inc();
                        conn.close(
                            close_code::RATE_LIMITED.into(),
                            b"control messages over the rate",
                        );
                        break "control messages over the rate";
                    }
                },
                Ok(None) => break "control stream ended",
                Err(_) => {
                    let _ = events.send(Event::BadControl(id)).await;
                    break "malformed control";
                }
            },
        }
    };
    let _ = events.send(Event::Closed(id)).await;
    writer.abort();
    Err(outcome)
}

/// Runs the futures concurrently and waits for all.
async fn futures_join_all<F: Future<Output = ()> + Send + 'static>(futures: Vec<F>) {
    let handles: Vec<_> = futures.into_iter().map(tokio::spawn).collect();
    for h in handles {
        let _ = h.await;
    }
}

/// The last report of a relay shutting down: draining, so the router sends
/// no more joins here.
async fn final_report(link: RouterLink, relay_id: String, credential: String, cert_sha256: String) {
    use crate::wire::channel::{self, RelayReport};
    let report = RelayReport {
        cert_sha256,
        participants: 0,
        bitrate_bps: 0,
        draining: true,
        conferences: Vec::new(),
        links: Vec::new(),
        events: Vec::new(),
        ack: 0,
        epoch: 0,
        track_base: 0,
    };
    let _ = crate::http_client::request(
        "POST",
        &format!("{}{}", link.url, channel::report_path(&relay_id)),
        None,
        &[("authorization", &format!("Bearer {credential}"))],
        Some(serde_json::to_vec(&report).unwrap_or_default()),
        Duration::from_secs(1),
    )
    .await;
}

/// Reports to one router until aborted; applies the commands it answers.
/// A reload may change what the router serves (`links`), never its URL.
async fn report_loop(links: tokio::sync::watch::Receiver<RouterLink>, ctx: Reporting) {
    let Reporting {
        relay_id,
        credential,
        cert_sha256,
        events,
        ready,
        endpoint,
        trust,
        track_base,
    } = ctx;
    use crate::wire::channel::{self, Action, ConferenceLoad, LinkLoad, RelayReport, ReportReply};
    let url = format!("{}{}", links.borrow().url, channel::report_path(&relay_id));
    let auth = format!("Bearer {credential}");
    let mut ack = 0u64;
    let mut epoch = 0u64;
    let mut last: Option<(Instant, u64)> = None;
    let mut failures = 0u32;
    loop {
        let link = links.borrow().clone();
        let (tx, rx) = oneshot::channel();
        if events
            .send(Event::Snapshot(link.serves.clone(), tx))
            .await
            .is_err()
        {
            return;
        }
        let Ok(snapshot) = rx.await else { return };
        let now = Instant::now();
        let bitrate_bps = match last {
            Some((at, bytes)) => {
                let secs = now.duration_since(at).as_secs_f64().max(1e-3);
                (snapshot.bytes_total.saturating_sub(bytes) as f64 * 8.0 / secs) as u64
            }
            None => 0,
        };
        last = Some((now, snapshot.bytes_total));
        let report = RelayReport {
            cert_sha256: cert_sha256.clone(),
            participants: snapshot.participants,
            bitrate_bps,
            draining: !ready.load(Ordering::Relaxed),
            conferences: snapshot
                .conferences
                .into_iter()
                .filter(|c| {
                    crate::wire::conference::jurisdiction_of(&c.id)
                        .is_some_and(|j| link.jurisdictions.iter().any(|l| l == j))
                })
                .map(|c| ConferenceLoad {
                    id: c.id,
                    participants: c.participants,
                    bytes_in: c.bytes_in,
                    bytes_out: c.bytes_out,
                })
                .collect(),
            links: snapshot
                .links
                .into_iter()
                .filter(|l| {
                    crate::wire::conference::jurisdiction_of(&l.conference)
                        .is_some_and(|j| link.jurisdictions.iter().any(|x| x == j))
                })
                .map(|l| LinkLoad {
                    conference: l.conference,
                    peer: l.peer,
                    bytes_in: l.bytes_in,
                    bytes_out: l.bytes_out,
                })
                .collect(),
            events: snapshot.events,
            ack,
            epoch,
            track_base,
        };
        let body = serde_json::to_vec(&report).unwrap_or_default();
        let answer = crate::http_client::request(
            "POST",
            &url,
            None,
            &[("authorization", &auth)],
            Some(body),
            channel::HOLD + Duration::from_secs(5),
        )
        .await;
        match answer {
            Ok(r) if r.status == 200 => {
                if failures > 0 {
                    info!(router = %link.url, "reporting to router again");
                }
                failures = 0;
                let reply: ReportReply = serde_json::from_slice(&r.body).unwrap_or_default();
                if reply.epoch != epoch {
                    // The router restarted: its numbering did too.
                    epoch = reply.epoch;
                    ack = 0;
                }
                for command in reply.commands {
                    if command.seq <= ack {
                        continue;
                    }
                    ack = command.seq;
                    match command.action {
                        Action::Link {
                            conference,
                            peer,
                            peer_addr,
                            peer_cert,
                            ticket,
                        } => {
                            // The inventory, not the router, decides where a
                            // conference's media may go: the conference must be
                            // of a jurisdiction this router serves and this relay
                            // is in, and the peer inside it; it is dialled at its
                            // inventory address.
                            let jurisdiction =
                                crate::wire::conference::jurisdiction_of(&conference)
                                    .filter(|j| link.jurisdictions.iter().any(|l| l == j));
                            let target =
                                jurisdiction.and_then(|j| trusted(&trust).1.link_target(&peer, j));
                            let Some(peer_addr) = target
                                .filter(|a| peer_addr.parse::<SocketAddr>().is_ok_and(|p| p == *a))
                            else {
                                warn!(peer = %peer, "refusing a link command outside the jurisdiction or to an address the inventory does not give");
                                continue;
                            };
                            let dial = link::Dial {
                                conference,
                                peer,
                                peer_addr,
                                peer_cert,
                                ticket,
                            };
                            let (endpoint, events) = (endpoint.clone(), events.clone());
                            tokio::spawn(async move {
                                let peer = dial.peer.clone();
                                if let Err(e) =
                                    link::dial(endpoint, dial, events, Duration::from_secs(3)).await
                                {
                                    warn!(peer = %peer, error = %e, "cascade link failed");
                                }
                            });
                        }
                        Action::Drain {} => {
                            ready.store(false, Ordering::Relaxed);
                            if events.send(Event::Command(Action::Drain {})).await.is_err() {
                                return;
                            }
                        }
                        // Only for conferences of the jurisdictions the
                        // router serves: one router cannot disturb another's.
                        Action::Move { ref conference, .. }
                        | Action::Unlink { ref conference, .. }
                            if !crate::wire::conference::jurisdiction_of(conference)
                                .is_some_and(|j| link.serves.iter().any(|s| s == j)) =>
                        {
                            warn!(router = %link.url, "ignoring a move for a conference of a jurisdiction the router does not serve");
                        }
                        action => {
                            if events.send(Event::Command(action)).await.is_err() {
                                return;
                            }
                        }
                    }
                }
            }
            other => {
                failures += 1;
                if failures == 1 || failures % 60 == 0 {
                    match other {
                        Ok(r) => {
                            warn!(router = %link.url, status = r.status, body = %String::from_utf8_lossy(&r.body), "router refused the report")
                        }
                        Err(e) => warn!(router = %link.url, error = %e, "cannot report to router"),
                    }
                }
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
        }
    }
}

/// Socket buffer size asked for (the kernel caps it at its maximum, e.g.
/// `net.core.rmem_max`). The default of a few hundred KiB overflows within
/// milliseconds at gigabit rates, and overflow is loss.
const SOCKET_BUFFER_BYTES: usize = 8 << 20;

/// Asks for large UDP send and receive buffers; keeps the defaults if refused.
pub fn enlarge_socket_buffers(socket: &std::net::UdpSocket) {
    let s = socket2::SockRef::from(socket);
    if s.set_recv_buffer_size(SOCKET_BUFFER_BYTES).is_err()
        || s.set_send_buffer_size(SOCKET_BUFFER_BYTES).is_err()
    {
        warn!("could not enlarge UDP socket buffers; expect loss at high rates");
    }
}

/// The address a relay's self-signed certificate should name.
pub fn certificate_names(addr: SocketAddr) -> Vec<String> {
    vec![addr.ip().to_string(), "localhost".to_owned()]
}
