//! [`Store`] on an embedded SQLite file (WAL journal, one connection behind
//! a mutex: every call is one short transaction).

use std::path::Path;
use std::sync::Mutex;

use rusqlite::{Connection, OptionalExtension, params};

use super::{
    AbuseReport, AuditEvent, Ban, ConferenceRecord, InviteRecord, InviteRefusal, KeyBinding,
    LinkUsage, LinkUse, ParticipantRecord, PasscodeHash, PurgeCutoffs, Purged, RelayUse, Role,
    Status, Store, StoreError, Usage,
};
use crate::secret::{RecordsKey, RecordsKeys};

const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value BLOB NOT NULL);
CREATE TABLE IF NOT EXISTS conferences (
    id TEXT PRIMARY KEY,
    tenant TEXT NOT NULL,
    jurisdiction TEXT NOT NULL,
    passcode_salt BLOB,
    passcode_sha256 BLOB,
    host_token_sha256 BLOB NOT NULL,
    locked INTEGER NOT NULL,
    waiting_room INTEGER NOT NULL,
    created INTEGER NOT NULL,
    ended INTEGER,
    e2ee INTEGER NOT NULL DEFAULT 0
);
CREATE TABLE IF NOT EXISTS invites (
    token_sha256 BLOB PRIMARY KEY,
    conference TEXT NOT NULL,
    participant_id TEXT NOT NULL,
    display_name TEXT NOT NULL,
    role TEXT NOT NULL,
    expires INTEGER NOT NULL,
    used INTEGER NOT NULL DEFAULT 0
);
CREATE TABLE IF NOT EXISTS participants (
    conference TEXT NOT NULL,
    id TEXT NOT NULL,
    display_name TEXT NOT NULL,
    role TEXT NOT NULL,
    status TEXT NOT NULL,
    address_hash BLOB NOT NULL,
    invite_sha256 BLOB,
    wait_token_sha256 BLOB,
    rejoin_sha256 BLOB,
    relay TEXT,
    created INTEGER NOT NULL,
    PRIMARY KEY (conference, id)
);
CREATE INDEX IF NOT EXISTS participants_status ON participants (conference, status);
CREATE TABLE IF NOT EXISTS bans (
    conference TEXT NOT NULL,
    participant_id TEXT NOT NULL,
    address_hash BLOB NOT NULL,
    invite_sha256 BLOB,
    created INTEGER NOT NULL
);
CREATE INDEX IF NOT EXISTS bans_conference ON bans (conference);
CREATE INDEX IF NOT EXISTS conferences_ended ON conferences (ended);
CREATE INDEX IF NOT EXISTS invites_conference ON invites (conference);
CREATE TABLE IF NOT EXISTS abuse_reports (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    conference TEXT NOT NULL,
    participant_id TEXT NOT NULL,
    reason TEXT NOT NULL,
    created INTEGER NOT NULL
);
CREATE INDEX IF NOT EXISTS abuse_reports_conference ON abuse_reports (conference);
CREATE TABLE IF NOT EXISTS audit (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    time INTEGER NOT NULL,
    conference TEXT NOT NULL,
    event TEXT NOT NULL,
    detail TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS audit_conference ON audit (conference);
CREATE TABLE IF NOT EXISTS conference_relays (
    conference TEXT NOT NULL,
    relay TEXT NOT NULL,
    first_seen INTEGER NOT NULL,
    last_seen INTEGER NOT NULL,
    bytes_in INTEGER NOT NULL DEFAULT 0,
    bytes_out INTEGER NOT NULL DEFAULT 0,
    peak_participants INTEGER NOT NULL DEFAULT 0,
    countries TEXT NOT NULL DEFAULT '',
    outside INTEGER NOT NULL DEFAULT 0,
    PRIMARY KEY (conference, relay)
);
CREATE TABLE IF NOT EXISTS conference_links (
    conference TEXT NOT NULL,
    relay TEXT NOT NULL,
    peer TEXT NOT NULL,
    first_seen INTEGER NOT NULL,
    last_seen INTEGER NOT NULL,
    bytes_in INTEGER NOT NULL DEFAULT 0,
    bytes_out INTEGER NOT NULL DEFAULT 0,
    PRIMARY KEY (conference, relay, peer)
);
";

/// Schema version this code writes (`PRAGMA user_version`). 6: address and
/// passcode hashes are keyed with the records key (`meta.records_key_id`,
/// [`Store::bind_records_key`]); an older router would no longer match them,
/// so it must refuse the file.
const SCHEMA_VERSION: i64 = 6;

/// Brings a store file of any earlier version to [`SCHEMA_VERSION`], in one
/// transaction; refuses a file written by a newer version.
fn migrate(conn: &Connection) -> rusqlite::Result<()> {
    let version: i64 = conn.query_row("PRAGMA user_version", [], |r| r.get(0))?;
    if version > SCHEMA_VERSION {
        return Err(rusqlite::Error::ToSqlConversionFailure(
            format!(
                "the store was written by a newer residency-relay (schema {version}, this one knows {SCHEMA_VERSION}); upgrade the router"
            )
            .into(),
        ));
    }
    if version == SCHEMA_VERSION {
        return Ok(());
    }
    conn.execute_batch("BEGIN IMMEDIATE")?;
    let result = (|| {
        conn.execute_batch(SCHEMA)?;
        // Earlier files may lack the usage columns (the tables are made above).
        let columns: Vec<String> = conn
            .prepare("SELECT name FROM pragma_table_info('conference_relays')")?
            .query_map([], |r| r.get(0))?
            .collect::<rusqlite::Result<_>>()?;
        for column in ["bytes_in", "bytes_out", "peak_participants", "outside"] {
            if !columns.iter().any(|c| c == column) {
                conn.execute_batch(&format!(
                    "ALTER TABLE conference_relays ADD COLUMN {column} INTEGER NOT NULL DEFAULT 0"
                ))?;
            }
        }
        if !columns.iter().any(|c| c == "countries") {
            conn.execute_batch(
                "ALTER TABLE conference_relays ADD COLUMN countries TEXT NOT NULL DEFAULT ''",
            )?;
        }
        let columns: Vec<String> = conn
            .prepare("SELECT name FROM pragma_table_info('participants')")?
            .query_map([], |r| r.get(0))?
            .collect::<rusqlite::Result<_>>()?;
        if !columns.iter().any(|c| c == "rejoin_sha256") {
            conn.execute_batch("ALTER TABLE participants ADD COLUMN rejoin_sha256 BLOB")?;
        }
        let columns: Vec<String> = conn
            .prepare("SELECT name FROM pragma_table_info('conferences')")?
            .query_map([], |r| r.get(0))?
            .collect::<rusqlite::Result<_>>()?;
        if !columns.iter().any(|c| c == "e2ee") {
            conn.execute_batch(
                "ALTER TABLE conferences ADD COLUMN e2ee INTEGER NOT NULL DEFAULT 0",
            )?;
        }
        if version < 6 {
            // Its hashes predate records keys: the first binding keys them.
            conn.execute_batch(
                "INSERT OR REPLACE INTO meta (key, value) VALUES ('records_key_pending', x'01')",
            )?;
        }
        conn.execute_batch(&format!("PRAGMA user_version = {SCHEMA_VERSION}"))
    })();
    match result {
        Ok(()) => conn.execute_batch("COMMIT"),
        Err(e) => {
            let _ = conn.execute_batch("ROLLBACK");
            Err(e)
        }
    }
}

/// The embedded store.
#[derive(Debug)]
pub struct Sqlite {
    conn: Mutex<Connection>,
}

fn err(e: impl std::fmt::Display) -> StoreError {
    StoreError::new(e.to_string())
}

fn blob32(v: Option<Vec<u8>>) -> Option<[u8; 32]> {
    v.and_then(|b| b.try_into().ok())
}

/// Applies `f` to every 32-byte value of `column` in `table` (by rowid);
/// returns how many it changed.
fn rekey_column(
    db: &Connection,
    table: &str,
    column: &str,
    f: impl Fn(&[u8; 32]) -> [u8; 32],
) -> rusqlite::Result<u64> {
    let rows: Vec<(i64, Vec<u8>)> = db
        .prepare(&format!(
            "SELECT rowid, {column} FROM {table} WHERE {column} IS NOT NULL"
        ))?
        .query_map([], |r| Ok((r.get(0)?, r.get(1)?)))?
        .collect::<rusqlite::Result<_>>()?;
    let mut update = db.prepare(&format!(
        "UPDATE {table} SET {column} = ?1 WHERE rowid = ?2"
    ))?;
    let mut changed = 0;
    for (rowid, value) in rows {
        // A value of another length never matched anything; it stays.
        if let Some(inner) = blob32(Some(value)) {
            update.execute(params![f(&inner).as_slice(), rowid])?;
            changed += 1;
        }
    }
    Ok(changed)
}

/// Deletes at most `batch` rows of `table` belonging to conferences that
/// ended in `(since, cutoff]` (by rowid, found through `conferences_ended`
/// and the table's conference index).
fn purge_rows(
    db: &Connection,
    table: &str,
    since: u64,
    cutoff: u64,
    batch: u32,
) -> rusqlite::Result<u64> {
    let n = exec(
        db,
        &format!(
            "DELETE FROM {table} WHERE rowid IN (
                SELECT t.rowid FROM conferences c JOIN {table} t ON t.conference = c.id
                WHERE c.ended > ?1 AND c.ended <= ?2 LIMIT ?3)"
        ),
        params![since as i64, cutoff as i64, batch],
    )?;
    Ok(n as u64)
}

