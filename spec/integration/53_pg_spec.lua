-- The PostgreSQL connection of a fleet node against a real PostgreSQL 15
-- (spec/helpers/pg.lua): connect and migrate, a write through
-- fleet.write, NOTIFY to fleet.on, outages and slowness without any
-- effect on proxied requests, a newer schema refused, a wrong password
-- never logged, ferry check on bad fields, two nodes migrating at once.
local procs = require("procs")
local agent = require("agent")
local pgh = require("pg")

local WRONG_PW = "Wrong-Pw-90417"

local function count(proc, code, text)
  local n = 0
  for _, l in ipairs(procs.log_lines(proc)) do
    if l.code == code and (not text or (l.msg or ""):find(text, 1, true)) then n = n + 1 end
  end
  return n
end

local function get(F, O)
  local status, body = procs.curl { url = "http://127.0.0.1:" .. O .. "/",
    proxy = "http://127.0.0.1:" .. F, max_time = 5 }
  return status, body
end

describe("postgres driver", function()
  local db, a, ferry, origin
  local F, O, A = procs.free_port(), procs.free_port(), procs.free_port()
  local conninfo

  setup(function()
    db = pgh.new()
    conninfo = db:create_db("fleet1")
    origin = procs.origin(O)
    a = agent.new()
    -- timeout = 1: statement_timeout 1 s, a query without an answer is
    -- reset after 3 s.
    ferry = a:ferry(string.format([[
listen { name = "main", addr = "127.0.0.1:%d" }
admin { addr = "127.0.0.1:%d" }
store { postgres = %q, timeout = 1, queue = 50 }
-- A heartbeat an hour: the node registry's own writes stay out of the
-- queue counts below (it registers once, at the first connection).
node { id = "n1", heartbeat = 3600 }
route(function(req) return "direct" end)
]], F, A, conninfo), { F, A })
  end)

  teardown(function()
    if ferry then procs.stop_ferry(ferry) end
    if origin then procs.stop(origin) end
    if db then db:cleanup() end
    if a then a:cleanup() end
  end)

  local function state()
    return a:run("return require('ferry.pg').state()")
  end

  it("connects, migrates and answers a read", function()
    assert.truthy(a:wait("return require('ferry.pg').state() == 'up' or nil"))
    assert.equal("1", db:psql("select string_agg(version::text, ',') from ferry_schema", "fleet1"))
    assert.equal("ferry_bans,ferry_leases,ferry_nodes,ferry_pins,ferry_probes,ferry_proxies," ..
      "ferry_schema", db:psql("select string_agg(tablename, ',' order by tablename) from " ..
      "pg_tables where tablename like 'ferry%'", "fleet1"))
    a:run([[
require("ferry.fleet").read("select 1 + $1::int as x, $2::text as n", { 41, require("ferry.pg").NULL },
  function(res, err) agent.r = res; agent.e = err end)
]])
    assert.equal("42", a:wait("return agent.r and agent.r.rows[1].x"))
    assert.is_nil(a:run("return agent.r.rows[1].n"))
    assert.equal(1, procs.metric(A, "ferry_pg_up"))
    assert.equal(1, count(ferry, "FERRY-8011"))
    -- One session, named for the DBA, with the statement timeout set.
    assert.equal("1", db:psql("select count(*) from pg_stat_activity where datname = 'fleet1' " ..
      "and application_name = 'ferry'", "fleet1"))
    a:run([[require("ferry.fleet").read("show statement_timeout", {},
      function(res) agent.st = res.rows[1].statement_timeout end)]])
    assert.equal("1s", a:wait("return agent.st"))
  end)

  it("writes through fleet.write, with the NOTIFY in the same statement", function()
    a:run([[
local fleet = require("ferry.fleet")
agent.w = nil
fleet.write("pin:k1", "WITH w AS (INSERT INTO ferry_pins (key, proxy, until, node) " ..
  "VALUES ($1, $2, clock_timestamp() + interval '60 seconds', $3) ON CONFLICT (key) DO " ..
  "UPDATE SET proxy = excluded.proxy, until = excluded.until, updated_at = clock_timestamp() " ..
  "RETURNING key) SELECT " .. fleet.notify_sql("json_build_object('t','pin','n',$3::text," ..
  "'key',$1::text)") .. " FROM w", { "k1", "p1", fleet.node_id() },
  function(res, err) agent.w = res and res.affected or err end)
]])
    assert.equal(1, a:wait("return agent.w"))
    assert.equal("p1|n1", db:psql("select proxy, node from ferry_pins where key = 'k1'", "fleet1"))
  end)

  it("hands a NOTIFY of another node to fleet.on and drops its own", function()
    a:run([[
local fleet = require("ferry.fleet")
agent.got = {}
fleet.on("spec", function(msg) agent.got[#agent.got + 1] = msg.v end)
]])
    -- Other modules publish too (the node registry's own "node" message):
    -- count this node's own messages from here.
    local own0 = a:run("return require('ferry.fleet').stats().own_messages")
    db:psql([[select pg_notify('ferry_fleet', '{"t":"spec","n":"n1","v":"own"}')]], "fleet1")
    db:psql([[select pg_notify('ferry_fleet', '{"t":"spec","n":"n2","v":"other"}')]], "fleet1")
    db:psql([[select pg_notify('ferry_fleet', 'not json')]], "fleet1")
    assert.equal("other", a:wait("return agent.got[1]"))
    local st = a:run("return require('ferry.fleet').stats()")
    assert.equal(1, #a:run("return agent.got"))
    assert.equal(own0 + 1, st.own_messages) -- "own"
    assert.equal(1, st.invalid_messages)
    assert.truthy(procs.wait_for(function() return count(ferry, "FERRY-8012") == 1 end))
  end)

  it("cancels a query slower than statement_timeout and goes on with the queue", function()
    a:run([[
local fleet = require("ferry.fleet")
agent.slow, agent.after = nil, nil
fleet.read("select pg_sleep(5)", {}, function(_, err) agent.slow = err end)
fleet.write("k:after", "insert into ferry_nodes (id, heartbeat_at) values ($1, now())",
  { "after-slow" }, function(res, err) agent.after = res and "ok" or err end)
]])
    assert.truthy(a:wait("return agent.slow", 10):find("57014", 1, true))
    assert.equal("ok", a:wait("return agent.after"))
    assert.equal(1, count(ferry, "FERRY-8007", "statement_timeout"))
    assert.equal("1", db:psql("select count(*) from ferry_nodes where id = 'after-slow'", "fleet1"))
    assert.equal("up", state())
  end)

  it("keeps serving while PostgreSQL is down, queues writes, and sends them after it is back",
    function()
    db:stop()
    assert.truthy(a:wait("return require('ferry.pg').state() ~= 'up' or nil"))
    for _ = 1, 5 do
      assert.equal(200, (get(F, O)))
    end
    local r = a:run([[
local fleet = require("ferry.fleet")
local results = {}
for i = 1, 3 do
  assert(fleet.write("node:q" .. i, "insert into ferry_nodes (id, heartbeat_at) values ($1, now()) " ..
    "on conflict (id) do update set advertise = excluded.advertise", { "q" .. i }))
end
-- The same key twice: one row, the later value.
assert(fleet.write("node:q3", "insert into ferry_nodes (id, advertise, heartbeat_at) values " ..
  "($1, $2, now()) on conflict (id) do update set advertise = excluded.advertise",
  { "q3", "later:1" }))
local ok, err = fleet.read("select 1", {}, function() end)
results.read_ok, results.read_err = ok, err
results.stats = fleet.stats()
return results
]])
    assert.is_nil(r.read_ok)
    assert.truthy(r.read_err:find("down", 1, true) or r.read_err:find("connecting", 1, true))
    assert.equal(3, r.stats.queued)
    assert.equal(1, r.stats.coalesced)
    assert.equal(3, procs.metric(A, "ferry_pg_queue"))
    assert.equal(0, procs.metric(A, "ferry_pg_up"))
    -- The bound (queue = 50): 47 more fit, the next 5 are dropped, one line.
    local full = a:run([[
local fleet = require("ferry.fleet")
local ok, refused, err = 0, 0, nil
for i = 1, 52 do
  local r, e = fleet.write("node:f" .. i, "insert into ferry_nodes (id, heartbeat_at) values " ..
    "($1, now()) on conflict (id) do nothing", { "f" .. i })
  if r then ok = ok + 1 else refused, err = refused + 1, e end
end
return { ok = ok, refused = refused, err = err }
]])
    assert.same({ ok = 47, refused = 5, err = "the postgres queue is full" }, full)
    assert.equal(5, procs.metric(A, "ferry_pg_dropped_total"))
    assert.equal(50, procs.metric(A, "ferry_pg_queue"))
    assert.truthy(procs.wait_for(function() return count(ferry, "FERRY-8006") == 1 end))
    procs.sleep(1.5) -- a few reconnect attempts
    assert.equal(1, count(ferry, "FERRY-8004"))
    assert.equal(0, count(ferry, "FERRY-8003"))
    for _ = 1, 3 do
      assert.equal(200, (get(F, O)))
    end
    db:start()
    assert.truthy(a:wait("return require('ferry.pg').state() == 'up' or nil", 15))
    assert.truthy(procs.wait_for(function()
      return db:psql("select count(*) from ferry_nodes where id like 'q%'", "fleet1") == "3"
    end, 5))
    assert.truthy(procs.wait_for(function()
      return db:psql("select count(*) from ferry_nodes where id like 'f%'", "fleet1") == "47"
    end, 5))
    assert.equal("later:1", db:psql("select advertise from ferry_nodes where id = 'q3'", "fleet1"))
    -- The last rows can land a moment before the queue's gauge is read
    -- back at 0: wait (bounded) for the queue to drain.
    procs.wait_for(function() return procs.metric(A, "ferry_pg_queue") == 0 end, 5)
    assert.equal(0, procs.metric(A, "ferry_pg_queue"))
    assert.truthy(procs.metric(A, "ferry_pg_reconnects_total") >= 1)
    assert.equal(1, count(ferry, "FERRY-8002", "again"))
    -- The schema was checked again on reconnect: the server's notice
    -- ("already exists, skipping") is not written raw to the log.
    for _, l in ipairs(procs.log_lines(ferry)) do assert.is_nil(l.unparsed, l.unparsed) end
  end)

  it("resets a connection whose server stopped answering, and serves meanwhile", function()
    assert.truthy(a:wait("return require('ferry.pg').state() == 'up' or nil", 10))
    db:sigstop()
    -- The server is thawed whatever happens below, or the next specs hang on it.
    finally(function() db:sigcont() end)
    -- A write goes out first (in flight when the server froze), a read waits behind it.
    a:run([[
local fleet = require("ferry.fleet")
agent.frozen, agent.frozen_w = nil, nil
fleet.write("node:frozen", "insert into ferry_nodes (id, heartbeat_at) values ($1, now()) " ..
  "on conflict (id) do nothing", { "frozen" }, function(res, err) agent.frozen_w = err or "ok" end)
fleet.read("select 1", {}, function(_, err) agent.frozen = err or "ok" end)
]])
    for _ = 1, 3 do
      assert.equal(200, (get(F, O)))
    end
    -- No answer for 3 s (twice the statement timeout, plus 1 s): reset.
    local err = a:wait("return agent.frozen", 10)
    assert.truthy(err:find("lost", 1, true))
    assert.equal(1, count(ferry, "FERRY-8007", "does not answer"))
    assert.is_nil(a:run("return agent.frozen_w"))
    assert.truthy(a:run("return require('ferry.pg').stats().requeued") >= 1)
    db:sigcont()
    assert.truthy(a:wait("return require('ferry.pg').state() == 'up' or nil", 20))
    -- The write in flight was sent again on the new session.
    assert.equal("ok", a:wait("return agent.frozen_w", 10))
    assert.equal("1", db:psql("select count(*) from ferry_nodes where id = 'frozen'", "fleet1"))
  end)

  it("refuses a schema newer than this ferry and keeps serving", function()
    local ci = db:create_db("newer")
    db:psql("create table ferry_schema (version integer not null, applied_at timestamptz not " ..
      "null default now()); insert into ferry_schema (version) values (1), (99)", "newer")
    local F2 = procs.free_port()
    local b = agent.new()
    local f2 = b:ferry(string.format([[
listen { name = "main", addr = "127.0.0.1:%d" }
store { postgres = %q }
node { id = "n-newer" }
route(function(req) return "direct" end)
]], F2, ci), { F2 })
    local ok, e = pcall(function()
      assert.truthy(procs.wait_for(function() return count(f2, "FERRY-8009") == 1 end, 10))
      assert.truthy(procs.read_file(f2.log):find("version 99", 1, true))
      assert.equal(200, (get(F2, O)))
      local st = b:run("return require('ferry.fleet').stats()")
      assert.equal("down", st.state)
      assert.truthy(st.held:find("newer", 1, true))
      assert.is_nil(b:run("return require('ferry.fleet').read('select 1', {}, function() end)"))
      -- Nothing was created next to the newer schema.
      assert.equal("0", db:psql("select count(*) from pg_tables where tablename = 'ferry_nodes'",
        "newer"))
    end)
    procs.stop_ferry(f2)
    b:cleanup()
    assert(ok, e)
  end)

  it("logs a wrong password with a code and never the password", function()
    local F3 = procs.free_port()
    local c = agent.new()
    local f3 = c:ferry(string.format([[
listen { name = "main", addr = "127.0.0.1:%d" }
admin { socket = %q }
store { postgres = %q }
route(function(req) return "direct" end)
]], F3, c.dir .. "/c.sock", db:password_conninfo("fleet1", WRONG_PW)), { F3 })
    local ok, e = pcall(function()
      assert.truthy(procs.wait_for(function() return count(f3, "FERRY-8003") == 1 end, 10))
      assert.truthy(procs.read_file(f3.log):find("password authentication failed", 1, true))
      assert.equal(200, (get(F3, O)))
      local st = c:run("return require('ferry.fleet').stats()")
      assert.equal("down", st.state)
      local seen = c:run("local s = require('ferry.fleet').stats(); return s.last_error .. ' ' " ..
        ".. s.target .. ' ' .. require('ferry.metrics').render(require('ferry.runtime'))")
      assert.falsy(seen:find(WRONG_PW, 1, true))
      assert.truthy(seen:find("127.0.0.1:" .. db.port .. "/fleet1", 1, true))
      -- The console's stats() shows the connection without credentials.
      local p = io.popen(procs.quote(procs.bin) .. " console -s " ..
        procs.quote(c.dir .. "/c.sock") .. " -e 'stats()' 2>&1")
      local out = p:read("*a")
      p:close()
      assert.truthy(out:find("down 127.0.0.1:" .. db.port .. "/fleet1", 1, true), out)
      assert.falsy(out:find(WRONG_PW, 1, true), out)
    end)
    procs.stop_ferry(f3)
    c:cleanup()
    assert(ok, e)
    assert.falsy(procs.read_file(f3.log):find(WRONG_PW, 1, true))
  end)

  it("connects with the right password without logging it", function()
    local F4 = procs.free_port()
    local d = agent.new()
    local f4 = d:ferry(string.format([[
listen { name = "main", addr = "127.0.0.1:%d" }
store { postgres = %q }
route(function(req) return "direct" end)
]], F4, db:password_conninfo("fleet1")), { F4 })
    local ok, e = pcall(function()
      assert.truthy(d:wait("return require('ferry.pg').state() == 'up' or nil", 10))
    end)
    procs.stop_ferry(f4)
    d:cleanup()
    assert(ok, e)
    assert.falsy(procs.read_file(f4.log):find("Pg-Secret-7731", 1, true))
    assert.equal(1, count(f4, "FERRY-8002"))
  end)

  it("tries the hosts of a list in turn (libpq changes sockets under the watcher)", function()
    local F6 = procs.free_port()
    local g = agent.new()
    local f6 = g:ferry(string.format([[
listen { name = "main", addr = "127.0.0.1:%d" }
store { postgres = "host=127.0.0.1,127.0.0.1 port=%d,%d dbname=fleet1 user=postgres" }
route(function(req) return "direct" end)
]], F6, procs.free_port(), db.port), { F6 })
    local ok, e = pcall(function()
      assert.truthy(g:wait("return require('ferry.pg').state() == 'up' or nil", 10))
    end)
    procs.stop_ferry(f6)
    g:cleanup()
    assert(ok, e)
  end)

  it("keeps the connection over a reload with the same string, closes it without one", function()
    assert.truthy(a:wait("return require('ferry.pg').state() == 'up' or nil", 20))
    local before = a:run("return require('ferry.pg').stats().connects")
    local reloads = count(ferry, "FERRY-0101")
    local text = procs.read_file(ferry.config)
    procs.signal(ferry, "HUP")
    assert.truthy(procs.wait_for(function() return count(ferry, "FERRY-0101") == reloads + 1 end))
    assert.equal("up", state())
    assert.equal(before, a:run("return require('ferry.pg').stats().connects"))
    -- Without store.postgres: closed, the fleet off, requests served.
    procs.write_file(ferry.config, (text:gsub("store {[^\n]*\n", "")))
    procs.signal(ferry, "HUP")
    assert.truthy(procs.wait_for(function() return count(ferry, "FERRY-0101") == reloads + 2 end))
    assert.equal("off", state())
    assert.is_false(a:run("return require('ferry.fleet').enabled()"))
    assert.equal(200, (get(F, O)))
    assert.truthy(procs.wait_for(function()
      return db:psql("select count(*) from pg_stat_activity where datname = 'fleet1' and " ..
        "backend_type = 'client backend' and client_addr is not null", "fleet1") == "0"
    end))
    -- And back.
    procs.write_file(ferry.config, text)
    procs.signal(ferry, "HUP")
    assert.truthy(a:wait("return require('ferry.pg').state() == 'up' or nil", 10))
  end)

  it("sends what on_drain queues before the daemon stops", function()
    local F5 = procs.free_port()
    local e5 = agent.new()
    local f5 = e5:ferry(string.format([[
listen { name = "main", addr = "127.0.0.1:%d" }
store { postgres = %q }
node { id = "drainer" }
route(function(req) return "direct" end)
]], F5, conninfo), { F5 })
    local ok, e = pcall(function()
      assert.truthy(e5:wait("return require('ferry.pg').state() == 'up' or nil", 10))
      e5:run([[
local fleet = require("ferry.fleet")
fleet.on_drain(function()
  fleet.write("node:drainer", "insert into ferry_nodes (id, heartbeat_at, stopped) values " ..
    "($1, now(), true) on conflict (id) do update set stopped = true", { fleet.node_id() })
end)
]])
    end)
    procs.stop_ferry(f5)
    e5:cleanup()
    assert(ok, e)
    assert.equal("t", db:psql("select stopped from ferry_nodes where id = 'drainer'", "fleet1"))
    assert.equal(0, count(f5, "FERRY-8014"))
  end)

  it("lets two nodes migrate the same empty database at once (one by host name)", function()
    local ci = db:create_db("race")
    local nodes = {}
    for i = 1, 2 do
      local p = procs.free_port()
      local ag = agent.new()
      local cfg = string.format('listen { name = "main", addr = "127.0.0.1:%d" }\n' ..
        'store { postgres = %q }\nnode { id = "race-%d" }\nroute(function(req) return "direct" end)\n',
        -- The second by host name: resolved without blocking (c-ares), then hostaddr.
        p, i == 1 and ci or (ci:gsub("host=127%.0%.0%.1", "host=localhost")), i)
      nodes[i] = { a = ag, port = p, proc = ag:ferry(cfg, {}) }
    end
    local ok, e = pcall(function()
      for _, n in ipairs(nodes) do
        assert.truthy(procs.wait_port(n.port, 10))
        assert.truthy(n.a:wait("return require('ferry.pg').state() == 'up' or nil", 15))
      end
      assert.equal("1", db:psql("select string_agg(version::text, ',') from ferry_schema", "race"))
      local applied = count(nodes[1].proc, "FERRY-8011") + count(nodes[2].proc, "FERRY-8011")
      assert.equal(1, applied)
      assert.equal(0, count(nodes[1].proc, "FERRY-8010") + count(nodes[2].proc, "FERRY-8010"))
    end)
    for _, n in ipairs(nodes) do
      procs.stop_ferry(n.proc)
      n.a:cleanup()
    end
    assert(ok, e)
  end)
end)

describe("ferry check on store and node", function()
  local function check(text)
    local cfg = procs.write_file(string.format("%s/check-%d.lua", procs.tmp, math.random(1, 1e9)),
      text)
    local p = io.popen(procs.quote(procs.bin) .. " check -c " .. procs.quote(cfg) .. " 2>&1; echo \"rc=$?\"")
    local out = p:read("*a")
    p:close()
    return tonumber(out:match("rc=(%d+)")), out, cfg
  end
  local base = 'listen { name = "main", addr = "127.0.0.1:1" }\n'

  it("accepts a fleet config", function()
    local rc, out = check(base .. 'store { postgres = "host=127.0.0.1 dbname=x", queue = 100, ' ..
      'resync = 10 }\nnode { id = "fra-1", advertise = "10.0.0.5:9090", heartbeat = 2 }\n')
    assert.equal(0, rc, out)
  end)

  for _, c in ipairs {
    { 'store { postgres = 5 }', "FERRY-0250" },
    { 'store { postgres = "" }', "FERRY-0250" },
    { 'store { postgres = "just words" }', "FERRY-0250" },
    { 'store { postgres = "host=x password=Sekr3t-99 bogus_opt=1" }', "FERRY-0250" },
    { 'store { postgres = "host=x", queue = 0 }', "FERRY-0251" },
    { 'store { postgres = "host=x", resync = -1 }', "FERRY-0251" },
    { 'store { path = "x.db", queue = 10 }', "FERRY-0251" },
    { 'node { id = "bad id!" }', "FERRY-0252" },
    { 'node { id = "" }', "FERRY-0252" },
    { 'node { advertise = "nope" }', "FERRY-0253" },
    { 'node { heartbeat = 0 }', "FERRY-0254" },
    { 'node { colour = "red" }', "FERRY-0254" },
  } do
    it("refuses " .. c[1], function()
      local rc, out, cfg = check(base .. c[1] .. "\n")
      assert.equal(1, rc, out)
      assert.truthy(out:find(c[2], 1, true), out)
      assert.truthy(out:find(cfg .. ":2:", 1, true), out)
      assert.falsy(out:find("Sekr3t-99", 1, true), out)
    end)
  end
end)
