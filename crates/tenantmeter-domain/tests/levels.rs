#![allow(clippy::unwrap_used, clippy::expect_used)]
//! Scenario tests of the level engine on simulated time (no wall clock).

use std::collections::BTreeMap;

use proptest::prelude::*;
use tenantmeter_domain::ids::PlanId;
use tenantmeter_domain::levels::{
    Baseline, BaselineEstimate, BaselineSource, BudgetFigures, CoMovement, CostBasis, Evaluation,
    ForecastInput, Level, LevelPolicy, LevelState, Observation, RateFigures, ReasonCode, evaluate,
    fleet_level, forecast_charge_nanos, forecast_to_period_end,
};
use tenantmeter_domain::money::{ATTOS_PER_USD, AttoUsd};
use tenantmeter_domain::ratecard::{Plan, PlanLimits, Tier, TierMode, TierRate};
use tenantmeter_domain::window::{CalendarPeriod, DAY_MS, HOUR_MS, days_from_civil};

const MIN_MS: i64 = 60_000;
const USD: i64 = 1_000_000_000; // nano-USD

/// 2024-06-01 00:00 UTC, the start of a 30-day month.
fn june() -> i64 {
    days_from_civil(2024, 6, 1) * DAY_MS
}

/// Deterministic noise in [-1, 1] from a time.
fn noise(t_ms: i64) -> i64 {
    let x = (t_ms / (5 * MIN_MS)).wrapping_mul(2_654_435_761) % 1001;
    (x.abs() - 500) / 5 // -100..=100 as percent-ish
}

/// A simulated tenant: baseline learning, month actual, level state.
struct Sim {
    policy: LevelPolicy,
    baseline: Baseline,
    state: LevelState,
    plan_expected: i64,
    budget: i64,
    actual: i64,
    month_start: i64,
}

impl Sim {
    fn new(budget: i64) -> Self {
        Self {
            policy: LevelPolicy::default(),
            baseline: Baseline::new(),
            state: LevelState::default(),
            plan_expected: USD,
            budget,
            actual: 0,
            month_start: june(),
        }
    }

    /// Runs from `from` to `to` in 1-minute steps with `rate(t)` in nano-USD/h;
    /// learns the baseline every 5 minutes; evaluates every `every` minutes from
    /// `eval_from`. Returns the evaluations with the actual at each.
    fn run(
        &mut self,
        from: i64,
        to: i64,
        eval_from: i64,
        every: i64,
        rate: impl Fn(i64) -> i64,
    ) -> Vec<(Evaluation, i64)> {
        let mut out = Vec::new();
        let mut t = from;
        while t < to {
            let r = rate(t);
            if t >= self.month_start {
                self.actual += r / 60;
            }
            if t % (5 * MIN_MS) == 0 {
                self.baseline.observe(t, r, &self.policy.baseline);
            }
            if t >= eval_from && (t - eval_from) % (every * MIN_MS) == 0 {
                let eval = self.evaluate(t, r);
                out.push((eval, self.actual));
            }
            t += MIN_MS;
        }
        out
    }

    fn evaluate(&mut self, t: i64, rate: i64) -> Evaluation {
        let baseline = self
            .baseline
            .estimate(t, self.plan_expected, &self.policy.baseline);
        let (start, end) = CalendarPeriod::Month.bounds(t);
        let forecast = forecast_to_period_end(
            &ForecastInput {
                now_ms: t,
                period_start_ms: start,
                period_end_ms: end,
                actual_nanos: self.actual,
                recent_rate_nanos_per_hour: rate,
                baseline_rate_nanos_per_hour: baseline.mean_nanos_per_hour,
            },
            &self.policy.forecast,
        );
        let obs = Observation {
            at_ms: t,
            budgets: vec![BudgetFigures {
                period: CalendarPeriod::Month,
                basis: CostBasis::ProviderCost,
                budget_nanos: self.budget,
                actual_nanos: self.actual,
                forecast_nanos: forecast,
            }],
            rate: Some(RateFigures {
                rate_nanos_per_hour: rate,
                baseline,
            }),
            margin_nanos: None,
        };
        let (next, eval) = evaluate(&self.state, &obs, &self.policy);
        self.state = next;
        eval
    }
}

