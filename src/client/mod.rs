//! A client of the relay: connect with a ticket, publish and subscribe,
//! send and receive media datagrams. Used by the tests, the `client` and
//! `loadtest` commands, and later the router's tests.

pub mod e2ee;
pub mod frames;
pub mod initials;
pub mod join;
pub mod session;
pub mod simulcast;
pub mod synthetic;
pub mod websocket;

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;

use crate::wire::control::{
    self, ClientMessage, ControlError, Decoder, Layers, ParticipantId, ServerMessage, TrackInfo,
    TrackKind,
};
use crate::wire::datagram::{self, MediaHeader, TrackId};

/// Why a client operation failed.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("TLS setup failed: {0}")]
    Tls(String),
    #[error("cannot connect: {0}")]
    Connect(String),
    #[error("the relay refused: {message} (code {code})")]
    Refused { code: u16, message: String },
    #[error("control stream: {0}")]
    Control(#[from] ControlError),
    #[error("the connection closed: {0}")]
    Closed(String),
    /// Nothing at all came from the relay, not even the QUIC
    /// acknowledgements of our keep-alives, for the idle timeout: the relay
    /// or the path to it is gone (a quiet call is not this).
    #[error("lost the relay: nothing heard from it, or nothing taken by it, for {} s", IDLE_TIMEOUT.as_secs())]
    Lost,
    #[error("timed out waiting for the relay's answer")]
    Timeout,
    #[error("cannot send media: {0}")]
    Send(String),
}

/// A connected, admitted participant.
#[derive(Debug)]
pub struct Client {
    path: Path,
    decoder: Decoder,
    /// Control messages received while waiting for a specific one.
    pending: VecDeque<ServerMessage>,
    next_request: u32,
    /// Tracks already published when this client joined.
    pub initial_tracks: Vec<TrackInfo>,
    /// Who the relay admitted this client as (from its ticket).
    pub participant: ParticipantId,
    /// Whether this client made its endpoint (and so waits for it on leave).
    owns_endpoint: bool,
}

/// How a client reaches its relay.
#[derive(Debug)]
enum Path {
    /// QUIC: the native protocol.
    Quic {
        endpoint: quinn::Endpoint,
        conn: quinn::Connection,
        send: quinn::SendStream,
        recv: quinn::RecvStream,
    },
    /// WebSocket on TLS over TCP ([`websocket`]).
    WebSocket {
        link: websocket::Link,
        control: websocket::ControlIn,
    },
}

/// Where a client's datagrams go and come from.
#[derive(Debug, Clone)]
enum Way {
    Quic(quinn::Connection),
    WebSocket(websocket::Link),
}

impl Way {
    fn send(&self, datagram: Bytes) -> Result<(), ClientError> {
        match self {
            Way::Quic(conn) => conn
                .send_datagram(datagram)
                .map_err(|e| ClientError::Send(e.to_string())),
            Way::WebSocket(link) => link.send_datagram(&datagram),
        }
    }

    async fn next(&self) -> Result<Bytes, ClientError> {
        match self {
            Way::Quic(conn) => conn
                .read_datagram()
                .await
                .map_err(|e| ClientError::Closed(e.to_string())),
            Way::WebSocket(link) => link.recv_datagram().await,
        }
    }
}

/// Receives a client's media datagrams ([`Client::datagrams`]).
#[derive(Debug, Clone)]
pub struct Datagrams {
    way: Way,
}

/// Sends a client's media datagrams from another task ([`Client::sender`]).
#[derive(Debug, Clone)]
pub struct Sender {
    way: Way,
}

impl Sender {
    /// Sends bytes as one datagram (a send error is loss).
    pub fn send_raw(&self, datagram: Bytes) -> Result<(), ClientError> {
        self.way.send(datagram)
    }
}

impl Datagrams {
    /// The next media datagram received.
    pub async fn next(&self) -> Result<Bytes, ClientError> {
        self.way.next().await
    }
}

/// A client endpoint bound to `bind` that accepts only the relay
/// certificate whose SHA-256 is `cert_sha256`. One endpoint can carry many
/// clients ([`Client::connect_on`]).
pub fn endpoint(bind: SocketAddr, cert_sha256: &str) -> Result<quinn::Endpoint, ClientError> {
    let crypto = crate::quic::pinned_client_config(cert_sha256).map_err(ClientError::Tls)?;
    let mut config = quinn::ClientConfig::new(Arc::new(crypto));
    let mut transport = quinn::TransportConfig::default();
    transport
        .datagram_receive_buffer_size(Some(4 << 20))
        // A third of the 30 s idle timeout, and well inside the UDP binding
        // time of NATs (RFC 4787 asks for at least 2 min): each keep-alive
        // is a packet and an acknowledgement for the relay, which is what
        // silent participants cost it.
        .keep_alive_interval(Some(Duration::from_secs(10)))
        .max_idle_timeout(IDLE_TIMEOUT.try_into().ok());
    config.transport_config(Arc::new(transport));
    let socket =
        std::net::UdpSocket::bind(bind).map_err(|e| ClientError::Connect(e.to_string()))?;
    crate::quic::enlarge_socket_buffers(&socket);
    let mut endpoint = quinn::Endpoint::new(
        quinn::EndpointConfig::default(),
        None,
        socket,
        Arc::new(quinn::TokioRuntime),
    )
    .map_err(|e| ClientError::Connect(e.to_string()))?;
    endpoint.set_default_client_config(config);
    Ok(endpoint)
}

