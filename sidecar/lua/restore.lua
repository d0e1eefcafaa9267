-- restore.lua: write an account's whole state, read from the SQL ledger (`credit-sidecar rebuild`).
--
-- KEYS: the common seven (see _lib.lua), then
--   [8] the account's API-key records (hash: key id -> JSON record, as apikey.lua keeps it)
--   [9 ..] one idempotency record per entry of state.idempotency (in order), then one usage
--   record per entry of state.usage (in order), then state.purge stale per-request records
--   to delete (replace mode). Every key must carry the account's {hash tag}.
-- ARGV: the common five (now: the rebuild's clock, from which the records' remaining TTLs
--   are computed; the transaction id is unused: nothing goes to the outbox), then
--   [6] the state: one JSON object (below)
--   [7] mode: 'create' (fail with EXISTS if the account exists), 'replace' (delete the
--   account's keys first, after the whole state has been validated; fail with AHEAD if
--   Redis' seq has moved past the document's: transactions were acknowledged after SQL was
--   read, and replacing would undo them and reuse their sequence numbers), or 'force'
--   (replace whatever Redis holds)
-- State (credits: integers within +-(2^53-1); times: unix ms; '?': may be absent or null):
--   created, clock, debt, seq, overdraft_limit, low_balance_threshold?, auto_topup_threshold?,
--   clawbacks? {purchase: the clawback's target (revoke.lua's cb:<purchase>), or
--     {target, state (cbs:<purchase>: {v, pol, b, tk, pd, debt, un}, see _lib.lua)}},
--   rate_limit? [requests, period_ms, burst], spend_limit? ('credits:unit:count', see
--   "Spending limits" in _lib.lua), spend_state? ('from:spent'), plan?, plan_anchor?,
--   plan_since?, plan_next? (its next renewal) or plan_last? (the start of the latest period its
--   stay on the plan issued; neither: due now; see "Plans" in _lib.lua), purge (how many
--   stale keys follow),
--   buckets [{id, credits, created, expires?, priority, source, metadata, fp, tx, bal,
--     remaining? (absent: expired), held, held_field (true: h:<id> exists, a hold drew on it)}],
--   holds [{id, amount, ttl, alloc [[bucket, n], ...], created, expires, state, tx, bal, sw?;
--     closed ones also charged, close_tx, close_balance, forfeited, closed (ms), uncovered?}],
--   keys [{id, record (JSON text stored as is, or an object stored as jenc writes it),
--     rate? ('' or 'n:ms:burst': the key is active; absent: revoked), limit? (its spending
--     limit 'credits:unit:count'), spend_state? ('window start:spent')}],
--   idempotency [{key, tx, cost, bal, at (the usage's time), fp? (its request digest, see
--     deduct.lua), window? (its replay window, ms; absent: the retention)}],
--   usage [{tx, cost, alloc [[bucket, -n], ...], overdraft, at, sw?, xw? and xn? (a settle
--     above its hold whose extra of xn counted in another count, from xw), kid? and kw? (the API
--     key whose limit it counted against, and that window's start), refunds [{id, arg, tx, bal,
--     refunded, forfeited}]}]
-- Derived here, as the other scripts keep them: avail (sum of remaining over live buckets)
-- and held (sum of held), each bucket's okey, the burn order, the deadlines (live expiring
-- buckets at their expiry, active holds at their TTL, closed holds at closed + retention)
-- and the account's due entry. Records expire at `at` + retention. Rate-limiter state (tat,
-- kt:, rt:) starts empty. Nothing is appended to the outbox: the state is already in SQL.
-- Returns {buckets, holds, API keys, idempotency records, usage records} written.

local MODE = ARGV[7]
if MODE ~= 'create' and MODE ~= 'replace' and MODE ~= 'force' then
  fail('INVALID', 'mode must be create, replace or force')
end
local ok, S = pcall(cjson.decode, ARGV[6] or '')
if not ok or type(S) ~= 'table' or string.sub(ARGV[6], 1, 1) ~= '{' then
  fail('INVALID', 'state must be a JSON object')
end

local function absent(v)
  return v == nil or v == cjson.null
end

local function int_v(v, name, lo, hi)
  if type(v) ~= 'number' or v ~= math.floor(v) or v < lo or v > hi then
    fail('INVALID', name .. ' must be an integer between ' .. fmt(lo) .. ' and ' .. fmt(hi))
  end
  return v
end

