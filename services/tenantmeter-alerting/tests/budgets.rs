#![allow(clippy::unwrap_used, clippy::expect_used)]
//! Budgets against a real redis-server (and one Redis Cluster case): round
//! trips, ListBudgets order and paging, validation naming fields, proto
//! conversions and error statuses.

use std::time::Duration;

use tenantmeter_alerting::budgets::{
    BUDGETS_KEY, Budget, BudgetError, BudgetStore, Enforcement, ORDER_KEY, Subject, ms_to_timestamp,
};
use tenantmeter_domain::ids::TenantId;
use tenantmeter_domain::levels::CostBasis;
use tenantmeter_domain::window::CalendarPeriod;
use tenantmeter_proto::v1 as pb;
use tenantmeter_testkit::{RedisCluster, RedisServer};
use tonic::Code;

const TIMEOUT: Duration = Duration::from_secs(2);
/// One USD in nano-USD.
const USD: i64 = 1_000_000_000;
const NOW: i64 = 1_767_225_600_000; // 2026-01-01T00:00:00Z

fn tenant(id: &str) -> Subject {
    Subject::Tenant(TenantId::parse(id).unwrap())
}

fn budget(subject: Subject, period: CalendarPeriod, usd: i64) -> Budget {
    Budget {
        subject,
        period,
        basis: CostBasis::TenantCharge,
        amount_nanos_usd: usd * USD,
        enforcement: Enforcement::Soft,
        updated_at_ms: 0,
    }
}

async fn store(redis: &RedisServer) -> BudgetStore {
    BudgetStore::connect(&[redis.url()], false, TIMEOUT)
        .await
        .unwrap()
}

/// (subject, period, amount) of each budget, for compact order assertions.
fn keys(budgets: &[Budget]) -> Vec<(String, CalendarPeriod, i64)> {
    budgets
        .iter()
        .map(|b| (b.subject.to_string(), b.period, b.amount_nanos_usd / USD))
        .collect()
}

#[tokio::test]
async fn set_get_replace_delete_round_trip() {
    let redis = RedisServer::start().await.unwrap();
    let store = store(&redis).await;
    let acme = tenant("acme");

    assert!(store.get(&acme).await.unwrap().is_empty());

    // Day first, to show get() returns month first whatever the insert order.
    let day = Budget {
        basis: CostBasis::ProviderCost,
        enforcement: Enforcement::Hard,
        ..budget(acme.clone(), CalendarPeriod::Day, 40)
    };
    let stored_day = store.set(&day, NOW).await.unwrap();
    assert_eq!(stored_day.updated_at_ms, NOW);
    let month = budget(acme.clone(), CalendarPeriod::Month, 1_100);
    store.set(&month, NOW + 1).await.unwrap();

    let got = store.get(&acme).await.unwrap();
    assert_eq!(
        got,
        vec![
            Budget {
                updated_at_ms: NOW + 1,
                ..month.clone()
            },
            Budget {
                updated_at_ms: NOW,
                ..day.clone()
            },
        ]
    );

    // Replace the monthly budget: same key, new amount, basis, enforcement, time.
    let replaced = Budget {
        amount_nanos_usd: 2_000 * USD,
        basis: CostBasis::ProviderCost,
        enforcement: Enforcement::Hard,
        ..month.clone()
    };
    let stored = store.set(&replaced, NOW + 5_000).await.unwrap();
    assert_eq!(stored.updated_at_ms, NOW + 5_000);
    let got = store.get(&acme).await.unwrap();
    assert_eq!(got.len(), 2);
    assert_eq!(got[0], stored);
    assert_eq!(got[0].amount_nanos_usd, 2_000_000_000_000);
    assert_eq!(
        store.get_one(&acme, CalendarPeriod::Month).await.unwrap(),
        stored
    );

    // Exactly one hash field and one index member per budget.
    let mut conn = redis
        .client()
        .unwrap()
        .get_multiplexed_async_connection()
        .await
        .unwrap();
    let n: i64 = redis::cmd("HLEN")
        .arg(BUDGETS_KEY)
        .query_async(&mut conn)
        .await
        .unwrap();
    assert_eq!(n, 2);
    let members: Vec<String> = redis::cmd("ZRANGE")
        .arg(ORDER_KEY)
        .arg(0)
        .arg(-1)
        .query_async(&mut conn)
        .await
        .unwrap();
    assert_eq!(members, ["acme 1-month", "acme 2-day"]);

    // Another tenant is untouched by acme's budgets.
    assert!(store.get(&tenant("acme-2")).await.unwrap().is_empty());

    assert!(store.delete(&acme, CalendarPeriod::Day).await.unwrap());
    assert!(!store.delete(&acme, CalendarPeriod::Day).await.unwrap());
    assert_eq!(store.get(&acme).await.unwrap(), vec![stored]);
    let err = store.get_one(&acme, CalendarPeriod::Day).await.unwrap_err();
    assert!(matches!(err, BudgetError::NotFound(ref name) if name == "acme 2-day"));
    assert_eq!(tonic::Status::from(err).code(), Code::NotFound);

    assert!(store.delete(&acme, CalendarPeriod::Month).await.unwrap());
    assert!(store.get(&acme).await.unwrap().is_empty());
    let members: Vec<String> = redis::cmd("ZRANGE")
        .arg(ORDER_KEY)
        .arg(0)
        .arg(-1)
        .query_async(&mut conn)
        .await
        .unwrap();
    assert!(members.is_empty());
}

