-- One validator of proxy entries (lua/ferry/proxy_entry.lua): the config
-- and the inventory API refuse the same bad entries with the same
-- message.  The config path is config.load_string; the inventory path is
-- what POST /api/v1/proxies and the console's proxy.add run before they
-- look up the pool: inventory.check_fields, then inventory.parse_proxy.
local config = require("ferry.config")
local inventory = require("ferry.inventory")
local proxy_entry = require("ferry.proxy_entry")

local PREFIX = 'cfg.lua:1: pool "p": proxies[1]: '

-- Lua source of a value, for the config text.
local function lua_of(v)
  if type(v) == "string" then return string.format("%q", v) end
  if type(v) == "table" then
    local parts = {}
    for k, x in pairs(v) do parts[#parts + 1] = string.format("[%q] = %s", k, lua_of(x)) end
    table.sort(parts)
    return "{ " .. table.concat(parts, ", ") .. " }"
  end
  return tostring(v)
end

local function config_error(entry)
  local cfg, err = config.load_string('pool "p" { proxies = { ' .. lua_of(entry) .. " } }",
    "cfg.lua")
  assert.is_nil(cfg)
  assert.equal(PREFIX, err:sub(1, #PREFIX))
  return err:sub(#PREFIX + 1)
end

local function inventory_error(entry)
  local body = { pool = "p" }
  for k, v in pairs(entry) do body[k] = v end
  local f, e = inventory.check_fields(body)
  assert.is_not_nil(f, e and e.message)
  local px, err = inventory.parse_proxy(f.url, f.opts)
  assert.is_nil(px)
  return err
end

local BAD = {
  { url = "ftp://h:1" },
  { url = "http://" },
  { url = "http://h:99999" },
  { url = 42 },
  { url = "http://h:1/" .. string.rep("x", 2100) },
  { url = "http://h:1", id = "" },
  { url = "http://h:1", id = "a b" },
  { url = "http://h:1", id = "a\r\nSet-Cookie: x" },
  { url = "http://h:1", id = string.rep("i", 65) },
  { url = "http://h:1", id = "123" },
  { url = "http://h:1", id = 7 },
  { url = "http://h:1", weight = 0 },
  { url = "http://h:1", weight = 1001 },
  { url = "http://h:1", weight = 1.5 },
  { url = "http://h:1", weight = "3" },
  { url = "http://h:1", region = "" },
  { url = "http://h:1", region = "eu\nwest" },
  { url = "http://h:1", region = string.rep("r", 65) },
  { url = "http://h:1", region = 1 },
}

describe("proxy entries", function()
  it("are refused by the config and the inventory with the same message", function()
    for _, entry in ipairs(BAD) do
      local c, i = config_error(entry), inventory_error(entry)
      assert.equal(c, i, lua_of(entry))
      local field = c:match("^(%a+): ")
      assert.is_truthy(field and entry[field] ~= nil, c)
    end
  end)

  it("are taken by both when they are good, with the same fields", function()
    local entry = { url = "socks5://u:p@127.0.0.1:1080", id = "edge-1/a@b", weight = 7,
                    region = "eu west" }
    local cfg = assert(config.load_string('pool "p" { proxies = { ' .. lua_of(entry) .. " } }",
      "cfg.lua"))
    local a = cfg.pools.p.proxies[1]
    local b = assert(inventory.parse_proxy(entry.url, { id = entry.id, weight = entry.weight,
      region = entry.region }))
    for _, k in ipairs { "scheme", "host", "port", "user", "url", "id", "weight", "region",
                         "display" } do
      assert.equal(a[k], b[k], k)
    end
    assert.equal(1, assert(inventory.parse_proxy("http://h:1")).weight)
    assert.is_true(b.runtime)
  end)

  it("are checked field by field from one table of rules", function()
    for _, k in ipairs(proxy_entry.ORDER) do
      assert.is_function(proxy_entry.FIELDS[k].check, k)
    end
    for k in pairs(proxy_entry.FIELDS) do
      assert.is_true(proxy_entry.CONFIG[k] or proxy_entry.INVENTORY[k] or
        proxy_entry.BACKEND_CONFIG[k] or false, k)
    end
    -- headers are a config field only (the store keeps id, weight, region).
    assert.equal('unknown field "headers" (known: url, id, weight, region, tls)',
      select(2, proxy_entry.validate({ url = "http://h:1", headers = {} }, proxy_entry.INVENTORY)))
    assert.matches('^headers: ', select(2, proxy_entry.validate(
      { url = "http://h:1", headers = { ["a b"] = "v" } }, proxy_entry.CONFIG)))
  end)
end)
