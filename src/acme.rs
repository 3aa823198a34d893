//! Certificates from an ACME CA (RFC 8555) for a listener given a DNS
//! name: a relay's WebSocket listener, whose browsers accept only a
//! certificate from a CA they trust (WebSocket has no certificate
//! pinning).
//!
//! The listener serves [`Managed`], which answers normal handshakes with
//! the certificate in force and TLS-ALPN-01 validations (RFC 8737: ALPN
//! `acme-tls/1`, the name in SNI) with the challenge certificate, on the
//! listener's own port, so no other port is needed. [`Managed::run`]
//! obtains a certificate when there is none, and a new one with a third
//! of the current one's lifetime left; each is kept on disk
//! (`<state_dir>/ca-<directory hash>/account.json`, and `<name>/cert.pem`
//! and `key.pem` beside it) and served to new handshakes from then on, while open
//! connections keep theirs. A failure keeps the certificate in force and
//! is tried again later (doubling waits up to an hour), counted in
//! `…_acme_failures_total`.

use std::collections::HashMap;
use std::future::Future;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use bytes::Bytes;
use instant_acme::{
    Account, AccountCredentials, AuthorizationStatus, BodyWrapper, BytesResponse, ChallengeType,
    Identifier, NewAccount, NewOrder, OrderStatus, RetryPolicy,
};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use tracing::{info, warn};

/// The ALPN protocol of TLS-ALPN-01 validations.
pub const ACME_TLS_ALPN: &[u8] = b"acme-tls/1";

/// Where and how to get certificates.
#[derive(Debug, Clone)]
pub struct Settings {
    /// The CA's directory URL.
    pub directory: String,
    pub contact: Vec<String>,
    /// Where the account and this listener's certificate are kept.
    pub state_dir: PathBuf,
    /// Roots the directory's HTTPS certificate chains to.
    pub roots: Arc<rustls::RootCertStore>,
}

impl Settings {
    /// From the policy's `[acme]` section, for state under `subdir`.
    pub fn from_section(
        section: &crate::policy::files::AcmeSection,
        subdir: &str,
    ) -> Result<Settings, String> {
        let ca_file = section
            .ca_file
            .clone()
            .unwrap_or_else(|| PathBuf::from("/etc/ssl/certs/ca-certificates.crt"));
        Ok(Settings {
            directory: section.directory.clone(),
            contact: section.contact.clone(),
            state_dir: section.state_dir.join(subdir),
            roots: Arc::new(crate::tls::ca_roots(&ca_file)?),
        })
    }
}

/// What the renewal loop reports.
#[derive(Debug, Clone)]
pub struct Metrics {
    /// `notAfter` of the certificate in force (Unix seconds), 0 for none.
    pub expiry: prometheus::IntGauge,
    pub issued: prometheus::IntCounter,
    pub failures: prometheus::IntCounter,
}

/// The certificate in force, with its validity.
#[derive(Debug, Clone)]
struct Current {
    key: Arc<CertifiedKey>,
    not_before: i64,
    not_after: i64,
}

/// A listener's certificate for one DNS name, obtained and renewed over
/// ACME.
#[derive(Debug)]
pub struct Managed {
    name: String,
    /// Where its certificate is kept: per CA directory and name, so that
    /// a changed name or CA never serves what was kept for another.
    folder: PathBuf,
    current: RwLock<Option<Current>>,
    /// Challenge certificates by the name they answer for (lower case).
    challenges: Mutex<HashMap<String, Arc<CertifiedKey>>>,
}

impl Managed {
    /// A certificate for `name` from the CA `settings` name, starting from
    /// the one kept for both if it is still valid.
    pub fn new(name: &str, settings: &Settings) -> Arc<Managed> {
        let name = name.to_ascii_lowercase();
        let managed = Managed {
            folder: directory_folder(settings).join(&name),
            name,
            current: RwLock::new(None),
            challenges: Mutex::new(HashMap::new()),
        };
        match load(&managed.folder) {
            Ok(Some(current)) if current.not_after > crate::clock::unix_now() as i64 => {
                *managed.current.write().unwrap_or_else(|e| e.into_inner()) = Some(current);
            }
            Ok(_) => {}
            Err(e) => {
                warn!(error = %e, "the kept ACME certificate is unusable; a new one is ordered")
            }
        }
        Arc::new(managed)
    }

