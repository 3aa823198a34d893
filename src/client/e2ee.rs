//! End-to-end encryption of media (docs/e2ee.md): SFrame (RFC 9605) per
//! datagram under keys derived from the conference secret or a later
//! epoch's, and the key messages participants exchange through the relay.
//!
//! Sans-IO like the forwarding core: [`Group`] takes messages, datagrams and
//! the time, and returns what to send. The relay never sees anything here
//! but ciphertext and opaque `e2ee` messages.
//!
//! Crates: `sframe` does the RFC 9605 header, key derivation and AEAD (on
//! ring, the project's provider); `hpke` seals epoch secrets (RFC 9180
//! base mode); `hkdf`/`hmac` the project's own derivations.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64;
use hmac::{KeyInit, Mac};
use hpke::{Deserializable, Kem as _, Serializable};
use sframe::CipherSuite;
use sframe::frame::{EncryptedFrameView, MediaFrameView, MonotonicCounter};
use sframe::key::{DecryptionKey, EncryptionKey};
use sha2::Sha256;

use crate::wire::control::ParticipantId;
use crate::wire::datagram::HEADER_LEN;

/// AES_128_GCM_SHA256_128.
pub const SUITE: CipherSuite = CipherSuite::AesGcm128Sha256;

/// Bytes of a conference or epoch secret.
pub const SECRET_LEN: usize = 32;

/// Epoch bits in a key id (RFC 9605 §5.2's E).
pub const EPOCH_BITS: u32 = 4;

/// Sender-index bits in a key id (S): a random number per session, wide
/// enough that two sessions drawing the same (and so sharing a key and its
/// counters) is out of reach: about n²/2⁴⁹ for n sessions of a conference.
pub const INDEX_BITS: u32 = 48;

/// Tracks one participant may encrypt (the key id's context field).
pub const MAX_CONTEXTS: u8 = 8;

/// The most an encrypted datagram grows: config byte, a key id of up to 7
/// bytes, a counter of up to 8, and the 16-byte tag. Senders cut their
/// fragments this much shorter.
pub const MAX_OVERHEAD: usize = 1 + 7 + 8 + 16;

/// How long the previous epoch's keys still decrypt after a change.
pub const KEEP_PREVIOUS: Duration = Duration::from_secs(10);

/// Decryption keys kept per epoch (one per sender track seen).
const MAX_KEYS: usize = 512;

/// Highest epoch number taken or made: far beyond any call's rotations,
/// and far enough from `u32::MAX` that no message can make the next
/// epoch impossible.
pub const MAX_EPOCH: u32 = (1 << 31) - 1;

/// Least time between two epoch messages a host seals to one member in
/// answer to its announcements (a member flipping keys cannot make the
/// host flood the relay).
pub const RESEAL_INTERVAL: Duration = Duration::from_secs(1);

/// Members a group keeps keys for.
const MAX_MEMBERS: usize = 4096;

const AUTH_LABEL: &[u8] = b"residency-relay e2ee 1 auth";
const SAFETY_LABEL: &[u8] = b"residency-relay e2ee 1 safety code";
const EPOCH_LABEL: &[u8] = b"residency-relay e2ee 1 epoch";
const BASE_KEY_LABEL: &[u8] = b"SFrame 1.0 Base Key";

const ANNOUNCE: u8 = 0x01;
const EPOCH: u8 = 0x02;
const STATUS: u8 = 0x03;

type Kem = hpke::kem::X25519HkdfSha256;
type Kdf = hpke::kdf::HkdfSha256;
type Aead = hpke::aead::AesGcm128;
type HmacSha256 = hmac::Hmac<Sha256>;

/// A conference or epoch secret. Its `Debug` shows nothing of it.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret([u8; SECRET_LEN]);

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Secret(…)")
    }
}

/// Why a secret could not be read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SecretError {
    #[error(
        "an end-to-end encryption secret is 43 base64url characters (32 bytes), alone or as k=… in a link's fragment"
    )]
    Malformed,
    #[error("no random numbers: {0}")]
    Random(String),
}

impl Secret {
    /// 32 random bytes.
    pub fn random() -> Result<Secret, SecretError> {
        let mut b = [0u8; SECRET_LEN];
        getrandom::fill(&mut b).map_err(|e| SecretError::Random(e.to_string()))?;
        Ok(Secret(b))
    }

    pub fn from_bytes(b: [u8; SECRET_LEN]) -> Secret {
        Secret(b)
    }

    pub fn as_bytes(&self) -> &[u8; SECRET_LEN] {
        &self.0
    }

