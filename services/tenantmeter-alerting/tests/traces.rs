#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // test support: a failed unwrap is a failed test
//! A level transition is an OpenTelemetry span event, collected for real: the
//! test process installs the project's telemetry (`telemetry::init` with an
//! injected environment naming an in-process OTLP receiver), runs a
//! redis-server, pricing, the meter and alerting in-process on one manual
//! clock, records a tenant's runaway spend with `MeterService.RecordUsage`, and
//! drives one committed pass with `AlertingAdminService/Evaluate {commit:
//! true}` under a `traceparent` of its own. It reads back what was exported:
//! the pass's `alerting.pass` span carries one `level transition` event per
//! tenant transition, whose attributes name the tenant and the levels, and the
//! pass hangs off the Evaluate call's server span in the caller's trace.
//!
//! Its own test binary, with one test, because `telemetry::init` installs the
//! process-wide subscriber and tracer provider, and the guard's shutdown ends
//! the export for good.

mod support;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tenantmeter_alerting::{AlertingConfig, AlertingDeps};
use tenantmeter_domain::levels::LevelPolicy;
use tenantmeter_proto::v1 as pb;
use tenantmeter_proto::v1::alerting_admin_service_client::AlertingAdminServiceClient;
use tenantmeter_proto::v1::alerting_service_client::AlertingServiceClient;
use tenantmeter_proto::v1::meter_service_client::MeterServiceClient;
use tenantmeter_runtime::clock::{Clock, ManualClock};
use tenantmeter_runtime::config::{EnvMap, TelemetryConfig, Validate as _};
use tenantmeter_runtime::shutdown::Shutdown;
use tenantmeter_runtime::telemetry;
use tenantmeter_testkit::otlp::SpanKind;
use tenantmeter_testkit::{
    CollectedEvent, CollectedSpan, OtlpReceiver, RedisServer, poll_until_ok,
};
use tokio::net::TcpListener;
use tonic::Request;
use tonic::metadata::MetadataValue;

const ADMIN_TOKEN: &str = "alerting-traces-admin-token-0123456789";
const SONNET: &str = "anthropic.claude-3-7-sonnet-20250219-v1:0";
const ADMIN_SERVICE: &str = "tenantmeter.v1.AlertingAdminService";
const METER_SERVICE: &str = "tenantmeter.v1.MeterService";
const PASS_SPAN: &str = "alerting.pass";
const TRANSITION_EVENT: &str = "level transition";
/// The plan's expected spend, a new tenant's baseline: $0.12/h.
const EXPECTED_NANOS_PER_HOUR: i64 = 120_000_000;
/// $0.60 of Sonnet input in five minutes, ~60x the baseline: a spike (yellow)
/// at the first pass.
const BIG: i64 = 200_000;
/// Stays green.
const SMALL: i64 = 100;
/// The tenant that spikes, and one that does not.
const SPENDER: &str = "spender";
const CALM: &str = "calm";
/// Monday 2026-11-02 09:00 UTC.
const START_UNIX_SECS: u64 = 1_793_610_000;
const WAIT: Duration = Duration::from_secs(30);
/// The batch exporter sends every 5 s by default (OTEL_BSP_SCHEDULE_DELAY, read
/// from the process environment we must not touch): the pass's span arrives
/// within one or two of those periods, and a loaded machine gets the rest.
const SPANS_TIMEOUT: Duration = Duration::from_secs(45);

fn random_hex(bytes: usize) -> String {
    let mut buffer = vec![0_u8; bytes];
    getrandom::fill(&mut buffer).unwrap();
    buffer.iter().map(|b| format!("{b:02x}")).collect()
}

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

/// `LEVEL_YELLOW` -> `yellow`: how the engine spells a tenant's level in the
/// event.
fn level_name(level: pb::Level) -> String {
    level
        .as_str_name()
        .trim_start_matches("LEVEL_")
        .to_ascii_lowercase()
}

/// The test playing an instrumented caller: the trace and span its Evaluate
/// names as its parent.
struct Caller {
    trace_id: String,
    span_id: String,
}

impl Caller {
    fn new() -> Self {
        Self {
            trace_id: random_hex(16),
            span_id: random_hex(8),
        }
    }

