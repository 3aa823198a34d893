//! ISO 3166-1 alpha-2 country codes, country sets and the centroid table.
//!
//! The list of valid codes and each country's centroid come from the `keshvar`
//! crate (ISO 3166 data with coordinates), compiled once into a dense table
//! indexed by the two letters, so that membership and centroid look-ups on the
//! routing path are array reads.

use std::fmt;
use std::sync::OnceLock;

use super::point::GeoPoint;

/// Number of two-letter combinations `AA`..`ZZ`; the dense index space.
const SLOTS: usize = 26 * 26;

/// A validated ISO 3166-1 alpha-2 code (upper case), e.g. `DE`.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct CountryCode([u8; 2]);

impl CountryCode {
    /// Parses a code, accepting either case, and checks it against the ISO list.
    pub fn parse(code: &str) -> Result<Self, UnknownCountry> {
        let bytes = code.as_bytes();
        if bytes.len() != 2 || !bytes.iter().all(u8::is_ascii_alphabetic) {
            return Err(UnknownCountry(code.to_owned()));
        }
        let candidate = CountryCode([bytes[0].to_ascii_uppercase(), bytes[1].to_ascii_uppercase()]);
        if table()[candidate.slot()].is_some() {
            Ok(candidate)
        } else {
            Err(UnknownCountry(code.to_owned()))
        }
    }

    /// The code as an upper-case `&str`.
    pub fn as_str(&self) -> &str {
        // Both bytes are ASCII upper-case letters by construction.
        std::str::from_utf8(&self.0).unwrap_or("??")
    }

    /// The country's short ISO name, e.g. "Germany".
    pub fn name(&self) -> &'static str {
        table()[self.slot()].as_ref().map_or("", |c| c.name)
    }

    /// The country's centroid from the shipped table.
    pub fn centroid(&self) -> GeoPoint {
        table()[self.slot()]
            .as_ref()
            .map_or(GeoPoint::NULL_ISLAND, |c| c.centroid)
    }

    fn slot(&self) -> usize {
        usize::from(self.0[0] - b'A') * 26 + usize::from(self.0[1] - b'A')
    }

    /// Every ISO country known to this build, in code order.
    pub fn all() -> impl Iterator<Item = CountryCode> {
        table().iter().enumerate().filter_map(|(slot, info)| {
            info.as_ref().map(|_| {
                // slot < 676, so both quotients fit in a letter.
                CountryCode([b'A' + (slot / 26) as u8, b'A' + (slot % 26) as u8])
            })
        })
    }
}

impl fmt::Display for CountryCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl fmt::Debug for CountryCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl serde::Serialize for CountryCode {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(self.as_str())
    }
}

/// A code that is not an ISO 3166-1 alpha-2 country.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("'{0}' is not an ISO 3166-1 alpha-2 country code")]
pub struct UnknownCountry(pub String);

#[derive(Debug)]
struct CountryInfo {
    name: &'static str,
    centroid: GeoPoint,
}

fn table() -> &'static [Option<CountryInfo>; SLOTS] {
    static TABLE: OnceLock<Box<[Option<CountryInfo>; SLOTS]>> = OnceLock::new();
    TABLE.get_or_init(|| {
        let mut table: Box<[Option<CountryInfo>; SLOTS]> = Box::new(std::array::from_fn(|_| None));
        for country in keshvar::CountryIterator::new() {
            let code = country.alpha2().to_string();
            let bytes = code.as_bytes();
            if bytes.len() != 2 || !bytes.iter().all(u8::is_ascii_uppercase) {
                continue;
            }
            let geo = country.geo();
            table[CountryCode([bytes[0], bytes[1]]).slot()] = Some(CountryInfo {
                name: country.iso_short_name(),
                centroid: GeoPoint::new(geo.latitude(), geo.longitude())
                    .unwrap_or(GeoPoint::NULL_ISLAND),
            });
        }
        table
    })
}

/// A set of countries as a 676-bit bitmap: membership is one shift and mask.
#[derive(Clone, PartialEq, Eq, Default)]
pub struct CountrySet([u64; SLOTS.div_ceil(64)]);

impl CountrySet {
    /// The empty set.
    pub fn new() -> Self {
        Self::default()
    }

    /// Every ISO country.
    pub fn all() -> Self {
        CountryCode::all().collect()
    }

    /// Adds a country; returns false when it was already present.
    pub fn insert(&mut self, code: CountryCode) -> bool {
        let slot = code.slot();
        let (word, bit) = (slot / 64, slot % 64);
        let present = self.0[word] & (1 << bit) != 0;
        self.0[word] |= 1 << bit;
        !present
    }

    /// Whether the set holds `code`.
    #[inline]
    pub fn contains(&self, code: CountryCode) -> bool {
        let slot = code.slot();
        self.0[slot / 64] & (1 << (slot % 64)) != 0
    }

    /// Number of countries in the set.
    pub fn len(&self) -> usize {
        self.0.iter().map(|w| w.count_ones() as usize).sum()
    }

    /// Whether the set is empty.
    pub fn is_empty(&self) -> bool {
        self.0.iter().all(|w| *w == 0)
    }

    /// The members in code order.
    pub fn iter(&self) -> impl Iterator<Item = CountryCode> + '_ {
        CountryCode::all().filter(|c| self.contains(*c))
    }
}

impl FromIterator<CountryCode> for CountrySet {
    fn from_iter<I: IntoIterator<Item = CountryCode>>(iter: I) -> Self {
        let mut set = CountrySet::new();
        for code in iter {
            set.insert(code);
        }
        set
    }
}

impl fmt::Debug for CountrySet {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_set().entries(self.iter()).finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_real_codes_in_either_case() {
        assert_eq!(CountryCode::parse("de").unwrap().as_str(), "DE");
        assert_eq!(CountryCode::parse("CH").unwrap().name(), "Switzerland");
    }

    #[test]
    fn refuses_codes_that_are_not_iso() {
        for bad in ["", "D", "DEU", "XX", "EU", "UK", "1A", "é"] {
            assert!(CountryCode::parse(bad).is_err(), "{bad} accepted");
        }
    }

    #[test]
    fn knows_every_iso_country_with_a_centroid() {
        let all: Vec<_> = CountryCode::all().collect();
        assert_eq!(all.len(), 249);
        let de = CountryCode::parse("DE").unwrap().centroid();
        assert!((de.latitude() - 51.2).abs() < 1.0 && (de.longitude() - 10.4).abs() < 1.0);
    }

    #[test]
    fn set_membership() {
        let de = CountryCode::parse("DE").unwrap();
        let us = CountryCode::parse("US").unwrap();
        let mut set = CountrySet::new();
        assert!(set.insert(de));
        assert!(!set.insert(de));
        assert!(set.contains(de) && !set.contains(us));
        assert_eq!(set.len(), 1);
        assert_eq!(CountrySet::all().len(), 249);
    }
}
