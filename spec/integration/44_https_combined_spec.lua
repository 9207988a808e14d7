-- The parts of HTTPS visibility together, inside an intercepted tunnel:
-- control headers, rate budgets and retry on ban on requests a client
-- sends inside TLS that ferry terminates with its own CA, and
-- upgrade_tls with a budget and bans on plain HTTP (Python requests).
-- The upstream proxies are microsocks bound to their own loopback
-- source addresses, so the TLS origin's /peer tells which proxy carried
-- a request; the client is spec/helpers/intercept_client.py (one
-- http.client connection per client TLS connection, its local port
-- showing that a connection lasted).
local procs = require("procs")
local cjson = require("cjson")
local tls_origin = require("tls_origin")
local intercept_env = require("intercept_env")

local q, sh = procs.quote, intercept_env.sh
local EU = { ["127.0.0.2"] = "eu-1", ["127.0.0.3"] = "eu-2" }
local US = { ["127.0.0.4"] = "us-1" }

local function count_keys(t)
  local n = 0
  for _ in pairs(t) do n = n + 1 end
  return n
end

describe("HTTPS parts combined", function()
  local dir = procs.tmp .. "/combined-" .. math.random(1, 1e9)
  local O, F, ADM = procs.free_port(), procs.free_port(), procs.free_port()
  local P = { procs.free_port(), procs.free_port(), procs.free_port() }
  local origin, ferry, pki, ca
  local ups = {}

  -- ferry with one exchange, `fields` its body (hosts, pool, ...).
  local function start_ferry(fields)
    if ferry then procs.stop_ferry(ferry) end
    ferry = procs.ferry(string.format([[
listen { addr = "127.0.0.1:%d" }
admin { addr = "127.0.0.1:%d" }
tls { ca_cert = %q, ca_key = %q }
pool "mix" { strategy = "sticky", retries = 0, breaker = false, proxies = {
  { url = "socks5://127.0.0.1:%d", id = "eu-1", region = "eu" },
  { url = "socks5://127.0.0.1:%d", id = "eu-2", region = "eu" },
  { url = "socks5://127.0.0.1:%d", id = "us-1", region = "us" } } }
pool "two" { strategy = "round_robin", retries = 0, breaker = false, proxies = {
  { url = "socks5://127.0.0.1:%d", id = "eu-1" },
  { url = "socks5://127.0.0.1:%d", id = "eu-2" } } }
exchange "x" { %s }
]], F, ADM, ca, dir .. "/ca/ca.key", P[1], P[2], P[3], P[1], P[2], fields), { F, ADM })
  end

  -- Runs a plan (see intercept_client.py) against host:O through ferry.
  local function run(plan, host)
    local out = sh("python3 " .. q(procs.root .. "/spec/helpers/intercept_client.py") .. " " ..
      F .. " " .. (host or "localhost") .. " " .. O .. " " .. q(ca) .. " " .. q(cjson.encode(plan)))
    local ok, res = pcall(cjson.decode, out)
    assert(ok and type(res) == "table", out)
    for _, r in ipairs(res) do assert(r.status, r.error) end
    return res
  end

  -- What the origin counted, asked directly (not through ferry).
  local function origin_requests()
    local out = sh("curl -sS --max-time 10 --cacert " .. q(pki.ca) .. " https://localhost:" ..
      O .. "/stats")
    return tonumber(out:match("requests=(%d+)")), out
  end

  -- The source address of the proxy an access or event line names (its URL).
  local function ip_of(url)
    for i, ip in ipairs { "127.0.0.2", "127.0.0.3", "127.0.0.4" } do
      if url == "socks5://127.0.0.1:" .. P[i] then return ip end
    end
  end

  local function access(fn)
    return intercept_env.access(ferry, fn)
  end

  setup(function()
    pki = tls_origin.pki(dir .. "/pki", { "localhost", "127.0.0.1" })
    local out, rc = sh(q(procs.bin) .. " ca init " .. q(dir .. "/ca"))
    assert(rc == 0, out)
    ca = dir .. "/ca/ca.crt"
    origin = tls_origin.start(O, pki.cert, pki.key)
    for i, bind in ipairs { "127.0.0.2", "127.0.0.3", "127.0.0.4" } do
      ups[i] = procs.spawn("microsocks", "microsocks -i 127.0.0.1 -p " .. P[i] .. " -b " .. bind)
      assert(procs.wait_port(P[i]), "microsocks did not start")
    end
  end)

  teardown(function()
    local ok, err = true, nil
    if ferry then ok, err = pcall(procs.stop_ferry, ferry) end
    if origin then procs.stop(origin) end
    for _, p in ipairs(ups) do procs.stop(p) end
    os.execute("rm -rf " .. q(dir))
    if not ok then error(err, 0) end
  end)

  describe("control headers inside the tunnel", function()
    setup(function()
      start_ferry(string.format('hosts = { "localhost" }, pool = "mix", intercept = true, ' ..
        'tls = { ca = %q }', pki.ca))
    end)

    it("restricts the proxy with X-Ferry-Region and never forwards X-Ferry-*", function()
      local plan = {}
      for i = 1, 8 do
        plan[2 * i - 1] = { conn = 0, path = "/peer?eu=" .. i,
                            headers = { ["X-Ferry-Region"] = "eu", ["X-Ferry-Session"] = "reu" .. i } }
        plan[2 * i] = { conn = 0, path = "/peer?us=" .. i,
                        headers = { ["X-Ferry-Region"] = "us", ["X-Ferry-Session"] = "rus" .. i } }
      end
      -- The sticky strategy pins a new session by one cursor for the whole
      -- pool: alternating eu and us would pin every eu session to the same
      -- proxy.  All eu requests first, then all us ones.
      table.sort(plan, function(a, b) return a.path < b.path end)
      plan[#plan + 1] = { conn = 0, path = "/head", headers = {
        ["X-Ferry-Region"] = "eu", ["X-Ferry-Session"] = "h", ["X-Ferry-Rotate"] = "0",
        ["X-Keep"] = "yes" } }
      local res = run(plan)
      local eu, lport = {}, res[1].lport
      for i = 1, 8 do
        assert.equal(200, res[i].status, res[i].body)
        assert.matches("^/peer%?eu=", plan[i].path)
        assert.is_string(EU[res[i].body:match("^([%d.]+):")], res[i].body)
        eu[res[i].body:match("^([%d.]+):")] = true
        assert.equal(200, res[i + 8].status, res[i + 8].body)
        assert.is_string(US[res[i + 8].body:match("^([%d.]+):")], res[i + 8].body)
        assert.equal(lport, res[i].lport) -- one client TLS connection throughout
        assert.equal(lport, res[i + 8].lport)
      end
      assert.equal(2, count_keys(eu))
      local head = res[17]
      assert.equal(200, head.status)
      assert.matches("^GET /head HTTP/1.1\r\n", head.body)
      assert.truthy(head.body:find("\r\nX-Keep: yes", 1, true), head.body)
      assert.is_nil(head.body:lower():find("x-ferry-", 1, true), head.body)
      assert.equal(lport, head.lport)
      -- ferry logged the requests inside, intercepted.
      local lines = access(function(l) return l.path == "/head" end)
      assert.equal(1, #lines)
      assert.is_true(lines[1].intercepted)
      assert.is_string(EU[ip_of(lines[1].proxy)], tostring(lines[1].proxy))
    end)

    it("answers an unknown region inside TLS with 503 FERRY-2021, the connection kept", function()
      local res = run {
        { conn = 0, path = "/peer?mars", headers = { ["X-Ferry-Region"] = "mars" } },
        { conn = 0, path = "/ok?i=after-mars" },
      }
      assert.equal(503, res[1].status)
      assert.equal("FERRY-2021", res[1].headers["x-ferry-error"])
      assert.equal(200, res[2].status)
      assert.equal("ok-after-mars", res[2].body)
      assert.equal(res[1].lport, res[2].lport)
    end)

    it("keeps X-Ferry-Session on one proxy across requests and connections; Rotate moves it",
      function()
      local S = { ["X-Ferry-Session"] = "combo-1" }
      local R = { ["X-Ferry-Session"] = "combo-1", ["X-Ferry-Rotate"] = "1" }
      local res = run {
        { conn = 1, path = "/peer?s=1", headers = S },
        { conn = 1, path = "/peer?s=2", headers = S },
        { conn = 1, path = "/peer?s=3", headers = S },
        { conn = 2, path = "/peer?s=4", headers = S },
        { conn = 2, path = "/peer?s=5", headers = S },
        { conn = 2, path = "/peer?s=6", headers = R },
        { conn = 2, path = "/peer?s=7", headers = S },
        { conn = 1, path = "/peer?s=8", headers = S },
      }
      local ip = {}
      for i, r in ipairs(res) do
        assert.equal(200, r.status, r.body)
        ip[i] = r.body:match("^([%d.]+):")
        assert.truthy(ip[i], r.body)
      end
      assert.are_not.equal(res[1].lport, res[4].lport) -- two client TLS connections
      assert.equal(res[1].lport, res[8].lport)
      for i = 2, 5 do assert.equal(ip[1], ip[i], "request " .. i) end
      assert.are_not.equal(ip[1], ip[6]) -- rotated
      assert.equal(ip[6], ip[7]) -- and sticks again, on either connection
      assert.equal(ip[6], ip[8])
    end)
  end)

  describe("a rate budget inside the tunnel", function()
    local N = 2

    setup(function()
      start_ferry(string.format('hosts = { "localhost" }, pool = "two", intercept = true, ' ..
        'tls = { ca = %q }, rate = { limit = %d, per = 1, queue = 0 }', pki.ca, N))
    end)

    it("answers the excess 429 FERRY-2010 with Retry-After inside TLS, the connection kept",
      function()
      local before = assert(origin_requests())
      local plan = {}
      for i = 1, 12 do plan[i] = { conn = 0, path = "/peer?r=" .. i } end
      -- Past a second the budget has refilled: the same connection works.
      plan[13] = { conn = 0, path = "/ok?i=refilled", sleep = 1.5 }
      local res = run(plan)
      local per, limited = {}, 0
      for i = 1, 12 do
        local r = res[i]
        assert.equal(res[1].lport, r.lport)
        if r.status == 200 then
          local ip = r.body:match("^([%d.]+):")
          per[ip] = (per[ip] or 0) + 1
        else
          assert.equal(429, r.status, r.body)
          assert.equal("FERRY-2010", r.headers["x-ferry-error"])
          local ra = tonumber(r.headers["retry-after"])
          assert.truthy(ra and ra >= 1 and ra <= 1, tostring(r.headers["retry-after"]))
          assert.equal("FERRY-2010", cjson.decode(r.body).error)
          limited = limited + 1
        end
      end
      assert.is_true(limited >= 1, "no request was limited")
      assert.equal(200, res[13].status, res[13].body)
      assert.equal("ok-refilled", res[13].body)
      assert.equal(res[1].lport, res[13].lport)
      -- The origin saw the 200s only (and the last one): a limited request never left.
      local served = 0
      for _, n in pairs(per) do served = served + n end
      local after = assert(origin_requests())
      assert.equal(served + 1, after - before - 1) -- minus the first /stats
      -- Per proxy, at most the budget plus what refilled during the burst
      -- (12 requests in one connection take well under a second).
      for ip, n in pairs(per) do
        assert.is_string(EU[ip], ip)
        assert.is_true(n <= 2 * N, ip .. " carried " .. n)
      end
      local lines = access(function(l) return l.code == "FERRY-2010" end)
      assert.equal(limited, #lines)
      for _, l in ipairs(lines) do assert.is_true(l.intercepted) end
    end)
  end)

  describe("retry on ban inside the tunnel", function()
    setup(function()
      start_ferry(string.format('hosts = { "localhost" }, pool = "two", intercept = true, ' ..
        'tls = { ca = %q }, ban = { status = { 429 }, backoff = 600, max_backoff = 900, ' ..
        'retry = 1 }', pki.ca))
    end)

    it("answers the last 429 with X-Ferry-Error inside TLS when every proxy is banned", function()
      local res = run {
        { conn = 0, path = "/status?code=429&ra=120" },
        { conn = 0, path = "/ok?i=after-ban" },
      }
      assert.equal(429, res[1].status)
      assert.equal("FERRY-6030", res[1].headers["x-ferry-error"])
      local line = access(function(l) return l.path == "/status?code=429&ra=120" end)[1]
      assert.is_table(line)
      assert.equal("FERRY-6030", line.code)
      assert.equal(1, line.ban_retries)
      assert.is_true(line.intercepted)
      -- Both proxies are banned, each by its own 429, for Retry-After's 120 s.
      local bans = intercept_env.events(ferry, "FERRY-6006")
      assert.equal(2, #bans)
      assert.are_not.equal(bans[1].proxy, bans[2].proxy)
      assert.equal("120", res[1].headers["retry-after"]) -- the origin's, passed on
      for _, b in ipairs(bans) do assert.matches("for 120 s", b.msg, 1, true) end
      -- The connection stays; the next request finds every proxy banned,
      -- and all_down = "any" (the default) sends it through one anyway.
      assert.equal(res[1].lport, res[2].lport)
      assert.equal(200, res[2].status, cjson.encode(res[2]))
      assert.equal("ok-after-ban", res[2].body)
      assert.equal(1, #intercept_env.events(ferry, "FERRY-6007"))
    end)
  end)

  describe("upgrade_tls with a budget and bans (plain HTTP, Python requests)", function()
    setup(function()
      start_ferry(string.format('hosts = { "127.0.0.1" }, pool = "two", upgrade_tls = true, ' ..
        'tls = { ca = %q }, rate = { limit = 2, per = 100, queue = 0 }, ' ..
        'ban = { status = { 429 }, backoff = 600, retry = 1 }', pki.ca))
    end)

    it("retries a banned try on the other proxy inside its budget, then limits", function()
      local before = assert(origin_requests())
      local out = sh("python3 -c " .. q(string.format([[
import json, requests
s = requests.Session()
s.proxies = {"http": "http://127.0.0.1:%d"}
res = []
for path in ["/once?code=429&key=up", "/peer?u=1", "/peer?u=2", "/peer?u=3", "/peer?u=4"]:
    r = s.get("http://127.0.0.1:%d" + path, timeout=20)
    res.append({"status": r.status_code, "body": r.text,
                "error": r.headers.get("X-Ferry-Error"), "ra": r.headers.get("Retry-After")})
print(json.dumps(res))
]], F, O)))
      local ok, res = pcall(cjson.decode, out)
      assert(ok and type(res) == "table", out)
      -- The first try's proxy got 429 and is banned; the retry went out
      -- over TLS through the other one.
      assert.equal(200, res[1].status, out)
      assert.equal("ok-once", res[1].body)
      local bans = intercept_env.events(ferry, "FERRY-6006")
      assert.equal(1, #bans)
      local line = access(function(l) return l.path == "/once?code=429&key=up" end)[1]
      assert.equal(1, line.ban_retries)
      assert.equal("https", line.scheme)
      assert.are_not.equal(bans[1].proxy, line.proxy)
      -- The healthy proxy out of budget is not "all down": the banned one
      -- is not used for the rest (all_down = "any" relaxes health only).
      assert.equal(0, #intercept_env.events(ferry, "FERRY-6007"))
      -- One proxy left, with one token of its two: one more 200, then 429s.
      local served, limited = 0, 0
      for i = 2, 5 do
        if res[i].status == 200 then
          served = served + 1
          assert.equal(ip_of(line.proxy), res[i].body:match("^([%d.]+):"))
        else
          assert.equal(429, res[i].status, out)
          assert.equal("FERRY-2010", res[i].error)
          assert.truthy(tonumber(res[i].ra), out)
          limited = limited + 1
        end
      end
      assert.equal(1, served, out)
      assert.equal(3, limited, out)
      -- The origin saw the banned try, the retry and the one 200 only.
      local after = assert(origin_requests())
      assert.equal(3, after - before - 1)
    end)
  end)
end)
