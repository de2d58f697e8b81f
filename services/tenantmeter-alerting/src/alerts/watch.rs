//! WatchAlerts: replay the history after an id, then follow new alerts live.
//!
//! One poller task per watcher reads Redis and fills a bounded channel that
//! the returned stream drains:
//!
//! 1. Before anything else, the feed's position is taken (in
//!    [`watch_alerts`] itself, so an alert stored after it returns is never
//!    missed).
//! 2. Replay: [`AlertStore::after`] pages in id order from `after_alert_id`,
//!    sent with back-pressure (a slow consumer just slows the replay). The
//!    replayed ids are remembered until the live phase has read past the
//!    insertions made during the replay, so an alert both replayed and found
//!    in the feed is sent once.
//! 3. Live: every `poll_interval` the feed ([`AlertStore::feed_after`]) is read
//!    from the position. The feed is Redis', so an alert stored by any
//!    replica reaches every watcher, and it is in insertion order, so an alert
//!    stored late with a low id is not skipped. A live alert that does not fit
//!    in the channel ends the watcher with ABORTED: the consumer is too far
//!    behind, and resumes from the last id it received rather than making
//!    this replica buffer without bound. So does a feed trimmed past the
//!    position.
//!
//! The watcher ends when the stream is dropped (the client went away: the
//! poller sees the channel closed), on shutdown (UNAVAILABLE, so clients
//! resume on another replica), and when Redis stays unreachable for
//! `max_poll_failures` polls in a row (UNAVAILABLE).

use std::collections::HashSet;
use std::future::Future;
use std::pin::Pin;
use std::time::Duration;

use futures::Stream;
use tenantmeter_proto::v1 as pb;
use tenantmeter_runtime::shutdown::{CancellationToken, Shutdown};
use tokio::sync::{mpsc, oneshot};
use tonic::Status;

use super::store::{is_feed_start, parse_position};
use super::{AlertError, AlertFilter, AlertStore, is_alert_id};

/// The stream a WatchAlerts handler returns.
pub type AlertStream = Pin<Box<dyn Stream<Item = Result<pb::WatchAlertsResponse, Status>> + Send>>;

/// How watchers poll and buffer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WatchConfig {
    /// Pause between two reads of the feed when the last one was not full.
    /// Default 250 ms: alerts follow evaluation passes seconds apart, so a
    /// quarter of a second is live enough, and one tiny script per watcher
    /// per 250 ms is little load.
    pub poll_interval: Duration,
    /// Alerts buffered for a consumer that does not read; one more live
    /// alert ends the watcher with ABORTED. Default 1,024 (at least 1).
    pub channel_capacity: usize,
    /// Alerts read from Redis per call, in replay and live. Default 256.
    pub batch: usize,
    /// Consecutive failed Redis calls after which the watcher ends with
    /// UNAVAILABLE. Default 20 (about 5 s at the default interval): a
    /// failover is ridden out, an outage is reported.
    pub max_poll_failures: u32,
}

impl Default for WatchConfig {
    fn default() -> Self {
        Self {
            poll_interval: Duration::from_millis(250),
            channel_capacity: 1_024,
            batch: 256,
            max_poll_failures: 20,
        }
    }
}

/// Starts a WatchAlerts watcher: validates `request`, takes the feed's
/// position, spawns the poller on `shutdown`'s task tracker and returns the
/// stream (see the module docs for the phases and how it ends).
///
/// # Errors
/// [`AlertError::Invalid`] naming `subjects[i]`, `min_level` or
/// `after_alert_id` (not a well-formed id; an unknown well-formed one is fine:
/// it may be past retention, and replay starts after it in id order); Redis.
pub async fn watch_alerts(
    store: AlertStore,
    request: pb::WatchAlertsRequest,
    shutdown: &Shutdown,
    config: &WatchConfig,
) -> Result<AlertStream, AlertError> {
    let filter = AlertFilter::from_watch_request(&request)?;
    let after = request.after_alert_id;
    if !after.is_empty() && !is_alert_id(&after) {
        return Err(AlertError::invalid(
            "after_alert_id",
            format!("{after:?} is not an alert id (<13-digit ms>-<16 hex>)"),
        ));
    }
    let position = store.feed_position().await?;
    let capacity = config.channel_capacity.max(1);
    let (tx, mut rx) = mpsc::channel(capacity);
    let (end_tx, mut end_rx) = oneshot::channel::<Status>();
    let poller = Poller {
        store,
        filter,
        config: WatchConfig {
            channel_capacity: capacity,
            batch: config.batch.max(1),
            ..config.clone()
        },
        tx,
        token: shutdown.token().clone(),
    };
    shutdown.spawn(async move {
        match poller.run(after, position).await {
            Ok(()) => tracing::debug!("alert watcher ended: its client went away"),
            Err(error) => {
                tracing::debug!(%error, "alert watcher ended");
                // The stream may be gone too; then nobody is left to tell.
                if end_tx.send(Status::from(error)).is_err() {
                    tracing::debug!("alert watcher's stream was already dropped");
                }
            }
        }
    });
    let stream = async_stream::stream! {
        loop {
            tokio::select! {
                // The end first: a watcher ended for falling behind must not
                // first drain the backlog that made it fall behind.
                biased;
                end = &mut end_rx => {
                    if let Ok(status) = end {
                        yield Err(status);
                    }
                    break;
                }
                item = rx.recv() => match item {
                    Some(response) => yield Ok(response),
                    None => {
                        if let Ok(status) = (&mut end_rx).await {
                            yield Err(status);
                        }
                        break;
                    }
                },
            }
        }
    };
    Ok(Box::pin(stream))
}

