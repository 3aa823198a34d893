//! Messages on a cascade link's control stream (same framing as the
//! client control stream: length prefix, version byte, JSON).
//!
//! The dialing relay sends `link_hello` with its cascade ticket; the
//! accepting relay answers `link_welcome` or `error` and closes. Then both
//! sides announce the tracks their own participants publish
//! (`track_published` / `track_unpublished`), ask for the tracks their
//! participants subscribe to (`subscribe` / `unsubscribe`) and the layers
//! they take (`layers`), and pass on keyframe requests. Media follows in QUIC datagrams with the usual header.

use serde::{Deserialize, Serialize};

use super::control::{Labels, ParticipantId, TrackInfo};
use super::datagram::TrackId;

/// A cascade link control message.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case", deny_unknown_fields)]
pub enum LinkMessage {
    LinkHello {
        ticket: String,
    },
    LinkWelcome {},
    TrackPublished(TrackInfo),
    TrackUnpublished {
        track: TrackId,
    },
    Subscribe {
        track: TrackId,
    },
    Unsubscribe {
        track: TrackId,
    },
    KeyframeRequest {
        track: TrackId,
        /// Of this spatial layer.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        layer: Option<u8>,
    },
    /// The sender's subscribers take these spatial layers of a track the
    /// receiver announced: it sends no others over the link.
    Layers {
        track: TrackId,
        active: Vec<u8>,
    },
    /// A participant's `e2ee` message for participants beyond the link
    /// (all of them, or `to`).
    E2ee {
        from: ParticipantId,
        /// The sender's ticket lets it moderate (its relay says so).
        #[serde(default, skip_serializing_if = "std::ops::Not::not")]
        host: bool,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        to: Option<ParticipantId>,
        data: String,
    },
    /// A participant joined the conference at the peer relay.
    ParticipantJoined {
        participant: ParticipantId,
        display_name: String,
    },
    /// A participant the peer announced left it.
    ParticipantLeft {
        participant: ParticipantId,
    },
    Error {
        code: u16,
        message: String,
    },
}

impl Labels for LinkMessage {
    fn labels(&self) -> impl Iterator<Item = &str> {
        match self {
            // A peer's announcements end up in welcomes: bounded like a client's.
            LinkMessage::TrackPublished(info) => {
                vec![info.codec.as_str(), info.participant.0.as_str()]
            }
            LinkMessage::E2ee { from, to, .. } => {
                let mut ids = vec![from.0.as_str()];
                ids.extend(to.as_ref().map(|t| t.0.as_str()));
                ids
            }
            LinkMessage::ParticipantJoined {
                participant,
                display_name,
            } => vec![participant.0.as_str(), display_name.as_str()],
            LinkMessage::ParticipantLeft { participant } => vec![participant.0.as_str()],
            _ => Vec::new(),
        }
        .into_iter()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wire::control::{Decoder, TrackKind, encode};

    #[test]
    fn link_messages_round_trip_and_garbage_is_an_error() {
        let messages = vec![
            LinkMessage::LinkHello {
                ticket: "c1.x.y".into(),
            },
            LinkMessage::LinkWelcome {},
            LinkMessage::TrackPublished(TrackInfo {
                track: TrackId(1 << 20 | 5),
                participant: ParticipantId("p-1".into()),
                kind: TrackKind::Video,
                codec: "vp8".into(),
                layers: None,
                encrypted: true,
            }),
            LinkMessage::E2ee {
                from: ParticipantId("p-1".into()),
                host: true,
                to: None,
                data: "AQID".into(),
            },
            LinkMessage::ParticipantJoined {
                participant: ParticipantId("p-2".into()),
                display_name: "Ada".into(),
            },
            LinkMessage::ParticipantLeft {
                participant: ParticipantId("p-2".into()),
            },
            LinkMessage::Subscribe { track: TrackId(7) },
        ];
        let mut bytes = Vec::new();
        for m in &messages {
            encode(m, &mut bytes).unwrap();
        }
        let mut d = Decoder::new();
        d.push(&bytes);
        for m in &messages {
            assert_eq!(&d.next_message::<LinkMessage>().unwrap().unwrap(), m);
        }
        let mut d = Decoder::new();
        d.push(&[0, 0, 0, 5, 1, b'{', b'x', b'}', 0]);
        assert!(d.next_message::<LinkMessage>().is_err());
    }
}
