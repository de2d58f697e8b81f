//! Command-line surface. Flags are the top config layer: each one is written
//! as a dotted config key over defaults < file < `TENANTMETER_*` environment.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use clap::{Args, Parser, Subcommand, ValueEnum};
use tenantmeter_runtime::config::{ConfigError, ConfigLoader, EnvMap};

use crate::config::Config;

/// Meters, prices and guards the use of Amazon Bedrock by tenants.
#[derive(Debug, Parser)]
#[command(name = "tenantmeter", version, propagate_version = true)]
pub(crate) struct Cli {
    /// TOML config file (see the README's configuration reference).
    #[arg(long, global = true, value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// Log format on stderr.
    #[arg(long, global = true, value_enum)]
    pub log_format: Option<LogFormatArg>,
    /// Log filter in RUST_LOG syntax, e.g. `info,tenantmeter_pricing=debug`.
    #[arg(long, global = true, value_name = "FILTER")]
    pub log_filter: Option<String>,
    /// What to run.
    #[command(subcommand)]
    pub command: Command,
}

/// `--log-format` values.
#[derive(Debug, Clone, Copy, ValueEnum)]
pub(crate) enum LogFormatArg {
    /// For people.
    Pretty,
    /// One JSON object per line.
    Json,
}

/// Subcommands.
#[derive(Debug, Subcommand)]
pub(crate) enum Command {
    /// The whole stack on this machine: a private redis-server (unless
    /// --redis-url) and every service, each on its own port.
    Up(UpArgs),
    /// The pricing service alone.
    Pricing(ServiceArgs),
    /// The meter alone (it follows the price book of `meter.pricing_url`).
    Meter(ServiceArgs),
    /// The gateway alone (it reserves and settles at `gateway.meter_url`).
    Gateway(ServiceArgs),
    /// Alerting alone (it reads `alerting.meter_url` and `alerting.pricing_url`).
    Alerting(ServiceArgs),
    /// The Bedrock Runtime emulator alone (HTTP, restJson1).
    Emulator(EmulatorArgs),
    /// Replay recorded usage through the real meter and alerting on simulated
    /// time and report each tenant's and the fleet's level timeline
    /// (docs/backtest.md).
    Backtest(BacktestArgs),
    /// Print the effective configuration (every layer applied) as TOML.
    Config,
    /// Budgets of tenants and of the fleet: set, get, list, delete
    /// (alerting's admin API; needs the admin token).
    Budget(BudgetArgs),
    /// Levels: the fleet's status and a table of every tenant's, or one
    /// tenant's status in full.
    Status(StatusArgs),
    /// The alert history, newest first; `alerts ack ID...` acknowledges.
    Alerts(AlertsArgs),
}

/// Flags of `up`.
#[derive(Debug, Args)]
pub(crate) struct UpArgs {
    /// Use this Redis instead of starting a private redis-server.
    #[arg(long, value_name = "URL")]
    pub redis_url: Option<String>,
    /// Where the private redis-server keeps its data and `up` its admin token.
    #[arg(long, value_name = "DIR", default_value = ".tenantmeter")]
    pub data_dir: PathBuf,
    /// Address of the pricing service.
    #[arg(long, value_name = "ADDR")]
    pub pricing_listen: Option<SocketAddr>,
    /// Address of the meter.
    #[arg(long, value_name = "ADDR")]
    pub meter_listen: Option<SocketAddr>,
    /// Address of the Bedrock emulator (HTTP).
    #[arg(long, value_name = "ADDR")]
    pub emulator_listen: Option<SocketAddr>,
    /// Address of the gateway.
    #[arg(long, value_name = "ADDR")]
    pub gateway_listen: Option<SocketAddr>,
    /// Address of alerting.
    #[arg(long, value_name = "ADDR")]
    pub alerting_listen: Option<SocketAddr>,
    /// Where the gateway's Bedrock calls go: the emulator `up` starts, or real
    /// Amazon Bedrock with the standard AWS credential chain and region.
    #[arg(long, value_enum, default_value = "emulator")]
    pub bedrock: BedrockArg,
}

