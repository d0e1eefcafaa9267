-- _lib.lua: helpers shared by every ledger script.
--
-- The loader (sidecar/scripts.py) prepends this file to each script, so every
-- script is still one self-contained EVALSHA on the server.
--
-- Common calling convention of all ledger scripts:
--   KEYS[1] account hash      config, aggregates and per-bucket fields (see below)
--   KEYS[2] burn-order zset   live buckets with remaining > 0 or held > 0, all score 0,
--                             member = okey (sorts lexicographically in burn order)
--   KEYS[3] deadlines zset    "b:<bucket>" at its expiry, "h:<hold>" at its TTL / purge time (ms)
--   KEYS[4] due zset          per shard: account -> its earliest deadline (for the sweeper)
--   KEYS[5] outbox stream     per shard: one entry per transaction
--   KEYS[6] holds hash        hold id -> JSON record (active ones, and closed ones until purged)
--   KEYS[7] plans hash        per shard: the plans (docs/plans.md), read for an account on one
--   ARGV[1] account id   ARGV[2] now (unix ms)   ARGV[3] transaction id
--   ARGV[4] retention (ms) of idempotency records, usage records and closed holds
--   ARGV[5] deadline (unix ms on Redis' clock, '' = none): the caller answers "unavailable"
--           once it passes, so a call that runs later (Redis was paused, the call queued)
--           must change nothing; mutating scripts call in_time() before their first write
--
-- Account hash fields: created, clock (latest now seen: time never runs backwards
-- for an account), avail (sum of remaining over live buckets), held, debt, seq
-- (per-account transaction sequence), ovl (overdraft limit), lbt (low-balance
-- threshold), att (auto top-up threshold), rl_n/rl_ms/rl_burst (rate: rl_n requests per
-- rl_ms, burst), tat (GCRA, us); cb:<purchase>, cbs:<purchase> and pc:<bucket> (the
-- clawback of a refunded or disputed purchase, see "Clawbacks" below and revoke.lua);
-- per bucket: m:<id> (static JSON), r:<id> (remaining; absent once expired), h:<id> (held);
-- per API key: k:<key id> (present while the key is active: '' or its rate 'n:ms:burst'),
-- kt:<key id> (its TAT); per priced route with a rate limit: rt:<route> (its TAT).
-- Spending limits (see "Spending limits" below): sl / ss (the account's limit and what was
-- spent in its window), kl:<key id> / ks:<key id> (an API key's).
--
-- Units: credits are integers in [-(2^53-1), 2^53-1], exact in Lua doubles as long
-- as every sum stays in that range (grant enforces it); times are unix milliseconds.
-- Rule: validate everything first, then write; nothing after the first write may fail.

local MAXINT = 9007199254740991
local NEVER = 999999999999999
local MAX_TIME = 253402300799999  -- 9999-12-31T23:59:59.999Z, the latest accepted timestamp
local OKEY_PREFIX = 43
local A, O, D, DUE, OUTBOX, H, P = KEYS[1], KEYS[2], KEYS[3], KEYS[4], KEYS[5], KEYS[6], KEYS[7]

local function fail(code, detail)
  error({err = 'CS ' .. code .. ' ' .. detail})
end

local function fmt(n)
  return string.format('%d', n)
end

local function int_arg(v, name, lo, hi)
  if type(v) ~= 'string' or #v == 0 or #v > 17 or not string.match(v, '^%-?%d+$') then
    fail('INVALID', name .. ' must be an integer')
  end
  local n = tonumber(v)
  if n < lo or n > hi then
    fail('INVALID', name .. ' must be between ' .. fmt(lo) .. ' and ' .. fmt(hi))
  end
  return n
end

local function opt_int_arg(v, name, lo, hi)
  if v == '' then return nil end
  return int_arg(v, name, lo, hi)
end

local function id_arg(v, name, maxlen)
  if type(v) ~= 'string' or #v == 0 or #v > maxlen or not string.match(v, '^[%w%._:%-]+$') then
    fail('INVALID', name .. ' must be 1-' .. maxlen .. ' characters of [A-Za-z0-9._:-]')
  end
  return v
end

local function text_arg(v, name, maxlen)
  if type(v) ~= 'string' or #v > maxlen then
    fail('INVALID', name .. ' must be at most ' .. maxlen .. ' bytes')
  end
  -- NUL cannot be stored in a PostgreSQL text column: refuse it here, not in the SQL writer.
  if string.find(v, '%z') then fail('INVALID', name .. ' must not contain NUL characters') end
  return v
end

local function json_obj_arg(v, name, maxlen)
  text_arg(v, name, maxlen)
  if v == '' then return v end
  local ok, t = pcall(cjson.decode, v)
  if not ok or type(t) ~= 'table' or string.sub(v, 1, 1) ~= '{' then
    fail('INVALID', name .. ' must be a JSON object')
  end
  return v
end

-- JSON encoder that keeps integers exact (cjson.encode rounds to 14 digits).
-- Tables with t[1] (or empty ones) are arrays; others are objects with sorted keys.
local function jenc(v)
  local t = type(v)
  if t == 'number' then return fmt(v) end
  if t == 'string' then return cjson.encode(v) end
  if t == 'boolean' then return v and 'true' or 'false' end
  if t ~= 'table' then return 'null' end
  local parts = {}
  if v[1] ~= nil or next(v) == nil then
    for i = 1, #v do parts[i] = jenc(v[i]) end
    return '[' .. table.concat(parts, ',') .. ']'
  end
  local keys = {}
  for k in pairs(v) do keys[#keys + 1] = k end
  table.sort(keys)
  for i, k in ipairs(keys) do parts[i] = cjson.encode(k) .. ':' .. jenc(v[k]) end
  return '{' .. table.concat(parts, ',') .. '}'
end

local ACCOUNT = id_arg(ARGV[1], 'account', 128)
local NOW = int_arg(ARGV[2], 'now', 0, MAX_TIME)
local TXID = id_arg(ARGV[3], 'transaction_id', 64)
local RETENTION = int_arg(ARGV[4], 'retention_ms', 1, 10 * 366 * 86400000)
local DEADLINE = opt_int_arg(ARGV[5], 'deadline', 0, MAX_TIME)

-- Refuses (LATE, nothing written) a call that runs after its caller's deadline. Called after
-- a replay is answered (a retry of a call that did run still gets its result) and before the
-- first write. Redis' own clock: the caller's deadline already allows for skew (the sidecar
-- sets it a margin before it gives up itself).
local function in_time()
  if not DEADLINE then return end
  local t = redis.call('TIME')
  local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
  if now > DEADLINE then
    fail('LATE', 'the call reached Redis ' .. fmt(now - DEADLINE) .. ' ms after its deadline')
  end
end

-- A short digest of what a request asked for beyond its cost, stored with its idempotency
-- record: a replay must be the same request, not only the same key. Each part is
-- length-prefixed, so no two different lists of parts give the same input.
local function request_fp(parts)
  local buf = {}
  for i, v in ipairs(parts) do buf[i] = #v .. ':' .. v end
  return string.sub(redis.sha1hex(table.concat(buf)), 1, 16)
end

-- Attempt tokens (deduct.lua ARGV[17], void.lua): an idempotency record lists the call
-- attempts that took effect through it (at) and those voided since (vd). Bounded: past
-- MAX_ATTEMPTS an attempt is not listed but ax is set, and such a record is never voided (an
-- unlisted attempt may have delivered its 200).
local MAX_ATTEMPTS = 16

local function token_arg(v)
  if type(v) ~= 'string' or #v == 0 or #v > 32 or not string.match(v, '^%w+$') then
    fail('INVALID', 'attempt token must be 1-32 characters of [A-Za-z0-9]')
  end
  return v
end

local function has(list, v)
  for _, x in ipairs(list or {}) do
    if x == v then return true end
  end
  return false
end

-- Adds an attempt's token to record p; returns whether p changed.
local function add_attempt(p, token)
  if has(p.at, token) then return false end
  if #p.at >= MAX_ATTEMPTS then
    if p.ax then return false end
    p.ax = 1
  else
    p.at[#p.at + 1] = token
  end
  return true
end

local acct = nil        -- loaded account state (numbers), written back by save_account()
local ANCHOR = nil      -- an account on a plan: its anchor (ms), where its spend windows start
local extra_txns = 0    -- transactions emitted besides the main one (expiries, lapsed holds)
local deadlines_changed = false

-- An account on a plan (pl) gets the plan's rate limit and spending limit where it has none
-- of its own: acct.rl_* and acct.sl are what applies, own_rl / own_sl what the account set.
local function load_account()
  local v = redis.call('HMGET', A, 'created', 'clock', 'avail', 'held', 'debt', 'seq',
    'ovl', 'lbt', 'rl_n', 'rl_ms', 'rl_burst', 'att', 'sl', 'ss', 'pl', 'pan', 'pn')
  if not v[1] then return nil end
  acct = {
    created = tonumber(v[1]), avail = tonumber(v[3]) or 0, held = tonumber(v[4]) or 0,
    debt = tonumber(v[5]) or 0, seq = tonumber(v[6]) or 0, ovl = tonumber(v[7]) or 0,
    lbt = tonumber(v[8]), rl_n = tonumber(v[9]), rl_ms = tonumber(v[10]),
    rl_burst = tonumber(v[11]), att = tonumber(v[12]), sl = v[13] or nil, ss = v[14] or nil,
    pl = v[15] or nil, pan = tonumber(v[16]), pn = tonumber(v[17]),
  }
  acct.own_rl, acct.own_sl = acct.rl_n ~= nil, acct.sl
  if acct.pl then
    ANCHOR = acct.pan
    if not (acct.rl_n and acct.sl) then
      local p = redis.call('HMGET', P, 'r:' .. acct.pl, 's:' .. acct.pl)
      if p[1] and not acct.rl_n then
        local n, ms, b = string.match(p[1], '^(%d+):(%d+):(%d+)$')
        acct.rl_n, acct.rl_ms, acct.rl_burst = tonumber(n), tonumber(ms), tonumber(b)
      end
      if p[2] and not acct.sl then acct.sl = p[2] end
    end
  end
  local clock = tonumber(v[2]) or 0
  if clock > NOW then NOW = clock end
  return acct
end

local function require_account()
  if not load_account() then fail('UNKNOWN_ACCOUNT', 'account ' .. ACCOUNT .. ' does not exist') end
  return acct
end

local function balance()
  return acct.avail - acct.debt
end

-- More account fields for save_account to write in its one HSET (the hot path saves a
-- command per field): only for fields nothing reads again before the save.
local staged = {}
local known = {}  -- bucket id -> {remaining, held} after writes staged for it (draw's defer)
local function stage(field, value)
  staged[#staged + 1] = field
  staged[#staged + 1] = value
end

local function save_account()
  local f = {'clock', fmt(NOW), 'avail', fmt(acct.avail), 'held', fmt(acct.held),
    'debt', fmt(acct.debt), 'seq', fmt(acct.seq)}
  for _, v in ipairs(staged) do f[#f + 1] = v end
  redis.call('HSET', A, unpack(f))
  if deadlines_changed then
    local first = redis.call('ZRANGE', D, 0, 0, 'WITHSCORES')
    if first[1] then
      redis.call('ZADD', DUE, first[2], ACCOUNT)
    else
      redis.call('ZREM', DUE, ACCOUNT)
    end
  end
end

-- For paths that may have processed deadlines but otherwise change nothing.
local function save_if_touched()
  if deadlines_changed then save_account() end
end

-- When a debit takes the balance from >= a threshold to below it, one event on the shard's
-- events stream for the billing worker: low_balance (the low-balance threshold: notify the
-- customer) and auto_topup (the auto top-up threshold: charge the saved card). Returns 1 if
-- the low-balance threshold was crossed.
local function low_balance_event(events_key, before, txid)
  local after = balance()
  if acct.att and before >= acct.att and after < acct.att then
    redis.call('XADD', events_key, 'MAXLEN', '~', 100000, '*', 'type', 'auto_topup',
      'account', ACCOUNT, 'balance', fmt(after), 'threshold', fmt(acct.att),
      'transaction_id', txid, 'ts', fmt(NOW))
  end
  if not (acct.lbt and before >= acct.lbt and after < acct.lbt) then return 0 end
  redis.call('XADD', events_key, 'MAXLEN', '~', 100000, '*', 'type', 'low_balance',
    'account', ACCOUNT, 'balance', fmt(after), 'threshold', fmt(acct.lbt), 'transaction_id', txid,
    'ts', fmt(NOW))
  return 1
end

local function extra_txid()
  extra_txns = extra_txns + 1
  return TXID .. '.' .. extra_txns
end

-- Appends one entry to the outbox stream: a single field, d, holding a JSON object with
-- exact integers, which the SQL writer decodes in one call. kv = {name, value, ...} (names are
-- our own identifiers; a value {json = text} is inserted as the JSON text it already is).
local function outbox_add(kv)
  local parts = {}
  for i = 1, #kv, 2 do
    local v = kv[i + 1]
    local j = type(v) == 'table' and v.json or jenc(v)
    parts[#parts + 1] = '"' .. kv[i] .. '":' .. j
  end
  redis.call('XADD', OUTBOX, '*', 'd', '{' .. table.concat(parts, ',') .. '}')
end

-- Appends one kind=txn entry to the outbox. alloc: {{bucket, delta_remaining}, ...};
-- extra: more fields of the entry (strings, numbers, tables); alloc_json: jenc(alloc), if the
-- caller has it already.
local function emit(txid, ttype, amount, alloc, extra, alloc_json)
  acct.seq = acct.seq + 1
  -- The fixed fields in one format (the hot path): ids are id_arg-checked, [A-Za-z0-9._:-]
  -- only, and types are ours, so none needs JSON escaping.
  local parts = {string.format(
    '{"kind":"txn","id":"%s","account":"%s","seq":%d,"type":"%s","amount":%d,"balance":%d,'
    .. '"debt":%d,"ts":%d,"alloc":%s',
    txid, ACCOUNT, acct.seq, ttype, amount, balance(), acct.debt, NOW, alloc_json or jenc(alloc))}
  for k, v in pairs(extra or {}) do
    parts[#parts + 1] = ',"' .. k .. '":' .. (type(v) == 'table' and v.json or jenc(v))
  end
  -- The after-state of every bucket touched, so the SQL writer sets absolute values guarded
  -- by seq: order-independent and idempotent, unlike replaying deltas.
  local state, seen = {}, {}
  local function touch(id)
    if id == '' or seen[id] then return end
    seen[id] = true
    local k = known[id]
    if k then
      state[#state + 1] = {id, k[1], k[2]}
      return
    end
    local v = redis.call('HMGET', A, 'r:' .. id, 'h:' .. id)
    state[#state + 1] = {id, v[1] and tonumber(v[1]) or cjson.null, tonumber(v[2]) or 0}
  end
  for _, a in ipairs(alloc) do touch(a[1]) end
  for _, a in ipairs((extra and extra.held) or {}) do touch(a[1]) end
  -- the spending limit's state after it (ss), so the SQL ledger can restore it; likewise the
  -- next renewal of an account on a plan
  if acct.ss then parts[#parts + 1] = ',"spend":' .. cjson.encode(acct.ss) end
  if acct.pn then parts[#parts + 1] = ',"pn":' .. fmt(acct.pn) end
  parts[#parts + 1] = ',"buckets":' .. jenc(state) .. '}'
  redis.call('XADD', OUTBOX, '*', 'd', table.concat(parts))
end

local function okey(priority, expires, created, id)
  return string.format('%010d:%015d:%015d:', priority + 2147483648, expires or NEVER, created) .. id
end

local function bucket_meta(id)
  local raw = redis.call('HGET', A, 'm:' .. id)
  if not raw then return nil end
  return cjson.decode(raw)
end

-- Keeps the burn-order zset exact: a bucket is in it iff it is live and has remaining or held credits.
local function sync_order(id, meta)
  local v = redis.call('HMGET', A, 'r:' .. id, 'h:' .. id)
  if v[1] and ((tonumber(v[1]) or 0) > 0 or (tonumber(v[2]) or 0) > 0) then
    redis.call('ZADD', O, 0, meta.okey)
  else
    redis.call('ZREM', O, meta.okey)
  end
end

local touched = {}  -- buckets credits came back to in this call (see claw_returns)

-- Credits `n` back to a bucket if it is still live; returns what was credited (0 if expired).
-- The bucket is noted for claw_returns unless `quiet`.
local function credit_bucket(id, n, quiet)
  if not quiet then touched[#touched + 1] = id end
  local r = redis.call('HGET', A, 'r:' .. id)
  if not r then return 0 end
  redis.call('HSET', A, 'r:' .. id, fmt(tonumber(r) + n))
  redis.call('ZADD', O, 0, bucket_meta(id).okey)
  acct.avail = acct.avail + n
  return n
end

-- Draws `amount` credits from live buckets in burn order; with hold=true the credits
-- move to the buckets' held fields instead of being spent. Returns the allocation
-- list and how much could not be covered. defer (not with hold): the buckets' new remaining
-- is staged for save_account's HSET and noted in `known` (emit reads it there), for a caller
-- that reads no bucket again before it saves: the check, two commands fewer.
local function draw(amount, hold, defer)
  local need, alloc, drained = amount, {}, {}
  local start = 0
  while need > 0 do
    local members = redis.call('ZRANGE', O, start, start + 15)
    if #members == 0 then break end
    for _, m in ipairs(members) do
      local id = string.sub(m, OKEY_PREFIX + 1)
      local v = redis.call('HMGET', A, 'r:' .. id, 'h:' .. id)
      local rem, held = tonumber(v[1]) or 0, tonumber(v[2]) or 0
      if rem > 0 then
        local t = math.min(rem, need)
        need = need - t
        if defer then
          stage('r:' .. id, fmt(rem - t))
          known[id] = {rem - t, held}
        else
          redis.call('HSET', A, 'r:' .. id, fmt(rem - t))
        end
        if hold then
          redis.call('HSET', A, 'h:' .. id, fmt(held + t))
        elseif rem == t and held == 0 then
          drained[#drained + 1] = m
        end
        alloc[#alloc + 1] = {id, -t}
        if need == 0 then break end
      end
    end
    start = start + 16
  end
  if #drained > 0 then redis.call('ZREM', O, unpack(drained)) end
  local taken = amount - need
  acct.avail = acct.avail - taken
  if hold then acct.held = acct.held + taken end
  return alloc, need
end

local function schedule(member, at)
  redis.call('ZADD', D, at, member)
  deadlines_changed = true
end

-- Creates bucket `id` holding `rem` of its `credits` (the rest repaid debt); returns
-- its static record, which the caller completes and stores as m:<id>.
local function add_bucket(id, credits, rem, expires, priority, source, metadata, fp, txid)
  local meta = {credits = credits, created = NOW, expires = expires, priority = priority,
    source = source, metadata = metadata, fp = fp, tx = txid,
    okey = okey(priority, expires, NOW, id)}
  redis.call('HSET', A, 'r:' .. id, fmt(rem))
  if rem > 0 then redis.call('ZADD', O, 0, meta.okey) end
  if expires then schedule('b:' .. id, expires) end
  acct.avail = acct.avail + rem
  return meta
end

local function bucket_entry(id, meta)
  return {id = id, credits = meta.credits, created = meta.created, expires = meta.expires,
    priority = meta.priority, source = meta.source, fp = meta.fp}
end

-- Spending limits. A limit is the spec 'credits:unit:count' (unit day, week, month or year:
-- windows of `count` units aligned to UTC calendar boundaries, counted from 1970-01-01, weeks
-- starting on Monday; unit life: one window, for ever); its state is 'from (ms):spent', from
-- being when the count began: the window's start, or when the limit was set within it.
-- Spent counts checks (usage), holds while active (their charge once settled) and what
-- refunds give back, within the window they were charged in. Spend state is kept only while
-- a limit is set: a new limit counts from when it was set (spend_reset). Every transaction of
-- an account with a spend state carries it (after the transaction) as `spend`; a usage or a
-- hold that counted carries the count's from as `sw` (kept in its usage record or hold
-- record): a refund or a settle gives back only to that same count, never to a limit set
-- since (which did not count it), nor to a later window. A settle above its hold whose extra
-- counted in another count than the hold's (a later window, a limit set since) also carries
-- that count's from as `xw` (its usage record: xw and xn, the extra), where a refund gives
-- the extra back first.
-- An API key's limit likewise: a usage that counted against it carries `kw` (its count's
-- from) and `key_spend` ([key id, its state after]); so does a refund that gave room back.
local DAY_MS = 86400000

local function days_from_civil(y, m, d)
  if m <= 2 then y = y - 1 end
  local era = math.floor(y / 400)
  local yoe = y - era * 400
  local mp = (m + 9) % 12
  local doy = math.floor((153 * mp + 2) / 5) + d - 1
  local doe = yoe * 365 + math.floor(yoe / 4) - math.floor(yoe / 100) + doy
  return era * 146097 + doe - 719468
end

local function civil_from_days(z)
  z = z + 719468
  local era = math.floor(z / 146097)
  local doe = z - era * 146097
  local yoe = math.floor((doe - math.floor(doe / 1460) + math.floor(doe / 36524)
    - math.floor(doe / 146096)) / 365)
  local doy = doe - (365 * yoe + math.floor(yoe / 4) - math.floor(yoe / 100))
  local mp = math.floor((5 * doy + 2) / 153)
  local m = mp < 10 and mp + 3 or mp - 9
  local y = yoe + era * 400
  if m <= 2 then y = y + 1 end
  return y, m, doy - math.floor((153 * mp + 2) / 5) + 1
end

-- The time (ms) of the anchor's day and time of day in the n-th month after the anchor's
-- (year ay, month am, day ad, time of day tod), clamped to that month's last day.
local function month_start(ay, am, ad, tod, n)
  local i = ay * 12 + am - 1 + n
  local y, m = math.floor(i / 12), i % 12 + 1
  local first = days_from_civil(y, m, 1)
  local dim = days_from_civil(m == 12 and y + 1 or y, m == 12 and 1 or m + 1, 1) - first
  return (first + math.min(ad, dim) - 1) * DAY_MS + tod
end

-- The period of `count` units (day, week, month, year) counted from `anchor` (ms) that
-- holds `t`: its start, its end (ms) and its index k (anchor + k periods; negative before the
-- anchor). Months and years are calendar months on the anchor's day, clamped to the month's
-- end (Jan 31 gives Feb 28, then Mar 31), at the anchor's time of day.
local function period_of(anchor, unit, count, t)
  if unit == 'day' or unit == 'week' then
    local len = count * (unit == 'week' and 7 or 1) * DAY_MS
    local k = math.floor((t - anchor) / len)
    return anchor + k * len, anchor + (k + 1) * len, k
  end
  local months = unit == 'month' and count or 12 * count
  local aday = math.floor(anchor / DAY_MS)
  local tod = anchor - aday * DAY_MS
  local ay, am, ad = civil_from_days(aday)
  local ty, tm = civil_from_days(math.floor(t / DAY_MS))
  local k = math.floor(((ty - ay) * 12 + tm - am) / months)
  local s = month_start(ay, am, ad, tod, k * months)
  if s > t then
    k = k - 1
    s = month_start(ay, am, ad, tod, k * months)
  end
  return s, month_start(ay, am, ad, tod, (k + 1) * months), k
end

-- The window of a limit that holds `now`: its start and end (ms; end nil for life). An
-- account on a plan counts its windows from the plan's anchor (ANCHOR), others from 1970.
local function spend_window(unit, count, now)
  if unit == 'life' then return 0, nil end
  if ANCHOR then
    local s, e = period_of(ANCHOR, unit, count, now)
    return math.max(0, s), e
  end
  local day = math.floor(now / DAY_MS)
  if unit == 'day' then
    local s = day - day % count
    return s * DAY_MS, (s + count) * DAY_MS
  elseif unit == 'week' then
    local w = math.floor((day + 3) / 7)  -- 1969-12-29, a Monday, starts week 0
    local s = w - w % count
    -- (the first window starts on 1969-12-29: counted from 1970, as no time is earlier; a
    -- negative start would not parse back from the spend state, leaving it unenforced)
    return math.max(0, (s * 7 - 3) * DAY_MS), ((s + count) * 7 - 3) * DAY_MS
  end
  local y, m = civil_from_days(day)
  local months = unit == 'month' and count or 12 * count
  local i = (y - 1970) * 12 + m - 1
  local s = i - i % months
  local e = s + months
  return days_from_civil(1970 + math.floor(s / 12), s % 12 + 1, 1) * DAY_MS,
    days_from_civil(1970 + math.floor(e / 12), e % 12 + 1, 1) * DAY_MS
end

-- A spending limit argument ('' = none): checked, or INVALID; returns it (nil for '').
local function spend_spec_arg(v, name)
  if v == '' then return nil end
  local c, unit, count = string.match(v, '^(%d+):(%a+):(%d+)$')
  if not c then fail('INVALID', name .. ' must be credits:unit:count') end
  int_arg(c, name .. '.credits', 1, MAXINT)
  if unit ~= 'day' and unit ~= 'week' and unit ~= 'month' and unit ~= 'year' and unit ~= 'life' then
    fail('INVALID', name .. '.interval must be day, week, month or year')
  end
  int_arg(count, name .. '.interval_count', 1, unit == 'life' and 1 or 1000)
  return v
end

-- A limit's spec and state as a table {credits, unit, count, start, stop, from, spent}, or
-- nil. A state whose from is not in the current window is an earlier window's: nothing spent.
local function spend_load(spec, state)
  if not spec or spec == '' then return nil end
  local c, unit, count = string.match(spec, '^(%d+):(%a+):(%d+)$')
  local lim = {credits = tonumber(c), unit = unit, count = tonumber(count), spent = 0}
  lim.start, lim.stop = spend_window(unit, lim.count, NOW)
  lim.from = lim.start
  if state then
    local s, n = string.match(state, '^(%d+):(%-?%d+)$')
    s = tonumber(s)
    if s and s >= lim.start and (not lim.stop or s < lim.stop) then
      lim.from, lim.spent = s, tonumber(n)
    end
  end
  return lim
end

-- (What was spent is kept at most 2^53-1: usage reports and settles above a hold, never
-- refused by a limit, can count past it, where it would be neither exact nor accepted by the
-- SQL ledger; any limit is passed long before.)
local function spend_state(lim)
  return fmt(lim.from) .. ':' .. fmt(math.min(lim.spent, MAXINT))
end

-- The state of a limit that starts counting now (a new limit, or another window): from now,
-- and after the count it replaces (state `old`) began, so that what was counted there
-- (records whose sw is its from) is never given back to this one. (A limit removed, then set
-- again in the very millisecond its count began, can still take what that count gave back:
-- the removal deleted the state that would tell the two apart.)
local function spend_reset(spec, old)
  local lim = spend_load(spec, nil)
  lim.from = NOW
  local prev = spend_load(spec, old)
  if old and prev.from >= NOW and (not lim.stop or prev.from + 1 < lim.stop) then
    lim.from = prev.from + 1
  end
  return spend_state(lim)
end

-- Whether `n` more credits would pass the limit.
local function spend_over(lim, n)
  return lim and lim.spent + n > lim.credits or false
end

-- A window's end as replies report it ('' = never): at most the latest accepted time (a
-- window of many years can end past 9999-12-31, which no API time can say).
local function spend_stop(lim)
  return lim.stop and fmt(math.min(lim.stop, MAX_TIME)) or ''
end

-- The refusal of a call over a limit: {'spend_limited', scope ('key' | 'account'), credits,
-- interval, interval count, spent, window end ('' = never)}.
local function spend_refusal(scope, lim)
  return {'spend_limited', scope, lim.credits, lim.unit, lim.count, lim.spent,
    spend_stop(lim)}
end

-- Gives back `n` credits counted from `from` (a record's sw) to a limit (field `spec_f`,
-- state `state_f` of the account hash), if that count is still the current one; returns the
-- limit's state after, or nil when nothing changed.
local function spend_return(spec_f, state_f, from, n)
  if not from or n <= 0 then return nil end
  local v
  if spec_f == 'sl' then
    v = {acct.sl, acct.ss}  -- the limit that applies: the account's own, or its plan's
  else
    v = redis.call('HMGET', A, spec_f, state_f)
  end
  local lim = spend_load(v[1], v[2])
  if not (lim and lim.from == from) then return nil end
  lim.spent = math.max(0, lim.spent - n)
  local ss = spend_state(lim)
  redis.call('HSET', A, state_f, ss)
  if spec_f == 'sl' then acct.ss = ss end
  return ss
end

-- Clawbacks (revoke.lua). Per purchase, cb:<purchase> = the credits to have taken back (the
-- target) and cbs:<purchase> = how, a JSON object {v: version of the state the target was
-- computed from, pol: policy ('unspent' | 'negative'), b: [the purchase's bucket ids],
-- tk: [credits taken from each], pd: [held credits of each still to take (pending: a hold
-- has them)], debt: added to the debt, un: not recovered (spent)}; tk + pd + debt + un is
-- always the target. pc:<bucket> = the purchase whose clawback watches the bucket: credits
-- that come back to it (a hold closing, a usage refund) are taken while that clawback is
-- short (pending first, then unrecovered), and pending credits a hold charged instead are
-- settled by the policy (unrecovered, or debt). A cb:<purchase> above the parts (written by
-- an earlier release, which kept no breakdown) counts the difference as unrecovered.
-- Built on first use (settle_lib().close_hold(...) ...), as plan_lib below: clawbacks and
-- closing holds are not on the check's path.
local settle_fns = nil
local function settle_lib()
  if settle_fns then return settle_fns end
  local function claw_load(pid, ids)
    local v = redis.call('HMGET', A, 'cb:' .. pid, 'cbs:' .. pid)
    local st
    if v[2] then
      st = cjson.decode(v[2])
    else
      st = {v = 0, pol = 'unspent', b = ids or {}, tk = {}, pd = {}, debt = 0, un = 0}
      for i = 1, #st.b do
        st.tk[i] = 0
        st.pd[i] = 0
      end
    end
    local sum = st.debt + st.un
    for i = 1, #st.b do sum = sum + st.tk[i] + st.pd[i] end
    local cb = tonumber(v[1]) or 0
    if cb > sum then
      st.un = st.un + cb - sum
      sum = cb
    end
    st.t = sum
    return st
  end

  -- Stores a clawback and appends its 'revoke' transaction (amount: the balance's change); the
  -- transaction carries the state after it, from which `rebuild` restores the clawback.
  local function claw_save(pid, st, txid, amount, alloc, extra)
    local t = st.t
    st.t = nil
    local enc = jenc(st)
    st.t = t
    redis.call('HSET', A, 'cb:' .. pid, fmt(t), 'cbs:' .. pid, enc)
    for _, id in ipairs(st.b) do redis.call('HSET', A, 'pc:' .. id, pid) end
    extra.purchase = pid
    extra.target = t
    extra.version = st.v
    extra.state = {json = enc}
    emit(txid, 'revoke', amount, alloc, extra)
  end

  -- After credits came back to buckets (credit_bucket): each clawback watching one of them
  -- takes what it is short of, and settles pending credits that their hold charged.
  local function claw_returns()
    if #touched == 0 then return end
    local list, seen, pids = touched, {}, {}
    touched = {}
    for _, id in ipairs(list) do
      local pid = redis.call('HGET', A, 'pc:' .. id)
      if pid and not seen[pid] then
        seen[pid] = true
        pids[#pids + 1] = pid
      end
    end
    for _, pid in ipairs(pids) do
      local st = claw_load(pid)
      local alloc, taken, debt_added, unrec = {}, 0, 0, 0
      for i, id in ipairs(st.b) do
        local v = redis.call('HMGET', A, 'r:' .. id, 'h:' .. id)
        local r, h = tonumber(v[1]) or 0, tonumber(v[2]) or 0
        local c = math.min(r, st.pd[i])
        st.pd[i] = st.pd[i] - c
        local u = math.min(r - c, st.un)
        st.un = st.un - u
        c = c + u
        if c > 0 then
          redis.call('HSET', A, 'r:' .. id, fmt(r - c))
          sync_order(id, bucket_meta(id))
          st.tk[i] = st.tk[i] + c
          alloc[#alloc + 1] = {id, -c}
          taken = taken + c
        end
        if st.pd[i] > h then
          -- the hold charged (or the bucket's expiry forfeited) credits the clawback waited for
          local x = st.pd[i] - h
          st.pd[i] = h
          if st.pol == 'negative' and acct.debt + x <= MAXINT then
            st.debt = st.debt + x
            acct.debt = acct.debt + x
            debt_added = debt_added + x
          else
            st.un = st.un + x
            unrec = unrec + x
          end
        end
      end
      if taken > 0 or debt_added > 0 or unrec > 0 then
        acct.avail = acct.avail - taken
        claw_save(pid, st, extra_txid(), -(taken + debt_added), alloc, {
          unrecovered = unrec, debt_added = debt_added,
          desc = 'clawback of ' .. pid .. ': credits came back or a hold was closed',
        })
      end
    end
  end

  -- Closes an active hold: charges `charge` of it (in the order it was drawn) and
  -- returns the rest to the buckets it came from; credits whose bucket expired
  -- meanwhile are forfeited. A settle above the hold (`charge` > its amount) charges all of it
  -- and draws the rest in burn order like a check, into the overdraft as far as the account
  -- allows; what neither covers is not charged (rec.uncovered), and the draw counts against
  -- the account's spending limit in the current window. Emits one settle/release transaction
  -- (the draw is in its alloc, what went into the overdraft in `overdraft`). Returns the hold's
  -- record, what was charged per bucket ({{bucket, -credits}, ...}, as a usage's alloc), what
  -- the draw added to the debt, the count the extra went to if not the hold's (xw, or nil) and
  -- the extra (xn).
  local function close_hold(hold_id, rec, charge, state, txid, desc, meta)
    local over = math.max(0, charge - rec.amount)
    charge = charge - over
    local left, returned, forfeited = charge, 0, 0
    local alloc, held, charged = {}, {}, {}
    for _, a in ipairs(rec.alloc) do
      local id, n = a[1], a[2]
      local c = math.min(n, left)
      left = left - c
      if c > 0 then charged[#charged + 1] = {id, -c} end
      redis.call('HINCRBY', A, 'h:' .. id, fmt(-n))
      held[#held + 1] = {id, -n}
      local back = credit_bucket(id, n - c)
      if back > 0 then alloc[#alloc + 1] = {id, back} end
      returned = returned + back
      forfeited = forfeited + (n - c - back)
      sync_order(id, bucket_meta(id))
    end
    acct.held = acct.held - rec.amount
    -- the hold counted its whole amount against the account's limit; only the charge stays
    spend_return('sl', 'ss', rec.sw, rec.amount - charge)
    local fields = {held = held, hold_id = hold_id, forfeited = forfeited, state = state,
      desc = desc or '', meta = meta or ''}
    local short, take = 0, 0
    if over > 0 then
      take = math.min(over, math.max(0, balance() + acct.ovl))
      if take > 0 then
        local drawn
        drawn, short = draw(take, false)
        acct.debt = acct.debt + short
        for _, d in ipairs(drawn) do
          alloc[#alloc + 1] = d
          charged[#charged + 1] = d
        end
        local lim = spend_load(acct.sl, acct.ss)
        if lim then
          lim.spent = lim.spent + take
          acct.ss = spend_state(lim)
          redis.call('HSET', A, 'ss', acct.ss)
          -- counted in another count than the hold's (a later window, a limit set since):
          -- a refund gives the extra back there (xw), the hold's charge to the hold's (sw)
          if lim.from ~= rec.sw then fields.xw, rec.xw = lim.from, lim.from end
        end
      end
      fields.overdraft, fields.uncovered = short, over - take
      if over > take then rec.uncovered = over - take end
      charge = charge + take
      returned = returned - take
    end
    fields.charged = charge
    rec.state = state
    rec.charged = charge
    rec.close_tx = txid
    emit(txid, state == 'settled' and 'settle' or 'release', returned, alloc, fields)
    claw_returns()
    rec.close_balance = balance()
    rec.forfeited = forfeited
    local xw = rec.xw
    rec.xw = nil
    redis.call('HSET', H, hold_id, jenc(rec))
    schedule('h:' .. hold_id, NOW + RETENTION)
    return rec, charged, short, xw, over > 0 and charge - rec.amount or 0
  end
  settle_fns = {claw_load = claw_load, claw_save = claw_save, claw_returns = claw_returns,
    close_hold = close_hold}
  return settle_fns
end

-- Plans (docs/plans.md). An account on a plan has pl (the plan), pan (its anchor, ms), psn
-- (since when it is on it: the allowance buckets it issued since are the plan's, to cut) and
-- pn (its next renewal, ms; also the deadline 'p:'). The shard's plans hash P keeps each plan's
-- allowance as 'a:<plan>' = 'credits:unit:count:mode:rollover:priority' (mode reset or
-- accumulate; rollover '' = none), its rate limit 'r:<plan>' and spending limit 's:<plan>'.
-- Each period's allowance is the bucket allowance:<plan>:<period start>: issued once, never
-- again while that bucket exists (its static record is kept for good).
--
-- Built on first use (plan_lib().renew() ...): a Lua function statement creates a closure on
-- every script call, capturing its upvalues, and renewals are rare; the checks that renew
-- nothing skip creating these (docs/benchmarks.md, "What a check costs Redis").
local plan_fns = nil
local function plan_lib()
  if plan_fns then return plan_fns end
  local function plan_spec(plan)
    local v = redis.call('HGET', P, 'a:' .. plan)
    if not v then return nil end
    local c, unit, count, mode, roll, prio =
      string.match(v, '^(%d+):(%a+):(%d+):(%a+):(%d*):(%-?%d+)$')
    return {credits = tonumber(c), unit = unit, count = tonumber(count), mode = mode,
      rollover = tonumber(roll), priority = tonumber(prio)}
  end

  -- The allowance left of the account's stay on its plan: {id, remaining, created} of each
  -- live bucket allowance:<plan>:* created since it was set, oldest first. Read from the
  -- burn-order zset (its members carry the bucket's creation time): renewals are rare.
  local function allowance_left()
    local out = {}
    local prefix = 'allowance:' .. acct.pl .. ':'
    local since = tonumber(redis.call('HGET', A, 'psn')) or 0
    for _, m in ipairs(redis.call('ZRANGE', O, 0, -1)) do
      local id = string.sub(m, OKEY_PREFIX + 1)
      local created = tonumber(string.sub(m, 28, 42))  -- (okey: priority:expires:created:id)
      if string.sub(id, 1, #prefix) == prefix and created >= since
          and string.match(string.sub(id, #prefix + 1), '^%d+$') then
        out[#out + 1] = {id, tonumber(redis.call('HGET', A, 'r:' .. id)) or 0, created}
      end
    end
    table.sort(out, function(x, y) return x[3] < y[3] or (x[3] == y[3] and x[1] < y[1]) end)
    return out
  end

  -- Expires `n` credits (all of them with n = nil) of the allowance buckets `left`, oldest
  -- first, as one expiry transaction (`reason`).
  local function allowance_cut(left, n, reason)
    local alloc, total = {}, 0
    for _, b in ipairs(left) do
      local c = n and math.min(b[2], n - total) or b[2]
      if c > 0 then
        redis.call('HSET', A, 'r:' .. b[1], fmt(b[2] - c))
        sync_order(b[1], bucket_meta(b[1]))
        alloc[#alloc + 1] = {b[1], -c}
        total = total + c
      end
    end
    if total > 0 then
      acct.avail = acct.avail - total
      emit(extra_txid(), 'expiry', -total, alloc, {reason = reason, plan = acct.pl})
    end
  end

  -- What a renewal due now does: the period now, how many periods it covers (n: those since
  -- the one due at acct.pn; 1 for a plan just set), the credits to issue and to cut from the
  -- allowance left (nil: all of it). spec: plan_spec's; left: allowance_left's.
  local function renewal(spec, left)
    local start, stop, k = period_of(acct.pan, spec.unit, spec.count, NOW)
    local n = 1
    if acct.pn then
      local _, _, kd = period_of(acct.pan, spec.unit, spec.count, acct.pn)
      n = math.max(1, k - kd + 1)
    end
    if spec.mode == 'reset' then return start, stop, n, spec.credits, nil end
    local u = 0
    for _, b in ipairs(left) do u = u + b[2] end
    local kept = spec.rollover and math.min(u, spec.rollover) or u
    local credits = spec.credits
    if n > 1 then
      -- what n renewals in a row leave with nothing spent (docs/plans.md)
      local more = (n - 1) * spec.credits
      credits = credits + (spec.rollover and math.min(more, spec.rollover - kept) or more)
    end
    return start, stop, n, math.min(credits, MAXINT), u - kept
  end

  -- Renews the account's plan if a period has begun since the last renewal (or the plan was
  -- just set: acct.pn nil): cuts what the plan's mode expires, issues the period's allowance
  -- bucket (repaying debt first, like a grant) unless it exists, and schedules the next renewal.
  local function plan_renew()
    local spec = plan_spec(acct.pl)
    if not spec then return end
    if acct.pn and acct.pn > NOW then return end
    local left = allowance_left()
    local start, stop, n, credits, cut = renewal(spec, left)
    acct.pn = stop  -- (the renewal's entries carry it)
    if cut == nil or cut > 0 then
      allowance_cut(left, cut, spec.mode == 'reset' and 'period_end' or 'rollover')
    end
    local id = 'allowance:' .. acct.pl .. ':' .. fmt(start)
    credits = math.min(credits, MAXINT - acct.avail - acct.held)
    if credits > 0 and not bucket_meta(id) then
      local txid = extra_txid()
      local repaid = math.min(acct.debt, credits)
      acct.debt = acct.debt - repaid
      -- (a period ending past 9999-12-31 expires at its last millisecond, as no API time is later)
      local expires = spec.mode == 'reset' and math.min(stop, MAX_TIME) or nil
      local meta = add_bucket(id, credits, credits - repaid, expires, spec.priority, 'allowance',
        '', '', txid)
      emit(txid, 'allowance', credits, {{id, credits - repaid}}, {
        bucket = bucket_entry(id, meta), repaid = repaid, plan = acct.pl, period = start,
        periods = n, desc = 'allowance of plan ' .. acct.pl,
      })
      meta.bal = balance()
      redis.call('HSET', A, 'm:' .. id, jenc(meta))
    end
    acct.pn = stop
    redis.call('HSET', A, 'pn', fmt(stop))
    schedule('p:', stop)
  end

  -- What a renewal due now would add to the available credits (dry runs, preview_due), as it
  -- would run after what the preview processed before it: the buckets in `gone` expired, the
  -- credits in `back` ({bucket = credits}) returned by lapsed holds, `avail` and `held` the
  -- account's available and held credits then.
  local function plan_preview(gone, back, avail, held)
    local spec = plan_spec(acct.pl)
    if not spec or (acct.pn and acct.pn > NOW) then return 0 end
    local left = {}
    for _, b in ipairs(allowance_left()) do
      if not gone[b[1]] then left[#left + 1] = {b[1], b[2] + (back[b[1]] or 0), b[3]} end
    end
    local start, _, _, credits, cut = renewal(spec, left)
    if cut == nil then
      cut = 0
      for _, b in ipairs(left) do cut = cut + b[2] end
    end
    credits = math.min(credits, MAXINT - (avail - cut) - held)
    if credits <= 0 or bucket_meta('allowance:' .. acct.pl .. ':' .. fmt(start)) then credits = 0 end
    return credits - cut
  end
  plan_fns = {spec = plan_spec, left = allowance_left, cut = allowance_cut, renew = plan_renew,
    preview = plan_preview}
  return plan_fns
end

local function expire_bucket(id)
  local meta = bucket_meta(id)
  local rem = tonumber(redis.call('HGET', A, 'r:' .. id)) or 0
  redis.call('HDEL', A, 'r:' .. id)
  redis.call('ZREM', O, meta.okey)
  if rem > 0 then
    acct.avail = acct.avail - rem
    emit(extra_txid(), 'expiry', -rem, {{id, -rem}}, {bucket = id})
  end
end

-- Processes every deadline that has passed: expires buckets, releases holds whose
-- TTL ran out, and purges closed holds kept for idempotency.
local function expire_due()
  while true do
    local due = redis.call('ZRANGEBYSCORE', D, '-inf', NOW, 'LIMIT', 0, 64)
    if #due == 0 then return end
    redis.call('ZREM', D, unpack(due))
    deadlines_changed = true
    for _, member in ipairs(due) do
      local id = string.sub(member, 3)
      local kind = string.sub(member, 1, 1)
      if kind == 'b' then
        expire_bucket(id)
      elseif kind == 'p' then
        if acct.pl then plan_lib().renew() end
      else
        local raw = redis.call('HGET', H, id)
        if raw then
          local rec = cjson.decode(raw)
          if rec.state == 'active' then
            settle_lib().close_hold(id, rec, 0, 'expired', extra_txid(), 'hold expired', '')
          else
            redis.call('HDEL', H, id)
          end
        end
      end
    end
  end
end

-- What processing the due deadlines would leave, without writing anything (dry runs): the
-- account's available credits and its spending limit (spend_load's table, or nil) after due
-- buckets expire and due holds lapse (their credits back to buckets still live, their amount
-- back under the limit). Exact but for one case: credits a lapsing hold would return to a
-- bucket watched by a clawback (pc:<bucket>, see "Clawbacks") are counted as taken back.
local function preview_due()
  local avail, held = acct.avail, acct.held
  local lim = spend_load(acct.sl, acct.ss)
  local back, gone = {}, {}
  for _, member in ipairs(redis.call('ZRANGEBYSCORE', D, '-inf', NOW)) do
    local id = string.sub(member, 3)
    local kind = string.sub(member, 1, 1)
    if kind == 'b' then
      if not gone[id] then
        avail = avail - (tonumber(redis.call('HGET', A, 'r:' .. id)) or 0) - (back[id] or 0)
        gone[id] = true
      end
    elseif kind == 'p' then
      -- in its turn, as expire_due renews: after what is due before it, not what comes after
      if acct.pl then avail = avail + plan_lib().preview(gone, back, avail, held) end
    else
      local raw = redis.call('HGET', H, id)
      local rec = raw and cjson.decode(raw)
      if rec and rec.state == 'active' then
        held = held - rec.amount
        for _, a in ipairs(rec.alloc) do
          local v = redis.call('HMGET', A, 'r:' .. a[1], 'pc:' .. a[1])
          if v[1] and not v[2] and not gone[a[1]] then
            avail = avail + a[2]
            back[a[1]] = (back[a[1]] or 0) + a[2]
          end
        end
        if lim and rec.sw == lim.from then lim.spent = math.max(0, lim.spent - rec.amount) end
      end
    end
  end
  return avail, lim
end

-- GCRA over several limiters at once; limits = {{tat field in the account hash, requests,
-- period ms, burst}, ...}. Returns the ms to wait (0 when every limiter passes), the HSET
-- arguments that store the new TATs (microseconds), to apply only on success, and the state
-- the request leaves of the tightest limiter (fewest requests left, then the longest to be
-- whole again): {tat field, requests, period ms, requests left, ms until whole}, or nil
-- without limiters (what the RateLimit headers say: docs/http-api.md).
local function rate_check(limits)
  local wait, tats, tight = 0, {}, nil
  local now_us = NOW * 1000
  for _, l in ipairs(limits) do
    local interval = l[3] * 1000 / l[2]
    local tat = tonumber(redis.call('HGET', A, l[1])) or now_us
    if tat < now_us then tat = now_us end
    local new_tat = tat + interval
    local allow_at = new_tat - interval * l[4]
    if now_us < allow_at then
      wait = math.max(wait, math.ceil((allow_at - now_us) / 1000))
    end
    tats[#tats + 1] = l[1]
    tats[#tats + 1] = fmt(math.floor(new_tat))
    local left = math.max(0, math.floor((interval * l[4] - (new_tat - now_us)) / interval))
    local whole = math.ceil((new_tat - now_us) / 1000)
    if not tight or left < tight[4] or (left == tight[4] and whole > tight[5]) then
      tight = {l[1], l[2], l[3], left, whole}
    end
  end
  return wait, tats, tight
end

local function account_limits()
  if acct.rl_n then return {{'tat', acct.rl_n, acct.rl_ms, acct.rl_burst}} end
  return {}
end

-- Gives back `amount` credits of a usage (a check's, or a settle that charged), as one
-- 'refund' transaction TXID: ukey is its usage record, u = HMGET ukey 'cost', 'alloc',
-- 'overdraft', 'refunded'. The usage's parts are walked in reverse burn order (the overdraft
-- part first, then the buckets last drawn), continuing where earlier refunds stopped, so the
-- refunds of one usage never exceed what it took. A part whose bucket expired since is
-- forfeited; an overdraft part reduces the debt, and what exceeds the debt (a later grant
-- repaid it) comes back as a new non-expiring bucket (source refund). Credits that come back
-- to a bucket of a purchase whose clawback is short are taken back at once (claw_returns).
-- arg: the amount argument as given ('' = all that was left); more: extra fields of the
-- entry. Returns the balance after and the credits forfeited, or nil (nothing written) when
-- the account would hold more than 2^53-1 credits. The caller saves the account.
local function refund_usage(ukey, u, src, rid, arg, amount, desc, metadata, more)
  if acct.avail + acct.held + amount > MAXINT then return nil end
  local parts = {}
  local od = tonumber(u[3])
  if od > 0 then parts[1] = {'', od} end
  local taken = cjson.decode(u[2])
  for i = #taken, 1, -1 do parts[#parts + 1] = {taken[i][1], -taken[i][2]} end

  local skip, want = tonumber(u[4]), amount
  local alloc, restored, forfeited, repaid, excess = {}, 0, 0, 0, 0
  for _, p in ipairs(parts) do
    local n = p[2]
    local s = math.min(skip, n)
    skip = skip - s
    local t = math.min(n - s, want)
    want = want - t
    if t > 0 and p[1] == '' then
      repaid = math.min(acct.debt, t)
      acct.debt = acct.debt - repaid
      excess = t - repaid
    elseif t > 0 then
      local back = credit_bucket(p[1], t)
      if back > 0 then alloc[#alloc + 1] = {p[1], back} end
      restored = restored + back
      forfeited = forfeited + t - back
    end
    if want == 0 then break end
  end

  -- requested_amount: the amount argument as given, which a replay compares; the SQL ledger
  -- keeps it so `rebuild` can restore the refund record exactly.
  local extra = {source_transaction_id = src, refund_id = rid, requested_amount = arg,
    repaid = repaid, forfeited = forfeited, desc = desc, meta = metadata}
  for k, v in pairs(more or {}) do extra[k] = v end
  local bid = 'refund:' .. TXID
  if excess > 0 then
    local meta = add_bucket(bid, excess, excess, nil, 0, 'refund', '', '', TXID)
    alloc[#alloc + 1] = {bid, excess}
    extra.bucket = bucket_entry(bid, meta)
    meta.bal = balance()
    redis.call('HSET', A, 'm:' .. bid, jenc(meta))
  end
  -- the refund gives back room under the limits the usage counted against, in its window
  local sw = redis.call('HMGET', ukey, 'sw', 'kid', 'kw', 'xw', 'xn')
  local to_x = 0
  if sw[4] then
    -- a settle above its hold that counted its extra in another count (xw): the refund's
    -- first xn credits (the overdraft part, then the buckets drawn last) are that extra
    to_x = math.min(amount, math.max(0, tonumber(sw[5]) - tonumber(u[4])))
    spend_return('sl', 'ss', tonumber(sw[4]), to_x)
  end
  spend_return('sl', 'ss', tonumber(sw[1]), amount - to_x)
  if sw[2] then
    local ks = spend_return('kl:' .. sw[2], 'ks:' .. sw[2], tonumber(sw[3]), amount)
    if ks then extra.key_spend = {sw[2], ks} end
  end
  emit(TXID, 'refund', restored + repaid + excess, alloc, extra)
  -- credits back in a bucket whose purchase was refunded by Stripe go to its clawback
  settle_lib().claw_returns()
  local bal = balance()
  redis.call('HINCRBY', ukey, 'refunded', fmt(amount))
  redis.call('HSET', ukey, 'rf:' .. rid, jenc({arg = arg, tx = TXID, bal = bal,
    refunded = amount, forfeited = forfeited}))
  return bal, forfeited
end
