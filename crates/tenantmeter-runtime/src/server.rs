//! Serving a set of gRPC services with what every tenantmeter service needs around them:
//! health, reflection (v1 and v1alpha), trace context, TLS and graceful shutdown.
//!
//! ```no_run
//! # async fn f(listener: tokio::net::TcpListener) -> Result<(), tenantmeter_runtime::RuntimeError> {
//! use tenantmeter_runtime::config::ServerConfig;
//! use tenantmeter_runtime::server::{self, HealthHandle, ServeOptions, Services};
//! use tenantmeter_runtime::shutdown::Shutdown;
//!
//! let config = ServerConfig::with_listen(listener.local_addr().map_err(tenantmeter_runtime::RuntimeError::LocalAddr)?);
//! let services = Services::new(); // .add_service(PricingServiceServer::new(pricing))
//! let health = HealthHandle::new();
//! server::serve(ServeOptions::new(listener, config), services, &health, Shutdown::new()).await
//! # }
//! ```

use std::convert::Infallible;
use std::fmt;

use tokio::net::TcpListener;
use tonic::body::Body;
use tonic::server::NamedService;
use tonic::service::RoutesBuilder;
use tonic::transport::server::TcpIncoming;
use tonic::transport::{Identity, Server, ServerTlsConfig};
use tonic_health::ServingStatus;
use tonic_health::pb::health_server::HealthServer;
use tonic_health::server::{HealthReporter, HealthService};
use tower::Service;

use crate::config::{ServerConfig, TlsConfig};
use crate::error::RuntimeError;
use crate::shutdown::Shutdown;
use crate::trace_context;

/// Fully-qualified name of the health service.
pub const HEALTH_SERVICE: &str = "grpc.health.v1.Health";
/// Fully-qualified name of reflection v1.
pub const REFLECTION_V1_SERVICE: &str = "grpc.reflection.v1.ServerReflection";
/// Fully-qualified name of reflection v1alpha (what grpcurl before 1.9 speaks).
pub const REFLECTION_V1ALPHA_SERVICE: &str = "grpc.reflection.v1alpha.ServerReflection";

/// The application services to serve. Recording each service's name as it is added keeps
/// health and reflection in step with what is actually routed.
#[derive(Clone, Default)]
#[must_use]
pub struct Services {
    routes: RoutesBuilder,
    names: Vec<&'static str>,
}

impl Services {
    /// No services yet.
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds a generated server (`FooServiceServer::new(..)`, or one wrapped with an
    /// interceptor: `FooServiceServer::with_interceptor(.., AdminAuth::new(..))`).
    pub fn add_service<S, B>(mut self, service: S) -> Self
    where
        S: Service<http::Request<Body>, Response = http::Response<B>, Error = Infallible>
            + NamedService
            + Clone
            + Send
            + Sync
            + 'static,
        S::Future: Send + 'static,
        B: http_body::Body<Data = tonic::codegen::Bytes> + Send + 'static,
        B::Error: Into<tonic::codegen::StdError>,
    {
        self.names.push(S::NAME);
        self.routes.add_service(service);
        self
    }

    /// Fully-qualified names of the services added so far.
    #[must_use]
    pub fn names(&self) -> &[&'static str] {
        &self.names
    }
}

impl fmt::Debug for Services {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Services")
            .field("names", &self.names)
            .finish_non_exhaustive()
    }
}

/// The health statuses a server reports. Keep a clone to report a dependency outage
/// (`set_not_serving` while Redis is down); [`serve`] sets every served service, and the
/// overall status `""`, to SERVING when it starts and NOT_SERVING when shutdown begins.
#[derive(Debug, Clone, Default)]
pub struct HealthHandle {
    reporter: HealthReporter,
}

impl HealthHandle {
    /// A fresh set of statuses.
    #[must_use]
    pub fn new() -> Self {
        Self::default()
    }

    /// Reports `service` (fully-qualified name, or `""` for the whole server) as SERVING.
    pub async fn set_serving(&self, service: &str) {
        self.reporter
            .set_service_status(service, ServingStatus::Serving)
            .await;
    }

    /// Reports `service` (or `""`) as NOT_SERVING.
    pub async fn set_not_serving(&self, service: &str) {
        self.reporter
            .set_service_status(service, ServingStatus::NotServing)
            .await;
    }

    /// The underlying tonic-health reporter.
    #[must_use]
    pub fn reporter(&self) -> &HealthReporter {
        &self.reporter
    }
}

/// Where and how to serve.
#[derive(Debug)]
pub struct ServeOptions {
    /// Already bound by the caller, so tests can bind port 0 and read the port, and a bind
    /// failure is reported before anything else starts.
    pub listener: TcpListener,
    /// TLS and drain timeout (its `listen` is informational here: the listener is bound).
    pub config: ServerConfig,
}

