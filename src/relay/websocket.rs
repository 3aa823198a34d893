//! Participants over WebSocket, on TLS over TCP: for networks that block
//! UDP, and browsers without WebTransport.
//!
//! The listener is served by [`crate::http_server`] like every HTTP
//! listener, so it has their caps per listener and per address, their TLS
//! handshake and head timeouts and their refusals; `GET /ws` with the
//! relay's subprotocol upgrades ([`crate::wire::websocket`] has the
//! framing), and the upgraded connection keeps its place in those caps
//! until it ends. From then on it is a participant like any other: the
//! first control message must be `hello` with a ticket, checked as over
//! QUIC ([`super::connection::admit`]); its control messages pass the same
//! rate limits; its shard sends it datagrams through an [`Outbox`] that
//! takes only what the connection has written out, so a subscriber that
//! cannot keep up loses discardable video first in the core's queue
//! (the same drop policy as QUIC), while its socket keeps little unsent
//! ([`UNSENT_LIMIT`], with BBR) so no latency hides in the kernel.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::extract::ws::{CloseFrame, Message, WebSocket, WebSocketUpgrade};
use axum::extract::{ConnectInfo, Extension, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use futures_util::{SinkExt, StreamExt};
use tokio::sync::mpsc;
use tracing::debug;

use super::connection::{Admitted, admit, pass_control, removal};
use super::peer::{Inbox, Outbox, Outgoing, Peer};
use super::shards::{Event, Shards, Transport};
use super::{Metrics, Trust, rate};
use crate::forward::ConnId;
use crate::wire::ErrorCode;
use crate::wire::close_code;
use crate::wire::control::{ClientMessage, Decoder, ServerMessage};
use crate::wire::websocket::{self as ws, Inbound};

/// Bytes not yet sent that a WebSocket connection's socket may hold
/// (`TCP_NOTSENT_LOWAT`): about 200 ms of a 600 kbit/s video waits in the
/// kernel at most, besides what is in flight.
pub(super) const UNSENT_LIMIT: u32 = 16 * 1024;

/// Datagram bytes a shard may hand one WebSocket connection before it has
/// written them out: a few frames of video; the rest waits in the core's
/// queue, where the drop policy applies.
pub(super) const OUTBOX_BUDGET: usize = 16 * 1024;

/// The WebSocket layer's read buffer: the largest TLS record.
const READ_BUFFER: usize = 16 * 1024;

/// Bytes of messages written to TLS together: what the outbox holds at
/// most, so one batch is one flush.
const WRITE_BATCH: usize = OUTBOX_BUDGET;

/// How often the relay pings a quiet connection, and how long a
/// connection may stay silent (no message, no pong) before it is taken
/// for gone: as QUIC's keep-alives and idle timeout.
const PING_EVERY: Duration = Duration::from_secs(10);
const SILENT_FOR: Duration = Duration::from_secs(30);

/// How long a closing connection waits for its peer's close before the
/// socket goes (closing over unread bytes could lose the close frame).
const CLOSE_WAIT: Duration = Duration::from_secs(1);

/// What the WebSocket endpoint needs.
#[derive(Clone)]
pub(super) struct Serving {
    pub(super) shards: Shards,
    pub(super) metrics: Metrics,
    pub(super) trust: Trust,
    pub(super) hello_timeout: Duration,
    pub(super) control_limits: rate::ControlLimits,
}

/// The WebSocket listener's routes: `GET /ws`, and nothing else.
pub(super) fn routes(serving: Serving) -> axum::Router {
    axum::Router::new()
        .route(ws::PATH, axum::routing::get(upgrade).fallback(not_here))
        .fallback(not_here)
        .with_state(Arc::new(serving))
}

async fn not_here(State(s): State<Arc<Serving>>) -> Response {
    refuse(&s.metrics)
}

fn refuse(metrics: &Metrics) -> Response {
    metrics
        .websocket_refusals
        .with_label_values(&["not_websocket"])
        .inc();
    (
        StatusCode::BAD_REQUEST,
        format!(
            "This is a relay's WebSocket endpoint: GET {} as a WebSocket with the subprotocol {}.\n",
            ws::PATH,
            ws::SUBPROTOCOL
        ),
    )
        .into_response()
}

async fn upgrade(
    State(s): State<Arc<Serving>>,
    ConnectInfo(remote): ConnectInfo<SocketAddr>,
    Extension(place): Extension<crate::http_server::Upgrade>,
    upgrade: Result<WebSocketUpgrade, axum::extract::ws::rejection::WebSocketUpgradeRejection>,
) -> Response {
    let Ok(upgrade) = upgrade else {
        return refuse(&s.metrics);
    };
    let upgrade = upgrade.protocols([ws::SUBPROTOCOL]);
    if upgrade.selected_protocol().is_none() {
        return refuse(&s.metrics);
    }
    // The listener slot stays taken while the connection lives.
    let held = place.keep();
    let failed = s.metrics.websocket_refusals.clone();
    upgrade
        .max_message_size(ws::MAX_MESSAGE_LEN)
        .max_frame_size(ws::MAX_MESSAGE_LEN)
        // The read buffer is zeroed up to its size before each read: the
        // default 128 KiB cost more CPU than everything else the
        // connection does (docs/benchmarks.md). One TLS record is enough.
        .read_buffer_size(READ_BUFFER)
        // Messages gather into one TLS record until it is full or the
        // writer flushes, which it does once the outbox has nothing more.
        .write_buffer_size(WRITE_BATCH)
        .on_failed_upgrade(move |_| failed.with_label_values(&["malformed"]).inc())
        .on_upgrade(move |socket| async move {
            if let Err(reason) = serve(socket, remote, &s).await {
                debug!(reason, "websocket connection ended");
            }
            drop(held);
        })
}

/// Why the reading half stopped.
enum ReadEnd {
    /// The peer closed or the connection broke.
    Gone(&'static str),
    /// Close the connection with this code and reason.
    Close(u32, &'static [u8], &'static str),
}

async fn serve(socket: WebSocket, remote: SocketAddr, s: &Serving) -> Result<(), &'static str> {
    let (mut sink, mut stream) = socket.split();
    let mut decoder = Decoder::new();
    let first = tokio::time::timeout(s.hello_timeout, hello(&mut stream, &mut decoder, s)).await;
    let ticket = match first {
        Ok(Ok(ticket)) => ticket,
        Ok(Err(ReadEnd::Gone(why))) => return Err(why),
        Ok(Err(ReadEnd::Close(code, reason, why))) => {
            let error = ServerMessage::Error {
                code: ErrorCode::OutOfOrder.code(),
                message: "the first message must be hello".into(),
            };
            let _ = sink.send(control_message(&error)).await;
            close(&mut sink, &mut stream, code, reason).await;
            return Err(why);
        }
        Err(_) => {
            s.metrics
                .websocket_refusals
                .with_label_values(&["no_hello"])
                .inc();
            close(
                &mut sink,
                &mut stream,
                close_code::PROTOCOL,
                b"no hello in time",
            )
            .await;
            return Err("no hello in time");
        }
    };
    let (outbox, inbox) = Outbox::new(remote, OUTBOX_BUDGET);
    let admitted = admit(
        Peer::WebSocket(outbox),
        Transport::WebSocket,
        &s.shards,
        &s.metrics,
        &s.trust,
        ticket,
    )
    .await
    .map_err(<&'static str>::from)?;
    let (id, control_rx, events): Admitted = match admitted {
        Ok(a) => a,
        Err(refusal) => {
            let error = ServerMessage::Error {
                code: refusal.wire_code(),
                message: refusal.to_string(),
            };
            let _ = sink.send(control_message(&error)).await;
            close(
                &mut sink,
                &mut stream,
                close_code::TICKET_REFUSED,
                refusal.code().as_bytes(),
            )
            .await;
            return Err("ticket refused");
        }
    };
    let heard = std::sync::atomic::AtomicU64::new(0);
    let started = Instant::now();
    let reading = read(&mut stream, &mut decoder, id, &events, s, &heard, started);
    let writing = write(&mut sink, control_rx, inbox, &heard, started, &s.metrics);
    let ended = tokio::select! {
        r = reading => match r {
            ReadEnd::Gone(why) => Err(why),
            ReadEnd::Close(code, reason, why) => Ok((code, reason.to_vec(), why)),
        },
        w = writing => w,
    };
    let _ = events.send(Event::Closed(id)).await;
    match ended {
        Ok((code, reason, why)) => {
            close(&mut sink, &mut stream, code, &reason).await;
            Err(why)
        }
        Err(why) => Err(why),
    }
}

type Sink = futures_util::stream::SplitSink<WebSocket, Message>;
type Stream = futures_util::stream::SplitStream<WebSocket>;

/// The next binary message's contents, or why the connection ends.
async fn next_inbound(stream: &mut Stream, metrics: &Metrics) -> Result<Option<Inbound>, ReadEnd> {
    let refused = |reason: &'static str| {
        metrics
            .websocket_refusals
            .with_label_values(&[reason])
            .inc();
    };
    match stream.next().await {
        None => Err(ReadEnd::Gone("closed")),
        Some(Err(e)) => {
            let oversized = matches!(
                e.into_inner()
                    .downcast_ref::<tokio_tungstenite::tungstenite::Error>(),
                Some(tokio_tungstenite::tungstenite::Error::Capacity(_))
            );
            refused(if oversized { "oversized" } else { "malformed" });
            Err(ReadEnd::Close(
                close_code::PROTOCOL,
                b"not a valid websocket message",
                "malformed",
            ))
        }
        Some(Ok(Message::Binary(bytes))) => match ws::parse(bytes) {
            Ok(inbound) => Ok(Some(inbound)),
            Err(e) => {
                refused(e.code());
                Err(ReadEnd::Close(
                    close_code::PROTOCOL,
                    b"unknown message kind",
                    e.code(),
                ))
            }
        },
        Some(Ok(Message::Text(_))) => {
            refused("text_message");
            Err(ReadEnd::Close(
                close_code::PROTOCOL,
                b"only binary messages",
                "text message",
            ))
        }
        Some(Ok(Message::Close(_))) => Err(ReadEnd::Gone("closed by the peer")),
        // Pings are answered by the WebSocket layer; both show life.
        Some(Ok(Message::Ping(_) | Message::Pong(_))) => Ok(None),
    }
}

/// Reads until the first control message, which must be `hello`.
async fn hello(stream: &mut Stream, decoder: &mut Decoder, s: &Serving) -> Result<String, ReadEnd> {
    let expected = ReadEnd::Close(close_code::PROTOCOL, b"expected hello", "no hello");
    loop {
        match next_inbound(stream, &s.metrics).await? {
            None => {}
            Some(Inbound::Control(bytes)) => {
                decoder.push(&bytes);
                match decoder.next_message::<ClientMessage>() {
                    Ok(None) => {}
                    Ok(Some(ClientMessage::Hello { ticket })) => return Ok(ticket),
                    Ok(Some(_)) | Err(_) => {
                        s.metrics.control_errors.inc();
                        return Err(expected);
                    }
                }
            }
            Some(Inbound::Datagram(_)) => {
                s.metrics.control_errors.inc();
                return Err(expected);
            }
        }
    }
}

fn millis_since(started: Instant) -> u64 {
    started.elapsed().as_millis() as u64
}

/// Hands the participant's messages to its shard until it goes.
async fn read(
    stream: &mut Stream,
    decoder: &mut Decoder,
    id: ConnId,
    events: &mpsc::Sender<Event>,
    s: &Serving,
    heard: &std::sync::atomic::AtomicU64,
    started: Instant,
) -> ReadEnd {
    let mut rate = rate::ControlRate::new(s.control_limits, Instant::now());
    // Frames that came in the message with `hello` are handled first.
    let mut inbound = Some(Inbound::Control(Bytes::new()));
    loop {
        if let Some(Inbound::Control(bytes)) = inbound.take() {
            decoder.push(&bytes);
            loop {
                match decoder.next_message::<ClientMessage>() {
                    Ok(None) => break,
                    Ok(Some(m)) => {
                        if let Err(stop) = pass_control(m, &mut rate, id, events, &s.metrics).await
                        {
                            return match stop.close {
                                Some((code, reason)) => ReadEnd::Close(code, reason, stop.reason),
                                None => ReadEnd::Close(close_code::NORMAL, b"left", stop.reason),
                            };
                        }
                    }
                    Err(_) => {
                        let _ = events.send(Event::BadControl(id)).await;
                        return ReadEnd::Close(
                            close_code::PROTOCOL,
                            b"malformed control message",
                            "malformed control",
                        );
                    }
                }
            }
        }
        let next = match next_inbound(stream, &s.metrics).await {
            Ok(i) => i,
            Err(end) => return end,
        };
        heard.store(millis_since(started), std::sync::atomic::Ordering::Relaxed);
        match next {
            Some(Inbound::Datagram(d)) => {
                let handed = events.send(Event::Datagram(id, d, Instant::now())).await;
                if handed.is_err() {
                    return ReadEnd::Gone("relay stopping");
                }
            }
            // Handled at the top of the loop.
            control => inbound = control,
        }
    }
}

/// Sends what the shard has for the participant: control messages first,
/// then a ping when one is due, then datagrams. Ends with the close to
/// give it, or `Err` when the socket broke. A message that cannot be
/// written within [`STALLED_FOR`] (a peer whose window stays shut, a path
/// that is gone) ends the connection, as does silence: neither waits on
/// TCP's own give-up, which takes many minutes.
async fn write(
    sink: &mut Sink,
    mut control_rx: mpsc::Receiver<ServerMessage>,
    mut inbox: Inbox,
    heard: &std::sync::atomic::AtomicU64,
    started: Instant,
    metrics: &Metrics,
) -> Result<(u32, Vec<u8>, &'static str), &'static str> {
    // The first ping after a quiet PING_EVERY, not at once.
    let mut ping = tokio::time::interval_at(tokio::time::Instant::now() + PING_EVERY, PING_EVERY);
    ping.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let stalled = || {
        metrics
            .websocket_refusals
            .with_label_values(&["stalled"])
            .inc();
        "stalled"
    };
    loop {
        tokio::select! {
            biased;
            message = control_rx.recv() => {
                // The shard dropped the participant's sender: it closed
                // the participant (its close, if any, waits in the outbox)
                // or the relay is stopping.
                let Some(message) = message else {
                    return Ok(closed_by_shard(&mut inbox));
                };
                send_within(sink, control_message(&message)).await.map_err(|e| e.unwrap_or_else(stalled))?;
                if let Some((code, reason)) = removal(&message) {
                    return Ok((code, reason.to_vec(), "removed"));
                }
            }
            _ = ping.tick() => {
                let quiet = millis_since(started)
                    .saturating_sub(heard.load(std::sync::atomic::Ordering::Relaxed));
                if quiet >= SILENT_FOR.as_millis() as u64 {
                    metrics.websocket_refusals.with_label_values(&["silent"]).inc();
                    return Ok((close_code::NORMAL, b"nothing heard".to_vec(), "silent"));
                }
                send_within(sink, Message::Ping(Bytes::new())).await.map_err(|e| e.unwrap_or_else(stalled))?;
            }
            out = inbox.recv() => match out {
                Some(Outgoing::Datagram(d)) => {
                    let close = batch(sink, d, &mut inbox).await.map_err(|e| e.unwrap_or_else(stalled))?;
                    if let Some((code, reason)) = close {
                        return Ok((code, reason, "closed by the relay"));
                    }
                }
                Some(Outgoing::Close(code, reason)) => return Ok((code, reason, "closed by the relay")),
                None => return Ok(closed_by_shard(&mut inbox)),
            },
        }
    }
}

/// Writes `first` and every datagram waiting behind it in the outbox as
/// one batch (a TLS record and a system call for several messages, where
/// QUIC sends them in one GSO batch), within [`STALLED_FOR`]. The batch's
/// room in the outbox is freed once it is in the socket, not before, so
/// a batch is at most the outbox's budget and what waits outside the
/// drop policy stays within it. Returns the relay's close if one came
/// behind the datagrams.
async fn batch(
    sink: &mut Sink,
    first: Bytes,
    inbox: &mut Inbox,
) -> Result<Option<(u32, Vec<u8>)>, Option<&'static str>> {
    let mut taken = first.len();
    let write = async {
        sink.feed(Message::Binary(ws::message(ws::KIND_DATAGRAM, &first)))
            .await?;
        let mut close = None;
        let mut more = MAX_BATCH;
        while more > 0
            && let Some(out) = inbox.try_recv()
        {
            more -= 1;
            match out {
                Outgoing::Datagram(d) => {
                    taken += d.len();
                    sink.feed(Message::Binary(ws::message(ws::KIND_DATAGRAM, &d)))
                        .await?;
                }
                Outgoing::Close(code, reason) => {
                    close = Some((code, reason));
                    break;
                }
            }
        }
        sink.flush().await?;
        Ok::<_, axum::Error>(close)
    };
    let done = tokio::time::timeout(STALLED_FOR, write).await;
    inbox.written(taken);
    match done {
        Ok(Ok(close)) => Ok(close),
        Ok(Err(_)) => Err(Some("broken")),
        Err(_) => Err(None),
    }
}

/// Datagrams in one batch at most, so that a sender that keeps the outbox
/// full still sees its batches flushed.
const MAX_BATCH: usize = 64;

/// How long one message may take to go into the socket.
const STALLED_FOR: Duration = Duration::from_secs(10);

/// Sends `message` within [`STALLED_FOR`]: `Err(None)` when it did not
/// go in time, `Err(Some(_))` when the socket broke.
async fn send_within(sink: &mut Sink, message: Message) -> Result<(), Option<&'static str>> {
    match tokio::time::timeout(STALLED_FOR, sink.send(message)).await {
        Ok(Ok(())) => Ok(()),
        Ok(Err(_)) => Err(Some("broken")),
        Err(_) => Err(None),
    }
}

