//! The ops commands: `budget`, `status` and `alerts`, so an SRE can manage
//! budgets and read levels without grpcurl.
//!
//! They are clients of alerting's gRPC API (`AlertingService`, and
//! `AlertingAdminService` with the admin token), not services: no telemetry
//! is started, the answer goes to stdout (aligned text, or JSON with
//! `--format json`), and a failure is one line on stderr. Exit codes follow
//! the binary's: 64 for a bad flag value or a missing admin token (nothing
//! was sent), 1 when alerting cannot be reached or refuses the call.
//!
//! Start at [`run`]; each command lives in its own module, and [`render`]
//! holds the formatting they share (exact USD, percentages, tables).

mod alerts;
mod budget;
mod render;
mod status;

use std::io::Write as _;
use std::path::Path;
use std::process::ExitCode;

use tenantmeter_proto::v1::alerting_admin_service_client::AlertingAdminServiceClient;
use tenantmeter_proto::v1::alerting_service_client::AlertingServiceClient;
use tenantmeter_runtime::client::{self, ClientOptions, TracedChannel};
use tenantmeter_runtime::config::{EXIT_CONFIG, EnvMap};
use tonic_types::StatusExt as _;

use crate::cli::{AlertsCommand, Command, OpsArgs, OutputFormat};
use crate::commands::{self, ADMIN_TOKEN_FILE};
use crate::config::Config;

/// Why an ops command failed; [`OpsError::exit_code`] maps it to the exit code.
#[derive(Debug, thiserror::Error)]
pub(crate) enum OpsError {
    /// A flag value is wrong, or no admin token is configured: nothing was
    /// sent (64, like a bad config value). The text names the flag.
    #[error("{0}")]
    Usage(String),
    /// Alerting could not be reached (1).
    #[error("cannot reach alerting: {0}")]
    Unreachable(String),
    /// Alerting answered with an error (1): `<RPC> failed: <CODE>: <message>`.
    #[error("{0}")]
    Call(String),
    /// The answer could not be written to stdout (1).
    #[error("cannot write the output: {0}")]
    Output(String),
}

impl OpsError {
    /// The process exit code.
    fn exit_code(&self) -> ExitCode {
        match self {
            Self::Usage(_) => ExitCode::from(u8::try_from(EXIT_CONFIG).unwrap_or(1)),
            Self::Unreachable(_) | Self::Call(_) | Self::Output(_) => ExitCode::FAILURE,
        }
    }
}

/// Runs `budget`, `status` or `alerts`; prints the answer, or one line on
/// stderr, and returns the exit code.
pub(crate) async fn run(command: &Command, config: &Config, env: &EnvMap) -> ExitCode {
    let outcome = match command {
        Command::Budget(args) => {
            let context = Context::new(config, &args.ops);
            budget::run(&context, &args.command).await
        }
        Command::Status(args) => {
            let context = Context::new(config, &args.ops);
            status::run(&context, args).await
        }
        Command::Alerts(args) => {
            let context = Context::new(config, &args.ops);
            match &args.command {
                None => alerts::list(&context, args).await,
                Some(AlertsCommand::Ack(ack)) => alerts::ack(&context, ack, env).await,
            }
        }
        Command::Up(_)
        | Command::Pricing(_)
        | Command::Meter(_)
        | Command::Gateway(_)
        | Command::Alerting(_)
        | Command::Emulator(_)
        | Command::Backtest(_)
        | Command::Config => Ok(()),
    };
    match outcome {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            #[allow(clippy::print_stderr)] // the one line is the command's error output
            {
                eprintln!("{error}");
            }
            error.exit_code()
        }
    }
}

/// What every ops command needs: where alerting is, where the admin token
/// comes from, and how to print.
#[derive(Debug)]
pub(crate) struct Context<'a> {
    /// The loaded config: `alerting_url`, `admin_token` (flags already applied).
    config: &'a Config,
    /// `up`'s data directory, for its admin token.
    data_dir: &'a Path,
    /// Text or JSON.
    pub(crate) format: OutputFormat,
}

