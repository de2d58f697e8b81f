//! Rich `tonic::Status` builders, and the runtime's own error type.
//!
//! Each service crate has its own `thiserror` enum and one exhaustive
//! `From<ServiceError> for tonic::Status` (no `_ =>` arm) built from the helpers here, so
//! every error a client sees carries machine-readable details (google.rpc error_details):
//! the offending field, the missing resource, or when to retry.

use std::collections::HashMap;
use std::path::PathBuf;
use std::time::Duration;

use tonic::{Code, Status};
use tonic_types::{ErrorDetails, StatusExt as _};

/// `ErrorInfo.domain` of every error tenantmeter raises.
pub const ERROR_DOMAIN: &str = "tenantmeter";

/// INVALID_ARGUMENT naming the field: message `"<field>: <description>"`, plus a `BadRequest`
/// field violation. `field` is the request field path, e.g. `usage.input_tokens`.
#[must_use]
pub fn invalid_argument(field: &str, description: impl Into<String>) -> Status {
    let description = description.into();
    Status::with_error_details(
        Code::InvalidArgument,
        format!("{field}: {description}"),
        ErrorDetails::with_bad_request_violation(field, description),
    )
}

/// NOT_FOUND for one resource: message `<type> "<name>" not found`, plus `ResourceInfo`.
#[must_use]
pub fn not_found(resource_type: &str, name: &str) -> Status {
    Status::with_error_details(
        Code::NotFound,
        format!("{resource_type} {name:?} not found"),
        ErrorDetails::with_resource_info(resource_type, name, "", "not found"),
    )
}

/// RESOURCE_EXHAUSTED: a denial that says why and when to retry (ARCHITECTURE.md). `reason`
/// is a stable UPPER_SNAKE code clients may branch on (`TOKEN_RATE_LIMIT`, `BUDGET_EXCEEDED`),
/// `description` the sentence for people. Carries `ErrorInfo` (reason, domain) and `RetryInfo`.
#[must_use]
pub fn resource_exhausted(
    reason: &str,
    description: impl Into<String>,
    retry_after: Duration,
) -> Status {
    let mut details = ErrorDetails::with_retry_info(Some(retry_after));
    details.set_error_info(reason, ERROR_DOMAIN, HashMap::new());
    Status::with_error_details(
        Code::ResourceExhausted,
        format!(
            "{}; retry after {}",
            description.into(),
            humantime::format_duration(round_to_millis(retry_after))
        ),
        details,
    )
}

/// FAILED_PRECONDITION: the request is well-formed but the system's state
/// refuses it (an event too late to count). Carries `ErrorInfo` with `domain`
/// (e.g. `tenantmeter.meter`) and the stable `reason` clients branch on.
#[must_use]
pub fn failed_precondition(domain: &str, reason: &str, description: impl Into<String>) -> Status {
    let mut details = ErrorDetails::new();
    details.set_error_info(reason, domain, HashMap::new());
    Status::with_error_details(Code::FailedPrecondition, description.into(), details)
}

/// UNAVAILABLE because a dependency (`what`: "redis", "pricing service") is down, with
/// `RetryInfo` so well-behaved clients back off for `retry_after`.
#[must_use]
pub fn unavailable(what: &str, retry_after: Duration) -> Status {
    Status::with_error_details(
        Code::Unavailable,
        format!(
            "{what} is unavailable; retry after {}",
            humantime::format_duration(round_to_millis(retry_after))
        ),
        ErrorDetails::with_retry_info(Some(retry_after)),
    )
}

/// The `RetryInfo` delay carried by `status`, if any: how a caller (the gateway, a CLI)
/// reads the retry-after of a denial it received.
#[must_use]
pub fn retry_after(status: &Status) -> Option<Duration> {
    status.get_details_retry_info()?.retry_delay
}

/// The `ErrorInfo` reason carried by `status`, if any.
#[must_use]
pub fn error_reason(status: &Status) -> Option<String> {
    status.get_details_error_info().map(|info| info.reason)
}

fn round_to_millis(duration: Duration) -> Duration {
    Duration::from_millis(u64::try_from(duration.as_millis()).unwrap_or(u64::MAX))
}

