//! The level policy: every threshold and duration of the level engine, loadable
//! from TOML (`humantime` durations such as `"15m"`), defaulting to the values of
//! ARCHITECTURE.md ("Levels"). See `docs/levels.md` for the file format.

use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::Level;

/// Why a policy was refused; `key` is the TOML path of the bad value.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{key}: {reason}")]
pub struct PolicyError {
    /// TOML path of the offending key, e.g. `fleet.red_share_pct`.
    pub key: String,
    /// What is wrong with it.
    pub reason: String,
}

impl PolicyError {
    fn new(key: &str, reason: impl Into<String>) -> Self {
        Self {
            key: key.to_owned(),
            reason: reason.into(),
        }
    }
}

/// All rules of the level engine. Percentages are whole percent of the budget.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct LevelPolicy {
    /// Yellow when the forecast reaches this share of a budget (80).
    pub yellow_forecast_pct: u32,
    /// Orange when the forecast reaches this share of a budget (100).
    pub orange_forecast_pct: u32,
    /// Orange when actual spend reaches this share of a budget (90).
    pub orange_actual_pct: u32,
    /// Red when actual spend reaches this share of a budget (100).
    pub red_actual_pct: u32,
    /// Red when the forecast reaches this share *and* an anomaly is sustained (150).
    pub red_forecast_pct: u32,
    /// A spend rate is an anomaly at this z-score against its baseline (3.0).
    pub anomaly_z: f64,
    /// An anomaly, once begun, lasts while z stays at or above
    /// `anomaly_z - anomaly_z_hysteresis` (0.5).
    pub anomaly_z_hysteresis: f64,
    /// An anomaly lasting this long is sustained (orange); shorter is a spike
    /// (yellow) (10 min).
    #[serde(with = "humantime_serde")]
    pub sustain: Duration,
    /// Runaway when the rate is at least this percent of the baseline (1000 = 10x).
    pub runaway_rate_pct: u32,
    /// ... for at least this long (2 min).
    #[serde(with = "humantime_serde")]
    pub runaway_for: Duration,
    /// A level steps down one step once the conditions have called for less
    /// for this long (15 min).
    #[serde(with = "humantime_serde")]
    pub cooldown: Duration,
    /// Percentage thresholds are this many points lower for holding a level
    /// than for reaching it (5).
    pub hysteresis_points: u32,
    /// Level a negative margin (tenant charge below provider cost) calls for (yellow).
    pub negative_margin_level: Level,
    /// The seasonal baseline.
    pub baseline: BaselinePolicy,
    /// The forecast to the period's end.
    pub forecast: ForecastPolicy,
    /// The fleet's co-movement.
    pub fleet: FleetPolicy,
}

/// How the seasonal baseline is learned and read.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct BaselinePolicy {
    /// A bucket (hour of week, or hour of day pooled over the week) is used once
    /// it holds this many samples; before that the plan's expected rate is (12:
    /// one hour of 5-minute samples).
    pub min_samples: u64,
    /// Older samples fade: a bucket's weight is capped at this many samples, so
    /// each new one weighs at least `1/max_weight` (48: four weeks of 5-minute
    /// samples of one hour of week).
    pub max_weight: u64,
    /// The standard deviation used for z-scores is at least this percent of the
    /// mean, so a very flat tenant's noise is not an anomaly (10).
    pub min_stddev_pct: u32,
    /// Standard deviation assumed for a plan baseline, percent of its mean (50).
    pub plan_stddev_pct: u32,
    /// Floor of the baseline mean, nano-USD per hour, so a tenant with a zero
    /// baseline is not a runaway at its first call (1_000_000 = $0.001/h).
    pub min_rate_nanos_per_hour: i64,
    /// Samples are clipped to `mean + clip_z * stddev` before learning, so an
    /// anomaly does not teach the baseline to expect itself (4.0).
    pub clip_z: f64,
}

/// How the forecast to the period's end weighs the recent rate, the period's
/// run rate and the baseline.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ForecastPolicy {
    /// The first part of the remaining period is forecast at the recent rate (1h).
    #[serde(with = "humantime_serde")]
    pub recent_horizon: Duration,
    /// The period's run rate is trusted fully once this much of the period has
    /// elapsed (capped at a quarter of the period); before, it is blended with the
    /// baseline (24h).
    #[serde(with = "humantime_serde")]
    pub run_rate_full_weight: Duration,
}

/// How the fleet's co-movement is graded.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct FleetPolicy {
    /// A tenant is above its baseline at this z-score (1.0).
    pub above_baseline_z: f64,
    /// Co-movement is graded only with at least this many active tenants (10).
    pub min_active_tenants: u64,
    /// Orange when at least this percent of active tenants are above their
    /// baselines (30).
    pub orange_share_pct: u32,
    /// Red at this percent (50).
    pub red_share_pct: u32,
    /// A share shorter than this calls only for yellow (5 min).
    #[serde(with = "humantime_serde")]
    pub sustain: Duration,
}

impl Default for LevelPolicy {
    fn default() -> Self {
        Self {
            yellow_forecast_pct: 80,
            orange_forecast_pct: 100,
            orange_actual_pct: 90,
            red_actual_pct: 100,
            red_forecast_pct: 150,
            anomaly_z: 3.0,
            anomaly_z_hysteresis: 0.5,
            sustain: Duration::from_secs(10 * 60),
            runaway_rate_pct: 1000,
            runaway_for: Duration::from_secs(2 * 60),
            cooldown: Duration::from_secs(15 * 60),
            hysteresis_points: 5,
            negative_margin_level: Level::Yellow,
            baseline: BaselinePolicy::default(),
            forecast: ForecastPolicy::default(),
            fleet: FleetPolicy::default(),
        }
    }
}

