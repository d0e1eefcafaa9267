-- account.lua: create an account, or replace (put) or merge (patch) its settings.
--
-- KEYS: the common seven (see _lib.lua).
-- ARGV: the common five, then
--   [6] overdraft limit (credits >= 0; the balance may go down to minus this)
--   [7] low-balance threshold (credits, '' = none)
--   [8] rate limit: requests per period ('' = unlimited)   [9] period (ms)   [10] burst (requests)
--   [11] spending limit 'credits:unit:count' ('' = none; see "Spending limits" in _lib.lua)
--   [12] mode: 'put' (every setting as given) or 'patch' (a setting given as '-' keeps its
--   value; [8] '-' keeps the whole rate limit). Patching an account that does not exist
--   fails (UNKNOWN_ACCOUNT).
--   [13] plan ('' = none; '-' keeps it; '*' = the shard's default plan for a new account,
--   none for one that exists; see "Plans" in _lib.lua and docs/plans.md)
--   [14] plan anchor (unix ms; '' or '-' = unchanged while the plan is, else now)
-- A spending limit whose window (unit and count) is unchanged keeps what was spent in it;
-- another window, or a new limit, counts from now (spend_reset in _lib.lua). The limit that
-- applies is the account's own, else its plan's.
-- Another plan, or an anchor that moves the periods: what is due happens first, the old plan's
-- unused allowance expires now (expiry, reason plan_change) and the new plan's current period
-- is issued at once. Removing the plan issues nothing more; what it issued stays.
-- Returns {created (1 new, 0 updated), then every setting after the call: overdraft limit,
--   low-balance threshold, rate requests, period, burst, spending limit ('' = none), plan
--   ('' = none), plan anchor ('' = none)}.
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
local plan_arg = ARGV[13] or '-'
if plan_arg ~= '-' and plan_arg ~= '' and plan_arg ~= '*' then id_arg(plan_arg, 'plan', 64) end
local anchor_arg = ARGV[14] or ''
local anchor = nil
if anchor_arg ~= '' and anchor_arg ~= KEEP then
  anchor = int_arg(anchor_arg, 'plan_anchor', 0, MAX_TIME)
end

local exists = load_account()
if patch and not exists then fail('UNKNOWN_ACCOUNT', 'account ' .. ACCOUNT .. ' does not exist') end

-- The plan after the call, and its anchor (validated before the first write).
local old_pl, old_pan = exists and acct.pl or nil, exists and acct.pan or nil
local new_pl = old_pl
if plan_arg == '*' then
  new_pl = nil
  if not exists then
    local d = redis.call('HGET', P, 'default')
    if d and not redis.call('HGET', P, 'x:' .. d) and redis.call('HGET', P, 'a:' .. d) then
      new_pl = d
    end
  end
elseif plan_arg ~= KEEP then
  new_pl = plan_arg ~= '' and plan_arg or nil
end
local spec = nil
if new_pl then
  spec = plan_lib().spec(new_pl)
  if not spec then fail('INVALID', 'plan ' .. new_pl .. ' does not exist') end
  if new_pl ~= old_pl and redis.call('HGET', P, 'x:' .. new_pl) then
    fail('INVALID', 'plan ' .. new_pl .. ' is being deleted')
  end
elseif anchor then
  fail('INVALID', 'plan_anchor needs a plan')
end
local new_pan = anchor or (new_pl == old_pl and old_pan) or NOW
local plan_changed = new_pl ~= old_pl
local moved_end = nil
if not plan_changed and new_pl and new_pan ~= old_pan then
  -- the same plan re-anchored: a plan change if the current period starts elsewhere; if only
  -- its end moves, the next renewal moves with it and the period's allowance stays (it was
  -- issued once for the period starting there)
  local s1, e1 = period_of(old_pan, spec.unit, spec.count, NOW)
  local s2, e2 = period_of(new_pan, spec.unit, spec.count, NOW)
  plan_changed = s1 ~= s2
  if not plan_changed and e1 ~= e2 then moved_end = e2 end
