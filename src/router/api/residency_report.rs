//! The residency report: where a conference's media and metadata went,
//! signed by the router and verifiable offline.

use axum::Json;
use axum::extract::Path;
use axum::http::HeaderMap;
use serde_json::{Value, json};

use super::{ApiResult, Current, ErrorBody, Managed, store_failed};
use crate::clock::unix_now;
use crate::policy::Jurisdiction;
use crate::router::Shared;
use crate::router::relays::ConferenceOnRelay;
use crate::store::{ConferenceRecord, RelayUse};
use crate::wire::channel::LinkLoad;

/// Where the conference's media and metadata went: every relay and router
/// that recorded handling it, with countries, times and bytes, the cascade
/// links, and the refused tickets and links naming it; signed.
#[utoipa::path(
    get,
    path = "/v1/conferences/{id}/residency",
    tag = "residency",
    params(("id" = String, Path, description = "The conference id.")),
    responses(
        (status = 200, description = "The signed residency report (docs/api.md, \"The residency report\"): `{report: {conference, tenant, jurisdiction, jurisdiction_name, legal_basis, created, ended, generated_at, routers, store, relays, links, enforcement, retention, e2ee}, signature: {algorithm, public_key, value}}`; `residency-relay verify-report` checks it.", body = Value),
        (status = 401, description = "`unauthorized`: not the tenant's API key, the host token or a host's manage token.", body = ErrorBody),
        (status = 404, description = "`unknown_conference` (also another tenant's).", body = ErrorBody),
        (status = 421, description = "`wrong_router` (with `router_url`) or `jurisdiction_not_served`.", body = ErrorBody),
        (status = 500, description = "`store_error`.", body = ErrorBody),
    )
)]
pub(super) async fn residency_report(
    Current(shared): Current,
    Path(id): Path<String>,
    headers: HeaderMap,
) -> ApiResult<Json<Value>> {
    let Managed {
        conference: c,
        jurisdiction: j,
        ..
    } = Managed::check(&shared, &id, &headers).await?;
    let jurisdiction = shared.policy.jurisdiction(j);
    let live = shared.relays.conference(&id);
    let live_links = shared.relays.conference_links(&id);
    let used = shared
        .store
        .relays_of(&id)
        .await
        .map_err(store_failed(&shared))?;
    let links = shared
        .store
        .links_of(&id)
        .await
        .map_err(store_failed(&shared))?;
    let log = shared
        .store
        .audit_log(&id)
        .await
        .map_err(store_failed(&shared))?;
    let relays = relays_section(&shared, jurisdiction, &used, &live);
    let links = links_section(&shared, jurisdiction, &used, links, &live_links);
    let enforcement: Vec<Value> = log
        .iter()
        .filter(|e| e.event == "enforcement")
        .map(|e| {
            let mut v = e.detail.clone();
            v["time"] = json!(e.time);
            v
        })
        .collect();
    let last_record = log.iter().map(|e| e.time).max().unwrap_or(c.created);
    let routers = routers_section(&shared, jurisdiction, &c, last_record);
    let store = store_section(&shared, jurisdiction);
    let report = json!({
        "conference": c.id,
        "tenant": c.tenant,
        "jurisdiction": jurisdiction.id,
        "jurisdiction_name": jurisdiction.name,
        "legal_basis": jurisdiction.legal_basis,
        "created": c.created,
        "ended": c.ended,
        "generated_at": unix_now(),
        "routers": routers,
        "store": store,
        "relays": relays,
        "links": links,
        "enforcement": enforcement,
        // When the records this report is made of are deleted.
        "retention": crate::router::retention::schedule(shared.policy.retention(), c.ended),
        // What the router recorded and put in every ticket; whether clients
        // encrypted is theirs to show (relays refused undeclared tracks).
        "e2ee": {
            "declared": c.e2ee,
            "basis": if c.e2ee {
                "the conference was created end-to-end encrypted: every ticket the router issued for it said so, and relays refuse tracks not declared encrypted; keys are made and held by participants' devices only"
            } else {
                "the conference was created without end-to-end encryption: media is encrypted in transit to and between relays only"
            },
        },
    });
    Ok(Json(crate::router::residency::sign(
        report,
        &shared.signing_key,
    )))
}

/// The relays that carried the conference: where, whether inside, when,
/// and how much (the larger of what was recorded and what they report now).
fn relays_section(
    shared: &Shared,
    jurisdiction: &Jurisdiction,
    used: &[RelayUse],
    live: &[ConferenceOnRelay],
) -> Vec<Value> {
    used
        .iter()
        .map(|u| {
            let here = live.iter().find(|l| l.relay == u.relay);
            let (country, jurisdictions, inside) = if u.countries.is_empty() {
                relay_facts(shared, jurisdiction, &u.relay).map_or((None, Vec::new(), false), |(c, j, i)| {
                    (Some(c), j, i && !u.outside)
                })
            } else {
                let jurisdictions = crate::geo::CountryCode::parse(&u.countries[0])
                    .map(|c| {
                        shared
                            .policy
                            .jurisdictions()
                            .iter()
                            .filter(|j| j.countries.contains(c))
                            .map(|j| j.id.as_str())
                            .collect()
                    })
                    .unwrap_or_default();
                (Some(u.countries[0].clone()), jurisdictions, !u.outside)
            };
            json!({
                "id": u.relay,
                "country": country,
                "countries": u.countries,
                "jurisdictions": jurisdictions,
                "inside_jurisdiction": inside,
                "first_seen": u.first_seen,
                "last_seen": u.last_seen,
                "bytes_in": here.map_or(0, |l| l.load.bytes_in).max(u.bytes_in),
                "bytes_out": here.map_or(0, |l| l.load.bytes_out).max(u.bytes_out),
                "peak_participants": here.map_or(0, |l| l.load.participants).max(u.peak_participants),
            })
        })
        .collect()
}

