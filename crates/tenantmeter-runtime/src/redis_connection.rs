//! One way for every service to reach Redis: a single server (a reconnecting
//! connection manager) or a Redis Cluster (routing each call to its slot),
//! behind redis-rs's `ConnectionLike`, so a store's code and its scripts do
//! not care which.

use std::fmt;
use std::time::Duration;

use redis::aio::{ConnectionLike, ConnectionManager, ConnectionManagerConfig};
use redis::cluster_async::ClusterConnection;
use redis::{Cmd, ErrorKind, Pipeline, RedisError, RedisFuture, Value};

/// A connection to one redis-server or to a Redis Cluster. Cheap to clone:
/// clones share the underlying multiplexed connection.
#[derive(Clone)]
pub enum RedisConnection {
    /// A single redis-server; reconnects on its own.
    Single(ConnectionManager),
    /// A Redis Cluster; routes each call to its slot's master.
    Cluster(ClusterConnection),
}

impl fmt::Debug for RedisConnection {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Single(_) => "RedisConnection::Single",
            Self::Cluster(_) => "RedisConnection::Cluster",
        })
    }
}

/// The URLs of a `redis.url` setting: one URL, or with `cluster`, a
/// comma-separated list of seed nodes.
#[must_use]
pub fn split_urls(setting: &str) -> Vec<String> {
    setting
        .split(',')
        .map(|u| u.trim().to_owned())
        .filter(|u| !u.is_empty())
        .collect()
}

impl RedisConnection {
    /// Connects to `urls[0]`, or to the cluster the `urls` are seeds of.
    /// Every connect and every answer is bounded by `timeout`.
    ///
    /// # Errors
    /// No URL, a malformed one, or Redis not answering.
    pub async fn connect(
        urls: &[String],
        cluster: bool,
        timeout: Duration,
    ) -> Result<Self, RedisError> {
        if cluster {
            let client = redis::cluster::ClusterClientBuilder::new(urls.to_vec())
                .connection_timeout(timeout)
                .response_timeout(timeout)
                .build()?;
            return Ok(Self::Cluster(client.get_async_connection().await?));
        }
        let url = urls.first().ok_or_else(|| {
            RedisError::from((ErrorKind::InvalidClientConfig, "no redis url given"))
        })?;
        let config = ConnectionManagerConfig::new()
            .set_connection_timeout(Some(timeout))
            .set_response_timeout(Some(timeout))
            .set_number_of_retries(1);
        Ok(Self::Single(
            redis::Client::open(url.as_str())?
                .get_connection_manager_with_config(config)
                .await?,
        ))
    }
}

impl ConnectionLike for RedisConnection {
    fn req_packed_command<'a>(&'a mut self, cmd: &'a Cmd) -> RedisFuture<'a, Value> {
        match self {
            Self::Single(conn) => conn.req_packed_command(cmd),
            Self::Cluster(conn) => conn.req_packed_command(cmd),
        }
    }

    fn req_packed_commands<'a>(
        &'a mut self,
        cmd: &'a Pipeline,
        offset: usize,
        count: usize,
    ) -> RedisFuture<'a, Vec<Value>> {
        match self {
            Self::Single(conn) => conn.req_packed_commands(cmd, offset, count),
            Self::Cluster(conn) => conn.req_packed_commands(cmd, offset, count),
        }
    }

    fn get_db(&self) -> i64 {
        match self {
            Self::Single(conn) => conn.get_db(),
            Self::Cluster(conn) => conn.get_db(),
        }
    }
}
