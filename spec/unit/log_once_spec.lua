-- log_once: one line per window and key, the next one counting what was held back.
local log_once = require("ferry.log_once")

describe("log_once", function()
  local t, lines, once
  before_each(function()
    t, lines = 100, {}
    once = log_once.new(10, function() return t end, function(level, code, msg)
      lines[#lines + 1] = { level = level, code = code, msg = msg }
    end)
  end)

  it("writes the first line of a key at once, with its level and code", function()
    once("a", "warn", "FERRY-8004", "down")
    assert.same({ { level = "warn", code = "FERRY-8004", msg = "down" } }, lines)
  end)

  it("holds back repeats within the window and counts them on the next line", function()
    once("a", "warn", "FERRY-8004", "down")
    t = 105
    once("a", "warn", "FERRY-8004", "down")
    once("a", "warn", "FERRY-8004", "down")
    assert.equal(1, #lines)
    t = 110
    once("a", "warn", "FERRY-8004", "down")
    assert.equal(2, #lines)
    assert.equal("down (2 more since the last report)", lines[2].msg)
    t = 125
    once("a", "warn", "FERRY-8004", "down")
    assert.equal("down", lines[3].msg)
  end)

  it("keeps keys apart", function()
    once("a", "warn", "FERRY-8004", "a down")
    once("b", "warn", "FERRY-8004", "b down")
    t = 101
    once("a", "warn", "FERRY-8004", "a down")
    assert.equal(2, #lines)
    assert.equal("b down", lines[2].msg)
  end)
end)
