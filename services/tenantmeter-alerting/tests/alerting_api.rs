#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // test support: a failed unwrap is a failed test
//! Black-box tests of alerting's gRPC surface (`AlertingService`,
//! `AlertingAdminService`) through real clients: a redis-server, pricing, the
//! meter and alerting run in-process on port 0 on one manual clock; usage is
//! fed with `MeterService.RecordUsage`, and passes are driven with
//! `Evaluate {commit: true}` (scheduled passes are off: `interval` 0), so
//! every level change happens at an instant the test chose.
//!
//! The tenants are on the default plan, overwritten with one at list price
//! whose expected spend ($0.12/h) is a new tenant's baseline: a tenant
//! recording 200,000 Sonnet input tokens ($0.60 in five minutes, ~60x the
//! baseline) spikes (yellow) at the first pass and is a runaway (red) one
//! `runaway_for` later; one recording 100 tokens stays green.

mod support;

use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::body::Bytes;
use axum::http::HeaderMap;
use tenantmeter_alerting::{AlertingConfig, AlertingDeps, RunError};
use tenantmeter_domain::levels::LevelPolicy;
use tenantmeter_proto::v1 as pb;
use tenantmeter_proto::v1::alerting_admin_service_client::AlertingAdminServiceClient;
use tenantmeter_proto::v1::alerting_service_client::AlertingServiceClient;
use tenantmeter_proto::v1::meter_service_client::MeterServiceClient;
use tenantmeter_runtime::clock::{Clock, ManualClock};
use tenantmeter_runtime::config::Validate as _;
use tenantmeter_runtime::shutdown::Shutdown;
use tenantmeter_testkit::{RedisServer, poll_until_ok};
use tokio::net::TcpListener;
use tokio::task::JoinHandle;
use tokio_stream::StreamExt as _;
use tonic::metadata::MetadataValue;
use tonic::transport::Channel;
use tonic::{Code, Request, Status, Streaming};
use tonic_types::StatusExt as _;

const ADMIN_TOKEN: &str = "alerting-api-admin-token-0123456789";
const SONNET: &str = "anthropic.claude-3-7-sonnet-20250219-v1:0";
/// The plan's expected spend: the baseline of a tenant without history.
const EXPECTED_NANOS_PER_HOUR: i64 = 120_000_000; // $0.12/h
const PLAN_RPM: i64 = 1_000_000;
const PLAN_TPM: i64 = 1_000_000_000;
/// Input tokens that make a tenant a runaway ($0.60 of Sonnet).
const BIG: i64 = 200_000;
/// Input tokens that keep a tenant green.
const SMALL: i64 = 100;
/// A runaway is red once it has lasted this long.
const RUNAWAY_FOR: Duration = Duration::from_secs(60);
/// Monday 2026-11-02 09:00 UTC.
const START_UNIX_SECS: u64 = 1_793_610_000;
/// 2026-12-01T00:00:00Z: the end of the month the tests run in.
const MONTH_END_UNIX_SECS: i64 = 1_796_083_200;
const WEBHOOK_SECRET: &str = "webhook-secret-0123456789abcdef-0123";
const WAIT: Duration = Duration::from_secs(30);

// ---------------------------------------------------------------- helpers

fn bearer<T>(message: T) -> Request<T> {
    support::with_token(ADMIN_TOKEN, message)
}

use support::channel;

fn ts(ms: i64) -> prost_types::Timestamp {
    prost_types::Timestamp {
        seconds: ms.div_euclid(1_000),
        nanos: i32::try_from(ms.rem_euclid(1_000) * 1_000_000).unwrap(),
    }
}

fn ms(timestamp: Option<&prost_types::Timestamp>) -> i64 {
    let t = timestamp.expect("a timestamp");
    t.seconds * 1_000 + i64::from(t.nanos) / 1_000_000
}

fn tenant(id: &str) -> pb::TenantOrFleet {
    pb::TenantOrFleet {
        subject: Some(pb::tenant_or_fleet::Subject::TenantId(id.to_owned())),
    }
}

fn fleet() -> pb::TenantOrFleet {
    pb::TenantOrFleet {
        subject: Some(pb::tenant_or_fleet::Subject::Fleet(true)),
    }
}

/// The tenant an alert is about; `None` for the fleet.
fn alert_tenant(alert: &pb::Alert) -> Option<&str> {
    match alert.subject.as_ref()?.subject.as_ref()? {
        pb::tenant_or_fleet::Subject::TenantId(id) => Some(id.as_str()),
        pb::tenant_or_fleet::Subject::Fleet(_) => None,
    }
}

fn alerts_about<'a>(alerts: &'a [pb::Alert], id: &str) -> Vec<&'a pb::Alert> {
    alerts
        .iter()
        .filter(|a| alert_tenant(a) == Some(id))
        .collect()
}

/// Asserts INVALID_ARGUMENT whose `BadRequest` names `field` (and whose
/// message starts with it).
fn assert_invalid(result: Result<impl std::fmt::Debug, Status>, field: &str) {
    let status = result.expect_err(&format!("accepted; expected a violation of {field}"));
    assert_eq!(status.code(), Code::InvalidArgument, "{field}: {status:?}");
    let violations = status
        .get_details_bad_request()
        .unwrap_or_else(|| panic!("{field}: no BadRequest in {status:?}"))
        .field_violations;
    let fields: Vec<&str> = violations.iter().map(|v| v.field.as_str()).collect();
    assert_eq!(fields, [field], "{status:?}");
    assert!(
        status.message().starts_with(&format!("{field}: ")),
        "{status:?}"
    );
}

fn test_levels() -> LevelPolicy {
    LevelPolicy {
        runaway_for: RUNAWAY_FOR,
        // Levels do not step down during a test.
        cooldown: Duration::from_secs(3_600),
        ..LevelPolicy::default()
    }
}

/// A webhook receiver on 127.0.0.1 recording every body.
#[derive(Debug, Clone, Default)]
struct Receiver {
    bodies: Arc<Mutex<Vec<serde_json::Value>>>,
}

impl Receiver {
    async fn start(shutdown: &Shutdown) -> (Self, String) {
        let receiver = Self::default();
        let recorded = Arc::clone(&receiver.bodies);
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let app = axum::Router::new().route(
            "/hook",
            axum::routing::post(move |_headers: HeaderMap, body: Bytes| {
                let recorded = Arc::clone(&recorded);
                async move {
                    let body: serde_json::Value = serde_json::from_slice(&body).unwrap();
                    recorded.lock().unwrap().push(body);
                    "ok"
                }
            }),
        );
        let stop = shutdown.clone();
        tokio::spawn(async move {
            axum::serve(listener, app)
                .with_graceful_shutdown(async move { stop.triggered().await })
                .await
                .unwrap();
        });
        (receiver, format!("http://{addr}/hook"))
    }

    /// Tenant ids of the alerts received (`fleet` for the fleet's).
    fn tenants(&self) -> Vec<String> {
        self.bodies
            .lock()
            .unwrap()
            .iter()
            .map(|b| {
                b["alert"]["subject"]["tenantId"]
                    .as_str()
                    .unwrap_or("fleet")
                    .to_owned()
            })
            .collect()
    }

    fn alert_ids(&self) -> Vec<String> {
        self.bodies
            .lock()
            .unwrap()
            .iter()
            .map(|b| {
                b["alert"]["alertId"]
                    .as_str()
                    .unwrap_or_default()
                    .to_owned()
            })
            .collect()
    }
}

// ---------------------------------------------------------------- the stack