impl ServeOptions {
    /// Options from a bound listener and its config section.
    #[must_use]
    pub fn new(listener: TcpListener, config: ServerConfig) -> Self {
        Self { listener, config }
    }
}

/// Serves `services` plus health and reflection on the listener until `shutdown` fires, then
/// reports NOT_SERVING, stops accepting, and waits for in-flight RPCs for at most
/// `config.drain_timeout` before returning.
///
/// Long-lived streams (watches) keep the drain waiting until they end: streaming handlers
/// should end their streams when [`Shutdown::triggered`] fires.
pub async fn serve(
    options: ServeOptions,
    services: Services,
    health: &HealthHandle,
    shutdown: Shutdown,
) -> Result<(), RuntimeError> {
    let ServeOptions { listener, config } = options;
    let addr = listener.local_addr().map_err(RuntimeError::LocalAddr)?;
    let Services { mut routes, names } = services;

    routes.add_service(HealthServer::new(HealthService::from_health_reporter(
        health.reporter.clone(),
    )));
    routes.add_service(reflection(&names).build_v1()?);
    routes.add_service(reflection(&names).build_v1alpha()?);

    let mut server = Server::builder();
    if let Some(tls) = &config.tls {
        server = server
            .tls_config(server_tls(tls).await?)
            .map_err(RuntimeError::Tls)?;
    }
    let router = server
        .layer(trace_context::server_layer())
        .add_routes(routes.routes());

    for name in names.iter().copied().chain([""]) {
        health.set_serving(name).await;
    }
    tracing::info!(%addr, services = ?names, tls = config.tls.is_some(), "serving");

    // tonic's own option is ignored with a custom incoming stream, and without TCP_NODELAY
    // small gRPC frames can wait ~40ms on Nagle + delayed ACK.
    let incoming = TcpIncoming::from(listener).with_nodelay(Some(true));
    let signal = {
        let shutdown = shutdown.clone();
        let health = health.clone();
        let names = names.clone();
        async move {
            shutdown.triggered().await;
            // Before we stop accepting, so watchers and load balancers see it first.
            for name in names.iter().copied().chain([""]) {
                health.set_not_serving(name).await;
            }
            tracing::info!(%addr, "shutdown: NOT_SERVING, no longer accepting, draining in-flight RPCs");
        }
    };
    let server = router.serve_with_incoming_shutdown(incoming, signal);
    let drain_deadline = async {
        shutdown.triggered().await;
        tokio::time::sleep(config.drain_timeout).await;
    };

    tokio::select! {
        result = server => {
            result.map_err(|source| RuntimeError::Serve { addr, source })?;
            tracing::info!(%addr, "drained; server stopped");
        }
        () = drain_deadline => {
            tracing::warn!(
                %addr,
                drain_timeout = ?config.drain_timeout,
                "drain timeout: stopping with RPCs still in flight"
            );
        }
    }
    Ok(())
}

/// Reflection over the tenantmeter contract and health, advertising only what this server
/// routes (the descriptor set holds every tenantmeter service; a pricing server should not
/// list the gateway's).
fn reflection(names: &[&'static str]) -> tonic_reflection::server::Builder<'static> {
    let builder = tonic_reflection::server::Builder::configure()
        .register_encoded_file_descriptor_set(tenantmeter_proto::FILE_DESCRIPTOR_SET)
        .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
        // google.rpc.ErrorInfo, BadRequest, RetryInfo...: without them grpcurl
        // prints every error detail as raw bytes.
        .register_encoded_file_descriptor_set(tonic_types::pb::FILE_DESCRIPTOR_SET);
    names
        .iter()
        .copied()
        .chain([
            HEALTH_SERVICE,
            REFLECTION_V1_SERVICE,
            REFLECTION_V1ALPHA_SERVICE,
        ])
        .fold(builder, |builder, name| builder.with_service_name(name))
}

/// Makes ring the process's rustls crypto provider unless one is installed.
///
/// rustls picks a provider from its crate features only when exactly one is
/// enabled; the AWS SDK enables aws-lc-rs next to our ring, and with both
/// rustls panics at the first TLS handshake setup. Choosing explicitly keeps
/// TLS working whatever else the binary links.
pub fn install_crypto_provider() {
    // Err means a provider is already installed, which is all we need.
    let _ = rustls::crypto::ring::default_provider().install_default();
}

async fn server_tls(tls: &TlsConfig) -> Result<ServerTlsConfig, RuntimeError> {
    install_crypto_provider();
    let read = |path: std::path::PathBuf| async move {
        tokio::fs::read(&path)
            .await
            .map_err(|source| RuntimeError::TlsFile { path, source })
    };
    let cert = read(tls.cert.clone()).await?;
    let key = read(tls.key.clone()).await?;
    Ok(ServerTlsConfig::new().identity(Identity::from_pem(cert, key)))
}
