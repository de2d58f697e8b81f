//! The tenant registry against real Redis: keys stored as hashes only, the
//! cached hot path, key rotation on a manual clock, disabling, change
//! propagation between replicas, Redis outages, and Redis Cluster.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // a failed unwrap is a failed test

mod admin_support;

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::{Duration, Instant};

use admin_support::{REDIS_TIMEOUT, START_MS, clock, raw, registry};
use redis::AsyncCommands as _;
use sha2::{Digest as _, Sha256};
use tenantmeter_domain::ids::TenantId;
use tenantmeter_gateway::registry::model::{TenantRecord, TenantState};
use tenantmeter_gateway::registry::{
    AuthError, NewTenant, Registry, RegistryError, RegistryOptions,
};
use tenantmeter_runtime::clock::ManualClock;
use tenantmeter_testkit::{RedisCluster, RedisServer, wait_until};

/// Follower period of the propagation tests; the documented bound is this
/// plus one Redis round trip.
const REFRESH: Duration = Duration::from_millis(200);
/// Scheduling slack on a loaded two-core machine, on top of the bound (and of
/// wait_until's own polling, at most 200 ms).
const SLACK: Duration = Duration::from_millis(1_500);

fn id(text: &str) -> TenantId {
    TenantId::parse(text).unwrap()
}

fn spec(tenant: &str) -> NewTenant {
    NewTenant {
        tenant_id: id(tenant),
        display_name: format!("{tenant} Inc"),
        application_ids: vec!["chat".to_owned(), "batch".to_owned()],
        cost_center: "cc-42".to_owned(),
        profile_tags: BTreeMap::from([("team".to_owned(), "ml".to_owned())]),
        plan_id: String::new(),
    }
}

async fn create(registry: &Registry, tenant: &str) -> (Arc<TenantRecord>, String) {
    let (record, issued) = registry.create_tenant(spec(tenant)).await.unwrap();
    (record, issued.key)
}

