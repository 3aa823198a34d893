//! Hostile or mangled policy files never panic the loader: every input ends
//! in a policy or in a list of problems.

mod support;

use std::path::Path;

use proptest::prelude::*;
use residency_relay::policy::Policy;
use residency_relay::policy::files::{ConfigFile, RegionFile};

fn shipped(path: &str) -> String {
    std::fs::read_to_string(support::repo().join(path)).unwrap()
}

/// Parses and validates `config` against `region` (as regions/x.toml) and the shipped eu region.
fn load(config: &str, region: &str) {
    let mut regions = vec![(
        support::repo().join("regions/eu.toml"),
        toml::from_str::<RegionFile>(&shipped("regions/eu.toml")).unwrap(),
    )];
    if let Ok(r) = toml::from_str::<RegionFile>(region) {
        regions.push((Path::new("regions/x.toml").to_owned(), r));
    }
    if let Ok(c) = toml::from_str::<ConfigFile>(config) {
        // The outcome may be either; reaching it without a panic is the property.
        let _ = Policy::from_files(Path::new("config/fuzz.toml"), c, regions);
    }
}

#[derive(Debug, Clone)]
enum Edit {
    DeleteLine(usize),
    DuplicateLine(usize),
    ReplaceByte(usize, u8),
    InsertText(usize, String),
}

fn apply(text: &str, edits: &[Edit]) -> String {
    let mut lines: Vec<String> = text.lines().map(str::to_owned).collect();
    for e in edits {
        if lines.is_empty() {
            break;
        }
        match e {
            Edit::DeleteLine(i) => {
                lines.remove(i % lines.len());
            }
            Edit::DuplicateLine(i) => {
                let l = lines[i % lines.len()].clone();
                lines.insert(i % lines.len(), l);
            }
            Edit::ReplaceByte(i, b) => {
                let n = lines.len();
                let line = &mut lines[i % n];
                if !line.is_empty() {
                    let at = i % line.len();
                    if line.is_char_boundary(at) && line.is_char_boundary(at + 1) {
                        line.replace_range(at..at + 1, &char::from(*b).to_string());
                    }
                }
            }
            Edit::InsertText(i, t) => {
                let n = lines.len();
                lines.insert(i % n, t.clone());
            }
        }
    }
    lines.join("\n")
}

fn edit() -> impl Strategy<Value = Edit> {
    prop_oneof![
        any::<usize>().prop_map(Edit::DeleteLine),
        any::<usize>().prop_map(Edit::DuplicateLine),
        (any::<usize>(), 0x20u8..0x7f).prop_map(|(i, b)| Edit::ReplaceByte(i, b)),
        (
            any::<usize>(),
            prop::sample::select(vec![
                "max_participants = 0",
                "latitude = 1e308",
                "longitude = -inf",
                "country = \"XK\"",
                "cidr = \"0.0.0.0/0\"",
                "cidr = \"::/0\"",
                "[[relay]]",
                "[[plan]]",
                "[[tenant]]",
                "default_jurisdiction = \"\"",
                "quic_addr = \"[::1]:0\"",
                "jurisdictions = [\"eu\", \"eu\"]",
                "load_penalty_km = nan",
                "stickiness_km = -0.0",
                "[default_relay]",
                "eu = \"\"",
                "max_bitrate_bps = 9007199254740993",
                "all_countries = true",
                "countries = []",
            ])
        )
            .prop_map(|(i, t)| Edit::InsertText(i, t.to_owned())),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 1000, ..ProptestConfig::default() })]

    #[test]
    fn mangled_shipped_config_never_panics(
        config_edits in prop::collection::vec(edit(), 1..8),
        region_edits in prop::collection::vec(edit(), 0..4),
    ) {
        let config = apply(&shipped("config/dev.toml"), &config_edits);
        let region = apply(&shipped("regions/ch.toml"), &region_edits).replace("id = \"ch\"", "id = \"x\"");
        load(&config, &region);
    }

    #[test]
    fn arbitrary_text_never_panics(config in ".{0,400}", region in ".{0,200}") {
        load(&config, &region);
    }
}
