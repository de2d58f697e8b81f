//! `tenantmeter status`: the fleet's status and a table of every tenant's
//! (`GetFleetStatus`, then `ListStatuses` page by page), or one tenant's
//! status in full (`GetStatus`).

use std::collections::BTreeMap;
use std::fmt::Write as _;

use serde::Serialize;
use tenantmeter_proto::v1 as pb;

use super::render::{self, Table};
use super::{Context, OpsError, call_failed};
use crate::cli::{LevelArg, StatusArgs};

/// Most statuses asked for per `ListStatuses` page.
const PAGE_SIZE: i32 = 1_000;

/// Width of the labels of the one-tenant view.
const LABEL: usize = 10;

/// Runs `status`.
pub(super) async fn run(context: &Context<'_>, args: &StatusArgs) -> Result<(), OpsError> {
    let mut client = context.alerting().await?;
    if let Some(tenant_id) = &args.tenant {
        let status = client
            .get_status(pb::GetStatusRequest {
                tenant_id: tenant_id.clone(),
            })
            .await
            .map_err(|status| call_failed("GetStatus", &status))?
            .into_inner()
            .status
            .unwrap_or_else(|| pb::TenantStatus {
                tenant_id: tenant_id.clone(),
                ..pb::TenantStatus::default()
            });
        return context.print(&tenant_text(&status), &TenantView::from(&status));
    }

    let fleet = client
        .get_fleet_status(pb::GetFleetStatusRequest {})
        .await
        .map_err(|status| call_failed("GetFleetStatus", &status))?
        .into_inner()
        .status
        .unwrap_or_default();
    let min_level = match args.min_level {
        None => pb::Level::Unspecified,
        Some(LevelArg::Yellow) => pb::Level::Yellow,
        Some(LevelArg::Orange) => pb::Level::Orange,
        Some(LevelArg::Red) => pb::Level::Red,
    };
    let mut statuses = Vec::new();
    let mut page_token = String::new();
    loop {
        let page = client
            .list_statuses(pb::ListStatusesRequest {
                min_level: min_level.into(),
                page_size: PAGE_SIZE,
                page_token: page_token.clone(),
            })
            .await
            .map_err(|status| call_failed("ListStatuses", &status))?
            .into_inner();
        statuses.extend(page.statuses);
        if page.next_page_token.is_empty() || page.next_page_token == page_token {
            break;
        }
        page_token = page.next_page_token;
    }

    let mut text = fleet_text(&fleet);
    text.push('\n');
    if statuses.is_empty() {
        match args.min_level {
            None => text.push_str("no tenant evaluated yet\n"),
            Some(_) => {
                let level = render::level(min_level.into());
                let _ = writeln!(text, "no tenant at {level} or above");
            }
        }
    } else {
        text.push_str(&tenant_table(&statuses));
    }
    let view = FleetAndTenants {
        fleet: FleetView::from(&fleet),
        tenants: statuses.iter().map(TenantView::from).collect(),
    };
    context.print(&text, &view)
}

/// The fleet's status line, then its reasons, one per line.
fn fleet_text(fleet: &pb::FleetStatus) -> String {
    if fleet.level == i32::from(pb::Level::Unspecified) {
        return "fleet: not evaluated yet\n".to_owned();
    }
    let mut line = format!(
        "fleet: {}",
        level_since(
            fleet.level,
            fleet.level_since.as_ref(),
            fleet.previous_level
        )
    );
    let _ = write!(
        line,
        "; {} active tenants, {} above baseline",
        fleet.active_tenants, fleet.tenants_above_baseline
    );
    if let Some(rate) = &fleet.rate {
        let _ = write!(line, "; rate {}", rate_text(rate));
    }
    if let Some(spend) = &fleet.month_spend {
        let _ = write!(
            line,
            "; month charge {}, cost {}",
            render::usd(spend.tenant_charge_nanos_usd),
            render::usd(spend.provider_cost_nanos_usd)
        );
    }
    if fleet.shadow {
        line.push_str(" (shadow mode)");
    }
    line.push('\n');
    for reason in &fleet.reasons {
        let _ = writeln!(
            line,
            "  {:<7} {}",
            render::level(reason.level),
            reason.message
        );
    }
    for budget in &fleet.budgets {
        let _ = writeln!(line, "  budget  {}", budget_text(budget));
    }
    line
}

