//! The registry's Redis keyspace. Every key carries the one hash tag `{gw}`, so
//! all of them live in one slot: a change touches the record, the indexes and
//! the change stream in ONE Lua script, atomically, on one server and on Redis
//! Cluster alike. The registry is configuration-sized (thousands of tenants,
//! changed by admins), and the hot path never reads Redis, so one slot is not
//! a hot spot.
//!
//! | key | type | content |
//! |---|---|---|
//! | `{gw}:tenant:<tenant id>` | hash | `rev` (decimal revision), `record` (the `TenantRecord` JSON) |
//! | `{gw}:tenants` | sorted set | every tenant id, score 0 (so ZRANGEBYLEX pages by id) |
//! | `{gw}:tenants:active` | sorted set | the ids of active tenants, score 0 |
//! | `{gw}:keys` | hash | key id -> tenant id, for every stored key |
//! | `{gw}:seq` | string | number of changes ever committed |
//! | `{gw}:changes` | stream | one entry per change: `seq`, `tenant`; capped (MAXLEN ~) |
//! | `{gw}:epoch` | string | random token set (NX) by the first replica to connect |
//!
//! The epoch tells replicas that Redis lost the registry (a flush, a restart
//! without persistence, a failover to an empty replica): the key vanishes or
//! changes, and every replica drops its cache (see `Registry`).
//!
//! None of these keys has a TTL: the registry is configuration, not a cache.
//! Scripts are versioned by name; a layout change gets new scripts.

use std::collections::HashMap;
use std::time::Duration;

use tenantmeter_domain::ids::TenantId;

use super::RegistryError;

/// The hash tag shared by every registry key.
pub const TAG: &str = "{gw}";
/// Sorted set of all tenant ids.
pub const ALL_KEY: &str = "{gw}:tenants";
/// Sorted set of active tenant ids.
pub const ACTIVE_KEY: &str = "{gw}:tenants:active";
/// Key id -> tenant id.
pub const KEYS_KEY: &str = "{gw}:keys";
/// Change counter.
pub const SEQ_KEY: &str = "{gw}:seq";
/// Change stream.
pub const CHANGES_KEY: &str = "{gw}:changes";
/// Identity of the registry's data (see the module docs).
pub const EPOCH_KEY: &str = "{gw}:epoch";
/// Approximate length the change stream is capped at: far more than the
/// changes a replica can miss between two polls, so a gap means a replica was
/// cut off for long (it then drops its whole cache).
pub const CHANGES_CAP: u64 = 10_000;

/// The record key of a tenant.
pub fn tenant_key(tenant: &TenantId) -> String {
    format!("{TAG}:tenant:{tenant}")
}

/// Compare-and-set of one tenant and everything indexed from it.
///
/// KEYS: record, all, active, keys, seq, changes.
/// ARGV: tenant, expected rev (`0`: must not exist), new rev, record JSON,
/// active (`1`/`0`), stream cap, number of key ids to add, the ids to add,
/// then the ids to remove.
/// Replies `{'ok', seq}`, `{'exists', rev}`, `{'missing'}`, `{'stale', rev}`
/// or `{'key_taken', key id}`; nothing is written unless `ok`.
const PUT_V1: &str = r"-- tenantmeter gateway put v1
local tenant = ARGV[1]
local held = redis.call('HGET', KEYS[1], 'rev')
if ARGV[2] == '0' then
  if held then return {'exists', held} end
elseif not held then
  return {'missing'}
elseif held ~= ARGV[2] then
  return {'stale', held}
end
local n_add = tonumber(ARGV[7])
for i = 8, 7 + n_add do
  local owner = redis.call('HGET', KEYS[4], ARGV[i])
  if owner and owner ~= tenant then return {'key_taken', ARGV[i]} end
end
redis.call('HSET', KEYS[1], 'rev', ARGV[3], 'record', ARGV[4])
redis.call('ZADD', KEYS[2], 0, tenant)
if ARGV[5] == '1' then
  redis.call('ZADD', KEYS[3], 0, tenant)
