-- token.lua: create, rotate or revoke one of the sidecar's own API tokens (docs/tokens.md).
--
-- Tokens belong to no account: shard 0 keeps them all in one hash, which every worker reads
-- whole and polls for changes (sidecar/ledger/token_cache.py).
-- KEYS (not the common ones): [1] the tokens hash: field <token id> -> the record (JSON),
--   field '~v' -> the version, bumped by every change (a hash without one starts it at now)
--   [2] shard 0's outbox stream
-- ARGV: the common five, the token id in the account's place, then
--   [6] mode: 'create', 'rotate' or 'revoke'
--   create: [7] name (1-200 characters)  [8] scopes (JSON array of admin, service, read,
--     portal, checkout; at least one, no repeats)  [9] account prefix ('' = none; 1-128
--     characters of [A-Za-z0-9._:-])  [10] the token's SHA-256 (64 lowercase hex)
--   rotate: [7] the new token's SHA-256  [8] grace: how long the token it replaces stays
--     valid (ms, 0 .. 30 days)
-- Units: times are unix ms (ARGV[2], now).
-- The record: {id, name, scopes, account_prefix (or null), hash, previous ([{hash, expires}]:
-- replaced hashes still valid until then (ms); a rotation keeps the earlier ones in their grace, so
-- a rotation sent twice never cuts the first one short; at most 8, the soonest to end dropped
-- first), created_at, rotated_at, revoked_at (null until then)}.
-- Returns {the record after the call (JSON), the version after it, changed (1|0)}.
-- Refusals: CONFLICT (create of an id that exists), UNKNOWN_TOKEN (rotate or revoke of an id
-- never created), TOKEN_REVOKED (rotate of a revoked token). A revoke of a revoked token
-- changes nothing (changed 0). Each change appends a kind=token entry {id (the transaction),
-- token_id, ts, record} to the outbox: the SQL ledger mirrors the tokens (hashes only).

OUTBOX = KEYS[2]  -- _lib.lua's outbox_add appends to OUTBOX: this script's is KEYS[2]
local TOKENS = KEYS[1]
local TOKEN = ARGV[1]
if type(TOKEN) ~= 'string' or not string.match(TOKEN, '^[a-z0-9]+$') or #TOKEN > 64 then
  fail('INVALID', 'token_id must be 1-64 characters of [a-z0-9]')
end
local mode = ARGV[6]
if mode ~= 'create' and mode ~= 'rotate' and mode ~= 'revoke' then
  fail('INVALID', 'mode must be create, rotate or revoke')
end
local SCOPES = {admin = true, service = true, read = true, portal = true, checkout = true}
local MAX_PREVIOUS = 8

local function hash_arg(v)
  if type(v) ~= 'string' or not string.match(v, '^' .. string.rep('[0-9a-f]', 64) .. '$') then
    fail('INVALID', 'hash must be 64 lowercase hex digits')
  end
  return v
end

local function entry(record)
  outbox_add({'kind', 'token', 'id', TXID, 'token_id', TOKEN, 'ts', NOW,
    'record', {json = record}})
end

local function save(rec)
  local raw = jenc(rec)
  -- A hash without a version (new, or lost by Redis) starts it at now, not 0: counting from 1
  -- again could reach the number a serving process holds from before the loss, and it would
  -- take the new records for the ones it has (a token just created refused for good).
  if redis.call('HEXISTS', TOKENS, '~v') == 0 then redis.call('HSET', TOKENS, '~v', NOW) end
  redis.call('HSET', TOKENS, TOKEN, raw)
  local v = redis.call('HINCRBY', TOKENS, '~v', 1)
  entry(raw)
  return {raw, v, 1}
end

local raw = redis.call('HGET', TOKENS, TOKEN)

if mode == 'create' then
  local name = text_arg(ARGV[7] or '', 'name', 800)
  local chars = select(2, string.gsub(name, '[^\128-\191]', ''))
  if chars < 1 or chars > 200 then fail('INVALID', 'name must be 1-200 characters') end
  local ok, scopes = pcall(cjson.decode, ARGV[8] or '')
  if not ok or type(scopes) ~= 'table' or #scopes == 0 then
    fail('INVALID', 'scopes must be a non-empty JSON array')
  end
  local seen = {}
  for _, s in ipairs(scopes) do
    if not SCOPES[s] then fail('INVALID', 'scopes: unknown scope ' .. tostring(s)) end
    if seen[s] then fail('INVALID', 'scopes: ' .. s .. ' given twice') end
    seen[s] = true
  end
  local prefix = ARGV[9] or ''
  if prefix ~= '' then id_arg(prefix, 'account_prefix', 128) end
  local hash = hash_arg(ARGV[10])
  if raw then fail('CONFLICT', 'token ' .. TOKEN .. ' exists') end
  in_time()
  return save({id = TOKEN, name = name, scopes = scopes,
    account_prefix = prefix ~= '' and prefix or cjson.null, hash = hash, previous = {},
    created_at = NOW, rotated_at = cjson.null, revoked_at = cjson.null})
end

if not raw then fail('UNKNOWN_TOKEN', 'token ' .. TOKEN .. ' does not exist') end
local rec = cjson.decode(raw)
-- The replaced hashes still in their grace (cjson reads [] back as {}: jenc writes it as []).
local function keep(previous)
  local out = {}
  for _, p in ipairs(previous or {}) do
    if p.expires > NOW then out[#out + 1] = p end
  end
  return out
end

if mode == 'rotate' then
  local hash = hash_arg(ARGV[7])
  local grace = int_arg(ARGV[8] or '', 'grace_ms', 0, 30 * 86400000)
  if rec.revoked_at ~= cjson.null then fail('TOKEN_REVOKED', 'token ' .. TOKEN .. ' is revoked') end
  in_time()
  local prev = keep(rec.previous)
  if grace > 0 then prev[#prev + 1] = {hash = rec.hash, expires = NOW + grace} end
  table.sort(prev, function(x, y) return x.expires > y.expires end)
  while #prev > MAX_PREVIOUS do prev[#prev] = nil end
  rec.previous, rec.hash, rec.rotated_at = prev, hash, NOW
  return save(rec)
end

-- revoke
if rec.revoked_at ~= cjson.null then
  return {raw, tonumber(redis.call('HGET', TOKENS, '~v')) or 0, 0}
end
in_time()
rec.revoked_at, rec.previous = NOW, {}
return save(rec)
