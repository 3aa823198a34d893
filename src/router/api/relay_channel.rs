//! The relay channel: a relay's report of what it carries, authenticated
//! before its body is read, answered with the router's commands (held
//! until there are some); see docs/relay-channel.md.

use std::time::Instant;

use axum::Json;
use axum::extract::Path;
use axum::http::{HeaderMap, StatusCode};
use serde_json::json;
use tracing::warn;

use super::{ApiError, ApiResult, Current, ErrorBody, audit, bearer, ids, read_body, unauthorized};
use crate::clock::unix_now;
use crate::policy::RelayIdx;
use crate::router::Shared;
use crate::store::{LinkUsage, Usage};
use crate::wire::channel::{ConferenceLoad, Enforcement, LinkLoad, RelayReport, ReportReply};

/// Marks requests that came in on the relay channel's own listener.
#[derive(Debug, Clone, Copy)]
pub(super) struct ChannelListener;

/// Largest relay report accepted (some 40,000 conferences).
const MAX_REPORT_BODY: usize = 4 << 20;

/// A relay's report: load, conferences, links and refused tickets; the
/// answer carries the router's commands for it.
#[utoipa::path(
    post,
    path = "/v1/relays/{relay}/report",
    tag = "relay channel",
    params(("relay" = String, Path, description = "The reporting relay's id in the inventory.")),
    request_body(content = Value, description = "A relay report (docs/relay-channel.md), at most 4 MiB."),
    responses(
        (status = 200, description = "`{epoch, commands}`, held up to the channel's hold time while there is nothing to say.", body = Value),
        (status = 400, description = "`bad_request`: not a relay report.", body = ErrorBody),
        (status = 401, description = "`unauthorized`: not the relay's credential.", body = ErrorBody),
        (status = 403, description = "`outside_jurisdiction`: the relay is in none of this router's jurisdictions.", body = ErrorBody),
        (status = 404, description = "`unknown_relay`: no such relay in the inventory.", body = ErrorBody),
        (status = 413, description = "`body_too_large`: a report over 4 MiB.", body = ErrorBody),
        (status = 421, description = "`wrong_listener`: this router takes relay reports on a listener of their own (`relay_listen`), not on its public one.", body = ErrorBody),
    )
)]
pub(super) async fn relay_report(
    Current(shared): Current,
    Path(relay_id): Path<String>,
    on_channel_listener: Option<axum::Extension<ChannelListener>>,
    headers: HeaderMap,
    body: axum::body::Body,
) -> ApiResult<Json<ReportReply>> {
    if shared.me.relay_listen.is_some() && on_channel_listener.is_none() {
        return Err(ApiError::new(
            StatusCode::MISDIRECTED_REQUEST,
            "wrong_listener",
            "relays report on this router's relay listener (relay_listen), not here",
        ));
    }
    let count = |outcome: &str| {
        shared
            .metrics
            .relay_reports
            .with_label_values(&[outcome])
            .inc();
    };
    let relay = authenticate(&shared, &relay_id, &headers, &count)?;
    // Only now, from a relay that proved itself, is the body read: bounded,
    // and within the listener's body timeout.
    let body = read_body(body, MAX_REPORT_BODY).await.inspect_err(|_| {
        count("malformed");
    })?;
    let mut report: RelayReport = serde_json::from_slice(&body).map_err(|e| {
        count("malformed");
        ApiError::new(
            StatusCode::BAD_REQUEST,
            "bad_request",
            format!("not a relay report: {e}"),
        )
    })?;
    keep_believed(&shared, &relay_id, relay, &mut report).await;
    let inside = relay.is_some_and(|relay| {
        shared
            .me
            .jurisdictions
            .iter()
            .any(|j| shared.policy.jurisdiction(*j).contains(relay))
    });

    if !inside && report.conferences.is_empty() && report.links.is_empty() {
        count("outside_jurisdiction");
        warn!(relay = %relay_id, "relay outside every jurisdiction of this router tried to register");
        return Err(ApiError::new(
            StatusCode::FORBIDDEN,
            "outside_jurisdiction",
            "the relay is in none of the jurisdictions this router serves",
        ));
    }
    // Enforcement events name conferences of any jurisdiction this router
    // serves (the relay need not be in it: that is often the point).
    let events = std::mem::take(&mut report.events);
    count("accepted");
    let draining = report.draining;
    let persist = shared.relays.persist_due(&relay_id, Instant::now()) || draining;
    let (current, current_links) = if persist {
        (report.conferences.clone(), report.links.clone())
    } else {
        (Vec::new(), Vec::new())
    };
    let (report_epoch, ack) = (report.epoch, report.ack);
    // With replicas, the others learn the relay's state from the store.
    if let Err(e) = shared
        .replicas
        .share_report(&relay_id, &shared.me.id, &report)
        .await
    {
        shared.metrics.store_errors.inc();
        warn!(error = %e, "cannot share a relay report with the other replicas");
    }
    let recorded = shared.relays.record(&relay_id, report, Instant::now());
    let notify = recorded.notify;
    // Commands wait in the store with replicas: one the store cannot give
    // now comes with a later report (the relay's calls are not affected).
    let pending = |ack: u64| {
        let shared = &shared;
        let relay_id = &relay_id;
        async move {
            crate::router::relays::pending(shared, relay_id, report_epoch, ack)
                .await
                .unwrap_or_else(|e| {
                    shared.metrics.store_errors.inc();
                    warn!(error = %e, "cannot read the relay's commands");
                    Vec::new()
                })
        }
    };
    let commands = pending(ack).await;
    // What the relay carried is written every few seconds (and when it
    // drains), and at once for conferences and links that just left it.
    record_usage(
        &shared,
        &relay_id,
        relay,
        current.iter().chain(&recorded.vanished),
        current_links.iter().chain(&recorded.vanished_links),
    )
    .await;
    audit_enforcement(&shared, &relay_id, relay, events).await;
    let epoch = shared.relays.epoch();
    // A draining relay may be about to stop: answer at once.
    if !commands.is_empty() || draining {
        return Ok(Json(ReportReply { epoch, commands }));
    }
    let notified = notify.notified();
    let _ = tokio::time::timeout(crate::wire::channel::HOLD, notified).await;
    Ok(Json(ReportReply {
        epoch,
        commands: pending(0).await,
    }))
}

