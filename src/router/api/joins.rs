//! Joins and the waiting room: a participant joins with a passcode, an
//! invitation or a rejoin token and gets a relay inside the conference's
//! jurisdiction and a ticket bound to it ([`issue_ticket`]); passcode
//! joiners of a conference with a waiting room wait for a host to admit
//! or deny them.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::Json;
use axum::body::Bytes;
use axum::extract::{ConnectInfo, Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use serde::Deserialize;
use serde_json::{Value, json};
use tracing::info;
use utoipa::ToSchema;

use super::{
    ApiError, ApiResult, App, Current, ErrorBody, MAX_NAME, Managed, audit, bearer, check_text,
    client_ip, conference, ended_check, ids, parse, store_failed, unauthorized, waiting_changed,
};
use crate::clock::unix_now;
use crate::geo::Location;
use crate::http_server::{Held, LongPoll};
use crate::policy::{JurisdictionIdx, Policy, RelayIdx};
use crate::router::Shared;
use crate::router::limits::Attempt;
use crate::select;
use crate::select::RelayState;
use crate::store::{
    AuditEvent, ConferenceRecord, InviteRecord, InviteRefusal, ParticipantRecord, Role, Status,
    StoreError,
};
use crate::ticket::{self, Claims, Grants};

/// Whether an address ban holds against `ip` however it was hashed: under
/// the current records key or, in the older forms, under the previous ones
/// (for a participant coming back, whose stored hash may be from before a
/// rotation).
async fn banned_address(shared: &Shared, conference: &str, ip: IpAddr) -> Result<bool, StoreError> {
    let now = ids::address_hash(&shared.records_keys.current, &shared.address_key, ip);
    Ok(shared.store.is_banned(conference, None, &now, None).await?
        || banned_by_an_older_address_hash(shared, conference, ip).await?)
}

/// Whether a ban made before the address hash took its present form holds
/// against `ip`: a ban hashed under a previous records key (still listed),
/// or, for IPv6, one over the whole address from before bans covered the
/// /64. One query per such form; none when no previous key is listed and
/// the address is IPv4.
async fn banned_by_an_older_address_hash(
    shared: &Shared,
    conference: &str,
    ip: IpAddr,
) -> Result<bool, StoreError> {
    let keys = &shared.records_keys;
    let older = keys
        .previous
        .iter()
        .map(|key| ids::address_hash(key, &shared.address_key, ip))
        .chain(
            keys.all()
                .filter_map(|key| ids::full_v6_address_hash(key, &shared.address_key, ip)),
        );
    for hash in older {
        if shared
            .store
            .is_banned(conference, None, &hash, None)
            .await?
        {
            return Ok(true);
        }
    }
    Ok(false)
}

/// How long a waiting participant's poll is held before answering "still waiting".
const WAIT_HOLD: Duration = Duration::from_secs(10);

#[derive(Debug, Default, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
struct JoinRequest {
    /// The conference's passcode (with `display_name`)…
    passcode: Option<String>,
    /// …or an invitation, which names its holder.
    invite: Option<String>,
    /// The name others see (a passcode join needs one, not blank): at most
    /// 64 bytes of UTF-8, no control characters.
    #[serde(default)]
    #[schema(max_length = 64, pattern = r"^[^\u0000-\u001F\u007F-\u009F]*$")]
    display_name: String,
    /// Rejoining after a relay failure: the token from the last join answer…
    rejoin: Option<String>,
    /// …for this participant id…
    participant_id: Option<String>,
    /// …and the relay that failed, not to be chosen again now.
    failed_relay: Option<String>,
}

/// A refused join: the error, counted under `reason`.
fn refuse(
    shared: &Shared,
    j: Option<JurisdictionIdx>,
    reason: &'static str,
    e: ApiError,
) -> ApiError {
    shared
        .metrics
        .join_refusals
        .with_label_values(&[reason])
        .inc();
    if let Some(j) = j {
        shared
            .metrics
            .joins
            .with_label_values(&[shared.policy.jurisdiction(j).id.as_str(), "refused"])
            .inc();
    }
    e
}

/// Joins a conference: a relay inside its jurisdiction and a ticket bound
/// to it, or a place in the waiting room.
#[utoipa::path(
    post,
    path = "/v1/conferences/{id}/join",
    tag = "joins",
    params(("id" = String, Path, description = "The conference id.")),
    request_body = JoinRequest,
    responses(
        (status = 200, description = "The join answer: `{relay: {id, country, country_name, city, quic_addr, webtransport_url, websocket_url, cert_sha256, cert_sha256_next, webtransport_pin}, jurisdiction: {id, name, legal_basis}, ticket, participant_id, display_name, role, e2ee, expires_at, rejoin_token, manage_token?}` (`manage_token` for a host).", body = Value),
        (status = 202, description = "In the waiting room: `{waiting: true, participant_id, wait_token, poll}`; poll `GET` the `poll` path with the wait token.", body = Value),
        (status = 400, description = "`bad_request`: the body or the display name.", body = ErrorBody),
        (status = 403, description = "`wrong_passcode`, `invite_required`, `passcode_required`, `bad_invite`, `bad_rejoin` or `banned`.", body = ErrorBody),
        (status = 404, description = "`unknown_conference`.", body = ErrorBody),
        (status = 410, description = "`ended`.", body = ErrorBody),
        (status = 413, description = "`payload_too_large`: a body over 16 KiB.", body = ErrorBody),
        (status = 421, description = "`wrong_router` (with `router_url`) or `jurisdiction_not_served`.", body = ErrorBody),
        (status = 423, description = "`locked`: only hosts join a locked conference.", body = ErrorBody),
        (status = 429, description = "Too many failed joins (`too_many_failures_from_address`, `too_many_failures_on_conference`, `too_many_joins_from_address`); `Retry-After` says when to try again.", body = ErrorBody),
        (status = 500, description = "`store_error` or `internal`.", body = ErrorBody),
        (status = 503, description = "No relay inside the jurisdiction can take the participant (`no_relay_in_jurisdiction`, `no_healthy_relay`, `at_capacity`, `conference_full`); `Retry-After` says when to try again. No relay outside it is ever used.", body = ErrorBody),
    )
)]
pub(super) async fn join(
    Current(shared): Current,
    Path(id): Path<String>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
    body: Bytes,
) -> ApiResult<Response> {
    let started = Instant::now();
    let ip = client_ip(&shared, peer, &headers);
    let request: JoinRequest = parse(&body).map_err(|e| refuse(&shared, None, "bad_request", e))?;
    let (c, j) = conference(&shared, &id).await.map_err(|e| {
        if e.status == StatusCode::NOT_FOUND {
            refuse(&shared, None, "unknown_conference", e)
        } else {
            e
        }
    })?;
    let result = join_checked(&shared, &c, j, ip, request, started).await;
    if let Err(e) = &result {
        if e.code == "store_error" {
            shared.metrics.store_errors.inc();
        }
    }
    result
}

