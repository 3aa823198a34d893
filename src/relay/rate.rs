//! Per-participant limits on control messages (sans-IO: time is an
//! argument). `publish` and `unpublish` are announced to every member of
//! the conference, so one participant's flood would reach everyone; they
//! get a small budget, as do `e2ee` messages for everyone. `subscribe` and
//! `unsubscribe` (and a repeated `hello`, and an `e2ee` message for one
//! participant) concern one participant only and get a large one (a newcomer
//! subscribes to every track at once). Nothing is read after `leave`.
//! A message over budget is dropped and answered with a `rate_limited`
//! error; a participant who goes on (more than [`STRIKES`] refused
//! messages within a burst's refill) is disconnected.

use std::time::Instant;

use crate::policy::files::LimitsSection;
use crate::wire::control::ClientMessage;

/// Refused messages tolerated (refilled at one a second) before the
/// participant is disconnected.
pub const STRIKES: u32 = 20;

/// The per-participant budgets.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct ControlLimits {
    pub announcements_per_second: f64,
    pub announcement_burst: f64,
    pub subscriptions_per_second: f64,
    pub subscription_burst: f64,
}

impl ControlLimits {
    pub fn from_policy(l: &LimitsSection) -> Self {
        ControlLimits {
            announcements_per_second: l.announcements_per_second.into(),
            announcement_burst: l.announcement_burst.into(),
            subscriptions_per_second: l.subscriptions_per_second.into(),
            subscription_burst: l.subscription_burst.into(),
        }
    }
}

impl Default for ControlLimits {
    fn default() -> Self {
        Self::from_policy(&LimitsSection::default())
    }
}

/// A token bucket: `burst` tokens, refilled at `rate` a second.
#[derive(Debug, Clone)]
pub struct Bucket {
    tokens: f64,
    burst: f64,
    rate: f64,
    at: Instant,
}

impl Bucket {
    pub fn new(rate: f64, burst: f64, now: Instant) -> Self {
        Bucket {
            tokens: burst,
            burst,
            rate,
            at: now,
        }
    }

    /// Takes a token if there is one.
    pub fn take(&mut self, now: Instant) -> bool {
        let elapsed = now.saturating_duration_since(self.at).as_secs_f64();
        self.tokens = (self.tokens + elapsed * self.rate).min(self.burst);
        self.at = now;
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            true
        } else {
            false
        }
    }
}

/// What to do with one control message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    Pass,
    /// Drop it and answer `rate_limited`.
    Drop,
    /// Drop it and disconnect the participant.
    Disconnect,
}

/// One participant's budgets.
#[derive(Debug, Clone)]
pub struct ControlRate {
    announcements: Bucket,
    subscriptions: Bucket,
    strikes: Bucket,
}

impl ControlRate {
    pub fn new(limits: ControlLimits, now: Instant) -> Self {
        ControlRate {
            announcements: Bucket::new(
                limits.announcements_per_second,
                limits.announcement_burst,
                now,
            ),
            subscriptions: Bucket::new(
                limits.subscriptions_per_second,
                limits.subscription_burst,
                now,
            ),
            strikes: Bucket::new(1.0, STRIKES.into(), now),
        }
    }

    /// Whether `message`, arriving at `now`, goes on.
    pub fn check(&mut self, message: &ClientMessage, now: Instant) -> Verdict {
        let allowed = match message {
            // Key material for everyone reaches every member, like an
            // announcement; for one participant, it costs like a
            // subscription (a host hands each member a new epoch's key).
            ClientMessage::Publish { .. }
            | ClientMessage::Unpublish { .. }
            | ClientMessage::E2ee { to: None, .. } => self.announcements.take(now),
            ClientMessage::E2ee { to: Some(_), .. } => self.subscriptions.take(now),
            // A second hello is answered `out_of_order` to its sender only:
            // it costs like a subscription.
            ClientMessage::Subscribe { .. }
            | ClientMessage::Unsubscribe { .. }
            | ClientMessage::KeyframeRequest { .. }
            | ClientMessage::View { .. }
            | ClientMessage::Hello { .. } => self.subscriptions.take(now),
            // The connection task stops reading after it.
            ClientMessage::Leave {} => true,
        };
        if allowed {
            Verdict::Pass
        } else if self.strikes.take(now) {
            Verdict::Drop
        } else {
            Verdict::Disconnect
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wire::control::TrackKind;
    use crate::wire::datagram::TrackId;
    use std::time::Duration;

    fn publish() -> ClientMessage {
        ClientMessage::Publish {
            request: 1,
            kind: TrackKind::Video,
            codec: "vp8".into(),
            layers: None,
            encrypted: false,
        }
    }

    #[test]
    fn a_burst_passes_then_the_rate_holds_then_a_flood_disconnects() {
        let t0 = Instant::now();
        let limits = ControlLimits {
            announcements_per_second: 5.0,
            announcement_burst: 20.0,
            subscriptions_per_second: 200.0,
            subscription_burst: 2000.0,
        };
        let mut r = ControlRate::new(limits, t0);
        for _ in 0..20 {
            assert_eq!(r.check(&publish(), t0), Verdict::Pass);
        }
        assert_eq!(r.check(&publish(), t0), Verdict::Drop);
        // A second later, five more.
        let t1 = t0 + Duration::from_secs(1);
        for _ in 0..5 {
            assert_eq!(r.check(&publish(), t1), Verdict::Pass);
        }
        // Subscriptions have their own budget.
        let sub = ClientMessage::Subscribe { track: TrackId(7) };
        assert_eq!(r.check(&sub, t1), Verdict::Pass);
        // Going on over the rate: dropped, then disconnected.
        let verdicts: Vec<Verdict> = (0..40).map(|_| r.check(&publish(), t1)).collect();
        assert!(verdicts.contains(&Verdict::Drop));
        assert_eq!(verdicts.last(), Some(&Verdict::Disconnect));
        assert_eq!(r.check(&ClientMessage::Leave {}, t1), Verdict::Pass);
    }
}
