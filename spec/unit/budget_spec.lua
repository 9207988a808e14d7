-- The pcall, xpcall and coroutine.resume user code gets (lua/ferry/budget.lua):
-- ordinary errors are caught as usual, the core's budget error never is.
local budget = require("ferry.budget")

local BUDGET = "x.lua:3: script exceeded its budget of 1000000 instructions (runaway loop?)"

describe("budget-safe pcall", function()
  it("behaves like pcall for results and ordinary errors", function()
    assert.same({ true, 1, nil, 3 }, { budget.pcall(function() return 1, nil, 3 end) })
    local ok, err = budget.pcall(error, "plain", 0)
    assert.is_false(ok)
    assert.equal("plain", err)
    local t = {}
    assert.same({ false, t }, { budget.pcall(error, t) })
  end)

  it("passes the budget error on, through nested calls", function()
    local ok, err = pcall(budget.pcall, function()
      return budget.pcall(error, BUDGET, 0)
    end)
    assert.is_false(ok)
    assert.equal(BUDGET, err)
  end)
end)

describe("budget-safe xpcall", function()
  it("runs the handler and returns its answer for ordinary errors", function()
    assert.same({ false, "handled: boom" },
      { budget.xpcall(function() error("boom", 0) end, function(e) return "handled: " .. e end) })
    assert.same({ true, "a", nil, "c" },
      { budget.xpcall(function(x, y, z) return x, y, z end, print, "a", nil, "c") })
  end)

  it("passes the budget error on even when the handler hides it", function()
    local ok, err = pcall(budget.xpcall, function() error(BUDGET, 0) end,
      function() return "nothing to see" end)
    assert.is_false(ok)
    assert.equal(BUDGET, err)
  end)
end)

describe("budget-safe coroutine.resume", function()
  it("passes the budget error of a coroutine on, and only that one", function()
    local co = budget.coroutine()
    assert.is_not.equal(coroutine, co)
    assert.same({ false, "meh" }, { co.resume(co.create(function() error("meh", 0) end)) })
    local ok, err = pcall(co.resume, co.create(function() error(BUDGET, 0) end))
    assert.is_false(ok)
    assert.equal(BUDGET, err)
    assert.is_function(co.wrap)
  end)
end)

describe("budget errors", function()
  it("are the instruction, memory, allocation and stop errors of the core", function()
    for _, msg in ipairs {
      "console:1: script exceeded its budget of 50000000 instructions (runaway loop?) [FERRY-4011]",
      "x.lua: script exceeded its budget of 64 MiB of memory (FERRY_ADMIN_MEMORY_MB) [FERRY-4012]",
      "x.lua: script exceeded its budget of 128 MiB allocated (a string built piece by piece? " ..
        "FERRY_ADMIN_MEMORY_MB) [FERRY-4013]",
      "x.lua:2: script stopped: ferry is stopping (SIGTERM or SIGINT) [FERRY-4014]",
    } do
      assert.is_true(budget.is_budget(msg), msg)
      local ok, err = pcall(budget.pcall, error, msg, 0)
      assert.is_false(ok)
      assert.equal(msg, err)
    end
    assert.is_false(budget.is_budget("not enough memory"))
    assert.is_false(budget.is_budget({}))
  end)
end)
