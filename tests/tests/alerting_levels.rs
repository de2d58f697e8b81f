//! Alerting through the whole stack: a redis-server, pricing, the meter, the
//! Bedrock emulator, the gateway and alerting, in-process on port 0, on one
//! manual clock (so minutes of simulated time take a moment), with a real
//! webhook receiver. Scenarios:
//!
//! - a runaway tenant goes yellow (spike) then red (runaway), its calls through
//!   the gateway are denied with a reason and a retry-after within one interval
//!   plus a second of it turning red, and once it calms down it steps back
//!   red -> orange -> yellow -> green, one step per cooldown, with exactly one
//!   signed webhook per transition; a calm tenant beside it stays green;
//! - a dozen tenants each rising a little (each at most yellow) turn the fleet
//!   red through co-movement.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // test support: a failed unwrap is a failed test

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use axum::body::Bytes;
use axum::http::HeaderMap;
use tenantmeter_alerting::AlertingConfig;
use tenantmeter_domain::levels::LevelPolicy;
use tenantmeter_emulator::{Emulator, EmulatorConfig};
use tenantmeter_proto::v1 as pb;
use tenantmeter_proto::v1::alerting_admin_service_client::AlertingAdminServiceClient;
use tenantmeter_proto::v1::alerting_service_client::AlertingServiceClient;
use tenantmeter_proto::v1::gateway_admin_service_client::GatewayAdminServiceClient;
use tenantmeter_proto::v1::gateway_service_client::GatewayServiceClient;
use tenantmeter_proto::v1::meter_service_client::MeterServiceClient;
use tenantmeter_proto::v1::pricing_admin_service_client::PricingAdminServiceClient;
use tenantmeter_runtime::clock::{Clock, ManualClock};
use tenantmeter_runtime::shutdown::Shutdown;
use tenantmeter_testkit::{RedisServer, poll_until_ok};
use tokio::net::TcpListener;
use tonic::Request;
use tonic::metadata::MetadataValue;
use tonic::transport::Channel;

const ADMIN_TOKEN: &str = "test-admin-token-0123456789";
const SONNET: &str = "anthropic.claude-3-7-sonnet-20250219-v1:0";
const PLAN: &str = "alerting-test";
/// The plan's expected spend: the baseline of a tenant without history.
const EXPECTED_NANOS_PER_HOUR: i64 = 120_000_000; // $0.12/h
const INTERVAL: Duration = Duration::from_millis(300);
const WEBHOOK_SECRET: &str = "webhook-secret-0123456789abcdef-0123";
/// Monday 2026-11-02 09:00 UTC.
const START_UNIX_SECS: u64 = 1_793_610_000;

fn bearer<T>(message: T) -> Request<T> {
    let mut request = Request::new(message);
    request.metadata_mut().insert(
        "authorization",
        MetadataValue::try_from(format!("Bearer {ADMIN_TOKEN}")).unwrap(),
    );
    request
}

async fn channel(addr: SocketAddr) -> Channel {
    poll_until_ok(Duration::from_secs(30), || async {
        tonic::transport::Endpoint::from_shared(format!("http://{addr}"))?
            .connect()
            .await
    })
    .await
    .unwrap()
}

#[derive(Debug, Clone)]
struct Delivery {
    headers: HeaderMap,
    body: Bytes,
}

struct Stack {
    _redis: RedisServer,
    clock: ManualClock,
    shutdown: Shutdown,
    pricing: SocketAddr,
    meter: SocketAddr,
    gateway: SocketAddr,
    alerting: SocketAddr,
    webhook: SocketAddr,
    deliveries: Arc<Mutex<Vec<Delivery>>>,
}

