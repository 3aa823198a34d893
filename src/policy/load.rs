//! Reading and checking policy files: every problem is collected and reported
//! together, each naming the file, the field and what to do about it.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::fmt;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use ipnet::IpNet;

use super::files::{
    ConfigFile, GeoIpSection, LimitsSection, LoggingSection, PlanSection, RegionFile, RelaySection,
    RetentionSection, RouterSection, SelectionSection, TenantSection,
};
use super::{
    Jurisdiction, JurisdictionIdx, Member, Plan, Policy, Relay, RelayIdx, Router, SelectionParams,
    Tenant,
};
use crate::geo::{
    CountryCode, CountrySet, Database, GeoIp, GeoPoint, Override, Overrides, PointSet,
};

/// One thing wrong with the operator's files.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigProblem {
    pub file: PathBuf,
    /// Where in the file, e.g. `relay[2] "de-fra-1".country`.
    pub field: String,
    /// What is wrong and what to do.
    pub message: String,
}

impl fmt::Display for ConfigProblem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.field.is_empty() {
            write!(f, "{}: {}", self.file.display(), self.message)
        } else {
            write!(
                f,
                "{}: {}: {}",
                self.file.display(),
                self.field,
                self.message
            )
        }
    }
}

/// Every problem found while loading; the policy is unusable until all are fixed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError {
    pub problems: Vec<ConfigProblem>,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let n = self.problems.len();
        writeln!(
            f,
            "{n} problem{} in the policy files:",
            if n == 1 { "" } else { "s" }
        )?;
        for p in &self.problems {
            writeln!(f, "  - {p}")?;
        }
        Ok(())
    }
}

impl std::error::Error for ConfigError {}

/// Loads `config` and the region files of its `regions_dir`.
pub fn load(config: &Path) -> Result<Policy, ConfigError> {
    load_with_regions(config, None)
}

/// Loads `config`; `regions` (when given) replaces the config's `regions_dir`.
pub fn load_with_regions(config: &Path, regions: Option<&Path>) -> Result<Policy, ConfigError> {
    let mut problems = Problems::default();
    let text = std::fs::read_to_string(config).map_err(|e| {
        single(
            config,
            "",
            format!("cannot read the config file: {e}; check the --config path"),
        )
    })?;
    let base = config.parent().unwrap_or(Path::new("."));
    let parsed = toml::from_str::<ConfigFile>(&text);
    let regions_dir = match (regions, &parsed) {
        (Some(dir), _) => dir.to_owned(),
        (None, Ok(file)) => resolve(
            base,
            file.regions_dir
                .as_deref()
                .unwrap_or(Path::new(DEFAULT_REGIONS_DIR)),
        ),
        (None, Err(_)) => resolve(base, Path::new(DEFAULT_REGIONS_DIR)),
    };
    let region_files = read_regions(&regions_dir, config, &mut problems);
    let file = match parsed {
        Ok(file) => file,
        Err(e) => {
            problems.push(
                config,
                "",
                format!("not valid config TOML: {}", e.to_string().trim_end()),
            );
            // The region files are still checked, so that every problem is reported.
            build_jurisdictions(region_files, &mut problems);
            return Err(ConfigError {
                problems: problems.0,
            });
        }
    };
    match Policy::from_files(config, file, region_files) {
        Ok(policy) if problems.0.is_empty() => Ok(policy),
        Ok(_) => Err(ConfigError {
            problems: problems.0,
        }),
        Err(mut e) => {
            problems.0.append(&mut e.problems);
            Err(ConfigError {
                problems: problems.0,
            })
        }
    }
}

/// Where region files are looked for when the config does not say.
const DEFAULT_REGIONS_DIR: &str = "../regions";

/// `base/rel` as the file system resolves it (symbolic links included),
/// absolute when it exists; unchanged otherwise, so that opening it reports
/// the error.
fn resolve(base: &Path, rel: &Path) -> PathBuf {
    let path = base.join(rel);
    std::fs::canonicalize(&path).unwrap_or(path)
}

fn single(file: &Path, field: &str, message: String) -> ConfigError {
    ConfigError {
        problems: vec![ConfigProblem {
            file: file.to_owned(),
            field: field.to_owned(),
            message,
        }],
    }
}

fn read_regions(dir: &Path, config: &Path, problems: &mut Problems) -> Vec<(PathBuf, RegionFile)> {
    let entries = match std::fs::read_dir(dir) {
        Ok(entries) => entries,
        Err(e) => {
            problems.push(
                config,
                "regions_dir",
                format!(
                    "cannot read the regions directory {}: {e}; set regions_dir or pass --regions",
                    dir.display()
                ),
            );
            return Vec::new();
        }
    };
    let mut paths: Vec<PathBuf> = entries
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "toml"))
        .collect();
    paths.sort();
    if paths.is_empty() {
        problems.push(
            config,
            "regions_dir",
            format!(
                "{} holds no region files (*.toml); add at least one",
                dir.display()
            ),
        );
    }
    let mut regions = Vec::new();
    for path in paths {
        match std::fs::read_to_string(&path) {
            Ok(text) => match toml::from_str::<RegionFile>(&text) {
                Ok(region) => regions.push((path, region)),
                Err(e) => problems.push(
                    &path,
                    "",
                    format!("not a valid region file: {}", e.to_string().trim_end()),
                ),
            },
            Err(e) => problems.push(&path, "", format!("cannot read: {e}")),
        }
    }
    regions
}

#[derive(Default)]
struct Problems(Vec<ConfigProblem>);

impl Problems {
    fn push(&mut self, file: &Path, field: impl Into<String>, message: impl Into<String>) {
        self.0.push(ConfigProblem {
            file: file.to_owned(),
            field: field.into(),
            message: message.into(),
        });
    }
}

/// Names an entry of an array of tables, e.g. `relay[2] "de-fra-1".country`.
fn at(section: &str, i: usize, id: &str, field: &str) -> String {
    if id.is_empty() {
        format!("{section}[{i}].{field}")
    } else {
        format!("{section}[{i}] \"{id}\".{field}")
    }
}

/// Checks region files and builds the jurisdictions, in id order (relays
/// are attached later).
fn build_jurisdictions(regions: Vec<(PathBuf, RegionFile)>, p: &mut Problems) -> Vec<Jurisdiction> {
    let mut regions = regions;
    regions.sort_by(|a, b| a.1.id.cmp(&b.1.id).then(a.0.cmp(&b.0)));
    let mut jurisdictions: Vec<Jurisdiction> = Vec::new();
    let mut seen_region: HashMap<String, PathBuf> = HashMap::new();
    for (path, region) in regions {
        if let Err(m) = check_jurisdiction_id(&region.id) {
            p.push(&path, "id", m);
        }
        let stem = path.file_stem().and_then(|s| s.to_str()).unwrap_or("");
        if stem != region.id {
            p.push(
                &path,
                "id",
                format!(
                    "id '{}' differs from the file name '{stem}.toml'; rename the file or change the id",
                    region.id
                ),
            );
        }
        if let Some(first) = seen_region.get(&region.id) {
            p.push(
                &path,
                "id",
                format!(
                    "jurisdiction '{}' is already defined in {}",
                    region.id,
                    first.display()
                ),
            );
            continue;
        }
        seen_region.insert(region.id.clone(), path.clone());
        if region.name.trim().is_empty() {
            p.push(
                &path,
                "name",
                "is empty; give the jurisdiction a display name",
            );
        }
        if region.legal_basis.trim().is_empty() {
            p.push(
                &path,
                "legal_basis",
                "is empty; name the law this jurisdiction answers to",
            );
        }
        let mut countries = CountrySet::new();
        if region.all_countries {
            if !region.countries.is_empty() {
                p.push(
                    &path,
                    "countries",
                    "must be empty when all_countries = true; remove one of the two",
                );
            }
            countries = CountrySet::all();
        } else if region.countries.is_empty() {
            p.push(
                &path,
                "countries",
                "lists no country; list ISO 3166-1 alpha-2 codes or set all_countries = true",
            );
        }
        for (i, code) in region.countries.iter().enumerate() {
            match parse_country(code) {
                Ok(c) => {
                    if !countries.insert(c) {
                        p.push(
                            &path,
                            format!("countries[{i}]"),
                            format!("'{c}' is listed twice"),
                        );
                    }
                }
                Err(m) => p.push(&path, format!("countries[{i}]"), m),
            }
        }
        let centre = GeoPoint::centre_of(countries.iter().map(|c| c.centroid()));
        jurisdictions.push(Jurisdiction {
            id: region.id,
            name: region.name,
            legal_basis: region.legal_basis,
            countries,
            source: path,
            members: Vec::new(),
            positions: PointSet::default(),
            centre,
            default_relay: None,
        });
    }
    jurisdictions
}

