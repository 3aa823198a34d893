//! Live policy reload under a loopback call: the admin endpoints of routers
//! and relays and SIGHUP; an invalid config is refused with every problem
//! and the old policy stays; a relay whose country an edit takes out of a
//! conference's jurisdiction hands that conference's participants to a relay
//! inside it while the call goes on. Clients at 127.0.0.2 (Germany) and
//! .4 (Ireland).

mod support;

use std::time::Duration;

use residency_relay::client::session::Session;
use residency_relay::client::{Client, ClientError};
use residency_relay::ticket::{self, Claims, Grants, TicketError};
use residency_relay::wire::control::TrackKind;
use residency_relay::wire::datagram::TrackId;
use residency_relay::wire::{GOING_AWAY_MOVED, close_code};
use serde_json::{Value, json};
use support::cluster::{
    ACME, ADMIN, Cluster, create, going_away, hear, join_from, open_conference, request, session,
};

/// The edit under test: Frankfurt's relay is declared to be in the US (so
/// no longer inside `eu`), and the EU default relay becomes Berlin's.
fn frankfurt_to_us(text: &str) -> String {
    let edited = text
        .replace("eu = \"de-fra-1\"", "eu = \"de-ber-1\"")
        .replacen(
            "# sha256(\"dev-relay-de-fra-1\")\ncountry = \"DE\"",
            "# sha256(\"dev-relay-de-fra-1\")\ncountry = \"US\"",
            1,
        );
    assert_ne!(edited, text, "the dev config changed shape");
    edited
}

/// A new tenant, to show tenants reload too (key "globex-key").
fn with_globex(text: &str) -> String {
    let hash = hex::encode(residency_relay::router::ids::sha256("globex-key"));
    format!(
        "{text}\n[[tenant]]\nid = \"globex\"\nplan = \"business\"\napi_key_sha256 = \"{hash}\"\n"
    )
}

/// Two mistakes at once: an unknown country and a tenant on an unknown plan.
fn broken(text: &str) -> String {
    let edited = text.replacen(
        "# sha256(\"dev-relay-de-fra-1\")\ncountry = \"DE\"",
        "# sha256(\"dev-relay-de-fra-1\")\ncountry = \"XX\"",
        1,
    );
    assert_ne!(edited, text);
    format!(
        "{edited}\n[[tenant]]\nid = \"initech\"\nplan = \"platinum\"\napi_key_sha256 = \"{}\"\n",
        "00".repeat(32)
    )
}

/// A call of Anna (Frankfurt) and Aoife (Dublin) in an EU conference, each
/// publishing audio the other receives over the Frankfurt–Dublin link.
struct Call {
    cluster: Cluster,
    router: String,
    conference: String,
    passcode: String,
    anna: Session,
    aoife: Session,
    anna_track: TrackId,
    aoife_track: TrackId,
    /// Whether Anna is subscribed to Aoife's track, and the other way round.
    anna_subscribed: bool,
    aoife_subscribed: bool,
}

async fn call() -> Call {
    let c = Cluster::running(
        "de-fra-router",
        &["de-fra-1", "ie-dub-1", "nl-ams-1", "us-nyc-1"],
    )
    .await;
    let router = c.url("de-fra-router");
    let conf = open_conference(&router, "eu").await;
    let conference = conf["id"].as_str().unwrap().to_owned();
    let mut anna = session(&router, &conf, "Anna", "127.0.0.2").await;
    let mut aoife = session(&router, &conf, "Aoife", "127.0.0.4").await;
    assert_eq!(anna.joined.relay_id, "de-fra-1");
    assert_eq!(aoife.joined.relay_id, "ie-dub-1");
    let anna_track = anna.publish(TrackKind::Audio, "opus").await.unwrap();
    let aoife_track = aoife.publish(TrackKind::Audio, "opus").await.unwrap();
    let mut call = Call {
        cluster: c,
        router,
        conference,
        passcode: conf["passcode"].as_str().unwrap().to_owned(),
        anna,
        aoife,
        anna_track,
        aoife_track,
        anna_subscribed: false,
        aoife_subscribed: false,
    };
    call.both_hear_each_other().await;
    call
}

