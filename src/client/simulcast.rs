//! Synthetic call media for tests and the load tools: what a camera and
//! microphone, or a shared screen, would send, without an encoder, and
//! what a subscriber measures of it.
//!
//! A [`Source`] publishes video in up to three spatial layers at the
//! rates of a camera call's simulcast (about 180p, 360p and 720p at
//! [`LAYER_RATES`], 30 frames/s, each layer with its own keyframes, 4×
//! the size of a delta frame) and Opus-sized audio (20 ms frames of 80
//! bytes) whose headers carry a level. It follows the relay's word: only
//! the layers `layers` names are sent, and a `keyframe_request` makes the
//! next frame of that layer a keyframe. A screen source is one layer at
//! 5 frames/s: large keyframes, small deltas. Frames use the payload
//! format of [`super::frames`], so the page and [`Viewer`] put them back
//! together; each payload starts with its capture time.
//!
//! A [`Viewer`] reassembles what arrives and measures, per video track,
//! the frames of each layer and the time it showed no new frame for more
//! than [`FROZEN`], and per audio track the frames lost.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use super::frames::{MAX_DATAGRAM, Packetizer, Reassembler};
use crate::wire::control::ServerMessage;
use crate::wire::datagram::{self, Info, MAX_LAYERS, TrackId};

/// Rates of the three camera layers, bit/s.
pub const LAYER_RATES: [u64; MAX_LAYERS as usize] = [150_000, 500_000, 1_500_000];

/// Camera frames per second.
pub const FPS: u32 = 30;

/// A screen share's frames per second.
pub const SCREEN_FPS: u32 = 5;

/// A screen share's rate, bit/s (text stays sharp at 1080p).
pub const SCREEN_RATE: u64 = 1_200_000;

/// Frames between keyframes nobody asked for.
pub const GOP: u32 = 90;

/// Audio frame interval and size (32 kbit/s).
pub const AUDIO_INTERVAL: Duration = Duration::from_millis(20);
pub const AUDIO_BYTES: usize = 80;

/// No new frame for longer than this is frozen video.
pub const FROZEN: Duration = Duration::from_millis(500);

/// What a [`Source`] sends.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// A camera in `layers` spatial layers (1 to 3).
    Camera { layers: u8 },
    /// A shared screen: one layer, few frames.
    Screen,
}

/// One publisher's synthetic video track (and the audio beside it).
#[derive(Debug)]
pub struct Source {
    kind: Kind,
    video: TrackId,
    layers: Vec<Packetizer>,
    /// Layers the relay asked for (bitmask); all until it says.
    active: u8,
    /// Layers whose next frame is a keyframe (bitmask).
    keyframe: u8,
    frame: u32,
    since_key: [u32; MAX_LAYERS as usize],
    audio: Option<Packetizer>,
    /// The level the next audio frames carry, -dBov (127: silence).
    pub level: u8,
    pub sent_frames: [u64; MAX_LAYERS as usize],
}

impl Source {
    /// A source for `video` (and `audio`, if published) of `kind`, in
    /// datagrams of at most `max_datagram` bytes less `reserve` (room for
    /// end-to-end encryption).
    pub fn new(
        kind: Kind,
        video: TrackId,
        audio: Option<TrackId>,
        max_datagram: usize,
        reserve: usize,
    ) -> Self {
        let size = max_datagram.min(MAX_DATAGRAM) - reserve;
        let n = match kind {
            Kind::Camera { layers } => layers.clamp(1, MAX_LAYERS),
            Kind::Screen => 1,
        };
        let layers = (0..n)
            .map(|l| {
                let mut p = Packetizer::new(video, size);
                if n > 1 {
                    p.set_info(Info::layer(l));
                }
                p
            })
            .collect();
        Source {
            kind,
            video,
            layers,
            active: (1 << n) - 1,
            keyframe: (1 << n) - 1,
            frame: 0,
            since_key: [0; MAX_LAYERS as usize],
            audio: audio.map(|a| Packetizer::new(a, size)),
            level: 127,
            sent_frames: [0; MAX_LAYERS as usize],
        }
    }

    /// The declared layers (for `publish`).
    pub fn layer_count(&self) -> u8 {
        self.layers.len() as u8
    }

    /// How often [`Source::video_frame`] should run.
    pub fn frame_interval(&self) -> Duration {
        match self.kind {
            Kind::Camera { .. } => Duration::from_secs(1) / FPS,
            Kind::Screen => Duration::from_secs(1) / SCREEN_FPS,
        }
    }

    /// The layers the relay last asked for (bitmask).
    pub fn active(&self) -> u8 {
        self.active
    }

