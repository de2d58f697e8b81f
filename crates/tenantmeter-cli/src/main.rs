//! `tenantmeter`: parse the command line, load the config (exit 64 on a bad
//! value), then hand over to [`commands`]. Everything else lives in the
//! service libraries, so tests start the same services in-process.

mod backtest;
mod cli;
mod commands;
mod config;
mod ops;
mod redis_child;

use std::process::ExitCode;

use clap::Parser as _;
use tenantmeter_runtime::config::{EXIT_CONFIG, process_env};

/// mimalloc, not glibc malloc: a pass of the alerting service over 100,000
/// tenants parses and builds millions of small values across threads, and
/// under glibc it took twice the CPU and its heap kept growing (see
/// docs/alerting.md, benchmark).
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> ExitCode {
    let cli = cli::Cli::parse();
    let env = process_env();
    let config = match cli.load_config(&env) {
        Ok(config) => config,
        Err(error) => {
            #[allow(clippy::print_stderr)]
            // telemetry is not up yet; the one line must reach the operator
            {
                eprintln!("{error}");
            }
            return ExitCode::from(u8::try_from(EXIT_CONFIG).unwrap_or(1));
        }
    };
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(error) => {
            #[allow(clippy::print_stderr)] // no runtime, so no telemetry
            {
                eprintln!("cannot start the async runtime: {error}");
            }
            return ExitCode::FAILURE;
        }
    };
    runtime.block_on(commands::run(cli, config, env))
}
