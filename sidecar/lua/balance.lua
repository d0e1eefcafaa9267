-- balance.lua: the account's balance and its live buckets in burn order.
--
-- KEYS: the common seven (see _lib.lua).  ARGV: the common five.
-- Touching the account first expires what is due (recording expiry transactions).
-- Returns {balance, available, held, debt, overdraft limit, low-balance threshold or '',
--          {rate requests, period ms, burst} or {}, created,
--          {{bucket id, remaining, held, static JSON}, ...},
--          {spend limit credits, unit, count, spent in the window, window end ('' = never)} or {},
--          {plan, anchor, next renewal (ms)} or {}}

require_account()
expire_due()
save_if_touched()
local rows = {}
for i, m in ipairs(redis.call('ZRANGE', O, 0, -1)) do
  local id = string.sub(m, OKEY_PREFIX + 1)
  local v = redis.call('HMGET', A, 'r:' .. id, 'h:' .. id, 'm:' .. id)
  rows[i] = {id, tonumber(v[1]) or 0, tonumber(v[2]) or 0, v[3]}
end
local rate = {}
if acct.rl_n then rate = {acct.rl_n, acct.rl_ms, acct.rl_burst} end
local spend = {}
local lim = spend_load(acct.sl, acct.ss)
if lim then
  spend = {lim.credits, lim.unit, lim.count, lim.spent, spend_stop(lim)}
end
local plan = {}
if acct.pl then plan = {acct.pl, fmt(acct.pan), fmt(acct.pn)} end
return {balance(), acct.avail, acct.held, acct.debt, acct.ovl, acct.lbt and fmt(acct.lbt) or '',
  rate, acct.created, rows, spend, plan}
