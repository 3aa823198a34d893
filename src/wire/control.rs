//! Control messages on the connection's one bidirectional stream.
//!
//! Each message is a frame:
//!
//! ```text
//! +--------------------+-------------+----------------------------+
//! | length (u32, BE)   | version (1) | JSON object                |
//! +--------------------+-------------+----------------------------+
//! ```
//!
//! `length` counts the version byte and the JSON and is at most
//! [`MAX_FRAME_LEN`]; a longer frame is refused before any of it is
//! buffered. The JSON object has a `"type"` field naming the message; unknown
//! fields are refused. The control stream is not on the media path, so a
//! self-describing, well-tested encoding is worth more here than bytes.

use serde::{Deserialize, Serialize};

use super::datagram::TrackId;

/// Largest frame body (version byte + JSON).
pub const MAX_FRAME_LEN: usize = 16 * 1024;

/// Control message format version this build speaks.
pub const VERSION: u8 = 1;

/// Longest codec label, display name or free-text reason accepted.
pub const MAX_LABEL_LEN: usize = 64;

/// Longest `data` of an `e2ee` message (base64url characters).
pub const MAX_E2EE_DATA_LEN: usize = 512;

/// Whether `data` may travel in an `e2ee` message: base64url without
/// padding, at most [`MAX_E2EE_DATA_LEN`] characters, not empty.
pub fn valid_e2ee_data(data: &str) -> bool {
    !data.is_empty()
        && data.len() <= MAX_E2EE_DATA_LEN
        && data
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
}

/// `text` cut to at most [`MAX_LABEL_LEN`] bytes at a character boundary
/// (for text from elsewhere that must fit a control message).
pub fn fit_label(text: &str) -> String {
    let mut end = text.len().min(MAX_LABEL_LEN);
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    text[..end].to_owned()
}

/// What a published track carries.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum TrackKind {
    Audio,
    Video,
    Data,
}

/// A video track's layers: `spatial` simulcast layers (1 to
/// [`MAX_LAYERS`](super::datagram::MAX_LAYERS), each datagram naming its
/// own in the header's `info` byte), and `temporal` layers within each,
/// for information (1 to 4).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Layers {
    pub spatial: u8,
    pub temporal: u8,
}

impl Layers {
    /// Whether a track may declare these.
    pub fn valid(self) -> bool {
        (1..=super::datagram::MAX_LAYERS).contains(&self.spatial)
            && (1..=4).contains(&self.temporal)
    }
}

/// What limits the video a subscriber gets of a track (`forwarding`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Limit {
    /// Nothing: the layer the tile's size calls for.
    None,
    /// The tile is hidden (or small): its size decides.
    View,
    /// The subscriber's path: it carries no more (or, with no layer, only
    /// audio).
    Network,
    /// The publisher sends no higher layer (its uplink is congested, or it
    /// sends none).
    Publisher,
}

/// Participant id within a conference, assigned by whoever issued the ticket.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(transparent)]
pub struct ParticipantId(pub String);

/// Messages a client sends.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case", deny_unknown_fields)]
pub enum ClientMessage {
    /// First message: the ticket that admits this connection.
    Hello {
        ticket: String,
    },
    /// Announce a track; the relay answers with `published` and its id.
    Publish {
        request: u32,
        kind: TrackKind,
        codec: String,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        layers: Option<Layers>,
        /// The payloads are end-to-end encrypted (SFrame, docs/e2ee.md).
        /// Required on an end-to-end encrypted conference.
        #[serde(default, skip_serializing_if = "std::ops::Not::not")]
        encrypted: bool,
    },
    Unpublish {
        track: TrackId,
    },
    Subscribe {
        track: TrackId,
    },
    Unsubscribe {
        track: TrackId,
    },
    /// Part of a frame of this track was lost: ask its publisher for a
    /// keyframe.
    KeyframeRequest {
        track: TrackId,
    },
    /// How large this video track is shown, in device pixels; 0 × 0: not
    /// shown (no video is forwarded). Decides the highest layer taken.
    View {
        track: TrackId,
        width: u16,
        height: u16,
    },
    /// Key material for other participants (docs/e2ee.md), forwarded
    /// without being read: to one participant, or to everyone in the
    /// conference when `to` is absent.
    E2ee {
        #[serde(default, skip_serializing_if = "Option::is_none")]
        to: Option<ParticipantId>,
        data: String,
    },
    // Braces, not a unit variant, so that unknown fields are refused here too.
    Leave {},
}

