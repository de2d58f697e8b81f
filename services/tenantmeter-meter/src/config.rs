//! The `[meter]` config section.

use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4};
use std::time::Duration;

use serde::{Deserialize, Serialize};
use tenantmeter_runtime::config::{
    ConfigError, DEFAULT_DRAIN_TIMEOUT, ServerConfig, TlsConfig, Validate,
};

/// Default port of the meter (ARCHITECTURE.md).
pub const DEFAULT_PORT: u16 = 50052;

/// What Reserve answers when Redis does not answer within `reserve_timeout`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum FailMode {
    /// Admit without checking or reserving (`Admission.fail_open`): tenants keep
    /// working through a Redis outage, unmetered until it ends.
    Open,
    /// Deny with `DENY_REASON_METER_UNAVAILABLE`: no call goes unchecked.
    Closed,
}

/// Settings of the meter.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct MeterConfig {
    /// Address to serve gRPC on. Default `127.0.0.1:50052`.
    pub listen: SocketAddr,
    /// How long in-flight RPCs may run after a shutdown signal. Default `10s`.
    #[serde(with = "humantime_serde")]
    pub drain_timeout: Duration,
    /// Serve TLS with this certificate and key. Default: plaintext.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tls: Option<TlsConfig>,
    /// Where the pricing service is (the meter follows its price book).
    /// Default `http://127.0.0.1:50053`.
    pub pricing_url: String,
    /// Treat `redis.url` as a comma-separated list of Redis Cluster seed nodes.
    pub redis_cluster: bool,
    /// Deadline of a Reserve's Redis call; past it the fail mode answers. Default `50ms`.
    #[serde(with = "humantime_serde")]
    pub reserve_timeout: Duration,
    /// Reserve's answer when Redis is slow or down. Default `open`.
    pub reserve_fail_mode: FailMode,
    /// Deadline of every other Redis call (writes report UNAVAILABLE past it). Default `2s`.
    #[serde(with = "humantime_serde")]
    pub redis_timeout: Duration,
    /// How old an event may be and still be counted. Default `1h`.
    #[serde(with = "humantime_serde")]
    pub allowed_lateness: Duration,
    /// How far in the future an event may be (producers' clock skew). Default `30s`.
    #[serde(with = "humantime_serde")]
    pub allowed_skew: Duration,
    /// Lease of a reservation when the caller sets none. Default `5m`.
    #[serde(with = "humantime_serde")]
    pub default_lease: Duration,
    /// Longest lease a caller may ask for. Default `30m`.
    #[serde(with = "humantime_serde")]
    pub max_lease: Duration,
    /// How long hourly rollups are kept. Default `14days`.
    #[serde(with = "humantime_serde")]
    pub hourly_retention: Duration,
    /// How long daily and monthly rollups are kept. Default `400days`.
    #[serde(with = "humantime_serde")]
    pub daily_retention: Duration,
}

impl Default for MeterConfig {
    fn default() -> Self {
        Self {
            listen: SocketAddr::V4(SocketAddrV4::new(Ipv4Addr::LOCALHOST, DEFAULT_PORT)),
            drain_timeout: DEFAULT_DRAIN_TIMEOUT,
            tls: None,
            pricing_url: "http://127.0.0.1:50053".to_owned(),
            redis_cluster: false,
            reserve_timeout: Duration::from_millis(50),
            reserve_fail_mode: FailMode::Open,
            redis_timeout: Duration::from_secs(2),
            allowed_lateness: Duration::from_secs(3_600),
            allowed_skew: Duration::from_secs(30),
            default_lease: Duration::from_secs(300),
            max_lease: Duration::from_secs(1_800),
            hourly_retention: Duration::from_secs(14 * 86_400),
            daily_retention: Duration::from_secs(400 * 86_400),
        }
    }
}

impl MeterConfig {
    /// The listener settings in the runtime's form.
    pub fn server(&self) -> ServerConfig {
        ServerConfig {
            listen: self.listen,
            drain_timeout: self.drain_timeout,
            tls: self.tls.clone(),
        }
    }
}

impl Validate for MeterConfig {
    fn validate(&self) -> Result<(), ConfigError> {
        self.server().validate()?;
        let positive = [
            ("reserve_timeout", self.reserve_timeout),
            ("redis_timeout", self.redis_timeout),
            ("allowed_lateness", self.allowed_lateness),
            ("default_lease", self.default_lease),
            ("max_lease", self.max_lease),
            ("hourly_retention", self.hourly_retention),
            ("daily_retention", self.daily_retention),
        ];
        for (key, value) in positive {
            if value.is_zero() {
                return Err(ConfigError::new(key, "must be more than 0s"));
            }
        }
        if self.default_lease > self.max_lease {
            return Err(ConfigError::new(
                "default_lease",
                format!(
                    "must not exceed max_lease ({})",
                    humantime_serde::re::humantime::format_duration(self.max_lease)
                ),
            ));
        }
        if self.allowed_skew > Duration::from_secs(60) {
            return Err(ConfigError::new(
                "allowed_skew",
                "at most 1m: the rolling minute keeps one window of future buckets",
            ));
        }
        if !(self.pricing_url.starts_with("http://") || self.pricing_url.starts_with("https://")) {
            return Err(ConfigError::new(
                "pricing_url",
                format!("{:?} must start with http:// or https://", self.pricing_url),
            ));
        }
        Ok(())
    }
}
