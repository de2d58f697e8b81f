#![allow(clippy::unwrap_used, clippy::expect_used)]
//! Forming observations from hand-built meter figures, and grading them.

use std::collections::BTreeMap;

use tenantmeter_alerting::budgets::{Budget, Enforcement, Subject, ms_to_timestamp};
use tenantmeter_alerting::observe::{baseline_sample, observe_tenant, rate_basis};
use tenantmeter_domain::ids::{PlanId, TenantId};
use tenantmeter_domain::levels::{
    Baseline, BaselineSource, CostBasis, Level, LevelPolicy, LevelState, ReasonCode, evaluate,
};
use tenantmeter_domain::money::{ATTOS_PER_USD, AttoUsd};
use tenantmeter_domain::ratecard::{Plan, PlanLimits, Tier, TierMode, TierRate};
use tenantmeter_domain::window::{CalendarPeriod, DAY_MS, days_from_civil};
use tenantmeter_proto::v1 as pb;

const USD: i64 = 1_000_000_000;
/// Steady spend: $1.20 an hour, $0.10 per 5 minutes.
const RATE: i64 = 1_200_000_000;
const FIVE_MIN_COST: i64 = 100_000_000;
/// 15 days (360 h) at the steady rate.
const MONTH_COST: i64 = RATE * 360;

fn as_of_ms() -> i64 {
    days_from_civil(2026, 1, 16) * DAY_MS
}

fn figures(cost: i64) -> pb::UsageFigures {
    pb::UsageFigures {
        provider_cost_nanos_usd: cost,
        ..Default::default()
    }
}

fn period(
    period: pb::CalendarPeriod,
    start_ms: i64,
    end_ms: i64,
    cost: i64,
    charge: Option<i64>,
) -> pb::PeriodUsage {
    pb::PeriodUsage {
        period: period as i32,
        period_start: Some(ms_to_timestamp(start_ms)),
        period_end: Some(ms_to_timestamp(end_ms)),
        figures: Some(figures(cost)),
        tenant_charge_nanos_usd: charge,
    }
}

/// Mid-January 2026 (15 of 31 days elapsed), the day just begun.
fn usage(month_cost: i64, month_charge: Option<i64>) -> pb::TenantUsage {
    let now = as_of_ms();
    pb::TenantUsage {
        tenant_id: "acme".into(),
        as_of: Some(ms_to_timestamp(now)),
        windows: vec![
            pb::WindowUsage {
                window: pb::UsageWindow::OneMinute as i32,
                figures: Some(figures(FIVE_MIN_COST / 5)),
            },
            pb::WindowUsage {
                window: pb::UsageWindow::FiveMinutes as i32,
                figures: Some(figures(FIVE_MIN_COST)),
            },
        ],
        periods: vec![
            period(pb::CalendarPeriod::Day, now, now + DAY_MS, 0, Some(0)),
            period(
                pb::CalendarPeriod::Month,
                days_from_civil(2026, 1, 1) * DAY_MS,
                days_from_civil(2026, 2, 1) * DAY_MS,
                month_cost,
                month_charge,
            ),
        ],
        ..Default::default()
    }
}

fn budget(period: CalendarPeriod, basis: CostBasis, amount: i64) -> Budget {
    Budget {
        subject: Subject::Tenant(TenantId::parse("acme").unwrap()),
        period,
        basis,
        amount_nanos_usd: amount,
        enforcement: Enforcement::Soft,
        updated_at_ms: 0,
    }
}

fn usd(n: i128) -> AttoUsd {
    AttoUsd(n * ATTOS_PER_USD)
}

/// Charge = rated value (x1.0), expecting the steady rate.
fn flat_plan() -> Plan {
    Plan {
        id: PlanId::parse("flat").unwrap(),
        display_name: String::new(),
        mode: TierMode::Graduated,
        tiers: vec![Tier {
            up_to: None,
            rate: TierRate::Multiplier(1_000_000),
        }],
        adjustment_bps: 0,
        overrides: BTreeMap::new(),
        limits: PlanLimits::default(),
        expected_charge_nanos_per_hour: RATE,
    }
}

/// x1.0 up to $500 of rated value, x0.5 above.
fn tiered_plan() -> Plan {
    Plan {
        id: PlanId::parse("tiered").unwrap(),
        tiers: vec![
            Tier {
                up_to: Some(usd(500)),
                rate: TierRate::Multiplier(1_000_000),
            },
            Tier {
                up_to: None,
                rate: TierRate::Multiplier(500_000),
            },
        ],
        ..flat_plan()
    }
}

