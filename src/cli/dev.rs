//! `residency-relay dev [--demo]`: every router and relay of a config in one
//! process on loopback, with copy-paste commands; `--demo` runs a scripted
//! EU call and prints where everyone went and what each relay carried.
//!
//! Credentials follow the dev config's conventions: tenant `<t>`'s API key
//! is `dev-<t>-key`, relay `<r>`'s credential `dev-relay-<r>`, the admin
//! token `dev-admin-key`. A config whose hashes do not match them still
//! runs, but those relays cannot register (they are reported).

use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use serde_json::json;
use tokio::sync::watch;

use crate::client::Client;
use crate::client::join::{self, Credential};
use crate::client::synthetic::{self, ReceiveStats};
use crate::http_client;
use crate::policy::{JurisdictionIdx, Policy};
use crate::wire::control::TrackKind;
use crate::wire::datagram::{Flags, HEADER_LEN, MediaHeader, TrackId};
use std::process::ExitCode;

use super::args::DevArgs;

fn dev_secret_matches(hash: &[u8; 32], secret: &str) -> bool {
    crate::router::ids::secret_matches(hash, secret)
}

/// The dev API key of `tenant`, if the config uses the convention.
fn tenant_key(policy: &Policy, tenant: &str) -> Option<String> {
    let t = policy.tenant(tenant)?;
    let key = format!("dev-{tenant}-key");
    dev_secret_matches(&t.api_key_sha256, &key).then_some(key)
}

/// Writes, beside `config`, a copy in which the router serving `eu` keeps
/// its records in the PostgreSQL database `store`, and a second replica of
/// it (id `<id>-b`, on 127.0.2.4 with the same ports) shares them; returns
/// the copy's path (`<name>.replicas.toml`).
pub(super) fn replicated_config(config: &Path, store: &str) -> Result<PathBuf, String> {
    let text = std::fs::read_to_string(config)
        .map_err(|e| format!("cannot read {}: {e}", config.display()))?;
    let mut doc: toml::Table =
        toml::from_str(&text).map_err(|e| format!("{}: {e}", config.display()))?;
    let routers = doc
        .get_mut("router")
        .and_then(toml::Value::as_array_mut)
        .ok_or_else(|| format!("{} has no [[router]]", config.display()))?;
    let eu = routers
        .iter()
        .position(|r| {
            r.get("jurisdictions")
                .and_then(toml::Value::as_array)
                .is_some_and(|js| js.iter().any(|j| j.as_str() == Some("eu")))
        })
        .ok_or_else(|| format!("no router of {} serves eu", config.display()))?;
    let router = &mut routers[eu];
    let country = router
        .get("country")
        .cloned()
        .ok_or("the EU router has no country")?;
    let table = router.as_table_mut().ok_or("[[router]] is not a table")?;
    table.insert("store".into(), toml::Value::String(store.to_owned()));
    table.insert("store_country".into(), country);
    let mut replica = table.clone();
    let id = table
        .get("id")
        .and_then(toml::Value::as_str)
        .unwrap_or("router");
    replica.insert("id".into(), toml::Value::String(format!("{id}-b")));
    let listen = table
        .get("listen")
        .and_then(toml::Value::as_str)
        .and_then(|l| l.parse::<std::net::SocketAddr>().ok())
        .ok_or("the EU router's listen is not ip:port")?;
    let moved = std::net::SocketAddr::new([127, 0, 2, 4].into(), listen.port());
    replica.insert("listen".into(), toml::Value::String(moved.to_string()));
    let scheme = if table.contains_key("tls_cert") {
        "https"
    } else {
        "http"
    };
    replica.insert(
        "url".into(),
        toml::Value::String(format!("{scheme}://{moved}")),
    );
    replica.remove("relay_url");
    // Its relay channel's own listener, if the EU router has one, moves too.
    if let Some(relay_listen) = table
        .get("relay_listen")
        .and_then(toml::Value::as_str)
        .and_then(|l| l.parse::<std::net::SocketAddr>().ok())
    {
        let moved = std::net::SocketAddr::new([127, 0, 2, 4].into(), relay_listen.port());
        replica.insert(
            "relay_listen".into(),
            toml::Value::String(moved.to_string()),
        );
        replica.insert(
            "relay_url".into(),
            toml::Value::String(format!("{scheme}://{moved}")),
        );
    }
    routers.insert(eu + 1, toml::Value::Table(replica));
    let name = config
        .file_stem()
        .and_then(|s| s.to_str())
        .unwrap_or("config");
    let out = config.with_file_name(format!("{name}.replicas.toml"));
    let body = toml::to_string(&doc).map_err(|e| e.to_string())?;
    std::fs::write(
        &out,
        format!(
            "# Written by `residency-relay dev --store`: {} with the EU router on PostgreSQL and a second replica.\n{body}",
            config.display()
        ),
    )
    .map_err(|e| format!("cannot write {}: {e}", out.display()))?;
    Ok(out)
}