else
  redis.call('ZREM', KEYS[3], tenant)
end
for i = 8, 7 + n_add do
  redis.call('HSET', KEYS[4], ARGV[i], tenant)
end
for i = 8 + n_add, #ARGV do
  if redis.call('HGET', KEYS[4], ARGV[i]) == tenant then
    redis.call('HDEL', KEYS[4], ARGV[i])
  end
end
local seq = redis.call('INCR', KEYS[5])
redis.call('XADD', KEYS[6], 'MAXLEN', '~', ARGV[6], '*', 'seq', seq, 'tenant', tenant)
return {'ok', tostring(seq)}
";

/// Deletes a tenant at an expected revision (undoing a creation whose plan
/// assignment failed).
///
/// KEYS: as PUT. ARGV: tenant, expected rev, stream cap, key ids to remove.
/// Replies `{'ok', seq}`, `{'missing'}` or `{'stale', rev}`.
const DELETE_V1: &str = r"-- tenantmeter gateway delete v1
local tenant = ARGV[1]
local held = redis.call('HGET', KEYS[1], 'rev')
if not held then return {'missing'} end
if held ~= ARGV[2] then return {'stale', held} end
redis.call('DEL', KEYS[1])
redis.call('ZREM', KEYS[2], tenant)
redis.call('ZREM', KEYS[3], tenant)
for i = 4, #ARGV do
  if redis.call('HGET', KEYS[4], ARGV[i]) == tenant then
    redis.call('HDEL', KEYS[4], ARGV[i])
  end
end
local seq = redis.call('INCR', KEYS[5])
redis.call('XADD', KEYS[6], 'MAXLEN', '~', ARGV[3], '*', 'seq', seq, 'tenant', tenant)
return {'ok', tostring(seq)}
";

use tenantmeter_runtime::redis_connection::RedisConnection as Connection;

/// One stream entry as read: id and fields.
type StreamEntry = (String, HashMap<String, String>);

/// What a compare-and-set answered.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum PutOutcome {
    /// Written; the change's sequence number.
    Written(u64),
    /// Creation refused: the tenant exists.
    Exists,
    /// Update refused: the tenant does not exist.
    Missing,
    /// Update refused: another change came first.
    Stale,
    /// A new key id is already another tenant's.
    KeyTaken(String),
}

/// One entry of the change stream.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Change {
    /// Stream entry id.
    pub(crate) id: String,
    /// Sequence number of the change.
    pub(crate) seq: u64,
    /// Tenant changed.
    pub(crate) tenant: String,
}

/// The registry's keyspace.
#[derive(Debug, Clone)]
pub(crate) struct Store {
    conn: Connection,
    put: redis::Script,
    delete: redis::Script,
}

fn reply_err(what: &str, reply: &impl std::fmt::Debug) -> RegistryError {
    RegistryError::Corrupt(format!("unexpected reply to {what}: {reply:?}"))
}

impl Store {
    /// Connects to one server (`urls` has one entry) or to a cluster (any
    /// number of seed nodes).
    pub(crate) async fn connect(
        urls: &[String],
        cluster: bool,
        timeout: Duration,
    ) -> Result<Self, RegistryError> {
        let conn = Connection::connect(urls, cluster, timeout).await?;
        Ok(Self {
            conn,
            put: redis::Script::new(PUT_V1),
            delete: redis::Script::new(DELETE_V1),
        })
    }

    fn conn(&self) -> Connection {
        self.conn.clone()
    }

    /// Whether Redis answers.
    pub(crate) async fn ping(&self) -> Result<(), RegistryError> {
        let _pong: String = redis::cmd("PING").query_async(&mut self.conn()).await?;
        Ok(())
    }

