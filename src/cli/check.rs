//! `check`: validate policy files and print a summary, or a dry run of
//! them against a running router ([`super::dry_run`]).

use std::fmt::Write as _;
use std::path::Path;
use std::process::ExitCode;

use super::args::CheckArgs;
use super::{dry_run, load, trust_routers_of};
use crate::policy::{self, Policy};

pub(super) fn command(a: CheckArgs) -> ExitCode {
    let Some(url) = a.against else {
        return check(&a.config, a.regions.as_deref());
    };
    let policy = match load(&a.config, a.regions.as_deref()) {
        Ok(p) => p,
        Err(code) => return code,
    };
    if let Err(e) = trust_routers_of(&policy) {
        eprintln!("error: {e}");
        return ExitCode::FAILURE;
    }
    match dry_run::run(&policy, &url, a.token.as_deref().unwrap_or_default()) {
        Ok(text) => {
            print!("{text}");
            ExitCode::SUCCESS
        }
        Err(message) => {
            eprintln!("error: {message}");
            ExitCode::FAILURE
        }
    }
}

fn check(config: &Path, regions: Option<&Path>) -> ExitCode {
    let policy = match load(config, regions) {
        Ok(p) => p,
        Err(code) => return code,
    };
    print!("{}", summary(&policy));
    ExitCode::SUCCESS
}

/// The `check` summary: jurisdictions, relays per jurisdiction, plans, tenants, GeoIP.
pub fn summary(policy: &Policy) -> String {
    let mut s = String::new();
    let _ = writeln!(s, "{}: OK", policy.source().display());
    jurisdictions(&mut s, policy);
    relays(&mut s, policy);
    plans_and_tenants(&mut s, policy);
    geoip(&mut s, policy);
    let _ = writeln!(s, "routers ({}):", policy.routers().len());
    for r in policy.routers() {
        router(&mut s, policy, r);
    }
    notes(&mut s, policy);
    s
}

/// Each jurisdiction: its countries, relays and default relay.
fn jurisdictions(s: &mut String, policy: &Policy) {
    let _ = writeln!(s, "jurisdictions ({}):", policy.jurisdictions().len());
    for j in policy.jurisdictions() {
        let relays: Vec<&str> = j.relays().map(|r| policy.relay(r).id.as_str()).collect();
        let _ = writeln!(
            s,
            "  {:<8} {} ({}; {} {})",
            j.id,
            j.name,
            j.legal_basis,
            j.countries.len(),
            if j.countries.len() == 1 {
                "country"
            } else {
                "countries"
            }
        );
        if relays.is_empty() {
            let _ = writeln!(
                s,
                "           relays: none (every route into {} is refused)",
                j.id
            );
        } else {
            let _ = writeln!(
                s,
                "           relays ({}): {}",
                relays.len(),
                relays.join(", ")
            );
        }
        if let Some(d) = j.default_relay {
            let _ = writeln!(
                s,
                "           default relay for unknown locations: {}",
                policy.relay(d).id
            );
        }
    }
}

/// Each relay: country, address, jurisdictions and capacity.
fn relays(s: &mut String, policy: &Policy) {
    let _ = writeln!(s, "relays ({}):", policy.relays().len());
    for (i, r) in policy.relays().iter().enumerate() {
        let member: Vec<&str> = policy
            .jurisdictions_of(crate::policy::RelayIdx(i as u32))
            .map(|j| j.id.as_str())
            .collect();
        let _ = writeln!(
            s,
            "  {:<12} {} {} (in {}), {} participants, {} bit/s",
            r.id,
            r.country,
            r.quic_addr,
            member.join(", "),
            r.max_participants,
            r.max_bitrate_bps
        );
    }
}

/// The operator's default jurisdiction, the plans and the tenants.
fn plans_and_tenants(s: &mut String, policy: &Policy) {
    let default = &policy.jurisdiction(policy.default_jurisdiction()).id;
    let _ = writeln!(s, "operator default jurisdiction: {default}");
    let _ = writeln!(s, "plans ({}):", policy.plans().len());
    for p in policy.plans() {
        let choices: Vec<&str> = p
            .jurisdictions
            .iter()
            .map(|j| policy.jurisdiction(*j).id.as_str())
            .collect();
        let default = &policy.jurisdiction(p.default).id;
        if p.may_choose() {
            let _ = writeln!(
                s,
                "  {:<12} may choose {}; default {default}",
                p.id,
                choices.join(", ")
            );
        } else {
            let _ = writeln!(s, "  {:<12} may not choose; pinned to {default}", p.id);
        }
    }
    let _ = writeln!(s, "tenants ({}):", policy.tenants().len());
    for t in policy.tenants() {
        let _ = writeln!(s, "  {:<12} plan {}", t.id, policy.plan_of(t).id);
    }
}

