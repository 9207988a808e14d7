-- tls = { ... } of listeners and https:// proxies, and the https:// scheme.
local url = require("ferry.url")
local tls_opts = require("ferry.tls_opts")
local config = require("ferry.config")
local inventory = require("ferry.inventory")

local function config_err(src)
  local cfg, err = config.load_string(src, "cfg.lua")
  assert.is_nil(cfg)
  return err
end

describe("https:// proxies", function()
  it("parse with credentials and port 443 by default", function()
    local p = assert(url.parse("https://u:p%40w@proxy.example.net"))
    assert.same({ "https", "proxy.example.net", 443, "u", "p@w" }, { p.scheme, p.host, p.port,
      p.user, p.pass })
    assert.equal("https://***@proxy.example.net:443", url.display(p))
  end)

  it("verify against the system store by default", function()
    assert.same({ verify = true }, tls_opts.proxy(nil, "https"))
    assert.is_nil(tls_opts.proxy(nil, "http"))
    assert.same({ verify = false, sni = "proxy.example.net" },
      tls_opts.proxy({ verify = false, sni = "proxy.example.net" }, "https"))
  end)

  it("refuse tls tables they cannot honour, naming the field", function()
    local cases = {
      { { verify = true }, "http", "tls is only for https:// proxies" },
      { "yes", "https", "tls must be a table" },
      { { verify = 1 }, "https", "tls: verify must be true or false" },
      { { cert = "x" }, "https", 'tls: unknown field "cert"' },
      { { ca = "/nonexistent/ca.pem" }, "https", "tls: ca /nonexistent/ca.pem: " },
      { { sni = "10.0.0.1" }, "https", "tls: sni must be a host name" },
    }
    for _, c in ipairs(cases) do
      local v, err = tls_opts.proxy(c[1], c[2])
      assert.is_nil(v)
      assert.equal(c[3], err:sub(1, #c[3]))
    end
  end)

  it("take the same checks through the inventory API", function()
    local px = assert(inventory.parse_proxy("https://127.0.0.1:8443", { tls = { verify = false } }))
    assert.same({ verify = false }, px.tls)
    local _, err = inventory.parse_proxy("http://127.0.0.1:8080", { tls = { verify = false } })
    assert.equal("tls is only for https:// proxies", err)
  end)
end)

describe("TLS listeners", function()
  it("need a cert and a key that can be read", function()
    assert.equal("tls: key is required", select(2, tls_opts.listener({ cert = "/etc/hostname" })))
    assert.matches("^tls: cert /nonexistent: ",
      select(2, tls_opts.listener({ cert = "/nonexistent", key = "/etc/hostname" })))
  end)

  it("are refused on protocols other than http", function()
    assert.matches('tls: only for protocol = "http"', config_err([[
listen { addr = "127.0.0.1:1080", protocol = "socks5", tls = { cert = "a", key = "b" } }
route(function() return "direct" end)
]]))
  end)

  it("refuse tls on a proxy that is not https://", function()
    assert.matches("proxies%[1%]: tls is only for https:// proxies", config_err([[
pool "p" { proxies = { { url = "http://127.0.0.1:3128", tls = { verify = false } } } }
route(function() return "p" end)
]]))
  end)
end)

describe("exchange origination settings", function()
  it("default to upgrade_tls off and a verified system store", function()
    local cfg = assert(config.load_string('exchange "e" { hosts = { "a.example" }, pool = "direct" }',
      "cfg.lua"))
    assert.is_false(cfg.exchanges[1].upgrade_tls)
    assert.same({ verify = true }, cfg.exchanges[1].tls)
    assert.same({ verify = true }, tls_opts.origin(nil))
  end)

  it("take upgrade_tls, verify, sni and a readable ca", function()
    local cfg = assert(config.load_string('exchange "e" { hosts = { "a.example" }, pool = "direct",' ..
      ' upgrade_tls = true, tls = { verify = false, sni = "b.example", ca = "/dev/null" } }',
      "cfg.lua"))
    assert.is_true(cfg.exchanges[1].upgrade_tls)
    assert.same({ verify = false, sni = "b.example", ca = "/dev/null" }, cfg.exchanges[1].tls)
  end)

  it("refuse what they cannot honour, with FERRY-0190 for tls", function()
    local function ex(fields)
      return config_err('exchange "e" { hosts = { "a.example" }, pool = "direct", ' .. fields .. ' }')
    end
    assert.matches("upgrade_tls must be a boolean", ex('upgrade_tls = "yes"'))
    local e = ex('tls = { ca = "/nonexistent/ca.pem" }')
    assert.matches("tls: ca /nonexistent/ca.pem", e, 1, true)
    assert.matches("FERRY-0190", e, 1, true)
    assert.matches('unknown field "cert"', ex('tls = { cert = "x" }'), 1, true)
    assert.matches("sni must be a host name", ex('tls = { sni = "1.2.3.4" }'), 1, true)
    assert.matches("verify must be true or false", ex('tls = { verify = 1 }'), 1, true)
  end)
end)
