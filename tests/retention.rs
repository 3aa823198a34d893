//! Retention in a running router: a million audit lines of a conference
//! that ended 40 days ago are deleted in the background while joins of
//! another conference go on and all succeed; the record of the ended
//! conference, and its residency report, stay (kept 90 days), and the
//! report says when each part goes. When each kind goes, on a simulated
//! clock, is `records_go_when_their_period_is_over` in `tests/store.rs`.

mod support;

use std::time::Duration;

use residency_relay::store::{ConferenceRecord, Sqlite, Store};
use rusqlite::params;
use support::cluster::{ACME, Cluster, join_from, open_conference, request};

const LINES: u64 = 1_000_000;
const DAY: u64 = 86_400;

use residency_relay::clock::unix_now as now_unix;

async fn purged_audit_lines(router: &str) -> u64 {
    let r = request("GET", &format!("{router}/metrics"), None, None, None).await;
    let text = String::from_utf8_lossy(&r.body);
    text.lines()
        .find(|l| l.starts_with("rr_router_records_purged_total{kind=\"audit\""))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("no audit purge counter in\n{text}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_million_rows_are_purged_while_joins_go_on() {
    let mut c = Cluster::new(|t| {
        format!(
            "{t}\n[limits]\njoins_per_address_per_minute = 100000\nconference_max_participants = 100000\n\n[retention]\npurge_interval_secs = 1\npurge_batch = 500\n"
        )
    });
    // The store as a router would have left it: a conference that ended 40
    // days ago with a million audit lines.
    let ended = now_unix() - 40 * DAY;
    let old = "eu-aaaaaaaaaaaaaaaaaaaaaaaaaa";
    let path = c
        .policy
        .router("de-fra-router")
        .unwrap()
        .store
        .sqlite()
        .unwrap()
        .to_owned();
    {
        let store = Sqlite::open(&path).unwrap();
        store
            .insert_conference(&ConferenceRecord {
                id: old.into(),
                tenant: "acme".into(),
                jurisdiction: "eu".into(),
                passcode: None,
                host_token_sha256: [3; 32],
                locked: false,
                waiting_room: false,
                created: ended - 3600,
                ended: Some(ended),
                e2ee: false,
            })
            .await
            .unwrap();
    }
    {
        let mut db = rusqlite::Connection::open(&path).unwrap();
        let tx = db.transaction().unwrap();
        {
            let mut insert = tx
                .prepare(
                    "INSERT INTO audit (time, conference, event, detail) VALUES (?1, ?2, 'join_accepted', '{}')",
                )
                .unwrap();
            for n in 0..LINES {
                insert
                    .execute(params![(ended - 3600 + n % 3600) as i64, old])
                    .unwrap();
            }
        }
        tx.commit().unwrap();
    }

    c.start("de-fra-router", &["de-fra-1"]).await;
    let router = c.url("de-fra-router");
    let conf = open_conference(&router, "eu").await;
    let id = conf["id"].as_str().unwrap().to_owned();
    let passcode = conf["passcode"].as_str().unwrap().to_owned();

    // Join until the purge is over; count the joins answered while it ran
    // (some lines deleted, not all).
    let mut during = 0;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(300);
    loop {
        let before = purged_audit_lines(&router).await;
        if before == LINES {
            break;
        }
        join_from(&router, &id, &passcode, "127.0.0.2")
            .await
            .expect("a join while the purge runs");
        let after = purged_audit_lines(&router).await;
        if before > 0 && after < LINES {
            during += 1;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the purge did not finish in 5 minutes ({after} lines deleted)"
        );
    }
    assert!(
        during >= 10,
        "only {during} joins were answered while the purge ran"
    );

    // The audit lines are gone; the record and its report stay, saying when
    // they go.
    let db = rusqlite::Connection::open(&path).unwrap();
    let lines: i64 = db
        .query_row(
            "SELECT count(*) FROM audit WHERE conference = ?1",
            [old],
            |r| r.get(0),
        )
        .unwrap();
    assert_eq!(lines, 0);
    let r = request(
        "GET",
        &format!("{router}/v1/conferences/{old}/residency"),
        None,
        Some(ACME),
        None,
    )
    .await;
    assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
    let report = &r.json()["report"];
    assert_eq!(report["retention"]["audit_purged_at"], ended + 30 * DAY);
    assert_eq!(report["retention"]["report_purged_at"], ended + 90 * DAY);
    // The running conference keeps its participants.
    let live: i64 = db
        .query_row(
            "SELECT count(*) FROM participants WHERE conference = ?1",
            [&id],
            |r| r.get(0),
        )
        .unwrap();
    assert!(live >= during as i64);
    c.shutdown().await;
}
