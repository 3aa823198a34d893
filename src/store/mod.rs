//! The router's persistent records: conferences, invitations, participants,
//! bans, abuse reports, the relays a conference used, and the audit log.
//!
//! [`Store`] is the seam: the router only talks to the trait. [`Sqlite`] is
//! the embedded default for one router; [`Postgres`] is shared by several
//! router replicas of the same jurisdictions, and also carries what
//! replicas must agree on besides records, behind the [`Replicas`] trait
//! (see [`postgres`] for how, and `router::replicas` for a router alone). Nothing here holds a
//! raw client address: bans and the audit log carry a keyed hash of it
//! ([`Store::address_key`]).

pub mod postgres;
pub mod replicas;
mod sqlite;

use serde::Serialize;

pub use postgres::Postgres;
pub use replicas::Replicas;
pub use sqlite::Sqlite;

/// A store operation failed.
#[derive(Debug, thiserror::Error)]
#[error("store error: {message}")]
pub struct StoreError {
    pub message: String,
    /// The store could not be reached (database down, connection refused,
    /// timed out): the request may succeed later, and nothing was written.
    pub unavailable: bool,
}

impl StoreError {
    pub fn new(message: impl Into<String>) -> Self {
        StoreError {
            message: message.into(),
            unavailable: false,
        }
    }

    pub fn unavailable(message: impl Into<String>) -> Self {
        StoreError {
            message: message.into(),
            unavailable: true,
        }
    }
}

/// A participant's role, from its invitation (passcode joins are speakers).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Role {
    Host,
    Speaker,
    Viewer,
}

impl Role {
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Host => "host",
            Role::Speaker => "speaker",
            Role::Viewer => "viewer",
        }
    }

    /// As a statement parameter (a reference that lives as long as needed).
    pub(crate) fn as_sql(self) -> &'static &'static str {
        match self {
            Role::Host => &"host",
            Role::Speaker => &"speaker",
            Role::Viewer => &"viewer",
        }
    }

    pub fn parse(text: &str) -> Option<Role> {
        match text {
            "host" => Some(Role::Host),
            "speaker" => Some(Role::Speaker),
            "viewer" => Some(Role::Viewer),
            _ => None,
        }
    }
}

/// A salted passcode hash.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PasscodeHash {
    pub salt: [u8; 16],
    pub sha256: [u8; 32],
}

/// One conference as stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConferenceRecord {
    pub id: String,
    pub tenant: String,
    pub jurisdiction: String,
    /// `None`: joins need an invitation.
    pub passcode: Option<PasscodeHash>,
    pub host_token_sha256: [u8; 32],
    pub locked: bool,
    pub waiting_room: bool,
    /// Unix seconds.
    pub created: u64,
    pub ended: Option<u64>,
    /// End-to-end encrypted: every ticket says so, and relays refuse tracks
    /// not declared encrypted.
    pub e2ee: bool,
}

/// A single-use invitation for a named participant.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InviteRecord {
    pub token_sha256: [u8; 32],
    pub conference: String,
    /// The participant id the invitation's holder joins as.
    pub participant_id: String,
    pub display_name: String,
    pub role: Role,
    pub expires: u64,
}

/// Why an invitation could not be used.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum InviteRefusal {
    Unknown,
    Used,
    Expired,
}

/// Where a participant is in the join flow.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Status {
    /// In the waiting room.
    Waiting,
    /// A host let it in; it fetches its ticket on its next poll.
    Admitted,
    Denied,
    /// A ticket was issued.
    Joined,
    Kicked,
}

impl Status {
    fn as_str(self) -> &'static str {
        match self {
            Status::Waiting => "waiting",
            Status::Admitted => "admitted",
            Status::Denied => "denied",
            Status::Joined => "joined",
            Status::Kicked => "kicked",
        }
    }

    /// As a statement parameter.
    fn as_sql(self) -> &'static &'static str {
        match self {
            Status::Waiting => &"waiting",
            Status::Admitted => &"admitted",
            Status::Denied => &"denied",
            Status::Joined => &"joined",
            Status::Kicked => &"kicked",
        }
    }

    fn parse(text: &str) -> Option<Status> {
        match text {
            "waiting" => Some(Status::Waiting),
            "admitted" => Some(Status::Admitted),
            "denied" => Some(Status::Denied),
            "joined" => Some(Status::Joined),
            "kicked" => Some(Status::Kicked),
            _ => None,
        }
    }
}

