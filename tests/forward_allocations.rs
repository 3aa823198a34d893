//! Steady-state forwarding allocates nothing: a datagram in, 100 clones
//! queued, the queues drained.
// A global allocator needs `unsafe impl`; it only counts and delegates.
#![allow(unsafe_code)]

use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Instant;

use bytes::{Bytes, BytesMut};
use residency_relay::forward::{Admission, Core, CoreConfig, Permissions};
use residency_relay::wire::control::{ClientMessage, ParticipantId, ServerMessage, TrackKind};
use residency_relay::wire::datagram::{self, Flags, MediaHeader};

struct Counting;

static ALLOCATIONS: AtomicUsize = AtomicUsize::new(0);

unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        ALLOCATIONS.fetch_add(1, Ordering::Relaxed);
        // SAFETY: forwarded unchanged to the system allocator.
        unsafe { System.alloc(layout) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: `ptr` came from `alloc` above, i.e. from the system allocator.
        unsafe { System.dealloc(ptr, layout) }
    }
}

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
    let before = ALLOCATIONS.load(Ordering::Relaxed);
    for packet in &packets[100..] {
        forward(&mut core, packet);
    }
    let allocations = ALLOCATIONS.load(Ordering::Relaxed) - before;
    assert_eq!(core.counters().deliveries, 1100 * 100);
    assert_eq!(
        allocations, 0,
        "{allocations} allocations for 1,000 datagrams to 100 subscribers"
    );
}
