//! One subject's evaluation, pure: from the meter's figures, the stored
//! record and the pass's inputs to the new record, status, policy and alert.
//! The pass ([`crate::engine`]) does the I/O around it.

use std::collections::HashMap;
use std::sync::Arc;

use tenantmeter_domain::ids::TenantId;
use tenantmeter_domain::levels::{
    Baseline, CoMovement, CostBasis, Evaluation, Level, LevelPolicy, evaluate, fleet_level,
};
use tenantmeter_domain::pricebook::PriceBook;
use tenantmeter_domain::ratecard::Plan;
use tenantmeter_domain::window::CalendarPeriod;
use tenantmeter_proto::v1 as pb;

use crate::budgets::{Budget, Enforcement, Subject, ms_to_timestamp, timestamp_to_ms};
use crate::observe::{
    ObserveError, RATE_WINDOW_MS, baseline_sample, observe_fleet, observe_tenant,
};
use crate::state::{FleetRecord, ShardSummary, TenantRecord};
use crate::status::{budget_use, level_to_proto, month_spend, reasons_to_proto, spend_rate};
use crate::throttle::{self, Contribution, HardCap, ThrottleConfig, ThrottleInput, needs_sending};

/// What every subject of a pass shares.
#[derive(Debug, Clone, Default)]
pub struct PassInputs {
    /// Every budget set.
    pub budgets: Vec<Budget>,
    /// Unexpired silences: subject -> until, Unix ms.
    pub silences: HashMap<Subject, i64>,
    /// Shadow mode.
    pub shadow: pb::ShadowModeConfig,
    /// The price book (plans and assignments); `None` before pricing answers.
    pub book: Option<Arc<PriceBook>>,
    /// Fleet-red caps on top contributors, nano-USD per hour.
    pub fleet_caps: HashMap<String, i64>,
}

impl PassInputs {
    /// Whether `tenant` is in shadow mode.
    #[must_use]
    pub fn shadow_for(&self, tenant: &str) -> bool {
        self.shadow
            .overrides
            .iter()
            .find(|o| o.tenant_id == tenant)
            .map_or(self.shadow.global_shadow, |o| o.shadow)
    }

    /// The plan of `tenant` (its assignment, else the default plan).
    #[must_use]
    pub fn plan_of(&self, tenant: &TenantId) -> Option<&Plan> {
        let book = self.book.as_deref()?;
        let plan_id = book.assignments.get(tenant).unwrap_or(&book.default_plan);
        book.plans.get(plan_id)
    }

    fn budgets_of<'a>(&'a self, subject: &'a Subject) -> impl Iterator<Item = &'a Budget> + 'a {
        self.budgets.iter().filter(move |b| &b.subject == subject)
    }
}

/// One tenant's outcome.
#[derive(Debug, Clone)]
pub struct TenantStep {
    /// The record to keep.
    pub record: TenantRecord,
    /// The baseline, when it learned a sample.
    pub baseline: Option<Baseline>,
    /// The engine's evaluation.
    pub evaluation: Evaluation,
    /// The status.
    pub status: pb::TenantStatus,
    /// A policy to apply now (changed, or due for renewal).
    pub policy: Option<pb::TenantPolicy>,
    /// The alert of a transition (id set, no deliveries).
    pub alert: Option<pb::Alert>,
    /// The tenant's spend rate (provider cost), for the fleet.
    pub contribution: Contribution,
    /// 5-minute window figures (provider cost, tokens) and month (cost,
    /// charge) and day cost, for the fleet's sums.
    pub figures: [i64; 5],
}

fn window_figures(usage: &pb::TenantUsage, window: pb::UsageWindow) -> (i64, i64) {
    usage
        .windows
        .iter()
        .find(|w| w.window == window as i32)
        .and_then(|w| w.figures.as_ref())
        .map_or((0, 0), |f| (f.provider_cost_nanos_usd, tokens_of(f)))
}

fn tokens_of(figures: &pb::UsageFigures) -> i64 {
    figures.tokens.as_ref().map_or(0, |t| {
        t.input_tokens
            .saturating_add(t.output_tokens)
            .saturating_add(t.cache_read_input_tokens)
            .saturating_add(t.cache_write_input_tokens)
    })
}

fn period_of(usage: &pb::TenantUsage, period: pb::CalendarPeriod) -> Option<&pb::PeriodUsage> {
    usage.periods.iter().find(|p| p.period == period as i32)
}

