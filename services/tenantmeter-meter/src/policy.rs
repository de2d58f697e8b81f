//! Enforced policies: how a contract `TenantPolicy` is stored for the reserve
//! script to read in the same call, and what a tenant's effective limits are.
//!
//! Budget caps on the tenant charge are stored as caps on rated value, which
//! each event adds to on its own ([`Plan::rated_value_reaching`]); the
//! conversion uses the tenant's plan when the policy is applied, and alerting
//! re-applies policies every evaluation, so a plan change is picked up then.

use prost::Message as _;
use tenantmeter_domain::ids::{ModelId, TenantId};
use tenantmeter_domain::pricebook::PriceBook;
use tenantmeter_domain::ratecard::Plan;
use tenantmeter_proto::v1 as pb;

use crate::events::{ATTOS_PER_PICO, timestamp_ms};

/// A policy ready for the store.
#[derive(Debug, Clone)]
pub struct StoredPolicy {
    /// Its tenant.
    pub tenant: TenantId,
    /// When decided, ms.
    pub decided_ms: i64,
    /// When it ends, ms.
    pub expires_ms: i64,
    /// Hash fields the reserve script reads.
    pub fields: Vec<(String, Vec<u8>)>,
}

fn field(name: impl Into<String>, value: impl ToString) -> (String, Vec<u8>) {
    (name.into(), value.to_string().into_bytes())
}

/// Validates `policy` and lays it out for the store; an error names the field.
pub fn fields(
    policy: &pb::TenantPolicy,
    book: Option<&PriceBook>,
    now_ms: i64,
) -> Result<StoredPolicy, String> {
    let tenant =
        TenantId::parse(policy.tenant_id.clone()).map_err(|e| format!("tenant_id: {e}"))?;
    let decided_ms = policy
        .decided_at
        .as_ref()
        .map(timestamp_ms)
        .ok_or("decided_at: is required")?;
    let expires_ms = policy
        .expires_at
        .as_ref()
        .map(timestamp_ms)
        .ok_or("expires_at: is required")?;
    if expires_ms <= now_ms {
        return Err("expires_at: is already past".to_owned());
    }
    for (name, value) in [
        ("requests_per_minute", policy.requests_per_minute),
        ("tokens_per_minute", policy.tokens_per_minute),
    ] {
        if value < 0 {
            return Err(format!("{name}: must not be negative"));
        }
    }
    let mut out = vec![
        field("level", policy.source_level),
        field("rpm", policy.requests_per_minute),
        field("tpm", policy.tokens_per_minute),
        field("shadow", u8::from(policy.shadow)),
        field("reason", &policy.reason),
        ("proto".to_owned(), policy.encode_to_vec()),
    ];
    let plan = book.and_then(|b| b.plan_of(&tenant).map(|(plan, _)| plan));
    for (index, cap) in policy.budget_caps.iter().enumerate() {
        if cap.amount_nanos_usd <= 0 {
            return Err(format!(
                "budget_caps[{index}].amount_nanos_usd: must be greater than zero"
            ));
        }
        let period = match pb::CalendarPeriod::try_from(cap.period) {
            Ok(pb::CalendarPeriod::Day) => "d",
            Ok(pb::CalendarPeriod::Month) => "m",
            Ok(pb::CalendarPeriod::Unspecified) | Err(_) => {
                return Err(format!("budget_caps[{index}].period: must be DAY or MONTH"));
            }
        };
        let (kind, pico) = match pb::CostBasis::try_from(cap.basis) {
            Ok(pb::CostBasis::ProviderCost) => ("c", i128::from(cap.amount_nanos_usd) * 1_000),
            Ok(pb::CostBasis::TenantCharge | pb::CostBasis::Unspecified) => {
                let Some(plan) = plan else {
                    return Err(format!(
                        "budget_caps[{index}].basis: a tenant-charge cap needs the tenant's plan, and the meter has no price book yet"
                    ));
                };
                let rated = plan
                    .rated_value_reaching(i128::from(cap.amount_nanos_usd))
                    .ok_or_else(|| {
                        format!("budget_caps[{index}]: the plan never charges that much")
                    })?;
                ("rv", (rated.0 + ATTOS_PER_PICO - 1) / ATTOS_PER_PICO)
            }
            Err(_) => {
                return Err(format!(
                    "budget_caps[{index}].basis: unknown value {}",
                    cap.basis
                ));
            }
        };
        out.push(field(format!("cap_{period}_{kind}"), pico));
    }
    let mut deny = String::from(",");
    for (index, model) in policy.denied_model_ids.iter().enumerate() {
        ModelId::parse(model.clone()).map_err(|e| format!("denied_model_ids[{index}]: {e}"))?;
        deny.push_str(model);
        deny.push(',');
    }
    if policy.denied_model_ids.is_empty() {
        deny.clear();
    } else {
        out.push(field("deny", deny));
    }
    for (from, to) in &policy.model_downgrades {
        ModelId::parse(from.clone()).map_err(|e| format!("model_downgrades: key {from:?}: {e}"))?;
        ModelId::parse(to.clone()).map_err(|e| format!("model_downgrades[{from:?}]: {e}"))?;
        out.push(field(format!("dg:{from}"), to));
    }
    Ok(StoredPolicy {
        tenant,
        decided_ms,
        expires_ms,
        fields: out,
    })
}

/// The stricter of two limits where 0 means none.
fn stricter(plan: i64, policy: i64) -> i64 {
    match (plan, policy) {
        (plan, 0) => plan,
        (0, policy) => policy,
        (plan, policy) => plan.min(policy),
    }
}

/// What Reserve enforces on a tenant with `plan` and `policy`.
pub fn effective(plan: Option<&Plan>, policy: Option<&pb::TenantPolicy>) -> pb::EffectiveLimits {
    let count = |v: u64| i64::try_from(v).unwrap_or(i64::MAX);
    let (rpm, tpm, budget) = plan.map_or((0, 0, 0), |p| {
        (
            count(p.limits.requests_per_minute),
            count(p.limits.tokens_per_minute),
            p.limits.period_budget_nanos,
        )
    });
    let mut caps = Vec::new();
    if budget > 0 {
        caps.push(pb::BudgetCap {
            period: pb::CalendarPeriod::Month.into(),
            basis: pb::CostBasis::TenantCharge.into(),
            amount_nanos_usd: budget,
        });
    }
    let shadow = policy.is_some_and(|p| p.shadow);
    let mut limits = pb::EffectiveLimits {
        plan_id: plan.map(|p| p.id.to_string()).unwrap_or_default(),
        requests_per_minute: rpm,
        tokens_per_minute: tpm,
        budget_caps: caps,
        shadow,
        ..Default::default()
    };
    if let Some(policy) = policy.filter(|p| !p.shadow) {
        limits.requests_per_minute = stricter(rpm, policy.requests_per_minute);
        limits.tokens_per_minute = stricter(tpm, policy.tokens_per_minute);
        for cap in &policy.budget_caps {
            match limits
                .budget_caps
                .iter_mut()
                .find(|c| c.period == cap.period && c.basis == cap.basis)
            {
                Some(existing) => {
                    existing.amount_nanos_usd = existing.amount_nanos_usd.min(cap.amount_nanos_usd)
                }
                None => limits.budget_caps.push(*cap),
            }
        }
        limits.denied_model_ids.clone_from(&policy.denied_model_ids);
        limits.model_downgrades.clone_from(&policy.model_downgrades);
    }
    limits
}