async fn join_checked(
    shared: &Shared,
    c: &ConferenceRecord,
    j: JurisdictionIdx,
    ip: IpAddr,
    request: JoinRequest,
    started: Instant,
) -> ApiResult<Response> {
    let now = unix_now();
    if c.ended.is_some() {
        return Err(refused(shared, c, j, "ended", ended_check(c).unwrap_err()).await);
    }
    // Counted as a failure until the credential proves right. Invitations
    // are not guessable and skip the per-conference limit.
    let attempt = match shared.limiter.begin(
        ip,
        &c.id,
        request.invite.is_none() && request.rejoin.is_none(),
        Instant::now(),
    ) {
        Ok(attempt) => attempt,
        Err(limit) => {
            let secs = limit.retry_after().as_secs().max(1);
            // Not audited: a flood of refused guesses must not fill the disk.
            return Err(refuse(
                shared,
                Some(j),
                "rate_limited",
                ApiError {
                    retry_after: Some(secs),
                    ..ApiError::new(
                        StatusCode::TOO_MANY_REQUESTS,
                        limit.code(),
                        format!("too many failed joins; try again in {secs} s"),
                    )
                },
            ));
        }
    };
    if request.rejoin.is_some() {
        return rejoin(shared, c, j, ip, &request, attempt, now).await;
    }
    let address_hash = ids::address_hash(&shared.records_keys.current, &shared.address_key, ip);
    // Who is joining: an invitation names them, a passcode does not.
    let (invite, display_name) = credential(shared, c, j, ip, &request, attempt, now).await?;
    let invite_hash = invite.as_ref().map(|i| i.token_sha256);
    let role = invite.as_ref().map_or(Role::Speaker, |i| i.role);
    let participant_id = match &invite {
        Some(i) => i.participant_id.clone(),
        None => ids::participant_id()?,
    };
    if banned_by_an_older_address_hash(shared, &c.id, ip).await?
        || shared
            .store
            .is_banned(
                &c.id,
                Some(&participant_id),
                &address_hash,
                invite_hash.as_ref(),
            )
            .await?
    {
        return Err(refused(
            shared,
            c,
            j,
            "banned",
            ApiError::new(
                StatusCode::FORBIDDEN,
                "banned",
                "a host removed you from this conference",
            ),
        )
        .await);
    }
    if c.locked && role != Role::Host {
        return Err(refused(
            shared,
            c,
            j,
            "locked",
            ApiError::new(
                StatusCode::LOCKED,
                "locked",
                "the conference is locked; ask a host to unlock it",
            ),
        )
        .await);
    }
    let mut record = ParticipantRecord {
        id: participant_id.clone(),
        conference: c.id.clone(),
        display_name,
        role,
        status: Status::Joined,
        address_hash,
        invite_sha256: invite_hash,
        wait_token_sha256: None,
        relay: None,
        created: now,
        rejoin_sha256: None,
    };
    // The waiting room holds passcode joiners; invitations name their
    // holder and skip it.
    if c.waiting_room && invite.is_none() {
        return wait(shared, c, j, record).await;
    }
    // The invitation is claimed with the join's records, atomically: a
    // refusal before that does not burn it, a second use fails there.
    let answer = issue_ticket(shared, c, j, ip, &mut record, invite_hash.as_ref(), None).await?;
    shared
        .metrics
        .join_seconds
        .with_label_values(&[shared.policy.jurisdiction(j).id.as_str()])
        .observe(started.elapsed().as_secs_f64());
    Ok(Json(answer).into_response())
}

