//! `GatewayAdminService`: the tenant registry's admin surface. The admin token
//! is checked by the interceptor the server wraps this service in
//! (`GatewayAdminServiceServer::with_interceptor(admin, AdminAuth::new(..))`),
//! not here.

use std::collections::{BTreeMap, BTreeSet, HashSet};
use std::sync::Arc;
use std::time::Duration;

use tenantmeter_domain::ids::{PlanId, TenantId};
use tenantmeter_pricing::follower::PriceBookFollower;
use tenantmeter_proto::v1 as pb;
use tenantmeter_proto::v1::pricing_admin_service_client::PricingAdminServiceClient;
use tenantmeter_runtime::client::TracedChannel;
use tenantmeter_runtime::error as status;
use tonic::{Code, Request, Response, Status};

use crate::provision::{AliasSpec, ProfileRef, ProvisionError, Provisioner};
use crate::registry::model::{
    AliasRecord, KeyRecord, ProfileState, RoutingScope, TenantRecord, TenantState,
};
use crate::registry::{NewTenant, Registry, RegistryError};

/// Page size of ListTenants when the request sets none.
pub const DEFAULT_PAGE_SIZE: usize = 100;
/// Largest ListTenants page.
pub const MAX_PAGE_SIZE: usize = 1_000;
/// Longest display name, disable reason, cost center.
const MAX_TEXT: usize = 256;
/// Most tenant tags: AWS allows 50 per resource, and 4 are the standard ones.
const MAX_PROFILE_TAGS: usize = 46;
/// Most aliases per ProvisionProfiles or RemoveModelAliases request.
const MAX_ALIASES: usize = 100;
/// How long a caller should wait before retrying when pricing is unavailable.
const PRICING_RETRY_AFTER: Duration = Duration::from_secs(1);

/// Everything that can go wrong in an admin call.
#[derive(Debug, thiserror::Error)]
pub enum AdminError {
    /// The registry refused or failed.
    #[error(transparent)]
    Registry(#[from] RegistryError),
    /// Provisioning refused or failed.
    #[error(transparent)]
    Provision(#[from] ProvisionError),
    /// CreateTenant named a plan pricing does not have.
    #[error("plan {0:?} not found")]
    PlanNotFound(String),
    /// Pricing could not be reached for the plan assignment.
    #[error("pricing service unavailable: {0}")]
    PricingUnavailable(String),
    /// Pricing refused the plan assignment for another reason (e.g. the
    /// gateway's admin token is not pricing's).
    #[error("pricing service refused the plan assignment: {0}")]
    PricingRefused(String),
}

impl AdminError {
    fn invalid(field: impl Into<String>, reason: impl ToString) -> Self {
        Self::Registry(RegistryError::invalid(field, reason))
    }
}

impl From<AdminError> for Status {
    fn from(error: AdminError) -> Self {
        match error {
            AdminError::Registry(error) => error.into(),
            AdminError::Provision(error) => error.into(),
            AdminError::PlanNotFound(plan) => status::not_found("plan", &plan),
            AdminError::PricingUnavailable(message) => {
                tracing::warn!(%message, "pricing unavailable");
                status::unavailable("pricing service", PRICING_RETRY_AFTER)
            }
            refused @ AdminError::PricingRefused(_) => {
                tracing::error!(error = %refused, "plan assignment");
                Status::internal(refused.to_string())
            }
        }
    }
}

/// The client of pricing's `PricingAdminService`, with the admin token it
/// presents (`authorization: Bearer <token>` on every call).
#[derive(Clone)]
pub struct PricingAdmin {
    client: PricingAdminServiceClient<TracedChannel>,
    admin_token: Option<String>,
}

impl std::fmt::Debug for PricingAdmin {
    // The token is a credential: never print it.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PricingAdmin")
            .field(
                "admin_token",
                &self.admin_token.as_ref().map(|_| "<redacted>"),
            )
            .finish_non_exhaustive()
    }
}

impl PricingAdmin {
    /// A client presenting `admin_token` (pricing's admin token, which the
    /// gateway shares in one deployment).
    pub fn new(
        client: PricingAdminServiceClient<TracedChannel>,
        admin_token: Option<String>,
    ) -> Self {
        Self {
            client,
            admin_token,
        }
    }

