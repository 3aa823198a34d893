//! Routers and relays of the dev config running in this process on free
//! loopback ports, each test with its own stores.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use residency_relay::client::Client;
use residency_relay::client::join::{self, Credential, JoinError, Joined};
use residency_relay::forward::CoreConfig;
use residency_relay::http_client::{self, Response};
use residency_relay::policy::{self, Policy};
use residency_relay::relay::{self, Identity, RouterLink};
use residency_relay::router::{self, limits::LimitSettings};
use serde_json::Value;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

/// Sockets bound to free ports when the config is written and kept until
/// their component starts, so no other test of the same binary can take a
/// port between its choice and its use. TCP sockets are bound but do not
/// listen, so a component not started yet refuses connections as before.
#[derive(Default)]
struct Reserved {
    tcp: HashMap<SocketAddr, socket2::Socket>,
    udp: HashMap<SocketAddr, std::net::UdpSocket>,
}

impl Reserved {
    fn tcp_port(&mut self, ip: &str) -> u16 {
        let addr: SocketAddr = format!("{ip}:0").parse().unwrap();
        let s = socket2::Socket::new(
            socket2::Domain::for_address(addr),
            socket2::Type::STREAM,
            None,
        )
        .unwrap();
        s.set_reuse_address(true).unwrap();
        s.bind(&addr.into()).unwrap();
        let addr = s.local_addr().unwrap().as_socket().unwrap();
        self.tcp.insert(addr, s);
        addr.port()
    }

    fn udp_port(&mut self, ip: &str) -> u16 {
        let s = std::net::UdpSocket::bind((ip, 0)).unwrap();
        let addr = s.local_addr().unwrap();
        self.udp.insert(addr, s);
        addr.port()
    }

    /// The reserved listener on `addr`, or a new one (a component started
    /// again after a stop).
    async fn listener(&mut self, addr: SocketAddr) -> tokio::net::TcpListener {
        match self.tcp.remove(&addr) {
            Some(s) => {
                s.listen(1024).unwrap();
                s.set_nonblocking(true).unwrap();
                tokio::net::TcpListener::from_std(s.into()).unwrap()
            }
            None => tokio::net::TcpListener::bind(addr)
                .await
                .unwrap_or_else(|e| panic!("bind {addr}: {e}")),
        }
    }

    fn socket(&mut self, addr: SocketAddr) -> std::net::UdpSocket {
        match self.udp.remove(&addr) {
            Some(s) => s,
            None => std::net::UdpSocket::bind(addr).unwrap_or_else(|e| panic!("bind {addr}: {e}")),
        }
    }
}

struct Running {
    stop: Option<oneshot::Sender<()>>,
    task: JoinHandle<()>,
}

impl Running {
    async fn stop(mut self) {
        if let Some(tx) = self.stop.take() {
            let _ = tx.send(());
        }
        let _ = tokio::time::timeout(Duration::from_secs(10), self.task).await;
    }
}

/// A router and relay set from `config/dev.toml`, rewritten to free ports.
pub struct Cluster {
    pub dir: tempfile::TempDir,
    pub config: PathBuf,
    pub policy: Arc<Policy>,
    routers: HashMap<String, Running>,
    relays: HashMap<String, Running>,
    /// Lifetime of the relays' self-signed certificates (default: what
    /// `relay` uses); a short one makes them renew during a test.
    pub cert_lifetime: Option<Duration>,
    /// Shown what every relay started from now on handles.
    pub tap: Option<relay::Tap>,
    reserved: Reserved,
}

pub const ADMIN: &str = "Bearer dev-admin-key";
pub const ACME: &str = "Bearer dev-acme-key";
pub const FREEBIE: &str = "Bearer dev-freebie-key";