/// A passcode joiner of a conference with a waiting room waits: recorded
/// as waiting, with the token and the path of its poll.
async fn wait(
    shared: &Shared,
    c: &ConferenceRecord,
    j: JurisdictionIdx,
    mut record: ParticipantRecord,
) -> ApiResult<Response> {
    let participant_id = record.id.clone();
    let wait_token = ids::token("wait")?;
    record.status = Status::Waiting;
    record.wait_token_sha256 = Some(ids::sha256(&wait_token));
    shared.store.upsert_participant(&record).await?;
    audit(
        shared,
        &c.id,
        "waiting",
        json!({ "participant": participant_id }),
    )
    .await;
    shared
        .metrics
        .joins
        .with_label_values(&[shared.policy.jurisdiction(j).id.as_str(), "waiting"])
        .inc();
    Ok((
        StatusCode::ACCEPTED,
        Json(json!({
            "waiting": true,
            "participant_id": participant_id,
            "wait_token": wait_token,
            "poll": format!("/v1/conferences/{}/waiting/{}", c.id, participant_id),
        })),
    )
        .into_response())
}

/// A participant whose relay failed comes back with its rejoin token,
/// without its passcode or invitation, as itself.
async fn rejoin(
    shared: &Shared,
    c: &ConferenceRecord,
    j: JurisdictionIdx,
    ip: IpAddr,
    request: &JoinRequest,
    attempt: Attempt<'_>,
    now: u64,
) -> ApiResult<Response> {
    // The caller saw a token; an empty one matches no participant.
    let token = request.rejoin.as_deref().unwrap_or_default();
    let pid = request.participant_id.as_deref().unwrap_or_default();
    // The token carries its expiry, covered by the stored hash.
    let unexpired = token
        .rsplit_once('.')
        .and_then(|(_, expires)| expires.parse::<u64>().ok())
        .is_some_and(|expires| expires > now);
    let Some(mut p) = shared.store.participant(&c.id, pid).await?.filter(|p| {
        unexpired
            && p.rejoin_sha256
                .is_some_and(|h| ids::secret_matches(&h, token))
    }) else {
        drop(attempt);
        let why = "the rejoin token is not valid for this participant, or has expired; join again with the passcode or invitation";
        let e = ApiError::new(StatusCode::FORBIDDEN, "bad_rejoin", why);
        return Err(refused(shared, c, j, "bad_rejoin", e).await);
    };
    attempt.succeeded();
    if p.status != Status::Joined
        || shared
            .store
            .is_banned(
                &c.id,
                Some(&p.id),
                &p.address_hash,
                p.invite_sha256.as_ref(),
            )
            .await?
        || banned_address(shared, &c.id, ip).await?
    {
        return Err(refused(
            shared,
            c,
            j,
            "banned",
            ApiError::new(
                StatusCode::FORBIDDEN,
                "banned",
                "a host removed you from this conference",
            ),
        )
        .await);
    }
    let failed = request
        .failed_relay
        .as_deref()
        .and_then(|r| shared.policy.relay_idx(r));
    let answer = issue_ticket(shared, c, j, ip, &mut p, None, failed).await?;
    Ok(Json(answer).into_response())
}

/// Who is joining, from the credential: an invitation names them, a
/// passcode does not. A wrong or missing one is refused here; the attempt
/// counts as a failure unless it proves right.
async fn credential(
    shared: &Shared,
    c: &ConferenceRecord,
    j: JurisdictionIdx,
    ip: IpAddr,
    request: &JoinRequest,
    attempt: Attempt<'_>,
    now: u64,
) -> ApiResult<(Option<InviteRecord>, String)> {
    match (&request.invite, &request.passcode) {
        (Some(token), _) => {
            let hash = ids::sha256(token);
            match shared.store.invite(&hash, &c.id, now).await? {
                Ok(invite) => {
                    attempt.succeeded();
                    let name = invite.display_name.clone();
                    Ok((Some(invite), name))
                }
                Err(why) => {
                    drop(attempt);
                    let message = match why {
                        InviteRefusal::Unknown => "the invitation is not valid for this conference",
                        InviteRefusal::Used => "the invitation was already used",
                        InviteRefusal::Expired => "the invitation has expired",
                    };
                    return Err(refused(
                        shared,
                        c,
                        j,
                        "bad_invite",
                        ApiError::new(StatusCode::FORBIDDEN, "bad_invite", message),
                    )
                    .await);
                }
            }
        }
        (None, Some(passcode)) => {
            let ok = c.passcode.as_ref().is_some_and(|stored| {
                ids::passcode_matches(&shared.records_keys, stored, passcode)
            });
            if !ok {
                drop(attempt);
                info!(
                    jurisdiction = %shared.policy.jurisdiction(j).id,
                    client = %crate::redact::Addr::new(ip, shared.policy.full_addresses(&shared.policy.jurisdiction(j).id)),
                    "join refused: wrong passcode"
                );
                let (code, message) = if c.passcode.is_some() {
                    ("wrong_passcode", "wrong passcode")
                } else {
                    (
                        "invite_required",
                        "this conference is joined by invitation only",
                    )
                };
                return Err(refused(
                    shared,
                    c,
                    j,
                    "wrong_passcode",
                    ApiError::new(StatusCode::FORBIDDEN, code, message),
                )
                .await);
            }
            attempt.succeeded();
            let name = check_text("display_name", &request.display_name, MAX_NAME, true)
                .map_err(|e| refuse(shared, Some(j), "bad_request", e))?;
            Ok((None, name))
        }
        (None, None) => {
            attempt.succeeded();
            return Err(refused(
                shared,
                c,
                j,
                "passcode_required",
                ApiError::new(
                    StatusCode::FORBIDDEN,
                    "passcode_required",
                    "send \"passcode\" or \"invite\"",
                ),
            )
            .await);
        }
    }
}