/// Messages the relay sends.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case", deny_unknown_fields)]
pub enum ServerMessage {
    /// Admitted: who you are and what is already published.
    Welcome {
        participant: ParticipantId,
        tracks: Vec<TrackInfo>,
    },
    /// Answer to `publish`: send this track's datagrams with this id.
    Published {
        request: u32,
        track: TrackId,
    },
    /// Answer to `subscribe`: datagrams of this track follow from now on.
    Subscribed {
        track: TrackId,
    },
    ParticipantJoined {
        participant: ParticipantId,
        display_name: String,
    },
    ParticipantLeft {
        participant: ParticipantId,
    },
    TrackPublished(TrackInfo),
    TrackUnpublished {
        track: TrackId,
    },
    /// A subscriber fell behind, or is switching to a layer: send a
    /// keyframe on this track (of this spatial layer, when given).
    KeyframeRequest {
        track: TrackId,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        layer: Option<u8>,
    },
    /// To a publisher: send only these spatial layers of this video track
    /// (none: no one takes any video of it now).
    Layers {
        track: TrackId,
        active: Vec<u8>,
    },
    /// To a subscriber: of this video track it now gets `layer` (none:
    /// video paused), and what holds it there.
    Forwarding {
        track: TrackId,
        layer: Option<u8>,
        limit: Limit,
    },
    /// Who speaks now, by the audio levels in the datagrams' headers
    /// (none: nobody for a while).
    ActiveSpeaker {
        participant: Option<ParticipantId>,
    },
    Kicked {
        reason: String,
    },
    /// Another participant's `e2ee` message, as it sent it. `host`: the
    /// sender's ticket lets it moderate (the relay says so, as it says
    /// `from`): only a host's epoch messages are taken.
    E2ee {
        from: ParticipantId,
        #[serde(default, skip_serializing_if = "std::ops::Not::not")]
        host: bool,
        data: String,
    },
    ConferenceEnded {},
    /// The relay is shutting down; reconnect through the router.
    GoingAway {
        code: u16,
        reason: String,
    },
    Error {
        code: u16,
        message: String,
    },
}

/// A published track as announced to others.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TrackInfo {
    pub track: TrackId,
    pub participant: ParticipantId,
    pub kind: TrackKind,
    pub codec: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub layers: Option<Layers>,
    /// Declared end-to-end encrypted by its publisher.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub encrypted: bool,
}

/// Why a control frame was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ControlError {
    #[error("control frame of {0} bytes exceeds the {MAX_FRAME_LEN}-byte limit")]
    Oversized(usize),
    #[error("empty control frame")]
    Empty,
    #[error("control message version {0} is not supported (this relay speaks {VERSION})")]
    UnsupportedVersion(u8),
    #[error("malformed control message: {0}")]
    Malformed(String),
    #[error("a label in the control message is longer than {MAX_LABEL_LEN} bytes")]
    LabelTooLong,
}

impl ControlError {
    /// Stable code (metric label).
    pub fn code(&self) -> &'static str {
        match self {
            ControlError::Oversized(_) => "oversized",
            ControlError::Empty => "empty",
            ControlError::UnsupportedVersion(_) => "unsupported_version",
            ControlError::Malformed(_) => "malformed",
            ControlError::LabelTooLong => "label_too_long",
        }
    }
}

/// Appends one framed message to `out`.
pub fn encode<M: Serialize>(message: &M, out: &mut Vec<u8>) -> Result<(), ControlError> {
    let start = out.len();
    out.extend_from_slice(&[0, 0, 0, 0, VERSION]);
    serde_json::to_writer(&mut *out, message)
        .map_err(|e| ControlError::Malformed(e.to_string()))?;
    let body = out.len() - start - 4;
    if body > MAX_FRAME_LEN {
        out.truncate(start);
        return Err(ControlError::Oversized(body));
    }
    out[start..start + 4].copy_from_slice(&(body as u32).to_be_bytes());
    Ok(())
}

/// Incremental decoder for one direction of a control stream: feed it bytes
/// as they arrive, take whole messages out. Buffers at most one frame.
#[derive(Debug, Default)]
pub struct Decoder {
    buf: Vec<u8>,
}

impl Decoder {
    pub fn new() -> Self {
        Self::default()
    }

    /// Appends received bytes.
    pub fn push(&mut self, bytes: &[u8]) {
        self.buf.extend_from_slice(bytes);
    }

