//! Two router replicas serving `eu` on one PostgreSQL store (a throwaway
//! server per test, see `support::pg`): any replica answers any request,
//! either takes over when the other dies, and calls outlive the database
//! going away. Skipped with a note where PostgreSQL is not installed,
//! unless `RR_REQUIRE_POSTGRES` is set (as in CI).

mod support;

use std::time::{Duration, Instant};

use residency_relay::client::join::Credential;
use residency_relay::wire::close_code;
use residency_relay::wire::control::TrackKind;
use serde_json::{Value, json};
use support::cluster::{
    ACME, ADMIN, Cluster, connect, create, first_waiting, hear_from, join_from, kick,
    open_conference, refused_code, request, sample,
};
use support::pg::Pg;
use support::wait::until;

const A: &str = "de-fra-router";
const B: &str = "de-fra-router-b";
const RELAYS: [&str; 2] = ["de-fra-1", "ie-dub-1"];

/// Joins per address are not what these tests are about.
const LIMITS: &str = "\n[limits]\njoins_per_address_per_minute = 100000\n";

fn replicas(pg: &Pg) -> Cluster {
    Cluster::replicated(&pg.url("rr"), |t| t + LIMITS)
}

/// Both replicas and both relays, every relay healthy at both.
async fn running(pg: &Pg) -> Cluster {
    let mut c = replicas(pg);
    c.start_router(A).await;
    c.start_router(B).await;
    for r in RELAYS {
        c.start_relay(r).await;
    }
    c.wait_health(A, &RELAYS, "healthy").await;
    c.wait_health(B, &RELAYS, "healthy").await;
    c
}

async fn audit(router: &str, conf: &Value) -> Vec<Value> {
    let id = conf["id"].as_str().unwrap();
    let r = request(
        "GET",
        &format!("{router}/v1/conferences/{id}/audit"),
        None,
        Some(ACME),
        None,
    )
    .await;
    assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
    r.json()["events"].as_array().cloned().unwrap_or_default()
}