impl Stack {
    async fn start(levels: LevelPolicy) -> Self {
        let _ = tracing_subscriber::fmt()
            .with_env_filter(
                tracing_subscriber::EnvFilter::try_from_default_env()
                    .unwrap_or_else(|_| "warn".into()),
            )
            .with_test_writer()
            .try_init();
        let redis = RedisServer::start().await.unwrap();
        let clock = ManualClock::at_unix_secs(START_UNIX_SECS);
        let shared_clock: Arc<dyn Clock> = Arc::new(clock.clone());
        let shutdown = Shutdown::new();
        let bind = || async { TcpListener::bind("127.0.0.1:0").await.unwrap() };

        let pricing_listener = bind().await;
        let pricing = pricing_listener.local_addr().unwrap();
        let deps = tenantmeter_pricing::PricingDeps {
            redis_url: redis.url(),
            admin_token: Some(ADMIN_TOKEN.to_owned()),
        };
        let stop = shutdown.clone();
        tokio::spawn(async move {
            tenantmeter_pricing::run(Default::default(), deps, pricing_listener, stop)
                .await
                .unwrap();
        });

        let meter_listener = bind().await;
        let meter = meter_listener.local_addr().unwrap();
        let config = tenantmeter_meter::MeterConfig {
            pricing_url: format!("http://{pricing}"),
            ..Default::default()
        };
        let deps = tenantmeter_meter::MeterDeps {
            redis_url: redis.url(),
            clock: Arc::clone(&shared_clock),
        };
        let stop = shutdown.clone();
        tokio::spawn(async move {
            tenantmeter_meter::run(config, deps, meter_listener, stop)
                .await
                .unwrap();
        });

        let emulator_listener = bind().await;
        let emulator_addr = emulator_listener.local_addr().unwrap();
        let emulator = Emulator::new(EmulatorConfig::default());
        let stop = shutdown.clone();
        tokio::spawn(async move {
            emulator
                .serve(emulator_listener, async move { stop.triggered().await })
                .await
                .unwrap();
        });

        let spool = tempfile::tempdir().unwrap().keep();
        let gateway_listener = bind().await;
        let gateway = gateway_listener.local_addr().unwrap();
        let mut config = tenantmeter_gateway::GatewayConfig {
            meter_url: format!("http://{meter}"),
            pricing_url: format!("http://{pricing}"),
            spool_dir: spool.join("spool"),
            ..Default::default()
        };
        config.bedrock.endpoint_url = format!("http://{emulator_addr}");
        let deps = tenantmeter_gateway::GatewayDeps {
            redis_url: redis.url(),
            admin_token: Some(ADMIN_TOKEN.to_owned()),
            clock: Arc::clone(&shared_clock),
        };
        let stop = shutdown.clone();
        tokio::spawn(async move {
            tenantmeter_gateway::run(config, deps, gateway_listener, stop)
                .await
                .unwrap();
        });

        let alerting_listener = bind().await;
        let alerting = alerting_listener.local_addr().unwrap();
        let config = AlertingConfig {
            meter_url: format!("http://{meter}"),
            pricing_url: format!("http://{pricing}"),
            interval: INTERVAL,
            shards: 2,
            lease_ttl: Duration::from_secs(5),
            levels,
            notifier: tenantmeter_alerting::sinks::NotifierConfig {
                poll_interval: Duration::from_millis(50),
                ..Default::default()
            },
            ..Default::default()
        };
        let deps = tenantmeter_alerting::AlertingDeps {
            redis_url: redis.url(),
            admin_token: Some(ADMIN_TOKEN.to_owned()),
            clock: Arc::clone(&shared_clock),
        };
        let stop = shutdown.clone();
        tokio::spawn(async move {
            tenantmeter_alerting::run(config, deps, alerting_listener, stop)
                .await
                .unwrap();
        });

        let deliveries: Arc<Mutex<Vec<Delivery>>> = Arc::default();
        let webhook_listener = bind().await;
        let webhook = webhook_listener.local_addr().unwrap();
        let recorded = Arc::clone(&deliveries);
        let app = axum::Router::new().route(
            "/hook",
            axum::routing::post(move |headers: HeaderMap, body: Bytes| {
                let recorded = Arc::clone(&recorded);
                async move {
                    recorded.lock().unwrap().push(Delivery { headers, body });
                    "ok"
                }
            }),
        );
        let stop = shutdown.clone();
        tokio::spawn(async move {
            axum::serve(webhook_listener, app)
                .with_graceful_shutdown(async move { stop.triggered().await })
                .await
                .unwrap();
        });

        let stack = Self {
            _redis: redis,
            clock,
            shutdown,
            pricing,
            meter,
            gateway,
            alerting,
            webhook,
            deliveries,
        };
        stack.plan().await;
        stack
    }

