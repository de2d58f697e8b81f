//! Config layering (defaults < file < env < flags) and one-line errors naming the key, with an
//! injected environment: the process environment is never read or changed.
// clippy.toml allows these inside #[test] fns only; helpers and fixtures here are test code too.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::io::Write as _;
use std::path::Path;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use tenantmeter_runtime::config::{
    ConfigError, ConfigLoader, EnvMap, LogFormat, RedisConfig, ServerConfig, TelemetryConfig,
    TlsConfig, Validate,
};

/// A root document shaped like a real binary's.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct AppConfig {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    admin_token: Option<String>,
    telemetry: TelemetryConfig,
    redis: RedisConfig,
    pricing: ServerConfig,
}

impl Default for AppConfig {
    fn default() -> Self {
        Self {
            admin_token: None,
            telemetry: TelemetryConfig::default(),
            redis: RedisConfig::default(),
            pricing: ServerConfig::with_listen("127.0.0.1:50053".parse().unwrap()),
        }
    }
}

impl Validate for AppConfig {
    fn validate(&self) -> Result<(), ConfigError> {
        self.telemetry
            .validate()
            .map_err(|e| e.within("telemetry"))?;
        self.redis.validate().map_err(|e| e.within("redis"))?;
        self.pricing.validate().map_err(|e| e.within("pricing"))
    }
}

fn toml_file(contents: &str) -> tempfile::NamedTempFile {
    let mut file = tempfile::Builder::new().suffix(".toml").tempfile().unwrap();
    file.write_all(contents.as_bytes()).unwrap();
    file
}

fn env(pairs: &[(&str, &str)]) -> EnvMap {
    pairs
        .iter()
        .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
        .collect()
}

fn load(
    file: Option<&Path>,
    env: &EnvMap,
    flags: &[(&str, &str)],
) -> Result<AppConfig, ConfigError> {
    flags
        .iter()
        .fold(ConfigLoader::new().file(file).env(env), |loader, (k, v)| {
            loader.set(k, v)
        })
        .load()
}

const FILE: &str = r#"
admin_token = "from-file"
[telemetry]
log_format = "json"
[pricing]
listen = "127.0.0.1:1001"
drain_timeout = "5s"
"#;

#[test]
fn defaults_alone() {
    let config = load(None, &EnvMap::new(), &[]).unwrap();
    assert_eq!(config, AppConfig::default());
    assert_eq!(config.pricing.drain_timeout, Duration::from_secs(10));
    assert_eq!(config.telemetry.log_format, LogFormat::Pretty);
    assert_eq!(config.telemetry.log_filter, "info");
    assert_eq!(config.redis.url, "redis://127.0.0.1:6379/");
}

#[test]
fn each_layer_overrides_the_one_below() {
    let file = toml_file(FILE);
    let env = env(&[
        ("TENANTMETER_PRICING__LISTEN", "127.0.0.1:1002"),
        ("TENANTMETER_ADMIN_TOKEN", "from-env"),
        ("UNRELATED", "ignored"),
    ]);
    let flags = [("pricing.listen", "127.0.0.1:1003")];

    let from_file = load(Some(file.path()), &EnvMap::new(), &[]).unwrap();
    assert_eq!(from_file.pricing.listen.port(), 1001);
    assert_eq!(from_file.admin_token.as_deref(), Some("from-file"));

    let from_env = load(Some(file.path()), &env, &[]).unwrap();
    assert_eq!(from_env.pricing.listen.port(), 1002);
    assert_eq!(from_env.admin_token.as_deref(), Some("from-env"));

    let from_flag = load(Some(file.path()), &env, &flags).unwrap();
    assert_eq!(from_flag.pricing.listen.port(), 1003);

    // Keys a higher layer does not set keep the lower layer's value.
    assert_eq!(from_flag.pricing.drain_timeout, Duration::from_secs(5));
    assert_eq!(from_flag.telemetry.log_format, LogFormat::Json);
    assert_eq!(from_flag.telemetry.log_filter, "info");
    assert_eq!(from_flag.admin_token.as_deref(), Some("from-env"));
}

#[test]
fn a_partial_section_keeps_the_other_defaults() {
    let file = toml_file("[pricing]\ndrain_timeout = \"1m 30s\"\n");
    let config = load(Some(file.path()), &EnvMap::new(), &[]).unwrap();
    assert_eq!(config.pricing.listen.port(), 50053);
    assert_eq!(config.pricing.drain_timeout, Duration::from_secs(90));
}

#[test]
fn env_values_are_text_that_converts_only_when_asked() {
    let env = env(&[
        ("TENANTMETER_ADMIN_TOKEN", "123456"),
        ("TENANTMETER_TELEMETRY__LOG_FORMAT", "json"),
    ]);
    let config = load(None, &env, &[]).unwrap();
    // Looks like a number, stays the string it is.
    assert_eq!(config.admin_token.as_deref(), Some("123456"));
    assert_eq!(config.telemetry.log_format, LogFormat::Json);
}

#[test]
fn tls_section_from_file() {
    let cert = tempfile::NamedTempFile::new().unwrap();
    let key = tempfile::NamedTempFile::new().unwrap();
    let file = toml_file(&format!(
        "[pricing.tls]\ncert = {:?}\nkey = {:?}\n",
        cert.path(),
        key.path()
    ));
    let config = load(Some(file.path()), &EnvMap::new(), &[]).unwrap();
    assert_eq!(
        config.pricing.tls,
        Some(TlsConfig {
            cert: cert.path().to_owned(),
            key: key.path().to_owned(),
        })
    );
}