/// Bitrates stay exactly representable as `f64` (load arithmetic relies on it).
pub(crate) const MAX_BITRATE_BPS: u64 = 1 << 53;

/// Ids appear in conference ids, URLs and metric labels: keep them plain.
fn check_id(id: &str, max: usize) -> Result<(), String> {
    let ok = !id.is_empty()
        && id.len() <= max
        && id.as_bytes()[0].is_ascii_lowercase()
        && id
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'_');
    if ok {
        Ok(())
    } else {
        Err(format!(
            "'{id}' is not a valid id: use 1 to {max} lower-case letters, digits, '-' or '_', starting with a letter"
        ))
    }
}

/// Jurisdiction ids start conference ids (`eu-…`), split at the first
/// dash: no dash inside them.
fn check_jurisdiction_id(id: &str) -> Result<(), String> {
    let ok = !id.is_empty()
        && id.len() <= 32
        && id.as_bytes()[0].is_ascii_lowercase()
        && id
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_');
    if ok {
        Ok(())
    } else {
        Err(format!(
            "'{id}' is not a valid jurisdiction id: use 1 to 32 lower-case letters, digits or '_', starting with a letter (no '-': it separates the jurisdiction in conference ids)"
        ))
    }
}

fn parse_country(code: &str) -> Result<CountryCode, String> {
    CountryCode::parse(code).map_err(|e| {
        let hint = match code.to_ascii_uppercase().as_str() {
            "UK" => " (the United Kingdom is 'GB')",
            "EL" => " (Greece is 'GR')",
            "EU" => " (list the member countries instead)",
            _ => "",
        };
        format!("{e}{hint}")
    })
}

impl Policy {
    /// Checks parsed files and builds the policy. `config_path` names the config
    /// file in messages and anchors relative paths; `regions` pairs each region
    /// with the file it came from. Every step reports all of its problems.
    pub fn from_files(
        config_path: &Path,
        config: ConfigFile,
        regions: Vec<(PathBuf, RegionFile)>,
    ) -> Result<Policy, ConfigError> {
        let mut p = Problems::default();
        let cfg = config_path;
        let mut jurisdictions = build_jurisdictions(regions, &mut p);
        let jurisdiction_by_id: HashMap<String, JurisdictionIdx> = jurisdictions
            .iter()
            .enumerate()
            .map(|(i, j)| (j.id.clone(), JurisdictionIdx(i as u16)))
            .collect();
        if jurisdictions.len() > usize::from(u16::MAX) {
            p.push(cfg, "regions_dir", "more than 65535 jurisdictions");
        }
        let ctx = Ctx {
            cfg,
            base: cfg.parent().unwrap_or(Path::new(".")),
            jurisdiction_by_id: &jurisdiction_by_id,
            acme: config.acme.is_some(),
        };
        let default_jurisdiction = ctx.known(&config.default_jurisdiction);
        if default_jurisdiction.is_none() {
            p.push(
                cfg,
                "default_jurisdiction",
                ctx.not_a_jurisdiction(&config.default_jurisdiction),
            );
        }
        check_selection(&ctx, &config.selection, &mut p);
        let (relays, seen_relay) = build_relays(&ctx, &config.relays, &jurisdictions, &mut p);
        let relay_by_id: HashMap<String, RelayIdx> = relays
            .iter()
            .enumerate()
            .map(|(i, r)| (r.id.clone(), RelayIdx(i as u32)))
            .collect();
        index_members(&mut jurisdictions, &relays);
        build_default_relays(
            &ctx,
            &config.default_relay,
            &mut jurisdictions,
            &relays,
            &relay_by_id,
            &seen_relay,
            &mut p,
        );
        let ticket_keys = build_ticket_keys(&ctx, &config.ticket_keys, &mut p);
        let (plans, plan_by_id) = build_plans(
            &ctx,
            &config.plans,
            default_jurisdiction,
            &jurisdictions,
            &mut p,
        );
        let tenants = build_tenants(&ctx, &config.tenants, &plan_by_id, &mut p);
        let (trusted_proxies, geoip) = build_geoip(&ctx, &config.geoip, &mut p);
        let routers = build_routers(&ctx, &config.routers, &jurisdictions, &ticket_keys, &mut p);
        let logging = build_logging(&ctx, &config.logging, &mut p);
        check_limits(&ctx, &config.limits, &mut p);
        check_retention(&ctx, &config.retention, &mut p);
        if let Some(acme) = &config.acme {
            if !acme.directory.starts_with("https://") {
                p.push(
                    ctx.cfg,
                    "acme.directory".to_owned(),
                    format!("'{}' is not an https:// URL", acme.directory),
                );
            }
        }

        let acme = config.acme.map(|a| super::files::AcmeSection {
            state_dir: resolve(ctx.base, &a.state_dir),
            ca_file: a.ca_file.as_ref().map(|f| resolve(ctx.base, f)),
            ..a
        });
        // A missing default jurisdiction was reported above.
        let (true, Some(default_jurisdiction)) = (p.0.is_empty(), default_jurisdiction) else {
            return Err(ConfigError { problems: p.0 });
        };
        Ok(Policy {
            source: cfg.to_owned(),
            jurisdictions,
            jurisdiction_by_id,
            relays,
            relay_by_id,
            plans,
            tenants,
            default_jurisdiction,
            selection: SelectionParams {
                load_penalty_km: config.selection.load_penalty_km,
                stickiness_km: config.selection.stickiness_km,
            },
            geoip,
            trusted_proxies,
            ticket_keys,
            routers,
            logging,
            limits: config.limits,
            retention: config.retention,
            acme,
        })
    }
}

/// What every step of loading reads: the config file (problems name it,
/// relative paths start from its folder) and the jurisdictions by id.
struct Ctx<'a> {
    cfg: &'a Path,
    base: &'a Path,
    jurisdiction_by_id: &'a HashMap<String, JurisdictionIdx>,
    /// Whether the config has `[acme]`: listeners given a DNS name and no
    /// certificate files get theirs over ACME.
    acme: bool,
}

impl Ctx<'_> {
    fn known(&self, id: &str) -> Option<JurisdictionIdx> {
        self.jurisdiction_by_id.get(id).copied()
    }

    fn not_a_jurisdiction(&self, id: &str) -> String {
        let mut ids: Vec<_> = self.jurisdiction_by_id.keys().map(String::as_str).collect();
        ids.sort_unstable();
        format!(
            "'{id}' is not a jurisdiction; use one of: {}",
            ids.join(", ")
        )
    }
}

