//! The one config document of the binary: shared sections plus one section per
//! service. `tenantmeter config` prints it with every layer applied.

use serde::{Deserialize, Serialize};
use tenantmeter_meter::MeterConfig;
use tenantmeter_pricing::PricingConfig;
use tenantmeter_runtime::config::{ConfigError, RedisConfig, TelemetryConfig, Validate};

/// Everything the binary can be configured with.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub(crate) struct Config {
    /// Token that admin RPCs must present as `authorization: Bearer <token>`.
    /// Unset: admin APIs answer PERMISSION_DENIED (`up` generates one).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub admin_token: Option<String>,
    /// Logs and traces.
    pub telemetry: TelemetryConfig,
    /// Redis used by every service (`up` starts a private one instead unless
    /// `--redis-url` is given).
    pub redis: RedisConfig,
    /// The pricing service.
    pub pricing: PricingConfig,
    /// The meter.
    pub meter: MeterConfig,
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
        self.telemetry
            .validate()
            .map_err(|e| e.within("telemetry"))?;
        self.redis.validate().map_err(|e| e.within("redis"))?;
        self.pricing.validate().map_err(|e| e.within("pricing"))?;
        self.meter.validate().map_err(|e| e.within("meter"))?;
        Ok(())
    }
}
