//! A throwaway Redis Cluster of masters only, built from [`RedisServer`]s.

use std::process::Stdio;
use std::time::Duration;

use anyhow::Context as _;
use tokio::process::Command;

use crate::server::{RedisServer, connect, info_field, spawn_error, tail};
use crate::wait::poll_until_ok;

const REDIS_CLI: &str = "redis-cli";

/// Redis Cluster needs at least three masters to hold a majority.
const MIN_MASTERS: usize = 3;

/// Hash slots in a Redis Cluster; all must be served for `cluster_state:ok`.
const CLUSTER_SLOTS: &str = "16384";

/// Short, so failure detection in tests takes seconds, not the production
/// default's 15; still far above any pause a healthy node takes, even on a
/// loaded machine.
const DEFAULT_NODE_TIMEOUT: Duration = Duration::from_millis(2000);

/// Forming a cluster takes a few gossip rounds after `redis-cli` has
/// assigned the slots; generous, for a loaded two-core CI machine.
const DEFAULT_READY_TIMEOUT: Duration = Duration::from_secs(30);

/// Options for a [`RedisCluster`]; start from [`RedisCluster::builder`].
#[derive(Debug, Clone)]
pub struct RedisClusterBuilder {
    masters: usize,
    node_timeout: Duration,
    ready_timeout: Duration,
    aof: bool,
}

impl Default for RedisClusterBuilder {
    fn default() -> Self {
        Self {
            masters: MIN_MASTERS,
            node_timeout: DEFAULT_NODE_TIMEOUT,
            ready_timeout: DEFAULT_READY_TIMEOUT,
            aof: false,
        }
    }
}

impl RedisClusterBuilder {
    /// How many masters (default and minimum 3); the hash slots are split
    /// evenly between them. There are no replicas.
    #[must_use]
    pub fn masters(mut self, masters: usize) -> Self {
        self.masters = masters;
        self
    }

    /// `cluster-node-timeout` for every node (default 2 s).
    #[must_use]
    pub fn node_timeout(mut self, timeout: Duration) -> Self {
        self.node_timeout = timeout;
        self
    }

    /// How long `redis-cli --cluster create` plus the wait for every node to
    /// report `cluster_state:ok` may take together (default 30 s). Also the
    /// bound on the wait for the cluster to be healthy again after
    /// [`RedisCluster::restart_node`].
    #[must_use]
    pub fn ready_timeout(mut self, timeout: Duration) -> Self {
        self.ready_timeout = timeout;
        self
    }

    /// Turns on the append-only file on every node (`--appendonly yes
    /// --appendfsync everysec`, as [`crate::RedisServerBuilder::aof`]), so a
    /// node's keys survive [`RedisCluster::restart_node`]. Off by default:
    /// without it a restarted node comes back with its slots but no keys.
    #[must_use]
    pub fn aof(mut self, enabled: bool) -> Self {
        self.aof = enabled;
        self
    }

    /// Starts the nodes, joins them into a cluster with `redis-cli --cluster
    /// create`, and waits until every node reports `cluster_state:ok` and
    /// knows every other node.
    ///
    /// # Errors
    ///
    /// When fewer than three masters are asked for, when `redis-server` or
    /// `redis-cli` is missing or fails (the error quotes its output), or when
    /// the cluster is not healthy within the ready timeout.
    pub async fn start(self) -> anyhow::Result<RedisCluster> {
        anyhow::ensure!(
            self.masters >= MIN_MASTERS,
            "a Redis Cluster needs at least {MIN_MASTERS} masters, not {}",
            self.masters
        );
        let mut nodes = Vec::with_capacity(self.masters);
        for _ in 0..self.masters {
            let node = RedisServer::builder()
                .cluster_node(self.node_timeout)
                .aof(self.aof)
                .start()
                .await
                .context("starting a Redis Cluster node")?;
            nodes.push(node);
        }
        // If anything below fails, dropping `cluster` kills the nodes.
        let cluster = RedisCluster {
            nodes,
            ready_timeout: self.ready_timeout,
        };
        tokio::time::timeout(self.ready_timeout, cluster.create())
            .await
            .map_err(|_elapsed| {
                anyhow::anyhow!(
                    "redis-cli --cluster create did not finish within {:?}",
                    self.ready_timeout
                )
            })??;
        cluster.wait_healthy(self.ready_timeout).await?;
        Ok(cluster)
    }
}

/// A real Redis Cluster of masters (three by default) on 127.0.0.1, each
/// node a [`RedisServer`] with its own port, bus port and data directory.
/// Dropping it kills every node.
#[derive(Debug)]
pub struct RedisCluster {
    nodes: Vec<RedisServer>,
    /// From the builder: bounds the wait for health after a node restart.
    ready_timeout: Duration,
}

impl RedisCluster {
    /// Starts a three-master cluster with default options; see
    /// [`RedisClusterBuilder::start`].
    ///
    /// # Errors
    ///
    /// As for [`RedisClusterBuilder::start`].
    pub async fn start() -> anyhow::Result<Self> {
        Self::builder().start().await
    }

    /// Options for a cluster: number of masters, timeouts, AOF.
    pub fn builder() -> RedisClusterBuilder {
        RedisClusterBuilder::default()
    }

