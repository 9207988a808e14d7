-- Health and access hardening (issue 8, part 8):
--  * a proxy that real traffic took down for timeouts is not brought back
--    by a bare tcp probe: a SIGSTOPped proxy still accepts TCP (the
--    kernel completes the handshake), so its tcp probes must get an
--    answer in its protocol (HTTP, SOCKS5) before it is up again;
--  * failed inbound Basic auth is throttled per client address, counted,
--    and logged once per window instead of once per guess.
-- Every process is started here and stopped by PID; a stopped proxy is
-- always continued (procs.stop sends CONT first).
local procs = require("procs")
local socket = require("socket")
local escape_pattern = require("prom").escape_pattern

-- GET /metrics of the admin listener on `port`.
local function scrape(port)
  local status, body = procs.curl { url = "http://127.0.0.1:" .. port .. "/metrics", max_time = 5 }
  assert.equal(200, status)
  return body
end

local function sample(text, name, labels)
  local key = name .. (labels and ("{" .. labels .. "}") or "")
  local v = ("\n" .. text):match("\n" .. escape_pattern(key) .. " (%S+)\n")
  return v and tonumber(v)
end

local function probes(text, label, pool, result)
  return sample(text, "ferry_proxy_probes_total",
    string.format('proxy="%s",pool="%s",result="%s"', label, pool, result)) or 0
end

local function proxy_up(text, label, pool)
  return sample(text, "ferry_proxy_up", string.format('proxy="%s",pool="%s"', label, pool))
end

