//! A single throwaway `redis-server`.

use std::fs::{File, OpenOptions};
use std::io::{self, Read as _, Seek as _, SeekFrom};
use std::net::{Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use anyhow::Context as _;
use tempfile::TempDir;
use tokio::process::{Child, Command};

use crate::port::free_port;
use crate::wait::Backoff;

const REDIS_SERVER: &str = "redis-server";

/// How long a server gets to answer PING after being spawned. Redis is
/// ready in milliseconds; the margin is for a loaded two-core CI machine
/// and for replaying a large AOF after a restart.
const DEFAULT_READY_TIMEOUT: Duration = Duration::from_secs(10);

/// Bound on a single readiness probe, so a probe against a wedged process
/// gives the next one a chance instead of eating the whole deadline.
const PROBE_TIMEOUT: Duration = Duration::from_secs(1);

/// How many times to try a new port when another process took the one
/// `free_port` returned before redis could bind it.
const MAX_PORT_ATTEMPTS: usize = 5;

/// How many times to retry the *same* port after a shutdown when something
/// else grabbed it meanwhile (usually an outgoing connection's ephemeral
/// port, which goes away quickly).
const MAX_REBIND_ATTEMPTS: usize = 20;
/// Pause between those retries: together about five seconds.
const REBIND_PAUSE: Duration = Duration::from_millis(250);

/// How much of a log an error message quotes.
const LOG_TAIL_LINES: usize = 30;

/// What redis logs when its port (or cluster bus port) is taken.
const ADDRESS_IN_USE: &str = "Address already in use";

/// Options for a [`RedisServer`]; start from [`RedisServer::builder`].
#[derive(Debug, Clone)]
pub struct RedisServerBuilder {
    aof: bool,
    ready_timeout: Duration,
    config: Vec<(String, String)>,
    cluster_node_timeout: Option<Duration>,
}

impl Default for RedisServerBuilder {
    fn default() -> Self {
        Self {
            aof: false,
            ready_timeout: DEFAULT_READY_TIMEOUT,
            config: Vec::new(),
            cluster_node_timeout: None,
        }
    }
}

impl RedisServerBuilder {
    /// Turns on the append-only file (`--appendonly yes --appendfsync
    /// everysec`), so data survives [`RedisServer::restart`]. Off by default:
    /// without it the server keeps nothing on disk and restarts empty.
    #[must_use]
    pub fn aof(mut self, enabled: bool) -> Self {
        self.aof = enabled;
        self
    }

    /// Passes an extra configuration directive, as `--name value` on the
    /// command line (for example `config("maxmemory", "1mb")`). Applied after
    /// the fixture's own settings, so it can override them.
    #[must_use]
    pub fn config(mut self, name: impl Into<String>, value: impl Into<String>) -> Self {
        self.config.push((name.into(), value.into()));
        self
    }

    /// How long to wait for the server to answer PING after each start
    /// (default 10 s).
    #[must_use]
    pub fn ready_timeout(mut self, timeout: Duration) -> Self {
        self.ready_timeout = timeout;
        self
    }

    /// Makes the server a cluster node with its own bus port; used by
    /// [`crate::RedisCluster`], which then joins the nodes together.
    pub(crate) fn cluster_node(mut self, node_timeout: Duration) -> Self {
        self.cluster_node_timeout = Some(node_timeout);
        self
    }

    /// Starts the server on a free port and waits until it answers PING.
    ///
    /// # Errors
    ///
    /// When `redis-server` is not on `PATH`, when it exits or does not become
    /// ready within the ready timeout (the error quotes its log), or when
    /// every port tried was taken by another process first.
    pub async fn start(self) -> anyhow::Result<RedisServer> {
        let mut port_errors = Vec::new();
        for _ in 0..MAX_PORT_ATTEMPTS {
            // A fresh directory per attempt, so a failed attempt's files
            // (a cluster node's nodes.conf naming the old port) cannot leak
            // into the next one.
            let dir = tempfile::Builder::new()
                .prefix("tenantmeter-redis-")
                .tempdir()
                .context("creating a temporary directory for redis-server")?;
            let port = free_port()?;
            let bus_port = match self.cluster_node_timeout {
                Some(_) => Some(free_port()?),
                None => None,
            };
            match launch(&self, dir.path(), port, bus_port).await {
                Ok(child) => {
                    return Ok(RedisServer {
                        port,
                        bus_port,
                        settings: self,
                        child: Some(child),
                        dir,
                    });
                }
                Err(LaunchError::PortInUse(error)) => port_errors.push(format!("{error:#}")),
                Err(LaunchError::Fatal(error)) => return Err(error),
            }
        }
        anyhow::bail!(
            "redis-server could not bind a port in {MAX_PORT_ATTEMPTS} attempts (other processes took them first): {}",
            port_errors.join("; ")
        )
    }
}

/// A real `redis-server` on 127.0.0.1, with its data in a temporary
/// directory, for as long as this value lives.
///
/// Dropping it kills the server and waits for it to exit, then removes the
/// directory; [`RedisServer::stop`] does the same explicitly. Nothing is
/// shared between fixtures, so tests may start as many as they like in
/// parallel.
#[derive(Debug)]
pub struct RedisServer {
    port: u16,
    bus_port: Option<u16>,
    settings: RedisServerBuilder,
    /// `None` while the server is down (after [`RedisServer::shutdown`] or
    /// [`RedisServer::kill`]).
    child: Option<Process>,
    // Declared after `child`, and fields drop in declaration order: the
    // directory is removed only once the process has been killed and
    // reaped, never from under a live redis.
    dir: TempDir,
}

impl RedisServer {
    /// Starts a server with default options (no persistence); see
    /// [`RedisServerBuilder::start`].
    ///
    /// # Errors
    ///
    /// As for [`RedisServerBuilder::start`]; in particular, when
    /// `redis-server` is not installed the message is
    /// `redis-server not found on PATH: install it (apt-get install redis-server)`.
    pub async fn start() -> anyhow::Result<Self> {
        Self::builder().start().await
    }

    /// Options for a server: AOF persistence, extra configuration, timeouts.
    pub fn builder() -> RedisServerBuilder {
        RedisServerBuilder::default()
    }

    /// The URL to connect to, `redis://127.0.0.1:PORT/`.
    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}/", self.port)
    }

    /// The TCP port the server listens on; it stays the same across
    /// restarts.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// The server's address, for code that takes a `SocketAddr`.
    pub fn addr(&self) -> SocketAddr {
        SocketAddr::from((Ipv4Addr::LOCALHOST, self.port))
    }

    /// A client for this server (connections are made when asked for).
    ///
    /// # Errors
    ///
    /// Only if the URL were malformed, which it is not.
    pub fn client(&self) -> anyhow::Result<redis::Client> {
        redis::Client::open(self.url()).context("building a redis client for the test server")
    }

    /// The directory holding the server's data files and logs.
    pub fn data_dir(&self) -> &Path {
        self.dir.path()
    }

    /// The server's process id, or `None` while it is down.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().and_then(|process| process.0.id())
    }

    /// The server's log so far (across restarts), to print when a test
    /// fails in a way that might be the server's doing.
    pub fn log_contents(&self) -> String {
        read_lossy(&self.log_path())
    }

    /// Stops the server gracefully (`SHUTDOWN`, which flushes the AOF when
    /// enabled) and starts it again on the same port with the same data
    /// directory. With [`RedisServerBuilder::aof`] the data survives;
    /// without it the server comes back empty. Clients see their
    /// connections dropped, as in a real Redis restart.
    ///
    /// # Errors
    ///
    /// When the shutdown or the new start fails; see
    /// [`RedisServer::shutdown`] and [`RedisServer::start_again`].
    pub async fn restart(&mut self) -> anyhow::Result<()> {
        self.shutdown().await?;
        self.start_again().await
    }

    /// Stops the server gracefully with `SHUTDOWN` and leaves it down until
    /// [`RedisServer::start_again`]; for tests of how a service behaves
    /// while Redis is unavailable. Does nothing if it is already down.
    ///
    /// # Errors
    ///
    /// When the server does not exit within the ready timeout (it is then
    /// killed, so it is down either way).
    pub async fn shutdown(&mut self) -> anyhow::Result<()> {
        let Some(mut child) = self.child.take() else {
            return Ok(());
        };
        let reply = self.send_shutdown().await;
        match tokio::time::timeout(self.settings.ready_timeout, child.0.wait()).await {
            Ok(status) => {
                status.context("waiting for redis-server to exit after SHUTDOWN")?;
                Ok(())
            }
            Err(_elapsed) => {
                kill_and_reap(&mut child).await?;
                anyhow::bail!(
                    "redis-server on port {} did not exit within {:?} of SHUTDOWN (reply: {reply:?}), so it was killed; log tail:\n{}",
                    self.port,
                    self.settings.ready_timeout,
                    tail(&self.log_contents())
                )
            }
        }
    }

    /// Kills the server with SIGKILL, as in a crash, and leaves it down
    /// until [`RedisServer::start_again`]. Writes not yet fsynced to the AOF
    /// (up to about a second's worth with `everysec`) are lost, as they would
    /// be in a real crash. Does nothing if it is already down.
    ///
    /// # Errors
    ///
    /// When the process cannot be waited for.
    pub async fn kill(&mut self) -> anyhow::Result<()> {
        match self.child.take() {
            Some(mut child) => kill_and_reap(&mut child).await,
            None => Ok(()),
        }
    }

    /// Starts the server again on the same port and data directory after
    /// [`RedisServer::shutdown`] or [`RedisServer::kill`], and waits until it
    /// answers PING (which, with AOF, is after the data has been loaded).
    ///
    /// # Errors
    ///
    /// When the server is already running, when it fails to start, or when
    /// another process has taken its port and keeps it.
    pub async fn start_again(&mut self) -> anyhow::Result<()> {
        anyhow::ensure!(
            self.child.is_none(),
            "redis-server on port {} is already running",
            self.port
        );
        let mut last_port_error = None;
        for _ in 0..MAX_REBIND_ATTEMPTS {
            match launch(&self.settings, self.dir.path(), self.port, self.bus_port).await {
                Ok(child) => {
                    self.child = Some(child);
                    return Ok(());
                }
                Err(LaunchError::PortInUse(error)) => {
                    last_port_error = Some(error);
                    tokio::time::sleep(REBIND_PAUSE).await;
                }
                Err(LaunchError::Fatal(error)) => return Err(error),
            }
        }
        let error = last_port_error
            .unwrap_or_else(|| anyhow::anyhow!("redis-server could not bind its port"));
        Err(error.context(format!(
            "another process took port {} while redis-server was down",
            self.port
        )))
    }

    /// Kills the server and waits for it to exit, then removes its data
    /// directory. Dropping the value does the same; this form lets a test
    /// see errors and free the port at a point of its choosing.
    ///
    /// # Errors
    ///
    /// When the process cannot be waited for, or the directory removed.
    pub async fn stop(self) -> anyhow::Result<()> {
        let Self { child, dir, .. } = self;
        if let Some(mut child) = child {
            kill_and_reap(&mut child).await?;
        }
        dir.close()
            .context("removing redis-server's temporary directory")
    }

    fn log_path(&self) -> PathBuf {
        self.dir.path().join("redis.log")
    }

    async fn send_shutdown(&self) -> Result<(), String> {
        let attempt = async {
            let mut conn = connect(self.port).await?;
            redis::cmd("SHUTDOWN")
                .query_async::<()>(&mut conn)
                .await
                .map_err(anyhow::Error::from)
        };
        match tokio::time::timeout(PROBE_TIMEOUT, attempt).await {
            Ok(Ok(())) => Ok(()),
            // The server closing the connection is what success looks like.
            Ok(Err(error)) => Err(format!("{error:#}")),
            Err(_elapsed) => Err("no reply".to_owned()),
        }
    }
}

