//! Join tickets: short-lived, Ed25519-signed, bound to one relay and one
//! jurisdiction.
//!
//! A ticket is `v1.<claims>.<signature>`: the claims are JSON, both parts
//! base64url without padding, and the signature covers the bytes
//! `v1.<claims>` exactly as sent (no re-encoding, so no canonicalisation).
//!
//! A relay accepts a ticket only if, in this order: it parses; the relay is
//! itself inside the ticket's jurisdiction; a key the relay trusts for that
//! jurisdiction signed it; it names this relay; it is within its validity
//! window; and its nonce was not seen before. Each failure is a distinct
//! [`TicketError`] with a stable code. Verification is sans-IO: the current
//! time is an argument.

mod cascade;

use std::collections::HashMap;
use std::net::IpAddr;

pub use cascade::{CascadeClaims, peek_cascade, sign_cascade};

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64;
use ed25519_dalek::{Signature, Signer, SigningKey, VerifyingKey};
use serde::{Deserialize, Serialize};

/// Longest ticket accepted, in bytes.
pub const MAX_TICKET_LEN: usize = 2048;

/// Longest validity window a relay accepts (`expires_at - issued_at`).
pub const MAX_LIFETIME_SECS: u64 = 300;

/// Longest conference id accepted.
pub const MAX_CONFERENCE_ID_LEN: usize = 128;

/// Clock difference tolerated between the issuing router and the relay.
pub const CLOCK_SKEW_SECS: u64 = 30;

const PREFIX: &str = "v1.";

/// What a ticket's holder may do.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Grants {
    pub publish: bool,
    pub subscribe: bool,
    pub moderate: bool,
}

/// The signed claims.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Claims {
    pub conference: String,
    pub jurisdiction: String,
    pub relay: String,
    pub participant: String,
    pub display_name: String,
    pub grants: Grants,
    /// Unix seconds.
    pub issued_at: u64,
    /// Unix seconds.
    pub expires_at: u64,
    /// 16 random bytes, base64url; a relay accepts each nonce once.
    pub nonce: String,
    /// The conference is end-to-end encrypted: the relay refuses tracks not
    /// declared encrypted. Absent when false, so tickets of other
    /// conferences stay as older relays know them.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub e2ee: bool,
}

/// Why a ticket was refused. A bounded set: each is a metric label and an
/// error code on the wire.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum TicketError {
    #[error("the ticket is malformed")]
    Malformed,
    #[error("this relay is not in the ticket's jurisdiction")]
    ForeignJurisdiction,
    #[error("no key trusted for the ticket's jurisdiction signed it")]
    BadSignature,
    #[error("the ticket is for another relay")]
    WrongRelay,
    #[error("the ticket has expired")]
    Expired,
    #[error("the ticket is not valid yet, or claims a validity window longer than allowed")]
    BadValidity,
    #[error("the ticket was already used")]
    Replayed,
    #[error("too many tickets in flight; try again shortly")]
    Overloaded,
    #[error("the ticket's conference does not belong to its jurisdiction")]
    ConferenceOutsideJurisdiction,
    #[error("the ticket was issued before this relay started; ask the router for a new one")]
    IssuedBeforeStart,
    #[error("the ticket was revoked: its participant was removed or the conference ended")]
    Revoked,
    #[error("the peer relay is not in the conference's jurisdiction according to the inventory")]
    PeerOutsideJurisdiction,
    #[error("the link does not come from the relay the ticket names")]
    WrongPeer,
    #[error(
        "the link did not present a certificate the router knows for the relay the ticket names"
    )]
    WrongPeerCertificate,
}

impl TicketError {
    pub const ALL: [TicketError; 14] = [
        TicketError::Malformed,
        TicketError::ForeignJurisdiction,
        TicketError::BadSignature,
        TicketError::WrongRelay,
        TicketError::Expired,
        TicketError::BadValidity,
        TicketError::Replayed,
        TicketError::Overloaded,
        TicketError::ConferenceOutsideJurisdiction,
        TicketError::IssuedBeforeStart,
        TicketError::Revoked,
        TicketError::PeerOutsideJurisdiction,
        TicketError::WrongPeer,
        TicketError::WrongPeerCertificate,
    ];

