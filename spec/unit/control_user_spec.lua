-- The control parameters of core/ctl.c through build/libferry.so: the
-- user name grammar shared by Proxy-Authorization and SOCKS user names
-- (USER-key-value..., keys region, session, pool, rotate), the value
-- checks, which header names are control headers, and the merge (a
-- header wins over the user name).
local ffi = require("ffi")

pcall(ffi.cdef, [[
struct ctl {
    char session[128];
    char region[65];
    char pool[65];
    unsigned char rotate;
    unsigned char rotate_set;
    unsigned char bad;
};
struct ctl_span { uint32_t off; uint32_t len; };
void ctl_clear(struct ctl *k);
size_t ctl_user_parse(const char *user, size_t len, struct ctl *k);
void ctl_merge(struct ctl *dst, const struct ctl *over);
int ctl_is_header(const char *base, struct ctl_span name);
]])
local core = ffi.load("./build/libferry.so")

-- USER's length and the parameters of a user name, as a plain table.
local function parse(name)
  local k = ffi.new("struct ctl")
  local base = tonumber(core.ctl_user_parse(name, #name, k))
  return base, {
    session = ffi.string(k.session), region = ffi.string(k.region), pool = ffi.string(k.pool),
    rotate = k.rotate_set ~= 0 and k.rotate or nil, bad = k.bad ~= 0,
  }
end

local function is_header(name)
  local span = ffi.new("struct ctl_span", 0, #name)
  return core.ctl_is_header(name, span) == 1
end

describe("user name parameters (ctl_user_parse)", function()
  it("keeps the USER-session-KEY form", function()
    local base, p = parse("alice-session-42")
    assert.equal(5, base)
    assert.equal("42", p.session)
    assert.equal("", p.region)
    assert.is_nil(p.rotate)
  end)

  it("reads every key, in any order, and a value may hold dashes", function()
    local base, p = parse("alice-region-eu-west-session-bot-7-pool-binance_eu-rotate-1")
    assert.equal(5, base)
    assert.equal("eu-west", p.region)
    assert.equal("bot-7", p.session)
    assert.equal("binance_eu", p.pool)
    assert.equal(1, p.rotate)
    assert.is_false(p.bad)
    base, p = parse("bob.smith-rotate-0-region-us")
    assert.equal(9, base)
    assert.equal(0, p.rotate)
    assert.equal("us", p.region)
  end)

  it("cuts USER at the first marker and lets a repeated key's last value win", function()
    local base, p = parse("a-session-b-session-c")
    assert.equal(1, base)
    assert.equal("c", p.session)
  end)

  it("is no parameters without a marker, with an empty value, or with an empty USER", function()
    for _, name in ipairs { "alice", "alice-sessions-1", "alice-session-", "alice-region--pool-x",
                            "-session-1", "alice-region", "region-eu" } do
      local base, p = parse(name)
      assert.equal(0, base, name)
      assert.equal("", p.session, name)
    end
  end)

  it("marks invalid values bad: rotate other than 0/1, pool outside its charset, long region", function()
    for _, name in ipairs { "u-rotate-yes", "u-rotate-10", "u-pool-a/b", "u-pool-" .. ("p"):rep(65),
                            "u-region-" .. ("r"):rep(65), "u-region-a\1b" } do
      local base, p = parse(name)
      assert.equal(1, base, name)
      assert.is_true(p.bad, name)
    end
    local _, p = parse("u-region-" .. ("r"):rep(64) .. "-pool-" .. ("p"):rep(64))
    assert.is_false(p.bad)
    assert.equal(64, #p.region)
    assert.equal(64, #p.pool)
  end)

  it("digests a session key too long to keep, keeping long keys apart", function()
    local _, a = parse("u-session-" .. ("k"):rep(300) .. "a")
    local _, b = parse("u-session-" .. ("k"):rep(300) .. "b")
    assert.is_true(#a.session < 128)
    assert.not_equal(a.session, b.session)
  end)

  it("merges: a given field replaces, a missing one keeps, bad stays", function()
    local user = ffi.new("struct ctl")
    core.ctl_user_parse("u-region-eu-session-s1-rotate-1", 31, user)
    local hdr = ffi.new("struct ctl")
    core.ctl_user_parse("h-region-us", 11, hdr)
    core.ctl_merge(user, hdr)
    assert.equal("us", ffi.string(user.region))
    assert.equal("s1", ffi.string(user.session))
    assert.equal(1, user.rotate)
    local off = ffi.new("struct ctl")
    core.ctl_user_parse("h-rotate-0", 10, off)
    core.ctl_merge(user, off)
    assert.equal(0, user.rotate)
    local bad = ffi.new("struct ctl")
    core.ctl_user_parse("h-rotate-x", 10, bad)
    core.ctl_merge(user, bad)
    assert.equal(1, user.bad)
    core.ctl_clear(user)
    assert.equal("", ffi.string(user.region))
    assert.equal(0, user.bad)
  end)
end)

describe("control header names (ctl_is_header)", function()
  it("knows the four, in any case, and nothing else", function()
    for _, n in ipairs { "X-Ferry-Session", "x-ferry-region", "X-FERRY-ROTATE", "X-Ferry-Pool" } do
      assert.is_true(is_header(n), n)
    end
    for _, n in ipairs { "X-Ferry-Proxy", "X-Ferry-Error", "X-Ferry-Sessions", "X-Ferry-",
                         "Host", "X-Ferry-Poo" } do
      assert.is_false(is_header(n), n)
    end
  end)
end)