/// `--bedrock` values.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub(crate) enum BedrockArg {
    /// The project's Bedrock emulator, started by `up`.
    Emulator,
    /// Amazon Bedrock itself (needs AWS credentials and network).
    Aws,
}

/// Flags of `emulator`.
#[derive(Debug, Args)]
pub(crate) struct EmulatorArgs {
    /// Address to serve on (overrides `emulator.listen`).
    #[arg(long, value_name = "ADDR")]
    pub listen: Option<SocketAddr>,
}

/// Arguments of `backtest`.
#[derive(Debug, Args)]
pub(crate) struct BacktestArgs {
    /// Recorded usage and budgets, one JSON object per line (docs/backtest.md).
    #[arg(value_name = "USAGE.jsonl")]
    pub usage: PathBuf,
    /// Level rules to replay with (TOML, the keys of docs/levels.md). Default:
    /// `alerting.levels` of the config (the built-in defaults unless set).
    #[arg(long, value_name = "FILE")]
    pub policy: Option<PathBuf>,
    /// Simulated time between two evaluations (1s to 1h).
    #[arg(long, value_name = "DURATION", default_value = "1m", value_parser = humantime::parse_duration)]
    pub step: Duration,
    /// Report format on stdout.
    #[arg(long, value_enum, default_value = "text")]
    pub format: ReportFormat,
    /// Rate cards to price with, instead of the shipped deploy/plans.toml
    /// (sets `pricing.plans_file`).
    #[arg(long, value_name = "FILE")]
    pub plans: Option<PathBuf>,
}

/// `--format` values of `backtest`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub(crate) enum ReportFormat {
    /// Timelines and a summary table, for people.
    Text,
    /// One JSON object with the same data.
    Json,
}

/// Flags shared by the single-service subcommands.
#[derive(Debug, Args)]
pub(crate) struct ServiceArgs {
    /// Address to serve on (overrides `<service>.listen`).
    #[arg(long, value_name = "ADDR")]
    pub listen: Option<SocketAddr>,
    /// Redis URL (overrides `redis.url`).
    #[arg(long, value_name = "URL")]
    pub redis_url: Option<String>,
}

/// Help heading of [`OpsArgs`].
const OPS_HEADING: &str = "Alerting client";

/// Flags shared by the ops commands (`budget`, `status`, `alerts`); they may
/// be given after any of their subcommands.
#[derive(Debug, Args)]
pub(crate) struct OpsArgs {
    /// Alerting's gRPC address, plaintext `http://` (sets `alerting_url`; env
    /// `TENANTMETER_ALERTING_URL`). Default `http://127.0.0.1:50054`.
    #[arg(long, global = true, help_heading = OPS_HEADING, value_name = "URL")]
    pub alerting_url: Option<String>,
    /// Admin token of the admin calls (sets `admin_token`; env
    /// `TENANTMETER_ADMIN_TOKEN`). Default: the one `up` keeps in
    /// `<data-dir>/admin-token`.
    #[arg(long, global = true, help_heading = OPS_HEADING, value_name = "TOKEN")]
    pub admin_token: Option<String>,
    /// The data directory of `tenantmeter up`, where its admin token is read
    /// from when none is configured.
    #[arg(
        long,
        global = true,
        help_heading = OPS_HEADING,
        value_name = "DIR",
        default_value = ".tenantmeter"
    )]
    pub data_dir: PathBuf,
    /// Output: aligned text for people, or JSON (proto3 JSON names).
    #[arg(long, global = true, help_heading = OPS_HEADING, value_enum, default_value = "text")]
    pub format: OutputFormat,
}

/// `--format` values of the ops commands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub(crate) enum OutputFormat {
    /// Aligned text.
    Text,
    /// One JSON document (lowerCamelCase names, 64-bit integers as strings,
    /// enums by their proto names, times in RFC 3339).
    Json,
}

