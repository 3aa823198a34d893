//! Conferences: creating one (pinned to a jurisdiction by the tenant's
//! plan), its state, invitations to it, and ending it.

use axum::Json;
use axum::body::Bytes;
use axum::extract::Path;
use axum::http::{HeaderMap, StatusCode};
use axum::response::IntoResponse;
use serde::Deserialize;
use serde_json::{Value, json};
use tracing::{info, warn};
use utoipa::ToSchema;

use super::{
    ApiError, ApiResult, Current, ErrorBody, MAX_NAME, Managed, Manager, audit, check_text, ids,
    misdirected, moderated_relays, parse, store_failed, tell_relays, tenant, waiting_changed,
};
use crate::clock::unix_now;
use crate::store::{ConferenceRecord, InviteRecord, Role};
use crate::wire::channel::Action;

/// Default and longest validity of an invitation.
const INVITE_TTL: u64 = 24 * 3600;
const MAX_INVITE_TTL: u64 = 7 * 24 * 3600;

#[derive(Debug, Default, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
struct CreateRequest {
    /// A jurisdiction id, if the plan lets the tenant choose.
    residency: Option<String>,
    /// `false` for a conference joined by invitation only (if the plan allows).
    passcode: Option<bool>,
    /// Hold passcode joiners until a host admits them (default: the tenant's).
    waiting_room: Option<bool>,
    /// End-to-end encrypted (`[[plan]] e2ee` decides whether it may be).
    e2ee: Option<bool>,
}

/// Whether a conference of `plan` is end-to-end encrypted, given the request.
fn e2ee_choice(plan: &crate::policy::Plan, requested: Option<bool>) -> ApiResult<bool> {
    use crate::policy::files::E2eeRule;
    match (plan.e2ee, requested) {
        (E2eeRule::Required, Some(false)) => Err(ApiError::new(
            StatusCode::FORBIDDEN,
            "e2ee_required",
            format!(
                "plan '{}' requires end-to-end encryption on every conference; omit \"e2ee\": false",
                plan.id
            ),
        )),
        (E2eeRule::Off, Some(true)) => Err(ApiError::new(
            StatusCode::FORBIDDEN,
            "e2ee_not_allowed",
            format!(
                "plan '{}' does not offer end-to-end encrypted conferences; omit \"e2ee\": true or move to a plan that does",
                plan.id
            ),
        )),
        (E2eeRule::Required, _) => Ok(true),
        (E2eeRule::Off, _) => Ok(false),
        (E2eeRule::Optional, requested) => Ok(requested.unwrap_or(false)),
    }
}