impl Cluster {
    /// The dev config on free ports, edited by `edit` (applied to the TOML text).
    pub fn new(edit: impl Fn(String) -> String) -> Cluster {
        let dir = tempfile::tempdir().unwrap();
        let mut reserved = Reserved::default();
        let mut text = super::dev_config_text().replace("store = \"../data/", "store = \"data/");
        trust_dev_certificate();
        for n in 1..=6 {
            let ip = format!("127.0.1.{n}");
            let quic = reserved.udp_port(&ip);
            let http = reserved.tcp_port(&ip);
            text = text.replace(
                &format!("quic_addr = \"{ip}:4433\""),
                &format!("quic_addr = \"{ip}:{quic}\"\nhttp_addr = \"{ip}:{http}\""),
            );
        }
        for n in 1..=3 {
            let ip = format!("127.0.2.{n}");
            for dev_port in [8080, 8081] {
                let port = reserved.tcp_port(&ip);
                text = text
                    .replace(&format!("\"{ip}:{dev_port}\""), &format!("\"{ip}:{port}\""))
                    .replace(
                        &format!("\"https://{ip}:{dev_port}\""),
                        &format!("\"https://{ip}:{port}\""),
                    );
            }
        }
        let mut text = edit(text);
        // A router an edit added (a replica) listens on 127.0.2.4.
        if text.contains("127.0.2.4:8080") {
            let port = reserved.tcp_port("127.0.2.4");
            text = text.replace("127.0.2.4:8080", &format!("127.0.2.4:{port}"));
        }
        let config = dir.path().join("dev.toml");
        std::fs::write(&config, text).unwrap();
        let policy = Arc::new(policy::load(&config).unwrap_or_else(|e| panic!("{e}")));
        Cluster {
            dir,
            config,
            policy,
            routers: HashMap::new(),
            relays: HashMap::new(),
            cert_lifetime: None,
            tap: None,
            reserved,
        }
    }

    /// The dev config with the EU router on PostgreSQL at `store` and a
    /// second replica of it, `de-fra-router-b` (same jurisdictions, same
    /// store, listening on 127.0.2.4), edited further by `edit`.
    pub fn replicated(store: &str, edit: impl Fn(String) -> String) -> Cluster {
        let store = store.to_owned();
        Cluster::new(move |text| {
            let text = text.replace(
                "store = \"data/de-fra-router.sqlite\"",
                &format!("store = \"{store}\"\nstore_country = \"DE\""),
            );
            let line = |start: &str, has: &str| {
                text.lines()
                    .find(|l| l.starts_with(start) && l.contains(has))
                    .unwrap()
                    .to_owned()
            };
            let key = line("signing_key = ", "dev-ticket.key");
            let tls = [
                line("tls_cert = ", "dev-router.crt"),
                line("tls_key = ", "dev-router.key"),
                line("tls_ca = ", "dev-router.crt"),
            ]
            .join("\n");
            let replica = format!(
                "\n[[router]]\nid = \"de-fra-router-b\"\ncountry = \"DE\"\njurisdictions = [\"eu\", \"de\", \"global\"]\nlisten = \"127.0.2.4:8080\"\nurl = \"https://127.0.2.4:8080\"\n{tls}\n{key}\npublic_key = \"97069a8e2b9dcdfc0376daffafc7f95fce34533d5b53cd1ecd218d735028a3ea\"\nadmin_token_sha256 = \"df76ff796f70d2c9cb055ea6280553caa27eda26b70e01082c160de75a05a4a9\"\nstore = \"{store}\"\nstore_country = \"DE\"\n"
            );
            // After the last router section, before what follows it.
            let at = text.find("\n[[router]]\nid = \"us-nyc-router\"").unwrap();
            let mut text = text;
            text.insert_str(at, &replica);
            edit(text)
        })
    }

    /// Stops router `id` abruptly, as a killed process would: no clean
    /// shutdown, its connections simply gone.
    pub async fn kill_router(&mut self, id: &str) {
        if let Some(mut r) = self.routers.remove(id) {
            r.stop.take();
            r.task.abort();
            let _ = r.task.await;
        }
    }

