use std::time::{Duration, Instant};

use bytes::Bytes;

use super::*;
use crate::wire::control::TrackKind;
use crate::wire::datagram::{Flags, MediaHeader};

fn admission(conference: &str, name: &str, publish: bool, subscribe: bool) -> Admission {
    Admission {
        conference: conference.to_owned(),
        participant: ParticipantId(name.to_owned()),
        display_name: name.to_owned(),
        permissions: Permissions {
            publish,
            subscribe,
            moderate: false,
        },
        e2ee: false,
    }
}

fn datagram(track: TrackId, sequence: u32, flags: Flags, payload: &[u8]) -> Bytes {
    let mut out = Vec::new();
    datagram::encode(
        &MediaHeader {
            track,
            sequence,
            flags,
            info: crate::wire::datagram::Info::NONE,
        },
        payload,
        &mut out,
    );
    Bytes::from(out)
}

/// Drains control messages, keeping those addressed to `to`.
fn control_for(core: &mut Core, to: ConnId) -> Vec<ServerMessage> {
    std::iter::from_fn(|| core.poll_control())
        .filter(|(c, _)| *c == to)
        .map(|(_, m)| m)
        .collect()
}

fn drain(core: &mut Core, conn: ConnId) -> Vec<Bytes> {
    std::iter::from_fn(|| core.poll_datagram(conn)).collect()
}

/// Publishes a video track from `conn` and returns its id.
fn publish(core: &mut Core, conn: ConnId) -> TrackId {
    core.handle_control(
        conn,
        ClientMessage::Publish {
            request: 1,
            kind: TrackKind::Video,
            codec: "vp8".into(),
            layers: None,
            encrypted: false,
        },
    );
    let published = std::iter::from_fn(|| core.poll_control()).find_map(|(to, m)| match m {
        ServerMessage::Published { track, .. } if to == conn => Some(track),
        _ => None,
    });
    published.expect("published")
}

#[test]
fn two_subscribers_receive_exactly_the_bytes_sent_in_order() {
    let mut core = Core::new(CoreConfig::default());
    let now = Instant::now();
    let alice = core.admit(admission("c1", "alice", true, true));
    let bob = core.admit(admission("c1", "bob", false, true));
    let carol = core.admit(admission("c1", "carol", false, true));
    let track = publish(&mut core, alice);
    core.handle_control(bob, ClientMessage::Subscribe { track });
    core.handle_control(carol, ClientMessage::Subscribe { track });
    let sent: Vec<Bytes> = (0..50)
        .map(|i| {
            datagram(
                track,
                i,
                Flags::default(),
                format!("payload {i}").as_bytes(),
            )
        })
        .collect();
    for d in &sent {
        core.handle_datagram(alice, d.clone(), now).unwrap();
    }
    let mut ready = Vec::new();
    core.take_ready(&mut ready);
    assert_eq!(ready.len(), 2);
    for sub in [bob, carol] {
        let got = drain(&mut core, sub);
        assert_eq!(got, sent);
        // Zero copy: the very buffers that arrived.
        assert!(got.iter().zip(&sent).all(|(g, s)| g.as_ptr() == s.as_ptr()));
    }
    assert!(
        drain(&mut core, alice).is_empty(),
        "a publisher does not hear itself"
    );
    assert_eq!(core.counters().deliveries, 100);
}

#[test]
fn welcome_and_presence_events() {
    let mut core = Core::new(CoreConfig::default());
    let alice = core.admit(admission("c1", "alice", true, true));
    let track = publish(&mut core, alice);
    let bob = core.admit(admission("c1", "bob", true, true));
    let to_bob = control_for(&mut core, bob);
    assert!(
        matches!(&to_bob[0], ServerMessage::Welcome { tracks, .. } if tracks.len() == 1 && tracks[0].track == track)
    );
    core.handle_closed(alice);
    let to_bob = control_for(&mut core, bob);
    assert!(to_bob.contains(&ServerMessage::TrackUnpublished { track }));
    assert!(to_bob.contains(&ServerMessage::ParticipantLeft {
        participant: ParticipantId("alice".into())
    }));
}

