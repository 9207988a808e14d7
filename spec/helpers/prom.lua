-- prom.lua: what the metrics specs share about the Prometheus text.
local M = {}

-- s as a Lua pattern that matches it literally.
function M.escape_pattern(s)
  return (s:gsub("[%^%$%(%)%%%.%[%]%*%+%-%?]", "%%%0"))
end

-- What `promtool check metrics` says of text t, ending "rc=N\n".
function M.promtool(t)
  local path = os.tmpname()
  local f = assert(io.open(path, "w"))
  f:write(t)
  f:close()
  local p = io.popen("promtool check metrics < " .. path .. " 2>&1; echo rc=$?")
  local out = p:read("*a")
  p:close()
  os.remove(path)
  return out
end

return M
