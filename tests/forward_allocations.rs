//! Steady-state forwarding allocates nothing: a datagram in, 100 clones
//! queued, the queues drained.

#[path = "support/counting_alloc.rs"]
mod counting_alloc;

use std::time::Instant;

use bytes::{Bytes, BytesMut};
use counting_alloc::{Counting, allocations};
use residency_relay::forward::{Admission, Core, CoreConfig, Permissions};
use residency_relay::wire::control::{ClientMessage, ParticipantId, ServerMessage, TrackKind};
use residency_relay::wire::datagram::{self, Flags, Info, MediaHeader};

#[global_allocator]
static GLOBAL: Counting = Counting;

fn admission(name: &str) -> Admission {
    Admission {
        conference: "c1".into(),
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

#[test]
fn forwarding_allocates_nothing_per_packet() {
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
        .unwrap();
    let subscribers: Vec<_> = (0..100)
        .map(|i| core.admit(admission(&format!("s{i}"))))
        .collect();
    for s in &subscribers {
        core.handle_control(*s, ClientMessage::Subscribe { track });
    }
    while core.poll_control().is_some() {}
    // Received datagrams arrive from the QUIC stack as `Bytes` split off a
    // shared receive buffer; make them the same way, up front.
    let mut buffer = BytesMut::with_capacity(1100 * 1100);
    let packets: Vec<Bytes> = (0..1100u32)
        .map(|i| {
            let mut out = Vec::new();
            datagram::encode(
                &MediaHeader {
                    track,
                    sequence: i,
                    flags: Flags::default(),
                    info: residency_relay::wire::datagram::Info::NONE,
                },
                &[7; 1091],
                &mut out,
            );
            buffer.extend_from_slice(&out);
            buffer.split_to(out.len()).freeze()
        })
        .collect();
    let now = Instant::now();
    let mut ready = Vec::with_capacity(128);
    let mut forward = |core: &mut Core, packet: &Bytes| {
        core.handle_datagram(publisher, packet.clone(), now)
            .unwrap();
        core.take_ready(&mut ready);
        for conn in ready.drain(..) {
            while let Some(d) = core.poll_datagram(conn) {
                std::hint::black_box(d);
            }
        }
    };
    for packet in &packets[..100] {
        forward(&mut core, packet);
    }
    let before = allocations();
    for packet in &packets[100..] {
        forward(&mut core, packet);
    }
    let allocated = allocations() - before;
    assert_eq!(core.counters().deliveries, 1100 * 100);
    assert_eq!(
        allocated, 0,
        "{allocated} allocations for 1,000 datagrams to 100 subscribers"
    );
}

#[test]
fn choosing_layers_allocates_nothing_per_packet() {
    let mut core = Core::new(CoreConfig::default());
    let publisher = core.admit(admission("pub"));
    let publish = |core: &mut Core, kind, layers| {
        core.handle_control(
            publisher,
            ClientMessage::Publish {
                request: 1,
                kind,
                codec: "x".into(),
                layers,
                encrypted: false,
            },
        );
        std::iter::from_fn(|| core.poll_control())
            .find_map(|(_, m)| match m {
                ServerMessage::Published { track, .. } => Some(track),
                _ => None,
            })
            .unwrap()
    };
    let video = publish(
        &mut core,
        TrackKind::Video,
        Some(residency_relay::wire::control::Layers {
            spatial: 3,
            temporal: 1,
        }),
    );
    let audio = publish(&mut core, TrackKind::Audio, None);
    let views = [(320u16, 180u16), (640, 360), (1280, 720)];
    for i in 0..100 {
        let s = core.admit(admission(&format!("s{i}")));
        core.handle_control(s, ClientMessage::Subscribe { track: video });
        core.handle_control(s, ClientMessage::Subscribe { track: audio });
        let (width, height) = views[i % 3];
        core.handle_control(
            s,
            ClientMessage::View {
                track: video,
                width,
                height,
            },
        );
    }
    let now = Instant::now();
    core.tick(now, |_| Default::default());
    while core.poll_control().is_some() {}
    let mut buffer = BytesMut::with_capacity(1100 * 4 * 1100);
    let mut packet = |track, sequence: u32, flags: Flags, info| {
        let mut out = Vec::new();
        datagram::encode(
            &MediaHeader {
                track,
                sequence,
                flags: flags | Flags::END_OF_FRAME,
                info,
            },
            &[7; 1000],
            &mut out,
        );
        buffer.extend_from_slice(&out);
        buffer.split_to(out.len()).freeze()
    };
    // Rounds of one datagram of each layer and one of audio; the first a
    // keyframe of every layer, where each subscriber switches to its own.
    let rounds: Vec<[Bytes; 4]> = (0..1100u32)
        .map(|i| {
            let flags = if i == 0 {
                Flags::KEYFRAME
            } else {
                Flags::default()
            };
            [
                packet(video, i, flags, Info::layer(0)),
                packet(video, i, flags, Info::layer(1)),
                packet(video, i, flags, Info::layer(2)),
                packet(audio, i, Flags::default(), Info::audio(true, 20)),
            ]
        })
        .collect();
    let mut ready = Vec::with_capacity(128);
    let mut forward = |core: &mut Core, round: &[Bytes; 4]| {
        for p in round {
            core.handle_datagram(publisher, p.clone(), now).unwrap();
        }
        core.take_ready(&mut ready);
        for conn in ready.drain(..) {
            while let Some(d) = core.poll_datagram(conn) {
                std::hint::black_box(d);
            }
        }
    };
    for round in &rounds[..100] {
        forward(&mut core, round);
    }
    let before = allocations();
    for round in &rounds[100..] {
        forward(&mut core, round);
    }
    let allocated = allocations() - before;
    // Each subscriber: one video datagram (its layer) and one audio per round.
    assert_eq!(core.counters().deliveries, 1100 * 100 * 2);
    assert_eq!(
        allocated, 0,
        "{allocated} allocations for 1,000 rounds of three layers and audio to 100 subscribers"
    );
}
