//! End-to-end encryption input from the network: datagrams to decrypt
//! (arbitrary, or a valid one with bytes changed) and key messages
//! (arbitrary base64url and text). Nothing panics; a changed datagram
//! never decrypts to something else than what was sent.
#![no_main]

use std::time::Instant;

use base64::Engine as _;
use libfuzzer_sys::fuzz_target;
use residency_relay::client::e2ee::{Group, Secret};
use residency_relay::wire::control::ParticipantId;

fuzz_target!(|data: &[u8]| {
    let Some((&mode, rest)) = data.split_first() else {
        return;
    };
    let secret = Secret::from_bytes([7; 32]);
    let now = Instant::now();
    let mut receiver = Group::new(&secret, ParticipantId("r".into()), true);
    match mode % 3 {
        0 => {
            let _ = receiver.decrypt(rest, now);
        }
        1 => {
            // A valid datagram, then the input XORed into it.
            let mut sender = Group::new(&secret, ParticipantId("s".into()), false);
            let mut plain = vec![0x41, 0, 0x10, 0, 1, 0, 0, 0, 1, 0x80];
            plain.extend_from_slice(b"payload of a datagram");
            let mut sealed = sender.encrypt(0, &plain).unwrap();
            let mut changed = false;
            for (i, b) in rest.iter().enumerate() {
                if let Some(x) = sealed.get_mut(i) {
                    changed |= *b != 0;
                    *x ^= b;
                }
            }
            match receiver.decrypt(&sealed, now) {
                Some(p) => assert!(!changed && p == plain[10..], "a changed datagram decrypted"),
                None => assert!(changed, "the datagram as sent did not decrypt"),
            }
        }
        _ => {
            let encoded = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(rest);
            let _ = receiver.receive(&ParticipantId("x".into()), true, &encoded, now);
            if let Ok(text) = std::str::from_utf8(rest) {
                let _ = receiver.receive(&ParticipantId(text.into()), true, text, now);
            }
            assert_eq!(receiver.epoch(), 0, "a forged epoch was taken");
        }
    }
});
