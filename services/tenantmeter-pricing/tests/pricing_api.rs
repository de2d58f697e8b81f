//! Black-box tests of the pricing service: a real redis-server on a free port,
//! the service on port 0, called through the generated clients.

#![allow(clippy::unwrap_used, clippy::expect_used)] // test support: a failed unwrap is a failed test

use std::net::SocketAddr;
use std::time::Duration;

use tenantmeter_pricing::{PricingConfig, PricingDeps, RunError};
use tenantmeter_proto::v1 as pb;
use tenantmeter_proto::v1::pricing_admin_service_client::PricingAdminServiceClient;
use tenantmeter_proto::v1::pricing_service_client::PricingServiceClient;
use tenantmeter_runtime::shutdown::Shutdown;
use tenantmeter_testkit::RedisServer;
use tokio::net::TcpListener;
use tokio::task::JoinHandle;
use tonic::transport::Channel;
use tonic::{Code, Request};

const ADMIN_TOKEN: &str = "test-admin-token-0123456789";
const SONNET: &str = "anthropic.claude-3-5-sonnet-20240620-v1:0";

/// One pricing replica serving on a port of its own.
struct Replica {
    addr: SocketAddr,
    shutdown: Shutdown,
    task: JoinHandle<Result<(), RunError>>,
}

impl Replica {
    async fn start(redis_url: &str) -> Self {
        Self::start_with(redis_url, PricingConfig::default()).await
    }

    async fn start_with(redis_url: &str, config: PricingConfig) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let shutdown = Shutdown::new();
        let deps = PricingDeps {
            redis_url: redis_url.to_owned(),
            admin_token: Some(ADMIN_TOKEN.to_owned()),
        };
        let task = tokio::spawn(tenantmeter_pricing::run(
            config,
            deps,
            listener,
            shutdown.clone(),
        ));
        let replica = Self {
            addr,
            shutdown,
            task,
        };
        replica.wait_serving().await;
        replica
    }

    async fn channel(&self) -> Channel {
        tonic::transport::Endpoint::from_shared(format!("http://{}", self.addr))
            .unwrap()
            .connect()
            .await
            .unwrap()
    }

    /// Readiness by gRPC health, polled; never a fixed sleep.
    async fn wait_serving(&self) {
        use tonic_health::pb::health_check_response::ServingStatus;
        use tonic_health::pb::{HealthCheckRequest, health_client::HealthClient};
        let url = format!("http://{}", self.addr);
        tenantmeter_testkit::poll_until_ok(Duration::from_secs(20), || {
            let url = url.clone();
            let stopped = self.task.is_finished();
            async move {
                assert!(!stopped, "the service stopped before serving");
                let channel = tonic::transport::Endpoint::from_shared(url)?
                    .connect()
                    .await?;
                let status = HealthClient::new(channel)
                    .check(HealthCheckRequest {
                        service: "tenantmeter.v1.PricingService".into(),
                    })
                    .await?
                    .into_inner()
                    .status;
                anyhow::ensure!(status == ServingStatus::Serving as i32, "status {status}");
                Ok(())
            }
        })
        .await
        .unwrap();
    }

    async fn client(&self) -> PricingServiceClient<Channel> {
        PricingServiceClient::new(self.channel().await)
    }

    async fn admin(&self) -> PricingAdminServiceClient<Channel> {
        PricingAdminServiceClient::new(self.channel().await)
    }

    async fn stop(self) {
        self.shutdown.trigger();
        tokio::time::timeout(Duration::from_secs(20), self.task)
            .await
            .expect("drained within the timeout")
            .unwrap()
            .unwrap();
    }
}

fn admin<T>(message: T) -> Request<T> {
    let mut request = Request::new(message);
    request.metadata_mut().insert(
        "authorization",
        format!("Bearer {ADMIN_TOKEN}").parse().unwrap(),
    );
    request
}

fn usage(input: i64, output: i64) -> pb::TokenUsage {
    pb::TokenUsage {
        input_tokens: input,
        output_tokens: output,
        ..Default::default()
    }
}

fn line(model: &str, usage: pb::TokenUsage) -> pb::QuoteLine {
    pb::QuoteLine {
        model_id: model.into(),
        usage: Some(usage),
        ..Default::default()
    }
}

fn quote_for(
    subject: Option<pb::quote_request::Subject>,
    lines: Vec<pb::QuoteLine>,
) -> pb::QuoteRequest {
    pb::QuoteRequest {
        subject,
        lines,
        period_to_date: vec![],
    }
}