/// Which replica relay `relay` last reported to, as the store has it.
fn reports_to(pg: &Pg, relay: &str) -> String {
    pg.psql(
        "rr",
        &format!("SELECT router FROM relay_reports WHERE relay = '{relay}'"),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn any_replica_answers_for_a_conference_another_created() {
    let Some(pg) = Pg::start() else { return };
    let mut c = replicas(&pg);
    // B first: the relays, finding A down, report to B and stay with it.
    c.start_router(B).await;
    for r in RELAYS {
        c.start_relay(r).await;
    }
    c.wait_health(B, &RELAYS, "healthy").await;
    c.start_router(A).await;
    // A knows the relays from the reports B stored.
    c.wait_health(A, &RELAYS, "healthy").await;
    assert_eq!(reports_to(&pg, "de-fra-1"), B);
    let (a, b) = (c.url(A), c.url(B));

    // Created on A, joined through B.
    let conf = open_conference(&a, "eu").await;
    let id = conf["id"].as_str().unwrap();
    let passcode = conf["passcode"].as_str().unwrap();
    let joined = join_from(&b, id, passcode, "127.0.0.2").await.unwrap();
    assert_eq!(joined.relay_id, "de-fra-1");
    let client = connect(&joined, "127.0.0.2").await;
    // A kick through A reaches the participant on a relay reporting to B.
    assert_eq!(kick(&a, &conf, &joined.participant_id, false).await, 200);
    let code = tokio::time::timeout(Duration::from_secs(5), client.closed())
        .await
        .expect("the kick stored by A is delivered by B");
    assert_eq!(code, Some(u64::from(close_code::KICKED)));

    // A waiting-room admit through B releases a participant polling A.
    let conf = create(&a, ACME, json!({ "residency": "eu", "waiting_room": true })).await;
    let id = conf["id"].as_str().unwrap().to_owned();
    let host = format!("Bearer {}", conf["host_token"].as_str().unwrap());
    let (pass, poll_at) = (conf["passcode"].as_str().unwrap().to_owned(), a.clone());
    let wait_id = id.clone();
    let waiter =
        tokio::spawn(async move { join_from(&poll_at, &wait_id, &pass, "127.0.0.4").await });
    let pid = first_waiting(&b, &id, &host).await["participant_id"]
        .as_str()
        .unwrap()
        .to_owned();
    // A's poll held, not just started.
    let a_metrics = format!("{a}/metrics");
    until("A holding the poll", Duration::from_secs(10), || async {
        let m = request("GET", &a_metrics, None, None, None).await;
        let text = String::from_utf8_lossy(&m.body).into_owned();
        match residency_relay::relay::metrics::sample(&text, "rr_router_http_long_polls_held") {
            Some(held) if held >= 1.0 => Ok(()),
            held => Err(format!("rr_router_http_long_polls_held {held:?}")),
        }
    })
    .await;
    let admitted_at = Instant::now();
    let r = request(
        "POST",
        &format!("{b}/v1/conferences/{id}/waiting/{pid}/admit"),
        None,
        Some(&host),
        None,
    )
    .await;
    assert_eq!(r.status, 200);
    let admitted = tokio::time::timeout(Duration::from_secs(5), waiter)
        .await
        .expect("A's held poll returns on B's admit")
        .unwrap()
        .unwrap();
    assert_eq!(admitted.participant_id, pid);
    // Woken by the announcement, not by the poll timing out.
    assert!(
        admitted_at.elapsed() < Duration::from_secs(2),
        "{:?}",
        admitted_at.elapsed()
    );
    c.shutdown().await;
}

/// Two places in Germany between Frankfurt and Berlin: alone, each joiner
/// is placed on its nearer relay; the second joiner of a conference sticks
/// to the first one's relay (within `stickiness_km`, 300 in dev).
const BETWEEN: &str = "
[[geoip.override]]
cidr = \"127.0.0.8/32\"
country = \"DE\"
latitude = 51.3397    # Leipzig: Berlin 150 km, Frankfurt 295 km
longitude = 12.3731

[[geoip.override]]
cidr = \"127.0.0.9/32\"
country = \"DE\"
latitude = 51.3127    # Kassel: Frankfurt 150 km, Berlin 320 km
longitude = 9.4797
";

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn first_joins_racing_on_two_replicas_agree_on_the_relay() {
    let Some(pg) = Pg::start() else { return };
    let relays = ["de-fra-1", "de-ber-1"];
    let mut c = Cluster::replicated(&pg.url("rr"), |t| {
        // Overrides go with the others, before the relays.
        let at = t.find("\n[[geoip.override]]\n").unwrap() + 1;
        let mut t = t;
        t.insert_str(at, &format!("{}\n", BETWEEN.trim_start()));
        t + LIMITS
    });
    c.start_router(A).await;
    c.start_router(B).await;
    for r in relays {
        c.start_relay(r).await;
    }
    c.wait_health(A, &relays, "healthy").await;
    c.wait_health(B, &relays, "healthy").await;
    let (a, b) = (c.url(A), c.url(B));
    // Alone, each is placed on its nearer relay.
    let conf = open_conference(&a, "eu").await;
    let (id, passcode) = (
        conf["id"].as_str().unwrap(),
        conf["passcode"].as_str().unwrap(),
    );
    assert_eq!(
        join_from(&a, id, passcode, "127.0.0.8")
            .await
            .unwrap()
            .relay_id,
        "de-ber-1"
    );
    let conf = open_conference(&a, "eu").await;
    let (id, passcode) = (
        conf["id"].as_str().unwrap(),
        conf["passcode"].as_str().unwrap(),
    );
    assert_eq!(
        join_from(&b, id, passcode, "127.0.0.9")
            .await
            .unwrap()
            .relay_id,
        "de-fra-1"
    );
    let mut placed = std::collections::BTreeMap::<String, u32>::new();
    for round in 0..100 {
        let conf = open_conference(if round % 2 == 0 { &a } else { &b }, "eu").await;
        let id = conf["id"].as_str().unwrap();
        let passcode = conf["passcode"].as_str().unwrap();
        // The first joins of the conference, at once on both replicas.
        let (leipzig, kassel) = tokio::join!(
            join_from(&a, id, passcode, "127.0.0.8"),
            join_from(&b, id, passcode, "127.0.0.9"),
        );
        let (leipzig, kassel) = (leipzig.unwrap(), kassel.unwrap());
        assert_eq!(
            leipzig.relay_id, kassel.relay_id,
            "round {round}: the replicas placed one conference on two relays"
        );
        *placed.entry(leipzig.relay_id).or_default() += 1;
    }
    eprintln!("relays the 100 raced conferences were placed on: {placed:?}");
    c.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_killed_replica_is_taken_over_within_three_seconds() {
    let Some(pg) = Pg::start() else { return };
    let mut c = running(&pg).await;
    let metric = |url: String, name: &'static str| async move {
        let m = request("GET", &format!("{url}/metrics"), None, None, None).await;
        sample(&String::from_utf8_lossy(&m.body), name)
    };
    // Exactly one replica plans; which one took the lease first depends on
    // timing. The planner is the one killed.
    let deadline = Instant::now() + Duration::from_secs(5);
    let (killed_id, survivor_id) = loop {
        let (pa, pb) = (
            metric(c.url(A), "rr_router_planner").await,
            metric(c.url(B), "rr_router_planner").await,
        );
        match (pa, pb) {
            (1.0, 0.0) => break (A, B),
            (0.0, 1.0) => break (B, A),
            _ => {
                assert!(Instant::now() < deadline, "planner: A {pa}, B {pb}");
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    };
    let (a, b) = (c.url(killed_id), c.url(survivor_id));
    let conf = open_conference(&a, "eu").await;
    let id = conf["id"].as_str().unwrap().to_owned();
    let passcode = conf["passcode"].as_str().unwrap().to_owned();
    let german = join_from(&a, &id, &passcode, "127.0.0.2").await.unwrap();
    assert_eq!(german.relay_id, "de-fra-1");
    let mut german_client = connect(&german, "127.0.0.2").await;
    let track = german_client
        .publish(TrackKind::Audio, "opus", None)
        .await
        .unwrap();
    let before = audit(&a, &conf).await;

    c.kill_router(killed_id).await;
    let killed = Instant::now();
    // Joins through the survivor go on at once; this one lands in Dublin.
    let irish = join_from(&b, &id, &passcode, "127.0.0.4").await.unwrap();
    assert_eq!(irish.relay_id, "ie-dub-1");
    let mut irish_client = connect(&irish, "127.0.0.4").await;
    // The survivor takes the planner lease over when the killed one's expires...
    let deadline = killed + Duration::from_secs(3);
    while metric(b.clone(), "rr_router_planner").await != 1.0 {
        assert!(
            Instant::now() < deadline,
            "{survivor_id} did not take planning over within 3 s"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let took_over = killed.elapsed();
    // ...and links Dublin to Frankfurt: media crosses the new link.
    irish_client
        .subscribe_announced(track, Duration::from_secs(10))
        .await
        .unwrap();
    hear_from(&german_client, &irish_client, track).await;
    // Relays report to the survivor now, healthy.
    c.wait_health(survivor_id, &RELAYS, "healthy").await;
    assert_eq!(reports_to(&pg, "de-fra-1"), survivor_id);
    // Moderation through the survivor reaches the relay the killed one's
    // participant is on.
    assert_eq!(kick(&b, &conf, &german.participant_id, false).await, 200);
    let code = tokio::time::timeout(Duration::from_secs(5), german_client.closed())
        .await
        .expect("kick through the survivor after the planner died");
    assert_eq!(code, Some(u64::from(close_code::KICKED)));
    eprintln!(
        "planner taken over {took_over:?} after the kill; call moderated through {survivor_id} {:?} after it",
        killed.elapsed()
    );
    // Nothing A answered is lost.
    let after = audit(&b, &conf).await;
    assert_eq!(after[..before.len()], before[..]);
    c.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_call_outlives_the_database_going_down_and_coming_back() {
    let Some(mut pg) = Pg::start() else { return };
    let c = running(&pg).await;
    let (a, b) = (c.url(A), c.url(B));
    let conf = open_conference(&a, "eu").await;
    let id = conf["id"].as_str().unwrap().to_owned();
    let passcode = conf["passcode"].as_str().unwrap().to_owned();
    let german = join_from(&a, &id, &passcode, "127.0.0.2").await.unwrap();
    let irish = join_from(&b, &id, &passcode, "127.0.0.4").await.unwrap();
    let mut german_client = connect(&german, "127.0.0.2").await;
    let mut irish_client = connect(&irish, "127.0.0.4").await;
    let track = german_client
        .publish(TrackKind::Audio, "opus", None)
        .await
        .unwrap();
    irish_client
        .subscribe_announced(track, Duration::from_secs(10))
        .await
        .unwrap();
    hear_from(&german_client, &irish_client, track).await;
    let before = audit(&a, &conf).await;

    pg.stop();
    // Joins are refused promptly, on both replicas, with a clear code.
    for router in [&a, &b] {
        let started = Instant::now();
        let e = join_from(router, &id, &passcode, "127.0.0.7")
            .await
            .unwrap_err();
        assert_eq!(
            refused_code(e),
            (503, "store_unavailable".into()),
            "{router}"
        );
        assert!(
            started.elapsed() < Duration::from_secs(1),
            "{router}: {:?}",
            started.elapsed()
        );
    }
    // Not ready, and counted.
    for router in [&a, &b] {
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            let r = request("GET", &format!("{router}/readyz"), None, None, None).await;
            if r.status == 503 {
                assert!(String::from_utf8_lossy(&r.body).contains("store"));
                break;
            }
            assert!(Instant::now() < deadline, "{router} still says ready");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        let m = request("GET", &format!("{router}/metrics"), None, None, None).await;
        let text = String::from_utf8_lossy(&m.body);
        assert_eq!(sample(&text, "rr_router_store_up"), 0.0);
        assert!(sample(&text, "rr_router_store_unavailable_total") >= 1.0);
    }
    // The call goes on without the database.
    hear_from(&german_client, &irish_client, track).await;

    pg.restart();
    // Both replicas reconnect and take joins again.
    for router in [&a, &b] {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            match join_from(router, &id, &passcode, "127.0.0.7").await {
                Ok(_) => break,
                Err(e) => assert!(Instant::now() < deadline, "{router}: {e}"),
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        // Ready again at the next store check.
        while request("GET", &format!("{router}/readyz"), None, None, None)
            .await
            .status
            != 200
        {
            assert!(Instant::now() < deadline, "{router} not ready again");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
    hear_from(&german_client, &irish_client, track).await;
    // No record was lost.
    let after = audit(&b, &conf).await;
    assert_eq!(after[..before.len()], before[..]);
    c.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn both_replicas_restarted_keep_every_record() {
    let Some(pg) = Pg::start() else { return };
    let mut c = running(&pg).await;
    let (a, b) = (c.url(A), c.url(B));
    let conf = open_conference(&a, "eu").await;
    let id = conf["id"].as_str().unwrap().to_owned();
    let passcode = conf["passcode"].as_str().unwrap().to_owned();
    let troll = join_from(&b, &id, &passcode, "127.0.0.6").await.unwrap();
    assert_eq!(kick(&a, &conf, &troll.participant_id, true).await, 200);
    let invite = request(
        "POST",
        &format!("{b}/v1/conferences/{id}/invites"),
        None,
        Some(ACME),
        Some(json!({ "display_name": "Cohost", "role": "host" })),
    )
    .await;
    assert_eq!(invite.status, 201);
    let token = invite.json()["invite"].as_str().unwrap().to_owned();
    let report = request(
        "POST",
        &format!(
            "{a}/v1/conferences/{id}/participants/{}/report",
            troll.participant_id
        ),
        None,
        Some(&format!("Bearer {}", conf["host_token"].as_str().unwrap())),
        Some(json!({ "reason": "spam" })),
    )
    .await;
    assert_eq!(
        report.status,
        201,
        "{}",
        String::from_utf8_lossy(&report.body)
    );
    let before = audit(&a, &conf).await;
    assert!(before.len() >= 3, "{before:?}");

    c.stop_router(A).await;
    c.stop_router(B).await;
    c.start_router(B).await;
    c.start_router(A).await;
    c.wait_health(A, &RELAYS, "healthy").await;
    c.wait_health(B, &RELAYS, "healthy").await;

    // The conference, its audit log and the abuse report.
    let r = request(
        "GET",
        &format!("{b}/v1/conferences/{id}"),
        None,
        Some(ACME),
        None,
    )
    .await;
    assert_eq!(r.status, 200);
    assert_eq!(audit(&b, &conf).await[..before.len()], before[..]);
    let reports = request(
        "GET",
        &format!("{a}/v1/admin/reports"),
        None,
        Some(ADMIN),
        None,
    )
    .await
    .json();
    assert!(
        reports.to_string().contains(&troll.participant_id),
        "{reports}"
    );
    // The ban holds on both.
    for router in [&a, &b] {
        let e = join_from(router, &id, &passcode, "127.0.0.6")
            .await
            .unwrap_err();
        assert_eq!(refused_code(e), (403, "banned".into()));
    }
    // The invitation still works, once.
    let joined = residency_relay::client::join::join(
        &a,
        &id,
        &Credential::Invite(token.clone()),
        "ignored",
        Some("127.0.0.2".parse().unwrap()),
        Duration::from_secs(5),
    )
    .await
    .unwrap();
    assert_eq!(joined.role, "host");
    let e = residency_relay::client::join::join(
        &b,
        &id,
        &Credential::Invite(token),
        "again",
        Some("127.0.0.2".parse().unwrap()),
        Duration::from_secs(5),
    )
    .await
    .unwrap_err();
    assert_eq!(refused_code(e), (403, "bad_invite".into()));
    c.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn each_replica_enforces_its_share_of_a_rate_limit() {
    let Some(pg) = Pg::start() else { return };
    // Five failed joins per address per window, over two replicas: two each.
    let mut c = Cluster::replicated(&pg.url("rr"), |t| {
        t + "\n[limits]\nfailed_joins_per_address = 5\nfailed_joins_per_conference = 1000\n"
    });
    c.start_router(A).await;
    c.start_router(B).await;
    for r in RELAYS {
        c.start_relay(r).await;
    }
    c.wait_health(A, &RELAYS, "healthy").await;
    let (a, b) = (c.url(A), c.url(B));
    let conf = open_conference(&a, "eu").await;
    let id = conf["id"].as_str().unwrap();
    let mut codes = Vec::new();
    for router in [&a, &a, &a, &b, &b, &b] {
        let e = join_from(router, id, "000000000", "127.0.0.5")
            .await
            .unwrap_err();
        codes.push(refused_code(e).1);
    }
    assert_eq!(
        codes,
        [
            "wrong_passcode",
            "wrong_passcode",
            "too_many_failures_from_address",
            "wrong_passcode",
            "wrong_passcode",
            "too_many_failures_from_address"
        ],
        "each replica allows floor(5 / 2) = 2 failures: never more than the configured 5 in all"
    );
    c.shutdown().await;
}