    /// The next whole message, `Ok(None)` if more bytes are needed. After an
    /// error the stream is unusable (framing is lost): close it.
    pub fn next_message<M: for<'de> Deserialize<'de> + Labels>(
        &mut self,
    ) -> Result<Option<M>, ControlError> {
        let Some(len) = self
            .buf
            .first_chunk::<4>()
            .map(|l| u32::from_be_bytes(*l) as usize)
        else {
            return Ok(None);
        };
        if len > MAX_FRAME_LEN {
            return Err(ControlError::Oversized(len));
        }
        if len == 0 {
            return Err(ControlError::Empty);
        }
        if self.buf.len() < 4 + len {
            return Ok(None);
        }
        let result = decode_body(&self.buf[4..4 + len]);
        self.buf.drain(..4 + len);
        result.map(Some)
    }
}

fn decode_body<M: for<'de> Deserialize<'de> + Labels>(body: &[u8]) -> Result<M, ControlError> {
    let (&version, json) = body.split_first().ok_or(ControlError::Empty)?;
    if version != VERSION {
        return Err(ControlError::UnsupportedVersion(version));
    }
    let message: M =
        serde_json::from_slice(json).map_err(|e| ControlError::Malformed(e.to_string()))?;
    if message.labels().any(|l| l.len() > MAX_LABEL_LEN) {
        return Err(ControlError::LabelTooLong);
    }
    Ok(message)
}

/// Free-text fields whose length is bounded.
pub trait Labels {
    fn labels(&self) -> impl Iterator<Item = &str>;
}

impl Labels for ClientMessage {
    fn labels(&self) -> impl Iterator<Item = &str> {
        match self {
            ClientMessage::Publish { codec, .. } => Some(codec.as_str()),
            ClientMessage::E2ee { to: Some(to), .. } => Some(to.0.as_str()),
            _ => None,
        }
        .into_iter()
    }
}

