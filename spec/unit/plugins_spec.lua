local plugins = require("ferry.plugins")

local function tmpdir()
  local d = os.tmpname()
  os.remove(d)
  os.execute("mkdir -p " .. d .. "/strategies")
  return d
end

local function write(path, text)
  local f = assert(io.open(path, "w"))
  f:write(text)
  f:close()
end

describe("plugins", function()
  before_each(function() plugins.reset() end)

  it("finds a user plugin dropped into a plugin directory, before the built-ins", function()
    local d = tmpdir()
    write(d .. "/strategies/first.lua",
      'return { name = "first", version = "2", select = function(pool) return pool.proxies[1] end }')
    write(d .. "/strategies/round_robin.lua",
      'return { name = "round_robin", version = "user", select = function() end }')
    local p = assert(plugins.load("strategies", "first", { d, "plugins" }))
    assert.equal("2", p.version)
    assert.equal("user", plugins.load("strategies", "round_robin", { d, "plugins" }).version)
    assert.equal("1", plugins.load("strategies", "round_robin", { "plugins" }).version)
  end)

  it("names the file when a plugin does not load or returns garbage", function()
    local d = tmpdir()
    write(d .. "/strategies/broken.lua", "return {")
    write(d .. "/strategies/garbage.lua", "return 42")
    write(d .. "/strategies/raises.lua", "error('at load')")
    write(d .. "/strategies/misnamed.lua",
      'return { name = "other", version = "1", select = function() end }')
    local _, e1 = plugins.load("strategies", "broken", { d })
    assert.matches("broken%.lua:1:", e1)
    local _, e2 = plugins.load("strategies", "garbage", { d })
    assert.matches("garbage%.lua: plugin must return a table with a select function", e2)
    local _, e3 = plugins.load("strategies", "raises", { d })
    assert.matches("raises%.lua.-at load", e3)
    local _, e4 = plugins.load("strategies", "misnamed", { d })
    assert.matches('plugin name "other" does not match its file name "misnamed"', e4)
  end)

  it("says where it looked for a missing plugin", function()
    local p, err = plugins.load("strategies", "nope", { "plugins" })
    assert.is_nil(p)
    assert.matches('no plugin "nope" in plugins/strategies', err)
    assert.is_nil(plugins.find("strategies", "../../etc/passwd", { "plugins" }))
  end)
end)
