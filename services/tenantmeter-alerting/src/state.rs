//! What alerting remembers per subject, and where: the evaluation shards'
//! Redis keyspace, the shard leases, and the fleet's keys.
//!
//! Tenants are split into `shards` by [`TenantId::shard`] (the meter's own
//! split for `ListTenantUsage`). Every key of shard `i` carries the hash tag
//! `{al:s<i>}`, so one shard is one slot and a pass commits a page of its
//! tenants — states, baselines, statuses, the level index, the policies sent
//! and the alerts raised — in ONE Lua script that first checks the lease:
//! a replica that lost its lease cannot write (fencing), and a transition is
//! stored together with its alert, so a restart neither forgets a level nor
//! raises its alert twice.
//!
//! | key | type | content |
//! |---|---|---|
//! | `{al:s<i>}:lease` | string | token of the replica evaluating shard i (PX = lease_ttl) |
//! | `{al:s<i>}:state` | hash | tenant -> [`TenantRecord`] JSON |
//! | `{al:s<i>}:bl:<tenant>` | string | the tenant's baseline, dense ([`dense_header`], [`dense_bucket`]); a learned sample rewrites its header and one bucket (`SETRANGE`), not the whole value |
//! | `{al:s<i>}:baseline` | hash | tenant -> baseline in the older whole-value form ([`encode_baseline`]); read at load, moved to the dense key at the tenant's next sample |
//! | `{al:s<i>}:status` | hash | tenant -> `TenantStatus` (protobuf) |
//! | `{al:s<i>}:policy` | hash | tenant -> `TenantPolicy` last applied (protobuf) |
//! | `{al:s<i>}:levels` | sorted set | `<rank><tenant>`, score 0: ListStatuses order |
//! | `{al:s<i>}:outbox` | hash | alert id -> `Alert` (protobuf), until handed to the history |
//! | `{al}:fleet` | hash | `state`, `baseline`, `status`, `caps` (see [`FleetRecord`]) |
//! | `{al}:fleet:lease` | string | token of the replica evaluating the fleet |
//! | `{al}:summary` | hash | shard -> [`ShardSummary`] JSON of its last pass |
//!
//! `<rank>` is `9 - level` (`5` red, `6` orange, `7` yellow, `8` green, `9` unknown), so ZRANGEBYLEX
//! gives the highest level first, then tenant id.

use std::collections::{HashMap, HashSet};
use std::future::Future;
use std::time::Duration;

use prost::Message as _;
use serde::{Deserialize, Serialize};
use tenantmeter_domain::ids::TenantId;
use tenantmeter_domain::levels::baseline::HOURS_PER_WEEK;
use tenantmeter_domain::levels::{Baseline, BucketStats, LevelState};
use tenantmeter_proto::v1 as pb;
use tenantmeter_runtime::redis_connection::RedisConnection;

use crate::throttle::{Contribution, ThrottleState};

/// Failures of the state store.
#[derive(Debug, thiserror::Error)]
pub enum StateError {
    /// Redis answered with an error or dropped the connection.
    #[error("redis: {0}")]
    Redis(#[from] redis::RedisError),
    /// Redis did not answer in time.
    #[error("redis did not answer within {0:?}")]
    Timeout(Duration),
    /// The shard's lease is held by another replica: nothing was written.
    #[error("shard {0} is evaluated by another replica")]
    LeaseLost(u32),
    /// The fleet's lease is held by another replica: nothing was written.
    #[error("the fleet is evaluated by another replica")]
    FleetLeaseLost,
    /// Stored data this code did not write.
    #[error("stored alerting state is corrupt: {0}")]
    Corrupt(String),
}

/// What the engine keeps per tenant between evaluations.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct TenantRecord {
    /// The level state machine.
    pub level: LevelState,
    /// The throttle's memory.
    pub throttle: ThrottleState,
    /// 5-minute slot (`as_of / 5 min`) of the last baseline sample, so the
    /// baseline learns one sample per slot however often passes run.
    pub sample_slot: Option<i64>,
}

/// One tenant's outcome of a pass, as committed.
#[derive(Debug, Clone)]
pub struct TenantCommit {
    /// Tenant id.
    pub tenant: TenantId,
    /// Its record.
    pub record: TenantRecord,
    /// Its baseline, when it learned a sample in this pass.
    pub baseline: Option<BaselineWrite>,
    /// Its status.
    pub status: pb::TenantStatus,
    /// How its entry in the level index moves; `None` when the index
    /// already holds it at this level (most tenants, most passes).
    pub index_move: Option<IndexMove>,
    /// The policy applied to the meter in this pass.
    pub policy: Option<pb::TenantPolicy>,
    /// The alert raised in this pass.
    pub alert: Option<pb::Alert>,
}

