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
    // A fixed wait: asking the router whether it has them would take a
    // connection of the full listener, which is what comes next.
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
    // Relays report on the router's relay listener.
    let addr = c
        .policy
        .router("de-fra-router")
        .unwrap()
        .relay_listen
        .unwrap();
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
    // For the router to read the heads: a fixed wait, as asking it would
    // take a connection of the full listener, which is what comes next.
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

/// A waiting-room conference of tenant acme on `router` and `n`
/// participants waiting in it: `(conference id, [(participant id, wait token)])`.
async fn waiting(router: &str, n: usize) -> (String, Vec<(String, String)>) {
    let conf = support::cluster::create(
        router,
        support::cluster::ACME,
        serde_json::json!({ "residency": "eu", "waiting_room": true }),
    )
    .await;
    let id = conf["id"].as_str().unwrap().to_owned();
    let passcode = conf["passcode"].as_str().unwrap().to_owned();
    let mut waiting = Vec::new();
    for k in 0..n {
        let r = support::cluster::request(
            "POST",
            &format!("{router}/v1/conferences/{id}/join"),
            Some("127.0.0.2"),
            None,
            Some(serde_json::json!({ "passcode": passcode, "display_name": format!("w{k}") })),
        )
        .await;
        assert_eq!(r.status, 202, "{}", String::from_utf8_lossy(&r.body));
        let a = r.json();
        waiting.push((
            a["participant_id"].as_str().unwrap().to_owned(),
            a["wait_token"].as_str().unwrap().to_owned(),
        ));
    }
    (id, waiting)
}

/// Sends a waiting-room poll on a new connection from `from`.
async fn poll_from(
    from: &str,
    addr: std::net::SocketAddr,
    conference: &str,
    (pid, token): &(String, String),
) -> TcpStream {
    let mut s = connect_from(from, addr).await;
    s.write_all(
        format!(
            "GET /v1/conferences/{conference}/waiting/{pid} HTTP/1.1\r\nhost: x\r\nauthorization: Bearer {token}\r\n\r\n"
        )
        .as_bytes(),
    )
    .await
    .unwrap();
    s
}

/// The answer's head and body once some arrived within `within`, or `None`.
async fn answer_within(stream: &mut TcpStream, within: Duration) -> Option<String> {
    let mut buf = [0u8; 4096];
    match timeout(within, stream.read(&mut buf)).await {
        Ok(Ok(n)) if n > 0 => Some(String::from_utf8_lossy(&buf[..n]).into_owned()),
        _ => None,
    }
}