/// Failures of the runtime itself: starting servers, clients and telemetry.
#[derive(Debug, thiserror::Error)]
pub enum RuntimeError {
    /// The listener given to `serve` has no local address.
    #[error("cannot read the listener's local address: {0}")]
    LocalAddr(#[source] std::io::Error),
    /// A TLS certificate or key file could not be read.
    #[error("cannot read TLS file {path}: {source}")]
    TlsFile {
        /// The file.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// The TLS material was rejected.
    #[error("invalid TLS configuration: {0}")]
    Tls(#[source] tonic::transport::Error),
    /// Building the reflection service failed (a malformed descriptor set: a build bug).
    #[error("cannot build the reflection service: {0}")]
    Reflection(#[from] tonic_reflection::server::Error),
    /// The gRPC server failed.
    #[error("gRPC server on {addr} failed: {source}")]
    Serve {
        /// The address it listened on.
        addr: std::net::SocketAddr,
        /// Why.
        #[source]
        source: tonic::transport::Error,
    },
    /// A client endpoint URI is malformed.
    #[error("invalid endpoint {endpoint:?}: {source}")]
    InvalidEndpoint {
        /// The endpoint as given.
        endpoint: String,
        /// Why.
        #[source]
        source: tonic::transport::Error,
    },
    /// Connecting a client failed.
    #[error("cannot connect to {endpoint}: {source}")]
    Connect {
        /// The endpoint.
        endpoint: String,
        /// Why.
        #[source]
        source: tonic::transport::Error,
    },
    /// Signal handlers could not be installed.
    #[error("cannot install signal handlers: {0}")]
    Signal(#[source] std::io::Error),
    /// The log filter did not parse (config validation normally catches this first).
    #[error("invalid log filter: {0}")]
    LogFilter(#[from] tracing_subscriber::filter::ParseError),
    /// OTLP export was asked for outside a Tokio runtime.
    #[error("exporting traces over OTLP needs a Tokio runtime: call telemetry::init inside one")]
    NoTokioRuntime,
    /// The OTLP exporter could not be built.
    #[error("cannot build the OTLP span exporter: {0}")]
    OtlpExporter(#[from] opentelemetry_otlp::ExporterBuildError),
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn invalid_argument_names_the_field() {
        let status = invalid_argument("usage.input_tokens", "must not be negative");
        assert_eq!(status.code(), Code::InvalidArgument);
        assert_eq!(status.message(), "usage.input_tokens: must not be negative");
        let violations = status.get_details_bad_request().unwrap().field_violations;
        assert_eq!(violations.len(), 1);
        assert_eq!(violations[0].field, "usage.input_tokens");
        assert_eq!(violations[0].description, "must not be negative");
    }

    #[test]
    fn not_found_carries_resource_info() {
        let status = not_found("tenant", "acme");
        assert_eq!(status.code(), Code::NotFound);
        assert_eq!(status.message(), "tenant \"acme\" not found");
        let info = status.get_details_resource_info().unwrap();
        assert_eq!(
            (info.resource_type.as_str(), info.resource_name.as_str()),
            ("tenant", "acme")
        );
    }

    #[test]
    fn resource_exhausted_says_why_and_when() {
        let status = resource_exhausted(
            "TOKEN_RATE_LIMIT",
            "tenant acme is over its token rate",
            Duration::from_millis(1500),
        );
        assert_eq!(status.code(), Code::ResourceExhausted);
        assert_eq!(
            status.message(),
            "tenant acme is over its token rate; retry after 1s 500ms"
        );
        assert_eq!(retry_after(&status), Some(Duration::from_millis(1500)));
        assert_eq!(error_reason(&status).as_deref(), Some("TOKEN_RATE_LIMIT"));
        assert_eq!(
            status.get_details_error_info().unwrap().domain,
            ERROR_DOMAIN
        );
    }

    #[test]
    fn unavailable_carries_retry_info() {
        let status = unavailable("redis", Duration::from_secs(2));
        assert_eq!(status.code(), Code::Unavailable);
        assert_eq!(status.message(), "redis is unavailable; retry after 2s");
        assert_eq!(retry_after(&status), Some(Duration::from_secs(2)));
        assert_eq!(retry_after(&Status::internal("x")), None);
    }

    #[test]
    fn details_survive_the_wire_encoding() {
        // What a client decodes: the status rebuilt from its HTTP headers.
        let sent = resource_exhausted("BUDGET_EXCEEDED", "budget spent", Duration::from_secs(60));
        let response = sent.into_http::<()>();
        let received = Status::from_header_map(response.headers()).unwrap();
        assert_eq!(retry_after(&received), Some(Duration::from_secs(60)));
        assert_eq!(error_reason(&received).as_deref(), Some("BUDGET_EXCEEDED"));
    }
}
