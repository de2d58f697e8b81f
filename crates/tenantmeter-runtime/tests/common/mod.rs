//! Shared test fixtures: a tiny gRPC service with controllable behaviour, and a server started
//! through `tenantmeter_runtime::server::serve` on 127.0.0.1:0.
//!
//! The probe service reuses OpenTelemetry's generated OTLP `TraceService` (one unary RPC,
//! already a dev-dependency for the exporter test) so the tests need no proto of their own and
//! do not depend on the tenantmeter contract, which other crates are still growing.

#![allow(dead_code, unreachable_pub)]

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use opentelemetry_proto::tonic::collector::trace::v1::trace_service_server::{
    TraceService, TraceServiceServer,
};
use opentelemetry_proto::tonic::collector::trace::v1::{
    ExportTraceServiceRequest, ExportTraceServiceResponse,
};
use tenantmeter_runtime::config::ServerConfig;
use tenantmeter_runtime::server::{self, HealthHandle, ServeOptions, Services};
use tenantmeter_runtime::shutdown::Shutdown;
use tokio::net::TcpListener;
use tokio::sync::{Notify, mpsc};
use tokio::task::JoinHandle;
use tonic::{Request, Response, Status};

/// Fully-qualified name of the probe service.
pub const PROBE_SERVICE: &str = "opentelemetry.proto.collector.trace.v1.TraceService";

/// Generous upper bound for anything that should happen "soon" on a busy 2-core machine.
pub const SOON: Duration = Duration::from_secs(20);

/// Request metadata that makes the probe block until [`Probe::release`] is notified.
pub const BLOCK: &str = "x-probe-block";
/// Request metadata that makes the probe fail with INTERNAL.
pub const FAIL: &str = "x-probe-fail";

/// What the probe saw and how to steer it.
#[derive(Debug, Clone)]
pub struct Probe {
    /// `traceparent` of each request received, in order.
    pub traceparents: Arc<Mutex<Vec<Option<String>>>>,
    /// Notified (once per blocking request) when a blocking request has arrived.
    pub entered: Arc<Mutex<Option<mpsc::UnboundedSender<()>>>>,
    /// Releases blocked requests.
    pub release: Arc<Notify>,
}

impl Probe {
    pub fn new() -> (Self, mpsc::UnboundedReceiver<()>) {
        let (tx, rx) = mpsc::unbounded_channel();
        (
            Self {
                traceparents: Arc::default(),
                entered: Arc::new(Mutex::new(Some(tx))),
                release: Arc::new(Notify::new()),
            },
            rx,
        )
    }
}

#[tonic::async_trait]
impl TraceService for Probe {
    async fn export(
        &self,
        request: Request<ExportTraceServiceRequest>,
    ) -> Result<Response<ExportTraceServiceResponse>, Status> {
        let traceparent = request
            .metadata()
            .get("traceparent")
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned);
        self.traceparents.lock().unwrap().push(traceparent);
        if request.metadata().contains_key(FAIL) {
            return Err(Status::internal("probe asked to fail"));
        }
        if request.metadata().contains_key(BLOCK) {
            // Register interest before announcing arrival, so a release cannot be missed.
            let released = self.release.notified();
            if let Some(tx) = self.entered.lock().unwrap().as_ref() {
                let _ = tx.send(());
            }
            released.await;
        }
        Ok(Response::new(ExportTraceServiceResponse::default()))
    }
}

/// A server under test.
pub struct TestServer {
    pub addr: SocketAddr,
    pub shutdown: Shutdown,
    pub health: HealthHandle,
    pub probe: Probe,
    pub entered: mpsc::UnboundedReceiver<()>,
    pub task: JoinHandle<Result<(), tenantmeter_runtime::RuntimeError>>,
}

impl TestServer {
    /// Serves the probe with `config` (its `listen` is ignored: we bind 127.0.0.1:0).
    pub async fn start(config: ServerConfig) -> Self {
        Self::start_with(config, |probe| {
            Services::new().add_service(TraceServiceServer::new(probe))
        })
        .await
    }

    /// Serves what `services` builds around the probe.
    pub async fn start_with(
        config: ServerConfig,
        services: impl FnOnce(Probe) -> Services,
    ) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (probe, entered) = Probe::new();
        let shutdown = Shutdown::new();
        let health = HealthHandle::new();
        let services = services(probe.clone());
        let task = tokio::spawn({
            let shutdown = shutdown.clone();
            let health = health.clone();
            async move {
                server::serve(
                    ServeOptions::new(listener, config),
                    services,
                    &health,
                    shutdown,
                )
                .await
            }
        });
        Self {
            addr,
            shutdown,
            health,
            probe,
            entered,
            task,
        }
    }

    pub async fn plain() -> Self {
        Self::start(ServerConfig::with_listen("127.0.0.1:0".parse().unwrap())).await
    }

    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Triggers shutdown and waits (bounded) for `serve` to return.
    pub async fn stop(self) {
        self.shutdown.trigger();
        tokio::time::timeout(SOON, self.task)
            .await
            .expect("server did not stop")
            .unwrap()
            .unwrap();
    }
}