/// A join refused once its conference is known: audited and counted.
async fn refused(
    shared: &Shared,
    c: &ConferenceRecord,
    j: JurisdictionIdx,
    reason: &'static str,
    e: ApiError,
) -> ApiError {
    audit(shared, &c.id, "join_refused", json!({ "reason": reason })).await;
    refuse(shared, Some(j), reason, e)
}

/// Selects a relay inside the jurisdiction for a participant at `ip`, signs
/// a ticket bound to it, and records the join.
async fn issue_ticket(
    shared: &Shared,
    c: &ConferenceRecord,
    j: JurisdictionIdx,
    ip: IpAddr,
    record: &mut ParticipantRecord,
    invite: Option<&[u8; 32]>,
    failed: Option<RelayIdx>,
) -> ApiResult<Value> {
    let jurisdiction = shared.policy.jurisdiction(j);
    let location = shared.policy.geoip().locate(ip);
    let relay = choose_relay(shared, c, j, &location, failed).await?;
    let r = shared.policy.relay(relay);
    let now = unix_now();
    let grants = match record.role {
        Role::Host => Grants {
            publish: true,
            subscribe: true,
            moderate: true,
        },
        Role::Speaker => Grants {
            publish: true,
            subscribe: true,
            moderate: false,
        },
        Role::Viewer => Grants {
            publish: false,
            subscribe: true,
            moderate: false,
        },
    };
    let claims = Claims {
        e2ee: c.e2ee,
        conference: c.id.clone(),
        jurisdiction: jurisdiction.id.clone(),
        relay: r.id.clone(),
        participant: record.id.clone(),
        display_name: record.display_name.clone(),
        grants,
        issued_at: now,
        expires_at: now + shared.ticket_lifetime.as_secs().max(1),
        nonce: ticket::new_nonce().map_err(|e| ids::RandomError::from_display(&e))?,
    };
    let signed = ticket::sign(&claims, &shared.signing_key);
    record.status = Status::Joined;
    record.relay = Some(r.id.clone());
    // Valid for a bounded time (and never after the conference ends): it
    // lets someone already admitted back in after a relay failure without
    // their passcode, past a lock and the waiting room.
    let rejoin = format!(
        "{}.{}",
        ids::token("rj")?,
        now + u64::from(shared.policy.limits().rejoin_token_secs)
    );
    record.rejoin_sha256 = Some(ids::sha256(&rejoin));
    let event = AuditEvent {
        time: now,
        conference: c.id.clone(),
        event: "join_accepted".into(),
        detail: json!({
            "participant": record.id,
            "role": record.role.as_str(),
            "relay": r.id,
            "relay_country": r.country.to_string(),
            "client_country": location.country().map(|c| c.to_string()),
        }),
    };
    if !shared
        .store
        .record_join(record, &r.id, &r.country.to_string(), &event, invite)
        .await?
    {
        let (reason, message) = if invite.is_some() {
            ("bad_invite", "the invitation was already used")
        } else {
            ("banned", "a host removed you from this conference")
        };
        return Err(refuse(
            shared,
            Some(j),
            reason,
            ApiError::new(StatusCode::FORBIDDEN, reason, message),
        ));
    }
    shared
        .metrics
        .joins
        .with_label_values(&[jurisdiction.id.as_str(), "ticket"])
        .inc();
    info!(
        jurisdiction = %jurisdiction.id,
        relay = %r.id,
        client = %crate::redact::Addr::new(ip, shared.policy.full_addresses(&jurisdiction.id)),
        participant = %crate::redact::Id(&record.id),
        name = %crate::redact::Name(&record.display_name),
        "join accepted"
    );
    Ok(join_answer(
        shared,
        c,
        j,
        record,
        Issued {
            relay: r,
            ticket: &signed,
            expires_at: claims.expires_at,
            rejoin: &rejoin,
            now,
        },
    ))
}

/// The relay inside the jurisdiction for a participant at `location`, or
/// the refusal (counted, audited, with when to try again).
async fn choose_relay(
    shared: &Shared,
    c: &ConferenceRecord,
    j: JurisdictionIdx,
    location: &Location,
    failed: Option<RelayIdx>,
) -> ApiResult<RelayIdx> {
    let jurisdiction = shared.policy.jurisdiction(j);
    // After a restart this run may not know where the conference is yet:
    // the store remembers the relay that carried it last.
    let hint = if shared
        .relays
        .hosting(&shared.policy, &c.id, Instant::now())
        .is_empty()
    {
        shared
            .store
            .relays_of(&c.id)
            .await?
            .into_iter()
            .max_by_key(|u| u.last_seen)
            .and_then(|u| shared.policy.relay_idx(&u.relay))
    } else {
        None
    };
    // Each participant goes to the best relay inside the jurisdiction;
    // relays already carrying the conference are preferred (stickiness) and
    // are linked to each other by cascade links.
    let placed = crate::router::relays::place(shared, &c.id, hint, |states, hosting, size| {
        pick_relay(&shared.policy, j, location, failed, states, hosting, size)
    })
    .await?;
    shared
        .metrics
        .route_decisions
        .with_label_values(&[
            jurisdiction.id.as_str(),
            placed
                .as_ref()
                .map_or_else(|(reason, _)| *reason, |_| "relay_chosen"),
        ])
        .inc();
    let relay = match placed {
        Ok(relay) => relay,
        Err((reason, message)) => {
            audit(shared, &c.id, "join_refused", json!({ "reason": reason })).await;
            // Overload, not a fault: say when to try again.
            let retry = if reason == "conference_full" { 30 } else { 5 };
            return Err(refuse(
                shared,
                Some(j),
                reason,
                ApiError {
                    retry_after: Some(retry),
                    ..ApiError::new(StatusCode::SERVICE_UNAVAILABLE, reason, message)
                },
            ));
        }
    };
    // Residency guard: selection only looks inside the jurisdiction; this
    // makes a future change that breaks that fail closed, not open.
    if !jurisdiction.contains(relay) {
        return Err(refuse(
            shared,
            Some(j),
            "no_healthy_relay",
            ApiError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "no_healthy_relay",
                "no relay inside the jurisdiction",
            ),
        ));
    }
    Ok(relay)
}

