//! End to end over loopback QUIC, measured side by side in one run:
//!
//! 1. Fan-out: 1 publisher → N subscribers through the relay, against the
//!    same datagrams sent directly by a quinn endpoint to N connections
//!    (the baseline: what QUIC itself delivers here). Both run in this one
//!    process on the same cores, each for a few seconds, sending as fast as
//!    the send buffers allow; then the relay again at 80 % of the direct
//!    per-connection rate, to check it loses nothing there.
//! 2. Memory: RSS of a relay process (the `relay` command) holding 1,000
//!    and 10,000 idle participants, from its own /metrics. They connect
//!    from 100 loopback addresses (127.0.4.1–100), at most 100 each, under
//!    the dev config's per-address limit; the relay is killed on every exit
//!    path of the bench, a panic included.
//! 3. Idle: CPU time of a relay process (from /proc/PID/stat) holding no
//!    participant for 20 s, then 1,000 connected, silent participants for
//!    60 s.
//!
//! Run: `cargo bench --bench e2e` (add `-- fanout`, `-- memory` or `-- idle`
//! for one part). `E2E_FANOUT_N=10,100` picks the fan-out sizes;
//! `E2E_RELAY_BIN=path` runs another build's `residency-relay` for the
//! memory and idle parts (a before/after pair in one session).
//! `E2E_FANOUT_ONLY=relay` (or `direct`) runs one side of the fan-out
//! alone, for a profile.
//! `E2E_QUICK=1` runs the smallest case of each part (CI: the bench still
//! works; no figures).

#[path = "../tests/support/mod.rs"]
mod support;

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use bytes::Bytes;
use residency_relay::client::{self, Client};
use residency_relay::forward::CoreConfig;
use residency_relay::relay::{Identity, tls};
use residency_relay::wire::control::TrackKind;
use residency_relay::wire::datagram::{self, Flags, MediaHeader, TrackId};
use support::relay::{PUBLISHER, TestRelay, VIEWER, claims, sign_dev};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const PACKET: usize = 1100;
const SECONDS: u64 = 4;

fn packet(track: TrackId) -> Bytes {
    let mut out = Vec::new();
    datagram::encode(
        &MediaHeader {
            track,
            sequence: 0,
            flags: Flags::default(),
            info: residency_relay::wire::datagram::Info::NONE,
        },
        &[0x5a; PACKET - datagram::HEADER_LEN],
        &mut out,
    );
    Bytes::from(out)
}

/// Counts datagrams on each connection until `until`.
fn count(
    conns: Vec<quinn::Connection>,
    until: Instant,
) -> (Arc<AtomicU64>, Vec<tokio::task::JoinHandle<()>>) {
    let received = Arc::new(AtomicU64::new(0));
    let tasks = conns
        .into_iter()
        .map(|c| {
            let received = received.clone();
            tokio::spawn(async move {
                let until = tokio::time::Instant::from_std(until);
                while let Ok(Ok(_)) = tokio::time::timeout_at(until, c.read_datagram()).await {
                    received.fetch_add(1, Ordering::Relaxed);
                }
            })
        })
        .collect();
    (received, tasks)
}

