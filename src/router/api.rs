//! The router's HTTP API (`/v1`), JSON in and out.
//!
//! Every error is `{"error": {"code", "message"}}` with a fitting status;
//! `421` answers also name the router that serves the conference's
//! jurisdiction (`router_url`), and `429` answers carry `Retry-After`.
//! Request bodies are parsed by hand from bytes so that any malformed body
//! is a `400` with a message, never a panic or a `5xx`.

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use axum::body::Bytes;
use axum::extract::{ConnectInfo, DefaultBodyLimit, MatchedPath, Path, Request, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde::Deserialize;
use serde::de::DeserializeOwned;
use serde_json::{Value, json};
use tracing::{info, warn};

use super::Shared;
use super::ids;
use crate::policy::{JurisdictionIdx, RelayIdx, Tenant};
use crate::select;
use crate::store::{
    AuditEvent, Ban, ConferenceRecord, InviteRecord, InviteRefusal, LinkUsage, ParticipantRecord,
    Role, Status, StoreError, Usage,
};
use crate::ticket::{self, Claims, Grants};
use crate::wire::channel::{Action, RelayReport, ReportReply};

/// Largest request body accepted.
const MAX_BODY: usize = 16 * 1024;
/// Largest relay report accepted (some 40,000 conferences).
const MAX_REPORT_BODY: usize = 4 << 20;
/// Longest display name, in bytes (what relays accept in a ticket).
const MAX_NAME: usize = crate::wire::control::MAX_LABEL_LEN;
/// Longest abuse-report reason, in characters.
const MAX_REASON: usize = 1000;
/// Longest kick reason, in bytes: the participant reads it in the relay's
/// `kicked` control message, which carries no more.
const MAX_KICK_REASON: usize = crate::wire::control::MAX_LABEL_LEN;
/// How long a waiting participant's poll is held before answering "still waiting".
const WAIT_HOLD: Duration = Duration::from_secs(10);
/// Default and longest validity of an invitation.
const INVITE_TTL: u64 = 24 * 3600;
const MAX_INVITE_TTL: u64 = 7 * 24 * 3600;

type App = Arc<super::Live>;

/// The policy in force when the request arrived, used throughout it (see
/// [`super::Live::load`]).
struct Current(Arc<Shared>);

impl axum::extract::FromRequestParts<App> for Current {
    type Rejection = std::convert::Infallible;

    async fn from_request_parts(
        _parts: &mut axum::http::request::Parts,
        live: &App,
    ) -> Result<Self, Self::Rejection> {
        Ok(Current(live.load()))
    }
}

/// The router's routes.
pub fn routes(shared: App) -> Router {
    Router::new()
        .route("/v1/conferences", post(create_conference))
        .route("/v1/conferences/{id}", get(conference_state))
        .route("/v1/conferences/{id}/invites", post(create_invite))
        .route("/v1/conferences/{id}/join", post(join))
        .route("/v1/conferences/{id}/lock", post(lock))
        .route("/v1/conferences/{id}/unlock", post(unlock))
        .route("/v1/conferences/{id}/end", post(end))
        .route("/v1/conferences/{id}/participants/{pid}/kick", post(kick))
        .route(
            "/v1/conferences/{id}/participants/{pid}/report",
            post(report_abuse),
        )
        .route("/v1/conferences/{id}/waiting", get(waiting_list))
        .route("/v1/conferences/{id}/waiting/{pid}", get(waiting_poll))
        .route("/v1/conferences/{id}/waiting/{pid}/admit", post(admit))
        .route("/v1/conferences/{id}/waiting/{pid}/deny", post(deny))
        .route("/v1/conferences/{id}/audit", get(audit_log))
        .route("/v1/conferences/{id}/residency", get(residency_report))
        .route("/v1/admin/reports", get(abuse_reports))
        .route("/v1/admin/relays", get(relay_list))
        .route("/v1/admin/conferences", get(live_conferences))
        .route("/v1/admin/relays/{relay}/drain", post(drain_relay))
        .route("/v1/admin/reload", post(reload))
        // A busy relay's report lists every conference it carries.
        // Authenticated from the headers before its body is read.
        .route("/v1/relays/{relay}/report", post(relay_report))
        .route("/metrics", get(metrics))
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/readyz", get(readyz))
        // The call page, same origin as the API.
        .route("/", get(super::page::index))
        .route("/j/{conference}", get(super::page::index))
        .route("/static/{file}", get(super::page::asset))
        .fallback(|| async {
            ApiError::new(StatusCode::NOT_FOUND, "not_found", "no such endpoint")
        })
        .layer(DefaultBodyLimit::max(MAX_BODY))
        .layer(axum::middleware::from_fn_with_state(shared.clone(), count))
        .with_state(shared)
}

/// Counts every answer by route template and status.
async fn count(Current(shared): Current, request: Request, next: Next) -> Response {
    let route = request
        .extensions()
        .get::<MatchedPath>()
        .map_or_else(|| "unmatched".to_owned(), |m| m.as_str().to_owned());
    let mut response = next.run(request).await;
    let status = response.status();
    shared
        .metrics
        .http_requests
        .with_label_values(&[route.as_str(), status.as_str()])
        .inc();
    // Rejections made by the framework before a handler ran (body too
    // large, undecodable path, wrong method) get the API's error shape too.
    let is_json = response
        .headers()
        .get(header::CONTENT_TYPE)
        .is_some_and(|v| v.as_bytes().starts_with(b"application/json"));
    let probe = matches!(route.as_str(), "/readyz" | "/healthz" | "/metrics");
    if (status.is_client_error() || status.is_server_error()) && !is_json && !probe {
        let code = match status {
            StatusCode::PAYLOAD_TOO_LARGE => "payload_too_large",
            StatusCode::METHOD_NOT_ALLOWED => "method_not_allowed",
            StatusCode::UNSUPPORTED_MEDIA_TYPE => "unsupported_media_type",
            StatusCode::NOT_FOUND => "not_found",
            s if s.is_server_error() => "internal",
            _ => "bad_request",
        };
        let message = status.canonical_reason().unwrap_or("error").to_owned();
        let headers = response.headers().clone();
        response = ApiError::new(status, code, message).into_response();
        if let Some(allow) = headers.get(header::ALLOW) {
            response.headers_mut().insert(header::ALLOW, allow.clone());
        }
    }
    response
}

/// An API error.
#[derive(Debug)]
pub struct ApiError {
    status: StatusCode,
    code: &'static str,
    message: String,
    retry_after: Option<u64>,
    router_url: Option<String>,
    /// Every problem of a refused policy reload.
    problems: Option<Value>,
}

impl ApiError {
    fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> Self {
        ApiError {
            status,
            code,
            message: message.into(),
            retry_after: None,
            router_url: None,
            problems: None,
        }
    }
}

impl From<StoreError> for ApiError {
    fn from(e: StoreError) -> Self {
        warn!(error = %e, "store operation failed");
        ApiError::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "store_error",
            "the router could not read or write its records; try again",
        )
    }
}

