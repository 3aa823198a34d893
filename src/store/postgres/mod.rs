//! [`Store`] on PostgreSQL, shared by the router replicas of a group of
//! jurisdictions, and the state those replicas must agree on besides the
//! records.
//!
//! Any replica answers any request, so everything one replica decides that
//! another may need lives here, each piece with the pattern that keeps
//! replicas correct when two act at once or one dies:
//!
//! - **Records** (conferences, invitations, participants, bans, abuse
//!   reports, the audit log, relay and link use): the same transactions as
//!   the SQLite store, written before the request is answered, so nothing a
//!   replica answered is lost when it dies. Conditional updates (an
//!   invitation used once, a status moved only from the state it was in, a
//!   kicked participant never rejoined) are single statements whose `WHERE`
//!   makes the race safe under PostgreSQL's row locks. Audit lines are not
//!   batched: each is written with the request that caused it. A join by
//!   passcode is one statement; a join's relay use is written at most once
//!   a second per conference, relay and replica (its `last_seen` is in
//!   seconds), since every join of a conference would otherwise update,
//!   and lock until commit, the same row.
//! - **Relay reports** (`relay_reports`): whichever replica a relay reports
//!   to upserts its last report with a fresh `version` from a sequence; the
//!   others read rows newer than the last version they saw every quarter
//!   second. Staleness (`STALE_AFTER`, 3 s) counts from when the database
//!   received the row, by the database's clock (`now() - received`), so
//!   replicas' clocks never need to agree.
//! - **Commands to relays** (`relay_commands`): numbered per relay from a
//!   counter row (`relay_command_seq`) locked by the inserting transaction,
//!   so numbers commit in order and a relay's acknowledgement of `n` means
//!   every command up to `n`; any replica may insert one and `NOTIFY`s
//!   `rr_commands`; the replica the relay's report is held on wakes and
//!   delivers it; an acknowledged command is deleted by whichever replica
//!   receives the acknowledgement. The numbering's epoch is the store's
//!   (`meta.command_epoch`), so a relay switching replicas keeps its place.
//! - **Placements** (`placements`): the first relay a conference was given.
//!   The first writer wins (`INSERT … ON CONFLICT DO UPDATE … WHERE` the
//!   existing row is stale), so two first joins racing on two replicas
//!   agree on one relay.
//! - **Link planning** (`leases`): one replica plans cascade links and
//!   residency moves at a time, under a lease it renews every quarter
//!   second. Taking a lease over raises its `term`; every command the
//!   planner issues is inserted in a transaction that first locks the lease
//!   row `FOR SHARE` and checks it still holds that term, so a planner that
//!   lost its lease (paused, partitioned) cannot command a link after the
//!   new one has started: the fencing is done by the database that holds
//!   the commands.
//! - **Rate limits** stay in each replica's memory, each enforcing its share
//!   of the limit (see the router's `limits`): a limit must hold when the
//!   store is slow or down, which is when floods arrive.
//!
//! Times in records are Unix seconds from the replica that wrote them, as in
//! SQLite; leases and placements use the database's clock (`now()`), the
//! one clock every replica shares.

use std::path::Path;

use std::time::Duration;

use deadpool_postgres::{Manager, ManagerConfig, Pool, RecyclingMethod};
use tokio_postgres::error::SqlState;
use tokio_postgres::types::ToSql;
use tracing::info;

use super::{
    AbuseReport, AuditEvent, Ban, ConferenceRecord, InviteRecord, InviteRefusal, KeyBinding,
    LinkUsage, LinkUse, ParticipantRecord, PasscodeHash, PurgeCutoffs, Purged, RelayUse, Role,
    Status, Store, StoreError, Usage,
};
use crate::secret::{RecordsKey, RecordsKeys};

mod replicas;
pub use replicas::StoredReport;

/// Schema version this code writes (`meta.schema_version`).
/// 2: address and passcode hashes are keyed with the records key
/// (`meta.records_key_id`); an older router would no longer match them.
const SCHEMA_VERSION: i64 = 2;

