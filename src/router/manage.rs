//! Manage tokens: what a host's call page presents to moderate its
//! conference (lock, remove, admit, end, the residency report).
//!
//! A host joins with an invitation whose role is host; the tenant's host
//! token never reaches the page. The join answer carries a token signed by
//! the router's key, naming the conference, the participant and an expiry:
//! `mg1.<conference>.<participant>.<expires>.<signature>` (signature:
//! Ed25519 over `residency-relay manage v1|<conference>|<participant>|<expires>`,
//! base64url). It is accepted while it is unexpired and the participant is
//! still a host of the conference who was not removed; nothing is stored.

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use ed25519_dalek::{Signature, Signer, SigningKey, Verifier};

/// How long a manage token lasts: a long meeting, not a lasting credential.
pub const LIFETIME_SECS: u64 = 12 * 3600;

const PREFIX: &str = "mg1.";

fn message(conference: &str, participant: &str, expires: u64) -> String {
    format!("residency-relay manage v1|{conference}|{participant}|{expires}")
}

/// A token for `participant`, a host of `conference`, valid until `expires`.
pub fn issue(key: &SigningKey, conference: &str, participant: &str, expires: u64) -> String {
    let signature = key.sign(message(conference, participant, expires).as_bytes());
    format!(
        "{PREFIX}{conference}.{participant}.{expires}.{}",
        URL_SAFE_NO_PAD.encode(signature.to_bytes())
    )
}

/// The participant a token names, if `key` signed it for `conference` and
/// it has not expired at `now`.
pub fn check(key: &SigningKey, token: &str, conference: &str, now: u64) -> Option<String> {
    let rest = token.strip_prefix(PREFIX)?;
    let mut parts = rest.split('.');
    let (c, p, e, s) = (parts.next()?, parts.next()?, parts.next()?, parts.next()?);
    if parts.next().is_some() || c != conference {
        return None;
    }
    let expires: u64 = e.parse().ok()?;
    if expires <= now {
        return None;
    }
    let bytes: [u8; 64] = URL_SAFE_NO_PAD.decode(s).ok()?.try_into().ok()?;
    key.verifying_key()
        .verify(
            message(c, p, expires).as_bytes(),
            &Signature::from_bytes(&bytes),
        )
        .ok()?;
    Some(p.to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_an_unexpired_token_for_this_conference_signed_by_the_key_passes() {
        let key = SigningKey::from_bytes(&[7; 32]);
        let other = SigningKey::from_bytes(&[8; 32]);
        let t = issue(&key, "eu-abc", "p-host", 1000);
        assert_eq!(check(&key, &t, "eu-abc", 999).as_deref(), Some("p-host"));
        assert_eq!(check(&key, &t, "eu-abc", 1000), None, "expired");
        assert_eq!(check(&key, &t, "eu-xyz", 999), None, "another conference");
        assert_eq!(check(&other, &t, "eu-abc", 999), None, "another key");
        let forged = t.replace("p-host", "p-guest");
        assert_eq!(check(&key, &forged, "eu-abc", 999), None, "claims changed");
        let later = t.replace(".1000.", ".9000.");
        assert_eq!(check(&key, &later, "eu-abc", 999), None, "expiry changed");
        for junk in ["", "mg1.", "mg1.eu-abc.p.1.x", "mg1.a.b.c.d.e", "Bearer x"] {
            assert_eq!(check(&key, junk, "eu-abc", 0), None, "{junk:?}");
        }
    }
}