/// Keys every address and passcode hash in the store with `key` (they
/// were made before the store had a records key).
fn key_hashes(db: &Connection, key: &RecordsKey) -> rusqlite::Result<KeyBinding> {
    let mut address_hashes = 0;
    for table in ["participants", "bans"] {
        address_hashes += rekey_column(db, table, "address_hash", |h| key.address(h))?;
    }
    let passcode_hashes = rekey_column(db, "conferences", "passcode_sha256", |h| key.passcode(h))?;
    Ok(KeyBinding::Keyed {
        address_hashes,
        passcode_hashes,
    })
}

impl Sqlite {
    /// Opens (creating if needed) the store at `path`; its directory is
    /// created too.
    pub fn open(path: &Path) -> Result<Sqlite, StoreError> {
        if let Some(dir) = path.parent() {
            if !dir.as_os_str().is_empty() {
                std::fs::create_dir_all(dir)
                    .map_err(|e| err(format!("cannot create {}: {e}", dir.display())))?;
            }
        }
        let conn = Connection::open(path)
            .map_err(|e| err(format!("cannot open {}: {e}", path.display())))?;
        Self::init(conn)
    }

    /// A store that lives in memory only (tests).
    pub fn in_memory() -> Result<Sqlite, StoreError> {
        Self::init(Connection::open_in_memory().map_err(err)?)
    }

