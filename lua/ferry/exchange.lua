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
