#![allow(clippy::unwrap_used, clippy::expect_used)]
//! Alert history, silences, shadow mode and WatchAlerts against a real
//! redis-server (and one Redis Cluster case): idempotent inserts, ListAlerts
//! paging and filters, acknowledgements, retention, silences, shadow mode,
//! replay then live watching across connections, and slow watchers.

use std::collections::HashSet;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use futures::StreamExt as _;
use proptest::prelude::*;
use tenantmeter_alerting::alerts::{
    ACKS_KEY, ALERTS_KEY, AlertError, AlertFilter, AlertStore, AlertStream, LEVELS_KEY, ORDER_KEY,
    ShadowChange, TRIM_BATCH, WatchConfig, alert_id, alert_id_ms, id::ALERT_ID_LEN, id::MAX_ID_MS,
    is_shadow, silence_until, watch_alerts,
};
use tenantmeter_alerting::budgets::{Subject, ms_to_timestamp, timestamp_to_ms};
use tenantmeter_domain::ids::TenantId;
use tenantmeter_domain::levels::Level;
use tenantmeter_proto::v1 as pb;
use tenantmeter_runtime::clock::ManualClock;
use tenantmeter_runtime::shutdown::Shutdown;
use tenantmeter_testkit::{RedisCluster, RedisServer, wait_until};
use tonic::Code;

const TIMEOUT: Duration = Duration::from_secs(2);
/// How long a test waits for something that should happen at once.
const PATIENCE: Duration = Duration::from_secs(10);
const NOW: i64 = 1_767_225_600_000; // 2026-01-01T00:00:00Z

fn tenant(id: &str) -> Subject {
    Subject::Tenant(TenantId::parse(id).unwrap())
}

/// A transition of `subject` at `at_ms`, id left for the store to fill in.
fn alert(subject: &Subject, at_ms: i64, from: pb::Level, to: pb::Level) -> pb::Alert {
    pb::Alert {
        subject: Some(subject.to_proto()),
        from_level: from.into(),
        to_level: to.into(),
        raised_at: Some(ms_to_timestamp(at_ms)),
        reasons: vec![pb::LevelReason {
            code: pb::ReasonCode::Spike.into(),
            level: to.into(),
            message: format!("{subject} moved at {at_ms}"),
            ..pb::LevelReason::default()
        }],
        ..pb::Alert::default()
    }
}

/// `alert` with its id set, as the evaluator would send it.
fn with_id(mut alert: pb::Alert) -> pb::Alert {
    let subject = Subject::from_proto(alert.subject.as_ref(), "subject").unwrap();
    alert.alert_id = alert_id(timestamp_to_ms(alert.raised_at.as_ref().unwrap()), &subject);
    alert
}

async fn store(redis: &RedisServer) -> AlertStore {
    AlertStore::connect(&[redis.url()], false, TIMEOUT)
        .await
        .unwrap()
}

async fn raw(redis: &RedisServer) -> redis::aio::MultiplexedConnection {
    redis
        .client()
        .unwrap()
        .get_multiplexed_async_connection()
        .await
        .unwrap()
}

fn ids(alerts: &[pb::Alert]) -> Vec<String> {
    alerts.iter().map(|a| a.alert_id.clone()).collect()
}

fn rank(level: Level) -> i32 {
    i32::from(match level {
        Level::Green => pb::Level::Green,
        Level::Yellow => pb::Level::Yellow,
        Level::Orange => pb::Level::Orange,
        Level::Red => pb::Level::Red,
    })
}

fn tenant_id_strategy() -> impl Strategy<Value = Subject> {
    prop_oneof![
        Just(Subject::Fleet),
        "[A-Za-z0-9._-]{1,64}".prop_map(|id| tenant(&id)),
    ]
}

proptest! {
    #[test]
    fn ids_sort_in_the_order_alerts_were_raised(
        a_ms in 0..=MAX_ID_MS,
        b_ms in 0..=MAX_ID_MS,
        a in tenant_id_strategy(),
        b in tenant_id_strategy(),
    ) {
        let (id_a, id_b) = (alert_id(a_ms, &a), alert_id(b_ms, &b));
        if a_ms < b_ms {
            prop_assert!(id_a < id_b, "{id_a} !< {id_b}");
        }
        if a_ms > b_ms {
            prop_assert!(id_a > id_b, "{id_a} !> {id_b}");
        }
        // Deterministic, parses back, fixed length, URL-safe.
        prop_assert_eq!(&id_a, &alert_id(a_ms, &a));
        prop_assert_eq!(alert_id_ms(&id_a), Some(a_ms));
        prop_assert_eq!(id_a.len(), ALERT_ID_LEN);
        prop_assert!(id_a.bytes().all(|c| c.is_ascii_digit() || c == b'-' || (b'a'..=b'f').contains(&c)));
        // The same instant: distinct subjects, distinct ids.
        prop_assert_eq!(alert_id(a_ms, &a) == alert_id(a_ms, &b), a == b);
    }
}

