//! `residency-relay client publish|subscribe`: one participant by hand.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use clap::{Args, Subcommand};

use crate::client::Client;
use crate::client::synthetic::{self, ReceiveStats};
use crate::wire::control::{ServerMessage, TrackKind};
use crate::wire::datagram::{Flags, HEADER_LEN, MediaHeader, TrackId};

#[derive(Debug, Args)]
pub(super) struct Connection {
    /// The relay's QUIC address.
    #[arg(long)]
    relay: SocketAddr,
    /// SHA-256 of the relay's certificate (its /cert, or the log line at start).
    #[arg(long)]
    cert_sha256: String,
    /// A ticket for this relay (`residency-relay ticket …`).
    #[arg(long)]
    ticket: String,
    /// Local address to send from.
    #[arg(long, default_value = "127.0.0.1:0")]
    bind: SocketAddr,
}

#[derive(Debug, Subcommand)]
pub(super) enum Action {
    /// Publish one synthetic video track at a bitrate.
    Publish {
        #[command(flatten)]
        connection: Connection,
        #[arg(long, default_value_t = 1_500_000)]
        bitrate: u64,
        #[arg(long, default_value_t = 1100)]
        packet_size: usize,
        /// Seconds to send.
        #[arg(long, default_value_t = 10)]
        duration: u64,
    },
    /// Subscribe to tracks (all announced ones when none given) and count.
    Subscribe {
        #[command(flatten)]
        connection: Connection,
        #[arg(long = "track")]
        tracks: Vec<u32>,
        /// Seconds to listen.
        #[arg(long, default_value_t = 10)]
        duration: u64,
    },
}

pub(super) fn run(action: Action) -> Result<(), String> {
    super::relay::init_logging();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .map_err(|e| format!("cannot start the runtime: {e}"))?;
    runtime.block_on(async move {
        match action {
            Action::Publish {
                connection: c,
                bitrate,
                packet_size,
                duration,
            } => {
                let mut client = Client::connect(c.bind, c.relay, &c.cert_sha256, &c.ticket)
                    .await
                    .map_err(|e| e.to_string())?;
                let track = client
                    .publish(TrackKind::Video, "synthetic-video", None)
                    .await
                    .map_err(|e| e.to_string())?;
                println!("publishing track {}", track.0);
                let size = packet_size.clamp(
                    HEADER_LEN + synthetic::STAMP_LEN,
                    crate::wire::datagram::MAX_DATAGRAM_LEN,
                );
                let pps = (bitrate / (8 * size as u64)).max(1);
                let mut tick = tokio::time::interval(Duration::from_nanos(1_000_000_000 / pps));
                let end = Instant::now() + Duration::from_secs(duration);
                let mut sequence = 0u32;
                while Instant::now() < end {
                    tick.tick().await;
                    let flags = if sequence % 100 == 0 {
                        Flags::KEYFRAME
                    } else {
                        Flags::default()
                    };
                    client
                        .send_media(
                            &MediaHeader {
                                track,
                                sequence,
                                flags,
                            },
                            &synthetic::payload(size - HEADER_LEN),
                        )
                        .map_err(|e| e.to_string())?;
                    sequence += 1;
                }
                println!("sent {sequence} packets of {size} bytes");
                client.leave().await;
                Ok(())
            }
            Action::Subscribe {
                connection: c,
                tracks,
                duration,
            } => {
                let mut client = Client::connect(c.bind, c.relay, &c.cert_sha256, &c.ticket)
                    .await
                    .map_err(|e| e.to_string())?;
                let mut wanted: Vec<TrackId> = tracks.into_iter().map(TrackId).collect();
                if wanted.is_empty() {
                    wanted = client.initial_tracks.iter().map(|t| t.track).collect();
                }
                for t in &wanted {
                    client.subscribe(*t).await.map_err(|e| e.to_string())?;
                }
                println!(
                    "subscribed to {:?}",
                    wanted.iter().map(|t| t.0).collect::<Vec<_>>()
                );
                let mut stats = ReceiveStats::default();
                let end = tokio::time::Instant::now() + Duration::from_secs(duration);
                loop {
                    tokio::select! {
                        d = client.recv_media() => match d {
                            Ok(d) => stats.record(&d),
                            Err(e) => { println!("connection closed: {e}"); break; }
                        },
                        _ = tokio::time::sleep_until(end) => break,
                    }
                }
                while let Ok(Ok(event)) =
                    tokio::time::timeout(Duration::from_millis(10), client.next_event()).await
                {
                    if let ServerMessage::GoingAway { reason, .. } = event {
                        println!("relay going away: {reason}");
                    }
                }
                let p50 = synthetic::quantile(&mut stats.latencies_us, 0.5);
                let p99 = synthetic::quantile(&mut stats.latencies_us, 0.99);
                println!(
                    "received {} packets, {} bytes, {} missing; latency p50 {} us, p99 {} us",
                    stats.packets,
                    stats.bytes,
                    stats.lost(),
                    p50.unwrap_or(0),
                    p99.unwrap_or(0)
                );
                client.leave().await;
                Ok(())
            }
        }
    })
}