/// The selection parameters: distances in kilometres.
fn check_selection(ctx: &Ctx<'_>, sel: &SelectionSection, p: &mut Problems) {
    for (field, v) in [
        ("selection.load_penalty_km", sel.load_penalty_km),
        ("selection.stickiness_km", sel.stickiness_km),
    ] {
        if !v.is_finite() || v < 0.0 {
            p.push(
                ctx.cfg,
                field,
                format!("{v} is not a distance; use a number of kilometres >= 0"),
            );
        }
    }
}

/// The relays, in id order, and every relay id the file names (also those
/// with problems, so that nothing else reports them again).
fn build_relays(
    ctx: &Ctx<'_>,
    sections: &[RelaySection],
    jurisdictions: &[Jurisdiction],
    p: &mut Problems,
) -> (Vec<Relay>, HashSet<String>) {
    let mut relays: Vec<Relay> = Vec::new();
    let mut seen_relay: HashSet<String> = HashSet::new();
    let mut seen_addr: HashMap<SocketAddr, String> = HashMap::new();
    for (i, r) in sections.iter().enumerate() {
        let field = |f: &str| at("relay", i, &r.id, f);
        let mut ok = true;
        if let Err(m) = check_id(&r.id, 64) {
            p.push(ctx.cfg, field("id"), m);
            ok = false;
        }
        if !seen_relay.insert(r.id.clone()) {
            p.push(
                ctx.cfg,
                field("id"),
                format!("relay id '{}' is used twice; ids must be unique", r.id),
            );
            ok = false;
        }
        let relay = build_relay(ctx, i, r, jurisdictions, &mut seen_addr, p);
        if let (true, Some(relay)) = (ok, relay) {
            relays.push(relay);
        }
    }
    relays.sort_by(|a, b| a.id.cmp(&b.id));
    if relays.len() > u32::MAX as usize {
        p.push(ctx.cfg, "relay", "too many relays");
    }
    (relays, seen_relay)
}

/// One relay's place, addresses and credentials; `None` if one is wrong.
fn build_relay(
    ctx: &Ctx<'_>,
    i: usize,
    r: &RelaySection,
    jurisdictions: &[Jurisdiction],
    seen_addr: &mut HashMap<SocketAddr, String>,
    p: &mut Problems,
) -> Option<Relay> {
    let field = |f: &str| at("relay", i, &r.id, f);
    let country = match parse_country(&r.country) {
        Ok(c) => {
            if !jurisdictions.iter().any(|j| j.countries.contains(c)) {
                p.push(
                    ctx.cfg,
                    field("country"),
                    format!(
                        "{c} ({}) is in no jurisdiction, so the relay could serve nobody; add {c} to a region file or remove the relay",
                        c.name()
                    ),
                );
            }
            Some(c)
        }
        Err(m) => {
            p.push(ctx.cfg, field("country"), m);
            None
        }
    };
    let position = GeoPoint::new(r.latitude, r.longitude);
    if position.is_none() {
        p.push(
            ctx.cfg,
            field("latitude"),
            format!(
                "({}, {}) is not a position; latitude must be in [-90, 90] and longitude in [-180, 180]",
                r.latitude, r.longitude
            ),
        );
    }
    let quic_addr = match r.quic_addr.parse::<SocketAddr>() {
        Ok(addr) => {
            if let Some(other) = seen_addr.insert(addr, r.id.clone()) {
                p.push(
                    ctx.cfg,
                    field("quic_addr"),
                    format!(
                        "{addr} is also the address of relay '{other}'; give each relay its own"
                    ),
                );
            }
            Some(addr)
        }
        Err(_) => {
            p.push(
                ctx.cfg,
                field("quic_addr"),
                format!(
                    "'{}' is not an ip:port address such as 192.0.2.10:4433",
                    r.quic_addr
                ),
            );
            None
        }
    };
    if let Some(url) = &r.webtransport_url {
        if let Err(problem) = check_webtransport_url(url, quic_addr) {
            p.push(ctx.cfg, field("webtransport_url"), problem);
        }
    }
    check_capacity(ctx, i, r, p);
    let websocket_addr = match (&r.websocket_addr, quic_addr) {
        (Some(text), _) => text
            .parse::<SocketAddr>()
            .map_err(|_| {
                p.push(
                    ctx.cfg,
                    field("websocket_addr"),
                    format!("'{text}' is not an ip:port address such as 192.0.2.10:443"),
                )
            })
            .ok(),
        (None, q) => q,
    };
    if let Some(url) = &r.websocket_url {
        if let Err(problem) = check_websocket_url(url) {
            p.push(ctx.cfg, field("websocket_url"), problem);
        }
    }
    let websocket_tls = tls_pair(
        ctx,
        i,
        r,
        ("websocket_tls_cert", &r.websocket_tls_cert),
        ("websocket_tls_key", &r.websocket_tls_key),
        p,
    );
    let http_addr = match (&r.http_addr, quic_addr) {
        (Some(text), _) => text
            .parse::<SocketAddr>()
            .map_err(|_| {
                p.push(
                    ctx.cfg,
                    field("http_addr"),
                    format!("'{text}' is not an ip:port address such as 192.0.2.10:9090"),
                )
            })
            .ok(),
        (None, Some(q)) => Some(SocketAddr::new(q.ip(), 9090)),
        (None, None) => None,
    };
    let tls = relay_tls(ctx, i, r, p);
    let credential_sha256 = r.credential_sha256.as_deref().and_then(|h| {
        parse_sha256_hex(h)
            .map_err(|m| p.push(ctx.cfg, field("credential_sha256"), m))
            .ok()
    });
    let (Some(country), Some(position), Some(quic_addr), Some(http_addr), Some(websocket_addr)) =
        (country, position, quic_addr, http_addr, websocket_addr)
    else {
        return None;
    };
    Some(Relay {
        id: r.id.clone(),
        country,
        position,
        quic_addr,
        webtransport_url: r
            .webtransport_url
            .clone()
            .unwrap_or_else(|| format!("https://{quic_addr}/")),
        websocket_addr,
        websocket_url: r
            .websocket_url
            .clone()
            .unwrap_or_else(|| format!("wss://{websocket_addr}{}", crate::wire::websocket::PATH)),
        websocket_tls,
        city: r.city.clone(),
        max_participants: r.max_participants,
        max_bitrate_bps: r.max_bitrate_bps,
        http_addr,
        tls,
        credential_sha256,
        workers: r.workers,
    })
}

/// A relay's shards and capacity.
fn check_capacity(ctx: &Ctx<'_>, i: usize, r: &RelaySection, p: &mut Problems) {
    let field = |f: &str| at("relay", i, &r.id, f);
    if let Some(w) = r.workers {
        if !(1..=super::MAX_WORKERS).contains(&w) {
            p.push(
                ctx.cfg,
                field("workers"),
                format!(
                    "must be 1 to {} (omit it for one per core)",
                    super::MAX_WORKERS
                ),
            );
        }
    }
    if r.max_participants == 0 {
        p.push(
            ctx.cfg,
            field("max_participants"),
            "is 0; a relay must accept at least one participant",
        );
    }
    if r.max_bitrate_bps > MAX_BITRATE_BPS {
        p.push(
            ctx.cfg,
            field("max_bitrate_bps"),
            format!(
                "is above {MAX_BITRATE_BPS} (2^53 bit/s); give the relay's real forwarding capacity"
            ),
        );
    }
    if r.max_bitrate_bps == 0 {
        p.push(
            ctx.cfg,
            field("max_bitrate_bps"),
            "is 0; give the relay's forwarding capacity in bits per second",
        );
    }
}

/// A relay's certificate and key files: both or neither.
fn relay_tls(
    ctx: &Ctx<'_>,
    i: usize,
    r: &RelaySection,
    p: &mut Problems,
) -> Option<(PathBuf, PathBuf)> {
    tls_pair(
        ctx,
        i,
        r,
        ("tls_cert", &r.tls_cert),
        ("tls_key", &r.tls_key),
        p,
    )
}

