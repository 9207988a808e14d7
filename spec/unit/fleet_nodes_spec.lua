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

-- ferry.fleet_probes against real C proxies of build/libferry.so, with
-- the node list, the hub and the timers faked: who probes what, and
-- which shared verdicts apply.
describe("fleet_probes", function()
  local ffi = require("ffi")
  require("ferry.cdef")
  pcall(ffi.cdef, [[
struct ev_loop;
struct ev_loop *ev_loop_new(unsigned int flags);
void ev_loop_destroy(struct ev_loop *loop);
extern struct ev_loop *loop;
void log_init(int fd);
int open(const char *path, int flags, int mode);
]])
  local core = ffi.load("./build/libferry.so", true)
  local C = ffi.C
  local own_loop
  local saved = {}
  local handlers, writes = {}, {}
  local probers = { "a", "b" }
  local probes, run, pkeys

  local function fake(name, mod)
    saved[name] = package.loaded[name]
    package.loaded[name] = mod
  end

  setup(function()
    if core.loop == nil then
      own_loop = core.ev_loop_new(0)
      core.loop = own_loop
    end
    core.log_init(C.open("/dev/null", 1, 0))
    fake("ferry.fleet_nodes", { enabled = function() return true end,
      self_id = function() return "a" end, probers = function() return probers end,
      heartbeat = function() return 1 end })
    fake("ferry.fleet", { on = function(kind, fn) handlers[kind] = fn end,
      on_up = function() end, on_down = function() end,
      write = function(key, _, params) writes[#writes + 1] = { key = key, params = params }
        return true end,
      read = function() return true end })
    fake("ferry.timer", { every = function() return 1 end, cancel = function() end })
    run, pkeys = { proxies = {} }, {}
    local info = {}
    for i = 1, 12 do
      local key = "fp-" .. i
      local err = ffi.new("const char *[1]")
      local c = C.ferry_proxy_new(key, 1, "127.0.0.1", 20000 + i, nil, nil, nil, 1, err)
      assert(c ~= nil, err[0] ~= nil and ffi.string(err[0]))
      assert.equal(0, C.ferry_probe_set(c, 1, nil, 0, nil, nil, 60, 1, err))
      C.ferry_health_set(c, 2, 3, 60)
      local cid = tonumber(c.id)
      run.proxies[cid] = c
      info[cid] = { key = key, label = key }
      pkeys[#pkeys + 1] = key
    end
    fake("ferry.inventory", { info = function(cid) return info[cid] end })
    package.loaded["ferry.fleet_probes"] = nil
    probes = require("ferry.fleet_probes")
  end)

  teardown(function()
    for _, c in pairs(run.proxies) do
      C.ferry_probe_set(c, 0, nil, 0, nil, nil, 1, 1, ffi.new("const char *[1]"))
    end
    for name, mod in pairs(saved) do package.loaded[name] = mod end
    package.loaded["ferry.fleet_probes"] = nil
    if own_loop then
      core.loop = nil
      core.ev_loop_destroy(own_loop)
    end
  end)

  local function by_key(key)
    return probes._state().by_key[key]
  end

  local function down(c) return require("bit").band(tonumber(c.flags), C.FERRY_PROXY_DOWN) ~= 0 end

  it("runs the probes of its share only, and all of them without the list", function()
    probes.committed(run)
    local mine, n = view.divide(pkeys, probers, "a")
    assert.is_true(n > 0 and n < #pkeys)
    assert.equal(n, tonumber(C.ferry_probe_duties()))
    assert.equal(n, probes.duties_by_node().a)
    assert.equal(#pkeys - n, probes.duties_by_node().b)
    for _, k in ipairs(pkeys) do
      assert.equal(mine[k] == true, probes._state().mine[k] == true, k)
    end
    probers = nil
    probes.nodes_changed()
    assert.equal(#pkeys, tonumber(C.ferry_probe_duties()))
    probers = { "a", "b" }
    probes.nodes_changed()
    assert.equal(n, tonumber(C.ferry_probe_duties()))
  end)

  it("applies the newest verdict of another node, not older ones nor its own duties'", function()
    local mine = probes._state().mine
    local theirs, own
    for _, k in ipairs(pkeys) do
      if mine[k] then own = own or k else theirs = theirs or k end
    end
    local c = by_key(theirs)
    assert.is_false(down(c))
    handlers.probe({ t = "probe", n = "b", p = theirs, up = false, at = 10 })
    assert.is_true(down(c))
    handlers.probe({ t = "probe", n = "b", p = theirs, up = true, at = 9 }) -- older
    assert.is_true(down(c))
    handlers.probe({ t = "probe", n = "b", p = theirs, up = true, ms = 12.5, at = 11 })
    assert.is_false(down(c))
    assert.equal(12.5, tonumber(c.probe_latency_ms))
    -- A verdict about a proxy this node probes itself: ignored.
    local o = by_key(own)
    handlers.probe({ t = "probe", n = "b", p = own, up = false, at = 20 })
    assert.is_false(down(o))
    -- An unknown proxy: ignored, nothing raised.
    handlers.probe({ t = "probe", n = "b", p = "nope", up = false, at = 30 })
  end)
end)