/// The documented forecast for the steady tenant: 360 h elapsed, 384 h left
/// (1 h near at the recent rate, 383 h at the run rate, which equals it).
const STEADY_FORECAST: i64 = MONTH_COST + RATE + RATE * 383;

#[test]
fn half_of_a_monthly_charge_budget_with_a_steady_rate() {
    let policy = LevelPolicy::default();
    let budgets = [budget(
        CalendarPeriod::Month,
        CostBasis::TenantCharge,
        2 * MONTH_COST,
    )];
    let plan = flat_plan();
    let usage = usage(MONTH_COST, Some(MONTH_COST));
    let observed =
        observe_tenant(&usage, &budgets, Some(&plan), &Baseline::new(), &policy).unwrap();
    let obs = &observed.observation;
    assert_eq!(obs.at_ms, as_of_ms());
    assert_eq!(observed.rate_basis, CostBasis::TenantCharge);
    assert_eq!(observed.from_plan, vec![false]);
    assert_eq!(obs.budgets.len(), 1);
    let month = obs.budgets[0];
    assert_eq!(month.actual_nanos, MONTH_COST);
    assert_eq!(month.actual_bps(), 5_000);
    assert_eq!(STEADY_FORECAST, 892_800_000_000);
    assert_eq!(month.forecast_nanos, 892_800_000_000);
    assert_eq!(month.forecast_bps(), 10_333);
    let rate = obs.rate.unwrap();
    assert_eq!(rate.rate_nanos_per_hour, RATE);
    assert_eq!(rate.baseline.source, BaselineSource::Plan);
    assert_eq!(rate.baseline.mean_nanos_per_hour, RATE);
    assert_eq!(obs.margin_nanos, Some(0));
    assert_eq!(
        baseline_sample(&usage, &budgets, Some(&plan)).unwrap(),
        (as_of_ms(), RATE)
    );
}

#[test]
fn tenant_charge_rate_uses_the_months_average_multiplier() {
    // Charged twice the provider cost this month: the charge rate is $2.40/h.
    let budgets = [budget(
        CalendarPeriod::Month,
        CostBasis::TenantCharge,
        1_000 * USD,
    )];
    let usage = usage(MONTH_COST, Some(2 * MONTH_COST));
    let observed = observe_tenant(
        &usage,
        &budgets,
        None,
        &Baseline::new(),
        &LevelPolicy::default(),
    )
    .unwrap();
    assert_eq!(
        observed.observation.rate.unwrap().rate_nanos_per_hour,
        2 * RATE
    );
    // Without a plan the forecast's remainder is priced at the same multiplier.
    let month = observed.observation.budgets[0];
    assert_eq!(month.actual_nanos, 2 * MONTH_COST);
    assert_eq!(month.forecast_nanos, 2 * STEADY_FORECAST);
    assert_eq!(
        baseline_sample(&usage, &budgets, None).unwrap(),
        (as_of_ms(), 2 * RATE)
    );
}

#[test]
fn provider_cost_basis_uses_provider_cost() {
    let budgets = [budget(
        CalendarPeriod::Month,
        CostBasis::ProviderCost,
        1_000 * USD,
    )];
    let usage = usage(MONTH_COST, Some(3 * MONTH_COST));
    let plan = flat_plan();
    assert_eq!(
        rate_basis(&usage, &budgets, Some(&plan)),
        CostBasis::ProviderCost
    );
    let observed = observe_tenant(
        &usage,
        &budgets,
        Some(&plan),
        &Baseline::new(),
        &LevelPolicy::default(),
    )
    .unwrap();
    let month = observed.observation.budgets[0];
    assert_eq!(month.basis, CostBasis::ProviderCost);
    assert_eq!(month.actual_nanos, MONTH_COST);
    assert_eq!(month.forecast_nanos, STEADY_FORECAST);
    let rate = observed.observation.rate.unwrap();
    assert_eq!(rate.rate_nanos_per_hour, RATE);
    // The plan's expected charge rate, brought back to provider cost (/3).
    assert_eq!(rate.baseline.mean_nanos_per_hour, RATE / 3);
}

