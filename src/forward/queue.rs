//! A subscriber's bounded datagram queue and its drop policy.
//!
//! Audio goes first: audio datagrams wait in a lane of their own that is
//! always drained before video and data, so under congestion audio never
//! waits behind video. When the queue (both lanes together) is full, the
//! least useful datagram goes: the new one if it is discardable; else the
//! oldest discardable queued one; else the oldest non-keyframe video or
//! data; else the oldest keyframe; and only when the queue holds nothing
//! but audio, the oldest audio datagram (for arriving audio) or the
//! arriving video (which never displaces audio). Every drop is reported
//! with its reason.

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
    /// The queue was full of audio: the arriving video or data datagram
    /// was dropped (audio is never displaced by video).
    FullOfAudio,
    /// The queue was full of audio: the oldest audio datagram made room
    /// for a newer one.
    EvictedAudio,
}

impl DropReason {
    pub const COUNT: usize = 6;
    pub const ALL: [DropReason; Self::COUNT] = [
        DropReason::FullDroppedDiscardable,
        DropReason::EvictedDiscardable,
        DropReason::EvictedNonKeyframe,
        DropReason::EvictedKeyframe,
        DropReason::FullOfAudio,
        DropReason::EvictedAudio,
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
            DropReason::FullOfAudio => "full_of_audio",
            DropReason::EvictedAudio => "evicted_audio",
        }
    }

    /// Whether the subscriber lost data later frames depend on, so that
    /// the publisher should send a keyframe.
    pub fn loses_reference(self) -> bool {
        matches!(
            self,
            DropReason::EvictedNonKeyframe | DropReason::EvictedKeyframe | DropReason::FullOfAudio
        )
    }

    /// Whether the datagram that went was the arriving one.
    pub fn dropped_arrival(self) -> bool {
        matches!(
            self,
            DropReason::FullDroppedDiscardable | DropReason::FullOfAudio
        )
    }
}

/// What was dropped: why, and the track and spatial layer of the datagram
/// that went (the arriving one's, or the evicted one's).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Dropped {
    pub reason: DropReason,
    pub track: TrackId,
    pub layer: u8,
}

/// One queued datagram and what the drop policy needs to know of it.
#[derive(Debug)]
struct Item {
    datagram: Bytes,
    flags: Flags,
    track: TrackId,
    layer: u8,
}

/// A bounded FIFO of datagrams for one subscriber, audio first.
#[derive(Debug)]
pub struct Queue {
    audio: VecDeque<Item>,
    items: VecDeque<Item>,
    limit: usize,
    /// Queued datagrams flagged discardable: when none is, a full queue
    /// skips the search for one (a subscriber that fell behind would
    /// otherwise cost a scan of its whole queue per datagram).
    discardable: usize,
    /// Bytes queued in both lanes.
    bytes: usize,
}

impl Queue {
    /// A queue of at most `limit` datagrams (at least 1). Its memory is
    /// reserved up front, so pushing never allocates.
    pub fn new(limit: usize) -> Self {
        let limit = limit.max(1);
        Queue {
            audio: VecDeque::with_capacity(limit),
            items: VecDeque::with_capacity(limit),
            limit,
            discardable: 0,
            bytes: 0,
        }
    }

    pub fn len(&self) -> usize {
        self.audio.len() + self.items.len()
    }

    pub fn is_empty(&self) -> bool {
        self.audio.is_empty() && self.items.is_empty()
    }

    /// Bytes queued.
    pub fn bytes(&self) -> usize {
        self.bytes
    }

