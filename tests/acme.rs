//! A relay's WebSocket listener gets its certificate over ACME from
//! Debian's `pebble` (a real ACME server) on loopback, answering the
//! TLS-ALPN-01 challenge on its own port, keeps it on disk, and renews it
//! ahead of expiry without dropping the participants connected. A router
//! whose `url` names a host and that has no certificate files gets its
//! HTTPS certificate the same way, from the config's `[acme]`.

mod support;

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use residency_relay::acme::{Managed, Settings};
use residency_relay::client::websocket::upgrade_request;
use residency_relay::forward::CoreConfig;
use residency_relay::relay::WebSocketCert;
use residency_relay::wire::control::{ClientMessage, Decoder, ServerMessage};
use residency_relay::wire::websocket as ws;
use support::Reaped;
use support::relay::{TestRelay, VIEWER, claims, sign_dev};
use tokio_tungstenite::tungstenite::Message;

const NAME: &str = "relay-fra-1.test";

/// Seconds pebble's certificates are valid: renewed after two thirds.
const VALIDITY: u64 = 24;

/// Whether ACME tests must run (CI sets `RR_REQUIRE_ACME=1`).
fn required() -> bool {
    std::env::var("RR_REQUIRE_ACME").is_ok_and(|v| v == "1")
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// pebble and its DNS (pebble-challtestsrv answering every name with
/// 127.0.0.1), validating TLS-ALPN-01 on `tls_port`.
struct Pebble {
    _dns: Reaped,
    _pebble: Reaped,
    /// Trusts pebble's own HTTPS certificate.
    ca: PathBuf,
    directory: String,
    management: String,
}

fn start_pebble(dir: &Path, tls_port: u16) -> Option<Pebble> {
    if !Path::new("/usr/bin/pebble").exists() {
        assert!(
            !required(),
            "ACME tests are required here: no /usr/bin/pebble (apt-get install pebble)"
        );
        eprintln!("\n*** SKIPPING ACME TEST: no /usr/bin/pebble (apt-get install pebble) ***\n");
        return None;
    }
    // pebble's HTTPS certificate, from a CA of this test's.
    let ca_key = rcgen::KeyPair::generate().unwrap();
    let mut ca_params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
    ca_params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    let ca_cert = ca_params.self_signed(&ca_key).unwrap();
    let issuer = rcgen::Issuer::new(ca_params, ca_key);
    let leaf_key = rcgen::KeyPair::generate().unwrap();
    let leaf = rcgen::CertificateParams::new(vec!["localhost".into(), "127.0.0.1".into()])
        .unwrap()
        .signed_by(&leaf_key, &issuer)
        .unwrap();
    let ca = dir.join("pebble-ca.pem");
    std::fs::write(&ca, ca_cert.pem()).unwrap();
    std::fs::write(dir.join("pebble.pem"), leaf.pem()).unwrap();
    std::fs::write(dir.join("pebble.key"), leaf_key.serialize_pem()).unwrap();
    let (listen, management, dns) = (free_port(), free_port(), free_port());
    let config = serde_json::json!({"pebble": {
        "listenAddress": format!("127.0.0.1:{listen}"),
        "managementListenAddress": format!("127.0.0.1:{management}"),
        "certificate": dir.join("pebble.pem"),
        "privateKey": dir.join("pebble.key"),
        "httpPort": free_port(),
        "tlsPort": tls_port,
        "ocspResponderURL": "",
        "externalAccountBindingRequired": false,
        "certificateValidityPeriod": VALIDITY,
    }});
    std::fs::write(dir.join("pebble.json"), config.to_string()).unwrap();
    let dns_server = Reaped(
        std::process::Command::new("pebble-challtestsrv")
            .args(["-management", &format!("127.0.0.1:{}", free_port())])
            .args(["-dns01", &format!("127.0.0.1:{dns}")])
            .args(["-http01", "", "-https01", "", "-tlsalpn01", ""])
            // Every name is this machine, over IPv4 only (a validator
            // tries AAAA first).
            .args(["-defaultIPv4", "127.0.0.1", "-defaultIPv6", ""])
            .stdout(std::process::Stdio::null())
            .spawn()
            .expect("pebble-challtestsrv starts"),
    );
    let pebble = Reaped(
        std::process::Command::new("pebble")
            .args(["-strict", "-config"])
            .arg(dir.join("pebble.json"))
            .args(["-dnsserver", &format!("127.0.0.1:{dns}")])
            // No random sleeps in validation, no injected bad nonces.
            .env("PEBBLE_VA_NOSLEEP", "1")
            .env("PEBBLE_WFE_NONCEREJECT", "0")
            .stdout(std::process::Stdio::null())
            .spawn()
            .expect("pebble starts"),
    );
    Some(Pebble {
        _dns: dns_server,
        _pebble: pebble,
        ca,
        directory: format!("https://127.0.0.1:{listen}/dir"),
        management: format!("https://127.0.0.1:{management}"),
    })
}

/// `GET url`, trusting `ca`.
async fn get(url: &str, ca: &Path) -> Result<String, String> {
    let tls = residency_relay::http_client::Tls::from_ca_file(ca)?;
    let r = residency_relay::http_client::request_with(
        "GET",
        url,
        Some(&tls),
        None,
        &[],
        None,
        Duration::from_secs(5),
    )
    .await
    .map_err(|e| e.to_string())?;
    if r.status != 200 {
        return Err(format!("{url}: {}", r.status));
    }
    Ok(String::from_utf8_lossy(&r.body).into_owned())
}

/// TLS to the listener as `NAME`, trusting `roots` only; the certificate
/// it served.
async fn handshake(
    addr: std::net::SocketAddr,
    roots: &rustls::RootCertStore,
) -> Result<
    (
        tokio_rustls::client::TlsStream<tokio::net::TcpStream>,
        Vec<u8>,
    ),
    String,
> {
    handshake_as(NAME, addr, roots).await
}

/// TLS to the listener as `name`, trusting `roots` only.
async fn handshake_as(
    name: &'static str,
    addr: std::net::SocketAddr,
    roots: &rustls::RootCertStore,
) -> Result<
    (
        tokio_rustls::client::TlsStream<tokio::net::TcpStream>,
        Vec<u8>,
    ),
    String,
> {
    let config = residency_relay::tls::client_config(roots.clone(), &[b"http/1.1"]);
    let tcp = tokio::net::TcpStream::connect(addr)
        .await
        .map_err(|e| e.to_string())?;
    let tls = tokio_rustls::TlsConnector::from(Arc::new(config))
        .connect(name.try_into().unwrap(), tcp)
        .await
        .map_err(|e| e.to_string())?;
    let leaf = tls.get_ref().1.peer_certificates().unwrap()[0].to_vec();
    Ok((tls, leaf))
}

/// pebble's issuing root once it serves it, as trust anchors.
async fn pebble_roots(pebble: &Pebble, dir: &Path) -> rustls::RootCertStore {
    // pebble answers once it listens (well under a second).
    let roots_url = format!("{}/roots/0", pebble.management);
    let roots_pem =
        support::wait::until("pebble serves its roots", Duration::from_secs(20), || {
            get(&roots_url, &pebble.ca)
        })
        .await;
    get(&pebble.directory, &pebble.ca).await.unwrap();
    let root_file = dir.join("root.pem");
    std::fs::write(&root_file, &roots_pem).unwrap();
    residency_relay::tls::ca_roots(&root_file).unwrap()
}

fn metric(body: &str, name: &str) -> f64 {
    residency_relay::relay::metrics::sample(body, name)
        .unwrap_or_else(|| panic!("no {name} in\n{body}"))
}

#[tokio::test]
async fn the_websocket_certificate_comes_over_acme_and_is_renewed_without_dropping_anybody() {
    // What the relay says about its ACME orders shows with the test's
    // output (RUST_LOG=info).
    let _ = tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
        .with_test_writer()
        .try_init();
    let dir = tempfile::tempdir().unwrap();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let Some(pebble) = start_pebble(dir.path(), addr.port()) else {
        return;
    };
    let roots = pebble_roots(&pebble, dir.path()).await;

    let state = dir.path().join("acme");
    let settings = Settings {
        directory: pebble.directory.clone(),
        contact: vec!["mailto:ops@example.org".into()],
        state_dir: state.clone(),
        roots: Arc::new(residency_relay::tls::ca_roots(&pebble.ca).unwrap()),
    };
    let managed = Managed::new(NAME, &settings);
    assert_eq!(managed.not_after(), None, "nothing kept yet");
    let mut relay = TestRelay::start_with_websocket(
        "de-fra-1",
        "127.0.1.1",
        CoreConfig::default(),
        0,
        Some((
            listener,
            WebSocketCert::Acme(managed.clone(), settings.clone()),
        )),
    )
    .await;

    // Issued: the listener serves a certificate for the name from
    // pebble's CA, and says when it expires.
    let first = support::wait::until(
        "a certificate is issued",
        Duration::from_secs(30),
        || async { handshake(addr, &roots).await.map(|(_, leaf)| leaf) },
    )
    .await;
    let (_, body) = relay.get("/metrics").await;
    let expiry = metric(
        &body,
        "rr_relay_websocket_certificate_expiry_timestamp_seconds",
    );
    assert_eq!(Some(expiry as i64), managed.not_after());
    assert_eq!(
        metric(&body, "rr_relay_websocket_acme_certificates_total"),
        1.0
    );
    let kept = managed.folder();
    assert!(
        kept.starts_with(&state) && kept.join("cert.pem").exists() && kept.join("key.pem").exists()
    );
    assert!(kept.parent().unwrap().join("account.json").exists());

    // A participant on that certificate.
    let (tls, _) = handshake(addr, &roots).await.unwrap();
    let request = upgrade_request(
        &format!("wss://{NAME}:{}{}", addr.port(), ws::PATH),
        &format!("{NAME}:{}", addr.port()),
        Some(ws::SUBPROTOCOL),
    )
    .unwrap();
    let (mut socket, _) = tokio_tungstenite::client_async(request, tls).await.unwrap();
    let hello = ws::control(&ClientMessage::Hello {
        ticket: sign_dev(&claims("de-fra-1", "ada", VIEWER)),
    });
    socket.send(Message::Binary(hello.unwrap())).await.unwrap();
    let mut decoder = Decoder::new();
    let mut next_message = async || loop {
        if let Some(m) = decoder.next_message::<ServerMessage>().unwrap() {
            return m;
        }
        match socket.next().await {
            Some(Ok(Message::Binary(b))) => {
                if let Ok(ws::Inbound::Control(c)) = ws::parse(b) {
                    decoder.push(&c);
                }
            }
            Some(Ok(_)) => {}
            other => panic!("the participant's connection ended: {other:?}"),
        }
    };
    assert!(matches!(
        next_message().await,
        ServerMessage::Welcome { .. }
    ));

    // Renewed with a third of the lifetime left: new handshakes get the
    // new certificate, the participant stays.
    let second = support::wait::until(
        "the certificate is renewed",
        Duration::from_secs(VALIDITY + 20),
        || async {
            let (_, leaf) = handshake(addr, &roots).await?;
            if leaf == first {
                Err("still the first".to_owned())
            } else {
                Ok(leaf)
            }
        },
    )
    .await;
    assert_ne!(second, first);
    let (_, body) = relay.get("/metrics").await;
    assert_eq!(
        metric(&body, "rr_relay_websocket_acme_certificates_total"),
        2.0
    );
    assert_eq!(metric(&body, "rr_relay_websocket_acme_failures_total"), 0.0);
    let subscribe = ws::control(&ClientMessage::Subscribe {
        track: residency_relay::wire::datagram::TrackId(99),
    });
    socket
        .send(Message::Binary(subscribe.unwrap()))
        .await
        .unwrap();
    let mut answered = false;
    while !answered {
        match tokio::time::timeout(Duration::from_secs(5), socket.next()).await {
            Ok(Some(Ok(Message::Binary(b)))) => {
                if let Ok(ws::Inbound::Control(c)) = ws::parse(b) {
                    decoder.push(&c);
                    while let Ok(Some(m)) = decoder.next_message::<ServerMessage>() {
                        answered |= matches!(m, ServerMessage::Error { .. });
                    }
                }
            }
            Ok(Some(Ok(_))) => {}
            other => panic!("the participant was dropped by the renewal: {other:?}"),
        }
    }

    // Kept on disk: a restart starts from the renewed certificate.
    let again = Managed::new(NAME, &settings);
    assert_eq!(again.not_after(), managed.not_after());
    // Kept for this CA and this name only: another name starts afresh.
    assert_eq!(
        Managed::new("relay-ams-1.test", &settings).not_after(),
        None
    );
    relay.stop().await;
}

const ROUTER_NAME: &str = "router-fra.test";

/// `GET path` over TLS to the router as [`ROUTER_NAME`]: the body, and
/// the certificate served.
async fn router_get(
    addr: std::net::SocketAddr,
    roots: &rustls::RootCertStore,
    path: &str,
) -> Result<(String, Vec<u8>), String> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let (mut tls, leaf) = handshake_as(ROUTER_NAME, addr, roots).await?;
    let request =
        format!("GET {path} HTTP/1.1\r\nHost: {ROUTER_NAME}\r\nConnection: close\r\n\r\n");
    tls.write_all(request.as_bytes())
        .await
        .map_err(|e| e.to_string())?;
    let mut response = Vec::new();
    let _ = tls.read_to_end(&mut response).await;
    let response = String::from_utf8_lossy(&response).into_owned();
    match response.split_once("\r\n\r\n") {
        Some((head, body)) if head.starts_with("HTTP/1.1 200") => Ok((body.to_owned(), leaf)),
        _ => Err(format!("GET {path}: {response}")),
    }
}

