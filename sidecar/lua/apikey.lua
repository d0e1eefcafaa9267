-- apikey.lua: activate or revoke an API key on its account, or set its spending limit.
--
-- KEYS: the common seven (see _lib.lua), then [8] the account's API-key records (hash:
--   key id -> JSON record; the key itself is never stored, only its SHA-256 elsewhere).
-- ARGV: the common five, then
--   [6] mode: 'create', 'revoke' or 'limit'   [7] key id
--   [8] create: the key's JSON record; limit: the spending limit 'credits:unit:count' ('' =
--   none; see "Spending limits" in _lib.lua)   [9] create: its rate limit 'n:ms:burst' or ''
--   [10] create: its spending limit ('' = none)
--   [11] create: the caller's idempotency key ('' or absent = none; then KEYS[9] is the
--   account's record of it, under the account's hash tag)
-- Idempotent creation: the record (JSON {key_id, fp}: the created key's id and a digest of
-- name, rate limit and spending limit) lives as long as the other idempotency records
-- (RETENTION, ARGV[4]). A create with a recorded idempotency key and the same parameters
-- creates nothing and returns {'replayed', the key's record as it is now (maybe revoked)};
-- with other parameters it fails with CONFLICT. A record whose key is gone (Redis rebuilt
-- without it) is ignored: the create goes ahead and replaces it.
-- The account hash fields kl:<key id> / ks:<key id> hold the key's spending limit and what it
-- spent in the window (deduct.lua enforces it); the record keeps the limit as spend_limit. A
-- limit whose window (unit and count) is unchanged keeps what was spent; revoking drops both.
-- The account hash field k:<key id> marks the key active; deduct.lua refuses a key
-- without it, so a revocation takes effect on the very next check in every sidecar.
-- Returns the key's JSON record (revoke: with revoked_at, ms), or {'replayed', record}.
-- Appends a kind=key entry (the record, with the key's hash, and the key's spend_state) to
-- the outbox on create, on a limit change and on the first revoke, so the SQL ledger mirrors
-- the keys.

local mode = ARGV[6]
if mode ~= 'create' and mode ~= 'revoke' and mode ~= 'limit' then
  fail('INVALID', 'mode must be create, revoke or limit')
end
local kid = id_arg(ARGV[7], 'key_id', 64)
require_account()

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
  local ikey = ARGV[11] or ''
  local fp
  if ikey ~= '' then
    id_arg(ikey, 'idempotency_key', 128)
    local name = cjson.decode(record).name
    fp = request_fp({type(name) == 'string' and name or '', spec, ARGV[10] or ''})
    local prior = redis.call('GET', KEYS[9])
    if prior then
      local p = cjson.decode(prior)
      local raw = redis.call('HGET', KEYS[8], p.key_id)
      if raw then
        if p.fp ~= fp then
          fail('CONFLICT', 'idempotency_key was already used with different parameters')
        end
        return {'replayed', raw}
      end
    end
  end
  in_time()
  if redis.call('HEXISTS', KEYS[8], kid) == 1 then
    fail('CONFLICT', 'key_id ' .. kid .. ' already exists')
  end
  redis.call('HSET', A, 'k:' .. kid, spec)
  if sl then redis.call('HSET', A, 'kl:' .. kid, sl) end
  redis.call('HSET', KEYS[8], kid, record)
  if fp then redis.call('SET', KEYS[9], jenc({key_id = kid, fp = fp}), 'PX', RETENTION) end
  key_entry(record)
  return record
end

in_time()

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
