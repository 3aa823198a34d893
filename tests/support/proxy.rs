//! A TCP proxy on loopback that records every byte crossing it either way:
//! what anyone on the path between two components would see.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

/// Everything that crossed a [`recording_proxy`], both ways, in order.
#[derive(Clone, Default)]
pub struct Recorded(Arc<Mutex<Vec<u8>>>);

impl Recorded {
    pub fn bytes(&self) -> Vec<u8> {
        self.0.lock().unwrap().clone()
    }

    pub fn len(&self) -> usize {
        self.0.lock().unwrap().len()
    }

    /// Whether `needle` crossed in one piece.
    pub fn contains(&self, needle: &[u8]) -> bool {
        !needle.is_empty() && self.bytes().windows(needle.len()).any(|w| w == needle)
    }
}

/// A proxy on a free port of `ip` to `target`; returns its address and
/// what it records.
pub async fn recording_proxy_on(ip: &str, target: SocketAddr) -> (SocketAddr, Recorded) {
    let listener = tokio::net::TcpListener::bind((ip, 0)).await.unwrap();
    let addr = listener.local_addr().unwrap();
    let seen = Recorded::default();
    let record = seen.clone();
    tokio::spawn(async move {
        while let Ok((client, _)) = listener.accept().await {
            let Ok(upstream) = tokio::net::TcpStream::connect(target).await else {
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
                tokio::spawn(async move {
                    let mut buf = vec![0u8; 16384];
                    while let Ok(n) = from.read(&mut buf).await {
                        if n == 0 {
                            break;
                        }
                        record.0.lock().unwrap().extend_from_slice(&buf[..n]);
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
