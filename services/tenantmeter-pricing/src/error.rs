//! The pricing service's errors and their one mapping to gRPC status codes.

use std::time::Duration;

use tenantmeter_domain::pricebook::ChangeError;
use tenantmeter_domain::quote::QuoteError;
use tenantmeter_runtime::error as status;
use tonic::Status;

use crate::store::StoreError;

/// How long a caller should wait before retrying when Redis is unavailable.
const REDIS_RETRY_AFTER: Duration = Duration::from_secs(1);

/// Everything that can go wrong in the pricing service.
#[derive(Debug, thiserror::Error)]
pub enum PricingError {
    /// A request field is malformed, negative or too large.
    #[error("{field}: {reason}")]
    InvalidArgument {
        /// Path of the field, e.g. `lines[0].usage.input_tokens`.
        field: String,
        /// What is wrong with it.
        reason: String,
    },
    /// A model, plan or price the request names does not exist.
    #[error("{resource} {name:?} not found")]
    NotFound {
        /// Kind of thing, e.g. "model price".
        resource: &'static str,
        /// Its name as the caller wrote it, with the field path.
        name: String,
    },
    /// The price book in Redis could not be read or written.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// Other replicas kept committing first; the change was not applied.
    #[error("the price book kept changing under this update; retry")]
    Contended,
}

impl From<QuoteError> for PricingError {
    fn from(error: QuoteError) -> Self {
        match &error {
            QuoteError::UnknownModel { field, key } => Self::NotFound {
                resource: "model price",
                name: format!("{key} ({field})"),
            },
            QuoteError::UnknownPlan(plan) => Self::NotFound {
                resource: "plan",
                name: plan.to_string(),
            },
            QuoteError::UnpricedTokenKind { field, .. } | QuoteError::Overflow { field } => {
                Self::InvalidArgument {
                    field: field.clone(),
                    reason: error
                        .to_string()
                        .split_once(": ")
                        .map_or_else(|| error.to_string(), |(_, reason)| reason.to_owned()),
                }
            }
        }
    }
}

impl From<ChangeError> for PricingError {
    fn from(error: ChangeError) -> Self {
        match error {
            ChangeError::UnknownPlan { index, plan } => Self::NotFound {
                resource: "plan",
                name: format!("{plan} (assignments[{index}].plan_id)"),
            },
            ChangeError::InvalidPlan(plan_error) => Self::InvalidArgument {
                field: format!("plan.{}", plan_error.field),
                reason: plan_error.reason,
            },
        }
    }
}

impl From<PricingError> for Status {
    fn from(error: PricingError) -> Self {
        match error {
            PricingError::InvalidArgument { field, reason } => {
                status::invalid_argument(&field, reason)
            }
            PricingError::NotFound { resource, name } => status::not_found(resource, &name),
            PricingError::Store(StoreError::Redis(error)) => {
                tracing::warn!(%error, "redis error");
                status::unavailable("redis", REDIS_RETRY_AFTER)
            }
            PricingError::Store(corrupt @ StoreError::Corrupt { .. }) => {
                tracing::error!(error = %corrupt, "stored price book is corrupt");
                Status::data_loss(corrupt.to_string())
            }
            PricingError::Contended => Status::aborted(error.to_string()),
        }
    }
}
