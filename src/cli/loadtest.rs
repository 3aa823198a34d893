//! `residency-relay loadtest`: conferences of synthetic participants
//! against one relay, with a table of what was offered and delivered, and
//! what it cost the relay (CPU, and egress per CPU-second).
//!
//! Video goes out as frames of `video_bps / 8 / fps` bytes, each split into
//! datagrams of at most `packet_size` and sent at once, as an encoder's
//! output is (`fps` 0: evenly spaced packets); a keyframe every 2 s. Audio
//! is one 20 ms frame per datagram; `audio_bps` 0 publishes no audio.

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::client::Client;
use crate::client::synthetic::{self, ReceiveStats};
use crate::client::websocket::Trust;
use crate::policy::Policy;
use crate::ticket::{self, Claims, Grants};
use crate::wire::control::TrackKind;
use crate::wire::datagram::{Flags, MediaHeader, TrackId};

/// What to run.
#[derive(Debug, Clone)]
pub(super) struct Plan {
    pub(super) relay: String,
    pub(super) key: std::path::PathBuf,
    pub(super) conferences: usize,
    pub(super) participants: usize,
    pub(super) publishers: usize,
    pub(super) video_bps: u64,
    pub(super) audio_bps: u64,
    pub(super) packet_size: usize,
    /// Video frames per second (0: evenly spaced packets).
    pub(super) fps: u32,
    /// Addresses the clients spread over, from `bind_ip` on.
    pub(super) sources: u8,
    pub(super) duration: Duration,
    pub(super) bind_ip: IpAddr,
    pub(super) transport: TransportArg,
    pub(super) websocket_ca: Option<std::path::PathBuf>,
    /// Whether the policy has `[acme]` (relays named by DNS then serve
    /// WebSocket with a certificate over ACME).
    pub(super) acme: bool,
}

/// Audio is sent as 20 ms frames.
const AUDIO_FRAMES_PER_SEC: u64 = 50;

#[derive(Default)]
struct Progress {
    sent_packets: AtomicU64,
    sent_bytes: AtomicU64,
    received_packets: AtomicU64,
}

pub(super) fn run(policy: &Policy, plan: Plan) -> Result<(), String> {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .map_err(|e| format!("cannot start the runtime: {e}"))?;
    runtime.block_on(run_async(policy, plan))
}

async fn http_get(addr: SocketAddr, path: &str) -> Result<String, String> {
    let mut stream = tokio::net::TcpStream::connect(addr)
        .await
        .map_err(|e| format!("cannot reach the relay's HTTP listener {addr}: {e}"))?;
    let request = format!("GET {path} HTTP/1.1\r\nHost: relay\r\nConnection: close\r\n\r\n");
    stream
        .write_all(request.as_bytes())
        .await
        .map_err(|e| e.to_string())?;
    let mut response = String::new();
    stream
        .read_to_string(&mut response)
        .await
        .map_err(|e| e.to_string())?;
    Ok(response
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_owned())
        .unwrap_or_default())
}

use crate::relay::metrics::sample;
use std::process::ExitCode;

use super::args::{LoadtestArgs, TransportArg};

/// The `offset`-th address after `base` (IPv4; an IPv6 base is used as is).
fn source(base: IpAddr, offset: usize) -> IpAddr {
    match base {
        IpAddr::V4(v4) => IpAddr::V4(std::net::Ipv4Addr::from(
            u32::from(v4).wrapping_add(offset as u32),
        )),
        v6 => v6,
    }
}

/// The relay of the plan, the jurisdiction of its that trusts the plan's
/// key, the key, and the relay's certificate pin (from its /cert).
async fn target(
    policy: &Policy,
    plan: &Plan,
) -> Result<
    (
        crate::policy::Relay,
        String,
        ed25519_dalek::SigningKey,
        String,
    ),
    String,