/// Direct: a quinn server sends every datagram to each of `n` connections,
/// as fast as the send buffers allow or at `rate` datagrams/s per
/// connection. Returns (delivered datagrams/s, datagrams sent per connection).
async fn direct(n: usize, rate: Option<f64>) -> (f64, u64) {
    let identity = Identity::self_signed(vec!["127.0.1.9".into()]).unwrap();
    let pin = identity.fingerprint();
    let mut server =
        quinn::ServerConfig::with_crypto(Arc::new(tls::server_config(&identity).unwrap()));
    let mut transport = quinn::TransportConfig::default();
    transport
        .datagram_receive_buffer_size(Some(4 << 20))
        .datagram_send_buffer_size(4 << 20);
    server.transport_config(Arc::new(transport));
    // The same socket treatment as the relay's, so only forwarding differs.
    let socket = std::net::UdpSocket::bind("127.0.1.9:0").unwrap();
    residency_relay::quic::enlarge_socket_buffers(&socket);
    let ep = quinn::Endpoint::new(
        quinn::EndpointConfig::default(),
        Some(server),
        socket,
        Arc::new(quinn::TokioRuntime),
    )
    .unwrap();
    let addr = ep.local_addr().unwrap();
    let clients = client::endpoint("127.0.0.2:0".parse().unwrap(), &pin).unwrap();
    let mut client_conns = Vec::new();
    let mut server_conns = Vec::new();
    for _ in 0..n {
        let connecting = clients.connect(addr, "direct").unwrap();
        let (c, s) = tokio::join!(connecting, async {
            ep.accept().await.unwrap().await.unwrap()
        });
        client_conns.push(c.unwrap());
        server_conns.push(s);
    }
    let start = Instant::now();
    let stop = start + Duration::from_secs(SECONDS);
    let (received, tasks) = count(client_conns, stop + Duration::from_millis(500));
    let d = packet(TrackId(1));
    let mut rounds = 0u64;
    match rate {
        None => {
            // One sender per connection, so a full connection never holds
            // up the others (the relay's sender does not wait on any).
            let senders: Vec<_> = server_conns
                .iter()
                .map(|s| {
                    let (s, d) = (s.clone(), d.clone());
                    tokio::spawn(async move {
                        while Instant::now() < stop {
                            if s.send_datagram_wait(d.clone()).await.is_err() {
                                break;
                            }
                        }
                    })
                })
                .collect();
            for t in senders {
                let _ = t.await;
            }
        }
        Some(rate) => {
            let mut tick = tokio::time::interval(Duration::from_secs_f64(1.0 / rate));
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
            while Instant::now() < stop {
                tick.tick().await;
                for s in &server_conns {
                    let _ = s.send_datagram(d.clone());
                }
                rounds += 1;
            }
        }
    }
    for t in tasks {
        let _ = t.await;
    }
    (
        received.load(Ordering::Relaxed) as f64 / SECONDS as f64,
        rounds,
    )
}

/// Through the relay: the publisher sends as fast as its buffer allows, or
/// at `rate` datagrams/s. Returns (delivered datagrams/s, sent datagrams).
async fn through_relay(n: usize, rate: Option<f64>) -> (f64, u64) {
    let mut relay = TestRelay::start("de-fra-1", "127.0.1.1", CoreConfig::default()).await;
    let mut publisher = Client::connect(
        "127.0.0.2:0".parse().unwrap(),
        relay.quic,
        &relay.fingerprint,
        &sign_dev(&claims("de-fra-1", "pub", PUBLISHER)),
    )
    .await
    .unwrap();
    let track = publisher
        .publish(TrackKind::Video, "bench", None)
        .await
        .unwrap();
    let ep = client::endpoint("127.0.0.3:0".parse().unwrap(), &relay.fingerprint).unwrap();
    let mut subscribers = Vec::new();
    for i in 0..n {
        let mut s = Client::connect_on(
            ep.clone(),
            relay.quic,
            &sign_dev(&claims("de-fra-1", &format!("s{i}"), VIEWER)),
        )
        .await
        .unwrap();
        s.subscribe(track).await.unwrap();
        subscribers.push(s);
    }
    let start = Instant::now();
    let stop = start + Duration::from_secs(SECONDS);
    let received = Arc::new(AtomicU64::new(0));
    let mut tasks = Vec::new();
    for s in subscribers {
        let received = received.clone();
        tasks.push(tokio::spawn(async move {
            let until = tokio::time::Instant::from_std(stop + Duration::from_millis(500));
            while let Ok(Ok(_)) = tokio::time::timeout_at(until, s.recv_media()).await {
                received.fetch_add(1, Ordering::Relaxed);
            }
            s
        }));
    }
    let d = packet(track);
    let mut sent = 0u64;
    match rate {
        None => {
            while Instant::now() < stop {
                if publisher.send_raw_wait(d.clone()).await.is_ok() {
                    sent += 1;
                }
            }
        }
        Some(rate) => {
            let mut tick = tokio::time::interval(Duration::from_secs_f64(1.0 / rate));
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
            while Instant::now() < stop {
                tick.tick().await;
                if publisher.send_raw(d.clone()).is_ok() {
                    sent += 1;
                }
            }
        }
    }
    for t in tasks {
        let _ = t.await;
    }
    relay.stop().await;
    (
        received.load(Ordering::Relaxed) as f64 / SECONDS as f64,
        sent,
    )
}

