//! A real stack for the meter's black-box tests: pricing on its own
//! redis-server, the meter on a redis-server or a three-master Redis Cluster,
//! both on port 0, called through the generated clients.

#![allow(
    dead_code,
    unreachable_pub,
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::large_enum_variant,
    clippy::print_stderr
)] // test support shared by several test files

use std::collections::BTreeMap;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant, UNIX_EPOCH};

use tenantmeter_meter::MeterConfig;
use tenantmeter_proto::v1 as pb;
use tenantmeter_proto::v1::meter_service_client::MeterServiceClient;
use tenantmeter_proto::v1::pricing_admin_service_client::PricingAdminServiceClient;
use tenantmeter_proto::v1::pricing_service_client::PricingServiceClient;
use tenantmeter_runtime::clock::{Clock as _, SystemClock};
use tenantmeter_runtime::shutdown::Shutdown;
use tenantmeter_testkit::{RedisCluster, RedisServer, poll_until_ok};
use tokio::net::TcpListener;
use tokio::task::JoinHandle;
use tonic::Request;
use tonic::transport::Channel;

pub const ADMIN_TOKEN: &str = "test-admin-token-0123456789";
pub const SONNET: &str = "anthropic.claude-3-5-sonnet-20240620-v1:0";
pub const MICRO: &str = "amazon.nova-micro-v1:0";

/// Where the meter keeps its state.
pub enum Backend {
    Single(RedisServer),
    Cluster(RedisCluster),
}

impl Backend {
    pub async fn single() -> Self {
        Self::Single(RedisServer::builder().aof(true).start().await.unwrap())
    }

    pub async fn cluster() -> Self {
        Self::Cluster(RedisCluster::start().await.unwrap())
    }

    /// A three-master cluster whose nodes keep an AOF, so its keys survive
    /// [`RedisCluster::restart_node`].
    pub async fn cluster_with_aof() -> Self {
        Self::Cluster(RedisCluster::builder().aof(true).start().await.unwrap())
    }

    fn url(&self) -> (String, bool) {
        match self {
            Self::Single(server) => (server.url(), false),
            Self::Cluster(cluster) => (cluster.urls().join(","), true),
        }
    }
}

pub struct Stack {
    pub backend: Backend,
    pricing_redis: RedisServer,
    pub pricing_addr: SocketAddr,
    pub meter_addr: SocketAddr,
    shutdown: Shutdown,
    tasks: Vec<JoinHandle<()>>,
}

async fn channel(addr: SocketAddr) -> Channel {
    poll_until_ok(Duration::from_secs(20), || async {
        tonic::transport::Endpoint::from_shared(format!("http://{addr}"))?
            .connect()
            .await
    })
    .await
    .unwrap()
}

/// Wall-clock now: these tests run the meter on the system clock.
pub fn now_ms() -> i64 {
    i64::try_from(
        SystemClock
            .now()
            .duration_since(UNIX_EPOCH)
            .unwrap()
            .as_millis(),
    )
    .unwrap()
}

pub fn ts(ms: i64) -> prost_types::Timestamp {
    prost_types::Timestamp {
        seconds: ms.div_euclid(1000),
        nanos: i32::try_from(ms.rem_euclid(1000) * 1_000_000).unwrap(),
    }
}

impl Stack {
    pub async fn start(backend: Backend) -> Self {
        Self::start_with(backend, MeterConfig::default()).await
    }

    pub async fn start_with(backend: Backend, config: MeterConfig) -> Self {
        let pricing_redis = RedisServer::start().await.unwrap();
        let shutdown = Shutdown::new();
        let pricing_listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let pricing_addr = pricing_listener.local_addr().unwrap();
        let pricing = tokio::spawn({
            let deps = tenantmeter_pricing::PricingDeps {
                redis_url: pricing_redis.url(),
                admin_token: Some(ADMIN_TOKEN.to_owned()),
            };
            let shutdown = shutdown.clone();
            async move {
                tenantmeter_pricing::run(
                    tenantmeter_pricing::PricingConfig::default(),
                    deps,
                    pricing_listener,
                    shutdown,
                )
                .await
                .unwrap();
            }
        });
        let meter_listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let meter_addr = meter_listener.local_addr().unwrap();
        let (redis_url, cluster) = backend.url();
        let config = MeterConfig {
            pricing_url: format!("http://{pricing_addr}"),
            redis_cluster: cluster,
            ..config
        };
        let meter = tokio::spawn({
            let deps = tenantmeter_meter::MeterDeps {
                redis_url,
                clock: Arc::new(SystemClock),
            };
            let shutdown = shutdown.clone();
            async move {
                tenantmeter_meter::run(config, deps, meter_listener, shutdown)
                    .await
                    .unwrap();
            }
        });
        let stack = Self {
            backend,
            pricing_redis,
            pricing_addr,
            meter_addr,
            shutdown,
            tasks: vec![pricing, meter],
        };
        // Ready when the meter prices an event: health, and a price book.
        let mut meter = stack.meter().await;
        poll_until_ok(Duration::from_secs(30), || {
            let mut meter = meter.clone();
            async move {
                meter
                    .get_usage(pb::GetUsageRequest {
                        tenant_id: "readiness".into(),
                        ..Default::default()
                    })
                    .await
                    .map(|r| r.into_inner().usage.unwrap().price_book_version)
                    .map_err(|e| e.to_string())
                    .and_then(|v| {
                        if v > 0 {
                            Ok(v)
                        } else {
                            Err("no price book yet".to_owned())
                        }
                    })
            }
        })
        .await
        .unwrap();
        drop(meter.get_usage(pb::GetUsageRequest::default()).await);
        stack
    }