#[tokio::test]
async fn a_million_in_and_out_on_sonnet_costs_exactly_eighteen_dollars() {
    let redis = RedisServer::start().await.unwrap();
    let replica = Replica::start(&redis.url()).await;
    let reply = replica
        .client()
        .await
        .quote(quote_for(
            None,
            vec![line(SONNET, usage(1_000_000, 1_000_000))],
        ))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(reply.provider_cost_nanos_usd, 18_000_000_000);
    // The default plan (starter) charges 1.5x list for the first $100.
    assert_eq!(reply.plan_id, "starter");
    assert_eq!(reply.tenant_charge_nanos_usd, 27_000_000_000);
    assert_eq!(reply.margin_nanos_usd, 9_000_000_000);
    assert_eq!(reply.lines[0].region, "us-east-1");
    assert_eq!(reply.tiers.len(), 1);
    assert_eq!(reply.tiers[0].charge_nanos_usd, 27_000_000_000);
    replica.stop().await;
}

#[tokio::test]
async fn bad_input_gets_the_right_code_and_names_the_field() {
    let redis = RedisServer::start().await.unwrap();
    let replica = Replica::start(&redis.url()).await;
    let mut client = replica.client().await;

    let unknown = client
        .quote(quote_for(None, vec![line("meta.llama9-v1:0", usage(1, 1))]))
        .await
        .unwrap_err();
    assert_eq!(unknown.code(), Code::NotFound, "{unknown:?}");
    assert!(
        unknown.message().contains("meta.llama9-v1:0"),
        "{}",
        unknown.message()
    );

    let negative = client
        .quote(quote_for(None, vec![line(SONNET, usage(-5, 1))]))
        .await
        .unwrap_err();
    assert_eq!(negative.code(), Code::InvalidArgument);
    assert!(
        negative
            .message()
            .starts_with("lines[0].usage.input_tokens: must not be negative"),
        "{}",
        negative.message()
    );

    let huge = client
        .quote(quote_for(
            None,
            vec![line(SONNET, usage(i64::MAX, i64::MAX)); 1000],
        ))
        .await
        .unwrap_err();
    assert_eq!(huge.code(), Code::InvalidArgument, "{huge:?}");
    assert!(huge.message().contains("too large"), "{}", huge.message());

    let bad_tenant = client
        .quote(quote_for(
            Some(pb::quote_request::Subject::TenantId("{t:evil}".into())),
            vec![],
        ))
        .await
        .unwrap_err();
    assert_eq!(bad_tenant.code(), Code::InvalidArgument);
    assert!(
        bad_tenant.message().starts_with("tenant_id:"),
        "{}",
        bad_tenant.message()
    );

    let no_plan = client
        .quote(quote_for(
            Some(pb::quote_request::Subject::PlanId("gold".into())),
            vec![],
        ))
        .await
        .unwrap_err();
    assert_eq!(no_plan.code(), Code::NotFound);
    assert!(no_plan.message().contains("gold"));

    let no_cache_price = client
        .quote(quote_for(
            None,
            vec![line(
                "anthropic.claude-3-haiku-20240307-v1:0",
                pb::TokenUsage {
                    cache_read_input_tokens: 10,
                    ..Default::default()
                },
            )],
        ))
        .await
        .unwrap_err();
    assert_eq!(no_cache_price.code(), Code::InvalidArgument);
    assert!(
        no_cache_price
            .message()
            .starts_with("lines[0].usage.cache_read_input_tokens:"),
        "{}",
        no_cache_price.message()
    );
    replica.stop().await;
}

#[tokio::test]
async fn admin_calls_need_the_admin_token() {
    let redis = RedisServer::start().await.unwrap();
    let replica = Replica::start(&redis.url()).await;
    let mut admin_client = replica.admin().await;
    let request = pb::AssignPlansRequest {
        assignments: vec![pb::TenantPlanAssignment {
            tenant_id: "acme".into(),
            plan_id: "pro".into(),
        }],
    };

    let missing = admin_client
        .assign_plans(request.clone())
        .await
        .unwrap_err();
    assert_eq!(missing.code(), Code::Unauthenticated);

    let mut wrong = Request::new(request.clone());
    wrong
        .metadata_mut()
        .insert("authorization", "Bearer not-the-token".parse().unwrap());
    let wrong = admin_client.assign_plans(wrong).await.unwrap_err();
    assert_eq!(wrong.code(), Code::Unauthenticated);

    let unknown_plan = admin_client
        .assign_plans(admin(pb::AssignPlansRequest {
            assignments: vec![pb::TenantPlanAssignment {
                tenant_id: "acme".into(),
                plan_id: "gold".into(),
            }],
        }))
        .await
        .unwrap_err();
    assert_eq!(unknown_plan.code(), Code::NotFound);
    assert!(
        unknown_plan.message().contains("assignments[0].plan_id"),
        "{}",
        unknown_plan.message()
    );

    admin_client.assign_plans(admin(request)).await.unwrap();
    replica.stop().await;
}