/// Where `dev` writes its log lines (its console is for the summary).
pub(super) const LOG_FILE: &str = "data/dev.log";

pub(super) fn run(policy: Policy, demo: bool, log_console: bool) -> Result<(), String> {
    if log_console {
        crate::logging::init_as(policy.logging());
    } else {
        let l = policy.logging();
        crate::logging::init_to_file(l.json, &l.level, std::path::Path::new(LOG_FILE))?;
    }
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .map_err(|e| format!("cannot start the runtime: {e}"))?;
    runtime.block_on(serve(Arc::new(policy), demo, log_console))
}

async fn serve(policy: Arc<Policy>, demo: bool, log_console: bool) -> Result<(), String> {
    if policy.routers().is_empty() {
        return Err(format!(
            "{} has no [[router]]; dev needs at least one",
            policy.source().display()
        ));
    }
    let source = crate::policy::Source {
        config: policy.source().to_owned(),
        regions: None,
    };
    super::trust_routers_of(&policy)?;
    let (stop_tx, stop_rx) = watch::channel(false);
    let stopped = |mut rx: watch::Receiver<bool>| async move {
        let _ = rx.wait_for(|s| *s).await;
    };
    let mut tasks = Vec::new();
    // Every HTTP listener of the process shares its descriptor limit.
    let budget = crate::http_server::FdBudget::raise();
    let listeners = policy.routers().len()
        + policy
            .routers()
            .iter()
            .filter(|r| r.relay_listen.is_some())
            .count()
        // Each relay's HTTP and WebSocket listeners.
        + 2 * policy.relays().len();
    for r in policy.routers() {
        let mut settings = super::router::settings(policy.clone(), &r.id).await?;
        settings.http = budget.fit(&settings.http, listeners);
        // SIGHUP reloads every router and relay of the process.
        settings.source = Some(source.clone());
        settings.reload_on_sighup = true;
        let listener = crate::router::listen(r.listen)
            .map_err(|e| format!("router {}: cannot bind {}: {e}", r.id, r.listen))?;
        let rx = stop_rx.clone();
        tasks.push(tokio::spawn(async move {
            crate::router::run(listener, settings, stopped(rx))
                .await
                .map_err(|e| e.to_string())
        }));
    }
    for r in policy.relays() {
        let credential = format!("dev-relay-{}", r.id);
        let credential = r
            .credential_sha256
            .is_some_and(|h| dev_secret_matches(&h, &credential))
            .then_some(credential);
        if credential.is_none() {
            eprintln!(
                "relay {}: its credential_sha256 is not sha256(\"dev-relay-{}\"); it cannot register",
                r.id, r.id
            );
        }
        let mut settings = super::relay::settings(&policy, &r.id, 256, 2, credential)?;
        settings.http = budget.fit(&settings.http, listeners);
        settings.reload = Some(crate::relay::Reloading {
            source: source.clone(),
            policy: policy.clone(),
            on_sighup: true,
        });
        let socket = std::net::UdpSocket::bind(r.quic_addr)
            .map_err(|e| format!("relay {}: cannot bind {}: {e}", r.id, r.quic_addr))?;
        let http = crate::router::listen(r.http_addr)
            .map_err(|e| format!("relay {}: cannot bind {}: {e}", r.id, r.http_addr))?;
        settings.websocket = Some(super::relay::websocket(
            &policy,
            r,
            budget.fit(
                &crate::http_server::Limits::from_policy(policy.limits()),
                listeners,
            ),
        )?);
        let rx = stop_rx.clone();
        tasks.push(tokio::spawn(async move {
            crate::relay::run(socket, http, settings, stopped(rx))
                .await
                .map_err(|e| e.to_string())
        }));
    }
    wait_for_relays(&policy).await;
    print_banner(&policy);
    let outcome = if demo {
        run_demo(&policy).await
    } else {
        match browser_links(&policy).await {
            Ok(text) => println!("{text}"),
            Err(e) => println!("\nno demo call for the browser: {e}"),
        }
        if !log_console {
            println!("logs: {LOG_FILE} (--log-console writes them here instead)\n");
        }
        println!("Ctrl-C stops everything.\n");
        crate::signals::shutdown().await;
        Ok(())
    };
    let _ = stop_tx.send(true);
    for t in tasks {
        let _ = tokio::time::timeout(Duration::from_secs(5), t).await;
    }
    outcome
}

