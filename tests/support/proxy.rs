//! A TCP proxy on loopback that records every byte crossing it either way:
//! what anyone on the path between two components would see.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

/// Everything that crossed a proxy: each direction of each connection (or
/// UDP flow) kept apart, in order, so nothing that crossed in one piece is
/// cut by another connection's bytes.
#[derive(Clone, Default)]
pub struct Recorded(Arc<Mutex<Vec<Vec<u8>>>>);

impl Recorded {
    /// A new stream; returns its index.
    fn stream(&self) -> usize {
        let mut streams = self.0.lock().unwrap();
        streams.push(Vec::new());
        streams.len() - 1
    }

    fn append(&self, stream: usize, bytes: &[u8]) {
        self.0.lock().unwrap()[stream].extend_from_slice(bytes);
    }

    /// Every stream, one after another.
    pub fn bytes(&self) -> Vec<u8> {
        self.0.lock().unwrap().concat()
    }

    pub fn len(&self) -> usize {
        self.0.lock().unwrap().iter().map(Vec::len).sum()
    }

    /// Whether `needle` crossed in one piece in any stream.
    pub fn contains(&self, needle: &[u8]) -> bool {
        !needle.is_empty()
            && self
                .0
                .lock()
                .unwrap()
                .iter()
                .any(|s| s.windows(needle.len()).any(|w| w == needle))
    }
}

/// A proxy on a free port of `ip` to `target`, connecting from each
/// client's own address; returns its address and what it records.
pub async fn recording_proxy_on(ip: &str, target: SocketAddr) -> (SocketAddr, Recorded) {
    let listener = tokio::net::TcpListener::bind((ip, 0)).await.unwrap();
    let addr = listener.local_addr().unwrap();
    let seen = Recorded::default();
    let record = seen.clone();
    tokio::spawn(async move {
        while let Ok((client, peer)) = listener.accept().await {
            // From the client's own address, so the target locates it as
            // it would without the proxy.
            let Ok(socket) = tokio::net::TcpSocket::new_v4() else {
                continue;
            };
            if socket.bind(SocketAddr::new(peer.ip(), 0)).is_err() {
                continue;
            }
            let Ok(upstream) = socket.connect(target).await else {
                continue;
            };
            let (cr, cw) = client.into_split();
            let (ur, uw) = upstream.into_split();
            for (mut from, mut to, record) in [
                (
                    Box::new(cr) as Box<dyn AsyncRead + Unpin + Send>,
                    Box::new(uw) as Box<dyn AsyncWrite + Unpin + Send>,
                    record.clone(),
                ),
                (Box::new(ur) as _, Box::new(cw) as _, record.clone()),
            ] {
                let stream = record.stream();
                tokio::spawn(async move {
                    let mut buf = vec![0u8; 16384];
                    while let Ok(n) = from.read(&mut buf).await {
                        if n == 0 {
                            break;
                        }
                        record.append(stream, &buf[..n]);
                        if to.write_all(&buf[..n]).await.is_err() {
                            break;
                        }
                    }
                    let _ = to.shutdown().await;
                });
            }
        }
    });
    (addr, seen)
}

/// [`recording_proxy_on`] 127.0.0.1.
pub async fn recording_proxy(target: SocketAddr) -> (SocketAddr, Recorded) {
    recording_proxy_on("127.0.0.1", target).await
}

/// A UDP proxy on a free port of `ip` to `target`: each client address
/// gets its own upstream socket, on `upstream_ip`, so the target sees one
/// peer per client. Records every datagram's payload both ways.
pub async fn recording_udp_proxy(
    ip: &str,
    target: SocketAddr,
    upstream_ip: &str,
) -> (SocketAddr, Recorded) {
    use std::collections::HashMap;
    let front = Arc::new(tokio::net::UdpSocket::bind((ip, 0)).await.unwrap());
    let addr = front.local_addr().unwrap();
    let seen = Recorded::default();
    let record = seen.clone();
    let upstream_ip: std::net::IpAddr = upstream_ip.parse().unwrap();
    tokio::spawn(async move {
        // Per client: its upstream socket and the stream it sends on.
        let mut upstreams: HashMap<SocketAddr, (Arc<tokio::net::UdpSocket>, usize)> =
            HashMap::new();
        let mut buf = vec![0u8; 65536];
        while let Ok((n, client)) = front.recv_from(&mut buf).await {
            let (up, sent) = match upstreams.get(&client) {
                Some(u) => u.clone(),
                None => {
                    let u = Arc::new(tokio::net::UdpSocket::bind((upstream_ip, 0)).await.unwrap());
                    let sent = record.stream();
                    upstreams.insert(client, (u.clone(), sent));
                    let (front, u2, record) = (front.clone(), u.clone(), record.clone());
                    let received = record.stream();
                    tokio::spawn(async move {
                        let mut buf = vec![0u8; 65536];
                        while let Ok(n) = u2.recv(&mut buf).await {
                            record.append(received, &buf[..n]);
                            let _ = front.send_to(&buf[..n], client).await;
                        }
                    });
                    (u, sent)
                }
            };
            record.append(sent, &buf[..n]);
            let _ = up.send_to(&buf[..n], target).await;
        }
    });
    (addr, seen)
}
