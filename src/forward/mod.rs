//! The forwarding core: a sans-IO state machine of conferences, participants,
//! tracks and subscriptions.
//!
//! Inputs: a participant admitted (its ticket already verified by the
//! shell), a control message, a datagram, a connection closed, each with the
//! time passed in. Outputs: per-connection datagram queues the shell drains
//! as each connection can send ([`Core::poll_datagram`]), control messages
//! ([`Core::poll_control`]), and counters. No sockets, no clock reads, no
//! tokio.
//!
//! Fan-out clones the received `Bytes` (a reference count), never the
//! payload, and a steady-state datagram allocates nothing. A slow subscriber
//! only ever fills its own bounded queue: the publisher and other subscribers
//! are not slowed, and every drop is counted by reason.

pub mod estimate;
pub mod layers;
mod queue;

use std::collections::HashMap;
use std::hash::{BuildHasherDefault, Hasher};
use std::time::{Duration, Instant};

use bytes::Bytes;

pub use estimate::{PathSample, Signal};
pub use queue::{DropReason, Dropped, Queue};

use crate::wire::ErrorCode;
use crate::wire::control::{
    ClientMessage, Layers, Limit, ParticipantId, ServerMessage, TrackInfo, TrackKind,
    valid_e2ee_data,
};
use crate::wire::datagram::{self, DatagramError, MAX_LAYERS, TrackId};
use estimate::Estimator;

/// Tracks one link may announce.
pub const MAX_LINK_TRACKS: usize = 4096;

/// Participants one link may announce.
pub const MAX_LINK_PARTICIPANTS: usize = 4096;

/// Tracks a participant waits to get back after a link went down.
const MAX_RESUME: usize = 64;

/// Tracks listed in a `welcome` (each is at most ~250 bytes of JSON with
/// 64-byte labels, so 48 stay well inside a 16 KiB control frame).
pub const MAX_WELCOME_TRACKS: usize = 48;

/// A connection as the core knows it: an index into its slab and a
/// generation, so a stale id never reaches a newer connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct ConnId {
    index: u32,
    generation: u32,
}

/// What a participant's ticket allows.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Permissions {
    pub publish: bool,
    pub subscribe: bool,
    pub moderate: bool,
}

/// A participant whose ticket the shell has verified.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Admission {
    pub conference: String,
    pub participant: ParticipantId,
    pub display_name: String,
    pub permissions: Permissions,
    /// The ticket says the conference is end-to-end encrypted: tracks not
    /// declared encrypted are refused.
    pub e2ee: bool,
}

/// Limits of the core.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CoreConfig {
    /// Datagrams queued per subscriber before the drop policy applies.
    pub queue_packets: usize,
    /// Tracks one participant may publish.
    pub max_tracks_per_participant: usize,
    /// Least time between two keyframe requests for one track.
    pub keyframe_request_interval: Duration,
    /// Added to every track id this core assigns (its high 12 bits), so the
    /// relays of a cascade never assign the same id: a track keeps its id
    /// across links and no header is rewritten.
    pub track_id_base: u32,
    /// `(index, count)`: this core is one of `count` cores sharing
    /// `track_id_base` (the relay's shards), and assigns only the
    /// `index`-th of `count` equal parts of the counter's range, so no two
    /// of them ever assign the same id. `(0, 1)`: the whole range.
    pub track_id_share: (u32, u32),
}

impl CoreConfig {
    /// The counter values this core assigns: `lo..hi`, never 0.
    fn track_counter_range(&self) -> (u32, u32) {
        let total = 1u32 << TRACK_COUNTER_BITS;
        let count = self.track_id_share.1.clamp(1, total / 2);
        let index = self.track_id_share.0.min(count - 1);
        let span = total / count;
        let lo = (index * span).max(1);
        let hi = if index + 1 == count {
            total
        } else {
            (index + 1) * span
        };
        (lo, hi)
    }
}

/// Bits of a track id the core's own counter uses; the rest is
/// [`CoreConfig::track_id_base`].
pub const TRACK_COUNTER_BITS: u32 = 20;

/// The `track_id_base` for the relay at `index` in the inventory.
pub fn track_id_base(index: usize) -> u32 {
    ((index % 4095) as u32 + 1) << TRACK_COUNTER_BITS
}

/// What a cascade link's peer is asked for (the shell sends it over the link).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LinkRequest {
    /// Someone here subscribed to this track of the peer's: send it.
    Subscribe(TrackId),
    /// Nobody here wants it any more.
    Unsubscribe(TrackId),
    /// A subscriber here lost reference data, or switches layers: ask its
    /// publisher for a keyframe (of this spatial layer, when given).
    KeyframeRequest(TrackId, Option<u8>),
    /// The subscribers here take these spatial layers of the peer's track
    /// (bitmask): send no others.
    Layers(TrackId, u8),
    /// A participant's `e2ee` message for participants beyond the link.
    E2ee {
        from: ParticipantId,
        host: bool,
        to: Option<ParticipantId>,
        data: String,
    },
    /// A participant here joined: the peer's participants see it.
    ParticipantJoined {
        participant: ParticipantId,
        display_name: String,
    },
    /// A participant here left.
    ParticipantLeft { participant: ParticipantId },
}

/// What one cascade link moved.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LinkStats {
    pub conference: String,
    /// The peer relay's id.
    pub peer: String,
    /// Media bytes received from the peer and sent to it.
    pub bytes_in: u64,
    pub bytes_out: u64,
}

impl Default for CoreConfig {
    fn default() -> Self {
        CoreConfig {
            queue_packets: 256,
            max_tracks_per_participant: 8,
            keyframe_request_interval: Duration::from_millis(500),
            track_id_base: 0,
            track_id_share: (0, 1),
        }
    }
}

/// Why a received datagram was not forwarded (ingress drops).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum IngressDrop {
    Malformed(DatagramError),
    /// From a connection that is not (or no longer) admitted.
    UnknownConnection,
    UnknownTrack,
    /// A track published by someone else.
    NotOwner,
    /// The header's `info` byte does not fit the track: a layer the track
    /// did not declare, or bits that must be zero.
    BadInfo,
}

impl IngressDrop {
    pub fn code(self) -> &'static str {
        match self {
            IngressDrop::Malformed(e) => e.code(),
            IngressDrop::UnknownConnection => "unknown_connection",
            IngressDrop::UnknownTrack => "unknown_track",
            IngressDrop::NotOwner => "not_owner",
            IngressDrop::BadInfo => "bad_info",
        }
    }
}

/// Running totals; the shell exports them as metrics.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Counters {
    pub datagrams_received: u64,
    pub bytes_received: u64,
    /// Datagram copies queued for subscribers.
    pub deliveries: u64,
    pub bytes_delivered: u64,
    pub ingress_malformed: u64,
    pub ingress_unknown_connection: u64,
    pub ingress_unknown_track: u64,
    pub ingress_not_owner: u64,
    pub ingress_bad_info: u64,
    /// Subscriber-queue drops, indexed by [`DropReason::index`].
    pub queue_drops: [u64; DropReason::COUNT],
    pub keyframe_requests: u64,
    pub control_errors: u64,
    /// `e2ee` messages handed to participants (each recipient counts once).
    pub e2ee_messages: u64,
    /// Media bytes received over cascade links, and taken to send over them.
    pub link_bytes_in: u64,
    pub link_bytes_out: u64,
    /// A subscriber switched to another spatial layer of a track.
    pub layer_switches: u64,
    /// A subscriber's video of a track was paused because its path
    /// carries no more than audio.
    pub video_paused: u64,
    /// A publisher was told to stop its top layer: its uplink loses.
    pub uplink_sheds: u64,
    /// A conference's active speaker changed.
    pub speaker_changes: u64,
    /// Ticks a subscriber's path was congested, by [`Signal`].
    pub congested_ticks: [u64; 4],
}