/// QUIC's idle timeout on a client's connection (quinn's default, which
/// the relay uses too): with keep-alives every 10 s, only a relay or path
/// that is gone lets it pass.
pub const IDLE_TIMEOUT: Duration = Duration::from_secs(30);

/// How long to wait for the relay's answers.
const ANSWER_TIMEOUT: Duration = Duration::from_secs(10);

impl Client {
    /// Connects from `bind` (e.g. `127.0.0.2:0`) to the relay at `relay`,
    /// accepting only the certificate whose SHA-256 is `cert_sha256`, and
    /// joins with `ticket`.
    pub async fn connect(
        bind: SocketAddr,
        relay: SocketAddr,
        cert_sha256: &str,
        ticket: &str,
    ) -> Result<Self, ClientError> {
        let mut client = Self::connect_on(endpoint(bind, cert_sha256)?, relay, ticket).await?;
        client.owns_endpoint = true;
        Ok(client)
    }

    /// Joins through an existing endpoint (see [`endpoint`]).
    pub async fn connect_on(
        endpoint: quinn::Endpoint,
        relay: SocketAddr,
        ticket: &str,
    ) -> Result<Self, ClientError> {
        let conn = endpoint
            .connect(relay, "relay")
            .map_err(|e| ClientError::Connect(e.to_string()))?
            .await
            .map_err(|e| ClientError::Connect(e.to_string()))?;
        let (send, recv) = conn
            .open_bi()
            .await
            .map_err(|e| ClientError::Closed(e.to_string()))?;
        Self::hello(
            Path::Quic {
                endpoint,
                conn,
                send,
                recv,
            },
            ticket,
        )
        .await
    }

    /// Connects from `bind` to the relay's WebSocket `url` (TLS over TCP,
    /// for networks without UDP), trusting its certificate by `trust`, and
    /// joins with `ticket`: the same participant as over QUIC.
    pub async fn connect_websocket(
        bind: std::net::IpAddr,
        url: &str,
        trust: &websocket::Trust,
        ticket: &str,
    ) -> Result<Self, ClientError> {
        let (link, control) = websocket::connect(bind, url, trust).await?;
        Self::hello(Path::WebSocket { link, control }, ticket).await
    }

    /// Sends `hello` on a new path and reads the welcome.
    async fn hello(path: Path, ticket: &str) -> Result<Self, ClientError> {
        let mut client = Client {
            path,
            decoder: Decoder::new(),
            pending: VecDeque::new(),
            next_request: 1,
            initial_tracks: Vec::new(),
            participant: ParticipantId(String::new()),
            owns_endpoint: false,
        };
        client
            .send_control(&ClientMessage::Hello {
                ticket: ticket.to_owned(),
            })
            .await?;
        match client.read_control().await? {
            ServerMessage::Welcome {
                tracks,
                participant,
            } => {
                client.initial_tracks = tracks;
                client.participant = participant;
                Ok(client)
            }
            ServerMessage::Error { code, message } => Err(ClientError::Refused { code, message }),
            other => Err(ClientError::Closed(format!(
                "unexpected first message {other:?}"
            ))),
        }
    }

    async fn send_control(&mut self, message: &ClientMessage) -> Result<(), ClientError> {
        let mut frame = Vec::new();
        control::encode(message, &mut frame)?;
        self.send_control_raw(&frame).await
    }

    /// The relay's answer to a request just sent: within [`ANSWER_TIMEOUT`].
    async fn read_control(&mut self) -> Result<ServerMessage, ClientError> {
        tokio::time::timeout(ANSWER_TIMEOUT, self.read_message())
            .await
            .map_err(|_| ClientError::Timeout)?
    }