/// Tokens per nano-USD of `basis` from the tenant's recent usage (the
/// 5-minute window, else the month), as `(tokens, nanos)`.
fn tokens_per_basis_nano(usage: &pb::TenantUsage, basis: CostBasis) -> (i64, i64) {
    let month = period_of(usage, pb::CalendarPeriod::Month);
    let (month_cost, month_tokens, month_charge) = month
        .and_then(|m| m.figures.as_ref().map(|f| (f, m.tenant_charge_nanos_usd)))
        .map_or((0, 0, None), |(f, charge)| {
            (f.provider_cost_nanos_usd, tokens_of(f), charge)
        });
    let (cost, tokens) = match window_figures(usage, pb::UsageWindow::FiveMinutes) {
        (cost, tokens) if cost > 0 && tokens > 0 => (cost, tokens),
        _ => (month_cost, month_tokens),
    };
    match (basis, month_charge) {
        (CostBasis::TenantCharge, Some(charge)) if month_cost > 0 => {
            let charged = i128::from(cost) * i128::from(charge.max(0)) / i128::from(month_cost);
            (tokens, i64::try_from(charged).unwrap_or(i64::MAX))
        }
        (CostBasis::TenantCharge | CostBasis::ProviderCost, _) => (tokens, cost),
    }
}

/// Evaluates one tenant.
///
/// # Errors
/// A figure the observation needs is missing from the meter's answer.
#[allow(clippy::too_many_arguments)]
pub fn step_tenant(
    usage: &pb::TenantUsage,
    tenant: &TenantId,
    previous: &TenantRecord,
    baseline: &Baseline,
    sent_policy: Option<&pb::TenantPolicy>,
    inputs: &PassInputs,
    levels: &LevelPolicy,
    throttle_config: &ThrottleConfig,
) -> Result<TenantStep, ObserveError> {
    let subject = Subject::Tenant(tenant.clone());
    let budgets: Vec<Budget> = inputs.budgets_of(&subject).cloned().collect();
    let plan = inputs.plan_of(tenant);
    let observed = observe_tenant(usage, &budgets, plan, baseline, levels)?;
    let at_ms = observed.observation.at_ms;
    let (next_level, evaluation) = evaluate(&previous.level, &observed.observation, levels);

    // One baseline sample per 5-minute slot, learned after judging the rate
    // against what was known before it.
    let slot = at_ms.div_euclid(RATE_WINDOW_MS);
    let learned = if previous.sample_slot == Some(slot) {
        None
    } else {
        let (sample_at, rate) = baseline_sample(usage, &budgets, plan)?;
        let mut next = baseline.clone();
        next.observe(sample_at, rate, &levels.baseline);
        Some(next)
    };

    let shadow = inputs.shadow_for(tenant.as_str());
    let hard_caps: Vec<HardCap> = budgets
        .iter()
        .filter(|b| b.enforcement == Enforcement::Hard)
        .map(|b| HardCap {
            period: crate::budgets::period_to_proto(b.period),
            basis: crate::budgets::basis_to_proto(b.basis),
            amount_nanos: b.amount_nanos_usd,
        })
        .collect();
    let (rate, mean, p95) = evaluation.rate.as_ref().map_or((0, 0, 0), |r| {
        (
            r.rate_nanos_per_hour,
            r.baseline.mean_nanos_per_hour,
            r.baseline.p95_nanos_per_hour,
        )
    });
    let decision = throttle::decide(
        &ThrottleInput {
            tenant_id: tenant.as_str(),
            level: evaluation.level,
            reasons: &evaluation.reasons,
            rate_nanos_per_hour: rate,
            baseline_nanos_per_hour: mean,
            baseline_p95_nanos_per_hour: p95,
            tokens_per_cost: tokens_per_basis_nano(usage, observed.rate_basis),
            hard_caps: &hard_caps,
            fleet_cap_nanos_per_hour: inputs.fleet_caps.get(tenant.as_str()).copied(),
            shadow,
            now_ms: at_ms,
        },
        &previous.throttle,
        throttle_config,
    );
    let policy = match (&decision.policy, sent_policy) {
        (Some(next), sent) if needs_sending(sent, next, at_ms) => Some(next.clone()),
        (Some(_), _) => None,
        // A stored policy with limits is lifted explicitly, not left to expire.
        (None, Some(sent)) if has_limits(sent) => Some(throttle::lifting_policy(
            tenant.as_str(),
            evaluation.level,
            shadow,
            at_ms,
        )),
        (None, _) => None,
    };

    let month = period_of(usage, pb::CalendarPeriod::Month);
    let month_figures = month.and_then(|m| m.figures.as_ref());
    let month_cost = month_figures.map_or(0, |f| f.provider_cost_nanos_usd);
    let month_charge = month.and_then(|m| m.tenant_charge_nanos_usd).unwrap_or(0);
    let day_cost = period_of(usage, pb::CalendarPeriod::Day)
        .and_then(|d| d.figures.as_ref())
        .map_or(0, |f| f.provider_cost_nanos_usd);
    let silenced_until = inputs.silences.get(&subject).copied();
    let status = pb::TenantStatus {
        tenant_id: tenant.as_str().to_owned(),
        level: level_to_proto(evaluation.level).into(),
        previous_level: level_to_proto(evaluation.previous_level).into(),
        level_since: Some(ms_to_timestamp(evaluation.level_since_ms)),
        evaluated_at: Some(ms_to_timestamp(at_ms)),
        reasons: reasons_to_proto(&evaluation.reasons),
        budgets: observed
            .observation
            .budgets
            .iter()
            .zip(&observed.from_plan)
            .map(|(figures, &from_plan)| {
                let enforcement = budgets
                    .iter()
                    .find(|b| b.period == figures.period)
                    .map_or(Enforcement::Soft, |b| b.enforcement);
                let end = period_end(usage, figures.period);
                budget_use(figures, from_plan, enforcement, end)
            })
            .collect(),
        rate: spend_rate(&evaluation, observed.rate_basis),
        month_spend: Some(month_spend(
            month
                .and_then(|m| m.period_start.as_ref())
                .map(timestamp_to_ms),
            month_charge,
            month_cost,
        )),
        above_baseline: evaluation.above_baseline,
        cooldown_until: evaluation.cooldown_until_ms.map(ms_to_timestamp),
        shadow,
        silenced_until: silenced_until.map(ms_to_timestamp),
        policy: policy.clone().or_else(|| sent_policy.cloned()),
        plan_id: plan.map(|p| p.id.as_str().to_owned()).unwrap_or_default(),
    };
    let alert = evaluation.transition.then(|| {
        transition_alert(
            &subject,
            &evaluation,
            shadow,
            silenced_until,
            pb::alert::Snapshot::TenantStatus(status.clone()),
        )
    });
    let (cost_5m, tokens_5m) = window_figures(usage, pb::UsageWindow::FiveMinutes);
    let cost_rate = i64::try_from(
        i128::from(cost_5m) * i128::from(tenantmeter_domain::window::HOUR_MS)
            / i128::from(RATE_WINDOW_MS),
    )
    .unwrap_or(i64::MAX);
    Ok(TenantStep {
        record: TenantRecord {
            level: next_level,
            throttle: decision.state,
            sample_slot: Some(slot),
        },
        baseline: learned,
        evaluation,
        status,
        policy,
        alert,
        contribution: Contribution {
            tenant_id: tenant.as_str().to_owned(),
            rate_nanos_per_hour: cost_rate,
        },
        figures: [cost_5m, tokens_5m, month_cost, month_charge, day_cost],
    })
}

