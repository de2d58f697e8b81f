//! How fast is the meter, against the Redis ceiling of its own scripts, and
//! how much Redis memory does a tenant take? Prints, in one run:
//!
//! 1. RecordUsage events/s through the real gRPC service (several callers,
//!    batches of 100 events over 1,000 tenants, unique event ids, event time
//!    now) next to `redis-benchmark` running `EVALSHA` of the same record
//!    script with the same argument shape (the same number of events per
//!    call as one tenant's slot of a gRPC batch), and the ratio;
//! 2. Reserve+Settle reservations/s through gRPC next to `redis-benchmark`
//!    running the reserve script and the settle script, combined as
//!    `1 / (1/reserve + 1/settle)`, and the ratio;
//! 3. Redis memory per active tenant: `used_memory` delta / tenants after a
//!    realistic hour of traffic, with `MEMORY USAGE` per key kind, and the
//!    same for a "busy" tenant whose every window bucket is populated.
//!
//! It starts its own redis-servers (AOF everysec, as deploy/redis.conf) and
//! its own pricing and meter services on free ports; it never touches the
//! redis on 6379. Needs `redis-server` and `redis-benchmark` on PATH.
//!
//! `cargo run --release -p tenantmeter-meter --example meter_bench [-- --seconds N]`
//! (`-- --help` lists the other knobs).

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::print_stdout,
    clippy::print_stderr,
    clippy::float_arithmetic,
    clippy::cast_precision_loss,
    clippy::cast_possible_truncation,
    clippy::cast_sign_loss
)] // a benchmark's report

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant, UNIX_EPOCH};

use anyhow::Context as _;
use futures::StreamExt as _;
use redis::aio::MultiplexedConnection;
use tenantmeter_meter::{MeterConfig, MeterDeps, scripts};
use tenantmeter_proto::v1 as pb;
use tenantmeter_proto::v1::meter_service_client::MeterServiceClient;
use tenantmeter_proto::v1::pricing_admin_service_client::PricingAdminServiceClient;
use tenantmeter_runtime::clock::{Clock as _, SystemClock};
use tenantmeter_runtime::shutdown::Shutdown;
use tenantmeter_testkit::{RedisServer, poll_until_ok};
use tokio::net::TcpListener;
use tokio::task::JoinHandle;
use tonic::transport::Channel;

const ADMIN_TOKEN: &str = "bench-admin-token-0123456789";
const SONNET: &str = "anthropic.claude-sonnet-4-5-20250929-v1:0";
const HAIKU: &str = "anthropic.claude-haiku-4-5-20251001-v1:0";
/// The plan the throughput tenants are put on: limits far above what the
/// benchmark can reach, so the checks run but never deny.
const BENCH_PLAN: &str = "bench-unlimited";
const BENCH_RPM: i64 = 1_000_000_000;
const BENCH_TPM: i64 = 1_000_000_000_000;
/// Tokens of every benchmark event.
const INPUT: i64 = 1_200;
const OUTPUT: i64 = 350;
const CACHE_READ: i64 = 4_000;
/// Max output tokens asked for by every Reserve.
const MAX_OUTPUT: i64 = 1_024;

// ---------------------------------------------------------------- options --

#[derive(Debug, Clone)]
struct Options {
    seconds: u64,
    tenants: usize,
    batch: usize,
    per_tenant: Vec<usize>,
    record_callers: usize,
    reserve_callers: usize,
    rb_clients: usize,
    rounds: usize,
    memory_tenants: usize,
    busy_tenants: usize,
    aof: bool,
}

impl Default for Options {
    fn default() -> Self {
        Self {
            seconds: 8,
            tenants: 1_000,
            batch: 100,
            per_tenant: vec![10, 1],
            record_callers: 8,
            reserve_callers: 32,
            rb_clients: 50,
            rounds: 4,
            memory_tenants: 1_000,
            busy_tenants: 20,
            aof: true,
        }
    }
}

const HELP: &str = "meter_bench: the meter's throughput next to the Redis ceiling of its scripts, and Redis memory per tenant

  --seconds N          length of each measurement, per side (default 8)
  --tenants N          tenants of the throughput runs (default 1000)
  --batch N            events per RecordUsage call (default 100)
  --per-tenant A,B     events of one tenant per batch slot, one run each (default 10,1)
  --record-callers N   concurrent RecordUsage callers (default 8)
  --reserve-callers N  concurrent Reserve+Settle callers (default 32)
  --rb-clients N       redis-benchmark connections (default 50)
  --rounds N           slices each measurement alternates service and redis-benchmark in (default 4)
  --memory-tenants N   tenants of the memory phase (default 1000)
  --busy-tenants N     fully populated tenants of the memory phase (default 20)
  --no-aof             run the redis-servers without the append-only file";

fn options() -> anyhow::Result<Options> {
    let mut options = Options::default();
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        let mut value = |name: &str| args.next().with_context(|| format!("{name} needs a value"));
        match arg.as_str() {
            "--seconds" => options.seconds = value("--seconds")?.parse()?,
            "--tenants" => options.tenants = value("--tenants")?.parse()?,
            "--batch" => options.batch = value("--batch")?.parse()?,
            "--per-tenant" => {
                options.per_tenant = value("--per-tenant")?
                    .split(',')
                    .map(str::parse)
                    .collect::<Result<_, _>>()?;
            }
            "--record-callers" => options.record_callers = value("--record-callers")?.parse()?,
            "--reserve-callers" => {
                options.reserve_callers = value("--reserve-callers")?.parse()?;
            }
            "--rb-clients" => options.rb_clients = value("--rb-clients")?.parse()?,
            "--rounds" => options.rounds = value("--rounds")?.parse()?,
            "--memory-tenants" => options.memory_tenants = value("--memory-tenants")?.parse()?,
            "--busy-tenants" => options.busy_tenants = value("--busy-tenants")?.parse()?,
            "--no-aof" => options.aof = false,
            "-h" | "--help" => {
                println!("{HELP}");
                std::process::exit(0);
            }
            other => anyhow::bail!("unknown argument {other:?}\n\n{HELP}"),
        }
    }
    anyhow::ensure!(options.seconds > 0, "--seconds must be more than 0");
    anyhow::ensure!(options.rounds > 0, "--rounds must be more than 0");
    anyhow::ensure!(
        options.batch > 0 && options.batch <= tenantmeter_meter::meter::MAX_BATCH,
        "--batch must be 1 to {}",
        tenantmeter_meter::meter::MAX_BATCH
    );
    for &k in &options.per_tenant {
        anyhow::ensure!(
            k > 0 && options.batch.is_multiple_of(k) && options.batch / k <= options.tenants,
            "--per-tenant {k}: must divide --batch and leave at most --tenants tenants per batch"
        );
    }
    anyhow::ensure!(
        options.tenants > 0 && options.memory_tenants > 0,
        "tenant counts must be more than 0"
    );
    Ok(options)
}

// ------------------------------------------------------------------ stack --

/// Pricing and the meter, each on its own redis-server, both on port 0.
#[derive(Debug)]
struct Stack {
    meter_redis: RedisServer,
    _pricing_redis: RedisServer,
    pricing_addr: SocketAddr,
    meter_addr: SocketAddr,
    shutdown: Shutdown,
    tasks: Vec<JoinHandle<anyhow::Result<()>>>,
}

