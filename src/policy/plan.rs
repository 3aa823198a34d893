//! Plan rules: which jurisdiction a tenant's new conference is pinned to.
//!
//! Pure functions of the policy and the request; the router maps each
//! [`PinError`] to an HTTP status (403 for a forbidden choice).

use super::{JurisdictionIdx, Plan, Policy};

/// Why a requested pin was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PinError {
    #[error("no jurisdiction '{requested}' is defined by this operator")]
    UnknownJurisdiction { requested: String },
    #[error(
        "plan '{plan}' may not choose a jurisdiction: its conferences are pinned to the operator default '{default}'; omit the residency or move to a plan that may choose"
    )]
    PlanMayNotChoose {
        plan: String,
        requested: String,
        default: String,
    },
    #[error(
        "plan '{plan}' may pin conferences to {allowed} but not to '{requested}'; choose one of those or move to a plan that includes '{requested}'"
    )]
    NotInPlan {
        plan: String,
        requested: String,
        allowed: String,
    },
}

impl PinError {
    /// Stable machine-readable code (API error code, metric label).
    pub fn code(&self) -> &'static str {
        match self {
            PinError::UnknownJurisdiction { .. } => "unknown_jurisdiction",
            PinError::PlanMayNotChoose { .. } => "plan_may_not_choose",
            PinError::NotInPlan { .. } => "jurisdiction_not_in_plan",
        }
    }
}

/// The jurisdiction a conference created under `plan` is pinned to.
///
/// No request: the plan's default (the operator default for plans that may not
/// choose). A request: allowed only if the plan may choose it; a plan that may
/// not choose accepts only a request for the pin it would get anyway.
pub fn pin(
    policy: &Policy,
    plan: &Plan,
    requested: Option<&str>,
) -> Result<JurisdictionIdx, PinError> {
    let Some(requested) = requested else {
        return Ok(plan.default);
    };
    let Some(wanted) = policy.jurisdiction_idx(requested) else {
        return Err(PinError::UnknownJurisdiction {
            requested: requested.to_owned(),
        });
    };
    if !plan.may_choose() {
        return if wanted == plan.default {
            Ok(wanted)
        } else {
            Err(PinError::PlanMayNotChoose {
                plan: plan.id.clone(),
                requested: requested.to_owned(),
                default: policy.jurisdiction(plan.default).id.clone(),
            })
        };
    }
    if plan.jurisdictions.contains(&wanted) {
        Ok(wanted)
    } else {
        let allowed: Vec<_> = plan
            .jurisdictions
            .iter()
            .map(|j| format!("'{}'", policy.jurisdiction(*j).id))
            .collect();
        Err(PinError::NotInPlan {
            plan: plan.id.clone(),
            requested: requested.to_owned(),
            allowed: allowed.join(", "),
        })
    }
}
