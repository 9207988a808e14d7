-- GET /metrics of the running binary: requests counted by listener,
-- pool, code and status class as they end (plain, failed, tunnelled,
-- malformed), retries, durations, reloads by result, per-proxy families
-- without credentials, and a text `promtool check metrics` accepts.
local procs = require("procs")
local socket = require("socket")

local TOKEN = "metrics-token-0123456789"

local prom = require("prom")
local escape_pattern = prom.escape_pattern

local function value(t, name, labels)
  local v = t:match("\n" .. escape_pattern(name .. (labels and "{" .. labels .. "}" or "")) ..
    " (%S+)\n")
  return v and tonumber(v)
end

local function req(listener, pool, code, class)
  return string.format('listener="%s",pool="%s",exchange="",code="%s",status_class="%s"',
    listener, pool, code, class)
end

describe("/metrics", function()
  local origin, socks, ferry
  local O, S, DEAD = procs.free_port(), procs.free_port(), procs.free_port()
  local P, PD, PX, A = procs.free_port(), procs.free_port(), procs.free_port(), procs.free_port()
  local config

  local function scrape()
    local status, body, headers = procs.curl { url = "http://127.0.0.1:" .. A .. "/metrics",
      flags = "-H " .. procs.quote("Authorization: Bearer " .. TOKEN) }
    assert.equal(200, status)
    return body, headers
  end

  -- Scrape until pred(text) holds (a tunnel is counted when it ends).
  local function scrape_until(pred)
    local t
    for _ = 1, 40 do
      t = scrape()
      if pred(t) then return t end
      procs.sleep(0.05)
    end
    return t
  end

  setup(function()
    origin = procs.origin(O)
    socks = procs.microsocks(S)
    config = string.format([[
listen { name = "proxy", addr = "127.0.0.1:%d" }
listen { name = "dead", addr = "127.0.0.1:%d" }
listen { name = "plain", addr = "127.0.0.1:%d" }
admin { addr = "127.0.0.1:%d", token = %q }
pool "socks" { strategy = "round_robin", retries = 1, proxies = {
  "socks5://127.0.0.1:%d", { url = "socks5://user:hunter2@127.0.0.1:%d", id = "good" } } }
pool "deadpool" { retries = 0, proxies = { "socks5://127.0.0.1:%d" } }
route(function(req)
  if req.listener == "proxy" then return "socks" end
  if req.listener == "dead" then return "deadpool" end
  return "direct"
end)
]], P, PD, PX, A, TOKEN, DEAD, S, DEAD)
    ferry = procs.ferry(config, { P, PD, PX, A })
  end)

  teardown(function()
    procs.stop_ferry(ferry)
    procs.stop(socks)
    procs.stop(origin)
  end)

  it("counts requests as they end, by listener, pool, code and status class", function()
    local base = "http://127.0.0.1:" .. O .. "/"
    for _ = 1, 3 do
      assert.equal(200, (procs.curl { proxy = "http://127.0.0.1:" .. P, url = base }))
    end
    assert.equal(502, (procs.curl { proxy = "http://127.0.0.1:" .. PD, url = base }))
    assert.equal(200, (procs.curl { proxy = "http://127.0.0.1:" .. PX, url = base, flags = "-p" }))
    local s = assert(socket.connect("127.0.0.1", PX))
    s:settimeout(5)
    s:send("GARBAGE\r\n\r\n")
    s:receive("*a")
    s:close()
    local t = scrape_until(function(text)
      return value(text, "ferry_requests_total", req("plain", "direct", "ok", "2xx")) ~= nil
    end)
    assert.equal(3, value(t, "ferry_requests_total", req("proxy", "socks", "ok", "2xx")))
    assert.equal(1, value(t, "ferry_requests_total", req("dead", "deadpool", "FERRY-3001", "5xx")))
    assert.equal(1, value(t, "ferry_requests_total", req("plain", "direct", "ok", "2xx")))
    assert.equal(1, value(t, "ferry_requests_total", req("plain", "none", "FERRY-1010", "4xx")))
    assert.is_true(value(t, "ferry_retries_total", 'pool="socks"') >= 1)
    assert.equal(3, value(t, "ferry_request_duration_seconds_count", 'pool="socks"'))
    assert.equal(1, value(t, "ferry_request_duration_seconds_count", 'pool="direct"'))
    -- Connect time is observed per fresh connection; a kept one (shared by
    -- the next client) has none.
    assert.equal(3, value(t, "ferry_connect_duration_seconds_count", 'pool="socks"') +
      value(t, "ferry_upstream_connections_reused_total", 'pool="socks"'))
  end)

  it("shows each proxy by id or number, never its URL or credentials", function()
    local t = scrape()
    assert.equal(1, value(t, "ferry_proxy_up", 'proxy="good",pool="socks"'))
    assert.is_true(value(t, "ferry_proxy_successes_total", 'proxy="good",pool="socks"') >= 3)
    assert.equal(0, value(t, "ferry_proxy_up", 'proxy="1",pool="socks"')) -- refused: down
    assert.is_true(value(t, "ferry_proxy_failures_total",
      'proxy="1",pool="socks",kind="refused"') >= 1)
    assert.equal(2, value(t, "ferry_pool_proxies", 'pool="socks"'))
    assert.is_nil(t:find("hunter2", 1, true))
    assert.is_nil(t:find("socks5://", 1, true))
  end)

  -- Lines of each code in ferry's log now.
  local function codes()
    local t = {}
    for _, l in ipairs(procs.log_lines(ferry)) do
      if l.code then t[l.code] = (t[l.code] or 0) + 1 end
    end
    return t
  end

  -- SIGHUP, then wait (up to 10 s) until ferry logged the outcome:
  -- "ok" (FERRY-0101), "failed" (FERRY-0102) or "timeout".
  local function hup()
    local before = codes()
    procs.signal(ferry, "HUP")
    local deadline = socket.gettime() + 10
    repeat
      local now = codes()
      if (now["FERRY-0101"] or 0) > (before["FERRY-0101"] or 0) then return "ok" end
      if (now["FERRY-0102"] or 0) > (before["FERRY-0102"] or 0) then return "failed" end
      procs.sleep(0.02)
    until socket.gettime() > deadline
    return "timeout"
  end

  it("counts reloads by result and keeps every counter through them", function()
    local before = scrape()
    assert.equal("ok", hup())
    procs.write_file(ferry.config, "pool 'broken' {")
    assert.equal("failed", hup())
    procs.write_file(ferry.config, config)
    local t = scrape()
    assert.equal((value(before, "ferry_reloads_total", 'result="ok"') or 0) + 1,
      value(t, "ferry_reloads_total", 'result="ok"'))
    assert.equal((value(before, "ferry_reloads_total", 'result="error"') or 0) + 1,
      value(t, "ferry_reloads_total", 'result="error"'))
    assert.equal(0, value(t, "ferry_config_last_reload_successful"))
    assert.equal(3, value(t, "ferry_requests_total", req("proxy", "socks", "ok", "2xx")))
  end)

  it("is text promtool accepts, served as the 0.0.4 text format", function()
    local t, headers = scrape()
    assert.matches("Content%-Type: text/plain; version=0%.0%.4", headers)
    assert.equal("rc=0\n", prom.promtool(t))
  end)
end)
