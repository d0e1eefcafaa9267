-- void.lua: undo a check whose caller never got its reply (sidecar/voids.py).
--
-- A caller that gives up on a deduct.lua call (its deadline passed, the connection was lost)
-- answers "unavailable" (503), but the call may have run and charged. It voids the attempt
-- afterwards by its token (deduct.lua ARGV[17]). The idempotency record lists the attempts
-- that took effect through it (at) and those voided (vd); once every listed attempt is voided,
-- no attempt can have delivered a 200, so the usage is refunded like a refund of all that is
-- left of it and the record deleted: a retry is then a new request. An attempt whose reply
-- arrived is never voided, so its charge stays.
--
-- Why a void cannot be overtaken by the attempt it voids: the caller sends it no earlier than
-- VOID_DELAY_MS (sidecar/voids.py) after it gave up on the attempt, and it gave up no earlier
-- than the attempt's deadline (ARGV[5]) plus the margin (SIDECAR_REDIS_DEADLINE_MARGIN_MS).
-- An attempt still queued in Redis (another connection's data not read yet, a paused server)
-- that runs after the void therefore sees Redis' TIME past its deadline and refuses (LATE,
-- nothing written; a replay with a token too), as long as Redis' clock is less than the margin
-- plus VOID_DELAY_MS behind the caller's. A void of an attempt that never ran (refused LATE,
-- or never reached Redis) finds its token unlisted and changes nothing, whenever it runs.
--
-- KEYS: the common seven (see _lib.lua), then
--   [8] the idempotency record   [9] the usage record of ARGV[8] (what the refund reads)
-- ARGV: the common five (ARGV[3]: the refund's transaction id, if one is made), then
--   [6] idempotency key   [7] attempt token   [8] the usage transaction id the caller read
--   from the record (a record made since, by another usage, is not voided here: 'changed')
--   [9] cost (credits)   [10] the request's digest (16 hex digits, as deduct.lua computes it
--   from the key id, route, description, metadata and request identity): the record must
--   have this cost and digest, or it is another request's and nothing is voided ('mismatch')
-- The refund: one 'refund' transaction of what is left of the usage (refund id
-- 'void.<token>', requested_amount '', field void = the token), which `rebuild` knows
-- not to restore the deleted record from. Idempotent: a token already voided, or a record
-- gone, changes nothing.
-- Returns {'voided', refund transaction id ('' when nothing was left to refund), balance,
--          refunded, forfeited}
--       | {'marked', attempts of the record still not voided}
--       | {'absent'} (no record: voided already, expired, or the check was never charged)
--       | {'changed'} | {'mismatch'} | {'untracked'} (a record without attempt tokens)
--       | {'not_run'} (the token is not among the record's attempts) | {'overflow'}

local key = id_arg(ARGV[6], 'idempotency_key', 128)
local token = token_arg(ARGV[7])
local src = id_arg(ARGV[8], 'transaction_id', 64)
local cost = int_arg(ARGV[9], 'cost', 1, MAXINT)
local fp = ARGV[10]
if type(fp) ~= 'string' or not string.match(fp, '^%x+$') or #fp ~= 16 then
  fail('INVALID', 'request digest must be 16 hex digits')
end

require_account()
local raw = redis.call('GET', KEYS[8])
if not raw then return {'absent'} end
local p = cjson.decode(raw)
if p.tx ~= src then return {'changed'} end
if p.cost ~= cost or (p.fp and p.fp ~= fp) then return {'mismatch'} end
if not p.at then return {'untracked'} end
if not has(p.at, token) then return {'not_run'} end
p.vd = p.vd or {}
local again = has(p.vd, token)
if not again then p.vd[#p.vd + 1] = token end
local open = #p.at - #p.vd
if open > 0 or p.ax then
  if not again then
    in_time()
    redis.call('SET', KEYS[8], jenc(p), 'KEEPTTL')
  end
  return {'marked', open}
end
local u = redis.call('HMGET', KEYS[9], 'cost', 'alloc', 'overdraft', 'refunded')
if not u[1] then return {'untracked'} end  -- (no usage record to refund from: keep the charge)
in_time()

expire_due()
local left = tonumber(u[1]) - tonumber(u[4])
local rid = 'void.' .. token
local bal, forfeited, txid = balance(), 0, ''  -- (after expire_due)
if left > 0 then
  bal, forfeited = refund_usage(KEYS[9], u, src, rid, '', left, 'void of ' .. key ..
    ': its caller lost the reply and answered unavailable', '', {void = token})
  if not bal then
    save_if_touched()
    return {'overflow'}
  end
  txid = TXID
end
redis.call('DEL', KEYS[8])
save_account()
return {'voided', txid, bal, left, forfeited}
