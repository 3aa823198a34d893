//! Join and cascade tickets, as a hostile client or relay would present
//! them, against Frankfurt's verifier of the dev policy: every input is
//! admitted or refused with a code; nothing unsigned is ever attested.
#![no_main]

use std::sync::OnceLock;

use libfuzzer_sys::fuzz_target;
use residency_relay::ticket::{self, Verifier};

fn verifier() -> &'static Verifier {
    static V: OnceLock<Verifier> = OnceLock::new();
    V.get_or_init(|| {
        let config = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../config/dev.toml");
        let policy = residency_relay::policy::load(&config).expect("dev policy");
        policy.ticket_verifier(policy.relay_idx("de-fra-1").expect("de-fra-1"))
    })
}

fuzz_target!(|data: &[u8]| {
    let text = String::from_utf8_lossy(data);
    let v = verifier();
    let now = 1_800_000_000;
    let checked = v.check(&text, now);
    let attested = v.attest(&text);
    // A ticket that passes the checks was signed by a trusted key, which
    // the policy knows: it is attested too.
    if checked.is_ok() {
        assert!(attested.is_some());
    }
    let _ = ticket::peek(&text);
    let _ = v.check_cascade(&text, "127.0.1.3".parse().unwrap(), Some(&text), now);
    let _ = v.attest_cascade(&text);
    let _ = ticket::peek_cascade(&text);
});
