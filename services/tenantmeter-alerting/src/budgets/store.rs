//! The budgets' Redis keyspace. Every key carries the one hash tag `{al}`, so
//! all of them live in one slot and a change touches the record and its index
//! in ONE Lua script, atomically, on one server and on Redis Cluster alike.
//! Budgets are configuration-sized (a few per tenant, changed by admins, read
//! once per evaluation pass), so one slot is not a hot spot.
//!
//! | key | type | content |
//! |---|---|---|
//! | `{al}:budgets` | hash | `<subject> <period>` -> the budget as JSON |
//! | `{al}:budgets:order` | sorted set | every `<subject> <period>`, score 0 |
//!
//! `<subject>` is `!fleet` or the tenant id; `<period>` is `1-month` or
//! `2-day`. The members are built so that their byte order IS the order
//! ListBudgets promises — the fleet first, then by tenant id, month before
//! day — and ZRANGEBYLEX pages through them without SCAN:
//! - `!` (0x21) sorts below every tenant id character (`[A-Za-z0-9._-]`,
//!   0x2D and up), and is not one, so the fleet comes first and never
//!   collides with a tenant;
//! - the space separator (0x20) sorts below every id character, so `a 1-month`
//!   comes before `ab 1-month` (plain id order);
//! - `1-month` < `2-day`.
//!
//! A page token is the last member of the previous page; the next page starts
//! strictly after it, so a budget deleted between pages does not break paging.
//!
//! No key has a TTL: budgets are configuration, not a cache. Scripts are
//! versioned by name; a layout change gets new scripts.

use std::future::Future;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use tenantmeter_domain::ids::TenantId;
use tenantmeter_domain::levels::CostBasis;
use tenantmeter_domain::window::CalendarPeriod;
use tenantmeter_runtime::redis_connection::RedisConnection;

use super::{Budget, BudgetError, Enforcement, Subject};

/// The hash tag shared by every alerting key.
pub const TAG: &str = "{al}";
/// Hash of every budget: `<subject> <period>` -> JSON.
pub const BUDGETS_KEY: &str = "{al}:budgets";
/// Sorted set of every `<subject> <period>`, score 0, for ordered paging.
pub const ORDER_KEY: &str = "{al}:budgets:order";
/// Page size when a request gives 0.
pub const DEFAULT_PAGE_SIZE: usize = 100;
/// Largest page size a request may ask for.
pub const MAX_PAGE_SIZE: usize = 1_000;

const FLEET_MEMBER: &str = "!fleet";
const MONTH_MEMBER: &str = "1-month";
const DAY_MEMBER: &str = "2-day";

/// Inserts or replaces one budget and indexes it.
/// KEYS: budgets, order. ARGV: member, JSON. Replies 1 when it was new.
const SET_V1: &str = r"-- tenantmeter alerting budget set v1
local added = redis.call('HSET', KEYS[1], ARGV[1], ARGV[2])
redis.call('ZADD', KEYS[2], 0, ARGV[1])
return added
";

/// Removes one budget and its index entry.
/// KEYS: budgets, order. ARGV: member. Replies 1 when there was one.
const DELETE_V1: &str = r"-- tenantmeter alerting budget delete v1
local removed = redis.call('HDEL', KEYS[1], ARGV[1])
redis.call('ZREM', KEYS[2], ARGV[1])
return removed
";

/// One page in order, index and records read in the same atomic step, so a
/// concurrent set or delete is seen wholly or not at all.
/// KEYS: budgets, order. ARGV: ZRANGEBYLEX start (`-` or `(<member>`), count.
/// Replies `{{member, json or nil}, ...}`.
const PAGE_V1: &str = r"-- tenantmeter alerting budget page v1
local members = redis.call('ZRANGEBYLEX', KEYS[2], ARGV[1], '+', 'LIMIT', 0, tonumber(ARGV[2]))
if #members == 0 then return {} end
local values = redis.call('HMGET', KEYS[1], unpack(members))
local out = {}
for i = 1, #members do
  out[i] = {members[i], values[i]}
end
return out
";

