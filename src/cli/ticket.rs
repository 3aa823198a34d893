//! `residency-relay ticket`: mint a join ticket.

use std::path::Path;

use crate::policy::Policy;
use crate::ticket::{self, Claims, Grants, MAX_LIFETIME_SECS};
use std::process::ExitCode;

use super::args::TicketArgs;

pub(super) struct Request<'a> {
    pub(super) key: &'a Path,
    pub(super) conference: String,
    pub(super) jurisdiction: String,
    pub(super) relay: String,
    pub(super) participant: String,
    pub(super) name: String,
    pub(super) grants: Grants,
    pub(super) e2ee: bool,
    pub(super) ttl: u64,
}

/// Signs a ticket after checking that it could be accepted: the relay exists
/// and is inside the jurisdiction, and the key is one the jurisdiction trusts.
pub(super) fn mint(policy: &Policy, req: Request<'_>) -> Result<String, String> {
    let j = policy
        .jurisdiction_idx(&req.jurisdiction)
        .ok_or_else(|| format!("no jurisdiction '{}'", req.jurisdiction))?;
    let relay = policy
        .relay_idx(&req.relay)
        .ok_or_else(|| format!("no relay '{}'", req.relay))?;
    if !policy.jurisdiction(j).contains(relay) {
        return Err(format!(
            "relay '{}' is in {}, outside jurisdiction '{}': no ticket for it",
            req.relay,
            policy.relay(relay).country,
            req.jurisdiction
        ));
    }
    if !req
        .conference
        .starts_with(&format!("{}-", req.jurisdiction))
    {
        return Err(format!(
            "conference ids start with their jurisdiction: '{}-…'",
            req.jurisdiction
        ));
    }
    if req.name.len() > crate::wire::control::MAX_LABEL_LEN
        || req.participant.len() > crate::wire::control::MAX_LABEL_LEN
    {
        return Err(format!(
            "--name and --participant are at most {} bytes",
            crate::wire::control::MAX_LABEL_LEN
        ));
    }
    if req.ttl == 0 || req.ttl > MAX_LIFETIME_SECS {
        return Err(format!("--ttl must be 1 to {MAX_LIFETIME_SECS} seconds"));
    }
    let text = std::fs::read_to_string(req.key)
        .map_err(|e| format!("cannot read {}: {e}", req.key.display()))?;
    let key =
        ticket::parse_signing_key(&text).map_err(|e| format!("{}: {e}", req.key.display()))?;
    if !policy.ticket_keys(j).contains(&key.verifying_key()) {
        return Err(format!(
            "the key in {} is not among ticket_keys.{} in the config, so relays would refuse the ticket",
            req.key.display(),
            req.jurisdiction
        ));
    }
    let now = match crate::clock::unix_now() {
        0 => return Err("the system clock is before 1970".to_owned()),
        now => now,
    };
    let claims = Claims {
        e2ee: req.e2ee,
        conference: req.conference,
        jurisdiction: req.jurisdiction,
        relay: req.relay,
        participant: req.participant,
        display_name: req.name,
        grants: req.grants,
        issued_at: now,
        expires_at: now + req.ttl,
        nonce: ticket::new_nonce().map_err(|e| format!("no randomness for a nonce: {e}"))?,
    };
    Ok(ticket::sign(&claims, &key))
}

/// `ticket`: mints a join ticket and prints it.
pub(super) fn command(a: TicketArgs) -> ExitCode {
    let policy = match super::load(&a.config, a.regions.as_deref()) {
        Ok(p) => p,
        Err(code) => return code,
    };
    let request = Request {
        key: &a.key,
        conference: a.conference,
        jurisdiction: a.jurisdiction,
        relay: a.relay,
        participant: a.participant,
        name: a.name,
        grants: crate::ticket::Grants {
            publish: a.publish,
            subscribe: a.subscribe,
            moderate: a.moderate,
        },
        e2ee: a.e2ee,
        ttl: a.ttl,
    };
    match mint(&policy, request) {
        Ok(t) => {
            println!("{t}");
            ExitCode::SUCCESS
        }
        Err(message) => {
            eprintln!("error: {message}");
            ExitCode::FAILURE
        }
    }
}
