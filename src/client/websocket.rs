//! The client's WebSocket transport (`--transport websocket`): the same
//! participant as over QUIC, its control stream and datagrams carried in
//! WebSocket messages on TLS over TCP
//! ([`crate::wire::websocket`]). One task owns the socket; the client talks
//! to it through channels, as it talks to quinn's connection over QUIC.

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;

use bytes::Bytes;
use futures_util::{SinkExt, StreamExt};
use tokio::sync::{Mutex, mpsc, watch};
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::protocol::CloseFrame;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;

use super::ClientError;
use crate::wire::websocket::{self as ws, Inbound};

/// How the client trusts the relay's WebSocket certificate.
#[derive(Debug, Clone)]
pub enum Trust {
    /// The certificate whose SHA-256 this is (the relay's own, as in the
    /// join answer's `cert_sha256`).
    Pin(String),
    /// Certificates issued by these roots for the URL's host.
    Roots(Arc<rustls::RootCertStore>),
}

/// Datagrams received and not yet read before newer ones are dropped (as
/// QUIC drops datagrams a reader does not take).
const DATAGRAM_BACKLOG: usize = 4096;

/// What the socket's task shares with the client.
#[derive(Debug, Clone)]
pub(super) struct Link {
    out: mpsc::Sender<Message>,
    datagrams: Arc<Mutex<mpsc::Receiver<Bytes>>>,
    /// `Some(code)` once closed: the relay's application close code, if
    /// it gave one.
    closed: watch::Receiver<Option<Option<u64>>>,
}

/// The control stream's receiving end.
#[derive(Debug)]
pub(super) struct ControlIn(mpsc::Receiver<Bytes>);

impl ControlIn {
    /// The next control-stream bytes; `None` once the connection is gone.
    pub(super) async fn next(&mut self) -> Option<Bytes> {
        self.0.recv().await
    }
}

/// The host and port of a `wss://` URL.
fn host_port(url: &str) -> Result<(String, u16), ClientError> {
    let bad = || ClientError::Connect(format!("'{url}' is not a wss:// URL"));
    let rest = url.strip_prefix("wss://").ok_or_else(bad)?;
    let authority = rest.split(['/', '?', '#']).next().unwrap_or("");
    match authority.rsplit_once(':') {
        Some((h, p)) if !p.contains(']') => Ok((
            h.trim_start_matches('[').trim_end_matches(']').to_owned(),
            p.parse().map_err(|_| bad())?,
        )),
        _ if !authority.is_empty() => Ok((
            authority
                .trim_start_matches('[')
                .trim_end_matches(']')
                .to_owned(),
            443,
        )),
        _ => Err(bad()),
    }
}

/// Connects from `bind` to the relay's WebSocket `url`, trusting its
/// certificate by `trust`.
pub(super) async fn connect(
    bind: IpAddr,
    url: &str,
    trust: &Trust,
) -> Result<(Link, ControlIn), ClientError> {
    let (host, port) = host_port(url)?;
    let addr = tokio::net::lookup_host((host.as_str(), port))
        .await
        .map_err(|e| ClientError::Connect(format!("{host}: {e}")))?
        .next()
        .ok_or_else(|| ClientError::Connect(format!("{host}: no address")))?;
    let tcp = tcp_from(bind, addr).await?;
    let _ = tcp.set_nodelay(true);
    let tls = match trust {
        Trust::Pin(pin) => crate::quic::pinned_tls_config(pin, crate::tls::HTTP1_ALPN),
        Trust::Roots(roots) => Ok(crate::tls::client_config(
            (**roots).clone(),
            &[crate::tls::HTTP1_ALPN],
        )),
    }
    .map_err(ClientError::Tls)?;
    let name = rustls::pki_types::ServerName::try_from(host.clone())
        .map_err(|e| ClientError::Tls(format!("{host}: {e}")))?;
    let stream = tokio_rustls::TlsConnector::from(Arc::new(tls))
        .connect(name, tcp)
        .await
        .map_err(|e| ClientError::Connect(format!("TLS to {addr}: {e}")))?;
    let request = upgrade_request(url, &format!("{host}:{port}"), Some(ws::SUBPROTOCOL))
        .map_err(|e| ClientError::Connect(e.to_string()))?;
    let config = tokio_tungstenite::tungstenite::protocol::WebSocketConfig::default()
        .max_message_size(Some(ws::MAX_MESSAGE_LEN))
        .max_frame_size(Some(ws::MAX_MESSAGE_LEN));
    let (socket, _) = tokio_tungstenite::client_async_with_config(request, stream, Some(config))
        .await
        .map_err(|e| ClientError::Connect(format!("WebSocket upgrade at {url}: {e}")))?;
    let (out_tx, out_rx) = mpsc::channel(1024);
    let (control_tx, control_rx) = mpsc::channel(1024);
    let (datagram_tx, datagram_rx) = mpsc::channel(DATAGRAM_BACKLOG);
    let (closed_tx, closed) = watch::channel(None);
    tokio::spawn(run(socket, out_rx, control_tx, datagram_tx, closed_tx));
    Ok((
        Link {
            out: out_tx,
            datagrams: Arc::new(Mutex::new(datagram_rx)),
            closed,
        },
        ControlIn(control_rx),
    ))
}