#[tokio::test]
async fn insert_is_idempotent_and_keeps_the_acknowledgement() {
    let redis = RedisServer::start().await.unwrap();
    let store = store(&redis).await;
    let acme = tenant("acme");
    let first = alert(&acme, NOW, pb::Level::Green, pb::Level::Yellow);
    let fleet = with_id(alert(
        &Subject::Fleet,
        NOW,
        pb::Level::Green,
        pb::Level::Orange,
    ));
    let added = store.insert(&[first.clone(), fleet.clone()]).await.unwrap();
    let acme_id = alert_id(NOW, &acme);
    assert_eq!(added, [acme_id.clone(), fleet.alert_id.clone()]);

    let stored = store.get(&acme_id).await.unwrap();
    assert_eq!(stored, with_id(first.clone()));
    assert!(!stored.acknowledged);

    store
        .acknowledge(
            std::slice::from_ref(&acme_id),
            "alice@example.com",
            "on it",
            NOW + 10,
        )
        .await
        .unwrap();

    // The evaluator crashed and flushes the pass again (with, say, an
    // acknowledgement field it should not set, and different reasons): the
    // stored alert and its acknowledgement stay as they were.
    let mut again = with_id(first.clone());
    again.reasons.clear();
    again.acknowledged = false;
    let later = alert(&acme, NOW + 5_000, pb::Level::Yellow, pb::Level::Orange);
    let added = store
        .insert(&[again, fleet.clone(), later.clone()])
        .await
        .unwrap();
    assert_eq!(added, [alert_id(NOW + 5_000, &acme)]);
    let got = store.get(&acme_id).await.unwrap();
    assert_eq!(got.reasons, first.reasons);
    assert!(got.acknowledged);
    assert_eq!(got.acknowledged_by, "alice@example.com");
    assert_eq!(got.acknowledge_comment, "on it");
    assert_eq!(got.acknowledged_at, Some(ms_to_timestamp(NOW + 10)));

    // One index entry, one level and one feed entry per alert.
    let mut conn = raw(&redis).await;
    let order: Vec<String> = redis::cmd("ZRANGE")
        .arg(ORDER_KEY)
        .arg(0)
        .arg(-1)
        .query_async(&mut conn)
        .await
        .unwrap();
    let mut expected = vec![
        acme_id.clone(),
        fleet.alert_id.clone(),
        alert_id(NOW + 5_000, &acme),
    ];
    expected.sort();
    assert_eq!(order, expected);
    let levels: i64 = redis::cmd("HLEN")
        .arg(LEVELS_KEY)
        .query_async(&mut conn)
        .await
        .unwrap();
    assert_eq!(levels, 3);
    let level: String = redis::cmd("HGET")
        .arg(LEVELS_KEY)
        .arg(&fleet.alert_id)
        .query_async(&mut conn)
        .await
        .unwrap();
    assert_eq!(level, i32::from(pb::Level::Orange).to_string());
    let feed = store.feed_after("0-0", 100).await.unwrap();
    assert!(!feed.gap);
    assert_eq!(
        feed.entries
            .iter()
            .map(|e| e.alert_id.clone())
            .collect::<Vec<_>>(),
        [
            acme_id.clone(),
            fleet.alert_id.clone(),
            alert_id(NOW + 5_000, &acme)
        ]
    );

    // Refusals name the field and store nothing.
    let wrong_id = pb::Alert {
        alert_id: alert_id(NOW + 1, &acme),
        ..alert(&acme, NOW + 2, pb::Level::Green, pb::Level::Red)
    };
    let no_time = pb::Alert {
        raised_at: None,
        ..alert(&acme, NOW, pb::Level::Green, pb::Level::Red)
    };
    let bad_level = pb::Alert {
        to_level: 9,
        ..alert(&acme, NOW + 3, pb::Level::Green, pb::Level::Red)
    };
    let no_subject = pb::Alert {
        subject: None,
        ..alert(&acme, NOW + 4, pb::Level::Green, pb::Level::Red)
    };
    let pre_epoch = alert(&acme, -1, pb::Level::Green, pb::Level::Red);
    let good = alert(&tenant("beta"), NOW, pb::Level::Green, pb::Level::Red);
    for (field, bad) in [
        ("alerts[1].alert_id", wrong_id),
        ("alerts[1].raised_at", no_time),
        ("alerts[1].to_level", bad_level),
        ("alerts[1].subject", no_subject),
        ("alerts[1].raised_at", pre_epoch),
    ] {
        let err = store.insert(&[good.clone(), bad]).await.unwrap_err();
        assert_eq!(err.field(), Some(field));
        assert_eq!(tonic::Status::from(err).code(), Code::InvalidArgument);
    }
    assert_eq!(
        store
            .get(&alert_id(NOW, &tenant("beta")))
            .await
            .unwrap_err()
            .to_string(),
        format!("alert {:?} not found", alert_id(NOW, &tenant("beta")))
    );

    // get: unknown is NOT_FOUND naming the id, malformed names the field.
    let unknown = alert_id(NOW - 1, &acme);
    let status = tonic::Status::from(store.get(&unknown).await.unwrap_err());
    assert_eq!(status.code(), Code::NotFound);
    assert!(status.message().contains(&unknown), "{status:?}");
    let err = store.get("not-an-id").await.unwrap_err();
    assert_eq!(err.field(), Some("alert_id"));
}

/// The alerts of the paging test: five subjects, two alerts per instant,
/// levels going up and down, every third acknowledged.
fn history() -> Vec<pb::Alert> {
    let subjects = [
        Subject::Fleet,
        tenant("acme"),
        tenant("beta"),
        tenant("gamma"),
        tenant("zeta.9"),
    ];
    let moves = [
        (pb::Level::Unspecified, pb::Level::Green),
        (pb::Level::Green, pb::Level::Yellow),
        (pb::Level::Yellow, pb::Level::Orange),
        (pb::Level::Orange, pb::Level::Red),
        (pb::Level::Red, pb::Level::Orange),
        (pb::Level::Orange, pb::Level::Yellow),
        (pb::Level::Yellow, pb::Level::Green),
    ];
    (0..42_i64)
        .map(|i| {
            let n = usize::try_from(i).unwrap();
            let (from, to) = moves[n % moves.len()];
            with_id(alert(
                &subjects[n % subjects.len()],
                NOW + (i / 2) * 1_000,
                from,
                to,
            ))
        })
        .collect()
}

