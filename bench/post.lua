-- POST /events with one event per request (BENCH_BATCH=1) or an array of BENCH_BATCH events.
-- Bodies are built once per thread and cycled, so wrk spends its CPU on HTTP, not on Lua.
dofile((os.getenv("BENCH_DIR") or "bench") .. "/report.lua")

local batch = tonumber(os.getenv("BENCH_BATCH") or "1")
local auth = os.getenv("BENCH_AUTH")
local requests = {}
local next_request = 1

local function event(n)
  return string.format(
    '{"event_type":"bench.ingest","user_identity":"ingest-%d","action":"create",' ..
    '"entity":"account","entity_id":"%d","outcome":"success",' ..
    '"event_data":{"account_id":%d,"note":"load test","n":%d}}',
    n % 997, n, n % 100003, n)
end

function init(args)
  local headers = { ["Content-Type"] = "application/json" }
  if auth then headers["Authorization"] = "Basic " .. auth end
  math.randomseed(os.time() + tonumber(tostring({}):match("0x(%x+)") or "0", 16) % 100000)
  for i = 1, 64 do
    local body
    if batch == 1 then
      body = event(math.random(1, 1000000))
    else
      local events = {}
      for j = 1, batch do events[j] = event(math.random(1, 1000000)) end
      body = "[" .. table.concat(events, ",") .. "]"
    end
    requests[i] = wrk.format("POST", "/events", headers, body)
  end
end

function request()
  local r = requests[next_request]
  next_request = next_request % #requests + 1
  return r
end
