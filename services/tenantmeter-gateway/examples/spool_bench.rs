//! Measures spool appends per second on this machine's disk, with one writer
//! and with 32 concurrent writers (where group commit lets appends share
//! fsyncs).
//!
//! `cargo run --release -p tenantmeter-gateway --example spool_bench [DIR]`
//!
//! DIR defaults to a temporary directory under the current one: `/tmp` may be
//! a tmpfs, where an fsync costs nothing and the figures mean nothing.
#![allow(
    clippy::print_stdout,
    clippy::float_arithmetic,
    reason = "a command-line benchmark prints its figures, which are rates"
)]

use std::path::PathBuf;
use std::time::Instant;

use tenantmeter_gateway::spool::Spool;
use tenantmeter_proto::v1::{SettleRequest, TokenUsage, UsageEvent};

fn settlement(n: usize) -> SettleRequest {
    SettleRequest {
        reservation_id: format!("res-{n:08}"),
        event: Some(UsageEvent {
            event_id: format!("evt-{n:08}"),
            tenant_id: "acme".to_owned(),
            model_id: "anthropic.claude-3-5-sonnet-20240620-v1:0".to_owned(),
            inference_profile_arn:
                "arn:aws:bedrock:us-east-1:123456789012:application-inference-profile/abc123"
                    .to_owned(),
            region: "us-east-1".to_owned(),
            application_id: "chat".to_owned(),
            usage: Some(TokenUsage {
                input_tokens: 1200,
                output_tokens: 350,
                cache_read_input_tokens: 800,
                cache_write_input_tokens: 0,
            }),
            latency_ms: 900,
            ..UsageEvent::default()
        }),
    }
}

async fn run(spool: &Spool, writers: usize, each: usize) -> anyhow::Result<()> {
    let before = spool.stats();
    let started = Instant::now();
    let mut tasks = Vec::with_capacity(writers);
    for writer in 0..writers {
        let spool = spool.clone();
        tasks.push(tokio::spawn(async move {
            for i in 0..each {
                spool.append(&settlement(writer * 1_000_000 + i)).await?;
            }
            anyhow::Ok(())
        }));
    }
    for task in tasks {
        task.await??;
    }
    let elapsed = started.elapsed().as_secs_f64();
    let after = spool.stats();
    let appended = after.appended - before.appended;
    let fsyncs = after.group_commits - before.group_commits;
    println!(
        "{writers:>3} writer(s): {appended:>6} appends in {elapsed:>6.3} s = {:>9.0} appends/s, \
         {fsyncs:>5} fsyncs ({:.1} appends per fsync, {:.3} ms per fsync)",
        appended as f64 / elapsed,
        appended as f64 / fsyncs.max(1) as f64,
        elapsed * 1000.0 / fsyncs.max(1) as f64,
    );
    Ok(())
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let base = std::env::args()
        .nth(1)
        .map_or_else(|| PathBuf::from("."), PathBuf::from);
    let dir = tempfile::Builder::new()
        .prefix("spool-bench-")
        .tempdir_in(&base)?;
    println!("spool in {}", dir.path().display());
    let spool = Spool::open(dir.path())?;
    // Warm-up: the first fsyncs of a fresh file include its metadata.
    run(&spool, 1, 50).await?;
    run(&spool, 1, 1_000).await?;
    run(&spool, 32, 200).await?;
    println!("pending after the run: {}", spool.pending());
    Ok(())
}
