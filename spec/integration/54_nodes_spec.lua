-- Fleet nodes against a real PostgreSQL 15 and three bin/ferry nodes
-- (heartbeat 0.5 s): every node lists the three (API and console); the
-- probes of a shared pool of six proxies are divided so each proxy is
-- probed by exactly one node (per-node probe counters, and accepts at
-- the proxies themselves); a proxy that dies is seen down by a node that
-- does not probe it; a node killed with SIGKILL shows as gone and its
-- proxies' probes move to the survivors; SIGTERM shows a node stopped;
-- a node restarted with the same id comes back live.
local procs = require("procs")
local pg = require("pg")
local cjson = require("cjson.safe")

local NPROXIES = 6
local HB = 0.5

-- A TCP "proxy" for tcp probes: accepts and closes, counting accepts
-- into a file (rewritten after each).
local STUB = [[
local socket = require("socket")
local port, out = tonumber(arg[1]), arg[2]
local server = assert(socket.bind("127.0.0.1", port))
server:settimeout(0.2)
local accepts = 0
local function report()
  local f = assert(io.open(out .. ".tmp", "w"))
  f:write(accepts, "\n")
  f:close()
  os.rename(out .. ".tmp", out)
end
report()
while true do
  local c = server:accept()
  if c then
    accepts = accepts + 1
    c:close()
    report()
  end
end
]]

local function accepts(stub)
  return tonumber((procs.read_file(stub.out) or ""):match("(%d+)")) or 0
end

local function get_json(port, path)
  local status, body = procs.curl { url = "http://127.0.0.1:" .. port .. path, max_time = 5 }
  return status, cjson.decode(body or "")
end

local function console(port, line)
  local status, body = procs.curl { url = "http://127.0.0.1:" .. port .. "/api/v1/console",
    flags = "-X POST --data-binary " .. procs.quote(line), max_time = 5 }
  return status, body
end

local function scrape(port)
  local status, body = procs.curl { url = "http://127.0.0.1:" .. port .. "/metrics",
    max_time = 5 }
  assert.equal(200, status)
  return body
end

-- Local probes of proxy `label` that passed on the node (its own runs:
-- a verdict shared by another node does not count here).
local function probes_ok(text, label)
  for line in text:gmatch("[^\n]+") do
    if line:find("^ferry_proxy_probes_total{") and line:find('proxy="' .. label .. '"', 1, true)
        and line:find('result="ok"', 1, true) then
      return tonumber(line:match(" (%d+)$"))
    end
  end
  return nil
end

local function metric(text, name)
  return tonumber(("\n" .. text):match("\n" .. name .. " (%S+)"))
end

local function states(port)
  local status, body = get_json(port, "/api/v1/nodes")
  if status ~= 200 or not body or not body.nodes then return {} end
  local t = {}
  for _, n in ipairs(body.nodes) do t[n.id] = n end
  return t, body
end

local function code_lines(proc, code, needle)
  local n = 0
  for _, l in ipairs(procs.log_lines(proc)) do
    if l.code == code and (not needle or tostring(l.msg):find(needle, 1, true)) then
      n = n + 1
    end
  end
  return n
end

