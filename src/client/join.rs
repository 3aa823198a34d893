//! Joining through a router: `POST /v1/conferences/{id}/join`, waiting in
//! the waiting room when the conference has one, and reading the relay and
//! ticket to connect with.

use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use serde_json::{Value, json};

use crate::http_client;

/// How the participant proves it may join.
#[derive(Debug, Clone)]
pub enum Credential {
    Passcode(String),
    Invite(String),
    /// Coming back after losing `failed_relay`, with the token of the last join.
    Rejoin {
        participant_id: String,
        token: String,
        failed_relay: Option<String>,
    },
}

/// Where to connect and with what.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Joined {
    pub participant_id: String,
    pub relay_id: String,
    pub relay_country: String,
    pub quic_addr: SocketAddr,
    /// The relay's WebSocket URL (`wss://…`), for networks without UDP.
    pub websocket_url: Option<String>,
    pub cert_sha256: String,
    pub ticket: String,
    /// Lets this participant rejoin after a relay failure.
    pub rejoin_token: Option<String>,
    /// The conference is end-to-end encrypted (docs/e2ee.md).
    pub e2ee: bool,
    /// `host` or `guest`.
    pub role: String,
}

/// Why a join did not produce a ticket.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum JoinError {
    #[error("router unreachable: {0}")]
    Unreachable(String),
    /// The router refused: HTTP status, error code, message.
    #[error("refused ({status} {code}): {message}")]
    Refused {
        status: u16,
        code: String,
        message: String,
        /// For `421`: the router to ask instead.
        router_url: Option<String>,
    },
    #[error("unexpected answer: {0}")]
    Unexpected(String),
}

/// Joins `conference` through the router at `router` (base URL), from
/// `bind` when given; waits in the waiting room if there is one, up to
/// `max_wait`.
pub async fn join(
    router: &str,
    conference: &str,
    credential: &Credential,
    display_name: &str,
    bind: Option<IpAddr>,
    max_wait: Duration,
) -> Result<Joined, JoinError> {
    let body = match credential {
        Credential::Passcode(p) => json!({ "passcode": p, "display_name": display_name }),
        Credential::Invite(i) => json!({ "invite": i, "display_name": display_name }),
        Credential::Rejoin {
            participant_id,
            token,
            failed_relay,
        } => json!({
            "rejoin": token,
            "participant_id": participant_id,
            "failed_relay": failed_relay,
        }),
    };
    let url = format!("{router}/v1/conferences/{conference}/join");
    let r = request_backing_off(
        "POST",
        &url,
        bind,
        &[],
        Some(body.to_string().into_bytes()),
        Duration::from_secs(10),
    )
    .await?;
    let answer = r.json();
    match r.status {
        200 => parse_joined(&answer),
        202 => {
            let pid = answer["participant_id"].as_str().unwrap_or_default();
            let token = answer["wait_token"].as_str().unwrap_or_default();
            let poll = format!("{router}/v1/conferences/{conference}/waiting/{pid}");
            let auth = format!("Bearer {token}");
            let deadline = tokio::time::Instant::now() + max_wait;
            loop {
                if tokio::time::Instant::now() >= deadline {
                    return Err(JoinError::Unexpected(
                        "no host let us in before the wait ran out".into(),
                    ));
                }
                // The router holds each poll until a host decides or ~10 s
                // pass, or answers sooner with when to come back.
                let r = request_backing_off(
                    "GET",
                    &poll,
                    bind,
                    &[("authorization", &auth)],
                    None,
                    Duration::from_secs(30),
                )
                .await?;
                let answer = r.json();
                match r.status {
                    200 if answer["waiting"] == true => {
                        if let Some(wait) = retry_after(&r) {
                            tokio::time::sleep(wait).await;
                        }
                        continue;
                    }
                    200 => return parse_joined(&answer),
                    _ => return Err(refused(r.status, &answer)),
                }
            }
        }
        status => Err(refused(status, &answer)),
    }
}

/// A conference just created.
#[derive(Debug, Clone)]
pub struct Created {
    pub id: String,
    /// `None` for a conference joined by invitation only.
    pub passcode: Option<String>,
    /// The router's whole answer (host token, jurisdiction, …).
    pub answer: Value,
}

