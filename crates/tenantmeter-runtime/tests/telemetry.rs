//! `telemetry::init` with the OTLP endpoint taken from an injected environment: spans reach a
//! real OTLP/gRPC receiver (served in-process on 127.0.0.1:0) with the service name as a
//! resource, and `TelemetryGuard::shutdown` flushes them. One test per binary, because
//! `init` installs the process-wide subscriber.
// clippy.toml allows these inside #[test] fns only; helpers and fixtures here are test code too.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::sync::{Arc, Mutex};

use opentelemetry_proto::tonic::collector::trace::v1::trace_service_server::{
    TraceService, TraceServiceServer,
};
use opentelemetry_proto::tonic::collector::trace::v1::{
    ExportTraceServiceRequest, ExportTraceServiceResponse,
};
use opentelemetry_proto::tonic::common::v1::any_value;
use tenantmeter_runtime::config::{EnvMap, TelemetryConfig};
use tenantmeter_runtime::telemetry;
use tokio::net::TcpListener;
use tonic::transport::Server;
use tonic::transport::server::TcpIncoming;
use tonic::{Request, Response, Status};

#[derive(Clone, Default)]
struct Receiver {
    received: Arc<Mutex<Vec<ExportTraceServiceRequest>>>,
}

#[tonic::async_trait]
impl TraceService for Receiver {
    async fn export(
        &self,
        request: Request<ExportTraceServiceRequest>,
    ) -> Result<Response<ExportTraceServiceResponse>, Status> {
        self.received.lock().unwrap().push(request.into_inner());
        Ok(Response::new(ExportTraceServiceResponse::default()))
    }
}

/// (service.name, span name) of every span received.
fn received_spans(receiver: &Receiver) -> Vec<(String, String)> {
    let mut spans = Vec::new();
    for request in receiver.received.lock().unwrap().iter() {
        for resource_spans in &request.resource_spans {
            let service = resource_spans
                .resource
                .iter()
                .flat_map(|r| &r.attributes)
                .find(|kv| kv.key == "service.name")
                .and_then(|kv| {
                    // service.name is always a string; anything else fails the assertion below.
                    if let Some(any_value::Value::StringValue(s)) =
                        kv.value.as_ref()?.value.as_ref()
                    {
                        Some(s.clone())
                    } else {
                        None
                    }
                })
                .unwrap_or_default();
            for scope in &resource_spans.scope_spans {
                for span in &scope.spans {
                    spans.push((service.clone(), span.name.clone()));
                }
            }
        }
    }
    spans
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exports_spans_over_otlp_and_tolerates_a_second_init() {
    let receiver = Receiver::default();
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let collector = tokio::spawn(
        Server::builder()
            .add_service(TraceServiceServer::new(receiver.clone()))
            .serve_with_incoming_shutdown(TcpIncoming::from(listener), async {
                let _ = stop_rx.await;
            }),
    );

    let env = EnvMap::from([(
        "OTEL_EXPORTER_OTLP_ENDPOINT".to_owned(),
        format!("http://{addr}"),
    )]);
    let guard = telemetry::init(&TelemetryConfig::default(), "runtime-test", &env).unwrap();
    assert!(guard.is_exporting());

    {
        let span = tracing::info_span!("unit.of.work", tenant = "t-1");
        let _entered = span.enter();
        tracing::info!("inside the unit of work");
    }
    // Not exported: below the INFO floor of the OpenTelemetry layer.
    drop(tracing::debug_span!("noise"));

    // Flushes the batch synchronously: after this the receiver has the span.
    guard.shutdown().await;
    let spans = received_spans(&receiver);
    assert!(
        spans.contains(&("runtime-test".to_owned(), "unit.of.work".to_owned())),
        "{spans:?}"
    );
    assert!(!spans.iter().any(|(_, name)| name == "noise"), "{spans:?}");

    // A second init in the same process keeps the first subscriber and does not fail;
    // without an endpoint it does not export.
    let again =
        telemetry::init(&TelemetryConfig::default(), "runtime-test", &EnvMap::new()).unwrap();
    assert!(!again.is_exporting());
    again.shutdown().await;

    let _ = stop_tx.send(());
    collector.await.unwrap().unwrap();
}
