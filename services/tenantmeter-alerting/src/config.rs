//! The `[alerting]` config section.

use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4};
use std::time::Duration;

use serde::{Deserialize, Serialize};
use tenantmeter_domain::levels::LevelPolicy;
use tenantmeter_runtime::config::{
    ConfigError, DEFAULT_DRAIN_TIMEOUT, ServerConfig, TlsConfig, Validate,
};

use crate::sinks::NotifierConfig;
use crate::throttle::ThrottleConfig;

/// Default port of alerting (ARCHITECTURE.md).
pub const DEFAULT_PORT: u16 = 50054;

/// Settings of the alerting service.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AlertingConfig {
    /// Address to serve gRPC on. Default `127.0.0.1:50054`.
    pub listen: SocketAddr,
    /// How long in-flight RPCs may run after a shutdown signal. Default `10s`.
    #[serde(with = "humantime_serde")]
    pub drain_timeout: Duration,
    /// Serve TLS with this certificate and key. Default: plaintext.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tls: Option<TlsConfig>,
    /// Where the meter is (bulk figures in, policies out). Default `http://127.0.0.1:50052`.
    pub meter_url: String,
    /// Where pricing is (plans and rate cards). Default `http://127.0.0.1:50053`.
    pub pricing_url: String,
    /// Treat `redis.url` as a comma-separated list of Redis Cluster seed nodes.
    pub redis_cluster: bool,
    /// Deadline of every Redis call. Default `2s`.
    #[serde(with = "humantime_serde")]
    pub redis_timeout: Duration,
    /// Deadline of every meter call. Default `10s`.
    #[serde(with = "humantime_serde")]
    pub meter_timeout: Duration,
    /// How often every active tenant and the fleet are evaluated. Default `5s`;
    /// `0s` turns the scheduled passes off (evaluation only through
    /// `Evaluate`, as the backtest does).
    #[serde(with = "humantime_serde")]
    pub interval: Duration,
    /// Tenants are split into this many shards (the meter's
    /// `ListTenantUsage.shard_count`); each is evaluated by the one replica
    /// holding its lease. Default 8.
    pub shards: u32,
    /// A shard's lease lasts this long unless renewed (each pass renews it);
    /// a replica that stops loses its shards to the others after it. Default `15s`.
    #[serde(with = "humantime_serde")]
    pub lease_ttl: Duration,
    /// Tenants asked of the meter per page (1..1000). Default 1000.
    pub page_size: u32,
    /// Alerts older than this are removed from the history. Default `90days`.
    #[serde(with = "humantime_serde")]
    pub alert_retention: Duration,
    /// The level rules (docs/levels.md).
    pub levels: LevelPolicy,
    /// How levels become policies.
    pub throttle: ThrottleConfig,
    /// Webhook deliveries.
    pub notifier: NotifierConfig,
}

impl Default for AlertingConfig {
    fn default() -> Self {
        Self {
            listen: SocketAddr::V4(SocketAddrV4::new(Ipv4Addr::LOCALHOST, DEFAULT_PORT)),
            drain_timeout: DEFAULT_DRAIN_TIMEOUT,
            tls: None,
            meter_url: "http://127.0.0.1:50052".to_owned(),
            pricing_url: "http://127.0.0.1:50053".to_owned(),
            redis_cluster: false,
            redis_timeout: Duration::from_secs(2),
            meter_timeout: Duration::from_secs(10),
            interval: Duration::from_secs(5),
            shards: 8,
            lease_ttl: Duration::from_secs(15),
            page_size: 1_000,
            alert_retention: Duration::from_secs(90 * 86_400),
            levels: LevelPolicy::default(),
            throttle: ThrottleConfig::default(),
            notifier: NotifierConfig::default(),
        }
    }
}

impl AlertingConfig {
    /// The listener settings in the runtime's form.
    pub fn server(&self) -> ServerConfig {
        ServerConfig {
            listen: self.listen,
            drain_timeout: self.drain_timeout,
            tls: self.tls.clone(),
        }
    }
}

impl Validate for AlertingConfig {
    fn validate(&self) -> Result<(), ConfigError> {
        self.server().validate()?;
        for (key, value) in [
            ("redis_timeout", self.redis_timeout),
            ("meter_timeout", self.meter_timeout),
            ("lease_ttl", self.lease_ttl),
            ("alert_retention", self.alert_retention),
        ] {
            if value.is_zero() {
                return Err(ConfigError::new(key, "must be more than 0s"));
            }
        }
        if !self.interval.is_zero() && self.lease_ttl <= self.interval {
            return Err(ConfigError::new(
                "lease_ttl",
                "must be longer than interval: each pass renews the lease",
            ));
        }
        if !(1..=1024).contains(&self.shards) {
            return Err(ConfigError::new("shards", "must be 1..1024"));
        }
        if !(1..=1000).contains(&self.page_size) {
            return Err(ConfigError::new("page_size", "must be 1..1000"));
        }
        for (key, url) in [
            ("meter_url", &self.meter_url),
            ("pricing_url", &self.pricing_url),
        ] {
            if !(url.starts_with("http://") || url.starts_with("https://")) {
                return Err(ConfigError::new(
                    key,
                    format!("{url:?} must start with http:// or https://"),
                ));
            }
        }
        self.levels
            .validate()
            .map_err(|error| ConfigError::new(format!("levels.{}", error.key), error.reason))?;
        self.notifier.validate().map_err(|error| {
            ConfigError::new(
                format!("notifier.{}", error.field().unwrap_or_default()),
                error.to_string(),
            )
        })?;
        let throttle = &self.throttle;
        for (key, value) in [
            ("throttle.orange_peak_pct", throttle.orange_peak_pct),
            ("throttle.red_start_pct", throttle.red_start_pct),
            ("throttle.red_tighten_pct", throttle.red_tighten_pct),
            ("throttle.fleet_red_scale_pct", throttle.fleet_red_scale_pct),
            ("throttle.fleet_red_cover_pct", throttle.fleet_red_cover_pct),
        ] {
            if value == 0 {
                return Err(ConfigError::new(key, "must be more than 0"));
            }
        }
        if throttle.red_tighten_pct >= 100 {
            return Err(ConfigError::new(
                "throttle.red_tighten_pct",
                "must be below 100: the cap must tighten while spend rises",
            ));
        }
        if throttle.policy_ttl <= self.interval {
            return Err(ConfigError::new(
                "throttle.policy_ttl",
                "must be longer than interval, or policies lapse between passes",
            ));
        }
        Ok(())
    }
}
