//! `residency-relay client publish|subscribe`: one participant by hand.

use std::time::{Duration, Instant};

use super::args::{ClientAction as Action, Connection, TransportArg};

use crate::client::Client;
use crate::client::e2ee::{self, Event, Group};
use crate::client::join::{self, Credential};
use crate::client::simulcast::{Kind, Source};
use crate::client::synthetic::{self, ReceiveStats};
use crate::client::websocket::Trust;
use crate::wire::control::{Layers, ServerMessage, TrackKind};
use crate::wire::datagram::{Flags, HEADER_LEN, MediaHeader, TrackId};

/// A connected participant and its end-to-end encryption, if any.
struct Connected {
    client: Client,
    group: Option<Group>,
}

impl Connection {
    async fn connect(&self) -> Result<Connected, String> {
        let secret = self.e2ee_secret.clone();
        let (client, e2ee, host) = self.connect_client().await?;
        if e2ee && secret.is_none() {
            return Err("this conference is end-to-end encrypted: give --e2ee-secret (the k=… of the join link)".into());
        }
        let group = match (secret, e2ee) {
            (Some(secret), true) => {
                let group = Group::new(&secret, client.participant.clone(), host);
                println!(
                    "end-to-end encrypted; epoch 0, safety code {}",
                    group.safety_code()
                );
                Some(group)
            }
            (Some(_), false) => {
                // Fail closed: whoever gave a key expects encryption.
                client.leave().await;
                return Err("an end-to-end encryption secret was given but this conference (or ticket) is not end-to-end encrypted: not sending anything in the clear".into());
            }
            (None, _) => None,
        };
        let mut c = Connected { client, group };
        if let Some(g) = &c.group {
            let hello = g.announce();
            c.client.send_e2ee(hello).await.map_err(|e| e.to_string())?;
        }
        Ok(c)
    }