fn period_end(usage: &pb::TenantUsage, period: CalendarPeriod) -> Option<i64> {
    let period = crate::budgets::period_to_proto(period);
    period_of(usage, period)
        .and_then(|p| p.period_end.as_ref())
        .map(timestamp_to_ms)
}

fn has_limits(policy: &pb::TenantPolicy) -> bool {
    policy.tokens_per_minute > 0
        || policy.requests_per_minute > 0
        || !policy.budget_caps.is_empty()
        || !policy.denied_model_ids.is_empty()
        || !policy.model_downgrades.is_empty()
}

/// The alert of a transition.
#[must_use]
pub fn transition_alert(
    subject: &Subject,
    evaluation: &Evaluation,
    shadow: bool,
    silenced_until: Option<i64>,
    snapshot: pb::alert::Snapshot,
) -> pb::Alert {
    pb::Alert {
        alert_id: crate::alerts::alert_id(evaluation.at_ms, subject),
        subject: Some(subject.to_proto()),
        from_level: level_to_proto(evaluation.previous_level).into(),
        to_level: level_to_proto(evaluation.level).into(),
        reasons: reasons_to_proto(&evaluation.reasons),
        raised_at: Some(ms_to_timestamp(evaluation.at_ms)),
        shadow,
        silenced_until: silenced_until.map(ms_to_timestamp),
        snapshot: Some(snapshot),
        ..pb::Alert::default()
    }
}

