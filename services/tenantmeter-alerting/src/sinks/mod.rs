//! Notification sinks: webhooks that receive alerts, and the delivery of each
//! alert to them, exactly once per (alert, sink) whatever the number of
//! alerting replicas (see `docs/alerting.md`, "Notifications").
//!
//! Start with:
//! - [`SinkQueue`]: the handle the service passes around: the proto-speaking
//!   calls of the sink RPCs, `enqueue`, `deliveries`, and the worker.
//! - [`UpsertSink::from_proto`]: UpsertSink's validation; every refusal names
//!   the request field (`sink.webhook_url`, `sink.subjects[2].tenant_id`,
//!   `secret`).
//! - [`SinkStore`]: sinks, their secrets and health, and the delivery queue in
//!   Redis. [`SinkStore::enqueue`] is what the evaluator calls once per raised
//!   alert; [`SinkStore::deliveries`] fills `Alert.deliveries`.
//! - [`Notifier`]: the worker each replica runs; it claims due deliveries,
//!   POSTs them signed, retries with backoff and keeps each sink's health.
//!   [`Notifier::test_sink`] answers TestSink.
//! - [`webhook`]: the body (proto3 JSON of `WebhookNotification`), the headers
//!   and [`verify_signature`], what a receiver runs.
//!
//! [`SinkError`] is the one error of all of them; `tonic::Status::from` turns
//! it into the status a gRPC handler returns.

mod notifier;
mod queue;
mod store;
pub mod webhook;

use std::net::IpAddr;
use std::time::Duration;

use tenantmeter_domain::levels::Level;
use tenantmeter_proto::v1 as pb;
use tenantmeter_runtime::error::{invalid_argument, not_found, unavailable};

use crate::budgets::{BudgetError, RETRY_AFTER, Subject, ms_to_timestamp};

pub use notifier::{Notifier, NotifierConfig, backoff_after};
pub use queue::SinkQueue;
pub use store::{
    BODY_KEY_PREFIX, DELIVERY_KEY_PREFIX, DELIVERY_RETENTION, DUE_KEY, EnqueueOutcome,
    MAX_ALERT_ID_LEN, SECRETS_KEY, SINKS_KEY, STATE_KEY, SinkStore, due_member,
};
pub use webhook::{notification_id, verify_signature};

/// Longest sink id: `[A-Za-z0-9._-]{1,64}`.
pub const MAX_SINK_ID_LEN: usize = 64;
/// Longest display name, in characters.
pub const MAX_DISPLAY_NAME_CHARS: usize = 200;
/// Longest webhook URL, in bytes.
pub const MAX_URL_LEN: usize = 2_048;
/// Most subjects a sink may be limited to.
pub const MAX_SUBJECTS: usize = 1_000;
/// Shortest signing secret, in bytes: 256 bits, the HMAC-SHA256 key size.
pub const MIN_SECRET_LEN: usize = 32;
/// Longest signing secret, in bytes (keeps records and scripts' arguments small).
pub const MAX_SECRET_LEN: usize = 1_024;

/// A notification sink's configuration, validated. What UpsertSink sets; the
/// output-only fields (health, times, `secret_set`) live in [`StoredSink`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Sink {
    /// `[A-Za-z0-9._-]{1,64}`; the key.
    pub sink_id: String,
    /// Human name, at most [`MAX_DISPLAY_NAME_CHARS`] characters.
    pub display_name: String,
    /// https URL (plain http only to loopback hosts).
    pub webhook_url: String,
    /// Disabled sinks receive nothing, and their pending deliveries are dropped.
    pub enabled: bool,
    /// Only alerts whose from or to level is at least this; `None`: all.
    pub min_level: Option<Level>,
    /// Only alerts about these subjects; empty: every tenant and the fleet.
    pub subjects: Vec<Subject>,
}

/// A sink's HMAC-SHA256 signing key. Write-only in the contract, so its
/// `Debug` never prints it.
#[derive(Clone, PartialEq, Eq)]
pub struct SinkSecret(String);

