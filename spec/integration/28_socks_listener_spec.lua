-- SOCKS listeners against real clients: curl (--socks5, --socks5-hostname,
-- --socks4, --socks4a, with and without credentials) and a Python client
-- (python3-socks), through every kind of pool: direct, microsocks,
-- tinyproxy, and a second ferry node (its HTTP and its SOCKS5 listener).
-- Bodies are checked byte for byte (sha256 named by the origin); sticky
-- sessions from a USER-session-KEY user name are checked in the access
-- log, which names the proxy of every tunnel.
local procs = require("procs")

local PY = procs.root .. "/spec/helpers/socks_client.py"
-- The system's python3 has the Debian python3-socks module; a python3
-- earlier in PATH (pyenv) may not.
local PYTHON = io.open("/usr/bin/python3", "r") and "/usr/bin/python3" or "python3"

-- curl through a SOCKS proxy URL; returns status, body, curl's error text.
local function curl(proxy, url, flags)
  local status, body, _, err = procs.curl { proxy = proxy, url = url, flags = flags,
    max_time = 20 }
  return status, body, err
end

-- A download to a file: status, size, sha256 of the body, X-Body-Sha256.
local function fetch(proxy, url)
  local out = string.format("%s/socks-body-%d", procs.tmp, math.random(1, 1e9))
  local hdr = out .. ".h"
  local p = io.popen("curl -s --max-time 60 -o " .. procs.quote(out) .. " -D " ..
    procs.quote(hdr) .. " -w '%{http_code}' -x " .. procs.quote(proxy) .. " " .. procs.quote(url))
  local status = tonumber(p:read("*a")) or 0
  p:close()
  local size, sha = procs.file_size(out), procs.sha256_file(out)
  local want = procs.last_header(procs.read_file(hdr), "X-Body-Sha256")
  os.remove(out) os.remove(hdr)
  return status, size, sha, want
end

-- The Python client: status, length, sha256 of the body, X-Body-Sha256
-- (or "ERROR ..." as the first value).
local function python(kind, port, host, tport, path, user, pass)
  local cmd = table.concat({ PYTHON, PY, kind, port, host, tport, procs.quote(path),
    user and procs.quote(user) or "", pass and procs.quote(pass) or "" }, " ")
  local p = io.popen(cmd .. " 2>&1")
  local all = p:read("*a") or ""
  p:close()
  local line = all:match("^[^\n]*")
  if line:match("^ERROR") then return line end
  local status, len, sha, want = line:match("^(%d+) (%d+) (%x+) (%S+)$")
  assert(status, "python client (" .. cmd .. ") said: " .. all)
  return tonumber(status), tonumber(len), sha, want
end

