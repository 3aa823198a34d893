//! GeoIP lookups over generated databases of each supported schema, IPv4 and
//! IPv6, and the precedence of operator overrides.

mod support;

use std::net::IpAddr;
use std::path::PathBuf;

use residency_relay::geo::CountryCode;
use residency_relay::geo::{Database, GeoIp, Location, Override, Overrides, Precision, Unlocated};
use support::{city_record, country_code_record, country_record, mmdb};

fn open(bytes: Vec<u8>) -> GeoIp {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("test.mmdb");
    std::fs::write(&path, bytes).unwrap();
    let db = Database::open(&path).expect("the production reader opens the generated file");
    GeoIp::new(Overrides::default(), Some(db))
}

fn ip(s: &str) -> IpAddr {
    s.parse().unwrap()
}

fn cc(s: &str) -> CountryCode {
    CountryCode::parse(s).unwrap()
}

#[track_caller]
fn assert_at(loc: Location, country: &str, lat: f64, lon: f64, precision: Precision) {
    match loc {
        Location::Known {
            country: c,
            point,
            precision: p,
            from_override,
        } => {
            assert_eq!(c, cc(country));
            assert!(
                (point.latitude() - lat).abs() < 1e-6,
                "latitude {}",
                point.latitude()
            );
            assert!(
                (point.longitude() - lon).abs() < 1e-6,
                "longitude {}",
                point.longitude()
            );
            assert_eq!(p, precision);
            assert!(!from_override);
        }
        other => panic!("expected {country}, got {other:?}"),
    }
}

#[test]
fn city_schema_uses_record_coordinates_for_ipv4_and_ipv6() {
    let geo = open(mmdb(
        "GeoLite2-City",
        false,
        &[
            ("81.2.69.0/24", city_record("GB", 51.5142, -0.0931)),
            ("2a02:8100::/32", city_record("DE", 52.52, 13.405)),
        ],
    ));
    assert_eq!(geo.database().unwrap().database_type(), "GeoLite2-City");
    assert_at(
        geo.locate(ip("81.2.69.160")),
        "GB",
        51.5142,
        -0.0931,
        Precision::Coordinates,
    );
    assert_at(
        geo.locate(ip("2a02:8100:1:2::3")),
        "DE",
        52.52,
        13.405,
        Precision::Coordinates,
    );
    // IPv4 reached through its IPv4-mapped IPv6 form.
    assert_at(
        geo.locate(ip("::ffff:81.2.69.1")),
        "GB",
        51.5142,
        -0.0931,
        Precision::Coordinates,
    );
    assert_eq!(
        geo.locate(ip("8.8.8.8")),
        Location::Unknown(Unlocated::NotInDatabase)
    );
    assert_eq!(
        geo.locate(ip("2001:db8::1")),
        Location::Unknown(Unlocated::NotInDatabase)
    );
}

#[test]
fn country_schema_falls_back_to_the_centroid() {
    let geo = open(mmdb(
        "GeoIP2-Country",
        false,
        &[
            ("192.0.2.0/24", country_record("CH")),
            ("2001:db8::/32", country_record("FR")),
        ],
    ));
    let ch = cc("CH").centroid();
    let fr = cc("FR").centroid();
    assert_at(
        geo.locate(ip("192.0.2.77")),
        "CH",
        ch.latitude(),
        ch.longitude(),
        Precision::CountryCentroid,
    );
    assert_at(
        geo.locate(ip("2001:db8:ff::1")),
        "FR",
        fr.latitude(),
        fr.longitude(),
        Precision::CountryCentroid,
    );
}

#[test]
fn registered_country_is_used_when_country_is_missing() {
    let record = serde_json::json!({ "registered_country": { "iso_code": "NL" } });
    let geo = open(mmdb(
        "GeoIP2-Country",
        false,
        &[("198.51.100.0/24", record)],
    ));
    assert_eq!(geo.locate(ip("198.51.100.1")).country(), Some(cc("NL")));
}

#[test]
fn country_code_schema_for_ipv4_and_ipv6() {
    let geo = open(mmdb(
        "geo-whois-asn-country",
        false,
        &[
            ("203.0.113.0/24", country_code_record("JP")),
            ("2001:db8:1::/48", country_code_record("CA")),
        ],
    ));
    let jp = cc("JP").centroid();
    let ca = cc("CA").centroid();
    assert_at(
        geo.locate(ip("203.0.113.9")),
        "JP",
        jp.latitude(),
        jp.longitude(),
        Precision::CountryCentroid,
    );
    assert_at(
        geo.locate(ip("2001:db8:1::42")),
        "CA",
        ca.latitude(),
        ca.longitude(),
        Precision::CountryCentroid,
    );
}

