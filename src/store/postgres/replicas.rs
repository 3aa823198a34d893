//! What router replicas agree on besides their records, in PostgreSQL
//! (the patterns are in [`super`]'s module text): relay reports, commands to
//! relays, placements, the planner lease, and announcements by
//! `NOTIFY`/`LISTEN`. The rows as stored, then [`Replicas`] over them.

use std::sync::Arc;
use std::time::Duration;

use tracing::warn;

use super::{Postgres, Tls, err};
use crate::store::StoreError;
use crate::store::replicas::{
    Announcement, OnAnnouncement, OnResync, Replicas, SharedReport, Task,
};
use crate::wire::channel::{Action, Command, RelayReport};

/// The `NOTIFY` channel a new command is announced on (payload: relay id).
const COMMANDS_CHANNEL: &str = "rr_commands";

/// The `NOTIFY` channel a waiting-room decision is announced on (payload:
/// conference id).
const WAITING_CHANNEL: &str = "rr_waiting";

/// Commands kept per relay; beyond it the oldest go (a relay that far
/// behind is not reporting).
const MAX_COMMANDS: i64 = 10_000;

/// A relay's last report as a replica stored it.
#[derive(Debug, Clone)]
pub struct StoredReport {
    pub relay: String,
    /// The report, JSON.
    pub report: String,
    pub version: i64,
    /// How long ago it was received, by the database's clock.
    pub age: Duration,
}

impl Postgres {
    /// Stores `relay`'s last report (JSON) as received by `router`.
    pub async fn publish_report(
        &self,
        relay: &str,
        router: &str,
        report: &str,
    ) -> Result<(), StoreError> {
        let client = self.client().await?;
        let stmt = client
            .prepare_cached(
                "INSERT INTO relay_reports (relay, router, report, version, received)
                 VALUES ($1, $2, $3, nextval('relay_report_version'), now())
                 ON CONFLICT (relay) DO UPDATE SET router = EXCLUDED.router,
                 report = EXCLUDED.report, version = EXCLUDED.version, received = now()",
            )
            .await
            .map_err(err)?;
        client
            .execute(&stmt, &[&relay, &router, &report])
            .await
            .map(|_| ())
            .map_err(err)
    }

    /// Reports other routers received since `version`, oldest first.
    pub async fn reports_since(
        &self,
        version: i64,
        me: &str,
    ) -> Result<Vec<StoredReport>, StoreError> {
        let client = self.client().await?;
        let stmt = client
            .prepare_cached(
                "SELECT relay, report, version,
                 GREATEST(EXTRACT(EPOCH FROM now() - received)::float8, 0)
                 FROM relay_reports WHERE version > $1 AND router <> $2 ORDER BY version",
            )
            .await
            .map_err(err)?;
        let rows = client.query(&stmt, &[&version, &me]).await.map_err(err)?;
        Ok(rows
            .iter()
            .map(|r| StoredReport {
                relay: r.get(0),
                report: r.get(1),
                version: r.get(2),
                age: Duration::try_from_secs_f64(r.get(3)).unwrap_or(Duration::MAX),
            })
            .collect())
    }

