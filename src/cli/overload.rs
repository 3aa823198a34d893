//! `residency-relay overload`: fills a jurisdiction's relay capacity with a
//! call (one publisher, the rest subscribers), measures their media latency
//! for a calm period, then again while newcomers keep asking to join at a
//! fixed rate. Prints joins accepted and refused (by code), how fast the
//! refusals were answered, and the latency and loss of those already in,
//! calm against overload.
//!
//! Runs against `residency-relay dev`; the default targets Zurich (the only
//! relay of `ch`, 200 participants) through the Zurich router. Participants
//! use distinct loopback addresses (127.0.4.x in the call, 127.0.5.x
//! newcomers), as many people would, so per-address limits do not mask the
//! relay's capacity.

use std::collections::{BTreeMap, HashMap};
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::json;

use super::args::OverloadArgs as Plan;
use crate::client::join::{self, JoinError};
use crate::client::synthetic::{self, ReceiveStats, quantile};
use crate::client::{self, Client};
use crate::wire::control::TrackKind;

/// Participants per source address (well under the per-address limits).
const PER_ADDRESS: usize = 20;

/// The `n`th address of `third` (127.0.`third`.x), from 1 to 250.
fn address(third: u8, n: usize) -> IpAddr {
    IpAddr::V4(Ipv4Addr::new(127, 0, third, (n % 250) as u8 + 1))
}

/// Outcomes of the newcomers' join attempts.
#[derive(Debug, Default)]
struct Attempts {
    accepted: u64,
    /// Refusal code (with status) → count.
    refused: BTreeMap<String, u64>,
    /// Router unreachable or unexpected answers.
    failed: u64,
    /// Answer time of refusals, µs.
    refusal_us: Vec<u64>,
    /// Answer time of accepted joins, µs.
    accepted_us: Vec<u64>,
    /// Accepted newcomers, kept connected until the end.
    admitted: Vec<Client>,
}

pub(super) fn run(plan: Plan) -> Result<(), String> {
    if plan.inside < 2 {
        return Err("--inside must be at least 2 (a publisher and a subscriber)".into());
    }
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .map_err(|e| format!("cannot start the runtime: {e}"))?;
    runtime.block_on(measure(plan))
}

async fn measure(plan: Plan) -> Result<(), String> {
    let created = join::create(
        &plan.router,
        &plan.api_key,
        &json!({ "residency": plan.residency, "waiting_room": false }),
    )
    .await
    .map_err(|e| format!("creating the conference: {e}"))?;
    let (id, credential) = (created.id.clone(), created.credential());

    let mut clients = join_call(&plan, &id, &credential).await?;
    let mut publisher = clients.remove(0);
    let track = publisher
        .publish(TrackKind::Video, "synthetic-video", None)
        .await
        .map_err(|e| e.to_string())?;
    for client in &mut clients {
        client
            .subscribe_announced(track, Duration::from_secs(15))
            .await
            .map_err(|e| format!("subscribing to the publisher's track: {e}"))?;
    }
    // Prime until everyone receives, then let the primers drain.
    let mut stream = synthetic::Stream::new(&publisher, track);
    let everyone: Vec<&Client> = clients.iter().collect();
    stream.prime(&everyone, Duration::from_secs(20)).await?;
    let sequence = stream.sequence;

    // Sequence ranges of the two phases.
    let count = (plan.pps * plan.seconds) as u32;
    let calm_first = sequence + 1_000;
    let overload_first = calm_first + count + 1_000;
    let subscribers = clients.len() as u64;
    let mut receivers = Vec::new();
    for client in clients {
        let datagrams = client.datagrams();
        let total = Duration::from_secs(2 * plan.seconds + 4);
        receivers.push(tokio::spawn(async move {
            let mut calm = ReceiveStats::default();
            let mut overload = ReceiveStats::default();
            let stop = tokio::time::Instant::now() + total;
            while let Ok(Ok(d)) = tokio::time::timeout_at(stop, datagrams.next()).await {
                if let Ok(h) = crate::wire::datagram::parse(&d) {
                    if (calm_first..calm_first + count).contains(&h.sequence) {
                        calm.record(&d);
                    } else if h.sequence >= overload_first {
                        overload.record(&d);
                    }
                }
            }
            // Leave, so the capacity is free for the next run at once.
            client.leave().await;
            (calm, overload)
        }));
    }
    let interval = Duration::from_nanos(1_000_000_000 / plan.pps.max(1));
    let mut tick = tokio::time::interval(interval);
    for s in calm_first..calm_first + count {
        tick.tick().await;
        stream.send(s);
    }

    // Overload: newcomers ask to join at `rate` while the media goes on.
    let attempts = Arc::new(Mutex::new(Attempts::default()));
    let stop = tokio::time::Instant::now() + Duration::from_secs(plan.seconds);
    let newcomers = newcomers(&plan, &id, &credential, &attempts, stop);
    for s in overload_first..overload_first + count {
        tick.tick().await;
        stream.send(s);
    }
    for n in newcomers {
        let _ = n.await;
    }
    let mut calm = ReceiveStats::default();
    let mut overload = ReceiveStats::default();
    for r in receivers {
        let (c, o) = r.await.map_err(|e| e.to_string())?;
        calm.merge(c);
        overload.merge(o);
    }
    publisher.leave().await;

    let mut a = std::mem::take(&mut *attempts.lock().unwrap_or_else(|e| e.into_inner()));
    print_results(
        &plan,
        &mut a,
        subscribers,
        [&calm, &overload],
        u64::from(count) * subscribers,
    );
    for client in a.admitted.drain(..) {
        client.leave().await;
    }
    Ok(())
}