    /// `request` with a W3C `traceparent` naming this caller, sampled.
    fn traced<T>(&self, mut request: Request<T>) -> Request<T> {
        let traceparent = format!("00-{}-{}-01", self.trace_id, self.span_id);
        request
            .metadata_mut()
            .insert("traceparent", MetadataValue::try_from(traceparent).unwrap());
        request
    }
}

// ---------------------------------------------------------------- the stack

struct Stack {
    _redis: RedisServer,
    clock: ManualClock,
    shutdown: Shutdown,
    alerting_shutdown: Shutdown,
    tasks: Vec<tokio::task::JoinHandle<()>>,
    meter: SocketAddr,
    alerting: SocketAddr,
}

impl Stack {
    async fn start() -> Self {
        let redis = RedisServer::start().await.unwrap();
        let clock = ManualClock::at_unix_secs(START_UNIX_SECS);
        let shared_clock: Arc<dyn Clock> = Arc::new(clock.clone());
        let shutdown = Shutdown::new();

        let (pricing, meter, [pricing_task, meter_task]) =
            support::start_pricing_and_meter(&redis, ADMIN_TOKEN, &shared_clock, &shutdown).await;

        plan(pricing, meter).await;

        // Started once the price book holds the plan, so its first book does.
        let config = AlertingConfig {
            meter_url: format!("http://{meter}"),
            pricing_url: format!("http://{pricing}"),
            // No scheduled passes: the one pass of the test is its Evaluate.
            interval: Duration::ZERO,
            shards: 4,
            levels: LevelPolicy {
                cooldown: Duration::from_secs(3_600),
                ..LevelPolicy::default()
            },
            ..Default::default()
        };
        config.validate().unwrap();
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let alerting = listener.local_addr().unwrap();
        let alerting_shutdown = Shutdown::new();
        let deps = AlertingDeps {
            redis_url: redis.url(),
            admin_token: Some(ADMIN_TOKEN.to_owned()),
            clock: Arc::clone(&shared_clock),
        };
        let stop = alerting_shutdown.clone();
        let alerting_task = tokio::spawn(async move {
            Box::pin(tenantmeter_alerting::run(config, deps, listener, stop))
                .await
                .unwrap();
        });
        // Serving once a read answers.
        let client = AlertingServiceClient::new(channel(alerting).await);
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

        Self {
            _redis: redis,
            clock,
            shutdown,
            alerting_shutdown,
            // Alerting first: it stops before the meter it reads.
            tasks: vec![alerting_task, meter_task, pricing_task],
            meter,
            alerting,
        }
    }

    fn advance(&self, by: Duration) -> i64 {
        self.clock.advance(by);
        tenantmeter_runtime::clock::unix_ms(self.clock.now())
    }

    /// Records Sonnet input tokens for each tenant at the clock's now.
    async fn record(&self, usage: &[(&str, i64)]) {
        let now = self.clock.now();
        let events = usage
            .iter()
            .enumerate()
            .map(|(i, (tenant_id, input_tokens))| pb::UsageEvent {
                event_id: format!("ev-{i}"),
                tenant_id: (*tenant_id).to_owned(),
                model_id: SONNET.to_owned(),
                usage: Some(pb::TokenUsage {
                    input_tokens: *input_tokens,
                    ..Default::default()
                }),
                event_time: Some(prost_types::Timestamp::from(now)),
                ..Default::default()
            })
            .collect();
        let response = MeterServiceClient::new(channel(self.meter).await)
            .record_usage(pb::RecordUsageRequest { events })
            .await
            .unwrap()
            .into_inner();
        assert_eq!(response.rejected, 0, "{response:?}");
    }

    /// Stops alerting, and its background tasks (which give the leases up in
    /// Redis), then pricing and the meter; Redis goes last, with the stack.
    async fn stop(mut self) {
        self.alerting_shutdown.trigger();
        let mut tasks = self.tasks.drain(..);
        let alerting = tasks.next().expect("the alerting task");
        tokio::time::timeout(WAIT, alerting)
            .await
            .expect("alerting drained in time")
            .unwrap();
        assert!(
            self.alerting_shutdown.wait_for_tasks(WAIT).await,
            "alerting's background tasks ended in time"
        );
        self.shutdown.trigger();
        for task in tasks {
            tokio::time::timeout(WAIT, task)
                .await
                .expect("drained in time")
                .unwrap();
        }
    }
}

