//! The meter: tenantmeter's ledger and brake. It counts every tenant's usage
//! exactly once in Redis (rolling windows, day and month totals, hourly and
//! daily rollups), admits or denies requests against the tenant's limits with
//! reservations, and stores the throttle policies alerting decides.
//!
//! Start at [`run`], then [`meter::Meter`] (the behaviour), [`store`] (the
//! verbs over Redis) and [`scripts`] (the Lua that makes each write atomic).

pub mod active_index;
pub mod api;
pub mod config;
pub mod error;
pub mod events;
pub mod meter;
pub mod paging;
pub mod policy;
pub mod scripts;
pub mod store;

use std::sync::Arc;
use std::time::Duration;

use tenantmeter_pricing::follower::PriceBookFollower;
use tenantmeter_proto::v1::meter_service_server::MeterServiceServer;
use tenantmeter_proto::v1::pricing_service_client::PricingServiceClient;
use tenantmeter_runtime::client::{self, ClientOptions};
use tenantmeter_runtime::clock::Clock;
use tenantmeter_runtime::error::RuntimeError;
use tenantmeter_runtime::redis_connection::split_urls;
use tenantmeter_runtime::server::{HealthHandle, ServeOptions, Services, serve};
use tenantmeter_runtime::shutdown::Shutdown;
use tokio::net::TcpListener;

pub use crate::config::MeterConfig;
use crate::store::{MeterStore, Retention, StoreError};

/// Health service name under which the meter reports whether Redis answers,
/// beside `tenantmeter.v1.MeterService` (which stays SERVING: Reserve still
/// answers by its fail mode). `grpc.health.v1.Health/Check` with this name
/// tells an SRE at once why Reserves fail open.
pub const REDIS_HEALTH: &str = "tenantmeter.meter.redis";

/// How often the Redis health is probed.
const REDIS_PROBE_EVERY: Duration = Duration::from_secs(1);

/// How long start-up waits for the first price book before serving anyway
/// (events are then refused as UNAVAILABLE until it arrives).
const PRICE_BOOK_WAIT: Duration = Duration::from_secs(10);

/// Why the meter could not start or stopped with an error.
#[derive(Debug, thiserror::Error)]
pub enum RunError {
    /// Redis could not be reached at start-up.
    #[error("cannot reach redis: {0}")]
    Redis(#[from] StoreError),
    /// The gRPC server or a client failed.
    #[error(transparent)]
    Runtime(#[from] RuntimeError),
}

/// What the meter needs besides its own section.
#[derive(Debug, Clone)]
pub struct MeterDeps {
    /// Redis URL (comma-separated seed nodes with `redis_cluster`).
    pub redis_url: String,
    /// The clock everything reads; tests and backtests pass a manual one.
    pub clock: Arc<dyn Clock>,
}

fn seconds(duration: Duration) -> u64 {
    duration.as_secs().max(1)
}

/// Runs the meter on `listener` until `shutdown` fires.
pub async fn run(
    config: MeterConfig,
    deps: MeterDeps,
    listener: TcpListener,
    shutdown: Shutdown,
) -> Result<(), RunError> {
    let urls = split_urls(&deps.redis_url);
    let retention = Retention {
        // An event can be counted until it is `allowed_lateness` old; its mark
        // must outlive that, plus the skew it may have arrived early by.
        dedupe_s: seconds(config.allowed_lateness + config.allowed_skew + Duration::from_secs(60)),
        hourly_s: seconds(config.hourly_retention),
        daily_s: seconds(config.daily_retention),
    };
    let store =
        MeterStore::connect(&urls, config.redis_cluster, config.redis_timeout, retention).await?;

    let channel = client::connect_lazy(&config.pricing_url, &ClientOptions::default())?;
    let (prices, follow) =
        PriceBookFollower::start(PricingServiceClient::new(channel), shutdown.token().clone());
    shutdown.spawn(follow);
    match prices.ready(PRICE_BOOK_WAIT).await {
        Ok(book) => tracing::info!(version = book.version, "price book received"),
        Err(error) => tracing::warn!(%error, "serving without a price book until pricing answers"),
    }

    let health = HealthHandle::new();
    shutdown.spawn(watch_redis(
        store.clone(),
        health.clone(),
        config.redis_timeout,
        shutdown.clone(),
    ));
    let meter = Arc::new(meter::Meter::new(
        shutdown.tasks().clone(),
        store,
        prices,
        deps.clock,
        config.clone(),
    ));
    let services = Services::new().add_service(MeterServiceServer::new(api::MeterApi::new(meter)));
    serve(
        ServeOptions::new(listener, config.server()),
        services,
        &health,
        shutdown,
    )
    .await?;
    Ok(())
}

/// Reports [`REDIS_HEALTH`] SERVING while Redis answers a PING within
/// `timeout`, NOT_SERVING otherwise, until shutdown; logs each change.
async fn watch_redis(
    store: MeterStore,
    health: HealthHandle,
    timeout: Duration,
    shutdown: Shutdown,
) {
    let mut up = None;
    loop {
        let answered = matches!(
            tokio::time::timeout(timeout, store.ping()).await,
            Ok(Ok(()))
        );
        if up != Some(answered) {
            if answered {
                health.set_serving(REDIS_HEALTH).await;
                tracing::info!("redis answers");
            } else {
                health.set_not_serving(REDIS_HEALTH).await;
                tracing::warn!(
                    "redis does not answer: Reserve falls back to its fail mode, writes answer UNAVAILABLE"
                );
            }
            up = Some(answered);
        }
        tokio::select! {
            () = shutdown.triggered() => return,
            () = tokio::time::sleep(REDIS_PROBE_EVERY) => {}
        }
    }
}