#[tokio::test]
async fn a_router_given_a_dns_name_gets_its_https_certificate_over_acme_and_keeps_it() {
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let Some(pebble) = start_pebble(dir.path(), port) else {
        return;
    };
    let roots = pebble_roots(&pebble, dir.path()).await;
    let state = dir.path().join("acme");
    let acme = format!(
        "\n[acme]\ndirectory = \"{}\"\ncontact = [\"mailto:ops@example.org\"]\nstate_dir = \"{}\"\nca_file = \"{}\"\n",
        pebble.directory,
        state.display(),
        pebble.ca.display()
    );
    // The EU router on 127.0.0.1 (where pebble's DNS sends every name),
    // reached as router-fra.test, without certificate files.
    let mut c = support::cluster::Cluster::new(move |text| {
        let mut out = String::new();
        let mut in_router = false;
        for line in text.lines() {
            if line.starts_with("id = ") {
                in_router = line == "id = \"de-fra-router\"";
            }
            if in_router && line.starts_with("listen = ") {
                out.push_str(&format!("listen = \"127.0.0.1:{port}\"\n"));
            } else if in_router && line.starts_with("url = ") {
                out.push_str(&format!("url = \"https://{ROUTER_NAME}:{port}\"\n"));
            } else if !(in_router
                && (line.starts_with("tls_cert = ") || line.starts_with("tls_key = ")))
            {
                out.push_str(line);
                out.push('\n');
            }
        }
        out + &acme
    });
    assert_eq!(
        c.policy.router("de-fra-router").unwrap().acme.as_deref(),
        Some(ROUTER_NAME)
    );
    let addr: std::net::SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
    c.start_router("de-fra-router").await;

    // Until the certificate comes, handshakes fail; then the router
    // serves HTTPS with it, for its name, from pebble's CA.
    let (body, first) = support::wait::until(
        "the router's certificate is issued",
        Duration::from_secs(30),
        || router_get(addr, &roots, "/metrics"),
    )
    .await;
    assert!(
        metric(&body, "rr_router_tls_cert_expiry_timestamp_seconds")
            > residency_relay::clock::unix_now() as f64
    );
    assert_eq!(metric(&body, "rr_router_acme_certificates_total"), 1.0);
    assert_eq!(metric(&body, "rr_router_acme_failures_total"), 0.0);
    let kept: Vec<_> = walk(&state)
        .into_iter()
        .filter(|p| p.ends_with(format!("{ROUTER_NAME}/cert.pem")))
        .collect();
    assert_eq!(kept.len(), 1, "kept under {}: {kept:?}", state.display());

    // Restarted, it serves the certificate it kept, ordering none (the
    // restart is in-process and takes well under the 16 s after which a
    // 24 s certificate falls due for renewal).
    c.kill_router("de-fra-router").await;
    c.start_router("de-fra-router").await;
    let (body, again) = support::wait::until(
        "the restarted router serves HTTPS",
        Duration::from_secs(10),
        || router_get(addr, &roots, "/metrics"),
    )
    .await;
    assert_eq!(again, first);
    assert_eq!(metric(&body, "rr_router_acme_certificates_total"), 0.0);
    c.shutdown().await;
}

/// Every file under `dir`.
fn walk(dir: &Path) -> Vec<PathBuf> {
    let mut files = Vec::new();
    for entry in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        let path = entry.path();
        if path.is_dir() {
            files.extend(walk(&path));
        } else {
            files.push(path);
        }
    }
    files
}
