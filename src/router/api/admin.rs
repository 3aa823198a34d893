//! The operator's endpoints (admin token): abuse reports, the relays and
//! the conferences they carry, draining a relay, reloading the policy; and
//! a conference's audit log, for the operator or the conference's tenant.

use std::time::Instant;

use axum::Json;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use serde_json::{Value, json};
use tracing::info;

use super::{
    ApiError, ApiResult, App, Current, ErrorBody, Manager, bearer, conference, ids, manager,
    store_failed, tell_relays, unauthorized,
};
use crate::policy::RelayIdx;
use crate::router::Shared;
use crate::wire::channel::Action;

fn admin(shared: &Shared, headers: &HeaderMap) -> ApiResult<()> {
    let token = bearer(headers).ok_or_else(unauthorized)?;
    match &shared.me.admin_token_sha256 {
        Some(h) if ids::secret_matches(h, token) => Ok(()),
        Some(_) => Err(unauthorized()),
        None => Err(ApiError::new(
            StatusCode::FORBIDDEN,
            "no_admin_token",
            "this router has no admin_token_sha256 configured",
        )),
    }
}

/// The newest 1,000 abuse reports.
#[utoipa::path(
    get,
    path = "/v1/admin/reports",
    tag = "admin",
    responses(
        (status = 200, description = "`{reports: [{id, conference, participant_id, reason, created}]}`, newest first.", body = Value),
        (status = 401, description = "`unauthorized`: not the operator's admin token.", body = ErrorBody),
        (status = 403, description = "`no_admin_token`: this router has no `admin_token_sha256` configured.", body = ErrorBody),
        (status = 500, description = "`store_error`.", body = ErrorBody),
    )
)]
pub(super) async fn abuse_reports(
    Current(shared): Current,
    headers: HeaderMap,
) -> ApiResult<Json<Value>> {
    admin(&shared, &headers)?;
    let reports = shared
        .store
        .reports(1000)
        .await
        .map_err(store_failed(&shared))?;
    Ok(Json(json!({ "reports": reports })))
}

/// The relays of this router's jurisdictions and what the router knows of them.
#[utoipa::path(
    get,
    path = "/v1/admin/relays",
    tag = "admin",
    responses(
        (status = 200, description = "`{relays: [{id, country, health, participants, bitrate_bps, conferences, last_report_ms}]}`.", body = Value),
        (status = 401, description = "`unauthorized`: not the operator's admin token.", body = ErrorBody),
        (status = 403, description = "`no_admin_token`: this router has no `admin_token_sha256` configured.", body = ErrorBody),
    )
)]
pub(super) async fn relay_list(
    Current(shared): Current,
    headers: HeaderMap,
) -> ApiResult<Json<Value>> {
    admin(&shared, &headers)?;
    let now = Instant::now();
    let states = shared.relays.states(&shared.policy, now);
    let reports = shared.relays.reports(&shared.policy, now);
    let list: Vec<Value> = shared
        .policy
        .relays()
        .iter()
        .enumerate()
        .filter(|(i, _)| {
            shared
                .me
                .jurisdictions
                .iter()
                .any(|j| shared.policy.jurisdiction(*j).contains(RelayIdx(*i as u32)))
        })
        .map(|(i, r)| {
            let (age, report) = &reports[i];
            json!({
                "id": r.id,
                "country": r.country.to_string(),
                "health": states[i].health,
                "participants": states[i].participants,
                "bitrate_bps": states[i].bitrate_bps,
                "conferences": report.as_ref().map_or(0, |r| r.conferences.len()),
                "last_report_ms": age.map(|a| a.as_millis() as u64),
            })
        })
        .collect();
    Ok(Json(json!({ "relays": list })))
}

/// The conferences relays carry now (for dry runs of policy changes).
#[utoipa::path(
    get,
    path = "/v1/admin/conferences",
    tag = "admin",
    responses(
        (status = 200, description = "`{router, conferences: [{id, jurisdiction, relays, participants}]}`.", body = Value),
        (status = 401, description = "`unauthorized`: not the operator's admin token.", body = ErrorBody),
        (status = 403, description = "`no_admin_token`: this router has no `admin_token_sha256` configured.", body = ErrorBody),
    )
)]
pub(super) async fn live_conferences(
    Current(shared): Current,
    headers: HeaderMap,
) -> ApiResult<Json<Value>> {
    admin(&shared, &headers)?;
    let live = shared.relays.live_conferences(Instant::now());
    let list: Vec<Value> = live
        .into_iter()
        .map(|(id, relays, participants)| {
            json!({
                "id": id,
                "jurisdiction": crate::wire::conference::jurisdiction_of(&id),
                "relays": relays,
                "participants": participants,
            })
        })
        .collect();
    Ok(Json(json!({ "router": shared.me.id, "conferences": list })))
}

