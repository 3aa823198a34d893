//! One store test suite, run against both backends: the embedded SQLite
//! store and PostgreSQL on a throwaway server (skipped, with a note, where
//! PostgreSQL is not installed, unless `RR_REQUIRE_POSTGRES` is set as in
//! CI). Also what only SQLite has (a file reopened, old files migrated) and
//! what only PostgreSQL has (what router replicas share).

mod support;

use std::sync::Arc;
use std::time::Duration;

use residency_relay::policy::files::RetentionSection;
use residency_relay::router::retention;
use residency_relay::secret::{RecordsKey, RecordsKeys};
use residency_relay::store::postgres::{Options, Postgres};
use residency_relay::store::{
    AuditEvent, Ban, ConferenceRecord, InviteRecord, InviteRefusal, KeyBinding, LinkUsage,
    ParticipantRecord, PasscodeHash, PurgeCutoffs, Purged, RelayUse, Role, Sqlite, Status, Store,
    Usage,
};
use rusqlite::Connection;
use support::pg::Pg;
use support::proxy::recording_proxy;

fn conference(id: &str) -> ConferenceRecord {
    ConferenceRecord {
        id: id.into(),
        tenant: "acme".into(),
        jurisdiction: "eu".into(),
        passcode: Some(PasscodeHash {
            salt: [1; 16],
            sha256: [2; 32],
        }),
        host_token_sha256: [3; 32],
        locked: false,
        waiting_room: true,
        created: 10,
        ended: None,
        e2ee: false,
    }
}

/// A ban of `participant` and the address hashed to `hash`.
fn ban(conference: &str, participant: &str, hash: [u8; 32], created: u64) -> Ban {
    Ban {
        conference: conference.into(),
        participant_id: participant.into(),
        address_hash: hash,
        invite_sha256: None,
        created,
    }
}

/// Speaker "Bo", joined from the address hashed to `hash`, on no relay yet.
fn participant(conference: &str, id: &str, hash: [u8; 32]) -> ParticipantRecord {
    ParticipantRecord {
        id: id.into(),
        conference: conference.into(),
        display_name: "Bo".into(),
        role: Role::Speaker,
        status: Status::Joined,
        address_hash: hash,
        invite_sha256: None,
        wait_token_sha256: None,
        rejoin_sha256: None,
        relay: None,
        created: 5,
    }
}

#[tokio::test]
async fn records_survive_reopening_the_file() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("nested/router.sqlite");
    let key = {
        let s = Sqlite::open(&path).unwrap();
        s.insert_conference(&conference("eu-a")).await.unwrap();
        s.set_locked("eu-a", true).await.unwrap();
        s.add_ban(&ban("eu-a", "p-1", [9; 32], 11)).await.unwrap();
        s.address_key().await.unwrap()
    };
    let s = Sqlite::open(&path).unwrap();
    let c = s.conference("eu-a").await.unwrap().unwrap();
    assert!(c.locked);
    assert_eq!(c.passcode, conference("eu-a").passcode);
    assert_eq!(s.address_key().await.unwrap(), key);
    assert!(
        s.is_banned("eu-a", Some("p-1"), &[0; 32], None)
            .await
            .unwrap()
    );
    assert!(s.is_banned("eu-a", None, &[9; 32], None).await.unwrap());
    assert!(
        !s.is_banned("eu-a", Some("p-2"), &[0; 32], None)
            .await
            .unwrap()
    );
    assert!(
        !s.is_banned("eu-b", Some("p-1"), &[9; 32], None)
            .await
            .unwrap()
    );
}

/// A schema-5 file (hashes from before records keys) is keyed at its first
/// binding and only then; a file whose key id was deleted by hand (a lost
/// key) binds the new key without keying its hashes a second time.
#[tokio::test]
async fn only_a_store_from_before_records_keys_is_keyed() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("router.sqlite");
    {
        let s = Sqlite::open(&path).unwrap();
        s.add_ban(&ban("eu-a", "p-1", [9; 32], 11)).await.unwrap();
    }
    // As a schema-5 router left it.
    Connection::open(&path)
        .unwrap()
        .execute_batch(
            "DELETE FROM meta WHERE key = 'records_key_pending'; PRAGMA user_version = 5",
        )
        .unwrap();
    let a = RecordsKey::from_bytes([51; 32]);
    let keyed = a.address(&[9; 32]);
    {
        let s = Sqlite::open(&path).unwrap();
        assert_eq!(
            s.bind_records_key(&RecordsKeys::single(a.clone()))
                .await
                .unwrap(),
            KeyBinding::Keyed {
                address_hashes: 1,
                passcode_hashes: 0
            }
        );
        assert!(s.is_banned("eu-a", None, &keyed, None).await.unwrap());
    }
    // The key is lost; the operator deletes its id to start with another.
    Connection::open(&path)
        .unwrap()
        .execute_batch("DELETE FROM meta WHERE key = 'records_key_id'")
        .unwrap();
    let s = Sqlite::open(&path).unwrap();
    let b = RecordsKeys::single(RecordsKey::from_bytes([52; 32]));
    assert_eq!(s.bind_records_key(&b).await.unwrap(), KeyBinding::Adopted);
    assert!(s.is_banned("eu-a", None, &keyed, None).await.unwrap());
    assert_eq!(s.bind_records_key(&b).await.unwrap(), KeyBinding::Same);
}