impl Default for BaselinePolicy {
    fn default() -> Self {
        Self {
            min_samples: 12,
            max_weight: 48,
            min_stddev_pct: 10,
            plan_stddev_pct: 50,
            min_rate_nanos_per_hour: 1_000_000,
            clip_z: 4.0,
        }
    }
}

impl Default for ForecastPolicy {
    fn default() -> Self {
        Self {
            recent_horizon: Duration::from_secs(3600),
            run_rate_full_weight: Duration::from_secs(24 * 3600),
        }
    }
}

impl Default for FleetPolicy {
    fn default() -> Self {
        Self {
            above_baseline_z: 1.0,
            min_active_tenants: 10,
            orange_share_pct: 30,
            red_share_pct: 50,
            sustain: Duration::from_secs(5 * 60),
        }
    }
}

/// A duration in whole milliseconds, saturating at `i64::MAX`.
pub(crate) fn duration_ms(duration: Duration) -> i64 {
    i64::try_from(duration.as_millis()).unwrap_or(i64::MAX)
}

fn positive(key: &str, duration: Duration) -> Result<(), PolicyError> {
    if duration.is_zero() {
        Err(PolicyError::new(key, "must be greater than zero"))
    } else {
        Ok(())
    }
}

fn finite_positive(key: &str, value: f64) -> Result<(), PolicyError> {
    if value.is_finite() && value > 0.0 {
        Ok(())
    } else {
        Err(PolicyError::new(
            key,
            "must be a finite number greater than zero",
        ))
    }
}

impl LevelPolicy {
    /// Checks that thresholds are ordered and durations positive; the error names
    /// the first bad key.
    pub fn validate(&self) -> Result<(), PolicyError> {
        if self.yellow_forecast_pct == 0 {
            return Err(PolicyError::new(
                "yellow_forecast_pct",
                "must be greater than zero",
            ));
        }
        if self.orange_forecast_pct <= self.yellow_forecast_pct {
            return Err(PolicyError::new(
                "orange_forecast_pct",
                "must be greater than yellow_forecast_pct",
            ));
        }
        if self.red_forecast_pct <= self.orange_forecast_pct {
            return Err(PolicyError::new(
                "red_forecast_pct",
                "must be greater than orange_forecast_pct",
            ));
        }
        if self.orange_actual_pct == 0 {
            return Err(PolicyError::new(
                "orange_actual_pct",
                "must be greater than zero",
            ));
        }
        if self.red_actual_pct <= self.orange_actual_pct {
            return Err(PolicyError::new(
                "red_actual_pct",
                "must be greater than orange_actual_pct",
            ));
        }
        if self.hysteresis_points >= self.yellow_forecast_pct
            || self.hysteresis_points >= self.orange_actual_pct
        {
            return Err(PolicyError::new(
                "hysteresis_points",
                "must be smaller than yellow_forecast_pct and orange_actual_pct",
            ));
        }
        finite_positive("anomaly_z", self.anomaly_z)?;
        if !(self.anomaly_z_hysteresis.is_finite()
            && self.anomaly_z_hysteresis >= 0.0
            && self.anomaly_z_hysteresis < self.anomaly_z)
        {
            return Err(PolicyError::new(
                "anomaly_z_hysteresis",
                "must be at least zero and smaller than anomaly_z",
            ));
        }
        positive("sustain", self.sustain)?;
        if self.runaway_rate_pct <= 100 {
            return Err(PolicyError::new(
                "runaway_rate_pct",
                "must be greater than 100",
            ));
        }
        positive("runaway_for", self.runaway_for)?;
        positive("cooldown", self.cooldown)?;
        if self.negative_margin_level == Level::Green {
            return Err(PolicyError::new(
                "negative_margin_level",
                "must be yellow, orange or red",
            ));
        }
        self.baseline.validate()?;
        self.forecast.validate()?;
        self.fleet.validate()
    }
}

impl BaselinePolicy {
    fn validate(&self) -> Result<(), PolicyError> {
        if self.min_samples < 2 {
            return Err(PolicyError::new(
                "baseline.min_samples",
                "must be at least 2",
            ));
        }
        if self.max_weight < self.min_samples {
            return Err(PolicyError::new(
                "baseline.max_weight",
                "must be at least baseline.min_samples",
            ));
        }
        if self.min_rate_nanos_per_hour <= 0 {
            return Err(PolicyError::new(
                "baseline.min_rate_nanos_per_hour",
                "must be greater than zero",
            ));
        }
        finite_positive("baseline.clip_z", self.clip_z)
    }
}

impl ForecastPolicy {
    fn validate(&self) -> Result<(), PolicyError> {
        positive("forecast.recent_horizon", self.recent_horizon)?;
        positive("forecast.run_rate_full_weight", self.run_rate_full_weight)
    }
}

impl FleetPolicy {
    fn validate(&self) -> Result<(), PolicyError> {
        finite_positive("fleet.above_baseline_z", self.above_baseline_z)?;
        if self.min_active_tenants == 0 {
            return Err(PolicyError::new(
                "fleet.min_active_tenants",
                "must be greater than zero",
            ));
        }
        if self.orange_share_pct == 0 || self.orange_share_pct > 100 {
            return Err(PolicyError::new(
                "fleet.orange_share_pct",
                "must be in 1..=100",
            ));
        }
        if self.red_share_pct <= self.orange_share_pct || self.red_share_pct > 100 {
            return Err(PolicyError::new(
                "fleet.red_share_pct",
                "must be greater than fleet.orange_share_pct and at most 100",
            ));
        }
        positive("fleet.sustain", self.sustain)
    }
}
