//! A real stack for the gateway's black-box tests: a redis-server, pricing,
//! the meter, the Bedrock emulator and the gateway, each on port 0 in this
//! process, called through the generated clients. The meter has its own
//! shutdown so a test can stop it and start it again on the same port.

#![allow(
    dead_code,
    unreachable_pub,
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::print_stderr
)] // test support shared by several test files

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tenantmeter_emulator::{Emulator, EmulatorConfig};
use tenantmeter_gateway::GatewayConfig;
use tenantmeter_proto::v1 as pb;
use tenantmeter_proto::v1::gateway_admin_service_client::GatewayAdminServiceClient;
use tenantmeter_proto::v1::gateway_service_client::GatewayServiceClient;
use tenantmeter_proto::v1::meter_service_client::MeterServiceClient;
use tenantmeter_proto::v1::pricing_admin_service_client::PricingAdminServiceClient;
use tenantmeter_runtime::clock::SystemClock;
use tenantmeter_runtime::shutdown::Shutdown;
use tenantmeter_testkit::{RedisServer, poll_until_ok};
use tokio::net::TcpListener;
use tokio::task::JoinHandle;
use tonic::Request;
use tonic::metadata::MetadataValue;
use tonic::transport::Channel;

pub const ADMIN_TOKEN: &str = "test-admin-token-0123456789";
pub const SONNET: &str = "anthropic.claude-3-7-sonnet-20250219-v1:0";
pub const HAIKU: &str = "anthropic.claude-3-haiku-20240307-v1:0";

pub struct Stack {
    pub redis: RedisServer,
    pub pricing_addr: SocketAddr,
    pub meter_addr: SocketAddr,
    pub emulator_addr: SocketAddr,
    pub gateway_addr: SocketAddr,
    pub emulator: Emulator,
    pub spool_dir: tempfile::TempDir,
    shutdown: Shutdown,
    meter_shutdown: Shutdown,
    meter_task: Option<JoinHandle<()>>,
    tasks: Vec<JoinHandle<()>>,
}

pub async fn channel(addr: SocketAddr) -> Channel {
    poll_until_ok(Duration::from_secs(30), || async {
        tonic::transport::Endpoint::from_shared(format!("http://{addr}"))?
            .connect()
            .await
    })
    .await
    .unwrap()
}

/// A request with `authorization: Bearer <token>`.
pub fn bearer<T>(token: &str, message: T) -> Request<T> {
    let mut request = Request::new(message);
    request.metadata_mut().insert(
        "authorization",
        MetadataValue::try_from(format!("Bearer {token}")).unwrap(),
    );
    request
}

fn spawn_meter(
    redis_url: String,
    pricing_addr: SocketAddr,
    listener: TcpListener,
    shutdown: Shutdown,
) -> JoinHandle<()> {
    let config = tenantmeter_meter::MeterConfig {
        pricing_url: format!("http://{pricing_addr}"),
        ..Default::default()
    };
    let deps = tenantmeter_meter::MeterDeps {
        redis_url,
        clock: Arc::new(SystemClock),
    };
    tokio::spawn(async move {
        tenantmeter_meter::run(config, deps, listener, shutdown)
            .await
            .unwrap();
    })
}

impl Stack {
    pub async fn start() -> Self {
        Self::start_with(EmulatorConfig::default(), |_| {}).await
    }

