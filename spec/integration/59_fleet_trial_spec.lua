-- Defects found by trying the fleet and the broker client as a new user
-- would: each case here failed before its fix.
local procs = require("procs")
local pgh = require("pg")

local function check(text)
  local cfg = procs.write_file(string.format("%s/trial-check-%d.lua", procs.tmp,
    math.random(1, 1e9)), text)
  local p = io.popen(procs.quote(procs.bin) .. " check -c " .. procs.quote(cfg) ..
    " 2>&1; echo \"rc=$?\"")
  local out = p:read("*a")
  p:close()
  return tonumber(out:match("rc=(%d+)")), out
end

describe("trial: ferry check on a mistyped connection string", function()
  local base = 'listen { name = "main", addr = "127.0.0.1:1" }\n'

  -- A misspelt option made only "not a valid connection string": the user
  -- could not tell which part was wrong.
  for _, c in ipairs {
    { "host=127.0.0.1 dbname=x user=u password=Trial-Pw-771 sslmod=require", "sslmod" },
    { "postgresql://u:Trial-Pw-771@127.0.0.1:5432/x?sslmod=require", "sslmod" },
    { "host=127.0.0.1 dbname=x password=Trial-Pw-771 bogus_opt=1", "bogus_opt" },
  } do
    it("names the unknown option of " .. c[1]:gsub("Trial%-Pw%-771", "***"), function()
      local rc, out = check(base .. 'store { postgres = "' .. c[1] .. '" }\n')
      assert.equal(1, rc, out)
      assert.truthy(out:find('unknown option "' .. c[2] .. '"', 1, true), out)
      assert.truthy(out:find("FERRY-0250", 1, true), out)
      assert.falsy(out:find("Trial-Pw-771", 1, true), out)
    end)
  end

  -- A piece of text that is not key=value may be the password itself:
  -- libpq's message quotes it, ferry's must not.
  it("never quotes a word without '=' (it may be the password)", function()
    local rc, out = check(base .. 'store { postgres = "host=x Trial-Pw-771" }\n')
    assert.equal(1, rc, out)
    assert.truthy(out:find("FERRY-0250", 1, true), out)
    assert.falsy(out:find("Trial-Pw-771", 1, true), out)
    rc, out = check(base .. 'store { postgres = "host=x Trial_Pw_771=1" }\n')
    assert.equal(1, rc, out)
    assert.falsy(out:find("Trial_Pw_771", 1, true), out)
  end)
end)

