//! The one config document of the binary: shared sections plus one section per
//! service. `tenantmeter config` prints it with every layer applied.

use std::net::SocketAddr;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use tenantmeter_alerting::AlertingConfig;
use tenantmeter_gateway::GatewayConfig;
use tenantmeter_meter::MeterConfig;
use tenantmeter_pricing::PricingConfig;
use tenantmeter_runtime::config::{ConfigError, RedisConfig, TelemetryConfig, Validate};

/// Where the ops commands (`budget`, `status`, `alerts`) reach alerting when
/// neither `--alerting-url` nor `TENANTMETER_ALERTING_URL` says otherwise.
pub(crate) const DEFAULT_ALERTING_URL: &str = "http://127.0.0.1:50054";

/// Everything the binary can be configured with.
// Not `Eq`: the level policy in `[alerting.levels]` has float thresholds (z-scores).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub(crate) struct Config {
    /// Token that admin RPCs must present as `authorization: Bearer <token>`.
    /// Unset: admin APIs answer PERMISSION_DENIED (`up` generates one).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub admin_token: Option<String>,
    /// Alerting's gRPC address as the ops commands call it (plaintext).
    /// Default [`DEFAULT_ALERTING_URL`]; a top-level key so that
    /// `TENANTMETER_ALERTING_URL` and `--alerting-url` set it.
    pub alerting_url: String,
    /// Logs and traces.
    pub telemetry: TelemetryConfig,
    /// Redis used by every service (`up` starts a private one instead unless
    /// `--redis-url` is given).
    pub redis: RedisConfig,
    /// The pricing service.
    pub pricing: PricingConfig,
    /// The meter.
    pub meter: MeterConfig,
    /// The gateway.
    pub gateway: GatewayConfig,
    /// Alerting: levels, budgets, notifications, adaptive throttling.
    pub alerting: AlertingConfig,
    /// The Bedrock emulator that `up` runs (and `tenantmeter emulator`).
    pub emulator: EmulatorSection,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            admin_token: None,
            alerting_url: DEFAULT_ALERTING_URL.to_owned(),
            telemetry: TelemetryConfig::default(),
            redis: RedisConfig::default(),
            pricing: PricingConfig::default(),
            meter: MeterConfig::default(),
            gateway: GatewayConfig::default(),
            alerting: AlertingConfig::default(),
            emulator: EmulatorSection::default(),
        }
    }
}

/// The `[emulator]` section.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub(crate) struct EmulatorSection {
    /// HTTP address. Default `127.0.0.1:8790`.
    pub(crate) listen: SocketAddr,
    /// Delay added before every unary answer (`Converse`, `InvokeModel`), reported as
    /// `metrics.latencyMs`. Default `0s`.
    #[serde(with = "humantime_serde")]
    pub(crate) latency: Duration,
    /// Delay before a stream's first event (`ConverseStream`,
    /// `InvokeModelWithResponseStream`). Default `0s`.
    #[serde(with = "humantime_serde")]
    pub(crate) time_to_first_token: Duration,
    /// Output tokens a stream delivers per second after its first event; 0 sends them all at
    /// once. Default `0`.
    pub(crate) tokens_per_second: u32,
    /// Longest a `[[fault:hang]]` call waits before answering. Default `60s`.
    #[serde(with = "humantime_serde")]
    pub(crate) hang_limit: Duration,
    /// Region of calls whose signature names none, and of the ARNs issued to them. Default
    /// `us-east-1`.
    pub(crate) region: String,
    /// Account in the ARNs the emulator issues and accepts. Default `123456789012`.
    pub(crate) account_id: String,
    /// File its inference profiles are kept in across restarts. Default: none (in memory);
    /// `up` uses `<data-dir>/emulator-profiles.json`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) state_file: Option<std::path::PathBuf>,
}

impl Default for EmulatorSection {
    fn default() -> Self {
        Self {
            listen: SocketAddr::from(([127, 0, 0, 1], 8790)),
            latency: Duration::ZERO,
            time_to_first_token: Duration::ZERO,
            tokens_per_second: 0,
            hang_limit: tenantmeter_emulator::DEFAULT_HANG_LIMIT,
            region: tenantmeter_emulator::DEFAULT_REGION.to_owned(),
            account_id: tenantmeter_emulator::DEFAULT_ACCOUNT_ID.to_owned(),
            state_file: None,
        }
    }
}

impl Validate for Config {
    fn validate(&self) -> Result<(), ConfigError> {
        if let Some(token) = &self.admin_token
            && token.trim().len() < 16
        {
            return Err(ConfigError::new(
                "admin_token",
                "must be at least 16 characters (it guards every admin RPC)",
            ));
        }
        let plaintext = self
            .alerting_url
            .strip_prefix("http://")
            .is_some_and(|rest| !rest.is_empty());
        if !plaintext {
            return Err(ConfigError::new(
                "alerting_url",
                format!(
                    "{:?} must be http://HOST:PORT (the ops commands call alerting in plaintext)",
                    self.alerting_url
                ),
            ));
        }
        self.telemetry
            .validate()
            .map_err(|e| e.within("telemetry"))?;
        self.redis.validate().map_err(|e| e.within("redis"))?;
        self.pricing.validate().map_err(|e| e.within("pricing"))?;
        self.meter.validate().map_err(|e| e.within("meter"))?;
        self.gateway.validate().map_err(|e| e.within("gateway"))?;
        self.alerting.validate().map_err(|e| e.within("alerting"))?;
        Ok(())
    }
}