describe("fleet nodes and divided probing", function()
  if not pg.available() then
    pending("PostgreSQL 15 is not installed (make deps)")
    return
  end

  local db, conninfo
  local stubs, labels = {}, {}
  local nodes = {} -- id -> { proc, admin, listen, config }
  local stub_path

  local function config(id, n)
    local lines = {}
    for i, s in ipairs(stubs) do
      lines[i] = string.format('    { url = "http://127.0.0.1:%d", id = "%s" },', s.port,
        labels[i])
    end
    return string.format([[
listen { addr = "127.0.0.1:%d" }
admin { addr = "127.0.0.1:%d" }
store { postgres = %q }
node { id = %q, heartbeat = %s }
pool "shared" {
  proxies = {
%s
  },
  health = { check = "tcp", interval = 0.3, timeout = 0.2, rise = 1, fall = 1 } }
]], n.listen, n.admin, conninfo, id, n.hb or HB, table.concat(lines, "\n"))
  end

  local function start_node(id)
    local n = nodes[id] or { listen = procs.free_port(), admin = procs.free_port() }
    nodes[id] = n
    n.proc = procs.ferry(config(id, n), { n.listen, n.admin }, "ferry-" .. id)
    return n
  end

  setup(function()
    db = pg.start_new()
    conninfo = db:create_db("nodes54")
    stub_path = procs.write_file(string.format("%s/nodes-stub-%d.lua", procs.tmp,
      math.random(1, 1e9)), STUB)
    for i = 1, NPROXIES do
      local port = procs.free_port()
      local out = string.format("%s/nodes-stub-%d.out", procs.tmp, port)
      os.remove(out)
      local proc = procs.spawn("stub", "luajit " .. stub_path .. " " .. port .. " " .. out)
      assert(procs.wait_port(port), "stub did not start")
      proc.port, proc.out = port, out
      stubs[i], labels[i] = proc, "p" .. i
    end
    for _, id in ipairs({ "n1", "n2", "n3" }) do start_node(id) end
  end)

  teardown(function()
    for _, n in pairs(nodes) do
      if n.proc and not n.proc.stopped then procs.stop_ferry(n.proc) end
    end
    for _, s in ipairs(stubs) do procs.stop(s) end
    if db then db:cleanup() end
  end)

  -- Every node of `ids` sees exactly `want` (id -> state) and `probes`
  -- duties summing to NPROXIES over the probing nodes.
  local function converged(ids, want)
    for _, id in ipairs(ids) do
      local t = states(nodes[id].admin)
      for wid, wst in pairs(want) do
        if not t[wid] or t[wid].state ~= wst then return false end
      end
      local sum = 0
      for _, row in pairs(t) do sum = sum + (row.probes or 0) end
      if sum ~= NPROXIES then return false end
      local duties = metric(scrape(nodes[id].admin), "ferry_fleet_probe_duties")
      if not duties or duties ~= t[id].probes then return false end
    end
    return true
  end

  it("lists the three nodes as live on every node, in the API and the console", function()
    local want = { n1 = "live", n2 = "live", n3 = "live" }
    assert.truthy(procs.wait_for(function() return converged({ "n1", "n2", "n3" }, want) end,
      20, 0.1), "the nodes did not converge")
    for _, id in ipairs({ "n1", "n2", "n3" }) do
      local t, body = states(nodes[id].admin)
      assert.equal(id, body.self)
      assert.is_false(body.stale)
      for _, other in ipairs({ "n1", "n2", "n3" }) do
        assert.equal(other == id, t[other].self)
        assert.equal("0.1.0", t[other].version)
        -- ISO 8601 in UTC, by the database's clock: within a minute of now here.
        local y, mo, d, h, mi, sec = tostring(t[other].started):match(
          "^(%d%d%d%d)%-(%d%d)%-(%d%d)T(%d%d):(%d%d):(%d%d)%.%d%d%dZ$")
        assert.truthy(y, tostring(t[other].started))
        local utc = os.time({ year = y, month = mo, day = d, hour = h, min = mi, sec = sec,
          isdst = false })
        local skew = os.time(os.date("*t")) - os.time(os.date("!*t"))
        assert.truthy(math.abs(utc + skew - os.time()) < 120, t[other].started)
        assert.truthy(t[other].heartbeat_age_s >= 0)
        assert.equal(16, #t[other].config_hash)
      end
      local status, text = console(nodes[id].admin, "node.list()")
      assert.equal(200, status)
      for _, other in ipairs({ "n1", "n2", "n3" }) do
        assert.truthy(text:find(other .. "%s+%S*%s*0%.1%.0%s+live"), text)
      end
      status, text = console(nodes[id].admin, "node.self()")
      assert.equal(200, status)
      assert.truthy(text:find(id, 1, true), text)
      assert.truthy(text:find("probe duties", 1, true), text)
    end
    -- Registration was logged once per node, and the others' joins.
    assert.equal(1, code_lines(nodes.n1.proc, "FERRY-8020"))
    assert.equal(1, code_lines(nodes.n1.proc, "FERRY-8021", "node n2 joined"))
    local text = scrape(nodes.n2.admin)
    assert.equal(3, metric(text, 'ferry_fleet_nodes{state="live"}'))
    assert.equal(0, metric(text, 'ferry_fleet_nodes{state="gone"}'))
    assert.truthy(metric(text, 'ferry_fleet_changes_total{kind="node",dir="out"}') >= 1)
  end)

  -- Each node's own passed probes per proxy over a window: { id = { label = delta } }.
  local function probe_deltas(ids, secs)
    local before = {}
    for _, id in ipairs(ids) do
      local text = scrape(nodes[id].admin)
      before[id] = {}
      for _, l in ipairs(labels) do before[id][l] = probes_ok(text, l) or 0 end
    end
    local hits0 = {}
    for i, s in ipairs(stubs) do hits0[i] = accepts(s) end
    procs.sleep(secs)
    local d = {}
    for _, id in ipairs(ids) do
      local text = scrape(nodes[id].admin)
      d[id] = {}
      for _, l in ipairs(labels) do d[id][l] = (probes_ok(text, l) or 0) - before[id][l] end
    end
    local hits = {}
    for i, s in ipairs(stubs) do hits[labels[i]] = accepts(s) - hits0[i] end
    return d, hits
  end

  -- Each proxy has probes on exactly one of `ids`; returns label -> node.
  local function owners(ids)
    local d, hits = probe_deltas(ids, 1.5)
    local owner = {}
    for _, l in ipairs(labels) do
      local probing = {}
      for _, id in ipairs(ids) do
        if d[id][l] > 0 then probing[#probing + 1] = id end
      end
      assert.equal(1, #probing, l .. " probed by: " .. table.concat(probing, ","))
      owner[l] = probing[1]
      assert.truthy(hits[l] > 0, "no probe reached " .. l)
    end
    return owner
  end

  local owner

  it("probes each proxy of the shared pool from exactly one node", function()
    owner = owners({ "n1", "n2", "n3" })
    -- The API's duty counts agree with who really probes.
    local t = states(nodes.n1.admin)
    local count = { n1 = 0, n2 = 0, n3 = 0 }
    for _, id in pairs(owner) do count[id] = count[id] + 1 end
    for id, n in pairs(count) do assert.equal(n, t[id].probes, id) end
    -- The verdicts are shared: one row per proxy, written by its prober
    -- (on the first verdict, and again with the latency every 10 beats).
    local rows
    local ok = procs.wait_for(function()
      rows = db:psql("select proxy, node, up, latency_ms is not null from ferry_probes " ..
        "order by proxy", "nodes54")
      local n = 0
      for proxy, node, up, lat in rows:gmatch("([^|\n]+)|([^|\n]+)|([tf])|([tf])") do
        if owner[proxy] ~= node or up ~= "t" or lat ~= "t" then return false end
        n = n + 1
      end
      return n == NPROXIES
    end, 12, 0.2)
    assert.truthy(ok, rows)
  end)

  it("shows a proxy down on a node that does not probe it", function()
    local label = labels[1]
    local prober = owner[label]
    local other = prober == "n1" and "n2" or "n1"
    procs.stop(stubs[1])
    local function down_on(id)
      local status, body = get_json(nodes[id].admin, "/api/v1/proxies?pool=shared")
      if status ~= 200 then return false end
      for _, r in ipairs(body.proxies or {}) do
        if r.name == label then return r.state == "down" end
      end
      return false
    end
    assert.truthy(procs.wait_for(function() return down_on(prober) end, 10, 0.05))
    assert.truthy(procs.wait_for(function() return down_on(other) end, 10, 0.05),
      "the shared verdict did not reach " .. other)
    -- The other node did not probe it itself.
    local d = probe_deltas({ other }, 0.6)
    assert.equal(0, d[other][label])
    local text = scrape(nodes[other].admin)
    assert.truthy(metric(text, 'ferry_fleet_changes_total{kind="probe",dir="in"}') >= 1)
    assert.truthy((tonumber(text:match('ferry_proxy_probes_total{[^}]*proxy="' .. label ..
      '"[^}]*result="failed"} (%d+)')) or 0) == 0)
    -- Back: a new stub on the same port.
    local port = stubs[1].port
    local out = stubs[1].out
    local proc = procs.spawn("stub", "luajit " .. stub_path .. " " .. port .. " " .. out)
    assert(procs.wait_port(port), "stub did not restart")
    proc.port, proc.out = port, out
    stubs[1] = proc
    assert.truthy(procs.wait_for(function() return not down_on(other) end, 10, 0.05))
  end)

  local victim, survivors

  it("moves the probes of a node killed with SIGKILL to the survivors", function()
    -- The node with the most duties (at least 2 of 6 over 3 nodes).
    local count = { n1 = 0, n2 = 0, n3 = 0 }
    for _, id in pairs(owner) do count[id] = count[id] + 1 end
    victim = "n1"
    for _, id in ipairs({ "n2", "n3" }) do
      if count[id] > count[victim] then victim = id end
    end
    assert.truthy(count[victim] >= 2)
    survivors = {}
    for _, id in ipairs({ "n1", "n2", "n3" }) do
      if id ~= victim then survivors[#survivors + 1] = id end
    end
    procs.stop(nodes[victim].proc, "KILL")
    local want = { [victim] = "gone", [survivors[1]] = "live", [survivors[2]] = "live" }
    assert.truthy(procs.wait_for(function() return converged(survivors, want) end, 15, 0.1),
      victim .. " not seen gone, or duties not re-divided")
    local t = states(nodes[survivors[1]].admin)
    assert.truthy(t[victim].heartbeat_age_s > 3 * HB)
    assert.equal(0, t[victim].probes)
    local moved = owners(survivors)
    for l, id in pairs(owner) do
      -- Only the victim's proxies moved; each now probed by a survivor.
      if id ~= victim then assert.equal(id, moved[l], l .. " moved without need") end
    end
    for _, id in ipairs(survivors) do
      assert.truthy(code_lines(nodes[id].proc, "FERRY-8022", "node " .. victim) >= 1)
      assert.truthy(code_lines(nodes[id].proc, "FERRY-8026", "over 2 probing nodes") >= 1)
    end
  end)

  it("brings back a node restarted with the same id, with its share of the probes", function()
    start_node(victim)
    local want = { n1 = "live", n2 = "live", n3 = "live" }
    assert.truthy(procs.wait_for(function() return converged({ "n1", "n2", "n3" }, want) end,
      20, 0.1), victim .. " did not come back")
    for _, id in ipairs(survivors) do
      assert.truthy(procs.wait_for(function()
        return code_lines(nodes[id].proc, "FERRY-8023", "node " .. victim) >= 1
      end, 5))
    end
    -- The same division as before the kill: the same live nodes.
    assert.same(owner, owners({ "n1", "n2", "n3" }))
  end)

  it("answers from memory, marked stale, while PostgreSQL is down", function()
    local id = survivors[1]
    db:stop()
    assert.truthy(procs.wait_for(function()
      local _, body = get_json(nodes[id].admin, "/api/v1/nodes")
      return body and body.stale == true
    end, 10, 0.1))
    local status, body = get_json(nodes[id].admin, "/api/v1/nodes")
    assert.equal(200, status)
    assert.equal(3, #body.nodes)
    assert.truthy(body.view_age_s >= 0)
    -- Nothing can be shared now: each node probes all its proxies.
    assert.truthy(procs.wait_for(function()
      return metric(scrape(nodes[id].admin), "ferry_fleet_probe_duties") == NPROXIES
    end, 5, 0.1))
    local text
    status, text = console(nodes[id].admin, "node.list()")
    assert.equal(200, status)
    assert.truthy(text:find("stale", 1, true), text)
    db:start()
    local want = { n1 = "live", n2 = "live", n3 = "live" }
    assert.truthy(procs.wait_for(function() return converged({ "n1", "n2", "n3" }, want) end,
      30, 0.2), "no convergence after PostgreSQL came back")
    status, body = get_json(nodes[id].admin, "/api/v1/nodes")
    assert.equal(200, status)
    assert.is_false(body.stale)
  end)

  it("shows a node stopped with SIGTERM as stopped, and divides without it", function()
    local leaving, staying = survivors[2], { survivors[1], victim }
    procs.stop_ferry(nodes[leaving].proc)
    assert.equal(1, code_lines(nodes[leaving].proc, "FERRY-8024", "node " .. leaving))
    assert.equal(0, code_lines(nodes[leaving].proc, "FERRY-8029"))
    local want = { [leaving] = "stopped", [staying[1]] = "live", [staying[2]] = "live" }
    assert.truthy(procs.wait_for(function() return converged(staying, want) end, 10, 0.1),
      leaving .. " not seen stopped")
    assert.equal(1, code_lines(nodes[staying[1]].proc, "FERRY-8025", "node " .. leaving))
    local rows = db:psql("select id, stopped from ferry_nodes order by id", "nodes54")
    assert.truthy(rows:find(leaving .. "|t", 1, true), rows)
    owners(staying)
  end)

  it("logs an id clash when a second process registers a live node's id", function()
    local id = survivors[1]
    local twin = { listen = procs.free_port(), admin = procs.free_port() }
    twin.proc = procs.ferry(config(id, twin), { twin.listen, twin.admin }, "ferry-twin")
    assert.truthy(procs.wait_for(function()
      return code_lines(nodes[id].proc, "FERRY-8027", "another node registered as " .. id) >= 1
    end, 10, 0.1), "no FERRY-8027 on " .. id)
    procs.stop(twin.proc, "KILL")
  end)

  it("judges each node by its own heartbeat: one beating 4 times slower stays live", function()
    local watcher = survivors[1]
    nodes.slow = { listen = procs.free_port(), admin = procs.free_port(), hb = 4 * HB }
    start_node("slow")
    assert.truthy(procs.wait_for(function()
      local t = states(nodes[watcher].admin)
      return t.slow and t.slow.state == "live"
    end, 10, 0.1), "the slow node did not join")
    -- Over 3 of its heartbeats (4 of the watcher's gone limits), sampled
    -- every 0.1 s: never gone, though its row is often older than 3 * HB.
    local seen_old, t
    local deadline = os.time() + 3 * 4 * HB + 1
    while os.time() < deadline do
      t = states(nodes[watcher].admin)
      assert.equal("live", t.slow and t.slow.state)
      if t.slow.heartbeat_age_s > 3 * HB then seen_old = true end
      procs.sleep(0.1)
    end
    assert.truthy(seen_old, "the slow node's heartbeat never aged past 3 * HB")
    assert.equal(4 * HB, t.slow.heartbeat_s)
    assert.equal(HB, t[watcher].heartbeat_s)
    assert.equal(0, code_lines(nodes[watcher].proc, "FERRY-8022", "node slow"))
    procs.stop_ferry(nodes.slow.proc)
  end)
end)

describe("node { } without store { postgres }", function()
  it("starts, warns once with FERRY-0255 and answers GET /api/v1/nodes with fleet:false",
    function()
    local L, A = procs.free_port(), procs.free_port()
    local proc = procs.ferry(string.format([[
listen { name = "main", addr = "127.0.0.1:%d" }
admin { addr = "127.0.0.1:%d" }
node { id = "lonely-1" }
route(function(req) return "direct" end)
]], L, A), { L, A }, "ferry-lonely")
    local code, body = procs.admin_api(A, "GET", "/api/v1/nodes")
    assert.equal(200, code)
    assert.is_false(body.fleet)
    assert.is_nil(body.nodes)
    procs.stop_ferry(proc)
    assert.equal(1, code_lines(proc, "FERRY-0255", 'node { id = "lonely-1" } has no effect'))
  end)
end)