/// Waits (up to 5 s) until every router sees a healthy relay in each
/// jurisdiction it serves that has relays.
async fn wait_for_relays(policy: &Policy) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    'outer: while tokio::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(200)).await;
        for r in policy.routers() {
            let Ok(m) = http_client::request(
                "GET",
                &format!("{}/metrics", r.url),
                None,
                &[],
                None,
                Duration::from_secs(2),
            )
            .await
            else {
                continue 'outer;
            };
            let text = String::from_utf8_lossy(&m.body).into_owned();
            for j in &r.jurisdictions {
                let jurisdiction = policy.jurisdiction(*j);
                if jurisdiction.members.is_empty() {
                    continue;
                }
                let needle = format!("jurisdiction=\"{}\"", jurisdiction.id);
                let healthy = text
                    .lines()
                    .filter(|l| l.starts_with("rr_router_relays_healthy") && l.contains(&needle))
                    .any(|l| l.rsplit(' ').next().is_some_and(|v| v != "0"));
                if !healthy {
                    continue 'outer;
                }
            }
        }
        return;
    }
}

fn print_banner(policy: &Policy) {
    println!("\nresidency-relay dev: {}", policy.source().display());
    println!("\nrouters:");
    for r in policy.routers() {
        let served: Vec<&str> = r
            .jurisdictions
            .iter()
            .map(|j| policy.jurisdiction(*j).id.as_str())
            .collect();
        println!(
            "  {:<16} {} ({}) serves {}",
            r.id,
            r.url,
            r.country,
            served.join(", ")
        );
    }
    println!("\nrelays:");
    for r in policy.relays() {
        println!(
            "  {:<16} quic {} ({}), metrics http://{}/metrics",
            r.id, r.quic_addr, r.country, r.http_addr
        );
    }
    println!("\ntenants:");
    for t in policy.tenants() {
        let plan = policy.plan_of(t);
        match tenant_key(policy, &t.id) {
            Some(key) => println!("  {:<16} plan {:<10} API key {key}", t.id, plan.id),
            None => println!(
                "  {:<16} plan {:<10} (API key not the dev convention)",
                t.id, plan.id
            ),
        }
    }
    let Some(eu_router) = policy
        .jurisdiction_idx("eu")
        .and_then(|j| policy.router_for(j))
        .or_else(|| policy.routers().first())
    else {
        return;
    };
    let url = &eu_router.url;
    let shown = |p: &Path| {
        std::env::current_dir()
            .ok()
            .and_then(|cwd| p.strip_prefix(cwd).ok().map(Path::to_path_buf))
            .unwrap_or_else(|| p.to_path_buf())
            .display()
            .to_string()
    };
    let (cacert, ca) = match eu_router.tls_ca.as_deref() {
        Some(ca) if url.starts_with("https://") => (
            format!(" --cacert {}", shown(ca)),
            format!(" --ca {}", shown(ca)),
        ),
        _ => (String::new(), String::new()),
    };
    let exe = std::env::current_exe()
        .ok()
        .and_then(|p| {
            let cwd = std::env::current_dir().ok()?;
            Some(p.strip_prefix(&cwd).map(|r| r.to_path_buf()).unwrap_or(p))
        })
        .map_or_else(|| "residency-relay".to_owned(), |p| p.display().to_string());
    println!("\ntry it:");
    println!(
        "  curl -s{cacert} -X POST {url}/v1/conferences -H 'Authorization: Bearer dev-acme-key' -d '{{\"residency\": \"eu\", \"waiting_room\": false}}'"
    );
    println!(
        "  {exe} client subscribe{ca} --router {url} --conference ID --passcode PASSCODE --name Ada --bind 127.0.0.2:0 --duration 30   # a participant in Germany"
    );
    println!(
        "  {exe} client publish{ca} --router {url} --conference ID --passcode PASSCODE --name Bob --bind 127.0.0.3:0 --duration 20    # a participant in the US"
    );
    println!("  curl -s{cacert} {url}/v1/conferences/ID -H 'Authorization: Bearer HOST_TOKEN'");
    if let Some((cert, _)) = &eu_router.tls {
        match crate::tls::read_certs(cert).and_then(|c| crate::tls::spki_sha256_base64(&c[0])) {
            Ok(spki) => println!(
                "\nthe routers' HTTPS certificate ({}) is for development: browsers warn about it.\nChromium started with --ignore-certificate-errors-spki-list={spki} accepts it (and only it).",
                shown(cert)
            ),
            Err(e) => println!("\nthe routers' HTTPS certificate: {e}"),
        }
    }
}