    /// Where the certificate and its key are kept.
    pub fn folder(&self) -> &Path {
        &self.folder
    }

    /// `notAfter` of the certificate in force, if any.
    pub fn not_after(&self) -> Option<i64> {
        self.current().map(|c| c.not_after)
    }

    fn current(&self) -> Option<Current> {
        self.current
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// TLS 1.3 for the listener: HTTP/1.1, and `acme-tls/1` for
    /// validations.
    pub fn server_config(self: &Arc<Self>) -> Arc<rustls::ServerConfig> {
        let mut config = rustls::ServerConfig::builder_with_provider(crate::tls::provider())
            .with_protocol_versions(&[&rustls::version::TLS13])
            .unwrap_or_else(|e| panic!("ring supports TLS 1.3: {e}"))
            .with_no_client_auth()
            .with_cert_resolver(self.clone());
        // A browser offers http/1.1 and gets it; a validator offers only
        // acme-tls/1.
        config.alpn_protocols = vec![crate::tls::HTTP1_ALPN.to_vec(), ACME_TLS_ALPN.to_vec()];
        Arc::new(config)
    }

    /// When to renew: with a third of the lifetime left (now, if there is
    /// no certificate).
    fn due(&self) -> i64 {
        match self.current() {
            Some(c) => c.not_after - (c.not_after - c.not_before) / 3,
            None => 0,
        }
    }

    /// Obtains and renews the certificate until the task is dropped.
    pub async fn run(self: Arc<Self>, settings: Settings, metrics: Metrics) {
        metrics.expiry.set(self.not_after().unwrap_or(0));
        let mut failures = 0u32;
        loop {
            let wait = self.due() - crate::clock::unix_now() as i64;
            if wait > 0 {
                // Woken at least hourly, so a clock that jumps is noticed.
                tokio::time::sleep(Duration::from_secs(wait.min(3600) as u64)).await;
                continue;
            }
            // A CA that stops answering mid-order is given up on.
            let order = tokio::time::timeout(Duration::from_secs(300), self.obtain(&settings));
            match order
                .await
                .unwrap_or_else(|_| Err("no certificate within 5 minutes".into()))
            {
                Ok(current) => {
                    failures = 0;
                    info!(name = %self.name, not_after = current.not_after, "ACME certificate in force");
                    metrics.expiry.set(current.not_after);
                    metrics.issued.inc();
                    *self.current.write().unwrap_or_else(|e| e.into_inner()) = Some(current);
                    // Never order back to back, whatever the clock says.
                    tokio::time::sleep(Duration::from_secs(5)).await;
                }
                Err(e) => {
                    failures += 1;
                    metrics.failures.inc();
                    let backoff =
                        Duration::from_secs(5 << failures.min(10)).min(Duration::from_secs(3600));
                    warn!(name = %self.name, error = %e, retry_in = ?backoff, "ACME certificate not obtained");
                    tokio::time::sleep(backoff).await;
                }
            }
        }
    }

    /// One order: account, TLS-ALPN-01 for the name, finalize, download,
    /// keep on disk.
    async fn obtain(&self, s: &Settings) -> Result<Current, String> {
        let account = account(s).await?;
        let identifier = match self.name.parse::<std::net::IpAddr>() {
            Ok(ip) => Identifier::Ip(ip),
            Err(_) => Identifier::Dns(self.name.clone()),
        };
        let mut order = account
            .new_order(&NewOrder::new(&[identifier]))
            .await
            .map_err(|e| format!("new order: {e}"))?;
        let mut answered = Vec::new();
        let mut authorizations = order.authorizations();
        while let Some(authorization) = authorizations.next().await {
            let mut authorization = authorization.map_err(|e| format!("authorization: {e}"))?;
            match authorization.status {
                AuthorizationStatus::Pending => {}
                // Validated recently for this account: nothing to prove.
                AuthorizationStatus::Valid => continue,
                other => return Err(format!("authorization is {other:?}")),
            }
            let mut challenge = authorization
                .challenge(ChallengeType::TlsAlpn01)
                .ok_or("the CA offers no tls-alpn-01 challenge")?;
            let digest = challenge.key_authorization().digest();
            let sni = sni_of(challenge.identifier().identifier);
            let key = challenge_certificate(&self.name, digest.as_ref())?;
            self.challenges
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .insert(sni.clone(), key);
            answered.push(sni);
            challenge
                .set_ready()
                .await
                .map_err(|e| format!("challenge: {e}"))?;
        }
        let retries = RetryPolicy::new()
            .initial_delay(Duration::from_millis(100))
            .backoff(1.5)
            .timeout(Duration::from_secs(60));
        let status = order.poll_ready(&retries).await;
        {
            let mut challenges = self.challenges.lock().unwrap_or_else(|e| e.into_inner());
            for sni in answered {
                challenges.remove(&sni);
            }
        }
        match status.map_err(|e| format!("order: {e}"))? {
            OrderStatus::Ready => {}
            other => {
                return Err(format!(
                    "the order is {other:?}, not ready: validation failed"
                ));
            }
        }
        let key_pem = order
            .finalize()
            .await
            .map_err(|e| format!("finalize: {e}"))?;
        let chain_pem = order
            .poll_certificate(&retries)
            .await
            .map_err(|e| format!("certificate: {e}"))?;
        let current = certified(chain_pem.as_bytes(), key_pem.as_bytes())?;
        keep(&self.folder, &chain_pem, &key_pem)?;
        Ok(current)
    }
}

impl ResolvesServerCert for Managed {
    fn resolve(&self, hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        let validation = hello
            .alpn()
            .is_some_and(|mut offered| offered.any(|p| p == ACME_TLS_ALPN));
        if validation {
            let sni = hello.server_name()?.to_ascii_lowercase();
            return self
                .challenges
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .get(&sni)
                .cloned();
        }
        self.current().map(|c| c.key)
    }
}

/// The SNI a validator sends for `identifier`: the name, or for an IP
/// address its reverse-DNS name (RFC 8738).
fn sni_of(identifier: &Identifier) -> String {
    match identifier {
        Identifier::Ip(std::net::IpAddr::V4(ip)) => {
            let [a, b, c, d] = ip.octets();
            format!("{d}.{c}.{b}.{a}.in-addr.arpa")
        }
        Identifier::Ip(std::net::IpAddr::V6(ip)) => {
            let mut name = String::new();
            for byte in ip.octets().iter().rev() {
                name.push_str(&format!("{:x}.{:x}.", byte & 0xf, byte >> 4));
            }
            name + "ip6.arpa"
        }
        Identifier::Dns(name) => name.to_ascii_lowercase(),
        other => format!("{other:?}"),
    }
}

/// The self-signed certificate that answers a TLS-ALPN-01 challenge:
/// the one name, and the critical acmeIdentifier extension carrying the
/// key authorization's SHA-256.
fn challenge_certificate(name: &str, digest: &[u8]) -> Result<Arc<CertifiedKey>, String> {
    let mut params =
        rcgen::CertificateParams::new(vec![name.to_owned()]).map_err(|e| e.to_string())?;
    params.custom_extensions = vec![rcgen::CustomExtension::new_acme_identifier(digest)];
    let key = rcgen::KeyPair::generate().map_err(|e| e.to_string())?;
    let cert = params.self_signed(&key).map_err(|e| e.to_string())?;
    let der = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key.serialize_der()));
    // Not `CertifiedKey::from_der`: its check that key and certificate
    // match parses the certificate, and refuses the critical extension
    // every challenge certificate carries.
    let signing = crate::tls::provider()
        .key_provider
        .load_private_key(der)
        .map_err(|e| e.to_string())?;
    Ok(Arc::new(CertifiedKey::new(
        vec![cert.der().clone()],
        signing,
    )))
}

