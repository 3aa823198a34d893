//! The router: the control plane of one or more jurisdictions.
//!
//! It pins tenants' conferences to a jurisdiction (plan rules), lets
//! participants join through GeoIP relay selection inside that jurisdiction
//! with signed tickets bound to one relay, moderates (lock, kick and ban,
//! end, waiting room), keeps its records in a [`Store`](crate::store::Store)
//! and takes relays' load reports ([`crate::wire::channel`]).

pub mod api;
pub mod ids;
pub mod limits;
pub mod manage;
pub mod metrics;
pub mod page;
pub mod planner;
pub mod relays;
pub mod replicas;
pub mod residency;
pub mod retention;

use std::future::Future;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use ed25519_dalek::SigningKey;
use tracing::{info, warn};

use crate::policy::{self, Policy};
use crate::store::Store;
use crate::store::replicas::Announcement;

pub use metrics::RouterMetrics;

/// How a router runs.
#[derive(Debug)]
pub struct Settings {
    pub policy: Arc<Policy>,
    /// This router's entry in the policy.
    pub router: policy::Router,
    pub signing_key: SigningKey,
    /// Its records and, on PostgreSQL, what it shares with its replicas.
    pub store: crate::store::Handle,
    /// Validity of the tickets it signs.
    pub ticket_lifetime: Duration,
    pub limits: limits::LimitSettings,
    /// Caps and timeouts of its HTTP listener (fitted to the process's
    /// descriptor limit by the caller; a change needs a restart).
    pub http: crate::http_server::Limits,
    /// The relay channel's own listener (bound on `router.relay_listen`
    /// by the caller); `None`: relays report on the public listener.
    pub relay_listener: Option<tokio::net::TcpListener>,
    /// Where the policy is reloaded from (`POST /v1/admin/reload`, SIGHUP);
    /// `None` refuses reloads.
    pub source: Option<policy::Source>,
    /// Whether SIGHUP reloads the policy.
    pub reload_on_sighup: bool,
}