#[tokio::test]
async fn files_from_before_versioning_are_migrated_and_newer_ones_refused() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("old.sqlite");
    {
        let c = Connection::open(&path).unwrap();
        c.execute_batch(
            "CREATE TABLE conference_relays (conference TEXT NOT NULL, relay TEXT NOT NULL,
             first_seen INTEGER NOT NULL, last_seen INTEGER NOT NULL,
             PRIMARY KEY (conference, relay));
             INSERT INTO conference_relays VALUES ('eu-a', 'de-fra-1', 1, 2);",
        )
        .unwrap();
    }
    let s = Sqlite::open(&path).unwrap();
    let used = s.relays_of("eu-a").await.unwrap();
    assert_eq!((used[0].last_seen, used[0].bytes_in), (2, 0));
    drop(s);
    let newer = dir.path().join("newer.sqlite");
    Connection::open(&newer)
        .unwrap()
        .execute_batch("PRAGMA user_version = 99")
        .unwrap();
    let e = Sqlite::open(&newer).unwrap_err();
    assert!(e.to_string().contains("newer residency-relay"), "{e}");
}

async fn an_invitation_is_used_once_and_not_after_expiry(s: &dyn Store) {
    let invite = InviteRecord {
        token_sha256: [7; 32],
        conference: "eu-a".into(),
        participant_id: "p-x".into(),
        display_name: "Ada".into(),
        role: Role::Host,
        expires: 100,
    };
    s.insert_invite(&invite).await.unwrap();
    s.insert_invite(&InviteRecord {
        token_sha256: [8; 32],
        expires: 50,
        ..invite.clone()
    })
    .await
    .unwrap();
    assert_eq!(
        s.use_invite(&[7; 32], "eu-b", 10).await.unwrap(),
        Err(InviteRefusal::Unknown)
    );
    assert_eq!(
        s.use_invite(&[7; 32], "eu-a", 10).await.unwrap(),
        Ok(invite)
    );
    assert_eq!(
        s.use_invite(&[7; 32], "eu-a", 10).await.unwrap(),
        Err(InviteRefusal::Used)
    );
    assert_eq!(
        s.use_invite(&[8; 32], "eu-a", 50).await.unwrap(),
        Err(InviteRefusal::Expired)
    );
}

