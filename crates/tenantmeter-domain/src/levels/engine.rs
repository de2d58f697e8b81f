//! The level state machine: [`evaluate`] takes the previous [`LevelState`], one
//! [`Observation`] and the policy, and returns the next state and an
//! [`Evaluation`] (level, previous level, transition, reasons, cooldown).
//!
//! - The *raise* thresholds decide what the conditions call for; a higher level
//!   is entered at once.
//! - The *hold* thresholds (percentages `hysteresis_points` lower, anomalies
//!   lasting down to `anomaly_z - anomaly_z_hysteresis`) decide whether the
//!   current level still holds. When they call for less, the subject is calm;
//!   after `cooldown` of calm the level steps down **one** step, and the next
//!   step needs another full cooldown.

use serde::{Deserialize, Serialize};

use super::baseline::BaselineEstimate;
use super::policy::{LevelPolicy, duration_ms};
use super::{Level, Reason, ReasonCode, format_bps, format_usd, period_name};
use crate::window::CalendarPeriod;

/// Which cost a budget counts (the contract's `CostBasis`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum CostBasis {
    /// What the tenant is charged under its plan (tiers applied).
    #[default]
    TenantCharge,
    /// What the provider charges, at list price.
    ProviderCost,
}

/// A budget and the spend against it, nano-USD. For a tenant-charge budget the
/// forecast should come from [`super::forecast_charge_nanos`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BudgetFigures {
    /// Day or month.
    pub period: CalendarPeriod,
    /// Which cost it counts.
    pub basis: CostBasis,
    /// The budget, > 0 (a budget of zero or less is ignored).
    pub budget_nanos: i64,
    /// Spent so far this period.
    pub actual_nanos: i64,
    /// Forecast at the period's end.
    pub forecast_nanos: i64,
}

fn share_bps(amount: i64, budget: i64) -> i64 {
    if budget <= 0 {
        return 0;
    }
    let bps = i128::from(amount) * 10_000 / i128::from(budget);
    i64::try_from(bps).unwrap_or(if bps < 0 { i64::MIN } else { i64::MAX })
}

impl BudgetFigures {
    /// actual / budget in basis points (the contract's `actual_bps`).
    pub fn actual_bps(&self) -> i64 {
        share_bps(self.actual_nanos, self.budget_nanos)
    }

    /// forecast / budget in basis points (the contract's `forecast_bps`).
    pub fn forecast_bps(&self) -> i64 {
        share_bps(self.forecast_nanos, self.budget_nanos)
    }
}

/// The current spend rate and the baseline it is judged against.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RateFigures {
    /// Rate over the rate window, nano-USD per hour.
    pub rate_nanos_per_hour: i64,
    /// The seasonal baseline at this instant.
    pub baseline: BaselineEstimate,
}

/// Everything one evaluation of a subject looks at.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Observation {
    /// Instant of the evaluation, Unix ms. Must not go backwards for a subject.
    pub at_ms: i64,
    /// The subject's budgets (explicit or from the plan).
    pub budgets: Vec<BudgetFigures>,
    /// Spend rate against baseline; `None` skips the rate rules.
    pub rate: Option<RateFigures>,
    /// Tenant charge minus provider cost this month; `None` skips the margin rule.
    pub margin_nanos: Option<i64>,
}

/// Since when one condition (reason code and period) has held.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ConditionSince {
    /// `<reason code>` or `<reason code>/<day|month>`.
    pub key: String,
    /// Unix ms.
    pub since_ms: i64,
}

/// What the engine remembers about a subject between evaluations: the state a
/// service persists (it is small and serde-serializable).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct LevelState {
    /// Current level.
    pub level: Level,
    /// Level before the last transition.
    pub previous_level: Level,
    /// When the current level was entered; `None` before the first evaluation.
    pub level_since_ms: Option<i64>,
    /// Last evaluation; `None` when never evaluated.
    pub evaluated_at_ms: Option<i64>,
    /// Last time the level rose.
    pub last_raise_ms: Option<i64>,
    /// Since when the conditions have called for less than the current level.
    pub calm_since_ms: Option<i64>,
    /// Since when the rate has been an anomaly.
    pub anomaly_since_ms: Option<i64>,
    /// Since when the rate has been at runaway multiple of its baseline.
    pub runaway_since_ms: Option<i64>,
    /// Since when each current condition has held.
    pub conditions: Vec<ConditionSince>,
}

