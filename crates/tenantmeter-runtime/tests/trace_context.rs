//! W3C trace context across a real gRPC hop: the client layer (via `client::connect`) injects
//! `traceparent`, the server layer extracts it and parents its per-RPC span on it.
//!
//! Spans go to an in-memory OpenTelemetry exporter through a subscriber installed for this
//! thread only; `#[tokio::test]` runs on one thread, so client, server and the connection
//! tasks all report to it. Serving is stopped (and awaited) before reading the spans, so
//! every span has ended: no waiting on timing.
// clippy.toml allows these inside #[test] fns only; helpers and fixtures here are test code too.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use common::{FAIL, PROBE_SERVICE, TestServer};
use opentelemetry::trace::{SpanKind, Status, TraceContextExt as _, TracerProvider as _};
use opentelemetry::{KeyValue, Value};
use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use opentelemetry_proto::tonic::collector::trace::v1::trace_service_client::TraceServiceClient;
use opentelemetry_sdk::trace::{InMemorySpanExporter, SdkTracerProvider, SpanData};
use tenantmeter_runtime::client::{self, ClientOptions};
use tonic::Request;
use tracing::Instrument as _;
use tracing_opentelemetry::OpenTelemetrySpanExt as _;
use tracing_subscriber::layer::SubscriberExt as _;

const EXPORT: &str = "opentelemetry.proto.collector.trace.v1.TraceService/Export";

struct Capture {
    exporter: InMemorySpanExporter,
    provider: SdkTracerProvider,
    _guard: tracing::subscriber::DefaultGuard,
}

fn capture() -> Capture {
    let exporter = InMemorySpanExporter::default();
    let provider = SdkTracerProvider::builder()
        .with_simple_exporter(exporter.clone())
        .build();
    let subscriber = tracing_subscriber::registry()
        .with(tracing_opentelemetry::layer().with_tracer(provider.tracer("test")));
    let guard = tracing::subscriber::set_default(subscriber);
    Capture {
        exporter,
        provider,
        _guard: guard,
    }
}

impl Capture {
    fn spans(&self) -> Vec<SpanData> {
        self.provider.force_flush().unwrap();
        self.exporter.get_finished_spans().unwrap()
    }
}

fn find(spans: &[SpanData], kind: SpanKind) -> &SpanData {
    spans
        .iter()
        .find(|s| s.name == EXPORT && s.span_kind == kind)
        .unwrap_or_else(|| panic!("no {kind:?} span named {EXPORT} in {spans:#?}"))
}

fn attribute<'a>(span: &'a SpanData, key: &str) -> Option<&'a Value> {
    span.attributes
        .iter()
        .find(|KeyValue { key: k, .. }| k.as_str() == key)
        .map(|kv| &kv.value)
}

#[tokio::test]
async fn client_context_becomes_the_server_spans_parent() {
    let capture = capture();
    let server = TestServer::plain().await;
    let channel = client::connect(&server.url(), &ClientOptions::default())
        .await
        .unwrap();
    let mut probe = TraceServiceClient::new(channel);

    let root = tracing::info_span!("test.root");
    let root_trace_id = root.context().span().span_context().trace_id();
    probe
        .export(ExportTraceServiceRequest::default())
        .instrument(root.clone())
        .await
        .unwrap();
    drop(probe);
    drop(root);
    let traceparents = server.probe.traceparents.clone();
    server.stop().await;

    let spans = capture.spans();
    let client_span = find(&spans, SpanKind::Client);
    let server_span = find(&spans, SpanKind::Server);

    // One trace, and the server span hangs off the client span.
    assert_eq!(client_span.span_context.trace_id(), root_trace_id);
    assert_eq!(server_span.span_context.trace_id(), root_trace_id);
    assert_eq!(
        server_span.parent_span_id,
        client_span.span_context.span_id()
    );
    assert!(server_span.parent_span_is_remote);

    // The header really went over the wire.
    let seen = traceparents.lock().unwrap().clone();
    let expected = format!(
        "00-{}-{}-01",
        root_trace_id,
        client_span.span_context.span_id()
    );
    assert_eq!(seen, vec![Some(expected)]);

    for span in [client_span, server_span] {
        assert_eq!(attribute(span, "rpc.system"), Some(&Value::from("grpc")));
        assert_eq!(
            attribute(span, "rpc.service"),
            Some(&Value::from(PROBE_SERVICE))
        );
        assert_eq!(attribute(span, "rpc.method"), Some(&Value::from("Export")));
        assert_eq!(
            attribute(span, "rpc.grpc.status_code"),
            Some(&Value::I64(0))
        );
        assert_eq!(span.status, Status::Unset);
    }
}

#[tokio::test]
async fn server_extracts_a_raw_traceparent_header() {
    let capture = capture();
    let server = TestServer::plain().await;
    // A plain tonic channel: no client layer, the header is set by hand as another
    // language's client would.
    let channel = tonic::transport::Endpoint::from_shared(server.url())
        .unwrap()
        .connect()
        .await
        .unwrap();
    let mut request = Request::new(ExportTraceServiceRequest::default());
    request.metadata_mut().insert(
        "traceparent",
        "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"
            .parse()
            .unwrap(),
    );
    TraceServiceClient::new(channel)
        .export(request)
        .await
        .unwrap();
    server.stop().await;

    let spans = capture.spans();
    let server_span = find(&spans, SpanKind::Server);
    assert_eq!(
        server_span.span_context.trace_id().to_string(),
        "4bf92f3577b34da6a3ce929d0e0e4736"
    );
    assert_eq!(server_span.parent_span_id.to_string(), "00f067aa0ba902b7");
}

#[tokio::test]
async fn failures_are_recorded_on_both_sides() {
    let capture = capture();
    let server = TestServer::plain().await;
    let channel = client::connect(&server.url(), &ClientOptions::default())
        .await
        .unwrap();
    let mut request = Request::new(ExportTraceServiceRequest::default());
    request.metadata_mut().insert(FAIL, "1".parse().unwrap());
    let status = TraceServiceClient::new(channel)
        .export(request)
        .await
        .unwrap_err();
    assert_eq!(status.code(), tonic::Code::Internal);
    server.stop().await;

    let spans = capture.spans();
    for kind in [SpanKind::Client, SpanKind::Server] {
        let span = find(&spans, kind.clone());
        assert_eq!(
            attribute(span, "rpc.grpc.status_code"),
            Some(&Value::I64(13))
        );
        assert!(
            matches!(span.status, Status::Error { .. }),
            "{kind:?}: {:?}",
            span.status
        );
    }
}
