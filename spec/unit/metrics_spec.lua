-- lua/ferry/metrics.lua: render() of a fake runtime (pools of stand-in
-- struct ferry_proxy) into Prometheus text: every family declared with
-- HELP and TYPE before its samples, counters named *_total, labels
-- escaped, proxies named by label and pool and never by URL, health
-- scores from ferry.health, promtool's approval, and a 10 000-proxy
-- scrape that stays fast and allocates nothing per proxy in Lua.
-- The text itself is rendered by the core, so build/libferry.so is loaded.
local ffi = require("ffi")
local prom = require("prom")
require("ferry.cdef")
local core = ffi.load("./build/libferry.so", true)
local metrics = require("ferry.metrics")
local health = require("ferry.health")

local NOW = 1000

local function proxy(id, fields)
  local c = ffi.new("struct ferry_proxy")
  c.id = id
  for k, v in pairs(fields or {}) do c[k] = v end
  return c
end

-- A runtime whose active() is a config of the given pools.
local function fake_rt(pools)
  local cfg = { pools = {} }
  for _, p in ipairs(pools) do
    cfg.pools[p.name] = { name = p.name, index = p.index, latency_ceiling = p.ceiling or 1000,
      now = function() return NOW end, proxies = p.proxies }
    core.ferry_set_pool_name(p.index, p.name) -- as apply.lua does when it makes a pool
  end
  return { active = function() return cfg end }
end

local escape_pattern, promtool = prom.escape_pattern, prom.promtool

local function value(t, name, labels)
  local v = t:match("\n" .. escape_pattern(name .. "{" .. labels .. "}") .. " (%S+)\n")
  return v and tonumber(v)
end

-- Check the exposition rules promtool does not: each family declared
-- once, HELP then TYPE, its samples together right after.
local function check_structure(t)
  local declared, current, ctype = {}, nil, nil
  for line in t:gmatch("([^\n]*)\n") do
    local help = line:match("^# HELP (%S+) .+$")
    local tname, tkind = line:match("^# TYPE (%S+) (%S+)$")
    if help then
      assert(not declared[help], "family declared twice: " .. help)
      declared[help], current, ctype = true, help, nil
    elseif tname then
      assert(tname == current, "TYPE without its HELP: " .. tname)
      ctype = tkind
      if tkind == "counter" then assert(tname:match("_total$"), tname) end
      assert(tname:match("^ferry_"), tname)
    else
      local name = line:match("^([%w_]+)[{ ]")
      assert(name, "not a sample line: " .. line)
      local base = ctype == "histogram" and name:gsub("_bucket$", ""):gsub("_sum$", "")
        :gsub("_count$", "") or name
      assert(base == current, "sample outside its family: " .. line)
    end
  end
  return declared
end