impl std::fmt::Debug for SinkSecret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("SinkSecret(<redacted>)")
    }
}

/// A validated UpsertSinkRequest.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UpsertSink {
    /// The sink's configuration.
    pub sink: Sink,
    /// The new secret; `None` keeps the stored one (refused when creating).
    pub secret: Option<SinkSecret>,
}

/// Whether deliveries to a sink are going well.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum HealthState {
    /// Nothing delivered or failed yet (or reset by re-enabling the sink).
    #[default]
    Unknown,
    /// The last delivery succeeded.
    Healthy,
    /// The last delivery failed after all its attempts.
    Failing,
}

/// How deliveries to a sink have gone: the contract's `SinkHealth`. Only a
/// delivery's final outcome counts, not each attempt.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SinkHealth {
    /// Healthy, failing, or nothing yet.
    pub state: HealthState,
    /// Deliveries that failed in a row (after all their attempts).
    pub consecutive_failures: u32,
    /// Last successful delivery, Unix ms.
    pub last_success_at_ms: Option<i64>,
    /// Last failed delivery, Unix ms.
    pub last_failure_at_ms: Option<i64>,
    /// Error of the last failed delivery.
    pub last_error: String,
}

/// A sink as stored, with what the store adds; what ListSinks returns. It
/// never holds the secret, only whether one is set.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredSink {
    /// The configuration.
    pub sink: Sink,
    /// True when a signing secret is stored.
    pub secret_set: bool,
    /// How deliveries have gone.
    pub health: SinkHealth,
    /// When it was first created, Unix ms (kept by replaces).
    pub created_at_ms: i64,
    /// When it was last upserted, Unix ms.
    pub updated_at_ms: i64,
}

/// Failures of sinks and deliveries: a bad request, an unknown sink, Redis,
/// and the few internal failures that are no caller's fault.
#[derive(Debug, thiserror::Error)]
pub enum SinkError {
    /// A request field is invalid; `field` is its path in the request
    /// (`sink.webhook_url`, `secret`, `sink.subjects[2].tenant_id`).
    #[error("{field}: {reason}")]
    Invalid {
        /// Request field path.
        field: String,
        /// What is wrong with it.
        reason: String,
    },
    /// No sink with that id.
    #[error("sink {0:?} not found")]
    NotFound(String),
    /// Redis answered with an error or dropped the connection.
    #[error("redis: {0}")]
    Redis(#[from] redis::RedisError),
    /// Redis did not answer within the store's timeout.
    #[error("redis did not answer within {0:?}")]
    Timeout(Duration),
    /// Stored data that this code did not write (or a newer layout).
    #[error("stored sink data is corrupt: {0}")]
    Corrupt(String),
    /// The webhook body could not be built (a descriptor set without
    /// `WebhookNotification`: a build bug).
    #[error("cannot encode the webhook body: {0}")]
    Encoding(String),
}

impl SinkError {
    /// A [`SinkError::Invalid`] about `field`.
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
            | Self::Encoding(_) => None,
        }
    }
}

impl From<SinkError> for tonic::Status {
    fn from(error: SinkError) -> Self {
        // Exhaustive on purpose: a new variant must decide its status here.
        match error {
            SinkError::Invalid { field, reason } => invalid_argument(&field, reason),
            SinkError::NotFound(id) => not_found("sink", &id),
            SinkError::Redis(error) => {
                tracing::warn!(%error, "sink store redis error");
                unavailable("redis", RETRY_AFTER)
            }
            SinkError::Timeout(after) => {
                tracing::warn!(?after, "sink store redis timeout");
                unavailable("redis", RETRY_AFTER)
            }
            internal @ (SinkError::Corrupt(_) | SinkError::Encoding(_)) => {
                tracing::error!(error = %internal, "sinks");
                // Not the caller's fault and not worth retrying: INTERNAL.
                Self::internal(internal.to_string())
            }
        }
    }
}

