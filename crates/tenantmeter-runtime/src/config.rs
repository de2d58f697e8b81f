//! Layered configuration: defaults < TOML file < `TENANTMETER_*` environment < command-line flags.
//!
//! A binary has one config document with one section per concern (`[telemetry]`, `[redis]`,
//! `[pricing]`, ...). Each service crate defines its root struct out of the reusable sections
//! below, implements [`Validate`] for it, and loads it with [`ConfigLoader`]:
//!
//! ```no_run
//! # use tenantmeter_runtime::config::*;
//! # #[derive(Default, serde::Serialize, serde::Deserialize)]
//! # struct MyConfig {}
//! # impl Validate for MyConfig { fn validate(&self) -> Result<(), ConfigError> { Ok(()) } }
//! # fn main() {
//! let env = process_env(); // only in main: tests pass a map they built
//! let config: MyConfig = match ConfigLoader::new()
//!     .file(Some(std::path::Path::new("tenantmeter.toml")))
//!     .env(&env)
//!     .set("pricing.listen", "0.0.0.0:50053")
//!     .load()
//! {
//!     Ok(config) => config,
//!     Err(error) => {
//!         eprintln!("{error}");
//!         std::process::exit(EXIT_CONFIG);
//!     }
//! };
//! # }
//! ```
//!
//! The environment is *injected* (a map) rather than read here, so tests never touch the
//! process environment (clippy.toml bans `std::env::set_var`).
//!
//! Every failure, whether figment's (wrong type, unknown key, unreadable file) or a
//! [`Validate`] rule's, becomes one [`ConfigError`]: one line naming the dotted key and why.

use std::collections::BTreeMap;
use std::fmt;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use figment::Figment;
use figment::error::Kind;
use figment::providers::{Format as _, Serialized, Toml};
use figment::value::{Dict, Map, Value};
use figment::{Metadata, Profile, Provider};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

/// Process exit code for a configuration error (`EX_USAGE` from sysexits.h), as linkerd does.
pub const EXIT_CONFIG: i32 = 64;

/// Prefix of the environment variables read by [`ConfigLoader::env`].
pub const ENV_PREFIX: &str = "TENANTMETER_";

/// Separator between nesting levels in an environment variable name:
/// `TENANTMETER_PRICING__LISTEN` is `pricing.listen`.
pub const ENV_NESTING: &str = "__";

/// An environment: variable name to value. Built from the process only in `main`
/// ([`process_env`]); tests build their own.
pub type EnvMap = BTreeMap<String, String>;

/// The process environment as an [`EnvMap`]. Call this once, in `main`, and pass the map
/// down. Variables whose name or value is not UTF-8 are skipped: none of ours can be.
#[must_use]
pub fn process_env() -> EnvMap {
    std::env::vars_os()
        .filter_map(|(k, v)| Some((k.into_string().ok()?, v.into_string().ok()?)))
        .collect()
}

/// A configuration error: which key, and why. Displayed as one line, e.g.
/// `config error: pricing.listen: invalid socket address syntax: "nope" (from environment variable TENANTMETER_PRICING__LISTEN)`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("config error: {key}: {reason}")]
pub struct ConfigError {
    /// Dotted key path (`pricing.tls.cert`), or the file path for an unreadable config file.
    pub key: String,
    /// Why the value is wrong, on one line, naming where the value came from when known.
    pub reason: String,
}

impl ConfigError {
    /// An error about `key`.
    pub fn new(key: impl Into<String>, reason: impl Into<String>) -> Self {
        Self {
            key: key.into(),
            reason: one_line(&reason.into()),
        }
    }

    /// Prefixes the key with the section the value lives in, so that a reusable section
    /// (say [`ServerConfig`]) can validate itself with relative keys and its owner can say
    /// where it sits: `self.pricing.validate().map_err(|e| e.within("pricing"))`.
    #[must_use]
    pub fn within(mut self, section: &str) -> Self {
        self.key = if self.key.is_empty() {
            section.to_owned()
        } else {
            format!("{section}.{}", self.key)
        };
        self
    }
}

