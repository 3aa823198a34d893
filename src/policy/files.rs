//! The operator's files as written: `regions/<id>.toml` and `config/*.toml`.
//!
//! These structs mirror the TOML one to one (`deny_unknown_fields`, so a typo is
//! an error, not a silently ignored setting). Nothing here is trusted yet:
//! [`super::load`] turns them into a checked [`super::Policy`].

use std::collections::BTreeMap;
use std::path::PathBuf;

use serde::Deserialize;

/// `regions/<id>.toml`: one jurisdiction.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RegionFile {
    /// Short id used in conference ids and API calls, e.g. `eu`. Must match the file name.
    pub id: String,
    /// Display name, e.g. "European Union and EEA".
    pub name: String,
    /// Free text naming the law this jurisdiction answers to, e.g. "GDPR".
    pub legal_basis: String,
    /// ISO 3166-1 alpha-2 codes of the member countries.
    #[serde(default)]
    pub countries: Vec<String>,
    /// `true` for a jurisdiction of every ISO country (then `countries` stays empty).
    #[serde(default)]
    pub all_countries: bool,
}

/// `config/*.toml`: inventory, tenants, plans and GeoIP settings.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ConfigFile {
    /// Directory of region files, relative to the config file. Default `../regions`.
    pub regions_dir: Option<PathBuf>,
    /// Jurisdiction for tenants whose plan may not choose.
    pub default_jurisdiction: String,
    /// Jurisdiction id → relay id used for participants whose location is unknown.
    #[serde(default)]
    pub default_relay: BTreeMap<String, String>,
    /// Jurisdiction id → Ed25519 public keys (hex or base64url) whose tickets
    /// relays in that jurisdiction accept: the keys of its routers.
    #[serde(default)]
    pub ticket_keys: BTreeMap<String, Vec<String>>,
    #[serde(default)]
    pub selection: SelectionSection,
    #[serde(default)]
    pub geoip: GeoIpSection,
    #[serde(default, rename = "relay")]
    pub relays: Vec<RelaySection>,
    #[serde(default, rename = "plan")]
    pub plans: Vec<PlanSection>,
    #[serde(default, rename = "tenant")]
    pub tenants: Vec<TenantSection>,
    #[serde(default, rename = "router")]
    pub routers: Vec<RouterSection>,
    #[serde(default)]
    pub logging: LoggingSection,
    #[serde(default)]
    pub limits: LimitsSection,
    #[serde(default)]
    pub retention: RetentionSection,
    /// Certificates over ACME for relays whose `websocket_url` names a
    /// host (and that have no certificate files).
    pub acme: Option<AcmeSection>,
}

/// `[acme]`: where relays given a DNS name get their WebSocket
/// certificate (RFC 8555), and where they keep it.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AcmeSection {
    /// The CA's directory URL (`https://…`).
    pub directory: String,
    /// Contact URLs for the account (`mailto:…`).
    #[serde(default)]
    pub contact: Vec<String>,
    /// Where the account key and certificates are kept (relative to the
    /// config file); each relay uses `<state_dir>/<relay id>/`.
    pub state_dir: PathBuf,
    /// PEM file of the roots that the directory's HTTPS certificate chains
    /// to; default: the system's (`/etc/ssl/certs/ca-certificates.crt`).
    pub ca_file: Option<PathBuf>,
}

/// `[retention]`: how long a router keeps records once their conference
/// has ended, in days. Records of a conference still running are kept.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RetentionSection {
    /// Participant rows (display names, address hashes, roles), bans and
    /// invitations (which name their holder).
    pub participants_days: u32,
    /// Audit lines.
    pub audit_days: u32,
    /// Abuse reports hosts filed about a conference's participants.
    pub abuse_reports_days: u32,
    /// The conference record itself and the relays and links that carried
    /// it: what its residency report is made of (no personal data). At
    /// least every other period above.
    pub conferences_days: u32,
    /// Rows deleted per statement: each batch is one short transaction, so
    /// joins wait at most one batch for the store.
    pub purge_batch: u32,
    /// Seconds between purge runs.
    pub purge_interval_secs: u32,
}

