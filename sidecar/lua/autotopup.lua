-- autotopup.lua: set or clear an account's auto top-up threshold (account hash field att).
--
-- KEYS: the common seven (see _lib.lua).
-- ARGV: the common five (the transaction id is unused: nothing goes to the outbox; the
--   auto top-up's settings are kept in SQL, which `rebuild` restores this field from), then
--   [6] threshold (credits, '' = off)
-- A debit that takes the balance from >= att to below it appends one auto_topup event to the
-- shard's events stream (low_balance_event in _lib.lua); the billing worker then charges.
-- Returns {balance}.

local att = opt_int_arg(ARGV[6], 'threshold', -MAXINT, MAXINT)
require_account()
in_time()
if att then
  redis.call('HSET', A, 'att', fmt(att))
else
  redis.call('HDEL', A, 'att')
end
return {balance()}
