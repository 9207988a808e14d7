-- Health in the C core through FFI: rise/fall hysteresis, passive
-- marking, passive recovery trials, (proxy, exchange) pairs, breakers,
-- bans and the result window; and lua/ferry/breaker.lua driving them.
local ffi = require("ffi")
require("ferry.cdef")

ffi.cdef[[
struct ev_loop;
struct ev_loop *ev_default_loop(unsigned int flags);
void ev_now_update(struct ev_loop *loop);
extern struct ev_loop *loop;
void proxy_success(struct ferry_proxy *p, double latency_ms);
void proxy_failure(struct ferry_proxy *p, int kind);
void health_probe_result(struct ferry_proxy *p, int ok, double latency_ms, const char *why);
void health_pair_result(struct ferry_pxstate *x, int ok, double latency_ms);
void log_init(int fd);
int open(const char *path, int flags, int mode);
]]

-- Global, so that modules using ffi.C (lua/ferry/breaker.lua) see it too.
local core = ffi.load("./build/libferry.so", true)
core.loop = core.ev_default_loop(0)
-- Event lines go to /dev/null: these specs read state, not logs.
core.log_init(core.open("/dev/null", 1, 0))

local function now() return core.ferry_now() end
local function tick(seconds)
  local t = os.clock()
  -- ev_now is the loop's cached clock; sleeping and updating moves it.
  require("socket").sleep(seconds)
  core.ev_now_update(core.loop)
  return os.clock() - t
end

local seq = 0
local function new_proxy()
  seq = seq + 1
  local err = ffi.new("const char *[1]")
  local p = core.ferry_proxy_new("http://10.9.0." .. seq .. ":3128", 1, "10.9.0." .. seq, 3128,
    nil, nil, nil, 1, err)
  assert(p ~= nil, err[0] ~= nil and ffi.string(err[0]))
  return p
end

local DOWN = 0x1
local REFUSED, TIMEOUT, HTTP5XX = 0, 1, 4

local function is_down(p) return bit.band(p.flags, DOWN) ~= 0 end

describe("proxy health (rise/fall)", function()
  it("starts up with a full counter", function()
    local p = new_proxy()
    assert.is_false(is_down(p))
    assert.equal(2, p.rise)
    assert.equal(3, p.fall)
    assert.equal(4, p.health)
  end)

  it("goes down after `fall` failed probes in a row, not before", function()
    local p = new_proxy()
    core.health_probe_result(p, 0, 0, "spec")
    core.health_probe_result(p, 0, 0, "spec")
    assert.is_false(is_down(p))
    core.health_probe_result(p, 0, 0, "spec")
    assert.is_true(is_down(p))
    assert.equal(1, p.downs)
    assert.equal(3, tonumber(p.probes_failed))
    assert.is_true(p.down_since > 0)
  end)

  it("a success between failures restarts the count (one blip never flips it)", function()
    local p = new_proxy()
    for _ = 1, 10 do
      core.health_probe_result(p, 0, 0, "spec")
      core.health_probe_result(p, 0, 0, "spec")
      core.health_probe_result(p, 1, 5, nil)
    end
    assert.is_false(is_down(p))
  end)

  it("comes back after `rise` passed probes in a row", function()
    local p = new_proxy()
    core.ferry_health_set(p, 3, 1, 1)
    core.health_probe_result(p, 0, 0, "spec")
    assert.is_true(is_down(p))
    core.health_probe_result(p, 1, 1, nil)
    core.health_probe_result(p, 1, 1, nil)
    assert.is_true(is_down(p))
    core.health_probe_result(p, 0, 0, "spec") -- resets the climb
    core.health_probe_result(p, 1, 1, nil)
    core.health_probe_result(p, 1, 1, nil)
    assert.is_true(is_down(p))
    core.health_probe_result(p, 1, 1, nil)
    assert.is_false(is_down(p))
    assert.equal(0, p.down_since)
    assert.equal(1, p.probe_latency_ms)
  end)

  it("marks a proxy down at its first refused connect from real traffic", function()
    local p = new_proxy()
    core.proxy_failure(p, REFUSED)
    assert.is_true(is_down(p))
  end)

  it("counts timeouts toward fall, and ignores 5xx for up/down", function()
    local p = new_proxy()
    for _ = 1, 10 do core.proxy_failure(p, HTTP5XX) end
    assert.is_false(is_down(p))
    core.proxy_failure(p, TIMEOUT)
    core.proxy_failure(p, TIMEOUT)
    assert.is_false(is_down(p))
    core.proxy_failure(p, TIMEOUT)
    assert.is_true(is_down(p))
  end)

  it("without probes, allows a trial after the interval, backing off on failed trials",
    function()
      local p = new_proxy()
      core.ferry_health_set(p, 2, 3, 10)
      core.proxy_failure(p, REFUSED)
      local t0 = now()
      assert.near(t0 + 10, p.retry_at, 0.01)
      core.proxy_failure(p, REFUSED) -- a failed trial: twice the wait
      assert.near(t0 + 20, p.retry_at, 0.01)
      for _ = 1, 10 do core.proxy_failure(p, REFUSED) end
      assert.near(t0 + 160, p.retry_at, 0.01) -- capped at 16x
      core.proxy_success(p, -1)                -- a trial that worked
      assert.is_false(is_down(p))
      assert.equal(0, p.retry_at)
    end)

  it("can be marked by hand", function()
    local p = new_proxy()
    core.ferry_health_mark(p, 0, "spec")
    assert.is_true(is_down(p))
    core.ferry_health_mark(p, 1, "spec")
    assert.is_false(is_down(p))
  end)

  it("refuses nonsense settings", function()
    local p = new_proxy()
    assert.equal(-1, core.ferry_health_set(p, 0, 3, 1))
    assert.equal(-1, core.ferry_health_set(p, 2, 0, 1))
    assert.equal(-1, core.ferry_health_set(p, 2, 3, 0))
    assert.equal(-1, core.ferry_health_set(nil, 2, 3, 1))
  end)
end)

