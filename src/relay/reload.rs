//! Policy reload (SIGHUP, `POST /v1/admin/reload`): the new files are
//! loaded and checked off the runtime, every shard adopts the new trust
//! (moving out conferences whose jurisdiction the relay left and closing
//! links to peers outside), then new connections are checked under it and
//! report tasks follow the routers the policy names.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};

use tokio::sync::{mpsc, oneshot};
use tracing::{info, warn};

use super::channel::{Reporters, Reporting, final_report};
use super::shards::{Event, Shards};
use super::{Metrics, Reloading, RouterLink, Trust};
use crate::policy::{ReloadError, Reloaded};
use crate::ticket::Verifier;

/// What changes of the relay's settings when its policy is reloaded.
#[derive(Debug)]
struct Reconfigured {
    verifier: Verifier,
    /// Routers to report to; `None` keeps those of now.
    routers: Option<Vec<RouterLink>>,
    log_full_addresses: Vec<String>,
    max_connections_per_address: u32,
    /// The relay is no longer in the inventory.
    pub(super) removed: bool,
}

/// What a reload replaces, and where.
pub(super) struct Reloader {
    pub(super) reloading: Reloading,
    pub(super) relay_id: String,
    pub(super) credential: Option<String>,
    pub(super) shards: Shards,
    pub(super) trust: Trust,
    pub(super) max_per_address: Arc<AtomicU32>,
    pub(super) reporters: Arc<std::sync::Mutex<Reporters>>,
    pub(super) reporting: Reporting,
    pub(super) metrics: Metrics,
    /// The start-time floor of tickets ([`Verifier::issued_after`]).
    pub(super) not_before: u64,
    /// Of the trust in force.
    pub(super) generation: u64,
    /// A reload found the relay gone from the inventory.
    pub(super) removed: bool,
}

/// A reload request and where its outcome goes.
pub(super) type ReloadRequest = oneshot::Sender<Result<Reloaded, ReloadError>>;

/// Applies reload requests one at a time.
pub(super) async fn reload_loop(mut r: Reloader, mut requests: mpsc::Receiver<ReloadRequest>) {
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
pub(super) async fn reload_on_hangup(
    requests: mpsc::Sender<ReloadRequest>,
    mut hangups: crate::signals::Hangups,
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
        // The shards first: they adopt the trust, moves conferences whose
        // jurisdiction the relay left and closes links to peers outside
        // before anything else changes.
        let generation = self.generation;
        self.shards
            .broadcast(|| Event::Reload {
                verifier: verifier.clone(),
                log_full_addresses: next.log_full_addresses.clone(),
                generation,
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
                let cert = self.reporting.cert_sha256.borrow().current.clone();
                final_report(
                    link,
                    self.relay_id.clone(),
                    self.reporting.credential.clone(),
                    cert,
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
        if !crate::secret::secret_matches(hash, secret) {
            return Err(ReloadError::Refused(format!(
                "relay '{id}': credential_sha256 no longer matches this relay's credential; restart it with the new credential"
            )));
        }
    }
    let routers = if credential.is_some() {
        RouterLink::for_relay(policy, idx)
    } else {
        Vec::new()
    };
    for link in &routers {
        link.check_trust()
            .map_err(|e| ReloadError::Refused(format!("relay '{id}': {e}")))?;
    }
    Ok(Reconfigured {
        verifier: policy.ticket_verifier(idx),
        routers: Some(routers),
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
    if a.websocket_addr != b.websocket_addr {
        out.push(format!(
            "relay '{id}' websocket_addr {} -> {}",
            a.websocket_addr, b.websocket_addr
        ));
    }
    if a.websocket_tls != b.websocket_tls || a.websocket_url != b.websocket_url {
        out.push(format!(
            "relay '{id}' WebSocket certificate (websocket_tls_cert/websocket_tls_key, or over ACME for the host of websocket_url)"
        ));
    }
    if old.acme() != new.acme() {
        out.push("[acme]".to_owned());
    }
    out
}
