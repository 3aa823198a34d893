//! A small HTTP/1.1 client (hyper) for what the project itself calls: relays
//! reporting to routers, the `dev` demo, the join load tool and tests.
//!
//! `https://ip:port/path` with a [`Tls`] that says whom to trust (and,
//! when the certificate is issued for a name rather than the address, which
//! name to verify), or `http://ip:port/path`. An `https://` URL without a
//! [`Tls`] is refused, never fetched unverified.

use std::net::{IpAddr, SocketAddr};
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full, Limited};
use hyper::header::{HeaderMap, HeaderValue};
use rustls::pki_types::ServerName;

/// Largest response body read.
const MAX_BODY: usize = 4 << 20;

/// Why a request failed before a response arrived.
#[derive(Debug, thiserror::Error)]
pub enum HttpError {
    #[error("unsupported URL '{0}': use https://ip:port/path or http://ip:port/path")]
    Url(String),
    #[error("{0} is https: give the CA that issued its certificate (--ca FILE)")]
    NoTrust(String),
    #[error("TLS with {addr} failed: {error}")]
    Tls { addr: SocketAddr, error: String },
    #[error("cannot connect: {0}")]
    Connect(String),
    #[error("request failed: {0}")]
    Request(String),
    #[error("no response in time")]
    Timeout,
}

/// A response.
#[derive(Debug, Clone)]
pub struct Response {
    pub status: u16,
    pub headers: HeaderMap,
    pub body: Bytes,
}

impl Response {
    /// The body as JSON (`Value::Null` when it is not JSON).
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body).unwrap_or(serde_json::Value::Null)
    }

    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }
}

/// Whom an HTTPS request trusts.
#[derive(Clone)]
pub struct Tls {
    config: Arc<rustls::ClientConfig>,
    /// The name the certificate must be for; default: the URL's address.
    server_name: Option<ServerName<'static>>,
}

impl std::fmt::Debug for Tls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Tls")
            .field("server_name", &self.server_name)
            .finish_non_exhaustive()
    }
}

impl Tls {
    /// Trusts the CA certificates in the PEM file `ca` (or the self-signed
    /// certificate in it).
    pub fn from_ca_file(ca: &Path) -> Result<Tls, String> {
        Ok(Tls::from_roots(crate::tls::ca_roots(ca)?))
    }

    /// Trusts the CA certificates in `ca` for certificates issued to `name`
    /// (see [`Tls::for_name`]).
    pub fn from_ca_file_for(ca: &Path, name: &str) -> Result<Tls, String> {
        Tls::from_ca_file(ca)?.for_name(name)
    }

    /// Trusts the CA certificates of every one of `files`.
    pub fn from_ca_files<'a>(files: impl IntoIterator<Item = &'a Path>) -> Result<Tls, String> {
        let mut roots = rustls::RootCertStore::empty();
        for file in files {
            roots.roots.extend(crate::tls::ca_roots(file)?.roots);
        }
        Ok(Tls::from_roots(roots))
    }

    pub fn from_roots(roots: rustls::RootCertStore) -> Tls {
        Tls {
            // One config per trust: its session cache lets repeated
            // requests (a relay's reports) resume instead of a full
            // handshake each time.
            config: Arc::new(crate::tls::client_config(roots, &[crate::tls::HTTP1_ALPN])),
            server_name: None,
        }
    }

    /// Verifies the certificate for `host` (a DNS name or an address)
    /// whatever address the URL connects to: a relay reaches its router at
    /// an address on the operator's network, the router's certificate is
    /// for the name clients use.
    pub fn for_name(mut self, host: &str) -> Result<Tls, String> {
        self.server_name = Some(
            ServerName::try_from(host.to_owned())
                .map_err(|e| format!("'{host}' is not a server name: {e}"))?,
        );
        Ok(self)
    }
}

/// What a URL asks for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Target {
    pub https: bool,
    pub addr: SocketAddr,
    pub path: String,
}