/// What `filter` should list from `all`, written independently of the store:
/// newest (highest id) first.
fn expected(all: &[pb::Alert], acked: &HashSet<String>, filter: &AlertFilter) -> Vec<String> {
    let mut ids: Vec<String> = all
        .iter()
        .filter(|a| {
            let subject = Subject::from_proto(a.subject.as_ref(), "subject").unwrap();
            let ms = timestamp_to_ms(a.raised_at.as_ref().unwrap());
            (filter.subjects.is_empty() || filter.subjects.contains(&subject))
                && filter
                    .min_level
                    .is_none_or(|min| a.from_level >= rank(min) || a.to_level >= rank(min))
                && filter.start_ms.is_none_or(|start| ms >= start)
                && filter.end_ms.is_none_or(|end| ms < end)
                && !(filter.unacknowledged_only && acked.contains(&a.alert_id))
        })
        .map(|a| a.alert_id.clone())
        .collect();
    ids.sort();
    ids.reverse();
    ids
}

/// Every page of `filter`, checking each page's bounds; the ids in order.
async fn page_through(store: &AlertStore, filter: &AlertFilter, page_size: i32) -> Vec<String> {
    let max = if page_size == 0 {
        100
    } else {
        usize::try_from(page_size).unwrap()
    };
    let mut token = String::new();
    let mut listed = Vec::new();
    let mut pages = 0;
    loop {
        pages += 1;
        assert!(pages <= 1_000, "paging did not end");
        let (page, next) = store
            .list_filtered(filter, page_size, &token)
            .await
            .unwrap();
        assert!(page.len() <= max);
        for alert in &page {
            assert!(filter.matches(alert), "{alert:?} does not match {filter:?}");
        }
        listed.extend(ids(&page));
        if next.is_empty() {
            return listed;
        }
        assert!(token.is_empty() || next < token, "tokens move down");
        token = next;
    }
}

#[tokio::test]
async fn list_pages_newest_first_with_filters_without_duplicates_or_gaps() {
    let redis = RedisServer::start().await.unwrap();
    let store = store(&redis).await;
    let all = history();
    // Inserted in several calls and out of order: the listing order is the
    // ids', not the insertion's.
    let (second, first) = all.split_at(20);
    store.insert(first).await.unwrap();
    store.insert(second).await.unwrap();
    let acked: HashSet<String> = all.iter().step_by(3).map(|a| a.alert_id.clone()).collect();
    let acked_ids: Vec<String> = acked.iter().cloned().collect();
    store
        .acknowledge(&acked_ids, "ops", "", NOW + 100_000)
        .await
        .unwrap();

    let filters = [
        AlertFilter::default(),
        AlertFilter {
            min_level: Some(Level::Orange),
            ..AlertFilter::default()
        },
        AlertFilter {
            min_level: Some(Level::Red),
            ..AlertFilter::default()
        },
        AlertFilter {
            subjects: vec![tenant("acme"), Subject::Fleet],
            ..AlertFilter::default()
        },
        AlertFilter {
            subjects: vec![tenant("beta")],
            min_level: Some(Level::Yellow),
            unacknowledged_only: true,
            ..AlertFilter::default()
        },
        AlertFilter {
            start_ms: Some(NOW + 5_000),
            end_ms: Some(NOW + 15_000),
            ..AlertFilter::default()
        },
        AlertFilter {
            subjects: vec![tenant("gamma"), tenant("zeta.9")],
            start_ms: Some(NOW + 5_000),
            unacknowledged_only: true,
            ..AlertFilter::default()
        },
        AlertFilter {
            unacknowledged_only: true,
            end_ms: Some(NOW + 7_001),
            ..AlertFilter::default()
        },
        // Nothing: before every alert, after every alert, an unknown tenant.
        AlertFilter {
            end_ms: Some(NOW),
            ..AlertFilter::default()
        },
        AlertFilter {
            start_ms: Some(NOW + 21_000),
            ..AlertFilter::default()
        },
        AlertFilter {
            subjects: vec![tenant("nobody")],
            ..AlertFilter::default()
        },
    ];
    // A tiny scan limit forces short (even empty) pages that still page on.
    let narrow = store.clone().with_list_scan_limit(4);
    for filter in &filters {
        let want = expected(&all, &acked, filter);
        for page_size in [1, 3, 7, 0] {
            assert_eq!(
                page_through(&store, filter, page_size).await,
                want,
                "{filter:?} by {page_size}"
            );
            assert_eq!(
                page_through(&narrow, filter, page_size).await,
                want,
                "{filter:?} by {page_size}, scan limit 4"
            );
        }
    }
    assert_eq!(expected(&all, &acked, &filters[0]).len(), 42);
    assert!(!expected(&all, &acked, &filters[4]).is_empty());
    assert!(!expected(&all, &acked, &filters[6]).is_empty());

    // An exact fit ends without an empty last page.
    let (page, next) = store
        .list_filtered(&AlertFilter::default(), 42, "")
        .await
        .unwrap();
    assert_eq!(page.len(), 42);
    assert_eq!(next, "");
    // Acknowledgements come back with the alerts.
    assert!(
        page.iter()
            .all(|a| a.acknowledged == acked.contains(&a.alert_id))
    );

    // The request form: filters from the request, errors naming its fields.
    let request = pb::ListAlertsRequest {
        subjects: vec![tenant("acme").to_proto()],
        min_level: pb::Level::Orange.into(),
        start_time: Some(ms_to_timestamp(NOW + 2_000)),
        end_time: Some(ms_to_timestamp(NOW + 20_000)),
        unacknowledged_only: false,
        page_size: 2,
        page_token: String::new(),
    };
    let filter = AlertFilter::from_list_request(&request).unwrap();
    let (page, _) = store.list(&request).await.unwrap();
    assert_eq!(ids(&page), expected(&all, &acked, &filter)[..page.len()]);
    assert!(!page.is_empty());
    let bad = [
        (
            "subjects[1].tenant_id",
            pb::ListAlertsRequest {
                subjects: vec![
                    Subject::Fleet.to_proto(),
                    pb::TenantOrFleet {
                        subject: Some(pb::tenant_or_fleet::Subject::TenantId("a b".into())),
                    },
                ],
                ..request.clone()
            },
        ),
        (
            "min_level",
            pb::ListAlertsRequest {
                min_level: 9,
                ..request.clone()
            },
        ),
        (
            "start_time",
            pb::ListAlertsRequest {
                start_time: Some(prost_types::Timestamp {
                    seconds: 1,
                    nanos: -1,
                }),
                ..request.clone()
            },
        ),
        (
            "page_size",
            pb::ListAlertsRequest {
                page_size: -1,
                ..request.clone()
            },
        ),
        (
            "page_size",
            pb::ListAlertsRequest {
                page_size: 1_001,
                ..request.clone()
            },
        ),
        (
            "page_token",
            pb::ListAlertsRequest {
                page_token: "garbage".into(),
                ..request.clone()
            },
        ),
    ];
    for (field, request) in bad {
        let err = store.list(&request).await.unwrap_err();
        assert_eq!(err.field(), Some(field), "{request:?}");
        let status = tonic::Status::from(err);
        assert_eq!(status.code(), Code::InvalidArgument);
        assert!(status.message().starts_with(&format!("{field}: ")));
    }
}