/// A certificate and key file given together (or neither), resolved
/// against the config's directory and readable.
fn tls_pair(
    ctx: &Ctx<'_>,
    i: usize,
    r: &RelaySection,
    (cert_field, cert): (&str, &Option<PathBuf>),
    (key_field, key): (&str, &Option<PathBuf>),
    p: &mut Problems,
) -> Option<(PathBuf, PathBuf)> {
    let field = |f: &str| at("relay", i, &r.id, f);
    match (cert, key) {
        (Some(c), Some(k)) => {
            let (c, k) = (resolve(ctx.base, c), resolve(ctx.base, k));
            for (f, path) in [(cert_field, &c), (key_field, &k)] {
                if let Err(e) = std::fs::metadata(path) {
                    p.push(
                        ctx.cfg,
                        field(f),
                        format!("cannot read {}: {e}", path.display()),
                    );
                }
            }
            Some((c, k))
        }
        (None, None) => None,
        _ => {
            p.push(
                ctx.cfg,
                field(cert_field),
                format!("give both {cert_field} and {key_field}, or neither"),
            );
            None
        }
    }
}

/// Participants are given `url` for WebSocket: `wss://` with a host.
fn check_websocket_url(url: &str) -> Result<(), String> {
    let bad = || format!("'{url}' is not a wss:// URL with a host; the WebSocket path needs TLS");
    let rest = url.strip_prefix("wss://").ok_or_else(bad)?;
    let authority = rest.split(['/', '?', '#']).next().unwrap_or("");
    if url.contains(char::is_whitespace) || authority.is_empty() || authority.contains('@') {
        return Err(bad());
    }
    Ok(())
}

/// Each jurisdiction's member relays, packed for selection.
fn index_members(jurisdictions: &mut [Jurisdiction], relays: &[Relay]) {
    for j in jurisdictions.iter_mut() {
        j.members = relays
            .iter()
            .enumerate()
            .filter(|(_, r)| j.countries.contains(r.country))
            .map(|(i, r)| Member {
                relay: RelayIdx(i as u32),
                max_participants: r.max_participants,
                max_bitrate_bps: r.max_bitrate_bps,
                inv_max_participants: 1.0 / f64::from(r.max_participants),
                inv_max_bitrate_bps: 1.0 / r.max_bitrate_bps as f64,
            })
            .collect();
        j.positions = j
            .members
            .iter()
            .map(|m| relays[m.relay.index()].position)
            .collect();
    }
}

/// The relay each jurisdiction gives participants of unknown location.
fn build_default_relays(
    ctx: &Ctx<'_>,
    config: &BTreeMap<String, String>,
    jurisdictions: &mut [Jurisdiction],
    relays: &[Relay],
    relay_by_id: &HashMap<String, RelayIdx>,
    seen_relay: &HashSet<String>,
    p: &mut Problems,
) {
    for (jid, rid) in config {
        let field = format!("default_relay.{jid}");
        let Some(j) = ctx.known(jid) else {
            p.push(ctx.cfg, field, ctx.not_a_jurisdiction(jid));
            continue;
        };
        match relay_by_id.get(rid) {
            None if seen_relay.contains(rid) => {} // already reported on the relay itself
            None => p.push(ctx.cfg, field, format!("no relay has the id '{rid}'")),
            Some(r) if !jurisdictions[j.index()].contains(*r) => p.push(
                ctx.cfg,
                field,
                format!(
                    "relay '{rid}' is in {}, which is outside jurisdiction '{jid}'; pick a relay inside it",
                    relays[r.index()].country
                ),
            ),
            Some(r) => jurisdictions[j.index()].default_relay = Some(*r),
        }
    }
}

/// The routers' public keys each jurisdiction's relays trust for tickets.
fn build_ticket_keys(
    ctx: &Ctx<'_>,
    config: &BTreeMap<String, Vec<String>>,
    p: &mut Problems,
) -> HashMap<JurisdictionIdx, Vec<ed25519_dalek::VerifyingKey>> {
    let mut ticket_keys = HashMap::new();
    for (jid, keys) in config {
        let Some(j) = ctx.known(jid) else {
            p.push(
                ctx.cfg,
                format!("ticket_keys.{jid}"),
                ctx.not_a_jurisdiction(jid),
            );
            continue;
        };
        let mut parsed = Vec::new();
        for (i, key) in keys.iter().enumerate() {
            match crate::ticket::parse_public_key(key) {
                Ok(k) => parsed.push(k),
                Err(m) => p.push(
                    ctx.cfg,
                    format!("ticket_keys.{jid}[{i}]"),
                    format!("{m}; give the router's public key (residency-relay keygen prints it)"),
                ),
            }
        }
        ticket_keys.insert(j, parsed);
    }
    ticket_keys
}

/// The plans, and each plan id's index (`None` for a plan with problems).
fn build_plans(
    ctx: &Ctx<'_>,
    sections: &[PlanSection],
    default_jurisdiction: Option<JurisdictionIdx>,
    jurisdictions: &[Jurisdiction],
    p: &mut Problems,
) -> (Vec<Plan>, HashMap<String, Option<usize>>) {
    let mut plans: Vec<Plan> = Vec::new();
    // Plan id → index in `plans`; `None` for a plan that had problems (and
    // was not stored), so tenants on it are not reported a second time.
    let mut plan_by_id: HashMap<String, Option<usize>> = HashMap::new();
    for (i, plan) in sections.iter().enumerate() {
        let field = |f: &str| at("plan", i, &plan.id, f);
        if let Err(m) = check_id(&plan.id, 64) {
            p.push(ctx.cfg, field("id"), m);
        }
        if plan_by_id.contains_key(&plan.id) {
            p.push(
                ctx.cfg,
                field("id"),
                format!("plan id '{}' is used twice", plan.id),
            );
            continue;
        }
        let mut choosable = Vec::new();
        for (k, jid) in plan.jurisdictions.iter().enumerate() {
            match ctx.known(jid) {
                Some(j) if choosable.contains(&j) => p.push(
                    ctx.cfg,
                    field(&format!("jurisdictions[{k}]")),
                    format!("'{jid}' is listed twice"),
                ),
                Some(j) => choosable.push(j),
                None => p.push(
                    ctx.cfg,
                    field(&format!("jurisdictions[{k}]")),
                    ctx.not_a_jurisdiction(jid),
                ),
            }
        }
        let default = match &plan.default {
            Some(jid) => {
                let j = ctx.known(jid);
                if j.is_none() {
                    p.push(ctx.cfg, field("default"), ctx.not_a_jurisdiction(jid));
                }
                j
            }
            None => default_jurisdiction,
        };
        if let Some(d) = default {
            if !choosable.is_empty() && !choosable.contains(&d) {
                p.push(
                    ctx.cfg,
                    field("default"),
                    format!(
                        "the plan's default '{}' is not among its jurisdictions; add it there or set plan.default to one of them",
                        jurisdictions[d.index()].id
                    ),
                );
            } else if choosable.is_empty()
                && plan.default.is_some()
                && Some(d) != default_jurisdiction
            {
                p.push(
                    ctx.cfg,
                    field("default"),
                    "a plan that may not choose gets the operator default_jurisdiction; remove plan.default or list the plan's jurisdictions",
                );
            }
        }
        let stored = default.map(|default| {
            plans.push(Plan {
                id: plan.id.clone(),
                jurisdictions: choosable,
                default,
                allow_no_passcode: plan.allow_no_passcode,
                waiting_room: plan.waiting_room,
                e2ee: plan.e2ee,
            });
            plans.len() - 1
        });
        plan_by_id.insert(plan.id.clone(), stored);
    }
    (plans, plan_by_id)
}