impl From<ids::RandomError> for ApiError {
    fn from(e: ids::RandomError) -> Self {
        warn!(error = %e, "no randomness");
        ApiError::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "internal",
            "the router could not make a secret; try again",
        )
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let mut error = json!({ "code": self.code, "message": self.message });
        if let Some(url) = &self.router_url {
            error["router_url"] = json!(url);
        }
        if let Some(problems) = self.problems {
            error["problems"] = problems;
        }
        let mut response = (self.status, Json(json!({ "error": error }))).into_response();
        if let Some(secs) = self.retry_after {
            if let Ok(v) = HeaderValue::from_str(&secs.to_string()) {
                response.headers_mut().insert(header::RETRY_AFTER, v);
            }
        }
        response
    }
}

type ApiResult<T> = Result<T, ApiError>;

fn now_unix() -> u64 {
    crate::relay::unix_now()
}

fn parse<T: DeserializeOwned + Default>(body: &Bytes) -> ApiResult<T> {
    if body.iter().all(u8::is_ascii_whitespace) {
        return Ok(T::default());
    }
    serde_json::from_slice(body).map_err(|e| {
        ApiError::new(
            StatusCode::BAD_REQUEST,
            "bad_request",
            format!("the request body is not the expected JSON: {e}"),
        )
    })
}

fn check_text(field: &str, text: &str, max: usize, required: bool) -> ApiResult<String> {
    let text = text.trim();
    if required && text.is_empty() {
        return Err(ApiError::new(
            StatusCode::BAD_REQUEST,
            "bad_request",
            format!("{field} must not be empty"),
        ));
    }
    if text.len() > max || text.chars().any(char::is_control) {
        return Err(ApiError::new(
            StatusCode::BAD_REQUEST,
            "bad_request",
            format!("{field} must be at most {max} bytes of UTF-8 without control characters"),
        ));
    }
    Ok(text.to_owned())
}

/// Reads a request body of at most `max` bytes.
async fn read_body(body: axum::body::Body, max: usize) -> ApiResult<Bytes> {
    use http_body_util::BodyExt;
    match http_body_util::Limited::new(body, max).collect().await {
        Ok(collected) => Ok(collected.to_bytes()),
        Err(e) if e.is::<http_body_util::LengthLimitError>() => Err(ApiError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "body_too_large",
            format!("the body exceeds {max} bytes"),
        )),
        Err(e) => Err(ApiError::new(
            StatusCode::BAD_REQUEST,
            "bad_request",
            format!("the body did not arrive: {e}"),
        )),
    }
}

fn bearer(headers: &HeaderMap) -> Option<&str> {
    let value = headers.get(header::AUTHORIZATION)?.to_str().ok()?;
    let token = value.strip_prefix("Bearer ")?.trim();
    (!token.is_empty()).then_some(token)
}

fn unauthorized() -> ApiError {
    ApiError::new(
        StatusCode::UNAUTHORIZED,
        "unauthorized",
        "send Authorization: Bearer <tenant API key or host token>",
    )
}

/// The tenant whose API key this is. Every tenant's hash is compared, in
/// constant time, whatever matches.
fn tenant<'a>(shared: &'a Shared, headers: &HeaderMap) -> Option<&'a Tenant> {
    let key = bearer(headers)?;
    let mut found = None;
    for t in shared.policy.tenants() {
        if ids::secret_matches(&t.api_key_sha256, key) {
            found = Some(t);
        }
    }
    found
}

/// Who may manage a conference.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Manager {
    Tenant,
    Host,
    /// A host's call page (a manage token): moderates, but creates no
    /// invitations, so nothing it made outlives its removal.
    HostPage,
}

/// The client's address: the connection's, or the `X-Forwarded-For` entry
/// added by the nearest trusted proxy when the connection comes from one.
fn client_ip(shared: &Shared, peer: SocketAddr, headers: &HeaderMap) -> IpAddr {
    let trusted = |ip: &IpAddr| {
        shared
            .policy
            .trusted_proxies()
            .iter()
            .any(|n| n.contains(ip))
    };
    let peer_ip = peer.ip().to_canonical();
    if !trusted(&peer_ip) {
        return peer_ip;
    }
    let Some(forwarded) = headers
        .get_all("x-forwarded-for")
        .iter()
        .filter_map(|v| v.to_str().ok())
        .collect::<Vec<_>>()
        .join(",")
        .split(',')
        .rev()
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(|s| s.parse::<IpAddr>().map(|ip| ip.to_canonical()))
        .find(|ip| !matches!(ip, Ok(ip) if trusted(ip)))
    else {
        return peer_ip;
    };
    // An unparsable entry: do not guess; use the proxy's own address.
    forwarded.unwrap_or(peer_ip)
}

/// Loads a conference this router serves, or answers 421 / 404.
fn conference(shared: &Shared, id: &str) -> ApiResult<(ConferenceRecord, JurisdictionIdx)> {
    let not_found = || {
        ApiError::new(
            StatusCode::NOT_FOUND,
            "unknown_conference",
            "no such conference",
        )
    };
    let j_id = crate::wire::conference::jurisdiction_of(id).ok_or_else(not_found)?;
    let j = shared.policy.jurisdiction_idx(j_id).ok_or_else(not_found)?;
    if !shared.me.serves(j) {
        return Err(misdirected(shared, j));
    }
    let record = shared.store.conference(id)?.ok_or_else(not_found)?;
    Ok((record, j))
}

/// `421`: the jurisdiction is served elsewhere (or nowhere).
fn misdirected(shared: &Shared, j: JurisdictionIdx) -> ApiError {
    shared.metrics.misdirected.inc();
    let jid = &shared.policy.jurisdiction(j).id;
    match shared.policy.router_for(j) {
        Some(r) => ApiError {
            router_url: Some(r.url.clone()),
            ..ApiError::new(
                StatusCode::MISDIRECTED_REQUEST,
                "wrong_router",
                format!(
                    "jurisdiction '{jid}' is served by router '{}' at {}; this router stores nothing for it",
                    r.id, r.url
                ),
            )
        },
        None => ApiError::new(
            StatusCode::MISDIRECTED_REQUEST,
            "jurisdiction_not_served",
            format!("no router of this operator serves jurisdiction '{jid}'"),
        ),
    }
}

/// Checks the bearer token against the conference's tenant or host token.
fn manager(shared: &Shared, headers: &HeaderMap, c: &ConferenceRecord) -> ApiResult<Manager> {
    let Some(token) = bearer(headers) else {
        return Err(unauthorized());
    };
    if ids::secret_matches(&c.host_token_sha256, token) {
        return Ok(Manager::Host);
    }
    // A host's call page: a manage token from its join answer, good while
    // that participant is still a host here and was not removed.
    if let Some(pid) = super::manage::check(&shared.signing_key, token, &c.id, now_unix()) {
        let host = shared
            .store
            .participant(&c.id, &pid)
            .map_err(store_failed(shared))?
            .is_some_and(|p| p.role == Role::Host && p.status == Status::Joined);
        return if host {
            Ok(Manager::HostPage)
        } else {
            Err(unauthorized())
        };
    }
    match tenant(shared, headers) {
        Some(t) if t.id == c.tenant => Ok(Manager::Tenant),
        // Another tenant's conference looks like no conference at all.
        Some(_) => Err(ApiError::new(
            StatusCode::NOT_FOUND,
            "unknown_conference",
            "no such conference",
        )),
        None => Err(unauthorized()),
    }
}

