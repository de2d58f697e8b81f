//! `AlertingService`: statuses, alerts and budgets, read and streamed.

use std::collections::HashMap;
use std::pin::Pin;
use std::sync::Arc;

use futures::Stream;
use tenantmeter_domain::ids::TenantId;
use tenantmeter_proto::v1 as pb;
use tenantmeter_runtime::shutdown::Shutdown;
use tonic::{Request, Response, Status};

use crate::alerts::AlertStore;
use crate::budgets::{BudgetStore, Subject};
use crate::engine::Engine;
use crate::sinks::SinkQueue;
use crate::state::{StateError, parse_rank_member};
use crate::watch_levels;

/// Page size when a request gives 0.
const DEFAULT_PAGE_SIZE: usize = 100;
/// Largest page a request may ask for.
const MAX_PAGE_SIZE: usize = 1_000;

/// The state the handlers share.
#[derive(Debug, Clone)]
pub struct AlertingApi {
    pub(crate) engine: Arc<Engine>,
    pub(crate) budgets: BudgetStore,
    pub(crate) alerts: AlertStore,
    pub(crate) queue: SinkQueue,
    pub(crate) shutdown: Shutdown,
    pub(crate) watch: crate::alerts::WatchConfig,
}

pub(crate) fn state_status(error: StateError) -> Status {
    match error {
        StateError::Corrupt(why) => {
            tracing::error!(why, "alerting state");
            Status::internal(why)
        }
        StateError::Redis(_)
        | StateError::Timeout(_)
        | StateError::LeaseLost(_)
        | StateError::FleetLeaseLost => {
            tracing::warn!(%error, "alerting state");
            tenantmeter_runtime::error::unavailable("redis", std::time::Duration::from_secs(1))
        }
    }
}

pub(crate) fn tenant_id(value: &str, field: &str) -> Result<TenantId, Status> {
    TenantId::parse(value)
        .map_err(|e| tenantmeter_runtime::error::invalid_argument(field, e.to_string()))
}

pub(crate) fn page_size(value: i32) -> Result<usize, Status> {
    match usize::try_from(value) {
        Ok(0) => Ok(DEFAULT_PAGE_SIZE),
        Ok(size) if size <= MAX_PAGE_SIZE => Ok(size),
        Ok(_) | Err(_) => Err(tenantmeter_runtime::error::invalid_argument(
            "page_size",
            format!("must be 0..={MAX_PAGE_SIZE} (0 means {DEFAULT_PAGE_SIZE}), got {value}"),
        )),
    }
}

pub(crate) fn min_level(value: i32, field: &str) -> Result<i32, Status> {
    match pb::Level::try_from(value) {
        Ok(level) => Ok(level as i32),
        Err(_) => Err(tenantmeter_runtime::error::invalid_argument(
            field,
            format!("unknown level {value}"),
        )),
    }
}

impl AlertingApi {
    /// Fills each alert's deliveries from the notification queue.
    pub(crate) async fn with_deliveries(
        &self,
        mut alerts: Vec<pb::Alert>,
    ) -> Result<Vec<pb::Alert>, Status> {
        let ids: Vec<String> = alerts.iter().map(|a| a.alert_id.clone()).collect();
        let mut deliveries = self.queue.deliveries(&ids).await?;
        for alert in &mut alerts {
            alert.deliveries = deliveries.remove(&alert.alert_id).unwrap_or_default();
        }
        Ok(alerts)
    }
}

type BoxStream<T> = Pin<Box<dyn Stream<Item = Result<T, Status>> + Send + 'static>>;

#[tonic::async_trait]
impl pb::alerting_service_server::AlertingService for AlertingApi {
    async fn get_status(
        &self,
        request: Request<pb::GetStatusRequest>,
    ) -> Result<Response<pb::GetStatusResponse>, Status> {
        let tenant = tenant_id(&request.get_ref().tenant_id, "tenant_id")?;
        let stored = self
            .engine
            .state()
            .status(&tenant, self.engine.config().shards)
            .await
            .map_err(state_status)?;
        let status = stored.unwrap_or_else(|| pb::TenantStatus {
            tenant_id: tenant.as_str().to_owned(),
            ..pb::TenantStatus::default()
        });
        Ok(Response::new(pb::GetStatusResponse {
            status: Some(status),
        }))
    }

    async fn get_fleet_status(
        &self,
        _request: Request<pb::GetFleetStatusRequest>,
    ) -> Result<Response<pb::GetFleetStatusResponse>, Status> {
        let fleet = self
            .engine
            .state()
            .load_fleet()
            .await
            .map_err(state_status)?;
        Ok(Response::new(pb::GetFleetStatusResponse {
            status: Some(fleet.status.unwrap_or_default()),
        }))
    }