    /// The secret as a link carries it (`k=` in the fragment).
    pub fn to_base64(&self) -> String {
        B64.encode(self.0)
    }

    /// A secret alone (43 base64url characters), or a link whose fragment
    /// has `k=…`.
    pub fn parse(text: &str) -> Result<Secret, SecretError> {
        let text = text.trim();
        let encoded = match text.split_once('#') {
            Some((_, fragment)) => fragment
                .split('&')
                .find_map(|p| p.strip_prefix("k="))
                .ok_or(SecretError::Malformed)?,
            None => text,
        };
        let bytes = B64.decode(encoded).map_err(|_| SecretError::Malformed)?;
        <[u8; SECRET_LEN]>::try_from(bytes)
            .map(Secret)
            .map_err(|_| SecretError::Malformed)
    }
}

/// HKDF-Expand with `prk` (a uniformly random 32-byte secret) as the
/// pseudorandom key.
fn expand<const N: usize>(prk: &[u8; SECRET_LEN], info: &[u8]) -> [u8; N] {
    let hk = hkdf::Hkdf::<Sha256>::from_prk(prk).expect("a 32-byte PRK is long enough");
    let mut out = [0u8; N];
    hk.expand(info, &mut out)
        .expect("at most 255 hash lengths are requested");
    out
}

/// The SFrame base key of an epoch.
pub fn base_key(epoch_secret: &Secret) -> [u8; 16] {
    expand(&epoch_secret.0, BASE_KEY_LABEL)
}

/// The key that authenticates key messages: from the conference secret.
pub fn auth_key(conference_secret: &Secret) -> [u8; 32] {
    expand(&conference_secret.0, AUTH_LABEL)
}

/// The 12-digit safety code of an epoch secret, as `1234 5678 9012`.
pub fn safety_code(epoch_secret: &Secret) -> String {
    let v: [u8; 8] = expand(&epoch_secret.0, SAFETY_LABEL);
    let n = v[..5].iter().fold(0u64, |n, b| n << 8 | u64::from(*b)) % 1_000_000_000_000;
    let digits = format!("{n:012}");
    format!("{} {} {}", &digits[..4], &digits[4..8], &digits[8..])
}

/// The key id of track `context` of sender `index` (48 bits) in `epoch`.
pub fn key_id(context: u8, index: u64, epoch: u32) -> u64 {
    u64::from(context) << (INDEX_BITS + EPOCH_BITS)
        | (index & ((1 << INDEX_BITS) - 1)) << EPOCH_BITS
        | u64::from(epoch) & ((1 << EPOCH_BITS) - 1)
}

/// HMAC-SHA256 under `key` over `parts`, concatenated.
fn hmac(key: &[u8; 32], parts: &[&[u8]]) -> HmacSha256 {
    let mut m = HmacSha256::new_from_slice(key).expect("HMAC takes any key length");
    for p in parts {
        m.update(p);
    }
    m
}

fn mac(key: &[u8; 32], parts: &[&[u8]]) -> [u8; 32] {
    hmac(key, parts).finalize().into_bytes().into()
}

/// Whether `tag` is the mac of `parts` (compared in constant time).
fn mac_ok(key: &[u8; 32], parts: &[&[u8]], tag: &[u8]) -> bool {
    hmac(key, parts).verify_slice(tag).is_ok()
}

fn epoch_info(epoch: u32, recipient: &ParticipantId) -> Vec<u8> {
    [EPOCH_LABEL, &epoch.to_be_bytes(), recipient.0.as_bytes()].concat()
}

/// An `e2ee` control message to send: `data` for `to`, or for everyone.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Outgoing {
    pub to: Option<ParticipantId>,
    pub data: String,
}

/// What a received key message did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event {
    /// A participant's public key, newly learnt.
    Announced(ParticipantId),
    /// The keys changed to this epoch (its secret came from `from`).
    EpochChanged { epoch: u32, from: ParticipantId },
    /// A participant told whether it decrypts everything it renders.
    Status {
        from: ParticipantId,
        epoch: u32,
        decrypting: bool,
    },
    /// Nothing new (a repeat, or an older epoch).
    Nothing,
    /// It did not verify or parse: ignored.
    Refused,
}

struct EpochKeys {
    number: u32,
    secret: Secret,
    base_key: [u8; 16],
    /// Who sent it (for the tie between two hosts); `None`: the link's.
    from: Option<ParticipantId>,
    /// Keys for key ids that authenticated a datagram.
    keys: HashMap<u64, DecryptionKey>,
}