/// The member (and hash field) of a subject's budget for a period.
#[must_use]
pub fn subject_period_key(subject: &Subject, period: CalendarPeriod) -> String {
    let subject = match subject {
        Subject::Fleet => FLEET_MEMBER,
        Subject::Tenant(id) => id.as_str(),
    };
    let period = match period {
        CalendarPeriod::Month => MONTH_MEMBER,
        CalendarPeriod::Day => DAY_MEMBER,
    };
    format!("{subject} {period}")
}

/// The (subject, period) of a member, or `None` if it is not one.
fn parse_member(member: &str) -> Option<(Subject, CalendarPeriod)> {
    let (subject, period) = member.split_once(' ')?;
    let period = match period {
        MONTH_MEMBER => CalendarPeriod::Month,
        DAY_MEMBER => CalendarPeriod::Day,
        _ => return None,
    };
    let subject = if subject == FLEET_MEMBER {
        Subject::Fleet
    } else {
        Subject::Tenant(TenantId::parse(subject).ok()?)
    };
    Some((subject, period))
}

#[derive(Debug, Clone, Copy, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
enum StoredPeriod {
    Day,
    Month,
}

#[derive(Debug, Clone, Copy, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
enum StoredEnforcement {
    Soft,
    Hard,
}

/// The JSON of one budget. Its own type, not `Budget`, so the stored format
/// changes only on purpose. Subject and period are in the member too; they are
/// repeated here so a record read alone (redis-cli) is self-explanatory.
#[derive(Debug, Serialize, Deserialize)]
struct StoredBudget {
    /// Tenant id; absent for the fleet.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    tenant_id: Option<String>,
    period: StoredPeriod,
    basis: CostBasis,
    amount_nanos_usd: i64,
    enforcement: StoredEnforcement,
    updated_at_ms: i64,
}

fn encode(budget: &Budget) -> Result<String, BudgetError> {
    let stored = StoredBudget {
        tenant_id: budget.subject.tenant().map(|t| t.as_str().to_owned()),
        period: match budget.period {
            CalendarPeriod::Day => StoredPeriod::Day,
            CalendarPeriod::Month => StoredPeriod::Month,
        },
        basis: budget.basis,
        amount_nanos_usd: budget.amount_nanos_usd,
        enforcement: match budget.enforcement {
            Enforcement::Soft => StoredEnforcement::Soft,
            Enforcement::Hard => StoredEnforcement::Hard,
        },
        updated_at_ms: budget.updated_at_ms,
    };
    serde_json::to_string(&stored).map_err(|e| BudgetError::Corrupt(format!("encoding: {e}")))
}

fn decode(member: &str, json: &str) -> Result<Budget, BudgetError> {
    let corrupt = |why: String| BudgetError::Corrupt(format!("{member:?}: {why}"));
    let stored: StoredBudget = serde_json::from_str(json).map_err(|e| corrupt(e.to_string()))?;
    let subject = match stored.tenant_id {
        None => Subject::Fleet,
        Some(id) => Subject::Tenant(TenantId::parse(id).map_err(|e| corrupt(e.to_string()))?),
    };
    let budget = Budget {
        subject,
        period: match stored.period {
            StoredPeriod::Day => CalendarPeriod::Day,
            StoredPeriod::Month => CalendarPeriod::Month,
        },
        basis: stored.basis,
        amount_nanos_usd: stored.amount_nanos_usd,
        enforcement: match stored.enforcement {
            StoredEnforcement::Soft => Enforcement::Soft,
            StoredEnforcement::Hard => Enforcement::Hard,
        },
        updated_at_ms: stored.updated_at_ms,
    };
    // A record under another budget's field would be listed in the wrong
    // place and deleted under the wrong name: refuse it rather than guess.
    if subject_period_key(&budget.subject, budget.period) != member {
        return Err(corrupt("record does not match its field".to_owned()));
    }
    Ok(budget)
}

/// Budgets in Redis. Cheap to clone (clones share the connection).
#[derive(Debug, Clone)]
pub struct BudgetStore {
    conn: RedisConnection,
    timeout: Duration,
    set: redis::Script,
    delete: redis::Script,
    page: redis::Script,
}

