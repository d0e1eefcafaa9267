-- token_workers.lua: the serving processes' reports of the tokens version they serve with
-- (docs/tokens.md "How it works"), stamped and read on Redis's own clock: the hosts' clocks
-- may disagree, and a process taken for dead because its clock is behind would not be waited
-- for by a revoke.
--
-- Standalone (not prefixed with _lib.lua). KEYS: [1] the workers hash (shard 0: process name ->
-- '<version>:<ms>').
-- ARGV: [1] mode 'report' (then [2] the process's name, [3] the version it serves with, an
--   integer >= -1) or 'read'.
-- Units: ms on the clock of the Redis node that owns the hash (TIME).
-- Returns report: the time stamped; read: {now, name, report, name, report, ...}.

local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local mode = ARGV[1]
if mode == 'report' then
  local name, version = ARGV[2], ARGV[3]
  if type(name) ~= 'string' or #name == 0 or #name > 200 then
    return redis.error_reply('CS INVALID the process name must be 1-200 bytes')
  end
  if type(version) ~= 'string' or not string.match(version, '^%-?%d+$') or #version > 17 then
    return redis.error_reply('CS INVALID version must be an integer')
  end
  redis.call('HSET', KEYS[1], name, version .. ':' .. string.format('%d', now))
  return now
end
if mode == 'read' then
  local out = {now}
  for _, v in ipairs(redis.call('HGETALL', KEYS[1])) do out[#out + 1] = v end
  return out
end
return redis.error_reply('CS INVALID mode must be report or read')
