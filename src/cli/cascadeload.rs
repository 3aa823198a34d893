//! `residency-relay cascadeload`: one publisher and N subscribers of one EU
//! conference, all on the publisher's relay ("single"), then the same N
//! spread evenly over three relays linked by cascade ("spread"), side by
//! side. Prints each relay's egress during the media phase (from its
//! `/metrics`) and the subscribers' one-way latency, split into those on
//! the publisher's relay and those one cascade hop away.
//!
//! Runs against `residency-relay dev` (the dev config's client addresses:
//! 127.0.0.2 Germany → Frankfurt, .4 Ireland → Dublin, .7 Netherlands →
//! Amsterdam).

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use serde_json::json;

use crate::client::join::{self, Joined};
use crate::client::synthetic::{self, ReceiveStats, quantile};
use crate::client::{self, Client};
use crate::http_client;
use crate::wire::control::TrackKind;
use std::process::ExitCode;

use super::args::CascadeloadArgs;

/// What one run measured.
struct Outcome {
    /// Relay id → bytes handed to subscribers and links during the media phase.
    egress: Vec<(String, u64)>,
    /// Latencies (µs) of subscribers on the publisher's relay, and beyond a link.
    local: ReceiveStats,
    remote: ReceiveStats,
    sent: u64,
    expected: u64,
}

pub(super) fn run(
    policy: &crate::policy::Policy,
    router: &str,
    api_key: &str,
    subscribers: usize,
    packets_per_second: u64,
    seconds: u64,
) -> Result<(), String> {
    super::trust_routers_of(policy)?;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .map_err(|e| format!("cannot start the runtime: {e}"))?;
    runtime.block_on(async {
        let single = measure(
            policy,
            router,
            api_key,
            subscribers,
            &["127.0.0.2"],
            packets_per_second,
            seconds,
        )
        .await?;
        print("single relay", &single, subscribers);
        let spread = measure(
            policy,
            router,
            api_key,
            subscribers,
            &["127.0.0.2", "127.0.0.4", "127.0.0.7"],
            packets_per_second,
            seconds,
        )
        .await?;
        print("three relays", &spread, subscribers);
        Ok(())
    })
}

fn print(what: &str, o: &Outcome, subscribers: usize) {
    let mut local = o.local.latencies_us.clone();
    let mut remote = o.remote.latencies_us.clone();
    let ms = |v: &mut Vec<u64>, q: f64| quantile(v, q).map_or(0.0, |x| x as f64 / 1000.0);
    println!(
        "{what}: 1 publisher, {subscribers} subscribers, {} packets sent, {} of {} deliveries received ({} lost)",
        o.sent,
        o.local.packets + o.remote.packets,
        o.expected,
        o.local.lost() + o.remote.lost(),
    );
    for (relay, bytes) in &o.egress {
        println!("  {relay:<10} egress {:>12} bytes", bytes);
    }
    println!(
        "  latency on the publisher's relay: p50 {:.2} ms, p99 {:.2} ms ({} packets)",
        ms(&mut local, 0.5),
        ms(&mut local, 0.99),
        local.len()
    );
    if !remote.is_empty() {
        println!(
            "  latency one cascade hop away:     p50 {:.2} ms, p99 {:.2} ms ({} packets)",
            ms(&mut remote, 0.5),
            ms(&mut remote, 0.99),
            remote.len()
        );
    }
}

async fn metric(http: SocketAddr, name: &str) -> u64 {
    let Ok(r) = http_client::request(
        "GET",
        &format!("http://{http}/metrics"),
        None,
        &[],
        None,
        Duration::from_secs(5),
    )
    .await
    else {
        return 0;
    };
    crate::relay::metrics::sample(&String::from_utf8_lossy(&r.body), name).map_or(0, |v| v as u64)
}

