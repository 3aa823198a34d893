//! What a subscriber's path carries, estimated from the relay's own view.
//!
//! The relay sends; it never sees the subscriber's receive reports. What
//! it does see, every [`TICK`]:
//!
//! - its own queue for the subscriber: datagrams the drop policy threw
//!   away, and bytes still waiting;
//! - the transport below it: for QUIC (native and WebTransport) the
//!   connection's smoothed RTT and its lost and sent packet counts, for
//!   both QUIC and WebSocket the bytes handed to the transport and not yet
//!   sent;
//! - what actually left: bytes taken from the queue over the tick.
//!
//! A tick is **congested** when the queue dropped anything, when more
//! than [`BACKLOG`] of sending time (at the rate that left, and at least
//! 16 KiB) waits in the queue and transport at this tick and the one
//! before (a keyframe's burst drains within one), when more than 10 % of the packets sent were
//! lost (at least 3 of at least 10 sent), or when the smoothed RTT stands more than
//! [`QUEUE_DELAY`] above the lowest RTT seen (a queue is building on the
//! path).
//!
//! Until a path shows congestion its estimate is unbounded: a subscriber
//! on a good path gets the layers its tiles call for from the start. **Down
//! fast**: a congested tick sets the estimate to 85 % of the lower of the
//! estimate and the rate that left over that tick (what the path drains
//! while it is full), at once. The queue and RTT signals lag a cut (the backlog drains, the
//! smoothed RTT follows over several round trips, the transport declares
//! packets lost a round trip or more after they were, and a transport that
//! lost much sends slowly for a while): for [`SETTLE`] after a cut nothing
//! cuts again, so the estimate falls at most once a second. A quiet tick never leaves the
//! estimate below the rate that left. **Up slowly, after probing**: after a quiet
//! hold the estimate grows 30 % per second, but never past 3.5 times what
//! left plus 300 kbit/s, or the next step up the core names
//! ([`Estimator::next_step`]) with its margin, so an estimate grows only in
//! steps the path has just carried. Layer choice ([`super::layers`]) turns
//! a grown estimate into a higher layer: that switch is the probe.
//! Congestion within [`PROBE_WINDOW`] of a switch up doubles the hold
//! before the next (2 s, up to 32 s); a probe that holds halves it again.

use std::time::{Duration, Instant};

/// How often the shell samples paths and the core re-chooses layers.
pub const TICK: Duration = Duration::from_millis(200);

/// The estimate never goes below this (bit/s): audio for a few tracks.
pub const FLOOR: u64 = 64_000;

/// A path that never showed congestion (bit/s): no limit.
pub const UNBOUNDED: u64 = u64::MAX;

/// Sending time waiting in the relay before a tick counts as congested.
pub const BACKLOG: Duration = Duration::from_millis(150);

/// RTT above the lowest seen that counts as a queue on the path.
pub const QUEUE_DELAY: Duration = Duration::from_millis(100);

/// After a cut, how long a queue or a high RTT is taken for the backlog
/// of before the cut rather than for new congestion.
pub const SETTLE: Duration = Duration::from_secs(1);

/// A switch up followed by congestion within this window failed.
pub const PROBE_WINDOW: Duration = Duration::from_secs(2);

const HOLD_MIN: Duration = Duration::from_secs(2);
const HOLD_MAX: Duration = Duration::from_secs(32);

/// What the shell reads from a subscriber's transport each tick.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct PathSample {
    /// Smoothed RTT (QUIC only).
    pub rtt: Option<Duration>,
    /// Packets the transport declared lost, and sent, since it started
    /// (QUIC only; 0 for WebSocket).
    pub lost_packets: u64,
    pub sent_packets: u64,
    /// Datagram bytes handed to the transport and not yet sent.
    pub backlog_bytes: u64,
}

/// What the core adds from its own queue: totals since the subscriber
/// joined, and what waits now.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct QueueSample {
    pub bytes_out: u64,
    pub drops: u64,
    pub queued_bytes: u64,
}

/// Why the last tick was congested (for tests, logs and metrics).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Signal {
    Drops,
    Backlog,
    Loss,
    Delay,
}

/// One subscriber's estimator.
#[derive(Debug, Clone)]
pub struct Estimator {
    estimate: u64,
    /// The rate that left over the last tick (bit/s).
    delivered: u64,
    /// When the estimate was last cut.
    cut_at: Option<Instant>,
    min_rtt: Option<Duration>,
    last: Option<(Instant, QueueSample, PathSample)>,
    hold_until: Option<Instant>,
    hold: Duration,
    /// When the layer choice last went up.
    raised_at: Option<Instant>,
    congested: Option<Signal>,
    /// What the next layer up would need in all (bit/s).
    next_step: u64,
    /// The last tick had a backlog over the limit.
    backlogged: bool,
}

