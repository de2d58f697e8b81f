//! What does the gateway add to a Bedrock call? Sends the same Converse load,
//! at a fixed concurrency, directly to the Bedrock emulator through the real
//! aws-sdk-bedrockruntime (with the tenant's profile ARN as modelId) and
//! through the gateway (gRPC, key check, Reserve at the meter, the same SDK
//! call, Settle at the meter), in alternating rounds of one run, and prints
//! both sides' latency and throughput, the added p50/p99 and the ratio.
//!
//! It starts everything itself on free ports: a redis-server, pricing, the
//! meter, the emulator and the gateway, all in this process (so they share
//! this machine's cores with the load generator, as they would on one host).
//!
//! `cargo run --release -p tenantmeter-gateway --example gateway_bench [-- --seconds 5 --concurrency 8 --rounds 2 --emulator-latency-ms 0]`

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
    dead_code
)] // a benchmark's report

#[path = "../tests/support/mod.rs"]
mod support;

use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use aws_sdk_bedrockruntime::types::{
    ContentBlock, ConversationRole, InferenceConfiguration, Message,
};
use support::{SONNET, Stack, bearer, converse};
use tenantmeter_proto::v1 as pb;
use tokio::sync::Mutex;

#[derive(Debug, Clone, Copy)]
struct Options {
    seconds: u64,
    concurrency: usize,
    rounds: usize,
    emulator_latency_ms: u64,
}

fn options() -> Options {
    let mut options = Options {
        seconds: 5,
        concurrency: 8,
        rounds: 2,
        emulator_latency_ms: 0,
    };
    let args: Vec<String> = std::env::args().skip(1).collect();
    let mut i = 0;
    while i < args.len() {
        let value = || args.get(i + 1).and_then(|v| v.parse::<u64>().ok());
        match args[i].as_str() {
            "--seconds" => options.seconds = value().expect("--seconds N"),
            "--concurrency" => options.concurrency = value().expect("--concurrency N") as usize,
            "--rounds" => options.rounds = value().expect("--rounds N") as usize,
            "--emulator-latency-ms" => {
                options.emulator_latency_ms = value().expect("--emulator-latency-ms N");
            }
            "--help" | "-h" => {
                println!(
                    "gateway_bench [--seconds N (per side per round, 5)] [--concurrency N (8)] [--rounds N (2)]"
                );
                std::process::exit(0);
            }
            other => panic!("unknown argument {other} (try --help)"),
        }
        i += 2;
    }
    options
}

const PROMPT: &str = "Summarise in two sentences why per-tenant metering of model calls matters.";
const MAX_TOKENS: i32 = 256;

/// Latencies of one side, all rounds.
#[derive(Default)]
struct Side {
    latencies: Vec<Duration>,
    elapsed: Duration,
    errors: u64,
}

impl Side {
    fn percentile(&mut self, p: f64) -> Duration {
        self.latencies.sort_unstable();
        let index = ((self.latencies.len() as f64 - 1.0) * p).round() as usize;
        self.latencies[index]
    }

    fn throughput(&self) -> f64 {
        self.latencies.len() as f64 / self.elapsed.as_secs_f64()
    }
}

