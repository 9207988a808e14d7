-- budget.lua: pcall, xpcall and coroutine.resume for user code (plugins
-- from user directories, exchange scripts) that never swallow the core's
-- budget errors.  The core (core/budget.c) stops a runaway
-- hook by raising that error from its count hook; a script that loops
-- around its own pcall would catch it and loop on with a fresh budget,
-- hanging the event loop.  These versions pass it on, so it reaches the
-- runtime's pcall and the built-in fallback.
local pcall, xpcall, error, type, select, pairs, unpack =
  pcall, xpcall, error, type, select, pairs, unpack
local find = string.find
local resume = coroutine.resume

local M = {}

-- The text of the core's budget errors (core/budget.c): instructions,
-- memory, bytes allocated; and the stop a SIGTERM asks for.
M.MARK = "script exceeded its budget of"
M.STOP_MARK = "script stopped: ferry is stopping"

local function is_budget(e)
  return type(e) == "string" and (find(e, M.MARK, 1, true) ~= nil or
    find(e, M.STOP_MARK, 1, true) ~= nil)
end
M.is_budget = is_budget

local function pass(ok, ...)
  if not ok and is_budget((...)) then error((...), 0) end
  return ok, ...
end

function M.pcall(f, ...)
  return pass(pcall(f, ...))
end

local function packn(...)
  return { n = select("#", ...), ... }
end

function M.xpcall(f, handler, ...)
  if type(handler) ~= "function" then return xpcall(f, handler, ...) end
  local hit
  local r = packn(xpcall(f, function(e)
    if is_budget(e) then hit = e end
    return handler(e)
  end, ...))
  if hit then error(hit, 0) end
  return unpack(r, 1, r.n)
end

-- coroutine with a resume that passes the budget error on (wrap already
-- re-raises a coroutine's errors).
function M.coroutine()
  local t = {}
  for k, v in pairs(coroutine) do t[k] = v end
  t.resume = function(co, ...) return pass(resume(co, ...)) end
  return t
end

return M
