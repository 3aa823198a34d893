//! Shared test helpers: policies built in memory and small generated GeoIP databases.
#![allow(dead_code, unreachable_pub)]

pub mod browser;
pub mod cluster;
pub mod netns;
pub mod pg;
pub mod proxy;
pub mod relay;
pub mod wait;

/// A child process that is killed and reaped when this is dropped: on
/// every exit path of a test or bench, a failed assertion's panic
/// included, so no `relay` is left holding its ports.
pub struct Reaped(pub std::process::Child);

impl Drop for Reaped {
    fn drop(&mut self) {
        if let Ok(None) = self.0.try_wait() {
            let _ = self.0.kill();
        }
        let _ = self.0.wait();
    }
}

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use residency_relay::policy::Policy;
use residency_relay::policy::files::{
    ConfigFile, GeoIpSection, PlanSection, RegionFile, RelaySection, SelectionSection,
    TenantSection,
};

/// A region file as if read from `regions/<id>.toml`.
pub fn region(id: &str, countries: &[&str]) -> (PathBuf, RegionFile) {
    (
        PathBuf::from(format!("regions/{id}.toml")),
        RegionFile {
            id: id.to_owned(),
            name: format!("Region {id}"),
            legal_basis: "test".to_owned(),
            countries: countries.iter().map(|c| (*c).to_owned()).collect(),
            all_countries: false,
        },
    )
}

/// A region of every country.
pub fn global_region() -> (PathBuf, RegionFile) {
    let (path, mut file) = region("global", &[]);
    file.all_countries = true;
    (path, file)
}

/// A relay with room for 100 participants and 1 Gbit/s; `n` picks a unique address.
pub fn relay(id: &str, country: &str, latitude: f64, longitude: f64, n: u16) -> RelaySection {
    RelaySection {
        id: id.to_owned(),
        country: country.to_owned(),
        latitude,
        longitude,
        quic_addr: format!("127.0.1.{}:{}", 1 + n % 250, 4433 + n / 250),
        webtransport_url: None,
        websocket_addr: None,
        websocket_url: None,
        websocket_tls_cert: None,
        websocket_tls_key: None,
        city: None,
        http_addr: None,
        tls_cert: None,
        tls_key: None,
        max_participants: 100,
        max_bitrate_bps: 1_000_000_000,
        credential_sha256: None,
        workers: None,
    }
}

/// A config with one free and one paid plan and no tenants.
pub fn config(default_jurisdiction: &str, relays: Vec<RelaySection>) -> ConfigFile {
    ConfigFile {
        regions_dir: None,
        default_jurisdiction: default_jurisdiction.to_owned(),
        default_relay: BTreeMap::new(),
        ticket_keys: BTreeMap::new(),
        selection: SelectionSection::default(),
        geoip: GeoIpSection::default(),
        relays,
        plans: vec![
            PlanSection {
                id: "free".to_owned(),
                jurisdictions: vec![],
                default: None,
                allow_no_passcode: false,
                waiting_room: false,
                e2ee: Default::default(),
            },
            PlanSection {
                id: "paid".to_owned(),
                jurisdictions: vec![default_jurisdiction.to_owned()],
                default: None,
                allow_no_passcode: false,
                waiting_room: false,
                e2ee: Default::default(),
            },
        ],
        tenants: vec![TenantSection {
            id: "t1".to_owned(),
            plan: "paid".to_owned(),
            api_key_sha256: "00".repeat(32),
            waiting_room: None,
        }],
        routers: vec![],
        logging: Default::default(),
        limits: Default::default(),
        retention: Default::default(),
        acme: None,
    }
}

/// Builds the policy, panicking with every problem if it is invalid.
pub fn build(config: ConfigFile, regions: Vec<(PathBuf, RegionFile)>) -> Policy {
    Policy::from_files(Path::new("config/test.toml"), config, regions)
        .unwrap_or_else(|e| panic!("{e}"))
}

/// The repository root (for shipped files).
pub fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// `config/dev.toml` with its regions directory and the files it names
/// (`signing_key`, `tls_cert`, `tls_key`, `tls_ca`: every `= "dev-…"`)
/// made absolute, so that a copy written anywhere still finds them.
pub fn dev_config_text() -> String {
    let repo = repo();
    std::fs::read_to_string(repo.join("config/dev.toml"))
        .unwrap()
        .replace(
            "regions_dir = \"../regions\"",
            &format!("regions_dir = \"{}\"", repo.join("regions").display()),
        )
        .replace(
            "= \"dev-",
            &format!("= \"{}/dev-", repo.join("config").display()),
        )
}

/// A MaxMind DB holding `records` (network, JSON record), written with
/// `mmdb-writer` and read back by the production reader in the tests.
pub fn mmdb(
    database_type: &str,
    ipv4_only: bool,
    records: &[(&str, serde_json::Value)],
) -> Vec<u8> {
    let mut writer = if ipv4_only {
        mmdb_writer::Writer::builder(database_type)
            .ip_version(mmdb_writer::IpVersion::V4)
            .build()
    } else {
        mmdb_writer::Writer::new(database_type)
    };
    for (net, record) in records {
        let net: ipnet::IpNet = net.parse().expect("test network");
        writer
            .insert(net, record)
            .expect("insert into test database");
    }
    writer.to_bytes().expect("serialize test database")
}

/// A GeoIP2/GeoLite2 City-shaped record (DB-IP Lite City has the same shape).
pub fn city_record(iso: &str, latitude: f64, longitude: f64) -> serde_json::Value {
    serde_json::json!({
        "city": { "geoname_id": 1, "names": { "en": "Somewhere", "de": "Irgendwo" } },
        "continent": { "code": "EU", "geoname_id": 6255148, "names": { "en": "Europe" } },
        "country": { "geoname_id": 2, "iso_code": iso, "names": { "en": "Country" } },
        "location": { "accuracy_radius": 20, "latitude": latitude, "longitude": longitude, "time_zone": "Europe/Berlin" },
        "registered_country": { "geoname_id": 2, "iso_code": iso, "names": { "en": "Country" } },
        "subdivisions": [ { "iso_code": "XX", "names": { "en": "Region" } } ]
    })
}

/// A GeoIP2/GeoLite2 Country-shaped record.
pub fn country_record(iso: &str) -> serde_json::Value {
    serde_json::json!({
        "continent": { "code": "EU", "names": { "en": "Europe" } },
        "country": { "iso_code": iso, "names": { "en": "Country" } },
        "registered_country": { "iso_code": iso, "names": { "en": "Country" } }
    })
}

/// A record of the `country_code`-only databases.
pub fn country_code_record(iso: &str) -> serde_json::Value {
    serde_json::json!({ "country_code": iso })
}

/// What /proc says of process `pid` (the relay's own parser).
pub fn proc_sample(pid: u32) -> residency_relay::process_metrics::Sample {
    let read = |f: &str| std::fs::read_to_string(format!("/proc/{pid}/{f}")).unwrap();
    residency_relay::process_metrics::parse(&read("stat"), &read("status"), 0).unwrap()
}

/// User + system CPU seconds of process `pid`, from /proc/PID/stat.
pub fn cpu_seconds(pid: u32) -> f64 {
    proc_sample(pid).cpu_seconds
}
