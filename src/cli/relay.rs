//! `residency-relay relay`: run one relay of the inventory.

use std::time::Duration;

use crate::forward::CoreConfig;
use crate::policy::Policy;
use crate::relay::{self, Identity, Settings};
use std::process::ExitCode;

use super::args::RelayArgs;

/// Starts the tokio runtime and serves until SIGINT or SIGTERM; SIGHUP
/// reloads the policy from `source`.
pub(super) fn run(
    policy: Policy,
    source: crate::policy::Source,
    id: &str,
    queue_packets: usize,
    shutdown_grace: u64,
    workers: Option<usize>,
    credential: Option<String>,
) -> Result<(), String> {
    crate::logging::init_as(policy.logging());
    let policy = std::sync::Arc::new(policy);
    let mut settings = settings(&policy, id, queue_packets, shutdown_grace, credential)?;
    if let Some(w) = workers {
        if !(1..=crate::policy::MAX_WORKERS).contains(&w) {
            return Err(format!(
                "--workers must be 1 to {}",
                crate::policy::MAX_WORKERS
            ));
        }
        settings.workers = w;
    }
    // One runtime thread per shard: `--workers 1` is a relay on one core.
    let threads = relay::effective_workers(settings.workers);
    settings.reload = Some(relay::Reloading {
        source,
        policy: policy.clone(),
        on_sighup: true,
    });
    let budget = crate::http_server::FdBudget::raise();
    settings.http = budget.fit(&settings.http, 2);
    let websocket_limits = budget.fit(&crate::http_server::Limits::from_policy(policy.limits()), 2);
    let r = policy.relay(policy.relay_idx(id).ok_or("unknown relay")?);
    let (quic, http) = (r.quic_addr, r.http_addr);
    let r = r.clone();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(threads)
        .enable_all()
        .build()
        .map_err(|e| format!("cannot start the runtime: {e}"))?;
    runtime.block_on(async move {
        let socket = std::net::UdpSocket::bind(quic)
            .map_err(|e| format!("cannot bind QUIC on {quic}: {e}"))?;
        let listener =
            crate::router::listen(http).map_err(|e| format!("cannot bind HTTP on {http}: {e}"))?;
        settings.websocket = Some(websocket(&policy, &r, websocket_limits)?);
        relay::run(socket, listener, settings, crate::signals::shutdown())
            .await
            .map_err(|e| e.to_string())
    })
}

/// The host of a `wss://` URL when it is a DNS name (not an address).
pub(super) fn dns_name(url: &str) -> Option<&str> {
    let authority = url.strip_prefix("wss://")?.split(['/', '?', '#']).next()?;
    let host = match authority.rsplit_once(':') {
        Some((h, p)) if p.chars().all(|c| c.is_ascii_digit()) => h,
        _ => authority,
    };
    (!host.is_empty() && !host.starts_with('[') && host.parse::<std::net::IpAddr>().is_err())
        .then_some(host)
}

/// Relay `r`'s WebSocket listener, bound (inside a runtime), with its
/// certificate: `websocket_tls_cert`, else `tls_cert`, else over ACME
/// when the policy has `[acme]` and its `websocket_url` names a host,
/// else the relay's own self-signed one.
pub(super) fn websocket(
    policy: &Policy,
    r: &crate::policy::Relay,
    limits: crate::http_server::Limits,
) -> Result<relay::WebSocketSettings, String> {
    let files = r.websocket_tls.as_ref().or(r.tls.as_ref());
    let cert = match (files, policy.acme(), dns_name(&r.websocket_url)) {
        (Some((cert, key)), _, _) => relay::WebSocketCert::Files(std::sync::Arc::new(
            crate::tls::ServerCert::load(cert, key)?,
        )),
        (None, Some(acme), Some(name)) => {
            let settings = crate::acme::Settings::from_section(acme, &r.id)?;
            let managed = crate::acme::Managed::new(name, &settings);
            relay::WebSocketCert::Acme(managed, settings)
        }
        _ => relay::WebSocketCert::Own,
    };
    // Participants, not page loads: as many from one address as QUIC
    // takes (an office behind one NAT that blocks UDP).
    let mut limits = limits;
    limits.max_per_address =
        (policy.limits().relay_connections_per_address as usize).min(limits.max_connections);
    let addr = r.websocket_addr;
    let listener = crate::router::listen(addr).map_err(|e| {
        format!(
            "relay {}: cannot bind the WebSocket listener on {addr} (TCP): {e}",
            r.id
        )
    })?;
    Ok(relay::WebSocketSettings {
        listener,
        cert,
        limits,
    })
}

