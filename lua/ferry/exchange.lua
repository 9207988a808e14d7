-- exchange.lua: per-exchange scripts and ban rules.
--
-- A script is a Lua file returning a table of hooks:
--   on_request(req)        -> nil | false (deny) |
--                             { pool = "name", headers = { add = {...}, drop = {...} } }
--   select(pool, req)      -> a proxy of the pool, or nil to let the strategy choose
--   on_response(res, proxy)-> nil | "ok" | "failure" | { ban = seconds, used = N }
--   weight(req)            -> tokens the request costs from the rate budget (default 1)
-- Scripts run in a sandbox without io, os.execute or require, and
-- interpreted, so the core's instruction budget can stop a runaway loop.
local type, pairs, ipairs, tostring, tonumber, pcall, setfenv, loadfile =
  type, pairs, ipairs, tostring, tonumber, pcall, setfenv, loadfile
local format, concat, lower, find = string.format, table.concat, string.lower, string.find
local budget = require("ferry.budget")
local rtrim = require("ferry.text").rtrim

local M = {}

local HOOKS = { on_request = true, select = true, on_response = true, weight = true }
local TOKEN = "^[!#$%%&'*+%-.^_`|~%w]+$"

-- Globals a script may use: pure functions only.
local function sandbox()
  local env = {}
  for _, k in ipairs { "pairs", "ipairs", "tostring", "tonumber", "type", "select", "error",
                       "assert", "pcall", "unpack", "next", "rawget", "rawset" } do
    env[k] = _G[k]
  end
  -- A loop around pcall must not swallow the budget's error.
  env.pcall = budget.pcall
  for _, lib in ipairs { "string", "table", "math", "bit" } do
    local copy = {}
    for k, v in pairs(_G[lib] or require(lib)) do copy[k] = v end
    env[lib] = copy
  end
  env.os = { time = os.time, clock = os.clock }
  return env
end

