-- The `cache` field of pools, `direct` and listeners (ferry.config):
-- sizes, defaults and refusals.
local config = require("ferry.config")

local function load(cache)
  return config.load_string([[
listen { name = "l", addr = "127.0.0.1:18080", cache = ]] .. cache .. [[ }
direct { cache = ]] .. cache .. [[ }
pool "p" { proxies = { "http://10.0.0.1:3128" }, cache = ]] .. cache .. [[ }
]], "cfg.lua")
end

describe("cache = { ... }", function()
  it("reads sizes as bytes or KB/MB/GB strings, with defaults", function()
    local cfg = assert(load('{ size = "100MB", max_object = "1MB", ttl = 300 }'))
    local want = { size = 100 * 1024 * 1024, max_object = 1024 * 1024, ttl = 300,
                   lock_timeout = 5 }
    assert.same(want, cfg.pools.p.cache)
    assert.same(want, cfg.direct.cache)
    assert.same(want, cfg.listeners[1].cache)
    cfg = assert(load("{}"))
    assert.same({ size = 100 * 1024 * 1024, max_object = 1024 * 1024, ttl = 0,
                  lock_timeout = 5 }, cfg.pools.p.cache)
    cfg = assert(load('{ size = 65536, max_object = "16kb", lock_timeout = 0.5 }'))
    assert.same({ size = 65536, max_object = 16384, ttl = 0, lock_timeout = 0.5 },
      cfg.pools.p.cache)
    assert.equal(3 * 1024 ^ 3, config.parse_size("x", "size", "3 GB"))
    cfg = assert(load("false"))
    assert.is_nil(cfg.pools.p.cache)
  end)

  it("refuses what is not a cache, with its code", function()
    local cases = {
      { '{ size = "100XB" }', "FERRY-0245" },
      { '{ size = "-1MB" }', "FERRY-0245" },
      { "{ size = 0 }", "FERRY-0245" },
      { '{ size = "65GB" }', "FERRY-0245" },
      { "{ size = {} }", "FERRY-0245" },
      { '"100MB"', "FERRY-0246" },
      { '{ size = "1MB", max_object = "2MB" }', "FERRY-0247" },
      { "{ ttl = -1 }", "ttl must be between" },
      { "{ lock_timeout = 0 }", "lock_timeout must be between" },
      { "{ sizes = 1 }", "sizes" },
    }
    for _, case in ipairs(cases) do
      local cfg, err = load(case[1])
      assert.is_nil(cfg, case[1])
      assert.truthy(tostring(err):find(case[2], 1, true), case[1] .. ": " .. tostring(err))
    end
  end)
end)
