//! TLS over TCP: the router's HTTPS listener, and the HTTPS client relays
//! (their channel to routers), the command-line tools and the tests use.
//!
//! TLS 1.3 only, on ring (the crypto provider of the whole project). The
//! server's certificate is read from PEM files and replaced in place on
//! reload ([`ServerCert::reload`]): connections already open keep the
//! certificate they were opened with, new ones get the new one. A client
//! trusts the CA certificates of one PEM file ([`ca_roots`]): an internal
//! CA, the system's bundle of public CAs, or, for a self-signed
//! certificate, that certificate itself.

use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};

use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use sha2::{Digest, Sha256};

/// The ALPN both ends of the project's HTTPS speak.
pub const HTTP1_ALPN: &[u8] = b"http/1.1";

/// The project's one crypto provider (ring), for every rustls configuration.
pub(crate) fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// SHA-256 of a DER certificate, lower-case hex: what clients pin and logs
/// show.
pub fn fingerprint(cert: &CertificateDer<'_>) -> String {
    hex::encode(Sha256::digest(cert.as_ref()))
}

/// Every certificate in a PEM file, in order; an error when there is none.
pub fn read_certs(path: &Path) -> Result<Vec<CertificateDer<'static>>, String> {
    let certs = CertificateDer::pem_file_iter(path)
        .and_then(|certs| certs.collect::<Result<Vec<_>, _>>())
        .map_err(|e| format!("{}: {e}", path.display()))?;
    if certs.is_empty() {
        return Err(format!("{}: no PEM certificate in it", path.display()));
    }
    Ok(certs)
}

/// The CA certificates of a PEM file, as trust anchors. A bundle (the
/// system's public CAs) may hold a certificate that is not usable as one:
/// it is skipped; a file with none usable is an error.
pub fn ca_roots(path: &Path) -> Result<rustls::RootCertStore, String> {
    let mut roots = rustls::RootCertStore::empty();
    let (added, _skipped) = roots.add_parsable_certificates(read_certs(path)?);
    if added == 0 {
        return Err(format!(
            "{}: no certificate in it is usable as a CA",
            path.display()
        ));
    }
    Ok(roots)
}

/// A TLS 1.3 client verifying servers against `roots`, offering `alpn`.
pub fn client_config(roots: rustls::RootCertStore, alpn: &[&[u8]]) -> rustls::ClientConfig {
    let mut config = rustls::ClientConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13])
        .unwrap_or_else(|e| panic!("ring supports TLS 1.3: {e}"))
        .with_root_certificates(roots)
        .with_no_client_auth();
    config.alpn_protocols = alpn.iter().map(|a| a.to_vec()).collect();
    config
}

/// A server certificate and key from PEM files, replaceable while serving.
#[derive(Debug)]
pub struct ServerCert {
    cert_path: PathBuf,
    key_path: PathBuf,
    current: RwLock<Loaded>,
}

#[derive(Debug, Clone)]
struct Loaded {
    key: Arc<CertifiedKey>,
    /// `notAfter` of the end-entity certificate, Unix seconds.
    not_after: i64,
    sha256: String,
}

impl ServerCert {
    /// Reads the certificate chain (end-entity first) and its private key;
    /// refuses a key that does not match the certificate.
    pub fn load(cert: &Path, key: &Path) -> Result<ServerCert, String> {
        Ok(ServerCert {
            cert_path: cert.to_owned(),
            key_path: key.to_owned(),
            current: RwLock::new(Self::read(cert, key)?),
        })
    }

    fn read(cert: &Path, key: &Path) -> Result<Loaded, String> {
        let chain = read_certs(cert)?;
        let der =
            PrivateKeyDer::from_pem_file(key).map_err(|e| format!("{}: {e}", key.display()))?;
        let certified = CertifiedKey::from_der(chain, der, &provider()).map_err(|e| {
            format!(
                "{} and {} do not make a usable certificate: {e}",
                cert.display(),
                key.display()
            )
        })?;
        let (not_before, not_after) =
            validity(&certified.cert[0]).map_err(|e| format!("{}: {e}", cert.display()))?;
        let now = crate::clock::unix_now() as i64;
        if now < not_before || now > not_after {
            return Err(format!(
                "{}: the certificate is valid from {not_before} to {not_after} (Unix seconds), not now ({now}): clients would refuse it",
                cert.display()
            ));
        }
        let sha256 = fingerprint(&certified.cert[0]);
        Ok(Loaded {
            key: Arc::new(certified),
            not_after,
            sha256,
        })
    }

    /// Reads the files again and, if they make a usable certificate, serves
    /// it from now on; otherwise the one in force stays.
    pub fn reload(&self) -> Result<bool, String> {
        let next = Self::read(&self.cert_path, &self.key_path)?;
        let mut current = self.current.write().unwrap_or_else(|e| e.into_inner());
        let changed = current.sha256 != next.sha256;
        *current = next;
        Ok(changed)
    }

    /// The files it is read from.
    pub fn paths(&self) -> (&Path, &Path) {
        (&self.cert_path, &self.key_path)
    }

    /// `notAfter` of the certificate in force, Unix seconds.
    pub fn not_after(&self) -> i64 {
        self.current
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .not_after
    }

    /// SHA-256 of the certificate in force, lower-case hex.
    pub fn sha256(&self) -> String {
        self.current
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .sha256
            .clone()
    }