/// The settings of relay `id` of the inventory, reporting to the routers of
/// its jurisdictions with `credential` (no reloads; the caller sets
/// [`Settings::reload`] to allow them).
pub(super) fn settings(
    policy: &Policy,
    id: &str,
    queue_packets: usize,
    shutdown_grace: u64,
    credential: Option<String>,
) -> Result<Settings, String> {
    let idx = policy
        .relay_idx(id)
        .ok_or_else(|| format!("no relay '{id}' in {}", policy.source().display()))?;
    let r = policy.relay(idx);
    let identity = match &r.tls {
        Some((cert, key)) => Identity::from_pem_files(cert, key)?,
        None => Identity::self_signed(relay::certificate_names(r.quic_addr))?,
    };
    let settings = Settings {
        relay_id: r.id.clone(),
        identity,
        // Nonces seen before a restart are forgotten: refuse tickets older
        // than this start (less the clock skew allowed).
        verifier: policy
            .ticket_verifier(idx)
            .issued_after(crate::clock::unix_now().saturating_sub(crate::ticket::CLOCK_SKEW_SECS)),
        core: CoreConfig {
            queue_packets,
            // Distinct per relay, so tracks keep their ids across links.
            track_id_base: crate::forward::track_id_base(idx.index()),
            ..CoreConfig::default()
        },
        workers: r.workers.unwrap_or(0),
        shutdown_grace: Duration::from_secs(shutdown_grace),
        hello_timeout: Duration::from_secs(10),
        routers: relay::RouterLink::for_relay(policy, idx),
        credential,
        max_connections_per_address: policy.limits().relay_connections_per_address,
        unvalidated_handshakes: policy.limits().relay_unvalidated_handshakes as usize,
        control_limits: relay::rate::ControlLimits::from_policy(policy.limits()),
        http: crate::http_server::Limits::from_policy(policy.limits()),
        // Bound by the caller ([`run`]).
        websocket: None,
        log_full_addresses: policy.full_address_jurisdictions(),
        reload: None,
        tap: None,
    };
    let mut settings = settings;
    if !settings.routers.is_empty() && settings.credential.is_none() {
        tracing::warn!(
            relay = %id,
            "no credential (--credential-file or RESIDENCY_RELAY_CREDENTIAL): the relay does not report to its routers and gets no joins"
        );
        settings.routers.clear();
    }
    Ok(settings)
}

/// `relay`: runs the inventory's relay `id` until SIGINT/SIGTERM.
pub(super) fn command(a: RelayArgs) -> ExitCode {
    let policy = match super::load(&a.config, a.regions.as_deref()) {
        Ok(p) => p,
        Err(code) => return code,
    };
    let credential = match a.credential_file {
        Some(path) => match std::fs::read_to_string(&path) {
            Ok(text) => Some(text.trim().to_owned()),
            Err(e) => {
                eprintln!("error: cannot read {}: {e}", path.display());
                return ExitCode::FAILURE;
            }
        },
        None => std::env::var("RESIDENCY_RELAY_CREDENTIAL").ok(),
    };
    let source = crate::policy::Source {
        config: a.config,
        regions: a.regions,
    };
    super::report(run(
        policy,
        source,
        &a.id,
        a.queue_packets,
        a.shutdown_grace,
        a.workers,
        credential,
    ))
}