/// The reporting relay, by its credential: from the inventory, or, for a
/// relay a reload removed, from the last inventory it was in (it may still
/// carry conferences that must move off it).
fn authenticate(
    shared: &Shared,
    relay_id: &str,
    headers: &HeaderMap,
    count: &dyn Fn(&str),
) -> ApiResult<Option<RelayIdx>> {
    let relay = shared.policy.relay_idx(relay_id);
    let credential = match relay {
        Some(r) => shared.policy.relay(r).credential_sha256,
        None => shared
            .retired
            .get(relay_id)
            .filter(|(_, since)| since.elapsed() < crate::router::RETIRED_FOR)
            .map(|(hash, _)| *hash),
    };
    if relay.is_none() && credential.is_none() {
        count("unknown_relay");
        return Err(ApiError::new(
            StatusCode::NOT_FOUND,
            "unknown_relay",
            "no such relay in the inventory",
        ));
    }
    let authentic = match (&credential, bearer(headers)) {
        (Some(h), Some(token)) => ids::secret_matches(h, token),
        _ => false,
    };
    if !authentic {
        count("bad_credential");
        warn!(relay = %relay_id, "relay report with a bad credential");
        return Err(unauthorized());
    }
    Ok(relay)
}

/// Keeps only what the router believes of a report: this router's
/// conferences, whatever the relay sent; also those of its jurisdictions
/// the relay is no longer in (a policy change moved it out or removed it):
/// they are facts for the residency report, and the router moves them off
/// the relay. Links are kept whoever the peer is, for the same reasons.
async fn keep_believed(
    shared: &Shared,
    relay_id: &str,
    relay: Option<RelayIdx>,
    report: &mut RelayReport,
) {
    let ours = |conference: &str| {
        crate::wire::conference::jurisdiction_of(conference)
            .and_then(|j| shared.policy.jurisdiction_idx(j))
            .is_some_and(|j| shared.me.serves(j))
    };
    let inside_of = |conference: &str| placed_inside(shared, relay, conference);
    // Outside a conference's jurisdiction, a relay is believed only about
    // conferences the router placed on it (before a policy change): it
    // cannot inflate other conferences' sizes or records.
    let mut placed_here = std::collections::HashSet::new();
    let outside: std::collections::BTreeSet<&str> = report
        .conferences
        .iter()
        .map(|c| c.id.as_str())
        .chain(report.links.iter().map(|l| l.conference.as_str()))
        .filter(|c| ours(c) && !inside_of(c))
        .collect();
    for conference in outside {
        let used = shared.store.relays_of(conference).await;
        if used.is_ok_and(|used| used.iter().any(|u| u.relay == relay_id)) {
            placed_here.insert(conference.to_owned());
        }
    }
    let believed = |conference: &str| {
        ours(conference) && (inside_of(conference) || placed_here.contains(conference))
    };
    report.conferences.retain(|c| believed(&c.id));
    report.links.retain(|l| believed(&l.conference));
}

