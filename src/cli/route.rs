//! `residency-relay route`: one routing decision, explained.

use std::fmt::Write as _;
use std::net::IpAddr;

use serde_json::{Value, json};

use crate::geo::{Location, Precision};
use crate::policy::{JurisdictionIdx, PinError, Policy, RelayIdx, plan};
use crate::select::{self, Evaluation, Health, RelayState};
use std::io::Write as _;
use std::process::ExitCode;

use super::args::RouteArgs;

pub(super) struct Request<'a> {
    pub(super) ip: IpAddr,
    pub(super) jurisdiction: Option<&'a str>,
    pub(super) tenant: Option<&'a str>,
    pub(super) hosting: &'a [String],
    pub(super) down: &'a [String],
}

pub(super) struct Report {
    ip: IpAddr,
    location: Location,
    pinned_by: String,
    outcome: Outcome,
}

enum Outcome {
    Chosen(RelayIdx, Evaluation),
    Refused(select::RefusalReason, Evaluation),
    PinRefused(String, PinError),
}

/// Resolves the pin, locates the client and selects. `Err` is a usage error
/// (unknown tenant, jurisdiction or relay id), not a refusal.
pub(super) fn run(policy: &Policy, req: &Request<'_>) -> Result<Report, String> {
    let relay = |id: &String| {
        policy
            .relay_idx(id)
            .ok_or_else(|| format!("no relay has the id '{id}'"))
    };
    let hosting = req
        .hosting
        .iter()
        .map(relay)
        .collect::<Result<Vec<_>, _>>()?;
    let mut states = vec![RelayState::IDLE; policy.relays().len()];
    for id in req.down {
        states[relay(id)?.index()].health = Health::Unhealthy;
    }
    let location = policy.geoip().locate(req.ip);

    let (jurisdiction, pinned_by) = match req.tenant {
        Some(tenant_id) => {
            let tenant = policy
                .tenant(tenant_id)
                .ok_or_else(|| format!("no tenant has the id '{tenant_id}'"))?;
            let plan = policy.plan_of(tenant);
            let by = format!("tenant {} on plan {}", tenant.id, plan.id);
            match plan::pin(policy, plan, req.jurisdiction) {
                Ok(j) => (j, by),
                // A typo, as without --tenant: a usage error, not a refusal.
                Err(e @ PinError::UnknownJurisdiction { .. }) => return Err(e.to_string()),
                Err(e) => {
                    return Ok(Report {
                        ip: req.ip,
                        location,
                        pinned_by: by,
                        outcome: Outcome::PinRefused(req.jurisdiction.unwrap_or("").to_owned(), e),
                    });
                }
            }
        }
        None => {
            let id = req.jurisdiction.unwrap_or("");
            let j: JurisdictionIdx = policy.jurisdiction_idx(id).ok_or_else(|| {
                let known: Vec<&str> = policy
                    .jurisdictions()
                    .iter()
                    .map(|j| j.id.as_str())
                    .collect();
                format!("no jurisdiction '{id}'; known: {}", known.join(", "))
            })?;
            (j, "--jurisdiction".to_owned())
        }
    };
    let outcome = match select::select(policy, jurisdiction, &location, &states, &hosting) {
        Ok(d) => Outcome::Chosen(d.relay, d.evaluation),
        Err(r) => Outcome::Refused(r.reason, r.evaluation),
    };
    Ok(Report {
        ip: req.ip,
        location,
        pinned_by,
        outcome,
    })
}

fn precision(p: Precision) -> &'static str {
    match p {
        Precision::Coordinates => "coordinates",
        Precision::CountryCentroid => "country centroid",
    }
}

impl Report {
    pub(super) fn is_refusal(&self) -> bool {
        !matches!(self.outcome, Outcome::Chosen(..))
    }

    fn evaluation(&self) -> Option<&Evaluation> {
        match &self.outcome {
            Outcome::Chosen(_, e) | Outcome::Refused(_, e) => Some(e),
            Outcome::PinRefused(..) => None,
        }
    }