/// A learned baseline and the part of it to write.
#[derive(Debug, Clone, PartialEq)]
pub struct BaselineWrite {
    /// The baseline after the sample.
    pub baseline: Baseline,
    /// Hour-of-week buckets to write: those that changed, or every
    /// non-empty one when `rewrite`.
    pub buckets: Vec<usize>,
    /// Write the whole value (the stored one is missing, or in the older
    /// form).
    pub rewrite: bool,
}

impl BaselineWrite {
    /// What to write after `before` became `after`; `before` is `None` when
    /// nothing (or only the older form) is stored.
    #[must_use]
    pub fn new(before: Option<&Baseline>, after: Baseline) -> Self {
        let buckets = match before {
            Some(before) => after
                .buckets()
                .iter()
                .zip(before.buckets())
                .enumerate()
                .filter(|(_, (now, then))| now != then)
                .map(|(index, _)| index)
                .collect(),
            None => after
                .buckets()
                .iter()
                .enumerate()
                .filter(|(_, bucket)| bucket.count > 0)
                .map(|(index, _)| index)
                .collect(),
        };
        Self {
            rewrite: before.is_none(),
            buckets,
            baseline: after,
        }
    }
}

/// A tenant's entry in the level index, replaced.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IndexMove {
    /// The member to remove ([`rank_member`] of the old level), if indexed.
    pub from: Option<String>,
    /// The member to add.
    pub to: String,
}

/// A shard's figures for the fleet pass.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct ShardSummary {
    /// Instant of the pass, Unix ms.
    pub as_of_ms: i64,
    /// Active tenants evaluated.
    pub active: u64,
    /// Of which above their own baselines.
    pub above_baseline: u64,
    /// Tenants per level: green, yellow, orange, red.
    pub by_level: [u64; 4],
    /// Largest spend rates, largest first (at most 20).
    pub top: Vec<ContributorSummary>,
    /// Sum of the 5-minute windows' provider cost, nano-USD.
    pub cost_5m_nanos: i64,
    /// Sum of the 5-minute windows' tokens.
    pub tokens_5m: i64,
    /// Sum of the month's provider cost, nano-USD.
    pub month_cost_nanos: i64,
    /// Sum of the month's tenant charge, nano-USD.
    pub month_charge_nanos: i64,
    /// Sum of the day's provider cost, nano-USD.
    pub day_cost_nanos: i64,
    /// Sum of the tenants' baseline means, nano-USD per hour: the fleet's
    /// baseline until it has history of its own.
    pub baseline_sum_nanos_per_hour: i64,
}

/// One of a shard's largest contributors.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct ContributorSummary {
    /// Tenant id and rate.
    #[serde(flatten)]
    pub contribution: Contribution,
    /// Its level, as the contract's number.
    pub level: i32,
}

/// The fleet's persisted state.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct FleetRecord {
    /// The level state machine.
    pub level: LevelState,
    /// Last baseline sample slot.
    pub sample_slot: Option<i64>,
    /// Fleet-red caps on top contributors, nano-USD per hour, decided at
    /// `caps_decided_ms`; empty unless the fleet is red.
    pub caps: Vec<(String, i64)>,
    /// When `caps` were decided.
    pub caps_decided_ms: i64,
}

/// The level-index member of a tenant at `level` (contract number).
#[must_use]
pub fn rank_member(level: i32, tenant: &str) -> String {
    // green (1) -> 8 ... red (4) -> 5; unspecified (0) -> 9, last.
    format!("{}{tenant}", 9 - level.clamp(0, 4))
}

/// The level (contract number) and tenant of a level-index member.
#[must_use]
pub fn parse_rank_member(member: &str) -> Option<(i32, &str)> {
    let rank = member.get(..1)?.parse::<i32>().ok()?;
    let tenant = member.get(1..)?;
    let level = if rank == 9 { 0 } else { 9 - rank };
    Some((level, tenant))
}

const BASELINE_FORMAT: u8 = 1;

/// A baseline in a compact form: format byte, samples (u64 LE), then per
/// non-empty bucket its hour of week (u8), count (u64 LE), mean and variance
/// (f64 LE) — a tenant active a few hours a week stores a few buckets.
#[must_use]
pub fn encode_baseline(baseline: &Baseline) -> Vec<u8> {
    let buckets = baseline.buckets();
    let used = buckets.iter().filter(|bucket| bucket.count > 0).count();
    let mut out = Vec::with_capacity(9 + used * 25);
    out.push(BASELINE_FORMAT);
    out.extend_from_slice(&baseline.samples.to_le_bytes());
    for (index, bucket) in buckets.iter().enumerate() {
        if bucket.count == 0 {
            continue;
        }
        out.push(u8::try_from(index).unwrap_or(u8::MAX));
        out.extend_from_slice(&bucket.count.to_le_bytes());
        out.extend_from_slice(&bucket.mean.to_le_bytes());
        out.extend_from_slice(&bucket.variance.to_le_bytes());
    }
    out
}