/// A participant the router has seen.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ParticipantRecord {
    pub id: String,
    pub conference: String,
    pub display_name: String,
    pub role: Role,
    pub status: Status,
    /// Keyed hash of the client address.
    pub address_hash: [u8; 32],
    /// The invitation it joined with, if any.
    pub invite_sha256: Option<[u8; 32]>,
    /// Hash of the token a waiting participant polls with.
    pub wait_token_sha256: Option<[u8; 32]>,
    /// Hash of the token that lets it rejoin (after its relay failed)
    /// without the passcode or invitation again.
    pub rejoin_sha256: Option<[u8; 32]>,
    /// The relay its last ticket named.
    pub relay: Option<String>,
    pub created: u64,
}

/// What a ban matches on: any one of these bars a join.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Ban {
    pub conference: String,
    pub participant_id: String,
    pub address_hash: [u8; 32],
    pub invite_sha256: Option<[u8; 32]>,
    pub created: u64,
}

/// An abuse report a host filed with the operator.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct AbuseReport {
    pub id: i64,
    pub conference: String,
    pub participant_id: String,
    pub reason: String,
    pub created: u64,
}

/// One audit-log line. `detail` never holds a raw client address.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct AuditEvent {
    pub time: u64,
    pub conference: String,
    pub event: String,
    pub detail: serde_json::Value,
}

/// A relay that carried a conference, as the router assigned it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct RelayUse {
    pub relay: String,
    pub first_seen: u64,
    pub last_seen: u64,
    /// Highest media byte counts the relay reported for the conference.
    pub bytes_in: u64,
    pub bytes_out: u64,
    /// Most participants it reported at once.
    pub peak_participants: u32,
    /// The countries the inventory gave the relay while it carried the
    /// conference, as recorded then (empty in records older than schema 4).
    pub countries: Vec<String>,
    /// Whether the policy in force placed it outside the conference's
    /// jurisdiction at any time it reported carrying the conference.
    pub outside: bool,
}

/// A cascade link of a conference, as the relay at one end reported it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct LinkUse {
    pub relay: String,
    pub peer: String,
    pub first_seen: u64,
    pub last_seen: u64,
    pub bytes_in: u64,
    pub bytes_out: u64,
}

/// One conference's load on a relay, as reported.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Usage<'a> {
    pub conference: &'a str,
    pub participants: u32,
    pub bytes_in: u64,
    pub bytes_out: u64,
    /// The relay's country in the policy in force ("" when not in it).
    pub country: &'a str,
    /// Whether that policy places it inside the conference's jurisdiction.
    pub inside: bool,
}

/// One cascade link's traffic, as the reporting relay counted it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LinkUsage<'a> {
    pub conference: &'a str,
    pub peer: &'a str,
    pub bytes_in: u64,
    pub bytes_out: u64,
}

/// What [`Store::bind_records_key`] found and did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KeyBinding {
    /// The store was already bound to the current key.
    Same,
    /// The store had no records key: the hashes it held were keyed now.
    Keyed {
        address_hashes: u64,
        passcode_hashes: u64,
    },
    /// The store was bound to a previous key; the current one makes new
    /// hashes from now on, and the previous one still verifies old ones.
    Rotated { from: [u8; 8] },
    /// The store's key id had been deleted by hand (a lost key): the
    /// current key is bound and the hashes already there are left as they
    /// are (keyed with the lost key, they match nothing any more).
    Adopted,
}

/// Until when each kind of record of ended conferences is kept: records of
/// a conference that ended at or before a cutoff (Unix seconds) go.
/// Records of a conference still running are kept whatever their age.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct PurgeCutoffs {
    /// Participant rows, bans and invitations (names, address hashes).
    pub participants: u64,
    pub audit: u64,
    pub abuse_reports: u64,
    /// The conference record and its relay and link use, once nothing
    /// else of it is left.
    pub conferences: u64,
}

/// Rows one purge step deleted, by kind.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Purged {
    pub participants: u64,
    pub bans: u64,
    pub invites: u64,
    pub audit: u64,
    pub abuse_reports: u64,
    pub relay_use: u64,
    pub link_use: u64,
    pub conferences: u64,
}

