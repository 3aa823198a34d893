//! Browsers in a call, measured: capture-to-render latency of video frames
//! through the relay on loopback, and the relay's CPU per participant for
//! browsers (WebTransport) against native clients at the same bitrate.
//!
//! A router of the dev config runs in this process; relay de-fra-1 runs as
//! its own process (the `relay` command), so its CPU time is its own (from
//! /proc/PID/stat). Browsers are Debian's Chromium, headless, driven as in
//! tests/browser.rs, each with the fake camera and microphone: every page
//! publishes VP8 (640×360, 30 fps, 600 kbit/s) and Opus and decodes every
//! other page. The publisher stamps each frame with its capture time (the
//! payload header); the subscribing page records when the decoded frame is
//! drawn on its canvas. All pages share one machine clock.
//!
//! Each call runs twice, without and then with end-to-end encryption
//! (SFrame on every datagram, docs/e2ee.md), and the browsers' CPU (every
//! Chromium process, from /proc) per participant is compared.
//!
//! Then the same number of native clients publish synthetic frames at the
//! rates and sizes the pages sent (video and audio frames per second, bytes
//! per frame, measured in the browser run) and subscribe to each other, and
//! the relay's CPU per participant is measured the same way.
//!
//! Run: `cargo bench --bench browser` (needs Chromium and `npm ci`).
//! `BROWSER_BENCH_N=2,6` picks the call sizes; `BROWSER_BENCH_SECS` the
//! measured window (default 15). `BROWSER_BENCH_BROWSER=firefox|webkit`
//! runs Firefox or WebKit instead of Chromium (as tests/browsers.rs
//! drives them), `BROWSER_BENCH_TRANSPORT=webtransport|websocket` makes
//! the pages use that transport (`?transport=`), `BROWSER_BENCH_E2EE=0`
//! skips the encrypted call. `BROWSER_BENCH_JOINS=K` first measures
//! joining K times: a page already in a call, then K newcomers one after
//! another, each timed from its join click (and from opening the page)
//! to the first video frame it draws from the other.
//! `BROWSER_BENCH_SHAPED=0,400,150` instead measures two Chromium pages,
//! one of them in a network namespace of its own whose downlink is
//! limited to each of those kbit/s in turn (0: not limited; needs root),
//! over WebTransport and over WebSocket. `E2E_QUICK=1` runs a 2-browser
//! call for 3 s (CI: the bench works; no figures).

#[path = "../tests/support/mod.rs"]
mod support;

use std::time::{Duration, Instant};

use residency_relay::client::frames::{MAX_DATAGRAM, Packetizer};
use residency_relay::client::synthetic::quantile;
use residency_relay::clock::unix_micros as now_micros;
use residency_relay::wire::control::{ServerMessage, TrackKind};
use serde_json::Value;
use support::browser::{Browser, Kind, decoded};
use support::cluster::{self, Cluster};

const ROUTER: &str = "de-fra-router";
const RELAY: &str = "de-fra-1";

fn quick() -> bool {
    std::env::var_os("E2E_QUICK").is_some()
}

/// Busy and total jiffies of the whole machine, from /proc/stat.
fn machine_jiffies() -> (u64, u64) {
    let stat = std::fs::read_to_string("/proc/stat").unwrap();
    let cpu: Vec<u64> = stat
        .lines()
        .next()
        .unwrap()
        .split_whitespace()
        .skip(1)
        .filter_map(|v| v.parse().ok())
        .collect();
    let total: u64 = cpu.iter().sum();
    // idle and iowait
    let idle = cpu.get(3).copied().unwrap_or(0) + cpu.get(4).copied().unwrap_or(0);
    (total - idle, total)
}