end
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
  -- a limit set anew starts from a full burst (the TAT of the one it replaces is not its own)
  if rl_n then
    redis.call('HSET', A, 'rl_n', fmt(rl_n), 'rl_ms', fmt(rl_ms), 'rl_burst', fmt(rl_burst))
    if not (acct.own_rl and acct.rl_n == rl_n and acct.rl_ms == rl_ms
        and acct.rl_burst == rl_burst) then
      redis.call('HDEL', A, 'tat')
    end
  else
    redis.call('HDEL', A, 'rl_n', 'rl_ms', 'rl_burst', 'tat')
  end
end

-- The plan: what is due under the old one happens first.
if plan_changed and exists then expire_due() end
if plan_changed and old_pl then
  if new_pl then plan_lib().cut(plan_lib().left(), nil, 'plan_change') end
  redis.call('HINCRBY', P, 'n:' .. old_pl, -1)
  redis.call('ZREM', D, 'p:')
  deadlines_changed = true
  redis.call('HDEL', A, 'pl', 'pan', 'psn', 'pn')
  acct.pl, acct.pan, acct.pn, ANCHOR = nil, nil, nil, nil
end
if plan_changed and not acct.own_rl then redis.call('HDEL', A, 'tat') end
if plan_changed and new_pl then
  redis.call('HINCRBY', P, 'n:' .. new_pl, 1)
  redis.call('HSET', A, 'pl', new_pl, 'pan', fmt(new_pan), 'psn', fmt(NOW))
  acct.pl, acct.pan, acct.pn, ANCHOR = new_pl, new_pan, nil, new_pan
  plan_lib().renew()
elseif new_pl and new_pan ~= old_pan then
  acct.pan, ANCHOR = new_pan, new_pan
  redis.call('HSET', A, 'pan', fmt(new_pan))
  -- a renewal due (a boundary passed unseen) happens first, under the new anchor: the period
  -- starting where it did under both was never issued, and moving the next renewal alone
  -- would skip it
  if acct.pn and acct.pn <= NOW then expire_due() end
  if moved_end then
    acct.pn = moved_end
    redis.call('HSET', A, 'pn', fmt(moved_end))
    schedule('p:', moved_end)
  end
end

-- The spending limit that applies (the account's own, else its plan's) and what it spent.
local eff_old = exists and acct.sl or nil
local own = acct.own_sl
if given(sl_arg) then
  own = sl
  if sl then redis.call('HSET', A, 'sl', sl) else redis.call('HDEL', A, 'sl') end
end
local eff = own or (new_pl and redis.call('HGET', P, 's:' .. new_pl)) or nil
local function window_of(spec_v) return spec_v and string.match(spec_v, '^%d+:(%a+:%d+)$') end
if not eff then
  redis.call('HDEL', A, 'ss')
  acct.ss = nil
elseif window_of(eff) ~= window_of(eff_old) or plan_changed
    or (new_pl and new_pan ~= old_pan) then  -- (a new anchor moves the account's windows)
  -- counted from now: what was counted before (by the old limit) is never given back here
  acct.ss = spend_reset(eff, eff_old and acct.ss)
  redis.call('HSET', A, 'ss', acct.ss)
end
acct.sl = eff
save_account()

-- every setting after the call, as the SQL ledger keeps them
local v = redis.call('HMGET', A, 'created', 'ovl', 'lbt', 'rl_n', 'rl_ms', 'rl_burst', 'sl',
  'pl', 'pan', 'psn', 'pn')
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
    rate_limit_burst = tonumber(v[6]), spend_limit = spend, plan = v[8] or cjson.null,
    plan_anchor = tonumber(v[9]) or cjson.null, plan_since = tonumber(v[10]) or cjson.null,
    plan_next = tonumber(v[11]) or cjson.null},
  -- what was spent in the limit's window ('from:spent', see "Spending limits" in _lib.lua)
  'spend_state', acct.ss or cjson.null})
return {created, v[2] or '0', v[3] or '', v[4] or '', v[5] or '', v[6] or '', v[7] or '',
  v[8] or '', v[9] or ''}
