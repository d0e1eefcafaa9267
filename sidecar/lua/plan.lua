-- plan.lua: define or replace a plan (docs/plans.md), or retire and delete it, on one shard.
--
-- A plan belongs to no account: every shard keeps a copy in its plans hash, so a check reads
-- its account's plan in its own slot. sidecar/ledger/plans.py runs this on every shard.
-- KEYS (not the common ones): [1] the shard's plans hash   [2] the shard's outbox stream
--   [3] the shard's plan stamps (hash: v:<plan> the stamp of the last put applied, kept when
--   the plan is deleted; dv the stamp of the put that last moved the default flag).
-- ARGV: the common five, the plan id in the account's place ([4] unused), then
--   [6] mode: 'put', 'retire', 'unretire' or 'delete'
--   [7] '1': append the kind=plan outbox entry, '0': not (the caller asks it of shard 0 only,
--       so the SQL ledger hears of each change once)
--   put: [8] the name (1-200 characters of UTF-8 text)
--        [9] the allowance 'credits:unit:count:mode:rollover:priority': credits 1..2^53-1 per
--            period of count (1-1000) units (day, week, month or year); mode 'reset' or
--            'accumulate'; rollover ('' = none; only with accumulate) 0..credits; priority
--            (of its buckets) a 32-bit integer
--        [10] the rate limit 'requests:period_ms:burst' ('' = none)
--        [11] the spending limit 'credits:unit:count' ('' = none; unit 'life' for a lifetime
--             limit: see "Spending limits" in _lib.lua)
--        [12] '1': the default plan (the flag moves here), '0': not (if it was, no plan is)
--        [13] the allowance's trigger: 'period' (the only one)
--        [14] the put's stamp ('<ms, 15 digits>:<transaction id>', the same on every shard;
--             compared as text): a put older than the last one applied here (KEYS[3]) changes
--             nothing, and the default flag moves only for a put newer than its last move
--             (dv), so two PUTs at once leave every shard with the newer one
-- Units: credits are integers (up to 2^53-1), times unix ms (ARGV[2], now: the entry's ts).
-- The plans hash: d:<plan> the definition (JSON: plan, name, allowance, rate_limit,
--   spend_limit, default; what the API answers), a:<plan>, r:<plan>, s:<plan> the allowance,
--   rate limit and spending limit as ARGV [9..11] give them (absent: none; what the account
--   scripts read), n:<plan> how many of the shard's accounts are on it (account.lua keeps it;
--   only read here), x:<plan> set while a delete is in progress, default the default plan.
-- Modes and returns:
--   put: writes d/a/r/s and the default flag; moving the flag rewrites the definition of the
--     plan that had it (default false). Refused (PLAN_BUSY) while x:<plan> is set.
--     Returns {created (1: new on this shard, 0: replaced), the definition}.
--   retire: sets x:<plan> if the plan is on this shard. Returns {1 (0: not here, nothing
--     written), n:<plan> (0 if absent)}.
--   unretire: clears x:<plan>. Returns 1.
--   delete: removes d/a/r/s/n/x:<plan>, and default if it named the plan; refused unless
--     x:<plan> is set (PLAN_BUSY: a concurrent delete gave up) and while n:<plan> > 0
--     (PLAN_IN_USE). Returns 1, or 0 when the plan is not on this shard (a retry).
-- The entry (with [7] '1'): {kind 'plan', id (the transaction id), plan, ts, definition (after
-- the change; a delete's: the last), default (bool), deleted (bool)}; a put that moved the
-- default flag appends one for the plan that lost it too.

OUTBOX = KEYS[2]  -- _lib.lua's outbox_add appends to OUTBOX: this script's is KEYS[2]
local PLANS, STAMPS = KEYS[1], KEYS[3]
local PLAN = id_arg(ARGV[1], 'plan', 64)
local mode = ARGV[6]
if mode ~= 'put' and mode ~= 'retire' and mode ~= 'unretire' and mode ~= 'delete' then
  fail('INVALID', 'mode must be put, retire, unretire or delete')
end
if ARGV[7] ~= '0' and ARGV[7] ~= '1' then fail('INVALID', 'the outbox flag must be 0 or 1') end
local ENTRY = ARGV[7] == '1'

local function plan_entry(id, definition, default, deleted)
  if not ENTRY then return end
  outbox_add({'kind', 'plan', 'id', TXID, 'plan', id, 'ts', NOW,
    'definition', {json = definition}, 'default', default, 'deleted', deleted})
end

-- A definition with its default flag cleared (the flag moved, or the plan is deleted).
local function not_default(raw)
  local d = cjson.decode(raw)
  d.default = false
  return jenc(d)
end

if mode == 'retire' then
  local v = redis.call('HMGET', PLANS, 'd:' .. PLAN, 'n:' .. PLAN)
  if not v[1] then return {0, 0} end
  in_time()
  redis.call('HSET', PLANS, 'x:' .. PLAN, '1')
  return {1, tonumber(v[2]) or 0}
end

if mode == 'unretire' then
  in_time()
  redis.call('HDEL', PLANS, 'x:' .. PLAN)
  return 1
end

if mode == 'delete' then
  local v = redis.call('HMGET', PLANS, 'd:' .. PLAN, 'x:' .. PLAN, 'n:' .. PLAN)
  if not v[1] then
    if v[2] then
      in_time()
      redis.call('HDEL', PLANS, 'x:' .. PLAN)
    end
    return 0
  end
  if not v[2] then
    fail('PLAN_BUSY', 'plan ' .. PLAN .. ' changed while it was being deleted: try again')
  end
  local n = tonumber(v[3]) or 0
  if n > 0 then fail('PLAN_IN_USE', 'plan ' .. PLAN .. ' has ' .. fmt(n) .. ' accounts') end
  in_time()
  redis.call('HDEL', PLANS, 'd:' .. PLAN, 'a:' .. PLAN, 'r:' .. PLAN, 's:' .. PLAN,
    'n:' .. PLAN, 'x:' .. PLAN)
  if redis.call('HGET', PLANS, 'default') == PLAN then redis.call('HDEL', PLANS, 'default') end
  plan_entry(PLAN, not_default(v[1]), false, true)
  return 1
end

-- put: everything checked before the first write
local name = text_arg(ARGV[8] or '', 'name', 800)
-- (characters: UTF-8 bytes but continuation bytes, as SQL's varchar(200) counts them)
local chars = select(2, string.gsub(name, '[^\128-\191]', ''))
if chars < 1 or chars > 200 then fail('INVALID', 'name must be 1-200 characters') end
local c, unit, count, amode, roll, prio = string.match(ARGV[9] or '',
  '^(%-?%d+):(%a+):(%-?%d+):(%a+):(%-?%d*):(%-?%d+)$')
if not c then fail('INVALID', 'allowance must be credits:unit:count:mode:rollover:priority') end
local credits = int_arg(c, 'allowance.credits', 1, MAXINT)
if unit ~= 'day' and unit ~= 'week' and unit ~= 'month' and unit ~= 'year' then
  fail('INVALID', 'allowance.interval must be day, week, month or year')
end
count = int_arg(count, 'allowance.interval_count', 1, 1000)
if amode ~= 'reset' and amode ~= 'accumulate' then
  fail('INVALID', 'allowance.mode must be reset or accumulate')
end
local rollover = nil
if roll ~= '' then
  if amode ~= 'accumulate' then
    fail('INVALID', 'allowance.rollover_max is only for mode accumulate')
  end
  rollover = int_arg(roll, 'allowance.rollover_max', 0, credits)
end
prio = int_arg(prio, 'allowance.priority', -2147483648, 2147483647)

local rl, rate = cjson.null, nil
if (ARGV[10] or '') ~= '' then
  local n, ms, burst = string.match(ARGV[10], '^(%-?%d+):(%-?%d+):(%-?%d+)$')
  if not n then fail('INVALID', 'rate_limit must be requests:period_ms:burst') end
  rl = {requests = int_arg(n, 'rate_limit.requests', 1, 1000000000),
    period_ms = int_arg(ms, 'rate_limit.period_ms', 1, 366 * 86400000),
    burst = int_arg(burst, 'rate_limit.burst', 1, 1000000000)}
  rate = fmt(rl.requests) .. ':' .. fmt(rl.period_ms) .. ':' .. fmt(rl.burst)
end

local sl, spend = cjson.null, spend_spec_arg(ARGV[11] or '', 'spend_limit')
if spend then
  local sc, su, sn = string.match(spend, '^(%d+):(%a+):(%d+)$')
  sl = {credits = tonumber(sc), interval = su ~= 'life' and su or cjson.null,
    interval_count = tonumber(sn)}
  spend = fmt(sl.credits) .. ':' .. su .. ':' .. fmt(sl.interval_count)
end

if ARGV[12] ~= '0' and ARGV[12] ~= '1' then fail('INVALID', 'default must be 0 or 1') end
local default = ARGV[12] == '1'
if ARGV[13] ~= 'period' then fail('INVALID', 'allowance.trigger must be period') end
local stamp = ARGV[14] or ''
if not string.match(stamp, '^%d%d%d%d%d%d%d%d%d%d%d%d%d%d%d:[%w._:-]+$') or #stamp > 100 then
  fail('INVALID', 'stamp must be <ms, 15 digits>:<transaction id>')
end
if redis.call('HEXISTS', PLANS, 'x:' .. PLAN) == 1 then
  fail('PLAN_BUSY', 'plan ' .. PLAN .. ' is being deleted')
end
local st = redis.call('HMGET', PLANS, 'default', 'd:' .. PLAN)
local sv = redis.call('HMGET', STAMPS, 'v:' .. PLAN, 'dv')
st = {sv[1], sv[2], st[1], st[2]}
if stamp <= (st[1] or '') then
  -- an older put reaching this shard after a newer one (two PUTs at once): the newer stands
  return {0, st[4] or ''}
end
in_time()

local was = st[3]
local move = stamp > (st[2] or '') and (default or was == PLAN)
if not move then default = was == PLAN end  -- (a newer put moved the flag: it stays)
local definition = jenc({plan = PLAN, name = name, default = default,
  allowance = {credits = credits, interval = unit, interval_count = count, mode = amode,
    rollover_max = rollover or cjson.null, priority = prio, trigger = 'period'},
  rate_limit = rl, spend_limit = sl})
local created = st[4] and 0 or 1
redis.call('HSET', STAMPS, 'v:' .. PLAN, stamp)
if move then redis.call('HSET', STAMPS, 'dv', stamp) end
if move and default then
  if was and was ~= PLAN then
    local raw = redis.call('HGET', PLANS, 'd:' .. was)
    if raw then
      local moved = not_default(raw)
      redis.call('HSET', PLANS, 'd:' .. was, moved)
      plan_entry(was, moved, false, false)
    end
  end
  redis.call('HSET', PLANS, 'default', PLAN)
elseif move then
  redis.call('HDEL', PLANS, 'default')
end
redis.call('HSET', PLANS, 'd:' .. PLAN, definition, 'a:' .. PLAN,
  fmt(credits) .. ':' .. unit .. ':' .. fmt(count) .. ':' .. amode .. ':'
    .. (rollover and fmt(rollover) or '') .. ':' .. fmt(prio))
if rate then
  redis.call('HSET', PLANS, 'r:' .. PLAN, rate)
else
  redis.call('HDEL', PLANS, 'r:' .. PLAN)
end
if spend then
  redis.call('HSET', PLANS, 's:' .. PLAN, spend)
else
  redis.call('HDEL', PLANS, 's:' .. PLAN)
end
plan_entry(PLAN, definition, default, false)
return {created, definition}
