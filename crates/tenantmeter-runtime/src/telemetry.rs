//! Logs and traces: `tracing` everywhere, written to stderr and, when
//! `OTEL_EXPORTER_OTLP_ENDPOINT` is set, exported as OpenTelemetry spans over OTLP/gRPC.
//!
//! The OpenTelemetry layer is installed even without an endpoint (with no exporter): spans
//! then still get W3C ids, so a service in the middle of a call chain passes the trace on
//! instead of starting a new one, and only the export is skipped.

use std::io::IsTerminal as _;

use opentelemetry::trace::TracerProvider as _;
use opentelemetry_otlp::WithExportConfig as _;
use opentelemetry_sdk::Resource;
use opentelemetry_sdk::propagation::TraceContextPropagator;
use opentelemetry_sdk::trace::SdkTracerProvider;
use tracing_subscriber::filter::LevelFilter;
use tracing_subscriber::layer::SubscriberExt as _;
use tracing_subscriber::util::SubscriberInitExt as _;
use tracing_subscriber::{EnvFilter, Layer as _, Registry};

use crate::config::{EnvMap, LogFormat, TelemetryConfig};
use crate::error::RuntimeError;

/// Standard variable naming the OTLP collector for every signal, e.g. `http://127.0.0.1:4317`.
pub const OTLP_ENDPOINT_VAR: &str = "OTEL_EXPORTER_OTLP_ENDPOINT";
/// Standard variable naming the OTLP collector for traces only; wins over [`OTLP_ENDPOINT_VAR`].
pub const OTLP_TRACES_ENDPOINT_VAR: &str = "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT";
/// Standard variable that turns the SDK off (`true`): spans are then neither exported nor
/// given ids.
pub const OTEL_SDK_DISABLED_VAR: &str = "OTEL_SDK_DISABLED";

/// Instrumentation scope name of our spans.
const TRACER_NAME: &str = "tenantmeter";

/// Keeps the tracer provider alive; call [`TelemetryGuard::shutdown`] at the very end of a
/// graceful shutdown to flush the spans still queued.
#[derive(Debug)]
#[must_use = "dropping the guard without shutdown() may lose queued spans"]
pub struct TelemetryGuard {
    provider: Option<SdkTracerProvider>,
    exporting: bool,
}

impl TelemetryGuard {
    /// Whether spans are exported over OTLP.
    #[must_use]
    pub fn is_exporting(&self) -> bool {
        self.exporting
    }

    /// Flushes queued spans and shuts the provider down. Must run while the Tokio runtime
    /// is still alive: the OTLP exporter sends over a tonic channel driven by it. The
    /// blocking flush runs on a blocking thread so it cannot stall the runtime it needs.
    pub async fn shutdown(self) {
        let Some(provider) = self.provider else {
            return;
        };
        match tokio::task::spawn_blocking(move || provider.shutdown()).await {
            Ok(Ok(())) => {}
            Ok(Err(error)) => tracing::warn!(%error, "flushing spans at shutdown failed"),
            Err(error) => tracing::warn!(%error, "the span flush task failed"),
        }
    }
}

