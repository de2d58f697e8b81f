//! What does the tenant hot path cost? Times `Registry::authenticate` for a
//! cached key (no Redis round trip) against a private redis-server.
//!
//! `cargo run --release -p tenantmeter-gateway --example registry_bench`

#![allow(clippy::unwrap_used, clippy::print_stdout)] // a benchmark's report

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tenantmeter_domain::ids::TenantId;
use tenantmeter_gateway::registry::{NewTenant, Registry};
use tenantmeter_runtime::clock::SystemClock;
use tenantmeter_testkit::RedisServer;

#[tokio::main]
async fn main() {
    let redis = RedisServer::start().await.unwrap();
    let registry = Registry::connect(
        &[redis.url()],
        false,
        Duration::from_secs(2),
        Arc::new(SystemClock),
    )
    .await
    .unwrap();
    let (_, issued) = registry
        .create_tenant(NewTenant {
            tenant_id: TenantId::parse("acme").unwrap(),
            display_name: "Acme".to_owned(),
            application_ids: vec!["chat".to_owned()],
            cost_center: "cc-42".to_owned(),
            profile_tags: BTreeMap::new(),
            plan_id: String::new(),
        })
        .await
        .unwrap();
    assert!(registry.authenticate(&issued.key).await.is_ok());
    const CALLS: u32 = 200_000;
    let started = Instant::now();
    for _ in 0..CALLS {
        assert!(registry.authenticate(&issued.key).await.is_ok());
    }
    let per_call = started.elapsed() / CALLS;
    println!("registry_bench: authenticate (cached key), {CALLS} calls: {per_call:?} per call");
}