/// The cascade links between its relays, with those the relays reported
/// but not yet written to the store.
fn links_section(
    shared: &Shared,
    jurisdiction: &Jurisdiction,
    used: &[RelayUse],
    mut links: Vec<crate::store::LinkUse>,
    live_links: &[(String, LinkLoad)],
) -> Vec<Value> {
    for (relay, l) in live_links {
        if !links.iter().any(|x| x.relay == *relay && x.peer == l.peer) {
            links.push(crate::store::LinkUse {
                relay: relay.clone(),
                peer: l.peer.clone(),
                first_seen: unix_now(),
                last_seen: unix_now(),
                bytes_in: l.bytes_in,
                bytes_out: l.bytes_out,
            });
        }
    }
    links
        .iter()
        .map(|l| {
            let here = live_links
                .iter()
                .find(|(r, x)| *r == l.relay && x.peer == l.peer);
            json!({
                "relay": l.relay,
                "peer": l.peer,
                "relay_country": recorded_country(used, &l.relay)
                    .or_else(|| relay_facts(shared, jurisdiction, &l.relay).map(|f| f.0)),
                "peer_country": recorded_country(used, &l.peer)
                    .or_else(|| relay_facts(shared, jurisdiction, &l.peer).map(|f| f.0)),
                "first_seen": l.first_seen,
                "last_seen": l.last_seen,
                "bytes_in": here.map_or(0, |(_, x)| x.bytes_in).max(l.bytes_in),
                "bytes_out": here.map_or(0, |(_, x)| x.bytes_out).max(l.bytes_out),
            })
        })
        .collect()
}

/// The routers that answered for the conference: every replica may have;
/// the store they share holds its records.
fn routers_section(
    shared: &Shared,
    jurisdiction: &Jurisdiction,
    c: &ConferenceRecord,
    last_record: u64,
) -> Vec<Value> {
    let replicas = shared.policy.replicas(&shared.me);
    replicas
        .iter()
        .map(|r| {
            json!({
                "id": r.id,
                "country": r.country.to_string(),
                "jurisdictions": r.jurisdictions.iter().map(|j| shared.policy.jurisdiction(*j).id.clone()).collect::<Vec<_>>(),
                "inside_jurisdiction": jurisdiction.countries.contains(r.country),
                "role": if replicas.len() == 1 {
                    "created the conference; stores its records and audit log"
                } else {
                    "a replica serving the conference's jurisdiction: any replica answers its requests, from the shared store"
                },
                "first_seen": c.created,
                "last_seen": last_record,
            })
        })
        .collect()
}

/// Where the conference's records are kept.
fn store_section(shared: &Shared, jurisdiction: &Jurisdiction) -> Value {
    let (backend, store_country) = match &shared.me.store {
        crate::policy::StoreLocation::Sqlite(_) => ("sqlite", shared.me.country),
        crate::policy::StoreLocation::Postgres(pg) => ("postgresql", pg.country),
    };
    json!({
        "backend": backend,
        "country": store_country.to_string(),
        "inside_jurisdiction": jurisdiction.countries.contains(store_country),
        "role": if backend == "sqlite" {
            "an embedded file on the router's machine: the conference's records and audit log"
        } else {
            "a database shared by the router replicas: the conference's records and audit log"
        },
    })
}

/// A relay of the policy in force: its country, its jurisdictions, and
/// whether it is inside `jurisdiction`.
fn relay_facts<'p>(
    shared: &'p Shared,
    jurisdiction: &Jurisdiction,
    relay_id: &str,
) -> Option<(String, Vec<&'p str>, bool)> {
    shared.policy.relay_idx(relay_id).map(|r| {
        let relay = shared.policy.relay(r);
        let jurisdictions: Vec<&str> = shared
            .policy
            .jurisdictions_of(r)
            .map(|j| j.id.as_str())
            .collect();
        (
            relay.country.to_string(),
            jurisdictions,
            jurisdiction.contains(r),
        )
    })
}

/// The country recorded while `relay_id` carried the conference (a later
/// reload does not rewrite it); `None` for records older than the store's
/// schema 4, which take the policy in force instead.
fn recorded_country(used: &[RelayUse], relay_id: &str) -> Option<String> {
    used.iter()
        .find(|u| u.relay == relay_id && !u.countries.is_empty())
        .map(|u| u.countries[0].clone())
}
