//! Identifiers and secrets the router makes, and how it stores them.
//!
//! Conference ids are `<jurisdiction>-<26 base32 characters>` (128 random
//! bits; [`crate::wire::conference`] parses them), so any router or relay
//! can tell a conference's jurisdiction from its id and nobody can guess one. Tokens carry 256 random bits and are stored only
//! as SHA-256; passcodes are short enough to type, so they are salted,
//! keyed with the records key ([`RecordsKey`]) and guarded by the failure
//! limits. Client addresses are kept only as a hash keyed the same way.

use std::net::IpAddr;

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64;
use data_encoding::BASE32_NOPAD;
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

use crate::secret::{RecordsKey, RecordsKeys};
use crate::store::PasscodeHash;

/// The random source failed (the operating system's; never expected).
#[derive(Debug, thiserror::Error)]
#[error("no randomness available: {0}")]
pub struct RandomError(String);

impl RandomError {
    pub fn from_display(e: &impl std::fmt::Display) -> Self {
        RandomError(e.to_string())
    }
}

fn random<const N: usize>() -> Result<[u8; N], RandomError> {
    let mut bytes = [0u8; N];
    getrandom::fill(&mut bytes).map_err(|e| RandomError(e.to_string()))?;
    Ok(bytes)
}

fn base32(bytes: &[u8]) -> String {
    BASE32_NOPAD.encode(bytes).to_ascii_lowercase()
}

/// A new conference id in `jurisdiction`.
pub fn conference_id(jurisdiction: &str) -> Result<String, RandomError> {
    Ok(format!("{jurisdiction}-{}", base32(&random::<16>()?)))
}

/// A new participant id.
pub fn participant_id() -> Result<String, RandomError> {
    Ok(format!("p-{}", base32(&random::<10>()?)))
}

/// A new bearer token with a readable prefix (`hst`, `inv`, `wait`).
pub fn token(prefix: &str) -> Result<String, RandomError> {
    Ok(format!("{prefix}_{}", B64.encode(random::<32>()?)))
}

/// A new passcode: 10 characters from a-z and 2-7 (50 bits).
pub fn passcode() -> Result<String, RandomError> {
    let mut code = base32(&random::<7>()?);
    code.truncate(10);
    Ok(code)
}

pub use crate::secret::{secret_matches, sha256};

/// Salts and hashes a passcode for storage, keyed with the records key
/// in force.
pub fn hash_passcode(key: &RecordsKey, passcode: &str) -> Result<PasscodeHash, RandomError> {
    let salt = random::<16>()?;
    Ok(PasscodeHash {
        salt,
        sha256: key.passcode(&salted(&salt, passcode)),
    })
}

fn salted(salt: &[u8; 16], passcode: &str) -> [u8; 32] {
    let mut h = Sha256::new();
    h.update(salt);
    h.update(passcode.trim().as_bytes());
    h.finalize().into()
}

/// Whether `passcode` matches under the current or a previous records key,
/// each comparison in constant time.
pub fn passcode_matches(keys: &RecordsKeys, stored: &PasscodeHash, passcode: &str) -> bool {
    let inner = salted(&stored.salt, passcode);
    keys.all().fold(false, |hit, key| {
        hit | bool::from(key.passcode(&inner).ct_eq(&stored.sha256))
    })
}

/// The hash of a client address kept in bans and participant rows instead
/// of the address: the store's salted SHA-256 (`salt` is the store's
/// [`crate::store::Store::address_key`]), keyed with `key`, the records key
/// that is never in the store. An IPv6 address counts by its /64, as the
/// failure limits and connection caps do: one host or site holds a whole
/// /64, so a ban on one of its addresses covers them all.
pub fn address_hash(key: &RecordsKey, salt: &[u8; 32], ip: IpAddr) -> [u8; 32] {
    let mut h = Sha256::new();
    h.update(salt);
    match crate::http_server::address_group(ip) {
        IpAddr::V4(v4) => h.update(v4.octets()),
        // The /64 alone: its lower half is zero.
        IpAddr::V6(v6) => h.update(&v6.octets()[..8]),
    }
    key.address(&h.finalize().into())
}