/// The tenants, each on a plan, with the SHA-256 of its API key.
fn build_tenants(
    ctx: &Ctx<'_>,
    sections: &[TenantSection],
    plan_by_id: &HashMap<String, Option<usize>>,
    p: &mut Problems,
) -> Vec<Tenant> {
    let mut tenants: Vec<Tenant> = Vec::new();
    let mut seen_tenant: HashSet<&str> = HashSet::new();
    let mut seen_key: HashMap<[u8; 32], &str> = HashMap::new();
    for (i, t) in sections.iter().enumerate() {
        let field = |f: &str| at("tenant", i, &t.id, f);
        if let Err(m) = check_id(&t.id, 64) {
            p.push(ctx.cfg, field("id"), m);
        }
        if !seen_tenant.insert(&t.id) {
            p.push(
                ctx.cfg,
                field("id"),
                format!("tenant id '{}' is used twice", t.id),
            );
        }
        let plan = plan_by_id.get(&t.plan).copied();
        if plan.is_none() {
            let mut ids: Vec<_> = plan_by_id.keys().map(String::as_str).collect();
            ids.sort_unstable();
            p.push(
                ctx.cfg,
                field("plan"),
                format!("'{}' is not a plan; use one of: {}", t.plan, ids.join(", ")),
            );
        }
        let mut hash = [0u8; 32];
        let key_ok = t.api_key_sha256.len() == 64
            && t.api_key_sha256
                .bytes()
                .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
            && hex::decode_to_slice(&t.api_key_sha256, &mut hash).is_ok();
        if !key_ok {
            p.push(
                ctx.cfg,
                field("api_key_sha256"),
                "is not 64 lower-case hex digits; store the SHA-256 of the key (residency-relay hash-api-key), never the key",
            );
        } else if let Some(other) = seen_key.insert(hash, &t.id) {
            p.push(
                ctx.cfg,
                field("api_key_sha256"),
                format!("tenant '{other}' has the same API key; issue each tenant its own key"),
            );
        }
        if let (Some(Some(plan)), true) = (plan, key_ok) {
            tenants.push(Tenant {
                id: t.id.clone(),
                plan,
                api_key_sha256: hash,
                waiting_room: t.waiting_room,
            });
        }
    }
    tenants
}

/// Where clients are: trusted proxies, operator overrides and the database.
fn build_geoip(ctx: &Ctx<'_>, geo: &GeoIpSection, p: &mut Problems) -> (Vec<IpNet>, GeoIp) {
    let mut trusted_proxies = Vec::new();
    for (i, cidr) in geo.trusted_proxies.iter().enumerate() {
        match parse_cidr(cidr) {
            Ok(net) => trusted_proxies.push(net),
            Err(m) => p.push(ctx.cfg, format!("geoip.trusted_proxies[{i}]"), m),
        }
    }
    let mut overrides = Vec::new();
    let mut override_fields = Vec::new();
    for (i, o) in geo.overrides.iter().enumerate() {
        let field = |f: &str| format!("geoip.override[{i}].{f}");
        let net = parse_cidr(&o.cidr)
            .map_err(|m| p.push(ctx.cfg, field("cidr"), m))
            .ok();
        let country = parse_country(&o.country)
            .map_err(|m| p.push(ctx.cfg, field("country"), m))
            .ok();
        let point = match (o.latitude, o.longitude, country) {
            (None, None, Some(c)) => Some(c.centroid()),
            (Some(lat), Some(lon), _) => {
                let point = GeoPoint::new(lat, lon);
                if point.is_none() {
                    p.push(
                        ctx.cfg,
                        field("latitude"),
                        format!("({lat}, {lon}) is not a position"),
                    );
                }
                point
            }
            (None, None, None) => None,
            _ => {
                p.push(
                    ctx.cfg,
                    field("latitude"),
                    "give both latitude and longitude, or neither",
                );
                None
            }
        };
        if let (Some(net), Some(country), Some(point)) = (net, country, point) {
            overrides.push(Override {
                net,
                country,
                point,
            });
            override_fields.push(i);
        }
    }
    let overrides = match Overrides::new(overrides) {
        Ok(o) => o,
        Err(overlaps) => {
            for overlap in overlaps {
                let (a, b) = (override_fields[overlap.0], override_fields[overlap.1]);
                p.push(
                    ctx.cfg,
                    format!("geoip.override[{b}].cidr"),
                    format!(
                        "{} overlaps geoip.override[{a}] ({}); overrides must not overlap, split or remove one",
                        geo.overrides[b].cidr, geo.overrides[a].cidr
                    ),
                );
            }
            Overrides::default()
        }
    };
    let database = match &geo.database {
        None => None,
        Some(path) => {
            let path = resolve(ctx.base, path);
            match Database::open(&path) {
                Ok(db) => Some(db),
                Err(e) => {
                    p.push(
                        ctx.cfg,
                        "geoip.database",
                        format!(
                            "{e}; fix the path, or remove the setting to route by overrides only"
                        ),
                    );
                    None
                }
            }
        }
    };
    (trusted_proxies, GeoIp::new(overrides, database))
}

/// The log format, level and the jurisdictions whose logs show full addresses.
fn build_logging(ctx: &Ctx<'_>, log: &LoggingSection, p: &mut Problems) -> super::Logging {
    let json = match log.format.as_deref() {
        None | Some("human") => false,
        Some("json") => true,
        Some(other) => {
            p.push(
                ctx.cfg,
                "logging.format",
                format!("'{other}' is not a log format; use human or json"),
            );
            false
        }
    };
    let level = log.level.clone().unwrap_or_else(|| "info".to_owned());
    if tracing_subscriber::EnvFilter::try_new(&level).is_err() {
        p.push(
            ctx.cfg,
            "logging.level",
            format!(
                "'{level}' is not a level or filter; use e.g. info, debug or residency_relay=debug"
            ),
        );
    }
    let mut full_addresses = Vec::new();
    for (i, jid) in log.full_addresses.iter().enumerate() {
        match ctx.known(jid) {
            Some(j) => full_addresses.push(j),
            None => p.push(
                ctx.cfg,
                format!("logging.full_addresses[{i}]"),
                ctx.not_a_jurisdiction(jid),
            ),
        }
    }
    super::Logging {
        json,
        level,
        full_addresses,
    }
}

/// Limits: none may be 0, and one address may not fill a listener.
fn check_limits(ctx: &Ctx<'_>, limits: &LimitsSection, p: &mut Problems) {
    for (field, v) in [
        (
            "limits.failed_joins_per_address",
            limits.failed_joins_per_address,
        ),
        (
            "limits.failed_joins_per_conference",
            limits.failed_joins_per_conference,
        ),
        (
            "limits.joins_per_address_per_minute",
            limits.joins_per_address_per_minute,
        ),
        (
            "limits.conference_max_participants",
            limits.conference_max_participants,
        ),
        (
            "limits.relay_connections_per_address",
            limits.relay_connections_per_address,
        ),
        (
            "limits.http_connections_per_listener",
            limits.http_connections_per_listener,
        ),
        (
            "limits.http_connections_per_address",
            limits.http_connections_per_address,
        ),
        (
            "limits.http_header_timeout_secs",
            limits.http_header_timeout_secs,
        ),
        (
            "limits.http_body_timeout_secs",
            limits.http_body_timeout_secs,
        ),
        (
            "limits.http_idle_timeout_secs",
            limits.http_idle_timeout_secs,
        ),
        (
            "limits.announcements_per_second",
            limits.announcements_per_second,
        ),
        ("limits.announcement_burst", limits.announcement_burst),
        (
            "limits.subscriptions_per_second",
            limits.subscriptions_per_second,
        ),
        ("limits.subscription_burst", limits.subscription_burst),
        ("limits.rejoin_token_secs", limits.rejoin_token_secs),
    ] {
        if v == 0 {
            p.push(
                ctx.cfg,
                field,
                "0 would refuse everyone; give a positive number",
            );
        }
    }
    if limits.http_connections_per_address > limits.http_connections_per_listener {
        p.push(
            ctx.cfg,
            "limits.http_connections_per_address",
            format!(
                "{} is more than http_connections_per_listener ({}); one address could fill the listener",
                limits.http_connections_per_address, limits.http_connections_per_listener
            ),
        );
    }
}

