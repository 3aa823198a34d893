//! Cascade tickets: a router's permission for one relay to open a link to
//! another for one conference.
//!
//! `c1.<claims>.<signature>`, built like join tickets but with their own
//! prefix inside the signed bytes, so neither kind can pass for the other.
//! The accepting relay checks, in order: it parses; the relay itself is in
//! the ticket's jurisdiction; a key trusted for that jurisdiction signed it;
//! it names this relay as `to`; the conference belongs to the jurisdiction;
//! the inventory puts the `from` relay inside the jurisdiction; the link
//! comes from that relay's address; the validity window; the nonce.

use std::net::IpAddr;

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64;
use ed25519_dalek::{Signature, Signer, SigningKey};
use serde::{Deserialize, Serialize};

use super::{CLOCK_SKEW_SECS, MAX_CONFERENCE_ID_LEN, MAX_LIFETIME_SECS, MAX_TICKET_LEN};
use super::{TicketError, Verifier};

const PREFIX: &str = "c1.";

/// The signed claims of a cascade ticket.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CascadeClaims {
    pub conference: String,
    pub jurisdiction: String,
    /// The relay that opens the link.
    pub from: String,
    /// The relay that accepts it.
    pub to: String,
    pub issued_at: u64,
    pub expires_at: u64,
    pub nonce: String,
}

/// Signs cascade claims into a ticket.
pub fn sign_cascade(claims: &CascadeClaims, key: &SigningKey) -> String {
    let json = serde_json::to_vec(claims).unwrap_or_default();
    let mut ticket = format!("{PREFIX}{}", B64.encode(json));
    let signature = key.sign(ticket.as_bytes());
    ticket.push('.');
    ticket.push_str(&B64.encode(signature.to_bytes()));
    ticket
}

fn parse(ticket: &str) -> Result<(CascadeClaims, &[u8], Signature), TicketError> {
    if ticket.len() > MAX_TICKET_LEN {
        return Err(TicketError::Malformed);
    }
    let rest = ticket.strip_prefix(PREFIX).ok_or(TicketError::Malformed)?;
    let (claims_b64, sig_b64) = rest.split_once('.').ok_or(TicketError::Malformed)?;
    let signed = &ticket.as_bytes()[..PREFIX.len() + claims_b64.len()];
    let json = B64.decode(claims_b64).map_err(|_| TicketError::Malformed)?;
    let claims: CascadeClaims =
        serde_json::from_slice(&json).map_err(|_| TicketError::Malformed)?;
    if claims.conference.len() > MAX_CONFERENCE_ID_LEN
        || claims.from.len() > 64
        || claims.to.len() > 64
    {
        return Err(TicketError::Malformed);
    }
    let sig = B64.decode(sig_b64).map_err(|_| TicketError::Malformed)?;
    let signature = Signature::from_slice(&sig).map_err(|_| TicketError::Malformed)?;
    Ok((claims, signed, signature))
}

/// The claims of a cascade ticket, unverified (to name a refusal).
pub fn peek_cascade(ticket: &str) -> Result<CascadeClaims, TicketError> {
    parse(ticket).map(|(c, _, _)| c)
}

impl Verifier {
    /// Checks a cascade ticket presented by a link coming from `peer_ip`.
    pub fn check_cascade(
        &self,
        ticket: &str,
        peer_ip: IpAddr,
        now: u64,
    ) -> Result<CascadeClaims, TicketError> {
        let (claims, signed, signature) = parse(ticket)?;
        let keys = self
            .trusted
            .get(&claims.jurisdiction)
            .ok_or(TicketError::ForeignJurisdiction)?;
        if !keys
            .iter()
            .any(|k| k.verify_strict(signed, &signature).is_ok())
        {
            return Err(TicketError::BadSignature);
        }
        if claims.to != self.relay {
            return Err(TicketError::WrongRelay);
        }
        let in_jurisdiction = claims
            .conference
            .strip_prefix(claims.jurisdiction.as_str())
            .is_some_and(|rest| rest.starts_with('-') && rest.len() > 1);
        if !in_jurisdiction {
            return Err(TicketError::ConferenceOutsideJurisdiction);
        }
        // The inventory, not the ticket, says where the peer is.
        let peer = self
            .peers
            .get(&claims.from)
            .filter(|p| p.jurisdictions.contains(&claims.jurisdiction))
            .ok_or(TicketError::PeerOutsideJurisdiction)?;
        if peer.ip != peer_ip.to_canonical() {
            return Err(TicketError::WrongPeer);
        }
        if claims.expires_at <= now {
            return Err(TicketError::Expired);
        }
        if claims.issued_at > now + CLOCK_SKEW_SECS
            || claims.expires_at.saturating_sub(claims.issued_at) > MAX_LIFETIME_SECS
        {
            return Err(TicketError::BadValidity);
        }
        if claims.issued_at < self.not_before {
            return Err(TicketError::IssuedBeforeStart);
        }
        Ok(claims)
    }

    /// The replay check for cascade tickets (one nonce space with join tickets).
    pub fn remember_cascade(
        &mut self,
        claims: &CascadeClaims,
        now: u64,
    ) -> Result<(), TicketError> {
        self.remember_nonce(&claims.nonce, claims.expires_at, now)
    }
}
