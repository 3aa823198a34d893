//! `residency-relay router`: run one router of the config.

use std::sync::Arc;
use std::time::Duration;

use crate::policy::{self, Policy};
use crate::router::{self, Settings, limits::LimitSettings};
use std::process::ExitCode;

use super::args::RouterArgs;

/// Starts the runtime and serves until SIGINT or SIGTERM.
pub(super) fn run(policy: Policy, id: &str, source: policy::Source) -> Result<(), String> {
    crate::logging::init_as(policy.logging());
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .map_err(|e| format!("cannot start the runtime: {e}"))?;
    runtime.block_on(async move {
        let mut settings = settings(Arc::new(policy), id).await?;
        settings.source = Some(source);
        settings.reload_on_sighup = true;
        let listeners = 1 + usize::from(settings.relay_listener.is_some());
        settings.http = crate::http_server::FdBudget::raise().fit(&settings.http, listeners);
        let listen = settings.router.listen;
        let listener =
            router::listen(listen).map_err(|e| format!("cannot bind HTTP on {listen}: {e}"))?;
        router::run(listener, settings, crate::signals::shutdown())
            .await
            .map_err(|e| e.to_string())
    })
}

/// The settings of router `id`: its signing key read and its store opened
/// (no reloads; the caller sets [`Settings::source`] to allow them).
pub(super) async fn settings(policy: Arc<Policy>, id: &str) -> Result<Settings, String> {
    let me = policy
        .router(id)
        .ok_or_else(|| format!("no router '{id}' in {}", policy.source().display()))?
        .clone();
    let signing_key = router::signing_key(&policy, &me)?;
    let store = crate::store::open(&me.store)
        .await
        .map_err(|e| format!("router '{id}': store {}: {e}", me.store.display()))?;
    let limits = LimitSettings::from_policy(&policy).shared_by(policy.replicas(&me).len());
    let http = crate::http_server::Limits::from_policy(policy.limits());
    let relay_listener = match me.relay_listen {
        Some(addr) => Some(
            router::listen(addr)
                .map_err(|e| format!("router '{id}': cannot bind relay_listen {addr}: {e}"))?,
        ),
        None => None,
    };
    Ok(Settings {
        relay_listener,
        policy,
        router: me,
        signing_key,
        store,
        ticket_lifetime: Duration::from_secs(60),
        limits,
        source: None,
        reload_on_sighup: false,
        http,
    })
}

/// `router`: runs the config's router `id` until SIGINT/SIGTERM.
pub(super) fn command(a: RouterArgs) -> ExitCode {
    let policy = match super::load(&a.config, a.regions.as_deref()) {
        Ok(p) => p,
        Err(code) => return code,
    };
    let source = policy::Source {
        config: a.config,
        regions: a.regions,
    };
    super::report(run(policy, &a.id, source))
}
