//! Why a tenant call failed, and the one mapping of that to a gRPC status
//! (gateway.proto documents the codes): every status carries
//! `google.rpc.ErrorInfo` with domain `tenantmeter.gateway`, the
//! `GatewayErrorReason` name, and the tenant and level when known.

use std::collections::HashMap;
use std::time::Duration;

use tenantmeter_proto::v1::{DenyReason, GatewayErrorReason, Level};
use tonic::metadata::MetadataValue;
use tonic::{Code, Status};
use tonic_types::{ErrorDetails, FieldViolation, StatusExt as _};

use crate::convert::ViolationKind;
use crate::upstream::{UpstreamError, UpstreamKind};

/// `ErrorInfo.domain` of the gateway's errors.
pub const ERROR_DOMAIN: &str = "tenantmeter.gateway";

/// How long a caller should wait before retrying when the meter is down.
const METER_RETRY: Duration = Duration::from_secs(1);

pub use crate::convert::FieldViolation as Violation;

/// A tenant call that did not succeed.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum CallError {
    /// Missing, malformed, unknown or expired key.
    #[error("invalid or missing API key")]
    InvalidKey,
    /// The tenant is disabled.
    #[error("tenant is disabled: {reason}")]
    TenantDisabled {
        /// Why, as the admin gave it.
        reason: String,
    },
    /// The request is invalid.
    #[error("invalid request")]
    InvalidRequest(Vec<Violation>),
    /// The request or a part of it is too large.
    #[error("payload too large")]
    PayloadTooLarge(Violation),
    /// The tenant has no such alias.
    #[error("unknown model alias {0:?}")]
    UnknownAlias(String),
    /// The alias has no usable profile in the serving region.
    #[error("model alias {alias:?} has no inference profile in {region}")]
    ProfileNotProvisioned {
        /// The alias.
        alias: String,
        /// The gateway's region.
        region: String,
    },
    /// The meter denied the reservation.
    #[error("{message}")]
    Throttled {
        /// Why.
        reason: DenyReason,
        /// The meter's sentence.
        message: String,
        /// When a retry may be admitted; `None` when waiting does not help.
        retry_after: Option<Duration>,
        /// The tenant's level the meter reported with the denial.
        level: Level,
    },
    /// The meter could not be reached and the gateway fails closed.
    #[error("the meter is unavailable")]
    MeterUnavailable,
    /// The registry could not be read.
    #[error("tenant registry unavailable: {0}")]
    RegistryUnavailable(String),
    /// Bedrock failed the call.
    #[error(transparent)]
    Upstream(#[from] UpstreamError),
    /// The client went away; consumed usage is still settled.
    #[error("the client cancelled the call")]
    Cancelled,
}

impl From<Vec<Violation>> for CallError {
    /// A request's violations: PAYLOAD_TOO_LARGE when one is a size limit
    /// (the request must shrink, whatever else is wrong), else INVALID_REQUEST.
    fn from(violations: Vec<Violation>) -> Self {
        match violations
            .iter()
            .find(|v| v.kind == ViolationKind::TooLarge)
        {
            Some(too_large) => Self::PayloadTooLarge(too_large.clone()),
            None => Self::InvalidRequest(violations),
        }
    }
}

/// Who the failed call was for, when the gateway knew.
#[derive(Debug, Clone, Copy, Default)]
pub struct ErrorContext<'a> {
    /// The tenant, once authenticated.
    pub tenant_id: Option<&'a str>,
    /// The tenant's level, once the meter answered.
    pub level: Level,
}

impl CallError {
    /// The reason this error is reported under.
    pub fn reason(&self) -> GatewayErrorReason {
        match self {
            Self::InvalidKey => GatewayErrorReason::InvalidKey,
            Self::TenantDisabled { .. } => GatewayErrorReason::TenantDisabled,
            Self::InvalidRequest(_) => GatewayErrorReason::InvalidRequest,
            Self::PayloadTooLarge(_) => GatewayErrorReason::PayloadTooLarge,
            Self::UnknownAlias(_) => GatewayErrorReason::UnknownModelAlias,
            Self::ProfileNotProvisioned { .. } => GatewayErrorReason::ProfileNotProvisioned,
            Self::Throttled { .. } => GatewayErrorReason::TenantThrottled,
            Self::MeterUnavailable | Self::RegistryUnavailable(_) => {
                GatewayErrorReason::MeterUnavailable
            }
            Self::Upstream(upstream) => match upstream.kind {
                UpstreamKind::Throttled => GatewayErrorReason::UpstreamThrottled,
                UpstreamKind::QuotaExceeded => GatewayErrorReason::UpstreamQuotaExceeded,
                UpstreamKind::Validation => GatewayErrorReason::UpstreamValidation,
                UpstreamKind::AccessDenied => GatewayErrorReason::UpstreamAccessDenied,
                UpstreamKind::NotFound => GatewayErrorReason::UpstreamNotFound,
                UpstreamKind::Timeout => GatewayErrorReason::UpstreamTimeout,
                UpstreamKind::Unavailable => GatewayErrorReason::UpstreamUnavailable,
                UpstreamKind::ModelNotReady => GatewayErrorReason::UpstreamModelNotReady,
                UpstreamKind::ModelError => GatewayErrorReason::UpstreamModelError,
            },
            Self::Cancelled => GatewayErrorReason::Unspecified,
        }
    }

