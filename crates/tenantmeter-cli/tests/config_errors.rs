//! A bad config value stops the binary before anything starts: exit code 64 and
//! one line on stderr naming the key and why.

#![allow(clippy::unwrap_used, clippy::expect_used)] // test support: a failed unwrap is a failed test

use std::process::{Command, Output};

fn tenantmeter(args: &[&str], env: &[(&str, &str)]) -> Output {
    let mut command = Command::new(env!("CARGO_BIN_EXE_tenantmeter"));
    command.args(args).env_remove("OTEL_EXPORTER_OTLP_ENDPOINT");
    for (key, value) in env {
        command.env(key, value);
    }
    command.output().unwrap()
}

fn assert_config_error(output: &Output, expected: &str) {
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(64), "stderr: {stderr}");
    assert_eq!(stderr.trim().lines().count(), 1, "one line, got: {stderr}");
    assert!(
        stderr.contains(expected),
        "expected {expected:?} in: {stderr}"
    );
}

#[test]
fn a_bad_value_in_the_file_exits_64_naming_the_key() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("tenantmeter.toml");
    std::fs::write(&file, "[pricing]\nlisten = \"not-an-address\"\n").unwrap();
    let output = tenantmeter(&["--config", file.to_str().unwrap(), "pricing"], &[]);
    assert_config_error(&output, "pricing.listen");
}

#[test]
fn a_bad_environment_value_exits_64_naming_the_key() {
    let output = tenantmeter(
        &["pricing"],
        &[("TENANTMETER_PRICING__DRAIN_TIMEOUT", "soon")],
    );
    assert_config_error(&output, "pricing.drain_timeout");
}

#[test]
fn an_unknown_key_exits_64_naming_it() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("tenantmeter.toml");
    std::fs::write(&file, "[pricing]\nlisten_addr = \"127.0.0.1:1\"\n").unwrap();
    let output = tenantmeter(&["--config", file.to_str().unwrap(), "config"], &[]);
    assert_config_error(&output, "listen_addr");
}

#[test]
fn a_short_admin_token_exits_64() {
    let output = tenantmeter(&["config"], &[("TENANTMETER_ADMIN_TOKEN", "short")]);
    assert_config_error(&output, "admin_token");
}

#[test]
fn the_effective_config_shows_every_layer_and_hides_the_token() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("tenantmeter.toml");
    std::fs::write(
        &file,
        "[pricing]\nlisten = \"127.0.0.1:6000\"\ndrain_timeout = \"3s\"\n",
    )
    .unwrap();
    let output = tenantmeter(
        &[
            "--config",
            file.to_str().unwrap(),
            "--log-format",
            "json",
            "config",
        ],
        &[
            ("TENANTMETER_PRICING__LISTEN", "127.0.0.1:7000"),
            ("TENANTMETER_ADMIN_TOKEN", "a-long-enough-admin-token"),
        ],
    );
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    // env beats the file; the file beats the default; the flag set the format.
    assert!(stdout.contains("listen = \"127.0.0.1:7000\""), "{stdout}");
    assert!(stdout.contains("drain_timeout = \"3s\""), "{stdout}");
    assert!(stdout.contains("log_format = \"json\""), "{stdout}");
    assert!(
        stdout.contains("<redacted>") && !stdout.contains("a-long-enough"),
        "{stdout}"
    );
}