#[tokio::test]
async fn list_orders_fleet_first_then_tenants_month_first_and_pages() {
    let redis = RedisServer::start().await.unwrap();
    let store = store(&redis).await;

    // Inserted out of order; ids chosen so a naive separator would misorder
    // them ("ab" vs "a", "-z" before letters).
    let inserts = [
        budget(tenant("ab"), CalendarPeriod::Day, 7),
        budget(tenant("a"), CalendarPeriod::Day, 3),
        budget(Subject::Fleet, CalendarPeriod::Day, 2),
        budget(tenant("zeta"), CalendarPeriod::Month, 9),
        budget(tenant("ab"), CalendarPeriod::Month, 6),
        budget(tenant("-z"), CalendarPeriod::Month, 5),
        budget(Subject::Fleet, CalendarPeriod::Month, 1),
        budget(tenant("a"), CalendarPeriod::Month, 4),
    ];
    for (i, b) in inserts.iter().enumerate() {
        store.set(b, NOW + i64::try_from(i).unwrap()).await.unwrap();
    }
    let expected = vec![
        ("fleet".to_owned(), CalendarPeriod::Month, 1),
        ("fleet".to_owned(), CalendarPeriod::Day, 2),
        ("tenant -z".to_owned(), CalendarPeriod::Month, 5),
        ("tenant a".to_owned(), CalendarPeriod::Month, 4),
        ("tenant a".to_owned(), CalendarPeriod::Day, 3),
        ("tenant ab".to_owned(), CalendarPeriod::Month, 6),
        ("tenant ab".to_owned(), CalendarPeriod::Day, 7),
        ("tenant zeta".to_owned(), CalendarPeriod::Month, 9),
    ];

    // One page (0 means 100): everything, no next token.
    let (all_page, next) = store.list(0, "").await.unwrap();
    assert_eq!(keys(&all_page), expected);
    assert_eq!(next, "");
    assert_eq!(keys(&store.all().await.unwrap()), expected);
    assert_eq!(store.all().await.unwrap(), all_page);

    // Pages of 3: 3 + 3 + 2.
    let (p1, t1) = store.list(3, "").await.unwrap();
    assert_eq!(keys(&p1), expected[0..3]);
    assert_eq!(t1, "-z 1-month");
    let (p2, t2) = store.list(3, &t1).await.unwrap();
    assert_eq!(keys(&p2), expected[3..6]);
    assert_eq!(t2, "ab 1-month");
    let (p3, t3) = store.list(3, &t2).await.unwrap();
    assert_eq!(keys(&p3), expected[6..8]);
    assert_eq!(t3, "");

    // An exact fit: the last full page says there is no next one.
    let (p, t) = store.list(8, "").await.unwrap();
    assert_eq!(p.len(), 8);
    assert_eq!(t, "");

    // A token whose budget was deleted between pages still pages on.
    assert!(
        store
            .delete(&tenant("-z"), CalendarPeriod::Month)
            .await
            .unwrap()
    );
    let (p2, _) = store.list(3, &t1).await.unwrap();
    assert_eq!(keys(&p2), expected[3..6]);

    // Bad sizes and tokens name their field.
    for size in [-1, 1_001] {
        let err = store.list(size, "").await.unwrap_err();
        assert_eq!(err.field(), Some("page_size"), "{size}");
        let status = tonic::Status::from(err);
        assert_eq!(status.code(), Code::InvalidArgument);
        assert!(status.message().starts_with("page_size: "), "{status:?}");
    }
    assert_eq!(store.list(1_000, "").await.unwrap().0.len(), 7);
    for token in ["garbage", "a 3-week", "bad id! 1-month"] {
        let err = store.list(3, token).await.unwrap_err();
        assert_eq!(err.field(), Some("page_token"), "{token}");
    }
}

