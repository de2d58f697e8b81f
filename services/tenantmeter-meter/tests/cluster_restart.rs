//! The meter through gRPC when a Redis Cluster master restarts mid-run
//! (issue 3, "Redis restart mid-run", item 9: on a single server *and* on a
//! cluster; the single-server test is in `redis_outage.rs`).
//!
//! Three masters with AOF on (`appendfsync everysec`); thirty tenants, so the
//! meter's keys land on every master. Each master in turn is restarted
//! gracefully (same port, data directory and `nodes.conf`); after each, the
//! meter must reconnect and refresh its slot map on its own, keep every
//! dedupe mark, accept new events, and report exactly what it accepted.
//! Waits are polls with deadlines, never fixed sleeps.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // test support: a failed unwrap is a failed test
#![allow(clippy::print_stderr)] // timings are printed for `--nocapture` runs

mod support;

use std::collections::BTreeMap;
use std::time::Duration;

use support::{
    Backend, MICRO, SONNET, Stack, Totals, event, expected_totals, now_ms, record, timed, totals,
};
use tenantmeter_proto::v1 as pb;
use tenantmeter_proto::v1::meter_service_client::MeterServiceClient;
use tenantmeter_testkit::poll_until_ok;
use tokio::time::Instant;
use tonic::transport::Channel;

type Meter = MeterServiceClient<Channel>;

/// Enough tenants that their keys spread over all three masters (checked).
const TENANT_COUNT: usize = 30;

/// Events per tenant in each batch.
const PER_TENANT: i64 = 3;

/// How long the meter gets to answer again once the cluster is healthy:
/// generous, for slot refreshes and reconnects on a loaded two-core machine.
const RECONNECT: Duration = Duration::from_secs(60);

fn tenants() -> Vec<String> {
    (0..TENANT_COUNT)
        .map(|i| format!("tenant-{i:02}"))
        .collect()
}

/// [`PER_TENANT`] events per tenant, `prefix`-named, at `at_ms` give or take
/// a second, alternating models, each with different token counts.
fn batch(prefix: &str, at_ms: i64) -> Vec<pb::UsageEvent> {
    tenants()
        .iter()
        .flat_map(|tenant| {
            (0..PER_TENANT).map(move |i| {
                let model = if i % 2 == 0 { SONNET } else { MICRO };
                event(
                    &format!("{prefix}-{tenant}-{i}"),
                    tenant,
                    model,
                    at_ms - i * 37,
                    1_000 + i * 7,
                    100 + i * 3,
                )
            })
        })
        .collect()
}

/// Every tenant's figures, from a meter that must answer.
async fn all_totals(meter: &mut Meter) -> BTreeMap<String, Totals> {
    let mut all = BTreeMap::new();
    for tenant in tenants() {
        let (figures, _) = timed("GetUsage", totals(meter, &tenant)).await;
        all.insert(tenant, figures.unwrap());
    }
    all
}

/// Polls GetUsage of every tenant (so every master is asked) until the meter
/// answers for all of them, and returns the figures.
async fn until_answering(meter: &Meter) -> BTreeMap<String, Totals> {
    poll_until_ok(RECONNECT, || {
        let mut meter = meter.clone();
        async move {
            let mut all = BTreeMap::new();
            for tenant in tenants() {
                let figures = totals(&mut meter, &tenant)
                    .await
                    .map_err(|e| format!("{tenant}: {e}"))?;
                all.insert(tenant, figures);
            }
            Ok::<_, String>(all)
        }
    })
    .await
    .unwrap()
}

/// What `batches` add up to for each tenant: requests and tokens summed here,
/// the provider cost as pricing quotes those totals (the meter must match it
/// exactly, whatever the order and batching of the events).
async fn expected(stack: &Stack, batches: &[Vec<pb::UsageEvent>]) -> BTreeMap<String, Totals> {
    let mut pricing = stack.pricing().await;
    let mut all = BTreeMap::new();
    for tenant in tenants() {
        let totals = expected_totals(&mut pricing, &tenant, batches.iter().flatten()).await;
        all.insert(tenant, totals);
    }
    all
}

/// How many keys each master holds, asked of each node directly.
async fn keys_per_node(stack: &mut Stack) -> Vec<(u16, i64)> {
    let mut counts = Vec::new();
    for node in stack.meter_cluster().nodes() {
        let mut conn = node
            .client()
            .unwrap()
            .get_multiplexed_async_connection()
            .await
            .unwrap();
        let keys: i64 = redis::cmd("DBSIZE").query_async(&mut conn).await.unwrap();
        counts.push((node.port(), keys));
    }
    counts
}

#[tokio::test]
async fn restarting_each_master_in_turn_keeps_exact_figures() {
    let mut stack = Stack::start(Backend::cluster_with_aof().await).await;
    let mut meter = stack.meter().await;
    let first = batch("first", now_ms() - 5_000);
    let size = i32::try_from(first.len()).unwrap();
    let reply = record(&mut meter, &first).await;
    assert_eq!((reply.accepted, reply.duplicates), (size, 0), "{reply:?}");
    let mut accepted = vec![first.clone()];
    assert_eq!(
        all_totals(&mut meter).await,
        expected(&stack, &accepted).await
    );
    // Every master must hold some of the meter's keys, or restarting it
    // would prove nothing.
    let spread = keys_per_node(&mut stack).await;
    assert!(
        spread.iter().all(|&(_, keys)| keys > 0),
        "the tenants' keys do not reach every master: {spread:?}"
    );

    for index in 0..3 {
        // A graceful restart (SHUTDOWN flushes the AOF): the node's data
        // survives, and the meter's connection to it drops under it.
        let restart = Instant::now();
        stack.meter_cluster().restart_node(index).await.unwrap();
        let healthy = restart.elapsed();
        let after = until_answering(&meter).await;
        eprintln!(
            "master {index} restarted, cluster healthy after {healthy:?}; the meter answered again {:?} after the restart began",
            restart.elapsed()
        );
        assert_eq!(
            after,
            expected(&stack, &accepted).await,
            "restarting master {index} lost or changed figures"
        );

        let replay = record(&mut meter, &first).await;
        assert_eq!(
            (replay.accepted, replay.duplicates),
            (0, size),
            "the first batch's dedupe marks must survive restarting master {index}: {replay:?}"
        );

        let fresh = batch(&format!("after-restart-{index}"), now_ms());
        let reply = record(&mut meter, &fresh).await;
        assert_eq!(
            (reply.accepted, reply.duplicates),
            (size, 0),
            "after restarting master {index}: {reply:?}"
        );
        assert!(
            reply
                .results
                .iter()
                .all(|r| r.status == i32::from(pb::UsageEventStatus::Accepted)),
            "{reply:?}"
        );
        accepted.push(fresh);
        assert_eq!(
            all_totals(&mut meter).await,
            expected(&stack, &accepted).await,
            "figures after restarting master {index} and recording a new batch"
        );
    }
    stack.stop().await;
}
