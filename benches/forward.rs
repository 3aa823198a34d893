//! The forwarding core alone: one publisher to N subscribers, 1,100-byte
//! datagrams, each iteration one datagram in and every subscriber's queue
//! drained (what the relay's I/O shell does).
//!
//! Baseline: the same fan-out written naively, copying the datagram into a
//! fresh `Vec<u8>` for each subscriber's queue. The summary prints
//! deliveries per second and the ratio.
//!
//! `layered/100`: a video track of three spatial layers to 100
//! subscribers whose tiles call for the low, middle and top layer (a
//! third each); each iteration one datagram of every layer in, so 100
//! deliveries, each subscriber's layer chosen per datagram.
//!
//! Run: `cargo bench --bench forward`

use std::collections::VecDeque;
use std::hint::black_box;
use std::path::Path;
use std::time::Instant;

use bytes::Bytes;
use criterion::{BenchmarkId, Criterion, Throughput};
use residency_relay::forward::{Admission, ConnId, Core, CoreConfig, Permissions};
use residency_relay::wire::control::{ClientMessage, ParticipantId, ServerMessage, TrackKind};
use residency_relay::wire::datagram::{self, Flags, MediaHeader, TrackId};

const SIZES: [usize; 4] = [1, 10, 100, 1000];
const PACKET: usize = 1100;

fn admission(name: &str) -> Admission {
    Admission {
        conference: "bench".into(),
        participant: ParticipantId(name.into()),
        display_name: name.into(),
        permissions: Permissions {
            publish: true,
            subscribe: true,
            moderate: false,
        },
        e2ee: false,
    }
}

fn setup(n: usize) -> (Core, ConnId, Bytes) {
    let mut core = Core::new(CoreConfig::default());
    let publisher = core.admit(admission("pub"));
    core.handle_control(
        publisher,
        ClientMessage::Publish {
            request: 1,
            kind: TrackKind::Video,
            codec: "vp8".into(),
            layers: None,
            encrypted: false,
        },
    );
    let track = std::iter::from_fn(|| core.poll_control())
        .find_map(|(_, m)| match m {
            ServerMessage::Published { track, .. } => Some(track),
            _ => None,
        })
        .expect("published");
    for i in 0..n {
        let s = core.admit(admission(&format!("s{i}")));
        core.handle_control(s, ClientMessage::Subscribe { track });
    }
    while core.poll_control().is_some() {}
    let mut out = Vec::new();
    let header = MediaHeader {
        track,
        sequence: 1,
        flags: Flags::default(),
        info: residency_relay::wire::datagram::Info::NONE,
    };
    datagram::encode(&header, &[0x5a; PACKET - datagram::HEADER_LEN], &mut out);
    (core, publisher, Bytes::from(out))
}

/// The naive fan-out: parse, then copy the bytes for each subscriber.
struct Naive {
    track: TrackId,
    queues: Vec<VecDeque<Vec<u8>>>,
}

impl Naive {
    fn forward(&mut self, packet: &[u8]) -> usize {
        let header = datagram::parse(packet).expect("valid");
        if header.track != self.track {
            return 0;
        }
        for q in &mut self.queues {
            q.push_back(packet.to_vec());
        }
        let mut sent = 0;
        for q in &mut self.queues {
            while let Some(d) = q.pop_front() {
                sent += d.len();
                black_box(d);
            }
        }
        sent
    }
}

/// A three-layer track to `n` subscribers on layers 0, 1, 2 in turn; the
/// core, the publisher and one datagram of each layer.
fn setup_layered(n: usize) -> (Core, ConnId, [Bytes; 3]) {
    let mut core = Core::new(CoreConfig::default());
    let publisher = core.admit(admission("pub"));
    core.handle_control(
        publisher,
        ClientMessage::Publish {
            request: 1,
            kind: TrackKind::Video,
            codec: "vp8".into(),
            layers: Some(residency_relay::wire::control::Layers {
                spatial: 3,
                temporal: 1,
            }),
            encrypted: false,
        },
    );
    let track = std::iter::from_fn(|| core.poll_control())
        .find_map(|(_, m)| match m {
            ServerMessage::Published { track, .. } => Some(track),
            _ => None,
        })
        .expect("published");
    let views = [(320, 180), (640, 360), (1280, 720)];
    for i in 0..n {
        let s = core.admit(admission(&format!("s{i}")));
        core.handle_control(s, ClientMessage::Subscribe { track });
        let (width, height) = views[i % 3];
        core.handle_control(
            s,
            ClientMessage::View {
                track,
                width,
                height,
            },
        );
    }
    let now = Instant::now();
    core.tick(now, |_| Default::default());
    let packet = |layer: u8, flags: Flags| {
        let mut out = Vec::new();
        let header = MediaHeader {
            track,
            sequence: 1,
            flags: flags | Flags::END_OF_FRAME,
            info: residency_relay::wire::datagram::Info::layer(layer),
        };
        datagram::encode(&header, &[0x5a; PACKET - datagram::HEADER_LEN], &mut out);
        Bytes::from(out)
    };
    // A keyframe of each layer: every subscriber switches to its own.
    for layer in 0..3 {
        core.handle_datagram(publisher, packet(layer, Flags::KEYFRAME), now)
            .expect("forwarded");
    }
    let mut ready = Vec::new();
    core.take_ready(&mut ready);
    for conn in ready {
        while core.poll_datagram(conn).is_some() {}
    }
    while core.poll_control().is_some() {}
    let deltas = [0, 1, 2].map(|l| packet(l, Flags::default()));
    (core, publisher, deltas)
}

