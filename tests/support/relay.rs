//! Starting relays on loopback and minting dev tickets for them.

use std::net::SocketAddr;
use std::time::Duration;

use residency_relay::forward::CoreConfig;
use residency_relay::policy;
use residency_relay::relay::{self, Identity, RelayError, Settings};
use residency_relay::ticket::{self, Claims, Grants};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

/// A relay running in this process.
pub struct TestRelay {
    pub quic: SocketAddr,
    /// The WebSocket listener (TLS over TCP, the relay's own certificate).
    pub websocket: SocketAddr,
    pub http: SocketAddr,
    pub fingerprint: String,
    shutdown: Option<oneshot::Sender<()>>,
    task: Option<JoinHandle<Result<(), RelayError>>>,
}

impl TestRelay {
    /// Starts relay `relay_id` of the dev policy, listening on `ip` (QUIC and
    /// HTTP on free ports), with `core` limits.
    pub async fn start(relay_id: &str, ip: &str, core: CoreConfig) -> TestRelay {
        Self::start_with_workers(relay_id, ip, core, 0).await
    }

    /// As [`TestRelay::start`], with `workers` shards (0: one per core).
    pub async fn start_with_workers(
        relay_id: &str,
        ip: &str,
        core: CoreConfig,
        workers: usize,
    ) -> TestRelay {
        Self::start_with_websocket(relay_id, ip, core, workers, None).await
    }

    /// As [`TestRelay::start_with_workers`], with the WebSocket listener
    /// and certificate given (default: on the QUIC port, with the relay's
    /// own certificate).
    pub async fn start_with_websocket(
        relay_id: &str,
        ip: &str,
        core: CoreConfig,
        workers: usize,
        websocket: Option<(tokio::net::TcpListener, relay::WebSocketCert)>,
    ) -> TestRelay {
        let policy = policy::load(&super::repo().join("config/dev.toml")).expect("dev policy");
        let idx = policy.relay_idx(relay_id).expect("relay in dev policy");
        let socket = std::net::UdpSocket::bind((ip, 0)).expect("bind UDP");
        let quic = socket.local_addr().unwrap();
        let http = tokio::net::TcpListener::bind((ip, 0))
            .await
            .expect("bind TCP");
        let http_addr = http.local_addr().unwrap();
        // WebSocket over TCP on the QUIC port, as relays of the inventory
        // do by default; the relay's own certificate, which clients pin.
        let (websocket, websocket_cert) = match websocket {
            Some(given) => given,
            None => (
                tokio::net::TcpListener::bind(quic)
                    .await
                    .expect("bind the WebSocket listener"),
                relay::WebSocketCert::Own,
            ),
        };
        let websocket_addr = websocket.local_addr().unwrap();
        let identity = Identity::self_signed(relay::certificate_names(quic)).expect("certificate");
        let fingerprint = identity.fingerprint();
        let settings = Settings {
            relay_id: relay_id.to_owned(),
            identity,
            verifier: policy
                .ticket_verifier(idx)
                .issued_after(unix_now().saturating_sub(residency_relay::ticket::CLOCK_SKEW_SECS)),
            core,
            workers,
            shutdown_grace: Duration::from_secs(2),
            hello_timeout: Duration::from_secs(5),
            routers: Vec::new(),
            credential: None,
            log_full_addresses: Vec::new(),
            reload: None,
            max_connections_per_address: 10_000,
            unvalidated_handshakes: 64,
            control_limits: relay::rate::ControlLimits::default(),
            http: residency_relay::http_server::Limits::from_policy(policy.limits()),
            websocket: Some(relay::WebSocketSettings {
                listener: websocket,
                cert: websocket_cert,
                limits: residency_relay::http_server::Limits::from_policy(policy.limits()),
            }),
            tap: None,
        };
        let (tx, rx) = oneshot::channel::<()>();
        let task = tokio::spawn(relay::run(socket, http, settings, async {
            let _ = rx.await;
        }));
        TestRelay {
            quic,
            websocket: websocket_addr,
            http: http_addr,
            fingerprint,
            shutdown: Some(tx),
            task: Some(task),
        }
    }

    /// Asks the relay to shut down and waits until it has.
    pub async fn stop(&mut self) {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
        if let Some(task) = self.task.take() {
            task.await.expect("relay task").expect("relay ran");
        }
    }

    /// `GET path` on the relay's HTTP listener: (status, body).
    pub async fn get(&self, path: &str) -> (u16, String) {
        let mut stream = tokio::net::TcpStream::connect(self.http)
            .await
            .expect("connect HTTP");
        let request = format!("GET {path} HTTP/1.1\r\nHost: relay\r\nConnection: close\r\n\r\n");
        stream.write_all(request.as_bytes()).await.unwrap();
        let mut response = String::new();
        stream.read_to_string(&mut response).await.unwrap();
        let status = response
            .split(' ')
            .nth(1)
            .and_then(|s| s.parse().ok())
            .unwrap_or(0);
        let body = response
            .split_once("\r\n\r\n")
            .map(|(_, b)| b.to_owned())
            .unwrap_or_default();
        (status, body)
    }
}

pub use residency_relay::clock::unix_now;

/// Claims for `participant` in conference `eu-test` on `relay`, valid for 60 s.
pub fn claims(relay: &str, participant: &str, grants: Grants) -> Claims {
    let now = unix_now();
    Claims {
        e2ee: false,
        conference: "eu-test".into(),
        jurisdiction: "eu".into(),
        relay: relay.into(),
        participant: participant.into(),
        display_name: participant.into(),
        grants,
        issued_at: now,
        expires_at: now + 60,
        nonce: ticket::new_nonce().unwrap(),
    }
}

/// Signs with the dev key that every jurisdiction of the dev policy trusts.
pub fn sign_dev(claims: &Claims) -> String {
    let key = std::fs::read_to_string(super::repo().join("config/dev-ticket.key")).unwrap();
    ticket::sign(claims, &ticket::parse_signing_key(&key).unwrap())
}

pub const PUBLISHER: Grants = Grants {
    publish: true,
    subscribe: true,
    moderate: false,
};
pub const VIEWER: Grants = Grants {
    publish: false,
    subscribe: true,
    moderate: false,
};