/// The WebSocket upgrade of `url`, with `host` as its `Host` header and
/// offering `protocol` (the relay's subprotocol; tests offer others, or
/// none).
pub fn upgrade_request(
    url: &str,
    host: &str,
    protocol: Option<&str>,
) -> Result<
    tokio_tungstenite::tungstenite::http::Request<()>,
    tokio_tungstenite::tungstenite::http::Error,
> {
    let mut request = tokio_tungstenite::tungstenite::http::Request::builder()
        .uri(url)
        .header("Host", host)
        .header("Connection", "Upgrade")
        .header("Upgrade", "websocket")
        .header("Sec-WebSocket-Version", "13")
        .header(
            "Sec-WebSocket-Key",
            tokio_tungstenite::tungstenite::handshake::client::generate_key(),
        );
    if let Some(p) = protocol {
        request = request.header("Sec-WebSocket-Protocol", p);
    }
    request.body(())
}

async fn tcp_from(bind: IpAddr, to: SocketAddr) -> Result<tokio::net::TcpStream, ClientError> {
    let socket = if to.is_ipv4() {
        tokio::net::TcpSocket::new_v4()
    } else {
        tokio::net::TcpSocket::new_v6()
    }
    .map_err(|e| ClientError::Connect(e.to_string()))?;
    if !bind.is_unspecified() {
        socket
            .bind(SocketAddr::new(bind, 0))
            .map_err(|e| ClientError::Connect(format!("bind {bind}: {e}")))?;
    }
    socket
        .connect(to)
        .await
        .map_err(|e| ClientError::Connect(format!("{to}: {e}")))
}

type Socket =
    tokio_tungstenite::WebSocketStream<tokio_rustls::client::TlsStream<tokio::net::TcpStream>>;

/// Owns the socket: sends what the client hands over, hands on what
/// arrives, and notes how it closed.
async fn run(
    socket: Socket,
    mut out: mpsc::Receiver<Message>,
    control: mpsc::Sender<Bytes>,
    datagrams: mpsc::Sender<Bytes>,
    closed: watch::Sender<Option<Option<u64>>>,
) {
    let (mut sink, mut stream) = socket.split();
    let code = loop {
        tokio::select! {
            message = out.recv() => match message {
                Some(m) => {
                    let leaving = matches!(m, Message::Close(_));
                    if sink.send(m).await.is_err() || leaving {
                        break None;
                    }
                }
                None => {
                    let _ = sink.send(Message::Close(None)).await;
                    break None;
                }
            },
            incoming = stream.next() => match incoming {
                Some(Ok(Message::Binary(bytes))) => match ws::parse(bytes) {
                    Ok(Inbound::Control(c)) => {
                        if control.send(c).await.is_err() {
                            break None;
                        }
                    }
                    // A reader that does not keep up loses datagrams, as
                    // over QUIC.
                    Ok(Inbound::Datagram(d)) => {
                        let _ = datagrams.try_send(d);
                    }
                    Err(_) => break None,
                },
                Some(Ok(Message::Close(frame))) => {
                    break frame.and_then(|f| ws::quic_close_code(u16::from(f.code)).map(u64::from));
                }
                Some(Ok(Message::Ping(_))) => {
                    // The pong tungstenite queued goes out now.
                    if sink.flush().await.is_err() {
                        break None;
                    }
                }
                Some(Ok(_)) => {}
                Some(Err(_)) | None => break None,
            },
        }
    };
    let _ = closed.send(Some(code));
}

impl Link {
    /// Hands a message to the socket's task, waiting while its queue is
    /// full.
    async fn send(&self, message: Message) -> Result<(), ClientError> {
        self.out
            .send(message)
            .await
            .map_err(|_| ClientError::Closed("the WebSocket connection is closed".into()))
    }

    pub(super) async fn send_control(&self, bytes: &[u8]) -> Result<(), ClientError> {
        self.send(Message::Binary(ws::message(ws::KIND_CONTROL, bytes)))
            .await
    }

    /// Sends a datagram without waiting: a full queue is loss, as a full
    /// QUIC datagram buffer is.
    pub(super) fn send_datagram(&self, datagram: &[u8]) -> Result<(), ClientError> {
        self.out
            .try_send(Message::Binary(ws::message(ws::KIND_DATAGRAM, datagram)))
            .map_err(|e| ClientError::Send(e.to_string()))
    }

    /// Sends a datagram, waiting for room.
    pub(super) async fn send_datagram_wait(&self, datagram: &[u8]) -> Result<(), ClientError> {
        self.send(Message::Binary(ws::message(ws::KIND_DATAGRAM, datagram)))
            .await
    }

    pub(super) async fn recv_datagram(&self) -> Result<Bytes, ClientError> {
        self.datagrams
            .lock()
            .await
            .recv()
            .await
            .ok_or_else(|| ClientError::Closed("the WebSocket connection is closed".into()))
    }

    /// The relay's close code, once closed (`None` while open or when it
    /// gave none).
    pub(super) fn close_code(&self) -> Option<u64> {
        self.closed.borrow().flatten()
    }

    pub(super) fn is_closed(&self) -> bool {
        self.closed.borrow().is_some()
    }

    /// Waits until closed; the relay's close code if it gave one.
    pub(super) async fn closed(&self) -> Option<u64> {
        let mut closed = self.closed.clone();
        closed.wait_for(Option::is_some).await.ok()?.flatten()
    }

    pub(super) async fn close(&self, reason: &str) {
        let _ = self
            .send(Message::Close(Some(CloseFrame {
                code: CloseCode::Normal,
                reason: reason.to_owned().into(),
            })))
            .await;
    }
}
