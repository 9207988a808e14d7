-- Real clients through an intercepting ferry, each trusting ferry's CA the
-- way its users configure it: Python requests (REQUESTS_CA_BUNDLE), Node's
-- https module over a CONNECT agent (NODE_EXTRA_CA_CERTS), and a WebSocket
-- client over wss.  Each keeps one client TLS connection while ferry
-- rotates the pool per request (the origin sees two source ports), and
-- bodies arrive intact.  What runs: spec/helpers/intercept_env.lua.
local procs = require("procs")
local cjson = require("cjson")
local intercept_env = require("intercept_env")

local q = procs.quote
local sh, access = intercept_env.sh, intercept_env.access

local function distinct(list)
  local seen, n = {}, 0
  for _, v in ipairs(list) do
    if not seen[v] then seen[v], n = true, n + 1 end
  end
  return n
end

describe("interception with real clients", function()
  local env

  setup(function()
    env = intercept_env.start()
  end)

  teardown(function()
    if env then env.stop() end
  end)

  -- The access lines of intercepted requests for /peer?node=..., and of
  -- intercepted CONNECTs, since `since` lines.
  local function lines_since(since)
    local all = access(env.ferry)
    local peers, connects = {}, 0
    for i = since + 1, #all do
      local l = all[i]
      if l.intercepted and l.method == "CONNECT" then connects = connects + 1 end
      if l.intercepted and l.path and l.path:match("^/peer%?node=") then peers[#peers + 1] = l end
    end
    return peers, connects, #all
  end

  it("Python requests (REQUESTS_CA_BUNDLE): one tunnel, rotation per request", function()
    local since = #access(env.ferry)
    local out, rc = sh("REQUESTS_CA_BUNDLE=" .. q(env.ca) .. " python3 " .. procs.root ..
      "/spec/helpers/requests_client.py http://127.0.0.1:" .. env.F .. " https://localhost:" ..
      env.O .. " 4")
    assert.are.equal(0, rc, out)
    local r = cjson.decode(out)
    assert.are.same({ 200, 200, 200, 200, 200 }, r.statuses)
    assert.is_true(r.sha_ok)
    assert.are.equal(2, distinct(r.peers)) -- the origin saw both proxies
    local peers, connects = lines_since(since)
    assert.are.equal(1, connects)
    assert.are.equal(4, #peers)
    assert.are.equal(2, distinct({ peers[1].proxy, peers[2].proxy, peers[3].proxy,
                                   peers[4].proxy }))
  end)

  it("Node https over a CONNECT agent (NODE_EXTRA_CA_CERTS): one socket, rotation", function()
    local since = #access(env.ferry)
    local out, rc = sh("NODE_EXTRA_CA_CERTS=" .. q(env.ca) .. " node " .. procs.root ..
      "/spec/helpers/node_https_client.js " .. env.F .. " localhost " .. env.O .. " 4")
    assert.are.equal(0, rc, out)
    local r = cjson.decode(out)
    assert.are.same({ 200, 200, 200, 200, 200 }, r.statuses)
    assert.are.equal(1, r.sockets)
    assert.is_true(r.sha_ok)
    assert.are.equal(2, distinct(r.peers))
    local peers, connects = lines_since(since)
    assert.are.equal(1, connects)
    assert.are.equal(4, #peers)
  end)

  it("a WebSocket client over wss: upgrade seen, frames echoed both ways", function()
    local out, rc = sh("python3 " .. procs.root .. "/spec/helpers/wss_client.py " .. env.F ..
      " localhost " .. env.WS .. " " .. q(env.ca) .. " 20")
    assert.are.equal(0, rc, out)
    local r = cjson.decode(out)
    assert.are.equal(101, r.status)
    assert.are.equal(21, r.echoed) -- 20 text messages and one of 70 000 bytes
    assert.is_true(r.accept_ok)
    local lines = procs.wait_for(function()
      local l = access(env.ferry, function(x) return x.path == "/ws" and x.port == env.WS end)
      return #l > 0 and l
    end, 5)
    assert.is_truthy(lines, "no access line for the upgrade")
    assert.are.equal(101, lines[1].status)
    assert.is_true(lines[1].intercepted)
    assert.are.equal("GET", lines[1].method)
    assert.is_true(lines[1].bytes_in > 70000 and lines[1].bytes_out > 70000)
  end)

  it("Python requests without the CA is refused, and counted", function()
    local before = procs.metric(env.ADM, "ferry_intercept_handshake_failures_total",
      'reason="refused"') or 0
    local out, rc = sh("REQUESTS_CA_BUNDLE=" .. q(env.pki.other_ca) .. " python3 " ..
      procs.root .. "/spec/helpers/requests_client.py http://127.0.0.1:" .. env.F ..
      " https://localhost:" .. env.O .. " 1")
    assert.are.equal(1, rc, out)
    assert.is_truthy(out:find("SSLError", 1, true), out)
    assert.is_truthy(procs.wait_for(function()
      return (procs.metric(env.ADM, "ferry_intercept_handshake_failures_total",
        'reason="refused"') or 0) > before
    end, 5))
  end)
end)
