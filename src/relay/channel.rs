//! The channel to the routers: one report task per router URL posts the
//! relay's load (merged over its shards) and enforcement events, and
//! applies the commands the router answers with — each sent to the shard of
//! its conference; drain to every shard; links dialled here, from the
//! relay's own endpoint. Messages: [`crate::wire::channel`].

use std::collections::HashMap;
use std::net::SocketAddr;
use std::ops::ControlFlow;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use tracing::{info, warn};

use crate::forward::{ConferenceStats, LinkStats};
use crate::http_client::{HttpError, Tls};
use crate::wire::channel::{self, Action, ConferenceLoad, LinkLoad, RelayReport, ReportReply};

use super::shards::{Event, Shards, Snapshot};
use super::{Metrics, RouterLink, Trust, link, trusted};

/// The report tasks running, one per router URL, and how to tell each what
/// its router serves after a reload.
#[derive(Debug)]
pub(super) struct Reporters {
    pub(super) running: Vec<Reporter>,
}

#[derive(Debug)]
pub(super) struct Reporter {
    pub(super) link: tokio::sync::watch::Sender<RouterLink>,
    pub(super) task: tokio::task::JoinHandle<()>,
}

impl Reporter {
    pub(super) fn url(&self) -> String {
        self.link.borrow().url.clone()
    }
}

/// What every report task needs besides its router.
#[derive(Debug, Clone)]
pub(super) struct Reporting {
    pub(super) relay_id: String,
    pub(super) credential: String,
    /// The certificate in use, which a renewal replaces.
    pub(super) cert_sha256: tokio::sync::watch::Receiver<super::tls::Pins>,
    pub(super) shards: Shards,
    pub(super) metrics: Metrics,
    pub(super) ready: Arc<AtomicBool>,
    pub(super) endpoint: quinn::Endpoint,
    /// The certificate links present (a renewal replaces it).
    pub(super) identity: super::CurrentIdentity,
    pub(super) trust: Trust,
    /// This run's track id prefix, fixed at start.
    pub(super) track_base: u32,
}

impl Reporting {
    pub(super) fn spawn(&self, link: &RouterLink) -> Reporter {
        let (tx, rx) = tokio::sync::watch::channel(link.clone());
        Reporter {
            link: tx,
            task: tokio::spawn(report_loop(rx, self.clone())),
        }
    }
}

/// The [`Tls`] of each `https://` router URL, made once per CA file (as
/// last modified) and name, so its session cache lets reports resume TLS
/// sessions, and a CA file replaced in place is read again.
#[derive(Debug, Default)]
struct Trusts(HashMap<String, (TrustKey, Tls)>);

/// What a [`Tls`] was made from: CA file, name, and the file's modification
/// time and length when it was read.
type TrustKey = (
    std::path::PathBuf,
    String,
    Option<(std::time::SystemTime, u64)>,
);

impl Trusts {
    /// What `url` of `link` is verified with; `Ok(None)` for `http://`.
    fn get(&mut self, link: &RouterLink, url: &str) -> Result<Option<Tls>, HttpError> {
        let Some((ca, name)) = link.trust.get(url) else {
            return Ok(None);
        };
        let stamp = std::fs::metadata(ca)
            .ok()
            .and_then(|m| Some((m.modified().ok()?, m.len())));
        let key: TrustKey = (ca.clone(), name.clone(), stamp);
        if let Some((made_for, tls)) = self.0.get(url) {
            if *made_for == key {
                return Ok(Some(tls.clone()));
            }
        }
        let tls = Tls::from_ca_file_for(ca, name).map_err(|error| HttpError::Tls {
            addr: crate::http_client::parse_url(url)
                .map(|t| t.addr)
                .unwrap_or_else(|_| SocketAddr::from(([0, 0, 0, 0], 0))),
            error,
        })?;
        // URLs the link no longer has go.
        self.0.retain(|u, _| link.trust.contains_key(u));
        self.0.insert(url.to_owned(), (key, tls.clone()));
        Ok(Some(tls))
    }
}

/// Counts a report's outcome.
fn count_report(metrics: &Metrics, answer: &Result<crate::http_client::Response, HttpError>) {
    let outcome = match answer {
        Ok(r) if r.status == 200 => "accepted",
        Ok(_) => "refused",
        Err(HttpError::Tls { .. } | HttpError::NoTrust(_)) => "tls",
        Err(_) => "unreachable",
    };
    metrics.router_reports.with_label_values(&[outcome]).inc();
}

