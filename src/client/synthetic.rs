//! Synthetic media for tests and the load tool: each payload carries its
//! send time and a per-track sequence, so receivers measure loss and latency.
//!
//! Payload layout (after the datagram header): send time in microseconds
//! since the Unix epoch (u64 BE), then filler up to the packet size. The
//! datagram header's sequence number is the per-track sequence.

use std::collections::HashMap;

use crate::wire::datagram::{self, TrackId};

/// Bytes of the payload that carry the send time.
pub const STAMP_LEN: usize = 8;

/// A payload of `size` bytes stamped with the current time.
pub fn payload(size: usize) -> Vec<u8> {
    let mut p = vec![0x5a; size.max(STAMP_LEN)];
    p[..STAMP_LEN].copy_from_slice(&crate::clock::unix_micros().to_be_bytes());
    p
}

/// A publisher of one synthetic track: 1,100-byte packets, a keyframe
/// every 100, numbered from 0.
#[derive(Debug)]
pub struct Stream<'a> {
    publisher: &'a super::Client,
    track: TrackId,
    /// The next sequence number.
    pub sequence: u32,
}

/// Size of each packet a [`Stream`] sends, header included.
pub const STREAM_PACKET: usize = 1100;

impl<'a> Stream<'a> {
    pub fn new(publisher: &'a super::Client, track: TrackId) -> Self {
        Stream {
            publisher,
            track,
            sequence: 0,
        }
    }

    /// Sends packet `sequence` (a send error is loss the receivers count).
    pub fn send(&self, sequence: u32) {
        let _ = self.publisher.send_media(
            &datagram::MediaHeader {
                track: self.track,
                sequence,
                flags: if sequence % 100 == 0 {
                    datagram::Flags::KEYFRAME
                } else {
                    datagram::Flags::default()
                },
                info: datagram::Info::NONE,
            },
            &payload(STREAM_PACKET - datagram::HEADER_LEN),
        );
    }

    /// Sends until each of `subscribers` received something (a
    /// subscription beyond a cascade link takes effect once the link passed
    /// it on), then lets what was sent drain; fails after `within`.
    pub async fn prime(
        &mut self,
        subscribers: &[&super::Client],
        within: std::time::Duration,
    ) -> Result<(), String> {
        use std::time::Duration;
        let deadline = tokio::time::Instant::now() + within;
        let mut primed = vec![false; subscribers.len()];
        while primed.iter().any(|p| !p) {
            if tokio::time::Instant::now() > deadline {
                return Err("some subscribers never received media".into());
            }
            self.send(self.sequence);
            self.sequence += 1;
            tokio::time::sleep(Duration::from_millis(20)).await;
            for (i, client) in subscribers.iter().enumerate() {
                while let Ok(Ok(_)) =
                    tokio::time::timeout(Duration::from_micros(1), client.recv_media()).await
                {
                    primed[i] = true;
                }
            }
        }
        tokio::time::sleep(Duration::from_millis(300)).await;
        Ok(())
    }
}

/// What one receiver saw.
#[derive(Debug, Default, Clone)]
pub struct ReceiveStats {
    pub packets: u64,
    pub bytes: u64,
    /// Per track: (first sequence, highest sequence, packets).
    tracks: HashMap<TrackId, (u32, u32, u64)>,
    /// One-way latencies in microseconds (sender and receiver share a clock
    /// on loopback).
    pub latencies_us: Vec<u64>,
    /// Datagrams that were not synthetic media.
    pub malformed: u64,
    /// Loss counted by receivers merged into this one (each receiver
    /// judges its own gaps; adding their packet counts would hide them).
    lost_merged: u64,
}

impl ReceiveStats {
    /// Records one received datagram.
    pub fn record(&mut self, datagram: &[u8]) {
        let Ok(header) = datagram::parse(datagram) else {
            self.malformed += 1;
            return;
        };
        let body = datagram::payload(datagram);
        let Some(stamp) = body.first_chunk::<STAMP_LEN>() else {
            self.malformed += 1;
            return;
        };
        self.packets += 1;
        self.bytes += datagram.len() as u64;
        self.latencies_us
            .push(crate::clock::unix_micros().saturating_sub(u64::from_be_bytes(*stamp)));
        let entry =
            self.tracks
                .entry(header.track)
                .or_insert((header.sequence, header.sequence, 0));
        entry.0 = entry.0.min(header.sequence);
        entry.1 = entry.1.max(header.sequence);
        entry.2 += 1;
    }

    /// Packets missing between the first and highest sequence seen per track.
    pub fn lost(&self) -> u64 {
        let own: u64 = self
            .tracks
            .values()
            .map(|(first, last, got)| (u64::from(last - first) + 1).saturating_sub(*got))
            .sum();
        own + self.lost_merged
    }

    /// Adds another receiver's figures; its gaps stay its own.
    pub fn merge(&mut self, other: ReceiveStats) {
        self.lost_merged += other.lost();
        self.packets += other.packets;
        self.bytes += other.bytes;
        self.malformed += other.malformed;
        self.latencies_us.extend(other.latencies_us);
    }
}

/// The `q`-quantile (0..=1) of `values`, sorting them in place.
pub fn quantile(values: &mut [u64], q: f64) -> Option<u64> {
    if values.is_empty() {
        return None;
    }
    values.sort_unstable();
    let i = ((values.len() - 1) as f64 * q).round() as usize;
    values.get(i).copied()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wire::datagram::{Flags, MediaHeader};

    fn d(track: u32, sequence: u32) -> Vec<u8> {
        let mut out = Vec::new();
        datagram::encode(
            &MediaHeader {
                track: TrackId(track),
                sequence,
                flags: Flags::default(),
                info: crate::wire::datagram::Info::NONE,
            },
            &payload(100),
            &mut out,
        );
        out
    }

    #[test]
    fn counts_loss_per_track_and_latency() {
        let mut s = ReceiveStats::default();
        for seq in [0, 1, 2, 5, 6] {
            s.record(&d(1, seq));
        }
        for seq in [10, 11] {
            s.record(&d(2, seq));
        }
        s.record(b"junk");
        assert_eq!(s.packets, 7);
        assert_eq!(s.lost(), 2);
        assert_eq!(s.malformed, 1);
        assert!(s.latencies_us.iter().all(|l| *l < 10_000_000));
        // Two receivers of one track, each missing a different packet.
        let (mut a, mut b) = (ReceiveStats::default(), ReceiveStats::default());
        for seq in [0, 2, 3] {
            a.record(&d(9, seq));
        }
        for seq in [0, 1, 3] {
            b.record(&d(9, seq));
        }
        a.merge(b);
        assert_eq!(a.lost(), 2);
        let mut v = vec![5, 1, 3, 2, 4];
        assert_eq!(quantile(&mut v, 0.5), Some(3));
        assert_eq!(quantile(&mut v, 1.0), Some(5));
        assert_eq!(quantile(&mut [], 0.5), None);
    }
}