/// Creates an end-to-end encrypted EU conference for the browser and
/// returns the two links to open (a host's, by invitation, and a guest's,
/// with the passcode). The conference secret is made here and goes only
/// into the links' fragments, which browsers never send to a server.
async fn browser_links(policy: &Policy) -> Result<String, String> {
    let EuTenant { router, key, .. } = eu_tenant(policy)?;
    let created = create_eu(&router.url, &key, true).await?;
    let secret = crate::client::e2ee::Secret::random()
        .map_err(|e| e.to_string())?
        .to_base64();
    let id = created.id;
    let passcode = created.passcode.unwrap_or_default();
    let invite = crate::http_client::request(
        "POST",
        &format!("{}/v1/conferences/{id}/invites", router.url),
        None,
        &[("authorization", &format!("Bearer {key}"))],
        Some(
            json!({ "display_name": "Host", "role": "host", "ttl_seconds": 86_400 })
                .to_string()
                .into_bytes(),
        ),
        Duration::from_secs(5),
    )
    .await
    .map_err(|e| format!("invitation failed: {e}"))?;
    let invite = invite.json()["invite"]
        .as_str()
        .ok_or("invitation refused")?
        .to_owned();
    let url = &router.url;
    Ok(format!(
        "\na call in your browser (Chromium, Chrome, Edge, Firefox or a WebKit browser; WebCodecs, and WebTransport or WebSocket), pinned to the EU:\n\
         \x20 host:  {url}/j/{id}#i={invite}&k={secret}\n\
         \x20 guest: {url}/j/{id}#p={passcode}&k={secret}\n\
         open both, in two tabs or two browsers, allow camera and microphone, and see and hear\n\
         yourself through a relay inside the EU. The host's tab can lock, remove, admit and end.\n\
         The call is end-to-end encrypted: its key (k=…) is in these links only; keep them private.\n"
    ))
}

/// The scripted call: a paid tenant pins a conference to the EU; people in
/// Germany, Ireland and the US join and exchange synthetic media.
/// What dev's demo conferences need: the `eu` jurisdiction, the router
/// serving it, and a paid tenant with a dev API key that may choose it.
struct EuTenant<'p> {
    eu: crate::policy::JurisdictionIdx,
    router: &'p crate::policy::Router,
    tenant: &'p crate::policy::Tenant,
    key: String,
}

fn eu_tenant(policy: &Policy) -> Result<EuTenant<'_>, String> {
    let eu = policy
        .jurisdiction_idx("eu")
        .ok_or("the demo needs an 'eu' jurisdiction")?;
    let router = policy
        .router_for(eu)
        .ok_or("the demo needs a router serving 'eu'")?;
    let tenant = policy
        .tenants()
        .iter()
        .find(|t| {
            policy.plan_of(t).jurisdictions.contains(&eu) && tenant_key(policy, &t.id).is_some()
        })
        .ok_or("the demo needs a paid tenant that may choose 'eu' with a dev API key")?;
    let key = tenant_key(policy, &tenant.id).unwrap_or_default();
    Ok(EuTenant {
        eu,
        router,
        tenant,
        key,
    })
}