    /// The stored JSON of a tenant.
    pub(crate) async fn get(&self, tenant: &TenantId) -> Result<Option<String>, RegistryError> {
        let json: Option<String> = redis::cmd("HGET")
            .arg(tenant_key(tenant))
            .arg("record")
            .query_async(&mut self.conn())
            .await?;
        Ok(json)
    }

    /// The stored JSON of several tenants, in order (`None` where missing).
    pub(crate) async fn get_many(
        &self,
        tenants: &[TenantId],
    ) -> Result<Vec<Option<String>>, RegistryError> {
        if tenants.is_empty() {
            return Ok(Vec::new());
        }
        let mut pipe = redis::pipe();
        for tenant in tenants {
            pipe.cmd("HGET").arg(tenant_key(tenant)).arg("record");
        }
        let records: Vec<Option<String>> = pipe.query_async(&mut self.conn()).await?;
        Ok(records)
    }

    /// The tenant owning a key id.
    pub(crate) async fn key_owner(&self, key_id: &str) -> Result<Option<String>, RegistryError> {
        let owner: Option<String> = redis::cmd("HGET")
            .arg(KEYS_KEY)
            .arg(key_id)
            .query_async(&mut self.conn())
            .await?;
        Ok(owner)
    }

    /// Tenant ids after `after` (exclusive), in id order, at most `limit`.
    pub(crate) async fn ids_after(
        &self,
        active_only: bool,
        after: Option<&str>,
        limit: usize,
    ) -> Result<Vec<String>, RegistryError> {
        let start = after.map_or_else(|| "-".to_owned(), |last| format!("({last}"));
        let ids: Vec<String> = redis::cmd("ZRANGEBYLEX")
            .arg(if active_only { ACTIVE_KEY } else { ALL_KEY })
            .arg(start)
            .arg("+")
            .arg("LIMIT")
            .arg(0)
            .arg(limit)
            .query_async(&mut self.conn())
            .await?;
        Ok(ids)
    }

    fn keys(tenant: &TenantId) -> [String; 6] {
        [
            tenant_key(tenant),
            ALL_KEY.to_owned(),
            ACTIVE_KEY.to_owned(),
            KEYS_KEY.to_owned(),
            SEQ_KEY.to_owned(),
            CHANGES_KEY.to_owned(),
        ]
    }

    /// Compare-and-set of one tenant: writes `json` at `new_rev` if the stored
    /// revision is `expected_rev` (0: the tenant must not exist), adds and
    /// removes key ids in the index, and appends to the change stream.
    #[allow(clippy::too_many_arguments)] // one argument per script input
    pub(crate) async fn put(
        &self,
        tenant: &TenantId,
        expected_rev: u64,
        new_rev: u64,
        json: &str,
        active: bool,
        add_keys: &[String],
        remove_keys: &[String],
    ) -> Result<PutOutcome, RegistryError> {
        let mut invocation = self.put.prepare_invoke();
        for key in Self::keys(tenant) {
            invocation.key(key);
        }
        invocation
            .arg(tenant.as_str())
            .arg(expected_rev.to_string())
            .arg(new_rev.to_string())
            .arg(json)
            .arg(if active { "1" } else { "0" })
            .arg(CHANGES_CAP)
            .arg(add_keys.len());
        for key in add_keys.iter().chain(remove_keys) {
            invocation.arg(key);
        }
        let reply: Vec<String> = invocation.invoke_async(&mut self.conn()).await?;
        match reply.as_slice() {
            [ok, seq] if ok == "ok" => seq
                .parse()
                .map(PutOutcome::Written)
                .map_err(|_| reply_err("put", &reply)),
            [exists, _] if exists == "exists" => Ok(PutOutcome::Exists),
            [missing] if missing == "missing" => Ok(PutOutcome::Missing),
            [stale, _] if stale == "stale" => Ok(PutOutcome::Stale),
            [taken, key_id] if taken == "key_taken" => Ok(PutOutcome::KeyTaken(key_id.clone())),
            _ => Err(reply_err("put", &reply)),
        }
    }

