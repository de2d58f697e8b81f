//! The `[gateway]` config section.

use std::collections::BTreeSet;
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4};
use std::path::PathBuf;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use tenantmeter_runtime::config::{
    ConfigError, DEFAULT_DRAIN_TIMEOUT, ServerConfig, TlsConfig, Validate,
};

/// Default port of the gateway (ARCHITECTURE.md).
pub const DEFAULT_PORT: u16 = 50051;

/// Where the gateway's Bedrock clients go.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum BedrockMode {
    /// The project's Bedrock emulator at `bedrock.endpoint_url`, with static
    /// test credentials: no AWS account needed.
    Emulator,
    /// Real Amazon Bedrock, with the standard AWS credential chain.
    Aws,
}

/// What the gateway answers when the meter cannot be reached for a Reserve.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum MeterFailMode {
    /// Call Bedrock anyway and settle (or spool) the usage afterwards: tenants
    /// keep working through a meter outage; nothing goes uncounted.
    Open,
    /// Refuse with UNAVAILABLE (GATEWAY_ERROR_REASON_METER_UNAVAILABLE).
    Closed,
}

/// How the gateway reaches Bedrock.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct BedrockSection {
    /// `emulator` or `aws`. Default `emulator`.
    pub mode: BedrockMode,
    /// The emulator's URL (mode `emulator`). Default `http://127.0.0.1:8790`.
    pub endpoint_url: String,
    /// The region calls are served from, and the profile ARN each call uses.
    /// Default `us-east-1`.
    pub region: String,
    /// Regions ProvisionProfiles creates profiles in when a request names none.
    /// Default: `region` alone.
    pub provision_regions: Vec<String>,
    /// The AWS account of the system inference profiles provisioning copies
    /// from. Default `123456789012` (the emulator's account).
    pub account_id: String,
    /// Longest a Bedrock call may take, streams included. Default `2m`.
    #[serde(with = "humantime_serde")]
    pub call_timeout: Duration,
    /// Longest to wait for a connection to Bedrock. Default `3s`.
    #[serde(with = "humantime_serde")]
    pub connect_timeout: Duration,
}

impl Default for BedrockSection {
    fn default() -> Self {
        Self {
            mode: BedrockMode::Emulator,
            endpoint_url: "http://127.0.0.1:8790".to_owned(),
            region: "us-east-1".to_owned(),
            provision_regions: Vec::new(),
            account_id: "123456789012".to_owned(),
            call_timeout: Duration::from_secs(120),
            connect_timeout: Duration::from_secs(3),
        }
    }
}

impl BedrockSection {
    /// Regions to provision in when a request names none.
    pub fn provision_regions(&self) -> Vec<String> {
        if self.provision_regions.is_empty() {
            vec![self.region.clone()]
        } else {
            self.provision_regions.clone()
        }
    }
}

/// Tag keys and values put on every application inference profile.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ProfileTagsSection {
    /// Key of the tenant tag. Default `TenantID`.
    pub tenant_key: String,
    /// Key of the application tag. Default `ApplicationID`.
    pub application_key: String,
    /// Key of the cost-center tag. Default `CostCenter`.
    pub cost_center_key: String,
    /// Key of the environment tag. Default `Environment`.
    pub environment_key: String,
    /// Value of the environment tag. Default `dev`.
    pub environment: String,
}

impl Default for ProfileTagsSection {
    fn default() -> Self {
        Self {
            tenant_key: "TenantID".to_owned(),
            application_key: "ApplicationID".to_owned(),
            cost_center_key: "CostCenter".to_owned(),
            environment_key: "Environment".to_owned(),
            environment: "dev".to_owned(),
        }
    }
}

/// Settings of the gateway.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct GatewayConfig {
    /// Address to serve gRPC on. Default `127.0.0.1:50051`.
    pub listen: SocketAddr,
    /// How long in-flight RPCs may run after a shutdown signal. Default `30s`
    /// (streams take longer than unary calls to finish).
    #[serde(with = "humantime_serde")]
    pub drain_timeout: Duration,
    /// Serve TLS with this certificate and key. Default: plaintext.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tls: Option<TlsConfig>,
    /// Where the meter is. Default `http://127.0.0.1:50052`.
    pub meter_url: String,
    /// Where the pricing service is (price book for provisioning, plan
    /// assignment). Default `http://127.0.0.1:50053`.
    pub pricing_url: String,
    /// Treat `redis.url` as a comma-separated list of Redis Cluster seed nodes.
    pub redis_cluster: bool,
    /// Deadline of every registry Redis call. Default `2s`.
    #[serde(with = "humantime_serde")]
    pub redis_timeout: Duration,
    /// Deadline of a Reserve at the meter; past it `meter_fail_mode` answers.
    /// Default `250ms`.
    #[serde(with = "humantime_serde")]
    pub reserve_timeout: Duration,
    /// Deadline of a Settle at the meter; past it the settlement is spooled.
    /// Default `1s`.
    #[serde(with = "humantime_serde")]
    pub settle_timeout: Duration,
    /// What a Reserve answers when the meter cannot be reached. Default `open`.
    pub meter_fail_mode: MeterFailMode,
    /// Directory of the settlement spool. Default `.tenantmeter/spool`.
    pub spool_dir: PathBuf,
    /// How often the spool is replayed while it holds settlements. Default `1s`.
    #[serde(with = "humantime_serde")]
    pub spool_replay_every: Duration,
    /// Output tokens reserved for a call that sets no maximum. Default `4096`.
    pub default_max_output_tokens: u32,
    /// Largest request accepted, in bytes of message content. Default 4 MiB.
    pub max_request_bytes: u64,
    /// Most messages in a conversation. Default `1000`.
    pub max_messages: u32,
    /// How long a rotated key keeps working when RotateKey sets no overlap.
    /// Default `24h`.
    #[serde(with = "humantime_serde")]
    pub default_key_overlap: Duration,
    /// Put prompts and completions in spans and logs. Default `false`: they
    /// are the tenants' data.
    pub log_content: bool,
    /// How the gateway reaches Bedrock.
    pub bedrock: BedrockSection,
    /// Tags put on application inference profiles.
    pub profile_tags: ProfileTagsSection,
}

