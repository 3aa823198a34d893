//! The native end-to-end encryption against the published test vectors
//! (tests/vectors/README.md names their sources): RFC 9605 Appendix C for
//! SFrame, RFC 9180 Appendix A for HPKE base mode with DHKEM(X25519,
//! HKDF-SHA256), HKDF-SHA256 and AES-128-GCM. The browser's
//! implementation is checked against the same files (tests/browser.rs).

use std::convert::Infallible;

use hpke::rand_core::{TryCryptoRng, TryRng};
use hpke::{Deserializable, Kem as _, Serializable};
use serde_json::Value;
use sframe::CipherSuite;
use sframe::frame::{EncryptedFrameView, MediaFrameView, SingleUseCounter};
use sframe::header::SframeHeader;
use sframe::key::{DecryptionKey, EncryptionKey};

type Kem = hpke::kem::X25519HkdfSha256;
type Kdf = hpke::kdf::HkdfSha256;
type Aead = hpke::aead::AesGcm128;

fn vectors(name: &str) -> Value {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/vectors")
        .join(name);
    serde_json::from_slice(&std::fs::read(&path).unwrap()).unwrap()
}

fn bytes(v: &Value) -> Vec<u8> {
    hex::decode(v.as_str().unwrap()).unwrap()
}

#[test]
fn sframe_headers_match_rfc_9605() {
    let v = vectors("rfc9605.json");
    let headers = v["header"].as_array().unwrap();
    assert!(headers.len() > 200);
    for h in headers {
        let kid = h["kid"].as_u64().unwrap();
        let ctr = h["ctr"].as_u64().unwrap();
        let encoded = bytes(&h["encoded"]);
        let header = SframeHeader::new(kid, ctr);
        let mut out = vec![0u8; header.len()];
        header.serialize(&mut out).unwrap();
        assert_eq!(out, encoded, "kid {kid} ctr {ctr}");
        let parsed = SframeHeader::deserialize(&encoded).unwrap();
        assert_eq!((parsed.key_id(), parsed.counter()), (kid, ctr));
    }
}

#[test]
fn sframe_encryption_matches_rfc_9605_for_the_aes_gcm_suites() {
    let v = vectors("rfc9605.json");
    let mut checked = Vec::new();
    for case in v["sframe"].as_array().unwrap() {
        let suite = match case["cipher_suite"].as_u64().unwrap() {
            4 => CipherSuite::AesGcm128Sha256,
            5 => CipherSuite::AesGcm256Sha512,
            // AES-CTR with HMAC: not offered by the ring backend, not used here.
            _ => continue,
        };
        let kid = case["kid"].as_u64().unwrap();
        let ctr = case["ctr"].as_u64().unwrap();
        let base_key = bytes(&case["base_key"]);
        let metadata = bytes(&case["metadata"]);
        let pt = bytes(&case["pt"]);
        let ct = bytes(&case["ct"]);

        let key = EncryptionKey::derive_from(suite, kid, &base_key).unwrap();
        let mut counter = SingleUseCounter::new(ctr);
        let frame = MediaFrameView::try_with_meta_data(&mut counter, &pt, &metadata).unwrap();
        let mut out = Vec::new();
        frame.encrypt_into(&key, &mut out).unwrap();
        // The crate lays a frame out as metadata || header || ciphertext;
        // the vector's ct is header || ciphertext.
        assert_eq!(&out[..metadata.len()], metadata.as_slice());
        assert_eq!(&out[metadata.len()..], ct.as_slice(), "suite {suite}");

        let key = DecryptionKey::derive_from(suite, kid, &base_key).unwrap();
        let encrypted = EncryptedFrameView::try_with_meta_data(&ct, &metadata).unwrap();
        let mut plain = Vec::new();
        let decrypted = encrypted.decrypt_into(&key, &mut plain).unwrap();
        assert_eq!(decrypted.payload(), pt.as_slice());
        // The metadata is authenticated: other metadata, no plaintext.
        let mut other = metadata.clone();
        other[0] ^= 1;
        let encrypted = EncryptedFrameView::try_with_meta_data(&ct, &other).unwrap();
        assert!(encrypted.decrypt_into(&key, &mut Vec::new()).is_err());
        checked.push(case["cipher_suite"].as_u64().unwrap());
    }
    assert!(
        checked.contains(&4),
        "the suite this project uses was checked"
    );
}

