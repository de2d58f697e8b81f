//! Time for the meter: rolling windows, hourly and daily rollups, calendar
//! periods, and which event times are accepted. Instants are milliseconds since
//! the Unix epoch (UTC), always passed in: nothing here reads a clock.
//!
//! A rolling window of length `L` is kept as 60 buckets of `L/60` each. The
//! window "at `now`" is the 60 most recent buckets, the one holding `now`
//! included: it covers event times from `bucket_start(now) - 59 buckets` up to
//! `now`, a span between `L - L/60` and `L`. That is the resolution the contract
//! promises (no coarser than 1/60 of the window).

use std::ops::RangeInclusive;

/// Buckets per rolling window.
pub const BUCKETS: i64 = 60;
/// Ring slots per stored window: two windows' worth, so an event up to one
/// window ahead of the newest bucket (clock skew) never overwrites a bucket
/// that is still inside the window.
pub const RING: i64 = 2 * BUCKETS;
/// Milliseconds in an hour.
pub const HOUR_MS: i64 = 3_600_000;
/// Milliseconds in a UTC day (leap seconds are not counted, as in Unix time).
pub const DAY_MS: i64 = 86_400_000;

/// A rolling window.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Window {
    /// 60 s in 1 s buckets.
    OneMinute,
    /// 5 min in 5 s buckets.
    FiveMinutes,
    /// 1 h in 1 min buckets.
    OneHour,
    /// 24 h in 24 min buckets.
    OneDay,
}

impl Window {
    /// Every window, shortest first (contract order).
    pub const ALL: [Self; 4] = [
        Self::OneMinute,
        Self::FiveMinutes,
        Self::OneHour,
        Self::OneDay,
    ];

    /// Length of the window in milliseconds.
    pub const fn length_ms(self) -> i64 {
        match self {
            Self::OneMinute => 60_000,
            Self::FiveMinutes => 300_000,
            Self::OneHour => HOUR_MS,
            Self::OneDay => DAY_MS,
        }
    }

    /// Length of one bucket in milliseconds.
    pub const fn bucket_ms(self) -> i64 {
        self.length_ms() / BUCKETS
    }

    /// Short stable name, used in Redis keys.
    pub const fn key(self) -> &'static str {
        match self {
            Self::OneMinute => "1m",
            Self::FiveMinutes => "5m",
            Self::OneHour => "1h",
            Self::OneDay => "1d",
        }
    }

    /// Index of the bucket holding instant `t_ms`.
    pub const fn bucket(self, t_ms: i64) -> i64 {
        t_ms.div_euclid(self.bucket_ms())
    }

    /// The buckets of the window at `now_ms`.
    pub const fn covered(self, now_ms: i64) -> RangeInclusive<i64> {
        let last = self.bucket(now_ms);
        (last - (BUCKETS - 1))..=last
    }

    /// Whether an event at `t_ms` counts in the window at `now_ms`.
    pub fn contains(self, now_ms: i64, t_ms: i64) -> bool {
        t_ms <= now_ms && self.covered(now_ms).contains(&self.bucket(t_ms))
    }

    /// The ring slot (0..[`RING`]) a bucket is stored in: a bucket reuses the
    /// slot of the bucket two windows earlier, which is then outside the window
    /// even for an event up to one window in the future.
    pub const fn slot(bucket: i64) -> i64 {
        bucket.rem_euclid(RING)
    }
}

/// Index of the hour holding `t_ms` (hours since the epoch).
pub const fn hour_index(t_ms: i64) -> i64 {
    t_ms.div_euclid(HOUR_MS)
}

/// Index of the UTC day holding `t_ms` (days since the epoch).
pub const fn day_index(t_ms: i64) -> i64 {
    t_ms.div_euclid(DAY_MS)
}

/// Civil date (year, month 1..=12, day 1..=31) of a day index; Howard
/// Hinnant's `civil_from_days`, exact for the proleptic Gregorian calendar.
pub const fn civil_from_days(days: i64) -> (i64, u32, u32) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + if month <= 2 { 1 } else { 0 };
    // day is in 1..=31 and month in 1..=12 by construction, so the casts are exact.
    #[allow(clippy::cast_possible_truncation, clippy::cast_sign_loss)]
    let civil = (year, month as u32, day as u32);
    civil
}

