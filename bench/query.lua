-- GET /events?...&limit=100 against the log bench/populate.py wrote. BENCH_QUERY picks the
-- filter: `user` (user_identity, ~BENCH_EVENTS/10007 matches), `data` (event_data.account_id,
-- ~BENCH_EVENTS/100003 matches) or `range` (a one-hour occurred_at window, ~120 matches).
-- Each thread cycles through 256 random values so no single row stays hot.
dofile((os.getenv("BENCH_DIR") or "bench") .. "/report.lua")

local kind = os.getenv("BENCH_QUERY") or "user"
local auth = os.getenv("BENCH_AUTH")
local events = tonumber(os.getenv("BENCH_EVENTS") or "1000000")
-- Must match bench/populate.py.
local USERS, ACCOUNTS, BASE, STEP = 10007, 100003, 1704067200, 30
local requests = {}
local next_request = 1

local function iso(t)
  return os.date("!%Y-%m-%dT%H:%M:%SZ", t)
end

local function path()
  if kind == "user" then
    return "/events?limit=100&user_identity=user-" .. math.random(0, USERS - 1)
  elseif kind == "data" then
    return "/events?limit=100&event_data.account_id=" ..
      math.random(0, math.min(ACCOUNTS, events) - 1)
  elseif kind == "range" then
    local span = math.max(events * STEP - 3600, 1)
    local since = BASE + math.random(0, span)
    return "/events?limit=100&since=" .. iso(since) .. "&until=" .. iso(since + 3600)
  end
  error("BENCH_QUERY must be user, data or range")
end

function init(args)
  local headers = {}
  if auth then headers["Authorization"] = "Basic " .. auth end
  math.randomseed(os.time() + tonumber(tostring({}):match("0x(%x+)") or "0", 16) % 100000)
  for i = 1, 256 do
    requests[i] = wrk.format("GET", path(), headers)
  end
end

function request()
  local r = requests[next_request]
  next_request = next_request % #requests + 1
  return r
end
