//! One client connection: the native protocol's handshake (the first
//! message must be `hello` with a ticket), the ticket check under the trust
//! in force, admission by the conference's shard, then the control stream
//! (rate limited) and media datagrams, handed straight to that shard. A
//! writer task sends what the shard has for the client.
//!
//! The negotiated ALPN tells the three kinds of connection apart on the one
//! endpoint: cascade links go to [`super::link`]; `h3` is a browser's
//! WebTransport session, whose HTTP/3 `CONNECT` is answered first
//! (`web-transport-quinn`), after which it is a participant exactly like a
//! native connection: the same control stream (which the browser opens),
//! the same datagrams (the session prefix is the crate's business) and the
//! same checks. Only [`Transport`] remembers the difference, for metrics.

use std::time::{Duration, Instant};

use tokio::sync::{mpsc, oneshot};
use tracing::{debug, info};
use web_transport_quinn::Session;

use super::framing::{read_message, write_message};
use super::peer::Peer;
use super::shards::{Event, Shards, Transport};
use super::{Metrics, Recheck, Trust, link, rate, trusted};
use crate::clock::unix_now;
use crate::forward::ConnId;
use crate::ticket::TicketError;
use crate::wire::ErrorCode;
use crate::wire::channel::Enforcement;
use crate::wire::control::{ClientMessage, Decoder, ServerMessage};
use crate::wire::{GOING_AWAY_MOVED, close_code};

/// Streams a browser's HTTP/3 connection needs: its control and two QPACK
/// streams (unidirectional), the `CONNECT` request and the session's
/// control stream (bidirectional). Every connection is offered these in
/// its handshake, before its ALPN is known.
pub(super) const H3_UNI_STREAMS: u32 = 3;
pub(super) const H3_BIDI_STREAMS: u32 = 2;

pub(super) async fn serve_connection(
    conn: quinn::Connection,
    shards: Shards,
    metrics: Metrics,
    trust: Trust,
    hello_timeout: Duration,
    control_limits: rate::ControlLimits,
) -> Result<(), &'static str> {
    let protocol = conn
        .handshake_data()
        .and_then(|h| h.downcast::<quinn::crypto::rustls::HandshakeData>().ok())
        .and_then(|h| h.protocol);
    // Whatever ends this task ends the connection: nothing else may hold
    // it open (the stream refusers would), and its address slot is given
    // back when this returns.
    let mut closer = CloseOnDrop {
        conn: conn.clone(),
        session: None,
    };
    let (session, transport) = match protocol.as_deref() {
        Some(crate::wire::CASCADE_ALPN) => {
            one_control_stream(&conn);
            return link::accept(conn, shards, metrics, trust, hello_timeout).await;
        }
        Some(crate::wire::WEBTRANSPORT_ALPN) => {
            match tokio::time::timeout(hello_timeout, accept_webtransport(conn.clone())).await {
                Ok(Ok(session)) => (session, Transport::WebTransport),
                Ok(Err(reason)) => {
                    metrics
                        .webtransport_refusals
                        .with_label_values(&[reason])
                        .inc();
                    debug!(reason, "webtransport session refused");
                    conn.close(close_code::PROTOCOL.into(), reason.as_bytes());
                    return Err("webtransport handshake failed");
                }
                Err(_) => {
                    metrics
                        .webtransport_refusals
                        .with_label_values(&["timeout"])
                        .inc();
                    conn.close(
                        close_code::PROTOCOL.into(),
                        b"no webtransport session in time",
                    );
                    return Err("no webtransport session in time");
                }
            }
        }
        _ => {
            one_control_stream(&conn);
            (Session::raw(conn), Transport::Native)
        }
    };
    closer.session = Some(session.clone());
    serve_participant(
        session,
        transport,
        shards,
        metrics,
        trust,
        hello_timeout,
        control_limits,
    )
    .await
}

/// Closes the connection when dropped; a no-op if it is closed already
/// (the first close's code stands). Once a session is up it is closed as a
/// session, so a close already begun on it (a browser's, which writes its
/// close code in a capsule before closing QUIC) is left to finish.
struct CloseOnDrop {
    conn: quinn::Connection,
    session: Option<Session>,
}

impl Drop for CloseOnDrop {
    fn drop(&mut self) {
        let reason = b"connection task ended";
        match &self.session {
            Some(s) => s.close(close_code::NORMAL, reason),
            None => self.conn.close(close_code::NORMAL.into(), reason),
        }
    }
}

/// One control stream is all the native and cascade protocols have: no
/// more are granted than the handshake offered, and any unidirectional
/// stream opened meanwhile is refused unread.
fn one_control_stream(conn: &quinn::Connection) {
    conn.set_max_concurrent_uni_streams(0u32.into());
    conn.set_max_concurrent_bi_streams(1u32.into());
    tokio::spawn(refuse_uni_streams(conn.clone()));
}

/// Stops every unidirectional stream a native client opens (the protocol
/// has none), so its data is never buffered.
async fn refuse_uni_streams(conn: quinn::Connection) {
    while let Ok(mut recv) = conn.accept_uni().await {
        let _ = recv.stop(0u32.into());
    }
}

