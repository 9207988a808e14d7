-- The top-level tls { ca_cert, ca_key, leaf_cache } of ferry's CA, as the
-- config validates it (the core checks the files' contents: spec 37).
local config = require("ferry.config")
local tls_opts = require("ferry.tls_opts")

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

describe("tls { ca_cert, ca_key }", function()
  local cert, key

  setup(function()
    cert, key = touch("ca.crt"), touch("ca.key")
  end)

  teardown(function()
    os.remove(cert)
    os.remove(key)
    os.remove(dir)
  end)

  it("is absent by default, and leaf_cache defaults to 1000", function()
    local cfg = assert(load(""))
    assert.is_nil(cfg.tls)
    cfg = assert(load(string.format("tls { ca_cert = %q, ca_key = %q }", cert, key)))
    assert.equal(cert, cfg.tls.ca_cert)
    assert.equal(key, cfg.tls.ca_key)
    assert.equal(1000, cfg.tls.leaf_cache)
    assert.equal(1, cfg.tls.line)
    cfg = assert(load(string.format("tls { ca_cert = %q, ca_key = %q, leaf_cache = 5 }", cert,
      key)))
    assert.equal(5, cfg.tls.leaf_cache)
  end)

  it("resolves relative paths against the config's directory", function()
    local t = assert(tls_opts.ca({ ca_cert = "a.crt", ca_key = "a.key" },
      function(p) return p == "a.crt" and cert or key end))
    assert.same({ cert, key }, { t.ca_cert, t.ca_key })
  end)

  it("refuses what it cannot use, at the statement's line", function()
    local cases = {
      { string.format("tls { ca_cert = %q }", cert), "ca_cert and ca_key go together" },
      { string.format("tls { ca_key = %q }", key), "ca_cert and ca_key go together" },
      { string.format("tls { ca_cert = %q, ca_key = %q }", cert, "/nonexistent/k"),
        "ca_key /nonexistent/k: No such file or directory [FERRY-0180]" },
      { string.format("tls { ca_cert = %q, ca_key = %q }", "/nonexistent/c", key),
        "ca_cert /nonexistent/c: No such file or directory [FERRY-0180]" },
      { string.format("tls { ca_cert = 1, ca_key = %q }", key), "ca_cert must be a file path" },
      { string.format("tls { ca_cert = %q, ca_key = %q, leaf_cache = 0 }", cert, key),
        "leaf_cache must be an integer from 1 to 100000" },
      { string.format("tls { ca_cert = %q, ca_key = %q, leaf_cache = 1.5 }", cert, key),
        "leaf_cache must be an integer" },
      { string.format("tls { ca_cert = %q, ca_key = %q, leaf_cache = 100001 }", cert, key),
        "leaf_cache must be an integer" },
      { string.format("tls { ca_cert = %q, ca_key = %q, cert = 'x' }", cert, key),
        'unknown field "cert"' },
      { "tls 'x'", "tls must be a table" },
      { string.format("\ntls { ca_cert = %q, ca_key = %q }\ntls { ca_cert = %q, ca_key = %q }",
        cert, key, cert, key), "cfg.lua:3: tls: tls is declared twice" },
    }
    for _, c in ipairs(cases) do
      local cfg, err = load(c[1])
      assert.is_nil(cfg, c[1])
      assert.truthy(err:find(c[2], 1, true), c[1] .. " -> " .. tostring(err))
      assert.truthy(err:find("^cfg.lua:%d+: tls: "), err)
      assert.falsy(err:find("tls: tls: ", 1, true), err)
    end
  end)
end)
