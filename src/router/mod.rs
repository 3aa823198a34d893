//! The router: the control plane of one or more jurisdictions.
//!
//! It pins tenants' conferences to a jurisdiction (plan rules), lets
//! participants join through GeoIP relay selection inside that jurisdiction
//! with signed tickets bound to one relay, moderates (lock, kick and ban,
//! end, waiting room), keeps its records in a [`Store`](crate::store::Store)
//! and takes relays' load reports ([`channel`]).

pub mod api;
pub mod channel;
pub mod ids;
pub mod limits;
pub mod metrics;
pub mod relays;
pub mod residency;

use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use ed25519_dalek::SigningKey;
use tracing::{info, warn};

use crate::policy::{self, Policy};
use crate::store::Store;

pub use metrics::RouterMetrics;

/// How a router runs.
#[derive(Debug)]
pub struct Settings {
    pub policy: Arc<Policy>,
    /// This router's entry in the policy.
    pub router: policy::Router,
    pub signing_key: SigningKey,
    pub store: Arc<dyn Store>,
    /// Validity of the tickets it signs.
    pub ticket_lifetime: Duration,
    pub limits: limits::LimitSettings,
}

/// Errors that stop the router from starting.
#[derive(Debug, thiserror::Error)]
pub enum RouterError {
    #[error(transparent)]
    Store(#[from] crate::store::StoreError),
    #[error("cannot serve HTTP: {0}")]
    Io(#[from] std::io::Error),
}

/// Everything request handlers share.
#[derive(Debug)]
pub struct Shared {
    pub policy: Arc<Policy>,
    pub me: policy::Router,
    pub signing_key: SigningKey,
    pub store: Arc<dyn Store>,
    pub address_key: [u8; 32],
    pub relays: relays::Registry,
    pub limiter: limits::Limiter,
    pub metrics: RouterMetrics,
    pub ticket_lifetime: Duration,
    /// Woken whenever a waiting participant is admitted or denied.
    pub waiting_changed: tokio::sync::Notify,
    pub ready: AtomicBool,
}

/// Serves the router's HTTP API on `listener` until `shutdown` resolves.
pub async fn run(
    listener: tokio::net::TcpListener,
    settings: Settings,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), RouterError> {
    let address_key = settings.store.address_key()?;
    let shared = Arc::new(Shared {
        relays: relays::Registry::new(&settings.policy),
        limiter: limits::Limiter::new(settings.limits),
        metrics: RouterMetrics::new(&settings.router.id, &settings.policy, &settings.router),
        policy: settings.policy,
        me: settings.router,
        signing_key: settings.signing_key,
        store: settings.store,
        address_key,
        ticket_lifetime: settings.ticket_lifetime,
        waiting_changed: tokio::sync::Notify::new(),
        ready: AtomicBool::new(true),
    });
    let served: Vec<&str> = shared
        .me
        .jurisdictions
        .iter()
        .map(|j| shared.policy.jurisdiction(*j).id.as_str())
        .collect();
    info!(router = %shared.me.id, addr = %listener.local_addr()?, jurisdictions = ?served, "router serving HTTP");
    let app = api::routes(shared.clone());
    let health = tokio::spawn(relays::watch(shared.clone()));
    let result = axum::serve(
        listener,
        app.into_make_service_with_connect_info::<std::net::SocketAddr>(),
    )
    .with_graceful_shutdown(async move {
        shutdown.await;
    })
    .await;
    shared.ready.store(false, Ordering::Relaxed);
    health.abort();
    if let Err(e) = &result {
        warn!(error = %e, "router HTTP stopped");
    }
    result.map_err(RouterError::Io)
}