    /// The client, whether the conference is end-to-end encrypted, and
    /// whether we are its host. Connected by ticket, the ticket says.
    async fn connect_client(&self) -> Result<(Client, bool, bool), String> {
        if let (Some(relay), Some(cert), Some(ticket)) =
            (&self.relay, &self.cert_sha256, &self.ticket)
        {
            let claims = crate::ticket::peek(ticket).map_err(|e| e.to_string())?;
            let url = self
                .websocket_url
                .clone()
                .unwrap_or_else(|| format!("wss://{relay}{}", crate::wire::websocket::PATH));
            let client = self.dial(*relay, Some(&url), cert, ticket).await?;
            return Ok((client, claims.e2ee, claims.grants.moderate));
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
        let client = self
            .dial(
                joined.quic_addr,
                joined.websocket_url.as_deref(),
                &joined.cert_sha256,
                &joined.ticket,
            )
            .await?;
        Ok((client, joined.e2ee, joined.role == "host"))
    }

    /// Connects to the relay over the transport asked for.
    async fn dial(
        &self,
        quic: std::net::SocketAddr,
        websocket_url: Option<&str>,
        cert_sha256: &str,
        ticket: &str,
    ) -> Result<Client, String> {
        let client = match self.transport {
            TransportArg::Quic => Client::connect(self.bind, quic, cert_sha256, ticket).await,
            TransportArg::Websocket => {
                let url = websocket_url.ok_or("the relay offers no WebSocket URL")?;
                let trust = match &self.websocket_ca {
                    Some(ca) => Trust::Roots(std::sync::Arc::new(crate::tls::ca_roots(ca)?)),
                    None => Trust::Pin(cert_sha256.to_owned()),
                };
                Client::connect_websocket(self.bind.ip(), url, &trust, ticket).await
            }
        };
        let client = client.map_err(|e| e.to_string())?;
        println!("connected over {}", client.transport());
        Ok(client)
    }
}

/// Handles a control event for an end-to-end encrypted participant;
/// prints what changed.
async fn key_event(c: &mut Connected, event: &ServerMessage) -> Result<(), String> {
    let Some(group) = c.group.as_mut() else {
        return Ok(());
    };
    let before = group.epoch();
    let what = c
        .client
        .drive_e2ee(group, event)
        .await
        .map_err(|e| e.to_string())?;
    if group.epoch() != before {
        println!(
            "keys changed: epoch {}, safety code {}",
            group.epoch(),
            group.safety_code()
        );
    }
    if let Some(Event::Status {
        from,
        decrypting: false,
        ..
    }) = what
    {
        println!("{} cannot decrypt some media", from.0);
    }
    Ok(())
}

pub(super) fn run(action: Action) -> Result<(), String> {
    // Human-readable logs on stderr; level from `RUST_LOG` (default `info`).
    crate::logging::init(false, "info");
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .map_err(|e| format!("cannot start the runtime: {e}"))?;
    runtime.block_on(async move {
        match action {
            Action::Publish {
                connection,
                layers,
                screen,
                level,
                duration,
                ..
            } if layers.is_some() || screen => {
                let kind = match layers {
                    Some(layers) => Kind::Camera { layers },
                    None => Kind::Screen,
                };
                publish_call(connection, kind, level, duration).await
            }
            Action::Publish {
                connection,
                bitrate,
                packet_size,
                duration,
                ..
            } => publish(connection, bitrate, packet_size, duration).await,
            Action::Subscribe {
                connection,
                tracks,
                duration,
            } => subscribe(connection, tracks, duration).await,
        }
    })
}

/// Publishes synthetic video at `bitrate` in datagrams of `packet_size`
/// (end-to-end encrypted when the conference is) for `duration` seconds,
/// answering key messages meanwhile.
async fn publish(
    c: Connection,
    bitrate: u64,
    packet_size: usize,
    duration: u64,
) -> Result<(), String> {
    let mut c = c.connect().await?;
    let encrypted = c.group.is_some();
    let track = c
        .client
        .publish_declared(TrackKind::Video, "synthetic-video", None, encrypted)
        .await
        .map_err(|e| e.to_string())?;
    println!("publishing track {}", track.0);
    // Room for the SFrame header and tag within the size asked for.
    let overhead = if encrypted { e2ee::MAX_OVERHEAD } else { 0 };
    let size = packet_size.clamp(
        HEADER_LEN + synthetic::STAMP_LEN + overhead,
        crate::wire::datagram::MAX_DATAGRAM_LEN,
    ) - overhead;
    let pps = (bitrate / (8 * size as u64)).max(1);
    let mut tick = tokio::time::interval(Duration::from_nanos(1_000_000_000 / pps));
    let end = Instant::now() + Duration::from_secs(duration);
    let mut sequence = 0u32;
    while Instant::now() < end {
        tokio::select! {
            _ = tick.tick() => {}
            event = c.client.next_event() => {
                let event = event.map_err(|e| e.to_string())?;
                key_event(&mut c, &event).await?;
                continue;
            }
        }
        let flags = if sequence % 100 == 0 {
            Flags::KEYFRAME
        } else {
            Flags::default()
        };
        let mut datagram = Vec::with_capacity(size + overhead);
        crate::wire::datagram::encode(
            &MediaHeader {
                track,
                sequence,
                flags,
                info: crate::wire::datagram::Info::NONE,
            },
            &synthetic::payload(size - HEADER_LEN),
            &mut datagram,
        );
        if let Some(group) = c.group.as_mut() {
            datagram = group.encrypt(0, &datagram).map_err(|e| e.to_string())?;
        }
        c.client
            .send_raw(datagram.into())
            .map_err(|e| e.to_string())?;
        sequence += 1;
    }
    println!("sent {sequence} packets of {} bytes", size + overhead);
    c.client.leave().await;
    Ok(())
}

/// Publishes call media (`kind`, and audio at `level`) for `duration`
/// seconds, following the relay's `layers` and `keyframe_request`, and
/// printing what it says of layers and speakers.
async fn publish_call(c: Connection, kind: Kind, level: u8, duration: u64) -> Result<(), String> {
    let mut c = c.connect().await?;
    let encrypted = c.group.is_some();
    let declared = match kind {
        Kind::Camera { layers } if layers > 1 => Some(Layers {
            spatial: layers,
            temporal: 1,
        }),
        _ => None,
    };
    let codec = match kind {
        Kind::Camera { .. } => "x-synthetic",
        Kind::Screen => "x-synthetic-screen",
    };
    let video = c
        .client
        .publish_declared(TrackKind::Video, codec, declared, encrypted)
        .await
        .map_err(|e| e.to_string())?;
    let audio = c
        .client
        .publish_declared(TrackKind::Audio, "x-synthetic", None, encrypted)
        .await
        .map_err(|e| e.to_string())?;
    println!(
        "publishing video track {} and audio track {}",
        video.0, audio.0
    );
    let reserve = if encrypted { e2ee::MAX_OVERHEAD } else { 0 };
    let mut source = Source::new(
        kind,
        video,
        Some(audio),
        crate::client::frames::MAX_DATAGRAM,
        reserve,
    );
    source.level = level;
    let mut video_tick = tokio::time::interval(source.frame_interval());
    let mut audio_tick = tokio::time::interval(crate::client::simulcast::AUDIO_INTERVAL);
    let end = tokio::time::Instant::now() + Duration::from_secs(duration);
    loop {
        let datagrams = tokio::select! {
            _ = video_tick.tick() => source.video_frame(crate::clock::unix_micros()),
            _ = audio_tick.tick() => source.audio_frame(crate::clock::unix_micros()),
            event = c.client.next_event() => {
                let event = event.map_err(|e| e.to_string())?;
                source.on_control(&event);
                match &event {
                    ServerMessage::Layers { track, active } if *track == video => {
                        println!("the relay asks for layers {active:?}");
                    }
                    ServerMessage::ActiveSpeaker { participant } => {
                        println!("active speaker: {}", participant.as_ref().map_or("nobody", |p| p.0.as_str()));
                    }
                    _ => {}
                }
                key_event(&mut c, &event).await?;
                continue;
            }
            _ = tokio::time::sleep_until(end) => break,
        };
        for d in datagrams {
            let d = match c.group.as_mut() {
                Some(g) => g.encrypt(0, &d).map_err(|e| e.to_string())?,
                None => d,
            };
            // A full send buffer drops the oldest: loss the relay sees.
            let _ = c.client.send_raw(d.into());
        }
    }
    println!("sent frames by layer {:?}", source.sent_frames);
    c.client.leave().await;
    Ok(())
}

/// Subscribes to `tracks` (none: everything published now and later) for
/// `duration` seconds and prints what arrived; on an end-to-end encrypted
/// conference only what decrypts counts.
async fn subscribe(c: Connection, tracks: Vec<u32>, duration: u64) -> Result<(), String> {
    let mut c = c.connect().await?;
    // No tracks named: everything published now and later.
    let follow = tracks.is_empty();
    let mut wanted: Vec<TrackId> = tracks.into_iter().map(TrackId).collect();
    if follow {
        wanted = c.client.initial_tracks.iter().map(|t| t.track).collect();
    }
    for t in &wanted {
        c.client.subscribe(*t).await.map_err(|e| e.to_string())?;
    }
    println!(
        "subscribed to {:?}{}",
        wanted.iter().map(|t| t.0).collect::<Vec<_>>(),
        if follow {
            " and any track published later"
        } else {
            ""
        }
    );
    let datagrams = c.client.datagrams();
    let mut stats = ReceiveStats::default();
    let mut undecryptable = 0u64;
    let end = tokio::time::Instant::now() + Duration::from_secs(duration);
    loop {
        tokio::select! {
            d = datagrams.next() => match d {
                Ok(d) => match c.group.as_mut() {
                    None => stats.record(&d),
                    // Only what decrypts counts; never plaintext.
                    Some(g) => match g.decrypt(&d, Instant::now()) {
                        Some(plain) => {
                            let mut whole = d[..HEADER_LEN].to_vec();
                            whole.extend_from_slice(&plain);
                            stats.record(&whole);
                        }
                        None => undecryptable += 1,
                    },
                },
                Err(e) => { println!("connection closed: {e}"); break; }
            },
            event = c.client.next_event() => match event {
                Ok(ServerMessage::TrackPublished(info)) if follow => {
                    if c.group.is_some() && !info.encrypted {
                        println!("not subscribing to track {} of {}: not declared encrypted", info.track.0, info.participant.0);
                        continue;
                    }
                    println!("subscribing to track {} of {}", info.track.0, info.participant.0);
                    if let Err(e) = c.client.subscribe(info.track).await {
                        println!("cannot subscribe: {e}");
                    }
                }
                Ok(event @ (ServerMessage::E2ee { .. } | ServerMessage::ParticipantLeft { .. })) => {
                    key_event(&mut c, &event).await?;
                }
                Ok(ServerMessage::GoingAway { reason, .. }) => println!("relay going away: {reason}"),
                Ok(ServerMessage::Kicked { reason }) => { println!("kicked: {reason}"); break; }
                Ok(ServerMessage::ConferenceEnded {}) => { println!("the conference ended"); break; }
                Ok(_) => {}
                // A quiet call sends nothing for as long as it
                // is quiet; only a lost relay or a closed
                // connection ends the wait.
                Err(e @ crate::client::ClientError::Lost) => { println!("{e}"); break; }
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
    if let Some(g) = &c.group {
        println!(
            "end-to-end encrypted: {} decrypted, {undecryptable} did not decrypt (dropped); epoch {}, safety code {}",
            g.stats.decrypted,
            g.epoch(),
            g.safety_code()
        );
    }
    c.client.leave().await;
    Ok(())
}