/// The join's one call of relay selection, a pure decision: from the
/// relays' states, those already hosting the conference and its size,
/// which relay inside jurisdiction `j` a participant at `location` gets,
/// or the refusal's code and message. A relay the participant just lost
/// (`failed`) is not offered again now.
fn pick_relay(
    policy: &Policy,
    j: JurisdictionIdx,
    location: &Location,
    failed: Option<RelayIdx>,
    states: &[RelayState],
    hosting: &[RelayIdx],
    size: u32,
) -> Result<RelayIdx, (&'static str, String)> {
    let jurisdiction = policy.jurisdiction(j);
    let max = policy.limits().conference_max_participants;
    if size >= max {
        return Err((
            "conference_full",
            format!("the conference has its maximum of {max} participants"),
        ));
    }
    let mut states = states.to_vec();
    if let Some(s) = failed.and_then(|f| states.get_mut(f.index())) {
        s.health = select::Health::Unhealthy;
    }
    let hosting: Vec<RelayIdx> = hosting
        .iter()
        .copied()
        .filter(|r| jurisdiction.contains(*r))
        .collect();
    select::select(policy, j, location, &states, &hosting)
        .map(|d| d.relay)
        .map_err(|refusal| {
            (
                refusal.reason.code(),
                format!(
                    "{} '{}'; no relay outside it is ever used",
                    refusal.reason, jurisdiction.id
                ),
            )
        })
}

/// What a join hands out besides the participant's record.
struct Issued<'a> {
    relay: &'a crate::policy::Relay,
    ticket: &'a str,
    expires_at: u64,
    rejoin: &'a str,
    now: u64,
}

/// What an admitted participant is told: its relay (with the certificates
/// to pin), the jurisdiction, its ticket and rejoin token, and a host's
/// manage token.
fn join_answer(
    shared: &Shared,
    c: &ConferenceRecord,
    j: JurisdictionIdx,
    record: &ParticipantRecord,
    issued: Issued<'_>,
) -> Value {
    let jurisdiction = shared.policy.jurisdiction(j);
    let Issued {
        relay: r,
        ticket: signed,
        expires_at,
        rejoin,
        now,
    } = issued;
    let (cert, next_cert) = shared.relays.certs(&r.id).unzip();
    let mut answer = json!({
        "relay": {
            "id": r.id,
            "country": r.country.to_string(),
            "country_name": r.country.name(),
            "city": r.city,
            "quic_addr": r.quic_addr.to_string(),
            "webtransport_url": r.webtransport_url,
            // For networks that block UDP, and browsers without
            // WebTransport (docs/wire-protocol.md#websocket).
            "websocket_url": r.websocket_url,
            "cert_sha256": cert,
            // The certificate the relay switches to at its next renewal:
            // browsers pin both.
            "cert_sha256_next": next_cert.flatten(),
            // A self-signed certificate: browsers pin its hash
            // (`serverCertificateHashes`); one from files is CA-issued.
            "webtransport_pin": r.tls.is_none(),
        },
        "jurisdiction": {
            "id": jurisdiction.id,
            "name": jurisdiction.name,
            "legal_basis": jurisdiction.legal_basis,
        },
        "ticket": signed,
        "participant_id": record.id,
        "display_name": record.display_name,
        "role": record.role.as_str(),
        // End-to-end encrypted: the page refuses to join media without the
        // link's key, and publishes encrypted tracks only.
        "e2ee": c.e2ee,
        "expires_at": expires_at,
        "rejoin_token": rejoin,
    });
    if record.role == Role::Host {
        answer["manage_token"] = json!(crate::router::manage::issue(
            &shared.signing_key,
            &c.id,
            &record.id,
            now + crate::router::manage::LIFETIME_SECS,
        ));
    }
    answer
}

// ---------------------------------------------------------------- waiting room