/// Retention periods: positive, and conferences outlive their details.
fn check_retention(ctx: &Ctx<'_>, retention: &RetentionSection, p: &mut Problems) {
    for (field, v) in [
        ("retention.participants_days", retention.participants_days),
        ("retention.audit_days", retention.audit_days),
        ("retention.abuse_reports_days", retention.abuse_reports_days),
        ("retention.conferences_days", retention.conferences_days),
        ("retention.purge_batch", retention.purge_batch),
        (
            "retention.purge_interval_secs",
            retention.purge_interval_secs,
        ),
    ] {
        if v == 0 {
            p.push(
                ctx.cfg,
                field,
                "give a positive number (0 would purge records the moment a conference ends, or never run the purge)",
            );
        }
    }
    let longest_detail = retention
        .participants_days
        .max(retention.audit_days)
        .max(retention.abuse_reports_days);
    if retention.conferences_days < longest_detail {
        p.push(
            ctx.cfg,
            "retention.conferences_days",
            format!(
                "{} is less than the longest detail period ({longest_detail}): a conference's record, and its residency report, must outlive its participants, audit lines and abuse reports",
                retention.conferences_days
            ),
        );
    }
}

/// Parses 64 lower-case hex digits.
fn parse_sha256_hex(text: &str) -> Result<[u8; 32], String> {
    let mut hash = [0u8; 32];
    let ok = text.len() == 64
        && text
            .bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
        && hex::decode_to_slice(text, &mut hash).is_ok();
    if ok {
        Ok(hash)
    } else {
        Err("is not 64 lower-case hex digits; store the SHA-256 of the secret (residency-relay hash-api-key), never the secret".into())
    }
}

/// Checks the `[[router]]` sections: each serves only jurisdictions that
/// contain its country, no jurisdiction has two routers, and its signing key
/// is one the relays of its jurisdictions trust.
fn build_routers(
    ctx: &Ctx<'_>,
    sections: &[RouterSection],
    jurisdictions: &[Jurisdiction],
    ticket_keys: &HashMap<JurisdictionIdx, Vec<ed25519_dalek::VerifyingKey>>,
    p: &mut Problems,
) -> Vec<Router> {
    let (cfg, base) = (ctx.cfg, ctx.base);
    let mut routers = Vec::new();
    let mut seen: HashSet<&str> = HashSet::new();
    let mut served_by: HashMap<JurisdictionIdx, &RouterSection> = HashMap::new();
    for (i, r) in sections.iter().enumerate() {
        // Every problem of this entry was reported; it is kept only without any.
        let before = p.0.len();
        let field = |f: &str| at("router", i, &r.id, f);
        if let Err(m) = check_id(&r.id, 64) {
            p.push(cfg, field("id"), m);
        }
        if !seen.insert(&r.id) {
            p.push(
                cfg,
                field("id"),
                format!("router id '{}' is used twice", r.id),
            );
        }
        let country = parse_country(&r.country)
            .map_err(|m| p.push(cfg, field("country"), m))
            .ok();
        let served = router_served(ctx, &field, r, country, jurisdictions, &mut served_by, p);
        let (listen, url, relay_url, relay_listen) = router_addresses(ctx, &field, r, p);
        let (tls, acme, tls_ca) = router_tls(ctx, &field, r, &url, &relay_url, p);
        let key_path = resolve(base, &r.signing_key);
        let public_key = router_public_key(ctx, &field, r, &served, jurisdictions, ticket_keys, p);
        let admin_token_sha256 = r.admin_token_sha256.as_deref().and_then(|h| {
            parse_sha256_hex(h)
                .map_err(|m| p.push(cfg, field("admin_token_sha256"), m))
                .ok()
        });
        let store = build_store(r, base, &served, jurisdictions, cfg, &field, p);
        if let (true, Some(country), Some(listen), Some(public_key), Some(store)) =
            (p.0.len() == before, country, listen, public_key, store)
        {
            routers.push(Router {
                id: r.id.clone(),
                country,
                jurisdictions: served,
                listen,
                url,
                relay_url,
                relay_listen,
                signing_key: key_path,
                public_key,
                store,
                admin_token_sha256,
                records_key: r.records_key.as_ref().map(|k| resolve(base, k)),
                records_key_previous: r
                    .records_key_previous
                    .iter()
                    .map(|k| resolve(base, k))
                    .collect(),
                tls,
                acme,
                tls_ca,
            });
        }
    }
    check_acme_names(ctx, sections, &routers, p);
    routers
}

/// A router's certificate over ACME needs the CA's TLS-ALPN-01
/// validation of its name to reach that router: not so when other
/// routers (replicas behind one name) answer for the name too, where each
/// would order its own certificate and the validation would reach any of
/// them.
fn check_acme_names(
    ctx: &Ctx<'_>,
    sections: &[RouterSection],
    routers: &[Router],
    p: &mut Problems,
) {
    for (i, r) in sections.iter().enumerate() {
        let Some(name) = routers
            .iter()
            .find(|m| m.id == r.id)
            .and_then(|m| m.acme.as_deref())
        else {
            continue;
        };
        let shared: Vec<&str> = sections
            .iter()
            .filter(|o| {
                o.id != r.id
                    && crate::http_client::url_host(&o.url)
                        .is_some_and(|h| h.eq_ignore_ascii_case(name))
            })
            .map(|o| o.id.as_str())
            .collect();
        if !shared.is_empty() {
            p.push(
                ctx.cfg,
                at("router", i, &r.id, "url"),
                format!(
                    "{name} is also the name of router(s) {}: an ACME CA's validation of it would reach any of them, and each would order its own certificate; give the routers sharing a name the same tls_cert and tls_key",
                    shared.join(", ")
                ),
            );
        }
    }
}

/// The jurisdictions a router serves: known, around its country, and
/// served by no other router that is not its replica.
fn router_served<'c>(
    ctx: &Ctx<'_>,
    field: &dyn Fn(&str) -> String,
    r: &'c RouterSection,
    country: Option<CountryCode>,
    jurisdictions: &[Jurisdiction],
    served_by: &mut HashMap<JurisdictionIdx, &'c RouterSection>,
    p: &mut Problems,
) -> Vec<JurisdictionIdx> {
    let mut served = Vec::new();
    if r.jurisdictions.is_empty() {
        p.push(
            ctx.cfg,
            field("jurisdictions"),
            "list the jurisdictions this router serves",
        );
    }
    for (k, jid) in r.jurisdictions.iter().enumerate() {
        let f = field(&format!("jurisdictions[{k}]"));
        let Some(j) = ctx.known(jid) else {
            p.push(ctx.cfg, f, format!("'{jid}' is not a jurisdiction"));
            continue;
        };
        if let Some(c) = country {
            if !jurisdictions[j.index()].countries.contains(c) {
                p.push(
                    ctx.cfg,
                    f.clone(),
                    format!(
                        "a router in {c} cannot serve '{jid}': its records would be stored outside the jurisdiction; run a router inside it"
                    ),
                );
            }
        }
        if let Some(other) = served_by.insert(j, r) {
            // Replicas: the same PostgreSQL store, the same jurisdictions.
            let replica = is_postgres(&r.store)
                && other.store == r.store
                && other.jurisdictions == r.jurisdictions;
            if !replica {
                p.push(
                    ctx.cfg,
                    f,
                    format!(
                        "'{jid}' is already served by router '{}'; a jurisdiction has one router, or replicas that share one PostgreSQL store (the same store and the same jurisdictions)",
                        other.id
                    ),
                );
            }
        }
        served.push(j);
    }
    served
}

