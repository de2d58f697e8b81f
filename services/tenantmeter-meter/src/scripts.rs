//! The meter's Lua scripts: every multi-key update of a tenant is one of these,
//! run atomically on the tenant's slot.
//!
//! `KEYS[1]` is always the tenant's key prefix `{t:<tenant>}`; every other key a
//! script touches is built from it, so all of them share the hash tag and the
//! slot, on one server and on Redis Cluster alike. Counters are only ever
//! changed with HINCRBY/HSET on integer strings: Redis does the 64-bit
//! arithmetic, Lua never holds a money amount as a float.
//!
//! Scripts are versioned by name (`-- tenantmeter meter <name> vN`, and the
//! Rust constant): a change of key layout gets a new script, never an edit
//! that old replicas would run against new data.
//!
//! Keys of a tenant (all with a TTL):
//! - `:e:<event id>`         dedupe mark, `allowed lateness + skew + 1 min`
//! - `:w:<win>[:<model>]`    rolling window ring: `<slot>.s` = bucket, `<slot>.<metric>`
//! - `:h:<hour>` `:d:<day>` `:mo:<month>`  rollups: `<metric>` and `<model>|<metric>`
//! - `:meta`                 `last` event time
//! - `:res` `:rx` `:inf`     reservations: id -> tokens, id -> expiry, in-flight totals
//! - `:policy`               the enforced policy (expires with it)
//!
//! Metrics: `r` requests, `i` `o` `cr` `cw` tokens, `c` provider cost and `rv`
//! rated value, both in pico-USD.

/// Shared definitions prepended to every script.
const PRELUDE: &str = r"
local base = KEYS[1]
local WINDOWS = { {'1m', 1000}, {'5m', 5000}, {'1h', 60000}, {'1d', 1440000} }
local RING = 120
local METRICS = {'r', 'i', 'o', 'cr', 'cw', 'c', 'rv'}

local function now_ms(override)
  if override ~= nil and override ~= '' then return tonumber(override) end
  local t = redis.call('TIME')
  return tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
end