    /// Relays outside the jurisdiction, which selection never considers.
    fn outside<'p>(&self, policy: &'p Policy) -> Vec<(RelayIdx, &'p crate::policy::Relay)> {
        let Some(e) = self.evaluation() else {
            return Vec::new();
        };
        let j = policy.jurisdiction(e.jurisdiction);
        policy
            .relays()
            .iter()
            .enumerate()
            .map(|(i, r)| (RelayIdx(i as u32), r))
            .filter(|(_, r)| !j.countries.contains(r.country))
            .collect()
    }

    pub(super) fn to_text(&self, policy: &Policy) -> String {
        let mut s = String::new();
        let _ = match self.location {
            Location::Known {
                country,
                point,
                precision: p,
                from_override,
            } => writeln!(
                s,
                "client {}: {} ({}) by {}, at {:.4}, {:.4} ({})",
                self.ip,
                country,
                country.name(),
                if from_override {
                    "override"
                } else {
                    "GeoIP database"
                },
                point.latitude(),
                point.longitude(),
                precision(p)
            ),
            Location::Unknown(why) => {
                writeln!(s, "client {}: location unknown ({})", self.ip, why.as_str())
            }
        };
        let Some(evaluation) = self.evaluation() else {
            if let Outcome::PinRefused(requested, e) = &self.outcome {
                let _ = writeln!(s, "pin: {}", self.pinned_by);
                let _ = writeln!(s, "REFUSED ({}): requested '{requested}': {e}", e.code());
            }
            return s;
        };
        let j = policy.jurisdiction(evaluation.jurisdiction);
        let _ = writeln!(
            s,
            "jurisdiction: {} ({}; {}), pinned by {}",
            j.id, j.name, j.legal_basis, self.pinned_by
        );
        let _ = match &self.outcome {
            Outcome::Chosen(relay, _) => {
                let r = policy.relay(*relay);
                writeln!(
                    s,
                    "decision: relay {} in {} at {}",
                    r.id, r.country, r.quic_addr
                )
            }
            Outcome::Refused(reason, _) => writeln!(
                s,
                "REFUSED ({}): {reason}; no relay abroad is used",
                reason.code()
            ),
            Outcome::PinRefused(..) => Ok(()),
        };
        let _ = writeln!(s, "distances from: {}", evaluation.basis.as_str());
        let _ = writeln!(s, "candidates ({}):", evaluation.candidates.len());
        for (rank, c) in evaluation.candidates.iter().enumerate() {
            let r = policy.relay(c.relay);
            let _ = writeln!(
                s,
                "  {}. {:<12} {}  {:>8.1} km  load {:>5.1}%{}  score {:.1}",
                rank + 1,
                r.id,
                r.country,
                c.distance_km,
                c.load * 100.0,
                if c.hosting { "  hosting" } else { "" },
                c.score
            );
        }
        let outside = self.outside(policy);
        let _ = writeln!(
            s,
            "excluded ({}):",
            evaluation.excluded.len() + outside.len()
        );
        for e in &evaluation.excluded {
            let r = policy.relay(e.relay);
            let _ = writeln!(s, "  {:<12} {}  {}", r.id, r.country, e.why);
        }
        let jid = &policy.jurisdiction(evaluation.jurisdiction).id;
        for (_, r) in outside {
            let _ = writeln!(
                s,
                "  {:<12} {}  outside jurisdiction {jid}",
                r.id, r.country
            );
        }
        s
    }

    pub(super) fn to_json(&self, policy: &Policy) -> Value {
        let client = match self.location {
            Location::Known {
                country,
                point,
                precision: p,
                from_override,
            } => json!({
                "ip": self.ip.to_string(),
                "country": country.as_str(),
                "latitude": point.latitude(),
                "longitude": point.longitude(),
                "precision": p,
                "source": if from_override { "override" } else { "database" },
            }),
            Location::Unknown(why) => json!({
                "ip": self.ip.to_string(),
                "country": null,
                "source": "unknown",
                "unknown_reason": why,
            }),
        };
        let mut out = json!({
            "client": client,
            "client_country": self.location.country().map(|c| c.as_str().to_owned()),
            "pinned_by": self.pinned_by,
        });
        let evaluation = match &self.outcome {
            Outcome::PinRefused(requested, e) => {
                out["jurisdiction"] = json!(requested);
                out["relay"] = Value::Null;
                out["refused"] = json!(e.code());
                out["message"] = json!(e.to_string());
                out["candidates"] = json!([]);
                out["excluded"] = json!([]);
                return out;
            }
            Outcome::Chosen(relay, e) => {
                let r = policy.relay(*relay);
                out["relay"] = json!(r.id);
                out["relay_country"] = json!(r.country.as_str());
                out["quic_addr"] = json!(r.quic_addr.to_string());
                out["refused"] = Value::Null;
                e
            }
            Outcome::Refused(reason, e) => {
                out["relay"] = Value::Null;
                out["refused"] = json!(reason.code());
                out["message"] = json!(reason.to_string());
                e
            }
        };
        let jid = &policy.jurisdiction(evaluation.jurisdiction).id;
        out["jurisdiction"] = json!(jid);
        out["basis"] = json!(evaluation.basis);
        out["candidates"] = evaluation
            .candidates
            .iter()
            .enumerate()
            .map(|(rank, c)| {
                let r = policy.relay(c.relay);
                json!({
                    "rank": rank + 1,
                    "relay": r.id,
                    "country": r.country.as_str(),
                    "distance_km": c.distance_km,
                    "load": c.load,
                    "hosting": c.hosting,
                    "score": c.score,
                })
            })
            .collect();
        let mut excluded: Vec<Value> = evaluation
            .excluded
            .iter()
            .map(|e| {
                let r = policy.relay(e.relay);
                json!({
                    "relay": r.id,
                    "country": r.country.as_str(),
                    "reason": e.why.code(),
                    "detail": e.why.to_string(),
                })
            })
            .collect();
        excluded.extend(self.outside(policy).into_iter().map(|(_, r)| {
            json!({
                "relay": r.id,
                "country": r.country.as_str(),
                "reason": "outside_jurisdiction",
                "detail": format!("{} is not in {jid}", r.country),
            })
        }));
        out["excluded"] = Value::Array(excluded);
        out
    }
}

/// `route`: prints where a client would go, and why; exit 2 on a refusal.
pub(super) fn command(a: RouteArgs) -> ExitCode {
    let policy = match super::load(&a.config, a.regions.as_deref()) {
        Ok(p) => p,
        Err(code) => return code,
    };
    let request = Request {
        ip: a.ip,
        jurisdiction: a.jurisdiction.as_deref(),
        tenant: a.tenant.as_deref(),
        hosting: &a.hosting,
        down: &a.down,
    };
    match run(&policy, &request) {
        Ok(report) => {
            let mut out = std::io::stdout().lock();
            let written = if a.json {
                writeln!(out, "{}", report.to_json(&policy))
            } else {
                write!(out, "{}", report.to_text(&policy))
            };
            if written.is_err() {
                return ExitCode::FAILURE;
            }
            if report.is_refusal() {
                ExitCode::from(super::EXIT_REFUSED)
            } else {
                ExitCode::SUCCESS
            }
        }
        Err(message) => {
            eprintln!("error: {message}");
            ExitCode::FAILURE
        }
    }
}
