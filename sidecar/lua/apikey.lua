-- apikey.lua: activate or revoke an API key on its account.
--
-- KEYS: the common six (see _lib.lua), then [7] the account's API-key records (hash:
--   key id -> JSON record; the key itself is never stored, only its SHA-256 elsewhere).
-- ARGV: the common five, then
--   [6] mode: 'create' or 'revoke'   [7] key id
--   [8] create: the key's JSON record   [9] create: its rate limit 'n:ms:burst' or ''
-- The account hash field k:<key id> marks the key active; deduct.lua refuses a key
-- without it, so a revocation takes effect on the very next check in every sidecar.
-- Returns the key's JSON record (revoke: with revoked_at, ms).
-- Appends a kind=key entry (the record, with the key's hash) to the outbox on create and on
-- the first revoke, so the SQL ledger mirrors the keys.

local mode = ARGV[6]
if mode ~= 'create' and mode ~= 'revoke' then fail('INVALID', 'mode must be create or revoke') end
local kid = id_arg(ARGV[7], 'key_id', 64)
require_account()
in_time()

if mode == 'create' then
  local record = json_obj_arg(ARGV[8], 'record', 4096)
  local spec = ARGV[9] or ''
  if spec ~= '' and not string.match(spec, '^%d+:%d+:%d+$') then
    fail('INVALID', 'rate_limit must be requests:period_ms:burst')
  end
  if redis.call('HEXISTS', KEYS[7], kid) == 1 then
    fail('CONFLICT', 'key_id ' .. kid .. ' already exists')
  end
  redis.call('HSET', A, 'k:' .. kid, spec)
  redis.call('HSET', KEYS[7], kid, record)
  outbox_add({'kind', 'key', 'id', TXID, 'account', ACCOUNT, 'key_id', kid, 'ts', NOW,
    'record', {json = record}})
  return record
end

local raw = redis.call('HGET', KEYS[7], kid)
if not raw then fail('UNKNOWN_KEY', 'key ' .. kid .. ' does not exist') end
local rec = cjson.decode(raw)
if not rec.revoked_at then
  rec.revoked_at = NOW
  redis.call('HDEL', A, 'k:' .. kid, 'kt:' .. kid)
  raw = jenc(rec)
  redis.call('HSET', KEYS[7], kid, raw)
  outbox_add({'kind', 'key', 'id', TXID, 'account', ACCOUNT, 'key_id', kid, 'ts', NOW,
    'record', {json = raw}})
end
return raw
