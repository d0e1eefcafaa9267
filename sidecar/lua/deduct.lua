-- deduct.lua: the check. Verify the API key, rate limit, then take `cost` credits in burn order.
--
-- KEYS: the common seven (see _lib.lua), then
--   [8] idempotency record (string, expires after the retention)
--   [9] usage record of this transaction (hash, same retention; what refunds read)
--   [10] events stream of the shard (low_balance events)
-- ARGV: the common five, then
--   [6] cost (credits, 0 .. 2^53-1; 0 = a free route: authenticate and rate limit only)
--   [7] idempotency key   [8] description   [9] metadata (JSON object or '')
--   [10] API key id ('' = none; else it must still be active on the account)
--   [11] route name ('' = none)   [12] [13] [14] the route's rate limit: requests, period
--   (ms), burst ('' = none)
--   [15] replay window (ms, 1 .. retention; '' = the retention): how long the idempotency
--   record answers a replay (the proxy modes keep it short); the usage record, which
--   refunds read, is kept for the retention whatever this says
--   [16] more of what identifies the request, folded into its digest only ('' = nothing;
--   at most 256 bytes: the proxy modes pass a digest of the query string)
--   [17] attempt token ('' = none): a random id of this call attempt (1-32 of [A-Za-z0-9]).
--   An attempt that takes effect (charges, or is answered as a replay) adds it to the
--   idempotency record's executed attempts (field at, at most MAX_ATTEMPTS; more set ax):
--   the caller that loses the reply voids the attempt by it (void.lua). A replay with a token
--   is refused past its deadline (LATE) like a new request: its caller, which may void it,
--   must never get a 200 it does not know of. A token the record already lists (and has not
--   voided) is the same attempt sent again: answered as a replay whatever the time. Without a token a replay is answered whenever it
--   runs and sets ax (an unlisted attempt: void.lua never refunds the record); records written
--   before the token existed (no at) are answered so and left as they are: never refunded.
-- Order: validate; a revoked key is refused; replay a known idempotency key: only the same
-- request is a replay (same cost, and the same key id, route, description, metadata and
-- ARGV[16], by their digest), anything else is a CONFLICT; refuse a call past its deadline (LATE); rate
-- limit with the account's, the key's and the route's GCRA (nothing written when limited);
-- expire what is due; refuse a cost over the key's spending limit, then the account's
-- (see "Spending limits" in _lib.lua); then deduct, or change nothing when balance - cost
-- would go below -overdraft. The usage record keeps the limits' windows, which refunds read.
-- Returns {'ok', transaction id ('' for cost 0), balance after, cost, replayed (0|1),
--          low_balance (0|1), debt added (0 but for a report), and, when a rate limit applies
--          to a call that is not a replay, the tightest limiter's state after it: which
--          ('account', 'key', 'route'), requests, period (ms), requests left, ms until whole}
--       | {'insufficient', balance, cost}
--       | {'rate_limited', retry after (ms)} | {'revoked'}
--       | {'spend_limited', scope, credits, interval, count, spent, window end} (_lib.lua)
-- ARGV[18] '1': a dry run. The same answer as the call would get (as if due deadlines had
-- been processed: preview_due in _lib.lua), with '' for the transaction id, and nothing
-- written: no transaction, rate-limit state, idempotency record, expiry or event.
-- ARGV[18] 'report': usage reported after the work was done (POST /v1/usage). Never refused
-- for the balance, the spending limits (it still counts against them) or the rate limits (it
-- neither waits for nor uses them): what the buckets cannot cover becomes debt, even beyond
-- the overdraft, and the account's checks are refused until it is covered. The caller
-- passes a request identity (ARGV[16]) of its own, so a check and a report never replay
-- each other. Returns the 'ok' reply with one more element: the credits that became debt,
-- or {'overflow'} (nothing charged) when the debt would pass 2^53-1.

