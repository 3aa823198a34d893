//! Media frames in datagrams: the payload format browsers and native
//! clients share (documented in `docs/wire-protocol.md`, "Frames in
//! datagrams"). The relay never
//! reads it; to the relay a payload is opaque bytes after wire v1's header.
//!
//! A frame (one encoded video frame or audio packet) is cut into fragments,
//! each sent as one datagram whose payload starts with a 17-byte header:
//!
//! | bytes | field |
//! |---|---|
//! | 0 | payload format version, 1 |
//! | 1–4 | frame number, u32 BE, per track from 0 (wraps) |
//! | 5–6 | fragment index, u16 BE, from 0 |
//! | 7–8 | fragment count, u16 BE, at least 1 |
//! | 9–16 | capture time, microseconds since the Unix epoch, u64 BE |
//!
//! then the fragment's bytes. Every datagram of a keyframe carries wire
//! v1's keyframe flag (the relay's drop policy keeps keyframes longest);
//! the last fragment carries end-of-frame. The wire header's sequence
//! counts datagrams per track, so a receiver sees loss as a gap.
//!
//! A receiver ([`Reassembler`]) gives a frame once all its fragments are
//! in. A frame with a fragment missing is dropped; for video every frame
//! after it up to the next keyframe is dropped too (they depend on it), and
//! the receiver asks for a keyframe (`keyframe_request`).

use crate::wire::datagram::{self, Flags, MediaHeader, TrackId};

/// Payload format version.
pub const VERSION: u8 = 1;

/// Bytes of the payload header.
pub const HEADER_LEN: usize = 17;

/// Largest datagram (wire header, payload header and fragment) a client
/// sends in a call that may hold browsers: below what browsers and quinn
/// accept on a 1,280-byte path, with room for the WebTransport session
/// prefix the relay adds towards a browser.
pub const MAX_DATAGRAM: usize = 1100;

/// Fragments one frame may have.
pub const MAX_FRAGMENTS: usize = 1024;

/// Frames dropped while waiting for a keyframe before asking again (a
/// request can be lost, or paced away by the relay).
pub const ASK_AGAIN: u32 = 30;

/// One frame: what an encoder produced and a decoder takes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Frame {
    pub number: u32,
    pub keyframe: bool,
    /// Microseconds since the Unix epoch when the frame was captured.
    pub capture_micros: u64,
    pub data: Vec<u8>,
}

/// Why a frame could not be sent.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PacketizeError {
    #[error("a datagram of {0} bytes leaves no room for a fragment")]
    DatagramTooSmall(usize),
    #[error("a frame of {0} bytes needs more than {MAX_FRAGMENTS} fragments")]
    FrameTooLarge(usize),
}

/// Cuts the frames of one track (of one layer) into datagrams.
#[derive(Debug)]
pub struct Packetizer {
    track: TrackId,
    /// The header's info byte: the layer, or the audio level.
    info: datagram::Info,
    /// The next wire sequence number.
    sequence: u32,
    /// The next frame number.
    frame: u32,
    /// Largest datagram, headers included.
    max_datagram: usize,
}

impl Packetizer {
    /// Datagrams of at most `max_datagram` bytes (use the smaller of the
    /// session's limit and [`MAX_DATAGRAM`]).
    pub fn new(track: TrackId, max_datagram: usize) -> Self {
        Packetizer {
            track,
            info: datagram::Info::NONE,
            sequence: 0,
            frame: 0,
            max_datagram,
        }
    }

    /// The info byte the next datagrams carry: a video layer's
    /// ([`datagram::Info::layer`]) or the level of the next audio frame
    /// ([`datagram::Info::audio`]).
    pub fn set_info(&mut self, info: datagram::Info) {
        self.info = info;
    }

    /// The track whose id the datagrams carry; a new id (after a rejoin)
    /// keeps the numbering going.
    pub fn set_track(&mut self, track: TrackId) {
        self.track = track;
    }

