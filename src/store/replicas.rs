//! What router replicas of the same jurisdictions agree on besides their
//! records: relays' reports, the commands queued for relays, conference
//! placements, the planner lease and waiting-room announcements.
//!
//! [`Replicas`] is the seam: the router's code reads the same with one
//! router or many. One router alone keeps all of it in its own memory (the
//! router's in-process implementation); replicas share it through
//! PostgreSQL ([`super::Postgres`]). A third backend implements the trait
//! and touches nothing in the router.

use std::future::Future;
use std::pin::Pin;
use std::time::Duration;

use super::StoreError;
use crate::wire::channel::{Action, Command, RelayReport};

/// A relay's last report as another replica received it.
#[derive(Debug, Clone)]
pub struct SharedReport {
    pub relay: String,
    /// `None` when the stored report could not be read (logged by the
    /// backend); its version still moves the cursor past it.
    pub report: Option<RelayReport>,
    pub version: i64,
    /// How long ago it was received, by the shared clock.
    pub age: Duration,
}

/// What an announcement from another replica is about.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Announcement {
    /// A command was queued; the payload is the relay's id.
    Commands,
    /// A waiting-room decision; the payload is the conference id.
    Waiting,
}

/// Called for each announcement: what it is about and its payload.
pub type OnAnnouncement = Box<dyn Fn(Announcement, &str) + Send + Sync>;

/// A task that runs until aborted.
pub type Task = Pin<Box<dyn Future<Output = ()> + Send>>;

/// Called after announcements may have been missed (a reconnect).
pub type OnResync = Box<dyn Fn() + Send + Sync>;

/// Coordination between the routers that serve the same jurisdictions.
/// Every call is atomic; implementations must be safe to call from many
/// request handlers at once.
#[async_trait::async_trait]
pub trait Replicas: Send + Sync + std::fmt::Debug {
    /// The numbering epoch of commands to relays, when the replicas share
    /// one (any of them may deliver a command); `None`: each run picks its own.
    fn command_epoch(&self) -> Option<u64>;

    /// Shares `relay`'s report, as received by `router`, with the others.
    async fn share_report(
        &self,
        relay: &str,
        router: &str,
        report: &RelayReport,
    ) -> Result<(), StoreError>;

    /// Reports the other replicas received since `version`, oldest first.
    async fn shared_reports(&self, version: i64, me: &str)
    -> Result<Vec<SharedReport>, StoreError>;

    /// Queues `action` for each of `relays`. With `fence` (holder, term),
    /// only while that holder still holds the planner lease with that term;
    /// `false` if it does not (nothing queued).
    async fn queue_commands(
        &self,
        relays: &[&str],
        action: &Action,
        fence: Option<(&str, i64)>,
    ) -> Result<bool, StoreError>;

    /// Drops `relay`'s commands up to `ack` (when given) and returns those
    /// left, in order.
    async fn pending_commands(
        &self,
        relay: &str,
        ack: Option<u64>,
    ) -> Result<Vec<Command>, StoreError>;

    /// The relay `conference` was placed on within `fresh`, if any.
    async fn placement(
        &self,
        conference: &str,
        fresh: Duration,
    ) -> Result<Option<String>, StoreError>;

    /// Places `conference` on `relay` unless a placement younger than
    /// `fresh` exists; returns the relay it is placed on (the first
    /// writer's).
    async fn claim_placement(
        &self,
        conference: &str,
        relay: &str,
        fresh: Duration,
    ) -> Result<String, StoreError>;

    /// Forgets `conference`'s placement (it ended).
    async fn forget_placement(&self, conference: &str) -> Result<(), StoreError>;

    /// Takes or renews lease `name` for `holder` for `ttl`; its term while
    /// `holder` holds it (raised whenever it changes hands), `None` while
    /// another holder's lease is unexpired.
    async fn lease(
        &self,
        name: &str,
        holder: &str,
        ttl: Duration,
    ) -> Result<Option<i64>, StoreError>;

    /// Gives lease `name` up if `holder` has it (a clean shutdown).
    async fn release(&self, name: &str, holder: &str) -> Result<(), StoreError>;

    /// Announces a waiting-room decision in `conference` to the others.
    async fn announce_waiting(&self, conference: &str) -> Result<(), StoreError>;

    /// Hears the others' announcements until aborted, calling `wake` for
    /// each and `resync` whenever some may have been missed; `None` when
    /// there is nobody to hear.
    fn listen(self: std::sync::Arc<Self>, wake: OnAnnouncement, resync: OnResync) -> Option<Task>;
}
