//! Readiness polling: wait for a condition with a short backoff and a hard
//! deadline, instead of sleeping a fixed time and hoping.

use std::fmt::Display;
use std::future::Future;
use std::time::Duration;

use tokio::time::Instant;

/// First pause between attempts: short, because most things we wait for
/// (a server binding its port) are ready within milliseconds.
const FIRST_BACKOFF: Duration = Duration::from_millis(5);
/// Longest pause between attempts, so a slow start is still noticed quickly.
const MAX_BACKOFF: Duration = Duration::from_millis(200);

/// Polls `ready` until it returns `true`, for at most `timeout`.
///
/// Attempts are spaced by a backoff that starts at a few milliseconds and
/// grows to 200 ms. An attempt still running at the deadline is abandoned, so
/// a predicate that hangs (say, a connect to a wedged server) cannot stretch
/// the wait. The predicate is always tried at least once.
///
/// # Errors
///
/// When `ready` has not returned `true` by the deadline. Add context at the
/// call site to say what was being waited for.
pub async fn wait_until<F, Fut>(timeout: Duration, mut ready: F) -> anyhow::Result<()>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    poll_until_ok(timeout, || {
        let attempt = ready();
        async move {
            if attempt.await {
                Ok(())
            } else {
                Err(anyhow::anyhow!("condition not met yet"))
            }
        }
    })
    .await
}

/// Polls `attempt` until it returns `Ok`, for at most `timeout`, and returns
/// that value; like [`wait_until`], but for waits that produce something
/// (a connected client, say) and whose failures are worth reporting.
///
/// # Errors
///
/// When no attempt succeeded by the deadline; the error carries the last
/// attempt's error, which usually says why (connection refused, `LOADING`).
pub async fn poll_until_ok<T, E, F, Fut>(timeout: Duration, mut attempt: F) -> anyhow::Result<T>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T, E>>,
    E: Display,
{
    let mut backoff = Backoff::new(timeout);
    loop {
        let last_error = match backoff.run(attempt()).await {
            Some(Ok(value)) => return Ok(value),
            Some(Err(error)) => error.to_string(),
            None => "the attempt was still running at the deadline".to_owned(),
        };
        backoff.pause_or_fail(&last_error).await?;
    }
}

/// The retry schedule shared by [`poll_until_ok`] and the fixtures' own
/// loops (which must also watch their child process between attempts, so
/// cannot use `poll_until_ok` directly).
#[derive(Debug)]
pub(crate) struct Backoff {
    timeout: Duration,
    deadline: Instant,
    pause: Duration,
    attempts: u32,
}

impl Backoff {
    pub(crate) fn new(timeout: Duration) -> Self {
        Self {
            timeout,
            deadline: Instant::now() + timeout,
            pause: FIRST_BACKOFF,
            attempts: 0,
        }
    }

    /// Runs one attempt, abandoning it (`None`) if it is still running at
    /// the deadline, so a hanging attempt cannot stretch the wait.
    pub(crate) async fn run<T>(&mut self, attempt: impl Future<Output = T>) -> Option<T> {
        self.attempts += 1;
        tokio::time::timeout_at(self.deadline, attempt).await.ok()
    }

    /// Sleeps before the next attempt, or fails if the deadline has passed.
    pub(crate) async fn pause_or_fail(&mut self, last_error: &str) -> anyhow::Result<()> {
        let now = Instant::now();
        if now >= self.deadline {
            anyhow::bail!(
                "still not ready after {:?} ({} attempts); last attempt: {last_error}",
                self.timeout,
                self.attempts
            );
        }
        // Never sleep past the deadline: one last attempt right at it is
        // better than giving up early.
        tokio::time::sleep(self.pause.min(self.deadline - now)).await;
        self.pause = (self.pause * 2).min(MAX_BACKOFF);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicU32, Ordering};

    use super::*;

    #[tokio::test]
    async fn returns_once_the_condition_holds() {
        let calls = Arc::new(AtomicU32::new(0));
        let counter = Arc::clone(&calls);
        wait_until(Duration::from_secs(5), move || {
            let counter = Arc::clone(&counter);
            async move { counter.fetch_add(1, Ordering::SeqCst) >= 3 }
        })
        .await
        .unwrap();
        assert_eq!(calls.load(Ordering::SeqCst), 4);
    }

    #[tokio::test]
    async fn times_out_with_the_last_error() {
        let started = Instant::now();
        let err = poll_until_ok(Duration::from_millis(100), || async {
            Err::<(), _>("connection refused")
        })
        .await
        .unwrap_err();
        assert!(started.elapsed() >= Duration::from_millis(100));
        let message = err.to_string();
        assert!(message.contains("connection refused"), "{message}");
    }

    #[tokio::test]
    async fn a_hanging_attempt_does_not_outlive_the_deadline() {
        let started = Instant::now();
        let result = wait_until(Duration::from_millis(100), || async {
            std::future::pending::<bool>().await
        })
        .await;
        assert!(result.is_err());
        assert!(started.elapsed() < Duration::from_secs(5));
    }

    #[tokio::test]
    async fn tries_at_least_once_with_a_zero_timeout() {
        poll_until_ok(Duration::ZERO, || async { Ok::<_, String>(()) })
            .await
            .unwrap();
    }
}