async fn waiting_room_and_relays_and_audit(s: &dyn Store) {
    let p = ParticipantRecord {
        status: Status::Waiting,
        wait_token_sha256: Some([2; 32]),
        ..participant("eu-a", "p-1", [1; 32])
    };
    s.upsert_participant(&p).await.unwrap();
    assert_eq!(s.waiting("eu-a").await.unwrap(), vec![p.clone()]);
    s.set_status("eu-a", "p-1", Status::Admitted).await.unwrap();
    assert!(s.waiting("eu-a").await.unwrap().is_empty());
    assert!(
        s.set_status_if("eu-a", "p-1", Status::Admitted, Status::Joined)
            .await
            .unwrap()
    );
    assert!(
        !s.set_status_if("eu-a", "p-1", Status::Admitted, Status::Joined)
            .await
            .unwrap()
    );
    s.set_status("eu-a", "p-1", Status::Admitted).await.unwrap();
    assert_eq!(
        s.participant("eu-a", "p-1").await.unwrap().unwrap().status,
        Status::Admitted
    );
    s.note_relay("eu-a", "de-fra-1", "DE", 5).await.unwrap();
    s.note_relay("eu-a", "de-fra-1", "DE", 9).await.unwrap();
    assert_eq!(
        s.relays_of("eu-a").await.unwrap(),
        vec![RelayUse {
            relay: "de-fra-1".into(),
            first_seen: 5,
            last_seen: 9,
            bytes_in: 0,
            bytes_out: 0,
            peak_participants: 0,
            countries: vec!["DE".into()],
            outside: false,
        }]
    );
    let usage = |conference, participants, bytes_in, bytes_out| Usage {
        conference,
        participants,
        bytes_in,
        bytes_out,
        country: "DE",
        inside: true,
    };
    s.record_usage("de-fra-1", 10, &[usage("eu-a", 3, 100, 200)], &[])
        .await
        .unwrap();
    s.record_usage(
        "de-fra-1",
        11,
        &[usage("eu-a", 1, 50, 300), usage("eu-b", 1, 1, 1)],
        &[LinkUsage {
            conference: "eu-a",
            peer: "ie-dub-1",
            bytes_in: 7,
            bytes_out: 9,
        }],
    )
    .await
    .unwrap();
    let used = &s.relays_of("eu-a").await.unwrap()[0];
    assert_eq!(
        (
            used.last_seen,
            used.bytes_in,
            used.bytes_out,
            used.peak_participants
        ),
        (11, 100, 300, 3)
    );
    // A reload declared the relay American, outside the conference's
    // jurisdiction, while it still carried it: both facts are kept.
    s.record_usage(
        "de-fra-1",
        12,
        &[Usage {
            country: "US",
            inside: false,
            ..usage("eu-a", 1, 100, 300)
        }],
        &[],
    )
    .await
    .unwrap();
    s.record_usage("de-fra-1", 13, &[usage("eu-a", 1, 100, 300)], &[])
        .await
        .unwrap();
    let used = &s.relays_of("eu-a").await.unwrap()[0];
    assert_eq!(used.countries, ["DE", "US"]);
    assert!(used.outside);
    let links = s.links_of("eu-a").await.unwrap();
    assert_eq!(
        (links[0].peer.as_str(), links[0].bytes_out),
        ("ie-dub-1", 9)
    );
    s.audit(&AuditEvent {
        time: 1,
        conference: "eu-a".into(),
        event: "created".into(),
        detail: serde_json::json!({"tenant": "acme"}),
    })
    .await
    .unwrap();
    assert_eq!(
        s.audit_log("eu-a").await.unwrap()[0].detail["tenant"],
        "acme"
    );
    assert_eq!(s.add_report("eu-a", "p-1", "spam", 3).await.unwrap(), 1);
    // A join claims its invitation with its records, once.
    s.insert_invite(&InviteRecord {
        token_sha256: [5; 32],
        conference: "eu-a".into(),
        participant_id: "p-2".into(),
        display_name: "Cy".into(),
        role: Role::Viewer,
        expires: 100,
    })
    .await
    .unwrap();
    let event = AuditEvent {
        time: 2,
        conference: "eu-a".into(),
        event: "join_accepted".into(),
        detail: serde_json::json!({}),
    };
    let joined = ParticipantRecord {
        id: "p-2".into(),
        status: Status::Joined,
        ..p.clone()
    };
    assert!(
        s.record_join(&joined, "de-fra-1", "DE", &event, Some(&[5; 32]))
            .await
            .unwrap()
    );
    assert!(
        !s.record_join(&joined, "de-fra-1", "DE", &event, Some(&[5; 32]))
            .await
            .unwrap()
    );
    assert_eq!(s.audit_log("eu-a").await.unwrap().len(), 2);
    assert_eq!(s.reports(10).await.unwrap()[0].reason, "spam");
}

/// Every case of the suite, each on a fresh store from `make`.
async fn suite<F, Fut>(make: F)
where
    F: Fn() -> Fut,
    Fut: std::future::Future<Output = Arc<dyn Store>>,
{
    an_invitation_is_used_once_and_not_after_expiry(&*make().await).await;
    waiting_room_and_relays_and_audit(&*make().await).await;
    the_address_key_is_made_once_and_kept(&*make().await).await;
    hashes_are_keyed_once_and_only_the_bound_key_is_taken(&*make().await).await;
    records_go_when_their_period_is_over(&*make().await).await;
    a_kicked_participant_stays_kicked(&*make().await).await;
    conditional_updates_hold_under_concurrency(make().await).await;
}

#[tokio::test]
async fn the_suite_on_sqlite() {
    suite(|| async { Arc::new(Sqlite::in_memory().unwrap()) as Arc<dyn Store> }).await;
}

async fn connect(url: String) -> Postgres {
    Postgres::connect(&Options {
        url,
        password: None,
        ca: None,
        pool_size: 8,
    })
    .await
    .unwrap()
}