local cost = int_arg(ARGV[6], 'cost', 0, MAXINT)
local key = id_arg(ARGV[7], 'idempotency_key', 128)
local desc = text_arg(ARGV[8], 'description', 2048)
local metadata = json_obj_arg(ARGV[9], 'metadata', 4096)
local key_id = ARGV[10] or ''
if key_id ~= '' then id_arg(key_id, 'key_id', 64) end
local route = ARGV[11] or ''
local route_limit = nil
if route ~= '' then
  id_arg(route, 'route', 64)
  if (ARGV[12] or '') ~= '' then
    route_limit = {'rt:' .. route, int_arg(ARGV[12], 'route.requests', 1, 1000000000),
      int_arg(ARGV[13], 'route.period_ms', 1, 366 * 86400000),
      int_arg(ARGV[14], 'route.burst', 1, 1000000000)}
  end
end
local window = opt_int_arg(ARGV[15], 'replay_window_ms', 1, RETENTION) or RETENTION
local identity = text_arg(ARGV[16] or '', 'request', 256)
local token = ARGV[17] or ''
if token ~= '' then token_arg(token) end
local mode = ARGV[18] or ''
if mode ~= '' and mode ~= '1' and mode ~= 'report' then fail('INVALID', 'mode must be 1 or report') end
local dry, report = mode == '1', mode == 'report'
if report and cost == 0 then fail('INVALID', 'cost must be between 1 and ' .. fmt(MAXINT)) end

