-- Timers on the loop (timer.every/after/cancel) inside the real daemon:
-- they fire, a failing callback is logged with FERRY-8000 and an
-- every-timer goes on, a cancelled one stops, the 1025th is refused with
-- FERRY-8001, and they survive a reload.
local procs = require("procs")
local agent = require("agent")

describe("timers", function()
  local a, ferry
  local F = procs.free_port()

  setup(function()
    a = agent.new()
    ferry = a:ferry(string.format('listen { name = "main", addr = "127.0.0.1:%d" }\n', F), { F })
  end)

  teardown(function()
    if ferry then procs.stop_ferry(ferry) end
    a:cleanup()
  end)

  local function logged(code)
    local n = 0
    for _, l in ipairs(procs.log_lines(ferry)) do
      if l.code == code then n = n + 1 end
    end
    return n
  end

  it("fires every and after timers, and a cancelled one stops", function()
    a:run([[
local timer = require("ferry.timer")
agent.ticks, agent.once = 0, 0
agent.h = timer.every(0.02, function() agent.ticks = agent.ticks + 1 end)
timer.after(0.05, function() agent.once = agent.once + 1 end)
]])
    assert.truthy(a:wait("return agent.ticks >= 5 and agent.once == 1 or nil"))
    a:run("require('ferry.timer').cancel(agent.h); agent.stopped_at = agent.ticks")
    procs.sleep(0.2)
    assert.equal(0, a:run("return agent.ticks - agent.stopped_at"))
    assert.equal(1, a:run("return agent.once"))
  end)

  it("logs a failing callback once with FERRY-8000 and keeps an every-timer running", function()
    a:run([[
local timer = require("ferry.timer")
agent.fails = 0
agent.bad = timer.every(0.02, function()
  agent.fails = agent.fails + 1
  error("spec boom")
end)
]])
    assert.truthy(a:wait("return agent.fails >= 5 or nil"))
    a:run("require('ferry.timer').cancel(agent.bad)")
    assert.truthy(procs.wait_for(function() return logged("FERRY-8000") >= 1 end))
    -- One line per 10 s window, not one per failure.
    assert.equal(1, logged("FERRY-8000"))
    assert.truthy(procs.read_file(ferry.log):find("spec boom", 1, true))
  end)

  it("refuses the timer past 1024 with FERRY-8001", function()
    local r = a:run([[
local timer = require("ferry.timer")
local ok, err, hs = 0, nil, {}
for _ = 1, 1100 do
  local h, e = timer.after(1000, function() end)
  if h then ok = ok + 1; hs[#hs + 1] = h else err = e end
end
local running = require("ffi").C.ferry_timer_count()
for _, h in ipairs(hs) do timer.cancel(h) end
return { ok = ok, err = err, running = running }
]])
    assert.equal(1024, r.running)
    assert.is_true(r.ok >= 1000 and r.ok <= 1024)
    assert.truthy(r.err:find("1024", 1, true))
    assert.truthy(procs.wait_for(function() return logged("FERRY-8001") == 1 end))
  end)

  it("keeps a timer across a reload", function()
    a:run("agent.ticks2 = 0; agent.h2 = require('ferry.timer').every(0.02, " ..
      "function() agent.ticks2 = agent.ticks2 + 1 end)")
    procs.signal(ferry, "HUP")
    assert.truthy(procs.wait_for(function()
      for _, l in ipairs(procs.log_lines(ferry)) do
        if l.code == "FERRY-0101" then return true end
      end
    end))
    local before = a:run("return agent.ticks2")
    assert.truthy(a:wait("return agent.ticks2 >= " .. (before + 5) .. " or nil"))
    a:run("require('ferry.timer').cancel(agent.h2)")
  end)
end)