/// CPU seconds of every browser process now, by process: the processes
/// descending from the driver `root` (all pages' renderers or content
/// processes, the GPU and network processes, the browser), without the
/// driver itself (node), the X server WebKit draws into and the sound
/// server Firefox plays into, which a browser on a desktop shares with
/// everything else.
fn browser_cpu(root: u32) -> std::collections::HashMap<u32, f64> {
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return std::collections::HashMap::new();
    };
    let parent: std::collections::HashMap<u32, (u32, String)> = dir
        .filter_map(Result::ok)
        .filter_map(|e| e.file_name().to_str()?.parse::<u32>().ok())
        .filter_map(|pid| {
            let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
            // "pid (comm) state ppid ...": comm may hold spaces.
            let (comm, rest) = stat.split_once(" (")?.1.rsplit_once(") ")?;
            let ppid = rest.split_whitespace().nth(1)?.parse().ok()?;
            Some((pid, (ppid, comm.to_owned())))
        })
        .collect();
    let descends = |mut pid: u32| loop {
        match parent.get(&pid) {
            Some((ppid, _)) if *ppid == root => return true,
            Some((ppid, _)) if *ppid > 1 => pid = *ppid,
            _ => return false,
        }
    };
    parent
        .iter()
        .filter(|(pid, (_, comm))| {
            !matches!(comm.as_str(), "node" | "Xvfb" | "pulseaudio") && descends(**pid)
        })
        .map(|(pid, _)| (*pid, support::cpu_seconds(*pid)))
        .collect()
}

/// CPU seconds the browser's processes used between two samples: per
/// process, so that one that ended meanwhile takes nothing away (its last
/// seconds are lost, not its whole life), and one that started counts
/// from zero.
fn browser_cpu_between(
    before: &std::collections::HashMap<u32, f64>,
    after: &std::collections::HashMap<u32, f64>,
) -> f64 {
    after
        .iter()
        .map(|(pid, t)| t - before.get(pid).copied().unwrap_or(0.0))
        .sum()
}

/// The page link with `?transport=` when one is asked for.
fn with_transport(link: String, transport: Option<&str>) -> String {
    match (transport, link.split_once('#')) {
        (Some(t), Some((path, fragment))) => format!("{path}?transport={t}#{fragment}"),
        _ => link,
    }
}

/// Joining `joins` times into a call of one: newcomer pages one after
/// another, each timed from its join click and from its opening to the
/// first video frame it draws (the page's own clock).
fn measure_joins(b: &mut Browser, router: &str, rt: &tokio::runtime::Runtime, joins: usize) {
    let transport = std::env::var("BROWSER_BENCH_TRANSPORT").ok();
    let conf = rt.block_on(cluster::create(
        router,
        cluster::ACME,
        serde_json::json!({"residency": "eu", "waiting_room": false}),
    ));
    let url = with_transport(support::browser::link(router, &conf), transport.as_deref());
    b.join("resident", &url, "Resident", None);
    b.wait_for("resident", Duration::from_secs(60), "in call", |s| {
        s["phase"] == "in_call"
    });
    let (mut from_click, mut from_open) = (Vec::new(), Vec::new());
    let mut used = std::collections::BTreeMap::<String, usize>::new();
    for k in 0..joins {
        let page = format!("newcomer{k}");
        b.join(&page, &url, "Newcomer", None);
        let s = b.wait_for(&page, Duration::from_secs(60), "a remote frame", |s| {
            s["firstRemoteFrameAt"].is_number()
        });
        let (click, frame) = (
            s["joinClickedAt"].as_f64().unwrap_or(0.0),
            s["firstRemoteFrameAt"].as_f64().unwrap_or(0.0),
        );
        from_click.push(((frame - click) * 1000.0) as u64);
        from_open.push((frame * 1000.0) as u64);
        *used
            .entry(s["transport"].as_str().unwrap_or("?").to_owned())
            .or_default() += 1;
        b.click(&page, "#leave");
        b.close(&page);
    }
    b.click("resident", "#leave");
    b.close("resident");
    let ms = |v: &mut Vec<u64>, q: f64| quantile(v, q).unwrap_or(0) as f64 / 1000.0;
    println!(
        "  joining, {joins} times ({used:?}): join click -> first remote frame p50 {:.0} ms, p90 {:.0} ms, max {:.0} ms; \
         page opened -> first remote frame p50 {:.0} ms, p90 {:.0} ms",
        ms(&mut from_click, 0.5),
        ms(&mut from_click, 0.9),
        ms(&mut from_click, 1.0),
        ms(&mut from_open, 0.5),
        ms(&mut from_open, 0.9),
    );
}

