-- Metrics in the C core through FFI (build/libferry.so): requests counted
-- by label set, histograms, reloads, hook errors and probe results; the
-- request series table bounded (overflow goes to "other" and is
-- counted); label values escaped; per-proxy and per-(proxy, exchange)
-- families; and the whole text accepted by `promtool check metrics`.
-- The counters are process-wide and never reset, so every spec uses its
-- own label values and compares before and after.
local ffi = require("ffi")
local prom = require("prom")
require("ferry.cdef")

ffi.cdef[[
struct ev_loop;
struct ev_loop *ev_default_loop(unsigned int flags);
extern struct ev_loop *loop;
void log_init(int fd);
int open(const char *path, int flags, int mode);
void metrics_probe(int result); /* enum probe_result of core/probe.h */
void metrics_hook_error(int kind);
]]

-- Global, so that ferry.metrics (ffi.C) sees the same core.
local core = ffi.load("./build/libferry.so", true)
core.loop = core.ev_default_loop(0)
core.log_init(core.open("/dev/null", 1, 0))

local len = ffi.new("size_t[1]")

local function text(members, n)
  local p = core.ferry_metrics_text(members, n or 0, nil, len)
  return ffi.string(p, len[0])
end

local escape_pattern, promtool = prom.escape_pattern, prom.promtool

-- The value of the sample `name{labels}` (labels exactly as rendered), or nil.
local function value(t, name, labels)
  local line = name .. (labels and ("{" .. labels .. "}") or "")
  local v = t:match("\n" .. escape_pattern(line) .. " (%S+)\n")
  return v and tonumber(v)
end

local function req_labels(listener, pool, code, class, exchange)
  return string.format('listener="%s",pool="%s",exchange="%s",code="%s",status_class="%s"',
    listener, pool, exchange or "", code, class)
end

local function count_series(t, name)
  local n = 0
  for _ in t:gmatch("\n" .. escape_pattern(name) .. "{") do n = n + 1 end
  return n
end


describe("struct ferry_metrics_member", function()
  it("has the same size and field offsets in C and in the cdef", function()
    local src, bin = os.tmpname() .. ".c", os.tmpname()
    local f = assert(io.open(src, "w"))
    f:write([[
#include <stdio.h>
#include <stddef.h>
#include "core/ferry.h"
int main(void) {
  printf("%zu %zu %zu %zu %zu\n", sizeof(struct ferry_metrics_member),
         offsetof(struct ferry_metrics_member, proxy), offsetof(struct ferry_metrics_member, label),
         offsetof(struct ferry_metrics_member, pool), offsetof(struct ferry_metrics_member, score));
  return 0;
}
]])
    f:close()
    assert.is_true(os.execute("cc -I. -o " .. bin .. " " .. src) == 0)
    local p = io.popen(bin)
    local line = p:read("*l")
    p:close()
    os.remove(src) os.remove(bin)
    local T = "struct ferry_metrics_member"
    assert.equal(table.concat({ ffi.sizeof(T), ffi.offsetof(T, "proxy"), ffi.offsetof(T, "label"),
      ffi.offsetof(T, "pool"), ffi.offsetof(T, "score") }, " "), line)
  end)
end)

