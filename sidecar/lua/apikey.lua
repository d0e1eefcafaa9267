-- apikey.lua: activate or revoke an API key on its account, or set its spending limit.
--
-- KEYS: the common seven (see _lib.lua), then [8] the account's API-key records (hash:
--   key id -> JSON record; the key itself is never stored, only its SHA-256 elsewhere).
-- ARGV: the common five, then
--   [6] mode: 'create', 'revoke' or 'limit'   [7] key id
--   [8] create: the key's JSON record; limit: the spending limit 'credits:unit:count' ('' =
--   none; see "Spending limits" in _lib.lua)   [9] create: its rate limit 'n:ms:burst' or ''
--   [10] create: its spending limit ('' = none)
-- The account hash fields kl:<key id> / ks:<key id> hold the key's spending limit and what it
-- spent in the window (deduct.lua enforces it); the record keeps the limit as spend_limit. A
-- limit whose window (unit and count) is unchanged keeps what was spent; revoking drops both.
-- The account hash field k:<key id> marks the key active; deduct.lua refuses a key
-- without it, so a revocation takes effect on the very next check in every sidecar.
-- Returns the key's JSON record (revoke: with revoked_at, ms).
-- Appends a kind=key entry (the record, with the key's hash, and the key's spend_state) to
-- the outbox on create, on a limit change and on the first revoke, so the SQL ledger mirrors
-- the keys.

local mode = ARGV[6]
if mode ~= 'create' and mode ~= 'revoke' and mode ~= 'limit' then
  fail('INVALID', 'mode must be create, revoke or limit')
end
local kid = id_arg(ARGV[7], 'key_id', 64)
require_account()
in_time()

local function key_entry(record)
  local ss = redis.call('HGET', A, 'ks:' .. kid)
  outbox_add({'kind', 'key', 'id', TXID, 'account', ACCOUNT, 'key_id', kid, 'ts', NOW,
    'record', {json = record}, 'spend_state', ss or cjson.null})
end

if mode == 'create' then
  local record = json_obj_arg(ARGV[8], 'record', 4096)
  local spec = ARGV[9] or ''
  if spec ~= '' and not string.match(spec, '^%d+:%d+:%d+$') then
    fail('INVALID', 'rate_limit must be requests:period_ms:burst')
  end
  local sl = spend_spec_arg(ARGV[10] or '', 'spend_limit')
  if redis.call('HEXISTS', KEYS[8], kid) == 1 then
    fail('CONFLICT', 'key_id ' .. kid .. ' already exists')
  end
  redis.call('HSET', A, 'k:' .. kid, spec)
  if sl then redis.call('HSET', A, 'kl:' .. kid, sl) end
  redis.call('HSET', KEYS[8], kid, record)
  key_entry(record)
  return record
end

if mode == 'limit' then
  local sl = spend_spec_arg(ARGV[8] or '', 'spend_limit')
  local raw = redis.call('HGET', KEYS[8], kid)
  if not raw then fail('UNKNOWN_KEY', 'key ' .. kid .. ' does not exist') end
  local rec = cjson.decode(raw)
  if rec.revoked_at then fail('KEY_REVOKED', 'key ' .. kid .. ' is revoked') end
  local old = redis.call('HMGET', A, 'kl:' .. kid, 'ks:' .. kid)
  local window = '^%d+:(%a+:%d+)$'
  if not sl then
    redis.call('HDEL', A, 'ks:' .. kid)
  elseif not old[1] or string.match(old[1], window) ~= string.match(sl, window) then
    -- counted from now: what the old limit counted is never given back here (spend_reset)
    redis.call('HSET', A, 'ks:' .. kid, spend_reset(sl, old[1] and old[2] or nil))
  end
  if sl then
    redis.call('HSET', A, 'kl:' .. kid, sl)
    local c, unit, count = string.match(sl, '^(%d+):(%a+):(%d+)$')
    rec.spend_limit = {credits = tonumber(c), interval = unit ~= 'life' and unit or cjson.null,
      interval_count = tonumber(count)}
  else
    redis.call('HDEL', A, 'kl:' .. kid)
    rec.spend_limit = cjson.null
  end
  raw = jenc(rec)
  redis.call('HSET', KEYS[8], kid, raw)
  key_entry(raw)
  return raw
end

local raw = redis.call('HGET', KEYS[8], kid)
if not raw then fail('UNKNOWN_KEY', 'key ' .. kid .. ' does not exist') end
local rec = cjson.decode(raw)
if not rec.revoked_at then
  rec.revoked_at = NOW
  redis.call('HDEL', A, 'k:' .. kid, 'kt:' .. kid, 'kl:' .. kid, 'ks:' .. kid)
  raw = jenc(rec)
  redis.call('HSET', KEYS[8], kid, raw)
  key_entry(raw)
end
return raw