#[utoipa::path(
    post,
    path = "/v1/conferences",
    tag = "conferences",
    request_body(content = Option<CreateRequest>, description = "Optional: an empty body takes every default."),
    responses(
        (status = 201, description = "Created: `{id, jurisdiction, passcode, host_token, router_url, waiting_room, e2ee}`; the passcode and host token are shown only here.", body = Value),
        (status = 400, description = "`bad_request` (the body), or `unknown_jurisdiction`.", body = ErrorBody),
        (status = 401, description = "`unauthorized`: no tenant API key.", body = ErrorBody),
        (status = 403, description = "The plan refuses: `plan_may_not_choose`, `jurisdiction_not_in_plan`, `passcode_required`, `e2ee_required` or `e2ee_not_allowed`.", body = ErrorBody),
        (status = 413, description = "`payload_too_large`: a body over 16 KiB.", body = ErrorBody),
        (status = 421, description = "`wrong_router` (with `router_url`) or `jurisdiction_not_served`.", body = ErrorBody),
        (status = 500, description = "`store_error` or `internal`.", body = ErrorBody),
    )
)]
pub(super) async fn create_conference(
    Current(shared): Current,
    headers: HeaderMap,
    body: Bytes,
) -> ApiResult<impl IntoResponse> {
    let tenant = tenant(&shared, &headers).ok_or_else(|| {
        ApiError::new(
            StatusCode::UNAUTHORIZED,
            "unauthorized",
            "send Authorization: Bearer <tenant API key>",
        )
    })?;
    let request: CreateRequest = parse(&body)?;
    let plan = shared.policy.plan_of(tenant);
    let j = crate::policy::plan::pin(&shared.policy, plan, request.residency.as_deref()).map_err(
        |e| {
            let status = match e {
                crate::policy::PinError::UnknownJurisdiction { .. } => StatusCode::BAD_REQUEST,
                _ => StatusCode::FORBIDDEN,
            };
            ApiError::new(status, e.code(), e.to_string())
        },
    )?;
    if !shared.me.serves(j) {
        return Err(misdirected(&shared, j));
    }
    let with_passcode = request.passcode.unwrap_or(true);
    if !with_passcode && !plan.allow_no_passcode {
        return Err(ApiError::new(
            StatusCode::FORBIDDEN,
            "passcode_required",
            format!(
                "plan '{}' requires a passcode on every conference; omit \"passcode\": false",
                plan.id
            ),
        ));
    }
    let e2ee = e2ee_choice(plan, request.e2ee)?;
    let jid = shared.policy.jurisdiction(j).id.clone();
    let id = ids::conference_id(&jid)?;
    let passcode = if with_passcode {
        Some(ids::passcode()?)
    } else {
        None
    };
    let host_token = ids::token("hst")?;
    let waiting_room = request
        .waiting_room
        .unwrap_or_else(|| shared.policy.waiting_room_default(tenant));
    let record = ConferenceRecord {
        id: id.clone(),
        tenant: tenant.id.clone(),
        jurisdiction: jid.clone(),
        passcode: passcode
            .as_deref()
            .map(|p| ids::hash_passcode(&shared.records_keys.current, p))
            .transpose()?,
        host_token_sha256: ids::sha256(&host_token),
        locked: false,
        waiting_room,
        created: unix_now(),
        ended: None,
        e2ee,
    };
    shared
        .store
        .insert_conference(&record)
        .await
        .map_err(store_failed(&shared))?;
    shared
        .metrics
        .conferences_created
        .with_label_values(&[jid.as_str()])
        .inc();
    audit(
        &shared,
        &id,
        "conference_created",
        json!({ "tenant": tenant.id, "jurisdiction": jid, "passcode": with_passcode, "waiting_room": waiting_room, "e2ee": e2ee }),
    ).await;
    info!(tenant = %tenant.id, jurisdiction = %jid, "conference created");
    Ok((
        StatusCode::CREATED,
        Json(json!({
            "id": id,
            "jurisdiction": jid,
            "passcode": passcode,
            "host_token": host_token,
            "router_url": shared.me.url,
            "waiting_room": waiting_room,
            "e2ee": e2ee,
        })),
    ))
}

