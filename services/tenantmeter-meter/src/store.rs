//! The meter's Redis keyspace behind verbs of the domain: record, reserve,
//! settle, release, usage, history, policies. Every write is one script call on
//! the tenant's slot ([`crate::scripts`]); reads are pipelined.

use std::collections::{BTreeMap, HashMap};
use std::time::Duration;

use redis::Value;
use tenantmeter_domain::ids::TenantId;
use tenantmeter_domain::usage::TokenUsage;
use tenantmeter_domain::window::{CalendarPeriod, Window, day_index, hour_index, month_index};

use crate::scripts;

/// A failure to reach or use Redis.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// Redis answered with an error, or the connection failed.
    #[error("redis: {0}")]
    Redis(#[from] redis::RedisError),
    /// Redis did not answer within the call's deadline.
    #[error("redis did not answer within {0:?}")]
    Timeout(Duration),
    /// A reply had an unexpected shape (a script and the code disagree).
    #[error("unexpected reply from redis: {0}")]
    Reply(String),
}

/// The meter's connection: one server or a cluster.
pub use tenantmeter_runtime::redis_connection::RedisConnection as Connection;

/// Retention and dedupe settings the scripts need.
#[derive(Debug, Clone, Copy)]
pub struct Retention {
    /// How long an event id is remembered, seconds (lateness + skew + margin).
    pub dedupe_s: u64,
    /// How long hourly rollups are kept after their hour, seconds.
    pub hourly_s: u64,
    /// How long daily and monthly rollups are kept after their period, seconds.
    pub daily_s: u64,
}

/// What one event adds, ready for Redis.
#[derive(Debug, Clone)]
pub struct StoredEvent {
    /// Event id (dedupe key).
    pub id: String,
    /// Model id (per-model figures).
    pub model: String,
    /// Event time, ms.
    pub time_ms: i64,
    /// Tokens.
    pub usage: TokenUsage,
    /// Provider cost, pico-USD.
    pub cost_pico: i128,
    /// Rated value under the tenant's plan, pico-USD.
    pub rated_pico: i128,
}

impl StoredEvent {
    fn push_args(&self, args: &mut Vec<String>) {
        args.extend([
            self.id.clone(),
            self.model.clone(),
            self.time_ms.to_string(),
            self.usage.input.to_string(),
            self.usage.output.to_string(),
            self.usage.cache_read.to_string(),
            self.usage.cache_write.to_string(),
            self.cost_pico.to_string(),
            self.rated_pico.to_string(),
        ]);
    }
}

/// Figures of some usage.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Figures {
    /// Events.
    pub requests: u64,
    /// Tokens per kind.
    pub tokens: TokenUsage,
    /// Provider cost, pico-USD.
    pub cost_pico: i128,
    /// Rated value, pico-USD.
    pub rated_pico: i128,
}

impl Figures {
    /// Adds one metric's value by its stored name.
    fn add(&mut self, metric: &str, value: i128) {
        let tokens = |v: i128| u64::try_from(v).unwrap_or(0);
        match metric {
            "r" => self.requests = self.requests.saturating_add(tokens(value)),
            "i" => self.tokens.input = self.tokens.input.saturating_add(tokens(value)),
            "o" => self.tokens.output = self.tokens.output.saturating_add(tokens(value)),
            "cr" => self.tokens.cache_read = self.tokens.cache_read.saturating_add(tokens(value)),
            "cw" => self.tokens.cache_write = self.tokens.cache_write.saturating_add(tokens(value)),
            "c" => self.cost_pico += value,
            "rv" => self.rated_pico += value,
            _ => {}
        }
    }

    /// Adds another set of figures.
    pub fn merge(&mut self, other: &Self) {
        self.requests = self.requests.saturating_add(other.requests);
        self.tokens = self
            .tokens
            .checked_add(&other.tokens)
            .unwrap_or(self.tokens);
        self.cost_pico += other.cost_pico;
        self.rated_pico += other.rated_pico;
    }