fn max_level(evals: &[(Evaluation, i64)]) -> Level {
    evals.iter().map(|(e, _)| e.level).max().unwrap()
}

fn transitions(evals: &[(Evaluation, i64)]) -> usize {
    evals.iter().filter(|(e, _)| e.transition).count()
}

fn flat(t: i64) -> i64 {
    USD + USD * noise(t) * 3 / 10_000 // $1/h +-3%
}

#[test]
fn a_flat_tenant_stays_green() {
    let mut sim = Sim::new(1_000 * USD);
    let eval_from = june() + 2 * DAY_MS;
    let evals = sim.run(
        june() - 14 * DAY_MS,
        june() + 5 * DAY_MS,
        eval_from,
        5,
        flat,
    );
    assert!(evals.len() > 800);
    assert_eq!(max_level(&evals), Level::Green);
    let last = &evals.last().unwrap().0;
    let rate = last.rate.unwrap();
    assert_eq!(rate.baseline.source, BaselineSource::HourOfWeek);
    assert!((rate.baseline.mean_nanos_per_hour - USD).abs() < USD / 50);
}

#[test]
fn a_new_tenant_starts_from_its_plan_rate() {
    let policy = LevelPolicy::default();
    let baseline = Baseline::new();
    let estimate = baseline.estimate(june(), 2 * USD, &policy.baseline);
    assert_eq!(estimate.source, BaselineSource::Plan);
    assert_eq!(estimate.mean_nanos_per_hour, 2 * USD);
    // One day of history: the hour of day pool is used before the hour of week.
    let mut baseline = Baseline::new();
    let mut t = june();
    while t < june() + DAY_MS {
        baseline.observe(t, 3 * USD, &policy.baseline);
        t += 5 * MIN_MS;
    }
    let estimate = baseline.estimate(june() + 2 * DAY_MS, 2 * USD, &policy.baseline);
    assert_eq!(estimate.source, BaselineSource::HourOfDay);
    assert_eq!(estimate.mean_nanos_per_hour, 3 * USD);
}

fn daily_peak(t: i64) -> i64 {
    let hour = t.rem_euclid(DAY_MS) / HOUR_MS;
    let base = if (12..14).contains(&hour) {
        3 * USD
    } else {
        USD
    };
    base + base * noise(t) / 1_000 // +-10%
}

#[test]
fn a_daily_peak_inside_the_learned_envelope_stays_at_most_yellow() {
    let mut sim = Sim::new(2_000 * USD);
    let eval_from = june() + DAY_MS;
    let evals = sim.run(
        june() - 14 * DAY_MS,
        june() + 4 * DAY_MS,
        eval_from,
        1,
        daily_peak,
    );
    assert!(
        max_level(&evals) <= Level::Yellow,
        "{:?}",
        max_level(&evals)
    );
    // The peak hours themselves are not anomalies.
    let at_peak = evals
        .iter()
        .find(|(e, _)| (e.at_ms.rem_euclid(DAY_MS) / HOUR_MS) == 13)
        .unwrap();
    assert!(at_peak.0.rate.unwrap().z_score < 3.0);
}

fn burst(start: i64, minutes: i64, multiple: i64) -> impl Fn(i64) -> i64 {
    move |t| {
        if t >= start && t < start + minutes * MIN_MS {
            flat(t) * multiple
        } else {
            flat(t)
        }
    }
}

