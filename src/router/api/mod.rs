//! The router's HTTP API (`/v1`), JSON in and out.
//!
//! Every error is `{"error": {"code", "message"}}` with a fitting status;
//! `421` answers also name the router that serves the conference's
//! jurisdiction (`router_url`), and `429` answers carry `Retry-After`.
//! Request bodies are parsed by hand from bytes so that any malformed body
//! is a `400` with a message, never a panic or a `5xx`.
//!
//! This module owns the routes, the error type and its schema, the
//! extractor and the helpers every endpoint shares; each resource has its
//! own file: [`conferences`], [`joins`] (and the waiting room),
//! [`moderation`], [`residency_report`], [`admin`], [`relay_channel`] and
//! [`operations`] (probes and this API's own OpenAPI description, served
//! at `GET /v1/openapi.json`).

use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, OnceLock};

use axum::body::Bytes;
use axum::extract::{DefaultBodyLimit, MatchedPath, Request};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use tracing::warn;
use utoipa::{OpenApi, ToSchema};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use super::ids;
use super::{Current, Shared};
use crate::policy::{JurisdictionIdx, Tenant};
use crate::store::{AuditEvent, ConferenceRecord, Role, Status, StoreError};

mod admin;
mod conferences;
pub mod joins;
mod moderation;
mod operations;
mod relay_channel;
mod residency_report;

/// Largest request body accepted.
const MAX_BODY: usize = 16 * 1024;
/// Longest display name, in bytes (what relays accept in a ticket).
const MAX_NAME: usize = crate::wire::control::MAX_LABEL_LEN;

type App = Arc<super::Live>;

/// The router's routes.
pub fn routes(shared: App) -> Router {
    Router::from(v1())
        .route("/metrics", get(operations::metrics))
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/readyz", get(operations::readyz))
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

/// What the relay channel's own listener serves (`relay_listen`): relay
/// reports, and the probes.
pub fn relay_routes(shared: App) -> Router {
    Router::from(OpenApiRouter::new().routes(routes!(relay_channel::relay_report)))
        .route("/healthz", get(|| async { "ok\n" }))
        .fallback(|| async {
            ApiError::new(StatusCode::NOT_FOUND, "not_found", "no such endpoint")
        })
        .layer(axum::Extension(relay_channel::ChannelListener))
        .layer(axum::middleware::from_fn_with_state(shared.clone(), count))
        .with_state(shared)
}

/// Every `/v1` endpoint. `routes!` registers a handler together with its
/// `#[utoipa::path]` description, so what is served under `/v1` and what
/// `GET /v1/openapi.json` describes come from this one list.
fn v1() -> OpenApiRouter<App> {
    OpenApiRouter::with_openapi(ApiDoc::openapi())
        .routes(routes!(conferences::create_conference))
        .routes(routes!(conferences::conference_state))
        .routes(routes!(conferences::create_invite))
        .routes(routes!(joins::join))
        .routes(routes!(moderation::lock))
        .routes(routes!(moderation::unlock))
        .routes(routes!(conferences::end))
        .routes(routes!(moderation::kick))
        .routes(routes!(moderation::report_abuse))
        .routes(routes!(joins::waiting_list))
        .routes(routes!(joins::waiting_poll))
        .routes(routes!(joins::admit))
        .routes(routes!(joins::deny))
        .routes(routes!(admin::audit_log))
        .routes(routes!(residency_report::residency_report))
        .routes(routes!(admin::abuse_reports))
        .routes(routes!(admin::relay_list))
        .routes(routes!(admin::live_conferences))
        .routes(routes!(admin::drain_relay))
        .routes(routes!(admin::reload))
        // A busy relay's report lists every conference it carries.
        // Authenticated from the headers before its body is read.
        .routes(routes!(relay_channel::relay_report))
        .routes(routes!(operations::openapi_json))
}

/// The OpenAPI 3.1 description of the `/v1` API, as `GET /v1/openapi.json`
/// serves it.
pub fn openapi() -> utoipa::openapi::OpenApi {
    let mut doc = v1().into_openapi();
    // Every operation that reads or writes the store (those that can answer
    // `500 store_error`) also answers `503 store_unavailable` while the
    // store cannot be reached: added here once rather than on each handler.
    for item in doc.paths.paths.values_mut() {
        for op in [
            &mut item.get,
            &mut item.post,
            &mut item.put,
            &mut item.delete,
            &mut item.patch,
        ]
        .into_iter()
        .flatten()
        {
            let Some(utoipa::openapi::RefOr::T(failed)) = op.responses.responses.get("500") else {
                continue;
            };
            let mut unavailable = failed.clone();
            unavailable.description = "`store_unavailable`: the store cannot be reached now (the database is down or unreachable); `Retry-After: 1`. Calls in progress go on.".into();
            op.responses
                .responses
                .entry("503".into())
                .and_modify(|r| {
                    if let utoipa::openapi::RefOr::T(r) = r {
                        r.description.push_str(" Also `store_unavailable` (`Retry-After: 1`) while the store cannot be reached.");
                    }
                })
                .or_insert(utoipa::openapi::RefOr::T(unavailable));
        }
    }
    doc
}

/// [`openapi`] as JSON, made once, with what JSON Schema says better than
/// the annotations: an optional request body is absent, never `null`.
fn openapi_value() -> &'static Value {
    static DOCUMENT: OnceLock<Value> = OnceLock::new();
    DOCUMENT.get_or_init(|| {
        let mut doc = serde_json::to_value(openapi()).unwrap_or_default();
        if let Some(paths) = doc["paths"].as_object_mut() {
            for item in paths.values_mut() {
                let Some(ops) = item.as_object_mut() else {
                    continue;
                };
                for op in ops.values_mut() {
                    let schema = &mut op["requestBody"]["content"]["application/json"]["schema"];
                    let one = schema["oneOf"].as_array().and_then(|alternatives| {
                        let rest: Vec<&Value> = alternatives
                            .iter()
                            .filter(|a| a["type"] != "null")
                            .collect();
                        (rest.len() == 1 && alternatives.len() == 2).then(|| rest[0].clone())
                    });
                    if let Some(one) = one {
                        *schema = one;
                    }
                }
            }
        }
        doc
    })
}

