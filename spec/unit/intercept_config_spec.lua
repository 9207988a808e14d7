-- An exchange's intercept = true|false, as the config validates it: a
-- boolean, false by default, and only with ferry's CA in the same config
-- (FERRY-6020).  What interception does: specs 38 and 43.
local config = require("ferry.config")

local dir = os.tmpname()

local function touch(name)
  local f = assert(io.open(dir .. "-" .. name, "w"))
  f:write("x\n")
  f:close()
  return dir .. "-" .. name
end

local function load(src)
  return config.load_string(src, "cfg.lua")
end

describe("exchange intercept", function()
  local cert, key, ca

  setup(function()
    cert, key = touch("ca.crt"), touch("ca.key")
    ca = string.format("tls { ca_cert = %q, ca_key = %q }\n", cert, key)
  end)

  teardown(function()
    os.remove(cert)
    os.remove(key)
    os.remove(dir)
  end)

  it("is false by default and true when asked, with a CA", function()
    local cfg = assert(load('exchange "a" { hosts = { "a.test" }, pool = "direct" }'))
    assert.is_false(cfg.exchanges[1].intercept)
    cfg = assert(load(ca .. 'exchange "a" { hosts = { "a.test" }, pool = "direct", ' ..
      'intercept = true }'))
    assert.is_true(cfg.exchanges[1].intercept)
    cfg = assert(load('exchange "a" { hosts = { "a.test" }, pool = "direct", intercept = false }'))
    assert.is_false(cfg.exchanges[1].intercept)
  end)

  it("refuses intercept = true without ferry's CA, with its code and line", function()
    local cfg, err = load('\nexchange "a" { hosts = { "a.test" }, pool = "direct", ' ..
      'intercept = true }')
    assert.is_nil(cfg)
    assert.is_truthy(err:find("cfg.lua:2:", 1, true), err)
    assert.is_truthy(err:find("FERRY-6020", 1, true), err)
    assert.is_truthy(err:find("ferry ca init", 1, true), err)
  end)

  it("refuses anything but a boolean", function()
    for _, v in ipairs({ '"yes"', "1", "{}" }) do
      local cfg, err = load(ca .. 'exchange "a" { hosts = { "a.test" }, pool = "direct", ' ..
        'intercept = ' .. v .. ' }')
      assert.is_nil(cfg)
      assert.is_truthy(err:find("intercept must be true or false", 1, true), err)
    end
  end)
end)
