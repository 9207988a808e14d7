local config = require("ferry.config")

local function load(src)
  return config.load_string(src, "cfg.lua")
end

local function err_of(src)
  local cfg, err = load(src)
  assert.is_nil(cfg)
  return err
end

describe("config", function()
  it("loads the shape of DESIGN.md", function()
    local cfg = assert(load([[
listen { name = "proxy", addr = "127.0.0.1:8080", protocol = "http" }
admin  { addr = "127.0.0.1:9090", socket = "/tmp/ferry.sock", token = "t-0123456789" }
store  { path = "data/ferry.db" }
plugins { "plugins", "/etc/ferry/plugins" }
pool "binance" {
  strategy = "health_score",
  breaker  = { policy = "consecutive", failures = 5, cooldown = 30 },
  health   = { check = "connect", target = "api.binance.com:443", interval = 10 },
  retries  = 2,
  all_down = "any",
  proxies  = {
    "http://user:pass@10.0.0.1:3128",
    { url = "socks5://10.0.0.2:1080", weight = 2, region = "us-east-1" },
  },
}
exchange "binance" { hosts = { "*.binance.com" }, pool = "binance",
                     ban = { status = { 403, 418, 429 }, backoff = 60 },
                     script = "examples/exchanges/binance.lua" }
route(function(req) return "direct" end)
]]))
    -- The proxy listener, then the admin plane's HTTP listener and socket.
    assert.equal(3, #cfg.listeners)
    assert.same({ "127.0.0.1", 8080 }, { cfg.listeners[1].host, cfg.listeners[1].port })
    assert.same({ "admin", "admin", 9090 }, { cfg.listeners[2].name, cfg.listeners[2].protocol,
      cfg.listeners[2].port })
    assert.same({ "console", "/tmp/ferry.sock" }, { cfg.listeners[3].name, cfg.listeners[3].path })
    assert.equal("t-0123456789", cfg.admin.token)
    local pool = cfg.pools.binance
    assert.equal("health_score", pool.strategy)
    assert.equal(2, #pool.proxies)
    assert.equal("user", pool.proxies[1].user)
    assert.equal("http://***@10.0.0.1:3128", pool.proxies[1].display)
    assert.equal(2, pool.proxies[2].weight)
    assert.equal("us-east-1", pool.proxies[2].region)
    assert.same({ "binance" }, cfg.pool_order)
    assert.equal("./plugins", cfg.plugin_dirs[1])
    assert.equal("/etc/ferry/plugins", cfg.plugin_dirs[2])
    assert.equal("./examples/exchanges/binance.lua", cfg.exchanges[1].script)
    assert.is_function(cfg.route)
  end)

  it("fills defaults: a listener, timeouts, log, strategy and retries", function()
    local cfg = assert(load('pool "p" { proxies = { "http://h:1" } }'))
    assert.equal("proxy", cfg.listeners[1].name)
    assert.equal(8080, cfg.listeners[1].port)
    assert.same({ client_head = 10, connect = 5, first_byte = 30, idle = 300, keepalive = 60,
                  request = 60, upstream_idle = 30 }, cfg.timeouts)
    assert.same({ level = "info", access = true }, cfg.log)
    assert.equal("health_score", cfg.pools.p.strategy)
    assert.equal(2, cfg.pools.p.retries)
  end)

  it("takes retries up to the core's bound, FERRY_RETRIES_MAX of ferry.h", function()
    local ffi = require("ffi")
    require("ferry.cdef")
    assert.equal(8, tonumber(ffi.C.FERRY_RETRIES_MAX))
    assert.equal(8, assert(load('pool "p" { retries = 8, proxies = { "http://h:1" } }')).pools.p.retries)
    assert.equal(0, assert(load('pool "p" { retries = 0, proxies = { "http://h:1" } }')).pools.p.retries)
    local req = ffi.new("struct ferry_req")
    assert.equal(8, ffi.sizeof(req.tried) / ffi.sizeof("uint32_t"))
  end)

  it("takes http { via, via_name } and refuses a pseudonym that is not a token", function()
    assert.same({ via = true, via_name = "ferry" }, assert(load("")).http)
    assert.same({ via = false, via_name = "edge-1" },
      assert(load('http { via = false, via_name = "edge-1" }')).http)
    assert.equal('cfg.lua:1: http: via must be a boolean, got a string',
      err_of('http { via = "on" }'))
    assert.matches('^cfg%.lua:1: http: via_name must be 1 to 64 token characters',
      err_of('http { via_name = "a b" }'))
    assert.matches('via_name must be', err_of('http { via_name = "x\\r\\nX-Evil: 1" }'))
    assert.matches('via_name must be', err_of('http { via_name = "" }'))
    assert.matches('via_name must be', err_of('http { via_name = string.rep("a", 65) }'))
    assert.equal('cfg.lua:1: http: unknown field "vias"', err_of('http { vias = true }'))
  end)

  it("names file, line, statement and field in errors", function()
    assert.equal('cfg.lua:3: pool "x": proxies[2]: url: unsupported scheme "ftp" '
      .. '(use http, https, socks5, socks4 or socks4a)',
      err_of('\n\npool "x" { proxies = { "http://h:1", "ftp://h" } }'))
    assert.equal('cfg.lua:1: listen "proxy": unknown field "adress"',
      err_of('listen { name = "proxy", adress = "x" }'))
    assert.equal('cfg.lua:1: pool "x": retries must be between 0 and 8, got 9',
      err_of('pool "x" { retries = 9, proxies = { "http://h:1" } }'))
    assert.equal('cfg.lua:1: pool "x": proxies: at least one proxy is required',
      err_of('pool "x" { proxies = {} }'))
  end)

  it("refuses an open proxy on a public address unless asked", function()
    local err = err_of('listen { addr = "0.0.0.0:3128" }')
    assert.matches("^cfg%.lua:1: listen \"listen1\": refusing to listen on 0%.0%.0%.0 without users", err)
    assert.truthy(load('listen { addr = "0.0.0.0:3128", open = true }'))
    assert.truthy(load('listen { addr = "0.0.0.0:3128", users = { "a:b" } }'))
    assert.truthy(load('listen { addr = "127.0.0.2:3128" }'))
  end)

  it("parses listener users in both forms", function()
    local cfg = assert(load('listen { users = { "alice:pw:with:colons", { user = "bob", pass = "x" } } }'))
    assert.same({ { user = "alice", pass = "pw:with:colons" }, { user = "bob", pass = "x" } },
      cfg.listeners[1].users)
    assert.matches("users%[1%]", err_of('listen { users = { "nocolon" } }'))
  end)

  it("throttles failed inbound auth: defaults and bounds of auth_fail_limit and auth_fail_window", function()
    local l = assert(load('listen { users = { "a:b" } }')).listeners[1]
    assert.equal(10, l.auth_fail_limit)
    assert.equal(60, l.auth_fail_window)
    l = assert(load('listen { users = { "a:b" }, auth_fail_limit = 3, auth_fail_window = 0.5 }'))
      .listeners[1]
    assert.equal(3, l.auth_fail_limit)
    assert.equal(0.5, l.auth_fail_window)
    assert.matches('listen "listen1": auth_fail_limit must be between 1 and 1000000, got 0',
      err_of('listen { auth_fail_limit = 0 }'))
    assert.matches("auth_fail_limit must be a whole number", err_of('listen { auth_fail_limit = 2.5 }'))
    assert.matches("auth_fail_limit must be a number", err_of('listen { auth_fail_limit = "5" }'))
    assert.matches("auth_fail_window must be between 0.1 and 86400",
      err_of('listen { auth_fail_window = 0 }'))
    assert.matches("auth_fail_window must be between 0.1 and 86400",
      err_of('listen { auth_fail_window = 1e9 }'))
  end)

  it("rejects duplicates and the reserved pool name", function()
    assert.matches('cfg.lua:2: pool "a": a pool with this name already exists',
      err_of('pool "a" { proxies = { "http://h:1" } }\npool "a" { proxies = { "http://h:2" } }'))
    assert.matches('"direct" is reserved', err_of('pool "direct" { proxies = { "http://h:1" } }'))
    assert.matches("listener with this name", err_of('listen { name = "a" }\nlisten { name = "a" }'))
    assert.matches("duplicate of proxies%[1%]",
      err_of('pool "a" { proxies = { "http://h:1", "http://h:1" } }'))
  end)

  it("takes connections = { ... } on a pool and on direct, and bounds each field", function()
    local cfg = assert(load([[
pool "a" { proxies = { "http://h:1" },
  connections = { max = 4, queue = 8, queue_timeout = 0.5, idle = 2, idle_timeout = 9,
                  max_requests = 100 } }
direct { connections = { idle = 0 } }
]]))
    assert.same({ max = 4, queue = 8, queue_timeout = 0.5, idle = 2, idle_timeout = 9,
                  max_requests = 100 }, cfg.pools.a.connections)
    assert.same({ idle = 0 }, cfg.direct.connections)
    assert.is_nil(assert(load('pool "b" { proxies = { "http://h:1" } }')).pools.b.connections)
    assert.matches('pool "a": connections: unknown field "maxconn"',
      err_of('pool "a" { proxies = { "http://h:1" }, connections = { maxconn = 1 } }'))
    assert.matches("max must be a whole number",
      err_of('pool "a" { proxies = { "http://h:1" }, connections = { max = 1.5 } }'))
    assert.matches("queue must be between 0 and 100000",
      err_of('pool "a" { proxies = { "http://h:1" }, connections = { queue = -1 } }'))
    assert.matches("queue_timeout must be between",
      err_of('pool "a" { proxies = { "http://h:1" }, connections = { queue_timeout = 0 } }'))
    assert.matches('direct: unknown field "proxies"', err_of('direct { proxies = {} }'))
    assert.matches("direct is already set",
      err_of('direct { connections = {} }\ndirect { connections = {} }'))
  end)

  it("checks proxy headers", function()
    assert.matches('headers: "X%-A" must not contain CR',
      err_of('pool "a" { proxies = { { url = "http://h:1", headers = { ["X-A"] = "v\\r\\nX: y" } } } }'))
    -- Names become metric labels and log fields: bounded, and two are reserved.
    assert.matches('"none" is reserved', err_of('pool "none" { proxies = { "http://h:1" } }'))
    assert.matches('"other" is reserved', err_of('pool "other" { proxies = { "http://h:1" } }'))
    assert.matches("1 to 64 letters", err_of('pool "' .. string.rep("p", 65) .. '" {}'))
    assert.matches("1 to 64 letters", err_of('listen { name = "' .. string.rep("l", 65) .. '" }'))
    assert.matches("1 to 64 letters", err_of('exchange "a b" { hosts = { "h" }, pool = "direct" }'))
    -- The core's bounds on inbound users, checked before a reload starts.
    assert.matches("over 511 bytes",
      err_of('listen { users = { "u:' .. string.rep("p", 600) .. '" } }'))
    local many = {}
    for i = 1, 257 do many[i] = '"u' .. i .. ':p"' end
    assert.matches("at most 256 users",
      err_of('listen { users = { ' .. table.concat(many, ", ") .. ' } }'))
    -- An id travels in X-Ferry-Proxy, logs and metric labels: no header splitting.
    assert.matches('id: 1 to 64 letters',
      err_of('pool "a" { proxies = { { url = "http://h:1", id = "a\\r\\nSet-Cookie: x" } } }'))
    assert.matches("not a valid token",
      err_of('pool "a" { proxies = { { url = "http://h:1", headers = { ["bad name"] = "v" } } } }'))
  end)

  it("checks that exchanges name a declared pool, wherever it is declared", function()
    assert.truthy(load('exchange "e" { hosts = { "a.com" }, pool = "p" }\n' ..
                       'pool "p" { proxies = { "http://h:1" } }'))
    assert.equal('cfg.lua:1: exchange "e": pool "nope" is not declared',
      err_of('exchange "e" { hosts = { "a.com" }, pool = "nope" }'))
    assert.truthy(load('exchange "e" { hosts = { "a.com" }, pool = "direct" }'))
    assert.matches("not a host", err_of('exchange "e" { hosts = { "a b" }, pool = "direct" }'))
  end)

  it("matches exchanges by exact host, then the longest wildcard suffix", function()
    local cfg = assert(load([[
exchange "spot" { hosts = { "*.binance.com" }, pool = "direct" }
exchange "fut"  { hosts = { "*.fapi.binance.com", "API.Example.com" }, pool = "direct" }
]]))
    assert.equal("spot", config.match_exchange(cfg, "api.binance.com").name)
    assert.equal("fut", config.match_exchange(cfg, "x.fapi.binance.com").name)
    assert.equal("spot", config.match_exchange(cfg, "fapi.binance.com").name)
    assert.equal("fut", config.match_exchange(cfg, "api.example.COM").name)
    assert.is_nil(config.match_exchange(cfg, "binance.com"))
    assert.is_nil(config.match_exchange(cfg, "evilbinance.com"))
  end)

  it("reads the environment, with or without a default", function()
    assert.equal(os.getenv("HOME"), assert(load('store { path = env "HOME" }')).store.path)
    assert.equal("dflt", assert(load('store { path = env("FERRY_SURELY_UNSET_VAR", "dflt") }')).store.path)
    assert.equal("cfg.lua:1: env: environment variable FERRY_SURELY_UNSET_VAR is not set",
      err_of('admin { socket = "/tmp/x.sock", token = env "FERRY_SURELY_UNSET_VAR" }'))
  end)

  it("reports syntax and runtime errors as file:line", function()
    assert.matches("^cfg%.lua:2: ", err_of('listen {}\npool "x" {'))
    assert.matches("^cfg%.lua:1: ", err_of('undefined_function()'))
    assert.matches("^cfg%.lua:1: route: expected a function, got a string",
      err_of('route("direct")'))
    assert.matches("route is already set",
      err_of('route(function() end)\nroute(function() end)'))
  end)

  it("reports an error that is not a string, or names no place, at the line raising it", function()
    assert.equal("cfg.lua:3: error object is not a string (table)",
      err_of('listen { addr = "127.0.0.1:1" }\n\nerror({})'))
    assert.equal("cfg.lua:1: error object is not a string (nil)",
      err_of('local function f() error() end\nf()'))
    assert.equal("cfg.lua:2: no place", err_of('local x = 1\nerror("no place", 0)'))
    assert.equal("cfg.lua:1: 42", err_of("error(42, 0)"))
    assert.equal("cfg.lua:9: as given", err_of('\nerror("cfg.lua:9: as given", 0)'))
  end)

  it("refuses two listeners on one address, the admin's and the default one's too", function()
    assert.equal('cfg.lua:2: listen "b": address 127.0.0.1:81 is already used by listen "a" ' ..
      "(line 1) [FERRY-0130]", err_of('listen { name = "a", addr = "127.0.0.1:81" }\n' ..
      'listen { name = "b", addr = "127.0.0.1:81" }'))
    assert.matches('address 0%.0%.0%.0:81 is already used by listen "a"',
      err_of('listen { name = "a", addr = "localhost:81" }\n' ..
      'listen { name = "b", addr = "0.0.0.0:81", open = true }'))
    assert.matches('^cfg%.lua:2: admin "admin": address 127%.0%.0%.1:81',
      err_of('listen { name = "a", addr = "127.0.0.1:81" }\nadmin { addr = "127.0.0.1:81" }'))
    assert.matches("the default proxy listener", err_of('admin { addr = "127.0.0.1:8080" }'))
    -- Other ports, or other hosts, are fine.
    assert.is_table(load('listen { name = "a", addr = "127.0.0.1:81" }\n' ..
      'listen { name = "b", addr = "127.0.0.2:81" }\nadmin { addr = "127.0.0.1:82" }'))
  end)

  it("keeps the sandbox closed", function()
    assert.matches("cfg%.lua:1:", err_of('io.open("/etc/passwd")'))
    assert.matches("cfg%.lua:1:", err_of('os.execute("true")'))
  end)

  it("loads from a file and reports its path", function()
    local path = os.tmpname()
    local f = io.open(path, "w")
    f:write('timeouts { connect = 1.5 }\nlog { level = "loud" }\n')
    f:close()
    local cfg, err = config.load(path)
    os.remove(path)
    assert.is_nil(cfg)
    assert.equal(path .. ":2: log: level must be one of debug, info, warn, error", err)
    local missing, merr = config.load("/nonexistent/ferry.lua")
    assert.is_nil(missing)
    assert.matches("/nonexistent/ferry%.lua", merr)
  end)
end)

-- A pool "p" with one proxy and the given fields, on line 3 of cfg.lua
-- (two comment lines first, so a wrong line number cannot pass).
local function pool_with(fields)
  return '-- one\n-- two\npool "p" { ' .. fields .. ', proxies = { "http://h:1" } }'
end

local function pool_of(fields)
  return assert(load(pool_with(fields))).pools.p
end

local function pool_err(fields)
  return err_of(pool_with(fields))
end

-- An exchange "e" going direct with the given fields, on line 2.
local function exchange_with(fields)
  return '-- one\nexchange "e" { hosts = { "a.com" }, pool = "direct", ' .. fields .. ' }'
end

local function exchange_of(fields)
  return assert(load(exchange_with(fields))).exchanges[1]
end

local function exchange_err(fields)
  return err_of(exchange_with(fields))
end

local SCRIPT = "examples/exchanges/binance.lua"

describe("config pool health", function()
  it("is always present, with defaults, passive only without a check", function()
    assert.same({ interval = 2, timeout = 2, rise = 2, fall = 3 },
      assert(load('pool "p" { proxies = { "http://h:1" } }')).pools.p.health)
    assert.same({ interval = 10, timeout = 2, rise = 4, fall = 1 },
      pool_of("health = { interval = 10, rise = 4, fall = 1 }").health)
  end)

  it("times a probe out after min(2, interval) unless told", function()
    assert.equal(0.5, pool_of("health = { check = 'tcp', interval = 0.5 }").health.timeout)
    assert.equal(2, pool_of("health = { check = 'tcp', interval = 30 }").health.timeout)
    assert.equal(5, pool_of("health = { check = 'tcp', interval = 30, timeout = 5 }").health.timeout)
    assert.equal(3, pool_of("health = { check = 'tcp', interval = 3, timeout = 3 }").health.timeout)
  end)

  it("takes a tcp check without url or target", function()
    assert.same({ check = "tcp", interval = 5, timeout = 2, rise = 2, fall = 3, concurrency = 64 },
      pool_of("health = { check = 'tcp', interval = 5, concurrency = 64 }").health)
  end)

  it("parses the target of a connect check into host and port", function()
    local h = pool_of("health = { check = 'connect', target = 'API.binance.com:443' }").health
    assert.same({ check = "connect", host = "api.binance.com", port = 443, interval = 2,
                  timeout = 2, rise = 2, fall = 3 }, h)
    assert.same({ "::1", 8443 }, (function()
      local x = pool_of("health = { check = 'connect', target = '[::1]:8443' }").health
      return { x.host, x.port }
    end)())
  end)

  it("parses the url of an http check into host, port (80) and path (/)", function()
    local h = pool_of("health = { check = 'http', url = 'http://example.com/ping?x=1', " ..
      "expect = { 200, 204 } }").health
    assert.same({ check = "http", host = "example.com", port = 80, path = "/ping?x=1",
                  expect = { 200, 204 }, interval = 2, timeout = 2, rise = 2, fall = 3 }, h)
    h = pool_of("health = { check = 'http', url = 'HTTP://10.0.0.1:8080' }").health
    assert.same({ "10.0.0.1", 8080, "/" }, { h.host, h.port, h.path })
    assert.is_nil(h.expect) -- any 2xx or 3xx
    h = pool_of("health = { check = 'http', url = 'http://h?q#frag' }").health
    assert.equal("/?q", h.path)
  end)

  it("refuses an unknown check or field", function()
    assert.equal('cfg.lua:3: pool "p": health: check must be "tcp", "http" or "connect", ' ..
      'got "icmp"', pool_err("health = { check = 'icmp' }"))
    assert.equal('cfg.lua:3: pool "p": health: check must be "tcp", "http" or "connect", ' ..
      'got a number', pool_err("health = { check = 1 }"))
    assert.equal('cfg.lua:3: pool "p": health: unknown field "chek"',
      pool_err("health = { chek = 'tcp' }"))
    assert.equal('cfg.lua:3: pool "p": health: expected a table, got a string',
      pool_err("health = 'tcp'"))
  end)

  it("bounds interval, timeout, rise, fall and concurrency", function()
    assert.equal('cfg.lua:3: pool "p": health: interval must be between 0.05 and 3600, got 0.01',
      pool_err("health = { interval = 0.01 }"))
    assert.equal('cfg.lua:3: pool "p": health: interval must be between 0.05 and 3600, got 7200',
      pool_err("health = { interval = 7200 }"))
    assert.equal('cfg.lua:3: pool "p": health: interval must be a number, got a string',
      pool_err("health = { interval = '2' }"))
    assert.equal('cfg.lua:3: pool "p": health: timeout must be between 0.01 and 3600, got 0',
      pool_err("health = { timeout = 0 }"))
    assert.equal('cfg.lua:3: pool "p": health: timeout (3) must not be longer than interval (2)',
      pool_err("health = { timeout = 3 }"))
    assert.equal('cfg.lua:3: pool "p": health: rise must be between 1 and 100, got 0',
      pool_err("health = { rise = 0 }"))
    assert.equal('cfg.lua:3: pool "p": health: rise must be between 1 and 100, got 101',
      pool_err("health = { rise = 101 }"))
    assert.equal('cfg.lua:3: pool "p": health: fall must be a whole number, got 1.5',
      pool_err("health = { fall = 1.5 }"))
    assert.equal('cfg.lua:3: pool "p": health: concurrency must be between 1 and 10000, got 0',
      pool_err("health = { concurrency = 0 }"))
    assert.equal('cfg.lua:3: pool "p": health: concurrency must be a whole number, got 2.5',
      pool_err("health = { concurrency = 2.5 }"))
  end)

  it("needs a url for http and a target for connect, and each only there", function()
    assert.equal('cfg.lua:3: pool "p": health: url = "http://host[:port]/path" is required ' ..
      'for check = "http"', pool_err("health = { check = 'http' }"))
    assert.equal('cfg.lua:3: pool "p": health: target = "host:port" is required for ' ..
      'check = "connect"', pool_err("health = { check = 'connect' }"))
    assert.equal('cfg.lua:3: pool "p": health: target is for check = "connect" (http uses url)',
      pool_err("health = { check = 'http', url = 'http://h/', target = 'h:1' }"))
    assert.equal('cfg.lua:3: pool "p": health: url is for check = "http" (connect uses target)',
      pool_err("health = { check = 'connect', target = 'h:1', url = 'http://h/' }"))
    assert.equal('cfg.lua:3: pool "p": health: target needs check = "connect"',
      pool_err("health = { check = 'tcp', target = 'h:1' }"))
    assert.equal('cfg.lua:3: pool "p": health: url needs check = "http"',
      pool_err("health = { url = 'http://h/' }"))
    assert.equal('cfg.lua:3: pool "p": health: expect needs check = "http"',
      pool_err("health = { check = 'tcp', expect = { 200 } }"))
  end)

  it("refuses a bad target", function()
    assert.equal('cfg.lua:3: pool "p": health: target: missing port in "h"',
      pool_err("health = { check = 'connect', target = 'h' }"))
    assert.equal('cfg.lua:3: pool "p": health: target: invalid port "99999"',
      pool_err("health = { check = 'connect', target = 'h:99999' }"))
  end)

  it("refuses a url that is not plain http to a valid host", function()
    assert.equal('cfg.lua:3: pool "p": health: url must be an http:// URL, not https://',
      pool_err("health = { check = 'http', url = 'https://u:secret@h/' }"))
    assert.equal('cfg.lua:3: pool "p": health: url must be an http:// URL ' ..
      '(http://host[:port]/path)', pool_err("health = { check = 'http', url = 'h/ping' }"))
    assert.equal('cfg.lua:3: pool "p": health: url must not carry credentials',
      pool_err("health = { check = 'http', url = 'http://u:p@h/' }"))
    assert.equal('cfg.lua:3: pool "p": health: url: missing host',
      pool_err("health = { check = 'http', url = 'http:///ping' }"))
    assert.equal('cfg.lua:3: pool "p": health: url: invalid port "0"',
      pool_err("health = { check = 'http', url = 'http://h:0/' }"))
    assert.equal('cfg.lua:3: pool "p": health: url must not contain spaces or control characters',
      pool_err("health = { check = 'http', url = 'http://h/a b' }"))
    assert.equal('cfg.lua:3: pool "p": health: url: the path is longer than 512 bytes',
      pool_err("health = { check = 'http', url = 'http://h/' .. string.rep('a', 512) }"))
  end)

  it("takes expect as a list of up to 16 statuses from 100 to 599", function()
    local H = "health = { check = 'http', url = 'http://h/', expect = %s }"
    assert.same({ 100, 599 }, pool_of(H:format("{ 100, 599 }")).health.expect)
    assert.equal('cfg.lua:3: pool "p": health: expect[2] must be a whole number from 100 to ' ..
      '599, got 600', pool_err(H:format("{ 200, 600 }")))
    assert.equal('cfg.lua:3: pool "p": health: expect[1] must be a whole number from 100 to ' ..
      '599, got 200.5', pool_err(H:format("{ 200.5 }")))
    assert.equal('cfg.lua:3: pool "p": health: expect must be a list, got a number',
      pool_err(H:format("200")))
    assert.equal('cfg.lua:3: pool "p": health: expect must be a non-empty list',
      pool_err(H:format("{}")))
    assert.equal('cfg.lua:3: pool "p": health: expect must be a list, found key "ok"',
      pool_err(H:format("{ ok = 200 }")))
    assert.equal('cfg.lua:3: pool "p": health: expect has 17 entries, at most 16 are allowed',
      pool_err(H:format("{ " .. string.rep("200, ", 17) .. "}")))
  end)
end)

describe("config pool breaker", function()
  it("defaults to 5 consecutive failures, 30 s cooldown, 1 trial, 480 s at most", function()
    assert.same({ policy = "consecutive", failures = 5, cooldown = 30, trials = 1,
                  max_cooldown = 480 },
      assert(load('pool "p" { proxies = { "http://h:1" } }')).pools.p.breaker)
  end)

  it("is switched off with false", function()
    assert.is_nil(pool_of("breaker = false").breaker)
  end)

  it("fills the generic settings and keeps the policy's own for its check", function()
    assert.same({ policy = "error_rate", window = 10, threshold = 0.25, cooldown = 30, trials = 1,
                  max_cooldown = 480 },
      pool_of("breaker = { policy = 'error_rate', window = 10, threshold = 0.25 }").breaker)
    assert.same({ policy = "consecutive", cooldown = 10, trials = 3, max_cooldown = 160,
                  verbose = true },
      pool_of("breaker = { cooldown = 10, trials = 3, verbose = true }").breaker)
    assert.equal(45, pool_of("breaker = { cooldown = 15, max_cooldown = 45 }").breaker.max_cooldown)
    assert.equal(15, pool_of("breaker = { cooldown = 15, max_cooldown = 15 }").breaker.max_cooldown)
  end)

  it("refuses what is not a table or false", function()
    assert.equal('cfg.lua:3: pool "p": breaker: expected a table or false, got a boolean',
      pool_err("breaker = true"))
    assert.equal('cfg.lua:3: pool "p": breaker: expected a table or false, got a string',
      pool_err("breaker = 'consecutive'"))
    assert.equal('cfg.lua:3: pool "p": breaker: unexpected value at [1] (settings are ' ..
      'written name = value)', pool_err("breaker = { 5 }"))
  end)

  it("takes a plugin name as policy", function()
    assert.equal('cfg.lua:3: pool "p": breaker: policy must be a string, got a number',
      pool_err("breaker = { policy = 5 }"))
    assert.equal('cfg.lua:3: pool "p": breaker: policy "../x" is not a plugin name ' ..
      '(letters, digits, _)', pool_err("breaker = { policy = '../x' }"))
  end)

  it("bounds cooldown, trials and max_cooldown", function()
    assert.equal('cfg.lua:3: pool "p": breaker: cooldown must be between 0.01 and 604800, got 0',
      pool_err("breaker = { cooldown = 0 }"))
    assert.equal('cfg.lua:3: pool "p": breaker: cooldown must be a number, got a string',
      pool_err("breaker = { cooldown = '30' }"))
    assert.equal('cfg.lua:3: pool "p": breaker: trials must be between 1 and 100, got 0',
      pool_err("breaker = { trials = 0 }"))
    assert.equal('cfg.lua:3: pool "p": breaker: trials must be a whole number, got 1.5',
      pool_err("breaker = { trials = 1.5 }"))
    assert.equal('cfg.lua:3: pool "p": breaker: max_cooldown (30) must not be shorter than ' ..
      'cooldown (60)', pool_err("breaker = { cooldown = 60, max_cooldown = 30 }"))
    assert.equal('cfg.lua:3: pool "p": breaker: max_cooldown (10) must not be shorter than ' ..
      'cooldown (30)', pool_err("breaker = { max_cooldown = 10 }"))
  end)

  it("takes only numbers and booleans as the policy's settings", function()
    assert.equal('cfg.lua:3: pool "p": breaker: failures must be a number or a boolean, ' ..
      'got a string', pool_err("breaker = { failures = '5' }"))
    assert.equal('cfg.lua:3: pool "p": breaker: extra must be a number or a boolean, got a table',
      pool_err("breaker = { extra = {} }"))
  end)
end)

describe("config pool all_down, panic, session_ttl", function()
  it("defaults to any, no panic and 600 s sessions", function()
    local p = assert(load('pool "p" { proxies = { "http://h:1" } }')).pools.p
    assert.same({ "any", 0, 600 }, { p.all_down, p.panic, p.session_ttl })
  end)

  it("takes each all_down policy and refuses others", function()
    for _, v in ipairs { "any", "direct", "fail" } do
      assert.equal(v, pool_of("all_down = '" .. v .. "'").all_down)
    end
    assert.equal('cfg.lua:3: pool "p": all_down must be "any", "direct" or "fail", got "never"',
      pool_err("all_down = 'never'"))
    assert.equal('cfg.lua:3: pool "p": all_down must be a string, got a boolean',
      pool_err("all_down = false"))
  end)

  it("takes panic as a percentage", function()
    assert.equal(50, pool_of("panic = 50").panic)
    assert.equal(12.5, pool_of("panic = 12.5").panic)
    assert.equal(100, pool_of("panic = 100").panic)
    assert.equal('cfg.lua:3: pool "p": panic must be between 0 and 100, got 101',
      pool_err("panic = 101"))
    assert.equal('cfg.lua:3: pool "p": panic must be between 0 and 100, got -1',
      pool_err("panic = -1"))
  end)

  it("takes session_ttl in seconds above 0", function()
    assert.equal(30, pool_of("session_ttl = 30").session_ttl)
    assert.equal('cfg.lua:3: pool "p": session_ttl must be between 0.001 and 2592000, got 0',
      pool_err("session_ttl = 0"))
    assert.equal('cfg.lua:3: pool "p": session_ttl must be a number, got a string',
      pool_err("session_ttl = '1h'"))
  end)

  it("says at least, not between nil, for a bound on one side", function()
    assert.equal('cfg.lua:3: pool "p": latency_ceiling must be at least 1, got 0',
      pool_err("latency_ceiling = 0"))
  end)
end)

describe("config exchange ban", function()
  it("is absent unless given", function()
    assert.is_nil(exchange_of("hosts = { 'b.com' }").ban)
  end)

  it("fills backoff 60 s and max_backoff 3600 s", function()
    assert.same({ status = { 403, 418, 429 }, backoff = 60, max_backoff = 3600 },
      exchange_of("ban = { status = { 403, 418, 429 } }").ban)
    assert.same({ body = { "Access Denied", "IP banned" }, backoff = 5, max_backoff = 50 },
      exchange_of("ban = { body = { 'Access Denied', 'IP banned' }, backoff = 5, " ..
        "max_backoff = 50 }").ban)
    assert.equal(7200, exchange_of("ban = { status = { 429 }, backoff = 7200 }").ban.max_backoff)
  end)

  it("needs status or body, unless a script bans", function()
    assert.equal('cfg.lua:2: exchange "e": ban: needs status or body (or a script whose ' ..
      'on_response bans)', exchange_err("ban = { backoff = 30 }"))
    assert.same({ backoff = 30, max_backoff = 300 },
      exchange_of("ban = { backoff = 30, max_backoff = 300 }, script = '" .. SCRIPT .. "'").ban)
  end)

  it("takes status as a list of whole numbers from 100 to 599", function()
    assert.equal('cfg.lua:2: exchange "e": ban: status[1] must be a whole number from 100 to ' ..
      '599, got 99', exchange_err("ban = { status = { 99 } }"))
    assert.equal('cfg.lua:2: exchange "e": ban: status must be a list, got a number',
      exchange_err("ban = { status = 429 }"))
    assert.equal('cfg.lua:2: exchange "e": ban: status must be a non-empty list',
      exchange_err("ban = { status = {} }"))
    assert.equal('cfg.lua:2: exchange "e": ban: status must be a list without holes ' ..
      '(nil entries)',
      exchange_err("ban = { status = { 429, nil, 418 } }"))
  end)

  it("takes body as a list of non-empty strings of at most 4 KiB", function()
    assert.equal('cfg.lua:2: exchange "e": ban: body must be a list, got a string',
      exchange_err("ban = { body = 'IP banned' }"))
    assert.equal('cfg.lua:2: exchange "e": ban: body[2] must be a non-empty string, got ""',
      exchange_err("ban = { body = { 'x', '' } }"))
    assert.equal('cfg.lua:2: exchange "e": ban: body[1] must be a non-empty string, got a number',
      exchange_err("ban = { body = { 403 } }"))
    assert.equal('cfg.lua:2: exchange "e": ban: body[1] is longer than the 4096 bytes of body ' ..
      'ferry looks at', exchange_err("ban = { body = { string.rep('x', 4097) } }"))
  end)

  it("bounds backoff and max_backoff", function()
    assert.equal('cfg.lua:2: exchange "e": ban: backoff must be between 0.01 and 604800, got 0',
      exchange_err("ban = { status = { 429 }, backoff = 0 }"))
    assert.equal('cfg.lua:2: exchange "e": ban: max_backoff (30) must not be shorter than ' ..
      'backoff (60)', exchange_err("ban = { status = { 429 }, max_backoff = 30 }"))
    assert.equal('cfg.lua:2: exchange "e": ban: max_backoff must be a number, got a string',
      exchange_err("ban = { status = { 429 }, max_backoff = '1h' }"))
  end)

  it("refuses unknown fields", function()
    assert.equal('cfg.lua:2: exchange "e": ban: unknown field "bakoff"',
      exchange_err("ban = { status = { 429 }, bakoff = 60 }"))
    assert.equal('cfg.lua:2: exchange "e": ban: expected a table, got a number',
      exchange_err("ban = 429"))
  end)
end)

describe("config exchange script", function()
  it("resolves the path against the config's directory", function()
    assert.equal("./" .. SCRIPT, exchange_of("script = '" .. SCRIPT .. "'").script)
    local abs = os.tmpname()
    assert.equal(abs, exchange_of("script = '" .. abs .. "'").script)
    os.remove(abs)
  end)

  it("must name a readable file, and the error names the path", function()
    assert.equal('cfg.lua:2: exchange "e": script: cannot read "./exchanges/nope.lua": ' ..
      'No such file or directory', exchange_err("script = 'exchanges/nope.lua'"))
    assert.equal('cfg.lua:2: exchange "e": script: cannot read "./examples": Is a directory',
      exchange_err("script = 'examples'"))
    assert.equal('cfg.lua:2: exchange "e": script must be a string, got a number',
      exchange_err("script = 5"))
    assert.equal('cfg.lua:2: exchange "e": script must be a path, got an empty string',
      exchange_err("script = ''"))
  end)

  it("is read relative to a config loaded from another directory", function()
    local cfg = assert(config.load("examples/exchanges.lua"))
    local scripts = {}
    for _, ex in ipairs(cfg.exchanges) do scripts[ex.name] = ex.script end
    assert.same({ binance = "examples/exchanges/binance.lua", bybit = "examples/exchanges/bybit.lua",
                  okx = "examples/exchanges/okx.lua" }, scripts)
  end)
end)

describe("config examples/exchanges.lua", function()
  local exchange = require("ferry.exchange")
  local cfg = assert(config.load("examples/exchanges.lua"))

  it("declares its pools with health, breaker and ban", function()
    assert.same({ "binance", "binance_sapi", "bybit", "okx" }, cfg.pool_order)
    for _, name in ipairs(cfg.pool_order) do
      local p = cfg.pools[name]
      assert.is_string(p.health.check, name)
      assert.is_table(p.breaker, name)
      assert.equal(3, #p.proxies)
    end
    assert.same({ check = "connect", host = "127.0.0.1", port = 8091, interval = 5, timeout = 2,
                  rise = 2, fall = 3 }, cfg.pools.binance.health)
    for _, ex in ipairs(cfg.exchanges) do assert.is_table(ex.ban, ex.name) end
  end)

  local hooks = assert(exchange.load_script("examples/exchanges/binance.lua", "binance"))
  local function res(status, body, headers)
    return { status = status, body = body, latency_ms = 10,
             header = function(name) return (headers or {})[name] end }
  end
  local proxy = { id = 1, label = "node1", display = "http://127.0.0.1:8091" }

  it("binance.lua tags front traffic, sends /sapi to its pool and nodes direct", function()
    assert.same({ headers = { add = { ["X-MBX-Source"] = "ferry" }, drop = { "x-debug" } } },
      hooks.on_request({ listener = "front", path = "/api/v3/time" }))
    assert.same({ pool = "binance_sapi" },
      hooks.on_request({ listener = "front", path = "/sapi/v1/account" }))
    assert.same({ pool = "direct" }, hooks.on_request({ listener = "node1", path = "/" }))
  end)

  it("binance.lua leaves selection to the strategy but for orders", function()
    local lowest = {}
    local pool = { lowest = function(_, _, key)
      lowest.key = key({ c = { latency_ewma_ms = 7 } })
      return "fastest"
    end }
    assert.is_nil(hooks.select(pool, { method = "GET", path = "/api/v3/time" }))
    assert.equal("fastest", hooks.select(pool, { method = "POST", path = "/api/v3/order" }))
    assert.equal(7, lowest.key)
  end)

  it("binance.lua bans on 418/429 for Retry-After seconds, or on a body marker", function()
    assert.same({ ban = 120 }, hooks.on_response(res(418, nil, { ["retry-after"] = "120" }), proxy))
    assert.same({ ban = 60 }, hooks.on_response(res(429, nil, {}), proxy))
    assert.same({ ban = 120 }, hooks.on_response(res(200, '{"msg":"IP banned until 1"}'), proxy))
    assert.equal("ok", hooks.on_response(res(503, "system maintenance"), proxy))
    assert.is_nil(hooks.on_response(res(200, '{"serverTime":1}'), proxy))
    assert.is_nil(hooks.on_response(res(502, nil), proxy))
  end)

  it("bybit.lua bans on a rate-limit retCode in a 200 body", function()
    local bybit = assert(exchange.load_script("examples/exchanges/bybit.lua", "bybit"))
    assert.same({ ban = 30 }, bybit.on_response(res(200, '{"retCode":10006,"retMsg":"x"}')))
    assert.is_nil(bybit.on_response(res(200, '{"retCode":0}')))
    assert.is_nil(bybit.on_response(res(502, nil)))
    assert.same({ pool = "direct" }, bybit.on_request({ listener = "node2" }))
    assert.is_nil(bybit.on_request({ listener = "front" }))
  end)

  -- Found by make fuzz (spec/fuzz/corpus/config).
  it("refuses a precompiled config: LuaJIT does not verify bytecode", function()
    local bc = string.dump(loadstring('listen { addr = "127.0.0.1:18080" }'))
    local err = err_of(bc)
    assert.matches("^cfg%.lua:0: ", err)
    assert.matches("^cfg%.lua:0: ", err_of("\27LJ\2\0"))
  end)

  it("gives a config its own string, table and math: the daemon's stay as they were", function()
    local gsub, insert, floor = string.gsub, table.insert, math.floor
    assert(load([[
string.gsub = function() return "x", 0 end
table.insert = nil
math.floor = nil
listen { addr = "127.0.0.1:18080" }
]]))
    assert.equal(gsub, string.gsub)
    assert.equal(insert, table.insert)
    assert.equal(floor, math.floor)
    assert.matches("^cfg%.lua:3: ", err_of('string.format = nil\nlisten { addr = "127.0.0.1:18080" }\n' ..
      'exchange "e" { hosts = { "x.com" }, pool = "nope" }\n'))
  end)

  it("names the config's line when env() is not given a name", function()
    assert.matches('^cfg%.lua:2: env: expected the name of an environment variable, got a table',
      err_of('listen { addr = "127.0.0.1:18080" }\nlocal x = env({})\n'))
  end)
end)