    /// Deletes a tenant if its stored revision is `expected_rev`.
    pub(crate) async fn delete(
        &self,
        tenant: &TenantId,
        expected_rev: u64,
        remove_keys: &[String],
    ) -> Result<PutOutcome, RegistryError> {
        let mut invocation = self.delete.prepare_invoke();
        for key in Self::keys(tenant) {
            invocation.key(key);
        }
        invocation
            .arg(tenant.as_str())
            .arg(expected_rev.to_string())
            .arg(CHANGES_CAP);
        for key in remove_keys {
            invocation.arg(key);
        }
        let reply: Vec<String> = invocation.invoke_async(&mut self.conn()).await?;
        match reply.as_slice() {
            [ok, seq] if ok == "ok" => seq
                .parse()
                .map(PutOutcome::Written)
                .map_err(|_| reply_err("delete", &reply)),
            [missing] if missing == "missing" => Ok(PutOutcome::Missing),
            [stale, _] if stale == "stale" => Ok(PutOutcome::Stale),
            _ => Err(reply_err("delete", &reply)),
        }
    }

    /// The change counter, the epoch and the changes after stream id
    /// `after` (exclusive), oldest first, at most `count`; one round trip.
    pub(crate) async fn changes_after(
        &self,
        after: &str,
        count: usize,
    ) -> Result<(u64, Option<String>, Vec<Change>), RegistryError> {
        let mut pipe = redis::pipe();
        pipe.cmd("GET").arg(SEQ_KEY);
        pipe.cmd("GET").arg(EPOCH_KEY);
        pipe.cmd("XRANGE")
            .arg(CHANGES_KEY)
            .arg(format!("({after}"))
            .arg("+")
            .arg("COUNT")
            .arg(count);
        let (seq, epoch, entries): (Option<u64>, Option<String>, Vec<StreamEntry>) =
            pipe.query_async(&mut self.conn()).await?;
        let changes = entries
            .into_iter()
            .map(|(id, fields)| {
                let seq = fields
                    .get("seq")
                    .and_then(|s| s.parse().ok())
                    .ok_or_else(|| reply_err("XRANGE", &fields))?;
                let tenant = fields
                    .get("tenant")
                    .cloned()
                    .ok_or_else(|| reply_err("XRANGE", &fields))?;
                Ok(Change { id, seq, tenant })
            })
            .collect::<Result<Vec<_>, RegistryError>>()?;
        Ok((seq.unwrap_or(0), epoch, changes))
    }

    /// The registry's epoch, set to `candidate` first if there is none.
    pub(crate) async fn ensure_epoch(&self, candidate: &str) -> Result<String, RegistryError> {
        let mut pipe = redis::pipe();
        pipe.cmd("SET")
            .arg(EPOCH_KEY)
            .arg(candidate)
            .arg("NX")
            .ignore();
        pipe.cmd("GET").arg(EPOCH_KEY);
        let (epoch,): (Option<String>,) = pipe.query_async(&mut self.conn()).await?;
        // Only a flush between the two commands of the pipeline leaves none.
        Ok(epoch.unwrap_or_else(|| candidate.to_owned()))
    }

    /// The newest change (stream id and sequence number), `None` when the
    /// stream is empty; where a follower starts.
    pub(crate) async fn latest_change(&self) -> Result<Option<(String, u64)>, RegistryError> {
        let entries: Vec<StreamEntry> = redis::cmd("XREVRANGE")
            .arg(CHANGES_KEY)
            .arg("+")
            .arg("-")
            .arg("COUNT")
            .arg(1)
            .query_async(&mut self.conn())
            .await?;
        Ok(entries.into_iter().next().map(|(id, fields)| {
            let seq = fields.get("seq").and_then(|s| s.parse().ok()).unwrap_or(0);
            (id, seq)
        }))
    }
}