/// Splits `https://ip:port/path` or `http://ip:port/path`.
pub fn parse_url(url: &str) -> Result<Target, HttpError> {
    let (https, rest, port) = if let Some(rest) = url.strip_prefix("https://") {
        (true, rest, 443)
    } else if let Some(rest) = url.strip_prefix("http://") {
        (false, rest, 80)
    } else {
        return Err(HttpError::Url(url.to_owned()));
    };
    let (authority, path) = match rest.find('/') {
        Some(i) => (&rest[..i], &rest[i..]),
        None => (rest, "/"),
    };
    let addr = authority
        .parse::<SocketAddr>()
        .or_else(|_| format!("{authority}:{port}").parse::<SocketAddr>())
        .map_err(|_| HttpError::Url(url.to_owned()))?;
    Ok(Target {
        https,
        addr,
        path: path.to_owned(),
    })
}

/// The host of an `http(s)://host[:port]/…` URL (brackets kept off an
/// IPv6 address), for certificate names.
pub fn url_host(url: &str) -> Option<&str> {
    let rest = url
        .strip_prefix("https://")
        .or_else(|| url.strip_prefix("http://"))?;
    let authority = rest.split('/').next()?;
    if let Some(v6) = authority.strip_prefix('[') {
        return v6.split(']').next();
    }
    authority.split(':').next().filter(|h| !h.is_empty())
}

/// The trust `https://` requests use when they are given none: what a
/// tool's `--ca` says. A relay gives each router's own trust instead.
static DEFAULT_TRUST: std::sync::RwLock<Option<Tls>> = std::sync::RwLock::new(None);

/// Makes `tls` the trust of requests given none (see [`request`]).
pub fn set_default_trust(tls: Tls) {
    *DEFAULT_TRUST.write().unwrap_or_else(|e| e.into_inner()) = Some(tls);
}

/// Whether requests given no trust have one ([`set_default_trust`]).
pub fn has_default_trust() -> bool {
    default_trust().is_some()
}

fn default_trust() -> Option<Tls> {
    DEFAULT_TRUST
        .read()
        .unwrap_or_else(|e| e.into_inner())
        .clone()
}

/// Sets the default trust from a tool's `--ca FILE` (and `--server-name`,
/// for a certificate issued for a name, reached at an address), if given.
pub fn trust_ca_file(ca: Option<&Path>, server_name: Option<&str>) -> Result<(), String> {
    if let Some(ca) = ca {
        set_default_trust(match server_name {
            Some(name) => Tls::from_ca_file_for(ca, name)?,
            None => Tls::from_ca_file(ca)?,
        });
    }
    Ok(())
}

/// One request on a fresh connection, from `bind` when given (tests and the
/// demo use distinct loopback addresses to stand in for clients in
/// different countries). An `https://` URL is verified with the default
/// trust ([`set_default_trust`]).
pub async fn request(
    method: &str,
    url: &str,
    bind: Option<IpAddr>,
    headers: &[(&str, &str)],
    body: Option<Vec<u8>>,
    timeout: Duration,
) -> Result<Response, HttpError> {
    let tls = default_trust();
    request_with(method, url, tls.as_ref(), bind, headers, body, timeout).await
}

/// [`request`] verifying an `https://` URL with `tls`.
pub async fn request_with(
    method: &str,
    url: &str,
    tls: Option<&Tls>,
    bind: Option<IpAddr>,
    headers: &[(&str, &str)],
    body: Option<Vec<u8>>,
    timeout: Duration,
) -> Result<Response, HttpError> {
    tokio::time::timeout(
        timeout,
        request_inner(method, url, tls, bind, headers, body),
    )
    .await
    .map_err(|_| HttpError::Timeout)?
}