describe("ferry_requests_total", function()
  it("counts each request under its listener, pool, exchange, code and status class", function()
    core.ferry_set_pool_name(41, "count-pool")
    local ex = core.ferry_exchange_id("count-exchange")
    for _ = 1, 3 do core.ferry_metrics_count_request("count-l", 41, ex, nil, 200, 0.01) end
    core.ferry_metrics_count_request("count-l", 41, ex, "FERRY-3001", 502, 0.2)
    core.ferry_metrics_count_request("count-l", 0, 0, "", 304, -1)
    core.ferry_metrics_count_request("count-l", -1, 0, "FERRY-1001", 400, -1)
    core.ferry_metrics_count_request("count-l", 41, ex, "FERRY-7402", 0, -1)
    local t = text()
    assert.equal(3, value(t, "ferry_requests_total",
      req_labels("count-l", "count-pool", "ok", "2xx", "count-exchange")))
    assert.equal(1, value(t, "ferry_requests_total",
      req_labels("count-l", "count-pool", "FERRY-3001", "5xx", "count-exchange")))
    assert.equal(1, value(t, "ferry_requests_total", req_labels("count-l", "direct", "ok", "3xx")))
    assert.equal(1, value(t, "ferry_requests_total",
      req_labels("count-l", "none", "FERRY-1001", "4xx")))
    assert.equal(1, value(t, "ferry_requests_total",
      req_labels("count-l", "count-pool", "FERRY-7402", "none", "count-exchange")))
    core.ferry_metrics_count_request("count-l", 41, ex, nil, 200, 0.01)
    assert.equal(4, value(text(), "ferry_requests_total",
      req_labels("count-l", "count-pool", "ok", "2xx", "count-exchange")))
  end)

  it("observes durations in the pool's histogram, cumulatively, with sum and count", function()
    core.ferry_set_pool_name(42, "histo-pool")
    core.ferry_metrics_count_request("histo-l", 42, 0, nil, 200, 0.003)
    core.ferry_metrics_count_request("histo-l", 42, 0, nil, 200, 0.2)
    core.ferry_metrics_count_request("histo-l", 42, 0, nil, 200, 30)
    core.ferry_metrics_count_request("histo-l", 42, 0, nil, 200, -1) -- counted, not observed
    local t = text()
    local b = function(le)
      return value(t, "ferry_request_duration_seconds_bucket",
        string.format('pool="histo-pool",le="%s"', le))
    end
    assert.equal(1, b("0.005"))
    assert.equal(1, b("0.1"))
    assert.equal(2, b("0.25"))
    assert.equal(2, b("10"))
    assert.equal(3, b("+Inf"))
    assert.equal(3, value(t, "ferry_request_duration_seconds_count", 'pool="histo-pool"'))
    assert.near(30.203, value(t, "ferry_request_duration_seconds_sum", 'pool="histo-pool"'), 1e-9)
  end)

  it("escapes backslash, double quote and newline in label values", function()
    core.ferry_set_pool_name(43, 'p\\o"ol\nx')
    core.ferry_metrics_count_request('we"ird\\listener\nname', 43, 0, 'co"de', 200, -1)
    local t = text()
    assert.equal(1, value(t, "ferry_requests_total",
      'listener="we\\"ird\\\\listener\\nname",pool="p\\\\o\\"ol\\nx",exchange="",' ..
      'code="co\\"de",status_class="2xx"'))
    assert.matches("rc=0", promtool(t))
  end)

  it("holds at most its limit of label sets; the rest go to \"other\" and are counted", function()
    local t0 = text()
    local series = count_series(t0, "ferry_requests_total")
    local other0 = value(t0, "ferry_requests_total", req_labels("other", "other", "other",
      "other", "other")) or 0
    local overflow0 = value(t0, "ferry_metrics_overflow_total")
    if other0 > 0 then series = series - 1 end
    core.ferry_metrics_set_limit(series + 2)
    for i = 1, 5 do core.ferry_metrics_count_request("bound-" .. i, 0, 0, nil, 200, -1) end
    core.ferry_metrics_count_request("bound-1", 0, 0, nil, 200, -1) -- known: still its own
    core.ferry_metrics_set_limit(4096)
    local t = text()
    assert.equal(2, value(t, "ferry_requests_total", req_labels("bound-1", "direct", "ok", "2xx")))
    assert.equal(1, value(t, "ferry_requests_total", req_labels("bound-2", "direct", "ok", "2xx")))
    assert.is_nil(value(t, "ferry_requests_total", req_labels("bound-3", "direct", "ok", "2xx")))
    assert.equal(other0 + 3, value(t, "ferry_requests_total",
      req_labels("other", "other", "other", "other", "other")))
    assert.equal(overflow0 + 3, value(t, "ferry_metrics_overflow_total"))
  end)

  it("never holds more than 4096 label sets, whatever limit is asked for", function()
    -- In a process of its own: filling the table here would leave no room
    -- for the specs that follow.
    local script = os.tmpname()
    local f = assert(io.open(script, "w"))
    f:write([[
package.path = "lua/?.lua;" .. package.path
local ffi = require("ffi")
require("ferry.cdef")
local core = ffi.load("./build/libferry.so", true)
core.ferry_metrics_set_limit(1000000)
for i = 0, 4999 do -- 1000 pools x 5 status classes
  core.ferry_metrics_count_request("l", i % 1000, 0, nil, 100 * (1 + math.floor(i / 1000)), -1)
end
local len = ffi.new("size_t[1]")
local t = ffi.string(core.ferry_metrics_text(nil, 0, nil, len), len[0])
local n = 0
for _ in t:gmatch("\nferry_requests_total{") do n = n + 1 end
io.stdout:write("\n", n, " ", t:match("\nferry_metrics_overflow_total (%d+)\n"))
]])
    f:close()
    local p = io.popen("luajit " .. script .. " 2>&1")
    local out = p:read("*a")
    p:close()
    os.remove(script)
    assert.equal("4097 904", out:match("\n([^\n]*)$")) -- 4096 label sets and "other"
    assert.matches('"code":"FERRY%-7401"', out) -- logged, once
    assert.equal(1, select(2, out:gsub("FERRY%-7401", "")))
  end)
end)