    /// The meter's own redis-server, to shut down, kill or restart mid-test
    /// (it keeps its port, so the meter's URL stays valid). Single backend only.
    #[allow(clippy::panic)] // a test asking this of a cluster stack is a broken test
    pub fn meter_redis(&mut self) -> &mut RedisServer {
        match &mut self.backend {
            Backend::Single(server) => server,
            Backend::Cluster(_) => panic!("meter_redis: this stack runs on a Redis Cluster"),
        }
    }

    /// The meter's Redis Cluster, to restart a node mid-test (nodes keep
    /// their ports, so the meter's seed URLs stay valid). Cluster backend only.
    #[allow(clippy::panic)] // a test asking this of a single-server stack is a broken test
    pub fn meter_cluster(&mut self) -> &mut RedisCluster {
        match &mut self.backend {
            Backend::Cluster(cluster) => cluster,
            Backend::Single(_) => panic!("meter_cluster: this stack runs on one redis-server"),
        }
    }

    pub async fn meter(&self) -> MeterServiceClient<Channel> {
        MeterServiceClient::new(channel(self.meter_addr).await)
    }

    pub async fn pricing(&self) -> PricingServiceClient<Channel> {
        PricingServiceClient::new(channel(self.pricing_addr).await)
    }

    pub async fn pricing_admin(&self) -> PricingAdminServiceClient<Channel> {
        PricingAdminServiceClient::new(channel(self.pricing_addr).await)
    }

    /// Puts `tenant` on a fresh plan with these limits, and waits until the
    /// meter's copy of the price book has it.
    pub async fn limit(&self, tenant: &str, requests_per_minute: i64, tokens_per_minute: i64) {
        let plan_id = format!("limits-{tenant}");
        let mut admin = self.pricing_admin().await;
        let plan = pb::Plan {
            plan_id: plan_id.clone(),
            display_name: "test limits".into(),
            tier_mode: pb::TierMode::Graduated.into(),
            tiers: vec![pb::Tier {
                up_to_usd: String::new(),
                rate: Some(pb::tier::Rate::Multiplier("1".into())),
            }],
            limits: Some(pb::PlanLimits {
                requests_per_minute,
                tokens_per_minute,
                period_budget_nanos_usd: 0,
            }),
            ..Default::default()
        };
        admin
            .upsert_plan(admin_request(pb::UpsertPlanRequest { plan: Some(plan) }))
            .await
            .unwrap();
        let version = admin
            .assign_plans(admin_request(pb::AssignPlansRequest {
                assignments: vec![pb::TenantPlanAssignment {
                    tenant_id: tenant.into(),
                    plan_id,
                }],
            }))
            .await
            .unwrap()
            .into_inner()
            .version;
        let meter = self.meter().await;
        poll_until_ok(Duration::from_secs(20), || {
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
                    .unwrap()
                    .price_book_version;
                if seen >= version {
                    Ok(())
                } else {
                    Err(format!("meter at {seen}, want {version}"))
                }
            }
        })
        .await
        .unwrap();
    }

    pub async fn stop(self) {
        self.shutdown.trigger();
        for task in self.tasks {
            tokio::time::timeout(Duration::from_secs(30), task)
                .await
                .unwrap()
                .unwrap();
        }
        drop(self.pricing_redis);
    }
}

pub fn admin_request<T>(message: T) -> Request<T> {
    let mut request = Request::new(message);
    request.metadata_mut().insert(
        "authorization",
        format!("Bearer {ADMIN_TOKEN}").parse().unwrap(),
    );
    request
}