/// Stops every bidirectional stream after the control stream.
async fn refuse_bi_streams(conn: Session) {
    while let Ok((mut send, mut recv)) = conn.accept_bi().await {
        let _ = recv.stop(0);
        let _ = send.reset(0);
    }
}

/// Answers a browser's HTTP/3 `CONNECT`: any path on this relay is the one
/// session endpoint (the ticket says what the session is for).
async fn accept_webtransport(conn: quinn::Connection) -> Result<Session, &'static str> {
    let request = web_transport_quinn::Request::accept(conn)
        .await
        .map_err(|_| "http3_handshake")?;
    request.ok().await.map_err(|_| "connect_response")
}

async fn serve_participant(
    conn: Session,
    transport: Transport,
    shards: Shards,
    metrics: Metrics,
    trust: Trust,
    hello_timeout: Duration,
    control_limits: rate::ControlLimits,
) -> Result<(), &'static str> {
    let (mut send, mut recv) = tokio::time::timeout(hello_timeout, conn.accept_bi())
        .await
        .map_err(|_| "no control stream in time")?
        .map_err(|_| "connection lost before the control stream")?;
    tokio::spawn(refuse_bi_streams(conn.clone()));
    let mut decoder = Decoder::new();
    let first = tokio::time::timeout(hello_timeout, read_message(&mut recv, &mut decoder))
        .await
        .map_err(|_| "no hello in time")?;
    let ticket = match first {
        Ok(Some(ClientMessage::Hello { ticket })) => ticket,
        Ok(Some(_)) | Ok(None) | Err(_) => {
            metrics.control_errors.inc();
            let _ = write_message(
                &mut send,
                &ServerMessage::Error {
                    code: ErrorCode::OutOfOrder.code(),
                    message: "the first message must be hello".into(),
                },
            )
            .await;
            let _ = send.finish();
            conn.close(close_code::PROTOCOL, b"expected hello");
            return Err("no hello");
        }
    };
    let peer = Peer::Quic(conn.clone());
    let checked = admit(peer, transport, &shards, &metrics, &trust, ticket).await?;
    // From here on, everything goes to the conference's shard.
    let (id, control_rx, events) = match checked {
        Ok(admitted) => admitted,
        Err(refusal) => {
            let _ = write_message(
                &mut send,
                &ServerMessage::Error {
                    code: refusal.wire_code(),
                    message: refusal.to_string(),
                },
            )
            .await;
            let _ = send.finish();
            // Give the error a moment to leave before closing.
            let _ = tokio::time::timeout(Duration::from_millis(200), send.stopped()).await;
            conn.close(close_code::TICKET_REFUSED, refusal.code().as_bytes());
            return Err("ticket refused");
        }
    };

    let writer = tokio::spawn(write_control(conn.clone(), send, control_rx));
    let mut rate = rate::ControlRate::new(control_limits, Instant::now());
    let outcome = loop {
        tokio::select! {
            datagram = conn.read_datagram() => match datagram {
                Ok(d) => {
                    if events.send(Event::Datagram(id, d, Instant::now())).await.is_err() {
                        break "relay stopping";
                    }
                }
                // A browser's datagram for no session of its own: dropped.
                Err(_) if conn.close_reason().is_none() => {
                    metrics.ingress_drops.with_label_values(&["unknown_connection"]).inc();
                }
                Err(_) => break "closed",
            },
            message = read_message(&mut recv, &mut decoder) => match message {
                Ok(Some(m)) => {
                    if let Err(stop) = pass_control(m, &mut rate, id, &events, &metrics).await {
                        if let Some((code, reason)) = stop.close {
                            conn.close(code, reason);
                        }
                        break stop.reason;
                    }
                }
                Ok(None) => break "control stream ended",
                Err(_) => {
                    let _ = events.send(Event::BadControl(id)).await;
                    // Closed here with its reason, before this task's end
                    // would close it plainly.
                    conn.close(close_code::PROTOCOL, b"malformed control message");
                    break "malformed control";
                }
            },
        }
    };
    let _ = events.send(Event::Closed(id)).await;
    writer.abort();
    Err(outcome)
}

/// Why a participant's connection ends after a control message, and the
/// close code and reason to give it, if any.
pub(super) struct Stop {
    pub(super) reason: &'static str,
    pub(super) close: Option<(u32, &'static [u8])>,
}

/// Hands a participant's control message to its shard within its rate
/// (over QUIC and WebSocket alike).
pub(super) async fn pass_control(
    m: ClientMessage,
    rate: &mut rate::ControlRate,
    id: ConnId,
    events: &mpsc::Sender<Event>,
    metrics: &Metrics,
) -> Result<(), Stop> {
    let stopping = Stop {
        reason: "relay stopping",
        close: None,
    };
    match rate.check(&m, Instant::now()) {
        rate::Verdict::Pass => {
            let leaving = matches!(m, ClientMessage::Leave {});
            events
                .send(Event::Control(id, m))
                .await
                .map_err(|_| stopping)?;
            if leaving {
                return Err(Stop {
                    reason: "left",
                    close: None,
                });
            }
        }
        rate::Verdict::Drop => {
            metrics
                .control_rate_limited
                .with_label_values(&["dropped"])
                .inc();
            events
                .send(Event::RateLimited(id))
                .await
                .map_err(|_| stopping)?;
        }
        rate::Verdict::Disconnect => {
            metrics
                .control_rate_limited
                .with_label_values(&["disconnected"])
                .inc();
            return Err(Stop {
                reason: "control messages over the rate",
                close: Some((close_code::RATE_LIMITED, b"control messages over the rate")),
            });
        }
    }
    Ok(())
}

/// The relay is stopping: nobody takes the participant's events.
pub(super) struct Stopping;

impl From<Stopping> for &'static str {
    fn from(_: Stopping) -> Self {
        "relay stopping"
    }
}

