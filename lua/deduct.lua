-- deduct.lua: the check. Rate limit, then take `cost` credits in burn order.
--
-- KEYS: the common six (see _lib.lua), then
--   [7] idempotency record (string, expires after the retention)
--   [8] usage record of this transaction (hash, same retention; what refunds read)
--   [9] events stream of the shard (low_balance events)
-- ARGV: the common four, then
--   [5] cost (credits, 1 .. 2^53-1)   [6] idempotency key   [7] description
--   [8] metadata (JSON object or '')
-- Order: validate; replay a known idempotency key (another cost: CONFLICT); rate
-- limit (GCRA over the account's rate, nothing written when limited); expire what is
-- due; then deduct, or change nothing when balance - cost would go below -overdraft.
-- Returns {'ok', transaction id, balance after, cost, replayed (0|1), low_balance (0|1)}
--       | {'insufficient', balance, cost} | {'rate_limited', retry after (ms)}

local cost = int_arg(ARGV[5], 'cost', 1, MAXINT)
local key = id_arg(ARGV[6], 'idempotency_key', 128)
local desc = text_arg(ARGV[7], 'description', 512)
local metadata = json_obj_arg(ARGV[8], 'metadata', 4096)

local prior = redis.call('GET', KEYS[7])
if prior then
  local p = cjson.decode(prior)
  if p.cost ~= cost then
    fail('CONFLICT', 'idempotency_key ' .. key .. ' was already used with cost ' .. fmt(p.cost))
  end
  return {'ok', p.tx, p.bal, cost, 1, 0}
end
require_account()

local wait, new_tat = rate_check()
if wait > 0 then return {'rate_limited', wait} end

expire_due()
local before = balance()
if before - cost < -acct.ovl then
  if extra_txns > 0 or deadlines_changed then save_account() end
  return {'insufficient', before, cost}
end

local alloc, short = draw(cost, false)
acct.debt = acct.debt + short
acct.tat = new_tat or acct.tat
local after = balance()
emit(TXID, 'usage', -cost, alloc, {idempotency_key = key, overdraft = short, desc = desc,
  meta = metadata})
redis.call('SET', KEYS[7], jenc({tx = TXID, cost = cost, bal = after}), 'PX', RETENTION)
redis.call('HSET', KEYS[8], 'cost', fmt(cost), 'alloc', jenc(alloc), 'overdraft', fmt(short),
  'refunded', '0')
redis.call('PEXPIRE', KEYS[8], RETENTION)
local low = 0
if acct.lbt and before >= acct.lbt and after < acct.lbt then
  low = 1
  redis.call('XADD', KEYS[9], 'MAXLEN', '~', 100000, '*', 'type', 'low_balance',
    'account', ACCOUNT, 'balance', fmt(after), 'threshold', fmt(acct.lbt), 'transaction_id', TXID,
    'ts', fmt(NOW))
end
save_account()
return {'ok', TXID, after, cost, 0, low}
