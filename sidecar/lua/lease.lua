-- lease.lua: take, renew or release an exclusive lease (one outbox writer per shard).
--
-- Standalone: not prefixed with _lib.lua (it touches no ledger state).
-- KEYS: [1] the lease key.
-- ARGV: [1] the holder's token   [2] TTL in ms (0 = release, only if held by this token).
-- Returns 1 if the caller holds the lease after the call (0 after a release), else 0.

local key, token, ttl = KEYS[1], ARGV[1], tonumber(ARGV[2])
if not token or token == '' or not ttl or ttl < 0 then
  return redis.error_reply('CS INVALID lease needs a token and a TTL >= 0')
end
local holder = redis.call('GET', key)
if ttl == 0 then
  if holder == token then redis.call('DEL', key) end
  return 0
end
if holder and holder ~= token then return 0 end
redis.call('SET', key, token, 'PX', ttl)
return 1