    /// Assigns `tenant` to `plan` in pricing.
    async fn assign(&self, tenant: &TenantId, plan: &PlanId) -> Result<(), AdminError> {
        let mut request = Request::new(pb::AssignPlansRequest {
            assignments: vec![pb::TenantPlanAssignment {
                tenant_id: tenant.to_string(),
                plan_id: plan.to_string(),
            }],
        });
        if let Some(token) = &self.admin_token {
            let value = format!("Bearer {token}").parse().map_err(|_| {
                AdminError::PricingRefused("the admin token is not a valid header value".to_owned())
            })?;
            request
                .metadata_mut()
                .insert(tenantmeter_runtime::auth::AUTHORIZATION, value);
        }
        let mut client = self.client.clone();
        match client.assign_plans(request).await {
            Ok(_) => Ok(()),
            Err(refused) => Err(match refused.code() {
                Code::NotFound => AdminError::PlanNotFound(plan.to_string()),
                Code::Unavailable | Code::DeadlineExceeded | Code::Cancelled | Code::Aborted => {
                    AdminError::PricingUnavailable(refused.message().to_owned())
                }
                Code::Ok
                | Code::Unknown
                | Code::InvalidArgument
                | Code::AlreadyExists
                | Code::PermissionDenied
                | Code::ResourceExhausted
                | Code::FailedPrecondition
                | Code::OutOfRange
                | Code::Unimplemented
                | Code::Internal
                | Code::DataLoss
                | Code::Unauthenticated => AdminError::PricingRefused(format!(
                    "{:?}: {}",
                    refused.code(),
                    refused.message()
                )),
            }),
        }
    }
}

/// Settings of the admin service.
#[derive(Debug, Clone)]
pub struct AdminOptions {
    /// How long previous keys keep working when RotateKey sets no overlap.
    /// Default 24 h.
    pub default_key_overlap: Duration,
}

impl Default for AdminOptions {
    fn default() -> Self {
        Self {
            default_key_overlap: Duration::from_secs(24 * 3600),
        }
    }
}

/// The `GatewayAdminService` implementation. Cheap to clone.
#[derive(Debug, Clone)]
pub struct GatewayAdmin {
    registry: Registry,
    provisioner: Provisioner,
    pricing: PricingAdmin,
    prices: PriceBookFollower,
    options: AdminOptions,
}

impl GatewayAdmin {
    /// The service over a registry, a provisioner, pricing's admin client
    /// (plan assignment) and the price book follower (provisioning checks
    /// that a model has a price).
    pub fn new(
        registry: Registry,
        provisioner: Provisioner,
        pricing: PricingAdmin,
        prices: PriceBookFollower,
        options: AdminOptions,
    ) -> Self {
        Self {
            registry,
            provisioner,
            pricing,
            prices,
            options,
        }
    }
}

// ---- validation -----------------------------------------------------------

fn tenant_id(value: &str, field: &str) -> Result<TenantId, AdminError> {
    TenantId::parse(value).map_err(|e| AdminError::invalid(field, e))
}

/// Aliases and application ids share the tenant id alphabet.
fn slug(value: &str, field: &str) -> Result<(), AdminError> {
    TenantId::parse(value)
        .map(|_| ())
        .map_err(|e| AdminError::invalid(field, e))
}

fn text(value: &str, field: &str) -> Result<(), AdminError> {
    if value.chars().count() > MAX_TEXT {
        return Err(AdminError::invalid(
            field,
            format!("is longer than {MAX_TEXT} characters"),
        ));
    }
    if value.chars().any(char::is_control) {
        return Err(AdminError::invalid(field, "has control characters"));
    }
    Ok(())
}

/// AWS's tag alphabet: letters, digits, spaces and `_ . : / = + - @`.
fn tag_text(value: &str, field: &str, max: usize) -> Result<(), AdminError> {
    if value.chars().count() > max {
        return Err(AdminError::invalid(
            field,
            format!("is longer than {max} characters"),
        ));
    }
    if let Some(bad) = value
        .chars()
        .find(|c| !(c.is_alphanumeric() || *c == ' ' || "_.:/=+-@".contains(*c)))
    {
        return Err(AdminError::invalid(
            field,
            format!("has {bad:?}; tags allow letters, digits, spaces and _ . : / = + - @"),
        ));
    }
    Ok(())
}

fn profile_tags(
    tags: &std::collections::HashMap<String, String>,
    reserved: [&str; 4],
) -> Result<BTreeMap<String, String>, AdminError> {
    if tags.len() > MAX_PROFILE_TAGS {
        return Err(AdminError::invalid(
            "profile_tags",
            format!(
                "has {} tags; at most {MAX_PROFILE_TAGS} are allowed",
                tags.len()
            ),
        ));
    }
    let tags: BTreeMap<String, String> = tags.iter().map(|(k, v)| (k.clone(), v.clone())).collect();
    for (key, value) in &tags {
        let field = format!("profile_tags[{key:?}]");
        if key.is_empty() {
            return Err(AdminError::invalid(field, "a tag key must not be empty"));
        }
        tag_text(key, &field, 128)?;
        tag_text(value, &field, 256)?;
        if key.to_ascii_lowercase().starts_with("aws:") {
            return Err(AdminError::invalid(
                field,
                "keys starting with aws: are AWS's",
            ));
        }
        if reserved.contains(&key.as_str()) {
            return Err(AdminError::invalid(
                field,
                "is one of the standard tags the gateway sets itself",
            ));
        }
    }
    Ok(tags)
}

fn page_size(requested: i32) -> Result<usize, AdminError> {
    match usize::try_from(requested) {
        Ok(0) => Ok(DEFAULT_PAGE_SIZE),
        Ok(size) if size <= MAX_PAGE_SIZE => Ok(size),
        Ok(_) | Err(_) => Err(AdminError::invalid(
            "page_size",
            format!("must be between 0 and {MAX_PAGE_SIZE}"),
        )),
    }
}

/// Page tokens: `v1/<last tenant id listed>`. Plain text on purpose (ops can
/// read them); the id is validated like any other.
fn page_token(token: &str) -> Result<Option<TenantId>, AdminError> {
    if token.is_empty() {
        return Ok(None);
    }
    let last = token
        .strip_prefix("v1/")
        .ok_or_else(|| AdminError::invalid("page_token", "is malformed"))?;
    tenant_id(last, "page_token").map(Some)
}

fn overlap(
    requested: Option<&prost_types::Duration>,
    default: Duration,
) -> Result<Duration, AdminError> {
    let Some(requested) = requested else {
        return Ok(default);
    };
    let seconds = u64::try_from(requested.seconds);
    let nanos = u32::try_from(requested.nanos)
        .ok()
        .filter(|n| *n < 1_000_000_000);
    match (seconds, nanos) {
        (Ok(seconds), Some(nanos)) => Ok(Duration::new(seconds, nanos)),
        (Ok(_) | Err(_), _) => Err(AdminError::invalid("overlap", "must not be negative")),
    }
}

// ---- conversion -----------------------------------------------------------

fn timestamp(ms: i64) -> prost_types::Timestamp {
    prost_types::Timestamp {
        seconds: ms.div_euclid(1000),
        // rem_euclid(1000) * 1e6 < 1e9 always fits.
        nanos: i32::try_from(ms.rem_euclid(1000) * 1_000_000).unwrap_or(0),
    }
}

fn key_to_proto(key: &KeyRecord) -> pb::ApiKey {
    pb::ApiKey {
        key_id: key.key_id.clone(),
        created_at: Some(timestamp(key.created_at_ms)),
        expires_at: key.expires_at_ms.map(timestamp),
    }
}

fn alias_to_proto(alias: &str, record: &AliasRecord) -> pb::ModelAlias {
    pb::ModelAlias {
        alias: alias.to_owned(),
        source_model_id: record.source_model_id.clone(),
        model_id: record.model_id.clone(),
        scope: match record.scope {
            RoutingScope::Regional => pb::PriceScope::Regional,
            RoutingScope::Global => pb::PriceScope::Global,
        }
        .into(),
        profiles: record
            .profiles
            .iter()
            .map(|(region, profile)| pb::InferenceProfile {
                region: region.clone(),
                inference_profile_arn: profile.arn.clone(),
                status: match profile.state {
                    ProfileState::Active => pb::ProfileStatus::Active,
                    ProfileState::Failed => pb::ProfileStatus::Failed,
                }
                .into(),
            })
            .collect(),
    }
}

/// The contract's view of a tenant record (keys without their hashes).
pub fn tenant_to_proto(record: &TenantRecord) -> pb::Tenant {
    pb::Tenant {
        tenant_id: record.tenant_id.clone(),
        display_name: record.display_name.clone(),
        application_ids: record.application_ids.clone(),
        cost_center: record.cost_center.clone(),
        profile_tags: record
            .profile_tags
            .iter()
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect(),
        state: match record.state {
            TenantState::Active => pb::TenantState::Active,
            TenantState::Disabled => pb::TenantState::Disabled,
        }
        .into(),
        disabled_reason: record.disabled_reason.clone(),
        plan_id: record.plan_id.clone(),
        api_keys: record.keys.iter().map(key_to_proto).collect(),
        model_aliases: record
            .aliases
            .iter()
            .map(|(alias, a)| alias_to_proto(alias, a))
            .collect(),
        created_at: Some(timestamp(record.created_at_ms)),
        updated_at: Some(timestamp(record.updated_at_ms)),
    }
}

fn outcome_to_proto(outcome: crate::provision::Outcome) -> pb::ProvisionOutcome {
    match outcome {
        crate::provision::Outcome::Created => pb::ProvisionOutcome::Created,
        crate::provision::Outcome::Reused => pb::ProvisionOutcome::Reused,
        crate::provision::Outcome::Recorded => pb::ProvisionOutcome::Recorded,
        crate::provision::Outcome::Failed => pb::ProvisionOutcome::Failed,
    }
}

// ---- the calls ------------------------------------------------------------

impl GatewayAdmin {
    async fn create(
        &self,
        request: pb::CreateTenantRequest,
    ) -> Result<pb::CreateTenantResponse, AdminError> {
        let tenant = tenant_id(&request.tenant_id, "tenant_id")?;
        text(&request.display_name, "display_name")?;
        if request.application_ids.is_empty() {
            return Err(AdminError::invalid(
                "application_ids",
                "must name at least one application",
            ));
        }
        let mut seen = HashSet::new();
        for (index, application) in request.application_ids.iter().enumerate() {
            let field = format!("application_ids[{index}]");
            slug(application, &field)?;
            if !seen.insert(application.as_str()) {
                return Err(AdminError::invalid(
                    field,
                    format!("repeats {application:?}"),
                ));
            }
        }
        tag_text(&request.cost_center, "cost_center", MAX_TEXT)?;
        let tags = profile_tags(
            &request.profile_tags,
            self.provisioner.config().tag_keys.all(),
        )?;
        let plan = if request.plan_id.is_empty() {
            None
        } else {
            Some(
                PlanId::parse(request.plan_id.as_str())
                    .map_err(|e| AdminError::invalid("plan_id", e))?,
            )
        };
        let (record, issued) = self
            .registry
            .create_tenant(NewTenant {
                tenant_id: tenant.clone(),
                display_name: request.display_name,
                application_ids: request.application_ids,
                cost_center: request.cost_center,
                profile_tags: tags,
                plan_id: request.plan_id,
            })
            .await?;
        if let Some(plan) = plan
            && let Err(error) = self.pricing.assign(&tenant, &plan).await
        {
            // Created first so a taken id never reassigns another tenant's
            // plan; undone when the assignment fails, so a retry can succeed.
            match self.registry.delete_if_unchanged(&record).await {
                Ok(true) => {}
                Ok(false) => {
                    tracing::warn!(tenant = %tenant, "tenant changed before its failed creation could be undone")
                }
                Err(undo) => {
                    tracing::error!(tenant = %tenant, error = %undo, "cannot undo a failed tenant creation")
                }
            }
            return Err(error);
        }
        tracing::info!(tenant = %tenant, key_id = %issued.record.key_id, "tenant created");
        Ok(pb::CreateTenantResponse {
            tenant: Some(tenant_to_proto(&record)),
            api_key: issued.key,
        })
    }