/// A running redis-server that is killed and reaped when dropped.
///
/// `kill_on_drop` alone only sends the signal: the port and the data
/// directory could still be in use when the next test starts, so the drop
/// also waits for the exit.
#[derive(Debug)]
struct Process(Child);

impl Drop for Process {
    fn drop(&mut self) {
        kill_and_reap_blocking(&mut self.0);
    }
}

/// Why one attempt to launch a server failed: the port was taken (worth
/// retrying) or anything else (not worth it).
enum LaunchError {
    PortInUse(anyhow::Error),
    Fatal(anyhow::Error),
}

impl From<anyhow::Error> for LaunchError {
    fn from(error: anyhow::Error) -> Self {
        Self::Fatal(error)
    }
}

/// Spawns redis-server on `port` with its files in `dir` and waits until it
/// answers PING as itself.
async fn launch(
    settings: &RedisServerBuilder,
    dir: &Path,
    port: u16,
    bus_port: Option<u16>,
) -> Result<Process, LaunchError> {
    let log_path = dir.join("redis.log");
    let out_path = dir.join("stdout.log");
    // Logs are appended to across restarts; remember where this run's part
    // starts, so an old "Address already in use" is not read as a new one.
    let log_start = file_len(&log_path);
    let out_start = file_len(&out_path);

    // Errors from before the log file is opened (a bad config directive) go
    // to stderr, so keep that in a file too.
    let out = OpenOptions::new()
        .create(true)
        .append(true)
        .open(&out_path)
        .context("creating redis-server's stdout log")?;
    let err = out
        .try_clone()
        .context("duplicating redis-server's stdout log handle")?;

    let mut command = Command::new(REDIS_SERVER);
    command
        .args(server_args(settings, dir, &log_path, port, bus_port))
        .stdin(Stdio::null())
        .stdout(out)
        .stderr(err)
        .kill_on_drop(true);
    let mut child = Process(
        command
            .spawn()
            .map_err(|error| spawn_error(REDIS_SERVER, "redis-server", error))?,
    );

    match wait_ready(&mut child.0, port, settings.ready_timeout).await {
        Ok(()) => Ok(child),
        Err(error) => {
            // Reap it before reading the logs, so they are complete.
            let _ignored = kill_and_reap(&mut child).await;
            let logs = format!(
                "{}{}",
                read_lossy_from(&out_path, out_start),
                read_lossy_from(&log_path, log_start)
            );
            let error = anyhow::anyhow!(
                "redis-server on port {port} failed to start: {error:#}\nlog tail:\n{}",
                tail(&logs)
            );
            if logs.contains(ADDRESS_IN_USE) {
                Err(LaunchError::PortInUse(error))
            } else {
                Err(LaunchError::Fatal(error))
            }
        }
    }
}