local function opt_int_v(v, name, lo, hi)
  if absent(v) then return nil end
  return int_v(v, name, lo, hi)
end

local function list_v(v, name)
  if absent(v) then return {} end
  if type(v) ~= 'table' or (next(v) ~= nil and v[1] == nil) then
    fail('INVALID', name .. ' must be a JSON array')
  end
  return v
end

local function obj_v(v, name)
  if type(v) ~= 'table' or v[1] ~= nil then fail('INVALID', name .. ' must be a JSON object') end
  return v
end

-- [[bucket, n], ...] (a list from list_v) with every n in [lo, hi]; returns the sum of the n.
local function parts_v(v, name, lo, hi, buckets)
  local sum = 0
  for _, p in ipairs(v) do
    if type(p) ~= 'table' or #p ~= 2 then fail('INVALID', name .. ' must be [[bucket, n], ...]') end
    id_arg(p[1], name .. ' bucket', 200)
    if not buckets[p[1]] then fail('INVALID', name .. ' names an unknown bucket ' .. p[1]) end
    sum = sum + int_v(p[2], name .. ' amount', lo, hi)
    if math.abs(sum) > MAXINT then fail('INVALID', name .. ' adds up to more than 2^53-1') end
  end
  return sum
end

-- Every key in the account's slot.
local tag = string.match(A, '{[^}]*}')
for i = 1, #KEYS do
  if not tag or string.match(KEYS[i], '{[^}]*}') ~= tag then
    fail('INVALID', 'key ' .. KEYS[i] .. ' is not in the slot of ' .. A)
  end
end