-- Load the script of exchange `name`; nil and "path: message" on error.
function M.load_script(path, name)
  local chunk, err = loadfile(path)
  if not chunk then return nil, tostring(err) end
  jit.off(chunk, true)
  setfenv(chunk, sandbox())
  local ok, hooks = pcall(chunk)
  if not ok then
    local msg = tostring(hooks)
    if msg:sub(1, #path) ~= path then msg = path .. ": " .. msg end
    return nil, msg
  end
  if type(hooks) ~= "table" then
    return nil, format('%s: exchange "%s": the script must return a table of hooks, got a %s',
      path, name, type(hooks))
  end
  for k, v in pairs(hooks) do
    if not HOOKS[k] then
      return nil, format('%s: exchange "%s": unknown hook "%s" (on_request, select, on_response, weight)',
        path, name, tostring(k))
    end
    if type(v) ~= "function" then
      return nil, format('%s: exchange "%s": hook %s must be a function, got a %s', path, name,
        k, type(v))
    end
  end
  return hooks
end

-- The header edits of an on_request answer as the strings the core
-- copies: "Name: value\r\n"... and "\nname\nname\n".  nil, nil when
-- there is nothing to do; raises (caught by the caller) on bad input.
function M.header_edits(h)
  if h == nil then return nil, nil end
  if type(h) ~= "table" then error("headers must be a table { add = {...}, drop = {...} }") end
  local add, drop
  if h.add ~= nil then
    if type(h.add) ~= "table" then error("headers.add must be a table of name = value") end
    local out = {}
    for k, v in pairs(h.add) do
      if type(k) ~= "string" or not k:match(TOKEN) then
        error(format("headers.add: %q is not a header name", tostring(k)))
      end
      v = tostring(v)
      if find(v, "[%c]") then error(format("headers.add: value of %s has control characters", k)) end
      out[#out + 1] = k .. ": " .. v .. "\r\n"
    end
    table.sort(out)
    if #out > 0 then add = concat(out) end
  end
  if h.drop ~= nil then
    if type(h.drop) ~= "table" then error("headers.drop must be a list of names") end
    local out = {}
    for _, k in ipairs(h.drop) do
      if type(k) ~= "string" or not k:match(TOKEN) then
        error(format("headers.drop: %q is not a header name", tostring(k)))
      end
      out[#out + 1] = lower(k)
    end
    if #out > 0 then drop = "\n" .. concat(out, "\n") .. "\n" end
  end
  return add, drop
end

-- Header lookup over a raw HTTP head (the response of on_response).
local function header_reader(head)
  local cache
  return function(name)
    if not head then return nil end
    if not cache then
      cache = {}
      for k, v in head:gmatch("\r?\n([^:\r\n]+):[ \t]*([^\r\n]*)") do
        k = lower(k)
        if cache[k] == nil then cache[k] = rtrim(v, true) end
      end
    end
    return cache[lower(name)]
  end
end
M.header_reader = header_reader

-- The declarative rule: a status of ban.status or a body marker.
-- Returns the reason, or nil.
function M.ban_reason(ban, status, body)
  if not ban then return nil end
  if ban.status_set and ban.status_set[status] then return "status " .. status end
  if body and ban.body then
    for _, marker in ipairs(ban.body) do
      if find(body, marker, 1, true) then return "body marker \"" .. marker .. "\"" end
    end
  end
  return nil
end

-- Seconds of the next ban: base doubled per ban in a row, capped.
function M.ban_seconds(ban, base, bans)
  local cap = ban and ban.max_backoff or 3600
  local s = (base or (ban and ban.backoff) or 60) * 2 ^ (bans or 0)
  if s > cap then s = cap end
  return s
end

-- Retry-After (RFC 9110 10.2.3): delta-seconds or an HTTP-date.
local MONTHS = { Jan = 1, Feb = 2, Mar = 3, Apr = 4, May = 5, Jun = 6, Jul = 7, Aug = 8,
                 Sep = 9, Oct = 10, Nov = 11, Dec = 12 }

-- Days from 1970-01-01 to the proleptic Gregorian date y-m-d.
local function days_from_civil(y, m, d)
  if m <= 2 then y = y - 1 end
  local era = math.floor(y / 400)
  local yoe = y - era * 400
  local mp = (m + 9) % 12
  local doy = math.floor((153 * mp + 2) / 5) + d - 1
  local doe = yoe * 365 + math.floor(yoe / 4) - math.floor(yoe / 100) + doy
  return era * 146097 + doe - 719468
end

-- Seconds since the epoch of an HTTP-date in any of its three forms
-- (IMF-fixdate, obsolete RFC 850, asctime), or nil.
local function http_date(v)
  local d, mon, y, hh, mm, ss = v:match("^%a%a%a, (%d%d) (%a%a%a) (%d%d%d%d) (%d%d):(%d%d):(%d%d) GMT$")
  if not d then
    d, mon, y, hh, mm, ss = v:match("^%a+, (%d%d)%-(%a%a%a)%-(%d%d) (%d%d):(%d%d):(%d%d) GMT$")
    if y then
      y = tonumber(y)
      y = y < 70 and 2000 + y or 1900 + y
    end
  end
  if not d then
    mon, d, hh, mm, ss, y = v:match("^%a%a%a (%a%a%a) ([ %d]%d) (%d%d):(%d%d):(%d%d) (%d%d%d%d)$")
  end
  if not d then return nil end
  local m = MONTHS[mon]
  d, y, hh, mm, ss = tonumber((d:gsub(" ", ""))), tonumber(y), tonumber(hh), tonumber(mm),
    tonumber(ss)
  if not m or d < 1 or d > 31 or hh > 23 or mm > 59 or ss > 60 then return nil end
  return days_from_civil(y, m, d) * 86400 + hh * 3600 + mm * 60 + ss
end
M.http_date = http_date

-- The ban length a Retry-After value asks for, at wall-clock time now
-- (seconds since the epoch), within [1, max]: secs and nil when it is
-- usable as it is (below 1, a date already past included, means 1);
-- max and "clamped" when it asks for more than max (10^12, an overflow);
-- nil and "unusable" when it is neither delta-seconds nor an HTTP-date
-- (a negative number, garbage).
function M.retry_after(v, now, max)
  if type(v) ~= "string" then return nil, "unusable" end
  v = v:match("^[ \t]*(.-)[ \t]*$")
  local secs
  if v:match("^%d+$") then
    secs = tonumber(v)
  else
    local t = #v <= 64 and http_date(v)
    if not t then return nil, "unusable" end
    secs = t - now
  end
  if secs ~= secs then return nil, "unusable" end
  if secs > max then return max, "clamped" end
  if secs < 1 then return math.min(1, max) end
  return math.floor(secs)
end

-- What an on_response answer means: "ok", "failure", a ban in seconds,
-- or nil (no opinion); and, third, the weight the exchange says the
-- proxy has used in its rate window ({ used = N }, rate budgets), or
-- nil.  A table may carry ban, used or both.  Raises on anything else.
function M.verdict(v)
  if v == nil or v == "ok" or v == "failure" then return v end
  if type(v) == "table" then
    local used = v.used
    if used ~= nil then
      used = tonumber(used)
      if not used or used ~= used or used < 0 or used == math.huge then
        error("on_response: used must be a number >= 0, got " .. tostring(v.used))
      end
    end
    local secs = tonumber(v.ban)
    if secs and secs > 0 and secs == secs then return "ban", secs, used end
    if v.ban == nil and used then return nil, nil, used end
  end
  error("on_response must return nil, \"ok\", \"failure\" or { ban = seconds, used = N }, got " ..
    (type(v) == "string" and format("%q", v) or "a " .. type(v)))
end

-- The largest weight one request may have (a larger answer is an error).
M.WEIGHT_MAX = 1e6

-- A weight hook's answer as tokens, or nil and why it is refused.
function M.weight_of(v)
  if type(v) ~= "number" then return nil, "weight must return a number, got a " .. type(v) end
  if v ~= v or v < 0 or v > M.WEIGHT_MAX then
    return nil, "weight must return a number from 0 to " .. M.WEIGHT_MAX .. ", got " .. tostring(v)
  end
  return v
end

return M