async fn fanout() {
    println!("fan-out over loopback QUIC, {PACKET}-byte datagrams, {SECONDS} s each");
    println!(
        "{:>6} {:>14} {:>14} {:>7} {:>20} {:>20}",
        "N", "direct Mbit/s", "relay Mbit/s", "ratio", "relay loss at 80 %", "direct loss at 80 %"
    );
    let sizes: Vec<usize> = std::env::var("E2E_FANOUT_N")
        .ok()
        .map(|v| v.split(',').filter_map(|n| n.trim().parse().ok()).collect())
        .unwrap_or_else(|| {
            if quick() {
                vec![10]
            } else {
                vec![10, 100, 1000]
            }
        });
    for n in sizes {
        // E2E_FANOUT_ONLY=relay|direct: one side only, unpaced (to profile it).
        match std::env::var("E2E_FANOUT_ONLY").as_deref() {
            Ok("relay") => {
                let (pps, _) = through_relay(n, None).await;
                println!(
                    "{n:>6} relay only {:>14.1} Mbit/s",
                    pps * PACKET as f64 * 8.0 / 1e6
                );
                continue;
            }
            Ok("direct") => {
                let (pps, _) = direct(n, None).await;
                println!(
                    "{n:>6} direct only {:>13.1} Mbit/s",
                    pps * PACKET as f64 * 8.0 / 1e6
                );
                continue;
            }
            _ => {}
        }
        let (direct_pps, _) = direct(n, None).await;
        let (relay_pps, _) = through_relay(n, None).await;
        let per_conn = 0.8 * direct_pps / n as f64;
        let loss = |delivered_pps: f64, sent_per_conn: u64| {
            (100.0 * (1.0 - delivered_pps * SECONDS as f64 / (sent_per_conn as f64 * n as f64)))
                .max(0.0)
        };
        let (relay_paced, relay_sent) = through_relay(n, Some(per_conn)).await;
        let (direct_paced, direct_sent) = direct(n, Some(per_conn)).await;
        let mbit = |pps: f64| pps * PACKET as f64 * 8.0 / 1e6;
        println!(
            "{n:>6} {:>14.1} {:>14.1} {:>6.2}x {:>18.3} % {:>18.3} %",
            mbit(direct_pps),
            mbit(relay_pps),
            relay_pps / direct_pps,
            loss(relay_paced, relay_sent),
            loss(direct_paced, direct_sent)
        );
    }
}

async fn http_get(addr: SocketAddr, path: &str) -> String {
    let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
    s.write_all(format!("GET {path} HTTP/1.1\r\nHost: r\r\nConnection: close\r\n\r\n").as_bytes())
        .await
        .unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).await.unwrap();
    out.split_once("\r\n\r\n")
        .map(|(_, b)| b.to_owned())
        .unwrap_or_default()
}

/// Resident memory of process `pid` in bytes, from /proc/PID/status.
fn rss(pid: u32) -> f64 {
    support::proc_sample(pid).resident_bytes as f64
}

/// Whether to run only the smallest case of each part (`E2E_QUICK=1`).
fn quick() -> bool {
    std::env::var_os("E2E_QUICK").is_some()
}

/// The `residency-relay` binary the memory and idle parts start.
fn relay_bin() -> String {
    std::env::var("E2E_RELAY_BIN").unwrap_or_else(|_| env!("CARGO_BIN_EXE_residency-relay").into())
}

