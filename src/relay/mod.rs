//! The relay process: the tokio/quinn shell around the forwarding core.
//!
//! The shell moves bytes; it never parses payloads. Where each part lives:
//!
//! - [`accept`]: the QUIC endpoint's accept loop — address validation
//!   (Retry) and the per-address connection limit.
//! - [`connection`]: one client connection — `hello`, the ticket check,
//!   then its control stream and datagrams.
//! - [`link`]: cascade links to the other relays of a jurisdiction.
//! - [`shards`] and [`shard`]: W shard tasks (default one per core), each
//!   owning a [`Core`] for the conferences that hash to it. A conference's
//!   participants and links always meet in one shard; connection tasks hand
//!   their datagrams and control messages straight to it, so nothing on the
//!   media path passes a global task or lock. A shard sleeps until work
//!   arrives.
//! - [`channel`]: reports to the routers and the commands they answer.
//! - [`reload`]: policy reload.
//! - [`http`]: the HTTP endpoints (`/metrics`, `/healthz`, `/readyz`,
//!   `/cert`, reload).
//! - [`metrics`], [`rate`] (control-message budgets), [`tls`].

mod accept;
mod channel;
mod connection;
mod framing;
mod http;
mod link;
pub mod metrics;
mod peer;
pub mod rate;
mod reload;
mod shard;
pub mod shards;
pub mod tls;
mod websocket;

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use tokio::sync::mpsc;
use tracing::{info, warn};

use crate::forward::{Core, CoreConfig};
use crate::ticket::Verifier;
use crate::wire::close_code;
use channel::{Reporters, Reporting, final_report};
use http::{Http, serve_http};
pub use metrics::Metrics;
use reload::{Reloader, reload_loop, reload_on_hangup};
pub use shards::Transport;
pub use shards::shard_of;
use shards::{Event, Shards};
pub use tls::Identity;

/// How a relay runs.
#[derive(Debug)]
pub struct Settings {
    pub relay_id: String,
    pub identity: Identity,
    pub verifier: Verifier,
    pub core: CoreConfig,
    /// Shards (core tasks); 0: one per available core.
    pub workers: usize,
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
    /// The WebSocket listener for participants without UDP; `None`: none.
    pub websocket: Option<WebSocketSettings>,
    /// How to reload the policy (`POST /v1/admin/reload` with the relay's
    /// credential, SIGHUP); `None` refuses reloads.
    pub reload: Option<Reloading>,
    /// Shown every media datagram and control message the shards handle,
    /// as the relay holds them once QUIC has decrypted them: audits and
    /// tests use it to check what a relay can see. `None` in production.
    pub tap: Option<Tap>,
}

/// A relay's WebSocket listener ([`websocket`]).
#[derive(Debug)]
pub struct WebSocketSettings {
    pub listener: tokio::net::TcpListener,
    pub cert: WebSocketCert,
    /// Caps and timeouts, as any HTTP listener's (fitted to the process's
    /// descriptor limit by the caller).
    pub limits: crate::http_server::Limits,
}

/// The certificate a relay's WebSocket listener serves.
#[derive(Debug)]
pub enum WebSocketCert {
    /// From the operator's files.
    Files(Arc<crate::tls::ServerCert>),
    /// Obtained and renewed over ACME for the listener's DNS name.
    Acme(Arc<crate::acme::Managed>, crate::acme::Settings),
    /// The relay's own (self-signed ones only clients that pin it accept).
    Own,
}

