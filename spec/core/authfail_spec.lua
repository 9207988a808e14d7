-- The throttle of failed inbound auth (core/authfail.c) through FFI: the
-- table stays bounded under many addresses, an address is blocked at its
-- limit and only it, and the block ends with its window.
local ffi = require("ffi")
require("ferry.cdef")

ffi.cdef[[
struct ev_loop;
struct ev_loop *ev_default_loop(unsigned int flags);
void ev_now_update(struct ev_loop *loop);
extern struct ev_loop *loop;
void log_init(int fd);
int open(const char *path, int flags, int mode);
struct listener;
struct listener *listener_get(int idx);
struct authfail_stats {
  uint64_t failures, throttled, blocks, evictions;
  uint32_t blocked, tracked;
};
int authfail_blocked(const struct listener *l, const char *client);
int authfail_count(const struct listener *l, const char *client);
int authfail_missing(const struct listener *l, const char *client);
const struct authfail_stats *authfail_stats(void);
void authfail_reset(void);
]]

local core = ffi.load("./build/libferry.so", true)
core.loop = core.ev_default_loop(0)
core.log_init(core.open("/dev/null", 1, 0))
local socket = require("socket")

local function tick(seconds)
  socket.sleep(seconds)
  core.ev_now_update(core.loop)
end

-- A listener to hang the limits on: bound to a free loopback port.
local function listener(limit, window)
  local err = ffi.new("const char *[1]")
  for _ = 1, 50 do
    local idx = core.ferry_listen("authfail-spec", "127.0.0.1", math.random(20000, 32000), "http",
      0, err)
    if idx >= 0 then
      assert.equal(0, core.ferry_listener_set_auth_throttle(idx, limit, window))
      return core.listener_get(idx), idx
    end
  end
  error("no port: " .. ffi.string(err[0]))
end

describe("failed inbound auth throttle", function()
  before_each(function() core.authfail_reset() end)

  it("refuses limits out of bounds", function()
    local _, idx = listener(10, 60)
    assert.equal(-1, core.ferry_listener_set_auth_throttle(idx, 0, 60))
    assert.equal(-1, core.ferry_listener_set_auth_throttle(idx, 10, 0.01))
    assert.equal(-1, core.ferry_listener_set_auth_throttle(idx, 10, 0 / 0))
    assert.equal(-1, core.ferry_listener_set_auth_throttle(999, 10, 60))
  end)

  it("blocks an address at its limit, and only that address", function()
    local l = listener(3, 60)
    local s = core.authfail_stats()
    local f0, b0 = tonumber(s.failures), tonumber(s.blocks)
    assert.equal(1, core.authfail_count(l, "10.1.0.1")) -- the first of the window logs
    assert.equal(0, core.authfail_count(l, "10.1.0.1")) -- later ones do not
    assert.equal(0, core.authfail_blocked(l, "10.1.0.1"))
    core.authfail_count(l, "10.1.0.1")
    assert.equal(1, core.authfail_blocked(l, "10.1.0.1"))
    assert.equal(0, core.authfail_blocked(l, "10.1.0.2"))
    assert.equal(f0 + 3, tonumber(s.failures))
    assert.equal(b0 + 1, tonumber(s.blocks))
    assert.equal(1, s.blocked)
  end)

  it("ends the block with its window", function()
    local l = listener(2, 0.2)
    core.authfail_count(l, "10.2.0.1")
    core.authfail_count(l, "10.2.0.1")
    assert.equal(1, core.authfail_blocked(l, "10.2.0.1"))
    tick(0.3)
    assert.equal(0, core.authfail_blocked(l, "10.2.0.1"))
    assert.equal(0, core.authfail_stats().blocked)
    -- A fresh window: under the limit again.
    assert.equal(1, core.authfail_count(l, "10.2.0.1"))
    assert.equal(0, core.authfail_blocked(l, "10.2.0.1"))
  end)

  it("stays bounded under many addresses, counting what it forgets", function()
    local l = listener(10, 60)
    local s = core.authfail_stats()
    local e0 = tonumber(s.evictions)
    for i = 1, 6000 do
      core.authfail_count(l, string.format("10.3.%d.%d", math.floor(i / 256), i % 256))
    end
    assert.is_true(s.tracked <= 4096, tostring(s.tracked))
    assert.is_true(tonumber(s.evictions) - e0 >= 6000 - 4096)
  end)

  it("never blocks requests without credentials, and logs them once per window", function()
    local l = listener(2, 60)
    assert.equal(1, core.authfail_missing(l, "10.4.0.1"))
    for _ = 1, 20 do assert.equal(0, core.authfail_missing(l, "10.4.0.1")) end
    assert.equal(0, core.authfail_blocked(l, "10.4.0.1"))
  end)
end)