async fn channel(addr: SocketAddr) -> anyhow::Result<Channel> {
    poll_until_ok(Duration::from_secs(20), || async {
        tonic::transport::Endpoint::from_shared(format!("http://{addr}"))?
            .tcp_nodelay(true)
            .connect()
            .await
    })
    .await
}

fn admin<T>(message: T) -> anyhow::Result<tonic::Request<T>> {
    let mut request = tonic::Request::new(message);
    request
        .metadata_mut()
        .insert("authorization", format!("Bearer {ADMIN_TOKEN}").parse()?);
    Ok(request)
}

impl Stack {
    async fn start(aof: bool) -> anyhow::Result<Self> {
        let meter_redis = RedisServer::builder()
            .aof(aof)
            .config("maxmemory-policy", "noeviction")
            .start()
            .await?;
        let pricing_redis = RedisServer::start().await?;
        let shutdown = Shutdown::new();
        let pricing_listener = TcpListener::bind("127.0.0.1:0").await?;
        let pricing_addr = pricing_listener.local_addr()?;
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
                .context("pricing")
            }
        });
        let meter_listener = TcpListener::bind("127.0.0.1:0").await?;
        let meter_addr = meter_listener.local_addr()?;
        let config = MeterConfig {
            pricing_url: format!("http://{pricing_addr}"),
            ..MeterConfig::default()
        };
        let meter = tokio::spawn({
            let deps = MeterDeps {
                redis_url: meter_redis.url(),
                clock: Arc::new(SystemClock),
            };
            let shutdown = shutdown.clone();
            async move {
                tenantmeter_meter::run(config, deps, meter_listener, shutdown)
                    .await
                    .context("meter")
            }
        });
        let stack = Self {
            meter_redis,
            _pricing_redis: pricing_redis,
            pricing_addr,
            meter_addr,
            shutdown,
            tasks: vec![pricing, meter],
        };
        stack.wait_book(1).await?;
        Ok(stack)
    }

    async fn meter(&self) -> anyhow::Result<MeterServiceClient<Channel>> {
        Ok(MeterServiceClient::new(channel(self.meter_addr).await?))
    }

    /// Waits until the meter serves price book `version` or a later one.
    async fn wait_book(&self, version: u64) -> anyhow::Result<()> {
        let meter = self.meter().await?;
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
    }

    /// Puts `tenants` on a plan whose limits the benchmark never reaches.
    async fn unlimited(&self, tenants: &[String]) -> anyhow::Result<()> {
        let mut admin_client = PricingAdminServiceClient::new(channel(self.pricing_addr).await?);
        let plan = pb::Plan {
            plan_id: BENCH_PLAN.into(),
            display_name: "benchmark: limits never reached".into(),
            tier_mode: pb::TierMode::Graduated.into(),
            tiers: vec![pb::Tier {
                up_to_usd: String::new(),
                rate: Some(pb::tier::Rate::Multiplier("1".into())),
            }],
            limits: Some(pb::PlanLimits {
                requests_per_minute: BENCH_RPM,
                tokens_per_minute: BENCH_TPM,
                period_budget_nanos_usd: 0,
            }),
            ..Default::default()
        };
        admin_client
            .upsert_plan(admin(pb::UpsertPlanRequest { plan: Some(plan) })?)
            .await?;
        let version = admin_client
            .assign_plans(admin(pb::AssignPlansRequest {
                assignments: tenants
                    .iter()
                    .map(|t| pb::TenantPlanAssignment {
                        tenant_id: t.clone(),
                        plan_id: BENCH_PLAN.into(),
                    })
                    .collect(),
            })?)
            .await?
            .into_inner()
            .version;
        self.wait_book(version).await
    }

    async fn redis(&self) -> anyhow::Result<MultiplexedConnection> {
        Ok(self
            .meter_redis
            .client()?
            .get_multiplexed_async_connection()
            .await?)
    }

    async fn stop(self) -> anyhow::Result<()> {
        self.shutdown.trigger();
        for task in self.tasks {
            tokio::time::timeout(Duration::from_secs(30), task)
                .await
                .context("a service did not stop within 30 s")???;
        }
        Ok(())
    }
}

// ------------------------------------------------------------------- time --

fn now_ms() -> i64 {
    SystemClock
        .now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64)
}

fn ts(ms: i64) -> prost_types::Timestamp {
    prost_types::Timestamp {
        seconds: ms.div_euclid(1000),
        nanos: (ms.rem_euclid(1000) * 1_000_000) as i32,
    }
}

// -------------------------------------------------------------------- cpu --

/// CPU time of the redis-server, of this process (client and services), and
/// of the whole machine, to tell who was busy during a measurement.
#[derive(Debug, Clone, Copy)]
struct Cpu {
    redis: u64,
    own: u64,
    machine: [u64; 3],
}

fn process_ticks(pid: &str) -> u64 {
    let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
        return 0;
    };
    // Fields after the command name (which may hold spaces): state is the
    // first, utime the 12th, stime the 13th.
    let Some(rest) = stat.rfind(')').map(|i| &stat[i + 1..]) else {
        return 0;
    };
    let fields: Vec<u64> = rest
        .split_whitespace()
        .skip(11)
        .take(2)
        .filter_map(|f| f.parse().ok())
        .collect();
    fields.iter().sum()
}

/// Machine-wide ticks from /proc/stat: busy (all but idle and iowait),
/// interrupts (irq + softirq: the loopback network stack), and steal.
fn machine_ticks() -> [u64; 3] {
    let stat = std::fs::read_to_string("/proc/stat").unwrap_or_default();
    let Some(line) = stat.lines().next() else {
        return [0; 3];
    };
    let fields: Vec<u64> = line
        .split_whitespace()
        .skip(1)
        .filter_map(|f| f.parse().ok())
        .collect();
    let at = |i: usize| fields.get(i).copied().unwrap_or(0);
    let total: u64 = fields.iter().take(8).sum();
    [total.saturating_sub(at(3) + at(4)), at(5) + at(6), at(7)]
}

impl Cpu {
    fn sample(redis_pid: Option<u32>) -> Self {
        Self {
            redis: redis_pid.map_or(0, |p| process_ticks(&p.to_string())),
            own: process_ticks("self"),
            machine: machine_ticks(),
        }
    }

    /// CPU used since `before`, in core-seconds.
    fn since(&self, before: &Self, tick_hz: f64) -> Usage {
        let cores = |now: u64, then: u64| now.saturating_sub(then) as f64 / tick_hz;
        Usage {
            redis: cores(self.redis, before.redis),
            own: cores(self.own, before.own),
            machine: cores(self.machine[0], before.machine[0]),
            interrupts: cores(self.machine[1], before.machine[1]),
            steal: cores(self.machine[2], before.machine[2]),
        }
    }
}

/// CPU used during a measurement, in core-seconds (or, divided by its
/// length, in cores).
#[derive(Debug, Clone, Copy, Default)]
struct Usage {
    /// The redis-server process.
    redis: f64,
    /// This process: the callers, the meter and pricing.
    own: f64,
    /// The whole machine (includes redis-benchmark and anything else).
    machine: f64,
    /// Of which irq + softirq.
    interrupts: f64,
    /// Of which stolen by the hypervisor.
    steal: f64,
}

impl Usage {
    fn add(&mut self, other: Self) {
        self.redis += other.redis;
        self.own += other.own;
        self.machine += other.machine;
        self.interrupts += other.interrupts;
        self.steal += other.steal;
    }

