-- grant.lua: add a balance bucket (a purchase, promotion, manual grant...).
--
-- KEYS: the common seven (see _lib.lua).
-- ARGV: the common five, then
--   [6] grant id (= bucket id, unique per account; not allowance:*, the ids of plans'
--   allowances)   [7] credits (1 .. 2^53-1)
--   [8] expires_at (unix ms, '' = never)   [9] priority (int32, lower burns first)
--   [10] source (purchase, promo, manual, refund...)   [11] metadata (JSON object or '')
--   [12] description
-- Idempotent by grant id: the same id with the same parameters returns the original
-- result; with other parameters it fails with CONFLICT. Outstanding debt (overdraft)
-- is repaid from the new credits first.
-- Returns {'ok', transaction id, balance after, replayed (0|1)}
--       | {'overflow'} (the account would hold more than 2^53-1 credits; nothing granted).

local gid = id_arg(ARGV[6], 'grant_id', 128)
-- (allowance:<plan>:<period start> is a plan's allowance bucket: renewals issue it once and cut
-- it; a grant by that name would stand in for the allowance and be cut as one)
if string.sub(gid, 1, 10) == 'allowance:' then
  fail('INVALID', 'grant_id must not start with allowance: (the ids of plans\' allowances)')
end
local credits = int_arg(ARGV[7], 'credits', 1, MAXINT)
local expires = opt_int_arg(ARGV[8], 'expires_at', 1, MAX_TIME)
local priority = int_arg(ARGV[9], 'priority', -2147483648, 2147483647)
local source = id_arg(ARGV[10], 'source', 32)
local metadata = json_obj_arg(ARGV[11], 'metadata', 4096)
local desc = text_arg(ARGV[12], 'description', 2048)

require_account()
local fp = table.concat({ARGV[7], ARGV[8], ARGV[9], ARGV[10], ARGV[11]}, '|')
local existing = bucket_meta(gid)
if existing then
  if existing.fp ~= fp then
    fail('CONFLICT', 'grant_id ' .. gid .. ' was already used with different parameters')
  end
  return {'ok', existing.tx, existing.bal, 1}
end
if expires and expires <= NOW then fail('INVALID', 'expires_at must be in the future') end
in_time()

expire_due()
if acct.avail + acct.held + credits > MAXINT then
  save_if_touched()
  return {'overflow'}
end
local repaid = math.min(acct.debt, credits)
acct.debt = acct.debt - repaid
local rem = credits - repaid
local meta = add_bucket(gid, credits, rem, expires, priority, source, metadata, fp, TXID)
emit(TXID, source == 'purchase' and 'purchase' or 'grant', credits, {{gid, rem}}, {
  bucket = bucket_entry(gid, meta), repaid = repaid, desc = desc, meta = metadata,
})
meta.bal = balance()
redis.call('HSET', A, 'm:' .. gid, jenc(meta))
save_account()
return {'ok', TXID, balance(), 0}