-- The account.
local created = int_v(S.created, 'created', 0, MAX_TIME)
local clock = int_v(S.clock, 'clock', created, MAX_TIME)
local debt = int_v(S.debt, 'debt', 0, MAXINT)
local seq = int_v(S.seq, 'seq', 0, MAXINT)
local ovl = int_v(S.overdraft_limit, 'overdraft_limit', 0, MAXINT)
local lbt = opt_int_v(S.low_balance_threshold, 'low_balance_threshold', -MAXINT, MAXINT)
local att = opt_int_v(S.auto_topup_threshold, 'auto_topup_threshold', -MAXINT, MAXINT)
local clawbacks = {}
if not absent(S.clawbacks) then
  if type(S.clawbacks) ~= 'table' then fail('INVALID', 'clawbacks must be a JSON object') end
  for p, c in pairs(S.clawbacks) do
    local name = 'clawback ' .. id_arg(p, 'clawback purchase', 255)
    if type(c) == 'number' then
      clawbacks[#clawbacks + 1] = {p, int_v(c, name .. ' credits', 0, MAXINT)}
    else
      obj_v(c, name)
      local t = int_v(c.target, name .. ' target', 0, MAXINT)
      local cs = obj_v(c.state, name .. ' state')
      int_v(cs.v, name .. ' version', 0, MAXINT)
      if cs.pol ~= 'unspent' and cs.pol ~= 'negative' then
        fail('INVALID', name .. ' policy must be unspent or negative')
      end
      local b, tk, pd = list_v(cs.b, name .. ' buckets'), list_v(cs.tk, name .. ' taken'),
        list_v(cs.pd, name .. ' pending')
      if #tk ~= #b or #pd ~= #b then
        fail('INVALID', name .. ' taken and pending must have one entry per bucket')
      end
      local sum = int_v(cs.debt, name .. ' debt', 0, MAXINT) + int_v(cs.un, name .. ' un', 0, MAXINT)
      for i = 1, #b do
        id_arg(b[i], name .. ' bucket', 200)
        sum = sum + int_v(tk[i], name .. ' taken', 0, MAXINT) + int_v(pd[i], name .. ' pending', 0, MAXINT)
      end
      if sum ~= t then fail('INVALID', name .. ' parts do not add up to its target') end
      cs.b, cs.tk, cs.pd = b, tk, pd
      clawbacks[#clawbacks + 1] = {p, t, cs}
    end
  end
end
local rl = nil
if not absent(S.rate_limit) then
  local r = list_v(S.rate_limit, 'rate_limit')
  rl = {int_v(r[1], 'rate_limit.requests', 1, 1000000000),
    int_v(r[2], 'rate_limit.period_ms', 1, 366 * 86400000),
    int_v(r[3], 'rate_limit.burst', 1, 1000000000)}
end
-- The plan (docs/plans.md): plan_last is the start of the latest period its current stay on
-- it issued (none: renewed at the next touch, which issues nothing already issued).
local pl, pan, psn, pn = nil, nil, nil, nil
if not absent(S.plan) then
  pl = id_arg(S.plan, 'plan', 64)
  pan = int_v(S.plan_anchor, 'plan_anchor', 0, MAX_TIME)
  psn = int_v(S.plan_since, 'plan_since', 0, MAX_TIME)
  local spec = plan_lib().spec(pl)
  if not spec then fail('INVALID', 'plan ' .. pl .. ' is not in Redis: restore the plans first') end
  pn = clock
  if not absent(S.plan_next) then
    pn = int_v(S.plan_next, 'plan_next', 0, MAXINT)
  elseif not absent(S.plan_last) then
    local _, stop = period_of(pan, spec.unit, spec.count, int_v(S.plan_last, 'plan_last', 0, MAX_TIME))
    pn = stop
  end
end
local sl, ss = nil, nil
if not absent(S.spend_limit) or pl then
  if not absent(S.spend_limit) then
    if type(S.spend_limit) ~= 'string' then fail('INVALID', 'spend_limit must be text') end
    sl = spend_spec_arg(S.spend_limit, 'spend_limit')
  end
  if not absent(S.spend_state) then
    ss = S.spend_state
    if type(ss) ~= 'string' or not string.match(ss, '^%d+:%d+$') then
      fail('INVALID', 'spend_state must be from:spent')
    end
  end
end
-- the start of a spending limit's window a hold or usage counted in (absent: none)
local function sw_v(v, name)
  if absent(v) then return nil end
  return int_v(v, name .. ' sw', 0, MAX_TIME)
end
local npurge = int_v(absent(S.purge) and 0 or S.purge, 'purge', 0, #KEYS)

-- Buckets.
local buckets, by_id = list_v(S.buckets, 'buckets'), {}
local avail, held = 0, 0
for _, b in ipairs(buckets) do
  obj_v(b, 'bucket')
  local id = id_arg(b.id, 'bucket id', 200)
  local name = 'bucket ' .. id
  if by_id[id] then fail('INVALID', name .. ' appears twice') end
  by_id[id] = b
  int_v(b.credits, name .. ' credits', 1, MAXINT)
  int_v(b.created, name .. ' created', 0, MAX_TIME)
  b.expires = opt_int_v(b.expires, name .. ' expires', 1, MAX_TIME)
  int_v(b.priority, name .. ' priority', -2147483648, 2147483647)
  id_arg(b.source, name .. ' source', 32)
  json_obj_arg(b.metadata, name .. ' metadata', 4096)
  text_arg(b.fp, name .. ' fp', 8192)
  id_arg(b.tx, name .. ' tx', 64)
  int_v(b.bal, name .. ' bal', -MAXINT, MAXINT)
  b.remaining = opt_int_v(b.remaining, name .. ' remaining', 0, MAXINT)
  int_v(b.held, name .. ' held', 0, MAXINT)
  if absent(b.held_field) then
    b.held_field = false
  elseif type(b.held_field) ~= 'boolean' then
    fail('INVALID', name .. ' held_field must be true or false')
  end
  avail = avail + (b.remaining or 0)
  held = held + b.held
  if avail + held > MAXINT then
    fail('INVALID', 'the account would hold more than 2^53-1 credits')
  end
  b.active_held = 0
end

-- Holds: what the active ones hold must be what their buckets hold.
local holds, hold_ids = list_v(S.holds, 'holds'), {}
local STATES = {active = true, settled = true, released = true, expired = true}
for _, h in ipairs(holds) do
  obj_v(h, 'hold')
  local id = id_arg(h.id, 'hold id', 128)
  local name = 'hold ' .. id
  if hold_ids[id] then fail('INVALID', name .. ' appears twice') end
  hold_ids[id] = true
  int_v(h.amount, name .. ' amount', 1, MAXINT)
  int_v(h.ttl, name .. ' ttl', 1, 366 * 86400000)
  int_v(h.created, name .. ' created', 0, MAX_TIME)
  if int_v(h.expires, name .. ' expires', 1, MAX_TIME) ~= h.created + h.ttl then
    fail('INVALID', name .. ' expires must be created + ttl')
  end
  if type(h.state) ~= 'string' or not STATES[h.state] then
    fail('INVALID', name .. ' state must be active, settled, released or expired')
  end
  id_arg(h.tx, name .. ' tx', 64)
  int_v(h.bal, name .. ' bal', -MAXINT, MAXINT)
  h.sw = sw_v(h.sw, name)
  h.alloc = list_v(h.alloc, name .. ' alloc')
  if parts_v(h.alloc, name .. ' alloc', 1, MAXINT, by_id) ~= h.amount then
    fail('INVALID', name .. ' alloc does not add up to its amount')
  end
  if h.state == 'active' then
    for _, p in ipairs(h.alloc) do
      by_id[p[1]].active_held = by_id[p[1]].active_held + p[2]
    end
  else
    -- (a settle above the hold charged more than it held)
    int_v(h.charged, name .. ' charged', 0, MAXINT)
    id_arg(h.close_tx, name .. ' close_tx', 64)
    int_v(h.close_balance, name .. ' close_balance', -MAXINT, MAXINT)
    int_v(h.forfeited, name .. ' forfeited', 0, math.max(0, h.amount - h.charged))
    if absent(h.uncovered) then h.uncovered = nil
    else int_v(h.uncovered, name .. ' uncovered', 1, MAXINT) end
    int_v(h.closed, name .. ' closed', h.created, MAX_TIME)
  end
end
for _, b in ipairs(buckets) do
  if b.active_held ~= b.held then
    fail('INVALID', 'bucket ' .. b.id .. ' holds ' .. fmt(b.held) .. ' but its active holds ' ..
      fmt(b.active_held))
  end
end

-- API keys.
local keys, key_ids = list_v(S.keys, 'keys'), {}
for _, k in ipairs(keys) do
  obj_v(k, 'key')
  local id = id_arg(k.id, 'key id', 64)
  if key_ids[id] then fail('INVALID', 'key ' .. id .. ' appears twice') end
  key_ids[id] = true
  if type(k.record) == 'table' and next(k.record) ~= nil then
    k.record = jenc(obj_v(k.record, 'key ' .. id .. ' record'))
  elseif json_obj_arg(k.record, 'key ' .. id .. ' record', 4096) == '' then
    fail('INVALID', 'key ' .. id .. ' record must be a JSON object')
  end
  if absent(k.rate) then
    k.rate = nil
  elseif type(k.rate) ~= 'string'
      or (k.rate ~= '' and not string.match(k.rate, '^%d+:%d+:%d+$')) then
    fail('INVALID', 'key ' .. id .. ' rate must be requests:period_ms:burst or empty')
  end
  if absent(k.limit) then
    k.limit = nil
  elseif type(k.limit) ~= 'string' then
    fail('INVALID', 'key ' .. id .. ' limit must be text')
  else
    k.limit = spend_spec_arg(k.limit, 'key ' .. id .. ' limit')
  end
  if absent(k.spend_state) then
    k.spend_state = nil
  elseif type(k.spend_state) ~= 'string' or not string.match(k.spend_state, '^%d+:%d+$') then
    fail('INVALID', 'key ' .. id .. ' spend_state must be window start:spent')
  end
end

-- Per-request records, and the keys they go to.
local function ttl_of(at, name, window)
  local px = int_v(at, name .. ' at', 0, MAX_TIME) + (window or RETENTION) - NOW
  if px < 1 then fail('INVALID', name .. ' is past its retention') end
  return px
end

local idem, idem_keys = list_v(S.idempotency, 'idempotency'), {}
for _, r in ipairs(idem) do
  obj_v(r, 'idempotency record')
  local name = 'idempotency record ' .. id_arg(r.key, 'idempotency key', 128)
  if idem_keys[r.key] then fail('INVALID', name .. ' appears twice') end
  idem_keys[r.key] = true
  id_arg(r.tx, name .. ' tx', 64)
  int_v(r.cost, name .. ' cost', 1, MAXINT)
  int_v(r.bal, name .. ' bal', -MAXINT, MAXINT)
  if r.fp ~= nil and (type(r.fp) ~= 'string' or not string.match(r.fp, '^%x+$') or #r.fp ~= 16) then
    fail('INVALID', name .. ' fp must be 16 hex digits')
  end
  if r.window ~= nil then int_v(r.window, name .. ' window', 1, RETENTION) end
  r.px = ttl_of(r.at, name, r.window)
end

local usage, usage_ids = list_v(S.usage, 'usage'), {}
for _, u in ipairs(usage) do
  obj_v(u, 'usage record')
  local name = 'usage ' .. id_arg(u.tx, 'usage tx', 64)
  if usage_ids[u.tx] then fail('INVALID', name .. ' appears twice') end
  usage_ids[u.tx] = true
  int_v(u.cost, name .. ' cost', 1, MAXINT)
  u.alloc = list_v(u.alloc, name .. ' alloc')
  local taken = -parts_v(u.alloc, name .. ' alloc', -MAXINT, -1, by_id)
  int_v(u.overdraft, name .. ' overdraft', 0, u.cost)
  if taken + u.overdraft ~= u.cost then
    fail('INVALID', name .. ' alloc and overdraft do not add up to its cost')
  end
  u.px = ttl_of(u.at, name)
  u.sw = sw_v(u.sw, name)
  u.xw = sw_v(u.xw, name)
  if u.xw then u.xn = int_v(u.xn, name .. ' xn', 1, u.cost) else u.xn = nil end
  if not absent(u.kid) then
    id_arg(u.kid, name .. ' kid', 64)
    u.kw = int_v(u.kw, name .. ' kw', 0, MAX_TIME)
  else
    u.kid = nil
  end
  u.refunded = 0
  local seen = {}
  u.refunds = list_v(u.refunds, name .. ' refunds')
  for _, rf in ipairs(u.refunds) do
    obj_v(rf, name .. ' refund')
    local rname = name .. ' refund ' .. id_arg(rf.id, 'refund id', 128)
    if seen[rf.id] then fail('INVALID', rname .. ' appears twice') end
    seen[rf.id] = true
    if type(rf.arg) ~= 'string' or (rf.arg ~= '' and not string.match(rf.arg, '^%d+$')) then
      fail('INVALID', rname .. ' arg must be digits or empty')
    end
    id_arg(rf.tx, rname .. ' tx', 64)
    int_v(rf.bal, rname .. ' bal', -MAXINT, MAXINT)
    int_v(rf.refunded, rname .. ' refunded', 1, u.cost - u.refunded)
    int_v(rf.forfeited, rname .. ' forfeited', 0, rf.refunded)
    u.refunded = u.refunded + rf.refunded
  end
end

if #KEYS ~= 8 + #idem + #usage + npurge then
  fail('INVALID', 'expected ' .. fmt(8 + #idem + #usage + npurge) .. ' keys, got ' .. fmt(#KEYS))
end
if redis.call('EXISTS', A) == 1 and MODE == 'create' then
  fail('EXISTS', 'account ' .. ACCOUNT .. ' already exists in Redis (replace overwrites it)')
end
-- The compare-and-set: the check and the writes below are one atomic script.
local current = tonumber(redis.call('HGET', A, 'seq'))
if MODE == 'replace' and current and current > seq then
  fail('AHEAD', 'account ' .. ACCOUNT .. ' has transactions up to seq ' .. fmt(current) ..
    ' in Redis, SQL only up to ' .. fmt(seq))
end

-- Everything is valid: write. Old keys go first (without an account they are orphans); the
-- shard's count of accounts on each plan follows the account from its old plan to this one.
local old_pl = redis.call('HGET', A, 'pl')
if old_pl ~= (pl or false) then
  if old_pl then redis.call('HINCRBY', P, 'n:' .. old_pl, -1) end
  if pl then redis.call('HINCRBY', P, 'n:' .. pl, 1) end
end
redis.call('DEL', A, O, D, H, KEYS[8])
for i = 9, #KEYS do redis.call('DEL', KEYS[i]) end
redis.call('ZREM', DUE, ACCOUNT)

local f = {'created', fmt(created), 'clock', fmt(clock), 'avail', fmt(avail), 'held', fmt(held),
  'debt', fmt(debt), 'seq', fmt(seq), 'ovl', fmt(ovl)}
if lbt then f[#f + 1] = 'lbt'; f[#f + 1] = fmt(lbt) end
if sl then f[#f + 1] = 'sl'; f[#f + 1] = sl end
if ss then f[#f + 1] = 'ss'; f[#f + 1] = ss end
if att then f[#f + 1] = 'att'; f[#f + 1] = fmt(att) end
if pl then
  for _, v in ipairs({'pl', pl, 'pan', fmt(pan), 'psn', fmt(psn), 'pn', fmt(pn)}) do
    f[#f + 1] = v
  end
  redis.call('ZADD', D, fmt(pn), 'p:')
end
for _, c in ipairs(clawbacks) do
  f[#f + 1] = 'cb:' .. c[1]
  f[#f + 1] = fmt(c[2])
  if c[3] then
    f[#f + 1] = 'cbs:' .. c[1]
    f[#f + 1] = jenc(c[3])
    for _, id in ipairs(c[3].b) do
      f[#f + 1] = 'pc:' .. id
      f[#f + 1] = c[1]
    end
  end
end
if rl then
  for i, name in ipairs({'rl_n', 'rl_ms', 'rl_burst'}) do
    f[#f + 1] = name
    f[#f + 1] = fmt(rl[i])
  end
end
redis.call('HSET', A, unpack(f))

for _, b in ipairs(buckets) do
  local meta = {credits = b.credits, created = b.created, expires = b.expires,
    priority = b.priority, source = b.source, metadata = b.metadata, fp = b.fp, tx = b.tx,
    okey = okey(b.priority, b.expires, b.created, b.id), bal = b.bal}
  local bf = {'m:' .. b.id, jenc(meta)}
  if b.remaining then bf[#bf + 1] = 'r:' .. b.id; bf[#bf + 1] = fmt(b.remaining) end
  if b.held_field or b.held > 0 then bf[#bf + 1] = 'h:' .. b.id; bf[#bf + 1] = fmt(b.held) end
  redis.call('HSET', A, unpack(bf))
  if b.remaining and (b.remaining > 0 or b.held > 0) then redis.call('ZADD', O, 0, meta.okey) end
  if b.remaining and b.expires then redis.call('ZADD', D, fmt(b.expires), 'b:' .. b.id) end
end

for _, h in ipairs(holds) do
  local rec = {amount = h.amount, ttl = h.ttl, alloc = h.alloc, created = h.created,
    expires = h.expires, state = h.state, tx = h.tx, bal = h.bal, sw = h.sw}
  local at = h.expires
  if h.state ~= 'active' then
    rec.charged = h.charged
    rec.close_tx = h.close_tx
    rec.close_balance = h.close_balance
    rec.forfeited = h.forfeited
    rec.uncovered = h.uncovered
    at = h.closed + RETENTION
  end
  redis.call('HSET', H, h.id, jenc(rec))
  redis.call('ZADD', D, fmt(at), 'h:' .. h.id)
end

for _, k in ipairs(keys) do
  redis.call('HSET', KEYS[8], k.id, k.record)
  if k.rate then redis.call('HSET', A, 'k:' .. k.id, k.rate) end
  if k.rate and k.limit then redis.call('HSET', A, 'kl:' .. k.id, k.limit) end
  if k.rate and k.limit and k.spend_state then redis.call('HSET', A, 'ks:' .. k.id, k.spend_state) end
end

for i, r in ipairs(idem) do
  redis.call('SET', KEYS[8 + i], jenc({tx = r.tx, cost = r.cost, bal = r.bal, fp = r.fp}), 'PX',
    fmt(r.px))
end
for i, u in ipairs(usage) do
  local key = KEYS[8 + #idem + i]
  local uf = {'cost', fmt(u.cost), 'alloc', jenc(u.alloc), 'overdraft', fmt(u.overdraft),
    'refunded', fmt(u.refunded)}
  if u.sw then uf[#uf + 1] = 'sw'; uf[#uf + 1] = fmt(u.sw) end
  if u.xw then
    uf[#uf + 1] = 'xw'; uf[#uf + 1] = fmt(u.xw)
    uf[#uf + 1] = 'xn'; uf[#uf + 1] = fmt(u.xn)
  end
  if u.kid then
    uf[#uf + 1] = 'kid'; uf[#uf + 1] = u.kid
    uf[#uf + 1] = 'kw'; uf[#uf + 1] = fmt(u.kw)
  end
  for _, rf in ipairs(u.refunds) do
    uf[#uf + 1] = 'rf:' .. rf.id
    uf[#uf + 1] = jenc({arg = rf.arg, tx = rf.tx, bal = rf.bal, refunded = rf.refunded,
      forfeited = rf.forfeited})
  end
  redis.call('HSET', key, unpack(uf))
  redis.call('PEXPIRE', key, fmt(u.px))
end

local first = redis.call('ZRANGE', D, 0, 0, 'WITHSCORES')
if first[1] then redis.call('ZADD', DUE, first[2], ACCOUNT) end
return {#buckets, #holds, #keys, #idem, #usage}