    /// The cluster's config file, for reloads.
    pub fn source(&self) -> policy::Source {
        policy::Source {
            config: self.config.clone(),
            regions: None,
        }
    }

    /// The dev config as it is, with `router` and `relays` started and the
    /// relays reported healthy at the router.
    pub async fn running(router: &str, relays: &[&str]) -> Cluster {
        let mut c = Cluster::new(|t| t);
        c.start(router, relays).await;
        c
    }

    /// Starts `router` and `relays` and waits until the router reports the
    /// relays healthy.
    pub async fn start(&mut self, router: &str, relays: &[&str]) {
        self.start_router(router).await;
        for r in relays {
            self.start_relay(r).await;
        }
        self.wait_health(router, relays, "healthy").await;
    }

    pub fn url(&self, router: &str) -> String {
        self.policy.router(router).unwrap().url.clone()
    }

    /// Where `router`'s relays report (its relay listener's URL).
    pub fn relay_url(&self, router: &str) -> String {
        self.policy.router(router).unwrap().relay_url.clone()
    }

    pub async fn start_router(&mut self, id: &str) {
        let me = self.policy.router(id).unwrap().clone();
        let key = std::fs::read_to_string(&me.signing_key).unwrap();
        let settings = router::Settings {
            policy: self.policy.clone(),
            signing_key: residency_relay::ticket::parse_signing_key(key.trim()).unwrap(),
            store: residency_relay::store::open(&me.store).await.unwrap(),
            ticket_lifetime: Duration::from_secs(60),
            limits: LimitSettings::from_policy(&self.policy)
                .shared_by(self.policy.replicas(&me).len()),
            router: me.clone(),
            source: Some(self.source()),
            reload_on_sighup: false,
            http: residency_relay::http_server::Limits::from_policy(self.policy.limits()),
            relay_listener: None,
        };
        let mut settings = settings;
        if let Some(addr) = me.relay_listen {
            settings.relay_listener = Some(self.reserved.listener(addr).await);
        }
        let listener = self.reserved.listener(me.listen).await;
        let (tx, rx) = oneshot::channel::<()>();
        let task = tokio::spawn(async move {
            router::run(listener, settings, async {
                let _ = rx.await;
            })
            .await
            .unwrap();
        });
        self.routers.insert(
            id.to_owned(),
            Running {
                stop: Some(tx),
                task,
            },
        );
    }

    /// Gives up the ports held for router or relay `id`, for a test that
    /// runs it in a child process.
    pub fn release(&mut self, id: &str) {
        if let Some(r) = self.policy.router(id) {
            self.reserved.tcp.remove(&r.listen);
            if let Some(addr) = r.relay_listen {
                self.reserved.tcp.remove(&addr);
            }
        }
        if let Some(idx) = self.policy.relay_idx(id) {
            let r = self.policy.relay(idx);
            self.reserved.udp.remove(&r.quic_addr);
            self.reserved.tcp.remove(&r.http_addr);
        }
    }

    pub async fn stop_router(&mut self, id: &str) {
        if let Some(r) = self.routers.remove(id) {
            r.stop().await;
        }
    }

