//! Routing decisions per second: GeoIP lookup, relay selection, and both.
//!
//! Inventory: 1,000 relays in 10 jurisdictions of 100 relays each, plus
//! `global` holding all 1,000. GeoIP: the real country database in
//! `../shared/geoip/` when present (else a generated one of 65,536 networks).
//!
//! Baseline: a textbook selection written the obvious way (haversine with
//! libm trigonometry on degrees, a fresh `Vec` of candidates, full sort),
//! measured side by side; the summary prints medians and the ratio.
//!
//! Run: `cargo bench --bench route`

#[path = "../tests/support/mod.rs"]
mod support;

use std::hint::black_box;
use std::net::{IpAddr, Ipv4Addr};
use std::path::{Path, PathBuf};

use criterion::Criterion;
use residency_relay::geo::CountryCode;
use residency_relay::geo::{Database, GeoIp, Location, Overrides};
use residency_relay::policy::files::RegionFile;
use residency_relay::policy::{JurisdictionIdx, Policy};
use residency_relay::select::{self, Evaluation, Health, RelayState};

const REAL_DB: &str = "../shared/geoip/geo-whois-asn-country.mmdb";
const JURISDICTIONS: usize = 10;
const RELAYS_EACH: usize = 100;
const CLIENTS: usize = 4096;

/// Deterministic xorshift, so every run measures the same inputs.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }

    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }

    fn unit(&mut self) -> f64 {
        (self.next() >> 11) as f64 / (1u64 << 53) as f64
    }
}

struct Bench {
    policy: Policy,
    geo: GeoIp,
    geo_source: String,
    states: Vec<RelayState>,
    clients: Vec<IpAddr>,
    located: Vec<Location>,
    jurisdictions: Vec<JurisdictionIdx>,
    global: JurisdictionIdx,
}

fn setup() -> Bench {
    let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
    let countries: Vec<CountryCode> = CountryCode::all().collect();
    let groups: Vec<Vec<CountryCode>> = countries
        .chunks(countries.len().div_ceil(JURISDICTIONS))
        .map(<[CountryCode]>::to_vec)
        .collect();
    assert_eq!(groups.len(), JURISDICTIONS);

    let mut regions: Vec<(PathBuf, RegionFile)> = Vec::new();
    let mut relays = Vec::new();
    for (g, members) in groups.iter().enumerate() {
        let codes: Vec<String> = members.iter().map(|c| c.to_string()).collect();
        let code_refs: Vec<&str> = codes.iter().map(String::as_str).collect();
        regions.push(support::region(&format!("j{g}"), &code_refs));
        for r in 0..RELAYS_EACH {
            let country = members[rng.below(members.len())];
            let c = country.centroid();
            let lat = (c.latitude() + rng.unit() * 4.0 - 2.0).clamp(-89.0, 89.0);
            let lon = (c.longitude() + rng.unit() * 4.0 - 2.0).clamp(-179.0, 179.0);
            let n = (g * RELAYS_EACH + r) as u16;
            let mut relay = support::relay(&format!("j{g}-r{r:03}"), country.as_str(), lat, lon, n);
            relay.max_participants = 1000;
            relays.push(relay);
        }
    }
    regions.push(support::global_region());
    let policy = support::build(support::config("global", relays), regions);
    assert_eq!(policy.relays().len(), JURISDICTIONS * RELAYS_EACH);

    let (geo, geo_source) = geoip(&mut rng);
    // Loads between 0 and 80 %, 2 % of relays unhealthy.
    let states: Vec<RelayState> = (0..policy.relays().len())
        .map(|_| RelayState {
            health: if rng.below(50) == 0 {
                Health::Unhealthy
            } else {
                Health::Healthy
            },
            participants: rng.below(800) as u32,
            bitrate_bps: rng.below(800_000_000) as u64,
        })
        .collect();
    let clients: Vec<IpAddr> = (0..CLIENTS)
        .map(|_| IpAddr::V4(Ipv4Addr::from(rng.next() as u32 | 0x0100_0000)))
        .collect();
    let located = clients.iter().map(|ip| geo.locate(*ip)).collect();
    let jurisdictions = (0..JURISDICTIONS)
        .map(|g| policy.jurisdiction_idx(&format!("j{g}")).unwrap())
        .collect();
    let global = policy.jurisdiction_idx("global").unwrap();
    Bench {
        policy,
        geo,
        geo_source,
        states,
        clients,
        located,
        jurisdictions,
        global,
    }
}

