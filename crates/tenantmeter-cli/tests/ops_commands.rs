//! The ops commands as an SRE runs them: `tenantmeter up` on a private data
//! directory and free ports (as in `up_grpcurl.rs`), then the built binary's
//! `budget set|get|list|delete`, `status` and `alerts` (and `alerts ack`)
//! against it, and their errors: a bad amount names `--amount-usd`, a missing
//! or wrong admin token says so, alerting's own refusals carry the code and
//! the field.
//!
//! Alerting's scheduled passes are off (`TENANTMETER_ALERTING__INTERVAL=0s`):
//! the test records usage with the meter and runs one committed
//! `AlertingAdminService/Evaluate`, so the levels it asserts do not depend
//! on timing.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::print_stderr
)] // test support: a failed unwrap is a failed test; up's log is echoed for failures

use std::io::{BufRead as _, BufReader};
use std::path::Path;
use std::process::{Child, Command, Output, Stdio};
use std::sync::mpsc;
use std::time::Duration;

use tenantmeter_proto::v1 as pb;
use tenantmeter_proto::v1::alerting_admin_service_client::AlertingAdminServiceClient;
use tenantmeter_proto::v1::meter_service_client::MeterServiceClient;

const SONNET: &str = "anthropic.claude-3-5-sonnet-20240620-v1:0";
const NOVA_MICRO: &str = "amazon.nova-micro-v1:0";

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// `tenantmeter up` on free ports; killed when dropped if not stopped.
struct Up {
    child: Option<Child>,
    meter: String,
    alerting: String,
}

impl Up {
    /// Starts `up` and waits for its banner (printed once every service
    /// reports SERVING).
    fn start(data_dir: &Path) -> Self {
        let addr = |_| format!("127.0.0.1:{}", free_port());
        let [pricing, meter, emulator, gateway, alerting] = [0; 5].map(addr);
        let mut child = Command::new(env!("CARGO_BIN_EXE_tenantmeter"))
            .args(["up", "--data-dir"])
            .arg(data_dir)
            .args(["--pricing-listen", &pricing, "--meter-listen", &meter])
            .args(["--emulator-listen", &emulator, "--gateway-listen", &gateway])
            .args(["--alerting-listen", &alerting])
            // Passes only through Evaluate: levels independent of timing.
            .env("TENANTMETER_ALERTING__INTERVAL", "0s")
            .env_remove("OTEL_EXPORTER_OTLP_ENDPOINT")
            .env_remove("TENANTMETER_ADMIN_TOKEN")
            .env_remove("TENANTMETER_ALERTING_URL")
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let stderr = child.stderr.take().unwrap();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines() {
                eprintln!("up: {}", line.unwrap_or_default());
            }
        });
        let stdout = child.stdout.take().unwrap();
        let (lines, received) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                if lines.send(line.unwrap_or_default()).is_err() {
                    break;
                }
            }
        });
        let mut banner = String::new();
        loop {
            let line = received
                .recv_timeout(Duration::from_secs(120))
                .unwrap_or_else(|_| panic!("no banner from `up` within 120s; got:\n{banner}"));
            banner.push_str(&line);
            banner.push('\n');
            if line.starts_with("Stop with Ctrl-C") {
                break;
            }
        }
        assert!(
            banner.contains(&format!("alerting  {alerting}")),
            "{banner}"
        );
        Self {
            child: Some(child),
            meter,
            alerting,
        }
    }

    /// SIGTERM; `up` must drain and exit 0.
    fn stop(mut self) {
        let mut child = self.child.take().unwrap();
        let pid = child.id();
        let status = Command::new("kill")
            .args(["-TERM", &pid.to_string()])
            .status()
            .unwrap();
        assert!(status.success());
        let (exited, exit) = mpsc::channel();
        std::thread::spawn(move || exited.send(child.wait()));
        let status = exit
            .recv_timeout(Duration::from_secs(30))
            .unwrap_or_else(|_| panic!("up (pid {pid}) did not exit within 30s of SIGTERM"))
            .unwrap();
        assert!(status.success(), "up exited with {status}");
    }
}