    pub async fn start_relay(&mut self, id: &str) {
        let idx = self.policy.relay_idx(id).unwrap();
        let r = self.policy.relay(idx).clone();
        let identity = Identity::self_signed_for(
            relay::certificate_names(r.quic_addr),
            self.cert_lifetime
                .unwrap_or(residency_relay::relay::tls::SELF_SIGNED_LIFETIME),
        )
        .unwrap();
        let settings = relay::Settings {
            relay_id: id.to_owned(),
            identity,
            verifier: self.policy.ticket_verifier(idx).issued_after(
                residency_relay::clock::unix_now()
                    .saturating_sub(residency_relay::ticket::CLOCK_SKEW_SECS),
            ),
            core: CoreConfig {
                track_id_base: residency_relay::forward::track_id_base(idx.index()),
                ..CoreConfig::default()
            },
            // Three shards, not the machine's count: conferences, their
            // participants and links must meet in one shard whatever it is.
            workers: 3,
            shutdown_grace: Duration::from_millis(500),
            hello_timeout: Duration::from_secs(5),
            routers: RouterLink::for_relay(&self.policy, idx),
            credential: Some(format!("dev-relay-{id}")),
            log_full_addresses: self.policy.full_address_jurisdictions(),
            max_connections_per_address: self.policy.limits().relay_connections_per_address,
            unvalidated_handshakes: self.policy.limits().relay_unvalidated_handshakes as usize,
            control_limits: relay::rate::ControlLimits::from_policy(self.policy.limits()),
            http: residency_relay::http_server::Limits::from_policy(self.policy.limits()),
            // The development certificate, which the browsers in tests
            // accept (config/dev-router.crt) and native clients trust.
            websocket: Some(relay::WebSocketSettings {
                listener: self.reserved.listener(r.websocket_addr).await,
                cert: relay::WebSocketCert::Files(std::sync::Arc::new(
                    residency_relay::tls::ServerCert::load(
                        &super::repo().join("config/dev-router.crt"),
                        &super::repo().join("config/dev-router.key"),
                    )
                    .unwrap(),
                )),
                limits: residency_relay::http_server::Limits::from_policy(self.policy.limits()),
            }),
            reload: Some(relay::Reloading {
                source: self.source(),
                policy: self.policy.clone(),
                on_sighup: false,
            }),
            tap: self.tap.clone(),
        };
        let socket = self.reserved.socket(r.quic_addr);
        let http = self.reserved.listener(r.http_addr).await;
        let (tx, rx) = oneshot::channel::<()>();
        let task = tokio::spawn(async move {
            relay::run(socket, http, settings, async {
                let _ = rx.await;
            })
            .await
            .unwrap();
        });
        self.relays.insert(
            id.to_owned(),
            Running {
                stop: Some(tx),
                task,
            },
        );
    }

    pub async fn stop_relay(&mut self, id: &str) {
        if let Some(r) = self.relays.remove(id) {
            r.stop().await;
        }
    }