-- Log lines of `code` (about proxy `label` when given).
local function events(proc, code, label)
  local out = {}
  for _, l in ipairs(procs.log_lines(proc)) do
    if l.code == code and (label == nil or (type(l.msg) == "string" and
        l.msg:find("proxy " .. label .. " ", 1, true))) then
      out[#out + 1] = l
    end
  end
  return out
end

local function wait_event(proc, code, label, timeout)
  return procs.wait_for(function() return events(proc, code, label)[1] end, timeout)
end

describe("health hardening", function()
  describe("a SIGSTOPped proxy and tcp probes", function()
    local O, T, S, S4 = procs.free_port(), procs.free_port(), procs.free_port(), procs.free_port()
    local FH, FS, F4, A = procs.free_port(), procs.free_port(), procs.free_port(), procs.free_port()
    local origin, tiny, socks, socks4, ferry

    setup(function()
      origin = procs.origin(O)
      tiny = procs.tinyproxy(T)
      socks = procs.microsocks(S)
      socks4 = procs.spawn("socks4", "python3 " ..
        procs.quote(procs.root .. "/spec/helpers/socks4_server.py") .. " " .. S4 .. " relay")
      assert(procs.wait_port(S4, 15), "the SOCKS4 server did not start")
      -- fall = 1: one timed-out request takes the proxy down; rise = 1:
      -- one passing probe brings it back, so a bare tcp pass would show.
      ferry = procs.ferry(string.format([[
listen { name = "h", addr = "127.0.0.1:%d" }
listen { name = "s", addr = "127.0.0.1:%d" }
listen { name = "s4", addr = "127.0.0.1:%d" }
admin { addr = "127.0.0.1:%d" }
timeouts { connect = 0.5, first_byte = 0.5 }
pool "h" { retries = 0, proxies = { { url = "http://127.0.0.1:%d", id = "tiny" } },
  health = { check = "tcp", interval = 0.3, timeout = 0.25, rise = 1, fall = 1 } }
pool "s" { retries = 0, proxies = { { url = "socks5://127.0.0.1:%d", id = "socks" } },
  health = { check = "tcp", interval = 0.3, timeout = 0.25, rise = 1, fall = 1 } }
pool "s4" { retries = 0, proxies = { { url = "socks4://127.0.0.1:%d", id = "socks4" } },
  health = { check = "tcp", interval = 0.3, timeout = 0.25, rise = 1, fall = 1 } }
route(function(req) return req.listener end)
]], FH, FS, F4, A, T, S, S4), { FH, FS, F4, A })
    end)

    teardown(function()
      for _, p in ipairs { origin, tiny, socks, socks4 } do if p then procs.stop(p) end end
      if ferry then procs.stop_ferry(ferry) end
    end)

    -- The proxy `label` (pool `pool`, listener port `F`, process `proc`):
    -- up and serving; stopped, a request times out and takes it down;
    -- it stays down while at least three more probes run; continued, a
    -- probe that got a protocol answer (`answered`) brings it back.
    local function stays_down_while_stopped(label, pool, F, proc, answered)
      local url = "http://127.0.0.1:" .. O .. "/"
      assert.truthy(procs.wait_for(function()
        local t = scrape(A)
        return probes(t, label, pool, "ok") >= 1 and proxy_up(t, label, pool) == 1
      end, 5), "no passing probe of " .. label)
      local status = procs.curl { url = url, proxy = "http://127.0.0.1:" .. F }
      assert.equal(200, status)

      procs.signal(proc, "STOP")
      status = procs.curl { url = url, proxy = "http://127.0.0.1:" .. F }
      assert.equal(504, status)
      local down = wait_event(ferry, "FERRY-6001", label, 5)
      assert.is_table(down, procs.read_file(ferry.log))
      assert.matches("timeout", down.msg)
      assert.matches("tcp probes now need an answer in its protocol", down.msg)

      -- Several probe intervals while stopped: every probe fails (the
      -- connect alone would pass), and the proxy never comes back.
      local t0 = scrape(A)
      local f0 = probes(t0, label, pool, "failed")
      local timeouts0 = sample(t0, "ferry_probes_total", 'result="timeout"') or 0
      local t
      local deadline = socket.gettime() + 20
      repeat
        t = scrape(A)
        assert.equal(0, proxy_up(t, label, pool), "up while stopped:\n" ..
          procs.read_file(ferry.log))
        socket.sleep(0.05)
      until probes(t, label, pool, "failed") >= f0 + 3 or socket.gettime() > deadline
      assert.is_true(probes(t, label, pool, "failed") >= f0 + 3,
        (probes(t, label, pool, "failed") - f0) .. " probes failed while stopped")
      -- They failed waiting for the answer: a connect would have passed.
      assert.is_true(sample(t, "ferry_probes_total", 'result="timeout"') >= timeouts0 + 3,
        "probes did not time out")
      assert.is_nil(events(ferry, "FERRY-6002", label)[1], procs.read_file(ferry.log))

      procs.signal(proc, "CONT")
      local up = wait_event(ferry, "FERRY-6002", label, 15)
      assert.is_table(up, procs.read_file(ferry.log))
      assert.matches(answered, up.msg)
      assert.equal(1, proxy_up(scrape(A), label, pool))
      status = procs.curl { url = url, proxy = "http://127.0.0.1:" .. F }
      assert.equal(200, status)
    end

    it("an HTTP proxy comes back only once it answers an HTTP request", function()
      stays_down_while_stopped("tiny", "h", FH, tiny, "answered an HTTP request")
    end)

    it("a SOCKS5 proxy comes back only once it answers the greeting", function()
      stays_down_while_stopped("socks", "s", FS, socks, "answered a SOCKS5 greeting")
    end)

    it("a SOCKS4 proxy comes back only once it answers a SOCKS4 request", function()
      stays_down_while_stopped("socks4", "s4", F4, socks4, "answered a SOCKS4 request")
    end)

    it("a proxy that was only refused comes back on a plain connect", function()
      -- Refused is not a stopped process: the plain tcp check stays as it was.
      procs.stop(socks)
      local status = procs.curl { url = "http://127.0.0.1:" .. O .. "/",
        proxy = "http://127.0.0.1:" .. FS }
      assert.equal(502, status)
      assert.truthy(procs.wait_for(function() return #events(ferry, "FERRY-6001", "socks") >= 2 end, 5))
      local down = events(ferry, "FERRY-6001", "socks")[2]
      assert.not_matches("need an answer", down.msg)
      socks = procs.microsocks(S)
      assert.truthy(procs.wait_for(function() return #events(ferry, "FERRY-6002", "socks") >= 2 end, 15))
      assert.matches("up: probe passed %(down", events(ferry, "FERRY-6002", "socks")[2].msg)
    end)
  end)

  describe("failed inbound auth", function()
    local mime = require("mime")
    local O, F, A = procs.free_port(), procs.free_port(), procs.free_port()
    local WINDOW, LIMIT, GUESSES = 3, 5, 2000
    local origin, ferry
    local target = "http://127.0.0.1:" .. O .. "/"

    setup(function()
      origin = procs.origin(O)
      -- Access lines off: every line left in the log is an event line.
      ferry = procs.ferry(string.format([[
listen { name = "p", addr = "127.0.0.1:%d", users = { "alice:right-pw" },
         auth_fail_limit = %d, auth_fail_window = %d }
admin { addr = "127.0.0.1:%d" }
log { access = false }
route(function() return "direct" end)
]], F, LIMIT, WINDOW, A), { F, A })
    end)

    teardown(function()
      procs.stop(origin)
      if ferry then procs.stop_ferry(ferry) end
    end)

    -- One request from the address `from` with user:pass; its status.
    local function try(from, user, pass)
      local s = socket.tcp()
      s:settimeout(5)
      assert(s:bind(from, 0))
      assert(s:connect("127.0.0.1", F))
      s:send("GET " .. target .. " HTTP/1.1\r\nHost: 127.0.0.1:" .. O ..
        "\r\nProxy-Authorization: Basic " .. mime.b64(user .. ":" .. pass) .. "\r\n\r\n")
      local line = s:receive("*l")
      s:close()
      return tonumber(line and line:match("^HTTP/1%.1 (%d+) "))
    end

    local function event_lines()
      local n, by = 0, {}
      for _, l in ipairs(procs.log_lines(ferry)) do
        if l.code and l.code:match("^FERRY%-10") then
          n = n + 1
          by[l.code] = (by[l.code] or 0) + 1
        end
      end
      return n, by
    end

    it("blocks a guessing address with 429, counts every guess, logs a few lines", function()
      local lines0 = #procs.log_lines(ferry)
      local t0 = socket.gettime()
      local got = {}
      for i = 1, GUESSES do
        local st = try("127.0.0.1", "alice", "guess-" .. i)
        got[st or 0] = (got[st or 0] or 0) + 1
      end
      local elapsed = socket.gettime() - t0
      -- Every guess was answered: 407 until the limit, 429 while blocked.
      assert.equal(GUESSES, (got[407] or 0) + (got[429] or 0))
      assert.is_true((got[407] or 0) >= LIMIT)
      assert.is_true((got[429] or 0) > GUESSES / 2, tostring(got[429]))
      -- Another address is not held up, not even for a moment.
      local status, body = procs.curl { url = target, proxy = "http://alice:right-pw@127.0.0.1:" .. F,
        flags = "--interface 127.0.0.2" }
      assert.equal(200, status)
      assert.is_true(#body > 0)

      -- The metrics count every guess.
      local t = scrape(A)
      assert.equal(got[407], sample(t, "ferry_auth_failures_total"))
      assert.equal(got[429], sample(t, "ferry_auth_throttled_total"))
      assert.is_true(sample(t, "ferry_auth_blocks_total") >= 1)
      -- ... and so does ferry_requests_total, under the code of the 429.
      local coded = 0
      for labels, v in t:gmatch("\nferry_requests_total{([^}]*)} (%d+)") do
        if labels:find('listener="p"', 1, true) and labels:find('code="FERRY-1040"', 1, true) then
          coded = coded + tonumber(v)
        end
      end
      assert.equal(got[429], coded)

      -- Per address and window: the first failure, the block, and (later)
      -- its summary; not a line per guess.
      local windows = 1 + math.ceil(elapsed / WINDOW)
      local n, by = event_lines()
      assert.is_true(n <= 3 * windows, n .. " lines for " .. windows .. " window(s)")
      assert.is_true(#procs.log_lines(ferry) - lines0 <= 3 * windows + 2)
      assert.is_true((by["FERRY-1040"] or 0) >= 1)
      assert.is_true((by["FERRY-1007"] or 0) >= 1)
      -- When the block ends: a summary with the count of refused requests.
      local summary = procs.wait_for(function()
        for _, l in ipairs(procs.log_lines(ferry)) do
          if l.code == "FERRY-1041" then return l end
        end
      end, WINDOW * 3)
      assert.is_table(summary, procs.read_file(ferry.log))
      assert.matches("client 127%.0%.0%.1 is no longer throttled: %d+ failed proxy " ..
        "authentications, then %d+ requests refused with 429", summary.msg)
      -- The guessing address works again after the window.
      assert.truthy(procs.wait_for(function()
        return try("127.0.0.1", "alice", "right-pw") == 200
      end, WINDOW * 3, 0.2))
    end)

    it("refuses even the right credentials from a blocked address until the window ends", function()
      for i = 1, LIMIT - 1 do assert.equal(407, try("127.0.0.3", "alice", "nope" .. i)) end
      assert.equal(200, try("127.0.0.3", "alice", "right-pw")) -- under the limit: fine
      assert.equal(407, try("127.0.0.3", "alice", "nope-last")) -- the limit: blocked now
      assert.equal(429, try("127.0.0.3", "alice", "right-pw"))
      -- The answer says when to come back: within one window.
      local status, _, headers = procs.curl { url = target,
        proxy = "http://alice:right-pw@127.0.0.1:" .. F, flags = "--interface 127.0.0.3" }
      assert.equal(429, status)
      assert.matches("X%-Ferry%-Error: FERRY%-1040\r\n", headers)
      local retry_after = tonumber(headers:match("Retry%-After: (%d+)\r\n"))
      assert.is_true(retry_after ~= nil and retry_after >= 1 and retry_after <= WINDOW, headers)
      assert.equal(200, try("127.0.0.4", "alice", "right-pw"))
      assert.truthy(procs.wait_for(function()
        return try("127.0.0.3", "alice", "right-pw") == 200
      end, WINDOW * 3, 0.2))
      -- No credentials at all is not a guess: never blocks, and logs one
      -- line per address and window, not one per request.
      local _, before = event_lines()
      for _ = 1, LIMIT * 2 do
        local s = socket.tcp()
        s:settimeout(5)
        assert(s:bind("127.0.0.5", 0))
        assert(s:connect("127.0.0.1", F))
        s:send("GET " .. target .. " HTTP/1.1\r\nHost: x\r\n\r\n")
        assert.matches("^HTTP/1%.1 407 ", s:receive("*l"))
        s:close()
      end
      assert.equal(200, try("127.0.0.5", "alice", "right-pw"))
      local _, after = event_lines()
      assert.equal((before["FERRY-1007"] or 0) + 1, after["FERRY-1007"])
    end)
  end)
end)
