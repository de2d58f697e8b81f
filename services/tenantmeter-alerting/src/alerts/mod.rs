//! Alert history, silences and shadow mode (see `docs/alerting.md`, "Alert
//! history, silences, shadow mode").
//!
//! Start with [`id`]: an alert's id is derived from its instant and subject,
//! so the evaluator flushing the same transition twice (after a crash) stores
//! it once, and ids sort in the order alerts were raised. Then:
//!
//! - [`AlertStore`]: everything of this module in Redis, under the `{al}`
//!   hash tag. The history (`store.rs`): insert (idempotent per id), get,
//!   ListAlerts paging newest first with filters, Acknowledge, replay in id
//!   order, a feed of insertions for [`watch_alerts`], retention. Silences
//!   (`silences.rs`, with the pure [`silence_until`]) and shadow mode
//!   (`shadow.rs`, with the pure [`ShadowChange::from_request`] and
//!   [`is_shadow`]).
//! - [`watch_alerts`]: WatchAlerts' stream — replay after an id, then live,
//!   across replicas, ended with ABORTED when the consumer falls behind.
//!
//! [`AlertError`] is the one error of all of them; `tonic::Status::from`
//! turns it into the status a handler returns.

mod filter;
pub mod id;
mod shadow;
mod silences;
mod store;
mod watch;

use std::future::Future;
use std::time::Duration;

use tenantmeter_domain::ids::TenantId;
use tenantmeter_proto::v1 as pb;
use tenantmeter_runtime::error::{invalid_argument, not_found, unavailable};

use crate::budgets::{BudgetError, RETRY_AFTER, Subject};

pub use filter::AlertFilter;
pub use id::{alert_id, alert_id_ms, is_alert_id};
pub use shadow::{SHADOW_KEY, ShadowChange, is_shadow};
pub use silences::{MAX_SILENCE, SILENCES_KEY, silence_until};
pub use store::{
    ACKS_KEY, ALERTS_KEY, AlertStore, DEFAULT_PAGE_SIZE, FEED_KEY, FEED_MAX_LEN, FeedEntry,
    FeedRead, LEVELS_KEY, LIST_SCAN_LIMIT, MAX_ACKNOWLEDGE, MAX_PAGE_SIZE, ORDER_KEY,
    RETENTION_INTERVAL, TRIM_BATCH,
};
pub use watch::{AlertStream, WatchConfig, watch_alerts};

/// Longest `acknowledged_by` / `silenced_by` accepted, in bytes: who did it,
/// an e-mail address or a name, not a document.
pub const MAX_BY_LEN: usize = 256;
/// Longest comment accepted, in bytes: the history is kept in one Redis slot,
/// so free text stays bounded.
pub const MAX_COMMENT_LEN: usize = 4_096;

/// Failures of the alert history, silences, shadow mode and watchers.
#[derive(Debug, thiserror::Error)]
pub enum AlertError {
    /// A request field is invalid; `field` is its path in the request
    /// (`page_size`, `subjects[2].tenant_id`, `duration`).
    #[error("{field}: {reason}")]
    Invalid {
        /// Request field path.
        field: String,
        /// What is wrong with it.
        reason: String,
    },
    /// No alert with this id (never raised, or past the history's retention).
    #[error("alert {0:?} not found")]
    NotFound(String),
    /// Redis answered with an error or dropped the connection.
    #[error("redis: {0}")]
    Redis(#[from] redis::RedisError),
    /// Redis did not answer within the store's timeout.
    #[error("redis did not answer within {0:?}")]
    Timeout(Duration),
    /// Stored data that this code did not write (or a newer layout).
    #[error("stored alert data is corrupt: {0}")]
    Corrupt(String),
    /// A watcher's consumer left more than `capacity` alerts unread (or the
    /// insertion feed moved past it): it is ended rather than buffered without
    /// bound, and resumes from the last id it received.
    #[error(
        "the watcher fell too far behind (more than {capacity} alerts unread); \
         resume with after_alert_id set to the last alert id received"
    )]
    FellBehind {
        /// Alerts the watcher may buffer.
        capacity: usize,
    },
    /// This replica is shutting down; the watcher resumes on another one.
    #[error("this alerting replica is shutting down")]
    ShuttingDown,
}

