-- The broker API against the real binary, real microsocks proxies (with
-- credentials) and the spec origin: authentication, validation, a round
-- trip (request -> use the URL -> feedback -> health changes), leases as
-- active uses, the region filter, 503 with the pool's fallback policy,
-- and no password in the log.
local procs = require("procs")
local cjson = require("cjson")
local http = require("socket.http")
local ltn12 = require("ltn12")

local TOKEN = "broker-spec-token-" .. math.random(1e6, 9e6)
local PW1, PW2, PW3 = "pw-one-" .. math.random(1e6, 9e6), "pw-two-" .. math.random(1e6, 9e6),
  "pw-three-" .. math.random(1e6, 9e6)

-- POST a body (a string, or a table sent as JSON) to the admin API.
-- token: nil for the right one, false for none, a string for that one.
local function post(port, path, body, token)
  if type(body) == "table" then body = cjson.encode(body) end
  local out = {}
  local headers = { ["Content-Type"] = "application/json",
                    ["Content-Length"] = tostring(#body) }
  if token ~= false then headers["Authorization"] = "Bearer " .. (token or TOKEN) end
  local _, code, hdrs = http.request {
    url = "http://127.0.0.1:" .. port .. path, method = "POST", headers = headers,
    source = ltn12.source.string(body), sink = ltn12.sink.table(out),
  }
  local text = table.concat(out)
  return code, cjson.decode(text) or text, hdrs
end

describe("broker API", function()
  local origin, s1, s2, s3, ferry
  local O, S1, S2, S3 = procs.free_port(), procs.free_port(), procs.free_port(), procs.free_port()
  local F, A, DEAD = procs.free_port(), procs.free_port(), procs.free_port()

  local function request(body, token) return post(A, "/api/v1/proxy/request", body, token) end
  local function feedback(body, token) return post(A, "/api/v1/proxy/feedback", body, token) end

  setup(function()
    origin = procs.origin(O)
    s1 = procs.microsocks(S1, "alice", PW1)
    s2 = procs.microsocks(S2, "bob", PW2)
    s3 = procs.microsocks(S3, "carol", PW3)
    ferry = procs.ferry(string.format([[
listen { name = "main", addr = "127.0.0.1:%d" }
admin { addr = "127.0.0.1:%d", token = "%s" }
log { level = "debug" }
pool "main" { strategy = "health_score", all_down = "fail", retries = 0,
  health = { interval = 60 },
  breaker = { policy = "consecutive", failures = 3, cooldown = 60 },
  proxies = {
    { url = "socks5://alice:%s@127.0.0.1:%d", id = "s1", region = "eu-west-1" },
    { url = "socks5://bob:%s@127.0.0.1:%d", id = "s2", region = "us-east-1" } } }
pool "lc" { strategy = "least_conn", proxies = {
    { url = "socks5://carol:%s@127.0.0.1:%d", id = "c1" },
    { url = "socks5://127.0.0.1:%d", id = "c2" } } }
pool "deadd" { all_down = "direct", health = { interval = 60 },
  proxies = { { url = "socks5://127.0.0.1:%d", id = "d1" } } }
pool "deadf" { all_down = "fail", health = { interval = 60 },
  proxies = { { url = "socks5://127.0.0.1:%d", id = "d1" } } }
exchange "binance" { hosts = { "127.0.0.1" }, pool = "main" }
exchange "okx" { hosts = { "okx.test" }, pool = "lc" }
exchange "gone_direct" { hosts = { "d.test" }, pool = "deadd" }
exchange "gone_fail" { hosts = { "f.test" }, pool = "deadf" }
exchange "plain" { hosts = { "plain.test" }, pool = "direct" }
]], F, A, TOKEN, PW1, S1, PW2, S2, PW3, S3, S3, DEAD, DEAD), { F, A })
  end)

  teardown(function()
    procs.stop_ferry(ferry)
    for _, p in ipairs { origin, s1, s2, s3 } do procs.stop(p) end
  end)

  describe("authentication", function()
    it("answers 401 without a token or with a wrong one", function()
      for _, tok in ipairs { false, "wrong-token-1234" } do
        local code, body, hdrs = request({ exchange_id = "binance", connection_type = "http" },
          tok)
        assert.equal(401, code)
        assert.equal("FERRY-7005", body.error)
        assert.matches("Bearer", hdrs["www-authenticate"])
        code, body = feedback({ proxy_url = "socks5://127.0.0.1:1", exchange_id = "binance",
          success = true }, tok)
        assert.equal(401, code)
        assert.equal("FERRY-7005", body.error)
      end
    end)
  end)

  describe("validation", function()
    it("refuses malformed JSON and bodies that are not an object", function()
      for _, body in ipairs { "{not json", "[1,2]", "" } do
        local code, res = request(body)
        assert.equal(400, code)
        assert.equal("FERRY-7004", res.error)
        assert.is_string(res.request_id)
      end
      local code, res = feedback("{\"success\":")
      assert.equal(400, code)
      assert.equal("FERRY-7004", res.error)
    end)

    it("names unknown fields", function()
      local code, res = request { exchange_id = "binance", connection_type = "http",
        proxy_type = "socks5" }
      assert.equal(400, code)
      assert.same({ "FERRY-7103", "proxy_type" }, { res.error, res.field })
      code, res = feedback { proxy_url = "socks5://127.0.0.1:1", exchange_id = "binance",
        success = true, latency = 4 }
      assert.equal(400, code)
      assert.same({ "FERRY-7103", "latency" }, { res.error, res.field })
    end)

    it("names missing fields and fields of the wrong type", function()
      local code, res = request { connection_type = "websocket" }
      assert.equal(400, code)
      assert.same({ "FERRY-7101", "exchange_id" }, { res.error, res.field })
      code, res = request { exchange_id = "binance", connection_type = "websocket", region = 1 }
      assert.equal(400, code)
      assert.same({ "FERRY-7102", "region" }, { res.error, res.field })
      code, res = feedback { proxy_url = "socks5://127.0.0.1:1", exchange_id = "binance",
        success = "true" }
      assert.equal(400, code)
      assert.same({ "FERRY-7102", "success" }, { res.error, res.field })
      code, res = feedback { proxy_url = "socks5://127.0.0.1:1", exchange_id = "binance" }
      assert.equal(400, code)
      assert.same({ "FERRY-7101", "success" }, { res.error, res.field })
    end)

    it("answers 404 for an unknown exchange and an unknown proxy", function()
      local code, res = request { exchange_id = "kraken", connection_type = "http" }
      assert.equal(404, code)
      assert.same({ "FERRY-7104", "exchange_id" }, { res.error, res.field })
      code, res = feedback { proxy_url = "socks5://127.0.0.1:1", exchange_id = "kraken",
        success = true }
      assert.equal(404, code)
      assert.equal("FERRY-7104", res.error)
      code, res = feedback { proxy_url = "socks5://eve:pw@127.0.0.1:1", exchange_id = "binance",
        success = true }
      assert.equal(404, code)
      assert.same({ "FERRY-7106", "proxy_url" }, { res.error, res.field })
      assert.is_nil(res.message:find("eve", 1, true))
    end)
  end)

  describe("a round trip", function()
    it("request -> use the URL -> feedback -> the proxy's health changes", function()
      local code, lease = request { exchange_id = "binance", connection_type = "websocket",
        region = "eu-west-1", client_id = "cryptofeed-1",
        metadata = { feed_types = { "trades", "book" }, symbols = { "BTC-USD" } } }
      assert.equal(200, code)
      assert.equal(("socks5://alice:%s@127.0.0.1:%d"):format(PW1, S1), lease.proxy_url)
      assert.equal("health_score", lease.strategy)
      assert.equal(300, lease.ttl_seconds)
      assert.equal("fail", lease.fallback_policy)
      assert.equal("s1", lease.metadata.proxy_id)
      assert.equal("eu-west-1", lease.metadata.region)
      assert.equal(1, lease.metadata.health_score)

      -- The URL works as it is, credentials included.
      local status, body = procs.curl { proxy = lease.proxy_url,
        url = "http://127.0.0.1:" .. O .. "/" }
      assert.equal(200, status)
      assert.equal("hello from origin\n", body)

      local c2, ok = feedback { proxy_url = lease.proxy_url, exchange_id = "binance",
        connection_type = "websocket", success = true, latency_ms = 45, error_details = cjson.null,
        timestamp = "2024-09-23T10:30:00Z", client_id = "cryptofeed-1" }
      assert.equal(200, c2)
      assert.is_true(ok.accepted)
      assert.is_true(ok.lease_ended)
      assert.equal("s1", ok.proxy_id)
      assert.is_true(ok.up)

      -- Three timeouts reported: the proxy goes down (fall 3) and the
      -- pair's breaker opens (3 in a row); its score falls.
      local last
      for _ = 1, 3 do
        local c3, res = feedback { proxy_url = lease.proxy_url, exchange_id = "binance",
          connection_type = "websocket", success = false, latency_ms = cjson.null,
          error_details = "connect timed out", timestamp = "2024-09-23T10:31:00Z",
          client_id = "cryptofeed-1" }
        assert.equal(200, c3)
        assert.is_true(res.accepted)
        assert.is_false(res.lease_ended) -- that lease already ended
        last = res
      end
      assert.is_false(last.up)
      assert.equal("open", last.breaker)
      assert.is_true(last.health_score < 0.5)

      -- The next lease goes elsewhere ...
      local c4, other = request { exchange_id = "binance", connection_type = "websocket",
        client_id = "cryptofeed-1" }
      assert.equal(200, c4)
      assert.equal("s2", other.metadata.proxy_id)
      assert.equal(("socks5://bob:%s@127.0.0.1:%d"):format(PW2, S2), other.proxy_url)
      -- ... and so does the data plane, which shares that view of health.
      for _ = 1, 3 do
        local st, _, hdrs = procs.curl { proxy = "http://127.0.0.1:" .. F,
          url = "http://127.0.0.1:" .. O .. "/" }
        assert.equal(200, st)
        assert.matches("X%-Ferry%-Proxy: s2", hdrs)
      end
      -- Down and open for eu-west-1's only proxy: all_down = "fail".
      local c5, none = request { exchange_id = "binance", connection_type = "http",
        region = "eu-west-1" }
      assert.equal(503, c5)
      assert.equal("FERRY-7105", none.error)
      assert.equal("fail", none.fallback_policy)
    end)

    it("feedback with a credential-less URL finds the proxy too", function()
      local code, res = feedback { proxy_url = "socks5://127.0.0.1:" .. S2,
        exchange_id = "binance", success = true, latency_ms = 12 }
      assert.equal(200, code)
      assert.equal("s2", res.proxy_id)
    end)
  end)

  local function metrics_text()
    local out = {}
    http.request { url = "http://127.0.0.1:" .. A .. "/metrics",
      headers = { Authorization = "Bearer " .. TOKEN }, sink = ltn12.sink.table(out) }
    return table.concat(out)
  end

  -- ferry_proxy_active_connections of a proxy, from /metrics.
  local function active_of(id)
    local v = metrics_text():match('ferry_proxy_active_connections{proxy="' .. id ..
      '",pool="lc"} (%d+)')
    return tonumber(v)
  end

  local function lease_metric(pattern)
    return tonumber(metrics_text():match(pattern))
  end

  describe("leases", function()
    it("count as active uses until feedback ends them", function()
      local held0 = lease_metric("\nferry_broker_leases (%d+)")
      local granted0 = lease_metric('ferry_broker_lease_events_total{event="granted"} (%d+)')
      local released0 = lease_metric('ferry_broker_lease_events_total{event="released"} (%d+)')
      local _, a = request { exchange_id = "okx", connection_type = "http", client_id = "A" }
      local _, b = request { exchange_id = "okx", connection_type = "http", client_id = "B" }
      assert.equal("least_conn", a.strategy)
      -- The first lease holds its proxy: least_conn takes the other.
      assert.are_not.equal(a.metadata.proxy_id, b.metadata.proxy_id)
      assert.equal(1, active_of(a.metadata.proxy_id))
      assert.equal(1, active_of(b.metadata.proxy_id))
      assert.equal(held0 + 2, lease_metric("\nferry_broker_leases (%d+)"))
      assert.equal(granted0 + 2, lease_metric('ferry_broker_lease_events_total{event="granted"} (%d+)'))
      local _, res = feedback { proxy_url = a.proxy_url, exchange_id = "okx", success = true,
        client_id = "A" }
      assert.is_true(res.lease_ended)
      assert.equal(0, active_of(a.metadata.proxy_id))
      assert.equal(released0 + 1,
        lease_metric('ferry_broker_lease_events_total{event="released"} (%d+)'))
      local _, c = request { exchange_id = "okx", connection_type = "http", client_id = "C" }
      assert.equal(a.metadata.proxy_id, c.metadata.proxy_id)
      -- A URL without credentials comes back as such.
      local c2 = a.metadata.proxy_id == "c2" and a or b
      assert.equal("socks5://127.0.0.1:" .. S3, c2.proxy_url)
      local c1 = a.metadata.proxy_id == "c1" and a or b
      assert.equal(("socks5://carol:%s@127.0.0.1:%d"):format(PW3, S3), c1.proxy_url)
    end)
  end)

  describe("region", function()
    it("filters by the proxy's region", function()
      for _ = 1, 3 do
        local code, res = request { exchange_id = "binance", connection_type = "http",
          region = "us-east-1" }
        assert.equal(200, code)
        assert.equal("s2", res.metadata.proxy_id)
        assert.equal("us-east-1", res.metadata.region)
      end
      local code, res = request { exchange_id = "binance", connection_type = "http",
        region = "ap-south-1" }
      assert.equal(503, code)
      assert.same({ "FERRY-7105", "region", "fail" }, { res.error, res.field, res.fallback_policy })
    end)
  end)

  describe("nothing available", function()
    it("answers 503 with the pool's fallback policy when every proxy is down", function()
      -- Both pools hold the one proxy d1 (same id, one C proxy).
      local code, lease = request { exchange_id = "gone_direct", connection_type = "tcp" }
      assert.equal(200, code) -- up until told otherwise
      assert.equal("d1", lease.metadata.proxy_id)
      local c2, res = feedback { proxy_url = lease.proxy_url, exchange_id = "gone_direct",
        success = false, error_details = { kind = "refused", message = "ECONNREFUSED" } }
      assert.equal(200, c2)
      assert.is_false(res.up) -- a refused connect takes it down at once
      code, res = request { exchange_id = "gone_direct", connection_type = "tcp" }
      assert.equal(503, code)
      assert.same({ "FERRY-7105", "direct_connection", "deadd" },
        { res.error, res.fallback_policy, res.pool })
      assert.is_string(res.request_id)
      code, res = request { exchange_id = "gone_fail", connection_type = "tcp" }
      assert.equal(503, code)
      assert.same({ "FERRY-7105", "fail" }, { res.error, res.fallback_policy })
    end)

    it("an exchange that goes direct gets no proxy and the direct policy", function()
      local code, res = request { exchange_id = "plain", connection_type = "https" }
      assert.equal(200, code)
      assert.equal(cjson.null, res.proxy_url)
      assert.equal("direct", res.strategy)
      assert.equal("direct_connection", res.fallback_policy)
    end)
  end)

  describe("secrets", function()
    it("no proxy password or admin token ever appears in ferry's log", function()
      procs.sleep(0.2)
      local log = procs.read_file(ferry.log)
      assert.is_true(#log > 0)
      for _, secret in ipairs { PW1, PW2, PW3, TOKEN } do
        assert.is_nil(log:find(secret, 1, true), "found a secret in the log")
      end
      for _, l in ipairs(procs.log_lines(ferry)) do
        assert.is_nil(l.unparsed, "a log line is not JSON: " .. tostring(l.unparsed))
      end
    end)
  end)
end)

describe("broker leases with a short TTL", function()
  local ferry
  local A, F, D1, D2 = procs.free_port(), procs.free_port(), procs.free_port(), procs.free_port()

  local function active_of(id)
    local out = {}
    http.request { url = "http://127.0.0.1:" .. A .. "/metrics",
      headers = { Authorization = "Bearer " .. TOKEN }, sink = ltn12.sink.table(out) }
    return tonumber(table.concat(out):match('ferry_proxy_active_connections{proxy="' .. id ..
      '",pool="lc"} (%d+)'))
  end

  setup(function()
    ferry = procs.ferry(string.format([[
listen { name = "main", addr = "127.0.0.1:%d" }
admin { addr = "127.0.0.1:%d", token = "%s" }
broker { ttl = 1 }
pool "lc" { strategy = "least_conn", proxies = {
  { url = "socks5://127.0.0.1:%d", id = "t1" }, { url = "socks5://127.0.0.1:%d", id = "t2" } } }
exchange "okx" { hosts = { "okx.test" }, pool = "lc" }
]], F, A, TOKEN, D1, D2), { F, A })
  end)

  teardown(function() procs.stop_ferry(ferry) end)

  it("ends leases at their TTL without feedback", function()
    local leased = {}
    for i = 1, 4 do
      local code, res = post(A, "/api/v1/proxy/request",
        { exchange_id = "okx", connection_type = "tcp", client_id = "k" .. i })
      assert.equal(200, code)
      assert.equal(1, res.ttl_seconds)
      leased[res.metadata.proxy_id] = (leased[res.metadata.proxy_id] or 0) + 1
    end
    assert.same({ t1 = 2, t2 = 2 }, leased) -- least_conn spreads the leases
    assert.equal(2, active_of("t1"))
    procs.sleep(1.3)
    -- Nothing else happened: the first admin request (or dispatch) after
    -- the TTL ends them.
    assert.equal(0, active_of("t1"))
    assert.equal(0, active_of("t2"))
  end)
end)