describe("C-owned counters", function()
  it("counts reloads by result and says whether the last one worked", function()
    local t0 = text()
    local ok0 = value(t0, "ferry_reloads_total", 'result="ok"')
    local err0 = value(t0, "ferry_reloads_total", 'result="error"')
    core.ferry_metrics_count_reload(0)
    local t = text()
    assert.equal(err0 + 1, value(t, "ferry_reloads_total", 'result="error"'))
    assert.equal(0, value(t, "ferry_config_last_reload_successful"))
    core.ferry_metrics_count_reload(1)
    t = text()
    assert.equal(ok0 + 1, value(t, "ferry_reloads_total", 'result="ok"'))
    assert.equal(1, value(t, "ferry_config_last_reload_successful"))
    assert.near(os.time(), value(t, "ferry_config_last_reload_success_timestamp_seconds"), 2)
  end)

  it("counts hook errors by kind", function()
    local t0 = text()
    local function get(t, kind) return value(t, "ferry_hook_errors_total", 'kind="' .. kind .. '"') end
    core.ferry_count_hook_error(1)
    core.ferry_count_hook_error(2)
    core.ferry_count_hook_error(2)
    core.ferry_count_hook_error(4)
    core.ferry_count_hook_error(99)
    core.metrics_hook_error(0)
    local t = text()
    assert.equal(get(t0, "route") + 1, get(t, "route"))
    assert.equal(get(t0, "strategy") + 2, get(t, "strategy"))
    assert.equal(get(t0, "breaker"), get(t, "breaker"))
    assert.equal(get(t0, "exchange") + 1, get(t, "exchange"))
    assert.equal(get(t0, "other") + 1, get(t, "other"))
    assert.equal(get(t0, "runtime") + 1, get(t, "runtime"))
  end)

  it("counts probe results by the result probe.c passes", function()
    local t0 = text()
    local function get(t, r) return value(t, "ferry_probes_total", 'result="' .. r .. '"') end
    -- enum probe_result: the labels in its order; past its end: "failed".
    local labels = { "ok", "timeout", "refused", "connect_failed", "resolve", "handshake", "auth",
                     "status", "bad_response", "closed", "failed" }
    for i = 0, #labels - 2 do core.metrics_probe(i) end
    core.metrics_probe(99)
    core.metrics_probe(1)
    local t = text()
    for r, d in pairs({ ok = 1, timeout = 2, refused = 1, connect_failed = 1, status = 1, auth = 1,
                        handshake = 1, resolve = 1, failed = 1, closed = 1, bad_response = 1 }) do
      assert.equal(get(t0, r) + d, get(t, r), r)
    end
  end)

  it("says what it is and when it started", function()
    local t = text()
    assert.matches('\nferry_build_info{version="[^"]+"} 1\n', t)
    assert.near(os.time(), value(t, "ferry_process_start_time_seconds"), 3600)
    assert.equal(0, value(t, "ferry_connections_open"))
  end)
end)

