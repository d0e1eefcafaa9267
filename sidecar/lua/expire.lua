-- expire.lua: the sweeper's call. Processes every deadline of one account that is due:
-- buckets expire (one expiry transaction each), lapsed holds release themselves,
-- closed holds past the retention are purged.
--
-- KEYS: the common seven (see _lib.lua).  ARGV: the common five.
-- Returns the number of transactions written.

if not load_account() then
  redis.call('ZREM', DUE, ACCOUNT)
  return 0
end
expire_due()
save_if_touched()
return extra_txns