describe("metrics.render", function()
  local rt, a, b, c

  setup(function()
    a = proxy(900001, { requests = 10, successes = 8, failures = 2, latency_ewma_ms = 250,
                        active = 3, last_failure_at = NOW - 5 })
    a.fail_kind[1] = 2 -- timeout
    b = proxy(900002, { flags = 0x1, probes_ok = 4, probes_failed = 6, downs = 2 })
    c = proxy(900003, { flags = 0x2 })
    rt = fake_rt {
      { name = "unit-binance", index = 901, ceiling = 500, proxies = {
        { id = 900001, label = "alpha", display = "http://user:hunter2@10.1.1.1:3128", c = a },
        { id = 900002, display = "socks5://10.1.1.2:1080", c = b },
      } },
      { name = 'unit "odd"\\pool', index = 902, proxies = {
        { id = 900003, label = "gamma\nline", c = c },
      } },
    }
  end)

  it("declares every family with HELP and TYPE before its samples", function()
    local t = metrics.render(rt)
    local families = check_structure(t)
    for _, f in ipairs({ "ferry_build_info", "ferry_process_start_time_seconds",
        "ferry_connections_open", "ferry_requests_total", "ferry_retries_total",
        "ferry_connect_duration_seconds", "ferry_request_duration_seconds", "ferry_reloads_total",
        "ferry_hook_errors_total", "ferry_probes_total", "ferry_pool_proxies",
        "ferry_proxy_requests_total", "ferry_proxy_successes_total", "ferry_proxy_failures_total",
        "ferry_proxy_active_connections", "ferry_proxy_health_score", "ferry_proxy_up",
        "ferry_proxy_breaker_state", "ferry_proxy_bans_total" }) do
      assert.is_true(families[f], f)
    end
  end)

  it("labels proxies by label (else id) and pool, with their counters", function()
    local t = metrics.render(rt)
    local la = 'proxy="alpha",pool="unit-binance"'
    local lb = 'proxy="900002",pool="unit-binance"'
    assert.equal(10, value(t, "ferry_proxy_requests_total", la))
    assert.equal(8, value(t, "ferry_proxy_successes_total", la))
    assert.equal(2, value(t, "ferry_proxy_failures_total", la .. ',kind="timeout"'))
    assert.equal(0, value(t, "ferry_proxy_failures_total", la .. ',kind="refused"'))
    assert.equal(3, value(t, "ferry_proxy_active_connections", la))
    assert.equal(0.25, value(t, "ferry_proxy_latency_seconds", la))
    assert.equal(1, value(t, "ferry_proxy_up", la))
    assert.equal(0, value(t, "ferry_proxy_up", lb))
    assert.equal(2, value(t, "ferry_proxy_downs_total", lb))
    assert.equal(4, value(t, "ferry_proxy_probes_total", lb .. ',result="ok"'))
    assert.equal(6, value(t, "ferry_proxy_probes_total", lb .. ',result="failed"'))
    assert.equal(2, value(t, "ferry_pool_proxies", 'pool="unit-binance"'))
    assert.equal(1, value(t, "ferry_pool_proxies_up", 'pool="unit-binance"'))
  end)

  it("reports the health score ferry.health gives, with the pool's latency ceiling", function()
    local t = metrics.render(rt)
    local want = health.score(a, 500, NOW)
    assert.near(want, value(t, "ferry_proxy_health_score", 'proxy="alpha",pool="unit-binance"'),
      1e-9)
    assert.is_true(want < 100 * 0.9) -- the recent failure and the latency count
  end)

  it("escapes label values and never shows a proxy's URL or credentials", function()
    local t = metrics.render(rt)
    assert.equal(1, value(t, "ferry_proxy_disabled",
      'proxy="gamma\\nline",pool="unit \\"odd\\"\\\\pool"'))
    assert.is_nil(t:find("hunter2", 1, true))
    assert.is_nil(t:find("user:", 1, true))
    assert.is_nil(t:find("10.1.1.", 1, true))
  end)

  it("renders the core families without a running config", function()
    local t = metrics.render({ active = function() return nil end })
    check_structure(t)
    assert.matches("# TYPE ferry_requests_total counter", t, 1, true)
    assert.is_nil(t:find("ferry_proxy_up{", 1, true))
    assert.equal("rc=0\n", promtool(t))
  end)

  it("passes promtool check metrics with no complaint", function()
    assert.equal("rc=0\n", promtool(metrics.render(rt)))
  end)

  -- How fast a render is belongs to the benchmark (spec/bench/metrics.sh
  -- times a scrape), not to a timed check here; this one counts garbage.
  it("renders 10 000 proxies without Lua garbage per proxy", function()
    local list = {}
    for i = 1, 10000 do
      list[i] = { id = 910000 + i, label = "px-" .. i,
                  c = proxy(910000 + i, { requests = i, successes = i }) }
    end
    local big = fake_rt { { name = "unit-big", index = 903, proxies = list } }
    metrics.render(big) -- the array and the C buffer grow once
    collectgarbage()
    collectgarbage("stop")
    local kb0 = collectgarbage("count")
    local t = metrics.render(big)
    local kb = collectgarbage("count") - kb0
    collectgarbage("restart")
    assert.equal(10000, select(2, t:gsub("\nferry_proxy_up{", "")))
    -- The text itself, plus a little: no table or string per proxy.
    assert.is_true(kb - #t / 1024 < 256, (kb - #t / 1024) .. " KiB beyond the text")
  end)
end)