/// The call: `plan.inside` participants, one endpoint per address.
async fn join_call(
    plan: &Plan,
    id: &str,
    credential: &join::Credential,
) -> Result<Vec<Client>, String> {
    let mut endpoints: HashMap<IpAddr, quinn::Endpoint> = HashMap::new();
    let mut clients: Vec<Client> = Vec::new();
    for n in 0..plan.inside {
        let ip = address(4, n / PER_ADDRESS);
        let joined = join::join(
            &plan.router,
            id,
            credential,
            "load",
            Some(ip),
            Duration::from_secs(30),
        )
        .await
        .map_err(|e| format!("participant {n} of the call could not join: {e}"))?;
        let endpoint = match endpoints.entry(ip) {
            std::collections::hash_map::Entry::Occupied(e) => e.get().clone(),
            std::collections::hash_map::Entry::Vacant(e) => e
                .insert(
                    client::endpoint(SocketAddr::new(ip, 0), &joined.cert_sha256)
                        .map_err(|e| e.to_string())?,
                )
                .clone(),
        };
        let client = Client::connect_on(endpoint, joined.quic_addr, &joined.ticket)
            .await
            .map_err(|e| e.to_string())?;
        clients.push(client);
    }
    Ok(clients)
}

/// Newcomers asking to join at the plan's rate until `stop`, each from
/// an address of its own.
fn newcomers(
    plan: &Plan,
    id: &str,
    credential: &join::Credential,
    attempts: &Arc<Mutex<Attempts>>,
    stop: tokio::time::Instant,
) -> Vec<tokio::task::JoinHandle<()>> {
    let mut newcomers = Vec::new();
    let every = Duration::from_secs_f64(plan.newcomers.max(1) as f64 / plan.rate.max(1) as f64);
    for n in 0..plan.newcomers {
        let (router, id, credential) = (plan.router.clone(), id.to_owned(), credential.clone());
        let attempts = attempts.clone();
        let ip = address(5, n);
        newcomers.push(tokio::spawn(newcomer(
            router, id, credential, ip, every, stop, attempts,
        )));
    }
    newcomers
}

/// One newcomer: asks to join every `every` until `stop`; counts what it
/// was answered, and connects when accepted.
async fn newcomer(
    router: String,
    id: String,
    credential: join::Credential,
    ip: IpAddr,
    every: Duration,
    stop: tokio::time::Instant,
    attempts: Arc<Mutex<Attempts>>,
) {
    let mut tick = tokio::time::interval(every);
    while tokio::time::Instant::now() < stop {
        tick.tick().await;
        let started = Instant::now();
        let answer = join::join(
            &router,
            &id,
            &credential,
            "newcomer",
            Some(ip),
            Duration::from_secs(10),
        )
        .await;
        let took = started.elapsed().as_micros() as u64;
        match answer {
            Ok(joined) => {
                let client = Client::connect(
                    SocketAddr::new(ip, 0),
                    joined.quic_addr,
                    &joined.cert_sha256,
                    &joined.ticket,
                )
                .await;
                let mut a = attempts.lock().unwrap_or_else(|e| e.into_inner());
                a.accepted += 1;
                a.accepted_us.push(took);
                if let Ok(client) = client {
                    a.admitted.push(client);
                }
            }
            Err(JoinError::Refused { status, code, .. }) => {
                let mut a = attempts.lock().unwrap_or_else(|e| e.into_inner());
                *a.refused.entry(format!("{status} {code}")).or_default() += 1;
                a.refusal_us.push(took);
            }
            Err(_) => {
                attempts.lock().unwrap_or_else(|e| e.into_inner()).failed += 1;
            }
        }
    }
}

/// What the newcomers were answered and what those in the call received,
/// calm against overload (`expected` deliveries in each phase).
fn print_results(
    plan: &Plan,
    a: &mut Attempts,
    subscribers: u64,
    [calm, overload]: [&ReceiveStats; 2],
    expected: u64,
) {
    let ms = |v: &mut Vec<u64>, q: f64| quantile(v, q).map_or(0.0, |x| x as f64 / 1000.0);
    let refused: u64 = a.refused.values().sum();
    println!(
        "call of {} (1 publisher, {} subscribers) at {} packets/s; {} newcomers asking {} times/s for {} s",
        plan.inside, subscribers, plan.pps, plan.newcomers, plan.rate, plan.seconds
    );
    println!(
        "  join attempts {}: accepted {}, refused {} ({}), failed {}",
        a.accepted + refused + a.failed,
        a.accepted,
        refused,
        a.refused
            .iter()
            .map(|(code, n)| format!("{code}: {n}"))
            .collect::<Vec<_>>()
            .join(", "),
        a.failed
    );
    if !a.refusal_us.is_empty() {
        println!(
            "  refusals answered in p50 {:.2} ms, p99 {:.2} ms",
            ms(&mut a.refusal_us, 0.5),
            ms(&mut a.refusal_us, 0.99)
        );
    }
    for (what, stats) in [("calm", calm), ("overload", overload)] {
        let mut l = stats.latencies_us.clone();
        println!(
            "  those in, {what:<8}: p50 {:.2} ms, p99 {:.2} ms, {} of {} deliveries received ({} lost)",
            ms(&mut l, 0.5),
            ms(&mut l, 0.99),
            stats.packets,
            expected,
            stats.lost()
        );
    }
}