-- Access lines of finished tunnels on one listener.
local function tunnels(ferry, listener)
  local out = {}
  for _, l in ipairs(procs.log_lines(ferry)) do
    if l.msg == "access" and l.listener == listener and l.method == "CONNECT" then
      out[#out + 1] = l
    end
  end
  return out
end

describe("SOCKS listeners", function()
  local O, R, MS, TP = procs.free_port(), procs.free_port(), procs.free_port(), procs.free_port()
  local NH, NS = procs.free_port(), procs.free_port()
  local K1, K2, K3 = procs.free_port(), procs.free_port(), procs.free_port()
  local P = {}
  for _, name in ipairs { "s5", "s5u", "s4", "mx", "mxu", "ms", "tp", "nh", "ns", "st" } do
    P[name] = procs.free_port()
  end
  local origin, relay, micro, tiny, node, k1, k2, k3, ferry
  local base

  setup(function()
    origin = procs.origin(O)
    relay = procs.relay_origin(R)
    micro = procs.microsocks(MS)
    tiny = procs.tinyproxy(TP)
    k1, k2, k3 = procs.microsocks(K1), procs.microsocks(K2), procs.microsocks(K3)
    -- The second ferry node: an HTTP and a SOCKS5 listener, both direct.
    node = procs.ferry(string.format([[
listen { name = "http", addr = "127.0.0.1:%d" }
listen { name = "socks", addr = "127.0.0.1:%d", protocol = "socks5" }
route(function() return "direct" end)
]], NH, NS), { NH, NS }, "ferry-node")
    ferry = procs.ferry(string.format([[
listen { name = "s5", addr = "127.0.0.1:%d", protocol = "socks5" }
listen { name = "s5u", addr = "127.0.0.1:%d", protocol = "socks5", users = { "alice:wonder" } }
listen { name = "s4", addr = "127.0.0.1:%d", protocol = "socks4" }
listen { name = "mx", addr = "127.0.0.1:%d", protocol = "mixed" }
listen { name = "mxu", addr = "127.0.0.1:%d", protocol = "mixed", users = { "alice:wonder" } }
listen { name = "ms", addr = "127.0.0.1:%d", protocol = "socks5" }
listen { name = "tp", addr = "127.0.0.1:%d", protocol = "socks5" }
listen { name = "nh", addr = "127.0.0.1:%d", protocol = "socks5" }
listen { name = "ns", addr = "127.0.0.1:%d", protocol = "socks5" }
listen { name = "st", addr = "127.0.0.1:%d", protocol = "socks5", users = { "alice:wonder" } }
pool "ms" { retries = 0, proxies = { "socks5://127.0.0.1:%d" } }
pool "tp" { retries = 0, proxies = { "http://127.0.0.1:%d" } }
pool "nh" { retries = 0, proxies = { "http://127.0.0.1:%d" } }
pool "ns" { retries = 0, proxies = { "socks5://127.0.0.1:%d" } }
pool "st" { strategy = "sticky", retries = 0, breaker = false, session_ttl = 600, proxies = {
  { url = "socks5://127.0.0.1:%d", id = "k1" }, { url = "socks5://127.0.0.1:%d", id = "k2" },
  { url = "socks5://127.0.0.1:%d", id = "k3" } } }
local pooled = { ms = true, tp = true, nh = true, ns = true, st = true }
route(function(req) return pooled[req.listener] and req.listener or "direct" end)
]], P.s5, P.s5u, P.s4, P.mx, P.mxu, P.ms, P.tp, P.nh, P.ns, P.st, MS, TP, NH, NS, K1, K2, K3),
      { P.s5, P.s5u, P.s4, P.mx, P.mxu, P.ms, P.tp, P.nh, P.ns, P.st })
    base = "http://127.0.0.1:" .. O
  end)

  teardown(function()
    if ferry then procs.stop_ferry(ferry) end
    if node then procs.stop_ferry(node) end
    for _, p in ipairs { origin, relay, micro, tiny, k1, k2, k3 } do procs.stop(p) end
  end)

  local function at(scheme, name, cred)
    return scheme .. "://" .. (cred and (cred .. "@") or "") .. "127.0.0.1:" .. P[name]
  end

  it("serves curl --socks5 (address) and --socks5-hostname (name) without users", function()
    local status, body = curl(at("socks5", "s5"), base .. "/")
    assert.equal(200, status)
    assert.equal("hello from origin\n", body)
    status, body = curl(at("socks5h", "s5"), "http://localhost:" .. O .. "/bytes/70000")
    assert.equal(200, status)
    assert.equal(70000, #body)
    local t = tunnels(ferry, "s5")
    assert.is_true(#t >= 1)
    assert.equal(200, t[1].status)
    assert.equal("FERRY-0200", t[1].code)
  end)

  it("serves curl --socks4 and --socks4a", function()
    local status, body = curl(at("socks4", "s4"), base .. "/")
    assert.equal(200, status)
    assert.equal("hello from origin\n", body)
    status, body = curl(at("socks4a", "s4"), base .. "/bytes/5000")
    assert.equal(200, status)
    assert.equal(5000, #body)
  end)

  it("checks SOCKS5 username and password against the listener's users", function()
    local status, body = curl(at("socks5", "s5u", "alice:wonder"), base .. "/")
    assert.equal(200, status)
    assert.equal("hello from origin\n", body)
    status = curl(at("socks5h", "s5u", "alice:wonder"), base .. "/")
    assert.equal(200, status)
    -- -U gives the same credentials another way.
    status = curl(at("socks5", "s5u"), base .. "/", "-U alice:wonder")
    assert.equal(200, status)
    local _, err
    status, _, err = curl(at("socks5", "s5u", "alice:wrong"), base .. "/")
    assert.equal(0, status)
    assert.matches("rejected", err)
    status, _, err = curl(at("socks5", "s5u"), base .. "/")
    assert.equal(0, status)
    assert.matches("[Nn]o authentication method", err)
    local log = procs.read_file(ferry.log)
    assert.matches("FERRY%-1007", log)
    assert.matches("FERRY%-1051", log)
    assert.is_nil(log:find("alice:wrong", 1, true))
    assert.is_nil(log:find("wonder", 1, true))
  end)

  it("serves HTTP, SOCKS5 and SOCKS4 on one mixed port", function()
    for _, scheme in ipairs { "http", "socks5", "socks5h", "socks4", "socks4a" } do
      local status, body = curl(at(scheme, "mx"), base .. "/bytes/3000")
      assert.equal(200, status, scheme)
      assert.equal(3000, #body, scheme)
    end
    -- A CONNECT through the HTTP side too.
    local status, body = curl(at("http", "mx"), base .. "/", "-p")
    assert.equal(200, status)
    assert.equal("hello from origin\n", body)
  end)

  it("takes users on a mixed port for HTTP and SOCKS5, and refuses SOCKS4 there", function()
    assert.equal(200, (curl(at("http", "mxu", "alice:wonder"), base .. "/")))
    assert.equal(407, (curl(at("http", "mxu"), base .. "/")))
    assert.equal(200, (curl(at("socks5", "mxu", "alice:wonder"), base .. "/")))
    local status, _, err = curl(at("socks4", "mxu"), base .. "/")
    assert.equal(0, status)
    assert.matches("91", err)
    assert.is_truthy(procs.wait_for(function()
      return procs.read_file(ferry.log):find("FERRY-1055", 1, true)
    end))
  end)

  it("carries 1 MB and 8 MB bodies byte for byte through every kind of pool", function()
    for _, name in ipairs { "s5", "ms", "tp", "nh", "ns" } do
      for _, n in ipairs { 1048576, 8388608 } do
        local status, size, sha, want = fetch(at("socks5h", name),
          "http://127.0.0.1:" .. R .. "/gen?n=" .. n .. "&framing=close")
        assert.equal(200, status, name)
        assert.equal(n, size, name)
        assert.is_string(want, name)
        assert.equal(want, sha, name)
      end
    end
    -- Each pooled listener went through its proxy, not around it.
    for _, name in ipairs { "ms", "tp", "nh", "ns" } do
      local t = tunnels(ferry, name)
      assert.is_true(#t >= 2, name)
      assert.is_string(t[#t].proxy, name)
    end
  end)

  it("serves a Python client (python3-socks) through every kind of pool", function()
    for _, name in ipairs { "s5", "ms", "tp", "nh", "ns" } do
      for _, kind in ipairs { "socks5", "socks5h" } do
        local status, len, sha, want = python(kind, P[name], "127.0.0.1", R,
          "/gen?n=1048576&framing=close")
        assert.equal(200, status, name .. " " .. kind)
        assert.equal(1048576, len)
        assert.equal(want, sha)
      end
    end
    local status, len = python("socks4a", P.s4, "localhost", O, "/bytes/1234")
    assert.equal(200, status)
    assert.is_true(len == 1234)
    status, len = python("socks5", P.s5u, "127.0.0.1", O, "/bytes/4321", "alice", "wonder")
    assert.equal(200, status)
    assert.equal(4321, len)
    local refused = python("socks5", P.s5u, "127.0.0.1", O, "/", "alice", "nope")
    assert.matches("^ERROR", refused)
  end)

  it("keeps one exit per USER-session-KEY and spreads sessions over the pool", function()
    local first, seen = {}, {}
    local function exit_of(key)
      local before = #tunnels(ferry, "st")
      local status = curl(at("socks5h", "st", "alice-session-" .. key .. ":wonder"), base .. "/")
      assert.equal(200, status)
      local t = procs.wait_for(function()
        local now = tunnels(ferry, "st")
        return #now > before and now
      end)
      assert.is_table(t, "no access line for the tunnel")
      return t[#t].proxy
    end
    for i = 1, 6 do
      first[i] = exit_of("k" .. i)
      assert.is_string(first[i])
      seen[first[i]] = true
    end
    local n = 0
    for _ in pairs(seen) do n = n + 1 end
    assert.is_true(n >= 2, "six sessions all on one proxy")
    for _ = 1, 2 do
      for i = 1, 6 do
        assert.equal(first[i], exit_of("k" .. i))
      end
    end
  end)
end)
