-- Faults of a fleet the other fleet specs leave out, against a real
-- PostgreSQL 15 (spec/helpers/pg.lua) and three bin/ferry nodes (A, B,
-- C; heartbeat 0.5 s) sharing their inventory and node list:
--   * two nodes changing the same proxy at once (enable against disable,
--     the same id added with two URLs) end the same on every node and in
--     the database (last writer by database time);
--   * a node that stays silent (SIGSTOP) shows as gone on the others once
--     3 heartbeats pass, the others serve and take its probes, and it is
--     live again once it resumes;
--   * PostgreSQL slow (the fleet's tables locked by another session):
--     every node serves and answers from memory at once, and a change made
--     meanwhile reaches every node once the lock goes;
--   * a change that came without a NOTIFY (written straight into the
--     table) reaches every node by the periodic resync (store.resync);
--   * no proxy password in any log line, and every log line is coded JSON.
local procs = require("procs")
local pgh = require("pg")
local cjson = require("cjson.safe")
local socket = require("socket")

local q = procs.quote
local PW = "Audit-pw-60417"
local HB = 0.5
local K = procs.asan and 3 or 1
local PG_BIN = os.getenv("FERRY_PG_BIN") or "/usr/lib/postgresql/15/bin"

local api, record = procs.admin_api, procs.admin_record

-- id -> node row of GET /api/v1/nodes on a node.
local function states(port)
  local code, body = api(port, "GET", "/api/v1/nodes", nil, 3)
  if code ~= 200 or type(body) ~= "table" or not body.nodes then return {} end
  local t = {}
  for _, n in ipairs(body.nodes) do t[n.id] = n end
  return t
end

describe("fleet faults (audit)", function()
  local db, conninfo, origin, seed, socks
  local O, T, S = procs.free_port(), procs.free_port(), procs.free_port()
  local nodes = {}
  local A, B, C
  local base = "http://127.0.0.1:" .. O .. "/"

  local function config(n)
    return string.format([[
listen { name = "main", addr = "127.0.0.1:%d" }
admin  { addr = "127.0.0.1:%d" }
store  { postgres = %q, resync = 2 }
node   { id = %q, heartbeat = %s }
pool "p" { strategy = "round_robin", retries = 1, all_down = "fail",
  health = { check = "tcp", interval = 0.3, timeout = 0.2, rise = 1, fall = 2 },
  proxies = { { url = "http://127.0.0.1:%d", id = "seed" } } }
route(function() return "p" end)
]], n.port, n.admin, conninfo, n.id, HB, T)
  end

  local function start(n)
    n.proc = procs.ferry(config(n), { n.port, n.admin }, "ferry-" .. n.id)
    assert(procs.wait_for(function()
      return procs.read_file(n.proc.log):find("FERRY-8042", 1, true)
    end, 20 * K), "node " .. n.id .. " did not read the inventory:\n" ..
      procs.read_file(n.proc.log))
  end

  local function serves(n, max_time)
    local status = procs.curl { url = base, proxy = "http://127.0.0.1:" .. n.port,
      max_time = max_time or 5 }
    return status
  end

  local function gone_lines(n)
    local k = 0
    for _, l in ipairs(procs.log_lines(n.proc)) do
      if l.code == "FERRY-8022" then k = k + 1 end
    end
    return k
  end

  local function row(key, cols)
    return db:psql("SELECT " .. cols .. " FROM ferry_proxies WHERE key = '" .. key .. "'",
      "audit60")
  end

  setup(function()
    assert(pgh.available(), "PostgreSQL 15 is not installed (make deps)")
    db = pgh.new()
    conninfo = db:create_db("audit60")
    origin = procs.origin(O)
    seed = procs.tinyproxy(T)
    socks = procs.microsocks(S, "fleet", PW)
    for _, id in ipairs { "a", "b", "c" } do
      local n = { id = id, port = procs.free_port(), admin = procs.free_port() }
      nodes[#nodes + 1] = n
    end
    A, B, C = nodes[1], nodes[2], nodes[3]
    for _, n in ipairs(nodes) do start(n) end
    for _, n in ipairs(nodes) do
      assert(procs.wait_for(function()
        local t = states(n.admin)
        return t.a and t.b and t.c and t.a.state == "live" and t.b.state == "live" and
          t.c.state == "live"
      end, 10 * K, 0.1), "node " .. n.id .. " does not list the fleet")
    end
  end)

  teardown(function()
    for _, n in ipairs(nodes) do
      if n.proc then
        procs.signal(n.proc, "CONT")
        procs.stop_ferry(n.proc)
      end
    end
    for _, p in ipairs { origin, seed, socks } do
      if p then procs.stop(p) end
    end
    if db then db:cleanup() end
  end)

  it("enable and disable of one proxy at once on two nodes end the same everywhere", function()
    local code, _, raw = api(A.admin, "POST", "/api/v1/proxies", cjson.encode { pool = "p",
      id = "race", url = string.format("socks5://fleet:%s@127.0.0.1:%d", PW, S) })
    assert.equal(201, code, raw)
    for _, n in ipairs { B, C } do
      assert.truthy(procs.wait_for(function() return record(n.admin, "race") end, 2 * K))
    end
    local fa = procs.tmp .. "/audit-race-a-" .. math.random(1, 1e9)
    local fb = procs.tmp .. "/audit-race-b-" .. math.random(1, 1e9)
    for round = 1, 6 do
      -- Odd rounds: A disables while B enables; even rounds the other way.
      local da, db_ = "disable", "enable"
      if round % 2 == 0 then da, db_ = "enable", "disable" end
      os.execute("curl -s -o /dev/null -w '%{http_code}' -X POST " ..
        q("http://127.0.0.1:" .. A.admin .. "/api/v1/proxies/race/" .. da) .. " >" .. fa ..
        " & curl -s -o /dev/null -w '%{http_code}' -X POST " ..
        q("http://127.0.0.1:" .. B.admin .. "/api/v1/proxies/race/" .. db_) .. " >" .. fb ..
        " & wait")
      assert.equal("200", procs.read_file(fa))
      assert.equal("200", procs.read_file(fb))
      -- Every node ends with what the database holds (the last writer).
      local want
      assert.truthy(procs.wait_for(function()
        want = row("race", "enabled") == "t"
        for _, n in ipairs(nodes) do
          local r = record(n.admin, "race")
          if not r or r.enabled ~= want then return false end
        end
        return true
      end, 3 * K, 0.05), string.format("round %d: the nodes disagree (database: %s): %s %s %s",
        round, tostring(want), cjson.encode(record(A.admin, "race")),
        cjson.encode(record(B.admin, "race")), cjson.encode(record(C.admin, "race"))))
    end
  end)

  it("the same proxy id added on two nodes at once with two URLs ends the same everywhere",
    function()
      -- Two URLs no proxy of the pool has yet (a URL held twice is a 409).
      local u1 = "http://127.0.0.1:" .. procs.free_port()
      local u2 = string.format("socks5://dup:%s@127.0.0.1:%d", PW, procs.free_port())
      local fa = procs.tmp .. "/audit-dup-a-" .. math.random(1, 1e9)
      local fb = procs.tmp .. "/audit-dup-b-" .. math.random(1, 1e9)
      os.execute("curl -s -o /dev/null -w '%{http_code}' -X POST --data-binary " ..
        q(cjson.encode { pool = "p", id = "dup", url = u1 }) .. " " ..
        q("http://127.0.0.1:" .. A.admin .. "/api/v1/proxies") .. " >" .. fa ..
        " & curl -s -o /dev/null -w '%{http_code}' -X POST --data-binary " ..
        q(cjson.encode { pool = "p", id = "dup", url = u2 }) .. " " ..
        q("http://127.0.0.1:" .. B.admin .. "/api/v1/proxies") .. " >" .. fb .. " & wait")
      local ca, cb = procs.read_file(fa), procs.read_file(fb)
      assert.truthy(ca == "201" or cb == "201", ca .. " " .. cb)
      local stored = row("dup", "url")
      assert.truthy(stored and stored ~= "", "no row for dup")
      -- Every node holds the one URL of the database row (shown without
      -- its password).
      local want = stored:find("socks5", 1, true) and "socks5://" or "http://"
      assert.truthy(procs.wait_for(function()
        for _, n in ipairs(nodes) do
          local r = record(n.admin, "dup")
          if not r or tostring(r.url):sub(1, #want) ~= want then return false end
        end
        return true
      end, 3 * K, 0.05), string.format("database %s; nodes: %s %s %s", want,
        cjson.encode(record(A.admin, "dup")), cjson.encode(record(B.admin, "dup")),
        cjson.encode(record(C.admin, "dup"))))
      assert.equal(200, (api(A.admin, "DELETE", "/api/v1/proxies/dup")))
      for _, n in ipairs(nodes) do
        assert.truthy(procs.wait_for(function() return record(n.admin, "dup") == nil end, 3 * K))
      end
    end)

  it("a node silent for 3 heartbeats shows as gone, and live again when it resumes", function()
    -- The probe duties of the pool's proxies, over the three nodes.
    local total
    assert.truthy(procs.wait_for(function()
      local t = states(A.admin)
      total = (t.a and t.a.probes or 0) + (t.b and t.b.probes or 0) + (t.c and t.c.probes or 0)
      return t.c and t.c.probes > 0 and total >= 2
    end, 5 * K, 0.1), "c probes nothing before it stops")
    procs.signal(C.proc, "STOP")
    local ok, err = pcall(function()
      for _, n in ipairs { A, B } do
        assert.truthy(procs.wait_for(function()
          local t = states(n.admin)
          return t.c and t.c.state == "gone" and t.a.state == "live" and t.b.state == "live"
        end, 10 * K, 0.1), "node " .. n.id .. " does not show c gone")
        assert.truthy(states(n.admin).c.heartbeat_age_s > 3 * HB)
        -- Its duties move to a and b (the division follows the next read
        -- of the node list).
        local t
        assert.truthy(procs.wait_for(function()
          t = states(n.admin)
          return t.c.probes == 0 and t.a.probes + t.b.probes == total
        end, 3 * K, 0.1), "c's probes did not move: " .. cjson.encode(t))
        assert.equal(200, serves(n))
      end
    end)
    procs.signal(C.proc, "CONT")
    assert(ok, err)
    for _, n in ipairs(nodes) do
      assert.truthy(procs.wait_for(function()
        local t = states(n.admin)
        return t.c and t.c.state == "live"
      end, 10 * K, 0.1), "node " .. n.id .. " does not show c live again")
    end
    assert.equal(200, serves(C))
  end)

  it("with the fleet's tables locked (PostgreSQL slow) every node serves at once, and a " ..
     "change made meanwhile reaches all nodes after", function()
    local locker = procs.spawn("psql-lock", q(PG_BIN .. "/psql") .. " -X -q -h 127.0.0.1 -p " ..
      db.port .. " -U postgres -d audit60 -c " .. q("LOCK TABLE ferry_proxies, ferry_nodes IN " ..
      "ACCESS EXCLUSIVE MODE; SELECT pg_sleep(3)"))
    -- Nobody is silent: only the database is slow.
    local gone0 = {}
    for _, n in ipairs(nodes) do gone0[n.id] = gone_lines(n) end
    local ok, err = pcall(function()
      assert.truthy(procs.wait_for(function()
        return db:psql("SELECT count(*) FROM pg_locks l JOIN pg_class c ON c.oid = l.relation " ..
          "WHERE c.relname = 'ferry_proxies' AND l.mode = 'AccessExclusiveLock' AND l.granted",
          "audit60") == "1"
      end, 5), "the lock was not taken")
      -- A change waits for the database (its answer in the background).
      local out = procs.tmp .. "/audit-slow-" .. math.random(1, 1e9)
      os.execute("(curl -s -o /dev/null -w '%{http_code}' --max-time 20 -X POST " ..
        "--data-binary " .. q(cjson.encode { pool = "p", id = "slow",
          url = "http://127.0.0.1:" .. procs.free_port() }) .. " " ..
        q("http://127.0.0.1:" .. A.admin .. "/api/v1/proxies") .. " >" .. q(out) .. ".tmp; mv " ..
        q(out) .. ".tmp " .. q(out) .. ") >/dev/null 2>&1 &")
      -- The lock lasts 3 s whatever the build: an API change waits at most
      -- 5 s for the database (then 503/504), so a longer lock would make the
      -- 504 right.  While it holds, the change is not acknowledged.
      socket.sleep(0.5)
      assert.is_nil(io.open(out), "the change was answered before the database had it: " ..
        procs.read_file(out))
      -- Meanwhile every node serves proxied requests and answers its API
      -- from memory (curl's bound is far below the lock's length).
      for _, n in ipairs(nodes) do
        for _ = 1, 3 do assert.equal(200, serves(n, 1.5 * K)) end
        local code, body = api(n.admin, "GET", "/api/v1/nodes", nil, 1.5 * K)
        assert.equal(200, code)
        assert.equal(3, #body.nodes)
        for _, row_ in ipairs(body.nodes) do
          assert.equal("live", row_.state, "on " .. n.id .. ": " .. cjson.encode(row_))
        end
        assert.equal(200, (api(n.admin, "GET", "/api/v1/proxies", nil, 1.5 * K)))
      end
      -- Once the lock goes, the change is acknowledged and on every node.
      assert.truthy(procs.wait_for(function() return io.open(out) end, 15 * K))
      assert.equal("201", procs.read_file(out))
      for _, n in ipairs(nodes) do
        assert.truthy(procs.wait_for(function() return record(n.admin, "slow") end, 3 * K),
          "node " .. n.id .. " does not have the change")
      end
      assert.equal("a|f", row("slow", "updated_by, removed"))
      -- After the lock every node lists the three live again.  (A node
      -- whose heartbeat waited behind its own locked query may be seen
      -- gone for a moment by the others: the database did not get its
      -- beats.  No node called all the others gone.)
      for _, n in ipairs(nodes) do
        assert.truthy(procs.wait_for(function()
          local t = states(n.admin)
          return t.a and t.a.state == "live" and t.b.state == "live" and t.c.state == "live"
        end, 5 * K, 0.1), "node " .. n.id .. " does not list the three live")
        assert.truthy(gone_lines(n) - gone0[n.id] <= 1, "node " .. n.id ..
          " called the others gone while its own reads waited")
      end
    end)
    procs.stop(locker)
    assert(ok, err)
  end)

  it("a change written without a NOTIFY reaches every node by the periodic resync", function()
    local url = "http://127.0.0.1:" .. procs.free_port()
    db:psql("INSERT INTO ferry_proxies (key, url, pool, opts, updated_by) VALUES ('quiet', '" ..
      url .. "', 'p', '{\"id\":\"quiet\"}', 'z')", "audit60")
    for _, n in ipairs(nodes) do
      assert.truthy(procs.wait_for(function() return record(n.admin, "quiet") end, 6 * K, 0.1),
        "node " .. n.id .. " did not resync the new row")
    end
    db:psql("UPDATE ferry_proxies SET enabled = false, updated_at = clock_timestamp() " ..
      "WHERE key = 'quiet'", "audit60")
    for _, n in ipairs(nodes) do
      assert.truthy(procs.wait_for(function()
        local r = record(n.admin, "quiet")
        return r and r.enabled == false
      end, 6 * K, 0.1), "node " .. n.id .. " did not resync the update")
    end
    db:psql("UPDATE ferry_proxies SET removed = true, updated_at = clock_timestamp() " ..
      "WHERE key = 'quiet'", "audit60")
    for _, n in ipairs(nodes) do
      assert.truthy(procs.wait_for(function() return record(n.admin, "quiet") == nil end,
        6 * K, 0.1), "node " .. n.id .. " did not resync the removal")
    end
  end)

  it("purges tombstones older than 7 days at the periodic resync, and keeps newer ones",
    function()
    db:psql("INSERT INTO ferry_proxies (key, url, pool, opts, updated_by, removed, " ..
      "updated_at) VALUES ('old-tomb', 'http://127.0.0.1:9', 'p', '{\"id\":\"old-tomb\"}', " ..
      "'z', true, clock_timestamp() - interval '8 days')", "audit60")
    local function rows(key)
      local out = db:psql("SELECT count(*) FROM ferry_proxies WHERE key = '" .. key .. "'",
        "audit60")
      return tonumber(out:match("%d+"))
    end
    assert.equal(1, rows("old-tomb"))
    assert.truthy(procs.wait_for(function() return rows("old-tomb") == 0 end, 6 * K, 0.2),
      "the 8-day-old tombstone is still there")
    -- The removal of the test before (a fresh tombstone) stays.
    assert.equal(1, rows("quiet"))
    for _, n in ipairs(nodes) do assert.is_nil(record(n.admin, "old-tomb")) end
  end)

  it("never logs a proxy password, and every log line is coded JSON", function()
    for _, n in ipairs(nodes) do
      local log = procs.read_file(n.proc.log)
      assert.is_nil(log:find(PW, 1, true), "node " .. n.id .. " logged a password")
      for _, l in ipairs(procs.log_lines(n.proc)) do
        assert.is_nil(l.unparsed, l.unparsed)
        if l.level == "warn" or l.level == "error" then
          assert.truthy(l.code and l.code:match("^FERRY%-%d%d%d%d$"), cjson.encode(l))
        end
      end
    end
  end)
end)