#[tokio::test]
async fn changes_are_versioned_streamed_and_survive_a_restart() {
    let redis = RedisServer::start().await.unwrap();
    let replica = Replica::start(&redis.url()).await;
    let mut client = replica.client().await;
    let mut admin_client = replica.admin().await;

    let mut watch = client
        .watch_price_book(pb::WatchPriceBookRequest { known_version: 0 })
        .await
        .unwrap()
        .into_inner();
    let first = watch.message().await.unwrap().unwrap();
    let start = first.version;
    assert!(matches!(
        first.update,
        Some(pb::watch_price_book_response::Update::Snapshot(_))
    ));

    let price = pb::ModelPrice {
        model_id: "example.tiny-v1:0".into(),
        display_name: "Tiny".into(),
        region: "us-east-1".into(),
        offering: pb::Offering::OnDemand.into(),
        scope: pb::PriceScope::Regional.into(),
        prices: Some(pb::TokenPrices {
            input_usd_per_million_tokens: "0.10".into(),
            output_usd_per_million_tokens: "0.40".into(),
            ..Default::default()
        }),
    };
    let v1 = admin_client
        .upsert_model_prices(admin(pb::UpsertModelPricesRequest {
            prices: vec![price.clone()],
        }))
        .await
        .unwrap()
        .into_inner()
        .version;
    assert_eq!(v1, start + 1);
    let streamed = watch.message().await.unwrap().unwrap();
    assert_eq!(streamed.version, v1);
    assert!(matches!(
        streamed.update,
        Some(pb::watch_price_book_response::Update::PricesUpserted(_))
    ));

    let v2 = admin_client
        .assign_plans(admin(pb::AssignPlansRequest {
            assignments: vec![pb::TenantPlanAssignment {
                tenant_id: "acme".into(),
                plan_id: "at-cost".into(),
            }],
        }))
        .await
        .unwrap()
        .into_inner()
        .version;
    assert_eq!(v2, v1 + 1);
    assert_eq!(watch.message().await.unwrap().unwrap().version, v2);

    // The new price and the assignment are used at once.
    let quote = client
        .quote(quote_for(
            Some(pb::quote_request::Subject::TenantId("acme".into())),
            vec![line("example.tiny-v1:0", usage(1_000_000, 1_000_000))],
        ))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(quote.plan_id, "at-cost");
    assert_eq!(quote.provider_cost_nanos_usd, 500_000_000);
    assert_eq!(quote.tenant_charge_nanos_usd, 500_000_000);
    assert_eq!(quote.price_book_version, v2);

    // A restarted service reloads the same book from Redis without re-seeding.
    replica.stop().await;
    let replica = Replica::start(&redis.url()).await;
    let book = replica
        .client()
        .await
        .get_price_book(pb::GetPriceBookRequest {})
        .await
        .unwrap()
        .into_inner()
        .price_book
        .unwrap();
    assert_eq!(book.version, v2);
    assert!(
        book.prices
            .iter()
            .any(|p| p.model_id == "example.tiny-v1:0")
    );
    assert!(
        book.assignments
            .iter()
            .any(|a| a.tenant_id == "acme" && a.plan_id == "at-cost")
    );
    let plan = replica
        .client()
        .await
        .get_tenant_plan(pb::GetTenantPlanRequest {
            tenant_id: "acme".into(),
        })
        .await
        .unwrap()
        .into_inner();
    assert!(!plan.is_default);
    assert_eq!(plan.plan.unwrap().plan_id, "at-cost");
    replica.stop().await;
}