struct Conn {
    generation: u32,
    conference: String,
    participant: ParticipantId,
    display_name: String,
    permissions: Permissions,
    published: Vec<TrackId>,
    subscriptions: Vec<TrackId>,
    queue: Queue,
    /// Queued in `ready` and not yet drained by the shell.
    ready: bool,
    /// Media bytes received from it and taken by the shell to send to it.
    bytes_in: u64,
    bytes_out: u64,
    /// Tracks from a link that went down while this participant was
    /// subscribed: re-subscribed when a link announces them again (track
    /// ids are the origin relay's, so they come back unchanged).
    resume: Vec<TrackId>,
    /// A cascade link to another relay rather than a participant: it
    /// publishes the peer's tracks here and subscribes for the peer, but
    /// never receives tracks that came over another link (split horizon,
    /// so media crosses at most one link and cannot loop).
    link: bool,
    /// Its ticket declared the conference end-to-end encrypted.
    e2ee: bool,
    /// For a link: the participants its peer announced (id, name).
    remote: Vec<(ParticipantId, String)>,
    /// Datagrams its queue dropped.
    drops: u64,
    /// What its path carries.
    estimator: Estimator,
}

impl Conn {
    fn new(generation: u32, a: Admission, queue: Queue, link: bool) -> Self {
        Conn {
            generation,
            conference: a.conference,
            participant: a.participant,
            display_name: a.display_name,
            permissions: a.permissions,
            published: Vec::new(),
            subscriptions: Vec::new(),
            queue,
            ready: false,
            bytes_in: 0,
            bytes_out: 0,
            resume: Vec::new(),
            link,
            e2ee: a.e2ee,
            remote: Vec::new(),
            drops: 0,
            estimator: Estimator::default(),
        }
    }
}

/// What one conference moved through this relay (for the router's reports;
/// never exported as metric labels).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConferenceStats {
    pub id: String,
    pub participants: u32,
    /// Media bytes received from and sent to its participants while they
    /// were connected, including those that have left since (until the
    /// conference empties).
    pub bytes_in: u64,
    pub bytes_out: u64,
}

struct Track {
    owner: ConnId,
    info: TrackInfo,
    subscribers: Vec<Sub>,
    /// Per spatial layer (audio and data: index 0).
    last_keyframe_request: [Option<Instant>; MAX_LAYERS as usize],
    /// Spatial layers declared (1 unless a video track said more).
    layers: u8,
    media: Media,
}

impl Track {
    fn new(owner: ConnId, info: TrackInfo) -> Self {
        let layers = match (info.kind, info.layers) {
            (TrackKind::Video, Some(l)) => l.spatial.clamp(1, MAX_LAYERS),
            _ => 1,
        };
        Track {
            owner,
            info,
            subscribers: Vec::new(),
            last_keyframe_request: [None; MAX_LAYERS as usize],
            layers,
            media: Media::new(layers),
        }
    }

    fn video(&self) -> bool {
        self.info.kind == TrackKind::Video
    }

    fn sub_mut(&mut self, conn: ConnId) -> Option<&mut Sub> {
        self.subscribers.iter_mut().find(|s| s.conn == conn)
    }

    fn has(&self, conn: ConnId) -> bool {
        self.subscribers.iter().any(|s| s.conn == conn)
    }

    /// The highest layer the publisher sends now.
    fn top(&self) -> u8 {
        self.media.uplink_max.min(self.layers - 1)
    }
}

/// No layer: nothing forwarded, or (as a view) a hidden tile.
const NO_LAYER: u8 = u8::MAX;

/// No view said yet: every layer the publisher sends.
const ANY_VIEW: u8 = u8::MAX - 1;

/// Every layer (a link's mask until its peer says otherwise).
const ALL_LAYERS: u8 = (1 << MAX_LAYERS) - 1;

/// A subscriber of a track, and what it gets of it.
#[derive(Debug, Clone, Copy)]
struct Sub {
    conn: ConnId,
    /// A cascade link: it takes every layer in `mask`.
    link: bool,
    /// Video: the layer forwarded now ([`NO_LAYER`]: none).
    layer: u8,
    /// Video: the layer to switch to at its next keyframe start.
    target: u8,
    /// The highest layer its view calls for ([`ANY_VIEW`], [`NO_LAYER`]).
    view: u8,
    /// A link's layers (bitmask).
    mask: u8,
    /// What it was last told of this track (`forwarding`).
    told: Option<(u8, Limit)>,
}

impl Sub {
    fn new(conn: ConnId, link: bool, layers: u8) -> Self {
        // A track of one layer flows at once, as it always did; with more,
        // the first datagram forwarded starts a keyframe of the lowest.
        let layer = if layers == 1 { 0 } else { NO_LAYER };
        Sub {
            conn,
            link,
            layer,
            target: 0,
            view: ANY_VIEW,
            mask: ALL_LAYERS,
            told: None,
        }
    }

    /// The layers it needs flowing now (bitmask): the one it gets and the
    /// one it waits to switch to.
    fn wanted(&self) -> u8 {
        if self.link {
            return self.mask;
        }
        let bit = |l: u8| if l < MAX_LAYERS { 1 << l } else { 0 };
        bit(self.layer) | bit(self.target)
    }
}

/// What the core measures of one spatial layer as it arrives.
#[derive(Debug, Clone, Copy, Default)]
struct LayerStats {
    /// Bytes since the last tick.
    bytes: u64,
    /// Rate, bit/s (smoothed over ticks; 0 until measured).
    rate: u64,
    /// The sequence number expected next.
    next_sequence: Option<u32>,
    /// Datagrams missing (sequence gaps) and received since the last tick.
    lost: u32,
    received: u32,
    /// The next datagram starts a frame (the last one ended one).
    frame_start: bool,
}

/// Ticks of ingress loss remembered for the uplink decision (1 s).
const UPLINK_WINDOW: usize = 5;

/// Ingress loss above which a publisher sheds its top layer.
const UPLINK_LOSS: f64 = 0.05;

const UPLINK_HOLD_MIN: Duration = Duration::from_secs(5);
const UPLINK_HOLD_MAX: Duration = Duration::from_secs(60);

/// What the core measures of a track's media.
#[derive(Debug, Clone)]
struct Media {
    per_layer: [LayerStats; MAX_LAYERS as usize],
    /// Layers the publisher was last told to send (bitmask).
    active: u8,
    /// The highest layer its uplink carries, as far as the relay can tell.
    uplink_max: u8,
    /// No layer is restored before this; shedding doubles it.
    uplink_hold_until: Option<Instant>,
    uplink_hold: Duration,
    /// When a layer was last restored (a shed soon after doubles the hold).
    restored_at: Option<Instant>,
    /// (lost, received) per tick, newest last.
    window: [(u32, u32); UPLINK_WINDOW],
    /// Audio: sum and count of loudness (127 - level) since the last tick.
    loudness_sum: u32,
    loudness_count: u32,
    /// Audio: smoothed loudness (0 silence, 127 loudest).
    loudness: f32,
}

impl Media {
    fn new(layers: u8) -> Self {
        Media {
            per_layer: [LayerStats {
                frame_start: true,
                ..LayerStats::default()
            }; MAX_LAYERS as usize],
            active: (1u8 << layers) - 1,
            uplink_max: layers - 1,
            uplink_hold_until: None,
            uplink_hold: UPLINK_HOLD_MIN,
            restored_at: None,
            window: [(0, 0); UPLINK_WINDOW],
            loudness_sum: 0,
            loudness_count: 0,
            loudness: 0.0,
        }
    }

    /// Each layer's rate, the nominal one where none was measured.
    fn rates(&self) -> [u64; MAX_LAYERS as usize] {
        let mut r = layers::NOMINAL;
        for (i, l) in self.per_layer.iter().enumerate() {
            if l.rate > 0 {
                r[i] = l.rate;
            }
        }
        r
    }
}

/// Loudness (127 - level in -dBov) a speaker must keep up, smoothed: a
/// level of about -50 dBov.
const SPEECH: f32 = 77.0;

/// How much louder (dB) another must be to take over from the speaker.
const SPEAKER_MARGIN: f32 = 6.0;

/// Least time between two changes of a conference's speaker.
const SPEAKER_HOLD: Duration = Duration::from_secs(1);

/// Hashes a track id (a counter the relay assigns, not chosen by clients)
/// with one multiplication, instead of SipHash, once per datagram.
#[derive(Debug, Default)]
struct TrackHasher(u64);

impl Hasher for TrackHasher {
    fn write(&mut self, bytes: &[u8]) {
        for b in bytes {
            self.0 = (self.0 << 8 | u64::from(*b)).wrapping_mul(0x9e37_79b9_7f4a_7c15);
        }
    }