#[tokio::test]
async fn acknowledge_keeps_the_first_and_is_all_or_nothing() {
    let redis = RedisServer::start().await.unwrap();
    let store = store(&redis).await;
    let alerts: Vec<pb::Alert> = (0..5)
        .map(|i| {
            with_id(alert(
                &tenant(&format!("t{i}")),
                NOW + i,
                pb::Level::Green,
                pb::Level::Red,
            ))
        })
        .collect();
    store.insert(&alerts).await.unwrap();
    let id = |i: usize| alerts[i].alert_id.clone();

    let acked = store
        .acknowledge(&[id(1), id(0)], "alice", "first", NOW + 100)
        .await
        .unwrap();
    assert_eq!(ids(&acked), [id(1), id(0)]);
    assert!(acked.iter().all(|a| a.acknowledged_by == "alice"));

    // Request order kept; the first acknowledgement wins; new ones are taken.
    let acked = store
        .acknowledge(&[id(2), id(0), id(1), id(2)], "bob", "second", NOW + 200)
        .await
        .unwrap();
    assert_eq!(ids(&acked), [id(2), id(0), id(1), id(2)]);
    let who: Vec<(&str, &str, i64)> = acked
        .iter()
        .map(|a| {
            (
                a.acknowledged_by.as_str(),
                a.acknowledge_comment.as_str(),
                timestamp_to_ms(a.acknowledged_at.as_ref().unwrap()),
            )
        })
        .collect();
    assert_eq!(
        who,
        [
            ("bob", "second", NOW + 200),
            ("alice", "first", NOW + 100),
            ("alice", "first", NOW + 100),
            ("bob", "second", NOW + 200),
        ]
    );

    // One unknown id: NOT_FOUND naming it, and nothing acknowledged.
    let unknown = alert_id(NOW - 5, &Subject::Fleet);
    let err = store
        .acknowledge(&[id(3), unknown.clone(), id(4)], "carol", "", NOW + 300)
        .await
        .unwrap_err();
    assert!(matches!(&err, AlertError::NotFound(name) if *name == unknown));
    let status = tonic::Status::from(err);
    assert_eq!(status.code(), Code::NotFound);
    assert!(status.message().contains(&unknown));
    for i in [3, 4] {
        assert!(!store.get(&id(i)).await.unwrap().acknowledged);
    }

    // Bad requests name their field.
    let too_many = vec![id(3); 1_001];
    for (field, request) in [
        ("alert_ids", Vec::new()),
        ("alert_ids", too_many),
        ("alert_ids[1]", vec![id(3), "nope".to_owned()]),
    ] {
        let err = store
            .acknowledge(&request, "carol", "", NOW)
            .await
            .unwrap_err();
        assert_eq!(err.field(), Some(field));
        assert_eq!(tonic::Status::from(err).code(), Code::InvalidArgument);
    }
    let err = store
        .acknowledge(&[id(3)], &"x".repeat(257), "", NOW)
        .await
        .unwrap_err();
    assert_eq!(err.field(), Some("acknowledged_by"));
    assert!(!store.get(&id(3)).await.unwrap().acknowledged);
    // Exactly 1,000 is allowed.
    let thousand = vec![id(3); 1_000];
    assert_eq!(
        store
            .acknowledge(&thousand, "dave", "", NOW)
            .await
            .unwrap()
            .len(),
        1_000
    );
}