    /// Whether nothing was counted.
    pub fn is_empty(&self) -> bool {
        *self == Self::default()
    }
}

/// A rollup hash: totals and per-model figures.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Rollup {
    /// All models.
    pub total: Figures,
    /// Per model id.
    pub models: BTreeMap<String, Figures>,
}

fn parse_rollup(fields: HashMap<String, String>) -> Rollup {
    let mut rollup = Rollup::default();
    for (field, value) in fields {
        let Ok(value) = value.parse::<i128>() else {
            continue;
        };
        match field.rsplit_once('|') {
            Some((model, metric)) => rollup
                .models
                .entry(model.to_owned())
                .or_default()
                .add(metric, value),
            None => rollup.total.add(&field, value),
        }
    }
    rollup
}

/// The metric names of a rollup's totals, as the scripts write them.
const TOTAL_METRICS: [&str; 7] = ["r", "i", "o", "cr", "cw", "c", "rv"];

/// A rollup's totals from an `HMGET` of [`TOTAL_METRICS`] (the per-model
/// fields are not read when no one asked for them).
fn parse_totals(values: &[Option<String>]) -> Rollup {
    let mut rollup = Rollup::default();
    for (metric, value) in TOTAL_METRICS.iter().zip(values) {
        if let Some(value) = value.as_deref().and_then(|v| v.parse::<i128>().ok()) {
            rollup.total.add(metric, value);
        }
    }
    rollup
}

/// The field/value pairs of an `HGETALL` reply, borrowed from it: the
/// listing reads one per tenant per pass, and a map of owned strings cost
/// three allocations per field.
fn hash_fields(reply: &Value) -> Result<Vec<(&str, &str)>, StoreError> {
    fn text(value: &Value) -> Result<&str, StoreError> {
        if let Value::BulkString(bytes) = value {
            std::str::from_utf8(bytes)
                .map_err(|_| StoreError::Reply("a hash field is not UTF-8".to_owned()))
        } else if let Value::SimpleString(text) = value {
            Ok(text)
        } else {
            Err(StoreError::Reply(format!(
                "expected a hash field, got {value:?}"
            )))
        }
    }
    if let Value::Array(items) = reply {
        if items.len() % 2 != 0 {
            return Err(StoreError::Reply("a hash reply of odd length".to_owned()));
        }
        items
            .chunks_exact(2)
            .map(|pair| Ok((text(&pair[0])?, text(&pair[1])?)))
            .collect()
    } else if let Value::Map(pairs) = reply {
        pairs
            .iter()
            .map(|(field, value)| Ok((text(field)?, text(value)?)))
            .collect()
    } else if let Value::Nil = reply {
        Ok(Vec::new())
    } else {
        Err(StoreError::Reply(format!("expected a hash, got {reply:?}")))
    }
}

/// Sums the ring slots of a window hash that fall in the window at `now_ms`.
fn sum_window(window: Window, now_ms: i64, fields: &[(&str, &str)]) -> Figures {
    // One walk over the fields the ring holds (a quiet tenant's are few),
    // not a lookup of every slot x metric of the window: ListTenantUsage runs
    // this for every tenant of the fleet.
    let covered = window.covered(now_ms);
    let mut live = [false; RING_SLOTS];
    for (field, value) in fields {
        if let Some(slot) = field.strip_suffix(".s")
            && let (Ok(slot), Ok(bucket)) = (slot.parse::<i64>(), value.parse::<i64>())
            && covered.contains(&bucket)
            && Window::slot(bucket) == slot
            && let Some(flag) = usize::try_from(slot).ok().and_then(|i| live.get_mut(i))
        {
            *flag = true;
        }
    }
    let mut figures = Figures::default();
    for (field, value) in fields {
        let Some((slot, metric)) = field.split_once('.') else {
            continue;
        };
        if metric == "s" {
            continue;
        }
        let is_live = slot
            .parse::<usize>()
            .ok()
            .and_then(|i| live.get(i))
            .copied()
            .unwrap_or(false);
        if is_live && let Ok(value) = value.parse::<i128>() {
            figures.add(metric, value);
        }
    }
    figures
}

