//! Media datagrams: a 10-byte header and an opaque payload.
//!
//! ```text
//!  byte 0      bytes 1..5          bytes 5..9          byte 9   bytes 10..
//! +-----------+-------------------+-------------------+--------+------------------+
//! | VVV FFFFF | track id (u32 BE) | sequence (u32 BE) | info   | payload (opaque) |
//! +-----------+-------------------+-------------------+--------+------------------+
//! ```
//!
//! `VVV` is the datagram format version (2). `FFFFF` are flags: bit 0
//! keyframe, bit 1 end of frame, bit 2 discardable; bits 3 and 4 are reserved
//! and must be zero. `info` depends on the track's kind ([`Info`]): on video
//! the spatial layer (`LL000000`), on audio the sender's audio level
//! (`VLLLLLLL`, voice activity and -dBov as in RFC 6464), on data zero.
//! Track ids are assigned by the relay for the whole conference when a
//! track is published, so a datagram is forwarded to subscribers byte for
//! byte: the relay never rewrites or decrypts it, and end-to-end encrypted
//! payloads pass untouched. End-to-end encryption authenticates the whole
//! header, `info` included.

/// Header length in bytes.
pub const HEADER_LEN: usize = 10;

/// Largest datagram accepted (header + payload). QUIC datagrams on common
/// paths carry well under this; anything larger is malformed here.
pub const MAX_DATAGRAM_LEN: usize = 1500;

/// The datagram format version this build speaks.
pub const VERSION: u8 = 2;

/// Spatial layers a video track may have.
pub const MAX_LAYERS: u8 = 3;

/// The header's `info` byte. What it means depends on the track's kind,
/// which only the relay's track table knows: the header parser takes any
/// value, and the forwarding core checks it against the track.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Info(pub u8);

impl Info {
    /// Data tracks, and anything without a layer or a level.
    pub const NONE: Info = Info(0);

    /// A video datagram of spatial layer `layer` (0 = lowest).
    pub fn layer(layer: u8) -> Info {
        Info((layer & 0b11) << 6)
    }

    /// An audio datagram: `voice` (the sender detected speech) and `level`
    /// in -dBov, 0 (loudest) to 127 (silence), as RFC 6464 encodes it.
    pub fn audio(voice: bool, level: u8) -> Info {
        Info(u8::from(voice) << 7 | level.min(127))
    }

    /// The spatial layer, read as video.
    pub fn spatial_layer(self) -> u8 {
        self.0 >> 6
    }

    /// Whether the bits video leaves reserved are zero and the layer is
    /// below `layers`.
    pub fn valid_video(self, layers: u8) -> bool {
        self.0 & 0b11_1111 == 0 && self.spatial_layer() < layers
    }

    /// Voice activity, read as audio.
    pub fn voice(self) -> bool {
        self.0 & 0x80 != 0
    }

    /// Audio level in -dBov (127: silence), read as audio.
    pub fn level(self) -> u8 {
        self.0 & 0x7f
    }
}

const FLAG_KEYFRAME: u8 = 0b0_0001;
const FLAG_END_OF_FRAME: u8 = 0b0_0010;
const FLAG_DISCARDABLE: u8 = 0b0_0100;
const FLAGS_KNOWN: u8 = FLAG_KEYFRAME | FLAG_END_OF_FRAME | FLAG_DISCARDABLE;

/// A conference-wide track id, assigned by the relay.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize, serde::Deserialize,
)]
#[serde(transparent)]
pub struct TrackId(pub u32);

/// Per-datagram flags.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Flags(u8);

impl Flags {
    pub const KEYFRAME: Flags = Flags(FLAG_KEYFRAME);
    pub const END_OF_FRAME: Flags = Flags(FLAG_END_OF_FRAME);
    pub const DISCARDABLE: Flags = Flags(FLAG_DISCARDABLE);

    pub fn keyframe(self) -> bool {
        self.0 & FLAG_KEYFRAME != 0
    }

    pub fn end_of_frame(self) -> bool {
        self.0 & FLAG_END_OF_FRAME != 0
    }

    pub fn discardable(self) -> bool {
        self.0 & FLAG_DISCARDABLE != 0
    }

    pub fn bits(self) -> u8 {
        self.0
    }
}

impl std::ops::BitOr for Flags {
    type Output = Flags;

    fn bitor(self, rhs: Flags) -> Flags {
        Flags(self.0 | rhs.0)
    }
}

/// The parsed header of a media datagram.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MediaHeader {
    pub track: TrackId,
    pub sequence: u32,
    pub flags: Flags,
    pub info: Info,
}

/// Why a datagram was refused. A bounded set: each is a metric label.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum DatagramError {
    #[error("datagram of {0} bytes is shorter than the {HEADER_LEN}-byte header")]
    Truncated(usize),
    #[error("datagram of {0} bytes is longer than {MAX_DATAGRAM_LEN}")]
    Oversized(usize),
    #[error("datagram format version {0} is not supported (this relay speaks {VERSION})")]
    UnsupportedVersion(u8),
    #[error("reserved datagram flags {0:#07b} are set")]
    ReservedFlags(u8),
}

impl DatagramError {
    /// Stable code (metric label).
    pub fn code(self) -> &'static str {
        match self {
            DatagramError::Truncated(_) => "truncated",
            DatagramError::Oversized(_) => "oversized",
            DatagramError::UnsupportedVersion(_) => "unsupported_version",
            DatagramError::ReservedFlags(_) => "reserved_flags",
        }
    }
}

