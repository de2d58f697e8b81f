//! Property tests of the window and calendar math.

use proptest::prelude::*;
use tenantmeter_domain::window::{
    BUCKETS, CalendarPeriod, DAY_MS, RING, Window, civil_from_days, day_index, days_from_civil,
};

fn window() -> impl Strategy<Value = Window> {
    prop_oneof![
        Just(Window::OneMinute),
        Just(Window::FiveMinutes),
        Just(Window::OneHour),
        Just(Window::OneDay)
    ]
}

// Instants from 1900 to 2200, in ms.
const SPAN: std::ops::Range<i64> = -2_208_988_800_000..7_258_118_400_000;

proptest! {
    /// The window at `now` is 60 buckets, ends with `now`'s bucket, and spans
    /// between L - L/60 and L of time before `now`.
    #[test]
    fn a_window_is_sixty_buckets_ending_now(w in window(), now in SPAN) {
        let covered = w.covered(now);
        prop_assert_eq!(covered.end() - covered.start() + 1, BUCKETS);
        prop_assert_eq!(*covered.end(), w.bucket(now));
        let oldest = covered.start() * w.bucket_ms();
        let span = now - oldest + 1;
        prop_assert!(span > w.length_ms() - w.bucket_ms() && span <= w.length_ms(), "span {span}");
    }

    /// An event counts in the window iff it is at most L - L/60 old (always),
    /// never if older than L, never if after `now`.
    #[test]
    fn membership_matches_age(w in window(), now in SPAN, age in -10_000i64..100_000_000) {
        let t = now - age;
        let inside = w.contains(now, t);
        if age < 0 || age >= w.length_ms() {
            prop_assert!(!inside);
        } else if age < w.length_ms() - w.bucket_ms() {
            prop_assert!(inside);
        }
    }

    /// The window's buckets and the next window's worth of future buckets (clock
    /// skew) all have slots of their own, so writing a future event never
    /// overwrites a bucket still inside the window.
    #[test]
    fn ring_slots_do_not_collide_within_a_window_and_its_future(w in window(), now in SPAN) {
        let first = *w.covered(now).start();
        let mut slots: Vec<i64> = (first..first + RING).map(Window::slot).collect();
        slots.sort_unstable();
        slots.dedup();
        prop_assert_eq!(slots.len() as i64, RING);
    }

    #[test]
    fn civil_dates_round_trip(days in -100_000i64..100_000) {
        let (y, m, d) = civil_from_days(days);
        prop_assert!((1..=12).contains(&m) && (1..=31).contains(&d));
        prop_assert_eq!(days_from_civil(y, m, d), days);
    }

    /// Periods contain their instant, tile time without gaps, and months start
    /// on the 1st.
    #[test]
    fn periods_tile_time(t in SPAN) {
        for period in [CalendarPeriod::Day, CalendarPeriod::Month] {
            let (start, end) = period.bounds(t);
            prop_assert!(start <= t && t < end);
            prop_assert_eq!(period.bounds(end).0, end);
            prop_assert_eq!(period.bounds(start - 1).1, start);
            prop_assert_eq!(start.rem_euclid(DAY_MS), 0);
        }
        let (month_start, _) = CalendarPeriod::Month.bounds(t);
        prop_assert_eq!(civil_from_days(day_index(month_start)).2, 1);
    }
}