describe("trial: a broker client pool", function()
  local TOKEN = "trial-token-" .. math.random(1e6, 9e6)
  local PW = "trial-pw-" .. math.random(1e6, 9e6)
  local O, S1, S2, BL, BA = procs.free_port(), procs.free_port(), procs.free_port(),
    procs.free_port(), procs.free_port()
  local CL, CA, DEAD = procs.free_port(), procs.free_port(), procs.free_port()
  local origin, s1, s2, broker, client

  setup(function()
    origin = procs.origin(O)
    s1 = procs.microsocks(S1, "alice", PW)
    s2 = procs.microsocks(S2)
    broker = procs.ferry(string.format([[
listen { name = "main", addr = "127.0.0.1:%d" }
admin { addr = "127.0.0.1:%d", token = "%s" }
broker { ttl = 2 }
pool "main" { strategy = "round_robin", health = { interval = 60 }, proxies = {
  { url = "socks5://alice:%s@127.0.0.1:%d", id = "eu-exit", region = "eu-1" },
  { url = "socks5://127.0.0.1:%d", id = "us-exit", region = "us-1" } } }
exchange "ex" { hosts = { "127.0.0.1" }, pool = "main" }
]], BL, BA, TOKEN, PW, S1, S2), { BL, BA }, "trial-broker")
    client = procs.ferry(string.format([[
listen { name = "main", addr = "127.0.0.1:%d" }
admin { addr = "127.0.0.1:%d" }
pool "bin" { strategy = "round_robin",
  broker = { endpoints = { "http://127.0.0.1:%d" }, token = "%s", exchange = "ex",
             region = "eu-1", leases = 1, timeout = 3, renew = 0.8 },
  proxies = { { url = "socks5://127.0.0.1:%d", id = "fallback" } } }
exchange "ex" { hosts = { "127.0.0.1" }, pool = "bin" }
]], CL, CA, BA, TOKEN, DEAD), { CL, CA }, "trial-client")
  end)

  teardown(function()
    if client then procs.stop_ferry(client) end
    if broker then
      procs.signal(broker, "CONT")
      procs.stop_ferry(broker)
    end
    for _, p in ipairs { origin, s1, s2 } do procs.stop(p) end
  end)

  -- The leased proxies had no region: a request naming the region the
  -- pool leases in got 503 FERRY-2021 (no proxy in that region).
  it("serves X-Ferry-Region requests through proxies leased in that region", function()
    assert.truthy(procs.wait_for(function()
      return (procs.metric(CA, "ferry_broker_client_leases", 'pool="bin"') or 0) >= 1
    end, 10), procs.read_file(client.log))
    local status, body = procs.curl { url = "http://127.0.0.1:" .. O .. "/",
      proxy = "http://127.0.0.1:" .. CL, flags = "-H 'X-Ferry-Region: eu-1'", max_time = 5 }
    assert.equal(200, status, body)
    status = procs.curl { url = "http://127.0.0.1:" .. O .. "/",
      proxy = "http://127.0.0.1:" .. CL, flags = "-H 'X-Ferry-Region: us-1'", max_time = 5 }
    assert.equal(503, status)
  end)

  -- The lease ran out while its renewal call still waited for a frozen
  -- broker: the line said "no valid lease (none yet)", as if nothing failed.
  it("says the broker has not answered when the last lease runs out during a call", function()
    procs.signal(broker, "STOP")
    assert.truthy(procs.wait_for(function()
      for _, l in ipairs(procs.log_lines(client)) do
        if l.code == "FERRY-8110" then return l end
      end
    end, 10), procs.read_file(client.log))
    local line
    for _, l in ipairs(procs.log_lines(client)) do
      if l.code == "FERRY-8110" then line = l end
    end
    assert.truthy(line.msg:find("the broker has not answered yet", 1, true), line.msg)
    procs.signal(broker, "CONT")
    local text = procs.read_file(client.log) .. procs.read_file(broker.log)
    assert.is_nil(text:find(TOKEN, 1, true))
    assert.is_nil(text:find(PW, 1, true))
  end)
end)