    fn init(conn: Connection) -> Result<Sqlite, StoreError> {
        conn.pragma_update(None, "journal_mode", "WAL")
            .map_err(err)?;
        conn.pragma_update(None, "synchronous", "NORMAL")
            .map_err(err)?;
        conn.busy_timeout(std::time::Duration::from_secs(5))
            .map_err(err)?;
        migrate(&conn).map_err(err)?;
        Ok(Sqlite {
            conn: Mutex::new(conn),
        })
    }

    fn with<T>(&self, f: impl FnOnce(&Connection) -> rusqlite::Result<T>) -> Result<T, StoreError> {
        let conn = self.conn.lock().map_err(|_| err("store lock poisoned"))?;
        f(&conn).map_err(err)
    }
}

/// `execute` through the statement cache (the SQL is parsed once).
fn exec<P: rusqlite::Params>(db: &Connection, sql: &str, params: P) -> rusqlite::Result<usize> {
    db.prepare_cached(sql)?.execute(params)
}

/// `query_row` through the statement cache.
fn row<T, P: rusqlite::Params>(
    db: &Connection,
    sql: &str,
    params: P,
    f: impl FnOnce(&rusqlite::Row<'_>) -> rusqlite::Result<T>,
) -> rusqlite::Result<T> {
    db.prepare_cached(sql)?.query_row(params, f)
}

fn upsert_participant(db: &Connection, p: &ParticipantRecord) -> rusqlite::Result<()> {
    exec(
        db,
        "INSERT INTO participants (conference, id, display_name, role, status, address_hash,
         invite_sha256, wait_token_sha256, relay, created, rejoin_sha256)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11)
         ON CONFLICT (conference, id) DO UPDATE SET display_name = ?3, role = ?4,
         status = ?5, address_hash = ?6, invite_sha256 = ?7, wait_token_sha256 = ?8,
         relay = ?9, rejoin_sha256 = ?11",
        params![
            p.conference,
            p.id,
            p.display_name,
            p.role.as_str(),
            p.status.as_str(),
            p.address_hash.as_slice(),
            p.invite_sha256.map(|h| h.to_vec()),
            p.wait_token_sha256.map(|h| h.to_vec()),
            p.relay,
            p.created as i64,
            p.rejoin_sha256.map(|h| h.to_vec()),
        ],
    )
    .map(|_| ())
}