#[test]
fn no_budget_falls_back_to_the_plans_period_budget() {
    let mut plan = flat_plan();
    plan.limits.period_budget_nanos = 2 * MONTH_COST;
    // Budgets of other subjects do not count.
    let mut other = budget(CalendarPeriod::Month, CostBasis::ProviderCost, USD);
    other.subject = Subject::Tenant(TenantId::parse("globex").unwrap());
    let observed = observe_tenant(
        &usage(MONTH_COST, Some(MONTH_COST)),
        &[other],
        Some(&plan),
        &Baseline::new(),
        &LevelPolicy::default(),
    )
    .unwrap();
    assert_eq!(observed.from_plan, vec![true]);
    assert_eq!(observed.rate_basis, CostBasis::TenantCharge);
    let month = observed.observation.budgets[0];
    assert_eq!(month.period, CalendarPeriod::Month);
    assert_eq!(month.basis, CostBasis::TenantCharge);
    assert_eq!(month.budget_nanos, 2 * MONTH_COST);
    assert_eq!(month.actual_bps(), 5_000);
    assert_eq!(month.forecast_nanos, STEADY_FORECAST);

    // A day budget alone keeps the plan's monthly budget beside it.
    let day = budget(CalendarPeriod::Day, CostBasis::TenantCharge, 100 * USD);
    let observed = observe_tenant(
        &usage(MONTH_COST, Some(MONTH_COST)),
        &[day],
        Some(&plan),
        &Baseline::new(),
        &LevelPolicy::default(),
    )
    .unwrap();
    assert_eq!(observed.from_plan, vec![false, true]);

    // No budget and no plan budget: nothing to grade against.
    let observed = observe_tenant(
        &usage(MONTH_COST, Some(MONTH_COST)),
        &[],
        Some(&flat_plan()),
        &Baseline::new(),
        &LevelPolicy::default(),
    )
    .unwrap();
    assert!(observed.observation.budgets.is_empty());
}

#[test]
fn a_cheaper_tier_lowers_the_tenant_charge_forecast() {
    let budgets = [budget(
        CalendarPeriod::Month,
        CostBasis::TenantCharge,
        2 * MONTH_COST,
    )];
    let usage = usage(MONTH_COST, Some(MONTH_COST));
    let policy = LevelPolicy::default();
    let flat = observe_tenant(
        &usage,
        &budgets,
        Some(&flat_plan()),
        &Baseline::new(),
        &policy,
    )
    .unwrap()
    .observation
    .budgets[0];
    let tiered = observe_tenant(
        &usage,
        &budgets,
        Some(&tiered_plan()),
        &Baseline::new(),
        &policy,
    )
    .unwrap()
    .observation
    .budgets[0];
    assert_eq!(flat.forecast_nanos, STEADY_FORECAST);
    // actual + G(forecast rated) - G(actual rated) = 432 + (500 + 0.5 * 392.8) - 432.
    assert_eq!(tiered.forecast_nanos, 696_400_000_000);
    assert!(tiered.forecast_nanos < flat.forecast_nanos);
    assert_eq!(tiered.actual_nanos, flat.actual_nanos);
}

#[test]
fn negative_margin() {
    let charge = 300 * USD;
    let budgets = [budget(
        CalendarPeriod::Month,
        CostBasis::TenantCharge,
        10_000 * USD,
    )];
    let observed = observe_tenant(
        &usage(MONTH_COST, Some(charge)),
        &budgets,
        Some(&flat_plan()),
        &Baseline::new(),
        &LevelPolicy::default(),
    )
    .unwrap();
    assert_eq!(observed.observation.margin_nanos, Some(charge - MONTH_COST));
    assert_eq!(observed.observation.margin_nanos, Some(-132 * USD));
    let (_, eval) = evaluate(
        &LevelState::default(),
        &observed.observation,
        &LevelPolicy::default(),
    );
    assert!(
        eval.reasons
            .iter()
            .any(|reason| reason.code == ReasonCode::NegativeMargin)
    );
}

