//! The residency policy model: jurisdictions, relays, plans and tenants.
//!
//! Operators write `regions/*.toml` and `config/*.toml` ([`files`]); [`load`]
//! reads and checks them, reporting every problem at once, and yields a
//! [`Policy`]: an immutable, indexed view that relay selection and plan rules
//! read without touching the clock, the network or the file system.

mod diff;
pub mod files;
mod load;
pub mod plan;
mod source;

use std::collections::HashMap;
use std::fmt;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

pub use diff::diff;
pub use load::{ConfigError, ConfigProblem, load, load_with_regions};
pub use plan::PinError;
pub use source::{ReloadError, Reloaded, Source};

use crate::geo::{CountryCode, CountrySet, GeoIp, GeoPoint, PointSet};

/// Index of a jurisdiction inside one [`Policy`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct JurisdictionIdx(pub(crate) u16);

/// Index of a relay inside one [`Policy`]; relays are ordered by id, so
/// comparing indices compares ids (the deterministic tie-break).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct RelayIdx(pub(crate) u32);

impl RelayIdx {
    /// Position in [`Policy::relays`] and in per-relay state slices.
    pub fn index(self) -> usize {
        self.0 as usize
    }
}

impl JurisdictionIdx {
    /// Position in [`Policy::jurisdictions`].
    pub fn index(self) -> usize {
        usize::from(self.0)
    }
}

/// A named set of countries whose law a conference stays under.
#[derive(Debug, Clone)]
pub struct Jurisdiction {
    pub id: String,
    pub name: String,
    pub legal_basis: String,
    pub countries: CountrySet,
    /// The file it was read from.
    pub source: PathBuf,
    /// Relays whose country is in `countries`, in id order, with what
    /// selection reads, packed together so that ranking a jurisdiction walks
    /// one contiguous array.
    pub members: Vec<Member>,
    /// The position of `members[i]`'s relay, as columns for [`PointSet::distances_km`].
    pub positions: PointSet,
    /// Spherical centre of the member countries' centroids; where a participant
    /// of unknown location is assumed to be.
    pub centre: Option<GeoPoint>,
    /// Operator-chosen relay for participants of unknown location.
    pub default_relay: Option<RelayIdx>,
}

impl Jurisdiction {
    /// Relays inside the jurisdiction, in id order.
    pub fn relays(&self) -> impl ExactSizeIterator<Item = RelayIdx> + '_ {
        self.members.iter().map(|m| m.relay)
    }

    /// Whether `relay` is inside the jurisdiction.
    pub fn contains(&self, relay: RelayIdx) -> bool {
        self.members.iter().any(|m| m.relay == relay)
    }
}

/// A relay as relay selection sees it inside one jurisdiction.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Member {
    pub relay: RelayIdx,
    pub max_participants: u32,
    pub max_bitrate_bps: u64,
    /// `1 / max_participants` and `1 / max_bitrate_bps`: load is two
    /// multiplications instead of two divisions per relay per decision.
    pub inv_max_participants: f64,
    pub inv_max_bitrate_bps: f64,
}

/// A relay from the inventory.
#[derive(Debug, Clone)]
pub struct Relay {
    pub id: String,
    pub country: CountryCode,
    pub position: GeoPoint,
    pub quic_addr: SocketAddr,
    /// What join answers give browsers: the inventory's, or
    /// `https://<quic_addr>/`.
    pub webtransport_url: String,
    /// The WebSocket listener (TLS over TCP): the inventory's, or the QUIC
    /// address over TCP.
    pub websocket_addr: SocketAddr,
    /// What join answers give for WebSocket: the inventory's, or
    /// `wss://<websocket_addr>/ws`.
    pub websocket_url: String,
    /// The WebSocket listener's PEM certificate and key, when configured
    /// (else `tls`, else the self-signed certificate).
    pub websocket_tls: Option<(PathBuf, PathBuf)>,
    /// For the call page ("your media goes through Frankfurt, Germany").
    pub city: Option<String>,
    pub max_participants: u32,
    pub max_bitrate_bps: u64,
    pub http_addr: SocketAddr,
    /// PEM certificate and key files, when configured.
    pub tls: Option<(PathBuf, PathBuf)>,
    /// SHA-256 of the credential it registers with routers.
    pub credential_sha256: Option<[u8; 32]>,
    /// Shards to run; `None`: one per available core. At most [`MAX_WORKERS`].
    pub workers: Option<usize>,
}