    /// Core-seconds over `seconds`: cores.
    fn per(self, seconds: f64) -> Self {
        let s = seconds.max(f64::EPSILON);
        Self {
            redis: self.redis / s,
            own: self.own / s,
            machine: self.machine / s,
            interrupts: self.interrupts / s,
            steal: self.steal / s,
        }
    }
}

fn tick_hz() -> f64 {
    std::process::Command::new("getconf")
        .arg("CLK_TCK")
        .output()
        .ok()
        .and_then(|o| String::from_utf8_lossy(&o.stdout).trim().parse().ok())
        .unwrap_or(100.0)
}

// ----------------------------------------------------------------- report --

#[derive(Debug, Default)]
struct Measured {
    /// Events or reservations done.
    count: u64,
    elapsed: Duration,
    /// Per call (batch or Reserve+Settle pair).
    latencies: Vec<Duration>,
    failures: u64,
    /// Why, when it is not obvious.
    failure_kinds: BTreeMap<String, u64>,
    /// Core-seconds.
    cpu: Usage,
    /// What Redis ran meanwhile.
    redis: CommandStats,
}

impl Measured {
    fn rate(&self) -> f64 {
        self.count as f64 / self.elapsed.as_secs_f64()
    }

    fn merge(&mut self, other: Self) {
        self.count += other.count;
        self.elapsed += other.elapsed;
        self.latencies.extend(other.latencies);
        self.failures += other.failures;
        for (kind, n) in other.failure_kinds {
            *self.failure_kinds.entry(kind).or_default() += n;
        }
        self.cpu.add(other.cpu);
        self.redis.evalsha_calls += other.redis.evalsha_calls;
        self.redis.evalsha_failed += other.redis.evalsha_failed;
        self.redis.evalsha_usec += other.redis.evalsha_usec;
        self.redis.exec_calls += other.redis.exec_calls;
        self.redis.exec_usec += other.redis.exec_usec;
    }

    fn cores(&self) -> Usage {
        self.cpu.per(self.elapsed.as_secs_f64())
    }

    fn fail(&mut self, kind: impl Into<String>) {
        self.failures += 1;
        *self.failure_kinds.entry(kind.into()).or_default() += 1;
    }

    /// `0`, or the count and its reasons.
    fn failed(&self) -> String {
        if self.failure_kinds.is_empty() {
            return self.failures.to_string();
        }
        let kinds: Vec<String> = self
            .failure_kinds
            .iter()
            .map(|(kind, n)| format!("{n} {kind}"))
            .collect();
        format!("{} ({})", self.failures, kinds.join(", "))
    }

    /// What Redis did for the service, per second.
    fn redis_line(&self) -> String {
        let r = &self.redis;
        let seconds = self.elapsed.as_secs_f64();
        format!(
            "redis: {} EVALSHA/s at {:.0} us/call; active-index MULTI/EXEC {}/s at {:.0} us; commands {:.2} of {:.2} redis cores",
            thousands(r.evalsha_calls as f64 / seconds),
            r.evalsha_usec / r.evalsha_calls.max(1) as f64,
            thousands(r.exec_calls as f64 / seconds),
            r.exec_usec / r.exec_calls.max(1) as f64,
            (r.evalsha_usec + r.exec_usec) / 1e6 / seconds,
            self.cores().redis
        )
    }

    fn percentile(&mut self, percent: usize) -> Duration {
        self.latencies.sort_unstable();
        self.latencies
            .get(self.latencies.len().saturating_sub(1) * percent / 100)
            .copied()
            .unwrap_or_default()
    }
}

/// `redis-benchmark` measurements of one command.
#[derive(Debug, Clone, Copy, Default)]
struct Ceiling {
    /// Calls made by the measured runs.
    calls: u64,
    /// Their length as redis-benchmark timed them (calls / its rps).
    seconds: f64,
    /// Calls made in all, calibration included.
    sent_calls: u64,
    /// Redis's time in them, us (INFO commandstats).
    usec: f64,
    /// Core-seconds, over `wall` seconds.
    cpu: Usage,
    wall: f64,
}

impl Ceiling {
    fn rate(&self) -> f64 {
        self.calls as f64 / self.seconds.max(f64::EPSILON)
    }

    fn usec_per_call(&self) -> f64 {
        self.usec / self.calls.max(1) as f64
    }

    fn cores(&self) -> Usage {
        self.cpu.per(self.wall)
    }

    fn merge(&mut self, other: Self) {
        self.calls += other.calls;
        self.seconds += other.seconds;
        self.sent_calls += other.sent_calls;
        self.usec += other.usec;
        self.cpu.add(other.cpu);
        self.wall += other.wall;
    }
}

fn thousands(value: f64) -> String {
    let whole = value.round() as u64;
    let digits = whole.to_string();
    let mut out = String::new();
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    out
}

fn cores(usage: Usage) -> String {
    format!(
        "cpu: redis-server {:.2}, bench process {:.2}, machine {:.2} cores (irq {:.2}, steal {:.2})",
        usage.redis, usage.own, usage.machine, usage.interrupts, usage.steal
    )
}

// ------------------------------------------------------------------ redis --

async fn info_field(
    conn: &mut MultiplexedConnection,
    section: &str,
    field: &str,
) -> Option<String> {
    let info: String = redis::cmd("INFO")
        .arg(section)
        .query_async(conn)
        .await
        .ok()?;
    info.lines()
        .find_map(|l| l.strip_prefix(field)?.strip_prefix(':'))
        .map(|v| v.trim().to_owned())
}

async fn used_memory(conn: &mut MultiplexedConnection) -> anyhow::Result<i64> {
    info_field(conn, "memory", "used_memory")
        .await
        .context("INFO memory has no used_memory")?
        .parse()
        .context("used_memory")
}

/// Commands Redis ran since the last CONFIG RESETSTAT (INFO commandstats).
#[derive(Debug, Clone, Copy, Default)]
struct CommandStats {
    evalsha_calls: u64,
    evalsha_failed: u64,
    evalsha_usec: f64,
    /// MULTI/EXEC transactions (the meter's active-tenant index update,
    /// ZADD + PEXPIRE, beside every record and settle call), and the time
    /// of MULTI and EXEC (which includes its queued commands). Commands a
    /// script runs are counted under their own names too, and inside the
    /// EVALSHA's time, so they are not added again.
    exec_calls: u64,
    exec_usec: f64,
}

async fn command_stats(conn: &mut MultiplexedConnection) -> CommandStats {
    let info: String = redis::cmd("INFO")
        .arg("commandstats")
        .query_async(conn)
        .await
        .unwrap_or_default();
    let mut stats = CommandStats::default();
    for line in info.lines() {
        let Some((name, fields)) = line
            .strip_prefix("cmdstat_")
            .and_then(|l| l.split_once(':'))
        else {
            continue;
        };
        let field = |key: &str| -> f64 {
            fields
                .split(',')
                .find_map(|kv| kv.strip_prefix(key)?.strip_prefix('='))
                .and_then(|v| v.parse().ok())
                .unwrap_or(0.0)
        };
        match name {
            "evalsha" => {
                stats.evalsha_calls = field("calls") as u64;
                stats.evalsha_failed = field("failed_calls") as u64;
                stats.evalsha_usec = field("usec");
            }
            "exec" => {
                stats.exec_calls = field("calls") as u64;
                stats.exec_usec += field("usec");
            }
            "multi" => stats.exec_usec += field("usec"),
            _ => {}
        }
    }
    stats
}

async fn reset_stats(conn: &mut MultiplexedConnection) -> anyhow::Result<()> {
    redis::cmd("CONFIG")
        .arg("RESETSTAT")
        .query_async::<()>(conn)
        .await?;
    Ok(())
}