require_account()
local limits = account_limits()
local key_spend = nil
if key_id ~= '' then
  local kv = redis.call('HMGET', A, 'k:' .. key_id, 'kl:' .. key_id, 'ks:' .. key_id)
  local spec = kv[1]
  if not spec then return {'revoked'} end
  if kv[2] then key_spend = {kv[2], kv[3]} end
  if spec ~= '' then
    local n, ms, b = string.match(spec, '^(%d+):(%d+):(%d+)$')
    limits[#limits + 1] = {'kt:' .. key_id, tonumber(n), tonumber(ms), tonumber(b)}
  end
end
if route_limit then limits[#limits + 1] = route_limit end

-- An 'ok' reply with the state of the tightest rate limiter (rate_check's third value) after
-- it: {..., which ('account', 'key' or 'route'), requests, period ms, requests left, ms until
-- whole}; unchanged without one (no limiter: nothing to say, nothing paid).
local function with_rate(reply, tight)
  if tight then
    local f = tight[1]
    local which = f == 'tat' and 'account' or string.sub(f, 1, 3) == 'kt:' and 'key' or 'route'
    reply[8], reply[9], reply[10], reply[11], reply[12] =
      which, tight[2], tight[3], tight[4], tight[5]
  end
  return reply
end

local fp = cost > 0 and request_fp({key_id, route, desc, metadata, identity})
local prior = cost > 0 and redis.call('GET', KEYS[8])
if prior then
  local p = cjson.decode(prior)
  if p.cost ~= cost then
    fail('CONFLICT', 'idempotency_key ' .. key .. ' was already used with cost ' .. fmt(p.cost))
  end
  -- (records written before the digest existed carry none: the cost is all they bind)
  if p.fp and p.fp ~= fp then
    fail('CONFLICT', 'idempotency_key ' .. key .. ' was already used for another request')
  end
  if dry then return {'ok', '', p.bal, cost, 1, 0} end
  if token ~= '' and p.at then
    -- The same attempt sent again (the transport resends a call whose connection was lost
    -- after its first send ran) took effect already: answered as then, whatever the time,
    -- or a resend past the deadline would answer LATE (503, no void) for a charge that stays.
    if not has(p.at, token) or has(p.vd, token) then
      in_time()
      if add_attempt(p, token) then redis.call('SET', KEYS[8], jenc(p), 'KEEPTTL') end
    end
  elseif p.at and not p.ax then
    -- a replay without a token took effect unlisted: the record can no longer be voided
    p.ax = 1
    redis.call('SET', KEYS[8], jenc(p), 'KEEPTTL')
  end
  return {'ok', p.tx, p.bal, cost, 1, 0, 0}
end
if dry then
  local wait, _, tight = rate_check(limits)
  if wait > 0 then return {'rate_limited', wait} end
  local avail, alim = preview_due()
  local before = avail - acct.debt
  if cost > 0 then
    local klim = key_spend and spend_load(key_spend[1], key_spend[2]) or nil
    if spend_over(klim, cost) then return spend_refusal('key', klim) end
    if spend_over(alim, cost) then return spend_refusal('account', alim) end
    if before - cost < -acct.ovl then return {'insufficient', before, cost} end
  end
  local low = cost > 0 and acct.lbt and before >= acct.lbt and before - cost < acct.lbt
  return with_rate({'ok', '', before - cost, cost, 0, low and 1 or 0, 0}, tight)
end
in_time()

local wait, tats, tight = 0, {}, nil
if not report then wait, tats, tight = rate_check(limits) end
if wait > 0 then return {'rate_limited', wait} end

expire_due()
if cost == 0 then
  for i = 1, #tats, 2 do stage(tats[i], tats[i + 1]) end
  save_account()
  return with_rate({'ok', '', balance(), 0, 0, 0, 0}, tight)
end
local klim = key_spend and spend_load(key_spend[1], key_spend[2]) or nil
if not report and spend_over(klim, cost) then
  save_if_touched()
  return spend_refusal('key', klim)
end
local alim = spend_load(acct.sl, acct.ss)
if not report and spend_over(alim, cost) then
  save_if_touched()
  return spend_refusal('account', alim)
end
local before = balance()
-- a report is never refused for the balance, but debt is counted exactly only up to 2^53-1:
-- past that it is refused (nothing charged), as a grant or refund past that range is
if report and acct.debt + math.max(0, cost - acct.avail) > MAXINT then
  save_if_touched()
  return {'overflow'}
end
if not report and before - cost < -acct.ovl then
  save_if_touched()
  return {'insufficient', before, cost}
end

local alloc, short = draw(cost, false, true)
acct.debt = acct.debt + short
for i = 1, #tats, 2 do stage(tats[i], tats[i + 1]) end
local after = balance()
local usage = {idempotency_key = key, overdraft = short, desc = desc, meta = metadata,
  key_id = key_id, route = route, fp = fp}
if window ~= RETENTION then usage.replay_ms = window end
if klim then
  klim.spent = klim.spent + cost
  stage('ks:' .. key_id, spend_state(klim))
  usage.kw = klim.from
  usage.key_spend = {key_id, spend_state(klim)}
end
if alim then
  alim.spent = alim.spent + cost
  acct.ss = spend_state(alim)
  stage('ss', acct.ss)
  usage.sw = alim.from
end
local alloc_json = jenc(alloc)
emit(TXID, 'usage', -cost, alloc, usage, alloc_json)
-- the record as jenc would write it (sorted keys; fp is hex, the ids and token need no escaping)
local record = string.format('{%s"bal":%d,"cost":%d,"fp":"%s","tx":"%s"}',
  token ~= '' and '"at":["' .. token .. '"],' or '', after, cost, fp, TXID)
redis.call('SET', KEYS[8], record, 'PX', window)
local uf = {'cost', fmt(cost), 'alloc', alloc_json, 'overdraft', fmt(short), 'refunded', '0'}
if klim then
  uf[9], uf[10], uf[11], uf[12] = 'kid', key_id, 'kw', fmt(klim.from)
end
if alim then
  uf[#uf + 1] = 'sw'
  uf[#uf + 1] = fmt(alim.from)
end
redis.call('HSET', KEYS[9], unpack(uf))
redis.call('PEXPIRE', KEYS[9], RETENTION)
local low = low_balance_event(KEYS[10], before, TXID)
save_account()
return with_rate({'ok', TXID, after, cost, 0, low, short}, tight)