#[tokio::test]
async fn replay_after_an_id_and_trim_in_batches() {
    let redis = RedisServer::start().await.unwrap();
    let store = store(&redis).await;
    // TRIM_BATCH + 100 alerts a millisecond apart, then three much later.
    let old: Vec<pb::Alert> = (0..TRIM_BATCH + 100)
        .map(|i| {
            let i = i64::try_from(i).unwrap();
            with_id(alert(
                &tenant(&format!("t{}", i % 7)),
                NOW + i,
                pb::Level::Green,
                pb::Level::Yellow,
            ))
        })
        .collect();
    let recent: Vec<pb::Alert> = (0..3)
        .map(|i| {
            with_id(alert(
                &tenant("acme"),
                NOW + 3_600_000 + i,
                pb::Level::Yellow,
                pb::Level::Red,
            ))
        })
        .collect();
    store.insert(&recent).await.unwrap();
    store.insert(&old).await.unwrap();
    store
        .acknowledge(&[old[0].alert_id.clone()], "ops", "", NOW)
        .await
        .unwrap();

    // Replay: strictly after the id, ascending, bounded by the limit; an
    // empty id starts at the oldest.
    let page = store.after(&old[10].alert_id, 5).await.unwrap();
    assert_eq!(ids(&page), ids(&old[11..16]));
    assert_eq!(ids(&store.after("", 2).await.unwrap()), ids(&old[..2]));
    let tail = store
        .after(&old.last().unwrap().alert_id, 10)
        .await
        .unwrap();
    assert_eq!(ids(&tail), ids(&recent));
    assert!(
        store
            .after(&recent[2].alert_id, 10)
            .await
            .unwrap()
            .is_empty()
    );
    assert_eq!(
        store.latest_id().await.unwrap(),
        Some(recent[2].alert_id.clone())
    );
    assert_eq!(
        store.after("bad", 1).await.unwrap_err().field(),
        Some("after_alert_id")
    );

    // Retention: a batch per call, then the rest, then nothing; the recent
    // alerts stay; an id trimmed away still works as a replay start.
    let horizon = NOW + 3_600_000;
    assert_eq!(store.trim(horizon).await.unwrap(), TRIM_BATCH);
    assert_eq!(store.trim(horizon).await.unwrap(), 100);
    assert_eq!(store.trim(horizon).await.unwrap(), 0);
    assert!(matches!(
        store.get(&old[0].alert_id).await.unwrap_err(),
        AlertError::NotFound(_)
    ));
    assert_eq!(
        ids(&store.after(&old[5].alert_id, 10).await.unwrap()),
        ids(&recent)
    );
    let mut conn = raw(&redis).await;
    for (key, left) in [(ALERTS_KEY, 3), (LEVELS_KEY, 3), (ACKS_KEY, 0)] {
        let n: i64 = redis::cmd("HLEN")
            .arg(key)
            .query_async(&mut conn)
            .await
            .unwrap();
        assert_eq!(n, left, "{key}");
    }
    let (page, _) = store
        .list_filtered(&AlertFilter::default(), 0, "")
        .await
        .unwrap();
    assert_eq!(page.len(), 3);
}

#[tokio::test]
async fn retain_trims_on_its_own_until_shutdown() {
    let redis = RedisServer::start().await.unwrap();
    let store = store(&redis).await;
    let acme = tenant("acme");
    let day_ms = 86_400_000;
    store
        .insert(&[
            alert(&acme, NOW - 10 * day_ms, pb::Level::Green, pb::Level::Red),
            alert(&acme, NOW - day_ms, pb::Level::Red, pb::Level::Orange),
        ])
        .await
        .unwrap();
    let clock =
        ManualClock::new(SystemTime::UNIX_EPOCH + Duration::from_millis(NOW.unsigned_abs()));
    let shutdown = Shutdown::new();
    let task = {
        let store = store.clone();
        let token = shutdown.token().clone();
        tokio::spawn(async move {
            store
                .retain(Duration::from_secs(7 * 86_400), Arc::new(clock), token)
                .await;
        })
    };
    wait_until(PATIENCE, || async {
        store
            .get(&alert_id(NOW - 10 * day_ms, &acme))
            .await
            .is_err()
    })
    .await
    .unwrap();
    assert!(store.get(&alert_id(NOW - day_ms, &acme)).await.is_ok());
    shutdown.trigger();
    tokio::time::timeout(PATIENCE, task).await.unwrap().unwrap();
}

#[tokio::test]
async fn silences_expire_and_lift() {
    let redis = RedisServer::start().await.unwrap();
    let store = store(&redis).await;
    let acme = tenant("acme");
    assert!(store.silences(NOW).await.unwrap().is_empty());

    store
        .set_silence(&Subject::Fleet, Some(NOW + 1_000), "ops", "maintenance")
        .await
        .unwrap();
    store
        .set_silence(&acme, Some(NOW + 5_000), "ops", "known spike")
        .await
        .unwrap();
    let silences = store.silences(NOW).await.unwrap();
    assert_eq!(silences.len(), 2);
    assert_eq!(silences[&Subject::Fleet], NOW + 1_000);
    assert_eq!(silences[&acme], NOW + 5_000);

    // Expired at its end instant, ignored afterwards.
    let silences = store.silences(NOW + 1_000).await.unwrap();
    assert_eq!(silences.keys().collect::<Vec<_>>(), [&acme]);
    assert_eq!(
        store
            .silenced_until(&Subject::Fleet, NOW + 999)
            .await
            .unwrap(),
        Some(NOW + 1_000)
    );
    assert_eq!(
        store
            .silenced_until(&Subject::Fleet, NOW + 1_000)
            .await
            .unwrap(),
        None
    );
    assert_eq!(
        store.silenced_until(&tenant("beta"), NOW).await.unwrap(),
        None
    );

    // Setting again replaces; None lifts.
    store
        .set_silence(&acme, Some(NOW + 9_000), "ops", "longer")
        .await
        .unwrap();
    assert_eq!(
        store.silenced_until(&acme, NOW).await.unwrap(),
        Some(NOW + 9_000)
    );
    store.set_silence(&acme, None, "", "").await.unwrap();
    assert_eq!(store.silenced_until(&acme, NOW).await.unwrap(), None);
    assert!(!store.silences(NOW).await.unwrap().contains_key(&acme));
    let err = store
        .set_silence(&acme, Some(NOW + 1), "ops", &"x".repeat(4_097))
        .await
        .unwrap_err();
    assert_eq!(err.field(), Some("comment"));
}

