//! The delivery worker. Every alerting replica runs one [`Notifier`] against
//! the same Redis; the claim script hands each due delivery to one of them, so
//! each (alert, sink) is POSTed once per attempt whatever the number of
//! replicas.

use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt as _;
use prost::Message as _;
use serde::{Deserialize, Serialize};
use tenantmeter_domain::levels::Level;
use tenantmeter_proto::v1 as pb;
use tenantmeter_runtime::clock::{Clock, to_timestamp};
use tokio_util::sync::CancellationToken;

use super::store::{Claimed, Finish, duration_ms};
use super::webhook::{self, PostOutcome, USER_AGENT, notification_id};
use super::{SinkError, SinkStore, level_to_proto};
use crate::budgets::{RETRY_AFTER, Subject};
use tenantmeter_runtime::clock::unix_ms;

/// The worker's knobs: a `[notifier]` section of the service's TOML config
/// (durations as `"250ms"`, `"5m"`). Every field has a default.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct NotifierConfig {
    /// How often an idle worker looks for due deliveries (default 250ms).
    #[serde(with = "humantime_serde")]
    pub poll_interval: Duration,
    /// Bound on one POST, connect to answer (default 5s).
    #[serde(with = "humantime_serde")]
    pub attempt_timeout: Duration,
    /// Attempts per delivery before it is FAILED, the first included
    /// (default 6).
    pub max_attempts: u32,
    /// Wait after the first failed attempt; doubled after each further one
    /// (default 1s).
    #[serde(with = "humantime_serde")]
    pub initial_backoff: Duration,
    /// Longest wait between attempts (default 5m).
    #[serde(with = "humantime_serde")]
    pub max_backoff: Duration,
    /// How long a claimed delivery is withheld from other replicas; a replica
    /// that dies mid-attempt delays its deliveries by this much (default 30s;
    /// must exceed `attempt_timeout`, or a slow receiver would be sent the
    /// same attempt twice).
    #[serde(with = "humantime_serde")]
    pub claim_timeout: Duration,
    /// Most deliveries claimed, and POSTed concurrently, per pass (default 32).
    pub batch_size: u32,
}

impl Default for NotifierConfig {
    fn default() -> Self {
        Self {
            poll_interval: Duration::from_millis(250),
            attempt_timeout: Duration::from_secs(5),
            max_attempts: 6,
            initial_backoff: Duration::from_secs(1),
            max_backoff: Duration::from_secs(5 * 60),
            claim_timeout: Duration::from_secs(30),
            batch_size: 32,
        }
    }
}

impl NotifierConfig {
    /// Checks the knobs; errors name the field (`max_attempts`).
    ///
    /// # Errors
    /// A zero interval, timeout or batch; no attempts (or more than 100); a
    /// max backoff below the initial one; a claim timeout not above the
    /// attempt timeout.
    pub fn validate(&self) -> Result<(), SinkError> {
        let positive = [
            ("poll_interval", self.poll_interval),
            ("attempt_timeout", self.attempt_timeout),
            ("initial_backoff", self.initial_backoff),
            ("claim_timeout", self.claim_timeout),
        ];
        for (field, value) in positive {
            if value.is_zero() {
                return Err(SinkError::invalid(field, "must be more than zero"));
            }
        }
        if !(1..=100).contains(&self.max_attempts) {
            return Err(SinkError::invalid(
                "max_attempts",
                format!("must be 1..=100, got {}", self.max_attempts),
            ));
        }
        if self.max_backoff < self.initial_backoff {
            return Err(SinkError::invalid(
                "max_backoff",
                "must be at least initial_backoff",
            ));
        }
        if self.claim_timeout <= self.attempt_timeout {
            return Err(SinkError::invalid(
                "claim_timeout",
                "must be longer than attempt_timeout, or a slow attempt could be claimed again",
            ));
        }
        if !(1..=1_000).contains(&self.batch_size) {
            return Err(SinkError::invalid(
                "batch_size",
                format!("must be 1..=1000, got {}", self.batch_size),
            ));
        }
        Ok(())
    }
}