    /// A plan at list price with limits the tests never reach, whose expected
    /// spend is the baseline of new tenants; waits until the meter follows it.
    async fn plan(&self) {
        let mut pricing = PricingAdminServiceClient::new(channel(self.pricing).await);
        let plan = pb::Plan {
            plan_id: PLAN.into(),
            display_name: "alerting tests".into(),
            tier_mode: pb::TierMode::Graduated.into(),
            tiers: vec![pb::Tier {
                up_to_usd: String::new(),
                rate: Some(pb::tier::Rate::Multiplier("1".into())),
            }],
            limits: Some(pb::PlanLimits {
                requests_per_minute: 1_000_000,
                tokens_per_minute: 1_000_000_000,
                period_budget_nanos_usd: 0,
            }),
            expected_charge_nanos_usd_per_hour: EXPECTED_NANOS_PER_HOUR,
            ..Default::default()
        };
        let version = pricing
            .upsert_plan(bearer(pb::UpsertPlanRequest { plan: Some(plan) }))
            .await
            .unwrap()
            .into_inner()
            .version;
        let meter = MeterServiceClient::new(channel(self.meter).await);
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
                    Err(format!("meter at price book {seen}, want {version}"))
                }
            }
        })
        .await
        .unwrap();
    }

    /// Onboards a tenant on the test plan with alias `sonnet`; returns its key.
    async fn tenant(&self, tenant_id: &str) -> String {
        let mut admin = GatewayAdminServiceClient::new(channel(self.gateway).await);
        let created = admin
            .create_tenant(bearer(pb::CreateTenantRequest {
                tenant_id: tenant_id.to_owned(),
                display_name: tenant_id.to_owned(),
                application_ids: vec!["app".to_owned()],
                cost_center: "cc".to_owned(),
                plan_id: PLAN.to_owned(),
                ..Default::default()
            }))
            .await
            .unwrap()
            .into_inner();
        admin
            .provision_profiles(bearer(pb::ProvisionProfilesRequest {
                tenant_id: tenant_id.to_owned(),
                aliases: vec![pb::ModelAliasSpec {
                    alias: "sonnet".to_owned(),
                    source_model_id: SONNET.to_owned(),
                    existing_inference_profile_arn: String::new(),
                }],
                regions: Vec::new(),
            }))
            .await
            .unwrap();
        created.api_key
    }

    async fn call(&self, key: &str, prompt: &str) -> Result<pb::ConverseResponse, tonic::Status> {
        let mut gateway = GatewayServiceClient::new(channel(self.gateway).await);
        let mut request = Request::new(pb::ConverseRequest {
            model_alias: "sonnet".to_owned(),
            messages: vec![pb::ConverseMessage {
                role: pb::ConversationRole::User as i32,
                content: vec![pb::ContentBlock {
                    block: Some(pb::content_block::Block::Text(prompt.to_owned())),
                }],
            }],
            inference_config: Some(pb::InferenceConfiguration {
                max_tokens: Some(64),
                ..Default::default()
            }),
            ..Default::default()
        });
        request.metadata_mut().insert(
            "authorization",
            MetadataValue::try_from(format!("Bearer {key}")).unwrap(),
        );
        gateway
            .converse(request)
            .await
            .map(tonic::Response::into_inner)
    }

    fn now_ms(&self) -> i64 {
        tenantmeter_runtime::clock::unix_ms(self.clock.now())
    }

    /// Moves simulated time on.
    fn advance(&self, by: Duration) {
        self.clock.advance(by);
    }

    async fn alerting(&self) -> AlertingServiceClient<Channel> {
        AlertingServiceClient::new(channel(self.alerting).await)
    }

    /// The tenant's status once a pass has evaluated it at the clock's now.
    async fn evaluated(&self, tenant_id: &str) -> pb::TenantStatus {
        let now = self.now_ms();
        let alerting = self.alerting().await;
        poll_until_ok(Duration::from_secs(30), || {
            let mut alerting = alerting.clone();
            async move {
                let status = alerting
                    .get_status(pb::GetStatusRequest {
                        tenant_id: tenant_id.to_owned(),
                    })
                    .await
                    .map_err(|e| e.to_string())?
                    .into_inner()
                    .status
                    .unwrap();
                let at = status
                    .evaluated_at
                    .as_ref()
                    .map_or(0, |t| t.seconds * 1_000 + i64::from(t.nanos) / 1_000_000);
                if at >= now {
                    Ok(status)
                } else {
                    Err(format!("{tenant_id} last evaluated at {at}, want {now}"))
                }
            }
        })
        .await
        .unwrap()
    }

    async fn fleet_evaluated(&self) -> pb::FleetStatus {
        let now = self.now_ms();
        let alerting = self.alerting().await;
        poll_until_ok(Duration::from_secs(30), || {
            let mut alerting = alerting.clone();
            async move {
                let status = alerting
                    .get_fleet_status(pb::GetFleetStatusRequest {})
                    .await
                    .map_err(|e| e.to_string())?
                    .into_inner()
                    .status
                    .unwrap();
                let at = status
                    .evaluated_at
                    .as_ref()
                    .map_or(0, |t| t.seconds * 1_000);
                if at >= now {
                    Ok(status)
                } else {
                    Err(format!("fleet last evaluated at {at}, want {now}"))
                }
            }
        })
        .await
        .unwrap()
    }

    async fn add_sink(&self) {
        AlertingAdminServiceClient::new(channel(self.alerting).await)
            .upsert_sink(bearer(pb::UpsertSinkRequest {
                sink: Some(pb::NotificationSink {
                    sink_id: "ops".to_owned(),
                    display_name: "ops on call".to_owned(),
                    webhook_url: format!("http://{}/hook", self.webhook),
                    enabled: true,
                    ..Default::default()
                }),
                secret: WEBHOOK_SECRET.to_owned(),
            }))
            .await
            .unwrap();
    }

    fn deliveries(&self) -> Vec<Delivery> {
        self.deliveries.lock().unwrap().clone()
    }

    async fn stop(self) {
        self.shutdown.trigger();
    }
}

