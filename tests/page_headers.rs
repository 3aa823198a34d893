//! Headers every answer carries: `nosniff` on all of them, HSTS where
//! clients reach the router over HTTPS, and a Content-Security-Policy on
//! the call page that lets it connect only to its router and to the relays
//! that router may send a participant to.

mod support;

use std::collections::BTreeSet;

use support::cluster::{Cluster, request};

const ROUTER: &str = "de-fra-router";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_answer_is_nosniff_and_hsts_and_the_page_connects_only_where_it_may() {
    let mut c = Cluster::new(|t| t);
    c.start_router(ROUTER).await;
    let url = c.url(ROUTER);
    assert!(url.starts_with("https://"));
    let conf = support::cluster::open_conference(&url, "eu").await;
    let id = conf["id"].as_str().unwrap();

    for (method, path) in [
        ("GET", "/".to_owned()),
        ("GET", format!("/j/{id}")),
        ("GET", "/static/app.js".to_owned()),
        ("GET", "/static/nothing.js".to_owned()),
        ("GET", "/healthz".to_owned()),
        ("GET", "/metrics".to_owned()),
        ("GET", "/v1/openapi.json".to_owned()),
        ("GET", format!("/v1/conferences/{id}")),
        ("POST", format!("/v1/conferences/{id}/join")),
        ("GET", "/no/such/thing".to_owned()),
    ] {
        let r = request(method, &format!("{url}{path}"), None, None, None).await;
        assert_eq!(
            r.header("x-content-type-options"),
            Some("nosniff"),
            "{method} {path} ({})",
            r.status
        );
        assert_eq!(
            r.header("strict-transport-security"),
            Some("max-age=31536000"),
            "{method} {path} ({})",
            r.status
        );
    }

    let page = request("GET", &format!("{url}/j/{id}"), None, None, None).await;
    let csp = page.header("content-security-policy").unwrap().to_owned();
    let connect: BTreeSet<&str> = csp
        .split(';')
        .map(str::trim)
        .find_map(|d| d.strip_prefix("connect-src "))
        .unwrap_or_else(|| panic!("no connect-src in {csp}"))
        .split_whitespace()
        .collect();
    // The router itself, and the WebTransport and WebSocket origins of
    // every relay in the jurisdictions it serves: nothing else, no
    // scheme-wide source.
    let me = c.policy.router(ROUTER).unwrap();
    let mut expected: BTreeSet<String> = me
        .jurisdictions
        .iter()
        .flat_map(|j| c.policy.jurisdiction(*j).relays())
        .flat_map(|r| {
            let r = c.policy.relay(r);
            [
                format!("https://{}", r.quic_addr),
                format!("wss://{}", r.websocket_addr),
            ]
        })
        .collect();
    expected.insert("'self'".into());
    assert_eq!(
        connect,
        expected.iter().map(String::as_str).collect::<BTreeSet<_>>(),
        "{csp}"
    );
    assert!(
        !connect.contains("https:") && !connect.contains("wss:"),
        "{csp}"
    );
    c.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_router_on_plain_http_sends_no_hsts_and_relays_outside_its_jurisdictions_are_not_reachable_from_its_page()
 {
    let mut c = Cluster::new(support::cluster::plain_http);
    c.start_router("ch-zrh-router").await;
    let url = c.url("ch-zrh-router");
    let page = request("GET", &format!("{url}/"), None, None, None).await;
    assert_eq!(page.header("x-content-type-options"), Some("nosniff"));
    assert_eq!(page.header("strict-transport-security"), None);
    let csp = page.header("content-security-policy").unwrap();
    // Zurich serves `ch` only: its Swiss relay, and no EU or US one.
    for r in c.policy.relays() {
        let listed = csp.contains(&format!("https://{} ", r.quic_addr))
            || csp.contains(&format!("https://{};", r.quic_addr));
        assert_eq!(listed, r.country.as_str() == "CH", "{} in {csp}", r.id);
    }
    c.shutdown().await;
}