/// Whether the policy in force places `relay` inside `conference`'s
/// jurisdiction.
fn placed_inside(shared: &Shared, relay: Option<RelayIdx>, conference: &str) -> bool {
    relay.is_some_and(|r| {
        crate::wire::conference::jurisdiction_of(conference)
            .and_then(|j| shared.policy.jurisdiction_idx(j))
            .is_some_and(|j| shared.policy.jurisdiction(j).contains(r))
    })
}

/// Writes what the relay carried: `conferences` and `links` with the facts
/// of the policy in force (the relay's country, and whether that policy
/// places it inside each conference's jurisdiction).
async fn record_usage<'a>(
    shared: &Shared,
    relay_id: &str,
    relay: Option<RelayIdx>,
    conferences: impl Iterator<Item = &'a ConferenceLoad>,
    links: impl Iterator<Item = &'a LinkLoad>,
) {
    let country = relay.map_or_else(String::new, |r| shared.policy.relay(r).country.to_string());
    let usage: Vec<Usage<'_>> = conferences
        .map(|c| Usage {
            conference: &c.id,
            participants: c.participants,
            bytes_in: c.bytes_in,
            bytes_out: c.bytes_out,
            country: &country,
            inside: placed_inside(shared, relay, &c.id),
        })
        .collect();
    let links: Vec<LinkUsage<'_>> = links
        .map(|l| LinkUsage {
            conference: &l.conference,
            peer: &l.peer,
            bytes_in: l.bytes_in,
            bytes_out: l.bytes_out,
        })
        .collect();
    if !usage.is_empty() || !links.is_empty() {
        if let Err(e) = shared
            .store
            .record_usage(relay_id, unix_now(), &usage, &links)
            .await
        {
            shared.metrics.store_errors.inc();
            warn!(error = %e, "cannot record relay usage");
        }
    }
}

/// Counts and audits the relay's enforcement events. They are aggregated
/// per conference, kind, reason and peer for each report, and only known
/// codes and inventory relay ids are kept, so refused tickets (which anyone
/// can send a relay) cannot flood the log.
async fn audit_enforcement(
    shared: &Shared,
    relay_id: &str,
    relay: Option<RelayIdx>,
    events: Vec<Enforcement>,
) {
    let mut aggregated: Vec<(Enforcement, u32)> = Vec::new();
    for event in events.into_iter().take(1000) {
        let known_reason = crate::ticket::TicketError::ALL
            .iter()
            .any(|e| e.code() == event.reason);
        let known_peer = event
            .peer
            .as_deref()
            .is_none_or(|p| shared.policy.relay_idx(p).is_some());
        if !known_reason || !known_peer || !matches!(event.kind.as_str(), "ticket" | "cascade") {
            continue;
        }
        let same = aggregated.iter().position(|(e, _)| {
            e.conference == event.conference
                && e.kind == event.kind
                && e.reason == event.reason
                && e.peer == event.peer
        });
        match same {
            Some(i) => aggregated[i].1 += 1,
            None if aggregated.len() < 50 => aggregated.push((event, 1)),
            None => {}
        }
    }
    for (event, count) in aggregated {
        let Some(j) = crate::wire::conference::jurisdiction_of(&event.conference)
            .and_then(|j| shared.policy.jurisdiction_idx(j))
        else {
            continue;
        };
        if !shared.me.serves(j) {
            continue;
        }
        shared
            .metrics
            .enforcement
            .with_label_values(&[event.kind.as_str()])
            .inc_by(u64::from(count));
        // Only conferences this router holds get the line (a forged
        // ticket may name any id).
        if matches!(
            shared.store.conference(&event.conference).await,
            Ok(Some(_))
        ) {
            audit(
                shared,
                &event.conference,
                "enforcement",
                json!({
                    "kind": event.kind,
                    "reason": event.reason,
                    "relay": relay_id,
                    "relay_country": relay.map(|r| shared.policy.relay(r).country.to_string()),
                    "peer": event.peer,
                    "relay_time": event.at,
                    "count": count,
                }),
            )
            .await;
        }
    }
}