impl Default for RetentionSection {
    fn default() -> Self {
        RetentionSection {
            participants_days: 30,
            audit_days: 30,
            abuse_reports_days: 90,
            conferences_days: 90,
            purge_batch: 1000,
            purge_interval_secs: 300,
        }
    }
}

/// `[limits]`: what one address, one conference and one relay may take.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LimitsSection {
    /// Failed joins (wrong passcode, bad invitation) per address per minute.
    pub failed_joins_per_address: u32,
    /// Failed joins per conference per minute, from all addresses.
    pub failed_joins_per_conference: u32,
    /// Join requests per address per minute, failed or not.
    pub joins_per_address_per_minute: u32,
    /// Participants one conference may have, over all its relays.
    pub conference_max_participants: u32,
    /// Connections a relay accepts from one address at once (counted once
    /// the handshake completes).
    pub relay_connections_per_address: u32,
    /// Handshakes in progress on a relay above which new connections must
    /// prove their address with a Retry token first (0: always).
    pub relay_unvalidated_handshakes: u32,
    /// Open HTTP connections per listener (lowered to fit the process's
    /// file-descriptor limit).
    pub http_connections_per_listener: u32,
    /// Open HTTP connections per source address (IPv6: per /64); trusted
    /// proxies are exempt.
    pub http_connections_per_address: u32,
    /// Seconds for a request's head to arrive.
    pub http_header_timeout_secs: u32,
    /// Seconds for a request's body to arrive, from its head.
    pub http_body_timeout_secs: u32,
    /// Seconds a keep-alive connection may sit idle.
    pub http_idle_timeout_secs: u32,
    /// `publish` and `unpublish` (announced to every member) a participant
    /// may send per second, and in one burst.
    pub announcements_per_second: u32,
    pub announcement_burst: u32,
    /// `subscribe` and `unsubscribe` a participant may send per second, and
    /// in one burst (a newcomer subscribes to every track at once).
    pub subscriptions_per_second: u32,
    pub subscription_burst: u32,
    /// Seconds a rejoin token stays valid after the join that issued it.
    pub rejoin_token_secs: u32,
}

impl Default for LimitsSection {
    fn default() -> Self {
        LimitsSection {
            failed_joins_per_address: 5,
            failed_joins_per_conference: 20,
            joins_per_address_per_minute: 120,
            conference_max_participants: 1000,
            relay_connections_per_address: 200,
            relay_unvalidated_handshakes: 64,
            http_connections_per_listener: 1024,
            http_connections_per_address: 32,
            http_header_timeout_secs: 5,
            http_body_timeout_secs: 10,
            http_idle_timeout_secs: 30,
            announcements_per_second: 5,
            announcement_burst: 20,
            subscriptions_per_second: 200,
            subscription_burst: 2000,
            rejoin_token_secs: 12 * 3600,
        }
    }
}

/// `[logging]`: how routers and relays log.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LoggingSection {
    /// `human` (default) or `json` (one object per line).
    pub format: Option<String>,
    /// Default level or filter (`info`, `debug`, `residency_relay=debug`);
    /// `RUST_LOG` overrides it.
    pub level: Option<String>,
    /// Jurisdictions whose logs may show full client addresses (otherwise
    /// /24 or /48 prefixes only).
    #[serde(default)]
    pub full_addresses: Vec<String>,
}

