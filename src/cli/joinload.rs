//! `residency-relay joinload`: join latency and throughput of a router.
//!
//! Creates one conference (without a waiting room), then `concurrency`
//! tasks join it with its passcode back to back for `seconds`, each on a
//! fresh connection as a participant's browser or app would; given several
//! routers (replicas), the tasks are spread evenly over them. Prints
//! requests per second and the latency percentiles of successful joins.
//! With `--baseline` it first loads `GET /healthz` the same way: the cost of
//! a fresh HTTP connection and request on this machine, to compare with.

use std::time::{Duration, Instant};

use serde_json::json;

use crate::client::synthetic::quantile;
use crate::http_client;

pub(super) fn run(
    routers: &[String],
    api_key: &str,
    concurrency: usize,
    seconds: u64,
    baseline: bool,
) -> Result<(), String> {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .map_err(|e| format!("cannot start the runtime: {e}"))?;
    let router = routers
        .first()
        .ok_or("give at least one --router")?
        .as_str();
    runtime.block_on(async move {
        let created =
            crate::client::join::create(router, api_key, &json!({ "waiting_room": false }))
                .await
                .map_err(|e| format!("creating the conference failed: {e}"))?;
        let id = created.id;
        let passcode = created.passcode.unwrap_or_default();
        if baseline {
            let (ok, failures, mut latencies, elapsed) = load(
                "GET",
                routers.iter().map(|r| format!("{r}/healthz")).collect(),
                None,
                concurrency,
                seconds,
            )
            .await?;
            print_table(
                "healthz (baseline)",
                ok,
                &failures,
                &mut latencies,
                elapsed,
                concurrency,
            );
        }
        let urls = routers
            .iter()
            .map(|r| format!("{r}/v1/conferences/{id}/join"))
            .collect();
        let body = json!({ "passcode": passcode, "display_name": "load" }).to_string();
        let (ok, failures, mut latencies, elapsed) =
            load("POST", urls, Some(body), concurrency, seconds).await?;
        print_table("join", ok, &failures, &mut latencies, elapsed, concurrency);
        Ok(())
    })
}

type Failures = std::collections::BTreeMap<u16, u64>;

/// `concurrency` tasks send the request back to back for `seconds`, task
/// `i` to `urls[i % urls.len()]` (replicas share the load evenly).
async fn load(
    method: &'static str,
    urls: Vec<String>,
    body: Option<String>,
    concurrency: usize,
    seconds: u64,
) -> Result<(usize, Failures, Vec<u64>, f64), String> {
    let end = Instant::now() + Duration::from_secs(seconds);
    let started = Instant::now();
    let mut tasks = Vec::new();
    for i in 0..concurrency.max(1) {
        let (url, body) = (urls[i % urls.len()].clone(), body.clone());
        tasks.push(tokio::spawn(async move {
            let mut latencies = Vec::new();
            let mut failures = Failures::new();
            while Instant::now() < end {
                let t = Instant::now();
                match http_client::request(
                    method,
                    &url,
                    None,
                    &[],
                    body.clone().map(String::into_bytes),
                    Duration::from_secs(10),
                )
                .await
                {
                    Ok(r) if r.status == 200 => latencies.push(t.elapsed().as_micros() as u64),
                    Ok(r) => *failures.entry(r.status).or_default() += 1,
                    Err(_) => *failures.entry(0).or_default() += 1,
                }
            }
            (latencies, failures)
        }));
    }
    let mut latencies = Vec::new();
    let mut failures = Failures::new();
    for t in tasks {
        let (l, f) = t.await.map_err(|e| e.to_string())?;
        latencies.extend(l);
        for (k, v) in f {
            *failures.entry(k).or_default() += v;
        }
    }
    Ok((
        latencies.len(),
        failures,
        latencies,
        started.elapsed().as_secs_f64(),
    ))
}

fn print_table(
    what: &str,
    ok: usize,
    failures: &Failures,
    latencies: &mut [u64],
    elapsed: f64,
    concurrency: usize,
) {
    let ms = |q: f64, l: &mut [u64]| quantile(l, q).unwrap_or(0) as f64 / 1000.0;
    println!(
        "{what}: {ok} answered 200 in {elapsed:.1} s = {:.0}/s ({concurrency} concurrent); latency p50 {:.2} ms, p90 {:.2} ms, p99 {:.2} ms, max {:.2} ms",
        ok as f64 / elapsed,
        ms(0.5, latencies),
        ms(0.9, latencies),
        ms(0.99, latencies),
        latencies.iter().max().copied().unwrap_or(0) as f64 / 1000.0,
    );
    if !failures.is_empty() {
        println!("{what}: failed {failures:?} (status 0: no answer)");
    }
}