/// Requests counted this month by `tenants`, from their monthly rollups.
async fn counted(conn: &mut MultiplexedConnection, tenants: &[String]) -> anyhow::Result<i64> {
    let month = tenantmeter_domain::window::month_index(now_ms());
    let mut pipe = redis::pipe();
    for tenant in tenants {
        pipe.hget(format!("{{t:{tenant}}}:mo:{month}"), "r");
    }
    let counts: Vec<Option<i64>> = pipe.query_async(conn).await?;
    Ok(counts.into_iter().flatten().sum())
}

/// Loads a script with SCRIPT LOAD; checks the SHA is the one the meter uses.
async fn load(conn: &mut MultiplexedConnection, body: &str) -> anyhow::Result<String> {
    let script = scripts::script(body);
    let sha = script.load_async(conn).await?;
    anyhow::ensure!(
        sha == script.get_hash(),
        "SCRIPT LOAD answered {sha}, the meter calls {}",
        script.get_hash()
    );
    Ok(sha)
}

/// One `redis-benchmark` run of `requests` calls of `command` (placeholders
/// `__rand_int__` drawn from 0..`random`); its calls per second.
async fn redis_benchmark(
    port: u16,
    clients: usize,
    random: usize,
    requests: u64,
    command: &[String],
) -> anyhow::Result<f64> {
    let output = tokio::process::Command::new("redis-benchmark")
        .args(["-h", "127.0.0.1", "-p", &port.to_string()])
        .args(["-c", &clients.to_string(), "-n", &requests.to_string()])
        .args(["-r", &random.to_string(), "--csv"])
        .args(command)
        .kill_on_drop(true)
        .output()
        .await
        .context("running redis-benchmark (apt-get install redis-tools)")?;
    let stdout = String::from_utf8_lossy(&output.stdout);
    anyhow::ensure!(
        output.status.success(),
        "redis-benchmark failed ({}): {stdout}{}",
        output.status,
        String::from_utf8_lossy(&output.stderr)
    );
    stdout
        .lines()
        .filter(|l| !l.starts_with("\"test\""))
        .find_map(|l| l.split("\",\"").nth(1)?.parse().ok())
        .with_context(|| format!("no rps in redis-benchmark's output: {stdout}"))
}

/// redis-benchmark seeds its generator with `time(NULL) ^ getpid()`, so two
/// runs can draw the same `__rand_int__` sequence and replay each other's
/// event ids (then counted as duplicates, which cost less). Every run gets
/// its own literal in place of `NONCE`.
fn with_nonce(command: &[String]) -> Vec<String> {
    static NEXT: AtomicU64 = AtomicU64::new(10_000);
    let nonce = NEXT.fetch_add(1, Ordering::Relaxed);
    command
        .iter()
        .map(|arg| {
            arg.replace("NONCE12", &format!("{nonce:012}"))
                .replace("NONCE8", &format!("{nonce:08}"))
        })
        .collect()
}

/// The Redis ceiling of one script, measured in slices.
#[derive(Debug)]
struct RedisSide<'a> {
    server: &'a RedisServer,
    clients: usize,
    random: usize,
    command: Vec<String>,
    /// Calls per second from a short calibration run, to size the slices.
    calibrated: f64,
    calibration_calls: u64,
}

impl<'a> RedisSide<'a> {
    async fn new(
        server: &'a RedisServer,
        options: &Options,
        command: Vec<String>,
    ) -> anyhow::Result<Self> {
        let clients = options.rb_clients;
        let calibration_calls = (clients * 2).max(100) as u64;
        let calibrated = redis_benchmark(
            server.port(),
            clients,
            options.tenants,
            calibration_calls,
            &with_nonce(&command),
        )
        .await?;
        Ok(Self {
            server,
            clients,
            random: options.tenants,
            command,
            calibrated,
            calibration_calls,
        })
    }

    /// Runs about `seconds` of calls.
    async fn slice(&self, seconds: f64, tick_hz: f64) -> anyhow::Result<Ceiling> {
        let requests = ((self.calibrated * seconds) as u64).max(100);
        let mut conn = self
            .server
            .client()?
            .get_multiplexed_async_connection()
            .await?;
        reset_stats(&mut conn).await?;
        let before = Cpu::sample(self.server.pid());
        let started = Instant::now();
        let rps = redis_benchmark(
            self.server.port(),
            self.clients,
            self.random,
            requests,
            &with_nonce(&self.command),
        )
        .await?;
        let wall = started.elapsed().as_secs_f64();
        let cpu = Cpu::sample(self.server.pid()).since(&before, tick_hz);
        let stats = command_stats(&mut conn).await;
        anyhow::ensure!(
            stats.evalsha_failed == 0,
            "{} of {} EVALSHA calls failed under redis-benchmark",
            stats.evalsha_failed,
            stats.evalsha_calls
        );
        Ok(Ceiling {
            calls: requests,
            seconds: requests as f64 / rps.max(f64::EPSILON),
            sent_calls: requests,
            usec: stats.evalsha_usec,
            cpu,
            wall,
        })
    }
}

// ------------------------------------------------------------ throughput --

fn tenant_name(i: usize) -> String {
    // The shape redis-benchmark gives `__rand_int__`: 12 digits, so both
    // sides count into the very same tenants' keys.
    format!("{i:012}")
}

fn usage() -> pb::TokenUsage {
    pb::TokenUsage {
        input_tokens: INPUT,
        output_tokens: OUTPUT,
        cache_read_input_tokens: CACHE_READ,
        cache_write_input_tokens: 0,
    }
}

fn event(id: String, tenant: String, model: &str, at_ms: i64) -> pb::UsageEvent {
    pb::UsageEvent {
        event_id: id,
        tenant_id: tenant,
        model_id: model.into(),
        application_id: "bench".into(),
        usage: Some(usage()),
        latency_ms: 850,
        event_time: Some(ts(at_ms)),
        ..Default::default()
    }
}

/// Event ids as long as redis-benchmark's `e:` + four 12-digit placeholders.
fn event_id(run: usize, caller: usize, seq: u64, index: usize) -> String {
    format!("e:{run:012}:{caller:012}:{seq:012}:{index:012}")
}

async fn grpc_record(
    stack: &Stack,
    options: &Options,
    window: Duration,
    run: usize,
    per_tenant: usize,
    tick_hz: f64,
) -> anyhow::Result<Measured> {
    let slots = options.batch / per_tenant;
    let mut clients = Vec::new();
    for _ in 0..options.record_callers {
        clients.push(stack.meter().await?);
    }
    let mut conn = stack.redis().await?;
    reset_stats(&mut conn).await?;
    let before = Cpu::sample(stack.meter_redis.pid());
    let started = Instant::now();
    let tasks: Vec<_> = clients
        .into_iter()
        .enumerate()
        .map(|(caller, mut client)| {
            let tenants = options.tenants;
            let callers = options.record_callers;
            tokio::spawn(async move {
                let mut out = Measured::default();
                let mut cursor = caller;
                let mut seq = 0u64;
                while started.elapsed() < window {
                    let now = now_ms();
                    let mut events = Vec::with_capacity(slots * per_tenant);
                    for _ in 0..slots {
                        let tenant = tenant_name(cursor % tenants);
                        cursor += callers;
                        for _ in 0..per_tenant {
                            events.push(event(
                                event_id(run, caller, seq, events.len()),
                                tenant.clone(),
                                SONNET,
                                now,
                            ));
                        }
                    }
                    seq += 1;
                    let sent = events.len() as u64;
                    let t = Instant::now();
                    match client.record_usage(pb::RecordUsageRequest { events }).await {
                        Ok(reply) => {
                            let reply = reply.into_inner();
                            out.count += reply.accepted as u64;
                            for _ in 0..reply.duplicates {
                                out.fail("duplicate");
                            }
                            for _ in 0..reply.rejected {
                                out.fail("rejected");
                            }
                        }
                        Err(status) => {
                            for _ in 0..sent {
                                out.fail(format!("{:?}", status.code()));
                            }
                        }
                    }
                    out.latencies.push(t.elapsed());
                }
                out
            })
        })
        .collect();
    let mut total = Measured::default();
    for task in tasks {
        total.merge(task.await?);
    }
    total.elapsed = started.elapsed();
    total.cpu = Cpu::sample(stack.meter_redis.pid()).since(&before, tick_hz);
    total.redis = command_stats(&mut conn).await;
    Ok(total)
}

