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

/// How the connection ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Ended {
    /// Closed, by either side or by an error; the relay's application
    /// close code if it gave one.
    Closed(Option<u64>),
    /// Nothing came from the relay for [`super::IDLE_TIMEOUT`], not even
    /// the pings it sends every 10 s: the relay or the path is gone.
    Lost,
}

/// What the socket's task shares with the client.
#[derive(Debug, Clone)]
pub(super) struct Link {
    out: mpsc::Sender<Message>,
    datagrams: Arc<Mutex<mpsc::Receiver<Bytes>>>,
    /// `Some` once the connection has ended.
    ended: watch::Receiver<Option<Ended>>,
}

/// The control stream's receiving end.
#[derive(Debug)]
pub(super) struct ControlIn(mpsc::UnboundedReceiver<Bytes>);

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
    // The read buffer is zeroed to its size before each read: one TLS
    // record's worth, not the default 128 KiB. Messages gather into one
    // record until the task flushes (when nothing more waits to go).
    let config = tokio_tungstenite::tungstenite::protocol::WebSocketConfig::default()
        .max_message_size(Some(ws::MAX_MESSAGE_LEN))
        .max_frame_size(Some(ws::MAX_MESSAGE_LEN))
        .read_buffer_size(16 << 10)
        .write_buffer_size(16 << 10);
    let (socket, _) = tokio_tungstenite::client_async_with_config(request, stream, Some(config))
        .await
        .map_err(|e| ClientError::Connect(format!("WebSocket upgrade at {url}: {e}")))?;
    let (out_tx, out_rx) = mpsc::channel(1024);
    // Unbounded: a client that reads no control messages (the load tools)
    // must not stop the socket's task; they are few and small.
    let (control_tx, control_rx) = mpsc::unbounded_channel();
    let (datagram_tx, datagram_rx) = mpsc::channel(DATAGRAM_BACKLOG);
    let (ended_tx, ended) = watch::channel(None);
    tokio::spawn(run(socket, out_rx, control_tx, datagram_tx, ended_tx));
    Ok((
        Link {
            out: out_tx,
            datagrams: Arc::new(Mutex::new(datagram_rx)),
            ended,
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

/// Owns the socket: sends what the client hands over, hands on what
/// arrives, and notes how it ended. The relay pings every 10 s, so a
/// connection silent for [`super::IDLE_TIMEOUT`] is a lost relay (as
/// QUIC's idle timeout tells it on the other path).
async fn run<S>(
    socket: tokio_tungstenite::WebSocketStream<S>,
    mut out: mpsc::Receiver<Message>,
    control: mpsc::UnboundedSender<Bytes>,
    datagrams: mpsc::Sender<Bytes>,
    ended: watch::Sender<Option<Ended>>,
) where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    let (mut sink, mut stream) = socket.split();
    let silence = tokio::time::sleep(super::IDLE_TIMEOUT);
    tokio::pin!(silence);
    let how = loop {
        tokio::select! {
            () = &mut silence => break Ended::Lost,
            message = out.recv() => match message {
                Some(m) => {
                    let mut leaving = matches!(m, Message::Close(_));
                    // What else waits goes in the same flush. A relay that
                    // stops reading is as gone as a silent one.
                    let write = async {
                        sink.feed(m).await?;
                        let mut more = 64;
                        while more > 0 && !leaving && let Ok(next) = out.try_recv() {
                            more -= 1;
                            leaving = matches!(next, Message::Close(_));
                            sink.feed(next).await?;
                        }
                        sink.flush().await
                    };
                    match tokio::time::timeout_at(silence.deadline(), write).await {
                        Err(_) => break Ended::Lost,
                        Ok(Err(_)) => break Ended::Closed(None),
                        Ok(Ok(())) if leaving => break Ended::Closed(None),
                        Ok(Ok(())) => {}
                    }
                }
                None => {
                    let _ = tokio::time::timeout_at(
                        silence.deadline(),
                        sink.send(Message::Close(None)),
                    )
                    .await;
                    break Ended::Closed(None);
                }
            },
            incoming = stream.next() => {
                silence.as_mut().reset(tokio::time::Instant::now() + super::IDLE_TIMEOUT);
                match incoming {
                Some(Ok(Message::Binary(bytes))) => match ws::parse(bytes) {
                    Ok(Inbound::Control(c)) => {
                        if control.send(c).is_err() {
                            break Ended::Closed(None);
                        }
                    }
                    // A reader that does not keep up loses datagrams, as
                    // over QUIC.
                    Ok(Inbound::Datagram(d)) => {
                        let _ = datagrams.try_send(d);
                    }
                    Err(_) => break Ended::Closed(None),
                },
                Some(Ok(Message::Close(frame))) => {
                    break Ended::Closed(frame.and_then(|f| ws::quic_close_code(u16::from(f.code)).map(u64::from)));
                }
                Some(Ok(Message::Ping(_))) => {
                    // The pong tungstenite queued goes out now.
                    match tokio::time::timeout_at(silence.deadline(), sink.flush()).await {
                        Err(_) => break Ended::Lost,
                        Ok(Err(_)) => break Ended::Closed(None),
                        Ok(Ok(())) => {}
                    }
                }
                Some(Ok(_)) => {}
                Some(Err(_)) | None => break Ended::Closed(None),
                }
            }
        }
    };
    let _ = ended.send(Some(how));
}

impl Link {
    /// Hands a message to the socket's task, waiting while its queue is
    /// full.
    async fn send(&self, message: Message) -> Result<(), ClientError> {
        self.out.send(message).await.map_err(|_| self.ended_error())
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
            .map_err(|e| match e {
                mpsc::error::TrySendError::Closed(_) => self.ended_error(),
                full => ClientError::Send(full.to_string()),
            })
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
            .ok_or_else(|| self.ended_error())
    }

    /// Why the connection can no longer be used.
    pub(super) fn ended_error(&self) -> ClientError {
        if self.is_lost() {
            ClientError::Lost
        } else {
            ClientError::Closed("the WebSocket connection is closed".into())
        }
    }

    /// The relay's close code, once closed (`None` while open or when it
    /// gave none).
    pub(super) fn close_code(&self) -> Option<u64> {
        match *self.ended.borrow() {
            Some(Ended::Closed(code)) => code,
            _ => None,
        }
    }

    pub(super) fn is_closed(&self) -> bool {
        self.ended.borrow().is_some()
    }

    /// Whether the connection ended because the relay fell silent.
    pub(super) fn is_lost(&self) -> bool {
        *self.ended.borrow() == Some(Ended::Lost)
    }

    /// Waits until closed; the relay's close code if it gave one.
    pub(super) async fn closed(&self) -> Option<u64> {
        let mut ended = self.ended.clone();
        match *ended.wait_for(Option::is_some).await.ok()? {
            Some(Ended::Closed(code)) => code,
            _ => None,
        }
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

#[cfg(test)]
mod tests {
    use super::*;
    use tokio_tungstenite::WebSocketStream;
    use tokio_tungstenite::tungstenite::protocol::Role;

    /// A client task on one end of an in-memory pipe, the relay's end of
    /// the WebSocket returned.
    async fn pair() -> (WebSocketStream<tokio::io::DuplexStream>, Link, ControlIn) {
        let (near, far) = tokio::io::duplex(64 << 10);
        let client = WebSocketStream::from_raw_socket(near, Role::Client, None).await;
        let relay = WebSocketStream::from_raw_socket(far, Role::Server, None).await;
        let (out_tx, out_rx) = mpsc::channel(8);
        let (control_tx, control_rx) = mpsc::unbounded_channel();
        let (datagram_tx, datagram_rx) = mpsc::channel(8);
        let (ended_tx, ended) = watch::channel(None);
        tokio::spawn(run(client, out_rx, control_tx, datagram_tx, ended_tx));
        let link = Link {
            out: out_tx,
            datagrams: Arc::new(Mutex::new(datagram_rx)),
            ended,
        };
        (relay, link, ControlIn(control_rx))
    }

    #[tokio::test(start_paused = true)]
    async fn a_relay_that_falls_silent_is_lost_after_the_idle_timeout() {
        let (_relay, link, mut control) = pair().await;
        let started = tokio::time::Instant::now();
        assert_eq!(control.next().await, None);
        assert!(started.elapsed() >= crate::client::IDLE_TIMEOUT);
        assert!(link.is_lost());
        assert!(matches!(link.ended_error(), ClientError::Lost));
        assert_eq!(link.closed().await, None);
    }

    #[tokio::test(start_paused = true)]
    async fn a_relay_that_stops_reading_is_lost_though_it_pings() {
        let (relay, link, _control) = pair().await;
        // The relay still pings, but reads nothing: the pipe fills, and
        // the client's writes (its datagrams, its pongs) wait.
        let (mut relay_out, _relay_in) = relay.split();
        tokio::spawn(async move {
            loop {
                tokio::time::sleep(std::time::Duration::from_secs(10)).await;
                if relay_out.send(Message::Ping(Bytes::new())).await.is_err() {
                    break;
                }
            }
        });
        let started = tokio::time::Instant::now();
        let datagram = vec![7u8; 1000];
        while !link.is_closed() {
            // A full queue is loss; the task's blocked write is what ends it.
            let _ = link.send_datagram(&datagram);
            tokio::time::sleep(std::time::Duration::from_millis(10)).await;
        }
        assert!(link.is_lost(), "{:?}", *link.ended.borrow());
        assert!(started.elapsed() < std::time::Duration::from_secs(60));
        assert!(matches!(
            link.send_datagram(&datagram),
            Err(ClientError::Lost)
        ));
    }

    #[tokio::test(start_paused = true)]
    async fn a_relay_that_pings_keeps_a_quiet_connection_alive() {
        let (mut relay, link, _control) = pair().await;
        for _ in 0..9 {
            tokio::time::sleep(std::time::Duration::from_secs(10)).await;
            relay.send(Message::Ping(Bytes::new())).await.unwrap();
            // The client answers each ping.
            assert!(matches!(relay.next().await, Some(Ok(Message::Pong(_)))));
        }
        assert!(!link.is_closed(), "90 s of pings only");
        relay
            .send(Message::Close(Some(CloseFrame {
                code: CloseCode::from(4000 + 3),
                reason: "".into(),
            })))
            .await
            .unwrap();
        assert_eq!(link.closed().await, Some(3));
        assert!(!link.is_lost());
    }
}