    async fn existing(&self, raw: &str) -> Result<(TenantId, Arc<TenantRecord>), AdminError> {
        let tenant = tenant_id(raw, "tenant_id")?;
        let record = self
            .registry
            .fetch_tenant(&tenant)
            .await?
            .ok_or_else(|| RegistryError::NotFound(tenant.to_string()))?;
        Ok((tenant, record))
    }

    async fn list(
        &self,
        request: pb::ListTenantsRequest,
    ) -> Result<pb::ListTenantsResponse, AdminError> {
        let size = page_size(request.page_size)?;
        let after = page_token(&request.page_token)?;
        let page = self
            .registry
            .list(after.as_ref(), size, request.include_disabled)
            .await?;
        Ok(pb::ListTenantsResponse {
            tenants: page.tenants.iter().map(|t| tenant_to_proto(t)).collect(),
            next_page_token: page
                .next_after
                .map(|last| format!("v1/{last}"))
                .unwrap_or_default(),
        })
    }

    async fn rotate(
        &self,
        request: pb::RotateKeyRequest,
    ) -> Result<pb::RotateKeyResponse, AdminError> {
        let tenant = tenant_id(&request.tenant_id, "tenant_id")?;
        let overlap = overlap(request.overlap.as_ref(), self.options.default_key_overlap)?;
        let (record, key) = self.registry.rotate_key(&tenant, overlap).await?;
        tracing::info!(
            tenant = %tenant,
            key_id = record.keys.first().map_or("", |k| k.key_id.as_str()),
            overlap = ?overlap,
            "tenant key rotated"
        );
        Ok(pb::RotateKeyResponse {
            tenant: Some(tenant_to_proto(&record)),
            api_key: key,
        })
    }