impl BudgetStore {
    /// Connects to one server (`urls` has one entry) or to a cluster (any
    /// number of seed nodes). Every later call is bounded by `timeout`.
    ///
    /// # Errors
    /// [`BudgetError::Redis`] or [`BudgetError::Timeout`] when Redis cannot
    /// be reached.
    pub async fn connect(
        urls: &[String],
        cluster: bool,
        timeout: Duration,
    ) -> Result<Self, BudgetError> {
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
            set: redis::Script::new(SET_V1),
            delete: redis::Script::new(DELETE_V1),
            page: redis::Script::new(PAGE_V1),
        }
    }

    /// Inserts or replaces `budget` (keyed by subject and period), stamped
    /// `updated_at_ms = now_ms`; returns it as stored.
    ///
    /// # Errors
    /// [`BudgetError::Invalid`] (see [`Budget::validate`]), or Redis.
    pub async fn set(&self, budget: &Budget, now_ms: i64) -> Result<Budget, BudgetError> {
        budget.validate()?;
        let stored = Budget {
            updated_at_ms: now_ms,
            ..budget.clone()
        };
        let member = subject_period_key(&stored.subject, stored.period);
        let json = encode(&stored)?;
        let mut conn = self.conn.clone();
        let mut invocation = self.set.key(BUDGETS_KEY);
        invocation.key(ORDER_KEY).arg(&member).arg(&json);
        let _added: i64 = bounded(self.timeout, invocation.invoke_async(&mut conn)).await?;
        Ok(stored)
    }

    /// The budgets of `subject`, month first; empty when none is set.
    ///
    /// # Errors
    /// Redis, or a corrupt record.
    pub async fn get(&self, subject: &Subject) -> Result<Vec<Budget>, BudgetError> {
        let members = [
            subject_period_key(subject, CalendarPeriod::Month),
            subject_period_key(subject, CalendarPeriod::Day),
        ];
        let mut conn = self.conn.clone();
        let values: Vec<Option<String>> = bounded(
            self.timeout,
            redis::cmd("HMGET")
                .arg(BUDGETS_KEY)
                .arg(&members[..])
                .query_async(&mut conn),
        )
        .await?;
        members
            .iter()
            .zip(values)
            .filter_map(|(member, json)| json.map(|json| decode(member, &json)))
            .collect()
    }

    /// The budget of `subject` for `period`.
    ///
    /// # Errors
    /// [`BudgetError::NotFound`] when there is none; Redis; a corrupt record.
    pub async fn get_one(
        &self,
        subject: &Subject,
        period: CalendarPeriod,
    ) -> Result<Budget, BudgetError> {
        let member = subject_period_key(subject, period);
        let mut conn = self.conn.clone();
        let json: Option<String> = bounded(
            self.timeout,
            redis::cmd("HGET")
                .arg(BUDGETS_KEY)
                .arg(&member)
                .query_async(&mut conn),
        )
        .await?;
        match json {
            Some(json) => decode(&member, &json),
            None => Err(BudgetError::NotFound(member)),
        }
    }

    /// One page of all budgets: the fleet's first, then by tenant id, month
    /// before day. `page_size` 0 means [`DEFAULT_PAGE_SIZE`]; `page_token` is
    /// the previous page's next token, empty for the first page. The returned
    /// token is empty on the last page.
    ///
    /// # Errors
    /// [`BudgetError::Invalid`] naming `page_size` (negative or above
    /// [`MAX_PAGE_SIZE`]) or `page_token` (not one this store issued); Redis;
    /// a corrupt record.
    pub async fn list(
        &self,
        page_size: i32,
        page_token: &str,
    ) -> Result<(Vec<Budget>, String), BudgetError> {
        let size = match usize::try_from(page_size) {
            Ok(0) => DEFAULT_PAGE_SIZE,
            Ok(size) if size <= MAX_PAGE_SIZE => size,
            Ok(_) | Err(_) => {
                return Err(BudgetError::invalid(
                    "page_size",
                    format!(
                        "must be 0..={MAX_PAGE_SIZE} (0 means {DEFAULT_PAGE_SIZE}), got {page_size}"
                    ),
                ));
            }
        };
        let start = if page_token.is_empty() {
            "-".to_owned()
        } else if parse_member(page_token).is_some() {
            format!("({page_token}")
        } else {
            return Err(BudgetError::invalid(
                "page_token",
                "is not a token returned by ListBudgets",
            ));
        };
        let mut conn = self.conn.clone();
        let mut invocation = self.page.key(BUDGETS_KEY);
        // One more than asked: its presence says whether a next page exists.
        invocation.key(ORDER_KEY).arg(&start).arg(size + 1);
        let rows: Vec<(String, Option<String>)> =
            bounded(self.timeout, invocation.invoke_async(&mut conn)).await?;
        let more = rows.len() > size;
        let mut budgets = Vec::with_capacity(size.min(rows.len()));
        let mut last = String::new();
        for (member, json) in rows.into_iter().take(size) {
            let json = json.ok_or_else(|| {
                BudgetError::Corrupt(format!("{member:?} is indexed but has no record"))
            })?;
            budgets.push(decode(&member, &json)?);
            last = member;
        }
        let next = if more { last } else { String::new() };
        Ok((budgets, next))
    }

    /// Every budget, in ListBudgets order, for the evaluation loop (budgets
    /// are configuration-sized, so one HGETALL per pass is cheap).
    ///
    /// # Errors
    /// Redis, or a corrupt record.
    pub async fn all(&self) -> Result<Vec<Budget>, BudgetError> {
        let mut conn = self.conn.clone();
        let mut rows: Vec<(String, String)> = bounded(
            self.timeout,
            redis::cmd("HGETALL")
                .arg(BUDGETS_KEY)
                .query_async(&mut conn),
        )
        .await?;
        // Byte order of the members is the list order (module docs), and
        // Rust's `str` order is byte order, as ZRANGEBYLEX's.
        rows.sort_unstable_by(|a, b| a.0.cmp(&b.0));
        rows.iter()
            .map(|(member, json)| decode(member, json))
            .collect()
    }

    /// Removes the budget of `subject` for `period`; false when there was none.
    ///
    /// # Errors
    /// Redis.
    pub async fn delete(
        &self,
        subject: &Subject,
        period: CalendarPeriod,
    ) -> Result<bool, BudgetError> {
        let member = subject_period_key(subject, period);
        let mut conn = self.conn.clone();
        let mut invocation = self.delete.key(BUDGETS_KEY);
        invocation.key(ORDER_KEY).arg(&member);
        let removed: i64 = bounded(self.timeout, invocation.invoke_async(&mut conn)).await?;
        Ok(removed > 0)
    }
}