#[test]
fn a_short_burst_is_a_spike_yellow_not_orange() {
    let mut sim = Sim::new(1_000 * USD);
    let start = june() + 3 * DAY_MS + 10 * HOUR_MS;
    let evals = sim.run(
        june() - 14 * DAY_MS,
        start + 2 * HOUR_MS,
        start - 30 * MIN_MS,
        1,
        burst(start, 6, 5),
    );
    assert_eq!(max_level(&evals), Level::Yellow);
    let yellow = evals
        .iter()
        .find(|(e, _)| e.level == Level::Yellow)
        .unwrap();
    assert_eq!(yellow.0.reasons[0].code, ReasonCode::Spike);
    assert_eq!(yellow.0.reasons[0].level, Level::Yellow);
    // It calms down: back to green one cooldown after the burst.
    assert_eq!(evals.last().unwrap().0.level, Level::Green);
    assert_eq!(transitions(&evals), 2);
}

#[test]
fn a_sustained_deviation_goes_orange() {
    let mut sim = Sim::new(10_000 * USD);
    let start = june() + 3 * DAY_MS + 10 * HOUR_MS;
    let evals = sim.run(
        june() - 14 * DAY_MS,
        start + 40 * MIN_MS,
        start - 10 * MIN_MS,
        1,
        burst(start, 60, 3),
    );
    assert_eq!(max_level(&evals), Level::Orange);
    let first_orange = evals
        .iter()
        .find(|(e, _)| e.level == Level::Orange)
        .unwrap();
    assert_eq!(first_orange.0.at_ms - start, 10 * MIN_MS);
    assert_eq!(first_orange.0.reasons[0].code, ReasonCode::SustainedAnomaly);
    assert_eq!(first_orange.0.reasons[0].since_ms, start);
    assert!(
        first_orange.0.reasons[0].message.contains("3."),
        "{}",
        first_orange.0.reasons[0].message
    );
}

#[test]
fn a_runaway_goes_red_within_three_evaluations() {
    let mut sim = Sim::new(10_000 * USD);
    let start = june() + 3 * DAY_MS + 10 * HOUR_MS;
    let evals = sim.run(
        june() - 14 * DAY_MS,
        start + 10 * MIN_MS,
        start,
        1,
        burst(start, 60, 20),
    );
    let first_red = evals
        .iter()
        .position(|(e, _)| e.level == Level::Red)
        .unwrap();
    assert!(first_red <= 2, "red at evaluation {first_red}");
    assert_eq!(evals[0].0.level, Level::Yellow); // a spike until it lasts 2 min
    let red = &evals[first_red].0;
    assert_eq!(red.reasons[0].code, ReasonCode::Runaway);
    assert!(
        red.reasons[0].message.contains("20."),
        "{}",
        red.reasons[0].message
    );
    assert_eq!(red.cooldown_until_ms, Some(red.at_ms + 15 * MIN_MS));
}

#[test]
fn a_slow_leak_reaches_yellow_then_orange_before_the_budget_is_spent() {
    // +-40% noise: a 1.5x leak never looks like an anomaly on its own.
    let noisy = |t: i64| {
        let sign = if (t / (5 * MIN_MS)) % 2 == 0 { 1 } else { -1 };
        let leak = if t >= june() + DAY_MS { 3 } else { 2 };
        (USD + sign * USD * 4 / 10) * leak / 2
    };
    let budget = 1_000 * USD;
    let mut sim = Sim::new(budget);
    let evals = sim.run(
        june() - 14 * DAY_MS,
        june() + 30 * DAY_MS,
        june(),
        30,
        noisy,
    );
    let first = |level: Level| {
        evals
            .iter()
            .find(|(e, _)| e.level >= level)
            .map(|(e, actual)| (e.at_ms, *actual))
    };
    assert_eq!(evals[0].0.level, Level::Green);
    let (yellow_at, _) = first(Level::Yellow).unwrap();
    let (orange_at, orange_actual) = first(Level::Orange).unwrap();
    let spent_at = evals
        .iter()
        .find(|(_, a)| *a >= budget)
        .map(|(e, _)| e.at_ms)
        .unwrap();
    assert!(yellow_at < orange_at && orange_at < spent_at);
    assert!(orange_actual < budget / 2, "orange only at {orange_actual}");
    let orange = evals
        .iter()
        .find(|(e, _)| e.level == Level::Orange)
        .unwrap();
    assert_eq!(orange.0.reasons[0].code, ReasonCode::ForecastOverBudget);
    // Never red before actual reaches the budget; red once it does.
    assert!(
        evals
            .iter()
            .all(|(e, a)| e.level < Level::Red || *a >= budget)
    );
    assert_eq!(evals.last().unwrap().0.level, Level::Red);
}