impl EpochKeys {
    fn new(number: u32, secret: Secret, from: Option<ParticipantId>) -> Self {
        EpochKeys {
            number,
            base_key: base_key(&secret),
            secret,
            from,
            keys: HashMap::new(),
        }
    }
}

struct SendState {
    epoch: u32,
    key: EncryptionKey,
    counter: MonotonicCounter,
}

/// Counters of one participant's end-to-end encryption.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Stats {
    pub encrypted: u64,
    pub decrypted: u64,
    pub decrypt_failures: u64,
    pub messages_refused: u64,
}

/// Why a datagram could not be encrypted.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum EncryptError {
    #[error("a datagram is a 9-byte header and a payload")]
    Short,
    #[error("track context {0} is out of range (0..{MAX_CONTEXTS})")]
    Context(u8),
    #[error("SFrame: {0}")]
    Sframe(String),
}

/// One participant's end-to-end encryption state in one conference.
pub struct Group {
    me: ParticipantId,
    auth: [u8; 32],
    index: u64,
    secret_key: <Kem as hpke::Kem>::PrivateKey,
    public_key: [u8; 32],
    current: EpochKeys,
    previous: Option<(EpochKeys, Instant)>,
    /// Announced, verified public keys of the others.
    members: HashMap<ParticipantId, [u8; 32]>,
    /// When the host last sealed an epoch to each member.
    sealed: HashMap<ParticipantId, Instant>,
    host: bool,
    senders: HashMap<u8, SendState>,
    pub stats: Stats,
}

impl std::fmt::Debug for Group {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Group")
            .field("me", &self.me)
            .field("epoch", &self.current.number)
            .field("members", &self.members.len())
            .field("host", &self.host)
            .finish_non_exhaustive()
    }
}

impl Group {
    /// The state of participant `me` (a host makes new epochs) holding the
    /// conference secret: a fresh X25519 key pair and sender index.
    pub fn new(conference_secret: &Secret, me: ParticipantId, host: bool) -> Self {
        let (secret_key, public_key) = Kem::gen_keypair();
        let mut index = [0u8; 8];
        getrandom::fill(&mut index[2..]).expect("the system's random number generator works");
        Group {
            me,
            auth: auth_key(conference_secret),
            index: u64::from_be_bytes(index),
            secret_key,
            public_key: public_key.to_bytes().into(),
            current: EpochKeys::new(0, conference_secret.clone(), None),
            previous: None,
            members: HashMap::new(),
            sealed: HashMap::new(),
            host,
            senders: HashMap::new(),
            stats: Stats::default(),
        }
    }

    pub fn epoch(&self) -> u32 {
        self.current.number
    }

    pub fn safety_code(&self) -> String {
        safety_code(&self.current.secret)
    }

    /// The current epoch's secret (tests check who holds which).
    pub fn epoch_secret(&self) -> &Secret {
        &self.current.secret
    }

    /// The key id our track `context` sends under in the current epoch.
    pub fn sender_key_id(&self, context: u8) -> u64 {
        key_id(context, self.index, self.current.number)
    }

    /// Participants whose public key this one knows.
    pub fn members(&self) -> impl Iterator<Item = &ParticipantId> {
        self.members.keys()
    }

    /// Our public key, announced to everyone (send on joining).
    pub fn announce(&self) -> Outgoing {
        Outgoing {
            to: None,
            data: B64.encode(self.announce_bytes()),
        }
    }

    fn announce_bytes(&self) -> Vec<u8> {
        let tag = mac(
            &self.auth,
            &[&[ANNOUNCE], &self.public_key, self.me.0.as_bytes()],
        );
        [&[ANNOUNCE][..], &self.public_key, &tag].concat()
    }

    /// Whether we decrypt everything we render, for everyone.
    pub fn status(&self, decrypting: bool) -> Outgoing {
        let epoch = self.current.number.to_be_bytes();
        let state = [u8::from(!decrypting)];
        let tag = mac(
            &self.auth,
            &[&[STATUS], &epoch, &state, self.me.0.as_bytes()],
        );
        Outgoing {
            to: None,
            data: B64.encode([&[STATUS][..], &epoch, &state, &tag].concat()),
        }
    }

