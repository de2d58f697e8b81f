//! How fast is a quote? Prints, side by side in one run:
//! - the pure domain computation (no I/O), and
//! - `Quote` over gRPC through the generated client against the real service
//!   (its own redis-server on a free port), at 1 and 32 concurrent callers.
//!
//! `cargo run --release -p tenantmeter-pricing --example quote_bench [-- SECONDS]`

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::print_stdout,
    clippy::float_arithmetic,
    clippy::cast_precision_loss
)] // a benchmark's report

use std::time::{Duration, Instant};

use tenantmeter_domain::quote::{QuoteLine, Subject, quote};
use tenantmeter_domain::usage::TokenUsage;
use tenantmeter_pricing::{PricingConfig, PricingDeps, load_seed};
use tenantmeter_proto::v1 as pb;
use tenantmeter_proto::v1::pricing_service_client::PricingServiceClient;
use tenantmeter_runtime::shutdown::Shutdown;
use tenantmeter_testkit::RedisServer;

const SONNET: &str = "anthropic.claude-sonnet-4-5-20250929-v1:0";

fn request() -> pb::QuoteRequest {
    let usage = pb::TokenUsage {
        input_tokens: 1_200,
        output_tokens: 350,
        cache_read_input_tokens: 4_000,
        cache_write_input_tokens: 0,
    };
    pb::QuoteRequest {
        subject: Some(pb::quote_request::Subject::PlanId("pro".into())),
        lines: vec![pb::QuoteLine {
            model_id: SONNET.into(),
            usage: Some(usage),
            ..Default::default()
        }],
        period_to_date: vec![pb::QuoteLine {
            model_id: SONNET.into(),
            usage: Some(pb::TokenUsage {
                input_tokens: 900_000_000,
                output_tokens: 40_000_000,
                ..Default::default()
            }),
            ..Default::default()
        }],
    }
}

fn report(name: &str, count: usize, elapsed: Duration, latencies: &mut [Duration]) {
    latencies.sort_unstable();
    let at = |percent: usize| {
        latencies
            .get(latencies.len().saturating_sub(1) * percent / 100)
            .copied()
            .unwrap_or_default()
    };
    println!(
        "{name:<34} {:>10.0} quotes/s   p50 {:>9.1?}   p99 {:>9.1?}",
        count as f64 / elapsed.as_secs_f64(),
        at(50),
        at(99)
    );
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let seconds: u64 = std::env::args().nth(1).map_or(Ok(5), |s| s.parse())?;
    let window = Duration::from_secs(seconds);

    // The pure computation, on the shipped price book.
    let seed = load_seed(&PricingConfig::default())?;
    let book = seed.apply_to(None);
    let model = tenantmeter_domain::ids::ModelId::parse(SONNET)?;
    let line = |usage| QuoteLine {
        model_id: model.clone(),
        usage,
        region: None,
        offering: tenantmeter_domain::pricebook::Offering::OnDemand,
        scope: tenantmeter_domain::pricebook::PriceScope::Regional,
    };
    let lines = [line(TokenUsage {
        input: 1_200,
        output: 350,
        cache_read: 4_000,
        cache_write: 0,
    })];
    let before = [line(TokenUsage {
        input: 900_000_000,
        output: 40_000_000,
        ..TokenUsage::default()
    })];
    let subject = Subject::Plan(tenantmeter_domain::ids::PlanId::parse("pro")?);
    let started = Instant::now();
    let mut count = 0usize;
    let mut latencies = Vec::new();
    while started.elapsed() < window {
        let t = Instant::now();
        std::hint::black_box(quote(
            &book,
            &subject,
            std::hint::black_box(&lines),
            &before,
        )?);
        latencies.push(t.elapsed());
        count += 1;
    }
    report(
        "domain quote (no I/O)",
        count,
        started.elapsed(),
        &mut latencies,
    );

    // The service, over loopback gRPC.
    let redis = RedisServer::start().await?;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    let shutdown = Shutdown::new();
    let deps = PricingDeps {
        redis_url: redis.url(),
        admin_token: None,
    };
    let server = tokio::spawn(tenantmeter_pricing::run(
        PricingConfig::default(),
        deps,
        listener,
        shutdown.clone(),
    ));
    let channel = tenantmeter_testkit::poll_until_ok(Duration::from_secs(20), || async {
        tonic::transport::Endpoint::from_shared(format!("http://{addr}"))?
            .connect()
            .await
    })
    .await?;
    let warm = PricingServiceClient::new(channel.clone());
    tenantmeter_testkit::poll_until_ok(Duration::from_secs(20), || {
        let mut warm = warm.clone();
        async move { warm.quote(request()).await }
    })
    .await?;
    for callers in [1usize, 32] {
        let started = Instant::now();
        let mut tasks = Vec::new();
        for _ in 0..callers {
            let mut client = PricingServiceClient::new(channel.clone());
            tasks.push(tokio::spawn(async move {
                let mut latencies = Vec::new();
                while started.elapsed() < window {
                    let t = Instant::now();
                    client.quote(request()).await.expect("quote");
                    latencies.push(t.elapsed());
                }
                latencies
            }));
        }
        let mut latencies = Vec::new();
        for task in tasks {
            latencies.extend(task.await?);
        }
        let count = latencies.len();
        report(
            &format!("gRPC Quote, {callers} caller(s)"),
            count,
            started.elapsed(),
            &mut latencies,
        );
    }
    shutdown.trigger();
    server.await??;
    Ok(())
}
