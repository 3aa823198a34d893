//! The HTTP listeners against clients that hold connections open: idle
//! connections, request heads sent a byte at a time, bodies that never
//! finish, too many connections from one address or in all, and relay
//! reports that would make the router buffer a body before it knows who
//! sends it. Loopback only; short limits set in `[limits]`.

mod support;

use std::time::Duration;

use support::cluster::Cluster;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::time::{Instant, timeout};

/// The dev config with HTTP limits small enough to watch, its routers on
/// plain HTTP so the tests can write the bytes of requests themselves
/// (the limits are the same under TLS: see the TLS test at the end).
fn cluster(limits: &str) -> Cluster {
    let limits = limits.to_owned();
    Cluster::new(move |t| format!("{}\n[limits]\n{limits}\n", support::cluster::plain_http(t)))
}

async fn connect_from(ip: &str, to: std::net::SocketAddr) -> TcpStream {
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.bind(format!("{ip}:0").parse().unwrap()).unwrap();
    socket.connect(to).await.unwrap()
}

/// Reads until the server closes the connection; returns what it sent, or
/// `None` if it was still open after `within`.
async fn closed_within(stream: &mut TcpStream, within: Duration) -> Option<Vec<u8>> {
    let mut got = Vec::new();
    let deadline = Instant::now() + within;
    let mut buf = [0u8; 4096];
    loop {
        match tokio::time::timeout_at(deadline, stream.read(&mut buf)).await {
            Err(_) => return None,
            Ok(Ok(0)) | Ok(Err(_)) => return Some(got),
            Ok(Ok(n)) => got.extend_from_slice(&buf[..n]),
        }
    }
}

/// The router's `metric` for `reason`.
fn by_reason(text: &str, metric: &str, reason: &str) -> f64 {
    let prefix = format!("{metric}{{reason=\"{reason}\",router=\"de-fra-router\"}} ");
    text.lines()
        .find_map(|l| l.strip_prefix(prefix.as_str()))
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("no {prefix}"))
}

/// `rr_router_http_connections_closed_total` for `reason`.
fn closed(text: &str, reason: &str) -> f64 {
    by_reason(text, "rr_router_http_connections_closed_total", reason)
}