/// A router's listeners and the URLs participants and relays reach it at.
fn router_addresses(
    ctx: &Ctx<'_>,
    field: &dyn Fn(&str) -> String,
    r: &RouterSection,
    p: &mut Problems,
) -> (Option<SocketAddr>, String, String, Option<SocketAddr>) {
    let listen = r
        .listen
        .parse::<SocketAddr>()
        .map_err(|_| {
            p.push(
                ctx.cfg,
                field("listen"),
                format!("'{}' is not an address; use ip:port", r.listen),
            )
        })
        .ok();
    let url = r.url.trim_end_matches('/').to_owned();
    if !(url.starts_with("http://") || url.starts_with("https://")) {
        p.push(
            ctx.cfg,
            field("url"),
            format!("'{}' is not an http:// or https:// URL", r.url),
        );
    }
    let relay_url = r
        .relay_url
        .as_deref()
        .unwrap_or(&url)
        .trim_end_matches('/')
        .to_owned();
    if crate::http_client::parse_url(&relay_url).is_err() {
        p.push(
            ctx.cfg,
            field(if r.relay_url.is_some() { "relay_url" } else { "url" }),
            format!(
                "relays cannot report to '{relay_url}': set relay_url to the router's https://ip:port on the operator's network"
            ),
        );
    }
    let relay_listen = match &r.relay_listen {
        None => None,
        Some(text) => match text.parse::<SocketAddr>() {
            Err(_) => {
                p.push(
                    ctx.cfg,
                    field("relay_listen"),
                    format!("'{text}' is not an address; use ip:port"),
                );
                None
            }
            Ok(addr) => {
                if listen == Some(addr) {
                    p.push(
                        ctx.cfg,
                        field("relay_listen"),
                        "the relay channel's listener must not be the public one (listen): give it a port of its own",
                    );
                } else if r.relay_url.is_none() {
                    // `url` is the public listener's, where relay
                    // reports are no longer taken.
                    p.push(
                        ctx.cfg,
                        field("relay_url"),
                        format!(
                            "relays report on relay_listen ({addr}): set relay_url to the URL they reach it at (https://ip:{} on the operator's network)",
                            addr.port()
                        ),
                    );
                }
                Some(addr)
            }
        },
    };
    (listen, url, relay_url, relay_listen)
}

/// A router's HTTPS certificate files, or the DNS name it obtains one for
/// over ACME (neither: plain HTTP behind a proxy), and the CA its relays
/// verify it with.
fn router_tls(
    ctx: &Ctx<'_>,
    field: &dyn Fn(&str) -> String,
    r: &RouterSection,
    url: &str,
    relay_url: &str,
    p: &mut Problems,
) -> (Option<(PathBuf, PathBuf)>, Option<String>, Option<PathBuf>) {
    let acme_name = || {
        url.strip_prefix("https://")
            .and_then(|_| crate::http_client::url_host(url))
            .filter(|h| h.parse::<std::net::IpAddr>().is_err() && !url.contains("://["))
            .map(str::to_ascii_lowercase)
    };
    let mut acme = None;
    let tls = match (&r.tls_cert, &r.tls_key, r.plain_http) {
        (Some(cert), Some(key), false) => Some((resolve(ctx.base, cert), resolve(ctx.base, key))),
        (None, None, true) => None,
        (None, None, false) if ctx.acme && acme_name().is_some() => {
            acme = acme_name();
            None
        }
        (_, _, true) => {
            p.push(
                ctx.cfg,
                field("plain_http"),
                "plain_http = true serves no certificate: remove tls_cert and tls_key, or plain_http",
            );
            None
        }
        (cert, _, false) => {
            p.push(
                ctx.cfg,
                field(if cert.is_none() { "tls_cert" } else { "tls_key" }),
                "a router serves HTTPS: give tls_cert and tls_key (PEM files), or [acme] and an https:// url naming a host (its certificate then comes over ACME), or set plain_http = true when a TLS-terminating proxy in front of it does TLS",
            );
            None
        }
    };
    if tls.is_some() || acme.is_some() {
        let mut urls = vec![("url", url)];
        if r.relay_url.is_some() {
            urls.push(("relay_url", relay_url));
        }
        for (f, u) in urls {
            if u.starts_with("http://") {
                p.push(
                    ctx.cfg,
                    field(f),
                    format!("'{u}': the router serves HTTPS, so its URLs are https://"),
                );
            }
        }
    }
    // The file is read where it is used (by relays, at start and on
    // reload), as the machine running `check` may not have it.
    let tls_ca = r.tls_ca.as_ref().map(|c| resolve(ctx.base, c));
    if tls_ca.is_none() && relay_url.starts_with("https://") {
        p.push(
            ctx.cfg,
            field("tls_ca"),
            format!(
                "relays reach this router at {relay_url} and verify its certificate: give tls_ca, the PEM file of the CA that issued it (or the self-signed certificate itself)"
            ),
        );
    }
    (tls, acme, tls_ca)
}

/// A router's public key, which every jurisdiction it serves must trust
/// for tickets.
fn router_public_key(
    ctx: &Ctx<'_>,
    field: &dyn Fn(&str) -> String,
    r: &RouterSection,
    served: &[JurisdictionIdx],
    jurisdictions: &[Jurisdiction],
    ticket_keys: &HashMap<JurisdictionIdx, Vec<ed25519_dalek::VerifyingKey>>,
    p: &mut Problems,
) -> Option<ed25519_dalek::VerifyingKey> {
    let public_key = match crate::ticket::parse_public_key(&r.public_key) {
        Ok(key) => Some(key),
        Err(m) => {
            p.push(
                ctx.cfg,
                field("public_key"),
                format!("{m}; give the public key residency-relay keygen printed for the router's signing key"),
            );
            None
        }
    };
    if let Some(public) = public_key {
        for (k, j) in served.iter().enumerate() {
            let trusted = ticket_keys
                .get(j)
                .is_some_and(|keys| keys.contains(&public));
            if !trusted {
                p.push(
                    ctx.cfg,
                    field(&format!("jurisdictions[{k}]")),
                    format!(
                        "relays in '{}' would refuse this router's tickets: add its public key {} to ticket_keys.{}",
                        jurisdictions[j.index()].id,
                        hex::encode(public.as_bytes()),
                        jurisdictions[j.index()].id
                    ),
                );
            }
        }
    }
    public_key
}

fn is_postgres(store: &str) -> bool {
    store.starts_with("postgres://") || store.starts_with("postgresql://")
}

/// A router's `store`: a SQLite path, or a PostgreSQL URL without a
/// The hosts of a PostgreSQL URL that are not this machine (names other
/// than localhost, addresses other than loopback).
fn remote_hosts(parsed: &tokio_postgres::Config) -> Vec<String> {
    let remote_addr: Vec<String> = parsed
        .get_hostaddrs()
        .iter()
        .filter(|ip| !ip.is_loopback())
        .map(ToString::to_string)
        .collect();
    parsed
        .get_hosts()
        .iter()
        .filter_map(|h| match h {
            tokio_postgres::config::Host::Tcp(name) => {
                let loopback = name == "localhost"
                    || name
                        .parse::<std::net::IpAddr>()
                        .is_ok_and(|ip| ip.is_loopback());
                (!loopback).then(|| name.clone())
            }
            #[cfg(unix)]
            tokio_postgres::config::Host::Unix(_) => None,
        })
        .chain(remote_addr)
        .collect()
}