/// What one measured window gave.
struct Window {
    secs: f64,
    relay_cpu: f64,
    bytes_in: f64,
    bytes_out: f64,
}

async fn relay_bytes(c: &Cluster) -> (f64, f64) {
    let m = c.relay_metrics(RELAY).await;
    (
        cluster::sample(&m, "rr_relay_bytes_received_total"),
        cluster::sample(&m, "rr_relay_bytes_delivered_total"),
    )
}

/// Per-kind send rates the pages reported, averaged over pages.
#[derive(Debug, Clone, Copy)]
struct Rates {
    video_fps: f64,
    video_frame: f64,
    audio_fps: f64,
    audio_frame: f64,
}

/// Relay `RELAY` of cluster `c` as its own process (its CPU its own).
fn relay_process(c: &mut Cluster) -> support::Reaped {
    c.release(RELAY);
    let credential = c.dir.path().join("credential");
    std::fs::write(&credential, format!("dev-relay-{RELAY}")).unwrap();
    support::Reaped(
        std::process::Command::new(env!("CARGO_BIN_EXE_residency-relay"))
            .args(["relay", "--config"])
            .arg(&c.config)
            .args(["--id", RELAY, "--shutdown-grace", "1", "--credential-file"])
            .arg(&credential)
            .env("RUST_LOG", "warn")
            .spawn()
            .unwrap(),
    )
}

