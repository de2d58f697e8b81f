//! The level engine: green / yellow / orange / red for a tenant and for the fleet.
//!
//! Pure and deterministic: no I/O, no clock reads. Every instant is passed in as
//! Unix milliseconds (`*_ms: i64`), every amount of money is integer nano-USD
//! (`*_nanos: i64`, rates in nano-USD per hour). The rules, defaults and formulas
//! are documented in `docs/levels.md`.
//!
//! - [`policy`]: the TOML-loadable [`LevelPolicy`] with the ARCHITECTURE defaults.
//! - [`baseline`]: the seasonal (hour-of-week) baseline of a subject's spend rate.
//! - [`forecast`]: spend at the period's end, and a tenant charge through the rate card.
//! - [`engine`]: the state machine, [`evaluate`].
//! - [`fleet`]: co-movement and the fleet's level, [`fleet_level`].

pub mod baseline;
pub mod engine;
pub mod fleet;
pub mod forecast;
pub mod policy;

use serde::{Deserialize, Serialize};

use crate::window::CalendarPeriod;

pub use baseline::{Baseline, BaselineEstimate, BaselineSource, BucketStats};
pub use engine::{
    BudgetFigures, CostBasis, Evaluation, LevelState, Observation, RateAssessment, RateFigures,
    evaluate,
};
pub use fleet::{CoMovement, fleet_level};
pub use forecast::{ForecastInput, forecast_charge_nanos, forecast_to_period_end};
pub use policy::{BaselinePolicy, FleetPolicy, ForecastPolicy, LevelPolicy, PolicyError};

/// A subject's level. Ordered: `Green < Yellow < Orange < Red`.
#[derive(
    Debug, Clone, Copy, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize,
)]
#[serde(rename_all = "lowercase")]
pub enum Level {
    /// Nothing notable.
    #[default]
    Green,
    /// Worth watching: a short spike, or a forecast approaching the budget.
    Yellow,
    /// Needs attention: a sustained anomaly, or the budget will be reached.
    Orange,
    /// Acting: budget exhausted or runaway spend.
    Red,
}

impl Level {
    /// All levels, lowest first.
    pub const ALL: [Self; 4] = [Self::Green, Self::Yellow, Self::Orange, Self::Red];

    /// The level one step lower (green stays green).
    pub const fn step_down(self) -> Self {
        match self {
            Self::Green | Self::Yellow => Self::Green,
            Self::Orange => Self::Yellow,
            Self::Red => Self::Orange,
        }
    }

    /// Lower-case name, as in the policy file and in messages.
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::Green => "green",
            Self::Yellow => "yellow",
            Self::Orange => "orange",
            Self::Red => "red",
        }
    }
}

impl std::fmt::Display for Level {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Why a subject is at its level (the contract's `ReasonCode`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ReasonCode {
    /// The forecast reaches a share of a budget.
    ForecastOverBudget,
    /// Actual spend reaches a share of a budget.
    ActualOverBudget,
    /// Spend-rate anomaly shorter than the sustain window.
    Spike,
    /// Spend-rate anomaly sustained past the sustain window.
    SustainedAnomaly,
    /// Spend rate far above baseline for a while.
    Runaway,
    /// Tenant charge below provider cost this period.
    NegativeMargin,
    /// Fleet only: many active tenants above their own baselines at once.
    CoMovement,
    /// The conditions call for a lower level; it steps down after the cooldown.
    Cooldown,
}

impl ReasonCode {
    /// Snake-case name, used in persisted state keys.
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::ForecastOverBudget => "forecast_over_budget",
            Self::ActualOverBudget => "actual_over_budget",
            Self::Spike => "spike",
            Self::SustainedAnomaly => "sustained_anomaly",
            Self::Runaway => "runaway",
            Self::NegativeMargin => "negative_margin",
            Self::CoMovement => "co_movement",
            Self::Cooldown => "cooldown",
        }
    }
}

/// One reason for a level (the contract's `LevelReason`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reason {
    /// What kind of reason.
    pub code: ReasonCode,
    /// The level this reason alone calls for.
    pub level: Level,
    /// Human-readable explanation with its figures.
    pub message: String,
    /// For budget reasons, the budget's period.
    pub period: Option<CalendarPeriod>,
    /// Since when the condition holds, Unix ms.
    pub since_ms: i64,
}

/// Formats nano-USD as `$1,234.56` (rounded half away from zero to cents, for
/// messages only; figures themselves stay integer).
pub fn format_usd(nanos: i64) -> String {
    let negative = nanos < 0;
    let abs = i128::from(nanos).abs();
    // 1 cent = 10_000_000 nano-USD.
    let cents = (abs + 5_000_000) / 10_000_000;
    let dollars = cents / 100;
    let rest = cents % 100;
    let digits = dollars.to_string();
    let mut grouped = String::with_capacity(digits.len() + digits.len() / 3);
    for (index, ch) in digits.chars().enumerate() {
        if index > 0 && (digits.len() - index) % 3 == 0 {
            grouped.push(',');
        }
        grouped.push(ch);
    }
    format!("{}${grouped}.{rest:02}", if negative { "-" } else { "" })
}

/// Formats basis points as a percentage with two decimals, `"112.50%"`.
pub fn format_bps(bps: i64) -> String {
    let sign = if bps < 0 { "-" } else { "" };
    let abs = bps.unsigned_abs();
    format!("{sign}{}.{:02}%", abs / 100, abs % 100)
}

const fn period_name(period: CalendarPeriod) -> &'static str {
    match period {
        CalendarPeriod::Day => "daily",
        CalendarPeriod::Month => "monthly",
    }
}