const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value BYTEA NOT NULL);
CREATE TABLE IF NOT EXISTS conferences (
    id TEXT PRIMARY KEY,
    tenant TEXT NOT NULL,
    jurisdiction TEXT NOT NULL,
    passcode_salt BYTEA,
    passcode_sha256 BYTEA,
    host_token_sha256 BYTEA NOT NULL,
    locked BOOLEAN NOT NULL,
    waiting_room BOOLEAN NOT NULL,
    created BIGINT NOT NULL,
    ended BIGINT,
    e2ee BOOLEAN NOT NULL DEFAULT FALSE
);
CREATE TABLE IF NOT EXISTS invites (
    token_sha256 BYTEA PRIMARY KEY,
    conference TEXT NOT NULL,
    participant_id TEXT NOT NULL,
    display_name TEXT NOT NULL,
    role TEXT NOT NULL,
    expires BIGINT NOT NULL,
    used BOOLEAN NOT NULL DEFAULT FALSE
);
CREATE TABLE IF NOT EXISTS participants (
    conference TEXT NOT NULL,
    id TEXT NOT NULL,
    display_name TEXT NOT NULL,
    role TEXT NOT NULL,
    status TEXT NOT NULL,
    address_hash BYTEA NOT NULL,
    invite_sha256 BYTEA,
    wait_token_sha256 BYTEA,
    rejoin_sha256 BYTEA,
    relay TEXT,
    created BIGINT NOT NULL,
    PRIMARY KEY (conference, id)
);
CREATE INDEX IF NOT EXISTS participants_status ON participants (conference, status);
CREATE TABLE IF NOT EXISTS bans (
    id BIGSERIAL PRIMARY KEY,
    conference TEXT NOT NULL,
    participant_id TEXT NOT NULL,
    address_hash BYTEA NOT NULL,
    invite_sha256 BYTEA,
    created BIGINT NOT NULL
);
CREATE INDEX IF NOT EXISTS bans_conference ON bans (conference);
CREATE INDEX IF NOT EXISTS conferences_ended ON conferences (ended);
CREATE INDEX IF NOT EXISTS invites_conference ON invites (conference);
CREATE TABLE IF NOT EXISTS abuse_reports (
    id BIGSERIAL PRIMARY KEY,
    conference TEXT NOT NULL,
    participant_id TEXT NOT NULL,
    reason TEXT NOT NULL,
    created BIGINT NOT NULL
);
CREATE INDEX IF NOT EXISTS abuse_reports_conference ON abuse_reports (conference);
CREATE TABLE IF NOT EXISTS audit (
    id BIGSERIAL PRIMARY KEY,
    time BIGINT NOT NULL,
    conference TEXT NOT NULL,
    event TEXT NOT NULL,
    detail TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS audit_conference ON audit (conference, id);
CREATE TABLE IF NOT EXISTS conference_relays (
    conference TEXT NOT NULL,
    relay TEXT NOT NULL,
    first_seen BIGINT NOT NULL,
    last_seen BIGINT NOT NULL,
    bytes_in BIGINT NOT NULL DEFAULT 0,
    bytes_out BIGINT NOT NULL DEFAULT 0,
    peak_participants BIGINT NOT NULL DEFAULT 0,
    countries TEXT NOT NULL DEFAULT '',
    outside BOOLEAN NOT NULL DEFAULT FALSE,
    PRIMARY KEY (conference, relay)
);
CREATE TABLE IF NOT EXISTS conference_links (
    conference TEXT NOT NULL,
    relay TEXT NOT NULL,
    peer TEXT NOT NULL,
    first_seen BIGINT NOT NULL,
    last_seen BIGINT NOT NULL,
    bytes_in BIGINT NOT NULL DEFAULT 0,
    bytes_out BIGINT NOT NULL DEFAULT 0,
    PRIMARY KEY (conference, relay, peer)
);
CREATE SEQUENCE IF NOT EXISTS relay_report_version;
CREATE TABLE IF NOT EXISTS relay_reports (
    relay TEXT PRIMARY KEY,
    router TEXT NOT NULL,
    report TEXT NOT NULL,
    version BIGINT NOT NULL,
    received TIMESTAMPTZ NOT NULL
);
CREATE INDEX IF NOT EXISTS relay_reports_version ON relay_reports (version);
CREATE TABLE IF NOT EXISTS relay_command_seq (relay TEXT PRIMARY KEY, last BIGINT NOT NULL);
CREATE TABLE IF NOT EXISTS relay_commands (
    relay TEXT NOT NULL,
    seq BIGINT NOT NULL,
    action TEXT NOT NULL,
    PRIMARY KEY (relay, seq)
);
CREATE TABLE IF NOT EXISTS placements (
    conference TEXT PRIMARY KEY,
    relay TEXT NOT NULL,
    at TIMESTAMPTZ NOT NULL
);
CREATE TABLE IF NOT EXISTS leases (
    name TEXT PRIMARY KEY,
    holder TEXT NOT NULL,
    term BIGINT NOT NULL,
    expires TIMESTAMPTZ NOT NULL
);
";

/// How long a request waits for a connection, or for one to be made: past
/// it the store counts as unavailable and joins answer 503 at once.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(1);

/// How to reach the database.
#[derive(Clone)]
pub struct Options {
    /// `postgres://user@host:port/db?…` or `host=… dbname=…`, without a
    /// password (config refuses one there).
    pub url: String,
    pub password: Option<String>,
    /// PEM file of the CA that signed the server's certificate: connections
    /// then use TLS (rustls) and verify the server's name against it.
    pub ca: Option<std::path::PathBuf>,
    /// Connections in the pool.
    pub pool_size: usize,
}

impl std::fmt::Debug for Options {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Options")
            .field("url", &self.url)
            .field("password", &self.password.as_ref().map(|_| "(hidden)"))
            .field("ca", &self.ca)
            .field("pool_size", &self.pool_size)
            .finish()
    }
}

#[derive(Clone)]
enum Tls {
    None,
    Rustls(tokio_postgres_rustls::MakeRustlsConnect),
}

/// The PostgreSQL store of a group of router replicas.
pub struct Postgres {
    pool: Pool,
    config: tokio_postgres::Config,
    tls: Tls,
    /// Where it is, for logs (no password).
    url: String,
    command_epoch: u64,
    /// (conference, relay, country) → the second this replica last wrote
    /// it to `conference_relays` in a join: every join of a conference on
    /// one relay would otherwise update that one row, and the row lock,
    /// held to each join's commit, serialises them (measured: 12 ms per
    /// join at 32 concurrent). `last_seen` is in seconds, so a second
    /// write within the same second changes nothing.
    noted: std::sync::Mutex<std::collections::HashMap<(String, String, String), i64>>,
}

/// Entries of [`Postgres::noted`] before it is cleared.
const MAX_NOTED: usize = 100_000;

impl std::fmt::Debug for Postgres {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Postgres")
            .field("url", &self.url)
            .finish_non_exhaustive()
    }
}

/// Whether an error means the database could not be reached (as opposed to
/// a statement it refused).
fn is_unavailable(e: &tokio_postgres::Error) -> bool {
    if e.is_closed() {
        return true;
    }
    match e.code() {
        None => e.as_db_error().is_none(),
        Some(code) => {
            code.code().starts_with("08")
                || *code == SqlState::ADMIN_SHUTDOWN
                || *code == SqlState::CRASH_SHUTDOWN
                || *code == SqlState::CANNOT_CONNECT_NOW
                || *code == SqlState::TOO_MANY_CONNECTIONS
                || *code == SqlState::QUERY_CANCELED
        }
    }
}

fn err(e: tokio_postgres::Error) -> StoreError {
    // The causes too: "error performing TLS handshake" alone does not say
    // that the server's certificate was refused.
    let mut text = e.to_string();
    let mut source = std::error::Error::source(&e);
    while let Some(cause) = source {
        text.push_str(&format!(": {cause}"));
        source = cause.source();
    }
    if is_unavailable(&e) {
        StoreError::unavailable(format!("database unavailable: {text}"))
    } else {
        StoreError::new(format!("database: {text}"))
    }
}

fn pool_err(e: deadpool_postgres::PoolError) -> StoreError {
    use deadpool_postgres::PoolError;
    match e {
        PoolError::Backend(e) => err(e),
        other => StoreError::unavailable(format!("database unavailable: {other}")),
    }
}

