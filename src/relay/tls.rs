//! The relay's certificate (from files, or self-signed for development, and
//! then renewed), and the QUIC crypto that serves it ([`crate::quic`]).

use std::path::Path;
use std::time::{Duration, SystemTime};

use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};

use crate::quic;
use crate::wire::ALPN;

/// A certificate chain and its key.
#[derive(Debug)]
pub struct Identity {
    pub chain: Vec<CertificateDer<'static>>,
    pub key: PrivateKeyDer<'static>,
    /// Set for a self-signed certificate, which the running relay replaces
    /// with a new one before it expires; `None` for files (a CA-issued
    /// certificate, renewed by its operator).
    pub renewal: Option<Renewal>,
}

/// How a self-signed certificate is made again.
#[derive(Debug, Clone)]
pub struct Renewal {
    pub names: Vec<String>,
    /// From `not_before` to `not_after`.
    pub lifetime: Duration,
    /// When the certificate in use expires.
    pub expires: SystemTime,
}

impl Renewal {
    /// When to replace the certificate: with a third of its lifetime left,
    /// so a browser given its hash in a join answer (tickets last minutes)
    /// never meets an expired one.
    pub fn due(&self) -> SystemTime {
        self.expires - self.lifetime / 3
    }
}

/// Browsers accept a certificate pinned by `serverCertificateHashes` only
/// if it is valid for at most 14 days in all (and uses ECDSA P-256).
pub const MAX_PINNED_LIFETIME: Duration = Duration::from_secs(14 * 24 * 3600);

/// Lifetime of the relay's self-signed certificate: inside the browsers'
/// bound with an hour to spare for clock skew.
pub const SELF_SIGNED_LIFETIME: Duration = Duration::from_secs(14 * 24 * 3600 - 3600);

/// How far back `not_before` goes, for clients whose clocks are behind.
const BACKDATE: Duration = Duration::from_secs(300);

impl Identity {
    /// A self-signed certificate for `names` (IP addresses or host names)
    /// that browsers can pin: ECDSA P-256, valid for
    /// [`SELF_SIGNED_LIFETIME`] from a few minutes ago.
    pub fn self_signed(names: Vec<String>) -> Result<Self, String> {
        Self::self_signed_for(names, SELF_SIGNED_LIFETIME)
    }

    /// [`Identity::self_signed`] valid for `lifetime` in all (at most
    /// [`MAX_PINNED_LIFETIME`]).
    pub fn self_signed_for(names: Vec<String>, lifetime: Duration) -> Result<Self, String> {
        Self::self_signed_from(names, SystemTime::now(), lifetime)
    }

    /// [`Identity::self_signed_for`], valid from a few minutes before
    /// `start` (the moment it is to be put in force, possibly later).
    pub fn self_signed_from(
        names: Vec<String>,
        start: SystemTime,
        lifetime: Duration,
    ) -> Result<Self, String> {
        if lifetime > MAX_PINNED_LIFETIME || lifetime <= BACKDATE {
            return Err(format!(
                "a self-signed certificate must be valid for more than {} s and at most 14 days",
                BACKDATE.as_secs()
            ));
        }
        let not_before = start - BACKDATE;
        let not_after = not_before + lifetime;
        let mut params = rcgen::CertificateParams::new(names.clone()).map_err(|e| e.to_string())?;
        params.not_before = time::OffsetDateTime::from(not_before);
        params.not_after = time::OffsetDateTime::from(not_after);
        let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256)
            .map_err(|e| e.to_string())?;
        let cert = params.self_signed(&key).map_err(|e| e.to_string())?;
        Ok(Identity {
            chain: vec![cert.der().clone()],
            key: PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key.serialize_der())),
            renewal: Some(Renewal {
                names,
                lifetime,
                expires: not_after,
            }),
        })
    }

    /// The self-signed certificate that replaces this one at its renewal
    /// ([`Renewal::due`]), valid from then; `None` for one from files.
    pub fn successor(&self) -> Option<Result<Self, String>> {
        let r = self.renewal.as_ref()?;
        Some(Self::self_signed_from(r.names.clone(), r.due(), r.lifetime))
    }

    /// Reads a PEM certificate chain and PEM private key.
    pub fn from_pem_files(cert: &Path, key: &Path) -> Result<Self, String> {
        use rustls::pki_types::pem::PemObject;
        let chain = CertificateDer::pem_file_iter(cert)
            .and_then(|certs| certs.collect::<Result<Vec<_>, _>>())
            .map_err(|e| format!("{}: {e}", cert.display()))?;
        if chain.is_empty() {
            return Err(format!("{}: no certificate", cert.display()));
        }
        let key =
            PrivateKeyDer::from_pem_file(key).map_err(|e| format!("{}: {e}", key.display()))?;
        Ok(Identity {
            chain,
            key,
            renewal: None,
        })
    }

    /// SHA-256 of the end-entity certificate, lower-case hex: what clients pin.
    pub fn fingerprint(&self) -> String {
        fingerprint(&self.chain[0])
    }
}

