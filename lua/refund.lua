-- refund.lua: give back all or part of an earlier usage transaction.
--
-- KEYS: the common six (see _lib.lua), then [7] the usage record of the transaction
--   being refunded (written by deduct.lua; gone after the retention window).
-- ARGV: the common five, then
--   [6] refund id   [7] usage transaction id   [8] amount ('' = all that is left)
--   [9] description   [10] metadata (JSON object or '')
-- Refunds walk the usage's parts in reverse burn order (the overdraft part first,
-- then the buckets last drawn), continuing where earlier refunds stopped, so the
-- refunds of one transaction never exceed what it took. A part whose bucket expired
-- since is forfeited; an overdraft part reduces the debt, and what exceeds the debt
-- (a later grant repaid it) comes back as a new non-expiring bucket (source refund).
-- Credits that come back to a bucket of a purchase whose clawback is short (revoke.lua) are
-- taken back at once (a 'revoke' transaction after the refund).
-- Idempotent by refund id (per usage transaction).
-- Returns {'ok', transaction id, balance after, refunded, forfeited, replayed (0|1)}
--       | {'overflow'} (the account would hold more than 2^53-1 credits; nothing refunded).

local rid = id_arg(ARGV[6], 'refund_id', 128)
local src = id_arg(ARGV[7], 'transaction_id', 64)
local amount = opt_int_arg(ARGV[8], 'amount', 1, MAXINT)
local desc = text_arg(ARGV[9], 'description', 2048)
local metadata = json_obj_arg(ARGV[10], 'metadata', 4096)

require_account()
local u = redis.call('HMGET', KEYS[7], 'cost', 'alloc', 'overdraft', 'refunded', 'rf:' .. rid)
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
if acct.avail + acct.held + amount > MAXINT then
  save_if_touched()
  return {'overflow'}
end
local parts = {}
local od = tonumber(u[3])
if od > 0 then parts[1] = {'', od} end
local taken = cjson.decode(u[2])
for i = #taken, 1, -1 do parts[#parts + 1] = {taken[i][1], -taken[i][2]} end

local skip, want = tonumber(u[4]), amount
local alloc, restored, forfeited, repaid, excess = {}, 0, 0, 0, 0
for _, p in ipairs(parts) do
  local n = p[2]
  local s = math.min(skip, n)
  skip = skip - s
  local t = math.min(n - s, want)
  want = want - t
  if t > 0 and p[1] == '' then
    repaid = math.min(acct.debt, t)
    acct.debt = acct.debt - repaid
    excess = t - repaid
  elseif t > 0 then
    local back = credit_bucket(p[1], t)
    if back > 0 then alloc[#alloc + 1] = {p[1], back} end
    restored = restored + back
    forfeited = forfeited + t - back
  end
  if want == 0 then break end
end

-- requested_amount: the amount argument as given ('' = all that was left), which a replay
-- compares; the SQL ledger keeps it so `rebuild` can restore the refund record exactly.
local extra = {source_transaction_id = src, refund_id = rid, requested_amount = ARGV[8],
  repaid = repaid, forfeited = forfeited, desc = desc, meta = metadata}
local bid = 'refund:' .. TXID
if excess > 0 then
  local meta = add_bucket(bid, excess, excess, nil, 0, 'refund', '', '', TXID)
  alloc[#alloc + 1] = {bid, excess}
  extra.bucket = bucket_entry(bid, meta)
  meta.bal = balance()
  redis.call('HSET', A, 'm:' .. bid, jenc(meta))
end
emit(TXID, 'refund', restored + repaid + excess, alloc, extra)
-- credits back in a bucket whose purchase was refunded by Stripe go to its clawback
claw_returns()
local bal = balance()
redis.call('HINCRBY', KEYS[7], 'refunded', fmt(amount))
redis.call('HSET', KEYS[7], 'rf:' .. rid, jenc({arg = ARGV[8], tx = TXID, bal = bal,
  refunded = amount, forfeited = forfeited}))
save_account()
return {'ok', TXID, bal, amount, forfeited, 0}
