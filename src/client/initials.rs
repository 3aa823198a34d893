//! QUIC Initial packets as a client's first flight, each opening a new
//! connection attempt, for the `hostile` load tool and the tests that play
//! an attacker who sends them with a forged source address and never
//! answers. Built with quinn's sans-IO protocol crate, so they are exactly
//! what a real client would send first.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Instant;

/// `count` Initial datagrams for the relay at `server`, each of its own
/// connection (a fresh connection id).
pub fn initials(server: SocketAddr, count: usize) -> Result<Vec<Vec<u8>>, String> {
    // The handshake never gets far enough for the pin to matter.
    let crypto = crate::quic::pinned_client_config_for(&"00".repeat(32), crate::wire::ALPN)?;
    let config = quinn_proto::ClientConfig::new(Arc::new(crypto));
    let mut endpoint = quinn_proto::Endpoint::new(
        Arc::new(quinn_proto::EndpointConfig::default()),
        None,
        false,
        None,
    );
    let now = Instant::now();
    let mut out = Vec::with_capacity(count);
    for _ in 0..count {
        let (_, mut conn) = endpoint
            .connect(now, config.clone(), server, "relay")
            .map_err(|e| format!("cannot build an Initial: {e}"))?;
        let mut buf = Vec::new();
        let t = conn
            .poll_transmit(now, 1, &mut buf)
            .ok_or("the connection had no Initial to send")?;
        buf.truncate(t.size);
        out.push(buf);
    }
    Ok(out)
}

/// Sends `packets` to `server` from `from` (an address of this host,
/// standing in for a forged source), never reading an answer.
pub fn send_from(from: SocketAddr, server: SocketAddr, packets: &[Vec<u8>]) -> std::io::Result<()> {
    let socket = std::net::UdpSocket::bind(from)?;
    for p in packets {
        socket.send_to(p, server)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_initial_is_a_long_header_packet_of_a_new_connection() {
        let packets = initials("127.0.0.1:4433".parse().unwrap(), 3).unwrap();
        assert_eq!(packets.len(), 3);
        for p in &packets {
            // Long header, Initial type; padded to at least 1,200 bytes.
            assert_eq!(p[0] & 0xf0, 0xc0, "{:x}", p[0]);
            assert!(p.len() >= 1200);
        }
        assert_ne!(packets[0][6..14], packets[1][6..14]);
    }
}