    /// Stable code (metric label, logs).
    pub fn code(self) -> &'static str {
        match self {
            TicketError::Malformed => "malformed",
            TicketError::ForeignJurisdiction => "foreign_jurisdiction",
            TicketError::BadSignature => "bad_signature",
            TicketError::WrongRelay => "wrong_relay",
            TicketError::Expired => "expired",
            TicketError::BadValidity => "bad_validity",
            TicketError::Replayed => "replayed",
            TicketError::Overloaded => "overloaded",
            TicketError::ConferenceOutsideJurisdiction => "conference_outside_jurisdiction",
            TicketError::IssuedBeforeStart => "issued_before_start",
            TicketError::Revoked => "revoked",
            TicketError::PeerOutsideJurisdiction => "peer_outside_jurisdiction",
            TicketError::WrongPeer => "wrong_peer",
            TicketError::WrongPeerCertificate => "wrong_peer_certificate",
        }
    }

    /// Stable numeric code for the wire (`error` messages), 100 + position.
    pub fn wire_code(self) -> u16 {
        100 + Self::ALL.iter().position(|e| *e == self).unwrap_or(0) as u16
    }
}

/// Fresh random nonce for a ticket.
pub fn new_nonce() -> Result<String, getrandom::Error> {
    let mut bytes = [0u8; 16];
    getrandom::fill(&mut bytes)?;
    Ok(B64.encode(bytes))
}

/// Signs `claims` into a ticket string.
pub fn sign(claims: &Claims, key: &SigningKey) -> String {
    sign_envelope(PREFIX, claims, key)
}

/// `<prefix><claims>.<signature>`, both base64url, the signature over the
/// bytes before the last dot exactly as sent. The prefix (join or cascade
/// ticket) is inside the signed bytes, so neither kind passes for the other.
fn sign_envelope<C: Serialize>(prefix: &str, claims: &C, key: &SigningKey) -> String {
    // Claims serialise to JSON infallibly: strings, integers and booleans only.
    let json = serde_json::to_vec(claims).unwrap_or_default();
    let mut ticket = format!("{prefix}{}", B64.encode(json));
    let signature = key.sign(ticket.as_bytes());
    ticket.push('.');
    ticket.push_str(&B64.encode(signature.to_bytes()));
    ticket
}

/// Splits and decodes an envelope of [`sign_envelope`] without checking its
/// signature: the claims, the signed bytes and the signature.
fn parse_envelope<'a, C: for<'de> Deserialize<'de>>(
    prefix: &str,
    ticket: &'a str,
) -> Result<(C, &'a [u8], Signature), TicketError> {
    if ticket.len() > MAX_TICKET_LEN {
        return Err(TicketError::Malformed);
    }
    let rest = ticket.strip_prefix(prefix).ok_or(TicketError::Malformed)?;
    let (claims_b64, sig_b64) = rest.split_once('.').ok_or(TicketError::Malformed)?;
    let signed = &ticket.as_bytes()[..prefix.len() + claims_b64.len()];
    let claims_json = B64.decode(claims_b64).map_err(|_| TicketError::Malformed)?;
    let claims: C = serde_json::from_slice(&claims_json).map_err(|_| TicketError::Malformed)?;
    let sig_bytes = B64.decode(sig_b64).map_err(|_| TicketError::Malformed)?;
    let signature = Signature::from_slice(&sig_bytes).map_err(|_| TicketError::Malformed)?;
    Ok((claims, signed, signature))
}

/// Splits and decodes a join ticket without checking its signature.
fn parse(ticket: &str) -> Result<(Claims, &[u8], Signature), TicketError> {
    parse_envelope(PREFIX, ticket)
}

/// Reads the claims of a ticket without verifying it (clients use this to
/// learn where to connect; relays never do).
pub fn peek(ticket: &str) -> Result<Claims, TicketError> {
    parse(ticket).map(|(claims, _, _)| claims)
}

/// A relay's ticket checker: who it is, where it is, which keys it trusts,
/// and the nonces it has seen.
#[derive(Debug, Clone)]
pub struct Verifier {
    relay: String,
    /// Jurisdictions this relay is in, with the keys trusted for each.
    trusted: std::sync::Arc<HashMap<String, Vec<VerifyingKey>>>,
    seen: HashMap<String, u64>,
    max_nonces: usize,
    /// Tickets issued before this (unix seconds) are refused: the nonces
    /// seen before a restart are gone, so they could be replayed.
    not_before: u64,
    /// The other relays of the inventory: address and jurisdictions, for
    /// cascade links.
    peers: std::sync::Arc<HashMap<String, Peer>>,
    /// Every jurisdiction's keys as the policy gives them, trusted here or
    /// not: they tell a refused ticket that a router really issued (its
    /// claims are facts worth a residency report) from a forgery.
    known: std::sync::Arc<HashMap<String, Vec<VerifyingKey>>>,
}

/// Another relay as the inventory describes it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Peer {
    pub ip: IpAddr,
    /// Its QUIC address, where links to it are dialled.
    pub addr: std::net::SocketAddr,
    pub jurisdictions: Vec<String>,
}