async fn measure(
    policy: &crate::policy::Policy,
    router: &str,
    api_key: &str,
    subscribers: usize,
    spread_over: &[&str],
    pps: u64,
    seconds: u64,
) -> Result<Outcome, String> {
    let created = join::create(
        router,
        api_key,
        &json!({ "residency": "eu", "waiting_room": false }),
    )
    .await
    .map_err(|e| format!("creating the conference: {e}"))?;
    let (id, credential) = (created.id.clone(), created.credential());
    let joiner = |ip: &str| {
        let (router, id, credential) = (router.to_owned(), id.clone(), credential.clone());
        let ip: IpAddr = ip.parse().unwrap_or(IpAddr::from([127, 0, 0, 1]));
        async move {
            join::join(
                &router,
                &id,
                &credential,
                "load",
                Some(ip),
                Duration::from_secs(30),
            )
            .await
            .map(|j| (ip, j))
            .map_err(|e| e.to_string())
        }
    };
    let (pub_ip, pub_joined) = joiner("127.0.0.2").await?;
    let mut publisher = Client::connect(
        SocketAddr::new(pub_ip, 0),
        pub_joined.quic_addr,
        &pub_joined.cert_sha256,
        &pub_joined.ticket,
    )
    .await
    .map_err(|e| e.to_string())?;
    let track = publisher
        .publish(TrackKind::Video, "synthetic-video", None)
        .await
        .map_err(|e| e.to_string())?;
    let mut subs = subscribers_join(&joiner, subscribers, spread_over).await?;
    for (_, client) in &mut subs {
        client
            .subscribe_announced(track, Duration::from_secs(15))
            .await
            .map_err(|e| format!("subscribing to the publisher's track: {e}"))?;
    }
    // Prime until every subscriber receives, then let the primers drain.
    let mut stream = synthetic::Stream::new(&publisher, track);
    let everyone: Vec<&Client> = subs.iter().map(|(_, c)| c).collect();
    stream.prime(&everyone, Duration::from_secs(20)).await?;
    let first_measured = stream.sequence + 1_000;
    let mut sequence = first_measured;
    // Egress counters before the media phase.
    let relays = eu_relays(policy);
    let mut before = Vec::new();
    for (_, http) in &relays {
        before.push(metric(*http, "rr_relay_bytes_delivered_total").await);
    }
    // Receivers, then the publisher at a steady rate.
    let tasks = receive(subs, &pub_joined.relay_id, first_measured, seconds);
    let count = pps * seconds;
    let mut tick = tokio::time::interval(Duration::from_nanos(1_000_000_000 / pps.max(1)));
    for _ in 0..count {
        tick.tick().await;
        stream.send(sequence);
        sequence += 1;
    }
    let mut local = ReceiveStats::default();
    let mut remote = ReceiveStats::default();
    for t in tasks {
        let (is_local, stats) = t.await.map_err(|e| e.to_string())?;
        if is_local {
            local.merge(stats);
        } else {
            remote.merge(stats);
        }
    }
    let mut egress = Vec::new();
    for ((relay, http), b) in relays.iter().zip(before) {
        egress.push((
            relay.clone(),
            metric(*http, "rr_relay_bytes_delivered_total")
                .await
                .saturating_sub(b),
        ));
    }
    publisher.leave().await;
    Ok(Outcome {
        egress,
        local,
        remote,
        sent: count,
        expected: count * subscribers as u64,
    })
}

/// Every relay of the EU jurisdiction and its HTTP address: those
/// carrying nothing show 0.
fn eu_relays(policy: &crate::policy::Policy) -> Vec<(String, SocketAddr)> {
    policy
        .jurisdiction_idx("eu")
        .map(|j| {
            policy
                .jurisdiction(j)
                .relays()
                .map(|r| (policy.relay(r).id.clone(), policy.relay(r).http_addr))
                .collect()
        })
        .unwrap_or_default()
}

/// Each subscriber counts what arrives from `first_measured` on for
/// `seconds` (and 2 more), told apart by whether it is on the publisher's
/// relay.
fn receive(
    subs: Vec<(Joined, Client)>,
    publisher_relay: &str,
    first_measured: u32,
    seconds: u64,
) -> Vec<tokio::task::JoinHandle<(bool, ReceiveStats)>> {
    let mut tasks = Vec::new();
    for (j, client) in subs {
        let local = j.relay_id == publisher_relay;
        let datagrams = client.datagrams();
        tasks.push(tokio::spawn(async move {
            let mut stats = ReceiveStats::default();
            let stop = tokio::time::Instant::now() + Duration::from_secs(seconds + 2);
            while let Ok(Ok(d)) = tokio::time::timeout_at(stop, datagrams.next()).await {
                if let Ok(h) = crate::wire::datagram::parse(&d) {
                    if h.sequence >= first_measured {
                        stats.record(&d);
                    }
                }
            }
            drop(client);
            (local, stats)
        }));
    }
    tasks
}

/// Subscribers join from the `spread_over` addresses in turn: one
/// endpoint per (address, relay), shared.
async fn subscribers_join<F, Fut>(
    joiner: &F,
    subscribers: usize,
    spread_over: &[&str],
) -> Result<Vec<(Joined, Client)>, String>
where
    F: Fn(&str) -> Fut,
    Fut: std::future::Future<Output = Result<(IpAddr, Joined), String>>,
{
    let mut endpoints: HashMap<(IpAddr, String), quinn::Endpoint> = HashMap::new();
    let mut subs: Vec<(Joined, Client)> = Vec::new();
    for n in 0..subscribers {
        let (ip, joined) = joiner(spread_over[n % spread_over.len()]).await?;
        let key = (ip, joined.relay_id.clone());
        if !endpoints.contains_key(&key) {
            let e = client::endpoint(SocketAddr::new(ip, 0), &joined.cert_sha256)
                .map_err(|e| e.to_string())?;
            endpoints.insert(key.clone(), e);
        }
        let client = Client::connect_on(endpoints[&key].clone(), joined.quic_addr, &joined.ticket)
            .await
            .map_err(|e| e.to_string())?;
        subs.push((joined, client));
    }
    Ok(subs)
}

/// `cascadeload`: against the relays of the config `dev` runs.
pub(super) fn command(a: CascadeloadArgs) -> ExitCode {
    let policy = match super::load(&a.config, None) {
        Ok(p) => p,
        Err(code) => return code,
    };
    super::report(run(
        &policy,
        &a.router,
        &a.api_key,
        a.subscribers,
        a.pps,
        a.seconds,
    ))
}
