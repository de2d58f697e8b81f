//! The Lua scripts against a real redis-server, through the store's verbs.

#![allow(clippy::unwrap_used, clippy::expect_used)] // test support: a failed unwrap is a failed test

use std::time::Duration;

use tenantmeter_domain::ids::TenantId;
use tenantmeter_domain::usage::TokenUsage;
use tenantmeter_domain::window::Window;
use tenantmeter_meter::store::{MeterStore, ReserveArgs, Retention, StoredEvent};
use tenantmeter_testkit::RedisServer;

const RETENTION: Retention = Retention {
    dedupe_s: 3_600,
    hourly_s: 14 * 86_400,
    daily_s: 400 * 86_400,
};

async fn store(redis: &RedisServer) -> MeterStore {
    MeterStore::connect(&[redis.url()], false, Duration::from_secs(2), RETENTION)
        .await
        .unwrap()
}

fn event(id: &str, time_ms: i64, input: u64, output: u64) -> StoredEvent {
    StoredEvent {
        id: id.into(),
        model: "amazon.nova-micro-v1:0".into(),
        time_ms,
        usage: TokenUsage {
            input,
            output,
            ..TokenUsage::default()
        },
        cost_pico: i128::from(input) * 35_000 + i128::from(output) * 140_000,
        rated_pico: i128::from(input) * 35_000 + i128::from(output) * 140_000,
    }
}

const NOW: i64 = 1_795_000_000_000; // 2026-11-17T...

#[tokio::test]
async fn events_count_once_in_every_window_and_period() {
    let redis = RedisServer::start().await.unwrap();
    let store = store(&redis).await;
    let tenant = TenantId::parse("acme").unwrap();
    let batch = [
        event("e1", NOW - 500, 100, 10),
        event("e2", NOW - 30_000, 200, 20),
        event("e3", NOW - 2 * 3_600_000, 400, 40),
    ];
    assert_eq!(
        store.record(&tenant, &batch, NOW).await.unwrap(),
        [true, true, true]
    );
    assert_eq!(
        store.record(&tenant, &batch[..2], NOW).await.unwrap(),
        [false, false],
        "a replay changes nothing"
    );
    let usage = store.usage(&tenant, NOW, true, &Window::ALL).await.unwrap();
    let [minute, five, hour, day] = usage.windows.as_slice() else {
        panic!("four windows")
    };
    assert_eq!((minute.requests, minute.tokens.input), (2, 300));
    assert_eq!((five.requests, hour.requests, day.requests), (2, 2, 3));
    assert_eq!(day.tokens.output, 70);
    assert_eq!(day.cost_pico, 700 * 35_000 + 70 * 140_000);
    assert_eq!(usage.month.total.requests, 3);
    assert_eq!(usage.last_event_ms, Some(NOW - 500));
    assert_eq!(usage.model_windows["amazon.nova-micro-v1:0"][0].requests, 2);
}

#[tokio::test]
async fn reservations_hold_capacity_until_settled_or_expired() {
    let redis = RedisServer::start().await.unwrap();
    let store = store(&redis).await;
    let tenant = TenantId::parse("acme").unwrap();
    let args = |id: &str| ReserveArgs {
        reservation_id: id.into(),
        model: "amazon.nova-micro-v1:0".into(),
        tokens: 600,
        lease: Duration::from_secs(60),
        plan_rpm: 100,
        plan_tpm: 1_000,
        plan_month_rated_cap_pico: 0,
        downgrade_targets: vec![],
        now_override_ms: Some(NOW),
    };
    let first = store.reserve(&tenant, &args("r1")).await.unwrap();
    assert!(first.admitted, "{first:?}");
    let second = store.reserve(&tenant, &args("r2")).await.unwrap();
    assert!(!second.admitted);
    assert_eq!(second.reason, 2, "token rate limit");
    assert_eq!((second.limit, second.current), (1_000, 600));
    assert!(
        second.retry_ms > 0 && second.retry_ms <= 60_000,
        "{second:?}"
    );

    // Settling r1 with its actual, smaller usage frees the difference.
    let settled = store
        .settle(&tenant, "r1", &event("e1", NOW, 150, 50), Some(NOW))
        .await
        .unwrap();
    assert!(settled.counted && settled.released);
    assert!(store.reserve(&tenant, &args("r3")).await.unwrap().admitted);

    // An unsettled lease expires: a minute later r3 is gone.
    let later = ReserveArgs {
        now_override_ms: Some(NOW + 61_000),
        ..args("r4")
    };
    assert!(store.reserve(&tenant, &later).await.unwrap().admitted);
    assert!(
        !store
            .release(&tenant, "r3", Some(NOW + 61_000))
            .await
            .unwrap()
    );
}

/// The record script computes day and month keys in Lua; the reads compute
/// them in Rust. Both must agree on every date, month ends and leap days
/// included.
#[tokio::test]
async fn lua_and_rust_agree_on_days_and_months() {
    use tenantmeter_domain::window::{DAY_MS, days_from_civil};
    let redis = RedisServer::start().await.unwrap();
    let store = store(&redis).await;
    let tenant = TenantId::parse("calendar").unwrap();
    // Future dates only: rollups expire a retention after their period, so a
    // past date would be gone as soon as it is written.
    let dates = [
        (2030, 12, 31),
        (2031, 1, 1),
        (2032, 2, 29),
        (2032, 3, 1),
        (2100, 2, 28),
        (2100, 3, 1),
        (2400, 2, 29),
        (2400, 12, 31),
    ];
    for (n, (y, m, d)) in dates.into_iter().enumerate() {
        // The last millisecond of the day: the most likely to land in the wrong period.
        let at = (days_from_civil(y, m, d) + 1) * DAY_MS - 1;
        let id = format!("cal-{n}");
        assert_eq!(
            store
                .record(&tenant, &[event(&id, at, 7, 0)], at)
                .await
                .unwrap(),
            [true]
        );
        let usage = store.usage(&tenant, at, false, &Window::ALL).await.unwrap();
        assert_eq!(usage.day.total.tokens.input, 7, "{y}-{m}-{d}: day");
        assert!(usage.month.total.requests >= 1, "{y}-{m}-{d}: month");
        let month_sum: u64 = dates[..=n]
            .iter()
            .filter(|(yy, mm, _)| (*yy, *mm) == (y, m))
            .map(|_| 7)
            .sum();
        assert_eq!(
            usage.month.total.tokens.input, month_sum,
            "{y}-{m}-{d}: month"
        );
    }
}