/// The certificate hashes clients may pin: the one in force and, for a
/// self-signed certificate, its successor, which the relay already made
/// and puts in force at the renewal. A browser given both connects across
/// the switch, however late it uses its join answer.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Pins {
    pub current: String,
    pub next: Option<String>,
}

pub use crate::tls::fingerprint;

/// The relay's QUIC server crypto: TLS 1.3 only; the native, cascade and
/// HTTP/3 (WebTransport) ALPNs.
pub fn server_config(
    identity: &Identity,
) -> Result<quinn::crypto::rustls::QuicServerConfig, String> {
    quic::server_crypto(
        &identity.chain,
        &identity.key,
        false,
        vec![
            ALPN.to_vec(),
            crate::wire::CASCADE_ALPN.to_vec(),
            crate::wire::WEBTRANSPORT_ALPN.to_vec(),
        ],
    )
}

/// The server crypto for a connection from another relay's address (a
/// cascade link): the cascade ALPN only, and the peer is asked for its
/// certificate. Any certificate is taken in the handshake, its signature
/// checked; the link's ticket then says whether it is the dialing relay's
/// ([`crate::ticket::Verifier::check_cascade`]). A peer that presents none
/// completes the handshake and is refused with a clear code instead.
pub fn link_server_config(
    identity: &Identity,
) -> Result<quinn::crypto::rustls::QuicServerConfig, String> {
    quic::server_crypto(
        &identity.chain,
        &identity.key,
        true,
        vec![crate::wire::CASCADE_ALPN.to_vec()],
    )
}

/// The client crypto of a cascade link: pins the accepting relay's
/// certificate (`pin`) and presents this relay's own (`identity`).
pub fn link_client_config(
    pin: &str,
    identity: &Identity,
) -> Result<quinn::crypto::rustls::QuicClientConfig, String> {
    quic::client_crypto(
        pin,
        Some((&identity.chain, &identity.key)),
        crate::wire::CASCADE_ALPN,
    )
}

#[cfg(test)]
mod tests {

    #[test]
    fn self_signed_certificates_fit_the_browsers_rules_and_their_successor_starts_at_the_renewal() {
        let id = Identity::self_signed(vec!["127.0.0.1".into()]).unwrap();
        let r = id.renewal.clone().unwrap();
        assert!(r.lifetime <= MAX_PINNED_LIFETIME);
        let next = id.successor().unwrap().unwrap();
        let n = next.renewal.clone().unwrap();
        assert_ne!(id.fingerprint(), next.fingerprint());
        // Valid from (a few minutes before) the renewal, for as long.
        assert_eq!(n.expires - n.lifetime, r.due() - BACKDATE);
        assert!(n.expires > r.expires);
        assert!(
            Identity::self_signed_for(
                vec!["x".into()],
                MAX_PINNED_LIFETIME + Duration::from_secs(1)
            )
            .is_err()
        );
        let files = Identity {
            chain: id.chain.clone(),
            key: id.key.clone_key(),
            renewal: None,
        };
        assert!(files.successor().is_none());
    }

    use super::*;

    #[test]
    fn pem_files_load_with_the_same_fingerprint() {
        let certified =
            rcgen::generate_simple_self_signed(vec!["relay.example".to_owned()]).unwrap();
        let dir = tempfile::tempdir().unwrap();
        let (cert, key) = (dir.path().join("cert.pem"), dir.path().join("key.pem"));
        std::fs::write(&cert, certified.cert.pem()).unwrap();
        std::fs::write(&key, certified.signing_key.serialize_pem()).unwrap();
        let identity = Identity::from_pem_files(&cert, &key).unwrap();
        assert_eq!(identity.fingerprint(), fingerprint(certified.cert.der()));
        assert!(server_config(&identity).is_ok());
        // A missing or empty file is an error naming it, not a panic.
        let err = Identity::from_pem_files(&dir.path().join("absent.pem"), &key).unwrap_err();
        assert!(err.contains("absent.pem"), "{err}");
        std::fs::write(dir.path().join("empty.pem"), "").unwrap();
        assert!(Identity::from_pem_files(&dir.path().join("empty.pem"), &key).is_err());
    }
}