-- Civil date of a day index (Howard Hinnant's civil_from_days).
local function civil(days)
  local z = days + 719468
  local era = math.floor(z / 146097)
  local doe = z - era * 146097
  local yoe = math.floor((doe - math.floor(doe / 1460) + math.floor(doe / 36524) - math.floor(doe / 146096)) / 365)
  local doy = doe - (365 * yoe + math.floor(yoe / 4) - math.floor(yoe / 100))
  local mp = math.floor((5 * doy + 2) / 153)
  local d = doy - math.floor((153 * mp + 2) / 5) + 1
  local m = mp < 10 and mp + 3 or mp - 9
  local y = yoe + era * 400 + (m <= 2 and 1 or 0)
  return y, m, d
end

-- Day index of a civil date (days_from_civil).
local function days_from_civil(y, m, d)
  if m <= 2 then y = y - 1 end
  local era = math.floor(y / 400)
  local yoe = y - era * 400
  local mp = m > 2 and m - 3 or m + 9
  local doy = math.floor((153 * mp + 2) / 5) + d - 1
  local doe = yoe * 365 + math.floor(yoe / 4) - math.floor(yoe / 100) + doy
  return era * 146097 + doe - 719468
end

local function month_of(day)
  local y, m = civil(day)
  return y * 12 + m - 1, y, m
end

-- Milliseconds at which the month holding `day` ends.
local function month_end_ms(day)
  local _, y, m = month_of(day)
  if m == 12 then y, m = y + 1, 1 else m = m + 1 end
  return days_from_civil(y, m, 1) * 86400000
end

-- Adds one event's values to the ring slot of `bucket`, unless the slot holds
-- a newer bucket (the event is then older than the window).
local function add_window(key, bucket, v, ttl_s)
  local slot = bucket % RING
  local stamp = redis.call('HGET', key, slot .. '.s')
  local held = nil
  if stamp then held = tonumber(stamp) end
  if held == bucket then
    for j = 1, 7 do
      if v[j] ~= '0' then redis.call('HINCRBY', key, slot .. '.' .. METRICS[j], v[j]) end
    end
  elseif held == nil or held < bucket then
    local args = {slot .. '.s', bucket}
    for j = 1, 7 do
      args[#args + 1] = slot .. '.' .. METRICS[j]
      args[#args + 1] = v[j]
    end
    redis.call('HSET', key, unpack(args))
  else
    return
  end
  redis.call('EXPIRE', key, ttl_s)
end

-- The TTL runs to expire_at_s on the caller's clock (now_s), not Redis'
-- wall clock, so a meter on simulated time keeps what it counts.
local function add_rollup(key, model, v, expire_at_s, now_s)
  for j = 1, 7 do
    if v[j] ~= '0' then
      redis.call('HINCRBY', key, METRICS[j], v[j])
      redis.call('HINCRBY', key, model .. '|' .. METRICS[j], v[j])
    end
  end
  redis.call('EXPIRE', key, math.max(1, expire_at_s - now_s))
end

-- Counts one event (its dedupe mark already set) everywhere it belongs.
local function count(model, t, v, hour_retention_s, day_retention_s, now)
  local now_s = math.floor(now / 1000)
  for _, w in ipairs(WINDOWS) do
    local bucket = math.floor(t / w[2])
    local ttl = math.floor(w[2] * RING / 1000) + 60
    add_window(base .. ':w:' .. w[1], bucket, v, ttl)
    add_window(base .. ':w:' .. w[1] .. ':' .. model, bucket, v, ttl)
  end
  local hour = math.floor(t / 3600000)
  local day = math.floor(t / 86400000)
  local month = month_of(day)
  add_rollup(base .. ':h:' .. hour, model, v, (hour + 1) * 3600 + hour_retention_s, now_s)
  add_rollup(base .. ':d:' .. day, model, v, (day + 1) * 86400 + day_retention_s, now_s)
  add_rollup(base .. ':mo:' .. month, model, v,
    math.floor(month_end_ms(day) / 1000) + day_retention_s, now_s)
  local meta = base .. ':meta'
  local last = tonumber(redis.call('HGET', meta, 'last') or '0')
  if t > last then redis.call('HSET', meta, 'last', t) end
  redis.call('EXPIRE', meta, day_retention_s)
end

-- Reservations: `:res` id -> tokens, `:rx` id -> expiry ms, `:inf` totals.
local function release(id)
  local tokens = redis.call('HGET', base .. ':res', id)
  if not tokens then return false end
  redis.call('HDEL', base .. ':res', id)
  redis.call('ZREM', base .. ':rx', id)
  redis.call('HINCRBY', base .. ':inf', 'r', -1)
  redis.call('HINCRBY', base .. ':inf', 't', '-' .. tokens)
  return true
end

local function purge(now)
  local expired = redis.call('ZRANGEBYSCORE', base .. ':rx', '-inf', now)
  for _, id in ipairs(expired) do release(id) end
end

-- Reads the 9 event fields at ARGV[o..o+8]: id, model, time, i, o, cr, cw, cost, rated.
local function event_at(o)
  return ARGV[o], ARGV[o + 1], tonumber(ARGV[o + 2]),
    {'1', ARGV[o + 3], ARGV[o + 4], ARGV[o + 5], ARGV[o + 6], ARGV[o + 7], ARGV[o + 8]}
end
";

/// Counts a batch of one tenant's events, each at most once.
///
/// ARGV: now (ms, the meter's clock), dedupe TTL s, hourly retention s, daily
/// retention s, then 9 fields per event (see `event_at`). Returns one integer
/// per event: 1 counted, 0 duplicate.
pub const RECORD_V2: &str = r"
-- tenantmeter meter record v2
local out = {}
local now = now_ms(ARGV[1])
local events = (#ARGV - 4) / 9
for e = 0, events - 1 do
  local id, model, t, v = event_at(5 + e * 9)
  if redis.call('SET', base .. ':e:' .. id, '1', 'NX', 'EX', ARGV[2]) then
    count(model, t, v, tonumber(ARGV[3]), tonumber(ARGV[4]), now)
    out[e + 1] = 1
  else
    out[e + 1] = 0
  end
end
return out
";

/// Admits or denies a request, and reserves its tokens when admitted.
///
/// ARGV: 1 now override (empty: server time), 2 reservation id, 3 model,
/// 4 tokens, 5 lease ms, 6 plan requests/min, 7 plan tokens/min, 8 plan month
/// rated-value cap (pico, 0 none), 9 number of downgrade targets, then targets.
///
/// Returns {admitted, reason, limit, current, by_policy, retry_ms, level,
/// model, downgraded, lease_expires_ms, shadow_reason, shadow_limit,
/// shadow_current, shadow_retry_ms, policy_reason}; numbers as strings where
/// they can exceed Lua's exact integer range.
pub const RESERVE_V1: &str = r"
-- tenantmeter meter reserve v1
local now = now_ms(ARGV[1])
purge(now)
local id, model, tokens, lease = ARGV[2], ARGV[3], tonumber(ARGV[4]), tonumber(ARGV[5])

local policy = {}
local raw = redis.call('HGETALL', base .. ':policy')
for i = 1, #raw, 2 do policy[raw[i]] = raw[i + 1] end
if policy.exp and tonumber(policy.exp) <= now then policy = {} end
local level = tonumber(policy.level or '0')
local shadow = policy.shadow == '1'
local policy_end = tonumber(policy.exp or '0')

local downgraded = 0
local target = policy['dg:' .. model]
if target then
  for i = 10, 9 + tonumber(ARGV[9]) do
    if ARGV[i] == target then
      model = target
      downgraded = 1
    end
  end
end

-- Figures: the rolling minute (requests, tokens), in flight, the periods.
local win = {}
local raw_win = redis.call('HGETALL', base .. ':w:1m')
for i = 1, #raw_win, 2 do win[raw_win[i]] = raw_win[i + 1] end
local last_bucket = math.floor(now / 1000)
local minute_r, minute_t, oldest = 0, 0, nil
for b = last_bucket - 59, last_bucket do
  local slot = b % RING
  if tonumber(win[slot .. '.s'] or '-1') == b then
    local r = tonumber(win[slot .. '.r'] or '0')
    local t = tonumber(win[slot .. '.i'] or '0') + tonumber(win[slot .. '.o'] or '0')
      + tonumber(win[slot .. '.cr'] or '0') + tonumber(win[slot .. '.cw'] or '0')
    minute_r = minute_r + r
    minute_t = minute_t + t
    if oldest == nil and (r > 0 or t > 0) then oldest = b end
  end
end
local inflight_r = tonumber(redis.call('HGET', base .. ':inf', 'r') or '0')
local inflight_t = tonumber(redis.call('HGET', base .. ':inf', 't') or '0')
local day = math.floor(now / 86400000)
local month = month_of(day)
-- Period figures stay strings: pico-USD sums can pass Lua's exact integer range.
local day_figures = redis.call('HMGET', base .. ':d:' .. day, 'c', 'rv')
local month_figures = redis.call('HMGET', base .. ':mo:' .. month, 'c', 'rv')

-- Time until the rolling minute frees capacity: the oldest counted bucket
-- leaves it, or the earliest lease ends.
local function rate_retry()
  local retry = 1000
  if oldest ~= nil then retry = (oldest + 60) * 1000 - now end
  local first = redis.call('ZRANGE', base .. ':rx', 0, 0, 'WITHSCORES')
  if first[2] ~= nil then
    local lease_left = tonumber(first[2]) - now
    if oldest == nil or lease_left < retry then retry = lease_left end
  end
  if retry < 1 then retry = 1 end
  return retry
end

-- The stricter of two limits (integer strings, 0 means none), as given, and
-- 1 when the policy's won.
local function stricter(plan, pol)
  plan, pol = plan or '0', pol or '0'
  local a, b = tonumber(plan), tonumber(pol)
  if b > 0 and (a == 0 or b < a) then return pol, 1 end
  return plan, 0
end

-- Checks the limits with or without the policy; nil when admitted, else
-- {reason, limit, current, by_policy, retry}.
local function check(with_policy)
  local p = with_policy and policy or {}
  local deny = p.deny
  if deny and string.find(deny, ',' .. model .. ',', 1, true) then
    return {5, 0, 0, 1, math.max(policy_end - now, 1)}
  end
  -- {limit, current, period end, by_policy}; the plan's month cap is merged
  -- with the policy's, the others only exist in a policy.
  local cap_m_rv, month_by = stricter(ARGV[8], p.cap_m_rv)
  local caps = {
    {p.cap_d_c, day_figures[1], (day + 1) * 86400000, 1},
    {p.cap_m_c, month_figures[1], month_end_ms(day), 1},
    {p.cap_d_rv, day_figures[2], (day + 1) * 86400000, 1},
    {cap_m_rv, month_figures[2], month_end_ms(day), month_by},
  }
  for _, cap in ipairs(caps) do
    local limit = tonumber(cap[1] or '0')
    local current = cap[2] or '0'
    if limit > 0 and tonumber(current) >= limit then
      local retry = cap[3] - now
      if cap[4] == 1 and policy_end > now and policy_end < cap[3] then retry = policy_end - now end
      return {4, tostring(cap[1]), current, cap[4], retry}
    end
  end
  local tpm_limit, tpm_by = stricter(ARGV[7], p.tpm)
  local tpm = tonumber(tpm_limit)
  if tpm > 0 and tokens > tpm then return {3, tpm, tokens, tpm_by, 0} end
  if tpm > 0 and minute_t + inflight_t + tokens > tpm then
    return {2, tpm, minute_t + inflight_t, tpm_by, rate_retry()}
  end
  local rpm_limit, rpm_by = stricter(ARGV[6], p.rpm)
  local rpm = tonumber(rpm_limit)
  if rpm > 0 and minute_r + inflight_r + 1 > rpm then
    return {1, rpm, minute_r + inflight_r, rpm_by, rate_retry()}
  end
  return nil
end

local enforced = check(not shadow)
if enforced ~= nil then
  return {0, enforced[1], tostring(enforced[2]), tostring(enforced[3]), enforced[4], enforced[5], level,
    model, downgraded, 0, 0, '0', '0', 0, policy.reason or ''}
end
local would = {0, 0, 0, 0, 0}
if shadow then would = check(true) or would end

local expires = now + lease
redis.call('HSET', base .. ':res', id, tokens)
redis.call('ZADD', base .. ':rx', expires, id)
redis.call('HINCRBY', base .. ':inf', 'r', 1)
redis.call('HINCRBY', base .. ':inf', 't', tokens)
local keep = math.floor(lease / 1000) + 60
for _, k in ipairs({':res', ':rx', ':inf'}) do
  if redis.call('TTL', base .. k) < keep then redis.call('EXPIRE', base .. k, keep) end
end
return {1, 0, '0', '0', 0, 0, level, model, downgraded, expires,
  would[1], tostring(would[2]), tostring(would[3]), would[5], policy.reason or ''}
";

/// Records an admitted request's usage and releases its reservation.
///
/// ARGV: 1 now override, 2 reservation id (may be empty), 3 dedupe TTL s,
/// 4 hourly retention s, 5 daily retention s, then the 9 event fields.
/// Returns {counted 1/0, released 1/0, month rated value after (pico, string),
/// level}.
pub const SETTLE_V2: &str = r"
-- tenantmeter meter settle v2
local now = now_ms(ARGV[1])
purge(now)
local released = 0
if ARGV[2] ~= '' and release(ARGV[2]) then released = 1 end
local id, model, t, v = event_at(6)
local counted = 0
if redis.call('SET', base .. ':e:' .. id, '1', 'NX', 'EX', ARGV[3]) then
  count(model, t, v, tonumber(ARGV[4]), tonumber(ARGV[5]), now)
  counted = 1
end
local month = month_of(math.floor(t / 86400000))
local rated = redis.call('HGET', base .. ':mo:' .. month, 'rv') or '0'
local policy = redis.call('HMGET', base .. ':policy', 'level', 'exp')
local level = 0
if policy[1] and tonumber(policy[2] or '0') > now then level = tonumber(policy[1]) end
return {counted, released, rated, level}
";

/// Releases a reservation without usage. ARGV: 1 now override, 2 reservation id.
/// Returns 1 when an open reservation was released.
pub const RELEASE_V1: &str = r"
-- tenantmeter meter release v1
purge(now_ms(ARGV[1]))
if release(ARGV[2]) then return 1 end
return 0
";

/// Stores a policy unless a later-decided one is stored.
///
/// ARGV: 1 decided ms, 2 expires ms, then field/value pairs. Returns 1 applied,
/// 0 stale.
pub const APPLY_POLICY_V2: &str = r"
-- tenantmeter meter apply_policy v2
local key = base .. ':policy'
local stored = tonumber(redis.call('HGET', key, 'decided') or '-1')
if stored > tonumber(ARGV[1]) then return 0 end
redis.call('DEL', key)
local args = {'decided', ARGV[1], 'exp', ARGV[2]}
for i = 4, #ARGV do args[#args + 1] = ARGV[i] end
redis.call('HSET', key, unpack(args))
redis.call('PEXPIRE', key, math.max(1, tonumber(ARGV[3])))
return 1
";

/// In-flight reservations after purging expired ones. ARGV: 1 now override.
/// Returns {requests, tokens}.
pub const IN_FLIGHT_V1: &str = r"
-- tenantmeter meter in_flight v1
purge(now_ms(ARGV[1]))
local r = redis.call('HGET', base .. ':inf', 'r') or '0'
local t = redis.call('HGET', base .. ':inf', 't') or '0'
return {r, t}
";

/// A script: the prelude followed by its body, loaded once by SHA.
pub fn script(body: &str) -> redis::Script {
    redis::Script::new(&format!("{PRELUDE}\n{body}"))
}
