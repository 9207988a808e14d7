-- log_once.lua: a fault that recurs is logged once per window and key;
-- the next line about it says how many were held back meanwhile, so a
-- flapping database or endpoint cannot flood the log and nothing is
-- hidden without a count.
--
--   local once = require("ferry.log_once").new(window, now, write)
--   once(key, level, code, msg)
--
-- now() gives the clock in seconds; write(level, code, msg) writes the
-- line (level as the caller gives it).  Both are read at each call, so a
-- caller may pass functions that look up hooks replaced by its specs.
local format = string.format

local M = {}

function M.new(window, now, write)
  local last, held = {}, {}
  return function(key, level, code, msg)
    local t = now()
    local prev = last[key]
    if prev and t - prev < window then
      held[key] = (held[key] or 0) + 1
      return
    end
    local n = held[key]
    if n and n > 0 then msg = msg .. format(" (%d more since the last report)", n) end
    last[key], held[key] = t, 0
    write(level, code, msg)
  end
end

return M
