//! One tenant call's life, whatever the operation: who calls (the key),
//! which profile serves it (the alias), the reservation before Bedrock, and
//! the settlement after. The operations (`converse`, `invoke`) add only the
//! Bedrock call itself.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

use getrandom::fill as random_fill;
use tenantmeter_proto::v1::{
    CallMetering, Level, Offering, PriceScope, ReserveRequest, SettlementStatus, TokenUsage,
    UsageEvent,
};
use tenantmeter_runtime::auth::bearer_token;
use tenantmeter_runtime::clock::{Clock, to_timestamp};
use tokio::time::Instant;
use tonic::metadata::MetadataMap;

use crate::error::{CallError, ErrorContext, Violation};
use crate::metering::{Metering, Reservation, Settlement};
use crate::registry::model::{ProfileState, RoutingScope, TenantRecord, TenantState};
use crate::registry::{AuthError, Registry};

/// Where a call goes: the alias, the model that prices it, and the profile
/// Bedrock is called with.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Route {
    /// The tenant's alias.
    pub alias: String,
    /// Foundation model id (prices the call).
    pub model_id: String,
    /// Regional or global routing.
    pub scope: RoutingScope,
    /// The tenant's application inference profile: Bedrock's modelId.
    pub profile_arn: String,
}

/// A call the meter admitted, until it is settled or released.
#[derive(Debug, Clone)]
pub struct Admitted {
    /// The tenant.
    pub tenant: Arc<TenantRecord>,
    /// The application it is attributed to.
    pub application_id: String,
    /// The alias the caller asked for.
    pub requested_alias: String,
    /// The route actually served (a downgrade may change it).
    pub route: Route,
    /// The meter's admission.
    pub reservation: Reservation,
    /// The usage event id of this call: the dedupe key of its settlement.
    pub event_id: String,
    /// Estimated prompt tokens (for a settlement Bedrock sent no usage for).
    pub estimated_input_tokens: i64,
    /// When Bedrock was called.
    pub started: Instant,
}

impl Admitted {
    /// Error context of this call.
    pub fn context(&self) -> ErrorContext<'_> {
        ErrorContext {
            tenant_id: Some(&self.tenant.tenant_id),
            level: self.reservation.level,
        }
    }
}

/// What every operation shares.
#[derive(Debug, Clone)]
pub struct CallPath {
    registry: Registry,
    metering: Metering,
    clock: Arc<dyn Clock>,
    region: String,
}

/// Calls numbered in this process: the fallback of [`new_event_id`].
static CALLS: AtomicU64 = AtomicU64::new(0);

/// A new usage event id: unique per call, so a settlement replayed from the
/// spool is recognised by the meter as the same event, and two calls are
/// never taken for one.
fn new_event_id(now: SystemTime) -> String {
    let mut bytes = [0_u8; 12];
    if random_fill(&mut bytes).is_err() {
        // The OS random source failed (it does not on Linux, short of a
        // broken kernel). Two calls must still never share an id, or the
        // meter would count one of them as a duplicate: the time in
        // nanoseconds, the process and a per-process counter instead.
        tracing::error!("OS random source failed; using a time-based event id");
        let nanos = now.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_nanos());
        let call = CALLS.fetch_add(1, Ordering::Relaxed);
        return format!("gw:t{nanos:x}-{:x}-{call:x}", std::process::id());
    }
    let hex: String = bytes.iter().map(|b| format!("{b:02x}")).collect();
    format!("gw:{hex}")
}

fn scope_to_proto(scope: RoutingScope) -> PriceScope {
    match scope {
        RoutingScope::Regional => PriceScope::Regional,
        RoutingScope::Global => PriceScope::Global,
    }
}

impl CallPath {
    /// The call path of a gateway serving `region`.
    pub fn new(
        registry: Registry,
        metering: Metering,
        clock: Arc<dyn Clock>,
        region: String,
    ) -> Self {
        Self {
            registry,
            metering,
            clock,
            region,
        }
    }

    /// The meter side.
    pub fn metering(&self) -> &Metering {
        &self.metering
    }

    /// The tenant whose key the call carries.
    pub async fn authenticate(
        &self,
        metadata: &MetadataMap,
    ) -> Result<Arc<TenantRecord>, CallError> {
        let key = bearer_token(metadata).ok_or(CallError::InvalidKey)?;
        match self.registry.authenticate(key).await {
            Ok(tenant) if tenant.state == TenantState::Active => Ok(tenant),
            Ok(tenant) => Err(CallError::TenantDisabled {
                reason: tenant.disabled_reason.clone(),
            }),
            Err(AuthError::InvalidKey) => Err(CallError::InvalidKey),
            Err(AuthError::Disabled { reason, .. }) => Err(CallError::TenantDisabled { reason }),
            Err(AuthError::Unavailable(why)) => Err(CallError::RegistryUnavailable(why)),
        }
    }

    /// The application a call is attributed to.
    pub fn application(tenant: &TenantRecord, requested: &str) -> Result<String, CallError> {
        tenant
            .application(requested)
            .map(str::to_owned)
            .ok_or_else(|| {
                CallError::InvalidRequest(vec![Violation::invalid(
                    "application_id",
                    format!("{requested:?} is not one of the tenant's applications"),
                )])
            })
    }