#[test]
fn silence_durations_are_validated() {
    let d = |seconds: i64, nanos: i32| prost_types::Duration { seconds, nanos };
    assert_eq!(silence_until(Some(&d(0, 0)), NOW).unwrap(), None);
    assert_eq!(
        silence_until(Some(&d(60, 0)), NOW).unwrap(),
        Some(NOW + 60_000)
    );
    // A fraction of a millisecond rounds up: a positive duration never lifts.
    assert_eq!(silence_until(Some(&d(0, 1)), NOW).unwrap(), Some(NOW + 1));
    assert_eq!(
        silence_until(Some(&d(1, 500_000_000)), NOW).unwrap(),
        Some(NOW + 1_500)
    );
    let thirty_days = 30 * 86_400;
    assert_eq!(
        silence_until(Some(&d(thirty_days, 0)), NOW).unwrap(),
        Some(NOW + thirty_days * 1_000)
    );
    for bad in [
        None,
        Some(d(-1, 0)),
        Some(d(0, -1)),
        Some(d(thirty_days, 1)),
        Some(d(thirty_days + 1, 0)),
        Some(d(1, 1_000_000_000)),
    ] {
        let err = silence_until(bad.as_ref(), NOW).unwrap_err();
        assert_eq!(err.field(), Some("duration"), "{bad:?}");
        assert_eq!(tonic::Status::from(err).code(), Code::InvalidArgument);
    }
}

fn shadow_request(
    scope: Option<pb::set_shadow_mode_request::Scope>,
    setting: i32,
) -> pb::SetShadowModeRequest {
    pb::SetShadowModeRequest { scope, setting }
}

#[tokio::test]
async fn shadow_mode_round_trips() {
    use pb::set_shadow_mode_request::Scope;
    let redis = RedisServer::start().await.unwrap();
    let store = store(&redis).await;
    assert_eq!(
        store.shadow_config().await.unwrap(),
        pb::ShadowModeConfig::default()
    );

    let on = i32::from(pb::ShadowSetting::On);
    let off = i32::from(pb::ShadowSetting::Off);
    let inherit = i32::from(pb::ShadowSetting::Inherit);
    let config = store
        .set_shadow_mode(&shadow_request(Some(Scope::Global(true)), on))
        .await
        .unwrap();
    assert!(config.global_shadow);
    store
        .set_shadow_mode(&shadow_request(Some(Scope::TenantId("zeta".into())), off))
        .await
        .unwrap();
    let config = store
        .set_shadow_mode(&shadow_request(Some(Scope::TenantId("acme".into())), on))
        .await
        .unwrap();
    let overrides = |config: &pb::ShadowModeConfig| {
        config
            .overrides
            .iter()
            .map(|o| (o.tenant_id.clone(), o.shadow))
            .collect::<Vec<_>>()
    };
    assert_eq!(
        overrides(&config),
        [("acme".to_owned(), true), ("zeta".to_owned(), false)]
    );
    assert_eq!(store.shadow_config().await.unwrap(), config);
    let id = |s: &str| TenantId::parse(s).unwrap();
    assert!(is_shadow(&config, &id("acme")));
    assert!(!is_shadow(&config, &id("zeta")));
    assert!(is_shadow(&config, &id("other")));

    // Global off: the override of acme still holds; inherit removes it.
    let config = store.set_shadow_global(false).await.unwrap();
    assert!(!config.global_shadow);
    assert!(is_shadow(&config, &id("acme")));
    assert!(!is_shadow(&config, &id("other")));
    let config = store
        .set_shadow_mode(&shadow_request(
            Some(Scope::TenantId("acme".into())),
            inherit,
        ))
        .await
        .unwrap();
    assert_eq!(overrides(&config), [("zeta".to_owned(), false)]);
    assert!(!is_shadow(&config, &id("acme")));
    let config = store.set_shadow_tenant(&id("zeta"), None).await.unwrap();
    assert_eq!(config, pb::ShadowModeConfig::default());
}

#[test]
fn shadow_requests_are_validated() {
    use pb::set_shadow_mode_request::Scope;
    let on = i32::from(pb::ShadowSetting::On);
    let off = i32::from(pb::ShadowSetting::Off);
    let inherit = i32::from(pb::ShadowSetting::Inherit);
    let unspecified = i32::from(pb::ShadowSetting::Unspecified);
    assert_eq!(
        ShadowChange::from_request(&shadow_request(Some(Scope::Global(true)), off)).unwrap(),
        ShadowChange::Global(false)
    );
    assert_eq!(
        ShadowChange::from_request(&shadow_request(
            Some(Scope::TenantId("acme".into())),
            inherit
        ))
        .unwrap(),
        ShadowChange::Tenant {
            tenant: TenantId::parse("acme").unwrap(),
            shadow: None
        }
    );
    for (field, request) in [
        ("scope", shadow_request(None, on)),
        ("global", shadow_request(Some(Scope::Global(false)), on)),
        (
            "setting",
            shadow_request(Some(Scope::Global(true)), inherit),
        ),
        (
            "setting",
            shadow_request(Some(Scope::Global(true)), unspecified),
        ),
        (
            "setting",
            shadow_request(Some(Scope::TenantId("acme".into())), unspecified),
        ),
        (
            "setting",
            shadow_request(Some(Scope::TenantId("acme".into())), 9),
        ),
        (
            "tenant_id",
            shadow_request(Some(Scope::TenantId("a/b".into())), on),
        ),
        (
            "tenant_id",
            shadow_request(Some(Scope::TenantId(String::new())), on),
        ),
    ] {
        let err = ShadowChange::from_request(&request).unwrap_err();
        assert_eq!(err.field(), Some(field), "{request:?}");
        assert_eq!(tonic::Status::from(err).code(), Code::InvalidArgument);
    }
}

/// The next item of `stream`, failing the test if none comes in time.
async fn next(stream: &mut AlertStream) -> Option<Result<pb::WatchAlertsResponse, tonic::Status>> {
    tokio::time::timeout(PATIENCE, stream.next())
        .await
        .expect("the watcher sent nothing in time")
}