    async fn provision(
        &self,
        request: pb::ProvisionProfilesRequest,
    ) -> Result<pb::ProvisionProfilesResponse, AdminError> {
        let tenant = tenant_id(&request.tenant_id, "tenant_id")?;
        if request.aliases.is_empty() {
            return Err(AdminError::invalid(
                "aliases",
                "must name at least one alias",
            ));
        }
        if request.aliases.len() > MAX_ALIASES {
            return Err(AdminError::invalid(
                "aliases",
                format!("at most {MAX_ALIASES} per request"),
            ));
        }
        let mut seen = HashSet::new();
        let mut specs = Vec::with_capacity(request.aliases.len());
        for (index, spec) in request.aliases.iter().enumerate() {
            let field = format!("aliases[{index}]");
            slug(&spec.alias, &format!("{field}.alias"))?;
            if !seen.insert(spec.alias.as_str()) {
                return Err(AdminError::invalid(
                    format!("{field}.alias"),
                    format!("repeats {:?}", spec.alias),
                ));
            }
            if spec.source_model_id.is_empty() {
                return Err(AdminError::invalid(
                    format!("{field}.source_model_id"),
                    "must not be empty",
                ));
            }
            let existing = (!spec.existing_inference_profile_arn.is_empty())
                .then(|| spec.existing_inference_profile_arn.clone());
            if existing.is_some() && request.regions.len() != 1 {
                return Err(AdminError::invalid(
                    "regions",
                    format!(
                        "must name exactly one region when {field}.existing_inference_profile_arn is set"
                    ),
                ));
            }
            specs.push(AliasSpec {
                alias: spec.alias.clone(),
                source_model_id: spec.source_model_id.clone(),
                existing_arn: existing,
            });
        }
        let regions = if request.regions.is_empty() {
            self.provisioner.default_regions().to_vec()
        } else {
            let mut seen = BTreeSet::new();
            for (index, region) in request.regions.iter().enumerate() {
                let field = format!("regions[{index}]");
                if !self.provisioner.serves(region) {
                    return Err(AdminError::invalid(
                        field,
                        format!("the gateway has no Bedrock client for {region:?}"),
                    ));
                }
                if !seen.insert(region.as_str()) {
                    return Err(AdminError::invalid(field, format!("repeats {region:?}")));
                }
            }
            request.regions.clone()
        };
        let (_, current) = self.existing(&request.tenant_id).await?;
        let book = self.prices.current().ok_or(ProvisionError::NoPriceBook)?;
        let plan = self.provisioner.plan(&current, &specs, &regions, &book)?;
        let results = self.provisioner.execute(&current, &plan).await?;
        let (record, ()) = self
            .registry
            .update(&tenant, |record, _| {
                Provisioner::apply(record, &plan, &results).map_err(AdminError::from)
            })
            .await?;
        Ok(pb::ProvisionProfilesResponse {
            results: results
                .into_iter()
                .map(|r| pb::ProvisionResult {
                    alias: r.alias,
                    region: r.region,
                    inference_profile_arn: r.arn,
                    outcome: outcome_to_proto(r.outcome).into(),
                    message: r.message,
                })
                .collect(),
            tenant: Some(tenant_to_proto(&record)),
        })
    }

