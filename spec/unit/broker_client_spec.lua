-- The broker client's config (pool { broker = ... }): defaults, every
-- refusal with its code and file:line, no token in a message; the
-- broker's batch feedback validation; the HTTP client's URL parsing.
local config = require("ferry.config")
local broker = require("ferry.broker")
local hclient = require("ferry.hclient")

local function load(broker_src, extra)
  return config.load_string(string.format([[
listen { name = "main", addr = "127.0.0.1:8080" }
pool "bin" {
  broker = %s,
  proxies = { "socks5://10.0.0.9:1080" }%s }
]], broker_src, extra or ""), "cfg.lua")
end

local function err_of(broker_src, extra)
  local cfg, err = load(broker_src, extra)
  assert.is_nil(cfg, "expected a refusal of " .. broker_src)
  return err
end

describe("broker client config", function()
  it("takes the documented shape with its defaults", function()
    local cfg = assert(load([[{ endpoints = { "http://a.test:9090", "http://10.0.0.2:9090/x/" },
      token = "T-123", exchange = "binance", region = "eu" }]]))
    local b = cfg.pools.bin.broker
    assert.equal(2, #b.endpoints)
    assert.equal("a.test", b.endpoints[1].host)
    assert.equal(9090, b.endpoints[1].port)
    assert.equal("/x", b.endpoints[2].base)
    assert.equal("binance", b.exchange)
    assert.equal("eu", b.region)
    assert.equal("http", b.connection_type)
    assert.equal(3, b.leases)
    assert.equal(2, b.timeout)
    assert.equal(0.8, b.renew)
    assert.equal("ferry:bin", b.client_id)
    assert.same({ interval = 1, batch = 100, queue = 10000 }, b.feedback)
    assert.same({ failures = 3, backoff = 1, max_backoff = 30 }, b.breaker)
  end)

  it("defaults the exchange to the pool's name and the port to 80", function()
    local b = assert(load([[{ endpoints = { "http://broker.test" } }]])).pools.bin.broker
    assert.equal("bin", b.exchange)
    assert.equal(80, b.endpoints[1].port)
    assert.is_nil(b.token)
  end)

  it("takes https:// endpoints (port 443), verified by default", function()
    local b = assert(load([[{ endpoints = { "https://b.test", "http://c.test" } }]])).pools.bin
      .broker
    assert.equal(443, b.endpoints[1].port)
    assert.is_true(b.endpoints[1].https)
    assert.is_false(b.endpoints[2].https)
    assert.same({ verify = true }, b.tls)
    b = assert(load([[{ endpoints = { "https://b.test" }, tls = { verify = false } }]])).pools
      .bin.broker
    assert.is_false(b.tls.verify)
  end)

  it("changes its signature with what a lease depends on only", function()
    local function sig(src) return assert(load(src)).pools.bin.broker.sig end
    local base = sig([[{ endpoints = { "http://b:1" }, token = "x" }]])
    assert.equal(base, sig([[{ endpoints = { "http://b:1" }, token = "x", leases = 5,
      feedback = { interval = 2 } }]]))
    assert.not_equal(base, sig([[{ endpoints = { "http://b:1" }, token = "y" }]]))
    assert.not_equal(base, sig([[{ endpoints = { "http://b:2" }, token = "x" }]]))
    assert.not_equal(base, sig([[{ endpoints = { "http://b:1" }, token = "x", region = "us" }]]))
  end)

  local refusals = {
    { [[{}]], "FERRY-0260" },
    { [[{ endpoints = {} }]], "FERRY-0260" },
    { [[{ endpoints = { "ftp://b:1" } }]], "FERRY-0260" },
    { [[{ endpoints = { "http://b:1" }, tls = { verify = false } }]], "FERRY-0268" },
    { [[{ endpoints = { "https://b:1" }, tls = { verify = "no" } }]], "FERRY-0268" },
    { [[{ endpoints = { "https://b:1" }, tls = { ca = "/nonexistent/ca.pem" } }]], "FERRY-0268" },
    { [[{ endpoints = { "https://b:1" }, tls = { sni = "x" } }]], "FERRY-0268" },
    { [[{ endpoints = { "http://u:p@b:1" } }]], "FERRY-0260" },
    { [[{ endpoints = { "http://b:1", "http://b:1" } }]], "FERRY-0260" },
    { [[{ endpoints = { "http://b:99999" } }]], "FERRY-0260" },
    { [[{ endpoints = { "b:1" } }]], "FERRY-0260" },
    { [[{ endpoints = { "http://b:1" }, token = "" }]], "FERRY-0261" },
    { [[{ endpoints = { "http://b:1" }, token = 5 }]], "FERRY-0261" },
    { [[{ endpoints = { "http://b:1" }, connection_type = "udp" }]], "FERRY-0262" },
    { [[{ endpoints = { "http://b:1" }, exchange = "" }]], "FERRY-0262" },
    { [[{ endpoints = { "http://b:1" }, region = string.rep("r", 65) }]], "FERRY-0262" },
    { [[{ endpoints = { "http://b:1" }, leases = 0 }]], "FERRY-0263" },
    { [[{ endpoints = { "http://b:1" }, leases = 1.5 }]], "FERRY-0263" },
    { [[{ endpoints = { "http://b:1" }, timeout = 0 }]], "FERRY-0263" },
    { [[{ endpoints = { "http://b:1" }, renew = 1 }]], "FERRY-0263" },
    { [[{ endpoints = { "http://b:1" }, feedback = { queue = 0 } }]], "FERRY-0264" },
    { [[{ endpoints = { "http://b:1" }, feedback = { every = 1 } }]], "FERRY-0264" },
    { [[{ endpoints = { "http://b:1" }, feedback = 3 }]], "FERRY-0264" },
    { [[{ endpoints = { "http://b:1" }, breaker = { failures = 0 } }]], "FERRY-0265" },
    { [[{ endpoints = { "http://b:1" }, breaker = { backoff = 5, max_backoff = 1 } }]],
      "FERRY-0265" },
    { [[{ endpoints = { "http://b:1" }, ttl = 3 }]], "FERRY-0266" },
    { [["http://b:1"]], "FERRY-0266" },
  }

  for _, r in ipairs(refusals) do
    it("refuses broker = " .. r[1]:gsub("%s+", " ") .. " with " .. r[2], function()
      local err = err_of(r[1])
      assert.truthy(err:find(r[2], 1, true), err)
      assert.truthy(err:find("cfg.lua:%d+"), err)
    end)
  end

  it("never prints the token when refusing it", function()
    local err = err_of([[{ endpoints = { "http://b:1" }, token = "sec ret-value" }]])
    assert.truthy(err:find("FERRY-0261", 1, true))
    assert.is_nil(err:find("ret-value", 1, true))
  end)

  it("needs embedded proxies and a pool of proxies", function()
    local cfg, err = config.load_string([[
pool "bin" { broker = { endpoints = { "http://b:1" } }, proxies = {} }
]], "cfg.lua")
    assert.is_nil(cfg)
    assert.truthy(err:find("FERRY-0267", 1, true), err)
    cfg, err = config.load_string([[
pool "web" { broker = { endpoints = { "http://b:1" } }, backends = { "http://10.0.0.1:80" } }
]], "cfg.lua")
    assert.is_nil(cfg)
    assert.truthy(err:find("FERRY-0267", 1, true), err)
  end)
end)

describe("hclient URL parsing", function()
  it("splits host, port and path", function()
    assert.same({ "a.test", 9090, "/", "http" }, { hclient.parse_url("http://a.test:9090") })
    assert.same({ "a.test", 443, "/x", "https" }, { hclient.parse_url("https://a.test/x") })
    assert.same({ "::1", 80, "/p", "http" }, { hclient.parse_url("http://[::1]/p") })
    assert.is_nil((hclient.parse_url("ftp://a.test")))
    assert.is_nil((hclient.parse_url("http://a b/")))
    assert.is_nil((hclient.parse_url("http://a.test/x y")))
  end)
end)

describe("broker batch feedback validation", function()
  it("checks one decoded object as the single form does", function()
    local f = assert(broker.check_feedback({ proxy_url = "socks5://h:1", exchange_id = "x",
      success = false, error_details = { kind = "timeout" } }))
    assert.is_false(f.ok)
    assert.equal("timeout", f.kind)
    local ok, code, field = broker.check_feedback({ proxy_url = "socks5://h:1", exchange_id = "x" })
    assert.is_nil(ok)
    assert.equal("FERRY-7101", code)
    assert.equal("success", field)
  end)
end)

describe("broker client feedback queue", function()
  -- Without the core: a fixed clock, and log lines kept for assertions.
  local bc = require("ferry.broker_client")
  local NOW, lines = 1000, {}
  bc._hooks(function() return NOW end, function(_, code, msg) lines[#lines + 1] = code .. " " .. msg end)
  local core = { ferry_now = function() return NOW end }

  after_each(function() bc._reset() end)

  it("queues outcomes of leased proxies only, bounded, counting what it drops", function()
    local st = bc._seed("q", { "socks5://u:secret@10.0.0.1:1080", "http://10.0.0.2:3128" }, 60,
      core.ferry_now())
    st.conf.feedback.queue = 3
    st.by_cid = { [7] = st.slots[1], [8] = st.slots[2] }
    local pool = { name = "q" }
    bc.outcome(pool, 7, true, 12.5)
    bc.outcome(pool, 8, false, nil, "timeout")
    bc.outcome(pool, 99, true, 1)        -- not a leased proxy: nothing
    bc.outcome(pool, 8, false, 30, "ban", 429)
    bc.outcome(pool, 7, true, 1)          -- full
    bc.outcome(pool, 7, true, 1)          -- full
    local s = bc.stats("q")
    assert.equal(3, s.feedback.queued)
    assert.equal(2, s.feedback.dropped)
    assert.equal(3, s.feedback.waiting)
    local q = st.queue
    assert.equal("socks5://u:secret@10.0.0.1:1080", q[1].proxy_url) -- the broker's own URL
    assert.is_true(q[1].success)
    assert.equal(12.5, q[1].latency_ms)
    assert.same({ kind = "timeout" }, q[2].error_details)
    assert.same({ status = 429 }, q[3].error_details) -- a ban: the broker's ban rules decide
    assert.equal("q", q[1].exchange_id)
    -- The console's view holds no credential.
    local text = require("cjson").encode(s)
    assert.is_nil(text:find("secret", 1, true))
    assert.truthy(bc.metrics_text():find('ferry_broker_client_feedback_total{pool="q",' ..
      'event="dropped"} 2', 1, true))
    -- Logged once (per 10 s), with its code, never the URL.
    local full = 0
    for _, l in ipairs(lines) do
      if l:find("^FERRY%-8114") then full = full + 1 end
      assert.is_nil(l:find("secret", 1, true))
    end
    assert.equal(1, full)
  end)

  it("queues nothing while the pool is on its fallback", function()
    local st = bc._seed("f", {}, 60, core.ferry_now())
    assert.is_true(st.fallback)
    bc.outcome({ name = "f" }, 1, true, 1)
    assert.equal(0, bc.stats("f").feedback.queued)
    assert.is_nil(bc.resolve("f"))
  end)

  it("resolves the cached leases in turn, skipping expired ones", function()
    local now = core.ferry_now()
    local st = bc._seed("r", { "socks5://10.0.0.1:1080", "socks5://10.0.0.2:1080" }, 60, now)
    local a, b, c = bc.resolve("r", now), bc.resolve("r", now), bc.resolve("r", now)
    assert.are_not.equal(a, b)
    assert.equal(a, c)
    st.slots[1].expires = now - 1
    for _ = 1, 4 do assert.equal("10.0.0.2", bc.resolve("r", now).host) end
  end)
end)