/// Replaces every 32-byte value of `column` in `table` by `f` of it, in
/// `tx` (one statement: old and new values as two arrays); returns how many
/// rows changed. Values are distinct per address or passcode, so mapping
/// by value is mapping by row.
async fn rekey_column(
    tx: &deadpool_postgres::Transaction<'_>,
    table: &str,
    column: &str,
    f: impl Fn(&[u8; 32]) -> [u8; 32],
) -> Result<u64, StoreError> {
    let old: Vec<Vec<u8>> = tx
        .query(
            &format!("SELECT DISTINCT {column} FROM {table} WHERE {column} IS NOT NULL"),
            &[],
        )
        .await
        .map_err(err)?
        .into_iter()
        .map(|r| r.get::<_, Vec<u8>>(0))
        .filter(|v| v.len() == 32)
        .collect();
    let new: Vec<Vec<u8>> = old
        .iter()
        .filter_map(|v| blob32(Some(v.clone())))
        .map(|v| f(&v).to_vec())
        .collect();
    tx.execute(
        &format!(
            "UPDATE {table} AS t SET {column} = m.new
             FROM unnest($1::bytea[], $2::bytea[]) AS m(old, new)
             WHERE t.{column} = m.old"
        ),
        &[&old, &new],
    )
    .await
    .map_err(err)
}

fn blob32(v: Option<Vec<u8>>) -> Option<[u8; 32]> {
    v.and_then(|b| b.try_into().ok())
}

fn rustls_config(ca: &Path) -> Result<rustls::ClientConfig, StoreError> {
    use rustls::pki_types::CertificateDer;
    use rustls::pki_types::pem::PemObject;
    let mut roots = rustls::RootCertStore::empty();
    let certs = CertificateDer::pem_file_iter(ca)
        .map_err(|e| StoreError::new(format!("{}: {e}", ca.display())))?;
    for cert in certs {
        let cert = cert.map_err(|e| StoreError::new(format!("{}: {e}", ca.display())))?;
        roots
            .add(cert)
            .map_err(|e| StoreError::new(format!("{}: {e}", ca.display())))?;
    }
    rustls::ClientConfig::builder_with_provider(crate::tls::provider())
        .with_safe_default_protocol_versions()
        .map_err(|e| StoreError::new(e.to_string()))
        .map(|b| b.with_root_certificates(roots).with_no_client_auth())
}

impl Postgres {
    /// Connects, creates or upgrades the schema (one replica at a time,
    /// under an advisory lock) and reads the command epoch.
    pub async fn connect(options: &Options) -> Result<Postgres, StoreError> {
        let mut config: tokio_postgres::Config = options
            .url
            .parse()
            .map_err(|e| StoreError::new(format!("store '{}': {e}", options.url)))?;
        if let Some(p) = &options.password {
            config.password(p.as_bytes());
        }
        config.connect_timeout(CONNECT_TIMEOUT);
        config.application_name("residency-relay");
        // A statement stuck behind a lock must not hold a join for long.
        config.options("-c statement_timeout=5000 -c lock_timeout=2000");
        let tls = match &options.ca {
            Some(ca) => {
                // TLS or nothing: a server (or someone in the middle) that
                // does not offer it is refused, never fallen back from.
                config.ssl_mode(tokio_postgres::config::SslMode::Require);
                Tls::Rustls(tokio_postgres_rustls::MakeRustlsConnect::new(
                    rustls_config(ca)?,
                ))
            }
            None => Tls::None,
        };
        let manager_config = ManagerConfig {
            recycling_method: RecyclingMethod::Fast,
        };
        let manager = match &tls {
            Tls::None => {
                Manager::from_config(config.clone(), tokio_postgres::NoTls, manager_config)
            }
            Tls::Rustls(t) => Manager::from_config(config.clone(), t.clone(), manager_config),
        };
        let pool = Pool::builder(manager)
            .max_size(options.pool_size.max(2))
            .runtime(deadpool_postgres::Runtime::Tokio1)
            .wait_timeout(Some(CONNECT_TIMEOUT))
            .create_timeout(Some(CONNECT_TIMEOUT))
            .recycle_timeout(Some(CONNECT_TIMEOUT))
            .build()
            .map_err(|e| StoreError::new(format!("store '{}': {e}", options.url)))?;
        let mut store = Postgres {
            pool,
            config,
            tls,
            url: options.url.clone(),
            command_epoch: 0,
            noted: std::sync::Mutex::new(std::collections::HashMap::new()),
        };
        store.migrate().await?;
        store.command_epoch = store.epoch().await?;
        info!(store = %store.url, "PostgreSQL store ready");
        Ok(store)
    }

    /// Remembers that a join wrote `key`'s relay use at second `time`.
    fn noted_now(&self, key: (String, String, String), time: i64) {
        if let Ok(mut noted) = self.noted.lock() {
            if noted.len() >= MAX_NOTED {
                noted.clear();
            }
            noted.insert(key, time);
        }
    }

    async fn client(&self) -> Result<deadpool_postgres::Object, StoreError> {
        self.pool.get().await.map_err(pool_err)
    }

    async fn migrate(&self) -> Result<(), StoreError> {
        let mut client = self.client().await?;
        let tx = client.transaction().await.map_err(err)?;
        // Replicas starting together create the schema one at a time.
        tx.execute("SELECT pg_advisory_xact_lock(7240511)", &[])
            .await
            .map_err(err)?;
        tx.batch_execute(SCHEMA).await.map_err(err)?;
        let version = tx
            .query_opt("SELECT value FROM meta WHERE key = 'schema_version'", &[])
            .await
            .map_err(err)?
            .map(|r| r.get::<_, Vec<u8>>(0))
            .and_then(|v| <[u8; 8]>::try_from(v).ok())
            .map(i64::from_be_bytes);
        match version {
            Some(v) if v > SCHEMA_VERSION => {
                return Err(StoreError::new(format!(
                    "the store was written by a newer residency-relay (schema {v}, this one knows {SCHEMA_VERSION}); upgrade the router"
                )));
            }
            Some(v) if v == SCHEMA_VERSION => {}
            _ => {
                // Version 1 is the first; 2 changed no table, but hashes
                // written before it predate records keys: the first binding
                // keys them. Later versions add their steps here, each from
                // the version before.
                if version.is_none_or(|v| v < 2) {
                    tx.execute(
                        "INSERT INTO meta (key, value) VALUES ('records_key_pending', '\\x01')
                         ON CONFLICT (key) DO NOTHING",
                        &[],
                    )
                    .await
                    .map_err(err)?;
                }
                tx.execute(
                    "INSERT INTO meta (key, value) VALUES ('schema_version', $1)
                     ON CONFLICT (key) DO UPDATE SET value = EXCLUDED.value",
                    &[&SCHEMA_VERSION.to_be_bytes().to_vec()],
                )
                .await
                .map_err(err)?;
            }
        }
        tx.commit().await.map_err(err)
    }