/// One alerting instance, stoppable on its own.
struct Alerting {
    addr: SocketAddr,
    shutdown: Shutdown,
    task: JoinHandle<Result<(), RunError>>,
}

struct Stack {
    redis: RedisServer,
    clock: ManualClock,
    /// Stops pricing, the meter and the webhook receiver.
    shutdown: Shutdown,
    /// The meter and pricing, awaited on `stop` (before Redis goes).
    tasks: Vec<JoinHandle<()>>,
    pricing: SocketAddr,
    meter: SocketAddr,
    plan_id: String,
    alerting: Alerting,
    lease_ttl: Duration,
    seq: u64,
}

impl Stack {
    async fn start() -> Self {
        Self::start_with(Duration::from_secs(5)).await
    }

    async fn start_with(lease_ttl: Duration) -> Self {
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

        let (pricing, meter, [pricing_task, meter_task]) =
            support::start_pricing_and_meter(&redis, ADMIN_TOKEN, &shared_clock, &shutdown).await;

        let plan_id = Self::plan(pricing, meter).await;
        // Started once the price book holds the plan, so its first book does.
        let alerting = start_alerting(&redis, &shared_clock, meter, pricing, lease_ttl).await;
        Self {
            redis,
            clock,
            shutdown,
            tasks: vec![meter_task, pricing_task],
            pricing,
            meter,
            plan_id,
            alerting,
            lease_ttl,
            seq: 0,
        }
    }

    /// Replaces the default plan with one at list price, without limits the
    /// tests reach, whose expected spend is new tenants' baseline; waits until
    /// the meter follows it. Returns its id.
    async fn plan(pricing: SocketAddr, meter: SocketAddr) -> String {
        support::flat_default_plan(
            pricing,
            meter,
            ADMIN_TOKEN,
            EXPECTED_NANOS_PER_HOUR,
            pb::PlanLimits {
                requests_per_minute: PLAN_RPM,
                tokens_per_minute: PLAN_TPM,
                period_budget_nanos_usd: 0,
            },
        )
        .await
    }

    fn now_ms(&self) -> i64 {
        tenantmeter_runtime::clock::unix_ms(self.clock.now())
    }

    fn advance(&self, by: Duration) -> i64 {
        self.clock.advance(by);
        self.now_ms()
    }

    async fn api(&self) -> AlertingServiceClient<Channel> {
        AlertingServiceClient::new(channel(self.alerting.addr).await)
    }

    async fn admin(&self) -> AlertingAdminServiceClient<Channel> {
        AlertingAdminServiceClient::new(channel(self.alerting.addr).await)
    }

    async fn meter(&self) -> MeterServiceClient<Channel> {
        MeterServiceClient::new(channel(self.meter).await)
    }

    /// Records Sonnet input tokens for each tenant at the clock's now.
    async fn record(&mut self, usage: &[(&str, i64)]) {
        let now = self.clock.now();
        let events = usage
            .iter()
            .map(|(tenant_id, input_tokens)| {
                self.seq += 1;
                pb::UsageEvent {
                    event_id: format!("ev-{}", self.seq),
                    tenant_id: (*tenant_id).to_owned(),
                    model_id: SONNET.to_owned(),
                    usage: Some(pb::TokenUsage {
                        input_tokens: *input_tokens,
                        ..Default::default()
                    }),
                    event_time: Some(prost_types::Timestamp::from(now)),
                    ..Default::default()
                }
            })
            .collect();
        let response = self
            .meter()
            .await
            .record_usage(pb::RecordUsageRequest { events })
            .await
            .unwrap()
            .into_inner();
        assert_eq!(response.rejected, 0, "{response:?}");
    }

    async fn evaluate(
        &self,
        at_ms: i64,
        commit: bool,
        tenant_ids: &[&str],
    ) -> Result<pb::EvaluateResponse, Status> {
        self.admin()
            .await
            .evaluate(bearer(pb::EvaluateRequest {
                as_of: Some(ts(at_ms)),
                tenant_ids: tenant_ids.iter().map(|t| (*t).to_owned()).collect(),
                commit,
            }))
            .await
            .map(tonic::Response::into_inner)
    }

    /// A committed pass over every tenant and the fleet at `at_ms`.
    async fn commit(&self, at_ms: i64) -> pb::EvaluateResponse {
        self.evaluate(at_ms, true, &[]).await.unwrap()
    }

    async fn status(&self, tenant_id: &str) -> pb::TenantStatus {
        self.api()
            .await
            .get_status(pb::GetStatusRequest {
                tenant_id: tenant_id.to_owned(),
            })
            .await
            .unwrap()
            .into_inner()
            .status
            .unwrap()
    }

    async fn list_alerts(&self, request: pb::ListAlertsRequest) -> Vec<pb::Alert> {
        self.api()
            .await
            .list_alerts(request)
            .await
            .unwrap()
            .into_inner()
            .alerts
    }

    async fn all_alerts(&self) -> Vec<pb::Alert> {
        self.list_alerts(pb::ListAlertsRequest {
            page_size: 1_000,
            ..Default::default()
        })
        .await
    }

    /// `big` tenants spike at T0 + 30s (yellow) and are red at T0 + 90s;
    /// `small` ones stay green. Returns the two instants.
    async fn drive_to_red(&mut self, big: &[&str], small: &[&str]) -> (i64, i64) {
        let usage: Vec<(&str, i64)> = big
            .iter()
            .map(|t| (*t, BIG))
            .chain(small.iter().map(|t| (*t, SMALL)))
            .collect();
        self.record(&usage).await;
        let t1 = self.advance(Duration::from_secs(30));
        self.commit(t1).await;
        for id in big {
            assert_eq!(
                self.status(id).await.level(),
                pb::Level::Yellow,
                "{id} at t1"
            );
        }
        let t2 = self.advance(RUNAWAY_FOR);
        self.commit(t2).await;
        for id in big {
            let status = self.status(id).await;
            assert_eq!(status.level(), pb::Level::Red, "{id} at t2: {status:?}");
        }
        for id in small {
            assert_eq!(self.status(id).await.level(), pb::Level::Green, "{id}");
        }
        (t1, t2)
    }

    async fn add_sink(&self, url: &str) {
        self.admin()
            .await
            .upsert_sink(bearer(pb::UpsertSinkRequest {
                sink: Some(pb::NotificationSink {
                    sink_id: "ops".to_owned(),
                    display_name: "ops on call".to_owned(),
                    webhook_url: url.to_owned(),
                    enabled: true,
                    ..Default::default()
                }),
                secret: WEBHOOK_SECRET.to_owned(),
            }))
            .await
            .unwrap();
    }

    /// Stops alerting (only) and waits for it to end.
    async fn stop_alerting(&mut self) {
        self.alerting.shutdown.trigger();
        let task = &mut self.alerting.task;
        tokio::time::timeout(WAIT, task)
            .await
            .expect("alerting drains in time")
            .unwrap()
            .unwrap();
    }

    /// Starts a new alerting on the same Redis.
    async fn restart_alerting(&mut self) {
        self.stop_alerting().await;
        let clock: Arc<dyn Clock> = Arc::new(self.clock.clone());
        self.alerting = start_alerting(
            &self.redis,
            &clock,
            self.meter,
            self.pricing,
            self.lease_ttl,
        )
        .await;
    }

    async fn stop(mut self) {
        if !self.alerting.shutdown.is_triggered() {
            self.stop_alerting().await;
        }
        self.shutdown.trigger();
        for task in self.tasks.drain(..) {
            tokio::time::timeout(WAIT, task)
                .await
                .expect("drained in time")
                .unwrap();
        }
    }
}