    /// A key message from `from` (a host, as the relay said: `host`), as
    /// the relay forwarded it, arriving at `now`. Returns what it did and
    /// the messages to send in answer.
    pub fn receive(
        &mut self,
        from: &ParticipantId,
        host: bool,
        data: &str,
        now: Instant,
    ) -> (Event, Vec<Outgoing>) {
        let refused = |g: &mut Group| {
            g.stats.messages_refused += 1;
            (Event::Refused, Vec::new())
        };
        let Ok(bytes) = B64.decode(data) else {
            return refused(self);
        };
        if *from == self.me {
            return refused(self);
        }
        match bytes.first() {
            Some(&ANNOUNCE) if bytes.len() == 65 => self
                .announced(from, host, &bytes, now)
                .unwrap_or_else(|| refused(self)),
            Some(&EPOCH) if bytes.len() == 1 + 4 + 32 + 48 + 32 => self
                .epoch_sealed(from, host, &bytes, now)
                .unwrap_or_else(|| refused(self)),
            Some(&STATUS) if bytes.len() == 1 + 4 + 1 + 32 => {
                let (epoch, state, tag) = (&bytes[1..5], &bytes[5..6], &bytes[6..]);
                if state[0] > 1
                    || !mac_ok(
                        &self.auth,
                        &[&[STATUS], epoch, state, from.0.as_bytes()],
                        tag,
                    )
                {
                    return refused(self);
                }
                (
                    Event::Status {
                        from: from.clone(),
                        epoch: u32::from_be_bytes(epoch.try_into().expect("4 bytes")),
                        decrypting: state[0] == 0,
                    },
                    Vec::new(),
                )
            }
            _ => refused(self),
        }
    }

    /// An `announce` of `from`'s public key; `None` if refused.
    fn announced(
        &mut self,
        from: &ParticipantId,
        host: bool,
        bytes: &[u8],
        now: Instant,
    ) -> Option<(Event, Vec<Outgoing>)> {
        let (key, tag) = (&bytes[1..33], &bytes[33..]);
        if !mac_ok(&self.auth, &[&[ANNOUNCE], key, from.0.as_bytes()], tag) {
            return None;
        }
        let key: [u8; 32] = key.try_into().expect("32 bytes");
        if <Kem as hpke::Kem>::PublicKey::from_bytes(&key).is_err() {
            return None;
        }
        let first = !self.members.contains_key(from);
        if first && self.members.len() >= MAX_MEMBERS {
            return None;
        }
        if self.members.insert(from.clone(), key) == Some(key) {
            return Some((Event::Nothing, Vec::new()));
        }
        let mut out = Vec::new();
        // Only hosts need others' keys: a host that came after us
        // learns ours (once per host, so nobody can make us flood).
        if host && first {
            out.push(Outgoing {
                to: Some(from.clone()),
                data: B64.encode(self.announce_bytes()),
            });
        }
        let recently = self
            .sealed
            .get(from)
            .is_some_and(|at| now.saturating_duration_since(*at) < RESEAL_INTERVAL);
        if self.host && self.current.number > 0 && !recently {
            out.extend(self.seal_to(from, now));
        }
        Some((Event::Announced(from.clone()), out))
    }

    /// An epoch's secret a host sealed to us; `None` if refused.
    fn epoch_sealed(
        &mut self,
        from: &ParticipantId,
        host: bool,
        bytes: &[u8],
        now: Instant,
    ) -> Option<(Event, Vec<Outgoing>)> {
        let epoch = u32::from_be_bytes(bytes[1..5].try_into().expect("4 bytes"));
        // Only hosts hand out epochs, and never one past the end.
        if !host || epoch > MAX_EPOCH {
            return None;
        }
        let (enc, ct, tag) = (&bytes[5..37], &bytes[37..85], &bytes[85..]);
        if !mac_ok(
            &self.auth,
            &[&[EPOCH], &bytes[1..5], enc, ct, self.me.0.as_bytes()],
            tag,
        ) {
            return None;
        }
        let Ok(enc) = <Kem as hpke::Kem>::EncappedKey::from_bytes(enc) else {
            return None;
        };
        let info = epoch_info(epoch, &self.me);
        let Ok(secret) = hpke::single_shot_open::<Aead, Kdf, Kem>(
            &hpke::OpModeR::Base,
            &self.secret_key,
            &enc,
            &info,
            ct,
            EPOCH_LABEL,
        ) else {
            return None;
        };
        let Ok(secret) = <[u8; 32]>::try_from(secret) else {
            return None;
        };
        let secret = Secret(secret);
        let newer = epoch > self.current.number
            || (epoch == self.current.number
                && epoch > 0
                && secret != self.current.secret
                && self.current.from.as_ref().is_none_or(|f| from.0 < f.0));
        if !newer {
            return Some((Event::Nothing, Vec::new()));
        }
        self.switch(epoch, secret, Some(from.clone()), now);
        Some((
            Event::EpochChanged {
                epoch,
                from: from.clone(),
            },
            Vec::new(),
        ))
    }