    /// TLS 1.3 server crypto serving whatever certificate is in force.
    pub fn server_config(self: &Arc<Self>) -> Arc<rustls::ServerConfig> {
        let mut config = rustls::ServerConfig::builder_with_provider(provider())
            .with_protocol_versions(&[&rustls::version::TLS13])
            .unwrap_or_else(|e| panic!("ring supports TLS 1.3: {e}"))
            .with_no_client_auth()
            .with_cert_resolver(self.clone());
        config.alpn_protocols = vec![HTTP1_ALPN.to_vec()];
        Arc::new(config)
    }
}

impl ResolvesServerCert for ServerCert {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(
            self.current
                .read()
                .unwrap_or_else(|e| e.into_inner())
                .key
                .clone(),
        )
    }
}

fn parse(cert: &CertificateDer<'_>) -> Result<x509_cert::Certificate, String> {
    use x509_cert::der::Decode;
    x509_cert::Certificate::from_der(cert.as_ref())
        .map_err(|e| format!("not an X.509 certificate: {e}"))
}

/// `notBefore` and `notAfter` of a DER certificate, Unix seconds.
pub fn validity(cert: &CertificateDer<'_>) -> Result<(i64, i64), String> {
    let v = parse(cert)?.tbs_certificate.validity;
    Ok((
        v.not_before.to_unix_duration().as_secs() as i64,
        v.not_after.to_unix_duration().as_secs() as i64,
    ))
}

/// Base64 of the SHA-256 of a DER certificate's SubjectPublicKeyInfo: what
/// Chromium's `--ignore-certificate-errors-spki-list` takes.
pub fn spki_sha256_base64(cert: &CertificateDer<'_>) -> Result<String, String> {
    use base64::Engine;
    use x509_cert::der::Encode;
    let c = parse(cert)?;
    let spki = c
        .tbs_certificate
        .subject_public_key_info
        .to_der()
        .map_err(|e| format!("cannot encode the public key: {e}"))?;
    Ok(base64::engine::general_purpose::STANDARD.encode(Sha256::digest(&spki)))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write_self_signed(dir: &Path, name: &str) -> (PathBuf, PathBuf) {
        let certified = rcgen::generate_simple_self_signed(vec!["127.0.0.1".into()]).unwrap();
        let (cert, key) = (
            dir.join(format!("{name}.crt")),
            dir.join(format!("{name}.key")),
        );
        std::fs::write(&cert, certified.cert.pem()).unwrap();
        std::fs::write(&key, certified.signing_key.serialize_pem()).unwrap();
        (cert, key)
    }

    #[test]
    fn a_reload_replaces_the_certificate_and_a_broken_one_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let (cert, key) = write_self_signed(dir.path(), "a");
        let served = ServerCert::load(&cert, &key).unwrap();
        let first = served.sha256();
        assert!(served.not_after() > 1_700_000_000);
        // Unchanged files: nothing changes.
        assert!(!served.reload().unwrap());
        // A key that is not the certificate's is refused; the old one stays.
        let (_, other_key) = write_self_signed(dir.path(), "b");
        std::fs::copy(&other_key, &key).unwrap();
        let err = served.reload().unwrap_err();
        assert!(err.contains("do not make a usable certificate"), "{err}");
        assert_eq!(served.sha256(), first);
        // A new pair is taken.
        let (b_cert, b_key) = write_self_signed(dir.path(), "b");
        std::fs::copy(&b_cert, &cert).unwrap();
        std::fs::copy(&b_key, &key).unwrap();
        assert!(served.reload().unwrap());
        assert_ne!(served.sha256(), first);
        // Expired: refused, the one in force stays.
        let in_force = served.sha256();
        let key_pair = rcgen::KeyPair::generate().unwrap();
        let mut params = rcgen::CertificateParams::new(vec!["127.0.0.1".into()]).unwrap();
        params.not_before = rcgen::date_time_ymd(2020, 1, 1);
        params.not_after = rcgen::date_time_ymd(2021, 1, 1);
        std::fs::write(&cert, params.self_signed(&key_pair).unwrap().pem()).unwrap();
        std::fs::write(&key, key_pair.serialize_pem()).unwrap();
        let err = served.reload().unwrap_err();
        assert!(err.contains("not now"), "{err}");
        assert_eq!(served.sha256(), in_force);
        // Not PEM at all.
        std::fs::write(&cert, "not a certificate").unwrap();
        assert!(served.reload().unwrap_err().contains("no PEM certificate"));
    }

    #[test]
    fn spki_hash_is_of_the_public_key_not_the_certificate() {
        let key = rcgen::KeyPair::generate().unwrap();
        let params = rcgen::CertificateParams::new(vec!["127.0.0.1".into()]).unwrap();
        let one = params.self_signed(&key).unwrap();
        let two = params.self_signed(&key).unwrap();
        let other = rcgen::generate_simple_self_signed(vec!["127.0.0.1".into()]).unwrap();
        let h = |c: &rcgen::Certificate| spki_sha256_base64(c.der()).unwrap();
        assert_eq!(h(&one), h(&two));
        assert_ne!(h(&one), h(&other.cert));
        assert_eq!(h(&one).len(), 44);
        // The SPKI is what rcgen says the public key is.
        use base64::Engine;
        use rcgen::PublicKeyData;
        let expected = base64::engine::general_purpose::STANDARD
            .encode(Sha256::digest(key.subject_public_key_info()));
        assert_eq!(h(&one), expected);
    }
}
