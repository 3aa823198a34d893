//! QUIC endpoint configuration shared by the relay and its clients: TLS 1.3
//! crypto that pins a relay's certificate by its SHA-256 (participants and
//! cascade links dial relays this way), server crypto for a certificate and
//! its key, and the UDP socket buffers of an endpoint. The relay's own
//! certificate, and when it renews it, are [`crate::relay::tls`]'s.

use std::sync::Arc;

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::CryptoProvider;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use rustls::{DigitallySignedStruct, SignatureScheme};

use crate::tls::{fingerprint, provider};

/// Socket buffer size asked for (the kernel caps it at its maximum, e.g.
/// `net.core.rmem_max`). The default of a few hundred KiB overflows within
/// milliseconds at gigabit rates, and overflow is loss.
const SOCKET_BUFFER_BYTES: usize = 8 << 20;

/// Asks for large UDP send and receive buffers; keeps the defaults if refused.
pub fn enlarge_socket_buffers(socket: &std::net::UdpSocket) {
    let s = socket2::SockRef::from(socket);
    if s.set_recv_buffer_size(SOCKET_BUFFER_BYTES).is_err()
        || s.set_send_buffer_size(SOCKET_BUFFER_BYTES).is_err()
    {
        tracing::warn!("could not enlarge UDP socket buffers; expect loss at high rates");
    }
}

/// TLS 1.3 server crypto serving `chain` and `key` for `alpns`. With
/// `ask_for_certificate`, clients are asked for a certificate and any whose
/// handshake signature checks out is taken: which one is acceptable is
/// decided after the handshake (a cascade link's ticket names it).
pub fn server_crypto(
    chain: &[CertificateDer<'static>],
    key: &PrivateKeyDer<'static>,
    ask_for_certificate: bool,
    alpns: Vec<Vec<u8>>,
) -> Result<quinn::crypto::rustls::QuicServerConfig, String> {
    let builder = rustls::ServerConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(|e| e.to_string())?;
    let builder = if ask_for_certificate {
        builder.with_client_cert_verifier(Arc::new(AnyClientCert {
            provider: provider(),
        }))
    } else {
        builder.with_no_client_auth()
    };
    let mut tls = builder
        .with_single_cert(chain.to_vec(), key.clone_key())
        .map_err(|e| e.to_string())?;
    tls.alpn_protocols = alpns;
    quinn::crypto::rustls::QuicServerConfig::try_from(tls).map_err(|e| e.to_string())
}

/// The SHA-256 (hex) of the certificate the peer of `conn` presented, if any.
pub fn peer_fingerprint(conn: &quinn::Connection) -> Option<String> {
    let identity = conn.peer_identity()?;
    let chain = identity.downcast::<Vec<CertificateDer<'static>>>().ok()?;
    chain.first().map(fingerprint)
}

/// Client crypto for wire protocol v1 that accepts exactly the certificate
/// whose SHA-256 is `pin` (hex), still checking the handshake signature
/// with its key.
pub fn pinned_client_config(pin: &str) -> Result<quinn::crypto::rustls::QuicClientConfig, String> {
    pinned_client_config_for(pin, crate::wire::ALPN)
}

/// [`pinned_client_config`] for another protocol (cascade links).
pub fn pinned_client_config_for(
    pin: &str,
    alpn: &[u8],
) -> Result<quinn::crypto::rustls::QuicClientConfig, String> {
    client_crypto(pin, None, alpn)
}

/// TLS 1.3 client crypto pinning `pin` for `alpn`, presenting a certificate
/// (its chain and key) when given one.
pub fn client_crypto(
    pin: &str,
    certificate: Option<(&[CertificateDer<'static>], &PrivateKeyDer<'static>)>,
    alpn: &[u8],
) -> Result<quinn::crypto::rustls::QuicClientConfig, String> {
    let tls = pinned_tls(pin, certificate, alpn)?;
    quinn::crypto::rustls::QuicClientConfig::try_from(tls).map_err(|e| e.to_string())
}

/// TLS 1.3 client config pinning `pin` for `alpn`, over TCP (the native
/// client's WebSocket transport to a relay's own certificate).
pub fn pinned_tls_config(pin: &str, alpn: &[u8]) -> Result<rustls::ClientConfig, String> {
    pinned_tls(pin, None, alpn)
}

fn pinned_tls(
    pin: &str,
    certificate: Option<(&[CertificateDer<'static>], &PrivateKeyDer<'static>)>,
    alpn: &[u8],
) -> Result<rustls::ClientConfig, String> {
    let provider = provider();
    let verifier = Arc::new(PinnedCert {
        pin: pin.trim().to_ascii_lowercase(),
        provider: provider.clone(),
    });
    let builder = rustls::ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(|e| e.to_string())?
        .dangerous()
        .with_custom_certificate_verifier(verifier);
    let mut tls = match certificate {
        Some((chain, key)) => builder
            .with_client_auth_cert(chain.to_vec(), key.clone_key())
            .map_err(|e| e.to_string())?,
        None => builder.with_no_client_auth(),
    };
    tls.alpn_protocols = vec![alpn.to_vec()];
    Ok(tls)
}

#[derive(Debug)]
struct PinnedCert {
    pin: String,
    provider: Arc<CryptoProvider>,
}

impl ServerCertVerifier for PinnedCert {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        if fingerprint(end_entity) == self.pin {
            Ok(ServerCertVerified::assertion())
        } else {
            Err(rustls::Error::General(
                "certificate does not match the pinned SHA-256".into(),
            ))
        }
    }

    fn verify_tls12_signature(
        &self,
        _message: &[u8],
        _cert: &CertificateDer<'_>,
        _dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        Err(rustls::Error::General("TLS 1.2 is not used".into()))
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.provider
            .signature_verification_algorithms
            .supported_schemes()
    }
}

/// Takes any client certificate whose handshake signature checks out:
/// which certificate is acceptable is decided after the handshake, against
/// the link's ticket.
#[derive(Debug)]
struct AnyClientCert {
    provider: Arc<CryptoProvider>,
}

impl rustls::server::danger::ClientCertVerifier for AnyClientCert {
    fn offer_client_auth(&self) -> bool {
        true
    }

    fn client_auth_mandatory(&self) -> bool {
        false
    }

    fn root_hint_subjects(&self) -> &[rustls::DistinguishedName] {
        &[]
    }

    fn verify_client_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _now: UnixTime,
    ) -> Result<rustls::server::danger::ClientCertVerified, rustls::Error> {
        Ok(rustls::server::danger::ClientCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        _message: &[u8],
        _cert: &CertificateDer<'_>,
        _dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        Err(rustls::Error::General("TLS 1.2 is not used".into()))
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.provider
            .signature_verification_algorithms
            .supported_schemes()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pinned_client_config_builds() {
        assert!(pinned_client_config(&"ab".repeat(32)).is_ok());
    }
}