    fn write_u32(&mut self, n: u32) {
        self.0 = u64::from(n).wrapping_mul(0x9e37_79b9_7f4a_7c15);
    }

    fn finish(&self) -> u64 {
        self.0
    }
}

/// The forwarding state machine.
pub struct Core {
    config: CoreConfig,
    conns: Vec<Option<Conn>>,
    generations: Vec<u32>,
    free: Vec<u32>,
    tracks: HashMap<TrackId, Track, BuildHasherDefault<TrackHasher>>,
    next_track: u32,
    /// Conference id → admitted connections.
    conferences: HashMap<String, Vec<ConnId>>,
    /// Bytes in and out of connections that have closed, per conference
    /// still in progress.
    closed_bytes: HashMap<String, (u64, u64)>,
    ready: Vec<ConnId>,
    control: std::collections::VecDeque<(ConnId, ServerMessage)>,
    link_out: std::collections::VecDeque<(ConnId, LinkRequest)>,
    counters: Counters,
    /// Per conference: the active speaker and when it last changed.
    speakers: HashMap<String, (Option<ParticipantId>, Instant)>,
    last_tick: Option<Instant>,
}

impl std::fmt::Debug for Core {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Core")
            .field("connections", &self.connections())
            .field("conferences", &self.conferences.len())
            .field("tracks", &self.tracks.len())
            .finish_non_exhaustive()
    }
}

impl Core {
    pub fn new(config: CoreConfig) -> Self {
        Core {
            config,
            conns: Vec::new(),
            generations: Vec::new(),
            free: Vec::new(),
            tracks: HashMap::default(),
            next_track: config.track_counter_range().0,
            conferences: HashMap::new(),
            closed_bytes: HashMap::new(),
            ready: Vec::new(),
            control: std::collections::VecDeque::new(),
            link_out: std::collections::VecDeque::new(),
            counters: Counters::default(),
            speakers: HashMap::new(),
            last_tick: None,
        }
    }

    pub fn counters(&self) -> &Counters {
        &self.counters
    }

    /// Admitted connections.
    pub fn connections(&self) -> usize {
        self.conns.iter().filter(|c| c.is_some()).count()
    }

    fn conn(&self, id: ConnId) -> Option<&Conn> {
        self.conns
            .get(id.index as usize)?
            .as_ref()
            .filter(|c| c.generation == id.generation)
    }

    fn conn_mut(&mut self, id: ConnId) -> Option<&mut Conn> {
        self.conns
            .get_mut(id.index as usize)?
            .as_mut()
            .filter(|c| c.generation == id.generation)
    }

    /// A free connection slot and a fresh generation for it.
    fn new_slot(&mut self) -> ConnId {
        let index = match self.free.pop() {
            Some(i) => i,
            None => {
                self.conns.push(None);
                self.generations.push(0);
                (self.conns.len() - 1) as u32
            }
        };
        let generation = self.generations[index as usize].wrapping_add(1);
        self.generations[index as usize] = generation;
        ConnId { index, generation }
    }

    /// Admits a participant; it receives `welcome` with the conference's tracks
    /// and the others learn it joined.
    pub fn admit(&mut self, admission: Admission) -> ConnId {
        let id = self.new_slot();
        let members = self
            .conferences
            .entry(admission.conference.clone())
            .or_default();
        let mut tracks: Vec<TrackInfo> = self
            .tracks
            .values()
            .filter(|t| members.contains(&t.owner))
            .map(|t| t.info.clone())
            .collect();
        tracks.sort_by_key(|t| t.track);
        // The welcome must fit one control frame: the rest follow as
        // `track_published` messages.
        let later = tracks.split_off(tracks.len().min(MAX_WELCOME_TRACKS));
        for other in members.iter() {
            let other_is_link = self
                .conns
                .get(other.index as usize)
                .and_then(Option::as_ref)
                .is_some_and(|c| c.link);
            if other_is_link {
                // The peer's participants learn of it too.
                self.link_out.push_back((
                    *other,
                    LinkRequest::ParticipantJoined {
                        participant: admission.participant.clone(),
                        display_name: admission.display_name.clone(),
                    },
                ));
                continue;
            }
            self.control.push_back((
                *other,
                ServerMessage::ParticipantJoined {
                    participant: admission.participant.clone(),
                    display_name: admission.display_name.clone(),
                },
            ));
        }
        // Who is here already, after the welcome: participants of this
        // relay, and those the links' peers announced.
        let present: Vec<(ParticipantId, String)> = members
            .iter()
            .filter_map(|m| self.conns.get(m.index as usize).and_then(Option::as_ref))
            .flat_map(|c| {
                if c.link {
                    c.remote.clone()
                } else {
                    vec![(c.participant.clone(), c.display_name.clone())]
                }
            })
            .collect();
        members.push(id);
        self.control.push_back((
            id,
            ServerMessage::Welcome {
                participant: admission.participant.clone(),
                tracks,
            },
        ));
        for (participant, display_name) in present {
            self.control.push_back((
                id,
                ServerMessage::ParticipantJoined {
                    participant,
                    display_name,
                },
            ));
        }
        for info in later {
            self.control
                .push_back((id, ServerMessage::TrackPublished(info)));
        }
        self.conns[id.index as usize] = Some(Conn::new(
            id.generation,
            admission,
            Queue::new(self.config.queue_packets),
            false,
        ));
        id
    }

    fn is_link(&self, conn: ConnId) -> bool {
        self.conn(conn).is_some_and(|c| c.link)
    }

    /// Admits a cascade link to relay `peer` for `conference`: the peer
    /// learns every track published here (not those that came from other
    /// links) as `track_published` control messages.
    pub fn admit_link(&mut self, conference: &str, peer: &str) -> ConnId {
        let id = self.new_slot();
        let members = self.conferences.entry(conference.to_owned()).or_default();
        let local: Vec<ConnId> = members.clone();
        members.push(id);
        let mut tracks: Vec<TrackInfo> = self
            .tracks
            .values()
            .filter(|t| local.contains(&t.owner) && !self.is_link(t.owner))
            .map(|t| t.info.clone())
            .collect();
        tracks.sort_by_key(|t| t.track);
        for info in tracks {
            self.control
                .push_back((id, ServerMessage::TrackPublished(info)));
        }
        // And who takes part here (not those other links announced).
        for m in &local {
            if let Some(c) = self.conn(*m).filter(|c| !c.link) {
                self.link_out.push_back((
                    id,
                    LinkRequest::ParticipantJoined {
                        participant: c.participant.clone(),
                        display_name: c.display_name.clone(),
                    },
                ));
            }
        }
        let admission = Admission {
            conference: conference.to_owned(),
            participant: ParticipantId(format!("relay:{peer}")),
            display_name: peer.to_owned(),
            permissions: Permissions {
                publish: true,
                subscribe: true,
                moderate: false,
            },
            e2ee: false,
        };
        self.conns[id.index as usize] = Some(Conn::new(
            id.generation,
            admission,
            Queue::new(self.config.queue_packets),
            true,
        ));
        id
    }

    /// The peer announced a track it carries: participants here see it as
    /// published. Returns false (and ignores it) if the id is taken here or
    /// the connection is not a link.
    pub fn link_publish(&mut self, link: ConnId, info: TrackInfo) -> bool {
        let Some(c) = self.conn(link).filter(|c| c.link) else {
            return false;
        };
        if self.tracks.contains_key(&info.track) || c.published.len() >= MAX_LINK_TRACKS {
            return false;
        }
        let conference = c.conference.clone();
        // The relay of origin refuses such tracks; one that did not is not
        // trusted with this conference's participants.
        if !info.encrypted && self.is_e2ee(&conference) {
            self.counters.control_errors += 1;
            return false;
        }
        self.tell_participants(&conference, &ServerMessage::TrackPublished(info.clone()));
        let track = info.track;
        self.tracks.insert(track, Track::new(link, info));
        if let Some(c) = self.conn_mut(link) {
            c.published.push(track);
        }
        // Participants who lost it with a previous link get it back.
        let resuming: Vec<ConnId> = self
            .members(&conference)
            .iter()
            .copied()
            .filter(|m| self.conn(*m).is_some_and(|c| c.resume.contains(&track)))
            .collect();
        for m in resuming {
            if let Some(c) = self.conn_mut(m) {
                c.resume.retain(|t| *t != track);
                c.subscriptions.push(track);
            }
            if let Some(t) = self.tracks.get_mut(&track) {
                let sub = Sub::new(m, false, t.layers);
                t.subscribers.push(sub);
            }
            self.note_link_subscriber(track, true);
            self.control
                .push_back((m, ServerMessage::Subscribed { track }));
        }
        true
    }