/// Adds the reads of a tenant's usage at `now_ms` to `pipe`: day, month
/// (totals only unless `include_models`), last event, in flight and its
/// expired leases, then each wanted window. Returns how many commands.
fn usage_reads(
    pipe: &mut redis::Pipeline,
    tenant: &TenantId,
    now_ms: i64,
    include_models: bool,
    wanted: &[Window],
) -> usize {
    let base = tenant_key(tenant);
    let day_key = format!("{base}:d:{}", day_index(now_ms));
    let month_key = format!("{base}:mo:{}", month_index(now_ms));
    if include_models {
        pipe.hgetall(&day_key).hgetall(&month_key);
    } else {
        pipe.cmd("HMGET").arg(&day_key).arg(&TOTAL_METRICS[..]);
        pipe.cmd("HMGET").arg(&month_key).arg(&TOTAL_METRICS[..]);
    }
    pipe.hget(format!("{base}:meta"), "last")
        // In flight, read in the same round trip; the purging script runs
        // only when a lease has run out unreleased (rare), which is all it
        // would change.
        .cmd("HMGET")
        .arg(format!("{base}:inf"))
        .arg("r")
        .arg("t")
        .zcount(format!("{base}:rx"), "-inf", now_ms);
    let mut commands = 5;
    for window in Window::ALL.iter().filter(|w| wanted.contains(w)) {
        pipe.hgetall(format!("{base}:w:{}", window.key()));
        commands += 1;
    }
    commands
}

/// Slots of a window's ring.
const RING_SLOTS: usize = 120;
const _: () = assert!(RING_SLOTS as i64 == tenantmeter_domain::window::RING);

/// A tenant's current figures as read from Redis.
#[derive(Debug, Clone, Default)]
pub struct UsageSnapshot {
    /// Per window, in `Window::ALL` order.
    pub windows: Vec<Figures>,
    /// Today (UTC) so far, with models.
    pub day: Rollup,
    /// This month so far, with models.
    pub month: Rollup,
    /// Open reservations: count and tokens.
    pub in_flight: (u64, u64),
    /// Latest counted event time, ms.
    pub last_event_ms: Option<i64>,
    /// Per model, per window (only when asked).
    pub model_windows: BTreeMap<String, Vec<Figures>>,
}

/// Arguments of a reservation.
#[derive(Debug, Clone)]
pub struct ReserveArgs {
    /// Id for the new reservation.
    pub reservation_id: String,
    /// Model requested.
    pub model: String,
    /// Tokens to reserve.
    pub tokens: u64,
    /// Lease.
    pub lease: Duration,
    /// Plan limits: requests per minute, tokens per minute (0 = none).
    pub plan_rpm: u64,
    /// Tokens per minute.
    pub plan_tpm: u64,
    /// The plan's period budget as a month rated-value cap, pico (0 = none).
    pub plan_month_rated_cap_pico: i128,
    /// Models the caller could be downgraded to.
    pub downgrade_targets: Vec<String>,
    /// Simulated time; `None` uses the Redis server's clock.
    pub now_override_ms: Option<i64>,
}