fn insert_audit(db: &Connection, e: &AuditEvent) -> rusqlite::Result<()> {
    exec(
        db,
        "INSERT INTO audit (time, conference, event, detail) VALUES (?1, ?2, ?3, ?4)",
        params![e.time as i64, e.conference, e.event, e.detail.to_string()],
    )
    .map(|_| ())
}

fn note_relay(
    db: &Connection,
    conference: &str,
    relay: &str,
    country: &str,
    now: u64,
) -> rusqlite::Result<()> {
    exec(
        db,
        "INSERT INTO conference_relays (conference, relay, first_seen, last_seen, countries)
         VALUES (?1, ?2, ?3, ?3, ?4)
         ON CONFLICT (conference, relay) DO UPDATE SET last_seen = ?3,
         countries = CASE WHEN ?4 = '' OR instr(',' || countries || ',', ',' || ?4 || ',') > 0 THEN countries
                 WHEN countries = '' THEN ?4 ELSE countries || ',' || ?4 END",
        params![conference, relay, now as i64, country],
    )
    .map(|_| ())
}

fn participant_row(row: &rusqlite::Row<'_>) -> rusqlite::Result<ParticipantRecord> {
    let role: String = row.get("role")?;
    let status: String = row.get("status")?;
    Ok(ParticipantRecord {
        id: row.get("id")?,
        conference: row.get("conference")?,
        display_name: row.get("display_name")?,
        role: Role::parse(&role).unwrap_or(Role::Viewer),
        status: Status::parse(&status).unwrap_or(Status::Denied),
        address_hash: blob32(row.get("address_hash")?).unwrap_or_default(),
        invite_sha256: blob32(row.get("invite_sha256")?),
        wait_token_sha256: blob32(row.get("wait_token_sha256")?),
        rejoin_sha256: blob32(row.get("rejoin_sha256")?),
        relay: row.get("relay")?,
        created: row.get::<_, i64>("created")? as u64,
    })
}

#[async_trait::async_trait]
impl Store for Sqlite {
    fn backend(&self) -> super::Backend {
        super::Backend::Sqlite
    }

    async fn ping(&self) -> Result<(), StoreError> {
        self.with(|db| db.query_row("SELECT 1", [], |_| Ok(())))
    }

    async fn address_key(&self) -> Result<[u8; 32], StoreError> {
        let existing = self.with(|c| {
            row(
                c,
                "SELECT value FROM meta WHERE key = 'address_key'",
                [],
                |r| r.get::<_, Vec<u8>>(0),
            )
            .optional()
        })?;
        if let Some(key) = blob32(existing) {
            return Ok(key);
        }
        let mut key = [0u8; 32];
        getrandom::fill(&mut key).map_err(err)?;
        self.with(|c| {
            exec(
                c,
                "INSERT OR IGNORE INTO meta (key, value) VALUES ('address_key', ?1)",
                params![key.as_slice()],
            )
        })?;
        // Another caller may have won the race: read what is stored.
        self.with(|c| {
            row(
                c,
                "SELECT value FROM meta WHERE key = 'address_key'",
                [],
                |r| r.get::<_, Vec<u8>>(0),
            )
        })
        .map(|v| blob32(Some(v)).unwrap_or(key))
    }

    async fn bind_records_key(&self, keys: &RecordsKeys) -> Result<KeyBinding, StoreError> {
        let current = keys.current.id();
        let previous: Vec<[u8; 8]> = keys.previous.iter().map(RecordsKey::id).collect();
        let outcome = self.with(|db| {
            db.execute_batch("BEGIN IMMEDIATE")?;
            let result = (|| {
                let stored: Option<Vec<u8>> = row(
                    db,
                    "SELECT value FROM meta WHERE key = 'records_key_id'",
                    [],
                    |r| r.get(0),
                )
                .optional()?;
                let outcome = match stored {
                    Some(id) if id == current => Ok(KeyBinding::Same),
                    Some(id) => match previous.iter().find(|p| p[..] == id[..]) {
                        Some(from) => Ok(KeyBinding::Rotated { from: *from }),
                        None => Err(id),
                    },
                    None => {
                        let pending = row(
                            db,
                            "SELECT 1 FROM meta WHERE key = 'records_key_pending'",
                            [],
                            |_| Ok(()),
                        )
                        .optional()?
                        .is_some();
                        if pending {
                            Ok(key_hashes(db, &keys.current)?)
                        } else {
                            Ok(KeyBinding::Adopted)
                        }
                    }
                };
                if outcome.is_ok() {
                    exec(db, "DELETE FROM meta WHERE key = 'records_key_pending'", [])?;
                    exec(
                        db,
                        "INSERT INTO meta (key, value) VALUES ('records_key_id', ?1)
                         ON CONFLICT (key) DO UPDATE SET value = excluded.value",
                        params![current.as_slice()],
                    )?;
                }
                Ok(outcome)
            })();
            match result {
                Ok(outcome) => {
                    db.execute_batch("COMMIT")?;
                    Ok(outcome)
                }
                Err(e) => {
                    let _ = db.execute_batch("ROLLBACK");
                    Err(e)
                }
            }
        })?;
        outcome.map_err(|stored| super::foreign_key_error(&stored, keys))
    }