    /// The datagrams of one frame, in order; its number is the next one.
    pub fn packetize(
        &mut self,
        data: &[u8],
        keyframe: bool,
        capture_micros: u64,
    ) -> Result<Vec<Vec<u8>>, PacketizeError> {
        let room = self
            .max_datagram
            .checked_sub(datagram::HEADER_LEN + HEADER_LEN)
            .filter(|r| *r > 0)
            .ok_or(PacketizeError::DatagramTooSmall(self.max_datagram))?;
        let count = data.len().div_ceil(room).max(1);
        if count > MAX_FRAGMENTS {
            return Err(PacketizeError::FrameTooLarge(data.len()));
        }
        let number = self.frame;
        self.frame = self.frame.wrapping_add(1);
        let mut out = Vec::with_capacity(count);
        let mut payload = Vec::with_capacity(HEADER_LEN + room);
        for index in 0..count {
            let chunk = &data[(index * room).min(data.len())..((index + 1) * room).min(data.len())];
            payload.clear();
            payload.push(VERSION);
            payload.extend_from_slice(&number.to_be_bytes());
            payload.extend_from_slice(&(index as u16).to_be_bytes());
            payload.extend_from_slice(&(count as u16).to_be_bytes());
            payload.extend_from_slice(&capture_micros.to_be_bytes());
            payload.extend_from_slice(chunk);
            let mut flags = Flags::default();
            if keyframe {
                flags = flags | Flags::KEYFRAME;
            }
            if index + 1 == count {
                flags = flags | Flags::END_OF_FRAME;
            }
            let mut d = Vec::with_capacity(datagram::HEADER_LEN + payload.len());
            datagram::encode(
                &MediaHeader {
                    track: self.track,
                    sequence: self.sequence,
                    flags,
                    info: self.info,
                },
                &payload,
                &mut d,
            );
            self.sequence = self.sequence.wrapping_add(1);
            out.push(d);
        }
        Ok(out)
    }
}

/// The payload header of one datagram.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Fragment {
    frame: u32,
    index: u16,
    count: u16,
    capture_micros: u64,
}

fn parse_fragment(payload: &[u8]) -> Option<(Fragment, &[u8])> {
    if payload.len() < HEADER_LEN || payload[0] != VERSION {
        return None;
    }
    let u16_at = |i: usize| u16::from_be_bytes([payload[i], payload[i + 1]]);
    let f = Fragment {
        frame: u32::from_be_bytes(payload[1..5].try_into().ok()?),
        index: u16_at(5),
        count: u16_at(7),
        capture_micros: u64::from_be_bytes(payload[9..17].try_into().ok()?),
    };
    if f.count == 0 || usize::from(f.count) > MAX_FRAGMENTS || f.index >= f.count {
        return None;
    }
    Some((f, &payload[HEADER_LEN..]))
}

/// What one datagram gave a [`Reassembler`].
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Outcome {
    /// A whole frame, ready for the decoder.
    pub frame: Option<Frame>,
    /// A frame was lost: ask the publisher for a keyframe.
    pub want_keyframe: bool,
}

/// Puts one track's frames back together.
#[derive(Debug)]
pub struct Reassembler {
    /// Video frames depend on the ones before; audio frames do not.
    video: bool,
    current: Option<Partial>,
    /// Frames are dropped until a keyframe arrives (video after a loss,
    /// and at the start).
    need_keyframe: bool,
    /// Frames dropped since the last keyframe request; `None`: not asked.
    since_asked: Option<u32>,
    /// The newest frame number given or dropped.
    last: Option<u32>,
    /// Video: the spatial layer the last datagram was of. A switch (the
    /// relay makes one only where the new layer's keyframe starts) begins
    /// the numbering afresh.
    layer: Option<u8>,
    pub frames: u64,
    pub keyframes: u64,
    pub lost_frames: u64,
    pub bad_datagrams: u64,
}

#[derive(Debug)]
struct Partial {
    header: Fragment,
    keyframe: bool,
    parts: Vec<Option<Vec<u8>>>,
    have: usize,
}

impl Reassembler {
    pub fn new(video: bool) -> Self {
        Reassembler {
            video,
            current: None,
            need_keyframe: video,
            since_asked: None,
            last: None,
            layer: None,
            frames: 0,
            keyframes: 0,
            lost_frames: 0,
            bad_datagrams: 0,
        }
    }