impl NotifierConfig {
    /// The nearest config that [`NotifierConfig::validate`] accepts.
    fn clamped(&self) -> Self {
        const TICK: Duration = Duration::from_millis(1);
        let attempt_timeout = self.attempt_timeout.max(TICK);
        let initial_backoff = self.initial_backoff.max(TICK);
        Self {
            poll_interval: self.poll_interval.max(TICK),
            attempt_timeout,
            max_attempts: self.max_attempts.clamp(1, 100),
            initial_backoff,
            max_backoff: self.max_backoff.max(initial_backoff),
            claim_timeout: self
                .claim_timeout
                .max(attempt_timeout.saturating_add(Duration::from_secs(1))),
            batch_size: self.batch_size.clamp(1, 1_000),
        }
    }
}

/// The wait after failed attempt number `attempt` (from 1):
/// `initial_backoff * 2^(attempt-1)`, at most `max_backoff`.
#[must_use]
pub fn backoff_after(config: &NotifierConfig, attempt: u32) -> Duration {
    let factor = 1_u32
        .checked_shl(attempt.saturating_sub(1))
        .unwrap_or(u32::MAX);
    config
        .initial_backoff
        .saturating_mul(factor)
        .min(config.max_backoff)
}

/// The delivery worker, and TestSink. Cheap to clone: a handler keeps a clone
/// for [`Notifier::test_sink`] while another runs [`Notifier::run`].
#[derive(Debug, Clone)]
pub struct Notifier {
    store: SinkStore,
    config: NotifierConfig,
    /// One client for every POST, so connections to a receiver are reused;
    /// the error text when it could not be built.
    client: Result<reqwest::Client, String>,
}

impl Notifier {
    /// A worker over `store`, stamping times with the store's clock.
    ///
    /// Infallible, so a service can build it before serving: the config is
    /// expected to have passed [`NotifierConfig::validate`] at start-up, and
    /// out-of-range values are clamped (and logged) so a bad one can neither
    /// spin nor stall the worker. Should the HTTP client fail to build (no TLS
    /// backend), that is logged and every attempt fails with the reason, which
    /// the sinks' health then reports.
    #[must_use]
    pub fn new(store: SinkStore, config: NotifierConfig) -> Self {
        if let Err(error) = config.validate() {
            tracing::warn!(%error, "notifier config out of range; clamped");
        }
        let config = config.clamped();
        let client = reqwest::Client::builder()
            .user_agent(USER_AGENT)
            // A webhook answers where it was configured; following a redirect
            // would send signed alerts to a host nobody configured.
            .redirect(reqwest::redirect::Policy::none())
            .connect_timeout(config.attempt_timeout)
            .build()
            .map_err(|error| {
                tracing::error!(%error, "cannot build the webhook HTTP client; every delivery will fail");
                format!("cannot build the webhook HTTP client: {error}")
            });
        Self {
            store,
            config,
            client,
        }
    }

    /// The configuration in use.
    #[must_use]
    pub fn config(&self) -> &NotifierConfig {
        &self.config
    }

    fn clock(&self) -> &Arc<dyn Clock> {
        self.store.clock()
    }

    /// Delivers until `shutdown` is cancelled: a pass, then a pause of
    /// `poll_interval` unless the pass filled a whole batch (more may be
    /// due). A pass under way when shutdown comes is finished (it is bounded
    /// by `attempt_timeout` and the store's timeout), so no claimed delivery
    /// waits out its lease. Redis errors are logged and the next pass retries.
    pub async fn run(self, shutdown: CancellationToken) {
        tracing::info!(config = ?self.config, "notifier started");
        let batch = usize::try_from(self.config.batch_size).unwrap_or(usize::MAX);
        while !shutdown.is_cancelled() {
            let pause = match self.run_once().await {
                // A full batch: more may be due, go again at once.
                Ok(claimed) if claimed >= batch => continue,
                Ok(_) => self.config.poll_interval,
                // Redis is down or slow: one line a second at most, not one
                // per poll.
                Err(error) => {
                    tracing::warn!(%error, "notifier pass failed; retrying");
                    self.config.poll_interval.max(RETRY_AFTER)
                }
            };
            tokio::select! {
                () = shutdown.cancelled() => break,
                () = tokio::time::sleep(pause) => {}
            }
        }
        tracing::info!("notifier stopped");
    }