    pub async fn start_with(
        emulator_config: EmulatorConfig,
        tune: impl FnOnce(&mut GatewayConfig),
    ) -> Self {
        // Logs show in a failing test's output (RUST_LOG picks the level).
        let _ = tracing_subscriber::fmt()
            .with_env_filter(
                tracing_subscriber::EnvFilter::try_from_default_env()
                    .unwrap_or_else(|_| "warn".into()),
            )
            .with_test_writer()
            .try_init();
        let redis = RedisServer::start().await.unwrap();
        let shutdown = Shutdown::new();
        let mut tasks = Vec::new();

        let pricing_listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let pricing_addr = pricing_listener.local_addr().unwrap();
        tasks.push(tokio::spawn({
            let deps = tenantmeter_pricing::PricingDeps {
                redis_url: redis.url(),
                admin_token: Some(ADMIN_TOKEN.to_owned()),
            };
            let shutdown = shutdown.clone();
            async move {
                tenantmeter_pricing::run(Default::default(), deps, pricing_listener, shutdown)
                    .await
                    .unwrap();
            }
        }));

        let meter_listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let meter_addr = meter_listener.local_addr().unwrap();
        let meter_shutdown = Shutdown::new();
        let meter_task = spawn_meter(
            redis.url(),
            pricing_addr,
            meter_listener,
            meter_shutdown.clone(),
        );

        let emulator_listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let emulator_addr = emulator_listener.local_addr().unwrap();
        let emulator = Emulator::new(emulator_config);
        tasks.push(tokio::spawn({
            let emulator = emulator.clone();
            let stop = shutdown.clone();
            async move {
                emulator
                    .serve(emulator_listener, async move { stop.triggered().await })
                    .await
                    .unwrap();
            }
        }));

        let spool_dir = tempfile::tempdir().unwrap();
        let gateway_listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let gateway_addr = gateway_listener.local_addr().unwrap();
        let mut config = GatewayConfig {
            meter_url: format!("http://{meter_addr}"),
            pricing_url: format!("http://{pricing_addr}"),
            spool_dir: spool_dir.path().join("spool"),
            spool_replay_every: Duration::from_millis(200),
            ..Default::default()
        };
        config.bedrock.endpoint_url = format!("http://{emulator_addr}");
        tune(&mut config);
        tasks.push(tokio::spawn({
            let deps = tenantmeter_gateway::GatewayDeps {
                redis_url: redis.url(),
                admin_token: Some(ADMIN_TOKEN.to_owned()),
                clock: Arc::new(SystemClock),
            };
            let shutdown = shutdown.clone();
            async move {
                tenantmeter_gateway::run(config, deps, gateway_listener, shutdown)
                    .await
                    .unwrap();
            }
        }));

        let stack = Self {
            redis,
            pricing_addr,
            meter_addr,
            emulator_addr,
            gateway_addr,
            emulator,
            spool_dir,
            shutdown,
            meter_shutdown,
            meter_task: Some(meter_task),
            tasks,
        };
        stack.wait_for_meter().await;
        stack
    }

    /// Ready when the meter prices: it has a price book.
    pub async fn wait_for_meter(&self) {
        let meter = self.meter().await;
        poll_until_ok(Duration::from_secs(30), || {
            let mut meter = meter.clone();
            async move {
                let version = meter
                    .get_usage(pb::GetUsageRequest {
                        tenant_id: "readiness".into(),
                        ..Default::default()
                    })
                    .await
                    .map_err(|e| e.to_string())?
                    .into_inner()
                    .usage
                    .map_or(0, |u| u.price_book_version);
                if version > 0 {
                    Ok(version)
                } else {
                    Err("no price book yet".to_owned())
                }
            }
        })
        .await
        .unwrap();
    }

    pub async fn meter(&self) -> MeterServiceClient<Channel> {
        MeterServiceClient::new(channel(self.meter_addr).await)
    }

    pub async fn admin(&self) -> GatewayAdminServiceClient<Channel> {
        GatewayAdminServiceClient::new(channel(self.gateway_addr).await)
    }

    pub async fn gateway(&self) -> GatewayServiceClient<Channel> {
        GatewayServiceClient::new(channel(self.gateway_addr).await)
    }

    /// Stops the meter (its port closes).
    pub async fn stop_meter(&mut self) {
        self.meter_shutdown.trigger();
        if let Some(task) = self.meter_task.take() {
            task.await.unwrap();
        }
    }

    /// Starts the meter again on its old port.
    pub async fn start_meter(&mut self) {
        let listener = poll_until_ok(Duration::from_secs(10), || async {
            TcpListener::bind(self.meter_addr).await
        })
        .await
        .unwrap();
        self.meter_shutdown = Shutdown::new();
        self.meter_task = Some(spawn_meter(
            self.redis.url(),
            self.pricing_addr,
            listener,
            self.meter_shutdown.clone(),
        ));
        self.wait_for_meter().await;
    }

    /// Creates a tenant with one alias per `(alias, source model)`,
    /// provisioned in the gateway's region; returns its API key.
    pub async fn tenant(&self, tenant_id: &str, aliases: &[(&str, &str)]) -> String {
        let mut admin = self.admin().await;
        let created = admin
            .create_tenant(bearer(
                ADMIN_TOKEN,
                pb::CreateTenantRequest {
                    tenant_id: tenant_id.to_owned(),
                    display_name: format!("Tenant {tenant_id}"),
                    application_ids: vec!["app".to_owned()],
                    cost_center: "cc-1".to_owned(),
                    ..Default::default()
                },
            ))
            .await
            .unwrap()
            .into_inner();
        let provisioned = admin
            .provision_profiles(bearer(
                ADMIN_TOKEN,
                pb::ProvisionProfilesRequest {
                    tenant_id: tenant_id.to_owned(),
                    aliases: aliases
                        .iter()
                        .map(|(alias, source)| pb::ModelAliasSpec {
                            alias: (*alias).to_owned(),
                            source_model_id: (*source).to_owned(),
                            existing_inference_profile_arn: String::new(),
                        })
                        .collect(),
                    regions: Vec::new(),
                },
            ))
            .await
            .unwrap()
            .into_inner();
        for result in &provisioned.results {
            assert_eq!(
                result.outcome(),
                pb::ProvisionOutcome::Created,
                "provisioning {result:?}"
            );
        }
        created.api_key
    }