/// How bans recorded before IPv6 bans covered the /64 hashed an IPv6
/// address (all 128 bits); `None` for IPv4. Checked beside
/// [`address_hash`] so those bans still hold.
pub fn full_v6_address_hash(key: &RecordsKey, salt: &[u8; 32], ip: IpAddr) -> Option<[u8; 32]> {
    let IpAddr::V6(v6) = ip else { return None };
    if v6.to_ipv4_mapped().is_some() {
        return None;
    }
    let mut h = Sha256::new();
    h.update(salt);
    h.update(v6.octets());
    Some(key.address(&h.finalize().into()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wire::conference::jurisdiction_of;

    #[test]
    fn conference_ids_carry_the_jurisdiction_and_128_bits() {
        let a = conference_id("eu").unwrap();
        let b = conference_id("eu").unwrap();
        assert_ne!(a, b);
        assert_eq!(a.len(), 3 + 26);
        assert_eq!(jurisdiction_of(&a), Some("eu"));
        assert_eq!(jurisdiction_of("eu-short"), None);
        assert_eq!(jurisdiction_of("EU-aaaaaaaaaaaaaaaaaaaaaaaaaa"), None);
        assert_eq!(jurisdiction_of("us-aaaaaaaaaaaaaaaaaaaaaaaaaa"), Some("us"));
        assert_eq!(jurisdiction_of("nodash"), None);
    }

    #[test]
    fn passcodes_match_only_themselves() {
        let code = passcode().unwrap();
        assert_eq!(code.len(), 10);
        let key = RecordsKey::from_bytes([7; 32]);
        let keys = RecordsKeys::single(key.clone());
        let stored = hash_passcode(&key, &code).unwrap();
        assert!(passcode_matches(&keys, &stored, &code));
        assert!(!passcode_matches(&keys, &stored, "0000000000"));
        assert_ne!(hash_passcode(&key, &code).unwrap().salt, stored.salt);
        // Another key alone does not match; listed as previous, the old
        // one still does.
        let other = RecordsKey::from_bytes([8; 32]);
        assert!(!passcode_matches(
            &RecordsKeys::single(other.clone()),
            &stored,
            &code
        ));
        let rotated = RecordsKeys {
            current: other,
            previous: vec![key],
        };
        assert!(passcode_matches(&rotated, &stored, &code));
    }

    #[test]
    fn mapped_addresses_hash_like_ipv4() {
        let key = RecordsKey::from_bytes([9; 32]);
        let salt = [1; 32];
        let h = |ip: IpAddr| address_hash(&key, &salt, ip);
        let v4: IpAddr = "192.0.2.1".parse().unwrap();
        let mapped: IpAddr = "::ffff:192.0.2.1".parse().unwrap();
        assert_eq!(h(v4), h(mapped));
        assert_ne!(h(v4), address_hash(&key, &[2; 32], v4));
        assert_ne!(
            h(v4),
            address_hash(&RecordsKey::from_bytes([10; 32]), &salt, v4)
        );
        let a: IpAddr = "2001:db8:1:2::1".parse().unwrap();
        let b: IpAddr = "2001:db8:1:2::2".parse().unwrap();
        let c: IpAddr = "2001:db8:1:3::1".parse().unwrap();
        assert_eq!(h(a), h(b));
        assert_ne!(h(a), h(c));
        assert_ne!(
            full_v6_address_hash(&key, &salt, a),
            full_v6_address_hash(&key, &salt, b)
        );
        assert_eq!(full_v6_address_hash(&key, &salt, v4), None);
    }

    #[test]
    fn the_keyed_hash_is_the_stores_hash_under_the_key() {
        // What a store written before the records key held is brought to
        // today's form by applying the key to it: the migration relies on it.
        let key = RecordsKey::from_bytes([3; 32]);
        let salt = [4; 32];
        let ip: IpAddr = "198.51.100.7".parse().unwrap();
        let mut h = Sha256::new();
        h.update(salt);
        h.update([198, 51, 100, 7]);
        let unkeyed: [u8; 32] = h.finalize().into();
        assert_eq!(address_hash(&key, &salt, ip), key.address(&unkeyed));
        let stored = PasscodeHash {
            salt: [5; 16],
            sha256: key.passcode(&salted(&[5; 16], "abcdefghij")),
        };
        assert!(passcode_matches(
            &RecordsKeys::single(key),
            &stored,
            "abcdefghij"
        ));
    }
}
