//! The alert history's Redis keyspace. Every key carries the hash tag `{al}`,
//! so all of them live in one slot and each change (a record and its indexes)
//! is ONE Lua script, atomic on one server and on Redis Cluster alike.
//!
//! | key | type | content |
//! |---|---|---|
//! | `{al}:alerts` | hash | alert id -> the `Alert` as protobuf, acknowledgement fields cleared |
//! | `{al}:alerts:order` | sorted set | every alert id, score 0 (ids sort by time: [`super::id`]) |
//! | `{al}:alerts:levels` | hash | alert id -> the higher of its from and to levels (contract number) |
//! | `{al}:alerts:acks` | hash | alert id -> its first acknowledgement as JSON |
//! | `{al}:alerts:feed` | stream | one entry `id <alert id>` per newly stored alert, about the last [`FEED_MAX_LEN`] |
//!
//! Why each exists:
//! - the order set pages newest first with ZREVRANGEBYLEX (no SCAN); a page
//!   token is the last id the previous page examined, and the next page starts
//!   strictly below it, so alerts trimmed between pages do not break paging;
//! - the levels hash lets the list script filter by level without decoding
//!   protobuf; subjects are filtered on the id's hash suffix and time on the id
//!   range, so ListAlerts' filters all run inside the script;
//! - acknowledgements are a separate hash written with HSETNX, which is what
//!   makes "the first acknowledgement is kept" atomic, and what keeps it when
//!   the evaluator re-flushes the alert (the record itself is never rewritten);
//! - the feed records insertions in the order they happened, which is not
//!   always id order (a flush split in several calls, another replica, a
//!   committed backtest pass): live watchers read it, so an alert stored late
//!   with a low id still reaches them.
//!
//! Alerts have no TTL: [`AlertStore::trim`] removes those raised before the
//! retention horizon, a batch per call. Scripts are versioned by name; a
//! layout change gets new scripts. Needs Redis 6.2 or later (exclusive XRANGE).

use std::sync::Arc;
use std::time::Duration;

use prost::Message as _;
use serde::{Deserialize, Serialize};
use tenantmeter_proto::v1 as pb;
use tenantmeter_runtime::clock::Clock;
use tenantmeter_runtime::redis_connection::RedisConnection;
use tenantmeter_runtime::shutdown::CancellationToken;

use super::filter::{AlertFilter, alert_level_rank, min_level_from_proto};
use super::id::{MAX_ID_MS, alert_id, id_floor, subject_suffix};
use super::shadow::SHADOW_SET_V1;
use super::{AlertError, MAX_BY_LEN, MAX_COMMENT_LEN, bounded, check_text, subject_at};
use crate::budgets::{ms_to_timestamp, timestamp_to_ms};

/// Hash of every alert: id -> protobuf `Alert`.
pub const ALERTS_KEY: &str = "{al}:alerts";
/// Sorted set of every alert id, score 0, for paging in id (= time) order.
pub const ORDER_KEY: &str = "{al}:alerts:order";
/// Hash of every alert's higher level: id -> contract level number.
pub const LEVELS_KEY: &str = "{al}:alerts:levels";
/// Hash of acknowledgements: id -> JSON.
pub const ACKS_KEY: &str = "{al}:alerts:acks";
/// Stream of insertions, read by live watchers.
pub const FEED_KEY: &str = "{al}:alerts:feed";
/// Entries the feed keeps, about (trimmed with `MAXLEN ~`): a watcher that
/// has not read this many insertions is told to resume instead.
pub const FEED_MAX_LEN: usize = 10_000;
/// Page size when a request gives 0.
pub const DEFAULT_PAGE_SIZE: usize = 100;
/// Largest page size a request may ask for.
pub const MAX_PAGE_SIZE: usize = 1_000;
/// Most ids one ListAlerts page examines by default. Filters that match
/// rarely return a short (even empty) page with a next token rather than
/// walking the whole history in one script.
pub const LIST_SCAN_LIMIT: usize = 10_000;
/// Most alerts one Acknowledge call may name.
pub const MAX_ACKNOWLEDGE: usize = 1_000;
/// Most alerts one [`AlertStore::trim`] call removes.
pub const TRIM_BATCH: usize = 1_000;
/// How often [`AlertStore::retain`] trims: retention is days, so once a
/// minute keeps the history within a minute of it at no measurable cost.
pub const RETENTION_INTERVAL: Duration = Duration::from_secs(60);

