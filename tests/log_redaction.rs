//! Logs during a scripted call never carry a full client address, a display
//! name or a participant id — unless the operator enabled full addresses for
//! the conference's jurisdiction.

mod support;

use std::io::Write;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde_json::json;
use support::cluster::{Cluster, connect, open_conference, request};

#[derive(Clone, Default)]
struct Captured(Arc<Mutex<Vec<u8>>>);

impl Write for Captured {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl Captured {
    fn take(&self) -> String {
        String::from_utf8_lossy(&std::mem::take(&mut *self.0.lock().unwrap())).into_owned()
    }
}

async fn call(c: &mut Cluster, ip: &str, name_suffix: &str) -> (String, String) {
    c.start("de-fra-router", &["de-fra-1"]).await;
    let router = c.url("de-fra-router");
    let conf = open_conference(&router, "eu").await;
    let id = conf["id"].as_str().unwrap().to_owned();
    // A wrong passcode first (logged as a refusal), then a real join.
    let r = request(
        "POST",
        &format!("{router}/v1/conferences/{id}/join"),
        Some(ip),
        None,
        Some(json!({ "passcode": "nope", "display_name": format!("Mallory {name_suffix}") })),
    )
    .await;
    assert_eq!(r.status, 403);
    let joined = residency_relay::client::join::join(
        &router,
        &id,
        &residency_relay::client::join::Credential::Passcode(
            conf["passcode"].as_str().unwrap().to_owned(),
        ),
        &format!("Alice {name_suffix}"),
        Some(ip.parse().unwrap()),
        Duration::from_secs(10),
    )
    .await
    .unwrap();
    let client = connect(&joined, ip).await;
    client.leave().await;
    (id, joined.participant_id)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn logs_redact_addresses_names_and_participant_ids() {
    let captured = Captured::default();
    let writer = captured.clone();
    tracing_subscriber::fmt()
        .with_env_filter("debug,quinn=warn,rustls=warn,hyper=warn,h2=warn")
        .with_ansi(false)
        .with_writer(move || writer.clone())
        .init();

    // Default: prefixes only.
    let mut c = Cluster::new(|t| t);
    let (_, participant) = call(&mut c, "127.0.0.2", "Secretname").await;
    c.shutdown().await;
    let logs = captured.take();
    assert!(logs.contains("join accepted"), "{logs}");
    assert!(logs.contains("participant admitted"), "{logs}");
    assert!(logs.contains("127.0.0.0/24"), "{logs}");
    for secret in [
        "127.0.0.2",
        "Secretname",
        "Alice",
        "Mallory",
        participant.as_str(),
    ] {
        assert!(!logs.contains(secret), "the logs contain {secret}:\n{logs}");
    }

    // The operator enabled full addresses for the EU: addresses appear
    // (names and participant ids still do not).
    let mut c = Cluster::new(|t| format!("{t}\n[logging]\nfull_addresses = [\"eu\"]\n"));
    let (_, participant) = call(&mut c, "127.0.0.4", "Othername").await;
    c.shutdown().await;
    let logs = captured.take();
    assert!(logs.contains("127.0.0.4"), "{logs}");
    for secret in ["Othername", participant.as_str()] {
        assert!(!logs.contains(secret), "the logs contain {secret}:\n{logs}");
    }
}