async fn next_alert(stream: &mut AlertStream) -> (String, bool) {
    let response = next(stream).await.unwrap().unwrap();
    (response.alert.unwrap().alert_id, response.replayed)
}

fn fast() -> WatchConfig {
    WatchConfig {
        poll_interval: Duration::from_millis(20),
        ..WatchConfig::default()
    }
}

#[tokio::test]
async fn watch_replays_after_an_id_then_follows_alerts_stored_by_another_connection() {
    let redis = RedisServer::start().await.unwrap();
    let watcher_store = store(&redis).await;
    // Another replica: its own connection.
    let other = store(&redis).await;
    let acme = tenant("acme");
    let history: Vec<pb::Alert> = (0..5)
        .map(|i| {
            with_id(alert(
                &acme,
                NOW + i * 1_000,
                pb::Level::Green,
                pb::Level::Orange,
            ))
        })
        .collect();
    other.insert(&history).await.unwrap();
    // Not watched: another subject, and a level below the minimum.
    other
        .insert(&[
            alert(&tenant("beta"), NOW + 500, pb::Level::Green, pb::Level::Red),
            alert(&acme, NOW + 600, pb::Level::Green, pb::Level::Yellow),
        ])
        .await
        .unwrap();

    let shutdown = Shutdown::new();
    let request = pb::WatchAlertsRequest {
        subjects: vec![acme.to_proto()],
        min_level: pb::Level::Orange.into(),
        after_alert_id: history[1].alert_id.clone(),
    };
    let mut stream = watch_alerts(watcher_store, request, &shutdown, &fast())
        .await
        .unwrap();
    for alert in &history[2..] {
        assert_eq!(
            next_alert(&mut stream).await,
            (alert.alert_id.clone(), true)
        );
    }

    // Live: stored by the other connection after the replay.
    let live = alert(&acme, NOW + 60_000, pb::Level::Orange, pb::Level::Red);
    other.insert(std::slice::from_ref(&live)).await.unwrap();
    assert_eq!(
        next_alert(&mut stream).await,
        (alert_id(NOW + 60_000, &acme), false)
    );
    // Stored late with a lower id (another replica's slower flush): still
    // delivered, as the feed is in insertion order.
    other
        .insert(&[
            alert(
                &tenant("beta"),
                NOW + 30_000,
                pb::Level::Green,
                pb::Level::Red,
            ),
            alert(&acme, NOW + 30_000, pb::Level::Yellow, pb::Level::Orange),
        ])
        .await
        .unwrap();
    assert_eq!(
        next_alert(&mut stream).await,
        (alert_id(NOW + 30_000, &acme), false)
    );
    // Re-flushing a stored alert is not news.
    other.insert(&[live]).await.unwrap();
    other
        .insert(&[alert(
            &acme,
            NOW + 90_000,
            pb::Level::Red,
            pb::Level::Orange,
        )])
        .await
        .unwrap();
    assert_eq!(
        next_alert(&mut stream).await,
        (alert_id(NOW + 90_000, &acme), false)
    );

    // The client goes away: the poller ends.
    drop(stream);
    wait_until(PATIENCE, || async { shutdown.tasks().is_empty() })
        .await
        .unwrap();
}

#[tokio::test]
async fn an_alert_stored_during_the_replay_is_sent_once() {
    let redis = RedisServer::start().await.unwrap();
    let store = store(&redis).await;
    let acme = tenant("acme");
    let history: Vec<pb::Alert> = (0..5)
        .map(|i| with_id(alert(&acme, NOW + i, pb::Level::Green, pb::Level::Red)))
        .collect();
    store.insert(&history).await.unwrap();
    let shutdown = Shutdown::new();
    // Room for one alert and two per read: the replay stalls on the second
    // alert until the test reads, so the insert below lands mid-replay.
    let config = WatchConfig {
        channel_capacity: 1,
        batch: 2,
        ..fast()
    };
    let request = pb::WatchAlertsRequest {
        after_alert_id: alert_id(NOW - 1, &Subject::Fleet),
        ..pb::WatchAlertsRequest::default()
    };
    let mut stream = watch_alerts(store.clone(), request, &shutdown, &config)
        .await
        .unwrap();
    let during = with_id(alert(&acme, NOW + 10, pb::Level::Red, pb::Level::Orange));
    store.insert(std::slice::from_ref(&during)).await.unwrap();
    for alert in history.iter().chain([&during]) {
        assert_eq!(
            next_alert(&mut stream).await,
            (alert.alert_id.clone(), true)
        );
    }
    let after = with_id(alert(&acme, NOW + 20, pb::Level::Orange, pb::Level::Yellow));
    store.insert(std::slice::from_ref(&after)).await.unwrap();
    assert_eq!(next_alert(&mut stream).await, (after.alert_id, false));
}

#[tokio::test]
async fn a_watcher_that_never_reads_is_aborted() {
    let redis = RedisServer::start().await.unwrap();
    let store = store(&redis).await;
    let shutdown = Shutdown::new();
    let config = WatchConfig {
        channel_capacity: 2,
        ..fast()
    };
    let mut stream = watch_alerts(
        store.clone(),
        pb::WatchAlertsRequest::default(),
        &shutdown,
        &config,
    )
    .await
    .unwrap();
    let alerts: Vec<pb::Alert> = (0..3)
        .map(|i| {
            alert(
                &tenant(&format!("t{i}")),
                NOW,
                pb::Level::Green,
                pb::Level::Red,
            )
        })
        .collect();
    store.insert(&alerts).await.unwrap();
    // The poller gives up on its own, without the consumer reading.
    wait_until(PATIENCE, || async { shutdown.tasks().is_empty() })
        .await
        .unwrap();
    let status = next(&mut stream).await.unwrap().unwrap_err();
    assert_eq!(status.code(), Code::Aborted);
    assert!(
        status.message().contains("resume with after_alert_id"),
        "{status:?}"
    );
    assert!(next(&mut stream).await.is_none());
}