/// What a [`Tap`] is shown.
#[derive(Debug, Clone, Copy)]
pub enum Tapped<'a> {
    /// A media datagram as received from a participant or link.
    DatagramIn(&'a [u8]),
    /// A media datagram as handed to QUIC for a subscriber or link.
    DatagramOut(&'a [u8]),
    /// A participant's control message, decoded.
    Control(&'a crate::wire::control::ClientMessage),
    /// A cascade link's control message, decoded.
    Link(&'a crate::wire::link::LinkMessage),
}

/// A callback shown what a relay handles ([`Settings::tap`]).
#[derive(Clone)]
pub struct Tap(pub Arc<dyn Fn(Tapped<'_>) + Send + Sync>);

impl std::fmt::Debug for Tap {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Tap")
    }
}

/// Where a relay's policy comes from, and the policy it started with.
#[derive(Debug, Clone)]
pub struct Reloading {
    pub source: crate::policy::Source,
    pub policy: Arc<crate::policy::Policy>,
    /// Whether SIGHUP reloads.
    pub on_sighup: bool,
}

/// The trust of the policy in force, read by each new connection, with its
/// generation (one more per reload).
pub(crate) type Trust = Arc<std::sync::RwLock<(u64, Arc<Verifier>)>>;

pub(crate) fn trusted(trust: &Trust) -> (u64, Arc<Verifier>) {
    trust.read().unwrap_or_else(|e| e.into_inner()).clone()
}

/// The certificate the relay serves new connections with, which cascade
/// links it dials present too (a renewal replaces it).
pub(crate) type CurrentIdentity = Arc<std::sync::RwLock<Arc<Identity>>>;

/// What the core needs to check a handshake again when the trust changed
/// after its connection task checked it.
#[derive(Debug)]
pub(crate) struct Recheck {
    pub ticket: String,
    /// The dialer's address (cascade links).
    pub ip: std::net::IpAddr,
    /// The SHA-256 of the certificate the dialer presented (cascade links).
    pub cert: Option<String>,
    /// The trust generation it was checked under.
    pub generation: u64,
}

/// A router this relay reports to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RouterLink {
    pub url: String,
    /// The other replicas' URLs (routers sharing the first's PostgreSQL
    /// store): reports go to one at a time, the next after a failure.
    pub replicas: Vec<String>,
    /// Jurisdiction ids the router serves that the relay is in: only their
    /// conferences appear in reports to it.
    pub jurisdictions: Vec<String>,
    /// Every jurisdiction the router serves: enforcement events naming
    /// their conferences go to it (a relay outside a jurisdiction still
    /// reports the tickets for it that it refused).
    pub serves: Vec<String>,
    /// For each `https://` URL above: the CA file its certificate is
    /// verified against and the name it must be for.
    pub trust: std::collections::BTreeMap<String, (std::path::PathBuf, String)>,
}

impl RouterLink {
    /// Whether every `tls_ca` file of the link loads and every name is a
    /// server name (else every report to that router would fail).
    pub fn check_trust(&self) -> Result<(), String> {
        for (url, (ca, name)) in &self.trust {
            crate::http_client::Tls::from_ca_file_for(ca, name)
                .map_err(|e| format!("tls_ca of the router at {url}: {e}"))?;
        }
        Ok(())
    }

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
            // A group of replicas is one link, from its first router.
            .filter(|r| policy.replicas(r).first().is_some_and(|f| f.id == r.id))
            .filter_map(|r| {
                let shared: Vec<String> = r
                    .jurisdictions
                    .iter()
                    .map(|j| policy.jurisdiction(*j).id.clone())
                    .filter(|j| mine.contains(&j.as_str()))
                    .collect();
                (!shared.is_empty()).then(|| RouterLink {
                    trust: policy
                        .replicas(r)
                        .iter()
                        .filter_map(|o| Some((o.relay_url.clone(), o.relay_trust()?)))
                        .collect(),
                    url: r.relay_url.clone(),
                    replicas: policy.replicas(r)[1..]
                        .iter()
                        .map(|o| o.relay_url.clone())
                        .collect(),
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

/// Errors that stop the relay from starting.
#[derive(Debug, thiserror::Error)]
pub enum RelayError {
    #[error("TLS setup failed: {0}")]
    Tls(String),
    #[error("cannot serve QUIC: {0}")]
    Io(#[from] std::io::Error),
}

/// Serves QUIC on `socket` and HTTP (`/metrics`, `/healthz`, `/readyz`,
/// `/cert`) on `http` until `shutdown` resolves, then tells clients it is
/// going away and closes within `shutdown_grace`.
pub async fn run(
    socket: std::net::UdpSocket,
    http: tokio::net::TcpListener,
    settings: Settings,
    shutdown: impl Future<Output = ()>,
) -> Result<(), RelayError> {
    // A CA file that cannot be read would fail every report: say so now.
    for link in &settings.routers {
        link.check_trust().map_err(RelayError::Tls)?;
    }
    let fingerprint = settings.identity.fingerprint();
    let server = server_config(&settings.identity)?;
    crate::quic::enlarge_socket_buffers(&socket);
    let endpoint = quinn::Endpoint::new(
        quinn::EndpointConfig::default(),
        Some(server),
        socket,
        Arc::new(quinn::TokioRuntime),
    )?;
    let metrics =
        Metrics::with_jurisdictions(&settings.relay_id, &settings.verifier.jurisdictions());
    let ready = Arc::new(AtomicBool::new(true));
    info!(relay = %settings.relay_id, addr = %endpoint.local_addr()?, cert_sha256 = %fingerprint, "relay serving QUIC and WebTransport");
    let (pin_tx, pin) = tokio::sync::watch::channel(tls::Pins {
        current: fingerprint.clone(),
        next: None,
    });
    let identity: CurrentIdentity = Arc::new(std::sync::RwLock::new(Arc::new(settings.identity)));
    let renewer = tokio::spawn(renew_certificate(
        identity.clone(),
        endpoint.clone(),
        pin_tx,
        metrics.clone(),
    ));

    let workers = effective_workers(settings.workers);
    let metrics = metrics.with_shards(workers);
    // Connection tasks check signatures (stateless) with the trust in force
    // when they start; the core task keeps the nonces.
    let trust: Trust = Arc::new(std::sync::RwLock::new((
        0,
        Arc::new(settings.verifier.clone()),
    )));
    let max_per_address = Arc::new(AtomicU32::new(settings.max_connections_per_address));
    let (shards, shard_tasks) = start_shards(
        workers,
        settings.core,
        &settings.tap,
        &settings.log_full_addresses,
        &settings.verifier,
        &metrics,
    );
    let reporting = Reporting {
        relay_id: settings.relay_id.clone(),
        credential: settings.credential.clone().unwrap_or_default(),
        cert_sha256: pin.clone(),
        shards: shards.clone(),
        metrics: metrics.clone(),
        ready: ready.clone(),
        endpoint: endpoint.clone(),
        identity: identity.clone(),
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
                shards: shards.clone(),
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
                crate::signals::Hangups::new(),
            ))
        });
    let http_task = tokio::spawn(serve_http(
        http,
        Http {
            metrics: metrics.clone(),
            ready: ready.clone(),
            fingerprint: pin.clone(),
            credential: settings.credential.clone(),
            reload: reload_tx,
            limits: settings.http.clone(),
        },
    ));
    let (websocket_stop, websocket_task) = match settings.websocket {
        Some(w) => {
            let (stop, task) = serve_websocket(
                w,
                websocket::Serving {
                    shards: shards.clone(),
                    metrics: metrics.clone(),
                    trust: trust.clone(),
                    hello_timeout: settings.hello_timeout,
                    control_limits: settings.control_limits,
                },
                identity.clone(),
            );
            (Some(stop), Some(task))
        }
        None => (None, None),
    };
    let accept = accept::accept_loop(accept::Accepting {
        endpoint: endpoint.clone(),
        identity: identity.clone(),
        shards: shards.clone(),
        metrics: metrics.clone(),
        trust: trust.clone(),
        max_per_address: max_per_address.clone(),
        unvalidated_limit: settings.unvalidated_handshakes,
        hello_timeout: settings.hello_timeout,
        control_limits: settings.control_limits,
    });
    tokio::select! {
        _ = accept => {}
        _ = shutdown => {}
    }

    info!(relay = %settings.relay_id, "shutting down: refusing new connections, telling clients");
    ready.store(false, Ordering::Relaxed);
    renewer.abort();
    // No new WebSocket connections; those open hear `going_away` below.
    if let Some(stop) = websocket_stop {
        let _ = stop.send(true);
    }
    for task in [reloader, hangups].into_iter().flatten() {
        task.abort();
    }
    // Tell the routers at once, so no new joins are sent here.
    goodbye(
        &reporters,
        &settings.relay_id,
        settings.credential.as_deref().unwrap_or_default(),
        &pin,
    )
    .await;
    close_endpoint(
        &endpoint,
        &metrics,
        shards,
        shard_tasks,
        settings.shutdown_grace,
    )
    .await;
    if let Some(task) = websocket_task {
        let _ = tokio::time::timeout(Duration::from_secs(2), task).await;
    }
    http_task.abort();
    Ok(())
}

/// Starts `workers` shards, each with its own core and a share of the
/// track ids.
fn start_shards(
    workers: usize,
    core: CoreConfig,
    tap: &Option<Tap>,
    log_full_addresses: &[String],
    verifier: &Verifier,
    metrics: &Metrics,
) -> (Shards, Vec<tokio::task::JoinHandle<()>>) {
    let mut senders = Vec::with_capacity(workers);
    let mut shard_tasks = Vec::with_capacity(workers);
    for index in 0..workers {
        let (tx, rx) = mpsc::channel::<Event>(shards::SHARD_QUEUE);
        senders.push(tx);
        let core = Core::new(CoreConfig {
            track_id_share: (index as u32, workers as u32),
            ..core
        });
        shard_tasks.push(tokio::spawn(shard::run(
            index,
            tap.clone(),
            log_full_addresses.to_vec(),
            core,
            verifier.clone(),
            rx,
            metrics.clone(),
        )));
    }
    let shards = Shards::new(senders);
    (shards, shard_tasks)
}

/// Stops reporting to the routers and sends each a last report, with the
/// relay draining, so that no new joins are sent here.
async fn goodbye(
    reporters: &std::sync::Mutex<Reporters>,
    relay_id: &str,
    credential: &str,
    pin: &tokio::sync::watch::Receiver<tls::Pins>,
) {
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
                relay_id.to_owned(),
                credential.to_owned(),
                pin.borrow().current.clone(),
            )
        })
        .collect();
    futures_join_all(finals).await;
}

/// Takes no new connections, tells the clients the relay is going away,
/// gives them `grace` to leave, then closes and ends the shards.
async fn close_endpoint(
    endpoint: &quinn::Endpoint,
    metrics: &Metrics,
    shards: Shards,
    shard_tasks: Vec<tokio::task::JoinHandle<()>>,
    grace: Duration,
) {
    endpoint.set_server_config(None);
    let _ = shards.broadcast(|| Event::Shutdown).await;
    let deadline = tokio::time::Instant::now() + grace;
    let open = || endpoint.open_connections() > 0 || metrics.websocket_http.open.get() > 0;
    while open() && tokio::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    endpoint.close(close_code::GOING_AWAY.into(), b"relay shutting down");
    let _ = tokio::time::timeout(Duration::from_secs(1), endpoint.wait_idle()).await;
    // The shards end once the last sender is gone.
    drop(shards);
    let _ = tokio::time::timeout(Duration::from_secs(1), futures_join(shard_tasks)).await;
}

/// Starts serving the WebSocket listener: its certificate from files, or
/// the relay's own as renewed; returns the switch that stops it accepting
/// and its task.
fn serve_websocket(
    w: WebSocketSettings,
    serving: websocket::Serving,
    identity: CurrentIdentity,
) -> (
    tokio::sync::watch::Sender<bool>,
    tokio::task::JoinHandle<()>,
) {
    let metrics = serving.metrics.clone();
    let (tls, acme) = match w.cert {
        WebSocketCert::Files(cert) => {
            metrics.websocket_certificate_expiry.set(cert.not_after());
            (cert.server_config(), None)
        }
        WebSocketCert::Acme(managed, settings) => {
            let renewing = tokio::spawn(managed.clone().run(
                settings,
                crate::acme::Metrics {
                    expiry: metrics.websocket_certificate_expiry.clone(),
                    issued: metrics.acme_certificates.clone(),
                    failures: metrics.acme_failures.clone(),
                },
            ));
            (managed.server_config(), Some(renewing))
        }
        WebSocketCert::Own => (websocket::own_certificate(identity), None),
    };
    if let Ok(addr) = w.listener.local_addr() {
        info!(addr = %addr, "relay serving WebSocket (TLS over TCP)");
    }
    let options = crate::http_server::Options {
        limits: w.limits,
        metrics: serving.metrics.websocket_http.clone(),
        // Participants connect directly, never through a proxy of ours.
        trusted_proxy: Arc::new(|_| false),
        tls: Some(tokio_rustls::TlsAcceptor::from(tls)),
        unsent_limit: Some(websocket::UNSENT_LIMIT),
    };
    let (stop_tx, mut stop) = tokio::sync::watch::channel(false);
    let task = tokio::spawn(async move {
        let app = websocket::routes(serving);
        let stopped = async move {
            let _ = stop.wait_for(|s| *s).await;
        };
        if let Err(e) = crate::http_server::serve(w.listener, app, options, stopped).await {
            warn!(error = %e, "the WebSocket listener stopped");
        }
        if let Some(renewing) = acme {
            renewing.abort();
        }
    });
    (stop_tx, task)
}

/// The endpoint's server config for `identity`: its certificate, and the
/// transport limits every connection starts with. The stream limits are
/// what HTTP/3 needs (browsers refuse fewer than three unidirectional
/// streams before the ALPN is known); a native connection has them
/// lowered once its ALPN is known, and streams beyond its control stream
/// are refused unread ([`connection`]). Small stream windows bound what
/// any stream can make the relay buffer.
fn server_config(identity: &Identity) -> Result<quinn::ServerConfig, RelayError> {
    let crypto = tls::server_config(identity).map_err(RelayError::Tls)?;
    Ok(with_transport(quinn::ServerConfig::with_crypto(Arc::new(
        crypto,
    ))))
}

/// The server config for a connection from another relay's address: a
/// cascade link, asked for its certificate ([`tls::link_server_config`]).
pub(crate) fn link_server_config(identity: &Identity) -> Result<quinn::ServerConfig, RelayError> {
    let crypto = tls::link_server_config(identity).map_err(RelayError::Tls)?;
    Ok(with_transport(quinn::ServerConfig::with_crypto(Arc::new(
        crypto,
    ))))
}

fn with_transport(mut server: quinn::ServerConfig) -> quinn::ServerConfig {
    let mut transport = quinn::TransportConfig::default();
    transport
        .max_concurrent_bidi_streams(connection::H3_BIDI_STREAMS.into())
        .max_concurrent_uni_streams(connection::H3_UNI_STREAMS.into())
        .stream_receive_window((64u32 << 10).into())
        .receive_window((256u32 << 10).into())
        // Enough for bursts; beyond it datagrams wait in the core's queue,
        // where the drop policy and keyframe requests apply.
        .datagram_receive_buffer_size(Some(1 << 20))
        .datagram_send_buffer_size(peer::QUIC_DATAGRAM_BUFFER)
        .keep_alive_interval(Some(KEEP_ALIVE));
    server.transport_config(Arc::new(transport));
    server
}

/// Longest single wait of the renewal task.
const RENEWAL_STEP: Duration = Duration::from_secs(60);

/// Keeps a self-signed certificate fresh: its successor (new key, new
/// hash, valid from the renewal on) is made at once and reported with it,
/// so routers hand out both hashes; with a third of its lifetime left the
/// successor takes its place for new connections and a new successor is
/// made. Connections already open keep the certificate they were made
/// with, so nobody in a call notices. A certificate from files is left
/// alone.
async fn renew_certificate(
    current: CurrentIdentity,
    endpoint: quinn::Endpoint,
    pins: tokio::sync::watch::Sender<tls::Pins>,
    metrics: Metrics,
) {
    let mut identity = current.read().unwrap_or_else(|e| e.into_inner()).clone();
    // Certificates from files are their operator's to renew (the expiry
    // gauge stays 0: unknown to the relay).
    if identity.renewal.is_none() {
        return;
    }
    let mut next: Option<Identity> = None;
    loop {
        let Some(renewal) = identity.renewal.clone() else {
            return;
        };
        if next.is_none() {
            next = identity.successor().and_then(Result::ok);
            if next.is_none() {
                warn!(
                    "could not make the next self-signed certificate; trying again at the renewal"
                );
            }
        }
        pins.send_replace(tls::Pins {
            current: identity.fingerprint(),
            next: next.as_ref().map(Identity::fingerprint),
        });
        metrics.certificate_expiry.set(
            renewal
                .expires
                .duration_since(UNIX_EPOCH)
                .map_or(0, |d| d.as_secs() as i64),
        );
        // In steps of at most a minute against the wall clock: a timer
        // runs on the monotonic clock, which stands still while the
        // machine is suspended, and certificates expire by the wall clock.
        while let Ok(left) = renewal.due().duration_since(SystemTime::now()) {
            tokio::time::sleep(left.min(RENEWAL_STEP)).await;
        }
        // The announced successor (kept until it is in force), or, if it
        // could not be made, a new one.
        if next.is_none() {
            next = identity.successor().and_then(Result::ok);
        }
        let Some(Ok(config)) = next.as_ref().map(server_config) else {
            warn!("could not put a new self-signed certificate in force; trying again in a minute");
            tokio::time::sleep(RENEWAL_STEP).await;
            continue;
        };
        let Some(incoming) = next.take() else {
            continue;
        };
        endpoint.set_server_config(Some(config));
        info!(cert_sha256 = %incoming.fingerprint(), "certificate renewed");
        metrics.certificate_renewals.inc();
        identity = Arc::new(incoming);
        *current.write().unwrap_or_else(|e| e.into_inner()) = identity.clone();
    }
}

/// Runs the futures concurrently and waits for all.
async fn futures_join_all<F: Future<Output = ()> + Send + 'static>(futures: Vec<F>) {
    futures_join(futures.into_iter().map(tokio::spawn).collect()).await;
}

/// The shards a relay runs for `workers` (0: one per available core),
/// at most [`crate::policy::MAX_WORKERS`].
pub fn effective_workers(workers: usize) -> usize {
    let n = if workers == 0 {
        std::thread::available_parallelism().map_or(1, |n| n.get())
    } else {
        workers
    };
    n.clamp(1, crate::policy::MAX_WORKERS)
}

/// How long a client connection may be silent before the relay sends a
/// keep-alive: half the 30 s idle timeout, so a client that sends none
/// (the native client sends its own every 5 s) keeps its connection. Every
/// keep-alive costs a packet each way, which is most of what 1,000 silent
/// participants cost a relay (5 s: 1.03 % of a core; see docs/benchmarks.md).
const KEEP_ALIVE: Duration = Duration::from_secs(15);

/// Waits for every task.
async fn futures_join(tasks: Vec<tokio::task::JoinHandle<()>>) {
    for t in tasks {
        let _ = t.await;
    }
}

/// The address a relay's self-signed certificate should name.
pub fn certificate_names(addr: SocketAddr) -> Vec<String> {
    vec![addr.ip().to_string(), "localhost".to_owned()]
}
