-- The broker's validation (field by field, each error naming its field)
-- and its lease bookkeeping, without the core.
local broker = require("ferry.broker")
local cjson = require("cjson")

local function enc(t) return cjson.encode(t) end

-- nil, status, code, field, message -> a table for assertions
local function refusal(fn, body)
  local ok, status, code, field, msg = fn(body)
  assert.is_nil(ok, "expected a refusal of " .. tostring(body))
  return { status = status, code = code, field = field, msg = msg }
end

describe("broker request validation", function()
  local v = broker.validate_request

  it("accepts a documented lease request, field for field", function()
    local q = v(enc {
      exchange_id = "binance", connection_type = "websocket", region = "us-east-1",
      client_id = "cryptofeed-instance-123",
      metadata = { feed_types = { "trades", "book" }, symbols = { "BTC-USD", "ETH-USD" } },
    })
    assert.equal("binance", q.exchange_id)
    assert.equal("websocket", q.connection_type)
    assert.equal("us-east-1", q.region)
    assert.equal("cryptofeed-instance-123", q.client_id)
    assert.same({ "trades", "book" }, q.metadata.feed_types)
  end)

  it("needs only exchange_id and connection_type; null is absent", function()
    local q = v('{"exchange_id":"okx","connection_type":"http","region":null,' ..
      '"client_id":null,"metadata":null}')
    assert.same({ exchange_id = "okx", connection_type = "http" }, q)
    assert.is_nil(v('{"exchange_id":"okx","connection_type":"tcp","region":""}').region)
  end)

  it("names a missing required field (FERRY-7101)", function()
    local r = refusal(v, '{"connection_type":"http"}')
    assert.same({ 400, "FERRY-7101", "exchange_id" }, { r.status, r.code, r.field })
    assert.matches('"exchange_id" is required', r.msg, 1, true)
    r = refusal(v, '{"exchange_id":"okx"}')
    assert.equal("connection_type", r.field)
    r = refusal(v, '{"exchange_id":null,"connection_type":"http"}')
    assert.same({ "FERRY-7102", "exchange_id" }, { r.code, r.field })
    assert.matches("got null", r.msg)
  end)

  it("names a field of the wrong type (FERRY-7102)", function()
    local cases = {
      { '{"exchange_id":5,"connection_type":"http"}', "exchange_id", "must be a string, got a number" },
      { '{"exchange_id":"x","connection_type":true}', "connection_type", "got a boolean" },
      { '{"exchange_id":"x","connection_type":"http","region":7}', "region", "got a number" },
      { '{"exchange_id":"x","connection_type":"http","client_id":{}}', "client_id", "got an object" },
      { '{"exchange_id":"x","connection_type":"http","metadata":"m"}', "metadata",
        "must be an object, got a string" },
      { '{"exchange_id":"x","connection_type":"http","metadata":[1,2]}', "metadata", "got an array" },
      { '{"exchange_id":["x"],"connection_type":"http"}', "exchange_id", "got an array" },
    }
    for _, c in ipairs(cases) do
      local r = refusal(v, c[1])
      assert.same({ 400, "FERRY-7102", c[2] }, { r.status, r.code, r.field }, c[1])
      assert.matches(c[3], r.msg, 1, true)
    end
  end)

  it("checks values: connection types, lengths, empty names", function()
    local r = refusal(v, '{"exchange_id":"x","connection_type":"carrier-pigeon"}')
    assert.same({ "FERRY-7102", "connection_type" }, { r.code, r.field })
    assert.matches('"websocket"', r.msg, 1, true)
    r = refusal(v, enc { exchange_id = ("x"):rep(129), connection_type = "http" })
    assert.same({ "FERRY-7102", "exchange_id" }, { r.code, r.field })
    r = refusal(v, '{"exchange_id":"","connection_type":"http"}')
    assert.same({ "FERRY-7102", "exchange_id" }, { r.code, r.field })
    r = refusal(v, enc { exchange_id = "x", connection_type = "http", client_id = ("c"):rep(300) })
    assert.equal("client_id", r.field)
  end)

  it("refuses unknown fields, naming the first (FERRY-7103)", function()
    local r = refusal(v, '{"exchange_id":"x","connection_type":"http","zz":1,"ttl":5}')
    assert.same({ 400, "FERRY-7103", "ttl" }, { r.status, r.code, r.field })
    assert.matches('unknown field "ttl"', r.msg, 1, true)
    assert.matches("exchange_id, connection_type, region, client_id, metadata", r.msg, 1, true)
  end)

  it("refuses bodies that are not one JSON object (FERRY-7004)", function()
    for _, body in ipairs { "", "   ", "{oops", "[1,2]", "[]", '"str"', "42", "null",
                            '{"exchange_id":"x",}' } do
      local r = refusal(v, body)
      assert.same({ 400, "FERRY-7004" }, { r.status, r.code }, body)
      assert.is_nil(r.field)
    end
    assert.same({ 400, "FERRY-7004" }, { refusal(v, nil).status, refusal(v, nil).code })
  end)
end)