/// A conference's state and the relays that carried it.
#[utoipa::path(
    get,
    path = "/v1/conferences/{id}",
    tag = "conferences",
    params(("id" = String, Path, description = "The conference id.")),
    responses(
        (status = 200, description = "`{id, jurisdiction, locked, waiting_room, e2ee, passcode_required, participants, relays: [{id, country, first_seen, last_seen, participants, bytes_in, bytes_out}], created, ended}`.", body = Value),
        (status = 401, description = "`unauthorized`: not the tenant's API key, the host token or a host's manage token.", body = ErrorBody),
        (status = 404, description = "`unknown_conference` (also another tenant's).", body = ErrorBody),
        (status = 421, description = "`wrong_router` (with `router_url`) or `jurisdiction_not_served`.", body = ErrorBody),
        (status = 500, description = "`store_error`.", body = ErrorBody),
    )
)]
pub(super) async fn conference_state(
    Current(shared): Current,
    Path(id): Path<String>,
    headers: HeaderMap,
) -> ApiResult<Json<Value>> {
    let Managed { conference: c, .. } = Managed::check(&shared, &id, &headers).await?;
    let live = shared.relays.conference(&id);
    let participants: u32 = live.iter().map(|r| r.load.participants).sum();
    let used = shared
        .store
        .relays_of(&id)
        .await
        .map_err(store_failed(&shared))?;
    let relays: Vec<Value> = used
        .iter()
        .map(|u| {
            let here = live.iter().find(|l| l.relay == u.relay);
            let country = shared
                .policy
                .relay_idx(&u.relay)
                .map(|r| shared.policy.relay(r).country.to_string());
            json!({
                "id": u.relay,
                "country": country,
                "first_seen": u.first_seen,
                "last_seen": u.last_seen,
                "participants": here.map_or(0, |l| l.load.participants),
                "bytes_in": here.map_or(0, |l| l.load.bytes_in).max(u.bytes_in),
                "bytes_out": here.map_or(0, |l| l.load.bytes_out).max(u.bytes_out),
            })
        })
        .collect();
    Ok(Json(json!({
        "id": c.id,
        "jurisdiction": c.jurisdiction,
        "locked": c.locked,
        "waiting_room": c.waiting_room,
        "e2ee": c.e2ee,
        "passcode_required": c.passcode.is_some(),
        "participants": participants,
        "relays": relays,
        "created": c.created,
        "ended": c.ended,
    })))
}

#[derive(Debug, Default, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
struct InviteRequest {
    /// The invited participant's name, as others see it: at most 64 bytes
    /// of UTF-8, not blank, no control characters.
    #[schema(
        min_length = 1,
        max_length = 64,
        pattern = r"^[^\u0000-\u001F\u007F-\u009F]*[^\u0000-\u001F\u007F-\u009F \u00A0\u1680\u2000-\u200A\u2028\u2029\u202F\u205F\u3000][^\u0000-\u001F\u007F-\u009F]*$"
    )]
    display_name: String,
    /// `host`, `speaker` (the default) or `viewer`.
    role: Option<InviteRole>,
    /// How long the invitation is valid: 1 s to 7 days (default 24 h).
    #[serde(default, deserialize_with = "super::whole_seconds")]
    #[schema(minimum = 1, maximum = 604800)]
    ttl_seconds: Option<u64>,
}

/// The role an invitation gives.
#[derive(Debug, Clone, Copy, Deserialize, ToSchema)]
#[serde(rename_all = "lowercase")]
enum InviteRole {
    Host,
    Speaker,
    Viewer,
}

impl From<InviteRole> for Role {
    fn from(r: InviteRole) -> Role {
        match r {
            InviteRole::Host => Role::Host,
            InviteRole::Speaker => Role::Speaker,
            InviteRole::Viewer => Role::Viewer,
        }
    }
}