    async fn list_statuses(
        &self,
        request: Request<pb::ListStatusesRequest>,
    ) -> Result<Response<pb::ListStatusesResponse>, Status> {
        let request = request.into_inner();
        let size = page_size(request.page_size)?;
        let min = min_level(request.min_level, "min_level")?;
        let after = if request.page_token.is_empty() {
            None
        } else {
            parse_rank_member(&request.page_token)
                .filter(|(_, id)| TenantId::parse(*id).is_ok())
                .ok_or_else(|| {
                    tenantmeter_runtime::error::invalid_argument(
                        "page_token",
                        "not a token this service issued",
                    )
                })?;
            Some(request.page_token.as_str())
        };
        // Members rank `9 - level`: at least `min` means rank at most 9 - min.
        let max_member = if min == 0 {
            "+".to_owned()
        } else {
            format!("({}", 10 - min)
        };
        let shards = self.engine.config().shards;
        let mut members = Vec::new();
        for shard in 0..shards {
            let page = self
                .engine
                .state()
                // One more than a page: whether another page follows.
                .rank_page(shard, after, &max_member, size + 1)
                .await
                .map_err(state_status)?;
            members.extend(page.into_iter().map(|m| (m, shard)));
        }
        members.sort();
        let more = members.len() > size;
        members.truncate(size);
        let next_page_token = if more {
            members.last().map(|(m, _)| m.clone()).unwrap_or_default()
        } else {
            String::new()
        };
        let mut by_shard: HashMap<u32, Vec<String>> = HashMap::new();
        for (member, shard) in &members {
            if let Some((_, id)) = parse_rank_member(member) {
                by_shard.entry(*shard).or_default().push(id.to_owned());
            }
        }
        let mut found: HashMap<String, pb::TenantStatus> = HashMap::new();
        for (shard, ids) in by_shard {
            let refs: Vec<&str> = ids.iter().map(String::as_str).collect();
            for status in self
                .engine
                .state()
                .statuses_in_shard(shard, &refs)
                .await
                .map_err(state_status)?
            {
                found.insert(status.tenant_id.clone(), status);
            }
        }
        let statuses = members
            .iter()
            .filter_map(|(member, _)| parse_rank_member(member))
            .filter_map(|(_, id)| found.remove(id))
            .collect();
        Ok(Response::new(pb::ListStatusesResponse {
            statuses,
            next_page_token,
        }))
    }

    type WatchLevelsStream = BoxStream<pb::WatchLevelsResponse>;

    async fn watch_levels(
        &self,
        request: Request<pb::WatchLevelsRequest>,
    ) -> Result<Response<Self::WatchLevelsStream>, Status> {
        let stream = watch_levels::watch(self.clone(), request.into_inner()).await?;
        Ok(Response::new(Box::pin(stream)))
    }

    type WatchAlertsStream = BoxStream<pb::WatchAlertsResponse>;

    async fn watch_alerts(
        &self,
        request: Request<pb::WatchAlertsRequest>,
    ) -> Result<Response<Self::WatchAlertsStream>, Status> {
        let stream = crate::alerts::watch_alerts(
            self.alerts.clone(),
            request.into_inner(),
            &self.shutdown,
            &self.watch,
        )
        .await?;
        Ok(Response::new(stream))
    }

    async fn get_alert(
        &self,
        request: Request<pb::GetAlertRequest>,
    ) -> Result<Response<pb::GetAlertResponse>, Status> {
        let alert = self.alerts.get(&request.get_ref().alert_id).await?;
        let alert = self.with_deliveries(vec![alert]).await?.pop();
        Ok(Response::new(pb::GetAlertResponse { alert }))
    }

    async fn list_alerts(
        &self,
        request: Request<pb::ListAlertsRequest>,
    ) -> Result<Response<pb::ListAlertsResponse>, Status> {
        let (alerts, next_page_token) = self.alerts.list(request.get_ref()).await?;
        let alerts = self.with_deliveries(alerts).await?;
        Ok(Response::new(pb::ListAlertsResponse {
            alerts,
            next_page_token,
        }))
    }

    async fn get_budget(
        &self,
        request: Request<pb::GetBudgetRequest>,
    ) -> Result<Response<pb::GetBudgetResponse>, Status> {
        let subject = Subject::from_proto(request.get_ref().subject.as_ref(), "subject")?;
        let budgets = self.budgets.get(&subject).await?;
        Ok(Response::new(pb::GetBudgetResponse {
            budgets: budgets
                .iter()
                .map(crate::budgets::Budget::to_proto)
                .collect(),
        }))
    }

    async fn list_budgets(
        &self,
        request: Request<pb::ListBudgetsRequest>,
    ) -> Result<Response<pb::ListBudgetsResponse>, Status> {
        let request = request.into_inner();
        let (budgets, next_page_token) = self
            .budgets
            .list(request.page_size, &request.page_token)
            .await?;
        Ok(Response::new(pb::ListBudgetsResponse {
            budgets: budgets
                .iter()
                .map(crate::budgets::Budget::to_proto)
                .collect(),
            next_page_token,
        }))
    }
}
