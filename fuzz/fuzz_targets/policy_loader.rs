//! Policy files: a config (before the first NUL byte) and a region file
//! (after it) through TOML, serde and validation, beside the shipped
//! regions. Every input ends in a policy or a list of problems.
#![no_main]

use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use libfuzzer_sys::fuzz_target;
use residency_relay::policy::Policy;
use residency_relay::policy::files::{ConfigFile, RegionFile};

fn shipped() -> &'static Vec<(PathBuf, RegionFile)> {
    static R: OnceLock<Vec<(PathBuf, RegionFile)>> = OnceLock::new();
    R.get_or_init(|| {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../regions");
        let mut out = Vec::new();
        for entry in std::fs::read_dir(&dir).expect("regions") {
            let path = entry.expect("entry").path();
            let text = std::fs::read_to_string(&path).expect("region");
            out.push((path, toml::from_str(&text).expect("shipped region")));
        }
        out
    })
}

fuzz_target!(|data: &[u8]| {
    let (config, region) = match data.iter().position(|b| *b == 0) {
        Some(i) => (&data[..i], &data[i + 1..]),
        None => (data, &[][..]),
    };
    let Ok(config) = std::str::from_utf8(config) else {
        return;
    };
    let mut regions = shipped().clone();
    if let Ok(r) = toml::from_str::<RegionFile>(&String::from_utf8_lossy(region)) {
        regions.push((PathBuf::from("regions/fuzz.toml"), r));
    }
    if let Ok(c) = toml::from_str::<ConfigFile>(config) {
        let _ = Policy::from_files(Path::new("config/fuzz.toml"), c, regions);
    }
});