/// Hands out the vector's ephemeral input keying material as "randomness",
/// so the sender's side is reproducible.
struct Fixed(Vec<u8>);

impl TryRng for Fixed {
    type Error = Infallible;
    fn try_next_u32(&mut self) -> Result<u32, Infallible> {
        unreachable!("only fill_bytes is used")
    }
    fn try_next_u64(&mut self) -> Result<u64, Infallible> {
        unreachable!("only fill_bytes is used")
    }
    fn try_fill_bytes(&mut self, dst: &mut [u8]) -> Result<(), Infallible> {
        assert!(
            dst.len() <= self.0.len(),
            "more randomness than the vector has"
        );
        let rest = self.0.split_off(dst.len());
        dst.copy_from_slice(&self.0);
        self.0 = rest;
        Ok(())
    }
}

impl TryCryptoRng for Fixed {}

#[test]
fn hpke_matches_rfc_9180_for_base_x25519_sha256_aes128gcm() {
    let v = vectors("rfc9180-base-x25519-sha256-aes128gcm.json");
    let cases = v.as_array().unwrap();
    assert!(!cases.is_empty());
    for case in cases {
        assert_eq!(
            (
                case["mode"].as_u64(),
                case["kem_id"].as_u64(),
                case["kdf_id"].as_u64(),
                case["aead_id"].as_u64()
            ),
            (Some(0), Some(32), Some(1), Some(1))
        );
        let info = bytes(&case["info"]);
        let (sk_r, pk_r) = Kem::derive_keypair(&bytes(&case["ikmR"]));
        // The crate keeps the scalar clamped (RFC 7748 §5); the vector
        // lists it as derived. Equal once clamped.
        let mut sk = bytes(&case["skRm"]);
        sk[0] &= 248;
        sk[31] &= 127;
        sk[31] |= 64;
        assert_eq!(sk_r.to_bytes().to_vec(), sk);
        assert_eq!(pk_r.to_bytes().to_vec(), bytes(&case["pkRm"]));
        let (_, pk_e) = Kem::derive_keypair(&bytes(&case["ikmE"]));
        assert_eq!(pk_e.to_bytes().to_vec(), bytes(&case["pkEm"]));

        // Sender: the vector's ephemeral key gives its enc and ciphertexts.
        let (enc, mut sender) = hpke::setup_sender_with_rng::<Aead, Kdf, Kem>(
            &hpke::OpModeS::Base,
            &pk_r,
            &info,
            &mut Fixed(bytes(&case["ikmE"])),
        )
        .unwrap();
        assert_eq!(enc.to_bytes().to_vec(), bytes(&case["enc"]));

        // Receiver: every encryption opens, in sequence.
        let enc = <Kem as hpke::Kem>::EncappedKey::from_bytes(&bytes(&case["enc"])).unwrap();
        let mut receiver =
            hpke::setup_receiver::<Aead, Kdf, Kem>(&hpke::OpModeR::Base, &sk_r, &enc, &info)
                .unwrap();
        let encryptions = case["encryptions"].as_array().unwrap();
        for (i, e) in encryptions.iter().enumerate() {
            let (aad, pt, ct) = (bytes(&e["aad"]), bytes(&e["pt"]), bytes(&e["ct"]));
            assert_eq!(sender.seal(&pt, &aad).unwrap(), ct, "seal {i}");
            assert_eq!(receiver.open(&ct, &aad).unwrap(), pt, "open {i}");
        }
        for x in case["exports"].as_array().unwrap() {
            let mut out = vec![0u8; x["L"].as_u64().unwrap() as usize];
            receiver
                .export(&bytes(&x["exporter_context"]), &mut out)
                .unwrap();
            assert_eq!(out, bytes(&x["exported_value"]));
        }
        // The single-shot call the project uses opens the first encryption.
        let first = &encryptions[0];
        let pt = hpke::single_shot_open::<Aead, Kdf, Kem>(
            &hpke::OpModeR::Base,
            &sk_r,
            &enc,
            &info,
            &bytes(&first["ct"]),
            &bytes(&first["aad"]),
        )
        .unwrap();
        assert_eq!(pt, bytes(&first["pt"]));
    }
}