fn sha256_hex(text: &str) -> String {
    Sha256::digest(text.as_bytes())
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// Every string stored anywhere in the server, read raw.
async fn everything_stored(redis: &RedisServer) -> Vec<String> {
    let mut conn = raw(redis).await;
    let keys: Vec<String> = redis::cmd("KEYS")
        .arg("*")
        .query_async(&mut conn)
        .await
        .unwrap();
    let mut all = keys.clone();
    for key in keys {
        let kind: String = redis::cmd("TYPE")
            .arg(&key)
            .query_async(&mut conn)
            .await
            .unwrap();
        match kind.as_str() {
            "string" => all.push(conn.get(&key).await.unwrap()),
            "hash" => {
                let fields: HashMap<String, String> = conn.hgetall(&key).await.unwrap();
                all.extend(fields.into_iter().flat_map(|(k, v)| [k, v]));
            }
            "zset" => {
                let members: Vec<String> = conn.zrange(&key, 0, -1).await.unwrap();
                all.extend(members);
            }
            "stream" => {
                let entries: Vec<(String, HashMap<String, String>)> = redis::cmd("XRANGE")
                    .arg(&key)
                    .arg("-")
                    .arg("+")
                    .query_async(&mut conn)
                    .await
                    .unwrap();
                all.extend(entries.into_iter().flat_map(|(_, f)| f.into_values()));
            }
            other => panic!("unexpected type {other} of {key}"),
        }
    }
    all
}

#[tokio::test]
async fn the_key_is_returned_once_and_only_its_hash_is_stored() {
    let redis = RedisServer::start().await.unwrap();
    let clock = clock();
    let registry = registry(&redis, &clock, REFRESH).await;
    let (record, key) = create(&registry, "acme").await;

    // Shape: tmk_<16 hex key id>_<48 hex secret>; the key id is its public prefix.
    let (key_id, secret) = key.strip_prefix("tmk_").unwrap().split_once('_').unwrap();
    assert_eq!((key_id.len(), secret.len()), (16, 48));
    assert_eq!(record.keys.len(), 1);
    assert_eq!(record.keys[0].key_id, key_id);
    assert_eq!(record.keys[0].sha256_hex, sha256_hex(&key));
    assert_eq!(record.keys[0].created_at_ms, START_MS);
    assert_eq!(record.keys[0].expires_at_ms, None);
    assert_eq!(record.revision, 1);

    // Raw Redis: the record, the key index, the id index; the hash, never the key.
    let mut conn = raw(&redis).await;
    let json: String = conn.hget("{gw}:tenant:acme", "record").await.unwrap();
    let stored: TenantRecord = serde_json::from_str(&json).unwrap();
    assert_eq!(stored, *record);
    let rev: String = conn.hget("{gw}:tenant:acme", "rev").await.unwrap();
    assert_eq!(rev, "1");
    let owner: String = conn.hget("{gw}:keys", key_id).await.unwrap();
    assert_eq!(owner, "acme");
    let all: Vec<String> = conn.zrange("{gw}:tenants", 0, -1).await.unwrap();
    let active: Vec<String> = conn.zrange("{gw}:tenants:active", 0, -1).await.unwrap();
    assert_eq!(
        (all, active),
        (vec!["acme".to_owned()], vec!["acme".to_owned()])
    );
    let stored = everything_stored(&redis).await;
    assert!(stored.iter().any(|s| s.contains(&sha256_hex(&key))));
    for value in &stored {
        assert!(!value.contains(secret), "the secret is stored: {value}");
    }

    // A second replica knows the key from Redis alone.
    let other = registry_clone_on(&redis, &clock).await;
    assert_eq!(other.authenticate(&key).await.unwrap().tenant_id, "acme");

    // Taken id.
    let taken = registry.create_tenant(spec("acme")).await.unwrap_err();
    assert!(
        matches!(taken, RegistryError::AlreadyExists(ref t) if t == "acme"),
        "{taken:?}"
    );
}

async fn registry_clone_on(redis: &RedisServer, clock: &ManualClock) -> Registry {
    registry(redis, clock, REFRESH).await
}

#[tokio::test]
async fn invalid_keys_are_refused() {
    let redis = RedisServer::start().await.unwrap();
    let clock = clock();
    let registry = registry(&redis, &clock, REFRESH).await;
    let (record, key) = create(&registry, "acme").await;
    let wrong_secret = format!(
        "{}{}",
        &key[..key.len() - 1],
        if key.ends_with('0') { '1' } else { '0' }
    );
    let unknown_id = format!("tmk_{}_{}", "0".repeat(16), &key[21..]);
    for bad in [
        String::new(),
        "Bearer".to_owned(),
        key[..key.len() - 1].to_owned(),
        key.to_uppercase(),
        wrong_secret,
        unknown_id.clone(),
    ] {
        assert_eq!(
            registry.authenticate(&bad).await.unwrap_err(),
            AuthError::InvalidKey,
            "{bad}"
        );
    }
    // Asked twice: the unknown id is remembered, still refused.
    assert_eq!(
        registry.authenticate(&unknown_id).await.unwrap_err(),
        AuthError::InvalidKey
    );
    assert_eq!(registry.authenticate(&key).await.unwrap(), record);
}

#[tokio::test]
async fn rotation_keeps_the_old_key_for_the_overlap_then_stops_it() {
    let redis = RedisServer::start().await.unwrap();
    let clock = clock();
    let registry = registry(&redis, &clock, REFRESH).await;
    let (_, old) = create(&registry, "acme").await;
    clock.advance(Duration::from_secs(60));

    let (record, new) = registry
        .rotate_key(&id("acme"), Duration::from_secs(3600))
        .await
        .unwrap();
    assert_ne!(new, old);
    assert_eq!(record.revision, 2);
    assert_eq!(record.keys.len(), 2);
    // Current first, no expiry; the previous one ends at now + overlap.
    assert_eq!(record.keys[0].sha256_hex, sha256_hex(&new));
    assert_eq!(record.keys[0].expires_at_ms, None);
    assert_eq!(record.keys[0].created_at_ms, START_MS + 60_000);
    assert_eq!(record.keys[1].sha256_hex, sha256_hex(&old));
    assert_eq!(
        record.keys[1].expires_at_ms,
        Some(START_MS + 60_000 + 3_600_000)
    );

    // During the overlap both work, on this replica and on a fresh one.
    let fresh = registry_clone_on(&redis, &clock).await;
    for replica in [&registry, &fresh] {
        assert_eq!(replica.authenticate(&new).await.unwrap().tenant_id, "acme");
        assert_eq!(replica.authenticate(&old).await.unwrap().tenant_id, "acme");
    }
    clock.advance(Duration::from_millis(3_600_000 - 1));
    assert!(registry.authenticate(&old).await.is_ok());
    // At the end of the overlap, to the millisecond, the old key stops.
    clock.advance(Duration::from_millis(1));
    for replica in [&registry, &fresh] {
        assert_eq!(
            replica.authenticate(&old).await.unwrap_err(),
            AuthError::InvalidKey
        );
        assert!(replica.authenticate(&new).await.is_ok());
    }

    // The next rotation drops the expired key from the record and the index.
    let (record, newest) = registry
        .rotate_key(&id("acme"), Duration::from_secs(60))
        .await
        .unwrap();
    assert_eq!(record.keys.len(), 2);
    assert_eq!(record.keys[0].sha256_hex, sha256_hex(&newest));
    assert_eq!(record.keys[1].sha256_hex, sha256_hex(&new));
    let old_id = &old[4..20];
    let mut conn = raw(&redis).await;
    let owner: Option<String> = conn.hget("{gw}:keys", old_id).await.unwrap();
    assert_eq!(owner, None);
    let index: HashMap<String, String> = conn.hgetall("{gw}:keys").await.unwrap();
    assert_eq!(index.len(), 2);
}

#[tokio::test]
async fn overlap_zero_stops_previous_keys_at_once() {
    let redis = RedisServer::start().await.unwrap();
    let clock = clock();
    let registry = registry(&redis, &clock, REFRESH).await;
    let (_, old) = create(&registry, "acme").await;
    assert!(registry.authenticate(&old).await.is_ok());
    let (record, new) = registry
        .rotate_key(&id("acme"), Duration::ZERO)
        .await
        .unwrap();
    assert_eq!(record.keys[1].expires_at_ms, Some(START_MS));
    assert_eq!(
        registry.authenticate(&old).await.unwrap_err(),
        AuthError::InvalidKey
    );
    assert_eq!(registry.authenticate(&new).await.unwrap().tenant_id, "acme");
}

#[tokio::test]
async fn a_disabled_tenant_is_refused_with_its_reason_and_enabled_again() {
    let redis = RedisServer::start().await.unwrap();
    let clock = clock();
    let registry = registry(&redis, &clock, REFRESH).await;
    let (_, key) = create(&registry, "acme").await;
    let (_, other_key) = create(&registry, "globex").await;

    let record = registry
        .disable(&id("acme"), "unpaid invoice")
        .await
        .unwrap();
    assert_eq!((record.state, record.revision), (TenantState::Disabled, 2));
    assert_eq!(
        registry.authenticate(&key).await.unwrap_err(),
        AuthError::Disabled {
            tenant_id: "acme".to_owned(),
            reason: "unpaid invoice".to_owned()
        }
    );
    // The key is checked first: a wrong secret learns nothing about the tenant.
    let wrong = format!("{}0", &key[..key.len() - 1]);
    let wrong = if wrong == key {
        format!("{}1", &key[..key.len() - 1])
    } else {
        wrong
    };
    assert_eq!(
        registry.authenticate(&wrong).await.unwrap_err(),
        AuthError::InvalidKey
    );
    assert!(registry.authenticate(&other_key).await.is_ok());

    // Disabled tenants leave the active index, not the full one.
    let mut conn = raw(&redis).await;
    let active: Vec<String> = conn.zrange("{gw}:tenants:active", 0, -1).await.unwrap();
    assert_eq!(active, ["globex"]);
    let page = registry.list(None, 10, false).await.unwrap();
    assert_eq!(
        page.tenants
            .iter()
            .map(|t| t.tenant_id.as_str())
            .collect::<Vec<_>>(),
        ["globex"]
    );
    let page = registry.list(None, 10, true).await.unwrap();
    assert_eq!(page.tenants.len(), 2);

    let record = registry.enable(&id("acme")).await.unwrap();
    assert_eq!(
        (record.state, record.disabled_reason.as_str()),
        (TenantState::Active, "")
    );
    assert_eq!(registry.authenticate(&key).await.unwrap().revision, 3);
    // Enabling an active tenant writes nothing.
    assert_eq!(registry.enable(&id("acme")).await.unwrap().revision, 3);
    assert!(matches!(
        registry.disable(&id("nobody"), "x").await.unwrap_err(),
        RegistryError::NotFound(ref t) if t == "nobody"
    ));
}

#[tokio::test]
async fn the_hot_path_does_not_touch_redis() {
    let redis = RedisServer::start().await.unwrap();
    let clock = clock();
    // No follower poll during the test.
    let registry = registry(&redis, &clock, Duration::from_secs(3600)).await;
    let (_, key) = create(&registry, "acme").await;
    let fresh = registry_clone_on_hourly(&redis, &clock).await;
    // First use on a fresh replica: a miss, read from Redis.
    assert!(fresh.authenticate(&key).await.is_ok());

    let mut conn = raw(&redis).await;
    let processed = |info: String| -> u64 {
        info.lines()
            .find_map(|l| l.strip_prefix("total_commands_processed:"))
            .unwrap()
            .trim()
            .parse()
            .unwrap()
    };
    let before = processed(
        redis::cmd("INFO")
            .arg("stats")
            .query_async(&mut conn)
            .await
            .unwrap(),
    );
    let started = Instant::now();
    for _ in 0..10_000 {
        assert!(registry.authenticate(&key).await.is_ok());
        assert!(fresh.authenticate(&key).await.is_ok());
    }
    let elapsed = started.elapsed();
    let after = processed(
        redis::cmd("INFO")
            .arg("stats")
            .query_async(&mut conn)
            .await
            .unwrap(),
    );
    // Only the first INFO itself was counted in between.
    assert_eq!(after - before, 1, "authenticate reached Redis");
    // 20,000 calls (debug build, SHA-256 included) well inside a second each
    // 100 us: a generous bound that still rules out a network round trip.
    assert!(elapsed < Duration::from_secs(2), "{elapsed:?}");
}

async fn registry_clone_on_hourly(redis: &RedisServer, clock: &ManualClock) -> Registry {
    registry(redis, clock, Duration::from_secs(3600)).await
}

/// Waits until `check` holds on `replica`. The deadline is generous: the
/// test shows the change arrives without anyone touching the replica; how
/// fast (about one refresh interval) is a figure for docs, not an assertion
/// on a shared machine's timing.
async fn propagated<F>(replica: &Registry, key: &str, check: F)
where
    F: Fn(&Result<Arc<TenantRecord>, AuthError>) -> bool,
{
    wait_until(REFRESH + SLACK + Duration::from_secs(5), || {
        let replica = replica.clone();
        let key = key.to_owned();
        let check = &check;
        async move { check(&replica.authenticate(&key).await) }
    })
    .await
    .unwrap();
}

#[tokio::test]
async fn changes_reach_another_replica_without_a_restart() {
    let redis = RedisServer::start().await.unwrap();
    let clock = clock();
    let admin = registry(&redis, &clock, REFRESH).await;
    let replica = registry(&redis, &clock, REFRESH).await;
    let (_, key) = create(&admin, "acme").await;
    // Cached on the replica.
    assert!(replica.authenticate(&key).await.is_ok());

    admin.disable(&id("acme"), "leaked").await.unwrap();
    propagated(&replica, &key, |r| {
        matches!(r, Err(AuthError::Disabled { .. }))
    })
    .await;

    admin.enable(&id("acme")).await.unwrap();
    propagated(&replica, &key, Result::is_ok).await;

    let (_, new) = admin.rotate_key(&id("acme"), Duration::ZERO).await.unwrap();
    propagated(&replica, &key, |r| *r == Err(AuthError::InvalidKey)).await;
    assert!(replica.authenticate(&new).await.is_ok());
    // The replica re-read the tenant: it serves it from its cache again.
    assert_eq!(
        replica.tenant(&id("acme")).await.unwrap().unwrap().revision,
        4
    );
}

#[tokio::test]
async fn concurrent_changes_to_one_tenant_all_land() {
    let redis = RedisServer::start().await.unwrap();
    let clock = clock();
    let a = registry(&redis, &clock, REFRESH).await;
    let b = registry(&redis, &clock, REFRESH).await;
    create(&a, "acme").await;
    let rotations = (0..8).map(|n| {
        let replica = if n % 2 == 0 { a.clone() } else { b.clone() };
        tokio::spawn(async move {
            replica
                .rotate_key(&id("acme"), Duration::from_secs(3600))
                .await
                .unwrap()
                .1
        })
    });
    let keys: Vec<String> = futures::future::join_all(rotations)
        .await
        .into_iter()
        .map(Result::unwrap)
        .collect();
    let record = a.fetch_tenant(&id("acme")).await.unwrap().unwrap();
    // Every rotation was one compare-and-set; none was lost.
    assert_eq!(record.revision, 9);
    assert_eq!(record.keys.len(), 9);
    for key in &keys {
        assert!(record.keys.iter().any(|k| k.sha256_hex == sha256_hex(key)));
        assert!(b.authenticate(key).await.is_ok());
    }
    let mut conn = raw(&redis).await;
    let index: HashMap<String, String> = conn.hgetall("{gw}:keys").await.unwrap();
    assert_eq!(index.len(), 9);
    let seq: u64 = conn.get("{gw}:seq").await.unwrap();
    assert_eq!(seq, 9);
}

#[tokio::test]
async fn cached_tenants_are_served_through_a_redis_outage() {
    let mut redis = RedisServer::start().await.unwrap();
    let clock = clock();
    let registry = registry(&redis, &clock, REFRESH).await;
    let (_, key) = create(&registry, "acme").await;
    let (_, uncached) = {
        let other = registry_clone_on(&redis, &clock).await;
        create(&other, "globex").await
    };
    assert!(registry.authenticate(&key).await.is_ok());

    redis.kill().await.unwrap();
    // Cached: served, and quickly (no Redis deadline waited out).
    let started = Instant::now();
    assert_eq!(registry.authenticate(&key).await.unwrap().tenant_id, "acme");
    assert!(started.elapsed() < REDIS_TIMEOUT);
    // Expiry still follows the clock without Redis.
    // Not cached: UNAVAILABLE, not a false "invalid key".
    assert!(matches!(
        registry.authenticate(&uncached).await.unwrap_err(),
        AuthError::Unavailable(_)
    ));
    let down = registry.fetch_tenant(&id("acme")).await.unwrap_err();
    assert!(matches!(down, RegistryError::Redis(_)), "{down:?}");
    assert_eq!(tonic::Status::from(down).code(), tonic::Code::Unavailable);

    redis.start_again().await.unwrap();
    // Back (the server came back empty: no persistence in this fixture), and
    // the follower notices that Redis lost the registry: the cache is dropped.
    propagated(&registry, &key, |r| *r == Err(AuthError::InvalidKey)).await;
}

#[tokio::test]
async fn a_flushed_redis_drops_the_cache_of_every_replica() {
    let redis = RedisServer::start().await.unwrap();
    let clock = clock();
    let admin = registry(&redis, &clock, REFRESH).await;
    let replica = registry(&redis, &clock, REFRESH).await;
    let (_, key) = create(&admin, "acme").await;
    assert!(replica.authenticate(&key).await.is_ok());
    let mut conn = raw(&redis).await;
    let () = redis::cmd("FLUSHALL").query_async(&mut conn).await.unwrap();
    propagated(&replica, &key, |r| *r == Err(AuthError::InvalidKey)).await;
}

#[tokio::test]
async fn tenants_page_by_id() {
    let redis = RedisServer::start().await.unwrap();
    let clock = clock();
    let registry = registry(&redis, &clock, REFRESH).await;
    for tenant in ["delta", "alpha", "echo", "charlie", "bravo"] {
        create(&registry, tenant).await;
    }
    registry.disable(&id("charlie"), "x").await.unwrap();
    let mut seen = Vec::new();
    let mut after: Option<TenantId> = None;
    loop {
        let page = registry.list(after.as_ref(), 2, true).await.unwrap();
        assert!(page.tenants.len() <= 2);
        seen.extend(page.tenants.iter().map(|t| t.tenant_id.clone()));
        match page.next_after {
            Some(last) => after = Some(id(&last)),
            None => break,
        }
    }
    assert_eq!(seen, ["alpha", "bravo", "charlie", "delta", "echo"]);
    let active = registry.list(Some(&id("bravo")), 10, false).await.unwrap();
    let ids: Vec<&str> = active
        .tenants
        .iter()
        .map(|t| t.tenant_id.as_str())
        .collect();
    assert_eq!((ids, active.next_after), (vec!["delta", "echo"], None));
}

#[tokio::test]
async fn the_registry_runs_on_redis_cluster() {
    let cluster = RedisCluster::start().await.unwrap();
    let clock = clock();
    let urls = cluster.urls();
    let connect = || {
        Registry::connect_with(
            &urls,
            true,
            Duration::from_secs(2),
            Arc::new(clock.clone()),
            RegistryOptions {
                refresh_interval: REFRESH,
                ..RegistryOptions::default()
            },
        )
    };
    let admin = connect().await.unwrap();
    let replica = connect().await.unwrap();
    let (_, key) = create(&admin, "acme").await;
    create(&admin, "globex").await;
    assert_eq!(replica.authenticate(&key).await.unwrap().tenant_id, "acme");
    let (_, new) = admin.rotate_key(&id("acme"), Duration::ZERO).await.unwrap();
    propagated(&replica, &key, |r| *r == Err(AuthError::InvalidKey)).await;
    assert!(replica.authenticate(&new).await.is_ok());
    admin.disable(&id("globex"), "x").await.unwrap();
    let page = replica.list(None, 10, false).await.unwrap();
    let ids: Vec<&str> = page.tenants.iter().map(|t| t.tenant_id.as_str()).collect();
    assert_eq!(ids, ["acme"]);
    assert_eq!(replica.list(None, 10, true).await.unwrap().tenants.len(), 2);
}
