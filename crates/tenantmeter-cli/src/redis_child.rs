//! The private redis-server `tenantmeter up` runs when no `--redis-url` is given:
//! a child process on a free loopback port, its data (AOF, `appendfsync everysec`)
//! in a directory of its own so a restart of `up` finds the state it left.
//! `tenantmeter backtest` runs one without persistence in a temporary directory.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use anyhow::{Context as _, bail};
use tokio::process::{Child, Command};

/// How long a starting redis-server may take to answer PING.
const READY_TIMEOUT: Duration = Duration::from_secs(15);

/// Whether the server keeps its data across restarts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Persistence {
    /// AOF with `appendfsync everysec`: `up`'s state outlives a restart.
    Aof,
    /// Memory only: a backtest's state is thrown away with it.
    None,
}

/// A running private redis-server.
#[derive(Debug)]
pub(crate) struct RedisChild {
    child: Child,
    port: u16,
    dir: PathBuf,
}

fn free_port() -> anyhow::Result<u16> {
    let listener = std::net::TcpListener::bind(("127.0.0.1", 0)).context("finding a free port")?;
    Ok(listener.local_addr()?.port())
}

async fn ping(url: &str) -> bool {
    let Ok(client) = redis::Client::open(url) else {
        return false;
    };
    match client.get_multiplexed_async_connection().await {
        Ok(mut conn) => redis::cmd("PING")
            .query_async::<String>(&mut conn)
            .await
            .is_ok(),
        Err(_) => false,
    }
}

impl RedisChild {
    /// Starts redis-server with its data in `dir` and waits until it answers.
    pub(crate) async fn start(dir: &Path, persistence: Persistence) -> anyhow::Result<Self> {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
        let dir = dir
            .canonicalize()
            .with_context(|| format!("resolving {}", dir.display()))?;
        let port = free_port()?;
        let log = dir.join("redis.log");
        let appendonly = match persistence {
            Persistence::Aof => "yes",
            Persistence::None => "no",
        };
        let child = Command::new("redis-server")
            .args(["--port", &port.to_string(), "--bind", "127.0.0.1"])
            .arg("--dir")
            .arg(&dir)
            .args([
                "--appendonly",
                appendonly,
                "--appendfsync",
                "everysec",
                "--save",
                "",
            ])
            .args(["--daemonize", "no", "--protected-mode", "yes"])
            .arg("--logfile")
            .arg(&log)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .kill_on_drop(true)
            .spawn();
        let mut child = match child {
            Ok(child) => child,
            Err(error) if error.kind() == std::io::ErrorKind::NotFound => bail!(
                "redis-server not found on PATH: install it (apt-get install redis-server) or pass --redis-url"
            ),
            Err(error) => return Err(error).context("starting redis-server"),
        };
        let url = format!("redis://127.0.0.1:{port}/");
        let deadline = tokio::time::Instant::now() + READY_TIMEOUT;
        let mut pause = Duration::from_millis(10);
        while !ping(&url).await {
            if let Some(status) = child.try_wait()? {
                let tail = std::fs::read_to_string(&log).unwrap_or_default();
                let tail: Vec<&str> = tail.lines().rev().take(5).collect();
                bail!(
                    "redis-server exited ({status}) before answering; last log lines: {}",
                    tail.into_iter().rev().collect::<Vec<_>>().join(" | ")
                );
            }
            if tokio::time::Instant::now() >= deadline {
                bail!(
                    "redis-server on port {port} did not answer PING within {READY_TIMEOUT:?}; see {}",
                    log.display()
                );
            }
            tokio::time::sleep(pause).await;
            pause = (pause * 2).min(Duration::from_millis(200));
        }
        Ok(Self { child, port, dir })
    }

    /// URL of the server.
    pub(crate) fn url(&self) -> String {
        format!("redis://127.0.0.1:{}/", self.port)
    }

    /// Directory holding its data and log.
    pub(crate) fn dir(&self) -> &Path {
        &self.dir
    }

    /// Stops the server cleanly (SHUTDOWN flushes the AOF), killing it if it
    /// does not exit in time.
    pub(crate) async fn stop(mut self) {
        if let Ok(client) = redis::Client::open(self.url())
            && let Ok(mut conn) = client.get_multiplexed_async_connection().await
        {
            // The server closes the connection instead of replying; that is success.
            let _ = redis::cmd("SHUTDOWN").query_async::<()>(&mut conn).await;
        }
        match tokio::time::timeout(Duration::from_secs(5), self.child.wait()).await {
            Ok(_) => {}
            Err(_) => {
                tracing::warn!("redis-server did not stop in 5s; killing it");
                let _ = self.child.kill().await;
            }
        }
    }
}