impl Default for Estimator {
    fn default() -> Self {
        Estimator {
            estimate: UNBOUNDED,
            delivered: 0,
            cut_at: None,
            min_rtt: None,
            last: None,
            hold_until: None,
            hold: HOLD_MIN,
            raised_at: None,
            congested: None,
            next_step: 0,
            backlogged: false,
        }
    }
}

impl Estimator {
    /// The path's estimated capacity, bit/s.
    pub fn estimate(&self) -> u64 {
        self.estimate
    }

    /// The rate that left over the last tick, bit/s.
    pub fn delivered(&self) -> u64 {
        self.delivered
    }

    /// Why the last tick was congested, if it was.
    pub fn congested(&self) -> Option<Signal> {
        self.congested
    }

    /// The layer choice went up at `now` (a probe).
    pub fn raised(&mut self, now: Instant) {
        self.raised_at = Some(now);
    }

    /// What the choice would need in all to go one layer up (or to
    /// resume a paused track), bit/s: the estimate may grow that far even
    /// when little is flowing now.
    pub fn next_step(&mut self, bps: u64) {
        self.next_step = bps;
    }

    /// Takes one tick's samples; returns the new estimate.
    pub fn update(&mut self, now: Instant, queue: QueueSample, path: PathSample) -> u64 {
        if let Some(rtt) = path.rtt.filter(|r| !r.is_zero()) {
            // The lowest RTT, forgotten slowly (1/64 of the gap per tick),
            // so a route that got longer is not taken for a queue forever.
            self.min_rtt = Some(match self.min_rtt {
                Some(m) if rtt < m => rtt,
                Some(m) => m + (rtt - m) / 64,
                None => rtt,
            });
        }
        let Some((at, q0, p0)) = self.last.replace((now, queue, path)) else {
            return self.estimate;
        };
        let dt = now.saturating_duration_since(at).as_secs_f64();
        if dt <= 0.0 {
            return self.estimate;
        }
        let sent_bytes = queue.bytes_out.saturating_sub(q0.bytes_out);
        self.delivered = (sent_bytes as f64 * 8.0 / dt) as u64;
        let drops = queue.drops.saturating_sub(q0.drops);
        let lost = path.lost_packets.saturating_sub(p0.lost_packets);
        let sent = path.sent_packets.saturating_sub(p0.sent_packets);
        let waiting = queue.queued_bytes + path.backlog_bytes;
        // Bytes the rate that left sends in BACKLOG, and at least 16 KiB.
        let allowed = ((self.delivered as f64 / 8.0) * BACKLOG.as_secs_f64()).max(16_384.0);
        let delay = match (path.rtt, self.min_rtt) {
            (Some(rtt), Some(min)) => rtt > min + QUEUE_DELAY,
            _ => false,
        };
        let backlogged = waiting as f64 > allowed;
        let persistent = backlogged && self.backlogged;
        self.backlogged = backlogged;
        self.congested = if drops > 0 {
            Some(Signal::Drops)
        } else if persistent {
            Some(Signal::Backlog)
        } else if sent >= 10 && lost >= 3 && lost * 10 > sent {
            Some(Signal::Loss)
        } else if delay {
            Some(Signal::Delay)
        } else {
            None
        };
        let settling = self
            .cut_at
            .is_some_and(|c| now.saturating_duration_since(c) < SETTLE);
        if settling && self.congested.is_some() {
            // The backlog of before the cut draining: neither cut nor grow.
            self.congested = None;
            return self.estimate;
        }
        if self.congested.is_some() {
            let failed_probe = self
                .raised_at
                .is_some_and(|r| now.saturating_duration_since(r) < PROBE_WINDOW);
            if failed_probe {
                self.hold = (self.hold * 2).min(HOLD_MAX);
                self.raised_at = None;
            }
            // Only a fresh reading lowers the estimate: once lowered, a
            // backlog draining at the new rate is not congestion again.
            let base = self.estimate.min(self.delivered).max(FLOOR);
            self.estimate = ((base as f64 * 0.85) as u64).max(FLOOR);
            self.hold_until = Some(now + self.hold);
            self.cut_at = Some(now);
            return self.estimate;
        }
        if self
            .raised_at
            .is_some_and(|r| now.saturating_duration_since(r) >= PROBE_WINDOW)
        {
            // The probe held.
            self.hold = (self.hold / 2).max(HOLD_MIN);
            self.raised_at = None;
        }
        if self.estimate == UNBOUNDED {
            return self.estimate;
        }
        self.estimate = self.estimate.max(self.delivered);
        if self.hold_until.is_none_or(|h| now >= h) {
            let cap = (self.delivered.saturating_mul(7) / 2 + 300_000)
                .max((self.next_step as f64 * super::layers::UP_MARGIN * 1.05) as u64);
            if self.estimate < cap {
                let grown = (self.estimate as f64 * (1.0 + 0.3 * dt)) as u64;
                self.estimate = grown.min(cap);
            }
        }
        self.estimate
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const KIB: u64 = 1024;

    /// Runs `ticks` ticks of a path that carries `capacity` bit/s while
    /// `offered` bit/s are sent into it; returns the estimator.
    fn run(
        e: &mut Estimator,
        t: &mut Instant,
        out: &mut u64,
        ticks: u32,
        offered: impl Fn(u64) -> u64,
        capacity: u64,
    ) {
        for _ in 0..ticks {
            *t += TICK;
            let want = offered(e.estimate());
            let rate = want.min(capacity);
            *out += rate * TICK.as_millis() as u64 / 8000;
            let drops = u64::from(want > capacity);
            let q = QueueSample {
                bytes_out: *out,
                drops: drops + e.last.map_or(0, |l| l.1.drops),
                queued_bytes: 0,
            };
            e.update(*t, q, PathSample::default());
        }
    }

    #[test]
    fn goes_down_at_once_and_up_slowly() {
        let mut e = Estimator::default();
        let (mut t, mut out) = (Instant::now(), 0);
        e.update(t, QueueSample::default(), PathSample::default());
        // 400 kbit/s path, sender offers whatever the estimate allows.
        run(&mut e, &mut t, &mut out, 2, |est| est, 400_000);
        assert!(e.estimate() <= 400_000, "{}", e.estimate());
        assert!(e.estimate() >= 250_000, "{}", e.estimate());
        let low = e.estimate();
        // The path opens up: the estimate waits out the hold, then grows
        // no faster than 30 %/s.
        run(&mut e, &mut t, &mut out, 5, |est| est * 9 / 10, 10_000_000);
        assert!(e.estimate() <= low * 14 / 10, "{} after 1 s", e.estimate());
        run(&mut e, &mut t, &mut out, 60, |est| est * 9 / 10, 10_000_000);
        assert!(e.estimate() > 2_000_000, "{} after 13 s", e.estimate());
    }

    #[test]
    fn a_probe_that_fails_doubles_the_hold() {
        let mut e = Estimator::default();
        let (mut t, mut out) = (Instant::now(), 0);
        e.update(t, QueueSample::default(), PathSample::default());
        run(&mut e, &mut t, &mut out, 2, |est| est, 400_000);
        assert_eq!(e.hold, HOLD_MIN);
        // Settled, a probe that meets congestion at once.
        run(&mut e, &mut t, &mut out, 5, |_| 100_000, 400_000);
        e.raised(t);
        run(&mut e, &mut t, &mut out, 1, |_| 800_000, 400_000);
        assert_eq!(e.hold, HOLD_MIN * 2);
        // Quiet for a probe window after a successful raise: halved.
        run(&mut e, &mut t, &mut out, 20, |_| 100_000, 400_000);
        e.raised(t);
        run(&mut e, &mut t, &mut out, 11, |_| 100_000, 400_000);
        assert_eq!(e.hold, HOLD_MIN);
    }

    #[test]
    fn signals_from_the_transport() {
        let t = Instant::now();
        let base = PathSample {
            rtt: Some(Duration::from_millis(20)),
            lost_packets: 0,
            sent_packets: 0,
            backlog_bytes: 0,
        };
        let q = |out: u64, queued: u64| QueueSample {
            bytes_out: out,
            drops: 0,
            queued_bytes: queued,
        };
        let mut e = Estimator::default();
        e.update(t, q(0, 0), base);
        e.update(t + TICK, q(25 * KIB, 0), base);
        assert_eq!(e.congested(), None);
        // 20 % loss.
        let lossy = PathSample {
            lost_packets: 20,
            sent_packets: 100,
            ..base
        };
        e.update(t + TICK * 2, q(50 * KIB, 0), lossy);
        assert_eq!(e.congested(), Some(Signal::Loss));
        // Right after a cut, the transport's signals are the old backlog's.
        let later = PathSample {
            lost_packets: 40,
            sent_packets: 200,
            ..base
        };
        e.update(t + TICK * 3, q(60 * KIB, 0), later);
        assert_eq!(e.congested(), None);
        let t = t + SETTLE;
        // 2 % loss is not congestion.
        let light = PathSample {
            lost_packets: 42,
            sent_packets: 300,
            ..base
        };
        e.update(t + TICK * 3, q(75 * KIB, 0), light);
        assert_eq!(e.congested(), None);
        // RTT 130 ms above the lowest.
        let slow = PathSample {
            rtt: Some(Duration::from_millis(150)),
            ..light
        };
        e.update(t + TICK * 4, q(100 * KIB, 0), slow);
        assert_eq!(e.congested(), Some(Signal::Delay));
        // A second of sending waiting in the transport.
        let backlog = PathSample {
            backlog_bytes: 200 * KIB,
            ..light
        };
        // One tick of backlog is a burst draining; two are congestion.
        e.update(t + TICK * 5 + SETTLE, q(125 * KIB, 0), backlog);
        assert_eq!(e.congested(), None);
        e.update(t + TICK * 6 + SETTLE, q(150 * KIB, 0), backlog);
        assert_eq!(e.congested(), Some(Signal::Backlog));
        assert!(e.estimate() >= FLOOR);
    }
}
