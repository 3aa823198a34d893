//! The planner: every quarter second, under the policy in force, it takes
//! the other replicas' relay reports, plans cascade links, moves
//! conferences off relays the policy places outside their jurisdiction,
//! logs relays turning healthy or unhealthy and updates the gauges. With
//! replicas, one plans at a time: the holder of the planner lease, whose
//! commands are fenced by its term.

use std::sync::Arc;
use std::time::{Duration, Instant};

use tracing::{info, warn};

use super::Shared;
use super::relays::{Misplaced, send_fenced};
use crate::policy::RelayIdx;
use crate::select::Health;
use crate::store::StoreError;
use crate::wire::channel::Action;

/// How long the planner lease lasts unrenewed: a replica that dies is
/// replaced as planner this long after its last renewal.
pub const PLANNER_LEASE: Duration = Duration::from_secs(2);

/// The lease's name in the store.
pub const PLANNER: &str = "planner";

/// Sends relay `a` a cascade ticket and the command to link to `b` for
/// `conference`, after checking both are inside its jurisdiction.
async fn command_link(
    shared: &Shared,
    conference: &str,
    a: RelayIdx,
    b: RelayIdx,
    term: Option<i64>,
) -> Result<bool, StoreError> {
    let Some(j) = crate::wire::conference::jurisdiction_of(conference)
        .and_then(|j| shared.policy.jurisdiction_idx(j))
        .filter(|j| shared.me.serves(*j))
    else {
        return Ok(true);
    };
    let jurisdiction = shared.policy.jurisdiction(j);
    if !(jurisdiction.contains(a) && jurisdiction.contains(b)) {
        warn!(jurisdiction = %jurisdiction.id, "refusing to plan a cascade link outside the jurisdiction");
        return Ok(true);
    }
    let (from, to) = (shared.policy.relay(a), shared.policy.relay(b));
    let Some(cert) = shared.relays.cert(&to.id) else {
        return Ok(true);
    };
    // The certificates the dialing relay reported: the accepting relay
    // takes the link only from one of them.
    let Some((from_cert, from_next)) = shared.relays.certs(&from.id) else {
        return Ok(true);
    };
    let Ok(nonce) = crate::ticket::new_nonce() else {
        return Ok(true);
    };
    let now = crate::clock::unix_now();
    let ticket = crate::ticket::sign_cascade(
        &crate::ticket::CascadeClaims {
            conference: conference.to_owned(),
            jurisdiction: jurisdiction.id.clone(),
            from: from.id.clone(),
            to: to.id.clone(),
            issued_at: now,
            expires_at: now + 60,
            nonce,
            from_certs: std::iter::once(from_cert).chain(from_next).collect(),
        },
        &shared.signing_key,
    );
    send_fenced(
        shared,
        &[from.id.as_str()],
        &Action::Link {
            conference: conference.to_owned(),
            peer: to.id.clone(),
            peer_addr: to.quic_addr.to_string(),
            peer_cert: cert,
            ticket,
        },
        term,
    )
    .await
}

/// With replicas: takes the reports other replicas received since
/// `version` (returning the new cursor), and takes or renews the planner
/// lease (its term while held).
async fn sync_replicas(shared: &Shared, version: &mut i64, failures: &mut u32) -> Option<i64> {
    let replicas = &shared.replicas;
    let outcome = async {
        let rows = replicas.shared_reports(*version, &shared.me.id).await?;
        let now = Instant::now();
        for row in rows {
            *version = (*version).max(row.version);
            if let Some(report) = row.report {
                shared
                    .relays
                    .record_remote(&row.relay, report, row.age, now);
            }
        }
        replicas.lease(PLANNER, &shared.me.id, PLANNER_LEASE).await
    }
    .await;
    match outcome {
        Ok(term) => {
            if *failures > 0 {
                info!("shared store reachable again: relay reports and planning resume");
            }
            *failures = 0;
            shared.metrics.planner.set(i64::from(term.is_some()));
            term
        }
        Err(e) => {
            *failures += 1;
            if *failures == 1 || *failures % 40 == 0 {
                warn!(error = %e, "cannot reach the shared store: not planning links");
            }
            shared.metrics.planner.set(0);
            None
        }
    }
}

