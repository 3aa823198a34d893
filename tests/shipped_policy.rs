//! The shipped region files and configs are what they claim to be.

mod support;

use std::collections::BTreeSet;

use residency_relay::geo::CountryCode;
use residency_relay::policy;

fn load(config: &str) -> residency_relay::policy::Policy {
    policy::load(&support::repo().join(config)).unwrap_or_else(|e| panic!("{e}"))
}

fn members(policy: &residency_relay::policy::Policy, id: &str) -> BTreeSet<String> {
    let j = policy.jurisdiction(policy.jurisdiction_idx(id).unwrap());
    j.countries.iter().map(|c| c.to_string()).collect()
}

#[test]
fn eu_is_the_eu27_with_its_territories_plus_the_eea() {
    let policy = load("config/dev.toml");
    let expected: BTreeSet<String> = keshvar::CountryIterator::new()
        .filter(|c| c.eu_member() || c.eea_member())
        .map(|c| c.alpha2().to_string())
        .collect();
    // EU27 + IS, LI, NO + the seven EU territories with their own ISO codes.
    assert_eq!(expected.len(), 37);
    for territory in ["AX", "GF", "GP", "MF", "MQ", "RE", "YT"] {
        assert!(expected.contains(territory));
    }
    assert_eq!(members(&policy, "eu"), expected);
    for efta_only in ["IS", "LI", "NO"] {
        assert!(expected.contains(efta_only));
    }
    assert!(!expected.contains("CH") && !expected.contains("GB"));
}

#[test]
fn shipped_jurisdictions() {
    let policy = load("config/dev.toml");
    let ids: Vec<&str> = policy
        .jurisdictions()
        .iter()
        .map(|j| j.id.as_str())
        .collect();
    assert_eq!(ids, ["ca", "ch", "de", "eu", "global", "uk", "us"]);
    let single =
        |id: &str, code: &str| assert_eq!(members(&policy, id), BTreeSet::from([code.to_owned()]));
    single("de", "DE");
    single("ch", "CH");
    single("uk", "GB");
    single("us", "US");
    single("ca", "CA");
    let all: BTreeSet<String> = CountryCode::all().map(|c| c.to_string()).collect();
    assert_eq!(members(&policy, "global"), all);
    for j in policy.jurisdictions() {
        assert!(!j.legal_basis.is_empty() && !j.name.is_empty());
    }
}

#[test]
fn dev_config_has_what_the_tests_and_demo_rely_on() {
    let policy = load("config/dev.toml");
    let relay_country = |id: &str| {
        policy
            .relay(policy.relay_idx(id).unwrap())
            .country
            .to_string()
    };
    assert_eq!(relay_country("de-fra-1"), "DE");
    assert_eq!(relay_country("ie-dub-1"), "IE");
    assert_eq!(relay_country("us-nyc-1"), "US");
    assert_eq!(relay_country("ch-zrh-1"), "CH");
    for r in policy.relays() {
        assert!(
            r.quic_addr.ip().is_loopback(),
            "{} is not on loopback",
            r.id
        );
    }
    for (ip, country) in [
        ("127.0.0.2", "DE"),
        ("127.0.0.3", "US"),
        ("127.0.0.4", "IE"),
        ("127.0.0.5", "CH"),
    ] {
        let located = policy
            .geoip()
            .locate(ip.parse().unwrap())
            .country()
            .map(|c| c.to_string());
        assert_eq!(located.as_deref(), Some(country), "{ip}");
    }
    assert!(policy.plans().iter().any(|p| p.may_choose()));
    assert!(policy.plans().iter().any(|p| !p.may_choose()));
    assert_eq!(policy.tenants().len(), 2);
}

#[test]
fn production_example_loads() {
    let policy = load("config/production.example.toml");
    assert!(policy.relays().len() >= 8);
    assert!(
        policy
            .relays()
            .iter()
            .all(|r| !r.quic_addr.ip().is_loopback())
    );
}
