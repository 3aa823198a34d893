//! The relay's HTTP listener: `/metrics`, `/healthz`, `/readyz`, `/cert`
//! and `POST /v1/admin/reload`, behind the connection limits of
//! [`crate::http_server`].

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use tokio::sync::{mpsc, oneshot};
use tracing::warn;

use super::Metrics;
use super::reload::ReloadRequest;
use crate::policy::ReloadError;

/// What the relay's HTTP listener serves from.
pub(super) struct Http {
    pub(super) metrics: Metrics,
    pub(super) ready: Arc<AtomicBool>,
    pub(super) fingerprint: tokio::sync::watch::Receiver<super::tls::Pins>,
    /// Authenticates `POST /v1/admin/reload` (the credential the relay
    /// presents to routers); without one, reloads are by SIGHUP only.
    pub(super) credential: Option<String>,
    pub(super) reload: mpsc::Sender<ReloadRequest>,
    pub(super) limits: crate::http_server::Limits,
}

pub(super) async fn serve_http(listener: tokio::net::TcpListener, http: Http) {
    use axum::http::StatusCode;
    use axum::routing::{get, post};
    let Http {
        metrics,
        ready,
        fingerprint,
        credential,
        reload,
        limits,
    } = http;
    let options = crate::http_server::Options {
        tls: None,
        unsent_limit: None,
        limits,
        metrics: metrics.http.clone(),
        // Operators and their Prometheus reach the relay directly.
        trusted_proxy: Arc::new(|_| false),
    };
    let app = axum::Router::new()
        .route(
            "/metrics",
            get(move || {
                let metrics = metrics.clone();
                async move {
                    (
                        [(
                            axum::http::header::CONTENT_TYPE,
                            "text/plain; version=0.0.4",
                        )],
                        metrics.render(),
                    )
                }
            }),
        )
        .route("/healthz", get(|| async { "ok\n" }))
        .route(
            "/readyz",
            get(move || {
                let ready = ready.load(Ordering::Relaxed);
                async move {
                    if ready {
                        (StatusCode::OK, "ready\n")
                    } else {
                        (StatusCode::SERVICE_UNAVAILABLE, "shutting down\n")
                    }
                }
            }),
        )
        .route(
            "/cert",
            get(move || {
                let pins = fingerprint.borrow().clone();
                let body = serde_json::json!({ "sha256": pins.current, "next_sha256": pins.next });
                async move { axum::Json(body) }
            }),
        )
        .route(
            "/v1/admin/reload",
            post(
                move |axum::extract::ConnectInfo(peer): axum::extract::ConnectInfo<
                    std::net::SocketAddr,
                >,
                      headers: axum::http::HeaderMap| {
                    let (credential, reload) = (credential.clone(), reload.clone());
                    async move { reload_endpoint(credential, reload, peer, headers).await }
                },
            ),
        );
    if let Err(e) = crate::http_server::serve(listener, app, options, std::future::pending()).await
    {
        warn!(error = %e, "HTTP listener stopped");
    }
}

/// `POST /v1/admin/reload`: `200` with what changed, `422` with every
/// problem of files that do not load, `409` when this relay cannot run
/// them (the policy in force stays), `401` without the relay's credential,
/// `403 loopback_only` from another machine: this listener is plain HTTP
/// (for Prometheus), and the credential is the one that authenticates the
/// relay to its routers, so it must not cross a network in clear.
async fn reload_endpoint(
    credential: Option<String>,
    reload: mpsc::Sender<ReloadRequest>,
    peer: std::net::SocketAddr,
    headers: axum::http::HeaderMap,
) -> (axum::http::StatusCode, axum::Json<serde_json::Value>) {
    use axum::http::StatusCode;
    use serde_json::json;
    let error = |status: StatusCode, code: &str, message: String| {
        (
            status,
            axum::Json(json!({ "error": { "code": code, "message": message } })),
        )
    };
    if !peer.ip().to_canonical().is_loopback() {
        return error(
            StatusCode::FORBIDDEN,
            "loopback_only",
            "reload from the relay's own machine (or send it SIGHUP): this listener is plain HTTP"
                .into(),
        );
    }
    let presented = headers
        .get(axum::http::header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "));
    let authentic = match (&credential, presented) {
        (Some(secret), Some(token)) => {
            crate::secret::secret_matches(&crate::secret::sha256(secret), token)
        }
        _ => false,
    };
    if !authentic {
        return error(
            StatusCode::UNAUTHORIZED,
            "unauthorized",
            "give the relay's credential as a bearer token".into(),
        );
    }
    let (tx, rx) = oneshot::channel();
    if reload.send(tx).await.is_err() {
        return error(
            StatusCode::CONFLICT,
            "reload_refused",
            "this relay was started without policy files to reload".into(),
        );
    }
    match rx.await {
        Ok(Ok(done)) => (
            StatusCode::OK,
            axum::Json(json!({
                "applied": true,
                "changes": done.changes,
                "restart_needed": done.restart_needed,
            })),
        ),
        Ok(Err(ReloadError::Invalid(e))) => {
            let problems: Vec<serde_json::Value> = e
                .problems
                .iter()
                .map(|p| json!({ "file": p.file.display().to_string(), "field": p.field, "message": p.message }))
                .collect();
            (
                StatusCode::UNPROCESSABLE_ENTITY,
                axum::Json(json!({ "error": {
                    "code": "invalid_config",
                    "message": format!("{} problem(s) in the policy files; the policy in force stays", problems.len()),
                    "problems": problems,
                }})),
            )
        }
        Ok(Err(ReloadError::Refused(message))) => error(
            StatusCode::CONFLICT,
            "reload_refused",
            format!("{message}; the policy in force stays"),
        ),
        Err(_) => error(
            StatusCode::SERVICE_UNAVAILABLE,
            "stopping",
            "the relay is stopping".into(),
        ),
    }
}