impl LevelState {
    /// Since when the condition `key` has held, if it held at the last evaluation.
    pub fn condition_since(&self, key: &str) -> Option<i64> {
        self.conditions
            .iter()
            .find(|condition| condition.key == key)
            .map(|condition| condition.since_ms)
    }
}

/// The rate rules' view of the observation.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct RateAssessment {
    /// The rate, nano-USD per hour.
    pub rate_nanos_per_hour: i64,
    /// The baseline it was judged against.
    pub baseline: BaselineEstimate,
    /// Standard deviations above the baseline.
    pub z_score: f64,
    /// Since when the current anomaly has lasted; `None` without one.
    pub anomaly_since_ms: Option<i64>,
    /// Since when the rate has been a runaway multiple; `None` if not.
    pub runaway_since_ms: Option<i64>,
}

/// The outcome of one evaluation.
#[derive(Debug, Clone, PartialEq)]
pub struct Evaluation {
    /// Instant evaluated.
    pub at_ms: i64,
    /// The level after this evaluation.
    pub level: Level,
    /// The level before this evaluation.
    pub previous_level: Level,
    /// True when `level != previous_level`.
    pub transition: bool,
    /// When `level` was entered.
    pub level_since_ms: i64,
    /// Reasons for the level, highest level first; empty at green.
    pub reasons: Vec<Reason>,
    /// Earliest time the level may step down; `None` at green.
    pub cooldown_until_ms: Option<i64>,
    /// The rate rules' figures, when a rate was observed.
    pub rate: Option<RateAssessment>,
    /// The rate is at least `fleet.above_baseline_z` above its baseline: it counts
    /// towards the fleet's co-movement.
    pub above_baseline: bool,
}

/// Percent threshold minus the hysteresis offset, in basis points.
fn threshold_bps(pct: u32, offset_points: u32) -> i64 {
    i64::from(pct.saturating_sub(offset_points)) * 100
}

fn since(state: &LevelState, key: &str, now_ms: i64) -> i64 {
    state.condition_since(key).unwrap_or(now_ms)
}

fn budget_key(code: ReasonCode, period: CalendarPeriod) -> String {
    format!("{}/{}", code.as_str(), period_name(period))
}

fn reason_key(reason: &Reason) -> String {
    match reason.period {
        Some(period) => budget_key(reason.code, period),
        None => reason.code.as_str().to_owned(),
    }
}

/// `anomaly_z - anomaly_z_hysteresis`: the z at which an anomaly ends.
#[allow(clippy::float_arithmetic)] // a statistical threshold, not money
fn anomaly_clear_z(policy: &LevelPolicy) -> f64 {
    policy.anomaly_z - policy.anomaly_z_hysteresis
}

fn format_rate(nanos_per_hour: i64) -> String {
    format!("{}/h", format_usd(nanos_per_hour))
}

/// Ratio `rate / baseline` as `"12.34x"`, integer arithmetic.
fn format_multiple(rate: i64, baseline: i64) -> String {
    if baseline <= 0 {
        return "n/a".to_owned();
    }
    let hundredths = i128::from(rate) * 100 / i128::from(baseline);
    format!("{}.{:02}x", hundredths / 100, (hundredths % 100).abs())
}

fn format_duration_ms(ms: i64) -> String {
    let seconds = ms.max(0) / 1000;
    format!("{}m{:02}s", seconds / 60, seconds % 60)
}

/// Assesses the rate: z-score, anomaly and runaway tracking.
fn assess_rate(
    state: &LevelState,
    input: &Observation,
    policy: &LevelPolicy,
) -> Option<RateAssessment> {
    let figures = input.rate?;
    let now = input.at_ms;
    let rate = figures.rate_nanos_per_hour;
    let z = figures.baseline.z_score(rate);
    let anomaly =
        z >= policy.anomaly_z || (state.anomaly_since_ms.is_some() && z >= anomaly_clear_z(policy));
    let mean = i128::from(figures.baseline.mean_nanos_per_hour.max(1));
    let multiple_pct = |pct: u32| i128::from(rate) * 100 >= mean * i128::from(pct);
    let runaway = multiple_pct(policy.runaway_rate_pct)
        || (state.runaway_since_ms.is_some()
            && multiple_pct(
                policy
                    .runaway_rate_pct
                    .saturating_sub(policy.hysteresis_points),
            ));
    Some(RateAssessment {
        rate_nanos_per_hour: rate,
        baseline: figures.baseline,
        z_score: z,
        anomaly_since_ms: anomaly.then(|| state.anomaly_since_ms.unwrap_or(now)),
        runaway_since_ms: runaway.then(|| state.runaway_since_ms.unwrap_or(now)),
    })
}

