-- wrk script: POST /v1/check (JSON) with a unique idempotency key per request and the
-- account drawn uniformly from acct-00000 .. acct-<N-1>.
--   wrk ... -s bench/wrk/check.lua <url> -- <run tag> <accounts> <token> [cost] [path] [pace]
-- (the run tag keeps idempotency keys unique across runs: a repeated key is a replay).
-- pace: mean milliseconds each connection waits between its requests (uniform within
-- +-50%), which sets the offered rate (connections / pace) below the peak; 0 = none.
-- Prints one line "JSON {...}" with the counts and latency percentiles (microseconds).
local next_id = 0
function setup(thread)
  thread:set("tid", next_id)
  next_id = next_id + 1
end

function init(args)
  tag = args[1] or "r"
  accounts = tonumber(args[2]) or 1000
  token = args[3] or ""
  cost = tonumber(args[4]) or 1
  path = args[5] or "/v1/check"
  pace = tonumber(args[6]) or 0
  counter = 0
  math.randomseed(1000 + (tid or 0))
  headers = {["Content-Type"] = "application/json", ["Authorization"] = "Bearer " .. token}
end

function request()
  counter = counter + 1
  local account = string.format("acct-%05d", math.random(0, accounts - 1))
  local body = string.format('{"account":"%s","cost":%d,"idempotency_key":"%s-%d-%d"}',
    account, cost, tag, tid or 0, counter)
  return wrk.format("POST", path, headers, body)
end

function delay()
  if pace <= 0 then return 0 end
  return math.random(math.ceil(pace / 2), math.floor(pace * 3 / 2))
end

-- done(): the shared report, from the file next to this one.
dofile((debug.getinfo(1, "S").source:match("^@(.*/)") or "./") .. "report.lua")
