//! The emulator's knobs and their defaults.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use tenantmeter_runtime::clock::{Clock, SystemClock};

/// The reply prefix of [`EmulatorConfig::default`].
pub const DEFAULT_REPLY_PREFIX: &str = "emulated: ";

/// The region of [`EmulatorConfig::default`].
pub const DEFAULT_REGION: &str = "us-east-1";

/// The AWS account of [`EmulatorConfig::default`].
pub const DEFAULT_ACCOUNT_ID: &str = "123456789012";

/// The longest a `[[fault:hang]]` request waits, in [`EmulatorConfig::default`].
pub const DEFAULT_HANG_LIMIT: Duration = Duration::from_secs(60);

/// Deterministic behaviour knobs of the emulator.
#[derive(Debug, Clone)]
pub struct EmulatorConfig {
    /// Delay before every unary runtime answer (`Converse`, `InvokeModel`, faults included);
    /// reported as `metrics.latencyMs` and `X-Amzn-Bedrock-Invocation-Latency`.
    pub latency: Duration,
    /// Delay between a streaming call's response headers and its first event.
    pub time_to_first_token: Duration,
    /// Output tokens a stream delivers per second after its first event; 0 sends all at once.
    pub tokens_per_second: u32,
    /// The longest a `[[fault:hang]]` request waits before answering `ModelTimeoutException`.
    pub hang_limit: Duration,
    /// Text put before the echoed last user text in every reply.
    pub reply_prefix: String,
    /// How many cache prefixes the server remembers before forgetting them all.
    pub cache_capacity: usize,
    /// How many runtime invocations the server remembers (the oldest go first).
    pub invocation_capacity: usize,
    /// Region of calls whose SigV4 credential scope names none.
    pub region: String,
    /// The account in every ARN the emulator issues or accepts.
    pub account_id: String,
    /// Source of the profiles' `createdAt` / `updatedAt`.
    pub clock: Arc<dyn Clock>,
    /// File the inference profiles are kept in across restarts (JSON, rewritten on every
    /// control-plane change); `None` keeps them in memory only.
    pub state_file: Option<PathBuf>,
}

impl Default for EmulatorConfig {
    fn default() -> Self {
        Self {
            latency: Duration::ZERO,
            time_to_first_token: Duration::ZERO,
            tokens_per_second: 0,
            hang_limit: DEFAULT_HANG_LIMIT,
            reply_prefix: DEFAULT_REPLY_PREFIX.to_owned(),
            cache_capacity: 10_000,
            invocation_capacity: 10_000,
            region: DEFAULT_REGION.to_owned(),
            account_id: DEFAULT_ACCOUNT_ID.to_owned(),
            clock: Arc::new(SystemClock),
            state_file: None,
        }
    }
}