/// The description a router serves: [`openapi_value`] with the
/// jurisdictions its policy defines as the only values of a conference's
/// `residency` (any other is refused `400 unknown_jurisdiction`).
fn openapi_document(policy: &crate::policy::Policy) -> Bytes {
    let mut doc = openapi_value().clone();
    let residency = &mut doc["components"]["schemas"]["CreateRequest"]["properties"]["residency"];
    if residency.is_object() {
        let mut ids: Vec<Value> = policy
            .jurisdictions()
            .iter()
            .map(|j| Value::from(j.id.as_str()))
            .collect();
        ids.push(Value::Null);
        residency["enum"] = Value::Array(ids);
    }
    serde_json::to_vec(&doc).unwrap_or_default().into()
}

/// What the description says besides its paths.
#[derive(OpenApi)]
#[openapi(
    info(
        title = "residency-relay router API",
        description = "The router's HTTP API: tenants create conferences pinned to a jurisdiction, \
participants join with a passcode or an invitation and get a relay inside it and a ticket \
bound to it, hosts moderate, the operator administers, relays report. Authentication is \
`Authorization: Bearer <token>`. Every error is an `ErrorBody`. Generated from the handlers; \
the rules behind the answers are in docs/api.md.",
        license(name = "Apache-2.0", identifier = "Apache-2.0"),
    ),
    components(schemas(ErrorBody, ErrorDetail, ReloadProblem)),
    tags(
        (name = "conferences", description = "creating, reading, inviting to and ending conferences"),
        (name = "joins", description = "joining, and the waiting room"),
        (name = "moderation", description = "locking, removing and banning, abuse reports"),
        (name = "residency", description = "the signed residency report"),
        (name = "admin", description = "the operator's endpoints and the audit log"),
        (name = "relay channel", description = "relays' reports and the commands answering them"),
        (name = "operations", description = "this description"),
    )
)]
struct ApiDoc;

/// `Strict-Transport-Security` of a router clients reach over HTTPS: a
/// year, this host only (an operator's other names are its own business).
pub const HSTS: &str = "max-age=31536000";

