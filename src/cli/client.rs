//! `residency-relay client publish|subscribe`: one participant by hand.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use clap::{Args, Subcommand};

use crate::client::Client;
use crate::client::join::{self, Credential};
use crate::client::synthetic::{self, ReceiveStats};
use crate::wire::control::{ServerMessage, TrackKind};
use crate::wire::datagram::{Flags, HEADER_LEN, MediaHeader, TrackId};

/// Either join through a router (`--router`, `--conference`, `--passcode`
/// or `--invite`), or connect to a relay directly with a ticket (`--relay`,
/// `--cert-sha256`, `--ticket`).
#[derive(Debug, Args)]
pub(super) struct Connection {
    /// Router base URL to join through, e.g. http://127.0.2.1:8080
    #[arg(long, requires = "conference", conflicts_with_all = ["relay", "ticket"])]
    router: Option<String>,
    /// Conference id (with --router).
    #[arg(long)]
    conference: Option<String>,
    /// Conference passcode (with --router).
    #[arg(long)]
    passcode: Option<String>,
    /// Invitation token (with --router), instead of a passcode.
    #[arg(long)]
    invite: Option<String>,
    /// Display name (with --router and --passcode).
    #[arg(long, default_value = "cli")]
    name: String,
    /// The relay's QUIC address (without --router).
    #[arg(long, requires_all = ["cert_sha256", "ticket"])]
    relay: Option<SocketAddr>,
    /// SHA-256 of the relay's certificate (its /cert, or the log line at start).
    #[arg(long)]
    cert_sha256: Option<String>,
    /// A ticket for this relay (`residency-relay ticket …`).
    #[arg(long)]
    ticket: Option<String>,
    /// Local address to send from.
    #[arg(long, default_value = "127.0.0.1:0")]
    bind: SocketAddr,
}

impl Connection {
    async fn connect(&self) -> Result<Client, String> {
        if let (Some(relay), Some(cert), Some(ticket)) =
            (&self.relay, &self.cert_sha256, &self.ticket)
        {
            return Client::connect(self.bind, *relay, cert, ticket)
                .await
                .map_err(|e| e.to_string());
        }
        let (Some(router), Some(conference)) = (&self.router, &self.conference) else {
            return Err(
                "give --router and --conference, or --relay, --cert-sha256 and --ticket".into(),
            );
        };
        let credential = match (&self.passcode, &self.invite) {
            (_, Some(invite)) => Credential::Invite(invite.clone()),
            (Some(passcode), None) => Credential::Passcode(passcode.clone()),
            (None, None) => return Err("give --passcode or --invite".into()),
        };
        let joined = join::join(
            router.trim_end_matches('/'),
            conference,
            &credential,
            &self.name,
            Some(self.bind.ip()),
            Duration::from_secs(600),
        )
        .await
        .map_err(|e| e.to_string())?;
        println!(
            "joined as {} on relay {} ({}) at {}",
            joined.participant_id, joined.relay_id, joined.relay_country, joined.quic_addr
        );
        Client::connect(
            self.bind,
            joined.quic_addr,
            &joined.cert_sha256,
            &joined.ticket,
        )
        .await
        .map_err(|e| e.to_string())
    }
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
                let mut client = c.connect().await?;
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
                let mut client = c.connect().await?;
                // No tracks named: everything published now and later.
                let follow = tracks.is_empty();
                let mut wanted: Vec<TrackId> = tracks.into_iter().map(TrackId).collect();
                if follow {
                    wanted = client.initial_tracks.iter().map(|t| t.track).collect();
                }
                for t in &wanted {
                    client.subscribe(*t).await.map_err(|e| e.to_string())?;
                }
                println!(
                    "subscribed to {:?}{}",
                    wanted.iter().map(|t| t.0).collect::<Vec<_>>(),
                    if follow { " and any track published later" } else { "" }
                );
                let datagrams = client.datagrams();
                let mut stats = ReceiveStats::default();
                let end = tokio::time::Instant::now() + Duration::from_secs(duration);
                loop {
                    tokio::select! {
                        d = datagrams.next() => match d {
                            Ok(d) => stats.record(&d),
                            Err(e) => { println!("connection closed: {e}"); break; }
                        },
                        event = client.next_event() => match event {
                            Ok(ServerMessage::TrackPublished(info)) if follow => {
                                println!("subscribing to track {} of {}", info.track.0, info.participant.0);
                                if let Err(e) = client.subscribe(info.track).await {
                                    println!("cannot subscribe: {e}");
                                }
                            }
                            Ok(ServerMessage::GoingAway { reason, .. }) => println!("relay going away: {reason}"),
                            Ok(ServerMessage::Kicked { reason }) => { println!("kicked: {reason}"); break; }
                            Ok(ServerMessage::ConferenceEnded {}) => { println!("the conference ended"); break; }
                            Ok(_) => {}
                            Err(e) => { println!("connection closed: {e}"); break; }
                        },
                        _ = tokio::time::sleep_until(end) => break,
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