fn server_args(
    settings: &RedisServerBuilder,
    dir: &Path,
    log_path: &Path,
    port: u16,
    bus_port: Option<u16>,
) -> Vec<String> {
    let mut args: Vec<String> = [
        "--port",
        &port.to_string(),
        "--bind",
        "127.0.0.1",
        "--dir",
        &dir.to_string_lossy(),
        // No RDB snapshots: nothing to wait for, nothing written behind the
        // test's back.
        "--save",
        "",
        "--appendonly",
        if settings.aof { "yes" } else { "no" },
        "--daemonize",
        "no",
        "--logfile",
        &log_path.to_string_lossy(),
    ]
    .into_iter()
    .map(str::to_owned)
    .collect();
    if settings.aof {
        args.extend(["--appendfsync".to_owned(), "everysec".to_owned()]);
    }
    if let (Some(node_timeout), Some(bus_port)) = (settings.cluster_node_timeout, bus_port) {
        args.extend(
            [
                "--cluster-enabled",
                "yes",
                "--cluster-config-file",
                "nodes.conf",
                "--cluster-node-timeout",
                &node_timeout.as_millis().to_string(),
                // Set explicitly: the default (port + 10000) may be past
                // 65535 or already taken.
                "--cluster-port",
                &bus_port.to_string(),
            ]
            .into_iter()
            .map(str::to_owned),
        );
    }
    for (name, value) in &settings.config {
        args.push(format!("--{name}"));
        args.push(value.clone());
    }
    args
}