    /// One pass: claims the deliveries due now (at most `batch_size`) and
    /// attempts them concurrently; returns how many were claimed.
    ///
    /// # Errors
    /// Redis, while claiming. Failures recording one outcome are logged; that
    /// delivery is retried when its lease expires.
    pub async fn run_once(&self) -> Result<usize, SinkError> {
        let now_ms = unix_ms(self.clock().now());
        let lease_ms = now_ms.saturating_add(duration_ms(self.config.claim_timeout));
        let claimed = self
            .store
            .claim(now_ms, lease_ms, self.config.batch_size)
            .await?;
        let count = claimed.len();
        futures::stream::iter(claimed)
            .for_each_concurrent(None, |claimed| self.attempt(claimed))
            .await;
        Ok(count)
    }

    /// One attempt of a claimed delivery, and its outcome recorded.
    async fn attempt(&self, claimed: Claimed) {
        let sink_id = claimed.sink.sink_id.as_str();
        let alert_id = claimed.alert_id.as_str();
        let outcome = match self.body(&claimed) {
            Ok(body) => {
                let unix_secs = unix_ms(self.clock().now()).div_euclid(1000);
                self.post(
                    &claimed.sink.webhook_url,
                    &notification_id(alert_id, sink_id),
                    unix_secs,
                    claimed.secret.as_bytes(),
                    body,
                )
                .await
            }
            // Cannot be sent as it is stored; retrying would not help, but
            // the attempts still run out and report it rather than vanish.
            Err(error) => PostOutcome {
                status: None,
                error: webhook::truncate(error.to_string()),
                latency: Duration::ZERO,
            },
        };
        let finish = if outcome.delivered() {
            Finish::Delivered
        } else if claimed.attempt >= self.config.max_attempts {
            Finish::Failed {
                error: outcome.error.clone(),
            }
        } else {
            let backoff = backoff_after(&self.config, claimed.attempt);
            Finish::Retry {
                due_ms: unix_ms(self.clock().now()).saturating_add(duration_ms(backoff)),
                error: outcome.error.clone(),
            }
        };
        let now_ms = unix_ms(self.clock().now());
        match self.store.finish(&claimed, &finish, now_ms).await {
            Ok(true) => match &finish {
                Finish::Delivered => tracing::debug!(
                    sink_id,
                    alert_id,
                    attempt = claimed.attempt,
                    "webhook delivered"
                ),
                Finish::Retry { due_ms, error } => tracing::debug!(
                    sink_id,
                    alert_id,
                    attempt = claimed.attempt,
                    %error,
                    retry_at_ms = due_ms,
                    "webhook attempt failed; will retry"
                ),
                // The one line per failed delivery the contract promises
                // ("reported"); the sink's health says FAILING too.
                Finish::Failed { error } => tracing::warn!(
                    sink_id,
                    alert_id,
                    attempts = claimed.attempt,
                    %error,
                    "webhook delivery failed after its last attempt; sink is failing"
                ),
            },
            Ok(false) => tracing::debug!(
                sink_id,
                alert_id,
                "delivery outcome not recorded: the sink was deleted or disabled, \
                 or the lease expired and another replica took it"
            ),
            Err(error) => tracing::warn!(
                sink_id,
                alert_id,
                %error,
                "cannot record a delivery outcome; it is retried once its lease expires"
            ),
        }
    }

    /// One signed POST with the shared client, bounded by `attempt_timeout`.
    async fn post(
        &self,
        url: &str,
        notification_id: &str,
        unix_secs: i64,
        secret: &[u8],
        body: Vec<u8>,
    ) -> PostOutcome {
        match &self.client {
            Ok(client) => {
                webhook::post(
                    client,
                    url,
                    notification_id,
                    unix_secs,
                    secret,
                    body,
                    self.config.attempt_timeout,
                )
                .await
            }
            Err(error) => PostOutcome {
                status: None,
                error: error.clone(),
                latency: Duration::ZERO,
            },
        }
    }

    /// The JSON body of a claimed delivery's attempt.
    fn body(&self, claimed: &Claimed) -> Result<Vec<u8>, SinkError> {
        let alert = pb::Alert::decode(claimed.alert.as_slice())
            .map_err(|e| SinkError::Corrupt(format!("stored alert {}: {e}", claimed.alert_id)))?;
        webhook::body(&pb::WebhookNotification {
            notification_id: notification_id(&claimed.alert_id, &claimed.sink.sink_id),
            sink_id: claimed.sink.sink_id.clone(),
            alert: Some(alert),
            test: false,
            attempt: i32::try_from(claimed.attempt).unwrap_or(i32::MAX),
        })
    }