pub fn event(
    id: &str,
    tenant: &str,
    model: &str,
    at_ms: i64,
    input: i64,
    output: i64,
) -> pb::UsageEvent {
    pb::UsageEvent {
        event_id: id.into(),
        tenant_id: tenant.into(),
        model_id: model.into(),
        usage: Some(pb::TokenUsage {
            input_tokens: input,
            output_tokens: output,
            ..Default::default()
        }),
        event_time: Some(ts(at_ms)),
        ..Default::default()
    }
}

pub fn window(usage: &pb::TenantUsage, which: pb::UsageWindow) -> pb::UsageFigures {
    usage
        .windows
        .iter()
        .find(|w| w.window == i32::from(which))
        .and_then(|w| w.figures)
        .unwrap()
}

/// Upper bound on any single call in these tests: a call still running after
/// this is a hang, and fails the test with a message instead of stalling it.
pub const HANG: Duration = Duration::from_secs(30);

/// Runs `call`, failing the test if it does not finish within [`HANG`];
/// returns its output and how long it took.
pub async fn timed<T>(what: &str, call: impl Future<Output = T>) -> (T, Duration) {
    let started = Instant::now();
    let output = tokio::time::timeout(HANG, call)
        .await
        .unwrap_or_else(|_| panic!("{what} hung for more than {HANG:?}"));
    (output, started.elapsed())
}

/// Records `events`; panics unless the meter answers OK.
pub async fn record(
    meter: &mut MeterServiceClient<Channel>,
    events: &[pb::UsageEvent],
) -> pb::RecordUsageResponse {
    let (reply, took) = timed(
        "RecordUsage",
        meter.record_usage(pb::RecordUsageRequest {
            events: events.to_vec(),
        }),
    )
    .await;
    let reply = reply.unwrap().into_inner();
    eprintln!(
        "RecordUsage of {} events: {} accepted, {} duplicates in {took:?}",
        events.len(),
        reply.accepted,
        reply.duplicates
    );
    assert_eq!(reply.rejected, 0, "{reply:?}");
    reply
}

/// What GetUsage reports of a tenant's rolling hour (checked equal to its
/// rolling day: every event in these tests is minutes old at most).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Totals {
    pub requests: i64,
    pub input: i64,
    pub output: i64,
    pub cost_nanos: i64,
}

impl Totals {
    pub fn of(figures: &pb::UsageFigures) -> Self {
        let tokens = figures.tokens.unwrap_or_default();
        Self {
            requests: figures.requests,
            input: tokens.input_tokens,
            output: tokens.output_tokens,
            cost_nanos: figures.provider_cost_nanos_usd,
        }
    }
}

pub async fn totals(
    meter: &mut MeterServiceClient<Channel>,
    tenant: &str,
) -> Result<Totals, tonic::Status> {
    let usage = meter
        .get_usage(pb::GetUsageRequest {
            tenant_id: tenant.into(),
            ..Default::default()
        })
        .await?
        .into_inner()
        .usage
        .unwrap();
    let hour = Totals::of(&window(&usage, pb::UsageWindow::OneHour));
    let day = Totals::of(&window(&usage, pb::UsageWindow::OneDay));
    assert_eq!(hour, day, "{tenant}: rolling hour and day disagree");
    Ok(hour)
}

/// What a tenant's figures must be after `events` (others' events are
/// skipped): counts summed here, provider cost from pricing's Quote of the
/// per-model totals.
pub async fn expected_totals<'a>(
    pricing: &mut PricingServiceClient<Channel>,
    tenant: &str,
    events: impl Iterator<Item = &'a pb::UsageEvent>,
) -> Totals {
    let mut sums = Totals::default();
    let mut models: BTreeMap<String, (i64, i64)> = BTreeMap::new();
    for e in events.filter(|e| e.tenant_id == tenant) {
        let usage = e.usage.unwrap();
        sums.requests += 1;
        sums.input += usage.input_tokens;
        sums.output += usage.output_tokens;
        let model = models.entry(e.model_id.clone()).or_default();
        model.0 += usage.input_tokens;
        model.1 += usage.output_tokens;
    }
    let quote = pricing
        .quote(pb::QuoteRequest {
            subject: Some(pb::quote_request::Subject::TenantId(tenant.into())),
            lines: models
                .into_iter()
                .map(|(model_id, (input, output))| pb::QuoteLine {
                    model_id,
                    usage: Some(pb::TokenUsage {
                        input_tokens: input,
                        output_tokens: output,
                        ..Default::default()
                    }),
                    ..Default::default()
                })
                .collect(),
            period_to_date: vec![],
        })
        .await
        .unwrap()
        .into_inner();
    sums.cost_nanos = quote.provider_cost_nanos_usd;
    sums
}