mod errors {
    use super::*;

    /// Checks the error's key, and that its display is one line naming the key and `needle`.
    fn assert_error(result: Result<AppConfig, ConfigError>, key: &str, needles: &[&str]) {
        let error = result.expect_err("expected a config error");
        let line = error.to_string();
        assert_eq!(error.key, key, "{line}");
        assert!(!line.contains('\n'), "not one line: {line}");
        assert!(
            line.starts_with(&format!("config error: {key}: ")),
            "{line}"
        );
        for needle in needles {
            assert!(line.contains(needle), "{line:?} lacks {needle:?}");
        }
    }

    #[test]
    fn bad_socket_address_in_file() {
        let file = toml_file("[pricing]\nlisten = \"nope\"\n");
        assert_error(
            load(Some(file.path()), &EnvMap::new(), &[]),
            "pricing.listen",
            &["invalid socket address", "\"nope\"", "TOML file"],
        );
    }

    #[test]
    fn bad_duration_in_env_names_the_variable() {
        let env = env(&[("TENANTMETER_PRICING__DRAIN_TIMEOUT", "abc")]);
        assert_error(
            load(None, &env, &[]),
            "pricing.drain_timeout",
            &["\"abc\"", "TENANTMETER_PRICING__DRAIN_TIMEOUT"],
        );
    }

    #[test]
    fn bad_flag_says_it_came_from_a_flag() {
        assert_error(
            load(None, &EnvMap::new(), &[("pricing.listen", "x:y")]),
            "pricing.listen",
            &["\"x:y\"", "command-line flag"],
        );
    }

    #[test]
    fn unknown_key_in_a_section() {
        let file = toml_file("[pricing]\nlisen = \"127.0.0.1:1\"\n");
        assert_error(
            load(Some(file.path()), &EnvMap::new(), &[]),
            "pricing.lisen",
            &["unknown key", "listen"],
        );
    }

    #[test]
    fn unknown_section() {
        let file = toml_file("[pricng]\nlisten = \"127.0.0.1:1\"\n");
        assert_error(
            load(Some(file.path()), &EnvMap::new(), &[]),
            "pricng",
            &["unknown key"],
        );
    }

    #[test]
    fn unknown_key_from_env() {
        let env = env(&[("TENANTMETER_PRICING__LISTNE", "127.0.0.1:1")]);
        assert_error(load(None, &env, &[]), "pricing.listne", &["unknown key"]);
    }

    #[test]
    fn wrong_type() {
        let file = toml_file("[pricing]\ndrain_timeout = 5\n");
        assert_error(
            load(Some(file.path()), &EnvMap::new(), &[]),
            "pricing.drain_timeout",
            &["5"],
        );
    }

    #[test]
    fn unknown_enum_value() {
        let file = toml_file("[telemetry]\nlog_format = \"xml\"\n");
        assert_error(
            load(Some(file.path()), &EnvMap::new(), &[]),
            "telemetry.log_format",
            &["xml", "pretty", "json"],
        );
    }

    #[test]
    fn missing_file_is_an_error_not_a_silent_default() {
        let missing = Path::new("/nonexistent/tenantmeter.toml");
        assert_error(
            load(Some(missing), &EnvMap::new(), &[]),
            "/nonexistent/tenantmeter.toml",
            &["cannot read config file"],
        );
    }

    #[test]
    fn toml_syntax_error_is_one_line_naming_the_file() {
        let file = toml_file("[pricing\nlisten = \n");
        let key = file.path().display().to_string();
        assert_error(
            load(Some(file.path()), &EnvMap::new(), &[]),
            &key,
            &["line 1"],
        );
    }

    #[test]
    fn zero_drain_timeout_fails_validation() {
        let env = env(&[("TENANTMETER_PRICING__DRAIN_TIMEOUT", "0s")]);
        assert_error(
            load(None, &env, &[]),
            "pricing.drain_timeout",
            &["more than 0s"],
        );
    }

    #[test]
    fn unreadable_tls_files_fail_validation() {
        let file = toml_file(
            "[pricing.tls]\ncert = \"/nonexistent/cert.pem\"\nkey = \"/nonexistent/key.pem\"\n",
        );
        assert_error(
            load(Some(file.path()), &EnvMap::new(), &[]),
            "pricing.tls.cert",
            &["/nonexistent/cert.pem"],
        );
    }

    #[test]
    fn redis_url_must_be_redis() {
        for (url, needle) in [
            ("http://127.0.0.1:6379", "unsupported scheme"),
            ("not a url", "invalid URL"),
            ("redis://", "no host"),
        ] {
            let env = env(&[("TENANTMETER_REDIS__URL", url)]);
            assert_error(load(None, &env, &[]), "redis.url", &[needle]);
        }
        for ok in ["rediss://user:pw@cache:6380/2", "unix:///run/redis.sock"] {
            let env = env(&[("TENANTMETER_REDIS__URL", ok)]);
            load(None, &env, &[]).unwrap();
        }
    }

    #[test]
    fn bad_log_filter_fails_validation() {
        let env = env(&[("TENANTMETER_TELEMETRY__LOG_FILTER", "info,[=")]);
        assert_error(
            load(None, &env, &[]),
            "telemetry.log_filter",
            &["invalid filter"],
        );
    }
}