impl Call {
    /// Anna (or Aoife) was told to go: she rejoins through the router and
    /// lands on one of `allowed`; the other never moved; both hear each
    /// other again.
    async fn rejoins(&mut self, anna: bool, allowed: &[&str]) {
        let (mover, stayer) = if anna {
            (&mut self.anna, &self.aoife)
        } else {
            (&mut self.aoife, &self.anna)
        };
        let republished = mover.recover(Duration::from_secs(20)).await.unwrap();
        let now_on = mover.joined.relay_id.clone();
        assert!(allowed.contains(&now_on.as_str()), "moved to {now_on}");
        assert_eq!(stayer.moves, 0);
        // A new connection with a new track: both subscribe afresh.
        if anna {
            self.anna_track = republished[0];
        } else {
            self.aoife_track = republished[0];
        }
        self.anna_subscribed = false;
        self.aoife_subscribed = false;
        self.both_hear_each_other().await;
    }

    async fn both_hear_each_other(&mut self) {
        let (a, b) = (self.anna_track, self.aoife_track);
        hear(
            &mut self.anna,
            &mut self.aoife,
            a,
            &mut self.aoife_subscribed,
        )
        .await;
        hear(
            &mut self.aoife,
            &mut self.anna,
            b,
            &mut self.anna_subscribed,
        )
        .await;
    }

    fn relay_http(&self, id: &str) -> String {
        let p = &self.cluster.policy;
        format!("http://{}", p.relay(p.relay_idx(id).unwrap()).http_addr)
    }

    async fn reload_router(&self, auth: &str) -> (u16, Value) {
        let r = request(
            "POST",
            &format!("{}/v1/admin/reload", self.router),
            None,
            Some(auth),
            None,
        )
        .await;
        (r.status, r.json())
    }

    async fn reload_relay(&self, id: &str, auth: &str) -> (u16, Value) {
        let r = request(
            "POST",
            &format!("{}/v1/admin/reload", self.relay_http(id)),
            None,
            Some(auth),
            None,
        )
        .await;
        (r.status, r.json())
    }

    fn write_config(&self, edit: impl Fn(&str) -> String) -> String {
        let original = std::fs::read_to_string(&self.cluster.config).unwrap();
        std::fs::write(&self.cluster.config, edit(&original)).unwrap();
        original
    }

    async fn router_metrics(&self) -> String {
        let r = request("GET", &format!("{}/metrics", self.router), None, None, None).await;
        String::from_utf8_lossy(&r.body).into_owned()
    }
}

/// The value of `name`'s sample whose labels include `label` (e.g.
/// `outcome="applied"`), if exported.
fn find(text: &str, name: &str, label: &str) -> Option<f64> {
    text.lines()
        .filter(|l| l.starts_with(&format!("{name}{{")) && l.contains(label))
        .filter_map(|l| l.rsplit(' ').next()?.parse().ok())
        .next()
}

/// Like [`find`], failing when the sample is not exported.
fn labelled(text: &str, name: &str, label: &str) -> f64 {
    find(text, name, label).unwrap_or_else(|| panic!("no sample {name}{{{label}}}"))
}

/// A ticket for `conference` at `relay`, signed with the Frankfurt router's key.
fn ticket_for(conference: &str, relay: &str) -> String {
    ticket_issued(conference, relay, residency_relay::clock::unix_now())
}

/// Likewise, issued at `issued_at` (unix seconds).
fn ticket_issued(conference: &str, relay: &str, issued_at: u64) -> String {
    mint("dev-ticket.key", "eu", conference, relay, issued_at)
}

