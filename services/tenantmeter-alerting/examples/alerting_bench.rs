//! Does alerting evaluate 100,000 tenants within one interval? Loads N
//! tenants into the meter, then drives committed evaluation passes with
//! `AlertingAdminService/Evaluate` and prints, for each pass, the tenants
//! evaluated, the wall time, the interval and pass/interval; the first pass
//! apart (it loads every shard's state, or creates it with
//! `--history-weeks 0`), the p50/max of the steady ones and
//! a what-if pass (commit false). Where the time goes: after each pass, the
//! meter's `ListTenantUsage` alone for the same shards at the same instant
//! (column `meter ms`), and the CPU seconds of the redis-server and of this
//! process during each. Memory: the redis-server's `used_memory` and this
//! process's VmRSS before and after loading and after the passes.
//!
//! It starts everything itself, in this process, on 127.0.0.1:0, talking real
//! gRPC: a private redis-server (no AOF), pricing (shipped price book and
//! plans), the meter and alerting, both on one `ManualClock`. Alerting runs
//! with `interval = 0s` (no scheduled passes): each `Evaluate` is a pass at
//! `as_of` = the clock, advanced by `--interval-ms` before each pass. The
//! clock starts so that a pass in the middle crosses a 5-minute slot, the
//! pass where every tenant's baseline learns a sample (column `learns`).
//!
//! Tenants: `bench-000001`... on the default plan, each with 3 Claude 3 Haiku
//! events in the last 4 minutes; about 90% spend steadily (~$0.05/h), 8% 20x
//! that (an anomaly, yellow) and 2% 100x (a runaway spike). Before the
//! passes every tenant gets `--history-weeks` (1) of learned baseline at the
//! steady rate, written through alerting's state store, so the baselines are
//! as large as a running fleet's (all 168 hour-of-week buckets in use).
//!
//! `cargo run --release -p tenantmeter-alerting --example alerting_bench [-- --tenants 100000 --interval-ms 5000 --passes 6 --shards 8]`
//! (`-- --help` lists every knob). Numbers only; nothing is asserted on time.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::print_stdout,
    clippy::print_stderr,
    clippy::float_arithmetic,
    clippy::cast_precision_loss,
    clippy::cast_possible_truncation,
    clippy::cast_sign_loss,
    clippy::panic,
    clippy::large_futures
)] // a benchmark's report

/// The allocator the `tenantmeter` binary runs the services with.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use futures::StreamExt as _;
use redis::aio::MultiplexedConnection;
use tenantmeter_alerting::{AlertingConfig, AlertingDeps};
use tenantmeter_proto::v1 as pb;
use tenantmeter_proto::v1::alerting_admin_service_client::AlertingAdminServiceClient;
use tenantmeter_proto::v1::meter_service_client::MeterServiceClient;
use tenantmeter_runtime::clock::{Clock as _, ManualClock, SystemClock, to_timestamp};
use tenantmeter_runtime::config::Validate as _;
use tenantmeter_runtime::shutdown::Shutdown;
use tenantmeter_testkit::{RedisServer, poll_until_ok};
use tokio::net::TcpListener;
use tokio::task::JoinHandle;
use tonic::Request;
use tonic::metadata::MetadataValue;
use tonic::transport::Channel;

const ADMIN_TOKEN: &str = "bench-admin-token-0123456789";
/// In deploy/pricebook.toml: $0.25 input / $1.25 output per 1M tokens.
const HAIKU: &str = "anthropic.claude-3-haiku-20240307-v1:0";
/// Events per tenant; a tenant's events travel in one batch (one script call).
const EVENTS_PER_TENANT: u64 = 3;
/// Events per RecordUsage call, at most (the meter takes 1,000).
const BATCH_EVENTS: u64 = 1_000;
/// The rate window a baseline learns one sample per (alerting's `RATE_WINDOW_MS`).
const SLOT_MS: i64 = 300_000;

#[derive(Debug, Clone, Copy)]
struct Options {
    tenants: u64,
    interval_ms: u64,
    passes: usize,
    shards: u32,
    page_size: u32,
    callers: usize,
    lease_ttl_ms: u64,
    history_weeks: u64,
}