fn benches(c: &mut Criterion) {
    {
        let mut group = c.benchmark_group("layered");
        let n = 100;
        group.throughput(Throughput::Elements(n as u64));
        let (mut core, publisher, packets) = setup_layered(n);
        let now = Instant::now();
        let mut ready = Vec::with_capacity(n);
        group.bench_with_input(BenchmarkId::from_parameter(n), &n, |b, _| {
            b.iter(|| {
                for p in &packets {
                    core.handle_datagram(publisher, p.clone(), now)
                        .expect("forwarded");
                }
                core.take_ready(&mut ready);
                let mut got = 0;
                for conn in ready.drain(..) {
                    while let Some(d) = core.poll_datagram(conn) {
                        got += 1;
                        black_box(d);
                    }
                }
                assert_eq!(got, n, "one datagram for each subscriber");
            })
        });
        group.finish();
    }
    let mut group = c.benchmark_group("forward");
    for n in SIZES {
        group.throughput(Throughput::Elements(n as u64));
        let (mut core, publisher, packet) = setup(n);
        let now = Instant::now();
        let mut ready = Vec::with_capacity(n);
        group.bench_with_input(BenchmarkId::new("core", n), &n, |b, _| {
            b.iter(|| {
                core.handle_datagram(publisher, packet.clone(), now)
                    .expect("forwarded");
                core.take_ready(&mut ready);
                for conn in ready.drain(..) {
                    while let Some(d) = core.poll_datagram(conn) {
                        black_box(d);
                    }
                }
            })
        });
        let track = datagram::parse(&packet).unwrap().track;
        let mut naive = Naive {
            track,
            queues: (0..n).map(|_| VecDeque::with_capacity(4)).collect(),
        };
        group.bench_with_input(BenchmarkId::new("naive_copy", n), &n, |b, _| {
            b.iter(|| black_box(naive.forward(&packet)))
        });
    }
    group.finish();
}

fn median_ns(id: &str) -> Option<f64> {
    let target = std::env::var("CARGO_TARGET_DIR").unwrap_or_else(|_| "target".to_owned());
    let path = Path::new(&target)
        .join("criterion")
        .join(id)
        .join("new/estimates.json");
    let json: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(path).ok()?).ok()?;
    json["median"]["point_estimate"].as_f64()
}

fn main() {
    let mut criterion = Criterion::default().configure_from_args();
    benches(&mut criterion);
    criterion.final_summary();
    println!("\nsummary (criterion medians, {PACKET}-byte datagrams):");
    println!(
        "  {:>12} {:>22} {:>22} {:>8}",
        "subscribers", "core deliveries/s", "naive deliveries/s", "ratio"
    );
    for n in SIZES {
        if let (Some(core), Some(naive)) = (
            median_ns(&format!("forward/core/{n}")),
            median_ns(&format!("forward/naive_copy/{n}")),
        ) {
            let per = |ns: f64| n as f64 * 1e9 / ns;
            println!(
                "  {n:>12} {:>22.0} {:>22.0} {:>7.2}x",
                per(core),
                per(naive),
                naive / core
            );
        }
    }
    if let Some(ns) = median_ns("layered/100") {
        let rate = 100.0 * 1e9 / ns;
        let verdict = if rate >= 15e6 { "meets" } else { "misses" };
        println!(
            "  100 subscribers, three layers, each its own: {rate:.0} deliveries/s on one core ({verdict} the 15,000,000/s target)"
        );
    }
    if let Some(ns) = median_ns("forward/core/100") {
        let rate = 100.0 * 1e9 / ns;
        let verdict = if rate >= 20e6 { "meets" } else { "misses" };
        println!(
            "  100 subscribers: {rate:.0} deliveries/s on one core ({verdict} the 20,000,000/s target)"
        );
    }
}