/// `tenantmeter budget`.
#[derive(Debug, Args)]
pub(crate) struct BudgetArgs {
    /// Where alerting is, the token, the output format.
    #[command(flatten)]
    pub ops: OpsArgs,
    /// What to do.
    #[command(subcommand)]
    pub command: BudgetCommand,
}

/// Subcommands of `budget`.
#[derive(Debug, Subcommand)]
pub(crate) enum BudgetCommand {
    /// Set (insert or replace) the budget of a tenant or of the fleet for a
    /// period; prints the budget as stored.
    Set(BudgetSetArgs),
    /// The budgets set for a tenant or for the fleet.
    Get(SubjectArgs),
    /// Every budget set: the fleet's first, then by tenant id.
    List,
    /// Remove the budget of a tenant or of the fleet for a period.
    Delete(BudgetDeleteArgs),
}

/// `--tenant ID` or `--fleet`, exactly one.
#[derive(Debug, Args)]
#[group(required = true, multiple = false)]
pub(crate) struct SubjectArgs {
    /// A tenant.
    #[arg(long, value_name = "ID")]
    pub tenant: Option<String>,
    /// The fleet: all tenants together.
    #[arg(long)]
    pub fleet: bool,
}

/// A calendar period of a budget.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub(crate) enum PeriodArg {
    /// The calendar month.
    Month,
    /// The calendar day.
    Day,
}

/// Which cost a budget counts.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub(crate) enum BasisArg {
    /// What tenants are charged under their plans.
    Charge,
    /// What the provider (AWS) charges, at list price.
    Cost,
}

/// Flags of `budget set`.
#[derive(Debug, Args)]
pub(crate) struct BudgetSetArgs {
    /// Whose budget.
    #[command(flatten)]
    pub subject: SubjectArgs,
    /// The budget's period.
    #[arg(long, value_enum)]
    pub period: PeriodArg,
    /// The amount in USD, an exact decimal with at most 9 decimals, e.g.
    /// `1200.50` (never read as a float).
    #[arg(long, value_name = "USD")]
    pub amount_usd: String,
    /// Which cost the budget counts.
    #[arg(long, value_enum, default_value = "charge")]
    pub basis: BasisArg,
    /// A hard cap: the meter denies the tenant's requests once it is spent
    /// (tenants only; without it the budget grades the level and alerts).
    #[arg(long)]
    pub hard: bool,
}

/// Flags of `budget delete`.
#[derive(Debug, Args)]
pub(crate) struct BudgetDeleteArgs {
    /// Whose budget.
    #[command(flatten)]
    pub subject: SubjectArgs,
    /// Which of its budgets.
    #[arg(long, value_enum)]
    pub period: PeriodArg,
}

/// A level, as `--min-level` takes it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub(crate) enum LevelArg {
    /// Yellow, orange and red.
    Yellow,
    /// Orange and red.
    Orange,
    /// Red only.
    Red,
}

/// Flags of `status`.
#[derive(Debug, Args)]
pub(crate) struct StatusArgs {
    /// Where alerting is, the output format.
    #[command(flatten)]
    pub ops: OpsArgs,
    /// One tenant's status in full, instead of the fleet and the table.
    #[arg(long, value_name = "ID")]
    pub tenant: Option<String>,
    /// Only tenants at this level or higher in the table.
    #[arg(long, value_enum, conflicts_with = "tenant")]
    pub min_level: Option<LevelArg>,
}

/// `tenantmeter alerts`: lists the history unless a subcommand is given.
#[derive(Debug, Args)]
#[command(args_conflicts_with_subcommands = true)]
pub(crate) struct AlertsArgs {
    /// Where alerting is, the token, the output format.
    #[command(flatten)]
    pub ops: OpsArgs,
    /// Only alerts about this tenant.
    #[arg(long, value_name = "ID")]
    pub tenant: Option<String>,
    /// Only alerts not acknowledged yet.
    #[arg(long)]
    pub unacknowledged: bool,
    /// At most this many alerts, the newest.
    #[arg(long, value_name = "N", default_value_t = 100, value_parser = clap::value_parser!(u32).range(1..))]
    pub limit: u32,
    /// `ack`.
    #[command(subcommand)]
    pub command: Option<AlertsCommand>,
}

