-- The broker's C surface through FFI, in build/libferry.so: the proxy URL
-- with credentials, leases on the active counter, and results reported
-- from outside the data plane.
local ffi = require("ffi")
local url = require("ferry.url")
require("ferry.cdef")

ffi.cdef[[
struct ev_loop;
struct ev_loop *ev_default_loop(unsigned int flags);
extern struct ev_loop *loop;
]]

local core = ffi.load("./build/libferry.so")
core.loop = core.ev_default_loop(0)

local err = ffi.new("const char *[1]")
local buf = ffi.new("char[512]")

local function url_of(p, room)
  local n = core.ferry_proxy_url(p, buf, room or 512)
  if n < 0 then return nil end
  return ffi.string(buf, n)
end

local function new(key, scheme, host, port, user, pass)
  local p = core.ferry_proxy_new(key, scheme, host, port, user, pass, nil, 1, err)
  assert(p ~= nil, "ferry_proxy_new failed")
  return p
end

describe("ferry_proxy_url", function()
  it("gives the URL with credentials, percent-encoded where needed", function()
    assert.equal("http://10.1.0.1:3128", url_of(new("b-1", 1, "10.1.0.1", 3128)))
    assert.equal("socks5://user:pass@10.1.0.2:1080",
      url_of(new("b-2", 2, "10.1.0.2", 1080, "user", "pass")))
    local odd = url_of(new("b-3", 1, "proxy.example", 8080, "me@corp", "p:w/ #?%é"))
    assert.equal("http://me%40corp:p%3Aw%2F%20%23%3F%25%C3%A9@proxy.example:8080", odd)
    -- What ferry.url reads back is what was configured.
    local back = url.parse(odd)
    assert.same({ "me@corp", "p:w/ #?%é", "proxy.example", 8080 },
      { back.user, back.pass, back.host, back.port })
    assert.equal("socks5://only@[::1]:1080", url_of(new("b-4", 2, "::1", 1080, "only", "")))
  end)

  it("names every scheme of the connector table, and reads back as configured", function()
    local cdef = require("ferry.cdef")
    for _, u in ipairs { "https://u:pw@10.1.0.7:8443", "socks4://ident@10.1.0.8:1080",
                         "socks4a://10.1.0.9:1081" } do
      local p = url.parse(u)
      local got = url_of(new("b-s-" .. p.scheme, cdef.SCHEME[p.scheme], p.host, p.port, p.user,
        p.pass))
      assert.equal(u, got)
      assert.same(p, url.parse(got))
    end
  end)

  it("follows a reload that changes the credentials", function()
    new("b-5", 1, "10.1.0.5", 3128, "old", "secret1")
    local p = new("b-5", 1, "10.1.0.5", 3128, "new", "secret2")
    assert.equal("http://new:secret2@10.1.0.5:3128", url_of(p))
  end)

  it("fails cleanly when the buffer is too small", function()
    local p = new("b-6", 2, "10.1.0.6", 1080, ("u"):rep(100), ("p"):rep(100))
    assert.is_nil(url_of(p, 64))
    assert.is_nil(url_of(p, 8))
    assert.equal(-1, core.ferry_proxy_url(nil, buf, 512))
  end)
end)

describe("ferry_proxy_lease", function()
  it("moves the active counter, never below zero", function()
    local p = new("b-7", 1, "10.1.0.7", 3128)
    assert.equal(0, core.ferry_proxy_lease(p.id, 1))
    core.ferry_proxy_lease(p.id, 1)
    assert.equal(2, p.active)
    core.ferry_proxy_lease(p.id, -1)
    core.ferry_proxy_lease(p.id, -1)
    core.ferry_proxy_lease(p.id, -1)
    assert.equal(0, p.active)
    assert.equal(-1, core.ferry_proxy_lease(0, 1))
    assert.equal(-1, core.ferry_proxy_lease(4000000000, 1))
  end)
end)

describe("ferry_proxy_report", function()
  it("feeds the proxy and its (proxy, exchange) pair like real traffic", function()
    local p = new("b-8", 2, "127.0.0.1", 9)
    local ex = core.ferry_exchange_id("broker-spec-ex")
    assert.equal(0, core.ferry_proxy_report(p.id, ex, 1, -1, 40))
    assert.equal(1, tonumber(p.successes))
    assert.is_true(p.latency_ewma_ms > 0)
    local x = core.ferry_pxstate_get(p.id, ex)
    assert.equal(1, tonumber(x.successes))
    assert.is_true(x.latency_ewma_ms > 0)
    -- Timeouts step the hysteresis counter down: down after `fall` (3).
    for _ = 1, 3 do core.ferry_proxy_report(p.id, ex, 0, 1, -1) end
    assert.equal(3, tonumber(p.failures))
    assert.equal(3, tonumber(p.fail_kind[1]))
    assert.equal(3, x.consecutive_failures)
    assert.equal(1, p.flags % 2) -- FERRY_PROXY_DOWN
    -- Another exchange's pair saw none of it.
    local y = core.ferry_pxstate_get(p.id, core.ferry_exchange_id("broker-spec-other"))
    assert.equal(0, tonumber(y.failures))
  end)

  it("takes a proxy down at once on a refused connect; odd kinds count as resets", function()
    local p = new("b-9", 2, "127.0.0.1", 10)
    core.ferry_proxy_report(p.id, 0, 0, 0, -1)
    assert.equal(1, p.flags % 2)
    local q = new("b-10", 2, "127.0.0.1", 11)
    core.ferry_proxy_report(q.id, 0, 0, 99, 0 / 0)
    assert.equal(1, tonumber(q.fail_kind[5]))
    assert.equal(-1, core.ferry_proxy_report(0, 0, 1, -1, 1))
  end)
end)
