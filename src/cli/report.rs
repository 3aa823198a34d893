//! `residency-relay report`, `verify-report` and `drain`.

use std::fmt::Write as _;
use std::path::Path;
use std::time::Duration;

use serde_json::Value;

use crate::http_client;
use std::process::ExitCode;

use super::args::VerifyReportArgs;

fn runtime() -> Result<tokio::runtime::Runtime, String> {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| format!("cannot start the runtime: {e}"))
}

/// `method` on the router at `router` (base URL), path `path`, with
/// `token` as bearer; the JSON answer of a `200`, else the router's answer
/// as the error.
pub(super) fn ask_router(
    method: &str,
    router: &str,
    path: &str,
    token: &str,
) -> Result<serde_json::Value, String> {
    let url = format!("{}{path}", router.trim_end_matches('/'));
    let r = runtime()?
        .block_on(http_client::request(
            method,
            &url,
            None,
            &[("authorization", &format!("Bearer {token}"))],
            None,
            Duration::from_secs(10),
        ))
        .map_err(|e| e.to_string())?;
    if r.status != 200 {
        return Err(format!(
            "the router answered {}: {}",
            r.status,
            String::from_utf8_lossy(&r.body)
        ));
    }
    Ok(r.json())
}

/// Fetches the signed report and writes it (pretty JSON).
pub(super) fn fetch(
    router: &str,
    conference: &str,
    token: &str,
    out: Option<&Path>,
) -> Result<(), String> {
    let report = ask_router(
        "GET",
        router,
        &format!("/v1/conferences/{conference}/residency"),
        token,
    )?;
    let text = serde_json::to_string_pretty(&report).map_err(|e| e.to_string())? + "\n";
    match out {
        Some(path) => {
            std::fs::write(path, text).map_err(|e| format!("cannot write {}: {e}", path.display()))
        }
        None => {
            print!("{text}");
            Ok(())
        }
    }
}

/// Verifies a report file; returns a summary to print.
pub(super) fn verify(file: &Path, key: &str) -> Result<String, String> {
    let key = crate::ticket::parse_public_key(key)?;
    let text = std::fs::read_to_string(file)
        .map_err(|e| format!("cannot read {}: {e}", file.display()))?;
    let envelope: Value =
        serde_json::from_str(&text).map_err(|e| format!("{} is not JSON: {e}", file.display()))?;
    summarize(&envelope, &key)
}

/// Verifies an envelope and describes what it reports.
pub(super) fn summarize(
    envelope: &Value,
    key: &ed25519_dalek::VerifyingKey,
) -> Result<String, String> {
    let report = crate::router::residency::verify(envelope, key)?;
    let mut s = String::new();
    let _ = writeln!(
        s,
        "signature valid: conference {} pinned to {} ({})",
        report["conference"].as_str().unwrap_or("?"),
        report["jurisdiction"].as_str().unwrap_or("?"),
        report["jurisdiction_name"].as_str().unwrap_or("?"),
    );
    let mut outside = 0;
    for (kind, list) in [("router", &report["routers"]), ("relay", &report["relays"])] {
        for item in list.as_array().into_iter().flatten() {
            let inside = item["inside_jurisdiction"] == true;
            if !inside {
                outside += 1;
            }
            let _ = writeln!(
                s,
                "  {kind} {} in {}: {}{}",
                item["id"].as_str().unwrap_or("?"),
                item["country"].as_str().unwrap_or("?"),
                if inside {
                    "inside"
                } else {
                    "OUTSIDE the jurisdiction"
                },
                match (item["bytes_in"].as_u64(), item["bytes_out"].as_u64()) {
                    (Some(i), Some(o)) => format!(", {i} bytes in, {o} bytes out"),
                    _ => String::new(),
                }
            );
        }
    }
    for l in report["links"].as_array().into_iter().flatten() {
        let _ = writeln!(
            s,
            "  link {} ({}) <-> {} ({}), as {} counted it: {} bytes sent, {} bytes received",
            l["relay"].as_str().unwrap_or("?"),
            l["relay_country"].as_str().unwrap_or("?"),
            l["peer"].as_str().unwrap_or("?"),
            l["peer_country"].as_str().unwrap_or("?"),
            l["relay"].as_str().unwrap_or("?"),
            l["bytes_out"],
            l["bytes_in"],
        );
    }
    let events = report["enforcement"].as_array().map_or(0, Vec::len);
    let _ = writeln!(
        s,
        "  enforcement events (refused tickets and links): {events}"
    );
    if outside > 0 {
        let _ = writeln!(s, "WARNING: {outside} machine(s) outside the jurisdiction");
    }
    Ok(s)
}

/// Asks the router to drain a relay.
pub(super) fn drain(router: &str, relay: &str, token: &str) -> Result<(), String> {
    ask_router(
        "POST",
        router,
        &format!("/v1/admin/relays/{relay}/drain"),
        token,
    )?;
    println!("{relay} is draining: no new joins; its participants are moving");
    Ok(())
}

/// `verify-report`: prints the verified report's summary.
pub(super) fn verify_command(a: VerifyReportArgs) -> ExitCode {
    match verify(&a.file, &a.key) {
        Ok(summary) => {
            print!("{summary}");
            ExitCode::SUCCESS
        }
        Err(message) => {
            eprintln!("error: {message}");
            ExitCode::FAILURE
        }
    }
}
