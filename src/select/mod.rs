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
use crate::policy::{JurisdictionIdx, Member, Policy, RelayIdx};

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

impl Basis {
    /// Stable code (JSON, logs).
    pub fn as_str(self) -> &'static str {
        match self {
            Basis::Client => "client",
            Basis::DefaultRelay => "default_relay",
            Basis::JurisdictionCentre => "jurisdiction_centre",
            Basis::None => "none",
        }
    }
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

/// Everything selection looked at: the scored candidates and the excluded
/// relays. Reusable: [`evaluate`] clears and refills it.
///
/// Candidates are kept in relay-id order as they are scored, and the best one
/// is tracked while scoring; [`Evaluation::rank`] sorts them best-first when
/// the full ranking is wanted (to explain a decision), so the routing path
/// does not pay for a sort it does not read.
#[derive(Debug, Clone)]
pub struct Evaluation {
    pub jurisdiction: JurisdictionIdx,
    pub basis: Basis,
    pub candidates: Vec<Candidate>,
    pub excluded: Vec<Excluded>,
    best: Option<usize>,
    ranked: bool,
    /// Scratch: distance to every member of the jurisdiction.
    distances: Vec<f64>,
}

impl Default for Evaluation {
    fn default() -> Self {
        Evaluation {
            jurisdiction: JurisdictionIdx(0),
            basis: Basis::None,
            candidates: Vec::new(),
            excluded: Vec::new(),
            best: None,
            ranked: true,
            distances: Vec::new(),
        }
    }
}

/// Largest load a relay under capacity can show (just below 1).
const MAX_LOAD: f64 = 1.0 - f64::EPSILON;

impl Evaluation {
    /// The winning candidate, if any.
    pub fn best(&self) -> Option<&Candidate> {
        self.best.map(|i| &self.candidates[i])
    }

    /// Sorts the candidates best-first (score, then relay id). Idempotent.
    pub fn rank(&mut self) {
        if !self.ranked {
            self.candidates.sort_unstable_by(|a, b| {
                a.score
                    .total_cmp(&b.score)
                    .then(b.hosting.cmp(&a.hosting))
                    .then(a.relay.cmp(&b.relay))
            });
            self.best = (!self.candidates.is_empty()).then_some(0);
            self.ranked = true;
        }
    }

    /// Whether `candidates` is in rank order.
    pub fn is_ranked(&self) -> bool {
        self.ranked
    }

    /// The chosen relay, or why there is none.
    pub fn outcome(&self) -> Result<RelayIdx, RefusalReason> {
        if let Some(best) = self.best() {
            return Ok(best.relay);
        }
        // Every relay inside is either a candidate or excluded.
        if self.excluded.is_empty() {
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
    /// Ranked: `evaluation.candidates[0]` is the chosen relay.
    pub evaluation: Evaluation,
}

/// No relay inside the jurisdiction can take the participant.
#[derive(Debug, Clone)]
pub struct Refusal {
    pub reason: RefusalReason,
    pub evaluation: Evaluation,
}

/// Selects a relay for one participant and ranks every candidate (the form
/// for explaining a decision). `states` is indexed by [`RelayIdx`] (a relay
/// beyond its end counts as [`Exclusion::NoState`]); `hosting` lists the
/// relays that already carry the conference.
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
    evaluation.rank();
    match evaluation.outcome() {
        Ok(relay) => Ok(Decision { relay, evaluation }),
        Err(reason) => Err(Refusal { reason, evaluation }),
    }
}

/// The routing-path core of [`select`]: fills `out` with every scored
/// candidate and every exclusion and picks the best, without allocating once
/// `out` has grown to the jurisdiction's size. Read the result with
/// [`Evaluation::outcome`]; call [`Evaluation::rank`] for the full ranking.
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
    out.best = None;
    out.ranked = false;

