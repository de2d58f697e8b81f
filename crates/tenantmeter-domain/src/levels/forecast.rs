//! Forecast of a period's spend at its end; integer arithmetic only.
//!
//! ```text
//! remaining = period_end - now            elapsed = now - period_start
//! near      = min(remaining, recent_horizon)          (default 1 h)
//! far       = remaining - near
//! run_rate  = actual / elapsed                        (baseline when elapsed = 0)
//! W         = min(run_rate_full_weight, period / 4)   (default 24 h; 6 h for a day)
//! e         = min(elapsed, W)
//! far_rate  = (run_rate * e + baseline * (W - e)) / W
//! forecast  = actual + recent_rate * near + far_rate * far
//! ```
//!
//! The near future continues the recent rate; the rest of the period continues
//! the period's own run rate, blended with the seasonal baseline while little of
//! the period has elapsed. Rates are nano-USD per hour, times milliseconds.
//!
//! For a tenant-charge budget the forecast is made in *rated value* (what the
//! period accumulates before tiers), then priced with the rate card
//! ([`forecast_charge_nanos`]): entering a cheaper tier lowers the charge of
//! the forecast rated value, so it is not an overrun.

use super::policy::{ForecastPolicy, duration_ms};
use crate::money::{ATTOS_PER_NANO, AttoUsd};
use crate::ratecard::Plan;
use crate::window::HOUR_MS;

/// What a forecast is made from. Amounts in nano-USD, rates in nano-USD per hour.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ForecastInput {
    /// Instant of the evaluation, Unix ms.
    pub now_ms: i64,
    /// Start of the period, Unix ms.
    pub period_start_ms: i64,
    /// End of the period (exclusive), Unix ms.
    pub period_end_ms: i64,
    /// Spent (or rated) so far this period.
    pub actual_nanos: i64,
    /// Recent rate (the rate window's, default 5 minutes).
    pub recent_rate_nanos_per_hour: i64,
    /// Baseline rate (the seasonal baseline's mean).
    pub baseline_rate_nanos_per_hour: i64,
}

fn saturate(value: i128) -> i64 {
    i64::try_from(value).unwrap_or(if value < 0 { i64::MIN } else { i64::MAX })
}

/// The forecast spend at the period's end (see the module docs for the formula).
pub fn forecast_to_period_end(input: &ForecastInput, policy: &ForecastPolicy) -> i64 {
    let period = i128::from(input.period_end_ms.saturating_sub(input.period_start_ms)).max(1);
    let remaining = i128::from(input.period_end_ms.saturating_sub(input.now_ms)).max(0);
    let elapsed = i128::from(input.now_ms.saturating_sub(input.period_start_ms)).clamp(0, period);
    let hour = i128::from(HOUR_MS);
    let actual = i128::from(input.actual_nanos.max(0));
    let recent = i128::from(input.recent_rate_nanos_per_hour.max(0));
    let baseline = i128::from(input.baseline_rate_nanos_per_hour.max(0));

    let near = remaining.min(i128::from(duration_ms(policy.recent_horizon)));
    let far = remaining - near;
    let run_rate = if elapsed > 0 {
        actual * hour / elapsed
    } else {
        baseline
    };
    let full_weight = i128::from(duration_ms(policy.run_rate_full_weight))
        .min(period / 4)
        .max(1);
    let trusted = elapsed.min(full_weight);
    let far_rate = (run_rate * trusted + baseline * (full_weight - trusted)) / full_weight;
    saturate(actual + recent * near / hour + far_rate * far / hour)
}

/// The tenant charge of a period whose rated value reaches
/// `forecast_rated_nanos`, through the plan's tiers and adjustment; `None` on
/// overflow. Use it with a forecast made in rated value, so a tier's cheaper rate
/// applies to the part of the forecast that falls in it.
pub fn forecast_charge_nanos(plan: &Plan, forecast_rated_nanos: i64) -> Option<i64> {
    let rated = i128::from(forecast_rated_nanos.max(0)).checked_mul(ATTOS_PER_NANO)?;
    let charge = plan.period_charge_nanos(AttoUsd(rated))?;
    i64::try_from(charge).ok()
}

/// The rated value (nano-USD, rounded up) at which the period's charge reaches
/// `budget_nanos`, so a charge budget can be compared with rated value; `None`
/// when no rated value reaches it.
pub fn rated_value_for_charge_nanos(plan: &Plan, budget_nanos: i64) -> Option<i64> {
    let rated = plan.rated_value_reaching(i128::from(budget_nanos))?;
    let nanos = rated.0.checked_add(ATTOS_PER_NANO - 1)? / ATTOS_PER_NANO;
    i64::try_from(nanos).ok()
}
