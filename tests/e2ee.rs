//! End-to-end encrypted conferences through a real router and relay:
//! what the servers see is ciphertext only, undeclared tracks are refused,
//! and a removed participant cannot decrypt what follows.

mod support;

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use residency_relay::client::Client;
use residency_relay::client::e2ee::{self, Event, Group, Secret};
use residency_relay::client::join::{self, Credential, Joined};
use residency_relay::relay::{Tap, Tapped};
use residency_relay::wire::control::{ClientMessage, ServerMessage, TrackKind};
use residency_relay::wire::datagram::{self, Flags, MediaHeader, TrackId};
use serde_json::json;
use support::cluster::{self, ACME, Cluster, connect, create, request};
use support::proxy::recording_proxy;

/// A plaintext no server may ever see.
const PATTERN: &[u8] = b"RESIDENCY-RELAY-PLAINTEXT-PATTERN-0123456789";

/// Log lines of this test binary, kept to be searched.
#[derive(Clone, Default)]
struct Logs(Arc<Mutex<Vec<u8>>>);

impl std::io::Write for Logs {
    fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(b);
        Ok(b.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

fn logs() -> Logs {
    static LOGS: std::sync::OnceLock<Logs> = std::sync::OnceLock::new();
    LOGS.get_or_init(|| {
        let logs = Logs::default();
        let writer = logs.clone();
        tracing_subscriber::fmt()
            .with_env_filter(tracing_subscriber::EnvFilter::new("debug"))
            .with_writer(move || writer.clone())
            .with_ansi(false)
            .init();
        logs
    })
    .clone()
}

/// Everything the relay handled, as bytes: datagrams in and out, and its
/// participants' and links' control messages as JSON.
#[derive(Clone, Default)]
struct Seen {
    datagrams_in: Arc<Mutex<Vec<Vec<u8>>>>,
    datagrams_out: Arc<Mutex<Vec<Vec<u8>>>>,
    control: Arc<Mutex<Vec<String>>>,
}

impl Seen {
    fn tap(&self) -> Tap {
        let seen = self.clone();
        Tap(Arc::new(move |t: Tapped<'_>| match t {
            Tapped::DatagramIn(d) => seen.datagrams_in.lock().unwrap().push(d.to_vec()),
            Tapped::DatagramOut(d) => seen.datagrams_out.lock().unwrap().push(d.to_vec()),
            Tapped::Control(m) => seen
                .control
                .lock()
                .unwrap()
                .push(serde_json::to_string(m).unwrap()),
            Tapped::Link(m) => seen
                .control
                .lock()
                .unwrap()
                .push(serde_json::to_string(m).unwrap()),
        }))
    }
}

/// The forms a secret could leak in: raw, hex, base64 (both alphabets).
fn forms(secret: &[u8]) -> Vec<Vec<u8>> {
    use base64::Engine as _;
    vec![
        secret.to_vec(),
        hex::encode(secret).into_bytes(),
        base64::engine::general_purpose::URL_SAFE_NO_PAD
            .encode(secret)
            .into_bytes(),
        base64::engine::general_purpose::STANDARD
            .encode(secret)
            .into_bytes(),
    ]
}

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    haystack.windows(needle.len()).any(|w| w == needle)
}

/// The SFrame key and salt of `kid` under `base_key` (RFC 9605 §4.4.2,
/// AES_128_GCM_SHA256_128), computed here to look for them.
fn sframe_key_and_salt(base_key: &[u8; 16], kid: u64) -> ([u8; 16], [u8; 12]) {
    let (_, hk) = hkdf::Hkdf::<sha2::Sha256>::extract(Some(&[]), base_key);
    let label = |what: &str| {
        [
            format!("SFrame 1.0 Secret {what} ").as_bytes(),
            &kid.to_be_bytes(),
            &4u16.to_be_bytes(),
        ]
        .concat()
    };
    let mut key = [0u8; 16];
    let mut salt = [0u8; 12];
    hk.expand(&label("key"), &mut key).unwrap();
    hk.expand(&label("salt"), &mut salt).unwrap();
    (key, salt)
}