/// Polls until the server answers PING and reports our child's pid, or the
/// child exits, or the deadline passes. Checking the pid matters: if our
/// server lost the race for its port, whatever won it may be another redis
/// that would answer PING just as well.
async fn wait_ready(child: &mut Child, port: u16, timeout: Duration) -> anyhow::Result<()> {
    let mut backoff = Backoff::new(timeout);
    loop {
        // Race the probe against the exit: a server that lost its port
        // exits at once, while a probe of whatever holds the port may hang
        // until its own timeout.
        let outcome = tokio::select! {
            status = child.wait() => {
                let status = status.context("waiting for redis-server")?;
                anyhow::bail!("redis-server exited during startup with {status}");
            }
            outcome = backoff.run(probe(port)) => outcome,
        };
        let last_error = match outcome {
            Some(Ok(pid)) if Some(pid) == child.id() => return Ok(()),
            Some(Ok(pid)) => format!("port {port} is answered by another redis-server (pid {pid})"),
            Some(Err(error)) => format!("{error:#}"),
            None => "the readiness probe was still running at the deadline".to_owned(),
        };
        backoff
            .pause_or_fail(&last_error)
            .await
            .context("redis-server did not answer PING")?;
    }
}

/// Connects to the server on `port`, checks it answers PING (it does not
/// while still loading its AOF) and returns its process id.
async fn probe(port: u16) -> anyhow::Result<u32> {
    let mut conn = connect(port).await?;
    let _pong: String = redis::cmd("PING").query_async(&mut conn).await?;
    let info: String = redis::cmd("INFO")
        .arg("server")
        .query_async(&mut conn)
        .await?;
    info_field(&info, "process_id")
        .and_then(|pid| pid.parse().ok())
        .context("INFO server has no process_id")
}

