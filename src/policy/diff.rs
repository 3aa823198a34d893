//! What differs between two policies, in words an operator reads in a
//! reload's answer and log.

use std::collections::BTreeSet;
use std::fmt::Debug;

use super::Policy;

/// One line per difference between `old` and `new`: jurisdictions, relays,
/// routers, plans, tenants, GeoIP overrides and the other sections.
pub fn diff(old: &Policy, new: &Policy) -> Vec<String> {
    let mut out = Vec::new();
    jurisdictions(old, new, &mut out);
    relays(old, new, &mut out);
    routers(old, new, &mut out);
    plans(old, new, &mut out);
    tenants(old, new, &mut out);
    geoip(old, new, &mut out);
    rest(old, new, &mut out);
    out
}

/// Jurisdictions: added, removed, their countries and member relays.
fn jurisdictions(old: &Policy, new: &Policy, out: &mut Vec<String>) {
    for (id, change) in pairs(
        old.jurisdictions().iter().map(|j| (j.id.as_str(), j)),
        new.jurisdictions().iter().map(|j| (j.id.as_str(), j)),
    ) {
        match change {
            Change::Added(_) => out.push(format!("jurisdiction {id} added")),
            Change::Removed => out.push(format!("jurisdiction {id} removed")),
            Change::Both(a, b) => {
                if a.countries != b.countries {
                    let gained: Vec<String> = b
                        .countries
                        .iter()
                        .filter(|c| !a.countries.contains(*c))
                        .map(|c| c.to_string())
                        .collect();
                    let lost: Vec<String> = a
                        .countries
                        .iter()
                        .filter(|c| !b.countries.contains(*c))
                        .map(|c| c.to_string())
                        .collect();
                    out.push(format!(
                        "jurisdiction {id}: countries +[{}] -[{}]",
                        gained.join(","),
                        lost.join(",")
                    ));
                }
                let relays = |p: &Policy, j: &super::Jurisdiction| {
                    j.relays()
                        .map(|r| p.relay(r).id.clone())
                        .collect::<Vec<_>>()
                };
                let (ra, rb) = (relays(old, a), relays(new, b));
                if ra != rb {
                    out.push(format!(
                        "jurisdiction {id}: relays [{}] -> [{}]",
                        ra.join(","),
                        rb.join(",")
                    ));
                }
            }
        }
    }
}

/// Relays: added, removed, and what changed of each.
fn relays(old: &Policy, new: &Policy, out: &mut Vec<String>) {
    for (id, change) in pairs(
        old.relays().iter().map(|r| (r.id.as_str(), r)),
        new.relays().iter().map(|r| (r.id.as_str(), r)),
    ) {
        match change {
            Change::Added(r) => out.push(format!("relay {id} added ({})", r.country)),
            Change::Removed => out.push(format!("relay {id} removed")),
            Change::Both(a, b) => {
                field(
                    out,
                    "relay",
                    id,
                    "country",
                    &a.country.to_string(),
                    &b.country.to_string(),
                );
                field(out, "relay", id, "quic_addr", &a.quic_addr, &b.quic_addr);
                field(out, "relay", id, "http_addr", &a.http_addr, &b.http_addr);
                field(
                    out,
                    "relay",
                    id,
                    "max_participants",
                    &a.max_participants,
                    &b.max_participants,
                );
                field(
                    out,
                    "relay",
                    id,
                    "max_bitrate_bps",
                    &a.max_bitrate_bps,
                    &b.max_bitrate_bps,
                );
                if a.credential_sha256 != b.credential_sha256 {
                    out.push(format!("relay {id}: credential_sha256 changed"));
                }
                if a.tls != b.tls {
                    out.push(format!("relay {id}: tls files changed"));
                }
            }
        }
    }
}

/// Routers: added, removed, and what changed of each.
fn routers(old: &Policy, new: &Policy, out: &mut Vec<String>) {
    let served = |p: &Policy, r: &super::Router| {
        r.jurisdictions
            .iter()
            .map(|j| p.jurisdiction(*j).id.clone())
            .collect::<Vec<_>>()
            .join(",")
    };
    for (id, change) in pairs(
        old.routers().iter().map(|r| (r.id.as_str(), r)),
        new.routers().iter().map(|r| (r.id.as_str(), r)),
    ) {
        match change {
            Change::Added(_) => out.push(format!("router {id} added")),
            Change::Removed => out.push(format!("router {id} removed")),
            Change::Both(a, b) => {
                field(
                    out,
                    "router",
                    id,
                    "jurisdictions",
                    &served(old, a),
                    &served(new, b),
                );
                field(out, "router", id, "url", &a.url, &b.url);
                field(out, "router", id, "relay_url", &a.relay_url, &b.relay_url);
                if a.public_key != b.public_key {
                    out.push(format!("router {id}: public_key changed"));
                }
                if a.admin_token_sha256 != b.admin_token_sha256 {
                    out.push(format!("router {id}: admin_token_sha256 changed"));
                }
                if a.tls != b.tls || a.tls_ca != b.tls_ca {
                    out.push(format!("router {id}: tls files changed"));
                }
            }
        }
    }
}

