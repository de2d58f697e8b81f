//! The sinks' and deliveries' Redis keyspace. Every key carries the hash tag
//! `{al}`, so all of them live in one slot and every multi-key change is ONE
//! Lua script, atomic on one server and on Redis Cluster alike.
//!
//! | key | type | content |
//! |---|---|---|
//! | `{al}:sinks` | hash | `<sink_id>` -> the sink's configuration as JSON (no secret) |
//! | `{al}:sink-secrets` | hash | `<sink_id>` -> its signing secret |
//! | `{al}:sink-state` | hash | `<sink_id>:created_at_ms`, and the health: `<sink_id>:health`, `:consecutive_failures`, `:last_success_at_ms`, `:last_failure_at_ms`, `:last_error` |
//! | `{al}:delivery:<alert_id>` | hash | `enqueued_at_ms`, and per matching sink `<sink_id>:state` (`pending`, `delivered`, `failed`, `suppressed`), `:attempts`, `:last_attempt_at_ms`, `:last_error`; TTL [`DELIVERY_RETENTION`] |
//! | `{al}:delivery-alert:<alert_id>` | string | the alert, protobuf-encoded, while a delivery of it is pending; TTL as above |
//! | `{al}:delivery-due` | sorted set | `<alert_id> <sink_id>` of every pending delivery, scored by when it is due (Unix ms) |
//!
//! Sink ids cannot hold `:` or a space, and alert ids cannot hold a space
//! ([`SinkStore::enqueue`] checks), so `<sink_id>:<field>` and
//! `<alert_id> <sink_id>` split back unambiguously.
//!
//! Claiming: a worker's claim script takes the due members and moves each one's
//! score to `now + claim_timeout`, its lease, so no other replica takes it while
//! the POST is in flight. The finishing script applies the outcome only if the
//! member still holds that lease (a later claim after a lease expired, or a
//! delete meanwhile, wins), so one delivery never has two outcomes.
//!
//! Scripts touch the per-alert keys they derive from the due set's members;
//! those keys are not in `KEYS` (they are not known before the script reads
//! the set), but they carry the same `{al}` tag, so they live in the slot the
//! declared keys pin the script to, which Redis Cluster allows.

use std::collections::HashMap;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use prost::Message as _;
use serde::{Deserialize, Serialize};
use tenantmeter_domain::ids::TenantId;
use tenantmeter_domain::levels::Level;
use tenantmeter_proto::v1 as pb;
use tenantmeter_runtime::clock::Clock;
use tenantmeter_runtime::redis_connection::RedisConnection;

use super::{
    HealthState, Sink, SinkError, SinkHealth, StoredSink, UpsertSink, matches, validate_sink_id,
};
use crate::budgets::{Subject, ms_to_timestamp};

/// Hash of every sink: `<sink_id>` -> configuration JSON, without the secret.
pub const SINKS_KEY: &str = "{al}:sinks";
/// Hash of every sink's signing secret, apart so no read of the
/// configuration can carry one.
pub const SECRETS_KEY: &str = "{al}:sink-secrets";
/// Hash of every sink's creation time and health, `<sink_id>:<field>` -> value.
pub const STATE_KEY: &str = "{al}:sink-state";
/// Sorted set of pending deliveries, `<alert_id> <sink_id>`, scored by due time.
pub const DUE_KEY: &str = "{al}:delivery-due";
/// Prefix of an alert's delivery records, `{al}:delivery:<alert_id>`.
pub const DELIVERY_KEY_PREFIX: &str = "{al}:delivery:";
/// Prefix of an alert's encoded bytes, `{al}:delivery-alert:<alert_id>`.
pub const BODY_KEY_PREFIX: &str = "{al}:delivery-alert:";
/// How long an alert's delivery records are kept after its last change; also
/// how long enqueueing the same alert again is a no-op.
pub const DELIVERY_RETENTION: Duration = Duration::from_secs(30 * 24 * 60 * 60);
/// Longest alert id accepted by [`SinkStore::enqueue`].
pub const MAX_ALERT_ID_LEN: usize = 256;

