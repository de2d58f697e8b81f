//! The gateway: what tenants call instead of Amazon Bedrock. It authenticates
//! the tenant by its API key, calls Bedrock with the tenant's application
//! inference profile, and reserves and settles every call with the meter.
//!
//! Start at [`run`], then [`api`] (the tenant RPCs), [`call`] (one call's
//! life: key, route, reservation, settlement), [`metering`] and [`spool`]
//! (the money path's meter side), [`registry`] and [`admin`] (tenants).

pub mod admin;
pub mod api;
pub mod call;
pub mod config;
pub mod converse;
pub mod convert;
pub mod error;
pub mod invoke;
pub mod metering;
pub mod provision;
pub mod registry;
pub mod spool;
pub mod upstream;

use std::sync::Arc;
use std::time::Duration;

use tenantmeter_pricing::follower::PriceBookFollower;
use tenantmeter_proto::v1::gateway_admin_service_server::GatewayAdminServiceServer;
use tenantmeter_proto::v1::gateway_service_server::GatewayServiceServer;
use tenantmeter_proto::v1::meter_service_client::MeterServiceClient;
use tenantmeter_proto::v1::pricing_admin_service_client::PricingAdminServiceClient;
use tenantmeter_proto::v1::pricing_service_client::PricingServiceClient;
use tenantmeter_runtime::auth::AdminAuth;
use tenantmeter_runtime::client::{self, ClientOptions};
use tenantmeter_runtime::clock::Clock;
use tenantmeter_runtime::error::RuntimeError;
use tenantmeter_runtime::redis_connection::split_urls;
use tenantmeter_runtime::server::{HealthHandle, ServeOptions, Services, serve};
use tenantmeter_runtime::shutdown::Shutdown;
use tokio::net::TcpListener;

use crate::admin::{AdminOptions, GatewayAdmin, PricingAdmin};
use crate::api::{CallSettings, GatewayApi};
use crate::call::CallPath;
pub use crate::config::GatewayConfig;
use crate::metering::Metering;
use crate::provision::{ProvisionConfig, Provisioner, TagKeys};
use crate::registry::{Registry, RegistryError};
use crate::spool::{Spool, SpoolError};

/// Health service name under which the gateway reports whether every
/// settlement reached the meter (NOT_SERVING while some wait in the spool),
/// beside `tenantmeter.v1.GatewayService`, which keeps serving meanwhile.
pub const SETTLEMENTS_HEALTH: &str = "tenantmeter.gateway.settlements";

/// How long start-up waits for the first price book before serving anyway
/// (ProvisionProfiles then answers UNAVAILABLE until it arrives).
const PRICE_BOOK_WAIT: Duration = Duration::from_secs(10);