/// Every byte of every row of every table of a SQLite store.
fn store_bytes(path: &std::path::Path) -> Vec<u8> {
    let db = rusqlite::Connection::open(path).unwrap();
    let tables: Vec<String> = db
        .prepare("SELECT name FROM sqlite_master WHERE type = 'table'")
        .unwrap()
        .query_map([], |r| r.get(0))
        .unwrap()
        .collect::<Result<_, _>>()
        .unwrap();
    assert!(tables.iter().any(|t| t == "conferences"));
    let mut out = Vec::new();
    for t in tables {
        let mut stmt = db.prepare(&format!("SELECT * FROM \"{t}\"")).unwrap();
        let n = stmt.column_count();
        let mut rows = stmt.query([]).unwrap();
        while let Some(row) = rows.next().unwrap() {
            for i in 0..n {
                match row.get_ref(i).unwrap() {
                    rusqlite::types::ValueRef::Text(b) | rusqlite::types::ValueRef::Blob(b) => {
                        out.extend_from_slice(b)
                    }
                    other => out.extend_from_slice(format!("{other:?}").as_bytes()),
                }
                out.push(b'|');
            }
        }
    }
    out
}

/// An end-to-end encrypted EU conference of tenant acme, without a
/// waiting room; the answer.
async fn e2ee_conference(router: &str) -> serde_json::Value {
    let conf = create(
        router,
        ACME,
        json!({ "residency": "eu", "waiting_room": false, "e2ee": true }),
    )
    .await;
    assert_eq!(conf["e2ee"], true);
    conf
}

/// Joins with the conference's passcode, as `name` from `ip`.
async fn join_guest(router: &str, conf: &serde_json::Value, name: &str, ip: &str) -> Joined {
    let passcode = conf["passcode"].as_str().unwrap();
    join_with(
        router,
        conf["id"].as_str().unwrap(),
        Credential::Passcode(passcode.into()),
        name,
        ip,
    )
    .await
}

async fn join_with(
    router: &str,
    conference: &str,
    credential: Credential,
    name: &str,
    ip: &str,
) -> Joined {
    join::join(
        router,
        conference,
        &credential,
        name,
        Some(ip.parse().unwrap()),
        Duration::from_secs(20),
    )
    .await
    .unwrap()
}

/// A participant of an end-to-end encrypted call.
struct Peer {
    client: Client,
    group: Group,
}

impl Peer {
    async fn new(joined: &Joined, ip: &str, secret: &Secret) -> Peer {
        assert!(joined.e2ee, "the join answer says end-to-end encrypted");
        let mut client = connect(joined, ip).await;
        let group = Group::new(secret, client.participant.clone(), joined.role == "host");
        let hello = group.announce();
        client.send_e2ee(hello).await.unwrap();
        Peer { client, group }
    }

    /// Handles control events until none came for `quiet`.
    async fn settle(&mut self, quiet: Duration) -> Vec<ServerMessage> {
        let mut seen = Vec::new();
        while let Ok(Ok(event)) = tokio::time::timeout(quiet, self.client.next_event()).await {
            self.client
                .drive_e2ee(&mut self.group, &event)
                .await
                .unwrap();
            seen.push(event);
        }
        seen
    }

    /// Sends `n` encrypted datagrams of track `track` carrying PATTERN.
    fn send(&mut self, track: TrackId, from: u32, n: u32) {
        for sequence in from..from + n {
            let mut plain = Vec::new();
            datagram::encode(
                &MediaHeader {
                    track,
                    sequence,
                    flags: Flags::default(),
                    info: residency_relay::wire::datagram::Info::NONE,
                },
                &[PATTERN, PATTERN, &sequence.to_be_bytes()].concat(),
                &mut plain,
            );
            let sealed = self.group.encrypt(0, &plain).unwrap();
            self.client.send_raw(sealed.into()).unwrap();
        }
    }