/// The default plan at list price, new tenants' baseline $0.12/h.
async fn plan(pricing: SocketAddr, meter: SocketAddr) {
    support::flat_default_plan(
        pricing,
        meter,
        ADMIN_TOKEN,
        EXPECTED_NANOS_PER_HOUR,
        pb::PlanLimits {
            requests_per_minute: 1_000_000,
            tokens_per_minute: 1_000_000_000,
            period_budget_nanos_usd: 0,
        },
    )
    .await;
}

// ---------------------------------------------------------------- spans

fn in_trace<'a>(spans: &'a [CollectedSpan], trace_id: &str) -> Vec<&'a CollectedSpan> {
    spans.iter().filter(|s| s.trace_id() == trace_id).collect()
}

fn is_evaluate_server(span: &CollectedSpan) -> bool {
    span.kind() == SpanKind::Server
        && span.str_attribute("rpc.service") == Some(ADMIN_SERVICE)
        && span.str_attribute("rpc.method") == Some("Evaluate")
}

/// The `level transition` events of `span` about `tenant`.
fn transitions_of<'a>(span: &'a CollectedSpan, tenant: &str) -> Vec<CollectedEvent<'a>> {
    span.events_named(TRANSITION_EVENT)
        .into_iter()
        .filter(|e| e.str_attribute("tenant") == Some(tenant))
        .collect()
}

/// Whether everything asserted on below has arrived: the Evaluate server span
/// and a pass span holding the spender's transition, in the caller's trace.
fn pass_exported(spans: &[CollectedSpan], caller: &Caller) -> bool {
    let trace = in_trace(spans, &caller.trace_id);
    trace.iter().any(|s| is_evaluate_server(s))
        && trace
            .iter()
            .any(|s| s.name() == PASS_SPAN && !transitions_of(s, SPENDER).is_empty())
}

