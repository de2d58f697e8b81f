//! Provisioning of application inference profiles: one per tenant x model
//! alias x region, created with Bedrock's `CreateInferenceProfile` through the
//! real `aws-sdk-bedrock` (pointed at the emulator locally and in tests).
//!
//! A provisioning run has three steps, so that every refusal comes before any
//! Bedrock write:
//!
//! 1. [`Provisioner::plan`] (no I/O): resolves each source to the foundation
//!    model and price scope that price its calls, refuses an alias bound to
//!    another source (FAILED_PRECONDITION) or a model without a list price in a
//!    requested region (NOT_FOUND), and decides per region: *reuse* the
//!    recorded profile, *record* a given existing profile, or *create* one.
//! 2. [`Provisioner::execute`]: checks given profiles with GetInferenceProfile
//!    (they must copy the source model), then creates the missing profiles.
//!    Bedrock failures become per-result FAILED outcomes carrying Bedrock's
//!    message, never a call error: a rerun finishes the job.
//! 3. [`Provisioner::apply`] (no I/O): folds the results into the tenant's
//!    record; the caller stores it with one compare-and-set.
//!
//! Idempotency: profile names are deterministic per tenant x alias
//! ([`profile_name`]). A create that meets `ConflictException` (the name exists
//! in the region: an earlier run created it but could not record it) looks the
//! profile up by name (ListInferenceProfiles, type APPLICATION), checks its
//! `TenantID` tag and its model, and reuses it. The `clientRequestToken` is a
//! digest of tenant, alias, region, source and the tenant record's revision
//! ([`client_request_token`]): SDK retries of one attempt are deduplicated by
//! Bedrock, while a later run (the record has moved on) never replays an old
//! answer, e.g. the ARN of a profile deleted since.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use aws_sdk_bedrock::Client;
use aws_sdk_bedrock::error::{DisplayErrorContext, ProvideErrorMetadata, SdkError};
use aws_sdk_bedrock::operation::create_inference_profile::CreateInferenceProfileError;
use aws_sdk_bedrock::operation::delete_inference_profile::DeleteInferenceProfileError;
use aws_sdk_bedrock::types::{InferenceProfileModelSource, InferenceProfileType, Tag};
use futures::StreamExt as _;
use sha2::{Digest as _, Sha256};
use tenantmeter_domain::ids::ModelId;
use tenantmeter_domain::pricebook::{Offering, PriceBook, PriceKey, PriceScope};
use tenantmeter_runtime::error as status;
use tonic::Status;

use crate::registry::model::{
    AliasRecord, ProfileRecord, ProfileState, RoutingScope, TenantRecord,
};

/// Geography prefixes of system-defined inference profile ids (`us.anthropic...`);
/// `global.` routes world-wide and has its own list price.
pub const GEO_PREFIXES: [&str; 8] = ["us", "us-gov", "eu", "apac", "jp", "au", "ca", "global"];

/// Bedrock's longest inference profile name.
const MAX_NAME_LEN: usize = 64;
/// Hex digits of the tenant-and-alias digest in a profile name.
const NAME_DIGEST_LEN: usize = 10;
/// Bedrock's longest profile description.
const MAX_DESCRIPTION_LEN: usize = 200;
/// How long a caller should wait before retrying after a transient Bedrock failure.
const BEDROCK_RETRY_AFTER: Duration = Duration::from_secs(2);

/// Everything that makes provisioning refuse a request as a whole.
#[derive(Debug, thiserror::Error)]
pub enum ProvisionError {
    /// A request field is malformed.
    #[error("{field}: {reason}")]
    InvalidArgument {
        /// Path of the field.
        field: String,
        /// What is wrong with it.
        reason: String,
    },
    /// The alias is bound to another source (remove it first).
    #[error("alias {alias:?} is bound to {bound_to:?}, not {requested:?}; remove it first")]
    AliasBound {
        /// The alias.
        alias: String,
        /// Its recorded source.
        bound_to: String,
        /// The source asked for.
        requested: String,
    },
    /// The model has no on-demand list price where asked.
    #[error("model {key} has no list price")]
    Unpriced {
        /// The price key looked up, as text.
        key: String,
    },
    /// No price book has been received from pricing yet.
    #[error("no price book yet: the pricing service has not been reached")]
    NoPriceBook,
    /// Profiles could not be deleted; their aliases were kept.
    #[error("cannot delete inference profiles: {}", failures.join("; "))]
    DeleteFailed {
        /// One line per profile.
        failures: Vec<String>,
        /// Whether every failure looked transient.
        retryable: bool,
    },
}

impl ProvisionError {
    fn invalid(field: impl Into<String>, reason: impl ToString) -> Self {
        Self::InvalidArgument {
            field: field.into(),
            reason: reason.to_string(),
        }
    }
}