/// `Subject::from_proto` speaks `BudgetError`; only its `Invalid` can come
/// out of parsing, the other arms are there so a new variant is a compile
/// error rather than a silent mapping.
fn from_budget_error(error: BudgetError) -> SinkError {
    match error {
        BudgetError::Invalid { field, reason } => SinkError::Invalid { field, reason },
        BudgetError::NotFound(name) => SinkError::Corrupt(format!("budget {name:?} not found")),
        BudgetError::Redis(error) => SinkError::Redis(error),
        BudgetError::Timeout(after) => SinkError::Timeout(after),
        BudgetError::Corrupt(why) => SinkError::Corrupt(why),
    }
}

/// Checks a sink id against `[A-Za-z0-9._-]{1,64}`; errors name `field`.
///
/// # Errors
/// Empty, too long, or a character outside the alphabet.
pub fn validate_sink_id(sink_id: &str, field: &str) -> Result<(), SinkError> {
    if sink_id.is_empty() {
        return Err(SinkError::invalid(field, "must not be empty"));
    }
    if sink_id.len() > MAX_SINK_ID_LEN {
        return Err(SinkError::invalid(
            field,
            format!(
                "is {} characters long; at most {MAX_SINK_ID_LEN} are allowed",
                sink_id.chars().count()
            ),
        ));
    }
    if let Some((position, found)) = sink_id
        .chars()
        .enumerate()
        .find(|(_, c)| !(c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-')))
    {
        return Err(SinkError::invalid(
            field,
            format!(
                "has {found:?} at position {position}; allowed: letters, digits, '.', '_' and '-'"
            ),
        ));
    }
    Ok(())
}

/// Checks a webhook URL: https, or plain http only to a loopback host
/// (127.0.0.0/8, ::1, localhost), without credentials. Errors name `field`.
///
/// # Errors
/// Too long, unparsable, another scheme, plain http to a non-loopback host,
/// or a user name or password in the URL.
pub fn validate_webhook_url(url: &str, field: &str) -> Result<(), SinkError> {
    if url.is_empty() {
        return Err(SinkError::invalid(field, "is required"));
    }
    if url.len() > MAX_URL_LEN {
        return Err(SinkError::invalid(
            field,
            format!(
                "is {} bytes long; at most {MAX_URL_LEN} are allowed",
                url.len()
            ),
        ));
    }
    let parsed = reqwest::Url::parse(url)
        .map_err(|e| SinkError::invalid(field, format!("is not a valid URL: {e}")))?;
    let Some(host) = parsed.host_str() else {
        return Err(SinkError::invalid(field, "has no host"));
    };
    // Credentials in the URL would be returned by ListSinks to anyone who can
    // read the configuration; the signature is how a receiver authenticates us.
    if !parsed.username().is_empty() || parsed.password().is_some() {
        return Err(SinkError::invalid(
            field,
            "must not carry a user name or password; receivers authenticate by the signature",
        ));
    }
    match parsed.scheme() {
        "https" => Ok(()),
        "http" if is_loopback_host(host) => Ok(()),
        "http" => Err(SinkError::invalid(
            field,
            format!("must be https; plain http is allowed only to loopback hosts, not {host:?}"),
        )),
        other => Err(SinkError::invalid(
            field,
            format!("must be an https URL, not {other:?}"),
        )),
    }
}

/// `localhost`, 127.0.0.0/8 or ::1 (`host_str` brackets IPv6 addresses).
fn is_loopback_host(host: &str) -> bool {
    if host.eq_ignore_ascii_case("localhost") {
        return true;
    }
    let bare = host
        .strip_prefix('[')
        .and_then(|h| h.strip_suffix(']'))
        .unwrap_or(host);
    bare.parse::<IpAddr>().is_ok_and(|ip| ip.is_loopback())
}

pub use crate::status::{level_from_proto, level_to_proto};

impl SinkSecret {
    /// Validates a secret (request field `secret`): at least
    /// [`MIN_SECRET_LEN`] and at most [`MAX_SECRET_LEN`] bytes.
    ///
    /// # Errors
    /// Too short or too long.
    pub fn new(secret: impl Into<String>) -> Result<Self, SinkError> {
        let secret = secret.into();
        if secret.len() < MIN_SECRET_LEN {
            return Err(SinkError::invalid(
                "secret",
                format!(
                    "must be at least {MIN_SECRET_LEN} bytes, got {}",
                    secret.len()
                ),
            ));
        }
        if secret.len() > MAX_SECRET_LEN {
            return Err(SinkError::invalid(
                "secret",
                format!(
                    "must be at most {MAX_SECRET_LEN} bytes, got {}",
                    secret.len()
                ),
            ));
        }
        Ok(Self(secret))
    }

    /// The key bytes, for signing.
    #[must_use]
    pub fn expose(&self) -> &[u8] {
        self.0.as_bytes()
    }

    pub(crate) fn as_str(&self) -> &str {
        &self.0
    }
}

impl Sink {
    /// Field prefix of a `NotificationSink` inside UpsertSinkRequest.
    pub const FIELD: &'static str = "sink";

    /// Checks the rules the contract states; errors name the field as it sits
    /// in UpsertSinkRequest (`sink.webhook_url`). [`Sink::from_proto`] already
    /// ran it; the store runs it again for sinks built in code.
    ///
    /// # Errors
    /// The first field that breaks a rule.
    pub fn validate(&self) -> Result<(), SinkError> {
        validate_sink_id(&self.sink_id, "sink.sink_id")?;
        let name_chars = self.display_name.chars().count();
        if name_chars > MAX_DISPLAY_NAME_CHARS {
            return Err(SinkError::invalid(
                "sink.display_name",
                format!(
                    "is {name_chars} characters long; at most {MAX_DISPLAY_NAME_CHARS} are allowed"
                ),
            ));
        }
        validate_webhook_url(&self.webhook_url, "sink.webhook_url")?;
        if self.subjects.len() > MAX_SUBJECTS {
            return Err(SinkError::invalid(
                "sink.subjects",
                format!(
                    "has {} entries; at most {MAX_SUBJECTS} are allowed",
                    self.subjects.len()
                ),
            ));
        }
        Ok(())
    }

    /// Parses and validates the contract's `NotificationSink` (as in
    /// UpsertSinkRequest; errors name `sink.<field>`). Output-only fields
    /// (`secret_set`, `health`, `created_at`, `updated_at`) are ignored.
    /// Repeated subjects are kept once, in first-seen order.
    ///
    /// # Errors
    /// Any field the contract's rules refuse.
    pub fn from_proto(sink: &pb::NotificationSink) -> Result<Self, SinkError> {
        validate_sink_id(&sink.sink_id, "sink.sink_id")?;
        let min_level = match pb::Level::try_from(sink.min_level) {
            Ok(pb::Level::Unspecified) => None,
            Ok(level) => level_from_proto(level.into()),
            Err(_) => {
                return Err(SinkError::invalid(
                    "sink.min_level",
                    format!("unknown level {}", sink.min_level),
                ));
            }
        };
        if sink.subjects.len() > MAX_SUBJECTS {
            return Err(SinkError::invalid(
                "sink.subjects",
                format!(
                    "has {} entries; at most {MAX_SUBJECTS} are allowed",
                    sink.subjects.len()
                ),
            ));
        }
        let mut subjects: Vec<Subject> = Vec::with_capacity(sink.subjects.len());
        for (i, subject) in sink.subjects.iter().enumerate() {
            let parsed = Subject::from_proto(Some(subject), &format!("sink.subjects[{i}]"))
                .map_err(from_budget_error)?;
            if !subjects.contains(&parsed) {
                subjects.push(parsed);
            }
        }
        let parsed = Self {
            sink_id: sink.sink_id.clone(),
            display_name: sink.display_name.clone(),
            webhook_url: sink.webhook_url.clone(),
            enabled: sink.enabled,
            min_level,
            subjects,
        };
        parsed.validate()?;
        Ok(parsed)
    }

    /// Whether this sink wants `alert`; see [`matches()`].
    #[must_use]
    pub fn matches(&self, alert: &pb::Alert) -> bool {
        matches(self, alert)
    }
}

/// Whether `sink` receives `alert`: it is enabled; its `min_level` is unset
/// or the alert's from or to level is at least it; its `subjects` are empty
/// or name the alert's subject. An alert whose subject does not parse
/// matches only sinks without subjects.
#[must_use]
pub fn matches(sink: &Sink, alert: &pb::Alert) -> bool {
    if !sink.enabled {
        return false;
    }
    if let Some(min) = sink.min_level {
        let highest = [alert.from_level, alert.to_level]
            .into_iter()
            .filter_map(level_from_proto)
            .max();
        if highest.is_none_or(|level| level < min) {
            return false;
        }
    }
    if sink.subjects.is_empty() {
        return true;
    }
    Subject::from_proto(alert.subject.as_ref(), "alert.subject")
        .is_ok_and(|subject| sink.subjects.contains(&subject))
}

impl UpsertSink {
    /// Parses and validates an UpsertSinkRequest: the sink (errors name
    /// `sink.<field>`) and the secret (`secret`: at least 32 bytes, or empty
    /// to keep the stored one; whether a sink exists to keep it from is the
    /// store's check, [`SinkStore::upsert`]).
    ///
    /// # Errors
    /// No sink, or any field the contract's rules refuse.
    pub fn from_proto(request: &pb::UpsertSinkRequest) -> Result<Self, SinkError> {
        let sink = request
            .sink
            .as_ref()
            .ok_or_else(|| SinkError::invalid(Sink::FIELD, "is required"))?;
        let sink = Sink::from_proto(sink)?;
        let secret = if request.secret.is_empty() {
            None
        } else {
            Some(SinkSecret::new(request.secret.clone())?)
        };
        Ok(Self { sink, secret })
    }
}

impl HealthState {
    /// The contract's `SinkHealthState`.
    #[must_use]
    pub fn to_proto(self) -> pb::SinkHealthState {
        match self {
            Self::Unknown => pb::SinkHealthState::Unspecified,
            Self::Healthy => pb::SinkHealthState::Healthy,
            Self::Failing => pb::SinkHealthState::Failing,
        }
    }
}

impl SinkHealth {
    /// The contract's `SinkHealth`.
    #[must_use]
    pub fn to_proto(&self) -> pb::SinkHealth {
        pb::SinkHealth {
            state: self.state.to_proto().into(),
            consecutive_failures: i32::try_from(self.consecutive_failures).unwrap_or(i32::MAX),
            last_success_at: self.last_success_at_ms.map(ms_to_timestamp),
            last_failure_at: self.last_failure_at_ms.map(ms_to_timestamp),
            last_error: self.last_error.clone(),
        }
    }
}

impl StoredSink {
    /// The contract's `NotificationSink`, output-only fields filled; there is
    /// no field a secret could leak through, only `secret_set`.
    #[must_use]
    pub fn to_proto(&self) -> pb::NotificationSink {
        let sink = &self.sink;
        pb::NotificationSink {
            sink_id: sink.sink_id.clone(),
            display_name: sink.display_name.clone(),
            webhook_url: sink.webhook_url.clone(),
            enabled: sink.enabled,
            min_level: sink
                .min_level
                .map_or(pb::Level::Unspecified, level_to_proto)
                .into(),
            subjects: sink.subjects.iter().map(Subject::to_proto).collect(),
            secret_set: self.secret_set,
            health: Some(self.health.to_proto()),
            created_at: Some(ms_to_timestamp(self.created_at_ms)),
            updated_at: Some(ms_to_timestamp(self.updated_at_ms)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn loopback_hosts() {
        for host in ["localhost", "LocalHost", "127.0.0.1", "127.9.8.7", "[::1]"] {
            assert!(is_loopback_host(host), "{host}");
        }
        for host in [
            "example.com",
            "10.0.0.1",
            "[::2]",
            "localhost.example.com",
            "0.0.0.0",
        ] {
            assert!(!is_loopback_host(host), "{host}");
        }
    }
}