/// Sums shard summaries into the fleet's.
#[must_use]
pub fn sum_summaries<'a>(summaries: impl IntoIterator<Item = &'a ShardSummary>) -> ShardSummary {
    let mut total = ShardSummary::default();
    for s in summaries {
        total.as_of_ms = total.as_of_ms.max(s.as_of_ms);
        total.active += s.active;
        total.above_baseline += s.above_baseline;
        for (sum, n) in total.by_level.iter_mut().zip(s.by_level) {
            *sum += n;
        }
        total.top.extend(s.top.iter().cloned());
        total.cost_5m_nanos = total.cost_5m_nanos.saturating_add(s.cost_5m_nanos);
        total.tokens_5m = total.tokens_5m.saturating_add(s.tokens_5m);
        total.month_cost_nanos = total.month_cost_nanos.saturating_add(s.month_cost_nanos);
        total.month_charge_nanos = total
            .month_charge_nanos
            .saturating_add(s.month_charge_nanos);
        total.day_cost_nanos = total.day_cost_nanos.saturating_add(s.day_cost_nanos);
        total.baseline_sum_nanos_per_hour = total
            .baseline_sum_nanos_per_hour
            .saturating_add(s.baseline_sum_nanos_per_hour);
    }
    sort_top(&mut total.top);
    total
}

/// Orders contributors largest first (then by id, so ties are stable) and
/// keeps the 20 largest.
pub fn sort_top(top: &mut Vec<crate::state::ContributorSummary>) {
    top.sort_by(|a, b| {
        b.contribution
            .rate_nanos_per_hour
            .cmp(&a.contribution.rate_nanos_per_hour)
            .then_with(|| a.contribution.tenant_id.cmp(&b.contribution.tenant_id))
    });
    top.truncate(20);
}

/// The id the fleet's figures are observed under. Only the fleet's own
/// budgets are passed with it, so it cannot mix with a tenant named so.
const FLEET_OBSERVATION_ID: &str = "fleet";

/// The fleet's figures in the meter's shape, so the tenant observation
/// (budgets, forecasts, rate) applies unchanged.
fn fleet_usage(total: &ShardSummary, at_ms: i64) -> pb::TenantUsage {
    let figures = |cost: i64, tokens: i64| pb::UsageFigures {
        requests: 0,
        tokens: Some(pb::TokenUsage {
            input_tokens: tokens,
            ..pb::TokenUsage::default()
        }),
        provider_cost_nanos_usd: cost,
    };
    let period = |period: CalendarPeriod, cost: i64, charge: Option<i64>| {
        let (start, end) = period.bounds(at_ms);
        pb::PeriodUsage {
            period: crate::budgets::period_to_proto(period).into(),
            period_start: Some(ms_to_timestamp(start)),
            period_end: Some(ms_to_timestamp(end)),
            figures: Some(figures(cost, 0)),
            tenant_charge_nanos_usd: charge,
        }
    };
    pb::TenantUsage {
        tenant_id: FLEET_OBSERVATION_ID.to_owned(),
        as_of: Some(ms_to_timestamp(at_ms)),
        windows: vec![pb::WindowUsage {
            window: pb::UsageWindow::FiveMinutes.into(),
            figures: Some(figures(total.cost_5m_nanos, total.tokens_5m)),
        }],
        periods: vec![
            period(CalendarPeriod::Day, total.day_cost_nanos, None),
            period(
                CalendarPeriod::Month,
                total.month_cost_nanos,
                Some(total.month_charge_nanos),
            ),
        ],
        ..pb::TenantUsage::default()
    }
}

/// The fleet's outcome.
#[derive(Debug, Clone)]
pub struct FleetStep {
    /// The record to keep.
    pub record: FleetRecord,
    /// The baseline, when it learned a sample.
    pub baseline: Option<Baseline>,
    /// The status.
    pub status: pb::FleetStatus,
    /// The alert of a transition.
    pub alert: Option<pb::Alert>,
}