describe("(proxy, exchange) pairs", function()
  it("gives each exchange a stable id and 0 to none", function()
    local a = core.ferry_exchange_id("spec-binance")
    local b = core.ferry_exchange_id("spec-bybit")
    assert.is_true(a > 0 and b > 0 and a ~= b)
    assert.equal(a, core.ferry_exchange_id("spec-binance"))
    assert.equal(0, core.ferry_exchange_id(""))
    assert.equal(0, core.ferry_exchange_id(nil))
  end)

  it("returns the same pair every time, distinct per exchange", function()
    local p = new_proxy()
    local ex = core.ferry_exchange_id("spec-binance")
    local x1 = core.ferry_pxstate_get(p.id, ex)
    assert.is_true(x1 ~= nil)
    assert.equal(x1, core.ferry_pxstate_get(p.id, ex))
    assert.are_not.equal(x1, core.ferry_pxstate_get(p.id, 0))
    assert.equal(p.id, x1.proxy_id)
    assert.equal(ex, x1.exchange)
  end)

  it("refuses unknown proxies and exchanges", function()
    assert.is_true(core.ferry_pxstate_get(4000000000, 0) == nil)
    assert.is_true(core.ferry_pxstate_get(1, 1000000) == nil)
  end)

  it("counts results and keeps a window of the last seconds", function()
    local p = new_proxy()
    local x = core.ferry_pxstate_get(p.id, 0)
    for _ = 1, 3 do core.health_pair_result(x, 1, 20) end
    core.health_pair_result(x, 0, -1)
    assert.equal(4, tonumber(x.requests))
    assert.equal(3, tonumber(x.successes))
    assert.equal(1, x.consecutive_failures)
    assert.near(20, x.latency_ewma_ms, 0.001)
    local out = ffi.new("uint32_t[2]")
    core.ferry_pxstate_window(x, 10, out)
    assert.equal(3, out[0])
    assert.equal(1, out[1])
  end)

  it("bans a pair only, with counts of bans in a row, and lifts a ban", function()
    local p = new_proxy()
    local a = core.ferry_pxstate_get(p.id, core.ferry_exchange_id("spec-binance"))
    local b = core.ferry_pxstate_get(p.id, core.ferry_exchange_id("spec-bybit"))
    assert.equal(0, core.ferry_ban(a, 60, "spec"))
    assert.near(now() + 60, a.banned_until, 0.01)
    assert.equal(0, b.banned_until)
    core.ferry_ban(a, 120, "spec")
    assert.equal(2, a.bans)
    assert.equal(2, tonumber(a.bans_total))
    core.ferry_ban(a, 0, nil)
    assert.equal(0, a.banned_until)
    assert.equal(0, a.bans)
    assert.equal(-1, core.ferry_ban(a, -1, nil))
  end)
end)

