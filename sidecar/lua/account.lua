-- account.lua: create an account, or replace its settings.
--
-- KEYS: the common six (see _lib.lua).
-- ARGV: the common five, then
--   [6] overdraft limit (credits >= 0; the balance may go down to minus this)
--   [7] low-balance threshold (credits, '' = none)
--   [8] rate limit: requests per period ('' = unlimited)   [9] period (ms)   [10] burst (requests)
-- Returns {created (1 new, 0 updated)}.
-- Appends one kind=account entry to the outbox so the SQL ledger mirrors the settings.

local ovl = int_arg(ARGV[6], 'overdraft_limit', 0, MAXINT)
local lbt = opt_int_arg(ARGV[7], 'low_balance_threshold', -MAXINT, MAXINT)
local rl_n = opt_int_arg(ARGV[8], 'rate_limit.requests', 1, 1000000000)
local rl_ms, rl_burst
if rl_n then
  rl_ms = int_arg(ARGV[9], 'rate_limit.period_ms', 1, 366 * 86400000)
  rl_burst = int_arg(ARGV[10], 'rate_limit.burst', 1, 1000000000)
end

in_time()
local created = 0
if not load_account() then
  created = 1
  acct = {avail = 0, held = 0, debt = 0, seq = 0}
  redis.call('HSET', A, 'created', fmt(NOW))
end
redis.call('HSET', A, 'ovl', fmt(ovl))
if lbt then redis.call('HSET', A, 'lbt', fmt(lbt)) else redis.call('HDEL', A, 'lbt') end
if rl_n then
  redis.call('HSET', A, 'rl_n', fmt(rl_n), 'rl_ms', fmt(rl_ms), 'rl_burst', fmt(rl_burst))
else
  redis.call('HDEL', A, 'rl_n', 'rl_ms', 'rl_burst', 'tat')
end
save_account()
outbox_add({'kind', 'account', 'id', TXID, 'account', ACCOUNT, 'ts', NOW,
  'created', tonumber(redis.call('HGET', A, 'created')),
  'settings', {overdraft_limit = ovl, low_balance_threshold = lbt, rate_limit_requests = rl_n,
    rate_limit_period_ms = rl_ms, rate_limit_burst = rl_burst}})
return {created}