impl Drop for Up {
    fn drop(&mut self) {
        // Only reached when an assertion failed mid-test: don't leave it running.
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// Runs the binary with `args`, pointed at `up`'s alerting and data dir
/// through flags only (the environment's token and URL are removed).
fn tenantmeter(up: &Up, data_dir: &Path, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_tenantmeter"))
        .args(args)
        .args(["--alerting-url", &format!("http://{}", up.alerting)])
        .arg("--data-dir")
        .arg(data_dir)
        .env_remove("OTEL_EXPORTER_OTLP_ENDPOINT")
        .env_remove("TENANTMETER_ADMIN_TOKEN")
        .env_remove("TENANTMETER_ALERTING_URL")
        .output()
        .unwrap()
}

/// The stdout of a command that must succeed.
fn ok(output: &Output) -> String {
    assert!(
        output.status.success(),
        "exit {:?}; stderr: {}; stdout: {}",
        output.status.code(),
        String::from_utf8_lossy(&output.stderr),
        String::from_utf8_lossy(&output.stdout)
    );
    String::from_utf8(output.stdout.clone()).unwrap()
}

/// The one stderr line of a command that must fail with `code`.
fn fails(output: &Output, code: i32) -> String {
    let stderr = String::from_utf8_lossy(&output.stderr).into_owned();
    assert_eq!(output.status.code(), Some(code), "stderr: {stderr}");
    assert_eq!(stderr.trim().lines().count(), 1, "one line, got: {stderr}");
    assert!(output.stdout.is_empty(), "nothing on stdout on failure");
    stderr
}

fn json(text: &str) -> serde_json::Value {
    serde_json::from_str(text).unwrap_or_else(|e| panic!("not JSON ({e}): {text}"))
}

/// Usage for `acme` (over its $0.001 daily budget) and a crumb for
/// `globex`, through the meter, then one committed evaluation.
fn record_usage_and_evaluate(up: &Up, token: &str) {
    // The binary runs on the system clock, so events are stamped with it.
    #[allow(clippy::disallowed_methods)]
    let now = prost_types::Timestamp::from(std::time::SystemTime::now());
    let event = |id: &str, tenant: &str, model: &str, input: i64, output: i64| pb::UsageEvent {
        event_id: id.to_owned(),
        tenant_id: tenant.to_owned(),
        model_id: model.to_owned(),
        usage: Some(pb::TokenUsage {
            input_tokens: input,
            output_tokens: output,
            ..pb::TokenUsage::default()
        }),
        event_time: Some(now),
        ..pb::UsageEvent::default()
    };
    let runtime = tokio::runtime::Runtime::new().unwrap();
    runtime.block_on(async {
        let mut meter = MeterServiceClient::connect(format!("http://{}", up.meter))
            .await
            .unwrap();
        let recorded = meter
            .record_usage(pb::RecordUsageRequest {
                events: vec![
                    // Sonnet 1200 x $3/M + 300 x $15/M = $0.0081 of cost.
                    event("ops-1", "acme", SONNET, 1_200, 300),
                    event("ops-2", "globex", NOVA_MICRO, 10, 1),
                ],
            })
            .await
            .unwrap()
            .into_inner();
        assert_eq!(recorded.accepted, 2, "{recorded:?}");

        let channel = tonic::transport::Endpoint::from_shared(format!("http://{}", up.alerting))
            .unwrap()
            .connect()
            .await
            .unwrap();
        let mut admin = AlertingAdminServiceClient::new(channel);
        let mut request = tonic::Request::new(pb::EvaluateRequest {
            commit: true,
            ..pb::EvaluateRequest::default()
        });
        request
            .metadata_mut()
            .insert("authorization", format!("Bearer {token}").parse().unwrap());
        let evaluated = admin.evaluate(request).await.unwrap().into_inner();
        assert_eq!(evaluated.tenants_evaluated, 2, "{evaluated:?}");
    });
}

#[test]
fn budgets_statuses_and_alerts_through_the_cli() {
    let data = tempfile::tempdir().unwrap();
    let up = Up::start(data.path());
    let dir = data.path();
    let run = |args: &[&str]| tenantmeter(&up, dir, args);

    // budget set: the stored budget, amounts exact.
    let set = ok(&run(&[
        "budget",
        "set",
        "--tenant",
        "acme",
        "--period",
        "month",
        "--amount-usd",
        "1200.50",
    ]));
    let row = set.lines().nth(1).unwrap();
    for part in ["acme", "month", "$1,200.50", "charge", "soft"] {
        assert!(row.contains(part), "{part} missing from:\n{set}");
    }
    let set = ok(&run(&[
        "budget",
        "set",
        "--tenant",
        "acme",
        "--period",
        "day",
        "--amount-usd",
        "0.001",
        "--hard",
    ]));
    assert!(set.contains("$0.001") && set.contains("hard"), "{set}");
    let fleet = json(&ok(&run(&[
        "budget",
        "set",
        "--fleet",
        "--period",
        "month",
        "--amount-usd",
        "5000",
        "--basis",
        "cost",
        "--format",
        "json",
    ])));
    let budget = &fleet["budget"];
    assert_eq!(budget["subject"]["fleet"], true, "{fleet}");
    assert_eq!(budget["amountNanosUsd"], "5000000000000", "{fleet}");
    assert_eq!(budget["amountUsd"], "5000.00", "{fleet}");
    assert_eq!(budget["basis"], "COST_BASIS_PROVIDER_COST", "{fleet}");
    assert_eq!(budget["period"], "CALENDAR_PERIOD_MONTH", "{fleet}");

    // Refused before anything is sent: exit 64, one line naming the flag.
    let bad = fails(
        &run(&[
            "budget",
            "set",
            "--tenant",
            "acme",
            "--period",
            "day",
            "--amount-usd",
            "1.2.3",
        ]),
        64,
    );
    assert!(bad.starts_with("--amount-usd: "), "{bad}");
    assert!(bad.contains("\"1.2.3\""), "{bad}");
    let bad = fails(
        &run(&[
            "budget",
            "set",
            "--tenant",
            "acme",
            "--period",
            "day",
            "--amount-usd",
            "0.0000000001",
        ]),
        64,
    );
    assert!(
        bad.contains("--amount-usd") && bad.contains("at most 9"),
        "{bad}"
    );
    // Refused by alerting: exit 1, the code, the message and the field.
    let refused = fails(
        &run(&[
            "budget",
            "set",
            "--fleet",
            "--period",
            "day",
            "--amount-usd",
            "5",
            "--hard",
        ]),
        1,
    );
    assert!(
        refused.starts_with("SetBudget failed: INVALID_ARGUMENT: ")
            && refused.contains("budget.enforcement"),
        "{refused}"
    );
    // No admin token anywhere: a data directory without one.
    let empty = tempfile::tempdir().unwrap();
    let no_token = fails(
        &tenantmeter(
            &up,
            empty.path(),
            &["budget", "delete", "--tenant", "acme", "--period", "day"],
        ),
        64,
    );
    assert!(
        no_token.starts_with("no admin token: ") && no_token.contains("--admin-token"),
        "{no_token}"
    );
    let wrong = fails(
        &run(&[
            "budget",
            "delete",
            "--tenant",
            "acme",
            "--period",
            "day",
            "--admin-token",
            "not-the-admin-token-at-all",
        ]),
        1,
    );
    assert!(
        wrong.starts_with("DeleteBudget failed: UNAUTHENTICATED"),
        "{wrong}"
    );

    // get and list: nothing above changed them.
    let got = ok(&run(&["budget", "get", "--tenant", "acme"]));
    let rows: Vec<&str> = got.lines().skip(1).collect();
    assert_eq!(rows.len(), 2, "{got}");
    assert!(
        rows[0].contains("month") && rows[0].contains("$1,200.50"),
        "{got}"
    );
    assert!(
        rows[1].contains("day") && rows[1].contains("$0.001"),
        "{got}"
    );
    let listed = ok(&run(&["budget", "list"]));
    let subjects: Vec<&str> = listed
        .lines()
        .skip(1)
        .map(|l| l.split_whitespace().next().unwrap())
        .collect();
    assert_eq!(subjects, ["(fleet)", "acme", "acme"], "{listed}");
    let listed = json(&ok(&run(&["budget", "list", "--format", "json"])));
    assert_eq!(listed["budgets"].as_array().unwrap().len(), 3, "{listed}");
    let none = ok(&run(&["budget", "get", "--tenant", "globex"]));
    assert!(
        none.starts_with("no budgets set for tenant globex"),
        "{none}"
    );

    // Before any evaluation.
    let status = ok(&run(&["status"]));
    assert!(status.starts_with("fleet: not evaluated yet"), "{status}");
    assert!(ok(&run(&["alerts"])).starts_with("no alerts"));

    let token = std::fs::read_to_string(dir.join("admin-token")).unwrap();
    record_usage_and_evaluate(&up, token.trim());

    // status: the fleet's line, then the table, highest level first.
    let status = ok(&run(&["status"]));
    let mut lines = status.lines();
    let fleet_line = lines.next().unwrap();
    assert!(
        fleet_line.starts_with("fleet: green") && fleet_line.contains("2 active tenants"),
        "{status}"
    );
    let table: Vec<&str> = lines.skip_while(|l| !l.starts_with("TENANT")).collect();
    assert_eq!(table.len(), 3, "{status}");
    let acme: Vec<&str> = table[1].split_whitespace().collect();
    assert_eq!(acme[..2], ["acme", "red"], "{status}");
    assert!(
        table[1].contains("day ") && table[1].contains("of the daily budget"),
        "{status}"
    );
    assert!(table[2].starts_with("globex  green"), "{status}");
    let orange = ok(&run(&["status", "--min-level", "orange"]));
    assert!(
        orange.contains("\nacme ") && !orange.contains("globex"),
        "{orange}"
    );

    // One tenant in full: level, reasons, budgets, rate, policy.
    let acme = ok(&run(&["status", "--tenant", "acme"]));
    for part in [
        "tenant    acme (plan ",
        "level     red since ",
        "(was green)",
        "reasons   red ",
        "budgets   ",
        "day charge hard: spent $0.01215 of $0.001 (1215.0%)",
        "month charge soft: spent $0.01215 of $1,200.50 (0.0%)",
        "rate      ",
        " vs baseline ",
        "policy    red: ",
        "hard cap day $0.001 charge",
    ] {
        assert!(acme.contains(part), "{part:?} missing from:\n{acme}");
    }
    let acme = json(&ok(&run(&[
        "status", "--tenant", "acme", "--format", "json",
    ])));
    assert_eq!(acme["level"], "LEVEL_RED", "{acme}");
    assert_eq!(
        acme["reasons"][0]["code"], "REASON_CODE_ACTUAL_OVER_BUDGET",
        "{acme}"
    );
    assert_eq!(
        acme["monthSpend"]["providerCostNanosUsd"], "8100000",
        "{acme}"
    );
    let unknown = ok(&run(&["status", "--tenant", "initech"]));
    assert!(unknown.contains("not evaluated yet"), "{unknown}");

    // alerts: acme's transition, one line; acknowledged, it leaves the
    // unacknowledged list.
    let alerts = ok(&run(&["alerts"]));
    let rows: Vec<&str> = alerts.lines().skip(1).collect();
    assert_eq!(rows.len(), 1, "{alerts}");
    assert!(
        rows[0].contains(" acme ") && rows[0].contains("green -> red"),
        "{alerts}"
    );
    let listed = json(&ok(&run(&[
        "alerts",
        "--unacknowledged",
        "--tenant",
        "acme",
        "--format",
        "json",
    ])));
    let id = listed["alerts"][0]["alertId"].as_str().unwrap().to_owned();
    assert!(rows[0].contains(&id), "{alerts}");
    let acked = ok(&run(&[
        "alerts",
        "ack",
        &id,
        "--by",
        "sre@example.com",
        "--comment",
        "on it",
    ]));
    assert!(acked.starts_with("acknowledged 1 alert\n"), "{acked}");
    assert!(acked.contains("by sre@example.com"), "{acked}");
    assert!(ok(&run(&["alerts", "--unacknowledged"])).starts_with("no alerts"));
    let all = json(&ok(&run(&["alerts", "--format", "json"])));
    let alert = &all["alerts"][0];
    assert_eq!(alert["acknowledged"], true, "{all}");
    assert_eq!(alert["acknowledgedBy"], "sre@example.com", "{all}");
    assert_eq!(alert["acknowledgeComment"], "on it", "{all}");
    assert_eq!(alert["toLevel"], "LEVEL_RED", "{all}");
    let unknown = fails(&run(&["alerts", "ack", "not-an-id"]), 1);
    assert!(
        unknown.starts_with("Acknowledge failed: INVALID_ARGUMENT"),
        "{unknown}"
    );

    // The environment instead of flags: TENANTMETER_ALERTING_URL, and
    // TENANTMETER_ADMIN_TOKEN over a data directory without a token.
    let by_env = Command::new(env!("CARGO_BIN_EXE_tenantmeter"))
        .args(["budget", "set", "--tenant", "globex", "--period", "day"])
        .args(["--amount-usd", "7", "--data-dir"])
        .arg(empty.path())
        .env(
            "TENANTMETER_ALERTING_URL",
            format!("http://{}", up.alerting),
        )
        .env("TENANTMETER_ADMIN_TOKEN", token.trim())
        .env_remove("OTEL_EXPORTER_OTLP_ENDPOINT")
        .output()
        .unwrap();
    assert!(ok(&by_env).contains("$7.00"));

    // delete: once, then there is nothing to delete.
    let deleted = ok(&run(&[
        "budget", "delete", "--tenant", "acme", "--period", "day",
    ]));
    assert_eq!(deleted, "deleted the day budget of tenant acme\n");
    let again = ok(&run(&[
        "budget", "delete", "--tenant", "acme", "--period", "day",
    ]));
    assert_eq!(again, "tenant acme had no day budget: nothing deleted\n");
    let got = ok(&run(&["budget", "get", "--tenant", "acme"]));
    assert_eq!(got.lines().count(), 2, "{got}");

    up.stop();

    // Alerting gone: one line, exit 1.
    let gone = Command::new(env!("CARGO_BIN_EXE_tenantmeter"))
        .args(["budget", "list", "--alerting-url"])
        .arg(format!("http://127.0.0.1:{}", free_port()))
        .env_remove("TENANTMETER_ALERTING_URL")
        .output()
        .unwrap();
    let gone = fails(&gone, 1);
    assert!(gone.starts_with("cannot reach alerting: "), "{gone}");
}

#[test]
fn a_url_that_is_not_plaintext_http_is_a_config_error() {
    let output = Command::new(env!("CARGO_BIN_EXE_tenantmeter"))
        .arg("status")
        .env(
            "TENANTMETER_ALERTING_URL",
            "https://alerting.internal:50054",
        )
        .env_remove("OTEL_EXPORTER_OTLP_ENDPOINT")
        .output()
        .unwrap();
    let error = fails(&output, 64);
    assert!(error.contains("alerting_url"), "{error}");
}
