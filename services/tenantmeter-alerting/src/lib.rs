//! tenantmeter's alerting service (contract `proto/tenantmeter/v1/alerting.proto`,
//! design in `docs/alerting.md`).
//!
//! - [`engine`]: the evaluation pass (every `interval`, per shard under a
//!   lease, fleet last) feeding the pure level engine
//!   (`tenantmeter_domain::levels`) through [`observe`] and [`step`], with
//!   policies from [`throttle`] sent to the meter and state in [`state`].
//! - [`budgets`], [`alerts`] (history, silences, shadow mode), [`sinks`]
//!   (webhooks and their delivery queue): the Redis-backed stores.
//! - [`api`], [`admin`], [`watch_levels`]: the gRPC services.

pub mod admin;
pub mod alerts;
pub mod api;
pub mod budgets;
pub mod config;
pub mod engine;
pub mod observe;
pub mod sinks;
pub mod state;
pub mod status;
pub mod step;
pub mod throttle;
pub mod watch_levels;

use std::sync::Arc;
use std::time::Duration;

use tenantmeter_pricing::follower::PriceBookFollower;
use tenantmeter_proto::v1::alerting_admin_service_server::AlertingAdminServiceServer;
use tenantmeter_proto::v1::alerting_service_server::AlertingServiceServer;
use tenantmeter_proto::v1::meter_service_client::MeterServiceClient;
use tenantmeter_proto::v1::pricing_service_client::PricingServiceClient;
use tenantmeter_runtime::auth::AdminAuth;
use tenantmeter_runtime::client::{self, ClientOptions};
use tenantmeter_runtime::clock::Clock;
use tenantmeter_runtime::error::RuntimeError;
use tenantmeter_runtime::redis_connection::{RedisConnection, split_urls};
use tenantmeter_runtime::server::{HealthHandle, ServeOptions, Services, serve};
use tenantmeter_runtime::shutdown::Shutdown;
use tokio::net::TcpListener;

pub use crate::config::AlertingConfig;
use crate::engine::{Engine, EngineParts};

/// How long start-up waits for the first price book before evaluating anyway
/// (tenants are then observed without their plans until it arrives).
const PRICE_BOOK_WAIT: Duration = Duration::from_secs(10);

/// Why alerting could not start or stopped with an error.
#[derive(Debug, thiserror::Error)]
pub enum RunError {
    /// Redis could not be reached at start-up.
    #[error("cannot reach redis: {0}")]
    Redis(#[from] redis::RedisError),
    /// Redis did not answer at start-up.
    #[error("redis did not answer within {0:?}")]
    RedisTimeout(Duration),
    /// The gRPC server or a client failed.
    #[error(transparent)]
    Runtime(#[from] RuntimeError),
}

/// What alerting needs besides its own section.
#[derive(Debug, Clone)]
pub struct AlertingDeps {
    /// Redis URL (comma-separated seed nodes with `redis_cluster`).
    pub redis_url: String,
    /// Admin token guarding `AlertingAdminService`; `None` disables it.
    pub admin_token: Option<String>,
    /// The clock every evaluation instant and timestamp comes from.
    pub clock: Arc<dyn Clock>,
}

/// Runs alerting on `listener` until `shutdown` fires: the scheduled passes,
/// the notifier, and `AlertingService` / `AlertingAdminService`.
pub async fn run(
    config: AlertingConfig,
    deps: AlertingDeps,
    listener: TcpListener,
    shutdown: Shutdown,
) -> Result<(), RunError> {
    let urls = split_urls(&deps.redis_url);
    let conn = tokio::time::timeout(
        config.redis_timeout,
        RedisConnection::connect(&urls, config.redis_cluster, config.redis_timeout),
    )
    .await
    .map_err(|_| RunError::RedisTimeout(config.redis_timeout))??;

    let options = ClientOptions::default();
    let meter = MeterServiceClient::new(client::connect_lazy(&config.meter_url, &options)?);
    let pricing = PricingServiceClient::new(client::connect_lazy(&config.pricing_url, &options)?);
    let (prices, follow) = PriceBookFollower::start(pricing, shutdown.token().clone());
    shutdown.spawn(follow);
    match prices.ready(PRICE_BOOK_WAIT).await {
        Ok(book) => tracing::info!(version = book.version, "price book received"),
        Err(error) => tracing::warn!(%error, "evaluating without plans until pricing answers"),
    }

    let budgets = budgets::BudgetStore::new(conn.clone(), config.redis_timeout);
    let alerts = alerts::AlertStore::new(conn.clone(), config.redis_timeout);
    let queue = sinks::SinkQueue::new(
        conn.clone(),
        config.redis_timeout,
        config.notifier.clone(),
        Arc::clone(&deps.clock),
    );
    let engine = Arc::new(Engine::new(
        config.clone(),
        Arc::clone(&deps.clock),
        EngineParts {
            state: state::StateStore::new(conn, config.redis_timeout),
            budgets: budgets.clone(),
            alerts: alerts.clone(),
            queue: queue.clone(),
            meter,
            prices,
        },
    ));
    shutdown.spawn(Arc::clone(&engine).run(shutdown.token().clone()));
    shutdown.spawn(queue.clone().notifier().run(shutdown.token().clone()));
    {
        let alerts = alerts.clone();
        let clock = Arc::clone(&deps.clock);
        let retention = config.alert_retention;
        let token = shutdown.token().clone();
        shutdown.spawn(async move { alerts.retain(retention, clock, token).await });
    }

    let api = api::AlertingApi {
        engine,
        budgets,
        alerts,
        queue,
        shutdown: shutdown.clone(),
        watch: alerts::WatchConfig::default(),
    };
    let services = Services::new()
        .add_service(AlertingServiceServer::new(api.clone()))
        .add_service(AlertingAdminServiceServer::with_interceptor(
            api,
            AdminAuth::new(deps.admin_token),
        ));
    serve(
        ServeOptions::new(listener, config.server()),
        services,
        &HealthHandle::new(),
        shutdown,
    )
    .await?;
    Ok(())
}
