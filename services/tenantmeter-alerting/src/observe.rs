//! Forming a tenant's [`Observation`] for the level engine from the meter's
//! figures (`MeterService.ListTenantUsage` / `GetUsage`), its budgets and its
//! plan. Pure: no I/O, no clock reads; money stays integer nano-USD (`i128`
//! intermediates, saturating to `i64`). Formulas in `docs/alerting.md`
//! ("Observations").
//!
//! - The evaluation instant is the usage's `as_of`.
//! - The spend rate is the 5-minute window's provider cost per hour (`x 12`),
//!   converted to tenant charge by the month's average multiplier when the
//!   tenant's monthly budget counts tenant charge ([`rate_basis`]).
//! - Rated value is approximated by provider cost (list price; exact for a plan
//!   without model overrides): the meter reports no rated value.
//! - A tenant without a monthly budget gets its plan's period budget
//!   (`PlanLimits::period_budget_nanos`, a monthly tenant-charge budget), marked
//!   [`TenantObservation::from_plan`].

use tenantmeter_domain::levels::{
    Baseline, BudgetFigures, CostBasis, ForecastInput, LevelPolicy, Observation, RateFigures,
    forecast_charge_nanos, forecast_to_period_end,
};
use tenantmeter_domain::ratecard::Plan;
use tenantmeter_domain::window::{CalendarPeriod, HOUR_MS};
use tenantmeter_proto::v1 as pb;

use crate::budgets::{Budget, Subject, timestamp_to_ms};

/// Length of the rate window the spend rate is read from (the meter's
/// `USAGE_WINDOW_FIVE_MINUTES`), ms.
pub const RATE_WINDOW_MS: i64 = 300_000;

/// Rated value used to read a plan's multiplier when the month has no
/// provider cost yet: $1, in nano-USD.
const REFERENCE_RATED_NANOS: i64 = 1_000_000_000;

/// A field the observation needs is missing or malformed in the meter's
/// `TenantUsage`; `field` names it (`as_of`, `windows[USAGE_WINDOW_FIVE_MINUTES]`,
/// `periods[CALENDAR_PERIOD_MONTH].period_end`, ...).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("TenantUsage.{field}: {reason}")]
pub struct ObserveError {
    /// Path of the missing or bad field inside `TenantUsage`.
    pub field: String,
    /// What is wrong with it.
    pub reason: String,
}

impl ObserveError {
    pub(crate) fn new(field: impl Into<String>, reason: impl Into<String>) -> Self {
        Self {
            field: field.into(),
            reason: reason.into(),
        }
    }
}

/// An [`Observation`] and what the contract reports beside it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TenantObservation {
    /// What [`tenantmeter_domain::levels::evaluate`] takes.
    pub observation: Observation,
    /// Parallel to `observation.budgets`: true for the plan's period budget
    /// (the contract's `BudgetUse.from_plan`).
    pub from_plan: Vec<bool>,
    /// Which cost the rate (and the baseline it is judged against) counts.
    pub rate_basis: CostBasis,
}

/// Charge per provider cost, as a fraction `num / den` (`den > 0`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Multiplier {
    num: i128,
    den: i128,
}

impl Multiplier {
    const ONE: Self = Self { num: 1, den: 1 };

    /// `value * num / den`, saturating.
    fn apply(self, value: i64) -> i64 {
        saturate(i128::from(value) * self.num / self.den)
    }

    /// `value * den / num` (back from charge to cost); `value` when `num <= 0`.
    fn invert(self, value: i64) -> i64 {
        if self.num <= 0 {
            return value;
        }
        saturate(i128::from(value) * self.den / self.num)
    }
}

fn saturate(value: i128) -> i64 {
    i64::try_from(value).unwrap_or(if value < 0 { i64::MIN } else { i64::MAX })
}

/// One calendar period of the usage, checked.
#[derive(Debug, Clone, Copy)]
struct PeriodFigures {
    start_ms: i64,
    end_ms: i64,
    provider_cost_nanos: i64,
    tenant_charge_nanos: Option<i64>,
}

const fn period_label(period: CalendarPeriod) -> &'static str {
    match period {
        CalendarPeriod::Day => "CALENDAR_PERIOD_DAY",
        CalendarPeriod::Month => "CALENDAR_PERIOD_MONTH",
    }
}