/// Reads [`encode_baseline`]'s form.
///
/// # Errors
/// [`StateError::Corrupt`] for another format or a truncated value.
pub fn decode_baseline(bytes: &[u8]) -> Result<Baseline, StateError> {
    let corrupt = |why: &str| StateError::Corrupt(format!("baseline: {why}"));
    let (&format, rest) = bytes.split_first().ok_or_else(|| corrupt("empty"))?;
    if format != BASELINE_FORMAT {
        return Err(corrupt("unknown format"));
    }
    let (samples, mut rest) = rest
        .split_at_checked(8)
        .ok_or_else(|| corrupt("truncated"))?;
    let samples = u64::from_le_bytes(samples.try_into().map_err(|_| corrupt("truncated"))?);
    let mut buckets = vec![BucketStats::default(); HOURS_PER_WEEK];
    while let Some((&index, tail)) = rest.split_first() {
        let (fields, tail) = tail
            .split_at_checked(24)
            .ok_or_else(|| corrupt("truncated"))?;
        let word = |at: usize| -> Result<[u8; 8], StateError> {
            fields
                .get(at..at + 8)
                .and_then(|slice| slice.try_into().ok())
                .ok_or_else(|| corrupt("truncated"))
        };
        let bucket = buckets
            .get_mut(usize::from(index))
            .ok_or_else(|| corrupt("hour of week out of range"))?;
        *bucket = BucketStats {
            count: u64::from_le_bytes(word(0)?),
            mean: f64::from_le_bytes(word(8)?),
            variance: f64::from_le_bytes(word(16)?),
        };
        rest = tail;
    }
    Ok(Baseline::from_buckets(buckets, samples))
}

/// Format byte of the dense form.
const DENSE_FORMAT: u8 = 2;
/// Bytes before the first bucket: format, samples (u64 LE).
pub const DENSE_HEADER_LEN: usize = 9;
/// Bytes per bucket: count (u64 LE), mean, variance (f64 LE).
pub const DENSE_BUCKET_LEN: usize = 24;

/// The dense form's header: format byte, samples.
#[must_use]
pub fn dense_header(baseline: &Baseline) -> [u8; DENSE_HEADER_LEN] {
    let mut out = [0; DENSE_HEADER_LEN];
    out[0] = DENSE_FORMAT;
    out[1..].copy_from_slice(&baseline.samples.to_le_bytes());
    out
}

/// The dense form of one bucket, stored at
/// `DENSE_HEADER_LEN + hour_of_week * DENSE_BUCKET_LEN`. An empty bucket is
/// all zeros, so the bytes `SETRANGE` pads with read as empty buckets.
#[must_use]
pub fn dense_bucket(bucket: &BucketStats) -> [u8; DENSE_BUCKET_LEN] {
    let mut out = [0; DENSE_BUCKET_LEN];
    out[..8].copy_from_slice(&bucket.count.to_le_bytes());
    out[8..16].copy_from_slice(&bucket.mean.to_le_bytes());
    out[16..].copy_from_slice(&bucket.variance.to_le_bytes());
    out
}

/// Reads the dense form (buckets past the end of `bytes` are empty).
///
/// # Errors
/// [`StateError::Corrupt`] for another format or a partial bucket.
pub fn decode_dense(bytes: &[u8]) -> Result<Baseline, StateError> {
    let corrupt = |why: &str| StateError::Corrupt(format!("baseline: {why}"));
    let (header, body) = bytes
        .split_at_checked(DENSE_HEADER_LEN)
        .ok_or_else(|| corrupt("truncated"))?;
    let (&format, samples) = header.split_first().ok_or_else(|| corrupt("empty"))?;
    if format != DENSE_FORMAT {
        return Err(corrupt("unknown format"));
    }
    let samples = u64::from_le_bytes(samples.try_into().map_err(|_| corrupt("truncated"))?);
    if body.len() % DENSE_BUCKET_LEN != 0 || body.len() / DENSE_BUCKET_LEN > HOURS_PER_WEEK {
        return Err(corrupt("not a whole number of hour-of-week buckets"));
    }
    let buckets = body
        .chunks_exact(DENSE_BUCKET_LEN)
        .map(|fields| {
            let word = |at: usize| -> [u8; 8] {
                let mut word = [0; 8];
                word.copy_from_slice(&fields[at..at + 8]);
                word
            };
            BucketStats {
                count: u64::from_le_bytes(word(0)),
                mean: f64::from_le_bytes(word(8)),
                variance: f64::from_le_bytes(word(16)),
            }
        })
        .collect();
    Ok(Baseline::from_buckets(buckets, samples))
}