fn alerting_config(meter: SocketAddr, pricing: SocketAddr, lease_ttl: Duration) -> AlertingConfig {
    AlertingConfig {
        meter_url: format!("http://{meter}"),
        pricing_url: format!("http://{pricing}"),
        // No scheduled passes: Evaluate drives them.
        interval: Duration::ZERO,
        shards: 4,
        lease_ttl,
        levels: test_levels(),
        notifier: tenantmeter_alerting::sinks::NotifierConfig {
            poll_interval: Duration::from_millis(50),
            ..Default::default()
        },
        ..Default::default()
    }
}

async fn start_alerting(
    redis: &RedisServer,
    clock: &Arc<dyn Clock>,
    meter: SocketAddr,
    pricing: SocketAddr,
    lease_ttl: Duration,
) -> Alerting {
    let config = alerting_config(meter, pricing, lease_ttl);
    config.validate().unwrap();
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let shutdown = Shutdown::new();
    let deps = AlertingDeps {
        redis_url: redis.url(),
        admin_token: Some(ADMIN_TOKEN.to_owned()),
        clock: Arc::clone(clock),
    };
    let task = tokio::spawn(Box::pin(tenantmeter_alerting::run(
        config,
        deps,
        listener,
        shutdown.clone(),
    )));
    // Serving once a read answers.
    let client = AlertingServiceClient::new(channel(addr).await);
    poll_until_ok(WAIT, || {
        let mut client = client.clone();
        async move {
            client
                .get_fleet_status(pb::GetFleetStatusRequest {})
                .await
                .map(|_| ())
        }
    })
    .await
    .unwrap();
    Alerting {
        addr,
        shutdown,
        task,
    }
}

/// The next message of a stream, within `WAIT`.
async fn next<T>(stream: &mut Streaming<T>) -> T {
    tokio::time::timeout(WAIT, stream.next())
        .await
        .expect("a message in time")
        .expect("the stream is open")
        .expect("a message, not an error")
}

// ---------------------------------------------------------------- 1. GetStatus

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn get_status_of_a_tenant_never_evaluated_is_unspecified_and_bad_ids_are_named() {
    let mut stack = Stack::start().await;
    let mut api = stack.api().await;

    let status = stack.status("never-seen").await;
    assert_eq!(status.tenant_id, "never-seen");
    assert_eq!(status.level(), pb::Level::Unspecified);
    assert!(status.evaluated_at.is_none(), "{status:?}");

    // A tenant with usage is not evaluated until a pass runs.
    stack.record(&[("has-usage", SMALL)]).await;
    assert_eq!(
        stack.status("has-usage").await.level(),
        pb::Level::Unspecified
    );

    for bad in ["", "has space", "slash/ed", &"x".repeat(65)] {
        assert_invalid(
            api.get_status(pb::GetStatusRequest {
                tenant_id: bad.to_owned(),
            })
            .await,
            "tenant_id",
        );
    }
    stack.stop().await;
}

// ---------------------------------------------------------------- 2. Evaluate

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn evaluate_what_if_stores_nothing_and_commits_only_move_forward() {
    let mut stack = Stack::start().await;
    stack.record(&[("spender", BIG), ("calm", SMALL)]).await;
    let t1 = stack.advance(Duration::from_secs(30));

    // What-if: the spike is found, with an alert without an id, and nothing
    // is stored.
    let what_if = stack.evaluate(t1, false, &[]).await.unwrap();
    assert_eq!(what_if.tenants_evaluated, 2, "{what_if:?}");
    assert_eq!(ms(what_if.as_of.as_ref()), t1);
    let spender = what_if
        .statuses
        .iter()
        .find(|s| s.tenant_id == "spender")
        .expect("the spender's status (its level changed)");
    assert_eq!(spender.level(), pb::Level::Yellow);
    assert_eq!(ms(spender.evaluated_at.as_ref()), t1);
    let alerts = alerts_about(&what_if.alerts, "spender");
    assert_eq!(alerts.len(), 1, "{what_if:?}");
    assert_eq!(alerts[0].to_level(), pb::Level::Yellow);
    assert!(
        what_if.alerts.iter().all(|a| a.alert_id.is_empty()),
        "what-if alerts have no id: {what_if:?}"
    );
    assert!(what_if.alerts.iter().all(|a| a.deliveries.is_empty()));
    assert!(what_if.fleet.is_some(), "all tenants: the fleet too");

    assert_eq!(
        stack.status("spender").await.level(),
        pb::Level::Unspecified
    );
    assert_eq!(stack.status("calm").await.level(), pb::Level::Unspecified);
    assert!(stack.all_alerts().await.is_empty());
    let listed = stack
        .api()
        .await
        .list_statuses(pb::ListStatusesRequest::default())
        .await
        .unwrap()
        .into_inner();
    assert!(listed.statuses.is_empty(), "{listed:?}");
    // A what-if may be repeated at the same instant.
    let again = stack.evaluate(t1, false, &[]).await.unwrap();
    assert_eq!(again.alerts.len(), what_if.alerts.len());

    // Commit at t1: stored, the alert with an id.
    let committed = stack.commit(t1).await;
    assert_eq!(committed.tenants_evaluated, 2);
    let spender_alerts = alerts_about(&committed.alerts, "spender");
    assert_eq!(spender_alerts.len(), 1);
    assert!(!spender_alerts[0].alert_id.is_empty());
    let stored = stack.status("spender").await;
    assert_eq!(stored.level(), pb::Level::Yellow);
    assert_eq!(ms(stored.evaluated_at.as_ref()), t1);
    assert_eq!(stack.status("calm").await.level(), pb::Level::Green);
    let history = stack.all_alerts().await;
    assert_eq!(
        alerts_about(&history, "spender")
            .iter()
            .map(|a| a.alert_id.clone())
            .collect::<Vec<_>>(),
        [spender_alerts[0].alert_id.clone()]
    );

    // Not forward: the same instant, or earlier, all tenants or one.
    for (at, named) in [
        (t1, &[][..]),
        (t1 - 1_000, &[][..]),
        (t1, &["spender"][..]),
        (t1 - 1, &["calm"][..]),
    ] {
        let refused = stack.evaluate(at, true, named).await.unwrap_err();
        assert_eq!(refused.code(), Code::FailedPrecondition, "{refused:?}");
        assert_eq!(
            tenantmeter_runtime::error::error_reason(&refused).as_deref(),
            Some("EVALUATION_NOT_FORWARD"),
            "{refused:?}"
        );
    }
    // ... and refusing changed nothing.
    assert_eq!(ms(stack.status("spender").await.evaluated_at.as_ref()), t1);
    assert_eq!(stack.all_alerts().await.len(), history.len());
    // A what-if in the past is still fine.
    stack.evaluate(t1 - 1_000, false, &[]).await.unwrap();

    // Named tenants: their statuses, no fleet, counted.
    let t2 = stack.advance(Duration::from_secs(10));
    let named = stack.evaluate(t2, true, &["calm"]).await.unwrap();
    assert_eq!(named.tenants_evaluated, 1);
    assert_eq!(
        named
            .statuses
            .iter()
            .map(|s| s.tenant_id.as_str())
            .collect::<Vec<_>>(),
        ["calm"]
    );
    assert!(named.fleet.is_none(), "{named:?}");
    assert_eq!(ms(stack.status("calm").await.evaluated_at.as_ref()), t2);
    assert_eq!(ms(stack.status("spender").await.evaluated_at.as_ref()), t1);

    // Bad requests name the field.
    assert_invalid(
        stack.evaluate(t2, false, &["calm", "not valid!"]).await,
        "tenant_ids[1]",
    );
    assert_invalid(stack.evaluate(t2, true, &[""]).await, "tenant_ids[0]");
    let bad_time = stack
        .admin()
        .await
        .evaluate(bearer(pb::EvaluateRequest {
            as_of: Some(prost_types::Timestamp {
                seconds: 1,
                nanos: -5,
            }),
            ..Default::default()
        }))
        .await;
    assert_invalid(bad_time, "as_of");
    // Admin only.
    let anonymous = stack
        .admin()
        .await
        .evaluate(pb::EvaluateRequest::default())
        .await
        .unwrap_err();
    assert_eq!(anonymous.code(), Code::Unauthenticated, "{anonymous:?}");
    stack.stop().await;
}