fn level(status: &pb::TenantStatus) -> pb::Level {
    status.level()
}

/// The webhook bodies as JSON, each checked for its signature.
fn verified(deliveries: &[Delivery]) -> Vec<serde_json::Value> {
    deliveries
        .iter()
        .map(|delivery| {
            let header = |name: &str| {
                delivery
                    .headers
                    .get(name)
                    .unwrap_or_else(|| panic!("missing {name}"))
                    .to_str()
                    .unwrap()
                    .to_owned()
            };
            assert!(
                tenantmeter_alerting::sinks::verify_signature(
                    WEBHOOK_SECRET.as_bytes(),
                    &header("x-tenantmeter-timestamp"),
                    &delivery.body,
                    &header("x-tenantmeter-signature"),
                ),
                "bad signature"
            );
            let body: serde_json::Value = serde_json::from_slice(&delivery.body).unwrap();
            assert_eq!(
                body["notificationId"],
                header("x-tenantmeter-notification-id")
            );
            body
        })
        .collect()
}

fn test_levels() -> LevelPolicy {
    LevelPolicy {
        runaway_for: Duration::from_secs(60),
        cooldown: Duration::from_secs(60),
        ..LevelPolicy::default()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_runaway_goes_red_is_throttled_notified_once_per_step_and_recovers() {
    let stack = Stack::start(test_levels()).await;
    stack.add_sink().await;
    let runaway = stack.tenant("runaway").await;
    let calm = stack.tenant("calm").await;
    // About 10,000 input tokens: 3 cents of Sonnet per call.
    let big_prompt = "lorem ipsum ".repeat(3_400);
    let step = Duration::from_secs(30);

    // Two quiet minutes: both tenants call a little; both green.
    for _ in 0..4 {
        stack.call(&calm, "hello").await.unwrap();
        stack.call(&runaway, "hello").await.unwrap();
        stack.advance(step);
        assert_eq!(level(&stack.evaluated("calm").await), pb::Level::Green);
        assert_eq!(level(&stack.evaluated("runaway").await), pb::Level::Green);
    }

    // The runaway spends far above its $0.12/h baseline: a spike first, red
    // once it has lasted `runaway_for`.
    let mut seen = Vec::new();
    let mut turned_red = None;
    for _ in 0..8 {
        for _ in 0..4 {
            stack.call(&runaway, &big_prompt).await.unwrap();
        }
        stack.call(&calm, "hello").await.unwrap();
        stack.advance(step);
        let advanced = Instant::now();
        let status = stack.evaluated("runaway").await;
        assert_eq!(level(&stack.evaluated("calm").await), pb::Level::Green);
        if seen.last() != Some(&level(&status)) {
            seen.push(level(&status));
        }
        if level(&status) == pb::Level::Red {
            turned_red = Some((advanced, status));
            break;
        }
    }
    assert_eq!(seen, [pb::Level::Yellow, pb::Level::Red], "levels seen");
    let (advanced, red) = turned_red.unwrap();
    assert_eq!(red.reasons[0].code(), pb::ReasonCode::Runaway, "{red:?}");
    let policy = red.policy.clone().expect("a red tenant has a policy");
    assert_eq!(policy.source_level(), pb::Level::Red);
    assert!(policy.tokens_per_minute > 0);

    // The gateway enforces the cap: denied with the reason and a retry-after,
    // within one interval plus a second of the clock crossing into red.
    let denied = loop {
        match stack.call(&runaway, "hello").await {
            Err(status) => break status,
            Ok(_) => assert!(
                advanced.elapsed() < INTERVAL + Duration::from_secs(1),
                "still admitted {:?} after turning red",
                advanced.elapsed()
            ),
        }
    };
    let enforced_after = advanced.elapsed();
    assert_eq!(denied.code(), tonic::Code::ResourceExhausted, "{denied:?}");
    assert_eq!(
        denied.metadata().get("tenantmeter-deny-reason").unwrap(),
        "DENY_REASON_TOKEN_RATE_LIMIT"
    );
    assert_eq!(
        denied.metadata().get("tenantmeter-level").unwrap(),
        "LEVEL_RED"
    );
    assert!(denied.metadata().get("retry-after-ms").is_some());
    assert!(
        enforced_after <= INTERVAL + Duration::from_secs(1),
        "enforced {enforced_after:?} after turning red"
    );
    // The calm tenant is not affected.
    stack.call(&calm, "hello").await.unwrap();

    // It calms down: the 5-minute window drains, then it steps down one
    // level per cooldown.
    let mut recovery = vec![pb::Level::Red];
    for _ in 0..30 {
        stack.advance(step);
        let status = stack.evaluated("runaway").await;
        if recovery.last() != Some(&level(&status)) {
            recovery.push(level(&status));
            if level(&status) == pb::Level::Orange {
                let orange = status.policy.clone().unwrap();
                assert!(orange.tokens_per_minute > policy.tokens_per_minute);
            }
        }
        if level(&status) == pb::Level::Green {
            break;
        }
    }
    assert_eq!(
        recovery,
        [
            pb::Level::Red,
            pb::Level::Orange,
            pb::Level::Yellow,
            pb::Level::Green
        ]
    );
    stack.call(&runaway, "hello").await.unwrap();

    // One signed notification per transition of the runaway, none for the
    // calm tenant.
    let transitions = [
        ("LEVEL_GREEN", "LEVEL_YELLOW"),
        ("LEVEL_YELLOW", "LEVEL_RED"),
        ("LEVEL_RED", "LEVEL_ORANGE"),
        ("LEVEL_ORANGE", "LEVEL_YELLOW"),
        ("LEVEL_YELLOW", "LEVEL_GREEN"),
    ];
    // The fleet of two moved with the runaway, so fleet alerts are sent too;
    // they are the fleet test's business.
    let about = |subject: &str| {
        let stack = &stack;
        let subject = subject.to_owned();
        move || {
            verified(&stack.deliveries())
                .into_iter()
                .filter(|b| b["alert"]["subject"]["tenantId"] == subject.as_str())
                .collect::<Vec<_>>()
        }
    };
    let runaway_bodies = about("runaway");
    poll_until_ok(Duration::from_secs(30), || async {
        let count = runaway_bodies().len();
        if count >= transitions.len() {
            Ok(())
        } else {
            Err(format!("{count} notifications so far"))
        }
    })
    .await
    .unwrap();
    let bodies = runaway_bodies();
    assert!(about("calm")().is_empty());
    let mut got: Vec<(String, String, String)> = bodies
        .iter()
        .map(|b| {
            let alert = &b["alert"];
            (
                alert["raisedAt"].as_str().unwrap().to_owned(),
                alert["fromLevel"].as_str().unwrap().to_owned(),
                alert["toLevel"].as_str().unwrap().to_owned(),
            )
        })
        .collect();
    got.sort();
    let got: Vec<(&str, &str)> = got
        .iter()
        .map(|(_, f, t)| (f.as_str(), t.as_str()))
        .collect();
    assert_eq!(got, transitions);

    // The history has the same five alerts.
    let alerts = stack
        .alerting()
        .await
        .list_alerts(pb::ListAlertsRequest {
            subjects: vec![pb::TenantOrFleet {
                subject: Some(pb::tenant_or_fleet::Subject::TenantId("runaway".into())),
            }],
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner()
        .alerts;
    assert_eq!(alerts.len(), transitions.len());
    assert!(alerts.iter().all(
        |a| a.deliveries.len() == 1 && a.deliveries[0].state() == pb::DeliveryState::Delivered
    ));
    stack.stop().await;
}

/// Records `input_tokens` of Sonnet for `tenant` at the clock's now.
async fn record(
    meter: &mut MeterServiceClient<Channel>,
    now: SystemTime,
    events: Vec<(String, i64)>,
    seq: &mut u64,
) {
    let events = events
        .into_iter()
        .map(|(tenant, input_tokens)| {
            *seq += 1;
            pb::UsageEvent {
                event_id: format!("ev-{seq}"),
                tenant_id: tenant,
                model_id: SONNET.to_owned(),
                usage: Some(pb::TokenUsage {
                    input_tokens,
                    ..Default::default()
                }),
                event_time: Some(prost_types::Timestamp::from(now)),
                ..Default::default()
            }
        })
        .collect();
    let response = meter
        .record_usage(pb::RecordUsageRequest { events })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(response.rejected, 0, "{response:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn many_tenants_rising_a_little_together_turn_the_fleet_red() {
    let stack = Stack::start(test_levels()).await;
    let tenants: Vec<String> = (0..12).map(|i| format!("t{i:02}")).collect();
    {
        let mut pricing = PricingAdminServiceClient::new(channel(stack.pricing).await);
        pricing
            .assign_plans(bearer(pb::AssignPlansRequest {
                assignments: tenants
                    .iter()
                    .map(|t| pb::TenantPlanAssignment {
                        tenant_id: t.clone(),
                        plan_id: PLAN.to_owned(),
                    })
                    .collect(),
            }))
            .await
            .unwrap();
    }
    let mut meter = MeterServiceClient::new(channel(stack.meter).await);
    let mut seq = 0;
    let step = Duration::from_secs(30);
    // Each spends about $0.25/h against a $0.12/h baseline (z = 2.2): above
    // its baseline, below an anomaly, so each stays green.
    let mut fleet_levels = Vec::new();
    for _ in 0..24 {
        let events = tenants.iter().map(|t| (t.clone(), 700)).collect();
        record(&mut meter, stack.clock.now(), events, &mut seq).await;
        stack.advance(step);
        for tenant in &tenants {
            let status = stack.evaluated(tenant).await;
            assert!(
                level(&status) <= pb::Level::Yellow,
                "{tenant} at {:?}",
                level(&status)
            );
        }
        let fleet = stack.fleet_evaluated().await;
        if fleet_levels.last() != Some(&fleet.level()) {
            fleet_levels.push(fleet.level());
        }
        if fleet.level() == pb::Level::Red {
            assert_eq!(fleet.active_tenants, 12);
            assert_eq!(fleet.tenants_above_baseline, 12);
            assert_eq!(fleet.reasons[0].code(), pb::ReasonCode::CoMovement);
            break;
        }
    }
    assert_eq!(
        fleet_levels.last(),
        Some(&pb::Level::Red),
        "fleet levels {fleet_levels:?}"
    );
    stack.stop().await;
}
