use proptest::prelude::*;

use super::*;

const NOW: u64 = 1_800_000_000;

fn key(seed: u8) -> SigningKey {
    SigningKey::from_bytes(&[seed; 32])
}

fn claims(nonce: &str) -> Claims {
    Claims {
        e2ee: false,
        conference: "eu-abc".into(),
        jurisdiction: "eu".into(),
        relay: "de-fra-1".into(),
        participant: "p1".into(),
        display_name: "Ada".into(),
        grants: Grants {
            publish: true,
            subscribe: true,
            moderate: false,
        },
        issued_at: NOW,
        expires_at: NOW + 60,
        nonce: nonce.into(),
    }
}

/// The Frankfurt relay: in `eu` and `de`, trusting key 1 for `eu`, nothing for `de`.
fn frankfurt() -> Verifier {
    Verifier::new(
        "de-fra-1",
        HashMap::from([
            ("eu".to_owned(), vec![key(1).verifying_key()]),
            ("de".to_owned(), vec![]),
        ]),
    )
}

#[test]
fn a_genuine_ticket_is_accepted_once() {
    let mut v = frankfurt();
    let ticket = sign(&claims("n1"), &key(1));
    assert_eq!(v.verify(&ticket, NOW + 1), Ok(claims("n1")));
    assert_eq!(v.verify(&ticket, NOW + 2), Err(TicketError::Replayed));
    assert_eq!(peek(&ticket), Ok(claims("n1")));
}

#[test]
fn each_failure_has_its_own_error() {
    let mut v = frankfurt();
    // Signed by a key not trusted for eu.
    assert_eq!(
        v.verify(&sign(&claims("a"), &key(2)), NOW),
        Err(TicketError::BadSignature)
    );
    // A jurisdiction this relay is in, but with no trusted key.
    let mut c = claims("b");
    c.jurisdiction = "de".into();
    assert_eq!(
        v.verify(&sign(&c, &key(1)), NOW),
        Err(TicketError::BadSignature)
    );
    // A jurisdiction this relay is not in, even with a valid signature.
    let mut c = claims("c");
    c.jurisdiction = "us".into();
    assert_eq!(
        v.verify(&sign(&c, &key(1)), NOW),
        Err(TicketError::ForeignJurisdiction)
    );
    // Another relay.
    let mut c = claims("d");
    c.relay = "ie-dub-1".into();
    assert_eq!(
        v.verify(&sign(&c, &key(1)), NOW),
        Err(TicketError::WrongRelay)
    );
    // Expired, at and after the instant.
    assert_eq!(
        v.verify(&sign(&claims("e"), &key(1)), NOW + 60),
        Err(TicketError::Expired)
    );
    // Issued in the future beyond the skew, or valid for too long.
    let mut c = claims("f");
    c.issued_at = NOW + CLOCK_SKEW_SECS + 1;
    c.expires_at = c.issued_at + 60;
    assert_eq!(
        v.verify(&sign(&c, &key(1)), NOW),
        Err(TicketError::BadValidity)
    );
    let mut c = claims("g");
    c.expires_at = NOW + MAX_LIFETIME_SECS + 1;
    assert_eq!(
        v.verify(&sign(&c, &key(1)), NOW),
        Err(TicketError::BadValidity)
    );
    // A conference of another jurisdiction.
    let mut c = claims("h");
    c.conference = "de-abc".into();
    assert_eq!(
        v.verify(&sign(&c, &key(1)), NOW),
        Err(TicketError::ConferenceOutsideJurisdiction)
    );
    let mut c = claims("i");
    c.conference = "eu".into();
    assert_eq!(
        v.verify(&sign(&c, &key(1)), NOW),
        Err(TicketError::ConferenceOutsideJurisdiction)
    );
    // Names longer than the control protocol carries.
    let mut c = claims("j");
    c.display_name = "x".repeat(65);
    assert_eq!(
        v.verify(&sign(&c, &key(1)), NOW),
        Err(TicketError::Malformed)
    );
    // Issued before the relay started.
    let mut restarted = frankfurt().issued_after(NOW + 1);
    assert_eq!(
        restarted.verify(&sign(&claims("k"), &key(1)), NOW + 2),
        Err(TicketError::IssuedBeforeStart)
    );
    // None of the refused tickets burned its nonce.
    assert!(v.verify(&sign(&claims("a"), &key(1)), NOW).is_ok());
}

#[test]
fn tampering_is_detected() {
    let mut v = frankfurt();
    let ticket = sign(&claims("t"), &key(1));
    let (head, sig) = ticket.rsplit_once('.').unwrap();
    // Claims changed after signing (the relay id swapped).
    let mut forged = claims("t");
    forged.grants.moderate = true;
    let forged_ticket = format!(
        "v1.{}.{sig}",
        B64.encode(serde_json::to_vec(&forged).unwrap())
    );
    assert_eq!(
        v.verify(&forged_ticket, NOW),
        Err(TicketError::BadSignature)
    );
    // Signature bytes flipped.
    let mut raw = B64.decode(sig).unwrap();
    raw[0] ^= 1;
    assert_eq!(
        v.verify(&format!("{head}.{}", B64.encode(raw)), NOW),
        Err(TicketError::BadSignature)
    );
    for bad in [
        "",
        "v1.",
        "v2.abc.def",
        "v1.abc",
        "v1.!!!.???",
        &"v1.".repeat(1000),
    ] {
        assert_eq!(v.verify(bad, NOW), Err(TicketError::Malformed), "{bad:.20}");
    }
}

#[test]
fn replay_cache_is_bounded() {
    let mut v = frankfurt().with_max_nonces(2);
    assert!(v.verify(&sign(&claims("1"), &key(1)), NOW).is_ok());
    assert!(v.verify(&sign(&claims("2"), &key(1)), NOW).is_ok());
    assert_eq!(
        v.verify(&sign(&claims("3"), &key(1)), NOW),
        Err(TicketError::Overloaded)
    );
    // Once the first two have expired their nonces make room.
    let mut c = claims("4");
    c.issued_at = NOW + 100;
    c.expires_at = NOW + 160;
    assert!(v.verify(&sign(&c, &key(1)), NOW + 100).is_ok());
}

#[test]
fn keys_parse_from_hex_or_base64() {
    let k = key(7);
    let public = k.verifying_key();
    assert_eq!(
        parse_public_key(&hex::encode(public.to_bytes())),
        Ok(public)
    );
    assert_eq!(parse_public_key(&B64.encode(public.to_bytes())), Ok(public));
    assert_eq!(
        parse_signing_key(&hex::encode(k.to_bytes()))
            .unwrap()
            .to_bytes(),
        k.to_bytes()
    );
    assert!(parse_public_key("abcd").is_err());
    assert!(parse_public_key(&"zz".repeat(32)).is_err());
}

#[test]
fn wire_codes_are_distinct() {
    let mut codes: Vec<u16> = TicketError::ALL.iter().map(|e| e.wire_code()).collect();
    codes.dedup();
    assert_eq!(codes.len(), TicketError::ALL.len());
}

proptest! {
    #[test]
    fn random_strings_never_panic(s in "v1\\.[A-Za-z0-9_.-]{0,300}") {
        let mut v = frankfurt();
        prop_assert!(v.verify(&s, NOW).is_err());
    }
}
