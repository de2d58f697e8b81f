//! `tenantmeter backtest`: recorded usage replayed through the real meter and
//! alerting on simulated time (docs/backtest.md).
//!
//! Everything runs in this process, as `up` runs it, but private and on
//! simulated time: a redis-server without persistence in a temporary
//! directory, pricing (shipped rate cards or `--plans`), the meter and
//! alerting on one [`ManualClock`], each on a `127.0.0.1:0` listener and
//! called through its real gRPC API. Alerting's scheduled passes are off
//! (`interval = 0s`): the replay drives every pass with
//! `AlertingAdminService/Evaluate`, one per step, so the outcome does not
//! depend on how fast the machine is.
//!
//! Start at [`prepare`] (everything that can be checked before starting) and
//! [`run`] (the replay loop).

mod input;
mod report;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use anyhow::Context as _;
use serde::{Deserialize, Serialize};
use tenantmeter_domain::levels::LevelPolicy;
use tenantmeter_proto::v1 as pb;
use tenantmeter_proto::v1::alerting_admin_service_client::AlertingAdminServiceClient;
use tenantmeter_proto::v1::alerting_service_client::AlertingServiceClient;
use tenantmeter_proto::v1::meter_service_client::MeterServiceClient;
use tenantmeter_runtime::client::{self, ClientOptions, TracedChannel};
use tenantmeter_runtime::clock::{Clock, ManualClock};
use tenantmeter_runtime::config::{
    ConfigError, ConfigLoader, EXIT_CONFIG, TelemetryConfig, Validate,
};
use tenantmeter_runtime::shutdown::{Shutdown, install_signal_handlers};
use tonic::metadata::MetadataValue;

use crate::cli::{BacktestArgs, ReportFormat};
use crate::commands::{self, Running};
use crate::config::Config;
use crate::redis_child::{Persistence, RedisChild};

use self::input::{Input, InputError, Record, RecordKind};
use self::report::{Report, Subject, Tracker};

/// Exit code of a usage file that cannot be replayed (`EX_DATAERR`).
pub(crate) const EXIT_DATA: u8 = 65;
/// Exit code of a usage file that cannot be read (`EX_NOINPUT`).
const EXIT_NO_INPUT: u8 = 66;

/// Shortest and longest step: the level engine's shortest durations are
/// minutes (runaway 2 min), and the rate window is 5 min.
const STEP_RANGE: (Duration, Duration) = (Duration::from_secs(1), Duration::from_secs(3_600));

/// Most events per RecordUsage call (the meter's limit).
const BATCH: usize = 1_000;

/// Progress goes to stderr once the replay has run this long, then this often.
const PROGRESS_AFTER: Duration = Duration::from_secs(5);
const PROGRESS_EVERY: Duration = Duration::from_secs(5);