#[tokio::test]
async fn shutdown_ends_watchers_with_unavailable() {
    let redis = RedisServer::start().await.unwrap();
    let store = store(&redis).await;
    let shutdown = Shutdown::new();
    let mut stream = watch_alerts(store, pb::WatchAlertsRequest::default(), &shutdown, &fast())
        .await
        .unwrap();
    shutdown.trigger();
    let status = next(&mut stream).await.unwrap().unwrap_err();
    assert_eq!(status.code(), Code::Unavailable);
    assert!(next(&mut stream).await.is_none());
    wait_until(PATIENCE, || async { shutdown.tasks().is_empty() })
        .await
        .unwrap();
}

#[tokio::test]
async fn watch_requests_are_validated() {
    let redis = RedisServer::start().await.unwrap();
    let store = store(&redis).await;
    let shutdown = Shutdown::new();
    let cases = [
        (
            "after_alert_id",
            pb::WatchAlertsRequest {
                after_alert_id: "yesterday".into(),
                ..pb::WatchAlertsRequest::default()
            },
        ),
        (
            "subjects[0].fleet",
            pb::WatchAlertsRequest {
                subjects: vec![pb::TenantOrFleet {
                    subject: Some(pb::tenant_or_fleet::Subject::Fleet(false)),
                }],
                ..pb::WatchAlertsRequest::default()
            },
        ),
        (
            "subjects[1]",
            pb::WatchAlertsRequest {
                subjects: vec![
                    Subject::Fleet.to_proto(),
                    pb::TenantOrFleet { subject: None },
                ],
                ..pb::WatchAlertsRequest::default()
            },
        ),
        (
            "min_level",
            pb::WatchAlertsRequest {
                min_level: 7,
                ..pb::WatchAlertsRequest::default()
            },
        ),
    ];
    for (field, request) in cases {
        let Err(err) = watch_alerts(store.clone(), request, &shutdown, &fast()).await else {
            panic!("{field}: accepted");
        };
        assert_eq!(err.field(), Some(field));
        assert_eq!(tonic::Status::from(err).code(), Code::InvalidArgument);
    }
    // A well-formed id that was never stored (or is past retention) is fine.
    let request = pb::WatchAlertsRequest {
        after_alert_id: alert_id(NOW, &Subject::Fleet),
        ..pb::WatchAlertsRequest::default()
    };
    assert!(
        watch_alerts(store, request, &shutdown, &fast())
            .await
            .is_ok()
    );
    assert!(shutdown.tasks().len() <= 1);
}

#[tokio::test]
async fn works_on_redis_cluster() {
    let cluster = RedisCluster::start().await.unwrap();
    let store = AlertStore::connect(&cluster.urls(), true, TIMEOUT)
        .await
        .unwrap();
    let acme = tenant("acme");
    let alerts: Vec<pb::Alert> = (0..4)
        .map(|i| with_id(alert(&acme, NOW + i, pb::Level::Green, pb::Level::Red)))
        .collect();
    assert_eq!(store.insert(&alerts).await.unwrap().len(), 4);
    let (page, token) = store
        .list_filtered(&AlertFilter::default(), 3, "")
        .await
        .unwrap();
    assert_eq!(ids(&page), [3, 2, 1].map(|i| alerts[i].alert_id.clone()));
    let (page, token) = store
        .list_filtered(&AlertFilter::default(), 3, &token)
        .await
        .unwrap();
    assert_eq!(ids(&page), [alerts[0].alert_id.clone()]);
    assert_eq!(token, "");
    let acked = store
        .acknowledge(&[alerts[1].alert_id.clone()], "ops", "", NOW)
        .await
        .unwrap();
    assert!(acked[0].acknowledged);
    assert_eq!(
        ids(&store.after(&alerts[1].alert_id, 10).await.unwrap()).len(),
        2
    );
    assert_eq!(store.trim(NOW + 1).await.unwrap(), 1);
    store
        .set_silence(&Subject::Fleet, Some(NOW + 10), "ops", "")
        .await
        .unwrap();
    assert_eq!(store.silences(NOW).await.unwrap().len(), 1);
    assert!(store.set_shadow_global(true).await.unwrap().global_shadow);

    // A watcher on the cluster sees a new alert.
    let shutdown = Shutdown::new();
    let mut stream = watch_alerts(
        store.clone(),
        pb::WatchAlertsRequest::default(),
        &shutdown,
        &fast(),
    )
    .await
    .unwrap();
    let live = with_id(alert(
        &Subject::Fleet,
        NOW + 100,
        pb::Level::Green,
        pb::Level::Yellow,
    ));
    store.insert(std::slice::from_ref(&live)).await.unwrap();
    assert_eq!(next_alert(&mut stream).await, (live.alert_id, false));
    shutdown.trigger();
}

#[tokio::test]
async fn an_unreachable_redis_is_unavailable() {
    let redis = RedisServer::start().await.unwrap();
    let store = AlertStore::connect(&[redis.url()], false, Duration::from_millis(300))
        .await
        .unwrap();
    drop(redis);
    let err = store
        .get(&alert_id(NOW, &Subject::Fleet))
        .await
        .unwrap_err();
    assert!(
        matches!(err, AlertError::Redis(_) | AlertError::Timeout(_)),
        "{err:?}"
    );
    let status = tonic::Status::from(err);
    assert_eq!(status.code(), Code::Unavailable);
    assert_eq!(
        tenantmeter_runtime::error::retry_after(&status),
        Some(Duration::from_secs(1))
    );
}