    /// Takes the relay's `layers` and `keyframe_request` for this track;
    /// other messages are ignored.
    pub fn on_control(&mut self, message: &ServerMessage) {
        match message {
            ServerMessage::Layers { track, active } if *track == self.video => {
                let before = self.active;
                self.active = active
                    .iter()
                    .filter(|l| usize::from(**l) < self.layers.len())
                    .fold(0, |m, l| m | 1 << l);
                // A layer that resumes starts with a keyframe.
                self.keyframe |= self.active & !before;
            }
            ServerMessage::KeyframeRequest { track, layer } if *track == self.video => {
                self.keyframe |= match layer {
                    Some(l) => 1 << l,
                    None => 1,
                };
            }
            _ => {}
        }
    }

    /// The datagrams of the next video frame of every active layer.
    pub fn video_frame(&mut self, capture_micros: u64) -> Vec<Vec<u8>> {
        let mut out = Vec::new();
        let frame = self.frame;
        self.frame += 1;
        for (l, p) in self.layers.iter_mut().enumerate() {
            if self.active & (1 << l) == 0 {
                continue;
            }
            let key = self.keyframe & (1 << l) != 0 || self.since_key[l] >= GOP;
            let (rate, fps) = match self.kind {
                Kind::Camera { .. } => (LAYER_RATES[l], FPS),
                Kind::Screen => (SCREEN_RATE, SCREEN_FPS),
            };
            // Deltas at the layer's rate; keyframes four times as large.
            let delta = (rate / 8 / u64::from(fps)) as usize;
            let size = if key { delta * 4 } else { delta };
            let mut data = vec![(frame % 251) as u8; size.max(16)];
            data[..8].copy_from_slice(&capture_micros.to_be_bytes());
            if let Ok(ds) = p.packetize(&data, key, capture_micros) {
                out.extend(ds);
            }
            if key {
                self.keyframe &= !(1 << l);
                self.since_key[l] = 0;
            } else {
                self.since_key[l] += 1;
            }
            self.sent_frames[l] += 1;
        }
        out
    }

    /// The datagrams of the next audio frame (none without an audio track).
    pub fn audio_frame(&mut self, capture_micros: u64) -> Vec<Vec<u8>> {
        let level = self.level;
        let Some(p) = self.audio.as_mut() else {
            return Vec::new();
        };
        p.set_info(Info::audio(level < 60, level));
        let mut data = vec![0x33; AUDIO_BYTES];
        data[..8].copy_from_slice(&capture_micros.to_be_bytes());
        p.packetize(&data, false, capture_micros)
            .unwrap_or_default()
    }
}

/// What a [`Viewer`] measured of one video track.
#[derive(Debug, Clone, Default)]
pub struct VideoStats {
    /// Whole frames given, per layer.
    pub frames: [u64; MAX_LAYERS as usize],
    /// The layer of the last frame given.
    pub layer: Option<u8>,
    pub last_frame: Option<Instant>,
    /// Time beyond [`FROZEN`] without a new frame, summed over gaps
    /// (counted from the first frame).
    pub frozen: Duration,
    /// Capture-to-reassembly latency of each frame, microseconds.
    pub latencies_us: Vec<u64>,
}

/// What a [`Viewer`] measured of one audio track.
#[derive(Debug, Clone, Default)]
pub struct AudioStats {
    pub frames: u64,
    pub lost: u64,
    /// The level in the last datagram's header.
    pub level: Option<u8>,
}

/// Puts the tracks a subscriber receives back together and measures them.
#[derive(Debug, Default)]
pub struct Viewer {
    video: HashMap<TrackId, (Reassembler, VideoStats)>,
    audio: HashMap<TrackId, (Reassembler, AudioStats)>,
}

impl Viewer {
    /// Expect video on `track`.
    pub fn video(&mut self, track: TrackId) {
        self.video
            .entry(track)
            .or_insert_with(|| (Reassembler::new(true), VideoStats::default()));
    }

    /// Expect audio on `track`.
    pub fn audio(&mut self, track: TrackId) {
        self.audio
            .entry(track)
            .or_insert_with(|| (Reassembler::new(false), AudioStats::default()));
    }

    /// Takes one datagram (plaintext: decrypt first) received at `now`;
    /// returns the track to ask a keyframe of, if a video frame was lost.
    pub fn push(&mut self, datagram: &[u8], now: Instant) -> Option<TrackId> {
        let header = datagram::parse(datagram).ok()?;
        if let Some((r, s)) = self.video.get_mut(&header.track) {
            let out = r.push(datagram);
            if let Some(f) = out.frame {
                let layer = header.info.spatial_layer();
                s.frames[usize::from(layer)] += 1;
                s.layer = Some(layer);
                if let Some(last) = s.last_frame {
                    s.frozen += now.saturating_duration_since(last).saturating_sub(FROZEN);
                }
                s.last_frame = Some(now);
                s.latencies_us
                    .push(crate::clock::unix_micros().saturating_sub(f.capture_micros));
            }
            return out.want_keyframe.then_some(header.track);
        }
        if let Some((r, s)) = self.audio.get_mut(&header.track) {
            let before = r.lost_frames;
            if r.push(datagram).frame.is_some() {
                s.frames += 1;
            }
            s.lost += r.lost_frames - before;
            s.level = Some(header.info.level());
        }
        None
    }