/// Why the gateway could not start or stopped with an error.
#[derive(Debug, thiserror::Error)]
pub enum RunError {
    /// Redis could not be reached at start-up.
    #[error("cannot reach the registry's redis: {0}")]
    Registry(#[from] RegistryError),
    /// The spool directory cannot be used.
    #[error("cannot open the settlement spool: {0}")]
    Spool(#[from] SpoolError),
    /// The provisioning settings are inconsistent.
    #[error("invalid provisioning settings: {0}")]
    Provision(String),
    /// The gRPC server or a client failed.
    #[error(transparent)]
    Runtime(#[from] RuntimeError),
}

/// What the gateway needs besides its own section.
#[derive(Debug, Clone)]
pub struct GatewayDeps {
    /// Redis URL of the registry (comma-separated seed nodes with `redis_cluster`).
    pub redis_url: String,
    /// Admin token guarding `GatewayAdminService` (and sent to pricing's admin
    /// API to assign plans); `None` disables the admin API.
    pub admin_token: Option<String>,
    /// The clock everything reads.
    pub clock: Arc<dyn Clock>,
}

/// Runs the gateway on `listener` until `shutdown` fires.
pub async fn run(
    config: GatewayConfig,
    deps: GatewayDeps,
    listener: TcpListener,
    shutdown: Shutdown,
) -> Result<(), RunError> {
    let urls = split_urls(&deps.redis_url);
    let registry = Registry::connect(
        &urls,
        config.redis_cluster,
        config.redis_timeout,
        Arc::clone(&deps.clock),
    )
    .await?;
    let spool = Spool::open(&config.spool_dir)?;
    if spool.pending() > 0 {
        tracing::warn!(
            pending = spool.pending(),
            dir = %config.spool_dir.display(),
            "settlements left in the spool by an earlier run; replaying them"
        );
    }

    let options = ClientOptions::default();
    let meter = MeterServiceClient::new(client::connect_lazy(&config.meter_url, &options)?);
    let pricing_channel = client::connect_lazy(&config.pricing_url, &options)?;
    let (prices, follow) = PriceBookFollower::start(
        PricingServiceClient::new(pricing_channel.clone()),
        shutdown.token().clone(),
    );
    shutdown.spawn(follow);

    let metering = Metering::new(
        meter,
        Arc::new(spool.clone()),
        config.reserve_timeout,
        config.settle_timeout,
        config.meter_fail_mode,
    );
    {
        let metering = metering.clone();
        spool.spawn_replayer(
            move |request| {
                let metering = metering.clone();
                async move { metering.deliver(request).await }
            },
            config.spool_replay_every,
            &shutdown,
        );
    }

    let sdk = upstream::sdk_config(&config.bedrock, &config.bedrock.region).await;
    let bedrock = aws_sdk_bedrockruntime::Client::new(&sdk);
    let provision_regions = config.bedrock.provision_regions();
    let tags = &config.profile_tags;
    let provisioner = Provisioner::from_sdk_config(
        &sdk,
        &provision_regions,
        ProvisionConfig {
            account_id: config.bedrock.account_id.clone(),
            regions: provision_regions.clone(),
            tag_keys: TagKeys {
                tenant: tags.tenant_key.clone(),
                application: tags.application_key.clone(),
                cost_center: tags.cost_center_key.clone(),
                environment: tags.environment_key.clone(),
            },
            environment: tags.environment.clone(),
            ..ProvisionConfig::default()
        },
    )
    .map_err(|e| RunError::Provision(e.to_string()))?;

    match prices.ready(PRICE_BOOK_WAIT).await {
        Ok(book) => tracing::info!(version = book.version, "price book received"),
        Err(error) => tracing::warn!(%error, "serving without a price book until pricing answers"),
    }

    let admin = GatewayAdmin::new(
        registry.clone(),
        provisioner,
        PricingAdmin::new(
            PricingAdminServiceClient::new(pricing_channel),
            deps.admin_token.clone(),
        ),
        prices,
        AdminOptions {
            default_key_overlap: config.default_key_overlap,
        },
    );
    let path = CallPath::new(
        registry,
        metering,
        Arc::clone(&deps.clock),
        config.bedrock.region.clone(),
    );
    let api = GatewayApi::new(
        path,
        bedrock,
        shutdown.tasks().clone(),
        CallSettings {
            limits: convert::Limits {
                max_messages: usize::try_from(config.max_messages).unwrap_or(usize::MAX),
                max_request_bytes: config.max_request_bytes,
            },
            default_max_output_tokens: i64::from(config.default_max_output_tokens),
            log_content: config.log_content,
        },
    );
    let services = Services::new()
        .add_service(GatewayServiceServer::new(api))
        .add_service(GatewayAdminServiceServer::with_interceptor(
            admin,
            AdminAuth::new(deps.admin_token),
        ));
    let health = HealthHandle::new();
    shutdown.spawn(watch_settlements(spool, health.clone(), shutdown.clone()));
    serve(
        ServeOptions::new(listener, config.server()),
        services,
        &health,
        shutdown,
    )
    .await?;
    Ok(())
}

/// Reports [`SETTLEMENTS_HEALTH`] NOT_SERVING while settlements wait in the
/// spool (the meter is not taking them), SERVING once it is empty, and logs
/// each change: `grpc.health.v1.Health/Check` with this name tells an SRE at
/// once that usage is being held back, without reading the spool directory.
async fn watch_settlements(spool: Spool, health: HealthHandle, shutdown: Shutdown) {
    let mut pending = spool.watch_pending();
    let mut spooling = None;
    loop {
        let now = *pending.borrow_and_update() > 0;
        if spooling != Some(now) {
            if now {
                health.set_not_serving(SETTLEMENTS_HEALTH).await;
                tracing::warn!(
                    pending = spool.pending(),
                    dir = %spool.dir().display(),
                    "settlements are being spooled: the meter is not taking them"
                );
            } else {
                health.set_serving(SETTLEMENTS_HEALTH).await;
                if spooling.is_some() {
                    tracing::info!("the spool is empty: every settlement reached the meter");
                }
            }
            spooling = Some(now);
        }
        tokio::select! {
            () = shutdown.triggered() => return,
            changed = pending.changed() => if changed.is_err() { return },
        }
    }
}