impl Verifier {
    /// `trusted` must hold an entry (possibly empty) for every jurisdiction
    /// the relay is in, and none for any other.
    pub fn new(relay: impl Into<String>, trusted: HashMap<String, Vec<VerifyingKey>>) -> Self {
        Verifier {
            relay: relay.into(),
            trusted: std::sync::Arc::new(trusted),
            seen: HashMap::new(),
            max_nonces: 1_000_000,
            not_before: 0,
            peers: std::sync::Arc::new(HashMap::new()),
            known: std::sync::Arc::new(HashMap::new()),
        }
    }

    /// The keys of every jurisdiction of the policy, for [`Verifier::attest`]
    /// (the trusted ones count too).
    pub fn with_known_keys(mut self, known: HashMap<String, Vec<VerifyingKey>>) -> Self {
        self.known = std::sync::Arc::new(known);
        self
    }

    /// The claims of a refused join ticket, if a key the policy gives its
    /// jurisdiction signed it and its conference is of that jurisdiction:
    /// then they are facts (a router issued it) and the refusal belongs in
    /// the conference's records. `None` for anything unsigned, badly signed
    /// or signed by an unknown key: a forgery that names no conference.
    pub fn attest(&self, ticket: &str) -> Option<Claims> {
        let (claims, signed, signature) = parse(ticket).ok()?;
        self.signed_by_known(&claims.jurisdiction, &claims.conference, signed, &signature)
            .then_some(claims)
    }

    fn signed_by_known(
        &self,
        jurisdiction: &str,
        conference: &str,
        signed: &[u8],
        signature: &Signature,
    ) -> bool {
        // The policy's keys of the jurisdiction (which include the trusted
        // ones); a verifier built without them falls back to its trust.
        let Some(keys) = self
            .known
            .get(jurisdiction)
            .or_else(|| self.trusted.get(jurisdiction))
        else {
            return false;
        };
        check_conference(conference, jurisdiction).is_ok()
            && keys
                .iter()
                .any(|k| k.verify_strict(signed, signature).is_ok())
    }

    /// Where to dial `peer` for a link of a conference in `jurisdiction`:
    /// its inventory address, if the inventory puts it and this relay inside
    /// that jurisdiction.
    pub fn link_target(&self, peer: &str, jurisdiction: &str) -> Option<std::net::SocketAddr> {
        if !self.trusted.contains_key(jurisdiction) {
            return None;
        }
        self.peers
            .get(peer)
            .filter(|p| p.jurisdictions.iter().any(|j| j == jurisdiction))
            .map(|p| p.addr)
    }

    /// Whether `addr` is another relay's QUIC address in the inventory: a
    /// connection from there may be a cascade link, and is asked for its
    /// certificate.
    pub fn is_peer_addr(&self, addr: std::net::SocketAddr) -> bool {
        let ip = addr.ip().to_canonical();
        self.peers
            .values()
            .any(|p| p.addr.ip().to_canonical() == ip && p.addr.port() == addr.port())
    }

    /// The jurisdictions this relay is in, sorted.
    pub fn jurisdictions(&self) -> Vec<String> {
        let mut j: Vec<String> = self.trusted.keys().cloned().collect();
        j.sort();
        j
    }

    /// The inventory's other relays, for checking cascade links.
    pub fn with_peers(mut self, peers: HashMap<String, Peer>) -> Self {
        self.peers = std::sync::Arc::new(peers);
        self
    }

    /// Whether tickets and links of `jurisdiction` are taken at all.
    pub fn trusts(&self, jurisdiction: &str) -> bool {
        self.trusted.contains_key(jurisdiction)
    }

    /// Tickets issued before this (unix seconds) are refused.
    pub fn not_before(&self) -> u64 {
        self.not_before
    }

    /// Takes the trust (jurisdictions, keys) and peers of `new`, a verifier
    /// built from a reloaded policy; the nonces seen and the start-time
    /// floor stay, so a reload opens no replay window.
    pub fn adopt(&mut self, new: Verifier) {
        self.trusted = new.trusted;
        self.peers = new.peers;
        self.known = new.known;
    }

    /// Refuses tickets issued before `unix_seconds` (the relay's start time,
    /// so that a restart, which forgets seen nonces, cannot enable replays).
    pub fn issued_after(mut self, unix_seconds: u64) -> Self {
        self.not_before = unix_seconds;
        self
    }

    /// Bounds the replay cache (tickets arriving while it is full of live
    /// nonces are refused as [`TicketError::Overloaded`]).
    pub fn with_max_nonces(mut self, max: usize) -> Self {
        self.max_nonces = max;
        self
    }

    /// Checks `ticket` at `now` (unix seconds) and records its nonce.
    pub fn verify(&mut self, ticket: &str, now: u64) -> Result<Claims, TicketError> {
        let claims = self.check(ticket, now)?;
        self.remember(&claims, now)?;
        Ok(claims)
    }