/// `[[router]]`: a control-plane process serving some jurisdictions.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RouterSection {
    pub id: String,
    /// Where the router runs; every jurisdiction it serves must contain it.
    pub country: String,
    /// Jurisdictions whose conferences this router creates, stores and joins.
    pub jurisdictions: Vec<String>,
    /// `host:port` the HTTP API listens on.
    pub listen: String,
    /// Base URL clients use to reach it (`http://…` or `https://…`).
    pub url: String,
    /// Base URL relays report to, `http://ip:port` on the operator's
    /// network. Default: `url`, which must then be of that form.
    pub relay_url: Option<String>,
    /// `host:port` of a listener of its own for the relay channel, on the
    /// operator's network (then `relay_url` names it and the public
    /// listener no longer takes relay reports): no load on the public API
    /// can keep relays from reporting. Default: relays report on `listen`.
    pub relay_listen: Option<String>,
    /// Ed25519 signing key file (hex or base64url) for its tickets, relative
    /// to the config file. Read by the router process only (so `check` runs
    /// where the secret is not); it must match `public_key`.
    pub signing_key: PathBuf,
    /// The signing key's public half (hex or base64url, as `keygen` prints
    /// it). It must be in `ticket_keys` of every jurisdiction the router serves.
    pub public_key: String,
    /// Where its conference records and audit log live: a SQLite file
    /// (relative to the config file), or a PostgreSQL URL
    /// (`postgres://user@host:port/db`, no password in it) shared by router
    /// replicas.
    pub store: String,
    /// Where a PostgreSQL store runs (ISO 3166 alpha-2); it must be inside
    /// every jurisdiction its routers serve. Required for PostgreSQL; a
    /// SQLite store is on the router's machine.
    pub store_country: Option<String>,
    /// File holding the PostgreSQL password (relative to the config file);
    /// else the `RR_STORE_PASSWORD` environment variable, if set.
    pub store_password_file: Option<PathBuf>,
    /// PEM file of the CA that signed the PostgreSQL server's certificate:
    /// the connection then uses TLS and verifies the server's name.
    pub store_ca: Option<PathBuf>,
    /// Lower-case hex SHA-256 of the operator's admin token (abuse reports,
    /// audit log). Without one the admin endpoints answer 403.
    pub admin_token_sha256: Option<String>,
    /// File holding the records key (64 hex digits, as `keygen
    /// --records-key` writes; relative to the config file) that keys every
    /// address and passcode hash in the store. Default: derived from
    /// `signing_key`. Never in the store; replicas of one store need the
    /// same key.
    pub records_key: Option<PathBuf>,
    /// Earlier records key files, still accepted for the hashes made with
    /// them (bans, passcodes) while they are listed.
    #[serde(default)]
    pub records_key_previous: Vec<PathBuf>,
    /// PEM certificate chain (end-entity first) the router serves HTTPS
    /// with, relative to the config file; read by the router process only,
    /// again on every reload. Without it (and `tls_key`), a router whose
    /// `url` is `https://` and names a host gets its certificate over ACME
    /// when the config has `[acme]`.
    pub tls_cert: Option<PathBuf>,
    /// PEM private key of `tls_cert`.
    pub tls_key: Option<PathBuf>,
    /// PEM file of the CA certificate(s) that relays verify the router's
    /// certificate against, for the host name of `url`: an internal CA,
    /// the system's public CA bundle, or a self-signed `tls_cert` itself.
    pub tls_ca: Option<PathBuf>,
    /// Serve plain HTTP (a TLS-terminating proxy in front of it does TLS).
    /// Explicit, and `check` warns about it.
    #[serde(default)]
    pub plain_http: bool,
}

/// `[selection]`: how relays are ranked.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SelectionSection {
    /// Kilometres added to a relay's score at 100 % load (scaled linearly below).
    #[serde(default = "default_load_penalty_km")]
    pub load_penalty_km: f64,
    /// A relay already hosting the conference is kept unless another is nearer
    /// (in score) by more than this many kilometres.
    #[serde(default = "default_stickiness_km")]
    pub stickiness_km: f64,
}

fn default_load_penalty_km() -> f64 {
    1000.0
}

fn default_stickiness_km() -> f64 {
    300.0
}

impl Default for SelectionSection {
    fn default() -> Self {
        SelectionSection {
            load_penalty_km: default_load_penalty_km(),
            stickiness_km: default_stickiness_km(),
        }
    }
}

/// `[geoip]`.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GeoIpSection {
    /// MaxMind DB file (GeoIP2/GeoLite2 Country or City, DB-IP Lite, or a
    /// `country_code` database), relative to the config file.
    pub database: Option<PathBuf>,
    /// Networks whose `X-Forwarded-For` header is believed (used by the router).
    #[serde(default)]
    pub trusted_proxies: Vec<String>,
    /// CIDR → country mappings consulted before the database.
    #[serde(default, rename = "override")]
    pub overrides: Vec<OverrideSection>,
}