/// Lua shared by the scripts that remove a sink's pending deliveries (delete,
/// disable): scans the due set, which holds only pending deliveries, so it
/// is small unless receivers are down for long.
macro_rules! lua_prelude {
    () => {
        r"
local function health_fields(id)
  return {id .. ':health', id .. ':consecutive_failures', id .. ':last_success_at_ms',
          id .. ':last_failure_at_ms', id .. ':last_error'}
end
local function drop_pending(due, prefix, id)
  local suffix = ' ' .. id
  local dropped = 0
  for _, member in ipairs(redis.call('ZRANGE', due, 0, -1)) do
    if #member > #suffix and string.sub(member, -#suffix) == suffix then
      redis.call('ZREM', due, member)
      local record = prefix .. string.sub(member, 1, #member - #suffix)
      redis.call('HDEL', record, id .. ':state', id .. ':attempts',
                 id .. ':last_attempt_at_ms', id .. ':last_error')
      dropped = dropped + 1
    end
  end
  return dropped
end
"
    };
}

/// Inserts or replaces a sink. Keeps `created_at`; resets health when a
/// disabled sink is enabled; drops pending deliveries when it is disabled.
/// KEYS: sinks, secrets, state, due. ARGV: sink id, JSON, secret (empty keeps
/// the stored one), now ms, enabled (`1`/`0`), delivery key prefix.
/// Replies `{'secret-required'}`, or `{'ok', <state fields>, secret_set}`.
const UPSERT_V1: &str = concat!(
    "-- tenantmeter alerting sink upsert v1",
    lua_prelude!(),
    r"
local id = ARGV[1]
local old = redis.call('HGET', KEYS[1], id)
if not old then
  if ARGV[3] == '' then return {'secret-required'} end
  redis.call('HDEL', KEYS[3], unpack(health_fields(id)))
  redis.call('HSET', KEYS[3], id .. ':created_at_ms', ARGV[4])
elseif ARGV[5] == '1' and not cjson.decode(old).enabled then
  redis.call('HDEL', KEYS[3], unpack(health_fields(id)))
end
redis.call('HSET', KEYS[1], id, ARGV[2])
if ARGV[3] ~= '' then redis.call('HSET', KEYS[2], id, ARGV[3]) end
if ARGV[5] == '0' then drop_pending(KEYS[4], ARGV[6], id) end
local s = redis.call('HMGET', KEYS[3], id .. ':created_at_ms', unpack(health_fields(id)))
return {'ok', s[1], s[2], s[3], s[4], s[5], s[6], tostring(redis.call('HEXISTS', KEYS[2], id))}
"
);

/// Removes a sink, its secret and state, and its pending deliveries.
/// KEYS: sinks, secrets, state, due. ARGV: sink id, delivery key prefix.
/// Replies 1 when there was one.
const DELETE_V1: &str = concat!(
    "-- tenantmeter alerting sink delete v1",
    lua_prelude!(),
    r"
local id = ARGV[1]
local removed = redis.call('HDEL', KEYS[1], id)
redis.call('HDEL', KEYS[2], id)
redis.call('HDEL', KEYS[3], id .. ':created_at_ms', unpack(health_fields(id)))
drop_pending(KEYS[4], ARGV[2], id)
return removed
"
);

/// One sink with its state, read in one atomic step.
/// KEYS: sinks, secrets, state. ARGV: sink id, `1` to include the secret.
/// Replies `{}` when there is none, else `{json, <state fields>, secret_set[, secret]}`.
const GET_V1: &str = concat!(
    "-- tenantmeter alerting sink get v1",
    lua_prelude!(),
    r"
local id = ARGV[1]
local json = redis.call('HGET', KEYS[1], id)
if not json then return {} end
local s = redis.call('HMGET', KEYS[3], id .. ':created_at_ms', unpack(health_fields(id)))
local secret = redis.call('HGET', KEYS[2], id)
local out = {json, s[1], s[2], s[3], s[4], s[5], s[6], secret and '1' or '0'}
if ARGV[2] == '1' then out[#out + 1] = secret or '' end
return out
"
);

/// Every sink with its state, read in one atomic step.
/// KEYS: sinks, secrets, state. Replies `{HGETALL sinks, HGETALL state, HKEYS secrets}`.
const LIST_V1: &str = r"-- tenantmeter alerting sink list v1
return {redis.call('HGETALL', KEYS[1]), redis.call('HGETALL', KEYS[3]), redis.call('HKEYS', KEYS[2])}
";

/// Records an alert's deliveries, once: a second call for the same alert id
/// (another replica, a retried call) finds the record and does nothing.
/// KEYS: record, alert body, due. ARGV: alert id, alert bytes, now ms,
/// retention s, suppressed (`1`/`0`), sink ids... Replies 1 when new.
const ENQUEUE_V1: &str = r"-- tenantmeter alerting delivery enqueue v1
if redis.call('EXISTS', KEYS[1]) == 1 then return 0 end
local state = 'pending'
if ARGV[5] == '1' then state = 'suppressed' end
redis.call('HSET', KEYS[1], 'enqueued_at_ms', ARGV[3])
for i = 6, #ARGV do
  local id = ARGV[i]
  redis.call('HSET', KEYS[1], id .. ':state', state, id .. ':attempts', 0)
  if state == 'pending' then redis.call('ZADD', KEYS[3], ARGV[3], ARGV[1] .. ' ' .. id) end
end
redis.call('EXPIRE', KEYS[1], ARGV[4])
if state == 'pending' and #ARGV >= 6 then
  redis.call('SET', KEYS[2], ARGV[2], 'EX', ARGV[4])
end
return 1
";

/// Claims up to a batch of due deliveries: each one's attempt is counted and
/// its due time becomes the lease. A due delivery whose sink was deleted or
/// disabled, or whose records expired, is dropped instead.
/// KEYS: due, sinks, secrets. ARGV: now ms, lease ms, batch size, delivery key
/// prefix, alert body key prefix.
/// Replies `{{alert_id, sink_id, attempt, sink JSON, secret, alert bytes}, ...}`.
const CLAIM_V1: &str = r"-- tenantmeter alerting delivery claim v1
local out = {}
local members = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', ARGV[1], 'LIMIT', 0, tonumber(ARGV[3]))
for _, member in ipairs(members) do
  local sep = string.find(member, ' ', 1, true)
  local claimed = false
  if sep then
    local alert_id = string.sub(member, 1, sep - 1)
    local id = string.sub(member, sep + 1)
    local record = ARGV[4] .. alert_id
    local pending = redis.call('HGET', record, id .. ':state') == 'pending'
    local sink = redis.call('HGET', KEYS[2], id)
    local body = redis.call('GET', ARGV[5] .. alert_id)
    if pending and sink and body and cjson.decode(sink).enabled then
      local attempt = redis.call('HINCRBY', record, id .. ':attempts', 1)
      redis.call('HSET', record, id .. ':last_attempt_at_ms', ARGV[1])
      redis.call('ZADD', KEYS[1], ARGV[2], member)
      out[#out + 1] = {alert_id, id, attempt, sink, redis.call('HGET', KEYS[3], id) or '', body}
      claimed = true
    elseif pending then
      redis.call('HDEL', record, id .. ':state', id .. ':attempts',
                 id .. ':last_attempt_at_ms', id .. ':last_error')
    end
  end
  if not claimed then redis.call('ZREM', KEYS[1], member) end
end
return out
";

/// Applies one attempt's outcome, if the caller still holds the lease.
/// `retry` reschedules; `delivered` and `failed` are final: the record is
/// kept for the retention, the sink's health updated (if it still exists),
/// and the alert's bytes dropped once none of its deliveries is pending.
/// KEYS: due, record, alert body, sinks, state. ARGV: member, sink id, lease
/// ms, outcome, now ms, next due ms, error, retention s.
/// Replies 1 when applied, 0 when the lease was lost.
const FINISH_V1: &str = r"-- tenantmeter alerting delivery finish v1
local score = redis.call('ZSCORE', KEYS[1], ARGV[1])
if not score or tonumber(score) ~= tonumber(ARGV[3]) then return 0 end
if redis.call('EXISTS', KEYS[2]) == 0 then
  redis.call('ZREM', KEYS[1], ARGV[1])
  return 0
end
local id = ARGV[2]
local outcome = ARGV[4]
if outcome == 'retry' then
  redis.call('HSET', KEYS[2], id .. ':last_error', ARGV[7])
  redis.call('ZADD', KEYS[1], ARGV[6], ARGV[1])
  return 1
end
redis.call('ZREM', KEYS[1], ARGV[1])
redis.call('HSET', KEYS[2], id .. ':state', outcome)
if outcome == 'failed' then redis.call('HSET', KEYS[2], id .. ':last_error', ARGV[7]) end
redis.call('EXPIRE', KEYS[2], ARGV[8])
local fields = redis.call('HGETALL', KEYS[2])
local pending = false
for i = 1, #fields, 2 do
  if string.sub(fields[i], -6) == ':state' and fields[i + 1] == 'pending' then pending = true end
end
if not pending then redis.call('DEL', KEYS[3]) end
if redis.call('HEXISTS', KEYS[4], id) == 1 then
  if outcome == 'delivered' then
    redis.call('HSET', KEYS[5], id .. ':health', 'healthy', id .. ':consecutive_failures', 0,
               id .. ':last_success_at_ms', ARGV[5])
  else
    redis.call('HINCRBY', KEYS[5], id .. ':consecutive_failures', 1)
    redis.call('HSET', KEYS[5], id .. ':health', 'failing', id .. ':last_failure_at_ms', ARGV[5],
               id .. ':last_error', ARGV[7])
  end
end
return 1
";

/// The due-set member of a delivery: `<alert_id> <sink_id>`.
#[must_use]
pub fn due_member(alert_id: &str, sink_id: &str) -> String {
    format!("{alert_id} {sink_id}")
}

/// `duration` in ms, saturating.
pub(crate) fn duration_ms(duration: Duration) -> i64 {
    i64::try_from(duration.as_millis()).unwrap_or(i64::MAX)
}

/// What [`SinkStore::enqueue`] did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct EnqueueOutcome {
    /// The alert had been enqueued before (by this or another replica), so
    /// nothing was created.
    pub already_enqueued: bool,
    /// Deliveries created pending, one per matching sink.
    pub pending: usize,
    /// Deliveries created suppressed (the alert's subject was silenced).
    pub suppressed: usize,
}

/// A delivery a worker claimed: everything its attempt needs.
#[derive(Debug)]
pub(crate) struct Claimed {
    pub(crate) alert_id: String,
    pub(crate) sink: Sink,
    /// This attempt's number, from 1.
    pub(crate) attempt: u32,
    pub(crate) secret: String,
    /// The protobuf-encoded alert.
    pub(crate) alert: Vec<u8>,
    /// The due score the claim set; the finish must present it.
    pub(crate) lease_ms: i64,
}

/// The outcome of one attempt, as [`SinkStore::finish`] records it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Finish {
    /// 2xx: done.
    Delivered,
    /// Failed; try again at `due_ms`.
    Retry { due_ms: i64, error: String },
    /// Failed, and it was the last attempt.
    Failed { error: String },
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
enum StoredSubject {
    Fleet,
    TenantId(String),
}

/// The JSON of one sink. Its own type, not `Sink`, so the stored format
/// changes only on purpose. `enabled` is always written: the scripts read it.
#[derive(Debug, Serialize, Deserialize)]
struct SinkRecord {
    sink_id: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    display_name: String,
    webhook_url: String,
    enabled: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    min_level: Option<Level>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    subjects: Vec<StoredSubject>,
    updated_at_ms: i64,
}

fn encode(sink: &Sink, updated_at_ms: i64) -> Result<String, SinkError> {
    let record = SinkRecord {
        sink_id: sink.sink_id.clone(),
        display_name: sink.display_name.clone(),
        webhook_url: sink.webhook_url.clone(),
        enabled: sink.enabled,
        min_level: sink.min_level,
        subjects: sink
            .subjects
            .iter()
            .map(|s| match s {
                Subject::Fleet => StoredSubject::Fleet,
                Subject::Tenant(id) => StoredSubject::TenantId(id.as_str().to_owned()),
            })
            .collect(),
        updated_at_ms,
    };
    serde_json::to_string(&record).map_err(|e| SinkError::Corrupt(format!("encoding: {e}")))
}

/// The sink and its `updated_at_ms` from its record under `sink_id`.
fn decode(sink_id: &str, json: &str) -> Result<(Sink, i64), SinkError> {
    let corrupt = |why: String| SinkError::Corrupt(format!("sink {sink_id:?}: {why}"));
    let record: SinkRecord = serde_json::from_str(json).map_err(|e| corrupt(e.to_string()))?;
    // A record under another sink's field would be delivered and deleted
    // under the wrong name: refuse it rather than guess.
    if record.sink_id != sink_id {
        return Err(corrupt("record does not match its field".to_owned()));
    }
    let subjects = record
        .subjects
        .into_iter()
        .map(|s| match s {
            StoredSubject::Fleet => Ok(Subject::Fleet),
            StoredSubject::TenantId(id) => TenantId::parse(id)
                .map(Subject::Tenant)
                .map_err(|e| corrupt(e.to_string())),
        })
        .collect::<Result<Vec<_>, _>>()?;
    let sink = Sink {
        sink_id: record.sink_id,
        display_name: record.display_name,
        webhook_url: record.webhook_url,
        enabled: record.enabled,
        min_level: record.min_level,
        subjects,
    };
    Ok((sink, record.updated_at_ms))
}

/// Names of a sink's state fields, in the order the scripts reply them.
const STATE_FIELDS: [&str; 6] = [
    "created_at_ms",
    "health",
    "consecutive_failures",
    "last_success_at_ms",
    "last_failure_at_ms",
    "last_error",
];

/// `created_at_ms` and health from the state fields, in [`STATE_FIELDS`] order.
fn decode_state(sink_id: &str, values: &[Option<String>]) -> Result<(i64, SinkHealth), SinkError> {
    let corrupt = |why: String| SinkError::Corrupt(format!("sink {sink_id:?} state: {why}"));
    let get = |i: usize| values.get(i).and_then(Option::as_deref);
    let int = |i: usize| -> Result<Option<i64>, SinkError> {
        get(i)
            .map(|v| {
                v.parse::<i64>()
                    .map_err(|_| corrupt(format!("{} is {v:?}", STATE_FIELDS[i])))
            })
            .transpose()
    };
    let created_at_ms = int(0)?.unwrap_or(0);
    let state = match get(1) {
        None => HealthState::Unknown,
        Some("healthy") => HealthState::Healthy,
        Some("failing") => HealthState::Failing,
        Some(other) => return Err(corrupt(format!("health is {other:?}"))),
    };
    let failures = int(2)?.unwrap_or(0);
    let health = SinkHealth {
        state,
        consecutive_failures: u32::try_from(failures.max(0)).unwrap_or(u32::MAX),
        last_success_at_ms: int(3)?,
        last_failure_at_ms: int(4)?,
        last_error: get(5).unwrap_or_default().to_owned(),
    };
    Ok((created_at_ms, health))
}

/// Checks an alert id before it becomes part of keys and due-set members.
fn validate_alert_id(alert_id: &str) -> Result<(), SinkError> {
    if alert_id.is_empty() {
        return Err(SinkError::invalid(
            "alert.alert_id",
            "must not be empty: only raised alerts are notified",
        ));
    }
    if alert_id.len() > MAX_ALERT_ID_LEN {
        return Err(SinkError::invalid(
            "alert.alert_id",
            format!("is longer than {MAX_ALERT_ID_LEN} bytes"),
        ));
    }
    if alert_id
        .chars()
        .any(|c| c.is_whitespace() || c.is_control())
    {
        return Err(SinkError::invalid(
            "alert.alert_id",
            "must not contain whitespace or control characters",
        ));
    }
    Ok(())
}

/// Sinks and the delivery queue in Redis. Cheap to clone (clones share the
/// connection and the clock).
#[derive(Debug, Clone)]
pub struct SinkStore {
    conn: RedisConnection,
    timeout: Duration,
    /// Source of every timestamp the store writes (created/updated, due times).
    clock: Arc<dyn Clock>,
    upsert: redis::Script,
    delete: redis::Script,
    get: redis::Script,
    list: redis::Script,
    enqueue: redis::Script,
    claim: redis::Script,
    finish: redis::Script,
}

impl SinkStore {
    /// Connects to one server (`urls` has one entry) or to a cluster (any
    /// number of seed nodes). Every later call is bounded by `timeout`.
    ///
    /// # Errors
    /// [`SinkError::Redis`] or [`SinkError::Timeout`] when Redis cannot be
    /// reached.
    pub async fn connect(
        urls: &[String],
        cluster: bool,
        timeout: Duration,
        clock: Arc<dyn Clock>,
    ) -> Result<Self, SinkError> {
        let conn = bounded(timeout, RedisConnection::connect(urls, cluster, timeout)).await?;
        Ok(Self::new(conn, timeout, clock))
    }

    /// A store on an existing connection (a service shares one connection
    /// among its stores).
    #[must_use]
    pub fn new(conn: RedisConnection, timeout: Duration, clock: Arc<dyn Clock>) -> Self {
        Self {
            conn,
            timeout,
            clock,
            upsert: redis::Script::new(UPSERT_V1),
            delete: redis::Script::new(DELETE_V1),
            get: redis::Script::new(GET_V1),
            list: redis::Script::new(LIST_V1),
            enqueue: redis::Script::new(ENQUEUE_V1),
            claim: redis::Script::new(CLAIM_V1),
            finish: redis::Script::new(FINISH_V1),
        }
    }

    /// The clock the store stamps times with.
    #[must_use]
    pub fn clock(&self) -> &Arc<dyn Clock> {
        &self.clock
    }

    fn now_ms(&self) -> i64 {
        tenantmeter_runtime::clock::unix_ms(self.clock.now())
    }

    /// Inserts or replaces a sink (keyed by sink id) and returns it as stored.
    /// `updated_at` is now; `created_at` is kept from the first insert.
    /// Re-enabling a disabled sink resets its health; disabling it drops its
    /// pending deliveries. An upsert without a secret keeps the stored one.
    ///
    /// # Errors
    /// [`SinkError::Invalid`] naming `secret` when creating a sink without
    /// one, or a `sink.*` field (see [`Sink::validate`]); Redis.
    pub async fn upsert(&self, upsert: &UpsertSink) -> Result<StoredSink, SinkError> {
        let sink = &upsert.sink;
        sink.validate()?;
        let now_ms = self.now_ms();
        let json = encode(sink, now_ms)?;
        let secret = upsert.secret.as_ref().map_or("", |s| s.as_str());
        let mut conn = self.conn.clone();
        let mut invocation = self.upsert.key(SINKS_KEY);
        invocation
            .key(SECRETS_KEY)
            .key(STATE_KEY)
            .key(DUE_KEY)
            .arg(&sink.sink_id)
            .arg(&json)
            .arg(secret)
            .arg(now_ms)
            .arg(if sink.enabled { "1" } else { "0" })
            .arg(DELIVERY_KEY_PREFIX);
        let reply: Vec<Option<String>> =
            bounded(self.timeout, invocation.invoke_async(&mut conn)).await?;
        match reply.first().and_then(Option::as_deref) {
            Some("secret-required") => Err(SinkError::invalid(
                "secret",
                "is required when creating a sink (at least 32 bytes)",
            )),
            Some("ok") if reply.len() == 8 => {
                let (created_at_ms, health) = decode_state(&sink.sink_id, &reply[1..7])?;
                Ok(StoredSink {
                    sink: sink.clone(),
                    secret_set: reply[7].as_deref() == Some("1"),
                    health,
                    created_at_ms,
                    updated_at_ms: now_ms,
                })
            }
            _ => Err(SinkError::Corrupt(format!(
                "unexpected upsert reply {reply:?}"
            ))),
        }
    }

    /// One sink with its health.
    ///
    /// # Errors
    /// [`SinkError::NotFound`]; a malformed id naming `sink_id`; Redis; a
    /// corrupt record.
    pub async fn get(&self, sink_id: &str) -> Result<StoredSink, SinkError> {
        self.get_with_secret(sink_id, false)
            .await
            .map(|(sink, _)| sink)
    }

    /// The sink and its secret, for sending to it.
    pub(crate) async fn target(&self, sink_id: &str) -> Result<(StoredSink, String), SinkError> {
        self.get_with_secret(sink_id, true).await
    }

    async fn get_with_secret(
        &self,
        sink_id: &str,
        with_secret: bool,
    ) -> Result<(StoredSink, String), SinkError> {
        validate_sink_id(sink_id, "sink_id")?;
        let mut conn = self.conn.clone();
        let mut invocation = self.get.key(SINKS_KEY);
        invocation
            .key(SECRETS_KEY)
            .key(STATE_KEY)
            .arg(sink_id)
            .arg(if with_secret { "1" } else { "0" });
        let reply: Vec<Option<String>> =
            bounded(self.timeout, invocation.invoke_async(&mut conn)).await?;
        let Some(Some(json)) = reply.first() else {
            return Err(SinkError::NotFound(sink_id.to_owned()));
        };
        let expected = if with_secret { 9 } else { 8 };
        if reply.len() != expected {
            return Err(SinkError::Corrupt(format!(
                "sink {sink_id:?}: unexpected reply length {}",
                reply.len()
            )));
        }
        let (sink, updated_at_ms) = decode(sink_id, json)?;
        let (created_at_ms, health) = decode_state(sink_id, &reply[1..7])?;
        let secret = reply.get(8).cloned().flatten().unwrap_or_default();
        Ok((
            StoredSink {
                sink,
                secret_set: reply[7].as_deref() == Some("1"),
                health,
                created_at_ms,
                updated_at_ms,
            },
            secret,
        ))
    }

    /// Every sink with its health, ordered by sink id (ListSinks). Sinks are
    /// configuration-sized, so one atomic read of all of them is cheap.
    ///
    /// # Errors
    /// Redis, or a corrupt record.
    pub async fn list(&self) -> Result<Vec<StoredSink>, SinkError> {
        let mut conn = self.conn.clone();
        let mut invocation = self.list.key(SINKS_KEY);
        invocation.key(SECRETS_KEY).key(STATE_KEY);
        let (sinks, state, secrets): (Vec<String>, Vec<String>, Vec<String>) =
            bounded(self.timeout, invocation.invoke_async(&mut conn)).await?;
        let state: HashMap<&str, &str> = pairs(&state).collect();
        let mut out = pairs(&sinks)
            .map(|(sink_id, json)| {
                let (sink, updated_at_ms) = decode(sink_id, json)?;
                let values: Vec<Option<String>> = STATE_FIELDS
                    .iter()
                    .map(|field| {
                        state
                            .get(format!("{sink_id}:{field}").as_str())
                            .map(|v| (*v).to_owned())
                    })
                    .collect();
                let (created_at_ms, health) = decode_state(sink_id, &values)?;
                Ok(StoredSink {
                    secret_set: secrets.iter().any(|s| s == sink_id),
                    sink,
                    health,
                    created_at_ms,
                    updated_at_ms,
                })
            })
            .collect::<Result<Vec<_>, SinkError>>()?;
        out.sort_unstable_by(|a, b| a.sink.sink_id.cmp(&b.sink.sink_id));
        Ok(out)
    }

    /// Removes a sink, its secret and health, and drops its pending
    /// deliveries (finished ones stay in their alerts' history). False when
    /// there was none.
    ///
    /// # Errors
    /// A malformed id naming `sink_id`; Redis.
    pub async fn delete(&self, sink_id: &str) -> Result<bool, SinkError> {
        validate_sink_id(sink_id, "sink_id")?;
        let mut conn = self.conn.clone();
        let mut invocation = self.delete.key(SINKS_KEY);
        invocation
            .key(SECRETS_KEY)
            .key(STATE_KEY)
            .key(DUE_KEY)
            .arg(sink_id)
            .arg(DELIVERY_KEY_PREFIX);
        let removed: i64 = bounded(self.timeout, invocation.invoke_async(&mut conn)).await?;
        Ok(removed > 0)
    }

    /// Records `alert`'s notifications: one delivery per matching sink (see
    /// [`matches()`]), pending and due now, or suppressed when the alert carries
    /// `silenced_until`. Called once per raised alert by whichever replica
    /// raised it; idempotent: a second call for the same alert id, from any
    /// replica, creates nothing (within [`DELIVERY_RETENTION`]). The alert's
    /// encoded bytes are kept with its deliveries, so the worker needs no
    /// other store; its `deliveries` field is cleared first.
    ///
    /// A sink upserted or deleted while this runs may be missed or included;
    /// a delivery to a sink since deleted or disabled is dropped when due.
    ///
    /// # Errors
    /// [`SinkError::Invalid`] naming `alert.alert_id` (empty, longer than
    /// [`MAX_ALERT_ID_LEN`], whitespace); Redis; a corrupt sink record.
    pub async fn enqueue(&self, alert: &pb::Alert) -> Result<EnqueueOutcome, SinkError> {
        let outcomes = self.enqueue_all(std::slice::from_ref(alert)).await?;
        Ok(outcomes.into_iter().next().unwrap_or_default())
    }

    /// [`Self::enqueue`] for each of `alerts`, reading the sinks once and
    /// sending the alerts' scripts together (a pass that raises thousands of
    /// alerts hands them over in a few round trips, not two each). Outcomes
    /// in `alerts`' order. Every id is checked before anything is recorded;
    /// on a Redis failure some alerts may be recorded, which a retry of the
    /// same alerts completes (enqueueing is idempotent).
    ///
    /// # Errors
    /// As [`Self::enqueue`].
    pub async fn enqueue_all(
        &self,
        alerts: &[pb::Alert],
    ) -> Result<Vec<EnqueueOutcome>, SinkError> {
        /// Scripts in flight at once: enough to fill the pipe, few enough
        /// not to starve the pass's other Redis calls.
        const IN_FLIGHT: usize = 128;
        use futures::StreamExt as _;
        for alert in alerts {
            validate_alert_id(&alert.alert_id)?;
        }
        if alerts.is_empty() {
            return Ok(Vec::new());
        }
        let sinks = self.configs().await?;
        let now_ms = self.now_ms();
        // Collected first: a lazy map's closure inside the stream would make
        // the pass's future not provably Send.
        let calls: Vec<_> = alerts
            .iter()
            .map(|alert| {
                let matching: Vec<&str> = sinks
                    .iter()
                    .filter(|sink| matches(sink, alert))
                    .map(|sink| sink.sink_id.as_str())
                    .collect();
                let suppressed = alert.silenced_until.is_some();
                let mut stored = alert.clone();
                stored.deliveries.clear();
                let mut invocation = self
                    .enqueue
                    .key(format!("{DELIVERY_KEY_PREFIX}{}", alert.alert_id));
                invocation
                    .key(format!("{BODY_KEY_PREFIX}{}", alert.alert_id))
                    .key(DUE_KEY)
                    .arg(&alert.alert_id)
                    .arg(stored.encode_to_vec())
                    .arg(now_ms)
                    .arg(DELIVERY_RETENTION.as_secs())
                    .arg(if suppressed { "1" } else { "0" })
                    .arg(&matching);
                let sinks_matched = matching.len();
                let mut conn = self.conn.clone();
                async move {
                    let created: i64 =
                        bounded(self.timeout, invocation.invoke_async(&mut conn)).await?;
                    Ok::<_, SinkError>(match (created > 0, suppressed) {
                        (false, _) => EnqueueOutcome {
                            already_enqueued: true,
                            ..EnqueueOutcome::default()
                        },
                        (true, false) => EnqueueOutcome {
                            pending: sinks_matched,
                            ..EnqueueOutcome::default()
                        },
                        (true, true) => EnqueueOutcome {
                            suppressed: sinks_matched,
                            ..EnqueueOutcome::default()
                        },
                    })
                }
            })
            .collect();
        futures::stream::iter(calls)
            .buffered(IN_FLIGHT)
            .collect::<Vec<_>>()
            .await
            .into_iter()
            .collect()
    }

    /// Every sink's configuration, unordered, for matching.
    async fn configs(&self) -> Result<Vec<Sink>, SinkError> {
        let mut conn = self.conn.clone();
        let rows: Vec<(String, String)> = bounded(
            self.timeout,
            redis::cmd("HGETALL").arg(SINKS_KEY).query_async(&mut conn),
        )
        .await?;
        rows.iter()
            .map(|(sink_id, json)| decode(sink_id, json).map(|(sink, _)| sink))
            .collect()
    }

    /// The deliveries of each alert in `alert_ids`, ordered by sink id, for
    /// `Alert.deliveries`. Every id asked gets an entry, empty when the alert
    /// had no matching sink, was never enqueued, or its records expired.
    ///
    /// # Errors
    /// Redis, or a corrupt record.
    pub async fn deliveries(
        &self,
        alert_ids: &[String],
    ) -> Result<HashMap<String, Vec<pb::AlertDelivery>>, SinkError> {
        if alert_ids.is_empty() {
            return Ok(HashMap::new());
        }
        let mut pipe = redis::pipe();
        for alert_id in alert_ids {
            pipe.cmd("HGETALL")
                .arg(format!("{DELIVERY_KEY_PREFIX}{alert_id}"));
        }
        let mut conn = self.conn.clone();
        let records: Vec<HashMap<String, String>> =
            bounded(self.timeout, pipe.query_async(&mut conn)).await?;
        alert_ids
            .iter()
            .zip(records)
            .map(|(alert_id, record)| Ok((alert_id.clone(), decode_deliveries(alert_id, &record)?)))
            .collect()
    }

    /// Claims up to `batch` deliveries due at `now_ms`, leasing each until
    /// `lease_ms`.
    pub(crate) async fn claim(
        &self,
        now_ms: i64,
        lease_ms: i64,
        batch: u32,
    ) -> Result<Vec<Claimed>, SinkError> {
        let mut conn = self.conn.clone();
        let mut invocation = self.claim.key(DUE_KEY);
        invocation
            .key(SINKS_KEY)
            .key(SECRETS_KEY)
            .arg(now_ms)
            .arg(lease_ms)
            .arg(batch)
            .arg(DELIVERY_KEY_PREFIX)
            .arg(BODY_KEY_PREFIX);
        let rows: Vec<(String, String, i64, String, String, Vec<u8>)> =
            bounded(self.timeout, invocation.invoke_async(&mut conn)).await?;
        rows.into_iter()
            .map(|(alert_id, sink_id, attempt, json, secret, alert)| {
                let (sink, _) = decode(&sink_id, &json)?;
                Ok(Claimed {
                    alert_id,
                    sink,
                    attempt: u32::try_from(attempt.max(1)).unwrap_or(u32::MAX),
                    secret,
                    alert,
                    lease_ms,
                })
            })
            .collect()
    }

    /// Records the outcome of `claimed`'s attempt at `now_ms`. False when the
    /// lease was lost (the sink was deleted or disabled meanwhile, or the
    /// lease expired and another replica claimed the delivery): nothing is
    /// recorded then.
    pub(crate) async fn finish(
        &self,
        claimed: &Claimed,
        outcome: &Finish,
        now_ms: i64,
    ) -> Result<bool, SinkError> {
        let (name, due_ms, error) = match outcome {
            Finish::Delivered => ("delivered", 0, ""),
            Finish::Retry { due_ms, error } => ("retry", *due_ms, error.as_str()),
            Finish::Failed { error } => ("failed", 0, error.as_str()),
        };
        let mut conn = self.conn.clone();
        let mut invocation = self.finish.key(DUE_KEY);
        invocation
            .key(format!("{DELIVERY_KEY_PREFIX}{}", claimed.alert_id))
            .key(format!("{BODY_KEY_PREFIX}{}", claimed.alert_id))
            .key(SINKS_KEY)
            .key(STATE_KEY)
            .arg(due_member(&claimed.alert_id, &claimed.sink.sink_id))
            .arg(&claimed.sink.sink_id)
            .arg(claimed.lease_ms)
            .arg(name)
            .arg(now_ms)
            .arg(due_ms)
            .arg(error)
            .arg(DELIVERY_RETENTION.as_secs());
        let applied: i64 = bounded(self.timeout, invocation.invoke_async(&mut conn)).await?;
        Ok(applied > 0)
    }
}

/// `[k1, v1, k2, v2, ...]` as pairs.
fn pairs(flat: &[String]) -> impl Iterator<Item = (&str, &str)> {
    flat.chunks_exact(2)
        .map(|kv| (kv[0].as_str(), kv[1].as_str()))
}

/// The `AlertDelivery`s in one alert's record hash, ordered by sink id.
fn decode_deliveries(
    alert_id: &str,
    record: &HashMap<String, String>,
) -> Result<Vec<pb::AlertDelivery>, SinkError> {
    let corrupt = |why: String| SinkError::Corrupt(format!("deliveries of {alert_id:?}: {why}"));
    let mut by_sink: HashMap<&str, pb::AlertDelivery> = HashMap::new();
    for (field, value) in record {
        // `enqueued_at_ms` has no sink part; sink ids cannot hold ':'.
        let Some((sink_id, name)) = field.rsplit_once(':') else {
            continue;
        };
        let delivery = by_sink.entry(sink_id).or_insert_with(|| pb::AlertDelivery {
            sink_id: sink_id.to_owned(),
            ..pb::AlertDelivery::default()
        });
        match name {
            "state" => {
                delivery.state = match value.as_str() {
                    "pending" => pb::DeliveryState::Pending,
                    "delivered" => pb::DeliveryState::Delivered,
                    "failed" => pb::DeliveryState::Failed,
                    "suppressed" => pb::DeliveryState::Suppressed,
                    other => return Err(corrupt(format!("{field} is {other:?}"))),
                }
                .into();
            }
            "attempts" => {
                delivery.attempts = value
                    .parse()
                    .map_err(|_| corrupt(format!("{field} is {value:?}")))?;
            }
            "last_attempt_at_ms" => {
                let ms: i64 = value
                    .parse()
                    .map_err(|_| corrupt(format!("{field} is {value:?}")))?;
                delivery.last_attempt_at = Some(ms_to_timestamp(ms));
            }
            "last_error" => delivery.last_error.clone_from(value),
            other => return Err(corrupt(format!("unknown field {other:?}"))),
        }
    }
    let mut deliveries: Vec<pb::AlertDelivery> = by_sink
        .into_values()
        // A state-less leftover cannot be written by these scripts; skip it
        // rather than report a delivery in no state.
        .filter(|d| d.state != i32::from(pb::DeliveryState::Unspecified))
        .collect();
    deliveries.sort_unstable_by(|a, b| a.sink_id.cmp(&b.sink_id));
    Ok(deliveries)
}

/// `call` bounded by `timeout`: a Redis that hangs (a partition, a stuck
/// failover) must become an UNAVAILABLE answer or a skipped worker pass,
/// never a hung RPC.
async fn bounded<T>(
    timeout: Duration,
    call: impl Future<Output = Result<T, redis::RedisError>>,
) -> Result<T, SinkError> {
    match tokio::time::timeout(timeout, call).await {
        Ok(result) => Ok(result?),
        Err(_elapsed) => Err(SinkError::Timeout(timeout)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sink_records_round_trip() {
        let sink = Sink {
            sink_id: "ops.pager".to_owned(),
            display_name: "Ops \"pager\"".to_owned(),
            webhook_url: "https://hooks.example.com/x?a=1".to_owned(),
            enabled: false,
            min_level: Some(Level::Orange),
            subjects: vec![
                Subject::Fleet,
                Subject::Tenant(TenantId::parse("acme").unwrap()),
            ],
        };
        let json = encode(&sink, 42).unwrap();
        assert!(json.contains(r#""enabled":false"#), "{json}");
        assert_eq!(decode("ops.pager", &json).unwrap(), (sink, 42));
        assert!(matches!(decode("other", &json), Err(SinkError::Corrupt(_))));
    }

    #[test]
    fn alert_ids_that_would_break_members_are_refused() {
        for id in ["", "a b", "a\tb", "a\nb"] {
            assert_eq!(
                validate_alert_id(id).unwrap_err().field(),
                Some("alert.alert_id")
            );
        }
        validate_alert_id("01JH6Z.x_y-z~").unwrap();
    }
}