/// A chain and key in PEM as served, with the leaf's validity.
fn certified(chain_pem: &[u8], key_pem: &[u8]) -> Result<Current, String> {
    use rustls::pki_types::pem::PemObject;
    let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_slice_iter(chain_pem)
        .collect::<Result<_, _>>()
        .map_err(|e| format!("the certificate chain: {e}"))?;
    let key = PrivateKeyDer::from_pem_slice(key_pem).map_err(|e| format!("the key: {e}"))?;
    let leaf = chain.first().ok_or("an empty certificate chain")?.clone();
    let (not_before, not_after) = crate::tls::validity(&leaf)?;
    let key =
        CertifiedKey::from_der(chain, key, &crate::tls::provider()).map_err(|e| e.to_string())?;
    Ok(Current {
        key: Arc::new(key),
        not_before,
        not_after,
    })
}

fn load(dir: &Path) -> Result<Option<Current>, String> {
    let (cert, key) = (dir.join("cert.pem"), dir.join("key.pem"));
    if !cert.exists() {
        return Ok(None);
    }
    let read = |p: &Path| std::fs::read(p).map_err(|e| format!("{}: {e}", p.display()));
    certified(&read(&cert)?, &read(&key)?).map(Some)
}

/// Writes `name` in `dir` by a rename, so a crash leaves the old file or
/// the new one, never half of one; readable by the owner only.
fn write_atomically(dir: &Path, name: &str, contents: &[u8]) -> Result<(), String> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let temporary = dir.join(format!(".{name}.new"));
    let fail = |e: std::io::Error| format!("{}: {e}", temporary.display());
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(&temporary)
        .map_err(fail)?;
    file.write_all(contents).map_err(fail)?;
    file.sync_all().map_err(fail)?;
    std::fs::rename(&temporary, dir.join(name)).map_err(fail)
}