impl AlertError {
    /// An [`AlertError::Invalid`] about `field`.
    pub fn invalid(field: impl Into<String>, reason: impl Into<String>) -> Self {
        Self::Invalid {
            field: field.into(),
            reason: reason.into(),
        }
    }

    /// The request field an `Invalid` error names.
    #[must_use]
    pub fn field(&self) -> Option<&str> {
        match self {
            Self::Invalid { field, .. } => Some(field),
            Self::NotFound(_)
            | Self::Redis(_)
            | Self::Timeout(_)
            | Self::Corrupt(_)
            | Self::FellBehind { .. }
            | Self::ShuttingDown => None,
        }
    }

    /// True for the errors worth retrying as they are (Redis down or slow).
    #[must_use]
    pub const fn is_transient(&self) -> bool {
        match self {
            Self::Redis(_) | Self::Timeout(_) => true,
            Self::Invalid { .. }
            | Self::NotFound(_)
            | Self::Corrupt(_)
            | Self::FellBehind { .. }
            | Self::ShuttingDown => false,
        }
    }
}

impl From<AlertError> for tonic::Status {
    fn from(error: AlertError) -> Self {
        // Exhaustive on purpose: a new variant must decide its status here.
        match error {
            AlertError::Invalid { field, reason } => invalid_argument(&field, reason),
            AlertError::NotFound(id) => not_found("alert", &id),
            AlertError::Redis(error) => {
                tracing::warn!(%error, "alert store redis error");
                unavailable("redis", RETRY_AFTER)
            }
            AlertError::Timeout(after) => {
                tracing::warn!(?after, "alert store redis timeout");
                unavailable("redis", RETRY_AFTER)
            }
            corrupt @ AlertError::Corrupt(_) => {
                tracing::error!(error = %corrupt, "alert store data");
                // Not the caller's fault and not worth retrying: INTERNAL.
                Self::internal(corrupt.to_string())
            }
            behind @ AlertError::FellBehind { .. } => Self::aborted(behind.to_string()),
            AlertError::ShuttingDown => unavailable("this alerting replica", RETRY_AFTER),
        }
    }
}

/// The contract's `TenantOrFleet` at request field `field`, as an alert error.
pub(crate) fn subject_at(
    subject: Option<&pb::TenantOrFleet>,
    field: &str,
) -> Result<Subject, AlertError> {
    Subject::from_proto(subject, field).map_err(|error| match error {
        BudgetError::Invalid { field, reason } => AlertError::Invalid { field, reason },
        // Parsing a subject only ever refuses it; should that change, the
        // refusal still names the field.
        other @ (BudgetError::NotFound(_)
        | BudgetError::Redis(_)
        | BudgetError::Timeout(_)
        | BudgetError::Corrupt(_)) => AlertError::invalid(field, other.to_string()),
    })
}

/// The Redis field naming a subject: `!fleet`, or the tenant id. `!` is not a
/// tenant id character, so the fleet never collides with a tenant.
pub(crate) fn subject_key(subject: &Subject) -> &str {
    match subject {
        Subject::Fleet => FLEET_KEY,
        Subject::Tenant(id) => id.as_str(),
    }
}

/// The subject a [`subject_key`] names, or `None` if it is not one.
pub(crate) fn subject_from_key(key: &str) -> Option<Subject> {
    if key == FLEET_KEY {
        Some(Subject::Fleet)
    } else {
        TenantId::parse(key).ok().map(Subject::Tenant)
    }
}

const FLEET_KEY: &str = "!fleet";

/// Checks a free-text request field against its length bound.
pub(crate) fn check_text(field: &str, text: &str, max: usize) -> Result<(), AlertError> {
    if text.len() > max {
        return Err(AlertError::invalid(
            field,
            format!("must be at most {max} bytes, got {}", text.len()),
        ));
    }
    Ok(())
}

/// `call` bounded by `timeout`: a Redis that hangs (a partition, a stuck
/// failover) must become an UNAVAILABLE answer, never a hung RPC.
pub(crate) async fn bounded<T>(
    timeout: Duration,
    call: impl Future<Output = Result<T, redis::RedisError>>,
) -> Result<T, AlertError> {
    match tokio::time::timeout(timeout, call).await {
        Ok(result) => Ok(result?),
        Err(_elapsed) => Err(AlertError::Timeout(timeout)),
    }
}
