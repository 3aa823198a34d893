//! The call page: plain JavaScript modules, HTML and CSS under
//! `src/router/page/`, embedded in the binary at build time and served
//! from the router's own origin (`GET /`, `GET /j/{conference}`,
//! `GET /static/{file}`). Nothing is fetched from anywhere else: the page
//! works offline and under a Content-Security-Policy that allows only this
//! origin, plus WebTransport to the relays this router may send a
//! participant to.

use axum::extract::Path;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};

use super::Current;

/// `(name, content type, bytes)` of every file the page is made of.
const FILES: &[(&str, &str, &str)] = &[
    // The page: what it knows, its words, the API, joining and the call,
    // end-to-end encryption as shown, host controls.
    ("app.js", JS, include_str!("page/app.js")),
    ("state.js", JS, include_str!("page/state.js")),
    ("words.js", JS, include_str!("page/words.js")),
    ("api.js", JS, include_str!("page/api.js")),
    ("join.js", JS, include_str!("page/join.js")),
    ("keys.js", JS, include_str!("page/keys.js")),
    ("host.js", JS, include_str!("page/host.js")),
    // The relay connection and the wire.
    ("call.js", JS, include_str!("page/call.js")),
    ("transport.js", JS, include_str!("page/transport.js")),
    ("frames.js", JS, include_str!("page/frames.js")),
    ("wire.js", JS, include_str!("page/wire.js")),
    // Camera, microphone and loudspeaker; the AudioWorklet module is
    // loaded by the page like its scripts (script-src 'self').
    ("media.js", JS, include_str!("page/media.js")),
    (
        "audio-worklet.js",
        JS,
        include_str!("page/audio-worklet.js"),
    ),
    // End-to-end encryption: the scheme and its primitives.
    ("e2ee.js", JS, include_str!("page/e2ee.js")),
    ("bytes.js", JS, include_str!("page/bytes.js")),
    ("hkdf.js", JS, include_str!("page/hkdf.js")),
    ("sframe.js", JS, include_str!("page/sframe.js")),
    ("hpke.js", JS, include_str!("page/hpke.js")),
    (
        "style.css",
        "text/css; charset=utf-8",
        include_str!("page/style.css"),
    ),
];

const JS: &str = "text/javascript; charset=utf-8";

const INDEX: &str = include_str!("page/index.html");

/// Only this origin's scripts and styles; media from the camera and
/// decoders; connections to this origin (the API) and to the WebTransport
/// and WebSocket URLs of the relays this router may send a participant to (those inside
/// the jurisdictions it serves), and nowhere else: a script injected into
/// the page could not send the key in the link's fragment to another
/// origin. No framing, no referrer (a join link's path names the
/// conference).
pub fn content_security_policy(shared: &crate::router::Shared) -> String {
    let policy = &shared.policy;
    let mut relays: Vec<String> = shared
        .me
        .jurisdictions
        .iter()
        .flat_map(|j| policy.jurisdiction(*j).relays())
        .flat_map(|r| {
            let r = policy.relay(r);
            [origin(&r.webtransport_url), origin(&r.websocket_url)]
        })
        .collect();
    relays.sort();
    relays.dedup();
    format!(
        "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; \
media-src 'self' blob: mediastream:; connect-src 'self'{}{}; base-uri 'none'; form-action 'self'; \
frame-ancestors 'none'",
        if relays.is_empty() { "" } else { " " },
        relays.join(" ")
    )
}

/// `scheme://host[:port]` of a URL (a CSP source matches the origin; a
/// path would narrow it to that path only).
fn origin(url: &str) -> String {
    let (scheme, rest) = url.split_once("://").unwrap_or(("https", url));
    let authority = rest.split('/').next().unwrap_or(rest);
    format!("{scheme}://{authority}")
}

fn with_headers(mut response: Response, content_type: &str, csp: &str) -> Response {
    let h = response.headers_mut();
    let set = |h: &mut axum::http::HeaderMap, name, value: &'static str| {
        h.insert(name, HeaderValue::from_static(value));
    };
    if let Ok(v) = HeaderValue::from_str(content_type) {
        h.insert(header::CONTENT_TYPE, v);
    }
    if let Ok(v) = HeaderValue::from_str(csp) {
        h.insert(header::CONTENT_SECURITY_POLICY, v);
    }
    set(h, header::REFERRER_POLICY, "no-referrer");
    set(h, header::X_CONTENT_TYPE_OPTIONS, "nosniff");
    set(h, header::CACHE_CONTROL, "no-cache");
    h.insert(
        header::HeaderName::from_static("permissions-policy"),
        HeaderValue::from_static("camera=(self), microphone=(self), geolocation=()"),
    );
    response
}

/// The page itself; it reads the conference from a `/j/{conference}` path
/// and a passcode or invitation from the URL fragment.
pub(crate) async fn index(Current(shared): Current) -> Response {
    with_headers(
        INDEX.into_response(),
        "text/html; charset=utf-8",
        &content_security_policy(&shared),
    )
}

pub(crate) async fn asset(Current(shared): Current, Path(file): Path<String>) -> Response {
    match FILES.iter().find(|(name, _, _)| *name == file) {
        Some((_, content_type, body)) => with_headers(
            body.into_response(),
            content_type,
            &content_security_policy(&shared),
        ),
        None => (
            StatusCode::NOT_FOUND,
            axum::Json(serde_json::json!({
                "error": {"code": "not_found", "message": "no such file"}
            })),
        )
            .into_response(),
    }
}