    /// The next control message, however long it takes: in a quiet call
    /// none may come for minutes. A lost relay ends it through QUIC's idle
    /// timeout ([`ClientError::Lost`]).
    async fn read_message(&mut self) -> Result<ServerMessage, ClientError> {
        loop {
            if let Some(m) = self.decoder.next_message::<ServerMessage>()? {
                return Ok(m);
            }
            let chunk = match &mut self.path {
                Path::Quic { recv, .. } => recv
                    .read_chunk(control::MAX_FRAME_LEN, true)
                    .await
                    .map_err(|e| match e {
                        quinn::ReadError::ConnectionLost(quinn::ConnectionError::TimedOut) => {
                            ClientError::Lost
                        }
                        e => ClientError::Closed(e.to_string()),
                    })?
                    .map(|c| c.bytes),
                Path::WebSocket { control, .. } => control.next().await,
            };
            match (chunk, &self.path) {
                (Some(c), _) => self.decoder.push(&c),
                (None, Path::WebSocket { link, .. }) => {
                    // The socket's task notes how it ended before it drops
                    // the control sender.
                    return Err(link.ended_error());
                }
                (None, Path::Quic { .. }) => {
                    return Err(ClientError::Closed("control stream ended".into()));
                }
            }
        }
    }

    /// The next control message from the relay (events such as
    /// `track_published`, `keyframe_request`, `going_away`).
    pub async fn next_event(&mut self) -> Result<ServerMessage, ClientError> {
        match self.pending.pop_front() {
            Some(m) => Ok(m),
            None => self.read_message().await,
        }
    }

    /// Waits up to `within` until `track` is announced (or was listed at
    /// welcome), then subscribes to it. Other events meanwhile are dropped.
    pub async fn subscribe_announced(
        &mut self,
        track: TrackId,
        within: Duration,
    ) -> Result<(), ClientError> {
        let deadline = tokio::time::Instant::now() + within;
        let mut announced = self.initial_tracks.iter().any(|t| t.track == track);
        while !announced {
            match tokio::time::timeout_at(deadline, self.next_event()).await {
                Ok(Ok(ServerMessage::TrackPublished(info))) => announced = info.track == track,
                Ok(Ok(_)) => {}
                Ok(Err(e)) => return Err(e),
                Err(_) => return Err(ClientError::Timeout),
            }
        }
        self.subscribe(track).await
    }

    /// Publishes a track; returns the id to send its datagrams with.
    pub async fn publish(
        &mut self,
        kind: TrackKind,
        codec: &str,
        layers: Option<Layers>,
    ) -> Result<TrackId, ClientError> {
        self.publish_declared(kind, codec, layers, false).await
    }

    /// Publishes a track declared end-to-end encrypted or not (its
    /// payloads must then be SFrame: [`e2ee`]).
    pub async fn publish_declared(
        &mut self,
        kind: TrackKind,
        codec: &str,
        layers: Option<Layers>,
        encrypted: bool,
    ) -> Result<TrackId, ClientError> {
        let request = self.next_request;
        self.next_request += 1;
        self.send_control(&ClientMessage::Publish {
            request,
            kind,
            codec: codec.to_owned(),
            layers,
            encrypted,
        })
        .await?;
        loop {
            match self.read_control().await? {
                ServerMessage::Published { request: r, track } if r == request => return Ok(track),
                ServerMessage::Error { code, message } => {
                    return Err(ClientError::Refused { code, message });
                }
                other => self.pending.push_back(other),
            }
        }
    }

    /// Subscribes to a track; returns once the relay confirmed it, so every
    /// datagram the publisher sends from then on reaches this client.
    pub async fn subscribe(&mut self, track: TrackId) -> Result<(), ClientError> {
        self.send_control(&ClientMessage::Subscribe { track })
            .await?;
        loop {
            match self.read_control().await? {
                ServerMessage::Subscribed { track: t } if t == track => return Ok(()),
                ServerMessage::Error { code, message } => {
                    return Err(ClientError::Refused { code, message });
                }
                other => self.pending.push_back(other),
            }
        }
    }

    /// Sends an `e2ee` key message (docs/e2ee.md).
    pub async fn send_e2ee(&mut self, out: e2ee::Outgoing) -> Result<(), ClientError> {
        self.send_control(&ClientMessage::E2ee {
            to: out.to,
            data: out.data,
        })
        .await
    }

    /// Feeds a control event to `group`: key messages are answered, a
    /// departure makes a host rotate. Returns what the group made of a key
    /// message, if it was one.
    pub async fn drive_e2ee(
        &mut self,
        group: &mut e2ee::Group,
        event: &ServerMessage,
    ) -> Result<Option<e2ee::Event>, ClientError> {
        let now = std::time::Instant::now();
        let (what, out) = match event {
            ServerMessage::E2ee { from, host, data } => {
                let (what, out) = group.receive(from, *host, data, now);
                (Some(what), out)
            }
            ServerMessage::ParticipantLeft { participant } => (None, group.left(participant, now)),
            _ => (None, Vec::new()),
        };
        for o in out {
            self.send_e2ee(o).await?;
        }
        Ok(what)
    }