fn tiered_plan() -> Plan {
    // Graduated: the first $1,000 of rated value at 1.0x, the rest at 0.5x.
    Plan {
        id: PlanId::parse("tiered").unwrap(),
        display_name: String::new(),
        mode: TierMode::Graduated,
        tiers: vec![
            Tier {
                up_to: Some(AttoUsd(1_000 * ATTOS_PER_USD)),
                rate: TierRate::Multiplier(1_000_000),
            },
            Tier {
                up_to: None,
                rate: TierRate::Multiplier(500_000),
            },
        ],
        adjustment_bps: 0,
        overrides: BTreeMap::new(),
        limits: PlanLimits::default(),
        expected_charge_nanos_per_hour: 0,
    }
}

#[test]
fn entering_a_cheaper_tier_is_not_an_overrun() {
    let policy = LevelPolicy::default();
    let plan = tiered_plan();
    let now = june() + 15 * DAY_MS;
    let (start, end) = CalendarPeriod::Month.bounds(now);
    // $600 rated in half a month, steady: $1,200 of rated value by the end.
    let rate = 600 * USD / (15 * 24);
    let input = ForecastInput {
        now_ms: now,
        period_start_ms: start,
        period_end_ms: end,
        actual_nanos: 600 * USD,
        recent_rate_nanos_per_hour: rate,
        baseline_rate_nanos_per_hour: rate,
    };
    let rated = forecast_to_period_end(&input, &policy.forecast);
    assert!((rated - 1_200 * USD).abs() < USD, "{rated}");
    let charge = forecast_charge_nanos(&plan, rated).unwrap();
    assert!((charge - 1_100 * USD).abs() < USD, "{charge}");
    // The naive forecast (charge so far grown linearly) would be $1,200 > $1,150.
    let budget = 1_150 * USD;
    let obs = Observation {
        at_ms: now,
        budgets: vec![BudgetFigures {
            period: CalendarPeriod::Month,
            basis: CostBasis::TenantCharge,
            budget_nanos: budget,
            actual_nanos: forecast_charge_nanos(&plan, 600 * USD).unwrap(),
            forecast_nanos: charge,
        }],
        rate: None,
        margin_nanos: None,
    };
    let (_, eval) = evaluate(&LevelState::default(), &obs, &policy);
    assert_eq!(eval.level, Level::Yellow);
    assert!(
        eval.reasons[0].message.contains("95.65%"),
        "{}",
        eval.reasons[0].message
    );
    assert!(
        rated > budget,
        "in rated value the forecast does exceed the budget"
    );
}

fn budget_obs(t: i64, actual_pct: i64, forecast_pct_tenths: i64) -> Observation {
    Observation {
        at_ms: t,
        budgets: vec![BudgetFigures {
            period: CalendarPeriod::Month,
            basis: CostBasis::TenantCharge,
            budget_nanos: 1_000 * USD,
            actual_nanos: 10 * USD * actual_pct,
            forecast_nanos: USD * forecast_pct_tenths,
        }],
        rate: None,
        margin_nanos: None,
    }
}

#[test]
fn a_forecast_oscillating_around_a_threshold_does_not_flap() {
    let policy = LevelPolicy::default();
    let mut state = LevelState::default();
    let mut count = 0;
    let mut levels = Vec::new();
    for i in 0..240 {
        // forecast 78% / 82% alternately (threshold 80%, hold 75%)
        let forecast = if i % 2 == 0 { 780 } else { 820 };
        let (next, eval) = evaluate(
            &state,
            &budget_obs(june() + i * MIN_MS, 10, forecast),
            &policy,
        );
        state = next;
        count += usize::from(eval.transition);
        levels.push(eval.level);
    }
    assert_eq!(count, 1);
    assert_eq!(levels[0], Level::Green);
    assert!(levels[1..].iter().all(|&level| level == Level::Yellow));
}