#[tokio::test]
async fn works_on_redis_cluster() {
    let cluster = RedisCluster::start().await.unwrap();
    let store = BudgetStore::connect(&cluster.urls(), true, TIMEOUT)
        .await
        .unwrap();
    let fleet = budget(Subject::Fleet, CalendarPeriod::Month, 50_000);
    let acme = budget(tenant("acme"), CalendarPeriod::Month, 1_000);
    let acme_day = budget(tenant("acme"), CalendarPeriod::Day, 50);
    for b in [&acme_day, &acme, &fleet] {
        store.set(b, NOW).await.unwrap();
    }
    let (page, token) = store.list(2, "").await.unwrap();
    assert_eq!(
        keys(&page),
        [
            ("fleet".to_owned(), CalendarPeriod::Month, 50_000),
            ("tenant acme".to_owned(), CalendarPeriod::Month, 1_000),
        ]
    );
    let (page, token) = store.list(2, &token).await.unwrap();
    assert_eq!(
        keys(&page),
        [("tenant acme".to_owned(), CalendarPeriod::Day, 50)]
    );
    assert_eq!(token, "");
    assert_eq!(store.all().await.unwrap().len(), 3);
    assert_eq!(
        store.get(&Subject::Fleet).await.unwrap(),
        vec![Budget {
            updated_at_ms: NOW,
            ..fleet
        }]
    );
    assert!(
        store
            .delete(&tenant("acme"), CalendarPeriod::Day)
            .await
            .unwrap()
    );
    assert_eq!(store.get(&tenant("acme")).await.unwrap().len(), 1);
}

#[tokio::test]
async fn set_refuses_invalid_budgets_and_stores_nothing() {
    let redis = RedisServer::start().await.unwrap();
    let store = store(&redis).await;

    let hard_fleet = Budget {
        enforcement: Enforcement::Hard,
        ..budget(Subject::Fleet, CalendarPeriod::Month, 100)
    };
    let err = store.set(&hard_fleet, NOW).await.unwrap_err();
    assert_eq!(err.field(), Some("budget.enforcement"));
    let status = tonic::Status::from(err);
    assert_eq!(status.code(), Code::InvalidArgument);
    assert!(status.message().starts_with("budget.enforcement: "));

    let zero = budget(tenant("acme"), CalendarPeriod::Month, 0);
    let err = store.set(&zero, NOW).await.unwrap_err();
    assert_eq!(err.field(), Some("budget.amount_nanos_usd"));

    assert!(store.all().await.unwrap().is_empty());
    assert!(store.get(&Subject::Fleet).await.unwrap().is_empty());
}

#[tokio::test]
async fn an_unreachable_redis_is_unavailable() {
    let redis = RedisServer::start().await.unwrap();
    let store = BudgetStore::connect(&[redis.url()], false, Duration::from_millis(300))
        .await
        .unwrap();
    drop(redis);
    let err = store.get(&Subject::Fleet).await.unwrap_err();
    assert!(
        matches!(err, BudgetError::Redis(_) | BudgetError::Timeout(_)),
        "{err:?}"
    );
    assert_eq!(tonic::Status::from(err).code(), Code::Unavailable);
}

fn proto_budget() -> pb::Budget {
    pb::Budget {
        subject: Some(pb::TenantOrFleet {
            subject: Some(pb::tenant_or_fleet::Subject::TenantId("acme".into())),
        }),
        period: pb::CalendarPeriod::Month.into(),
        basis: pb::CostBasis::ProviderCost.into(),
        amount_nanos_usd: 1_100 * USD,
        enforcement: pb::BudgetEnforcement::Hard.into(),
        updated_at: Some(ms_to_timestamp(NOW + 250)),
    }
}

#[test]
fn proto_conversions_round_trip() {
    let proto = proto_budget();
    let domain = Budget::from_proto(&proto).unwrap();
    assert_eq!(
        domain,
        Budget {
            subject: tenant("acme"),
            period: CalendarPeriod::Month,
            basis: CostBasis::ProviderCost,
            amount_nanos_usd: 1_100_000_000_000,
            enforcement: Enforcement::Hard,
            updated_at_ms: NOW + 250,
        }
    );
    assert_eq!(domain.to_proto(), proto);
    assert_eq!(
        domain.to_proto().updated_at.unwrap(),
        ms_to_timestamp(NOW + 250)
    );
    assert_eq!(ms_to_timestamp(NOW + 250).seconds, 1_767_225_600);
    assert_eq!(ms_to_timestamp(NOW + 250).nanos, 250_000_000);

    // The fleet, day, soft.
    let fleet = budget(Subject::Fleet, CalendarPeriod::Day, 3);
    let proto = fleet.to_proto();
    assert_eq!(
        proto.subject.as_ref().unwrap().subject,
        Some(pb::tenant_or_fleet::Subject::Fleet(true))
    );
    assert_eq!(proto.period, i32::from(pb::CalendarPeriod::Day));
    assert_eq!(proto.basis, i32::from(pb::CostBasis::TenantCharge));
    assert_eq!(proto.enforcement, i32::from(pb::BudgetEnforcement::Soft));
    assert_eq!(proto.updated_at, None, "never stored: no updated_at");
    assert_eq!(Budget::from_proto(&proto).unwrap(), fleet);

    // Unspecified basis is tenant charge, unspecified enforcement is soft.
    let defaults = pb::Budget {
        basis: pb::CostBasis::Unspecified.into(),
        enforcement: pb::BudgetEnforcement::Unspecified.into(),
        updated_at: None,
        ..proto_budget()
    };
    let parsed = Budget::from_proto(&defaults).unwrap();
    assert_eq!(parsed.basis, CostBasis::TenantCharge);
    assert_eq!(parsed.enforcement, Enforcement::Soft);
    assert_eq!(parsed.updated_at_ms, 0);

    // Level engine figures carry the budget through.
    let figures = domain.figures(500 * USD, 1_200 * USD);
    assert_eq!(figures.budget_nanos, 1_100 * USD);
    assert_eq!(figures.basis, CostBasis::ProviderCost);
    assert_eq!(figures.period, CalendarPeriod::Month);
}