/// Who is in the waiting room.
#[utoipa::path(
    get,
    path = "/v1/conferences/{id}/waiting",
    tag = "joins",
    params(("id" = String, Path, description = "The conference id.")),
    responses(
        (status = 200, description = "`{waiting: [{participant_id, display_name, since}]}`.", body = Value),
        (status = 401, description = "`unauthorized`: not the tenant's API key, the host token or a host's manage token.", body = ErrorBody),
        (status = 404, description = "`unknown_conference` (also another tenant's).", body = ErrorBody),
        (status = 421, description = "`wrong_router` (with `router_url`) or `jurisdiction_not_served`.", body = ErrorBody),
        (status = 500, description = "`store_error`.", body = ErrorBody),
    )
)]
pub(super) async fn waiting_list(
    Current(shared): Current,
    Path(id): Path<String>,
    headers: HeaderMap,
) -> ApiResult<Json<Value>> {
    Managed::check(&shared, &id, &headers).await?;
    let waiting = shared
        .store
        .waiting(&id)
        .await
        .map_err(store_failed(&shared))?;
    let list: Vec<Value> = waiting
        .iter()
        .map(|p| json!({ "participant_id": p.id, "display_name": p.display_name, "since": p.created }))
        .collect();
    Ok(Json(json!({ "waiting": list })))
}