    /// The peer stopped carrying a track it announced.
    pub fn link_unpublish(&mut self, link: ConnId, track: TrackId) {
        if self.tracks.get(&track).is_some_and(|t| t.owner == link) {
            self.remove_track(track);
        }
    }

    /// The peer wants a track published here (by a participant, never one
    /// that came over a link). Returns whether it is now subscribed.
    pub fn link_subscribe(&mut self, link: ConnId, track: TrackId) -> bool {
        let Some(conference) = self
            .conn(link)
            .filter(|c| c.link)
            .map(|c| c.conference.clone())
        else {
            return false;
        };
        let allowed = self.tracks.get(&track).is_some_and(|t| {
            self.conn(t.owner)
                .is_some_and(|o| !o.link && o.conference == conference)
        });
        if !allowed {
            return false;
        }
        if let Some(t) = self.tracks.get_mut(&track) {
            if !t.has(link) {
                let sub = Sub::new(link, true, t.layers);
                t.subscribers.push(sub);
            }
        }
        if let Some(c) = self.conn_mut(link) {
            if !c.subscriptions.contains(&track) {
                c.subscriptions.push(track);
            }
        }
        true
    }

    /// The peer no longer wants a track.
    pub fn link_unsubscribe(&mut self, link: ConnId, track: TrackId) {
        if let Some(t) = self.tracks.get_mut(&track) {
            t.subscribers.retain(|s| s.conn != link);
        }
        if let Some(c) = self.conn_mut(link) {
            c.subscriptions.retain(|t| *t != track);
        }
    }

    /// The peer's subscribers take these layers (bitmask) of a track
    /// published here.
    pub fn link_layers(&mut self, link: ConnId, track: TrackId, mask: u8) {
        if let Some(sub) = self.tracks.get_mut(&track).and_then(|t| t.sub_mut(link)) {
            if sub.link {
                sub.mask = mask & ALL_LAYERS;
            }
        }
    }

    /// The peer's subscribers need a keyframe of a track published here.
    pub fn link_keyframe_request(
        &mut self,
        link: ConnId,
        track: TrackId,
        layer: Option<u8>,
        now: Instant,
    ) {
        let subscribed = self.tracks.get(&track).is_some_and(|t| t.has(link));
        if subscribed {
            self.request_keyframe(track, layer, now);
        }
    }

    /// The next request for a link's peer.
    pub fn poll_link_request(&mut self) -> Option<(ConnId, LinkRequest)> {
        self.link_out.pop_front()
    }

    /// Whether `conn` is a cascade link.
    pub fn link_peer(&self, conn: ConnId) -> Option<&str> {
        self.conn(conn)
            .filter(|c| c.link)
            .map(|c| c.display_name.as_str())
    }

    /// Bytes moved by every cascade link.
    pub fn link_stats(&self) -> Vec<LinkStats> {
        self.conns
            .iter()
            .flatten()
            .filter(|c| c.link)
            .map(|c| LinkStats {
                conference: c.conference.clone(),
                peer: c.display_name.clone(),
                bytes_in: c.bytes_in,
                bytes_out: c.bytes_out,
            })
            .collect()
    }

    /// Participants (not links) connected.
    pub fn participants(&self) -> usize {
        self.conns.iter().flatten().filter(|c| !c.link).count()
    }

    /// Subscribing `conn` to a link's track: the first subscriber here
    /// asks the peer for it.
    fn note_link_subscriber(&mut self, track: TrackId, added: bool) {
        let Some(t) = self.tracks.get(&track) else {
            return;
        };
        if !self.is_link(t.owner) {
            return;
        }
        let owner = t.owner;
        let n = t.subscribers.len();
        if added && n == 1 {
            self.link_out
                .push_back((owner, LinkRequest::Subscribe(track)));
        } else if !added && n == 0 {
            self.link_out
                .push_back((owner, LinkRequest::Unsubscribe(track)));
        }
    }

    fn error(&mut self, conn: ConnId, code: ErrorCode, message: impl Into<String>) {
        self.counters.control_errors += 1;
        self.control.push_back((
            conn,
            ServerMessage::Error {
                code: code.code(),
                message: message.into(),
            },
        ));
    }

    fn members(&self, conference: &str) -> &[ConnId] {
        self.conferences.get(conference).map_or(&[], Vec::as_slice)
    }

    /// The shell dropped a control message of `conn` for going over its
    /// rate: tell the participant.
    pub fn handle_rate_limited(&mut self, conn: ConnId) {
        if self.conn(conn).is_some() {
            self.error(
                conn,
                ErrorCode::RateLimited,
                "control messages over your rate; slow down",
            );
        }
    }

    /// A control message from an admitted connection, arriving now.
    pub fn handle_control(&mut self, conn: ConnId, message: ClientMessage) {
        self.handle_control_at(conn, message, Instant::now());
    }

    /// A control message from an admitted connection, arriving at `now`
    /// (which paces keyframe requests).
    pub fn handle_control_at(&mut self, conn: ConnId, message: ClientMessage, now: Instant) {
        let Some(c) = self.conn(conn) else {
            return;
        };
        let permissions = c.permissions;
        let participant = c.participant.clone();
        let conference = c.conference.clone();
        let owns = |track: &TrackId| c.published.contains(track);
        match message {
            ClientMessage::Hello { .. } => {
                self.error(conn, ErrorCode::OutOfOrder, "already admitted")
            }
            ClientMessage::Publish {
                request,
                kind,
                codec,
                layers,
                encrypted,
            } => self.publish(conn, request, kind, codec, layers, encrypted),
            ClientMessage::Unpublish { track } => {
                if !owns(&track) {
                    return self.error(conn, ErrorCode::NotOwner, "not your track");
                }
                self.remove_track(track);
            }
            ClientMessage::Subscribe { track } => self.subscribe(conn, track),
            ClientMessage::Unsubscribe { track } => self.unsubscribe(conn, track),
            ClientMessage::Leave {} => self.handle_closed(conn),
            ClientMessage::E2ee { to, data } => {
                if !valid_e2ee_data(&data) {
                    return self.error(
                        conn,
                        ErrorCode::BadMessage,
                        "e2ee data must be 1 to 512 base64url characters",
                    );
                }
                let host = permissions.moderate;
                self.deliver_e2ee(&conference, Some(conn), participant, host, to, data);
            }
            // A subscriber lost part of a frame: its publisher is asked for
            // a keyframe of the layer it gets (at most once per interval,
            // however many ask).
            ClientMessage::KeyframeRequest { track } => {
                let layer = self
                    .tracks
                    .get_mut(&track)
                    .and_then(|t| t.sub_mut(conn))
                    .map(|s| {
                        if s.layer == NO_LAYER {
                            s.target
                        } else {
                            s.layer
                        }
                    });
                let Some(layer) = layer else {
                    return self.error(
                        conn,
                        ErrorCode::UnknownTrack,
                        "not subscribed to the track",
                    );
                };
                self.request_keyframe(track, (layer < MAX_LAYERS).then_some(layer), now);
            }
            ClientMessage::View {
                track,
                width,
                height,
            } => {
                let Some(t) = self.tracks.get_mut(&track) else {
                    return self.error(conn, ErrorCode::UnknownTrack, "no such track");
                };
                let layers = t.layers;
                let video = t.video();
                let Some(sub) = t.sub_mut(conn) else {
                    return self.error(
                        conn,
                        ErrorCode::UnknownTrack,
                        "not subscribed to the track",
                    );
                };
                if video {
                    sub.view = layers::layer_for_view(width, height, layers).unwrap_or(NO_LAYER);
                }
            }
        }
    }