const fn period_to_proto(period: CalendarPeriod) -> pb::CalendarPeriod {
    match period {
        CalendarPeriod::Day => pb::CalendarPeriod::Day,
        CalendarPeriod::Month => pb::CalendarPeriod::Month,
    }
}

fn as_of_ms(usage: &pb::TenantUsage) -> Result<i64, ObserveError> {
    usage
        .as_of
        .as_ref()
        .map(timestamp_to_ms)
        .ok_or_else(|| ObserveError::new("as_of", "missing"))
}

fn period_figures(
    usage: &pb::TenantUsage,
    period: CalendarPeriod,
) -> Result<PeriodFigures, ObserveError> {
    let label = period_label(period);
    let field = format!("periods[{label}]");
    let entry = usage
        .periods
        .iter()
        .find(|entry| entry.period == period_to_proto(period) as i32)
        .ok_or_else(|| ObserveError::new(field.clone(), "missing"))?;
    let start_ms = entry
        .period_start
        .as_ref()
        .map(timestamp_to_ms)
        .ok_or_else(|| ObserveError::new(format!("{field}.period_start"), "missing"))?;
    let end_ms = entry
        .period_end
        .as_ref()
        .map(timestamp_to_ms)
        .ok_or_else(|| ObserveError::new(format!("{field}.period_end"), "missing"))?;
    if end_ms <= start_ms {
        return Err(ObserveError::new(
            format!("{field}.period_end"),
            "must be after period_start",
        ));
    }
    let figures = entry
        .figures
        .as_ref()
        .ok_or_else(|| ObserveError::new(format!("{field}.figures"), "missing"))?;
    Ok(PeriodFigures {
        start_ms,
        end_ms,
        provider_cost_nanos: figures.provider_cost_nanos_usd,
        tenant_charge_nanos: entry.tenant_charge_nanos_usd,
    })
}

/// Provider cost of the 5-minute window per hour: `cost_5m * 3_600_000 / 300_000`.
fn provider_cost_rate(usage: &pb::TenantUsage) -> Result<i64, ObserveError> {
    let field = "windows[USAGE_WINDOW_FIVE_MINUTES]";
    let window = usage
        .windows
        .iter()
        .find(|entry| entry.window == pb::UsageWindow::FiveMinutes as i32)
        .ok_or_else(|| ObserveError::new(field, "missing"))?;
    let figures = window
        .figures
        .as_ref()
        .ok_or_else(|| ObserveError::new(format!("{field}.figures"), "missing"))?;
    Ok(saturate(
        i128::from(figures.provider_cost_nanos_usd) * i128::from(HOUR_MS)
            / i128::from(RATE_WINDOW_MS),
    ))
}

/// The month's average charge per provider cost: the meter's month figures
/// when it has both and some cost; else the plan's charge for the first $1 of
/// rated value; else 1.
fn charge_multiplier(month: Option<&PeriodFigures>, plan: Option<&Plan>) -> Multiplier {
    if let Some(month) = month
        && let Some(charge) = month.tenant_charge_nanos
        && month.provider_cost_nanos > 0
    {
        return Multiplier {
            num: i128::from(charge.max(0)),
            den: i128::from(month.provider_cost_nanos),
        };
    }
    if let Some(plan) = plan
        && let Some(charge) = forecast_charge_nanos(plan, REFERENCE_RATED_NANOS)
    {
        return Multiplier {
            num: i128::from(charge.max(0)),
            den: i128::from(REFERENCE_RATED_NANOS),
        };
    }
    Multiplier::ONE
}

fn plan_period_budget(plan: Option<&Plan>) -> Option<i64> {
    plan.map(|plan| plan.limits.period_budget_nanos)
        .filter(|nanos| *nanos > 0)
}

fn tenant_budgets<'a>(
    usage: &'a pb::TenantUsage,
    budgets: &'a [Budget],
) -> impl Iterator<Item = &'a Budget> + 'a {
    budgets.iter().filter(move |budget| match &budget.subject {
        Subject::Tenant(id) => id.as_str() == usage.tenant_id,
        Subject::Fleet => false,
    })
}

