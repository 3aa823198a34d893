//! Cascade tickets: a router's permission for one relay to open a link to
//! another for one conference.
//!
//! `c1.<claims>.<signature>`, built like join tickets but with their own
//! prefix inside the signed bytes, so neither kind can pass for the other.
//! The accepting relay checks, in order: it parses; the relay itself is in
//! the ticket's jurisdiction; a key trusted for that jurisdiction signed it;
//! it names this relay as `to`; the conference belongs to the jurisdiction;
//! the inventory puts the `from` relay inside the jurisdiction; the link
//! comes from that relay's address; the validity window; the link's client
//! certificate is one the router knew for the `from` relay (`from_certs`,
//! from that relay's own reports), so neither a source address nor a
//! stolen ticket alone opens a link; the nonce.

use std::net::IpAddr;

use ed25519_dalek::{Signature, SigningKey};
use serde::{Deserialize, Serialize};

use super::MAX_CONFERENCE_ID_LEN;
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
    /// SHA-256 (hex) of the certificates the `from` relay may present:
    /// the one it reported and its announced successor. A ticket without
    /// any opens no link.
    #[serde(default)]
    pub from_certs: Vec<String>,
}

/// Signs cascade claims into a ticket.
pub fn sign_cascade(claims: &CascadeClaims, key: &SigningKey) -> String {
    super::sign_envelope(PREFIX, claims, key)
}

fn parse(ticket: &str) -> Result<(CascadeClaims, &[u8], Signature), TicketError> {
    let (claims, signed, signature) = super::parse_envelope::<CascadeClaims>(PREFIX, ticket)?;
    if claims.conference.len() > MAX_CONFERENCE_ID_LEN
        || claims.from.len() > 64
        || claims.to.len() > 64
        || claims.from_certs.len() > 2
        || claims.from_certs.iter().any(|c| c.len() != 64)
    {
        return Err(TicketError::Malformed);
    }
    Ok((claims, signed, signature))
}

/// The claims of a cascade ticket, unverified (to name a refusal).
pub fn peek_cascade(ticket: &str) -> Result<CascadeClaims, TicketError> {
    parse(ticket).map(|(c, _, _)| c)
}

impl Verifier {
    /// The claims of a refused cascade ticket if a key the policy gives its
    /// jurisdiction signed it (see [`Verifier::attest`]).
    pub fn attest_cascade(&self, ticket: &str) -> Option<CascadeClaims> {
        let (claims, signed, signature) = parse(ticket).ok()?;
        self.signed_by_known(&claims.jurisdiction, &claims.conference, signed, &signature)
            .then_some(claims)
    }

    /// Checks a cascade ticket presented by a link coming from `peer_ip`
    /// with the client certificate whose SHA-256 (hex) is `peer_cert`.
    pub fn check_cascade(
        &self,
        ticket: &str,
        peer_ip: IpAddr,
        peer_cert: Option<&str>,
        now: u64,
    ) -> Result<CascadeClaims, TicketError> {
        let (claims, signed, signature) = parse(ticket)?;
        self.check_signature(&claims.jurisdiction, signed, &signature)?;
        if claims.to != self.relay {
            return Err(TicketError::WrongRelay);
        }
        super::check_conference(&claims.conference, &claims.jurisdiction)?;
        // The inventory, not the ticket, says where the peer is.
        let peer = self
            .peers
            .get(&claims.from)
            .filter(|p| p.jurisdictions.contains(&claims.jurisdiction))
            .ok_or(TicketError::PeerOutsideJurisdiction)?;
        if peer.ip != peer_ip.to_canonical() {
            return Err(TicketError::WrongPeer);
        }
        self.check_window(claims.issued_at, claims.expires_at, now)?;
        let known = peer_cert.is_some_and(|presented| {
            claims
                .from_certs
                .iter()
                .any(|c| c.eq_ignore_ascii_case(presented))
        });
        if !known {
            return Err(TicketError::WrongPeerCertificate);
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