impl Created {
    /// The passcode as a join credential (empty when there is none).
    pub fn credential(&self) -> Credential {
        Credential::Passcode(self.passcode.clone().unwrap_or_default())
    }
}

/// Creates a conference at the router at `router` as the tenant with
/// `api_key` (`POST /v1/conferences` with `body`).
pub async fn create(router: &str, api_key: &str, body: &Value) -> Result<Created, JoinError> {
    let r = http_client::request(
        "POST",
        &format!("{router}/v1/conferences"),
        None,
        &[("authorization", &format!("Bearer {api_key}"))],
        Some(body.to_string().into_bytes()),
        Duration::from_secs(10),
    )
    .await
    .map_err(|e| JoinError::Unreachable(e.to_string()))?;
    let answer = r.json();
    if r.status != 201 {
        return Err(refused(r.status, &answer));
    }
    let id = answer["id"]
        .as_str()
        .map(str::to_owned)
        .ok_or_else(|| JoinError::Unexpected(answer.to_string()))?;
    Ok(Created {
        id,
        passcode: answer["passcode"].as_str().map(str::to_owned),
        answer,
    })
}

/// Times a router over its connection caps is asked again (after its
/// `Retry-After` each time) before the join gives up.
pub const BUSY_RETRIES: u32 = 5;

/// The longest `Retry-After` followed; a longer one is taken as this.
const MAX_RETRY_AFTER: Duration = Duration::from_secs(10);

/// An answer's `Retry-After` (seconds), at most [`MAX_RETRY_AFTER`].
pub fn retry_after(r: &http_client::Response) -> Option<Duration> {
    let secs: u64 = r.header("retry-after")?.trim().parse().ok()?;
    Some(Duration::from_secs(secs).min(MAX_RETRY_AFTER))
}

/// A request that, when the router answers `503 too_many_connections`
/// (its connection caps are full: many participants behind one address,
/// or an attack), waits for its `Retry-After` and asks again, up to
/// [`BUSY_RETRIES`] times.
async fn request_backing_off(
    method: &str,
    url: &str,
    bind: Option<IpAddr>,
    headers: &[(&str, &str)],
    body: Option<Vec<u8>>,
    timeout: Duration,
) -> Result<http_client::Response, JoinError> {
    let mut tries = 0;
    loop {
        let r = http_client::request(method, url, bind, headers, body.clone(), timeout)
            .await
            .map_err(|e| JoinError::Unreachable(e.to_string()))?;
        let busy = r.status == 503 && r.json()["error"]["code"] == "too_many_connections";
        if !busy || tries == BUSY_RETRIES {
            return Ok(r);
        }
        tries += 1;
        tokio::time::sleep(retry_after(&r).unwrap_or(Duration::from_secs(1))).await;
    }
}

fn refused(status: u16, answer: &Value) -> JoinError {
    let e = &answer["error"];
    JoinError::Refused {
        status,
        code: e["code"].as_str().unwrap_or("unknown").to_owned(),
        message: e["message"].as_str().unwrap_or_default().to_owned(),
        router_url: e["router_url"].as_str().map(str::to_owned),
    }
}

fn parse_joined(answer: &Value) -> Result<Joined, JoinError> {
    let text = |v: &Value| v.as_str().map(str::to_owned);
    let relay = &answer["relay"];
    let joined = (|| {
        Some(Joined {
            participant_id: text(&answer["participant_id"])?,
            relay_id: text(&relay["id"])?,
            relay_country: text(&relay["country"])?,
            quic_addr: relay["quic_addr"].as_str()?.parse().ok()?,
            websocket_url: relay["websocket_url"].as_str().map(str::to_owned),
            cert_sha256: text(&relay["cert_sha256"])?,
            ticket: text(&answer["ticket"])?,
            rejoin_token: text(&answer["rejoin_token"]),
            e2ee: answer["e2ee"].as_bool().unwrap_or(false),
            role: text(&answer["role"]).unwrap_or_else(|| "guest".into()),
        })
    })();
    joined.ok_or_else(|| JoinError::Unexpected(answer.to_string()))
}
