//! The shard state store against a real Redis (one server and a 3-master
//! cluster): baselines are written a bucket at a time and read back whole,
//! and a baseline stored in the older whole-value form is read and then
//! moved to the dense key at its next sample.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::time::Duration;

use redis::AsyncCommands as _;
use tenantmeter_alerting::state::{
    BaselineWrite, StateStore, TenantCommit, TenantRecord, encode_baseline, rank_member,
};
use tenantmeter_domain::ids::TenantId;
use tenantmeter_domain::levels::{Baseline, BaselinePolicy};
use tenantmeter_proto::v1 as pb;
use tenantmeter_runtime::redis_connection::RedisConnection;
use tenantmeter_testkit::{RedisCluster, RedisServer};

const TIMEOUT: Duration = Duration::from_secs(5);
const TOKEN: &str = "replica-a";
const SLOT_MS: i64 = 300_000;

fn tenant(id: &str) -> TenantId {
    TenantId::parse(id).unwrap()
}

/// A baseline that has learned `samples` samples, one per 5-minute slot.
fn learned(samples: i64) -> Baseline {
    let mut baseline = Baseline::new();
    for slot in 0..samples {
        baseline.observe(
            slot * SLOT_MS,
            1_000_000 + slot * 7_919,
            &BaselinePolicy::default(),
        );
    }
    baseline
}

fn commit(tenant: &TenantId, baseline: Option<BaselineWrite>) -> TenantCommit {
    TenantCommit {
        tenant: tenant.clone(),
        record: TenantRecord::default(),
        baseline,
        status: pb::TenantStatus {
            tenant_id: tenant.to_string(),
            level: pb::Level::Green.into(),
            ..pb::TenantStatus::default()
        },
        index_move: Some(tenantmeter_alerting::state::IndexMove {
            from: None,
            to: rank_member(pb::Level::Green.into(), tenant.as_str()),
        }),
        policy: None,
        alert: None,
    }
}

/// A tenant of shard 0 of 4.
fn tenant_of_shard_zero() -> TenantId {
    (0..)
        .map(|n| tenant(&format!("acme-{n}")))
        .find(|t| t.shard(4) == 0)
        .unwrap()
}

async fn a_sample_writes_one_bucket_and_reads_back_whole(store: &StateStore) {
    let acme = tenant_of_shard_zero();
    assert!(store.lease_shard(0, TOKEN, TIMEOUT * 4).await.unwrap());

    // A week and a half of samples: every hour-of-week bucket in use.
    let before = learned(3_000);
    let first = BaselineWrite::new(None, before.clone());
    assert!(first.rewrite);
    assert_eq!(first.buckets.len(), 168);
    store
        .commit_shard(0, TOKEN, &[commit(&acme, Some(first))])
        .await
        .unwrap();
    let loaded = store.load_shard(0).await.unwrap();
    assert_eq!(loaded.baselines.get(&acme), Some(&before));
    assert!(loaded.older_form.is_empty());

    // The next sample changes its hour's bucket and the sample count only.
    let mut after = before.clone();
    after.observe(3_000 * SLOT_MS, 5_000_000, &BaselinePolicy::default());
    let next = BaselineWrite::new(Some(&before), after.clone());
    assert!(!next.rewrite);
    assert_eq!(next.buckets.len(), 1, "{:?}", next.buckets);
    store
        .commit_shard(0, TOKEN, &[commit(&acme, Some(next))])
        .await
        .unwrap();
    assert_eq!(
        store.load_shard(0).await.unwrap().baselines.get(&acme),
        Some(&after)
    );
}

async fn an_older_form_baseline_moves_to_the_dense_key(
    store: &StateStore,
    mut raw: RedisConnection,
) {
    let acme = tenant_of_shard_zero();
    assert!(store.lease_shard(0, TOKEN, TIMEOUT * 4).await.unwrap());
    let older = learned(40);
    // What an earlier build stored: a state record and the whole baseline
    // in the shard's baseline hash.
    let _: () = raw
        .hset(
            "{al:s0}:state",
            acme.as_str(),
            serde_json::to_vec(&TenantRecord::default()).unwrap(),
        )
        .await
        .unwrap();
    let _: () = raw
        .hset("{al:s0}:baseline", acme.as_str(), encode_baseline(&older))
        .await
        .unwrap();

    let loaded = store.load_shard(0).await.unwrap();
    assert_eq!(loaded.baselines.get(&acme), Some(&older));
    assert!(loaded.older_form.contains(&acme));

    // Its next sample rewrites it whole, in the dense form, and drops the
    // older field.
    let mut after = older.clone();
    after.observe(40 * SLOT_MS, 2_000_000, &BaselinePolicy::default());
    let write = BaselineWrite::new(None, after.clone());
    store
        .commit_shard(0, TOKEN, &[commit(&acme, Some(write))])
        .await
        .unwrap();
    let reloaded = store.load_shard(0).await.unwrap();
    assert_eq!(reloaded.baselines.get(&acme), Some(&after));
    assert!(reloaded.older_form.is_empty());
    let left: Option<Vec<u8>> = raw.hget("{al:s0}:baseline", acme.as_str()).await.unwrap();
    assert_eq!(left, None);
}

#[tokio::test]
async fn baselines_on_one_server() {
    let redis = RedisServer::start().await.unwrap();
    let conn = RedisConnection::connect(&[redis.url()], false, TIMEOUT)
        .await
        .unwrap();
    let store = StateStore::new(conn, TIMEOUT);
    a_sample_writes_one_bucket_and_reads_back_whole(&store).await;

    let redis = RedisServer::start().await.unwrap();
    let conn = RedisConnection::connect(&[redis.url()], false, TIMEOUT)
        .await
        .unwrap();
    an_older_form_baseline_moves_to_the_dense_key(&StateStore::new(conn.clone(), TIMEOUT), conn)
        .await;
}

#[tokio::test]
async fn baselines_on_a_cluster() {
    let cluster = RedisCluster::start().await.unwrap();
    let conn = RedisConnection::connect(&cluster.urls(), true, TIMEOUT)
        .await
        .unwrap();
    let store = StateStore::new(conn.clone(), TIMEOUT);
    a_sample_writes_one_bucket_and_reads_back_whole(&store).await;
    // Same keys again on the same cluster: start from an empty shard.
    let mut raw = conn.clone();
    for key in ["{al:s0}:state", "{al:s0}:baseline"] {
        let _: () = raw.del(key).await.unwrap();
    }
    let acme = tenant_of_shard_zero();
    let _: () = raw.del(format!("{{al:s0}}:bl:{acme}")).await.unwrap();
    an_older_form_baseline_moves_to_the_dense_key(&store, raw).await;
}