/// The outcome of a reservation as the script reports it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReserveReply {
    /// Admitted?
    pub admitted: bool,
    /// Deny reason code (contract's DenyReason number); 0 when admitted.
    pub reason: i32,
    /// Limit that denied, in the reason's unit (pico for caps).
    pub limit: i128,
    /// Current figure in the same unit.
    pub current: i128,
    /// Whether the policy set the limit.
    pub by_policy: bool,
    /// Retry after, ms.
    pub retry_ms: i64,
    /// Level number carried by the policy.
    pub level: i32,
    /// Model reserved (maybe a downgrade).
    pub model: String,
    /// Whether it is a downgrade.
    pub downgraded: bool,
    /// Lease end, ms.
    pub lease_expires_ms: i64,
    /// Shadow: reason the policy would have denied with (0 = none).
    pub shadow_reason: i32,
    /// Shadow limit.
    pub shadow_limit: i128,
    /// Shadow current figure.
    pub shadow_current: i128,
    /// Shadow retry, ms.
    pub shadow_retry_ms: i64,
    /// The policy's human reason.
    pub policy_reason: String,
}

/// The outcome of a settlement.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SettleReply {
    /// The event was counted now (false: duplicate).
    pub counted: bool,
    /// A reservation was released.
    pub released: bool,
    /// The month's rated value after the event, pico.
    pub month_rated_pico: i128,
    /// Level carried by the policy.
    pub level: i32,
}

fn text(value: &Value) -> String {
    redis::from_redis_value_ref::<String>(value).unwrap_or_default()
}

fn int(value: &Value) -> Result<i128, StoreError> {
    let written: String = redis::from_redis_value_ref(value)
        .map_err(|e| StoreError::Reply(format!("not an integer: {value:?} ({e})")))?;
    written
        .parse()
        .map_err(|_| StoreError::Reply(format!("not an integer: {written:?}")))
}

fn narrow<T: TryFrom<i128>>(value: i128, what: &str) -> Result<T, StoreError> {
    T::try_from(value).map_err(|_| StoreError::Reply(format!("{what} out of range: {value}")))
}

/// The tenant's key prefix: its hash tag.
pub fn tenant_key(tenant: &TenantId) -> String {
    format!("{{t:{tenant}}}")
}

/// The meter's keyspace.
#[derive(Debug, Clone)]
pub struct MeterStore {
    conn: Connection,
    retention: Retention,
    record: redis::Script,
    reserve: redis::Script,
    settle: redis::Script,
    release: redis::Script,
    apply_policy: redis::Script,
    in_flight: redis::Script,
}

impl MeterStore {
    /// Connects to one server (`urls` has one entry) or to a cluster.
    pub async fn connect(
        urls: &[String],
        cluster: bool,
        timeout: Duration,
        retention: Retention,
    ) -> Result<Self, StoreError> {
        let conn = Connection::connect(urls, cluster, timeout).await?;
        Ok(Self {
            conn,
            retention,
            record: scripts::script(scripts::RECORD_V2),
            reserve: scripts::script(scripts::RESERVE_V1),
            settle: scripts::script(scripts::SETTLE_V2),
            release: scripts::script(scripts::RELEASE_V1),
            apply_policy: scripts::script(scripts::APPLY_POLICY_V2),
            in_flight: scripts::script(scripts::IN_FLIGHT_V1),
        })
    }

    fn conn(&self) -> Connection {
        self.conn.clone()
    }

    /// Whether Redis answers (PING; on a cluster, the node it routes to).
    pub async fn ping(&self) -> Result<(), StoreError> {
        let _pong: String = redis::cmd("PING").query_async(&mut self.conn()).await?;
        Ok(())
    }

    /// Counts one tenant's events, each at most once; `true` where counted now.
    /// `now_ms` is the meter's clock: rollups' retention runs from it.
    pub async fn record(
        &self,
        tenant: &TenantId,
        events: &[StoredEvent],
        now_ms: i64,
    ) -> Result<Vec<bool>, StoreError> {
        let mut invocation = self.record.prepare_invoke();
        invocation
            .key(tenant_key(tenant))
            .arg(now_ms)
            .arg(self.retention.dedupe_s)
            .arg(self.retention.hourly_s)
            .arg(self.retention.daily_s);
        let mut args = Vec::with_capacity(events.len() * 9);
        for event in events {
            event.push_args(&mut args);
        }
        for arg in &args {
            invocation.arg(arg);
        }
        let reply: Vec<i64> = invocation.invoke_async(&mut self.conn()).await?;
        if reply.len() != events.len() {
            return Err(StoreError::Reply(format!(
                "record answered {} results for {} events",
                reply.len(),
                events.len()
            )));
        }
        Ok(reply.into_iter().map(|counted| counted == 1).collect())
    }