/// `BROWSER_BENCH_SHAPED=KBIT,…`: a call of two Chromium pages, one of
/// them inside a network namespace whose downlink is limited to KBIT
/// kbit/s (0: not limited; an htb class on the veth pair, 200 ms of queue),
/// over WebTransport and then over WebSocket; the capture-to-render
/// latency of what the limited page draws, and how many frames it drew.
fn shaped(spec: &str, secs: u64) {
    if !support::netns::is_root() {
        eprintln!("BROWSER_BENCH_SHAPED needs root (network namespaces)");
        return;
    }
    let Some(mut outside) = Browser::launch() else {
        return;
    };
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    println!(
        "browser bench, shaped downlink: Chromium {}, {secs} s windows",
        outside.version
    );
    for (i, kbit) in spec
        .split(',')
        .map(|k| k.trim().parse::<u32>().unwrap())
        .enumerate()
    {
        // A namespace of its own each time: the last one's pair goes only
        // once its browser's processes are gone.
        let n = (std::process::id() + i as u32) % 250 + 1;
        let ns = support::netns::Namespace::new("bb", n).unwrap();
        if kbit > 0 {
            ns.limit_downlink(kbit).unwrap();
        }
        let Some(mut inside) = Browser::launch_in(Kind::Chromium, Some(&ns.name)) else {
            return;
        };
        let cert = tempfile::NamedTempFile::new().unwrap();
        support::netns::dev_router_certificate(&ns.host, cert.path());
        let host = ns.host.clone();
        let cert_path = cert.path().to_owned();
        let mut c = Cluster::new(move |t| support::netns::on_host(t, &host, &cert_path));
        rt.block_on(c.start_router(ROUTER));
        let relay = relay_process(&mut c);
        rt.block_on(c.wait_health(ROUTER, &[RELAY], "healthy"));
        let router = c.url(ROUTER);
        for transport in ["webtransport", "websocket"] {
            let conf = rt.block_on(cluster::create(
                &router,
                cluster::ACME,
                serde_json::json!({"residency": "eu", "waiting_room": false}),
            ));
            let url = with_transport(support::browser::link(&router, &conf), Some(transport));
            outside.join("far", &url, "Far", None);
            inside.join("near", &url, "Near", None);
            let far = outside.wait_for("far", Duration::from_secs(60), "in call", |s| {
                s["phase"] == "in_call"
            })["participant"]
                .as_str()
                .unwrap()
                .to_owned();
            let who = far.clone();
            inside.wait_for("near", Duration::from_secs(90), "video", move |s| {
                decoded(s, &who, "video") >= 10
            });
            inside.eval("near", "window.rr.stats.latency.length = 0");
            let before = decoded(&inside.snapshot("near"), &far, "video");
            std::thread::sleep(Duration::from_secs(secs));
            let s = inside.snapshot("near");
            let drawn = decoded(&s, &far, "video") - before;
            let mut latencies: Vec<u64> = s["latency"]
                .as_array()
                .unwrap()
                .iter()
                .filter_map(Value::as_f64)
                .map(|ms| (ms * 1000.0).max(0.0) as u64)
                .collect();
            let sent = outside.snapshot("far")["sent"]["video"]["frames"]
                .as_u64()
                .unwrap_or(0);
            let p50 = quantile(&mut latencies, 0.5).unwrap_or(0) as f64 / 1000.0;
            let p99 = quantile(&mut latencies, 0.99).unwrap_or(0) as f64 / 1000.0;
            let limit = if kbit == 0 {
                "not limited".to_owned()
            } else {
                format!("{kbit} kbit/s")
            };
            println!(
                "  downlink {limit}, {}: capture-to-render p50 {p50:.1} ms, p99 {p99:.1} ms; {:.1} video frames/s drawn; \
                 {} frames lost on the way, {} dropped before decoding (its publisher sent {sent} in all)",
                s["transport"].as_str().unwrap_or("?"),
                drawn as f64 / secs as f64,
                s["peers"][&far]["video"]["lost"].as_u64().unwrap_or(0),
                s["peers"][&far]["video"]["dropped"].as_u64().unwrap_or(0),
            );
            for (b, p) in [(&mut outside, "far"), (&mut inside, "near")] {
                b.click(p, "#leave");
                b.close(p);
            }
        }
        drop(inside);
        drop(relay);
        rt.block_on(c.shutdown());
    }
}