/// password whose `store_country` is inside every jurisdiction `served`.
fn build_store(
    r: &crate::policy::files::RouterSection,
    base: &Path,
    served: &[JurisdictionIdx],
    jurisdictions: &[Jurisdiction],
    cfg: &Path,
    field: &dyn Fn(&str) -> String,
    p: &mut Problems,
) -> Option<crate::policy::StoreLocation> {
    use crate::policy::{PostgresStore, StoreLocation};
    if !is_postgres(&r.store) {
        let mut ok = true;
        for (name, set) in [
            ("store_country", r.store_country.is_some()),
            ("store_password_file", r.store_password_file.is_some()),
            ("store_ca", r.store_ca.is_some()),
        ] {
            if set {
                p.push(
                    cfg,
                    field(name),
                    "is only for a PostgreSQL store (postgres://…); a SQLite store is on the router's machine",
                );
                ok = false;
            }
        }
        if r.store.trim().is_empty() {
            p.push(
                cfg,
                field("store"),
                "give a SQLite file or a postgres:// URL",
            );
            ok = false;
        }
        return ok.then(|| StoreLocation::Sqlite(resolve(base, Path::new(&r.store))));
    }
    let parsed = match r.store.parse::<tokio_postgres::Config>() {
        Ok(c) => c,
        Err(e) => {
            p.push(cfg, field("store"), format!("is not a PostgreSQL URL: {e}"));
            return None;
        }
    };
    let mut ok = true;
    if parsed.get_password().is_some() {
        p.push(
            cfg,
            field("store"),
            "holds a password: put it in store_password_file or the RR_STORE_PASSWORD environment variable, so it is never in the config or the logs",
        );
        ok = false;
    }
    let country = match r.store_country.as_deref() {
        None => {
            p.push(
                cfg,
                field("store_country"),
                "say where the PostgreSQL store runs (ISO 3166 alpha-2): its records must stay inside every jurisdiction its routers serve",
            );
            None
        }
        Some(c) => parse_country(c)
            .map_err(|m| p.push(cfg, field("store_country"), m))
            .ok(),
    };
    if let Some(c) = country {
        for j in served {
            let jurisdiction = &jurisdictions[j.index()];
            if !jurisdiction.countries.contains(c) {
                p.push(
                    cfg,
                    field("store_country"),
                    format!(
                        "a store in {c} cannot hold the records of '{}': they would be stored outside the jurisdiction; run the database inside it",
                        jurisdiction.id
                    ),
                );
                ok = false;
            }
        }
    }
    // The store holds every record of the jurisdiction: off the router's
    // machine it is reached over TLS with the server verified, or not at all.
    if r.store_ca.is_none() {
        let remote = remote_hosts(&parsed);
        if !remote.is_empty() {
            p.push(
                cfg,
                field("store_ca"),
                format!(
                    "the PostgreSQL store at {} is not on this machine: give the PEM file of the CA of its certificate, so that records travel over TLS to a verified server",
                    remote.join(", ")
                ),
            );
            ok = false;
        }
    }
    let country = country?;
    ok.then(|| {
        StoreLocation::Postgres(PostgresStore {
            url: r.store.clone(),
            country,
            password_file: r.store_password_file.as_ref().map(|f| resolve(base, f)),
            ca: r.store_ca.as_ref().map(|f| resolve(base, f)),
        })
    })
}

fn parse_cidr(text: &str) -> Result<IpNet, String> {
    let net: IpNet = text.parse().map_err(|_| {
        format!("'{text}' is not a CIDR network such as 192.0.2.0/24 or 2001:db8::/32")
    })?;
    if net.trunc() != net {
        return Err(format!(
            "'{text}' has host bits set; did you mean {}?",
            net.trunc()
        ));
    }
    // Clients with IPv4-mapped IPv6 addresses are looked up as IPv4, so a
    // network written in that form is stored as the IPv4 network it means.
    if let IpNet::V6(v6) = net {
        if v6.prefix_len() >= 96 {
            if let Some(v4) = v6.network().to_ipv4_mapped() {
                let v4 = ipnet::Ipv4Net::new(v4, v6.prefix_len() - 96)
                    .map_err(|_| format!("'{text}' is not a usable network"))?;
                return Ok(IpNet::V4(v4));
            }
        }
    }
    Ok(net)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ipv4_mapped_networks_become_ipv4() {
        assert_eq!(
            parse_cidr("::ffff:10.0.0.0/104").unwrap(),
            "10.0.0.0/8".parse::<IpNet>().unwrap()
        );
        assert_eq!(
            parse_cidr("::ffff:192.0.2.7/128").unwrap(),
            "192.0.2.7/32".parse::<IpNet>().unwrap()
        );
        // Wider than the mapped range: stays IPv6.
        assert_eq!(
            parse_cidr("::/64").unwrap(),
            "::/64".parse::<IpNet>().unwrap()
        );
        assert!(
            parse_cidr("::ffff:10.0.0.1/104")
                .unwrap_err()
                .contains("host bits")
        );
    }
}

/// A relay serves WebTransport on its QUIC port: `url` must be `https://`
/// with a host, and its port (443 when absent) the QUIC address's port; a
/// host that is an IP address must be the QUIC address's.
fn check_webtransport_url(url: &str, quic: Option<SocketAddr>) -> Result<(), String> {
    let bad = || format!("'{url}' is not an https:// URL with a host; WebTransport needs https");
    let rest = url.strip_prefix("https://").ok_or_else(bad)?;
    if url.contains(char::is_whitespace) {
        return Err(bad());
    }
    let authority = rest.split(['/', '?', '#']).next().unwrap_or("");
    if authority.is_empty() || authority.contains('@') {
        return Err(bad());
    }
    let (host, port) = match authority.rsplit_once(':') {
        // An IPv6 literal without a port: "[::1]".
        Some((h, p)) if !p.contains(']') => (
            h,
            p.parse::<u16>()
                .map_err(|_| format!("'{url}' has no valid port"))?,
        ),
        _ => (authority, 443),
    };
    if host.is_empty() {
        return Err(bad());
    }
    let Some(quic) = quic else {
        return Ok(());
    };
    if port != quic.port() {
        return Err(format!(
            "'{url}' names port {port}, but the relay serves WebTransport on its QUIC port {}",
            quic.port()
        ));
    }
    let literal = host.trim_start_matches('[').trim_end_matches(']');
    if let Ok(ip) = literal.parse::<std::net::IpAddr>() {
        if ip != quic.ip() {
            return Err(format!(
                "'{url}' names {ip}, but the relay's QUIC address is {}",
                quic.ip()
            ));
        }
    }
    Ok(())
}

#[cfg(test)]
mod webtransport_url_tests {
    use super::check_webtransport_url;

    #[test]
    fn the_url_must_name_the_quic_port_and_address() {
        let quic = Some("127.0.1.1:4433".parse().unwrap());
        assert!(check_webtransport_url("https://127.0.1.1:4433/", quic).is_ok());
        assert!(check_webtransport_url("https://relay.example.net:4433/wt", quic).is_ok());
        let v6 = Some("[2001:db8::1]:443".parse().unwrap());
        assert!(check_webtransport_url("https://[2001:db8::1]/", v6).is_ok());
        assert!(check_webtransport_url("https://relay.example.net/", v6).is_ok());
        for (url, problem) in [
            ("https://127.0.1.1:4434/", "port 4434"),
            ("https://127.0.1.2:4433/", "names 127.0.1.2"),
            ("http://127.0.1.1:4433/", "https"),
            ("https://:4433/", "https"),
            ("https://127.0.1.1:x/", "no valid port"),
            ("https://relay.example.net/", "port 443"),
        ] {
            let e = check_webtransport_url(url, quic).unwrap_err();
            assert!(e.contains(problem), "{url}: {e}");
        }
    }
}
