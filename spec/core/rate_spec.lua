-- Rate budgets in the C core through FFI (core/rate.c): the token bucket
-- of a (proxy, exchange) pair, its refill, learning from an exchange's
-- answers, and a reload's new limit keeping the tokens; and pool.lua's
-- eligibility and wait estimate reading the same buckets.
local ffi = require("ffi")
require("ferry.cdef")

ffi.cdef[[
struct ev_loop;
struct ev_loop *ev_default_loop(unsigned int flags);
void ev_now_update(struct ev_loop *loop);
extern struct ev_loop *loop;
void log_init(int fd);
int open(const char *path, int flags, int mode);
]]

local core = ffi.load("./build/libferry.so", true)
core.loop = core.ev_default_loop(0)
core.log_init(core.open("/dev/null", 1, 0))
local poolmod = require("ferry.pool")

local function tick(seconds)
  require("socket").sleep(seconds)
  core.ev_now_update(core.loop)
end

local seq = 0
local function new_pair(exid)
  seq = seq + 1
  local err = ffi.new("const char *[1]")
  local p = core.ferry_proxy_new("http://10.7.0." .. seq .. ":3128", 1, "10.7.0." .. seq, 3128,
    nil, nil, nil, 1, err)
  assert(p ~= nil)
  return core.ferry_pxstate_get(p.id, exid), p
end

local function near(want, got, eps)
  assert.is_true(math.abs(want - got) <= (eps or 0.05),
    string.format("expected %.3f, got %.3f", want, got))
end

describe("rate buckets (core/rate.c)", function()
  local ex = core.ferry_exchange_id("rate-spec")

  before_each(function()
    assert.equal(0, core.ferry_rate_set(ex, 10, 1, 0, 8, 5))
  end)

  it("starts full at the capacity, spends weight, refills at limit/per", function()
    local x = new_pair(ex)
    near(10, core.ferry_rate_tokens(x))
    assert.equal(0, core.ferry_rate_take(x, 4))
    near(6, core.ferry_rate_tokens(x))
    core.ferry_rate_take(x, 6)
    near(0, core.ferry_rate_tokens(x))
    tick(0.2)
    near(2, core.ferry_rate_tokens(x), 0.6)
    tick(1.2)
    near(10, core.ferry_rate_tokens(x)) -- capped
  end)

  it("burst sets the capacity", function()
    core.ferry_rate_set(ex, 10, 1, 3, 8, 5)
    local x = new_pair(ex)
    near(3, core.ferry_rate_tokens(x))
  end)

  it("keeps tokens over a new limit, capped to the new capacity", function()
    local x = new_pair(ex)
    core.ferry_rate_take(x, 3)
    near(7, core.ferry_rate_tokens(x))
    core.ferry_rate_set(ex, 100, 10, 0, 8, 5) -- same rate, capacity 100
    near(7, core.ferry_rate_tokens(x))
    core.ferry_rate_set(ex, 5, 1, 0, 8, 5) -- capacity 5: capped, not reset
    near(5, core.ferry_rate_tokens(x))
  end)

  it("learns: a cap on the tokens, and empty until a time", function()
    local x = new_pair(ex)
    assert.equal(0, core.ferry_rate_learn(x, 2, 0))
    near(2, core.ferry_rate_tokens(x))
    local now = core.ferry_now()
    core.ferry_rate_learn(x, -1, now + 30)
    near(0, core.ferry_rate_tokens(x))
    assert.is_true(x.rate_at >= now + 29.9)
    -- A wait past a day is ignored (a huge Retry-After).
    local y = new_pair(ex)
    core.ferry_rate_learn(y, -1, now + 1e9)
    near(10, core.ferry_rate_tokens(y))
    local st = ffi.new("struct ferry_rate_stats")
    assert.equal(0, core.ferry_rate_stats(ex, st))
    assert.is_true(tonumber(st.learned) >= 2)
    assert.equal(10, st.limit)
    assert.equal(8, st.queue)
  end)

  it("refuses to spend on an exchange without a budget", function()
    local other = core.ferry_exchange_id("rate-spec-none")
    local x = new_pair(other)
    assert.equal(-1, core.ferry_rate_take(x, 1))
    assert.equal(0, core.ferry_rate_tokens(x))
    core.ferry_rate_set(ex, 0, 0, 0, 0, 0) -- off
    local y = new_pair(ex)
    assert.equal(-1, core.ferry_rate_take(y, 1))
  end)

  describe("pool eligibility", function()
    local function pool_of(n)
      local list = {}
      for i = 1, n do
        local _, p = new_pair(ex)
        list[i] = { id = tonumber(p.id), c = p, x = {} }
      end
      local pool = poolmod.new("rate", list, { now = core.ferry_now })
      pool.pair_of = core.ferry_pxstate_get
      pool.half_open = core.ferry_breaker_half_open
      return pool, list
    end
    local RT = { rate = 10, cap = 10 }
    local function req(w)
      return { exid = ex, rate = RT, weight = w, now = core.ferry_now(), tried = {} }
    end

    it("skips a pair without the request's weight, even when relaxed", function()
      local pool, list = pool_of(2)
      local x1 = pool:pair(list[1], ex)
      core.ferry_rate_take(x1, 9.5)
      assert.is_false(pool:eligible(list[1], req(1)))
      assert.is_true(pool:eligible(list[1], req(0.4)))
      assert.is_true(pool:eligible(list[2], req(1)))
      pool.relaxed = true
      assert.is_false(pool:eligible(list[1], req(1)))
      pool.relaxed = false
      -- Without a budget on the request, the bucket is not looked at.
      local r = req(1)
      r.rate = false
      assert.is_true(pool:eligible(list[1], r))
    end)

    it("estimates the wait until the earliest bucket has the weight", function()
      local pool, list = pool_of(2)
      local now = core.ferry_now()
      core.ferry_rate_take(pool:pair(list[1], ex), 10)                -- 0 tokens: 0.3 s to 3
      core.ferry_rate_learn(pool:pair(list[2], ex), -1, now + 20)     -- empty for 20 s
      local r = req(3)
      assert.is_false(pool:eligible(list[1], r))
      near(0.3, pool:rate_wait(r), 0.02)
      assert.equal(RT, r.rate) -- restored
      -- A proxy that is disabled does not count.
      core.ferry_proxy_set_flag(list[1].c, core.FERRY_PROXY_DISABLED, 1)
      near(20.3, pool:rate_wait(r), 0.05)
      core.ferry_proxy_set_flag(list[2].c, core.FERRY_PROXY_DISABLED, 1)
      assert.is_nil(pool:rate_wait(r))
    end)
  end)
end)
