//! Residency reports: where a conference's media and metadata went, as the
//! relays and routers recorded it, signed by the router so a tenant can hand
//! it to an auditor.
//!
//! The signed bytes are the compact JSON of the `report` member (serde_json
//! writes a parsed document back byte for byte the same, so a verifier
//! re-serialises what it read). The envelope is
//! `{"report": {…}, "signature": {"algorithm": "ed25519", "public_key": hex,
//! "value": base64url}}`.

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64;
use ed25519_dalek::{Signature, Signer, SigningKey, VerifyingKey};
use serde_json::{Value, json};

/// Wraps `report` in a signed envelope.
pub fn sign(report: Value, key: &SigningKey) -> Value {
    let bytes = serde_json::to_vec(&report).unwrap_or_default();
    let signature = key.sign(&bytes);
    json!({
        "report": report,
        "signature": {
            "algorithm": "ed25519",
            "public_key": hex::encode(key.verifying_key().as_bytes()),
            "value": B64.encode(signature.to_bytes()),
        }
    })
}

/// Checks an envelope's signature under `key` (the router's public key,
/// obtained independently of the report); returns the report.
pub fn verify<'a>(envelope: &'a Value, key: &VerifyingKey) -> Result<&'a Value, String> {
    let report = envelope
        .get("report")
        .ok_or("no report member: not a residency report")?;
    let signature = &envelope["signature"];
    if signature["algorithm"] != "ed25519" {
        return Err("the signature is not ed25519".into());
    }
    let value = signature["value"].as_str().ok_or("no signature value")?;
    let bytes = B64
        .decode(value)
        .map_err(|_| "the signature is not base64url")?;
    let signature = Signature::from_slice(&bytes).map_err(|_| "the signature is malformed")?;
    let signed = serde_json::to_vec(report).map_err(|e| e.to_string())?;
    key.verify_strict(&signed, &signature).map_err(|_| {
        "the signature does not match: the report was altered or signed by another key".to_owned()
    })?;
    Ok(report)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_signed_report_verifies_and_any_change_breaks_it() {
        let key = SigningKey::from_bytes(&[7; 32]);
        let report =
            json!({ "conference": "eu-x", "relays": [{ "id": "de-fra-1", "bytes_in": 5 }] });
        let envelope = sign(report.clone(), &key);
        // Through text and back, as an auditor receives it.
        let text = serde_json::to_string_pretty(&envelope).unwrap();
        let read: Value = serde_json::from_str(&text).unwrap();
        assert_eq!(verify(&read, &key.verifying_key()).unwrap(), &report);
        let mut altered = read.clone();
        altered["report"]["relays"][0]["bytes_in"] = json!(6);
        assert!(verify(&altered, &key.verifying_key()).is_err());
        let other = SigningKey::from_bytes(&[8; 32]);
        assert!(verify(&read, &other.verifying_key()).is_err());
        assert!(verify(&json!({}), &key.verifying_key()).is_err());
    }
}