/// The GeoIP database, overrides and trusted proxies.
fn geoip(s: &mut String, policy: &Policy) {
    let geo = policy.geoip();
    match geo.database() {
        Some(db) => {
            let _ = writeln!(s, "geoip: {} ({})", db.path().display(), db.database_type());
        }
        None => {
            let _ = writeln!(
                s,
                "geoip: no database (overrides only; other addresses are unlocated)"
            );
        }
    }
    let _ = writeln!(
        s,
        "geoip overrides: {}; trusted proxies: {}",
        geo.overrides().entries().len(),
        policy.trusted_proxies().len()
    );
}

/// One router: where, what it serves, HTTPS, its store and records key.
fn router(s: &mut String, policy: &Policy, r: &policy::Router) {
    let served: Vec<&str> = r
        .jurisdictions
        .iter()
        .map(|j| policy.jurisdiction(*j).id.as_str())
        .collect();
    let _ = writeln!(
        s,
        "  {:<16} {} {} serves {}",
        r.id,
        r.country,
        r.url,
        served.join(", ")
    );
    let verified = |ca: &Option<std::path::PathBuf>| {
        ca.as_ref().map_or(String::new(), |ca| {
            format!("; relays verify it against {}", ca.display())
        })
    };
    let _ = match (&r.tls, &r.acme) {
        (Some((cert, _)), _) => writeln!(
            s,
            "    https: serves {}{}",
            cert.display(),
            verified(&r.tls_ca)
        ),
        (None, Some(name)) => writeln!(
            s,
            "    https: a certificate for {name} over ACME ([acme]){}",
            verified(&r.tls_ca)
        ),
        (None, None) => writeln!(
            s,
            "    warning: plain HTTP (plain_http = true): only behind a TLS-terminating proxy, or passcodes, tickets{} cross the network in clear",
            if r.relay_url.starts_with("http://") {
                " and relay credentials (relay_url is http://)"
            } else {
                ""
            }
        ),
    };
    let _ = match &r.store {
        policy::StoreLocation::Sqlite(path) => {
            writeln!(
                s,
                "    store: SQLite {} (on the router's machine)",
                path.display()
            )
        }
        policy::StoreLocation::Postgres(pg) => {
            let replicas: Vec<&str> = policy
                .replicas(r)
                .iter()
                .map(|o| o.id.as_str())
                .filter(|o| *o != r.id)
                .collect();
            writeln!(
                s,
                "    store: PostgreSQL {} in {}{}{}",
                pg.url,
                pg.country,
                if pg.ca.is_some() {
                    ", TLS verified"
                } else {
                    ""
                },
                if replicas.is_empty() {
                    String::new()
                } else {
                    format!("; replicas: {}", replicas.join(", "))
                }
            )
        }
    };
    let _ = writeln!(
        s,
        "    records key: {}{} (keys address and passcode hashes; not in the store: back it up apart from it)",
        match &r.records_key {
            Some(path) => path.display().to_string(),
            None => format!("derived from {}", r.signing_key.display()),
        },
        match r.records_key_previous.len() {
            0 => String::new(),
            n => format!(", {n} previous still accepted"),
        }
    );
}

/// What the operator may have missed: jurisdictions no router serves,
/// relays that cannot register.
fn notes(s: &mut String, policy: &Policy) {
    for j in policy.jurisdictions() {
        if policy
            .jurisdiction_idx(&j.id)
            .and_then(|i| policy.router_for(i))
            .is_none()
            && !policy.routers().is_empty()
        {
            let _ = writeln!(
                s,
                "  note: no router serves '{}': its conferences cannot be created",
                j.id
            );
        }
    }
    if !policy.routers().is_empty() {
        for r in policy.relays() {
            if r.credential_sha256.is_none() {
                let _ = writeln!(
                    s,
                    "  note: relay '{}' has no credential_sha256: it cannot register and gets no joins",
                    r.id
                );
            }
        }
    }
}
