//! End-to-end encryption per media datagram on the native side: SFrame
//! (AES_128_GCM_SHA256_128) encrypt and decrypt of a 1,100-byte datagram,
//! against the plain path in the same run (building the same datagram
//! into a fresh buffer, which a sender does anyway). The summary prints
//! datagrams per second on one core and the cost relative to plain.
//!
//! Run: `cargo bench --bench e2ee`

use std::hint::black_box;
use std::time::{Duration, Instant};

use criterion::{Criterion, Throughput};
use residency_relay::client::e2ee::{Group, MAX_OVERHEAD, Secret};
use residency_relay::wire::control::ParticipantId;
use residency_relay::wire::datagram::{self, Flags, HEADER_LEN, MediaHeader, TrackId};

const DATAGRAM: usize = 1100;

fn header(sequence: u32) -> MediaHeader {
    MediaHeader {
        track: TrackId(1 << 20 | 1),
        sequence,
        flags: Flags::default(),
        info: residency_relay::wire::datagram::Info::NONE,
    }
}

fn main() {
    let mut c = Criterion::default()
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(3))
        .configure_from_args();
    let secret = Secret::random().unwrap();
    let mut sender = Group::new(&secret, ParticipantId("s".into()), false);
    let mut receiver = Group::new(&secret, ParticipantId("r".into()), false);
    // The encrypted datagram is no larger than a plain one of 1,100 bytes:
    // the sender cuts its payload by the overhead.
    let payload = vec![0x5au8; DATAGRAM - HEADER_LEN - MAX_OVERHEAD];
    let mut plain = Vec::new();
    datagram::encode(&header(0), &payload, &mut plain);
    let sealed = sender.encrypt(0, &plain).unwrap();
    println!(
        "datagram: {} bytes plain, {} encrypted ({} bytes of SFrame header and tag)",
        plain.len(),
        sealed.len(),
        sealed.len() - plain.len()
    );
    let now = Instant::now();
    assert!(receiver.decrypt(&sealed, now).is_some());

    let mut g = c.benchmark_group("datagram_1100");
    g.throughput(Throughput::Elements(1));
    let mut seq = 0u32;
    g.bench_function("plain", |b| {
        b.iter(|| {
            seq = seq.wrapping_add(1);
            let mut out = Vec::with_capacity(DATAGRAM);
            datagram::encode(&header(seq), black_box(&payload), &mut out);
            black_box(out)
        })
    });
    g.bench_function("encrypt", |b| {
        b.iter(|| {
            seq = seq.wrapping_add(1);
            let mut out = Vec::with_capacity(DATAGRAM);
            datagram::encode(&header(seq), black_box(&payload), &mut out);
            black_box(sender.encrypt(0, &out).unwrap())
        })
    });
    g.bench_function("decrypt", |b| {
        b.iter(|| black_box(receiver.decrypt(black_box(&sealed), now)))
    });
    g.finish();
    c.final_summary();
    summary();
}

/// Reads criterion's estimates back and prints datagrams per second.
fn summary() {
    let target = std::env::var("CARGO_TARGET_DIR").unwrap_or_else(|_| "target".to_owned());
    let dir = std::path::Path::new(&target).join("criterion/datagram_1100");
    let median = |name: &str| -> Option<f64> {
        let text = std::fs::read_to_string(dir.join(name).join("new/estimates.json")).ok()?;
        let v: serde_json::Value = serde_json::from_str(&text).ok()?;
        v["median"]["point_estimate"].as_f64()
    };
    let (Some(plain), Some(enc), Some(dec)) =
        (median("plain"), median("encrypt"), median("decrypt"))
    else {
        println!("summary: no estimates (filtered run)");
        return;
    };
    let rate = |ns: f64| 1e9 / ns;
    println!("summary (median, one core):");
    println!(
        "  plain    {:>12.0} datagrams/s ({plain:.0} ns)",
        rate(plain)
    );
    println!(
        "  encrypt  {:>12.0} datagrams/s ({enc:.0} ns, {:.1}x plain)",
        rate(enc),
        enc / plain
    );
    println!(
        "  decrypt  {:>12.0} datagrams/s ({dec:.0} ns, {:.1}x plain)",
        rate(dec),
        dec / plain
    );
}
