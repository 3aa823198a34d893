//! `residency-relay dev --demo`: the whole story on the shipped dev config.

mod support;

use std::process::Command;

#[test]
fn the_demo_keeps_an_eu_call_on_eu_relays() {
    let out = Command::new(env!("CARGO_BIN_EXE_residency-relay"))
        .current_dir(support::repo())
        .args(["dev", "--demo"])
        .env("RUST_LOG", "warn")
        .output()
        .expect("run residency-relay dev --demo");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stdout}\n{stderr}");
    let policy = residency_relay::policy::load(&support::repo().join("config/dev.toml")).unwrap();
    let eu = policy.jurisdiction(policy.jurisdiction_idx("eu").unwrap());

    // Everyone, the American too, is on a relay inside the EU.
    for who in ["Anna (Germany)", "Aoife (Ireland)", "Bob (United States)"] {
        let line = stdout
            .lines()
            .find(|l| l.contains(who) && l.contains("-> relay"))
            .unwrap_or_else(|| panic!("no placement for {who}:\n{stdout}"));
        let relay = line
            .split("-> relay ")
            .nth(1)
            .unwrap()
            .split(' ')
            .next()
            .unwrap();
        let idx = policy.relay_idx(relay).unwrap();
        assert!(eu.contains(idx), "{who} went to {relay}, outside the EU");
        // And received the other two's media.
        let stats = stdout
            .lines()
            .find(|l| l.contains(who) && l.contains("sent"))
            .unwrap_or_else(|| panic!("no media line for {who}:\n{stdout}"));
        let received: u64 = stats
            .split("received ")
            .nth(1)
            .unwrap()
            .split(' ')
            .next()
            .unwrap()
            .parse()
            .unwrap();
        assert!(received > 0, "{stats}");
    }
    // Relays outside the EU carried nothing.
    for outside in ["us-nyc-1", "ch-zrh-1"] {
        let line = stdout
            .lines()
            .find(|l| l.trim_start().starts_with(outside) && l.contains("jurisdiction eu"))
            .unwrap_or_else(|| panic!("no byte line for {outside}:\n{stdout}"));
        assert!(
            line.contains("outside jurisdiction eu: received 0 bytes, forwarded 0 bytes"),
            "{line}"
        );
    }
    // Moderation reaches the relay: the kicked participant is disconnected
    // with the kicked close code, and ending disconnects the rest.
    assert!(
        stdout.contains("relay disconnected it (close code 5)"),
        "{stdout}"
    );
    assert!(
        stdout.contains("all 2 remaining participants disconnected"),
        "{stdout}"
    );
    assert!(stdout.contains("dev-acme-key"), "{stdout}");
    // The call spans two EU relays linked by cascade, and the signed
    // residency report lists only machines inside the EU.
    assert!(stdout.contains("signature valid"), "{stdout}");
    assert!(stdout.contains("<-> "), "{stdout}");
    assert!(!stdout.contains("OUTSIDE"), "{stdout}");
    let saved = stdout
        .lines()
        .find_map(|l| l.strip_prefix("saved to "))
        .and_then(|l| l.split(';').next())
        .expect("report saved")
        .to_owned();
    let key = hex::encode(
        policy
            .router("de-fra-router")
            .unwrap()
            .public_key
            .as_bytes(),
    );
    let verify = |file: &str| {
        Command::new(env!("CARGO_BIN_EXE_residency-relay"))
            .args(["verify-report", file, "--key", &key])
            .output()
            .unwrap()
    };
    let ok = verify(&saved);
    assert!(
        ok.status.success(),
        "{}",
        String::from_utf8_lossy(&ok.stderr)
    );
    assert!(String::from_utf8_lossy(&ok.stdout).contains("relay de-fra-1 in DE: inside"));
    // An edited copy fails.
    let text = std::fs::read_to_string(&saved).unwrap();
    let tampered = std::path::Path::new(&saved).with_extension("tampered.json");
    std::fs::write(&tampered, text.replacen("\"DE\"", "\"US\"", 1)).unwrap();
    let bad = verify(tampered.to_str().unwrap());
    assert_eq!(bad.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&bad.stderr).contains("does not match"));
    let _ = std::fs::remove_file(&tampered);
    assert!(
        stdout.contains("curl -s --cacert ")
            && stdout.contains(" -X POST https://127.0.2.1:8080/v1/conferences"),
        "{stdout}"
    );
}

#[test]
fn a_router_refuses_to_start_with_a_key_that_does_not_match_its_config() {
    let dir = tempfile::tempdir().unwrap();
    let config_dir = support::repo().join("config");
    let text = support::dev_config_text()
        // The Swiss router's key file in place of the Frankfurt router's.
        .replace(
            &format!(
                "signing_key = \"{}\"",
                config_dir.join("dev-ticket.key").display()
            ),
            &format!(
                "signing_key = \"{}\"",
                config_dir.join("dev-ch-router.key").display()
            ),
        )
        .replace("store = \"../data/", "store = \"data/");
    let config = dir.path().join("dev.toml");
    std::fs::write(&config, text).unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_residency-relay"))
        .args([
            "router",
            "--config",
            config.to_str().unwrap(),
            "--id",
            "de-fra-router",
        ])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("does not match router de-fra-router's public_key"),
        "{err}"
    );
    // An unknown router id.
    let out = Command::new(env!("CARGO_BIN_EXE_residency-relay"))
        .args([
            "router",
            "--config",
            config.to_str().unwrap(),
            "--id",
            "nope",
        ])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("no router 'nope'"));
}