    /// Admits (and reserves) or denies.
    pub async fn reserve(
        &self,
        tenant: &TenantId,
        args: &ReserveArgs,
    ) -> Result<ReserveReply, StoreError> {
        let mut invocation = self.reserve.prepare_invoke();
        invocation
            .key(tenant_key(tenant))
            .arg(
                args.now_override_ms
                    .map(|t| t.to_string())
                    .unwrap_or_default(),
            )
            .arg(&args.reservation_id)
            .arg(&args.model)
            .arg(args.tokens)
            .arg(u64::try_from(args.lease.as_millis()).unwrap_or(u64::MAX))
            .arg(args.plan_rpm)
            .arg(args.plan_tpm)
            .arg(args.plan_month_rated_cap_pico.to_string())
            .arg(args.downgrade_targets.len());
        for target in &args.downgrade_targets {
            invocation.arg(target);
        }
        let reply: Vec<Value> = invocation.invoke_async(&mut self.conn()).await?;
        let [
            admitted,
            reason,
            limit,
            current,
            by_policy,
            retry,
            level,
            model,
            downgraded,
            expires,
            shadow_reason,
            shadow_limit,
            shadow_current,
            shadow_retry,
            policy_reason,
        ] = reply.as_slice()
        else {
            return Err(StoreError::Reply(format!("reserve answered {reply:?}")));
        };
        Ok(ReserveReply {
            admitted: int(admitted)? == 1,
            reason: narrow(int(reason)?, "reason")?,
            limit: int(limit)?,
            current: int(current)?,
            by_policy: int(by_policy)? == 1,
            retry_ms: narrow(int(retry)?, "retry")?,
            level: narrow(int(level)?, "level")?,
            model: text(model),
            downgraded: int(downgraded)? == 1,
            lease_expires_ms: narrow(int(expires)?, "lease")?,
            shadow_reason: narrow(int(shadow_reason)?, "shadow reason")?,
            shadow_limit: int(shadow_limit)?,
            shadow_current: int(shadow_current)?,
            shadow_retry_ms: narrow(int(shadow_retry)?, "shadow retry")?,
            policy_reason: text(policy_reason),
        })
    }

    /// Records an admitted request's usage and releases its reservation.
    pub async fn settle(
        &self,
        tenant: &TenantId,
        reservation_id: &str,
        event: &StoredEvent,
        now_override_ms: Option<i64>,
    ) -> Result<SettleReply, StoreError> {
        let mut invocation = self.settle.prepare_invoke();
        invocation
            .key(tenant_key(tenant))
            .arg(now_override_ms.map(|t| t.to_string()).unwrap_or_default())
            .arg(reservation_id)
            .arg(self.retention.dedupe_s)
            .arg(self.retention.hourly_s)
            .arg(self.retention.daily_s);
        let mut args = Vec::with_capacity(9);
        event.push_args(&mut args);
        for arg in &args {
            invocation.arg(arg);
        }
        let reply: Vec<Value> = invocation.invoke_async(&mut self.conn()).await?;
        let [counted, released, rated, level] = reply.as_slice() else {
            return Err(StoreError::Reply(format!("settle answered {reply:?}")));
        };
        Ok(SettleReply {
            counted: int(counted)? == 1,
            released: int(released)? == 1,
            month_rated_pico: int(rated)?,
            level: narrow(int(level)?, "level")?,
        })
    }