/// `red since T (was orange)`; the previous level only when it differs (a
/// first evaluation reports green as its own previous level).
fn level_since(level: i32, since: Option<&prost_types::Timestamp>, previous: i32) -> String {
    let mut text = render::level(level).to_owned();
    if let Some(since) = render::time(since) {
        let _ = write!(text, " since {since}");
    }
    if previous != i32::from(pb::Level::Unspecified) && previous != level {
        let _ = write!(text, " (was {})", render::level(previous));
    }
    text
}

/// `$0.54/h vs baseline $0.25/h (216.0%)`.
fn rate_text(rate: &pb::SpendRate) -> String {
    format!(
        "{}{}",
        rate_vs_baseline(rate),
        rate_share(rate).map_or_else(String::new, |share| format!(" ({share})"))
    )
}

/// `$0.54/h vs baseline $0.25/h`.
fn rate_vs_baseline(rate: &pb::SpendRate) -> String {
    format!(
        "{}/h vs baseline {}/h",
        render::usd(rate.rate_nanos_usd_per_hour),
        render::usd(rate.baseline_nanos_usd_per_hour)
    )
}

/// The rate as a percentage of the baseline; `None` without a baseline.
fn rate_share(rate: &pb::SpendRate) -> Option<String> {
    render::ratio_percent(
        rate.rate_nanos_usd_per_hour,
        rate.baseline_nanos_usd_per_hour,
    )
}

/// `day charge hard: spent $0.0045 of $0.001 (450.0%), forecast ... , ends T`.
fn budget_text(budget: &pb::BudgetUse) -> String {
    let mut text = format!(
        "{} {} {}{}: spent {} of {} ({}), forecast {} ({})",
        render::period(budget.period),
        render::basis(budget.basis),
        render::enforcement(budget.enforcement),
        if budget.from_plan { " (plan)" } else { "" },
        render::usd(budget.actual_nanos_usd),
        render::usd(budget.budget_nanos_usd),
        render::percent_of_bps(budget.actual_bps),
        render::usd(budget.forecast_nanos_usd),
        render::percent_of_bps(budget.forecast_bps),
    );
    if let Some(end) = render::time(budget.period_end.as_ref()) {
        let _ = write!(text, ", period ends {end}");
    }
    text
}

/// The table of tenants, in the service's order (highest level first).
fn tenant_table(statuses: &[pb::TenantStatus]) -> String {
    let mut table = Table::new(&[
        "TENANT",
        "LEVEL",
        "SINCE",
        "BUDGET USED",
        "RATE/H",
        "BASELINE/H",
        "REASON",
    ])
    .right(&[3, 4, 5]);
    for status in statuses {
        // The most used budget, e.g. `day 104.5%`.
        let used = status
            .budgets
            .iter()
            .max_by_key(|budget| budget.actual_bps)
            .map_or_else(
                || "-".to_owned(),
                |budget| {
                    format!(
                        "{} {}",
                        render::period(budget.period),
                        render::percent_of_bps(budget.actual_bps)
                    )
                },
            );
        let (rate, baseline) = status.rate.as_ref().map_or_else(
            || ("-".to_owned(), "-".to_owned()),
            |rate| {
                (
                    render::usd(rate.rate_nanos_usd_per_hour),
                    render::usd(rate.baseline_nanos_usd_per_hour),
                )
            },
        );
        table.row(vec![
            status.tenant_id.clone(),
            render::level(status.level).to_owned(),
            render::time_or_dash(status.level_since.as_ref()),
            used,
            rate,
            baseline,
            status
                .reasons
                .first()
                .map_or_else(|| "-".to_owned(), |reason| reason.message.clone()),
        ]);
    }
    table.render()
}