fn keep(dir: &Path, chain_pem: &str, key_pem: &str) -> Result<(), String> {
    std::fs::create_dir_all(dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    write_atomically(dir, "key.pem", key_pem.as_bytes())?;
    write_atomically(dir, "cert.pem", chain_pem.as_bytes())
}

/// The state folder of the CA `s` names: its account and certificates.
fn directory_folder(s: &Settings) -> PathBuf {
    use sha2::Digest;
    let digest = sha2::Sha256::digest(s.directory.as_bytes());
    s.state_dir
        .join(format!("ca-{}", hex::encode(&digest[..8])))
}

/// The account kept for the CA, or a new one (kept there).
async fn account(s: &Settings) -> Result<Account, String> {
    let folder = directory_folder(s);
    let path = folder.join("account.json");
    let http = || -> Box<dyn instant_acme::HttpClient> {
        Box::new(Client {
            tls: Arc::new(crate::tls::client_config(
                (*s.roots).clone(),
                &[crate::tls::HTTP1_ALPN],
            )),
        })
    };
    if let Ok(text) = std::fs::read_to_string(&path) {
        let credentials: AccountCredentials =
            serde_json::from_str(&text).map_err(|e| format!("{}: {e}", path.display()))?;
        return Account::builder_with_http(http())
            .from_credentials(credentials)
            .await
            .map_err(|e| format!("the ACME directory: {e}"));
    }
    let contact: Vec<&str> = s.contact.iter().map(String::as_str).collect();
    let (account, credentials) = Account::builder_with_http(http())
        .create(
            &NewAccount {
                contact: &contact,
                terms_of_service_agreed: true,
                only_return_existing: false,
            },
            s.directory.clone(),
            None,
        )
        .await
        .map_err(|e| format!("a new ACME account: {e}"))?;
    std::fs::create_dir_all(&folder).map_err(|e| format!("{}: {e}", folder.display()))?;
    let json = serde_json::to_string(&credentials).map_err(|e| e.to_string())?;
    write_atomically(&folder, "account.json", json.as_bytes())?;
    Ok(account)
}

/// HTTPS to the ACME directory over our own hyper and rustls.
struct Client {
    tls: Arc<rustls::ClientConfig>,
}

impl instant_acme::HttpClient for Client {
    fn request(
        &self,
        request: axum::http::Request<BodyWrapper<Bytes>>,
    ) -> Pin<Box<dyn Future<Output = Result<BytesResponse, instant_acme::Error>> + Send>> {
        let tls = self.tls.clone();
        Box::pin(async move {
            send(tls, request)
                .await
                .map_err(|e| instant_acme::Error::Other(e.into()))
        })
    }
}

async fn send(
    tls: Arc<rustls::ClientConfig>,
    request: axum::http::Request<BodyWrapper<Bytes>>,
) -> Result<BytesResponse, String> {
    let (mut parts, body) = request.into_parts();
    let host = parts.uri.host().ok_or("a URL without a host")?.to_owned();
    let port = parts.uri.port_u16().unwrap_or(443);
    if parts.uri.scheme_str() != Some("https") {
        return Err(format!("{}: ACME only over https", parts.uri));
    }
    let addr = tokio::net::lookup_host((host.as_str(), port))
        .await
        .map_err(|e| format!("{host}: {e}"))?
        .next()
        .ok_or_else(|| format!("{host}: no address"))?;
    let tcp = tokio::time::timeout(
        Duration::from_secs(10),
        tokio::net::TcpStream::connect(addr),
    )
    .await
    .map_err(|_| format!("{addr}: no connection in 10 s"))?
    .map_err(|e| format!("{addr}: {e}"))?;
    let name = rustls::pki_types::ServerName::try_from(
        host.trim_start_matches('[')
            .trim_end_matches(']')
            .to_owned(),
    )
    .map_err(|e| format!("{host}: {e}"))?;
    let stream = tokio_rustls::TlsConnector::from(tls)
        .connect(name, tcp)
        .await
        .map_err(|e| format!("TLS to {addr}: {e}"))?;
    let (mut sender, connection) =
        hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(stream))
            .await
            .map_err(|e| e.to_string())?;
    tokio::spawn(connection);
    // Origin form, with the Host the directory builds its URLs from.
    let authority = parts.uri.authority().map(|a| a.to_string()).unwrap_or(host);
    parts.uri = parts
        .uri
        .path_and_query()
        .map(|p| p.as_str())
        .unwrap_or("/")
        .parse()
        .map_err(|e| format!("{e}"))?;
    parts.headers.insert(
        axum::http::header::HOST,
        axum::http::HeaderValue::from_str(&authority).map_err(|e| e.to_string())?,
    );
    let response = tokio::time::timeout(
        Duration::from_secs(30),
        sender.send_request(axum::http::Request::from_parts(parts, body)),
    )
    .await
    .map_err(|_| "no answer in 30 s".to_owned())?
    .map_err(|e| e.to_string())?;
    Ok(BytesResponse::from(response))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn validators_name_ip_addresses_by_their_reverse_dns_name() {
        assert_eq!(
            sni_of(&Identifier::Ip("127.0.0.1".parse().unwrap())),
            "1.0.0.127.in-addr.arpa"
        );
        assert!(
            sni_of(&Identifier::Ip("2001:db8::1".parse().unwrap()))
                .ends_with(".8.b.d.0.1.0.0.2.ip6.arpa")
        );
        assert_eq!(sni_of(&Identifier::Dns("Relay.Test".into())), "relay.test");
    }

    #[test]
    fn a_challenge_certificate_names_one_identifier_and_carries_the_digest() {
        let key = challenge_certificate("relay.test", &[7u8; 32]).unwrap();
        assert_eq!(key.cert.len(), 1);
        let der = key.cert[0].as_ref();
        // id-pe-acmeIdentifier (1.3.6.1.5.5.7.1.31), then the digest.
        let oid = [0x06, 0x08, 0x2b, 0x06, 0x01, 0x05, 0x05, 0x07, 0x01, 0x1f];
        assert!(der.windows(oid.len()).any(|w| w == oid));
        assert!(der.windows(32).any(|w| w == [7u8; 32]));
    }
}