/// The reasons the conditions give, with percent thresholds lowered by
/// `offset_points` (0 to reach a level, `hysteresis_points` to hold it).
fn conditions(
    state: &LevelState,
    input: &Observation,
    rate: Option<&RateAssessment>,
    policy: &LevelPolicy,
    offset_points: u32,
) -> Vec<Reason> {
    let now = input.at_ms;
    let mut reasons = Vec::new();
    let sustained_since = rate
        .and_then(|assessment| assessment.anomaly_since_ms)
        .filter(|&start| now.saturating_sub(start) >= duration_ms(policy.sustain));

    for budget in &input.budgets {
        if budget.budget_nanos <= 0 {
            continue;
        }
        let name = period_name(budget.period);
        let actual_bps = budget.actual_bps();
        let actual_level = if actual_bps >= threshold_bps(policy.red_actual_pct, offset_points) {
            Some(Level::Red)
        } else if actual_bps >= threshold_bps(policy.orange_actual_pct, offset_points) {
            Some(Level::Orange)
        } else {
            None
        };
        if let Some(level) = actual_level {
            let code = ReasonCode::ActualOverBudget;
            reasons.push(Reason {
                code,
                level,
                message: format!(
                    "actual {} is {} of the {name} budget of {}",
                    format_usd(budget.actual_nanos),
                    format_bps(actual_bps),
                    format_usd(budget.budget_nanos)
                ),
                period: Some(budget.period),
                since_ms: since(state, &budget_key(code, budget.period), now),
            });
        }
        let forecast_bps = budget.forecast_bps();
        let red = forecast_bps >= threshold_bps(policy.red_forecast_pct, offset_points)
            && sustained_since.is_some();
        let forecast_level = if red {
            Some(Level::Red)
        } else if forecast_bps >= threshold_bps(policy.orange_forecast_pct, offset_points) {
            Some(Level::Orange)
        } else if forecast_bps >= threshold_bps(policy.yellow_forecast_pct, offset_points) {
            Some(Level::Yellow)
        } else {
            None
        };
        if let Some(level) = forecast_level {
            let code = ReasonCode::ForecastOverBudget;
            let anomaly = if red { " with a sustained anomaly" } else { "" };
            reasons.push(Reason {
                code,
                level,
                message: format!(
                    "forecast {} is {} of the {name} budget of {}{anomaly}",
                    format_usd(budget.forecast_nanos),
                    format_bps(forecast_bps),
                    format_usd(budget.budget_nanos)
                ),
                period: Some(budget.period),
                since_ms: since(state, &budget_key(code, budget.period), now),
            });
        }
    }

    if let Some(assessment) = rate {
        let figures = format!(
            "rate {} is {} the baseline {} (z = {:.1})",
            format_rate(assessment.rate_nanos_per_hour),
            format_multiple(
                assessment.rate_nanos_per_hour,
                assessment.baseline.mean_nanos_per_hour
            ),
            format_rate(assessment.baseline.mean_nanos_per_hour),
            assessment.z_score
        );
        if let Some(start) = assessment.runaway_since_ms {
            let lasted = now.saturating_sub(start);
            if lasted >= duration_ms(policy.runaway_for) {
                reasons.push(Reason {
                    code: ReasonCode::Runaway,
                    level: Level::Red,
                    message: format!("runaway: {figures} for {}", format_duration_ms(lasted)),
                    period: None,
                    since_ms: start,
                });
            }
        }
        if let Some(start) = assessment.anomaly_since_ms {
            let lasted = now.saturating_sub(start);
            let (code, level, what) = if sustained_since.is_some() {
                (
                    ReasonCode::SustainedAnomaly,
                    Level::Orange,
                    "sustained anomaly",
                )
            } else {
                (ReasonCode::Spike, Level::Yellow, "spike")
            };
            reasons.push(Reason {
                code,
                level,
                message: format!("{what}: {figures} for {}", format_duration_ms(lasted)),
                period: None,
                since_ms: start,
            });
        }
    }

    if let Some(margin) = input.margin_nanos.filter(|&margin| margin < 0) {
        let code = ReasonCode::NegativeMargin;
        reasons.push(Reason {
            code,
            level: policy.negative_margin_level,
            message: format!(
                "negative margin: tenant charge is {} below provider cost this month",
                format_usd(margin.saturating_neg())
            ),
            period: Some(CalendarPeriod::Month),
            since_ms: since(state, code.as_str(), now),
        });
    }
    reasons
}

