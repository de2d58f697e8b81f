#![allow(clippy::unwrap_used, clippy::expect_used)]
//! Notification sinks against a real redis-server (and one Redis Cluster
//! case) and a real HTTP receiver on 127.0.0.1: validation naming fields,
//! secrets never returned, signed proto3 JSON bodies, retries with the same
//! notification id, exactly-once delivery with two workers, idempotent
//! enqueue, failing sinks reported, filtering, disabled and deleted sinks,
//! TestSink.

use std::collections::{HashSet, VecDeque};
use std::sync::atomic::{AtomicU16, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::routing::post;
use serde_json::Value;
use tenantmeter_alerting::sinks::{
    DUE_KEY, EnqueueOutcome, HealthState, Notifier, NotifierConfig, SECRETS_KEY, SINKS_KEY, Sink,
    SinkError, SinkQueue, SinkStore, UpsertSink, matches, verify_signature, webhook,
};
use tenantmeter_domain::levels::Level;
use tenantmeter_proto::v1 as pb;
use tenantmeter_runtime::clock::{Clock, ManualClock, SystemClock};
use tenantmeter_runtime::redis_connection::RedisConnection;
use tenantmeter_testkit::{RedisCluster, RedisServer, free_port, poll_until_ok, wait_until};
use tokio_util::sync::CancellationToken;
use tonic::Code;

const TIMEOUT: Duration = Duration::from_secs(2);
/// Upper bound of every wait; deliveries take milliseconds, the margin is for
/// a loaded two-core machine.
const WAIT: Duration = Duration::from_secs(20);
const SECRET: &str = "whsec-0123456789abcdef0123456789abcdef";
/// 2026-01-01T00:00:00Z.
const T0_SECS: u64 = 1_767_225_600;

// ---------------------------------------------------------------- receiver

/// A webhook receiver: records every request, answers scripted statuses
/// (then `status`), optionally after a delay.
#[derive(Default)]
struct Hook {
    received: Mutex<Vec<(HeaderMap, Bytes)>>,
    script: Mutex<VecDeque<u16>>,
    status: AtomicU16,
    delay_ms: AtomicU64,
}

struct Receiver {
    hook: Arc<Hook>,
    port: u16,
}

async fn hook_handler(
    State(hook): State<Arc<Hook>>,
    headers: HeaderMap,
    body: Bytes,
) -> StatusCode {
    hook.received.lock().unwrap().push((headers, body));
    let delay = hook.delay_ms.load(Ordering::SeqCst);
    if delay > 0 {
        tokio::time::sleep(Duration::from_millis(delay)).await;
    }
    let status = hook
        .script
        .lock()
        .unwrap()
        .pop_front()
        .unwrap_or_else(|| hook.status.load(Ordering::SeqCst));
    StatusCode::from_u16(status).unwrap()
}

impl Receiver {
    async fn start() -> Self {
        let hook = Arc::new(Hook::default());
        hook.status.store(200, Ordering::SeqCst);
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let app = axum::Router::new()
            .route("/hook", post(hook_handler))
            .with_state(Arc::clone(&hook));
        // Lives as long as the test's runtime.
        tokio::spawn(async move { axum::serve(listener, app).await });
        Self { hook, port }
    }

    fn url(&self) -> String {
        format!("http://127.0.0.1:{}/hook", self.port)
    }

    /// Answer these statuses first, in order.
    fn script(&self, statuses: &[u16]) {
        self.hook.script.lock().unwrap().extend(statuses);
    }

    /// Answer this status once the script is spent.
    fn always(&self, status: u16) {
        self.hook.status.store(status, Ordering::SeqCst);
    }

    fn delay(&self, delay: Duration) {
        self.hook
            .delay_ms
            .store(u64::try_from(delay.as_millis()).unwrap(), Ordering::SeqCst);
    }

    fn count(&self) -> usize {
        self.hook.received.lock().unwrap().len()
    }

    fn requests(&self) -> Vec<(HeaderMap, Bytes)> {
        self.hook.received.lock().unwrap().clone()
    }
}

fn header<'a>(headers: &'a HeaderMap, name: &str) -> &'a str {
    headers.get(name).expect(name).to_str().unwrap()
}

fn json(body: &[u8]) -> Value {
    serde_json::from_slice(body).unwrap()
}

// ---------------------------------------------------------------- fixtures

/// Tiny backoffs and a short poll, so retries take milliseconds.
fn fast_config() -> NotifierConfig {
    NotifierConfig {
        poll_interval: Duration::from_millis(10),
        attempt_timeout: Duration::from_secs(2),
        max_attempts: 6,
        initial_backoff: Duration::from_millis(10),
        max_backoff: Duration::from_millis(40),
        claim_timeout: Duration::from_secs(10),
        batch_size: 32,
    }
}

async fn queue_with(
    redis_urls: &[String],
    cluster: bool,
    clock: Arc<dyn Clock>,
    config: NotifierConfig,
) -> SinkQueue {
    let conn = RedisConnection::connect(redis_urls, cluster, TIMEOUT)
        .await
        .unwrap();
    SinkQueue::new(conn, TIMEOUT, config, clock)
}

async fn queue(redis: &RedisServer, clock: Arc<dyn Clock>, config: NotifierConfig) -> SinkQueue {
    queue_with(&[redis.url()], false, clock, config).await
}

fn manual_clock() -> (ManualClock, Arc<dyn Clock>) {
    let clock = ManualClock::at_unix_secs(T0_SECS);
    let shared: Arc<dyn Clock> = Arc::new(clock.clone());
    (clock, shared)
}

fn system_clock() -> Arc<dyn Clock> {
    Arc::new(SystemClock)
}

/// A running worker, stopped and awaited on `stop`.
struct Worker {
    token: CancellationToken,
    task: tokio::task::JoinHandle<()>,
}

impl Worker {
    fn start(notifier: Notifier) -> Self {
        let token = CancellationToken::new();
        let task = tokio::spawn(notifier.run(token.clone()));
        Self { token, task }
    }

    async fn stop(self) {
        self.token.cancel();
        tokio::time::timeout(WAIT, self.task)
            .await
            .expect("the notifier stops when cancelled")
            .unwrap();
    }
}

