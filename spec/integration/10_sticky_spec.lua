-- Sticky sessions against the real binary and three real upstream
-- proxies (microsocks, microsocks with credentials, tinyproxy): the
-- session key comes from X-Ferry-Session, from a USER-session-KEY proxy
-- user name, else from the client address; X-Ferry-Proxy names the proxy
-- that carried each request (and each CONNECT) without credentials; a
-- dead proxy's sessions move once and stay; a reload keeps every pin.
local procs = require("procs")
local socket = require("socket")

local function via(port, cred)
  return "http://" .. (cred and (cred .. "@") or "") .. "127.0.0.1:" .. port
end

-- Every X-Ferry-Proxy value in a header dump, in order.
local function labels_in(headers)
  local out = {}
  for line in headers:gmatch("[^\r\n]+") do
    if line:lower():match("^x%-ferry%-proxy:") then
      out[#out + 1] = line:match("^[^:]+:[ \t]*(.-)[ \t]*$")
    end
  end
  return out
end

-- One request through ferry.  opts: session (X-Ferry-Session), cred
-- (user:pass in the proxy URL), from (local address), path, tunnel
-- (CONNECT, with the session as a proxy header), port (listener).
-- Returns status, the one X-Ferry-Proxy value (or nil), body, headers.
local function go(port, origin, opts)
  opts = opts or {}
  local flags = {}
  if opts.session then
    local h = "X-Ferry-Session: " .. opts.session
    flags[#flags + 1] = (opts.tunnel and "--proxy-header " or "-H ") .. procs.quote(h)
  end
  if opts.tunnel then flags[#flags + 1] = "-p" end
  if opts.from then flags[#flags + 1] = "--interface " .. opts.from end
  if opts.flags then flags[#flags + 1] = opts.flags end
  local status, body, headers = procs.curl { proxy = via(port, opts.cred),
    url = "http://127.0.0.1:" .. origin .. (opts.path or "/"), flags = table.concat(flags, " "),
    max_time = 5 }
  local ls = labels_in(headers)
  assert(#ls <= 1, "more than one X-Ferry-Proxy:\n" .. headers)
  return status, ls[1], body, headers
end

local function codes(proc)
  procs.sleep(0.15)
  local t = {}
  for _, l in ipairs(procs.log_lines(proc)) do
    if l.code then t[l.code] = (t[l.code] or 0) + 1 end
  end
  return t
end

-- SIGHUP with the config file rewritten; "ok", "failed" or "timeout".
local function reload(proc, text)
  procs.write_file(proc.config, text)
  local before = codes(proc)
  procs.signal(proc, "HUP")
  for _ = 1, 50 do
    local now = codes(proc)
    if (now["FERRY-0101"] or 0) > (before["FERRY-0101"] or 0) then return "ok" end
    if (now["FERRY-0102"] or 0) > (before["FERRY-0102"] or 0) then return "failed" end
    procs.sleep(0.05)
  end
  return "timeout"
end

local function count_keys(t)
  local n = 0
  for _ in pairs(t) do n = n + 1 end
  return n
end

describe("sticky sessions", function()
  local O, S1, S2, T3 = procs.free_port(), procs.free_port(), procs.free_port(), procs.free_port()
  local F, FA = procs.free_port(), procs.free_port()
  local origin, s1, s2, t3, ferry
  -- s2 has no id: its label is its number, 2 (a fresh core numbers
  -- proxies from 1 in the order the config creates them).
  local LABELS = { s1 = true, ["2"] = true, t3 = true }

  local function config(reversed)
    local list = {
      '{ url = "socks5://127.0.0.1:' .. S1 .. '", id = "s1" }',
      '"socks5://bob:hunter2@127.0.0.1:' .. S2 .. '"',
      '{ url = "http://127.0.0.1:' .. T3 .. '", id = "t3" }',
    }
    if reversed then list = { list[3], list[2], list[1] } end
    return string.format([[
listen { name = "main", addr = "127.0.0.1:%d" }
listen { name = "authed", addr = "127.0.0.1:%d", users = { "alice:wonder" } }
pool "sticky" { strategy = "sticky", retries = 2, breaker = false, session_ttl = 600,
  proxies = { %s } }
route(function() return "sticky" end)
]], F, FA, table.concat(list, ", "))
  end

  setup(function()
    origin = procs.origin(O)
    s1 = procs.microsocks(S1)
    s2 = procs.microsocks(S2, "bob", "hunter2")
    t3 = procs.tinyproxy(T3)
    ferry = procs.ferry(config(), { F, FA })
  end)

  teardown(function()
    if ferry then procs.stop_ferry(ferry) end
    for _, p in ipairs { origin, s1, s2, t3 } do procs.stop(p) end
  end)

  -- The label a session (given as go() options) gets, asserting a 200.
  local function label_of(opts, port)
    local status, label, _, headers = go(port or F, O, opts)
    assert.equal(200, status)
    assert.is_string(label, "no X-Ferry-Proxy in:\n" .. headers)
    return label
  end

  it("holds one proxy per X-Ferry-Session, named by X-Ferry-Proxy, and spreads sessions", function()
    local first, seen = {}, {}
    for i = 1, 6 do
      first[i] = label_of { session = "hold-" .. i }
      assert.is_true(LABELS[first[i]], "unexpected X-Ferry-Proxy: " .. first[i])
      seen[first[i]] = true
    end
    assert.equal(3, count_keys(seen)) -- new sessions go to every proxy
    for _ = 1, 5 do
      for i = 1, 6 do
        assert.equal(first[i], label_of { session = "hold-" .. i })
      end
    end
  end)

  it("never shows credentials in X-Ferry-Proxy", function()
    local seen = {}
    for i = 1, 9 do
      local _, label, _, headers = go(F, O, { session = "cred-" .. i })
      seen[label] = true
      local xfp = headers:match("[Xx]%-[Ff]erry%-[Pp]roxy:[^\r\n]*")
      assert.is_nil(xfp:find("bob", 1, true))
      assert.is_nil(xfp:find("hunter2", 1, true))
      assert.is_nil(xfp:find("socks5", 1, true))
    end
    assert.is_true(seen["2"]) -- the proxy with credentials was among them
  end)

  it("puts X-Ferry-Proxy on the CONNECT answer, and a tunnel session holds too", function()
    local status, label, body, headers = go(F, O, { session = "tun", tunnel = true })
    assert.equal(200, status)
    assert.equal("hello from origin\n", body)
    -- The header sits in the 200 answer to CONNECT, not in the origin's.
    local connect_block = headers:match("^(HTTP/1%.1 200 Connection established\r\n.-\r\n\r\n)")
    assert.is_string(connect_block, headers)
    assert.equal(label, labels_in(connect_block)[1])
    assert.is_true(LABELS[label])
    for _ = 1, 5 do
      assert.equal(label, (select(2, go(F, O, { session = "tun", tunnel = true }))))
    end
    -- One session, one pin: the same key over plain HTTP finds it.
    assert.equal(label, label_of { session = "tun" })
  end)

  it("does not forward X-Ferry-Session upstream, through any kind of proxy", function()
    local covered = {}
    for i = 1, 12 do
      local session = "fw-" .. i
      local status, label, body = go(F, O, { session = session, path = "/headers",
        flags = "-H 'X-Keep: yes' -H 'X-Ferry-Session: second-copy'" })
      assert.equal(200, status)
      assert.matches("X%-Keep: yes", body)
      assert.is_nil(body:lower():find("x-ferry-session", 1, true), body)
      assert.is_nil(body:find(session, 1, true), body)
      covered[label] = true
      if count_keys(covered) == 3 then break end
    end
    assert.equal(3, count_keys(covered))
  end)

  it("takes the first X-Ferry-Session when a request repeats it", function()
    local label = label_of { session = "rep-a" }
    for _ = 1, 4 do
      local status, got = go(F, O, { session = "rep-a", flags = "-H 'X-Ferry-Session: rep-b'" })
      assert.equal(200, status)
      assert.equal(label, got)
    end
  end)

  it("pins by the -session-KEY suffix of the proxy user name (listener without users)", function()
    local first, seen = {}, {}
    for i = 1, 6 do
      first[i] = label_of { cred = "carol-session-u" .. i .. ":any" }
      seen[first[i]] = true
    end
    -- Six keys: if the suffix were ignored, all would share the client's pin.
    assert.equal(3, count_keys(seen))
    for _ = 1, 3 do
      for i = 1, 6 do
        assert.equal(first[i], label_of { cred = "carol-session-u" .. i .. ":any" })
      end
    end
    -- The credentials stop at ferry.
    local status, _, body = go(F, O, { cred = "carol-session-u1:any", path = "/headers" })
    assert.equal(200, status)
    assert.is_nil(body:lower():find("proxy-authorization", 1, true), body)
    -- The suffix and the header name the same session; the header wins.
    assert.equal(first[1], label_of { session = "u1" })
    assert.equal(first[2], label_of { cred = "carol-session-u1:any", session = "u2" })
  end)

  it("pins by the -session-KEY suffix on a listener with users, still checking the password", function()
    local first, seen = {}, {}
    for i = 1, 6 do
      first[i] = label_of({ cred = "alice-session-a" .. i .. ":wonder" }, FA)
      seen[first[i]] = true
    end
    assert.equal(3, count_keys(seen))
    for _ = 1, 3 do
      for i = 1, 6 do
        assert.equal(first[i], label_of({ cred = "alice-session-a" .. i .. ":wonder" }, FA))
      end
    end
    -- Plain alice still gets in.
    assert.equal(200, (go(FA, O, { cred = "alice:wonder" })))
    -- Wrong password, unknown user, empty user or no credentials: 407,
    -- with no proxy named.
    for _, cred in ipairs { "alice-session-a1:wrong", "alice-session-a1:", "mallory-session-a1:wonder",
                            "-session-a1:wonder", "alice-session-:wonder", false } do
      local status, label, _, headers = go(FA, O, { cred = cred or nil })
      assert.equal(407, status, tostring(cred))
      assert.is_nil(label)
      assert.matches("Proxy%-Authenticate", headers)
    end
    -- X-Ferry-Session does not stand in for credentials either.
    assert.equal(407, (go(FA, O, { session = "a1" })))
  end)

  it("keeps long session keys sticky and apart, by header and by user name", function()
    local long = string.rep("k", 300)
    -- Consecutive new sessions land on different proxies; keys that were
    -- dropped or cut to a common prefix would share one pin.
    local a = label_of { session = long .. "-a" }
    local b = label_of { session = long .. "-b" }
    assert.are_not.equal(a, b)
    local ua = label_of({ cred = "alice-session-" .. long:sub(1, 200) .. "a:wonder" }, FA)
    local ub = label_of({ cred = "alice-session-" .. long:sub(1, 200) .. "b:wonder" }, FA)
    assert.are_not.equal(ua, ub)
    for _ = 1, 3 do
      assert.equal(a, label_of { session = long .. "-a" })
      assert.equal(b, label_of { session = long .. "-b" })
      assert.equal(ua, label_of({ cred = "alice-session-" .. long:sub(1, 200) .. "a:wonder" }, FA))
      assert.equal(ub, label_of({ cred = "alice-session-" .. long:sub(1, 200) .. "b:wonder" }, FA))
    end
    assert.equal(407, (go(FA, O, { cred = "alice-session-" .. long:sub(1, 200) .. "a:nope" })))
  end)

  it("uses the client address as the key when there is neither", function()
    local mine = label_of {}
    for _ = 1, 8 do assert.equal(mine, label_of {}) end
    local seen, by_addr = { [mine] = true }, {}
    for i = 2, 6 do
      local addr = "127.0.0." .. i
      by_addr[addr] = label_of { from = addr }
      seen[by_addr[addr]] = true
    end
    assert.equal(3, count_keys(seen))
    for _ = 1, 3 do
      for addr, label in pairs(by_addr) do
        assert.equal(label, label_of { from = addr })
      end
      assert.equal(mine, label_of {})
    end
  end)

  it("takes each request's session anew on a keep-alive connection", function()
    local mine = label_of {}
    -- Two sessions on two proxies that are not the client address's.
    local ka1, l1, ka2, l2
    for i = 1, 30 do
      local s = "ka-" .. i
      local l = label_of { session = s }
      if l ~= mine and not ka1 then
        ka1, l1 = s, l
      elseif l ~= mine and l ~= l1 and not ka2 then
        ka2, l2 = s, l
      end
      if ka2 then break end
    end
    assert.is_string(ka2, "no sessions found on the other two proxies")
    local c = assert(socket.connect("127.0.0.1", F))
    c:settimeout(5)
    local function ask(session)
      c:send("GET http://127.0.0.1:" .. O .. "/ HTTP/1.1\r\nHost: 127.0.0.1:" .. O .. "\r\n" ..
        (session and ("X-Ferry-Session: " .. session .. "\r\n") or "") .. "\r\n")
      local head = ""
      while true do
        local line = assert(c:receive("*l"))
        if line == "" then break end
        head = head .. line .. "\r\n"
      end
      local n = tonumber(head:match("[Cc]ontent%-[Ll]ength:%s*(%d+)"))
      assert(c:receive(n))
      return head:match("^HTTP/1%.1 (%d+)"), labels_in(head)[1]
    end
    for _ = 1, 2 do
      assert.same({ "200", l1 }, { ask(ka1) })
      assert.same({ "200", l2 }, { ask(ka2) })
      assert.same({ "200", mine }, { ask(nil) })
    end
    c:close()
  end)

  it("keeps every pin across a reload", function()
    local want = {}
    for i = 1, 6 do want[i] = label_of { session = "rl-" .. i } end
    local by_user = label_of { cred = "erin-session-rl:any" }
    local by_addr = label_of { from = "127.0.0.9" }
    assert.equal("ok", reload(ferry, config(true)))
    -- Grouped by proxy: fresh pins would give consecutive new sessions
    -- different proxies, so lost pins cannot pass this.
    local order = { 1, 2, 3, 4, 5, 6 }
    table.sort(order, function(a, b)
      if want[a] ~= want[b] then return want[a] < want[b] end
      return a < b
    end)
    for _, i in ipairs(order) do
      assert.equal(want[i], label_of { session = "rl-" .. i })
    end
    assert.equal(by_user, label_of { cred = "erin-session-rl:any" })
    assert.equal(by_addr, label_of { from = "127.0.0.9" })
    assert.equal("ok", reload(ferry, config()))
    for _, i in ipairs(order) do
      assert.equal(want[i], label_of { session = "rl-" .. i })
    end
  end)
end)

-- An origin that claims a proxy of its own in X-Ferry-Proxy.
local SPOOF = [=[
local socket = require("socket")
local server = assert(socket.bind("127.0.0.1", tonumber(arg[1])))
while true do
  local c = server:accept()
  if c then
    c:settimeout(2)
    repeat local line = c:receive("*l") until not line or line == ""
    c:send("HTTP/1.1 200 OK\r\nX-Ferry-Proxy: spoofed\r\nx-ferry-proxy: spoofed-too\r\n" ..
      "Content-Length: 3\r\nConnection: close\r\n\r\nok\n")
    c:close()
  end
end
]=]

describe("sticky sessions: X-Ferry-Proxy hygiene, expiry and dead proxies", function()
  local O, SP = procs.free_port(), procs.free_port()
  local M1, M2, M3 = procs.free_port(), procs.free_port(), procs.free_port()
  local F, FS = procs.free_port(), procs.free_port()
  local origin, spoof, ferry
  local socks = {}

  setup(function()
    origin = procs.origin(O)
    spoof = procs.spawn("spoof-origin", "luajit " ..
      procs.write_file(procs.tmp .. "/spoof-origin-" .. SP .. ".lua", SPOOF) .. " " .. SP)
    assert(procs.wait_port(SP), "spoof origin did not start")
    socks.m1 = procs.microsocks(M1)
    socks.m2 = procs.microsocks(M2)
    socks.m3 = procs.microsocks(M3)
    ferry = procs.ferry(string.format([[
listen { name = "main", addr = "127.0.0.1:%d" }
listen { name = "short", addr = "127.0.0.1:%d" }
pool "p" { strategy = "sticky", retries = 2, breaker = false, proxies = {
  { url = "socks5://127.0.0.1:%d", id = "m1" }, { url = "socks5://127.0.0.1:%d", id = "m2" },
  { url = "socks5://127.0.0.1:%d", id = "m3" } } }
pool "short" { strategy = "sticky", retries = 2, breaker = false, session_ttl = 2, proxies = {
  { url = "socks5://127.0.0.1:%d", id = "m1" }, { url = "socks5://127.0.0.1:%d", id = "m2" },
  { url = "socks5://127.0.0.1:%d", id = "m3" } } }
route(function(req)
  if req.listener == "main" then return "p" end
  return req.listener
end)
]], F, FS, M1, M2, M3, M1, M2, M3), { F, FS })
  end)

  teardown(function()
    if ferry then procs.stop_ferry(ferry) end
    procs.stop(origin)
    procs.stop(spoof)
    for _, p in pairs(socks) do procs.stop(p) end
  end)

  local function label_of(opts, port)
    local status, label, _, headers = go(port or F, O, opts)
    assert.equal(200, status)
    assert.is_string(label, "no X-Ferry-Proxy in:\n" .. headers)
    return label
  end

  it("names the proxy once, whatever X-Ferry-Proxy the origin sends", function()
    for i = 1, 3 do
      local status, body, headers = procs.curl { proxy = via(F),
        url = "http://127.0.0.1:" .. SP .. "/", flags = "-H 'X-Ferry-Session: spoof-" .. i .. "'" }
      assert.equal(200, status)
      assert.equal("ok\n", body)
      local ls = labels_in(headers)
      assert.equal(1, #ls, headers)
      assert.matches("^m[123]$", ls[1])
    end
  end)

  it("expires a session after session_ttl without use; use keeps it", function()
    -- session_ttl = 2: used every 0.5 s for 3 s, longer than the ttl, it
    -- stays; then 3 s without use and it is gone.
    local first = label_of({ session = "ttl" }, FS)
    for _ = 1, 6 do
      procs.sleep(0.5)
      assert.equal(first, label_of({ session = "ttl" }, FS))
    end
    procs.sleep(3)
    -- Expired: a new pin, on the next proxy in rotation.
    local again = label_of({ session = "ttl" }, FS)
    assert.are_not.equal(first, again)
    assert.equal(again, label_of({ session = "ttl" }, FS))
  end)

  it("moves a dead proxy's sessions once, and they stay on their new proxy", function()
    local victim = label_of { session = "die" }
    local others = {}
    for i = 1, 9 do
      local s = "live-" .. i
      local l = label_of { session = s }
      if l ~= victim then others[s] = l end
    end
    assert.is_true(count_keys(others) >= 2)
    -- Sessions from proxy user names: one pinned to a proxy that stays
    -- up, one to the victim (new pins rotate, so both come soon).
    local user, by_user, doomed_user
    for i = 1, 9 do
      local cred = "dave-session-die" .. i .. ":x"
      local l = label_of { cred = cred }
      if l ~= victim then user, by_user = user or cred, by_user or l else doomed_user = cred end
      if user and doomed_user then break end
    end
    assert.is_string(user, "every user session landed on " .. victim)
    assert.is_string(doomed_user, "no user session landed on " .. victim)
    procs.stop(socks[victim])
    socks[victim] = nil
    local moved = label_of { session = "die" }
    assert.are_not.equal(victim, moved)
    for _ = 1, 8 do assert.equal(moved, label_of { session = "die" }) end
    -- Sessions on the proxies still alive did not move.
    for s, l in pairs(others) do assert.equal(l, label_of { session = s }) end
    -- Every session works, wherever it was: moved once, or not at all.
    for _ = 1, 3 do assert.equal(by_user, label_of { cred = user }) end
    local after = label_of { cred = doomed_user }
    assert.are_not.equal(victim, after)
    for _ = 1, 3 do assert.equal(after, label_of { cred = doomed_user }) end
  end)
end)