    /// Puts `tenant_id` on a plan whose limits a benchmark never reaches, and
    /// waits until the meter follows that price book.
    pub async fn unlimited(&self, tenant_id: &str) {
        let mut pricing = PricingAdminServiceClient::new(channel(self.pricing_addr).await);
        let plan = pb::Plan {
            plan_id: "bench-unlimited".into(),
            display_name: "benchmark: limits never reached".into(),
            tier_mode: pb::TierMode::Graduated.into(),
            tiers: vec![pb::Tier {
                up_to_usd: String::new(),
                rate: Some(pb::tier::Rate::Multiplier("1".into())),
            }],
            limits: Some(pb::PlanLimits {
                requests_per_minute: 1_000_000_000,
                tokens_per_minute: 1_000_000_000_000,
                period_budget_nanos_usd: 0,
            }),
            ..Default::default()
        };
        pricing
            .upsert_plan(bearer(
                ADMIN_TOKEN,
                pb::UpsertPlanRequest { plan: Some(plan) },
            ))
            .await
            .unwrap();
        let version = pricing
            .assign_plans(bearer(
                ADMIN_TOKEN,
                pb::AssignPlansRequest {
                    assignments: vec![pb::TenantPlanAssignment {
                        tenant_id: tenant_id.to_owned(),
                        plan_id: "bench-unlimited".into(),
                    }],
                },
            ))
            .await
            .unwrap()
            .into_inner()
            .version;
        let meter = self.meter().await;
        poll_until_ok(Duration::from_secs(30), || {
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
                    Err(format!("meter at {seen}, want {version}"))
                }
            }
        })
        .await
        .unwrap();
    }

    /// The tenant's usage as the meter has it now.
    pub async fn usage(&self, tenant_id: &str) -> pb::TenantUsage {
        self.meter()
            .await
            .get_usage(pb::GetUsageRequest {
                tenant_id: tenant_id.to_owned(),
                ..Default::default()
            })
            .await
            .unwrap()
            .into_inner()
            .usage
            .unwrap()
    }

    /// The month's figures of a tenant.
    pub async fn month(&self, tenant_id: &str) -> pb::UsageFigures {
        let usage = self.usage(tenant_id).await;
        usage
            .periods
            .iter()
            .find(|p| p.period() == pb::CalendarPeriod::Month)
            .and_then(|p| p.figures)
            .unwrap()
    }

    pub async fn stop(mut self) {
        self.shutdown.trigger();
        self.meter_shutdown.trigger();
        if let Some(task) = self.meter_task.take() {
            let _ = task.await;
        }
        for task in self.tasks.drain(..) {
            let _ = task.await;
        }
    }
}

/// A user message of text.
pub fn user(text: &str) -> pb::ConverseMessage {
    pb::ConverseMessage {
        role: pb::ConversationRole::User as i32,
        content: vec![pb::ContentBlock {
            block: Some(pb::content_block::Block::Text(text.to_owned())),
        }],
    }
}

/// A Converse request to `alias` with one user message.
pub fn converse(alias: &str, text: &str) -> pb::ConverseRequest {
    pb::ConverseRequest {
        model_alias: alias.to_owned(),
        messages: vec![user(text)],
        inference_config: Some(pb::InferenceConfiguration {
            max_tokens: Some(256),
            ..Default::default()
        }),
        ..Default::default()
    }
}

/// The same request as a ConverseStream request.
pub fn converse_stream(request: &pb::ConverseRequest) -> pb::ConverseStreamRequest {
    pb::ConverseStreamRequest {
        model_alias: request.model_alias.clone(),
        messages: request.messages.clone(),
        system: request.system.clone(),
        inference_config: request.inference_config.clone(),
        tool_config: request.tool_config.clone(),
        additional_model_request_fields: request.additional_model_request_fields.clone(),
        additional_model_response_field_paths: request
            .additional_model_response_field_paths
            .clone(),
        request_metadata: request.request_metadata.clone(),
        application_id: request.application_id.clone(),
    }
}
