//! A routing decision (GeoIP lookup + selection into a reused Evaluation)
//! allocates nothing once the buffers have grown.

#[path = "support/counting_alloc.rs"]
mod counting_alloc;
mod support;

use counting_alloc::{Counting, allocations};
use residency_relay::geo::{Database, GeoIp, Overrides};
use residency_relay::select::{self, Evaluation, RelayState};
use support::{build, city_record, config, country_code_record, mmdb, region, relay};

#[global_allocator]
static GLOBAL: Counting = Counting;

#[test]
fn steady_state_decisions_do_not_allocate() {
    let relays = (0..50)
        .map(|i| {
            relay(
                &format!("r{i:02}"),
                if i % 2 == 0 { "DE" } else { "FR" },
                45.0 + f64::from(i) * 0.1,
                5.0,
                i,
            )
        })
        .collect();
    let policy = build(config("eu", relays), vec![region("eu", &["DE", "FR"])]);
    let bytes = mmdb(
        "GeoLite2-City",
        false,
        &[
            ("192.0.2.0/24", city_record("DE", 52.5, 13.4)),
            ("2001:db8::/32", country_code_record("FR")),
        ],
    );
    let db = Database::from_bytes("mem.mmdb".into(), bytes).unwrap();
    let geo = GeoIp::new(Overrides::default(), Some(db));
    let states = vec![RelayState::IDLE; policy.relays().len()];
    let eu = policy.jurisdiction_idx("eu").unwrap();
    let hosting = [policy.relay_idx("r03").unwrap()];
    let clients = [
        "192.0.2.7".parse().unwrap(),
        "2001:db8::9".parse().unwrap(),
        "198.51.100.1".parse().unwrap(),
    ];
    let mut scratch = Evaluation::default();
    // Warm up: the buffers grow to the jurisdiction's size.
    for ip in clients {
        select::evaluate(
            &policy,
            eu,
            &geo.locate(ip),
            &states,
            &hosting,
            &mut scratch,
        );
    }
    let before = allocations();
    let mut chosen = 0;
    for round in 0..1000 {
        let location = geo.locate(clients[round % clients.len()]);
        select::evaluate(&policy, eu, &location, &states, &hosting, &mut scratch);
        chosen += usize::from(scratch.outcome().is_ok());
    }
    let after = allocations();
    assert_eq!(chosen, 1000);
    assert_eq!(
        after - before,
        0,
        "{} allocations in 1000 decisions",
        after - before
    );
}
