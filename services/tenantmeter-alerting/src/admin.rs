//! `AlertingAdminService`: budgets, acknowledgements, silences, sinks, shadow
//! mode and on-demand evaluation. The admin token is checked by the
//! interceptor the service is mounted with (`run`).

use std::time::Instant;

use tenantmeter_domain::ids::TenantId;
use tenantmeter_proto::v1 as pb;
use tonic::{Request, Response, Status};

use crate::api::{AlertingApi, tenant_id};
use crate::budgets::{Budget, Subject, ms_to_timestamp, period_from_proto, timestamp_to_ms};
use crate::engine::PassMode;

fn now_ms(api: &AlertingApi) -> i64 {
    api.engine.now_ms()
}

#[tonic::async_trait]
impl pb::alerting_admin_service_server::AlertingAdminService for AlertingApi {
    async fn set_budget(
        &self,
        request: Request<pb::SetBudgetRequest>,
    ) -> Result<Response<pb::SetBudgetResponse>, Status> {
        let budget =
            request.get_ref().budget.as_ref().ok_or_else(|| {
                tenantmeter_runtime::error::invalid_argument("budget", "is required")
            })?;
        let budget = Budget::from_proto(budget)?;
        let stored = self.budgets.set(&budget, now_ms(self)).await?;
        tracing::info!(subject = %stored.subject, "budget set");
        Ok(Response::new(pb::SetBudgetResponse {
            budget: Some(stored.to_proto()),
        }))
    }

    async fn delete_budget(
        &self,
        request: Request<pb::DeleteBudgetRequest>,
    ) -> Result<Response<pb::DeleteBudgetResponse>, Status> {
        let request = request.get_ref();
        let subject = Subject::from_proto(request.subject.as_ref(), "subject")?;
        let period = period_from_proto(request.period, "period")?;
        let deleted = self.budgets.delete(&subject, period).await?;
        Ok(Response::new(pb::DeleteBudgetResponse { deleted }))
    }

    async fn acknowledge(
        &self,
        request: Request<pb::AcknowledgeRequest>,
    ) -> Result<Response<pb::AcknowledgeResponse>, Status> {
        let request = request.into_inner();
        let alerts = self
            .alerts
            .acknowledge(
                &request.alert_ids,
                &request.acknowledged_by,
                &request.comment,
                now_ms(self),
            )
            .await?;
        let alerts = self.with_deliveries(alerts).await?;
        Ok(Response::new(pb::AcknowledgeResponse { alerts }))
    }

    async fn silence(
        &self,
        request: Request<pb::SilenceRequest>,
    ) -> Result<Response<pb::SilenceResponse>, Status> {
        let request = request.into_inner();
        let subject = Subject::from_proto(request.subject.as_ref(), "subject")?;
        let now = now_ms(self);
        let until = crate::alerts::silence_until(request.duration.as_ref(), now)?;
        self.alerts
            .set_silence(&subject, until, &request.silenced_by, &request.comment)
            .await?;
        Ok(Response::new(pb::SilenceResponse {
            subject: Some(subject.to_proto()),
            silenced_until: until.map(ms_to_timestamp),
        }))
    }

    async fn upsert_sink(
        &self,
        request: Request<pb::UpsertSinkRequest>,
    ) -> Result<Response<pb::UpsertSinkResponse>, Status> {
        let request = request.into_inner();
        let sink = self.queue.upsert_sink(&request).await?;
        Ok(Response::new(pb::UpsertSinkResponse { sink: Some(sink) }))
    }

    async fn delete_sink(
        &self,
        request: Request<pb::DeleteSinkRequest>,
    ) -> Result<Response<pb::DeleteSinkResponse>, Status> {
        let deleted = self.queue.delete_sink(&request.get_ref().sink_id).await?;
        Ok(Response::new(pb::DeleteSinkResponse { deleted }))
    }

    async fn list_sinks(
        &self,
        _request: Request<pb::ListSinksRequest>,
    ) -> Result<Response<pb::ListSinksResponse>, Status> {
        let sinks = self.queue.list_sinks().await?;
        Ok(Response::new(pb::ListSinksResponse { sinks }))
    }

    async fn test_sink(
        &self,
        request: Request<pb::TestSinkRequest>,
    ) -> Result<Response<pb::TestSinkResponse>, Status> {
        let response = self.queue.test_sink(&request.get_ref().sink_id).await?;
        Ok(Response::new(response))
    }

    async fn set_shadow_mode(
        &self,
        request: Request<pb::SetShadowModeRequest>,
    ) -> Result<Response<pb::SetShadowModeResponse>, Status> {
        let config = self.alerts.set_shadow_mode(request.get_ref()).await?;
        Ok(Response::new(pb::SetShadowModeResponse {
            config: Some(config),
        }))
    }

    async fn get_shadow_mode(
        &self,
        _request: Request<pb::GetShadowModeRequest>,
    ) -> Result<Response<pb::GetShadowModeResponse>, Status> {
        let config = self.alerts.shadow_config().await?;
        Ok(Response::new(pb::GetShadowModeResponse {
            config: Some(config),
        }))
    }

    async fn evaluate(
        &self,
        request: Request<pb::EvaluateRequest>,
    ) -> Result<Response<pb::EvaluateResponse>, Status> {
        let started = Instant::now();
        let request = request.into_inner();
        let as_of = match request.as_of.as_ref() {
            Some(at) => {
                tenantmeter_runtime::clock::from_timestamp(at).ok_or_else(|| {
                    tenantmeter_runtime::error::invalid_argument("as_of", "not a valid timestamp")
                })?;
                timestamp_to_ms(at)
            }
            None => now_ms(self),
        };
        let tenants = if request.tenant_ids.is_empty() {
            None
        } else {
            if request.tenant_ids.len() > 1_000 {
                return Err(tenantmeter_runtime::error::invalid_argument(
                    "tenant_ids",
                    "at most 1,000 tenants",
                ));
            }
            Some(
                request
                    .tenant_ids
                    .iter()
                    .enumerate()
                    .map(|(i, id)| tenant_id(id, &format!("tenant_ids[{i}]")))
                    .collect::<Result<Vec<TenantId>, Status>>()?,
            )
        };
        let mode = if request.commit {
            PassMode::Commit
        } else {
            PassMode::WhatIf
        };
        let mut outcome = self.engine.evaluate(as_of, mode, tenants).await?;
        if mode == PassMode::WhatIf {
            for alert in &mut outcome.alerts {
                alert.alert_id.clear();
            }
        }
        let elapsed = prost_types::Duration::try_from(started.elapsed()).unwrap_or_default();
        Ok(Response::new(pb::EvaluateResponse {
            as_of: Some(ms_to_timestamp(as_of)),
            statuses: outcome.statuses,
            fleet: outcome.fleet,
            alerts: outcome.alerts,
            tenants_evaluated: i64::try_from(outcome.tenants_evaluated).unwrap_or(i64::MAX),
            elapsed: Some(elapsed),
        }))
    }
}
