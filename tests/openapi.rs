//! `GET /v1/openapi.json` describes the whole `/v1` API a running router
//! serves: every route, and only routes that answer.
//!
//! The list of served routes is read from the code that registers them
//! (`src/router/api/mod.rs`): each `routes!(module::handler)` with the
//! `#[utoipa::path]` of that handler, and each plain `.route("…")`, which
//! the description cannot include and so must stay outside `/v1`.

mod support;

use std::collections::{BTreeMap, BTreeSet};

use serde_json::Value;
use support::cluster::{Cluster, request};

const METHODS: [&str; 5] = ["get", "post", "put", "patch", "delete"];
const ERROR_SCHEMA: &str = "#/components/schemas/ErrorBody";

/// `(METHOD, path)` of every route `routes()` registers, from its source.
fn served_routes() -> BTreeSet<(String, String)> {
    let dir = support::repo().join("src/router/api");
    let sources: BTreeMap<String, String> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|x| x == "rs"))
        .map(|p| {
            let stem = p.file_stem().unwrap().to_string_lossy().into_owned();
            (stem, std::fs::read_to_string(&p).unwrap())
        })
        .collect();
    let registry = &sources["mod"];
    let mut served = BTreeSet::new();
    for call in registry.split("routes!(").skip(1) {
        let handler = call[..call.find(')').unwrap()].trim();
        let (module, name) = handler
            .split_once("::")
            .unwrap_or_else(|| panic!("routes!({handler}): expected module::handler"));
        let text = &sources[module];
        let at = text
            .find(&format!("async fn {name}("))
            .unwrap_or_else(|| panic!("no handler {handler}"));
        let attribute = &text[text[..at]
            .rfind("#[utoipa::path(")
            .unwrap_or_else(|| panic!("{handler} has no #[utoipa::path]"))
            ..at];
        let method = attribute["#[utoipa::path(".len()..]
            .split(',')
            .next()
            .unwrap()
            .trim();
        let path = attribute
            .split("path = \"")
            .nth(1)
            .and_then(|rest| rest.split('"').next())
            .unwrap_or_else(|| panic!("{handler}: no path in its #[utoipa::path]"));
        served.insert((method.to_uppercase(), path.to_owned()));
    }
    for (module, text) in &sources {
        for call in text.split(".route(").skip(1) {
            let path = call.trim_start().trim_start_matches('"');
            let path = &path[..path.find('"').unwrap_or(0)];
            assert!(
                module == "mod" && !path.starts_with("/v1"),
                "{module}.rs registers {path:?} with .route(): a /v1 route registered so is \
                 served but not described; register it in v1() with routes!(…) and #[utoipa::path]"
            );
        }
    }
    assert!(
        served.len() >= 20,
        "read only {} routes from the source: {served:?}",
        served.len()
    );
    served
}