    /// Queues `datagram` of `track` (video: of spatial `layer`) in the
    /// audio lane if `audio`, applying the drop policy when full. Returns
    /// what was dropped.
    #[inline]
    pub fn push(
        &mut self,
        datagram: Bytes,
        flags: Flags,
        track: TrackId,
        layer: u8,
        audio: bool,
    ) -> Option<Dropped> {
        let item = Item {
            datagram,
            flags,
            track,
            layer,
        };
        if self.len() < self.limit {
            self.insert(item, audio);
            return None;
        }
        let dropped = |reason, item: &Item| Dropped {
            reason,
            track: item.track,
            layer: item.layer,
        };
        if !audio && flags.discardable() {
            return Some(dropped(DropReason::FullDroppedDiscardable, &item));
        }
        let discardable = if self.discardable == 0 {
            None
        } else {
            self.items.iter().position(|i| i.flags.discardable())
        };
        let victim = if let Some(i) = discardable {
            Some((i, DropReason::EvictedDiscardable))
        } else if let Some(i) = self.items.iter().position(|i| !i.flags.keyframe()) {
            Some((i, DropReason::EvictedNonKeyframe))
        } else if !self.items.is_empty() {
            Some((0, DropReason::EvictedKeyframe))
        } else {
            None
        };
        let out = match victim {
            Some((i, reason)) => {
                let gone = self.items.remove(i).expect("an index of the queue");
                self.forget(&gone);
                dropped(reason, &gone)
            }
            // Nothing but audio is queued.
            None if audio => {
                let gone = self.audio.pop_front().expect("a full queue of audio");
                self.forget(&gone);
                dropped(DropReason::EvictedAudio, &gone)
            }
            None => return Some(dropped(DropReason::FullOfAudio, &item)),
        };
        self.insert(item, audio);
        Some(out)
    }

    fn insert(&mut self, item: Item, audio: bool) {
        self.bytes += item.datagram.len();
        // Counted in both lanes (only the video lane is searched).
        self.discardable += usize::from(item.flags.discardable());
        if audio {
            self.audio.push_back(item);
        } else {
            self.items.push_back(item);
        }
    }

    fn forget(&mut self, item: &Item) {
        self.bytes -= item.datagram.len();
        self.discardable -= usize::from(item.flags.discardable());
    }

    /// Length of the datagram [`Queue::pop`] would return.
    pub fn front_len(&self) -> Option<usize> {
        self.audio
            .front()
            .or_else(|| self.items.front())
            .map(|i| i.datagram.len())
    }

    /// The next datagram to send: the oldest audio one, else the oldest.
    pub fn pop(&mut self) -> Option<Bytes> {
        let item = self.audio.pop_front().or_else(|| self.items.pop_front())?;
        self.forget(&item);
        Some(item.datagram)
    }

