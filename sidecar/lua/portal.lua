-- portal.lua: customer-portal sessions (docs/portal.md): made by the business's backend, opened
-- once by the customer's browser through their link, then checked on every portal request;
-- revoked one by one, per account, or all at once.
--
-- Standalone (not prefixed with _lib.lua): a session moves no credits and writes no outbox entry
-- (the admin route that makes one is in the audit trail). Everything lives on shard 0, like the
-- tokens, so one script sees a session and the revocation counters together.
-- KEYS: [1] the session (string: its record, JSON; expires with it)  [2] the revocation counters
--   (hash: account -> n, '*' -> n; a session remembers both at its creation and is void once
--   either moved)
-- ARGV: [1] mode  [2] now (unix ms)  [3] the caller's deadline (unix ms on Redis' clock, ''
--   = none): a change that runs after it is refused (LATE) and writes nothing, as the caller
--   has answered 503 by then (a link opened late would be spent, its cookie never set), then
--   create: [4] the record (JSON, from sidecar/ledger/portal.py: id, account, link_hash,
--     link_expires_at, ...)  [5] its time to live (ms): the link's
--   open: [4] the link's SHA-256 (hex)  [5] the session secret's SHA-256  [6] the session's
--     lifetime (ms)
--   get: nothing more; end: nothing more (the caller checked the secret)
--   revoke: [4] the account, or '*' for every session
-- Units: times are unix ms; lifetimes ms.
-- Returns create/open/get: the record (JSON) or false (no such session, a used or expired
-- link, a revoked or expired session); end: 1|0; revoke: the counter after the call.

local SESSION, EPOCHS = KEYS[1], KEYS[2]
local mode, now, deadline = ARGV[1], tonumber(ARGV[2]), tonumber(ARGV[3])
if not now then return redis.error_reply('CS INVALID now must be a number') end

-- Whether the call still runs before its caller's deadline (Redis' clock: the caller's
-- deadline allows for skew). Checked before a change's first write.
local function late()
  if not deadline then return nil end
  local t = redis.call('TIME')
  local at = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
  if at <= deadline then return nil end
  return redis.error_reply('CS LATE the call reached Redis after its deadline')
end

local function epoch(name)
  return tonumber(redis.call('HGET', EPOCHS, name) or '0')
end

if mode == 'revoke' then
  local who = ARGV[4]
  if type(who) ~= 'string' or #who == 0 then
    return redis.error_reply('CS INVALID account must be given')
  end
  local refused = late()
  if refused then return refused end
  return redis.call('HINCRBY', EPOCHS, who, 1)
end

if mode == 'create' then
  local rec = cjson.decode(ARGV[4])
  local ttl = tonumber(ARGV[5])
  if type(rec.account) ~= 'string' or not ttl or ttl <= 0 then
    return redis.error_reply('CS INVALID record and ttl must be given')
  end
  local refused = late()
  if refused then return refused end
  rec.epoch_account = epoch(rec.account)
  rec.epoch_all = epoch('*')
  local raw = cjson.encode(rec)
  -- NX: a session id is made up once; a clash is the caller's to retry, never an overwrite
  if not redis.call('SET', SESSION, raw, 'PX', ttl, 'NX') then
    return redis.error_reply('CS CONFLICT session id exists')
  end
  return raw
end

local raw = redis.call('GET', SESSION)
if not raw then return false end
local rec = cjson.decode(raw)
if rec.epoch_account ~= epoch(rec.account) or rec.epoch_all ~= epoch('*') then
  redis.call('DEL', SESSION)  -- revoked: gone for good
  return false
end

if mode == 'open' then
  -- the link works once, before it expires
  if rec.opened_at ~= cjson.null and rec.opened_at ~= nil then return false end
  if rec.link_hash ~= ARGV[4] or now >= rec.link_expires_at then return false end
  local life = tonumber(ARGV[6])
  if not life or life <= 0 then return redis.error_reply('CS INVALID lifetime must be > 0') end
  local refused = late()
  if refused then return refused end
  rec.opened_at = now
  rec.secret_hash = ARGV[5]
  rec.expires_at = now + life
  raw = cjson.encode(rec)
  redis.call('SET', SESSION, raw, 'PX', life)  -- Redis's clock may differ from ours: relative
  return raw
end

if mode == 'get' then
  if rec.opened_at == cjson.null or rec.opened_at == nil or now >= rec.expires_at then
    return false
  end
  return raw
end

if mode == 'end' then
  local refused = late()
  if refused then return refused end
  return redis.call('DEL', SESSION)
end

return redis.error_reply('CS INVALID mode must be create, open, get, end or revoke')