#[test]
fn a_rate_oscillating_around_the_anomaly_threshold_does_not_flap() {
    let policy = LevelPolicy::default();
    let baseline = BaselineEstimate::from_plan(USD, &policy.baseline); // sd = $0.50/h
    let mut state = LevelState::default();
    let mut count = 0;
    for i in 0..120 {
        // z = 2.8 / 3.2 alternately: the anomaly, once begun, lasts (z >= 2.5).
        let rate = if i % 2 == 0 {
            USD * 24 / 10
        } else {
            USD * 26 / 10
        };
        let obs = Observation {
            at_ms: june() + i * MIN_MS,
            budgets: Vec::new(),
            rate: Some(RateFigures {
                rate_nanos_per_hour: rate,
                baseline,
            }),
            margin_nanos: None,
        };
        let (next, eval) = evaluate(&state, &obs, &policy);
        state = next;
        count += usize::from(eval.transition);
    }
    // green -> yellow (spike) -> orange (sustained), nothing else.
    assert_eq!(count, 2);
    assert_eq!(state.level, Level::Orange);
}

#[test]
fn cooldown_steps_down_one_level_at_a_time() {
    let policy = LevelPolicy::default();
    let mut state = LevelState::default();
    let t0 = june() + 20 * DAY_MS;
    let (next, eval) = evaluate(&state, &budget_obs(t0, 100, 1_100), &policy);
    assert_eq!(eval.level, Level::Red);
    assert_eq!(eval.reasons[0].code, ReasonCode::ActualOverBudget);
    state = next;
    // A new period: all figures back to nothing.
    let mut changes = Vec::new();
    for minute in 1..=60 {
        let t = t0 + minute * MIN_MS;
        let (next, eval) = evaluate(&state, &budget_obs(t, 0, 0), &policy);
        state = next;
        if eval.transition {
            changes.push((minute, eval.previous_level, eval.level));
        } else if eval.level != Level::Green {
            assert_eq!(eval.reasons[0].code, ReasonCode::Cooldown);
        }
    }
    assert_eq!(
        changes,
        vec![
            (16, Level::Red, Level::Orange),
            (31, Level::Orange, Level::Yellow),
            (46, Level::Yellow, Level::Green)
        ]
    );
}

#[test]
fn a_raise_during_cooldown_is_immediate() {
    let policy = LevelPolicy::default();
    let t0 = june();
    let (state, _) = evaluate(&LevelState::default(), &budget_obs(t0, 0, 850), &policy);
    assert_eq!(state.level, Level::Yellow);
    let (state, _) = evaluate(&state, &budget_obs(t0 + MIN_MS, 0, 0), &policy);
    let (_, eval) = evaluate(&state, &budget_obs(t0 + 2 * MIN_MS, 95, 990), &policy);
    assert_eq!(eval.level, Level::Orange);
    assert!(eval.transition);
}

#[test]
fn negative_margin_is_a_reason_of_its_own() {
    let policy = LevelPolicy::default();
    let mut obs = budget_obs(june(), 10, 100);
    obs.margin_nanos = Some(-5 * USD);
    let (_, eval) = evaluate(&LevelState::default(), &obs, &policy);
    assert_eq!(eval.level, Level::Yellow);
    assert_eq!(eval.reasons[0].code, ReasonCode::NegativeMargin);
    assert!(eval.reasons[0].message.contains("$5.00"));
}