/// Most shards a relay runs (the bound of the relay's `shard` metric label).
pub const MAX_WORKERS: usize = 64;

/// A router from the config.
#[derive(Debug, Clone)]
pub struct Router {
    pub id: String,
    pub country: CountryCode,
    pub jurisdictions: Vec<JurisdictionIdx>,
    pub listen: SocketAddr,
    /// Base URL without a trailing slash.
    pub url: String,
    /// Where relays report (`http://ip:port`), without a trailing slash.
    pub relay_url: String,
    /// The relay channel's own listener; `None`: relays report on `listen`.
    pub relay_listen: Option<SocketAddr>,
    pub signing_key: PathBuf,
    /// Public half of `signing_key`.
    pub public_key: ed25519_dalek::VerifyingKey,
    pub store: StoreLocation,
    pub admin_token_sha256: Option<[u8; 32]>,
    /// The records key file; `None`: derived from `signing_key`.
    pub records_key: Option<PathBuf>,
    pub records_key_previous: Vec<PathBuf>,
    /// The certificate and key files it serves HTTPS with; `None`: over
    /// ACME (`acme`), else plain HTTP (`plain_http = true`, behind a
    /// TLS-terminating proxy).
    pub tls: Option<(PathBuf, PathBuf)>,
    /// The DNS name (the host of `url`) it obtains its HTTPS certificate
    /// for over ACME (`[acme]`), when it has no certificate files.
    pub acme: Option<String>,
    /// The CA file relays verify it against (required when `relay_url` is
    /// `https://`).
    pub tls_ca: Option<PathBuf>,
}

impl Router {
    /// Whether it serves HTTPS (from files or over ACME).
    pub fn serves_https(&self) -> bool {
        self.tls.is_some() || self.acme.is_some()
    }

    /// Whom a relay (or a tool) trusts when reaching `relay_url`: the CA
    /// file and the name the certificate must be for (the host of `url`,
    /// the name clients use); `None` for a plain `http://` relay URL.
    pub fn relay_trust(&self) -> Option<(PathBuf, String)> {
        if !self.relay_url.starts_with("https://") {
            return None;
        }
        let host = crate::http_client::url_host(&self.url)?;
        Some((self.tls_ca.clone()?, host.to_owned()))
    }
}

/// Where a router keeps its records.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StoreLocation {
    /// The embedded store, on the router's machine.
    Sqlite(PathBuf),
    /// A PostgreSQL database shared by router replicas.
    Postgres(PostgresStore),
}

/// A PostgreSQL store as configured.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PostgresStore {
    /// Connection URL without a password.
    pub url: String,
    /// Where the database runs.
    pub country: CountryCode,
    pub password_file: Option<PathBuf>,
    pub ca: Option<PathBuf>,
}

impl StoreLocation {
    /// For logs and listings (never holds a password).
    pub fn display(&self) -> String {
        match self {
            StoreLocation::Sqlite(path) => path.display().to_string(),
            StoreLocation::Postgres(pg) => pg.url.clone(),
        }
    }

    /// The SQLite file, if this is one.
    pub fn sqlite(&self) -> Option<&std::path::Path> {
        match self {
            StoreLocation::Sqlite(path) => Some(path),
            StoreLocation::Postgres(_) => None,
        }
    }
}

impl Router {
    pub fn serves(&self, jurisdiction: JurisdictionIdx) -> bool {
        self.jurisdictions.contains(&jurisdiction)
    }
}

/// What a tenant may pin its conferences to.
#[derive(Debug, Clone)]
pub struct Plan {
    pub id: String,
    /// Choosable jurisdictions; empty when the plan may not choose.
    pub jurisdictions: Vec<JurisdictionIdx>,
    /// The pin when the tenant asks for none.
    pub default: JurisdictionIdx,
    pub allow_no_passcode: bool,
    pub waiting_room: bool,
    pub e2ee: files::E2eeRule,
}

impl Plan {
    /// Whether tenants on this plan may choose a jurisdiction at all.
    pub fn may_choose(&self) -> bool {
        !self.jurisdictions.is_empty()
    }
}

