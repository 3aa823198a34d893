//! Cascading inside a jurisdiction, on loopback: relays of the dev config
//! (Frankfurt, Dublin, Amsterdam, New York) and routers in this process;
//! clients at 127.0.0.2 (Germany), .3 (US), .4 (Ireland), .7 (Netherlands).

#![allow(clippy::needless_range_loop)] // participants are addressed by index throughout

mod support;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use residency_relay::client::Client;
use residency_relay::client::join::JoinError;
use residency_relay::client::session::Session;
use residency_relay::ticket::{self, CascadeClaims};
use residency_relay::wire::control::{self, Decoder, ServerMessage, TrackKind};
use residency_relay::wire::datagram::{Flags, MediaHeader, TrackId};
use residency_relay::wire::link::LinkMessage;
use serde_json::{Value, json};
use support::cluster::{
    ACME, ADMIN, Cluster, connect, join_from, open_conference, request, sample, session,
};
use support::wait::{REPORTS, send_until_heard, until};

/// What one client received, counted by a task reading its datagrams.
#[derive(Default, Debug)]
struct Received {
    bytes: u64,
    per_track: HashMap<TrackId, u64>,
}

impl Received {
    fn got(&self, track: TrackId) -> u64 {
        self.per_track.get(&track).copied().unwrap_or(0)
    }
}

struct Participant {
    client: Client,
    sent_bytes: u64,
    received: Arc<Mutex<Received>>,
    /// Tracks announced so far.
    announced: Vec<TrackId>,
}

impl Participant {
    fn new(client: Client) -> Self {
        let received = Arc::new(Mutex::new(Received::default()));
        let datagrams = client.datagrams();
        let r = received.clone();
        tokio::spawn(async move {
            while let Ok(d) = datagrams.next().await {
                let Ok(h) = residency_relay::wire::datagram::parse(&d) else {
                    continue;
                };
                let mut r = r.lock().unwrap();
                r.bytes += d.len() as u64;
                *r.per_track.entry(h.track).or_default() += 1;
            }
        });
        let announced = client.initial_tracks.iter().map(|t| t.track).collect();
        Participant {
            client,
            sent_bytes: 0,
            received,
            announced,
        }
    }

    fn send(&mut self, track: TrackId, sequence: u32, payload: &[u8]) {
        self.client
            .send_media(
                &MediaHeader {
                    track,
                    sequence,
                    flags: Flags::default(),
                    info: residency_relay::wire::datagram::Info::NONE,
                },
                payload,
            )
            .unwrap();
        self.sent_bytes += (residency_relay::wire::datagram::HEADER_LEN + payload.len()) as u64;
    }

    fn got(&self, track: TrackId) -> u64 {
        self.received.lock().unwrap().got(track)
    }

    fn bytes(&self) -> u64 {
        self.received.lock().unwrap().bytes
    }

    /// Waits until the relay announces `track` (published here or beyond a link).
    async fn await_track(&mut self, track: TrackId) {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        while !self.announced.contains(&track) {
            let event = tokio::time::timeout_at(deadline, self.client.next_event())
                .await
                .expect("track announced")
                .unwrap();
            if let ServerMessage::TrackPublished(info) = event {
                self.announced.push(info.track);
            }
        }
    }
}

/// Sends `track` from `from` until every one of `to` has received it (a
/// subscription beyond a link takes effect once the link passed it on).
async fn prime(ps: &mut [Participant], from: usize, to: &[usize], track: TrackId) {
    // What the receivers counted, apart from the sender borrowed to send.
    let counts: Vec<Arc<Mutex<Received>>> = to.iter().map(|t| ps[*t].received.clone()).collect();
    send_until_heard(
        |sequence| ps[from].send(track, sequence, b"primer"),
        || async {
            tokio::time::sleep(Duration::from_millis(20)).await;
            counts.iter().all(|r| r.lock().unwrap().got(track) > 0)
        },
    )
    .await;
}

