-- restore_tokens.lua: put token records read from the SQL ledger back (`credit-sidecar rebuild`).
--
-- Standalone: not prefixed with _lib.lua (the records arrive encoded as token.lua's jenc writes
-- them, and nothing goes to the outbox: SQL has them already).
-- KEYS: [1] the tokens hash (shard 0: field <token id> -> record, '~v' -> version).
-- ARGV: [1] now (ms), then per token: its id, the record Redis was read to hold ('' = none),
--   the record to write. A token whose record is no longer the one read (token.lua changed it
--   meanwhile) is left as it is.
-- When any was written the version moves to at least now: past every version a serving
-- process may still hold from before Redis lost the hash, so each of them reloads.
-- Returns {records written, the version after}.

local key = KEYS[1]
local now = tonumber(ARGV[1])
if not now or now < 0 or (#ARGV - 1) % 3 ~= 0 then
  return redis.error_reply('CS INVALID restore_tokens needs now and (id, expected, record) triples')
end
local written = 0
for i = 2, #ARGV, 3 do
  local id = ARGV[i]
  if id == '~v' or id == '' then return redis.error_reply('CS INVALID token id ' .. id) end
  if (redis.call('HGET', key, id) or '') == ARGV[i + 1] then
    redis.call('HSET', key, id, ARGV[i + 2])
    written = written + 1
  end
end
local v = tonumber(redis.call('HGET', key, '~v')) or 0
if written > 0 then
  v = math.max(v + 1, now)
  redis.call('HSET', key, '~v', string.format('%d', v))
end
return {written, v}
