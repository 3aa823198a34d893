//! Property: whatever the inventory, loads, health, placement or client
//! location, selection never yields a relay outside the conference's
//! jurisdiction, and refuses only when no relay inside could take the client.

mod support;

use proptest::prelude::*;
use residency_relay::geo::CountryCode;
use residency_relay::geo::{GeoPoint, Location, Precision, Unlocated};
use residency_relay::policy::RelayIdx;
use residency_relay::select::{self, Evaluation, Health, RefusalReason, RelayState};
use support::{build, config, region, relay};

const POOL: [&str; 10] = ["DE", "FR", "IE", "US", "CA", "CH", "GB", "JP", "BR", "AU"];

#[derive(Debug, Clone)]
struct Case {
    relays: Vec<(usize, f64, f64, u32, u64)>,
    jurisdictions: Vec<Vec<usize>>,
    states: Vec<(u8, u32, u64)>,
    hosting: Vec<usize>,
    client: Option<(f64, f64)>,
    /// States reported for only the first n relays (the rest: no state).
    reported: Option<usize>,
    load_penalty_km: f64,
    stickiness_km: f64,
    default_relay: Option<usize>,
}

fn case() -> impl Strategy<Value = Case> {
    let relay = (
        0..POOL.len(),
        -90.0..90.0f64,
        -180.0..180.0f64,
        1..50u32,
        1..1_000_000u64,
    );
    (
        prop::collection::vec(relay, 0..24),
        prop::collection::vec(prop::collection::vec(0..POOL.len(), 1..5), 1..6),
        prop::collection::vec((0..3u8, 0..60u32, 0..1_200_000u64), 24),
        prop::collection::vec(0..24usize, 0..4),
        prop::option::of((-90.0..90.0f64, -180.0..180.0f64)),
        0.0..5000.0f64,
        0.0..5000.0f64,
        prop::option::of(0..24usize),
        prop::option::weighted(0.2, 0..24usize),
    )
        .prop_map(
            |(
                relays,
                jurisdictions,
                states,
                hosting,
                client,
                load_penalty_km,
                stickiness_km,
                default_relay,
                reported,
            )| Case {
                relays,
                jurisdictions,
                states,
                hosting,
                client,
                load_penalty_km,
                stickiness_km,
                default_relay,
                reported,
            },
        )
}

