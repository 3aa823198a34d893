//! Moderation: locking and unlocking a conference, removing (and
//! banning) a participant, and reporting one for abuse.

use axum::Json;
use axum::body::Bytes;
use axum::extract::Path;
use axum::http::{HeaderMap, StatusCode};
use axum::response::IntoResponse;
use serde::Deserialize;
use serde_json::{Value, json};
use utoipa::ToSchema;

use super::{
    ApiError, ApiResult, Current, ErrorBody, Managed, audit, check_text, moderated_relays, parse,
    store_failed, tell_relays, waiting_changed,
};
use crate::clock::unix_now;
use crate::router::Shared;
use crate::store::{Ban, Status};
use crate::wire::channel::Action;

/// Longest abuse-report reason, in characters.
const MAX_REASON: usize = 1000;
/// Longest kick reason, in bytes: the participant reads it in the relay's
/// `kicked` control message, which carries no more.
const MAX_KICK_REASON: usize = crate::wire::control::MAX_LABEL_LEN;

/// Locks the conference: from now on only hosts join.
#[utoipa::path(
    post,
    path = "/v1/conferences/{id}/lock",
    tag = "moderation",
    params(("id" = String, Path, description = "The conference id.")),
    responses(
        (status = 200, description = "`{id, locked: true}`.", body = Value),
        (status = 401, description = "`unauthorized`: not the tenant's API key, the host token or a host's manage token.", body = ErrorBody),
        (status = 404, description = "`unknown_conference` (also another tenant's).", body = ErrorBody),
        (status = 410, description = "`ended`.", body = ErrorBody),
        (status = 421, description = "`wrong_router` (with `router_url`) or `jurisdiction_not_served`.", body = ErrorBody),
        (status = 500, description = "`store_error`.", body = ErrorBody),
    )
)]
pub(super) async fn lock(
    Current(shared): Current,
    Path(id): Path<String>,
    headers: HeaderMap,
) -> ApiResult<Json<Value>> {
    set_lock(&shared, &id, &headers, true).await
}

/// Unlocks the conference.
#[utoipa::path(
    post,
    path = "/v1/conferences/{id}/unlock",
    tag = "moderation",
    params(("id" = String, Path, description = "The conference id.")),
    responses(
        (status = 200, description = "`{id, locked: false}`.", body = Value),
        (status = 401, description = "`unauthorized`: not the tenant's API key, the host token or a host's manage token.", body = ErrorBody),
        (status = 404, description = "`unknown_conference` (also another tenant's).", body = ErrorBody),
        (status = 410, description = "`ended`.", body = ErrorBody),
        (status = 421, description = "`wrong_router` (with `router_url`) or `jurisdiction_not_served`.", body = ErrorBody),
        (status = 500, description = "`store_error`.", body = ErrorBody),
    )
)]
pub(super) async fn unlock(
    Current(shared): Current,
    Path(id): Path<String>,
    headers: HeaderMap,
) -> ApiResult<Json<Value>> {
    set_lock(&shared, &id, &headers, false).await
}

async fn set_lock(
    shared: &Shared,
    id: &str,
    headers: &HeaderMap,
    locked: bool,
) -> ApiResult<Json<Value>> {
    Managed::check(shared, id, headers).await?.open()?;
    shared
        .store
        .set_locked(id, locked)
        .await
        .map_err(store_failed(shared))?;
    let action = if locked { "lock" } else { "unlock" };
    shared.metrics.moderation.with_label_values(&[action]).inc();
    audit(shared, id, action, json!({})).await;
    Ok(Json(json!({ "id": id, "locked": locked })))
}

#[derive(Debug, Default, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
struct KickRequest {
    /// Keep the participant out from now on.
    #[serde(default)]
    ban: bool,
    /// What the participant is told: at most 64 bytes of UTF-8, no control
    /// characters.
    #[schema(max_length = 64, pattern = r"^[^\u0000-\u001F\u007F-\u009F]*$")]
    reason: Option<String>,
}

