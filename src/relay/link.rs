//! Cascade links: relay-to-relay QUIC connections carrying one conference's
//! tracks between two relays of its jurisdiction.
//!
//! The router decides the links and gives the dialing relay a cascade
//! ticket. Both ends authenticate by certificate: the dialing relay pins
//! the accepting relay's (from the router's command) and presents its own,
//! which the accepting relay asks for from connections that come from
//! another relay's address. The accepting relay admits the link only if the
//! ticket passes [`crate::ticket::Verifier::check_cascade`] (its
//! jurisdiction, both relays inside it by the inventory, the link coming
//! from the named relay's address, validity, the presented certificate one
//! the router knew for that relay) and its nonce is new; every refusal is counted, logged without addresses
//! and reported to the router as an enforcement event. Once up, both ends
//! run the same loop: control messages and datagrams go to the core task,
//! which treats the link as a member of the conference (see
//! [`crate::forward::Core::admit_link`]).

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{mpsc, oneshot};
use tracing::{debug, info, warn};

use super::Metrics;
use super::framing::{read_message, write_message};
use super::shards::{Event, Shards};
use crate::clock::unix_now;
use crate::ticket::{self, TicketError};
use crate::wire::channel::Enforcement;
use crate::wire::close_code;
use crate::wire::control::Decoder;
use crate::wire::link::LinkMessage;

/// Messages queued for a link's peer before the link is dropped.
pub(super) const LINK_BACKLOG: usize = 4096;

/// Serves an incoming link (ALPN [`crate::wire::CASCADE_ALPN`]).
pub(super) async fn accept(
    conn: quinn::Connection,
    shards: Shards,
    metrics: Metrics,
    trust: super::Trust,
    hello_timeout: Duration,
) -> Result<(), &'static str> {
    let (mut send, mut recv) = tokio::time::timeout(hello_timeout, conn.accept_bi())
        .await
        .map_err(|_| "no link control stream in time")?
        .map_err(|_| "link lost before its control stream")?;
    let mut decoder = Decoder::new();
    let first = tokio::time::timeout(
        hello_timeout,
        read_message::<LinkMessage, _>(&mut recv, &mut decoder),
    )
    .await
    .map_err(|_| "no link hello in time")?;
    let ticket = match first {
        Ok(Some(LinkMessage::LinkHello { ticket })) => ticket,
        _ => {
            let checker = super::trusted(&trust).1;
            refuse(
                &conn,
                &mut send,
                &shards,
                &metrics,
                &checker,
                TicketError::Malformed,
                None,
            )
            .await;
            return Err("no link hello");
        }
    };
    // The trust in force when the hello arrived.
    let (generation, checker) = super::trusted(&trust);
    let cert = crate::quic::peer_fingerprint(&conn);
    let checked = checker.check_cascade(
        &ticket,
        conn.remote_address().ip(),
        cert.as_deref(),
        unix_now(),
    );
    let claims = match checked {
        Ok(claims) => claims,
        Err(e) => {
            refuse(
                &conn,
                &mut send,
                &shards,
                &metrics,
                &checker,
                e,
                Some(&ticket),
            )
            .await;
            return Err("cascade ticket refused");
        }
    };
    let (reply, answer) = oneshot::channel();
    // Everything of this link goes to its conference's shard.
    let events = shards.of(&claims.conference).clone();
    events
        .send(Event::LinkUp {
            conn: conn.clone(),
            conference: claims.conference.clone(),
            peer: claims.from.clone(),
            claims: Some(claims),
            recheck: Some(super::Recheck {
                ticket: ticket.clone(),
                ip: conn.remote_address().ip(),
                cert,
                generation,
            }),
            reply,
        })
        .await
        .map_err(|_| "relay stopping")?;
    let (id, rx) = match answer.await.map_err(|_| "relay stopping")? {
        Ok(admitted) => admitted,
        Err(e) => {
            refuse(
                &conn,
                &mut send,
                &shards,
                &metrics,
                &checker,
                e,
                Some(&ticket),
            )
            .await;
            return Err("cascade link refused");
        }
    };
    if write_message(&mut send, &LinkMessage::LinkWelcome {})
        .await
        .is_err()
    {
        let _ = events.send(Event::Closed(id)).await;
        return Err("link lost");
    }
    run(conn, send, recv, decoder, id, rx, events).await
}

/// Refuses a link: counted, logged without the address, reported to the
/// router (when the ticket names a conference), answered and closed.
async fn refuse(
    conn: &quinn::Connection,
    send: &mut quinn::SendStream,
    shards: &Shards,
    metrics: &Metrics,
    checker: &ticket::Verifier,
    e: TicketError,
    ticket: Option<&str>,
) {
    // Only a ticket a router of the policy really signed names a conference
    // and a peer worth recording; anyone can write a forgery's claims.
    let claims = match e {
        TicketError::BadSignature | TicketError::Malformed => None,
        _ => ticket.and_then(|t| checker.attest_cascade(t)),
    };
    let origin = if claims.is_some() { "signed" } else { "forged" };
    metrics
        .cascade_refusals
        .with_label_values(&[e.code(), origin])
        .inc();
    warn!(
        reason = e.code(),
        origin,
        from = claims.as_ref().map_or("", |c| c.from.as_str()),
        "cascade link refused"
    );
    if let Some(c) = claims {
        let _ = shards
            .of(&c.conference)
            .send(Event::Enforcement(Enforcement {
                conference: c.conference,
                kind: "cascade".into(),
                reason: e.code().into(),
                peer: Some(c.from),
                at: unix_now(),
            }))
            .await;
    }
    let _ = write_message(
        send,
        &LinkMessage::Error {
            code: e.wire_code(),
            message: e.to_string(),
        },
    )
    .await;
    let _ = send.finish();
    let _ = tokio::time::timeout(Duration::from_millis(200), send.stopped()).await;
    conn.close(close_code::CASCADE_REFUSED.into(), e.code().as_bytes());
}

