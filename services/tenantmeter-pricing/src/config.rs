//! The `[pricing]` config section.

use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4};
use std::path::PathBuf;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use tenantmeter_runtime::config::{
    ConfigError, DEFAULT_DRAIN_TIMEOUT, ServerConfig, TlsConfig, Validate,
};

/// Default port of the pricing service (ARCHITECTURE.md).
pub const DEFAULT_PORT: u16 = 50053;

/// Settings of the pricing service.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct PricingConfig {
    /// Address to serve gRPC on. Default `127.0.0.1:50053`; `0.0.0.0:50053` in containers.
    pub listen: SocketAddr,
    /// How long in-flight RPCs may run after a shutdown signal. Default `10s`.
    #[serde(with = "humantime_serde")]
    pub drain_timeout: Duration,
    /// Serve TLS with this certificate and key. Default: plaintext.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tls: Option<TlsConfig>,
    /// Bedrock list-price file that seeds the price book. Default: the
    /// `deploy/pricebook.toml` built into the binary.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub price_book_file: Option<PathBuf>,
    /// Rate-card file that seeds the plans. Default: the `deploy/plans.toml`
    /// built into the binary.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub plans_file: Option<PathBuf>,
    /// Connect and response timeout of Redis calls. Default `2s`.
    #[serde(with = "humantime_serde")]
    pub redis_timeout: Duration,
}

impl Default for PricingConfig {
    fn default() -> Self {
        Self {
            listen: SocketAddr::V4(SocketAddrV4::new(Ipv4Addr::LOCALHOST, DEFAULT_PORT)),
            drain_timeout: DEFAULT_DRAIN_TIMEOUT,
            tls: None,
            price_book_file: None,
            plans_file: None,
            redis_timeout: Duration::from_secs(2),
        }
    }
}

impl PricingConfig {
    /// The listener settings in the runtime's form.
    pub fn server(&self) -> ServerConfig {
        ServerConfig {
            listen: self.listen,
            drain_timeout: self.drain_timeout,
            tls: self.tls.clone(),
        }
    }
}

impl Validate for PricingConfig {
    fn validate(&self) -> Result<(), ConfigError> {
        self.server().validate()?;
        if self.redis_timeout.is_zero() {
            return Err(ConfigError::new("redis_timeout", "must be more than 0s"));
        }
        for (key, path) in [
            ("price_book_file", &self.price_book_file),
            ("plans_file", &self.plans_file),
        ] {
            if let Some(path) = path
                && let Err(error) = std::fs::File::open(path)
            {
                return Err(ConfigError::new(
                    key,
                    format!("cannot read {:?}: {error}", path.display().to_string()),
                ));
            }
        }
        Ok(())
    }
}
