//! Moderation against participants who try to get around it: a ban on an
//! IPv6 address covers its /64, kick reasons fit what the participant's
//! `kicked` message carries, and rejoin tokens expire.

mod support;

use std::time::Duration;

use residency_relay::clock::unix_now;
use residency_relay::http_client;
use residency_relay::wire::control::ServerMessage;
use serde_json::{Value, json};
use support::cluster::{Cluster, connect, join_from, open_conference, request};
use support::wait::until;

/// Joins with the passcode as a client at `client_ip`, through the dev
/// config's trusted proxy (127.0.0.1) that names it in X-Forwarded-For.
async fn join_via_proxy(router: &str, conf: &Value, client_ip: &str) -> (u16, Value) {
    let body = json!({ "passcode": conf["passcode"], "display_name": "someone" });
    let r = http_client::request(
        "POST",
        &format!(
            "{router}/v1/conferences/{}/join",
            conf["id"].as_str().unwrap()
        ),
        Some("127.0.0.1".parse().unwrap()),
        &[("x-forwarded-for", client_ip)],
        Some(body.to_string().into_bytes()),
        Duration::from_secs(10),
    )
    .await
    .unwrap();
    (r.status, r.json())
}

fn host(conf: &Value) -> String {
    format!("Bearer {}", conf["host_token"].as_str().unwrap())
}

async fn kick(router: &str, conf: &Value, pid: &str, body: Value) -> (u16, Value) {
    let r = request(
        "POST",
        &format!(
            "{router}/v1/conferences/{}/participants/{pid}/kick",
            conf["id"].as_str().unwrap()
        ),
        None,
        Some(&host(conf)),
        Some(body),
    )
    .await;
    (r.status, r.json())
}

/// `POST /v1/conferences/{id}/{action}` as the host (`lock`, `unlock`, `end`), answered 200.
async fn host_action(router: &str, conf: &Value, action: &str) {
    let r = request(
        "POST",
        &format!(
            "{router}/v1/conferences/{}/{action}",
            conf["id"].as_str().unwrap()
        ),
        None,
        Some(&host(conf)),
        None,
    )
    .await;
    assert_eq!(r.status, 200, "{action}");
}