fn baseline_key(shard: u32, tenant: &TenantId) -> String {
    format!("{{al:s{shard}}}:bl:{tenant}")
}

fn shard_key(shard: u32, name: &str) -> String {
    format!("{{al:s{shard}}}:{name}")
}

/// Key of the fleet's hash.
pub const FLEET_KEY: &str = "{al}:fleet";
/// Key of the fleet's lease.
pub const FLEET_LEASE_KEY: &str = "{al}:fleet:lease";
/// Key of the shard summaries.
pub const SUMMARY_KEY: &str = "{al}:summary";

/// Takes or renews a lease. KEYS: lease. ARGV: token, ttl ms.
/// Replies 1 when the caller holds it now.
const LEASE_V1: &str = r"-- tenantmeter alerting lease v1
local holder = redis.call('GET', KEYS[1])
if holder == false or holder == ARGV[1] then
  redis.call('SET', KEYS[1], ARGV[1], 'PX', tonumber(ARGV[2]))
  return 1
end
return 0
";

/// Gives a lease up if held. KEYS: lease. ARGV: token.
const RELEASE_V1: &str = r"-- tenantmeter alerting release v1
if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('DEL', KEYS[1])
end
return 0
";

/// Commits a page of a shard's pass, if the caller holds the lease.
/// KEYS: lease, state, older-form baseline hash, status, policy, levels,
/// outbox, then one dense baseline key per baseline item below.
/// ARGV: token, then five lists, each as a count followed by its items:
/// state (tenant, json); baseline (rewrite '1'/'0', tenant, header, count of
/// buckets, then per bucket its offset and bytes; a rewrite first deletes the
/// key and the tenant's older-form field); status (tenant, bytes, old member
/// or '', new member or '' when the index is unchanged); policy (tenant,
/// bytes); outbox (id, bytes).
/// Replies 1, or 0 when the lease is not the caller's (nothing written).
const COMMIT_V3: &str = r"-- tenantmeter alerting shard commit v3
if redis.call('GET', KEYS[1]) ~= ARGV[1] then return 0 end
local i = 2
local n = tonumber(ARGV[i]); i = i + 1
for _ = 1, n do redis.call('HSET', KEYS[2], ARGV[i], ARGV[i + 1]); i = i + 2 end
n = tonumber(ARGV[i]); i = i + 1
for j = 1, n do
  local key = KEYS[7 + j]
  if ARGV[i] == '1' then
    redis.call('DEL', key)
    redis.call('HDEL', KEYS[3], ARGV[i + 1])
  end
  redis.call('SETRANGE', key, 0, ARGV[i + 2])
  local buckets = tonumber(ARGV[i + 3]); i = i + 4
  for _ = 1, buckets do redis.call('SETRANGE', key, tonumber(ARGV[i]), ARGV[i + 1]); i = i + 2 end
end
n = tonumber(ARGV[i]); i = i + 1
for _ = 1, n do
  redis.call('HSET', KEYS[4], ARGV[i], ARGV[i + 1])
  if ARGV[i + 2] ~= '' then redis.call('ZREM', KEYS[6], ARGV[i + 2]) end
  if ARGV[i + 3] ~= '' then redis.call('ZADD', KEYS[6], 0, ARGV[i + 3]) end
  i = i + 4
end
n = tonumber(ARGV[i]); i = i + 1
for _ = 1, n do redis.call('HSET', KEYS[5], ARGV[i], ARGV[i + 1]); i = i + 2 end
n = tonumber(ARGV[i]); i = i + 1
for _ = 1, n do redis.call('HSET', KEYS[7], ARGV[i], ARGV[i + 1]); i = i + 2 end
return 1
";

/// Commits the fleet's pass, if the caller holds the fleet lease.
/// KEYS: fleet lease, fleet. ARGV: token, state json, baseline or '', status.
const FLEET_COMMIT_V1: &str = r"-- tenantmeter alerting fleet commit v1
if redis.call('GET', KEYS[1]) ~= ARGV[1] then return 0 end
redis.call('HSET', KEYS[2], 'state', ARGV[2], 'status', ARGV[4])
if ARGV[3] ~= '' then redis.call('HSET', KEYS[2], 'baseline', ARGV[3]) end
return 1
";