#[test]
fn permissions_and_ownership_are_enforced() {
    let mut core = Core::new(CoreConfig::default());
    let now = Instant::now();
    let alice = core.admit(admission("c1", "alice", true, true));
    let viewer = core.admit(admission("c1", "viewer", false, true));
    let deaf = core.admit(admission("c1", "deaf", true, false));
    let track = publish(&mut core, alice);

    core.handle_control(
        viewer,
        ClientMessage::Publish {
            request: 2,
            kind: TrackKind::Audio,
            codec: "opus".into(),
            layers: None,
            encrypted: false,
        },
    );
    assert!(
        control_for(&mut core, viewer)
            .iter()
            .any(|m| matches!(m, ServerMessage::Error { code: 2, .. }))
    );
    core.handle_control(deaf, ClientMessage::Subscribe { track });
    assert!(
        control_for(&mut core, deaf)
            .iter()
            .any(|m| matches!(m, ServerMessage::Error { code: 2, .. }))
    );

    // A datagram on someone else's track, on an unknown track, malformed.
    assert_eq!(
        core.handle_datagram(viewer, datagram(track, 1, Flags::default(), b"x"), now),
        Err(IngressDrop::NotOwner)
    );
    assert_eq!(
        core.handle_datagram(
            alice,
            datagram(TrackId(999), 1, Flags::default(), b"x"),
            now
        ),
        Err(IngressDrop::UnknownTrack)
    );
    assert!(matches!(
        core.handle_datagram(alice, Bytes::from_static(b"\x20\x00"), now),
        Err(IngressDrop::Malformed(_))
    ));
    let c = core.counters();
    assert_eq!(
        (
            c.ingress_not_owner,
            c.ingress_unknown_track,
            c.ingress_malformed
        ),
        (1, 1, 1)
    );
    assert_eq!(c.deliveries, 0);
}

#[test]
fn tracks_of_another_conference_are_invisible() {
    let mut core = Core::new(CoreConfig::default());
    let alice = core.admit(admission("c1", "alice", true, true));
    let mallory = core.admit(admission("c2", "mallory", true, true));
    let track = publish(&mut core, alice);
    assert!(
        control_for(&mut core, mallory)
            .iter()
            .all(|m| !matches!(m, ServerMessage::TrackPublished(_)))
    );
    core.handle_control(mallory, ClientMessage::Subscribe { track });
    assert!(
        control_for(&mut core, mallory)
            .iter()
            .any(|m| matches!(m, ServerMessage::Error { code: 3, .. }))
    );
    core.handle_datagram(
        alice,
        datagram(track, 1, Flags::default(), b"secret"),
        Instant::now(),
    )
    .unwrap();
    assert!(drain(&mut core, mallory).is_empty());
}

#[test]
fn a_stalled_subscriber_harms_no_one_and_triggers_keyframe_requests() {
    let config = CoreConfig {
        queue_packets: 8,
        ..CoreConfig::default()
    };
    let mut core = Core::new(config);
    let start = Instant::now();
    let alice = core.admit(admission("c1", "alice", true, true));
    let fast = core.admit(admission("c1", "fast", false, true));
    let stalled = core.admit(admission("c1", "stalled", false, true));
    let track = publish(&mut core, alice);
    core.handle_control(fast, ClientMessage::Subscribe { track });
    core.handle_control(stalled, ClientMessage::Subscribe { track });
    while core.poll_control().is_some() {}

    let mut fast_got = 0;
    for i in 0..100u32 {
        let flags = if i % 10 == 0 {
            Flags::KEYFRAME
        } else {
            Flags::default()
        };
        let now = start + Duration::from_millis(u64::from(i) * 10);
        core.handle_datagram(alice, datagram(track, i, flags, b"frame"), now)
            .unwrap();
        fast_got += drain(&mut core, fast).len();
    }
    assert_eq!(fast_got, 100, "the fast subscriber lost nothing");
    let stalled_got = drain(&mut core, stalled);
    assert_eq!(
        stalled_got.len(),
        8,
        "the stalled one holds at most its queue"
    );
    let drops: u64 = core.counters().queue_drops.iter().sum();
    assert_eq!(drops, 92);
    // One keyframe request per 500 ms of simulated time at most: 1 s → 2.
    let requests = control_for(&mut core, alice)
        .into_iter()
        .filter(|m| matches!(m, ServerMessage::KeyframeRequest { track: t, .. } if *t == track))
        .count();
    assert_eq!(requests, 2);
    assert_eq!(core.counters().keyframe_requests, 2);
}