/// Starts relay de-ber-1 of the dev config (QUIC 127.0.1.2:4433, HTTP
/// 127.0.1.2:9090) as a process; returns it with its certificate pin.
async fn start_relay_process() -> (support::Reaped, String) {
    let child = std::process::Command::new(relay_bin())
        .current_dir(support::repo())
        .args([
            "relay",
            "--config",
            "config/dev.toml",
            "--id",
            "de-ber-1",
            "--shutdown-grace",
            "1",
        ])
        .env("RUST_LOG", "warn")
        .spawn()
        .unwrap();
    let child = support::Reaped(child);
    let http: SocketAddr = "127.0.1.2:9090".parse().unwrap();
    while tokio::net::TcpStream::connect(http).await.is_err() {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let cert: serde_json::Value = serde_json::from_str(&http_get(http, "/cert").await).unwrap();
    (child, cert["sha256"].as_str().unwrap().to_owned())
}

/// Client endpoints on 100 loopback addresses (127.0.4.1–100): 100
/// participants on each stay under the per-address connection limit.
fn source_endpoints(pin: &str) -> Vec<quinn::Endpoint> {
    (1..=100)
        .map(|i| client::endpoint(format!("127.0.4.{i}:0").parse().unwrap(), pin).unwrap())
        .collect()
}

/// Joins idle participants of relay de-ber-1 until `clients` holds
/// `target`: 100 per conference and per source address, 250 at a time. A
/// join whose handshake timed out is tried again once, as a client would
/// (about one in a few thousand does under this burst on loopback); how
/// many were is printed.
async fn join_idle(endpoints: &[quinn::Endpoint], clients: &mut Vec<Client>, target: usize) {
    let quic: SocketAddr = "127.0.1.2:4433".parse().unwrap();
    let ticket = |i: usize| {
        let mut c = claims("de-ber-1", &format!("idle{i}"), VIEWER);
        c.conference = format!("eu-mem{}", i / 100);
        sign_dev(&c)
    };
    let endpoint = |i: usize| endpoints[(i / 100) % endpoints.len()].clone();
    let mut retried = 0;
    while clients.len() < target {
        let start = clients.len();
        let batch: Vec<_> = (start..target.min(start + 250))
            .map(|i| {
                let (ep, ticket) = (endpoint(i), ticket(i));
                (
                    i,
                    tokio::spawn(async move { Client::connect_on(ep, quic, &ticket).await }),
                )
            })
            .collect();
        for (i, b) in batch {
            match b.await.unwrap() {
                Ok(c) => clients.push(c),
                Err(first) => {
                    retried += 1;
                    match Client::connect_on(endpoint(i), quic, &ticket(i)).await {
                        Ok(c) => clients.push(c),
                        Err(again) => panic!(
                            "idle participant {i} could not join after {} had: {first}, then {again}",
                            clients.len()
                        ),
                    }
                }
            }
        }
    }
    if retried > 0 {
        println!("  ({retried} of the joins timed out once and were tried again)");
    }
}

async fn idle() {
    let (child, pin) = start_relay_process().await;
    let pid = child.0.id();
    tokio::time::sleep(Duration::from_secs(2)).await;
    println!("idle relay ({}), CPU from /proc/{pid}/stat", relay_bin());
    let measure = |secs: u64| async move {
        let (a, t) = (support::cpu_seconds(pid), Instant::now());
        tokio::time::sleep(Duration::from_secs(secs)).await;
        100.0 * (support::cpu_seconds(pid) - a) / t.elapsed().as_secs_f64()
    };
    println!(
        "{:>14} {:>8} {:>20}",
        "participants", "seconds", "% of one core"
    );
    let (calm, count, window) = if quick() { (2, 100, 2) } else { (20, 1000, 60) };
    println!("{:>14} {:>8} {:>20.2}", 0, calm, measure(calm).await);
    let mut clients = Vec::new();
    join_idle(&source_endpoints(&pin), &mut clients, count).await;
    // Joins done; let their control traffic settle first.
    tokio::time::sleep(Duration::from_secs(5)).await;
    println!(
        "{:>14} {:>8} {:>20.2}",
        clients.len(),
        window,
        measure(window).await
    );
    drop(child);
    drop(clients);
}

async fn memory() {
    let (child, pin) = start_relay_process().await;
    let pid = child.0.id();
    let endpoints = source_endpoints(&pin);
    tokio::time::sleep(Duration::from_millis(500)).await;
    let base = rss(pid);
    println!(
        "relay RSS with no participants: {:.1} MiB",
        base / 1048576.0
    );
    println!(
        "{:>8} {:>14} {:>22}",
        "idle", "RSS MiB", "KiB per participant"
    );
    let mut clients = Vec::new();
    let targets: &[usize] = if quick() { &[200] } else { &[1000, 10000] };
    for &target in targets {
        join_idle(&endpoints, &mut clients, target).await;
        tokio::time::sleep(Duration::from_secs(2)).await;
        let now = rss(pid);
        println!(
            "{target:>8} {:>14.1} {:>22.1}",
            now / 1048576.0,
            (now - base) / target as f64 / 1024.0
        );
    }
    drop(child);
    drop(clients);
}

fn main() {
    let filter: Vec<String> = std::env::args()
        .skip(1)
        .filter(|a| !a.starts_with("--"))
        .collect();
    let wants = |part: &str| filter.is_empty() || filter.iter().any(|f| f == part);
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        if wants("fanout") {
            fanout().await;
        }
        if wants("memory") {
            memory().await;
        }
        if wants("idle") {
            idle().await;
        }
    });
}