#[test]
fn many_tenants_a_little_above_baseline_turn_the_fleet_red() {
    let policy = LevelPolicy::default();
    let mut fleet_state = LevelState::default();
    let mut tenant_states = vec![LevelState::default(); 20];
    // A learned flat baseline: $1/h, sd floored at 10%.
    let mut baseline = Baseline::new();
    let mut t = june() - 14 * DAY_MS;
    while t < june() {
        baseline.observe(t, flat(t), &policy.baseline);
        t += 5 * MIN_MS;
    }
    let mut fleet_levels = Vec::new();
    for minute in 0..12 {
        let now = june() + minute * MIN_MS;
        let estimate = baseline.estimate(now, USD, &policy.baseline);
        let mut evals = Vec::new();
        for (index, state) in tenant_states.iter_mut().enumerate() {
            // 12 of 20 tenants run 25% above their baseline (z ~ 2.5): each alone is green.
            let rate = if index < 12 { USD * 125 / 100 } else { USD };
            let obs = Observation {
                at_ms: now,
                budgets: Vec::new(),
                rate: Some(RateFigures {
                    rate_nanos_per_hour: rate,
                    baseline: estimate,
                }),
                margin_nanos: None,
            };
            let (next, eval) = evaluate(state, &obs, &policy);
            *state = next;
            assert!(eval.level <= Level::Yellow);
            evals.push(eval);
        }
        let counts = CoMovement::from_evaluations(&evals);
        assert_eq!(counts.tenants_above_baseline, 12);
        let obs = Observation {
            at_ms: now,
            budgets: Vec::new(),
            rate: None,
            margin_nanos: None,
        };
        let (next, eval) = fleet_level(&fleet_state, &obs, counts, &policy);
        fleet_state = next;
        fleet_levels.push(eval.level);
        if eval.level == Level::Red {
            assert_eq!(eval.reasons[0].code, ReasonCode::CoMovement);
            assert!(eval.reasons[0].message.contains("12 of 20"));
        }
    }
    assert_eq!(fleet_levels[0], Level::Yellow); // not yet sustained
    assert_eq!(fleet_levels[5], Level::Red); // after 5 minutes
    assert!(tenant_states.iter().all(|s| s.level == Level::Green));
}

#[test]
fn a_third_of_the_fleet_above_baseline_is_orange_and_too_few_tenants_is_nothing() {
    let policy = LevelPolicy::default();
    let obs = |t| Observation {
        at_ms: t,
        budgets: Vec::new(),
        rate: None,
        margin_nanos: None,
    };
    let counts = CoMovement {
        active_tenants: 30,
        tenants_above_baseline: 11,
    };
    let (state, _) = fleet_level(&LevelState::default(), &obs(june()), counts, &policy);
    let (_, eval) = fleet_level(&state, &obs(june() + 5 * MIN_MS), counts, &policy);
    assert_eq!(eval.level, Level::Orange);
    let few = CoMovement {
        active_tenants: 5,
        tenants_above_baseline: 5,
    };
    let (_, eval) = fleet_level(&LevelState::default(), &obs(june()), few, &policy);
    assert_eq!(eval.level, Level::Green);
}

#[test]
fn the_default_policy_round_trips_through_toml_and_partial_files_fill_defaults() {
    let policy = LevelPolicy::default();
    policy.validate().unwrap();
    let text = toml::to_string(&policy).unwrap();
    assert!(text.contains("cooldown = \"15m\""), "{text}");
    let back: LevelPolicy = toml::from_str(&text).unwrap();
    assert_eq!(back, policy);
    let partial: LevelPolicy =
        toml::from_str("cooldown = \"30m\"\n[fleet]\nred_share_pct = 60\n").unwrap();
    assert_eq!(partial.cooldown.as_secs(), 1800);
    assert_eq!(partial.fleet.red_share_pct, 60);
    assert_eq!(partial.yellow_forecast_pct, 80);
    assert!(toml::from_str::<LevelPolicy>("colldown = \"1m\"").is_err());
}