fn health(h: u8) -> Health {
    match h {
        0 => Health::Healthy,
        1 => Health::Unhealthy,
        _ => Health::Draining,
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 2000, ..ProptestConfig::default() })]

    #[test]
    fn never_selects_a_relay_outside_the_jurisdiction(c in case()) {
        let relays = c
            .relays
            .iter()
            .enumerate()
            .map(|(i, (country, lat, lon, max_p, max_b))| {
                let mut r = relay(&format!("r{i:02}"), POOL[*country], *lat, *lon, i as u16);
                r.max_participants = *max_p;
                r.max_bitrate_bps = *max_b;
                r
            })
            .collect();
        // "all" holds every pool country so every relay is in some jurisdiction.
        let mut regions = vec![region("all", &POOL)];
        for (k, members) in c.jurisdictions.iter().enumerate() {
            let mut codes: Vec<&str> = members.iter().map(|m| POOL[*m]).collect();
            codes.sort_unstable();
            codes.dedup();
            regions.push(region(&format!("j{k}"), &codes));
        }
        let mut cfg = config("all", relays);
        cfg.selection.load_penalty_km = c.load_penalty_km;
        cfg.selection.stickiness_km = c.stickiness_km;
        // A default relay for the first jurisdiction, when one of its relays was drawn.
        if let Some(d) = c.default_relay.filter(|d| *d < c.relays.len()) {
            if c.jurisdictions[0].contains(&c.relays[d].0) {
                cfg.default_relay.insert("j0".into(), format!("r{d:02}"));
            }
        }
        let policy = build(cfg, regions);
        // Relay ids r00.. sort like their draw order, so RelayIdx(i) is relay i.
        let reported = c.reported.unwrap_or(c.relays.len()).min(c.relays.len());
        let states: Vec<RelayState> = c.states[..reported].iter().map(|(h, p, b)| RelayState {
            health: health(*h),
            participants: *p,
            bitrate_bps: *b,
        }).collect();
        for (i, r) in policy.relays().iter().enumerate() {
            prop_assert_eq!(&r.id, &format!("r{i:02}"));
        }
        let hosting: Vec<RelayIdx> = c
            .hosting
            .iter()
            .filter_map(|h| policy.relays().get(*h).and_then(|r| policy.relay_idx(&r.id)))
            .collect();
        let client = match c.client {
            Some((lat, lon)) => Location::Known {
                country: CountryCode::parse("FR").unwrap(),
                point: GeoPoint::new(lat, lon).unwrap(),
                precision: Precision::Coordinates,
                from_override: false,
            },
            None => Location::Unknown(Unlocated::NotInDatabase),
        };

        let mut scratch = Evaluation::default();
        for j in policy.jurisdictions() {
            let jidx = policy.jurisdiction_idx(&j.id).unwrap();
            // Membership and usability from the generated case itself, not
            // from the policy the code under test built.
            let members: Vec<usize> = match j.id.strip_prefix('j') {
                Some(k) => c.jurisdictions[k.parse::<usize>().unwrap()].clone(),
                None => (0..POOL.len()).collect(),
            };
            let inside = |r: RelayIdx| members.contains(&c.relays[r.index()].0);
            let usable = |r: RelayIdx| {
                let (_, _, _, max_p, max_b) = c.relays[r.index()];
                states.get(r.index()).is_some_and(|s| {
                    s.health == Health::Healthy && s.participants < max_p && s.bitrate_bps < max_b
                })
            };
            let result = select::select(&policy, jidx, &client, &states, &hosting);
            let evaluation = match &result {
                Ok(d) => &d.evaluation,
                Err(r) => &r.evaluation,
            };
            // Everything looked at is inside, and candidates plus exclusions
            // are exactly the relays inside.
            let mut seen: Vec<RelayIdx> = evaluation.candidates.iter().map(|c| c.relay)
                .chain(evaluation.excluded.iter().map(|e| e.relay)).collect();
            seen.sort_unstable();
            let expected: Vec<RelayIdx> = (0..policy.relays().len())
                .map(|i| policy.relay_idx(&policy.relays()[i].id).unwrap())
                .filter(|r| inside(*r))
                .collect();
            prop_assert_eq!(&seen, &expected);
            prop_assert!(evaluation.candidates.iter().all(|c| usable(c.relay)));
            prop_assert!(evaluation.excluded.iter().all(|e| !usable(e.relay)));
            // Ranked by score, then hosting first, then relay id.
            let in_rank_order = evaluation.candidates.windows(2).all(|w| {
                (w[0].score, !w[0].hosting, w[0].relay) < (w[1].score, !w[1].hosting, w[1].relay)
            });
            prop_assert!(in_rank_order);
            match &result {
                Ok(d) => {
                    prop_assert!(inside(d.relay), "chose {} outside {}", policy.relay(d.relay).id, j.id);
                    prop_assert!(usable(d.relay));
                    prop_assert_eq!(d.relay, evaluation.candidates[0].relay);
                }
                Err(r) => {
                    prop_assert!(!expected.iter().any(|r| usable(*r)));
                    let want = if expected.is_empty() {
                        RefusalReason::NoRelayInJurisdiction
                    } else if expected
                        .iter()
                        .any(|r| states.get(r.index()).is_some_and(|s| s.health == Health::Healthy))
                    {
                        RefusalReason::AtCapacity
                    } else {
                        RefusalReason::NoHealthyRelay
                    };
                    prop_assert_eq!(r.reason, want);
                }
            }
            // The allocation-free path agrees.
            select::evaluate(&policy, jidx, &client, &states, &hosting, &mut scratch);
            prop_assert_eq!(scratch.best(), evaluation.candidates.first());
            scratch.rank();
            prop_assert_eq!(&scratch.candidates, &evaluation.candidates);
        }
    }
}