/// Whether an answer is the router's "no such route" (axum's route miss,
/// which the API's fallback and middleware turn into these), rather than
/// a handler's own answer, such as `404 unknown_conference`.
fn route_miss(status: u16, body: &Value) -> bool {
    status == 405 || (status == 404 && body["error"]["code"] == "not_found")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_description_covers_every_route_the_router_serves() {
    let c = Cluster::running("de-fra-router", &[]).await;
    let router = c.url("de-fra-router");

    let r = request(
        "GET",
        &format!("{router}/v1/openapi.json"),
        None,
        None,
        None,
    )
    .await;
    assert_eq!(r.status, 200);
    assert!(
        r.headers["content-type"]
            .to_str()
            .unwrap()
            .starts_with("application/json")
    );
    let doc = r.json();
    assert!(
        doc["openapi"].as_str().unwrap().starts_with("3.1"),
        "{}",
        doc["openapi"]
    );

    // What is described is exactly what the code registers.
    let mut described = BTreeSet::new();
    for (path, item) in doc["paths"].as_object().unwrap() {
        for method in METHODS {
            if item.get(method).is_some() {
                described.insert((method.to_uppercase(), path.clone()));
            }
        }
    }
    let served = served_routes();
    let undescribed: Vec<_> = served.difference(&described).collect();
    assert!(
        undescribed.is_empty(),
        "served, not described: {undescribed:?}"
    );
    let unserved: Vec<_> = described.difference(&served).collect();
    assert!(unserved.is_empty(), "described, not served: {unserved:?}");

    // The error shape is a schema, with the fields every error has.
    let schema = &doc["components"]["schemas"]["ErrorBody"];
    assert!(schema.is_object(), "no ErrorBody schema");
    assert_eq!(schema["required"], serde_json::json!(["error"]), "{schema}");

    // The detector tells a route miss from a handler's answer.
    let miss = request(
        "GET",
        &format!("{router}/v1/no-such-route"),
        None,
        None,
        None,
    )
    .await;
    assert!(route_miss(miss.status, &miss.json()), "{}", miss.status);
    let wrong_method = request(
        "DELETE",
        &format!("{router}/v1/openapi.json"),
        None,
        None,
        None,
    )
    .await;
    assert!(route_miss(wrong_method.status, &wrong_method.json()));

    for (method, path) in &described {
        let operation = &doc["paths"][path][method.to_lowercase()];
        let responses = operation["responses"].as_object().unwrap();
        // Every path parameter is declared.
        for name in path.split('{').skip(1).map(|s| &s[..s.find('}').unwrap()]) {
            let declared = operation["parameters"]
                .as_array()
                .into_iter()
                .flatten()
                .any(|p| p["name"] == name && p["in"] == "path");
            assert!(declared, "{method} {path}: parameter {name} not declared");
        }
        // Some error answer is described, in the error schema.
        let errors = responses
            .iter()
            .filter(|(status, _)| status.starts_with('4') || status.starts_with('5'))
            .filter(|(_, r)| r["content"]["application/json"]["schema"]["$ref"] == ERROR_SCHEMA)
            .count();
        assert!(
            errors > 0,
            "{method} {path}: no error response in ErrorBody"
        );
        assert!(
            responses.keys().any(|s| s.starts_with('2')),
            "{method} {path}: no success response"
        );
        // An operation that uses the store says what it answers without it.
        if responses.contains_key("500") {
            let unavailable = &responses["503"];
            assert!(
                unavailable["description"]
                    .as_str()
                    .is_some_and(|d| d.contains("store_unavailable")),
                "{method} {path}: 503 store_unavailable not described"
            );
            assert_eq!(
                unavailable["content"]["application/json"]["schema"]["$ref"], ERROR_SCHEMA,
                "{method} {path}"
            );
        }

        // The live router answers it, with a status the description lists.
        // No credentials and dummy ids: a handler's own refusal is expected.
        let url = format!(
            "{router}{}",
            path.replace("{id}", "no-such-conference")
                .replace("{pid}", "no-such-participant")
                .replace("{relay}", "no-such-relay")
        );
        assert!(!url.contains('{'), "{path}: a parameter without a dummy");
        let r = request(method, &url, None, None, None).await;
        let body = r.json();
        assert!(
            !route_miss(r.status, &body),
            "{method} {path}: the router has no such route ({} {body})",
            r.status
        );
        assert!(
            responses.contains_key(&r.status.to_string()),
            "{method} {path}: answered {} ({body}), which its description does not list",
            r.status
        );
        if r.status >= 400 {
            assert!(
                body["error"]["code"].is_string() && body["error"]["message"].is_string(),
                "{method} {path}: {body}"
            );
        }
    }
    c.shutdown().await;
}

/// What the API fuzzer (tests/schemathesis/run.sh, in CI) found where the
/// description and the server disagreed, pinned here case by case.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_description_says_exactly_what_the_server_accepts() {
    let c = Cluster::running("de-fra-router", &[]).await;
    let router = c.url("de-fra-router");
    let doc = request(
        "GET",
        &format!("{router}/v1/openapi.json"),
        None,
        None,
        None,
    )
    .await
    .json();
    let schemas = &doc["components"]["schemas"];

    // `residency`: the jurisdictions the policy defines, or null; no other
    // string (the server answers 400 unknown_jurisdiction to any other).
    let mut ids: Vec<Value> = c
        .policy
        .jurisdictions()
        .iter()
        .map(|j| Value::from(j.id.as_str()))
        .collect();
    ids.push(Value::Null);
    assert_eq!(
        schemas["CreateRequest"]["properties"]["residency"]["enum"],
        Value::Array(ids)
    );
    // Optional bodies are absent, never null (the server answers 400).
    for path in [
        "/v1/conferences",
        "/v1/conferences/{id}/participants/{pid}/kick",
    ] {
        let body = &doc["paths"][path]["post"]["requestBody"];
        assert_ne!(body["required"], true, "{path}");
        let schema = &body["content"]["application/json"]["schema"];
        assert!(schema.get("oneOf").is_none(), "{path}: {schema}");
        assert!(schema["$ref"].is_string(), "{path}: {schema}");
    }
    // Text fields say their limits.
    let invite = &schemas["InviteRequest"]["properties"];
    assert_eq!(invite["display_name"]["minLength"], 1);
    assert_eq!(invite["display_name"]["maxLength"], 64);
    assert_eq!(invite["ttl_seconds"]["minimum"], 1);
    assert_eq!(invite["ttl_seconds"]["maximum"], 604800);
    assert_eq!(
        schemas["ReportRequest"]["required"],
        serde_json::json!(["reason"])
    );
    assert_eq!(
        schemas["ReportRequest"]["properties"]["reason"]["maxLength"],
        1000
    );

    let conf = support::cluster::open_conference(&router, "eu").await;
    let id = conf["id"].as_str().unwrap();
    let host = format!("Bearer {}", conf["host_token"].as_str().unwrap());
    let post = |path: String, body: &'static [u8]| {
        let host = host.clone();
        async move {
            support::cluster::request_raw("POST", &path, None, Some(&host), Some(body.to_vec()))
                .await
        }
    };
    // Whitespace is not an absent body.
    let r = post(
        format!("{router}/v1/conferences/{id}/participants/p-x/kick"),
        b" \n",
    )
    .await;
    assert_eq!(r.status, 400, "{}", String::from_utf8_lossy(&r.body));
    // A whole number of seconds written with a zero fraction is one.
    let r = post(
        format!("{router}/v1/conferences/{id}/invites"),
        br#"{"display_name": "Ann", "ttl_seconds": 86400.0}"#,
    )
    .await;
    assert_eq!(r.status, 201, "{}", String::from_utf8_lossy(&r.body));
    // Text is measured as sent: blanks around a name count.
    let r = post(
        format!("{router}/v1/conferences/{id}/invites"),
        br#"{"display_name": "Ann                                                                  "}"#,
    )
    .await;
    assert_eq!(r.status, 400, "{}", String::from_utf8_lossy(&r.body));
    // An ended conference still says first that a body is not an invitation.
    let r = post(format!("{router}/v1/conferences/{id}/end"), b"").await;
    assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
    let r = post(format!("{router}/v1/conferences/{id}/invites"), b"[[]]").await;
    assert_eq!(r.status, 400, "{}", String::from_utf8_lossy(&r.body));
    let r = post(
        format!("{router}/v1/conferences/{id}/invites"),
        br#"{"display_name": "Ann"}"#,
    )
    .await;
    assert_eq!(r.status, 410, "{}", String::from_utf8_lossy(&r.body));
    c.shutdown().await;
}