async fn grpc_reserve_settle(
    stack: &Stack,
    options: &Options,
    window: Duration,
    run: usize,
    tick_hz: f64,
) -> anyhow::Result<Measured> {
    let mut clients = Vec::new();
    for _ in 0..options.reserve_callers {
        clients.push(stack.meter().await?);
    }
    let mut conn = stack.redis().await?;
    reset_stats(&mut conn).await?;
    let before = Cpu::sample(stack.meter_redis.pid());
    let started = Instant::now();
    let tasks: Vec<_> = clients
        .into_iter()
        .enumerate()
        .map(|(caller, mut client)| {
            let tenants = options.tenants;
            let callers = options.reserve_callers;
            tokio::spawn(async move {
                let mut out = Measured::default();
                let mut cursor = caller;
                let mut seq = 0u64;
                while started.elapsed() < window {
                    let tenant = tenant_name(cursor % tenants);
                    cursor += callers;
                    seq += 1;
                    let t = Instant::now();
                    let reserved = client
                        .reserve(pb::ReserveRequest {
                            tenant_id: tenant.clone(),
                            model_id: SONNET.into(),
                            estimated_input_tokens: INPUT + CACHE_READ,
                            max_output_tokens: MAX_OUTPUT,
                            ..Default::default()
                        })
                        .await
                        .map(|r| r.into_inner().outcome);
                    let reservation_id = match reserved {
                        // Fail-open: Redis did not answer within
                        // reserve_timeout; admitted unchecked, nothing
                        // reserved. Not a reservation.
                        Ok(Some(pb::reserve_response::Outcome::Admission(a))) if a.fail_open => {
                            out.fail("reserve: fail-open");
                            continue;
                        }
                        Ok(Some(pb::reserve_response::Outcome::Admission(a))) => a.reservation_id,
                        Ok(Some(pb::reserve_response::Outcome::Denial(d))) => {
                            out.fail(format!("reserve: denied ({})", d.message));
                            continue;
                        }
                        Ok(None) => {
                            out.fail("reserve: no outcome");
                            continue;
                        }
                        Err(status) => {
                            out.fail(format!("reserve: {:?}", status.code()));
                            continue;
                        }
                    };
                    let settled = client
                        .settle(pb::SettleRequest {
                            reservation_id,
                            event: Some(event(
                                event_id(run, caller, seq, 0),
                                tenant,
                                SONNET,
                                now_ms(),
                            )),
                        })
                        .await
                        .map(|r| r.into_inner().outcome());
                    match settled {
                        Ok(pb::SettleOutcome::Settled) => out.count += 1,
                        Ok(other) => out.fail(format!("settle: {}", other.as_str_name())),
                        Err(status) => out.fail(format!("settle: {:?}", status.code())),
                    }
                    out.latencies.push(t.elapsed());
                }
                out
            })
        })
        .collect();
    let mut total = Measured::default();
    for task in tasks {
        total.merge(task.await?);
    }
    total.elapsed = started.elapsed();
    total.cpu = Cpu::sample(stack.meter_redis.pid()).since(&before, tick_hz);
    total.redis = command_stats(&mut conn).await;
    Ok(total)
}

/// What the service stores for one benchmark event: provider cost and rated
/// value in pico-USD, read back from the rollup of one recorded event.
async fn priced(stack: &Stack, tenant: &str) -> anyhow::Result<(String, String)> {
    let at = now_ms();
    let reply = stack
        .meter()
        .await?
        .record_usage(pb::RecordUsageRequest {
            events: vec![event("e:price-sample".into(), tenant.into(), SONNET, at)],
        })
        .await?
        .into_inner();
    anyhow::ensure!(
        reply.accepted == 1,
        "the price sample was not accepted: {reply:?}"
    );
    let mut conn = stack.redis().await?;
    let key = format!("{{t:{tenant}}}:h:{}", at.div_euclid(3_600_000));
    let (cost, rated): (Option<String>, Option<String>) = redis::cmd("HMGET")
        .arg(&key)
        .arg("c")
        .arg("rv")
        .query_async(&mut conn)
        .await?;
    Ok((
        cost.context("no cost in the sample's rollup")?,
        rated.context("no rated value in the sample's rollup")?,
    ))
}

/// The retention arguments the meter passes with its default config.
fn retention_args() -> [String; 3] {
    let config = MeterConfig::default();
    let secs = |d: Duration| d.as_secs().max(1).to_string();
    [
        secs(config.allowed_lateness + config.allowed_skew + Duration::from_secs(60)),
        secs(config.hourly_retention),
        secs(config.daily_retention),
    ]
}

/// The 9 per-event arguments of the record and settle scripts.
fn event_args(id: &str, model: &str, at_ms: i64, price: &(String, String)) -> [String; 9] {
    [
        id.to_owned(),
        model.to_owned(),
        at_ms.to_string(),
        INPUT.to_string(),
        OUTPUT.to_string(),
        CACHE_READ.to_string(),
        "0".to_owned(),
        price.0.clone(),
        price.1.clone(),
    ]
}

/// An event id of redis-benchmark: as long as the service's (53 characters),
/// unique per run thanks to the nonce.
const RAND_ID: &str = "e:NONCE12:__rand_int__:__rand_int__:__rand_int__";
const RAND_TENANT: &str = "{t:__rand_int__}";

// ----------------------------------------------------------------- memory --

/// Key kinds of the meter's keyspace, by the part after the tenant's tag.
fn kind(key: &str) -> &'static str {
    if key.starts_with("{a:") {
        return "active-tenant index (shared)";
    }
    let Some((_, rest)) = key.split_once("}:") else {
        return "other";
    };
    let mut parts = rest.split(':');
    match (parts.next(), parts.next(), parts.next()) {
        (Some("e"), _, _) => "dedupe marks       :e:<id>",
        (Some("w"), _, None) => "windows, tenant    :w:<win>",
        (Some("w"), _, Some(_)) => "windows, per model :w:<win>:<model>",
        (Some("h"), _, _) => "hourly rollups     :h:<hour>",
        (Some("d"), _, _) => "daily rollups      :d:<day>",
        (Some("mo"), _, _) => "monthly rollups    :mo:<month>",
        (Some("meta"), _, _) => "meta               :meta",
        (Some("res" | "rx" | "inf"), _, _) => "reservations       :res :rx :inf",
        (Some("policy"), _, _) => "policy             :policy",
        _ => "other",
    }
}