/// Which cost the tenant's rate and baseline count: the monthly budget's basis
/// (the plan's period budget counts tenant charge); without a monthly budget,
/// the first other budget's; provider cost when the tenant has none.
/// `budgets` may hold other subjects' budgets: only the tenant's count.
pub fn rate_basis(usage: &pb::TenantUsage, budgets: &[Budget], plan: Option<&Plan>) -> CostBasis {
    if let Some(month) = tenant_budgets(usage, budgets).find(|b| b.period == CalendarPeriod::Month)
    {
        return month.basis;
    }
    if plan_period_budget(plan).is_some() {
        return CostBasis::TenantCharge;
    }
    tenant_budgets(usage, budgets)
        .next()
        .map_or(CostBasis::ProviderCost, |budget| budget.basis)
}

/// The spend rate in `basis`, nano-USD per hour, and the multiplier used.
fn spend_rate(
    usage: &pb::TenantUsage,
    basis: CostBasis,
    plan: Option<&Plan>,
) -> Result<(i64, i64, Multiplier), ObserveError> {
    let cost_rate = provider_cost_rate(usage)?;
    let month = period_figures(usage, CalendarPeriod::Month).ok();
    let multiplier = charge_multiplier(month.as_ref(), plan);
    let rate = match basis {
        CostBasis::ProviderCost => cost_rate,
        CostBasis::TenantCharge => multiplier.apply(cost_rate),
    };
    Ok((cost_rate, rate, multiplier))
}

/// What the service feeds `Baseline::observe` after each rate window:
/// `(as_of ms, rate nano-USD/h)`, the rate in [`rate_basis`] exactly as
/// [`observe_tenant`] computes it, so the baseline learns the figure it judges.
pub fn baseline_sample(
    usage: &pb::TenantUsage,
    budgets: &[Budget],
    plan: Option<&Plan>,
) -> Result<(i64, i64), ObserveError> {
    let at_ms = as_of_ms(usage)?;
    let basis = rate_basis(usage, budgets, plan);
    let (_, rate, _) = spend_rate(usage, basis, plan)?;
    Ok((at_ms, rate))
}

/// The plan's expected rate in `basis`: `expected_charge_nanos_per_hour`, else
/// the period budget spread over the month (`budget * 1h / month length`);
/// 0 (the policy's floor applies) without either. Converted to provider cost by
/// the inverse multiplier for a provider-cost rate.
fn plan_expected_rate(
    plan: Option<&Plan>,
    month: &PeriodFigures,
    basis: CostBasis,
    multiplier: Multiplier,
) -> i64 {
    let Some(plan) = plan else { return 0 };
    let charge_rate = if plan.expected_charge_nanos_per_hour > 0 {
        plan.expected_charge_nanos_per_hour
    } else if let Some(budget) = plan_period_budget(Some(plan)) {
        saturate(
            i128::from(budget) * i128::from(HOUR_MS)
                / i128::from(month.end_ms - month.start_ms).max(1),
        )
    } else {
        0
    };
    match basis {
        CostBasis::TenantCharge => charge_rate,
        CostBasis::ProviderCost => multiplier.invert(charge_rate),
    }
}

/// Everything needed to grade one budget.
struct Context<'a> {
    at_ms: i64,
    cost_rate: i64,
    baseline_cost_rate: i64,
    multiplier: Multiplier,
    plan: Option<&'a Plan>,
    policy: &'a LevelPolicy,
}

fn budget_figures(
    usage: &pb::TenantUsage,
    ctx: &Context<'_>,
    period: CalendarPeriod,
    basis: CostBasis,
    budget_nanos: i64,
) -> Result<BudgetFigures, ObserveError> {
    let figures = period_figures(usage, period)?;
    let cost_actual = figures.provider_cost_nanos;
    // Forecast in provider cost (= rated value, approximately).
    let cost_forecast = forecast_to_period_end(
        &ForecastInput {
            now_ms: ctx.at_ms,
            period_start_ms: figures.start_ms,
            period_end_ms: figures.end_ms,
            actual_nanos: cost_actual,
            recent_rate_nanos_per_hour: ctx.cost_rate,
            baseline_rate_nanos_per_hour: ctx.baseline_cost_rate,
        },
        &ctx.policy.forecast,
    );
    let (actual, forecast) = match basis {
        CostBasis::ProviderCost => (cost_actual, cost_forecast),
        CostBasis::TenantCharge => {
            let priced = |rated: i64| ctx.plan.and_then(|plan| forecast_charge_nanos(plan, rated));
            let actual = match figures.tenant_charge_nanos {
                Some(charge) => charge,
                None => priced(cost_actual).ok_or_else(|| {
                    ObserveError::new(
                        format!("periods[{}].tenant_charge_nanos_usd", period_label(period)),
                        "missing, and no plan to price the period's cost",
                    )
                })?,
            };
            // actual + the charge the rest of the forecast adds: through the
            // plan's tiers when there is a plan, else at the month's multiplier.
            let added = match (priced(cost_forecast), priced(cost_actual)) {
                (Some(at_end), Some(now)) => at_end.saturating_sub(now),
                _ if ctx.plan.is_some() => i64::MAX,
                _ => ctx
                    .multiplier
                    .apply(cost_forecast.saturating_sub(cost_actual.max(0))),
            };
            (actual, actual.saturating_add(added.max(0)))
        }
    };
    Ok(BudgetFigures {
        period,
        basis,
        budget_nanos,
        actual_nanos: actual,
        forecast_nanos: forecast,
    })
}

