-- timer.lua: callbacks on the loop.
--   local h = timer.every(seconds, fn)  -- fn(now), every `seconds`
--   local h = timer.after(seconds, fn)  -- fn(now), once
--   timer.cancel(h)
-- C owns the ev_timers (core/timer.c, at most 1024 at once) and calls
-- M.fire(id) on expiry (runtime.timer).  Each callback runs under
-- pcall: an error is logged (FERRY-8000, at most once per 10 s per
-- timer) and an every-timer goes on.  Timers live in the one Lua state,
-- so they survive reloads; whoever starts one cancels it.
local ffi = require("ffi")
local cdef = require("ferry.cdef")

local C = ffi.C
local type, tostring, xpcall = type, tostring, xpcall
local traceback = debug.traceback

local M = {}

local LOG_WINDOW = 10
local callbacks = {} -- id -> { fn = fn, every = seconds or nil, logged = time }
local full_logged = -math.huge

local function start(after, every, fn)
  if type(after) ~= "number" or after < 0 or after ~= after then
    error("timer: seconds must be a number >= 0", 3)
  end
  if type(fn) ~= "function" then
    error("timer: the callback must be a function", 3)
  end
  local err = ffi.new("const char *[1]")
  local id = C.ferry_timer_start(after, every, err)
  if id < 0 then
    local msg = "timer refused: " .. ffi.string(err[0])
    local now = C.ferry_now()
    if now - full_logged >= LOG_WINDOW then
      full_logged = now
      C.ferry_log(cdef.LOG.error, "FERRY-8001", msg)
    end
    return nil, msg
  end
  callbacks[id] = { fn = fn, every = every > 0 and every or nil, logged = -math.huge }
  return id
end

-- fn(now) every `seconds` (> 0), the first time `seconds` from now.
function M.every(seconds, fn)
  if type(seconds) ~= "number" or seconds ~= seconds or seconds <= 0 then
    error("timer.every: seconds must be a number > 0", 2)
  end
  return start(seconds, seconds, fn)
end

-- fn(now) once, `seconds` (>= 0) from now.
function M.after(seconds, fn)
  return start(seconds, 0, fn)
end

-- Stop a timer; an unknown or ended handle is ignored.
function M.cancel(h)
  if type(h) ~= "number" then return end
  if callbacks[h] then
    callbacks[h] = nil
    C.ferry_timer_cancel(h)
  end
end

-- Timers running now (Lua's view; C's is ferry_timer_count()).
function M.count()
  local n = 0
  for _ in pairs(callbacks) do n = n + 1 end
  return n
end

-- The core: timer `id` expired.
function M.fire(id)
  local t = callbacks[id]
  if not t then return end
  if not t.every then callbacks[id] = nil end
  local now = C.ferry_now()
  local ok, err = xpcall(t.fn, traceback, now)
  if not ok and now - t.logged >= LOG_WINDOW then
    t.logged = now
    C.ferry_log(cdef.LOG.error, "FERRY-8000", "timer callback failed" ..
      (t.every and " (it keeps running)" or "") .. ": " .. tostring(err))
  end
end

return M