/// The close a shard gave with the participant's removal, which waits in
/// the outbox behind its datagrams; without one the relay is stopping,
/// which QUIC participants hear as `going_away`'s close code.
fn closed_by_shard(inbox: &mut Inbox) -> (u32, Vec<u8>, &'static str) {
    while let Some(out) = inbox.try_recv() {
        if let Outgoing::Close(code, reason) = out {
            return (code, reason, "closed by the relay");
        }
    }
    (
        close_code::GOING_AWAY,
        b"relay shutting down".to_vec(),
        "relay stopping",
    )
}

fn control_message(message: &ServerMessage) -> Message {
    // A message the relay itself made always encodes.
    Message::Binary(ws::control(message).unwrap_or_else(|_| ws::message(ws::KIND_CONTROL, &[])))
}

fn close_frame(code: u32, reason: &[u8]) -> CloseFrame {
    CloseFrame {
        code: ws::close_code(code),
        reason: String::from_utf8_lossy(reason).into_owned().into(),
    }
}

/// Sends a close and waits briefly for the peer's, reading off what it
/// still sends, so that the close frame is not lost to a reset.
async fn close(sink: &mut Sink, stream: &mut Stream, code: u32, reason: &[u8]) {
    let _ = sink
        .send(Message::Close(Some(close_frame(code, reason))))
        .await;
    let _ = tokio::time::timeout(CLOSE_WAIT, async {
        while let Some(Ok(m)) = stream.next().await {
            if matches!(m, Message::Close(_)) {
                break;
            }
        }
    })
    .await;
}