/// The tenant's observation at the usage's `as_of`; see the module docs.
///
/// `budgets` may hold other subjects' budgets (only the tenant's count);
/// `plan` is the tenant's plan from the followed price book, when known;
/// `baseline` is the tenant's learned baseline in [`rate_basis`].
pub fn observe_tenant(
    usage: &pb::TenantUsage,
    budgets: &[Budget],
    plan: Option<&Plan>,
    baseline: &Baseline,
    policy: &LevelPolicy,
) -> Result<TenantObservation, ObserveError> {
    observe(usage, budgets, plan, None, baseline, policy)
}

/// The fleet's observation: as [`observe_tenant`] for a subject without a
/// plan, whose baseline without history is `expected_nanos_per_hour` (the sum
/// of its tenants' baselines) instead of a plan's expected rate.
pub fn observe_fleet(
    usage: &pb::TenantUsage,
    budgets: &[Budget],
    expected_nanos_per_hour: i64,
    baseline: &Baseline,
    policy: &LevelPolicy,
) -> Result<TenantObservation, ObserveError> {
    observe(
        usage,
        budgets,
        None,
        Some(expected_nanos_per_hour),
        baseline,
        policy,
    )
}

fn observe(
    usage: &pb::TenantUsage,
    budgets: &[Budget],
    plan: Option<&Plan>,
    expected_override: Option<i64>,
    baseline: &Baseline,
    policy: &LevelPolicy,
) -> Result<TenantObservation, ObserveError> {
    let at_ms = as_of_ms(usage)?;
    let month = period_figures(usage, CalendarPeriod::Month)?;
    let basis = rate_basis(usage, budgets, plan);
    let (cost_rate, rate, multiplier) = spend_rate(usage, basis, plan)?;
    let expected =
        expected_override.unwrap_or_else(|| plan_expected_rate(plan, &month, basis, multiplier));
    let estimate = baseline.estimate(at_ms, expected, &policy.baseline);
    let baseline_cost_rate = match basis {
        CostBasis::ProviderCost => estimate.mean_nanos_per_hour,
        CostBasis::TenantCharge => multiplier.invert(estimate.mean_nanos_per_hour),
    };
    let ctx = Context {
        at_ms,
        cost_rate,
        baseline_cost_rate,
        multiplier,
        plan,
        policy,
    };

    let mut figures = Vec::new();
    let mut from_plan = Vec::new();
    let mut has_month = false;
    for budget in tenant_budgets(usage, budgets) {
        has_month |= budget.period == CalendarPeriod::Month;
        figures.push(budget_figures(
            usage,
            &ctx,
            budget.period,
            budget.basis,
            budget.amount_nanos_usd,
        )?);
        from_plan.push(false);
    }
    if !has_month && let Some(amount) = plan_period_budget(plan) {
        figures.push(budget_figures(
            usage,
            &ctx,
            CalendarPeriod::Month,
            CostBasis::TenantCharge,
            amount,
        )?);
        from_plan.push(true);
    }

    let margin_nanos = match month.tenant_charge_nanos {
        Some(charge) => Some(charge.saturating_sub(month.provider_cost_nanos)),
        None => plan
            .and_then(|plan| forecast_charge_nanos(plan, month.provider_cost_nanos))
            .map(|charge| charge.saturating_sub(month.provider_cost_nanos)),
    };

    Ok(TenantObservation {
        observation: Observation {
            at_ms,
            budgets: figures,
            rate: Some(RateFigures {
                rate_nanos_per_hour: rate,
                baseline: estimate,
            }),
            margin_nanos,
        },
        from_plan,
        rate_basis: basis,
    })
}