    /// Queues `action` (JSON) for each of `relays`, numbered per relay, and
    /// announces it. With `fence` (holder, term), only while that holder
    /// still holds the planner lease with that term; `false` if it does not
    /// (nothing queued).
    pub async fn push_commands(
        &self,
        relays: &[&str],
        action: &str,
        fence: Option<(&str, i64)>,
    ) -> Result<bool, StoreError> {
        let mut client = self.client().await?;
        let tx = client.transaction().await.map_err(err)?;
        if let Some((holder, term)) = fence {
            let held = tx
                .query_opt(
                    "SELECT 1 FROM leases WHERE name = 'planner' AND holder = $1 AND term = $2
                     AND expires > now() FOR SHARE",
                    &[&holder, &term],
                )
                .await
                .map_err(err)?;
            if held.is_none() {
                return Ok(false);
            }
        }
        let next = tx
            .prepare_cached(
                "INSERT INTO relay_command_seq (relay, last) VALUES ($1, 1)
                 ON CONFLICT (relay) DO UPDATE SET last = relay_command_seq.last + 1
                 RETURNING last",
            )
            .await
            .map_err(err)?;
        let insert = tx
            .prepare_cached("INSERT INTO relay_commands (relay, seq, action) VALUES ($1, $2, $3)")
            .await
            .map_err(err)?;
        let trim = tx
            .prepare_cached("DELETE FROM relay_commands WHERE relay = $1 AND seq <= $2")
            .await
            .map_err(err)?;
        for relay in relays {
            let seq: i64 = tx.query_one(&next, &[relay]).await.map_err(err)?.get(0);
            tx.execute(&insert, &[relay, &seq, &action])
                .await
                .map_err(err)?;
            if seq > MAX_COMMANDS && seq % 1000 == 0 {
                tx.execute(&trim, &[relay, &(seq - MAX_COMMANDS)])
                    .await
                    .map_err(err)?;
            }
            tx.execute("SELECT pg_notify($1, $2)", &[&COMMANDS_CHANNEL, relay])
                .await
                .map_err(err)?;
        }
        tx.commit().await.map_err(err)?;
        Ok(true)
    }

    /// Drops `relay`'s commands up to `ack` (when given) and returns those
    /// left: (seq, action JSON), in order.
    pub async fn commands(
        &self,
        relay: &str,
        ack: Option<u64>,
    ) -> Result<Vec<(u64, String)>, StoreError> {
        let client = self.client().await?;
        if let Some(ack) = ack.filter(|a| *a > 0) {
            let stmt = client
                .prepare_cached("DELETE FROM relay_commands WHERE relay = $1 AND seq <= $2")
                .await
                .map_err(err)?;
            client
                .execute(&stmt, &[&relay, &(ack.min(i64::MAX as u64) as i64)])
                .await
                .map_err(err)?;
        }
        let stmt = client
            .prepare_cached(
                "SELECT seq, action FROM relay_commands WHERE relay = $1 ORDER BY seq LIMIT 1000",
            )
            .await
            .map_err(err)?;
        let rows = client.query(&stmt, &[&relay]).await.map_err(err)?;
        Ok(rows
            .iter()
            .map(|r| (r.get::<_, i64>(0) as u64, r.get(1)))
            .collect())
    }

    /// Places `conference` on `relay` unless a placement younger than
    /// `fresh` exists; returns the relay it is placed on (the first
    /// writer's).
    pub async fn claim_placement(
        &self,
        conference: &str,
        relay: &str,
        fresh: Duration,
    ) -> Result<String, StoreError> {
        let client = self.client().await?;
        let secs = fresh.as_secs_f64();
        let stmt = client
            .prepare_cached(
                "INSERT INTO placements AS p (conference, relay, at) VALUES ($1, $2, now())
                 ON CONFLICT (conference) DO UPDATE SET relay = EXCLUDED.relay, at = now()
                 WHERE p.relay = EXCLUDED.relay OR p.at < now() - make_interval(secs => $3)
                 RETURNING relay",
            )
            .await
            .map_err(err)?;
        if let Some(row) = client
            .query_opt(&stmt, &[&conference, &relay, &secs])
            .await
            .map_err(err)?
        {
            return Ok(row.get(0));
        }
        client
            .query_one(
                "SELECT relay FROM placements WHERE conference = $1",
                &[&conference],
            )
            .await
            .map(|r| r.get(0))
            .map_err(err)
    }

    /// The relay `conference` was placed on within `fresh`, if any.
    pub async fn placement(
        &self,
        conference: &str,
        fresh: Duration,
    ) -> Result<Option<String>, StoreError> {
        let client = self.client().await?;
        let stmt = client
            .prepare_cached(
                "SELECT relay FROM placements WHERE conference = $1
                 AND at >= now() - make_interval(secs => $2)",
            )
            .await
            .map_err(err)?;
        client
            .query_opt(&stmt, &[&conference, &fresh.as_secs_f64()])
            .await
            .map(|r| r.map(|r| r.get(0)))
            .map_err(err)
    }