/// An EU conference with a passcode and no waiting room, end-to-end
/// encrypted or not.
async fn create_eu(
    router: &str,
    key: &str,
    e2ee: bool,
) -> Result<crate::client::join::Created, String> {
    crate::client::join::create(
        router,
        key,
        &json!({ "residency": "eu", "waiting_room": false, "e2ee": e2ee }),
    )
    .await
    .map_err(|e| format!("create failed: {e}"))
}

async fn run_demo(policy: &Policy) -> Result<(), String> {
    let EuTenant {
        eu,
        router,
        tenant,
        key,
    } = eu_tenant(policy)?;
    println!(
        "demo: tenant '{}' (plan '{}') creates a conference pinned to eu",
        tenant.id,
        policy.plan_of(tenant).id
    );
    let created = create_eu(&router.url, &key, false).await?;
    let c = created.answer;
    let id = created.id;
    let passcode = created.passcode.unwrap_or_default();
    let host_token = c["host_token"].as_str().unwrap_or_default().to_owned();
    println!(
        "  conference {id} (jurisdiction {}), passcode {passcode}",
        c["jurisdiction"]
    );

    let mut clients = join_demo(policy, &router.url, &id, &passcode).await?;
    let mut tracks = Vec::new();
    for (_, client, _) in &mut clients {
        tracks.push(
            client
                .publish(TrackKind::Video, "synthetic-video", None)
                .await
                .map_err(|e| e.to_string())?,
        );
    }
    subscribe_others(&mut clients, &tracks).await?;
    println!(
        "  (each is on the nearest relay inside the EU; the relays carrying the call are linked to each other)"
    );
    println!(
        "  everyone publishes 1 Mbit/s of synthetic video for 3 s and subscribes to the others"
    );
    let connected = exchange_media(clients, tracks).await?;

    moderate(&router.url, &id, &host_token, connected).await?;
    print_relay_bytes(policy, eu).await?;
    let state = http_client::request(
        "GET",
        &format!("{}/v1/conferences/{id}", router.url),
        None,
        &[("authorization", &format!("Bearer {host_token}"))],
        None,
        Duration::from_secs(2),
    )
    .await
    .map_err(|e| e.to_string())?;
    println!("\nthe router's view of the conference:\n  {}", state.json());

    save_report(policy, router, &id, &host_token).await
}

/// Anna (Germany), Aoife (Ireland) and Bob (United States) join with the
/// passcode; each is told where it was located and which relay it got.
async fn join_demo(
    policy: &Policy,
    router_url: &str,
    id: &str,
    passcode: &str,
) -> Result<Vec<(&'static str, Client, String)>, String> {
    let people: [(&str, &str); 3] = [
        ("Anna (Germany)", "127.0.0.2"),
        ("Aoife (Ireland)", "127.0.0.4"),
        ("Bob (United States)", "127.0.0.3"),
    ];
    let mut clients = Vec::new();
    for (name, ip) in people {
        let ip: IpAddr = ip.parse().map_err(|_| "bad address")?;
        let joined = join::join(
            router_url,
            id,
            &Credential::Passcode(passcode.to_owned()),
            name,
            Some(ip),
            Duration::from_secs(30),
        )
        .await
        .map_err(|e| format!("{name}: {e}"))?;
        let located = policy
            .geoip()
            .locate(ip)
            .country()
            .map_or_else(|| "unknown".to_owned(), |c| c.to_string());
        println!(
            "  {name:<20} from {ip} (located in {located}) -> relay {} in {}",
            joined.relay_id, joined.relay_country
        );
        let client = Client::connect(
            SocketAddr::new(ip, 0),
            joined.quic_addr,
            &joined.cert_sha256,
            &joined.ticket,
        )
        .await
        .map_err(|e| format!("{name}: {e}"))?;
        clients.push((name, client, joined.participant_id));
    }
    Ok(clients)
}