/// The waiting participant's poll: held until a host decides or
/// [`WAIT_HOLD`] passes, so a client that polls again at once never asks
/// more often than that.
#[utoipa::path(
    get,
    path = "/v1/conferences/{id}/waiting/{pid}",
    tag = "joins",
    params(
        ("id" = String, Path, description = "The conference id."),
        ("pid" = String, Path, description = "The waiting participant's id."),
    ),
    responses(
        (status = 200, description = "The join answer once a host admitted the participant (as `POST /v1/conferences/{id}/join` gives), or `{waiting: true, participant_id}` after 10 s: poll again. Answered sooner, with `Retry-After` (seconds to wait before the next poll), when the router's long-poll budget is full or it needs the connection.", body = Value),
        (status = 401, description = "`unauthorized`: no wait token.", body = ErrorBody),
        (status = 403, description = "`denied` (a host did not let the participant in) or `banned`.", body = ErrorBody),
        (status = 404, description = "`unknown_conference`, or `unknown_participant`: no waiting participant for this token.", body = ErrorBody),
        (status = 409, description = "`already_joined`: this participant has its ticket; or `poll_superseded`: a newer poll for this participant took over (one poll per wait token is held).", body = ErrorBody),
        (status = 429, description = "`poll_in_progress`: this participant's poll began less than a second ago on another connection; `Retry-After: 1`, and the connection is closed.", body = ErrorBody),
        (status = 410, description = "`ended`.", body = ErrorBody),
        (status = 421, description = "`wrong_router` (with `router_url`) or `jurisdiction_not_served`.", body = ErrorBody),
        (status = 500, description = "`store_error` or `internal`.", body = ErrorBody),
        (status = 503, description = "No relay inside the jurisdiction can take the participant now; still admitted, it may poll again after `Retry-After`.", body = ErrorBody),
    )
)]
pub(super) async fn waiting_poll(
    State(live): State<App>,
    Path((id, pid)): Path<(String, String)>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    long_poll: Option<axum::Extension<LongPoll>>,
    headers: HeaderMap,
) -> ApiResult<Response> {
    let token = bearer(&headers).ok_or_else(unauthorized)?.to_owned();
    // A wait token whose live poll began moments ago is being polled from
    // several connections at once: answered here, without the store, and
    // the connection closed, so the polls cannot end each other in a loop.
    if live.load().waiting_polls.taken_just_now(&id, &pid, &token) {
        return Ok(poll_in_progress(&live.load()));
    }
    let deadline = tokio::time::Instant::now() + WAIT_HOLD;
    // This poll's turn as the participant's one live poll, and its place
    // in the listener's long-poll budget: both taken once the token is
    // known good and there is something to wait for.
    let mut turn: Option<PollTurn> = None;
    let mut held: Option<Held> = None;
    loop {
        // The policy in force now: the poll is held across reloads.
        let shared = live.load();
        let changed = shared.waiting_changed.notified();
        tokio::pin!(changed);
        changed.as_mut().enable();
        let (c, j) = conference(&shared, &id).await?;
        let mut p = shared
            .store
            .participant(&id, &pid)
            .await
            .map_err(store_failed(&shared))?
            .filter(|p| {
                p.wait_token_sha256
                    .is_some_and(|h| ids::secret_matches(&h, &token))
            })
            .ok_or_else(|| {
                ApiError::new(
                    StatusCode::NOT_FOUND,
                    "unknown_participant",
                    "no such waiting participant for this token",
                )
            })?;
        if c.ended.is_some() {
            return Err(refuse(
                &shared,
                Some(j),
                "ended",
                ended_check(&c).unwrap_err(),
            ));
        }
        match p.status {
            Status::Admitted => {
                let ip = client_ip(&shared, peer, &headers);
                match admitted_join(&shared, &c, j, &id, ip, &mut p).await? {
                    Some(answer) => return Ok(answer),
                    // Another poll took this admission's ticket.
                    None => continue,
                }
            }
            Status::Denied | Status::Kicked => {
                return Err(refuse(
                    &shared,
                    Some(j),
                    "denied",
                    ApiError::new(StatusCode::FORBIDDEN, "denied", "a host did not let you in"),
                ));
            }
            Status::Joined => {
                return Err(ApiError::new(
                    StatusCode::CONFLICT,
                    "already_joined",
                    "this participant already has its ticket; join again with the passcode",
                ));
            }
            Status::Waiting => {}
        }
        let token_sha256 = p.wait_token_sha256.unwrap_or_default();
        let turn =
            turn.get_or_insert_with(|| shared.waiting_polls.take_over(&id, &pid, token_sha256));
        if held.is_none() {
            match long_poll.as_ref().map(|l| l.hold()) {
                // Not served by a listener with a budget (tests of the app).
                None => {}
                Some(Some(h)) => held = Some(h),
                Some(None) => return Ok(still_waiting(&pid, Some(BUDGET_FULL_RETRY), false)),
            }
        }
        let released = async {
            match &held {
                Some(h) => h.released().await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            _ = changed => {}
            _ = tokio::time::sleep_until(deadline) => return Ok(still_waiting(&pid, None, false)),
            _ = turn.superseded() => {
                shared
                    .metrics
                    .waiting_polls
                    .with_label_values(&["superseded"])
                    .inc();
                return Err(ApiError::new(
                    StatusCode::CONFLICT,
                    "poll_superseded",
                    "a newer poll for this participant took over; only one is held at a time",
                ));
            }
            _ = released => return Ok(still_waiting(&pid, Some(EVICTED_RETRY), true)),
        }
    }
}

/// The answer to a poll of a wait token whose live poll began moments
/// ago: `429 poll_in_progress`, counted, and the connection closed.
fn poll_in_progress(shared: &Shared) -> Response {
    shared
        .metrics
        .waiting_polls
        .with_label_values(&["in_progress"])
        .inc();
    closing(
        ApiError {
            retry_after: Some(TAKE_OVER_EVERY_SECS),
            ..ApiError::new(
                StatusCode::TOO_MANY_REQUESTS,
                "poll_in_progress",
                "this participant's poll is already held; poll from one connection at a time",
            )
        }
        .into_response(),
    )
}

/// An admitted participant's poll gets its ticket: once per admission,
/// whatever polls race for it (`None` to the losers), never after a ban.
async fn admitted_join(
    shared: &Shared,
    c: &ConferenceRecord,
    j: JurisdictionIdx,
    id: &str,
    ip: IpAddr,
    p: &mut ParticipantRecord,
) -> ApiResult<Option<Response>> {
    let started = Instant::now();
    // A ban after the admission still holds.
    if shared
        .store
        .is_banned(id, Some(&p.id), &p.address_hash, p.invite_sha256.as_ref())
        .await?
        || banned_address(shared, id, ip).await?
    {
        return Err(refuse(
            shared,
            Some(j),
            "banned",
            ApiError::new(
                StatusCode::FORBIDDEN,
                "banned",
                "a host removed you from this conference",
            ),
        ));
    }
    // One ticket per admission, whatever polls race for it.
    if !shared
        .store
        .set_status_if(id, &p.id, Status::Admitted, Status::Joined)
        .await?
    {
        return Ok(None);
    }
    let answer = match issue_ticket(shared, c, j, ip, p, None, None).await {
        Ok(answer) => answer,
        Err(e) => {
            // Still admitted: the participant may ask again.
            shared.store.set_status(id, &p.id, Status::Admitted).await?;
            return Err(e);
        }
    };
    shared
        .metrics
        .join_seconds
        .with_label_values(&[shared.policy.jurisdiction(j).id.as_str()])
        .observe(started.elapsed().as_secs_f64());
    Ok(Some(Json(answer).into_response()))
}

/// Seconds a poll answered at once because the long-poll budget was full
/// asks its client to wait before the next.
const BUDGET_FULL_RETRY: u64 = 2;
/// ... and one answered early because the listener needed its connection.
const EVICTED_RETRY: u64 = 1;

/// `{waiting: true}`: poll again (after `retry_after` seconds when given;
/// `close`: on a new connection).
fn still_waiting(pid: &str, retry_after: Option<u64>, close: bool) -> Response {
    let mut r = Json(json!({ "waiting": true, "participant_id": pid })).into_response();
    if let Some(secs) = retry_after {
        r.headers_mut()
            .insert(axum::http::header::RETRY_AFTER, secs.into());
    }
    if close { closing(r) } else { r }
}

/// `r`, ending its connection (the client comes back on a new one).
fn closing(mut r: Response) -> Response {
    r.headers_mut().insert(
        axum::http::header::CONNECTION,
        axum::http::HeaderValue::from_static("close"),
    );
    r
}

/// The live waiting-room poll of each waiting participant on this router:
/// a new poll for a participant ends the one before, so one wait token
/// holds at most one connection however many a client opens.
#[derive(Debug, Default)]
pub struct WaitingPolls {
    next: std::sync::atomic::AtomicU64,
    live: std::sync::Mutex<HashMap<PollKey, LivePoll>>,
}

/// The live poll of one waiting participant.
#[derive(Debug)]
struct LivePoll {
    generation: u64,
    ended: Arc<tokio::sync::Notify>,
    since: Instant,
    /// The wait token's hash, from the store when the poll began: a later
    /// poll with the same token is known good without the store.
    token_sha256: [u8; 32],
}

/// A participant's live poll is taken over at most once in this many
/// seconds; polls in between are answered `429 poll_in_progress`.
const TAKE_OVER_EVERY_SECS: u64 = 1;

/// (conference, participant).
type PollKey = (String, String);

impl WaitingPolls {
    /// Makes the caller the live poll of `pid` in `conference`, ending the
    /// one before it.
    pub fn take_over(
        self: &Arc<Self>,
        conference: &str,
        pid: &str,
        token_sha256: [u8; 32],
    ) -> PollTurn {
        let generation = self.next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let ended = Arc::new(tokio::sync::Notify::new());
        let key = (conference.to_owned(), pid.to_owned());
        let before = self.live.lock().unwrap_or_else(|e| e.into_inner()).insert(
            key.clone(),
            LivePoll {
                generation,
                ended: ended.clone(),
                since: Instant::now(),
                token_sha256,
            },
        );
        if let Some(earlier) = before {
            // A stored permit: the earlier poll sees it even if it is not
            // waiting at this instant.
            earlier.ended.notify_one();
        }
        PollTurn {
            owner: self.clone(),
            key,
            generation,
            ended,
        }
    }

    /// Whether `token` is the wait token of a poll of `pid` that began less
    /// than [`TAKE_OVER_EVERY_SECS`] ago.
    pub fn taken_just_now(&self, conference: &str, pid: &str, token: &str) -> bool {
        let live = self.live.lock().unwrap_or_else(|e| e.into_inner());
        live.get(&(conference.to_owned(), pid.to_owned()))
            .is_some_and(|p| {
                p.since.elapsed() < Duration::from_secs(TAKE_OVER_EVERY_SECS)
                    && crate::secret::secret_matches(&p.token_sha256, token)
            })
    }
}

/// A poll's turn as its participant's live poll; given up when dropped.
#[derive(Debug)]
pub struct PollTurn {
    owner: Arc<WaitingPolls>,
    key: PollKey,
    generation: u64,
    ended: Arc<tokio::sync::Notify>,
}

impl PollTurn {
    /// Resolves when a newer poll for the same participant took over.
    async fn superseded(&self) {
        self.ended.notified().await;
    }
}

impl Drop for PollTurn {
    fn drop(&mut self) {
        let mut live = self.owner.live.lock().unwrap_or_else(|e| e.into_inner());
        if live
            .get(&self.key)
            .is_some_and(|p| p.generation == self.generation)
        {
            live.remove(&self.key);
        }
    }
}

/// Lets a waiting participant in.
#[utoipa::path(
    post,
    path = "/v1/conferences/{id}/waiting/{pid}/admit",
    tag = "joins",
    params(
        ("id" = String, Path, description = "The conference id."),
        ("pid" = String, Path, description = "The waiting participant's id."),
    ),
    responses(
        (status = 200, description = "`{participant_id, status: \"admitted\"}`.", body = Value),
        (status = 401, description = "`unauthorized`: not the tenant's API key, the host token or a host's manage token.", body = ErrorBody),
        (status = 404, description = "`unknown_conference` (also another tenant's), or `unknown_participant`: nobody of that id is waiting.", body = ErrorBody),
        (status = 410, description = "`ended`.", body = ErrorBody),
        (status = 421, description = "`wrong_router` (with `router_url`) or `jurisdiction_not_served`.", body = ErrorBody),
        (status = 500, description = "`store_error`.", body = ErrorBody),
    )
)]
pub(super) async fn admit(
    Current(shared): Current,
    Path((id, pid)): Path<(String, String)>,
    headers: HeaderMap,
) -> ApiResult<Json<Value>> {
    decide(&shared, &id, &pid, &headers, Status::Admitted).await
}