/// A customer of the operator.
#[derive(Clone)]
pub struct Tenant {
    pub id: String,
    pub plan: usize,
    /// SHA-256 of the API key.
    pub api_key_sha256: [u8; 32],
    pub waiting_room: Option<bool>,
}

impl fmt::Debug for Tenant {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Tenant")
            .field("id", &self.id)
            .field("plan", &self.plan)
            .finish_non_exhaustive()
    }
}

/// Ranking parameters, checked to be finite and non-negative.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct SelectionParams {
    pub load_penalty_km: f64,
    pub stickiness_km: f64,
}

impl Default for SelectionParams {
    fn default() -> Self {
        let section = files::SelectionSection::default();
        SelectionParams {
            load_penalty_km: section.load_penalty_km,
            stickiness_km: section.stickiness_km,
        }
    }
}

/// The checked policy. Cheap to read from many threads; replaced whole on reload.
#[derive(Debug)]
pub struct Policy {
    source: PathBuf,
    jurisdictions: Vec<Jurisdiction>,
    jurisdiction_by_id: HashMap<String, JurisdictionIdx>,
    relays: Vec<Relay>,
    relay_by_id: HashMap<String, RelayIdx>,
    plans: Vec<Plan>,
    tenants: Vec<Tenant>,
    default_jurisdiction: JurisdictionIdx,
    selection: SelectionParams,
    geoip: GeoIp,
    trusted_proxies: Vec<ipnet::IpNet>,
    ticket_keys: HashMap<JurisdictionIdx, Vec<ed25519_dalek::VerifyingKey>>,
    routers: Vec<Router>,
    logging: Logging,
    limits: files::LimitsSection,
    retention: files::RetentionSection,
    acme: Option<files::AcmeSection>,
}

/// The checked `[logging]` section.
#[derive(Debug, Clone, Default)]
pub struct Logging {
    pub json: bool,
    /// Filter directive (`info` when not configured).
    pub level: String,
    pub full_addresses: Vec<JurisdictionIdx>,
}

impl Policy {
    /// The config file this policy was loaded from.
    pub fn source(&self) -> &Path {
        &self.source
    }

    pub fn jurisdictions(&self) -> &[Jurisdiction] {
        &self.jurisdictions
    }

    pub fn jurisdiction(&self, idx: JurisdictionIdx) -> &Jurisdiction {
        &self.jurisdictions[idx.index()]
    }

    /// Looks a jurisdiction up by its id (e.g. `eu`).
    pub fn jurisdiction_idx(&self, id: &str) -> Option<JurisdictionIdx> {
        self.jurisdiction_by_id.get(id).copied()
    }

    pub fn relays(&self) -> &[Relay] {
        &self.relays
    }

    pub fn relay(&self, idx: RelayIdx) -> &Relay {
        &self.relays[idx.index()]
    }

    pub fn relay_idx(&self, id: &str) -> Option<RelayIdx> {
        self.relay_by_id.get(id).copied()
    }

    /// Every jurisdiction a relay belongs to (those whose countries hold its country).
    pub fn jurisdictions_of(&self, relay: RelayIdx) -> impl Iterator<Item = &Jurisdiction> {
        let country = self.relay(relay).country;
        self.jurisdictions
            .iter()
            .filter(move |j| j.countries.contains(country))
    }

    pub fn plans(&self) -> &[Plan] {
        &self.plans
    }

    pub fn plan(&self, id: &str) -> Option<&Plan> {
        self.plans.iter().find(|p| p.id == id)
    }

    pub fn tenants(&self) -> &[Tenant] {
        &self.tenants
    }

    pub fn tenant(&self, id: &str) -> Option<&Tenant> {
        self.tenants.iter().find(|t| t.id == id)
    }

    /// The plan a tenant is on.
    pub fn plan_of(&self, tenant: &Tenant) -> &Plan {
        &self.plans[tenant.plan]
    }

    /// The operator default jurisdiction.
    pub fn default_jurisdiction(&self) -> JurisdictionIdx {
        self.default_jurisdiction
    }

    pub fn selection(&self) -> SelectionParams {
        self.selection
    }

