//! Steady-state forwarding allocates nothing: a datagram in, 100 clones
//! queued, the queues drained.

#[path = "support/counting_alloc.rs"]
mod counting_alloc;

use std::time::Instant;

use bytes::{Bytes, BytesMut};
use counting_alloc::{Counting, allocations};
use residency_relay::forward::{Admission, Core, CoreConfig, Permissions};
use residency_relay::wire::control::{ClientMessage, ParticipantId, ServerMessage, TrackKind};
use residency_relay::wire::datagram::{self, Flags, MediaHeader};

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