/// Each subscribes to the others' tracks as they are announced: tracks
/// published on another relay arrive once the cascade link is up.
async fn subscribe_others(
    clients: &mut [(&'static str, Client, String)],
    tracks: &[TrackId],
) -> Result<(), String> {
    for (i, (name, client, _)) in clients.iter_mut().enumerate() {
        let mut wanted: Vec<_> = tracks
            .iter()
            .enumerate()
            .filter(|(k, _)| *k != i)
            .map(|(_, t)| *t)
            .collect();
        for t in client.initial_tracks.clone() {
            if let Some(p) = wanted.iter().position(|w| *w == t.track) {
                client.subscribe(t.track).await.map_err(|e| e.to_string())?;
                wanted.remove(p);
            }
        }
        let deadline = tokio::time::Instant::now() + Duration::from_secs(15);
        while !wanted.is_empty() {
            let event = tokio::time::timeout_at(deadline, client.next_event())
                .await
                .map_err(|_| format!("{name}: the other tracks were never announced"))?
                .map_err(|e| e.to_string())?;
            if let crate::wire::control::ServerMessage::TrackPublished(info) = event {
                if let Some(p) = wanted.iter().position(|w| *w == info.track) {
                    client
                        .subscribe(info.track)
                        .await
                        .map_err(|e| e.to_string())?;
                    wanted.remove(p);
                }
            }
        }
    }
    Ok(())
}

/// Everyone sends 1 Mbit/s of synthetic video for 3 s and counts what it
/// receives; the clients stay connected for moderation.
async fn exchange_media(
    clients: Vec<(&'static str, Client, String)>,
    tracks: Vec<TrackId>,
) -> Result<Vec<(&'static str, Client, String)>, String> {
    let mut handles = Vec::new();
    for ((name, client, pid), track) in clients.into_iter().zip(tracks) {
        handles.push(tokio::spawn(async move {
            let size = 1000usize;
            let mut stats = ReceiveStats::default();
            let mut tick = tokio::time::interval(Duration::from_millis(8));
            let end = tokio::time::Instant::now() + Duration::from_secs(3);
            let mut sequence = 0u32;
            loop {
                tokio::select! {
                    _ = tick.tick() => {
                        if tokio::time::Instant::now() >= end { break; }
                        let flags = if sequence % 100 == 0 { Flags::KEYFRAME } else { Flags::default() };
                        let _ = client.send_media(
                            &MediaHeader { track, sequence, flags, info: crate::wire::datagram::Info::NONE },
                            &synthetic::payload(size - HEADER_LEN),
                        );
                        sequence += 1;
                    }
                    d = client.recv_media() => match d {
                        Ok(d) => stats.record(&d),
                        Err(_) => break,
                    },
                }
            }
            // Let the last packets arrive.
            while let Ok(Ok(d)) =
                tokio::time::timeout(Duration::from_millis(200), client.recv_media()).await
            {
                stats.record(&d);
            }
            (name, sequence, stats, client, pid)
        }));
    }
    let mut connected = Vec::new();
    for h in handles {
        let (name, sent, mut stats, client, pid) = h.await.map_err(|e| e.to_string())?;
        println!(
            "  {name:<20} sent {sent} packets, received {} ({} bytes), p50 latency {} us",
            stats.packets,
            stats.bytes,
            synthetic::quantile(&mut stats.latencies_us, 0.5).unwrap_or(0)
        );
        connected.push((name, client, pid));
    }
    Ok(connected)
}

/// Moderation: the host removes the last participant, then ends the call;
/// how soon the relays disconnected them.
async fn moderate(
    router_url: &str,
    id: &str,
    host_token: &str,
    mut connected: Vec<(&'static str, Client, String)>,
) -> Result<(), String> {
    let host = format!("Bearer {host_token}");
    if let Some((name, client, pid)) = connected.pop() {
        let started = std::time::Instant::now();
        let r = http_client::request(
            "POST",
            &format!("{}/v1/conferences/{id}/participants/{pid}/kick", router_url),
            None,
            &[("authorization", &host)],
            Some(
                json!({ "ban": true, "reason": "demo" })
                    .to_string()
                    .into_bytes(),
            ),
            Duration::from_secs(5),
        )
        .await
        .map_err(|e| e.to_string())?;
        let code = tokio::time::timeout(Duration::from_secs(5), client.closed()).await;
        println!(
            "\nthe host kicks and bans {name}: router answered {}, relay disconnected it (close code {}) {:.1} ms after the request",
            r.status,
            code.ok()
                .flatten()
                .map_or_else(|| "none".to_owned(), |c| c.to_string()),
            started.elapsed().as_secs_f64() * 1000.0
        );
    }
    let started = std::time::Instant::now();
    let r = http_client::request(
        "POST",
        &format!("{}/v1/conferences/{id}/end", router_url),
        None,
        &[("authorization", &host)],
        None,
        Duration::from_secs(5),
    )
    .await
    .map_err(|e| e.to_string())?;
    for (_, client, _) in &connected {
        let _ = tokio::time::timeout(Duration::from_secs(5), client.closed()).await;
    }
    println!(
        "the host ends the conference: router answered {}, all {} remaining participants disconnected {:.1} ms after the request",
        r.status,
        connected.len(),
        started.elapsed().as_secs_f64() * 1000.0
    );
    Ok(())
}

/// The bytes each relay carried, from the relays' own /metrics.
async fn print_relay_bytes(policy: &Policy, eu: JurisdictionIdx) -> Result<(), String> {
    println!("\nbytes each relay carried (from the relays' own /metrics):");
    for r in policy.relays() {
        let m = http_client::request(
            "GET",
            &format!("http://{}/metrics", r.http_addr),
            None,
            &[],
            None,
            Duration::from_secs(2),
        )
        .await
        .map_err(|e| e.to_string())?;
        let text = String::from_utf8_lossy(&m.body).into_owned();
        let value = |name: &str| crate::relay::metrics::sample(&text, name).unwrap_or(0.0) as u64;
        let inside = policy.jurisdiction(eu).contains(
            policy
                .relay_idx(&r.id)
                .unwrap_or(crate::policy::RelayIdx(u32::MAX)),
        );
        println!(
            "  {:<10} {}  {} jurisdiction eu: received {} bytes, forwarded {} bytes",
            r.id,
            r.country,
            if inside { "inside " } else { "outside" },
            value("rr_relay_bytes_received_total"),
            value("rr_relay_bytes_delivered_total"),
        );
    }
    Ok(())
}

/// The signed residency report, as a tenant would hand it to an auditor:
/// fetched, checked against the router's configured key, saved.
async fn save_report(
    policy: &Policy,
    router: &crate::policy::Router,
    id: &str,
    host_token: &str,
) -> Result<(), String> {
    let report = http_client::request(
        "GET",
        &format!("{}/v1/conferences/{id}/residency", router.url),
        None,
        &[("authorization", &format!("Bearer {host_token}"))],
        None,
        Duration::from_secs(2),
    )
    .await
    .map_err(|e| e.to_string())?;
    if report.status != 200 {
        return Err(format!("residency report: {}", report.status));
    }
    let envelope = report.json();
    let path = policy
        .router(&router.id)
        .and_then(|r| r.store.sqlite())
        .map(|store| store.with_file_name(format!("{id}.residency.json")))
        .unwrap_or_else(|| format!("{id}.residency.json").into());
    std::fs::write(
        &path,
        serde_json::to_string_pretty(&envelope).unwrap_or_default() + "\n",
    )
    .map_err(|e| format!("cannot write {}: {e}", path.display()))?;
    println!(
        "\nresidency report, signed by {} and checked against its configured public key:",
        router.id
    );
    print!(
        "{}",
        super::report::summarize(&envelope, &router.public_key)?
    );
    println!(
        "saved to {}; verify it offline with:\n  residency-relay verify-report {} --key {}",
        path.display(),
        path.display(),
        hex::encode(router.public_key.as_bytes())
    );
    Ok(())
}

/// `dev`: every router and relay of the config in one process, with a
/// second EU replica on PostgreSQL when given `--store`.
pub(super) fn command(a: DevArgs) -> ExitCode {
    let config = match a.store {
        None => a.config,
        Some(store) => match replicated_config(&a.config, &store) {
            Ok(path) => path,
            Err(e) => {
                eprintln!("{e}");
                return ExitCode::FAILURE;
            }
        },
    };
    let policy = match super::load(&config, None) {
        Ok(p) => p,
        Err(code) => return code,
    };
    super::report(run(policy, a.demo, a.log_console))
}