/// One tenant's status, a labelled line per aspect.
fn tenant_text(status: &pb::TenantStatus) -> String {
    let mut text = String::new();
    let mut line = |label: &str, value: &str| {
        let _ = writeln!(text, "{label:<LABEL$}{value}");
    };
    let plan = if status.plan_id.is_empty() {
        String::new()
    } else {
        format!(" (plan {})", status.plan_id)
    };
    line("tenant", &format!("{}{plan}", status.tenant_id));
    if status.level == i32::from(pb::Level::Unspecified) {
        line("level", "not evaluated yet (no usage seen)");
        return text;
    }
    let mut level = level_since(
        status.level,
        status.level_since.as_ref(),
        status.previous_level,
    );
    if let Some(at) = render::time(status.evaluated_at.as_ref()) {
        let _ = write!(level, ", evaluated {at}");
    }
    line("level", &level);
    if let Some(until) = render::time(status.cooldown_until.as_ref()) {
        line("cooldown", &format!("may step down from {until}"));
    }
    if status.reasons.is_empty() {
        line("reasons", "-");
    }
    for (index, reason) in status.reasons.iter().enumerate() {
        let label = if index == 0 { "reasons" } else { "" };
        line(
            label,
            &format!("{:<7} {}", render::level(reason.level), reason.message),
        );
    }
    if status.budgets.is_empty() {
        line("budgets", "none (no budget set, none from the plan)");
    }
    for (index, budget) in status.budgets.iter().enumerate() {
        let label = if index == 0 { "budgets" } else { "" };
        line(label, &budget_text(budget));
    }
    if let Some(rate) = &status.rate {
        let source = match pb::BaselineSource::try_from(rate.baseline_source) {
            Ok(pb::BaselineSource::Plan) => "baseline from the plan",
            Ok(pb::BaselineSource::History) => "baseline from history",
            Ok(pb::BaselineSource::Unspecified) | Err(_) => "baseline source unknown",
        };
        let share = rate_share(rate).map_or_else(String::new, |share| format!("{share} of it; "));
        let basis = match render::basis(rate.basis) {
            "cost" => "provider cost",
            _ => "tenant charge",
        };
        line(
            "rate",
            &format!(
                "{} ({share}{basis}, p95 {}/h, z {:.1}, {source})",
                rate_vs_baseline(rate),
                render::usd(rate.baseline_p95_nanos_usd_per_hour),
                rate.z_score,
            ),
        );
        if let Some(since) = render::time(rate.anomaly_since.as_ref()) {
            line("", &format!("anomaly since {since}"));
        }
    }
    if let Some(spend) = &status.month_spend {
        line(
            "month",
            &format!(
                "charge {}, cost {}, margin {}",
                render::usd(spend.tenant_charge_nanos_usd),
                render::usd(spend.provider_cost_nanos_usd),
                render::usd(spend.margin_nanos_usd)
            ),
        );
    }
    match &status.policy {
        Some(policy) => {
            line("policy", &policy_text(policy));
            if !policy.reason.is_empty() {
                line("", &policy.reason);
            }
        }
        None => line("policy", "none sent"),
    }
    if status.shadow {
        line(
            "shadow",
            "yes: the policy is evaluated and reported, not enforced",
        );
    }
    if let Some(until) = render::time(status.silenced_until.as_ref()) {
        line("silenced", &format!("notifications silenced until {until}"));
    }
    text
}

/// `red: 1000 tokens/min, caps day $1.00 charge; expires T`.
fn policy_text(policy: &pb::TenantPolicy) -> String {
    let mut parts = Vec::new();
    if policy.requests_per_minute > 0 {
        parts.push(format!("{} requests/min", policy.requests_per_minute));
    }
    if policy.tokens_per_minute > 0 {
        parts.push(format!("{} tokens/min", policy.tokens_per_minute));
    }
    for cap in &policy.budget_caps {
        parts.push(format!(
            "hard cap {} {} {}",
            render::period(cap.period),
            render::usd(cap.amount_nanos_usd),
            render::basis(cap.basis)
        ));
    }
    if !policy.denied_model_ids.is_empty() {
        parts.push(format!("denies {}", policy.denied_model_ids.join(", ")));
    }
    let downgrades: BTreeMap<_, _> = policy.model_downgrades.iter().collect();
    for (from, to) in downgrades {
        parts.push(format!("{from} -> {to}"));
    }
    let limits = if parts.is_empty() {
        "no limits beyond the plan's".to_owned()
    } else {
        parts.join(", ")
    };
    let mut text = format!("{}: {limits}", render::level(policy.source_level));
    if let Some(expires) = render::time(policy.expires_at.as_ref()) {
        let _ = write!(text, "; expires {expires}");
    }
    if policy.shadow {
        text.push_str(" (shadow)");
    }
    text
}