    /// `publish`: a new track of `conn`'s, announced to the conference.
    fn publish(
        &mut self,
        conn: ConnId,
        request: u32,
        kind: TrackKind,
        codec: String,
        layers: Option<Layers>,
        encrypted: bool,
    ) {
        let Some(c) = self.conn(conn) else {
            return;
        };
        let (permissions, participant, conference, e2ee, published) = (
            c.permissions,
            c.participant.clone(),
            c.conference.clone(),
            c.e2ee,
            c.published.len(),
        );
        if !permissions.publish {
            return self.error(
                conn,
                ErrorCode::NotPermitted,
                "the ticket does not allow publishing",
            );
        }
        if published >= self.config.max_tracks_per_participant {
            return self.error(conn, ErrorCode::TooManyTracks, "too many tracks published");
        }
        if let Some(l) = layers {
            if kind != TrackKind::Video || !l.valid() {
                return self.error(
                    conn,
                    ErrorCode::BadMessage,
                    "layers: only video has them, 1 to 3 spatial and 1 to 4 temporal",
                );
            }
        }
        if !encrypted && (e2ee || self.is_e2ee(&conference)) {
            return self.error(
                conn,
                ErrorCode::NotEncrypted,
                "this conference is end-to-end encrypted: publish with \"encrypted\": true and encrypt the payloads",
            );
        }
        // Ids are a counter; after it wraps, skip ids still in use.
        let mask = (1 << TRACK_COUNTER_BITS) - 1;
        let base = self.config.track_id_base & !mask;
        let (lo, hi) = self.config.track_counter_range();
        let step = |n: u32| if n + 1 >= hi { lo } else { n + 1 };
        let mut track = TrackId(base | self.next_track);
        while self.tracks.contains_key(&track) {
            self.next_track = step(self.next_track);
            track = TrackId(base | self.next_track);
        }
        self.next_track = step(self.next_track);
        let info = TrackInfo {
            track,
            participant,
            kind,
            codec,
            layers,
            encrypted,
        };
        for other in self.members(&conference).to_vec() {
            if other != conn {
                self.control
                    .push_back((other, ServerMessage::TrackPublished(info.clone())));
            }
        }
        self.tracks.insert(track, Track::new(conn, info));
        if let Some(c) = self.conn_mut(conn) {
            c.published.push(track);
        }
        self.control
            .push_back((conn, ServerMessage::Published { request, track }));
    }

    /// `subscribe`: `conn` receives `track`, which must be of its conference.
    fn subscribe(&mut self, conn: ConnId, track: TrackId) {
        let Some(c) = self.conn(conn) else {
            return;
        };
        let (permissions, conference) = (c.permissions, c.conference.clone());
        if !permissions.subscribe {
            return self.error(
                conn,
                ErrorCode::NotPermitted,
                "the ticket does not allow subscribing",
            );
        }
        let same_conference = self
            .tracks
            .get(&track)
            .and_then(|t| self.conn(t.owner))
            .is_some_and(|owner| owner.conference == conference);
        if !same_conference {
            return self.error(
                conn,
                ErrorCode::UnknownTrack,
                "no such track in this conference",
            );
        }
        let mut added = false;
        if let Some(t) = self.tracks.get_mut(&track) {
            if !t.has(conn) {
                let sub = Sub::new(conn, false, t.layers);
                t.subscribers.push(sub);
                added = true;
            }
        }
        if added {
            self.note_link_subscriber(track, true);
        }
        if let Some(c) = self.conn_mut(conn) {
            if !c.subscriptions.contains(&track) {
                c.subscriptions.push(track);
            }
        }
        self.control
            .push_back((conn, ServerMessage::Subscribed { track }));
    }

    /// `unsubscribe`: `conn` no longer receives `track`.
    fn unsubscribe(&mut self, conn: ConnId, track: TrackId) {
        let mut removed = false;
        if let Some(t) = self.tracks.get_mut(&track) {
            let before = t.subscribers.len();
            t.subscribers.retain(|s| s.conn != conn);
            removed = t.subscribers.len() < before;
        }
        if removed {
            self.note_link_subscriber(track, false);
        }
        if let Some(c) = self.conn_mut(conn) {
            c.subscriptions.retain(|t| *t != track);
            c.resume.retain(|t| *t != track);
        }
    }

    /// Whether a participant here holds a ticket declaring `conference`
    /// end-to-end encrypted.
    fn is_e2ee(&self, conference: &str) -> bool {
        self.members(conference)
            .iter()
            .any(|m| self.conn(*m).is_some_and(|c| !c.link && c.e2ee))
    }

    /// Hands an `e2ee` message from `from` to its recipients here: `to`, or
    /// everyone but the sender. One from a participant here (`via` its
    /// connection) also goes over every link of the conference, unless its
    /// recipient is here; one from a link (`via` None) stops here.
    fn deliver_e2ee(
        &mut self,
        conference: &str,
        via: Option<ConnId>,
        from: ParticipantId,
        host: bool,
        to: Option<ParticipantId>,
        data: String,
    ) {
        let mut found = false;
        let mut links = Vec::new();
        for m in self.members(conference).to_vec() {
            let Some(c) = self.conn(m) else { continue };
            if c.link {
                links.push(m);
                continue;
            }
            if Some(m) == via || c.participant == from {
                continue;
            }
            if to.as_ref().is_none_or(|t| *t == c.participant) {
                found = true;
                self.counters.e2ee_messages += 1;
                self.control.push_back((
                    m,
                    ServerMessage::E2ee {
                        from: from.clone(),
                        host,
                        data: data.clone(),
                    },
                ));
            }
        }
        let onward = via.is_some() && (to.is_none() || !found);
        if onward {
            for link in links {
                self.link_out.push_back((
                    link,
                    LinkRequest::E2ee {
                        from: from.clone(),
                        host,
                        to: to.clone(),
                        data: data.clone(),
                    },
                ));
            }
        }
    }

    /// A link's peer passed on a participant's `e2ee` message: delivered to
    /// the participants here it is for. False (and ignored) if malformed or
    /// not from a link.
    pub fn link_e2ee(
        &mut self,
        link: ConnId,
        from: ParticipantId,
        host: bool,
        to: Option<ParticipantId>,
        data: String,
    ) -> bool {
        let Some(c) = self.conn(link).filter(|c| c.link) else {
            return false;
        };
        if !valid_e2ee_data(&data) {
            self.counters.control_errors += 1;
            return false;
        }
        let conference = c.conference.clone();
        self.deliver_e2ee(&conference, None, from, host, to, data);
        true
    }

    /// The link's peer announced a participant of its own: the
    /// participants here see it join. False (ignored) if not from a link,
    /// already announced or over [`MAX_LINK_PARTICIPANTS`].
    pub fn link_participant_joined(
        &mut self,
        link: ConnId,
        participant: ParticipantId,
        display_name: String,
    ) -> bool {
        let Some(c) = self.conn_mut(link).filter(|c| c.link) else {
            return false;
        };
        if c.remote.len() >= MAX_LINK_PARTICIPANTS
            || c.remote.iter().any(|(p, _)| *p == participant)
        {
            return false;
        }
        c.remote.push((participant.clone(), display_name.clone()));
        let conference = c.conference.clone();
        self.tell_participants(
            &conference,
            &ServerMessage::ParticipantJoined {
                participant,
                display_name,
            },
        );
        true
    }

    /// A participant the link's peer announced left.
    pub fn link_participant_left(&mut self, link: ConnId, participant: ParticipantId) -> bool {
        let Some(c) = self.conn_mut(link).filter(|c| c.link) else {
            return false;
        };
        let before = c.remote.len();
        c.remote.retain(|(p, _)| *p != participant);
        if c.remote.len() == before {
            return false;
        }
        let conference = c.conference.clone();
        self.tell_participants(&conference, &ServerMessage::ParticipantLeft { participant });
        true
    }

    /// Queues `message` for every participant of `conference` on this
    /// relay (not its links).
    fn tell_participants(&mut self, conference: &str, message: &ServerMessage) {
        for other in self.members(conference).to_vec() {
            if !self.is_link(other) {
                self.control.push_back((other, message.clone()));
            }
        }
    }