#[test]
fn closed_connections_stop_receiving_and_their_ids_go_stale() {
    let mut core = Core::new(CoreConfig::default());
    let now = Instant::now();
    let alice = core.admit(admission("c1", "alice", true, true));
    let bob = core.admit(admission("c1", "bob", false, true));
    let track = publish(&mut core, alice);
    core.handle_control(bob, ClientMessage::Subscribe { track });
    core.handle_datagram(alice, datagram(track, 1, Flags::default(), b"x"), now)
        .unwrap();
    core.handle_closed(bob);
    assert!(core.poll_datagram(bob).is_none());
    // The slot is reused with a new generation; the old id reaches nothing.
    let dave = core.admit(admission("c1", "dave", true, true));
    assert_ne!(dave, bob);
    assert!(core.participant(bob).is_none());
    assert_eq!(
        core.handle_datagram(bob, datagram(track, 2, Flags::default(), b"x"), now),
        Err(IngressDrop::UnknownConnection)
    );
    core.handle_datagram(alice, datagram(track, 3, Flags::default(), b"x"), now)
        .unwrap();
    assert!(drain(&mut core, dave).is_empty(), "dave never subscribed");
    core.handle_control(alice, ClientMessage::Leave {});
    assert_eq!(core.connections(), 1);
    assert_eq!(
        core.handle_datagram(alice, datagram(track, 4, Flags::default(), b"x"), now),
        Err(IngressDrop::UnknownConnection)
    );
}

#[test]
fn track_limit_per_participant() {
    let mut core = Core::new(CoreConfig {
        max_tracks_per_participant: 2,
        ..CoreConfig::default()
    });
    let alice = core.admit(admission("c1", "alice", true, true));
    publish(&mut core, alice);
    publish(&mut core, alice);
    core.handle_control(
        alice,
        ClientMessage::Publish {
            request: 3,
            kind: TrackKind::Data,
            codec: "x".into(),
            layers: None,
            encrypted: false,
        },
    );
    assert!(
        control_for(&mut core, alice)
            .iter()
            .any(|m| matches!(m, ServerMessage::Error { code: 4, .. }))
    );
}

#[test]
fn a_connection_drained_by_length_is_ready_again_for_the_next_datagram() {
    let mut core = Core::new(CoreConfig::default());
    let now = Instant::now();
    let alice = core.admit(admission("c1", "alice", true, true));
    let bob = core.admit(admission("c1", "bob", false, true));
    let track = publish(&mut core, alice);
    core.handle_control(bob, ClientMessage::Subscribe { track });
    let mut ready = Vec::new();
    for round in 0..3u32 {
        core.handle_datagram(alice, datagram(track, round, Flags::default(), b"x"), now)
            .unwrap();
        core.take_ready(&mut ready);
        assert_eq!(ready, [bob], "round {round}");
        // The shell's way: look at the length, then take, until nothing is left.
        for conn in ready.drain(..) {
            while core.next_datagram_len(conn).is_some() {
                core.poll_datagram(conn).unwrap();
            }
        }
    }
}

#[test]
fn a_large_conference_is_welcomed_in_frames_that_fit() {
    let mut core = Core::new(CoreConfig {
        max_tracks_per_participant: 8,
        ..CoreConfig::default()
    });
    let mut published = Vec::new();
    for p in 0..20 {
        let c = core.admit(admission(
            "c1",
            &format!("publisher-{p:02}-{}", "x".repeat(40)),
            true,
            true,
        ));
        for _ in 0..5 {
            published.push(publish(&mut core, c));
        }
    }
    while core.poll_control().is_some() {}
    let late = core.admit(admission("c1", "late", false, true));
    let mut seen = Vec::new();
    for m in control_for(&mut core, late) {
        let mut frame = Vec::new();
        crate::wire::control::encode(&m, &mut frame).expect("every message fits a control frame");
        match m {
            ServerMessage::Welcome { tracks, .. } => {
                assert_eq!(tracks.len(), MAX_WELCOME_TRACKS);
                seen.extend(tracks.iter().map(|t| t.track));
            }
            ServerMessage::TrackPublished(info) => seen.push(info.track),
            _ => {}
        }
    }
    seen.sort();
    published.sort();
    assert_eq!(seen, published);
}

