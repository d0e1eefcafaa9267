-- revoke.lua: set how many credits of a refunded or disputed purchase are taken back.
--
-- KEYS: the common seven (see _lib.lua).
-- ARGV: the common five, then
--   [6] purchase id (the Checkout Session or PaymentIntent id)
--   [7] target: credits of this purchase to have taken back in total (>= 0); below the
--       current target gives credits back (a refund failed, a dispute was won)
--   [8] policy: 'unspent' (only what is left in the purchase's buckets) or 'negative' (the
--       rest is added to the account's debt: the balance goes below zero)
--   [9] the purchase's bucket ids, a JSON array (they are drawn from in this order)
--   [10] description
--   [11] version: of the caller's view of the purchase's refunds and disputes (an integer
--       >= 0 that grows with every change of that view): a call with a version below the
--       stored one changes nothing (an older view arriving late)
-- State: cb:<purchase>, cbs:<purchase>, pc:<bucket> (see "Clawbacks" in _lib.lua).
-- Raising the target takes, in this order: what the purchase's buckets hold; credits of them
-- that a hold has (pending: taken when the hold releases them, or, charged by it, settled
-- by the policy); then by the policy, debt or unrecovered (spent). Lowering it undoes, in
-- this order: unrecovered, debt (what a later grant already repaid comes back as a new
-- non-expiring bucket, clawback:<transaction id>), pending, taken (back to its bucket; an
-- expired bucket's credits are forfeited). The same target and version again change
-- nothing, so duplicated or reordered calls leave the state of the newest view.
-- One 'revoke' transaction (amount: the balance's change; details: the state after it)
-- goes to the outbox whenever the target changes (a newer version with the same target is
-- only recorded in cbs:<purchase>).
-- Returns {transaction id ('' when nothing changed), taken from the buckets, added to debt,
--          unrecovered, balance after, pending (held credits to take when their hold
--          closes), given back (credits returned plus debt cancelled), target now, version now}.

local pid = id_arg(ARGV[6], 'purchase', 255)
local target = int_arg(ARGV[7], 'target', 0, MAXINT)
local policy = ARGV[8]
if policy ~= 'unspent' and policy ~= 'negative' then
  fail('INVALID', 'policy must be unspent or negative')
end
local ok, ids = pcall(cjson.decode, ARGV[9] or '')
if not ok or type(ids) ~= 'table' or string.sub(ARGV[9], 1, 1) ~= '[' then
  fail('INVALID', 'buckets must be a JSON array of bucket ids')
end
for _, id in ipairs(ids) do id_arg(id, 'bucket', 200) end
local desc = text_arg(ARGV[10], 'description', 2048)
local version = int_arg(ARGV[11], 'version', 0, MAXINT)

require_account()
local st = settle_lib().claw_load(pid, ids)
if #st.b ~= #ids then fail('INVALID', 'buckets differ from those of the purchase\'s clawback') end
for i, id in ipairs(ids) do
  if st.b[i] ~= id then fail('INVALID', 'buckets differ from those of the purchase\'s clawback') end
end
local function summary(txid, taken, debt_added, unrec, pend, given)
  return {txid, taken, debt_added, unrec, balance(), pend, given, st.t, st.v}
end
if version < st.v or (version == st.v and target == st.t) then
  return summary('', 0, 0, 0, 0, 0)
end
local want = target - st.t
if want > 0 and policy == 'negative' and acct.debt + want > MAXINT then
  fail('INVALID', 'taking back ' .. fmt(want) .. ' credits would overflow the debt')
end
if want < 0 and acct.avail + acct.held - want > MAXINT then
  fail('INVALID', 'giving back ' .. fmt(-want) .. ' credits would overflow the balance')
end
in_time()
-- Everything is valid: from here on, only writes.
expire_due()
st = settle_lib().claw_load(pid, ids)  -- a hold closed by expire_due may have moved it
want = target - st.t
if want == 0 then
  -- a newer view with the same target: only its version is kept (no transaction)
  st.v = version
  st.t = nil
  redis.call('HSET', A, 'cbs:' .. pid, jenc(st))
  st.t = target
  save_if_touched()
  return summary('', 0, 0, 0, 0, 0)
end

local alloc, taken, debt_added, unrec, pend, given = {}, 0, 0, 0, 0, 0
local extra = {}
if want > 0 then
  for i, id in ipairs(ids) do
    if want == 0 then break end
    local r = tonumber(redis.call('HGET', A, 'r:' .. id))
    if r and r > 0 then
      local t = math.min(r, want)
      redis.call('HSET', A, 'r:' .. id, fmt(r - t))
      sync_order(id, bucket_meta(id))
      st.tk[i] = st.tk[i] + t
      taken = taken + t
      want = want - t
      alloc[#alloc + 1] = {id, -t}
    end
  end
  for i, id in ipairs(ids) do
    if want == 0 then break end
    local v = redis.call('HMGET', A, 'r:' .. id, 'h:' .. id)
    local free = (tonumber(v[2]) or 0) - st.pd[i]
    if v[1] and free > 0 then  -- a live bucket: its held credits may come back
      local p = math.min(free, want)
      st.pd[i] = st.pd[i] + p
      pend = pend + p
      want = want - p
    end
  end
  if policy == 'negative' then
    debt_added = want
    st.debt = st.debt + want
    acct.debt = acct.debt + want
  else
    unrec = want
    st.un = st.un + want
  end
  acct.avail = acct.avail - taken
elseif want < 0 then
  local give = -want
  local u = math.min(st.un, give)
  st.un = st.un - u
  give = give - u
  local d = math.min(st.debt, give)
  st.debt = st.debt - d
  give = give - d
  local cancelled = math.min(d, acct.debt)
  acct.debt = acct.debt - cancelled
  given = given + cancelled
  if d > cancelled then
    -- a later grant repaid that debt: its credits come back
    local bid = 'clawback:' .. TXID
    local meta = add_bucket(bid, d - cancelled, d - cancelled, nil, 0, 'refund', '', '', TXID)
    alloc[#alloc + 1] = {bid, d - cancelled}
    given = given + d - cancelled
    meta.bal = acct.avail - acct.debt
    redis.call('HSET', A, 'm:' .. bid, jenc(meta))
    extra.bucket = bucket_entry(bid, meta)
  end
  for i = #ids, 1, -1 do
    local p = math.min(st.pd[i], give)
    st.pd[i] = st.pd[i] - p
    give = give - p
  end
  local forfeited = 0
  for i = #ids, 1, -1 do
    local t = math.min(st.tk[i], give)
    if t > 0 then
      st.tk[i] = st.tk[i] - t
      give = give - t
      local back = credit_bucket(ids[i], t, true)
      if back > 0 then alloc[#alloc + 1] = {ids[i], back} end
      given = given + back
      forfeited = forfeited + t - back
    end
  end
  extra.forfeited = forfeited
end
st.t = target
st.v = version
st.pol = policy
extra.unrecovered = unrec
extra.debt_added = debt_added
extra.pending = pend
extra.desc = desc
settle_lib().claw_save(pid, st, TXID, given - taken - debt_added, alloc, extra)
save_account()
return summary(TXID, taken, debt_added, unrec, pend, given)
