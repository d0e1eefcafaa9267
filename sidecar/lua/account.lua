-- account.lua: create an account, or replace (put) or merge (patch) its settings.
--
-- KEYS: the common six (see _lib.lua).
-- ARGV: the common five, then
--   [6] overdraft limit (credits >= 0; the balance may go down to minus this)
--   [7] low-balance threshold (credits, '' = none)
--   [8] rate limit: requests per period ('' = unlimited)   [9] period (ms)   [10] burst (requests)
--   [11] spending limit 'credits:unit:count' ('' = none; see "Spending limits" in _lib.lua)
--   [12] mode: 'put' (every setting as given) or 'patch' (a setting given as '-' keeps its
--   value; [8] '-' keeps the whole rate limit). Patching an account that does not exist
--   fails (UNKNOWN_ACCOUNT).
-- A spending limit whose window (unit and count) is unchanged keeps what was spent in it;
-- another window, or a new limit, counts from now (spend_reset in _lib.lua).
-- Returns {created (1 new, 0 updated), then every setting after the call: overdraft limit,
--   low-balance threshold, rate requests, period, burst, spending limit ('' = none)}.
-- Appends one kind=account entry (every setting after the call) to the outbox so the SQL
-- ledger mirrors the settings.

local KEEP = '-'
local mode = ARGV[12] or 'put'
if mode ~= 'put' and mode ~= 'patch' then fail('INVALID', 'mode must be put or patch') end
local patch = mode == 'patch'
local function given(v) return not (patch and v == KEEP) end

local ovl, lbt, rl_n, rl_ms, rl_burst, sl
if given(ARGV[6]) then ovl = int_arg(ARGV[6], 'overdraft_limit', 0, MAXINT) end
if given(ARGV[7]) then lbt = opt_int_arg(ARGV[7], 'low_balance_threshold', -MAXINT, MAXINT) end
if given(ARGV[8]) then
  rl_n = opt_int_arg(ARGV[8], 'rate_limit.requests', 1, 1000000000)
  if rl_n then
    rl_ms = int_arg(ARGV[9], 'rate_limit.period_ms', 1, 366 * 86400000)
    rl_burst = int_arg(ARGV[10], 'rate_limit.burst', 1, 1000000000)
  end
end
local sl_arg = ARGV[11] or ''
if given(sl_arg) then sl = spend_spec_arg(sl_arg, 'spend_limit') end

local exists = load_account()
if patch and not exists then fail('UNKNOWN_ACCOUNT', 'account ' .. ACCOUNT .. ' does not exist') end
in_time()
local created = 0
if not exists then
  created = 1
  acct = {avail = 0, held = 0, debt = 0, seq = 0}
  redis.call('HSET', A, 'created', fmt(NOW))
end
if given(ARGV[6]) then redis.call('HSET', A, 'ovl', fmt(ovl)) end
if given(ARGV[7]) then
  if lbt then redis.call('HSET', A, 'lbt', fmt(lbt)) else redis.call('HDEL', A, 'lbt') end
end
if given(ARGV[8]) then
  if rl_n then
    redis.call('HSET', A, 'rl_n', fmt(rl_n), 'rl_ms', fmt(rl_ms), 'rl_burst', fmt(rl_burst))
  else
    redis.call('HDEL', A, 'rl_n', 'rl_ms', 'rl_burst', 'tat')
  end
end
if given(sl_arg) then
  if sl then
    local old = acct.sl and string.match(acct.sl, '^%d+:(%a+:%d+)$')
    if old ~= string.match(sl, '^%d+:(%a+:%d+)$') then
      -- counted from now: what was counted before (by the old limit) is never given back here
      acct.ss = spend_reset(sl, acct.sl and acct.ss)
      redis.call('HSET', A, 'ss', acct.ss)
    end
    redis.call('HSET', A, 'sl', sl)
  else
    redis.call('HDEL', A, 'sl', 'ss')
    acct.ss = nil
  end
end
save_account()

-- every setting after the call, as the SQL ledger keeps them
local v = redis.call('HMGET', A, 'created', 'ovl', 'lbt', 'rl_n', 'rl_ms', 'rl_burst', 'sl')
local spend = nil
if v[7] then
  local c, unit, count = string.match(v[7], '^(%d+):(%a+):(%d+)$')
  spend = {credits = tonumber(c), interval = unit ~= 'life' and unit or nil,
    interval_count = tonumber(count)}
end
outbox_add({'kind', 'account', 'id', TXID, 'account', ACCOUNT, 'ts', NOW,
  'created', tonumber(v[1]),
  'settings', {overdraft_limit = tonumber(v[2]) or 0, low_balance_threshold = tonumber(v[3]),
    rate_limit_requests = tonumber(v[4]), rate_limit_period_ms = tonumber(v[5]),
    rate_limit_burst = tonumber(v[6]), spend_limit = spend},
  -- what was spent in the limit's window ('from:spent', see "Spending limits" in _lib.lua)
  'spend_state', acct.ss or cjson.null})
return {created, v[2] or '0', v[3] or '', v[4] or '', v[5] or '', v[6] or '', v[7] or ''}