#[tokio::test]
async fn replicas_follow_each_others_changes() {
    let redis = RedisServer::start().await.unwrap();
    let a = Replica::start(&redis.url()).await;
    let b = Replica::start(&redis.url()).await;
    let mut watch_b = b
        .client()
        .await
        .watch_price_book(pb::WatchPriceBookRequest { known_version: 0 })
        .await
        .unwrap()
        .into_inner();
    let seen = watch_b.message().await.unwrap().unwrap().version;

    let plan = pb::Plan {
        plan_id: "gold".into(),
        display_name: "Gold".into(),
        tier_mode: pb::TierMode::Volume.into(),
        tiers: vec![
            pb::Tier {
                up_to_usd: "100".into(),
                rate: Some(pb::tier::Rate::Multiplier("2".into())),
            },
            pb::Tier {
                up_to_usd: String::new(),
                rate: Some(pb::tier::Rate::Multiplier("1.5".into())),
            },
        ],
        ..Default::default()
    };
    let version = a
        .admin()
        .await
        .upsert_plan(admin(pb::UpsertPlanRequest { plan: Some(plan) }))
        .await
        .unwrap()
        .into_inner()
        .version;
    assert_eq!(version, seen + 1);

    let change = tokio::time::timeout(Duration::from_secs(10), watch_b.message())
        .await
        .expect("replica b streams replica a's change")
        .unwrap()
        .unwrap();
    assert_eq!(change.version, version);
    assert!(matches!(
        change.update,
        Some(pb::watch_price_book_response::Update::PlanUpserted(_))
    ));
    let quote = b
        .client()
        .await
        .quote(quote_for(
            Some(pb::quote_request::Subject::PlanId("gold".into())),
            vec![line(SONNET, usage(1_000_000, 1_000_000))],
        ))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(quote.tenant_charge_nanos_usd, 36_000_000_000);
    a.stop().await;
    b.stop().await;
}

#[tokio::test]
async fn a_malformed_price_file_stops_start_up_naming_file_entry_and_field() {
    let redis = RedisServer::start().await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("prices.toml");
    std::fs::write(
        &path,
        r#"
as_of = "2026-11-01"
source = "test"
default_region = "us-east-1"

[[models]]
model_id = "amazon.nova-micro-v1:0"
display_name = "Nova Micro"
regions = ["us-east-1"]
offering = "on_demand"
scope = "regional"
input = "0.035"
output = "cheap"
"#,
    )
    .unwrap();
    let config = PricingConfig {
        price_book_file: Some(path.clone()),
        ..PricingConfig::default()
    };
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let deps = PricingDeps {
        redis_url: redis.url(),
        admin_token: None,
    };
    let error = tenantmeter_pricing::run(config, deps, listener, Shutdown::new())
        .await
        .unwrap_err();
    let message = error.to_string();
    assert!(
        message.starts_with(&format!(
            "{}: models[0] (amazon.nova-micro-v1:0): output: \"cheap\" is not",
            path.display()
        )),
        "{message}"
    );
}

#[tokio::test]
async fn the_watch_stream_ends_when_the_service_shuts_down() {
    let redis = RedisServer::start().await.unwrap();
    let replica = Replica::start(&redis.url()).await;
    let mut watch = replica
        .client()
        .await
        .watch_price_book(pb::WatchPriceBookRequest { known_version: 0 })
        .await
        .unwrap()
        .into_inner();
    watch.message().await.unwrap().unwrap();
    replica.shutdown.trigger();
    let end = tokio::time::timeout(Duration::from_secs(10), watch.message())
        .await
        .expect("the stream ends on shutdown");
    assert!(matches!(end, Ok(None) | Err(_)));
    replica.stop().await;
}

#[tokio::test]
async fn a_book_lost_from_redis_is_restored_without_losing_changes() {
    let redis = RedisServer::start().await.unwrap();
    let replica = Replica::start(&redis.url()).await;
    let mut admin_client = replica.admin().await;
    let assign = |tenant: &str, plan: &str| {
        admin(pb::AssignPlansRequest {
            assignments: vec![pb::TenantPlanAssignment {
                tenant_id: tenant.into(),
                plan_id: plan.into(),
            }],
        })
    };
    let before = admin_client
        .assign_plans(assign("acme", "pro"))
        .await
        .unwrap()
        .into_inner()
        .version;

    // Someone flushes Redis (or a Redis without persistence restarts).
    let mut conn = redis
        .client()
        .unwrap()
        .get_multiplexed_async_connection()
        .await
        .unwrap();
    let () = redis::cmd("FLUSHALL").query_async(&mut conn).await.unwrap();

    // The next change restores the replica's copy first; versions keep rising.
    let after = admin_client
        .assign_plans(assign("globex", "enterprise"))
        .await
        .unwrap()
        .into_inner()
        .version;
    assert!(after > before + 1, "{after} after {before}");
    replica.stop().await;

    let replica = Replica::start(&redis.url()).await;
    let book = replica
        .client()
        .await
        .get_price_book(pb::GetPriceBookRequest {})
        .await
        .unwrap()
        .into_inner()
        .price_book
        .unwrap();
    assert_eq!(book.version, after, "reloaded, not re-seeded");
    let mut assignments: Vec<(String, String)> = book
        .assignments
        .into_iter()
        .map(|a| (a.tenant_id, a.plan_id))
        .collect();
    assignments.sort();
    assert_eq!(
        assignments,
        [
            ("acme".into(), "pro".into()),
            ("globex".into(), "enterprise".into())
        ]
    );
    replica.stop().await;
}