    /// The route of `alias` for `tenant` in the serving region.
    pub fn route(&self, tenant: &TenantRecord, alias: &str) -> Result<Route, CallError> {
        if alias.is_empty() {
            return Err(CallError::InvalidRequest(vec![Violation::invalid(
                "model_alias",
                "required",
            )]));
        }
        let record = tenant
            .aliases
            .get(alias)
            .ok_or_else(|| CallError::UnknownAlias(alias.to_owned()))?;
        let profile = record
            .profiles
            .get(&self.region)
            .filter(|p| p.state == ProfileState::Active && !p.arn.is_empty())
            .ok_or_else(|| CallError::ProfileNotProvisioned {
                alias: alias.to_owned(),
                region: self.region.clone(),
            })?;
        Ok(Route {
            alias: alias.to_owned(),
            model_id: record.model_id.clone(),
            scope: record.scope,
            profile_arn: profile.arn.clone(),
        })
    }

    /// Reserves the call with the meter and decides the route it is served by.
    pub async fn admit(
        &self,
        tenant: Arc<TenantRecord>,
        application_id: String,
        route: Route,
        estimated_input_tokens: i64,
        max_output_tokens: i64,
    ) -> Result<Admitted, (CallError, Level)> {
        // The models this call could be downgraded to: the tenant's other
        // aliases that can serve here. A policy downgrade outside them is ignored.
        let downgrade_targets: Vec<String> = tenant
            .aliases
            .iter()
            .filter(|(alias, _)| alias.as_str() != route.alias)
            .filter_map(|(alias, _)| self.route(&tenant, alias).ok())
            .map(|r| r.model_id)
            .filter(|model| model != &route.model_id)
            .collect();
        let reservation = self
            .metering
            .reserve(ReserveRequest {
                tenant_id: tenant.tenant_id.clone(),
                model_id: route.model_id.clone(),
                estimated_input_tokens,
                max_output_tokens,
                lease: None,
                downgrade_targets,
            })
            .await
            .map_err(|e| (e, Level::Unspecified))?;
        let served = if reservation.downgraded && reservation.model_id != route.model_id {
            tenant
                .aliases
                .iter()
                .filter(|(_, a)| a.model_id == reservation.model_id)
                .find_map(|(alias, _)| self.route(&tenant, alias).ok())
                .unwrap_or_else(|| route.clone())
        } else {
            route.clone()
        };
        Ok(Admitted {
            tenant,
            application_id,
            requested_alias: route.alias,
            route: served,
            reservation,
            event_id: new_event_id(self.clock.now()),
            estimated_input_tokens,
            started: Instant::now(),
        })
    }

    /// Settles a finished (or cut) call and returns its metering.
    pub async fn settle(
        &self,
        admitted: &Admitted,
        usage: TokenUsage,
        usage_estimated: bool,
        latency_ms: i64,
    ) -> CallMetering {
        let event = UsageEvent {
            event_id: admitted.event_id.clone(),
            tenant_id: admitted.tenant.tenant_id.clone(),
            model_id: admitted.route.model_id.clone(),
            inference_profile_arn: admitted.route.profile_arn.clone(),
            region: self.region.clone(),
            offering: Offering::OnDemand as i32,
            scope: scope_to_proto(admitted.route.scope) as i32,
            application_id: admitted.application_id.clone(),
            usage: Some(usage),
            latency_ms,
            event_time: Some(to_timestamp(self.clock.now())),
            tags: Default::default(),
            usage_estimated,
        };
        let settlement = self
            .metering
            .settle(&admitted.reservation.reservation_id, event)
            .await;
        let mut metering = self.metering_of(admitted);
        metering.usage_estimated = usage_estimated;
        match settlement {
            Settlement::Settled(response) => {
                metering.settlement = SettlementStatus::Settled as i32;
                metering.provider_cost_nanos_usd = response.provider_cost_nanos_usd;
                metering.tenant_charge_nanos_usd = response.tenant_charge_nanos_usd;
                if response.level != Level::Unspecified as i32 {
                    metering.level = response.level;
                }
            }
            Settlement::Spooled => {
                metering.settlement = SettlementStatus::Spooled as i32;
            }
            Settlement::Lost(_) => {
                metering.settlement = SettlementStatus::Unrecorded as i32;
            }
        }
        metering
    }

    /// Releases the reservation of a call Bedrock consumed nothing of.
    pub async fn release(&self, admitted: &Admitted) {
        self.metering
            .release(&admitted.tenant.tenant_id, &admitted.reservation)
            .await;
    }

    /// The metering of an admitted call before its settlement.
    pub fn metering_of(&self, admitted: &Admitted) -> CallMetering {
        CallMetering {
            tenant_id: admitted.tenant.tenant_id.clone(),
            application_id: admitted.application_id.clone(),
            model_alias: admitted.requested_alias.clone(),
            served_model_alias: admitted.route.alias.clone(),
            model_id: admitted.route.model_id.clone(),
            inference_profile_arn: admitted.route.profile_arn.clone(),
            region: self.region.clone(),
            reservation_id: admitted.reservation.reservation_id.clone(),
            usage_event_id: admitted.event_id.clone(),
            provider_cost_nanos_usd: 0,
            tenant_charge_nanos_usd: 0,
            level: admitted.reservation.level as i32,
            settlement: SettlementStatus::Unspecified as i32,
            usage_estimated: false,
        }
    }
}