/// An invitation naming one participant, with a role.
#[utoipa::path(
    post,
    path = "/v1/conferences/{id}/invites",
    tag = "conferences",
    params(("id" = String, Path, description = "The conference id.")),
    request_body = InviteRequest,
    responses(
        (status = 201, description = "`{invite, participant_id, role, expires_at}`.", body = Value),
        (status = 400, description = "`bad_request`: the body, the name, the role or `ttl_seconds`.", body = ErrorBody),
        (status = 401, description = "`unauthorized`: not the tenant's API key or the host token.", body = ErrorBody),
        (status = 403, description = "`forbidden`: a host's call page (manage token) creates no invitations.", body = ErrorBody),
        (status = 404, description = "`unknown_conference` (also another tenant's).", body = ErrorBody),
        (status = 410, description = "`ended`.", body = ErrorBody),
        (status = 413, description = "`payload_too_large`: a body over 16 KiB.", body = ErrorBody),
        (status = 421, description = "`wrong_router` (with `router_url`) or `jurisdiction_not_served`.", body = ErrorBody),
        (status = 500, description = "`store_error` or `internal`.", body = ErrorBody),
    )
)]
pub(super) async fn create_invite(
    Current(shared): Current,
    Path(id): Path<String>,
    headers: HeaderMap,
    body: Bytes,
) -> ApiResult<impl IntoResponse> {
    let managed = Managed::check(&shared, &id, &headers).await?;
    if managed.by == Manager::HostPage {
        return Err(ApiError::new(
            StatusCode::FORBIDDEN,
            "forbidden",
            "a host's call page cannot create invitations; the tenant or the host token can",
        ));
    }
    // The request first: a body that is not an invitation is 400 whether
    // or not the conference has ended.
    let request: InviteRequest = parse(&body)?;
    let display_name = check_text("display_name", &request.display_name, MAX_NAME, true)?;
    let role = request.role.map_or(Role::Speaker, Role::from);
    let ttl = request.ttl_seconds.unwrap_or(INVITE_TTL);
    if ttl == 0 || ttl > MAX_INVITE_TTL {
        return Err(ApiError::new(
            StatusCode::BAD_REQUEST,
            "bad_request",
            format!("ttl_seconds must be between 1 and {MAX_INVITE_TTL}"),
        ));
    }
    managed.open()?;
    let token = ids::token("inv")?;
    let participant_id = ids::participant_id()?;
    let expires = unix_now() + ttl;
    shared
        .store
        .insert_invite(&InviteRecord {
            token_sha256: ids::sha256(&token),
            conference: id.clone(),
            participant_id: participant_id.clone(),
            display_name,
            role,
            expires,
        })
        .await
        .map_err(store_failed(&shared))?;
    audit(
        &shared,
        &id,
        "invite_created",
        json!({ "participant": participant_id, "role": role.as_str(), "expires": expires }),
    )
    .await;
    Ok((
        StatusCode::CREATED,
        Json(json!({
            "invite": token,
            "participant_id": participant_id,
            "role": role.as_str(),
            "expires_at": expires,
        })),
    ))
}

/// Ends the conference: its relays close it, and nobody joins it again.
#[utoipa::path(
    post,
    path = "/v1/conferences/{id}/end",
    tag = "conferences",
    params(("id" = String, Path, description = "The conference id.")),
    responses(
        (status = 200, description = "`{id, ended}` (`ended`: Unix seconds).", body = Value),
        (status = 401, description = "`unauthorized`: not the tenant's API key, the host token or a host's manage token.", body = ErrorBody),
        (status = 404, description = "`unknown_conference` (also another tenant's).", body = ErrorBody),
        (status = 410, description = "`ended`: already.", body = ErrorBody),
        (status = 421, description = "`wrong_router` (with `router_url`) or `jurisdiction_not_served`.", body = ErrorBody),
        (status = 500, description = "`store_error`.", body = ErrorBody),
    )
)]
pub(super) async fn end(
    Current(shared): Current,
    Path(id): Path<String>,
    headers: HeaderMap,
) -> ApiResult<Json<Value>> {
    let Managed {
        jurisdiction: j, ..
    } = Managed::check(&shared, &id, &headers).await?.open()?;
    let at = unix_now();
    shared
        .store
        .end_conference(&id, at)
        .await
        .map_err(store_failed(&shared))?;
    tell_relays(
        &shared,
        &moderated_relays(&shared, j, &id),
        &Action::End {
            conference: id.clone(),
            at,
        },
    )
    .await?;
    if let Err(e) = crate::router::relays::forget(&shared, &id).await {
        shared.metrics.store_errors.inc();
        warn!(error = %e, "cannot forget an ended conference's placement");
    }
    waiting_changed(&shared, &id).await;
    shared.metrics.moderation.with_label_values(&["end"]).inc();
    audit(&shared, &id, "end", json!({})).await;
    Ok(Json(json!({ "id": id, "ended": at })))
}