    /// Takes one datagram (wire header included) of the track.
    pub fn push(&mut self, datagram: &[u8]) -> Outcome {
        let mut out = Outcome::default();
        let Ok(header) = datagram::parse(datagram) else {
            self.bad_datagrams += 1;
            return out;
        };
        let Some((f, bytes)) = parse_fragment(datagram::payload(datagram)) else {
            self.bad_datagrams += 1;
            return out;
        };
        if self.video {
            let layer = header.info.spatial_layer();
            if self.layer.is_some_and(|l| l != layer) {
                // Another layer's frames: its numbers are its own, and what
                // was being put together of the old layer will not finish.
                self.current = None;
                self.last = None;
                if !header.flags.keyframe() {
                    self.need_keyframe = true;
                }
            }
            self.layer = Some(layer);
        }
        // A fragment of a frame already given or dropped (reordered or
        // duplicated): nothing to do.
        if let Some(last) = self.last {
            if f.frame.wrapping_sub(last) == 0 || f.frame.wrapping_sub(last) > u32::MAX / 2 {
                return out;
            }
        }
        // A fragment of a frame older than the one being put together
        // arrived late: that frame was counted lost when this one began.
        if self
            .current
            .as_ref()
            .is_some_and(|p| f.frame.wrapping_sub(p.header.frame) > u32::MAX / 2)
        {
            return out;
        }
        if self
            .current
            .as_ref()
            .is_some_and(|p| p.header.frame != f.frame)
        {
            // A newer frame began before the current one was whole.
            let lost = self.current.take().map(|p| p.header.frame);
            self.lose(lost, &mut out);
        }
        if let Some(last) = self.last {
            // Whole frames skipped over entirely.
            let skipped = f.frame.wrapping_sub(last).wrapping_sub(1);
            if skipped > 0 && self.current.is_none() {
                self.lost_frames += u64::from(skipped);
                self.drop_dependants(&mut out);
            }
        }
        let p = self.current.get_or_insert_with(|| Partial {
            header: f,
            keyframe: header.flags.keyframe(),
            parts: vec![None; usize::from(f.count)],
            have: 0,
        });
        if p.header.count != f.count {
            self.bad_datagrams += 1;
            return out;
        }
        let slot = &mut p.parts[usize::from(f.index)];
        if slot.is_none() {
            *slot = Some(bytes.to_vec());
            p.have += 1;
        }
        if p.have == p.parts.len() {
            let Some(p) = self.current.take() else {
                return out;
            };
            self.last = Some(p.header.frame);
            if p.keyframe {
                self.need_keyframe = false;
                self.since_asked = None;
            }
            if self.need_keyframe {
                // Joined mid-stream, or the request went unanswered.
                self.lost_frames += 1;
                self.ask(&mut out);
                return out;
            }
            self.frames += 1;
            if p.keyframe {
                self.keyframes += 1;
            }
            out.frame = Some(Frame {
                number: p.header.frame,
                keyframe: p.keyframe,
                capture_micros: p.header.capture_micros,
                data: p.parts.into_iter().flatten().flatten().collect(),
            });
        }
        out
    }

    fn lose(&mut self, frame: Option<u32>, out: &mut Outcome) {
        self.lost_frames += 1;
        if let Some(n) = frame {
            self.last = Some(n);
        }
        self.drop_dependants(out);
    }

    fn drop_dependants(&mut self, out: &mut Outcome) {
        if self.video {
            self.need_keyframe = true;
            self.ask(out);
        }
    }

    /// Asks for a keyframe once, and again every [`ASK_AGAIN`] frames dropped.
    fn ask(&mut self, out: &mut Outcome) {
        match self.since_asked {
            Some(n) if n < ASK_AGAIN => self.since_asked = Some(n + 1),
            _ => {
                out.want_keyframe = true;
                self.since_asked = Some(0);
            }
        }
    }