#[test]
fn keyframe_requests_go_to_the_publisher_whose_video_was_evicted() {
    let mut core = Core::new(CoreConfig {
        queue_packets: 4,
        ..CoreConfig::default()
    });
    let now = Instant::now();
    let video = core.admit(admission("c1", "video", true, true));
    let audio = core.admit(admission("c1", "audio", true, true));
    let sub = core.admit(admission("c1", "sub", false, true));
    let v = publish(&mut core, video);
    core.handle_control(
        audio,
        ClientMessage::Publish {
            request: 9,
            kind: TrackKind::Audio,
            codec: "opus".into(),
            layers: None,
            encrypted: false,
        },
    );
    let a = std::iter::from_fn(|| core.poll_control())
        .find_map(|(to, m)| match m {
            ServerMessage::Published { track, .. } if to == audio => Some(track),
            _ => None,
        })
        .unwrap();
    core.handle_control(sub, ClientMessage::Subscribe { track: v });
    core.handle_control(sub, ClientMessage::Subscribe { track: a });
    while core.poll_control().is_some() {}
    // Four video non-keyframes fill the stalled subscriber's queue; audio
    // arriving next evicts the oldest video datagram.
    for i in 0..4 {
        core.handle_datagram(video, datagram(v, i, Flags::default(), b"v"), now)
            .unwrap();
    }
    core.handle_datagram(audio, datagram(a, 0, Flags::default(), b"a"), now)
        .unwrap();
    let requests: Vec<(ConnId, ServerMessage)> =
        std::iter::from_fn(|| core.poll_control()).collect();
    assert_eq!(
        requests,
        vec![(
            video,
            ServerMessage::KeyframeRequest {
                track: v,
                layer: None
            }
        )]
    );
    // Evicting audio asks no one for a keyframe.
    for i in 1..6 {
        core.handle_datagram(
            audio,
            datagram(a, i, Flags::default(), b"a"),
            now + Duration::from_secs(1),
        )
        .unwrap();
    }
    let more: Vec<_> = std::iter::from_fn(|| core.poll_control())
        .filter(|(to, _)| *to == audio)
        .collect();
    assert!(more.is_empty(), "{more:?}");
}