    async fn remove(
        &self,
        request: pb::RemoveModelAliasesRequest,
    ) -> Result<pb::RemoveModelAliasesResponse, AdminError> {
        if request.aliases.len() > MAX_ALIASES {
            return Err(AdminError::invalid(
                "aliases",
                format!("at most {MAX_ALIASES} per request"),
            ));
        }
        for (index, alias) in request.aliases.iter().enumerate() {
            slug(alias, &format!("aliases[{index}]"))?;
        }
        let (tenant, current) = self.existing(&request.tenant_id).await?;
        let mut failures = Vec::new();
        if request.delete_profiles {
            let profiles: Vec<ProfileRef> = request
                .aliases
                .iter()
                .filter_map(|alias| current.aliases.get(alias).map(|a| (alias, a)))
                .flat_map(|(alias, record)| {
                    record
                        .profiles
                        .iter()
                        .filter(|(_, p)| !p.arn.is_empty())
                        .map(|(region, p)| ProfileRef {
                            alias: alias.clone(),
                            region: region.clone(),
                            arn: p.arn.clone(),
                        })
                })
                .collect();
            failures = self.provisioner.delete(&profiles).await;
        }
        // An alias whose profile could not be deleted is kept, so that a
        // retry still knows the profile; the others go.
        let kept: HashSet<&str> = failures.iter().map(|(p, _, _)| p.alias.as_str()).collect();
        let (record, ()) = self
            .registry
            .update(&tenant, |record, _| {
                for alias in &request.aliases {
                    if !kept.contains(alias.as_str()) {
                        record.aliases.remove(alias);
                    }
                }
                Ok::<_, AdminError>(())
            })
            .await?;
        if !failures.is_empty() {
            return Err(ProvisionError::DeleteFailed {
                retryable: failures.iter().all(|(_, _, retryable)| *retryable),
                failures: failures
                    .iter()
                    .map(|(p, message, _)| {
                        format!("{} in {} ({}): {message}", p.alias, p.region, p.arn)
                    })
                    .collect(),
            }
            .into());
        }
        Ok(pb::RemoveModelAliasesResponse {
            tenant: Some(tenant_to_proto(&record)),
        })
    }
}

#[tonic::async_trait]
impl pb::gateway_admin_service_server::GatewayAdminService for GatewayAdmin {
    #[tracing::instrument(skip_all, fields(tenant = %request.get_ref().tenant_id))]
    async fn create_tenant(
        &self,
        request: Request<pb::CreateTenantRequest>,
    ) -> Result<Response<pb::CreateTenantResponse>, Status> {
        Ok(Response::new(self.create(request.into_inner()).await?))
    }

