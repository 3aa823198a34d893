//! Wire protocol v1 between clients and relays, and the messages relays and
//! routers exchange ([`channel`]; conference ids: [`conference`]). Nothing
//! here depends on the relay or the router: both depend on it.
//!
//! - ALPN [`ALPN`] names the protocol and its version.
//! - One bidirectional QUIC stream per connection carries length-prefixed,
//!   size-bounded, versioned control messages ([`control`]).
//! - Media travels in QUIC datagrams: a 9-byte header and an opaque payload
//!   ([`datagram`]). The relay forwards datagrams byte for byte.
//!
//! Every parser here takes untrusted bytes and returns a typed error; none
//! panics on input (property tests feed them random bytes).

pub mod channel;
pub mod conference;
pub mod control;
pub mod datagram;
pub mod link;
pub mod websocket;

/// ALPN protocol id for wire protocol v1.
pub const ALPN: &[u8] = b"residency-relay/1";

/// ALPN protocol id of relay-to-relay cascade links, version 1.
pub const CASCADE_ALPN: &[u8] = b"residency-relay-cascade/1";

/// ALPN of HTTP/3, which browsers' WebTransport sessions negotiate; the
/// session then carries wire protocol v1 unchanged.
pub const WEBTRANSPORT_ALPN: &[u8] = web_transport_quinn::ALPN.as_bytes();

/// QUIC application close codes of a relay's connections.
pub mod close_code {
    /// Normal close (leave, or after `going_away`).
    pub const NORMAL: u32 = 0;
    /// The ticket was refused.
    pub const TICKET_REFUSED: u32 = 1;
    /// The control stream broke the protocol.
    pub const PROTOCOL: u32 = 2;
    /// The client did not read its control messages.
    pub const SLOW_CONTROL: u32 = 3;
    /// The relay is shutting down.
    pub const GOING_AWAY: u32 = 4;
    /// A host removed the participant.
    pub const KICKED: u32 = 5;
    /// A host ended the conference.
    pub const CONFERENCE_ENDED: u32 = 6;
    /// A cascade link was refused.
    pub const CASCADE_REFUSED: u32 = 7;
    /// The policy in force places the relay outside the conference's
    /// jurisdiction: reconnect through the router (after `going_away`).
    pub const MOVED: u32 = 8;
    /// The source address has its limit of connections.
    pub const TOO_MANY_CONNECTIONS: u32 = 9;
    /// The participant kept sending control messages over its rate.
    pub const RATE_LIMITED: u32 = 10;
}

/// `going_away` code: the policy in force no longer places this relay
/// inside the conference's jurisdiction; reconnect through the router,
/// which sends you to a relay inside it.
pub const GOING_AWAY_MOVED: u16 = 3;

/// `going_away` code: the operator is draining the relay; reconnect through
/// the router, which sends you to another relay of the jurisdiction.
pub const GOING_AWAY_DRAIN: u16 = 2;

/// `going_away` code: the relay is shutting down.
pub const GOING_AWAY_SHUTDOWN: u16 = 1;

/// Stable numeric codes carried in `error` control messages.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u16)]
pub enum ErrorCode {
    /// A control message could not be decoded.
    BadMessage = 1,
    /// The participant's ticket does not grant this (publish, subscribe).
    NotPermitted = 2,
    /// No such track, or not in this conference.
    UnknownTrack = 3,
    /// The participant already publishes the maximum number of tracks.
    TooManyTracks = 4,
    /// `hello` sent twice, or another message before `hello`.
    OutOfOrder = 5,
    /// The track is not this participant's.
    NotOwner = 6,
    /// Control messages over the participant's rate: this one was dropped
    /// (going on disconnects, close code 10).
    RateLimited = 7,
    /// On an end-to-end encrypted conference, a track must be declared
    /// encrypted.
    NotEncrypted = 8,
}

impl ErrorCode {
    pub fn code(self) -> u16 {
        self as u16
    }

    /// Stable label (metrics, logs).
    pub fn as_str(self) -> &'static str {
        match self {
            ErrorCode::BadMessage => "bad_message",
            ErrorCode::NotPermitted => "not_permitted",
            ErrorCode::UnknownTrack => "unknown_track",
            ErrorCode::TooManyTracks => "too_many_tracks",
            ErrorCode::OutOfOrder => "out_of_order",
            ErrorCode::NotOwner => "not_owner",
            ErrorCode::RateLimited => "rate_limited",
            ErrorCode::NotEncrypted => "not_encrypted",
        }
    }
}
