//! From a level to the policy the meter enforces (ARCHITECTURE.md, "Adaptive
//! throttling"). Pure: the evaluator calls [`decide`] once per tenant per pass
//! and keeps the returned [`ThrottleState`] with the tenant's state.
//!
//! - green, yellow: the plan's own limits (the policy carries only hard budget
//!   caps, which apply at every level so the meter denies the moment a hard
//!   budget is spent, whatever alerting last saw);
//! - orange: a token-rate cap near the tenant's normal peak
//!   (`orange_peak_pct` of the baseline's p95, 150% by default);
//! - red: a cap at `red_start_pct` of the baseline, halved (`red_tighten_pct`)
//!   at each evaluation while the spend rate keeps rising, and raised by
//!   `red_relax_step_pct` of the baseline at each evaluation while it falls
//!   (multiplicative decrease, additive increase), never above the orange cap
//!   nor below `min_tokens_per_minute`; plus the configured model downgrades
//!   and deny list;
//! - fleet red: the tenant's cap is also at most its fleet share cap (decided
//!   by the fleet pass, [`fleet_caps`]).
//!
//! Caps are decided in money (nano-USD per hour, the unit of baselines) and
//! converted to the meter's unit, tokens per minute, through the tenant's own
//! recent cost per token.

use std::collections::BTreeMap;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use tenantmeter_domain::levels::{Level, Reason};
use tenantmeter_domain::window::HOUR_MS;
use tenantmeter_proto::v1 as pb;

use crate::status::level_to_proto;

/// How levels become policies. The `[alerting.throttle]` config section.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ThrottleConfig {
    /// Orange caps tokens per minute at this percent of the baseline's p95 (150).
    pub orange_peak_pct: u32,
    /// Red starts with a cap at this percent of the baseline (50).
    pub red_start_pct: u32,
    /// While the spend rate keeps rising at red, the cap is multiplied by this
    /// percent at each evaluation (50).
    pub red_tighten_pct: u32,
    /// While it falls, the cap grows by this percent of the baseline at each
    /// evaluation (10).
    pub red_relax_step_pct: u32,
    /// No cap goes below this many tokens per minute, so a capped tenant can
    /// still make small calls (1000).
    pub min_tokens_per_minute: i64,
    /// At red, calls to these models are served by the model given instead.
    pub red_model_downgrades: BTreeMap<String, String>,
    /// At red, these models are denied.
    pub red_denied_model_ids: Vec<String>,
    /// Fleet red caps each top contributor at this percent of its current rate (50).
    pub fleet_red_scale_pct: u32,
    /// Fleet red caps the largest contributors that together make up this
    /// percent of the fleet's rate (80), at most 20 tenants.
    pub fleet_red_cover_pct: u32,
    /// A policy stops applying this long after it was decided unless renewed,
    /// so a silent alerting service cannot leave a tenant throttled (2m). It is
    /// renewed when half of it has run.
    #[serde(with = "humantime_serde")]
    pub policy_ttl: Duration,
}

impl Default for ThrottleConfig {
    fn default() -> Self {
        Self {
            orange_peak_pct: 150,
            red_start_pct: 50,
            red_tighten_pct: 50,
            red_relax_step_pct: 10,
            min_tokens_per_minute: 1_000,
            red_model_downgrades: BTreeMap::new(),
            red_denied_model_ids: Vec::new(),
            fleet_red_scale_pct: 50,
            fleet_red_cover_pct: 80,
            policy_ttl: Duration::from_secs(120),
        }
    }
}

/// What the throttle remembers between evaluations of one tenant.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct ThrottleState {
    /// The red cap, nano-USD per hour; `None` when not at red.
    pub red_cap_nanos_per_hour: Option<i64>,
    /// The spend rate at the previous evaluation, nano-USD per hour.
    pub last_rate_nanos_per_hour: Option<i64>,
}

/// A hard budget, as the policy's cap.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HardCap {
    /// Day or month.
    pub period: pb::CalendarPeriod,
    /// Tenant charge or provider cost.
    pub basis: pb::CostBasis,
    /// The cap, nano-USD.
    pub amount_nanos: i64,
}