/// Rules a config must satisfy beyond its types, checked once at start-up by
/// [`ConfigLoader::load`]. Keys in the returned error are relative to `self`.
pub trait Validate {
    /// Checks the rules; the first violation is returned.
    fn validate(&self) -> Result<(), ConfigError>;
}

/// Builds a config from its layers, lowest precedence first: the type's `Default`, an
/// optional TOML file, `TENANTMETER_*` variables from an injected environment, then flags.
#[derive(Debug, Default)]
#[must_use]
pub struct ConfigLoader {
    file: Option<PathBuf>,
    env: Vec<(Vec<String>, Value)>,
    flags: Vec<(Vec<String>, Value)>,
}

impl ConfigLoader {
    /// A loader with no file, no environment and no flags: `load` yields the defaults.
    pub fn new() -> Self {
        Self::default()
    }

    /// Reads this TOML file (if `Some`). A file that is named but missing or unreadable is an
    /// error, never silently skipped.
    pub fn file(mut self, path: Option<&Path>) -> Self {
        self.file = path.map(Path::to_path_buf);
        self
    }

    /// Takes `TENANTMETER_*` variables from `env`: the prefix is dropped, `__` separates
    /// nesting levels and names are lowercased (`TENANTMETER_PRICING__DRAIN_TIMEOUT` is
    /// `pricing.drain_timeout`). Other variables are ignored.
    pub fn env(mut self, env: &EnvMap) -> Self {
        self.env = env
            .iter()
            .filter_map(|(name, value)| {
                let rest = name.strip_prefix(ENV_PREFIX)?;
                let path: Vec<String> = rest
                    .split(ENV_NESTING)
                    .map(str::to_ascii_lowercase)
                    .collect();
                // `TENANTMETER_` alone or `TENANTMETER_A____B` name no key: skip, like figment's Env.
                if path.iter().any(String::is_empty) {
                    return None;
                }
                Some((path, parse_text_value(value)))
            })
            .collect();
        self
    }

    /// Overrides one dotted key with a flag's value (`set("pricing.listen", "0.0.0.0:1")`).
    /// Later calls win over earlier ones for the same key.
    pub fn set(mut self, key: &str, value: &str) -> Self {
        let path = key.split('.').map(str::to_owned).collect();
        self.flags.push((path, parse_text_value(value)));
        self
    }

    /// Merges the layers, deserializes and validates.
    ///
    /// `T: Default + Serialize` because the defaults are a real bottom layer that figment
    /// merges key by key: a file that sets only `pricing.drain_timeout` keeps the default
    /// `pricing.listen`, which serde's field defaults alone cannot do for nested sections.
    pub fn load<T>(&self) -> Result<T, ConfigError>
    where
        T: DeserializeOwned + Serialize + Default + Validate,
    {
        let mut figment = Figment::from(Serialized::defaults(T::default()));
        if let Some(path) = &self.file {
            // figment skips a missing file silently; a file named on the command line must exist.
            if let Err(error) = std::fs::File::open(path) {
                return Err(ConfigError::new(
                    path.display().to_string(),
                    format!("cannot read config file: {error}"),
                ));
            }
            figment = figment.merge(Toml::file_exact(path));
        }
        figment = figment
            .merge(TextLayer::new(
                &self.env,
                Metadata::named("environment variable").interpolater(
                    |_: &Profile, keys: &[&str]| {
                        format!(
                            "{ENV_PREFIX}{}",
                            keys.join(ENV_NESTING).to_ascii_uppercase()
                        )
                    },
                ),
            ))
            .merge(TextLayer::new(
                &self.flags,
                Metadata::named("command-line flag")
                    .interpolater(|_: &Profile, keys: &[&str]| keys.join(".")),
            ));

        // Lossy: env and flag values arrive as text, and "8" must be able to become a number
        // while an admin token "123456" stays a string.
        let config: T = figment
            .extract_lossy()
            .map_err(|error| from_figment(&figment, error))?;
        config.validate()?;
        Ok(config)
    }
}

