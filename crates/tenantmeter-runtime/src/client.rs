//! Channels to other tenantmeter services, with trace-context injection built in.
//!
//! ```no_run
//! # async fn f() -> Result<(), tenantmeter_runtime::RuntimeError> {
//! use tenantmeter_runtime::client::{self, ClientOptions};
//! let channel = client::connect("http://127.0.0.1:50053", &ClientOptions::default()).await?;
//! // let mut pricing = PricingServiceClient::new(channel);
//! # Ok(()) }
//! ```

use std::path::PathBuf;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Endpoint};
use tower::Layer as _;

use crate::config::{ConfigError, Validate};
use crate::error::RuntimeError;
use crate::trace_context::{ClientTraceLayer, ClientTraceService};

/// A channel that injects the caller's trace context into every request. Use it wherever a
/// generated client takes a channel: `FooServiceClient::new(channel)`. Cheap to clone: clones
/// share the connection.
pub type TracedChannel = ClientTraceService<Channel>;

/// Default time allowed to establish a connection.
pub const DEFAULT_CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// Default time allowed for a call to produce its response headers (for streaming calls the
/// stream itself may last longer).
pub const DEFAULT_REQUEST_TIMEOUT: Duration = Duration::from_secs(30);

/// How to reach another service.
#[derive(Debug, Clone)]
pub struct ClientOptions {
    /// Time allowed to establish a connection. Default [`DEFAULT_CONNECT_TIMEOUT`].
    pub connect_timeout: Duration,
    /// Time allowed for each call to produce response headers. Default
    /// [`DEFAULT_REQUEST_TIMEOUT`]. This is client-side only: set a per-call deadline with
    /// `Request::set_timeout` to also tell the server (`grpc-timeout`).
    pub request_timeout: Duration,
    /// TLS settings; plaintext when `None`. With `Some`, the endpoint should be `https://`.
    pub tls: Option<ClientTlsConfig>,
}

impl Default for ClientOptions {
    fn default() -> Self {
        Self {
            connect_timeout: DEFAULT_CONNECT_TIMEOUT,
            request_timeout: DEFAULT_REQUEST_TIMEOUT,
            tls: None,
        }
    }
}

/// Connects now: fails if the service cannot be reached within the connect timeout.
pub async fn connect(
    endpoint: &str,
    options: &ClientOptions,
) -> Result<TracedChannel, RuntimeError> {
    let channel = build_endpoint(endpoint, options)?
        .connect()
        .await
        .map_err(|source| RuntimeError::Connect {
            endpoint: endpoint.to_owned(),
            source,
        })?;
    Ok(ClientTraceLayer::new().layer(channel))
}

/// Connects on first use (and reconnects as needed): for services that may start after us,
/// as in `tenantmeter up`. Must be called inside a Tokio runtime.
pub fn connect_lazy(
    endpoint: &str,
    options: &ClientOptions,
) -> Result<TracedChannel, RuntimeError> {
    let channel = build_endpoint(endpoint, options)?.connect_lazy();
    Ok(ClientTraceLayer::new().layer(channel))
}

fn build_endpoint(endpoint: &str, options: &ClientOptions) -> Result<Endpoint, RuntimeError> {
    let invalid = |source| RuntimeError::InvalidEndpoint {
        endpoint: endpoint.to_owned(),
        source,
    };
    let mut built = Endpoint::from_shared(endpoint.to_owned())
        .map_err(invalid)?
        .connect_timeout(options.connect_timeout)
        .timeout(options.request_timeout);
    if let Some(tls) = &options.tls {
        built = built.tls_config(tls.clone()).map_err(invalid)?;
    }
    Ok(built)
}

/// Client TLS as written in config: trust this CA (PEM) and optionally expect this server
/// name (defaults to the endpoint's host).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ClientTlsFiles {
    /// PEM bundle of the CA(s) that signed the server certificate.
    pub ca: PathBuf,
    /// Server name to verify, when it differs from the endpoint's host.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub domain: Option<String>,
}

impl ClientTlsFiles {
    /// Reads the CA file into a tonic `ClientTlsConfig`.
    pub fn load(&self) -> Result<ClientTlsConfig, RuntimeError> {
        crate::server::install_crypto_provider();
        let ca = std::fs::read(&self.ca).map_err(|source| RuntimeError::TlsFile {
            path: self.ca.clone(),
            source,
        })?;
        let mut tls = ClientTlsConfig::new().ca_certificate(Certificate::from_pem(ca));
        if let Some(domain) = &self.domain {
            tls = tls.domain_name(domain.clone());
        }
        Ok(tls)
    }
}

impl Validate for ClientTlsFiles {
    fn validate(&self) -> Result<(), ConfigError> {
        std::fs::File::open(&self.ca).map(|_| ()).map_err(|error| {
            ConfigError::new(
                "ca",
                format!("cannot read {:?}: {error}", self.ca.display().to_string()),
            )
        })
    }
}