    fn switch(&mut self, number: u32, secret: Secret, from: Option<ParticipantId>, now: Instant) {
        let old = std::mem::replace(&mut self.current, EpochKeys::new(number, secret, from));
        self.previous = Some((old, now + KEEP_PREVIOUS));
        self.sealed.clear();
        // Every track sends under the new secret from its next datagram,
        // counters from 0 (also when a tie replaced a same-numbered epoch).
        self.senders.clear();
    }

    /// The current epoch's secret sealed to `to` (whose key we know).
    fn seal_to(&mut self, to: &ParticipantId, now: Instant) -> Option<Outgoing> {
        let key = self.members.get(to)?;
        let pk = <Kem as hpke::Kem>::PublicKey::from_bytes(key).ok()?;
        let epoch = self.current.number;
        let info = epoch_info(epoch, to);
        let (enc, ct) = hpke::single_shot_seal::<Aead, Kdf, Kem>(
            &hpke::OpModeS::Base,
            &pk,
            &info,
            &self.current.secret.0,
            EPOCH_LABEL,
        )
        .ok()?;
        let enc = enc.to_bytes();
        let number = epoch.to_be_bytes();
        let tag = mac(&self.auth, &[&[EPOCH], &number, &enc, &ct, to.0.as_bytes()]);
        self.sealed.insert(to.clone(), now);
        Some(Outgoing {
            to: Some(to.clone()),
            data: B64.encode([&[EPOCH][..], &number, &enc, &ct, &tag].concat()),
        })
    }

    /// `who` left (or was removed): it is forgotten, and a host makes the
    /// next epoch for the others (whether or not `who` had announced a
    /// key: it held the link's secret all the same).
    pub fn left(&mut self, who: &ParticipantId, now: Instant) -> Vec<Outgoing> {
        self.members.remove(who);
        self.sealed.remove(who);
        if self.host && *who != self.me {
            self.rotate(now)
        } else {
            Vec::new()
        }
    }

    /// Makes the next epoch (as host) and seals it to every member whose
    /// key we know; we send under it at once.
    pub fn rotate(&mut self, now: Instant) -> Vec<Outgoing> {
        let Ok(secret) = Secret::random() else {
            return Vec::new();
        };
        if self.current.number >= MAX_EPOCH {
            return Vec::new();
        }
        let next = self.current.number + 1;
        let me = self.me.clone();
        self.switch(next, secret, Some(me), now);
        let mut members: Vec<ParticipantId> = self.members.keys().cloned().collect();
        members.sort_by(|a, b| a.0.cmp(&b.0));
        members
            .iter()
            .filter_map(|m| self.seal_to(m, now))
            .collect()
    }

    /// Encrypts `datagram` (a wire header and a plaintext payload) as track
    /// `context` of ours: the same header, then the SFrame header, the
    /// ciphertext and the tag.
    pub fn encrypt(&mut self, context: u8, datagram: &[u8]) -> Result<Vec<u8>, EncryptError> {
        if datagram.len() < HEADER_LEN {
            return Err(EncryptError::Short);
        }
        if context >= MAX_CONTEXTS {
            return Err(EncryptError::Context(context));
        }
        let epoch = self.current.number;
        let stale = self.senders.get(&context).is_none_or(|s| s.epoch != epoch);
        if stale {
            let kid = key_id(context, self.index, epoch);
            let key = EncryptionKey::derive_from(SUITE, kid, self.current.base_key)
                .map_err(|e| EncryptError::Sframe(e.to_string()))?;
            self.senders.insert(
                context,
                SendState {
                    epoch,
                    key,
                    counter: MonotonicCounter::new(u64::MAX),
                },
            );
        }
        let s = self.senders.get_mut(&context).expect("inserted above");
        let (header, payload) = datagram.split_at(HEADER_LEN);
        let frame = MediaFrameView::try_with_meta_data(&mut s.counter, payload, header)
            .map_err(|e| EncryptError::Sframe(e.to_string()))?;
        let mut out = Vec::with_capacity(datagram.len() + MAX_OVERHEAD);
        frame
            .encrypt_into(&s.key, &mut out)
            .map_err(|e| EncryptError::Sframe(e.to_string()))?;
        self.stats.encrypted += 1;
        Ok(out)
    }