impl Purged {
    /// Each kind with its metric label.
    pub fn by_kind(&self) -> [(&'static str, u64); 8] {
        [
            ("participants", self.participants),
            ("bans", self.bans),
            ("invites", self.invites),
            ("audit", self.audit),
            ("abuse_reports", self.abuse_reports),
            ("relay_use", self.relay_use),
            ("link_use", self.link_use),
            ("conferences", self.conferences),
        ]
    }

    pub fn total(&self) -> u64 {
        self.by_kind().iter().map(|(_, n)| n).sum()
    }

    /// Whether a step that may delete `batch` rows of each kind left some
    /// behind (another step is due).
    pub fn more_after(&self, batch: u32) -> bool {
        self.by_kind().iter().any(|(_, n)| *n >= u64::from(batch))
    }

    pub fn add(&mut self, other: &Purged) {
        self.participants += other.participants;
        self.bans += other.bans;
        self.invites += other.invites;
        self.audit += other.audit;
        self.abuse_reports += other.abuse_reports;
        self.relay_use += other.relay_use;
        self.link_use += other.link_use;
        self.conferences += other.conferences;
    }
}

/// A table holding part of a conference's records besides its own row:
/// which period of [`PurgeCutoffs`] its rows are kept for, and which count
/// of [`Purged`] its deleted rows go to.
#[derive(Clone, Copy)]
pub(crate) struct Detail {
    pub table: &'static str,
    pub period: fn(&PurgeCutoffs) -> u64,
    pub count: fn(&mut Purged) -> &mut u64,
}

/// Every table holding part of a conference besides its row: the purge
/// empties them, and the conference row goes once none holds anything of it.
pub(crate) const CONFERENCE_DETAILS: [Detail; 7] = [
    Detail {
        table: "participants",
        period: |c| c.participants,
        count: |p| &mut p.participants,
    },
    Detail {
        table: "bans",
        period: |c| c.participants,
        count: |p| &mut p.bans,
    },
    Detail {
        table: "invites",
        period: |c| c.participants,
        count: |p| &mut p.invites,
    },
    Detail {
        table: "audit",
        period: |c| c.audit,
        count: |p| &mut p.audit,
    },
    Detail {
        table: "abuse_reports",
        period: |c| c.abuse_reports,
        count: |p| &mut p.abuse_reports,
    },
    Detail {
        table: "conference_relays",
        period: |c| c.conferences,
        count: |p| &mut p.relay_use,
    },
    Detail {
        table: "conference_links",
        period: |c| c.conferences,
        count: |p| &mut p.link_use,
    },
];

/// The deletions of one purge step, in order, for both backends: each
/// detail table with the window `(after, until]` of conference ends whose
/// rows it loses — first its own period's; then, for what was written
/// after its own period had passed (an abuse report filed late, a refused
/// ticket reported late), the conference's, so nothing outlives its
/// conference. Empty windows are left out.
pub(crate) fn purge_plan(since: &PurgeCutoffs, cutoffs: &PurgeCutoffs) -> Vec<(Detail, u64, u64)> {
    let conference = (since.conferences, cutoffs.conferences);
    let own = CONFERENCE_DETAILS
        .iter()
        .map(|d| (*d, (d.period)(since), (d.period)(cutoffs)));
    let late = CONFERENCE_DETAILS
        .iter()
        .filter(|d| ((d.period)(since), (d.period)(cutoffs)) != conference)
        .map(|d| (*d, conference.0, conference.1));
    own.chain(late)
        .filter(|(_, after, until)| until > after)
        .collect()
}

/// The SQL condition that nothing of conference `c` is left in any detail
/// table (the conference row may go).
pub(crate) fn nothing_left_of_c() -> String {
    CONFERENCE_DETAILS
        .iter()
        .map(|d| {
            format!(
                "NOT EXISTS (SELECT 1 FROM {} t WHERE t.conference = c.id)",
                d.table
            )
        })
        .collect::<Vec<_>>()
        .join(" AND ")
}

/// The refusal of a store bound to a key the router does not hold.
pub(crate) fn foreign_key_error(stored: &[u8], keys: &crate::secret::RecordsKeys) -> StoreError {
    StoreError::new(format!(
        "the store's address and passcode hashes were made with records key {} but this router's records key is {}: give every replica the same records_key, or, to rotate, list the old key file in records_key_previous",
        hex::encode(stored),
        hex::encode(keys.current.id())
    ))
}

/// The router's persistence. Implementations must be safe to call from many
/// request handlers at once and make each call atomic.
#[async_trait::async_trait]
pub trait Store: Send + Sync + std::fmt::Debug {
    /// Which backend this is.
    fn backend(&self) -> Backend;

