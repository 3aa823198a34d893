//! `residency-relay check --config NEW --against ROUTER_URL --token ADMIN`:
//! what a new policy would do to a running router's live conferences,
//! before anyone applies it. Nothing is changed.

use std::fmt::Write as _;

use crate::policy::Policy;

pub(super) fn run(new: &Policy, router: &str, token: &str) -> Result<String, String> {
    let live = super::report::ask_router("GET", router, "/v1/admin/conferences", token)?;
    let router_id = live["router"].as_str().unwrap_or_default();
    let conferences = live["conferences"].as_array().cloned().unwrap_or_default();
    let mut out = String::new();
    let _ = writeln!(
        out,
        "dry run of {} against router {router_id} ({} live conferences); nothing is changed",
        new.source().display(),
        conferences.len()
    );
    let me = new.router(router_id);
    if me.is_none() {
        let _ = writeln!(
            out,
            "  router {router_id} is not in the new config: it could not start with it"
        );
    }
    let mut affected = 0;
    for c in &conferences {
        let id = c["id"].as_str().unwrap_or_default();
        let jid = c["jurisdiction"].as_str().unwrap_or_default();
        let participants = c["participants"].as_u64().unwrap_or(0);
        let mut lines = Vec::new();
        match new.jurisdiction_idx(jid) {
            None => lines.push(format!(
                "jurisdiction '{jid}' is gone: the conference could no longer be joined"
            )),
            Some(j) => {
                let jurisdiction = new.jurisdiction(j);
                if me.is_some_and(|r| !r.serves(j)) {
                    lines.push(format!(
                        "router {router_id} would no longer serve '{jid}': its records would be stranded"
                    ));
                }
                if jurisdiction.members.is_empty() {
                    lines.push(format!(
                        "no relay would be inside '{jid}': further joins refused (503)"
                    ));
                }
                for relay in c["relays"].as_array().into_iter().flatten() {
                    let relay = relay.as_str().unwrap_or_default();
                    match new.relay_idx(relay) {
                        None => lines.push(format!(
                            "relay {relay} is removed: its participants must move to another relay of '{jid}'"
                        )),
                        Some(r) if !jurisdiction.contains(r) => lines.push(format!(
                            "relay {relay} (now {}) would be outside '{jid}': its participants must move to a relay inside",
                            new.relay(r).country
                        )),
                        Some(_) => {}
                    }
                }
            }
        }
        if !lines.is_empty() {
            affected += 1;
            let _ = writeln!(
                out,
                "  conference {id} ({jid}, {participants} participants):"
            );
            for l in lines {
                let _ = writeln!(out, "    - {l}");
            }
        }
    }
    if affected == 0 {
        let _ = writeln!(out, "  no live conference would be affected");
    } else {
        let _ = writeln!(out, "{affected} live conference(s) affected");
    }
    Ok(out)
}
