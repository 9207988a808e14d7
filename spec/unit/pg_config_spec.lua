-- The fleet's config fields (lua/ferry/fleet_config.lua, through
-- config.lua): store { postgres, resync, queue, timeout } and
-- node { id, advertise, heartbeat }; errors carry file:line and a code
-- and never quote the connection string.
local config = require("ferry.config")
local fleet_config = require("ferry.fleet_config")

local function load(text)
  local path = os.tmpname()
  local f = assert(io.open(path, "w"))
  f:write('listen { name = "main", addr = "127.0.0.1:1" }\n' .. text .. "\n")
  f:close()
  local cfg, err = config.load(path, {})
  os.remove(path)
  return cfg, err, path
end

describe("store { postgres } and node { }", function()
  it("reads a fleet config", function()
    local cfg, err = load('store { postgres = "host=db dbname=ferry password=x", resync = 10, ' ..
      'queue = 500, timeout = 2, key = "' .. string.rep("ab", 32) .. '" }\n' ..
      'node { id = "fra-1", advertise = "10.0.0.5:9090", heartbeat = 1.5 }')
    assert.is_nil(err)
    assert.equal("host=db dbname=ferry password=x", cfg.store.postgres)
    assert.equal(10, cfg.store.resync)
    assert.equal(500, cfg.store.queue)
    assert.equal(2, cfg.store.timeout)
    assert.equal("function", type(cfg.store.key))
    assert.same({ id = "fra-1", advertise = "10.0.0.5:9090", heartbeat = 1.5 }, cfg.node)
  end)

  it("takes a postgresql:// URI and leaves the fleet off without postgres", function()
    local cfg = assert(load('store { postgres = "postgresql://u:p@db:5432/ferry?sslmode=require" }'))
    assert.equal("postgresql://u:p@db:5432/ferry?sslmode=require", cfg.store.postgres)
    cfg = assert(load('store { path = "x.db" }'))
    assert.is_nil(cfg.store.postgres)
    assert.is_nil(cfg.node)
  end)

  for _, c in ipairs {
    { 'store { postgres = true }', "FERRY-0250" },
    { 'store { postgres = "" }', "FERRY-0250" },
    { 'store { postgres = "pw=Secret-1\\nhost=x" }', "FERRY-0250" },
    { 'store { postgres = "Secret-1 words only" }', "FERRY-0250" },
    { 'store { postgres = "host=x", queue = 1.5 }', "FERRY-0251" },
    { 'store { postgres = "host=x", timeout = 0 }', "FERRY-0251" },
    { 'store { postgres = "host=x", resync = "often" }', "FERRY-0251" },
    { 'store { path = "x.db", resync = 10 }', "FERRY-0251" },
    { 'store { postgres = "host=x", colour = 1 }', "unknown field" },
    { 'node { id = string.rep("a", 65) }', "FERRY-0252" },
    { 'node { id = "a/b" }', "FERRY-0252" },
    { 'node { advertise = "10.0.0.5" }', "FERRY-0253" },
    { 'node { advertise = 9090 }', "FERRY-0253" },
    { 'node { heartbeat = -1 }', "FERRY-0254" },
    { 'node "x"', "FERRY-0254" },
    { 'node { id = "a" }\nnode { id = "b" }', "FERRY-0254" },
  } do
    it("refuses " .. c[1]:gsub("\n", " "), function()
      local cfg, err, path = load(c[1])
      assert.is_nil(cfg)
      assert.truthy(err:find(c[2], 1, true), err)
      assert.truthy(err:find(path .. ":%d+:"), err)
      assert.falsy(err:find("Secret-1", 1, true), err)
    end)
  end

  it("checks node fields on their own", function()
    assert.same({}, fleet_config.node({}))
    local n, err = fleet_config.node({ id = "" })
    assert.is_nil(n)
    assert.truthy(err:find("FERRY-0252", 1, true))
  end)
end)
