//! Relay selection: a pure function from (jurisdiction, client location, relay
//! states, conference placement) to a ranked decision or a refusal.
//!
//! Only relays inside the conference's jurisdiction are ever looked at: the
//! candidate list is the jurisdiction's own relay list, built when the policy
//! was loaded. Filters run first (health, participant and bitrate capacity),
//! then the survivors are ranked by
//!
//! ```text
//! score = great-circle distance (km)
//!       + load_penalty_km × load            (load = max(participants, bitrate) / capacity)
//!       − stickiness_km   if the relay already hosts the conference
//! ```
//!
//! with ties broken by relay id. No clock, no network, no allocation once the
//! caller's [`Evaluation`] buffers have grown to the jurisdiction's size.

use std::fmt;

use serde::Serialize;

use crate::geo::{GeoPoint, Location};
use crate::policy::{JurisdictionIdx, Policy, RelayIdx};

/// A relay's health as the router last saw it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Health {
    Healthy,
    /// Stopped reporting or failing checks.
    Unhealthy,
    /// Being emptied by the operator: no new joins.
    Draining,
}

/// What the router knows of one relay right now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RelayState {
    pub health: Health,
    pub participants: u32,
    pub bitrate_bps: u64,
}

impl RelayState {
    /// A healthy, empty relay.
    pub const IDLE: RelayState = RelayState {
        health: Health::Healthy,
        participants: 0,
        bitrate_bps: 0,
    };
}

/// Why a relay inside the jurisdiction was not a candidate.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(tag = "reason", rename_all = "snake_case")]
pub enum Exclusion {
    Unhealthy,
    Draining,
    /// The caller gave no state for this relay; unknown counts as unusable.
    NoState,
    ParticipantsFull {
        participants: u32,
        max: u32,
    },
    BitrateFull {
        bitrate_bps: u64,
        max: u64,
    },
}

impl Exclusion {
    /// Stable code (metric label, JSON).
    pub fn code(&self) -> &'static str {
        match self {
            Exclusion::Unhealthy => "unhealthy",
            Exclusion::Draining => "draining",
            Exclusion::NoState => "no_state",
            Exclusion::ParticipantsFull { .. } => "participants_full",
            Exclusion::BitrateFull { .. } => "bitrate_full",
        }
    }

    fn is_capacity(&self) -> bool {
        matches!(
            self,
            Exclusion::ParticipantsFull { .. } | Exclusion::BitrateFull { .. }
        )
    }
}

impl fmt::Display for Exclusion {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Exclusion::Unhealthy => f.write_str("unhealthy"),
            Exclusion::Draining => f.write_str("draining"),
            Exclusion::NoState => f.write_str("no state reported"),
            Exclusion::ParticipantsFull { participants, max } => {
                write!(f, "full: {participants} of {max} participants")
            }
            Exclusion::BitrateFull { bitrate_bps, max } => {
                write!(f, "full: {bitrate_bps} of {max} bit/s")
            }
        }
    }
}

/// A relay inside the jurisdiction and why it was left out.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Excluded {
    pub relay: RelayIdx,
    pub why: Exclusion,
}

/// A relay that passed the filters, with the parts of its score.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Candidate {
    pub relay: RelayIdx,
    pub distance_km: f64,
    /// Fraction of capacity in use, in [0, 1).
    pub load: f64,
    pub hosting: bool,
    pub score: f64,
}

/// Which point distances were measured from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Basis {
    /// The client's own location.
    Client,
    /// Location unknown: the operator's default relay for the jurisdiction.
    DefaultRelay,
    /// Location unknown: the jurisdiction's geographic centre.
    JurisdictionCentre,
    /// Location unknown and no centre: distance plays no part.
    None,
}

/// Why no relay was chosen. A bounded set, usable as a metric label.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum RefusalReason {
    /// The inventory has no relay inside the jurisdiction.
    NoRelayInJurisdiction,
    /// Every relay inside is unhealthy, draining or unreported.
    NoHealthyRelay,
    /// Healthy relays exist inside, but all are at capacity.
    AtCapacity,
}

impl RefusalReason {
    pub fn code(self) -> &'static str {
        match self {
            RefusalReason::NoRelayInJurisdiction => "no_relay_in_jurisdiction",
            RefusalReason::NoHealthyRelay => "no_healthy_relay",
            RefusalReason::AtCapacity => "at_capacity",
        }
    }
}

impl fmt::Display for RefusalReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            RefusalReason::NoRelayInJurisdiction => "no relay exists inside the jurisdiction",
            RefusalReason::NoHealthyRelay => "no healthy relay inside the jurisdiction",
            RefusalReason::AtCapacity => {
                "every healthy relay inside the jurisdiction is at capacity"
            }
        })
    }
}

/// Everything selection looked at: ranked candidates and excluded relays.
/// Reusable: [`evaluate`] clears and refills it.
#[derive(Debug, Clone)]
pub struct Evaluation {
    pub jurisdiction: JurisdictionIdx,
    pub basis: Basis,
    /// Best first.
    pub candidates: Vec<Candidate>,
    pub excluded: Vec<Excluded>,
}