    fn remove_track(&mut self, track: TrackId) {
        let Some(t) = self.tracks.remove(&track) else {
            return;
        };
        for s in &t.subscribers {
            if let Some(c) = self.conn_mut(s.conn) {
                c.subscriptions.retain(|x| *x != track);
            }
        }
        let conference = self.conn(t.owner).map(|c| c.conference.clone());
        if let Some(c) = self.conn_mut(t.owner) {
            c.published.retain(|x| *x != track);
        }
        let from_link = self.is_link(t.owner);
        if let Some(conference) = conference {
            for other in self.members(&conference).to_vec() {
                // Links hear only of tracks published here.
                if other != t.owner && !(from_link && self.is_link(other)) {
                    self.control
                        .push_back((other, ServerMessage::TrackUnpublished { track }));
                }
            }
        }
    }

    /// A connection closed (or left): its tracks and subscriptions go, the
    /// others learn it left. Queued datagrams for it are discarded.
    pub fn handle_closed(&mut self, conn: ConnId) {
        let Some(c) = self.conn(conn) else {
            return;
        };
        let published = c.published.clone();
        let subscriptions = c.subscriptions.clone();
        // Conference totals count participants' media; links report their own.
        let (bytes_in, bytes_out) = if c.link {
            (0, 0)
        } else {
            (c.bytes_in, c.bytes_out)
        };
        let link = c.link;
        let conference = c.conference.clone();
        let participant = c.participant.clone();
        for track in published {
            if link {
                // The link went down: its subscribers keep wanting the track.
                let subscribers = self
                    .tracks
                    .get(&track)
                    .map(|t| t.subscribers.iter().map(|s| s.conn).collect::<Vec<_>>())
                    .unwrap_or_default();
                for s in subscribers {
                    if let Some(c) = self.conn_mut(s) {
                        if c.resume.len() < MAX_RESUME && !c.resume.contains(&track) {
                            c.resume.push(track);
                        }
                    }
                }
            }
            self.remove_track(track);
        }
        for track in subscriptions {
            let mut removed = false;
            if let Some(t) = self.tracks.get_mut(&track) {
                let before = t.subscribers.len();
                t.subscribers.retain(|s| s.conn != conn);
                removed = t.subscribers.len() < before;
            }
            if removed && !link {
                self.note_link_subscriber(track, false);
            }
        }
        if let Some(members) = self.conferences.get_mut(&conference) {
            members.retain(|m| *m != conn);
            if members.is_empty() {
                self.conferences.remove(&conference);
                self.closed_bytes.remove(&conference);
                self.speakers.remove(&conference);
            } else {
                let t = self.closed_bytes.entry(conference.clone()).or_default();
                t.0 += bytes_in;
                t.1 += bytes_out;
            }
        }
        // Who is gone for the participants here: this participant, or
        // everyone the link's peer had announced.
        let gone: Vec<ParticipantId> = if link {
            self.conn(conn)
                .map(|c| c.remote.iter().map(|(p, _)| p.clone()).collect())
                .unwrap_or_default()
        } else {
            vec![participant.clone()]
        };
        for other in self.members(&conference).to_vec() {
            if self.is_link(other) {
                if !link {
                    self.link_out.push_back((
                        other,
                        LinkRequest::ParticipantLeft {
                            participant: participant.clone(),
                        },
                    ));
                }
                continue;
            }
            for p in &gone {
                self.control.push_back((
                    other,
                    ServerMessage::ParticipantLeft {
                        participant: p.clone(),
                    },
                ));
            }
        }
        self.link_out.retain(|(to, _)| *to != conn);
        self.conns[conn.index as usize] = None;
        self.free.push(conn.index);
        self.control.retain(|(to, _)| *to != conn);
    }

    /// A datagram from `conn`: checked, then queued for every subscriber of
    /// its track. Returns why it was dropped, if it was.
    pub fn handle_datagram(
        &mut self,
        conn: ConnId,
        datagram: Bytes,
        now: Instant,
    ) -> Result<(), IngressDrop> {
        self.counters.datagrams_received += 1;
        self.counters.bytes_received += datagram.len() as u64;
        let header = match datagram::parse(&datagram) {
            Ok(h) => h,
            Err(e) => {
                self.counters.ingress_malformed += 1;
                return Err(IngressDrop::Malformed(e));
            }
        };
        if self.conn(conn).is_none() {
            self.counters.ingress_unknown_connection += 1;
            return Err(IngressDrop::UnknownConnection);
        }
        let Some(track) = self.tracks.get_mut(&header.track) else {
            self.counters.ingress_unknown_track += 1;
            return Err(IngressDrop::UnknownTrack);
        };
        if track.owner != conn {
            self.counters.ingress_not_owner += 1;
            return Err(IngressDrop::NotOwner);
        }
        let kind = track.info.kind;
        let layer = match kind {
            TrackKind::Video if header.info.valid_video(track.layers) => {
                header.info.spatial_layer()
            }
            TrackKind::Audio => {
                let m = &mut track.media;
                m.loudness_sum += u32::from(127 - header.info.level());
                m.loudness_count += 1;
                0
            }
            TrackKind::Data if header.info == datagram::Info::NONE => 0,
            _ => {
                self.counters.ingress_bad_info += 1;
                return Err(IngressDrop::BadInfo);
            }
        };
        let video = kind == TrackKind::Video;
        let stats = &mut track.media.per_layer[layer as usize];
        stats.bytes += datagram.len() as u64;
        stats.received += 1;
        if let Some(expected) = stats.next_sequence {
            // A gap is loss on the publisher's uplink; a datagram from
            // before the expected one (reordered) counts nothing.
            let gap = header.sequence.wrapping_sub(expected);
            if gap < 1024 {
                stats.lost += gap;
            }
            if gap < u32::MAX / 2 {
                stats.next_sequence = Some(header.sequence.wrapping_add(1));
            }
        } else {
            stats.next_sequence = Some(header.sequence.wrapping_add(1));
        }
        let keyframe_start = header.flags.keyframe() && stats.frame_start;
        stats.frame_start = header.flags.end_of_frame();
        if let Some(Some(c)) = self.conns.get_mut(conn.index as usize) {
            c.bytes_in += datagram.len() as u64;
            if c.link {
                self.counters.link_bytes_in += datagram.len() as u64;
            }
        }
        // Tracks that lost reference data to an eviction (a few distinct
        // ones per datagram at most; a fixed array keeps this allocation-free).
        let mut lost: [Option<(TrackId, u8)>; 4] = [None; 4];
        let mut delivered = 0u64;
        for sub in track.subscribers.iter_mut() {
            if video {
                if sub.link {
                    if sub.mask & (1 << layer) == 0 {
                        continue;
                    }
                } else if sub.layer != layer {
                    // Switch only where the new layer's keyframe starts.
                    if sub.target != layer || !keyframe_start {
                        continue;
                    }
                    if sub.layer != NO_LAYER {
                        self.counters.layer_switches += 1;
                    }
                    sub.layer = layer;
                }
            }
            let Some(Some(c)) = self.conns.get_mut(sub.conn.index as usize) else {
                continue;
            };
            if c.generation != sub.conn.generation {
                continue;
            }
            let audio = kind == TrackKind::Audio;
            match c
                .queue
                .push(datagram.clone(), header.flags, header.track, layer, audio)
            {
                None => delivered += 1,
                Some(d) => {
                    self.counters.queue_drops[d.reason.index()] += 1;
                    c.drops += 1;
                    if !d.reason.dropped_arrival() {
                        // The arriving datagram was queued; an older one went.
                        delivered += 1;
                    }
                    let victim = Some((d.track, d.layer));
                    if d.reason.loses_reference() && !lost.contains(&victim) {
                        if let Some(slot) = lost.iter_mut().find(|s| s.is_none()) {
                            *slot = victim;
                        }
                    }
                }
            }
            if !c.ready {
                c.ready = true;
                self.ready.push(sub.conn);
            }
        }
        self.counters.deliveries += delivered;
        self.counters.bytes_delivered += delivered * datagram.len() as u64;
        for (victim, layer) in lost.into_iter().flatten() {
            self.request_keyframe(victim, Some(layer), now);
        }
        Ok(())
    }