    /// Forgets `conference`'s placement (it ended).
    pub async fn forget_placement(&self, conference: &str) -> Result<(), StoreError> {
        let client = self.client().await?;
        client
            .execute(
                "DELETE FROM placements WHERE conference = $1",
                &[&conference],
            )
            .await
            .map(|_| ())
            .map_err(err)
    }

    /// Takes or renews lease `name` for `holder` for `ttl`; its term while
    /// `holder` holds it (raised whenever it changes hands), `None` while
    /// another holder's lease is unexpired.
    pub async fn lease(
        &self,
        name: &str,
        holder: &str,
        ttl: Duration,
    ) -> Result<Option<i64>, StoreError> {
        let client = self.client().await?;
        let stmt = client
            .prepare_cached(
                "INSERT INTO leases AS l (name, holder, term, expires)
                 VALUES ($1, $2, 1, now() + make_interval(secs => $3))
                 ON CONFLICT (name) DO UPDATE SET
                   term = CASE WHEN l.holder = EXCLUDED.holder AND l.expires > now()
                          THEN l.term ELSE l.term + 1 END,
                   holder = EXCLUDED.holder, expires = EXCLUDED.expires
                 WHERE l.holder = EXCLUDED.holder OR l.expires <= now()
                 RETURNING term",
            )
            .await
            .map_err(err)?;
        client
            .query_opt(&stmt, &[&name, &holder, &ttl.as_secs_f64()])
            .await
            .map(|r| r.map(|r| r.get(0)))
            .map_err(err)
    }

    /// Gives lease `name` up if `holder` has it (a clean shutdown), so the
    /// next holder need not wait for it to expire.
    pub async fn release(&self, name: &str, holder: &str) -> Result<(), StoreError> {
        let client = self.client().await?;
        client
            .execute(
                "UPDATE leases SET expires = now() WHERE name = $1 AND holder = $2",
                &[&name, &holder],
            )
            .await
            .map(|_| ())
            .map_err(err)
    }

    /// Announces that a waiting-room decision was made in `conference`, so
    /// polls held on other replicas look again.
    pub async fn announce_waiting(&self, conference: &str) -> Result<(), StoreError> {
        let client = self.client().await?;
        client
            .execute("SELECT pg_notify($1, $2)", &[&WAITING_CHANNEL, &conference])
            .await
            .map(|_| ())
            .map_err(err)
    }

    /// Calls `wake(channel, payload)` for every announcement, from a
    /// connection of its own, reconnecting after a failure; calls `resync`
    /// after each (re)connect, since announcements made while disconnected
    /// are lost. Runs until aborted.
    pub async fn listen(
        self: Arc<Self>,
        wake: impl Fn(Announcement, &str) + Send + Sync + 'static,
        resync: impl Fn() + Send + Sync + 'static,
    ) {
        let mut backoff = Duration::from_millis(100);
        loop {
            match self.listen_once(&wake, &resync).await {
                Ok(()) => backoff = Duration::from_millis(100),
                Err(e) => {
                    warn!(error = %e, "store announcements: connection lost; reconnecting");
                }
            }
            tokio::time::sleep(backoff).await;
            backoff = (backoff * 2).min(Duration::from_secs(2));
        }
    }

    async fn listen_once(
        &self,
        wake: &(impl Fn(Announcement, &str) + Send + Sync),
        resync: &(impl Fn() + Send + Sync),
    ) -> Result<(), tokio_postgres::Error> {
        match &self.tls {
            Tls::None => {
                let (client, connection) = self.config.connect(tokio_postgres::NoTls).await?;
                listen_on(client, connection, wake, resync).await
            }
            Tls::Rustls(t) => {
                let (client, connection) = self.config.connect(t.clone()).await?;
                listen_on(client, connection, wake, resync).await
            }
        }
    }
}

#[async_trait::async_trait]
impl Replicas for Postgres {
    fn command_epoch(&self) -> Option<u64> {
        Some(Postgres::command_epoch(self))
    }

