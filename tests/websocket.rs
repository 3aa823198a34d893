//! Participants over WebSocket (TLS over TCP): the same call as over QUIC,
//! the same drop policy for a subscriber that cannot keep up, and bad
//! input refused with a close code and a metric.

mod support;

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use futures_util::{SinkExt, StreamExt};
use residency_relay::client::Client;
use residency_relay::client::synthetic::{self, ReceiveStats};
use residency_relay::client::websocket::{Trust, upgrade_request};
use residency_relay::forward::CoreConfig;
use residency_relay::wire::control::{self, ClientMessage, Decoder, ServerMessage, TrackKind};
use residency_relay::wire::datagram::{self, Flags, MediaHeader, TrackId};
use residency_relay::wire::websocket as ws;
use support::relay::{PUBLISHER, TestRelay, VIEWER, claims, sign_dev};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio_tungstenite::tungstenite::Message;

fn url(relay: &TestRelay) -> String {
    format!("wss://{}{}", relay.websocket, ws::PATH)
}

async fn join_quic(
    relay: &TestRelay,
    from: &str,
    who: &str,
    grants: residency_relay::ticket::Grants,
) -> Client {
    let ticket = sign_dev(&claims("de-fra-1", who, grants));
    Client::connect(
        format!("{from}:0").parse().unwrap(),
        relay.quic,
        &relay.fingerprint,
        &ticket,
    )
    .await
    .unwrap_or_else(|e| panic!("{who} could not join over QUIC: {e}"))
}

async fn join_websocket(
    relay: &TestRelay,
    from: &str,
    who: &str,
    grants: residency_relay::ticket::Grants,
) -> Client {
    let ticket = sign_dev(&claims("de-fra-1", who, grants));
    Client::connect_websocket(
        from.parse().unwrap(),
        &url(relay),
        &Trust::Pin(relay.fingerprint.clone()),
        &ticket,
    )
    .await
    .unwrap_or_else(|e| panic!("{who} could not join over WebSocket: {e}"))
}