// ---------------------------------------------------------------- 3. ListStatuses

async fn list_all(
    api: &mut AlertingServiceClient<Channel>,
    min_level: pb::Level,
    page_size: i32,
) -> Vec<(String, pb::Level)> {
    let mut seen = Vec::new();
    let mut token = String::new();
    for _ in 0..50 {
        let page = api
            .list_statuses(pb::ListStatusesRequest {
                min_level: min_level.into(),
                page_size,
                page_token: token.clone(),
            })
            .await
            .unwrap()
            .into_inner();
        let most = if page_size == 0 { 100 } else { page_size };
        assert!(
            page.statuses.len() <= usize::try_from(most).unwrap(),
            "{page:?}"
        );
        seen.extend(
            page.statuses
                .iter()
                .map(|s| (s.tenant_id.clone(), s.level())),
        );
        if page.next_page_token.is_empty() {
            return seen;
        }
        token = page.next_page_token;
    }
    panic!("no last page after 50 pages: {seen:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn list_statuses_orders_by_level_then_id_pages_and_filters() {
    let mut stack = Stack::start().await;
    // red-b and red-a run away; spike spends big a minute later (yellow
    // at t2); calm-a and calm-b stay green.
    stack
        .record(&[
            ("red-b", BIG),
            ("red-a", BIG),
            ("calm-b", SMALL),
            ("calm-a", SMALL),
        ])
        .await;
    let t1 = stack.advance(Duration::from_secs(30));
    stack.commit(t1).await;
    stack.record(&[("spike", BIG)]).await;
    let t2 = stack.advance(RUNAWAY_FOR);
    let response = stack.commit(t2).await;
    assert_eq!(response.tenants_evaluated, 5);

    let expected = vec![
        ("red-a".to_owned(), pb::Level::Red),
        ("red-b".to_owned(), pb::Level::Red),
        ("spike".to_owned(), pb::Level::Yellow),
        ("calm-a".to_owned(), pb::Level::Green),
        ("calm-b".to_owned(), pb::Level::Green),
    ];
    let mut api = stack.api().await;
    // One page with everything, and the statuses are the stored ones.
    let page = api
        .list_statuses(pb::ListStatusesRequest::default())
        .await
        .unwrap()
        .into_inner();
    assert!(page.next_page_token.is_empty(), "{page:?}");
    for status in &page.statuses {
        assert_eq!(ms(status.evaluated_at.as_ref()), t2);
        assert_eq!(&stack.status(&status.tenant_id).await, status);
    }
    assert_eq!(
        list_all(&mut api, pb::Level::Unspecified, 0).await,
        expected
    );
    // A page that holds exactly the rest is the last one.
    let exact = api
        .list_statuses(pb::ListStatusesRequest {
            page_size: 5,
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(exact.statuses.len(), 5);
    assert!(exact.next_page_token.is_empty(), "{exact:?}");
    // Page by page: no duplicate, no gap.
    for size in [1, 2, 4] {
        assert_eq!(
            list_all(&mut api, pb::Level::Unspecified, size).await,
            expected,
            "page_size {size}"
        );
    }
    // At least a level.
    assert_eq!(
        list_all(&mut api, pb::Level::Yellow, 1).await,
        expected[..3].to_vec()
    );
    assert_eq!(
        list_all(&mut api, pb::Level::Orange, 1).await,
        expected[..2].to_vec()
    );
    assert_eq!(
        list_all(&mut api, pb::Level::Red, 0).await,
        expected[..2].to_vec()
    );
    assert_eq!(list_all(&mut api, pb::Level::Green, 3).await, expected);

    // Bad requests name the field.
    for page_size in [-1, 1_001] {
        assert_invalid(
            api.list_statuses(pb::ListStatusesRequest {
                page_size,
                ..Default::default()
            })
            .await,
            "page_size",
        );
    }
    for page_token in ["garbage", "7|", "x|red-a"] {
        assert_invalid(
            api.list_statuses(pb::ListStatusesRequest {
                page_token: page_token.to_owned(),
                ..Default::default()
            })
            .await,
            "page_token",
        );
    }
    assert_invalid(
        api.list_statuses(pb::ListStatusesRequest {
            min_level: 9,
            ..Default::default()
        })
        .await,
        "min_level",
    );
    stack.stop().await;
}

// ---------------------------------------------------------------- 4. Budgets

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn budgets_round_trip_show_in_statuses_and_need_the_admin_token() {
    let mut stack = Stack::start().await;
    let mut admin = stack.admin().await;
    let mut api = stack.api().await;
    let budget = pb::Budget {
        subject: Some(tenant("spender")),
        period: pb::CalendarPeriod::Month.into(),
        basis: pb::CostBasis::TenantCharge.into(),
        amount_nanos_usd: 10_000_000_000, // $10
        enforcement: pb::BudgetEnforcement::Soft.into(),
        updated_at: None,
    };

    // Without the token, or with a wrong one: nothing changes.
    let refused = admin
        .set_budget(pb::SetBudgetRequest {
            budget: Some(budget.clone()),
        })
        .await
        .unwrap_err();
    assert_eq!(refused.code(), Code::Unauthenticated, "{refused:?}");
    let mut wrong = Request::new(pb::SetBudgetRequest {
        budget: Some(budget.clone()),
    });
    wrong.metadata_mut().insert(
        "authorization",
        MetadataValue::try_from("Bearer not-the-token").unwrap(),
    );
    assert_eq!(
        admin.set_budget(wrong).await.unwrap_err().code(),
        Code::Unauthenticated
    );
    let refused = admin
        .delete_budget(pb::DeleteBudgetRequest {
            subject: Some(tenant("spender")),
            period: pb::CalendarPeriod::Month.into(),
        })
        .await
        .unwrap_err();
    assert_eq!(refused.code(), Code::Unauthenticated);
    let none = api
        .get_budget(pb::GetBudgetRequest {
            subject: Some(tenant("spender")),
        })
        .await
        .unwrap()
        .into_inner();
    assert!(none.budgets.is_empty(), "{none:?}");

    // Set: stored with updated_at from the clock.
    let stored = admin
        .set_budget(bearer(pb::SetBudgetRequest {
            budget: Some(budget.clone()),
        }))
        .await
        .unwrap()
        .into_inner()
        .budget
        .unwrap();
    assert_eq!(ms(stored.updated_at.as_ref()), stack.now_ms());
    assert_eq!(
        pb::Budget {
            updated_at: None,
            ..stored.clone()
        },
        budget
    );
    let fleet_budget = pb::Budget {
        subject: Some(fleet()),
        period: pb::CalendarPeriod::Day.into(),
        basis: pb::CostBasis::ProviderCost.into(),
        amount_nanos_usd: 50_000_000_000,
        enforcement: pb::BudgetEnforcement::Soft.into(),
        updated_at: None,
    };
    admin
        .set_budget(bearer(pb::SetBudgetRequest {
            budget: Some(fleet_budget.clone()),
        }))
        .await
        .unwrap();
    // A hard fleet budget is refused, naming the field; the soft one stays.
    assert_invalid(
        admin
            .set_budget(bearer(pb::SetBudgetRequest {
                budget: Some(pb::Budget {
                    enforcement: pb::BudgetEnforcement::Hard.into(),
                    ..fleet_budget.clone()
                }),
            }))
            .await,
        "budget.enforcement",
    );
    assert_invalid(
        admin
            .set_budget(bearer(pb::SetBudgetRequest {
                budget: Some(pb::Budget {
                    amount_nanos_usd: 0,
                    ..budget.clone()
                }),
            }))
            .await,
        "budget.amount_nanos_usd",
    );
    assert_invalid(
        admin
            .set_budget(bearer(pb::SetBudgetRequest { budget: None }))
            .await,
        "budget",
    );

    let got = api
        .get_budget(pb::GetBudgetRequest {
            subject: Some(tenant("spender")),
        })
        .await
        .unwrap()
        .into_inner()
        .budgets;
    assert_eq!(got, std::slice::from_ref(&stored));
    let fleet_got = api
        .get_budget(pb::GetBudgetRequest {
            subject: Some(fleet()),
        })
        .await
        .unwrap()
        .into_inner()
        .budgets;
    assert_eq!(fleet_got.len(), 1);
    assert_eq!(fleet_got[0].enforcement(), pb::BudgetEnforcement::Soft);
    assert_invalid(
        api.get_budget(pb::GetBudgetRequest {
            subject: Some(tenant("no way")),
        })
        .await,
        "subject.tenant_id",
    );
    // Listed: the fleet's first, then tenants.
    let listed = api
        .list_budgets(pb::ListBudgetsRequest::default())
        .await
        .unwrap()
        .into_inner();
    assert_eq!(listed.budgets.len(), 2, "{listed:?}");
    assert_eq!(listed.budgets[0].subject, Some(fleet()));
    assert_eq!(listed.budgets[1], stored);
    assert!(listed.next_page_token.is_empty());
    let first = api
        .list_budgets(pb::ListBudgetsRequest {
            page_size: 1,
            page_token: String::new(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(first.budgets.len(), 1);
    let second = api
        .list_budgets(pb::ListBudgetsRequest {
            page_size: 1,
            page_token: first.next_page_token,
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(second.budgets, std::slice::from_ref(&stored));
    assert_invalid(
        api.list_budgets(pb::ListBudgetsRequest {
            page_size: -1,
            page_token: String::new(),
        })
        .await,
        "page_size",
    );

    // The tenant's status reports the budget's use.
    stack.record(&[("spender", BIG)]).await;
    let t1 = stack.advance(Duration::from_secs(30));
    let evaluated = stack.commit(t1).await;
    let status = stack.status("spender").await;
    let month = status.month_spend.expect("month spend");
    assert!(month.tenant_charge_nanos_usd > 0, "{status:?}");
    assert_eq!(status.budgets.len(), 1, "{status:?}");
    let used = &status.budgets[0];
    assert_eq!(used.period(), pb::CalendarPeriod::Month);
    assert_eq!(used.basis(), pb::CostBasis::TenantCharge);
    assert_eq!(used.enforcement(), pb::BudgetEnforcement::Soft);
    assert!(!used.from_plan);
    assert_eq!(used.budget_nanos_usd, 10_000_000_000);
    assert_eq!(used.actual_nanos_usd, month.tenant_charge_nanos_usd);
    assert_eq!(
        used.actual_bps,
        used.actual_nanos_usd * 10_000 / used.budget_nanos_usd,
        "{used:?}"
    );
    assert!(used.actual_bps > 0);
    assert!(used.forecast_nanos_usd >= used.actual_nanos_usd, "{used:?}");
    assert_eq!(
        used.forecast_bps,
        used.forecast_nanos_usd * 10_000 / used.budget_nanos_usd,
        "{used:?}"
    );
    assert_eq!(ms(used.period_end.as_ref()), MONTH_END_UNIX_SECS * 1_000);
    // The fleet's status reports the fleet's budget.
    let fleet_status = evaluated.fleet.expect("the fleet was evaluated");
    assert_eq!(fleet_status.budgets.len(), 1, "{fleet_status:?}");
    assert_eq!(fleet_status.budgets[0].period(), pb::CalendarPeriod::Day);
    assert_eq!(fleet_status.budgets[0].budget_nanos_usd, 50_000_000_000);

    // Delete: true once, then false; the next pass has no budget.
    for expected in [true, false] {
        let deleted = admin
            .delete_budget(bearer(pb::DeleteBudgetRequest {
                subject: Some(tenant("spender")),
                period: pb::CalendarPeriod::Month.into(),
            }))
            .await
            .unwrap()
            .into_inner()
            .deleted;
        assert_eq!(deleted, expected);
    }
    assert_invalid(
        admin
            .delete_budget(bearer(pb::DeleteBudgetRequest {
                subject: Some(tenant("spender")),
                period: 0,
            }))
            .await,
        "period",
    );
    assert!(
        api.get_budget(pb::GetBudgetRequest {
            subject: Some(tenant("spender")),
        })
        .await
        .unwrap()
        .into_inner()
        .budgets
        .is_empty()
    );
    let t2 = stack.advance(Duration::from_secs(30));
    stack.commit(t2).await;
    let status = stack.status("spender").await;
    assert!(status.budgets.is_empty(), "{status:?}");
    stack.stop().await;
}

// ---------------------------------------------------------------- 5. Alerts

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn alerts_are_listed_acknowledged_once_and_silenced_ones_not_sent() {
    let mut stack = Stack::start().await;
    let (receiver, url) = Receiver::start(&stack.shutdown).await;
    stack.add_sink(&url).await;
    let mut admin = stack.admin().await;
    let mut api = stack.api().await;

    // Silence one tenant for an hour.
    let silenced = admin
        .silence(bearer(pb::SilenceRequest {
            subject: Some(tenant("hushed")),
            duration: Some(prost_types::Duration {
                seconds: 3_600,
                nanos: 0,
            }),
            silenced_by: "alice".into(),
            comment: "maintenance".into(),
        }))
        .await
        .unwrap()
        .into_inner();
    let hushed_until = stack.now_ms() + 3_600_000;
    assert_eq!(ms(silenced.silenced_until.as_ref()), hushed_until);
    assert_eq!(silenced.subject, Some(tenant("hushed")));

    // Both spike at t1 and run away at t2.
    let (t1, t2) = stack.drive_to_red(&["hushed", "noisy"], &["calm"]).await;

    // The history: newest first, two transitions each, with reasons and
    // the status right after the transition.
    let history = stack.all_alerts().await;
    let ids: Vec<&str> = history.iter().map(|a| a.alert_id.as_str()).collect();
    let mut sorted = ids.clone();
    sorted.sort_unstable_by(|a, b| b.cmp(a));
    assert_eq!(ids, sorted, "newest first");
    assert!(alerts_about(&history, "calm").is_empty());
    for id in ["hushed", "noisy"] {
        let about = alerts_about(&history, id);
        let steps: Vec<(pb::Level, pb::Level, i64)> = about
            .iter()
            .map(|a| (a.from_level(), a.to_level(), ms(a.raised_at.as_ref())))
            .collect();
        assert_eq!(
            steps,
            [
                (pb::Level::Yellow, pb::Level::Red, t2),
                (pb::Level::Green, pb::Level::Yellow, t1),
            ],
            "{id}: {about:?}"
        );
        for alert in about {
            assert!(!alert.reasons.is_empty(), "{alert:?}");
            assert!(!alert.shadow);
            let Some(pb::alert::Snapshot::TenantStatus(snapshot)) = &alert.snapshot else {
                panic!("no tenant snapshot: {alert:?}");
            };
            assert_eq!(snapshot.tenant_id, id);
            assert_eq!(snapshot.level, alert.to_level);
            assert_eq!(snapshot.previous_level, alert.from_level);
            assert_eq!(snapshot.reasons, alert.reasons);
            assert_eq!(snapshot.evaluated_at, alert.raised_at);
            let got = api
                .get_alert(pb::GetAlertRequest {
                    alert_id: alert.alert_id.clone(),
                })
                .await
                .unwrap()
                .into_inner()
                .alert
                .unwrap();
            assert_eq!(got.alert_id, alert.alert_id);
            assert_eq!(got.reasons, alert.reasons);
            assert_eq!(got.snapshot, alert.snapshot);
        }
    }
    let red = alerts_about(&history, "noisy")[0].clone();
    assert_eq!(red.reasons[0].code(), pb::ReasonCode::Runaway, "{red:?}");
    assert_eq!(red.reasons[0].level(), pb::Level::Red);

    // The silenced tenant's alerts carry the silence; the other's do not.
    for alert in alerts_about(&history, "hushed") {
        assert_eq!(ms(alert.silenced_until.as_ref()), hushed_until, "{alert:?}");
    }
    for alert in alerts_about(&history, "noisy") {
        assert!(alert.silenced_until.is_none(), "{alert:?}");
    }
    let hushed_status = stack.status("hushed").await;
    assert_eq!(ms(hushed_status.silenced_until.as_ref()), hushed_until);
    assert!(stack.status("noisy").await.silenced_until.is_none());

    // Only the unsilenced tenant's alerts reach the sink (the fleet's may).
    let noisy_ids: BTreeSet<String> = alerts_about(&history, "noisy")
        .iter()
        .map(|a| a.alert_id.clone())
        .collect();
    poll_until_ok(WAIT, || async {
        let got: BTreeSet<String> = receiver.alert_ids().into_iter().collect();
        if noisy_ids.is_subset(&got) {
            Ok(())
        } else {
            Err(format!("received {got:?}, want {noisy_ids:?}"))
        }
    })
    .await
    .unwrap();
    let fleet_sent = history.iter().filter(|a| alert_tenant(a).is_none()).count();
    // Every alert due to the sink has arrived; none about the silenced tenant.
    poll_until_ok(WAIT, || async {
        let count = receiver.tenants().len();
        if count >= noisy_ids.len() + fleet_sent {
            Ok(())
        } else {
            Err(format!("{count} notifications"))
        }
    })
    .await
    .unwrap();
    assert!(
        !receiver.tenants().iter().any(|t| t == "hushed"),
        "a silenced tenant's alert was sent: {:?}",
        receiver.tenants()
    );
    assert_eq!(
        receiver.tenants().iter().filter(|t| *t == "noisy").count(),
        2,
        "each alert sent once"
    );
    // Deliveries reported: delivered for the one, suppressed (not sent) for
    // the other.
    for id in &noisy_ids {
        let alert = api
            .get_alert(pb::GetAlertRequest {
                alert_id: id.clone(),
            })
            .await
            .unwrap()
            .into_inner()
            .alert
            .unwrap();
        assert_eq!(alert.deliveries.len(), 1, "{alert:?}");
        assert_eq!(alert.deliveries[0].sink_id, "ops");
        assert_eq!(alert.deliveries[0].state(), pb::DeliveryState::Delivered);
    }

    // Acknowledge keeps the first acknowledgement.
    let first = admin
        .acknowledge(bearer(pb::AcknowledgeRequest {
            alert_ids: vec![red.alert_id.clone()],
            acknowledged_by: "alice".into(),
            comment: "on it".into(),
        }))
        .await
        .unwrap()
        .into_inner()
        .alerts;
    assert_eq!(first.len(), 1);
    assert!(first[0].acknowledged);
    assert_eq!(first[0].acknowledged_by, "alice");
    assert_eq!(first[0].acknowledge_comment, "on it");
    let acked_at = ms(first[0].acknowledged_at.as_ref());
    assert_eq!(acked_at, stack.now_ms());
    stack.advance(Duration::from_secs(5));
    let second = admin
        .acknowledge(bearer(pb::AcknowledgeRequest {
            alert_ids: vec![red.alert_id.clone()],
            acknowledged_by: "bob".into(),
            comment: "me too".into(),
        }))
        .await
        .unwrap()
        .into_inner()
        .alerts;
    assert_eq!(second[0].acknowledged_by, "alice");
    assert_eq!(second[0].acknowledge_comment, "on it");
    assert_eq!(ms(second[0].acknowledged_at.as_ref()), acked_at);
    let got = api
        .get_alert(pb::GetAlertRequest {
            alert_id: red.alert_id.clone(),
        })
        .await
        .unwrap()
        .into_inner()
        .alert
        .unwrap();
    assert!(got.acknowledged);
    assert_eq!(got.acknowledged_by, "alice");
    let unacked = stack
        .list_alerts(pb::ListAlertsRequest {
            unacknowledged_only: true,
            page_size: 1_000,
            ..Default::default()
        })
        .await;
    assert_eq!(unacked.len(), history.len() - 1);
    assert!(unacked.iter().all(|a| a.alert_id != red.alert_id));
    // Filters by subject and level.
    let only_noisy_red = stack
        .list_alerts(pb::ListAlertsRequest {
            subjects: vec![tenant("noisy")],
            min_level: pb::Level::Red.into(),
            ..Default::default()
        })
        .await;
    assert_eq!(
        only_noisy_red
            .iter()
            .map(|a| a.alert_id.as_str())
            .collect::<Vec<_>>(),
        [red.alert_id.as_str()]
    );

    // Unknown and malformed ids.
    let missing = api
        .get_alert(pb::GetAlertRequest {
            alert_id: format!("{}-0123456789abcdef", START_UNIX_SECS * 1_000),
        })
        .await
        .unwrap_err();
    assert_eq!(missing.code(), Code::NotFound, "{missing:?}");
    assert_invalid(
        api.get_alert(pb::GetAlertRequest {
            alert_id: "nope".into(),
        })
        .await,
        "alert_id",
    );
    let missing = admin
        .acknowledge(bearer(pb::AcknowledgeRequest {
            alert_ids: vec![format!("{}-0123456789abcdef", START_UNIX_SECS * 1_000)],
            acknowledged_by: "alice".into(),
            comment: String::new(),
        }))
        .await
        .unwrap_err();
    assert_eq!(missing.code(), Code::NotFound, "{missing:?}");

    // Contract: a silenced alert's delivery to a matching sink is recorded
    // as SUPPRESSED ("Not sent: the subject was silenced").
    for alert in alerts_about(&history, "hushed") {
        let got = api
            .get_alert(pb::GetAlertRequest {
                alert_id: alert.alert_id.clone(),
            })
            .await
            .unwrap()
            .into_inner()
            .alert
            .unwrap();
        let deliveries: Vec<(String, pb::DeliveryState)> = got
            .deliveries
            .iter()
            .map(|d| (d.sink_id.clone(), d.state()))
            .collect();
        assert_eq!(
            deliveries,
            [("ops".to_owned(), pb::DeliveryState::Suppressed)],
            "a silenced alert's deliveries: {got:?}"
        );
    }
    stack.stop().await;
}

// ---------------------------------------------------------------- 6. Watches

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn watch_levels_sends_current_then_changes_and_watch_alerts_replays_then_follows() {
    let mut stack = Stack::start().await;
    stack.record(&[("runner", BIG), ("calm", SMALL)]).await;
    let t1 = stack.advance(Duration::from_secs(30));
    stack.commit(t1).await;
    let mut api = stack.api().await;

    // every_evaluation needs named subjects.
    assert_invalid(
        api.watch_levels(pb::WatchLevelsRequest {
            every_evaluation: true,
            ..Default::default()
        })
        .await,
        "subjects",
    );
    assert_invalid(
        api.watch_levels(pb::WatchLevelsRequest {
            subjects: vec![tenant("calm"), tenant("bad id")],
            ..Default::default()
        })
        .await,
        "subjects[1].tenant_id",
    );

    let mut levels = api
        .watch_levels(pb::WatchLevelsRequest {
            send_current: true,
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    // First the current status of the fleet and of each tenant.
    let mut current = BTreeSet::new();
    for _ in 0..3 {
        let message = next(&mut levels).await;
        assert!(message.current, "{message:?}");
        match message.status.unwrap() {
            pb::watch_levels_response::Status::TenantStatus(s) => {
                assert_eq!(ms(s.evaluated_at.as_ref()), t1);
                let expected = if s.tenant_id == "runner" {
                    pb::Level::Yellow
                } else {
                    pb::Level::Green
                };
                assert_eq!(s.level(), expected, "{s:?}");
                current.insert(s.tenant_id);
            }
            pb::watch_levels_response::Status::FleetStatus(_) => {
                current.insert("(fleet)".to_owned());
            }
        }
    }
    assert_eq!(
        current,
        BTreeSet::from(["(fleet)".to_owned(), "calm".to_owned(), "runner".to_owned()])
    );

    // A dashboard watcher of one tenant gets every evaluation of it.
    let mut calm_watch = api
        .watch_levels(pb::WatchLevelsRequest {
            subjects: vec![tenant("calm")],
            every_evaluation: true,
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();

    // The runner turns red: its new status follows, not current.
    let t2 = stack.advance(RUNAWAY_FOR);
    stack.commit(t2).await;
    let changed = loop {
        let message = next(&mut levels).await;
        assert!(!message.current, "{message:?}");
        match message.status.unwrap() {
            pb::watch_levels_response::Status::TenantStatus(s) => break s,
            pb::watch_levels_response::Status::FleetStatus(_) => {}
        }
    };
    assert_eq!(changed.tenant_id, "runner");
    assert_eq!(changed.level(), pb::Level::Red);
    assert_eq!(changed.previous_level(), pb::Level::Yellow);
    assert_eq!(ms(changed.evaluated_at.as_ref()), t2);
    // The calm tenant did not change level: not sent to the level watcher,
    // but sent to the every-evaluation one.
    let calm = loop {
        let message = next(&mut calm_watch).await;
        let Some(pb::watch_levels_response::Status::TenantStatus(s)) = message.status else {
            panic!("only the calm tenant was asked for: {message:?}");
        };
        assert_eq!(s.tenant_id, "calm");
        if ms(s.evaluated_at.as_ref()) == t2 {
            break s;
        }
    };
    assert_eq!(calm.level(), pb::Level::Green);

    // WatchAlerts: replay after the oldest alert, then live.
    let history = stack.all_alerts().await;
    assert!(history.len() >= 2, "{history:?}");
    let oldest = history.last().unwrap().alert_id.clone();
    let mut after: Vec<String> = history[..history.len() - 1]
        .iter()
        .map(|a| a.alert_id.clone())
        .collect();
    after.reverse();
    let mut alerts = api
        .watch_alerts(pb::WatchAlertsRequest {
            after_alert_id: oldest,
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    let mut replayed = Vec::new();
    for _ in 0..after.len() {
        let message = next(&mut alerts).await;
        assert!(message.replayed, "{message:?}");
        replayed.push(message.alert.unwrap().alert_id);
    }
    assert_eq!(replayed, after, "replayed in order, without the one named");
    // Live: a new spike.
    stack.record(&[("late", BIG)]).await;
    let t3 = stack.advance(Duration::from_secs(30));
    let response = stack.commit(t3).await;
    let live_late = alerts_about(&response.alerts, "late");
    assert_eq!(live_late.len(), 1, "{response:?}");
    let live = loop {
        let message = next(&mut alerts).await;
        assert!(!message.replayed, "{message:?}");
        let alert = message.alert.unwrap();
        if alert_tenant(&alert) == Some("late") {
            break alert;
        }
    };
    assert_eq!(live.alert_id, live_late[0].alert_id);
    assert_eq!(live.to_level(), pb::Level::Yellow);
    assert_eq!(ms(live.raised_at.as_ref()), t3);
    // The level watcher sees it too.
    let late = loop {
        let message = next(&mut levels).await;
        if let Some(pb::watch_levels_response::Status::TenantStatus(s)) = message.status {
            break s;
        }
    };
    assert_eq!(late.tenant_id, "late");
    assert_eq!(late.level(), pb::Level::Yellow);
    drop((levels, calm_watch, alerts));
    stack.stop().await;
}

// ---------------------------------------------------------------- 7. Shadow mode

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shadow_mode_sends_the_red_policy_to_the_meter_unenforced() {
    let mut stack = Stack::start().await;
    let (_, t2) = stack.drive_to_red(&["runner"], &["calm"]).await;
    let mut meter = stack.meter().await;
    let mut admin = stack.admin().await;

    // Enforced: the meter's limits are the red policy's.
    let red = stack.status("runner").await;
    assert!(!red.shadow);
    let policy = red.policy.clone().expect("a red tenant has a policy");
    assert_eq!(policy.source_level(), pb::Level::Red);
    assert!(!policy.shadow);
    assert!(policy.tokens_per_minute > 0 && policy.tokens_per_minute < PLAN_TPM);
    let stored = meter
        .get_policy(pb::GetPolicyRequest {
            tenant_id: "runner".into(),
        })
        .await
        .unwrap()
        .into_inner();
    let effective = stored.effective.clone().unwrap();
    assert!(!effective.shadow);
    assert_eq!(effective.tokens_per_minute, policy.tokens_per_minute);

    // Shadow mode on globally.
    let refused = admin
        .set_shadow_mode(pb::SetShadowModeRequest {
            scope: Some(pb::set_shadow_mode_request::Scope::Global(true)),
            setting: pb::ShadowSetting::On.into(),
        })
        .await
        .unwrap_err();
    assert_eq!(refused.code(), Code::Unauthenticated);
    assert_invalid(
        admin
            .set_shadow_mode(bearer(pb::SetShadowModeRequest {
                scope: Some(pb::set_shadow_mode_request::Scope::Global(false)),
                setting: pb::ShadowSetting::On.into(),
            }))
            .await,
        "global",
    );
    let config = admin
        .set_shadow_mode(bearer(pb::SetShadowModeRequest {
            scope: Some(pb::set_shadow_mode_request::Scope::Global(true)),
            setting: pb::ShadowSetting::On.into(),
        }))
        .await
        .unwrap()
        .into_inner()
        .config
        .unwrap();
    assert!(config.global_shadow);
    assert!(config.overrides.is_empty());
    let got = admin
        .get_shadow_mode(bearer(pb::GetShadowModeRequest {}))
        .await
        .unwrap()
        .into_inner()
        .config
        .unwrap();
    assert_eq!(got, config);

    let t3 = stack.advance(Duration::from_secs(30));
    let response = stack.commit(t3).await;
    assert!(response.fleet.unwrap().shadow);
    let red = stack.status("runner").await;
    assert_eq!(red.level(), pb::Level::Red, "{red:?}");
    assert!(red.shadow, "{red:?}");
    let policy = red.policy.clone().expect("policy");
    assert!(policy.shadow, "{policy:?}");
    assert_eq!(policy.source_level(), pb::Level::Red);
    assert!(
        ms(policy.decided_at.as_ref()) > t2,
        "re-sent at t3: {policy:?}"
    );
    assert!(stack.status("calm").await.shadow);

    // The meter stored it in shadow: reported, the plan's limits enforced.
    let stored = meter
        .get_policy(pb::GetPolicyRequest {
            tenant_id: "runner".into(),
        })
        .await
        .unwrap()
        .into_inner();
    let stored_policy = stored.policy.expect("a stored policy");
    assert!(stored_policy.shadow, "{stored_policy:?}");
    assert_eq!(stored_policy.source_level(), pb::Level::Red);
    assert_eq!(stored_policy.tokens_per_minute, policy.tokens_per_minute);
    let effective = stored.effective.unwrap();
    assert!(effective.shadow, "{effective:?}");
    assert_eq!(effective.plan_id, stack.plan_id);
    assert_eq!(effective.tokens_per_minute, PLAN_TPM, "{effective:?}");
    assert_eq!(effective.requests_per_minute, PLAN_RPM, "{effective:?}");
    assert!(effective.denied_model_ids.is_empty());
    assert!(effective.model_downgrades.is_empty());

    // A tenant override takes it out of shadow again at the next pass.
    let config = admin
        .set_shadow_mode(bearer(pb::SetShadowModeRequest {
            scope: Some(pb::set_shadow_mode_request::Scope::TenantId(
                "runner".into(),
            )),
            setting: pb::ShadowSetting::Off.into(),
        }))
        .await
        .unwrap()
        .into_inner()
        .config
        .unwrap();
    assert_eq!(
        config.overrides,
        [pb::TenantShadowOverride {
            tenant_id: "runner".into(),
            shadow: false,
        }]
    );
    let t4 = stack.advance(Duration::from_secs(30));
    stack.commit(t4).await;
    assert!(!stack.status("runner").await.shadow);
    let effective = meter
        .get_policy(pb::GetPolicyRequest {
            tenant_id: "runner".into(),
        })
        .await
        .unwrap()
        .into_inner()
        .effective
        .unwrap();
    assert!(!effective.shadow);
    assert!(effective.tokens_per_minute < PLAN_TPM, "{effective:?}");
    stack.stop().await;
}

// ---------------------------------------------------------------- 8. Restart

/// Commits at `at_ms` once the leases the stopped instance held are free.
async fn commit_when_leases_free(stack: &Stack, at_ms: i64) -> pb::EvaluateResponse {
    poll_until_ok(WAIT, || async {
        match stack.evaluate(at_ms, true, &[]).await {
            Err(status)
                if tenantmeter_runtime::error::error_reason(&status).as_deref()
                    == Some("SHARD_HELD_ELSEWHERE") =>
            {
                Err(status.to_string())
            }
            other => Ok(other),
        }
    })
    .await
    .unwrap()
    .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restart_neither_forgets_levels_nor_raises_them_again() {
    // Short leases: this test is about the state, not about handing leases over.
    let mut stack = Stack::start_with(Duration::from_secs(2)).await;
    let (_, t2) = stack.drive_to_red(&["runner"], &["calm"]).await;
    let before = stack.all_alerts().await;
    let red_before = stack.status("runner").await;

    stack.restart_alerting().await;
    // The new instance reads what the old one stored.
    assert_eq!(stack.status("runner").await, red_before);
    assert_eq!(stack.all_alerts().await, before);

    // Still spending far above the baseline, within the window: red, and no
    // new alert for it (a forgetful restart would spike it to yellow again).
    let t3 = stack.advance(Duration::from_secs(30));
    let response = commit_when_leases_free(&stack, t3).await;
    assert!(
        alerts_about(&response.alerts, "runner").is_empty(),
        "re-alerted: {response:?}"
    );
    assert!(alerts_about(&response.alerts, "calm").is_empty());
    let red = stack.status("runner").await;
    assert_eq!(red.level(), pb::Level::Red, "{red:?}");
    assert_eq!(red.level_since, red_before.level_since);
    assert_eq!(ms(red.evaluated_at.as_ref()), t3);
    assert_eq!(stack.status("calm").await.level(), pb::Level::Green);
    let after = stack.all_alerts().await;
    assert_eq!(
        alerts_about(&after, "runner").len(),
        alerts_about(&before, "runner").len()
    );
    assert_eq!(after.len(), before.len() + response.alerts.len());
    assert!(ms(red.policy.unwrap().decided_at.as_ref()) >= t2);
    stack.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restart_keeps_refusing_commits_at_or_before_the_last_one() {
    let mut stack = Stack::start_with(Duration::from_secs(2)).await;
    let (_, t2) = stack.drive_to_red(&["runner"], &["calm"]).await;
    let alerts_before = stack.all_alerts().await.len();
    stack.restart_alerting().await;
    // Wait for the leases without committing: a what-if never needs them,
    // so probe with a commit far in the past, which must be refused either
    // way (held elsewhere, or not forward).
    let refused = poll_until_ok(WAIT, || async {
        match stack.evaluate(t2 - 60_000, true, &[]).await {
            Err(status)
                if tenantmeter_runtime::error::error_reason(&status).as_deref()
                    == Some("SHARD_HELD_ELSEWHERE") =>
            {
                Err(status.to_string())
            }
            other => Ok(other),
        }
    })
    .await
    .unwrap();
    let status = match refused {
        Err(status) => status,
        Ok(response) => {
            let runner = stack.status("runner").await;
            panic!(
                "a commit at {} (before the last committed pass at {t2}) was accepted: \
                 {} tenants evaluated, {} alerts; the runner is now {:?} evaluated at {}",
                t2 - 60_000,
                response.tenants_evaluated,
                response.alerts.len(),
                runner.level(),
                ms(runner.evaluated_at.as_ref()),
            );
        }
    };
    assert_eq!(status.code(), Code::FailedPrecondition, "{status:?}");
    assert_eq!(
        tenantmeter_runtime::error::error_reason(&status).as_deref(),
        Some("EVALUATION_NOT_FORWARD")
    );
    let refused = stack.evaluate(t2, true, &["runner"]).await.unwrap_err();
    assert_eq!(refused.code(), Code::FailedPrecondition, "{refused:?}");
    assert_eq!(stack.all_alerts().await.len(), alerts_before);
    assert_eq!(ms(stack.status("runner").await.evaluated_at.as_ref()), t2);
    stack.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_graceful_stop_hands_the_leases_over_at_once() {
    // Leases far longer than the test: only giving them up on shutdown lets
    // the next instance commit.
    let mut stack = Stack::start_with(Duration::from_secs(300)).await;
    let (_, t2) = stack.drive_to_red(&["runner"], &["calm"]).await;
    stack.restart_alerting().await;
    let t3 = t2 + 30_000;
    stack.advance(Duration::from_secs(30));
    let response = stack.evaluate(t3, true, &[]).await;
    let response = response.unwrap_or_else(|status| {
        panic!("the restarted instance cannot commit after a graceful stop: {status:?}")
    });
    assert_eq!(response.tenants_evaluated, 2);
    assert_eq!(stack.status("runner").await.level(), pb::Level::Red);
    stack.stop().await;
}
