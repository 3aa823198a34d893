//! The relay ↔ router channel: relays report health and load, routers
//! answer with moderation commands.
//!
//! A relay `POST`s a [`RelayReport`] to `/v1/relays/{relay_id}/report` of
//! every router serving one of its jurisdictions, with
//! `Authorization: Bearer <relay credential>`. The router holds the request
//! up to [`HOLD`] unless it has commands, then answers a [`ReportReply`];
//! the relay reports again at once. So load is fresh every second and a
//! command reaches the relay as soon as it is issued. Commands are numbered;
//! the relay acknowledges the highest it applied in its next report, and the
//! router resends anything not acknowledged. Numbers restart when a router
//! restarts; the reply's `epoch` tells the relay so.
//!
//! A report to a router carries only the conferences of the jurisdictions
//! that router serves: metadata of other jurisdictions never leaves for it.

use std::time::Duration;

use serde::{Deserialize, Serialize};

/// Longest a router holds a report before answering with no commands.
pub const HOLD: Duration = Duration::from_millis(1000);

/// A relay whose last report is older than this is unhealthy.
pub const STALE_AFTER: Duration = Duration::from_secs(3);

/// Path of the report endpoint for `relay_id`.
pub fn report_path(relay_id: &str) -> String {
    format!("/v1/relays/{relay_id}/report")
}

/// One conference's load on the reporting relay.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ConferenceLoad {
    pub id: String,
    pub participants: u32,
    pub bytes_in: u64,
    pub bytes_out: u64,
}

/// One cascade link's traffic, as the reporting relay counted it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LinkLoad {
    pub conference: String,
    /// The relay at the other end.
    pub peer: String,
    pub bytes_in: u64,
    pub bytes_out: u64,
}

/// A residency enforcement event seen by a relay: a refused join ticket or
/// cascade link naming a conference.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Enforcement {
    pub conference: String,
    /// `ticket` or `cascade`.
    pub kind: String,
    /// The refusal code (`foreign_jurisdiction`, `bad_signature`, …).
    pub reason: String,
    /// For cascade links, the relay the ticket claims to come from.
    pub peer: Option<String>,
    /// Unix seconds, relay clock.
    pub at: u64,
}

/// What a relay tells a router.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RelayReport {
    /// SHA-256 of the relay's certificate, which clients pin.
    pub cert_sha256: String,
    /// SHA-256 of the self-signed certificate that replaces it at the next
    /// renewal (browsers pin both, so a join answer stays good across it).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub next_cert_sha256: Option<String>,
    /// All participants connected, whatever their conference.
    pub participants: u32,
    /// Media bit rate in and out over the last report interval.
    pub bitrate_bps: u64,
    /// Shutting down or drained: no new joins.
    pub draining: bool,
    /// Conferences of the router's jurisdictions only.
    pub conferences: Vec<ConferenceLoad>,
    /// Cascade links of those conferences.
    #[serde(default)]
    pub links: Vec<LinkLoad>,
    /// Refused tickets and links naming a conference of the router's
    /// jurisdictions, since the last report.
    #[serde(default)]
    pub events: Vec<Enforcement>,
    /// Highest command sequence number applied, of the router run named
    /// by `epoch`.
    pub ack: u64,
    /// The router run `ack` refers to (0 before the first answer).
    pub epoch: u64,
    /// The high bits the relay puts in the track ids it assigns
    /// ([`crate::forward::CoreConfig::track_id_base`]); two relays with the
    /// same are never linked (0: not said).
    #[serde(default)]
    pub track_base: u32,
}

/// A moderation command for a relay. `at` is the router's clock (Unix
/// seconds) when it was issued: tickets issued up to then are refused.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "action", rename_all = "snake_case", deny_unknown_fields)]
pub enum Action {
    /// Disconnect the participant and refuse tickets issued before now.
    Kick {
        conference: String,
        participant: String,
        reason: String,
        at: u64,
    },
    /// Disconnect everyone and refuse every ticket of the conference.
    End { conference: String, at: u64 },
    /// Open a cascade link for the conference to `peer` at `peer_addr`,
    /// pinning its certificate, presenting `ticket`.
    Link {
        conference: String,
        peer: String,
        peer_addr: String,
        peer_cert: String,
        ticket: String,
    },
    /// Stop taking participants: tell those connected to reconnect
    /// through the router (which sends them elsewhere).
    Drain {},
    /// The policy no longer places this relay inside the conference's
    /// jurisdiction: tell its participants of the conference to reconnect
    /// through the router (which places them inside), disconnect them and
    /// close the conference's links.
    /// Tickets and links for the conference issued up to `at` are refused
    /// here afterwards.
    Move { conference: String, at: u64 },
    /// Close the conference's cascade link to `peer`, which the policy in
    /// force places outside the conference's jurisdiction.
    Unlink { conference: String, peer: String },
}

/// A numbered command.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Command {
    pub seq: u64,
    pub action: Action,
}

/// The router's answer to a report.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ReportReply {
    /// Random per router run: command numbers restart with it, so a relay
    /// seeing a new epoch resets its acknowledgement.
    pub epoch: u64,
    pub commands: Vec<Command>,
}