> {
    let idx = policy
        .relay_idx(&plan.relay)
        .ok_or_else(|| format!("no relay '{}'", plan.relay))?;
    let relay = policy.relay(idx).clone();
    let text = std::fs::read_to_string(&plan.key)
        .map_err(|e| format!("cannot read {}: {e}", plan.key.display()))?;
    let key = ticket::parse_signing_key(&text)?;
    let jurisdiction = policy
        .jurisdictions_of(idx)
        .find(|j| {
            let ji = policy.jurisdiction_idx(&j.id);
            ji.is_some_and(|ji| policy.ticket_keys(ji).contains(&key.verifying_key()))
        })
        .map(|j| j.id.clone())
        .ok_or_else(|| {
            format!(
                "{} is not trusted for any jurisdiction of relay {}",
                plan.key.display(),
                relay.id
            )
        })?;
    let cert: serde_json::Value = serde_json::from_str(&http_get(relay.http_addr, "/cert").await?)
        .map_err(|e| format!("bad /cert answer: {e}"))?;
    let pin = cert["sha256"]
        .as_str()
        .ok_or("no sha256 in /cert")?
        .to_owned();
    Ok((relay, jurisdiction, key, pin))
}

async fn run_async(policy: &Policy, plan: Plan) -> Result<(), String> {
    if plan.publishers > plan.participants || plan.participants == 0 || plan.conferences == 0 {
        return Err("need at least one conference and participant, and no more publishers than participants".into());
    }
    let (relay, jurisdiction, key, pin) = target(policy, &plan).await?;

    eprintln!(
        "loadtest: relay {} at {} over {:?} ({jurisdiction}), {} conference(s) x {} participants, {} publisher(s) each: video {} bit/s in {}-byte packets at {} fps + audio {} bit/s; {} s",
        relay.id,
        match plan.transport {
            TransportArg::Quic => relay.quic_addr.to_string(),
            TransportArg::Websocket => relay.websocket_url.clone(),
        },
        plan.transport,
        plan.conferences,
        plan.participants,
        plan.publishers,
        plan.video_bps,
        plan.packet_size,
        plan.fps,
        plan.audio_bps,
        plan.duration.as_secs()
    );

    let mut rooms = join_rooms(&plan, &relay, &jurisdiction, &key, &pin).await?;
    let tracks = publish_all(&plan, &mut rooms).await?;
    // Relay CPU is sampled around the media phase only (not the joins).
    let before = http_get(relay.http_addr, "/metrics")
        .await
        .unwrap_or_default();
    let cpu_window = Instant::now();
    let progress = Arc::new(Progress::default());
    let deadline = Instant::now() + plan.duration;
    let mut receivers = Vec::new();
    let mut senders = Vec::new();
    for (room, published) in rooms.into_iter().zip(&tracks) {
        for (p, client) in room.into_iter().enumerate() {
            let client = Arc::new(client);
            let rx = client.clone();
            let progress_rx = progress.clone();
            receivers.push(tokio::spawn(async move {
                let mut stats = ReceiveStats::default();
                let stop = tokio::time::Instant::from_std(deadline + Duration::from_secs(1));
                while let Ok(Ok(d)) = tokio::time::timeout_at(stop, rx.recv_media()).await {
                    stats.record(&d);
                    progress_rx.received_packets.fetch_add(1, Ordering::Relaxed);
                }
                (stats, rx)
            }));
            let mine: Vec<(TrackId, TrackKind)> = published
                .iter()
                .filter(|(o, _, _)| *o == p)
                .map(|(_, t, k)| (*t, *k))
                .collect();
            for (track, kind) in mine {
                let tx = client.clone();
                let progress_tx = progress.clone();
                let shape = (plan.packet_size, plan.video_bps, plan.audio_bps, plan.fps);
                senders.push(tokio::spawn(send_track(
                    tx,
                    track,
                    kind,
                    shape,
                    deadline,
                    progress_tx,
                )));
            }
        }
    }
    // Progress once a second.
    let started = Instant::now();
    while Instant::now() < deadline {
        tokio::time::sleep(Duration::from_secs(1)).await;
        eprintln!(
            "  {:>3} s: sent {} packets, received {}",
            started.elapsed().as_secs(),
            progress.sent_packets.load(Ordering::Relaxed),
            progress.received_packets.load(Ordering::Relaxed)
        );
    }
    for s in senders {
        let _ = s.await;
    }
    let mut total = ReceiveStats::default();
    let mut clients = Vec::new();
    for r in receivers {
        if let Ok((stats, client)) = r.await {
            total.merge(stats);
            clients.push(client);
        }
    }
    let after = http_get(relay.http_addr, "/metrics")
        .await
        .unwrap_or_default();
    let cpu_secs = cpu_window.elapsed().as_secs_f64();
    for c in clients {
        if let Ok(c) = Arc::try_unwrap(c) {
            c.leave().await;
        }
    }

    report(&plan, &progress, total, &before, &after, cpu_secs);
    Ok(())
}

