local ffi = require("ffi")
require("ferry.cdef")
local plugins = require("ferry.plugins")
local poolmod = require("ferry.pool")

local BUILTIN = { "plugins" }

local made = {}

-- A fresh plugin directory with strategies/ and breakers/ in it.
local function tmpdir()
  local d = os.tmpname()
  os.remove(d)
  assert.equal(0, os.execute("mkdir -p " .. d .. "/strategies " .. d .. "/breakers"))
  made[#made + 1] = d
  return d
end

local function write(path, text)
  local f = assert(io.open(path, "w"))
  f:write(text)
  f:close()
end

local function one_proxy_pool()
  local c = ffi.new("struct ferry_proxy")
  c.id, c.weight = 1, 1
  return poolmod.new("p", { { id = 1, display = "http://10.0.0.1:3128", weight = 1, c = c } })
end

describe("plugins", function()
  before_each(function() plugins.reset() end)

  teardown(function()
    for _, d in ipairs(made) do os.execute("rm -rf " .. d) end
  end)

  describe("find", function()
    it("returns the first DIR/KIND/NAME.lua in directory order, and its directory", function()
      local a, b = tmpdir(), tmpdir()
      write(b .. "/strategies/mine.lua", "return {}")
      local path, dir = plugins.find("strategies", "mine", { a, b })
      assert.equal(b .. "/strategies/mine.lua", path)
      assert.equal(b, dir)
      write(a .. "/strategies/mine.lua", "return {}")
      assert.equal(a .. "/strategies/mine.lua", plugins.find("strategies", "mine", { a, b }))
    end)

    it("finds the built-in strategies", function()
      assert.equal("plugins/strategies/health_score.lua",
        plugins.find("strategies", "health_score", BUILTIN))
    end)

    it("returns nil for a missing plugin, a path-like name or an unknown kind", function()
      assert.is_nil(plugins.find("strategies", "nope", BUILTIN))
      assert.is_nil(plugins.find("strategies", "../../etc/passwd", BUILTIN))
      assert.is_nil(plugins.find("strategies", "strategies/random", { "plugins/.." }))
      assert.is_nil(plugins.find("strategies", "", BUILTIN))
      assert.is_nil(plugins.find("strategies", 42, BUILTIN))
      assert.is_nil(plugins.find("../plugins/strategies", "random", BUILTIN))
    end)

    it("does not take a directory named like a plugin for one", function()
      local d = tmpdir()
      assert.equal(0, os.execute("mkdir " .. d .. "/strategies/dir.lua"))
      assert.is_nil(plugins.find("strategies", "dir", { d }))
    end)
  end)

  describe("load", function()
    it("loads a user plugin dropped into a directory and uses it by name", function()
      local d = tmpdir()
      write(d .. "/strategies/first_up.lua", [[
        return {
          name = "first_up", version = "2",
          select = function(pool, req)
            for _, p in ipairs(pool.proxies) do
              if pool:eligible(p, req) then return p end
            end
          end,
        }]])
      local s = assert(plugins.load("strategies", "first_up", { d, "plugins" }))
      assert.equal("first_up", s.name)
      assert.equal("2", s.version)
      local pool = one_proxy_pool()
      assert.equal(pool.proxies[1], s.select(pool, { tried = {} }))
      assert.is_nil(s.select(pool, { tried = { [1] = true } }))
    end)

    it("lets a user directory replace a built-in plugin", function()
      local d = tmpdir()
      write(d .. "/strategies/round_robin.lua",
        'return { name = "round_robin", version = "user", select = function() end }')
      assert.equal("user", plugins.load("strategies", "round_robin", { d, "plugins" }).version)
      assert.equal("1", plugins.load("strategies", "round_robin", { "plugins", d }).version)
    end)

    it("keeps an optional init", function()
      local d = tmpdir()
      write(d .. "/strategies/with_init.lua", [[
        return { name = "with_init", version = "1",
                 init = function(pool) pool.state.ready = true end,
                 select = function() end }]])
      local s = assert(plugins.load("strategies", "with_init", { d }))
      local pool = one_proxy_pool()
      s.init(pool)
      assert.is_true(pool.state.ready)
    end)

    it("caches per file until reset, then reads the file again", function()
      local d = tmpdir()
      local path = d .. "/strategies/cached.lua"
      write(path, 'return { name = "cached", version = "1", select = function() end }')
      local first = assert(plugins.load("strategies", "cached", { d }))
      write(path, 'return { name = "cached", version = "2", select = function() end }')
      assert.equal(first, plugins.load("strategies", "cached", { d }))
      plugins.reset()
      local again = assert(plugins.load("strategies", "cached", { d }))
      assert.not_equal(first, again)
      assert.equal("2", again.version)
    end)

    it("runs a plugin in its own environment with the normal globals", function()
      local d = tmpdir()
      write(d .. "/strategies/globals.lua", [[
        leaked_by_plugin = true
        local bit = require("bit")
        return { name = "globals", version = "1",
                 select = function() return bit.band(6, 3), string.rep("x", 2), math.max(1, 2) end }]])
      local s = assert(plugins.load("strategies", "globals", { d }))
      assert.is_nil(rawget(_G, "leaked_by_plugin"))
      local a, b, c = s.select()
      assert.same({ 2, "xx", 2 }, { a, b, c })
    end)

    it("names the file and line of a syntax error", function()
      local d = tmpdir()
      write(d .. "/strategies/broken.lua", "return {")
      local p, err = plugins.load("strategies", "broken", { d })
      assert.is_nil(p)
      assert.matches("strategies/broken%.lua:1:", err)
    end)

    it("names the file when the plugin returns garbage", function()
      local d = tmpdir()
      write(d .. "/strategies/garbage.lua", "return 42")
      write(d .. "/strategies/nothing.lua", "local x = 1")
      write(d .. "/strategies/noselect.lua", 'return { name = "noselect", version = "1" }')
      write(d .. "/strategies/badselect.lua",
        'return { name = "badselect", version = "1", select = "first" }')
      for _, name in ipairs { "garbage", "nothing", "noselect", "badselect" } do
        local p, err = plugins.load("strategies", name, { d })
        assert.is_nil(p)
        assert.equal(d .. "/strategies/" .. name ..
          ".lua: plugin must return a table with a select function", err)
      end
    end)

    it("names the file when the plugin raises while loading", function()
      local d = tmpdir()
      write(d .. "/strategies/raises.lua", "error('at load')")
      write(d .. "/strategies/raises0.lua", "error('no position', 0)")
      local _, e1 = plugins.load("strategies", "raises", { d })
      assert.matches("^" .. d:gsub("%p", "%%%0") .. "/strategies/raises%.lua:1: at load$", e1)
      local _, e2 = plugins.load("strategies", "raises0", { d })
      assert.equal(d .. "/strategies/raises0.lua: no position", e2)
    end)

    it("rejects a plugin whose name does not match its file", function()
      local d = tmpdir()
      write(d .. "/strategies/misnamed.lua",
        'return { name = "other", version = "1", select = function() end }')
      write(d .. "/strategies/unnamed.lua", 'return { version = "1", select = function() end }')
      local p, err = plugins.load("strategies", "misnamed", { d })
      assert.is_nil(p)
      assert.matches('misnamed%.lua: plugin name "other" does not match its file name "misnamed"',
        err)
      local _, e2 = plugins.load("strategies", "unnamed", { d })
      assert.matches("unnamed%.lua: plugin must have a name string", e2)
    end)

    it("requires a version string and a function init", function()
      local d = tmpdir()
      write(d .. "/strategies/noversion.lua",
        'return { name = "noversion", version = 1, select = function() end }')
      write(d .. "/strategies/badinit.lua",
        'return { name = "badinit", version = "1", init = true, select = function() end }')
      local _, e1 = plugins.load("strategies", "noversion", { d })
      assert.matches("noversion%.lua: plugin must have a version string", e1)
      local _, e2 = plugins.load("strategies", "badinit", { d })
      assert.matches("badinit%.lua: plugin init must be a function", e2)
    end)

    it("does not cache a failed load", function()
      local d = tmpdir()
      local path = d .. "/strategies/later.lua"
      write(path, "return {")
      assert.is_nil(plugins.load("strategies", "later", { d }))
      write(path, 'return { name = "later", version = "1", select = function() end }')
      assert.equal("later", plugins.load("strategies", "later", { d }).name)
    end)

    it("loads breakers by should_open, without asking for select", function()
      local d = tmpdir()
      write(d .. "/breakers/streak.lua",
        'return { name = "streak", version = "1", should_open = function() return true end }')
      local b = assert(plugins.load("breakers", "streak", { d }))
      assert.equal("streak", b.name)
      assert.is_true(b.should_open())
    end)

    it("requires should_open of a breaker, and check and defaults of the right type", function()
      local d = tmpdir()
      write(d .. "/breakers/junk.lua", 'return "junk"')
      write(d .. "/breakers/noopen.lua", 'return { name = "noopen", version = "1" }')
      write(d .. "/breakers/badopen.lua",
        'return { name = "badopen", version = "1", should_open = true }')
      write(d .. "/breakers/badcheck.lua", 'return { name = "badcheck", version = "1", ' ..
        'should_open = function() end, check = "strict" }')
      write(d .. "/breakers/baddefaults.lua", 'return { name = "baddefaults", version = "1", ' ..
        'should_open = function() end, defaults = 5 }')
      for _, name in ipairs { "junk", "noopen", "badopen" } do
        local p, err = plugins.load("breakers", name, { d })
        assert.is_nil(p)
        assert.equal(d .. "/breakers/" .. name ..
          ".lua: plugin must return a table with a should_open function", err)
      end
      local _, e1 = plugins.load("breakers", "badcheck", { d })
      assert.equal(d .. "/breakers/badcheck.lua: plugin check must be a function", e1)
      local _, e2 = plugins.load("breakers", "baddefaults", { d })
      assert.equal(d .. "/breakers/baddefaults.lua: plugin defaults must be a table", e2)
      write(d .. "/breakers/badquiet.lua", 'return { name = "badquiet", version = "1", ' ..
        'should_open = function() end, ignores_successes = "yes" }')
      local _, e3 = plugins.load("breakers", "badquiet", { d })
      assert.equal(d .. "/breakers/badquiet.lua: plugin ignores_successes must be a boolean", e3)
    end)

    it("accepts the built-in breakers", function()
      for _, name in ipairs { "consecutive", "error_rate" } do
        local b = assert(plugins.load("breakers", name, BUILTIN))
        assert.equal(name, b.name)
        assert.is_function(b.should_open)
        assert.is_function(b.check)
        assert.is_table(b.defaults)
        -- Neither opens on a success: ferry skips asking for those.
        assert.is_true(b.ignores_successes)
        assert.is_false(b.should_open(b.defaults, { consecutive_failures = 1e6 },
          { ok = true }, function() return 0, 1e6 end))
      end
    end)

    it("says where it looked for a missing plugin", function()
      local p, err = plugins.load("strategies", "nope", { "/x", "plugins" })
      assert.is_nil(p)
      assert.equal('no plugin "nope" in /x/strategies/, plugins/strategies/', err)
    end)

    it("rejects an unknown kind", function()
      local p, err = plugins.load("transforms", "random", BUILTIN)
      assert.is_nil(p)
      assert.equal('unknown plugin kind "transforms"', err)
    end)
  end)

  describe("list", function()
    it("lists the built-in strategies, sorted", function()
      assert.same({ "hash", "health_score", "latency", "least_conn", "least_errors", "random",
                    "round_robin", "sticky", "weighted_random" }, plugins.list("strategies", BUILTIN))
      assert.same({ "consecutive", "error_rate" }, plugins.list("breakers", BUILTIN))
    end)

    it("merges directories, names each plugin once, and skips what is not a plugin", function()
      local d = tmpdir()
      write(d .. "/strategies/zeta.lua", "return {}")
      write(d .. "/strategies/alpha.lua", "return {}")
      write(d .. "/strategies/random.lua", "return {}")
      write(d .. "/strategies/notes.txt", "")
      write(d .. "/strategies/bad-name.lua", "return {}")
      assert.equal(0, os.execute("mkdir " .. d .. "/strategies/sub.lua"))
      local names = plugins.list("strategies", { d, "plugins", "/nonexistent/dir" })
      assert.same({ "alpha", "hash", "health_score", "latency", "least_conn", "least_errors",
                    "random", "round_robin", "sticky", "weighted_random", "zeta" }, names)
    end)

    it("lists each kind separately, and nothing for an empty directory", function()
      local d = tmpdir()
      write(d .. "/breakers/streak.lua", "return {}")
      assert.same({ "streak" }, plugins.list("breakers", { d }))
      assert.same({}, plugins.list("strategies", { d }))
      assert.same({}, plugins.list("strategies", {}))
    end)

    it("rejects an unknown kind", function()
      local names, err = plugins.list("transforms", BUILTIN)
      assert.is_nil(names)
      assert.equal('unknown plugin kind "transforms"', err)
    end)
  end)
end)