    /// A value kept in `meta`, made with `make` on first use; of two
    /// replicas racing, the first insert wins and both read it.
    async fn meta_or(&self, key: &str, make: Vec<u8>) -> Result<Vec<u8>, StoreError> {
        let client = self.client().await?;
        client
            .execute(
                "INSERT INTO meta (key, value) VALUES ($1, $2) ON CONFLICT (key) DO NOTHING",
                &[&key, &make],
            )
            .await
            .map_err(err)?;
        client
            .query_one("SELECT value FROM meta WHERE key = $1", &[&key])
            .await
            .map(|r| r.get(0))
            .map_err(err)
    }

    async fn epoch(&self) -> Result<u64, StoreError> {
        let mut fresh = [0u8; 8];
        getrandom::fill(&mut fresh).map_err(|e| StoreError::new(e.to_string()))?;
        let v = self.meta_or("command_epoch", fresh.to_vec()).await?;
        let bytes = <[u8; 8]>::try_from(v.as_slice())
            .map_err(|_| StoreError::new("meta.command_epoch is not 8 bytes"))?;
        Ok(u64::from_be_bytes(bytes).max(1))
    }

    /// The numbering epoch of commands to relays, shared by every replica.
    pub fn command_epoch(&self) -> u64 {
        self.command_epoch
    }

    /// Where the database is (no password).
    pub fn url(&self) -> &str {
        &self.url
    }
}

fn participant_row(r: &tokio_postgres::Row) -> ParticipantRecord {
    let role: String = r.get("role");
    let status: String = r.get("status");
    ParticipantRecord {
        id: r.get("id"),
        conference: r.get("conference"),
        display_name: r.get("display_name"),
        role: Role::parse(&role).unwrap_or(Role::Viewer),
        status: Status::parse(&status).unwrap_or(Status::Denied),
        address_hash: blob32(r.get("address_hash")).unwrap_or_default(),
        invite_sha256: blob32(r.get("invite_sha256")),
        wait_token_sha256: blob32(r.get("wait_token_sha256")),
        rejoin_sha256: blob32(r.get("rejoin_sha256")),
        relay: r.get("relay"),
        created: r.get::<_, i64>("created") as u64,
    }
}

const UPSERT_PARTICIPANT: &str = "INSERT INTO participants (conference, id, display_name, role,
     status, address_hash, invite_sha256, wait_token_sha256, relay, created, rejoin_sha256)
     VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11)
     ON CONFLICT (conference, id) DO UPDATE SET display_name = $3, role = $4,
     status = $5, address_hash = $6, invite_sha256 = $7, wait_token_sha256 = $8,
     relay = $9, rejoin_sha256 = $11";

/// [`UPSERT_PARTICIPANT`] that leaves a kicked participant as it is (no
/// row written: the caller rolls back).
const UPSERT_JOINED: &str = "INSERT INTO participants AS p (conference, id, display_name, role,
     status, address_hash, invite_sha256, wait_token_sha256, relay, created, rejoin_sha256)
     VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11)
     ON CONFLICT (conference, id) DO UPDATE SET display_name = $3, role = $4,
     status = $5, address_hash = $6, invite_sha256 = $7, wait_token_sha256 = $8,
     relay = $9, rejoin_sha256 = $11
     WHERE p.status <> 'kicked'";

fn participant_params(p: &ParticipantRecord) -> ParticipantParams {
    ParticipantParams {
        address_hash: p.address_hash.to_vec(),
        invite: p.invite_sha256.map(|h| h.to_vec()),
        wait: p.wait_token_sha256.map(|h| h.to_vec()),
        rejoin: p.rejoin_sha256.map(|h| h.to_vec()),
        created: p.created as i64,
    }
}

struct ParticipantParams {
    address_hash: Vec<u8>,
    invite: Option<Vec<u8>>,
    wait: Option<Vec<u8>>,
    rejoin: Option<Vec<u8>>,
    created: i64,
}

impl ParticipantParams {
    fn with<'a>(&'a self, p: &'a ParticipantRecord) -> [&'a (dyn ToSql + Sync); 11] {
        [
            &p.conference,
            &p.id,
            &p.display_name,
            p.role.as_sql(),
            p.status.as_sql(),
            &self.address_hash,
            &self.invite,
            &self.wait,
            &p.relay,
            &self.created,
            &self.rejoin,
        ]
    }
}

const INSERT_AUDIT: &str =
    "INSERT INTO audit (time, conference, event, detail) VALUES ($1, $2, $3, $4)";

const NOTE_RELAY: &str = "INSERT INTO conference_relays (conference, relay, first_seen, last_seen, countries)
     VALUES ($1, $2, $3, $3, $4)
     ON CONFLICT (conference, relay) DO UPDATE SET last_seen = $3,
     countries = CASE WHEN $4 = '' OR strpos(',' || conference_relays.countries || ',', ',' || $4 || ',') > 0
             THEN conference_relays.countries
             WHEN conference_relays.countries = '' THEN $4
             ELSE conference_relays.countries || ',' || $4 END";

/// A join without an invitation as one statement (atomic on its own: no
/// transaction, one round trip): the participant upserted unless kicked,
/// and only then its audit line ($12–$15) and, in [`JOIN_NOTING`], its
/// relay use ($16 relay, $17 country). Answers whether it was written.
const JOIN: &str = "WITH up AS (
     INSERT INTO participants AS p (conference, id, display_name, role,
     status, address_hash, invite_sha256, wait_token_sha256, relay, created, rejoin_sha256)
     VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11)
     ON CONFLICT (conference, id) DO UPDATE SET display_name = $3, role = $4,
     status = $5, address_hash = $6, invite_sha256 = $7, wait_token_sha256 = $8,
     relay = $9, rejoin_sha256 = $11
     WHERE p.status <> 'kicked'
     RETURNING 1
 ), logged AS (
     INSERT INTO audit (time, conference, event, detail)
     SELECT $12::bigint, $13::text, $14::text, $15::text WHERE EXISTS (SELECT 1 FROM up)
 )
 SELECT EXISTS (SELECT 1 FROM up)";