/// What the dialing relay needs to open a link.
#[derive(Debug, Clone)]
pub(super) struct Dial {
    pub conference: String,
    pub peer: String,
    pub peer_addr: SocketAddr,
    pub peer_cert: String,
    pub ticket: String,
}

/// Opens a link from this relay's own endpoint (so it comes from the
/// address the inventory names) and runs it until it ends.
pub(super) async fn dial(
    endpoint: quinn::Endpoint,
    dial: Dial,
    shards: Shards,
    timeout: Duration,
    identity: super::CurrentIdentity,
) -> Result<(), String> {
    let crypto = {
        let identity = identity.read().unwrap_or_else(|e| e.into_inner()).clone();
        super::tls::link_client_config(&dial.peer_cert, &identity)?
    };
    let mut config = quinn::ClientConfig::new(Arc::new(crypto));
    let mut transport = quinn::TransportConfig::default();
    transport
        .datagram_receive_buffer_size(Some(4 << 20))
        .datagram_send_buffer_size(1 << 20)
        .keep_alive_interval(Some(Duration::from_secs(2)))
        .max_idle_timeout(Some(Duration::from_secs(6).try_into().map_err(|_| "idle")?));
    config.transport_config(Arc::new(transport));
    let connecting = endpoint
        .connect_with(config, dial.peer_addr, "relay")
        .map_err(|e| e.to_string())?;
    let conn = tokio::time::timeout(timeout, connecting)
        .await
        .map_err(|_| "link handshake timed out".to_owned())?
        .map_err(|e| e.to_string())?;
    let (mut send, mut recv) = conn.open_bi().await.map_err(|e| e.to_string())?;
    write_message(
        &mut send,
        &LinkMessage::LinkHello {
            ticket: dial.ticket.clone(),
        },
    )
    .await
    .map_err(|_| "cannot send link hello")?;
    let mut decoder = Decoder::new();
    let answer = tokio::time::timeout(
        timeout,
        read_message::<LinkMessage, _>(&mut recv, &mut decoder),
    )
    .await
    .map_err(|_| "no link welcome in time".to_owned())?;
    match answer {
        Ok(Some(LinkMessage::LinkWelcome {})) => {}
        Ok(Some(LinkMessage::Error { message, .. })) => {
            return Err(format!("peer refused the link: {message}"));
        }
        _ => return Err("peer broke the link protocol".into()),
    }
    let (reply, answer) = oneshot::channel();
    let events = shards.of(&dial.conference).clone();
    events
        .send(Event::LinkUp {
            conn: conn.clone(),
            conference: dial.conference.clone(),
            peer: dial.peer.clone(),
            claims: None,
            recheck: None,
            reply,
        })
        .await
        .map_err(|_| "relay stopping")?;
    let (id, rx) = match answer.await.map_err(|_| "relay stopping")? {
        Ok(admitted) => admitted,
        Err(_) => {
            conn.close(close_code::NORMAL.into(), b"duplicate link");
            return Ok(());
        }
    };
    info!(link_to = %dial.peer, "cascade link up");
    let ended = run(conn, send, recv, decoder, id, rx, events).await;
    debug!(link_to = %dial.peer, ?ended, "cascade link down");
    Ok(())
}

/// Both ends, once the link is admitted.
async fn run(
    conn: quinn::Connection,
    mut send: quinn::SendStream,
    mut recv: quinn::RecvStream,
    mut decoder: Decoder,
    id: crate::forward::ConnId,
    mut rx: mpsc::Receiver<LinkMessage>,
    events: mpsc::Sender<Event>,
) -> Result<(), &'static str> {
    let writer_conn = conn.clone();
    let writer = tokio::spawn(async move {
        while let Some(message) = rx.recv().await {
            if write_message(&mut send, &message).await.is_err() {
                writer_conn.close(close_code::PROTOCOL.into(), b"link message not delivered");
                break;
            }
        }
        // The core dropped the link (conference ended, idle, relay stopping).
        let _ = send.finish();
        writer_conn.close(close_code::NORMAL.into(), b"link closed");
    });
    let outcome = loop {
        tokio::select! {
            datagram = conn.read_datagram() => match datagram {
                Ok(d) => {
                    if events.send(Event::Datagram(id, d, std::time::Instant::now())).await.is_err() {
                        break "relay stopping";
                    }
                }
                Err(_) => break "link closed",
            },
            message = read_message::<LinkMessage, _>(&mut recv, &mut decoder) => match message {
                Ok(Some(m)) => {
                    if events.send(Event::Link(id, m)).await.is_err() {
                        break "relay stopping";
                    }
                }
                Ok(None) => break "link control stream ended",
                Err(_) => {
                    conn.close(close_code::PROTOCOL.into(), b"malformed link message");
                    break "malformed link message";
                }
            },
        }
    };
    debug!(outcome, "cascade link ended");
    let _ = events.send(Event::Closed(id)).await;
    writer.abort();
    Err(outcome)
}