describe("trial: a shared ban of a proxy with credentials and no id", function()
  local PW = "trial-ban-pw-" .. math.random(1e6, 9e6)
  local STORE_KEY = string.rep("5a", 32)
  local db, conninfo, origin, sock
  local O, S = procs.free_port(), procs.free_port()
  local nodes = {}

  local function config(name, n)
    return string.format([[
listen { name = "main", addr = "127.0.0.1:%d" }
admin { addr = "127.0.0.1:%d" }
store { postgres = %q, key = "%s" }
node { id = "%s", heartbeat = 1 }
pool "p" { strategy = "round_robin", retries = 0, all_down = "fail", health = { interval = 60 },
  proxies = { "socks5://bob:%s@127.0.0.1:%d" } }
exchange "ex" { hosts = { "127.0.0.1" }, pool = "p", ban = { status = { 429 }, backoff = 30 } }
]], n.F, n.A, conninfo, STORE_KEY, name, PW, S)
  end

  local function lines(name, code)
    local out = {}
    for _, l in ipairs(procs.log_lines(nodes[name].proc)) do
      if l.code == code then out[#out + 1] = l end
    end
    return out
  end

  setup(function()
    assert(pgh.available(), "PostgreSQL 15 is not installed (make deps)")
    db = pgh.new()
    conninfo = db:create_db("trial59")
    origin = procs.spawn("ban_origin", "python3 " .. procs.root .. "/spec/helpers/ban_origin.py " ..
      O)
    assert(procs.wait_port(O), "ban_origin did not start")
    sock = procs.microsocks(S, "bob", PW)
    for _, name in ipairs { "A", "B" } do
      local n = { F = procs.free_port(), A = procs.free_port() }
      nodes[name] = n
      n.proc = procs.ferry(config(name, n), { n.F, n.A }, "trial-" .. name)
    end
    for _, name in ipairs { "A", "B" } do
      assert.truthy(procs.wait_for(function() return #lines(name, "FERRY-8071") > 0 end, 20),
        "node " .. name .. " did not connect")
    end
  end)

  teardown(function()
    for _, n in pairs(nodes) do if n.proc then procs.stop_ferry(n.proc) end end
    if sock then procs.stop(sock) end
    if origin then procs.stop(origin) end
    if db then db:cleanup() end
  end)

  -- The fleet named such a proxy by its URL: the password sat in
  -- ferry_bans and in the NOTIFY every node received.
  it("reaches the other node without the password in the database", function()
    local status = procs.curl { proxy = "http://127.0.0.1:" .. nodes.A.F,
      url = "http://127.0.0.1:" .. O .. "/ban/all/429", max_time = 5 }
    assert.equal(429, status)
    assert.truthy(procs.wait_for(function() return #lines("B", "FERRY-8061") > 0 end, 10),
      procs.read_file(nodes.B.proc.log))
    -- B keeps away from it: its only proxy is banned, all_down = "fail".
    status = procs.curl { proxy = "http://127.0.0.1:" .. nodes.B.F,
      url = "http://127.0.0.1:" .. O .. "/ready", max_time = 5 }
    assert.are_not.equal(200, status)
    local rows = db:psql("select proxy from ferry_bans", "trial59")
    -- Sealed as ferry_proxies holds such URLs (the store has a key).
    assert.equal("enc:v1:", rows:sub(1, 7), rows)
    assert.is_nil(rows:find(PW, 1, true), rows)
    assert.is_nil(rows:find("bob", 1, true), rows)
    for _, n in pairs(nodes) do
      assert.is_nil(procs.read_file(n.proc.log):find(PW, 1, true))
    end
  end)

  -- A node read back only the other nodes' rows: killed and started again
  -- while its own ban ran, it forgot the ban and used the proxy again.
  it("keeps its own ban across a kill -9 and a restart", function()
    local n = nodes.A
    procs.stop(n.proc, "KILL")
    n.proc = procs.ferry(config("A", n), { n.F, n.A }, "trial-A2")
    assert.truthy(procs.wait_for(function() return #lines("A", "FERRY-8071") > 0 end, 20),
      procs.read_file(n.proc.log))
    local back = lines("A", "FERRY-8071")[1].msg
    assert.truthy(back:find("1 bans and breakers", 1, true), back)
    local status = procs.curl { proxy = "http://127.0.0.1:" .. n.F,
      url = "http://127.0.0.1:" .. O .. "/ready", max_time = 5 }
    assert.are_not.equal(200, status)
  end)

  -- The 201 comes once PostgreSQL has the row, yet its note said the
  -- change was "queued for the fleet's database".
  it("answers an inventory change with a note that says it is written", function()
    local status, body = procs.curl { url = "http://127.0.0.1:" .. nodes.B.A .. "/api/v1/proxies",
      flags = "-X POST -H 'Content-Type: application/json' --data-binary " .. procs.quote(
        string.format('{"pool":"p","url":"socks5://carol:%s@127.0.0.1:%d","id":"rt-trial"}', PW,
          S + 1)), max_time = 10 }
    assert.equal(201, status, body)
    assert.truthy(body:find("written to the fleet's database", 1, true), body)
    assert.is_nil(body:find("queued", 1, true), body)
    assert.is_nil(body:find(PW, 1, true), body)
    assert.equal("rt-trial", db:psql("select key from ferry_proxies where key = 'rt-trial'",
      "trial59"))
  end)
end)

describe("trial: a node whose database never answered", function()
  -- Stopping it warned "stopping with 1 change not written" (FERRY-8014):
  -- the drain queued its lease counts' reset although nothing was lost.
  it("stops without reporting a lost change", function()
    local F, A, DEAD = procs.free_port(), procs.free_port(), procs.free_port()
    local proc = procs.ferry(string.format([[
listen { name = "main", addr = "127.0.0.1:%d" }
admin { addr = "127.0.0.1:%d" }
store { postgres = "host=127.0.0.1 port=%d dbname=x user=u password=Trial-Pw-772" }
node { id = "lonely" }
]], F, A, DEAD), { F, A }, "trial-lonely")
    assert.truthy(procs.wait_for(function()
      for _, l in ipairs(procs.log_lines(proc)) do
        if l.code == "FERRY-8003" then return true end
      end
    end, 10), procs.read_file(proc.log))
    procs.stop_ferry(proc)
    local text = procs.read_file(proc.log)
    assert.truthy(text:find('"FERRY-0005"', 1, true), text)
    assert.is_nil(text:find('"FERRY-8014"', 1, true), text)
    assert.is_nil(text:find("Trial-Pw-772", 1, true), text)
  end)
end)