/// A shard's stored state, as loaded when a replica takes its lease.
#[derive(Debug, Default)]
pub struct ShardSnapshot {
    /// Records by tenant.
    pub records: HashMap<TenantId, TenantRecord>,
    /// Baselines by tenant.
    pub baselines: HashMap<TenantId, Baseline>,
    /// Tenants whose baseline is stored in the older whole-value form.
    pub older_form: HashSet<TenantId>,
    /// Policies last applied, by tenant.
    pub policies: HashMap<TenantId, pb::TenantPolicy>,
    /// Statuses' level (contract number), by tenant, for the level index.
    pub levels: HashMap<TenantId, i32>,
    /// Alerts committed but not yet handed to the history.
    pub outbox: Vec<pb::Alert>,
}

/// The fleet's stored state.
#[derive(Debug, Default)]
pub struct FleetSnapshot {
    /// The record.
    pub record: FleetRecord,
    /// The baseline.
    pub baseline: Baseline,
    /// The last status.
    pub status: Option<pb::FleetStatus>,
}

/// Alerting's evaluation state in Redis. Cheap to clone.
#[derive(Debug, Clone)]
pub struct StateStore {
    conn: RedisConnection,
    timeout: Duration,
    lease: redis::Script,
    release: redis::Script,
    commit: redis::Script,
    fleet_commit: redis::Script,
}

async fn bounded<T>(
    timeout: Duration,
    call: impl Future<Output = Result<T, redis::RedisError>>,
) -> Result<T, StateError> {
    match tokio::time::timeout(timeout, call).await {
        Ok(result) => Ok(result?),
        Err(_elapsed) => Err(StateError::Timeout(timeout)),
    }
}

fn decode_message<M: prost::Message + Default>(what: &str, bytes: &[u8]) -> Result<M, StateError> {
    M::decode(bytes).map_err(|e| StateError::Corrupt(format!("{what}: {e}")))
}

impl StateStore {
    /// A store on an existing connection; every call is bounded by `timeout`.
    #[must_use]
    pub fn new(conn: RedisConnection, timeout: Duration) -> Self {
        Self {
            conn,
            timeout,
            lease: redis::Script::new(LEASE_V1),
            release: redis::Script::new(RELEASE_V1),
            commit: redis::Script::new(COMMIT_V3),
            fleet_commit: redis::Script::new(FLEET_COMMIT_V1),
        }
    }

    async fn take_lease(&self, key: &str, token: &str, ttl: Duration) -> Result<bool, StateError> {
        let mut conn = self.conn.clone();
        let mut invocation = self.lease.key(key);
        invocation
            .arg(token)
            .arg(u64::try_from(ttl.as_millis()).unwrap_or(u64::MAX));
        let held: i64 = bounded(self.timeout, invocation.invoke_async(&mut conn)).await?;
        Ok(held == 1)
    }

    /// Takes or renews shard `shard`'s lease for `token`; true when held.
    ///
    /// # Errors
    /// Redis.
    pub async fn lease_shard(
        &self,
        shard: u32,
        token: &str,
        ttl: Duration,
    ) -> Result<bool, StateError> {
        self.take_lease(&shard_key(shard, "lease"), token, ttl)
            .await
    }

    /// Takes or renews the fleet's lease for `token`; true when held.
    ///
    /// # Errors
    /// Redis.
    pub async fn lease_fleet(&self, token: &str, ttl: Duration) -> Result<bool, StateError> {
        self.take_lease(FLEET_LEASE_KEY, token, ttl).await
    }

    /// Gives up shard `shard` (or the fleet, `None`) if `token` holds it, so
    /// another replica takes over at once instead of after the lease's TTL.
    ///
    /// # Errors
    /// Redis.
    pub async fn release(&self, shard: Option<u32>, token: &str) -> Result<(), StateError> {
        let key = shard.map_or_else(|| FLEET_LEASE_KEY.to_owned(), |s| shard_key(s, "lease"));
        let mut conn = self.conn.clone();
        let mut invocation = self.release.key(key);
        invocation.arg(token);
        let _released: i64 = bounded(self.timeout, invocation.invoke_async(&mut conn)).await?;
        Ok(())
    }

    async fn hgetall_bytes(&self, key: &str) -> Result<Vec<(String, Vec<u8>)>, StateError> {
        // HSCAN in pages so a large shard never blocks Redis in one reply.
        let mut conn = self.conn.clone();
        let mut cursor: u64 = 0;
        let mut out = Vec::new();
        loop {
            let (next, page): (u64, Vec<(String, Vec<u8>)>) = bounded(
                self.timeout,
                redis::cmd("HSCAN")
                    .arg(key)
                    .arg(cursor)
                    .arg("COUNT")
                    .arg(1_000)
                    .query_async(&mut conn),
            )
            .await?;
            out.extend(page);
            if next == 0 {
                return Ok(out);
            }
            cursor = next;
        }
    }