    /// TestSink: one POST now of a made-up alert (`test: true`, attempt 1,
    /// alert id `test-<random>`, about the sink's first subject or the fleet,
    /// green to the sink's minimum level or yellow), signed as usual, and its
    /// outcome. Sent even to a disabled sink, so a receiver can be checked
    /// before it is enabled. It records nothing: the sink's health and the
    /// delivery history speak of real alerts only.
    ///
    /// # Errors
    /// [`SinkError::NotFound`]; a malformed id naming `sink_id`; Redis; a
    /// sink stored without a secret (corrupt).
    pub async fn test_sink(&self, sink_id: &str) -> Result<pb::TestSinkResponse, SinkError> {
        let (stored, secret) = self.store.target(sink_id).await?;
        if secret.is_empty() {
            return Err(SinkError::Corrupt(format!(
                "sink {sink_id:?} has no secret"
            )));
        }
        let now = self.clock().now();
        let alert_id = format!("test-{}", random_suffix(unix_ms(now)));
        let to_level = stored
            .sink
            .min_level
            .unwrap_or(Level::Yellow)
            .max(Level::Yellow);
        let subject = stored.sink.subjects.first().unwrap_or(&Subject::Fleet);
        let alert = pb::Alert {
            alert_id: alert_id.clone(),
            subject: Some(subject.to_proto()),
            from_level: pb::Level::Green.into(),
            to_level: level_to_proto(to_level).into(),
            reasons: vec![pb::LevelReason {
                level: level_to_proto(to_level).into(),
                message: "test notification sent by TestSink; no level changed".to_owned(),
                since: Some(to_timestamp(now)),
                ..pb::LevelReason::default()
            }],
            raised_at: Some(to_timestamp(now)),
            ..pb::Alert::default()
        };
        let body = webhook::body(&pb::WebhookNotification {
            notification_id: notification_id(&alert_id, sink_id),
            sink_id: sink_id.to_owned(),
            alert: Some(alert),
            test: true,
            attempt: 1,
        })?;
        let outcome = self
            .post(
                &stored.sink.webhook_url,
                &notification_id(&alert_id, sink_id),
                unix_ms(now).div_euclid(1000),
                secret.as_bytes(),
                body,
            )
            .await;
        Ok(pb::TestSinkResponse {
            delivered: outcome.delivered(),
            http_status: outcome.status.map_or(0, i32::from),
            error: outcome.error,
            latency_ms: duration_ms(outcome.latency),
        })
    }
}

/// 16 random hex digits; the time in ms if the OS random source fails (a test
/// alert id only needs to differ from the last one).
fn random_suffix(now_ms: i64) -> String {
    let mut bytes = [0_u8; 8];
    match getrandom::fill(&mut bytes) {
        Ok(()) => hex::encode(bytes),
        Err(_) => now_ms.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_up_to_the_cap() {
        let config = NotifierConfig::default();
        let secs: Vec<u64> = (1..=12)
            .map(|n| backoff_after(&config, n).as_secs())
            .collect();
        assert_eq!(secs, [1, 2, 4, 8, 16, 32, 64, 128, 256, 300, 300, 300]);
        assert_eq!(backoff_after(&config, 200), Duration::from_secs(300));
        assert_eq!(backoff_after(&config, 0), Duration::from_secs(1));
    }

    #[test]
    fn default_config_is_valid_and_clamping_makes_any_valid() {
        NotifierConfig::default().validate().unwrap();
        assert_eq!(
            NotifierConfig::default().clamped(),
            NotifierConfig::default()
        );
        let zero = NotifierConfig {
            poll_interval: Duration::ZERO,
            attempt_timeout: Duration::ZERO,
            max_attempts: 0,
            initial_backoff: Duration::ZERO,
            max_backoff: Duration::ZERO,
            claim_timeout: Duration::ZERO,
            batch_size: 0,
        };
        assert!(zero.validate().is_err());
        zero.clamped().validate().unwrap();
        let bad = NotifierConfig {
            claim_timeout: Duration::from_secs(5),
            ..NotifierConfig::default()
        };
        assert_eq!(bad.validate().unwrap_err().field(), Some("claim_timeout"));
    }
}