/// Subcommands of `alerts`.
#[derive(Debug, Subcommand)]
pub(crate) enum AlertsCommand {
    /// Acknowledge alerts (an acknowledged alert keeps its first
    /// acknowledgement).
    Ack(AckArgs),
}

/// Arguments of `alerts ack`.
#[derive(Debug, Args)]
pub(crate) struct AckArgs {
    /// Ids of the alerts, as `alerts` prints them.
    #[arg(value_name = "ID", required = true)]
    pub ids: Vec<String>,
    /// Who acknowledges (free text, e.g. an e-mail address). Default: `$USER`.
    #[arg(long, value_name = "WHO")]
    pub by: Option<String>,
    /// A comment kept with the acknowledgement.
    #[arg(long, value_name = "TEXT")]
    pub comment: Option<String>,
}

impl Cli {
    /// Loads the config: defaults < `--config` file < `env` < flags.
    pub(crate) fn load_config(&self, env: &EnvMap) -> Result<Config, ConfigError> {
        let mut loader = ConfigLoader::new().file(self.config.as_deref()).env(env);
        if let Some(format) = self.log_format {
            let value = match format {
                LogFormatArg::Pretty => "pretty",
                LogFormatArg::Json => "json",
            };
            loader = loader.set("telemetry.log_format", value);
        }
        if let Some(filter) = &self.log_filter {
            loader = loader.set("telemetry.log_filter", filter);
        }
        match &self.command {
            Command::Up(args) => {
                if let Some(addr) = args.pricing_listen {
                    loader = loader.set("pricing.listen", &addr.to_string());
                }
                if let Some(addr) = args.meter_listen {
                    loader = loader.set("meter.listen", &addr.to_string());
                }
                if let Some(addr) = args.emulator_listen {
                    loader = loader.set("emulator.listen", &addr.to_string());
                }
                if let Some(addr) = args.gateway_listen {
                    loader = loader.set("gateway.listen", &addr.to_string());
                }
                if let Some(addr) = args.alerting_listen {
                    loader = loader.set("alerting.listen", &addr.to_string());
                }
                if args.bedrock == BedrockArg::Aws {
                    loader = loader.set("gateway.bedrock.mode", "aws");
                }
                if let Some(url) = &args.redis_url {
                    loader = loader.set("redis.url", url);
                }
            }
            Command::Pricing(args)
            | Command::Meter(args)
            | Command::Gateway(args)
            | Command::Alerting(args) => {
                let section = match self.command {
                    Command::Meter(_) => "meter",
                    Command::Gateway(_) => "gateway",
                    Command::Alerting(_) => "alerting",
                    Command::Pricing(_)
                    | Command::Up(_)
                    | Command::Emulator(_)
                    | Command::Backtest(_)
                    | Command::Config
                    | Command::Budget(_)
                    | Command::Status(_)
                    | Command::Alerts(_) => "pricing",
                };
                if let Some(addr) = args.listen {
                    loader = loader.set(&format!("{section}.listen"), &addr.to_string());
                }
                if let Some(url) = &args.redis_url {
                    loader = loader.set("redis.url", url);
                }
            }
            Command::Emulator(args) => {
                if let Some(addr) = args.listen {
                    loader = loader.set("emulator.listen", &addr.to_string());
                }
            }
            Command::Backtest(args) => {
                if let Some(plans) = &args.plans {
                    loader = loader.set("pricing.plans_file", &plans.display().to_string());
                }
            }
            Command::Budget(BudgetArgs { ops, .. })
            | Command::Status(StatusArgs { ops, .. })
            | Command::Alerts(AlertsArgs { ops, .. }) => {
                if let Some(url) = &ops.alerting_url {
                    loader = loader.set("alerting_url", url);
                }
                if let Some(token) = &ops.admin_token {
                    loader = loader.set("admin_token", token);
                }
            }
            Command::Config => {}
        }
        loader.load()
    }
}
