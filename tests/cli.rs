//! The `check`, `route` and `hash-api-key` commands on the shipped files.

mod support;

use std::io::Write;
use std::process::{Command, Output, Stdio};

use serde_json::Value;

fn run(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_residency-relay"))
        .current_dir(support::repo())
        .args(args)
        .output()
        .expect("run residency-relay")
}

fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

fn route_json(extra: &[&str]) -> (i32, Value) {
    let mut args = vec!["route", "--config", "config/dev.toml", "--json"];
    args.extend_from_slice(extra);
    let out = run(&args);
    let json: Value = serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
        panic!(
            "not JSON ({e}): {}{}",
            stdout(&out),
            String::from_utf8_lossy(&out.stderr)
        )
    });
    (out.status.code().unwrap(), json)
}

#[test]
fn check_summarises_the_dev_config() {
    let out = run(&["check", "--config", "config/dev.toml"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = stdout(&out);
    assert!(text.contains("jurisdictions (7)"), "{text}");
    assert!(
        text.contains("relays (4): de-ber-1, de-fra-1, ie-dub-1, nl-ams-1"),
        "{text}"
    );
    assert!(
        text.contains("relays: none (every route into uk is refused)"),
        "{text}"
    );
    assert!(
        text.contains("free         may not choose; pinned to global"),
        "{text}"
    );
    assert!(text.contains("acme         plan business"), "{text}");
    assert!(text.contains("    https: serves "), "{text}");
    assert!(!text.contains("warning:"), "{text}");
}

#[test]
fn check_warns_about_a_router_on_plain_http() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("plain.toml");
    let text = support::dev_config_text();
    // The Zurich router behind a TLS proxy that reaches it in plain HTTP.
    let zurich = text
        .lines()
        .skip_while(|l| *l != "url = \"https://127.0.2.3:8080\"")
        .take(5)
        .collect::<Vec<_>>()
        .join("\n");
    assert!(
        zurich.contains("tls_cert") && zurich.contains("tls_key"),
        "{zurich}"
    );
    let text = text.replace(
        &zurich,
        "url = \"http://127.0.2.3:8080\"\nrelay_listen = \"127.0.2.3:8081\"\nrelay_url = \"http://127.0.2.3:8081\"\nplain_http = true",
    );
    assert!(text.contains("plain_http = true"));
    std::fs::write(&config, text).unwrap();
    let out = run(&["check", "--config", config.to_str().unwrap()]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = stdout(&out);
    assert!(
        text.contains("warning: plain HTTP (plain_http = true): only behind a TLS-terminating proxy, or passcodes, tickets and relay credentials (relay_url is http://) cross the network in clear"),
        "{text}"
    );
    assert_eq!(text.matches("warning:").count(), 1, "{text}");
}

#[test]
fn check_accepts_the_production_example() {
    let out = run(&["check", "--config", "config/production.example.toml"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn check_lists_every_problem_and_fails() {
    let dir = tempfile::tempdir().unwrap();
    let bad = dir.path().join("bad.toml");
    let text = support::dev_config_text()
        .replacen(
            "# sha256(\"dev-relay-us-nyc-1\")\ncountry = \"US\"",
            "\ncountry = \"XX\"",
            1,
        )
        .replacen("plan = \"free\"", "plan = \"gratis\"", 1);
    std::fs::write(&bad, text).unwrap();
    let out = run(&["check", "--config", bad.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("2 problems"), "{err}");
    assert!(
        err.contains(
            "relay[3] \"us-nyc-1\".country: 'XX' is not an ISO 3166-1 alpha-2 country code"
        ),
        "{err}"
    );
    assert!(
        err.contains("tenant[1] \"freebie\".plan: 'gratis' is not a plan"),
        "{err}"
    );
}

#[test]
fn each_dev_address_routes_to_the_nearest_relay_inside() {
    for (ip, jurisdiction, relay, country) in [
        ("127.0.0.2", "eu", "de-fra-1", "DE"),
        ("127.0.0.3", "eu", "ie-dub-1", "US"),
        ("127.0.0.4", "eu", "ie-dub-1", "IE"),
        ("127.0.0.5", "eu", "de-fra-1", "CH"),
        ("127.0.0.5", "ch", "ch-zrh-1", "CH"),
        ("127.0.0.3", "us", "us-nyc-1", "US"),
        // Unpinned (global), Munich is nearest Zurich; pinned to the EU it is not.
        ("127.0.0.2", "global", "ch-zrh-1", "DE"),
        ("127.0.0.3", "global", "us-nyc-1", "US"),
    ] {
        let (code, json) = route_json(&["--ip", ip, "--jurisdiction", jurisdiction]);
        assert_eq!(code, 0, "{json}");
        assert_eq!(json["relay"], relay, "{ip} in {jurisdiction}: {json}");
        assert_eq!(json["jurisdiction"], jurisdiction);
        assert_eq!(json["client_country"], country);
        assert!(json["refused"].is_null());
    }
}

#[test]
fn json_lists_candidates_and_every_excluded_relay() {
    let (_, json) = route_json(&[
        "--ip",
        "127.0.0.3",
        "--jurisdiction",
        "eu",
        "--down",
        "de-ber-1",
    ]);
    let candidates: Vec<&str> = json["candidates"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["relay"].as_str().unwrap())
        .collect();
    assert_eq!(candidates, ["ie-dub-1", "nl-ams-1", "de-fra-1"]);
    assert!(json["candidates"][0]["distance_km"].as_f64().unwrap() > 4000.0);
    let excluded: Vec<(String, String)> = json["excluded"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| {
            (
                e["relay"].as_str().unwrap().to_owned(),
                e["reason"].as_str().unwrap().to_owned(),
            )
        })
        .collect();
    assert!(
        excluded.contains(&("de-ber-1".into(), "unhealthy".into())),
        "{excluded:?}"
    );
    assert!(
        excluded.contains(&("us-nyc-1".into(), "outside_jurisdiction".into())),
        "{excluded:?}"
    );
    assert!(
        excluded.contains(&("ch-zrh-1".into(), "outside_jurisdiction".into())),
        "{excluded:?}"
    );
    assert_eq!(excluded.len(), 3);
}

#[test]
fn refusals_exit_non_zero_with_the_reason() {
    let (code, json) = route_json(&["--ip", "127.0.0.6", "--jurisdiction", "uk"]);
    assert_eq!(code, 2);
    assert_eq!(json["refused"], "no_relay_in_jurisdiction");
    assert!(json["relay"].is_null());
    assert_eq!(json["client_country"], "GB");

    let (code, json) = route_json(&[
        "--ip",
        "127.0.0.3",
        "--jurisdiction",
        "eu",
        "--down",
        "de-fra-1",
        "--down",
        "de-ber-1",
        "--down",
        "ie-dub-1",
        "--down",
        "nl-ams-1",
    ]);
    assert_eq!(code, 2);
    assert_eq!(json["refused"], "no_healthy_relay", "{json}");
    // The healthy US relay next door is not an option.
    assert!(json["relay"].is_null());
}

#[test]
fn unknown_location_uses_the_default_relay() {
    let (code, json) = route_json(&["--ip", "192.0.2.1", "--jurisdiction", "eu"]);
    assert_eq!(code, 0);
    assert_eq!(json["relay"], "de-fra-1");
    assert_eq!(json["basis"], "default_relay");
    assert!(json["client_country"].is_null());
    assert_eq!(json["client"]["unknown_reason"], "no_database");
}

#[test]
fn tenant_plan_rules_apply() {
    let (code, json) = route_json(&["--ip", "127.0.0.2", "--tenant", "acme"]);
    assert_eq!(code, 0);
    assert_eq!(json["jurisdiction"], "eu");
    let (code, json) = route_json(&["--ip", "127.0.0.2", "--tenant", "freebie"]);
    assert_eq!(code, 0);
    assert_eq!(json["jurisdiction"], "global");
    let (code, json) = route_json(&[
        "--ip",
        "127.0.0.2",
        "--tenant",
        "freebie",
        "--jurisdiction",
        "eu",
    ]);
    assert_eq!(code, 2);
    assert_eq!(json["refused"], "plan_may_not_choose");
    assert!(
        json["message"]
            .as_str()
            .unwrap()
            .contains("operator default 'global'")
    );
}

#[test]
fn hosting_relay_is_preferred_within_the_margin() {
    let (_, json) = route_json(&[
        "--ip",
        "127.0.0.2",
        "--jurisdiction",
        "eu",
        "--hosting",
        "de-ber-1",
    ]);
    assert_eq!(json["relay"], "de-ber-1");
    assert_eq!(json["candidates"][0]["hosting"], true);
}

#[test]
fn usage_errors_exit_one() {
    let out = run(&[
        "route",
        "--config",
        "config/dev.toml",
        "--ip",
        "127.0.0.2",
        "--jurisdiction",
        "mars",
    ]);
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("no jurisdiction 'mars'"));
    let out = run(&[
        "route",
        "--config",
        "config/dev.toml",
        "--ip",
        "127.0.0.2",
        "--jurisdiction",
        "eu",
        "--down",
        "nope",
    ]);
    assert_eq!(out.status.code(), Some(1));
    let out = run(&[
        "route",
        "--config",
        "config/dev.toml",
        "--ip",
        "not-an-ip",
        "--jurisdiction",
        "eu",
    ]);
    assert_eq!(out.status.code(), Some(1), "clap rejects the address");
    assert!(out.stdout.is_empty());
}

#[test]
fn human_output_explains_the_decision() {
    let out = run(&[
        "route",
        "--config",
        "config/dev.toml",
        "--ip",
        "127.0.0.3",
        "--jurisdiction",
        "eu",
    ]);
    assert!(out.status.success());
    let text = stdout(&out);
    assert!(
        text.contains("client 127.0.0.3: US (United States of America) by override"),
        "{text}"
    );
    assert!(
        text.contains("decision: relay ie-dub-1 in IE at 127.0.1.3:4433"),
        "{text}"
    );
    assert!(
        text.contains("us-nyc-1     US  outside jurisdiction eu"),
        "{text}"
    );
}

#[test]
fn hash_api_key_matches_the_dev_config() {
    let mut child = Command::new(env!("CARGO_BIN_EXE_residency-relay"))
        .arg("hash-api-key")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(b"dev-acme-key\n")
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success());
    let hash = stdout(&out);
    let config = std::fs::read_to_string(support::repo().join("config/dev.toml")).unwrap();
    assert!(
        config.contains(&format!("api_key_sha256 = \"{}\"", hash.trim())),
        "{hash}"
    );
}

#[test]
fn e2ee_secret_prints_a_fresh_secret_or_adds_one_to_each_link() {
    use residency_relay::client::e2ee::Secret;
    let one = run(&["e2ee-secret"]);
    assert!(one.status.success());
    let a = stdout(&one).trim().to_owned();
    assert_eq!(a.len(), 43, "{a}");
    assert!(Secret::parse(&a).is_ok());
    let b = stdout(&run(&["e2ee-secret"])).trim().to_owned();
    assert_ne!(a, b, "a new secret each time");
    let links = run(&["e2ee-secret", "http://r/j/eu-x#p=abc", "http://r/j/eu-x"]);
    let text = stdout(&links);
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(lines.len(), 2);
    assert!(lines[0].starts_with("http://r/j/eu-x#p=abc&k="), "{text}");
    assert!(lines[1].starts_with("http://r/j/eu-x#k="), "{text}");
    let (s0, s1) = (
        Secret::parse(lines[0]).unwrap(),
        Secret::parse(lines[1]).unwrap(),
    );
    assert_eq!(s0, s1, "one secret for all the links");
}