    /// Asks the publisher of `track` for a keyframe of `layer` (any: its
    /// lowest), at most once per interval and layer, and only for video
    /// (audio and data have no keyframes).
    fn request_keyframe(&mut self, track: TrackId, layer: Option<u8>, now: Instant) {
        let Some(t) = self.tracks.get_mut(&track) else {
            return;
        };
        if !t.video() {
            return;
        }
        let index = layer.unwrap_or(0).min(t.layers - 1);
        let last = &mut t.last_keyframe_request[index as usize];
        let due = last.is_none_or(|last| {
            now.saturating_duration_since(last) >= self.config.keyframe_request_interval
        });
        if due {
            *last = Some(now);
            self.counters.keyframe_requests += 1;
            let owner = t.owner;
            // Layers are named only for tracks that have several.
            let layer = (t.layers > 1).then_some(index);
            if self.is_link(owner) {
                // Published beyond a link: its origin relay asks the publisher.
                self.link_out
                    .push_back((owner, LinkRequest::KeyframeRequest(track, layer)));
            } else {
                self.control
                    .push_back((owner, ServerMessage::KeyframeRequest { track, layer }));
            }
        }
    }

    /// Every [`estimate::TICK`]: measures each track's layers, sheds the
    /// top layer of publishers whose uplink loses, picks the active
    /// speakers, re-estimates each subscriber's path (`path` gives what
    /// its transport reports) and re-chooses its layers, and tells
    /// publishers which layers anyone takes.
    pub fn tick(&mut self, now: Instant, path: impl Fn(ConnId) -> PathSample) {
        let dt = self
            .last_tick
            .replace(now)
            .map_or(estimate::TICK, |last| now.saturating_duration_since(last))
            .as_secs_f64()
            .max(0.001);
        for t in self.tracks.values_mut() {
            measure(t, dt);
            if t.video() && t.layers > 1 {
                uplink(t, now, &mut self.counters);
            }
        }
        let conferences: Vec<String> = self.conferences.keys().cloned().collect();
        for conference in &conferences {
            self.choose_speaker(conference, now);
        }
        let subscribers: Vec<ConnId> = self
            .conferences
            .values()
            .flatten()
            .copied()
            .filter(|m| self.conn(*m).is_some_and(|c| !c.link))
            .collect();
        for id in subscribers {
            self.allocate(id, now, path(id));
        }
        self.tell_publishers();
    }

    /// The loudest participant of `conference` speaks, if loud enough and
    /// clearly louder than the one speaking so far.
    fn choose_speaker(&mut self, conference: &str, now: Instant) {
        let mut loudest: Option<(&ParticipantId, f32)> = None;
        let (current, changed) = match self.speakers.get(conference) {
            Some((p, at)) => (p.clone(), Some(*at)),
            None => (None, None),
        };
        let mut current_loudness = 0.0f32;
        for m in self.members(conference) {
            let Some(c) = self.conn(*m) else { continue };
            for track in &c.published {
                let Some(t) = self.tracks.get(track) else {
                    continue;
                };
                if t.info.kind != TrackKind::Audio {
                    continue;
                }
                let l = t.media.loudness;
                if current.as_ref() == Some(&t.info.participant) {
                    current_loudness = current_loudness.max(l);
                }
                if loudest.is_none_or(|(_, best)| l > best) {
                    loudest = Some((&t.info.participant, l));
                }
            }
        }
        let Some((who, loudness)) = loudest else {
            return;
        };
        if loudness < SPEECH || current.as_ref() == Some(who) {
            return;
        }
        let takes_over = current.is_none()
            || current_loudness < SPEECH
            || loudness > current_loudness + SPEAKER_MARGIN;
        let held = changed.is_some_and(|at| now.saturating_duration_since(at) < SPEAKER_HOLD);
        if !takes_over || held {
            return;
        }
        let who = who.clone();
        self.speakers
            .insert(conference.to_owned(), (Some(who.clone()), now));
        self.counters.speaker_changes += 1;
        self.tell_participants(
            conference,
            &ServerMessage::ActiveSpeaker {
                participant: Some(who),
            },
        );
    }

    /// The active speaker of `conference`, if any.
    pub fn active_speaker(&self, conference: &str) -> Option<&ParticipantId> {
        self.speakers.get(conference)?.0.as_ref()
    }

    /// Re-estimates `id`'s path and re-chooses the layer of each video
    /// track it takes.
    fn allocate(&mut self, id: ConnId, now: Instant, path: PathSample) {
        let Some(c) = self.conn_mut(id) else { return };
        let queue = estimate::QueueSample {
            bytes_out: c.bytes_out,
            drops: c.drops,
            queued_bytes: c.queue.bytes() as u64,
        };
        let estimate = c.estimator.update(now, queue, path);
        let cut = c.estimator.congested();
        tracing::trace!(
            ?cut,
            estimate,
            delivered = c.estimator.delivered(),
            queued = c.queue.bytes(),
            ?path,
            "path estimate"
        );
        if let Some(signal) = cut {
            self.counters.congested_ticks[signal as usize] += 1;
        }
        let Some(c) = self.conn(id) else { return };
        let speaker = self
            .speakers
            .get(&c.conference)
            .and_then(|(p, _)| p.as_ref());
        let mut audio = 0u64;
        let mut wants = Vec::new();
        for track in &c.subscriptions {
            let Some(t) = self.tracks.get(track) else {
                continue;
            };
            match t.info.kind {
                TrackKind::Audio => audio += t.media.per_layer[0].rate,
                TrackKind::Video => {
                    let Some(sub) = t.subscribers.iter().find(|s| s.conn == id) else {
                        continue;
                    };
                    let view = view_max(sub.view, t.layers);
                    // Waiting for a switch, the layer switched to counts.
                    let current = [sub.layer, sub.target]
                        .into_iter()
                        .find(|l| *l < MAX_LAYERS);
                    wants.push(layers::Want {
                        track: *track,
                        current,
                        max: view.map(|v| v.min(t.top())),
                        rates: t.media.rates(),
                        priority: speaker == Some(&t.info.participant),
                    });
                }
                TrackKind::Data => {}
            }
        }
        if wants.is_empty() {
            return;
        }
        let choice = layers::choose(estimate.saturating_sub(audio), &wants);
        // What one more step would need: the cheapest resume or layer up.
        let now_needed: u64 = wants
            .iter()
            .zip(&choice)
            .map(|(w, c)| c.map_or(0, |l| w.rates[l as usize]))
            .sum();
        let step = wants
            .iter()
            .zip(&choice)
            .filter_map(|(w, c)| {
                let max = w.max?;
                match c {
                    None => Some(w.rates[0]),
                    Some(l) if *l < max => {
                        Some(w.rates[*l as usize + 1].saturating_sub(w.rates[*l as usize]))
                    }
                    Some(_) => None,
                }
            })
            .min();
        if let Some(c) = self.conn_mut(id) {
            c.estimator
                .next_step(step.map_or(0, |s| audio + now_needed + s));
        }
        let mut raised = false;
        let mut keyframes = Vec::new();
        let mut told = Vec::new();
        let mut paused = Vec::new();
        for (w, mut choice) in wants.iter().zip(choice) {
            // Down one step at a time to a pause: a path that could not
            // carry a higher layer may well carry the lowest, and only
            // congestion seen there (a cut while on it) pauses the video.
            if choice.is_none()
                && w.max.is_some()
                && w.current.is_some_and(|c| c > 0 || cut.is_none())
            {
                choice = Some(0);
            }
            let Some(t) = self.tracks.get_mut(&w.track) else {
                continue;
            };
            let (layers, top) = (t.layers, t.top());
            let Some(sub) = t.sub_mut(id) else { continue };
            let view = view_max(sub.view, layers);
            let limit = match (view, choice) {
                (None, _) => Limit::View,
                (Some(_), None) => Limit::Network,
                (Some(v), Some(l)) if l < v.min(top) => Limit::Network,
                (Some(v), Some(_)) if top < v => Limit::Publisher,
                (Some(v), Some(_)) if v < layers - 1 => Limit::View,
                _ => Limit::None,
            };
            let target = choice.unwrap_or(NO_LAYER);
            if sub.target != target
                && target != NO_LAYER
                && (sub.layer == NO_LAYER || target > sub.layer)
            {
                raised = true;
            }
            sub.target = target;
            let congested_down =
                limit == Limit::Network && sub.layer != NO_LAYER && target < sub.layer;
            if (target == NO_LAYER || congested_down) && sub.layer != NO_LAYER {
                // Paused at once, what waits of it included; going down
                // because the path is congested, the higher layer stops
                // at once too (rather than overload the path, audio with
                // it, until the lower layer's keyframe comes).
                sub.layer = NO_LAYER;
                paused.push(w.track);
                if target == NO_LAYER {
                    self.counters.video_paused += 1;
                }
            }
            if target != NO_LAYER && sub.layer != target {
                keyframes.push((w.track, target));
            }
            if sub.told != Some((target, limit)) {
                sub.told = Some((target, limit));
                told.push(ServerMessage::Forwarding {
                    track: w.track,
                    layer: choice,
                    limit,
                });
            }
        }
        if let Some(c) = self.conn_mut(id) {
            if raised {
                c.estimator.raised(now);
            }
            for track in paused {
                c.queue.discard_track(track);
            }
        }
        for (track, layer) in keyframes {
            self.request_keyframe(track, Some(layer), now);
        }
        for m in told {
            self.control.push_back((id, m));
        }
    }