fn main() {
    let secs: u64 = if quick() {
        3
    } else {
        std::env::var("BROWSER_BENCH_SECS").map_or(15, |s| s.parse().unwrap())
    };
    if let Ok(spec) = std::env::var("BROWSER_BENCH_SHAPED") {
        shaped(&spec, secs);
        return;
    }
    let kind = match std::env::var("BROWSER_BENCH_BROWSER").as_deref() {
        Ok("firefox") => Kind::Firefox,
        Ok("webkit") => Kind::WebKit,
        _ => Kind::Chromium,
    };
    let transport = std::env::var("BROWSER_BENCH_TRANSPORT").ok();
    let encrypted: &[bool] = match std::env::var("BROWSER_BENCH_E2EE").as_deref() {
        Ok("0") => &[false],
        _ => &[false, true],
    };
    let joins: usize = std::env::var("BROWSER_BENCH_JOINS").map_or(0, |n| n.parse().unwrap());
    let Some(mut b) = Browser::launch_kind(kind) else {
        return;
    };
    let sizes: Vec<usize> = if quick() {
        vec![2]
    } else {
        std::env::var("BROWSER_BENCH_N")
            .unwrap_or_else(|_| "2,6".into())
            .split(',')
            .map(|n| n.trim().parse().unwrap())
            .collect()
    };
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let mut c = Cluster::new(|t| t);
    rt.block_on(c.start_router(ROUTER));
    let relay = relay_process(&mut c);
    let pid = relay.0.id();
    rt.block_on(c.wait_health(ROUTER, &[RELAY], "healthy"));
    let router = c.url(ROUTER);
    println!(
        "browser bench: {kind:?} {}, transport {}, relay {RELAY} as process {pid}, {secs} s windows",
        b.version,
        transport.as_deref().unwrap_or("as the page chooses")
    );
    if joins > 0 {
        measure_joins(&mut b, &router, &rt, joins);
    }
    let driver = b.pid();
    for &n in &sizes {
        // The same call without and with end-to-end encryption.
        let mut runs: Vec<(Window, Rates, f64)> = Vec::new();
        let mut used = String::new();
        for &e2ee in encrypted {
            let conf = rt.block_on(cluster::create(
                &router,
                cluster::ACME,
                serde_json::json!({"residency": "eu", "waiting_room": false, "e2ee": e2ee}),
            ));
            let mut url =
                with_transport(support::browser::link(&router, &conf), transport.as_deref());
            if e2ee {
                let key = residency_relay::client::e2ee::Secret::random().unwrap();
                url.push_str(&format!("&k={}", key.to_base64()));
            }
            let pages: Vec<String> = (0..n).map(|i| format!("p{i}")).collect();
            for (i, p) in pages.iter().enumerate() {
                b.join(p, &url, &format!("Person {i}"), None);
            }
            let ids: Vec<String> = pages
                .iter()
                .map(|p| {
                    b.wait_for(p, Duration::from_secs(60), "in call", |s| {
                        s["phase"] == "in_call"
                    })["participant"]
                        .as_str()
                        .unwrap()
                        .to_owned()
                })
                .collect();
            for (p, me) in pages.iter().zip(&ids) {
                let others: Vec<String> = ids.iter().filter(|i| *i != me).cloned().collect();
                b.wait_for(
                    p,
                    Duration::from_secs(90),
                    "video from everyone",
                    move |s| others.iter().all(|o| decoded(s, o, "video") >= 30),
                );
            }
            // The window: forget the latencies so far, then measure.
            let sent = |b: &mut Browser| -> Vec<Value> {
                pages
                    .iter()
                    .map(|p| b.snapshot(p)["sent"].clone())
                    .collect()
            };
            for p in &pages {
                b.eval(p, "window.rr.stats.latency.length = 0");
            }
            let sent0 = sent(&mut b);
            let (in0, out0) = rt.block_on(relay_bytes(&c));
            let (cpu0, t0) = (support::cpu_seconds(pid), Instant::now());
            let machine0 = machine_jiffies();
            let browser0 = browser_cpu(driver);
            std::thread::sleep(Duration::from_secs(secs));
            let browser1 = browser_cpu(driver);
            let machine1 = machine_jiffies();
            let (secs_taken, cpu1) = (t0.elapsed().as_secs_f64(), support::cpu_seconds(pid));
            let browser_cpu = browser_cpu_between(&browser0, &browser1);
            let (in1, out1) = rt.block_on(relay_bytes(&c));
            let w = Window {
                secs: secs_taken,
                relay_cpu: cpu1 - cpu0,
                bytes_in: in1 - in0,
                bytes_out: out1 - out0,
            };
            let sent1 = sent(&mut b);
            let mut latencies: Vec<u64> = Vec::new();
            for p in &pages {
                let l = b.eval(p, "window.rr.stats.latency.slice()");
                latencies.extend(
                    l.as_array()
                        .unwrap()
                        .iter()
                        .filter_map(Value::as_f64)
                        .map(|ms| (ms * 1000.0).max(0.0) as u64),
                );
            }
            let delta = |kind: &str, what: &str| -> f64 {
                sent0
                    .iter()
                    .zip(&sent1)
                    .map(|(a, z)| z[kind][what].as_f64().unwrap() - a[kind][what].as_f64().unwrap())
                    .sum::<f64>()
                    / n as f64
            };
            let rates = Rates {
                video_fps: delta("video", "frames") / w.secs,
                video_frame: delta("video", "bytes") / delta("video", "frames").max(1.0),
                audio_fps: delta("audio", "frames") / w.secs,
                audio_frame: delta("audio", "bytes") / delta("audio", "frames").max(1.0),
            };
            let count = latencies.len();
            let p50 = quantile(&mut latencies, 0.5).unwrap_or(0) as f64 / 1000.0;
            let p99 = quantile(&mut latencies, 0.99).unwrap_or(0) as f64 / 1000.0;
            let label = if e2ee {
                "end-to-end encrypted"
            } else {
                "not end-to-end encrypted"
            };
            println!(
                "  {n} browsers, {label}: browser {:.1} % of a core per participant; capture-to-render p50 {p50:.1} ms, p99 {p99:.1} ms ({count} frames drawn); \
                 per participant: {:.0} kbit/s in, {:.1} video frames/s of {:.0} B, {:.1} audio frames/s of {:.0} B; \
                 relay {:.2} % of a core in all, {:.3} % per participant, {:.0} kbit/s out",
                browser_cpu / w.secs * 100.0 / n as f64,
                w.bytes_in * 8.0 / w.secs / 1000.0 / n as f64,
                rates.video_fps,
                rates.video_frame,
                rates.audio_fps,
                rates.audio_frame,
                w.relay_cpu / w.secs * 100.0,
                w.relay_cpu / w.secs * 100.0 / n as f64,
                w.bytes_out * 8.0 / w.secs / 1000.0,
            );
            let dropped: u64 = pages
                .iter()
                .map(|p| {
                    let s = b.snapshot(p);
                    s["peers"].as_object().map_or(0, |peers| {
                        peers
                            .values()
                            .map(|v| v["video"]["dropped"].as_u64().unwrap_or(0))
                            .sum()
                    })
                })
                .sum();
            println!(
                "    (frames the pages dropped to catch up with their decoders: {dropped}, unsent: {}; machine busy {:.0} % of its cores)",
                pages
                    .iter()
                    .map(|p| {
                        let s = b.snapshot(p);
                        s["sendDropped"]["video"].as_u64().unwrap_or(0)
                            + s["sendDropped"]["audio"].as_u64().unwrap_or(0)
                    })
                    .sum::<u64>(),
                (machine1.0 - machine0.0) as f64 * 100.0 / (machine1.1 - machine0.1).max(1) as f64
            );
            if e2ee {
                let e = pages
                    .iter()
                    .map(|p| b.snapshot(p)["e2ee"].clone())
                    .collect::<Vec<_>>();
                let failures: u64 = e
                    .iter()
                    .map(|x| x["decryptFailures"].as_u64().unwrap_or(0))
                    .sum();
                let badges = e.iter().filter(|x| x["badge"] == true).count();
                println!(
                    "    (datagrams that did not decrypt: {failures}; pages showing the end-to-end encrypted mark: {badges} of {n})"
                );
            }
            let cpu_per = browser_cpu / w.secs * 100.0 / n as f64;
            used = b.snapshot(&pages[0])["transport"]
                .as_str()
                .unwrap_or("?")
                .to_owned();
            for p in &pages {
                b.click(p, "#leave");
                b.close(p);
            }
            std::thread::sleep(Duration::from_secs(1));
            runs.push((w, rates, cpu_per));
        }
        if runs.len() == 2 {
            println!(
                "  {n} browsers: browser CPU per participant, end-to-end encrypted / not: {:.2}",
                runs[1].2 / runs[0].2.max(1e-9)
            );
        }
        let (w, rates, _) = runs.swap_remove(0);
        // Native clients at the same rates and in the same number.
        let conf = rt.block_on(cluster::open_conference(&router, "eu"));
        let native = rt.block_on(native_call(&router, &conf, n, rates, secs, pid, &c));
        let per = |w: &Window| w.relay_cpu / w.secs * 100.0 / n as f64;
        println!(
            "  {n} native clients at those rates: {:.0} kbit/s in per participant; relay {:.2} % of a core in all, {:.3} % per participant; \
             relay CPU per participant, {used} / native: {:.2}",
            native.bytes_in * 8.0 / native.secs / 1000.0 / n as f64,
            native.relay_cpu / native.secs * 100.0,
            per(&native),
            per(&w) / per(&native).max(1e-9)
        );
        std::thread::sleep(Duration::from_secs(1));
    }
    drop(relay);
    rt.block_on(c.shutdown());
}

