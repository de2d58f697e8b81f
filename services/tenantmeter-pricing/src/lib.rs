//! The pricing service: Bedrock list prices (what AWS charges), rate cards (what
//! tenants are charged) and exact quotes.
//!
//! Start at [`run`]. The arithmetic lives in `tenantmeter-domain` (`quote`,
//! `ratecard`); this crate adds the versioned price book in Redis ([`store`]),
//! the replica's live copy and its watchers ([`book`]), the shipped seed files
//! ([`seed`]) and the gRPC surface ([`api`]). Other services keep a live copy of
//! the book with the client side of `WatchPriceBook`, [`follower`].

pub mod api;
pub mod book;
pub mod config;
pub mod convert;
pub mod error;
pub mod follower;
pub mod seed;
pub mod store;

use std::path::Path;
use std::sync::Arc;

use sha2::{Digest as _, Sha256};
use tenantmeter_proto::v1::pricing_admin_service_server::PricingAdminServiceServer;
use tenantmeter_proto::v1::pricing_service_server::PricingServiceServer;
use tenantmeter_runtime::auth::AdminAuth;
use tenantmeter_runtime::error::RuntimeError;
use tenantmeter_runtime::server::{HealthHandle, ServeOptions, Services, serve};
use tenantmeter_runtime::shutdown::Shutdown;
use tokio::net::TcpListener;

use crate::book::{PriceBookState, Seed};
pub use crate::config::PricingConfig;
use crate::error::PricingError;
use crate::seed::SeedFileError;
use crate::store::{PriceBookStore, StoreError};

/// The shipped list prices, built in so the binary runs from any directory.
pub const SHIPPED_PRICE_BOOK: &str = include_str!("../../../deploy/pricebook.toml");
/// The shipped rate cards.
pub const SHIPPED_PLANS: &str = include_str!("../../../deploy/plans.toml");

/// Why the service could not start or stopped with an error.
#[derive(Debug, thiserror::Error)]
pub enum RunError {
    /// A price or plans file is malformed.
    #[error("{0}")]
    SeedFile(#[from] SeedFileError),
    /// Redis could not be reached at start-up.
    #[error("cannot reach redis at {url}: {source}")]
    Redis {
        /// The configured URL, without credentials.
        url: String,
        /// The failure.
        source: StoreError,
    },
    /// The price book could not be loaded or seeded.
    #[error("cannot load the price book: {0}")]
    Book(#[from] PricingError),
    /// The gRPC server failed.
    #[error(transparent)]
    Server(#[from] RuntimeError),
}

/// What the pricing service needs besides its own section.
#[derive(Debug, Clone)]
pub struct PricingDeps {
    /// Redis URL.
    pub redis_url: String,
    /// Admin token guarding `PricingAdminService`; `None` disables the admin API.
    pub admin_token: Option<String>,
}

/// Reads the seed files named in `config`, or the shipped ones.
pub fn load_seed(config: &PricingConfig) -> Result<Seed, SeedFileError> {
    fn text(
        path: Option<&Path>,
        shipped: &str,
        name: &str,
    ) -> Result<(String, String), SeedFileError> {
        match path {
            Some(path) => std::fs::read_to_string(path)
                .map(|t| (path.display().to_string(), t))
                .map_err(|e| SeedFileError {
                    file: path.display().to_string(),
                    entry: String::new(),
                    field: String::new(),
                    reason: format!("cannot read: {e}"),
                }),
            None => Ok((format!("{name} (built in)"), shipped.to_owned())),
        }
    }
    let (price_name, price_text) = text(
        config.price_book_file.as_deref(),
        SHIPPED_PRICE_BOOK,
        "deploy/pricebook.toml",
    )?;
    let (plans_name, plans_text) = text(
        config.plans_file.as_deref(),
        SHIPPED_PLANS,
        "deploy/plans.toml",
    )?;
    let mut digest = Sha256::new();
    digest.update(price_text.as_bytes());
    digest.update([0]);
    digest.update(plans_text.as_bytes());
    Ok(Seed {
        prices: seed::parse_price_file(&price_name, &price_text)?,
        plans: seed::parse_plans_file(&plans_name, &plans_text)?,
        digest: format!("{:x}", digest.finalize()),
    })
}

/// A Redis URL with any password replaced, for messages.
fn redacted(url: &str) -> String {
    match url.split_once("://").and_then(|(scheme, rest)| {
        rest.split_once('@')
            .map(|(_, host)| format!("{scheme}://***@{host}"))
    }) {
        Some(redacted) => redacted,
        None => url.to_owned(),
    }
}

/// Runs the pricing service on `listener` until `shutdown` fires: loads (or
/// seeds) the price book from Redis, follows other replicas' changes, and
/// serves `PricingService` and `PricingAdminService` with health and reflection.
pub async fn run(
    config: PricingConfig,
    deps: PricingDeps,
    listener: TcpListener,
    shutdown: Shutdown,
) -> Result<(), RunError> {
    let seed = load_seed(&config)?;
    let store = PriceBookStore::connect(&deps.redis_url, config.redis_timeout)
        .await
        .map_err(|source| RunError::Redis {
            url: redacted(&deps.redis_url),
            source,
        })?;
    let (state, position) = PriceBookState::open(store, &seed).await?;
    let state = Arc::new(state);
    {
        let state = Arc::clone(&state);
        let token = shutdown.token().clone();
        shutdown.spawn(async move { state.follow(position, token).await });
    }
    let api = api::PricingApi::new(state, shutdown.clone());
    let services = Services::new()
        .add_service(PricingServiceServer::new(api.clone()))
        .add_service(PricingAdminServiceServer::with_interceptor(
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