    /// Locator built from the `[geoip]` section.
    pub fn geoip(&self) -> &GeoIp {
        &self.geoip
    }

    /// Networks whose `X-Forwarded-For` is believed.
    pub fn trusted_proxies(&self) -> &[ipnet::IpNet] {
        &self.trusted_proxies
    }

    /// Public keys whose tickets are accepted for `jurisdiction`.
    pub fn ticket_keys(&self, jurisdiction: JurisdictionIdx) -> &[ed25519_dalek::VerifyingKey] {
        self.ticket_keys
            .get(&jurisdiction)
            .map_or(&[], Vec::as_slice)
    }

    /// The `[limits]` section (checked to be non-zero).
    pub fn limits(&self) -> &files::LimitsSection {
        &self.limits
    }

    /// The `[retention]` section (checked: non-zero, and conferences kept
    /// at least as long as any of their details).
    pub fn retention(&self) -> &files::RetentionSection {
        &self.retention
    }

    /// The `[acme]` section, paths resolved against the config's folder.
    pub fn acme(&self) -> Option<&files::AcmeSection> {
        self.acme.as_ref()
    }

    pub fn logging(&self) -> &Logging {
        &self.logging
    }

    /// Whether logs about a conference of `jurisdiction` (an id) may show
    /// full client addresses.
    /// The ids of the jurisdictions whose logs may show full client addresses.
    pub fn full_address_jurisdictions(&self) -> Vec<String> {
        self.logging
            .full_addresses
            .iter()
            .map(|j| self.jurisdiction(*j).id.clone())
            .collect()
    }

    pub fn full_addresses(&self, jurisdiction: &str) -> bool {
        self.jurisdiction_idx(jurisdiction)
            .is_some_and(|j| self.logging.full_addresses.contains(&j))
    }

    pub fn routers(&self) -> &[Router] {
        &self.routers
    }

    pub fn router(&self, id: &str) -> Option<&Router> {
        self.routers.iter().find(|r| r.id == id)
    }

    /// The router that serves `jurisdiction`, if one is configured (the
    /// first of its replicas).
    pub fn router_for(&self, jurisdiction: JurisdictionIdx) -> Option<&Router> {
        self.routers.iter().find(|r| r.serves(jurisdiction))
    }

    /// `router` and the other replicas sharing its store, in config order
    /// (just `router` on a SQLite store).
    pub fn replicas<'a>(&'a self, router: &'a Router) -> Vec<&'a Router> {
        match &router.store {
            StoreLocation::Sqlite(_) => vec![router],
            StoreLocation::Postgres(_) => self
                .routers
                .iter()
                .filter(|r| r.store == router.store)
                .collect(),
        }
    }

    /// Whether a tenant's new conferences get a waiting room by default.
    pub fn waiting_room_default(&self, tenant: &Tenant) -> bool {
        tenant
            .waiting_room
            .unwrap_or(self.plan_of(tenant).waiting_room)
    }

    /// The ticket verifier for `relay`: it trusts, for each jurisdiction the
    /// relay is in, that jurisdiction's keys, and knows no other jurisdiction.
    pub fn ticket_verifier(&self, relay: RelayIdx) -> crate::ticket::Verifier {
        let trusted = self
            .jurisdictions_of(relay)
            .map(|j| {
                let idx = self.jurisdiction_by_id[&j.id];
                (j.id.clone(), self.ticket_keys(idx).to_vec())
            })
            .collect();
        let peers = self
            .relays
            .iter()
            .enumerate()
            .filter(|(i, _)| *i != relay.index())
            .map(|(i, r)| {
                let jurisdictions = self
                    .jurisdictions_of(RelayIdx(i as u32))
                    .map(|j| j.id.clone())
                    .collect();
                (
                    r.id.clone(),
                    crate::ticket::Peer {
                        ip: r.quic_addr.ip().to_canonical(),
                        addr: r.quic_addr,
                        jurisdictions,
                    },
                )
            })
            .collect();
        let known = self
            .jurisdiction_by_id
            .iter()
            .map(|(id, idx)| (id.clone(), self.ticket_keys(*idx).to_vec()))
            .collect();
        crate::ticket::Verifier::new(self.relay(relay).id.clone(), trusted)
            .with_peers(peers)
            .with_known_keys(known)
    }
}