    /// Waits until `router` lists each of `relays` with `health`.
    pub async fn wait_health(&self, router: &str, relays: &[&str], health: &str) {
        let url = format!("{}/v1/admin/relays", self.url(router));
        let deadline = tokio::time::Instant::now() + Duration::from_secs(15);
        loop {
            let r = request("GET", &url, None, Some(ADMIN), None).await;
            let list = r.json();
            let ok = relays.iter().all(|id| {
                list["relays"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .any(|r| r["id"] == *id && r["health"] == health)
            });
            if ok {
                return;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "relays {relays:?} not {health} at {router}: {list}"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// `GET /metrics` of relay `id`.
    pub async fn relay_metrics(&self, id: &str) -> String {
        let r = self.policy.relay(self.policy.relay_idx(id).unwrap());
        let m = request(
            "GET",
            &format!("http://{}/metrics", r.http_addr),
            None,
            None,
            None,
        )
        .await;
        String::from_utf8_lossy(&m.body).into_owned()
    }

    pub async fn shutdown(mut self) {
        let relays: Vec<String> = self.relays.keys().cloned().collect();
        for r in relays {
            self.stop_relay(&r).await;
        }
        let routers: Vec<String> = self.routers.keys().cloned().collect();
        for r in routers {
            self.stop_router(&r).await;
        }
    }
}

/// A [`Cluster::new`] edit: every router serves plain HTTP
/// (`plain_http = true`, as behind a TLS-terminating proxy), for tests
/// that read or write the HTTP bytes themselves.
pub fn plain_http(text: String) -> String {
    text.lines()
        .filter(|l| !l.starts_with("tls_cert = ") && !l.starts_with("tls_key = "))
        .map(|l| {
            if l.starts_with("url = \"https://") {
                format!(
                    "{}\nplain_http = true",
                    l.replacen("https://", "http://", 1)
                )
            } else if l.starts_with("relay_url = \"https://") {
                l.replacen("https://", "http://", 1)
            } else {
                l.to_owned()
            }
        })
        .collect::<Vec<_>>()
        .join("\n")
}

/// The dev routers' certificate (`config/dev-router.crt`, self-signed),
/// trusted by every request of this test process that names no trust.
pub fn trust_dev_certificate() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        http_client::set_default_trust(
            http_client::Tls::from_ca_file(&super::repo().join("config/dev-router.crt")).unwrap(),
        )
    });
}

/// One HTTP request, from `bind` when given.
pub async fn request(
    method: &str,
    url: &str,
    bind: Option<&str>,
    auth: Option<&str>,
    body: Option<Value>,
) -> Response {
    request_raw(
        method,
        url,
        bind,
        auth,
        body.map(|b| b.to_string().into_bytes()),
    )
    .await
}

pub async fn request_raw(
    method: &str,
    url: &str,
    bind: Option<&str>,
    auth: Option<&str>,
    body: Option<Vec<u8>>,
) -> Response {
    let bind: Option<IpAddr> = bind.map(|b| b.parse().unwrap());
    let headers: Vec<(&str, &str)> = auth.map(|a| ("authorization", a)).into_iter().collect();
    http_client::request(method, url, bind, &headers, body, Duration::from_secs(30))
        .await
        .unwrap_or_else(|e| panic!("{method} {url}: {e}"))
}

/// Creates a conference; returns the answer.
pub async fn create(router: &str, auth: &str, body: Value) -> Value {
    let r = request(
        "POST",
        &format!("{router}/v1/conferences"),
        None,
        Some(auth),
        Some(body),
    )
    .await;
    assert_eq!(r.status, 201, "{}", String::from_utf8_lossy(&r.body));
    r.json()
}

/// Creates a conference of tenant acme pinned to `residency`, without a
/// waiting room; returns the answer.
pub async fn open_conference(router: &str, residency: &str) -> Value {
    create(
        router,
        ACME,
        serde_json::json!({ "residency": residency, "waiting_room": false }),
    )
    .await
}

/// The status and error code of a refused join.
pub fn refused_code(e: JoinError) -> (u16, String) {
    match e {
        JoinError::Refused { status, code, .. } => (status, code),
        other => panic!("expected a refusal, got {other}"),
    }
}

/// Kicks `pid` out of `conf` (as its creator answered it) through `router`
/// with the host token, banning it with `ban`; returns the status.
pub async fn kick(router: &str, conf: &Value, pid: &str, ban: bool) -> u16 {
    let id = conf["id"].as_str().unwrap();
    let host = format!("Bearer {}", conf["host_token"].as_str().unwrap());
    request(
        "POST",
        &format!("{router}/v1/conferences/{id}/participants/{pid}/kick"),
        None,
        Some(&host),
        Some(serde_json::json!({ "ban": ban })),
    )
    .await
    .status
}

/// Joins with a passcode from `ip`.
pub async fn join_from(
    router: &str,
    conference: &str,
    passcode: &str,
    ip: &str,
) -> Result<Joined, JoinError> {
    join::join(
        router,
        conference,
        &Credential::Passcode(passcode.to_owned()),
        &format!("participant at {ip}"),
        Some(ip.parse().unwrap()),
        Duration::from_secs(20),
    )
    .await
}

/// Connects to the relay a join named, from `ip`.
pub async fn connect(joined: &Joined, ip: &str) -> Client {
    Client::connect(
        SocketAddr::new(ip.parse().unwrap(), 0),
        joined.quic_addr,
        &joined.cert_sha256,
        &joined.ticket,
    )
    .await
    .unwrap()
}

/// The value of the first sample of `name` in a metrics text.
pub fn sample(text: &str, name: &str) -> f64 {
    residency_relay::relay::metrics::sample(text, name)
        .unwrap_or_else(|| panic!("no sample {name}"))
}

/// `to` subscribes to `track` (announced, possibly over a cascade link)
/// unless `subscribed`, then hears it from `from` ([`hear_from`]).
pub async fn hear(
    from: &mut residency_relay::client::session::Session,
    to: &mut residency_relay::client::session::Session,
    track: residency_relay::wire::datagram::TrackId,
    subscribed: &mut bool,
) {
    if !*subscribed {
        to.client()
            .subscribe_announced(track, Duration::from_secs(10))
            .await
            .unwrap();
        *subscribed = true;
    }
    hear_from(from.client(), to.client(), track).await;
}

/// Sends on `track` from `from` until `to` receives it (a subscription
/// beyond a link takes effect once the link passed it on), then drains
/// what is still in flight, so that what `to` receives next is what was
/// sent after.
pub async fn hear_from(
    from: &Client,
    to: &Client,
    track: residency_relay::wire::datagram::TrackId,
) {
    use residency_relay::wire::datagram::{Flags, MediaHeader};
    const PRIMER: &[u8] = b"primer";
    super::wait::send_until_heard(
        |sequence| {
            from.send_media(
                &MediaHeader {
                    track,
                    sequence,
                    flags: Flags::default(),
                    info: residency_relay::wire::datagram::Info::NONE,
                },
                PRIMER,
            )
            .unwrap()
        },
        || async {
            match tokio::time::timeout(Duration::from_millis(50), to.recv_media()).await {
                Ok(d) => {
                    assert!(d.unwrap().ends_with(PRIMER));
                    true
                }
                Err(_) => false,
            }
        },
    )
    .await;
    while let Ok(Ok(_)) = tokio::time::timeout(Duration::from_millis(100), to.recv_media()).await {}
}

/// Waits until the relays' reports to `router` count `n` participants in
/// conference `conf` (as `create` answered it): until then the router
/// knows of a join only by the ticket it issued, which the next report
/// may forget.
pub async fn wait_participants(router: &str, conf: &Value, n: u64) {
    let url = format!("{router}/v1/conferences/{}", conf["id"].as_str().unwrap());
    let host = format!("Bearer {}", conf["host_token"].as_str().unwrap());
    super::wait::until(
        &format!("{n} participants reported to {router}"),
        super::wait::REPORTS,
        || async {
            let state = request("GET", &url, None, Some(&host), None).await.json();
            if state["participants"] == n {
                Ok(())
            } else {
                Err(state)
            }
        },
    )
    .await
}

/// The first participant in the waiting room of conference `id`, asked of
/// `router` with `auth` until one is there.
pub async fn first_waiting(router: &str, id: &str, auth: &str) -> Value {
    let url = format!("{router}/v1/conferences/{id}/waiting");
    super::wait::until(
        "a participant in the waiting room",
        Duration::from_secs(10),
        || async {
            let list = request("GET", &url, None, Some(auth), None).await.json();
            if list["waiting"][0]["participant_id"].is_string() {
                Ok(list["waiting"][0].clone())
            } else {
                Err(list)
            }
        },
    )
    .await
}

/// Waits for `going_away` with `code` on `session`'s relay connection.
pub async fn going_away(session: &mut residency_relay::client::session::Session, code: u16) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        let e = tokio::time::timeout_at(deadline, session.client().next_event())
            .await
            .expect("going_away in time")
            .unwrap();
        if let residency_relay::wire::control::ServerMessage::GoingAway { code: got, .. } = e {
            assert_eq!(got, code);
            return;
        }
    }
}

/// Joins the conference `conf` (as `create` answered) through `router` as
/// `name` from `ip`, with its passcode, and connects.
pub async fn session(
    router: &str,
    conf: &Value,
    name: &str,
    ip: &str,
) -> residency_relay::client::session::Session {
    residency_relay::client::session::Session::join(
        router,
        conf["id"].as_str().unwrap(),
        &Credential::Passcode(conf["passcode"].as_str().unwrap().to_owned()),
        name,
        ip.parse().unwrap(),
    )
    .await
    .unwrap()
}