/// Counts every answer by route template and status, and sets the headers
/// every answer carries.
async fn count(Current(shared): Current, request: Request, next: Next) -> Response {
    let route = request
        .extensions()
        .get::<MatchedPath>()
        .map_or_else(|| "unmatched".to_owned(), |m| m.as_str().to_owned());
    let mut response = next.run(request).await;
    // Every answer: never sniffed into another type; and, where clients
    // reach the router over HTTPS, never asked for over plain HTTP again.
    let h = response.headers_mut();
    h.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        axum::http::HeaderValue::from_static("nosniff"),
    );
    if shared.me.url.starts_with("https://") {
        h.insert(
            header::STRICT_TRANSPORT_SECURITY,
            axum::http::HeaderValue::from_static(HSTS),
        );
    }
    let status = response.status();
    shared
        .metrics
        .http_requests
        .with_label_values(&[route.as_str(), status.as_str()])
        .inc();
    if response.extensions().get::<StoreUnavailable>().is_some() {
        shared.metrics.store_unavailable.inc();
    }
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

/// Marks an answer refused because the store could not be reached (for
/// `rr_router_store_unavailable_total`).
#[derive(Debug, Clone, Copy)]
struct StoreUnavailable;

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
        if e.unavailable {
            return ApiError {
                retry_after: Some(1),
                ..ApiError::new(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "store_unavailable",
                    "the router cannot reach its records now; calls in progress go on; try again shortly",
                )
            };
        }
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
        if self.code == "store_unavailable" {
            response.extensions_mut().insert(StoreUnavailable);
        }
        if let Some(secs) = self.retry_after {
            if let Ok(v) = HeaderValue::from_str(&secs.to_string()) {
                response.headers_mut().insert(header::RETRY_AFTER, v);
            }
        }
        response
    }
}

// What `ApiError::into_response` writes; a unit test below holds the two
// together.
/// The body of every error answer.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
struct ErrorBody {
    error: ErrorDetail,
}

/// What went wrong.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
struct ErrorDetail {
    /// A stable code for programs, such as `unknown_conference`.
    code: String,
    /// What happened and what to do, for people.
    message: String,
    /// On `421`: the router that serves the conference's jurisdiction.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    router_url: Option<String>,
    /// On `422 invalid_config`: every problem of the policy files.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    problems: Option<Vec<ReloadProblem>>,
}

/// One problem of a policy file a reload refused.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
struct ReloadProblem {
    file: String,
    field: String,
    message: String,
}

type ApiResult<T> = Result<T, ApiError>;