#[test]
fn ipv4_only_database_leaves_ipv6_unlocated() {
    let geo = open(mmdb(
        "GeoLite2-Country",
        true,
        &[("192.0.2.0/24", country_code_record("DE"))],
    ));
    assert_eq!(geo.locate(ip("192.0.2.1")).country(), Some(cc("DE")));
    assert_eq!(
        geo.locate(ip("2001:db8::1")),
        Location::Unknown(Unlocated::NotInDatabase)
    );
}

#[test]
fn records_without_an_iso_country_are_unlocated() {
    let geo = open(mmdb(
        "GeoIP2-Country",
        false,
        &[
            ("192.0.2.0/25", country_code_record("EU")),
            (
                "192.0.2.128/25",
                serde_json::json!({ "continent": { "code": "EU" } }),
            ),
            (
                "198.51.100.0/24",
                serde_json::json!({ "country": { "iso_code": 42 } }),
            ),
        ],
    ));
    assert_eq!(
        geo.locate(ip("192.0.2.1")),
        Location::Unknown(Unlocated::NoCountry)
    );
    assert_eq!(
        geo.locate(ip("192.0.2.200")),
        Location::Unknown(Unlocated::NoCountry)
    );
    // A record of the wrong type is a decoding failure, not a panic.
    assert_eq!(
        geo.locate(ip("198.51.100.1")),
        Location::Unknown(Unlocated::LookupFailed)
    );
}

#[test]
fn out_of_range_coordinates_fall_back_to_the_centroid() {
    let geo = open(mmdb(
        "GeoLite2-City",
        false,
        &[("192.0.2.0/24", city_record("DE", 123.0, 500.0))],
    ));
    let de = cc("DE").centroid();
    assert_at(
        geo.locate(ip("192.0.2.1")),
        "DE",
        de.latitude(),
        de.longitude(),
        Precision::CountryCentroid,
    );
}

#[test]
fn overrides_come_before_the_database() {
    let bytes = mmdb(
        "GeoLite2-City",
        false,
        &[("10.0.0.0/8", city_record("US", 40.0, -74.0))],
    );
    let db = Database::from_bytes(PathBuf::from("mem.mmdb"), bytes).unwrap();
    let office = Override {
        net: "10.1.0.0/16".parse().unwrap(),
        country: cc("DE"),
        point: cc("DE").centroid(),
    };
    let geo = GeoIp::new(Overrides::new(vec![office]).unwrap(), Some(db));
    match geo.locate(ip("10.1.2.3")) {
        Location::Known {
            country,
            from_override,
            ..
        } => {
            assert_eq!(country, cc("DE"));
            assert!(from_override);
        }
        other => panic!("{other:?}"),
    }
    assert_eq!(geo.locate(ip("10.2.0.1")).country(), Some(cc("US")));
}

#[test]
fn no_database_and_no_override_is_unknown() {
    let geo = GeoIp::default();
    assert_eq!(
        geo.locate(ip("192.0.2.1")),
        Location::Unknown(Unlocated::NoDatabase)
    );
}

#[test]
fn config_loads_the_database_relative_to_itself() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir(dir.path().join("regions")).unwrap();
    std::fs::create_dir(dir.path().join("config")).unwrap();
    std::fs::create_dir(dir.path().join("data")).unwrap();
    std::fs::write(
        dir.path().join("data/geo.mmdb"),
        mmdb(
            "DBIP-City-Lite",
            false,
            &[("2001:db8::/32", city_record("IE", 53.35, -6.26))],
        ),
    )
    .unwrap();
    std::fs::write(
        dir.path().join("regions/eu.toml"),
        "id = \"eu\"\nname = \"EU\"\nlegal_basis = \"GDPR\"\ncountries = [\"IE\", \"DE\"]\n",
    )
    .unwrap();
    let config = dir.path().join("config/c.toml");
    std::fs::write(
        &config,
        "default_jurisdiction = \"eu\"\n[geoip]\ndatabase = \"../data/geo.mmdb\"\n",
    )
    .unwrap();
    let policy = residency_relay::policy::load(&config).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(
        policy.geoip().database().unwrap().path(),
        dir.path().canonicalize().unwrap().join("data/geo.mmdb")
    );
    assert_eq!(
        policy.geoip().locate(ip("2001:db8::5")).country(),
        Some(cc("IE"))
    );
}