    /// Releases a reservation; `true` when one was open.
    pub async fn release(
        &self,
        tenant: &TenantId,
        reservation_id: &str,
        now_override_ms: Option<i64>,
    ) -> Result<bool, StoreError> {
        let released: i64 = self
            .release
            .key(tenant_key(tenant))
            .arg(now_override_ms.map(|t| t.to_string()).unwrap_or_default())
            .arg(reservation_id)
            .invoke_async(&mut self.conn())
            .await?;
        Ok(released == 1)
    }

    /// Stores a policy's fields unless a later-decided one is stored; `true`
    /// when applied. The key lives until `expires_ms` on the meter's clock:
    /// its TTL is relative (`expires_ms - now_ms`), not Redis' wall-clock
    /// PEXPIREAT, so a meter on an injected clock (tests, backtests) keeps
    /// its policies as long as that clock says.
    pub async fn apply_policy(
        &self,
        tenant: &TenantId,
        decided_ms: i64,
        expires_ms: i64,
        now_ms: i64,
        fields: &[(String, Vec<u8>)],
    ) -> Result<bool, StoreError> {
        let mut invocation = self.apply_policy.prepare_invoke();
        invocation
            .key(tenant_key(tenant))
            .arg(decided_ms)
            .arg(expires_ms)
            .arg(expires_ms.saturating_sub(now_ms).max(1));
        for (field, value) in fields {
            invocation.arg(field).arg(value);
        }
        let applied: i64 = invocation.invoke_async(&mut self.conn()).await?;
        Ok(applied == 1)
    }

    /// The stored policy's encoded form, if one is in force.
    pub async fn policy(&self, tenant: &TenantId) -> Result<Option<Vec<u8>>, StoreError> {
        let key = format!("{}:policy", tenant_key(tenant));
        let value: Option<Vec<u8>> = redis::cmd("HGET")
            .arg(key)
            .arg("proto")
            .query_async(&mut self.conn())
            .await?;
        Ok(value)
    }

    /// A tenant's figures at `now_ms` (windows, day, month, in flight).
    ///
    /// Only the windows in `wanted` are read; the others are left empty in
    /// `UsageSnapshot::windows` (which stays in `Window::ALL` order).
    pub async fn usage(
        &self,
        tenant: &TenantId,
        now_ms: i64,
        include_models: bool,
        wanted: &[Window],
    ) -> Result<UsageSnapshot, StoreError> {
        let mut pipe = redis::pipe();
        let commands = usage_reads(&mut pipe, tenant, now_ms, include_models, wanted);
        let values: Vec<Value> = pipe.query_async(&mut self.conn()).await?;
        debug_assert_eq!(values.len(), commands);
        self.finish_usage(tenant, now_ms, include_models, wanted, values)
            .await
    }

    /// [`Self::usage`] of each of `tenants` (without models), in order. On
    /// one server the page's reads travel in one pipeline — a listing reads
    /// a thousand tenants a page, and a pipeline each cost more in futures,
    /// timers and wake-ups than in Redis; on a cluster, whose tenants live
    /// in different slots, each tenant is one pipeline, all in flight.
    pub async fn usage_page(
        &self,
        tenants: &[TenantId],
        now_ms: i64,
        wanted: &[Window],
    ) -> Result<Vec<UsageSnapshot>, StoreError> {
        if matches!(self.conn, Connection::Cluster(_)) {
            return futures::future::join_all(
                tenants
                    .iter()
                    .map(|tenant| self.usage(tenant, now_ms, false, wanted)),
            )
            .await
            .into_iter()
            .collect();
        }
        let mut pipe = redis::pipe();
        let per_tenant = tenants
            .iter()
            .map(|tenant| usage_reads(&mut pipe, tenant, now_ms, false, wanted))
            .max()
            .unwrap_or(0);
        if per_tenant == 0 {
            return Ok(Vec::new());
        }
        let values: Vec<Value> = pipe.query_async(&mut self.conn()).await?;
        let mut values = values.into_iter();
        let mut snapshots = Vec::with_capacity(tenants.len());
        for tenant in tenants {
            let own: Vec<Value> = values.by_ref().take(per_tenant).collect();
            snapshots.push(
                self.finish_usage(tenant, now_ms, false, wanted, own)
                    .await?,
            );
        }
        Ok(snapshots)
    }