/// A participant admitted by its conference's shard: its id, its control
/// messages, and the shard's queue.
pub(super) type Admitted = (ConnId, mpsc::Receiver<ServerMessage>, mpsc::Sender<Event>);

/// Checks `ticket` under the trust in force when the hello arrived and asks
/// the conference's shard to admit the participant; a refusal is counted
/// and, for a ticket a router of the policy really signed, reported to
/// that conference's router.
pub(super) async fn admit(
    peer: Peer,
    transport: Transport,
    shards: &Shards,
    metrics: &Metrics,
    trust: &Trust,
    ticket: String,
) -> Result<Result<Admitted, TicketError>, Stopping> {
    // The trust in force when the hello arrived.
    let (generation, checker) = trusted(trust);
    match checker.check(&ticket, unix_now()) {
        Ok(claims) => {
            let (reply_tx, reply_rx) = oneshot::channel();
            let events = shards.of(&claims.conference).clone();
            events
                .send(Event::Hello {
                    recheck: Recheck {
                        ticket: ticket.clone(),
                        ip: peer.remote_address().ip(),
                        cert: None,
                        generation,
                    },
                    conn: Box::new(peer),
                    transport,
                    claims,
                    reply: reply_tx,
                })
                .await
                .map_err(|_| Stopping)?;
            Ok(reply_rx
                .await
                .map_err(|_| Stopping)?
                .map(|(id, rx)| (id, rx, events)))
        }
        Err(refusal) => {
            // Only a ticket a router of the policy really signed names a
            // conference worth recording; anyone can write the claims of
            // a forgery.
            // A bad signature under a trusted key is no better under the
            // same keys again: only other refusals are worth the check.
            let attested = match refusal {
                TicketError::BadSignature | TicketError::Malformed => None,
                _ => checker.attest(&ticket),
            };
            let origin = if attested.is_some() {
                "signed"
            } else {
                "forged"
            };
            metrics
                .ticket_refusals
                .with_label_values(&[refusal.code(), origin])
                .inc();
            // No client address in the log: the refusal reason only.
            info!(reason = refusal.code(), origin, "ticket refused");
            // The router of the conference named hears of it (a ticket for
            // one jurisdiction presented to a relay outside it).
            if let Some(claims) = attested {
                let _ = shards
                    .of(&claims.conference)
                    .send(Event::Enforcement(Enforcement {
                        conference: claims.conference,
                        kind: "ticket".into(),
                        reason: refusal.code().into(),
                        peer: None,
                        at: unix_now(),
                    }))
                    .await;
            }
            Ok(Err(refusal))
        }
    }
}

/// The close code and reason that follow a message removing the
/// participant (kicked, ended, moved), if it is one.
pub(super) fn removal(message: &ServerMessage) -> Option<(u32, &'static [u8])> {
    match message {
        ServerMessage::Kicked { .. } => Some((close_code::KICKED, b"kicked")),
        ServerMessage::ConferenceEnded {} => {
            Some((close_code::CONFERENCE_ENDED, b"conference ended"))
        }
        ServerMessage::GoingAway {
            code: GOING_AWAY_MOVED,
            ..
        } => Some((close_code::MOVED, b"moved")),
        _ => None,
    }
}

/// Sends what the shard has for the participant, in order; after a
/// message that removes it (kicked, ended, moved) the connection closes
/// with the matching code once the message had a moment to arrive.
async fn write_control(
    writer_conn: Session,
    mut send: web_transport_quinn::SendStream,
    mut control_rx: mpsc::Receiver<ServerMessage>,
) {
    while let Some(message) = control_rx.recv().await {
        let going_away = matches!(message, ServerMessage::GoingAway { .. });
        if write_message(&mut send, &message).await.is_err() {
            // Cannot encode or cannot write: the client would miss
            // events silently, so end the connection instead.
            writer_conn.close(close_code::PROTOCOL, b"control message not delivered");
            break;
        }
        if going_away {
            let _ = send.finish();
        }
        if let Some((code, reason)) = removal(&message) {
            let _ = send.finish();
            // Give the message a moment to arrive before closing.
            let _ = tokio::time::timeout(Duration::from_millis(200), send.stopped()).await;
            writer_conn.close(code, reason);
            break;
        }
    }
}
