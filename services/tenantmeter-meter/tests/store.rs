//! The Lua scripts against a real redis-server, through the store's verbs.

#![allow(clippy::unwrap_used, clippy::expect_used)] // test support: a failed unwrap is a failed test

use std::time::Duration;

use tenantmeter_domain::ids::TenantId;
use tenantmeter_domain::usage::TokenUsage;
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
        store.record(&tenant, &batch).await.unwrap(),
        [true, true, true]
    );
    assert_eq!(
        store.record(&tenant, &batch[..2]).await.unwrap(),
        [false, false],
        "a replay changes nothing"
    );
    let usage = store.usage(&tenant, NOW, true).await.unwrap();
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
