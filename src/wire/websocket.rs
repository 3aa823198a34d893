//! The WebSocket transport's framing (docs/wire-protocol.md#websocket).
//!
//! A participant whose network blocks UDP reaches its relay over
//! WebSocket on TLS over TCP, with the same tickets and messages as over
//! QUIC. Every WebSocket message is binary, and its first byte says what
//! the rest is:
//!
//! - [`KIND_CONTROL`]: bytes of the control stream, exactly as they would
//!   travel on the QUIC control stream (length-prefixed frames,
//!   [`super::control`]). The relay sends one whole frame per message;
//!   receivers feed the bytes to a stream decoder all the same.
//! - [`KIND_DATAGRAM`]: one datagram, byte for byte what would be one
//!   QUIC datagram ([`super::datagram`]).
//!
//! The relay closes with [`close_code`] of the QUIC application close
//! code, and the same reason text.

use bytes::Bytes;

/// The subprotocol (`Sec-WebSocket-Protocol`) both ends must agree on.
pub const SUBPROTOCOL: &str = "residency-relay-ws-1";

/// The path of a relay's WebSocket endpoint.
pub const PATH: &str = "/ws";

/// A message carrying control-stream bytes.
pub const KIND_CONTROL: u8 = 0;

/// A message carrying one datagram.
pub const KIND_DATAGRAM: u8 = 1;

/// The largest message either end accepts: a kind byte and a whole
/// control frame (the larger of the two payloads).
pub const MAX_MESSAGE_LEN: usize = 1 + 4 + super::control::MAX_FRAME_LEN;

/// WebSocket close codes 4000–4999 are for applications: the relay's is
/// 4000 plus the QUIC application close code ([`super::close_code`]).
pub const CLOSE_CODE_BASE: u16 = 4000;

/// The WebSocket close code for a QUIC application close code.
pub fn close_code(quic: u32) -> u16 {
    CLOSE_CODE_BASE.saturating_add(u16::try_from(quic).unwrap_or(999).min(999))
}

/// The QUIC application close code a WebSocket close code stands for, if
/// it is one of the relay's.
pub fn quic_close_code(websocket: u16) -> Option<u32> {
    (CLOSE_CODE_BASE..CLOSE_CODE_BASE + 1000)
        .contains(&websocket)
        .then(|| u32::from(websocket - CLOSE_CODE_BASE))
}

/// A binary message, read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Inbound {
    /// Control-stream bytes (possibly empty).
    Control(Bytes),
    /// One datagram.
    Datagram(Bytes),
}

/// Why a binary message is not one of the protocol's.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum FrameError {
    #[error("an empty message has no kind")]
    Empty,
    #[error("unknown message kind {0}")]
    UnknownKind(u8),
    #[error("a message of {0} bytes is over the limit")]
    Oversized(usize),
}

impl FrameError {
    /// The reason label of `rr_relay_websocket_refusals_total`.
    pub fn code(self) -> &'static str {
        match self {
            FrameError::Empty | FrameError::UnknownKind(_) => "bad_kind",
            FrameError::Oversized(_) => "oversized",
        }
    }
}

/// Reads a binary message; the payload shares `message`'s memory.
pub fn parse(message: Bytes) -> Result<Inbound, FrameError> {
    if message.len() > MAX_MESSAGE_LEN {
        return Err(FrameError::Oversized(message.len()));
    }
    match message.first() {
        None => Err(FrameError::Empty),
        Some(&KIND_CONTROL) => Ok(Inbound::Control(message.slice(1..))),
        Some(&KIND_DATAGRAM) => Ok(Inbound::Datagram(message.slice(1..))),
        Some(&other) => Err(FrameError::UnknownKind(other)),
    }
}

/// A control message as one message: its frame behind the control kind.
pub fn control<M: serde::Serialize>(message: &M) -> Result<Bytes, super::control::ControlError> {
    let mut out = vec![KIND_CONTROL];
    super::control::encode(message, &mut out)?;
    Ok(Bytes::from(out))
}

/// A message of `kind` carrying `payload`.
pub fn message(kind: u8, payload: &[u8]) -> Bytes {
    let mut out = Vec::with_capacity(1 + payload.len());
    out.push(kind);
    out.extend_from_slice(payload);
    Bytes::from(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kinds_round_trip_and_anything_else_is_refused() {
        let d = message(KIND_DATAGRAM, b"media");
        assert_eq!(
            parse(d),
            Ok(Inbound::Datagram(Bytes::from_static(b"media")))
        );
        let c = message(KIND_CONTROL, b"\x00\x01");
        assert_eq!(
            parse(c),
            Ok(Inbound::Control(Bytes::from_static(b"\x00\x01")))
        );
        assert_eq!(parse(Bytes::new()), Err(FrameError::Empty));
        assert_eq!(
            parse(Bytes::from_static(b"\x07x")),
            Err(FrameError::UnknownKind(7))
        );
        let big = Bytes::from(vec![KIND_CONTROL; MAX_MESSAGE_LEN + 1]);
        assert_eq!(parse(big), Err(FrameError::Oversized(MAX_MESSAGE_LEN + 1)));
    }

    #[test]
    fn a_control_message_is_its_frame_behind_the_control_kind() {
        let hello = super::super::control::ClientMessage::Hello { ticket: "t".into() };
        let Ok(Inbound::Control(frame)) = parse(control(&hello).unwrap()) else {
            panic!("not a control message");
        };
        let mut decoder = super::super::control::Decoder::new();
        decoder.push(&frame);
        let read = decoder.next_message::<super::super::control::ClientMessage>();
        assert!(
            matches!(read, Ok(Some(super::super::control::ClientMessage::Hello { ticket })) if ticket == "t")
        );
    }

    #[test]
    fn close_codes_map_both_ways() {
        assert_eq!(close_code(super::super::close_code::KICKED), 4005);
        assert_eq!(quic_close_code(4005), Some(5));
        assert_eq!(quic_close_code(1000), None);
        assert_eq!(quic_close_code(close_code(u32::MAX)), Some(999));
    }
}