async fn request_inner(
    method: &str,
    url: &str,
    tls: Option<&Tls>,
    bind: Option<IpAddr>,
    headers: &[(&str, &str)],
    body: Option<Vec<u8>>,
) -> Result<Response, HttpError> {
    let Target { https, addr, path } = parse_url(url)?;
    let tls = match (https, tls) {
        (false, _) => None,
        (true, Some(t)) => Some(t),
        (true, None) => return Err(HttpError::NoTrust(url.to_owned())),
    };
    let socket = if addr.is_ipv4() {
        tokio::net::TcpSocket::new_v4()
    } else {
        tokio::net::TcpSocket::new_v6()
    }
    .map_err(|e| HttpError::Connect(e.to_string()))?;
    if let Some(ip) = bind {
        socket
            .bind(SocketAddr::new(ip, 0))
            .map_err(|e| HttpError::Connect(format!("bind {ip}: {e}")))?;
    }
    let stream = socket
        .connect(addr)
        .await
        .map_err(|e| HttpError::Connect(format!("{addr}: {e}")))?;
    let _ = stream.set_nodelay(true);
    let (mut sender, driver) = match tls {
        None => handshake(stream).await?,
        Some(tls) => handshake(tls_connect(tls, stream, addr).await?).await?,
    };
    let has_body = body.is_some();
    let mut req = hyper::Request::builder()
        .method(method)
        .uri(path)
        .header("host", addr.to_string());
    if has_body {
        req = req.header("content-type", "application/json");
    }
    for (name, value) in headers {
        req = req.header(
            *name,
            HeaderValue::from_str(value).map_err(|e| HttpError::Request(e.to_string()))?,
        );
    }
    let req = req
        .body(Full::new(Bytes::from(body.unwrap_or_default())))
        .map_err(|e| HttpError::Request(e.to_string()))?;
    let response = sender
        .send_request(req)
        .await
        .map_err(|e| HttpError::Request(e.to_string()))?;
    let status = response.status().as_u16();
    let headers = response.headers().clone();
    let body = Limited::new(response.into_body(), MAX_BODY)
        .collect()
        .await
        .map_err(|e| HttpError::Request(e.to_string()))?
        .to_bytes();
    driver.abort();
    Ok(Response {
        status,
        headers,
        body,
    })
}

/// TLS on `stream` (connected to `addr`), verified as `tls` says.
pub async fn tls_connect(
    tls: &Tls,
    stream: tokio::net::TcpStream,
    addr: SocketAddr,
) -> Result<tokio_rustls::client::TlsStream<tokio::net::TcpStream>, HttpError> {
    let name = tls
        .server_name
        .clone()
        .unwrap_or_else(|| ServerName::IpAddress(addr.ip().into()));
    tokio_rustls::TlsConnector::from(tls.config.clone())
        .connect(name, stream)
        .await
        .map_err(|e| match e.kind() {
            // What rustls refused (a certificate, the protocol) comes as
            // InvalidData; anything else is the connection failing.
            std::io::ErrorKind::InvalidData => HttpError::Tls {
                addr,
                error: e.to_string(),
            },
            _ => HttpError::Connect(format!("{addr}: TLS handshake: {e}")),
        })
}

type Sender = hyper::client::conn::http1::SendRequest<Full<Bytes>>;

/// HTTP/1.1 on `io`: the request sender and the task driving the connection.
async fn handshake<S>(io: S) -> Result<(Sender, tokio::task::JoinHandle<()>), HttpError>
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let (sender, conn) = hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(io))
        .await
        .map_err(|e| HttpError::Connect(e.to_string()))?;
    let driver = tokio::spawn(async move {
        let _ = conn.await;
    });
    Ok((sender, driver))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_split_into_scheme_address_and_path() {
        let t = parse_url("https://127.0.2.1:8080/v1/x?y=1").unwrap();
        assert!(t.https);
        assert_eq!(t.addr, "127.0.2.1:8080".parse().unwrap());
        assert_eq!(t.path, "/v1/x?y=1");
        let t = parse_url("http://127.0.0.1").unwrap();
        assert_eq!((t.https, t.addr.port(), t.path.as_str()), (false, 80, "/"));
        assert_eq!(parse_url("https://127.0.0.1").unwrap().addr.port(), 443);
        assert!(parse_url("http://example.org/").is_err());
        assert!(parse_url("ftp://127.0.0.1/").is_err());
        assert_eq!(url_host("https://eu.example.org/x"), Some("eu.example.org"));
        assert_eq!(url_host("https://127.0.2.1:8443"), Some("127.0.2.1"));
        assert_eq!(url_host("https://[::1]:8443/"), Some("::1"));
        assert_eq!(url_host("mailto:x"), None);
    }

    #[tokio::test]
    async fn https_without_a_trust_is_refused_before_connecting() {
        let e = request_with(
            "GET",
            "https://127.0.0.1:9/",
            None,
            None,
            &[],
            None,
            Duration::from_secs(1),
        )
        .await
        .unwrap_err();
        assert!(matches!(e, HttpError::NoTrust(_)), "{e}");
    }
}
