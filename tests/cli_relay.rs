//! The `relay` and `loadtest` commands as an operator runs them: a relay
//! process from the dev config, loaded, then stopped with SIGTERM.

mod support;

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

fn bin() -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_residency-relay"));
    c.current_dir(support::repo());
    c
}

#[test]
fn relay_serves_loadtest_and_stops_on_sigterm() {
    // ch-zrh-1 listens on 127.0.1.5:4433 (QUIC) and 127.0.1.5:9090 (HTTP).
    let mut relay = support::Reaped(
        bin()
            .args([
                "relay",
                "--config",
                "config/dev.toml",
                "--id",
                "ch-zrh-1",
                "--shutdown-grace",
                "1",
            ])
            .stderr(Stdio::piped())
            .spawn()
            .unwrap(),
    );
    let started = Instant::now();
    while std::net::TcpStream::connect("127.0.1.5:9090").is_err() {
        assert!(
            started.elapsed() < Duration::from_secs(20),
            "relay did not start"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    let out = bin()
        .args([
            "loadtest",
            "--config",
            "config/dev.toml",
            "--relay",
            "ch-zrh-1",
        ])
        .args([
            "--participants",
            "3",
            "--publishers",
            "1",
            "--duration",
            "2",
        ])
        .output()
        .unwrap();
    let table = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{table}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    for row in [
        "offered (sent)",
        "expected deliveries",
        "delivered",
        "loss",
        "latency p50 / p99 / max",
        "relay CPU",
        "relay RSS",
    ] {
        assert!(table.contains(row), "no '{row}' row in:\n{table}");
    }
    let delivered: f64 = table
        .lines()
        .find(|l| l.starts_with("delivered"))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse().ok())
        .unwrap();
    assert!(delivered > 0.0, "{table}");
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("1 s: sent"),
        "no progress lines"
    );

    let killed = Command::new("kill")
        .args(["-TERM", &relay.0.id().to_string()])
        .status()
        .unwrap();
    assert!(killed.success());
    let deadline = Instant::now() + Duration::from_secs(10);
    let status = loop {
        if let Some(status) = relay.0.try_wait().unwrap() {
            break status;
        }
        if Instant::now() > deadline {
            let _ = relay.0.kill();
            panic!("relay did not stop within 10 s of SIGTERM");
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    assert!(status.success(), "relay exited with {status}");
}