impl<'a> Context<'a> {
    fn new(config: &'a Config, ops: &'a OpsArgs) -> Self {
        Self {
            config,
            data_dir: &ops.data_dir,
            format: ops.format,
        }
    }

    /// The admin token: `--admin-token`, else `TENANTMETER_ADMIN_TOKEN`, else
    /// `admin_token` in the config file (one config value, layered), else the
    /// token `up` keeps in its data directory.
    fn admin_token(&self) -> Result<String, OpsError> {
        if let Some(token) = &self.config.admin_token {
            return Ok(token.clone());
        }
        let file = self.data_dir.join(ADMIN_TOKEN_FILE);
        match commands::stored_admin_token(self.data_dir) {
            Ok(Some(token)) => Ok(token),
            Ok(None) => Err(OpsError::Usage(format!(
                "no admin token: give --admin-token, set TENANTMETER_ADMIN_TOKEN (or admin_token in \
                 --config), or point --data-dir at the directory of `tenantmeter up` ({} has none)",
                file.display()
            ))),
            Err(error) => Err(OpsError::Usage(format!(
                "no admin token: cannot read {}: {error}",
                file.display()
            ))),
        }
    }

    async fn channel(&self) -> Result<TracedChannel, OpsError> {
        client::connect(&self.config.alerting_url, &ClientOptions::default())
            .await
            .map_err(|error| OpsError::Unreachable(commands::one_line(&error.into())))
    }

    /// A client of `AlertingService` (reads need no token).
    async fn alerting(&self) -> Result<AlertingServiceClient<TracedChannel>, OpsError> {
        Ok(AlertingServiceClient::new(self.channel().await?))
    }

    /// A client of `AlertingAdminService` and the `authorization` value of its
    /// calls. The token is resolved before connecting, so a missing token is
    /// reported as such even when alerting is down.
    async fn admin(&self) -> Result<Admin, OpsError> {
        let token = self.admin_token()?;
        let bearer = format!("Bearer {token}").parse().map_err(|_| {
            OpsError::Usage(
                "the admin token is not valid header text (printable ASCII only)".to_owned(),
            )
        })?;
        Ok(Admin {
            client: AlertingAdminServiceClient::new(self.channel().await?),
            bearer,
        })
    }

    /// Prints `text` (text format) or `json` (JSON format) on stdout.
    fn print<T: serde::Serialize>(&self, text: &str, json: &T) -> Result<(), OpsError> {
        match self.format {
            OutputFormat::Text => emit(text),
            OutputFormat::Json => {
                let mut document = serde_json::to_string_pretty(json)
                    .map_err(|error| OpsError::Output(error.to_string()))?;
                document.push('\n');
                emit(&document)
            }
        }
    }
}

/// An admin client with its credentials.
#[derive(Debug)]
struct Admin {
    /// The client.
    client: AlertingAdminServiceClient<TracedChannel>,
    /// `Bearer <token>`, the value of every call's `authorization` header.
    bearer: tonic::metadata::MetadataValue<tonic::metadata::Ascii>,
}

impl Admin {
    /// `message` as a request carrying the admin token.
    fn request<T>(&self, message: T) -> tonic::Request<T> {
        let mut request = tonic::Request::new(message);
        request.metadata_mut().insert(
            tenantmeter_runtime::auth::AUTHORIZATION,
            self.bearer.clone(),
        );
        request
    }
}

/// Writes to stdout. A closed pipe (`tenantmeter alerts | head`) is not an
/// error: the reader has what it wanted.
fn emit(text: &str) -> Result<(), OpsError> {
    let mut stdout = std::io::stdout().lock();
    match stdout
        .write_all(text.as_bytes())
        .and_then(|()| stdout.flush())
    {
        Ok(()) => Ok(()),
        Err(error) if error.kind() == std::io::ErrorKind::BrokenPipe => Ok(()),
        Err(error) => Err(OpsError::Output(error.to_string())),
    }
}