describe("per-proxy families", function()
  local err = ffi.new("const char *[1]")
  local members, a, b, x

  setup(function()
    core.ferry_set_pool_name(44, "px-pool")
    a = core.ferry_proxy_new("http://user:secret@10.44.0.1:3128", 1, "10.44.0.1", 3128, "user",
      "secret", nil, 1, err)
    b = core.ferry_proxy_new("socks5://10.44.0.2:1080", 2, "10.44.0.2", 1080, nil, nil, nil, 1, err)
    core.ferry_proxy_set_label(a, "alpha")
    core.ferry_proxy_set_flag(b, 0x2, 1) -- disabled
    local ex = core.ferry_exchange_id("px-exchange")
    x = core.ferry_pxstate_get(a.id, ex)
    core.ferry_breaker_open(x, 30)
    core.ferry_ban(x, 60, "spec")
    members = ffi.new("struct ferry_metrics_member[2]")
    members[0].proxy, members[0].label, members[0].pool, members[0].score = a, "alpha", 44, 87.5
    members[1].proxy, members[1].label, members[1].pool, members[1].score = b, nil, 44, -1
  end)

  it("labels each proxy by its label (or number) and pool, never by its URL", function()
    local t = text(members, 2)
    local pa = 'proxy="alpha",pool="px-pool"'
    local pb = 'proxy="' .. tonumber(b.id) .. '",pool="px-pool"'
    assert.equal(1, value(t, "ferry_proxy_up", pa))
    assert.equal(0, value(t, "ferry_proxy_disabled", pa))
    assert.equal(1, value(t, "ferry_proxy_disabled", pb))
    assert.equal(87.5, value(t, "ferry_proxy_health_score", pa))
    assert.is_nil(value(t, "ferry_proxy_health_score", pb)) -- no score given
    assert.equal(0, value(t, "ferry_proxy_failures_total", pa .. ',kind="timeout"'))
    assert.equal(0, value(t, "ferry_proxy_probes_total", pb .. ',result="failed"'))
    assert.equal(2, value(t, "ferry_pool_proxies", 'pool="px-pool"'))
    assert.equal(1, value(t, "ferry_pool_proxies_up", 'pool="px-pool"'))
    assert.is_nil(t:find("secret", 1, true))
    assert.is_nil(t:find("user:", 1, true))
    assert.is_nil(t:find("10.44.0.1", 1, true))
  end)

  it("shows breakers and bans per (proxy, exchange)", function()
    local t = text(members, 2)
    local l = 'proxy="alpha",pool="px-pool",exchange="px-exchange"'
    assert.equal(1, value(t, "ferry_proxy_breaker_state", l))
    assert.equal(1, value(t, "ferry_proxy_banned", l))
    assert.equal(1, value(t, "ferry_proxy_bans_total", l))
    core.ferry_breaker_close(x)
    core.ferry_ban(x, 0, nil)
    t = text(members, 2)
    assert.equal(0, value(t, "ferry_proxy_breaker_state", l))
    assert.equal(0, value(t, "ferry_proxy_banned", l))
    assert.equal(1, value(t, "ferry_proxy_bans_total", l))
  end)

  it("passes promtool check metrics with no complaint", function()
    assert.equal("rc=0\n", promtool(text(members, 2)))
  end)
end)