/// The router's metrics text, asked from `from`.
async fn router_metrics(addr: std::net::SocketAddr, from: &str) -> String {
    let m = support::cluster::request(
        "GET",
        &format!("http://{addr}/metrics"),
        Some(from),
        None,
        None,
    )
    .await;
    String::from_utf8_lossy(&m.body).into_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_poll_per_wait_token_and_long_polls_in_a_budget_of_their_own() {
    // 8 connections: a budget of 2 held polls.
    let mut c = cluster(
        "http_connections_per_listener = 8\nhttp_connections_per_address = 8\nhttp_idle_timeout_secs = 60\nhttp_header_timeout_secs = 60",
    );
    c.start_router("de-fra-router").await;
    let addr = router_addr(&c);
    let router = c.url("de-fra-router");
    let (conf, people) = waiting(&router, 3).await;

    // The same wait token polled from two connections: within a second of
    // the first, the second is refused from memory and closed; after it,
    // the newer one takes over and the older is answered 409 at once.
    let mut first = poll_from("127.0.0.21", addr, &conf, &people[0]).await;
    assert_eq!(
        answer_within(&mut first, Duration::from_millis(100)).await,
        None,
        "a poll is held"
    );
    // Polls of the same token from another connection until one takes
    // over (one take-over a second): each before it is refused and closed.
    let mut refused_polls = 0;
    let deadline = Instant::now() + Duration::from_secs(10);
    let (mut second, ended) = loop {
        assert!(Instant::now() < deadline, "no poll took over within 10 s");
        let mut candidate = poll_from("127.0.0.22", addr, &conf, &people[0]).await;
        if let Some(ended) = answer_within(&mut first, Duration::from_millis(100)).await {
            break (candidate, ended);
        }
        match closed_within(&mut candidate, Duration::from_secs(3)).await {
            Some(refused) => {
                let refused = String::from_utf8_lossy(&refused);
                assert!(refused.starts_with("HTTP/1.1 429"), "{refused}");
                assert!(refused.contains("poll_in_progress"), "{refused}");
                assert!(refused.contains("retry-after: 1"), "{refused}");
                refused_polls += 1;
            }
            // Held: it took over, and the older poll's answer is on its way.
            None => {
                let ended = answer_within(&mut first, Duration::from_secs(3))
                    .await
                    .expect("the older poll of the same token was ended");
                break (candidate, ended);
            }
        }
    };
    assert!(
        refused_polls >= 1,
        "a second poll within a second was not refused"
    );
    assert!(ended.starts_with("HTTP/1.1 409"), "{ended}");
    assert!(ended.contains("poll_superseded"), "{ended}");
    assert_eq!(
        answer_within(&mut second, Duration::from_millis(200)).await,
        None,
        "the newer poll is held"
    );

    // Another participant's poll is held too: the budget (2) is full, so a
    // third is answered at once, still waiting, with when to come back.
    let mut other = poll_from("127.0.0.23", addr, &conf, &people[1]).await;
    assert_eq!(
        answer_within(&mut other, Duration::from_millis(300)).await,
        None
    );
    let mut third = poll_from("127.0.0.24", addr, &conf, &people[2]).await;
    let at_once = answer_within(&mut third, Duration::from_secs(2))
        .await
        .expect("a poll over the budget is answered at once");
    assert!(at_once.starts_with("HTTP/1.1 200"), "{at_once}");
    assert!(at_once.contains("retry-after: 2"), "{at_once}");
    assert!(at_once.contains("\"waiting\":true"), "{at_once}");

    let text = router_metrics(addr, "127.0.0.25").await;
    assert_eq!(
        by_reason(&text, "rr_router_waiting_polls_cut_total", "superseded"),
        1.0
    );
    assert_eq!(
        by_reason(&text, "rr_router_waiting_polls_cut_total", "in_progress"),
        f64::from(refused_polls)
    );
    assert_eq!(
        by_reason(&text, "rr_router_http_long_polls_cut_total", "budget_full"),
        1.0
    );
    assert!(
        text.contains("rr_router_http_long_polls_held{router=\"de-fra-router\"} 2"),
        "{text}"
    );
    c.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn held_polls_make_room_as_idle_connections_do_and_relays_report_on_their_own_listener() {
    let mut c = cluster(
        "http_connections_per_listener = 8\nhttp_connections_per_address = 8\nhttp_idle_timeout_secs = 60\nhttp_header_timeout_secs = 60",
    );
    c.start("de-fra-router", &["de-fra-1"]).await;
    let addr = router_addr(&c);
    let router = c.url("de-fra-router");
    let relay_listen = c
        .policy
        .router("de-fra-router")
        .unwrap()
        .relay_listen
        .expect("the dev routers take relay reports on a listener of their own");
    let (conf, people) = waiting(&router, 2).await;
    // The joins' connections given back (but the one asking).
    let deadline = Instant::now() + Duration::from_secs(5);
    while !router_metrics(addr, "127.0.0.30")
        .await
        .contains("rr_router_http_connections_open{router=\"de-fra-router\"} 1\n")
    {
        assert!(Instant::now() < deadline, "connections left open");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }

    // Two held polls, then six idle connections: the listener is full, and
    // the polls, whose bytes moved first, are the idlest.
    let mut polls = Vec::new();
    for (k, p) in people.iter().enumerate() {
        let mut s = poll_from(&format!("127.0.0.{}", 31 + k), addr, &conf, p).await;
        assert_eq!(
            answer_within(&mut s, Duration::from_millis(200)).await,
            None
        );
        polls.push(s);
    }
    let mut idle = Vec::new();
    for k in 0..6 {
        idle.push(connect_from(&format!("127.0.0.{}", 41 + k), addr).await);
    }
    // The relay channel's listener answers whatever the public one holds:
    // relays keep reporting, and the relay stays healthy.
    let health = support::cluster::request(
        "GET",
        &format!("http://{relay_listen}/healthz"),
        Some("127.0.0.50"),
        None,
        None,
    )
    .await;
    assert_eq!(health.status, 200);

    // A newcomer is served: the oldest held poll is answered, still
    // waiting, come back in a second, and its connection closed.
    let r = support::cluster::request(
        "GET",
        &format!("http://{addr}/healthz"),
        Some("127.0.0.51"),
        None,
        None,
    )
    .await;
    assert_eq!(r.status, 200);
    let released = closed_within(&mut polls[0], Duration::from_secs(3))
        .await
        .expect("the longest-held poll made room and its connection closed");
    let released = String::from_utf8_lossy(&released);
    assert!(released.starts_with("HTTP/1.1 200"), "{released}");
    assert!(released.contains("\"waiting\":true"), "{released}");
    assert!(released.contains("retry-after: 1"), "{released}");
    let text = router_metrics(addr, "127.0.0.52").await;
    assert!(
        by_reason(&text, "rr_router_http_long_polls_cut_total", "evicted") >= 1.0,
        "{text}"
    );

    // The public listener no longer takes relay reports.
    let r = support::cluster::request(
        "POST",
        &format!("http://{addr}/v1/relays/de-fra-1/report"),
        Some("127.0.0.53"),
        Some("Bearer dev-relay-de-fra-1"),
        Some(serde_json::json!({})),
    )
    .await;
    assert_eq!(r.status, 421, "{}", String::from_utf8_lossy(&r.body));
    assert_eq!(r.json()["error"]["code"], "wrong_listener");
    c.wait_health("de-fra-router", &["de-fra-1"], "healthy")
        .await;
    drop(idle);
    c.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn over_the_cap_a_tls_client_reads_a_503_and_the_client_backs_off() {
    let limits = "http_connections_per_address = 2\nhttp_header_timeout_secs = 60\nhttp_idle_timeout_secs = 60";
    let mut c = Cluster::new(move |t| format!("{t}\n[limits]\n{limits}\n"));
    c.start("de-fra-router", &["de-fra-1"]).await;
    let addr = router_addr(&c);
    let url = c.url("de-fra-router");
    let conf = support::cluster::open_conference(&url, "eu").await;
    let id = conf["id"].as_str().unwrap().to_owned();
    let passcode = conf["passcode"].as_str().unwrap().to_owned();

    // Two connections from 127.0.0.61 fill its share; the third, over TLS,
    // gets an answer it can read.
    let held = vec![
        connect_from("127.0.0.61", addr).await,
        connect_from("127.0.0.61", addr).await,
    ];
    let r = residency_relay::http_client::request(
        "GET",
        &format!("{url}/healthz"),
        Some("127.0.0.61".parse().unwrap()),
        &[],
        None,
        Duration::from_secs(5),
    )
    .await
    .expect("a TLS client over the cap reads the answer");
    assert_eq!(r.status, 503);
    assert_eq!(r.header("retry-after"), Some("1"));
    assert_eq!(r.json()["error"]["code"], "too_many_connections");

    // A participant joining from there waits for Retry-After and asks
    // again; once a connection is given back, it is in.
    let joining = tokio::spawn({
        let (url, id) = (url.clone(), id.clone());
        async move {
            residency_relay::client::join::join(
                &url,
                &id,
                &residency_relay::client::join::Credential::Passcode(passcode),
                "behind a NAT",
                Some("127.0.0.61".parse().unwrap()),
                Duration::from_secs(30),
            )
            .await
        }
    });
    let metrics = format!("{url}/metrics");
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let m = support::cluster::request("GET", &metrics, None, None, None).await;
        let text = String::from_utf8_lossy(&m.body).into_owned();
        let refused = by_reason(
            &text,
            "rr_router_http_connections_refused_total",
            "address_full",
        );
        if refused >= 2.0 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the join was never refused: {refused}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    drop(held);
    let joined = timeout(Duration::from_secs(20), joining)
        .await
        .expect("the join backed off and came back")
        .unwrap()
        .expect("joined after backing off");
    assert_eq!(joined.relay_id, "de-fra-1");
    c.shutdown().await;
}