/// Drains a relay: it reports draining (so no new joins go there) and
/// tells its participants to reconnect through the router, which moves them
/// to other relays of their jurisdictions.
#[utoipa::path(
    post,
    path = "/v1/admin/relays/{relay}/drain",
    tag = "admin",
    params(("relay" = String, Path, description = "The relay's id in the inventory.")),
    responses(
        (status = 200, description = "`{relay, draining: true}`.", body = Value),
        (status = 401, description = "`unauthorized`: not the operator's admin token.", body = ErrorBody),
        (status = 403, description = "`no_admin_token`: this router has no `admin_token_sha256` configured.", body = ErrorBody),
        (status = 404, description = "`unknown_relay`: no such relay in this router's jurisdictions.", body = ErrorBody),
    )
)]
pub(super) async fn drain_relay(
    Current(shared): Current,
    Path(relay_id): Path<String>,
    headers: HeaderMap,
) -> ApiResult<Json<Value>> {
    admin(&shared, &headers)?;
    let relay = shared
        .policy
        .relay_idx(&relay_id)
        .filter(|r| {
            shared
                .me
                .jurisdictions
                .iter()
                .any(|j| shared.policy.jurisdiction(*j).contains(*r))
        })
        .ok_or_else(|| {
            ApiError::new(
                StatusCode::NOT_FOUND,
                "unknown_relay",
                "no such relay in this router's jurisdictions",
            )
        })?;
    tell_relays(
        &shared,
        &[shared.policy.relay(relay).id.clone()],
        &Action::Drain {},
    )
    .await?;
    info!(relay = %relay_id, "drain requested");
    Ok(Json(json!({ "relay": relay_id, "draining": true })))
}

/// Reloads the policy files (as SIGHUP does): `200` with what changed, or
/// `422` with every problem of files that do not load, or `409` when they
/// load but this router cannot run them; the policy in force stays then.
#[utoipa::path(
    post,
    path = "/v1/admin/reload",
    tag = "admin",
    responses(
        (status = 200, description = "`{applied: true, changes, restart_needed}`.", body = Value),
        (status = 401, description = "`unauthorized`: not the operator's admin token.", body = ErrorBody),
        (status = 403, description = "`no_admin_token`: this router has no `admin_token_sha256` configured.", body = ErrorBody),
        (status = 409, description = "`reload_refused`: the files load but this router cannot run them; the policy in force stays.", body = ErrorBody),
        (status = 422, description = "`invalid_config`, with every problem in `problems`; the policy in force stays.", body = ErrorBody),
    )
)]
pub(super) async fn reload(
    State(live): State<App>,
    Current(shared): Current,
    headers: HeaderMap,
) -> ApiResult<Json<Value>> {
    admin(&shared, &headers)?;
    match live.reload().await {
        Ok(done) => Ok(Json(json!({
            "applied": true,
            "changes": done.changes,
            "restart_needed": done.restart_needed,
        }))),
        Err(crate::router::ReloadError::Invalid(e)) => {
            let problems: Vec<Value> = e
                .problems
                .iter()
                .map(|p| json!({ "file": p.file.display().to_string(), "field": p.field, "message": p.message }))
                .collect();
            let mut error = ApiError::new(
                StatusCode::UNPROCESSABLE_ENTITY,
                "invalid_config",
                format!(
                    "{} problem(s) in the policy files; the policy in force stays",
                    problems.len()
                ),
            );
            error.problems = Some(Value::Array(problems));
            Err(error)
        }
        Err(crate::router::ReloadError::Refused(message)) => Err(ApiError::new(
            StatusCode::CONFLICT,
            "reload_refused",
            format!("{message}; the policy in force stays"),
        )),
    }
}

/// The audit log of one conference: for the operator, or its tenant.
#[utoipa::path(
    get,
    path = "/v1/conferences/{id}/audit",
    tag = "admin",
    params(("id" = String, Path, description = "The conference id.")),
    responses(
        (status = 200, description = "`{events: [{time, conference, event, detail}]}`.", body = Value),
        (status = 401, description = "`unauthorized`: neither the admin token nor the tenant's API key.", body = ErrorBody),
        (status = 403, description = "`forbidden`: a host token; the audit log is for the tenant and the operator.", body = ErrorBody),
        (status = 404, description = "`unknown_conference` (also another tenant's).", body = ErrorBody),
        (status = 421, description = "`wrong_router` (with `router_url`) or `jurisdiction_not_served`.", body = ErrorBody),
        (status = 500, description = "`store_error`.", body = ErrorBody),
    )
)]
pub(super) async fn audit_log(
    Current(shared): Current,
    Path(id): Path<String>,
    headers: HeaderMap,
) -> ApiResult<Json<Value>> {
    let (c, _) = conference(&shared, &id).await?;
    if admin(&shared, &headers).is_err() {
        match manager(&shared, &headers, &c).await? {
            Manager::Tenant => {}
            Manager::Host | Manager::HostPage => {
                return Err(ApiError::new(
                    StatusCode::FORBIDDEN,
                    "forbidden",
                    "the audit log is for the tenant and the operator",
                ));
            }
        }
    }
    let log = shared
        .store
        .audit_log(&id)
        .await
        .map_err(store_failed(&shared))?;
    Ok(Json(json!({ "events": log })))
}