/// One reason in JSON.
#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub(super) struct ReasonView {
    code: &'static str,
    level: &'static str,
    message: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    since: Option<String>,
}

impl From<&pb::LevelReason> for ReasonView {
    fn from(reason: &pb::LevelReason) -> Self {
        Self {
            code: render::reason_name(reason.code),
            level: render::level_name(reason.level),
            message: reason.message.clone(),
            since: render::time(reason.since.as_ref()),
        }
    }
}

/// One budget's use in JSON (64-bit integers as strings).
#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
struct BudgetUseView {
    period: &'static str,
    basis: &'static str,
    enforcement: &'static str,
    from_plan: bool,
    budget_nanos_usd: String,
    actual_nanos_usd: String,
    forecast_nanos_usd: String,
    actual_bps: String,
    forecast_bps: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    period_end: Option<String>,
}

impl From<&pb::BudgetUse> for BudgetUseView {
    fn from(budget: &pb::BudgetUse) -> Self {
        Self {
            period: render::period_name(budget.period),
            basis: render::basis_name(budget.basis),
            enforcement: render::enforcement_name(budget.enforcement),
            from_plan: budget.from_plan,
            budget_nanos_usd: budget.budget_nanos_usd.to_string(),
            actual_nanos_usd: budget.actual_nanos_usd.to_string(),
            forecast_nanos_usd: budget.forecast_nanos_usd.to_string(),
            actual_bps: budget.actual_bps.to_string(),
            forecast_bps: budget.forecast_bps.to_string(),
            period_end: render::time(budget.period_end.as_ref()),
        }
    }
}

/// A spend rate in JSON.
#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
struct RateView {
    basis: &'static str,
    rate_nanos_usd_per_hour: String,
    baseline_nanos_usd_per_hour: String,
    baseline_p95_nanos_usd_per_hour: String,
    z_score: f64,
    baseline_source: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    anomaly_since: Option<String>,
}

impl From<&pb::SpendRate> for RateView {
    fn from(rate: &pb::SpendRate) -> Self {
        Self {
            basis: render::basis_name(rate.basis),
            rate_nanos_usd_per_hour: rate.rate_nanos_usd_per_hour.to_string(),
            baseline_nanos_usd_per_hour: rate.baseline_nanos_usd_per_hour.to_string(),
            baseline_p95_nanos_usd_per_hour: rate.baseline_p95_nanos_usd_per_hour.to_string(),
            z_score: rate.z_score,
            baseline_source: pb::BaselineSource::try_from(rate.baseline_source)
                .map_or("BASELINE_SOURCE_UNSPECIFIED", |source| source.as_str_name()),
            anomaly_since: render::time(rate.anomaly_since.as_ref()),
        }
    }
}

/// A month's spend in JSON.
#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
struct SpendView {
    tenant_charge_nanos_usd: String,
    provider_cost_nanos_usd: String,
    margin_nanos_usd: String,
}

impl From<&pb::PeriodSpend> for SpendView {
    fn from(spend: &pb::PeriodSpend) -> Self {
        Self {
            tenant_charge_nanos_usd: spend.tenant_charge_nanos_usd.to_string(),
            provider_cost_nanos_usd: spend.provider_cost_nanos_usd.to_string(),
            margin_nanos_usd: spend.margin_nanos_usd.to_string(),
        }
    }
}

/// A policy in JSON.
#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
struct PolicyView {
    source_level: &'static str,
    requests_per_minute: String,
    tokens_per_minute: String,
    budget_caps: Vec<CapView>,
    denied_model_ids: Vec<String>,
    model_downgrades: BTreeMap<String, String>,
    shadow: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    expires_at: Option<String>,
    reason: String,
}

/// A hard cap of a policy in JSON.
#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
struct CapView {
    period: &'static str,
    basis: &'static str,
    amount_nanos_usd: String,
}

