//! [`SinkQueue`]: the one handle the service passes around for notifications.
//! The gRPC handlers speak protos to it, the evaluator enqueues alerts, and
//! `run()` starts its [`Notifier`].

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use tenantmeter_proto::v1 as pb;
use tenantmeter_runtime::clock::Clock;
use tenantmeter_runtime::redis_connection::RedisConnection;

use super::{EnqueueOutcome, Notifier, NotifierConfig, SinkError, SinkStore, UpsertSink};

/// Sinks, the delivery queue and the worker over one Redis connection. Cheap
/// to clone (clones share the connection, the clock and the HTTP client).
#[derive(Debug, Clone)]
pub struct SinkQueue {
    store: SinkStore,
    notifier: Notifier,
}

impl SinkQueue {
    /// A queue on `conn`, every Redis call bounded by `timeout`, every
    /// timestamp from `clock`. `config` should have passed
    /// [`NotifierConfig::validate`] (see [`Notifier::new`]).
    #[must_use]
    pub fn new(
        conn: RedisConnection,
        timeout: Duration,
        config: NotifierConfig,
        clock: Arc<dyn Clock>,
    ) -> Self {
        let store = SinkStore::new(conn, timeout, clock);
        let notifier = Notifier::new(store.clone(), config);
        Self { store, notifier }
    }

    /// The store underneath, for callers that want the domain types.
    #[must_use]
    pub fn store(&self) -> &SinkStore {
        &self.store
    }

    /// The delivery worker; run it with [`Notifier::run`] under the
    /// service's task tracker.
    #[must_use]
    pub fn notifier(&self) -> Notifier {
        self.notifier.clone()
    }

    /// Records an alert's notifications; see [`SinkStore::enqueue`].
    ///
    /// # Errors
    /// As [`SinkStore::enqueue`].
    pub async fn enqueue(&self, alert: &pb::Alert) -> Result<EnqueueOutcome, SinkError> {
        self.store.enqueue(alert).await
    }

    /// Records several alerts' notifications; see [`SinkStore::enqueue_all`].
    ///
    /// # Errors
    /// As [`SinkStore::enqueue_all`].
    pub async fn enqueue_all(
        &self,
        alerts: &[pb::Alert],
    ) -> Result<Vec<EnqueueOutcome>, SinkError> {
        self.store.enqueue_all(alerts).await
    }

    /// Each alert's deliveries; see [`SinkStore::deliveries`].
    ///
    /// # Errors
    /// As [`SinkStore::deliveries`].
    pub async fn deliveries(
        &self,
        alert_ids: &[String],
    ) -> Result<HashMap<String, Vec<pb::AlertDelivery>>, SinkError> {
        self.store.deliveries(alert_ids).await
    }

    /// UpsertSink: validates the request (errors name its fields) and
    /// returns the sink as stored, without its secret.
    ///
    /// # Errors
    /// [`SinkError::Invalid`]; Redis.
    pub async fn upsert_sink(
        &self,
        request: &pb::UpsertSinkRequest,
    ) -> Result<pb::NotificationSink, SinkError> {
        let upsert = UpsertSink::from_proto(request)?;
        Ok(self.store.upsert(&upsert).await?.to_proto())
    }

    /// DeleteSink: true when a sink was removed.
    ///
    /// # Errors
    /// A malformed id naming `sink_id`; Redis.
    pub async fn delete_sink(&self, sink_id: &str) -> Result<bool, SinkError> {
        self.store.delete(sink_id).await
    }

    /// ListSinks: every sink with its health, ordered by sink id.
    ///
    /// # Errors
    /// Redis; a corrupt record.
    pub async fn list_sinks(&self) -> Result<Vec<pb::NotificationSink>, SinkError> {
        Ok(self
            .store
            .list()
            .await?
            .iter()
            .map(super::StoredSink::to_proto)
            .collect())
    }

    /// One sink, as GetSink would return it.
    ///
    /// # Errors
    /// [`SinkError::NotFound`]; a malformed id naming `sink_id`; Redis.
    pub async fn get_sink(&self, sink_id: &str) -> Result<pb::NotificationSink, SinkError> {
        Ok(self.store.get(sink_id).await?.to_proto())
    }

    /// TestSink; see [`Notifier::test_sink`].
    ///
    /// # Errors
    /// As [`Notifier::test_sink`].
    pub async fn test_sink(&self, sink_id: &str) -> Result<pb::TestSinkResponse, SinkError> {
        self.notifier.test_sink(sink_id).await
    }
}