fn audit(shared: &Shared, conference: &str, event: &str, detail: Value) {
    let entry = AuditEvent {
        time: now_unix(),
        conference: conference.to_owned(),
        event: event.to_owned(),
        detail,
    };
    if let Err(e) = shared.store.audit(&entry) {
        shared.metrics.store_errors.inc();
        warn!(error = %e, event, "audit log write failed");
    }
}

fn store_failed(shared: &Shared) -> impl Fn(StoreError) -> ApiError + '_ {
    move |e| {
        shared.metrics.store_errors.inc();
        ApiError::from(e)
    }
}

// ---------------------------------------------------------------- conferences

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct CreateRequest {
    residency: Option<String>,
    /// `false` for a conference joined by invitation only (if the plan allows).
    passcode: Option<bool>,
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

async fn create_conference(
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
        passcode: passcode.as_deref().map(ids::hash_passcode).transpose()?,
        host_token_sha256: ids::sha256(&host_token),
        locked: false,
        waiting_room,
        created: now_unix(),
        ended: None,
        e2ee,
    };
    shared
        .store
        .insert_conference(&record)
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
    );
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

async fn conference_state(
    Current(shared): Current,
    Path(id): Path<String>,
    headers: HeaderMap,
) -> ApiResult<Json<Value>> {
    let (c, _) = conference(&shared, &id)?;
    manager(&shared, &headers, &c)?;
    let live = shared.relays.conference(&id);
    let participants: u32 = live.iter().map(|r| r.load.participants).sum();
    let used = shared.store.relays_of(&id).map_err(store_failed(&shared))?;
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

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct InviteRequest {
    display_name: String,
    role: Option<String>,
    ttl_seconds: Option<u64>,
}

async fn create_invite(
    Current(shared): Current,
    Path(id): Path<String>,
    headers: HeaderMap,
    body: Bytes,
) -> ApiResult<impl IntoResponse> {
    let (c, _) = conference(&shared, &id)?;
    if manager(&shared, &headers, &c)? == Manager::HostPage {
        return Err(ApiError::new(
            StatusCode::FORBIDDEN,
            "forbidden",
            "a host's call page cannot create invitations; the tenant or the host token can",
        ));
    }
    ended_check(&c)?;
    let request: InviteRequest = parse(&body)?;
    let display_name = check_text("display_name", &request.display_name, MAX_NAME, true)?;
    let role = match request.role.as_deref() {
        None => Role::Speaker,
        Some(r) => Role::parse(r).ok_or_else(|| {
            ApiError::new(
                StatusCode::BAD_REQUEST,
                "bad_request",
                "role must be host, speaker or viewer",
            )
        })?,
    };
    let ttl = request.ttl_seconds.unwrap_or(INVITE_TTL);
    if ttl == 0 || ttl > MAX_INVITE_TTL {
        return Err(ApiError::new(
            StatusCode::BAD_REQUEST,
            "bad_request",
            format!("ttl_seconds must be between 1 and {MAX_INVITE_TTL}"),
        ));
    }
    let token = ids::token("inv")?;
    let participant_id = ids::participant_id()?;
    let expires = now_unix() + ttl;
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
        .map_err(store_failed(&shared))?;
    audit(
        &shared,
        &id,
        "invite_created",
        json!({ "participant": participant_id, "role": role.as_str(), "expires": expires }),
    );
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

fn ended_check(c: &ConferenceRecord) -> ApiResult<()> {
    if c.ended.is_some() {
        Err(ApiError::new(
            StatusCode::GONE,
            "ended",
            "the conference has ended",
        ))
    } else {
        Ok(())
    }
}

// ---------------------------------------------------------------------- joins

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct JoinRequest {
    passcode: Option<String>,
    invite: Option<String>,
    #[serde(default)]
    display_name: String,
    /// Rejoining after a relay failure: the token from the last join answer…
    rejoin: Option<String>,
    /// …for this participant id…
    participant_id: Option<String>,
    /// …and the relay that failed, not to be chosen again now.
    failed_relay: Option<String>,
}

/// A refused join: the error, counted under `reason`.
fn refuse(
    shared: &Shared,
    j: Option<JurisdictionIdx>,
    reason: &'static str,
    e: ApiError,
) -> ApiError {
    shared
        .metrics
        .join_refusals
        .with_label_values(&[reason])
        .inc();
    if let Some(j) = j {
        shared
            .metrics
            .joins
            .with_label_values(&[shared.policy.jurisdiction(j).id.as_str(), "refused"])
            .inc();
    }
    e
}

async fn join(
    Current(shared): Current,
    Path(id): Path<String>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
    body: Bytes,
) -> ApiResult<Response> {
    let started = Instant::now();
    let ip = client_ip(&shared, peer, &headers);
    let request: JoinRequest = parse(&body).map_err(|e| refuse(&shared, None, "bad_request", e))?;
    let (c, j) = conference(&shared, &id).map_err(|e| {
        if e.status == StatusCode::NOT_FOUND {
            refuse(&shared, None, "unknown_conference", e)
        } else {
            e
        }
    })?;
    let result = join_checked(&shared, &c, j, ip, request, started);
    if let Err(e) = &result {
        if e.code == "store_error" {
            shared.metrics.store_errors.inc();
        }
    }
    result
}

fn join_checked(
    shared: &Shared,
    c: &ConferenceRecord,
    j: JurisdictionIdx,
    ip: IpAddr,
    request: JoinRequest,
    started: Instant,
) -> ApiResult<Response> {
    let now = now_unix();
    let refused = |reason: &'static str, e: ApiError| {
        audit(shared, &c.id, "join_refused", json!({ "reason": reason }));
        refuse(shared, Some(j), reason, e)
    };
    if c.ended.is_some() {
        return Err(refused("ended", ended_check(c).unwrap_err()));
    }
    // Counted as a failure until the credential proves right. Invitations
    // are not guessable and skip the per-conference limit.
    let attempt = match shared.limiter.begin(
        ip,
        &c.id,
        request.invite.is_none() && request.rejoin.is_none(),
        Instant::now(),
    ) {
        Ok(attempt) => attempt,
        Err(limit) => {
            let secs = limit.retry_after().as_secs().max(1);
            // Not audited: a flood of refused guesses must not fill the disk.
            return Err(refuse(
                shared,
                Some(j),
                "rate_limited",
                ApiError {
                    retry_after: Some(secs),
                    ..ApiError::new(
                        StatusCode::TOO_MANY_REQUESTS,
                        limit.code(),
                        format!("too many failed joins; try again in {secs} s"),
                    )
                },
            ));
        }
    };
    if let Some(token) = &request.rejoin {
        // A participant whose relay failed comes back without its
        // passcode or invitation, as itself.
        let pid = request.participant_id.as_deref().unwrap_or_default();
        // The token carries its expiry, covered by the stored hash.
        let unexpired = token
            .rsplit_once('.')
            .and_then(|(_, expires)| expires.parse::<u64>().ok())
            .is_some_and(|expires| expires > now);
        let Some(mut p) = shared.store.participant(&c.id, pid)?.filter(|p| {
            unexpired
                && p.rejoin_sha256
                    .is_some_and(|h| ids::secret_matches(&h, token))
        }) else {
            drop(attempt);
            return Err(refused(
                "bad_rejoin",
                ApiError::new(
                    StatusCode::FORBIDDEN,
                    "bad_rejoin",
                    "the rejoin token is not valid for this participant, or has expired; join again with the passcode or invitation",
                ),
            ));
        };
        attempt.succeeded();
        if p.status != Status::Joined
            || shared.store.is_banned(
                &c.id,
                Some(&p.id),
                &p.address_hash,
                p.invite_sha256.as_ref(),
            )?
        {
            return Err(refused(
                "banned",
                ApiError::new(
                    StatusCode::FORBIDDEN,
                    "banned",
                    "a host removed you from this conference",
                ),
            ));
        }
        let failed = request
            .failed_relay
            .as_deref()
            .and_then(|r| shared.policy.relay_idx(r));
        let answer = issue_ticket(shared, c, j, ip, &mut p, None, failed)?;
        return Ok(Json(answer).into_response());
    }
    let address_hash = ids::address_hash(&shared.address_key, ip);
    // Who is joining: an invitation names them, a passcode does not.
    let (invite, display_name) = match (&request.invite, &request.passcode) {
        (Some(token), _) => {
            let hash = ids::sha256(token);
            match shared.store.invite(&hash, &c.id, now)? {
                Ok(invite) => {
                    attempt.succeeded();
                    let name = invite.display_name.clone();
                    (Some(invite), name)
                }
                Err(why) => {
                    drop(attempt);
                    let message = match why {
                        InviteRefusal::Unknown => "the invitation is not valid for this conference",
                        InviteRefusal::Used => "the invitation was already used",
                        InviteRefusal::Expired => "the invitation has expired",
                    };
                    return Err(refused(
                        "bad_invite",
                        ApiError::new(StatusCode::FORBIDDEN, "bad_invite", message),
                    ));
                }
            }
        }
        (None, Some(passcode)) => {
            let ok = c
                .passcode
                .as_ref()
                .is_some_and(|stored| ids::passcode_matches(stored, passcode));
            if !ok {
                drop(attempt);
                info!(
                    jurisdiction = %shared.policy.jurisdiction(j).id,
                    client = %crate::redact::Addr::new(ip, shared.policy.full_addresses(&shared.policy.jurisdiction(j).id)),
                    "join refused: wrong passcode"
                );
                let (code, message) = if c.passcode.is_some() {
                    ("wrong_passcode", "wrong passcode")
                } else {
                    (
                        "invite_required",
                        "this conference is joined by invitation only",
                    )
                };
                return Err(refused(
                    "wrong_passcode",
                    ApiError::new(StatusCode::FORBIDDEN, code, message),
                ));
            }
            attempt.succeeded();
            let name = check_text("display_name", &request.display_name, MAX_NAME, true)
                .map_err(|e| refuse(shared, Some(j), "bad_request", e))?;
            (None, name)
        }
        (None, None) => {
            attempt.succeeded();
            return Err(refused(
                "passcode_required",
                ApiError::new(
                    StatusCode::FORBIDDEN,
                    "passcode_required",
                    "send \"passcode\" or \"invite\"",
                ),
            ));
        }
    };
    let invite_hash = invite.as_ref().map(|i| i.token_sha256);
    let role = invite.as_ref().map_or(Role::Speaker, |i| i.role);
    let participant_id = match &invite {
        Some(i) => i.participant_id.clone(),
        None => ids::participant_id()?,
    };
    let banned_before_v6_prefixes = match ids::full_v6_address_hash(&shared.address_key, ip) {
        Some(full) => shared.store.is_banned(&c.id, None, &full, None)?,
        None => false,
    };
    if banned_before_v6_prefixes
        || shared.store.is_banned(
            &c.id,
            Some(&participant_id),
            &address_hash,
            invite_hash.as_ref(),
        )?
    {
        return Err(refused(
            "banned",
            ApiError::new(
                StatusCode::FORBIDDEN,
                "banned",
                "a host removed you from this conference",
            ),
        ));
    }
    if c.locked && role != Role::Host {
        return Err(refused(
            "locked",
            ApiError::new(
                StatusCode::LOCKED,
                "locked",
                "the conference is locked; ask a host to unlock it",
            ),
        ));
    }
    let mut record = ParticipantRecord {
        id: participant_id.clone(),
        conference: c.id.clone(),
        display_name,
        role,
        status: Status::Joined,
        address_hash,
        invite_sha256: invite_hash,
        wait_token_sha256: None,
        relay: None,
        created: now,
        rejoin_sha256: None,
    };
    // The waiting room holds passcode joiners; invitations name their
    // holder and skip it.
    if c.waiting_room && invite.is_none() {
        let wait_token = ids::token("wait")?;
        record.status = Status::Waiting;
        record.wait_token_sha256 = Some(ids::sha256(&wait_token));
        shared.store.upsert_participant(&record)?;
        audit(
            shared,
            &c.id,
            "waiting",
            json!({ "participant": participant_id }),
        );
        shared
            .metrics
            .joins
            .with_label_values(&[shared.policy.jurisdiction(j).id.as_str(), "waiting"])
            .inc();
        return Ok((
            StatusCode::ACCEPTED,
            Json(json!({
                "waiting": true,
                "participant_id": participant_id,
                "wait_token": wait_token,
                "poll": format!("/v1/conferences/{}/waiting/{}", c.id, participant_id),
            })),
        )
            .into_response());
    }
    // The invitation is claimed with the join's records, atomically: a
    // refusal before that does not burn it, a second use fails there.
    let answer = issue_ticket(shared, c, j, ip, &mut record, invite_hash.as_ref(), None)?;
    shared
        .metrics
        .join_seconds
        .with_label_values(&[shared.policy.jurisdiction(j).id.as_str()])
        .observe(started.elapsed().as_secs_f64());
    Ok(Json(answer).into_response())
}

/// Selects a relay inside the jurisdiction for a participant at `ip`, signs
/// a ticket bound to it, and records the join.
fn issue_ticket(
    shared: &Shared,
    c: &ConferenceRecord,
    j: JurisdictionIdx,
    ip: IpAddr,
    record: &mut ParticipantRecord,
    invite: Option<&[u8; 32]>,
    failed: Option<RelayIdx>,
) -> ApiResult<Value> {
    let jurisdiction = shared.policy.jurisdiction(j);
    let location = shared.policy.geoip().locate(ip);
    // After a restart this run may not know where the conference is yet:
    // the store remembers the relay that carried it last.
    let hint = if shared
        .relays
        .hosting(&shared.policy, &c.id, Instant::now())
        .is_empty()
    {
        shared
            .store
            .relays_of(&c.id)?
            .into_iter()
            .max_by_key(|u| u.last_seen)
            .and_then(|u| shared.policy.relay_idx(&u.relay))
    } else {
        None
    };
    // Each participant goes to the best relay inside the jurisdiction;
    // relays already carrying the conference are preferred (stickiness) and
    // are linked to each other by cascade links.
    let placed = shared.relays.place(
        &shared.policy,
        &c.id,
        hint,
        Instant::now(),
        |states, hosting, size| {
            let max = shared.policy.limits().conference_max_participants;
            if size >= max {
                return Err((
                    "conference_full",
                    format!("the conference has its maximum of {max} participants"),
                ));
            }
            // A relay the participant just lost is not offered again now.
            let mut states = states.to_vec();
            if let Some(s) = failed.and_then(|f| states.get_mut(f.index())) {
                s.health = select::Health::Unhealthy;
            }
            let states = &states[..];
            let hosting: Vec<RelayIdx> = hosting
                .iter()
                .copied()
                .filter(|r| jurisdiction.contains(*r))
                .collect();
            select::select(&shared.policy, j, &location, states, &hosting)
                .map(|d| d.relay)
                .map_err(|refusal| {
                    (
                        refusal.reason.code(),
                        format!(
                            "{} '{}'; no relay outside it is ever used",
                            refusal.reason, jurisdiction.id
                        ),
                    )
                })
        },
    );
    shared
        .metrics
        .route_decisions
        .with_label_values(&[
            jurisdiction.id.as_str(),
            placed
                .as_ref()
                .map_or_else(|(reason, _)| *reason, |_| "relay_chosen"),
        ])
        .inc();
    let relay = match placed {
        Ok(relay) => relay,
        Err((reason, message)) => {
            audit(shared, &c.id, "join_refused", json!({ "reason": reason }));
            // Overload, not a fault: say when to try again.
            let retry = if reason == "conference_full" { 30 } else { 5 };
            return Err(refuse(
                shared,
                Some(j),
                reason,
                ApiError {
                    retry_after: Some(retry),
                    ..ApiError::new(StatusCode::SERVICE_UNAVAILABLE, reason, message)
                },
            ));
        }
    };
    // Residency guard: selection only looks inside the jurisdiction; this
    // makes a future change that breaks that fail closed, not open.
    if !jurisdiction.contains(relay) {
        return Err(refuse(
            shared,
            Some(j),
            "no_healthy_relay",
            ApiError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "no_healthy_relay",
                "no relay inside the jurisdiction",
            ),
        ));
    }
    let r = shared.policy.relay(relay);
    let now = now_unix();
    let grants = match record.role {
        Role::Host => Grants {
            publish: true,
            subscribe: true,
            moderate: true,
        },
        Role::Speaker => Grants {
            publish: true,
            subscribe: true,
            moderate: false,
        },
        Role::Viewer => Grants {
            publish: false,
            subscribe: true,
            moderate: false,
        },
    };
    let claims = Claims {
        e2ee: c.e2ee,
        conference: c.id.clone(),
        jurisdiction: jurisdiction.id.clone(),
        relay: r.id.clone(),
        participant: record.id.clone(),
        display_name: record.display_name.clone(),
        grants,
        issued_at: now,
        expires_at: now + shared.ticket_lifetime.as_secs().max(1),
        nonce: ticket::new_nonce().map_err(|e| ids::RandomError::from_display(&e))?,
    };
    let signed = ticket::sign(&claims, &shared.signing_key);
    record.status = Status::Joined;
    record.relay = Some(r.id.clone());
    // Valid for a bounded time (and never after the conference ends): it
    // lets someone already admitted back in after a relay failure without
    // their passcode, past a lock and the waiting room.
    let rejoin = format!(
        "{}.{}",
        ids::token("rj")?,
        now + u64::from(shared.policy.limits().rejoin_token_secs)
    );
    record.rejoin_sha256 = Some(ids::sha256(&rejoin));
    let event = AuditEvent {
        time: now,
        conference: c.id.clone(),
        event: "join_accepted".into(),
        detail: json!({
            "participant": record.id,
            "role": record.role.as_str(),
            "relay": r.id,
            "relay_country": r.country.to_string(),
            "client_country": location.country().map(|c| c.to_string()),
        }),
    };
    if !shared
        .store
        .record_join(record, &r.id, &r.country.to_string(), &event, invite)?
    {
        let (reason, message) = if invite.is_some() {
            ("bad_invite", "the invitation was already used")
        } else {
            ("banned", "a host removed you from this conference")
        };
        return Err(refuse(
            shared,
            Some(j),
            reason,
            ApiError::new(StatusCode::FORBIDDEN, reason, message),
        ));
    }
    shared
        .metrics
        .joins
        .with_label_values(&[jurisdiction.id.as_str(), "ticket"])
        .inc();
    info!(
        jurisdiction = %jurisdiction.id,
        relay = %r.id,
        client = %crate::redact::Addr::new(ip, shared.policy.full_addresses(&jurisdiction.id)),
        participant = %crate::redact::Id(&record.id),
        name = %crate::redact::Name(&record.display_name),
        "join accepted"
    );
    let (cert, next_cert) = shared.relays.certs(&r.id).unzip();
    let mut answer = json!({
        "relay": {
            "id": r.id,
            "country": r.country.to_string(),
            "country_name": r.country.name(),
            "city": r.city,
            "quic_addr": r.quic_addr.to_string(),
            "webtransport_url": r.webtransport_url,
            "cert_sha256": cert,
            // The certificate the relay switches to at its next renewal:
            // browsers pin both.
            "cert_sha256_next": next_cert.flatten(),
            // A self-signed certificate: browsers pin its hash
            // (`serverCertificateHashes`); one from files is CA-issued.
            "webtransport_pin": r.tls.is_none(),
        },
        "jurisdiction": {
            "id": jurisdiction.id,
            "name": jurisdiction.name,
            "legal_basis": jurisdiction.legal_basis,
        },
        "ticket": signed,
        "participant_id": record.id,
        "display_name": record.display_name,
        "role": record.role.as_str(),
        // End-to-end encrypted: the page refuses to join media without the
        // link's key, and publishes encrypted tracks only.
        "e2ee": c.e2ee,
        "expires_at": claims.expires_at,
        "rejoin_token": rejoin,
    });
    if record.role == Role::Host {
        answer["manage_token"] = json!(super::manage::issue(
            &shared.signing_key,
            &c.id,
            &record.id,
            now + super::manage::LIFETIME_SECS,
        ));
    }
    Ok(answer)
}

