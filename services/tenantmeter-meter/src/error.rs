//! The meter's errors and their one mapping to gRPC status codes.

use std::time::Duration;

use tenantmeter_runtime::error as status;
use tonic::Status;

use crate::store::StoreError;

/// How long a caller should wait before retrying when Redis is unavailable.
const REDIS_RETRY_AFTER: Duration = Duration::from_secs(1);

/// Everything that can go wrong in the meter.
#[derive(Debug, thiserror::Error)]
pub enum MeterError {
    /// A request field is malformed, negative or too large.
    #[error("{field}: {reason}")]
    InvalidArgument {
        /// Path of the field.
        field: String,
        /// What is wrong with it.
        reason: String,
    },
    /// The event cannot be counted (too late, in the future, unpriced).
    #[error("{reason}: {message}")]
    Rejected {
        /// The contract's UsageRejectReason name.
        reason: &'static str,
        /// Detail.
        message: String,
    },
    /// An instant outside what the meter retains.
    #[error("{0}")]
    OutOfRange(String),
    /// The meter holds no price book yet (pricing unreachable since start).
    #[error("no price book yet: the pricing service has not been reached")]
    NoPriceBook,
    /// Redis failed or was too slow.
    #[error(transparent)]
    Store(#[from] StoreError),
}

impl MeterError {
    /// An invalid field.
    pub fn invalid(field: impl Into<String>, reason: impl ToString) -> Self {
        Self::InvalidArgument {
            field: field.into(),
            reason: reason.to_string(),
        }
    }
}

impl From<MeterError> for Status {
    fn from(error: MeterError) -> Self {
        match error {
            MeterError::InvalidArgument { field, reason } => {
                status::invalid_argument(&field, reason)
            }
            MeterError::Rejected { reason, message } => status::failed_precondition(
                "tenantmeter.meter",
                reason,
                format!("{reason}: {message}"),
            ),
            MeterError::OutOfRange(message) => Status::out_of_range(message),
            MeterError::NoPriceBook => {
                status::unavailable("the price book (pricing service)", REDIS_RETRY_AFTER)
            }
            MeterError::Store(StoreError::Redis(error)) => {
                tracing::warn!(%error, "redis error");
                status::unavailable("redis", REDIS_RETRY_AFTER)
            }
            MeterError::Store(StoreError::Timeout(after)) => {
                tracing::warn!(?after, "redis timed out");
                status::unavailable("redis", REDIS_RETRY_AFTER)
            }
            MeterError::Store(reply @ StoreError::Reply(_)) => {
                tracing::error!(error = %reply, "unexpected redis reply");
                Status::internal(reply.to_string())
            }
        }
    }
}
