-- wrk script: the nginx auth_request subrequest (GET /auth/nginx) as nginx sends it: the
-- client's API key, the original method and URI, a unique request id (the idempotency key).
--   wrk ... -s bench/wrk/nginx_auth.lua <url> -- <run tag> <keys file: "account key" lines>
local next_id = 0
function setup(thread)
  thread:set("tid", next_id)
  next_id = next_id + 1
end

function init(args)
  keys = {}
  tag = args[1] or "n"
  for line in io.lines(args[2]) do
    local _, key = line:match("^(%S+)%s+(%S+)$")
    if key then keys[#keys + 1] = key end
  end
  counter = 0
  math.randomseed(2000 + (tid or 0))
end

function request()
  counter = counter + 1
  return wrk.format("GET", "/auth/nginx", {
    ["X-API-Key"] = keys[math.random(1, #keys)],
    ["X-Original-Method"] = "GET",
    ["X-Original-URI"] = "/v1/things",
    ["X-Request-Id"] = string.format("%s-%d-%d", tag, tid or 0, counter),
  })
end

-- done(): the shared report, from the file next to this one.
dofile((debug.getinfo(1, "S").source:match("^@(.*/)") or "./") .. "report.lua")