fn geoip(rng: &mut Rng) -> (GeoIp, String) {
    if Path::new(REAL_DB).exists() {
        let db = Database::open(Path::new(REAL_DB)).expect("open the shared database");
        return (
            GeoIp::new(Overrides::default(), Some(db)),
            format!("{REAL_DB} (real)"),
        );
    }
    let codes: Vec<CountryCode> = CountryCode::all().collect();
    let records: Vec<(String, serde_json::Value)> = (0..65_536u32)
        .map(|i| {
            let net = format!("{}.{}.0.0/16", i >> 8, i & 0xff);
            (
                net,
                support::country_code_record(codes[rng.below(codes.len())].as_str()),
            )
        })
        .collect();
    let refs: Vec<(&str, serde_json::Value)> = records
        .iter()
        .map(|(n, r)| (n.as_str(), r.clone()))
        .collect();
    let bytes = support::mmdb("generated-country", false, &refs);
    let db = Database::from_bytes(PathBuf::from("generated.mmdb"), bytes).unwrap();
    (
        GeoIp::new(Overrides::default(), Some(db)),
        "generated database, 65,536 /16 networks".to_owned(),
    )
}

/// The obvious way to write selection, as the named baseline.
fn baseline_select(b: &Bench, j: JurisdictionIdx, client: &Location) -> Option<usize> {
    let (lat, lon) = client
        .point()
        .or(b.policy.jurisdiction(j).centre)
        .map(|p| (p.latitude(), p.longitude()))?;
    let params = b.policy.selection();
    let mut candidates: Vec<(usize, f64)> = Vec::new();
    for r in b.policy.jurisdiction(j).relays() {
        let relay = b.policy.relay(r);
        let s = b.states[r.index()];
        if s.health != Health::Healthy
            || s.participants >= relay.max_participants
            || s.bitrate_bps >= relay.max_bitrate_bps
        {
            continue;
        }
        let (la1, lo1) = (lat.to_radians(), lon.to_radians());
        let (la2, lo2) = (
            relay.position.latitude().to_radians(),
            relay.position.longitude().to_radians(),
        );
        let h = ((la2 - la1) / 2.0).sin().powi(2)
            + la1.cos() * la2.cos() * ((lo2 - lo1) / 2.0).sin().powi(2);
        let km = 2.0 * 6371.0088 * h.sqrt().asin();
        let load = (f64::from(s.participants) / f64::from(relay.max_participants))
            .max(s.bitrate_bps as f64 / relay.max_bitrate_bps as f64);
        candidates.push((r.index(), km + params.load_penalty_km * load));
    }
    candidates.sort_by(|a, b| a.1.total_cmp(&b.1).then(a.0.cmp(&b.0)));
    candidates.first().map(|c| c.0)
}

