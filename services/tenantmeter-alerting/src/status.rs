//! The contract's view of an evaluation: `LevelReason`, `BudgetUse`,
//! `SpendRate`, `PeriodSpend`, and the alert of a transition. Pure.

use tenantmeter_domain::levels::{
    BaselineSource, BudgetFigures, CostBasis, Evaluation, Level, Reason, ReasonCode,
};
use tenantmeter_proto::v1 as pb;

use crate::budgets::{Enforcement, basis_to_proto, ms_to_timestamp, period_to_proto};

/// The contract's reason code.
pub const fn reason_code_to_proto(code: ReasonCode) -> pb::ReasonCode {
    match code {
        ReasonCode::ForecastOverBudget => pb::ReasonCode::ForecastOverBudget,
        ReasonCode::ActualOverBudget => pb::ReasonCode::ActualOverBudget,
        ReasonCode::Spike => pb::ReasonCode::Spike,
        ReasonCode::SustainedAnomaly => pb::ReasonCode::SustainedAnomaly,
        ReasonCode::Runaway => pb::ReasonCode::Runaway,
        ReasonCode::NegativeMargin => pb::ReasonCode::NegativeMargin,
        ReasonCode::CoMovement => pb::ReasonCode::CoMovement,
        ReasonCode::Cooldown => pb::ReasonCode::Cooldown,
    }
}

/// The contract's level.
pub const fn level_to_proto(level: Level) -> pb::Level {
    match level {
        Level::Green => pb::Level::Green,
        Level::Yellow => pb::Level::Yellow,
        Level::Orange => pb::Level::Orange,
        Level::Red => pb::Level::Red,
    }
}

/// The level of a contract number; unspecified and unknown values are `None`.
pub fn level_from_proto(value: i32) -> Option<Level> {
    match pb::Level::try_from(value).ok()? {
        pb::Level::Green => Some(Level::Green),
        pb::Level::Yellow => Some(Level::Yellow),
        pb::Level::Orange => Some(Level::Orange),
        pb::Level::Red => Some(Level::Red),
        pb::Level::Unspecified => None,
    }
}

/// The contract's reasons.
pub fn reasons_to_proto(reasons: &[Reason]) -> Vec<pb::LevelReason> {
    reasons
        .iter()
        .map(|reason| pb::LevelReason {
            code: reason_code_to_proto(reason.code).into(),
            level: level_to_proto(reason.level).into(),
            message: reason.message.clone(),
            period: reason
                .period
                .map_or(pb::CalendarPeriod::Unspecified, period_to_proto)
                .into(),
            since: Some(ms_to_timestamp(reason.since_ms)),
        })
        .collect()
}

/// A budget's use, in the contract's terms.
pub fn budget_use(
    figures: &BudgetFigures,
    from_plan: bool,
    enforcement: Enforcement,
    period_end_ms: Option<i64>,
) -> pb::BudgetUse {
    pb::BudgetUse {
        period: period_to_proto(figures.period).into(),
        basis: basis_to_proto(figures.basis).into(),
        enforcement: match enforcement {
            Enforcement::Soft => pb::BudgetEnforcement::Soft,
            Enforcement::Hard => pb::BudgetEnforcement::Hard,
        }
        .into(),
        from_plan,
        budget_nanos_usd: figures.budget_nanos,
        actual_nanos_usd: figures.actual_nanos,
        forecast_nanos_usd: figures.forecast_nanos,
        actual_bps: figures.actual_bps(),
        forecast_bps: figures.forecast_bps(),
        period_end: period_end_ms.map(ms_to_timestamp),
    }
}

/// The spend rate against the baseline, from an evaluation.
pub fn spend_rate(evaluation: &Evaluation, basis: CostBasis) -> Option<pb::SpendRate> {
    let rate = evaluation.rate.as_ref()?;
    Some(pb::SpendRate {
        basis: basis_to_proto(basis).into(),
        rate_nanos_usd_per_hour: rate.rate_nanos_per_hour,
        baseline_nanos_usd_per_hour: rate.baseline.mean_nanos_per_hour,
        baseline_p95_nanos_usd_per_hour: rate.baseline.p95_nanos_per_hour,
        z_score: rate.z_score,
        baseline_source: match rate.baseline.source {
            BaselineSource::Plan => pb::BaselineSource::Plan,
            BaselineSource::HourOfWeek | BaselineSource::HourOfDay => pb::BaselineSource::History,
        }
        .into(),
        anomaly_since: rate.anomaly_since_ms.map(ms_to_timestamp),
    })
}

/// The month's spend, both ways.
pub fn month_spend(start_ms: Option<i64>, charge_nanos: i64, cost_nanos: i64) -> pb::PeriodSpend {
    pb::PeriodSpend {
        period_start: start_ms.map(ms_to_timestamp),
        tenant_charge_nanos_usd: charge_nanos,
        provider_cost_nanos_usd: cost_nanos,
        margin_nanos_usd: charge_nanos.saturating_sub(cost_nanos),
    }
}
