//! The gRPC surface of the meter: `MeterService`, delegating to [`Meter`].

use std::sync::Arc;

use tenantmeter_proto::v1 as pb;
use tonic::{Request, Response, Status};

use crate::meter::Meter;

/// `MeterService` over one [`Meter`].
#[derive(Debug, Clone)]
pub struct MeterApi {
    meter: Arc<Meter>,
}

impl MeterApi {
    /// Serves `meter`.
    pub fn new(meter: Arc<Meter>) -> Self {
        Self { meter }
    }
}

#[tonic::async_trait]
impl pb::meter_service_server::MeterService for MeterApi {
    #[tracing::instrument(skip_all, fields(tenant = %request.get_ref().tenant_id))]
    async fn reserve(
        &self,
        request: Request<pb::ReserveRequest>,
    ) -> Result<Response<pb::ReserveResponse>, Status> {
        Ok(Response::new(
            self.meter.reserve(request.into_inner()).await?,
        ))
    }

    #[tracing::instrument(skip_all)]
    async fn settle(
        &self,
        request: Request<pb::SettleRequest>,
    ) -> Result<Response<pb::SettleResponse>, Status> {
        Ok(Response::new(
            self.meter.settle(request.into_inner()).await?,
        ))
    }

    async fn release(
        &self,
        request: Request<pb::ReleaseRequest>,
    ) -> Result<Response<pb::ReleaseResponse>, Status> {
        Ok(Response::new(
            self.meter.release(request.into_inner()).await?,
        ))
    }

    #[tracing::instrument(skip_all, fields(events = request.get_ref().events.len()))]
    async fn record_usage(
        &self,
        request: Request<pb::RecordUsageRequest>,
    ) -> Result<Response<pb::RecordUsageResponse>, Status> {
        Ok(Response::new(
            self.meter.record_usage(request.into_inner()).await?,
        ))
    }

    async fn get_usage(
        &self,
        request: Request<pb::GetUsageRequest>,
    ) -> Result<Response<pb::GetUsageResponse>, Status> {
        Ok(Response::new(
            self.meter.get_usage(request.into_inner()).await?,
        ))
    }

    async fn get_usage_history(
        &self,
        request: Request<pb::GetUsageHistoryRequest>,
    ) -> Result<Response<pb::GetUsageHistoryResponse>, Status> {
        Ok(Response::new(
            self.meter.history(request.into_inner()).await?,
        ))
    }

    async fn list_tenant_usage(
        &self,
        request: Request<pb::ListTenantUsageRequest>,
    ) -> Result<Response<pb::ListTenantUsageResponse>, Status> {
        Ok(Response::new(
            self.meter.list_tenant_usage(request.into_inner()).await?,
        ))
    }

    async fn get_fleet_usage(
        &self,
        request: Request<pb::GetFleetUsageRequest>,
    ) -> Result<Response<pb::GetFleetUsageResponse>, Status> {
        Ok(Response::new(
            self.meter.fleet_usage(request.into_inner()).await?,
        ))
    }

    async fn apply_policies(
        &self,
        request: Request<pb::ApplyPoliciesRequest>,
    ) -> Result<Response<pb::ApplyPoliciesResponse>, Status> {
        Ok(Response::new(
            self.meter.apply_policies(request.into_inner()).await?,
        ))
    }

    async fn get_policy(
        &self,
        request: Request<pb::GetPolicyRequest>,
    ) -> Result<Response<pb::GetPolicyResponse>, Status> {
        Ok(Response::new(
            self.meter.get_policy(request.into_inner()).await?,
        ))
    }
}