    let check = |m: &Member| -> Result<f64, Exclusion> {
        let s = states.get(m.relay.index()).ok_or(Exclusion::NoState)?;
        match s.health {
            Health::Healthy => {}
            Health::Unhealthy => return Err(Exclusion::Unhealthy),
            Health::Draining => return Err(Exclusion::Draining),
        }
        if s.participants >= m.max_participants {
            return Err(Exclusion::ParticipantsFull {
                participants: s.participants,
                max: m.max_participants,
            });
        }
        if s.bitrate_bps >= m.max_bitrate_bps {
            return Err(Exclusion::BitrateFull {
                bitrate_bps: s.bitrate_bps,
                max: m.max_bitrate_bps,
            });
        }
        let by_participants = f64::from(s.participants) * m.inv_max_participants;
        // bitrate_bps < max_bitrate_bps <= 2^53 (checked at load), so the
        // signed conversion, one instruction rather than u64's several, is exact.
        let by_bitrate = s.bitrate_bps as i64 as f64 * m.inv_max_bitrate_bps;
        // Both are finite and non-negative, so plain comparisons (no NaN
        // handling) suffice. Never 1.0 or more for a relay under capacity,
        // whatever the rounding.
        let load = if by_bitrate > by_participants {
            by_bitrate
        } else {
            by_participants
        };
        Ok(if load < MAX_LOAD { load } else { MAX_LOAD })
    };

    // The operator's relay for clients of unknown location, when it can take one.
    let usable_default = match client {
        Location::Unknown(_) => j
            .default_relay
            .filter(|r| j.members.iter().any(|m| m.relay == *r && check(m).is_ok())),
        Location::Known { .. } => None,
    };
    let (reference, basis): (Option<GeoPoint>, Basis) = match client.point() {
        Some(point) => (Some(point), Basis::Client),
        None => match (usable_default, j.centre) {
            (Some(r), _) => (Some(policy.relay(r).position), Basis::DefaultRelay),
            (None, Some(centre)) => (Some(centre), Basis::JurisdictionCentre),
            (None, None) => (None, Basis::None),
        },
    };
    out.basis = basis;

    // Distances first, in a branch-free loop of their own: each is a long
    // chain of dependent floating-point operations, and with nothing else in
    // the loop the processor overlaps many relays' chains.
    match reference {
        Some(p) => j.positions.distances_km(&p, &mut out.distances),
        None => {
            out.distances.clear();
            out.distances.resize(j.members.len(), 0.0);
        }
    }
    // Scores are finite sums of non-negative distances and loads minus a
    // finite bonus: never NaN and never -0.0, so `<` and `==` order them as
    // `total_cmp` does in `rank`.
    let mut min_score = f64::INFINITY;
    for (m, &distance_km) in j.members.iter().zip(&out.distances) {
        match check(m) {
            Err(why) => out.excluded.push(Excluded {
                relay: m.relay,
                why,
            }),
            Ok(load) => {
                let is_hosting = hosting.contains(&m.relay);
                let bonus = if is_hosting {
                    params.stickiness_km
                } else {
                    0.0
                };
                let candidate = Candidate {
                    relay: m.relay,
                    distance_km,
                    load,
                    hosting: is_hosting,
                    score: distance_km + params.load_penalty_km * load - bonus,
                };
                if candidate.score < min_score {
                    min_score = candidate.score;
                }
                out.candidates.push(candidate);
            }
        }
    }
    // Lower score wins; among equal scores a relay already hosting the
    // conference (it is kept unless another is better by *more* than the
    // margin), then the lower relay id: candidates are in relay-id order.
    // The default relay is the operator's choice for clients of unknown
    // location: its own load does not count against it (capacity still does:
    // it is only "usable" when under capacity).
    if let Some(c) = usable_default.and_then(|r| out.candidates.iter_mut().find(|c| c.relay == r)) {
        c.score = c.distance_km - if c.hosting { params.stickiness_km } else { 0.0 };
        if c.score < min_score {
            min_score = c.score;
        }
    }
    let lowest = |c: &Candidate| c.score == min_score;
    out.best = if hosting.is_empty() {
        out.candidates.iter().position(lowest)
    } else {
        out.candidates
            .iter()
            .position(|c| lowest(c) && c.hosting)
            .or_else(|| out.candidates.iter().position(lowest))
    };
}
