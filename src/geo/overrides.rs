//! Operator CIDR → country overrides, consulted before the GeoIP database.
//!
//! Overlapping entries are refused when the config is loaded, so at most one
//! entry holds an address and a binary search over sorted ranges finds it.

use std::net::IpAddr;

use ipnet::IpNet;

use super::CountryCode;

use super::GeoPoint;

/// One override: every address in `net` is placed at `point` in `country`.
#[derive(Debug, Clone, PartialEq)]
pub struct Override {
    pub net: IpNet,
    pub country: CountryCode,
    pub point: GeoPoint,
}

/// Two overrides that share addresses (indices into the list given to [`Overrides::new`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Overlap(pub usize, pub usize);

/// Sorted, non-overlapping override ranges.
#[derive(Debug, Clone, Default)]
pub struct Overrides {
    entries: Vec<Override>,
    v4: Vec<(u32, u32, usize)>,
    v6: Vec<(u128, u128, usize)>,
}

impl Overrides {
    /// Builds the table; every overlapping pair is reported.
    pub fn new(entries: Vec<Override>) -> Result<Self, Vec<Overlap>> {
        let mut v4 = Vec::new();
        let mut v6 = Vec::new();
        for (i, o) in entries.iter().enumerate() {
            match o.net {
                IpNet::V4(n) => v4.push((u32::from(n.network()), u32::from(n.broadcast()), i)),
                IpNet::V6(n) => v6.push((u128::from(n.network()), u128::from(n.broadcast()), i)),
            }
        }
        v4.sort_unstable();
        v6.sort_unstable();
        let mut overlaps = find_overlaps(&v4);
        overlaps.extend(find_overlaps(&v6));
        if overlaps.is_empty() {
            Ok(Overrides { entries, v4, v6 })
        } else {
            Err(overlaps)
        }
    }

    /// The override holding `ip`, if any. IPv4-mapped IPv6 addresses match IPv4 entries.
    #[inline]
    pub fn find(&self, ip: IpAddr) -> Option<&Override> {
        let idx = match ip {
            IpAddr::V4(v4) => search(&self.v4, u32::from(v4)),
            IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
                Some(v4) => search(&self.v4, u32::from(v4)),
                None => search(&self.v6, u128::from(v6)),
            },
        }?;
        self.entries.get(idx)
    }

    pub fn entries(&self) -> &[Override] {
        &self.entries
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }
}

fn search<T: Ord + Copy>(ranges: &[(T, T, usize)], ip: T) -> Option<usize> {
    // Ranges are disjoint and sorted by start: the candidate is the last one
    // starting at or before `ip`.
    let after = ranges.partition_point(|(start, _, _)| *start <= ip);
    let (_, end, idx) = ranges.get(after.checked_sub(1)?)?;
    (ip <= *end).then_some(*idx)
}

fn find_overlaps<T: Ord + Copy>(sorted: &[(T, T, usize)]) -> Vec<Overlap> {
    let mut overlaps = Vec::new();
    for (i, (_, end, a)) in sorted.iter().enumerate() {
        for (start, _, b) in &sorted[i + 1..] {
            if start > end {
                break;
            }
            overlaps.push(Overlap((*a).min(*b), (*a).max(*b)));
        }
    }
    overlaps
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(net: &str, country: &str) -> Override {
        let country = CountryCode::parse(country).unwrap();
        Override {
            net: net.parse().unwrap(),
            country,
            point: country.centroid(),
        }
    }

    #[test]
    fn finds_the_holding_network() {
        let table = Overrides::new(vec![
            entry("127.0.0.2/32", "DE"),
            entry("10.0.0.0/8", "FR"),
            entry("fd00::/8", "CH"),
        ])
        .unwrap();
        let country = |ip: &str| {
            table
                .find(ip.parse().unwrap())
                .map(|o| o.country.to_string())
        };
        assert_eq!(country("127.0.0.2").as_deref(), Some("DE"));
        assert_eq!(country("127.0.0.3"), None);
        assert_eq!(country("10.255.255.255").as_deref(), Some("FR"));
        assert_eq!(country("11.0.0.0"), None);
        assert_eq!(country("9.255.255.255"), None);
        assert_eq!(country("::ffff:10.1.2.3").as_deref(), Some("FR"));
        assert_eq!(country("fd12::1").as_deref(), Some("CH"));
        assert_eq!(country("fe80::1"), None);
    }

    #[test]
    fn reports_every_overlap() {
        let err = Overrides::new(vec![
            entry("10.0.0.0/8", "FR"),
            entry("10.1.0.0/16", "DE"),
            entry("192.168.0.0/16", "CH"),
            entry("10.1.2.0/24", "US"),
            entry("2001:db8::/32", "DE"),
            entry("2001:db8:1::/48", "DE"),
        ])
        .unwrap_err();
        assert_eq!(
            err,
            vec![Overlap(0, 1), Overlap(0, 3), Overlap(1, 3), Overlap(4, 5)]
        );
    }

    #[test]
    fn adjacent_networks_do_not_overlap() {
        let table = Overrides::new(vec![entry("10.0.0.0/9", "FR"), entry("10.128.0.0/9", "DE")]);
        assert!(table.is_ok());
    }
}