describe("breakers", function()
  local breaker = require("ferry.breaker")
  local plugin = { name = "spec",
                   should_open = function(s, x) return x.consecutive_failures >= s.failures end }
  local b = { plugin = plugin, settings = { failures = 2, cooldown = 0.05, max_cooldown = 0.2,
                                            trials = 1 } }
  local pool = require("ferry.pool").new("spec", {}, { now = function() return now() end })
  pool.half_open = core.ferry_breaker_half_open
  local ok, bad = { ok = true }, { ok = false, kind = "timeout" }

  local function feed(x, r)
    core.health_pair_result(x, r.ok and 1 or 0, 1)
    breaker.on_result(b, x, r, error)
  end

  it("goes closed -> open -> half-open -> closed", function()
    local x = core.ferry_pxstate_get(new_proxy().id, 0)
    feed(x, bad)
    assert.equal(0, x.breaker)
    feed(x, bad)
    assert.equal(1, x.breaker) -- open
    assert.is_true(pool:pair_blocked(x, now()))
    tick(0.06)
    assert.is_false(pool:pair_blocked(x, now())) -- cooldown over: half-open on this look
    assert.equal(2, x.breaker)
    assert.equal(1, core.ferry_breaker_trial(x))
    assert.equal(0, core.ferry_breaker_trial(x)) -- one trial at a time
    assert.is_true(pool:pair_blocked(x, now()))
    feed(x, ok)
    assert.equal(0, x.breaker) -- closed
    assert.equal(0, x.opens)
  end)

  it("reopens after a failed trial with a longer cooldown, capped", function()
    local x = core.ferry_pxstate_get(new_proxy().id, 0)
    feed(x, bad)
    feed(x, bad)
    local first = x.breaker_until - now()
    tick(0.06)
    pool:pair_blocked(x, now())
    assert.equal(2, x.breaker)
    feed(x, bad)
    assert.equal(1, x.breaker)
    assert.equal(2, x.opens)
    assert.near(first * 2, x.breaker_until - now(), 0.01)
    assert.equal(0.2, breaker.cooldown(b.settings, 10))
  end)

  it("reports a plugin that raises or answers garbage and stays closed", function()
    local x = core.ferry_pxstate_get(new_proxy().id, 0)
    local seen = {}
    local broken = { plugin = { name = "broken", should_open = function() error("boom") end },
                     settings = b.settings }
    breaker.on_result(broken, x, bad, function(m) seen[#seen + 1] = m end)
    local garbage = { plugin = { name = "garbage", should_open = function() return "yes" end },
                      settings = b.settings }
    breaker.on_result(garbage, x, bad, function(m) seen[#seen + 1] = m end)
    assert.equal(2, #seen)
    assert.matches("boom", seen[1])
    assert.matches("returned a string", seen[2])
    assert.equal(0, x.breaker)
  end)

  it("ignores late results while open", function()
    local x = core.ferry_pxstate_get(new_proxy().id, 0)
    core.ferry_breaker_open(x, 10)
    local until_ = x.breaker_until
    feed(x, ok)
    assert.equal(1, x.breaker)
    assert.equal(until_, x.breaker_until)
  end)
end)

describe("slow start's up_since", function()
  local err = ffi.new("const char *[1]")

  it("is 0 before the first config is applied, then marks each return", function()
    local p = new_proxy()
    core.ferry_health_mark(p, 0, "spec")
    core.ferry_health_mark(p, 1, "spec")
    assert.equal(0, p.up_since) -- ferry is still starting
    core.ferry_health_started()
    assert.is_true(new_proxy().up_since > 0) -- created after: a return
    core.ferry_health_mark(p, 0, "spec")
    assert.equal(0, p.up_since) -- going down leaves it
    tick(0.01)
    core.ferry_health_mark(p, 1, "spec")
    assert.equal(now(), p.up_since)
  end)

  it("marks a re-enabled proxy, not one enabled already", function()
    core.ferry_health_started()
    local p = new_proxy()
    tick(0.01)
    core.ferry_proxy_set_flag(p, 0x2, 0) -- was enabled: no return
    assert.is_true(p.up_since < now())
    core.ferry_proxy_set_flag(p, 0x2, 1)
    tick(0.01)
    core.ferry_proxy_set_flag(p, 0x2, 0)
    assert.equal(now(), p.up_since)
  end)

  it("marks a removed proxy that a config brings back", function()
    core.ferry_health_started()
    local p = new_proxy()
    core.ferry_proxy_set_flag(p, 0x4, 1)
    tick(0.01)
    local key = "http://10.9.0." .. seq .. ":3128"
    local again = core.ferry_proxy_new(key, 1, "10.9.0." .. seq, 3128, nil, nil, nil, 1, err)
    assert.equal(p.id, again.id)
    assert.equal(now(), again.up_since)
    tick(0.01)
    core.ferry_proxy_new(key, 1, "10.9.0." .. seq, 3128, nil, nil, nil, 1, err) -- a reload
    assert.is_true(again.up_since < now())
  end)

  it("notes when a breaker opened", function()
    local p = new_proxy()
    local x = core.ferry_pxstate_get(p.id, 0)
    local epoch = core.ferry_health_epoch()
    core.ferry_breaker_open(x, 30)
    assert.equal(now(), x.opened_at)
    assert.is_true(core.ferry_health_epoch() ~= epoch)
  end)
end)
