//! The QUIC endpoint's accept loop: who may start a handshake, and how
//! many connections one address may hold.
//!
//! Connections per source address are counted once the address is known to
//! be real; unproven handshakes beyond a budget must answer a stateless
//! Retry first. Each accepted connection gets a task
//! ([`super::connection::serve_connection`]) holding its address slot.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use tracing::{debug, warn};

use super::connection::serve_connection;
use super::shards::Shards;
use super::{Metrics, Trust, rate};
use crate::wire::close_code;

/// What the accept loop needs.
pub(super) struct Accepting {
    pub(super) endpoint: quinn::Endpoint,
    /// For connections from another relay's address (cascade links).
    pub(super) identity: super::CurrentIdentity,
    pub(super) shards: Shards,
    pub(super) metrics: Metrics,
    pub(super) trust: Trust,
    /// Reloads may change it.
    pub(super) max_per_address: Arc<AtomicU32>,
    pub(super) unvalidated_limit: usize,
    pub(super) hello_timeout: Duration,
    pub(super) control_limits: rate::ControlLimits,
}

/// Accepts connections until the endpoint closes.
pub(super) async fn accept_loop(a: Accepting) {
    let Accepting {
        endpoint,
        identity,
        shards,
        metrics,
        trust,
        max_per_address,
        unvalidated_limit,
        hello_timeout,
        control_limits,
    } = a;
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
        // A proven address is checked and counted at once; an unproven
        // one only checked (it is counted once its handshake completes).
        let max = max_per_address.load(Ordering::Relaxed);
        let (room, counted) = if validated {
            let slot = AddressSlot::try_take(&per_address, ip, max);
            (slot.is_some(), slot)
        } else {
            let counts = per_address.lock().unwrap_or_else(|e| e.into_inner());
            (counts.get(&ip).copied().unwrap_or(0) < max, None)
        };
        if !room {
            metrics
                .connection_refusals
                .with_label_values(&["per_address"])
                .inc();
            incoming.refuse();
            continue;
        }
        // A connection from another relay's QUIC address can only be a
        // cascade link: it is asked for its certificate, which the link's
        // ticket must name. Nobody else is asked (browsers would not cope).
        let from_relay = super::trusted(&trust)
            .1
            .is_peer_addr(incoming.remote_address());
        let connecting = if from_relay {
            let current = identity.read().unwrap_or_else(|e| e.into_inner()).clone();
            match super::link_server_config(&current) {
                Ok(config) => incoming.accept_with(Arc::new(config)),
                Err(e) => {
                    warn!(error = %e, "cannot make the link server config");
                    incoming.refuse();
                    continue;
                }
            }
        } else {
            incoming.accept()
        };
        let connecting = match connecting {
            Ok(c) => c,
            Err(e) => {
                debug!(error = %e, "connection not accepted");
                continue;
            }
        };
        handshaking.fetch_add(1, Ordering::Relaxed);
        let shards = shards.clone();
        let metrics = metrics.clone();
        let trust = trust.clone();
        let per_address = per_address.clone();
        let handshaking = handshaking.clone();
        let max_per_address = max_per_address.clone();
        tokio::spawn(async move {
            let handshake = connecting.await;
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
                serve_connection(conn, shards, metrics, trust, hello_timeout, control_limits).await
            {
                debug!(reason, "connection ended");
            }
            drop(slot);
        });
    }
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
