//! `WatchLevels`. Level changes are alerts, and every replica's alerts land
//! in the one history, so a watcher on any replica follows every subject by
//! reading the history's insertion feed after the last entry it saw and
//! sending each alert's status snapshot. `every_evaluation` watchers also poll the named
//! subjects' stored statuses and send those evaluated since the last send.
//!
//! Levels are state: the statuses waiting for a slow watcher are kept per
//! subject, a newer one replacing an older, so a watcher that falls behind
//! gets each subject's latest status rather than a backlog or an error.

use std::collections::{BTreeMap, HashMap};
use std::time::Duration;

use futures::Stream;
use tenantmeter_proto::v1 as pb;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::Status;

use crate::api::{AlertingApi, min_level, state_status};
use crate::budgets::Subject;

/// How often the history and statuses are polled.
const POLL_EVERY: Duration = Duration::from_millis(250);
/// Most subjects an `every_evaluation` watcher may name.
const MAX_EVERY_EVALUATION_SUBJECTS: usize = 100;
/// Statuses in flight to one watcher.
const CHANNEL: usize = 64;
/// Alerts read from the history per poll.
const ALERTS_PER_POLL: usize = 1_000;

fn subject_key(subject: &Subject) -> String {
    match subject {
        Subject::Fleet => String::new(),
        Subject::Tenant(id) => id.as_str().to_owned(),
    }
}

fn level_of(response: &pb::WatchLevelsResponse) -> (i32, i32, i64) {
    match &response.status {
        Some(pb::watch_levels_response::Status::TenantStatus(s)) => (
            s.level,
            s.previous_level,
            s.evaluated_at
                .as_ref()
                .map_or(0, crate::budgets::timestamp_to_ms),
        ),
        Some(pb::watch_levels_response::Status::FleetStatus(s)) => (
            s.level,
            s.previous_level,
            s.evaluated_at
                .as_ref()
                .map_or(0, crate::budgets::timestamp_to_ms),
        ),
        None => (0, 0, 0),
    }
}

struct Watcher {
    api: AlertingApi,
    subjects: Vec<Subject>,
    min_level: i32,
    every_evaluation: bool,
    /// Latest status waiting per subject (`""` is the fleet), in subject order.
    pending: BTreeMap<String, pb::WatchLevelsResponse>,
    /// Evaluation instant last sent per subject.
    sent_at: HashMap<String, i64>,
}

impl Watcher {
    fn watches(&self, subject: &Subject) -> bool {
        self.subjects.is_empty() || self.subjects.contains(subject)
    }

    fn offer(&mut self, key: String, response: pb::WatchLevelsResponse, transition: bool) {
        let (level, previous, evaluated_at) = level_of(&response);
        if !transition && self.sent_at.get(&key).is_some_and(|at| *at >= evaluated_at) {
            return;
        }
        if self.min_level > 0 && level < self.min_level && previous < self.min_level {
            return;
        }
        self.pending.insert(key, response);
    }

    async fn current(&mut self) -> Result<(), Status> {
        let subjects = if self.subjects.is_empty() {
            self.all_subjects().await?
        } else {
            self.subjects.clone()
        };
        for subject in subjects {
            if let Some(mut response) = self.status_of(&subject).await? {
                response.current = true;
                self.offer(subject_key(&subject), response, true);
            }
        }
        Ok(())
    }

    async fn all_subjects(&self) -> Result<Vec<Subject>, Status> {
        use pb::alerting_service_server::AlertingService as _;
        let mut subjects = vec![Subject::Fleet];
        let mut token = String::new();
        loop {
            let page = self
                .api
                .list_statuses(tonic::Request::new(pb::ListStatusesRequest {
                    min_level: 0,
                    page_size: 1_000,
                    page_token: token,
                }))
                .await?
                .into_inner();
            for status in page.statuses {
                if let Ok(id) = tenantmeter_domain::ids::TenantId::parse(status.tenant_id) {
                    subjects.push(Subject::Tenant(id));
                }
            }
            if page.next_page_token.is_empty() {
                return Ok(subjects);
            }
            token = page.next_page_token;
        }
    }

    async fn status_of(
        &self,
        subject: &Subject,
    ) -> Result<Option<pb::WatchLevelsResponse>, Status> {
        let state = self.api.engine.state();
        let status = match subject {
            Subject::Fleet => state
                .load_fleet()
                .await
                .map_err(state_status)?
                .status
                .map(pb::watch_levels_response::Status::FleetStatus),
            Subject::Tenant(id) => state
                .status(id, self.api.engine.config().shards)
                .await
                .map_err(state_status)?
                .map(pb::watch_levels_response::Status::TenantStatus),
        };
        Ok(status.map(|status| pb::WatchLevelsResponse {
            status: Some(status),
            current: false,
        }))
    }