/// The last report of a relay shutting down: draining, so the router sends
/// no more joins here.
pub(super) async fn final_report(
    link: RouterLink,
    relay_id: String,
    credential: String,
    cert_sha256: String,
) {
    use crate::wire::channel::{self, RelayReport};
    let report = RelayReport {
        cert_sha256,
        next_cert_sha256: None,
        participants: 0,
        bitrate_bps: 0,
        draining: true,
        conferences: Vec::new(),
        links: Vec::new(),
        events: Vec::new(),
        ack: 0,
        epoch: 0,
        track_base: 0,
    };
    // To the first replica that takes it.
    let mut trusts = Trusts::default();
    for url in std::iter::once(&link.url).chain(&link.replicas) {
        let Ok(tls) = trusts.get(&link, url) else {
            continue;
        };
        let sent = crate::http_client::request_with(
            "POST",
            &format!("{url}{}", channel::report_path(&relay_id)),
            tls.as_ref(),
            None,
            &[("authorization", &format!("Bearer {credential}"))],
            Some(serde_json::to_vec(&report).unwrap_or_default()),
            Duration::from_secs(1),
        )
        .await;
        if sent.is_ok_and(|r| r.status == 200) {
            return;
        }
    }
}

/// Reports to one router until aborted; applies the commands it answers.
/// A reload may change what the router serves (`links`), never its URL.
async fn report_loop(links: tokio::sync::watch::Receiver<RouterLink>, ctx: Reporting) {
    let Reporting {
        relay_id,
        credential,
        cert_sha256,
        shards,
        metrics,
        ready,
        trust,
        track_base,
        ..
    } = ctx.clone();
    let reporting = ctx;
    let auth = format!("Bearer {credential}");
    // Which replica of the router reports go to (0: the router itself).
    let mut replica = 0usize;
    let mut ack = 0u64;
    let mut epoch = 0u64;
    let mut last: Option<(Instant, u64)> = None;
    let mut failures = 0u32;
    let mut trusts = Trusts::default();
    loop {
        let link = links.borrow().clone();
        let Some(snapshot) = shards.snapshot(&link.serves).await else {
            return;
        };
        publish_gauges(&metrics, &trusted(&trust).1, &snapshot);
        let now = Instant::now();
        let bitrate_bps = match last {
            Some((at, bytes)) => {
                let secs = now.duration_since(at).as_secs_f64().max(1e-3);
                (snapshot.bytes_total.saturating_sub(bytes) as f64 * 8.0 / secs) as u64
            }
            None => 0,
        };
        last = Some((now, snapshot.bytes_total));
        let (conferences, link_loads) = loads_for(&link, snapshot.conferences, snapshot.links);
        let pins = cert_sha256.borrow().clone();
        let report = RelayReport {
            cert_sha256: pins.current,
            next_cert_sha256: pins.next,
            participants: snapshot.participants,
            bitrate_bps,
            draining: !ready.load(Ordering::Relaxed),
            conferences,
            links: link_loads,
            events: snapshot.events,
            ack,
            epoch,
            track_base,
        };
        let body = serde_json::to_vec(&report).unwrap_or_default();
        let urls: Vec<&String> = std::iter::once(&link.url).chain(&link.replicas).collect();
        replica %= urls.len();
        let url = format!("{}{}", urls[replica], channel::report_path(&relay_id));
        let answer = match trusts.get(&link, urls[replica]) {
            Ok(tls) => {
                crate::http_client::request_with(
                    "POST",
                    &url,
                    tls.as_ref(),
                    None,
                    &[("authorization", &auth)],
                    Some(body),
                    channel::HOLD + Duration::from_secs(5),
                )
                .await
            }
            Err(e) => Err(e),
        };
        count_report(&metrics, &answer);
        match answer {
            Ok(r) if r.status == 200 => {
                if failures > 0 {
                    info!(router = %link.url, "reporting to router again");
                }
                failures = 0;
                let reply: ReportReply = serde_json::from_slice(&r.body).unwrap_or_default();
                if reply.epoch != epoch {
                    // The router restarted: its numbering did too.
                    epoch = reply.epoch;
                    ack = 0;
                }
                for command in reply.commands {
                    if command.seq <= ack {
                        continue;
                    }
                    ack = command.seq;
                    if reporting.apply(&link, command.action).await.is_break() {
                        return;
                    }
                }
            }
            other => {
                failures += 1;
                let router = urls[replica];
                if failures == 1 || failures % 60 == 0 {
                    match other {
                        Ok(r) => {
                            warn!(router = %router, status = r.status, body = %String::from_utf8_lossy(&r.body), "router refused the report")
                        }
                        Err(e) => warn!(router = %router, error = %e, "cannot report to router"),
                    }
                }
                // The next replica at once; a pause once all were tried.
                replica = (replica + 1) % urls.len();
                if urls.len() > 1 && replica != 0 {
                    info!(router = %urls[replica], "reporting to the next replica");
                    continue;
                }
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
        }
    }
}

impl Reporting {
    /// Applies one of a router's commands; `Break` once the shards are gone.
    async fn apply(&self, link: &RouterLink, action: Action) -> ControlFlow<()> {
        match action {
            Action::Link {
                conference,
                peer,
                peer_addr,
                peer_cert,
                ticket,
            } => {
                // The inventory, not the router, decides where a
                // conference's media may go: the conference must be
                // of a jurisdiction this router serves and this relay
                // is in, and the peer inside it; it is dialled at its
                // inventory address.
                let jurisdiction = crate::wire::conference::jurisdiction_of(&conference)
                    .filter(|j| link.jurisdictions.iter().any(|l| l == j));
                let target =
                    jurisdiction.and_then(|j| trusted(&self.trust).1.link_target(&peer, j));
                let Some(peer_addr) =
                    target.filter(|a| peer_addr.parse::<SocketAddr>().is_ok_and(|p| p == *a))
                else {
                    warn!(peer = %peer, "refusing a link command outside the jurisdiction or to an address the inventory does not give");
                    return ControlFlow::Continue(());
                };
                let dial = link::Dial {
                    conference,
                    peer,
                    peer_addr,
                    peer_cert,
                    ticket,
                };
                let (endpoint, shards, identity) = (
                    self.endpoint.clone(),
                    self.shards.clone(),
                    self.identity.clone(),
                );
                tokio::spawn(async move {
                    let peer = dial.peer.clone();
                    if let Err(e) =
                        link::dial(endpoint, dial, shards, Duration::from_secs(3), identity).await
                    {
                        warn!(peer = %peer, error = %e, "cascade link failed");
                    }
                });
            }
            Action::Drain {} => {
                self.ready.store(false, Ordering::Relaxed);
                if self
                    .shards
                    .broadcast(|| Event::Command(Action::Drain {}))
                    .await
                    .is_err()
                {
                    return ControlFlow::Break(());
                }
            }
            // Only for conferences of the jurisdictions the
            // router serves: one router cannot disturb another's.
            Action::Move { ref conference, .. } | Action::Unlink { ref conference, .. }
                if !crate::wire::conference::jurisdiction_of(conference)
                    .is_some_and(|j| link.serves.iter().any(|s| s == j)) =>
            {
                warn!(router = %link.url, "ignoring a move for a conference of a jurisdiction the router does not serve");
            }
            action => {
                let conference = match &action {
                    Action::Kick { conference, .. }
                    | Action::End { conference, .. }
                    | Action::Move { conference, .. }
                    | Action::Unlink { conference, .. } => conference.clone(),
                    // Handled above.
                    Action::Link { .. } | Action::Drain {} => return ControlFlow::Continue(()),
                };
                if self
                    .shards
                    .of(&conference)
                    .send(Event::Command(action))
                    .await
                    .is_err()
                {
                    return ControlFlow::Break(());
                }
            }
        }
        ControlFlow::Continue(())
    }
}

/// What the report to `link`'s router carries of the shards' snapshot:
/// only what concerns the jurisdictions that router serves and the relay
/// is in.
fn loads_for(
    link: &RouterLink,
    conferences: Vec<ConferenceStats>,
    links: Vec<LinkStats>,
) -> (Vec<ConferenceLoad>, Vec<LinkLoad>) {
    let ours = |conference: &str| {
        crate::wire::conference::jurisdiction_of(conference)
            .is_some_and(|j| link.jurisdictions.iter().any(|l| l == j))
    };
    (
        conferences
            .into_iter()
            .filter(|c| ours(&c.id))
            .map(|c| ConferenceLoad {
                id: c.id,
                participants: c.participants,
                bytes_in: c.bytes_in,
                bytes_out: c.bytes_out,
            })
            .collect(),
        links
            .into_iter()
            .filter(|l| ours(&l.conference))
            .map(|l| LinkLoad {
                conference: l.conference,
                peer: l.peer,
                bytes_in: l.bytes_in,
                bytes_out: l.bytes_out,
            })
            .collect(),
    )
}

/// The relay-wide gauges a merged snapshot sets: cascade links, and
/// participants and conferences per jurisdiction of the relay (every
/// jurisdiction it is in set, so one that emptied shows 0).
fn publish_gauges(metrics: &Metrics, verifier: &crate::ticket::Verifier, snapshot: &Snapshot) {
    metrics.cascade_links.set(snapshot.links.len() as i64);
    let mut per: HashMap<&str, (i64, i64)> = HashMap::new();
    for c in &snapshot.conferences {
        if c.participants == 0 {
            continue;
        }
        if let Some(j) = crate::wire::conference::jurisdiction_of(&c.id) {
            let e = per.entry(j).or_default();
            e.0 += i64::from(c.participants);
            e.1 += 1;
        }
    }
    for j in verifier.jurisdictions() {
        let (p, n) = per.get(j.as_str()).copied().unwrap_or_default();
        metrics.participants.with_label_values(&[j.as_str()]).set(p);
        metrics.conferences.with_label_values(&[j.as_str()]).set(n);
    }
}