    /// Everything but the replay check: parse, jurisdiction, signature,
    /// relay, conference, validity. Needs no mutable state, so connection
    /// tasks run it (the signature check is the expensive part) before the
    /// single core task sees the ticket.
    pub fn check(&self, ticket: &str, now: u64) -> Result<Claims, TicketError> {
        let (claims, signed, signature) = parse(ticket)?;
        // Names are relayed to every other participant: keep them within
        // what the control protocol carries.
        if claims.display_name.len() > crate::wire::control::MAX_LABEL_LEN
            || claims.participant.len() > crate::wire::control::MAX_LABEL_LEN
            || claims.conference.len() > MAX_CONFERENCE_ID_LEN
        {
            return Err(TicketError::Malformed);
        }
        self.check_signature(&claims.jurisdiction, signed, &signature)?;
        if claims.relay != self.relay {
            return Err(TicketError::WrongRelay);
        }
        check_conference(&claims.conference, &claims.jurisdiction)?;
        self.check_window(claims.issued_at, claims.expires_at, now)?;
        Ok(claims)
    }

    /// This relay is in `jurisdiction` and a key trusted for it signed `signed`.
    fn check_signature(
        &self,
        jurisdiction: &str,
        signed: &[u8],
        signature: &Signature,
    ) -> Result<(), TicketError> {
        let keys = self
            .trusted
            .get(jurisdiction)
            .ok_or(TicketError::ForeignJurisdiction)?;
        if keys
            .iter()
            .any(|k| k.verify_strict(signed, signature).is_ok())
        {
            Ok(())
        } else {
            Err(TicketError::BadSignature)
        }
    }

    /// The validity window: unexpired, not issued in the future beyond the
    /// skew, not longer than allowed, not issued before this relay started.
    fn check_window(&self, issued_at: u64, expires_at: u64, now: u64) -> Result<(), TicketError> {
        if expires_at <= now {
            return Err(TicketError::Expired);
        }
        if issued_at > now + CLOCK_SKEW_SECS
            || expires_at.saturating_sub(issued_at) > MAX_LIFETIME_SECS
        {
            return Err(TicketError::BadValidity);
        }
        if issued_at < self.not_before {
            return Err(TicketError::IssuedBeforeStart);
        }
        Ok(())
    }

    /// The replay check: accepts each nonce once while its ticket is valid.
    pub fn remember(&mut self, claims: &Claims, now: u64) -> Result<(), TicketError> {
        self.remember_nonce(&claims.nonce, claims.expires_at, now)
    }

    fn remember_nonce(
        &mut self,
        nonce: &str,
        expires_at: u64,
        now: u64,
    ) -> Result<(), TicketError> {
        if self.seen.contains_key(nonce) {
            return Err(TicketError::Replayed);
        }
        if self.seen.len() >= self.max_nonces {
            // Expired nonces can go: their tickets are refused as expired anyway.
            self.seen.retain(|_, expires| *expires > now);
            if self.seen.len() >= self.max_nonces {
                return Err(TicketError::Overloaded);
            }
        }
        self.seen.insert(nonce.to_owned(), expires_at);
        Ok(())
    }
}

/// Conference ids carry their jurisdiction ("eu-…"): a key trusted for one
/// jurisdiction cannot admit into another's conference.
fn check_conference(conference: &str, jurisdiction: &str) -> Result<(), TicketError> {
    let inside = conference
        .strip_prefix(jurisdiction)
        .is_some_and(|rest| rest.starts_with('-') && rest.len() > 1);
    if inside {
        Ok(())
    } else {
        Err(TicketError::ConferenceOutsideJurisdiction)
    }
}

/// Parses a public key written as 64 hex digits or 43 base64url characters.
pub fn parse_public_key(text: &str) -> Result<VerifyingKey, String> {
    let bytes = decode_key(text)?;
    VerifyingKey::from_bytes(&bytes).map_err(|_| "not a valid Ed25519 public key".to_owned())
}

/// Parses a signing key (its 32-byte seed) written like a public key.
pub fn parse_signing_key(text: &str) -> Result<SigningKey, String> {
    Ok(SigningKey::from_bytes(&decode_key(text)?))
}

fn decode_key(text: &str) -> Result<[u8; 32], String> {
    let text = text.trim();
    let bytes = if text.len() == 64 {
        hex::decode(text).map_err(|_| "not 64 hex digits".to_owned())?
    } else {
        B64.decode(text)
            .map_err(|_| "neither 64 hex digits nor base64url".to_owned())?
    };
    bytes.try_into().map_err(|_| "a key is 32 bytes".to_owned())
}

/// A new random signing key.
pub fn generate_signing_key() -> Result<SigningKey, getrandom::Error> {
    let mut seed = [0u8; 32];
    getrandom::fill(&mut seed)?;
    Ok(SigningKey::from_bytes(&seed))
}

#[cfg(test)]
mod tests;
