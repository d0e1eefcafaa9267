-- hold.lua: reserve credits for long-running work.
--
-- KEYS: the common seven (see _lib.lua), then [8] events stream of the shard.
-- ARGV: the common five, then
--   [6] hold id (unique per account)   [7] amount (credits, 1 .. 2^53-1)
--   [8] ttl (ms; when it passes the hold releases itself)   [9] description
--   [10] metadata (JSON object or '')
-- The credits move out of their buckets (burn order) into the hold, so the balance
-- drops at once; holds never use the overdraft. Idempotent by hold id.
-- An active hold counts its amount against the account's spending limit (settling keeps
-- only its charge counted, see close_hold in _lib.lua).
-- Returns {'ok', transaction id, balance after, expires_at, replayed (0|1), state}
--       | {'insufficient', balance, amount}
--       | {'spend_limited', 'account', credits, interval, count, spent, window end}

local hid = id_arg(ARGV[6], 'hold_id', 128)
local amount = int_arg(ARGV[7], 'amount', 1, MAXINT)
local ttl = int_arg(ARGV[8], 'ttl_ms', 1, 366 * 86400000)
local desc = text_arg(ARGV[9], 'description', 2048)
local metadata = json_obj_arg(ARGV[10], 'metadata', 4096)

require_account()
local raw = redis.call('HGET', H, hid)
if raw then
  local rec = cjson.decode(raw)
  if rec.amount ~= amount or rec.ttl ~= ttl then
    fail('CONFLICT', 'hold_id ' .. hid .. ' was already used with other parameters')
  end
end

if not raw then in_time() end
expire_due()
if raw then
  -- a replay; report the state after due deadlines (its own TTL) were processed
  save_if_touched()
  local rec = cjson.decode(redis.call('HGET', H, hid) or raw)
  return {'ok', rec.tx, rec.bal, rec.expires, 1, rec.state}
end
local alim = spend_load(acct.sl, acct.ss)
if spend_over(alim, amount) then
  save_if_touched()
  return spend_refusal('account', alim)
end
local before = balance()
if before < amount then
  save_if_touched()
  return {'insufficient', before, amount}
end
local alloc = draw(amount, true)
local parts = {}
for i, a in ipairs(alloc) do parts[i] = {a[1], -a[2]} end
local rec = {amount = amount, ttl = ttl, alloc = parts, created = NOW, expires = NOW + ttl,
  state = 'active', tx = TXID}
if alim then
  alim.spent = alim.spent + amount
  acct.ss = spend_state(alim)
  redis.call('HSET', A, 'ss', acct.ss)
  rec.sw = alim.from
end
emit(TXID, 'hold', -amount, alloc, {held = parts, hold_id = hid, expires = rec.expires,
  desc = desc, meta = metadata, sw = rec.sw})
rec.bal = balance()
redis.call('HSET', H, hid, jenc(rec))
schedule('h:' .. hid, rec.expires)
low_balance_event(KEYS[8], before, TXID)
save_account()
return {'ok', TXID, rec.bal, rec.expires, 0, 'active'}