    /// Tells each video track's publisher (or the link it came over)
    /// which layers anyone here takes, when that changed.
    fn tell_publishers(&mut self) {
        for (id, t) in self.tracks.iter_mut() {
            if !t.video() {
                continue;
            }
            let mut mask = t.subscribers.iter().fold(0, |m, s| m | s.wanted());
            mask &= (1u8 << (t.top() + 1)) - 1;
            if mask == t.media.active {
                continue;
            }
            t.media.active = mask;
            let owner = t.owner;
            let from_link = self
                .conns
                .get(owner.index as usize)
                .and_then(Option::as_ref)
                .is_some_and(|c| c.link && c.generation == owner.generation);
            if from_link {
                self.link_out
                    .push_back((owner, LinkRequest::Layers(*id, mask)));
            } else {
                let active = (0..MAX_LAYERS).filter(|l| mask & (1 << l) != 0).collect();
                self.control
                    .push_back((owner, ServerMessage::Layers { track: *id, active }));
            }
        }
    }

    /// Moves the connections that have datagrams queued into `out` (the
    /// shell's list of connections to drain).
    pub fn take_ready(&mut self, out: &mut Vec<ConnId>) {
        out.append(&mut self.ready);
    }

    /// The next datagram to send on `conn`, oldest first.
    pub fn poll_datagram(&mut self, conn: ConnId) -> Option<Bytes> {
        let c = self
            .conns
            .get_mut(conn.index as usize)?
            .as_mut()
            .filter(|c| c.generation == conn.generation)?;
        let next = c.queue.pop();
        if let Some(d) = &next {
            c.bytes_out += d.len() as u64;
            if c.link {
                self.counters.link_bytes_out += d.len() as u64;
            }
        }
        if c.queue.is_empty() {
            // Drained: the next datagram for it puts it back on the ready list.
            c.ready = false;
        }
        next
    }

    /// Length of the datagram [`Core::poll_datagram`] would return next, so
    /// the shell can check the connection has room before taking it.
    pub fn next_datagram_len(&self, conn: ConnId) -> Option<usize> {
        self.conn(conn)?.queue.front_len()
    }

    /// The next control message to send, and to whom.
    /// Control messages waiting to be polled (for all connections).
    pub fn pending_control(&self) -> usize {
        self.control.len()
    }

    pub fn poll_control(&mut self) -> Option<(ConnId, ServerMessage)> {
        self.control.pop_front()
    }

    /// Per-conference participants and bytes, for the router's reports.
    pub fn conference_stats(&self) -> Vec<ConferenceStats> {
        self.conferences
            .iter()
            .map(|(id, members)| {
                let (mut bytes_in, mut bytes_out) =
                    self.closed_bytes.get(id).copied().unwrap_or_default();
                let mut participants = 0;
                for c in members
                    .iter()
                    .filter_map(|m| self.conn(*m))
                    .filter(|c| !c.link)
                {
                    bytes_in += c.bytes_in;
                    bytes_out += c.bytes_out;
                    participants += 1;
                }
                ConferenceStats {
                    id: id.clone(),
                    participants,
                    bytes_in,
                    bytes_out,
                }
            })
            .collect()
    }

    /// Connections of `conference`; only those of `participant` when given.
    pub fn connections_of(&self, conference: &str, participant: Option<&str>) -> Vec<ConnId> {
        self.members(conference)
            .iter()
            .copied()
            .filter(|m| {
                participant.is_none_or(|p| self.conn(*m).is_some_and(|c| c.participant.0 == p))
            })
            .collect()
    }

    /// The participant on `conn` (for the shell's logs and moderation).
    pub fn participant(&self, conn: ConnId) -> Option<(&str, &ParticipantId, &str)> {
        self.conn(conn).map(|c| {
            (
                c.conference.as_str(),
                &c.participant,
                c.display_name.as_str(),
            )
        })
    }
}

/// The highest layer a view calls for, of a track of `layers`.
fn view_max(view: u8, layers: u8) -> Option<u8> {
    match view {
        NO_LAYER => None,
        ANY_VIEW => Some(layers - 1),
        v => Some(v.min(layers - 1)),
    }
}

/// A tick's rates, uplink loss and loudness of one track.
fn measure(t: &mut Track, dt: f64) {
    let m = &mut t.media;
    let (mut lost, mut received) = (0, 0);
    for l in m.per_layer.iter_mut() {
        if l.bytes > 0 {
            let now = (l.bytes as f64 * 8.0 / dt) as u64;
            l.rate = if l.rate == 0 {
                now
            } else {
                (l.rate * 7 + now * 3) / 10
            };
        }
        l.bytes = 0;
        lost += l.lost;
        received += l.received;
        l.lost = 0;
        l.received = 0;
    }
    m.window.rotate_left(1);
    m.window[UPLINK_WINDOW - 1] = (lost, received);
    if t.info.kind == TrackKind::Audio {
        let loudness = if m.loudness_count == 0 {
            0.0
        } else {
            m.loudness_sum as f32 / m.loudness_count as f32
        };
        m.loudness = m.loudness * 0.6 + loudness * 0.4;
        m.loudness_sum = 0;
        m.loudness_count = 0;
    }
}

/// Sheds the top layer a publisher sends when its uplink loses more than
/// [`UPLINK_LOSS`] over the last second; restores one after a hold that
/// doubles when a restored layer is shed again within 10 s.
fn uplink(t: &mut Track, now: Instant, counters: &mut Counters) {
    let layers = t.layers;
    let m = &mut t.media;
    let (lost, received) = m
        .window
        .iter()
        .fold((0u32, 0u32), |a, w| (a.0 + w.0, a.1 + w.1));
    let expected = lost + received;
    let lossy = expected >= 20 && f64::from(lost) > f64::from(expected) * UPLINK_LOSS;
    // The highest layer it sends now.
    let sending = (0..=m.uplink_max).rev().find(|l| m.active & (1 << l) != 0);
    if lossy {
        let Some(top) = sending.filter(|t| *t > 0) else {
            return;
        };
        if m.restored_at
            .is_some_and(|r| now.saturating_duration_since(r) < Duration::from_secs(10))
        {
            m.uplink_hold = (m.uplink_hold * 2).min(UPLINK_HOLD_MAX);
        }
        m.uplink_max = top - 1;
        m.uplink_hold_until = Some(now + m.uplink_hold);
        m.restored_at = None;
        m.window = [(0, 0); UPLINK_WINDOW];
        counters.uplink_sheds += 1;
    } else if m.uplink_max < layers - 1 && m.uplink_hold_until.is_none_or(|h| now >= h) {
        m.uplink_max += 1;
        m.restored_at = Some(now);
        m.uplink_hold_until = Some(now + m.uplink_hold);
    } else if m
        .restored_at
        .is_some_and(|r| now.saturating_duration_since(r) > Duration::from_secs(20))
    {
        m.uplink_hold = (m.uplink_hold / 2).max(UPLINK_HOLD_MIN);
        m.restored_at = None;
    }
}

#[cfg(test)]
mod layer_tests;
#[cfg(test)]
mod tests;
