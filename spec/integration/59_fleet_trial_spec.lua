-- Defects found by trying the fleet and the broker client as a new user
-- would: each case here failed before its fix.
local procs = require("procs")

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