/// A request body: no body at all takes every default; anything else must
/// be the JSON object (a `null`, or whitespace, is not).
fn parse<T: DeserializeOwned + Default>(body: &Bytes) -> ApiResult<T> {
    if body.is_empty() {
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

/// A text field as sent: at most `max` bytes of UTF-8 without control
/// characters, and, when `required`, not blank; kept without the blanks
/// around it. Checked before it is trimmed, so that what the API
/// description says of the field (its length, its pattern) is exactly what
/// is accepted.
fn check_text(field: &str, text: &str, max: usize, required: bool) -> ApiResult<String> {
    if text.len() > max || text.chars().any(char::is_control) {
        return Err(ApiError::new(
            StatusCode::BAD_REQUEST,
            "bad_request",
            format!("{field} must be at most {max} bytes of UTF-8 without control characters"),
        ));
    }
    let text = text.trim();
    if required && text.is_empty() {
        return Err(ApiError::new(
            StatusCode::BAD_REQUEST,
            "bad_request",
            format!("{field} must not be empty"),
        ));
    }
    Ok(text.to_owned())
}

// The API description's patterns of text fields (`#[schema(pattern)]`
// takes literals only): without control characters (Unicode Cc),
// `^[^\u0000-\u001F\u007F-\u009F]*$`, and also not blank (one character
// that is neither a control character nor `char::is_whitespace`); `\uXXXX`
// means the same in ECMA-262, Python and Rust regular expressions.

/// A whole number of seconds, also when written as a JSON number with a
/// fraction of zero (`86400.0`), which JSON Schema's `integer` admits.
fn whole_seconds<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<u64>, D::Error> {
    use serde::Deserialize as _;
    use serde::de::Error as _;
    let Some(n) = Option::<serde_json::Number>::deserialize(d)? else {
        return Ok(None);
    };
    n.as_u64()
        .or_else(|| {
            n.as_f64()
                .filter(|f| f.fract() == 0.0 && *f >= 0.0 && *f < u64::MAX as f64)
                .map(|f| f as u64)
        })
        .map(Some)
        .ok_or_else(|| D::Error::custom(format!("{n} is not a whole number of seconds")))
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
async fn conference(shared: &Shared, id: &str) -> ApiResult<(ConferenceRecord, JurisdictionIdx)> {
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
    let record = shared.store.conference(id).await?.ok_or_else(not_found)?;
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
async fn manager(shared: &Shared, headers: &HeaderMap, c: &ConferenceRecord) -> ApiResult<Manager> {
    let Some(token) = bearer(headers) else {
        return Err(unauthorized());
    };
    if ids::secret_matches(&c.host_token_sha256, token) {
        return Ok(Manager::Host);
    }
    // A host's call page: a manage token from its join answer, good while
    // that participant is still a host here and was not removed.
    if let Some(pid) =
        super::manage::check(&shared.signing_key, token, &c.id, crate::clock::unix_now())
    {
        let host = shared
            .store
            .participant(&c.id, &pid)
            .await
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

async fn audit(shared: &Shared, conference: &str, event: &str, detail: Value) {
    let entry = AuditEvent {
        time: crate::clock::unix_now(),
        conference: conference.to_owned(),
        event: event.to_owned(),
        detail,
    };
    if let Err(e) = shared.store.audit(&entry).await {
        shared.metrics.store_errors.inc();
        warn!(error = %e, event, "audit log write failed");
    }
}

/// Queues `action` for `relays` (see [`crate::router::relays::send`]):
/// stored before the request is answered.
async fn tell_relays(
    shared: &Shared,
    relays: &[String],
    action: &crate::wire::channel::Action,
) -> ApiResult<()> {
    let relays: Vec<&str> = relays.iter().map(String::as_str).collect();
    crate::router::relays::send(shared, &relays, action)
        .await
        .map_err(store_failed(shared))
}

/// Wakes the waiting-room polls of `conference` held here and, with
/// replicas, on the others.
async fn waiting_changed(shared: &Shared, conference: &str) {
    shared.waiting_changed.notify_waiters();
    if let Err(e) = shared.replicas.announce_waiting(conference).await {
        shared.metrics.store_errors.inc();
        warn!(error = %e, "cannot announce a waiting-room decision to the other replicas");
    }
}

fn store_failed(shared: &Shared) -> impl Fn(StoreError) -> ApiError + '_ {
    move |e| {
        shared.metrics.store_errors.inc();
        ApiError::from(e)
    }
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

/// The prologue of every endpoint a conference's tenant or host calls: the
/// conference, loaded if this router serves it, and who is managing it.
struct Managed {
    conference: ConferenceRecord,
    jurisdiction: JurisdictionIdx,
    by: Manager,
}

impl Managed {
    /// Loads conference `id` (`421` if another router serves its
    /// jurisdiction, `404` if there is none) and checks the bearer token
    /// against its tenant's API key, its host token and its hosts' manage
    /// tokens (`401`; `404` for another tenant's conference), in that order.
    async fn check(shared: &Shared, id: &str, headers: &HeaderMap) -> ApiResult<Managed> {
        let (conference, jurisdiction) = conference(shared, id).await?;
        let by = manager(shared, headers, &conference).await?;
        Ok(Managed {
            conference,
            jurisdiction,
            by,
        })
    }

    /// `410` once the conference has ended: for endpoints that change it.
    fn open(self) -> ApiResult<Managed> {
        ended_check(&self.conference)?;
        Ok(self)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The schema `/v1/openapi.json` gives errors is the shape they have.
    #[tokio::test]
    async fn error_answers_have_the_documented_shape() {
        use http_body_util::BodyExt;
        let mut full = ApiError::new(StatusCode::UNPROCESSABLE_ENTITY, "invalid_config", "bad");
        full.router_url = Some("http://127.0.0.1:1".into());
        full.problems = Some(json!([{ "file": "a.toml", "field": "x", "message": "m" }]));
        let plain = ApiError::new(StatusCode::NOT_FOUND, "unknown_conference", "none");
        for error in [full, plain] {
            let body = error.into_response().into_body().collect().await.unwrap();
            let parsed: Result<ErrorBody, _> = serde_json::from_slice(&body.to_bytes());
            assert!(parsed.is_ok(), "{parsed:?}");
        }
    }
}