    /// Every node's URL, `redis://127.0.0.1:PORT/`; any of them is a valid
    /// seed for a cluster client.
    pub fn urls(&self) -> Vec<String> {
        self.nodes.iter().map(RedisServer::url).collect()
    }

    /// The nodes, for tests that need to reach or inspect one directly.
    pub fn nodes(&self) -> &[RedisServer] {
        &self.nodes
    }

    /// A cluster client seeded with every node (connections are made when
    /// asked for).
    ///
    /// # Errors
    ///
    /// Only if the URLs were malformed, which they are not.
    pub fn client(&self) -> anyhow::Result<redis::cluster::ClusterClient> {
        redis::cluster::ClusterClient::new(self.urls())
            .context("building a cluster client for the test cluster")
    }

    /// Restarts node `index` (as in [`RedisCluster::nodes`]) gracefully, as
    /// [`RedisServer::restart`] does: `SHUTDOWN` (which flushes the AOF and
    /// `nodes.conf`), then a new `redis-server` on the same port, bus port
    /// and data directory, so the node rejoins with its identity and slots.
    /// Its keys survive only with [`RedisClusterBuilder::aof`]. Clients see
    /// that node's connections dropped, and `CLUSTERDOWN` from every node
    /// while it is away.
    ///
    /// Returns once every node reports `cluster_state:ok` again, all slots
    /// served and every node known, polling for at most the builder's ready
    /// timeout. A restarted master itself stays in `cluster_state:fail` for
    /// about two seconds after startup (Redis's rejoin delay), so expect
    /// this to take at least that long.
    ///
    /// # Errors
    ///
    /// When `index` is out of range, when the node cannot be shut down or
    /// started again (see [`RedisServer::restart`]), or when the cluster is
    /// not healthy within the ready timeout.
    pub async fn restart_node(&mut self, index: usize) -> anyhow::Result<()> {
        let count = self.nodes.len();
        let node = self.nodes.get_mut(index).with_context(|| {
            format!("restart_node({index}): the cluster has only {count} nodes")
        })?;
        let port = node.port();
        node.restart()
            .await
            .with_context(|| format!("restarting the cluster node on port {port}"))?;
        self.wait_healthy(self.ready_timeout)
            .await
            .with_context(|| format!("after restarting the cluster node on port {port}"))
    }

    /// Kills every node and waits for them to exit. Dropping the value does
    /// the same; this form reports errors.
    ///
    /// # Errors
    ///
    /// When a node cannot be stopped; the others are stopped regardless.
    pub async fn stop(self) -> anyhow::Result<()> {
        let mut first_error = None;
        for node in self.nodes {
            if let Err(error) = node.stop().await {
                first_error.get_or_insert(error);
            }
        }
        first_error.map_or(Ok(()), Err)
    }

    /// Assigns the slots and introduces the nodes to each other.
    async fn create(&self) -> anyhow::Result<()> {
        let mut command = Command::new(REDIS_CLI);
        command.args(["--cluster", "create"]);
        command.args(
            self.nodes
                .iter()
                .map(|node| format!("127.0.0.1:{}", node.port())),
        );
        command
            .args(["--cluster-replicas", "0", "--cluster-yes"])
            .stdin(Stdio::null())
            // If the create times out, the future holding the child is
            // dropped: make that kill redis-cli rather than leave it waiting.
            .kill_on_drop(true);
        let output = command
            .output()
            .await
            .map_err(|error| spawn_error(REDIS_CLI, "redis-tools", error))?;
        // redis-cli reports some failures ("[ERR] ...") with exit status 0.
        let stdout = String::from_utf8_lossy(&output.stdout);
        let stderr = String::from_utf8_lossy(&output.stderr);
        anyhow::ensure!(
            output.status.success() && !stdout.contains("[ERR]"),
            "redis-cli --cluster create failed ({}); output:\n{}\n{}",
            output.status,
            tail(&stdout),
            tail(&stderr)
        );
        Ok(())
    }

    /// Waits until every node serves all slots and knows every other node.
    /// `redis-cli` returns once the nodes agree on the configuration, but a
    /// node only reports `cluster_state:ok` after gossip has reached it, and
    /// a client that connects before then gets `CLUSTERDOWN`.
    async fn wait_healthy(&self, timeout: Duration) -> anyhow::Result<()> {
        let known_nodes = self.nodes.len().to_string();
        poll_until_ok(timeout, || async {
            for node in &self.nodes {
                let mut conn = connect(node.port()).await?;
                let info: String = redis::cmd("CLUSTER")
                    .arg("INFO")
                    .query_async(&mut conn)
                    .await?;
                let healthy = info_field(&info, "cluster_state") == Some("ok")
                    && info_field(&info, "cluster_slots_ok") == Some(CLUSTER_SLOTS)
                    && info_field(&info, "cluster_known_nodes") == Some(known_nodes.as_str());
                anyhow::ensure!(
                    healthy,
                    "node on port {} is not healthy yet: {}",
                    node.port(),
                    info.lines().take(7).collect::<Vec<_>>().join(" ")
                );
            }
            anyhow::Ok(())
        })
        .await
        .context("the Redis Cluster did not become healthy")
    }
}