/// Day index of a civil date; the inverse of [`civil_from_days`].
pub const fn days_from_civil(year: i64, month: u32, day: u32) -> i64 {
    let year = if month <= 2 { year - 1 } else { year };
    let era = year.div_euclid(400);
    let yoe = year - era * 400;
    let month = month as i64;
    let mp = if month > 2 { month - 3 } else { month + 9 };
    let doy = (153 * mp + 2) / 5 + day as i64 - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

/// Index of the UTC calendar month holding `t_ms` (`year * 12 + month - 1`).
pub const fn month_index(t_ms: i64) -> i64 {
    let (year, month, _) = civil_from_days(day_index(t_ms));
    year * 12 + month as i64 - 1
}

/// A calendar period of the contract.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum CalendarPeriod {
    /// A UTC day.
    Day,
    /// A UTC calendar month.
    Month,
}

impl CalendarPeriod {
    /// Start (inclusive) and end (exclusive) of the period holding `t_ms`.
    pub const fn bounds(self, t_ms: i64) -> (i64, i64) {
        match self {
            Self::Day => {
                let day = day_index(t_ms);
                (day * DAY_MS, (day + 1) * DAY_MS)
            }
            Self::Month => {
                let (year, month, _) = civil_from_days(day_index(t_ms));
                let (next_year, next_month) = if month == 12 {
                    (year + 1, 1)
                } else {
                    (year, month + 1)
                };
                (
                    days_from_civil(year, month, 1) * DAY_MS,
                    days_from_civil(next_year, next_month, 1) * DAY_MS,
                )
            }
        }
    }
}

/// Why an event time is not accepted.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum EventTimeError {
    /// Older than the allowed lateness.
    #[error("event time is {late_ms} ms old; events older than {allowed_ms} ms are not counted")]
    TooLate {
        /// Age of the event.
        late_ms: i64,
        /// Allowed lateness.
        allowed_ms: i64,
    },
    /// Further in the future than the allowed clock skew.
    #[error(
        "event time is {ahead_ms} ms in the future; at most {allowed_ms} ms of clock skew is allowed"
    )]
    InFuture {
        /// How far ahead.
        ahead_ms: i64,
        /// Allowed skew.
        allowed_ms: i64,
    },
}

/// Accepts `event_ms` at `now_ms` when it is at most `lateness_ms` old and at
/// most `skew_ms` ahead.
pub const fn check_event_time(
    event_ms: i64,
    now_ms: i64,
    lateness_ms: i64,
    skew_ms: i64,
) -> Result<(), EventTimeError> {
    let age = now_ms - event_ms;
    if age > lateness_ms {
        Err(EventTimeError::TooLate {
            late_ms: age,
            allowed_ms: lateness_ms,
        })
    } else if -age > skew_ms {
        Err(EventTimeError::InFuture {
            ahead_ms: -age,
            allowed_ms: skew_ms,
        })
    } else {
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn known_dates() {
        assert_eq!(civil_from_days(0), (1970, 1, 1));
        assert_eq!(days_from_civil(2000, 3, 1), 11_017);
        assert_eq!(civil_from_days(days_from_civil(2024, 2, 29)), (2024, 2, 29));
        // 2026-11-27T12:00:00Z
        let t = days_from_civil(2026, 11, 27) * DAY_MS + 12 * HOUR_MS;
        assert_eq!(
            CalendarPeriod::Month.bounds(t),
            (
                days_from_civil(2026, 11, 1) * DAY_MS,
                days_from_civil(2026, 12, 1) * DAY_MS
            )
        );
        assert_eq!(month_index(t), 2026 * 12 + 10);
        let dec = days_from_civil(2026, 12, 31) * DAY_MS;
        assert_eq!(
            CalendarPeriod::Month.bounds(dec).1,
            days_from_civil(2027, 1, 1) * DAY_MS
        );
    }

    #[test]
    fn event_time_bounds() {
        assert!(check_event_time(1_000, 2_000, 1_000, 10).is_ok());
        assert!(matches!(
            check_event_time(999, 2_000, 1_000, 10),
            Err(EventTimeError::TooLate { late_ms: 1_001, .. })
        ));
        assert!(check_event_time(2_010, 2_000, 1_000, 10).is_ok());
        assert!(matches!(
            check_event_time(2_011, 2_000, 1_000, 10),
            Err(EventTimeError::InFuture { ahead_ms: 11, .. })
        ));
    }
}
