//! Hostile or mangled policy files never panic the loader: every input ends
//! in a policy or in a list of problems.
//!
//! Two kinds of damage: values changed inside otherwise well-formed files
//! (these reach validation, which is the point), and raw text mangling (which
//! mostly exercises the TOML and serde layers).

mod support;

use std::cell::Cell;
use std::path::Path;

use proptest::prelude::*;
use proptest::test_runner::TestRunner;
use residency_relay::policy::files::{ConfigFile, RegionFile};
use residency_relay::policy::{self, Policy};
use toml::Value;

fn shipped(path: &str) -> String {
    std::fs::read_to_string(support::repo().join(path)).unwrap()
}

/// A change to one value of a parsed TOML document.
#[derive(Debug, Clone)]
enum Mutation {
    /// Replace the n-th leaf with a hostile value of the same type (or, when
    /// `any_type`, of any type).
    Replace {
        leaf: usize,
        pick: usize,
        any_type: bool,
    },
    /// Remove the n-th leaf's key or array element.
    Remove { leaf: usize },
    /// Duplicate an element of the n-th array of tables (a second relay,
    /// plan or tenant with the same id, …).
    Duplicate { array: usize },
}

fn mutation() -> impl Strategy<Value = Mutation> {
    prop_oneof![
        6 => (any::<usize>(), any::<usize>(), prop::bool::weighted(0.1))
            .prop_map(|(leaf, pick, any_type)| Mutation::Replace { leaf, pick, any_type }),
        2 => any::<usize>().prop_map(|leaf| Mutation::Remove { leaf }),
        1 => any::<usize>().prop_map(|array| Mutation::Duplicate { array }),
    ]
}

const STRINGS: &[&str] = &[
    "",
    "XX",
    "UK",
    "eu",
    "EU",
    "de",
    "global",
    "mars",
    "de-fra-1",
    "127.0.0.1:0",
    "[::1]:4433",
    "localhost:1",
    "0.0.0.0/0",
    "::/0",
    "::ffff:10.0.0.0/104",
    "10.0.0.1/8",
    "https://",
    "http://x/",
    "free",
    "business",
    "acme",
    "ZZ",
    "ｄｅ",
    "../../../etc/passwd",
];
const INTEGERS: &[i64] = &[
    0,
    1,
    -1,
    9_007_199_254_740_993,
    i64::MAX,
    i64::MIN,
    4_294_967_296,
];
const FLOATS: &[f64] = &[
    f64::NAN,
    f64::INFINITY,
    -0.0,
    1e308,
    90.0,
    -180.0,
    180.0001,
    -1.0,
];

fn hostile(original: &Value, pick: usize, any_type: bool) -> Value {
    let kind = if any_type { pick % 4 } else { usize::MAX };
    match (original, kind) {
        (Value::String(_), usize::MAX) | (_, 0) => {
            Value::String(STRINGS[pick % STRINGS.len()].to_owned())
        }
        (Value::Integer(_), usize::MAX) | (_, 1) => Value::Integer(INTEGERS[pick % INTEGERS.len()]),
        (Value::Float(_), usize::MAX) | (_, 2) => Value::Float(FLOATS[pick % FLOATS.len()]),
        (Value::Boolean(b), usize::MAX) => Value::Boolean(!b),
        _ => Value::Array(vec![]),
    }
}

/// Paths to every leaf (non-table, non-array value).
fn leaves(value: &Value, path: &mut Vec<PathStep>, out: &mut Vec<Vec<PathStep>>) {
    match value {
        Value::Table(t) => {
            for (k, v) in t {
                path.push(PathStep::Key(k.clone()));
                leaves(v, path, out);
                path.pop();
            }
        }
        Value::Array(a) => {
            for (i, v) in a.iter().enumerate() {
                path.push(PathStep::Index(i));
                leaves(v, path, out);
                path.pop();
            }
        }
        _ => out.push(path.clone()),
    }
}

/// Paths to every array whose elements are tables.
fn table_arrays(value: &Value, path: &mut Vec<PathStep>, out: &mut Vec<Vec<PathStep>>) {
    if let Value::Table(t) = value {
        for (k, v) in t {
            path.push(PathStep::Key(k.clone()));
            if let Value::Array(a) = v {
                if a.first().is_some_and(Value::is_table) {
                    out.push(path.clone());
                }
            }
            table_arrays(v, path, out);
            path.pop();
        }
    }
}

#[derive(Debug, Clone)]
enum PathStep {
    Key(String),
    Index(usize),
}

fn get_mut<'a>(mut value: &'a mut Value, path: &[PathStep]) -> Option<&'a mut Value> {
    for step in path {
        value = match (step, value) {
            (PathStep::Key(k), Value::Table(t)) => t.get_mut(k)?,
            (PathStep::Index(i), Value::Array(a)) => a.get_mut(*i)?,
            _ => return None,
        };
    }
    Some(value)
}