impl Default for Evaluation {
    fn default() -> Self {
        Evaluation {
            jurisdiction: JurisdictionIdx(0),
            basis: Basis::None,
            candidates: Vec::new(),
            excluded: Vec::new(),
        }
    }
}

impl Evaluation {
    /// The chosen relay, or why there is none.
    pub fn outcome(&self, policy: &Policy) -> Result<RelayIdx, RefusalReason> {
        if let Some(best) = self.candidates.first() {
            return Ok(best.relay);
        }
        if policy.jurisdiction(self.jurisdiction).relays.is_empty() {
            Err(RefusalReason::NoRelayInJurisdiction)
        } else if self.excluded.iter().any(|e| e.why.is_capacity()) {
            Err(RefusalReason::AtCapacity)
        } else {
            Err(RefusalReason::NoHealthyRelay)
        }
    }
}

/// A relay was chosen.
#[derive(Debug, Clone)]
pub struct Decision {
    pub relay: RelayIdx,
    pub evaluation: Evaluation,
}

/// No relay inside the jurisdiction can take the participant.
#[derive(Debug, Clone)]
pub struct Refusal {
    pub reason: RefusalReason,
    pub evaluation: Evaluation,
}

/// Selects a relay for one participant. `states` is indexed by [`RelayIdx`]
/// (a relay beyond its end counts as [`Exclusion::NoState`]); `hosting` lists
/// the relays that already carry the conference.
pub fn select(
    policy: &Policy,
    jurisdiction: JurisdictionIdx,
    client: &Location,
    states: &[RelayState],
    hosting: &[RelayIdx],
) -> Result<Decision, Refusal> {
    let mut evaluation = Evaluation::default();
    evaluate(
        policy,
        jurisdiction,
        client,
        states,
        hosting,
        &mut evaluation,
    );
    match evaluation.outcome(policy) {
        Ok(relay) => Ok(Decision { relay, evaluation }),
        Err(reason) => Err(Refusal { reason, evaluation }),
    }
}

/// The allocation-free core of [`select`]: fills `out` with the ranked
/// candidates and the exclusions; read the result with [`Evaluation::outcome`].
pub fn evaluate(
    policy: &Policy,
    jurisdiction: JurisdictionIdx,
    client: &Location,
    states: &[RelayState],
    hosting: &[RelayIdx],
    out: &mut Evaluation,
) {
    let j = policy.jurisdiction(jurisdiction);
    let params = policy.selection();
    out.jurisdiction = jurisdiction;
    out.candidates.clear();
    out.excluded.clear();

    let eligible = |relay: RelayIdx| -> Result<f64, Exclusion> {
        let r = policy.relay(relay);
        let s = states.get(relay.index()).ok_or(Exclusion::NoState)?;
        match s.health {
            Health::Healthy => {}
            Health::Unhealthy => return Err(Exclusion::Unhealthy),
            Health::Draining => return Err(Exclusion::Draining),
        }
        if s.participants >= r.max_participants {
            return Err(Exclusion::ParticipantsFull {
                participants: s.participants,
                max: r.max_participants,
            });
        }
        if s.bitrate_bps >= r.max_bitrate_bps {
            return Err(Exclusion::BitrateFull {
                bitrate_bps: s.bitrate_bps,
                max: r.max_bitrate_bps,
            });
        }
        let by_participants = f64::from(s.participants) / f64::from(r.max_participants);
        let by_bitrate = s.bitrate_bps as f64 / r.max_bitrate_bps as f64;
        Ok(by_participants.max(by_bitrate))
    };

    let (reference, basis): (Option<GeoPoint>, Basis) = match client.point() {
        Some(point) => (Some(point), Basis::Client),
        None => match j.default_relay.filter(|r| eligible(*r).is_ok()) {
            Some(r) => (Some(policy.relay(r).position), Basis::DefaultRelay),
            None => match j.centre {
                Some(centre) => (Some(centre), Basis::JurisdictionCentre),
                None => (None, Basis::None),
            },
        },
    };
    out.basis = basis;

    for &relay in &j.relays {
        match eligible(relay) {
            Err(why) => out.excluded.push(Excluded { relay, why }),
            Ok(load) => {
                let distance_km =
                    reference.map_or(0.0, |p| p.distance_km(&policy.relay(relay).position));
                let is_hosting = hosting.contains(&relay);
                let bonus = if is_hosting {
                    params.stickiness_km
                } else {
                    0.0
                };
                out.candidates.push(Candidate {
                    relay,
                    distance_km,
                    load,
                    hosting: is_hosting,
                    score: distance_km + params.load_penalty_km * load - bonus,
                });
            }
        }
    }
    out.candidates
        .sort_unstable_by(|a, b| a.score.total_cmp(&b.score).then(a.relay.cmp(&b.relay)));
}