fn options() -> Options {
    let mut options = Options {
        tenants: 100_000,
        interval_ms: 5_000,
        passes: 6,
        shards: 8,
        page_size: 1_000,
        callers: 4,
        lease_ttl_ms: 0,
        history_weeks: 1,
    };
    let args: Vec<String> = std::env::args().skip(1).collect();
    let mut i = 0;
    while i < args.len() {
        let value = || args.get(i + 1).and_then(|v| v.parse::<u64>().ok());
        match args[i].as_str() {
            "--tenants" => options.tenants = value().expect("--tenants N"),
            "--interval-ms" => options.interval_ms = value().expect("--interval-ms N"),
            "--passes" => options.passes = value().expect("--passes N") as usize,
            "--shards" => options.shards = value().expect("--shards N") as u32,
            "--page-size" => options.page_size = value().expect("--page-size N") as u32,
            "--callers" => options.callers = value().expect("--callers N") as usize,
            "--lease-ttl-ms" => options.lease_ttl_ms = value().expect("--lease-ttl-ms N"),
            "--history-weeks" => options.history_weeks = value().expect("--history-weeks N"),
            "--help" | "-h" => {
                println!(
                    "alerting_bench [--tenants N (100000)] [--interval-ms N (5000)] [--passes N (6, committed)]\n\
                     \x20              [--shards N (8, alerting shards)] [--page-size N (1000, tenants per meter page)]\n\
                     \x20              [--callers N (4, concurrent RecordUsage batches while loading)]\n\
                     \x20              [--lease-ttl-ms N (max(15000, 3 x interval): a pass must finish within it)]\n\
                     \x20              [--history-weeks N (1: every tenant starts with N weeks of learned baseline; 0: no state)]"
                );
                std::process::exit(0);
            }
            other => panic!("unknown argument {other} (try --help)"),
        }
        i += 2;
    }
    assert!(options.tenants > 0, "--tenants must be > 0");
    assert!(
        options.interval_ms > 0,
        "--interval-ms must be > 0: committed passes need as_of to move forward"
    );
    assert!(options.passes > 0, "--passes must be > 0");
    assert!(options.callers > 0, "--callers must be > 0");
    if options.lease_ttl_ms == 0 {
        options.lease_ttl_ms = (3 * options.interval_ms).max(15_000);
    }
    options
}

/// A request with `authorization: Bearer <token>`.
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

async fn listener() -> (TcpListener, SocketAddr) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    (listener, addr)
}

fn unix_ms(time: SystemTime) -> i64 {
    tenantmeter_runtime::clock::unix_ms(time)
}

fn at_ms(ms: i64) -> SystemTime {
    UNIX_EPOCH + Duration::from_millis(ms as u64)
}

/// How a tenant spends: a multiple of the steady tenant's tokens.
fn spend_factor(tenant: u64) -> u64 {
    // A fixed scramble, so the mix does not follow tenant ids or shards.
    let mixed = tenant.wrapping_mul(0x9e37_79b9_7f4a_7c15).rotate_left(29) % 100;
    match mixed {
        0..=1 => 100,
        2..=9 => 20,
        _ => 1,
    }
}

fn tenant_id(tenant: u64) -> String {
    format!("bench-{tenant:06}")
}

/// The events of tenants `range`, 3 each, over the 4 minutes before `now_ms`.
fn batch(range: std::ops::Range<u64>, now_ms: i64) -> pb::RecordUsageRequest {
    let mut events = Vec::with_capacity(((range.end - range.start) * EVENTS_PER_TENANT) as usize);
    for tenant in range {
        let factor = spend_factor(tenant) as i64;
        let jitter = (tenant % 997) as i64;
        for (k, ago_ms) in [240_000_i64, 120_000, 20_000].into_iter().enumerate() {
            events.push(pb::UsageEvent {
                event_id: format!("ev-{tenant}-{k}"),
                tenant_id: tenant_id(tenant),
                model_id: HAIKU.to_owned(),
                application_id: "bench".to_owned(),
                usage: Some(pb::TokenUsage {
                    input_tokens: 2_000 * factor,
                    output_tokens: 400 * factor,
                    ..Default::default()
                }),
                latency_ms: 800,
                event_time: Some(to_timestamp(at_ms(now_ms - ago_ms - jitter))),
                ..Default::default()
            });
        }
    }
    pb::RecordUsageRequest { events }
}

#[derive(Debug, Default)]
struct LoadOutcome {
    accepted: u64,
    duplicates: u64,
    rejected: u64,
    first_reject: Option<String>,
    errors: u64,
    first_error: Option<String>,
}

