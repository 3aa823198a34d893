//! One router alone: what replicas would share through the store stays in
//! its own memory. Commands wait in the relay registry, which takes relays'
//! acknowledgements with their reports; the router's placements are its own
//! decisions; it always holds the planner lease; nobody hears its
//! announcements. The router's code is the same with one router or many
//! ([`crate::store::Replicas`]).

use std::sync::Arc;
use std::time::Duration;

use super::relays::Registry;
use crate::store::StoreError;
use crate::store::replicas::{OnAnnouncement, OnResync, Replicas, SharedReport, Task};
use crate::wire::channel::{Action, Command, RelayReport};

/// The in-process [`Replicas`] of a router without replicas.
#[derive(Debug)]
pub struct Alone {
    relays: Arc<Registry>,
}

impl Alone {
    pub fn new(relays: Arc<Registry>) -> Self {
        Alone { relays }
    }
}

/// The planner lease's term for a router alone (it never changes hands).
const TERM: i64 = 1;

#[async_trait::async_trait]
impl Replicas for Alone {
    fn command_epoch(&self) -> Option<u64> {
        None
    }

    async fn share_report(&self, _: &str, _: &str, _: &RelayReport) -> Result<(), StoreError> {
        Ok(())
    }

    async fn shared_reports(&self, _: i64, _: &str) -> Result<Vec<SharedReport>, StoreError> {
        Ok(Vec::new())
    }

    async fn queue_commands(
        &self,
        relays: &[&str],
        action: &Action,
        _fence: Option<(&str, i64)>,
    ) -> Result<bool, StoreError> {
        self.relays.command(relays.iter().copied(), action);
        Ok(true)
    }

    async fn pending_commands(
        &self,
        relay: &str,
        _: Option<u64>,
    ) -> Result<Vec<Command>, StoreError> {
        // Acknowledged commands left the registry when the report came in.
        Ok(self.relays.commands(relay))
    }

    async fn placement(&self, _: &str, _: Duration) -> Result<Option<String>, StoreError> {
        Ok(None)
    }

    async fn claim_placement(
        &self,
        _: &str,
        relay: &str,
        _: Duration,
    ) -> Result<String, StoreError> {
        Ok(relay.to_owned())
    }

    async fn forget_placement(&self, _: &str) -> Result<(), StoreError> {
        Ok(())
    }

    async fn lease(&self, _: &str, _: &str, _: Duration) -> Result<Option<i64>, StoreError> {
        Ok(Some(TERM))
    }

    async fn release(&self, _: &str, _: &str) -> Result<(), StoreError> {
        Ok(())
    }

    async fn announce_waiting(&self, _: &str) -> Result<(), StoreError> {
        Ok(())
    }

    fn listen(self: Arc<Self>, _: OnAnnouncement, _: OnResync) -> Option<Task> {
        None
    }
}
