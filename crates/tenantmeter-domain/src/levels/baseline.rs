//! The seasonal baseline of a subject's spend rate.
//!
//! 168 buckets, one per hour of the week (UTC, bucket 0 = Monday 00:00-01:00),
//! each a running mean and variance of the rate samples that fell in it. The
//! service feeds one sample per closed rate window (default every 5 minutes: the
//! rate over those 5 minutes in nano-USD per hour) with [`Baseline::observe`].
//!
//! Updates are Welford's (exact mean and population variance) until a bucket
//! holds `max_weight` samples, then exponentially weighted with weight
//! `1/max_weight`, so the baseline follows a tenant whose normal changes.
//!
//! Reading ([`Baseline::estimate`]) takes, in order: the hour-of-week bucket
//! when it holds at least `min_samples`; else the 7 buckets of the same hour of
//! day pooled; else the plan's expected rate (mean) with `plan_stddev_pct` of it
//! as standard deviation.
//!
//! The statistics are `f64`: they are estimates of a distribution, not money.
//! Every figure that leaves this module (mean, stddev, p95) is rounded to
//! integer nano-USD per hour.
#![allow(clippy::float_arithmetic)] // statistics (means, variances, z-scores), not money

use serde::{Deserialize, Serialize};

use super::policy::BaselinePolicy;
use crate::window::HOUR_MS;

/// Buckets in a week.
pub const HOURS_PER_WEEK: usize = 168;

/// z of the 95th percentile of a normal distribution.
const Z_P95: f64 = 1.644_853_626_951_472_2;

/// Hour of the week of `t_ms`, 0 = Monday 00:00-01:00 UTC.
pub fn hour_of_week(t_ms: i64) -> usize {
    // 1970-01-01 was a Thursday: 3 days (72 hours) after a Monday 00:00.
    let hour = t_ms.div_euclid(HOUR_MS) + 72;
    // rem_euclid by 168 is in 0..168, so the conversion cannot fail.
    usize::try_from(hour.rem_euclid(168)).unwrap_or(0)
}

/// Running statistics of one bucket.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
pub struct BucketStats {
    /// Samples seen (not capped; the weight of the newest is `1/min(count, max_weight)`).
    pub count: u64,
    /// Mean rate, nano-USD per hour.
    pub mean: f64,
    /// Population variance of the rate.
    pub variance: f64,
}

impl BucketStats {
    /// Adds one sample; `max_weight` caps the memory (see the module docs).
    pub fn push(&mut self, value: f64, max_weight: u64) {
        self.count = self.count.saturating_add(1);
        let weight = self.count.min(max_weight.max(1));
        let alpha = 1.0 / weight as f64;
        let diff = value - self.mean;
        let increment = alpha * diff;
        self.mean += increment;
        // Welford for alpha = 1/n; the EWMA variance update otherwise.
        self.variance = (1.0 - alpha) * (self.variance + diff * increment);
    }

    /// Combines two buckets as if their samples had been pushed into one
    /// (Chan et al.'s parallel formula, weighted by count).
    pub fn merge(&self, other: &Self) -> Self {
        let total = self.count.saturating_add(other.count);
        if total == 0 {
            return Self::default();
        }
        let (na, nb, n) = (self.count as f64, other.count as f64, total as f64);
        let delta = other.mean - self.mean;
        let mean = self.mean + delta * nb / n;
        let m2 = self.variance * na + other.variance * nb + delta * delta * na * nb / n;
        Self {
            count: total,
            mean,
            variance: m2 / n,
        }
    }

    /// Standard deviation.
    pub fn stddev(&self) -> f64 {
        self.variance.max(0.0).sqrt()
    }
}

/// Where a baseline estimate comes from (the contract's `BaselineSource`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum BaselineSource {
    /// The plan's expected rate: too little history.
    Plan,
    /// The subject's own hour-of-week bucket.
    HourOfWeek,
    /// The subject's own history at this hour of day, all weekdays pooled.
    HourOfDay,
}

/// The expected spend rate at one instant, integer nano-USD per hour.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct BaselineEstimate {
    /// Expected rate (floored at the policy's `min_rate_nanos_per_hour`).
    pub mean_nanos_per_hour: i64,
    /// Standard deviation used for z-scores (floored at `min_stddev_pct` of the mean).
    pub stddev_nanos_per_hour: i64,
    /// Normal peak: `mean + 1.645 stddev`, the 95th percentile of a normal
    /// distribution with these moments.
    pub p95_nanos_per_hour: i64,
    /// Where it comes from.
    pub source: BaselineSource,
    /// Samples behind it (0 for the plan).
    pub samples: u64,
}

fn to_nanos(value: f64) -> i64 {
    if !value.is_finite() {
        return 0;
    }
    // `as` saturates at the i64 range; rates are far inside it.
    #[allow(clippy::cast_possible_truncation)]
    let nanos = value.round() as i64;
    nanos
}