/// A ticket signed with `config/<key>` for `jurisdiction`.
fn mint(key: &str, jurisdiction: &str, conference: &str, relay: &str, issued_at: u64) -> String {
    let key = std::fs::read_to_string(support::repo().join("config").join(key)).unwrap();
    let key = ticket::parse_signing_key(key.trim()).unwrap();
    let now = residency_relay::clock::unix_now();
    ticket::sign(
        &Claims {
            e2ee: false,
            conference: conference.to_owned(),
            jurisdiction: jurisdiction.into(),
            relay: relay.into(),
            participant: "p-reload-probe".into(),
            display_name: "Probe".into(),
            grants: Grants {
                publish: true,
                subscribe: true,
                moderate: false,
            },
            issued_at,
            expires_at: now + 60,
            nonce: ticket::new_nonce().unwrap(),
        },
        &key,
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_router_reload_moves_a_conference_off_a_relay_edited_out_of_its_jurisdiction() {
    let mut call = call().await;
    let original = std::fs::read_to_string(&call.cluster.config).unwrap();

    // Only the operator may reload, at the router and at the relay.
    assert_eq!(call.reload_router(ACME).await.0, 401);
    assert_eq!(call.reload_relay("de-fra-1", ADMIN).await.0, 401);

    // A broken config: refused with every problem; the old policy stays.
    call.write_config(broken);
    let (status, body) = call.reload_router(ADMIN).await;
    assert_eq!(status, 422, "{body}");
    assert_eq!(body["error"]["code"], "invalid_config");
    let problems = body["error"]["problems"].as_array().unwrap();
    let text = body.to_string();
    assert!(problems.len() >= 2, "{body}");
    assert!(text.contains("XX"), "the bad country is named: {body}");
    assert!(
        text.contains("platinum"),
        "the unknown plan is named: {body}"
    );
    let (status, body) = call
        .reload_relay("de-fra-1", "Bearer dev-relay-de-fra-1")
        .await;
    assert_eq!(status, 422, "{body}");
    assert!(body.to_string().contains("platinum"), "{body}");
    call.both_hear_each_other().await;
    let metrics = call.router_metrics().await;
    assert_eq!(
        labelled(&metrics, "rr_router_reloads_total", "outcome=\"rejected\""),
        1.0
    );

    // Frankfurt's relay now counts as American, and a tenant is added.
    std::fs::write(
        &call.cluster.config,
        with_globex(&frankfurt_to_us(&original)),
    )
    .unwrap();
    let (status, body) = call.reload_router(ADMIN).await;
    assert_eq!(status, 200, "{body}");
    let changes = body["changes"].to_string();
    assert!(
        changes.contains("relay de-fra-1: country \\\"DE\\\" -> \\\"US\\\""),
        "{body}"
    );
    assert!(changes.contains("tenant globex added"), "{body}");

    // The router tells Frankfurt to move the EU conference: Anna is told
    // to go and rejoins inside the EU (never New York); Aoife stays put.
    going_away(&mut call.anna, GOING_AWAY_MOVED).await;
    tokio::time::timeout(Duration::from_secs(10), call.anna.client().closed())
        .await
        .expect("the moved connection closes");
    assert_eq!(
        call.anna.client().close_code().map(|c| c as u32),
        Some(close_code::MOVED)
    );
    assert!(call.anna.movable());
    call.rejoins(true, &["ie-dub-1", "nl-ams-1"]).await;
    let relay = call.cluster.relay_metrics("de-fra-1").await;
    assert_eq!(
        labelled(
            &relay,
            "rr_relay_moderation_disconnects_total",
            "reason=\"moved\""
        ),
        1.0
    );
    // The signed residency report keeps what was true while Frankfurt
    // carried the call (Germany, inside the EU) and adds what the reload
    // made true while it still did for a moment (declared US, outside).
    let deadline = tokio::time::Instant::now() + Duration::from_secs(15);
    loop {
        let r = request(
            "GET",
            &format!(
                "{}/v1/conferences/{}/residency",
                call.router, call.conference
            ),
            None,
            Some(ACME),
            None,
        )
        .await;
        assert_eq!(r.status, 200);
        let report = r.json();
        let relays = report["report"]["relays"].as_array().unwrap().clone();
        let entry = |id: &str| relays.iter().find(|r| r["id"] == id).cloned();
        let frankfurt = entry("de-fra-1").unwrap();
        if frankfurt["countries"] == json!(["DE", "US"]) {
            assert_eq!(frankfurt["country"], "DE", "{frankfurt}");
            assert_eq!(frankfurt["inside_jurisdiction"], false, "{frankfurt}");
            let dublin = entry("ie-dub-1").unwrap();
            assert_eq!(dublin["countries"], json!(["IE"]), "{dublin}");
            assert_eq!(dublin["inside_jurisdiction"], true, "{dublin}");
            break;
        }
        assert_eq!(frankfurt["countries"], json!(["DE"]), "{frankfurt}");
        assert!(
            tokio::time::Instant::now() < deadline,
            "the move never reached the report: {frankfurt}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let metrics = call.router_metrics().await;
    assert!(
        labelled(
            &metrics,
            "rr_router_residency_moves_total",
            "jurisdiction=\"eu\""
        ) >= 1.0
    );
    assert_eq!(
        labelled(&metrics, "rr_router_reloads_total", "outcome=\"applied\""),
        1.0
    );

    // New joins from Germany go inside the EU, and the new tenant works.
    let joined = join_from(&call.router, &call.conference, &call.passcode, "127.0.0.2")
        .await
        .unwrap();
    assert!(
        joined.relay_id == "ie-dub-1" || joined.relay_id == "nl-ams-1",
        "{}",
        joined.relay_id
    );
    create(
        &call.router,
        "Bearer globex-key",
        json!({ "residency": "eu", "waiting_room": false }),
    )
    .await;

    // The relay reloads too: it no longer trusts EU tickets at all.
    let (status, body) = call
        .reload_relay("de-fra-1", "Bearer dev-relay-de-fra-1")
        .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(
        refused(
            &call.cluster,
            "de-fra-1",
            "127.0.0.2",
            &ticket_for(&call.conference, "de-fra-1")
        )
        .await,
        TicketError::ForeignJurisdiction.wire_code()
    );
    call.both_hear_each_other().await;
    call.cluster.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_relay_reloaded_alone_moves_out_what_it_may_no_longer_carry() {
    let mut call = call().await;
    // A ticket Frankfurt admitted before the reload: its nonce stays seen.
    let used = ticket_for(&call.conference, "de-fra-1");
    let cert = request(
        "GET",
        &format!("{}/cert", call.relay_http("de-fra-1")),
        None,
        None,
        None,
    )
    .await
    .json();
    let cert = cert["sha256"].as_str().unwrap().to_owned();
    let p = call.cluster.policy.clone();
    let frankfurt = p.relay(p.relay_idx("de-fra-1").unwrap()).quic_addr;
    let probe = Client::connect("127.0.0.2:0".parse().unwrap(), frankfurt, &cert, &used)
        .await
        .unwrap();
    probe.leave().await;

    // Dublin's relay is edited out of the EU (into the UK). The routers are
    // not reloaded. Frankfurt reloads first: it closes its link to Dublin,
    // now outside the EU as far as it knows, and keeps Anna.
    let original = std::fs::read_to_string(&call.cluster.config).unwrap();
    let edited = original.replacen(
        "# sha256(\"dev-relay-ie-dub-1\")\ncountry = \"IE\"",
        "# sha256(\"dev-relay-ie-dub-1\")\ncountry = \"GB\"",
        1,
    );
    assert_ne!(edited, original, "the dev config changed shape");
    std::fs::write(&call.cluster.config, edited).unwrap();
    let frankfurt_metrics = format!("{}/metrics", call.relay_http("de-fra-1"));
    // The Frankfurt–Dublin link is up.
    await_metric(
        &frankfurt_metrics,
        "rr_relay_cascade_links",
        "relay=\"de-fra-1\"",
        1.0,
    )
    .await;
    let (status, body) = call
        .reload_relay("de-fra-1", "Bearer dev-relay-de-fra-1")
        .await;
    assert_eq!(status, 200, "{body}");
    await_metric(
        &frankfurt_metrics,
        "rr_relay_cascade_links",
        "relay=\"de-fra-1\"",
        0.0,
    )
    .await;
    assert_eq!(call.anna.client().close_code(), None);

    // Then Dublin reloads: it moves Aoife itself; the router (old policy)
    // sends her back inside the EU, never to Dublin again.
    let (status, body) = call
        .reload_relay("ie-dub-1", "Bearer dev-relay-ie-dub-1")
        .await;
    assert_eq!(status, 200, "{body}");
    assert!(
        body["changes"]
            .to_string()
            .contains("relay ie-dub-1: country \\\"IE\\\" -> \\\"GB\\\""),
        "{body}"
    );
    going_away(&mut call.aoife, GOING_AWAY_MOVED).await;
    call.rejoins(false, &["de-fra-1", "nl-ams-1"]).await;
    let dublin = call.cluster.relay_metrics("ie-dub-1").await;
    assert_eq!(
        labelled(
            &dublin,
            "rr_relay_moderation_disconnects_total",
            "reason=\"moved\""
        ),
        1.0
    );
    assert_eq!(
        labelled(&dublin, "rr_relay_reloads_total", "outcome=\"applied\""),
        1.0
    );
    // Nobody is left on Dublin's relay (Aoife was its only participant),
    // and it no longer counts EU participants at all.
    assert_eq!(
        labelled(&dublin, "rr_relay_connections", "relay=\"ie-dub-1\""),
        0.0
    );
    assert_eq!(
        find(&dublin, "rr_relay_participants", "jurisdiction=\"eu\""),
        None
    );

    // Frankfurt, reloaded, still refuses the ticket it admitted before as
    // a replay.
    assert_eq!(
        refused(&call.cluster, "de-fra-1", "127.0.0.2", &used).await,
        TicketError::Replayed.wire_code()
    );
    // And a ticket issued before the relay started (whose nonce it could
    // not have seen) is still refused after the reload.
    let old = ticket_issued(
        &call.conference,
        "de-fra-1",
        residency_relay::clock::unix_now() - residency_relay::ticket::CLOCK_SKEW_SECS - 120,
    );
    assert_eq!(
        refused(&call.cluster, "de-fra-1", "127.0.0.2", &old).await,
        TicketError::IssuedBeforeStart.wire_code()
    );
    call.both_hear_each_other().await;
    call.cluster.shutdown().await;
}

/// Presents `ticket` to relay `relay` of `c`'s inventory from the address
/// `from`; the code it was refused with.
async fn refused(c: &Cluster, relay: &str, from: &str, ticket: &str) -> u16 {
    let p = &c.policy;
    let r = p.relay(p.relay_idx(relay).unwrap());
    let cert = request(
        "GET",
        &format!("http://{}/cert", r.http_addr),
        None,
        None,
        None,
    )
    .await
    .json();
    let answer = Client::connect(
        format!("{from}:0").parse().unwrap(),
        r.quic_addr,
        cert["sha256"].as_str().unwrap(),
        ticket,
    )
    .await;
    match answer {
        Err(ClientError::Refused { code, .. }) => code,
        Err(other) => panic!("{other}"),
        Ok(_) => panic!("{relay} took the ticket"),
    }
}

/// Polls `url` until its metrics show `label` of `name` at `value`.
async fn await_metric(url: &str, name: &str, label: &str, value: f64) -> String {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(15);
    loop {
        let r = residency_relay::http_client::request(
            "GET",
            url,
            None,
            &[],
            None,
            Duration::from_secs(2),
        )
        .await;
        if let Ok(r) = r {
            let text = String::from_utf8_lossy(&r.body).into_owned();
            if labelled(&text, name, label) == value {
                return text;
            }
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "{name}{{{label}}} never reached {value} at {url}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Stops the child process when dropped.
struct Child(std::process::Child);

impl Drop for Child {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn hangup(child: &Child) {
    let status = std::process::Command::new("kill")
        .args(["-HUP", &child.0.id().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sighup_reloads_a_running_router_and_relay() {
    let mut c = Cluster::new(|t| t);
    c.release("de-fra-router");
    c.release("de-fra-1");
    let original = std::fs::read_to_string(&c.config).unwrap();
    let bin = env!("CARGO_BIN_EXE_residency-relay");
    let config = c.config.to_str().unwrap().to_owned();
    let log_path = c.dir.path().join("router.log");
    let router = Child(
        std::process::Command::new(bin)
            .args(["router", "--config", &config, "--id", "de-fra-router"])
            .env_remove("RUST_LOG")
            .stderr(std::fs::File::create(&log_path).unwrap())
            .spawn()
            .unwrap(),
    );
    let created_lines = || {
        std::fs::read_to_string(&log_path)
            .unwrap()
            .matches("conference created")
            .count()
    };
    let relay = Child(
        std::process::Command::new(bin)
            .args(["relay", "--config", &config, "--id", "de-fra-1"])
            .env("RESIDENCY_RELAY_CREDENTIAL", "dev-relay-de-fra-1")
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap(),
    );
    let url = c.url("de-fra-router");
    let p = &c.policy;
    let relay_metrics = format!(
        "http://{}/metrics",
        p.relay(p.relay_idx("de-fra-1").unwrap()).http_addr
    );
    await_metric(
        &format!("{url}/metrics"),
        "rr_router_reloads_total",
        "outcome=\"applied\"",
        0.0,
    )
    .await;
    await_metric(
        &relay_metrics,
        "rr_relay_reloads_total",
        "outcome=\"applied\"",
        0.0,
    )
    .await;
    let conferences = format!("{url}/v1/conferences");
    let create = || {
        request(
            "POST",
            &conferences,
            None,
            Some("Bearer globex-key"),
            Some(json!({ "residency": "eu" })),
        )
    };
    assert_eq!(create().await.status, 401);
    // At the config's level (info), a conference's creation is logged.
    let acme = request(
        "POST",
        &conferences,
        None,
        Some(ACME),
        Some(json!({ "residency": "eu" })),
    )
    .await;
    assert_eq!(acme.status, 201);
    assert_eq!(created_lines(), 1);

    // A broken config first: both refuse it and keep running the old one.
    std::fs::write(&c.config, broken(&original)).unwrap();
    hangup(&router);
    hangup(&relay);
    await_metric(
        &format!("{url}/metrics"),
        "rr_router_reloads_total",
        "outcome=\"rejected\"",
        1.0,
    )
    .await;
    await_metric(
        &relay_metrics,
        "rr_relay_reloads_total",
        "outcome=\"rejected\"",
        1.0,
    )
    .await;
    assert_eq!(create().await.status, 401);

    // Then a new tenant and a quieter log level: the router takes both on
    // SIGHUP.
    std::fs::write(
        &c.config,
        format!("{}\n[logging]\nlevel = \"warn\"\n", with_globex(&original)),
    )
    .unwrap();
    hangup(&router);
    hangup(&relay);
    await_metric(
        &format!("{url}/metrics"),
        "rr_router_reloads_total",
        "outcome=\"applied\"",
        1.0,
    )
    .await;
    await_metric(
        &relay_metrics,
        "rr_relay_reloads_total",
        "outcome=\"applied\"",
        1.0,
    )
    .await;
    assert_eq!(create().await.status, 201);
    // Created, but no longer logged at `warn`.
    assert_eq!(created_lines(), 1);
    drop(router);
    drop(relay);
}

/// `text` without the `[[relay]]` block of `id`.
fn without_relay(text: &str, id: &str) -> String {
    let at = text.find(&format!("id = \"{id}\"")).unwrap();
    let start = text[..at].rfind("[[relay]]").unwrap();
    let end = text[at..].find("\n[[").map_or(text.len(), |e| at + e + 1);
    format!("{}{}", &text[..start], &text[end..])
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_relay_removed_from_the_inventory_gives_up_its_conferences() {
    let c = Cluster::running("ch-zrh-router", &["ch-zrh-1"]).await;
    let router = c.url("ch-zrh-router");
    let conf = open_conference(&router, "ch").await;
    let id = conf["id"].as_str().unwrap().to_owned();
    let mut heidi = session(&router, &conf, "Heidi", "127.0.0.5").await;
    assert_eq!(heidi.joined.relay_id, "ch-zrh-1");

    // Zurich's relay leaves the inventory; only the router reloads. It
    // still takes the relay's reports (under its last credential), tells it
    // to give the conference up, and has no relay left in `ch` for her.
    let original = std::fs::read_to_string(&c.config).unwrap();
    std::fs::write(&c.config, without_relay(&original, "ch-zrh-1")).unwrap();
    let before_reload = residency_relay::clock::unix_now();
    let r = request(
        "POST",
        &format!("{router}/v1/admin/reload"),
        None,
        Some(ADMIN),
        None,
    )
    .await;
    assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
    assert!(
        r.json()["changes"]
            .to_string()
            .contains("relay ch-zrh-1 removed")
    );
    going_away(&mut heidi, GOING_AWAY_MOVED).await;
    tokio::time::timeout(Duration::from_secs(10), heidi.client().closed())
        .await
        .expect("the moved connection closes");
    let e = heidi.recover(Duration::from_secs(2)).await.unwrap_err();
    assert!(e.to_string().contains("no_relay_in_jurisdiction"), "{e}");
    let p = &c.policy;
    let http = p.relay(p.relay_idx("ch-zrh-1").unwrap()).http_addr;
    let relay = c.relay_metrics("ch-zrh-1").await;
    assert_eq!(
        labelled(
            &relay,
            "rr_relay_moderation_disconnects_total",
            "reason=\"moved\""
        ),
        1.0
    );
    // Nobody is left on it, and a ticket issued before the move (the
    // relay has not reloaded, so it still trusts `ch`) is refused there.
    assert_eq!(
        labelled(&relay, "rr_relay_connections", "relay=\"ch-zrh-1\""),
        0.0
    );
    let before_move = mint("dev-ch-router.key", "ch", &id, "ch-zrh-1", before_reload);
    assert_eq!(
        refused(&c, "ch-zrh-1", "127.0.0.5", &before_move).await,
        TicketError::Revoked.wire_code()
    );

    // The relay reloads too: it trusts nothing and reports draining.
    let r = request(
        "POST",
        &format!("http://{http}/v1/admin/reload"),
        None,
        Some("Bearer dev-relay-ch-zrh-1"),
        None,
    )
    .await;
    assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
    assert!(
        r.json()["restart_needed"]
            .to_string()
            .contains("no longer in the inventory"),
        "{}",
        String::from_utf8_lossy(&r.body)
    );
    let ready = request("GET", &format!("http://{http}/readyz"), None, None, None).await;
    assert_eq!(ready.status, 503);
    // Put back in the inventory, it asks to be restarted rather than
    // taking calls again half-configured.
    std::fs::write(&c.config, &original).unwrap();
    let r = request(
        "POST",
        &format!("http://{http}/v1/admin/reload"),
        None,
        Some("Bearer dev-relay-ch-zrh-1"),
        None,
    )
    .await;
    assert_eq!(r.status, 409, "{}", String::from_utf8_lossy(&r.body));
    assert!(
        r.json()["error"]["message"]
            .as_str()
            .unwrap()
            .contains("restart it")
    );
    c.shutdown().await;
}

/// The router's view: what a policy no longer allows of what relays report.
#[test]
fn the_registry_flags_relays_and_links_outside_under_the_policy_in_force() {
    use residency_relay::router::relays::{Misplaced, Registry};
    use residency_relay::wire::channel::{ConferenceLoad, LinkLoad, RelayReport};
    use std::time::Instant;

    let c = Cluster::new(|t| frankfurt_to_us(&t));
    let policy = &c.policy;
    let served = &policy.router("de-fra-router").unwrap().jurisdictions;
    let conference = "eu-aaaaaaaaaaaaaaaaaaaaaaaaaa".to_owned();
    let report = |peer: Option<&str>| RelayReport {
        cert_sha256: "00".repeat(32),
        next_cert_sha256: None,
        participants: 1,
        bitrate_bps: 0,
        draining: false,
        conferences: vec![ConferenceLoad {
            id: conference.clone(),
            participants: 1,
            bytes_in: 0,
            bytes_out: 0,
        }],
        links: peer
            .map(|p| LinkLoad {
                conference: conference.clone(),
                peer: p.to_owned(),
                bytes_in: 0,
                bytes_out: 0,
            })
            .into_iter()
            .collect(),
        events: Vec::new(),
        ack: 0,
        epoch: 0,
        track_base: 0,
    };
    let registry = Registry::new();
    let now = Instant::now();
    registry.record("de-fra-1", report(Some("ie-dub-1")), now);
    registry.record("ie-dub-1", report(Some("de-fra-1")), now);
    registry.record("nl-ams-1", report(None), now);
    let mut found = registry.misplaced(policy, served, now);
    found.sort_by_key(|m| format!("{m:?}"));
    assert_eq!(
        found,
        vec![
            // Dublin (inside) must close its link to Frankfurt (outside) …
            Misplaced::Link {
                conference: conference.clone(),
                relay: "ie-dub-1".into(),
                peer: "de-fra-1".into(),
            },
            // … and Frankfurt must give the conference up.
            Misplaced::Relay {
                conference: conference.clone(),
                relay: "de-fra-1".into(),
            },
        ]
    );
    // Not again within the retry interval; again after it while it remains.
    assert!(
        registry
            .misplaced(policy, served, now + Duration::from_secs(1))
            .is_empty()
    );
    let later = now + Duration::from_secs(9);
    registry.record("de-fra-1", report(Some("ie-dub-1")), later);
    registry.record("ie-dub-1", report(Some("de-fra-1")), later);
    assert_eq!(registry.misplaced(policy, served, later).len(), 2);
    // Reports that went stale count for nothing.
    assert!(
        registry
            .misplaced(policy, served, later + Duration::from_secs(20))
            .is_empty()
    );
}

/// Relays whose track id prefixes clash (one started before an inventory
/// change) are never linked; others are.
#[test]
fn relays_with_the_same_track_prefix_are_not_linked() {
    use residency_relay::router::relays::Registry;
    use residency_relay::wire::channel::{ConferenceLoad, RelayReport};
    use std::time::Instant;

    let c = Cluster::new(|t| t);
    let policy = &c.policy;
    let report = |conference: &str, base: u32| RelayReport {
        cert_sha256: "00".repeat(32),
        next_cert_sha256: None,
        participants: 1,
        bitrate_bps: 0,
        draining: false,
        conferences: vec![ConferenceLoad {
            id: conference.to_owned(),
            participants: 1,
            bytes_in: 0,
            bytes_out: 0,
        }],
        links: Vec::new(),
        events: Vec::new(),
        ack: 0,
        epoch: 0,
        track_base: base,
    };
    let registry = Registry::new();
    let now = Instant::now();
    let conference = "eu-bbbbbbbbbbbbbbbbbbbbbbbbbb";
    registry.record("de-fra-1", report(conference, 1 << 20), now);
    registry.record("ie-dub-1", report(conference, 1 << 20), now);
    assert!(registry.plan_links(policy, now).is_empty());
    let later = now + Duration::from_secs(9);
    registry.record("de-fra-1", report(conference, 1 << 20), later);
    registry.record("ie-dub-1", report(conference, 2 << 20), later);
    let planned = registry.plan_links(policy, later);
    assert_eq!(planned.len(), 1);
    assert_eq!(policy.relay(planned[0].1).id, "de-fra-1");
    assert_eq!(policy.relay(planned[0].2).id, "ie-dub-1");
}
