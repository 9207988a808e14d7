-- The reverse proxy's config: listen { protocol = "reverse" }, backend
-- pools, backend URLs, and the route helpers.
local config = require("ferry.config")
local url = require("ferry.url")
local match = require("ferry.match")
local proxy_entry = require("ferry.proxy_entry")

local function load(src)
  return config.load_string(src, "cfg.lua")
end

local function err_of(src)
  local cfg, err = load(src)
  assert.is_nil(cfg, "accepted: " .. src)
  return err
end

describe("reverse config", function()
  it("takes a reverse listener, its pool and a backend pool", function()
    local cfg = assert(load([[
listen { name = "site", addr = "0.0.0.0:8088", protocol = "reverse", pool = "app",
         forwarded = { via = false }, trust_forwarded = true }
pool "app" { strategy = "round_robin", host = "api.internal:8080",
  backends = { "http://127.0.0.1:9001", { url = "https://b.internal", weight = 2, id = "b2",
               backup = true } } }
]]))
    local l = cfg.listeners[1]
    assert.equal("reverse", l.protocol)
    assert.equal("app", l.pool)
    assert.same({ ["for"] = true, proto = true, host = true, via = false }, l.forwarded)
    assert.is_true(l.trust_forwarded)
    local p = cfg.pools.app
    assert.equal("backends", p.kind)
    assert.equal("api.internal:8080", p.host)
    assert.equal("backend", p.proxies[1].scheme)
    assert.equal(9001, p.proxies[1].port)
    assert.equal("http://127.0.0.1:9001", p.proxies[1].display)
    local b2 = p.proxies[2]
    assert.equal("backend_tls", b2.scheme)
    assert.equal(443, b2.port)
    assert.equal("https://b.internal:443", b2.display)
    assert.is_true(b2.backup)
    assert.equal(2, b2.weight)
    assert.same({ verify = true }, b2.tls) -- verified by default
  end)

  it("keeps proxy pools as they were", function()
    local cfg = assert(load('pool "p" { proxies = { "http://h:3128" } }'))
    assert.equal("proxies", cfg.pools.p.kind)
    assert.equal("http", cfg.pools.p.proxies[1].scheme)
  end)

  it("refuses what a reverse listener or a backend pool cannot mean", function()
    local pool = 'pool "app" { backends = { "http://127.0.0.1:9001" } }\n'
    assert.matches("exclude each other", err_of(
      'pool "x" { proxies = { "http://h:1" }, backends = { "http://h:2" } }'))
    assert.matches('all_down = "direct" is for pools of proxies', err_of(
      'pool "x" { all_down = "direct", backends = { "http://h:2" } }'))
    assert.matches("backends: at least one backend", err_of('pool "x" { backends = {} }'))
    assert.matches("unsupported backend scheme", err_of(
      'pool "x" { backends = { "socks5://h:2" } }'))
    assert.matches("no path", err_of('pool "x" { backends = { "http://h:2/api" } }'))
    assert.matches("credentials", err_of('pool "x" { backends = { "http://u:p@h:2" } }'))
    assert.matches("backup: expected true or false", err_of(
      'pool "x" { backends = { { url = "http://h:2", backup = 1 } } }'))
    assert.matches("host is for backend pools", err_of(
      'pool "x" { host = "a", proxies = { "http://h:2" } }'))
    assert.matches("host must be a host name", err_of(
      'pool "x" { host = "a b", backends = { "http://h:2" } }'))
    assert.matches("FERRY%-0220", err_of(
      'pool "x" { tls = { verify = "yes" }, backends = { "https://h:2" } }'))
    assert.matches("tls is only for https:// backends", err_of(
      'pool "x" { backends = { { url = "http://h:2", tls = {} } } }'))
    assert.matches('pool: only for protocol = "reverse"', err_of(
      'listen { pool = "app" }\n' .. pool))
    assert.matches('pool "nope" is not declared', err_of(
      'listen { protocol = "reverse", pool = "nope" }\n' .. pool))
    assert.matches('has proxies, a reverse listener needs a pool of backends', err_of(
      'listen { protocol = "reverse", pool = "p" }\npool "p" { proxies = { "http://h:1" } }'))
    assert.matches("does not authenticate proxy users", err_of(
      'listen { protocol = "reverse", users = { "a:b" } }'))
    assert.matches('unknown field "x"', err_of(
      'listen { protocol = "reverse", forwarded = { x = true } }'))
    assert.matches("forwarded.via must be a boolean", err_of(
      'listen { protocol = "reverse", forwarded = { via = 1 } }'))
  end)

  it("lets a reverse listener bind any address without users or open", function()
    assert.is_table(load('listen { protocol = "reverse", addr = "0.0.0.0:80" }'))
    assert.matches("without users", err_of('listen { protocol = "http", addr = "0.0.0.0:80" }'))
  end)

  it("takes tls on reverse listeners", function()
    local f = os.tmpname()
    local h = assert(io.open(f, "w"))
    h:write("x")
    h:close()
    local cfg = assert(load(string.format(
      'listen { protocol = "reverse", tls = { cert = %q, key = %q } }', f, f)))
    assert.equal(f, cfg.listeners[1].tls.cert)
    os.remove(f)
  end)

  it("reads backend URLs with one parser", function()
    assert.same({ scheme = "backend", host = "a.b", port = 80 }, url.parse_backend("http://A.b"))
    assert.same({ scheme = "backend_tls", host = "::1", port = 8443 },
      url.parse_backend("HTTPS://[::1]:8443/"))
    assert.is_nil(url.parse_backend("http://h:99999"))
    assert.is_nil(url.parse_backend("ftp://h"))
    assert.is_nil(url.parse_backend("http://h?x"))
    assert.equal("https://[::1]:8443",
      url.display(url.parse_backend("https://[::1]:8443")))
    local px = assert(proxy_entry.validate({ url = "https://h" }, proxy_entry.BACKEND_CONFIG,
      { kind = "backends", pool_tls = { verify = false } }))
    assert.same({ verify = false }, px.tls) -- the pool's tls for its https:// backends
  end)

  it("matches hosts and path prefixes for route()", function()
    assert.is_true(match.host("API.example.com", "api.example.com"))
    assert.is_true(match.host("a.b.example.com", "x.org", "*.example.com"))
    assert.is_false(match.host("example.com", "*.example.com"))
    assert.is_false(match.host("badexample.com", "*.example.com"))
    assert.is_false(match.host(nil, "*.example.com"))
    assert.is_true(match.path("/api", "/api"))
    assert.is_true(match.path("/api/v1", "/api"))
    assert.is_true(match.path("/api?q=1", "/api"))
    assert.is_false(match.path("/apix", "/api"))
    assert.is_true(match.path("/static/a.css", "/static/"))
    assert.is_false(match.path("/stati", "/static/"))
    assert.has_error(function() match.path("/a", "") end)
    local cfg = assert(load([[
route(function(req)
  if match_host(req.host, "*.example.com") and match_path(req.path, "/v2") then return "x" end
end)
]]))
    assert.equal("x", cfg.route({ host = "a.example.com", path = "/v2/items" }))
    assert.is_nil(cfg.route({ host = "a.example.com", path = "/v3" }))
  end)
end)