/// Every quarter second, under the policy in force: plan cascade links,
/// move conferences off relays the policy places outside their
/// jurisdiction, log relays turning healthy or unhealthy and update the
/// per-jurisdiction gauges.
pub(super) async fn watch(live: Arc<super::Live>) {
    let mut tick = tokio::time::interval(Duration::from_millis(250));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut ticks = 0u64;
    let (mut version, mut failures) = (0i64, 0u32);
    loop {
        tick.tick().await;
        let shared = live.load();
        ticks += 1;
        let term = sync_replicas(&shared, &mut version, &mut failures).await;
        let now = Instant::now();
        if ticks % 120 == 0 {
            shared.relays.trim(now);
        }
        // With replicas, one plans at a time: the holder of the lease.
        if term.is_none() {
            refresh(&shared, now);
            continue;
        }
        for (conference, a, b) in shared.relays.plan_links(&shared.policy, now) {
            match command_link(&shared, &conference, a, b, term).await {
                Ok(true) => {}
                Ok(false) => {
                    warn!("planner lease lost while planning: another replica plans now");
                    break;
                }
                Err(e) => {
                    shared.metrics.store_errors.inc();
                    warn!(error = %e, "cannot store a link command");
                    break;
                }
            }
        }
        for m in shared
            .relays
            .misplaced(&shared.policy, &shared.me.jurisdictions, now)
        {
            let (relay, action) = match m {
                Misplaced::Relay { conference, relay } => {
                    warn!(relay = %relay, jurisdiction = crate::wire::conference::jurisdiction_of(&conference).unwrap_or_default(), "relay carries a conference outside its jurisdiction under the policy in force: moving its participants");
                    let at = crate::clock::unix_now();
                    (relay, Action::Move { conference, at })
                }
                Misplaced::Link {
                    conference,
                    relay,
                    peer,
                } => {
                    warn!(relay = %relay, peer = %peer, jurisdiction = crate::wire::conference::jurisdiction_of(&conference).unwrap_or_default(), "cascade link to a relay outside the conference's jurisdiction under the policy in force: closing it");
                    (relay, Action::Unlink { conference, peer })
                }
            };
            let conference = match &action {
                Action::Move { conference, .. } | Action::Unlink { conference, .. } => {
                    conference.as_str()
                }
                _ => "",
            };
            shared
                .metrics
                .residency_moves
                .with_label_values(&[
                    crate::wire::conference::jurisdiction_of(conference).unwrap_or_default()
                ])
                .inc();
            if let Err(e) = send_fenced(&shared, &[relay.as_str()], &action, term).await {
                shared.metrics.store_errors.inc();
                warn!(error = %e, "cannot store a residency move");
            }
        }
        refresh(&shared, now);
    }
}

/// Logs relays turning healthy or unhealthy and updates the
/// per-jurisdiction gauges.
fn refresh(shared: &Shared, now: Instant) {
    {
        for (relay, healthy) in shared.relays.refresh(now) {
            if healthy {
                info!(relay = %relay, "relay healthy");
            } else {
                warn!(relay = %relay, "relay unhealthy: stopped reporting or draining; no new joins");
            }
        }
        let states = shared.relays.states(&shared.policy, now);
        let load = shared.relays.load_by_jurisdiction(now);
        for j in &shared.me.jurisdictions {
            let id = shared.policy.jurisdiction(*j).id.as_str();
            let (p, c) = load.get(id).copied().unwrap_or_default();
            shared.metrics.participants.with_label_values(&[id]).set(p);
            shared.metrics.conferences.with_label_values(&[id]).set(c);
        }
        for j in &shared.me.jurisdictions {
            let jurisdiction = shared.policy.jurisdiction(*j);
            let healthy = jurisdiction
                .relays()
                .filter(|r| states[r.index()].health == Health::Healthy)
                .count();
            shared
                .metrics
                .relays_healthy
                .with_label_values(&[jurisdiction.id.as_str()])
                .set(healthy as i64);
        }
    }
}