/// A CA and, signed by it, a server certificate for 127.0.0.1 with its
/// key (PEM).
fn ca_and_server() -> (String, String, String) {
    let mut ca = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
    ca.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    let ca = rcgen::CertifiedIssuer::self_signed(ca, rcgen::KeyPair::generate().unwrap()).unwrap();
    let key = rcgen::KeyPair::generate().unwrap();
    let server = rcgen::CertificateParams::new(vec!["127.0.0.1".to_owned()])
        .unwrap()
        .signed_by(&key, &*ca)
        .unwrap();
    (ca.pem(), server.pem(), key.serialize_pem())
}

async fn connect_with_ca(url: String, ca: &std::path::Path) -> Result<Postgres, String> {
    Postgres::connect(&Options {
        url,
        password: None,
        ca: Some(ca.to_owned()),
        pool_size: 2,
    })
    .await
    .map_err(|e| e.to_string())
}

/// With `store_ca` the store is reached over TLS only: a server whose
/// certificate another CA signed is refused, and so is a server that does
/// not offer TLS (no silent fallback to plain text); with the right CA the
/// connection is encrypted, as the server itself reports.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_store_with_a_ca_is_reached_over_verified_tls_only() {
    let Some(mut pg) = Pg::start() else { return };
    let dir = tempfile::tempdir().unwrap();
    let (ca, cert, key) = ca_and_server();
    let (other_ca, _, _) = ca_and_server();
    let (right, wrong) = (dir.path().join("ca.pem"), dir.path().join("other-ca.pem"));
    std::fs::write(&right, ca).unwrap();
    std::fs::write(&wrong, other_ca).unwrap();
    let e = connect_with_ca(pg.url("rr"), &right).await.unwrap_err();
    assert!(
        e.contains("TLS") || e.contains("SSL") || e.contains("ssl"),
        "{e}"
    );

    pg.serve_tls(&cert, &key);
    let e = connect_with_ca(pg.url("rr"), &wrong).await.unwrap_err();
    assert!(e.to_lowercase().contains("certificate"), "{e}");
    let store = connect_with_ca(pg.url("rr"), &right).await.unwrap();
    store.ping().await.unwrap();
    let (client, connection) = tokio_postgres::connect(&pg.url("rr"), tokio_postgres::NoTls)
        .await
        .unwrap();
    tokio::spawn(connection);
    let encrypted: i64 = client
        .query_one(
            "SELECT count(*) FROM pg_stat_ssl s JOIN pg_stat_activity a USING (pid)
             WHERE s.ssl AND a.application_name = 'residency-relay'",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    let plain: i64 = client
        .query_one(
            "SELECT count(*) FROM pg_stat_ssl s JOIN pg_stat_activity a USING (pid)
             WHERE NOT s.ssl AND a.application_name = 'residency-relay'",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert!(
        encrypted >= 1 && plain == 0,
        "{encrypted} encrypted, {plain} plain"
    );

    // What crosses the wire, recorded by a proxy between the router and the
    // database: nothing of the records in clear over TLS; the same writes
    // without TLS are readable, so the recording would show them.
    let server: std::net::SocketAddr = pg
        .url("rr")
        .trim_start_matches("postgres://rr@")
        .split('/')
        .next()
        .unwrap()
        .parse()
        .unwrap();
    let marker = "eu-cleartextmarkercleartextm";
    let write = |store: Postgres| async move {
        let mut c = conference(marker);
        c.tenant = "tenant-cleartext-marker".into();
        store.insert_conference(&c).await.unwrap();
        assert!(store.conference(marker).await.unwrap().is_some());
        store.end_conference(marker, 5).await.unwrap();
    };
    let (proxy, seen) = recording_proxy(server).await;
    write(
        connect_with_ca(format!("postgres://rr@{proxy}/rr"), &right)
            .await
            .unwrap(),
    )
    .await;
    assert!(seen.len() > 1000, "the proxy saw {} bytes", seen.len());
    for clear in [
        marker.as_bytes(),
        b"tenant-cleartext-marker",
        b"INSERT INTO",
    ] {
        assert!(
            !seen.contains(clear),
            "{} crossed in clear",
            String::from_utf8_lossy(clear)
        );
    }
    pg.create_database("plain");
    let (proxy, seen) = recording_proxy(server).await;
    write(connect(format!("postgres://rr@{proxy}/plain")).await).await;
    assert!(seen.contains(marker.as_bytes()));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_suite_on_postgres() {
    let Some(pg) = Pg::start() else { return };
    let next = std::sync::atomic::AtomicUsize::new(0);
    suite(|| {
        let db = format!(
            "suite{}",
            next.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
        );
        pg.create_database(&db);
        let url = pg.url(&db);
        async move { Arc::new(connect(url).await) as Arc<dyn Store> }
    })
    .await;
}

async fn the_address_key_is_made_once_and_kept(s: &dyn Store) {
    let key = s.address_key().await.unwrap();
    assert_ne!(key, [0; 32]);
    assert_eq!(s.address_key().await.unwrap(), key);
}

/// A store written before records keys holds plain salted hashes: binding
/// it keys every address and passcode hash once; rebinding the same key
/// changes nothing; a previous key listed rotates; any other key is
/// refused, and nothing is changed by the refusal.
async fn hashes_are_keyed_once_and_only_the_bound_key_is_taken(s: &dyn Store) {
    let (old_address, old_passcode) = ([21; 32], [22; 32]);
    let mut c = conference("eu-k");
    c.passcode = Some(PasscodeHash {
        salt: [1; 16],
        sha256: old_passcode,
    });
    s.insert_conference(&c).await.unwrap();
    s.upsert_participant(&participant("eu-k", "p-1", old_address))
        .await
        .unwrap();
    s.add_ban(&ban("eu-k", "p-1", old_address, 6))
        .await
        .unwrap();
    let a = RecordsKey::from_bytes([31; 32]);
    let b = RecordsKey::from_bytes([32; 32]);
    let only_a = RecordsKeys::single(a.clone());
    assert_eq!(
        s.bind_records_key(&only_a).await.unwrap(),
        KeyBinding::Keyed {
            address_hashes: 2,
            passcode_hashes: 1
        }
    );
    let keyed = a.address(&old_address);
    assert_eq!(
        s.participant("eu-k", "p-1")
            .await
            .unwrap()
            .unwrap()
            .address_hash,
        keyed
    );
    assert_eq!(
        s.conference("eu-k")
            .await
            .unwrap()
            .unwrap()
            .passcode
            .unwrap()
            .sha256,
        a.passcode(&old_passcode)
    );
    assert!(s.is_banned("eu-k", None, &keyed, None).await.unwrap());
    assert!(!s.is_banned("eu-k", None, &old_address, None).await.unwrap());
    // Bound: the same key again keys nothing twice.
    assert_eq!(s.bind_records_key(&only_a).await.unwrap(), KeyBinding::Same);
    assert!(s.is_banned("eu-k", None, &keyed, None).await.unwrap());
    // Another key alone is refused, naming both keys.
    let e = s
        .bind_records_key(&RecordsKeys::single(b.clone()))
        .await
        .unwrap_err();
    assert!(e.message.contains(&hex::encode(a.id())), "{e}");
    assert!(e.message.contains(&hex::encode(b.id())), "{e}");
    assert!(e.message.contains("records_key_previous"), "{e}");
    assert!(s.is_banned("eu-k", None, &keyed, None).await.unwrap());
    // Rotation: b current, a previous; afterwards a alone is the foreign one.
    let rotated = RecordsKeys {
        current: b.clone(),
        previous: vec![a.clone()],
    };
    assert_eq!(
        s.bind_records_key(&rotated).await.unwrap(),
        KeyBinding::Rotated { from: a.id() }
    );
    assert!(s.is_banned("eu-k", None, &keyed, None).await.unwrap());
    assert_eq!(
        s.bind_records_key(&rotated).await.unwrap(),
        KeyBinding::Same
    );
    assert!(s.bind_records_key(&only_a).await.is_err());
}

/// The invitation token hash [`a_call`] gives conference `id`.
fn invite_token(id: &str) -> [u8; 32] {
    let mut token = [0u8; 32];
    let n = id.len().min(32);
    token[..n].copy_from_slice(&id.as_bytes()[..n]);
    token
}

/// Everything of one conference, as a call leaves it.
async fn a_call(s: &dyn Store, id: &str, ended: Option<u64>, audit_lines: u64) {
    let mut c = conference(id);
    c.ended = ended;
    s.insert_conference(&c).await.unwrap();
    s.upsert_participant(&ParticipantRecord {
        relay: Some("de-fra-1".into()),
        ..participant(id, "p-1", [1; 32])
    })
    .await
    .unwrap();
    s.add_ban(&ban(id, "p-2", [2; 32], 6)).await.unwrap();
    s.insert_invite(&InviteRecord {
        token_sha256: invite_token(id),
        conference: id.into(),
        participant_id: "p-3".into(),
        display_name: "Cy".into(),
        role: Role::Viewer,
        expires: 100,
    })
    .await
    .unwrap();
    for n in 0..audit_lines {
        s.audit(&AuditEvent {
            time: n,
            conference: id.into(),
            event: "join_accepted".into(),
            detail: serde_json::json!({}),
        })
        .await
        .unwrap();
    }
    s.add_report(id, "p-1", "spam", 7).await.unwrap();
    s.record_usage(
        "de-fra-1",
        8,
        &[Usage {
            conference: id,
            participants: 1,
            bytes_in: 1,
            bytes_out: 1,
            country: "DE",
            inside: true,
        }],
        &[LinkUsage {
            conference: id,
            peer: "ie-dub-1",
            bytes_in: 1,
            bytes_out: 1,
        }],
    )
    .await
    .unwrap();
}

/// What is left of conference `id`: participant, ban, invitation, audit
/// lines, abuse reports, relay use, link use, record.
async fn left(s: &dyn Store, id: &str) -> (bool, bool, bool, usize, usize, usize, usize, bool) {
    (
        s.participant(id, "p-1").await.unwrap().is_some(),
        s.is_banned(id, Some("p-2"), &[0; 32], None).await.unwrap(),
        !matches!(
            s.invite(&invite_token(id), id, 0).await.unwrap(),
            Err(InviteRefusal::Unknown)
        ),
        s.audit_log(id).await.unwrap().len(),
        s.reports(1000)
            .await
            .unwrap()
            .iter()
            .filter(|r| r.conference == id)
            .count(),
        s.relays_of(id).await.unwrap().len(),
        s.links_of(id).await.unwrap().len(),
        s.conference(id).await.unwrap().is_some(),
    )
}

/// The purge on a simulated clock: nothing goes a second before its
/// period is over, each kind goes when its own is, in steps of the batch
/// size, the conference record last; a running conference keeps all.
async fn records_go_when_their_period_is_over(s: &dyn Store) {
    const DAY: u64 = 86_400;
    let ended = 1_000_000;
    a_call(s, "eu-old", Some(ended), 5).await;
    a_call(s, "eu-live", None, 2).await;
    let r = RetentionSection::default();
    let everything = (true, true, true, 5, 1, 1, 1, true);
    let run = |now: u64| {
        let cutoffs = retention::cutoffs(&r, now);
        async move {
            retention::purge(s, &PurgeCutoffs::default(), &cutoffs, 2, |_| {})
                .await
                .unwrap()
        }
    };
    assert_eq!(run(ended + 30 * DAY - 1).await, Purged::default());
    assert_eq!(left(s, "eu-old").await, everything);
    // A step takes at most the batch of each kind.
    let step = s
        .purge_step(
            &PurgeCutoffs::default(),
            &retention::cutoffs(&r, ended + 30 * DAY),
            2,
        )
        .await
        .unwrap();
    assert_eq!((step.audit, step.participants), (2, 1));
    let rest = run(ended + 30 * DAY).await;
    assert_eq!(
        (rest.audit, rest.participants, rest.bans, rest.invites),
        (3, 0, 0, 0)
    );
    assert_eq!(
        left(s, "eu-old").await,
        (false, false, false, 0, 1, 1, 1, true)
    );
    assert_eq!(run(ended + 90 * DAY - 1).await, Purged::default());
    let last = run(ended + 90 * DAY).await;
    assert_eq!(
        (
            last.abuse_reports,
            last.relay_use,
            last.link_use,
            last.conferences
        ),
        (1, 1, 1, 1)
    );
    assert_eq!(
        left(s, "eu-old").await,
        (false, false, false, 0, 0, 0, 0, false)
    );
    // Years later, the running conference still has everything.
    assert_eq!(run(ended + 900 * DAY).await, Purged::default());
    assert_eq!(
        left(s, "eu-live").await,
        (true, true, true, 2, 1, 1, 1, true)
    );
}

async fn a_kicked_participant_stays_kicked(s: &dyn Store) {
    let p = ParticipantRecord {
        rejoin_sha256: Some([4; 32]),
        relay: Some("de-fra-1".into()),
        ..participant("eu-a", "p-1", [1; 32])
    };
    let event = AuditEvent {
        time: 6,
        conference: "eu-a".into(),
        event: "join_accepted".into(),
        detail: serde_json::json!({}),
    };
    assert!(
        s.record_join(&p, "de-fra-1", "DE", &event, None)
            .await
            .unwrap()
    );
    s.set_status("eu-a", "p-1", Status::Kicked).await.unwrap();
    // A rejoin racing the kick writes nothing.
    assert!(
        !s.record_join(&p, "de-fra-1", "DE", &event, None)
            .await
            .unwrap()
    );
    let stored = s.participant("eu-a", "p-1").await.unwrap().unwrap();
    assert_eq!(stored.status, Status::Kicked);
    assert_eq!(stored.rejoin_sha256, Some([4; 32]));
    assert_eq!(s.audit_log("eu-a").await.unwrap().len(), 1);
    assert!(s.participant("eu-a", "p-2").await.unwrap().is_none());
    assert!(s.conference("eu-zz").await.unwrap().is_none());
}

/// Sixteen concurrent uses of one invitation: exactly one wins; sixteen
/// concurrent admits of one waiting participant: exactly one moves it.
async fn conditional_updates_hold_under_concurrency(s: Arc<dyn Store>) {
    s.insert_conference(&conference("eu-a")).await.unwrap();
    s.insert_invite(&InviteRecord {
        token_sha256: [7; 32],
        conference: "eu-a".into(),
        participant_id: "p-9".into(),
        display_name: "Al".into(),
        role: Role::Host,
        expires: 100,
    })
    .await
    .unwrap();
    let uses = (0..16).map(|_| {
        let s = s.clone();
        tokio::spawn(async move { s.use_invite(&[7; 32], "eu-a", 10).await.unwrap().is_ok() })
    });
    let mut won = 0;
    for u in uses {
        won += usize::from(u.await.unwrap());
    }
    assert_eq!(won, 1);
    s.upsert_participant(&ParticipantRecord {
        id: "p-3".into(),
        conference: "eu-a".into(),
        display_name: "Di".into(),
        role: Role::Speaker,
        status: Status::Waiting,
        address_hash: [3; 32],
        invite_sha256: None,
        wait_token_sha256: Some([8; 32]),
        rejoin_sha256: None,
        relay: None,
        created: 7,
    })
    .await
    .unwrap();
    let admits = (0..16).map(|_| {
        let s = s.clone();
        tokio::spawn(async move {
            s.set_status_if("eu-a", "p-3", Status::Waiting, Status::Admitted)
                .await
                .unwrap()
        })
    });
    let mut moved = 0;
    for a in admits {
        moved += usize::from(a.await.unwrap());
    }
    assert_eq!(moved, 1);
}

// ------------------------------------------------ what replicas share (PostgreSQL)

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn commands_are_numbered_per_relay_in_commit_order_and_dropped_when_acknowledged() {
    let Some(pg) = Pg::start() else { return };
    let (a, b) = (
        Arc::new(connect(pg.url("rr")).await),
        Arc::new(connect(pg.url("rr")).await),
    );
    // Two replicas share one numbering epoch.
    assert_eq!(a.command_epoch(), b.command_epoch());
    let pushes = (0..40).map(|i| {
        let s = if i % 2 == 0 { a.clone() } else { b.clone() };
        tokio::spawn(async move {
            assert!(
                s.push_commands(&["r1", "r2"], &format!("\"c{i}\""), None)
                    .await
                    .unwrap()
            )
        })
    });
    for p in pushes {
        p.await.unwrap();
    }
    let listed = a.commands("r1", None).await.unwrap();
    let seqs: Vec<u64> = listed.iter().map(|(s, _)| *s).collect();
    assert_eq!(seqs, (1..=40).collect::<Vec<u64>>());
    assert_eq!(b.commands("r2", None).await.unwrap().len(), 40);
    // An acknowledgement received by either replica drops them for both.
    assert_eq!(b.commands("r1", Some(25)).await.unwrap().len(), 15);
    assert_eq!(a.commands("r1", None).await.unwrap()[0].0, 26);
    // Numbering goes on after the acknowledged ones are gone.
    b.commands("r1", Some(40)).await.unwrap();
    a.push_commands(&["r1"], "\"next\"", None).await.unwrap();
    assert_eq!(
        a.commands("r1", None).await.unwrap(),
        vec![(41, "\"next\"".into())]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_first_placement_wins_and_a_stale_one_is_replaced() {
    let Some(pg) = Pg::start() else { return };
    let (a, b) = (
        Arc::new(connect(pg.url("rr")).await),
        Arc::new(connect(pg.url("rr")).await),
    );
    for round in 0..100 {
        let conference = format!("eu-race-{round}");
        let (x, y) = (a.clone(), b.clone());
        let (c1, c2) = (conference.clone(), conference.clone());
        let one = tokio::spawn(async move {
            x.claim_placement(&c1, "relay-a", Duration::from_secs(20))
                .await
                .unwrap()
        });
        let two = tokio::spawn(async move {
            y.claim_placement(&c2, "relay-b", Duration::from_secs(20))
                .await
                .unwrap()
        });
        let (one, two) = (one.await.unwrap(), two.await.unwrap());
        assert_eq!(one, two, "round {round}: both replicas agree");
        assert_eq!(
            a.placement(&conference, Duration::from_secs(20))
                .await
                .unwrap(),
            Some(one)
        );
    }
    // A placement older than the freshness window gives way.
    a.claim_placement("eu-old", "relay-a", Duration::from_secs(20))
        .await
        .unwrap();
    // Its age is the condition: past the 100 ms window B's claim gives.
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(
        b.claim_placement("eu-old", "relay-b", Duration::from_millis(100))
            .await
            .unwrap(),
        "relay-b"
    );
    b.forget_placement("eu-old").await.unwrap();
    assert_eq!(
        a.placement("eu-old", Duration::from_secs(20))
            .await
            .unwrap(),
        None
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_planner_lease_fences_a_holder_that_lost_it() {
    let Some(pg) = Pg::start() else { return };
    let (a, b) = (connect(pg.url("rr")).await, connect(pg.url("rr")).await);
    let ttl = Duration::from_millis(400);
    let term_a = a.lease("planner", "router-a", ttl).await.unwrap().unwrap();
    // Held: B cannot take it, A renews it with the same term.
    assert_eq!(b.lease("planner", "router-b", ttl).await.unwrap(), None);
    assert_eq!(
        a.lease("planner", "router-a", ttl).await.unwrap(),
        Some(term_a)
    );
    assert!(
        a.push_commands(&["r1"], "\"link\"", Some(("router-a", term_a)))
            .await
            .unwrap()
    );
    // A pauses past its lease; B takes it over with a higher term.
    tokio::time::sleep(ttl + Duration::from_millis(200)).await;
    let term_b = b.lease("planner", "router-b", ttl).await.unwrap().unwrap();
    assert!(term_b > term_a);
    // A's late command is refused by the database, B's goes through.
    assert!(
        !a.push_commands(&["r1"], "\"stale\"", Some(("router-a", term_a)))
            .await
            .unwrap()
    );
    assert!(
        b.push_commands(&["r1"], "\"fresh\"", Some(("router-b", term_b)))
            .await
            .unwrap()
    );
    let actions: Vec<String> = a
        .commands("r1", None)
        .await
        .unwrap()
        .into_iter()
        .map(|(_, a)| a)
        .collect();
    assert_eq!(actions, ["\"link\"", "\"fresh\""]);
    // A clean shutdown hands it on at once.
    b.release("planner", "router-b").await.unwrap();
    assert!(a.lease("planner", "router-a", ttl).await.unwrap().unwrap() > term_b);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn relay_reports_reach_other_replicas_with_their_age() {
    let Some(pg) = Pg::start() else { return };
    let (a, b) = (connect(pg.url("rr")).await, connect(pg.url("rr")).await);
    a.publish_report("r1", "router-a", "{\"n\":1}")
        .await
        .unwrap();
    a.publish_report("r2", "router-a", "{\"n\":2}")
        .await
        .unwrap();
    // Not to the replica that stored them.
    assert!(a.reports_since(0, "router-a").await.unwrap().is_empty());
    let seen = b.reports_since(0, "router-b").await.unwrap();
    assert_eq!(seen.len(), 2);
    assert!(seen.iter().all(|r| r.age < Duration::from_secs(2)));
    let cursor = seen.iter().map(|r| r.version).max().unwrap();
    assert!(
        b.reports_since(cursor, "router-b")
            .await
            .unwrap()
            .is_empty()
    );
    tokio::time::sleep(Duration::from_millis(300)).await;
    a.publish_report("r1", "router-a", "{\"n\":3}")
        .await
        .unwrap();
    let next = b.reports_since(cursor, "router-b").await.unwrap();
    assert_eq!((next.len(), next[0].report.as_str()), (1, "{\"n\":3}"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unreachable_database_is_reported_as_unavailable_quickly() {
    let Some(mut pg) = Pg::start() else { return };
    let s = connect(pg.url("rr")).await;
    s.insert_conference(&conference("eu-a")).await.unwrap();
    pg.stop();
    let started = std::time::Instant::now();
    let e = s.conference("eu-a").await.unwrap_err();
    assert!(e.unavailable, "{e}");
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "{:?}",
        started.elapsed()
    );
    pg.restart();
    // The pool reconnects; nothing written before was lost.
    let mut back = None;
    for _ in 0..20 {
        if let Ok(c) = s.conference("eu-a").await {
            back = c;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(back, Some(conference("eu-a")));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_store_of_a_newer_schema_is_refused() {
    let Some(pg) = Pg::start() else { return };
    drop(connect(pg.url("rr")).await);
    pg.psql(
        "rr",
        "UPDATE meta SET value = int8send(99) WHERE key = 'schema_version'",
    );
    let e = Postgres::connect(&Options {
        url: pg.url("rr"),
        password: None,
        ca: None,
        pool_size: 2,
    })
    .await
    .unwrap_err();
    assert!(e.to_string().contains("newer residency-relay"), "{e}");
}