/// Everyone joins: `plan.participants` in each of `plan.conferences`,
/// with tickets signed by `key`, spread over the plan's source addresses.
async fn join_rooms(
    plan: &Plan,
    relay: &crate::policy::Relay,
    jurisdiction: &str,
    key: &ed25519_dalek::SigningKey,
    pin: &str,
) -> Result<Vec<Vec<Client>>, String> {
    let trust = match plan.transport {
        TransportArg::Quic => None,
        TransportArg::Websocket => Some(websocket_trust(plan, relay, pin)?),
    };
    let now = crate::clock::unix_now();
    let mut rooms: Vec<Vec<Client>> = Vec::new();
    for c in 0..plan.conferences {
        let mut room = Vec::new();
        for p in 0..plan.participants {
            let claims = Claims {
                e2ee: false,
                conference: format!("{jurisdiction}-loadtest{c}"),
                jurisdiction: jurisdiction.to_owned(),
                relay: relay.id.clone(),
                participant: format!("c{c}p{p}"),
                display_name: format!("load {c}/{p}"),
                grants: Grants {
                    publish: p < plan.publishers,
                    subscribe: true,
                    moderate: false,
                },
                issued_at: now,
                expires_at: now + 120,
                nonce: ticket::new_nonce().map_err(|e| e.to_string())?,
            };
            let from = source(
                plan.bind_ip,
                (c * plan.participants + p) % usize::from(plan.sources),
            );
            let ticket = ticket::sign(&claims, key);
            let client = match &trust {
                None => {
                    Client::connect(SocketAddr::new(from, 0), relay.quic_addr, pin, &ticket).await
                }
                Some(trust) => {
                    Client::connect_websocket(from, &relay.websocket_url, trust, &ticket).await
                }
            }
            .map_err(|e| format!("participant c{c}p{p} could not join: {e}"))?;
            room.push(client);
        }
        rooms.push(room);
    }
    Ok(rooms)
}

/// How the clients trust the relay's WebSocket certificate: the plan's CA
/// file, else the certificate file the relay's config names for it
/// (`websocket_tls_cert`, else `tls_cert`), else the relay's own
/// certificate (`pin`, which it serves when it has no other).
fn websocket_trust(plan: &Plan, relay: &crate::policy::Relay, pin: &str) -> Result<Trust, String> {
    if let Some(ca) = &plan.websocket_ca {
        return Ok(Trust::Roots(Arc::new(crate::tls::ca_roots(ca)?)));
    }
    // The listener serves these files when the config names them, else a
    // certificate over ACME for a host name, else its own.
    let files = relay.websocket_tls.as_ref().or(relay.tls.as_ref());
    if files.is_none() && plan.acme && super::relay::dns_name(&relay.websocket_url).is_some() {
        return Err(format!(
            "relay {} serves WebSocket with a certificate over ACME for {}: give --websocket-ca, the PEM file of that CA's root",
            relay.id, relay.websocket_url
        ));
    }
    match files {
        Some((cert, _)) => Ok(Trust::Pin(crate::tls::fingerprint(
            &crate::tls::read_certs(cert)?[0],
        ))),
        None => Ok(Trust::Pin(pin.to_owned())),
    }
}