impl Labels for ServerMessage {
    fn labels(&self) -> impl Iterator<Item = &str> {
        match self {
            ServerMessage::ParticipantJoined { display_name, .. } => Some(display_name.as_str()),
            ServerMessage::TrackPublished(info) => Some(info.codec.as_str()),
            ServerMessage::Kicked { reason } | ServerMessage::GoingAway { reason, .. } => {
                Some(reason.as_str())
            }
            _ => None,
        }
        .into_iter()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn labels_are_cut_at_a_character_boundary() {
        assert_eq!(fit_label("short"), "short");
        let long = "é".repeat(40); // 80 bytes
        let cut = fit_label(&long);
        assert_eq!(cut.len(), 64);
        assert_eq!(cut, "é".repeat(32));
        let odd = format!("a{}", "é".repeat(40));
        assert_eq!(fit_label(&odd).len(), 63);
    }
    use proptest::prelude::*;

    fn frame(msg: &ClientMessage) -> Vec<u8> {
        let mut out = Vec::new();
        encode(msg, &mut out).unwrap();
        out
    }

    #[test]
    fn frames_split_anywhere_decode_whole() {
        let messages = vec![
            ClientMessage::Hello {
                ticket: "t".repeat(300),
            },
            ClientMessage::Publish {
                request: 7,
                kind: TrackKind::Video,
                codec: "vp8".into(),
                layers: Some(Layers {
                    spatial: 2,
                    temporal: 3,
                }),
                encrypted: false,
            },
            ClientMessage::Subscribe { track: TrackId(9) },
            ClientMessage::View {
                track: TrackId(9),
                width: 640,
                height: 360,
            },
            ClientMessage::Leave {},
        ];
        let stream: Vec<u8> = messages.iter().flat_map(frame).collect();
        for chunk in [1, 2, 3, 7, 64, stream.len()] {
            let mut d = Decoder::new();
            let mut got = Vec::new();
            for piece in stream.chunks(chunk) {
                d.push(piece);
                while let Some(m) = d.next_message::<ClientMessage>().unwrap() {
                    got.push(m);
                }
            }
            assert_eq!(got, messages);
        }
    }

    #[test]
    fn wire_form_is_tagged_json() {
        let f = frame(&ClientMessage::Subscribe { track: TrackId(5) });
        assert_eq!(&f[4..], b"\x01{\"type\":\"subscribe\",\"track\":5}");
        assert_eq!(
            u32::from_be_bytes(f[..4].try_into().unwrap()) as usize,
            f.len() - 4
        );
    }

    #[test]
    fn refusals() {
        let mut d = Decoder::new();
        d.push(&(MAX_FRAME_LEN as u32 + 1).to_be_bytes());
        assert_eq!(
            d.next_message::<ClientMessage>(),
            Err(ControlError::Oversized(MAX_FRAME_LEN + 1))
        );

        let mut d = Decoder::new();
        d.push(&[0, 0, 0, 0]);
        assert_eq!(d.next_message::<ClientMessage>(), Err(ControlError::Empty));

        let mut d = Decoder::new();
        d.push(&[0, 0, 0, 3, 2, b'{', b'}']);
        assert_eq!(
            d.next_message::<ClientMessage>(),
            Err(ControlError::UnsupportedVersion(2))
        );

        for bad in [
            &b"{\"type\":\"teleport\"}"[..],
            b"{\"type\":\"leave\",\"extra\":1}",
            b"[1,2]",
            b"\xff\xfe",
            b"{\"type\":\"subscribe\",\"track\":-1}",
            b"{\"type\":\"view\",\"track\":1,\"width\":70000,\"height\":1}",
        ] {
            let mut body = vec![VERSION];
            body.extend_from_slice(bad);
            let mut d = Decoder::new();
            d.push(&(body.len() as u32).to_be_bytes());
            d.push(&body);
            assert!(
                matches!(
                    d.next_message::<ClientMessage>(),
                    Err(ControlError::Malformed(_))
                ),
                "{bad:?}"
            );
        }

        let long = ClientMessage::Publish {
            request: 1,
            kind: TrackKind::Audio,
            codec: "x".repeat(MAX_LABEL_LEN + 1),
            layers: None,
            encrypted: false,
        };
        let mut d = Decoder::new();
        d.push(&frame(&long));
        assert_eq!(
            d.next_message::<ClientMessage>(),
            Err(ControlError::LabelTooLong)
        );
    }

    #[test]
    fn encode_refuses_oversized_messages() {
        let mut out = vec![42];
        let huge = ServerMessage::Error {
            code: 1,
            message: "x".repeat(MAX_FRAME_LEN),
        };
        assert!(matches!(
            encode(&huge, &mut out),
            Err(ControlError::Oversized(_))
        ));
        assert_eq!(out, [42], "nothing half-written");
    }

    #[test]
    fn server_messages_round_trip() {
        let info = TrackInfo {
            track: TrackId(3),
            participant: ParticipantId("p1".into()),
            kind: TrackKind::Audio,
            codec: "opus".into(),
            layers: None,
            encrypted: false,
        };
        let messages = vec![
            ServerMessage::Welcome {
                participant: ParticipantId("p2".into()),
                tracks: vec![info.clone()],
            },
            ServerMessage::Published {
                request: 1,
                track: TrackId(3),
            },
            ServerMessage::Subscribed { track: TrackId(3) },
            ServerMessage::ParticipantJoined {
                participant: ParticipantId("p1".into()),
                display_name: "Ada".into(),
            },
            ServerMessage::ParticipantLeft {
                participant: ParticipantId("p1".into()),
            },
            ServerMessage::TrackPublished(info),
            ServerMessage::TrackUnpublished { track: TrackId(3) },
            ServerMessage::KeyframeRequest {
                track: TrackId(3),
                layer: None,
            },
            ServerMessage::KeyframeRequest {
                track: TrackId(3),
                layer: Some(2),
            },
            ServerMessage::Layers {
                track: TrackId(3),
                active: vec![0, 1],
            },
            ServerMessage::Forwarding {
                track: TrackId(3),
                layer: None,
                limit: Limit::Network,
            },
            ServerMessage::ActiveSpeaker {
                participant: Some(ParticipantId("p1".into())),
            },
            ServerMessage::Kicked {
                reason: "moderator".into(),
            },
            ServerMessage::ConferenceEnded {},
            ServerMessage::GoingAway {
                code: 1,
                reason: "shutdown".into(),
            },
            ServerMessage::Error {
                code: 7,
                message: "no".into(),
            },
        ];
        let mut stream = Vec::new();
        for m in &messages {
            encode(m, &mut stream).unwrap();
        }
        let mut d = Decoder::new();
        d.push(&stream);
        for m in &messages {
            assert_eq!(d.next_message::<ServerMessage>().unwrap().as_ref(), Some(m));
        }
        assert_eq!(d.next_message::<ServerMessage>(), Ok(None));
    }

    proptest! {
        #[test]
        fn random_bytes_never_panic(bytes in prop::collection::vec(any::<u8>(), 0..600)) {
            let mut d = Decoder::new();
            d.push(&bytes);
            for _ in 0..8 {
                match d.next_message::<ClientMessage>() {
                    Ok(Some(_)) => continue,
                    Ok(None) | Err(_) => break,
                }
            }
        }

        #[test]
        fn random_json_bodies_never_panic(json in "\\{\"type\":\"(hello|publish|subscribe|leave)\"[,:\"a-z0-9{}\\[\\] ]{0,80}") {
            let mut body = vec![VERSION];
            body.extend_from_slice(json.as_bytes());
            let _ = decode_body::<ClientMessage>(&body);
        }
    }
}