/// TLS for the WebSocket listener with the relay's own certificate, as
/// renewed ([`super::CurrentIdentity`]): for relays given no certificate
/// files, whose clients pin the certificate (the native client does;
/// browsers refuse a self-signed certificate on WebSocket).
pub(super) fn own_certificate(identity: super::CurrentIdentity) -> Arc<rustls::ServerConfig> {
    let mut config = rustls::ServerConfig::builder_with_provider(crate::tls::provider())
        .with_protocol_versions(&[&rustls::version::TLS13])
        .unwrap_or_else(|e| panic!("ring supports TLS 1.3: {e}"))
        .with_no_client_auth()
        .with_cert_resolver(Arc::new(OwnCertificate {
            identity,
            made: std::sync::Mutex::new(None),
        }));
    config.alpn_protocols = vec![crate::tls::HTTP1_ALPN.to_vec()];
    Arc::new(config)
}

/// Serves the relay's current certificate, made into a key once per
/// certificate.
#[derive(Debug)]
struct OwnCertificate {
    identity: super::CurrentIdentity,
    made: std::sync::Mutex<Option<(String, Arc<rustls::sign::CertifiedKey>)>>,
}

impl rustls::server::ResolvesServerCert for OwnCertificate {
    fn resolve(
        &self,
        _hello: rustls::server::ClientHello<'_>,
    ) -> Option<Arc<rustls::sign::CertifiedKey>> {
        let current = self
            .identity
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone();
        let fingerprint = current.fingerprint();
        let mut made = self.made.lock().unwrap_or_else(|e| e.into_inner());
        if let Some((f, key)) = made.as_ref() {
            if *f == fingerprint {
                return Some(key.clone());
            }
        }
        let key = rustls::sign::CertifiedKey::from_der(
            current.chain.clone(),
            current.key.clone_key(),
            &crate::tls::provider(),
        )
        .ok()
        .map(Arc::new)?;
        *made = Some((fingerprint, key.clone()));
        Some(key)
    }
}