async fn load(
    meters: &[MeterServiceClient<Channel>],
    options: Options,
    now_ms: i64,
) -> LoadOutcome {
    let per_batch = BATCH_EVENTS / EVENTS_PER_TENANT;
    let batches = options.tenants.div_ceil(per_batch);
    let mut results = futures::stream::iter(0..batches)
        .map(|b| {
            let mut meter = meters[b as usize % meters.len()].clone();
            let start = b * per_batch + 1;
            let end = ((b + 1) * per_batch).min(options.tenants) + 1;
            async move { meter.record_usage(batch(start..end, now_ms)).await }
        })
        .buffer_unordered(options.callers);
    let mut outcome = LoadOutcome::default();
    while let Some(result) = results.next().await {
        match result {
            Ok(response) => {
                let response = response.into_inner();
                outcome.accepted += response.accepted as u64;
                outcome.duplicates += response.duplicates as u64;
                outcome.rejected += response.rejected as u64;
                if outcome.first_reject.is_none()
                    && let Some(r) = response
                        .results
                        .iter()
                        .find(|r| r.status() == pb::UsageEventStatus::Rejected)
                {
                    outcome.first_reject = Some(format!("{:?}: {}", r.reject_reason(), r.message));
                }
            }
            Err(status) => {
                outcome.errors += 1;
                outcome
                    .first_error
                    .get_or_insert_with(|| status.to_string());
            }
        }
    }
    outcome
}

/// One row of the pass table.
struct Pass {
    label: String,
    as_of_ms: i64,
    learns: bool,
    wall: Duration,
    /// CPU seconds the pass took: (redis-server, this process).
    cpu: (f64, f64),
    result: Result<Evaluated, tonic::Status>,
    /// The meter's listing alone at the same instant, right after the pass.
    listing: Result<Listing, tonic::Status>,
}

/// One run of [`meter_listing`].
#[derive(Debug, Clone, Copy)]
struct Listing {
    tenants: u64,
    wall: Duration,
    cpu: (f64, f64),
}

/// Gives every tenant the state a replica would have after
/// `history_weeks` of passes: a record, a green status and a baseline with
/// a sample every 5 minutes (all hour-of-week buckets in use) at the steady
/// tenants' rate, as alerting measures it. Written through alerting's own
/// state store under a lease the benchmark then gives up, so alerting's
/// first pass loads it as a restarted replica would. Returns the rate.
async fn seed_history(
    admin: &mut AlertingAdminServiceClient<Channel>,
    redis_url: &str,
    options: Options,
    start_ms: i64,
    interval: Duration,
) -> i64 {
    use tenantmeter_alerting::state::{
        BaselineWrite, IndexMove, StateStore, TenantCommit, TenantRecord, rank_member,
    };
    use tenantmeter_domain::ids::TenantId;
    use tenantmeter_domain::levels::Baseline;

    const TOKEN: &str = "alerting-bench-seed";
    let steady = (1..=options.tenants)
        .find(|t| spend_factor(*t) == 1)
        .expect("a steady tenant");
    let first_pass_ms = start_ms + interval.as_millis() as i64;
    let status = admin
        .evaluate(bearer(pb::EvaluateRequest {
            as_of: Some(to_timestamp(at_ms(first_pass_ms))),
            tenant_ids: vec![tenant_id(steady)],
            commit: false,
        }))
        .await
        .unwrap()
        .into_inner()
        .statuses
        .pop()
        .expect("the steady tenant's status");
    let rate = status.rate.map_or(0, |r| r.rate_nanos_usd_per_hour);
    assert!(rate > 0, "the steady tenant has no spend rate");

    let policy = AlertingConfig::default().levels.baseline;
    let samples = options.history_weeks as i64 * 7 * 24 * 12;
    let mut baseline = Baseline::new();
    for k in (1..=samples).rev() {
        baseline.observe(start_ms - k * SLOT_MS, rate, &policy);
    }
    let conn = tenantmeter_runtime::redis_connection::RedisConnection::connect(
        &[redis_url.to_owned()],
        false,
        Duration::from_secs(10),
    )
    .await
    .unwrap();
    let store = StateStore::new(conn, Duration::from_secs(30));
    let mut by_shard: Vec<Vec<TenantId>> = vec![Vec::new(); options.shards as usize];
    for t in 1..=options.tenants {
        let id = TenantId::parse(tenant_id(t)).unwrap();
        by_shard[id.shard(options.shards) as usize].push(id);
    }
    let green: i32 = pb::Level::Green.into();
    for (shard, tenants) in by_shard.iter().enumerate() {
        let shard = shard as u32;
        assert!(
            store
                .lease_shard(shard, TOKEN, Duration::from_secs(120))
                .await
                .unwrap()
        );
        for chunk in tenants.chunks(500) {
            let commits: Vec<TenantCommit> = chunk
                .iter()
                .map(|tenant| TenantCommit {
                    tenant: tenant.clone(),
                    record: TenantRecord::default(),
                    baseline: Some(BaselineWrite::new(None, baseline.clone())),
                    status: pb::TenantStatus {
                        tenant_id: tenant.to_string(),
                        level: green,
                        ..Default::default()
                    },
                    index_move: Some(IndexMove {
                        from: None,
                        to: rank_member(green, tenant.as_str()),
                    }),
                    policy: None,
                    alert: None,
                })
                .collect();
            store.commit_shard(shard, TOKEN, &commits).await.unwrap();
        }
        store.release(Some(shard), TOKEN).await.unwrap();
    }
    rate
}

