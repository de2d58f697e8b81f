//! The price book in Redis: the service's only state.
//!
//! Keys (one hash tag, so every change is one atomic script on one slot, on a
//! single server and on Redis Cluster alike):
//! - `{pricing}:meta`: hash of version, updated_at_ms, prices_as_of, prices_source,
//!   default_region, default_plan, seed_digest
//! - `{pricing}:prices`: hash of price key -> encoded `ModelPrice`
//! - `{pricing}:plans`: hash of plan id -> encoded `Plan`
//! - `{pricing}:assignments`: hash of tenant id -> plan id
//! - `{pricing}:changes`: stream of committed changes (capped), which replicas tail
//!
//! The book is configuration, not usage: its keys carry no TTL on purpose, and
//! the change stream is capped by length instead.
//!
//! Every change goes through [`COMMIT_SCRIPT`]: a compare-and-set on the version,
//! the hash writes, the version bump (stamped with the server's clock) and the
//! stream entry, all in one call. Two replicas committing at once cannot both
//! win; the loser reloads and retries.

use std::collections::BTreeMap;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use prost::Message as _;
use redis::AsyncCommands as _;
use redis::aio::{ConnectionManager, ConnectionManagerConfig, MultiplexedConnection};
use tenantmeter_domain::ids::{PlanId, TenantId};
use tenantmeter_domain::pricebook::{ModelPrice, PriceBook, PriceKey};
use tenantmeter_proto::v1 as pb;

use crate::convert;

const META: &str = "{pricing}:meta";
const PRICES: &str = "{pricing}:prices";
const PLANS: &str = "{pricing}:plans";
const ASSIGNMENTS: &str = "{pricing}:assignments";
const CHANGES: &str = "{pricing}:changes";

/// How many committed changes the stream keeps for replicas that fell behind;
/// one further behind reloads the whole book.
const CHANGE_STREAM_LENGTH: u32 = 10_000;

/// Commits one change. Versioned by name: a new shape of the keyspace gets a
/// new script rather than a silent edit of this one.
///
/// KEYS: meta, prices, plans, assignments, changes.
/// ARGV: expected version, lowest version to commit as, stream cap, encoded
/// change, then triplets of (target 1=meta 2=prices 3=plans 4=assignments,
/// field, value); an empty value deletes the field. The lowest version lets a
/// replica restore a book that vanished from Redis without moving versions
/// backwards for watchers.
/// Returns {1, version, now_ms} when committed, {0, current version} on conflict.
const COMMIT_SCRIPT: &str = r"
-- tenantmeter pricing commit_change v1
local current = tonumber(redis.call('HGET', KEYS[1], 'version') or '0')
if current ~= tonumber(ARGV[1]) then
  return {0, current}
end
local time = redis.call('TIME')
local now_ms = tonumber(time[1]) * 1000 + math.floor(tonumber(time[2]) / 1000)
for i = 5, #ARGV, 3 do
  local target = KEYS[tonumber(ARGV[i])]
  if ARGV[i + 2] == '' then
    redis.call('HDEL', target, ARGV[i + 1])
  else
    redis.call('HSET', target, ARGV[i + 1], ARGV[i + 2])
  end
end
local version = math.max(current + 1, tonumber(ARGV[2]))
redis.call('HSET', KEYS[1], 'version', version, 'updated_at_ms', now_ms)
redis.call('XADD', KEYS[5], 'MAXLEN', '~', ARGV[3], '*',
  'version', version, 'at_ms', now_ms, 'change', ARGV[4])
return {1, version, now_ms}
";

/// A failure of the store.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// Redis could not be reached or answered with an error.
    #[error("redis: {0}")]
    Redis(#[from] redis::RedisError),
    /// Stored data did not decode; names the key and field.
    #[error("stored price book is corrupt at {key} {field}: {reason}")]
    Corrupt {
        /// Redis key.
        key: &'static str,
        /// Hash field.
        field: String,
        /// What failed.
        reason: String,
    },
}

fn corrupt(key: &'static str, field: impl Into<String>, reason: impl ToString) -> StoreError {
    StoreError::Corrupt {
        key,
        field: field.into(),
        reason: reason.to_string(),
    }
}

/// Where a write lands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Target {
    /// `{pricing}:meta`.
    Meta = 1,
    /// `{pricing}:prices`.
    Prices = 2,
    /// `{pricing}:plans`.
    Plans = 3,
    /// `{pricing}:assignments`.
    Assignments = 4,
}

/// One hash write of a commit; an empty value deletes the field.
#[derive(Debug, Clone)]
pub struct Write {
    /// Hash written.
    pub target: Target,
    /// Field.
    pub field: String,
    /// Value; empty deletes.
    pub value: Vec<u8>,
}

