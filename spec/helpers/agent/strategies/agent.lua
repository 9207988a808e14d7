-- agent: a strategy plugin for integration specs only.  Loaded through
-- `plugins { "<root>/spec/helpers/agent" }` and a pool with
-- strategy = "agent" (spec/helpers/agent.lua writes both), it lets a
-- spec run Lua inside the daemon with the runtime's own modules
-- (require("ferry.fleet"), ferry.pg, ferry.timer), which the console's
-- sandbox rightly refuses.  The spec writes DIR/cmd-N.lua (N = 1, 2,
-- ...); a timer runs each in turn and writes DIR/out-N.json:
-- {"ok":true,"value":...} or {"ok":false,"err":"..."}.  DIR comes from
-- the FERRY_SPEC_AGENT environment variable; without it nothing runs.
local dir = os.getenv("FERRY_SPEC_AGENT")

if dir and not rawget(_G, "__ferry_spec_agent") then
  local cjson = require("cjson.safe")
  local timer = require("ferry.timer")
  local state = { next = 1, data = {} }
  rawset(_G, "__ferry_spec_agent", state)
  local function write(path, text)
    local f = io.open(path .. ".tmp", "w")
    if not f then return end
    f:write(text)
    f:close()
    os.rename(path .. ".tmp", path)
  end
  timer.every(0.02, function()
    while true do
      local path = dir .. "/cmd-" .. state.next .. ".lua"
      local f = io.open(path, "r")
      if not f then return end
      local src = f:read("*a")
      f:close()
      local out = dir .. "/out-" .. state.next
      state.next = state.next + 1
      local chunk, err = loadstring(src, "=agent")
      local ok, value
      if chunk then
        -- `agent` is a table kept between commands (handlers store here).
        setfenv(chunk, setmetatable({ agent = state.data }, { __index = _G }))
        ok, value = pcall(chunk)
      else
        ok, value = false, err
      end
      local text = cjson.encode(ok and { ok = true, value = value } or
        { ok = false, err = tostring(value) })
      write(out .. ".json", text or cjson.encode({ ok = false, err = "result not encodable" }))
    end
  end)
end

return {
  name = "agent",
  version = "1",
  select = function(pool, req)
    for _, p in ipairs(pool.proxies) do
      if pool:eligible(p, req) then return p end
    end
    return nil
  end,
}