    /// Loads shard `shard`'s stored state (when a replica takes its lease,
    /// and for what-if evaluations of a shard held elsewhere).
    ///
    /// # Errors
    /// Redis; corrupt records.
    pub async fn load_shard(&self, shard: u32) -> Result<ShardSnapshot, StateError> {
        let mut snapshot = ShardSnapshot::default();
        let tenant = |field: &str| {
            TenantId::parse(field)
                .map_err(|e| StateError::Corrupt(format!("tenant {field:?}: {e}")))
        };
        for (field, json) in self.hgetall_bytes(&shard_key(shard, "state")).await? {
            let record: TenantRecord = serde_json::from_slice(&json)
                .map_err(|e| StateError::Corrupt(format!("state of {field:?}: {e}")))?;
            snapshot.records.insert(tenant(&field)?, record);
        }
        let tenants: Vec<TenantId> = snapshot.records.keys().cloned().collect();
        for chunk in tenants.chunks(1_000) {
            let keys: Vec<String> = chunk.iter().map(|t| baseline_key(shard, t)).collect();
            let mut conn = self.conn.clone();
            let values: Vec<Option<Vec<u8>>> = bounded(
                self.timeout,
                redis::cmd("MGET").arg(&keys).query_async(&mut conn),
            )
            .await?;
            for (tenant, bytes) in chunk.iter().zip(values) {
                if let Some(bytes) = bytes {
                    snapshot
                        .baselines
                        .insert(tenant.clone(), decode_dense(&bytes)?);
                }
            }
        }
        // The older whole-value form, for tenants without a dense key yet;
        // the engine rewrites them at their next sample.
        for (field, bytes) in self.hgetall_bytes(&shard_key(shard, "baseline")).await? {
            let id = tenant(&field)?;
            if !snapshot.baselines.contains_key(&id) {
                snapshot
                    .baselines
                    .insert(id.clone(), decode_baseline(&bytes)?);
                snapshot.older_form.insert(id);
            }
        }
        for (field, bytes) in self.hgetall_bytes(&shard_key(shard, "policy")).await? {
            snapshot
                .policies
                .insert(tenant(&field)?, decode_message("policy", &bytes)?);
        }
        for (field, bytes) in self.hgetall_bytes(&shard_key(shard, "outbox")).await? {
            let alert: pb::Alert = decode_message(&format!("outbox alert {field:?}"), &bytes)?;
            snapshot.outbox.push(alert);
        }
        snapshot.outbox.sort_by(|a, b| a.alert_id.cmp(&b.alert_id));
        let mut conn = self.conn.clone();
        let members: Vec<String> = bounded(
            self.timeout,
            redis::cmd("ZRANGE")
                .arg(shard_key(shard, "levels"))
                .arg(0)
                .arg(-1)
                .query_async(&mut conn),
        )
        .await?;
        for member in members {
            if let Some((level, id)) = parse_rank_member(&member) {
                snapshot.levels.insert(tenant(id)?, level);
            }
        }
        Ok(snapshot)
    }

    /// Commits a page of shard `shard`'s pass under `token`'s lease.
    ///
    /// # Errors
    /// [`StateError::LeaseLost`] when another replica holds the shard
    /// (nothing written); Redis.
    pub async fn commit_shard(
        &self,
        shard: u32,
        token: &str,
        commits: &[TenantCommit],
    ) -> Result<(), StateError> {
        let mut conn = self.conn.clone();
        let mut invocation = self.commit.key(shard_key(shard, "lease"));
        for name in ["state", "baseline", "status", "policy", "levels", "outbox"] {
            invocation.key(shard_key(shard, name));
        }
        invocation.arg(token).arg(commits.len());
        for commit in commits {
            let json = serde_json::to_vec(&commit.record)
                .map_err(|e| StateError::Corrupt(format!("encoding state: {e}")))?;
            invocation.arg(commit.tenant.as_str()).arg(json);
        }
        let baselines: Vec<_> = commits
            .iter()
            .filter_map(|c| c.baseline.as_ref().map(|b| (&c.tenant, b)))
            .collect();
        invocation.arg(baselines.len());
        for (tenant, write) in &baselines {
            invocation.key(baseline_key(shard, tenant));
            invocation
                .arg(if write.rewrite { "1" } else { "0" })
                .arg(tenant.as_str())
                .arg(&dense_header(&write.baseline)[..])
                .arg(write.buckets.len());
            for &index in &write.buckets {
                let bucket = write
                    .baseline
                    .buckets()
                    .get(index)
                    .copied()
                    .unwrap_or_default();
                invocation
                    .arg(DENSE_HEADER_LEN + index * DENSE_BUCKET_LEN)
                    .arg(&dense_bucket(&bucket)[..]);
            }
        }
        invocation.arg(commits.len());
        for commit in commits {
            invocation
                .arg(commit.tenant.as_str())
                .arg(commit.status.encode_to_vec())
                .arg(
                    commit
                        .index_move
                        .as_ref()
                        .and_then(|m| m.from.as_deref())
                        .unwrap_or(""),
                )
                .arg(commit.index_move.as_ref().map_or("", |m| m.to.as_str()));
        }
        let policies: Vec<_> = commits
            .iter()
            .filter_map(|c| c.policy.as_ref().map(|p| (&c.tenant, p)))
            .collect();
        invocation.arg(policies.len());
        for (tenant, policy) in policies {
            invocation.arg(tenant.as_str()).arg(policy.encode_to_vec());
        }
        let alerts: Vec<_> = commits.iter().filter_map(|c| c.alert.as_ref()).collect();
        invocation.arg(alerts.len());
        for alert in alerts {
            invocation.arg(&alert.alert_id).arg(alert.encode_to_vec());
        }
        let written: i64 = bounded(self.timeout, invocation.invoke_async(&mut conn)).await?;
        if written == 1 {
            Ok(())
        } else {
            Err(StateError::LeaseLost(shard))
        }
    }