#[derive(Debug, Default, Clone)]
struct KindTotal {
    keys: u64,
    bytes: u64,
    encodings: BTreeMap<String, u64>,
}

/// `MEMORY USAGE key SAMPLES 0` of every key matching `pattern`, by kind.
async fn breakdown(
    conn: &mut MultiplexedConnection,
    pattern: &str,
) -> anyhow::Result<BTreeMap<&'static str, KindTotal>> {
    let mut keys: Vec<String> = Vec::new();
    let mut cursor = 0u64;
    loop {
        let (next, batch): (u64, Vec<String>) = redis::cmd("SCAN")
            .arg(cursor)
            .arg("MATCH")
            .arg(pattern)
            .arg("COUNT")
            .arg(1_000)
            .query_async(conn)
            .await?;
        keys.extend(batch);
        cursor = next;
        if cursor == 0 {
            break;
        }
    }
    let mut totals: BTreeMap<&'static str, KindTotal> = BTreeMap::new();
    for chunk in keys.chunks(1_000) {
        let mut pipe = redis::pipe();
        for key in chunk {
            pipe.cmd("MEMORY")
                .arg("USAGE")
                .arg(key)
                .arg("SAMPLES")
                .arg(0)
                .cmd("OBJECT")
                .arg("ENCODING")
                .arg(key);
        }
        let replies: Vec<(Option<u64>, Option<String>)> = {
            let flat: Vec<redis::Value> = pipe.query_async(conn).await?;
            flat.chunks(2)
                .map(|pair| {
                    (
                        pair.first()
                            .and_then(|v| redis::from_redis_value_ref(v).ok()),
                        pair.get(1)
                            .and_then(|v| redis::from_redis_value_ref(v).ok()),
                    )
                })
                .collect()
        };
        for (key, (bytes, encoding)) in chunk.iter().zip(replies) {
            // A key may have expired between SCAN and MEMORY USAGE.
            let Some(bytes) = bytes else { continue };
            let total = totals.entry(kind(key)).or_default();
            total.keys += 1;
            total.bytes += bytes;
            *total
                .encodings
                .entry(encoding.unwrap_or_default())
                .or_default() += 1;
        }
    }
    Ok(totals)
}

fn print_breakdown(totals: &BTreeMap<&'static str, KindTotal>, tenants: usize) {
    println!(
        "    {:<38} {:>11} {:>13} {:>10}  encoding",
        "key kind", "keys/tenant", "bytes/tenant", "bytes/key"
    );
    let mut sum = 0u64;
    for (name, total) in totals {
        sum += total.bytes;
        let encodings: Vec<String> = total
            .encodings
            .iter()
            .map(|(e, n)| format!("{e} x{n}"))
            .collect();
        println!(
            "    {:<38} {:>11.1} {:>13} {:>10}  {}",
            name,
            total.keys as f64 / tenants as f64,
            thousands(total.bytes as f64 / tenants as f64),
            thousands(total.bytes as f64 / total.keys.max(1) as f64),
            encodings.join(", ")
        );
    }
    println!(
        "    {:<38} {:>11} {:>13}",
        "sum of MEMORY USAGE",
        "",
        thousands(sum as f64 / tenants as f64)
    );
}

/// A UUID-shaped event id (36 characters), as a gateway would send.
fn uuid_id(n: u64) -> String {
    let hash = n.wrapping_mul(0x9e37_79b9_7f4a_7c15) ^ (n >> 7);
    format!(
        "{:08x}-{:04x}-4{:03x}-8{:03x}-{:012x}",
        (hash >> 32) as u32,
        (hash >> 16) & 0xffff,
        hash & 0xfff,
        (n >> 12) & 0xfff,
        n & 0xffff_ffff_ffff
    )
}

#[derive(Debug)]
struct MemoryReport {
    tenants: usize,
    events_per_tenant: usize,
    per_tenant_used: f64,
    mark_bytes: f64,
    busy_tenants: usize,
    busy_used: f64,
    busy_events: usize,
}