/// The first `plan.publishers` of each room publish (video, and audio
/// unless it has no bitrate), then everyone subscribes to everyone else's
/// tracks. Each room's tracks: (publisher, track, kind).
async fn publish_all(
    plan: &Plan,
    rooms: &mut [Vec<Client>],
) -> Result<Vec<Vec<(usize, TrackId, TrackKind)>>, String> {
    let mut tracks: Vec<Vec<(usize, TrackId, TrackKind)>> = Vec::new();
    for room in rooms.iter_mut() {
        let mut published = Vec::new();
        for (p, client) in room.iter_mut().enumerate().take(plan.publishers) {
            let kinds: &[TrackKind] = if plan.audio_bps == 0 {
                &[TrackKind::Video]
            } else {
                &[TrackKind::Video, TrackKind::Audio]
            };
            for &kind in kinds {
                let codec = if kind == TrackKind::Video {
                    "synthetic-video"
                } else {
                    "synthetic-audio"
                };
                let t = client
                    .publish(kind, codec, None)
                    .await
                    .map_err(|e| e.to_string())?;
                published.push((p, t, kind));
            }
        }
        for (p, client) in room.iter_mut().enumerate() {
            for (owner, t, _) in &published {
                if *owner != p {
                    client.subscribe(*t).await.map_err(|e| e.to_string())?;
                }
            }
        }
        tracks.push(published);
    }

    Ok(tracks)
}

/// Sends one track until `deadline`: frames of the plan's size at its
/// rate, each cut into datagrams sent at once; video with a keyframe now
/// and then. `shape`: packet size, video and audio bit/s, video fps.
async fn send_track(
    tx: Arc<Client>,
    track: TrackId,
    kind: TrackKind,
    (packet_size, video_bps, audio_bps, fps): (usize, u64, u64, u32),
    deadline: Instant,
    progress_tx: Arc<Progress>,
) {
    // Bytes of datagrams (headers included) per frame.
    let (frame_bytes, per_sec, keyframe_every) = match kind {
        TrackKind::Video if fps > 0 => (
            (video_bps / 8 / u64::from(fps)).max(1) as usize,
            u64::from(fps),
            2 * u64::from(fps),
        ),
        TrackKind::Video => (
            packet_size,
            (video_bps / (8 * packet_size as u64)).max(1),
            100,
        ),
        _ => (
            (audio_bps / 8 / AUDIO_FRAMES_PER_SEC).max(16) as usize,
            AUDIO_FRAMES_PER_SEC,
            1,
        ),
    };
    let mut tick = tokio::time::interval(Duration::from_nanos(1_000_000_000 / per_sec));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
    let (mut sequence, mut frame) = (0u32, 0u64);
    while Instant::now() < deadline {
        tick.tick().await;
        let flags = if kind == TrackKind::Video && frame % keyframe_every == 0 {
            Flags::KEYFRAME
        } else {
            Flags::default()
        };
        // One frame: split into datagrams, sent at once.
        let mut left = frame_bytes;
        while left > 0 {
            let size = left.min(packet_size);
            left -= size;
            let payload =
                synthetic::payload(size.saturating_sub(crate::wire::datagram::HEADER_LEN));
            let header = MediaHeader {
                track,
                sequence,
                flags,
                info: crate::wire::datagram::Info::NONE,
            };
            if tx.send_media(&header, &payload).is_ok() {
                progress_tx.sent_packets.fetch_add(1, Ordering::Relaxed);
                progress_tx.sent_bytes.fetch_add(
                    (payload.len() + crate::wire::datagram::HEADER_LEN) as u64,
                    Ordering::Relaxed,
                );
            }
            sequence = sequence.wrapping_add(1);
        }
        frame += 1;
    }
}