/// `n` native participants publishing synthetic video and audio frames at
/// `rates`, each subscribed to everyone else, measured for `secs`.
async fn native_call(
    router: &str,
    conf: &Value,
    n: usize,
    rates: Rates,
    secs: u64,
    pid: u32,
    c: &Cluster,
) -> Window {
    let mut tasks = Vec::new();
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    for i in 0..n {
        let joined = cluster::join_from(
            router,
            conf["id"].as_str().unwrap(),
            conf["passcode"].as_str().unwrap(),
            "127.0.0.1",
        )
        .await
        .unwrap();
        let mut client = cluster::connect(&joined, "127.0.0.1").await;
        let video = client
            .publish(TrackKind::Video, "x-synthetic", None)
            .await
            .unwrap();
        let audio = client
            .publish(TrackKind::Audio, "x-synthetic", None)
            .await
            .unwrap();
        let stop = stop.clone();
        let already: Vec<_> = client.initial_tracks.iter().map(|t| t.track).collect();
        for track in already {
            client.subscribe(track).await.unwrap();
        }
        tasks.push(tokio::spawn(async move {
            let sender = client.sender();
            let datagrams = client.datagrams();
            let drain = tokio::spawn(async move { while datagrams.next().await.is_ok() {} });
            let send = |p: &mut Packetizer, size: f64, key: bool| {
                for d in p
                    .packetize(&vec![i as u8; size as usize], key, now_micros())
                    .unwrap()
                {
                    let _ = sender.send_raw(d.into());
                }
            };
            let (mut pv, mut pa) = (
                Packetizer::new(video, MAX_DATAGRAM),
                Packetizer::new(audio, MAX_DATAGRAM),
            );
            let mut vt =
                tokio::time::interval(Duration::from_secs_f64(1.0 / rates.video_fps.max(1.0)));
            let mut at =
                tokio::time::interval(Duration::from_secs_f64(1.0 / rates.audio_fps.max(1.0)));
            let mut frame = 0u64;
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                tokio::select! {
                    _ = vt.tick() => {
                        send(&mut pv, rates.video_frame, frame % 60 == 0);
                        frame += 1;
                    }
                    _ = at.tick() => send(&mut pa, rates.audio_frame, false),
                    e = client.next_event() => match e {
                        Ok(ServerMessage::TrackPublished(info)) => {
                            let _ = client.subscribe(info.track).await;
                        }
                        Ok(_) => {}
                        Err(_) => break,
                    },
                }
            }
            drain.abort();
            client.leave().await;
        }));
    }
    // Everyone subscribed to everyone (tracks announced since each join).
    tokio::time::sleep(Duration::from_secs(3)).await;
    let (in0, out0) = relay_bytes(c).await;
    let (cpu0, t0) = (support::cpu_seconds(pid), Instant::now());
    tokio::time::sleep(Duration::from_secs(secs)).await;
    let (secs_taken, cpu1) = (t0.elapsed().as_secs_f64(), support::cpu_seconds(pid));
    let (in1, out1) = relay_bytes(c).await;
    let w = Window {
        secs: secs_taken,
        relay_cpu: cpu1 - cpu0,
        bytes_in: in1 - in0,
        bytes_out: out1 - out0,
    };
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    for t in tasks {
        let _ = tokio::time::timeout(Duration::from_secs(5), t).await;
    }
    println!(
        "  (native: {:.0} kbit/s out of the relay)",
        w.bytes_out * 8.0 / w.secs / 1000.0
    );
    w
}