/// Sends `n` numbered datagrams of `track`, a little paced.
async fn send(client: &Client, track: TrackId, n: u32) -> Vec<Bytes> {
    let mut sent = Vec::new();
    for i in 0..n {
        let header = MediaHeader {
            track,
            sequence: i,
            flags: if i % 50 == 0 {
                Flags::KEYFRAME
            } else {
                Flags::default()
            },
            info: residency_relay::wire::datagram::Info::NONE,
        };
        let payload: Vec<u8> = (0..900).map(|k| (k as u32 * 31 + i) as u8).collect();
        let mut d = Vec::new();
        datagram::encode(&header, &payload, &mut d);
        client.send_media(&header, &payload).unwrap();
        sent.push(Bytes::from(d));
        if i % 20 == 19 {
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
    }
    sent
}

async fn receive(client: &Client, n: usize) -> Vec<Bytes> {
    let mut got = Vec::new();
    while got.len() < n {
        match tokio::time::timeout(Duration::from_secs(5), client.recv_media()).await {
            Ok(Ok(d)) => got.push(d),
            _ => break,
        }
    }
    got
}

/// The value of `series` (a name, or a name and its labels).
fn metric(body: &str, series: &str) -> f64 {
    residency_relay::relay::metrics::sample(body, series)
        .unwrap_or_else(|| panic!("no {series} in\n{body}"))
}

fn series(name: &str, label: &str, value: &str) -> String {
    format!("{name}{{{label}=\"{value}\",relay=\"de-fra-1\"}}")
}

#[tokio::test]
async fn a_websocket_participant_sees_and_is_seen_by_quic_participants() {
    let mut relay = TestRelay::start("de-fra-1", "127.0.1.1", CoreConfig::default()).await;
    let mut alice = join_quic(&relay, "127.0.0.2", "alice", PUBLISHER).await;
    let alice_track = alice.publish(TrackKind::Video, "vp8", None).await.unwrap();
    let mut bob = join_websocket(&relay, "127.0.0.3", "bob", PUBLISHER).await;
    assert_eq!(bob.transport(), "websocket");
    assert_eq!(
        bob.initial_tracks.len(),
        1,
        "bob hears of alice's track at welcome"
    );
    bob.subscribe(alice_track).await.unwrap();
    let bob_track = bob.publish(TrackKind::Audio, "opus", None).await.unwrap();
    alice
        .subscribe_announced(bob_track, Duration::from_secs(5))
        .await
        .unwrap();

    let (sent_by_alice, got_by_bob) =
        tokio::join!(send(&alice, alice_track, 200), receive(&bob, 200));
    assert_eq!(
        got_by_bob, sent_by_alice,
        "bob (WebSocket) got exactly what alice (QUIC) sent, in order"
    );
    let (sent_by_bob, got_by_alice) =
        tokio::join!(send(&bob, bob_track, 200), receive(&alice, 200));
    assert_eq!(
        got_by_alice, sent_by_bob,
        "alice (QUIC) got exactly what bob (WebSocket) sent, in order"
    );

    let (_, body) = relay.get("/metrics").await;
    assert_eq!(
        metric(
            &body,
            &series("rr_relay_sessions_total", "transport", "websocket")
        ),
        1.0
    );
    assert_eq!(
        metric(
            &body,
            &series("rr_relay_sessions_total", "transport", "native")
        ),
        1.0
    );
    assert_eq!(
        metric(
            &body,
            &series("rr_relay_client_connections", "transport", "websocket")
        ),
        1.0
    );
    assert_eq!(
        metric(
            &body,
            "rr_relay_websocket_http_connections_open{relay=\"de-fra-1\"}"
        ),
        1.0
    );

    bob.leave().await;
    // Leaving gives the listener slot back.
    support::wait::until(
        "the WebSocket slot is given back",
        Duration::from_secs(5),
        || async {
            let (_, body) = relay.get("/metrics").await;
            let open = metric(
                &body,
                "rr_relay_websocket_http_connections_open{relay=\"de-fra-1\"}",
            );
            let participants = metric(
                &body,
                &series("rr_relay_client_connections", "transport", "websocket"),
            );
            if open == 0.0 && participants == 0.0 {
                Ok(())
            } else {
                Err(format!(
                    "{open} connections open, {participants} participants"
                ))
            }
        },
    )
    .await;
    alice.leave().await;
    relay.stop().await;
}

type Raw =
    tokio_tungstenite::WebSocketStream<tokio_rustls::client::TlsStream<tokio::net::TcpStream>>;

/// TLS to the relay's WebSocket listener, pinning its certificate.
async fn tls(relay: &TestRelay) -> tokio_rustls::client::TlsStream<tokio::net::TcpStream> {
    let config = residency_relay::quic::pinned_tls_config(&relay.fingerprint, b"http/1.1").unwrap();
    let tcp = tokio::net::TcpStream::connect(relay.websocket)
        .await
        .unwrap();
    tokio_rustls::TlsConnector::from(Arc::new(config))
        .connect("relay".try_into().unwrap(), tcp)
        .await
        .unwrap()
}

/// A WebSocket upgrade offering `protocol`, with nothing else done.
async fn raw(relay: &TestRelay, protocol: Option<&str>) -> Result<Raw, String> {
    let request = upgrade_request(&url(relay), &relay.websocket.to_string(), protocol).unwrap();
    tokio_tungstenite::client_async(request, tls(relay).await)
        .await
        .map(|(s, _)| s)
        .map_err(|e| e.to_string())
}

fn control_message(m: &ClientMessage) -> Message {
    Message::Binary(ws::control(m).unwrap())
}

/// Reads until the relay closes; its close code and the control messages
/// it sent before.
async fn until_closed(socket: &mut Raw) -> (Option<u16>, Vec<ServerMessage>) {
    let mut decoder = Decoder::new();
    let mut said = Vec::new();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(15);
    loop {
        let next = tokio::time::timeout_at(deadline, socket.next()).await;
        match next {
            Ok(Some(Ok(Message::Binary(b)))) => {
                if let Ok(ws::Inbound::Control(c)) = ws::parse(b) {
                    decoder.push(&c);
                    while let Ok(Some(m)) = decoder.next_message::<ServerMessage>() {
                        said.push(m);
                    }
                }
            }
            Ok(Some(Ok(Message::Close(frame)))) => return (frame.map(|f| u16::from(f.code)), said),
            Ok(Some(Ok(_))) => {}
            Ok(Some(Err(_)) | None) => return (None, said),
            Err(_) => panic!("the relay did not close within 15 s; it said {said:?}"),
        }
    }
}

/// Sends `first` on a fresh WebSocket and returns how the relay closed.
async fn refused_after(
    relay: &TestRelay,
    first: Vec<Message>,
) -> (Option<u16>, Vec<ServerMessage>) {
    let mut socket = raw(relay, Some(ws::SUBPROTOCOL)).await.unwrap();
    for m in first {
        // The relay may close before the last one is written.
        let _ = socket.send(m).await;
    }
    until_closed(&mut socket).await
}

#[tokio::test]
async fn bad_input_on_the_websocket_listener_is_refused_and_counted() {
    let mut relay = TestRelay::start("de-fra-1", "127.0.1.1", CoreConfig::default()).await;
    let protocol = Some(ws::close_code(residency_relay::wire::close_code::PROTOCOL));

    // No WebSocket at all, and an upgrade without the relay's subprotocol:
    // 400 with what to do instead.
    let mut plain = tls(&relay).await;
    plain
        .write_all(b"GET /ws HTTP/1.1\r\nHost: relay\r\nConnection: close\r\n\r\n")
        .await
        .unwrap();
    let mut answer = String::new();
    let _ = plain.read_to_string(&mut answer).await;
    assert!(answer.starts_with("HTTP/1.1 400"), "{answer}");
    assert!(answer.contains(ws::SUBPROTOCOL), "{answer}");
    let mut post = tls(&relay).await;
    post.write_all(
        b"POST /ws HTTP/1.1\r\nHost: relay\r\nContent-Length: 0\r\nConnection: close\r\n\r\n",
    )
    .await
    .unwrap();
    let mut answer = String::new();
    let _ = post.read_to_string(&mut answer).await;
    assert!(answer.starts_with("HTTP/1.1 400"), "{answer}");
    let refused = raw(&relay, None).await.unwrap_err();
    assert!(refused.contains("400"), "{refused}");
    let refused = raw(&relay, Some("chat")).await.unwrap_err();
    assert!(refused.contains("400"), "{refused}");

    let hello = |who: &str| {
        control_message(&ClientMessage::Hello {
            ticket: sign_dev(&claims("de-fra-1", who, VIEWER)),
        })
    };
    let (text, unknown_kind, oversized, datagram_first, forged, garbage_control) = tokio::join!(
        refused_after(&relay, vec![hello("t"), Message::Text("hello".into())]),
        refused_after(
            &relay,
            vec![hello("u"), Message::Binary(Bytes::from_static(b"\x09abc"))]
        ),
        refused_after(
            &relay,
            vec![Message::Binary(Bytes::from(vec![
                ws::KIND_DATAGRAM;
                ws::MAX_MESSAGE_LEN + 1
            ]))]
        ),
        refused_after(
            &relay,
            vec![Message::Binary(ws::message(ws::KIND_DATAGRAM, b"media"))]
        ),
        refused_after(
            &relay,
            vec![control_message(&ClientMessage::Hello {
                ticket: "v1.forged.ticket".into()
            })]
        ),
        refused_after(
            &relay,
            vec![
                hello("g"),
                Message::Binary(ws::message(ws::KIND_CONTROL, b"\x00\x00\x00\x05\x01{{{{"))
            ]
        ),
    );
    assert_eq!(text.0, protocol, "a text message: {text:?}");
    assert_eq!(
        unknown_kind.0, protocol,
        "an unknown kind: {unknown_kind:?}"
    );
    assert_eq!(oversized.0, protocol, "an oversized message: {oversized:?}");
    assert_eq!(
        datagram_first.0, protocol,
        "a datagram before hello: {datagram_first:?}"
    );
    assert!(
        matches!(datagram_first.1.as_slice(), [ServerMessage::Error { .. }]),
        "{datagram_first:?}"
    );
    assert_eq!(
        forged.0,
        Some(ws::close_code(
            residency_relay::wire::close_code::TICKET_REFUSED
        )),
        "a forged ticket: {forged:?}"
    );
    assert!(
        matches!(forged.1.as_slice(), [ServerMessage::Error { .. }]),
        "{forged:?}"
    );
    assert_eq!(
        garbage_control.0, protocol,
        "a malformed control frame: {garbage_control:?}"
    );

    // Connected, and never a word: closed after the hello timeout (5 s).
    let (silent, _) = refused_after(&relay, vec![]).await;
    assert_eq!(silent, protocol);

    let (_, body) = relay.get("/metrics").await;
    let refusals = |reason| {
        metric(
            &body,
            &series("rr_relay_websocket_refusals_total", "reason", reason),
        )
    };
    assert_eq!(refusals("not_websocket"), 4.0);
    assert_eq!(refusals("text_message"), 1.0);
    assert_eq!(refusals("bad_kind"), 1.0);
    assert_eq!(refusals("oversized"), 1.0);
    assert_eq!(refusals("no_hello"), 1.0);
    // The forged ticket was refused and counted as a forgery.
    let forged: f64 = body
        .lines()
        .filter(|l| {
            l.starts_with("rr_relay_ticket_refusals_total{") && l.contains("origin=\"forged\"")
        })
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum();
    assert_eq!(forged, 1.0, "{body}");
    // Every one of them gave its listener slot back.
    assert_eq!(
        metric(
            &body,
            "rr_relay_websocket_http_connections_open{relay=\"de-fra-1\"}"
        ),
        0.0
    );

    // Frames behind `hello` in the same message are handled at once: the
    // answer to a subscribe that came with it arrives without anything
    // more being sent.
    let mut socket = raw(&relay, Some(ws::SUBPROTOCOL)).await.unwrap();
    let mut both = Vec::new();
    control::encode(
        &ClientMessage::Hello {
            ticket: sign_dev(&claims("de-fra-1", "eager", VIEWER)),
        },
        &mut both,
    )
    .unwrap();
    control::encode(
        &ClientMessage::Subscribe {
            track: TrackId(4242),
        },
        &mut both,
    )
    .unwrap();
    socket
        .send(Message::Binary(ws::message(ws::KIND_CONTROL, &both)))
        .await
        .unwrap();
    let mut decoder = Decoder::new();
    let mut said = Vec::new();
    while said.len() < 2 {
        match tokio::time::timeout(Duration::from_secs(5), socket.next()).await {
            Ok(Some(Ok(Message::Binary(b)))) => {
                if let Ok(ws::Inbound::Control(c)) = ws::parse(b) {
                    decoder.push(&c);
                    while let Ok(Some(m)) = decoder.next_message::<ServerMessage>() {
                        said.push(m);
                    }
                }
            }
            Ok(Some(Ok(_))) => {}
            other => panic!("no answer to the subscribe that came with hello: {other:?}, {said:?}"),
        }
    }
    assert!(matches!(said[0], ServerMessage::Welcome { .. }), "{said:?}");
    assert!(matches!(said[1], ServerMessage::Error { .. }), "{said:?}");
    drop(socket);

    // And the relay still serves participants.
    let mut ok = join_websocket(&relay, "127.0.0.5", "ok", VIEWER).await;
    assert!(ok.initial_tracks.is_empty());
    ok.subscribe(TrackId(12345)).await.unwrap_err();
    ok.leave().await;
    relay.stop().await;
}

#[tokio::test]
async fn a_websocket_subscriber_that_does_not_read_costs_the_others_nothing() {
    let mut relay = TestRelay::start(
        "de-fra-1",
        "127.0.1.1",
        CoreConfig {
            queue_packets: 64,
            ..CoreConfig::default()
        },
    )
    .await;
    let mut alice = join_quic(&relay, "127.0.0.2", "alice", PUBLISHER).await;
    let track = alice.publish(TrackKind::Video, "vp8", None).await.unwrap();
    let mut reader = join_websocket(&relay, "127.0.0.3", "reader", VIEWER).await;
    reader.subscribe(track).await.unwrap();
    // A subscriber that never reads once subscribed: its TCP window and
    // socket buffer fill, then the relay's queue for it.
    let mut stalled = raw(&relay, Some(ws::SUBPROTOCOL)).await.unwrap();
    stalled
        .send(control_message(&ClientMessage::Hello {
            ticket: sign_dev(&claims("de-fra-1", "stalled", VIEWER)),
        }))
        .await
        .unwrap();
    stalled
        .send(control_message(&ClientMessage::Subscribe { track }))
        .await
        .unwrap();
    let mut decoder = Decoder::new();
    let mut subscribed = false;
    while !subscribed {
        let b = match stalled.next().await {
            Some(Ok(Message::Binary(b))) => b,
            // The relay's pings.
            Some(Ok(_)) => continue,
            other => panic!("the stalled subscriber was not subscribed: {other:?}"),
        };
        if let Ok(ws::Inbound::Control(c)) = ws::parse(b) {
            decoder.push(&c);
            while let Ok(Some(m)) = decoder.next_message::<ServerMessage>() {
                subscribed |= matches!(m, ServerMessage::Subscribed { .. });
            }
        }
    }

    const N: u32 = 1000;
    let receiving = tokio::spawn(async move {
        let mut stats = ReceiveStats::default();
        while stats.packets < u64::from(N) {
            match tokio::time::timeout(Duration::from_secs(5), reader.recv_media()).await {
                Ok(Ok(d)) => stats.record(&d),
                _ => break,
            }
        }
        (stats, reader)
    });
    for sequence in 0..N {
        let payload = synthetic::payload(1000);
        let flags = if sequence % 100 == 0 {
            Flags::KEYFRAME
        } else {
            Flags::DISCARDABLE
        };
        alice
            .send_media(
                &MediaHeader {
                    track,
                    sequence,
                    flags,
                    info: residency_relay::wire::datagram::Info::NONE,
                },
                &payload,
            )
            .unwrap();
        // 10 packets per 5 ms (16 Mbit/s), as the QUIC test of this.
        if sequence % 10 == 9 {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }
    let (stats, reader) = receiving.await.unwrap();
    assert_eq!(
        stats.packets,
        u64::from(N),
        "the reading subscriber lost {}",
        stats.lost()
    );
    // The stalled subscriber's backlog was dropped by the relay's policy,
    // discardable datagrams first, and counted.
    let (_, body) = relay.get("/metrics").await;
    let dropped: f64 = body
        .lines()
        .filter(|l| l.starts_with("rr_relay_queue_drops_total{"))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum();
    assert!(dropped > 0.0, "no queue drops counted:\n{body}");
    assert!(
        metric(
            &body,
            &series("rr_relay_queue_drops_total", "reason", "evicted_keyframe")
        ) == 0.0,
        "a keyframe went while discardable datagrams were queued"
    );
    drop(stalled);
    reader.leave().await;
    alice.leave().await;
    relay.stop().await;
}