/// Why a poller stopped without an error to report.
#[derive(Debug)]
enum Stop {
    /// The stream was dropped: nobody to send to.
    ClientGone,
    /// Ended with this error, reported to the consumer.
    Failed(AlertError),
}

impl From<AlertError> for Stop {
    fn from(error: AlertError) -> Self {
        Self::Failed(error)
    }
}

#[derive(Debug)]
struct Poller {
    store: AlertStore,
    filter: AlertFilter,
    config: WatchConfig,
    tx: mpsc::Sender<pb::WatchAlertsResponse>,
    token: CancellationToken,
}

impl Poller {
    /// Replays then follows until the client leaves (`Ok`) or an error ends it.
    async fn run(self, after: String, position: String) -> Result<(), AlertError> {
        match self.follow(after, position).await {
            Ok(never) => match never {},
            Err(Stop::ClientGone) => Ok(()),
            Err(Stop::Failed(error)) => Err(error),
        }
    }

    async fn follow(
        &self,
        after: String,
        mut position: String,
    ) -> Result<std::convert::Infallible, Stop> {
        let batch = self.config.batch;
        // Ids replayed, kept until the live phase passes `replay_end`: only
        // alerts stored during the replay can be both replayed and in the feed.
        let mut replayed = HashSet::new();
        let mut replay_end = None;
        if !after.is_empty() {
            let mut cursor = after;
            loop {
                let page = self.retrying(|| self.store.after(&cursor, batch)).await?;
                let more = page.len() >= batch;
                for alert in page {
                    cursor.clone_from(&alert.alert_id);
                    replayed.insert(alert.alert_id.clone());
                    if self.filter.matches(&alert) {
                        self.send(alert, true).await?;
                    }
                }
                if !more {
                    break;
                }
            }
            replay_end = Some(self.retrying(|| self.store.feed_position()).await?);
        }
        loop {
            if self.token.is_cancelled() {
                return Err(AlertError::ShuttingDown.into());
            }
            let read = self
                .retrying(|| self.store.feed_after(&position, batch))
                .await?;
            if read.gap {
                return Err(self.fell_behind());
            }
            let full = read.entries.len() >= batch;
            for entry in read.entries {
                position = entry.position;
                let Some(alert) = entry.alert else {
                    continue; // trimmed from the history since: nothing to send
                };
                if replayed.remove(&alert.alert_id) {
                    continue;
                }
                if self.filter.matches(&alert) {
                    self.offer(alert)?;
                }
            }
            if replay_end
                .as_deref()
                .is_some_and(|end| reached(&position, end))
            {
                replayed = HashSet::new();
                replay_end = None;
            }
            if !full {
                self.pause().await?;
            }
        }
    }

    /// Sends a replayed alert, waiting for room: replay is paced by the
    /// consumer.
    async fn send(&self, alert: pb::Alert, replayed: bool) -> Result<(), Stop> {
        let response = pb::WatchAlertsResponse {
            alert: Some(alert),
            replayed,
        };
        tokio::select! {
            () = self.token.cancelled() => Err(AlertError::ShuttingDown.into()),
            sent = self.tx.send(response) => sent.map_err(|_closed| Stop::ClientGone),
        }
    }

    /// Offers a live alert: no room means the consumer fell behind.
    fn offer(&self, alert: pb::Alert) -> Result<(), Stop> {
        let response = pb::WatchAlertsResponse {
            alert: Some(alert),
            replayed: false,
        };
        match self.tx.try_send(response) {
            Ok(()) => Ok(()),
            Err(mpsc::error::TrySendError::Full(_)) => Err(self.fell_behind()),
            Err(mpsc::error::TrySendError::Closed(_)) => Err(Stop::ClientGone),
        }
    }

    fn fell_behind(&self) -> Stop {
        AlertError::FellBehind {
            capacity: self.config.channel_capacity,
        }
        .into()
    }

    /// Waits `poll_interval`, or stops on shutdown or when the client leaves.
    async fn pause(&self) -> Result<(), Stop> {
        tokio::select! {
            () = self.token.cancelled() => Err(AlertError::ShuttingDown.into()),
            () = self.tx.closed() => Err(Stop::ClientGone),
            () = tokio::time::sleep(self.config.poll_interval) => Ok(()),
        }
    }

    /// `call`, retried after a pause while Redis is unreachable, up to
    /// `max_poll_failures` attempts in a row.
    async fn retrying<T, F, Fut>(&self, mut call: F) -> Result<T, Stop>
    where
        F: FnMut() -> Fut,
        Fut: Future<Output = Result<T, AlertError>>,
    {
        let mut failures = 0_u32;
        loop {
            match call().await {
                Ok(value) => return Ok(value),
                Err(error) if error.is_transient() => {
                    failures += 1;
                    if failures >= self.config.max_poll_failures {
                        return Err(error.into());
                    }
                    tracing::debug!(%error, failures, "alert watcher poll failed; retrying");
                    self.pause().await?;
                }
                Err(error) => return Err(error.into()),
            }
        }
    }
}

/// Whether feed position `position` is at or past `end`.
fn reached(position: &str, end: &str) -> bool {
    if is_feed_start(end) {
        return true;
    }
    match (parse_position(position), parse_position(end)) {
        (Some(position), Some(end)) => position >= end,
        // Positions come from Redis; should one not parse, keeping the set a
        // little longer is the harmless choice.
        (None, _) | (_, None) => false,
    }
}