    /// Reads what [`usage_reads`] asked for into a snapshot; purges expired
    /// reservations and reads per-model windows when needed.
    async fn finish_usage(
        &self,
        tenant: &TenantId,
        now_ms: i64,
        include_models: bool,
        wanted: &[Window],
        mut values: Vec<Value>,
    ) -> Result<UsageSnapshot, StoreError> {
        let base = tenant_key(tenant);
        let read = values.split_off(5.min(values.len()));
        let reply = |e: redis::ParsingError| StoreError::Reply(e.to_string());
        let mut values = values.into_iter();
        let mut next = || values.next().unwrap_or(Value::Nil);
        let rollup = |value: Value| -> Result<Rollup, StoreError> {
            if include_models {
                Ok(parse_rollup(redis::from_redis_value(value).map_err(reply)?))
            } else {
                let totals: Vec<Option<String>> = redis::from_redis_value(value).map_err(reply)?;
                Ok(parse_totals(&totals))
            }
        };
        let day = rollup(next())?;
        let month = rollup(next())?;
        let last: Option<i64> = redis::from_redis_value(next()).map_err(reply)?;
        let inflight: (Option<u64>, Option<u64>) =
            redis::from_redis_value(next()).map_err(reply)?;
        let expired: u64 = redis::from_redis_value(next()).map_err(reply)?;
        let mut read = read.iter();
        let mut windows = Vec::with_capacity(Window::ALL.len());
        for window in Window::ALL {
            let hash = if wanted.contains(&window) {
                read.next()
            } else {
                None
            };
            windows.push(match hash {
                Some(hash) => sum_window(window, now_ms, &hash_fields(hash)?),
                None => Figures::default(),
            });
        }
        let in_flight: (u64, u64) = if expired == 0 {
            (inflight.0.unwrap_or(0), inflight.1.unwrap_or(0))
        } else {
            self.in_flight
                .key(&base)
                .arg(now_ms)
                .invoke_async(&mut self.conn())
                .await?
        };
        let mut model_windows = BTreeMap::new();
        if include_models && !month.models.is_empty() {
            let mut conn = self.conn();
            let mut pipe = redis::pipe();
            for model in month.models.keys() {
                for window in Window::ALL {
                    pipe.hgetall(format!("{base}:w:{}:{model}", window.key()));
                }
            }
            let hashes: Vec<Value> = pipe.query_async(&mut conn).await?;
            for (model, chunk) in month.models.keys().zip(hashes.chunks(Window::ALL.len())) {
                let figures = chunk
                    .iter()
                    .zip(Window::ALL)
                    .map(|(hash, window)| Ok(sum_window(window, now_ms, &hash_fields(hash)?)))
                    .collect::<Result<_, StoreError>>()?;
                model_windows.insert(model.clone(), figures);
            }
        }
        Ok(UsageSnapshot {
            windows,
            day,
            month,
            in_flight,
            last_event_ms: last,
            model_windows,
        })
    }