    /// Writes bytes to the control stream as they are, unframed (tests use
    /// it to send malformed control messages).
    pub async fn send_control_raw(&mut self, bytes: &[u8]) -> Result<(), ClientError> {
        match &mut self.path {
            Path::Quic { send, .. } => send
                .write_all(bytes)
                .await
                .map_err(|e| ClientError::Closed(e.to_string())),
            Path::WebSocket { link, .. } => link.send_control(bytes).await,
        }
    }

    fn way(&self) -> Way {
        match &self.path {
            Path::Quic { conn, .. } => Way::Quic(conn.clone()),
            Path::WebSocket { link, .. } => Way::WebSocket(link.clone()),
        }
    }

    /// The transport in use: `native` (QUIC) or `websocket`.
    pub fn transport(&self) -> &'static str {
        match &self.path {
            Path::Quic { .. } => "native",
            Path::WebSocket { .. } => "websocket",
        }
    }

    /// A handle that sends this client's datagrams from another task.
    pub fn sender(&self) -> Sender {
        Sender { way: self.way() }
    }

    /// Asks the publisher of `track` (subscribed) for a keyframe: part of
    /// a frame was lost ([`frames::Reassembler`]).
    pub async fn request_keyframe(&mut self, track: TrackId) -> Result<(), ClientError> {
        self.send_control(&ClientMessage::KeyframeRequest { track })
            .await
    }

    /// Tells the relay how large `track` (video, subscribed) is shown, in
    /// device pixels; 0 × 0: not shown. It decides the highest layer sent.
    pub async fn view(
        &mut self,
        track: TrackId,
        width: u16,
        height: u16,
    ) -> Result<(), ClientError> {
        self.send_control(&ClientMessage::View {
            track,
            width,
            height,
        })
        .await
    }

    /// Sends one media datagram.
    pub fn send_media(&self, header: &MediaHeader, payload: &[u8]) -> Result<(), ClientError> {
        let mut out = Vec::with_capacity(datagram::HEADER_LEN + payload.len());
        datagram::encode(header, payload, &mut out);
        self.send_raw(Bytes::from(out))
    }

    /// Sends bytes as a datagram unchanged (tests send malformed ones).
    pub fn send_raw(&self, datagram: Bytes) -> Result<(), ClientError> {
        self.way().send(datagram)
    }

    /// Sends bytes as a datagram, waiting while the connection's send buffer
    /// is full instead of dropping older datagrams (load generators).
    pub async fn send_raw_wait(&self, datagram: Bytes) -> Result<(), ClientError> {
        match &self.path {
            Path::Quic { conn, .. } => conn
                .send_datagram_wait(datagram)
                .await
                .map_err(|e| ClientError::Send(e.to_string())),
            Path::WebSocket { link, .. } => link.send_datagram_wait(&datagram).await,
        }
    }

    /// The next media datagram received.
    pub async fn recv_media(&self) -> Result<Bytes, ClientError> {
        self.way().next().await
    }

    /// The application close code, once the relay closed the connection
    /// (see [`crate::wire::close_code`]).
    pub fn close_code(&self) -> Option<u64> {
        match &self.path {
            Path::Quic { conn, .. } => match conn.close_reason()? {
                quinn::ConnectionError::ApplicationClosed(c) => Some(c.error_code.into_inner()),
                _ => None,
            },
            Path::WebSocket { link, .. } => link.close_code(),
        }
    }

    /// Waits until the connection is closed, by either side; returns the
    /// application close code if the relay gave one.
    pub async fn closed(&self) -> Option<u64> {
        match &self.path {
            Path::Quic { conn, .. } => match conn.closed().await {
                quinn::ConnectionError::ApplicationClosed(c) => Some(c.error_code.into_inner()),
                _ => None,
            },
            Path::WebSocket { link, .. } => link.closed().await,
        }
    }

    /// A handle that receives this client's media datagrams, so a caller can
    /// wait for media and control events at the same time.
    pub fn datagrams(&self) -> Datagrams {
        Datagrams { way: self.way() }
    }

    /// Why the connection closed, once it has.
    pub fn close_reason(&self) -> Option<String> {
        match &self.path {
            Path::Quic { conn, .. } => conn.close_reason().map(|e| e.to_string()),
            Path::WebSocket { link, .. } => link.is_closed().then(|| match link.close_code() {
                Some(code) => format!("closed by the relay (code {code})"),
                None => link.ended_error().to_string(),
            }),
        }
    }

    /// Leaves the conference and closes the connection.
    pub async fn leave(mut self) {
        let _ = self.send_control(&ClientMessage::Leave {}).await;
        let _ = tokio::time::timeout(Duration::from_millis(500), self.closed()).await;
        match &self.path {
            Path::Quic { endpoint, conn, .. } => {
                conn.close(0u32.into(), b"bye");
                if self.owns_endpoint {
                    endpoint.wait_idle().await;
                }
            }
            Path::WebSocket { link, .. } => link.close("bye").await,
        }
    }
}