/// Env and flag values are text; `[..]` and `{..}` are parsed so lists and tables can be set
/// too, everything else stays a string and is converted only if the target type asks.
fn parse_text_value(text: &str) -> Value {
    let trimmed = text.trim_start();
    if trimmed.starts_with('[') || trimmed.starts_with('{') {
        // figment's parser is infallible: what is not a valid list or table stays a string.
        let Ok(value) = text.parse::<Value>();
        return value;
    }
    Value::from(text.to_owned())
}

/// A figment provider over already split (path, value) pairs: the injected environment or
/// the flags.
struct TextLayer {
    dict: Dict,
    metadata: Metadata,
}

impl TextLayer {
    fn new(entries: &[(Vec<String>, Value)], metadata: Metadata) -> Self {
        let mut dict = Dict::new();
        for (path, value) in entries {
            insert_nested(&mut dict, path, value.clone());
        }
        Self { dict, metadata }
    }
}

fn insert_nested(dict: &mut Dict, path: &[String], value: Value) {
    match path {
        [] => {}
        [last] => {
            dict.insert(last.clone(), value);
        }
        [first, rest @ ..] => {
            let entry = dict
                .entry(first.clone())
                .or_insert_with(|| Value::from(Dict::new()));
            if !matches!(entry, Value::Dict(..)) {
                // A scalar and a nested key for the same name (`A=1` and `A__B=2`): the nested
                // one wins, as it is the more specific.
                *entry = Value::from(Dict::new());
            }
            if let Value::Dict(_, inner) = entry {
                insert_nested(inner, rest, value);
            }
        }
    }
}

impl Provider for TextLayer {
    fn metadata(&self) -> Metadata {
        self.metadata.clone()
    }

    fn data(&self) -> Result<Map<Profile, Dict>, figment::Error> {
        Ok(Profile::Default.collect(self.dict.clone()))
    }
}

/// Maps figment's error (possibly a chain of several) to one line about its first problem.
fn from_figment(figment: &Figment, error: figment::Error) -> ConfigError {
    let mut path = error.path.clone();
    let reason = match &error.kind {
        Kind::UnknownField(field, expected) => {
            // figment usually has the field in the path already; serde's plain error does not.
            if path.last() != Some(field) {
                path.push(field.clone());
            }
            format!("unknown key (expected one of: {})", expected.join(", "))
        }
        Kind::MissingField(field) => {
            if path.last().map(String::as_str) != Some(field.as_ref()) {
                path.push(field.to_string());
            }
            "missing, and it has no default".to_owned()
        }
        Kind::InvalidType(actual, expected) => format!("expected {expected}, found {actual}"),
        Kind::InvalidValue(actual, expected) => {
            format!("invalid value {actual}, expected {expected}")
        }
        Kind::UnknownVariant(actual, expected) => format!(
            "unknown value \"{actual}\" (expected one of: {})",
            expected.join(", ")
        ),
        Kind::Message(message) => {
            // Custom messages (`SocketAddr`, humantime) do not quote the offending value: add it.
            let found = figment
                .find_value(&path.join("."))
                .ok()
                .and_then(|value| value.into_string());
            match found {
                Some(found) => format!("{}: {found:?}", one_line(message)),
                None => one_line(message),
            }
        }
        Kind::InvalidLength(..)
        | Kind::DuplicateField(..)
        | Kind::ISizeOutOfRange(..)
        | Kind::USizeOutOfRange(..)
        | Kind::Unsupported(..)
        | Kind::UnsupportedKey(..) => error.kind.to_string(),
    };

    let origin = error.metadata.as_ref().map(|md| {
        match (
            md.source.as_ref().and_then(figment::Source::file_path),
            &error.profile,
        ) {
            (Some(file), _) => format!("{} {}", md.name, file.display()),
            (None, Some(profile)) if !path.is_empty() => {
                format!("{} {}", md.name, md.interpolate(profile, &path))
            }
            (None, _) => md.name.to_string(),
        }
    });

    let file = error
        .metadata
        .as_ref()
        .and_then(|md| md.source.as_ref()?.file_path());
    let (key, origin) = match (path.is_empty(), file) {
        (false, _) => (path.join("."), origin),
        // A parse error of the whole file has no key path: the file is the key.
        (true, Some(file)) => (file.display().to_string(), None),
        (true, None) => ("(root)".to_owned(), origin),
    };
    let reason = match origin {
        Some(origin) => format!("{reason} (from {origin})"),
        None => reason,
    };
    ConfigError::new(key, reason)
}