struct Evaluated {
    tenants: i64,
    alerts: usize,
}

async fn evaluate(
    admin: &mut AlertingAdminServiceClient<Channel>,
    as_of_ms: i64,
    commit: bool,
) -> (Duration, Result<Evaluated, tonic::Status>) {
    let started = Instant::now();
    let result = admin
        .evaluate(bearer(pb::EvaluateRequest {
            as_of: Some(to_timestamp(at_ms(as_of_ms))),
            tenant_ids: Vec::new(),
            commit,
        }))
        .await;
    let wall = started.elapsed();
    let result = result.map(|response| {
        let response = response.into_inner();
        Evaluated {
            tenants: response.tenants_evaluated,
            alerts: response.alerts.len(),
        }
    });
    (wall, result)
}

/// The meter's side of a pass alone: every shard's ListTenantUsage pages as
/// the engine reads them, shard after shard (`concurrent` false), or every
/// shard at once (`concurrent` true: what parallel shards would give).
async fn meter_listing(
    meter: &MeterServiceClient<Channel>,
    redis: &mut MultiplexedConnection,
    options: Options,
    as_of_ms: i64,
    concurrent: bool,
) -> Result<Listing, tonic::Status> {
    let cpu = cpu_seconds(redis).await;
    let started = Instant::now();
    let shards =
        (0..options.shards).map(|shard| list_shard(meter.clone(), options, as_of_ms, shard));
    let counts = if concurrent {
        futures::future::join_all(shards).await
    } else {
        let mut counts = Vec::new();
        for shard in shards {
            counts.push(shard.await);
        }
        counts
    };
    let wall = started.elapsed();
    let mut tenants = 0;
    for count in counts {
        tenants += count?;
    }
    Ok(Listing {
        tenants,
        wall,
        cpu: cpu_since(cpu, cpu_seconds(redis).await),
    })
}

/// Pages through one shard; returns its tenants.
async fn list_shard(
    mut meter: MeterServiceClient<Channel>,
    options: Options,
    as_of_ms: i64,
    shard: u32,
) -> Result<u64, tonic::Status> {
    let mut tenants = 0;
    let mut page_token = String::new();
    loop {
        let page = meter
            .list_tenant_usage(pb::ListTenantUsageRequest {
                page_size: options.page_size as i32,
                page_token,
                include_models: false,
                shard_count: options.shards as i32,
                shard_index: shard as i32,
                as_of: Some(to_timestamp(at_ms(as_of_ms))),
                // What alerting asks for.
                windows: vec![pb::UsageWindow::FiveMinutes.into()],
            })
            .await?
            .into_inner();
        tenants += page.tenants.len() as u64;
        if page.next_page_token.is_empty() {
            return Ok(tenants);
        }
        page_token = page.next_page_token;
    }
}

/// CPU seconds used so far by (the redis-server, this process).
async fn cpu_seconds(redis: &mut MultiplexedConnection) -> (f64, f64) {
    let info: String = redis::cmd("INFO")
        .arg("cpu")
        .query_async(redis)
        .await
        .unwrap_or_default();
    let field = |name: &str| -> f64 {
        info.lines()
            .find_map(|line| line.strip_prefix(name)?.strip_prefix(':'))
            .and_then(|v| v.trim().parse().ok())
            .unwrap_or(0.0)
    };
    // /proc/self/stat: utime and stime are fields 14 and 15, in clock ticks
    // (100 per second on Linux); the fields after the command name start at 3.
    let stat = std::fs::read_to_string("/proc/self/stat").unwrap_or_default();
    let fields: Vec<&str> = stat
        .rsplit_once(')')
        .map_or(Vec::new(), |(_, rest)| rest.split_whitespace().collect());
    let ticks = |i: usize| -> f64 {
        fields
            .get(i)
            .and_then(|v| v.parse::<u64>().ok())
            .unwrap_or(0) as f64
    };
    (
        field("used_cpu_sys") + field("used_cpu_user"),
        (ticks(11) + ticks(12)) / 100.0,
    )
}