/// The one span of `spans` that `matches`; fails naming them otherwise.
fn one<'a>(
    spans: &[&'a CollectedSpan],
    what: &str,
    matches: impl Fn(&CollectedSpan) -> bool,
) -> &'a CollectedSpan {
    let found: Vec<&CollectedSpan> = spans.iter().copied().filter(|s| matches(s)).collect();
    let names: Vec<&str> = spans.iter().map(|s| s.name()).collect();
    assert_eq!(found.len(), 1, "exactly one {what} among {names:?}");
    found[0]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_committed_transition_is_a_span_event_of_the_pass_under_the_evaluate_call() {
    let receiver = OtlpReceiver::start().await.unwrap();
    let env = EnvMap::from([(telemetry::OTLP_ENDPOINT_VAR.to_owned(), receiver.endpoint())]);
    // Logs at warn keep the output readable; spans (and their events) are
    // exported at INFO whatever the log filter says.
    let config = TelemetryConfig {
        log_filter: "warn".to_owned(),
        ..TelemetryConfig::default()
    };
    let guard = telemetry::init(&config, "tenantmeter-alerting-traces-test", &env).unwrap();
    assert!(
        guard.is_exporting(),
        "this test installs the exporter first"
    );

    let stack = Stack::start().await;
    stack.record(&[(SPENDER, BIG), (CALM, SMALL)]).await;
    let t1 = stack.advance(Duration::from_secs(30));

    let caller = Caller::new();
    let response = AlertingAdminServiceClient::new(channel(stack.alerting).await)
        .evaluate(caller.traced(bearer(pb::EvaluateRequest {
            as_of: Some(ts(t1)),
            tenant_ids: Vec::new(),
            commit: true,
        })))
        .await
        .unwrap()
        .into_inner();
    // The pass raised the spender's transition, and only the spender's.
    let raised: Vec<&pb::Alert> = response
        .alerts
        .iter()
        .filter(|a| {
            matches!(
                a.subject.as_ref().and_then(|s| s.subject.as_ref()),
                Some(pb::tenant_or_fleet::Subject::TenantId(_))
            )
        })
        .collect();
    assert_eq!(raised.len(), 1, "{response:?}");
    let alert = raised[0];
    assert_eq!(
        alert.subject.as_ref().and_then(|s| s.subject.as_ref()),
        Some(&pb::tenant_or_fleet::Subject::TenantId(SPENDER.to_owned()))
    );
    assert_eq!(alert.to_level(), pb::Level::Yellow, "{alert:?}");
    assert!(!alert.alert_id.is_empty(), "committed: {alert:?}");

    // Spans end as the call finishes and the batch exporter sends them on its
    // schedule: wait for them rather than flush now. A timeout is not fatal
    // here: the assertions below then say what is missing.
    let _ = receiver
        .wait_for(SPANS_TIMEOUT, |spans| pass_exported(spans, &caller))
        .await;
    guard.shutdown().await;
    let spans = receiver.spans();
    let trace = in_trace(&spans, &caller.trace_id);

    // The Evaluate call's server span continues the caller's trace...
    let server = one(&trace, "Evaluate server span", is_evaluate_server);
    assert_eq!(server.name(), format!("{ADMIN_SERVICE}/Evaluate"));
    assert_eq!(
        server.parent_span_id().as_deref(),
        Some(caller.span_id.as_str()),
        "Evaluate continues the caller's trace under the caller's span"
    );
    assert_eq!(server.int_attribute("rpc.grpc.status_code"), Some(0));

    // ... and the pass it ran is its child.
    let pass = one(&trace, "alerting.pass span", |s| s.name() == PASS_SPAN);
    assert_eq!(
        pass.parent_span_id(),
        Some(server.span_id()),
        "the pass Evaluate ran is a child of Evaluate's server span"
    );
    assert_eq!(pass.int_attribute("as_of_ms"), Some(t1));
    assert_eq!(pass.str_attribute("mode"), Some("Commit"));
    // The pass read the meter under its own span.
    let reads = trace
        .iter()
        .filter(|s| {
            s.kind() == SpanKind::Client
                && s.str_attribute("rpc.service") == Some(METER_SERVICE)
                && s.str_attribute("rpc.method") == Some("ListTenantUsage")
        })
        .collect::<Vec<_>>();
    assert!(!reads.is_empty(), "the pass read the meter");
    for read in reads {
        assert_eq!(read.parent_span_id(), Some(pass.span_id()));
    }

    // One `level transition` event for the spender's transition, whose
    // attributes are the `tracing` fields under their own names.
    let events = transitions_of(pass, SPENDER);
    let names: Vec<&str> = pass.events().iter().map(CollectedEvent::name).collect();
    assert_eq!(events.len(), 1, "one transition of {SPENDER}: {names:?}");
    let event = events[0];
    let keys = event.attribute_keys();
    assert_eq!(event.str_attribute("tenant"), Some(SPENDER), "{keys:?}");
    assert_eq!(
        event.str_attribute("from"),
        Some(level_name(alert.from_level()).as_str()),
        "{keys:?}"
    );
    assert_eq!(event.str_attribute("from"), Some("green"));
    assert_eq!(event.str_attribute("to"), Some("yellow"));
    assert_eq!(
        event.str_attribute("to"),
        Some(level_name(alert.to_level()).as_str())
    );
    assert_eq!(event.bool_attribute("shadow"), Some(alert.shadow));
    let reason = event.str_attribute("reason").expect("a reason attribute");
    assert!(!reason.is_empty(), "{keys:?}");
    assert_eq!(
        alert.reasons.first().map(|r| r.message.as_str()),
        Some(reason)
    );
    // What tracing-opentelemetry adds: the event's level and target.
    assert_eq!(event.str_attribute("level"), Some("INFO"));
    assert_eq!(
        event.str_attribute("target"),
        Some("tenantmeter_alerting::engine")
    );
    // Recorded while the pass ran.
    assert!(
        event.time_unix_nano() >= pass.span.start_time_unix_nano
            && event.time_unix_nano() <= pass.span.end_time_unix_nano,
        "the event is within the pass"
    );
    // No event for a tenant that did not change level.
    assert!(transitions_of(pass, CALM).is_empty(), "{names:?}");

    stack.stop().await;
    receiver.stop().await.unwrap();
}