/// Two relays' cores joined by a link (as the shells would, by hand): a
/// track published on A reaches B's subscriber with one copy crossing the
/// link, B asks only for what its subscribers want, and nothing that came
/// over a link is offered to another link.
#[test]
fn a_cascade_link_carries_one_copy_of_subscribed_tracks_only() {
    let config = |base| CoreConfig {
        track_id_base: base,
        ..CoreConfig::default()
    };
    let mut a = Core::new(config(track_id_base(0)));
    let mut b = Core::new(config(track_id_base(1)));
    let publisher = a.admit(admission("c", "p", true, true));
    let video = publish(&mut a, publisher);
    let unwanted = publish(&mut a, publisher);
    assert_eq!(video.0 >> TRACK_COUNTER_BITS, 1, "A's ids carry A's base");
    while a.poll_control().is_some() {}

    // The link, on both sides; A announces its participants' tracks.
    let a_link = a.admit_link("c", "b");
    let b_link = b.admit_link("c", "a");
    let announced: Vec<TrackInfo> = control_for(&mut a, a_link)
        .into_iter()
        .filter_map(|m| match m {
            ServerMessage::TrackPublished(info) => Some(info),
            _ => None,
        })
        .collect();
    assert_eq!(announced.len(), 2);
    let s1 = b.admit(admission("c", "s1", false, true));
    let s2 = b.admit(admission("c", "s2", false, true));
    while b.poll_control().is_some() {}
    // A's side learns who takes part at B (s1, s2): their names cross once.
    let joined: Vec<_> = std::iter::from_fn(|| b.poll_link_request()).collect();
    assert_eq!(joined.len(), 2);
    assert!(
        joined
            .iter()
            .all(|(to, r)| *to == b_link && matches!(r, LinkRequest::ParticipantJoined { .. }))
    );
    for info in announced {
        assert!(b.link_publish(b_link, info));
    }
    // B's participants see A's tracks under the same ids.
    let seen = control_for(&mut b, s1);
    assert!(seen.contains(&ServerMessage::TrackPublished(
        b.tracks[&video].info.clone()
    )));

    // Two subscribers on B: one request to A; the other track is never asked for.
    for s in [s1, s2] {
        b.handle_control(s, ClientMessage::Subscribe { track: video });
    }
    let requests: Vec<_> = std::iter::from_fn(|| b.poll_link_request()).collect();
    assert_eq!(requests, vec![(b_link, LinkRequest::Subscribe(video))]);
    assert!(a.link_subscribe(a_link, video));

    // One datagram from the publisher: one copy for the link, two on B.
    let d = datagram(video, 7, Flags::KEYFRAME, b"opaque");
    a.handle_datagram(publisher, d.clone(), Instant::now())
        .unwrap();
    a.handle_datagram(
        publisher,
        datagram(unwanted, 1, Flags::default(), b"x"),
        Instant::now(),
    )
    .unwrap();
    let crossing = drain(&mut a, a_link);
    assert_eq!(crossing, vec![d.clone()]);
    b.handle_datagram(b_link, crossing[0].clone(), Instant::now())
        .unwrap();
    assert_eq!(drain(&mut b, s1), vec![d.clone()]);
    assert_eq!(drain(&mut b, s2), vec![d.clone()]);
    assert_eq!(a.link_stats()[0].bytes_out, d.len() as u64);

    // Split horizon: a second link on B is told nothing of A's tracks and
    // may not subscribe to them.
    let b_link_c = b.admit_link("c", "c");
    assert!(control_for(&mut b, b_link_c).is_empty());
    assert!(!b.link_subscribe(b_link_c, video));
    // A link may not publish an id already in use, nor subscribe to a track
    // of another conference.
    assert!(!b.link_publish(b_link_c, b.tracks[&video].info.clone()));
    let other = a.admit(admission("d", "q", true, true));
    let elsewhere = publish(&mut a, other);
    assert!(!a.link_subscribe(a_link, elsewhere));

    // The link goes down and a new one comes up: the subscribers here get
    // the track back without asking, and the new link is asked for it.
    let info = b.tracks[&video].info.clone();
    b.handle_closed(b_link);
    while b.poll_link_request().is_some() {}
    assert!(!b.tracks.contains_key(&video));
    while b.poll_control().is_some() {}
    let b_link2 = b.admit_link("c", "a");
    assert!(b.link_publish(b_link2, info));
    assert!(control_for(&mut b, s1).contains(&ServerMessage::Subscribed { track: video }));
    let requests: Vec<_> = std::iter::from_fn(|| b.poll_link_request()).collect();
    assert!(
        requests.contains(&(b_link2, LinkRequest::Subscribe(video))),
        "{requests:?}"
    );
    assert_eq!(
        requests
            .iter()
            .filter(|(_, r)| matches!(r, LinkRequest::ParticipantJoined { .. }))
            .count(),
        2,
        "the new link's peer learns who is here"
    );
    let b_link = b_link2;
    b.handle_datagram(b_link, d.clone(), Instant::now())
        .unwrap();
    assert_eq!(drain(&mut b, s1), vec![d.clone()]);
    assert_eq!(drain(&mut b, s2), vec![d.clone()]);

    // The last subscriber leaving withdraws the request.
    b.handle_control(s1, ClientMessage::Unsubscribe { track: video });
    assert!(b.poll_link_request().is_none());
    b.handle_closed(s2);
    assert_eq!(
        b.poll_link_request(),
        Some((b_link, LinkRequest::Unsubscribe(video)))
    );
    // Participants count without links.
    assert_eq!(b.participants(), 1);
    assert_eq!(b.conference_stats()[0].participants, 1);
}

