//! Wall-clock time as a parameter. Logic never reads the system clock itself: it is handed a
//! [`Clock`], so tests and backtests run on [`ManualClock`] time. [`SystemClock`] is the one
//! place in the workspace allowed to call `SystemTime::now` (clippy.toml bans it elsewhere).

use std::fmt::Debug;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, SystemTime};

/// A source of wall-clock time.
pub trait Clock: Send + Sync + Debug {
    /// The current time.
    fn now(&self) -> SystemTime;
}

/// The real clock.
#[derive(Debug, Clone, Copy, Default)]
pub struct SystemClock;

impl Clock for SystemClock {
    // The one sanctioned wall-clock read: everything else takes a `Clock`.
    #[allow(clippy::disallowed_methods)]
    fn now(&self) -> SystemTime {
        SystemTime::now()
    }
}

/// A clock that moves only when told to. Clones share the same time, so a test keeps one
/// clone and hands another to the code under test.
#[derive(Debug, Clone)]
pub struct ManualClock {
    now: Arc<Mutex<SystemTime>>,
}

impl ManualClock {
    /// A clock stopped at `start`.
    #[must_use]
    pub fn new(start: SystemTime) -> Self {
        Self {
            now: Arc::new(Mutex::new(start)),
        }
    }

    /// A clock stopped at `secs` seconds after the Unix epoch.
    #[must_use]
    pub fn at_unix_secs(secs: u64) -> Self {
        Self::new(SystemTime::UNIX_EPOCH + Duration::from_secs(secs))
    }

    /// Moves the clock to `time` (backwards too: tests of late or reordered events need it).
    pub fn set(&self, time: SystemTime) {
        *self.lock() = time;
    }

    /// Moves the clock forward by `by`.
    pub fn advance(&self, by: Duration) {
        let mut now = self.lock();
        *now += by;
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, SystemTime> {
        // A panic while holding this lock cannot leave a half-written `SystemTime`, so a
        // poisoned lock still holds a valid time.
        self.now.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

impl Clock for ManualClock {
    fn now(&self) -> SystemTime {
        *self.lock()
    }
}

/// `time` as a protobuf `Timestamp` (times before the epoch get a negative `seconds`).
#[must_use]
pub fn to_timestamp(time: SystemTime) -> prost_types::Timestamp {
    prost_types::Timestamp::from(time)
}

/// `time` as Unix milliseconds (negative before the epoch, saturating).
#[must_use]
pub fn unix_ms(time: SystemTime) -> i64 {
    match time.duration_since(SystemTime::UNIX_EPOCH) {
        Ok(after) => i64::try_from(after.as_millis()).unwrap_or(i64::MAX),
        Err(before) => i64::try_from(before.duration().as_millis()).map_or(i64::MIN, |ms| -ms),
    }
}

/// A protobuf `Timestamp` as a `SystemTime`; `None` if it is out of range or not normalized
/// (nanos outside 0..1e9), which a handler should report as INVALID_ARGUMENT.
#[must_use]
pub fn from_timestamp(timestamp: &prost_types::Timestamp) -> Option<SystemTime> {
    let nanos = u32::try_from(timestamp.nanos)
        .ok()
        .filter(|n| *n < 1_000_000_000)?;
    let since_epoch = Duration::new(timestamp.seconds.unsigned_abs(), 0);
    let whole = if timestamp.seconds >= 0 {
        SystemTime::UNIX_EPOCH.checked_add(since_epoch)?
    } else {
        SystemTime::UNIX_EPOCH.checked_sub(since_epoch)?
    };
    whole.checked_add(Duration::from_nanos(u64::from(nanos)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn manual_clock_moves_only_when_told_and_clones_share_it() {
        let clock = ManualClock::at_unix_secs(1_000);
        let shared = clock.clone();
        assert_eq!(
            shared.now(),
            SystemTime::UNIX_EPOCH + Duration::from_secs(1_000)
        );
        clock.advance(Duration::from_millis(1_500));
        assert_eq!(
            shared.now(),
            SystemTime::UNIX_EPOCH + Duration::from_millis(1_001_500)
        );
        clock.set(SystemTime::UNIX_EPOCH);
        assert_eq!(shared.now(), SystemTime::UNIX_EPOCH);
    }

    #[test]
    fn clock_is_object_safe() {
        let clocks: Vec<Box<dyn Clock>> = vec![
            Box::new(SystemClock),
            Box::new(ManualClock::at_unix_secs(5)),
        ];
        assert!(clocks[0].now() > clocks[1].now());
    }

    #[test]
    fn timestamps_round_trip() {
        for time in [
            SystemTime::UNIX_EPOCH + Duration::new(1_700_000_000, 123_456_789),
            SystemTime::UNIX_EPOCH,
            SystemTime::UNIX_EPOCH - Duration::from_millis(1_500),
        ] {
            assert_eq!(from_timestamp(&to_timestamp(time)), Some(time));
        }
        let ts = to_timestamp(SystemTime::UNIX_EPOCH + Duration::new(5, 7));
        assert_eq!((ts.seconds, ts.nanos), (5, 7));
        let before_epoch = to_timestamp(SystemTime::UNIX_EPOCH - Duration::from_millis(1_500));
        assert_eq!(
            (before_epoch.seconds, before_epoch.nanos),
            (-2, 500_000_000)
        );
    }

    #[test]
    fn malformed_timestamps_are_rejected() {
        let bad_nanos = prost_types::Timestamp {
            seconds: 1,
            nanos: 1_000_000_000,
        };
        assert_eq!(from_timestamp(&bad_nanos), None);
        let negative_nanos = prost_types::Timestamp {
            seconds: 1,
            nanos: -1,
        };
        assert_eq!(from_timestamp(&negative_nanos), None);
    }
}