impl BaselineEstimate {
    /// An estimate of mean `mean` and raw standard deviation `stddev`, floored as
    /// the policy says.
    pub fn new(
        mean: f64,
        stddev: f64,
        source: BaselineSource,
        samples: u64,
        policy: &BaselinePolicy,
    ) -> Self {
        let mean = mean.max(policy.min_rate_nanos_per_hour as f64);
        let stddev = stddev
            .max(mean * f64::from(policy.min_stddev_pct) / 100.0)
            .max(1.0);
        Self {
            mean_nanos_per_hour: to_nanos(mean),
            stddev_nanos_per_hour: to_nanos(stddev),
            p95_nanos_per_hour: to_nanos(mean + Z_P95 * stddev),
            source,
            samples,
        }
    }

    /// The plan baseline of a new tenant: the plan's expected rate as mean.
    pub fn from_plan(expected_nanos_per_hour: i64, policy: &BaselinePolicy) -> Self {
        let mean = expected_nanos_per_hour as f64;
        let stddev = mean * f64::from(policy.plan_stddev_pct) / 100.0;
        Self::new(mean, stddev, BaselineSource::Plan, 0, policy)
    }

    /// How many standard deviations `rate` is above the mean (negative below).
    pub fn z_score(&self, rate_nanos_per_hour: i64) -> f64 {
        let stddev = self.stddev_nanos_per_hour.max(1) as f64;
        (rate_nanos_per_hour as f64 - self.mean_nanos_per_hour as f64) / stddev
    }
}

/// A subject's seasonal baseline: serializable, mergeable state that a service
/// persists per tenant (and for the fleet).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Baseline {
    /// One bucket per hour of week; see [`hour_of_week`].
    buckets: Vec<BucketStats>,
    /// Samples observed in all.
    pub samples: u64,
}

impl Default for Baseline {
    fn default() -> Self {
        Self {
            buckets: vec![BucketStats::default(); HOURS_PER_WEEK],
            samples: 0,
        }
    }
}

impl Baseline {
    /// An empty baseline.
    pub fn new() -> Self {
        Self::default()
    }

    /// A baseline from stored buckets (indexed by hour of week; a wrong
    /// length is repaired as by [`Baseline::normalize`]).
    pub fn from_buckets(buckets: Vec<BucketStats>, samples: u64) -> Self {
        let mut baseline = Self { buckets, samples };
        baseline.normalize();
        baseline
    }

    /// The buckets, indexed by hour of week.
    pub fn buckets(&self) -> &[BucketStats] {
        &self.buckets
    }

    /// Repairs a deserialized baseline of the wrong length (extra buckets are
    /// dropped, missing ones empty).
    pub fn normalize(&mut self) {
        self.buckets.resize(HOURS_PER_WEEK, BucketStats::default());
    }

    fn bucket(&self, index: usize) -> BucketStats {
        self.buckets.get(index).copied().unwrap_or_default()
    }

    /// The bucket of `t_ms`'s hour of day, all seven weekdays pooled.
    fn hour_of_day_pool(&self, t_ms: i64) -> BucketStats {
        let hour_of_day = hour_of_week(t_ms) % 24;
        (0..7).fold(BucketStats::default(), |pool, day| {
            pool.merge(&self.bucket(day * 24 + hour_of_day))
        })
    }

    /// Learns one rate sample taken at `t_ms` (the end of its rate window).
    ///
    /// Once the subject has a baseline of its own, the sample is clipped to `mean + clip_z sd`,
    /// so a runaway does not teach the baseline to expect runaways. Negative
    /// rates are treated as zero.
    pub fn observe(&mut self, t_ms: i64, rate_nanos_per_hour: i64, policy: &BaselinePolicy) {
        self.normalize();
        let index = hour_of_week(t_ms);
        let mut value = rate_nanos_per_hour.max(0) as f64;
        let known = self.estimate(t_ms, 0, policy);
        if known.source != BaselineSource::Plan {
            let ceiling = known.mean_nanos_per_hour as f64
                + policy.clip_z * known.stddev_nanos_per_hour as f64;
            value = value.min(ceiling);
        }
        if let Some(bucket) = self.buckets.get_mut(index) {
            bucket.push(value, policy.max_weight);
        }
        self.samples = self.samples.saturating_add(1);
    }

    /// Merges another baseline of the same subject (e.g. two replicas' or two
    /// backfill shards' learning) bucket by bucket.
    pub fn merge(&self, other: &Self) -> Self {
        let buckets = (0..HOURS_PER_WEEK)
            .map(|index| self.bucket(index).merge(&other.bucket(index)))
            .collect();
        Self {
            buckets,
            samples: self.samples.saturating_add(other.samples),
        }
    }

    /// The expected rate at `t_ms`: own hour of week, else own hour of day, else
    /// the plan's expected rate.
    pub fn estimate(
        &self,
        t_ms: i64,
        plan_expected_nanos_per_hour: i64,
        policy: &BaselinePolicy,
    ) -> BaselineEstimate {
        let week = self.bucket(hour_of_week(t_ms));
        if week.count >= policy.min_samples {
            return BaselineEstimate::new(
                week.mean,
                week.stddev(),
                BaselineSource::HourOfWeek,
                week.count,
                policy,
            );
        }
        let day = self.hour_of_day_pool(t_ms);
        if day.count >= policy.min_samples {
            return BaselineEstimate::new(
                day.mean,
                day.stddev(),
                BaselineSource::HourOfDay,
                day.count,
                policy,
            );
        }
        BaselineEstimate::from_plan(plan_expected_nanos_per_hour, policy)
    }
}