/// Installs the global `tracing` subscriber: `config.log_filter` (RUST_LOG syntax) and
/// `config.log_format` for stderr, plus the OpenTelemetry layer; and sets the W3C
/// TraceContext propagator globally.
///
/// `env` is the injected environment; OTLP export is on when it holds
/// `OTEL_EXPORTER_OTLP_TRACES_ENDPOINT` or `OTEL_EXPORTER_OTLP_ENDPOINT` (other `OTEL_*`
/// exporter settings, such as headers, are read by opentelemetry-otlp itself). Exporting
/// requires a Tokio runtime.
///
/// Calling it again in the same process (tests) does not fail: the first subscriber stays,
/// and the returned guard neither exports nor owns a provider.
pub fn init(
    config: &TelemetryConfig,
    service_name: &str,
    env: &EnvMap,
) -> Result<TelemetryGuard, RuntimeError> {
    let filter = EnvFilter::builder().parse(&config.log_filter)?;
    if tracing::dispatcher::has_been_set() {
        // A second call (tests): the first subscriber, and its tracer provider, stay in charge.
        // Building another provider here would report exporting while nothing reaches it.
        tracing::debug!("a global tracing subscriber is already installed; keeping it");
        return Ok(TelemetryGuard {
            provider: None,
            exporting: false,
        });
    }
    let ansi = std::io::stderr().is_terminal();
    let fmt_layer = match config.log_format {
        LogFormat::Pretty => tracing_subscriber::fmt::layer()
            .with_writer(std::io::stderr)
            .with_ansi(ansi)
            .with_filter(filter)
            .boxed(),
        LogFormat::Json => tracing_subscriber::fmt::layer()
            .json()
            .with_writer(std::io::stderr)
            .with_current_span(true)
            .with_span_list(false)
            .with_filter(filter)
            .boxed(),
    };

    let disabled = env
        .get(OTEL_SDK_DISABLED_VAR)
        .is_some_and(|v| v.trim().eq_ignore_ascii_case("true"));
    let endpoint = [OTLP_TRACES_ENDPOINT_VAR, OTLP_ENDPOINT_VAR]
        .iter()
        .filter_map(|var| env.get(*var))
        .map(|v| v.trim())
        .find(|v| !v.is_empty());

    let provider = if disabled {
        None
    } else {
        Some(tracer_provider(service_name, endpoint)?)
    };
    let exporting = provider.is_some() && endpoint.is_some();

    // Spans are exported at INFO and above whatever the log filter says: quieting the logs
    // must not break the trace, and DEBUG spans (health probes, library internals) stay out.
    let otel_layer = provider.as_ref().map(|provider| {
        tracing_opentelemetry::layer()
            .with_tracer(provider.tracer(TRACER_NAME))
            .with_filter(LevelFilter::INFO)
            .boxed()
    });

    if let Some(provider) = &provider {
        opentelemetry::global::set_text_map_propagator(TraceContextPropagator::new());
        opentelemetry::global::set_tracer_provider(provider.clone());
    }

    let layers: Vec<Box<dyn tracing_subscriber::Layer<Registry> + Send + Sync>> =
        std::iter::once(fmt_layer).chain(otel_layer).collect();
    if tracing_subscriber::registry()
        .with(layers)
        .try_init()
        .is_err()
    {
        // Lost a race with another initialiser since the check above: keep theirs.
        tracing::debug!("a global tracing subscriber is already installed; keeping it");
    }
    if let Some(endpoint) = endpoint.filter(|_| exporting) {
        tracing::info!(
            endpoint,
            service = service_name,
            "exporting traces over OTLP/gRPC"
        );
    }

    Ok(TelemetryGuard {
        provider,
        exporting,
    })
}

fn tracer_provider(
    service_name: &str,
    endpoint: Option<&str>,
) -> Result<SdkTracerProvider, RuntimeError> {
    let resource = Resource::builder()
        .with_service_name(service_name.to_owned())
        .with_attribute(opentelemetry::KeyValue::new(
            "service.version",
            env!("CARGO_PKG_VERSION"),
        ))
        .build();
    let builder = SdkTracerProvider::builder().with_resource(resource);
    let Some(endpoint) = endpoint else {
        return Ok(builder.build());
    };
    // The tonic exporter's channel spawns onto the current runtime; without one it would panic.
    if tokio::runtime::Handle::try_current().is_err() {
        return Err(RuntimeError::NoTokioRuntime);
    }
    let exporter = opentelemetry_otlp::SpanExporter::builder()
        .with_tonic()
        .with_endpoint(endpoint)
        .build()?;
    Ok(builder.with_batch_exporter(exporter).build())
}