pub(crate) async fn connect(port: u16) -> anyhow::Result<redis::aio::MultiplexedConnection> {
    let client = redis::Client::open(format!("redis://127.0.0.1:{port}/"))?;
    let config = redis::AsyncConnectionConfig::new()
        .set_connection_timeout(Some(PROBE_TIMEOUT))
        .set_response_timeout(Some(PROBE_TIMEOUT));
    Ok(client
        .get_multiplexed_async_connection_with_config(&config)
        .await?)
}

/// The value of `name` in an INFO-style `name:value` reply.
pub(crate) fn info_field<'a>(info: &'a str, name: &str) -> Option<&'a str> {
    info.lines().find_map(|line| {
        line.trim_end()
            .strip_prefix(name)
            .and_then(|rest| rest.strip_prefix(':'))
    })
}

/// Turns a failed spawn into an error that says how to fix the common case.
pub(crate) fn spawn_error(binary: &str, package: &str, error: io::Error) -> anyhow::Error {
    if error.kind() == io::ErrorKind::NotFound {
        anyhow::anyhow!("{binary} not found on PATH: install it (apt-get install {package})")
    } else {
        anyhow::Error::new(error).context(format!("spawning {binary}"))
    }
}

async fn kill_and_reap(process: &mut Process) -> anyhow::Result<()> {
    // Fails only if the process already exited; `wait` then just reaps it.
    let _already_exited = process.0.start_kill();
    process
        .0
        .wait()
        .await
        .context("waiting for redis-server to exit")?;
    Ok(())
}

/// For `Drop`, which cannot await: SIGKILL, then poll for the exit so the
/// port is free and the directory idle by the time drop returns. SIGKILL
/// cannot be ignored, so this takes milliseconds; the cap only guards
/// against a process stuck in the kernel.
fn kill_and_reap_blocking(child: &mut Child) {
    let _already_exited = child.start_kill();
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    while std::time::Instant::now() < deadline {
        match child.try_wait() {
            Ok(None) => std::thread::sleep(Duration::from_millis(1)),
            Ok(Some(_)) | Err(_) => return,
        }
    }
}

fn file_len(path: &Path) -> u64 {
    std::fs::metadata(path).map_or(0, |meta| meta.len())
}

fn read_lossy(path: &Path) -> String {
    read_lossy_from(path, 0)
}

fn read_lossy_from(path: &Path, offset: u64) -> String {
    let mut bytes = Vec::new();
    let read = File::open(path).and_then(|mut file| {
        file.seek(SeekFrom::Start(offset))?;
        file.read_to_end(&mut bytes)
    });
    match read {
        Ok(_) => String::from_utf8_lossy(&bytes).into_owned(),
        // Redis had not got as far as opening its log.
        Err(error) if error.kind() == io::ErrorKind::NotFound => String::new(),
        Err(error) => format!("(could not read {}: {error})\n", path.display()),
    }
}