impl From<ProvisionError> for Status {
    fn from(error: ProvisionError) -> Self {
        match error {
            ProvisionError::InvalidArgument { field, reason } => {
                status::invalid_argument(&field, reason)
            }
            bound @ ProvisionError::AliasBound { .. } => status::failed_precondition(
                "tenantmeter.gateway",
                "ALIAS_BOUND_TO_OTHER_SOURCE",
                bound.to_string(),
            ),
            ProvisionError::Unpriced { key } => status::not_found("model price", &key),
            ProvisionError::NoPriceBook => {
                status::unavailable("the price book (pricing service)", BEDROCK_RETRY_AFTER)
            }
            failed @ ProvisionError::DeleteFailed {
                retryable: true, ..
            } => {
                tracing::warn!(error = %failed, "bedrock");
                Status::unavailable(failed.to_string())
            }
            failed @ ProvisionError::DeleteFailed {
                retryable: false, ..
            } => status::failed_precondition(
                "tenantmeter.gateway",
                "PROFILE_DELETE_FAILED",
                failed.to_string(),
            ),
        }
    }
}

/// Keys of the four tags every profile carries.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TagKeys {
    /// Key of the tenant tag. Default `TenantID`.
    pub tenant: String,
    /// Key of the (primary) application tag. Default `ApplicationID`.
    pub application: String,
    /// Key of the cost-center tag. Default `CostCenter`.
    pub cost_center: String,
    /// Key of the environment tag. Default `Environment`.
    pub environment: String,
}

impl Default for TagKeys {
    fn default() -> Self {
        Self {
            tenant: "TenantID".to_owned(),
            application: "ApplicationID".to_owned(),
            cost_center: "CostCenter".to_owned(),
            environment: "Environment".to_owned(),
        }
    }
}

impl TagKeys {
    /// The four keys, which tenants' own profile tags may not use.
    pub fn all(&self) -> [&str; 4] {
        [
            &self.tenant,
            &self.application,
            &self.cost_center,
            &self.environment,
        ]
    }
}

/// What the provisioner needs besides its Bedrock clients.
#[derive(Debug, Clone)]
pub struct ProvisionConfig {
    /// The AWS account of the system inference profiles copied from.
    pub account_id: String,
    /// Regions to provision in when a request names none.
    pub regions: Vec<String>,
    /// Keys of the standard tags.
    pub tag_keys: TagKeys,
    /// Value of the environment tag (e.g. `prod`).
    pub environment: String,
    /// Description of every profile: `{tenant}` and `{alias}` are replaced by
    /// the tenant id and the alias, made to fit Bedrock's description
    /// alphabet. The template itself is sent as written (an operator's text;
    /// the emulator's fault markers in it fail the creation, for tests).
    /// Empty: no description.
    pub description: String,
    /// Bedrock calls in flight at once per run.
    pub concurrency: usize,
}

impl Default for ProvisionConfig {
    fn default() -> Self {
        Self {
            account_id: "123456789012".to_owned(),
            regions: vec!["us-east-1".to_owned()],
            tag_keys: TagKeys::default(),
            environment: "dev".to_owned(),
            description: "tenantmeter {tenant} {alias}".to_owned(),
            concurrency: 4,
        }
    }
}

/// One alias of a request, validated by the caller (alias syntax) and here
/// (source, prices).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AliasSpec {
    /// Alias.
    pub alias: String,
    /// Foundation model id or system inference profile id.
    pub source_model_id: String,
    /// A profile to record instead of creating one.
    pub existing_arn: Option<String>,
}

/// What one alias in one region comes to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Step {
    /// The recorded profile serves: nothing to do.
    Reuse(String),
    /// Check and record this existing profile.
    Record(String),
    /// Create (or find) the tenant's profile.
    Create,
}

/// The plan for one alias.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PlannedAlias {
    /// Position in the request (for field paths).
    pub index: usize,
    /// Alias.
    pub alias: String,
    /// What the profiles copy.
    pub source_model_id: String,
    /// Foundation model that prices the calls.
    pub model_id: String,
    /// Price scope of the calls.
    pub scope: RoutingScope,
    /// Per region, in request order.
    pub steps: Vec<(String, Step)>,
}

/// What happened to one alias in one region.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// A new profile was created.
    Created,
    /// An existing profile was found and reused.
    Reused,
    /// The given existing profile was recorded.
    Recorded,
    /// It failed; see the message.
    Failed,
}

/// The result for one alias in one region.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProvisionResult {
    /// Alias.
    pub alias: String,
    /// Region.
    pub region: String,
    /// The profile's ARN; empty when failed.
    pub arn: String,
    /// What happened.
    pub outcome: Outcome,
    /// Bedrock's message when failed.
    pub message: String,
}

