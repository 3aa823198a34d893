//! Which spatial layer of each video track a subscriber gets.
//!
//! Per subscriber, every tick: the path's estimate ([`super::estimate`])
//! less the audio it takes is the budget for video. Each video track the
//! subscriber shows may go up to the layer its tile's size calls for
//! ([`layer_for_view`]) and the publisher sends. First every shown track
//! gets its lowest layer, the active speaker's first, while the budget
//! lasts (a track that does not fit is paused: the subscriber has audio
//! only for it); then each, the active speaker's first, goes up as far as
//! the rest of the budget allows. A layer above the one forwarded now
//! must fit with 20 % to spare ([`UP_MARGIN`]); keeping the current one
//! needs only its rate, so a choice does not flap on noise.

use crate::wire::datagram::{MAX_LAYERS, TrackId};

/// Rates assumed for a layer not yet measured (bit/s): a camera's
/// 180p, 360p and 720p.
pub const NOMINAL: [u64; MAX_LAYERS as usize] = [150_000, 500_000, 1_500_000];

/// Headroom a layer above the current one must leave.
pub const UP_MARGIN: f64 = 1.2;

/// One video track as a subscriber would take it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Want {
    pub track: TrackId,
    /// The layer forwarded now.
    pub current: Option<u8>,
    /// The highest layer to give: what the tile shows and the publisher
    /// sends. `None`: no video (hidden, or the publisher sends none).
    pub max: Option<u8>,
    /// Each layer's rate, bit/s.
    pub rates: [u64; MAX_LAYERS as usize],
    /// The active speaker's.
    pub priority: bool,
}

/// The layer each of `wants` gets within `budget` bit/s (in the same order).
pub fn choose(budget: u64, wants: &[Want]) -> Vec<Option<u8>> {
    let mut order: Vec<usize> = (0..wants.len()).collect();
    order.sort_by_key(|i| (!wants[*i].priority, wants[*i].track));
    let mut choice = vec![None; wants.len()];
    let mut left = budget as f64;
    let need = |w: &Want, layer: u8| {
        let rate = w.rates[layer as usize] as f64;
        if w.current.is_some_and(|c| layer <= c) {
            rate
        } else {
            rate * UP_MARGIN
        }
    };
    for &i in &order {
        let w = &wants[i];
        if w.max.is_some() && left >= need(w, 0) {
            choice[i] = Some(0);
            left -= w.rates[0] as f64;
        }
    }
    for &i in &order {
        let w = &wants[i];
        let (Some(mut at), Some(max)) = (choice[i], w.max) else {
            continue;
        };
        while at < max.min(MAX_LAYERS - 1) {
            let next = at + 1;
            let extra = need(w, next) - w.rates[at as usize] as f64;
            if left < extra {
                break;
            }
            left -=
                (w.rates[next as usize] - w.rates[at as usize].min(w.rates[next as usize])) as f64;
            at = next;
        }
        choice[i] = Some(at);
    }
    choice
}

/// The layer a tile of `width` × `height` device pixels calls for, of a
/// track with `layers` spatial layers; `None` for a hidden tile (0 × 0).
pub fn layer_for_view(width: u16, height: u16, layers: u8) -> Option<u8> {
    if width == 0 || height == 0 {
        return None;
    }
    // The height a 16:9 picture filling the tile would have.
    let h = u32::from(height).max(u32::from(width) * 9 / 16);
    let layer = match h {
        0..=200 => 0,
        201..=400 => 1,
        _ => 2,
    };
    Some(layer.min(layers.saturating_sub(1)))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn want(track: u32, max: Option<u8>, current: Option<u8>) -> Want {
        Want {
            track: TrackId(track),
            current,
            max,
            rates: NOMINAL,
            priority: false,
        }
    }

    #[test]
    fn everyone_gets_the_low_layer_before_anyone_goes_up() {
        let wants = [want(1, Some(2), None), want(2, Some(2), None)];
        // Room for 2 × 150 k with margin, not for a 500 k step.
        assert_eq!(choose(400_000, &wants), [Some(0), Some(0)]);
        // Room for one step up: the lower track id first.
        assert_eq!(choose(1_000_000, &wants), [Some(1), Some(0)]);
        assert_eq!(choose(10_000_000, &wants), [Some(2), Some(2)]);
        // Not even the low layer: paused.
        assert_eq!(choose(100_000, &wants), [None, None]);
        assert_eq!(choose(200_000, &wants), [Some(0), None]);
    }

    #[test]
    fn the_speaker_goes_first() {
        let mut wants = [want(1, Some(2), None), want(2, Some(2), None)];
        wants[1].priority = true;
        assert_eq!(choose(200_000, &wants), [None, Some(0)]);
        assert_eq!(choose(2_000_000, &wants), [Some(0), Some(2)]);
    }

    #[test]
    fn keeping_a_layer_needs_no_margin_going_up_does() {
        // 500 k exactly: the current layer 1 stays, a new one would not be taken.
        let stay = [want(1, Some(2), Some(1))];
        assert_eq!(choose(500_000, &stay), [Some(1)]);
        let go = [want(1, Some(2), Some(0))];
        assert_eq!(choose(500_000, &go), [Some(0)]);
        assert_eq!(choose(600_000, &go), [Some(1)]);
    }

    #[test]
    fn the_view_and_the_publisher_cap_the_layer() {
        let wants = [want(1, Some(0), None), want(2, None, None)];
        assert_eq!(choose(50_000_000, &wants), [Some(0), None]);
    }

    #[test]
    fn view_sizes() {
        assert_eq!(layer_for_view(0, 0, 3), None);
        assert_eq!(layer_for_view(320, 180, 3), Some(0));
        assert_eq!(layer_for_view(640, 360, 3), Some(1));
        assert_eq!(layer_for_view(1280, 720, 3), Some(2));
        // A tall narrow tile: its height decides.
        assert_eq!(layer_for_view(200, 600, 3), Some(2));
        assert_eq!(layer_for_view(1920, 1080, 1), Some(0));
    }
}