/// Errors that stop the router from starting.
#[derive(Debug, thiserror::Error)]
pub enum RouterError {
    #[error(transparent)]
    Store(#[from] crate::store::StoreError),
    #[error("cannot serve HTTP: {0}")]
    Io(#[from] std::io::Error),
    #[error("records key: {0}")]
    RecordsKey(String),
    #[error("HTTPS certificate: {0}")]
    Tls(String),
}

/// Everything a request handler reads: the policy in force with this
/// router's entry and key, and the state that outlives a reload (shared
/// by every generation).
#[derive(Debug)]
pub struct Shared {
    pub policy: Arc<Policy>,
    pub me: policy::Router,
    pub signing_key: SigningKey,
    pub store: Arc<dyn Store>,
    /// What this router agrees on with its replicas: relay reports,
    /// commands, placements and the planner lease (in its own memory when
    /// it has none: [`replicas::Alone`]).
    pub replicas: Arc<dyn crate::store::Replicas>,
    /// Whether the store answered its last health check.
    pub store_up: Arc<AtomicBool>,
    /// The store's address salt ([`crate::store::Store::address_key`]).
    pub address_key: [u8; 32],
    /// Keys every address and passcode hash the store keeps.
    pub records_keys: crate::secret::RecordsKeys,
    pub relays: Arc<relays::Registry>,
    pub limiter: Arc<limits::Limiter>,
    pub metrics: RouterMetrics,
    pub ticket_lifetime: Duration,
    /// Woken whenever a waiting participant is admitted or denied.
    pub waiting_changed: Arc<tokio::sync::Notify>,
    /// The one live poll of each waiting participant.
    pub waiting_polls: Arc<api::joins::WaitingPolls>,
    pub ready: Arc<AtomicBool>,
    /// Credential hashes of relays that reloads removed from the inventory,
    /// and since when: their reports are still taken for [`RETIRED_FOR`],
    /// so that what they carry is moved off.
    pub retired: std::collections::HashMap<String, ([u8; 32], std::time::Instant)>,
}

/// How long a relay removed from the inventory may still report (kept in
/// memory: a router restarted meanwhile no longer knows it).
pub const RETIRED_FOR: Duration = Duration::from_secs(600);

/// The router's current [`Shared`] and how to replace it.
#[derive(Debug)]
pub struct Live {
    current: RwLock<Arc<Shared>>,
    source: Option<policy::Source>,
    /// The certificate served over HTTPS (`None`: plain HTTP), read again
    /// on every reload.
    tls: Option<Arc<crate::tls::ServerCert>>,
    /// One reload at a time.
    reloading: tokio::sync::Mutex<()>,
}

pub use crate::policy::{ReloadError, Reloaded};

/// The policy in force when the request arrived, used throughout it (see
/// [`Live::load`]).
pub(crate) struct Current(pub(crate) Arc<Shared>);

impl axum::extract::FromRequestParts<Arc<Live>> for Current {
    type Rejection = std::convert::Infallible;

    async fn from_request_parts(
        _parts: &mut axum::http::request::Parts,
        live: &Arc<Live>,
    ) -> Result<Self, Self::Rejection> {
        Ok(Current(live.load()))
    }
}

impl Live {
    /// The policy in force and everything else handlers read. A handler
    /// takes it once and uses it throughout, so it never mixes two
    /// policies' indices.
    pub fn load(&self) -> Arc<Shared> {
        self.current
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// Reads the policy files again and, if they load and this router can
    /// run them, puts them in force. Calls in flight finish under the
    /// policy they started with; live calls go on (the state of relays,
    /// conferences and limits carries over).
    pub async fn reload(&self) -> Result<Reloaded, ReloadError> {
        let _one = self.reloading.lock().await;
        let old = self.load();
        let outcome = self.load_next(&old).await;
        let (policy, me, signing_key) = match outcome {
            Ok(x) => x,
            Err(e) => {
                old.metrics.reloads.with_label_values(&["rejected"]).inc();
                warn!(router = %old.me.id, error = %e, "policy reload refused; the policy in force stays");
                return Err(e);
            }
        };
        if let Some(cert) = &self.tls {
            old.metrics.tls_cert_expiry.set(cert.not_after());
        }
        let restart_needed = restart_needed(&old, &policy, &me, &signing_key);
        let changes = policy::diff(&old.policy, &policy);
        let retired = retired_after(&old, &policy);
        let policy = Arc::new(policy);
        old.limiter
            .set(limits::LimitSettings::from_policy(&policy).shared_by(policy.replicas(&me).len()));
        let served: Vec<&str> = me
            .jurisdictions
            .iter()
            .map(|j| policy.jurisdiction(*j).id.as_str())
            .collect();
        old.metrics.prepare(&served);
        for j in &old.me.jurisdictions {
            let id = old.policy.jurisdiction(*j).id.as_str();
            if !served.contains(&id) {
                old.metrics.forget_jurisdiction(id);
            }
        }
        let next = Shared {
            policy: policy.clone(),
            me: me.clone(),
            signing_key,
            store: old.store.clone(),
            replicas: old.replicas.clone(),
            store_up: old.store_up.clone(),
            address_key: old.address_key,
            records_keys: old.records_keys.clone(),
            relays: old.relays.clone(),
            limiter: old.limiter.clone(),
            metrics: old.metrics.clone(),
            ticket_lifetime: old.ticket_lifetime,
            waiting_changed: old.waiting_changed.clone(),
            waiting_polls: old.waiting_polls.clone(),
            ready: old.ready.clone(),
            retired,
        };
        *self.current.write().unwrap_or_else(|e| e.into_inner()) = Arc::new(next);
        old.metrics.reloads.with_label_values(&["applied"]).inc();
        info!(router = %me.id, changes = changes.len(), restart_needed = restart_needed.len(), "policy reloaded");
        for change in &changes {
            info!(router = %me.id, change = %change, "policy change");
        }
        for setting in &restart_needed {
            warn!(router = %me.id, setting = %setting, "changed setting takes effect at restart");
        }
        Ok(Reloaded {
            changes,
            restart_needed,
        })
    }

    /// Reads and checks the policy files again, this router's entry and
    /// key in them, and its HTTPS certificate (last, as loading it swaps
    /// the one served).
    async fn load_next(
        &self,
        old: &Shared,
    ) -> Result<(Policy, policy::Router, SigningKey), ReloadError> {
        match self.source.clone() {
            None => Err(ReloadError::Refused(
                "this router was started without policy files to reload".into(),
            )),
            Some(source) => {
                let id = old.me.id.clone();
                let cert = self.tls.clone();
                tokio::task::spawn_blocking(move || {
                    let policy = source.load().map_err(ReloadError::Invalid)?;
                    let me = policy.router(&id).cloned().ok_or_else(|| {
                        ReloadError::Refused(format!(
                            "router '{id}' is not in {}: stop it instead",
                            policy.source().display()
                        ))
                    })?;
                    let key = signing_key(&policy, &me).map_err(ReloadError::Refused)?;
                    // Last, as it swaps the certificate served when it
                    // loads: nothing after it refuses the reload.
                    if let Some(cert) = &cert {
                        let (c, k) = cert.paths();
                        if me.tls.as_ref().is_some_and(|(mc, mk)| mc == c && mk == k) {
                            cert.reload().map_err(|e| {
                                ReloadError::Refused(format!(
                                    "router '{id}' HTTPS certificate: {e}; the one in force stays"
                                ))
                            })?;
                        }
                    }
                    Ok((policy, me, key))
                })
                .await
                .unwrap_or_else(|e| Err(ReloadError::Refused(format!("reload failed: {e}"))))
            }
        }
    }
}

/// The settings a reload changed that take effect only at the next start.
fn restart_needed(
    old: &Shared,
    policy: &Policy,
    me: &policy::Router,
    signing_key: &SigningKey,
) -> Vec<String> {
    let mut restart_needed = Vec::new();
    if me.listen != old.me.listen {
        restart_needed.push(format!(
            "router '{}' listen {} -> {}",
            me.id, old.me.listen, me.listen
        ));
    }
    if me.relay_listen != old.me.relay_listen {
        restart_needed.push(format!("router '{}' relay_listen", me.id));
    }
    if me.tls != old.me.tls {
        restart_needed.push(format!("router '{}' tls_cert/tls_key/plain_http", me.id));
    }
    if me.acme != old.me.acme {
        restart_needed.push(format!(
            "router '{}' HTTPS certificate over ACME for {} -> {}",
            me.id,
            old.me.acme.as_deref().unwrap_or("(none)"),
            me.acme.as_deref().unwrap_or("(none)")
        ));
    }
    if me.acme.is_some() && policy.acme() != old.policy.acme() {
        restart_needed.push("[acme]".to_owned());
    }
    if me.records_key != old.me.records_key
        || me.records_key_previous != old.me.records_key_previous
        || (me.records_key.is_none()
            && signing_key.verifying_key() != old.signing_key.verifying_key())
    {
        restart_needed.push(format!("router '{}' records key", me.id));
    }
    if me.store != old.me.store {
        restart_needed.push(format!(
            "router '{}' store {} -> {}",
            me.id,
            old.me.store.display(),
            me.store.display()
        ));
    }
    restart_needed.extend(crate::logging::reload(
        old.policy.logging(),
        policy.logging(),
    ));
    restart_needed
}

/// Relays a reload removed keep reporting for [`RETIRED_FOR`] with the
/// credential of the last inventory they were in.
fn retired_after(
    old: &Shared,
    policy: &Policy,
) -> std::collections::HashMap<String, ([u8; 32], std::time::Instant)> {
    let now = std::time::Instant::now();
    let mut retired = old.retired.clone();
    for r in old.policy.relays() {
        if let (Some(hash), None) = (r.credential_sha256, policy.relay_idx(&r.id)) {
            retired.insert(r.id.clone(), (hash, now));
        }
    }
    retired.retain(|id, (_, since)| {
        policy.relay_idx(id).is_none() && now.duration_since(*since) < RETIRED_FOR
    });
    retired
}

/// Reads router `me`'s signing key and checks it against its public key in
/// `policy` (relays would refuse tickets signed with another key).
pub fn signing_key(policy: &Policy, me: &policy::Router) -> Result<SigningKey, String> {
    let key_text = std::fs::read_to_string(&me.signing_key)
        .map_err(|e| format!("cannot read {}: {e}", me.signing_key.display()))?;
    let key = crate::ticket::parse_signing_key(key_text.trim())
        .map_err(|e| format!("{}: {e}", me.signing_key.display()))?;
    if key.verifying_key() != me.public_key {
        return Err(format!(
            "{} does not match router {}'s public_key in {}: relays would refuse its tickets",
            me.signing_key.display(),
            me.id,
            policy.source().display()
        ));
    }
    Ok(key)
}

/// Router `me`'s records keys: its `records_key` file, else the key derived
/// from its signing key; then its `records_key_previous` files.
pub fn records_keys(
    me: &policy::Router,
    signing_key: &SigningKey,
) -> Result<crate::secret::RecordsKeys, String> {
    use crate::secret::{RecordsKey, RecordsKeys};
    let current = match &me.records_key {
        Some(path) => RecordsKey::read(path)?,
        None => RecordsKey::derived_from_signing_key(&signing_key.to_bytes()),
    };
    let previous = me
        .records_key_previous
        .iter()
        .map(|p| RecordsKey::read(p))
        .collect::<Result<Vec<_>, _>>()?;
    Ok(RecordsKeys { current, previous })
}

/// Connections waiting to be accepted, per listener (the kernel caps it at
/// `net.core.somaxconn`). The usual default of 128 overflows when a burst of
/// joins meets a busy router, and an overflow costs the client a one-second
/// SYN retransmission instead of a prompt answer (`429`/`503` included).
pub const LISTEN_BACKLOG: u32 = 4096;

/// A TCP listener on `addr` with [`LISTEN_BACKLOG`] (for the router's API
/// and the relay's HTTP).
pub fn listen(addr: std::net::SocketAddr) -> std::io::Result<tokio::net::TcpListener> {
    let socket = if addr.is_ipv4() {
        tokio::net::TcpSocket::new_v4()?
    } else {
        tokio::net::TcpSocket::new_v6()?
    };
    socket.set_reuseaddr(true)?;
    socket.bind(addr)?;
    socket.listen(LISTEN_BACKLOG)
}

/// Serves the router's HTTP API on `listener` until `shutdown` resolves.
pub async fn run(
    listener: tokio::net::TcpListener,
    settings: Settings,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), RouterError> {
    let tls = match &settings.router.tls {
        Some((cert, key)) => Some(Arc::new(
            crate::tls::ServerCert::load(cert, key).map_err(RouterError::Tls)?,
        )),
        None => None,
    };
    let acme = match (&settings.router.acme, settings.policy.acme()) {
        (Some(name), Some(section)) => {
            let acme = crate::acme::Settings::from_section(
                section,
                &format!("router-{}", settings.router.id),
            )
            .map_err(RouterError::Tls)?;
            Some((crate::acme::Managed::new(name, &acme), acme))
        }
        (Some(_), None) => {
            return Err(RouterError::Tls(
                "the router's certificate is to come over ACME, but the policy has no [acme]"
                    .into(),
            ));
        }
        (None, _) => None,
    };
    let (address_key, records_keys) = bind_store(&settings).await?;
    let relays = Arc::new(
        match settings
            .store
            .replicas
            .as_ref()
            .and_then(|r| r.command_epoch())
        {
            Some(epoch) => relays::Registry::with_epoch(epoch),
            None => relays::Registry::new(),
        },
    );
    let replicas = settings
        .store
        .replicas
        .unwrap_or_else(|| Arc::new(replicas::Alone::new(relays.clone())));
    let shared = Shared {
        relays,
        limiter: Arc::new(limits::Limiter::new(settings.limits)),
        metrics: RouterMetrics::new(&settings.router.id, &settings.policy, &settings.router),
        policy: settings.policy,
        me: settings.router,
        signing_key: settings.signing_key,
        store: settings.store.records,
        replicas,
        store_up: Arc::new(AtomicBool::new(true)),
        address_key,
        records_keys,
        ticket_lifetime: settings.ticket_lifetime,
        waiting_changed: Arc::new(tokio::sync::Notify::new()),
        waiting_polls: Arc::default(),
        ready: Arc::new(AtomicBool::new(true)),
        retired: std::collections::HashMap::new(),
    };
    log_serving(
        &shared,
        tls.as_deref(),
        acme.as_ref().map(|(m, _)| m.as_ref()),
        &listener,
    )?;
    let served_tls = match (&tls, &acme) {
        (Some(cert), _) => Some(cert.server_config()),
        (None, Some((managed, _))) => Some(managed.server_config()),
        (None, None) => None,
    };
    // Obtains the certificate (answering the CA's TLS-ALPN-01 validation
    // on the listener), then renews it ahead of expiry.
    // Stopped with the router, however it ends.
    let _renewing = acme.map(|(managed, acme)| {
        let metrics = &shared.metrics;
        AbortOnDrop(tokio::spawn(managed.run(
            acme,
            crate::acme::Metrics {
                expiry: metrics.tls_cert_expiry.clone(),
                issued: metrics.acme_certificates.clone(),
                failures: metrics.acme_failures.clone(),
            },
        )))
    });
    let ready = shared.ready.clone();
    let live = Arc::new(Live {
        current: RwLock::new(Arc::new(shared)),
        source: settings.source,
        tls: tls.clone(),
        reloading: tokio::sync::Mutex::new(()),
    });
    let app = api::routes(live.clone());
    let mut background = background(&live);
    let hangups = settings
        .reload_on_sighup
        // Listening before serving: a SIGHUP from then on reloads (and
        // never falls to the default action, which ends the process).
        .then(|| {
            tokio::spawn(reload_on_hangup(
                live.clone(),
                crate::signals::Hangups::new(),
            ))
        });
    let proxies = live.clone();
    let options = crate::http_server::Options {
        limits: settings.http,
        metrics: live.load().metrics.http.clone(),
        trusted_proxy: Arc::new(move |ip| {
            proxies
                .load()
                .policy
                .trusted_proxies()
                .iter()
                .any(|n| n.contains(&ip))
        }),
        tls: served_tls.map(tokio_rustls::TlsAcceptor::from),
        unsent_limit: None,
    };
    // The relay channel's own listener: its own caps and connection table,
    // so nothing on the public listener can keep relays from reporting.
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let channel = settings.relay_listener.map(|relays| {
        if let Ok(addr) = relays.local_addr() {
            info!(router = %live.load().me.id, addr = %addr, "relay channel on a listener of its own");
        }
        let app = api::relay_routes(live.clone());
        let options = crate::http_server::Options {
            metrics: live.load().metrics.channel_http.clone(),
            ..options.clone()
        };
        let mut stop = stop_rx.clone();
        tokio::spawn(crate::http_server::serve(relays, app, options, async move {
            let _ = stop.wait_for(|s| *s).await;
        }))
    });
    let result = crate::http_server::serve(listener, app, options, shutdown).await;
    let _ = stop_tx.send(true);
    if let Some(channel) = channel {
        let _ = channel.await;
    }
    ready.store(false, Ordering::Relaxed);
    background.abort_all();
    let last = live.load();
    // The next replica plans at once instead of after the lease expires.
    if let Err(e) = last.replicas.release(planner::PLANNER, &last.me.id).await {
        warn!(error = %e, "could not give the planner lease up");
    }
    if let Some(h) = hangups {
        h.abort();
    }
    if let Err(e) = &result {
        warn!(error = %e, "router HTTP stopped");
    }
    result.map_err(RouterError::Io)
}

/// A task that ends when this is dropped.
struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// Says what the router serves, and how (HTTPS, or plain HTTP behind a
/// TLS-terminating proxy).
fn log_serving(
    shared: &Shared,
    tls: Option<&crate::tls::ServerCert>,
    acme: Option<&crate::acme::Managed>,
    listener: &tokio::net::TcpListener,
) -> std::io::Result<()> {
    let served: Vec<&str> = shared
        .me
        .jurisdictions
        .iter()
        .map(|j| shared.policy.jurisdiction(*j).id.as_str())
        .collect();
    match (tls, acme) {
        (Some(cert), _) => {
            shared.metrics.tls_cert_expiry.set(cert.not_after());
            info!(router = %shared.me.id, addr = %listener.local_addr()?, jurisdictions = ?served, cert_sha256 = %cert.sha256(), "router serving HTTPS");
        }
        (None, Some(managed)) => {
            shared
                .metrics
                .tls_cert_expiry
                .set(managed.not_after().unwrap_or(0));
            info!(
                router = %shared.me.id, addr = %listener.local_addr()?, jurisdictions = ?served,
                name = %shared.me.acme.as_deref().unwrap_or_default(),
                kept = managed.not_after().is_some(),
                "router serving HTTPS with its certificate over ACME (until the first arrives, handshakes fail)"
            );
        }
        (None, None) => warn!(
            router = %shared.me.id, addr = %listener.local_addr()?, jurisdictions = ?served,
            "router serving plain HTTP (plain_http = true): a TLS-terminating proxy in front of it must do TLS"
        ),
    }
    Ok(())
}

/// The store's address salt, and the records key it is bound to (bound
/// now, or rebound after a rotation).
async fn bind_store(
    settings: &Settings,
) -> Result<([u8; 32], crate::secret::RecordsKeys), RouterError> {
    let address_key = settings.store.records.address_key().await?;
    let records_keys =
        records_keys(&settings.router, &settings.signing_key).map_err(RouterError::RecordsKey)?;
    match settings
        .store
        .records
        .bind_records_key(&records_keys)
        .await?
    {
        crate::store::KeyBinding::Same => {}
        crate::store::KeyBinding::Keyed {
            address_hashes,
            passcode_hashes,
        } => info!(
            router = %settings.router.id,
            key = %hex::encode(records_keys.current.id()),
            address_hashes,
            passcode_hashes,
            "store bound to the records key: its address and passcode hashes are keyed"
        ),
        crate::store::KeyBinding::Adopted => warn!(
            router = %settings.router.id,
            key = %hex::encode(records_keys.current.id()),
            "the store had no records key id: bound to this key; hashes made under a lost key match nothing"
        ),
        crate::store::KeyBinding::Rotated { from } => info!(
            router = %settings.router.id,
            from = %hex::encode(from),
            to = %hex::encode(records_keys.current.id()),
            "records key rotated: new hashes use the new key, the previous one still verifies old ones"
        ),
    }
    Ok((address_key, records_keys))
}

/// The router's background work: the planner, the store's health, the
/// retention purge and the other replicas' announcements. It ends with the
/// set, however the router ends (a router stopped by dropping it must not
/// go on planning as a ghost).
fn background(live: &Arc<Live>) -> tokio::task::JoinSet<()> {
    let mut background = tokio::task::JoinSet::new();
    background.spawn(planner::watch(live.clone()));
    background.spawn(watch_store(live.clone()));
    background.spawn(retention::run(live.clone()));
    // Commands another replica stored wake the reports held here; a
    // waiting-room decision made on another replica wakes polls here.
    let (one, all) = (live.clone(), live.clone());
    if let Some(listening) = live.load().replicas.clone().listen(
        Box::new(move |about, payload| {
            let shared = one.load();
            match about {
                Announcement::Commands => shared.relays.wake(payload),
                Announcement::Waiting => shared.waiting_changed.notify_waiters(),
            }
        }),
        Box::new(move || {
            let shared = all.load();
            shared.relays.wake_all();
            shared.waiting_changed.notify_waiters();
        }),
    ) {
        background.spawn(listening);
    }
    background
}

/// How often the store's health is checked, and how long a check may take.
const STORE_CHECK: Duration = Duration::from_millis(500);

/// Checks every [`STORE_CHECK`] that the store answers: `/readyz` and
/// `rr_router_store_up` say so, and the log says when it changes.
async fn watch_store(live: Arc<Live>) {
    let mut tick = tokio::time::interval(STORE_CHECK);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        let shared = live.load();
        let up = matches!(
            tokio::time::timeout(2 * STORE_CHECK, shared.store.ping()).await,
            Ok(Ok(()))
        );
        shared.metrics.store_up.set(i64::from(up));
        if shared.store_up.swap(up, Ordering::Relaxed) != up {
            if up {
                info!("store reachable again");
            } else {
                warn!(
                    "store unreachable: joins and moderation answer 503 store_unavailable; calls in progress continue"
                );
            }
        }
    }
}

/// Reloads the policy on every SIGHUP (outcome in the log and metrics).
async fn reload_on_hangup(live: Arc<Live>, mut hangups: crate::signals::Hangups) {
    while hangups.next().await {
        info!("SIGHUP: reloading the policy");
        let _ = live.reload().await;
    }
}