    /// Whether the store answers now (for `/readyz`): a trivial round trip.
    async fn ping(&self) -> Result<(), StoreError>;

    /// Salt for hashing client addresses; made on first use and kept, so
    /// bans survive restarts. Not a secret on its own: every address hash
    /// is also keyed with the records key, which is never in the store
    /// ([`crate::secret::RecordsKey`]).
    async fn address_key(&self) -> Result<[u8; 32], StoreError>;

    /// Binds the store to the router's records key, in one transaction
    /// (see [`KeyBinding`]): a store that has never seen a records key
    /// (created, or upgraded from a schema before records keys, which marks
    /// it `records_key_pending`) has its address and passcode hashes keyed
    /// with `keys.current` (they were plain salted SHA-256, which a copy of
    /// the store could reverse); a store bound to a previous key is rebound
    /// to the current one; a store bound to any other key is refused, since
    /// every ban and passcode in it would silently stop matching.
    async fn bind_records_key(
        &self,
        keys: &crate::secret::RecordsKeys,
    ) -> Result<KeyBinding, StoreError>;

    /// One step of the retention purge: deletes at most `batch` rows of
    /// each kind of the conferences that ended after `since` and at or
    /// before `cutoffs` (per kind), each kind in its own short statement (so
    /// a join waits for at most one of them). A conference record goes only
    /// once nothing else of it is left. The caller repeats the step while
    /// [`Purged::more_after`] says so; once a run is through, its cutoffs
    /// are the next run's `since`, so a run looks only at conferences that
    /// ended since the last one (every record belongs to a stored
    /// conference, and a conference's end never moves back).
    async fn purge_step(
        &self,
        since: &PurgeCutoffs,
        cutoffs: &PurgeCutoffs,
        batch: u32,
    ) -> Result<Purged, StoreError>;

    async fn insert_conference(&self, c: &ConferenceRecord) -> Result<(), StoreError>;
    async fn conference(&self, id: &str) -> Result<Option<ConferenceRecord>, StoreError>;
    async fn set_locked(&self, id: &str, locked: bool) -> Result<(), StoreError>;
    async fn end_conference(&self, id: &str, at: u64) -> Result<(), StoreError>;

    async fn insert_invite(&self, invite: &InviteRecord) -> Result<(), StoreError>;
    /// Looks an invitation up without using it.
    async fn invite(
        &self,
        token_sha256: &[u8; 32],
        conference: &str,
        now: u64,
    ) -> Result<Result<InviteRecord, InviteRefusal>, StoreError>;
    /// Marks the invitation used, if it exists for `conference`, is unused
    /// and unexpired at `now`; atomically, so it is used at most once.
    async fn use_invite(
        &self,
        token_sha256: &[u8; 32],
        conference: &str,
        now: u64,
    ) -> Result<Result<InviteRecord, InviteRefusal>, StoreError>;

    async fn upsert_participant(&self, p: &ParticipantRecord) -> Result<(), StoreError>;
    /// A ticket was issued: the participant, the relay it was sent to and
    /// the audit line, and the claim of its invitation if it used one, in
    /// one transaction. `false` (and nothing written) when the invitation
    /// was used meanwhile or the participant was removed meanwhile.
    async fn record_join(
        &self,
        p: &ParticipantRecord,
        relay: &str,
        relay_country: &str,
        event: &AuditEvent,
        invite: Option<&[u8; 32]>,
    ) -> Result<bool, StoreError>;
    async fn participant(
        &self,
        conference: &str,
        id: &str,
    ) -> Result<Option<ParticipantRecord>, StoreError>;
    async fn set_status(
        &self,
        conference: &str,
        id: &str,
        status: Status,
    ) -> Result<(), StoreError>;
    /// Moves the participant from `from` to `to`; `false` if it was not in `from`.
    async fn set_status_if(
        &self,
        conference: &str,
        id: &str,
        from: Status,
        to: Status,
    ) -> Result<bool, StoreError>;
    /// Participants in the waiting room, oldest first.
    async fn waiting(&self, conference: &str) -> Result<Vec<ParticipantRecord>, StoreError>;