async fn residency(router: &str, id: &str, auth: &str) -> Value {
    let r = request(
        "GET",
        &format!("{router}/v1/conferences/{id}/residency"),
        None,
        Some(auth),
        None,
    )
    .await;
    assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
    r.json()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_eu_call_spans_eu_relays_only_and_the_report_accounts_for_every_byte() {
    let mut c = Cluster::new(|t| t);
    c.start_router("de-fra-router").await;
    c.start_router("us-nyc-router").await;
    for r in ["de-fra-1", "ie-dub-1", "nl-ams-1", "us-nyc-1"] {
        c.start_relay(r).await;
    }
    c.wait_health(
        "de-fra-router",
        &["de-fra-1", "ie-dub-1", "nl-ams-1", "us-nyc-1"],
        "healthy",
    )
    .await;
    let router = c.url("de-fra-router");
    let conf = open_conference(&router, "eu").await;
    let id = conf["id"].as_str().unwrap().to_owned();
    let passcode = conf["passcode"].as_str().unwrap().to_owned();

    let at = ["127.0.0.2", "127.0.0.4", "127.0.0.3"];
    let mut joined = Vec::new();
    for ip in at {
        joined.push(join_from(&router, &id, &passcode, ip).await.unwrap());
    }
    // The German and the Irish on their nearest EU relay; the American on
    // an EU relay (Dublin, nearest New York), not the one next door.
    assert_eq!(joined[0].relay_id, "de-fra-1");
    assert_eq!(joined[1].relay_id, "ie-dub-1");
    assert_eq!(joined[2].relay_id, "ie-dub-1");
    let mut ps = Vec::new();
    for (j, ip) in joined.iter().zip(at) {
        ps.push(Participant::new(connect(j, ip).await));
    }
    let mut tracks = Vec::new();
    for p in &mut ps {
        tracks.push(
            p.client
                .publish(TrackKind::Audio, "opus", None)
                .await
                .unwrap(),
        );
    }
    for i in 0..3 {
        for k in 0..3 {
            if i != k {
                ps[i].await_track(tracks[k]).await;
                ps[i].client.subscribe(tracks[k]).await.unwrap();
            }
        }
    }
    for k in 0..3 {
        let others: Vec<usize> = (0..3).filter(|i| *i != k).collect();
        prime(&mut ps, k, &others, tracks[k]).await;
    }
    // Everyone receives everyone: 40 packets each.
    for sequence in 0..40u32 {
        for (k, track) in tracks.iter().enumerate() {
            ps[k].send(*track, sequence, &[k as u8; 300]);
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    until("every packet received", Duration::from_secs(10), || async {
        let mut got = Vec::new();
        for i in 0..3 {
            for k in 0..3 {
                if i != k {
                    got.push(ps[i].got(tracks[k]));
                }
            }
        }
        if got.iter().all(|n| *n >= 41) {
            Ok(())
        } else {
            Err(format!("of each other track: {got:?}"))
        }
    })
    .await;
    for i in 0..3 {
        for k in 0..3 {
            if i != k {
                assert!(
                    ps[i].got(tracks[k]) >= 41,
                    "participant {i} got {} of track {k}",
                    ps[i].got(tracks[k])
                );
            }
        }
    }
    // The American relay carried nothing of it.
    let us = c.relay_metrics("us-nyc-1").await;
    assert_eq!(sample(&us, "rr_relay_bytes_received_total"), 0.0);
    assert_eq!(sample(&us, "rr_relay_connections"), 0.0);
    assert_eq!(sample(&us, "rr_relay_cascade_links"), 0.0);

    // The report, once the relays' next reports are in: EU relays only, and
    // their byte counts agree with what their participants sent and received.
    let host = format!("Bearer {}", conf["host_token"].as_str().unwrap());
    let on =
        |relay: &str| -> Vec<usize> { (0..3).filter(|i| joined[*i].relay_id == relay).collect() };
    let accounted =
        |report: &Value| {
            ["de-fra-1", "ie-dub-1"].into_iter().all(|relay| {
                let sent: u64 = on(relay).iter().map(|i| ps[*i].sent_bytes).sum();
                let received: u64 = on(relay).iter().map(|i| ps[*i].bytes()).sum();
                report["relays"].as_array().into_iter().flatten().any(|r| {
                    r["id"] == relay && r["bytes_in"] == sent && r["bytes_out"] == received
                })
            })
        };
    let envelope = until("the relays' reports of every byte", REPORTS, || async {
        let envelope = residency(&router, &id, &host).await;
        if accounted(&envelope["report"]) {
            Ok(envelope)
        } else {
            Err(envelope["report"]["relays"].clone())
        }
    })
    .await;
    let key = c.policy.router("de-fra-router").unwrap().public_key;
    let report = residency_relay::router::residency::verify(&envelope, &key)
        .unwrap()
        .clone();
    let relays = report["relays"].as_array().unwrap();
    let ids: Vec<&str> = relays.iter().map(|r| r["id"].as_str().unwrap()).collect();
    assert_eq!(ids.len(), 2, "{report}");
    for r in relays {
        assert_eq!(r["inside_jurisdiction"], true, "{r}");
        assert!(["DE", "IE"].contains(&r["country"].as_str().unwrap()));
    }
    for relay in ["de-fra-1", "ie-dub-1"] {
        let r = relays.iter().find(|r| r["id"] == relay).unwrap();
        let sent: u64 = on(relay).iter().map(|i| ps[*i].sent_bytes).sum();
        let received: u64 = on(relay).iter().map(|i| ps[*i].bytes()).sum();
        assert_eq!(r["bytes_in"].as_u64().unwrap(), sent, "{relay} in: {r}");
        assert_eq!(
            r["bytes_out"].as_u64().unwrap(),
            received,
            "{relay} out: {r}"
        );
    }
    let links = report["links"].as_array().unwrap();
    assert!(!links.is_empty(), "{report}");
    for l in links {
        assert!(
            ["de-fra-1", "ie-dub-1"].contains(&l["relay"].as_str().unwrap()),
            "{l}"
        );
        assert!(
            ["de-fra-1", "ie-dub-1"].contains(&l["peer"].as_str().unwrap()),
            "{l}"
        );
    }
    assert_eq!(report["routers"][0]["country"], "DE");
    // A tampered copy no longer verifies.
    let mut tampered = envelope.clone();
    tampered["report"]["relays"][0]["country"] = json!("US");
    assert!(residency_relay::router::residency::verify(&tampered, &key).is_err());
    for p in ps {
        p.client.leave().await;
    }
    c.shutdown().await;
}

/// Opens a cascade-link connection to `relay` from `from_ip` and presents
/// `ticket`; returns the relay's answer.
async fn present_link_ticket(c: &Cluster, relay: &str, from_ip: &str, ticket: &str) -> LinkMessage {
    present_link_ticket_as(
        c,
        relay,
        format!("{from_ip}:0").parse().unwrap(),
        None,
        ticket,
    )
    .await
}

/// [`present_link_ticket`] from `bind`, presenting `client`'s certificate.
async fn present_link_ticket_as(
    c: &Cluster,
    relay: &str,
    bind: std::net::SocketAddr,
    client: Option<&residency_relay::relay::tls::Identity>,
    ticket: &str,
) -> LinkMessage {
    let r = c.policy.relay(c.policy.relay_idx(relay).unwrap());
    let cert = relay_cert(&r.http_addr.to_string()).await;
    let crypto = match client {
        Some(identity) => residency_relay::relay::tls::link_client_config(&cert, identity),
        None => residency_relay::quic::pinned_client_config_for(
            &cert,
            residency_relay::wire::CASCADE_ALPN,
        ),
    }
    .unwrap();
    // A stopped relay's address is free once its last task let go of it.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    let mut endpoint = loop {
        match quinn::Endpoint::client(bind) {
            Ok(e) => break e,
            Err(e) if tokio::time::Instant::now() < deadline => {
                let _ = e;
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            Err(e) => panic!("bind {bind}: {e}"),
        }
    };
    endpoint.set_default_client_config(quinn::ClientConfig::new(Arc::new(crypto)));
    let conn = endpoint
        .connect(r.quic_addr, "relay")
        .unwrap()
        .await
        .unwrap();
    let (mut send, mut recv) = conn.open_bi().await.unwrap();
    let mut frame = Vec::new();
    control::encode(
        &LinkMessage::LinkHello {
            ticket: ticket.to_owned(),
        },
        &mut frame,
    )
    .unwrap();
    send.write_all(&frame).await.unwrap();
    let mut decoder = Decoder::new();
    loop {
        if let Some(m) = decoder.next_message::<LinkMessage>().unwrap() {
            return m;
        }
        let chunk = tokio::time::timeout(Duration::from_secs(5), recv.read_chunk(16384, true))
            .await
            .unwrap()
            .unwrap()
            .expect("an answer");
        decoder.push(&chunk.bytes);
    }
}

/// The certificate fingerprint a relay serves at `/cert` of its HTTP address.
async fn relay_cert(http_addr: &str) -> String {
    request("GET", &format!("http://{http_addr}/cert"), None, None, None)
        .await
        .json()["sha256"]
        .as_str()
        .unwrap()
        .to_owned()
}

fn cascade_ticket(
    key: &ed25519_dalek::SigningKey,
    conference: &str,
    from: &str,
    to: &str,
) -> String {
    cascade_ticket_naming(key, conference, from, to, vec![])
}

/// A cascade ticket that names `from_certs` as the dialing relay's
/// certificates.
fn cascade_ticket_naming(
    key: &ed25519_dalek::SigningKey,
    conference: &str,
    from: &str,
    to: &str,
    from_certs: Vec<String>,
) -> String {
    let now = residency_relay::clock::unix_now();
    ticket::sign_cascade(
        &CascadeClaims {
            conference: conference.to_owned(),
            jurisdiction: "eu".into(),
            from: from.into(),
            to: to.into(),
            issued_at: now,
            expires_at: now + 60,
            nonce: ticket::new_nonce().unwrap(),
            from_certs,
        },
        key,
    )
}

/// A genuine ticket and the dialing relay's address are not enough: the
/// link must present the certificate the ticket names. From the relay's IP
/// on another port nobody is asked for a certificate and the link is
/// refused; from its very QUIC address (the relay stopped, an impostor in
/// its place) a certificate is asked for, another one is refused, and only
/// the one the ticket names opens the link.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_link_opens_only_with_the_dialing_relays_certificate() {
    let mut c = Cluster::new(|t| t);
    c.start("de-fra-router", &["de-fra-1", "ie-dub-1"]).await;
    let router = c.url("de-fra-router");
    let conf = open_conference(&router, "eu").await;
    let id = conf["id"].as_str().unwrap().to_owned();
    let key = ticket::parse_signing_key(
        std::fs::read_to_string(support::repo().join("config/dev-ticket.key"))
            .unwrap()
            .trim(),
    )
    .unwrap();
    let fra = c
        .policy
        .relay(c.policy.relay_idx("de-fra-1").unwrap())
        .clone();
    let fra_cert = relay_cert(&fra.http_addr.to_string()).await;
    let refused = |m: LinkMessage| match m {
        LinkMessage::Error { code, .. } => code,
        other => panic!("expected a refusal, got {other:?}"),
    };
    let wrong = ticket::TicketError::WrongPeerCertificate.wire_code();
    let naming =
        |certs: Vec<String>| cascade_ticket_naming(&key, &id, "de-fra-1", "ie-dub-1", certs);

    // Frankfurt's IP, another port: no certificate.
    let t = naming(vec![fra_cert.clone()]);
    assert_eq!(
        refused(present_link_ticket(&c, "ie-dub-1", "127.0.1.1", &t).await),
        wrong
    );
    // An impostor on Frankfurt's QUIC address.
    c.stop_relay("de-fra-1").await;
    let impostor =
        residency_relay::relay::tls::Identity::self_signed(vec!["relay".into()]).unwrap();
    let t = naming(vec![fra_cert.clone()]);
    assert_eq!(
        refused(present_link_ticket_as(&c, "ie-dub-1", fra.quic_addr, Some(&impostor), &t).await),
        wrong
    );
    let t = naming(vec![fra_cert.clone()]);
    assert_eq!(
        refused(present_link_ticket_as(&c, "ie-dub-1", fra.quic_addr, None, &t).await),
        wrong
    );
    // The certificate the ticket names opens it.
    let t = naming(vec![impostor.fingerprint()]);
    assert!(matches!(
        present_link_ticket_as(&c, "ie-dub-1", fra.quic_addr, Some(&impostor), &t).await,
        LinkMessage::LinkWelcome {}
    ));
    let ie = c.relay_metrics("ie-dub-1").await;
    assert!(
        ie.contains(
            "rr_relay_cascade_refusals_total{origin=\"signed\",reason=\"wrong_peer_certificate\",relay=\"ie-dub-1\"} 3"
        ),
        "{ie}"
    );
    c.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn forged_misdirected_and_foreign_tickets_are_refused_and_reported() {
    let mut c = Cluster::new(|t| t);
    c.start("de-fra-router", &["de-fra-1", "ie-dub-1", "us-nyc-1"])
        .await;
    let router = c.url("de-fra-router");
    let conf = open_conference(&router, "eu").await;
    let id = conf["id"].as_str().unwrap().to_owned();
    let irish = join_from(
        &router,
        &id,
        conf["passcode"].as_str().unwrap(),
        "127.0.0.4",
    )
    .await
    .unwrap();

    let genuine_key = ticket::parse_signing_key(
        std::fs::read_to_string(support::repo().join("config/dev-ticket.key"))
            .unwrap()
            .trim(),
    )
    .unwrap();
    let forger = ticket::generate_signing_key().unwrap();
    let refused = |m: LinkMessage| match m {
        LinkMessage::Error { code, .. } => code,
        other => panic!("expected a refusal, got {other:?}"),
    };
    let code = |e: ticket::TicketError| e.wire_code();
    // Forged: signed by a key nobody trusts.
    let forged = cascade_ticket(&forger, &id, "de-fra-1", "ie-dub-1");
    assert_eq!(
        refused(present_link_ticket(&c, "ie-dub-1", "127.0.1.1", &forged).await),
        code(ticket::TicketError::BadSignature)
    );
    // Genuine, but presented from an address that is not the named relay's.
    let genuine = cascade_ticket(&genuine_key, &id, "de-fra-1", "ie-dub-1");
    assert_eq!(
        refused(present_link_ticket(&c, "ie-dub-1", "127.0.0.9", &genuine).await),
        code(ticket::TicketError::WrongPeer)
    );
    // Genuine, replayed to the American relay: it is not in the EU.
    assert_eq!(
        refused(present_link_ticket(&c, "us-nyc-1", "127.0.1.1", &genuine).await),
        code(ticket::TicketError::ForeignJurisdiction)
    );
    // A link from a relay outside the jurisdiction, even with a good key.
    let from_us = cascade_ticket(&genuine_key, &id, "us-nyc-1", "ie-dub-1");
    assert_eq!(
        refused(present_link_ticket(&c, "ie-dub-1", "127.0.1.4", &from_us).await),
        code(ticket::TicketError::PeerOutsideJurisdiction)
    );
    // A participant's genuine ticket for Dublin, replayed to New York.
    let us = c.policy.relay(c.policy.relay_idx("us-nyc-1").unwrap());
    let us_cert = request(
        "GET",
        &format!("http://{}/cert", us.http_addr),
        None,
        None,
        None,
    )
    .await
    .json()["sha256"]
        .as_str()
        .unwrap()
        .to_owned();
    let e = Client::connect(
        "127.0.0.4:0".parse().unwrap(),
        us.quic_addr,
        &us_cert,
        &irish.ticket,
    )
    .await
    .unwrap_err();
    assert!(e.to_string().contains("jurisdiction"), "{e}");
    // Forgeries naming the conference, sent to New York by someone who only
    // knows its id: a participant ticket and a cascade ticket signed by a
    // key nobody gave the EU.
    let now = residency_relay::clock::unix_now();
    let forged_join = ticket::sign(
        &ticket::Claims {
            e2ee: false,
            conference: id.clone(),
            jurisdiction: "eu".into(),
            relay: "us-nyc-1".into(),
            participant: "mallory".into(),
            display_name: "mallory".into(),
            grants: ticket::Grants {
                publish: true,
                subscribe: true,
                moderate: true,
            },
            issued_at: now,
            expires_at: now + 60,
            nonce: ticket::new_nonce().unwrap(),
        },
        &forger,
    );
    Client::connect(
        "127.0.0.3:0".parse().unwrap(),
        us.quic_addr,
        &us_cert,
        &forged_join,
    )
    .await
    .unwrap_err();
    let forged_link = cascade_ticket(&forger, &id, "de-fra-1", "us-nyc-1");
    assert_eq!(
        refused(present_link_ticket(&c, "us-nyc-1", "127.0.1.1", &forged_link).await),
        code(ticket::TicketError::ForeignJurisdiction)
    );
    let us_text = c.relay_metrics("us-nyc-1").await;
    for line in [
        "rr_relay_ticket_refusals_total{origin=\"forged\",reason=\"foreign_jurisdiction\",relay=\"us-nyc-1\"} 1",
        "rr_relay_ticket_refusals_total{origin=\"signed\",reason=\"foreign_jurisdiction\",relay=\"us-nyc-1\"} 1",
        "rr_relay_cascade_refusals_total{origin=\"forged\",reason=\"foreign_jurisdiction\",relay=\"us-nyc-1\"} 1",
        "rr_relay_cascade_refusals_total{origin=\"signed\",reason=\"foreign_jurisdiction\",relay=\"us-nyc-1\"} 1",
    ] {
        assert!(us_text.contains(line), "missing {line}");
    }

    // Counted by the relays, and in the conference's residency report.
    let ie = c.relay_metrics("ie-dub-1").await;
    assert!(
        ie.contains(
            "rr_relay_cascade_refusals_total{origin=\"forged\",reason=\"bad_signature\",relay=\"ie-dub-1\"} 1"
        ),
        "{ie}"
    );
    assert!(
        ie.contains("rr_relay_cascade_refusals_total{origin=\"signed\",reason=\"wrong_peer\",relay=\"ie-dub-1\"} 1")
    );
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    let events = loop {
        let report = residency(&router, &id, ACME).await;
        let events = report["report"]["enforcement"].as_array().unwrap().clone();
        if events.len() >= 4 || tokio::time::Instant::now() > deadline {
            break events;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    let seen: Vec<(String, String, String)> = events
        .iter()
        .map(|e| {
            (
                e["relay"].as_str().unwrap().to_owned(),
                e["kind"].as_str().unwrap().to_owned(),
                e["reason"].as_str().unwrap().to_owned(),
            )
        })
        .collect();
    // The forgery names the conference, but nobody signed that claim: it is
    // counted as forged and stays out of the report.
    assert!(
        !seen.iter().any(|s| s.2 == "bad_signature"),
        "a forged ticket reached the report: {seen:?}"
    );
    // Each genuine refusal once; the forgeries at New York not at all.
    for want in [
        ("ie-dub-1", "cascade", "wrong_peer"),
        ("ie-dub-1", "cascade", "peer_outside_jurisdiction"),
        ("us-nyc-1", "cascade", "foreign_jurisdiction"),
        ("us-nyc-1", "ticket", "foreign_jurisdiction"),
    ] {
        let n: u64 = events
            .iter()
            .filter(|e| e["relay"] == want.0 && e["kind"] == want.1 && e["reason"] == want.2)
            .map(|e| e["count"].as_u64().unwrap_or(1))
            .sum();
        assert_eq!(n, 1, "{want:?} in {events:?}");
    }
    c.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_participant_moves_when_its_relay_dies_and_never_abroad() {
    let mut c = Cluster::running(
        "de-fra-router",
        &["de-fra-1", "ie-dub-1", "nl-ams-1", "us-nyc-1"],
    )
    .await;
    let router = c.url("de-fra-router");
    let conf = open_conference(&router, "eu").await;
    let id = conf["id"].as_str().unwrap().to_owned();
    let mut anna = session(&router, &conf, "Anna", "127.0.0.2").await;
    let mut aoife = session(&router, &conf, "Aoife", "127.0.0.4").await;
    assert_eq!(anna.joined.relay_id, "de-fra-1");
    assert_eq!(aoife.joined.relay_id, "ie-dub-1");
    let track = anna.publish(TrackKind::Audio, "opus").await.unwrap();

    // Media flows Frankfurt -> Dublin.
    receive_from(&mut anna, &mut aoife, track).await;

    // Dublin dies: Aoife's session moves to another EU relay (Amsterdam,
    // the nearest left) and media resumes.
    c.stop_relay("ie-dub-1").await;
    tokio::time::timeout(Duration::from_secs(10), aoife.client().closed())
        .await
        .expect("the dying relay closes the connection");
    assert!(aoife.movable());
    aoife.recover(Duration::from_secs(20)).await.unwrap();
    assert_eq!(aoife.joined.relay_id, "nl-ams-1");
    assert_eq!(aoife.moves, 1);
    receive_from(&mut anna, &mut aoife, track).await;

    // With every EU relay down, joins are refused, although New York is up.
    c.stop_relay("de-fra-1").await;
    c.stop_relay("nl-ams-1").await;
    let e = join_from(
        &router,
        &id,
        conf["passcode"].as_str().unwrap(),
        "127.0.0.3",
    )
    .await
    .unwrap_err();
    match e {
        JoinError::Refused { status, code, .. } => {
            assert_eq!(status, 503);
            assert_eq!(code, "no_healthy_relay");
        }
        other => panic!("{other}"),
    }
    let e = aoife.recover(Duration::from_secs(2)).await.unwrap_err();
    assert!(e.to_string().contains("no relay could take"), "{e}");
    c.shutdown().await;
}

/// `to` subscribes to `track` (announced over a link) and receives it.
async fn receive_from(from: &mut Session, to: &mut Session, track: TrackId) {
    support::cluster::hear(from, to, track, &mut false).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn each_packet_crosses_each_link_once() {
    let mut c = Cluster::new(|t| t);
    c.start("de-fra-router", &["de-fra-1", "ie-dub-1", "nl-ams-1"])
        .await;
    let router = c.url("de-fra-router");
    let conf = open_conference(&router, "eu").await;
    let id = conf["id"].as_str().unwrap().to_owned();
    let passcode = conf["passcode"].as_str().unwrap().to_owned();
    // One publisher in Germany; two subscribers near each relay.
    let at = [
        "127.0.0.2",
        "127.0.0.2",
        "127.0.0.2",
        "127.0.0.4",
        "127.0.0.4",
        "127.0.0.7",
        "127.0.0.7",
    ];
    let mut ps = Vec::new();
    let mut relays = Vec::new();
    for ip in at {
        let j = join_from(&router, &id, &passcode, ip).await.unwrap();
        relays.push(j.relay_id.clone());
        ps.push(Participant::new(connect(&j, ip).await));
    }
    assert_eq!(
        relays,
        [
            "de-fra-1", "de-fra-1", "de-fra-1", "ie-dub-1", "ie-dub-1", "nl-ams-1", "nl-ams-1"
        ]
    );
    let track = ps[0]
        .client
        .publish(TrackKind::Video, "vp8", None)
        .await
        .unwrap();
    for p in &mut ps[1..] {
        p.await_track(track).await;
        p.client.subscribe(track).await.unwrap();
    }
    prime(&mut ps, 0, &[1, 2, 3, 4, 5, 6], track).await;
    for sequence in 0..100u32 {
        ps[0].send(track, sequence, &[7; 500]);
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    // Until every subscriber has every packet and the relays' next reports
    // count them, the counts below still grow.
    let counted = |report: &Value| {
        let carried = |a: &str, b: &str, bytes: u64| {
            report["links"]
                .as_array()
                .into_iter()
                .flatten()
                .any(|l| l["relay"] == a && l["peer"] == b && l["bytes_out"] == bytes)
        };
        let subscribers = [("ie-dub-1", [3, 4]), ("nl-ams-1", [5, 6])]
            .into_iter()
            .all(|(peer, subs)| {
                let got = ps[subs[0]].bytes();
                ps[subs[1]].bytes() == got
                    && ps[subs[0]].got(track) >= 101
                    && carried("de-fra-1", peer, got)
            });
        let fra = report["relays"].as_array().into_iter().flatten().any(|r| {
            r["id"] == "de-fra-1"
                && r["bytes_in"] == ps[0].sent_bytes
                && r["bytes_out"] == ps[1].bytes() + ps[2].bytes()
        });
        // And the Dublin–Amsterdam link, once a relay has reported it.
        let between = report["links"]
            .as_array()
            .into_iter()
            .flatten()
            .any(|l| l["relay"] == "ie-dub-1" && l["peer"] == "nl-ams-1");
        subscribers && fra && between
    };
    let report = until("the relays' reports of every packet", REPORTS, || async {
        let report = residency(&router, &id, ACME).await["report"].clone();
        if counted(&report) {
            Ok(report)
        } else {
            Err(report)
        }
    })
    .await;
    let link = |a: &str, b: &str| -> Value {
        report["links"]
            .as_array()
            .unwrap()
            .iter()
            .find(|l| l["relay"] == a && l["peer"] == b)
            .unwrap_or_else(|| panic!("no link {a} -> {b} in {report}"))
            .clone()
    };
    for (peer, subs) in [("ie-dub-1", [3, 4]), ("nl-ams-1", [5, 6])] {
        // Both subscribers there got the same bytes; one copy crossed.
        let got = ps[subs[0]].bytes();
        assert_eq!(ps[subs[1]].bytes(), got);
        assert!(ps[subs[0]].got(track) >= 101);
        let l = link("de-fra-1", peer);
        assert_eq!(l["bytes_out"].as_u64().unwrap(), got, "{l}");
        assert_eq!(l["bytes_in"].as_u64().unwrap(), 0, "{l}");
    }
    // Dublin and Amsterdam are linked too, but nothing published in
    // Frankfurt is passed on between them (no relaying, no loops).
    let between = link("ie-dub-1", "nl-ams-1");
    assert_eq!(between["bytes_out"], 0, "{between}");
    assert_eq!(between["bytes_in"], 0, "{between}");
    // Frankfurt's own subscribers, and the publisher's bytes in.
    let fra = report["relays"]
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["id"] == "de-fra-1")
        .unwrap()
        .clone();
    assert_eq!(fra["bytes_in"].as_u64().unwrap(), ps[0].sent_bytes);
    assert_eq!(
        fra["bytes_out"].as_u64().unwrap(),
        ps[1].bytes() + ps[2].bytes()
    );
    c.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_drained_relay_takes_no_joins_and_its_participants_move() {
    let c = Cluster::running("de-fra-router", &["de-fra-1", "de-ber-1", "ie-dub-1"]).await;
    let router = c.url("de-fra-router");
    let conf = open_conference(&router, "eu").await;
    let id = conf["id"].as_str().unwrap().to_owned();
    let mut anna = session(&router, &conf, "Anna", "127.0.0.2").await;
    assert_eq!(anna.joined.relay_id, "de-fra-1");

    // Only the operator may drain.
    let url = format!("{router}/v1/admin/relays/de-fra-1/drain");
    assert_eq!(
        request("POST", &url, None, Some(ACME), None).await.status,
        401
    );
    assert_eq!(
        request("POST", &url, None, Some(support::cluster::ADMIN), None)
            .await
            .status,
        200
    );

    // Anna is told to go, and moves to the other German relay.
    support::cluster::going_away(&mut anna, residency_relay::wire::GOING_AWAY_DRAIN).await;
    anna.recover(Duration::from_secs(10)).await.unwrap();
    assert_eq!(anna.joined.relay_id, "de-ber-1");
    // New joins avoid the drained relay.
    c.wait_health("de-fra-router", &["de-fra-1"], "draining")
        .await;
    let max = join_from(
        &router,
        &id,
        conf["passcode"].as_str().unwrap(),
        "127.0.0.2",
    )
    .await
    .unwrap();
    assert_eq!(max.relay_id, "de-ber-1");
    c.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_dry_run_lists_what_a_policy_change_would_do_to_live_calls() {
    let mut c = Cluster::new(|t| t);
    c.start("de-fra-router", &["de-fra-1"]).await;
    let router = c.url("de-fra-router");
    let conf = open_conference(&router, "eu").await;
    let id = conf["id"].as_str().unwrap().to_owned();
    let joined = join_from(
        &router,
        &id,
        conf["passcode"].as_str().unwrap(),
        "127.0.0.2",
    )
    .await
    .unwrap();
    let _in = connect(&joined, "127.0.0.2").await;
    // The router lists the conference live once the relay's report counts
    // the participant in.
    let live = format!("{router}/v1/admin/conferences");
    until("the live conference at the router", REPORTS, || async {
        let list = request("GET", &live, None, Some(ADMIN), None).await.json();
        let carried = list["conferences"]
            .as_array()
            .into_iter()
            .flatten()
            .any(|c| {
                c["id"] == id.as_str()
                    && c["participants"] == 1
                    && c["relays"]
                        .as_array()
                        .is_some_and(|r| r.contains(&json!("de-fra-1")))
            });
        if carried { Ok(()) } else { Err(list) }
    })
    .await;

    let run = |config: &std::path::Path| {
        std::process::Command::new(env!("CARGO_BIN_EXE_residency-relay"))
            .args([
                "check",
                "--config",
                config.to_str().unwrap(),
                "--against",
                &router,
                "--token",
                "dev-admin-key",
            ])
            .output()
            .unwrap()
    };
    // The running config itself: nothing would change.
    let same = run(&c.config);
    assert!(
        same.status.success(),
        "{}",
        String::from_utf8_lossy(&same.stderr)
    );
    let text = String::from_utf8_lossy(&same.stdout);
    assert!(
        text.contains("no live conference would be affected"),
        "{text}"
    );

    // Frankfurt's relay "moved" to the US: the live conference would have to move.
    let moved = c.dir.path().join("moved.toml");
    let original = std::fs::read_to_string(&c.config).unwrap();
    let edited = original
        .replace("eu = \"de-fra-1\"", "eu = \"de-ber-1\"")
        .replacen(
            "# sha256(\"dev-relay-de-fra-1\")\ncountry = \"DE\"",
            "# sha256(\"dev-relay-de-fra-1\")\ncountry = \"US\"",
            1,
        );
    assert_ne!(edited, original);
    std::fs::write(&moved, edited).unwrap();
    let out = run(&moved);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains(&id), "{text}");
    assert!(
        text.contains("relay de-fra-1 (now US) would be outside 'eu'"),
        "{text}"
    );
    // Without the admin token: refused.
    let denied = std::process::Command::new(env!("CARGO_BIN_EXE_residency-relay"))
        .args([
            "check",
            "--config",
            moved.to_str().unwrap(),
            "--against",
            &router,
            "--token",
            "wrong",
        ])
        .output()
        .unwrap();
    assert_eq!(denied.status.code(), Some(1));
    c.shutdown().await;
}