/// Removes a participant from every relay of the jurisdiction, and with
/// `"ban": true` keeps them (their id, address and invitation) out.
#[utoipa::path(
    post,
    path = "/v1/conferences/{id}/participants/{pid}/kick",
    tag = "moderation",
    params(
        ("id" = String, Path, description = "The conference id."),
        ("pid" = String, Path, description = "The participant's id."),
    ),
    request_body(content = Option<KickRequest>, description = "Optional: an empty body removes without a ban."),
    responses(
        (status = 200, description = "`{participant_id, kicked: true, banned}`.", body = Value),
        (status = 400, description = "`bad_request`: the body, or a reason over 64 bytes.", body = ErrorBody),
        (status = 401, description = "`unauthorized`: not the tenant's API key, the host token or a host's manage token.", body = ErrorBody),
        (status = 404, description = "`unknown_conference` (also another tenant's) or `unknown_participant`.", body = ErrorBody),
        (status = 413, description = "`payload_too_large`: a body over 16 KiB.", body = ErrorBody),
        (status = 421, description = "`wrong_router` (with `router_url`) or `jurisdiction_not_served`.", body = ErrorBody),
        (status = 500, description = "`store_error`.", body = ErrorBody),
    )
)]
pub(super) async fn kick(
    Current(shared): Current,
    Path((id, pid)): Path<(String, String)>,
    headers: HeaderMap,
    body: Bytes,
) -> ApiResult<Json<Value>> {
    let Managed {
        jurisdiction: j, ..
    } = Managed::check(&shared, &id, &headers).await?;
    let request: KickRequest = parse(&body)?;
    let reason = check_text(
        "reason",
        request.reason.as_deref().unwrap_or("removed by a host"),
        MAX_KICK_REASON,
        false,
    )?;
    let p = shared
        .store
        .participant(&id, &pid)
        .await
        .map_err(store_failed(&shared))?
        .ok_or_else(|| {
            ApiError::new(
                StatusCode::NOT_FOUND,
                "unknown_participant",
                "no such participant",
            )
        })?;
    shared
        .store
        .set_status(&id, &pid, Status::Kicked)
        .await
        .map_err(store_failed(&shared))?;
    if request.ban {
        shared
            .store
            .add_ban(&Ban {
                conference: id.clone(),
                participant_id: pid.clone(),
                address_hash: p.address_hash,
                invite_sha256: p.invite_sha256,
                created: unix_now(),
            })
            .await
            .map_err(store_failed(&shared))?;
        shared.metrics.moderation.with_label_values(&["ban"]).inc();
    }
    shared.metrics.moderation.with_label_values(&["kick"]).inc();
    // Every relay of the jurisdiction: the participant may hold a ticket for
    // any of them that it has not used yet.
    tell_relays(
        &shared,
        &moderated_relays(&shared, j, &id),
        &Action::Kick {
            conference: id.clone(),
            participant: pid.clone(),
            reason,
            at: unix_now(),
        },
    )
    .await?;
    waiting_changed(&shared, &id).await;
    audit(
        &shared,
        &id,
        "kick",
        json!({ "participant": pid, "ban": request.ban }),
    )
    .await;
    Ok(Json(
        json!({ "participant_id": pid, "kicked": true, "banned": request.ban }),
    ))
}

#[derive(Debug, Default, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
struct ReportRequest {
    /// What happened: at most 1,000 bytes of UTF-8, not blank, no control
    /// characters.
    #[schema(
        min_length = 1,
        max_length = 1000,
        pattern = r"^[^\u0000-\u001F\u007F-\u009F]*[^\u0000-\u001F\u007F-\u009F \u00A0\u1680\u2000-\u200A\u2028\u2029\u202F\u205F\u3000][^\u0000-\u001F\u007F-\u009F]*$"
    )]
    reason: String,
}

/// Reports a participant for abuse, for the operator to read.
#[utoipa::path(
    post,
    path = "/v1/conferences/{id}/participants/{pid}/report",
    tag = "moderation",
    params(
        ("id" = String, Path, description = "The conference id."),
        ("pid" = String, Path, description = "The participant's id."),
    ),
    request_body = ReportRequest,
    responses(
        (status = 201, description = "`{report_id}`.", body = Value),
        (status = 400, description = "`bad_request`: the body, or an empty reason or one over 1,000 characters.", body = ErrorBody),
        (status = 401, description = "`unauthorized`: not the tenant's API key, the host token or a host's manage token.", body = ErrorBody),
        (status = 404, description = "`unknown_conference` (also another tenant's) or `unknown_participant`.", body = ErrorBody),
        (status = 413, description = "`payload_too_large`: a body over 16 KiB.", body = ErrorBody),
        (status = 421, description = "`wrong_router` (with `router_url`) or `jurisdiction_not_served`.", body = ErrorBody),
        (status = 500, description = "`store_error`.", body = ErrorBody),
    )
)]
pub(super) async fn report_abuse(
    Current(shared): Current,
    Path((id, pid)): Path<(String, String)>,
    headers: HeaderMap,
    body: Bytes,
) -> ApiResult<impl IntoResponse> {
    Managed::check(&shared, &id, &headers).await?;
    let request: ReportRequest = parse(&body)?;
    let reason = check_text("reason", &request.reason, MAX_REASON, true)?;
    if shared
        .store
        .participant(&id, &pid)
        .await
        .map_err(store_failed(&shared))?
        .is_none()
    {
        return Err(ApiError::new(
            StatusCode::NOT_FOUND,
            "unknown_participant",
            "no such participant",
        ));
    }
    let report = shared
        .store
        .add_report(&id, &pid, &reason, unix_now())
        .await
        .map_err(store_failed(&shared))?;
    shared
        .metrics
        .moderation
        .with_label_values(&["report"])
        .inc();
    audit(
        &shared,
        &id,
        "abuse_report",
        json!({ "participant": pid, "report": report }),
    )
    .await;
    Ok((StatusCode::CREATED, Json(json!({ "report_id": report }))))
}