    async fn add_ban(&self, ban: &Ban) -> Result<(), StoreError>;
    /// Whether any ban of `conference` matches the participant id, the
    /// address hash or the invitation.
    async fn is_banned(
        &self,
        conference: &str,
        participant_id: Option<&str>,
        address_hash: &[u8; 32],
        invite_sha256: Option<&[u8; 32]>,
    ) -> Result<bool, StoreError>;

    async fn add_report(
        &self,
        conference: &str,
        participant_id: &str,
        reason: &str,
        at: u64,
    ) -> Result<i64, StoreError>;
    /// Abuse reports, newest first, at most `limit`.
    async fn reports(&self, limit: usize) -> Result<Vec<AbuseReport>, StoreError>;

    async fn audit(&self, event: &AuditEvent) -> Result<(), StoreError>;
    /// The audit log of one conference, oldest first.
    async fn audit_log(&self, conference: &str) -> Result<Vec<AuditEvent>, StoreError>;

    /// Records that `relay` (in `country`, inside the conference's
    /// jurisdiction) carries `conference` as of `now`.
    async fn note_relay(
        &self,
        conference: &str,
        relay: &str,
        country: &str,
        now: u64,
    ) -> Result<(), StoreError>;
    /// Records what `relay` reported carrying, per conference and per
    /// cascade link, kept as the highest counts seen so they outlive the
    /// relay's own; in one transaction.
    async fn record_usage(
        &self,
        relay: &str,
        now: u64,
        usage: &[Usage<'_>],
        links: &[LinkUsage<'_>],
    ) -> Result<(), StoreError>;
    async fn links_of(&self, conference: &str) -> Result<Vec<LinkUse>, StoreError>;
    async fn relays_of(&self, conference: &str) -> Result<Vec<RelayUse>, StoreError>;
}

/// Which backend a store is, for the residency report and `/readyz`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Backend {
    Sqlite,
    Postgres,
}

/// An opened store: its records, and on PostgreSQL what router replicas
/// share besides them.
#[derive(Debug, Clone)]
pub struct Handle {
    pub records: std::sync::Arc<dyn Store>,
    /// Set on PostgreSQL: relay reports, commands, placements and the
    /// planner lease go through it; `None`: a router alone keeps them.
    pub replicas: Option<std::sync::Arc<dyn Replicas>>,
}

impl From<Sqlite> for Handle {
    fn from(store: Sqlite) -> Self {
        Handle {
            records: std::sync::Arc::new(store),
            replicas: None,
        }
    }
}

impl From<Postgres> for Handle {
    fn from(store: Postgres) -> Self {
        let store = std::sync::Arc::new(store);
        Handle {
            records: store.clone(),
            replicas: Some(store),
        }
    }
}

/// The environment variable a PostgreSQL password may come from.
pub const PASSWORD_ENV: &str = "RR_STORE_PASSWORD";

/// Opens the store at `location`: a SQLite file, or a PostgreSQL database
/// (its password from the configured file, else [`PASSWORD_ENV`]).
pub async fn open(location: &crate::policy::StoreLocation) -> Result<Handle, StoreError> {
    use crate::policy::StoreLocation;
    match location {
        StoreLocation::Sqlite(path) => Sqlite::open(path).map(Handle::from),
        StoreLocation::Postgres(pg) => {
            let password = match &pg.password_file {
                Some(file) => Some(
                    std::fs::read_to_string(file)
                        .map_err(|e| {
                            StoreError::new(format!("cannot read {}: {e}", file.display()))
                        })?
                        .trim_end_matches(['\r', '\n'])
                        .to_owned(),
                ),
                None => std::env::var(PASSWORD_ENV).ok(),
            };
            Postgres::connect(&postgres::Options {
                url: pg.url.clone(),
                password,
                ca: pg.ca.clone(),
                pool_size: 16,
            })
            .await
            .map(Handle::from)
        }
    }
}