    /// Marks tenants active at `at_ms` in the sharded index (ZADD GT, so an
    /// older event never moves a tenant back). Idempotent: counting never
    /// depends on it, so it runs beside the counting call, not after it.
    pub async fn touch_active(&self, tenants: &[(&TenantId, i64)]) -> Result<(), StoreError> {
        // One small atomic pipeline per shard key (a cluster routes each to its
        // own slot), all sent concurrently.
        let calls = tenants.iter().map(|(tenant, at_ms)| {
            let key = active_key(active_shard(tenant, ACTIVE_SHARDS));
            let mut pipe = redis::pipe();
            pipe.atomic()
                .cmd("ZADD")
                .arg(&key)
                .arg("GT")
                .arg(at_ms)
                .arg(tenant.as_str())
                .ignore()
                .cmd("PEXPIRE")
                .arg(&key)
                .arg(ACTIVE_FOR_MS)
                .ignore();
            let mut conn = self.conn();
            async move { pipe.query_async::<()>(&mut conn).await }
        });
        for outcome in futures::future::join_all(calls).await {
            outcome?;
        }
        Ok(())
    }

    /// Tenants of index shard `shard` active since `since_ms`, by id; older
    /// members are pruned on the way.
    pub async fn active_tenants(
        &self,
        shard: u32,
        since_ms: i64,
    ) -> Result<Vec<String>, StoreError> {
        let key = active_key(shard);
        let mut conn = self.conn();
        let _pruned: i64 = redis::cmd("ZREMRANGEBYSCORE")
            .arg(&key)
            .arg("-inf")
            .arg(format!("({since_ms}"))
            .query_async(&mut conn)
            .await?;
        let mut members: Vec<String> = redis::cmd("ZRANGEBYSCORE")
            .arg(&key)
            .arg(since_ms)
            .arg("+inf")
            .query_async(&mut conn)
            .await?;
        members.sort_unstable();
        Ok(members)
    }

    /// Rollups of a tenant from `start_ms` (inclusive) to `end_ms` (exclusive),
    /// hourly or daily; one entry per bucket that has usage.
    pub async fn history(
        &self,
        tenant: &TenantId,
        period: HistoryPeriod,
        start_ms: i64,
        end_ms: i64,
    ) -> Result<Vec<(i64, Rollup)>, StoreError> {
        let base = tenant_key(tenant);
        let (step, prefix, index): (i64, &str, fn(i64) -> i64) = match period {
            HistoryPeriod::Hour => (tenantmeter_domain::window::HOUR_MS, "h", hour_index),
            HistoryPeriod::Day => (tenantmeter_domain::window::DAY_MS, "d", day_index),
        };
        let starts: Vec<i64> = (0..)
            .map(|n| start_ms + n * step)
            .take_while(|t| *t < end_ms)
            .collect();
        let mut pipe = redis::pipe();
        for start in &starts {
            pipe.hgetall(format!("{base}:{prefix}:{}", index(*start)));
        }
        let hashes: Vec<HashMap<String, String>> = pipe.query_async(&mut self.conn()).await?;
        Ok(starts
            .into_iter()
            .zip(hashes)
            .filter(|(_, fields)| !fields.is_empty())
            .map(|(start, fields)| (start, parse_rollup(fields)))
            .collect())
    }
}

/// Shards of the active-tenant index: enough that no index key is hot, few
/// enough that a full listing is a handful of reads.
pub const ACTIVE_SHARDS: u32 = 16;

/// How long a tenant stays in the active index after its last event: the
/// longest period figures are read for (a month) plus margin.
pub const ACTIVE_FOR_MS: i64 = 35 * tenantmeter_domain::window::DAY_MS;

/// The index shard of a tenant ([`TenantId::shard`], stable across versions).
pub fn active_shard(tenant: &TenantId, shards: u32) -> u32 {
    tenant.shard(shards)
}

fn active_key(shard: u32) -> String {
    format!("{{a:{shard}}}:tenants")
}

/// Granularity of stored rollups.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HistoryPeriod {
    /// Hourly.
    Hour,
    /// Daily.
    Day,
}

/// The bounds of today and this month at `now_ms`.
pub fn period_bounds(now_ms: i64) -> [(CalendarPeriod, i64, i64); 2] {
    [CalendarPeriod::Day, CalendarPeriod::Month].map(|period| {
        let (start, end) = period.bounds(now_ms);
        (period, start, end)
    })
}