impl Default for GatewayConfig {
    fn default() -> Self {
        Self {
            listen: SocketAddr::V4(SocketAddrV4::new(Ipv4Addr::LOCALHOST, DEFAULT_PORT)),
            drain_timeout: DEFAULT_DRAIN_TIMEOUT.max(Duration::from_secs(30)),
            tls: None,
            meter_url: "http://127.0.0.1:50052".to_owned(),
            pricing_url: "http://127.0.0.1:50053".to_owned(),
            redis_cluster: false,
            redis_timeout: Duration::from_secs(2),
            reserve_timeout: Duration::from_millis(250),
            settle_timeout: Duration::from_secs(1),
            meter_fail_mode: MeterFailMode::Open,
            spool_dir: PathBuf::from(".tenantmeter/spool"),
            spool_replay_every: Duration::from_secs(1),
            default_max_output_tokens: 4096,
            max_request_bytes: 4 << 20,
            max_messages: 1000,
            default_key_overlap: Duration::from_secs(86_400),
            log_content: false,
            bedrock: BedrockSection::default(),
            profile_tags: ProfileTagsSection::default(),
        }
    }
}

impl GatewayConfig {
    /// The listener settings in the runtime's form.
    pub fn server(&self) -> ServerConfig {
        ServerConfig {
            listen: self.listen,
            drain_timeout: self.drain_timeout,
            tls: self.tls.clone(),
        }
    }
}

fn check_url(key: &str, url: &str) -> Result<(), ConfigError> {
    if url.starts_with("http://") || url.starts_with("https://") {
        Ok(())
    } else {
        Err(ConfigError::new(
            key,
            format!("{url:?} must start with http:// or https://"),
        ))
    }
}

impl Validate for GatewayConfig {
    fn validate(&self) -> Result<(), ConfigError> {
        self.server().validate()?;
        check_url("meter_url", &self.meter_url)?;
        check_url("pricing_url", &self.pricing_url)?;
        let positive = [
            ("redis_timeout", self.redis_timeout),
            ("reserve_timeout", self.reserve_timeout),
            ("settle_timeout", self.settle_timeout),
            ("spool_replay_every", self.spool_replay_every),
            ("bedrock.call_timeout", self.bedrock.call_timeout),
            ("bedrock.connect_timeout", self.bedrock.connect_timeout),
        ];
        for (key, value) in positive {
            if value.is_zero() {
                return Err(ConfigError::new(key, "must be more than 0s"));
            }
        }
        if self.default_max_output_tokens == 0 {
            return Err(ConfigError::new(
                "default_max_output_tokens",
                "must be at least 1",
            ));
        }
        if self.max_request_bytes == 0 || self.max_messages == 0 {
            return Err(ConfigError::new(
                "max_request_bytes",
                "max_request_bytes and max_messages must be at least 1",
            ));
        }
        if self.spool_dir.as_os_str().is_empty() {
            return Err(ConfigError::new("spool_dir", "must name a directory"));
        }
        if self.bedrock.mode == BedrockMode::Emulator {
            check_url("bedrock.endpoint_url", &self.bedrock.endpoint_url)?;
        }
        if self.bedrock.region.trim().is_empty() {
            return Err(ConfigError::new("bedrock.region", "must name a region"));
        }
        let keys: BTreeSet<&str> = [
            self.profile_tags.tenant_key.as_str(),
            self.profile_tags.application_key.as_str(),
            self.profile_tags.cost_center_key.as_str(),
            self.profile_tags.environment_key.as_str(),
        ]
        .into_iter()
        .collect();
        if keys.len() != 4 || keys.iter().any(|k| k.trim().is_empty()) {
            return Err(ConfigError::new(
                "profile_tags",
                "the four tag keys must be distinct and non-empty",
            ));
        }
        Ok(())
    }
}