/// Evaluates the fleet from its shards' summaries.
///
/// # Errors
/// Never in practice (the fleet's figures are built whole); kept for the
/// observation's contract.
pub fn step_fleet(
    total: &ShardSummary,
    at_ms: i64,
    previous: &FleetRecord,
    baseline: &Baseline,
    inputs: &PassInputs,
    levels: &LevelPolicy,
    throttle_config: &ThrottleConfig,
) -> Result<FleetStep, ObserveError> {
    let usage = fleet_usage(total, at_ms);
    let pseudo = Subject::Tenant(
        TenantId::parse(FLEET_OBSERVATION_ID)
            .map_err(|e| ObserveError::new("tenant_id", e.to_string()))?,
    );
    let budgets: Vec<Budget> = inputs
        .budgets_of(&Subject::Fleet)
        .map(|b| Budget {
            subject: pseudo.clone(),
            ..b.clone()
        })
        .collect();
    let observed = observe_fleet(
        &usage,
        &budgets,
        total.baseline_sum_nanos_per_hour,
        baseline,
        levels,
    )?;
    let counts = CoMovement {
        active_tenants: total.active,
        tenants_above_baseline: total.above_baseline,
    };
    let (next_level, evaluation) =
        fleet_level(&previous.level, &observed.observation, counts, levels);
    let slot = at_ms.div_euclid(RATE_WINDOW_MS);
    let learned = if previous.sample_slot == Some(slot) {
        None
    } else {
        let (sample_at, rate) = baseline_sample(&usage, &budgets, None)?;
        let mut next = baseline.clone();
        next.observe(sample_at, rate, &levels.baseline);
        Some(next)
    };
    let fleet_rate = i64::try_from(
        i128::from(total.cost_5m_nanos) * i128::from(tenantmeter_domain::window::HOUR_MS)
            / i128::from(RATE_WINDOW_MS),
    )
    .unwrap_or(i64::MAX);
    let contributions: Vec<Contribution> =
        total.top.iter().map(|c| c.contribution.clone()).collect();
    let caps = if evaluation.level == Level::Red {
        throttle::fleet_caps(&contributions, fleet_rate, throttle_config)
    } else {
        std::collections::BTreeMap::new()
    };
    let shadow = inputs.shadow.global_shadow;
    let silenced_until = inputs.silences.get(&Subject::Fleet).copied();
    let share = counts.share_bps();
    let status = pb::FleetStatus {
        level: level_to_proto(evaluation.level).into(),
        previous_level: level_to_proto(evaluation.previous_level).into(),
        level_since: Some(ms_to_timestamp(evaluation.level_since_ms)),
        evaluated_at: Some(ms_to_timestamp(at_ms)),
        reasons: reasons_to_proto(&evaluation.reasons),
        budgets: observed
            .observation
            .budgets
            .iter()
            .map(|figures| {
                budget_use(
                    figures,
                    false,
                    Enforcement::Soft,
                    period_end(&usage, figures.period),
                )
            })
            .collect(),
        rate: spend_rate(&evaluation, observed.rate_basis),
        month_spend: Some(month_spend(
            Some(CalendarPeriod::Month.bounds(at_ms).0),
            total.month_charge_nanos,
            total.month_cost_nanos,
        )),
        active_tenants: i64::try_from(total.active).unwrap_or(i64::MAX),
        tenants_above_baseline: i64::try_from(total.above_baseline).unwrap_or(i64::MAX),
        co_movement_share: share_fraction(share),
        tenants_by_level: Level::ALL
            .iter()
            .zip(total.by_level)
            .map(|(level, n)| pb::LevelCount {
                level: level_to_proto(*level).into(),
                tenants: i64::try_from(n).unwrap_or(i64::MAX),
            })
            .collect(),
        top_contributors: total
            .top
            .iter()
            .map(|c| pb::FleetContributor {
                tenant_id: c.contribution.tenant_id.clone(),
                rate_nanos_usd_per_hour: c.contribution.rate_nanos_per_hour,
                share_bps: if fleet_rate > 0 {
                    i64::try_from(
                        i128::from(c.contribution.rate_nanos_per_hour) * 10_000
                            / i128::from(fleet_rate),
                    )
                    .unwrap_or(10_000)
                } else {
                    0
                },
                level: c.level,
                capped: caps.contains_key(&c.contribution.tenant_id),
            })
            .collect(),
        cooldown_until: evaluation.cooldown_until_ms.map(ms_to_timestamp),
        shadow,
        silenced_until: silenced_until.map(ms_to_timestamp),
    };
    let alert = evaluation.transition.then(|| {
        transition_alert(
            &Subject::Fleet,
            &evaluation,
            shadow,
            silenced_until,
            pb::alert::Snapshot::FleetStatus(status.clone()),
        )
    });
    Ok(FleetStep {
        record: FleetRecord {
            level: next_level,
            sample_slot: Some(slot),
            caps: caps.into_iter().collect(),
            caps_decided_ms: at_ms,
        },
        baseline: learned,
        status,
        alert,
    })
}

/// Basis points as a 0..1 share, for the contract's `co_movement_share`.
#[allow(clippy::float_arithmetic, clippy::cast_precision_loss)]
fn share_fraction(bps: i64) -> f64 {
    bps as f64 / 10_000.0
}
