//! Layers per subscriber, audio first, sender shedding, the active speaker.

use std::time::{Duration, Instant};

use bytes::Bytes;
use proptest::prelude::*;

use super::estimate::{PathSample, TICK};
use super::*;
use crate::wire::control::{Layers as Declared, Limit, TrackKind};
use crate::wire::datagram::{Flags, Info, MediaHeader};

fn admission(name: &str) -> Admission {
    Admission {
        conference: "c".to_owned(),
        participant: ParticipantId(name.to_owned()),
        display_name: name.to_owned(),
        permissions: Permissions {
            publish: true,
            subscribe: true,
            moderate: false,
        },
        e2ee: false,
    }
}

fn datagram(track: TrackId, sequence: u32, flags: Flags, info: Info, len: usize) -> Bytes {
    let mut out = Vec::new();
    datagram::encode(
        &MediaHeader {
            track,
            sequence,
            flags,
            info,
        },
        &vec![0x5a; len],
        &mut out,
    );
    Bytes::from(out)
}

fn publish(core: &mut Core, conn: ConnId, kind: TrackKind, spatial: u8) -> TrackId {
    core.handle_control(
        conn,
        ClientMessage::Publish {
            request: 1,
            kind,
            codec: "x".into(),
            layers: (spatial > 1).then_some(Declared {
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

fn control(core: &mut Core) -> Vec<(ConnId, ServerMessage)> {
    std::iter::from_fn(|| core.poll_control()).collect()
}

fn layers_of(core: &mut Core, conn: ConnId) -> Vec<u8> {
    std::iter::from_fn(|| core.poll_datagram(conn))
        .map(|d| datagram::parse(&d).unwrap().info.spatial_layer())
        .collect()
}

/// A publisher sending three layers (one frame per layer, each of one
/// datagram, a keyframe every `gop` frames) and an audio track.
struct Sender {
    conn: ConnId,
    video: TrackId,
    audio: TrackId,
    frame: u32,
    sequence: [u32; 3],
    audio_sequence: u32,
    level: u8,
}

impl Sender {
    fn new(core: &mut Core, name: &str) -> Self {
        let conn = core.admit(admission(name));
        let video = publish(core, conn, TrackKind::Video, 3);
        let audio = publish(core, conn, TrackKind::Audio, 1);
        Sender {
            conn,
            video,
            audio,
            frame: 0,
            sequence: [0; 3],
            audio_sequence: 0,
            level: 100,
        }
    }

    /// One frame of every layer in `layers` (a keyframe if `key`), and
    /// one audio packet, at `now`.
    fn frame(&mut self, core: &mut Core, layers: &[u8], key: bool, now: Instant) {
        for &l in layers {
            let mut flags = Flags::END_OF_FRAME;
            if key {
                flags = flags | Flags::KEYFRAME;
            }
            let size = [200, 600, 1200][l as usize];
            let d = datagram(
                self.video,
                self.sequence[l as usize],
                flags,
                Info::layer(l),
                size,
            );
            self.sequence[l as usize] += 1;
            core.handle_datagram(self.conn, d, now).unwrap();
        }
        let a = datagram(
            self.audio,
            self.audio_sequence,
            Flags::END_OF_FRAME,
            Info::audio(self.level < 60, self.level),
            100,
        );
        self.audio_sequence += 1;
        core.handle_datagram(self.conn, a, now).unwrap();
        self.frame += 1;
    }
}

fn good_path(_: ConnId) -> PathSample {
    PathSample {
        rtt: Some(Duration::from_millis(20)),
        ..PathSample::default()
    }
}

/// Runs `ticks` ticks with 6 frames of each of `layers` per tick (a
/// keyframe on every layer every 30 frames, and at the start when
/// `key_first`), draining `subscribers` as a fast path would.
fn run(
    core: &mut Core,
    sender: &mut Sender,
    layers: &[u8],
    subscribers: &[ConnId],
    now: &mut Instant,
    ticks: u32,
    path: &dyn Fn(ConnId) -> PathSample,
) -> Vec<(ConnId, ServerMessage)> {
    let mut out = Vec::new();
    for _ in 0..ticks {
        for i in 0..6 {
            *now += TICK / 6;
            let key = sender.frame % 30 == 0 || i == 0;
            sender.frame(core, layers, key, *now);
        }
        for s in subscribers {
            while core.poll_datagram(*s).is_some() {}
        }
        core.tick(*now, path);
        out.extend(control(core));
    }
    out
}

#[test]
fn a_subscriber_switches_layers_only_where_a_keyframe_starts() {
    let mut core = Core::new(CoreConfig::default());
    let mut now = Instant::now();
    let mut s = Sender::new(&mut core, "alice");
    let bob = core.admit(admission("bob"));
    core.handle_control(bob, ClientMessage::Subscribe { track: s.video });
    control(&mut core);
    // Before any keyframe nothing of a layered track is forwarded.
    s.frame(&mut core, &[0, 1, 2], false, now);
    assert_eq!(layers_of(&mut core, bob), Vec::<u8>::new());
    // The lowest layer's keyframe starts it.
    s.frame(&mut core, &[0, 1, 2], true, now);
    assert_eq!(layers_of(&mut core, bob), [0]);
    // A tick on a good path aims for the top layer and asks for its keyframe.
    core.tick(now, good_path);
    let msgs = control(&mut core);
    assert!(msgs.contains(&(
        s.conn,
        ServerMessage::KeyframeRequest {
            track: s.video,
            layer: Some(2)
        }
    )));
    assert!(msgs.contains(&(
        bob,
        ServerMessage::Forwarding {
            track: s.video,
            layer: Some(2),
            limit: Limit::None
        }
    )));
    // Layer 0 goes on until layer 2's keyframe starts.
    s.frame(&mut core, &[0, 1, 2], false, now);
    assert_eq!(layers_of(&mut core, bob), [0]);
    // The keyframe's layer 0 datagram still goes (layer 0 is forwarded
    // until the switch), then layer 2's starts the switch.
    s.frame(&mut core, &[0, 1, 2], true, now);
    assert_eq!(layers_of(&mut core, bob), [0, 2]);
    s.frame(&mut core, &[0, 1, 2], false, now);
    assert_eq!(layers_of(&mut core, bob), [2]);
    assert_eq!(core.counters().layer_switches, 1);
    // A small tile: layer 0, at its next keyframe.
    core.handle_control(
        bob,
        ClientMessage::View {
            track: s.video,
            width: 320,
            height: 180,
        },
    );
    now += TICK;
    core.tick(now, good_path);
    let msgs = control(&mut core);
    assert!(msgs.contains(&(
        bob,
        ServerMessage::Forwarding {
            track: s.video,
            layer: Some(0),
            limit: Limit::View
        }
    )));
    s.frame(&mut core, &[0, 1, 2], false, now);
    assert_eq!(layers_of(&mut core, bob), [2]);
    s.frame(&mut core, &[0, 1, 2], true, now);
    assert_eq!(layers_of(&mut core, bob), [0]);
    // Hidden: no video at once, and the publisher hears no one takes any.
    core.handle_control(
        bob,
        ClientMessage::View {
            track: s.video,
            width: 0,
            height: 0,
        },
    );
    now += TICK;
    core.tick(now, good_path);
    let msgs = control(&mut core);
    assert!(msgs.contains(&(
        s.conn,
        ServerMessage::Layers {
            track: s.video,
            active: vec![]
        }
    )));
    s.frame(&mut core, &[0, 1, 2], true, now);
    assert_eq!(layers_of(&mut core, bob), Vec::<u8>::new());
}

#[test]
fn a_congested_subscriber_goes_down_fast_then_to_audio_only_and_others_keep_the_top() {
    let mut core = Core::new(CoreConfig::default());
    let mut now = Instant::now();
    let mut s = Sender::new(&mut core, "alice");
    let slow = core.admit(admission("slow"));
    let fast = core.admit(admission("fast"));
    for c in [slow, fast] {
        core.handle_control(c, ClientMessage::Subscribe { track: s.video });
        core.handle_control(c, ClientMessage::Subscribe { track: s.audio });
    }
    run(
        &mut core,
        &mut s,
        &[0, 1, 2],
        &[slow, fast],
        &mut now,
        10,
        &good_path,
    );
    // The slow path: a queue builds (RTT 300 ms above its lowest) and
    // 30 % of packets are lost.
    let lossy = std::cell::Cell::new(0u64);
    let slow_path = |c: ConnId| {
        if c != slow {
            return good_path(c);
        }
        lossy.set(lossy.get() + 100);
        PathSample {
            rtt: Some(Duration::from_millis(320)),
            lost_packets: lossy.get() * 3 / 10,
            sent_packets: lossy.get(),
            backlog_bytes: 0,
        }
    };
    let msgs = run(
        &mut core,
        &mut s,
        &[0, 1, 2],
        &[slow, fast],
        &mut now,
        15,
        &slow_path,
    );
    let told: Vec<_> = msgs
        .iter()
        .filter_map(|(to, m)| match m {
            ServerMessage::Forwarding { layer, limit, .. } if *to == slow => Some((*layer, *limit)),
            _ => None,
        })
        .collect();
    assert_eq!(
        told.last(),
        Some(&(None, Limit::Network)),
        "video paused for the slow subscriber: {told:?}"
    );
    assert!(core.counters().video_paused >= 1);
    assert!(core.counters().congested_ticks[Signal::Loss as usize] > 0);
    assert!(
        !msgs
            .iter()
            .any(|(to, m)| *to == fast && matches!(m, ServerMessage::Forwarding { .. })),
        "the fast subscriber's layer did not change"
    );
    // The slow one still gets every audio datagram, and no video.
    s.frame(&mut core, &[0, 1, 2], true, now);
    let got: Vec<Bytes> = std::iter::from_fn(|| core.poll_datagram(slow)).collect();
    assert_eq!(got.len(), 1);
    assert_eq!(datagram::parse(&got[0]).unwrap().track, s.audio);
    let fast_got: Vec<(TrackId, u8)> = std::iter::from_fn(|| core.poll_datagram(fast))
        .map(|d| {
            let h = datagram::parse(&d).unwrap();
            (h.track, h.info.spatial_layer())
        })
        .filter(|(t, _)| *t == s.video)
        .collect();
    assert_eq!(fast_got, [(s.video, 2)]);
    // The path clears: video comes back, a step at a time.
    let msgs = run(
        &mut core,
        &mut s,
        &[0, 1, 2],
        &[slow, fast],
        &mut now,
        100,
        &good_path,
    );
    let told: Vec<_> = msgs
        .iter()
        .filter_map(|(to, m)| match m {
            ServerMessage::Forwarding { layer, .. } if *to == slow => Some(*layer),
            _ => None,
        })
        .collect();
    assert_eq!(told.first(), Some(&Some(0)), "{told:?}");
    assert_eq!(told.last(), Some(&Some(2)), "{told:?}");
}

#[test]
fn publishers_send_only_the_layers_someone_takes_and_shed_what_their_uplink_loses() {
    let mut core = Core::new(CoreConfig::default());
    let mut now = Instant::now();
    let mut s = Sender::new(&mut core, "alice");
    core.tick(now, good_path);
    assert!(control(&mut core).contains(&(
        s.conn,
        ServerMessage::Layers {
            track: s.video,
            active: vec![]
        }
    )));
    let bob = core.admit(admission("bob"));
    core.handle_control(bob, ClientMessage::Subscribe { track: s.video });
    core.handle_control(
        bob,
        ClientMessage::View {
            track: s.video,
            width: 640,
            height: 360,
        },
    );
    let msgs = run(
        &mut core,
        &mut s,
        &[0, 1, 2],
        &[bob],
        &mut now,
        5,
        &good_path,
    );
    let active: Vec<_> = msgs
        .iter()
        .filter_map(|(_, m)| match m {
            ServerMessage::Layers { active, .. } => Some(active.clone()),
            _ => None,
        })
        .collect();
    assert_eq!(active.last(), Some(&vec![1]), "{active:?}");
    // Its uplink loses a third of layer 1: it is told to send layer 0 only.
    core.handle_control(
        bob,
        ClientMessage::View {
            track: s.video,
            width: 1280,
            height: 720,
        },
    );
    let mut msgs = Vec::new();
    for _ in 0..10 {
        for i in 0..6u32 {
            now += TICK / 6;
            s.frame(&mut core, &[0], i == 0, now);
            // Every third datagram of layers 1 and 2 never arrives.
            for l in [1u8, 2] {
                s.sequence[l as usize] += 1;
                if s.frame % 3 != 0 {
                    let d = datagram(
                        s.video,
                        s.sequence[l as usize],
                        Flags::END_OF_FRAME | Flags::KEYFRAME,
                        Info::layer(l),
                        800,
                    );
                    core.handle_datagram(s.conn, d, now).unwrap();
                }
            }
        }
        while core.poll_datagram(bob).is_some() {}
        core.tick(now, good_path);
        msgs.extend(control(&mut core));
    }
    assert!(core.counters().uplink_sheds >= 1);
    assert!(
        msgs.contains(&(
            bob,
            ServerMessage::Forwarding {
                track: s.video,
                layer: Some(0),
                limit: Limit::Publisher
            }
        )),
        "{msgs:?}"
    );
}

#[test]
fn the_loudest_participant_is_the_active_speaker() {
    let mut core = Core::new(CoreConfig::default());
    let mut now = Instant::now();
    let mut a = Sender::new(&mut core, "a");
    let mut b = Sender::new(&mut core, "b");
    let mut c = Sender::new(&mut core, "c");
    a.level = 100;
    b.level = 15;
    c.level = 90;
    let mut msgs = Vec::new();
    for _ in 0..10 {
        for _ in 0..10 {
            now += Duration::from_millis(20);
            for s in [&mut a, &mut b, &mut c] {
                s.frame(&mut core, &[], false, now);
            }
        }
        core.tick(now, good_path);
        msgs.extend(control(&mut core));
    }
    assert_eq!(core.active_speaker("c"), Some(&ParticipantId("b".into())));
    let told: Vec<_> = msgs
        .iter()
        .filter(|(_, m)| matches!(m, ServerMessage::ActiveSpeaker { .. }))
        .collect();
    assert_eq!(told.len(), 3, "each participant told once");
    assert_eq!(core.counters().speaker_changes, 1);
    // c speaks up, louder by more than the margin: it takes over.
    b.level = 40;
    c.level = 10;
    for _ in 0..10 {
        for _ in 0..10 {
            now += Duration::from_millis(20);
            for s in [&mut a, &mut b, &mut c] {
                s.frame(&mut core, &[], false, now);
            }
        }
        core.tick(now, good_path);
    }
    assert_eq!(core.active_speaker("c"), Some(&ParticipantId("c".into())));
}

#[test]
fn lying_headers_are_refused_and_counted() {
    let mut core = Core::new(CoreConfig::default());
    let now = Instant::now();
    let alice = core.admit(admission("alice"));
    let plain = publish(&mut core, alice, TrackKind::Video, 1);
    let layered = publish(&mut core, alice, TrackKind::Video, 2);
    let data = publish(&mut core, alice, TrackKind::Data, 1);
    for (track, info) in [
        (plain, Info::layer(1)),
        (layered, Info::layer(2)),
        (layered, Info(0b1100_0000)),
        (layered, Info(0b0000_0001)),
        (data, Info(7)),
    ] {
        let d = datagram(track, 0, Flags::KEYFRAME, info, 10);
        assert_eq!(
            core.handle_datagram(alice, d, now),
            Err(IngressDrop::BadInfo)
        );
    }
    assert_eq!(core.counters().ingress_bad_info, 5);
    // Audio takes any level.
    let audio = publish(&mut core, alice, TrackKind::Audio, 1);
    let d = datagram(audio, 0, Flags::default(), Info(0xff), 10);
    assert!(core.handle_datagram(alice, d, now).is_ok());
    // Layers on audio, or more than three, are refused.
    for (kind, spatial) in [(TrackKind::Audio, 2), (TrackKind::Video, 4)] {
        core.handle_control(
            alice,
            ClientMessage::Publish {
                request: 9,
                kind,
                codec: "x".into(),
                layers: Some(Declared {
                    spatial,
                    temporal: 1,
                }),
                encrypted: false,
            },
        );
        assert!(matches!(
            control(&mut core).as_slice(),
            [(_, ServerMessage::Error { code: 1, .. })]
        ));
    }
}

#[test]
fn a_link_gets_only_the_layers_its_peer_takes() {
    let mut core = Core::new(CoreConfig::default());
    let now = Instant::now();
    let mut s = Sender::new(&mut core, "alice");
    let link = core.admit_link("c", "peer");
    assert!(core.link_subscribe(link, s.video));
    s.frame(&mut core, &[0, 1, 2], true, now);
    assert_eq!(layers_of(&mut core, link), [0, 1, 2]);
    core.link_layers(link, s.video, 0b001);
    s.frame(&mut core, &[0, 1, 2], false, now);
    assert_eq!(layers_of(&mut core, link), [0]);
    core.tick(now, good_path);
    assert!(control(&mut core).contains(&(
        s.conn,
        ServerMessage::Layers {
            track: s.video,
            active: vec![0]
        }
    )));
}

#[test]
fn the_far_side_of_a_link_says_which_layers_it_takes() {
    let mut core = Core::new(CoreConfig::default());
    let now = Instant::now();
    let link = core.admit_link("c", "peer");
    let track = TrackId(0x0030_0001);
    assert!(core.link_publish(
        link,
        TrackInfo {
            track,
            participant: ParticipantId("remote".into()),
            kind: TrackKind::Video,
            codec: "vp8".into(),
            layers: Some(Declared {
                spatial: 3,
                temporal: 1
            }),
            encrypted: false,
        }
    ));
    let bob = core.admit(admission("bob"));
    core.handle_control(bob, ClientMessage::Subscribe { track });
    core.handle_control(
        bob,
        ClientMessage::View {
            track,
            width: 320,
            height: 180,
        },
    );
    core.tick(now, good_path);
    let requests: Vec<_> = std::iter::from_fn(|| core.poll_link_request()).collect();
    assert!(
        requests.contains(&(link, LinkRequest::Layers(track, 0b001))),
        "{requests:?}"
    );
}

proptest! {
    /// A hostile publisher's headers (any flags, layer and level bytes,
    /// sequence numbers) never panic the core, and an honest publisher's
    /// subscriber gets every one of its datagrams, whatever the ticks.
    #[test]
    fn hostile_headers_harm_no_one_else(
        junk in prop::collection::vec((any::<u8>(), any::<u8>(), any::<u32>(), 0usize..3), 1..200),
    ) {
        let mut core = Core::new(CoreConfig::default());
        let mut now = Instant::now();
        let mallory = core.admit(admission("mallory"));
        let tracks = [
            publish(&mut core, mallory, TrackKind::Video, 3),
            publish(&mut core, mallory, TrackKind::Audio, 1),
            publish(&mut core, mallory, TrackKind::Data, 1),
        ];
        let honest = core.admit(admission("honest"));
        let audio = publish(&mut core, honest, TrackKind::Audio, 1);
        let bob = core.admit(admission("bob"));
        for t in tracks.iter().chain([&audio]) {
            core.handle_control(bob, ClientMessage::Subscribe { track: *t });
        }
        let (mut got, sent) = (0, junk.len());
        for (i, (first, info, sequence, which)) in junk.into_iter().enumerate() {
            let mut d = datagram(tracks[which], sequence, Flags::default(), Info(info), 40).to_vec();
            d[0] = first;
            let _ = core.handle_datagram(mallory, Bytes::from(d), now);
            let a = datagram(audio, i as u32, Flags::default(), Info::audio(true, 20), 40);
            prop_assert!(core.handle_datagram(honest, a, now).is_ok());
            while let Some(d) = core.poll_datagram(bob) {
                if datagram::parse(&d).unwrap().track == audio {
                    got += 1;
                }
            }
            if i % 16 == 0 {
                now += TICK;
                core.tick(now, good_path);
                control(&mut core);
            }
        }
        prop_assert_eq!(got, sent);
    }
}