/// [`JOIN`] that also records the relay's use.
const JOIN_NOTING: &str = "WITH up AS (
     INSERT INTO participants AS p (conference, id, display_name, role,
     status, address_hash, invite_sha256, wait_token_sha256, relay, created, rejoin_sha256)
     VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11)
     ON CONFLICT (conference, id) DO UPDATE SET display_name = $3, role = $4,
     status = $5, address_hash = $6, invite_sha256 = $7, wait_token_sha256 = $8,
     relay = $9, rejoin_sha256 = $11
     WHERE p.status <> 'kicked'
     RETURNING 1
 ), logged AS (
     INSERT INTO audit (time, conference, event, detail)
     SELECT $12::bigint, $13::text, $14::text, $15::text WHERE EXISTS (SELECT 1 FROM up)
 ), noted AS (
     INSERT INTO conference_relays AS r (conference, relay, first_seen, last_seen, countries)
     SELECT $1, $16::text, $12, $12, $17::text WHERE EXISTS (SELECT 1 FROM up)
     ON CONFLICT (conference, relay) DO UPDATE SET last_seen = $12,
     countries = CASE WHEN $17 = '' OR strpos(',' || r.countries || ',', ',' || $17 || ',') > 0
             THEN r.countries WHEN r.countries = '' THEN $17
             ELSE r.countries || ',' || $17 END
 )
 SELECT EXISTS (SELECT 1 FROM up)";

#[async_trait::async_trait]
impl Store for Postgres {
    fn backend(&self) -> super::Backend {
        super::Backend::Postgres
    }

    async fn ping(&self) -> Result<(), StoreError> {
        let client = self.client().await?;
        client
            .execute("SELECT 1", &[])
            .await
            .map(|_| ())
            .map_err(err)
    }

    async fn address_key(&self) -> Result<[u8; 32], StoreError> {
        let mut key = [0u8; 32];
        getrandom::fill(&mut key).map_err(|e| StoreError::new(e.to_string()))?;
        let v = self.meta_or("address_key", key.to_vec()).await?;
        blob32(Some(v)).ok_or_else(|| StoreError::new("meta.address_key is not 32 bytes"))
    }

    async fn bind_records_key(&self, keys: &RecordsKeys) -> Result<KeyBinding, StoreError> {
        let current = keys.current.id();
        let mut client = self.client().await?;
        let tx = client.transaction().await.map_err(err)?;
        // Keying a large store takes longer than a request may: no
        // statement or lock limit in this transaction.
        tx.batch_execute("SET LOCAL statement_timeout = 0; SET LOCAL lock_timeout = 0")
            .await
            .map_err(err)?;
        // Replicas starting together bind one at a time: the second finds
        // the first's key id (and refuses if it holds another key).
        tx.execute("SELECT pg_advisory_xact_lock(7240512)", &[])
            .await
            .map_err(err)?;
        let stored: Option<Vec<u8>> = tx
            .query_opt("SELECT value FROM meta WHERE key = 'records_key_id'", &[])
            .await
            .map_err(err)?
            .map(|r| r.get(0));
        let outcome = match stored {
            Some(id) if id == current => KeyBinding::Same,
            Some(id) => match keys
                .previous
                .iter()
                .map(RecordsKey::id)
                .find(|p| p[..] == id[..])
            {
                Some(from) => KeyBinding::Rotated { from },
                None => return Err(super::foreign_key_error(&id, keys)),
            },
            None if tx
                .query_opt("SELECT 1 FROM meta WHERE key = 'records_key_pending'", &[])
                .await
                .map_err(err)?
                .is_none() =>
            {
                KeyBinding::Adopted
            }
            None => {
                let mut address_hashes = 0;
                for table in ["participants", "bans"] {
                    address_hashes +=
                        rekey_column(&tx, table, "address_hash", |h| keys.current.address(h))
                            .await?;
                }
                let passcode_hashes = rekey_column(&tx, "conferences", "passcode_sha256", |h| {
                    keys.current.passcode(h)
                })
                .await?;
                KeyBinding::Keyed {
                    address_hashes,
                    passcode_hashes,
                }
            }
        };
        tx.execute("DELETE FROM meta WHERE key = 'records_key_pending'", &[])
            .await
            .map_err(err)?;
        tx.execute(
            "INSERT INTO meta (key, value) VALUES ('records_key_id', $1)
             ON CONFLICT (key) DO UPDATE SET value = EXCLUDED.value",
            &[&current.to_vec()],
        )
        .await
        .map_err(err)?;
        tx.commit().await.map_err(err)?;
        Ok(outcome)
    }

