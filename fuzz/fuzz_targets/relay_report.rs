//! What a relay sends a router and what a router answers: the channel's
//! JSON messages parse into their types or fail, and what parses
//! serialises and parses back to the same value.
#![no_main]

use libfuzzer_sys::fuzz_target;
use residency_relay::wire::channel::{RelayReport, ReportReply};

fuzz_target!(|data: &[u8]| {
    if let Ok(report) = serde_json::from_slice::<RelayReport>(data) {
        let again: RelayReport =
            serde_json::from_slice(&serde_json::to_vec(&report).unwrap()).unwrap();
        assert_eq!(again, report);
    }
    if let Ok(reply) = serde_json::from_slice::<ReportReply>(data) {
        let again: ReportReply =
            serde_json::from_slice(&serde_json::to_vec(&reply).unwrap()).unwrap();
        assert_eq!(again, reply);
    }
});