fn router_addr(c: &Cluster) -> std::net::SocketAddr {
    c.policy.router("de-fra-router").unwrap().listen
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_trickling_and_unfinished_requests_are_closed_in_time() {
    let mut c = cluster(
        "http_header_timeout_secs = 1\nhttp_body_timeout_secs = 1\nhttp_idle_timeout_secs = 2",
    );
    c.start_router("de-fra-router").await;
    let addr = router_addr(&c);
    // Wait until it serves.
    support::cluster::request("GET", &format!("http://{addr}/healthz"), None, None, None).await;

    // Connected, sending nothing.
    let mut silent = connect_from("127.0.0.9", addr).await;
    // A request head a byte every 300 ms: bytes keep moving, the head never ends.
    let mut trickle = connect_from("127.0.0.9", addr).await;
    let trickler = tokio::spawn(async move {
        for b in b"GET /healthz HTTP/1.1\r\nhost: x\r\nx-pad: aaaaaaaaaaaaaaaa"
            .iter()
            .cycle()
        {
            if trickle.write_all(&[*b]).await.is_err() {
                return Instant::now();
            }
            tokio::time::sleep(Duration::from_millis(300)).await;
        }
        unreachable!()
    });
    // A body that never finishes.
    let mut unfinished = connect_from("127.0.0.9", addr).await;
    unfinished
        .write_all(
            b"POST /v1/conferences HTTP/1.1\r\nhost: x\r\nauthorization: Bearer dev-acme-key\r\ncontent-type: application/json\r\ncontent-length: 100\r\n\r\n{\"resid",
        )
        .await
        .unwrap();
    // A keep-alive connection after its request was answered.
    let mut kept = connect_from("127.0.0.9", addr).await;
    kept.write_all(b"GET /healthz HTTP/1.1\r\nhost: x\r\n\r\n")
        .await
        .unwrap();
    let mut first = [0u8; 17];
    kept.read_exact(&mut first).await.unwrap();
    assert_eq!(&first, b"HTTP/1.1 200 OK\r\n");

    let started = Instant::now();
    assert!(
        closed_within(&mut silent, Duration::from_secs(5))
            .await
            .is_some(),
        "a silent connection stayed open"
    );
    let sent = closed_within(&mut unfinished, Duration::from_secs(5))
        .await
        .expect("an unfinished body kept its connection open");
    let answer = String::from_utf8_lossy(&sent);
    assert!(
        answer.is_empty() || answer.starts_with("HTTP/1.1 400"),
        "{answer}"
    );
    assert!(
        closed_within(&mut kept, Duration::from_secs(6))
            .await
            .is_some(),
        "an idle keep-alive connection stayed open"
    );
    let cut = timeout(Duration::from_secs(6), trickler)
        .await
        .expect("a trickled request head stayed open")
        .unwrap();
    assert!(cut.duration_since(started) < Duration::from_secs(6));
    // Each closed for its own reason.
    let metrics = support::cluster::request(
        "GET",
        &format!("http://{addr}/metrics"),
        Some("127.0.0.10"),
        None,
        None,
    )
    .await;
    let text = String::from_utf8_lossy(&metrics.body);
    for reason in ["idle", "head_timeout"] {
        assert!(
            closed(&text, reason) >= 1.0,
            "no connection closed for {reason}: {text}"
        );
    }
    c.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_address_cannot_fill_the_listener_and_idle_connections_make_room() {
    let mut c = cluster(
        "http_connections_per_listener = 8\nhttp_connections_per_address = 4\nhttp_idle_timeout_secs = 60\nhttp_header_timeout_secs = 60",
    );
    c.start_router("de-fra-router").await;
    let addr = router_addr(&c);
    let healthz = format!("http://{addr}/healthz");
    support::cluster::request("GET", &healthz, None, None, None).await;

    // Four idle connections from one address; the fifth is answered 503 at once.
    let mut held = Vec::new();
    for _ in 0..4 {
        held.push(connect_from("127.0.0.9", addr).await);
    }
    let mut fifth = connect_from("127.0.0.9", addr).await;
    let answer = closed_within(&mut fifth, Duration::from_secs(2))
        .await
        .expect("refused at once");
    let answer = String::from_utf8_lossy(&answer);
    assert!(answer.starts_with("HTTP/1.1 503"), "{answer}");
    assert!(answer.contains("retry-after: 1"), "{answer}");
    assert!(answer.contains("too_many_connections"), "{answer}");

    // Four more idle connections from a second address fill the listener
    // (8); once they have been idle a second, a newcomer takes the place of
    // the longest idle one instead of being refused.
    for _ in 0..4 {
        held.push(connect_from("127.0.0.11", addr).await);
    }
    tokio::time::sleep(Duration::from_millis(1200)).await;
    let r = support::cluster::request("GET", &healthz, Some("127.0.0.12"), None, None).await;
    assert_eq!(r.status, 200);
    let mut evicted = 0;
    for s in &mut held {
        if closed_within(s, Duration::from_millis(100)).await.is_some() {
            evicted += 1;
        }
    }
    assert!(evicted >= 1, "no idle connection made room");
    // Another address is served. (Asked only now: asked before the second
    // address fills the listener, the slot of that request's connection
    // may not be given back yet, and the fourth connection of the second
    // address would be refused as over its share instead.)
    let r = support::cluster::request("GET", &healthz, Some("127.0.0.10"), None, None).await;
    assert_eq!(r.status, 200);
    // The evicted connection's task counts its close after the peer saw
    // it: read the metrics until the count shows (or 5 s pass).
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    let text = loop {
        let metrics = support::cluster::request(
            "GET",
            &format!("http://{addr}/metrics"),
            Some("127.0.0.12"),
            None,
            None,
        )
        .await;
        let text = String::from_utf8_lossy(&metrics.body).into_owned();
        if closed(&text, "evicted") >= 1.0 || std::time::Instant::now() > deadline {
            break text;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert!(
        text.contains("rr_router_http_connections_refused_total{reason=\"address_full\",router=\"de-fra-router\"} 1"),
        "{text}"
    );
    let evictions = closed(&text, "evicted");
    assert!(evictions >= 1.0, "{text}");
    c.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn relay_reports_are_authenticated_before_their_body_is_read() {
    let mut c = cluster("http_body_timeout_secs = 30");
    c.start_router("de-fra-router").await;
    let addr = router_addr(&c);
    support::cluster::request("GET", &format!("http://{addr}/healthz"), None, None, None).await;

    // Announcing 4,000,000 bytes and sending none: the answer comes from
    // the headers alone, long before the body timeout.
    for (path, auth, status) in [
        ("/v1/relays/no-such-relay/report", "Bearer x", "404"),
        ("/v1/relays/de-fra-1/report", "Bearer wrong", "401"),
    ] {
        let mut s = connect_from("127.0.0.9", addr).await;
        s.write_all(
            format!(
                "POST {path} HTTP/1.1\r\nhost: x\r\nauthorization: {auth}\r\ncontent-type: application/json\r\ncontent-length: 4000000\r\n\r\n"
            )
            .as_bytes(),
        )
        .await
        .unwrap();
        let mut head = [0u8; 12];
        timeout(Duration::from_secs(3), s.read_exact(&mut head))
            .await
            .unwrap_or_else(|_| panic!("{path}: no answer before the body"))
            .unwrap();
        assert_eq!(
            String::from_utf8_lossy(&head),
            format!("HTTP/1.1 {status}"),
            "{path}"
        );
    }
    // A relay with its credential still gets its report read.
    let r = support::cluster::request_raw(
        "POST",
        &format!("http://{addr}/v1/relays/de-fra-1/report"),
        None,
        Some("Bearer dev-relay-de-fra-1"),
        Some(b"{not json".to_vec()),
    )
    .await;
    assert_eq!(r.status, 400);
    c.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stalled_uploads_cannot_fill_the_listener_either() {
    let mut c = cluster(
        "http_connections_per_listener = 8\nhttp_connections_per_address = 4\nhttp_body_timeout_secs = 60\nhttp_idle_timeout_secs = 60",
    );
    c.start_router("de-fra-router").await;
    let addr = router_addr(&c);
    let healthz = format!("http://{addr}/healthz");
    support::cluster::request("GET", &healthz, None, None, None).await;

    // Eight uploads that stop short of their announced length, from two
    // addresses: the listener is full of requests in flight.
    let mut held = Vec::new();
    for ip in ["127.0.0.9", "127.0.0.11"] {
        for _ in 0..4 {
            let mut s = connect_from(ip, addr).await;
            s.write_all(
                b"POST /v1/conferences HTTP/1.1\r\nhost: x\r\nauthorization: Bearer dev-acme-key\r\ncontent-type: application/json\r\ncontent-length: 100\r\n\r\n{\"resid",
            )
            .await
            .unwrap();
            held.push(s);
        }
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    // Someone else still gets in: a request waiting for its body is no
    // better than an idle connection.
    let r = support::cluster::request("GET", &healthz, Some("127.0.0.12"), None, None).await;
    assert_eq!(r.status, 200);
    let mut evicted = 0;
    for s in &mut held {
        if closed_within(s, Duration::from_millis(100)).await.is_some() {
            evicted += 1;
        }
    }
    assert!(evicted >= 1, "no stalled upload made room");
    c.shutdown().await;
}

/// `rr_router_http_tls_failures_total` for `reason`.
fn tls_failures(text: &str, reason: &str) -> f64 {
    by_reason(text, "rr_router_http_tls_failures_total", reason)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_handshakes_that_stall_or_fail_are_closed_in_time_and_counted() {
    let limits = "http_header_timeout_secs = 1\nhttp_idle_timeout_secs = 3";
    let mut c = Cluster::new(move |t| format!("{t}\n[limits]\n{limits}\n"));
    c.start_router("de-fra-router").await;
    let addr = router_addr(&c);
    let url = c.url("de-fra-router");
    assert!(url.starts_with("https://"), "{url}");
    let metrics = format!("{url}/metrics");
    let ok = support::cluster::request("GET", &format!("{url}/healthz"), None, None, None).await;
    assert_eq!(ok.status, 200);

    // The first bytes of a ClientHello, then nothing: closed within the
    // head limit, not held open.
    let mut stalled = connect_from("127.0.0.9", addr).await;
    stalled
        .write_all(&[0x16, 0x03, 0x01, 0x02, 0x00, 0x01])
        .await
        .unwrap();
    // Plain HTTP to the HTTPS port: the handshake fails at once.
    let mut plain = connect_from("127.0.0.10", addr).await;
    plain
        .write_all(b"GET /healthz HTTP/1.1\r\nhost: x\r\n\r\n")
        .await
        .unwrap();
    let answer = closed_within(&mut plain, Duration::from_secs(3))
        .await
        .expect("plain HTTP to the HTTPS port is closed");
    assert!(
        !answer.starts_with(b"HTTP/1.1 200"),
        "plain HTTP was answered: {}",
        String::from_utf8_lossy(&answer)
    );
    assert!(
        closed_within(&mut stalled, Duration::from_secs(4))
            .await
            .is_some(),
        "a stalled handshake is closed"
    );
    // A client that does not trust the certificate gives up; the router
    // counts the failed handshake.
    let other = rcgen::generate_simple_self_signed(vec!["127.0.2.1".into()]).unwrap();
    let mut roots = rustls::RootCertStore::empty();
    roots.add(other.cert.der().clone()).unwrap();
    let untrusting = residency_relay::http_client::Tls::from_roots(roots);
    let refused = residency_relay::http_client::request_with(
        "GET",
        &format!("{url}/healthz"),
        Some(&untrusting),
        None,
        &[],
        None,
        Duration::from_secs(5),
    )
    .await
    .unwrap_err();
    assert!(
        matches!(refused, residency_relay::http_client::HttpError::Tls { .. }),
        "{refused}"
    );
    assert!(refused.to_string().contains("UnknownIssuer"), "{refused}");

    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let m = support::cluster::request("GET", &metrics, None, None, None).await;
        let text = String::from_utf8_lossy(&m.body).into_owned();
        let (timeouts, failed) = (
            tls_failures(&text, "timeout"),
            tls_failures(&text, "handshake"),
        );
        if timeouts >= 1.0 && failed >= 2.0 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "tls failures: timeout {timeouts}, handshake {failed}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // Inside TLS the same limits hold. A connection that completes the
    // handshake and then waits is idle, not a slow head: still open after
    // the head limit, closed after the idle limit. A head trickled a byte
    // at a time inside TLS is cut off at the head limit.
    let m = support::cluster::request("GET", &metrics, None, None, None).await;
    let text = String::from_utf8_lossy(&m.body).into_owned();
    let (idle_before, head_before) = (closed(&text, "idle"), closed(&text, "head_timeout"));
    let dev = residency_relay::http_client::Tls::from_ca_file(
        &support::repo().join("config/dev-router.crt"),
    )
    .unwrap();
    let tls = |from: &'static str| {
        let dev = dev.clone();
        async move {
            residency_relay::http_client::tls_connect(&dev, connect_from(from, addr).await, addr)
                .await
                .unwrap()
        }
    };
    let mut waiting = tls("127.0.0.11").await;
    let mut trickling = tls("127.0.0.12").await;
    let trickle = tokio::spawn(async move {
        for b in b"GET /healthz HTTP/1.1\r\nhost: x\r\n" {
            if trickling.write_all(&[*b]).await.is_err() || trickling.flush().await.is_err() {
                return true;
            }
            tokio::time::sleep(Duration::from_millis(300)).await;
        }
        false
    });
    let started = Instant::now();
    let mut buf = [0u8; 64];
    let closed_after = match timeout(Duration::from_secs(8), waiting.read(&mut buf)).await {
        Ok(Ok(0) | Err(_)) => started.elapsed(),
        other => panic!("the idle TLS connection: {other:?}"),
    };
    assert!(
        closed_after >= Duration::from_millis(2500),
        "closed after {closed_after:?}, before the idle limit"
    );
    assert!(trickle.await.unwrap(), "the trickled head was not cut off");
    let m = support::cluster::request("GET", &metrics, None, None, None).await;
    let text = String::from_utf8_lossy(&m.body).into_owned();
    assert!(closed(&text, "idle") > idle_before);
    assert!(closed(&text, "head_timeout") > head_before);

    // The listener still serves.
    let ok = support::cluster::request("GET", &format!("{url}/healthz"), None, None, None).await;
    assert_eq!(ok.status, 200);
    c.shutdown().await;
}