    /// Removes alerts from shard `shard`'s outbox once the history has them.
    ///
    /// # Errors
    /// Redis.
    pub async fn clear_outbox(&self, shard: u32, alert_ids: &[String]) -> Result<(), StateError> {
        if alert_ids.is_empty() {
            return Ok(());
        }
        let mut conn = self.conn.clone();
        let _removed: i64 = bounded(
            self.timeout,
            redis::cmd("HDEL")
                .arg(shard_key(shard, "outbox"))
                .arg(alert_ids)
                .query_async(&mut conn),
        )
        .await?;
        Ok(())
    }

    /// The stored status of `tenant`.
    ///
    /// # Errors
    /// Redis; a corrupt status.
    pub async fn status(
        &self,
        tenant: &TenantId,
        shards: u32,
    ) -> Result<Option<pb::TenantStatus>, StateError> {
        let mut conn = self.conn.clone();
        let bytes: Option<Vec<u8>> = bounded(
            self.timeout,
            redis::cmd("HGET")
                .arg(shard_key(tenant.shard(shards), "status"))
                .arg(tenant.as_str())
                .query_async(&mut conn),
        )
        .await?;
        bytes.map(|b| decode_message("status", &b)).transpose()
    }

    /// Statuses of several tenants of one shard, in the order asked (absent
    /// ones skipped).
    ///
    /// # Errors
    /// Redis; a corrupt status.
    pub async fn statuses_in_shard(
        &self,
        shard: u32,
        tenants: &[&str],
    ) -> Result<Vec<pb::TenantStatus>, StateError> {
        if tenants.is_empty() {
            return Ok(Vec::new());
        }
        let mut conn = self.conn.clone();
        let values: Vec<Option<Vec<u8>>> = bounded(
            self.timeout,
            redis::cmd("HMGET")
                .arg(shard_key(shard, "status"))
                .arg(tenants)
                .query_async(&mut conn),
        )
        .await?;
        values
            .into_iter()
            .flatten()
            .map(|bytes| decode_message("status", &bytes))
            .collect()
    }

    /// Up to `count` level-index members of shard `shard` after `after`
    /// (exclusive; `None` from the start) and at least at rank `max_rank`.
    ///
    /// # Errors
    /// Redis.
    pub async fn rank_page(
        &self,
        shard: u32,
        after: Option<&str>,
        max_member: &str,
        count: usize,
    ) -> Result<Vec<String>, StateError> {
        let start = after.map_or_else(|| "-".to_owned(), |a| format!("({a}"));
        let mut conn = self.conn.clone();
        bounded(
            self.timeout,
            redis::cmd("ZRANGEBYLEX")
                .arg(shard_key(shard, "levels"))
                .arg(start)
                .arg(max_member)
                .arg("LIMIT")
                .arg(0)
                .arg(count)
                .query_async(&mut conn),
        )
        .await
    }

    /// Records shard `shard`'s summary for the fleet pass.
    ///
    /// # Errors
    /// Redis.
    pub async fn put_summary(&self, shard: u32, summary: &ShardSummary) -> Result<(), StateError> {
        let json = serde_json::to_vec(summary)
            .map_err(|e| StateError::Corrupt(format!("encoding summary: {e}")))?;
        let mut conn = self.conn.clone();
        let _: i64 = bounded(
            self.timeout,
            redis::cmd("HSET")
                .arg(SUMMARY_KEY)
                .arg(shard)
                .arg(json)
                .query_async(&mut conn),
        )
        .await?;
        Ok(())
    }

