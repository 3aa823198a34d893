//! Tickets minted by the `ticket` command against the shipped dev policy,
//! checked by each relay's verifier as built from that policy.

mod support;

use std::process::Command;
use std::time::{SystemTime, UNIX_EPOCH};

use residency_relay::policy;
use residency_relay::ticket::TicketError;

fn mint(relay: &str, jurisdiction: &str) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_residency-relay"))
        .current_dir(support::repo())
        .args([
            "ticket",
            "--config",
            "config/dev.toml",
            "--key",
            "config/dev-ticket.key",
        ])
        .args([
            "--conference",
            "eu-test",
            "--jurisdiction",
            jurisdiction,
            "--relay",
            relay,
        ])
        .args([
            "--participant",
            "p1",
            "--name",
            "Ada",
            "--publish",
            "--subscribe",
        ])
        .output()
        .unwrap()
}

fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

#[test]
fn minted_tickets_are_accepted_only_where_they_belong() {
    let policy = policy::load(&support::repo().join("config/dev.toml")).unwrap();
    let out = mint("de-fra-1", "eu");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let ticket = String::from_utf8(out.stdout).unwrap();
    let ticket = ticket.trim();

    let relay = |id: &str| policy.ticket_verifier(policy.relay_idx(id).unwrap());
    // Frankfurt accepts it once.
    let mut fra = relay("de-fra-1");
    let claims = fra.verify(ticket, now()).unwrap();
    assert_eq!(
        (claims.jurisdiction.as_str(), claims.relay.as_str()),
        ("eu", "de-fra-1")
    );
    assert!(claims.grants.publish && claims.grants.subscribe && !claims.grants.moderate);
    assert!(claims.expires_at - claims.issued_at == 60);
    assert_eq!(fra.verify(ticket, now()), Err(TicketError::Replayed));
    // Dublin is in the EU but the ticket names Frankfurt.
    assert_eq!(
        relay("ie-dub-1").verify(ticket, now()),
        Err(TicketError::WrongRelay)
    );
    // New York and Zurich are not in the EU at all.
    assert_eq!(
        relay("us-nyc-1").verify(ticket, now()),
        Err(TicketError::ForeignJurisdiction)
    );
    assert_eq!(
        relay("ch-zrh-1").verify(ticket, now()),
        Err(TicketError::ForeignJurisdiction)
    );
}

#[test]
fn the_command_refuses_tickets_for_relays_outside_the_jurisdiction() {
    let out = mint("us-nyc-1", "eu");
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("outside jurisdiction 'eu'"));
    assert!(out.stdout.is_empty());
}
