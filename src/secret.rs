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

/// The router's records key: what makes the hashes of client addresses and
/// passcodes in the store useless without it.
///
/// Addresses (bans, participant rows) and passcodes are short enough to be
/// found from an unkeyed hash by trying every IPv4 address (about an hour
/// on one core) or every passcode. So every such hash the store keeps is
/// `HMAC-SHA256(records key, label || inner)`, where `inner` is what the
/// store held before this key existed (a salted SHA-256), and the key lives
/// only in a file beside the router's signing key — or is derived from that
/// signing key — never in the store: a copy of the database alone reveals
/// neither addresses nor passcodes.
///
/// The key is rotatable: the router hashes with the current key and still
/// accepts hashes made with the keys listed as previous, so bans and
/// passcodes made before a rotation hold until the previous key is
/// dropped from the config.
#[derive(Clone)]
pub struct RecordsKey {
    key: [u8; 32],
}

impl std::fmt::Debug for RecordsKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "RecordsKey({})", hex::encode(self.id()))
    }
}

type HmacSha256 = hmac::Hmac<Sha256>;

impl RecordsKey {
    pub fn from_bytes(key: [u8; 32]) -> Self {
        RecordsKey { key }
    }

    /// The key itself, to write it to a file (`keygen --records-key`).
    pub fn to_bytes(&self) -> [u8; 32] {
        self.key
    }

    /// The key the router derives from its ticket-signing key's seed when
    /// config names no records key file (HKDF-SHA256, its own label, so the
    /// signing key cannot be recovered from it and tickets nothing from it).
    pub fn derived_from_signing_key(seed: &[u8; 32]) -> Self {
        let hk = hkdf::Hkdf::<Sha256>::new(Some(b"residency-relay records key"), seed);
        let mut key = [0u8; 32];
        hk.expand(b"v1", &mut key)
            .expect("32 bytes is a valid HKDF-SHA256 output length");
        RecordsKey { key }
    }

    /// Reads a key file: 64 hex digits (as `keygen --records-key` writes).
    pub fn read(path: &std::path::Path) -> Result<Self, String> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| format!("cannot read {}: {e}", path.display()))?;
        let text = text.trim();
        let bytes = hex::decode(text)
            .ok()
            .and_then(|b| <[u8; 32]>::try_from(b).ok())
            .ok_or_else(|| {
                format!(
                    "{}: a records key is 64 hex digits (residency-relay keygen --records-key writes one)",
                    path.display()
                )
            })?;
        Ok(RecordsKey { key: bytes })
    }

    fn mac(&self, label: &[u8], inner: &[u8]) -> [u8; 32] {
        use hmac::{KeyInit, Mac};
        let mut mac = <HmacSha256 as KeyInit>::new_from_slice(&self.key)
            .expect("HMAC takes a key of any length");
        mac.update(label);
        mac.update(inner);
        mac.finalize().into_bytes().into()
    }

    /// Names the key without revealing it: the store keeps the id of the
    /// key its hashes were made with, so a router given another key refuses
    /// to start instead of silently failing every ban and passcode.
    pub fn id(&self) -> [u8; 8] {
        let full = self.mac(b"residency-relay records key id", b"");
        let mut id = [0u8; 8];
        id.copy_from_slice(&full[..8]);
        id
    }

    /// The stored form of an address hash (`inner`: the store's salted
    /// SHA-256 of the address).
    pub fn address(&self, inner: &[u8; 32]) -> [u8; 32] {
        self.mac(b"address\0", inner)
    }

    /// The stored form of a passcode hash (`inner`: its salted SHA-256).
    pub fn passcode(&self, inner: &[u8; 32]) -> [u8; 32] {
        self.mac(b"passcode\0", inner)
    }
}

/// The records key in force and the previous ones still accepted.
#[derive(Debug, Clone)]
pub struct RecordsKeys {
    pub current: RecordsKey,
    pub previous: Vec<RecordsKey>,
}

impl RecordsKeys {
    pub fn single(current: RecordsKey) -> Self {
        RecordsKeys {
            current,
            previous: Vec::new(),
        }
    }

    /// The current key, then the previous ones.
    pub fn all(&self) -> impl Iterator<Item = &RecordsKey> {
        std::iter::once(&self.current).chain(self.previous.iter())
    }
}
