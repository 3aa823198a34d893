//! The router end to end on loopback: routers and relays of the dev config
//! in this process, clients at 127.0.0.x addresses the config maps to
//! countries (.2 Germany, .3 US, .4 Ireland, .5 Switzerland, .6 UK).

mod support;

use std::time::Duration;

use residency_relay::store::{Sqlite, Store};
use residency_relay::wire::close_code;
use residency_relay::wire::control::TrackKind;
use residency_relay::wire::datagram::{Flags, MediaHeader};
use serde_json::json;
use support::cluster::{
    ACME, ADMIN, Cluster, FREEBIE, connect, create, first_waiting, hear_from, join_from,
    open_conference, refused_code, request, request_raw, sample, wait_participants,
};
use support::wait::{REPORTS, until};

const EU_RELAYS: [&str; 3] = ["de-fra-1", "de-ber-1", "ie-dub-1"];

async fn eu_cluster() -> Cluster {
    let mut c = Cluster::new(|t| t);
    c.start_router("de-fra-router").await;
    c.start_router("us-nyc-router").await;
    for r in EU_RELAYS.iter().chain(&["us-nyc-1"]) {
        c.start_relay(r).await;
    }
    c.wait_health(
        "de-fra-router",
        &["de-fra-1", "de-ber-1", "ie-dub-1", "us-nyc-1"],
        "healthy",
    )
    .await;
    c.wait_health("us-nyc-router", &["us-nyc-1"], "healthy")
        .await;
    c
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn paid_eu_conference_keeps_an_american_on_an_eu_relay_and_media_flows() {
    let c = eu_cluster().await;
    let router = c.url("de-fra-router");
    let conf = open_conference(&router, "eu").await;
    let id = conf["id"].as_str().unwrap();
    assert!(id.starts_with("eu-") && id.len() == 29, "{id}");
    assert_eq!(conf["jurisdiction"], "eu");
    assert_eq!(conf["router_url"], router.as_str());
    let passcode = conf["passcode"].as_str().unwrap();
    assert_eq!(passcode.len(), 10);

    let german = join_from(&router, id, passcode, "127.0.0.2").await.unwrap();
    let american = join_from(&router, id, passcode, "127.0.0.3").await.unwrap();
    // Each on the EU relay nearest them: Frankfurt, and Dublin for New York.
    assert_eq!(german.relay_id, "de-fra-1");
    assert_eq!(american.relay_id, "ie-dub-1");

    let mut a = connect(&german, "127.0.0.2").await;
    let mut b = connect(&american, "127.0.0.3").await;
    let track = a.publish(TrackKind::Audio, "opus", None).await.unwrap();
    // The track reaches Dublin over the cascade link the router sets up.
    b.subscribe_announced(track, Duration::from_secs(10))
        .await
        .unwrap();
    hear_from(&a, &b, track).await;
    let payload = b"end-to-end encrypted bytes the relay never reads".to_vec();
    for sequence in 0..20u32 {
        a.send_media(
            &MediaHeader {
                track,
                sequence,
                flags: Flags::default(),
                info: residency_relay::wire::datagram::Info::NONE,
            },
            &payload,
        )
        .unwrap();
    }
    let mut received = 0;
    while received < 20 {
        let d = tokio::time::timeout(Duration::from_secs(5), b.recv_media())
            .await
            .expect("media arrives")
            .unwrap();
        assert!(d.ends_with(&payload));
        received += 1;
    }

    // The American relay saw nothing of it.
    let us = c.relay_metrics("us-nyc-1").await;
    assert_eq!(sample(&us, "rr_relay_bytes_received_total"), 0.0);
    assert_eq!(sample(&us, "rr_relay_deliveries_total"), 0.0);
    assert_eq!(sample(&us, "rr_relay_connections"), 0.0);

    // The router's view lists only the EU relays, with what they carried
    // (once the relays' next reports count both participants and the bytes).
    let url = format!("{router}/v1/conferences/{id}");
    let host = format!("Bearer {}", conf["host_token"].as_str().unwrap());
    let state = until("the relays' reports of the call", REPORTS, || async {
        let state = request("GET", &url, None, Some(&host), None).await;
        let seen = state.json();
        let carried = seen["relays"].as_array().into_iter().flatten().any(|r| {
            r["id"] == "de-fra-1" && r["bytes_in"].as_u64() >= Some(20 * payload.len() as u64)
        });
        if state.status == 200 && seen["participants"] == 2 && carried {
            Ok(state)
        } else {
            Err(format!("{} {seen}", state.status))
        }
    })
    .await;
    assert_eq!(state.status, 200);
    let state = state.json();
    assert_eq!(state["participants"], 2, "{state}");
    let relays = state["relays"].as_array().unwrap();
    let ids: Vec<&str> = relays.iter().map(|r| r["id"].as_str().unwrap()).collect();
    assert_eq!(ids.len(), 2, "{state}");
    assert!(
        ids.contains(&"de-fra-1") && ids.contains(&"ie-dub-1"),
        "{state}"
    );
    let fra = relays.iter().find(|r| r["id"] == "de-fra-1").unwrap();
    assert!(fra["bytes_in"].as_u64().unwrap() >= 20 * payload.len() as u64);
    a.leave().await;
    b.leave().await;
    c.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn plan_rules_pin_conferences_and_foreign_jurisdictions_are_redirected() {
    let mut c = Cluster::new(|t| t);
    c.start_router("de-fra-router").await;
    c.start_router("us-nyc-router").await;
    let de = c.url("de-fra-router");
    let us = c.url("us-nyc-router");

    // A free plan may not choose; with no choice it gets the operator default.
    let r = request(
        "POST",
        &format!("{de}/v1/conferences"),
        None,
        Some(FREEBIE),
        Some(json!({ "residency": "eu" })),
    )
    .await;
    assert_eq!(r.status, 403);
    assert_eq!(r.json()["error"]["code"], "plan_may_not_choose");
    let free = create(&de, FREEBIE, json!({})).await;
    assert_eq!(free["jurisdiction"], "global");
    assert!(free["id"].as_str().unwrap().starts_with("global-"));

    // A plan without a choice it lacks: 403; an unknown jurisdiction: 400.
    let r = request(
        "POST",
        &format!("{de}/v1/conferences"),
        None,
        Some(FREEBIE),
        Some(json!({ "passcode": false })),
    )
    .await;
    assert_eq!(r.status, 403);
    assert_eq!(r.json()["error"]["code"], "passcode_required");
    let r = request(
        "POST",
        &format!("{de}/v1/conferences"),
        None,
        Some(ACME),
        Some(json!({ "residency": "mars" })),
    )
    .await;
    assert_eq!(r.status, 400);

    // Asking the German router for a US conference: 421 naming the US router.
    let r = request(
        "POST",
        &format!("{de}/v1/conferences"),
        None,
        Some(ACME),
        Some(json!({ "residency": "us" })),
    )
    .await;
    assert_eq!(r.status, 421);
    assert_eq!(r.json()["error"]["router_url"], us.as_str());
    // A jurisdiction no router serves: 421 without a URL.
    let r = request(
        "POST",
        &format!("{de}/v1/conferences"),
        None,
        Some(ACME),
        Some(json!({ "residency": "uk" })),
    )
    .await;
    assert_eq!(r.status, 421);
    assert_eq!(r.json()["error"]["code"], "jurisdiction_not_served");

    // An EU conference id at the US router: 421 with the EU router's URL,
    // for every endpoint, and nothing stored there.
    let eu = create(&de, ACME, json!({ "residency": "eu" })).await;
    let id = eu["id"].as_str().unwrap();
    for (method, path, body) in [
        ("GET", format!("/v1/conferences/{id}"), None),
        (
            "POST",
            format!("/v1/conferences/{id}/join"),
            Some(json!({ "passcode": "x", "display_name": "Mallory" })),
        ),
        ("POST", format!("/v1/conferences/{id}/lock"), None),
    ] {
        let r = request(
            method,
            &format!("{us}{path}"),
            Some("127.0.0.3"),
            Some(ACME),
            body,
        )
        .await;
        assert_eq!(r.status, 421, "{path}");
        assert_eq!(r.json()["error"]["router_url"], de.as_str(), "{path}");
    }
    let us = c.policy.router("us-nyc-router").unwrap();
    let us_store = Sqlite::open(us.store.sqlite().unwrap()).unwrap();
    assert!(us_store.conference(id).await.unwrap().is_none());
    assert!(us_store.audit_log(id).await.unwrap().is_empty());

    // No key, a wrong key, another tenant's conference.
    let r = request("POST", &format!("{de}/v1/conferences"), None, None, None).await;
    assert_eq!(r.status, 401);
    let r = request(
        "POST",
        &format!("{de}/v1/conferences"),
        None,
        Some("Bearer nope"),
        None,
    )
    .await;
    assert_eq!(r.status, 401);
    let r = request(
        "GET",
        &format!("{de}/v1/conferences/{id}"),
        None,
        Some(FREEBIE),
        None,
    )
    .await;
    assert_eq!(r.status, 404);
    c.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn passcode_failures_lock_kick_ban_and_end() {
    let c = eu_cluster().await;
    let router = c.url("de-fra-router");
    let conf = open_conference(&router, "eu").await;
    let id = conf["id"].as_str().unwrap();
    let passcode = conf["passcode"].as_str().unwrap();
    let host = format!("Bearer {}", conf["host_token"].as_str().unwrap());
    let post = |path: &str| format!("{router}/v1/conferences/{id}{path}");

    // Wrong passcode: 403, then 429 with Retry-After once the address has
    // used up its failures; another address is unaffected.
    for _ in 0..5 {
        let e = join_from(&router, id, "wrong", "127.0.0.5")
            .await
            .unwrap_err();
        assert_eq!(refused_code(e), (403, "wrong_passcode".into()));
    }
    let r = request(
        "POST",
        &post("/join"),
        Some("127.0.0.5"),
        None,
        Some(json!({ "passcode": passcode, "display_name": "x" })),
    )
    .await;
    assert_eq!(r.status, 429);
    let retry: u64 = r.header("retry-after").unwrap().parse().unwrap();
    assert!((1..=60).contains(&retry));
    assert_eq!(r.json()["error"]["code"], "too_many_failures_from_address");
    let other = join_from(&router, id, passcode, "127.0.0.4").await.unwrap();
    assert!(!other.ticket.is_empty());

    // Locked: 423; unlocked: in.
    assert_eq!(
        request("POST", &post("/lock"), None, Some(&host), None)
            .await
            .status,
        200
    );
    let e = join_from(&router, id, passcode, "127.0.0.2")
        .await
        .unwrap_err();
    assert_eq!(refused_code(e), (423, "locked".into()));
    assert_eq!(
        request("POST", &post("/unlock"), None, Some(&host), None)
            .await
            .status,
        200
    );

    // Kick with ban: the relay disconnects with the kicked code, and the
    // participant cannot come back from its address.
    let troll = join_from(&router, id, passcode, "127.0.0.6").await.unwrap();
    let stays = join_from(&router, id, passcode, "127.0.0.2").await.unwrap();
    let troll_client = connect(&troll, "127.0.0.6").await;
    let other = connect(&stays, "127.0.0.2").await;
    let r = request(
        "POST",
        &post(&format!("/participants/{}/kick", troll.participant_id)),
        None,
        Some(&host),
        Some(json!({ "ban": true, "reason": "spam" })),
    )
    .await;
    assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
    let code = tokio::time::timeout(Duration::from_secs(5), troll_client.closed())
        .await
        .expect("kicked participant disconnected");
    assert_eq!(code, Some(u64::from(close_code::KICKED)));
    assert!(other.close_code().is_none(), "others stay");
    let e = join_from(&router, id, passcode, "127.0.0.6")
        .await
        .unwrap_err();
    assert_eq!(refused_code(e), (403, "banned".into()));
    // The ticket it still held is refused by the relay too.
    let again = residency_relay::client::Client::connect(
        "127.0.0.6:0".parse().unwrap(),
        troll.quic_addr,
        &troll.cert_sha256,
        &troll.ticket,
    )
    .await;
    assert!(again.is_err());

    // An abuse report reaches the operator's list.
    let r = request(
        "POST",
        &post(&format!("/participants/{}/report", troll.participant_id)),
        None,
        Some(&host),
        Some(json!({ "reason": "spam links" })),
    )
    .await;
    assert_eq!(r.status, 201);
    let reports = request(
        "GET",
        &format!("{router}/v1/admin/reports"),
        None,
        Some(ADMIN),
        None,
    )
    .await
    .json();
    assert_eq!(reports["reports"][0]["reason"], "spam links");
    assert_eq!(
        request(
            "GET",
            &format!("{router}/v1/admin/reports"),
            None,
            Some(&host),
            None
        )
        .await
        .status,
        401
    );

    // End: everyone disconnected with the ended code; joins are 410.
    assert_eq!(
        request("POST", &post("/end"), None, Some(&host), None)
            .await
            .status,
        200
    );
    let code = tokio::time::timeout(Duration::from_secs(5), other.closed())
        .await
        .expect("participants disconnected on end");
    assert_eq!(code, Some(u64::from(close_code::CONFERENCE_ENDED)));
    let e = join_from(&router, id, passcode, "127.0.0.4")
        .await
        .unwrap_err();
    assert_eq!(refused_code(e), (410, "ended".into()));

    // The audit log tells the story without a raw address.
    let log = request("GET", &post("/audit"), None, Some(ACME), None).await;
    let text = String::from_utf8_lossy(&log.body).into_owned();
    for event in [
        "conference_created",
        "join_accepted",
        "join_refused",
        "lock",
        "kick",
        "end",
    ] {
        assert!(text.contains(event), "{event} missing from {text}");
    }
    assert!(!text.contains("127.0.0."), "{text}");
    c.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn no_healthy_or_free_relay_in_the_jurisdiction_is_503_never_abroad() {
    // Switzerland has one relay, with room for one participant.
    let mut c = Cluster::new(|t| t.replace("max_participants = 200", "max_participants = 1"));
    c.start_router("ch-zrh-router").await;
    c.start_router("de-fra-router").await;
    c.start_relay("de-fra-1").await;
    let ch = c.url("ch-zrh-router");
    let conf = open_conference(&ch, "ch").await;
    let id = conf["id"].as_str().unwrap();
    let passcode = conf["passcode"].as_str().unwrap();

    // The Swiss relay is not running: refused with the reason.
    let r = request(
        "POST",
        &format!("{ch}/v1/conferences/{id}/join"),
        Some("127.0.0.5"),
        None,
        Some(json!({ "passcode": passcode, "display_name": "Heidi" })),
    )
    .await;
    assert_eq!(r.status, 503);
    assert_eq!(r.json()["error"]["code"], "no_healthy_relay");
    assert!(
        r.json()["error"]["message"]
            .as_str()
            .unwrap()
            .contains("'ch'")
    );

    // Running but full: refused, never sent to the German relay.
    c.start_relay("ch-zrh-1").await;
    c.wait_health("ch-zrh-router", &["ch-zrh-1"], "healthy")
        .await;
    let first = join_from(&ch, id, passcode, "127.0.0.5").await.unwrap();
    assert_eq!(first.relay_id, "ch-zrh-1");
    let _in = connect(&first, "127.0.0.5").await;
    wait_participants(&ch, &conf, 1).await;
    let e = join_from(&ch, id, passcode, "127.0.0.2").await.unwrap_err();
    assert_eq!(refused_code(e), (503, "at_capacity".into()));

    // A German conference with both German relays down.
    let de = c.url("de-fra-router");
    c.stop_relay("de-fra-1").await;
    let conf = create(&de, ACME, json!({ "residency": "de" })).await;
    let r = request(
        "POST",
        &format!("{de}/v1/conferences/{}/join", conf["id"].as_str().unwrap()),
        Some("127.0.0.2"),
        None,
        Some(json!({ "passcode": conf["passcode"], "display_name": "Max" })),
    )
    .await;
    assert_eq!(r.status, 503);
    c.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_restarted_router_keeps_conferences_bans_placement_and_moderation() {
    let mut c = Cluster::new(|t| t);
    c.start("de-fra-router", &["de-fra-1", "ie-dub-1"]).await;
    let router = c.url("de-fra-router");
    let conf = open_conference(&router, "eu").await;
    let id = conf["id"].as_str().unwrap().to_owned();
    let passcode = conf["passcode"].as_str().unwrap().to_owned();
    let host = format!("Bearer {}", conf["host_token"].as_str().unwrap());
    // The first joiner is Irish: the conference is carried in Dublin.
    let irish = join_from(&router, &id, &passcode, "127.0.0.4")
        .await
        .unwrap();
    assert_eq!(irish.relay_id, "ie-dub-1");
    let irish_client = connect(&irish, "127.0.0.4").await;
    let banned = join_from(&router, &id, &passcode, "127.0.0.6")
        .await
        .unwrap();
    let kick = |pid: String| {
        let (router, id, host) = (router.clone(), id.clone(), host.clone());
        async move {
            request(
                "POST",
                &format!("{router}/v1/conferences/{id}/participants/{pid}/kick"),
                None,
                Some(&host),
                Some(json!({ "ban": true })),
            )
            .await
            .status
        }
    };
    assert_eq!(kick(banned.participant_id.clone()).await, 200);

    c.stop_router("de-fra-router").await;
    c.start_router("de-fra-router").await;
    c.wait_health("de-fra-router", &["de-fra-1", "ie-dub-1"], "healthy")
        .await;

    // Joinable; the new run links Frankfurt to Dublin, where the conference
    // already is, and media flows between them.
    let german = join_from(&router, &id, &passcode, "127.0.0.2")
        .await
        .unwrap();
    assert_eq!(german.relay_id, "de-fra-1");
    let mut german_client = connect(&german, "127.0.0.2").await;
    let mut irish_client = irish_client;
    let track = irish_client
        .publish(TrackKind::Audio, "opus", None)
        .await
        .unwrap();
    german_client
        .subscribe_announced(track, Duration::from_secs(10))
        .await
        .unwrap();
    // Media across the link set up after the restart.
    hear_from(&irish_client, &german_client, track).await;
    // Bans hold.
    let e = join_from(&router, &id, &passcode, "127.0.0.6")
        .await
        .unwrap_err();
    assert_eq!(refused_code(e), (403, "banned".into()));
    // Commands numbered by the new run still reach the relay, which had
    // acknowledged the old run's numbers.
    assert_eq!(kick(irish.participant_id.clone()).await, 200);
    let code = tokio::time::timeout(Duration::from_secs(5), irish_client.closed())
        .await
        .expect("kick after a router restart reaches the relay");
    assert_eq!(code, Some(u64::from(close_code::KICKED)));
    // The host token still works.
    let r = request(
        "GET",
        &format!("{router}/v1/conferences/{id}"),
        None,
        Some(&host),
        None,
    )
    .await;
    assert_eq!(r.status, 200);
    c.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn waiting_room_and_invitations() {
    let c = eu_cluster().await;
    let router = c.url("de-fra-router");
    let conf = create(
        &router,
        ACME,
        json!({ "residency": "eu", "waiting_room": true }),
    )
    .await;
    let id = conf["id"].as_str().unwrap().to_owned();
    let passcode = conf["passcode"].as_str().unwrap().to_owned();
    let host = format!("Bearer {}", conf["host_token"].as_str().unwrap());

    // A passcode joiner waits; its held poll returns as soon as a host admits.
    let (r_id, r_pass, r_router) = (id.clone(), passcode.clone(), router.clone());
    let waiter =
        tokio::spawn(async move { join_from(&r_router, &r_id, &r_pass, "127.0.0.4").await });
    let waiting = first_waiting(&router, &id, &host).await;
    assert_eq!(waiting["display_name"], "participant at 127.0.0.4");
    let pid = waiting["participant_id"].as_str().unwrap().to_owned();
    let r = request(
        "POST",
        &format!("{router}/v1/conferences/{id}/waiting/{pid}/admit"),
        None,
        Some(&host),
        None,
    )
    .await;
    assert_eq!(r.status, 200);
    let admitted = tokio::time::timeout(Duration::from_secs(5), waiter)
        .await
        .expect("poll returns on admit")
        .unwrap()
        .unwrap();
    assert_eq!(admitted.participant_id, pid);
    connect(&admitted, "127.0.0.4").await.leave().await;

    // Denied: the poll answers 403.
    let (r_id, r_pass, r_router) = (id.clone(), passcode.clone(), router.clone());
    let waiter =
        tokio::spawn(async move { join_from(&r_router, &r_id, &r_pass, "127.0.0.5").await });
    let pid = first_waiting(&router, &id, &host).await["participant_id"]
        .as_str()
        .unwrap()
        .to_owned();
    request(
        "POST",
        &format!("{router}/v1/conferences/{id}/waiting/{pid}/deny"),
        None,
        Some(&host),
        None,
    )
    .await;
    let e = waiter.await.unwrap().unwrap_err();
    assert_eq!(refused_code(e), (403, "denied".into()));

    // Invitations skip the waiting room, are single use, and a host
    // invitation passes a lock and carries the moderate grant.
    assert_eq!(
        request(
            "POST",
            &format!("{router}/v1/conferences/{id}/lock"),
            None,
            Some(&host),
            None
        )
        .await
        .status,
        200
    );
    let inv = request(
        "POST",
        &format!("{router}/v1/conferences/{id}/invites"),
        None,
        Some(ACME),
        Some(json!({ "display_name": "Cohost", "role": "host" })),
    )
    .await;
    assert_eq!(inv.status, 201);
    let token = inv.json()["invite"].as_str().unwrap().to_owned();
    let joined = residency_relay::client::join::join(
        &router,
        &id,
        &residency_relay::client::join::Credential::Invite(token.clone()),
        "ignored",
        Some("127.0.0.2".parse().unwrap()),
        Duration::from_secs(5),
    )
    .await
    .unwrap();
    assert_eq!(
        joined.participant_id,
        inv.json()["participant_id"].as_str().unwrap()
    );
    let claims = residency_relay::ticket::peek(&joined.ticket).unwrap();
    assert!(claims.grants.moderate);
    assert_eq!(claims.display_name, "Cohost");
    let e = residency_relay::client::join::join(
        &router,
        &id,
        &residency_relay::client::join::Credential::Invite(token),
        "again",
        Some("127.0.0.2".parse().unwrap()),
        Duration::from_secs(5),
    )
    .await
    .unwrap_err();
    assert_eq!(refused_code(e), (403, "bad_invite".into()));
    let viewer = request(
        "POST",
        &format!("{router}/v1/conferences/{id}/invites"),
        None,
        Some(&host),
        Some(json!({ "display_name": "Viewer", "role": "viewer" })),
    )
    .await
    .json();
    let e = residency_relay::client::join::join(
        &router,
        &id,
        &residency_relay::client::join::Credential::Invite(
            viewer["invite"].as_str().unwrap().into(),
        ),
        "v",
        Some("127.0.0.2".parse().unwrap()),
        Duration::from_secs(5),
    )
    .await
    .unwrap_err();
    assert_eq!(refused_code(e), (423, "locked".into()));
    c.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn relays_must_authenticate_and_belong_to_the_jurisdiction() {
    let mut c = Cluster::new(|t| t);
    c.start_router("ch-zrh-router").await;
    c.start_router("de-fra-router").await;
    let ch = c.url("ch-zrh-router");
    let ch_relays = c.relay_url("ch-zrh-router");
    let report = json!({ "cert_sha256": "00", "participants": 0, "bitrate_bps": 0, "draining": false, "conferences": [], "ack": 0, "epoch": 0 });
    // Wrong credential.
    let r = request(
        "POST",
        &format!("{ch_relays}/v1/relays/ch-zrh-1/report"),
        None,
        Some("Bearer dev-relay-de-fra-1"),
        Some(report.clone()),
    )
    .await;
    assert_eq!(r.status, 401);
    // A genuine German relay at the Swiss router: refused.
    let r = request(
        "POST",
        &format!("{ch_relays}/v1/relays/de-fra-1/report"),
        None,
        Some("Bearer dev-relay-de-fra-1"),
        Some(report.clone()),
    )
    .await;
    assert_eq!(r.status, 403);
    assert_eq!(r.json()["error"]["code"], "outside_jurisdiction");
    // Unknown relay; malformed report.
    let r = request(
        "POST",
        &format!("{ch_relays}/v1/relays/nope/report"),
        None,
        Some("Bearer x"),
        Some(report),
    )
    .await;
    assert_eq!(r.status, 404);
    let r = request_raw(
        "POST",
        &format!("{ch_relays}/v1/relays/ch-zrh-1/report"),
        None,
        Some("Bearer dev-relay-ch-zrh-1"),
        Some(b"{".to_vec()),
    )
    .await;
    assert_eq!(r.status, 400);
    let metrics = String::from_utf8_lossy(
        &request("GET", &format!("{ch}/metrics"), None, None, None)
            .await
            .body,
    )
    .into_owned();
    assert!(metrics.contains("rr_router_relay_reports_total{outcome=\"outside_jurisdiction\",router=\"ch-zrh-router\"} 1"), "{metrics}");
    assert!(
        metrics.contains(
            "rr_router_relay_reports_total{outcome=\"bad_credential\",router=\"ch-zrh-router\"} 1"
        ),
        "{metrics}"
    );

    // A relay whose country changed in the inventory would be refused the
    // same way; a US relay reports its EU-prefixed conferences to no one
    // outside: the German router drops conferences of jurisdictions it
    // does not serve from what it keeps.
    let de = c.url("de-fra-router");
    let de_relays = c.relay_url("de-fra-router");
    let report = json!({ "cert_sha256": "00", "participants": 1, "bitrate_bps": 0, "draining": false,
        "conferences": [{ "id": "us-aaaaaaaaaaaaaaaaaaaaaaaaaa", "participants": 1, "bytes_in": 5, "bytes_out": 5 }], "ack": 0, "epoch": 0 });
    let r = request(
        "POST",
        &format!("{de_relays}/v1/relays/us-nyc-1/report"),
        None,
        Some("Bearer dev-relay-us-nyc-1"),
        Some(report),
    )
    .await;
    assert_eq!(r.status, 200);
    let list = request(
        "GET",
        &format!("{de}/v1/admin/relays"),
        None,
        Some(ADMIN),
        None,
    )
    .await
    .json();
    let us = list["relays"]
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["id"] == "us-nyc-1")
        .unwrap()
        .clone();
    assert_eq!(us["conferences"], 0, "{list}");
    assert_eq!(us["health"], "healthy");
    c.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn malformed_requests_get_4xx_and_metrics_carry_no_personal_data() {
    let c = eu_cluster().await;
    let router = c.url("de-fra-router");
    let router_relays = c.relay_url("de-fra-router");
    let conf = open_conference(&router, "eu").await;
    let id = conf["id"].as_str().unwrap();
    let host = format!("Bearer {}", conf["host_token"].as_str().unwrap());
    let joined = join_from(&router, id, conf["passcode"].as_str().unwrap(), "127.0.0.2")
        .await
        .unwrap();

    let bodies: Vec<Vec<u8>> = vec![
        b"".to_vec(),
        b"{".to_vec(),
        b"null".to_vec(),
        b"[]".to_vec(),
        b"\"x\"".to_vec(),
        b"{\"residency\": 5}".to_vec(),
        b"{\"passcode\": [1,2]}".to_vec(),
        b"{\"display_name\": \"\\u0000\", \"passcode\": \"x\"}".to_vec(),
        b"{\"unknown_field\": true}".to_vec(),
        vec![0xff, 0xfe, 0x00, 0x80],
        format!(
            "{{\"display_name\": \"{}\", \"passcode\": \"a\"}}",
            "x".repeat(100)
        )
        .into_bytes(),
        vec![b'{'; 20_000],
    ];
    let mut rng = 0x2545_f491_4f6c_dd1du64;
    let mut random = Vec::new();
    for _ in 0..40 {
        let len = (rng % 300) as usize;
        let mut b = Vec::with_capacity(len);
        for _ in 0..len {
            rng ^= rng << 13;
            rng ^= rng >> 7;
            rng ^= rng << 17;
            b.push((rng >> 24) as u8);
        }
        random.push(b);
    }
    let paths = [
        "/v1/conferences".to_owned(),
        format!("/v1/conferences/{id}/join"),
        format!("/v1/conferences/{id}/invites"),
        format!(
            "/v1/conferences/{id}/participants/{}/kick",
            joined.participant_id
        ),
        format!(
            "/v1/conferences/{id}/participants/{}/report",
            joined.participant_id
        ),
        "/v1/conferences/eu-x/join".to_owned(),
        "/v1/conferences/%00%ff/join".to_owned(),
        "/v1/relays/de-fra-1/report".to_owned(),
    ];
    for path in &paths {
        for (k, body) in bodies.iter().chain(&random).enumerate() {
            let auth = if path.contains("relays") {
                "Bearer dev-relay-de-fra-1"
            } else if k % 2 == 0 {
                ACME
            } else {
                &host
            };
            let base = if path.contains("relays") {
                &router_relays
            } else {
                &router
            };
            let r = request_raw(
                "POST",
                &format!("{base}{path}"),
                Some("127.0.0.4"),
                Some(auth),
                Some(body.clone()),
            )
            .await;
            assert!(
                (400..500).contains(&r.status)
                    || (path == "/v1/conferences" && body.iter().all(u8::is_ascii_whitespace))
                    || (path.ends_with("/kick") && body.is_empty()),
                "{path} {body:?} -> {} {}",
                r.status,
                String::from_utf8_lossy(&r.body)
            );
        }
    }
    // Framework rejections have the API's error shape too.
    for (method, path, body, status) in [
        (
            "POST",
            format!("/v1/conferences/{id}/join"),
            vec![b' '; 20_000],
            413,
        ),
        ("GET", format!("/v1/conferences/{id}/join"), vec![], 405),
        (
            "POST",
            "/v1/conferences/%ff%fe/join".to_owned(),
            b"{}".to_vec(),
            400,
        ),
        ("DELETE", "/v1/conferences".to_owned(), vec![], 405),
        ("GET", "/nothing/here".to_owned(), vec![], 404),
    ] {
        let r = request_raw(
            method,
            &format!("{router}{path}"),
            None,
            Some(ACME),
            Some(body),
        )
        .await;
        assert_eq!(r.status, status, "{method} {path}");
        assert!(
            r.json()["error"]["code"].is_string(),
            "{method} {path}: {:?}",
            r.body
        );
    }
    // Display names are limited in bytes, as relays read them: 21
    // three-byte characters fit, 22 do not.
    let fits = "日".repeat(21);
    let r = request(
        "POST",
        &format!("{router}/v1/conferences/{id}/join"),
        Some("127.0.0.2"),
        None,
        Some(json!({ "passcode": conf["passcode"], "display_name": fits })),
    )
    .await;
    assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
    let claims = residency_relay::ticket::peek(r.json()["ticket"].as_str().unwrap()).unwrap();
    assert_eq!(claims.display_name, fits);
    let r = request(
        "POST",
        &format!("{router}/v1/conferences/{id}/join"),
        Some("127.0.0.2"),
        None,
        Some(json!({ "passcode": conf["passcode"], "display_name": "日".repeat(22) })),
    )
    .await;
    assert_eq!(r.status, 400);
    // A busy relay's report, far beyond the API's 16 KiB, is taken.
    let conferences: Vec<_> = (0..2000)
        .map(|i| json!({ "id": format!("eu-{:a>26}", i.to_string().replace(|ch: char| ch.is_ascii_digit(), "b")), "participants": 1, "bytes_in": 1, "bytes_out": 1 }))
        .collect();
    let report = json!({ "cert_sha256": "00", "participants": 2000, "bitrate_bps": 0, "draining": false, "conferences": conferences, "ack": 0, "epoch": 0 });
    assert!(report.to_string().len() > 100_000);
    let r = request(
        "POST",
        &format!("{router_relays}/v1/relays/de-ber-1/report"),
        None,
        Some("Bearer dev-relay-de-ber-1"),
        Some(report),
    )
    .await;
    assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
    let r = request("GET", &format!("{router}/healthz"), None, None, None).await;
    assert_eq!(r.status, 200);
    assert_eq!(
        request("GET", &format!("{router}/readyz"), None, None, None)
            .await
            .status,
        200
    );

    let metrics = String::from_utf8_lossy(
        &request("GET", &format!("{router}/metrics"), None, None, None)
            .await
            .body,
    )
    .into_owned();
    assert!(metrics.contains("rr_router_joins_total{jurisdiction=\"eu\",outcome=\"ticket\",router=\"de-fra-router\"} 2"), "{metrics}");
    assert!(metrics.contains("rr_router_join_seconds_bucket"));
    for secret in [
        id,
        joined.participant_id.as_str(),
        "127.0.0",
        "participant at",
        conf["passcode"].as_str().unwrap(),
    ] {
        assert!(!metrics.contains(secret), "metrics contain {secret}");
    }
    c.shutdown().await;
}

#[test]
fn relays_report_only_to_routers_of_their_own_jurisdictions() {
    let c = Cluster::new(|t| t);
    let links = |relay: &str| {
        let idx = c.policy.relay_idx(relay).unwrap();
        let mut l: Vec<(String, Vec<String>)> =
            residency_relay::relay::RouterLink::for_relay(&c.policy, idx)
                .into_iter()
                .map(|l| (l.url, l.jurisdictions))
                .collect();
        l.sort();
        l
    };
    let (de, us, ch) = (
        c.relay_url("de-fra-router"),
        c.relay_url("us-nyc-router"),
        c.relay_url("ch-zrh-router"),
    );
    // Frankfurt: only the German router (eu, de, global).
    assert_eq!(
        links("de-fra-1"),
        vec![(de.clone(), vec!["eu".into(), "de".into(), "global".into()])]
    );
    // New York: the US router for us, the German one for global only.
    let mut want = vec![
        (de.clone(), vec!["global".to_owned()]),
        (us, vec!["us".to_owned()]),
    ];
    want.sort();
    assert_eq!(links("us-nyc-1"), want);
    let mut want = vec![(de, vec!["global".to_owned()]), (ch, vec!["ch".to_owned()])];
    want.sort();
    assert_eq!(links("ch-zrh-1"), want);
}