/// Why the backtest did not start; each maps to an exit code.
#[derive(Debug, thiserror::Error)]
pub(crate) enum PrepareError {
    /// A flag or the policy or plans file is wrong (64, like a config value).
    #[error("{0}")]
    Usage(String),
    /// The usage file is malformed (65) or unreadable (66).
    #[error(transparent)]
    Input(#[from] InputError),
}

impl PrepareError {
    /// The process exit code.
    pub(crate) fn exit_code(&self) -> u8 {
        match self {
            Self::Usage(_) => u8::try_from(EXIT_CONFIG).unwrap_or(1),
            Self::Input(InputError::Unreadable { .. }) => EXIT_NO_INPUT,
            Self::Input(InputError::Line { .. } | InputError::Empty { .. }) => EXIT_DATA,
        }
    }
}

/// A line the services refused during the replay (exit 65): the message names
/// the file, the line and, when the service did, the field.
#[derive(Debug, Clone, thiserror::Error)]
#[error("{file}:{line}: {reason}")]
pub(crate) struct DataError {
    file: String,
    line: usize,
    reason: String,
}

/// Everything checked before the services start.
#[derive(Debug)]
pub(crate) struct Prepared {
    /// The usage file as given, for the report.
    usage: PathBuf,
    /// The records, sorted.
    input: Input,
    /// `--policy`, when given.
    policy_file: Option<PathBuf>,
    /// The level rules.
    policy: LevelPolicy,
    /// Simulated time between two evaluations.
    step: Duration,
    /// How the report is printed.
    format: ReportFormat,
}

/// The policy file's document: a [`LevelPolicy`] at the top level, loaded
/// through the same layered loader as the config, so an error names the key.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(transparent)]
struct PolicyFile(LevelPolicy);

impl Validate for PolicyFile {
    fn validate(&self) -> Result<(), ConfigError> {
        self.0
            .validate()
            .map_err(|error| ConfigError::new(error.key, error.reason))
    }
}

/// Checks the flags, the policy, the rate cards and the whole usage file.
pub(crate) fn prepare(args: &BacktestArgs, config: &Config) -> Result<Prepared, PrepareError> {
    let (shortest, longest) = STEP_RANGE;
    if args.step < shortest || args.step > longest || args.step.subsec_nanos() != 0 {
        return Err(PrepareError::Usage(format!(
            "--step {}: must be whole seconds from 1s to 1h",
            humantime::format_duration(args.step)
        )));
    }
    let policy = match &args.policy {
        Some(path) => {
            let loaded: PolicyFile =
                ConfigLoader::new()
                    .file(Some(path))
                    .load()
                    .map_err(|error| {
                        PrepareError::Usage(format!(
                            "--policy {}: {}: {}",
                            path.display(),
                            error.key,
                            error.reason
                        ))
                    })?;
            loaded.0
        }
        None => config.alerting.levels.clone(),
    };
    // The rate cards are parsed by pricing at start; parse them now too, so a
    // bad `--plans` fails before anything starts, naming the entry and field.
    tenantmeter_pricing::load_seed(&config.pricing)
        .map_err(|error| PrepareError::Usage(format!("pricing seed: {error}")))?;
    let input = input::read(&args.usage)?;
    Ok(Prepared {
        usage: args.usage.clone(),
        input,
        policy_file: args.policy.clone(),
        policy,
        step: args.step,
        format: args.format,
    })
}

/// The services' info logs would drown the report: while the log filter is the
/// default (`info`: not changed by the file, the environment or `--log-filter`),
/// a backtest logs warnings only.
pub(crate) fn quiet_logs(telemetry: &mut TelemetryConfig) {
    if telemetry.log_filter == TelemetryConfig::default().log_filter {
        "warn".clone_into(&mut telemetry.log_filter);
    }
}

/// Runs the replay and prints the report on stdout.
pub(crate) async fn run(prepared: Prepared, config: Config) -> anyhow::Result<()> {
    let shutdown = install_signal_handlers()?;
    let dir = tempfile::Builder::new()
        .prefix("tenantmeter-backtest-")
        .tempdir()
        .context("creating a temporary directory for the backtest's redis-server")?;
    let redis = RedisChild::start(&dir.path().join("redis"), Persistence::None).await?;
    let outcome = replay(&prepared, config, redis.url(), &shutdown).await;
    shutdown.trigger();
    shutdown.wait_for_tasks(Duration::from_secs(5)).await;
    redis.stop().await;
    if let Err(error) = dir.close() {
        tracing::warn!(%error, "could not remove the backtest's temporary directory");
    }
    let report = outcome?;
    print_report(&report, prepared.format)
}

#[allow(clippy::print_stdout)] // the report is the command's output
fn print_report(report: &Report, format: ReportFormat) -> anyhow::Result<()> {
    match format {
        ReportFormat::Text => print!("{}", report.text()),
        ReportFormat::Json => println!("{}", serde_json::to_string_pretty(&report.json())?),
    }
    Ok(())
}

/// The services of one replay and the clients that drive them.
struct Stack {
    services: Vec<Running>,
    meter: MeterServiceClient<TracedChannel>,
    admin: AlertingAdminServiceClient<TracedChannel>,
    alerting: AlertingServiceClient<TracedChannel>,
    /// `authorization: Bearer <token>` of the admin calls.
    bearer: MetadataValue<tonic::metadata::Ascii>,
}

impl Stack {
    /// Starts pricing, the meter and alerting (in that order, each SERVING
    /// before the next) on `clock`, on loopback ports chosen by the OS.
    async fn start(
        mut config: Config,
        prepared: &Prepared,
        redis_url: String,
        clock: &ManualClock,
        shutdown: &Shutdown,
    ) -> anyhow::Result<Self> {
        let token = random_token()?;
        config.admin_token = Some(token.clone());
        let any = SocketAddr::from(([127, 0, 0, 1], 0));
        config.pricing.listen = any;
        config.pricing.tls = None;
        config.meter.listen = any;
        config.meter.tls = None;
        config.meter.redis_cluster = false;
        // Each step's events are sent in batches stamped with the batch's
        // latest event time, so the earliest is up to one step late.
        config.meter.allowed_lateness = config
            .meter
            .allowed_lateness
            .max(prepared.step + Duration::from_secs(60));
        // Rollup TTLs run from the meter's clock (the replay's), so last
        // month's replay keeps its rollups as a live meter keeps today's.
        config.alerting.listen = any;
        config.alerting.tls = None;
        config.alerting.redis_cluster = false;
        // No scheduled passes: Evaluate drives every one.
        config.alerting.interval = Duration::ZERO;
        // One replica holds every shard: fewer meter calls per pass, same levels.
        config.alerting.shards = 1;
        config.alerting.levels = prepared.policy.clone();
        config
            .alerting
            .validate()
            .map_err(|e| anyhow::anyhow!("{}", e.within("alerting")))?;

        let clock: Arc<dyn Clock> = Arc::new(clock.clone());
        let mut services = Vec::new();
        let mut pricing = commands::start_pricing(&config, redis_url.clone(), shutdown).await?;
        commands::until_serving(&mut pricing).await?;
        let pricing_url = format!("http://{}", pricing.addr);
        services.push(pricing);
        config.meter.pricing_url.clone_from(&pricing_url);
        let mut meter =
            commands::start_meter(&config, redis_url.clone(), Arc::clone(&clock), shutdown).await?;
        commands::until_serving(&mut meter).await?;
        let meter_url = format!("http://{}", meter.addr);
        services.push(meter);
        config.alerting.meter_url.clone_from(&meter_url);
        config.alerting.pricing_url = pricing_url;
        let mut alerting = commands::start_alerting(&config, redis_url, clock, shutdown).await?;
        commands::until_serving(&mut alerting).await?;
        let alerting_url = format!("http://{}", alerting.addr);
        services.push(alerting);

        let options = ClientOptions::default();
        let meter = MeterServiceClient::new(client::connect(&meter_url, &options).await?);
        let channel = client::connect(&alerting_url, &options).await?;
        let bearer = format!("Bearer {token}")
            .parse()
            .context("the admin token is not valid header text")?;
        Ok(Self {
            services,
            meter,
            admin: AlertingAdminServiceClient::new(channel.clone()),
            alerting: AlertingServiceClient::new(channel),
            bearer,
        })
    }