/// Parses the header of an untrusted datagram. Borrows nothing and copies
/// nothing: the caller forwards the datagram it already holds.
#[inline]
pub fn parse(datagram: &[u8]) -> Result<MediaHeader, DatagramError> {
    if datagram.len() > MAX_DATAGRAM_LEN {
        return Err(DatagramError::Oversized(datagram.len()));
    }
    let Some((header, _payload)) = datagram.split_first_chunk::<HEADER_LEN>() else {
        return Err(DatagramError::Truncated(datagram.len()));
    };
    let version = header[0] >> 5;
    if version != VERSION {
        return Err(DatagramError::UnsupportedVersion(version));
    }
    let flags = header[0] & 0b1_1111;
    if flags & !FLAGS_KNOWN != 0 {
        return Err(DatagramError::ReservedFlags(flags & !FLAGS_KNOWN));
    }
    Ok(MediaHeader {
        track: TrackId(u32::from_be_bytes([
            header[1], header[2], header[3], header[4],
        ])),
        sequence: u32::from_be_bytes([header[5], header[6], header[7], header[8]]),
        flags: Flags(flags),
        info: Info(header[9]),
    })
}

/// The payload of a datagram whose header parsed.
pub fn payload(datagram: &[u8]) -> &[u8] {
    datagram.get(HEADER_LEN..).unwrap_or(&[])
}

/// Appends a datagram (header and payload) to `out`.
pub fn encode(header: &MediaHeader, payload: &[u8], out: &mut Vec<u8>) {
    out.reserve(HEADER_LEN + payload.len());
    out.push(VERSION << 5 | (header.flags.0 & FLAGS_KNOWN));
    out.extend_from_slice(&header.track.0.to_be_bytes());
    out.extend_from_slice(&header.sequence.to_be_bytes());
    out.push(header.info.0);
    out.extend_from_slice(payload);
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn known_layout() {
        let mut out = Vec::new();
        let header = MediaHeader {
            track: TrackId(0x0102_0304),
            sequence: 0x0a0b_0c0d,
            flags: Flags::KEYFRAME | Flags::END_OF_FRAME,
            info: Info::layer(2),
        };
        encode(&header, b"xyz", &mut out);
        assert_eq!(
            out,
            [
                0b010_00011,
                1,
                2,
                3,
                4,
                0x0a,
                0x0b,
                0x0c,
                0x0d,
                0b1000_0000,
                b'x',
                b'y',
                b'z'
            ]
        );
        let parsed = parse(&out).unwrap();
        assert_eq!(parsed, header);
        assert!(
            parsed.flags.keyframe() && parsed.flags.end_of_frame() && !parsed.flags.discardable()
        );
        assert_eq!(payload(&out), b"xyz");
        assert_eq!(parsed.info.spatial_layer(), 2);
        assert!(parsed.info.valid_video(3) && !parsed.info.valid_video(2));
    }

    #[test]
    fn info_byte() {
        let a = Info::audio(true, 30);
        assert_eq!(a.0, 0x80 | 30);
        assert!(a.voice() && a.level() == 30);
        assert_eq!(Info::audio(false, 200).level(), 127);
        assert!(!Info(0b0000_0001).valid_video(3), "reserved video bits");
        assert!(!Info(0b1100_0000).valid_video(3), "layer 3");
        assert!(Info::NONE.valid_video(1));
    }

    #[test]
    fn refusals() {
        assert_eq!(parse(&[0x40; 9]), Err(DatagramError::Truncated(9)));
        assert_eq!(parse(&[]), Err(DatagramError::Truncated(0)));
        assert_eq!(
            parse(&vec![0x40; 1501]),
            Err(DatagramError::Oversized(1501))
        );
        // Version 1 (the 9-byte header of earlier builds) is refused.
        assert_eq!(
            parse(&[0x20; 10]),
            Err(DatagramError::UnsupportedVersion(1))
        );
        assert_eq!(
            parse(&[0x58, 0, 0, 0, 0, 0, 0, 0, 0, 0]),
            Err(DatagramError::ReservedFlags(0b11000))
        );
        // A header alone is a valid, empty datagram.
        assert!(parse(&[0x40; 10]).is_ok());
    }

    proptest! {
        #[test]
        fn round_trip(track: u32, sequence: u32, flags in 0u8..8, info: u8, payload in prop::collection::vec(any::<u8>(), 0..=MAX_DATAGRAM_LEN - HEADER_LEN)) {
            let header = MediaHeader { track: TrackId(track), sequence, flags: Flags(flags), info: Info(info) };
            let mut out = Vec::new();
            encode(&header, &payload, &mut out);
            prop_assert_eq!(parse(&out), Ok(header));
            prop_assert_eq!(super::payload(&out), &payload[..]);
        }

        #[test]
        fn random_bytes_never_panic(bytes in prop::collection::vec(any::<u8>(), 0..2000)) {
            if let Ok(h) = parse(&bytes) {
                prop_assert!(bytes.len() >= HEADER_LEN && bytes.len() <= MAX_DATAGRAM_LEN);
                prop_assert_eq!(h.flags.bits() & !FLAGS_KNOWN, 0);
            }
        }
    }
}