#[test]
fn validation_errors_name_the_field() {
    let cases: Vec<(&str, pb::Budget)> = vec![
        (
            "budget.subject",
            pb::Budget {
                subject: None,
                ..proto_budget()
            },
        ),
        (
            "budget.subject",
            pb::Budget {
                subject: Some(pb::TenantOrFleet { subject: None }),
                ..proto_budget()
            },
        ),
        (
            "budget.subject.tenant_id",
            pb::Budget {
                subject: Some(pb::TenantOrFleet {
                    subject: Some(pb::tenant_or_fleet::Subject::TenantId("no spaces".into())),
                }),
                ..proto_budget()
            },
        ),
        (
            "budget.subject.tenant_id",
            pb::Budget {
                subject: Some(pb::TenantOrFleet {
                    subject: Some(pb::tenant_or_fleet::Subject::TenantId(String::new())),
                }),
                ..proto_budget()
            },
        ),
        (
            "budget.subject.fleet",
            pb::Budget {
                subject: Some(pb::TenantOrFleet {
                    subject: Some(pb::tenant_or_fleet::Subject::Fleet(false)),
                }),
                ..proto_budget()
            },
        ),
        (
            "budget.period",
            pb::Budget {
                period: pb::CalendarPeriod::Unspecified.into(),
                ..proto_budget()
            },
        ),
        (
            "budget.period",
            pb::Budget {
                period: 9,
                ..proto_budget()
            },
        ),
        (
            "budget.basis",
            pb::Budget {
                basis: 9,
                ..proto_budget()
            },
        ),
        (
            "budget.amount_nanos_usd",
            pb::Budget {
                amount_nanos_usd: 0,
                ..proto_budget()
            },
        ),
        (
            "budget.amount_nanos_usd",
            pb::Budget {
                amount_nanos_usd: -5,
                ..proto_budget()
            },
        ),
        (
            "budget.enforcement",
            pb::Budget {
                enforcement: 9,
                ..proto_budget()
            },
        ),
        // The contract: INVALID_ARGUMENT for a hard fleet budget.
        (
            "budget.enforcement",
            pb::Budget {
                subject: Some(pb::TenantOrFleet {
                    subject: Some(pb::tenant_or_fleet::Subject::Fleet(true)),
                }),
                enforcement: pb::BudgetEnforcement::Hard.into(),
                ..proto_budget()
            },
        ),
    ];
    for (field, proto) in cases {
        let err = Budget::from_proto(&proto).unwrap_err();
        assert_eq!(err.field(), Some(field), "{proto:?}");
        let status = tonic::Status::from(err);
        assert_eq!(status.code(), Code::InvalidArgument);
        assert!(
            status.message().starts_with(&format!("{field}: ")),
            "{}",
            status.message()
        );
    }

    // A soft fleet budget is fine.
    let soft_fleet = pb::Budget {
        subject: Some(pb::TenantOrFleet {
            subject: Some(pb::tenant_or_fleet::Subject::Fleet(true)),
        }),
        enforcement: pb::BudgetEnforcement::Soft.into(),
        ..proto_budget()
    };
    assert_eq!(
        Budget::from_proto(&soft_fleet).unwrap().subject,
        Subject::Fleet
    );

    // GetBudget/DeleteBudget requests name their own subject field.
    let err = Subject::from_proto(
        Some(&pb::TenantOrFleet {
            subject: Some(pb::tenant_or_fleet::Subject::TenantId("a/b".into())),
        }),
        "subject",
    )
    .unwrap_err();
    assert_eq!(err.field(), Some("subject.tenant_id"));
}