/// `call` bounded by `timeout`: a Redis that hangs (a partition, a stuck
/// failover) must become an UNAVAILABLE answer, never a hung RPC.
async fn bounded<T>(
    timeout: Duration,
    call: impl Future<Output = Result<T, redis::RedisError>>,
) -> Result<T, BudgetError> {
    match tokio::time::timeout(timeout, call).await {
        Ok(result) => Ok(result?),
        Err(_elapsed) => Err(BudgetError::Timeout(timeout)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn members_sort_in_list_order() {
        let t = |id: &str| Subject::Tenant(TenantId::parse(id).unwrap());
        let mut members = vec![
            subject_period_key(&t("ab"), CalendarPeriod::Day),
            subject_period_key(&t("a"), CalendarPeriod::Day),
            subject_period_key(&t("-z"), CalendarPeriod::Month),
            subject_period_key(&t("ab"), CalendarPeriod::Month),
            subject_period_key(&Subject::Fleet, CalendarPeriod::Day),
            subject_period_key(&t("a"), CalendarPeriod::Month),
            subject_period_key(&Subject::Fleet, CalendarPeriod::Month),
        ];
        members.sort();
        assert_eq!(
            members,
            [
                "!fleet 1-month",
                "!fleet 2-day",
                "-z 1-month",
                "a 1-month",
                "a 2-day",
                "ab 1-month",
                "ab 2-day"
            ]
        );
        for member in &members {
            let (subject, period) = parse_member(member).unwrap();
            assert_eq!(&subject_period_key(&subject, period), member);
        }
        assert!(parse_member("a 3-week").is_none());
        assert!(parse_member("a b 1-month").is_none());
    }
}