    /// Datagrams received within `wait`, as they came.
    async fn received(&self, wait: Duration) -> Vec<Vec<u8>> {
        let mut out = Vec::new();
        while let Ok(Ok(d)) = tokio::time::timeout(wait, self.client.recv_media()).await {
            out.push(d.to_vec());
        }
        out
    }
}

async fn settle_all(peers: &mut [&mut Peer]) {
    for _ in 0..3 {
        for p in peers.iter_mut() {
            p.settle(Duration::from_millis(150)).await;
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn servers_see_only_ciphertext() {
    let logs = logs();
    let seen = Seen::default();
    // Plain HTTP to the router, so the proxy reads what the client sends
    // and gets: the application's messages, not TLS records.
    let mut c = Cluster::new(cluster::plain_http);
    c.tap = Some(seen.tap());
    c.start("de-fra-router", &["de-fra-1"]).await;
    let direct = c.url("de-fra-router");
    let listen = c.policy.router("de-fra-router").unwrap().listen;
    let (proxy, recorded) = recording_proxy(listen).await;
    let router = format!("http://{proxy}");

    let conf = e2ee_conference(&router).await;
    let id = conf["id"].as_str().unwrap();
    let passcode = conf["passcode"].as_str().unwrap();
    let secret = Secret::random().unwrap();

    let a = join_guest(&router, &conf, "Ada", "127.0.0.2").await;
    let b = join_guest(&router, &conf, "Bo", "127.0.0.3").await;
    let mut ada = Peer::new(&a, "127.0.0.2", &secret).await;
    let mut bo = Peer::new(&b, "127.0.0.3", &secret).await;
    settle_all(&mut [&mut ada, &mut bo]).await;
    assert_eq!(ada.group.members().count(), 1, "ada knows bo's key");
    assert_eq!(bo.group.safety_code(), ada.group.safety_code());

    // A track not declared encrypted is refused on this conference.
    let refused = ada.client.publish(TrackKind::Video, "vp8", None).await;
    match refused {
        Err(residency_relay::client::ClientError::Refused { code, .. }) => assert_eq!(code, 8),
        other => panic!("an undeclared track was not refused: {other:?}"),
    }
    let track = ada
        .client
        .publish_declared(TrackKind::Video, "vp8", None, true)
        .await
        .unwrap();
    bo.client
        .subscribe_announced(track, Duration::from_secs(5))
        .await
        .unwrap();
    ada.send(track, 0, 50);
    let got = bo.received(Duration::from_millis(500)).await;
    assert!(got.len() >= 45, "bo received {} of 50", got.len());
    let mut plain = 0;
    for d in &got {
        let p = bo
            .group
            .decrypt(d, Instant::now())
            .expect("bo decrypts ada's media");
        assert!(contains(&p, PATTERN));
        plain += 1;
    }
    assert_eq!(plain, got.len());
    let kid = ada.group.sender_key_id(0);
    let report = request(
        "GET",
        &format!("{direct}/v1/conferences/{id}/residency"),
        None,
        Some(&format!("Bearer {}", conf["host_token"].as_str().unwrap())),
        None,
    )
    .await;
    assert_eq!(report.status, 200);
    let report = report.json();
    assert_eq!(report["report"]["e2ee"]["declared"], true, "{report}");
    ada.client.leave().await;
    bo.client.leave().await;
    // Read the store before the cluster (and its directory) goes, after
    // any write the leaves cause: what is checked is that none holds a
    // secret, and no event marks the last write, so a short fixed wait.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let store = store_bytes(
        c.policy
            .router("de-fra-router")
            .unwrap()
            .store
            .sqlite()
            .unwrap(),
    );
    c.shutdown().await;

    // What the relay received and sent: ciphertext only.
    let ins = seen.datagrams_in.lock().unwrap().clone();
    let outs = seen.datagrams_out.lock().unwrap().clone();
    assert!(
        ins.len() >= 50 && outs.len() >= 45,
        "{} in, {} out",
        ins.len(),
        outs.len()
    );
    for d in ins.iter().chain(&outs) {
        assert!(
            !contains(d, &PATTERN[..16]),
            "a datagram carried the plaintext"
        );
    }
    let control = seen.control.lock().unwrap().join("\n");
    assert!(
        control.contains("\"e2ee\""),
        "key messages crossed the relay"
    );

    // Nothing anywhere holds the secret or a key derived from it.
    let base = e2ee::base_key(&secret);
    let (key, salt) = sframe_key_and_salt(&base, kid);
    let auth = e2ee::auth_key(&secret);
    let mut secrets: Vec<Vec<u8>> = Vec::new();
    for s in [&secret.as_bytes()[..], &base, &key, &salt, &auth] {
        secrets.extend(forms(s));
    }
    let places: Vec<(&str, Vec<u8>)> = vec![
        ("router requests and answers", recorded.bytes()),
        ("relay control messages", control.into_bytes()),
        ("relay datagrams", ins.concat()),
        ("store", store),
        ("logs", logs.0.lock().unwrap().clone()),
    ];
    for (place, bytes) in &places {
        assert!(!bytes.is_empty(), "{place} was captured");
        for s in &secrets {
            assert!(!contains(bytes, s), "{place} holds a secret");
        }
    }
    // The capture works: the passcode did cross to the router.
    assert!(contains(&places[0].1, passcode.as_bytes()));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_removed_participant_cannot_decrypt_the_next_epoch() {
    let seen = Seen::default();
    let mut c = Cluster::new(|t| t);
    c.tap = Some(seen.tap());
    c.start("de-fra-router", &["de-fra-1"]).await;
    let router = c.url("de-fra-router");
    let conf = e2ee_conference(&router).await;
    let id = conf["id"].as_str().unwrap();
    let host_auth = format!("Bearer {}", conf["host_token"].as_str().unwrap());
    let invite = request(
        "POST",
        &format!("{router}/v1/conferences/{id}/invites"),
        None,
        Some(&host_auth),
        Some(json!({ "display_name": "Hana", "role": "host" })),
    )
    .await
    .json()["invite"]
        .as_str()
        .unwrap()
        .to_owned();
    let secret = Secret::random().unwrap();
    let h = join_with(&router, id, Credential::Invite(invite), "Hana", "127.0.0.2").await;
    assert_eq!(h.role, "host");
    let b = join_guest(&router, &conf, "Bo", "127.0.0.3").await;
    let k = join_guest(&router, &conf, "Kit", "127.0.0.4").await;
    let mut hana = Peer::new(&h, "127.0.0.2", &secret).await;
    let mut bo = Peer::new(&b, "127.0.0.3", &secret).await;
    let mut kit = Peer::new(&k, "127.0.0.4", &secret).await;
    settle_all(&mut [&mut hana, &mut bo, &mut kit]).await;
    assert_eq!(hana.group.members().count(), 2);

    let track = bo
        .client
        .publish_declared(TrackKind::Audio, "opus", None, true)
        .await
        .unwrap();
    hana.client
        .subscribe_announced(track, Duration::from_secs(5))
        .await
        .unwrap();
    kit.client
        .subscribe_announced(track, Duration::from_secs(5))
        .await
        .unwrap();
    bo.send(track, 0, 20);
    // Before the removal kit decrypts: the test below is not vacuous.
    let before = kit.received(Duration::from_millis(400)).await;
    assert!(
        before
            .iter()
            .filter(|d| kit.group.decrypt(d, Instant::now()).is_some())
            .count()
            >= 18
    );
    let _ = hana.received(Duration::from_millis(100)).await;
    let old_code = hana.group.safety_code();

    // The host removes kit; from here on, everything the relay handles is
    // what kit could have kept had it stayed connected.
    seen.datagrams_out.lock().unwrap().clear();
    seen.control.lock().unwrap().clear();
    let r = request(
        "POST",
        &format!(
            "{router}/v1/conferences/{id}/participants/{}/kick",
            k.participant_id
        ),
        None,
        Some(&host_auth),
        Some(json!({ "ban": true })),
    )
    .await;
    assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
    assert!(kit.client.closed().await.is_some());
    let events = hana.settle(Duration::from_millis(300)).await;
    assert!(
        events
            .iter()
            .any(|e| matches!(e, ServerMessage::ParticipantLeft { .. }))
    );
    assert_eq!(hana.group.epoch(), 1, "the host made the next epoch");
    let changed = bo.settle(Duration::from_millis(300)).await;
    assert!(
        changed
            .iter()
            .any(|e| matches!(e, ServerMessage::E2ee { .. }))
    );
    assert_eq!(bo.group.epoch(), 1);
    assert_eq!(bo.group.safety_code(), hana.group.safety_code());
    assert_ne!(hana.group.safety_code(), old_code);

    bo.send(track, 100, 30);
    let after = hana.received(Duration::from_millis(400)).await;
    assert!(after.len() >= 27, "hana got {}", after.len());
    for d in &after {
        assert!(
            hana.group.decrypt(d, Instant::now()).is_some(),
            "hana decrypts epoch 1"
        );
    }
    // Everything the relay sent anyone since: kit's keys open none of it,
    // not even tried under each datagram's own key id with every secret kit
    // holds (the link's), whatever the epoch bits say; the same attempt
    // with the new epoch's secret opens them, so the attempt is real.
    let outs = seen.datagrams_out.lock().unwrap().clone();
    assert!(outs.len() >= after.len());
    let open_with = |secret: &Secret, d: &[u8]| -> bool {
        let (header, rest) = d.split_at(datagram::HEADER_LEN);
        let Ok(frame) = sframe::frame::EncryptedFrameView::try_with_meta_data(rest, header) else {
            return false;
        };
        let kid = frame.header().key_id();
        let key = sframe::key::DecryptionKey::derive_from(e2ee::SUITE, kid, e2ee::base_key(secret))
            .unwrap();
        frame.decrypt_into(&key, &mut Vec::new()).is_ok()
    };
    let epoch1 = hana.group.epoch_secret().clone();
    let media: Vec<&Vec<u8>> = outs
        .iter()
        .filter(|d| datagram::parse(d).map(|h| h.track) == Ok(track))
        .collect();
    assert!(media.len() >= after.len());
    for d in &media {
        assert_eq!(kit.group.decrypt(d, Instant::now()), None);
        assert!(
            !open_with(&secret, d),
            "the link's secret opened epoch 1 media"
        );
        assert!(open_with(&epoch1, d), "epoch 1's secret opens it");
    }
    // And the new epoch's secret crossed the relay nowhere in any form.
    let control = seen.control.lock().unwrap().join("\n").into_bytes();
    for form in forms(epoch1.as_bytes()) {
        assert!(!contains(&control, &form));
        assert!(!outs.iter().any(|d| contains(d, &form)));
    }
    // Nor do the key messages: each new epoch is sealed to someone else.
    let messages: Vec<ClientMessage> = seen
        .control
        .lock()
        .unwrap()
        .iter()
        .filter_map(|m| serde_json::from_str(m).ok())
        .collect();
    let mut sealed = 0;
    for m in &messages {
        if let ClientMessage::E2ee { data, .. } = m {
            sealed += 1;
            let (what, _) = kit
                .group
                .receive(&hana.client.participant, true, data, Instant::now());
            assert!(matches!(what, Event::Refused | Event::Nothing), "{what:?}");
        }
    }
    assert!(sealed >= 1, "the new epoch's key crossed the relay");
    assert_eq!(kit.group.epoch(), 0);
    hana.client.leave().await;
    bo.client.leave().await;
    c.shutdown().await;
}