fn benches(c: &mut Criterion, b: &Bench) {
    let n = b.clients.len();
    let mut i = 0usize;
    let mut next = move || {
        i = (i + 1) % n;
        i
    };
    c.bench_function("geoip_lookup", |bench| {
        bench.iter(|| {
            let k = next();
            black_box(b.geo.locate(black_box(b.clients[k])))
        })
    });
    let mut scratch = Evaluation::default();
    c.bench_function("select_100", |bench| {
        bench.iter(|| {
            let k = next();
            let j = b.jurisdictions[k % JURISDICTIONS];
            select::evaluate(&b.policy, j, &b.located[k], &b.states, &[], &mut scratch);
            black_box(scratch.outcome().ok())
        })
    });
    c.bench_function("select_100_ranked", |bench| {
        bench.iter(|| {
            let k = next();
            let j = b.jurisdictions[k % JURISDICTIONS];
            select::evaluate(&b.policy, j, &b.located[k], &b.states, &[], &mut scratch);
            scratch.rank();
            black_box(scratch.outcome().ok())
        })
    });
    c.bench_function("select_100_owned_result", |bench| {
        bench.iter(|| {
            let k = next();
            let j = b.jurisdictions[k % JURISDICTIONS];
            black_box(select::select(&b.policy, j, &b.located[k], &b.states, &[]).ok())
        })
    });
    c.bench_function("baseline_select_100", |bench| {
        bench.iter(|| {
            let k = next();
            let j = b.jurisdictions[k % JURISDICTIONS];
            black_box(baseline_select(b, j, &b.located[k]))
        })
    });
    c.bench_function("decision_100", |bench| {
        bench.iter(|| {
            let k = next();
            let j = b.jurisdictions[k % JURISDICTIONS];
            let location = b.geo.locate(black_box(b.clients[k]));
            select::evaluate(&b.policy, j, &location, &b.states, &[], &mut scratch);
            black_box(scratch.outcome().ok())
        })
    });
    c.bench_function("decision_100_ranked", |bench| {
        bench.iter(|| {
            let k = next();
            let j = b.jurisdictions[k % JURISDICTIONS];
            let location = b.geo.locate(black_box(b.clients[k]));
            select::evaluate(&b.policy, j, &location, &b.states, &[], &mut scratch);
            scratch.rank();
            black_box(scratch.outcome().ok())
        })
    });
    c.bench_function("decision_global_1000", |bench| {
        bench.iter(|| {
            let k = next();
            let location = b.geo.locate(black_box(b.clients[k]));
            select::evaluate(&b.policy, b.global, &location, &b.states, &[], &mut scratch);
            black_box(scratch.outcome().ok())
        })
    });
    c.bench_function("baseline_decision_global_1000", |bench| {
        bench.iter(|| {
            let k = next();
            let location = b.geo.locate(black_box(b.clients[k]));
            black_box(baseline_select(b, b.global, &location))
        })
    });
}

/// Median from criterion's saved estimates, in nanoseconds.
fn median_ns(name: &str) -> Option<f64> {
    let target = std::env::var("CARGO_TARGET_DIR").unwrap_or_else(|_| "target".to_owned());
    let path = Path::new(&target)
        .join("criterion")
        .join(name)
        .join("new/estimates.json");
    let json: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(path).ok()?).ok()?;
    json["median"]["point_estimate"].as_f64()
}

fn main() {
    let b = setup();
    let located = b.located.iter().filter(|l| l.country().is_some()).count();
    println!(
        "route bench: {} relays, {JURISDICTIONS} jurisdictions of {RELAYS_EACH} + global; GeoIP: {}; {located} of {CLIENTS} sample clients located",
        b.policy.relays().len(),
        b.geo_source
    );
    let mut criterion = Criterion::default().configure_from_args();
    benches(&mut criterion, &b);
    criterion.final_summary();

    println!("\nsummary (criterion medians):");
    for name in [
        "geoip_lookup",
        "select_100",
        "select_100_ranked",
        "select_100_owned_result",
        "baseline_select_100",
        "decision_100",
        "decision_100_ranked",
        "decision_global_1000",
        "baseline_decision_global_1000",
    ] {
        if let Some(ns) = median_ns(name) {
            println!("  {name:<32} {ns:>9.1} ns  {:>12.0} /s", 1e9 / ns);
        }
    }
    for (ours, baseline) in [
        ("select_100", "baseline_select_100"),
        ("decision_global_1000", "baseline_decision_global_1000"),
    ] {
        if let (Some(a), Some(z)) = (median_ns(ours), median_ns(baseline)) {
            println!("  {ours} is {:.2}x faster than {baseline}", z / a);
        }
    }
    if let Some(ns) = median_ns("decision_100") {
        let verdict = if ns <= 1000.0 { "meets" } else { "misses" };
        println!(
            "  decision_100: {:.0} complete decisions/s on one core ({verdict} the 1,000,000/s target)",
            1e9 / ns
        );
    }
}