fn mutate(text: &str, mutations: &[Mutation]) -> String {
    let mut doc: Value = Value::Table(toml::from_str(text).unwrap());
    for m in mutations {
        let mut all = Vec::new();
        leaves(&doc, &mut Vec::new(), &mut all);
        match m {
            Mutation::Replace {
                leaf,
                pick,
                any_type,
            } if !all.is_empty() => {
                let path = &all[leaf % all.len()];
                if let Some(v) = get_mut(&mut doc, path) {
                    *v = hostile(v, *pick, *any_type);
                }
            }
            Mutation::Remove { leaf } if !all.is_empty() => {
                let path = &all[leaf % all.len()];
                let (last, parent) = path.split_last().unwrap();
                match (get_mut(&mut doc, parent), last) {
                    (Some(Value::Table(t)), PathStep::Key(k)) => {
                        t.remove(k);
                    }
                    (Some(Value::Array(a)), PathStep::Index(i)) => {
                        a.remove(*i);
                    }
                    _ => {}
                }
            }
            Mutation::Duplicate { array } => {
                let mut arrays = Vec::new();
                table_arrays(&doc, &mut Vec::new(), &mut arrays);
                if !arrays.is_empty() {
                    if let Some(Value::Array(a)) = get_mut(&mut doc, &arrays[array % arrays.len()])
                    {
                        let copy = a[*array % a.len()].clone();
                        a.push(copy);
                    }
                }
            }
            _ => {}
        }
    }
    toml::to_string(&doc).unwrap_or_default()
}

/// Parses and validates `config` against the shipped eu region and `region`
/// (as regions/x.toml). Returns whether the config parsed, i.e. reached validation.
fn validate(config: &str, region: &str) -> bool {
    let mut regions = vec![(
        support::repo().join("regions/eu.toml"),
        toml::from_str::<RegionFile>(&shipped("regions/eu.toml")).unwrap(),
    )];
    if let Ok(r) = toml::from_str::<RegionFile>(region) {
        regions.push((Path::new("regions/x.toml").to_owned(), r));
    }
    match toml::from_str::<ConfigFile>(config) {
        Ok(c) => {
            // Either outcome is fine; reaching it without a panic is the property.
            let _ = Policy::from_files(Path::new("config/fuzz.toml"), c, regions);
            true
        }
        Err(_) => false,
    }
}

#[test]
fn mutated_values_reach_validation_and_never_panic() {
    let mut runner = TestRunner::new(ProptestConfig {
        cases: 1500,
        failure_persistence: None,
        ..ProptestConfig::default()
    });
    let reached = Cell::new(0u32);
    let config_text = shipped("config/dev.toml");
    let region_text = shipped("regions/ch.toml").replace("id = \"ch\"", "id = \"x\"");
    runner
        .run(
            &(
                prop::collection::vec(mutation(), 1..5),
                prop::collection::vec(mutation(), 0..3),
            ),
            |(config_mutations, region_mutations)| {
                let config = mutate(&config_text, &config_mutations);
                let region = mutate(&region_text, &region_mutations);
                if validate(&config, &region) {
                    reached.set(reached.get() + 1);
                }
                Ok(())
            },
        )
        .unwrap();
    assert!(
        reached.get() > 750,
        "only {} of 1500 mutated configs reached validation",
        reached.get()
    );
}

/// Mutated copies of the shipped files, written to disk and loaded the way
/// the commands load them.
#[test]
fn mutated_files_on_disk_load_or_list_problems() {
    let dir = tempfile::tempdir().unwrap();
    let regions = dir.path().join("regions");
    std::fs::create_dir(&regions).unwrap();
    std::fs::create_dir(dir.path().join("config")).unwrap();
    for id in ["eu", "de", "ch", "uk", "us", "ca", "global"] {
        std::fs::copy(
            support::repo().join(format!("regions/{id}.toml")),
            regions.join(format!("{id}.toml")),
        )
        .unwrap();
    }
    let config = dir.path().join("config/dev.toml");
    // The files the config names: the ticket key, and the development
    // certificate the relays' WebSocket listeners serve.
    for file in ["dev-ticket.key", "dev-router.crt", "dev-router.key"] {
        std::fs::copy(
            support::repo().join("config").join(file),
            dir.path().join("config").join(file),
        )
        .unwrap();
    }
    let config_text = shipped("config/dev.toml");
    let region_text = shipped("regions/ch.toml");
    let mut runner = TestRunner::new(ProptestConfig {
        cases: 300,
        failure_persistence: None,
        ..ProptestConfig::default()
    });
    let loaded = Cell::new(0u32);
    let refused = Cell::new(0u32);
    runner
        .run(
            &(
                prop::collection::vec(mutation(), 0..3),
                prop::collection::vec(mutation(), 0..2),
            ),
            |(config_mutations, region_mutations)| {
                std::fs::write(&config, mutate(&config_text, &config_mutations)).unwrap();
                std::fs::write(
                    regions.join("ch.toml"),
                    mutate(&region_text, &region_mutations),
                )
                .unwrap();
                match policy::load(&config) {
                    Ok(_) => loaded.set(loaded.get() + 1),
                    Err(e) => {
                        prop_assert!(!e.problems.is_empty());
                        refused.set(refused.get() + 1);
                    }
                }
                Ok(())
            },
        )
        .unwrap();
    // Both outcomes were exercised.
    assert!(
        loaded.get() > 20 && refused.get() > 20,
        "loaded {} refused {}",
        loaded.get(),
        refused.get()
    );
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 500, ..ProptestConfig::default() })]

    #[test]
    fn arbitrary_text_never_panics(config in ".{0,400}", region in ".{0,200}") {
        validate(&config, &region);
    }

    #[test]
    fn mangled_text_never_panics(
        cut in any::<usize>(),
        splice in prop::sample::select(vec!["[[relay]]\n", "]]", "=", "\"", "\n[geoip]\n", "{", "\u{0}", "é"]),
    ) {
        let text = shipped("config/dev.toml");
        let mut at = cut % text.len();
        while !text.is_char_boundary(at) {
            at -= 1;
        }
        validate(&format!("{}{splice}{}", &text[..at], &text[at..]), "");
    }
}
