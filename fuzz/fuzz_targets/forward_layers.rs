//! The forwarding core under a hostile publisher's headers: any version
//! and flag bits, layer and level bytes, sequence numbers and lengths on
//! its layered video, audio and data tracks, with ticks between. Nothing
//! panics, and an honest publisher's audio reaches its subscriber whole.
#![no_main]

use std::time::{Duration, Instant};

use bytes::Bytes;
use libfuzzer_sys::fuzz_target;
use residency_relay::forward::{Admission, Core, CoreConfig, Permissions};
use residency_relay::wire::control::{
    ClientMessage, Layers, ParticipantId, ServerMessage, TrackKind,
};
use residency_relay::wire::datagram::{self, Flags, Info, MediaHeader, TrackId};

fn admission(name: &str) -> Admission {
    Admission {
        conference: "c".into(),
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

fn publish(
    core: &mut Core,
    conn: residency_relay::forward::ConnId,
    kind: TrackKind,
    spatial: u8,
) -> TrackId {
    core.handle_control(
        conn,
        ClientMessage::Publish {
            request: 1,
            kind,
            codec: "x".into(),
            layers: (spatial > 1).then_some(Layers {
                spatial,
                temporal: 1,
            }),
            encrypted: false,
        },
    );
    std::iter::from_fn(|| core.poll_control())
        .find_map(|(to, m)| match m {
            ServerMessage::Published { track, .. } if to == conn => Some(track),
            _ => None,
        })
        .expect("published")
}

fuzz_target!(|data: &[u8]| {
    let mut core = Core::new(CoreConfig::default());
    let mut now = Instant::now();
    let mallory = core.admit(admission("mallory"));
    let tracks = [
        publish(&mut core, mallory, TrackKind::Video, 3),
        publish(&mut core, mallory, TrackKind::Audio, 1),
        publish(&mut core, mallory, TrackKind::Data, 1),
        TrackId(0x00ff_ffff),
    ];
    let honest = core.admit(admission("honest"));
    let audio = publish(&mut core, honest, TrackKind::Audio, 1);
    let bob = core.admit(admission("bob"));
    for t in tracks.iter().chain([&audio]) {
        core.handle_control(bob, ClientMessage::Subscribe { track: *t });
    }
    core.handle_control(
        bob,
        ClientMessage::View {
            track: tracks[0],
            width: u16::from(data.first().copied().unwrap_or(0)) * 8,
            height: u16::from(data.get(1).copied().unwrap_or(0)) * 4,
        },
    );
    let (mut sent, mut got) = (0u32, 0u32);
    for (i, r) in data.chunks(8).enumerate() {
        let b = |k: usize| r.get(k).copied().unwrap_or(0);
        let mut d = Vec::new();
        datagram::encode(
            &MediaHeader {
                track: tracks[usize::from(b(0) % 4)],
                sequence: u32::from_be_bytes([b(3), b(4), b(5), b(6)]),
                flags: Flags::default(),
                info: Info(b(2)),
            },
            &vec![0x5a; usize::from(b(7)) * 5],
            &mut d,
        );
        d[0] = b(1);
        let _ = core.handle_datagram(mallory, Bytes::from(d), now);
        let mut a = Vec::new();
        datagram::encode(
            &MediaHeader {
                track: audio,
                sequence: sent,
                flags: Flags::END_OF_FRAME,
                info: Info::audio(true, 20),
            },
            b"honest",
            &mut a,
        );
        assert!(core.handle_datagram(honest, Bytes::from(a), now).is_ok());
        sent += 1;
        while let Some(d) = core.poll_datagram(bob) {
            if datagram::parse(&d).map(|h| h.track) == Ok(audio) {
                got += 1;
            }
        }
        if i % 8 == 7 {
            now += Duration::from_millis(200);
            core.tick(now, |_| Default::default());
            while core.poll_control().is_some() {}
        }
    }
    assert_eq!(got, sent, "the honest publisher's audio was harmed");
});