// ---------------------------------------------------------------- waiting room

async fn waiting_list(
    Current(shared): Current,
    Path(id): Path<String>,
    headers: HeaderMap,
) -> ApiResult<Json<Value>> {
    let (c, _) = conference(&shared, &id)?;
    manager(&shared, &headers, &c)?;
    let waiting = shared.store.waiting(&id).map_err(store_failed(&shared))?;
    let list: Vec<Value> = waiting
        .iter()
        .map(|p| json!({ "participant_id": p.id, "display_name": p.display_name, "since": p.created }))
        .collect();
    Ok(Json(json!({ "waiting": list })))
}

/// The waiting participant's poll: held until a host decides or
/// [`WAIT_HOLD`] passes, so a client that polls again at once never asks
/// more often than that.
async fn waiting_poll(
    State(live): State<App>,
    Path((id, pid)): Path<(String, String)>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
) -> ApiResult<Response> {
    let token = bearer(&headers).ok_or_else(unauthorized)?.to_owned();
    let deadline = tokio::time::Instant::now() + WAIT_HOLD;
    loop {
        // The policy in force now: the poll is held across reloads.
        let shared = live.load();
        let changed = shared.waiting_changed.notified();
        tokio::pin!(changed);
        changed.as_mut().enable();
        let (c, j) = conference(&shared, &id)?;
        let mut p = shared
            .store
            .participant(&id, &pid)
            .map_err(store_failed(&shared))?
            .filter(|p| {
                p.wait_token_sha256
                    .is_some_and(|h| ids::secret_matches(&h, &token))
            })
            .ok_or_else(|| {
                ApiError::new(
                    StatusCode::NOT_FOUND,
                    "unknown_participant",
                    "no such waiting participant for this token",
                )
            })?;
        if c.ended.is_some() {
            return Err(refuse(
                &shared,
                Some(j),
                "ended",
                ended_check(&c).unwrap_err(),
            ));
        }
        match p.status {
            Status::Admitted => {
                let started = Instant::now();
                let ip = client_ip(&shared, peer, &headers);
                // A ban after the admission still holds.
                if shared.store.is_banned(
                    &id,
                    Some(&p.id),
                    &p.address_hash,
                    p.invite_sha256.as_ref(),
                )? {
                    return Err(refuse(
                        &shared,
                        Some(j),
                        "banned",
                        ApiError::new(
                            StatusCode::FORBIDDEN,
                            "banned",
                            "a host removed you from this conference",
                        ),
                    ));
                }
                // One ticket per admission, whatever polls race for it.
                if !shared
                    .store
                    .set_status_if(&id, &p.id, Status::Admitted, Status::Joined)?
                {
                    continue;
                }
                let answer = match issue_ticket(&shared, &c, j, ip, &mut p, None, None) {
                    Ok(answer) => answer,
                    Err(e) => {
                        // Still admitted: the participant may ask again.
                        shared.store.set_status(&id, &p.id, Status::Admitted)?;
                        return Err(e);
                    }
                };
                shared
                    .metrics
                    .join_seconds
                    .with_label_values(&[shared.policy.jurisdiction(j).id.as_str()])
                    .observe(started.elapsed().as_secs_f64());
                return Ok(Json(answer).into_response());
            }
            Status::Denied | Status::Kicked => {
                return Err(refuse(
                    &shared,
                    Some(j),
                    "denied",
                    ApiError::new(StatusCode::FORBIDDEN, "denied", "a host did not let you in"),
                ));
            }
            Status::Joined => {
                return Err(ApiError::new(
                    StatusCode::CONFLICT,
                    "already_joined",
                    "this participant already has its ticket; join again with the passcode",
                ));
            }
            Status::Waiting => {}
        }
        tokio::select! {
            _ = changed => {}
            _ = tokio::time::sleep_until(deadline) => {
                return Ok(Json(json!({ "waiting": true, "participant_id": pid })).into_response());
            }
        }
    }
}