/// Phase 3, on a fresh stack: a realistic hour for `memory_tenants` tenants
/// through gRPC, then fully populated tenants through the record script.
async fn memory(options: &Options) -> anyhow::Result<MemoryReport> {
    let stack = Stack::start(options.aof).await?;
    let mut conn = stack.redis().await?;
    let before = used_memory(&mut conn).await?;

    // A realistic active tenant: a call every 3 s over the last minute and
    // one every 2 minutes over the rest of the last hour, alternating two
    // models, and one reservation in flight.
    let now = now_ms();
    let mut offsets: Vec<i64> = (0..20).map(|k| k * 3_000).collect();
    offsets.extend((0..29).map(|j| 60_000 + j * 120_000));
    offsets.sort_unstable_by(|a, b| b.cmp(a)); // oldest first
    let tenants: Vec<String> = (0..options.memory_tenants)
        .map(|i| format!("tenant-{i:06}"))
        .collect();
    let mut events = Vec::with_capacity(offsets.len() * tenants.len());
    let mut n = 0u64;
    for (k, offset) in offsets.iter().enumerate() {
        for (i, tenant) in tenants.iter().enumerate() {
            n += 1;
            let model = if (k + i) % 2 == 0 { SONNET } else { HAIKU };
            events.push(event(
                uuid_id(n),
                tenant.clone(),
                model,
                now - offset - (i as i64 % 1_000),
            ));
        }
    }
    let client = stack.meter().await?;
    let batches: Vec<Vec<pb::UsageEvent>> = events
        .chunks(options.batch)
        .map(<[pb::UsageEvent]>::to_vec)
        .collect();
    let mut replies = futures::stream::iter(batches)
        .map(|events| {
            let mut client = client.clone();
            async move { client.record_usage(pb::RecordUsageRequest { events }).await }
        })
        .buffer_unordered(options.record_callers.max(1));
    let mut accepted = 0i64;
    while let Some(reply) = replies.next().await {
        accepted += i64::from(reply?.into_inner().accepted);
    }
    anyhow::ensure!(
        accepted as usize == events.len(),
        "only {accepted} of {} memory-phase events were accepted",
        events.len()
    );
    let reservations = futures::stream::iter(tenants.clone())
        .map(|tenant| {
            let mut client = client.clone();
            async move {
                client
                    .reserve(pb::ReserveRequest {
                        tenant_id: tenant,
                        model_id: SONNET.into(),
                        estimated_input_tokens: 1_000,
                        max_output_tokens: 1_000,
                        ..Default::default()
                    })
                    .await
            }
        })
        .buffer_unordered(options.record_callers.max(1))
        .collect::<Vec<_>>()
        .await;
    for reply in reservations {
        anyhow::ensure!(
            matches!(
                reply?.into_inner().outcome,
                Some(pb::reserve_response::Outcome::Admission(_))
            ),
            "a memory-phase reservation was denied"
        );
    }
    let after = used_memory(&mut conn).await?;
    let per_tenant_used = (after - before) as f64 / tenants.len() as f64;
    println!();
    println!(
        "3a. Realistic active tenant: {} tenants, each {} events over the last hour (every 3 s in the last",
        tenants.len(),
        offsets.len()
    );
    println!(
        "    minute, every 2 min before), 2 models, 1 reservation in flight; through gRPC RecordUsage/Reserve"
    );
    let totals = breakdown(&mut conn, "*").await?;
    print_breakdown(&totals, tenants.len());
    println!(
        "    {:<38} {:>11} {:>13}",
        "INFO used_memory delta / tenant",
        "",
        thousands(per_tenant_used)
    );
    let marks = totals
        .iter()
        .find(|(k, _)| k.starts_with("dedupe"))
        .map_or(0.0, |(_, t)| t.bytes as f64 / t.keys.max(1) as f64);

    // Busy tenants: every bucket of every window of the tenant and of two
    // models populated, hourly rollups for the full 14 days, daily for 400
    // days, monthly for the months those cover, 10 reservations in flight.
    // Written with the record and reserve scripts directly (RecordUsage
    // refuses events older than the allowed lateness).
    let before_busy = used_memory(&mut conn).await?;
    let price = priced(&stack, "price-sample").await?;
    let mut times: Vec<i64> = Vec::new();
    for (count, step) in [
        (400i64, 86_400_000i64),
        (14 * 24, 3_600_000),
        (120, 1_440_000),
        (120, 60_000),
        (120, 5_000),
        (120, 1_000),
    ] {
        times.extend((0..count).map(|k| now - k * step));
    }
    times.sort_unstable();
    times.dedup();
    let record = scripts::script(scripts::RECORD_V2);
    let reserve = scripts::script(scripts::RESERVE_V1);
    let retention = retention_args();
    let mut busy_events = 0;
    for b in 0..options.busy_tenants {
        let tenant = format!("busy-{b:06}");
        let all: Vec<[String; 9]> = times
            .iter()
            .flat_map(|&t| [SONNET, HAIKU].map(|m| (t, m)))
            .enumerate()
            .map(|(i, (t, m))| {
                event_args(
                    &uuid_id(1 << 40 | (b as u64) << 20 | i as u64),
                    m,
                    t,
                    &price,
                )
            })
            .collect();
        busy_events = all.len();
        for chunk in all.chunks(100) {
            let mut invocation = record.prepare_invoke();
            invocation.key(format!("{{t:{tenant}}}")).arg(now);
            for arg in &retention {
                invocation.arg(arg);
            }
            for args in chunk {
                for arg in args {
                    invocation.arg(arg);
                }
            }
            let _: Vec<i64> = invocation.invoke_async(&mut conn).await?;
        }
        for r in 0..10 {
            let _: redis::Value = reserve
                .key(format!("{{t:{tenant}}}"))
                .arg("")
                .arg(format!("r-{b:016x}{r:016x}"))
                .arg(SONNET)
                .arg(2_000)
                .arg(300_000)
                .arg(0)
                .arg(0)
                .arg("0")
                .arg(0)
                .invoke_async(&mut conn)
                .await?;
        }
    }
    println!();
    println!(
        "3b. Busy tenant: every bucket of every window populated (tenant + 2 models), rollups for the full"
    );
    println!(
        "    retention (14 d hourly, 400 d daily, monthly), 10 reservations in flight; {} tenants, dedupe",
        options.busy_tenants
    );
    println!("    marks left out (they depend on the event rate, see 3a's bytes/key)");
    // Drop the marks the injection left: they are a function of the rate.
    let mut marks_left = Vec::new();
    let mut cursor = 0u64;
    loop {
        let (next, batch): (u64, Vec<String>) = redis::cmd("SCAN")
            .arg(cursor)
            .arg("MATCH")
            .arg("{t:busy-*}:e:*")
            .arg("COUNT")
            .arg(1_000)
            .query_async(&mut conn)
            .await?;
        marks_left.extend(batch);
        cursor = next;
        if cursor == 0 {
            break;
        }
    }
    for chunk in marks_left.chunks(1_000) {
        redis::cmd("DEL")
            .arg(chunk)
            .query_async::<i64>(&mut conn)
            .await?;
    }
    let after_busy = used_memory(&mut conn).await?;
    let busy = options.busy_tenants.max(1);
    let busy_used = (after_busy - before_busy) as f64 / busy as f64;
    if options.busy_tenants > 0 {
        let totals = breakdown(&mut conn, "{t:busy-*}:*").await?;
        print_breakdown(&totals, busy);
        println!(
            "    {:<38} {:>11} {:>13}",
            "INFO used_memory delta / tenant",
            "",
            thousands(busy_used)
        );
    }
    drop(replies);
    drop(client);
    stack.stop().await?;
    Ok(MemoryReport {
        tenants: tenants.len(),
        events_per_tenant: offsets.len(),
        per_tenant_used,
        mark_bytes: marks,
        busy_tenants: options.busy_tenants,
        busy_used,
        busy_events,
    })
}