    async fn purge_step(
        &self,
        since: &PurgeCutoffs,
        cutoffs: &PurgeCutoffs,
        batch: u32,
    ) -> Result<Purged, StoreError> {
        let client = self.client().await?;
        let limit = i64::from(batch);
        // Replicas may purge at once: a row another one deleted meanwhile
        // is simply not deleted twice.
        let mut purged = Purged::default();
        for (detail, after, until) in super::purge_plan(since, cutoffs) {
            let table = detail.table;
            let n = client
                .execute(
                    &format!(
                        "DELETE FROM {table} WHERE ctid = ANY(ARRAY(
                            SELECT t.ctid FROM conferences c JOIN {table} t ON t.conference = c.id
                            WHERE c.ended > $1 AND c.ended <= $2 LIMIT $3))"
                    ),
                    &[&(after as i64), &(until as i64), &limit],
                )
                .await
                .map_err(err)?;
            *(detail.count)(&mut purged) += n;
        }
        let (after, until) = (since.conferences, cutoffs.conferences);
        if until > after {
            // Its placement (shared by the replicas) goes with it.
            let gone: i64 = client
                .query_one(
                    &format!(
                        "WITH gone AS (DELETE FROM conferences WHERE id = ANY(ARRAY(
                            SELECT c.id FROM conferences c
                            WHERE c.ended > $1 AND c.ended <= $2 AND {}
                            LIMIT $3)) RETURNING id),
                         placed AS (DELETE FROM placements WHERE conference IN (SELECT id FROM gone))
                         SELECT count(*) FROM gone",
                        super::nothing_left_of_c()
                    ),
                    &[&(after as i64), &(until as i64), &limit],
                )
                .await
                .map(|r| r.get(0))
                .map_err(err)?;
            purged.conferences = gone as u64;
        }
        Ok(purged)
    }

    async fn insert_conference(&self, c: &ConferenceRecord) -> Result<(), StoreError> {
        let client = self.client().await?;
        let salt = c.passcode.as_ref().map(|p| p.salt.to_vec());
        let hash = c.passcode.as_ref().map(|p| p.sha256.to_vec());
        let host = c.host_token_sha256.to_vec();
        let created = c.created as i64;
        let ended = c.ended.map(|e| e as i64);
        let stmt = client
            .prepare_cached(
                "INSERT INTO conferences (id, tenant, jurisdiction, passcode_salt, passcode_sha256,
                 host_token_sha256, locked, waiting_room, created, ended, e2ee)
                 VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11)",
            )
            .await
            .map_err(err)?;
        client
            .execute(
                &stmt,
                &[
                    &c.id,
                    &c.tenant,
                    &c.jurisdiction,
                    &salt,
                    &hash,
                    &host,
                    &c.locked,
                    &c.waiting_room,
                    &created,
                    &ended,
                    &c.e2ee,
                ],
            )
            .await
            .map(|_| ())
            .map_err(err)
    }

    async fn conference(&self, id: &str) -> Result<Option<ConferenceRecord>, StoreError> {
        let client = self.client().await?;
        let stmt = client
            .prepare_cached("SELECT * FROM conferences WHERE id = $1")
            .await
            .map_err(err)?;
        let row = client.query_opt(&stmt, &[&id]).await.map_err(err)?;
        Ok(row.map(|r| {
            let salt: Option<Vec<u8>> = r.get("passcode_salt");
            let hash = blob32(r.get("passcode_sha256"));
            let passcode = match (salt.and_then(|s| <[u8; 16]>::try_from(s).ok()), hash) {
                (Some(salt), Some(sha256)) => Some(PasscodeHash { salt, sha256 }),
                _ => None,
            };
            ConferenceRecord {
                id: r.get("id"),
                tenant: r.get("tenant"),
                jurisdiction: r.get("jurisdiction"),
                passcode,
                host_token_sha256: blob32(r.get("host_token_sha256")).unwrap_or_default(),
                locked: r.get("locked"),
                waiting_room: r.get("waiting_room"),
                created: r.get::<_, i64>("created") as u64,
                ended: r.get::<_, Option<i64>>("ended").map(|e| e as u64),
                e2ee: r.get("e2ee"),
            }
        }))
    }

    async fn set_locked(&self, id: &str, locked: bool) -> Result<(), StoreError> {
        let client = self.client().await?;
        client
            .execute(
                "UPDATE conferences SET locked = $2 WHERE id = $1",
                &[&id, &locked],
            )
            .await
            .map(|_| ())
            .map_err(err)
    }

    async fn end_conference(&self, id: &str, at: u64) -> Result<(), StoreError> {
        let client = self.client().await?;
        client
            .execute(
                "UPDATE conferences SET ended = $2 WHERE id = $1 AND ended IS NULL",
                &[&id, &(at as i64)],
            )
            .await
            .map(|_| ())
            .map_err(err)
    }

    async fn insert_invite(&self, i: &InviteRecord) -> Result<(), StoreError> {
        let client = self.client().await?;
        client
            .execute(
                "INSERT INTO invites (token_sha256, conference, participant_id, display_name, role, expires)
                 VALUES ($1, $2, $3, $4, $5, $6)",
                &[
                    &i.token_sha256.to_vec(),
                    &i.conference,
                    &i.participant_id,
                    &i.display_name,
                    i.role.as_sql(),
                    &(i.expires as i64),
                ],
            )
            .await
            .map(|_| ())
            .map_err(err)
    }

    async fn invite(
        &self,
        token_sha256: &[u8; 32],
        conference: &str,
        now: u64,
    ) -> Result<Result<InviteRecord, InviteRefusal>, StoreError> {
        let client = self.client().await?;
        lookup_invite(&client, token_sha256, conference, now).await
    }

    async fn use_invite(
        &self,
        token_sha256: &[u8; 32],
        conference: &str,
        now: u64,
    ) -> Result<Result<InviteRecord, InviteRefusal>, StoreError> {
        let client = self.client().await?;
        let invite = match lookup_invite(&client, token_sha256, conference, now).await? {
            Ok(i) => i,
            Err(refusal) => return Ok(Err(refusal)),
        };
        // The condition on `used` makes the claim atomic: of two concurrent
        // uses (on any replicas), one changes the row.
        let changed = client
            .execute(
                "UPDATE invites SET used = TRUE WHERE token_sha256 = $1 AND used = FALSE",
                &[&token_sha256.to_vec()],
            )
            .await
            .map_err(err)?;
        if changed == 0 {
            return Ok(Err(InviteRefusal::Used));
        }
        Ok(Ok(invite))
    }

    async fn upsert_participant(&self, p: &ParticipantRecord) -> Result<(), StoreError> {
        let client = self.client().await?;
        let stmt = client
            .prepare_cached(UPSERT_PARTICIPANT)
            .await
            .map_err(err)?;
        let params = participant_params(p);
        client
            .execute(&stmt, &params.with(p))
            .await
            .map(|_| ())
            .map_err(err)
    }

    async fn record_join(
        &self,
        p: &ParticipantRecord,
        relay: &str,
        relay_country: &str,
        event: &AuditEvent,
        invite: Option<&[u8; 32]>,
    ) -> Result<bool, StoreError> {
        let (time, detail) = (event.time as i64, event.detail.to_string());
        let key = (
            p.conference.clone(),
            relay.to_owned(),
            relay_country.to_owned(),
        );
        let note_due = self
            .noted
            .lock()
            .map_or(true, |n| n.get(&key).is_none_or(|at| *at < time));
        let mut client = self.client().await?;
        if invite.is_none() {
            let stmt = client
                .prepare_cached(if note_due { JOIN_NOTING } else { JOIN })
                .await
                .map_err(err)?;
            let params = participant_params(p);
            let mut all: Vec<&(dyn ToSql + Sync)> = params.with(p).to_vec();
            all.extend([
                &time as &(dyn ToSql + Sync),
                &event.conference,
                &event.event,
                &detail,
            ]);
            if note_due {
                all.extend([&relay as &(dyn ToSql + Sync), &relay_country]);
            }
            let written: bool = client.query_one(&stmt, &all).await.map_err(err)?.get(0);
            if written && note_due {
                self.noted_now(key, time);
            }
            return Ok(written);
        }
        let tx = client.transaction().await.map_err(err)?;
        // The statements are sent together (one round trip) and run in
        // order; the transaction is rolled back if the invitation was used
        // meanwhile or the participant removed meanwhile (a kick racing a
        // rejoin, perhaps on another replica: the upsert's `WHERE` under
        // the row lock keeps it removed), so nothing is written then.
        let (claim, upsert, note, audit) = tokio::try_join!(
            tx.prepare_cached(
                "UPDATE invites SET used = TRUE WHERE token_sha256 = $1 AND used = FALSE"
            ),
            tx.prepare_cached(UPSERT_JOINED),
            tx.prepare_cached(NOTE_RELAY),
            tx.prepare_cached(INSERT_AUDIT),
        )
        .map_err(err)?;
        let params = participant_params(p);
        let token = invite.map(|t| t.to_vec());
        let claimed = async {
            match &token {
                Some(token) => tx.execute(&claim, &[token]).await.map(|n| n == 1),
                None => Ok(true),
            }
        };
        let upsert_params = params.with(p);
        let note_params: [&(dyn ToSql + Sync); 4] = [&p.conference, &relay, &time, &relay_country];
        let audit_params: [&(dyn ToSql + Sync); 4] =
            [&time, &event.conference, &event.event, &detail];
        let noting = async {
            if note_due {
                tx.execute(&note, &note_params).await.map(|_| ())
            } else {
                Ok(())
            }
        };
        let (claimed, written, _, _) = tokio::try_join!(
            claimed,
            tx.execute(&upsert, &upsert_params),
            noting,
            tx.execute(&audit, &audit_params),
        )
        .map_err(err)?;
        if !claimed || written == 0 {
            tx.rollback().await.map_err(err)?;
            return Ok(false);
        }
        tx.commit().await.map_err(err)?;
        if note_due {
            self.noted_now(key, time);
        }
        Ok(true)
    }

    async fn participant(
        &self,
        conference: &str,
        id: &str,
    ) -> Result<Option<ParticipantRecord>, StoreError> {
        let client = self.client().await?;
        let stmt = client
            .prepare_cached("SELECT * FROM participants WHERE conference = $1 AND id = $2")
            .await
            .map_err(err)?;
        client
            .query_opt(&stmt, &[&conference, &id])
            .await
            .map(|r| r.as_ref().map(participant_row))
            .map_err(err)
    }

    async fn set_status(
        &self,
        conference: &str,
        id: &str,
        status: Status,
    ) -> Result<(), StoreError> {
        let client = self.client().await?;
        client
            .execute(
                "UPDATE participants SET status = $3 WHERE conference = $1 AND id = $2",
                &[&conference, &id, status.as_sql()],
            )
            .await
            .map(|_| ())
            .map_err(err)
    }

    async fn set_status_if(
        &self,
        conference: &str,
        id: &str,
        from: Status,
        to: Status,
    ) -> Result<bool, StoreError> {
        let client = self.client().await?;
        client
            .execute(
                "UPDATE participants SET status = $4 WHERE conference = $1 AND id = $2 AND status = $3",
                &[&conference, &id, from.as_sql(), to.as_sql()],
            )
            .await
            .map(|n| n == 1)
            .map_err(err)
    }

    async fn waiting(&self, conference: &str) -> Result<Vec<ParticipantRecord>, StoreError> {
        let client = self.client().await?;
        let stmt = client
            .prepare_cached(
                "SELECT * FROM participants WHERE conference = $1 AND status = 'waiting'
                 ORDER BY created, id",
            )
            .await
            .map_err(err)?;
        client
            .query(&stmt, &[&conference])
            .await
            .map(|rows| rows.iter().map(participant_row).collect())
            .map_err(err)
    }

    async fn add_ban(&self, b: &Ban) -> Result<(), StoreError> {
        let client = self.client().await?;
        client
            .execute(
                "INSERT INTO bans (conference, participant_id, address_hash, invite_sha256, created)
                 VALUES ($1, $2, $3, $4, $5)",
                &[
                    &b.conference,
                    &b.participant_id,
                    &b.address_hash.to_vec(),
                    &b.invite_sha256.map(|h| h.to_vec()),
                    &(b.created as i64),
                ],
            )
            .await
            .map(|_| ())
            .map_err(err)
    }

    async fn is_banned(
        &self,
        conference: &str,
        participant_id: Option<&str>,
        address_hash: &[u8; 32],
        invite_sha256: Option<&[u8; 32]>,
    ) -> Result<bool, StoreError> {
        let client = self.client().await?;
        let stmt = client
            .prepare_cached(
                "SELECT EXISTS (SELECT 1 FROM bans WHERE conference = $1 AND
                 (participant_id = $2 OR address_hash = $3 OR invite_sha256 = $4))",
            )
            .await
            .map_err(err)?;
        client
            .query_one(
                &stmt,
                &[
                    &conference,
                    &participant_id,
                    &address_hash.to_vec(),
                    &invite_sha256.map(|h| h.to_vec()),
                ],
            )
            .await
            .map(|r| r.get(0))
            .map_err(err)
    }

    async fn add_report(
        &self,
        conference: &str,
        participant_id: &str,
        reason: &str,
        at: u64,
    ) -> Result<i64, StoreError> {
        let client = self.client().await?;
        client
            .query_one(
                "INSERT INTO abuse_reports (conference, participant_id, reason, created)
                 VALUES ($1, $2, $3, $4) RETURNING id",
                &[&conference, &participant_id, &reason, &(at as i64)],
            )
            .await
            .map(|r| r.get(0))
            .map_err(err)
    }

    async fn reports(&self, limit: usize) -> Result<Vec<AbuseReport>, StoreError> {
        let client = self.client().await?;
        let rows = client
            .query(
                "SELECT id, conference, participant_id, reason, created FROM abuse_reports
                 ORDER BY id DESC LIMIT $1",
                &[&(limit.min(i64::MAX as usize) as i64)],
            )
            .await
            .map_err(err)?;
        Ok(rows
            .iter()
            .map(|r| AbuseReport {
                id: r.get(0),
                conference: r.get(1),
                participant_id: r.get(2),
                reason: r.get(3),
                created: r.get::<_, i64>(4) as u64,
            })
            .collect())
    }

    async fn audit(&self, e: &AuditEvent) -> Result<(), StoreError> {
        let client = self.client().await?;
        let stmt = client.prepare_cached(INSERT_AUDIT).await.map_err(err)?;
        client
            .execute(
                &stmt,
                &[
                    &(e.time as i64),
                    &e.conference,
                    &e.event,
                    &e.detail.to_string(),
                ],
            )
            .await
            .map(|_| ())
            .map_err(err)
    }

    async fn audit_log(&self, conference: &str) -> Result<Vec<AuditEvent>, StoreError> {
        let client = self.client().await?;
        let rows = client
            .query(
                "SELECT time, conference, event, detail FROM audit WHERE conference = $1 ORDER BY id",
                &[&conference],
            )
            .await
            .map_err(err)?;
        Ok(rows
            .iter()
            .map(|r| AuditEvent {
                time: r.get::<_, i64>(0) as u64,
                conference: r.get(1),
                event: r.get(2),
                detail: serde_json::from_str(r.get::<_, &str>(3))
                    .unwrap_or(serde_json::Value::Null),
            })
            .collect())
    }

    async fn note_relay(
        &self,
        conference: &str,
        relay: &str,
        country: &str,
        now: u64,
    ) -> Result<(), StoreError> {
        let client = self.client().await?;
        let stmt = client.prepare_cached(NOTE_RELAY).await.map_err(err)?;
        client
            .execute(&stmt, &[&conference, &relay, &(now as i64), &country])
            .await
            .map(|_| ())
            .map_err(err)
    }

    async fn record_usage(
        &self,
        relay: &str,
        now: u64,
        usage: &[Usage<'_>],
        links: &[LinkUsage<'_>],
    ) -> Result<(), StoreError> {
        let mut client = self.client().await?;
        let tx = client.transaction().await.map_err(err)?;
        let now = now as i64;
        let conference = tx
            .prepare_cached(
                "INSERT INTO conference_relays AS r (conference, relay, first_seen, last_seen,
                 bytes_in, bytes_out, peak_participants, countries, outside)
                 VALUES ($1, $2, $3, $3, $4, $5, $6, $7, $8)
                 ON CONFLICT (conference, relay) DO UPDATE SET last_seen = $3,
                 bytes_in = GREATEST(r.bytes_in, $4), bytes_out = GREATEST(r.bytes_out, $5),
                 peak_participants = GREATEST(r.peak_participants, $6),
                 outside = r.outside OR $8,
                 countries = CASE WHEN $7 = '' OR strpos(',' || r.countries || ',', ',' || $7 || ',') > 0
                 THEN r.countries WHEN r.countries = '' THEN $7 ELSE r.countries || ',' || $7 END",
            )
            .await
            .map_err(err)?;
        for u in usage {
            tx.execute(
                &conference,
                &[
                    &u.conference,
                    &relay,
                    &now,
                    &(u.bytes_in.min(i64::MAX as u64) as i64),
                    &(u.bytes_out.min(i64::MAX as u64) as i64),
                    &i64::from(u.participants),
                    &u.country,
                    &!u.inside,
                ],
            )
            .await
            .map_err(err)?;
        }
        let link = tx
            .prepare_cached(
                "INSERT INTO conference_links AS l (conference, relay, peer, first_seen, last_seen, bytes_in, bytes_out)
                 VALUES ($1, $2, $3, $4, $4, $5, $6)
                 ON CONFLICT (conference, relay, peer) DO UPDATE SET last_seen = $4,
                 bytes_in = GREATEST(l.bytes_in, $5), bytes_out = GREATEST(l.bytes_out, $6)",
            )
            .await
            .map_err(err)?;
        for l in links {
            tx.execute(
                &link,
                &[
                    &l.conference,
                    &relay,
                    &l.peer,
                    &now,
                    &(l.bytes_in.min(i64::MAX as u64) as i64),
                    &(l.bytes_out.min(i64::MAX as u64) as i64),
                ],
            )
            .await
            .map_err(err)?;
        }
        tx.commit().await.map_err(err)
    }

    async fn links_of(&self, conference: &str) -> Result<Vec<LinkUse>, StoreError> {
        let client = self.client().await?;
        let rows = client
            .query(
                "SELECT relay, peer, first_seen, last_seen, bytes_in, bytes_out FROM conference_links
                 WHERE conference = $1 ORDER BY relay, peer",
                &[&conference],
            )
            .await
            .map_err(err)?;
        Ok(rows
            .iter()
            .map(|r| LinkUse {
                relay: r.get(0),
                peer: r.get(1),
                first_seen: r.get::<_, i64>(2) as u64,
                last_seen: r.get::<_, i64>(3) as u64,
                bytes_in: r.get::<_, i64>(4) as u64,
                bytes_out: r.get::<_, i64>(5) as u64,
            })
            .collect())
    }

    async fn relays_of(&self, conference: &str) -> Result<Vec<RelayUse>, StoreError> {
        let client = self.client().await?;
        let stmt = client
            .prepare_cached(
                "SELECT relay, first_seen, last_seen, bytes_in, bytes_out, peak_participants,
                 countries, outside FROM conference_relays
                 WHERE conference = $1 ORDER BY first_seen, relay",
            )
            .await
            .map_err(err)?;
        let rows = client.query(&stmt, &[&conference]).await.map_err(err)?;
        Ok(rows
            .iter()
            .map(|r| RelayUse {
                relay: r.get(0),
                first_seen: r.get::<_, i64>(1) as u64,
                last_seen: r.get::<_, i64>(2) as u64,
                bytes_in: r.get::<_, i64>(3) as u64,
                bytes_out: r.get::<_, i64>(4) as u64,
                peak_participants: r.get::<_, i64>(5).clamp(0, i64::from(u32::MAX)) as u32,
                countries: r
                    .get::<_, &str>(6)
                    .split(',')
                    .filter(|c| !c.is_empty())
                    .map(str::to_owned)
                    .collect(),
                outside: r.get(7),
            })
            .collect())
    }
}

async fn lookup_invite(
    client: &deadpool_postgres::Object,
    token_sha256: &[u8; 32],
    conference: &str,
    now: u64,
) -> Result<Result<InviteRecord, InviteRefusal>, StoreError> {
    let stmt = client
        .prepare_cached(
            "SELECT participant_id, display_name, role, expires, used FROM invites
             WHERE token_sha256 = $1 AND conference = $2",
        )
        .await
        .map_err(err)?;
    let Some(r) = client
        .query_opt(&stmt, &[&token_sha256.to_vec(), &conference])
        .await
        .map_err(err)?
    else {
        return Ok(Err(InviteRefusal::Unknown));
    };
    let expires = r.get::<_, i64>(3) as u64;
    if r.get::<_, bool>(4) {
        return Ok(Err(InviteRefusal::Used));
    }
    if expires <= now {
        return Ok(Err(InviteRefusal::Expired));
    }
    Ok(Ok(InviteRecord {
        token_sha256: *token_sha256,
        conference: conference.to_owned(),
        participant_id: r.get(0),
        display_name: r.get(1),
        role: Role::parse(r.get::<_, &str>(2)).unwrap_or(Role::Viewer),
        expires,
    }))
}