    #[tracing::instrument(skip_all, fields(tenant = %request.get_ref().tenant_id))]
    async fn get_tenant(
        &self,
        request: Request<pb::GetTenantRequest>,
    ) -> Result<Response<pb::GetTenantResponse>, Status> {
        let (_, record) = self.existing(&request.get_ref().tenant_id).await?;
        Ok(Response::new(pb::GetTenantResponse {
            tenant: Some(tenant_to_proto(&record)),
        }))
    }

    #[tracing::instrument(skip_all)]
    async fn list_tenants(
        &self,
        request: Request<pb::ListTenantsRequest>,
    ) -> Result<Response<pb::ListTenantsResponse>, Status> {
        Ok(Response::new(self.list(request.into_inner()).await?))
    }

    #[tracing::instrument(skip_all, fields(tenant = %request.get_ref().tenant_id))]
    async fn rotate_key(
        &self,
        request: Request<pb::RotateKeyRequest>,
    ) -> Result<Response<pb::RotateKeyResponse>, Status> {
        Ok(Response::new(self.rotate(request.into_inner()).await?))
    }

    #[tracing::instrument(skip_all, fields(tenant = %request.get_ref().tenant_id))]
    async fn disable_tenant(
        &self,
        request: Request<pb::DisableTenantRequest>,
    ) -> Result<Response<pb::DisableTenantResponse>, Status> {
        let request = request.into_inner();
        let tenant = tenant_id(&request.tenant_id, "tenant_id")?;
        text(&request.reason, "reason")?;
        let record = self
            .registry
            .disable(&tenant, &request.reason)
            .await
            .map_err(AdminError::from)?;
        tracing::info!(tenant = %tenant, reason = %request.reason, "tenant disabled");
        Ok(Response::new(pb::DisableTenantResponse {
            tenant: Some(tenant_to_proto(&record)),
        }))
    }