    /// The gRPC code gateway.proto promises for this error.
    pub fn code(&self) -> Code {
        match self {
            Self::InvalidKey => Code::Unauthenticated,
            Self::TenantDisabled { .. } => Code::PermissionDenied,
            Self::InvalidRequest(_) | Self::PayloadTooLarge(_) => Code::InvalidArgument,
            Self::UnknownAlias(_) => Code::NotFound,
            Self::ProfileNotProvisioned { .. } => Code::FailedPrecondition,
            Self::Throttled { .. } => Code::ResourceExhausted,
            Self::MeterUnavailable | Self::RegistryUnavailable(_) => Code::Unavailable,
            Self::Cancelled => Code::Cancelled,
            Self::Upstream(upstream) => match upstream.kind {
                // A rate (retry later) and a quota (do not) are both exhaustion;
                // the reason tells them apart.
                UpstreamKind::Throttled | UpstreamKind::QuotaExceeded => Code::ResourceExhausted,
                UpstreamKind::Validation => Code::InvalidArgument,
                UpstreamKind::AccessDenied => Code::PermissionDenied,
                UpstreamKind::NotFound => Code::NotFound,
                UpstreamKind::Timeout => Code::DeadlineExceeded,
                // A model that is loading will serve soon: transient, like a 503.
                UpstreamKind::Unavailable | UpstreamKind::ModelNotReady => Code::Unavailable,
                // The model failed on this very request: retrying it unchanged
                // is unlikely to help, so not UNAVAILABLE.
                UpstreamKind::ModelError => Code::Internal,
            },
        }
    }

    fn message(&self) -> String {
        match self {
            Self::InvalidRequest(violations) => violations
                .iter()
                .map(|v| format!("{}: {}", v.field, v.description))
                .collect::<Vec<_>>()
                .join("; "),
            Self::PayloadTooLarge(v) => format!("{}: {}", v.field, v.description),
            Self::ProfileNotProvisioned { alias, region } => format!(
                "model alias {alias:?} has no active inference profile in {region}; run ProvisionProfiles"
            ),
            // Bedrock's own words, so a tenant sees what Bedrock said.
            Self::Upstream(upstream) => format!("Bedrock {}: {}", upstream.code, upstream.message),
            Self::InvalidKey
            | Self::TenantDisabled { .. }
            | Self::UnknownAlias(_)
            | Self::Throttled { .. }
            | Self::MeterUnavailable
            | Self::RegistryUnavailable(_)
            | Self::Cancelled => self.to_string(),
        }
    }

    /// The status a client sees.
    pub fn to_status(&self, mut context: ErrorContext<'_>) -> Status {
        if let Self::Throttled { level, .. } = self
            && context.level == Level::Unspecified
        {
            context.level = *level;
        }
        let mut info = HashMap::new();
        if let Some(tenant_id) = context.tenant_id {
            info.insert("tenant_id".to_owned(), tenant_id.to_owned());
        }
        if context.level != Level::Unspecified {
            info.insert("level".to_owned(), context.level.as_str_name().to_owned());
        }
        let mut details = ErrorDetails::new();
        let mut retry = None;
        match self {
            Self::InvalidRequest(violations) => {
                details.set_bad_request(
                    violations
                        .iter()
                        .map(|v| FieldViolation::new(&v.field, &v.description))
                        .collect::<Vec<_>>(),
                );
            }
            Self::PayloadTooLarge(v) => {
                details.set_bad_request(vec![FieldViolation::new(&v.field, &v.description)]);
            }
            Self::Throttled {
                reason,
                retry_after,
                ..
            } => {
                info.insert("deny_reason".to_owned(), reason.as_str_name().to_owned());
                if let Some(after) = retry_after {
                    info.insert("retry_after_ms".to_owned(), millis(*after).to_string());
                    details.set_retry_info(Some(*after));
                    retry = Some(*after);
                }
            }
            Self::MeterUnavailable | Self::RegistryUnavailable(_) => {
                details.set_retry_info(Some(METER_RETRY));
            }
            Self::InvalidKey
            | Self::TenantDisabled { .. }
            | Self::UnknownAlias(_)
            | Self::ProfileNotProvisioned { .. }
            | Self::Upstream(_)
            | Self::Cancelled => {}
        }
        details.set_error_info(self.reason().as_str_name(), ERROR_DOMAIN, info);
        let mut status = Status::with_error_details(self.code(), self.message(), details);
        if let Self::Throttled { reason, .. } = self {
            // For clients that do not decode status details (grpcurl, curl-ish tools).
            let metadata = status.metadata_mut();
            if let Some(after) = retry
                && let Ok(value) = MetadataValue::try_from(millis(after).to_string())
            {
                metadata.insert("retry-after-ms", value);
            }
            if let Ok(value) = MetadataValue::try_from(reason.as_str_name()) {
                metadata.insert("tenantmeter-deny-reason", value);
            }
            if let Ok(value) = MetadataValue::try_from(context.level.as_str_name()) {
                metadata.insert("tenantmeter-level", value);
            }
        }
        status
    }
}

