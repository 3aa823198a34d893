//! Operations: the Prometheus metrics, the readiness probe, and this API's
//! own OpenAPI 3.1 description (`GET /v1/openapi.json`, generated from the
//! handlers' `#[utoipa::path]` annotations by [`super::openapi`]).

use std::sync::atomic::Ordering;

use axum::http::{StatusCode, header};
use axum::response::IntoResponse;

use super::{Current, ErrorBody};

pub(super) async fn metrics(Current(shared): Current) -> impl IntoResponse {
    (
        [(header::CONTENT_TYPE, "text/plain; version=0.0.4")],
        shared.metrics.render(),
    )
}

pub(super) async fn readyz(Current(shared): Current) -> impl IntoResponse {
    if !shared.ready.load(Ordering::Relaxed) {
        (StatusCode::SERVICE_UNAVAILABLE, "shutting down\n")
    } else if !shared.store_up.load(Ordering::Relaxed) {
        // Joins would fail: a load balancer sends them to a replica that
        // reaches the store (relays' reports still come here).
        (StatusCode::SERVICE_UNAVAILABLE, "store unavailable\n")
    } else {
        (StatusCode::OK, "ready\n")
    }
}

/// This description: every `/v1` endpoint, generated from the code that
/// serves it. No authentication.
#[utoipa::path(
    get,
    path = "/v1/openapi.json",
    tag = "operations",
    responses(
        (status = 200, description = "The OpenAPI 3.1 document.", body = Value),
        (status = 503, description = "`too_many_connections`: the listener is over a connection cap (as any endpoint may be); `Retry-After` says when to try again.", body = ErrorBody),
    )
)]
pub(super) async fn openapi_json(super::Current(shared): super::Current) -> impl IntoResponse {
    (
        [(header::CONTENT_TYPE, "application/json")],
        super::openapi_document(&shared.policy),
    )
}