    /// Every shard's last summary, by shard.
    ///
    /// # Errors
    /// Redis; a corrupt summary.
    pub async fn summaries(&self) -> Result<HashMap<u32, ShardSummary>, StateError> {
        let mut out = HashMap::new();
        for (field, json) in self.hgetall_bytes(SUMMARY_KEY).await? {
            let shard = field
                .parse::<u32>()
                .map_err(|e| StateError::Corrupt(format!("summary shard {field:?}: {e}")))?;
            let summary = serde_json::from_slice(&json)
                .map_err(|e| StateError::Corrupt(format!("summary {field:?}: {e}")))?;
            out.insert(shard, summary);
        }
        Ok(out)
    }

    /// The fleet's stored state.
    ///
    /// # Errors
    /// Redis; corrupt records.
    pub async fn load_fleet(&self) -> Result<FleetSnapshot, StateError> {
        let mut snapshot = FleetSnapshot::default();
        for (field, bytes) in self.hgetall_bytes(FLEET_KEY).await? {
            match field.as_str() {
                "state" => {
                    snapshot.record = serde_json::from_slice(&bytes)
                        .map_err(|e| StateError::Corrupt(format!("fleet state: {e}")))?;
                }
                "baseline" => snapshot.baseline = decode_baseline(&bytes)?,
                "status" => snapshot.status = Some(decode_message("fleet status", &bytes)?),
                _ => {}
            }
        }
        Ok(snapshot)
    }

    /// Commits the fleet's pass under `token`'s lease.
    ///
    /// # Errors
    /// [`StateError::LeaseLost`]; Redis.
    pub async fn commit_fleet(
        &self,
        token: &str,
        record: &FleetRecord,
        baseline: Option<&Baseline>,
        status: &pb::FleetStatus,
    ) -> Result<(), StateError> {
        let json = serde_json::to_vec(record)
            .map_err(|e| StateError::Corrupt(format!("encoding fleet state: {e}")))?;
        let mut conn = self.conn.clone();
        let mut invocation = self.fleet_commit.key(FLEET_LEASE_KEY);
        invocation
            .key(FLEET_KEY)
            .arg(token)
            .arg(json)
            .arg(baseline.map(encode_baseline).unwrap_or_default())
            .arg(status.encode_to_vec());
        let written: i64 = bounded(self.timeout, invocation.invoke_async(&mut conn)).await?;
        if written == 1 {
            Ok(())
        } else {
            Err(StateError::FleetLeaseLost)
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]

    use tenantmeter_domain::levels::BaselinePolicy;

    use super::*;

    #[test]
    fn baseline_round_trips_through_the_compact_form() {
        let mut baseline = Baseline::new();
        let policy = BaselinePolicy::default();
        for i in 0..500_i64 {
            baseline.observe(i * 300_000, 1_000_000 + i * 7_919, &policy);
        }
        let bytes = encode_baseline(&baseline);
        assert_eq!(decode_baseline(&bytes).unwrap(), baseline);
        assert!(decode_baseline(&bytes[..bytes.len() - 1]).is_err());
        assert_eq!(
            decode_baseline(&encode_baseline(&Baseline::new())).unwrap(),
            Baseline::new()
        );
    }

    #[test]
    fn the_dense_form_reads_what_setrange_leaves() {
        let baseline = {
            let mut baseline = Baseline::new();
            let policy = BaselinePolicy::default();
            // Two samples in the same hour: one bucket in use.
            baseline.observe(0, 1_000_000, &policy);
            baseline.observe(300_000, 3_000_000, &policy);
            baseline
        };
        let write = BaselineWrite::new(None, baseline.clone());
        assert_eq!(write.buckets.len(), 1);
        // A fresh key holds the header, zeros up to the bucket, the bucket.
        let index = write.buckets[0];
        let mut bytes = dense_header(&baseline).to_vec();
        bytes.resize(DENSE_HEADER_LEN + index * DENSE_BUCKET_LEN, 0);
        bytes.extend_from_slice(&dense_bucket(&baseline.buckets()[index]));
        assert_eq!(decode_dense(&bytes).unwrap(), baseline);
        assert_eq!(
            decode_dense(&dense_header(&Baseline::new())).unwrap(),
            Baseline::new()
        );
        assert!(decode_dense(&bytes[..bytes.len() - 1]).is_err());
        assert!(decode_dense(&encode_baseline(&baseline)).is_err());
    }

    #[test]
    fn rank_members_sort_highest_level_first_then_by_tenant() {
        let mut members = [
            rank_member(1, "b"),
            rank_member(4, "z"),
            rank_member(0, "a"),
            rank_member(4, "c"),
            rank_member(2, "a"),
        ];
        members.sort();
        let parsed: Vec<_> = members
            .iter()
            .map(|m| parse_rank_member(m).unwrap())
            .collect();
        assert_eq!(parsed, [(4, "c"), (4, "z"), (2, "a"), (1, "b"), (0, "a")]);
    }
}