impl ProvisionResult {
    fn ok(alias: &str, region: &str, arn: String, outcome: Outcome) -> Self {
        Self {
            alias: alias.to_owned(),
            region: region.to_owned(),
            arn,
            outcome,
            message: String::new(),
        }
    }

    fn failed(alias: &str, region: &str, message: String) -> Self {
        Self {
            alias: alias.to_owned(),
            region: region.to_owned(),
            arn: String::new(),
            outcome: Outcome::Failed,
            message,
        }
    }
}

/// One profile to delete.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProfileRef {
    /// Alias it serves.
    pub alias: String,
    /// Region.
    pub region: String,
    /// ARN.
    pub arn: String,
}

/// The foundation model and geography of a source id: `us.x` -> (`x`,
/// `Some("us")`), `x` -> (`x`, `None`).
pub fn split_source(source: &str) -> (&str, Option<&str>) {
    match source.split_once('.') {
        Some((geo, model)) if GEO_PREFIXES.contains(&geo) && !model.is_empty() => {
            (model, Some(geo))
        }
        Some(_) | None => (source, None),
    }
}

/// Which price scope prices a model in every one of `regions`: `global` for
/// a `global.` source that has global prices there; otherwise `regional`
/// (models priced the same however routed list only regional prices, and
/// their `global.` usage is quoted as regional, docs/pricebook.md). The
/// error names the first price key missing.
fn price_scope(
    book: &PriceBook,
    model: &ModelId,
    global: bool,
    regions: &[String],
) -> Result<RoutingScope, String> {
    let key = |region: &str, scope| PriceKey {
        model_id: model.clone(),
        region: region.to_owned(),
        offering: Offering::OnDemand,
        scope,
    };
    let priced = |scope| {
        regions
            .iter()
            .find(|region| !book.prices.contains_key(&key(region, scope)))
            .map_or(Ok(()), |region| Err(key(region, scope).to_string()))
    };
    if global && priced(PriceScope::Global).is_ok() {
        return Ok(RoutingScope::Global);
    }
    priced(PriceScope::Regional).map(|()| RoutingScope::Regional)
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Text in Bedrock's `([lead][ _-]?)+` alphabet: other characters become `-`,
/// a separator only follows a lead character, and none ends the text.
fn fit(text: &str, is_lead: fn(char) -> bool, max: usize) -> String {
    let mut out = String::with_capacity(text.len().min(max));
    let mut after_lead = false;
    for c in text.chars() {
        if out.len() >= max {
            break;
        }
        if is_lead(c) {
            out.push(c);
            after_lead = true;
        } else if after_lead {
            out.push(if matches!(c, ' ' | '_') { c } else { '-' });
            after_lead = false;
        }
    }
    while out.ends_with([' ', '_', '-']) {
        out.pop();
    }
    out
}

/// The profile name of a tenant's alias (the same in every region):
/// `tm-<tenant>-<alias>-<digest>`, in Bedrock's name alphabet
/// (`([0-9a-zA-Z][ _-]?)+`, at most 64 characters). The readable part is
/// shortened and rewritten as needed; the digest of the exact tenant id and
/// alias keeps names of different tenants apart whatever that rewriting does.
pub fn profile_name(tenant: &str, alias: &str) -> String {
    let mut digest = Sha256::new();
    digest.update(tenant.as_bytes());
    digest.update([0]);
    digest.update(alias.as_bytes());
    let digest = hex(&digest.finalize());
    let short = digest.get(..NAME_DIGEST_LEN).unwrap_or(&digest);
    let room = MAX_NAME_LEN - "tm-".len() - 1 - NAME_DIGEST_LEN;
    let readable = fit(
        &format!("{tenant}-{alias}"),
        |c| c.is_ascii_alphanumeric(),
        room,
    );
    if readable.is_empty() {
        format!("tm-{short}")
    } else {
        format!("tm-{readable}-{short}")
    }
}

/// The `clientRequestToken` of one creation (64 hex digits).
pub fn client_request_token(
    tenant: &str,
    alias: &str,
    region: &str,
    source: &str,
    revision: u64,
) -> String {
    let mut digest = Sha256::new();
    for part in [tenant, alias, region, source] {
        digest.update(part.as_bytes());
        digest.update([0]);
    }
    digest.update(revision.to_be_bytes());
    hex(&digest.finalize())
}

/// Bedrock's message for a failed call: `<error code>: <message>`, or the
/// transport failure.
fn bedrock_message<E, R>(error: &SdkError<E, R>) -> String
where
    E: ProvideErrorMetadata + std::error::Error + 'static,
    R: std::fmt::Debug,
{
    match error.as_service_error() {
        Some(service) => match (service.code(), service.message()) {
            (Some(code), Some(message)) => format!("{code}: {message}"),
            (Some(code), None) => code.to_owned(),
            (None, _) => DisplayErrorContext(error).to_string(),
        },
        None => DisplayErrorContext(error).to_string(),
    }
}

/// Whether a failure may pass on a retry (throttling, 5xx, transport).
fn transient<E, R>(error: &SdkError<E, R>) -> bool
where
    E: ProvideErrorMetadata + std::error::Error + 'static,
    R: std::fmt::Debug,
{
    match error.as_service_error() {
        Some(service) => matches!(
            service.code(),
            Some(
                "ThrottlingException"
                    | "InternalServerException"
                    | "ServiceUnavailableException"
                    | "ServiceQuotaExceededException"
            )
        ),
        None => true,
    }
}

/// The resource name of a model ARN (`.../foundation-model/<id>` -> `<id>`).
fn arn_model(model_arn: &str) -> Option<&str> {
    model_arn
        .rsplit_once(":foundation-model/")
        .map(|(_, id)| id)
}

/// The region of an application inference profile ARN.
fn profile_arn_region(arn: &str) -> Option<&str> {
    let mut parts = arn.splitn(6, ':');
    let (Some("arn"), Some(_partition), Some("bedrock"), Some(region), Some(_account), Some(rest)) = (
        parts.next(),
        parts.next(),
        parts.next(),
        parts.next(),
        parts.next(),
        parts.next(),
    ) else {
        return None;
    };
    (rest.starts_with("application-inference-profile/") && !region.is_empty()).then_some(region)
}

/// Creates, finds and deletes tenants' application inference profiles.
/// Cheap to clone.
#[derive(Debug, Clone)]
pub struct Provisioner {
    clients: Arc<BTreeMap<String, Client>>,
    config: Arc<ProvisionConfig>,
}

impl Provisioner {
    /// A provisioner over one Bedrock client per region it may provision in
    /// (each configured for its region). Every default region needs a client.
    pub fn new(
        clients: BTreeMap<String, Client>,
        config: ProvisionConfig,
    ) -> Result<Self, ProvisionError> {
        if let Some(missing) = config.regions.iter().find(|r| !clients.contains_key(*r)) {
            return Err(ProvisionError::invalid(
                "regions",
                format!("no Bedrock client for default region {missing:?}"),
            ));
        }
        Ok(Self {
            clients: Arc::new(clients),
            config: Arc::new(config),
        })
    }

    /// A provisioner with one client per region of `regions` and of the
    /// config's default regions, each built from `sdk` (credentials,
    /// endpoint, retries, timeouts) with its region set.
    pub fn from_sdk_config(
        sdk: &aws_config::SdkConfig,
        regions: &[String],
        config: ProvisionConfig,
    ) -> Result<Self, ProvisionError> {
        let clients = regions
            .iter()
            .chain(&config.regions)
            .map(|region| {
                let conf = aws_sdk_bedrock::config::Builder::from(sdk)
                    .region(aws_sdk_bedrock::config::Region::new(region.clone()))
                    .build();
                (region.clone(), Client::from_conf(conf))
            })
            .collect();
        Self::new(clients, config)
    }

    /// The regions used when a request names none.
    pub fn default_regions(&self) -> &[String] {
        &self.config.regions
    }

    /// Whether this provisioner can reach `region`.
    pub fn serves(&self, region: &str) -> bool {
        self.clients.contains_key(region)
    }

    /// Its configuration.
    pub fn config(&self) -> &ProvisionConfig {
        &self.config
    }

    /// The `copyFrom` ARN of a source in `region`: the foundation model, or
    /// the account's system-defined profile for a geography-prefixed id.
    pub fn source_arn(&self, region: &str, source: &str) -> String {
        match split_source(source) {
            (_, Some(_)) => format!(
                "arn:aws:bedrock:{region}:{}:inference-profile/{source}",
                self.config.account_id
            ),
            (model, None) => format!("arn:aws:bedrock:{region}::foundation-model/{model}"),
        }
    }

    fn client(&self, region: &str) -> Result<&Client, String> {
        self.clients
            .get(region)
            .ok_or_else(|| format!("no Bedrock client for region {region}"))
    }

    /// Step 1: what to do per alias and region (no I/O). `regions` are
    /// non-empty, distinct and served (the caller checked).
    pub fn plan(
        &self,
        tenant: &TenantRecord,
        specs: &[AliasSpec],
        regions: &[String],
        book: &PriceBook,
    ) -> Result<Vec<PlannedAlias>, ProvisionError> {
        specs
            .iter()
            .enumerate()
            .map(|(index, spec)| {
                let field = format!("aliases[{index}].source_model_id");
                let (model, geo) = split_source(&spec.source_model_id);
                let model_id =
                    ModelId::parse(model).map_err(|e| ProvisionError::invalid(&field, e))?;
                let bound = tenant.aliases.get(&spec.alias);
                if let Some(bound) = bound
                    && bound.source_model_id != spec.source_model_id
                {
                    return Err(ProvisionError::AliasBound {
                        alias: spec.alias.clone(),
                        bound_to: bound.source_model_id.clone(),
                        requested: spec.source_model_id.clone(),
                    });
                }
                let scope = price_scope(book, &model_id, geo == Some("global"), regions)
                    .map_err(|key| ProvisionError::Unpriced { key })?;
                let steps = regions
                    .iter()
                    .map(|region| {
                        let recorded = bound
                            .and_then(|b| b.profiles.get(region))
                            .filter(|p| p.state == ProfileState::Active)
                            .map(|p| p.arn.clone());
                        let step = match (recorded, &spec.existing_arn) {
                            (Some(arn), None) => Step::Reuse(arn),
                            (Some(arn), Some(given)) if arn == *given => Step::Reuse(arn),
                            (Some(_) | None, Some(given)) => Step::Record(given.clone()),
                            (None, None) => Step::Create,
                        };
                        (region.clone(), step)
                    })
                    .collect();
                Ok(PlannedAlias {
                    index,
                    alias: spec.alias.clone(),
                    source_model_id: spec.source_model_id.clone(),
                    model_id: model_id.to_string(),
                    scope,
                    steps,
                })
            })
            .collect()
    }

    /// Step 2: checks the given profiles, then creates (or finds) the missing
    /// ones. One result per alias and region, in plan order. The call fails
    /// only when a given profile copies another model (INVALID_ARGUMENT),
    /// before anything is created.
    pub async fn execute(
        &self,
        tenant: &TenantRecord,
        plan: &[PlannedAlias],
    ) -> Result<Vec<ProvisionResult>, ProvisionError> {
        let mut checked = BTreeMap::new();
        for alias in plan {
            for (region, step) in &alias.steps {
                if let Step::Record(arn) = step {
                    let outcome = self.check_given(alias, region, arn).await?;
                    checked.insert((alias.alias.clone(), region.clone()), outcome);
                }
            }
        }
        let work: Vec<_> = plan
            .iter()
            .flat_map(|alias| {
                alias
                    .steps
                    .iter()
                    .map(move |(region, step)| (alias, region, step))
            })
            .collect();
        // Futures built here from a named async fn (not a closure inside the
        // stream), so the whole run stays `Send` for the gRPC handler.
        let steps: Vec<_> = work
            .into_iter()
            .map(|(alias, region, step)| {
                let checked = checked.get(&(alias.alias.clone(), region.clone())).cloned();
                self.run_step(tenant, alias, region, step, checked)
            })
            .collect();
        let results = futures::stream::iter(steps)
            .buffered(self.config.concurrency.max(1))
            .collect()
            .await;
        Ok(results)
    }

    async fn run_step(
        &self,
        tenant: &TenantRecord,
        alias: &PlannedAlias,
        region: &str,
        step: &Step,
        checked: Option<ProvisionResult>,
    ) -> ProvisionResult {
        match (step, checked) {
            (Step::Reuse(arn), _) => {
                ProvisionResult::ok(&alias.alias, region, arn.clone(), Outcome::Reused)
            }
            (Step::Record(_), Some(result)) => result,
            (Step::Record(arn), None) => {
                ProvisionResult::ok(&alias.alias, region, arn.clone(), Outcome::Recorded)
            }
            (Step::Create, _) => self.create(tenant, alias, region).await,
        }
    }

    /// GetInferenceProfile of a given ARN: RECORDED when it is an application
    /// profile in `region` whose models are all the source's model; a
    /// Bedrock failure is a FAILED result; another model refuses the call.
    async fn check_given(
        &self,
        alias: &PlannedAlias,
        region: &str,
        arn: &str,
    ) -> Result<ProvisionResult, ProvisionError> {
        let field = format!("aliases[{}].existing_inference_profile_arn", alias.index);
        match profile_arn_region(arn) {
            Some(arn_region) if arn_region == region => {}
            Some(arn_region) => {
                return Err(ProvisionError::invalid(
                    field,
                    format!("is in {arn_region}, not in the requested region {region}"),
                ));
            }
            None => {
                return Err(ProvisionError::invalid(
                    field,
                    "is not an application inference profile ARN",
                ));
            }
        }
        let client = match self.client(region) {
            Ok(client) => client,
            Err(message) => return Ok(ProvisionResult::failed(&alias.alias, region, message)),
        };
        let profile = match client
            .get_inference_profile()
            .inference_profile_identifier(arn)
            .send()
            .await
        {
            Ok(profile) => profile,
            Err(error) => {
                return Ok(ProvisionResult::failed(
                    &alias.alias,
                    region,
                    bedrock_message(&error),
                ));
            }
        };
        if *profile.r#type() != InferenceProfileType::Application {
            return Err(ProvisionError::invalid(
                field,
                "is not an application inference profile",
            ));
        }
        let models: Vec<&str> = profile
            .models()
            .iter()
            .map(|m| m.model_arn().and_then(arn_model).unwrap_or_default())
            .collect();
        if models.is_empty() || models.iter().any(|m| *m != alias.model_id) {
            return Err(ProvisionError::invalid(
                field,
                format!(
                    "copies {}, not {}",
                    models.join(", "),
                    alias.source_model_id
                ),
            ));
        }
        Ok(ProvisionResult::ok(
            &alias.alias,
            region,
            profile.inference_profile_arn().to_owned(),
            Outcome::Recorded,
        ))
    }

    fn tags(&self, tenant: &TenantRecord) -> Result<Vec<Tag>, String> {
        let keys = &self.config.tag_keys;
        let standard = [
            (&keys.tenant, tenant.tenant_id.as_str()),
            (
                &keys.application,
                tenant.application_ids.first().map_or("", String::as_str),
            ),
            (&keys.cost_center, tenant.cost_center.as_str()),
            (&keys.environment, self.config.environment.as_str()),
        ];
        standard
            .into_iter()
            .map(|(key, value)| (key.as_str(), value))
            .chain(
                tenant
                    .profile_tags
                    .iter()
                    .map(|(k, v)| (k.as_str(), v.as_str())),
            )
            .map(|(key, value)| {
                Tag::builder()
                    .key(key)
                    .value(value)
                    .build()
                    .map_err(|e| format!("tag {key:?}: {e}"))
            })
            .collect()
    }

    fn description(&self, tenant: &str, alias: &str) -> Option<String> {
        let template = &self.config.description;
        if template.is_empty() {
            return None;
        }
        let lead = |c: char| c.is_ascii_alphanumeric() || c == ':' || c == '.';
        // A value with no character Bedrock takes would leave two separators
        // side by side, which its pattern refuses.
        let value = |text: &str| {
            let fitted = fit(text, lead, MAX_DESCRIPTION_LEN);
            if fitted.is_empty() {
                "unnamed".to_owned()
            } else {
                fitted
            }
        };
        let description: String = template
            .replace("{tenant}", &value(tenant))
            .replace("{alias}", &value(alias))
            .chars()
            .take(MAX_DESCRIPTION_LEN)
            .collect();
        Some(description.trim_end_matches([' ', '_', '-']).to_owned())
    }

    /// CreateInferenceProfile; on ConflictException, the tenant's profile of
    /// that name.
    async fn create(
        &self,
        tenant: &TenantRecord,
        alias: &PlannedAlias,
        region: &str,
    ) -> ProvisionResult {
        let failed = |message: String| ProvisionResult::failed(&alias.alias, region, message);
        let client = match self.client(region) {
            Ok(client) => client,
            Err(message) => return failed(message),
        };
        let tags = match self.tags(tenant) {
            Ok(tags) => tags,
            Err(message) => return failed(message),
        };
        let name = profile_name(&tenant.tenant_id, &alias.alias);
        let created = client
            .create_inference_profile()
            .inference_profile_name(&name)
            .set_description(self.description(&tenant.tenant_id, &alias.alias))
            .client_request_token(client_request_token(
                &tenant.tenant_id,
                &alias.alias,
                region,
                &alias.source_model_id,
                tenant.revision,
            ))
            .model_source(InferenceProfileModelSource::CopyFrom(
                self.source_arn(region, &alias.source_model_id),
            ))
            .set_tags(Some(tags))
            .send()
            .await;
        match created {
            Ok(output) => {
                tracing::info!(
                    tenant = %tenant.tenant_id,
                    alias = %alias.alias,
                    region,
                    arn = output.inference_profile_arn(),
                    "application inference profile created"
                );
                ProvisionResult::ok(
                    &alias.alias,
                    region,
                    output.inference_profile_arn().to_owned(),
                    Outcome::Created,
                )
            }
            Err(error)
                if matches!(
                    error.as_service_error(),
                    Some(CreateInferenceProfileError::ConflictException(_))
                ) =>
            {
                match self.find(client, tenant, alias, &name).await {
                    Ok(Some(arn)) => {
                        ProvisionResult::ok(&alias.alias, region, arn, Outcome::Reused)
                    }
                    Ok(None) => failed(bedrock_message(&error)),
                    Err(message) => failed(message),
                }
            }
            Err(error) => {
                tracing::warn!(
                    tenant = %tenant.tenant_id,
                    alias = %alias.alias,
                    region,
                    error = %DisplayErrorContext(&error),
                    "cannot create an application inference profile"
                );
                failed(bedrock_message(&error))
            }
        }
    }

    /// The tenant's existing profile named `name` in the client's region:
    /// found by ListInferenceProfiles (type APPLICATION), and only if it
    /// carries the tenant's tag and copies the alias's model.
    async fn find(
        &self,
        client: &Client,
        tenant: &TenantRecord,
        alias: &PlannedAlias,
        name: &str,
    ) -> Result<Option<String>, String> {
        let mut next_token: Option<String> = None;
        let found = loop {
            let page = client
                .list_inference_profiles()
                .type_equals(InferenceProfileType::Application)
                .set_next_token(next_token.take())
                .send()
                .await
                .map_err(|e| bedrock_message(&e))?;
            if let Some(found) = page
                .inference_profile_summaries()
                .iter()
                .find(|p| p.inference_profile_name() == name)
            {
                break found.clone();
            }
            match page.next_token() {
                Some(token) if !token.is_empty() => next_token = Some(token.to_owned()),
                Some(_) | None => return Ok(None),
            }
        };
        let arn = found.inference_profile_arn().to_owned();
        let copies_model = !found.models().is_empty()
            && found
                .models()
                .iter()
                .all(|m| m.model_arn().and_then(arn_model) == Some(alias.model_id.as_str()));
        if !copies_model {
            return Err(format!(
                "the existing profile {name} ({arn}) does not copy {}",
                alias.source_model_id
            ));
        }
        let tags = client
            .list_tags_for_resource()
            .resource_arn(&arn)
            .send()
            .await
            .map_err(|e| bedrock_message(&e))?;
        let owner = tags
            .tags()
            .iter()
            .find(|t| t.key() == self.config.tag_keys.tenant)
            .map(Tag::value);
        if owner != Some(tenant.tenant_id.as_str()) {
            return Err(format!(
                "the existing profile {name} ({arn}) is tagged {}={}, not this tenant",
                self.config.tag_keys.tenant,
                owner.unwrap_or("<none>")
            ));
        }
        tracing::info!(
            tenant = %tenant.tenant_id,
            alias = %alias.alias,
            arn = %arn,
            "existing application inference profile reused"
        );
        Ok(Some(arn))
    }

    /// Step 3: folds the results into the record (no I/O). Fails if the
    /// alias was bound to another source meanwhile.
    pub fn apply(
        record: &mut TenantRecord,
        plan: &[PlannedAlias],
        results: &[ProvisionResult],
    ) -> Result<(), ProvisionError> {
        for planned in plan {
            if let Some(bound) = record.aliases.get(&planned.alias)
                && bound.source_model_id != planned.source_model_id
            {
                return Err(ProvisionError::AliasBound {
                    alias: planned.alias.clone(),
                    bound_to: bound.source_model_id.clone(),
                    requested: planned.source_model_id.clone(),
                });
            }
            let entry = record
                .aliases
                .entry(planned.alias.clone())
                .or_insert_with(|| AliasRecord {
                    source_model_id: planned.source_model_id.clone(),
                    model_id: planned.model_id.clone(),
                    scope: planned.scope,
                    profiles: BTreeMap::new(),
                });
            entry.model_id.clone_from(&planned.model_id);
            entry.scope = planned.scope;
            for result in results.iter().filter(|r| r.alias == planned.alias) {
                let profile = match result.outcome {
                    Outcome::Created | Outcome::Reused | Outcome::Recorded => ProfileRecord {
                        arn: result.arn.clone(),
                        state: ProfileState::Active,
                        message: String::new(),
                    },
                    Outcome::Failed => {
                        // A working profile stays in use; a failed retry
                        // does not take it away.
                        if entry
                            .profiles
                            .get(&result.region)
                            .is_some_and(|p| p.state == ProfileState::Active)
                        {
                            continue;
                        }
                        ProfileRecord {
                            arn: String::new(),
                            state: ProfileState::Failed,
                            message: result.message.clone(),
                        }
                    }
                };
                entry.profiles.insert(result.region.clone(), profile);
            }
        }
        Ok(())
    }

    /// Deletes profiles; a profile already gone counts as deleted. Returns
    /// the aliases with a profile that could not be deleted, and why.
    pub async fn delete(&self, profiles: &[ProfileRef]) -> Vec<(ProfileRef, String, bool)> {
        let deletions: Vec<_> = profiles.iter().map(|p| self.delete_one(p)).collect();
        let outcomes: Vec<_> = futures::stream::iter(deletions)
            .buffered(self.config.concurrency.max(1))
            .collect()
            .await;
        outcomes.into_iter().flatten().collect()
    }

    async fn delete_one(&self, profile: &ProfileRef) -> Option<(ProfileRef, String, bool)> {
        let client = match self.client(&profile.region) {
            Ok(client) => client,
            Err(message) => return Some((profile.clone(), message, false)),
        };
        match client
            .delete_inference_profile()
            .inference_profile_identifier(&profile.arn)
            .send()
            .await
        {
            Ok(_) => {
                tracing::info!(arn = %profile.arn, "application inference profile deleted");
                None
            }
            Err(error)
                if matches!(
                    error.as_service_error(),
                    Some(DeleteInferenceProfileError::ResourceNotFoundException(_))
                ) =>
            {
                None
            }
            Err(error) => Some((profile.clone(), bedrock_message(&error), transient(&error))),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn bedrock_name_ok(name: &str) -> bool {
        let mut after_lead = false;
        for c in name.chars() {
            if c.is_ascii_alphanumeric() {
                after_lead = true;
            } else if after_lead && matches!(c, ' ' | '_' | '-') {
                after_lead = false;
            } else {
                return false;
            }
        }
        !name.is_empty() && name.len() <= MAX_NAME_LEN
    }

    #[test]
    fn profile_names_fit_bedrock_and_stay_apart() {
        let plain = profile_name("acme", "sonnet");
        assert!(plain.starts_with("tm-acme-sonnet-"), "{plain}");
        assert_eq!(plain.len(), "tm-acme-sonnet-".len() + NAME_DIGEST_LEN);
        let long = "x".repeat(64);
        for (tenant, alias) in [
            ("acme.eu", "claude.v2"),
            ("-a--b..", "_x_"),
            ("...", "---"),
            (long.as_str(), long.as_str()),
        ] {
            let name = profile_name(tenant, alias);
            assert!(bedrock_name_ok(&name), "{name}");
        }
        // The same readable text, different tenants: different names.
        assert_ne!(profile_name("a-b", "c"), profile_name("a", "b-c"));
        assert_ne!(profile_name("a.b", "c"), profile_name("a_b", "c"));
        assert_eq!(profile_name("acme", "sonnet"), plain);
    }

    #[test]
    fn descriptions_fit_bedrock() {
        let lead_separated = |text: &str| {
            let mut after_lead = false;
            for c in text.chars() {
                if c.is_ascii_alphanumeric() || c == ':' || c == '.' {
                    after_lead = true;
                } else if after_lead && matches!(c, ' ' | '_' | '-') {
                    after_lead = false;
                } else {
                    return false;
                }
            }
            !text.is_empty() && text.chars().count() <= MAX_DESCRIPTION_LEN
        };
        let provisioner = Provisioner::new(
            BTreeMap::new(),
            ProvisionConfig {
                regions: Vec::new(),
                ..ProvisionConfig::default()
            },
        )
        .unwrap();
        let long = "y".repeat(300);
        for (tenant, alias) in [
            ("acme.eu", "sonnet"),
            ("---", "__"),
            ("a--b", "c_-d"),
            (long.as_str(), "x"),
        ] {
            let description = provisioner.description(tenant, alias).unwrap();
            assert!(lead_separated(&description), "{description:?}");
        }
        assert_eq!(
            provisioner.description("acme.eu", "sonnet").as_deref(),
            Some("tenantmeter acme.eu sonnet")
        );
    }

    #[test]
    fn sources_split_into_model_and_geography() {
        assert_eq!(
            split_source("anthropic.claude-x"),
            ("anthropic.claude-x", None)
        );
        assert_eq!(
            split_source("us.anthropic.claude-x"),
            ("anthropic.claude-x", Some("us"))
        );
        assert_eq!(
            split_source("global.anthropic.claude-x"),
            ("anthropic.claude-x", Some("global"))
        );
        assert_eq!(split_source("us-gov.a.b"), ("a.b", Some("us-gov")));
        assert_eq!(
            split_source("amazon.nova-micro-v1:0"),
            ("amazon.nova-micro-v1:0", None)
        );
    }

    #[test]
    fn tokens_are_bedrock_shaped_and_move_with_the_revision() {
        let one = client_request_token("acme", "sonnet", "us-east-1", "x", 1);
        assert_eq!(one.len(), 64);
        assert!(one.bytes().all(|b| b.is_ascii_hexdigit()));
        assert_eq!(
            one,
            client_request_token("acme", "sonnet", "us-east-1", "x", 1)
        );
        assert_ne!(
            one,
            client_request_token("acme", "sonnet", "us-east-1", "x", 2)
        );
    }

    #[test]
    fn arns_are_read() {
        assert_eq!(
            arn_model("arn:aws:bedrock:us-east-1::foundation-model/anthropic.x:0"),
            Some("anthropic.x:0")
        );
        assert_eq!(
            profile_arn_region(
                "arn:aws:bedrock:eu-west-1:123456789012:application-inference-profile/abc"
            ),
            Some("eu-west-1")
        );
        assert_eq!(
            profile_arn_region("arn:aws:bedrock:us-east-1:1:inference-profile/us.x"),
            None
        );
    }
}