/// What the run delivered: rates, loss, latency and the relay's CPU and
/// memory (from its metrics `before` and `after` the media phase).
fn report(
    plan: &Plan,
    progress: &Progress,
    mut total: ReceiveStats,
    before: &str,
    after: &str,
    cpu_secs: f64,
) {
    let secs = plan.duration.as_secs_f64();
    let sent_packets = progress.sent_packets.load(Ordering::Relaxed);
    let sent_bytes = progress.sent_bytes.load(Ordering::Relaxed);
    let fanout = (plan.participants - 1) as u64;
    let expected = sent_packets * fanout;
    let loss = if expected == 0 {
        0.0
    } else {
        100.0 * (1.0 - total.packets as f64 / expected as f64)
    };
    let ms = |v: Option<u64>| v.map_or("-".to_owned(), |us| format!("{:.2}", us as f64 / 1000.0));
    let p50 = synthetic::quantile(&mut total.latencies_us, 0.50);
    let p99 = synthetic::quantile(&mut total.latencies_us, 0.99);
    let max = total.latencies_us.last().copied();
    println!("{:<28} {:>14} {:>16}", "", "packets/s", "bits/s");
    println!(
        "{:<28} {:>14.0} {:>16.0}",
        "offered (sent)",
        sent_packets as f64 / secs,
        sent_bytes as f64 * 8.0 / secs
    );
    println!(
        "{:<28} {:>14.0} {:>16.0}",
        "expected deliveries",
        expected as f64 / secs,
        (sent_bytes * fanout) as f64 * 8.0 / secs
    );
    println!(
        "{:<28} {:>14.0} {:>16.0}",
        "delivered",
        total.packets as f64 / secs,
        total.bytes as f64 * 8.0 / secs
    );
    println!("{:<28} {:>13.3} %", "loss", loss);
    println!("{:<28} {:>14}", "sequence gaps", total.lost());
    println!(
        "{:<28} {} / {} / {} ms",
        "latency p50 / p99 / max",
        ms(p50),
        ms(p99),
        ms(max)
    );
    // `rr_relay_cpu_seconds`: relays built before the process metrics
    // were unprefixed (a before/after pair measured with one load tool).
    let cpu = |m: &str| {
        sample(m, "process_cpu_seconds_total").or_else(|| sample(m, "rr_relay_cpu_seconds"))
    };
    if let (Some(a), Some(b)) = (cpu(before), cpu(after)) {
        println!(
            "{:<28} {:>13.1} % of one core",
            "relay CPU",
            100.0 * (b - a) / cpu_secs
        );
        // What operators pay for: egress delivered per second of the relay
        // process's own CPU time (user + system) over the same window.
        let used = b - a;
        if used > 0.0 {
            println!(
                "{:<28} {:>13.0} Mbit per relay CPU-second",
                "relay efficiency",
                total.bytes as f64 * 8.0 / 1e6 / used
            );
        }
    }
    if let Some(rss) = sample(after, "process_resident_memory_bytes")
        .or_else(|| sample(after, "rr_relay_process_resident_memory_bytes"))
    {
        println!("{:<28} {:>13.1} MiB", "relay RSS", rss / (1024.0 * 1024.0));
    }
}

/// `loadtest`: the plan from the arguments, run against the relay.
pub(super) fn command(a: LoadtestArgs) -> ExitCode {
    let policy = match super::load(&a.config, a.regions.as_deref()) {
        Ok(p) => p,
        Err(code) => return code,
    };
    let plan = Plan {
        relay: a.relay,
        key: a.key,
        conferences: a.conferences,
        participants: a.participants,
        publishers: a.publishers,
        video_bps: a.video_bps,
        audio_bps: a.audio_bps,
        packet_size: a.packet_size.clamp(
            crate::wire::datagram::HEADER_LEN + 8,
            crate::wire::datagram::MAX_DATAGRAM_LEN,
        ),
        fps: a.fps,
        sources: a.sources.max(1),
        duration: Duration::from_secs(a.duration.max(1)),
        bind_ip: a.bind_ip,
        transport: a.transport,
        websocket_ca: a.websocket_ca,
        acme: policy.acme().is_some(),
    };
    super::report(run(&policy, plan))
}

#[cfg(test)]
mod tests {
    use super::sample;

    #[test]
    fn reads_samples_from_exposition_text() {
        let text =
            "# HELP x\nprocess_cpu_seconds_total 1.5\nrr_relay_deliveries_total{relay=\"a\"} 7\n";
        assert_eq!(sample(text, "process_cpu_seconds_total"), Some(1.5));
        assert_eq!(sample(text, "rr_relay_deliveries_total"), Some(7.0));
        assert_eq!(sample(text, "rr_relay_deliveries"), None);
    }
}
