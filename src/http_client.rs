//! A small HTTP/1.1 client (hyper) for what the project itself calls: relays
//! reporting to routers, the `dev` demo, the join load tool and tests.
//!
//! Plain `http://` only: in production a router's API sits behind a
//! TLS-terminating proxy on the same host, or on a private network.

use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full, Limited};
use hyper::header::{HeaderMap, HeaderValue};

/// Largest response body read.
const MAX_BODY: usize = 4 << 20;

/// Why a request failed before a response arrived.
#[derive(Debug, thiserror::Error)]
pub enum HttpError {
    #[error("unsupported URL '{0}': use http://host:port/path")]
    Url(String),
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

/// Splits `http://host:port/path` into the socket address and the path.
pub fn split_url(url: &str) -> Result<(SocketAddr, String), HttpError> {
    let rest = url
        .strip_prefix("http://")
        .ok_or_else(|| HttpError::Url(url.to_owned()))?;
    let (authority, path) = match rest.find('/') {
        Some(i) => (&rest[..i], &rest[i..]),
        None => (rest, "/"),
    };
    let addr = authority
        .parse::<SocketAddr>()
        .or_else(|_| format!("{authority}:80").parse::<SocketAddr>())
        .map_err(|_| HttpError::Url(url.to_owned()))?;
    Ok((addr, path.to_owned()))
}

/// One request on a fresh connection, from `bind` when given (tests and the
/// demo use distinct loopback addresses to stand in for clients in
/// different countries).
pub async fn request(
    method: &str,
    url: &str,
    bind: Option<IpAddr>,
    headers: &[(&str, &str)],
    body: Option<Vec<u8>>,
    timeout: Duration,
) -> Result<Response, HttpError> {
    tokio::time::timeout(timeout, request_inner(method, url, bind, headers, body))
        .await
        .map_err(|_| HttpError::Timeout)?
}

async fn request_inner(
    method: &str,
    url: &str,
    bind: Option<IpAddr>,
    headers: &[(&str, &str)],
    body: Option<Vec<u8>>,
) -> Result<Response, HttpError> {
    let (addr, path) = split_url(url)?;
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
    let (mut sender, conn) =
        hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(stream))
            .await
            .map_err(|e| HttpError::Connect(e.to_string()))?;
    let driver = tokio::spawn(conn);
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_split_into_address_and_path() {
        let (addr, path) = split_url("http://127.0.2.1:8080/v1/x?y=1").unwrap();
        assert_eq!(addr, "127.0.2.1:8080".parse().unwrap());
        assert_eq!(path, "/v1/x?y=1");
        assert_eq!(split_url("http://127.0.0.1").unwrap().1, "/");
        assert!(split_url("https://127.0.0.1/").is_err());
        assert!(split_url("http://example.org/").is_err());
    }
}