    /// Whether frames are being dropped until a keyframe.
    pub fn waiting_for_keyframe(&self) -> bool {
        self.need_keyframe
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn frame_of(len: usize, seed: u8) -> Vec<u8> {
        (0..len)
            .map(|i| (i as u8).wrapping_mul(31) ^ seed)
            .collect()
    }

    #[test]
    fn frames_come_back_whole_with_flags_and_time() {
        let mut p = Packetizer::new(TrackId(7), MAX_DATAGRAM);
        let mut r = Reassembler::new(true);
        for (n, len) in [5000usize, 1, 0, 1074, 1075, 20_000]
            .into_iter()
            .enumerate()
        {
            let data = frame_of(len, n as u8);
            let key = n % 3 == 0;
            let datagrams = p.packetize(&data, key, 1_000 + n as u64).unwrap();
            for (i, d) in datagrams.iter().enumerate() {
                assert!(d.len() <= MAX_DATAGRAM);
                let h = datagram::parse(d).unwrap();
                assert_eq!(h.track, TrackId(7));
                assert_eq!(h.flags.keyframe(), key);
                assert_eq!(h.flags.end_of_frame(), i + 1 == datagrams.len());
            }
            let mut got = None;
            for d in &datagrams {
                if let Some(f) = r.push(d).frame {
                    got = Some(f);
                }
            }
            let f = got.expect("frame");
            assert_eq!(f.data, data);
            assert_eq!(f.number, n as u32);
            assert_eq!(f.keyframe, key);
            assert_eq!(f.capture_micros, 1_000 + n as u64);
        }
        assert_eq!((r.frames, r.keyframes, r.lost_frames), (6, 2, 0));
    }

    #[test]
    fn a_lost_fragment_drops_its_frame_and_the_frames_up_to_the_next_keyframe() {
        let mut p = Packetizer::new(TrackId(1), 200);
        let mut r = Reassembler::new(true);
        let frames: Vec<Vec<Vec<u8>>> = (0..6)
            .map(|n| p.packetize(&frame_of(500, n), n == 0 || n == 4, 0).unwrap())
            .collect();
        let mut given = Vec::new();
        let mut asked = 0;
        for (n, datagrams) in frames.iter().enumerate() {
            for (i, d) in datagrams.iter().enumerate() {
                // Frame 1 loses its middle fragment.
                if n == 1 && i == 1 {
                    continue;
                }
                let o = r.push(d);
                asked += usize::from(o.want_keyframe);
                if let Some(f) = o.frame {
                    given.push(f.number);
                }
            }
        }
        assert_eq!(given, vec![0, 4, 5]);
        assert_eq!(asked, 1, "one keyframe request per loss");
        assert_eq!(r.lost_frames, 3);
    }

    #[test]
    fn a_subscriber_joining_mid_stream_asks_for_a_keyframe_and_asks_again_if_none_comes() {
        let mut p = Packetizer::new(TrackId(1), MAX_DATAGRAM);
        let mut r = Reassembler::new(true);
        let mut asked = Vec::new();
        for n in 0..70u32 {
            let d = p.packetize(&[1; 50], n == 65, 0).unwrap();
            let o = r.push(&d[0]);
            if o.want_keyframe {
                asked.push(n);
            }
            assert_eq!(o.frame.is_some(), n >= 65, "frame {n}");
        }
        assert_eq!(asked, vec![0, 31, 62]);
    }

    #[test]
    fn audio_loses_only_the_frame_that_lost_a_datagram() {
        let mut p = Packetizer::new(TrackId(2), MAX_DATAGRAM);
        let mut r = Reassembler::new(false);
        let mut given = Vec::new();
        for n in 0..5u32 {
            let d = p.packetize(&[n as u8; 80], false, 0).unwrap();
            if n == 2 {
                continue;
            }
            if let Some(f) = r.push(&d[0]).frame {
                given.push(f.number);
            }
        }
        assert_eq!(given, vec![0, 1, 3, 4]);
        assert_eq!(r.lost_frames, 1);
    }

    #[test]
    fn garbage_and_reordering_never_panic_or_give_a_wrong_frame() {
        let mut r = Reassembler::new(true);
        for d in [
            &[][..],
            &[0x40, 0, 0, 0, 1, 0, 0, 0, 1, 0][..],
            &[0x41, 0, 0, 0, 1, 0, 0, 0, 1, 0, 1, 0, 0, 0, 0, 0, 5, 0, 0][..],
            &[
                0x41, 0, 0, 0, 1, 0, 0, 0, 1, 0, 1, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0,
            ][..],
        ] {
            assert_eq!(r.push(d).frame, None);
        }
        assert_eq!(r.bad_datagrams, 4);
        // A late fragment of a frame already given changes nothing.
        let mut p = Packetizer::new(TrackId(1), 100);
        let a = p.packetize(&frame_of(150, 1), true, 0).unwrap();
        let b = p.packetize(&frame_of(150, 2), false, 0).unwrap();
        for d in a.iter().chain(&b) {
            r.push(d);
        }
        assert_eq!(r.push(&a[0]), Outcome::default());
        assert_eq!(r.frames, 2);
    }

    #[test]
    fn a_frame_overtaken_by_the_next_one_is_lost_once_and_the_next_one_completes() {
        let mut p = Packetizer::new(TrackId(1), 200);
        let mut r = Reassembler::new(false);
        let frames: Vec<Vec<Vec<u8>>> = (0..3)
            .map(|n| p.packetize(&frame_of(300, n), false, 0).unwrap())
            .collect();
        assert_eq!(frames[2].len(), 2);
        let mut given = Vec::new();
        // Frame 0, then frame 2's first fragment, frame 1 (late), frame 2's
        // second fragment.
        for d in frames[0]
            .iter()
            .chain([&frames[2][0]])
            .chain(&frames[1])
            .chain([&frames[2][1]])
        {
            if let Some(f) = r.push(d).frame {
                given.push(f.number);
            }
        }
        assert_eq!(given, vec![0, 2]);
        assert_eq!(r.lost_frames, 1);
    }

    #[test]
    fn a_frame_too_large_or_a_datagram_too_small_is_refused() {
        let mut p = Packetizer::new(TrackId(1), datagram::HEADER_LEN + HEADER_LEN);
        assert!(matches!(
            p.packetize(b"x", false, 0),
            Err(PacketizeError::DatagramTooSmall(_))
        ));
        let mut p = Packetizer::new(TrackId(1), datagram::HEADER_LEN + HEADER_LEN + 1);
        assert!(matches!(
            p.packetize(&[0; MAX_FRAGMENTS + 1], false, 0),
            Err(PacketizeError::FrameTooLarge(_))
        ));
    }
}