#[test]
fn cores_sharing_a_base_assign_disjoint_track_ids() {
    let mut seen = std::collections::HashSet::new();
    for index in 0..3u32 {
        let mut core = Core::new(CoreConfig {
            track_id_base: crate::forward::track_id_base(5),
            track_id_share: (index, 3),
            ..CoreConfig::default()
        });
        let id = core.admit(Admission {
            conference: "c".into(),
            participant: ParticipantId("p".into()),
            display_name: "p".into(),
            permissions: Permissions {
                publish: true,
                subscribe: true,
                moderate: false,
            },
            e2ee: false,
        });
        for _ in 0..5 {
            core.handle_control(
                id,
                ClientMessage::Publish {
                    request: 1,
                    kind: TrackKind::Audio,
                    codec: "opus".into(),
                    layers: None,
                    encrypted: false,
                },
            );
        }
        while let Some((_, m)) = core.poll_control() {
            if let ServerMessage::Published { track, .. } = m {
                assert_eq!(track.0 >> crate::forward::TRACK_COUNTER_BITS, 6);
                assert!(seen.insert(track), "{track:?} assigned twice");
            }
        }
    }
    assert_eq!(seen.len(), 15);
}

#[test]
fn a_subscriber_that_lost_a_fragment_asks_the_publisher_for_a_keyframe_at_a_bounded_rate() {
    let mut core = Core::new(CoreConfig::default());
    let now = Instant::now();
    let publisher = core.admit(admission("c1", "pub", true, true));
    let sub = core.admit(admission("c1", "sub", false, true));
    let other = core.admit(admission("c1", "other", false, true));
    let v = publish(&mut core, publisher);
    core.handle_control(sub, ClientMessage::Subscribe { track: v });
    core.handle_control(other, ClientMessage::Subscribe { track: v });
    while core.poll_control().is_some() {}
    let ask = |core: &mut Core, who: ConnId, at: Instant| {
        core.handle_control_at(who, ClientMessage::KeyframeRequest { track: v }, at);
        std::iter::from_fn(|| core.poll_control()).collect::<Vec<_>>()
    };
    assert_eq!(
        ask(&mut core, sub, now),
        vec![(
            publisher,
            ServerMessage::KeyframeRequest {
                track: v,
                layer: None
            }
        )]
    );
    // Another subscriber asking within the interval adds nothing.
    assert_eq!(
        ask(&mut core, other, now + Duration::from_millis(100)),
        vec![]
    );
    let later = now + CoreConfig::default().keyframe_request_interval;
    assert_eq!(
        ask(&mut core, other, later),
        vec![(
            publisher,
            ServerMessage::KeyframeRequest {
                track: v,
                layer: None
            }
        )]
    );
    assert_eq!(core.counters().keyframe_requests, 2);
    // Only a subscriber of the track may ask.
    let requests = ask(&mut core, publisher, later + Duration::from_secs(5));
    assert!(
        matches!(&requests[..], [(to, ServerMessage::Error { code, .. })] if *to == publisher && *code == ErrorCode::UnknownTrack.code()),
        "{requests:?}"
    );
}

fn e2ee_admission(conference: &str, name: &str) -> Admission {
    Admission {
        e2ee: true,
        ..admission(conference, name, true, true)
    }
}

fn publish_declared(core: &mut Core, conn: ConnId, encrypted: bool) -> Vec<ServerMessage> {
    core.handle_control(
        conn,
        ClientMessage::Publish {
            request: 7,
            kind: TrackKind::Audio,
            codec: "opus".into(),
            layers: None,
            encrypted,
        },
    );
    control_for(core, conn)
}

#[test]
fn an_e2ee_conference_refuses_tracks_not_declared_encrypted() {
    let mut core = Core::new(CoreConfig::default());
    let alice = core.admit(e2ee_admission("c", "alice"));
    let bob = core.admit(e2ee_admission("c", "bob"));
    while core.poll_control().is_some() {}
    let refused = publish_declared(&mut core, alice, false);
    assert!(
        matches!(refused.as_slice(), [ServerMessage::Error { code: 8, .. }]),
        "{refused:?}"
    );
    assert!(core.tracks.is_empty());
    let answer = publish_declared(&mut core, alice, true);
    assert!(matches!(
        answer.as_slice(),
        [ServerMessage::Published { .. }]
    ));
    let (_, info) = core.tracks.iter().next().unwrap();
    assert!(info.info.encrypted, "subscribers learn it is encrypted");
    assert!(
        core.tracks
            .values()
            .all(|t| t.info.participant.0 == "alice")
    );
    let _ = bob;

    // A link may not bring an undeclared track into it either.
    let link = core.admit_link("c", "peer");
    let plain = TrackInfo {
        track: TrackId(track_id_base(9) | 1),
        participant: ParticipantId("far".into()),
        kind: TrackKind::Video,
        codec: "vp8".into(),
        layers: None,
        encrypted: false,
    };
    assert!(!core.link_publish(link, plain.clone()));
    assert!(core.link_publish(
        link,
        TrackInfo {
            encrypted: true,
            ..plain
        }
    ));
    // Conferences without e2ee take either.
    let carol = core.admit(admission("other", "carol", true, true));
    while core.poll_control().is_some() {}
    let answer = publish_declared(&mut core, carol, false);
    assert!(matches!(
        answer.as_slice(),
        [ServerMessage::Published { .. }]
    ));
}

