//! Test support for tenantmeter services: real, throwaway Redis servers, and
//! an in-process OTLP receiver that collects the spans a service exports
//! ([`otlp`]).
//!
//! Every service's integration tests take this crate as a dev-dependency to
//! run against a genuine `redis-server` (or a three-master Redis Cluster)
//! instead of a mock or a server someone left running. Each fixture:
//!
//! - picks its own free port on 127.0.0.1 and its own temporary data
//!   directory, so any number of fixtures (and test processes) can run side
//!   by side;
//! - returns only once the server answers, by polling rather than sleeping,
//!   so tests stay reliable on a loaded two-core machine;
//! - kills and reaps its processes on drop, so the port is free again and no
//!   server outlives the test (unless the test process itself is SIGKILLed,
//!   which no destructor can cover).
//!
//! `redis-server` and `redis-cli` must be on `PATH`
//! (`apt-get install redis-server`); starting a fixture without them fails
//! with an error that says so.
//!
//! ```no_run
//! # async fn demo() -> anyhow::Result<()> {
//! use tenantmeter_testkit::RedisServer;
//!
//! let redis = RedisServer::start().await?;
//! let client = redis::Client::open(redis.url())?;
//! let mut conn = client.get_multiplexed_async_connection().await?;
//! let () = redis::cmd("SET").arg("k").arg("v").query_async(&mut conn).await?;
//! # Ok(())
//! # }
//! ```

mod cluster;
pub mod otlp;
mod port;
mod server;
mod wait;

pub use cluster::{RedisCluster, RedisClusterBuilder};
pub use otlp::{CollectedEvent, CollectedSpan, OtlpReceiver};
pub use port::free_port;
pub use server::{RedisServer, RedisServerBuilder};
pub use wait::{poll_until_ok, wait_until};