/// Runs `call` from `concurrency` tasks for `seconds`, adding to `side`.
async fn load<F, Fut>(side: &mut Side, options: Options, call: F)
where
    F: Fn() -> Fut + Clone + Send + 'static,
    Fut: Future<Output = bool> + Send,
{
    let stop = Arc::new(AtomicBool::new(false));
    let results = Arc::new(Mutex::new((Vec::new(), 0_u64)));
    let started = Instant::now();
    let mut workers = Vec::new();
    for _ in 0..options.concurrency {
        let call = call.clone();
        let stop = Arc::clone(&stop);
        let results = Arc::clone(&results);
        workers.push(tokio::spawn(async move {
            let mut mine = Vec::new();
            let mut errors = 0;
            while !stop.load(Ordering::Relaxed) {
                let t = Instant::now();
                if call().await {
                    mine.push(t.elapsed());
                } else {
                    errors += 1;
                }
            }
            let mut all = results.lock().await;
            all.0.extend(mine);
            all.1 += errors;
        }));
    }
    tokio::time::sleep(Duration::from_secs(options.seconds)).await;
    stop.store(true, Ordering::Relaxed);
    for worker in workers {
        worker.await.unwrap();
    }
    side.elapsed += started.elapsed();
    let mut all = results.lock().await;
    side.latencies.append(&mut all.0);
    side.errors += all.1;
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

#[tokio::main]
async fn main() {
    let options = options();
    let emulator = tenantmeter_emulator::EmulatorConfig {
        latency: Duration::from_millis(options.emulator_latency_ms),
        ..Default::default()
    };
    let stack = Stack::start_with(emulator, |_| {}).await;
    let key = stack.tenant("bench", &[("sonnet", SONNET)]).await;
    stack.unlimited("bench").await;

    // The profile ARN the gateway calls with, for the direct side.
    let mut gateway = stack.gateway().await;
    let probe = gateway
        .converse(bearer(&key, converse("sonnet", PROMPT)))
        .await
        .unwrap()
        .into_inner();
    let arn = probe.metering.unwrap().inference_profile_arn;

    let sdk = aws_sdk_bedrockruntime::Client::from_conf(
        aws_sdk_bedrockruntime::Config::builder()
            .behavior_version(aws_sdk_bedrockruntime::config::BehaviorVersion::latest())
            .region(aws_sdk_bedrockruntime::config::Region::new("us-east-1"))
            .endpoint_url(format!("http://{}", stack.emulator_addr))
            .credentials_provider(aws_sdk_bedrockruntime::config::Credentials::new(
                "bench", "bench", None, None, "bench",
            ))
            .build(),
    );
    let message = Message::builder()
        .role(ConversationRole::User)
        .content(ContentBlock::Text(PROMPT.to_owned()))
        .build()
        .unwrap();

    let direct_call = {
        let sdk = sdk.clone();
        let arn = arn.clone();
        move || {
            let sdk = sdk.clone();
            let arn = arn.clone();
            let message = message.clone();
            async move {
                sdk.converse()
                    .model_id(arn)
                    .messages(message)
                    .inference_config(
                        InferenceConfiguration::builder()
                            .max_tokens(MAX_TOKENS)
                            .build(),
                    )
                    .send()
                    .await
                    .is_ok()
            }
        }
    };
    let gateway_call = {
        let gateway = gateway.clone();
        let key = key.clone();
        move || {
            let mut gateway = gateway.clone();
            let request = bearer(&key, converse("sonnet", PROMPT));
            async move {
                let mut request = request;
                request.get_mut().inference_config = Some(pb::InferenceConfiguration {
                    max_tokens: Some(MAX_TOKENS),
                    ..Default::default()
                });
                gateway.converse(request).await.is_ok()
            }
        }
    };

    // Warm both paths (connections, caches, JIT-less but allocator-warm).
    let warm = Options {
        seconds: 1,
        ..options
    };
    load(&mut Side::default(), warm, direct_call.clone()).await;
    let mut warm_gateway = Side::default();
    load(&mut warm_gateway, warm, gateway_call.clone()).await;

    let mut direct = Side::default();
    let mut through = Side::default();
    for round in 0..options.rounds {
        eprintln!(
            "round {}/{}: direct, then through the gateway",
            round + 1,
            options.rounds
        );
        load(&mut direct, options, direct_call.clone()).await;
        load(&mut through, options, gateway_call.clone()).await;
    }

    let (d50, d99) = (direct.percentile(0.50), direct.percentile(0.99));
    let (g50, g99) = (through.percentile(0.50), through.percentile(0.99));
    println!(
        "gateway_bench: Converse, {} callers, {} s x {} rounds per side, emulator latency {} ms",
        options.concurrency, options.seconds, options.rounds, options.emulator_latency_ms
    );
    println!(
        "{:<28} {:>10} {:>10} {:>10} {:>8}",
        "", "calls/s", "p50 ms", "p99 ms", "errors"
    );
    println!(
        "{:<28} {:>10.0} {:>10.3} {:>10.3} {:>8}",
        "direct (SDK -> emulator)",
        direct.throughput(),
        ms(d50),
        ms(d99),
        direct.errors
    );
    println!(
        "{:<28} {:>10.0} {:>10.3} {:>10.3} {:>8}",
        "through the gateway",
        through.throughput(),
        ms(g50),
        ms(g99),
        through.errors
    );
    println!(
        "added p50 {:.3} ms, added p99 {:.3} ms, throughput ratio {:.2}x (aim: <= 0.5 ms, <= 1 ms, >= 0.5x)",
        ms(g50.saturating_sub(d50)),
        ms(g99.saturating_sub(d99)),
        through.throughput() / direct.throughput()
    );
    // Where the added time goes: the meter's two round trips, sequentially,
    // from this process (no Bedrock call between them).
    let mut meter = stack.meter().await;
    stack.unlimited("bench-meter").await;
    let mut reserves = Vec::new();
    let mut settles = Vec::new();
    for i in 0..500 {
        let t = Instant::now();
        let admitted = meter
            .reserve(pb::ReserveRequest {
                tenant_id: "bench-meter".into(),
                model_id: SONNET.into(),
                estimated_input_tokens: 20,
                max_output_tokens: i64::from(MAX_TOKENS),
                ..Default::default()
            })
            .await
            .unwrap()
            .into_inner();
        reserves.push(t.elapsed());
        let reservation_id = match admitted.outcome {
            Some(pb::reserve_response::Outcome::Admission(a)) => a.reservation_id,
            other => panic!("reserve denied: {other:?}"),
        };
        let t = Instant::now();
        meter
            .settle(pb::SettleRequest {
                reservation_id,
                event: Some(pb::UsageEvent {
                    event_id: format!("bench-{i}"),
                    tenant_id: "bench-meter".into(),
                    model_id: SONNET.into(),
                    usage: Some(pb::TokenUsage {
                        input_tokens: 20,
                        output_tokens: 40,
                        ..Default::default()
                    }),
                    event_time: Some(tenantmeter_runtime::clock::to_timestamp(
                        tenantmeter_runtime::clock::Clock::now(
                            &tenantmeter_runtime::clock::SystemClock,
                        ),
                    )),
                    ..Default::default()
                }),
            })
            .await
            .unwrap();
        settles.push(t.elapsed());
    }
    let p50 = |v: &mut Vec<Duration>| {
        v.sort_unstable();
        v[v.len() / 2]
    };
    println!(
        "meter round trips alone (1 caller): Reserve p50 {:.3} ms, Settle p50 {:.3} ms",
        ms(p50(&mut reserves)),
        ms(p50(&mut settles))
    );
    let month = stack.month("bench").await;
    // Every successful gateway call (probe, warm-up, measured) is settled
    // before it answers, so the meter must have exactly that many.
    println!(
        "meter: {} calls counted; gateway calls answered: {}",
        month.requests,
        1 + warm_gateway.latencies.len() + through.latencies.len()
    );
    stack.stop().await;
}