/// Folds a possibly multi-line message (TOML parse errors draw the offending line) into one
/// line: keeps the text lines, drops the source excerpt and caret lines.
fn one_line(message: &str) -> String {
    let parts: Vec<&str> = message
        .lines()
        .map(str::trim)
        .filter(|line| {
            !line.is_empty()
                && !line.starts_with('|')
                && !line
                    .split_once('|')
                    .is_some_and(|(gutter, _)| gutter.trim().chars().all(|c| c.is_ascii_digit()))
        })
        .collect();
    parts.join(": ")
}

// ---------------------------------------------------------------------------------------------
// Reusable sections
// ---------------------------------------------------------------------------------------------

/// Default time a server gives in-flight RPCs to finish after shutdown starts.
pub const DEFAULT_DRAIN_TIMEOUT: Duration = Duration::from_secs(10);

fn default_drain_timeout() -> Duration {
    DEFAULT_DRAIN_TIMEOUT
}

/// Where and how one gRPC service listens. Each service's section (`[pricing]`, `[meter]`...)
/// embeds one, with its own default port.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ServerConfig {
    /// Address to bind, e.g. `127.0.0.1:50053`. Use `0.0.0.0:PORT` in containers.
    pub listen: SocketAddr,
    /// After a shutdown signal, how long in-flight RPCs may take before the server stops
    /// anyway (humantime: `10s`, `1m 30s`). Default 10s.
    #[serde(with = "humantime_serde", default = "default_drain_timeout")]
    pub drain_timeout: Duration,
    /// Serve TLS with this certificate and key; plaintext when absent (the default).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tls: Option<TlsConfig>,
}

impl ServerConfig {
    /// Plaintext on `listen`, default drain timeout: what a service's `Default` uses.
    #[must_use]
    pub const fn with_listen(listen: SocketAddr) -> Self {
        Self {
            listen,
            drain_timeout: DEFAULT_DRAIN_TIMEOUT,
            tls: None,
        }
    }
}

impl Validate for ServerConfig {
    fn validate(&self) -> Result<(), ConfigError> {
        if self.drain_timeout.is_zero() {
            return Err(ConfigError::new(
                "drain_timeout",
                "must be more than 0s: in-flight RPCs need time to finish",
            ));
        }
        if let Some(tls) = &self.tls {
            tls.validate().map_err(|e| e.within("tls"))?;
        }
        Ok(())
    }
}

/// A PEM certificate chain and its PEM private key.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TlsConfig {
    /// PEM certificate chain, leaf first.
    pub cert: PathBuf,
    /// PEM private key of the leaf certificate.
    pub key: PathBuf,
}

impl Validate for TlsConfig {
    fn validate(&self) -> Result<(), ConfigError> {
        for (key, path) in [("cert", &self.cert), ("key", &self.key)] {
            // Checked at start-up so a typo fails with exit 64, not at the first handshake.
            if let Err(error) = std::fs::File::open(path) {
                return Err(ConfigError::new(
                    key,
                    format!("cannot read {:?}: {error}", path.display().to_string()),
                ));
            }
        }
        Ok(())
    }
}

/// How logs are written to stderr.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    /// For people: one readable line per event with its span context, coloured when stderr
    /// is a terminal. (tracing-subscriber's own multi-line "pretty" layout is too tall for
    /// four services logging into one terminal under `tenantmeter up`.)
    #[default]
    Pretty,
    /// One JSON object per line: for log collectors.
    Json,
}