fn sink_proto(sink_id: &str, url: &str) -> pb::NotificationSink {
    pb::NotificationSink {
        sink_id: sink_id.to_owned(),
        display_name: format!("{sink_id} receiver"),
        webhook_url: url.to_owned(),
        enabled: true,
        ..pb::NotificationSink::default()
    }
}

fn upsert_request(sink: pb::NotificationSink) -> pb::UpsertSinkRequest {
    pb::UpsertSinkRequest {
        sink: Some(sink),
        secret: SECRET.to_owned(),
    }
}

async fn add_sink(queue: &SinkQueue, sink_id: &str, url: &str) -> pb::NotificationSink {
    queue
        .upsert_sink(&upsert_request(sink_proto(sink_id, url)))
        .await
        .unwrap()
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

/// An alert about `subject` from `from` to `to`, with a tenant snapshot
/// carrying 64-bit figures (to check they become JSON strings).
fn alert(alert_id: &str, subject: pb::TenantOrFleet, from: pb::Level, to: pb::Level) -> pb::Alert {
    let raised_at = prost_types::Timestamp {
        seconds: i64::try_from(T0_SECS).unwrap(),
        nanos: 0,
    };
    pb::Alert {
        alert_id: alert_id.to_owned(),
        subject: Some(subject),
        from_level: from.into(),
        to_level: to.into(),
        reasons: vec![pb::LevelReason {
            code: pb::ReasonCode::ActualOverBudget.into(),
            level: to.into(),
            message: "actual $1,232.00 is 112% of the monthly budget of $1,100.00".to_owned(),
            ..pb::LevelReason::default()
        }],
        raised_at: Some(raised_at),
        snapshot: Some(pb::alert::Snapshot::TenantStatus(pb::TenantStatus {
            tenant_id: "acme".to_owned(),
            level: to.into(),
            month_spend: Some(pb::PeriodSpend {
                tenant_charge_nanos_usd: 1_232_000_000_000,
                provider_cost_nanos_usd: 900_000_000_000,
                margin_nanos_usd: 332_000_000_000,
                ..pb::PeriodSpend::default()
            }),
            ..pb::TenantStatus::default()
        })),
        ..pb::Alert::default()
    }
}

fn red_alert(alert_id: &str) -> pb::Alert {
    alert(alert_id, tenant("acme"), pb::Level::Orange, pb::Level::Red)
}

async fn delivery(queue: &SinkQueue, alert_id: &str, sink_id: &str) -> Option<pb::AlertDelivery> {
    queue
        .deliveries(&[alert_id.to_owned()])
        .await
        .unwrap()
        .remove(alert_id)
        .unwrap()
        .into_iter()
        .find(|d| d.sink_id == sink_id)
}

/// Waits until the delivery of `alert_id` to `sink_id` is in `state`.
async fn wait_for(
    queue: &SinkQueue,
    alert_id: &str,
    sink_id: &str,
    state: pb::DeliveryState,
) -> pb::AlertDelivery {
    poll_until_ok(WAIT, move || async move {
        match delivery(queue, alert_id, sink_id).await {
            Some(d) if d.state == i32::from(state) => Ok(d),
            other => Err(format!(
                "{alert_id}.{sink_id} is {other:?}, waiting for {state:?}"
            )),
        }
    })
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

async fn due_count(conn: &mut redis::aio::MultiplexedConnection) -> i64 {
    redis::cmd("ZCARD")
        .arg(DUE_KEY)
        .query_async(conn)
        .await
        .unwrap()
}

async fn sink_health(queue: &SinkQueue, sink_id: &str) -> pb::SinkHealth {
    queue.get_sink(sink_id).await.unwrap().health.unwrap()
}

// ---------------------------------------------------------------- validation

#[test]
fn upsert_validation_errors_name_the_request_field() {
    let good = || upsert_request(sink_proto("ops-pager", "https://hooks.example.com/x"));
    let with_sink = |f: &dyn Fn(&mut pb::NotificationSink)| {
        let mut request = good();
        f(request.sink.as_mut().unwrap());
        request
    };
    let cases: Vec<(&str, pb::UpsertSinkRequest)> = vec![
        (
            "sink",
            pb::UpsertSinkRequest {
                sink: None,
                ..good()
            },
        ),
        ("sink.sink_id", with_sink(&|s| s.sink_id = String::new())),
        (
            "sink.sink_id",
            with_sink(&|s| s.sink_id = "ops pager".into()),
        ),
        ("sink.sink_id", with_sink(&|s| s.sink_id = "x".repeat(65))),
        (
            "sink.display_name",
            with_sink(&|s| s.display_name = "n".repeat(201)),
        ),
        (
            "sink.webhook_url",
            with_sink(&|s| s.webhook_url = String::new()),
        ),
        (
            "sink.webhook_url",
            with_sink(&|s| s.webhook_url = "not a url".into()),
        ),
        (
            "sink.webhook_url",
            with_sink(&|s| s.webhook_url = "http://hooks.example.com/x".into()),
        ),
        (
            "sink.webhook_url",
            with_sink(&|s| s.webhook_url = "http://10.0.0.1/x".into()),
        ),
        (
            "sink.webhook_url",
            with_sink(&|s| s.webhook_url = "ftp://localhost/x".into()),
        ),
        (
            "sink.webhook_url",
            with_sink(&|s| s.webhook_url = "https://user:pw@hooks.example.com/".into()),
        ),
        ("sink.min_level", with_sink(&|s| s.min_level = 9)),
        (
            "sink.subjects[0]",
            with_sink(&|s| s.subjects = vec![pb::TenantOrFleet { subject: None }]),
        ),
        (
            "sink.subjects[1].fleet",
            with_sink(&|s| {
                s.subjects = vec![
                    tenant("acme"),
                    pb::TenantOrFleet {
                        subject: Some(pb::tenant_or_fleet::Subject::Fleet(false)),
                    },
                ];
            }),
        ),
        (
            "sink.subjects[2].tenant_id",
            with_sink(&|s| s.subjects = vec![tenant("acme"), fleet(), tenant("no spaces")]),
        ),
        (
            "secret",
            pb::UpsertSinkRequest {
                secret: "too short".into(),
                ..good()
            },
        ),
        (
            "secret",
            pb::UpsertSinkRequest {
                secret: "s".repeat(1_025),
                ..good()
            },
        ),
    ];
    for (field, request) in cases {
        let err = UpsertSink::from_proto(&request).unwrap_err();
        assert_eq!(err.field(), Some(field), "{request:?}");
        let status = tonic::Status::from(err);
        assert_eq!(status.code(), Code::InvalidArgument);
        assert!(
            status.message().starts_with(&format!("{field}: ")),
            "{}",
            status.message()
        );
        // The BadRequest field violation travels in the details.
        assert!(!status.details().is_empty());
    }

    // Accepted: https anywhere, plain http to loopback only; an empty secret
    // (keeps the stored one; the store refuses it on create).
    for url in [
        "https://hooks.example.com/x?a=1",
        "http://127.0.0.1:9/x",
        "http://127.1.2.3/",
        "http://[::1]:8080/hook",
        "http://localhost/hook",
    ] {
        let parsed = UpsertSink::from_proto(&with_sink(&|s| s.webhook_url = url.into())).unwrap();
        assert_eq!(parsed.sink.webhook_url, url);
    }
    let parsed = UpsertSink::from_proto(&pb::UpsertSinkRequest {
        secret: String::new(),
        ..with_sink(&|s| {
            s.min_level = pb::Level::Orange.into();
            s.subjects = vec![tenant("acme"), fleet(), tenant("acme")];
            // Output-only fields are ignored.
            s.secret_set = true;
            s.health = Some(pb::SinkHealth {
                consecutive_failures: 7,
                ..pb::SinkHealth::default()
            });
        })
    })
    .unwrap();
    assert_eq!(parsed.secret, None);
    assert_eq!(parsed.sink.min_level, Some(Level::Orange));
    assert_eq!(parsed.sink.subjects.len(), 2, "repeated subjects kept once");
    // The secret never shows in Debug output.
    let with_secret = UpsertSink::from_proto(&good()).unwrap();
    assert!(!format!("{with_secret:?}").contains(SECRET));
}

#[tokio::test]
async fn creating_a_sink_needs_a_secret_and_replacing_keeps_it() {
    let redis = RedisServer::start().await.unwrap();
    let (_, clock) = manual_clock();
    let queue = queue(&redis, clock, fast_config()).await;
    let no_secret = pb::UpsertSinkRequest {
        sink: Some(sink_proto("ops", "https://hooks.example.com/x")),
        secret: String::new(),
    };
    let err = queue.upsert_sink(&no_secret).await.unwrap_err();
    assert_eq!(err.field(), Some("secret"));
    assert_eq!(tonic::Status::from(err).code(), Code::InvalidArgument);
    assert!(
        queue.list_sinks().await.unwrap().is_empty(),
        "nothing stored"
    );

    add_sink(&queue, "ops", "https://hooks.example.com/x").await;
    let replaced = queue.upsert_sink(&no_secret).await.unwrap();
    assert!(replaced.secret_set);
    let mut conn = raw(&redis).await;
    let stored: String = redis::cmd("HGET")
        .arg(SECRETS_KEY)
        .arg("ops")
        .query_async(&mut conn)
        .await
        .unwrap();
    assert_eq!(
        stored, SECRET,
        "an empty secret on replace keeps the stored one"
    );
}

// ---------------------------------------------------------------- store

#[tokio::test]
async fn sinks_round_trip_ordered_by_id_and_never_return_the_secret() {
    let redis = RedisServer::start().await.unwrap();
    let (manual, clock) = manual_clock();
    let queue = queue(&redis, clock, fast_config()).await;

    let mut proto = sink_proto("b-sink", "https://hooks.example.com/b");
    proto.min_level = pb::Level::Orange.into();
    proto.subjects = vec![tenant("acme"), fleet()];
    let created = queue
        .upsert_sink(&upsert_request(proto.clone()))
        .await
        .unwrap();
    let t0 = prost_types::Timestamp {
        seconds: i64::try_from(T0_SECS).unwrap(),
        nanos: 0,
    };
    assert_eq!(created.created_at, Some(t0));
    assert_eq!(created.updated_at, Some(t0));
    assert!(created.secret_set);
    assert_eq!(
        created.health.as_ref().unwrap().state,
        i32::from(pb::SinkHealthState::Unspecified)
    );
    assert_eq!(created.min_level, i32::from(pb::Level::Orange));
    assert_eq!(created.subjects, vec![tenant("acme"), fleet()]);

    // A replace later: created_at kept, updated_at moves, the new config wins.
    manual.advance(Duration::from_secs(90));
    proto.display_name = "renamed".to_owned();
    let replaced = queue
        .upsert_sink(&pb::UpsertSinkRequest {
            sink: Some(proto.clone()),
            secret: String::new(),
        })
        .await
        .unwrap();
    assert_eq!(replaced.created_at, Some(t0));
    assert_eq!(replaced.updated_at.unwrap().seconds, t0.seconds + 90);
    assert_eq!(replaced.display_name, "renamed");
    assert_eq!(queue.get_sink("b-sink").await.unwrap(), replaced);

    add_sink(&queue, "a.x", "https://hooks.example.com/a").await;
    add_sink(&queue, "A", "https://hooks.example.com/A").await;
    let listed = queue.list_sinks().await.unwrap();
    let ids: Vec<&str> = listed.iter().map(|s| s.sink_id.as_str()).collect();
    assert_eq!(ids, ["A", "a.x", "b-sink"]);
    assert_eq!(listed[2], replaced);

    // The secret is in its own hash only: not in the configuration records,
    // not in any output.
    let mut conn = raw(&redis).await;
    let records: Vec<String> = redis::cmd("HVALS")
        .arg(SINKS_KEY)
        .query_async(&mut conn)
        .await
        .unwrap();
    assert_eq!(records.len(), 3);
    for record in &records {
        assert!(!record.contains(SECRET), "{record}");
    }
    assert!(!format!("{listed:?}").contains(SECRET));
    assert!(!format!("{:?}", queue.store().list().await.unwrap()).contains(SECRET));
    assert!(listed.iter().all(|s| s.secret_set));

    // Unknown sinks: NOT_FOUND naming the sink; DeleteSink says false.
    let err = queue.get_sink("nope").await.unwrap_err();
    assert!(matches!(err, SinkError::NotFound(ref id) if id == "nope"));
    let status = tonic::Status::from(err);
    assert_eq!(status.code(), Code::NotFound);
    assert!(status.message().contains("nope"));
    assert_eq!(
        queue.get_sink("bad id").await.unwrap_err().field(),
        Some("sink_id")
    );

    assert!(queue.delete_sink("b-sink").await.unwrap());
    assert!(!queue.delete_sink("b-sink").await.unwrap());
    let ids: Vec<String> = queue
        .list_sinks()
        .await
        .unwrap()
        .into_iter()
        .map(|s| s.sink_id)
        .collect();
    assert_eq!(ids, ["A", "a.x"]);
    let secret: Option<String> = redis::cmd("HGET")
        .arg(SECRETS_KEY)
        .arg("b-sink")
        .query_async(&mut conn)
        .await
        .unwrap();
    assert_eq!(secret, None, "deleting a sink deletes its secret");
}

#[tokio::test]
async fn an_unreachable_redis_is_unavailable() {
    let redis = RedisServer::start().await.unwrap();
    let store = SinkStore::connect(
        &[redis.url()],
        false,
        Duration::from_millis(300),
        system_clock(),
    )
    .await
    .unwrap();
    drop(redis);
    let err = store.list().await.unwrap_err();
    assert!(
        matches!(err, SinkError::Redis(_) | SinkError::Timeout(_)),
        "{err:?}"
    );
    assert_eq!(tonic::Status::from(err).code(), Code::Unavailable);
    let err = store.enqueue(&red_alert("a1")).await.unwrap_err();
    assert_eq!(tonic::Status::from(err).code(), Code::Unavailable);
}

// ---------------------------------------------------------------- delivery

#[tokio::test]
async fn a_delivery_arrives_once_signed_as_proto3_json() {
    let redis = RedisServer::start().await.unwrap();
    let receiver = Receiver::start().await;
    // A stopped clock: a first attempt is due at once, and every timestamp
    // is known exactly.
    let (_, clock) = manual_clock();
    let queue = queue(&redis, clock, fast_config()).await;
    add_sink(&queue, "ops", &receiver.url()).await;

    let outcome = queue.enqueue(&red_alert("01JH-a1")).await.unwrap();
    assert_eq!(
        outcome,
        EnqueueOutcome {
            already_enqueued: false,
            pending: 1,
            suppressed: 0
        }
    );
    let pending = delivery(&queue, "01JH-a1", "ops").await.unwrap();
    assert_eq!(pending.state, i32::from(pb::DeliveryState::Pending));
    assert_eq!(pending.attempts, 0);

    let worker = Worker::start(queue.notifier());
    let delivered = wait_for(&queue, "01JH-a1", "ops", pb::DeliveryState::Delivered).await;
    worker.stop().await;
    assert_eq!(delivered.attempts, 1);
    assert_eq!(
        delivered.last_attempt_at.unwrap().seconds,
        i64::try_from(T0_SECS).unwrap()
    );
    assert_eq!(delivered.last_error, "");
    // Nothing is left to send: exactly one request, ever.
    let mut conn = raw(&redis).await;
    assert_eq!(due_count(&mut conn).await, 0);
    let requests = receiver.requests();
    assert_eq!(requests.len(), 1);

    let (headers, body) = &requests[0];
    assert_eq!(header(headers, "content-type"), "application/json");
    assert_eq!(
        header(headers, "x-tenantmeter-notification-id"),
        "01JH-a1.ops"
    );
    let timestamp = header(headers, "x-tenantmeter-timestamp");
    assert_eq!(timestamp, T0_SECS.to_string());
    let signature = header(headers, "x-tenantmeter-signature");
    assert!(signature.starts_with("sha256="), "{signature}");
    assert!(verify_signature(
        SECRET.as_bytes(),
        timestamp,
        body,
        signature
    ));
    assert!(!verify_signature(
        b"another secret, at least 32 bytes",
        timestamp,
        body,
        signature
    ));
    let mut tampered = body.to_vec();
    tampered[0] = b' ';
    assert!(!verify_signature(
        SECRET.as_bytes(),
        timestamp,
        &tampered,
        signature
    ));

    let body = json(body);
    assert_eq!(body["notificationId"], "01JH-a1.ops");
    assert_eq!(body["sinkId"], "ops");
    assert_eq!(body["attempt"], 1);
    assert!(
        body.get("test").is_none(),
        "false is the default, omitted: {body}"
    );
    let alert = &body["alert"];
    assert_eq!(alert["alertId"], "01JH-a1");
    assert_eq!(alert["subject"]["tenantId"], "acme");
    assert_eq!(alert["fromLevel"], "LEVEL_ORANGE");
    assert_eq!(alert["toLevel"], "LEVEL_RED");
    assert_eq!(alert["raisedAt"], "2026-01-01T00:00:00Z");
    assert_eq!(
        alert["reasons"][0]["code"],
        "REASON_CODE_ACTUAL_OVER_BUDGET"
    );
    let spend = &alert["tenantStatus"]["monthSpend"];
    assert_eq!(
        spend["tenantChargeNanosUsd"], "1232000000000",
        "int64 as a string"
    );
    assert_eq!(spend["marginNanosUsd"], "332000000000");
    assert!(alert.get("alert_id").is_none() && alert.get("deliveries").is_none());

    let health = sink_health(&queue, "ops").await;
    assert_eq!(health.state, i32::from(pb::SinkHealthState::Healthy));
    assert_eq!(health.consecutive_failures, 0);
    assert_eq!(
        health.last_success_at.unwrap().seconds,
        i64::try_from(T0_SECS).unwrap()
    );
}

#[tokio::test]
async fn failed_attempts_are_retried_with_the_same_notification_id() {
    let redis = RedisServer::start().await.unwrap();
    let receiver = Receiver::start().await;
    receiver.script(&[500, 500]);
    let queue = queue(&redis, system_clock(), fast_config()).await;
    add_sink(&queue, "ops", &receiver.url()).await;
    queue.enqueue(&red_alert("a1")).await.unwrap();

    let worker = Worker::start(queue.notifier());
    let delivered = wait_for(&queue, "a1", "ops", pb::DeliveryState::Delivered).await;
    worker.stop().await;
    assert_eq!(delivered.attempts, 3);
    assert_eq!(
        delivered.last_error, "HTTP 500 Internal Server Error",
        "the last failed attempt's error is kept"
    );

    let requests = receiver.requests();
    assert_eq!(requests.len(), 3);
    for (i, (headers, body)) in requests.iter().enumerate() {
        assert_eq!(header(headers, "x-tenantmeter-notification-id"), "a1.ops");
        let timestamp = header(headers, "x-tenantmeter-timestamp");
        assert!(verify_signature(
            SECRET.as_bytes(),
            timestamp,
            body,
            header(headers, "x-tenantmeter-signature")
        ));
        let body = json(body);
        assert_eq!(body["notificationId"], "a1.ops");
        assert_eq!(body["attempt"], i + 1);
    }
    assert_eq!(
        sink_health(&queue, "ops").await.state,
        i32::from(pb::SinkHealthState::Healthy)
    );
}

#[tokio::test]
async fn two_workers_deliver_each_of_20_alerts_exactly_once() {
    let redis = RedisServer::start().await.unwrap();
    let receiver = Receiver::start().await;
    // Slow enough that both workers have attempts in flight at once.
    receiver.delay(Duration::from_millis(20));
    let config = NotifierConfig {
        batch_size: 3,
        ..fast_config()
    };
    // Two replicas: their own connections, the same Redis.
    let a = queue(&redis, system_clock(), config.clone()).await;
    let b = queue(&redis, system_clock(), config).await;
    add_sink(&a, "ops", &receiver.url()).await;
    let workers = [Worker::start(a.notifier()), Worker::start(b.notifier())];

    let ids: Vec<String> = (0..20).map(|i| format!("alert-{i:02}")).collect();
    for (i, id) in ids.iter().enumerate() {
        // Each replica raises some; each alert is enqueued by both, as two
        // replicas racing over the same transition would.
        let (first, second) = if i % 2 == 0 { (&a, &b) } else { (&b, &a) };
        assert_eq!(first.enqueue(&red_alert(id)).await.unwrap().pending, 1);
        assert!(
            second
                .enqueue(&red_alert(id))
                .await
                .unwrap()
                .already_enqueued
        );
    }

    let ids_ref = &ids;
    let a_ref = &a;
    wait_until(WAIT, move || async move {
        let all = a_ref.deliveries(ids_ref).await.unwrap();
        all.values()
            .all(|d| d.len() == 1 && d[0].state == i32::from(pb::DeliveryState::Delivered))
    })
    .await
    .unwrap();
    for worker in workers {
        worker.stop().await;
    }

    let requests = receiver.requests();
    let notified: Vec<String> = requests
        .iter()
        .map(|(h, _)| header(h, "x-tenantmeter-notification-id").to_owned())
        .collect();
    assert_eq!(notified.len(), 20, "{notified:?}");
    let distinct: HashSet<&String> = notified.iter().collect();
    assert_eq!(distinct.len(), 20);
    for id in &ids {
        assert!(distinct.contains(&format!("{id}.ops")));
    }
    for deliveries in a.deliveries(&ids).await.unwrap().values() {
        assert_eq!(deliveries[0].attempts, 1);
    }
    let mut conn = raw(&redis).await;
    assert_eq!(due_count(&mut conn).await, 0);
}

#[tokio::test]
async fn enqueuing_an_alert_twice_creates_one_delivery() {
    let redis = RedisServer::start().await.unwrap();
    let receiver = Receiver::start().await;
    let (_, clock) = manual_clock();
    let queue = queue(&redis, Arc::clone(&clock), fast_config()).await;
    let other_replica = queue_with(&[redis.url()], false, clock, fast_config()).await;
    add_sink(&queue, "ops", &receiver.url()).await;

    assert_eq!(queue.enqueue(&red_alert("a1")).await.unwrap().pending, 1);
    let again = queue.enqueue(&red_alert("a1")).await.unwrap();
    assert!(again.already_enqueued);
    assert_eq!(again.pending, 0);
    assert!(
        other_replica
            .enqueue(&red_alert("a1"))
            .await
            .unwrap()
            .already_enqueued
    );
    // Not even a sink added since makes a second enqueue deliver anything.
    add_sink(&queue, "late", &receiver.url()).await;
    assert!(
        queue
            .enqueue(&red_alert("a1"))
            .await
            .unwrap()
            .already_enqueued
    );

    let deliveries = queue.deliveries(&["a1".to_owned()]).await.unwrap();
    assert_eq!(deliveries["a1"].len(), 1);
    assert_eq!(deliveries["a1"][0].sink_id, "ops");
    let mut conn = raw(&redis).await;
    assert_eq!(due_count(&mut conn).await, 1);

    // One pass of each replica's worker: one request in all.
    assert_eq!(queue.notifier().run_once().await.unwrap(), 1);
    assert_eq!(other_replica.notifier().run_once().await.unwrap(), 0);
    assert_eq!(receiver.count(), 1);
    assert_eq!(
        delivery(&queue, "a1", "ops").await.unwrap().state,
        i32::from(pb::DeliveryState::Delivered)
    );
    // Alerts never enqueued have an entry, empty.
    let none = queue.deliveries(&["never".to_owned()]).await.unwrap();
    assert_eq!(none["never"], vec![]);
    // Alerts the evaluator never raised are refused, naming the field.
    let err = queue.enqueue(&red_alert("")).await.unwrap_err();
    assert_eq!(err.field(), Some("alert.alert_id"));
}

#[tokio::test]
async fn an_always_failing_sink_ends_failed_is_reported_and_not_retried() {
    let redis = RedisServer::start().await.unwrap();
    let receiver = Receiver::start().await;
    receiver.always(503);
    let config = NotifierConfig {
        max_attempts: 3,
        ..fast_config()
    };
    let queue = queue(&redis, system_clock(), config).await;
    add_sink(&queue, "down", &receiver.url()).await;
    let worker = Worker::start(queue.notifier());

    queue.enqueue(&red_alert("a1")).await.unwrap();
    let failed = wait_for(&queue, "a1", "down", pb::DeliveryState::Failed).await;
    assert_eq!(failed.attempts, 3);
    assert_eq!(failed.last_error, "HTTP 503 Service Unavailable");
    let health = sink_health(&queue, "down").await;
    assert_eq!(health.state, i32::from(pb::SinkHealthState::Failing));
    assert_eq!(health.consecutive_failures, 1);
    assert!(health.last_failure_at.is_some());
    assert_eq!(health.last_success_at, None);
    assert!(health.last_error.contains("503"), "{}", health.last_error);
    // Not attempted again: nothing due, and a pass claims nothing.
    let mut conn = raw(&redis).await;
    assert_eq!(due_count(&mut conn).await, 0);
    assert_eq!(queue.notifier().run_once().await.unwrap(), 0);
    assert_eq!(receiver.count(), 3);

    // Each new alert is still tried, and counts as another failure in a row.
    queue.enqueue(&red_alert("a2")).await.unwrap();
    wait_for(&queue, "a2", "down", pb::DeliveryState::Failed).await;
    assert_eq!(receiver.count(), 6);
    assert_eq!(sink_health(&queue, "down").await.consecutive_failures, 2);

    // A success makes it healthy again.
    receiver.always(204);
    queue.enqueue(&red_alert("a3")).await.unwrap();
    wait_for(&queue, "a3", "down", pb::DeliveryState::Delivered).await;
    worker.stop().await;
    let health = sink_health(&queue, "down").await;
    assert_eq!(health.state, i32::from(pb::SinkHealthState::Healthy));
    assert_eq!(health.consecutive_failures, 0);
    assert!(health.last_success_at.is_some());
    // The first two alerts stay failed.
    assert_eq!(
        delivery(&queue, "a1", "down").await.unwrap().state,
        i32::from(pb::DeliveryState::Failed)
    );
}

// ---------------------------------------------------------------- matching

fn sink(min_level: Option<Level>, subjects: Vec<tenantmeter_alerting::budgets::Subject>) -> Sink {
    Sink {
        sink_id: "s".to_owned(),
        display_name: String::new(),
        webhook_url: "https://hooks.example.com/".to_owned(),
        enabled: true,
        min_level,
        subjects,
    }
}

#[test]
fn matching_by_enabled_min_level_and_subjects() {
    use tenantmeter_alerting::budgets::Subject;
    let acme = Subject::Tenant(tenantmeter_domain::ids::TenantId::parse("acme").unwrap());
    let rising = alert("a", tenant("acme"), pb::Level::Green, pb::Level::Yellow);
    let falling = alert("b", tenant("acme"), pb::Level::Red, pb::Level::Orange);
    let fleet_alert = alert("c", fleet(), pb::Level::Yellow, pb::Level::Orange);
    let other = alert("d", tenant("globex"), pb::Level::Orange, pb::Level::Red);

    let all = sink(None, vec![]);
    for a in [&rising, &falling, &fleet_alert, &other] {
        assert!(matches(&all, a), "no filter: everything, fleet included");
    }
    let disabled = Sink {
        enabled: false,
        ..all.clone()
    };
    assert!(!matches(&disabled, &rising));

    let orange = sink(Some(Level::Orange), vec![]);
    assert!(
        !matches(&orange, &rising),
        "green -> yellow is below orange"
    );
    assert!(matches(&orange, &falling), "from red counts");
    assert!(matches(&orange, &fleet_alert));
    let red = sink(Some(Level::Red), vec![]);
    assert!(matches(&red, &falling) && matches(&red, &other));
    assert!(!matches(&red, &fleet_alert));

    let acme_only = sink(None, vec![acme.clone()]);
    assert!(matches(&acme_only, &rising));
    assert!(!matches(&acme_only, &fleet_alert));
    assert!(!matches(&acme_only, &other));
    let fleet_only = sink(None, vec![Subject::Fleet]);
    assert!(matches(&fleet_only, &fleet_alert));
    assert!(!matches(&fleet_only, &rising));

    let acme_orange = sink(Some(Level::Orange), vec![acme, Subject::Fleet]);
    assert!(!matches(&acme_orange, &rising));
    assert!(matches(&acme_orange, &falling));
    assert!(matches(&acme_orange, &fleet_alert));
    assert!(!matches(&acme_orange, &other));
}

#[tokio::test]
async fn enqueue_creates_deliveries_only_for_matching_enabled_sinks() {
    let redis = RedisServer::start().await.unwrap();
    let (_, clock) = manual_clock();
    let queue = queue(&redis, clock, fast_config()).await;
    let url = "https://hooks.example.com/x";
    add_sink(&queue, "all", url).await;
    let mut orange = sink_proto("orange-up", url);
    orange.min_level = pb::Level::Orange.into();
    queue.upsert_sink(&upsert_request(orange)).await.unwrap();
    let mut acme = sink_proto("acme-only", url);
    acme.subjects = vec![tenant("acme")];
    queue.upsert_sink(&upsert_request(acme)).await.unwrap();
    let mut fleet_sink = sink_proto("fleet-only", url);
    fleet_sink.subjects = vec![fleet()];
    queue
        .upsert_sink(&upsert_request(fleet_sink))
        .await
        .unwrap();
    let mut off = sink_proto("disabled", url);
    off.enabled = false;
    queue.upsert_sink(&upsert_request(off)).await.unwrap();

    let alerts = [
        alert("a1", tenant("acme"), pb::Level::Green, pb::Level::Yellow),
        alert("a2", tenant("globex"), pb::Level::Red, pb::Level::Orange),
        alert("a3", fleet(), pb::Level::Orange, pb::Level::Red),
    ];
    for a in &alerts {
        queue.enqueue(a).await.unwrap();
    }
    let ids: Vec<String> = alerts.iter().map(|a| a.alert_id.clone()).collect();
    let all = queue.deliveries(&ids).await.unwrap();
    let sinks_of = |id: &str| -> Vec<&str> { all[id].iter().map(|d| d.sink_id.as_str()).collect() };
    assert_eq!(sinks_of("a1"), ["acme-only", "all"]);
    assert_eq!(sinks_of("a2"), ["all", "orange-up"]);
    assert_eq!(sinks_of("a3"), ["all", "fleet-only", "orange-up"]);

    // A silenced subject's alert is recorded suppressed, never due.
    let mut silenced = alert("a4", tenant("acme"), pb::Level::Green, pb::Level::Yellow);
    silenced.silenced_until = Some(prost_types::Timestamp {
        seconds: i64::try_from(T0_SECS).unwrap() + 3_600,
        nanos: 0,
    });
    let outcome = queue.enqueue(&silenced).await.unwrap();
    assert_eq!((outcome.pending, outcome.suppressed), (0, 2));
    let mut conn = raw(&redis).await;
    assert_eq!(
        due_count(&mut conn).await,
        7,
        "3 alerts' deliveries, none of a4"
    );
    let a4 = queue.deliveries(&["a4".to_owned()]).await.unwrap();
    assert!(
        a4["a4"]
            .iter()
            .all(|d| d.state == i32::from(pb::DeliveryState::Suppressed))
    );
}

// ---------------------------------------------------------------- disabled, deleted

#[tokio::test]
async fn disabled_sinks_get_nothing_and_disabling_or_deleting_drops_pending() {
    let redis = RedisServer::start().await.unwrap();
    let receiver = Receiver::start().await;
    let (_, clock) = manual_clock();
    let queue = queue(&redis, clock, fast_config()).await;
    let mut off = sink_proto("off", &receiver.url());
    off.enabled = false;
    queue
        .upsert_sink(&upsert_request(off.clone()))
        .await
        .unwrap();
    add_sink(&queue, "to-disable", &receiver.url()).await;
    add_sink(&queue, "to-delete", &receiver.url()).await;
    add_sink(&queue, "kept", &receiver.url()).await;

    queue.enqueue(&red_alert("a1")).await.unwrap();
    let sinks: Vec<String> = queue.deliveries(&["a1".to_owned()]).await.unwrap()["a1"]
        .iter()
        .map(|d| d.sink_id.clone())
        .collect();
    assert_eq!(
        sinks,
        ["kept", "to-delete", "to-disable"],
        "a disabled sink gets nothing"
    );

    let mut disable = sink_proto("to-disable", &receiver.url());
    disable.enabled = false;
    queue
        .upsert_sink(&pb::UpsertSinkRequest {
            sink: Some(disable),
            secret: String::new(),
        })
        .await
        .unwrap();
    assert!(queue.delete_sink("to-delete").await.unwrap());
    let sinks: Vec<String> = queue.deliveries(&["a1".to_owned()]).await.unwrap()["a1"]
        .iter()
        .map(|d| d.sink_id.clone())
        .collect();
    assert_eq!(sinks, ["kept"], "pending deliveries to them are dropped");
    let mut conn = raw(&redis).await;
    assert_eq!(due_count(&mut conn).await, 1);

    assert_eq!(queue.notifier().run_once().await.unwrap(), 1);
    let requests = receiver.requests();
    assert_eq!(requests.len(), 1);
    assert_eq!(
        header(&requests[0].0, "x-tenantmeter-notification-id"),
        "a1.kept"
    );
}

#[tokio::test]
async fn re_enabling_a_sink_resets_its_health() {
    let redis = RedisServer::start().await.unwrap();
    let receiver = Receiver::start().await;
    receiver.always(500);
    let (_, clock) = manual_clock();
    let config = NotifierConfig {
        max_attempts: 1,
        ..fast_config()
    };
    let queue = queue(&redis, clock, config).await;
    let mut proto = sink_proto("flaky", &receiver.url());
    add_sink(&queue, "flaky", &receiver.url()).await;
    queue.enqueue(&red_alert("a1")).await.unwrap();
    assert_eq!(queue.notifier().run_once().await.unwrap(), 1);
    assert_eq!(
        sink_health(&queue, "flaky").await.state,
        i32::from(pb::SinkHealthState::Failing)
    );

    // A replace that keeps it enabled keeps the health...
    let keep = pb::UpsertSinkRequest {
        sink: Some(proto.clone()),
        secret: String::new(),
    };
    let replaced = queue.upsert_sink(&keep).await.unwrap();
    assert_eq!(
        replaced.health.unwrap().state,
        i32::from(pb::SinkHealthState::Failing)
    );
    // ...disabling keeps it too; enabling again starts afresh.
    proto.enabled = false;
    queue
        .upsert_sink(&pb::UpsertSinkRequest {
            sink: Some(proto.clone()),
            secret: String::new(),
        })
        .await
        .unwrap();
    assert_eq!(sink_health(&queue, "flaky").await.consecutive_failures, 1);
    proto.enabled = true;
    let enabled = queue
        .upsert_sink(&pb::UpsertSinkRequest {
            sink: Some(proto),
            secret: String::new(),
        })
        .await
        .unwrap();
    assert_eq!(enabled.health.unwrap(), pb::SinkHealth::default());
    let stored = queue.store().get("flaky").await.unwrap();
    assert_eq!(stored.health.state, HealthState::Unknown);
}

// ---------------------------------------------------------------- TestSink

#[tokio::test]
async fn test_sink_reports_status_and_latency_and_records_nothing() {
    let redis = RedisServer::start().await.unwrap();
    let receiver = Receiver::start().await;
    receiver.delay(Duration::from_millis(60));
    receiver.script(&[202, 500]);
    let queue = queue(&redis, system_clock(), fast_config()).await;
    let mut proto = sink_proto("ops", &receiver.url());
    // Sent even when disabled, so a receiver can be checked first.
    proto.enabled = false;
    proto.min_level = pb::Level::Orange.into();
    queue.upsert_sink(&upsert_request(proto)).await.unwrap();

    let ok = queue.test_sink("ops").await.unwrap();
    assert!(ok.delivered, "{ok:?}");
    assert_eq!(ok.http_status, 202);
    assert_eq!(ok.error, "");
    assert!(ok.latency_ms >= 60, "{ok:?}");

    let requests = receiver.requests();
    let (headers, body) = &requests[0];
    assert!(verify_signature(
        SECRET.as_bytes(),
        header(headers, "x-tenantmeter-timestamp"),
        body,
        header(headers, "x-tenantmeter-signature")
    ));
    let body = json(body);
    assert_eq!(body["test"], true);
    assert_eq!(body["attempt"], 1);
    let alert_id = body["alert"]["alertId"].as_str().unwrap();
    assert!(alert_id.starts_with("test-"), "{alert_id}");
    assert_eq!(body["notificationId"], format!("{alert_id}.ops"));
    assert_eq!(
        body["alert"]["toLevel"], "LEVEL_ORANGE",
        "at the sink's minimum level"
    );
    assert_eq!(body["alert"]["subject"]["fleet"], true);

    let failed = queue.test_sink("ops").await.unwrap();
    assert!(!failed.delivered);
    assert_eq!(failed.http_status, 500);
    assert_eq!(failed.error, "HTTP 500 Internal Server Error");

    // Records nothing: no health, no deliveries, nothing due.
    assert_eq!(sink_health(&queue, "ops").await, pb::SinkHealth::default());
    let mut conn = raw(&redis).await;
    assert_eq!(due_count(&mut conn).await, 0);

    // Nobody listening: status 0 and the transport error.
    let closed = free_port().unwrap();
    add_sink(&queue, "nobody", &format!("http://127.0.0.1:{closed}/hook")).await;
    let unreachable = queue.test_sink("nobody").await.unwrap();
    assert!(!unreachable.delivered);
    assert_eq!(unreachable.http_status, 0);
    assert!(!unreachable.error.is_empty());

    let err = queue.test_sink("missing").await.unwrap_err();
    assert_eq!(tonic::Status::from(err).code(), Code::NotFound);
}

// ---------------------------------------------------------------- cluster, config, signature

#[tokio::test]
async fn works_on_redis_cluster() {
    let cluster = RedisCluster::start().await.unwrap();
    let receiver = Receiver::start().await;
    let (_, clock) = manual_clock();
    let queue = queue_with(&cluster.urls(), true, clock, fast_config()).await;
    add_sink(&queue, "ops", &receiver.url()).await;
    add_sink(&queue, "gone", &receiver.url()).await;
    assert_eq!(queue.enqueue(&red_alert("a1")).await.unwrap().pending, 2);
    assert!(
        queue
            .enqueue(&red_alert("a1"))
            .await
            .unwrap()
            .already_enqueued
    );
    // The delete script drops the pending delivery in the alert's record.
    assert!(queue.delete_sink("gone").await.unwrap());
    assert_eq!(queue.notifier().run_once().await.unwrap(), 1);
    assert_eq!(receiver.count(), 1);
    let deliveries = queue
        .deliveries(&["a1".to_owned(), "a2".to_owned()])
        .await
        .unwrap();
    assert_eq!(deliveries["a1"].len(), 1);
    assert_eq!(
        deliveries["a1"][0].state,
        i32::from(pb::DeliveryState::Delivered)
    );
    assert!(deliveries["a2"].is_empty());
    let sinks = queue.list_sinks().await.unwrap();
    assert_eq!(sinks.len(), 1);
    assert_eq!(
        sinks[0].health.as_ref().unwrap().state,
        i32::from(pb::SinkHealthState::Healthy)
    );
}

#[test]
fn notifier_config_reads_humantime_durations_with_defaults() {
    let config: NotifierConfig = serde_json::from_str(
        r#"{"poll_interval": "100ms", "max_backoff": "2m", "max_attempts": 4}"#,
    )
    .unwrap();
    assert_eq!(
        config,
        NotifierConfig {
            poll_interval: Duration::from_millis(100),
            max_backoff: Duration::from_secs(120),
            max_attempts: 4,
            ..NotifierConfig::default()
        }
    );
    let defaults = NotifierConfig::default();
    assert_eq!(defaults.poll_interval, Duration::from_millis(250));
    assert_eq!(defaults.attempt_timeout, Duration::from_secs(5));
    assert_eq!(defaults.max_attempts, 6);
    assert_eq!(defaults.initial_backoff, Duration::from_secs(1));
    assert_eq!(defaults.max_backoff, Duration::from_secs(300));
    assert!(serde_json::from_str::<NotifierConfig>(r#"{"max_attempt": 4}"#).is_err());
    let bad = NotifierConfig {
        max_attempts: 0,
        ..NotifierConfig::default()
    };
    assert_eq!(bad.validate().unwrap_err().field(), Some("max_attempts"));
}

#[test]
fn signatures_verify_only_as_sent() {
    let secret = SECRET.as_bytes();
    let body = br#"{"notificationId":"a1.ops"}"#;
    let signature = webhook::signature(secret, "1767225600", body);
    assert!(verify_signature(secret, "1767225600", body, &signature));
    for (timestamp, body, header) in [
        ("1767225601", &body[..], signature.as_str()),
        ("1767225600", &b"{}"[..], signature.as_str()),
        ("1767225600", &body[..], ""),
        ("1767225600", &body[..], "sha256=zz"),
        (
            "1767225600",
            &body[..],
            &signature.replace("sha256=", "sha1="),
        ),
        ("1767225600", &body[..], &signature[..signature.len() - 2]),
    ] {
        assert!(
            !verify_signature(secret, timestamp, body, header),
            "{header}"
        );
    }
    // The documented construction: hex HMAC-SHA256 of "<timestamp>.<body>".
    assert_eq!(
        webhook::signature(b"key", "1", b"x"),
        "sha256=fc4913c41a7bf793267e2a384f3261c9436ec2cd097bd745e7b0d99113f510ec"
    );
}
