-- The pure logic of the fleet's node list: states, what changed, and the
-- rendezvous division of probe duties (lua/ferry/fleet_view.lua).
package.path = "lua/?.lua;" .. package.path
local view = require("ferry.fleet_view")

local function keys(n)
  local t = {}
  for i = 1, n do t[i] = "http://10.0." .. math.floor(i / 250) .. "." .. (i % 250) .. ":3128" end
  return t
end

describe("fleet_view.state", function()
  it("classifies by database age, draining and stopped", function()
    assert.equal("live", view.state({ age = 0.4 }, 0.5))
    assert.equal("live", view.state({ age = 1.5 }, 0.5))
    assert.equal("gone", view.state({ age = 1.51 }, 0.5))
    assert.equal("gone", view.state({}, 2))
    assert.equal("draining", view.state({ age = 1, draining = true }, 2))
    assert.equal("gone", view.state({ age = 7, draining = true }, 2))
    assert.equal("stopped", view.state({ age = 0, stopped = true, draining = true }, 2))
  end)
end)

describe("fleet_view.changes", function()
  it("reports joins, departures and returns, not the first sight of dead nodes", function()
    local c = view.changes(nil, { a = "live", b = "gone", c = "stopped" })
    assert.same({ { id = "a", to = "live", what = "joined" } }, c)
    c = view.changes({ a = "live", b = "live", c = "gone", d = "live", e = "live" },
      { a = "live", b = "gone", c = "live", d = "draining", e = "stopped" })
    assert.same({
      { id = "b", from = "live", to = "gone", what = "gone" },
      { id = "c", from = "gone", to = "live", what = "back" },
      { id = "d", from = "live", to = "draining", what = "draining" },
      { id = "e", from = "live", to = "stopped", what = "stopped" },
    }, c)
    assert.same({}, view.changes({ a = "live" }, { a = "live" }))
  end)

  it("says a node whose row disappeared is gone", function()
    assert.same({ { id = "x", from = "live", to = "gone", what = "gone" } },
      view.changes({ x = "live" }, {}))
  end)
end)

describe("fleet_view.probers", function()
  it("lists the live, non-draining nodes, sorted", function()
    assert.same({ "a", "c" }, view.probers({ c = "live", a = "live", b = "draining",
      d = "gone", e = "stopped" }))
  end)
end)

describe("fleet_view division", function()
  it("hashes to stable 32-bit values", function()
    assert.equal(view.hash("fra-1"), view.hash("fra-1"))
    assert.not_equal(view.hash("fra-1"), view.hash("fra-2"))
    for _, s in ipairs({ "", "a", "fra-1", string.rep("x", 300) }) do
      local h = view.hash(s)
      assert.is_true(h >= -2147483648 and h <= 2147483647 and h % 1 == 0)
    end
  end)

  it("gives every key to exactly one node, and nothing to a node not listed", function()
    local ids = { "n1", "n2", "n3" }
    local ks = keys(300)
    local total, seen = 0, {}
    for _, id in ipairs(ids) do
      local mine, n = view.divide(ks, ids, id)
      total = total + n
      for k in pairs(mine) do
        assert.is_nil(seen[k], "two owners for " .. k)
        seen[k] = id
      end
      -- a fair share: 100 each, allow a wide band
      assert.is_true(n > 60 and n < 140, id .. " got " .. n)
    end
    assert.equal(#ks, total)
    local _, none = view.divide(ks, ids, "n4")
    assert.equal(0, none)
    assert.same({}, (view.divide(ks, {}, "n1")))
  end)

  it("moves only the leaving node's share when a node goes", function()
    local ks = keys(500)
    local before, after = {}, {}
    for _, k in ipairs(ks) do
      before[k] = view.owner(k, { "a", "b", "c" })
      after[k] = view.owner(k, { "a", "c" })
    end
    local moved = 0
    for _, k in ipairs(ks) do
      if before[k] ~= "b" then
        assert.equal(before[k], after[k], "a key not of b moved: " .. k)
      else
        moved = moved + 1
        assert.is_true(after[k] == "a" or after[k] == "c")
      end
    end
    assert.is_true(moved > 100 and moved < 240, "b had " .. moved)
  end)

  it("moves only the new node's share when a node joins", function()
    local ks = keys(500)
    local taken = 0
    for _, k in ipairs(ks) do
      local o3, o4 = view.owner(k, { "a", "b", "c" }), view.owner(k, { "a", "b", "c", "d" })
      if o4 ~= o3 then
        assert.equal("d", o4)
        taken = taken + 1
      end
    end
    assert.is_true(taken > 80 and taken < 180, "d took " .. taken)
  end)

  it("does not depend on the order of the node list", function()
    for _, k in ipairs(keys(50)) do
      assert.equal(view.owner(k, { "x", "y", "z" }), view.owner(k, { "z", "x", "y" }))
    end
  end)
end)