async fn admit(
    Current(shared): Current,
    Path((id, pid)): Path<(String, String)>,
    headers: HeaderMap,
) -> ApiResult<Json<Value>> {
    decide(&shared, &id, &pid, &headers, Status::Admitted).await
}

async fn deny(
    Current(shared): Current,
    Path((id, pid)): Path<(String, String)>,
    headers: HeaderMap,
) -> ApiResult<Json<Value>> {
    decide(&shared, &id, &pid, &headers, Status::Denied).await
}

async fn decide(
    shared: &Shared,
    id: &str,
    pid: &str,
    headers: &HeaderMap,
    status: Status,
) -> ApiResult<Json<Value>> {
    let (c, _) = conference(shared, id)?;
    manager(shared, headers, &c)?;
    ended_check(&c)?;
    let p = shared
        .store
        .participant(id, pid)
        .map_err(store_failed(shared))?
        .filter(|p| p.status == Status::Waiting)
        .ok_or_else(|| {
            ApiError::new(
                StatusCode::NOT_FOUND,
                "unknown_participant",
                "no such participant in the waiting room",
            )
        })?;
    shared
        .store
        .set_status(id, &p.id, status)
        .map_err(store_failed(shared))?;
    let action = if status == Status::Admitted {
        "admit"
    } else {
        "deny"
    };
    shared.metrics.moderation.with_label_values(&[action]).inc();
    audit(shared, id, action, json!({ "participant": p.id }));
    shared.waiting_changed.notify_waiters();
    Ok(Json(json!({ "participant_id": p.id, "status": status })))
}