    async fn share_report(
        &self,
        relay: &str,
        router: &str,
        report: &RelayReport,
    ) -> Result<(), StoreError> {
        let json = serde_json::to_string(report).map_err(|e| StoreError::new(e.to_string()))?;
        self.publish_report(relay, router, &json).await
    }

    async fn shared_reports(
        &self,
        version: i64,
        me: &str,
    ) -> Result<Vec<SharedReport>, StoreError> {
        let rows = self.reports_since(version, me).await?;
        Ok(rows
            .into_iter()
            .map(|row| SharedReport {
                report: serde_json::from_str::<RelayReport>(&row.report)
                    .inspect_err(
                        |e| warn!(relay = %row.relay, error = %e, "unreadable shared relay report"),
                    )
                    .ok(),
                relay: row.relay,
                version: row.version,
                age: row.age,
            })
            .collect())
    }

    async fn queue_commands(
        &self,
        relays: &[&str],
        action: &Action,
        fence: Option<(&str, i64)>,
    ) -> Result<bool, StoreError> {
        let json = serde_json::to_string(action).map_err(|e| StoreError::new(e.to_string()))?;
        self.push_commands(relays, &json, fence).await
    }

    async fn pending_commands(
        &self,
        relay: &str,
        ack: Option<u64>,
    ) -> Result<Vec<Command>, StoreError> {
        let rows = self.commands(relay, ack).await?;
        Ok(rows
            .into_iter()
            .filter_map(|(seq, action)| {
                serde_json::from_str(&action)
                    .ok()
                    .map(|action| Command { seq, action })
            })
            .collect())
    }

    async fn placement(
        &self,
        conference: &str,
        fresh: Duration,
    ) -> Result<Option<String>, StoreError> {
        Postgres::placement(self, conference, fresh).await
    }

    async fn claim_placement(
        &self,
        conference: &str,
        relay: &str,
        fresh: Duration,
    ) -> Result<String, StoreError> {
        Postgres::claim_placement(self, conference, relay, fresh).await
    }

    async fn forget_placement(&self, conference: &str) -> Result<(), StoreError> {
        Postgres::forget_placement(self, conference).await
    }

    async fn lease(
        &self,
        name: &str,
        holder: &str,
        ttl: Duration,
    ) -> Result<Option<i64>, StoreError> {
        Postgres::lease(self, name, holder, ttl).await
    }

    async fn release(&self, name: &str, holder: &str) -> Result<(), StoreError> {
        Postgres::release(self, name, holder).await
    }

    async fn announce_waiting(&self, conference: &str) -> Result<(), StoreError> {
        Postgres::announce_waiting(self, conference).await
    }

    fn listen(self: Arc<Self>, wake: OnAnnouncement, resync: OnResync) -> Option<Task> {
        Some(Box::pin(Postgres::listen(self, wake, resync)))
    }
}

async fn listen_on<S, T>(
    client: tokio_postgres::Client,
    mut connection: tokio_postgres::Connection<S, T>,
    wake: &(impl Fn(Announcement, &str) + Send + Sync),
    resync: &(impl Fn() + Send + Sync),
) -> Result<(), tokio_postgres::Error>
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
    T: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    use tokio_postgres::AsyncMessage;
    let listen = client.batch_execute("LISTEN rr_commands; LISTEN rr_waiting");
    tokio::pin!(listen);
    // The LISTEN completes only while the connection is driven.
    loop {
        tokio::select! {
            done = &mut listen => { done?; break; }
            message = std::future::poll_fn(|cx| connection.poll_message(cx)) => {
                match message {
                    Some(Ok(_)) => {}
                    Some(Err(e)) => return Err(e),
                    None => return Ok(()),
                }
            }
        }
    }
    resync();
    loop {
        match std::future::poll_fn(|cx| connection.poll_message(cx)).await {
            Some(Ok(AsyncMessage::Notification(n))) => match n.channel() {
                COMMANDS_CHANNEL => wake(Announcement::Commands, n.payload()),
                WAITING_CHANNEL => wake(Announcement::Waiting, n.payload()),
                _ => {}
            },
            Some(Ok(_)) => {}
            Some(Err(e)) => return Err(e),
            None => return Ok(()),
        }
    }
}
