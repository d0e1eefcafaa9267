-- wrk script: GET <url> with an "X-Account" header, paced (for bench/middleware.py).
--   wrk ... -s bench/wrk/get.lua <url> -- <run tag> <account> [pace]
-- pace: mean milliseconds each connection waits between its requests (uniform within +-50%),
-- which sets the offered rate (connections / pace); 0 = none. Prints one "JSON {...}" line.
local next_id = 0
function setup(thread)
  thread:set("tid", next_id)
  next_id = next_id + 1
end

function init(args)
  account = args[2] or "acct-00000"
  pace = tonumber(args[3]) or 0
  math.randomseed(2000 + (tid or 0))
  headers = {["X-Account"] = account}
end

function request()
  return wrk.format("GET", nil, headers)
end

function delay()
  if pace <= 0 then return 0 end
  return math.random(math.ceil(pace / 2), math.floor(pace * 3 / 2))
end

dofile((debug.getinfo(1, "S").source:match("^@(.*/)") or "./") .. "report.lua")