    /// Closes the books at `now`: a freeze still going on counts.
    pub fn finish(&mut self, now: Instant) {
        for (_, s) in self.video.values_mut() {
            if let Some(last) = s.last_frame {
                s.frozen += now.saturating_duration_since(last).saturating_sub(FROZEN);
                s.last_frame = Some(now);
            }
        }
    }

    pub fn video_stats(&self, track: TrackId) -> Option<&VideoStats> {
        self.video.get(&track).map(|(_, s)| s)
    }

    pub fn audio_stats(&self, track: TrackId) -> Option<&AudioStats> {
        self.audio.get(&track).map(|(_, s)| s)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn layers_of(datagrams: &[Vec<u8>]) -> Vec<u8> {
        let mut l: Vec<u8> = datagrams
            .iter()
            .map(|d| datagram::parse(d).unwrap().info.spatial_layer())
            .collect();
        l.dedup();
        l
    }

    #[test]
    fn sends_the_layers_the_relay_asks_for_with_keyframes_where_they_resume() {
        let video = TrackId(1);
        let mut s = Source::new(Kind::Camera { layers: 3 }, video, Some(TrackId(2)), 1100, 0);
        let first = s.video_frame(1);
        assert_eq!(layers_of(&first), [0, 1, 2]);
        assert!(
            first
                .iter()
                .all(|d| datagram::parse(d).unwrap().flags.keyframe())
        );
        let delta = s.video_frame(2);
        assert!(
            !delta
                .iter()
                .any(|d| datagram::parse(d).unwrap().flags.keyframe())
        );
        // About the layers' rates: 625, 2,083 and 6,250 bytes a frame.
        let bytes: usize = delta.iter().map(Vec::len).sum();
        assert!((8_900..10_000).contains(&bytes), "{bytes}");
        s.on_control(&ServerMessage::Layers {
            track: video,
            active: vec![0],
        });
        assert_eq!(layers_of(&s.video_frame(3)), [0]);
        s.on_control(&ServerMessage::Layers {
            track: video,
            active: vec![0, 2],
        });
        let resumed = s.video_frame(4);
        assert_eq!(layers_of(&resumed), [0, 2]);
        let key = |l: u8| {
            resumed
                .iter()
                .filter(|d| datagram::parse(d).unwrap().info.spatial_layer() == l)
                .all(|d| datagram::parse(d).unwrap().flags.keyframe())
        };
        assert!(!key(0) && key(2), "layer 2 resumes with a keyframe");
        s.on_control(&ServerMessage::KeyframeRequest {
            track: video,
            layer: Some(0),
        });
        let asked = s.video_frame(5);
        assert!(datagram::parse(&asked[0]).unwrap().flags.keyframe());
        assert!(
            !datagram::parse(asked.last().unwrap())
                .unwrap()
                .flags
                .keyframe()
        );
        let audio = s.audio_frame(6);
        assert_eq!(datagram::parse(&audio[0]).unwrap().info.level(), 127);
    }

    #[test]
    fn a_viewer_follows_a_layer_switch_at_a_keyframe_without_a_loss() {
        let video = TrackId(1);
        let mut s = Source::new(Kind::Camera { layers: 3 }, video, None, 1100, 0);
        let mut v = Viewer::default();
        v.video(video);
        let now = Instant::now();
        // The relay forwards layer 0, then switches to 2 where its keyframe starts.
        for d in s.video_frame(1) {
            if datagram::parse(&d).unwrap().info.spatial_layer() == 0 {
                assert_eq!(v.push(&d, now), None);
            }
        }
        for d in s.video_frame(2) {
            if datagram::parse(&d).unwrap().info.spatial_layer() == 0 {
                assert_eq!(v.push(&d, now), None);
            }
        }
        s.on_control(&ServerMessage::KeyframeRequest {
            track: video,
            layer: Some(2),
        });
        for d in s.video_frame(3) {
            if datagram::parse(&d).unwrap().info.spatial_layer() == 2 {
                assert_eq!(v.push(&d, now), None);
            }
        }
        for d in s.video_frame(4) {
            if datagram::parse(&d).unwrap().info.spatial_layer() == 2 {
                assert_eq!(v.push(&d, now), None);
            }
        }
        let st = v.video_stats(video).unwrap();
        assert_eq!(st.frames, [2, 0, 2]);
        assert_eq!(st.layer, Some(2));
    }
}