impl Write {
    /// Stores a list price.
    pub fn price(price: &ModelPrice) -> Self {
        Self {
            target: Target::Prices,
            field: price_field(&price.key),
            value: convert::model_price_to_proto(price).encode_to_vec(),
        }
    }

    /// Stores a plan.
    pub fn plan(plan: &tenantmeter_domain::ratecard::Plan) -> Self {
        Self {
            target: Target::Plans,
            field: plan.id.to_string(),
            value: convert::plan_to_proto(plan).encode_to_vec(),
        }
    }

    /// Sets or removes an assignment.
    pub fn assignment(tenant: &TenantId, plan: Option<&PlanId>) -> Self {
        Self {
            target: Target::Assignments,
            field: tenant.to_string(),
            value: plan.map(|p| p.to_string().into_bytes()).unwrap_or_default(),
        }
    }

    /// Sets a meta field.
    pub fn meta(field: &str, value: &str) -> Self {
        Self {
            target: Target::Meta,
            field: field.to_owned(),
            value: value.as_bytes().to_vec(),
        }
    }
}

/// The stable hash field of a price key.
fn price_field(key: &PriceKey) -> String {
    format!(
        "{}|{}|{}|{}",
        key.model_id,
        key.region,
        key.offering.as_str(),
        key.scope.as_str()
    )
}

/// The outcome of a commit.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Commit {
    /// Committed as `version` at the server's time `at`.
    Done {
        /// New version.
        version: u64,
        /// Server time of the commit.
        at: SystemTime,
    },
    /// Someone else committed first; the store is at `current`.
    Conflict {
        /// Version in Redis.
        current: u64,
    },
}

/// A committed change read back from the change stream.
#[derive(Debug, Clone)]
pub struct ChangeRecord {
    /// Stream entry id, to resume after.
    pub stream_id: String,
    /// Version the change produced.
    pub version: u64,
    /// Server time of the commit.
    pub at: SystemTime,
    /// The change, as broadcast to watchers (its `version` field unset).
    pub change: pb::WatchPriceBookResponse,
}

/// The price book's Redis keyspace.
#[derive(Clone)]
pub struct PriceBookStore {
    client: redis::Client,
    conn: ConnectionManager,
    script: redis::Script,
}

impl std::fmt::Debug for PriceBookStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PriceBookStore").finish_non_exhaustive()
    }
}

type TextHash = BTreeMap<String, String>;
type BytesHash = BTreeMap<String, Vec<u8>>;

fn millis(at_ms: u64) -> SystemTime {
    UNIX_EPOCH + Duration::from_millis(at_ms)
}

impl PriceBookStore {
    /// Connects; the connection reconnects on its own after Redis restarts.
    pub async fn connect(url: &str, timeout: Duration) -> Result<Self, StoreError> {
        let client = redis::Client::open(url)?;
        let config = ConnectionManagerConfig::new()
            .set_connection_timeout(Some(timeout))
            .set_response_timeout(Some(timeout))
            .set_number_of_retries(2);
        let conn = client.get_connection_manager_with_config(config).await?;
        Ok(Self {
            client,
            conn,
            script: redis::Script::new(COMMIT_SCRIPT),
        })
    }

    /// A dedicated connection for blocking reads of the change stream.
    pub async fn tail_connection(
        &self,
        block: Duration,
    ) -> Result<MultiplexedConnection, StoreError> {
        let config = redis::AsyncConnectionConfig::new()
            .set_connection_timeout(Some(Duration::from_secs(2)))
            .set_response_timeout(Some(block + Duration::from_secs(2)));
        Ok(self
            .client
            .get_multiplexed_async_connection_with_config(&config)
            .await?)
    }

    /// Commits `writes` as the version after `expected` (or as `floor` when
    /// that is higher).
    pub async fn commit(
        &self,
        expected: u64,
        floor: u64,
        change: &pb::WatchPriceBookResponse,
        writes: &[Write],
    ) -> Result<Commit, StoreError> {
        let mut invocation = self.script.prepare_invoke();
        invocation
            .key(META)
            .key(PRICES)
            .key(PLANS)
            .key(ASSIGNMENTS)
            .key(CHANGES)
            .arg(expected)
            .arg(floor)
            .arg(CHANGE_STREAM_LENGTH)
            .arg(change.encode_to_vec());
        for write in writes {
            invocation
                .arg(write.target as u8)
                .arg(&write.field)
                .arg(&write.value);
        }
        let mut conn = self.conn.clone();
        let reply: Vec<u64> = invocation.invoke_async(&mut conn).await?;
        match reply.as_slice() {
            [1, version, at_ms] => Ok(Commit::Done {
                version: *version,
                at: millis(*at_ms),
            }),
            [0, current] => Ok(Commit::Conflict { current: *current }),
            other => Err(corrupt(
                META,
                "version",
                format!("unexpected commit reply {other:?}"),
            )),
        }
    }