/// What [`decide`] needs to know about a tenant.
#[derive(Debug, Clone)]
pub struct ThrottleInput<'a> {
    /// Tenant id.
    pub tenant_id: &'a str,
    /// Its level after this evaluation.
    pub level: Level,
    /// The reasons for it (the first names the policy's reason).
    pub reasons: &'a [Reason],
    /// Current spend rate, nano-USD per hour (the basis of the baseline).
    pub rate_nanos_per_hour: i64,
    /// Baseline mean, nano-USD per hour.
    pub baseline_nanos_per_hour: i64,
    /// Baseline p95 (normal peak), nano-USD per hour.
    pub baseline_p95_nanos_per_hour: i64,
    /// Tokens per nano-USD of the tenant's recent usage, as `(tokens, nanos)`.
    pub tokens_per_cost: (i64, i64),
    /// Hard budgets.
    pub hard_caps: &'a [HardCap],
    /// The fleet's cap on the tenant, nano-USD per hour, when the fleet is red
    /// and the tenant is a top contributor.
    pub fleet_cap_nanos_per_hour: Option<i64>,
    /// Shadow mode: computed and reported, not enforced.
    pub shadow: bool,
    /// Instant of the evaluation, Unix ms.
    pub now_ms: i64,
}

/// The policy for one tenant, and the throttle state to keep.
#[derive(Debug, Clone, PartialEq)]
pub struct Decision {
    /// The policy; `None` when the tenant needs none (no cap, no hard budget).
    pub policy: Option<pb::TenantPolicy>,
    /// State for the next evaluation.
    pub state: ThrottleState,
}

fn pct(value: i64, percent: u32) -> i64 {
    saturate(i128::from(value) * i128::from(percent) / 100)
}

fn saturate(value: i128) -> i64 {
    i64::try_from(value).unwrap_or(if value < 0 { i64::MIN } else { i64::MAX })
}

/// nano-USD per hour to tokens per minute through `(tokens, nanos)`.
fn tokens_per_minute(rate_nanos_per_hour: i64, (tokens, nanos): (i64, i64), floor: i64) -> i64 {
    if tokens <= 0 || nanos <= 0 {
        return floor;
    }
    let minutes_per_hour = i128::from(HOUR_MS / 60_000);
    let per_minute = i128::from(rate_nanos_per_hour.max(0)) * i128::from(tokens)
        / (i128::from(nanos) * minutes_per_hour);
    saturate(per_minute).max(floor)
}

