//! The fleet's level: its own budgets, forecast and spend rate (as for a tenant)
//! plus **co-movement**, the share of active tenants above their own baselines
//! at the same time, all through the same state machine.
//!
//! With at least `fleet.min_active_tenants` active tenants, a share of at least
//! `fleet.orange_share_pct` (30%) calls for orange and `fleet.red_share_pct`
//! (50%) for red once it has lasted `fleet.sustain` (5 min); shorter, it calls
//! for yellow. Holding uses thresholds `hysteresis_points` lower. So the fleet
//! turns orange or red when many tenants rise a little together, even though
//! each of them, judged alone, is green or yellow.

use super::engine::{Evaluation, LevelState, Observation, evaluate_with};
use super::policy::{LevelPolicy, duration_ms};
use super::{Level, Reason, ReasonCode, format_bps};

/// How many active tenants are above their own baselines.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct CoMovement {
    /// Tenants with usage in the rolling 24 hours or the current month.
    pub active_tenants: u64,
    /// Of them, those whose evaluation has `above_baseline`.
    pub tenants_above_baseline: u64,
}

impl CoMovement {
    /// Counts the tenants' evaluations of one pass.
    pub fn from_evaluations<'a>(evaluations: impl IntoIterator<Item = &'a Evaluation>) -> Self {
        evaluations
            .into_iter()
            .fold(Self::default(), |mut counts, evaluation| {
                counts.active_tenants = counts.active_tenants.saturating_add(1);
                if evaluation.above_baseline {
                    counts.tenants_above_baseline = counts.tenants_above_baseline.saturating_add(1);
                }
                counts
            })
    }

    /// tenants_above_baseline / active_tenants in basis points (0 with no tenant).
    pub fn share_bps(&self) -> i64 {
        if self.active_tenants == 0 {
            return 0;
        }
        let bps = u128::from(self.tenants_above_baseline.min(self.active_tenants)) * 10_000
            / u128::from(self.active_tenants);
        i64::try_from(bps).unwrap_or(10_000)
    }
}

fn co_movement_reason(
    state: &LevelState,
    now: i64,
    counts: CoMovement,
    policy: &LevelPolicy,
    offset_points: u32,
) -> Option<Reason> {
    let fleet = &policy.fleet;
    if counts.active_tenants < fleet.min_active_tenants {
        return None;
    }
    let share = counts.share_bps();
    let at = |pct: u32| share >= i64::from(pct.saturating_sub(offset_points)) * 100;
    let full = if at(fleet.red_share_pct) {
        Level::Red
    } else if at(fleet.orange_share_pct) {
        Level::Orange
    } else {
        return None;
    };
    let since = state
        .condition_since(ReasonCode::CoMovement.as_str())
        .unwrap_or(now);
    let sustained = now.saturating_sub(since) >= duration_ms(fleet.sustain);
    let level = if sustained { full } else { Level::Yellow };
    Some(Reason {
        code: ReasonCode::CoMovement,
        level,
        message: format!(
            "{} of {} active tenants ({}) are above their own baselines{}",
            counts.tenants_above_baseline,
            counts.active_tenants,
            format_bps(share),
            if sustained {
                ""
            } else {
                " (not yet sustained)"
            }
        ),
        period: None,
        since_ms: since,
    })
}

/// Evaluates the fleet: its budgets, rate and margin in `input` (as for a
/// tenant) plus the co-movement of its tenants.
pub fn fleet_level(
    state: &LevelState,
    input: &Observation,
    counts: CoMovement,
    policy: &LevelPolicy,
) -> (LevelState, Evaluation) {
    let now = input.at_ms;
    let raise = co_movement_reason(state, now, counts, policy, 0);
    let hold = co_movement_reason(state, now, counts, policy, policy.hysteresis_points);
    evaluate_with(
        state,
        input,
        policy,
        raise.into_iter().collect(),
        hold.into_iter().collect(),
    )
}
