//! `tenantmeter backtest` as an operator runs it: the built binary on a
//! generated usage file, replayed through the real meter and alerting (a
//! private redis-server, every service in-process) on simulated time.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // test support: a failed unwrap or panic is a failed test

use std::fmt::Write as _;
use std::process::{Command, Output};

const SONNET: &str = "anthropic.claude-3-5-sonnet-20240620-v1:0";

fn backtest(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_tenantmeter"))
        .arg("backtest")
        .args(args)
        .env_remove("OTEL_EXPORTER_OTLP_ENDPOINT")
        .env_remove("TENANTMETER_ADMIN_TOKEN")
        .output()
        .unwrap()
}

/// Two hours from Monday 2026-11-02 00:00 UTC, one event a minute per tenant
/// (Claude 3.5 Sonnet, on the default plan: x1.50, expected $0.25/h of charge):
/// `steady` at $0.18/h all along; `runaway` at $0.18/h for an hour, then 20x.
fn usage() -> String {
    // 1000 input + 200 output tokens = $0.006 of cost = $0.009 of charge a
    // minute = $0.54/h; a third of that for the steady rate.
    let mut text = String::new();
    writeln!(
        text,
        r#"{{"type":"budget","time":"2026-11-02T00:00:00Z","tenant_id":"steady","period":"month","amount_usd":"400.00"}}"#
    )
    .unwrap();
    for minute in 0..120 {
        let time = format!("2026-11-02T{:02}:{:02}:30Z", minute / 60, minute % 60);
        writeln!(
            text,
            r#"{{"time":"{time}","tenant_id":"steady","model_id":"{SONNET}","input_tokens":333,"output_tokens":67}}"#
        )
        .unwrap();
        let scale = if minute < 60 { 1 } else { 20 };
        writeln!(
            text,
            r#"{{"time":"{time}","tenant_id":"runaway","model_id":"{SONNET}","input_tokens":{},"output_tokens":{}}}"#,
            333 * scale,
            67 * scale
        )
        .unwrap();
    }
    text
}

fn subject<'a>(report: &'a serde_json::Value, tenant: &str) -> &'a serde_json::Value {
    report["subjects"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["tenant_id"] == tenant)
        .unwrap_or_else(|| panic!("no timeline for {tenant}: {report:#}"))
}

#[test]
fn a_runaway_reaches_red_and_a_steady_tenant_stays_green() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("usage.jsonl");
    std::fs::write(&file, usage()).unwrap();
    let output = backtest(&[file.to_str().unwrap(), "--format", "json"]);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "{stderr}");
    let report: serde_json::Value = serde_json::from_slice(&output.stdout).unwrap_or_else(|e| {
        panic!(
            "not JSON ({e}): {}",
            String::from_utf8_lossy(&output.stdout)
        )
    });

    assert_eq!(report["evaluations"], 120, "{report:#}");
    assert_eq!(report["events_accepted"], 240, "{report:#}");
    assert_eq!(report["budgets_set"], 1, "{report:#}");
    // The fleet first, then tenants by id.
    assert_eq!(report["subjects"][0]["subject"], "fleet", "{report:#}");
    assert_eq!(report["subjects"][1]["tenant_id"], "runaway", "{report:#}");
    assert_eq!(report["subjects"][2]["tenant_id"], "steady", "{report:#}");

    let steady = subject(&report, "steady");
    assert_eq!(steady["final_level"], "green", "{steady:#}");
    assert_eq!(steady["alerts"], 0, "{steady:#}");
    assert_eq!(steady["seconds_at_level"]["yellow"], 0, "{steady:#}");
    assert_eq!(steady["seconds_at_level"]["red"], 0, "{steady:#}");

    let runaway = subject(&report, "runaway");
    let transitions = runaway["transitions"].as_array().unwrap();
    let red = transitions
        .iter()
        .find(|t| t["to"] == "red")
        .unwrap_or_else(|| panic!("runaway never reached red: {runaway:#}"));
    // Nothing before the runaway began at 01:00. Red a few evaluations in: once
    // the 5-minute rate window holds enough of it to be 10x the baseline, and
    // that has lasted 2 minutes (01:06 with the default policy).
    let first = transitions[0]["time"].as_str().unwrap();
    assert!(first > "2026-11-02T01:00:00Z", "{runaway:#}");
    assert!(
        red["time"].as_str().unwrap() <= "2026-11-02T01:10:00Z",
        "{runaway:#}"
    );
    assert!(
        red["reasons"]
            .as_array()
            .unwrap()
            .iter()
            .any(|r| r["code"] == "REASON_CODE_RUNAWAY"),
        "{red:#}"
    );
    assert_eq!(runaway["final_level"], "red", "{runaway:#}");
    assert!(report["alerts"].as_u64().unwrap() >= 1, "{report:#}");
}

#[test]
fn a_malformed_line_names_its_number_and_field_and_exits_65() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("usage.jsonl");
    let mut text = usage().lines().take(4).collect::<Vec<_>>().join("\n");
    text.push_str(&format!(
        "\n{{\"time\":\"2026-11-02T03:00:00Z\",\"tenant_id\":\"steady\",\"model_id\":\"{SONNET}\",\"input_tokens\":-5}}\n"
    ));
    std::fs::write(&file, text).unwrap();
    let output = backtest(&[file.to_str().unwrap()]);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(65), "{stderr}");
    assert_eq!(stderr.trim().lines().count(), 1, "one line: {stderr}");
    assert!(
        stderr.contains("usage.jsonl:5: input_tokens: must not be negative"),
        "{stderr}"
    );
    assert!(output.stdout.is_empty());
}

#[test]
fn a_bad_policy_key_exits_64_naming_it() {
    let dir = tempfile::tempdir().unwrap();
    let usage_file = dir.path().join("usage.jsonl");
    std::fs::write(&usage_file, usage()).unwrap();
    let policy = dir.path().join("policy.toml");
    std::fs::write(&policy, "[fleet]\nred_share_pct = 20\n").unwrap();
    let output = backtest(&[
        usage_file.to_str().unwrap(),
        "--policy",
        policy.to_str().unwrap(),
    ]);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(64), "{stderr}");
    assert!(stderr.contains("fleet.red_share_pct"), "{stderr}");
}