#[test]
fn missing_fields_are_errors_naming_them() {
    let budgets = [budget(CalendarPeriod::Month, CostBasis::TenantCharge, USD)];
    let policy = LevelPolicy::default();
    let observe = |usage: &pb::TenantUsage| {
        observe_tenant(usage, &budgets, None, &Baseline::new(), &policy).unwrap_err()
    };

    let mut no_window = usage(MONTH_COST, Some(MONTH_COST));
    no_window
        .windows
        .retain(|w| w.window != pb::UsageWindow::FiveMinutes as i32);
    let err = observe(&no_window);
    assert_eq!(err.field, "windows[USAGE_WINDOW_FIVE_MINUTES]");
    assert!(
        err.to_string().contains("USAGE_WINDOW_FIVE_MINUTES"),
        "{err}"
    );
    assert_eq!(
        baseline_sample(&no_window, &budgets, None)
            .unwrap_err()
            .field,
        "windows[USAGE_WINDOW_FIVE_MINUTES]"
    );

    let mut no_as_of = usage(MONTH_COST, Some(MONTH_COST));
    no_as_of.as_of = None;
    assert_eq!(observe(&no_as_of).field, "as_of");

    let mut no_periods = usage(MONTH_COST, Some(MONTH_COST));
    no_periods.periods.clear();
    assert_eq!(observe(&no_periods).field, "periods[CALENDAR_PERIOD_MONTH]");

    let mut bad_end = usage(MONTH_COST, Some(MONTH_COST));
    bad_end.periods[1].period_end = bad_end.periods[1].period_start;
    assert_eq!(
        observe(&bad_end).field,
        "periods[CALENDAR_PERIOD_MONTH].period_end"
    );

    // A day budget needs the day period.
    let day = [budget(CalendarPeriod::Day, CostBasis::ProviderCost, USD)];
    let mut no_day = usage(MONTH_COST, Some(MONTH_COST));
    no_day.periods.remove(0);
    let err = observe_tenant(&no_day, &day, None, &Baseline::new(), &policy).unwrap_err();
    assert_eq!(err.field, "periods[CALENDAR_PERIOD_DAY]");

    // A charge budget without the charge and without a plan to price it.
    let err = observe(&usage(MONTH_COST, None));
    assert_eq!(
        err.field,
        "periods[CALENDAR_PERIOD_MONTH].tenant_charge_nanos_usd"
    );
}

#[test]
fn over_budget_is_red_and_a_normal_tenant_green() {
    let policy = LevelPolicy::default();
    let plan = flat_plan();

    // Spent 104% of the monthly charge budget: red.
    let over = [budget(
        CalendarPeriod::Month,
        CostBasis::TenantCharge,
        415 * USD,
    )];
    let observed = observe_tenant(
        &usage(MONTH_COST, Some(MONTH_COST)),
        &over,
        Some(&plan),
        &Baseline::new(),
        &policy,
    )
    .unwrap();
    assert_eq!(observed.observation.budgets[0].actual_bps(), 10_409);
    let (_, eval) = evaluate(&LevelState::default(), &observed.observation, &policy);
    assert_eq!(eval.level, Level::Red);
    assert!(
        eval.reasons
            .iter()
            .any(|reason| reason.code == ReasonCode::ActualOverBudget && reason.level == Level::Red)
    );

    // 21.6% spent, forecast 44.64%, at the plan's expected rate: green.
    let roomy = [budget(
        CalendarPeriod::Month,
        CostBasis::TenantCharge,
        2_000 * USD,
    )];
    let observed = observe_tenant(
        &usage(MONTH_COST, Some(MONTH_COST)),
        &roomy,
        Some(&plan),
        &Baseline::new(),
        &policy,
    )
    .unwrap();
    assert_eq!(observed.observation.budgets[0].forecast_bps(), 4_464);
    let (_, eval) = evaluate(&LevelState::default(), &observed.observation, &policy);
    assert_eq!(eval.level, Level::Green, "{:?}", eval.reasons);
    assert!(eval.reasons.is_empty());
    let rate = eval.rate.unwrap();
    assert!(rate.z_score.abs() < 1e-9);

    // The same tenant learning its own baseline: one sample per rate window
    // (12 windows of the same hour of week).
    let mut baseline = Baseline::new();
    let usage = usage(MONTH_COST, Some(MONTH_COST));
    let (at, sample) = baseline_sample(&usage, &roomy, Some(&plan)).unwrap();
    for step in 0..12 {
        baseline.observe(at + step * 300_000, sample, &policy.baseline);
    }
    let observed = observe_tenant(&usage, &roomy, Some(&plan), &baseline, &policy).unwrap();
    let estimate = observed.observation.rate.unwrap().baseline;
    assert_ne!(estimate.source, BaselineSource::Plan);
    assert_eq!(estimate.mean_nanos_per_hour, RATE);
}
