//! Secrets kept only as their SHA-256 (API keys, tokens, relay
//! credentials), shared by the router and the relay.

use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

/// SHA-256 of `text`, as secrets are stored.
pub fn sha256(text: &str) -> [u8; 32] {
    Sha256::digest(text.as_bytes()).into()
}

/// Whether `secret` hashes to `stored`, in constant time.
pub fn secret_matches(stored: &[u8; 32], secret: &str) -> bool {
    sha256(secret).ct_eq(stored).into()
}
