-- wrk script: POST /v1/check (JSON) with a unique idempotency key per request and the
-- account drawn uniformly from acct-00000 .. acct-<N-1>.
--   wrk ... -s bench/wrk/check.lua <url> -- <run tag> <accounts> <token> [cost] [path]
-- (the run tag keeps idempotency keys unique across runs: a repeated key is a replay)
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

function done(summary, latency, requests)
  local e = summary.errors
  io.write(string.format('JSON {"requests":%d,"duration_us":%d,"non2xx":%d,"socket_errors":%d,'
    .. '"p50_us":%d,"p90_us":%d,"p99_us":%d,"p999_us":%d,"mean_us":%.1f,"max_us":%d}\n',
    summary.requests, summary.duration, e.status, e.connect + e.read + e.write + e.timeout,
    latency:percentile(50), latency:percentile(90), latency:percentile(99),
    latency:percentile(99.9), latency.mean, latency.max))
end