    fn admin_request<T>(&self, message: T) -> tonic::Request<T> {
        let mut request = tonic::Request::new(message);
        request
            .metadata_mut()
            .insert("authorization", self.bearer.clone());
        request
    }

    /// The error of a call, with the service's own error when it stopped.
    async fn failed(&mut self, call: &str, status: tonic::Status) -> anyhow::Error {
        for service in &mut self.services {
            if service.is_finished()
                && let Err(error) = service.finished().await
            {
                return error.context(format!("{call} failed"));
            }
        }
        anyhow::anyhow!("{call} failed: {}: {}", status.code(), status.message())
    }
}

fn random_token() -> anyhow::Result<String> {
    let mut bytes = [0u8; 24];
    getrandom::fill(&mut bytes)
        .map_err(|e| anyhow::anyhow!("no randomness for the admin token: {e}"))?;
    Ok(bytes.iter().map(|b| format!("{b:02x}")).collect())
}

/// The replay itself: steps of simulated time, each closed by an evaluation.
async fn replay(
    prepared: &Prepared,
    config: Config,
    redis_url: String,
    shutdown: &Shutdown,
) -> anyhow::Result<Report> {
    let file = prepared.usage.display().to_string();
    let records = &prepared.input.records;
    let (Some(first), Some(last)) = (prepared.input.first_time(), prepared.input.last_time())
    else {
        anyhow::bail!("{file}: no usage event to replay");
    };
    let step = prepared.step;
    let start = input::floor_to(first, step);
    let last_step = input::floor_to(last, step);
    let clock = ManualClock::new(start);
    let mut stack = Stack::start(config, prepared, redis_url, &clock, shutdown).await?;

    let steps = steps_between(start, last_step, step) + 1;
    let mut tracker = Tracker::default();
    let mut report = Report {
        input: file.clone(),
        policy: prepared
            .policy_file
            .as_ref()
            .map(|p| p.display().to_string()),
        start,
        end: start,
        step,
        evaluations: 0,
        accepted: 0,
        duplicates: 0,
        budgets: 0,
        out_of_order: prepared.input.out_of_order,
        timelines: std::collections::BTreeMap::new(),
    };
    let started = tokio::time::Instant::now();
    let mut next_progress = started + PROGRESS_AFTER;
    let mut next = 0;
    let mut step_start = start;
    let mut batch: Vec<&Record> = Vec::with_capacity(BATCH);
    while report.evaluations < steps {
        anyhow::ensure!(!shutdown.is_triggered(), "interrupted");
        let step_end = step_start + step;
        while let Some(record) = records.get(next).filter(|r| r.time < step_end) {
            next += 1;
            match &record.kind {
                RecordKind::Usage(_) => {
                    batch.push(record);
                    if batch.len() == BATCH {
                        record_batch(&mut stack, &clock, &file, &mut batch, &mut report).await?;
                    }
                }
                RecordKind::Budget(budget) => {
                    record_batch(&mut stack, &clock, &file, &mut batch, &mut report).await?;
                    clock.set(record.time);
                    set_budget(&mut stack, &file, record.line, budget.clone()).await?;
                    report.budgets += 1;
                }
            }
            if let RecordKind::Usage(event) = &record.kind {
                // Active from its first event: evaluated at the end of this step.
                tracker.evaluated(Subject::Tenant(event.tenant_id.clone()), step_end);
            }
        }
        record_batch(&mut stack, &clock, &file, &mut batch, &mut report).await?;

        clock.set(step_end);
        let request = stack.admin_request(pb::EvaluateRequest {
            as_of: Some(prost_types::Timestamp::from(step_end)),
            tenant_ids: Vec::new(),
            commit: true,
        });
        let evaluated = match stack.admin.evaluate(request).await {
            Ok(response) => response.into_inner(),
            Err(status) => return Err(stack.failed("Evaluate", status).await),
        };
        tracker.evaluated(Subject::Fleet, step_end);
        for alert in &evaluated.alerts {
            if !tracker.alert(alert) {
                tracing::warn!(alert_id = %alert.alert_id, "alert without subject or time; left out of the report");
            }
        }
        report.evaluations += 1;
        report.end = step_end;
        step_start = step_end;

        let now = tokio::time::Instant::now();
        if now >= next_progress {
            next_progress = now + PROGRESS_EVERY;
            progress(&report, steps);
        }
    }
    check_final_levels(&mut stack, &tracker).await?;
    report.timelines = tracker.finish(report.end);
    Ok(report)
}

#[allow(clippy::print_stderr)] // progress for people; the report itself is on stdout
fn progress(report: &Report, steps: u64) {
    let percent = report.evaluations.saturating_mul(100) / steps.max(1);
    eprintln!(
        "backtest: {} ({percent}%, {} of {steps} evaluations)",
        report::rfc3339(report.end),
        report.evaluations
    );
}

/// Whole steps from `from` to `to`.
fn steps_between(from: SystemTime, to: SystemTime, step: Duration) -> u64 {
    let span = to.duration_since(from).unwrap_or_default().as_millis();
    u64::try_from(span / step.as_millis().max(1)).unwrap_or(u64::MAX)
}

/// Records the pending events in one call, with the clock at the latest of
/// them (the others are up to one step late, within `allowed_lateness`).
async fn record_batch(
    stack: &mut Stack,
    clock: &ManualClock,
    file: &str,
    batch: &mut Vec<&Record>,
    report: &mut Report,
) -> anyhow::Result<()> {
    let Some(latest) = batch.iter().map(|r| r.time).max() else {
        return Ok(());
    };
    clock.set(latest);
    let events: Vec<pb::UsageEvent> = batch
        .iter()
        .filter_map(|r| match &r.kind {
            RecordKind::Usage(event) => Some(event.as_ref().clone()),
            RecordKind::Budget(_) => None,
        })
        .collect();
    let response = match stack
        .meter
        .record_usage(pb::RecordUsageRequest { events })
        .await
    {
        Ok(response) => response.into_inner(),
        Err(status) => return Err(stack.failed("RecordUsage", status).await),
    };
    for (record, result) in batch.iter().zip(&response.results) {
        match pb::UsageEventStatus::try_from(result.status) {
            Ok(pb::UsageEventStatus::Accepted) => report.accepted += 1,
            Ok(pb::UsageEventStatus::Duplicate) => report.duplicates += 1,
            Ok(pb::UsageEventStatus::Rejected | pb::UsageEventStatus::Unspecified) | Err(_) => {
                let reason = pb::UsageRejectReason::try_from(result.reject_reason)
                    .map_or("rejected", |r| r.as_str_name());
                let field = if result.field.is_empty() {
                    String::new()
                } else {
                    format!("{}: ", result.field)
                };
                return Err(DataError {
                    file: file.to_owned(),
                    line: record.line,
                    reason: format!(
                        "{field}the meter refused the event ({reason}): {}",
                        result.message
                    ),
                }
                .into());
            }
        }
    }
    batch.clear();
    Ok(())
}

/// Applies a budget line; a refusal is the line's fault (exit 65).
async fn set_budget(
    stack: &mut Stack,
    file: &str,
    line: usize,
    budget: pb::Budget,
) -> anyhow::Result<()> {
    let request = stack.admin_request(pb::SetBudgetRequest {
        budget: Some(budget),
    });
    match stack.admin.set_budget(request).await {
        Ok(_) => Ok(()),
        Err(status) if status.code() == tonic::Code::InvalidArgument => Err(DataError {
            file: file.to_owned(),
            line,
            reason: format!("alerting refused the budget: {}", status.message()),
        }
        .into()),
        Err(status) => Err(stack.failed("SetBudget", status).await),
    }
}

/// Compares the levels the timelines end at with the service's own statuses:
/// a difference means the report missed an alert, which is logged.
async fn check_final_levels(stack: &mut Stack, tracker: &Tracker) -> anyhow::Result<()> {
    let fleet = match stack
        .alerting
        .get_fleet_status(pb::GetFleetStatusRequest {})
        .await
    {
        Ok(response) => response.into_inner().status.unwrap_or_default(),
        Err(status) => return Err(stack.failed("GetFleetStatus", status).await),
    };
    let mut held = vec![(Subject::Fleet, fleet.level)];
    let mut page_token = String::new();
    loop {
        let page = match stack
            .alerting
            .list_statuses(pb::ListStatusesRequest {
                min_level: 0,
                page_size: 1_000,
                page_token: page_token.clone(),
            })
            .await
        {
            Ok(response) => response.into_inner(),
            Err(status) => return Err(stack.failed("ListStatuses", status).await),
        };
        held.extend(
            page.statuses
                .into_iter()
                .map(|s| (Subject::Tenant(s.tenant_id), s.level)),
        );
        if page.next_page_token.is_empty() {
            break;
        }
        page_token = page.next_page_token;
    }
    for (subject, level) in held {
        let service = report::Level::from_proto(level);
        let tracked = tracker.level_of(&subject);
        if tracked.is_some_and(|l| l != service) {
            tracing::warn!(
                ?subject,
                ?tracked,
                ?service,
                "the report's final level differs from alerting's status"
            );
        }
    }
    Ok(())
}