    /// The id of the newest change-stream entry (`0-0` when empty), so a tailer
    /// started right after [`Self::load`] misses nothing.
    pub async fn last_change_id(&self) -> Result<String, StoreError> {
        let mut conn = self.conn.clone();
        let reply: redis::streams::StreamRangeReply =
            conn.xrevrange_count(CHANGES, "+", "-", 1).await?;
        Ok(reply
            .ids
            .first()
            .map_or_else(|| "0-0".to_owned(), |entry| entry.id.clone()))
    }

    /// Loads the whole book; `None` when none was ever committed.
    pub async fn load(&self) -> Result<Option<(PriceBook, String)>, StoreError> {
        let mut conn = self.conn.clone();
        // One MULTI so the four hashes are read at the same version.
        let (meta, prices, plans, assignments): (TextHash, BytesHash, BytesHash, TextHash) =
            redis::pipe()
                .atomic()
                .hgetall(META)
                .hgetall(PRICES)
                .hgetall(PLANS)
                .hgetall(ASSIGNMENTS)
                .query_async(&mut conn)
                .await?;
        let Some(version) = meta.get("version") else {
            return Ok(None);
        };
        let number = |field: &str, text: &str| {
            text.parse::<u64>()
                .map_err(|e| corrupt(META, field.to_owned(), e))
        };
        let version = number("version", version)?;
        let updated_at = millis(number(
            "updated_at_ms",
            meta.get("updated_at_ms").map_or("0", String::as_str),
        )?);
        let text = |field: &str| meta.get(field).cloned().unwrap_or_default();
        let default_plan =
            PlanId::parse(text("default_plan")).map_err(|e| corrupt(META, "default_plan", e))?;
        let mut book = PriceBook {
            version,
            updated_at,
            prices_as_of: text("prices_as_of"),
            prices_source: text("prices_source"),
            default_region: text("default_region"),
            default_plan,
            prices: BTreeMap::new(),
            plans: BTreeMap::new(),
            assignments: BTreeMap::new(),
        };
        for (field, bytes) in prices {
            let message =
                pb::ModelPrice::decode(bytes.as_slice()).map_err(|e| corrupt(PRICES, &field, e))?;
            let price = convert::model_price_from_proto(&message, "price")
                .map_err(|e| corrupt(PRICES, &field, e))?;
            book.prices.insert(price.key.clone(), price);
        }
        for (field, bytes) in plans {
            let message =
                pb::Plan::decode(bytes.as_slice()).map_err(|e| corrupt(PLANS, &field, e))?;
            let plan = convert::plan_from_proto(&message, "plan")
                .map_err(|e| corrupt(PLANS, &field, e))?;
            book.plans.insert(plan.id.clone(), plan);
        }
        for (tenant, plan) in assignments {
            let tenant_id =
                TenantId::parse(tenant.clone()).map_err(|e| corrupt(ASSIGNMENTS, &tenant, e))?;
            let plan_id = PlanId::parse(plan).map_err(|e| corrupt(ASSIGNMENTS, &tenant, e))?;
            book.assignments.insert(tenant_id, plan_id);
        }
        let digest = text("seed_digest");
        Ok(Some((book, digest)))
    }

    /// Waits up to `block` for changes after stream id `after`.
    pub async fn read_changes(
        conn: &mut MultiplexedConnection,
        after: &str,
        block: Duration,
    ) -> Result<Vec<ChangeRecord>, StoreError> {
        let options = redis::streams::StreamReadOptions::default()
            .block(usize::try_from(block.as_millis()).unwrap_or(usize::MAX))
            .count(256);
        let reply: Option<redis::streams::StreamReadReply> =
            conn.xread_options(&[CHANGES], &[after], &options).await?;
        let mut records = Vec::new();
        for key in reply.map(|r| r.keys).unwrap_or_default() {
            for entry in key.ids {
                let field = |name: &str| -> Result<Vec<u8>, StoreError> {
                    let value = entry
                        .map
                        .get(name)
                        .ok_or_else(|| corrupt(CHANGES, &entry.id, format!("no {name}")))?;
                    redis::from_redis_value_ref::<Vec<u8>>(value)
                        .map_err(|e| corrupt(CHANGES, &entry.id, e))
                };
                let parse = |name: &str| -> Result<u64, StoreError> {
                    String::from_utf8_lossy(&field(name)?)
                        .parse()
                        .map_err(|e| corrupt(CHANGES, &entry.id, e))
                };
                let change = pb::WatchPriceBookResponse::decode(field("change")?.as_slice())
                    .map_err(|e| corrupt(CHANGES, &entry.id, e))?;
                records.push(ChangeRecord {
                    stream_id: entry.id.clone(),
                    version: parse("version")?,
                    at: millis(parse("at_ms")?),
                    change,
                });
            }
        }
        Ok(records)
    }
}