async fn rejoin(router: &str, conf: &Value, pid: &str, token: &str) -> (u16, Value) {
    let r = request(
        "POST",
        &format!(
            "{router}/v1/conferences/{}/join",
            conf["id"].as_str().unwrap()
        ),
        Some("127.0.0.2"),
        None,
        Some(json!({ "rejoin": token, "participant_id": pid })),
    )
    .await;
    (r.status, r.json())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_ipv6_ban_covers_the_whole_64() {
    let c = Cluster::running("de-fra-router", &["de-fra-1", "ie-dub-1"]).await;
    let router = c.url("de-fra-router");
    let conf = open_conference(&router, "eu").await;
    let (status, joined) = join_via_proxy(&router, &conf, "2001:db8:1:2::1").await;
    assert_eq!(status, 200, "{joined}");
    let pid = joined["participant_id"].as_str().unwrap();
    let (status, _) = kick(&router, &conf, pid, json!({ "ban": true })).await;
    assert_eq!(status, 200);

    // Another address of the same /64: still banned.
    let (status, answer) = join_via_proxy(&router, &conf, "2001:db8:1:2::2").await;
    assert_eq!(status, 403, "{answer}");
    assert_eq!(answer["error"]["code"], "banned");
    let (status, answer) = join_via_proxy(&router, &conf, "2001:db8:1:2:ffff:ffff:ffff:ffff").await;
    assert_eq!(status, 403, "{answer}");
    // The next /64 is someone else.
    let (status, answer) = join_via_proxy(&router, &conf, "2001:db8:1:3::1").await;
    assert_eq!(status, 200, "{answer}");
    c.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kick_reasons_fit_the_kicked_message() {
    let c = Cluster::running("de-fra-router", &["de-fra-1"]).await;
    let router = c.url("de-fra-router");
    let conf = open_conference(&router, "eu").await;
    let joined = join_from(
        &router,
        conf["id"].as_str().unwrap(),
        conf["passcode"].as_str().unwrap(),
        "127.0.0.2",
    )
    .await
    .unwrap();
    let mut alice = connect(&joined, "127.0.0.2").await;

    // Longer than the control protocol carries: refused with a clear 400.
    let (status, answer) = kick(
        &router,
        &conf,
        &joined.participant_id,
        json!({ "reason": "x".repeat(65) }),
    )
    .await;
    assert_eq!(status, 400, "{answer}");
    assert!(
        answer["error"]["message"]
            .as_str()
            .unwrap()
            .contains("at most 64 bytes"),
        "{answer}"
    );

    // The longest that fits (32 two-byte characters) reaches the participant.
    let reason = "é".repeat(32);
    let (status, answer) = kick(
        &router,
        &conf,
        &joined.participant_id,
        json!({ "reason": reason }),
    )
    .await;
    assert_eq!(status, 200, "{answer}");
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        let event = tokio::time::timeout_at(deadline, alice.next_event())
            .await
            .expect("kicked in time")
            .expect("a kicked message, not a protocol error");
        if let ServerMessage::Kicked { reason: got } = event {
            assert_eq!(got, reason);
            break;
        }
    }
    assert_eq!(
        alice.closed().await,
        Some(residency_relay::wire::close_code::KICKED.into())
    );
    c.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rejoin_tokens_expire_and_die_with_the_conference() {
    let mut c = Cluster::new(|t| format!("{t}\n[limits]\nrejoin_token_secs = 3\n"));
    c.start("de-fra-router", &["de-fra-1"]).await;
    let router = c.url("de-fra-router");
    let conf = open_conference(&router, "eu").await;
    let joined = join_from(
        &router,
        conf["id"].as_str().unwrap(),
        conf["passcode"].as_str().unwrap(),
        "127.0.0.2",
    )
    .await
    .unwrap();
    let pid = joined.participant_id.clone();
    let token = joined.rejoin_token.clone().unwrap();

    // Fresh: it lets the participant back in, past a lock (that is what it
    // is for: someone admitted whose relay failed), with a new token.
    host_action(&router, &conf, "lock").await;
    let (status, answer) = rejoin(&router, &conf, &pid, &token).await;
    assert_eq!(status, 200, "{answer}");
    let newer = answer["rejoin_token"].as_str().unwrap().to_owned();
    // The token names its expiry; changing it breaks the hash.
    let (prefix, expires) = newer.rsplit_once('.').unwrap();
    let stretched = format!("{prefix}.{}", expires.parse::<u64>().unwrap() + 86_400);
    let (status, _) = rejoin(&router, &conf, &pid, &stretched).await;
    assert_eq!(status, 403);

    // After its time (the router's clock at or past the expiry the token
    // names): refused.
    let expires: u64 = newer.rsplit_once('.').unwrap().1.parse().unwrap();
    until(
        "the rejoin token's expiry",
        Duration::from_secs(10),
        || async {
            let now = unix_now();
            if now >= expires {
                Ok(())
            } else {
                Err(format!("now {now}, expires {expires}"))
            }
        },
    )
    .await;
    let (status, answer) = rejoin(&router, &conf, &pid, &newer).await;
    assert_eq!(status, 403, "{answer}");
    assert_eq!(answer["error"]["code"], "bad_rejoin");
    assert!(
        answer["error"]["message"]
            .as_str()
            .unwrap()
            .contains("expired"),
        "{answer}"
    );

    // Within its time, but the conference ended: refused.
    host_action(&router, &conf, "unlock").await;
    let again = join_from(
        &router,
        conf["id"].as_str().unwrap(),
        conf["passcode"].as_str().unwrap(),
        "127.0.0.2",
    )
    .await
    .unwrap();
    host_action(&router, &conf, "end").await;
    let (status, _) = rejoin(
        &router,
        &conf,
        &again.participant_id,
        again.rejoin_token.as_deref().unwrap(),
    )
    .await;
    assert_ne!(status, 200);
    c.shutdown().await;
}