/// `[[geoip.override]]`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OverrideSection {
    pub cidr: String,
    pub country: String,
    /// Optional position; the country centroid otherwise.
    pub latitude: Option<f64>,
    pub longitude: Option<f64>,
}

/// `[[relay]]`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RelaySection {
    pub id: String,
    pub country: String,
    pub latitude: f64,
    pub longitude: f64,
    /// `host:port` of the QUIC listener.
    pub quic_addr: String,
    /// `https://…` URL of the WebTransport endpoint browsers are given:
    /// the relay's QUIC port (default `https://<quic_addr>/`).
    pub webtransport_url: Option<String>,
    /// `ip:port` of the WebSocket listener (TLS over TCP) for participants
    /// whose network blocks UDP; default: the QUIC address, over TCP.
    pub websocket_addr: Option<String>,
    /// `wss://…` URL participants are given for it; default
    /// `wss://<websocket_addr>/ws`.
    pub websocket_url: Option<String>,
    /// PEM certificate chain and key the WebSocket listener serves (one
    /// browsers trust: WebSocket has no certificate pinning); default
    /// `tls_cert`/`tls_key`, else the relay's self-signed certificate,
    /// which only clients that pin it accept.
    pub websocket_tls_cert: Option<std::path::PathBuf>,
    pub websocket_tls_key: Option<std::path::PathBuf>,
    /// Where the relay stands, as the call page names it ("Frankfurt").
    pub city: Option<String>,
    pub max_participants: u32,
    pub max_bitrate_bps: u64,
    /// HTTP listener for /metrics, /healthz, /readyz. Default: the QUIC
    /// address's IP, port 9090.
    pub http_addr: Option<String>,
    /// PEM certificate chain and key; without them a self-signed
    /// certificate is made at start (development) and its SHA-256 logged.
    pub tls_cert: Option<std::path::PathBuf>,
    pub tls_key: Option<std::path::PathBuf>,
    /// Lower-case hex SHA-256 of the credential the relay presents to its
    /// routers. Without one the relay cannot register and gets no joins.
    pub credential_sha256: Option<String>,
    /// Shards (core tasks) the relay runs; default one per available core.
    /// `relay --workers N` overrides it.
    pub workers: Option<usize>,
}

/// `[[plan]]`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PlanSection {
    pub id: String,
    /// Jurisdictions a tenant on this plan may pin a conference to. Empty: the
    /// plan may not choose and gets the operator default.
    #[serde(default)]
    pub jurisdictions: Vec<String>,
    /// Pin used when a tenant does not ask for one. Defaults to the operator default.
    pub default: Option<String>,
    /// Whether tenants on this plan may create conferences without a
    /// passcode (joins then need an invitation).
    #[serde(default)]
    pub allow_no_passcode: bool,
    /// Whether new conferences have a waiting room unless the request says otherwise.
    #[serde(default)]
    pub waiting_room: bool,
    /// Whether conferences of this plan are end-to-end encrypted.
    #[serde(default)]
    pub e2ee: E2eeRule,
}

/// `[[plan]] e2ee`: whether a plan's conferences are end-to-end encrypted.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum E2eeRule {
    /// Every conference is; a request for one that is not is refused.
    Required,
    /// The tenant chooses per conference (`"e2ee": true`); not by default.
    #[default]
    Optional,
    /// None is; a request for one is refused.
    Off,
}

impl E2eeRule {
    pub fn as_str(self) -> &'static str {
        match self {
            E2eeRule::Required => "required",
            E2eeRule::Optional => "optional",
            E2eeRule::Off => "off",
        }
    }
}

/// `[[tenant]]`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TenantSection {
    pub id: String,
    pub plan: String,
    /// Lower-case hex SHA-256 of the tenant's API key; the key itself is never stored.
    pub api_key_sha256: String,
    /// Overrides the plan's `waiting_room` default for this tenant.
    pub waiting_room: Option<bool>,
}