fn sort_reasons(reasons: &mut [Reason]) {
    reasons.sort_by(|a, b| b.level.cmp(&a.level).then(a.code.cmp(&b.code)));
}

fn max_level(reasons: &[Reason]) -> Level {
    reasons
        .iter()
        .map(|reason| reason.level)
        .max()
        .unwrap_or(Level::Green)
}

/// Evaluates one subject: the next state and the evaluation.
///
/// Deterministic: the same inputs always give the same outputs. Levels rise at
/// once to what the raise thresholds call for, and fall one step per cooldown of
/// calm (hold thresholds calling for less); never more than one step per call.
pub fn evaluate(
    state: &LevelState,
    input: &Observation,
    policy: &LevelPolicy,
) -> (LevelState, Evaluation) {
    evaluate_with(state, input, policy, Vec::new(), Vec::new())
}

/// [`evaluate`] with extra reasons (the fleet's co-movement), given for the raise
/// and the hold thresholds.
pub(crate) fn evaluate_with(
    state: &LevelState,
    input: &Observation,
    policy: &LevelPolicy,
    extra_raise: Vec<Reason>,
    extra_hold: Vec<Reason>,
) -> (LevelState, Evaluation) {
    let now = input.at_ms;
    let rate = assess_rate(state, input, policy);
    let mut raise = conditions(state, input, rate.as_ref(), policy, 0);
    raise.extend(extra_raise);
    let mut hold = conditions(
        state,
        input,
        rate.as_ref(),
        policy,
        policy.hysteresis_points,
    );
    hold.extend(extra_hold);
    sort_reasons(&mut raise);
    sort_reasons(&mut hold);
    let raise_target = max_level(&raise);
    let hold_target = max_level(&hold).max(raise_target);

    let previous = state.level;
    let cooldown = duration_ms(policy.cooldown);
    let mut next = state.clone();
    next.evaluated_at_ms = Some(now);
    next.anomaly_since_ms = rate.and_then(|assessment| assessment.anomaly_since_ms);
    next.runaway_since_ms = rate.and_then(|assessment| assessment.runaway_since_ms);
    next.conditions = Vec::with_capacity(hold.len());
    for reason in &hold {
        let key = reason_key(reason);
        if next.condition_since(&key).is_none() {
            next.conditions.push(ConditionSince {
                key,
                since_ms: reason.since_ms,
            });
        }
    }

    if raise_target > previous {
        next.level = raise_target;
        next.last_raise_ms = Some(now);
        next.calm_since_ms = None;
    } else if hold_target >= previous {
        next.calm_since_ms = None;
    } else {
        let calm_since = state.calm_since_ms.unwrap_or(now);
        if now.saturating_sub(calm_since) >= cooldown {
            next.level = previous.step_down();
            // Still calm below the new level: the next step needs a full cooldown.
            next.calm_since_ms = (hold_target < next.level).then_some(now);
        } else {
            next.calm_since_ms = Some(calm_since);
        }
    }
    let transition = next.level != previous;
    if transition || state.level_since_ms.is_none() {
        next.level_since_ms = Some(now);
    }
    if transition {
        next.previous_level = previous;
    }
    let cooldown_until_ms = (next.level != Level::Green)
        .then(|| next.calm_since_ms.unwrap_or(now).saturating_add(cooldown));

    let reasons = if next.level == raise_target {
        raise
    } else {
        let mut reasons = hold;
        if hold_target < next.level {
            reasons.insert(
                0,
                Reason {
                    code: ReasonCode::Cooldown,
                    level: next.level,
                    message: format!(
                        "conditions call for {hold_target}; {} steps down to {} after the cooldown",
                        next.level,
                        next.level.step_down()
                    ),
                    period: None,
                    since_ms: next.calm_since_ms.unwrap_or(now),
                },
            );
        }
        reasons
    };

    let above_baseline = rate.is_some_and(|assessment| {
        assessment.z_score >= policy.fleet.above_baseline_z
            && assessment.rate_nanos_per_hour > assessment.baseline.mean_nanos_per_hour
    });
    let evaluation = Evaluation {
        at_ms: now,
        level: next.level,
        previous_level: previous,
        transition,
        level_since_ms: next.level_since_ms.unwrap_or(now),
        reasons,
        cooldown_until_ms,
        rate,
        above_baseline,
    };
    (next, evaluation)
}