    /// Drops every queued video datagram of `track` (its subscriber no
    /// longer takes the track, or switched layers); returns how many.
    pub fn discard_track(&mut self, track: TrackId) -> usize {
        let before = self.items.len();
        let mut bytes = 0;
        let mut discardable = 0;
        self.items.retain(|i| {
            let keep = i.track != track;
            if !keep {
                bytes += i.datagram.len();
                discardable += usize::from(i.flags.discardable());
            }
            keep
        });
        self.bytes -= bytes;
        self.discardable -= discardable;
        before - self.items.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const T: TrackId = TrackId(1);

    fn d(n: u8) -> Bytes {
        Bytes::from(vec![n])
    }

    impl Queue {
        /// A video datagram of layer 0.
        fn push_video(&mut self, d: Bytes, f: Flags, t: TrackId) -> Option<(DropReason, TrackId)> {
            self.push(d, f, t, 0, false).map(|x| (x.reason, x.track))
        }
    }

    fn drain(q: &mut Queue) -> Vec<u8> {
        std::iter::from_fn(|| q.pop()).map(|b| b[0]).collect()
    }

    #[test]
    fn fifo_under_the_limit() {
        let mut q = Queue::new(3);
        for n in 0..3 {
            assert_eq!(q.push_video(d(n), Flags::default(), T), None);
        }
        assert_eq!(drain(&mut q), [0, 1, 2]);
        assert!(q.is_empty());
    }

    #[test]
    fn full_queue_drops_the_least_useful() {
        let mut q = Queue::new(3);
        q.push_video(d(0), Flags::KEYFRAME, T);
        q.push_video(d(1), Flags::DISCARDABLE, T);
        q.push_video(d(2), Flags::default(), T);
        // A discardable arrival is dropped.
        let full = Some((DropReason::FullDroppedDiscardable, T));
        assert_eq!(q.push_video(d(3), Flags::DISCARDABLE, T), full);
        // Otherwise the oldest discardable makes room.
        let evicted = Some((DropReason::EvictedDiscardable, T));
        assert_eq!(q.push_video(d(4), Flags::default(), T), evicted);
        // Then the oldest non-keyframe.
        let evicted = Some((DropReason::EvictedNonKeyframe, T));
        assert_eq!(q.push_video(d(5), Flags::KEYFRAME, T), evicted);
        assert_eq!(q.push_video(d(6), Flags::KEYFRAME, T), evicted);
        // All keyframes: the oldest goes.
        let evicted = Some((DropReason::EvictedKeyframe, T));
        assert_eq!(q.push_video(d(7), Flags::KEYFRAME, T), evicted);
        assert_eq!(drain(&mut q), [5, 6, 7]);
    }

    #[test]
    fn reports_the_evicted_datagrams_track() {
        let mut q = Queue::new(2);
        q.push_video(d(0), Flags::default(), TrackId(7));
        q.push_video(d(1), Flags::KEYFRAME, TrackId(8));
        assert_eq!(
            q.push_video(d(2), Flags::KEYFRAME, TrackId(8)),
            Some((DropReason::EvictedNonKeyframe, TrackId(7)))
        );
    }

    #[test]
    fn audio_goes_first_and_is_never_displaced_by_video() {
        let mut q = Queue::new(4);
        q.push_video(d(0), Flags::KEYFRAME, T);
        q.push_video(d(1), Flags::default(), T);
        assert_eq!(q.push(d(10), Flags::default(), TrackId(2), 0, true), None);
        assert_eq!(q.bytes(), 3);
        assert_eq!(q.front_len(), Some(1));
        // Full: arriving audio evicts video, never the other way round.
        q.push(d(11), Flags::default(), TrackId(2), 0, true);
        let got = q
            .push(d(12), Flags::default(), TrackId(2), 0, true)
            .unwrap();
        assert_eq!((got.reason, got.track), (DropReason::EvictedNonKeyframe, T));
        let got = q
            .push(d(13), Flags::default(), TrackId(2), 0, true)
            .unwrap();
        assert_eq!(got.reason, DropReason::EvictedKeyframe);
        // Now nothing but audio: video is refused, older audio makes room.
        let got = q.push_video(d(2), Flags::default(), T);
        assert_eq!(got, Some((DropReason::FullOfAudio, T)));
        let got = q
            .push(d(14), Flags::default(), TrackId(2), 0, true)
            .unwrap();
        assert_eq!(got.reason, DropReason::EvictedAudio);
        assert_eq!(drain(&mut q), [11, 12, 13, 14]);
        assert_eq!(q.bytes(), 0);
    }

    #[test]
    fn audio_is_sent_before_older_video() {
        let mut q = Queue::new(8);
        q.push_video(d(0), Flags::default(), T);
        q.push_video(d(1), Flags::default(), T);
        q.push(d(9), Flags::default(), TrackId(2), 0, true);
        assert_eq!(drain(&mut q), [9, 0, 1]);
    }

    #[test]
    fn discarding_a_track_keeps_the_counts() {
        let mut q = Queue::new(8);
        q.push_video(d(0), Flags::DISCARDABLE, T);
        q.push_video(d(1), Flags::default(), TrackId(3));
        q.push(d(9), Flags::default(), T, 0, true);
        assert_eq!(q.discard_track(T), 1);
        assert_eq!(q.bytes(), 2);
        assert_eq!(drain(&mut q), [9, 1]);
    }
}