fn millis(duration: Duration) -> u64 {
    u64::try_from(duration.as_millis()).unwrap_or(u64::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn upstream(code: &str) -> CallError {
        CallError::Upstream(UpstreamError::from_code(code, "Bedrock's words"))
    }

    #[test]
    fn every_bedrock_error_type_has_its_own_code_and_reason() {
        let cases = [
            (
                "ThrottlingException",
                Code::ResourceExhausted,
                GatewayErrorReason::UpstreamThrottled,
            ),
            (
                "throttlingException",
                Code::ResourceExhausted,
                GatewayErrorReason::UpstreamThrottled,
            ),
            (
                "ServiceQuotaExceededException",
                Code::ResourceExhausted,
                GatewayErrorReason::UpstreamQuotaExceeded,
            ),
            (
                "ValidationException",
                Code::InvalidArgument,
                GatewayErrorReason::UpstreamValidation,
            ),
            (
                "AccessDeniedException",
                Code::PermissionDenied,
                GatewayErrorReason::UpstreamAccessDenied,
            ),
            (
                "ResourceNotFoundException",
                Code::NotFound,
                GatewayErrorReason::UpstreamNotFound,
            ),
            (
                "ModelTimeoutException",
                Code::DeadlineExceeded,
                GatewayErrorReason::UpstreamTimeout,
            ),
            (
                "ServiceUnavailableException",
                Code::Unavailable,
                GatewayErrorReason::UpstreamUnavailable,
            ),
            (
                "InternalServerException",
                Code::Unavailable,
                GatewayErrorReason::UpstreamUnavailable,
            ),
            (
                "ModelNotReadyException",
                Code::Unavailable,
                GatewayErrorReason::UpstreamModelNotReady,
            ),
            (
                "ModelErrorException",
                Code::Internal,
                GatewayErrorReason::UpstreamModelError,
            ),
            (
                "modelStreamErrorException",
                Code::Internal,
                GatewayErrorReason::UpstreamModelError,
            ),
        ];
        for (code, grpc, reason) in cases {
            let error = upstream(code);
            assert_eq!(error.code(), grpc, "{code}");
            assert_eq!(error.reason(), reason, "{code}");
            let status = error.to_status(ErrorContext {
                tenant_id: Some("acme"),
                level: Level::Yellow,
            });
            assert!(status.message().contains("Bedrock's words"), "{code}");
            let info = status.get_details_error_info().unwrap();
            assert_eq!(info.domain, ERROR_DOMAIN);
            assert_eq!(info.reason, reason.as_str_name());
            assert_eq!(info.metadata["tenant_id"], "acme");
            assert_eq!(info.metadata["level"], "LEVEL_YELLOW");
        }
    }

    #[test]
    fn a_tenant_throttle_and_an_upstream_throttle_are_told_apart() {
        let tenant = CallError::Throttled {
            reason: DenyReason::TokenRateLimit,
            message: "token rate limit reached".into(),
            retry_after: Some(Duration::from_millis(1_500)),
            level: Level::Red,
        }
        .to_status(ErrorContext::default());
        let upstream = upstream("ThrottlingException").to_status(ErrorContext::default());
        assert_eq!(tenant.code(), upstream.code());
        assert_ne!(
            tenant.get_details_error_info().unwrap().reason,
            upstream.get_details_error_info().unwrap().reason
        );
        assert_eq!(tenant.metadata().get("retry-after-ms").unwrap(), "1500");
        assert_eq!(
            tenant.metadata().get("tenantmeter-level").unwrap(),
            "LEVEL_RED"
        );
        assert!(upstream.metadata().get("retry-after-ms").is_none());
    }

    #[test]
    fn a_size_violation_wins_over_other_violations() {
        let error = CallError::from(vec![
            Violation::invalid("messages[0].role", "required"),
            Violation::too_large("messages", "1001 messages; at most 1000"),
        ]);
        assert_eq!(error.reason(), GatewayErrorReason::PayloadTooLarge);
    }
}