/// Turns a waiting participant away.
#[utoipa::path(
    post,
    path = "/v1/conferences/{id}/waiting/{pid}/deny",
    tag = "joins",
    params(
        ("id" = String, Path, description = "The conference id."),
        ("pid" = String, Path, description = "The waiting participant's id."),
    ),
    responses(
        (status = 200, description = "`{participant_id, status: \"denied\"}`.", body = Value),
        (status = 401, description = "`unauthorized`: not the tenant's API key, the host token or a host's manage token.", body = ErrorBody),
        (status = 404, description = "`unknown_conference` (also another tenant's), or `unknown_participant`: nobody of that id is waiting.", body = ErrorBody),
        (status = 410, description = "`ended`.", body = ErrorBody),
        (status = 421, description = "`wrong_router` (with `router_url`) or `jurisdiction_not_served`.", body = ErrorBody),
        (status = 500, description = "`store_error`.", body = ErrorBody),
    )
)]
pub(super) async fn deny(
    Current(shared): Current,
    Path((id, pid)): Path<(String, String)>,
    headers: HeaderMap,
) -> ApiResult<Json<Value>> {
    decide(&shared, &id, &pid, &headers, Status::Denied).await
}

async fn decide(
    shared: &Shared,
    id: &str,
    pid: &str,
    headers: &HeaderMap,
    status: Status,
) -> ApiResult<Json<Value>> {
    Managed::check(shared, id, headers).await?.open()?;
    let p = shared
        .store
        .participant(id, pid)
        .await
        .map_err(store_failed(shared))?
        .filter(|p| p.status == Status::Waiting)
        .ok_or_else(|| {
            ApiError::new(
                StatusCode::NOT_FOUND,
                "unknown_participant",
                "no such participant in the waiting room",
            )
        })?;
    shared
        .store
        .set_status(id, &p.id, status)
        .await
        .map_err(store_failed(shared))?;
    let action = if status == Status::Admitted {
        "admit"
    } else {
        "deny"
    };
    shared.metrics.moderation.with_label_values(&[action]).inc();
    audit(shared, id, action, json!({ "participant": p.id })).await;
    waiting_changed(shared, id).await;
    Ok(Json(json!({ "participant_id": p.id, "status": status })))
}
