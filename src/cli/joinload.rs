//! `residency-relay joinload`: join latency and throughput of a router.
//!
//! Creates one conference (without a waiting room), then `concurrency`
//! tasks join it with its passcode back to back for `seconds`, each on a
//! fresh connection as a participant's browser or app would. Prints
//! requests per second and the latency percentiles of successful joins.

use std::time::{Duration, Instant};

use serde_json::json;

use crate::client::synthetic::quantile;
use crate::http_client;

pub(super) fn run(
    router: &str,
    api_key: &str,
    concurrency: usize,
    seconds: u64,
) -> Result<(), String> {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .map_err(|e| format!("cannot start the runtime: {e}"))?;
    runtime.block_on(async move {
        let auth = format!("Bearer {api_key}");
        let created = http_client::request(
            "POST",
            &format!("{router}/v1/conferences"),
            None,
            &[("authorization", &auth)],
            Some(json!({ "waiting_room": false }).to_string().into_bytes()),
            Duration::from_secs(10),
        )
        .await
        .map_err(|e| e.to_string())?;
        if created.status != 201 {
            return Err(format!(
                "creating the conference failed: {} {}",
                created.status,
                String::from_utf8_lossy(&created.body)
            ));
        }
        let c = created.json();
        let id = c["id"].as_str().unwrap_or_default().to_owned();
        let passcode = c["passcode"].as_str().unwrap_or_default().to_owned();
        let url = format!("{router}/v1/conferences/{id}/join");
        let body = json!({ "passcode": passcode, "display_name": "load" }).to_string();
        let end = Instant::now() + Duration::from_secs(seconds);
        let started = Instant::now();
        let mut tasks = Vec::new();
        for _ in 0..concurrency.max(1) {
            let (url, body) = (url.clone(), body.clone());
            tasks.push(tokio::spawn(async move {
                let mut latencies = Vec::new();
                let mut failures = std::collections::BTreeMap::<u16, u64>::new();
                while Instant::now() < end {
                    let t = Instant::now();
                    match http_client::request(
                        "POST",
                        &url,
                        None,
                        &[],
                        Some(body.clone().into_bytes()),
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
        let mut failures = std::collections::BTreeMap::<u16, u64>::new();
        for t in tasks {
            let (l, f) = t.await.map_err(|e| e.to_string())?;
            latencies.extend(l);
            for (k, v) in f {
                *failures.entry(k).or_default() += v;
            }
        }
        let elapsed = started.elapsed().as_secs_f64();
        let ok = latencies.len();
        println!("joins: {ok} with a ticket in {elapsed:.1} s = {:.0} joins/s ({concurrency} concurrent)", ok as f64 / elapsed);
        println!(
            "latency: p50 {:.2} ms, p90 {:.2} ms, p99 {:.2} ms, max {:.2} ms",
            quantile(&mut latencies, 0.5).unwrap_or(0) as f64 / 1000.0,
            quantile(&mut latencies, 0.9).unwrap_or(0) as f64 / 1000.0,
            quantile(&mut latencies, 0.99).unwrap_or(0) as f64 / 1000.0,
            latencies.iter().max().copied().unwrap_or(0) as f64 / 1000.0,
        );
        if !failures.is_empty() {
            println!("failed: {failures:?} (status 0: no answer)");
        }
        Ok(())
    })
}
