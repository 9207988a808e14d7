-- A pool that leases its proxies from brokers (pool { broker = ... }):
-- a real ferry is the broker (its admin API, real microsocks proxies),
-- a second ferry is its client.  Leases through the second endpoint when
-- the first is dead, requests through the leased proxies, feedback at the
-- broker, renewal, the broker killed (fallback to the embedded proxy once
-- the last lease ran out, requests never fail), the broker back (leases
-- again), and fake brokers that answer garbage, 500, 401, hang, or lease
-- an invalid proxy URL.  No token or password in any log line.
local procs = require("procs")
local socket = require("socket")

local TOKEN = "bc-token-" .. math.random(1e6, 9e6)
local PW = "bc-pw-" .. math.random(1e6, 9e6)
local TTL = 2

local function lines_with(proc, code)
  local out = {}
  for _, l in ipairs(procs.log_lines(proc)) do
    if l.code == code then out[#out + 1] = l end
  end
  return out
end

local function get(port, origin)
  return procs.curl { url = "http://127.0.0.1:" .. origin .. "/", proxy = "http://127.0.0.1:" ..
    port, max_time = 5 }
end

-- The proxy of the last access line of ferry `proc` (its display URL).
local function last_proxy(proc)
  local acc = lines_with(proc, "FERRY-0200")
  return acc[#acc] and acc[#acc].proxy
end

local function no_secret(proc)
  local text = procs.read_file(proc.log)
  assert.is_nil(text:find(TOKEN, 1, true), "the token is in the log of " .. proc.name)
  assert.is_nil(text:find(PW, 1, true), "a proxy password is in the log of " .. proc.name)
end

local function fake(mode, port, proxy)
  local p = procs.spawn("fake-" .. mode, "python3 " .. procs.root .. "/spec/helpers/fake_broker.py " ..
    mode .. " " .. port .. (proxy and (" " .. proxy) or ""))
  assert(procs.wait_port(port), "fake broker did not start:\n" .. procs.read_file(p.log))
  return p
end

describe("broker client", function()
  local O, S1, S2, SF = procs.free_port(), procs.free_port(), procs.free_port(), procs.free_port()
  local BL, BA, DEAD = procs.free_port(), procs.free_port(), procs.free_port()
  local CL, CA = procs.free_port(), procs.free_port()
  local SOCK = procs.tmp .. "/bc-" .. math.random(1e6, 9e6) .. ".sock"
  local origin, s1, s2, sf, broker, client

  local broker_cfg = string.format([[
listen { name = "main", addr = "127.0.0.1:%d" }
admin { addr = "127.0.0.1:%d", token = "%s" }
broker { ttl = %d }
pool "main" { strategy = "round_robin", health = { interval = 60 }, proxies = {
  { url = "socks5://alice:%s@127.0.0.1:%d", id = "s1" },
  { url = "socks5://127.0.0.1:%d", id = "s2" } } }
exchange "binance" { hosts = { "127.0.0.1" }, pool = "main" }
]], BL, BA, TOKEN, TTL, PW, S1, S2)

  local function start_broker()
    broker = procs.ferry(broker_cfg, { BL, BA }, "broker")
  end

  local function bmetric(name, labels)
    local status, body = procs.curl { url = "http://127.0.0.1:" .. BA .. "/metrics",
      flags = "-H 'Authorization: Bearer " .. TOKEN .. "'", max_time = 5 }
    if status ~= 200 then return nil end
    local key = name .. (labels and ("{" .. labels .. "}") or "")
    local v = ("\n" .. body):match("\n" .. key:gsub("%p", "%%%0") .. " (%S+)\n")
    return v and tonumber(v)
  end

  local function cmetric(name, labels) return procs.metric(CA, name, labels) end

  setup(function()
    origin = procs.origin(O)
    s1 = procs.microsocks(S1, "alice", PW)
    s2 = procs.microsocks(S2)
    sf = procs.microsocks(SF)
    start_broker()
    client = procs.ferry(string.format([[
listen { name = "main", addr = "127.0.0.1:%d" }
admin { addr = "127.0.0.1:%d", socket = "%s" }
pool "bin" { strategy = "round_robin",
  broker = { endpoints = { "http://127.0.0.1:%d", "http://127.0.0.1:%d" }, token = "%s",
             exchange = "binance", region = nil, leases = 2, timeout = 1,
             feedback = { interval = 0.2 }, breaker = { failures = 2, backoff = 0.2 } },
  proxies = { { url = "socks5://127.0.0.1:%d", id = "fallback" } } }
exchange "binance" { hosts = { "127.0.0.1" }, pool = "bin" }
]], CL, CA, SOCK, DEAD, BA, TOKEN, SF), { CL, CA }, "client")
  end)

  teardown(function()
    if client then procs.stop_ferry(client) end
    if broker then procs.stop_ferry(broker) end
    for _, p in ipairs { origin, s1, s2, sf } do procs.stop(p) end
  end)

  it("leases through the second endpoint when the first is dead", function()
    assert.truthy(procs.wait_for(function()
      return (cmetric("ferry_broker_client_leases", 'pool="bin"') or 0) >= 2
    end, 10), procs.read_file(client.log))
    assert.equal(0, cmetric("ferry_broker_client_fallback_active", 'pool="bin"'))
    local dead = string.format('pool="bin",endpoint="http://127.0.0.1:%d",outcome="failed"', DEAD)
    assert.is_true(cmetric("ferry_broker_client_requests_total", dead) >= 1)
    local ok = string.format('pool="bin",endpoint="http://127.0.0.1:%d",outcome="ok"', BA)
    assert.is_true(cmetric("ferry_broker_client_requests_total", ok) >= 2)
    -- Every call is logged with its correlation id.
    local leased = lines_with(client, "FERRY-8102")
    assert.is_true(#leased >= 2)
    assert.truthy(leased[1].msg:find("%[ferry%-%d+%-%d+%]"))
    assert.truthy(lines_with(client, "FERRY-8100")[1].msg:find("127.0.0.1:" .. DEAD, 1, true))
  end)

  it("sends requests through the leased proxies and feedback to the broker", function()
    local seen = {}
    for _ = 1, 6 do
      local status, body = get(CL, O)
      assert.equal(200, status, body)
      seen[last_proxy(client)] = true
    end
    -- Both broker proxies, never the embedded one.
    assert.truthy(seen["socks5://127.0.0.1:" .. S2], "the leased proxy s2 carried nothing")
    assert.is_nil(seen["socks5://127.0.0.1:" .. SF])
    local via_s1 = false
    for k in pairs(seen) do if k:find(":" .. S1, 1, true) then via_s1 = true end end
    assert.is_true(via_s1, "the leased proxy s1 carried nothing")
    -- The broker counted the feedback as outcomes of its proxies.
    assert.truthy(procs.wait_for(function()
      return (cmetric("ferry_broker_client_feedback_total", 'pool="bin",event="sent"') or 0) >= 6
    end, 5))
    assert.truthy(procs.wait_for(function()
      local a = bmetric("ferry_proxy_successes_total", 'proxy="s1",pool="main"') or 0
      local b = bmetric("ferry_proxy_successes_total", 'proxy="s2",pool="main"') or 0
      return a + b >= 6
    end, 5))
    assert.equal(0, cmetric("ferry_broker_client_feedback_total", 'pool="bin",event="dropped"'))
  end)

  it("takes feedback in batches at the broker (an array), one result per element", function()
    local body = string.format('[{"proxy_url":"socks5://127.0.0.1:%d","exchange_id":"binance",' ..
      '"success":true,"latency_ms":3},{"exchange_id":"binance"},' ..
      '{"proxy_url":"socks5://127.0.0.1:1","exchange_id":"binance","success":false}]', S2)
    local out = io.popen("curl -s -X POST -H 'Authorization: Bearer " .. TOKEN .. "' " ..
      "-H 'Content-Type: application/json' --data '" .. body .. "' http://127.0.0.1:" .. BA ..
      "/api/v1/proxy/feedback"):read("*a")
    local res = require("cjson").decode(out)
    assert.equal(1, res.accepted, out)
    assert.equal(2, res.refused)
    assert.is_true(res.results[1].accepted)
    assert.equal("s2", res.results[1].proxy_id)
    assert.equal("FERRY-7101", res.results[2].error)
    assert.equal("FERRY-7106", res.results[3].error)
  end)

  it("renews leases before their TTL ends", function()
    local before = #lines_with(client, "FERRY-8102")
    -- Two TTLs: each of the two slots renewed at least twice, never expired.
    socket.sleep(2 * TTL + 0.3)
    assert.is_true(#lines_with(client, "FERRY-8102") >= before + 4)
    assert.equal(0, #lines_with(client, "FERRY-8113"))
    assert.equal(0, #lines_with(client, "FERRY-8110"))
    assert.equal(2, cmetric("ferry_broker_client_leases", 'pool="bin"'))
  end)

  it("falls back to the embedded proxy within 1 s once the broker is gone, and back", function()
    procs.stop_ferry(broker)
    broker = nil
    local killed = socket.gettime()
    -- Requests never fail meanwhile; the switch comes at most TTL (the
    -- last lease renewed just before the kill) plus one tick later.
    local switched
    for _ = 1, 200 do
      local status, body = get(CL, O)
      assert.equal(200, status, body)
      if last_proxy(client) == "socks5://127.0.0.1:" .. SF then
        switched = socket.gettime()
        break
      end
      socket.sleep(0.05)
    end
    assert.truthy(switched, "the embedded proxy was never used")
    assert.is_true(switched - killed <= TTL + 1, string.format("switched %.2f s after the kill",
      switched - killed))
    -- The fallback started within 1 s of the last lease running out: the
    -- last lease taken before the kill plus its TTL, by the log's clock.
    local ran_out = lines_with(client, "FERRY-8113")
    local engaged = lines_with(client, "FERRY-8110")
    assert.is_true(#ran_out >= 1 and #engaged == 1, procs.read_file(client.log))
    local function secs(l)
      local h, m, sec = l.time:match("T(%d+):(%d+):([%d.]+)Z$")
      return tonumber(h) * 3600 + tonumber(m) * 60 + tonumber(sec)
    end
    local leased = lines_with(client, "FERRY-8102")
    local last_lease
    for _, l in ipairs(leased) do
      if secs(l) <= secs(engaged[1]) then last_lease = l end
    end
    local late = secs(engaged[1]) - (secs(last_lease) + TTL)
    assert.is_true(late >= -0.05 and late <= 1, string.format("fallback %.2f s after the " ..
      "last lease ran out", late))
    assert.equal(1, cmetric("ferry_broker_client_fallback_active", 'pool="bin"'))
    -- The endpoint's breaker opened (connection refused counts).
    assert.truthy(#lines_with(client, "FERRY-8107") >= 1)
    for _ = 1, 3 do assert.equal(200, (get(CL, O))) end
    -- The broker comes back: leases again, the fallback ends.
    start_broker()
    assert.truthy(procs.wait_for(function()
      return cmetric("ferry_broker_client_fallback_active", 'pool="bin"') == 0
    end, 10), procs.read_file(client.log))
    assert.equal(1, #lines_with(client, "FERRY-8111") - 1) -- the start, and now
    local status = get(CL, O)
    assert.equal(200, status)
    assert.is_not.equal("socks5://127.0.0.1:" .. SF, last_proxy(client))
  end)

  it("keeps its leases across a reload that leaves the broker config alone", function()
    local before = #lines_with(client, "FERRY-8119")
    procs.signal(client, "HUP")
    assert.truthy(procs.wait_for(function()
      return #lines_with(client, "FERRY-0101") >= 1
    end, 5))
    assert.equal(before, #lines_with(client, "FERRY-8119"))
    assert.equal(0, cmetric("ferry_broker_client_fallback_active", 'pool="bin"'))
    assert.equal(200, (get(CL, O)))
    assert.is_not.equal("socks5://127.0.0.1:" .. SF, last_proxy(client))
  end)

  it("shows leases, endpoints and feedback on the console, without secrets", function()
    local p = io.popen(string.format("%s console -s %s -e %s 2>&1", procs.bin, SOCK,
      "\"broker_client.stats('bin')\""))
    local out = p:read("*a")
    p:close()
    assert.truthy(out:find("leases_held", 1, true), out)
    assert.truthy(out:find("127.0.0.1:" .. BA, 1, true), out)
    assert.truthy(out:find("socks5://***@127.0.0.1:" .. S1, 1, true) or
      out:find("socks5://127.0.0.1:" .. S2, 1, true), out)
    assert.is_nil(out:find(TOKEN, 1, true))
    assert.is_nil(out:find(PW, 1, true))
  end)

  it("drops its leases when a reload changes what they depend on", function()
    -- region "eu": the broker has no proxy there (503, FERRY-7105).
    local text = procs.read_file(client.config):gsub('region = nil', 'region = "eu"')
    procs.write_file(client.config, text)
    procs.signal(client, "HUP")
    assert.truthy(procs.wait_for(function()
      return #lines_with(client, "FERRY-8119") == 1
    end, 5), procs.read_file(client.log))
    assert.truthy(procs.wait_for(function()
      return cmetric("ferry_broker_client_fallback_active", 'pool="bin"') == 1 and
        (cmetric("ferry_broker_client_requests_total", string.format(
          'pool="bin",endpoint="http://127.0.0.1:%d",outcome="no_proxy"', BA)) or 0) >= 1
    end, 5), procs.read_file(client.log))
    assert.truthy(lines_with(client, "FERRY-8118")[1].msg:find("gave no proxy", 1, true))
    assert.equal(200, (get(CL, O)))
    assert.equal("socks5://127.0.0.1:" .. SF, last_proxy(client))
  end)

  it("never logs the token or a proxy password", function()
    no_secret(client)
    if broker then no_secret(broker) end
  end)
end)

describe("broker client against bad brokers", function()
  local O, SF = procs.free_port(), procs.free_port()
  local G, E, D, H, I = procs.free_port(), procs.free_port(), procs.free_port(), procs.free_port(),
    procs.free_port()
  local K, U = procs.free_port(), procs.free_port()
  local CL, CA = procs.free_port(), procs.free_port()
  local origin, sf, client
  local fakes = {}

  setup(function()
    origin = procs.origin(O)
    sf = procs.microsocks(SF)
    fakes = { fake("garbage", G), fake("error", E), fake("denied", D), fake("hang", H),
              fake("invalid", I), fake("chunked", K, "socks5://127.0.0.1:" .. SF),
              fake("huge", U) }
    local pools = {}
    for _, x in ipairs { { "g", G }, { "e", E }, { "d", D }, { "h", H }, { "i", I }, { "k", K },
                         { "u", U } } do
      pools[#pools + 1] = string.format([[
pool "%s" { broker = { endpoints = { "http://127.0.0.1:%d" }, token = "%s", exchange = "binance",
  timeout = 0.5, breaker = { failures = 100 } },
  proxies = { { url = "socks5://127.0.0.1:%d", id = "fb-%s" } } }
]], x[1], x[2], TOKEN, SF, x[1])
    end
    client = procs.ferry(string.format([[
listen { name = "main", addr = "127.0.0.1:%d" }
admin { addr = "127.0.0.1:%d" }
%s
exchange "binance" { hosts = { "127.0.0.1" }, pool = "h" }
]], CL, CA, table.concat(pools)), { CL, CA }, "client-bad")
  end)

  teardown(function()
    if client then procs.stop_ferry(client) end
    for _, p in ipairs(fakes) do procs.stop(p, "KILL") end
    procs.stop(origin)
    procs.stop(sf)
  end)

  local function outcome(pool, port, what)
    return procs.metric(CA, "ferry_broker_client_requests_total",
      string.format('pool="%s",endpoint="http://127.0.0.1:%d",outcome="%s"', pool, port, what))
  end

  it("counts garbage, 500, 401 and hangs as failures, each with its code", function()
    assert.truthy(procs.wait_for(function()
      return (outcome("g", G, "garbage") or 0) >= 1 and (outcome("e", E, "error") or 0) >= 1 and
        (outcome("d", D, "unauthorized") or 0) >= 1 and (outcome("h", H, "timeout") or 0) >= 1
    end, 10), procs.read_file(client.log))
    assert.truthy(lines_with(client, "FERRY-8103")[1].msg:find("not JSON", 1, true))
    assert.truthy(lines_with(client, "FERRY-8105")[1].msg:find("answered 500", 1, true))
    local denied = lines_with(client, "FERRY-8104")[1].msg
    assert.truthy(denied:find("token is refused", 1, true))
    assert.truthy(lines_with(client, "FERRY-8106")[1].msg:find("no answer within", 1, true))
    -- The fake saw the token (its header), the log never its value.
    assert.truthy(procs.read_file(fakes[3].log):find("auth=yes", 1, true))
    no_secret(client)
  end)

  it("reads a chunked answer, and refuses one over 1 MiB", function()
    assert.truthy(procs.wait_for(function()
      return (procs.metric(CA, "ferry_broker_client_leases", 'pool="k"') or 0) >= 1 and
        (outcome("u", U, "garbage") or 0) >= 1
    end, 10), procs.read_file(client.log))
    local huge
    for _, l in ipairs(lines_with(client, "FERRY-8103")) do
      if l.msg:find("larger than 1 MiB", 1, true) then huge = l end
    end
    assert.truthy(huge, procs.read_file(client.log))
    assert.equal(0, procs.metric(CA, "ferry_broker_client_leases", 'pool="u"'))
  end)

  it("refuses a lease whose proxy URL is invalid, without logging it", function()
    assert.truthy(procs.wait_for(function()
      return (procs.metric(CA, "ferry_broker_client_leases_refused_total", 'pool="i"') or 0) >= 1
    end, 10))
    local l = lines_with(client, "FERRY-8112")[1]
    assert.truthy(l.msg:find("invalid", 1, true))
    assert.is_nil(l.msg:find("secret", 1, true))
    assert.equal(0, procs.metric(CA, "ferry_broker_client_leases", 'pool="i"'))
  end)

  it("serves through the embedded proxies while no broker answers", function()
    for _, p in ipairs { "g", "e", "d", "h", "i" } do
      assert.equal(1, procs.metric(CA, "ferry_broker_client_fallback_active",
        string.format('pool="%s"', p)))
    end
    for _ = 1, 3 do
      local status, body = get(CL, O)
      assert.equal(200, status, body)
      assert.equal("socks5://127.0.0.1:" .. SF, last_proxy(client))
    end
    -- The hanging endpoint costs the request path nothing: a request
    -- answers while a lease call waits for its timeout.
    local t0 = socket.gettime()
    assert.equal(200, (get(CL, O)))
    assert.is_true(socket.gettime() - t0 < 0.4)
  end)
end)

describe("broker client over https://", function()
  local O, S2, SF = procs.free_port(), procs.free_port(), procs.free_port()
  local BL, BA, TS = procs.free_port(), procs.free_port(), procs.free_port()
  local CL, CA = procs.free_port(), procs.free_port()
  local origin, s2, sf, broker, stun, client
  local dir = procs.tmp .. "/bc-tls-" .. math.random(1e6, 9e6)

  setup(function()
    os.execute("mkdir -p " .. dir)
    assert(os.execute(string.format("openssl req -x509 -newkey rsa:2048 -nodes -keyout %s/k.pem " ..
      "-out %s/c.pem -days 3 -subj '/CN=localhost' -addext " ..
      "'subjectAltName=DNS:localhost,IP:127.0.0.1' >/dev/null 2>&1", dir, dir)) == 0)
    origin = procs.origin(O)
    s2 = procs.microsocks(S2)
    sf = procs.microsocks(SF)
    broker = procs.ferry(string.format([[
listen { name = "main", addr = "127.0.0.1:%d" }
admin { addr = "127.0.0.1:%d", token = "%s" }
broker { ttl = 30 }
pool "main" { proxies = { { url = "socks5://127.0.0.1:%d", id = "s2" } } }
exchange "binance" { hosts = { "127.0.0.1" }, pool = "main" }
]], BL, BA, TOKEN, S2), { BL, BA }, "broker-tls")
    stun = procs.stunnel { { accept = TS, connect = BA, cert = dir .. "/c.pem",
                             key = dir .. "/k.pem" } }
    -- "good" trusts the endpoint's certificate; "sys" checks it against the
    -- system store, where it is unknown.
    client = procs.ferry(string.format([[
listen { name = "main", addr = "127.0.0.1:%d" }
admin { addr = "127.0.0.1:%d" }
pool "good" { broker = { endpoints = { "https://127.0.0.1:%d" }, token = "%s",
  exchange = "binance", leases = 1, tls = { ca = "%s/c.pem" } },
  proxies = { { url = "socks5://127.0.0.1:%d", id = "fb-good" } } }
pool "sys" { broker = { endpoints = { "https://127.0.0.1:%d" }, token = "%s",
  exchange = "binance", leases = 1, timeout = 1 },
  proxies = { { url = "socks5://127.0.0.1:%d", id = "fb-sys" } } }
exchange "binance" { hosts = { "127.0.0.1" }, pool = "good" }
]], CL, CA, TS, TOKEN, dir, SF, TS, TOKEN, SF), { CL, CA }, "client-tls")
  end)

  teardown(function()
    if client then procs.stop_ferry(client) end
    if broker then procs.stop_ferry(broker) end
    for _, p in ipairs { stun, origin, s2, sf } do if p then procs.stop(p) end end
    os.execute("rm -rf " .. dir)
  end)

  it("leases over TLS from an endpoint whose certificate verifies", function()
    assert.truthy(procs.wait_for(function()
      return procs.metric(CA, "ferry_broker_client_leases", 'pool="good"') == 1
    end, 10), procs.read_file(client.log))
    local status, body = get(CL, O)
    assert.equal(200, status, body)
    assert.equal("socks5://127.0.0.1:" .. S2, last_proxy(client))
    assert.truthy(procs.wait_for(function()
      return (procs.metric(CA, "ferry_broker_client_feedback_total",
        'pool="good",event="sent"') or 0) >= 1
    end, 5))
  end)

  it("refuses an endpoint whose certificate does not verify", function()
    assert.truthy(procs.wait_for(function()
      return (procs.metric(CA, "ferry_broker_client_requests_total", string.format(
        'pool="sys",endpoint="https://127.0.0.1:%d",outcome="tls"', TS)) or 0) >= 1
    end, 10), procs.read_file(client.log))
    assert.equal(0, procs.metric(CA, "ferry_broker_client_leases", 'pool="sys"'))
    local l = lines_with(client, "FERRY-8122")[1]
    assert.truthy(l and l.msg:find("certificate", 1, true), l and l.msg)
    no_secret(client)
  end)
end)

describe("broker client feedback of a ban", function()
  local O, S2, SF = procs.free_port(), procs.free_port(), procs.free_port()
  local BL, BA, CL, CA = procs.free_port(), procs.free_port(), procs.free_port(), procs.free_port()
  local origin, s2, sf, broker, client

  setup(function()
    origin = procs.spawn("ban-origin", "python3 " .. procs.root .. "/spec/helpers/ban_origin.py " .. O)
    assert(procs.wait_port(O), procs.read_file(origin.log))
    s2 = procs.microsocks(S2)
    sf = procs.microsocks(SF)
    broker = procs.ferry(string.format([[
listen { name = "main", addr = "127.0.0.1:%d" }
admin { addr = "127.0.0.1:%d", token = "%s" }
pool "main" { proxies = { { url = "socks5://127.0.0.1:%d", id = "s2" } } }
exchange "binance" { hosts = { "127.0.0.1" }, pool = "main", ban = { status = { 429 } } }
]], BL, BA, TOKEN, S2), { BL, BA }, "broker-ban")
    client = procs.ferry(string.format([[
listen { name = "main", addr = "127.0.0.1:%d" }
admin { addr = "127.0.0.1:%d" }
pool "bin" { retries = 0, broker = { endpoints = { "http://127.0.0.1:%d" }, token = "%s",
  exchange = "binance", leases = 1, feedback = { interval = 0.1 } },
  proxies = { { url = "socks5://127.0.0.1:%d", id = "fallback" } } }
exchange "binance" { hosts = { "127.0.0.1" }, pool = "bin", ban = { status = { 429 } } }
]], CL, CA, BA, TOKEN, SF), { CL, CA }, "client-ban")
  end)

  teardown(function()
    if client then procs.stop_ferry(client) end
    if broker then procs.stop_ferry(broker) end
    for _, p in ipairs { origin, s2, sf } do procs.stop(p) end
  end)

  it("reports the exchange's ban status, and the broker bans its proxy for the exchange", function()
    assert.truthy(procs.wait_for(function()
      return procs.metric(CA, "ferry_broker_client_leases", 'pool="bin"') == 1
    end, 10), procs.read_file(client.log))
    local status = procs.curl { url = "http://127.0.0.1:" .. O .. "/ban/all/429",
      proxy = "http://127.0.0.1:" .. CL }
    assert.equal(429, status)
    assert.equal("socks5://127.0.0.1:" .. S2, last_proxy(client))
    assert.truthy(procs.wait_for(function()
      local st, body = procs.curl { url = "http://127.0.0.1:" .. BA .. "/metrics",
        flags = "-H 'Authorization: Bearer " .. TOKEN .. "'" }
      if st ~= 200 then return false end
      for line in body:gmatch("[^\n]+") do
        if line:match("^ferry_proxy_bans_total{") and line:find('proxy="s2"', 1, true) and
          tonumber(line:match(" (%S+)$")) >= 1 then return true end
      end
    end, 5), "the broker did not ban s2")
  end)
end)