/// Decides the tenant's policy and the next throttle state.
pub fn decide(
    input: &ThrottleInput<'_>,
    previous: &ThrottleState,
    config: &ThrottleConfig,
) -> Decision {
    let orange_cap = pct(input.baseline_p95_nanos_per_hour, config.orange_peak_pct).max(1);
    let red_cap = match input.level {
        Level::Red => {
            let cap = match (
                previous.red_cap_nanos_per_hour,
                previous.last_rate_nanos_per_hour,
            ) {
                (None, _) => pct(input.baseline_nanos_per_hour, config.red_start_pct),
                (Some(cap), Some(last)) if input.rate_nanos_per_hour > last => {
                    pct(cap, config.red_tighten_pct)
                }
                (Some(cap), Some(last)) if input.rate_nanos_per_hour < last => cap.saturating_add(
                    pct(input.baseline_nanos_per_hour, config.red_relax_step_pct),
                ),
                (Some(cap), _) => cap,
            };
            Some(cap.clamp(1, orange_cap))
        }
        Level::Green | Level::Yellow | Level::Orange => None,
    };
    let money_cap = match input.level {
        Level::Red => red_cap,
        Level::Orange => Some(orange_cap),
        Level::Green | Level::Yellow => None,
    };
    let money_cap = match (money_cap, input.fleet_cap_nanos_per_hour) {
        (Some(own), Some(fleet)) => Some(own.min(fleet)),
        (own, fleet) => own.or(fleet),
    };
    let state = ThrottleState {
        red_cap_nanos_per_hour: red_cap,
        last_rate_nanos_per_hour: Some(input.rate_nanos_per_hour),
    };
    let tokens = money_cap.map_or(0, |cap| {
        tokens_per_minute(
            cap,
            input.tokens_per_cost,
            config.min_tokens_per_minute.max(1),
        )
    });
    let red = input.level == Level::Red;
    let (downgrades, denied) = if red {
        (
            config.red_model_downgrades.clone().into_iter().collect(),
            config.red_denied_model_ids.clone(),
        )
    } else {
        (std::collections::HashMap::new(), Vec::new())
    };
    if tokens == 0 && input.hard_caps.is_empty() && downgrades.is_empty() && denied.is_empty() {
        return Decision {
            policy: None,
            state,
        };
    }
    let reason = input.reasons.first().map_or_else(
        || format!("level {}", input.level.as_str().to_uppercase()),
        |reason| {
            format!(
                "level {}: {}",
                input.level.as_str().to_uppercase(),
                reason.message
            )
        },
    );
    let ttl_ms = i64::try_from(config.policy_ttl.as_millis()).unwrap_or(i64::MAX);
    let policy = pb::TenantPolicy {
        tenant_id: input.tenant_id.to_owned(),
        source_level: level_to_proto(input.level).into(),
        requests_per_minute: 0,
        tokens_per_minute: tokens,
        budget_caps: input
            .hard_caps
            .iter()
            .map(|cap| pb::BudgetCap {
                period: cap.period.into(),
                basis: cap.basis.into(),
                amount_nanos_usd: cap.amount_nanos,
            })
            .collect(),
        denied_model_ids: denied,
        model_downgrades: downgrades,
        shadow: input.shadow,
        decided_at: Some(crate::budgets::ms_to_timestamp(input.now_ms)),
        expires_at: Some(crate::budgets::ms_to_timestamp(
            input.now_ms.saturating_add(ttl_ms),
        )),
        reason,
    };
    Decision {
        policy: Some(policy),
        state,
    }
}

/// True when `next` must be sent although `sent` is stored: its limits
/// differ, or half of `sent`'s time to live has run.
pub fn needs_sending(
    sent: Option<&pb::TenantPolicy>,
    next: &pb::TenantPolicy,
    now_ms: i64,
) -> bool {
    let Some(sent) = sent else { return true };
    let same_limits = sent.source_level == next.source_level
        && sent.tokens_per_minute == next.tokens_per_minute
        && sent.requests_per_minute == next.requests_per_minute
        && sent.budget_caps == next.budget_caps
        && sent.denied_model_ids == next.denied_model_ids
        && sent.model_downgrades == next.model_downgrades
        && sent.shadow == next.shadow;
    let decided = sent
        .decided_at
        .as_ref()
        .map_or(i64::MIN, crate::budgets::timestamp_to_ms);
    let expires = sent
        .expires_at
        .as_ref()
        .map_or(i64::MIN, crate::budgets::timestamp_to_ms);
    let renew_at = decided.saturating_add(expires.saturating_sub(decided) / 2);
    !same_limits || now_ms >= renew_at
}

/// A policy that lifts a stored one: the plan's limits alone apply again.
pub fn lifting_policy(
    tenant_id: &str,
    level: Level,
    shadow: bool,
    now_ms: i64,
) -> pb::TenantPolicy {
    pb::TenantPolicy {
        tenant_id: tenant_id.to_owned(),
        source_level: level_to_proto(level).into(),
        shadow,
        decided_at: Some(crate::budgets::ms_to_timestamp(now_ms)),
        // Expiring at once: nothing to enforce, only the stored policy to replace.
        expires_at: Some(crate::budgets::ms_to_timestamp(now_ms.saturating_add(1))),
        reason: format!("level {}: plan limits", level.as_str().to_uppercase()),
        ..pb::TenantPolicy::default()
    }
}

/// One tenant's share of the fleet's spend rate.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Contribution {
    /// Tenant id.
    pub tenant_id: String,
    /// Its spend rate, nano-USD per hour.
    pub rate_nanos_per_hour: i64,
}

