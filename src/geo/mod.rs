//! Where a client is: CIDR overrides first, then a MaxMind DB, else unknown;
//! and the country codes ([`country`]) that jurisdictions are made of.
//!
//! Residency never depends on this module. The conference's pin decides the
//! jurisdiction; the location only ranks relays inside it, and an unknown
//! location still gets a relay inside the jurisdiction.
//!
//! Supported database schemas (decoded into one borrowed struct, so a lookup
//! allocates nothing):
//! - MaxMind GeoIP2 / GeoLite2 Country and City, DB-IP Lite:
//!   `country.iso_code` (falling back to `registered_country.iso_code`) and,
//!   in City databases, `location.latitude` / `location.longitude`;
//! - `country_code`-only databases (e.g. the ip-location-db builds).

pub mod country;
pub mod overrides;
pub mod point;

use std::fmt;
use std::net::IpAddr;
use std::path::{Path, PathBuf};

use serde::Deserialize;

pub use country::{CountryCode, CountrySet, UnknownCountry};
pub use overrides::{Overlap, Override, Overrides};
pub use point::{GeoPoint, PointSet};

/// How precise a known position is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Precision {
    /// Coordinates from the database record or the override itself.
    Coordinates,
    /// Only the country is known; its centroid stands in.
    CountryCentroid,
}

/// Why no location was found. A bounded set, usable as a metric label.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Unlocated {
    /// No override matched and no database is configured.
    NoDatabase,
    /// The database has no record for the address.
    NotInDatabase,
    /// The record names no country, or a code that is not ISO 3166 (e.g. `EU`).
    NoCountry,
    /// The database could not decode the record.
    LookupFailed,
}

impl Unlocated {
    pub fn as_str(self) -> &'static str {
        match self {
            Unlocated::NoDatabase => "no_database",
            Unlocated::NotInDatabase => "not_in_database",
            Unlocated::NoCountry => "no_country",
            Unlocated::LookupFailed => "lookup_failed",
        }
    }
}

/// Where a client is believed to be.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Location {
    Known {
        country: CountryCode,
        point: GeoPoint,
        precision: Precision,
        /// True when an operator override placed it.
        from_override: bool,
    },
    Unknown(Unlocated),
}

impl Location {
    pub fn country(&self) -> Option<CountryCode> {
        match self {
            Location::Known { country, .. } => Some(*country),
            Location::Unknown(_) => None,
        }
    }

    pub fn point(&self) -> Option<GeoPoint> {
        match self {
            Location::Known { point, .. } => Some(*point),
            Location::Unknown(_) => None,
        }
    }

    /// A known location at a country's centroid.
    pub fn in_country(country: CountryCode) -> Self {
        Location::Known {
            country,
            point: country.centroid(),
            precision: Precision::CountryCentroid,
            from_override: false,
        }
    }
}

/// A GeoIP database that could not be used.
#[derive(Debug, thiserror::Error)]
#[error("cannot use GeoIP database {}: {source}", path.display())]
pub struct DatabaseError {
    pub path: PathBuf,
    #[source]
    pub source: maxminddb::MaxMindDbError,
}

/// An opened MaxMind DB.
pub struct Database {
    path: PathBuf,
    reader: maxminddb::Reader<Vec<u8>>,
}

impl Database {
    /// Reads the whole file and checks its metadata.
    pub fn open(path: &Path) -> Result<Self, DatabaseError> {
        let reader = maxminddb::Reader::open_readfile(path).map_err(|source| DatabaseError {
            path: path.to_owned(),
            source,
        })?;
        Ok(Database {
            path: path.to_owned(),
            reader,
        })
    }

    /// Wraps database bytes already in memory (tests, benchmarks).
    pub fn from_bytes(path: PathBuf, bytes: Vec<u8>) -> Result<Self, DatabaseError> {
        let reader = maxminddb::Reader::from_source(bytes).map_err(|source| DatabaseError {
            path: path.clone(),
            source,
        })?;
        Ok(Database { path, reader })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The `database_type` from the file's metadata, e.g. `GeoLite2-City`.
    pub fn database_type(&self) -> &str {
        &self.reader.metadata().database_type
    }

    fn locate(&self, ip: IpAddr) -> Location {
        if ip.is_ipv6() && self.reader.metadata().ip_version == 4 {
            return Location::Unknown(Unlocated::NotInDatabase);
        }
        let result = match self.reader.lookup(ip) {
            Ok(result) => result,
            Err(_) => return Location::Unknown(Unlocated::LookupFailed),
        };
        let record: Record<'_> = match result.decode() {
            Ok(Some(record)) => record,
            Ok(None) => return Location::Unknown(Unlocated::NotInDatabase),
            Err(_) => return Location::Unknown(Unlocated::LookupFailed),
        };
        let code = record
            .country
            .and_then(|c| c.iso_code)
            .or(record.registered_country.and_then(|c| c.iso_code))
            .or(record.country_code);
        let Some(country) = code.and_then(|c| CountryCode::parse(c).ok()) else {
            return Location::Unknown(Unlocated::NoCountry);
        };
        let coordinates = record
            .location
            .and_then(|l| GeoPoint::new(l.latitude?, l.longitude?));
        match coordinates {
            Some(point) => Location::Known {
                country,
                point,
                precision: Precision::Coordinates,
                from_override: false,
            },
            None => Location::in_country(country),
        }
    }
}

impl fmt::Debug for Database {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Database")
            .field("path", &self.path)
            .field("database_type", &self.database_type())
            .finish()
    }
}

/// The fields we read from a record, borrowed from the database buffer.
#[derive(Deserialize)]
struct Record<'a> {
    #[serde(borrow)]
    country: Option<IsoCode<'a>>,
    #[serde(borrow)]
    registered_country: Option<IsoCode<'a>>,
    #[serde(borrow)]
    country_code: Option<&'a str>,
    location: Option<Coordinates>,
}

#[derive(Deserialize)]
struct IsoCode<'a> {
    #[serde(borrow)]
    iso_code: Option<&'a str>,
}

#[derive(Deserialize)]
struct Coordinates {
    latitude: Option<f64>,
    longitude: Option<f64>,
}

/// Overrides plus an optional database.
#[derive(Debug, Default)]
pub struct GeoIp {
    overrides: Overrides,
    database: Option<Database>,
}

impl GeoIp {
    pub fn new(overrides: Overrides, database: Option<Database>) -> Self {
        GeoIp {
            overrides,
            database,
        }
    }

    pub fn overrides(&self) -> &Overrides {
        &self.overrides
    }

    pub fn database(&self) -> Option<&Database> {
        self.database.as_ref()
    }

    /// Locates `ip`: override, then database, else unknown. Never fails.
    #[inline]
    pub fn locate(&self, ip: IpAddr) -> Location {
        if let Some(o) = self.overrides.find(ip) {
            return Location::Known {
                country: o.country,
                point: o.point,
                precision: if o.point == o.country.centroid() {
                    Precision::CountryCentroid
                } else {
                    Precision::Coordinates
                },
                from_override: true,
            };
        }
        match &self.database {
            Some(db) => db.locate(ip.to_canonical()),
            None => Location::Unknown(Unlocated::NoDatabase),
        }
    }
}