/// Plans, each as one line of text.
fn plans(old: &Policy, new: &Policy, out: &mut Vec<String>) {
    let plan_text = |p: &Policy, plan: &super::Plan| {
        format!(
            "jurisdictions [{}], default {}, allow_no_passcode {}, waiting_room {}",
            plan.jurisdictions
                .iter()
                .map(|j| p.jurisdiction(*j).id.as_str())
                .collect::<Vec<_>>()
                .join(","),
            p.jurisdiction(plan.default).id,
            plan.allow_no_passcode,
            plan.waiting_room
        )
    };
    for (id, change) in pairs(
        old.plans().iter().map(|p| (p.id.as_str(), p)),
        new.plans().iter().map(|p| (p.id.as_str(), p)),
    ) {
        match change {
            Change::Added(_) => out.push(format!("plan {id} added")),
            Change::Removed => out.push(format!("plan {id} removed")),
            Change::Both(a, b) => {
                field(out, "plan", id, "", &plan_text(old, a), &plan_text(new, b))
            }
        }
    }
}

/// Tenants (never their keys, only that they changed).
fn tenants(old: &Policy, new: &Policy, out: &mut Vec<String>) {
    for (id, change) in pairs(
        old.tenants().iter().map(|t| (t.id.as_str(), t)),
        new.tenants().iter().map(|t| (t.id.as_str(), t)),
    ) {
        match change {
            Change::Added(_) => out.push(format!("tenant {id} added")),
            Change::Removed => out.push(format!("tenant {id} removed")),
            Change::Both(a, b) => {
                field(
                    out,
                    "tenant",
                    id,
                    "plan",
                    &old.plans()[a.plan].id,
                    &new.plans()[b.plan].id,
                );
                if a.api_key_sha256 != b.api_key_sha256 {
                    out.push(format!("tenant {id}: api key changed"));
                }
                field(
                    out,
                    "tenant",
                    id,
                    "waiting_room",
                    &a.waiting_room,
                    &b.waiting_room,
                );
            }
        }
    }
}

/// GeoIP overrides, by network, and the database.
fn geoip(old: &Policy, new: &Policy, out: &mut Vec<String>) {
    let overrides = |p: &Policy| {
        p.geoip()
            .overrides()
            .entries()
            .iter()
            .map(|o| format!("{} {}", o.net, o.country))
            .collect::<BTreeSet<_>>()
    };
    let (oa, ob) = (overrides(old), overrides(new));
    for o in ob.difference(&oa) {
        out.push(format!("override {o} added"));
    }
    for o in oa.difference(&ob) {
        out.push(format!("override {o} removed"));
    }
    let database = |p: &Policy| p.geoip().database().map(|d| d.path().to_owned());
    field(out, "geoip", "database", "", &database(old), &database(new));
}

/// The rest: default jurisdiction, selection, proxies, ticket keys, limits, logging.
fn rest(old: &Policy, new: &Policy, out: &mut Vec<String>) {
    let default = |p: &Policy| p.jurisdiction(p.default_jurisdiction()).id.clone();
    field(
        out,
        "policy",
        "default",
        "jurisdiction",
        &default(old),
        &default(new),
    );
    field(
        out,
        "policy",
        "selection",
        "",
        &old.selection(),
        &new.selection(),
    );
    field(
        out,
        "policy",
        "trusted_proxies",
        "",
        &old.trusted_proxies(),
        &new.trusted_proxies(),
    );
    let keys = |p: &Policy| {
        p.jurisdictions()
            .iter()
            .filter_map(|j| p.jurisdiction_idx(&j.id))
            .map(|j| {
                (
                    p.jurisdiction(j).id.clone(),
                    p.ticket_keys(j)
                        .iter()
                        .map(|k| hex::encode(k.to_bytes()))
                        .collect::<Vec<_>>(),
                )
            })
            .collect::<Vec<_>>()
    };
    if keys(old) != keys(new) {
        out.push("ticket_keys changed".to_owned());
    }
    field(out, "policy", "limits", "", old.limits(), new.limits());
    let logging = |p: &Policy| {
        let l = p.logging();
        format!(
            "format {}, level {}, full_addresses [{}]",
            if l.json { "json" } else { "human" },
            l.level,
            p.full_address_jurisdictions().join(",")
        )
    };
    field(out, "policy", "logging", "", &logging(old), &logging(new));
}

enum Change<'a, T> {
    Added(&'a T),
    Removed,
    Both(&'a T, &'a T),
}

/// Matches two id-keyed lists: what only `new` has, only `old` has, and both.
fn pairs<'a, T>(
    old: impl Iterator<Item = (&'a str, &'a T)>,
    new: impl Iterator<Item = (&'a str, &'a T)>,
) -> Vec<(&'a str, Change<'a, T>)> {
    let old: Vec<_> = old.collect();
    let new: Vec<_> = new.collect();
    let mut out = Vec::new();
    for (id, b) in &new {
        match old.iter().find(|(o, _)| o == id) {
            Some((_, a)) => out.push((*id, Change::Both(*a, *b))),
            None => out.push((*id, Change::Added(*b))),
        }
    }
    for (id, _) in &old {
        if !new.iter().any(|(n, _)| n == id) {
            out.push((*id, Change::Removed));
        }
    }
    out
}

/// "`kind` `id`: `name` A -> B" when the values differ.
fn field<T: Debug + PartialEq + ?Sized>(
    out: &mut Vec<String>,
    kind: &str,
    id: &str,
    name: &str,
    a: &T,
    b: &T,
) {
    if a != b {
        let name = if name.is_empty() {
            String::new()
        } else {
            format!(" {name}")
        };
        out.push(format!("{kind} {id}:{name} {a:?} -> {b:?}"));
    }
}
