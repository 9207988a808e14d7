-- agent.lua: run Lua inside a running bin/ferry from a spec (see
-- spec/helpers/agent/strategies/agent.lua).
--   local a = agent.new()             -- a fresh command directory
--   local text = a:config()           -- config lines to add (plugins + a pool)
--   local proc = a:ferry(cfg, ports)  -- procs.ferry with the agent's environment
--   local v = a:run("return 1 + 1")   -- the value (JSON-able), or error()
local procs = require("procs")
local cjson = require("cjson.safe")

local M = {}
M.__index = M

function M.new()
  local dir = string.format("%s/agent-%d", procs.tmp, math.random(1, 1e9))
  os.execute("mkdir -p " .. procs.quote(dir))
  return setmetatable({ dir = dir, n = 0 }, M)
end

-- plugins + a pool using the agent strategy (its proxy is never used).
function M:config()
  return string.format('plugins { %q }\npool "agent" { strategy = "agent", ' ..
    'proxies = { "http://127.0.0.1:9" } }\n', procs.root .. "/spec/helpers/agent")
end

function M:ferry(config_text, ports, name)
  local cfg = procs.write_file(string.format("%s/ferry-%d.lua", procs.tmp, math.random(1, 1e9)),
    config_text .. "\n" .. self:config())
  local proc = procs.spawn(name or "ferry", "env FERRY_SPEC_AGENT=" .. procs.quote(self.dir) ..
    " " .. procs.quote(procs.bin) .. " -c " .. procs.quote(cfg))
  proc.config = cfg
  for _, port in ipairs(ports or {}) do
    if not procs.wait_port(port, procs.asan and 15 or 5) then
      local log = procs.read_file(proc.log)
      procs.stop(proc)
      error("ferry did not open port " .. port .. ":\n" .. log)
    end
  end
  self.proc = proc
  return proc
end

-- Run src (a Lua chunk) in the daemon; returns what it returned.
function M:run(src, timeout)
  self.n = self.n + 1
  local path = string.format("%s/cmd-%d.lua", self.dir, self.n)
  procs.write_file(path .. ".tmp", src)
  os.rename(path .. ".tmp", path)
  local out = string.format("%s/out-%d.json", self.dir, self.n)
  local text = procs.wait_for(function()
    local t = procs.read_file(out)
    return t ~= "" and t or nil
  end, timeout or (procs.asan and 20 or 10), 0.01)
  assert(text, "agent: no answer to: " .. src)
  local r = cjson.decode(text)
  if not r.ok then error("agent: " .. tostring(r.err) .. "\nin: " .. src, 2) end
  return r.value
end

-- Poll `src` until it returns a truthy value (bounded); returns it or nil.
function M:wait(src, timeout)
  return procs.wait_for(function()
    local v = self:run(src)
    return v ~= cjson.null and v or nil
  end, timeout or 10, 0.05)
end

function M:cleanup()
  os.execute("rm -rf " .. procs.quote(self.dir))
end

return M
