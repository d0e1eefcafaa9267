-- close_hold.lua: settle a hold for the amount actually used, or release it.
--
-- KEYS: the common seven (see _lib.lua), then [8] the usage record of this call's transaction
--   (hash, kept for the retention: a settle that charged is refundable like a check's usage)
--   [9] events stream of the shard (low_balance / auto_topup events: a settle above the hold
--   draws more)
-- ARGV: the common five, then
--   [6] hold id   [7] mode: 'settle' or 'release'
--   [8] amount to charge (settle: 0 .. 2^53-1; release: ignored)
--   [9] description   [10] metadata (JSON object or '')
-- Settling charges `amount` from the held credits in the order they were drawn and
-- returns the rest to their buckets (credits of buckets that expired meanwhile are
-- forfeited); credits returned to a bucket of a refunded purchase whose clawback waits for
-- them are taken back (a 'revoke' transaction after this one, see "Clawbacks" in _lib.lua).
-- Settling above the hold (the cost was known only at the end) charges all of it and draws
-- the rest in burn order, into the overdraft as far as the account allows; the part neither
-- covers is not charged and is answered as `uncovered` (the caller may report it as usage,
-- which becomes debt). The draw is never refused: the work is done.
-- Idempotent by hold id: settling again for the same amount, or
-- releasing again, returns the first result; settling a released hold, or for
-- another amount, fails (HOLD_CLOSED / CONFLICT). Releasing a hold whose TTL
-- already released it returns that release; settling it fails (HOLD_EXPIRED).
-- Returns {'ok', transaction id, balance after, charged, replayed (0|1), forfeited, state,
--          uncovered}
--       | {'hold_expired', transaction id, balance after}

local hid = id_arg(ARGV[6], 'hold_id', 128)
local mode = ARGV[7]
if mode ~= 'settle' and mode ~= 'release' then fail('INVALID', 'mode must be settle or release') end
local amount = 0
if mode == 'settle' then amount = int_arg(ARGV[8], 'amount', 0, MAXINT) end
local desc = text_arg(ARGV[9], 'description', 2048)
local metadata = json_obj_arg(ARGV[10], 'metadata', 4096)

require_account()
local raw = redis.call('HGET', H, hid)
if not raw then fail('UNKNOWN_HOLD', 'hold ' .. hid .. ' does not exist') end
local rec = cjson.decode(raw)
local want = mode == 'settle' and 'settled' or 'released'
local function replay(r)
  return {'ok', r.close_tx, r.close_balance, r.charged, 1, r.forfeited, r.state, r.uncovered or 0}
end
if rec.state ~= 'active' then
  -- what the settle asked for: what it charged and what it could not cover
  local asked = (rec.charged or 0) + (rec.uncovered or 0)
  local same = rec.state == want and (mode == 'release' or asked == amount)
  if same or (mode == 'release' and rec.state == 'expired') then return replay(rec) end
  if rec.state == 'expired' then
    fail('HOLD_EXPIRED', 'hold ' .. hid .. ' expired and was released by transaction ' .. rec.close_tx)
  end
  if rec.state == want then
    fail('CONFLICT', 'hold ' .. hid .. ' was already settled for ' .. fmt(asked))
  end
  fail('HOLD_CLOSED', 'hold ' .. hid .. ' is already ' .. rec.state)
end

in_time()
expire_due()
rec = cjson.decode(redis.call('HGET', H, hid))
if rec.state ~= 'active' then
  -- its TTL passed and the expire_due above released it: the same answers as when the
  -- sweeper got there first
  save_account()
  if mode == 'release' then return replay(rec) end
  return {'hold_expired', rec.close_tx, rec.close_balance}
end
local before = balance()
local charged, short, xw, xn
rec, charged, short, xw, xn = settle_lib().close_hold(hid, rec, amount, want, TXID, desc, metadata)
if rec.charged > 0 then
  redis.call('HSET', KEYS[8], 'cost', fmt(rec.charged), 'alloc', jenc(charged), 'overdraft',
    fmt(short), 'refunded', '0')
  -- the charge counted against the limit in the hold's window: a refund gives it back there
  if rec.sw then redis.call('HSET', KEYS[8], 'sw', fmt(rec.sw)) end
  -- the extra of a settle above the hold, if it counted elsewhere: given back there first
  if xw then redis.call('HSET', KEYS[8], 'xw', fmt(xw), 'xn', fmt(xn)) end
  redis.call('PEXPIRE', KEYS[8], RETENTION)
end
low_balance_event(KEYS[9], before, TXID)
save_account()
return {'ok', TXID, rec.close_balance, rec.charged, 0, rec.forfeited, rec.state,
  rec.uncovered or 0}