    async fn poll(&mut self, position: &mut String) -> Result<(), Status> {
        let read = self
            .api
            .alerts
            .feed_after(position, ALERTS_PER_POLL)
            .await?;
        if let Some(last) = read.entries.last() {
            position.clone_from(&last.position);
        }
        for alert in read.entries.into_iter().filter_map(|entry| entry.alert) {
            let Ok(subject) = Subject::from_proto(alert.subject.as_ref(), "subject") else {
                continue;
            };
            if !self.watches(&subject) {
                continue;
            }
            let status = match alert.snapshot {
                Some(pb::alert::Snapshot::TenantStatus(s)) => {
                    pb::watch_levels_response::Status::TenantStatus(s)
                }
                Some(pb::alert::Snapshot::FleetStatus(s)) => {
                    pb::watch_levels_response::Status::FleetStatus(s)
                }
                None => continue,
            };
            self.offer(
                subject_key(&subject),
                pb::WatchLevelsResponse {
                    status: Some(status),
                    current: false,
                },
                true,
            );
        }
        if self.every_evaluation {
            for subject in self.subjects.clone() {
                if let Some(response) = self.status_of(&subject).await? {
                    self.offer(subject_key(&subject), response, false);
                }
            }
        }
        Ok(())
    }

    /// Sends what the channel has room for; the rest waits, coalesced.
    fn drain(&mut self, tx: &mpsc::Sender<Result<pb::WatchLevelsResponse, Status>>) -> bool {
        while let Some((key, _)) = self.pending.first_key_value() {
            let key = key.clone();
            match tx.try_reserve() {
                Ok(permit) => {
                    if let Some(response) = self.pending.remove(&key) {
                        let (_, _, evaluated_at) = level_of(&response);
                        self.sent_at.insert(key, evaluated_at);
                        permit.send(Ok(response));
                    }
                }
                Err(mpsc::error::TrySendError::Full(())) => return true,
                Err(mpsc::error::TrySendError::Closed(())) => return false,
            }
        }
        true
    }
}

/// Validates the request and starts the watcher's task.
///
/// # Errors
/// INVALID_ARGUMENT naming a bad subject or level, or `every_evaluation`
/// without named subjects (or more than 100); UNAVAILABLE when the history
/// cannot be read to start.
pub async fn watch(
    api: AlertingApi,
    request: pb::WatchLevelsRequest,
) -> Result<impl Stream<Item = Result<pb::WatchLevelsResponse, Status>>, Status> {
    let subjects = request
        .subjects
        .iter()
        .enumerate()
        .map(|(i, s)| Subject::from_proto(Some(s), &format!("subjects[{i}]")))
        .collect::<Result<Vec<_>, _>>()?;
    let min = min_level(request.min_level, "min_level")?;
    if request.every_evaluation
        && (subjects.is_empty() || subjects.len() > MAX_EVERY_EVALUATION_SUBJECTS)
    {
        return Err(tenantmeter_runtime::error::invalid_argument(
            "subjects",
            format!(
                "every_evaluation needs 1..={MAX_EVERY_EVALUATION_SUBJECTS} named subjects \
                 (each evaluation of every tenant would be too many statuses)"
            ),
        ));
    }
    // The history's insertion feed, not alert ids: a transition stored late
    // (a slower replica, a backtest) can carry an earlier id.
    let mut position = api.alerts.feed_position().await?;
    let shutdown = api.shutdown.token().clone();
    let mut watcher = Watcher {
        api,
        subjects,
        min_level: min,
        every_evaluation: request.every_evaluation,
        pending: BTreeMap::new(),
        sent_at: HashMap::new(),
    };
    if request.send_current {
        watcher.current().await?;
    }
    let (tx, rx) = mpsc::channel(CHANNEL);
    tokio::spawn(async move {
        loop {
            if !watcher.drain(&tx) {
                return;
            }
            tokio::select! {
                () = shutdown.cancelled() => return,
                () = tx.closed() => return,
                () = tokio::time::sleep(POLL_EVERY) => {}
            }
            if let Err(status) = watcher.poll(&mut position).await {
                tracing::warn!(%status, "level watcher could not poll; trying again");
            }
        }
    });
    Ok(ReceiverStream::new(rx))
}