describe("broker feedback validation", function()
  local v = broker.validate_feedback
  local base = { proxy_url = "socks5://user:pass@proxy-server:1080", exchange_id = "binance",
                 connection_type = "websocket", success = true, latency_ms = 45,
                 error_details = cjson.null, timestamp = "2024-09-23T10:30:00Z",
                 client_id = "cryptofeed-instance-123" }
  local function with(changes)
    local t = {}
    for k, x in pairs(base) do t[k] = x end
    for k, x in pairs(changes) do
      if x == "<nil>" then t[k] = nil else t[k] = x end
    end
    return enc(t)
  end

  it("accepts a documented feedback report, field for field", function()
    local f = v(enc(base))
    assert.equal(base.proxy_url, f.proxy_url)
    assert.is_true(f.success)
    assert.is_true(f.ok)
    assert.equal(45, f.latency_ms)
    assert.is_nil(f.error_details)
    assert.is_nil(f.kind)
  end)

  it("needs proxy_url, exchange_id and success", function()
    for _, name in ipairs { "proxy_url", "exchange_id", "success" } do
      local r = refusal(v, with { [name] = "<nil>" })
      assert.same({ 400, "FERRY-7101", name }, { r.status, r.code, r.field })
    end
    -- The rest may be left out.
    assert.is_table(v('{"proxy_url":"http://h:1","exchange_id":"x","success":false}'))
  end)

  it("names fields of the wrong type or value", function()
    local cases = {
      { { success = "yes" }, "success", "must be a boolean" },
      { { success = 1 }, "success", "got a number" },
      { { latency_ms = "45" }, "latency_ms", "must be a number" },
      { { latency_ms = -1 }, "latency_ms", "from 0 to 3600000" },
      { { latency_ms = 1e12 }, "latency_ms", "from 0 to 3600000" },
      { { timestamp = "yesterday" }, "timestamp", "RFC 3339" },
      { { timestamp = true }, "timestamp", "got a boolean" },
      { { error_details = 5 }, "error_details", "must be a string or an object" },
      { { error_details = { kind = "bad-luck" } }, "error_details.kind", '"timeout"' },
      { { error_details = { status = 99 } }, "error_details.status", "100 to 599" },
      { { error_details = { status = 200.5 } }, "error_details.status", "100 to 599" },
      { { connection_type = "smoke" }, "connection_type", '"http"' },
      { { proxy_url = 3 }, "proxy_url", "must be a string" },
    }
    for _, c in ipairs(cases) do
      local r = refusal(v, with(c[1]))
      assert.same({ 400, "FERRY-7102", c[2] }, { r.status, r.code, r.field }, c[2])
      assert.matches(c[3], r.msg, 1, true)
    end
    -- NaN and infinities decode as numbers but are no latency.
    local r = refusal(v, '{"proxy_url":"http://h:1","exchange_id":"x","success":true,' ..
      '"latency_ms":NaN}')
    assert.equal("latency_ms", r.field)
  end)

  it("refuses unknown fields, also inside error_details", function()
    local r = refusal(v, with { latency = 3 })
    assert.same({ "FERRY-7103", "latency" }, { r.code, r.field })
    r = refusal(v, with { error_details = { kind = "timeout", stack = "..." } })
    assert.same({ "FERRY-7103", "error_details.stack" }, { r.code, r.field })
  end)

  it("accepts Unix timestamps and RFC 3339 with offsets", function()
    assert.is_table(v(with { timestamp = 1727087400 }))
    assert.is_table(v(with { timestamp = "2024-09-23T10:30:00.123+02:00" }))
  end)

  it("derives the failure kind from error_details", function()
    assert.equal("timeout", v(with { success = false, error_details = "read timed out" }).kind)
    assert.equal("refused", v(with { success = false, error_details = "Connection refused" }).kind)
    assert.equal("auth", v(with { success = false, error_details = "407 from proxy" }).kind)
    assert.equal("reset", v(with { success = false, error_details = "something odd" }).kind)
    assert.equal("reset", v(with { success = false }).kind)
    assert.equal("handshake", v(with { success = false,
      error_details = { kind = "handshake", message = "timeout" } }).kind)
  end)

  it("lets a status decide as it does for real traffic", function()
    local f = v(with { success = false, error_details = { status = 429 } })
    assert.is_true(f.ok) -- the proxy carried the answer; ban rules judge the 429
    assert.equal(429, f.status)
    f = v(with { success = true, error_details = { status = 502 } })
    assert.is_false(f.ok)
    assert.equal("http5xx", f.kind)
  end)
end)