impl From<&pb::TenantPolicy> for PolicyView {
    fn from(policy: &pb::TenantPolicy) -> Self {
        Self {
            source_level: render::level_name(policy.source_level),
            requests_per_minute: policy.requests_per_minute.to_string(),
            tokens_per_minute: policy.tokens_per_minute.to_string(),
            budget_caps: policy
                .budget_caps
                .iter()
                .map(|cap| CapView {
                    period: render::period_name(cap.period),
                    basis: render::basis_name(cap.basis),
                    amount_nanos_usd: cap.amount_nanos_usd.to_string(),
                })
                .collect(),
            denied_model_ids: policy.denied_model_ids.clone(),
            model_downgrades: policy
                .model_downgrades
                .iter()
                .map(|(from, to)| (from.clone(), to.clone()))
                .collect(),
            shadow: policy.shadow,
            expires_at: render::time(policy.expires_at.as_ref()),
            reason: policy.reason.clone(),
        }
    }
}

/// A tenant's status in JSON.
#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
struct TenantView {
    tenant_id: String,
    plan_id: String,
    level: &'static str,
    previous_level: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    level_since: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    evaluated_at: Option<String>,
    reasons: Vec<ReasonView>,
    budgets: Vec<BudgetUseView>,
    #[serde(skip_serializing_if = "Option::is_none")]
    rate: Option<RateView>,
    #[serde(skip_serializing_if = "Option::is_none")]
    month_spend: Option<SpendView>,
    above_baseline: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    cooldown_until: Option<String>,
    shadow: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    silenced_until: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    policy: Option<PolicyView>,
}

impl From<&pb::TenantStatus> for TenantView {
    fn from(status: &pb::TenantStatus) -> Self {
        Self {
            tenant_id: status.tenant_id.clone(),
            plan_id: status.plan_id.clone(),
            level: render::level_name(status.level),
            previous_level: render::level_name(status.previous_level),
            level_since: render::time(status.level_since.as_ref()),
            evaluated_at: render::time(status.evaluated_at.as_ref()),
            reasons: status.reasons.iter().map(ReasonView::from).collect(),
            budgets: status.budgets.iter().map(BudgetUseView::from).collect(),
            rate: status.rate.as_ref().map(RateView::from),
            month_spend: status.month_spend.as_ref().map(SpendView::from),
            above_baseline: status.above_baseline,
            cooldown_until: render::time(status.cooldown_until.as_ref()),
            shadow: status.shadow,
            silenced_until: render::time(status.silenced_until.as_ref()),
            policy: status.policy.as_ref().map(PolicyView::from),
        }
    }
}

/// The fleet's status in JSON (without its per-level counts and top
/// contributors; grpcurl shows those).
#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
struct FleetView {
    level: &'static str,
    previous_level: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    level_since: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    evaluated_at: Option<String>,
    reasons: Vec<ReasonView>,
    budgets: Vec<BudgetUseView>,
    #[serde(skip_serializing_if = "Option::is_none")]
    rate: Option<RateView>,
    #[serde(skip_serializing_if = "Option::is_none")]
    month_spend: Option<SpendView>,
    active_tenants: String,
    tenants_above_baseline: String,
    shadow: bool,
}

impl From<&pb::FleetStatus> for FleetView {
    fn from(fleet: &pb::FleetStatus) -> Self {
        Self {
            level: render::level_name(fleet.level),
            previous_level: render::level_name(fleet.previous_level),
            level_since: render::time(fleet.level_since.as_ref()),
            evaluated_at: render::time(fleet.evaluated_at.as_ref()),
            reasons: fleet.reasons.iter().map(ReasonView::from).collect(),
            budgets: fleet.budgets.iter().map(BudgetUseView::from).collect(),
            rate: fleet.rate.as_ref().map(RateView::from),
            month_spend: fleet.month_spend.as_ref().map(SpendView::from),
            active_tenants: fleet.active_tenants.to_string(),
            tenants_above_baseline: fleet.tenants_above_baseline.to_string(),
            shadow: fleet.shadow,
        }
    }
}

/// `status` without `--tenant` in JSON.
#[derive(Debug, Serialize)]
struct FleetAndTenants {
    fleet: FleetView,
    tenants: Vec<TenantView>,
}