#[test]
fn e2ee_messages_reach_their_recipients_here_and_beyond_links_unread() {
    let mut core = Core::new(CoreConfig::default());
    let alice = core.admit(e2ee_admission("c", "alice"));
    let bob = core.admit(e2ee_admission("c", "bob"));
    let carol = core.admit(e2ee_admission("c", "carol"));
    let elsewhere = core.admit(e2ee_admission("d", "dave"));
    let link = core.admit_link("c", "peer");
    while core.poll_control().is_some() {}
    while core.poll_link_request().is_some() {}
    let message = |to: Option<&str>, data: &str| ClientMessage::E2ee {
        to: to.map(|t| ParticipantId(t.into())),
        data: data.into(),
    };
    let from_alice = |data: &str| ServerMessage::E2ee {
        from: ParticipantId("alice".into()),
        host: false,
        data: data.into(),
    };

    // To everyone: both others here, and over the link; not to another conference.
    core.handle_control(alice, message(None, "AQID"));
    let sent: Vec<(ConnId, ServerMessage)> = std::iter::from_fn(|| core.poll_control()).collect();
    assert_eq!(
        sent,
        vec![(bob, from_alice("AQID")), (carol, from_alice("AQID"))]
    );
    let onward: Vec<_> = std::iter::from_fn(|| core.poll_link_request()).collect();
    assert_eq!(
        onward,
        vec![(
            link,
            LinkRequest::E2ee {
                from: ParticipantId("alice".into()),
                host: false,
                to: None,
                data: "AQID".into()
            }
        )]
    );

    // To one participant here: only them, and not over the link.
    core.handle_control(alice, message(Some("carol"), "BAUG"));
    let sent: Vec<_> = std::iter::from_fn(|| core.poll_control()).collect();
    assert_eq!(sent, vec![(carol, from_alice("BAUG"))]);
    assert!(core.poll_link_request().is_none());
    // To someone not here: over the link, where they may be.
    core.handle_control(alice, message(Some("zed"), "BAUG"));
    assert!(core.poll_control().is_none());
    assert_eq!(core.poll_link_request().map(|(to, _)| to), Some(link));

    // From the link: delivered here, never sent back over a link.
    assert!(core.link_e2ee(
        link,
        ParticipantId("far".into()),
        true,
        Some(ParticipantId("bob".into())),
        "Bwg".into()
    ));
    let sent: Vec<_> = std::iter::from_fn(|| core.poll_control()).collect();
    assert_eq!(
        sent,
        vec![(
            bob,
            ServerMessage::E2ee {
                from: ParticipantId("far".into()),
                host: true,
                data: "Bwg".into()
            }
        )]
    );
    assert!(core.poll_link_request().is_none());
    assert_eq!(core.counters().e2ee_messages, 4);

    // Not base64url, empty or too long: refused with an error, sent nowhere.
    for bad in ["", "a b", "a=", &"A".repeat(513)] {
        core.handle_control(alice, message(None, bad));
        let sent = control_for(&mut core, alice);
        assert!(matches!(
            sent.as_slice(),
            [ServerMessage::Error { code: 1, .. }]
        ));
        assert!(core.poll_link_request().is_none());
    }
    assert!(!core.link_e2ee(link, ParticipantId("far".into()), false, None, "%%".into()));
    let _ = elsewhere;
}

