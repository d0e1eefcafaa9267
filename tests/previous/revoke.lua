-- revoke.lua: take back the credits of a purchase that was refunded or disputed.
--
-- KEYS: the common six (see _lib.lua).
-- ARGV: the common four, then
--   [5] purchase id (the Checkout Session or PaymentIntent id)
--   [6] target: credits of this purchase to have taken back in total (cumulative, >= 0)
--   [7] policy: 'unspent' (only what is left in the purchase's buckets) or 'negative' (the
--       rest is added to the account's debt: the balance goes below zero)
--   [8] the purchase's bucket ids, a JSON array (they are drawn from in this order)
--   [9] description
-- Idempotent and order-independent: the account keeps the target reached per purchase
-- (cb:<purchase>), and a call whose target is not above it changes nothing. Refunds carry a
-- cumulative amount, so duplicated or reordered events take back the right credits once.
-- Credits the purchase's buckets no longer hold (spent, expired, held) are, with 'unspent',
-- recorded as unrecovered. One 'revoke' transaction goes to the outbox.
-- Returns {transaction id ('' when nothing was due), taken from the buckets, added to debt,
--          unrecovered, balance after}.

local pid = id_arg(ARGV[5], 'purchase', 255)
local target = int_arg(ARGV[6], 'target', 0, MAXINT)
local policy = ARGV[7]
if policy ~= 'unspent' and policy ~= 'negative' then
  fail('INVALID', 'policy must be unspent or negative')
end
local ok, ids = pcall(cjson.decode, ARGV[8] or '')
if not ok or type(ids) ~= 'table' or string.sub(ARGV[8], 1, 1) ~= '[' then
  fail('INVALID', 'buckets must be a JSON array of bucket ids')
end
for _, id in ipairs(ids) do id_arg(id, 'bucket', 200) end
local desc = text_arg(ARGV[9], 'description', 2048)

require_account()
local done = tonumber(redis.call('HGET', A, 'cb:' .. pid)) or 0
local want = target - done
if want > 0 and policy == 'negative' and acct.debt + want > MAXINT then
  fail('INVALID', 'taking back ' .. fmt(want) .. ' credits would overflow the debt')
end
-- Everything is valid: from here on, only writes.
expire_due()
if want <= 0 then
  save_if_touched()
  return {'', 0, 0, 0, balance()}
end

local alloc, taken = {}, 0
for _, id in ipairs(ids) do
  if taken == want then break end
  local r = tonumber(redis.call('HGET', A, 'r:' .. id))
  if r and r > 0 then
    local t = math.min(r, want - taken)
    redis.call('HSET', A, 'r:' .. id, fmt(r - t))
    sync_order(id, bucket_meta(id))
    taken = taken + t
    alloc[#alloc + 1] = {id, -t}
  end
end
acct.avail = acct.avail - taken
local debt_added = 0
if policy == 'negative' then
  debt_added = want - taken
  acct.debt = acct.debt + debt_added
end
local unrecovered = want - taken - debt_added
redis.call('HSET', A, 'cb:' .. pid, fmt(target))
emit(TXID, 'revoke', -(taken + debt_added), alloc, {
  purchase = pid, target = target, unrecovered = unrecovered, desc = desc,
})
save_account()
return {TXID, taken, debt_added, unrecovered, balance()}