/// One line for a failed call: the RPC, the code by its gRPC name, the
/// message, and the field of a `google.rpc.BadRequest` detail when the
/// message does not already name it. UNAUTHENTICATED adds where the token
/// came from, the likeliest thing to fix.
pub(crate) fn call_failed(rpc: &str, status: &tonic::Status) -> OpsError {
    let mut line = format!("{rpc} failed: {}", code_name(status.code()));
    if !status.message().is_empty() {
        line.push_str(": ");
        line.push_str(status.message());
    }
    if let Some(bad_request) = status.get_details_bad_request() {
        let fields: Vec<&str> = bad_request
            .field_violations
            .iter()
            .map(|violation| violation.field.as_str())
            .filter(|field| !field.is_empty() && !status.message().contains(field))
            .collect();
        if !fields.is_empty() {
            line.push_str(&format!(" (field {})", fields.join(", ")));
        }
    }
    if status.code() == tonic::Code::Unauthenticated {
        line.push_str(
            " (check --admin-token, TENANTMETER_ADMIN_TOKEN, admin_token in --config, or --data-dir)",
        );
    }
    if status.code() == tonic::Code::Unavailable {
        return OpsError::Unreachable(line);
    }
    OpsError::Call(line)
}

/// The gRPC name of a status code, as grpcurl and the proto docs write it.
fn code_name(code: tonic::Code) -> &'static str {
    match code {
        tonic::Code::Ok => "OK",
        tonic::Code::Cancelled => "CANCELLED",
        tonic::Code::Unknown => "UNKNOWN",
        tonic::Code::InvalidArgument => "INVALID_ARGUMENT",
        tonic::Code::DeadlineExceeded => "DEADLINE_EXCEEDED",
        tonic::Code::NotFound => "NOT_FOUND",
        tonic::Code::AlreadyExists => "ALREADY_EXISTS",
        tonic::Code::PermissionDenied => "PERMISSION_DENIED",
        tonic::Code::ResourceExhausted => "RESOURCE_EXHAUSTED",
        tonic::Code::FailedPrecondition => "FAILED_PRECONDITION",
        tonic::Code::Aborted => "ABORTED",
        tonic::Code::OutOfRange => "OUT_OF_RANGE",
        tonic::Code::Unimplemented => "UNIMPLEMENTED",
        tonic::Code::Internal => "INTERNAL",
        tonic::Code::Unavailable => "UNAVAILABLE",
        tonic::Code::DataLoss => "DATA_LOSS",
        tonic::Code::Unauthenticated => "UNAUTHENTICATED",
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)] // a failed unwrap is a failed test

    use super::*;

    #[test]
    fn a_bad_request_names_its_field_once() {
        let status = tenantmeter_runtime::error::invalid_argument("budget.enforcement", "no");
        let line = call_failed("SetBudget", &status).to_string();
        assert_eq!(
            line,
            "SetBudget failed: INVALID_ARGUMENT: budget.enforcement: no"
        );

        let status = tonic::Status::with_error_details(
            tonic::Code::InvalidArgument,
            "must be positive",
            tonic_types::ErrorDetails::with_bad_request_violation("budget.amount_nanos_usd", "x"),
        );
        let line = call_failed("SetBudget", &status).to_string();
        assert_eq!(
            line,
            "SetBudget failed: INVALID_ARGUMENT: must be positive (field budget.amount_nanos_usd)"
        );
    }

    #[test]
    fn unauthenticated_says_where_the_token_comes_from() {
        let status = tonic::Status::unauthenticated("missing or wrong admin token");
        let error = call_failed("SetBudget", &status);
        assert!(matches!(error, OpsError::Call(_)));
        assert!(error.to_string().contains("UNAUTHENTICATED"));
        assert!(error.to_string().contains("--admin-token"));
    }
}