/// The `[telemetry]` section.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TelemetryConfig {
    /// `pretty` (default) or `json`.
    #[serde(default)]
    pub log_format: LogFormat,
    /// `RUST_LOG`-style directives, e.g. `info,tenantmeter_meter=debug`. Default `info`.
    #[serde(default = "default_log_filter")]
    pub log_filter: String,
}

fn default_log_filter() -> String {
    "info".to_owned()
}

impl Default for TelemetryConfig {
    fn default() -> Self {
        Self {
            log_format: LogFormat::default(),
            log_filter: default_log_filter(),
        }
    }
}

impl Validate for TelemetryConfig {
    fn validate(&self) -> Result<(), ConfigError> {
        tracing_subscriber::EnvFilter::builder()
            .parse(&self.log_filter)
            .map(|_| ())
            .map_err(|error| {
                ConfigError::new(
                    "log_filter",
                    format!("invalid filter {:?}: {error}", self.log_filter),
                )
            })
    }
}

/// The `[redis]` section.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RedisConfig {
    /// `redis://[user:pass@]host:port/[db]`, `rediss://...` for TLS, or `unix:///path`.
    /// Default `redis://127.0.0.1:6379/`.
    #[serde(default = "default_redis_url")]
    pub url: String,
}

fn default_redis_url() -> String {
    "redis://127.0.0.1:6379/".to_owned()
}

impl Default for RedisConfig {
    fn default() -> Self {
        Self {
            url: default_redis_url(),
        }
    }
}

impl Validate for RedisConfig {
    fn validate(&self) -> Result<(), ConfigError> {
        let parsed = url::Url::parse(&self.url).map_err(|error| {
            ConfigError::new("url", format!("invalid URL {:?}: {error}", self.url))
        })?;
        match parsed.scheme() {
            "redis" | "rediss" if parsed.host_str().is_some_and(|h| !h.is_empty()) => Ok(()),
            "redis" | "rediss" => Err(ConfigError::new(
                "url",
                format!("{:?} names no host", self.url),
            )),
            "unix" | "redis+unix" => Ok(()),
            other => Err(ConfigError::new(
                "url",
                format!(
                    "unsupported scheme {other:?} in {:?} (use redis, rediss or unix)",
                    self.url
                ),
            )),
        }
    }
}

impl fmt::Display for LogFormat {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Pretty => "pretty",
            Self::Json => "json",
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn within_prefixes_keys() {
        let error = ConfigError::new("cert", "unreadable")
            .within("tls")
            .within("pricing");
        assert_eq!(error.key, "pricing.tls.cert");
        assert_eq!(
            error.to_string(),
            "config error: pricing.tls.cert: unreadable"
        );
        assert_eq!(ConfigError::new("", "x").within("redis").key, "redis");
    }

    #[test]
    fn one_line_drops_source_excerpts() {
        let toml_error = "TOML parse error at line 1, column 9\n  |\n1 | [pricing\n  |         ^\ninvalid table header\n";
        assert_eq!(
            one_line(toml_error),
            "TOML parse error at line 1, column 9: invalid table header"
        );
    }

    #[test]
    fn env_names_map_to_lowercase_nested_keys() {
        let env = EnvMap::from([
            (
                "TENANTMETER_PRICING__DRAIN_TIMEOUT".to_owned(),
                "5s".to_owned(),
            ),
            ("TENANTMETER_".to_owned(), "skipped".to_owned()),
            ("TENANTMETER_A____B".to_owned(), "skipped".to_owned()),
            ("OTHER_X".to_owned(), "skipped".to_owned()),
        ]);
        let loader = ConfigLoader::new().env(&env);
        let keys: Vec<String> = loader.env.iter().map(|(path, _)| path.join(".")).collect();
        assert_eq!(keys, ["pricing.drain_timeout"]);
    }

    #[test]
    fn text_values_stay_strings_unless_lists_or_tables() {
        assert_eq!(
            parse_text_value("123").into_string().as_deref(),
            Some("123")
        );
        assert!(matches!(parse_text_value("[1, 2]"), Value::Array(..)));
        assert!(matches!(parse_text_value("{a = 1}"), Value::Dict(..)));
    }
}
