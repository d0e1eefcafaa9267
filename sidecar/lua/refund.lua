-- refund.lua: give back all or part of an earlier usage transaction.
--
-- KEYS: the common seven (see _lib.lua), then [8] the usage record of the transaction
--   being refunded (written by deduct.lua; gone after the retention window).
-- ARGV: the common five, then
--   [6] refund id   [7] usage transaction id   [8] amount ('' = all that is left)
--   [9] description   [10] metadata (JSON object or '')
-- The credits go back as _lib.lua's refund_usage describes (reverse burn order, expired
-- parts forfeited, the overdraft part repaying debt, clawbacks taking what they are short).
-- Idempotent by refund id (per usage transaction).
-- Returns {'ok', transaction id, balance after, refunded, forfeited, replayed (0|1)}
--       | {'overflow'} (the account would hold more than 2^53-1 credits; nothing refunded).

local rid = id_arg(ARGV[6], 'refund_id', 128)
local src = id_arg(ARGV[7], 'transaction_id', 64)
local amount = opt_int_arg(ARGV[8], 'amount', 1, MAXINT)
local desc = text_arg(ARGV[9], 'description', 2048)
local metadata = json_obj_arg(ARGV[10], 'metadata', 4096)

require_account()
local u = redis.call('HMGET', KEYS[8], 'cost', 'alloc', 'overdraft', 'refunded', 'rf:' .. rid)
if not u[1] then
  fail('UNKNOWN_TRANSACTION', 'no refundable usage transaction ' .. src ..
    ' (unknown, or older than the retention window)')
end
if u[5] then
  local p = cjson.decode(u[5])
  if p.arg ~= ARGV[8] then
    fail('CONFLICT', 'refund_id ' .. rid .. ' was already used with another amount')
  end
  return {'ok', p.tx, p.bal, p.refunded, p.forfeited, 1}
end
local left = tonumber(u[1]) - tonumber(u[4])
if left == 0 then fail('FULLY_REFUNDED', 'transaction ' .. src .. ' is already fully refunded') end
amount = amount or left
if amount > left then
  fail('INVALID', 'amount exceeds what is left to refund (' .. fmt(left) .. ')')
end
in_time()

expire_due()
local bal, forfeited = refund_usage(KEYS[8], u, src, rid, ARGV[8], amount, desc, metadata)
if not bal then
  save_if_touched()
  return {'overflow'}
end
save_account()
return {'ok', TXID, bal, amount, forfeited, 0}
