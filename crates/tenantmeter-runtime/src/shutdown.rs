//! Graceful shutdown: one token that every server and background task watches, and a
//! tracker of the background tasks so the binary can wait for them before exiting.
//!
//! The sequence (STYLE.md, habit 3): signal -> health NOT_SERVING -> stop accepting -> drain
//! under a deadline -> flush telemetry -> exit; a second signal exits at once.
//! [`install_signal_handlers`] does the first and last steps, [`crate::server::serve`] the
//! middle ones, and `main` calls [`Shutdown::wait_for_tasks`] and
//! [`crate::telemetry::TelemetryGuard::shutdown`] at the end.

use std::future::Future;
use std::time::Duration;

pub use tokio_util::sync::CancellationToken;
pub use tokio_util::task::TaskTracker;

use tokio::task::JoinHandle;
use tokio_util::sync::WaitForCancellationFutureOwned;

use crate::error::RuntimeError;

/// Exit code when a second signal arrives during a graceful shutdown: 128 + SIGINT, what a
/// shell reports for an interrupted program.
pub const EXIT_FORCED: i32 = 130;

/// The shutdown signal of one process (or one test). Cheap to clone; every clone sees the
/// same trigger. Tests create one with [`Shutdown::new`] and call [`Shutdown::trigger`].
#[derive(Debug, Clone, Default)]
pub struct Shutdown {
    token: CancellationToken,
    tasks: TaskTracker,
}

impl Shutdown {
    /// A shutdown that nothing has triggered yet.
    #[must_use]
    pub fn new() -> Self {
        Self::default()
    }

    /// Starts the shutdown. Idempotent.
    pub fn trigger(&self) {
        self.token.cancel();
    }

    /// Whether the shutdown has started.
    #[must_use]
    pub fn is_triggered(&self) -> bool {
        self.token.is_cancelled()
    }

    /// Completes once the shutdown has started (at once if it already has).
    pub fn triggered(&self) -> WaitForCancellationFutureOwned {
        self.token.clone().cancelled_owned()
    }

    /// The underlying token, e.g. for `tokio::select!` in a streaming handler, or to derive a
    /// child token that can also be cancelled on its own.
    #[must_use]
    pub fn token(&self) -> &CancellationToken {
        &self.token
    }

    /// The tracker of background tasks; prefer [`Shutdown::spawn`].
    #[must_use]
    pub fn tasks(&self) -> &TaskTracker {
        &self.tasks
    }

    /// Spawns background work that [`Shutdown::wait_for_tasks`] will wait for. The task
    /// should watch [`Shutdown::triggered`] and finish soon after it fires.
    pub fn spawn<F>(&self, task: F) -> JoinHandle<F::Output>
    where
        F: Future + Send + 'static,
        F::Output: Send + 'static,
    {
        self.tasks.spawn(task)
    }

    /// After the servers have drained: waits up to `timeout` for every task started with
    /// [`Shutdown::spawn`] to finish. Returns `false` if some were still running.
    pub async fn wait_for_tasks(&self, timeout: Duration) -> bool {
        self.tasks.close();
        let finished = tokio::time::timeout(timeout, self.tasks.wait())
            .await
            .is_ok();
        if !finished {
            tracing::warn!(
                running = self.tasks.len(),
                ?timeout,
                "background tasks still running at the end of shutdown"
            );
        }
        finished
    }
}

/// Installs SIGTERM and SIGINT (Ctrl-C) handlers: the first signal triggers the returned
/// [`Shutdown`], a second one exits the process at once with [`EXIT_FORCED`].
///
/// Must be called inside a Tokio runtime. The handlers are registered before this returns,
/// so a signal that arrives right after is not lost.
pub fn install_signal_handlers() -> Result<Shutdown, RuntimeError> {
    let shutdown = Shutdown::new();
    let signals = Signals::new()?;
    let trigger = shutdown.clone();
    // Not on the task tracker on purpose: this task outlives the graceful shutdown (it waits
    // for the second signal), so `wait_for_tasks` would otherwise always time out.
    tokio::spawn(async move {
        let mut signals = signals;
        let first = signals.next().await;
        tracing::info!(
            signal = first,
            "shutting down gracefully; send the signal again to exit at once"
        );
        trigger.trigger();
        let second = signals.next().await;
        tracing::warn!(
            signal = second,
            code = EXIT_FORCED,
            "second signal: exiting at once"
        );
        std::process::exit(EXIT_FORCED);
    });
    Ok(shutdown)
}

#[cfg(unix)]
struct Signals {
    terminate: tokio::signal::unix::Signal,
    interrupt: tokio::signal::unix::Signal,
}

#[cfg(unix)]
impl Signals {
    fn new() -> Result<Self, RuntimeError> {
        use tokio::signal::unix::{SignalKind, signal};
        Ok(Self {
            terminate: signal(SignalKind::terminate()).map_err(RuntimeError::Signal)?,
            interrupt: signal(SignalKind::interrupt()).map_err(RuntimeError::Signal)?,
        })
    }

    /// The name of the next signal received.
    async fn next(&mut self) -> &'static str {
        tokio::select! {
            _ = self.terminate.recv() => "SIGTERM",
            _ = self.interrupt.recv() => "SIGINT",
        }
    }
}

#[cfg(not(unix))]
struct Signals;

#[cfg(not(unix))]
impl Signals {
    fn new() -> Result<Self, RuntimeError> {
        Ok(Self)
    }

    async fn next(&mut self) -> &'static str {
        match tokio::signal::ctrl_c().await {
            Ok(()) => "Ctrl-C",
            // No console to listen on: never complete, as with no signal at all.
            Err(_) => std::future::pending().await,
        }
    }
}
