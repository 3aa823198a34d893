//! A subscriber's bounded datagram queue and its drop policy.
//!
//! When the queue is full, the least useful datagram goes: the new one if it
//! is discardable; else the oldest discardable queued one; else the oldest
//! non-keyframe; else the oldest. Every drop is reported with its reason.

use std::collections::VecDeque;

use bytes::Bytes;

use crate::wire::datagram::{Flags, TrackId};

/// Why a datagram was dropped from a subscriber's queue.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DropReason {
    /// The queue was full and the arriving datagram was discardable.
    FullDroppedDiscardable,
    /// The queue was full; the oldest queued discardable datagram made room.
    EvictedDiscardable,
    /// The queue was full of reference data; the oldest non-keyframe went.
    EvictedNonKeyframe,
    /// The queue was full of keyframes; the oldest went.
    EvictedKeyframe,
}

impl DropReason {
    pub const COUNT: usize = 4;
    pub const ALL: [DropReason; Self::COUNT] = [
        DropReason::FullDroppedDiscardable,
        DropReason::EvictedDiscardable,
        DropReason::EvictedNonKeyframe,
        DropReason::EvictedKeyframe,
    ];

    pub fn index(self) -> usize {
        self as usize
    }

    /// Stable code (metric label).
    pub fn code(self) -> &'static str {
        match self {
            DropReason::FullDroppedDiscardable => "full_dropped_discardable",
            DropReason::EvictedDiscardable => "evicted_discardable",
            DropReason::EvictedNonKeyframe => "evicted_non_keyframe",
            DropReason::EvictedKeyframe => "evicted_keyframe",
        }
    }

    /// Whether the subscriber lost data later frames depend on, so that
    /// the publisher should send a keyframe.
    pub fn loses_reference(self) -> bool {
        matches!(
            self,
            DropReason::EvictedNonKeyframe | DropReason::EvictedKeyframe
        )
    }
}

/// A bounded FIFO of datagrams for one subscriber.
#[derive(Debug)]
pub struct Queue {
    items: VecDeque<(Bytes, Flags, TrackId)>,
    limit: usize,
    /// Queued datagrams flagged discardable: when none is, a full queue
    /// skips the search for one (a subscriber that fell behind would
    /// otherwise cost a scan of its whole queue per datagram).
    discardable: usize,
}

impl Queue {
    /// A queue of at most `limit` datagrams (at least 1). Its memory is
    /// reserved up front, so pushing never allocates.
    pub fn new(limit: usize) -> Self {
        let limit = limit.max(1);
        Queue {
            items: VecDeque::with_capacity(limit),
            limit,
            discardable: 0,
        }
    }

    pub fn len(&self) -> usize {
        self.items.len()
    }

    pub fn is_empty(&self) -> bool {
        self.items.is_empty()
    }

    /// Queues `datagram` of `track`, applying the drop policy when full.
    /// Returns what was dropped: why, and the track the dropped datagram
    /// belonged to (the arriving one's, or the evicted one's).
    #[inline]
    pub fn push(
        &mut self,
        datagram: Bytes,
        flags: Flags,
        track: TrackId,
    ) -> Option<(DropReason, TrackId)> {
        if self.items.len() < self.limit {
            self.discardable += usize::from(flags.discardable());
            self.items.push_back((datagram, flags, track));
            return None;
        }
        if flags.discardable() {
            return Some((DropReason::FullDroppedDiscardable, track));
        }
        let discardable = if self.discardable == 0 {
            None
        } else {
            self.items.iter().position(|(_, f, _)| f.discardable())
        };
        let (victim, reason) = if let Some(i) = discardable {
            (i, DropReason::EvictedDiscardable)
        } else if let Some(i) = self.items.iter().position(|(_, f, _)| !f.keyframe()) {
            (i, DropReason::EvictedNonKeyframe)
        } else {
            (0, DropReason::EvictedKeyframe)
        };
        let evicted = match self.items.remove(victim) {
            Some((_, f, t)) => {
                self.discardable -= usize::from(f.discardable());
                t
            }
            None => track,
        };
        self.items.push_back((datagram, flags, track));
        Some((reason, evicted))
    }

    /// Length of the oldest queued datagram.
    pub fn front_len(&self) -> Option<usize> {
        self.items.front().map(|(b, _, _)| b.len())
    }

    /// The oldest queued datagram.
    pub fn pop(&mut self) -> Option<Bytes> {
        let (b, f, _) = self.items.pop_front()?;
        self.discardable -= usize::from(f.discardable());
        Some(b)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const T: TrackId = TrackId(1);

    fn d(n: u8) -> Bytes {
        Bytes::from(vec![n])
    }

    fn drain(q: &mut Queue) -> Vec<u8> {
        std::iter::from_fn(|| q.pop()).map(|b| b[0]).collect()
    }

    #[test]
    fn fifo_under_the_limit() {
        let mut q = Queue::new(3);
        for n in 0..3 {
            assert_eq!(q.push(d(n), Flags::default(), T), None);
        }
        assert_eq!(drain(&mut q), [0, 1, 2]);
        assert!(q.is_empty());
    }

    #[test]
    fn full_queue_drops_the_least_useful() {
        let mut q = Queue::new(3);
        q.push(d(0), Flags::KEYFRAME, T);
        q.push(d(1), Flags::DISCARDABLE, T);
        q.push(d(2), Flags::default(), T);
        // A discardable arrival is dropped.
        let full = Some((DropReason::FullDroppedDiscardable, T));
        assert_eq!(q.push(d(3), Flags::DISCARDABLE, T), full);
        // Otherwise the oldest discardable makes room.
        let evicted = Some((DropReason::EvictedDiscardable, T));
        assert_eq!(q.push(d(4), Flags::default(), T), evicted);
        // Then the oldest non-keyframe.
        let evicted = Some((DropReason::EvictedNonKeyframe, T));
        assert_eq!(q.push(d(5), Flags::KEYFRAME, T), evicted);
        assert_eq!(q.push(d(6), Flags::KEYFRAME, T), evicted);
        // All keyframes: the oldest goes.
        let evicted = Some((DropReason::EvictedKeyframe, T));
        assert_eq!(q.push(d(7), Flags::KEYFRAME, T), evicted);
        assert_eq!(drain(&mut q), [5, 6, 7]);
    }

    #[test]
    fn reports_the_evicted_datagrams_track() {
        let mut q = Queue::new(2);
        q.push(d(0), Flags::default(), TrackId(7));
        q.push(d(1), Flags::KEYFRAME, TrackId(8));
        assert_eq!(
            q.push(d(2), Flags::KEYFRAME, TrackId(8)),
            Some((DropReason::EvictedNonKeyframe, TrackId(7)))
        );
    }
}