#[test]
fn participants_cross_links_by_name_and_a_link_going_down_lists_who_left() {
    let mut a = Core::new(CoreConfig::default());
    let mut b = Core::new(CoreConfig::default());
    let ada = a.admit(admission("c", "ada", true, true));
    let a_link = a.admit_link("c", "b");
    let b_link = b.admit_link("c", "a");
    // A's link tells B of ada; B's participants see her join, by name.
    let to_b: Vec<_> = std::iter::from_fn(|| a.poll_link_request()).collect();
    assert_eq!(
        to_b,
        vec![(
            a_link,
            LinkRequest::ParticipantJoined {
                participant: ParticipantId("ada".into()),
                display_name: "ada".into()
            }
        )]
    );
    let bo = b.admit(admission("c", "bo", true, true));
    while b.poll_control().is_some() {}
    assert!(b.link_participant_joined(b_link, ParticipantId("ada".into()), "ada".into()));
    assert!(!b.link_participant_joined(b_link, ParticipantId("ada".into()), "ada".into()));
    assert_eq!(
        control_for(&mut b, bo),
        vec![ServerMessage::ParticipantJoined {
            participant: ParticipantId("ada".into()),
            display_name: "ada".into()
        }]
    );
    // A newcomer at B hears of ada among those present.
    let cy = b.admit(admission("c", "cy", true, true));
    let seen = control_for(&mut b, cy);
    assert!(seen.contains(&ServerMessage::ParticipantJoined {
        participant: ParticipantId("ada".into()),
        display_name: "ada".into()
    }));
    // B's own participants cross to A (bo and cy), never back to B.
    let to_a: Vec<_> = std::iter::from_fn(|| b.poll_link_request()).collect();
    assert_eq!(to_a.len(), 2, "{to_a:?}");
    // Ada leaves: A tells the link; B's participants see her go.
    a.handle_closed(ada);
    assert_eq!(
        a.poll_link_request(),
        Some((
            a_link,
            LinkRequest::ParticipantLeft {
                participant: ParticipantId("ada".into())
            }
        ))
    );
    assert!(b.link_participant_left(b_link, ParticipantId("ada".into())));
    assert!(
        control_for(&mut b, bo).contains(&ServerMessage::ParticipantLeft {
            participant: ParticipantId("ada".into())
        })
    );
    // The link going down: everyone it had announced left.
    assert!(b.link_participant_joined(b_link, ParticipantId("dee".into()), "dee".into()));
    while b.poll_control().is_some() {}
    b.handle_closed(b_link);
    assert!(
        control_for(&mut b, bo).contains(&ServerMessage::ParticipantLeft {
            participant: ParticipantId("dee".into())
        })
    );
    // Only links may announce.
    assert!(!b.link_participant_joined(bo, ParticipantId("x".into()), "x".into()));
}

#[test]
fn e2ee_messages_say_whether_a_host_sent_them_and_never_cross_two_links() {
    let mut core = Core::new(CoreConfig::default());
    let host = core.admit(Admission {
        permissions: Permissions {
            publish: true,
            subscribe: true,
            moderate: true,
        },
        ..e2ee_admission("c", "hana")
    });
    let guest = core.admit(e2ee_admission("c", "gus"));
    let l1 = core.admit_link("c", "one");
    let l2 = core.admit_link("c", "two");
    while core.poll_control().is_some() {}
    while core.poll_link_request().is_some() {}
    core.handle_control(
        host,
        ClientMessage::E2ee {
            to: None,
            data: "AQID".into(),
        },
    );
    assert_eq!(
        control_for(&mut core, guest),
        vec![ServerMessage::E2ee {
            from: ParticipantId("hana".into()),
            host: true,
            data: "AQID".into()
        }]
    );
    let onward: Vec<ConnId> = std::iter::from_fn(|| core.poll_link_request())
        .map(|(to, _)| to)
        .collect();
    assert_eq!(onward, vec![l1, l2], "to each link once");
    // From one link: to the participants here, not to the other link.
    assert!(core.link_e2ee(l1, ParticipantId("far".into()), false, None, "BAUG".into()));
    assert_eq!(control_for(&mut core, guest).len(), 1);
    assert!(core.poll_link_request().is_none());
    // A guest claims nothing: the relay says it is not a host.
    core.handle_control(
        guest,
        ClientMessage::E2ee {
            to: Some(ParticipantId("hana".into())),
            data: "AQID".into(),
        },
    );
    assert_eq!(
        control_for(&mut core, host),
        vec![ServerMessage::E2ee {
            from: ParticipantId("gus".into()),
            host: false,
            data: "AQID".into()
        }]
    );
}