    #[tracing::instrument(skip_all, fields(tenant = %request.get_ref().tenant_id))]
    async fn enable_tenant(
        &self,
        request: Request<pb::EnableTenantRequest>,
    ) -> Result<Response<pb::EnableTenantResponse>, Status> {
        let tenant = tenant_id(&request.get_ref().tenant_id, "tenant_id")?;
        let record = self
            .registry
            .enable(&tenant)
            .await
            .map_err(AdminError::from)?;
        tracing::info!(tenant = %tenant, "tenant enabled");
        Ok(Response::new(pb::EnableTenantResponse {
            tenant: Some(tenant_to_proto(&record)),
        }))
    }

    #[tracing::instrument(skip_all, fields(tenant = %request.get_ref().tenant_id))]
    async fn provision_profiles(
        &self,
        request: Request<pb::ProvisionProfilesRequest>,
    ) -> Result<Response<pb::ProvisionProfilesResponse>, Status> {
        Ok(Response::new(self.provision(request.into_inner()).await?))
    }

    #[tracing::instrument(skip_all, fields(tenant = %request.get_ref().tenant_id))]
    async fn remove_model_aliases(
        &self,
        request: Request<pb::RemoveModelAliasesRequest>,
    ) -> Result<Response<pb::RemoveModelAliasesResponse>, Status> {
        Ok(Response::new(self.remove(request.into_inner()).await?))
    }
}