/// The last lines of a log, enough to show why a server stopped.
pub(crate) fn tail(log: &str) -> String {
    let lines: Vec<&str> = log.lines().collect();
    lines[lines.len().saturating_sub(LOG_TAIL_LINES)..].join("\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn missing_binary_error_says_how_to_install() {
        let error = spawn_error(
            REDIS_SERVER,
            "redis-server",
            io::Error::from(io::ErrorKind::NotFound),
        );
        assert_eq!(
            error.to_string(),
            "redis-server not found on PATH: install it (apt-get install redis-server)"
        );
    }

    #[test]
    fn other_spawn_errors_keep_their_cause() {
        let error = spawn_error(
            REDIS_SERVER,
            "redis-server",
            io::Error::from(io::ErrorKind::PermissionDenied),
        );
        assert_eq!(error.to_string(), "spawning redis-server");
        assert!(format!("{error:#}").contains("permission denied"));
    }

    #[test]
    fn reads_info_fields() {
        let info =
            "# Server\r\nredis_version:7.0.15\r\nprocess_id:4242\r\nprocess_supervised:no\r\n";
        assert_eq!(info_field(info, "process_id"), Some("4242"));
        assert_eq!(info_field(info, "process"), None);
        assert_eq!(info_field(info, "missing"), None);
    }

    #[test]
    fn args_follow_the_settings() {
        let dir = Path::new("/tmp/x");
        let log = Path::new("/tmp/x/redis.log");
        let plain = server_args(&RedisServerBuilder::default(), dir, log, 7000, None);
        assert!(plain.windows(2).any(|w| w == ["--appendonly", "no"]));
        assert!(plain.windows(2).any(|w| w == ["--save", ""]));
        assert!(!plain.iter().any(|a| a.starts_with("--cluster")));

        let settings = RedisServerBuilder::default()
            .aof(true)
            .config("maxmemory", "1mb")
            .cluster_node(Duration::from_millis(2000));
        let args = server_args(&settings, dir, log, 7000, Some(17001));
        assert!(args.windows(2).any(|w| w == ["--appendonly", "yes"]));
        assert!(args.windows(2).any(|w| w == ["--appendfsync", "everysec"]));
        assert!(args.windows(2).any(|w| w == ["--cluster-port", "17001"]));
        assert!(
            args.windows(2)
                .any(|w| w == ["--cluster-node-timeout", "2000"])
        );
        assert!(args.ends_with(&["--maxmemory".to_owned(), "1mb".to_owned()]));
    }

    #[tokio::test]
    async fn a_taken_port_is_reported_as_such_and_quickly() {
        // Whatever holds the port accepts connections but never answers, as
        // a stray listener would: the exit must win over the hanging probe.
        let listener = std::net::TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).unwrap();
        let port = listener.local_addr().unwrap().port();
        let dir = tempfile::tempdir().unwrap();
        let started = std::time::Instant::now();
        let result = launch(&RedisServerBuilder::default(), dir.path(), port, None).await;
        assert!(matches!(result, Err(LaunchError::PortInUse(_))));
        assert!(started.elapsed() < PROBE_TIMEOUT * 3);
    }

    #[tokio::test]
    async fn another_redis_on_the_port_is_not_mistaken_for_ours() {
        let other = RedisServer::start().await.unwrap();
        let dir = tempfile::tempdir().unwrap();
        let result = launch(
            &RedisServerBuilder::default(),
            dir.path(),
            other.port(),
            None,
        )
        .await;
        match result {
            Err(LaunchError::PortInUse(error)) => {
                assert!(format!("{error:#}").contains(ADDRESS_IN_USE), "{error:#}");
            }
            Err(LaunchError::Fatal(error)) => panic!("expected PortInUse, got {error:#}"),
            Ok(_) => panic!("the other server's PONG was taken for ours"),
        }
    }

    #[test]
    fn tail_keeps_the_last_lines() {
        let log: String = (0..100).map(|i| format!("line {i}\n")).collect();
        let tail = tail(&log);
        assert!(tail.starts_with("line 70"));
        assert!(tail.ends_with("line 99"));
    }
}