/// Fleet red: caps, nano-USD per hour, for the largest contributors that
/// together make up `fleet_red_cover_pct` of the fleet's rate (at most 20),
/// each at `fleet_red_scale_pct` of its own rate: proportional to what each
/// contributes. `contributors` must be sorted by rate, largest first.
pub fn fleet_caps(
    contributors: &[Contribution],
    fleet_rate_nanos_per_hour: i64,
    config: &ThrottleConfig,
) -> BTreeMap<String, i64> {
    let cover = pct(fleet_rate_nanos_per_hour, config.fleet_red_cover_pct);
    let mut covered = 0i64;
    let mut caps = BTreeMap::new();
    for contributor in contributors.iter().take(20) {
        if covered >= cover || contributor.rate_nanos_per_hour <= 0 {
            break;
        }
        covered = covered.saturating_add(contributor.rate_nanos_per_hour);
        caps.insert(
            contributor.tenant_id.clone(),
            pct(contributor.rate_nanos_per_hour, config.fleet_red_scale_pct).max(1),
        );
    }
    caps
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]

    use super::*;

    fn input(level: Level, rate: i64) -> ThrottleInput<'static> {
        ThrottleInput {
            tenant_id: "acme",
            level,
            reasons: &[],
            rate_nanos_per_hour: rate,
            baseline_nanos_per_hour: 1_000_000_000,
            baseline_p95_nanos_per_hour: 2_000_000_000,
            // 1 token per 1,000 nano-USD.
            tokens_per_cost: (1_000, 1_000_000),
            hard_caps: &[],
            fleet_cap_nanos_per_hour: None,
            shadow: false,
            now_ms: 1_000_000,
        }
    }

    #[test]
    fn green_without_hard_budget_needs_no_policy() {
        let decision = decide(
            &input(Level::Green, 5),
            &ThrottleState::default(),
            &ThrottleConfig::default(),
        );
        assert_eq!(decision.policy, None);
    }

    #[test]
    fn orange_caps_at_one_and_a_half_normal_peak() {
        let decision = decide(
            &input(Level::Orange, 9_000_000_000),
            &ThrottleState::default(),
            &ThrottleConfig::default(),
        );
        // $3/h at 1 token per 1,000 nano-USD = 3,000,000 tokens/h = 50,000/min.
        assert_eq!(decision.policy.unwrap().tokens_per_minute, 50_000);
    }

    #[test]
    fn red_tightens_while_rising_and_relaxes_while_falling() {
        let config = ThrottleConfig::default();
        let first = decide(
            &input(Level::Red, 20_000_000_000),
            &ThrottleState::default(),
            &config,
        );
        // 50% of a $1/h baseline: 500,000 tokens/h.
        assert_eq!(first.policy.unwrap().tokens_per_minute, 8_333);
        let rising = decide(&input(Level::Red, 30_000_000_000), &first.state, &config);
        assert_eq!(rising.state.red_cap_nanos_per_hour, Some(250_000_000));
        let falling = decide(&input(Level::Red, 1_000_000_000), &rising.state, &config);
        assert_eq!(falling.state.red_cap_nanos_per_hour, Some(350_000_000));
        let calm = decide(
            &input(Level::Orange, 1_000_000_000),
            &falling.state,
            &config,
        );
        assert_eq!(calm.state.red_cap_nanos_per_hour, None);
    }

    #[test]
    fn renewal_at_half_life_or_on_change() {
        let config = ThrottleConfig::default();
        let policy = decide(&input(Level::Orange, 1), &ThrottleState::default(), &config)
            .policy
            .unwrap();
        assert!(!needs_sending(Some(&policy), &policy, 1_000_000 + 59_000));
        assert!(needs_sending(Some(&policy), &policy, 1_000_000 + 60_000));
        let mut tighter = policy.clone();
        tighter.tokens_per_minute -= 1;
        assert!(needs_sending(Some(&policy), &tighter, 1_000_001));
    }

    #[test]
    fn fleet_caps_cover_the_top_contributors_proportionally() {
        let contributors =
            [("a", 60), ("b", 25), ("c", 10), ("d", 5)].map(|(id, rate)| Contribution {
                tenant_id: id.to_owned(),
                rate_nanos_per_hour: rate * 1_000,
            });
        let caps = fleet_caps(&contributors, 100_000, &ThrottleConfig::default());
        assert_eq!(caps.len(), 2);
        assert_eq!(caps["a"], 30_000);
        assert_eq!(caps["b"], 12_500);
    }
}