fn cpu_since(before: (f64, f64), after: (f64, f64)) -> (f64, f64) {
    (after.0 - before.0, after.1 - before.1)
}

#[derive(Debug, Clone, Copy, Default)]
struct Memory {
    redis_used: u64,
    redis_rss: u64,
    vm_rss: u64,
    vm_hwm: u64,
}

async fn memory(redis: &mut MultiplexedConnection) -> Memory {
    let info: String = redis::cmd("INFO")
        .arg("memory")
        .query_async(redis)
        .await
        .unwrap();
    let field = |text: &str, name: &str, sep: char| -> u64 {
        text.lines()
            .find_map(|line| line.strip_prefix(name)?.strip_prefix(sep))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
            .unwrap_or(0)
    };
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    Memory {
        redis_used: field(&info, "used_memory", ':'),
        redis_rss: field(&info, "used_memory_rss", ':'),
        vm_rss: field(&status, "VmRSS", ':') * 1024,
        vm_hwm: field(&status, "VmHWM", ':') * 1024,
    }
}

/// Bytes of alerting's own keys (`MEMORY USAGE ... SAMPLES 0`, exact), as
/// laid out in `tenantmeter_alerting::state`.
async fn alerting_keys_bytes(redis: &mut MultiplexedConnection, shards: u32) -> u64 {
    let mut keys: Vec<String> = ["{al}:fleet", "{al}:fleet:lease", "{al}:summary"]
        .into_iter()
        .map(str::to_owned)
        .collect();
    for shard in 0..shards {
        for name in [
            "lease", "state", "baseline", "status", "policy", "levels", "outbox",
        ] {
            keys.push(format!("{{al:s{shard}}}:{name}"));
        }
    }
    // Each tenant's baseline has a key of its own.
    for shard in 0..shards {
        let mut found: Vec<String> = redis::cmd("KEYS")
            .arg(format!("{{al:s{shard}}}:bl:*"))
            .query_async(redis)
            .await
            .unwrap_or_default();
        keys.append(&mut found);
    }
    let mut total = 0;
    for chunk in keys.chunks(1_000) {
        let mut pipe = redis::pipe();
        for key in chunk {
            pipe.cmd("MEMORY")
                .arg("USAGE")
                .arg(key)
                .arg("SAMPLES")
                .arg(0);
        }
        let sizes: Vec<Option<u64>> = pipe.query_async(redis).await.unwrap_or_default();
        total += sizes.into_iter().flatten().sum::<u64>();
    }
    total
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

fn mib(bytes: u64) -> f64 {
    bytes as f64 / (1024.0 * 1024.0)
}

fn per_tenant(after: u64, before: u64, tenants: u64) -> i64 {
    (after as i64 - before as i64) / tenants as i64
}

#[tokio::main]
async fn main() {
    let options = options();
    if cfg!(debug_assertions) {
        eprintln!("warning: a debug build; use --release for numbers that mean something");
    }
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "warn".into()),
        )
        .with_writer(std::io::stderr)
        .init();
    let interval = Duration::from_millis(options.interval_ms);

    // The clock: the pass in the middle is the first of a new 5-minute slot.
    let middle = (options.passes / 2 + 1) as i64;
    let real_now = unix_ms(SystemClock.now());
    let boundary = (real_now.div_euclid(SLOT_MS) + 1) * SLOT_MS;
    let start_ms = boundary - middle * options.interval_ms as i64;
    let clock = ManualClock::new(at_ms(start_ms));

    let redis = RedisServer::start().await.unwrap();
    let mut redis_conn = redis
        .client()
        .unwrap()
        .get_multiplexed_async_connection()
        .await
        .unwrap();
    let shutdown = Shutdown::new();
    let mut tasks: Vec<JoinHandle<()>> = Vec::new();

    let (pricing_listener, pricing_addr) = listener().await;
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

    let (meter_listener, meter_addr) = listener().await;
    tasks.push(tokio::spawn({
        let config = tenantmeter_meter::MeterConfig {
            pricing_url: format!("http://{pricing_addr}"),
            ..Default::default()
        };
        let deps = tenantmeter_meter::MeterDeps {
            redis_url: redis.url(),
            clock: Arc::new(clock.clone()),
        };
        let shutdown = shutdown.clone();
        async move {
            tenantmeter_meter::run(config, deps, meter_listener, shutdown)
                .await
                .unwrap();
        }
    }));

    let (alerting_listener, alerting_addr) = listener().await;
    let config = AlertingConfig {
        meter_url: format!("http://{meter_addr}"),
        pricing_url: format!("http://{pricing_addr}"),
        interval: Duration::ZERO,
        shards: options.shards,
        page_size: options.page_size,
        lease_ttl: Duration::from_millis(options.lease_ttl_ms),
        ..Default::default()
    };
    config.validate().unwrap();
    tasks.push(tokio::spawn({
        let deps = AlertingDeps {
            redis_url: redis.url(),
            admin_token: Some(ADMIN_TOKEN.to_owned()),
            clock: Arc::new(clock.clone()),
        };
        let shutdown = shutdown.clone();
        async move {
            tenantmeter_alerting::run(config, deps, alerting_listener, shutdown)
                .await
                .unwrap();
        }
    }));

    // Ready: the meter prices (it has the price book), alerting answers.
    let mut meters = Vec::new();
    for _ in 0..options.callers {
        meters.push(MeterServiceClient::new(channel(meter_addr).await));
    }
    poll_until_ok(Duration::from_secs(30), || {
        let mut meter = meters[0].clone();
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
    let mut admin = AlertingAdminServiceClient::new(channel(alerting_addr).await)
        .max_decoding_message_size(1 << 30);
    poll_until_ok(Duration::from_secs(30), || {
        let mut admin = admin.clone();
        async move {
            admin
                .get_shadow_mode(bearer(pb::GetShadowModeRequest {}))
                .await
                .map(|_| ())
        }
    })
    .await
    .unwrap();

    // Load.
    let mem_before = memory(&mut redis_conn).await;
    eprintln!(
        "loading {} tenants ({} events)...",
        options.tenants,
        options.tenants * EVENTS_PER_TENANT
    );
    let started = Instant::now();
    let loaded = load(&meters, options, start_ms).await;
    let load_time = started.elapsed();
    let mem_loaded = memory(&mut redis_conn).await;
    let seeded = if options.history_weeks > 0 {
        eprintln!(
            "seeding {} week(s) of learned baseline per tenant...",
            options.history_weeks
        );
        Some(seed_history(&mut admin, &redis.url(), options, start_ms, interval).await)
    } else {
        None
    };
    let events = options.tenants * EVENTS_PER_TENANT;
    let mix = (1..=options.tenants).fold([0_u64; 3], |mut n, t| {
        n[match spend_factor(t) {
            100 => 2,
            20 => 1,
            _ => 0,
        }] += 1;
        n
    });

    // Passes, each followed by the meter's listing alone at its instant.
    let mut passes: Vec<Pass> = Vec::new();
    let mut last_slot = None;
    let mut mem_first = Memory::default();
    for pass in 0..=options.passes {
        let commit = pass < options.passes;
        clock.advance(interval);
        let as_of_ms = unix_ms(clock.now());
        let slot = as_of_ms.div_euclid(SLOT_MS);
        let label = match pass {
            0 => "1 first".to_owned(),
            p if p == options.passes => "what-if".to_owned(),
            p => format!("{}", p + 1),
        };
        eprintln!("pass {label} of {} committed...", options.passes);
        let cpu = cpu_seconds(&mut redis_conn).await;
        let (wall, result) = evaluate(&mut admin, as_of_ms, commit).await;
        let cpu = cpu_since(cpu, cpu_seconds(&mut redis_conn).await);
        if pass == 0 {
            mem_first = memory(&mut redis_conn).await;
        }
        let listing = meter_listing(&meters[0], &mut redis_conn, options, as_of_ms, false).await;
        passes.push(Pass {
            label,
            as_of_ms,
            // A what-if learns in memory only; the column is about commits.
            learns: commit && last_slot != Some(slot),
            wall,
            cpu,
            result,
            listing,
        });
        if commit {
            last_slot = Some(slot);
        }
    }
    let mem_passes = memory(&mut redis_conn).await;
    let alerting_keys = alerting_keys_bytes(&mut redis_conn, options.shards).await;
    // The same listing with every shard at once, at the what-if's instant.
    eprintln!("meter listing, shards concurrently...");
    let concurrent = meter_listing(
        &meters[0],
        &mut redis_conn,
        options,
        unix_ms(clock.now()),
        true,
    )
    .await;

    // Report.
    let interval_ms = ms(interval);
    println!(
        "alerting_bench: {} tenants, {} shards, pages of {}, interval {} ms, lease {} ms, {} committed passes{}",
        options.tenants,
        options.shards,
        options.page_size,
        options.interval_ms,
        options.lease_ttl_ms,
        options.passes,
        if cfg!(debug_assertions) {
            " (DEBUG BUILD)"
        } else {
            ""
        }
    );
    println!(
        "load: {} events of {} tenants in {:.1} s = {:.0} events/s, {:.0} tenants/s ({} callers x {} events); accepted {}, duplicate {}, rejected {}, failed calls {}",
        events,
        options.tenants,
        load_time.as_secs_f64(),
        events as f64 / load_time.as_secs_f64(),
        options.tenants as f64 / load_time.as_secs_f64(),
        options.callers,
        BATCH_EVENTS / EVENTS_PER_TENANT * EVENTS_PER_TENANT,
        loaded.accepted,
        loaded.duplicates,
        loaded.rejected,
        loaded.errors
    );
    if let Some(reject) = &loaded.first_reject {
        println!("  first rejection: {reject}");
    }
    match seeded {
        Some(rate) => println!(
            "history: every tenant starts with {} week(s) of baseline (a sample every 5 minutes, all 168 hour-of-week buckets) at the steady rate, {rate} nano-USD/h",
            options.history_weeks
        ),
        None => println!(
            "history: none (--history-weeks 0): the first pass creates every tenant's state"
        ),
    }
    if let Some(error) = &loaded.first_error {
        println!("  first failed call: {error}");
    }
    println!(
        "spend mix: {} steady (1x), {} elevated (20x), {} runaway (100x)",
        mix[0], mix[1], mix[2]
    );
    println!();
    println!(
        "{:<8} {:>6} {:>7} {:>6} {:>6} {:>8} {:>8} {:>8} | {:>8} {:>8} | {:>9} {:>8} | {:>9} {:>8}",
        "pass",
        "as_of",
        "tenants",
        "alerts",
        "learns",
        "wall ms",
        "interval",
        "pass/int",
        "meter ms",
        "rest ms",
        "redis cpu",
        "proc cpu",
        "meter: rd",
        "proc"
    );
    let row = |pass: &Pass| {
        let at = format!("+{}s", (pass.as_of_ms - start_ms) / 1000);
        let (meter_ms, rest_ms, listing_cpu) = match &pass.listing {
            Ok(l) => (
                format!("{:.0}", ms(l.wall)),
                format!("{:.0}", ms(pass.wall) - ms(l.wall)),
                (format!("{:.2}s", l.cpu.0), format!("{:.2}s", l.cpu.1)),
            ),
            Err(status) => (
                format!("{:?}", status.code()),
                "-".to_owned(),
                ("-".to_owned(), "-".to_owned()),
            ),
        };
        match &pass.result {
            Ok(e) => println!(
                "{:<8} {:>6} {:>7} {:>6} {:>6} {:>8.0} {:>8.0} {:>7.2}x | {:>8} {:>8} | {:>8.2}s {:>7.2}s | {:>9} {:>8}",
                pass.label,
                at,
                e.tenants,
                e.alerts,
                if pass.learns { "yes" } else { "" },
                ms(pass.wall),
                interval_ms,
                ms(pass.wall) / interval_ms,
                meter_ms,
                rest_ms,
                pass.cpu.0,
                pass.cpu.1,
                listing_cpu.0,
                listing_cpu.1
            ),
            Err(status) => println!(
                "{:<8} {:>6}  FAILED after {:.0} ms: {:?} {} | meter listing alone {} ms",
                pass.label,
                at,
                ms(pass.wall),
                status.code(),
                status.message(),
                meter_ms
            ),
        }
    };
    for pass in &passes {
        row(pass);
    }
    println!(
        "(meter ms: ListTenantUsage alone, {} shards x pages of {}, sequential, at the same as_of right after the pass; rest = wall - meter;\n cpu: seconds of redis-server / of this process (meter + alerting + pricing + client) during the pass, then during the listing alone)",
        options.shards, options.page_size
    );
    println!();

    let (committed, what_if) = passes.split_at(options.passes);
    let what_if = &what_if[0];
    let first = &committed[0];
    let p50_max = |list: &[&Pass], of: &dyn Fn(&Pass) -> Option<Duration>| {
        let mut values: Vec<Duration> = list.iter().filter_map(|p| of(p)).collect();
        values.sort_unstable();
        values
            .get(values.len() / 2)
            .copied()
            .zip(values.last().copied())
    };
    println!(
        "first pass ({}): {:.0} ms = {:.2}x the interval{}",
        if seeded.is_some() {
            "loads every shard's state, as a replica taking over"
        } else {
            "creates every tenant's state"
        },
        ms(first.wall),
        ms(first.wall) / interval_ms,
        match &first.result {
            Ok(_) => String::new(),
            Err(status) => format!(" (FAILED: {})", status.message()),
        }
    );
    let steady: Vec<&Pass> = committed[1..].iter().filter(|p| p.result.is_ok()).collect();
    let steady_wall = p50_max(&steady, &|p| Some(p.wall));
    let steady_meter = p50_max(&steady, &|p| p.listing.as_ref().ok().map(|l| l.wall));
    if let Some((p50, max)) = steady_wall {
        println!(
            "steady passes ({} ok of {}): p50 {:.0} ms = {:.2}x, max {:.0} ms = {:.2}x the interval",
            steady.len(),
            committed.len() - 1,
            ms(p50),
            ms(p50) / interval_ms,
            ms(max),
            ms(max) / interval_ms
        );
    }
    if let Some((p50, max)) = steady_meter {
        println!(
            "meter listing only (same instants): p50 {:.0} ms = {:.2}x, max {:.0} ms = {:.2}x the interval{}",
            ms(p50),
            ms(p50) / interval_ms,
            ms(max),
            ms(max) / interval_ms,
            steady_wall.map_or(String::new(), |(pass, _)| format!(
                "; {:.0}% of the steady p50 pass",
                100.0 * ms(p50) / ms(pass)
            ))
        );
    }
    if what_if.result.is_ok() {
        println!(
            "what-if pass (no commit): {:.0} ms = {:.2}x the interval; its meter listing alone {}",
            ms(what_if.wall),
            ms(what_if.wall) / interval_ms,
            what_if
                .listing
                .as_ref()
                .map_or("failed".to_owned(), |l| format!("{:.0} ms", ms(l.wall)))
        );
    }
    match &concurrent {
        Ok(l) => println!(
            "meter listing, all {} shards at once (what concurrent shards would give): {:.0} ms = {:.2}x the interval, cpu redis {:.2}s / process {:.2}s",
            options.shards,
            ms(l.wall),
            ms(l.wall) / interval_ms,
            l.cpu.0,
            l.cpu.1
        ),
        Err(status) => println!("meter listing, shards at once: FAILED: {status}"),
    }
    let failed = committed.iter().filter(|p| p.result.is_err()).count();
    let short = passes
        .iter()
        .filter_map(|p| p.result.as_ref().ok())
        .filter(|e| e.tenants != options.tenants as i64)
        .count();
    let listed_short = passes
        .iter()
        .filter_map(|p| p.listing.as_ref().ok())
        .filter(|l| l.tenants != options.tenants)
        .count();
    if failed > 0 || short > 0 || listed_short > 0 {
        println!(
            "  {failed} committed passes failed; {short} passes evaluated and {listed_short} listings listed other than {} tenants",
            options.tenants
        );
    }
    println!();
    println!(
        "{:<24} {:>14} {:>12} {:>14} {:>14}",
        "memory (MiB)", "redis used", "redis rss", "process RSS", "process peak"
    );
    for (label, m) in [
        ("before load", mem_before),
        ("after load", mem_loaded),
        ("after first pass", mem_first),
        ("after all passes", mem_passes),
    ] {
        println!(
            "{:<24} {:>14.1} {:>12.1} {:>14.1} {:>14.1}",
            label,
            mib(m.redis_used),
            mib(m.redis_rss),
            mib(m.vm_rss),
            mib(m.vm_hwm)
        );
    }
    println!(
        "per tenant: meter's redis {} B (used_memory delta over the load); alerting's redis keys {} B ({:.1} MiB, MEMORY USAGE, after the passes);\n  process RSS {} B over the load (meter, pricing, client), {} B over the passes (mostly alerting's in-memory shard state)",
        per_tenant(
            mem_loaded.redis_used,
            mem_before.redis_used,
            options.tenants
        ),
        alerting_keys / options.tenants,
        mib(alerting_keys),
        per_tenant(mem_loaded.vm_rss, mem_before.vm_rss, options.tenants),
        per_tenant(mem_passes.vm_rss, mem_loaded.vm_rss, options.tenants),
    );

    shutdown.trigger();
    for task in tasks {
        let _ = tokio::time::timeout(Duration::from_secs(15), task).await;
    }
    // Background tasks (alerting gives its leases up) need redis still up.
    shutdown.wait_for_tasks(Duration::from_secs(15)).await;
    drop(redis);
}