    async fn purge_step(
        &self,
        since: &PurgeCutoffs,
        cutoffs: &PurgeCutoffs,
        batch: u32,
    ) -> Result<Purged, StoreError> {
        // One statement per table, each taking the connection on its own,
        // and a yield after each: a join waiting for the store gets it
        // between two statements.
        let mut purged = Purged::default();
        for (detail, after, until) in super::purge_plan(since, cutoffs) {
            let n = self.with(|db| purge_rows(db, detail.table, after, until, batch))?;
            *(detail.count)(&mut purged) += n;
            tokio::task::yield_now().await;
        }
        let (after, until) = (since.conferences, cutoffs.conferences);
        if until > after {
            let sql = format!(
                "DELETE FROM conferences WHERE id IN (
                    SELECT c.id FROM conferences c
                    WHERE c.ended > ?1 AND c.ended <= ?2 AND {}
                    LIMIT ?3)",
                super::nothing_left_of_c()
            );
            purged.conferences = self.with(|db| {
                exec(db, &sql, params![after as i64, until as i64, batch]).map(|n| n as u64)
            })?;
        }
        Ok(purged)
    }

    async fn insert_conference(&self, c: &ConferenceRecord) -> Result<(), StoreError> {
        self.with(|db| {
            exec(
                db,
                "INSERT INTO conferences (id, tenant, jurisdiction, passcode_salt, passcode_sha256,
                 host_token_sha256, locked, waiting_room, created, ended, e2ee)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11)",
                params![
                    c.id,
                    c.tenant,
                    c.jurisdiction,
                    c.passcode.as_ref().map(|p| p.salt.to_vec()),
                    c.passcode.as_ref().map(|p| p.sha256.to_vec()),
                    c.host_token_sha256.as_slice(),
                    c.locked,
                    c.waiting_room,
                    c.created as i64,
                    c.ended.map(|e| e as i64),
                    c.e2ee,
                ],
            )
            .map(|_| ())
        })
    }

    async fn conference(&self, id: &str) -> Result<Option<ConferenceRecord>, StoreError> {
        self.with(|db| {
            row(
                db,
                "SELECT * FROM conferences WHERE id = ?1",
                params![id],
                |r| {
                    let salt: Option<Vec<u8>> = r.get("passcode_salt")?;
                    let hash = blob32(r.get("passcode_sha256")?);
                    let passcode = match (salt.and_then(|s| <[u8; 16]>::try_from(s).ok()), hash) {
                        (Some(salt), Some(sha256)) => Some(PasscodeHash { salt, sha256 }),
                        _ => None,
                    };
                    Ok(ConferenceRecord {
                        id: r.get("id")?,
                        tenant: r.get("tenant")?,
                        jurisdiction: r.get("jurisdiction")?,
                        passcode,
                        host_token_sha256: blob32(r.get("host_token_sha256")?).unwrap_or_default(),
                        locked: r.get("locked")?,
                        waiting_room: r.get("waiting_room")?,
                        created: r.get::<_, i64>("created")? as u64,
                        ended: r.get::<_, Option<i64>>("ended")?.map(|e| e as u64),
                        e2ee: r.get("e2ee")?,
                    })
                },
            )
            .optional()
        })
    }

    async fn set_locked(&self, id: &str, locked: bool) -> Result<(), StoreError> {
        self.with(|db| {
            exec(
                db,
                "UPDATE conferences SET locked = ?2 WHERE id = ?1",
                params![id, locked],
            )
            .map(|_| ())
        })
    }

    async fn end_conference(&self, id: &str, at: u64) -> Result<(), StoreError> {
        self.with(|db| {
            exec(
                db,
                "UPDATE conferences SET ended = ?2 WHERE id = ?1 AND ended IS NULL",
                params![id, at as i64],
            )
            .map(|_| ())
        })
    }

    async fn insert_invite(&self, i: &InviteRecord) -> Result<(), StoreError> {
        self.with(|db| {
            exec(db,
                "INSERT INTO invites (token_sha256, conference, participant_id, display_name, role, expires)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
                params![
                    i.token_sha256.as_slice(),
                    i.conference,
                    i.participant_id,
                    i.display_name,
                    i.role.as_str(),
                    i.expires as i64
                ],
            )
            .map(|_| ())
        })
    }

    async fn invite(
        &self,
        token_sha256: &[u8; 32],
        conference: &str,
        now: u64,
    ) -> Result<Result<InviteRecord, InviteRefusal>, StoreError> {
        self.with(|db| lookup_invite(db, token_sha256, conference, now))
    }

    async fn use_invite(
        &self,
        token_sha256: &[u8; 32],
        conference: &str,
        now: u64,
    ) -> Result<Result<InviteRecord, InviteRefusal>, StoreError> {
        self.with(|db| {
            let invite = match lookup_invite(db, token_sha256, conference, now)? {
                Ok(i) => i,
                Err(refusal) => return Ok(Err(refusal)),
            };
            // The condition on `used` makes the claim atomic: of two
            // concurrent uses, one changes the row.
            let changed = exec(
                db,
                "UPDATE invites SET used = 1 WHERE token_sha256 = ?1 AND used = 0",
                params![token_sha256.as_slice()],
            )?;
            if changed == 0 {
                return Ok(Err(InviteRefusal::Used));
            }
            Ok(Ok(invite))
        })
    }

    async fn upsert_participant(&self, p: &ParticipantRecord) -> Result<(), StoreError> {
        self.with(|db| upsert_participant(db, p))
    }

    async fn record_join(
        &self,
        p: &ParticipantRecord,
        relay: &str,
        relay_country: &str,
        event: &AuditEvent,
        invite: Option<&[u8; 32]>,
    ) -> Result<bool, StoreError> {
        let mut conn = self.conn.lock().map_err(|_| err("store lock poisoned"))?;
        let tx = conn.transaction().map_err(err)?;
        // A participant removed meanwhile (a kick racing a rejoin) stays removed.
        let current: Option<String> = row(
            &tx,
            "SELECT status FROM participants WHERE conference = ?1 AND id = ?2",
            params![p.conference, p.id],
            |r| r.get(0),
        )
        .optional()
        .map_err(err)?;
        if current.as_deref() == Some("kicked") {
            return Ok(false);
        }
        if let Some(token) = invite {
            let claimed = exec(
                &tx,
                "UPDATE invites SET used = 1 WHERE token_sha256 = ?1 AND used = 0",
                params![token.as_slice()],
            )
            .map_err(err)?;
            if claimed == 0 {
                return Ok(false);
            }
        }
        upsert_participant(&tx, p).map_err(err)?;
        note_relay(&tx, &p.conference, relay, relay_country, event.time).map_err(err)?;
        insert_audit(&tx, event).map_err(err)?;
        tx.commit().map_err(err)?;
        Ok(true)
    }

    async fn participant(
        &self,
        conference: &str,
        id: &str,
    ) -> Result<Option<ParticipantRecord>, StoreError> {
        self.with(|db| {
            row(
                db,
                "SELECT * FROM participants WHERE conference = ?1 AND id = ?2",
                params![conference, id],
                participant_row,
            )
            .optional()
        })
    }

    async fn set_status(
        &self,
        conference: &str,
        id: &str,
        status: Status,
    ) -> Result<(), StoreError> {
        self.with(|db| {
            exec(
                db,
                "UPDATE participants SET status = ?3 WHERE conference = ?1 AND id = ?2",
                params![conference, id, status.as_str()],
            )
            .map(|_| ())
        })
    }

    async fn set_status_if(
        &self,
        conference: &str,
        id: &str,
        from: Status,
        to: Status,
    ) -> Result<bool, StoreError> {
        self.with(|db| {
            exec(
                db,
                "UPDATE participants SET status = ?4 WHERE conference = ?1 AND id = ?2 AND status = ?3",
                params![conference, id, from.as_str(), to.as_str()],
            )
            .map(|n| n == 1)
        })
    }

    async fn waiting(&self, conference: &str) -> Result<Vec<ParticipantRecord>, StoreError> {
        self.with(|db| {
            let mut stmt = db.prepare_cached(
                "SELECT * FROM participants WHERE conference = ?1 AND status = 'waiting'
                 ORDER BY created, id",
            )?;
            let rows = stmt.query_map(params![conference], participant_row)?;
            rows.collect()
        })
    }

    async fn add_ban(&self, b: &Ban) -> Result<(), StoreError> {
        self.with(|db| {
            exec(db,
                "INSERT INTO bans (conference, participant_id, address_hash, invite_sha256, created)
                 VALUES (?1, ?2, ?3, ?4, ?5)",
                params![
                    b.conference,
                    b.participant_id,
                    b.address_hash.as_slice(),
                    b.invite_sha256.map(|h| h.to_vec()),
                    b.created as i64
                ],
            )
            .map(|_| ())
        })
    }

    async fn is_banned(
        &self,
        conference: &str,
        participant_id: Option<&str>,
        address_hash: &[u8; 32],
        invite_sha256: Option<&[u8; 32]>,
    ) -> Result<bool, StoreError> {
        self.with(|db| {
            row(
                db,
                "SELECT EXISTS (SELECT 1 FROM bans WHERE conference = ?1 AND
                 (participant_id = ?2 OR address_hash = ?3 OR invite_sha256 = ?4))",
                params![
                    conference,
                    participant_id,
                    address_hash.as_slice(),
                    invite_sha256.map(|h| h.to_vec())
                ],
                |r| r.get(0),
            )
        })
    }

    async fn add_report(
        &self,
        conference: &str,
        participant_id: &str,
        reason: &str,
        at: u64,
    ) -> Result<i64, StoreError> {
        self.with(|db| {
            exec(
                db,
                "INSERT INTO abuse_reports (conference, participant_id, reason, created)
                 VALUES (?1, ?2, ?3, ?4)",
                params![conference, participant_id, reason, at as i64],
            )?;
            Ok(db.last_insert_rowid())
        })
    }

    async fn reports(&self, limit: usize) -> Result<Vec<AbuseReport>, StoreError> {
        self.with(|db| {
            let mut stmt = db.prepare_cached(
                "SELECT id, conference, participant_id, reason, created FROM abuse_reports
                 ORDER BY id DESC LIMIT ?1",
            )?;
            let rows = stmt.query_map(params![limit as i64], |r| {
                Ok(AbuseReport {
                    id: r.get(0)?,
                    conference: r.get(1)?,
                    participant_id: r.get(2)?,
                    reason: r.get(3)?,
                    created: r.get::<_, i64>(4)? as u64,
                })
            })?;
            rows.collect()
        })
    }

    async fn audit(&self, e: &AuditEvent) -> Result<(), StoreError> {
        self.with(|db| insert_audit(db, e))
    }

    async fn audit_log(&self, conference: &str) -> Result<Vec<AuditEvent>, StoreError> {
        self.with(|db| {
            let mut stmt = db.prepare_cached(
                "SELECT time, conference, event, detail FROM audit WHERE conference = ?1 ORDER BY id",
            )?;
            let rows = stmt.query_map(params![conference], |r| {
                let detail: String = r.get(3)?;
                Ok(AuditEvent {
                    time: r.get::<_, i64>(0)? as u64,
                    conference: r.get(1)?,
                    event: r.get(2)?,
                    detail: serde_json::from_str(&detail).unwrap_or(serde_json::Value::Null),
                })
            })?;
            rows.collect()
        })
    }

    async fn note_relay(
        &self,
        conference: &str,
        relay: &str,
        country: &str,
        now: u64,
    ) -> Result<(), StoreError> {
        self.with(|db| note_relay(db, conference, relay, country, now))
    }

    async fn record_usage(
        &self,
        relay: &str,
        now: u64,
        usage: &[Usage<'_>],
        links: &[LinkUsage<'_>],
    ) -> Result<(), StoreError> {
        let mut conn = self.conn.lock().map_err(|_| err("store lock poisoned"))?;
        let tx = conn.transaction().map_err(err)?;
        for u in usage {
            exec(
                &tx,
                "INSERT INTO conference_relays (conference, relay, first_seen, last_seen, bytes_in, bytes_out, peak_participants, countries, outside)
                 VALUES (?1, ?2, ?3, ?3, ?4, ?5, ?6, ?7, ?8)
                 ON CONFLICT (conference, relay) DO UPDATE SET last_seen = ?3,
                 bytes_in = max(bytes_in, ?4), bytes_out = max(bytes_out, ?5),
                 peak_participants = max(peak_participants, ?6),
                 outside = max(outside, ?8),
                 countries = CASE WHEN ?7 = '' OR instr(',' || countries || ',', ',' || ?7 || ',') > 0 THEN countries
                 WHEN countries = '' THEN ?7 ELSE countries || ',' || ?7 END",
                params![
                    u.conference,
                    relay,
                    now as i64,
                    u.bytes_in as i64,
                    u.bytes_out as i64,
                    i64::from(u.participants),
                    u.country,
                    i64::from(!u.inside)
                ],
            )
            .map_err(err)?;
        }
        for l in links {
            exec(
                &tx,
                "INSERT INTO conference_links (conference, relay, peer, first_seen, last_seen, bytes_in, bytes_out)
                 VALUES (?1, ?2, ?3, ?4, ?4, ?5, ?6)
                 ON CONFLICT (conference, relay, peer) DO UPDATE SET last_seen = ?4,
                 bytes_in = max(bytes_in, ?5), bytes_out = max(bytes_out, ?6)",
                params![l.conference, relay, l.peer, now as i64, l.bytes_in as i64, l.bytes_out as i64],
            )
            .map_err(err)?;
        }
        tx.commit().map_err(err)
    }

    async fn links_of(&self, conference: &str) -> Result<Vec<LinkUse>, StoreError> {
        self.with(|db| {
            let mut stmt = db.prepare_cached(
                "SELECT relay, peer, first_seen, last_seen, bytes_in, bytes_out FROM conference_links
                 WHERE conference = ?1 ORDER BY relay, peer",
            )?;
            let rows = stmt.query_map(params![conference], |r| {
                Ok(LinkUse {
                    relay: r.get(0)?,
                    peer: r.get(1)?,
                    first_seen: r.get::<_, i64>(2)? as u64,
                    last_seen: r.get::<_, i64>(3)? as u64,
                    bytes_in: r.get::<_, i64>(4)? as u64,
                    bytes_out: r.get::<_, i64>(5)? as u64,
                })
            })?;
            rows.collect()
        })
    }

    async fn relays_of(&self, conference: &str) -> Result<Vec<RelayUse>, StoreError> {
        self.with(|db| {
            let mut stmt = db.prepare_cached(
                "SELECT relay, first_seen, last_seen, bytes_in, bytes_out, peak_participants, countries, outside FROM conference_relays
                 WHERE conference = ?1 ORDER BY first_seen, relay",
            )?;
            let rows = stmt.query_map(params![conference], |r| {
                Ok(RelayUse {
                    relay: r.get(0)?,
                    first_seen: r.get::<_, i64>(1)? as u64,
                    last_seen: r.get::<_, i64>(2)? as u64,
                    bytes_in: r.get::<_, i64>(3)? as u64,
                    bytes_out: r.get::<_, i64>(4)? as u64,
                    peak_participants: r.get::<_, i64>(5)? as u32,
                    countries: r
                        .get::<_, String>(6)?
                        .split(',')
                        .filter(|c| !c.is_empty())
                        .map(str::to_owned)
                        .collect(),
                    outside: r.get::<_, i64>(7)? != 0,
                })
            })?;
            rows.collect()
        })
    }
}

fn lookup_invite(
    db: &Connection,
    token_sha256: &[u8; 32],
    conference: &str,
    now: u64,
) -> rusqlite::Result<Result<InviteRecord, InviteRefusal>> {
    let row = db
        .query_row(
            "SELECT participant_id, display_name, role, expires, used FROM invites
                     WHERE token_sha256 = ?1 AND conference = ?2",
            params![token_sha256.as_slice(), conference],
            |r| {
                Ok((
                    r.get::<_, String>(0)?,
                    r.get::<_, String>(1)?,
                    r.get::<_, String>(2)?,
                    r.get::<_, i64>(3)? as u64,
                    r.get::<_, bool>(4)?,
                ))
            },
        )
        .optional()?;
    let Some((participant_id, display_name, role, expires, used)) = row else {
        return Ok(Err(InviteRefusal::Unknown));
    };
    if used {
        return Ok(Err(InviteRefusal::Used));
    }
    if expires <= now {
        return Ok(Err(InviteRefusal::Expired));
    }
    Ok(Ok(InviteRecord {
        token_sha256: *token_sha256,
        conference: conference.to_owned(),
        participant_id,
        display_name,
        role: Role::parse(&role).unwrap_or(Role::Viewer),
        expires,
    }))
}