#[test]
fn an_invalid_policy_names_its_key() {
    let bad: LevelPolicy = toml::from_str("orange_forecast_pct = 70").unwrap();
    assert_eq!(bad.validate().unwrap_err().key, "orange_forecast_pct");
    let bad: LevelPolicy = toml::from_str("sustain = \"0s\"").unwrap();
    assert_eq!(bad.validate().unwrap_err().key, "sustain");
    let bad: LevelPolicy = toml::from_str("[fleet]\nred_share_pct = 20").unwrap();
    assert_eq!(bad.validate().unwrap_err().key, "fleet.red_share_pct");
}

#[test]
fn baseline_and_state_serialize_and_baselines_merge() {
    let policy = LevelPolicy::default();
    let mut a = Baseline::new();
    let mut b = Baseline::new();
    let mut whole = Baseline::new();
    let mut t = june();
    let mut i = 0;
    while t < june() + 7 * DAY_MS {
        let rate = flat(t);
        whole.observe(t, rate, &policy.baseline);
        if i % 2 == 0 {
            a.observe(t, rate, &policy.baseline);
        } else {
            b.observe(t, rate, &policy.baseline);
        }
        t += 5 * MIN_MS;
        i += 1;
    }
    let merged = a.merge(&b);
    let at = june() + 7 * DAY_MS + 3 * HOUR_MS;
    let (m, w) = (
        merged.estimate(at, 0, &policy.baseline),
        whole.estimate(at, 0, &policy.baseline),
    );
    assert!((m.mean_nanos_per_hour - w.mean_nanos_per_hour).abs() < 1_000);
    assert!((m.stddev_nanos_per_hour - w.stddev_nanos_per_hour).abs() < 1_000_000);
    let json = serde_json::to_string(&whole).unwrap();
    let back: Baseline = serde_json::from_str(&json).unwrap();
    assert_eq!(back.estimate(at, 0, &policy.baseline), w);

    let mut sim = Sim::new(1_000 * USD);
    sim.run(
        june(),
        june() + HOUR_MS,
        june(),
        1,
        burst(june() + 10 * MIN_MS, 30, 3),
    );
    let json = serde_json::to_string(&sim.state).unwrap();
    let back: LevelState = serde_json::from_str(&json).unwrap();
    assert_eq!(back, sim.state);
}

fn arb_step() -> impl Strategy<Value = (i64, i64, i64, i64)> {
    // (minutes since the previous evaluation, actual %, forecast %, rate x 0.1)
    (1i64..20, 0i64..130, 0i64..200, 0i64..300)
}

fn obs_of(
    t: i64,
    actual: i64,
    forecast: i64,
    rate_tenths: i64,
    baseline: BaselineEstimate,
) -> Observation {
    let mut obs = budget_obs(t, actual, forecast * 10);
    obs.rate = Some(RateFigures {
        rate_nanos_per_hour: USD * rate_tenths / 10,
        baseline,
    });
    obs
}

proptest! {
    #[test]
    fn levels_never_drop_more_than_one_step_and_evaluate_is_deterministic(
        steps in proptest::collection::vec(arb_step(), 1..80)
    ) {
        let policy = LevelPolicy::default();
        let baseline = BaselineEstimate::from_plan(USD, &policy.baseline);
        let mut state = LevelState::default();
        let mut t = june();
        for (minutes, actual, forecast, rate) in steps {
            t += minutes * MIN_MS;
            let obs = obs_of(t, actual, forecast, rate, baseline);
            let (next, eval) = evaluate(&state, &obs, &policy);
            let (again, eval_again) = evaluate(&state, &obs, &policy);
            prop_assert_eq!(&next, &again);
            prop_assert_eq!(&eval, &eval_again);
            prop_assert!(eval.level >= state.level.step_down());
            prop_assert_eq!(eval.transition, eval.level != state.level);
            prop_assert!(eval.reasons.windows(2).all(|w| w[0].level >= w[1].level));
            prop_assert_eq!(eval.reasons.is_empty(), eval.level == Level::Green);
            if eval.level < state.level {
                // A step down only after a full cooldown of calm.
                prop_assert!(state.calm_since_ms.is_some());
            }
            state = next;
        }
    }
}