/// Alerts one insert script stores at most: a pass that raises thousands of
/// alerts (with their status snapshots) is split, so no single script holds
/// the server for long. Each chunk is atomic on its own.
const INSERT_CHUNK: usize = 256;
/// Ids the list script reads from the index per step.
const LIST_BATCH: usize = 500;
/// A stream position before every entry.
const FEED_START: &str = "0-0";

/// Stores the alerts whose id is new, with their indexes and a feed entry;
/// an id already stored is left untouched (its acknowledgement included).
/// KEYS: alerts, order, levels, feed. ARGV: feed max length, then
/// (id, record, level) per alert. Replies the ids newly stored.
const INSERT_V1: &str = r"-- tenantmeter alerting alert insert v1
local added = {}
for i = 2, #ARGV, 3 do
  local id = ARGV[i]
  if redis.call('HSETNX', KEYS[1], id, ARGV[i + 1]) == 1 then
    redis.call('ZADD', KEYS[2], 0, id)
    redis.call('HSET', KEYS[3], id, ARGV[i + 2])
    redis.call('XADD', KEYS[4], 'MAXLEN', '~', ARGV[1], '*', 'id', id)
    added[#added + 1] = id
  end
end
return added
";

/// One alert and its acknowledgement, read together.
/// KEYS: alerts, acks. ARGV: id. Replies `{record or nil, ack or nil}`.
const GET_V1: &str = r"-- tenantmeter alerting alert get v1
return {redis.call('HGET', KEYS[1], ARGV[1]), redis.call('HGET', KEYS[2], ARGV[1])}
";

/// One ListAlerts page: walks the index newest first from `max` down to
/// `min` in steps, keeping the ids that pass the level, subject and
/// acknowledgement filters, until `want` are kept or `budget` ids were
/// examined. The subject is the id's hash suffix, from byte 15 on (13 digits
/// and a `-` before it).
/// KEYS: order, alerts, levels, acks. ARGV: max, min, want, budget, step,
/// min level, unacknowledged only ('1'/'0'), subject suffixes...
/// Replies `{exhausted 1/0, last id examined, {{id, record, ack}...}}`.
const LIST_V1: &str = r"-- tenantmeter alerting alert list v1
local max, min = ARGV[1], ARGV[2]
local want, budget, step = tonumber(ARGV[3]), tonumber(ARGV[4]), tonumber(ARGV[5])
local min_level = tonumber(ARGV[6])
local unacked = ARGV[7] == '1'
local subjects = nil
if #ARGV > 7 then
  subjects = {}
  for i = 8, #ARGV do subjects[ARGV[i]] = true end
end
local found, examined, last, exhausted = {}, 0, '', false
while not exhausted and #found < want and examined < budget do
  local n = math.min(step, budget - examined)
  local ids = redis.call('ZREVRANGEBYLEX', KEYS[1], max, min, 'LIMIT', 0, n)
  if #ids < n then exhausted = true end
  if #ids == 0 then break end
  local levels = redis.call('HMGET', KEYS[3], unpack(ids))
  local acks = {}
  if unacked then acks = redis.call('HMGET', KEYS[4], unpack(ids)) end
  for i = 1, #ids do
    examined = examined + 1
    last = ids[i]
    local keep = (tonumber(levels[i] or '0') or 0) >= min_level
    if keep and subjects then keep = subjects[string.sub(ids[i], 15)] == true end
    if keep and unacked then keep = not acks[i] end
    if keep then
      found[#found + 1] = ids[i]
      if #found == want then break end
    end
  end
  max = '(' .. last
end
local rows = {}
if #found > 0 then
  local records = redis.call('HMGET', KEYS[2], unpack(found))
  local acks = redis.call('HMGET', KEYS[4], unpack(found))
  for i = 1, #found do rows[i] = {found[i], records[i], acks[i]} end
end
return {exhausted and 1 or 0, last, rows}
";

/// Acknowledges every named alert that has no acknowledgement yet, or none
/// at all when one is unknown.
/// KEYS: alerts, acks. ARGV: acknowledgement JSON, ids...
/// Replies `{first unknown id or '', records, acks}` (records and acks in
/// request order, empty when an id is unknown).
const ACKNOWLEDGE_V1: &str = r"-- tenantmeter alerting alert acknowledge v1
for i = 2, #ARGV do
  if redis.call('HEXISTS', KEYS[1], ARGV[i]) == 0 then return {ARGV[i], {}, {}} end
end
for i = 2, #ARGV do redis.call('HSETNX', KEYS[2], ARGV[i], ARGV[1]) end
local ids = {unpack(ARGV, 2)}
return {'', redis.call('HMGET', KEYS[1], unpack(ids)), redis.call('HMGET', KEYS[2], unpack(ids))}
";

/// Alerts in id order from a lex bound.
/// KEYS: order, alerts, acks. ARGV: ZRANGEBYLEX start, count.
/// Replies `{{id, record, ack}...}`.
const AFTER_V1: &str = r"-- tenantmeter alerting alert after v1
local ids = redis.call('ZRANGEBYLEX', KEYS[1], ARGV[1], '+', 'LIMIT', 0, tonumber(ARGV[2]))
if #ids == 0 then return {} end
local records = redis.call('HMGET', KEYS[2], unpack(ids))
local acks = redis.call('HMGET', KEYS[3], unpack(ids))
local rows = {}
for i = 1, #ids do rows[i] = {ids[i], records[i], acks[i]} end
return rows
";

/// Removes up to `count` of the oldest alerts below a lex bound.
/// KEYS: order, alerts, levels, acks. ARGV: exclusive upper bound, count.
/// Replies the number removed.
const TRIM_V1: &str = r"-- tenantmeter alerting alert trim v1
local ids = redis.call('ZRANGEBYLEX', KEYS[1], '-', ARGV[1], 'LIMIT', 0, tonumber(ARGV[2]))
if #ids == 0 then return 0 end
redis.call('ZREM', KEYS[1], unpack(ids))
redis.call('HDEL', KEYS[2], unpack(ids))
redis.call('HDEL', KEYS[3], unpack(ids))
redis.call('HDEL', KEYS[4], unpack(ids))
return #ids
";

/// The feed's last position, `0-0` when it is empty.
/// KEYS: feed.
const FEED_TAIL_V1: &str = r"-- tenantmeter alerting alert feed tail v1
local last = redis.call('XREVRANGE', KEYS[1], '+', '-', 'COUNT', 1)
if #last == 0 then return '0-0' end
return last[1][1]
";

/// Feed entries after a position, with their alerts. `gap` is 1 when the
/// position is older than the feed's first entry: entries after it may have
/// been trimmed unread.
/// KEYS: feed, alerts, acks. ARGV: position, count.
/// Replies `{gap, {{position, id, record, ack}...}}`.
const FEED_READ_V1: &str = r"-- tenantmeter alerting alert feed read v1
local function older(a, b)
  local ams, aseq = string.match(a, '^(%d+)-(%d+)$')
  local bms, bseq = string.match(b, '^(%d+)-(%d+)$')
  ams, aseq, bms, bseq = tonumber(ams), tonumber(aseq), tonumber(bms), tonumber(bseq)
  return ams < bms or (ams == bms and aseq < bseq)
end
local gap = 0
if ARGV[1] ~= '0-0' then
  local first = redis.call('XRANGE', KEYS[1], '-', '+', 'COUNT', 1)
  if #first > 0 and older(ARGV[1], first[1][1]) then gap = 1 end
end
local entries = redis.call('XRANGE', KEYS[1], '(' .. ARGV[1], '+', 'COUNT', tonumber(ARGV[2]))
local rows = {}
for i = 1, #entries do
  local id = entries[i][2][2]
  rows[i] = {entries[i][1], id, redis.call('HGET', KEYS[2], id), redis.call('HGET', KEYS[3], id)}
end
return {gap, rows}
";

/// The JSON of one acknowledgement. Its own type so the stored format
/// changes only on purpose.
#[derive(Debug, Serialize, Deserialize)]
struct StoredAck {
    at_ms: i64,
    by: String,
    comment: String,
}

/// One row the scripts reply: id, record, acknowledgement.
type Row = (String, Option<Vec<u8>>, Option<String>);

/// The acknowledge script's reply: the first unknown id (empty when none),
/// then records and acknowledgements in request order.
type AcknowledgeReply = (String, Vec<Option<Vec<u8>>>, Vec<Option<String>>);

/// What [`AlertStore::feed_after`] read.
#[derive(Debug, Clone, PartialEq)]
pub struct FeedRead {
    /// The position asked for is older than the feed's first entry: alerts
    /// stored after it may have been trimmed from the feed unread.
    pub gap: bool,
    /// The entries after the position, oldest first.
    pub entries: Vec<FeedEntry>,
}

/// One feed entry: an alert newly stored.
#[derive(Debug, Clone, PartialEq)]
pub struct FeedEntry {
    /// The entry's stream position, to read on from.
    pub position: String,
    /// The alert's id.
    pub alert_id: String,
    /// The alert; `None` when it was trimmed from the history since.
    pub alert: Option<pb::Alert>,
}

/// The alert history in Redis. Cheap to clone (clones share the connection).
#[derive(Debug, Clone)]
pub struct AlertStore {
    pub(super) conn: RedisConnection,
    pub(super) timeout: Duration,
    scan_limit: usize,
    insert: redis::Script,
    get: redis::Script,
    list: redis::Script,
    acknowledge: redis::Script,
    after: redis::Script,
    trim: redis::Script,
    feed_tail: redis::Script,
    feed_read: redis::Script,
    pub(super) shadow_set: redis::Script,
}

impl AlertStore {
    /// Connects to one server (`urls` has one entry) or to a cluster (any
    /// number of seed nodes). Every later call is bounded by `timeout`.
    ///
    /// # Errors
    /// [`AlertError::Redis`] or [`AlertError::Timeout`] when Redis cannot be
    /// reached.
    pub async fn connect(
        urls: &[String],
        cluster: bool,
        timeout: Duration,
    ) -> Result<Self, AlertError> {
        let conn = bounded(timeout, RedisConnection::connect(urls, cluster, timeout)).await?;
        Ok(Self::new(conn, timeout))
    }

    /// A store on an existing connection (a service shares one connection
    /// among its stores).
    #[must_use]
    pub fn new(conn: RedisConnection, timeout: Duration) -> Self {
        Self {
            conn,
            timeout,
            scan_limit: LIST_SCAN_LIMIT,
            insert: redis::Script::new(INSERT_V1),
            get: redis::Script::new(GET_V1),
            list: redis::Script::new(LIST_V1),
            acknowledge: redis::Script::new(ACKNOWLEDGE_V1),
            after: redis::Script::new(AFTER_V1),
            trim: redis::Script::new(TRIM_V1),
            feed_tail: redis::Script::new(FEED_TAIL_V1),
            feed_read: redis::Script::new(FEED_READ_V1),
            shadow_set: redis::Script::new(SHADOW_SET_V1),
        }
    }

    /// The same store examining at most `limit` ids (at least 1) per
    /// ListAlerts page instead of [`LIST_SCAN_LIMIT`].
    #[must_use]
    pub fn with_list_scan_limit(mut self, limit: usize) -> Self {
        self.scan_limit = limit.max(1);
        self
    }

    /// Stores `alerts`; an alert whose id is already stored is left as it is
    /// (acknowledgement included), so the evaluator may flush a pass again
    /// after a crash. An empty `alert_id` is filled in with
    /// [`alert_id`]`(raised_at, subject)`; a non-empty one must equal it.
    /// Acknowledgement fields are output only and not stored. Returns the ids
    /// newly stored, in input order.
    ///
    /// # Errors
    /// [`AlertError::Invalid`] naming `alerts[i].<field>` (subject, raised_at
    /// within 1970..2286, known levels, the id); nothing is stored then. Redis.
    pub async fn insert(&self, alerts: &[pb::Alert]) -> Result<Vec<String>, AlertError> {
        let mut prepared = Vec::with_capacity(alerts.len());
        for (i, alert) in alerts.iter().enumerate() {
            prepared.push(prepare(i, alert)?);
        }
        let mut added = Vec::new();
        for chunk in prepared.chunks(INSERT_CHUNK) {
            let mut invocation = self.insert.key(ALERTS_KEY);
            invocation
                .key(ORDER_KEY)
                .key(LEVELS_KEY)
                .key(FEED_KEY)
                .arg(FEED_MAX_LEN);
            for (id, record, level) in chunk {
                invocation.arg(id).arg(record).arg(level);
            }
            let mut conn = self.conn.clone();
            let ids: Vec<String> =
                bounded(self.timeout, invocation.invoke_async(&mut conn)).await?;
            added.extend(ids);
        }
        Ok(added)
    }

    /// One alert, with its acknowledgement.
    ///
    /// # Errors
    /// [`AlertError::Invalid`] naming `alert_id` when it is not a well-formed
    /// id; [`AlertError::NotFound`]; Redis; a corrupt record.
    pub async fn get(&self, alert_id: &str) -> Result<pb::Alert, AlertError> {
        check_id("alert_id", alert_id)?;
        let mut invocation = self.get.key(ALERTS_KEY);
        invocation.key(ACKS_KEY).arg(alert_id);
        let mut conn = self.conn.clone();
        let (record, ack): (Option<Vec<u8>>, Option<String>) =
            bounded(self.timeout, invocation.invoke_async(&mut conn)).await?;
        match record {
            Some(record) => decode(alert_id, &record, ack.as_deref()),
            None => Err(AlertError::NotFound(alert_id.to_owned())),
        }
    }

    /// One ListAlerts page for `request` (filters, page size and token);
    /// see [`AlertStore::list_filtered`].
    ///
    /// # Errors
    /// [`AlertError::Invalid`] naming the request field (see
    /// [`AlertFilter::from_list_request`] and [`AlertStore::list_filtered`]);
    /// Redis; a corrupt record.
    pub async fn list(
        &self,
        request: &pb::ListAlertsRequest,
    ) -> Result<(Vec<pb::Alert>, String), AlertError> {
        let filter = AlertFilter::from_list_request(request)?;
        self.list_filtered(&filter, request.page_size, &request.page_token)
            .await
    }

    /// One page of alerts passing `filter`, newest first. `page_size` 0 means
    /// [`DEFAULT_PAGE_SIZE`]; `page_token` is the previous page's next token,
    /// empty for the first page; the returned token is empty on the last page.
    ///
    /// A page examines at most the store's scan limit ([`LIST_SCAN_LIMIT`]) of
    /// ids, so with a filter that matches rarely it may hold fewer alerts than
    /// asked, even none, and still carry a next token: keep paging until the
    /// token is empty.
    ///
    /// # Errors
    /// [`AlertError::Invalid`] naming `page_size` (negative or above
    /// [`MAX_PAGE_SIZE`]) or `page_token` (not one this store issued); Redis;
    /// a corrupt record.
    pub async fn list_filtered(
        &self,
        filter: &AlertFilter,
        page_size: i32,
        page_token: &str,
    ) -> Result<(Vec<pb::Alert>, String), AlertError> {
        let size = page_size_of(page_size)?;
        if !page_token.is_empty() && !super::is_alert_id(page_token) {
            return Err(AlertError::invalid(
                "page_token",
                "is not a token returned by ListAlerts",
            ));
        }
        // ZREVRANGEBYLEX bounds. Below the time range nothing is listed; the
        // upper bound is the lower of the token and the end of the time range.
        let min = match filter.start_ms {
            Some(start) if start > MAX_ID_MS => return Ok((Vec::new(), String::new())),
            Some(start) if start > 0 => format!("[{}", id_floor(start)),
            Some(_) | None => "-".to_owned(),
        };
        let end = match filter.end_ms {
            Some(end) if end <= 0 => return Ok((Vec::new(), String::new())),
            Some(end) if end <= MAX_ID_MS => Some(id_floor(end)),
            Some(_) | None => None,
        };
        let upper = match (end, page_token) {
            (None, "") => None,
            (None, token) => Some(token.to_owned()),
            (Some(end), "") => Some(end),
            (Some(end), token) => Some(end.min(token.to_owned())),
        };
        let max = upper.map_or_else(|| "+".to_owned(), |bound| format!("({bound}"));

        let mut invocation = self.list.key(ORDER_KEY);
        invocation
            .key(ALERTS_KEY)
            .key(LEVELS_KEY)
            .key(ACKS_KEY)
            .arg(&max)
            .arg(&min)
            // One more than asked: finding it says whether a next page exists.
            .arg(size + 1)
            .arg(self.scan_limit.max(size + 1))
            .arg(LIST_BATCH)
            .arg(filter.min_level_rank())
            .arg(if filter.unacknowledged_only { "1" } else { "0" });
        for subject in &filter.subjects {
            invocation.arg(subject_suffix(subject));
        }
        let mut conn = self.conn.clone();
        let (exhausted, last, rows): (i64, String, Vec<Row>) =
            bounded(self.timeout, invocation.invoke_async(&mut conn)).await?;
        let next = if rows.len() > size {
            // The extra row exists: the next page starts below the last shown.
            rows.get(size - 1).map_or(last, |row| row.0.clone())
        } else if exhausted == 1 {
            String::new()
        } else {
            // Scan limit reached: the next page starts below the last examined.
            last
        };
        let mut alerts = decode_rows(rows.into_iter().take(size))?;
        // The script filters on the indexes; the records are checked again so
        // a record that disagrees with its index never slips past a filter.
        alerts.retain(|alert| filter.matches(alert));
        Ok((alerts, next))
    }

    /// Acknowledges `alert_ids` (1..=[`MAX_ACKNOWLEDGE`]) as `by` with
    /// `comment` at `now_ms`, atomically: an alert already acknowledged keeps
    /// its first acknowledgement, and when one id is unknown none is
    /// acknowledged. Returns the alerts in request order.
    ///
    /// # Errors
    /// [`AlertError::Invalid`] naming `alert_ids`, `alert_ids[i]` (not a
    /// well-formed id), `acknowledged_by` or `comment` (too long);
    /// [`AlertError::NotFound`] naming the first unknown id; Redis.
    pub async fn acknowledge(
        &self,
        alert_ids: &[String],
        by: &str,
        comment: &str,
        now_ms: i64,
    ) -> Result<Vec<pb::Alert>, AlertError> {
        if alert_ids.is_empty() || alert_ids.len() > MAX_ACKNOWLEDGE {
            return Err(AlertError::invalid(
                "alert_ids",
                format!(
                    "must name 1..={MAX_ACKNOWLEDGE} alerts, got {}",
                    alert_ids.len()
                ),
            ));
        }
        for (i, id) in alert_ids.iter().enumerate() {
            check_id(&format!("alert_ids[{i}]"), id)?;
        }
        check_text("acknowledged_by", by, MAX_BY_LEN)?;
        check_text("comment", comment, MAX_COMMENT_LEN)?;
        let ack = serde_json::to_string(&StoredAck {
            at_ms: now_ms,
            by: by.to_owned(),
            comment: comment.to_owned(),
        })
        .map_err(|e| AlertError::Corrupt(format!("encoding an acknowledgement: {e}")))?;
        let mut invocation = self.acknowledge.key(ALERTS_KEY);
        invocation.key(ACKS_KEY).arg(&ack).arg(alert_ids);
        let mut conn = self.conn.clone();
        let (missing, records, acks): AcknowledgeReply =
            bounded(self.timeout, invocation.invoke_async(&mut conn)).await?;
        if !missing.is_empty() {
            return Err(AlertError::NotFound(missing));
        }
        if records.len() != alert_ids.len() || acks.len() != alert_ids.len() {
            return Err(AlertError::Corrupt(format!(
                "acknowledge replied {} records for {} ids",
                records.len(),
                alert_ids.len()
            )));
        }
        alert_ids
            .iter()
            .zip(records)
            .zip(acks)
            .map(|((id, record), ack)| {
                let record = record.ok_or_else(|| {
                    AlertError::Corrupt(format!("{id:?} vanished while acknowledged"))
                })?;
                decode(id, &record, ack.as_deref())
            })
            .collect()
    }

    /// Up to `limit` alerts with ids strictly after `alert_id`, in id order
    /// (the order they were raised); an empty `alert_id` starts at the oldest.
    /// An id trimmed from the history still works as a starting point.
    ///
    /// # Errors
    /// [`AlertError::Invalid`] naming `after_alert_id`; Redis; a corrupt record.
    pub async fn after(&self, alert_id: &str, limit: usize) -> Result<Vec<pb::Alert>, AlertError> {
        let start = if alert_id.is_empty() {
            "-".to_owned()
        } else {
            check_id("after_alert_id", alert_id)?;
            format!("({alert_id}")
        };
        if limit == 0 {
            return Ok(Vec::new());
        }
        let mut invocation = self.after.key(ORDER_KEY);
        invocation
            .key(ALERTS_KEY)
            .key(ACKS_KEY)
            .arg(&start)
            .arg(limit);
        let mut conn = self.conn.clone();
        let rows: Vec<Row> = bounded(self.timeout, invocation.invoke_async(&mut conn)).await?;
        decode_rows(rows)
    }

    /// Removes up to [`TRIM_BATCH`] of the oldest alerts raised before
    /// `older_than_ms`, with their indexes and acknowledgements; returns how
    /// many. Fewer than [`TRIM_BATCH`] means none is left: call it again
    /// until then (a batch per call keeps each script short).
    ///
    /// # Errors
    /// Redis.
    pub async fn trim(&self, older_than_ms: i64) -> Result<usize, AlertError> {
        if older_than_ms <= 0 {
            return Ok(0);
        }
        let upper = if older_than_ms > MAX_ID_MS {
            "+".to_owned()
        } else {
            format!("({}", id_floor(older_than_ms))
        };
        let mut invocation = self.trim.key(ORDER_KEY);
        invocation
            .key(ALERTS_KEY)
            .key(LEVELS_KEY)
            .key(ACKS_KEY)
            .arg(&upper)
            .arg(TRIM_BATCH);
        let mut conn = self.conn.clone();
        bounded(self.timeout, invocation.invoke_async(&mut conn)).await
    }

    /// The id of the newest alert stored, `None` when there is none.
    ///
    /// # Errors
    /// Redis.
    pub async fn latest_id(&self) -> Result<Option<String>, AlertError> {
        let mut conn = self.conn.clone();
        let ids: Vec<String> = bounded(
            self.timeout,
            redis::cmd("ZREVRANGEBYLEX")
                .arg(ORDER_KEY)
                .arg("+")
                .arg("-")
                .arg("LIMIT")
                .arg(0)
                .arg(1)
                .query_async(&mut conn),
        )
        .await?;
        Ok(ids.into_iter().next())
    }

    /// Enforces the history's retention until `shutdown`: every
    /// [`RETENTION_INTERVAL`], removes the alerts raised more than `retention`
    /// before `clock`'s now, a [`TRIM_BATCH`] at a time. Every replica may run
    /// it: trimming is idempotent and each batch is atomic. Errors are logged
    /// and retried at the next interval.
    pub async fn retain(
        &self,
        retention: Duration,
        clock: Arc<dyn Clock>,
        shutdown: CancellationToken,
    ) {
        let retention_ms = i64::try_from(retention.as_millis()).unwrap_or(i64::MAX);
        loop {
            let horizon =
                tenantmeter_runtime::clock::unix_ms(clock.now()).saturating_sub(retention_ms);
            loop {
                if shutdown.is_cancelled() {
                    return;
                }
                match self.trim(horizon).await {
                    Ok(removed) if removed >= TRIM_BATCH => {}
                    Ok(removed) => {
                        if removed > 0 {
                            tracing::debug!(removed, horizon, "trimmed the alert history");
                        }
                        break;
                    }
                    Err(error) => {
                        tracing::warn!(%error, "could not trim the alert history; retrying later");
                        break;
                    }
                }
            }
            tokio::select! {
                () = shutdown.cancelled() => return,
                () = tokio::time::sleep(RETENTION_INTERVAL) => {}
            }
        }
    }

    /// The feed's current position (`0-0` when empty): a watcher starting
    /// live reads on from here.
    ///
    /// # Errors
    /// Redis.
    pub async fn feed_position(&self) -> Result<String, AlertError> {
        let invocation = self.feed_tail.key(FEED_KEY);
        let mut conn = self.conn.clone();
        bounded(self.timeout, invocation.invoke_async(&mut conn)).await
    }

    /// Up to `limit` alerts stored after feed `position`, in the order they
    /// were stored (not necessarily id order).
    ///
    /// # Errors
    /// [`AlertError::Invalid`] naming `position` when it is not a stream id;
    /// Redis; a corrupt record.
    pub async fn feed_after(&self, position: &str, limit: usize) -> Result<FeedRead, AlertError> {
        if parse_position(position).is_none() {
            return Err(AlertError::invalid(
                "position",
                "is not a feed position (<ms>-<seq>)",
            ));
        }
        let mut invocation = self.feed_read.key(FEED_KEY);
        invocation
            .key(ALERTS_KEY)
            .key(ACKS_KEY)
            .arg(position)
            .arg(limit.max(1));
        let mut conn = self.conn.clone();
        type FeedRow = (String, String, Option<Vec<u8>>, Option<String>);
        let (gap, rows): (i64, Vec<FeedRow>) =
            bounded(self.timeout, invocation.invoke_async(&mut conn)).await?;
        let entries = rows
            .into_iter()
            .map(|(position, alert_id, record, ack)| {
                let alert = record
                    .map(|record| decode(&alert_id, &record, ack.as_deref()))
                    .transpose()?;
                Ok(FeedEntry {
                    position,
                    alert_id,
                    alert,
                })
            })
            .collect::<Result<_, AlertError>>()?;
        Ok(FeedRead {
            gap: gap == 1,
            entries,
        })
    }
}

/// A feed position as (ms, seq), for ordering positions; `None` if malformed.
#[must_use]
pub(crate) fn parse_position(position: &str) -> Option<(u64, u64)> {
    let (ms, seq) = position.split_once('-')?;
    Some((ms.parse().ok()?, seq.parse().ok()?))
}

/// Whether a feed position is the empty feed's.
pub(crate) fn is_feed_start(position: &str) -> bool {
    position == FEED_START
}

fn page_size_of(page_size: i32) -> Result<usize, AlertError> {
    match usize::try_from(page_size) {
        Ok(0) => Ok(DEFAULT_PAGE_SIZE),
        Ok(size) if size <= MAX_PAGE_SIZE => Ok(size),
        Ok(_) | Err(_) => Err(AlertError::invalid(
            "page_size",
            format!("must be 0..={MAX_PAGE_SIZE} (0 means {DEFAULT_PAGE_SIZE}), got {page_size}"),
        )),
    }
}

fn check_id(field: &str, id: &str) -> Result<(), AlertError> {
    if super::is_alert_id(id) {
        Ok(())
    } else {
        Err(AlertError::invalid(
            field,
            format!("{id:?} is not an alert id (<13-digit ms>-<16 hex>)"),
        ))
    }
}

/// Validates alert `i` of an insert and returns (id, record, level).
fn prepare(i: usize, alert: &pb::Alert) -> Result<(String, Vec<u8>, i32), AlertError> {
    let field = |name: &str| format!("alerts[{i}].{name}");
    let subject = subject_at(alert.subject.as_ref(), &field("subject"))?;
    let raised_at_ms = alert
        .raised_at
        .as_ref()
        .map(timestamp_to_ms)
        .ok_or_else(|| AlertError::invalid(field("raised_at"), "is required"))?;
    if !(0..=MAX_ID_MS).contains(&raised_at_ms) {
        return Err(AlertError::invalid(
            field("raised_at"),
            format!("must be within 0..={MAX_ID_MS} Unix ms, got {raised_at_ms}"),
        ));
    }
    min_level_from_proto(alert.from_level, &field("from_level"))?;
    min_level_from_proto(alert.to_level, &field("to_level"))?;
    let id = alert_id(raised_at_ms, &subject);
    if !alert.alert_id.is_empty() && alert.alert_id != id {
        return Err(AlertError::invalid(
            field("alert_id"),
            format!(
                "must be empty or {id:?}, the id of its raised_at and subject, got {:?}",
                alert.alert_id
            ),
        ));
    }
    let stored = pb::Alert {
        alert_id: id.clone(),
        acknowledged: false,
        acknowledged_at: None,
        acknowledged_by: String::new(),
        acknowledge_comment: String::new(),
        ..alert.clone()
    };
    Ok((id, stored.encode_to_vec(), alert_level_rank(alert)))
}

fn decode_rows(rows: impl IntoIterator<Item = Row>) -> Result<Vec<pb::Alert>, AlertError> {
    rows.into_iter()
        .map(|(id, record, ack)| {
            let record = record.ok_or_else(|| {
                AlertError::Corrupt(format!("{id:?} is indexed but has no record"))
            })?;
            decode(&id, &record, ack.as_deref())
        })
        .collect()
}

fn decode(id: &str, record: &[u8], ack: Option<&str>) -> Result<pb::Alert, AlertError> {
    let corrupt = |why: String| AlertError::Corrupt(format!("{id:?}: {why}"));
    let mut alert = pb::Alert::decode(record).map_err(|e| corrupt(e.to_string()))?;
    // A record under another id would be listed in the wrong place: refuse it
    // rather than guess.
    if alert.alert_id != id {
        return Err(corrupt(format!("record carries id {:?}", alert.alert_id)));
    }
    if let Some(ack) = ack {
        let ack: StoredAck = serde_json::from_str(ack).map_err(|e| corrupt(e.to_string()))?;
        alert.acknowledged = true;
        alert.acknowledged_at = Some(ms_to_timestamp(ack.at_ms));
        alert.acknowledged_by = ack.by;
        alert.acknowledge_comment = ack.comment;
    }
    Ok(alert)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn positions_parse_and_page_sizes_are_bounded() {
        assert_eq!(
            parse_position("1767225600000-3"),
            Some((1_767_225_600_000, 3))
        );
        assert_eq!(parse_position("0-0"), Some((0, 0)));
        assert!(is_feed_start("0-0"));
        for bad in ["", "1", "a-1", "1-", "-1"] {
            assert_eq!(parse_position(bad), None, "{bad}");
        }
        assert_eq!(page_size_of(0).unwrap(), DEFAULT_PAGE_SIZE);
        assert_eq!(page_size_of(1_000).unwrap(), 1_000);
        assert_eq!(page_size_of(-1).unwrap_err().field(), Some("page_size"));
        assert_eq!(page_size_of(1_001).unwrap_err().field(), Some("page_size"));
    }
}