// ------------------------------------------------------------------- main --

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let options = options()?;
    let tick_hz = tick_hz();
    let started = Instant::now();
    let version = std::process::Command::new("redis-server")
        .arg("--version")
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned())
        .unwrap_or_default();
    println!(
        "tenantmeter meter benchmark: {} s per measurement, {} tenants, {} CPUs, {} build",
        options.seconds,
        options.tenants,
        std::thread::available_parallelism().map_or(0, std::num::NonZero::get),
        if cfg!(debug_assertions) {
            "DEBUG (numbers meaningless: use --release)"
        } else {
            "release"
        }
    );
    println!(
        "{version}; AOF {}",
        if options.aof { "everysec" } else { "off" }
    );

    let idle = Cpu::sample(None);
    let idle_started = Instant::now();
    tokio::time::sleep(Duration::from_secs(2)).await;
    let baseline = Cpu::sample(None)
        .since(&idle, tick_hz)
        .per(idle_started.elapsed().as_secs_f64());
    println!(
        "machine before starting anything: {:.2} cores busy (irq {:.2}, steal {:.2})",
        baseline.machine, baseline.interrupts, baseline.steal
    );

    let stack = Box::pin(Stack::start(options.aof)).await?;
    let tenants: Vec<String> = (0..options.tenants).map(tenant_name).collect();
    let mut assign: Vec<String> = tenants.clone();
    assign.push("price-sample".into());
    stack.unlimited(&assign).await?;
    let price = priced(&stack, "price-sample").await?;
    let mut conn = stack.redis().await?;
    let record_sha = load(&mut conn, scripts::RECORD_V2).await?;
    let reserve_sha = load(&mut conn, scripts::RESERVE_V1).await?;
    let settle_sha = load(&mut conn, scripts::SETTLE_V2).await?;
    let retention = retention_args();

    // Throughput. The host's speed drifts by tens of percent from one second
    // to the next (shared CPUs), so each measurement alternates the service
    // and redis-benchmark in `rounds` slices and sums them.
    let slice = Duration::from_secs_f64(options.seconds as f64 / options.rounds as f64);
    let range = |ratios: &[f64]| {
        let min = ratios.iter().copied().fold(f64::INFINITY, f64::min);
        let max = ratios.iter().copied().fold(0.0, f64::max);
        format!("rounds {min:.2}-{max:.2}")
    };
    let verdict = |ratio: f64, target: f64| if ratio >= target { "met" } else { "MISSED" };
    println!();
    println!("== Throughput: the service over gRPC vs redis-benchmark running the same script ==");
    println!(
        "   {} rounds of {:.1} s per side, alternating; {} redis-benchmark connections",
        options.rounds,
        slice.as_secs_f64(),
        options.rb_clients
    );

    // 1. RecordUsage.
    for (shape, &per_tenant) in options.per_tenant.iter().enumerate() {
        let mut command = vec![
            "EVALSHA".to_owned(),
            record_sha.clone(),
            "1".to_owned(),
            RAND_TENANT.to_owned(),
            now_ms().to_string(),
        ];
        command.extend(retention.iter().cloned());
        let at = now_ms();
        for _ in 0..per_tenant {
            command.extend(event_args(RAND_ID, SONNET, at, &price));
        }
        let counted_before = counted(&mut conn, &tenants).await?;
        let redis_side = RedisSide::new(&stack.meter_redis, &options, command).await?;
        let mut service = Measured::default();
        let mut ceiling = Ceiling {
            sent_calls: redis_side.calibration_calls,
            ..Ceiling::default()
        };
        let mut ratios = Vec::new();
        for round in 0..options.rounds {
            let run = shape * 100 + round;
            let s = grpc_record(&stack, &options, slice, run, per_tenant, tick_hz).await?;
            let c = redis_side.slice(slice.as_secs_f64(), tick_hz).await?;
            ratios.push(s.rate() / (c.rate() * per_tenant as f64));
            service.merge(s);
            ceiling.merge(c);
        }
        let new_events =
            counted(&mut conn, &tenants).await? - counted_before - service.count as i64;
        let ceiling_events = ceiling.rate() * per_tenant as f64;
        let ratio = service.rate() / ceiling_events;
        let (p50, p99) = (service.percentile(50), service.percentile(99));
        println!();
        println!(
            "1. RecordUsage, batches of {} events = {} tenants x {per_tenant} event(s), {} callers",
            options.batch,
            options.batch / per_tenant,
            options.record_callers
        );
        println!(
            "   service        {:>8} events/s   batch p50 {p50:>8.1?} p99 {p99:>8.1?}   failed events {}",
            thousands(service.rate()),
            service.failed()
        );
        println!("                  {}", cores(service.cores()));
        println!("                  {}", service.redis_line());
        println!(
            "   redis ceiling  {:>8} events/s   = {} EVALSHA/s x {per_tenant} at {:.0} us/call; commands {:.2} of {:.2} redis cores",
            thousands(ceiling_events),
            thousands(ceiling.rate()),
            ceiling.usec_per_call(),
            ceiling.usec / 1e6 / ceiling.wall.max(f64::EPSILON),
            ceiling.cores().redis
        );
        println!("                  {}", cores(ceiling.cores()));
        println!(
            "                  redis-benchmark's events counted as new: {} of {} sent",
            thousands(new_events as f64),
            thousands((ceiling.sent_calls * per_tenant as u64) as f64)
        );
        println!(
            "   ratio          {ratio:>8.2}x ({})   target >= 0.30x: {}",
            range(&ratios),
            verdict(ratio, 0.3)
        );
    }

    // 2. Reserve + Settle.
    // As long as the service's reservation ids (34 characters).
    let reservation = "r-NONCE8__rand_int____rand_int__";
    let reserve_command: Vec<String> = [
        "EVALSHA",
        &reserve_sha,
        "1",
        RAND_TENANT,
        "",
        reservation,
        SONNET,
        &(INPUT + CACHE_READ + MAX_OUTPUT).to_string(),
        &MeterConfig::default().default_lease.as_millis().to_string(),
        &BENCH_RPM.to_string(),
        &BENCH_TPM.to_string(),
        "0",
        "0",
    ]
    .map(str::to_owned)
    .to_vec();
    let mut settle_command: Vec<String> = vec![
        "EVALSHA".into(),
        settle_sha.clone(),
        "1".into(),
        RAND_TENANT.into(),
        String::new(),
        reservation.into(),
    ];
    settle_command.extend(retention.iter().cloned());
    settle_command.extend(event_args(RAND_ID, SONNET, now_ms(), &price));
    let reserve_side = RedisSide::new(&stack.meter_redis, &options, reserve_command).await?;
    let settle_side = RedisSide::new(&stack.meter_redis, &options, settle_command).await?;
    let mut rs = Measured::default();
    let (mut reserve_ceiling, mut settle_ceiling) = (Ceiling::default(), Ceiling::default());
    let mut ratios = Vec::new();
    let combined_of = |r: &Ceiling, s: &Ceiling| 1.0 / (1.0 / r.rate() + 1.0 / s.rate());
    for round in 0..options.rounds {
        let m = grpc_reserve_settle(&stack, &options, slice, 900 + round, tick_hz).await?;
        let r = reserve_side.slice(slice.as_secs_f64(), tick_hz).await?;
        let s = settle_side.slice(slice.as_secs_f64(), tick_hz).await?;
        ratios.push(m.rate() / combined_of(&r, &s));
        rs.merge(m);
        reserve_ceiling.merge(r);
        settle_ceiling.merge(s);
    }
    let combined = combined_of(&reserve_ceiling, &settle_ceiling);
    let ratio = rs.rate() / combined;
    let (p50, p99) = (rs.percentile(50), rs.percentile(99));
    println!();
    println!(
        "2. Reserve+Settle, {} callers, {} tenants",
        options.reserve_callers, options.tenants
    );
    println!(
        "   service        {:>8} res/s      pair p50 {p50:>8.1?} p99 {p99:>8.1?}   failed {}",
        thousands(rs.rate()),
        rs.failed()
    );
    println!("                  {}", cores(rs.cores()));
    println!("                  {} (reserve and settle)", rs.redis_line());
    println!(
        "   redis ceiling  {:>8} res/s      = 1/(1/reserve + 1/settle)",
        thousands(combined)
    );
    println!(
        "                  reserve {:>6}/s at {:.0} us/call; commands {:.2} of {:.2} redis cores",
        thousands(reserve_ceiling.rate()),
        reserve_ceiling.usec_per_call(),
        reserve_ceiling.usec / 1e6 / reserve_ceiling.wall.max(f64::EPSILON),
        reserve_ceiling.cores().redis
    );
    println!(
        "                                   {}",
        cores(reserve_ceiling.cores())
    );
    println!(
        "                  settle  {:>6}/s at {:.0} us/call; commands {:.2} of {:.2} redis cores",
        thousands(settle_ceiling.rate()),
        settle_ceiling.usec_per_call(),
        settle_ceiling.usec / 1e6 / settle_ceiling.wall.max(f64::EPSILON),
        settle_ceiling.cores().redis
    );
    println!(
        "                                   {}",
        cores(settle_ceiling.cores())
    );
    println!(
        "   ratio          {ratio:>8.2}x ({})   target >= 0.40x: {}",
        range(&ratios),
        verdict(ratio, 0.4)
    );
    drop(conn);
    stack.stop().await?;

    // 3. Memory, on a fresh stack.
    println!();
    println!("== Redis memory per tenant, on a fresh redis-server and meter ==");
    let memory = Box::pin(memory(&options)).await?;

    println!();
    println!("== Memory summary ==");
    println!(
        "   realistic active tenant ({} events in the last hour): {} bytes (used_memory delta / {} tenants)",
        memory.events_per_tenant,
        thousands(memory.per_tenant_used),
        memory.tenants
    );
    println!(
        "   busy tenant, without dedupe marks:               {} bytes (used_memory delta / {} tenants, {} events injected)",
        thousands(memory.busy_used),
        memory.busy_tenants,
        memory.busy_events
    );
    println!(
        "   dedupe mark: {} bytes each, kept {} s: a tenant at 1 event/s holds {} marks = {} bytes",
        thousands(memory.mark_bytes),
        retention[0],
        retention[0],
        thousands(memory.mark_bytes * retention[0].parse::<f64>().unwrap_or(0.0))
    );
    println!();
    println!("total run time {:.0?}", started.elapsed());
    Ok(())
}
