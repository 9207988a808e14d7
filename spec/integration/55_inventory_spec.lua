-- The inventory shared by a fleet: three bin/ferry nodes on one real
-- PostgreSQL 15 (spec/helpers/pg.lua).  A proxy added over the API of
-- node A carries node C's traffic within 1 s; removal, enable and
-- disable propagate; a removal and a disable at once end the same on
-- every node (a removal wins); the admin answer comes after the row is
-- in the database; with PostgreSQL stopped the API answers 503 FERRY-7715
-- after its bound while other requests are served, the console applies
-- locally, and all nodes converge once it is back; a node started later
-- and a restarted node read the fleet's runtime proxies.  URLs with
-- credentials are sealed in the database and never logged.
local procs = require("procs")
local pgh = require("pg")
local cjson = require("cjson.safe")

local q = procs.quote
local KEY_HEX = string.rep("5be1", 16)
local PW = "Fleet-pw-66120"

local function sh(cmd)
  local p = io.popen(cmd)
  local out = p:read("*a")
  p:close()
  return out
end

local api, record = procs.admin_api, procs.admin_record

describe("shared inventory", function()
  local db, conninfo, origin, seed, socks
  local O, T, S = procs.free_port(), procs.free_port(), procs.free_port()
  local nodes = {}
  local base = "http://127.0.0.1:" .. O .. "/"

  local function config(n)
    return string.format([[
listen { name = "main", addr = "127.0.0.1:%d" }
admin  { addr = "127.0.0.1:%d" }
store  { postgres = %q, key = %q, resync = 30 }
node   { id = %q }
pool "p" { strategy = "round_robin", retries = 0, all_down = "fail",
  proxies = { { url = "http://127.0.0.1:%d", id = "seed" } } }
pool "q" { proxies = { "http://127.0.0.1:9" } }
route(function() return "p" end)
]], n.port, n.admin, conninfo, KEY_HEX, n.id, T)
  end

  local function start(n)
    n.proc = procs.ferry(config(n), { n.port, n.admin }, "ferry-" .. n.id)
    -- Ready once its first full read of the fleet's inventory is done.
    assert(procs.wait_for(function()
      return procs.read_file(n.proc.log):find("FERRY-8042", 1, true)
    end, 20), "node " .. n.id .. " did not read the inventory:\n" .. procs.read_file(n.proc.log))
  end

  local function node(id)
    local n = { id = id, port = procs.free_port(), admin = procs.free_port() }
    nodes[#nodes + 1] = n
    return n
  end

  local A, B, C

  setup(function()
    db = pgh.new()
    conninfo = db:create_db("inv")
    origin = procs.origin(O)
    seed = procs.tinyproxy(T)
    socks = procs.microsocks(S, "fleet", PW)
    A, B, C = node("a"), node("b"), node("c")
    for _, n in ipairs { A, B, C } do start(n) end
  end)

  teardown(function()
    for _, n in ipairs(nodes) do
      if n.proc then procs.stop_ferry(n.proc) end -- also: no sanitizer report
    end
    for _, p in ipairs { origin, seed, socks } do
      if p then procs.stop(p) end
    end
    if db then db:cleanup() end
  end)

  -- Whether the runtime proxy `name` carried a request of node n.
  local function carried(n, name)
    for _ = 1, 2 do -- round robin: one of two requests takes it
      procs.curl { url = base, proxy = "http://127.0.0.1:" .. n.port, max_time = 2 }
    end
    local r = record(n.admin, name)
    return r and r.successes > 0
  end

  local function row(key, cols)
    return db:psql("SELECT " .. cols .. " FROM ferry_proxies WHERE key = '" .. key .. "'", "inv")
  end

  it("a proxy added on A is in the database at the 201 and carries C's traffic within 1 s",
    function()
      local url = string.format("socks5://fleet:%s@127.0.0.1:%d", PW, S)
      local code, body, raw = api(A.admin, "POST", "/api/v1/proxies",
        cjson.encode { pool = "p", url = url, id = "rt1" })
      assert.equal(201, code, raw)
      assert.equal("rt1", body.name)
      -- Right after the 201: the row is there, written by A, its URL sealed.
      assert.equal("a|t|f", row("rt1", "updated_by, enabled, removed"))
      local stored = row("rt1", "url")
      assert.equal("enc:v1:", stored:sub(1, 7))
      assert.is_nil(stored:find(PW, 1, true))
      -- C uses it within 1 s (polled, bounded).
      assert.truthy(procs.wait_for(function() return carried(C, "rt1") end, 1, 0.01),
        "C did not use the proxy within 1 s:\n" .. procs.read_file(C.proc.log))
      assert.truthy(procs.wait_for(function() return record(B.admin, "rt1") end, 2))
      assert.equal("runtime", record(C.admin, "rt1").source)
    end)

  it("a proxy keyed by its URL has its key sealed too, and propagates", function()
    local function runtime_count(n)
      local _, body = api(n.admin, "GET", "/api/v1/proxies?pool=p")
      local k = 0
      for _, p in ipairs(type(body) == "table" and body.proxies or {}) do
        if p.source == "runtime" then k = k + 1 end
      end
      return k
    end
    local before = runtime_count(C)
    local code, body, raw = api(A.admin, "POST", "/api/v1/proxies", cjson.encode { pool = "p",
      url = string.format("socks5://keyed:%s@127.0.0.1:%d", PW, S) })
    assert.equal(201, code, raw)
    assert.equal("0", db:psql("SELECT count(*) FROM ferry_proxies WHERE key LIKE '%" .. PW ..
      "%' OR url LIKE '%" .. PW .. "%'", "inv"))
    assert.equal("2", db:psql("SELECT count(*) FROM ferry_proxies WHERE NOT removed", "inv"))
    assert.truthy(procs.wait_for(function() return runtime_count(C) == before + 1 end, 2))
    local dcode, _, draw = api(A.admin, "DELETE", "/api/v1/proxies/" .. body.id)
    assert.equal(200, dcode, draw)
    assert.truthy(procs.wait_for(function() return runtime_count(C) == before end, 2))
  end)

  it("disable and enable on one node reach the others", function()
    local code, _, raw = api(B.admin, "POST", "/api/v1/proxies/rt1/disable")
    assert.equal(200, code, raw)
    assert.equal("f", row("rt1", "enabled"))
    for _, n in ipairs { A, C } do
      assert.truthy(procs.wait_for(function()
        local r = record(n.admin, "rt1")
        return r and r.enabled == false
      end, 2), "node " .. n.id .. " did not disable rt1")
    end
    code, _, raw = api(C.admin, "POST", "/api/v1/proxies/rt1/enable")
    assert.equal(200, code, raw)
    for _, n in ipairs { A, B } do
      assert.truthy(procs.wait_for(function()
        local r = record(n.admin, "rt1")
        return r and r.enabled == true
      end, 2), "node " .. n.id .. " did not enable rt1")
    end
  end)

  it("a removal on B removes the proxy on A and C", function()
    local code, _, raw = api(B.admin, "DELETE", "/api/v1/proxies/rt1")
    assert.equal(200, code, raw)
    assert.equal("t", row("rt1", "removed"))
    for _, n in ipairs { A, C } do
      assert.truthy(procs.wait_for(function() return record(n.admin, "rt1") == nil end, 2),
        "node " .. n.id .. " still has rt1")
    end
  end)

  it("a removal and a disable at once end the same everywhere: the removal wins", function()
    local code, _, raw = api(A.admin, "POST", "/api/v1/proxies",
      cjson.encode { pool = "p", url = string.format("socks5://other:%s@127.0.0.1:%d", PW, S),
                     id = "rt2" })
    assert.equal(201, code, raw)
    for _, n in ipairs { B, C } do
      assert.truthy(procs.wait_for(function() return record(n.admin, "rt2") end, 2))
    end
    -- At once: remove on A, disable on B.
    local fa = procs.tmp .. "/inv-race-a-" .. math.random(1, 1e9)
    local fb = procs.tmp .. "/inv-race-b-" .. math.random(1, 1e9)
    os.execute("curl -s -o /dev/null -w '%{http_code}' -X DELETE " ..
      q("http://127.0.0.1:" .. A.admin .. "/api/v1/proxies/rt2") .. " >" .. fa .. " & " ..
      "curl -s -o /dev/null -w '%{http_code}' -X POST " ..
      q("http://127.0.0.1:" .. B.admin .. "/api/v1/proxies/rt2/disable") .. " >" .. fb ..
      " & wait")
    assert.equal("200", procs.read_file(fa))
    -- B's disable: 200 when B still had the proxy (applied, or lost to the
    -- removal in the database), 404 when A's removal reached B first.
    local b = procs.read_file(fb)
    assert.is_true(b == "200" or b == "404", b)
    assert.equal("t", row("rt2", "removed"))
    for _, n in ipairs { A, B, C } do
      assert.truthy(procs.wait_for(function() return record(n.admin, "rt2") == nil end, 3),
        "node " .. n.id .. " still has rt2")
    end
  end)

  it("with PostgreSQL stopped: 503 after the bound while others are served; " ..
     "the console applies locally; all converge once it is back", function()
    -- rt6 on every node first: A removes it and B disables it while the
    -- database is away; whichever reaches it first, the removal wins.
    local code, _, raw = api(A.admin, "POST", "/api/v1/proxies", cjson.encode { pool = "p",
      id = "rt6", url = "http://127.0.0.1:" .. procs.free_port() })
    assert.equal(201, code, raw)
    for _, n in ipairs { B, C } do
      assert.truthy(procs.wait_for(function() return record(n.admin, "rt6") end, 2))
    end
    db:stop()
    os.execute("curl -s -o /dev/null --max-time 20 -X DELETE " ..
      q("http://127.0.0.1:" .. A.admin .. "/api/v1/proxies/rt6") .. " >/dev/null 2>&1 &")
    code, raw = api(B.admin, "POST", "/api/v1/console", "proxy.disable('rt6')")
    assert.equal(200, code, raw)
    assert.is_false(record(B.admin, "rt6").enabled)
    local out = procs.tmp .. "/inv-post-" .. math.random(1, 1e9)
    local started = os.time()
    os.execute("(curl -s -S --max-time 20 -D " .. q(out .. ".h") .. " -o " .. q(out) .. " -X POST " ..
      "--data-binary " .. q(cjson.encode { pool = "p", id = "rt3",
        url = string.format("socks5://fleet:%s@127.0.0.1:%d", PW, S) }) .. " " ..
      q("http://127.0.0.1:" .. A.admin .. "/api/v1/proxies") .. "; touch " .. q(out .. ".done") ..
      ") >/dev/null 2>&1 &")
    -- While that answer waits, A serves admin and proxied requests.
    assert.truthy(procs.wait_for(function() return record(A.admin, "rt3") end, 3))
    assert.equal(200, (api(A.admin, "GET", "/health")))
    assert.equal(200, (procs.curl { url = base, proxy = "http://127.0.0.1:" .. A.port }))
    assert.is_nil(io.open(out .. ".done"), "the POST was answered before the bound")
    -- A client that gives up while its answer waits loses only the answer.
    sh("curl -s --max-time 1 -o /dev/null -X POST --data-binary " .. q(cjson.encode {
      pool = "p", id = "rt5", url = "http://127.0.0.1:" .. procs.free_port() }) .. " " ..
      q("http://127.0.0.1:" .. A.admin .. "/api/v1/proxies"))
    assert.truthy(procs.wait_for(function() return io.open(out .. ".done") end, 15))
    assert.is_true(os.time() - started >= 4)
    local head = procs.read_file(out .. ".h")
    -- 503 FERRY-7715 (the database is down), or 504 FERRY-7716 when the
    -- node had not yet seen it go.
    local status = tonumber(head:match("^HTTP/1.1 (%d+)"))
    local want = status == 504 and "FERRY-7716" or "FERRY-7715"
    assert.is_true(status == 503 or status == 504, head)
    assert.equal(want, procs.last_header(head, "X-Ferry-Error"))
    assert.equal(want, cjson.decode(procs.read_file(out)).error)
    assert.truthy(record(A.admin, "rt5"))

    -- At most 32 answers wait: with 32 waiting, the next change is refused
    -- at once.  First the three above (rt6, rt3, rt5) end their wait.
    assert.truthy(procs.wait_for(function()
      local _, n = procs.read_file(A.proc.log):gsub("waited past its bound", "")
      return n >= 3
    end, 10))
    local socket = require("socket")
    local function post(body)
      local c = assert(socket.connect("127.0.0.1", A.admin))
      c:settimeout(20)
      assert(c:send("POST /api/v1/proxies HTTP/1.1\r\nHost: 127.0.0.1\r\n" ..
        "Content-Length: " .. #body .. "\r\nConnection: close\r\n\r\n" .. body))
      return c
    end
    local held = {}
    for i = 1, 32 do
      held[i] = post(cjson.encode { pool = "q", id = "w" .. i,
                                    url = "http://127.0.0.1:" .. (21000 + i) })
    end
    local seen
    assert.truthy(procs.wait_for(function()
      local c, b, text = api(A.admin, "GET", "/api/v1/proxies?pool=q")
      seen = text
      return c == 200 and b.total == 33
    end, 10), "the 32 changes did not all wait: " .. tostring(seen):sub(1, 300))
    local c65, b65, r65 = api(A.admin, "POST", "/api/v1/proxies", cjson.encode { pool = "q",
      id = "w33", url = "http://127.0.0.1:21033" })
    assert.equal(503, c65, r65)
    assert.equal("FERRY-7717", b65.error)
    assert.is_nil(record(A.admin, "w33"))
    assert.equal(1, procs.metric(A.admin, "ferry_admin_waits_total", 'result="refused"'))
    -- The 32 get their fallback once the bound runs out.
    for _, c in ipairs(held) do
      local st, body = procs.read_response(c)
      c:close()
      assert.is_true(st == 503 or st == 504, tostring(body))
    end

    -- The console on B applies at once and says the change is queued.
    local text
    code, text = api(B.admin, "POST", "/api/v1/console",
      string.format("proxy.add('p', 'socks5://fourth:%s@127.0.0.1:%d', { id = 'rt4' })", PW, S))
    assert.equal(200, code, text)
    assert.matches("queued for the fleet", text)
    assert.truthy(record(B.admin, "rt4"))
    assert.is_nil(record(C.admin, "rt4"))

    db:start()
    for _, n in ipairs { A, B, C } do
      assert.truthy(procs.wait_for(function()
        return record(n.admin, "rt3") and record(n.admin, "rt4") and record(n.admin, "rt5") and
          not record(n.admin, "rt6")
      end, 30), "node " .. n.id .. " did not converge:\n" .. procs.read_file(n.proc.log))
    end
    assert.equal("a|f", row("rt3", "updated_by, removed"))
    assert.equal("b|f", row("rt4", "updated_by, removed"))
    assert.equal("t", row("rt6", "removed"))
  end)

  it("a node started later and a restarted node read the fleet's runtime proxies", function()
    local D = node("d")
    start(D)
    assert.truthy(procs.wait_for(function()
      return record(D.admin, "rt3") and record(D.admin, "rt4")
    end, 5))
    assert.truthy(procs.wait_for(function() return carried(D, "rt3") end, 5))
    procs.stop_ferry(C.proc)
    start(C)
    assert.truthy(procs.wait_for(function()
      return record(C.admin, "rt3") and record(C.admin, "rt4")
    end, 5))
    assert.is_nil(record(C.admin, "rt1"))
  end)

  it("never logs a proxy password", function()
    for _, n in ipairs(nodes) do
      local log = procs.read_file(n.proc.log)
      assert.is_nil(log:find(PW, 1, true), "node " .. n.id .. " logged a password")
    end
    assert.truthy(procs.read_file(A.proc.log):find("FERRY-8040", 1, true))
  end)
end)