    /// The plaintext payload of an encrypted datagram, or `None` if it does
    /// not decrypt under the current or (for a while) the previous epoch.
    pub fn decrypt(&mut self, datagram: &[u8], now: Instant) -> Option<Vec<u8>> {
        if self
            .previous
            .as_ref()
            .is_some_and(|(_, until)| now >= *until)
        {
            self.previous = None;
        }
        let out = self.try_decrypt(datagram);
        if out.is_some() {
            self.stats.decrypted += 1;
        } else {
            self.stats.decrypt_failures += 1;
        }
        out
    }

    fn try_decrypt(&mut self, datagram: &[u8]) -> Option<Vec<u8>> {
        if datagram.len() < HEADER_LEN {
            return None;
        }
        let (header, rest) = datagram.split_at(HEADER_LEN);
        let frame = EncryptedFrameView::try_with_meta_data(rest, header).ok()?;
        let kid = frame.header().key_id();
        let lsb = (kid & ((1 << EPOCH_BITS) - 1)) as u32;
        let mask = (1u32 << EPOCH_BITS) - 1;
        // The epochs whose low bits the key id names: the current one and
        // the previous (both, after a tie between two hosts' secrets).
        let previous = self.previous.as_mut().map(|(p, _)| p);
        for epoch in std::iter::once(&mut self.current).chain(previous) {
            if epoch.number & mask != lsb {
                continue;
            }
            let mut out = Vec::with_capacity(datagram.len());
            if let Some(key) = epoch.keys.get(&kid) {
                if let Ok(plain) = frame.decrypt_into(key, &mut out) {
                    return Some(plain.payload().to_vec());
                }
                continue;
            }
            // A key id not seen yet: derive its key, keep it only if it works.
            let Ok(key) = DecryptionKey::derive_from(SUITE, kid, epoch.base_key) else {
                continue;
            };
            let Ok(plain) = frame.decrypt_into(&key, &mut out) else {
                continue;
            };
            let payload = plain.payload().to_vec();
            if epoch.keys.len() >= MAX_KEYS {
                epoch.keys.clear();
            }
            epoch.keys.insert(kid, key);
            return Some(payload);
        }
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pid(s: &str) -> ParticipantId {
        ParticipantId(s.into())
    }

    fn datagram(payload: &[u8]) -> Vec<u8> {
        let mut d = vec![0x41, 0, 0x10, 0, 1, 0, 0, 0, 7, 0x40];
        d.extend_from_slice(payload);
        d
    }

    /// Delivers `out` from `from` to the groups it is for; returns events.
    fn deliver(
        groups: &mut [(&ParticipantId, &mut Group)],
        from: &ParticipantId,
        out: Vec<Outgoing>,
    ) {
        let hosts: Vec<ParticipantId> = groups
            .iter()
            .filter(|(_, g)| g.host)
            .map(|(id, _)| (*id).clone())
            .collect();
        let mut queue: Vec<(ParticipantId, Outgoing)> =
            out.into_iter().map(|o| (from.clone(), o)).collect();
        while let Some((sender, o)) = queue.pop() {
            for (id, g) in groups.iter_mut() {
                if **id == sender || o.to.as_ref().is_some_and(|t| t != *id) {
                    continue;
                }
                let (_, replies) =
                    g.receive(&sender, hosts.contains(&sender), &o.data, Instant::now());
                queue.extend(replies.into_iter().map(|r| ((*id).clone(), r)));
            }
        }
    }

    #[test]
    fn secrets_parse_alone_or_from_a_link() {
        let s = Secret::random().unwrap();
        let text = s.to_base64();
        assert_eq!(text.len(), 43);
        assert_eq!(Secret::parse(&text).unwrap(), s);
        let link = format!("https://r.example/j/eu-x#p=123&k={text}");
        assert_eq!(Secret::parse(&link).unwrap(), s);
        assert!(Secret::parse("https://r.example/j/eu-x#p=123").is_err());
        assert!(Secret::parse(&text[1..]).is_err());
        assert!(format!("{s:?}").find(&text).is_none());
    }

    #[test]
    fn a_datagram_decrypts_with_the_same_secret_only_and_its_header_is_bound() {
        let s = Secret::random().unwrap();
        let mut a = Group::new(&s, pid("a"), true);
        let mut b = Group::new(&s, pid("b"), false);
        let mut stranger = Group::new(&Secret::random().unwrap(), pid("c"), false);
        let plain = datagram(b"hello, encrypted world");
        let sealed = a.encrypt(0, &plain).unwrap();
        assert_eq!(&sealed[..HEADER_LEN], &plain[..HEADER_LEN]);
        assert!(sealed.len() <= plain.len() + MAX_OVERHEAD);
        assert!(!sealed.windows(5).any(|w| w == b"hello"));
        let now = Instant::now();
        assert_eq!(
            b.decrypt(&sealed, now).as_deref(),
            Some(&b"hello, encrypted world"[..])
        );
        assert_eq!(stranger.decrypt(&sealed, now), None);
        // A relay that flips the keyframe flag, the track id or the layer
        // or audio level byte: refused.
        for i in [0usize, 3, 8, 9, HEADER_LEN + 2, sealed.len() - 1] {
            let mut t = sealed.clone();
            t[i] ^= 1;
            assert_eq!(b.decrypt(&t, now), None, "byte {i} flipped");
        }
        assert_eq!(b.stats.decrypted, 1);
        assert_eq!(b.decrypt(&[0; 4], now), None);
        assert_eq!(b.decrypt(&[], now), None);
    }

    #[test]
    fn a_rotation_locks_out_who_left() {
        let s = Secret::random().unwrap();
        let (ha, hb, hc) = (pid("host"), pid("bob"), pid("carol"));
        let mut host = Group::new(&s, ha.clone(), true);
        let mut bob = Group::new(&s, hb.clone(), false);
        let mut carol = Group::new(&s, hc.clone(), false);
        let hellos = [
            (ha.clone(), host.announce()),
            (hb.clone(), bob.announce()),
            (hc.clone(), carol.announce()),
        ];
        for (id, out) in hellos {
            deliver(
                &mut [(&ha, &mut host), (&hb, &mut bob), (&hc, &mut carol)],
                &id,
                vec![out],
            );
        }
        assert_eq!(host.members().count(), 2);
        assert_eq!(bob.members().count(), 2);
        let code = host.safety_code();
        assert_eq!(bob.safety_code(), code);

        // Carol is removed; everything sent to anyone from now on is kept.
        let now = Instant::now();
        let out = host.left(&hc, now);
        assert_eq!(out.len(), 1, "sealed to bob only");
        let sealed_to_bob = out[0].data.clone();
        deliver(&mut [(&ha, &mut host), (&hb, &mut bob)], &ha, out);
        assert_eq!(bob.epoch(), 1);
        assert_eq!(bob.safety_code(), host.safety_code());
        assert_ne!(bob.safety_code(), code);
        // Carol gets the message meant for bob: its mac names bob.
        assert_eq!(
            carol.receive(&ha, true, &sealed_to_bob, now).0,
            Event::Refused
        );

        let media = bob.encrypt(0, &datagram(b"after carol left")).unwrap();
        assert!(host.decrypt(&media, now).is_some());
        assert_eq!(carol.decrypt(&media, now), None);
        // Nor can carol's old epoch open it later.
        assert_eq!(carol.epoch(), 0);
    }

    #[test]
    fn forged_and_garbage_key_messages_are_refused() {
        let s = Secret::random().unwrap();
        let mut a = Group::new(&s, pid("a"), false);
        let outsider = Group::new(&Secret::random().unwrap(), pid("x"), false);
        let announce = outsider.announce();
        assert_eq!(
            a.receive(&pid("x"), false, &announce.data, Instant::now())
                .0,
            Event::Refused
        );
        // An honest announcement relabelled by the relay as someone else's.
        let b = Group::new(&s, pid("b"), false);
        assert_eq!(
            a.receive(&pid("c"), false, &b.announce().data, Instant::now())
                .0,
            Event::Refused
        );
        assert!(matches!(
            a.receive(&pid("b"), false, &b.announce().data, Instant::now())
                .0,
            Event::Announced(_)
        ));
        for junk in [
            "",
            "!!!",
            "AQ",
            &B64.encode([2u8; 117]),
            &B64.encode([9u8; 65]),
        ] {
            assert_eq!(
                a.receive(&pid("b"), true, junk, Instant::now()).0,
                Event::Refused
            );
        }
        assert_eq!(a.stats.messages_refused, 7);
    }

    #[test]
    fn the_previous_epoch_decrypts_for_a_while_then_not() {
        let s = Secret::random().unwrap();
        let (ha, hb) = (pid("h"), pid("b"));
        let mut host = Group::new(&s, ha.clone(), true);
        let mut bob = Group::new(&s, hb.clone(), false);
        let hello = bob.announce();
        deliver(&mut [(&ha, &mut host), (&hb, &mut bob)], &hb, vec![hello]);
        let late = bob.encrypt(1, &datagram(b"epoch 0")).unwrap();
        let now = Instant::now();
        let out = host.rotate(now);
        assert_eq!(host.epoch(), 1);
        assert!(host.decrypt(&late, now).is_some());
        assert!(host.decrypt(&late, now + KEEP_PREVIOUS).is_none());
        deliver(&mut [(&ha, &mut host), (&hb, &mut bob)], &ha, out);
        assert_eq!(bob.epoch(), 1);
    }

    #[test]
    fn key_ids_have_the_layout_the_page_uses() {
        assert_eq!(
            key_id(7, (1 << 48) - 1, 31),
            7 << 52 | ((1 << 48) - 1) << 4 | 15
        );
        assert_eq!(key_id(0, 1, 16), 1 << 4);
    }

    #[test]
    fn only_a_host_hands_out_epochs_and_never_one_past_the_end() {
        let s = Secret::random().unwrap();
        let (ha, hb) = (pid("h"), pid("b"));
        let mut host = Group::new(&s, ha.clone(), true);
        let mut bob = Group::new(&s, hb.clone(), false);
        let now = Instant::now();
        host.receive(&hb, false, &bob.announce().data, now);
        let out = host.rotate(now);
        // Said to come from a guest: refused, whatever it holds.
        assert_eq!(bob.receive(&ha, false, &out[0].data, now).0, Event::Refused);
        assert_eq!(bob.epoch(), 0);
        assert!(matches!(
            bob.receive(&ha, true, &out[0].data, now).0,
            Event::EpochChanged { epoch: 1, .. }
        ));
        // At the last epoch a host makes no more (nothing wraps to 0).
        host.current.number = MAX_EPOCH;
        assert!(host.rotate(now).is_empty());
        assert_eq!(host.epoch(), MAX_EPOCH);
    }

    #[test]
    fn a_tie_between_two_hosts_leaves_everyone_sending_under_the_winner() {
        let s = Secret::random().unwrap();
        let (ann, zed, max) = (pid("ann"), pid("zed"), pid("max"));
        let mut a = Group::new(&s, ann.clone(), true);
        let mut z = Group::new(&s, zed.clone(), true);
        let mut m = Group::new(&s, max.clone(), false);
        let now = Instant::now();
        // Each learns the others' keys.
        let (ha, hz, hm) = (a.announce().data, z.announce().data, m.announce().data);
        a.receive(&zed, true, &hz, now);
        a.receive(&max, false, &hm, now);
        z.receive(&ann, true, &ha, now);
        z.receive(&max, false, &hm, now);
        // Zed sends under its own epoch 1 before Ann's arrives.
        let from_zed = z.rotate(now);
        let from_ann = a.rotate(now);
        let _ = z.encrypt(0, &datagram(b"zed, epoch 1 of its own")).unwrap();
        for o in from_zed.iter().filter(|o| o.to.as_ref() == Some(&max)) {
            m.receive(&zed, true, &o.data, now);
        }
        for o in &from_ann {
            let to = o.to.clone().unwrap();
            if to == max {
                m.receive(&ann, true, &o.data, now);
            } else if to == zed {
                assert!(matches!(
                    z.receive(&ann, true, &o.data, now).0,
                    Event::EpochChanged { .. }
                ));
            }
        }
        assert_eq!(z.epoch_secret(), a.epoch_secret(), "zed took ann's");
        assert_eq!(m.epoch_secret(), a.epoch_secret());
        // Zed's next datagram is under the winning secret: max reads it.
        let sealed = z.encrypt(0, &datagram(b"after the tie")).unwrap();
        assert!(m.decrypt(&sealed, now).is_some());
    }

    proptest::proptest! {
        /// Whatever a relay or participant sends, nothing panics and
        /// nothing decrypts.
        #[test]
        fn hostile_bytes_are_refused_without_panicking(
            bytes in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..1500),
            text in ".{0,300}",
        ) {
            let s = Secret::from_bytes([7; 32]);
            let mut g = Group::new(&s, pid("a"), true);
            let now = Instant::now();
            proptest::prop_assert!(g.decrypt(&bytes, now).is_none());
            let _ = g.receive(&pid("x"), true, &text, now);
            let (what, out) = g.receive(&pid("x"), true, &B64.encode(&bytes), now);
            proptest::prop_assert!(out.is_empty() || matches!(what, Event::Announced(_)));
            proptest::prop_assert_eq!(g.epoch(), 0);
        }
    }
}
