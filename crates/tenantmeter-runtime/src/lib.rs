//! The shared service runtime of tenantmeter: everything a gateway, meter, pricing or
//! alerting process needs around its gRPC handlers, written once.
//!
//! Start reading at [`server::serve`]: it shows the life of a service (health, reflection,
//! trace context, TLS, graceful drain). A service binary's `main` is then, in order:
//!
//! 1. [`config::ConfigLoader`]: defaults < TOML file < `TENANTMETER_*` env < flags, checked by
//!    [`config::Validate`]; on error print the one-line [`config::ConfigError`] and exit
//!    [`config::EXIT_CONFIG`].
//! 2. [`telemetry::init`]: logs to stderr, spans over OTLP when `OTEL_EXPORTER_OTLP_ENDPOINT`
//!    is set.
//! 3. [`shutdown::install_signal_handlers`], bind a `TcpListener`, and the service library's
//!    `run(config, listener, shutdown)`, which builds its [`server::Services`] and calls
//!    [`server::serve`].
//! 4. [`shutdown::Shutdown::wait_for_tasks`], then [`telemetry::TelemetryGuard::shutdown`].
//!
//! Handlers use [`error`] to build rich `tonic::Status`es, [`auth::AdminAuth`] to guard
//! admin services, [`client::connect`] to call other services (trace context included), and
//! a [`clock::Clock`] instead of the system time, and
//! [`redis_connection::RedisConnection`] to reach Redis or a Redis Cluster.
//!
//! Everything that makes tests flaky is injected: the environment (a map, never the process
//! env), the listener (bind port 0), the shutdown signal and the clock.

pub mod auth;
pub mod client;
pub mod clock;
pub mod config;
pub mod error;
pub mod redis_connection;
pub mod server;
pub mod shutdown;
pub mod telemetry;
pub mod trace_context;

pub use error::RuntimeError;
