//! Every hop encrypted and both ends authenticated: the router's HTTPS to
//! clients, the relay channel (the relay verifies the router's certificate,
//! the router the relay's credential inside TLS), and what crosses each hop
//! as a recording proxy on the path sees it. Cascade links and PostgreSQL
//! have their own refusal tests (tests/cascade.rs, tests/store.rs).

mod support;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use residency_relay::client::join::JoinError;
use residency_relay::http_client::{self, HttpError, Tls};
use residency_relay::policy;
use serde_json::{Value, json};
use support::cluster::{self, ACME, ADMIN, Cluster};
use support::proxy::{Recorded, recording_proxy, recording_udp_proxy};
use support::wait::{REPORTS, until};

const ROUTER: &str = "de-fra-router";

/// The value of `name{label}` in a metrics text (0 when absent).
fn labelled(text: &str, name: &str, label: &str) -> f64 {
    text.lines()
        .filter(|l| l.starts_with(name) && l.contains(label))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

/// `method url`, verified with `trust`, with the admin token.
async fn trusting(
    trust: &Tls,
    method: &str,
    url: &str,
) -> Result<http_client::Response, HttpError> {
    http_client::request_with(
        method,
        url,
        Some(trust),
        None,
        &[("authorization", ADMIN)],
        None,
        Duration::from_secs(5),
    )
    .await
}

/// Points the EU router's `relay_url` at `proxy` (its certificate is still
/// verified for the host of its `url`), before any relay starts.
fn relays_report_through(c: &mut Cluster, proxy: SocketAddr) {
    let me = c.policy.router(ROUTER).unwrap().clone();
    let scheme = if me.url.starts_with("https://") {
        "https"
    } else {
        "http"
    };
    let url_line = format!("url = \"{}\"", me.url);
    let text = std::fs::read_to_string(&c.config).unwrap();
    assert!(text.contains(&url_line));
    // Its relay_url (relay_listen's), if it has one, gives way to the proxy's.
    let text = text.replacen(&format!("relay_url = \"{}\"\n", me.relay_url), "", 1);
    let text = text.replacen(
        &url_line,
        &format!("{url_line}\nrelay_url = \"{scheme}://{proxy}\""),
        1,
    );
    std::fs::write(&c.config, text).unwrap();
    c.policy = Arc::new(policy::load(&c.config).unwrap_or_else(|e| panic!("{e}")));
}

/// What crossed each hop of one call, and the secrets that were in play.
struct Call {
    /// Participants and the tenant to the router.
    clients: Recorded,
    /// Both relays' channel to the router (reports, commands, cascade tickets).
    channel: Recorded,
    /// One participant's QUIC connection to its relay.
    quic: Recorded,
    secrets: Vec<(&'static str, String)>,
}

/// A call of two participants on two EU relays linked by cascade, one
/// participant kicked and banned by the host, with a recording proxy on
/// every hop: clients reach the router through one, relays report through
/// another, and Ada's QUIC goes through a UDP one.
async fn a_call_through_recording_proxies(edit: fn(String) -> String) -> Call {
    let mut c = Cluster::new(edit);
    let me = c.policy.router(ROUTER).unwrap().clone();
    let listen = me.listen;
    let (channel_proxy, channel) = recording_proxy(me.relay_listen.unwrap_or(listen)).await;
    relays_report_through(&mut c, channel_proxy);
    c.start(ROUTER, &["de-fra-1", "ie-dub-1"]).await;
    let scheme = if c.url(ROUTER).starts_with("https://") {
        "https"
    } else {
        "http"
    };
    let (client_proxy, clients) = recording_proxy(listen).await;
    let router = format!("{scheme}://{client_proxy}");

    let conf = cluster::create(
        &router,
        ACME,
        json!({ "residency": "eu", "waiting_room": false }),
    )
    .await;
    let id = conf["id"].as_str().unwrap();
    let passcode = conf["passcode"].as_str().unwrap().to_owned();
    // Munich is served from Frankfurt, Dublin from Dublin: a cascade link.
    let mut ada = cluster::join_from(&router, id, &passcode, "127.0.0.2")
        .await
        .unwrap();
    let bo = cluster::join_from(&router, id, &passcode, "127.0.0.4")
        .await
        .unwrap();
    assert_ne!(ada.relay_id, bo.relay_id);
    let (quic_proxy, quic) = recording_udp_proxy("127.0.0.1", ada.quic_addr, "127.0.0.2").await;
    ada.quic_addr = quic_proxy;
    let ada_client = cluster::connect(&ada, "127.0.0.2").await;
    let bo_client = cluster::connect(&bo, "127.0.0.4").await;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(15);
    loop {
        let m = c.relay_metrics("de-fra-1").await;
        if cluster::sample(&m, "rr_relay_cascade_links") >= 1.0 {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "no cascade link between the relays"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(
        cluster::kick(&router, &conf, &bo.participant_id, true).await,
        200
    );
    drop((ada_client, bo_client));

    let mut secrets = vec![
        ("the tenant's API key", "dev-acme-key".to_owned()),
        ("the passcode", passcode),
        (
            "the host token",
            conf["host_token"].as_str().unwrap().to_owned(),
        ),
        ("Ada's ticket", ada.ticket.clone()),
        ("Bo's ticket", bo.ticket.clone()),
        ("Frankfurt's credential", "dev-relay-de-fra-1".to_owned()),
        ("Dublin's credential", "dev-relay-ie-dub-1".to_owned()),
    ];
    if let Some(token) = &ada.rejoin_token {
        secrets.push(("Ada's rejoin token", token.clone()));
    }
    c.shutdown().await;
    Call {
        clients,
        channel,
        quic,
        secrets,
    }
}

/// What would show HTTP or a ticket in clear whatever its values.
const MARKERS: &[(&str, &str)] = &[
    ("an HTTP request line", "HTTP/1.1"),
    ("an authorization header", "Bearer "),
    ("a ticket field", "\"ticket\""),
];

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_credential_ticket_or_passcode_crosses_any_hop_in_clear() {
    let call = a_call_through_recording_proxies(|t| t).await;
    for (hop, seen) in [
        ("clients to the router", &call.clients),
        ("the relay channel", &call.channel),
        ("Ada's QUIC to her relay", &call.quic),
    ] {
        // The hop carried the call: reports every second, joins, media setup.
        assert!(seen.len() > 5_000, "{hop}: only {} bytes", seen.len());
        for (what, secret) in call.secrets.iter().map(|(w, s)| (*w, s.as_str())) {
            assert!(
                !seen.contains(secret.as_bytes()),
                "{what} crossed {hop} in clear"
            );
        }
        for (what, marker) in MARKERS {
            assert!(
                !seen.contains(marker.as_bytes()),
                "{what} crossed {hop} in clear"
            );
        }
    }
}

/// The same call on plain HTTP routers (`plain_http = true`): the proxies
/// read the passcode, the API key, the relays' credentials and the tickets,
/// so the check above would see them if they crossed in clear. QUIC stays
/// encrypted.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_recording_proxies_do_see_secrets_on_plain_http() {
    let call = a_call_through_recording_proxies(cluster::plain_http).await;
    let secret = |what: &str| {
        call.secrets
            .iter()
            .find(|(w, _)| *w == what)
            .map(|(_, s)| s.as_bytes().to_vec())
            .unwrap()
    };
    for what in [
        "the tenant's API key",
        "the passcode",
        "the host token",
        "Ada's ticket",
    ] {
        assert!(call.clients.contains(&secret(what)), "{what} not seen");
    }
    for what in ["Frankfurt's credential", "Dublin's credential"] {
        assert!(call.channel.contains(&secret(what)), "{what} not seen");
    }
    // The router's link command carries a cascade ticket.
    assert!(call.channel.contains(b"\"ticket\""));
    assert!(call.quic.len() > 5_000);
    assert!(!call.quic.contains(&secret("Ada's ticket")));
}

/// A CA, and certificates it issued: one for the router's address, one
/// for another name; and a self-signed one for the router's address.
struct Certs {
    dir: tempfile::TempDir,
}

impl Certs {
    fn new() -> Certs {
        let dir = tempfile::tempdir().unwrap();
        let mut ca = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
        ca.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        let ca =
            rcgen::CertifiedIssuer::self_signed(ca, rcgen::KeyPair::generate().unwrap()).unwrap();
        std::fs::write(dir.path().join("ca.pem"), ca.pem()).unwrap();
        for (name, san) in [("good", "127.0.2.1"), ("wrong-name", "router.example.org")] {
            let key = rcgen::KeyPair::generate().unwrap();
            let cert = rcgen::CertificateParams::new(vec![san.to_owned()])
                .unwrap()
                .signed_by(&key, &*ca)
                .unwrap();
            std::fs::write(dir.path().join(format!("{name}.crt")), cert.pem()).unwrap();
            std::fs::write(dir.path().join(format!("{name}.key")), key.serialize_pem()).unwrap();
        }
        let stranger = rcgen::generate_simple_self_signed(vec!["127.0.2.1".to_owned()]).unwrap();
        std::fs::write(dir.path().join("stranger.crt"), stranger.cert.pem()).unwrap();
        std::fs::write(
            dir.path().join("stranger.key"),
            stranger.signing_key.serialize_pem(),
        )
        .unwrap();
        Certs { dir }
    }

    fn path(&self, file: &str) -> PathBuf {
        self.dir.path().join(file)
    }
}

/// The dev config with the EU router serving `cert` (`<cert>.crt` and
/// `.key` of `certs`) and relays verifying it against the test CA.
fn serving(certs: &Certs, cert: &str) -> Cluster {
    let (crt, key, ca) = (
        certs.path(&format!("{cert}.crt")),
        certs.path(&format!("{cert}.key")),
        certs.path("ca.pem"),
    );
    Cluster::new(move |text| {
        let dev = |k: &str, f: &str| {
            text.lines()
                .find(|l| l.starts_with(&format!("{k} = ")) && l.ends_with(&format!("{f}\"")))
                .unwrap()
                .to_owned()
        };
        // The first router is the EU one; whole lines only (the relays'
        // websocket_tls_cert lines end the same way).
        text.replacen(
            &format!("\n{}", dev("tls_cert", "dev-router.crt")),
            &format!("\ntls_cert = \"{}\"", crt.display()),
            1,
        )
        .replacen(
            &format!("\n{}", dev("tls_key", "dev-router.key")),
            &format!("\ntls_key = \"{}\"", key.display()),
            1,
        )
        .replacen(
            &format!("\n{}", dev("tls_ca", "dev-router.crt")),
            &format!("\ntls_ca = \"{}\"", ca.display()),
            1,
        )
    })
}

/// How the relay's reports fare: the relay's reports refused at TLS and
/// accepted, the router's failed handshakes on its relay listener, and
/// the router's list of relays.
type Fared = (f64, f64, f64, Value);

/// Starts the EU router and Frankfurt and returns how the relay's reports
/// fare (read with `trust`) once `settled` holds of it.
async fn reports_to(
    c: &mut Cluster,
    trust: &Tls,
    what: &str,
    settled: impl Fn(&Fared) -> bool,
) -> Fared {
    c.start_router(ROUTER).await;
    c.start_relay("de-fra-1").await;
    let c = &*c;
    let url = c.url(ROUTER);
    until(what, REPORTS, || async {
        let relay = c.relay_metrics("de-fra-1").await;
        let metrics = trusting(trust, "GET", &format!("{url}/metrics")).await;
        let router = String::from_utf8_lossy(&metrics.unwrap().body).into_owned();
        let relays = trusting(trust, "GET", &format!("{url}/v1/admin/relays"))
            .await
            .unwrap()
            .json();
        let fared = (
            labelled(&relay, "rr_relay_router_reports_total", "outcome=\"tls\""),
            labelled(
                &relay,
                "rr_relay_router_reports_total",
                "outcome=\"accepted\"",
            ),
            // Relays report on the router's relay listener.
            labelled(
                &router,
                "rr_router_relay_channel_http_tls_failures_total",
                "reason=\"handshake\"",
            ),
            relays,
        );
        if settled(&fared) {
            Ok(fared)
        } else {
            Err(format!(
                "tls {}, accepted {}, failed handshakes {}, {}",
                fared.0, fared.1, fared.2, fared.3
            ))
        }
    })
    .await
}

fn health_of(relays: &Value, id: &str) -> String {
    relays["relays"]
        .as_array()
        .and_then(|rs| rs.iter().find(|r| r["id"] == id))
        .map(|r| r["health"].as_str().unwrap_or_default().to_owned())
        .unwrap_or_else(|| panic!("{id} not listed: {relays}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn relays_report_only_to_a_router_whose_certificate_their_ca_vouches_for() {
    let certs = Certs::new();
    let ca = Tls::from_ca_file(&certs.path("ca.pem")).unwrap();

    // Issued by the CA for the router's address: reports go through.
    let mut c = serving(&certs, "good");
    let (tls, accepted, _, relays) = reports_to(&mut c, &ca, "a report accepted", |f| {
        f.1 >= 1.0 && health_of(&f.3, "de-fra-1") == "healthy"
    })
    .await;
    assert_eq!(tls, 0.0);
    assert!(accepted >= 1.0);
    assert_eq!(health_of(&relays, "de-fra-1"), "healthy", "{relays}");
    c.shutdown().await;

    // A certificate the CA did not issue, for the right address: refused.
    let mut c = serving(&certs, "stranger");
    let own = Tls::from_ca_file(&certs.path("stranger.crt")).unwrap();
    // Two tries refused (the first and the one a second later), and
    // counted at the router.
    let (tls, accepted, failed, relays) = reports_to(&mut c, &own, "reports refused", |f| {
        f.0 >= 2.0 && f.2 >= 1.0
    })
    .await;
    assert!(tls >= 1.0, "tls failures {tls}");
    assert_eq!(accepted, 0.0);
    assert!(failed >= 1.0, "the router counts the refused handshakes");
    assert_ne!(health_of(&relays, "de-fra-1"), "healthy", "{relays}");
    c.shutdown().await;

    // Issued by the CA, for another name: refused too.
    let mut c = serving(&certs, "wrong-name");
    let named = ca.clone().for_name("router.example.org").unwrap();
    let (tls, accepted, _, relays) =
        reports_to(&mut c, &named, "reports refused", |f| f.0 >= 2.0).await;
    assert!(tls >= 1.0, "tls failures {tls}");
    assert_eq!(accepted, 0.0);
    assert_ne!(health_of(&relays, "de-fra-1"), "healthy", "{relays}");
    c.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_router_takes_reports_only_with_the_relays_credential() {
    let mut c = Cluster::new(|t| t);
    c.start(ROUTER, &["de-fra-1"]).await;
    let url = c.relay_url(ROUTER);
    for wrong in ["Bearer dev-relay-ie-dub-1", "Bearer guess", ""] {
        let r = cluster::request_raw(
            "POST",
            &format!("{url}/v1/relays/de-fra-1/report"),
            None,
            (!wrong.is_empty()).then_some(wrong),
            Some(b"{}".to_vec()),
        )
        .await;
        assert_eq!(
            r.status,
            401,
            "{wrong}: {}",
            String::from_utf8_lossy(&r.body)
        );
    }
    let public = c.url(ROUTER);
    let m = cluster::request("GET", &format!("{public}/metrics"), None, None, None).await;
    let m = String::from_utf8_lossy(&m.body).into_owned();
    assert!(
        labelled(
            &m,
            "rr_router_relay_reports_total",
            "outcome=\"bad_credential\""
        ) >= 3.0
    );
    c.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn clients_refuse_a_router_whose_certificate_they_do_not_trust() {
    let certs = Certs::new();
    let mut c = serving(&certs, "stranger");
    c.start_router(ROUTER).await;
    let url = c.url(ROUTER);
    // The project's client trusts the dev certificate here, not this one.
    let refused = http_client::request(
        "GET",
        &format!("{url}/healthz"),
        None,
        &[],
        None,
        Duration::from_secs(5),
    )
    .await
    .unwrap_err();
    assert!(matches!(refused, HttpError::Tls { .. }), "{refused}");
    assert!(refused.to_string().contains("UnknownIssuer"), "{refused}");
    // A join never sends its passcode to it.
    match cluster::join_from(
        &url,
        "eu-aaaaaaaaaaaaaaaaaaaaaaaaaa",
        "passcode",
        "127.0.0.2",
    )
    .await
    {
        Err(JoinError::Unreachable(e)) => assert!(e.contains("UnknownIssuer"), "{e}"),
        other => panic!("joined an untrusted router: {other:?}"),
    }
    // An https:// URL with no trust at all is refused before connecting.
    let none = http_client::request_with(
        "GET",
        &format!("{url}/healthz"),
        None,
        None,
        &[],
        None,
        Duration::from_secs(5),
    )
    .await
    .unwrap_err();
    assert!(matches!(none, HttpError::NoTrust(_)), "{none}");
    c.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_renewed_certificate_is_served_after_a_reload_and_a_broken_one_is_refused() {
    let certs = Certs::new();
    // The router serves whatever is in these two files.
    let (crt, key) = (certs.path("router.crt"), certs.path("router.key"));
    let install = |name: &str| {
        std::fs::copy(certs.path(&format!("{name}.crt")), &crt).unwrap();
        std::fs::copy(certs.path(&format!("{name}.key")), &key).unwrap();
    };
    install("stranger");
    let mut c = serving(&certs, "router");
    c.start_router(ROUTER).await;
    let url = c.url(ROUTER);
    let old = Tls::from_ca_file(&certs.path("stranger.crt")).unwrap();
    let ca = Tls::from_ca_file(&certs.path("ca.pem")).unwrap();
    let get = |tls: &Tls, method: &'static str, path: &'static str| {
        let (tls, url) = (tls.clone(), format!("{url}{path}"));
        async move { trusting(&tls, method, &url).await }
    };
    assert_eq!(get(&old, "GET", "/healthz").await.unwrap().status, 200);
    assert!(get(&ca, "GET", "/healthz").await.is_err());

    // Renewed files, then a reload: new connections get the new certificate.
    install("good");
    let r = get(&old, "POST", "/v1/admin/reload").await.unwrap();
    assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
    assert_eq!(get(&ca, "GET", "/healthz").await.unwrap().status, 200);
    // (A fresh client: one that connected before may resume its TLS
    // session, authenticated when it began.)
    let old = Tls::from_ca_file(&certs.path("stranger.crt")).unwrap();
    let stale = get(&old, "GET", "/healthz").await.unwrap_err();
    assert!(matches!(stale, HttpError::Tls { .. }), "{stale}");

    // A key that is not the certificate's: the reload is refused, with the
    // reason, and the certificate in force stays.
    std::fs::copy(certs.path("wrong-name.key"), &key).unwrap();
    let r = get(&ca, "POST", "/v1/admin/reload").await.unwrap();
    assert_eq!(r.status, 409, "{}", String::from_utf8_lossy(&r.body));
    let body = String::from_utf8_lossy(&r.body).into_owned();
    assert!(body.contains("HTTPS certificate"), "{body}");
    // A fresh client (no session to resume) sees the certificate in force.
    let ca = Tls::from_ca_file(&certs.path("ca.pem")).unwrap();
    assert_eq!(get(&ca, "GET", "/healthz").await.unwrap().status, 200);
    let named_other = Tls::from_ca_file(&certs.path("ca.pem"))
        .unwrap()
        .for_name("router.example.org")
        .unwrap();
    assert!(get(&named_other, "GET", "/healthz").await.is_err());
    let m = get(&ca, "GET", "/metrics").await.unwrap();
    let m = String::from_utf8_lossy(&m.body).into_owned();
    assert!(labelled(&m, "rr_router_reloads_total", "outcome=\"rejected\"") >= 1.0);
    assert!(labelled(&m, "rr_router_tls_cert_expiry_timestamp_seconds", "") > 1.7e9);
    c.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_relay_refuses_a_reload_whose_router_ca_does_not_load() {
    let mut c = Cluster::new(|t| t);
    c.start(ROUTER, &["de-fra-1"]).await;
    let text = std::fs::read_to_string(&c.config).unwrap();
    let ca_line = text
        .lines()
        .find(|l| l.starts_with("tls_ca = "))
        .unwrap()
        .to_owned();
    std::fs::write(
        &c.config,
        text.replacen(&ca_line, "tls_ca = \"/nonexistent/ca.pem\"", 1),
    )
    .unwrap();
    let relay = c
        .policy
        .relay(c.policy.relay_idx("de-fra-1").unwrap())
        .http_addr;
    let r = cluster::request(
        "POST",
        &format!("http://{relay}/v1/admin/reload"),
        None,
        Some("Bearer dev-relay-de-fra-1"),
        None,
    )
    .await;
    assert_eq!(r.status, 409, "{}", String::from_utf8_lossy(&r.body));
    assert!(
        String::from_utf8_lossy(&r.body).contains("/nonexistent/ca.pem"),
        "{}",
        String::from_utf8_lossy(&r.body)
    );
    // The policy in force stays: the relay still reports.
    let accepted = || async {
        labelled(
            &c.relay_metrics("de-fra-1").await,
            "rr_relay_router_reports_total",
            "outcome=\"accepted\"",
        )
    };
    let before = accepted().await;
    let after = until("a report accepted after the reload", REPORTS, || async {
        let after = accepted().await;
        if after > before {
            Ok(after)
        } else {
            Err(after)
        }
    })
    .await;
    assert!(after > before, "reports stopped: {before} -> {after}");
    c.shutdown().await;
}
