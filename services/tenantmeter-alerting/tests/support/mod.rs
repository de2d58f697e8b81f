//! Test support shared by alerting's black-box tests (alerting_api.rs,
//! traces.rs): the one plan their scenarios run on.

#![allow(dead_code, unreachable_pub, clippy::unwrap_used, clippy::expect_used)] // test support

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tenantmeter_runtime::clock::Clock;
use tenantmeter_runtime::shutdown::Shutdown;
use tenantmeter_testkit::RedisServer;
use tokio::net::TcpListener;
use tokio::task::JoinHandle;

use tenantmeter_proto::v1 as pb;
use tenantmeter_proto::v1::meter_service_client::MeterServiceClient;
use tenantmeter_proto::v1::pricing_admin_service_client::PricingAdminServiceClient;
use tenantmeter_proto::v1::pricing_service_client::PricingServiceClient;
use tenantmeter_testkit::poll_until_ok;
use tonic::Request;
use tonic::metadata::MetadataValue;
use tonic::transport::Channel;

const WAIT: Duration = Duration::from_secs(30);

/// Starts pricing and the meter (on `clock`) in-process on port 0 against
/// `redis`, until `shutdown`; returns their addresses and tasks.
pub async fn start_pricing_and_meter(
    redis: &RedisServer,
    admin_token: &str,
    clock: &Arc<dyn Clock>,
    shutdown: &Shutdown,
) -> (SocketAddr, SocketAddr, [JoinHandle<()>; 2]) {
    let pricing_listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let pricing = pricing_listener.local_addr().unwrap();
    let deps = tenantmeter_pricing::PricingDeps {
        redis_url: redis.url(),
        admin_token: Some(admin_token.to_owned()),
    };
    let stop = shutdown.clone();
    let pricing_task = tokio::spawn(async move {
        tenantmeter_pricing::run(Default::default(), deps, pricing_listener, stop)
            .await
            .unwrap();
    });
    let meter_listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let meter = meter_listener.local_addr().unwrap();
    let config = tenantmeter_meter::MeterConfig {
        pricing_url: format!("http://{pricing}"),
        ..Default::default()
    };
    let deps = tenantmeter_meter::MeterDeps {
        redis_url: redis.url(),
        clock: Arc::clone(clock),
    };
    let stop = shutdown.clone();
    let meter_task = tokio::spawn(async move {
        tenantmeter_meter::run(config, deps, meter_listener, stop)
            .await
            .unwrap();
    });
    (pricing, meter, [pricing_task, meter_task])
}

/// A client channel to `addr`, once it accepts connections.
pub async fn channel(addr: SocketAddr) -> Channel {
    poll_until_ok(WAIT, || async {
        tonic::transport::Endpoint::from_shared(format!("http://{addr}"))?
            .connect()
            .await
    })
    .await
    .unwrap()
}

/// `message` with `authorization: Bearer <token>`.
pub fn with_token<T>(token: &str, message: T) -> Request<T> {
    let mut request = Request::new(message);
    request.metadata_mut().insert(
        "authorization",
        MetadataValue::try_from(format!("Bearer {token}")).unwrap(),
    );
    request
}

/// Replaces the default plan with one at list price (multiplier 1), with
/// limits the tests never reach and `expected_nanos_per_hour` as new
/// tenants' baseline; waits until the meter follows it. Returns its id.
pub async fn flat_default_plan(
    pricing: SocketAddr,
    meter: SocketAddr,
    admin_token: &str,
    expected_nanos_per_hour: i64,
    limits: pb::PlanLimits,
) -> String {
    let book = PricingServiceClient::new(channel(pricing).await)
        .get_price_book(pb::GetPriceBookRequest::default())
        .await
        .unwrap()
        .into_inner()
        .price_book
        .unwrap();
    let plan_id = book.default_plan_id.clone();
    let plan = pb::Plan {
        plan_id: plan_id.clone(),
        display_name: "alerting tests: list price".into(),
        tier_mode: pb::TierMode::Graduated.into(),
        tiers: vec![pb::Tier {
            up_to_usd: String::new(),
            rate: Some(pb::tier::Rate::Multiplier("1".into())),
        }],
        limits: Some(limits),
        expected_charge_nanos_usd_per_hour: expected_nanos_per_hour,
        ..Default::default()
    };
    let version = PricingAdminServiceClient::new(channel(pricing).await)
        .upsert_plan(with_token(
            admin_token,
            pb::UpsertPlanRequest { plan: Some(plan) },
        ))
        .await
        .unwrap()
        .into_inner()
        .version;
    let meter = MeterServiceClient::new(channel(meter).await);
    poll_until_ok(WAIT, || {
        let mut meter = meter.clone();
        async move {
            let seen = meter
                .get_usage(pb::GetUsageRequest {
                    tenant_id: "readiness".into(),
                    ..Default::default()
                })
                .await
                .map_err(|e| e.to_string())?
                .into_inner()
                .usage
                .map_or(0, |u| u.price_book_version);
            if seen >= version {
                Ok(())
            } else {
                Err(format!("meter at price book {seen}, want {version}"))
            }
        }
    })
    .await
    .unwrap();
    plan_id
}
