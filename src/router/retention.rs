//! Retention: a router keeps the records of an ended conference only as
//! long as `[retention]` says, then deletes them in the background.
//!
//! Each kind has its own period, counted from the conference's end:
//! participant rows, bans and invitations (names, address hashes) and audit
//! lines 30 days by default, abuse reports 90, and the conference record
//! with the relays and links that carried it (what its residency report is
//! made of, no personal data) 90, and never less than any detail. Records
//! of a running conference are kept.
//!
//! The purge runs every `purge_interval_secs` in steps of at most
//! `purge_batch` rows per kind, each kind one short statement, with a pause
//! between steps, so joins wait for the store at most one statement's time
//! however much there is to delete. A run looks only at conferences that
//! ended since the last complete one (the first run after a start looks at
//! all). Replicas on PostgreSQL each run it; deleting what another replica
//! deleted meanwhile deletes nothing twice. Every deleted row is counted in
//! `rr_router_records_purged_total{kind}` as its step completes.

use std::sync::Arc;
use std::time::Duration;

use serde_json::{Value, json};
use tracing::{info, warn};

use crate::policy::files::RetentionSection;
use crate::store::{PurgeCutoffs, Purged, Store, StoreError};

const DAY: u64 = 86_400;

/// Pause between two steps of a run: room for the requests that waited.
pub const STEP_PAUSE: Duration = Duration::from_millis(2);

/// What may go at `now` (Unix seconds).
pub fn cutoffs(r: &RetentionSection, now: u64) -> PurgeCutoffs {
    let back = |days: u32| now.saturating_sub(u64::from(days) * DAY);
    PurgeCutoffs {
        participants: back(r.participants_days),
        audit: back(r.audit_days),
        abuse_reports: back(r.abuse_reports_days),
        conferences: back(r.conferences_days),
    }
}

/// When each part of a conference's records goes, for its residency
/// report: Unix seconds once it has ended, `null` while it runs.
pub fn schedule(r: &RetentionSection, ended: Option<u64>) -> Value {
    let at = |days: u32| ended.map(|e| e + u64::from(days) * DAY);
    json!({
        "participants_purged_at": at(r.participants_days),
        "audit_purged_at": at(r.audit_days),
        "abuse_reports_purged_at": at(r.abuse_reports_days),
        "report_purged_at": at(r.conferences_days),
        "basis": if ended.is_some() {
            "records are kept for a period after the conference ended, then deleted: participant rows, bans and invitations at participants_purged_at, audit lines (and with them this report's enforcement entries) at audit_purged_at, abuse reports at abuse_reports_purged_at, and the conference record with its relays and links, from which this report is made, at report_purged_at"
        } else {
            "records are kept while the conference runs; once it has ended, each kind is deleted after the period the operator set"
        },
    })
}

/// One purge run: steps until nothing under `cutoffs` is left. `on_step`
/// sees what each step deleted (for the metric). Returns the total.
pub async fn purge(
    store: &dyn Store,
    since: &PurgeCutoffs,
    cutoffs: &PurgeCutoffs,
    batch: u32,
    mut on_step: impl FnMut(&Purged),
) -> Result<Purged, StoreError> {
    let mut total = Purged::default();
    loop {
        let step = store.purge_step(since, cutoffs, batch).await?;
        on_step(&step);
        total.add(&step);
        if !step.more_after(batch) {
            return Ok(total);
        }
        tokio::time::sleep(STEP_PAUSE).await;
    }
}

/// The background purge of a running router: the first run a few seconds
/// after the start, then one every `purge_interval_secs` of the policy in
/// force. A run the store fails is counted, logged and tried again at the
/// next interval from where the last complete run was.
pub async fn run(live: Arc<super::Live>) {
    let mut since = PurgeCutoffs::default();
    let first = Duration::from_secs(
        live.load()
            .policy
            .retention()
            .purge_interval_secs
            .min(5)
            .into(),
    );
    tokio::time::sleep(first).await;
    loop {
        let shared = live.load();
        let retention = shared.policy.retention().clone();
        let cutoffs = cutoffs(&retention, crate::clock::unix_now());
        let metrics = &shared.metrics;
        let outcome = purge(
            &*shared.store,
            &since,
            &cutoffs,
            retention.purge_batch,
            |step| {
                for (kind, n) in step.by_kind() {
                    if n > 0 {
                        metrics.records_purged.with_label_values(&[kind]).inc_by(n);
                    }
                }
            },
        )
        .await;
        match outcome {
            Ok(total) => {
                since = cutoffs;
                if total.total() > 0 {
                    info!(
                        router = %shared.me.id,
                        participants = total.participants,
                        bans = total.bans,
                        invites = total.invites,
                        audit = total.audit,
                        abuse_reports = total.abuse_reports,
                        relay_use = total.relay_use,
                        link_use = total.link_use,
                        conferences = total.conferences,
                        "records past their retention period deleted"
                    );
                }
            }
            Err(e) => {
                metrics.store_errors.inc();
                warn!(router = %shared.me.id, error = %e, "retention purge failed; it runs again at the next interval");
            }
        }
        drop(shared);
        tokio::time::sleep(Duration::from_secs(retention.purge_interval_secs.into())).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cutoffs_count_back_from_now_and_never_below_zero() {
        let r = RetentionSection::default();
        let now = 100 * DAY;
        let c = cutoffs(&r, now);
        assert_eq!(c.participants, 70 * DAY);
        assert_eq!(c.audit, 70 * DAY);
        assert_eq!(c.abuse_reports, 10 * DAY);
        assert_eq!(c.conferences, 10 * DAY);
        assert_eq!(cutoffs(&r, 5).conferences, 0);
    }

    #[test]
    fn the_schedule_counts_from_the_end() {
        let r = RetentionSection::default();
        let s = schedule(&r, Some(1_000));
        assert_eq!(s["participants_purged_at"], 1_000 + 30 * DAY);
        assert_eq!(s["report_purged_at"], 1_000 + 90 * DAY);
        assert!(schedule(&r, None)["report_purged_at"].is_null());
    }
}