// ------------------------------------------------------------------ moderation

async fn lock(
    Current(shared): Current,
    Path(id): Path<String>,
    headers: HeaderMap,
) -> ApiResult<Json<Value>> {
    set_lock(&shared, &id, &headers, true)
}

async fn unlock(
    Current(shared): Current,
    Path(id): Path<String>,
    headers: HeaderMap,
) -> ApiResult<Json<Value>> {
    set_lock(&shared, &id, &headers, false)
}

fn set_lock(
    shared: &Shared,
    id: &str,
    headers: &HeaderMap,
    locked: bool,
) -> ApiResult<Json<Value>> {
    let (c, _) = conference(shared, id)?;
    manager(shared, headers, &c)?;
    ended_check(&c)?;
    shared
        .store
        .set_locked(id, locked)
        .map_err(store_failed(shared))?;
    let action = if locked { "lock" } else { "unlock" };
    shared.metrics.moderation.with_label_values(&[action]).inc();
    audit(shared, id, action, json!({}));
    Ok(Json(json!({ "id": id, "locked": locked })))
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct KickRequest {
    #[serde(default)]
    ban: bool,
    reason: Option<String>,
}

async fn kick(
    Current(shared): Current,
    Path((id, pid)): Path<(String, String)>,
    headers: HeaderMap,
    body: Bytes,
) -> ApiResult<Json<Value>> {
    let (c, j) = conference(&shared, &id)?;
    manager(&shared, &headers, &c)?;
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
        .map_err(store_failed(&shared))?;
    if request.ban {
        shared
            .store
            .add_ban(&Ban {
                conference: id.clone(),
                participant_id: pid.clone(),
                address_hash: p.address_hash,
                invite_sha256: p.invite_sha256,
                created: now_unix(),
            })
            .map_err(store_failed(&shared))?;
        shared.metrics.moderation.with_label_values(&["ban"]).inc();
    }
    shared.metrics.moderation.with_label_values(&["kick"]).inc();
    // Every relay of the jurisdiction: the participant may hold a ticket for
    // any of them that it has not used yet.
    shared.relays.command(
        moderated_relays(&shared, j, &id).iter().map(String::as_str),
        &Action::Kick {
            conference: id.clone(),
            participant: pid.clone(),
            reason,
            at: now_unix(),
        },
    );
    shared.waiting_changed.notify_waiters();
    audit(
        &shared,
        &id,
        "kick",
        json!({ "participant": pid, "ban": request.ban }),
    );
    Ok(Json(
        json!({ "participant_id": pid, "kicked": true, "banned": request.ban }),
    ))
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct ReportRequest {
    #[serde(default)]
    reason: String,
}

async fn report_abuse(
    Current(shared): Current,
    Path((id, pid)): Path<(String, String)>,
    headers: HeaderMap,
    body: Bytes,
) -> ApiResult<impl IntoResponse> {
    let (c, _) = conference(&shared, &id)?;
    manager(&shared, &headers, &c)?;
    let request: ReportRequest = parse(&body)?;
    let reason = check_text("reason", &request.reason, MAX_REASON, true)?;
    if shared
        .store
        .participant(&id, &pid)
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
        .add_report(&id, &pid, &reason, now_unix())
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
    );
    Ok((StatusCode::CREATED, Json(json!({ "report_id": report }))))
}

async fn end(
    Current(shared): Current,
    Path(id): Path<String>,
    headers: HeaderMap,
) -> ApiResult<Json<Value>> {
    let (c, j) = conference(&shared, &id)?;
    manager(&shared, &headers, &c)?;
    ended_check(&c)?;
    let at = now_unix();
    shared
        .store
        .end_conference(&id, at)
        .map_err(store_failed(&shared))?;
    shared.relays.command(
        moderated_relays(&shared, j, &id).iter().map(String::as_str),
        &Action::End {
            conference: id.clone(),
            at,
        },
    );
    shared.relays.forget(&id);
    shared.waiting_changed.notify_waiters();
    shared.metrics.moderation.with_label_values(&["end"]).inc();
    audit(&shared, &id, "end", json!({}));
    Ok(Json(json!({ "id": id, "ended": at })))
}

// ------------------------------------------------------------ residency report

/// Where the conference's media and metadata went: every relay and router
/// that recorded handling it, with countries, times and bytes, the cascade
/// links, and the refused tickets and links naming it; signed.
async fn residency_report(
    Current(shared): Current,
    Path(id): Path<String>,
    headers: HeaderMap,
) -> ApiResult<Json<Value>> {
    let (c, j) = conference(&shared, &id)?;
    manager(&shared, &headers, &c)?;
    let jurisdiction = shared.policy.jurisdiction(j);
    let live = shared.relays.conference(&id);
    let live_links = shared.relays.conference_links(&id);
    let used = shared.store.relays_of(&id).map_err(store_failed(&shared))?;
    let links = shared.store.links_of(&id).map_err(store_failed(&shared))?;
    let log = shared.store.audit_log(&id).map_err(store_failed(&shared))?;
    let relay_facts = |relay_id: &str| {
        shared.policy.relay_idx(relay_id).map(|r| {
            let relay = shared.policy.relay(r);
            let jurisdictions: Vec<&str> = shared
                .policy
                .jurisdictions_of(r)
                .map(|j| j.id.as_str())
                .collect();
            (
                relay.country.to_string(),
                jurisdictions,
                jurisdiction.contains(r),
            )
        })
    };
    // Countries and inside-ness as recorded while each relay carried the
    // conference (a later reload does not rewrite them); the policy in
    // force only for records older than the store's schema 4.
    let recorded = |relay_id: &str| {
        used.iter()
            .find(|u| u.relay == relay_id && !u.countries.is_empty())
            .map(|u| u.countries[0].clone())
    };
    let relays: Vec<Value> = used
        .iter()
        .map(|u| {
            let here = live.iter().find(|l| l.relay == u.relay);
            let (country, jurisdictions, inside) = if u.countries.is_empty() {
                relay_facts(&u.relay).map_or((None, Vec::new(), false), |(c, j, i)| {
                    (Some(c), j, i && !u.outside)
                })
            } else {
                let jurisdictions = crate::policy::CountryCode::parse(&u.countries[0])
                    .map(|c| {
                        shared
                            .policy
                            .jurisdictions()
                            .iter()
                            .filter(|j| j.countries.contains(c))
                            .map(|j| j.id.as_str())
                            .collect()
                    })
                    .unwrap_or_default();
                (Some(u.countries[0].clone()), jurisdictions, !u.outside)
            };
            json!({
                "id": u.relay,
                "country": country,
                "countries": u.countries,
                "jurisdictions": jurisdictions,
                "inside_jurisdiction": inside,
                "first_seen": u.first_seen,
                "last_seen": u.last_seen,
                "bytes_in": here.map_or(0, |l| l.load.bytes_in).max(u.bytes_in),
                "bytes_out": here.map_or(0, |l| l.load.bytes_out).max(u.bytes_out),
                "peak_participants": here.map_or(0, |l| l.load.participants).max(u.peak_participants),
            })
        })
        .collect();
    // Links the relays reported but not yet written to the store.
    let mut links = links;
    for (relay, l) in &live_links {
        if !links.iter().any(|x| x.relay == *relay && x.peer == l.peer) {
            links.push(crate::store::LinkUse {
                relay: relay.clone(),
                peer: l.peer.clone(),
                first_seen: now_unix(),
                last_seen: now_unix(),
                bytes_in: l.bytes_in,
                bytes_out: l.bytes_out,
            });
        }
    }
    let links: Vec<Value> = links
        .iter()
        .map(|l| {
            let here = live_links
                .iter()
                .find(|(r, x)| *r == l.relay && x.peer == l.peer);
            json!({
                "relay": l.relay,
                "peer": l.peer,
                "relay_country": recorded(&l.relay).or_else(|| relay_facts(&l.relay).map(|f| f.0)),
                "peer_country": recorded(&l.peer).or_else(|| relay_facts(&l.peer).map(|f| f.0)),
                "first_seen": l.first_seen,
                "last_seen": l.last_seen,
                "bytes_in": here.map_or(0, |(_, x)| x.bytes_in).max(l.bytes_in),
                "bytes_out": here.map_or(0, |(_, x)| x.bytes_out).max(l.bytes_out),
            })
        })
        .collect();
    let enforcement: Vec<Value> = log
        .iter()
        .filter(|e| e.event == "enforcement")
        .map(|e| {
            let mut v = e.detail.clone();
            v["time"] = json!(e.time);
            v
        })
        .collect();
    let last_record = log.iter().map(|e| e.time).max().unwrap_or(c.created);
    let report = json!({
        "conference": c.id,
        "tenant": c.tenant,
        "jurisdiction": jurisdiction.id,
        "jurisdiction_name": jurisdiction.name,
        "legal_basis": jurisdiction.legal_basis,
        "created": c.created,
        "ended": c.ended,
        "generated_at": now_unix(),
        "routers": [{
            "id": shared.me.id,
            "country": shared.me.country.to_string(),
            "jurisdictions": shared.me.jurisdictions.iter().map(|j| shared.policy.jurisdiction(*j).id.clone()).collect::<Vec<_>>(),
            "inside_jurisdiction": jurisdiction.countries.contains(shared.me.country),
            "role": "created the conference; stores its records and audit log",
            "first_seen": c.created,
            "last_seen": last_record,
        }],
        "relays": relays,
        "links": links,
        "enforcement": enforcement,
        // What the router recorded and put in every ticket; whether clients
        // encrypted is theirs to show (relays refused undeclared tracks).
        "e2ee": {
            "declared": c.e2ee,
            "basis": if c.e2ee {
                "the conference was created end-to-end encrypted: every ticket the router issued for it said so, and relays refuse tracks not declared encrypted; keys are made and held by participants' devices only"
            } else {
                "the conference was created without end-to-end encryption: media is encrypted in transit to and between relays only"
            },
        },
    });
    Ok(Json(super::residency::sign(report, &shared.signing_key)))
}

// ----------------------------------------------------------- operator and audit

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

async fn abuse_reports(Current(shared): Current, headers: HeaderMap) -> ApiResult<Json<Value>> {
    admin(&shared, &headers)?;
    let reports = shared.store.reports(1000).map_err(store_failed(&shared))?;
    Ok(Json(json!({ "reports": reports })))
}

/// The relays of this router's jurisdictions and what the router knows of them.
async fn relay_list(Current(shared): Current, headers: HeaderMap) -> ApiResult<Json<Value>> {
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
async fn live_conferences(Current(shared): Current, headers: HeaderMap) -> ApiResult<Json<Value>> {
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

/// The relays a moderation command for `conference` goes to: every relay of
/// its jurisdiction (the participant may hold a ticket for any of them not
/// yet used), and any other still carrying it (one a reload placed outside).
fn moderated_relays(shared: &Shared, j: JurisdictionIdx, conference: &str) -> Vec<String> {
    let mut relays: Vec<String> = shared
        .policy
        .jurisdiction(j)
        .relays()
        .map(|r| shared.policy.relay(r).id.clone())
        .collect();
    for c in shared.relays.conference(conference) {
        if !relays.contains(&c.relay) {
            relays.push(c.relay);
        }
    }
    relays
}

/// Drains a relay: it reports draining (so no new joins go there) and
/// tells its participants to reconnect through the router, which moves them
/// to other relays of their jurisdictions.
async fn drain_relay(
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
    shared
        .relays
        .command([shared.policy.relay(relay).id.as_str()], &Action::Drain {});
    info!(relay = %relay_id, "drain requested");
    Ok(Json(json!({ "relay": relay_id, "draining": true })))
}

/// Reloads the policy files (as SIGHUP does): `200` with what changed, or
/// `422` with every problem of files that do not load, or `409` when they
/// load but this router cannot run them; the policy in force stays then.
async fn reload(
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
        Err(super::ReloadError::Invalid(e)) => {
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
        Err(super::ReloadError::Refused(message)) => Err(ApiError::new(
            StatusCode::CONFLICT,
            "reload_refused",
            format!("{message}; the policy in force stays"),
        )),
    }
}

/// The audit log of one conference: for the operator, or its tenant.
async fn audit_log(
    Current(shared): Current,
    Path(id): Path<String>,
    headers: HeaderMap,
) -> ApiResult<Json<Value>> {
    let (c, _) = conference(&shared, &id)?;
    if admin(&shared, &headers).is_err() {
        match manager(&shared, &headers, &c)? {
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
    let log = shared.store.audit_log(&id).map_err(store_failed(&shared))?;
    Ok(Json(json!({ "events": log })))
}

// -------------------------------------------------------------- relay channel

async fn relay_report(
    Current(shared): Current,
    Path(relay_id): Path<String>,
    headers: HeaderMap,
    body: axum::body::Body,
) -> ApiResult<Json<ReportReply>> {
    let count = |outcome: &str| {
        shared
            .metrics
            .relay_reports
            .with_label_values(&[outcome])
            .inc();
    };
    // The credential from the inventory, or, for a relay a reload removed,
    // from the last inventory it was in: it may still carry conferences
    // that must move off it.
    let relay = shared.policy.relay_idx(&relay_id);
    let credential = match relay {
        Some(r) => shared.policy.relay(r).credential_sha256,
        None => shared
            .retired
            .get(&relay_id)
            .filter(|(_, since)| since.elapsed() < super::RETIRED_FOR)
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
    let authentic = match (&credential, bearer(&headers)) {
        (Some(h), Some(token)) => ids::secret_matches(h, token),
        _ => false,
    };
    if !authentic {
        count("bad_credential");
        warn!(relay = %relay_id, "relay report with a bad credential");
        return Err(unauthorized());
    }
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
    // Keep only this router's conferences, whatever the relay sent; also
    // those of its jurisdictions the relay is no longer in (a policy change
    // moved it out or removed it): they are facts for the residency report,
    // and the router moves them off the relay. Links are kept whoever the
    // peer is, for the same reasons.
    let ours = |conference: &str| {
        crate::wire::conference::jurisdiction_of(conference)
            .and_then(|j| shared.policy.jurisdiction_idx(j))
            .is_some_and(|j| shared.me.serves(j))
    };
    // Whether the policy in force places the relay inside a conference's
    // jurisdiction.
    let inside_of = |conference: &str| {
        relay.is_some_and(|r| {
            crate::wire::conference::jurisdiction_of(conference)
                .and_then(|j| shared.policy.jurisdiction_idx(j))
                .is_some_and(|j| shared.policy.jurisdiction(j).contains(r))
        })
    };
    // Outside a conference's jurisdiction, a relay is believed only about
    // conferences the router placed on it (before a policy change): it
    // cannot inflate other conferences' sizes or records.
    let placed_here = |conference: &str| {
        shared
            .store
            .relays_of(conference)
            .is_ok_and(|used| used.iter().any(|u| u.relay == relay_id))
    };
    let believed =
        |conference: &str| ours(conference) && (inside_of(conference) || placed_here(conference));
    report.conferences.retain(|c| believed(&c.id));
    report.links.retain(|l| believed(&l.conference));
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
    let recorded = shared.relays.record(&relay_id, report, Instant::now());
    let commands = recorded.commands;
    let notify = recorded.notify;
    // What the relay carried is written every few seconds (and when it
    // drains), and at once for conferences and links that just left it.
    // With the facts of the policy in force: the relay's country, and
    // whether that policy places it inside each conference's jurisdiction.
    let country = relay.map_or_else(String::new, |r| shared.policy.relay(r).country.to_string());
    let usage: Vec<Usage<'_>> = current
        .iter()
        .chain(&recorded.vanished)
        .map(|c| Usage {
            conference: &c.id,
            participants: c.participants,
            bytes_in: c.bytes_in,
            bytes_out: c.bytes_out,
            country: &country,
            inside: inside_of(&c.id),
        })
        .collect();
    let links: Vec<LinkUsage<'_>> = current_links
        .iter()
        .chain(&recorded.vanished_links)
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
            .record_usage(&relay_id, now_unix(), &usage, &links)
        {
            shared.metrics.store_errors.inc();
            warn!(error = %e, "cannot record relay usage");
        }
    }
    // Events are aggregated per conference, kind, reason and peer for each
    // report, and only known codes and inventory relay ids are kept, so
    // refused tickets (which anyone can send a relay) cannot flood the log.
    let mut aggregated: Vec<(crate::wire::channel::Enforcement, u32)> = Vec::new();
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
        if matches!(shared.store.conference(&event.conference), Ok(Some(_))) {
            audit(
                &shared,
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
            );
        }
    }
    let epoch = shared.relays.epoch();
    // A draining relay may be about to stop: answer at once.
    if !commands.is_empty() || draining {
        return Ok(Json(ReportReply { epoch, commands }));
    }
    let notified = notify.notified();
    let _ = tokio::time::timeout(crate::wire::channel::HOLD, notified).await;
    Ok(Json(ReportReply {
        epoch,
        commands: shared.relays.commands(&relay_id),
    }))
}

// ----------------------------------------------------------------- operations

async fn metrics(Current(shared): Current) -> impl IntoResponse {
    (
        [(header::CONTENT_TYPE, "text/plain; version=0.0.4")],
        shared.metrics.render(),
    )
}

async fn readyz(Current(shared): Current) -> impl IntoResponse {
    if shared.ready.load(Ordering::Relaxed) {
        (StatusCode::OK, "ready\n")
    } else {
        (StatusCode::SERVICE_UNAVAILABLE, "shutting down\n")
    }
}
