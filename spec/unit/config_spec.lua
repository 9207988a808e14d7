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
admin  { addr = "127.0.0.1:9090", socket = "/tmp/ferry.sock", token = "t" }
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
    assert.equal(1, #cfg.listeners)
    assert.same({ "127.0.0.1", 8080 }, { cfg.listeners[1].host, cfg.listeners[1].port })
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
                  request = 60 }, cfg.timeouts)
    assert.same({ level = "info", access = true }, cfg.log)
    assert.equal("health_score", cfg.pools.p.strategy)
    assert.equal(2, cfg.pools.p.retries)
  end)

  it("names file, line, statement and field in errors", function()
    assert.equal('cfg.lua:3: pool "x": proxies[2]: unsupported scheme "ftp" (use http or socks5)',
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

  it("rejects duplicates and the reserved pool name", function()
    assert.matches('cfg.lua:2: pool "a": a pool with this name already exists',
      err_of('pool "a" { proxies = { "http://h:1" } }\npool "a" { proxies = { "http://h:2" } }'))
    assert.matches('"direct" is reserved', err_of('pool "direct" { proxies = { "http://h:1" } }'))
    assert.matches("listener with this name", err_of('listen { name = "a" }\nlisten { name = "a" }'))
    assert.matches("duplicate of proxies%[1%]",
      err_of('pool "a" { proxies = { "http://h:1", "http://h:1" } }'))
  end)

  it("checks proxy headers", function()
    assert.matches('header "X%-A" must not contain CR',
      err_of('pool "a" { proxies = { { url = "http://h:1", headers = { ["X-A"] = "v\\r\\nX: y" } } } }'))
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
    assert.equal(os.getenv("HOME"), assert(load('admin { token = env "HOME" }')).admin.token)
    assert.equal("dflt", assert(load('admin { token = env("FERRY_SURELY_UNSET_VAR", "dflt") }')).admin.token)
    assert.equal("cfg.lua:1: env: environment variable FERRY_SURELY_UNSET_VAR is not set",
      err_of('admin { token = env "FERRY_SURELY_UNSET_VAR" }'))
  end)

  it("reports syntax and runtime errors as file:line", function()
    assert.matches("^cfg%.lua:2: ", err_of('listen {}\npool "x" {'))
    assert.matches("^cfg%.lua:1: ", err_of('undefined_function()'))
    assert.matches("^cfg%.lua:1: route: expected a function, got a string",
      err_of('route("direct")'))
    assert.matches("route is already set",
      err_of('route(function() end)\nroute(function() end)'))
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