describe("broker leases", function()
  local clock, held, dues, evictions
  local function fresh(max)
    clock, held, dues, evictions = 1000, {}, {}, 0
    return broker.new_leases {
      now = function() return clock end,
      hold = function(id, d) held[id] = (held[id] or 0) + d end,
      max = max or 100,
      on_evict = function() evictions = evictions + 1 end,
      on_due = function(at) dues[#dues + 1] = at or false end,
    }
  end

  it("holds the proxy until feedback ends the lease", function()
    local L = fresh()
    L:grant(7, 1, "c1", 300)
    L:grant(7, 1, "c1", 300)
    assert.equal(2, held[7])
    assert.equal(1300, dues[1])
    assert.is_true(L:release(7, 1, "c1"))
    assert.equal(1, held[7])
    assert.equal(1, L:count(7, 1, "c1"))
    -- Another client's or exchange's feedback does not end this lease.
    assert.is_false(L:release(7, 1, "c2"))
    assert.is_false(L:release(7, 2, "c1"))
    assert.equal(1, held[7])
  end)

  it("ends leases at their TTL, once, feedback or not", function()
    local L = fresh()
    L:grant(1, 1, nil, 300)
    clock = 1100
    L:grant(2, 1, nil, 300)
    assert.is_true(L:release(1, 1, nil))
    assert.same({ [1] = 0, [2] = 1 }, held)
    clock = 1300
    L:expire()
    -- Lease 1 was ended by feedback: its expiry changes nothing.
    assert.same({ [1] = 0, [2] = 1 }, held)
    assert.equal(1400, dues[#dues])
    clock = 1400
    L:expire()
    assert.same({ [1] = 0, [2] = 0 }, held)
    assert.is_false(dues[#dues])
    assert.equal(0, L.held)
    assert.equal(1, L.expired)
    assert.equal(1, L.released)
    -- Late feedback of an expired lease ends nothing.
    assert.is_false(L:release(2, 1, nil))
    assert.same({ [1] = 0, [2] = 0 }, held)
  end)

  it("stays bounded: the oldest lease ends early when full", function()
    local L = fresh(3)
    for i = 1, 5 do
      clock = 1000 + i
      L:grant(i, 1, "c", 300)
    end
    assert.equal(3, L.n)
    assert.equal(2, evictions)
    assert.same({ 0, 0, 1, 1, 1 }, { held[1], held[2], held[3], held[4], held[5] })
    -- The ring wraps around and still expires in order.
    clock = 1304
    L:expire()
    assert.same({ 0, 0, 0, 0, 1 }, { held[1], held[2], held[3], held[4], held[5] })
    clock = 2000
    L:expire()
    assert.equal(0, held[5])
    assert.equal(0, L.n)
  end)

  it("ends a backlog a bounded step at a time, due again at once", function()
    local L = fresh(5000)
    for i = 1, 2500 do L:grant(i, 1, nil, 10) end
    clock = 1010
    L:expire(nil, 1000)
    assert.equal(1500, L.n)
    assert.equal(1010, dues[#dues]) -- the rest is due now
    L:expire(nil, 1000)
    L:expire(nil, 1000)
    assert.equal(0, L.n)
    assert.is_false(dues[#dues])
    assert.equal(2500, L.expired)
  end)

  it("keeps no per-key state once a key has no lease", function()
    local L = fresh()
    for i = 1, 50 do L:grant(i % 5, 1, "c" .. i, 10) end
    for i = 1, 25 do L:release(i % 5, 1, "c" .. i) end
    clock = 1010
    L:expire()
    assert.is_nil(next(L.live))
    assert.is_nil(next(L.credit))
    for id = 0, 4 do assert.equal(0, held[id]) end
  end)
end)

describe("broker { ttl } in the config", function()
  local config = require("ferry.config")
  local function load(src) return config.load_string(src, "cfg.lua") end
  local base = 'pool "p" { proxies = { "http://127.0.0.1:1" } }\n'

  it("is optional and sets the lease TTL", function()
    assert.is_nil(assert(load(base)).broker)
    assert.equal(30, assert(load(base .. "broker { ttl = 30 }")).broker.ttl)
    assert.equal(300, assert(load(base .. "broker { }")).broker.ttl)
  end)

  it("refuses bad values and unknown fields with file:line", function()
    for src, msg in pairs {
      ["broker { ttl = 0 }"] = "ttl must be between 1 and 86400",
      ["broker { ttl = 1.5 }"] = "ttl must be a whole number",
      ["broker { ttl = \"5\" }"] = "ttl must be a number",
      ["broker { tll = 5 }"] = "tll",
      ["broker(5)"] = "expected a table",
      ["broker { } broker { }"] = "declared twice",
    } do
      local cfg, err = load(base .. src)
      assert.is_nil(cfg, src)
      assert.matches("cfg.lua:2:", err, 1, true)
      assert.matches(msg, err, 1, true)
    end
  end)
end)
