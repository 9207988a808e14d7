-- The C core through FFI: the ferry_* surface Lua relies on, the layout
-- of the shared structs, and a few core helpers, called in build/libferry.so.
local ffi = require("ffi")
require("ferry.cdef")

ffi.cdef[[
struct ev_loop;
struct ev_loop *ev_default_loop(unsigned int flags);
extern struct ev_loop *loop;
size_t base64_encode(const unsigned char *in, size_t n, char *out, size_t room);
long base64_decode(const char *in, size_t n, unsigned char *out, size_t room);
size_t http_head_len(const char *p, size_t n);
size_t http_skip_empty_lines(const char *p, size_t n);
void proxy_success(struct ferry_proxy *p, double latency_ms);
void proxy_failure(struct ferry_proxy *p, int kind);
void log_init(int fd);
void log_flush(void);
int open(const char *path, int flags, int mode);
int close(int fd);
]]

local core = ffi.load("./build/libferry.so")
core.loop = core.ev_default_loop(0)

local function tmpfile()
  return os.tmpname()
end

describe("C structs seen from Lua", function()
  -- Compile a probe against core/ferry.h and compare every offset with
  -- what the cdef says, so a drifted field fails here, not in production.
  local fields = {
    ferry_proxy = { "id", "flags", "active", "weight", "consecutive_failures", "scheme",
      "requests", "successes", "failures", "fail_kind", "latency_ewma_ms",
      "last_failure_at", "last_success_at", "health", "rise", "fall", "probe_kind",
      "probe_fails", "downs", "probes_ok", "probes_failed", "probe_latency_ms", "last_probe_at",
      "down_since", "retry_at" },
    ferry_pxstate = { "proxy_id", "exchange", "breaker", "trials", "trials_max", "opens", "bans",
      "consecutive_failures", "requests", "successes", "failures", "bans_total",
      "breaker_until", "trial_at", "banned_until", "last_failure_at", "last_success_at",
      "latency_ewma_ms" },
    ferry_result = { "proxy_id", "exchange", "pool", "ok", "kind", "status", "latency_ms",
      "head", "head_len", "body", "body_len", "host", "host_len", "banned" },
    ferry_req = { "host", "host_len", "port", "method", "method_len", "path", "path_len",
      "client", "client_len", "user", "user_len", "listener", "listener_len", "is_connect",
      "attempt", "ntried", "tried", "pool", "retries", "connect_timeout_ms",
      "first_byte_timeout_ms", "session", "session_len", "head", "head_len", "exchange", "flags",
      "add_headers", "add_headers_len", "drop_headers", "drop_headers_len", "ban_retry" },
    ferry_admin_req = { "method", "method_len", "target", "target_len", "head", "head_len",
      "body", "body_len", "peer", "listener", "cid", "unix_socket" },
    ferry_pg_stats = { "connects", "reconnects", "queries", "errors", "notifies", "up_since",
      "down_since", "attempts", "timeout", "state", "inflight" },
  }
  local c_src = { '#include <stdio.h>', '#include <stddef.h>', '#include "core/ferry.h"',
    'int main(void) {' }
  for st, list in pairs(fields) do
    c_src[#c_src + 1] = string.format('printf("%s sizeof %%zu\\n", sizeof(struct %s));', st, st)
    for _, f in ipairs(list) do
      c_src[#c_src + 1] = string.format('printf("%s %s %%zu\\n", offsetof(struct %s, %s));',
        st, f, st, f)
    end
  end
  c_src[#c_src + 1] = "return 0; }"

  it("has the same size and field offsets in C and in the cdef", function()
    local src, bin = tmpfile() .. ".c", tmpfile()
    local f = assert(io.open(src, "w"))
    f:write(table.concat(c_src, "\n"))
    f:close()
    assert.is_true(os.execute("cc -I. -o " .. bin .. " " .. src) == 0)
    local p = io.popen(bin)
    local checked = 0
    for line in p:lines() do
      local st, field, n = line:match("^(%S+) (%S+) (%d+)$")
      if field == "sizeof" then
        assert.equal(tonumber(n), ffi.sizeof("struct " .. st), st)
      else
        assert.equal(tonumber(n), ffi.offsetof("struct " .. st, field), st .. "." .. field)
      end
      checked = checked + 1
    end
    p:close()
    os.remove(src) os.remove(bin)
    local expected = 0
    for _, list in pairs(fields) do expected = expected + 1 + #list end
    assert.equal(expected, checked)
  end)
end)

describe("C constants seen from Lua", function()
  -- Every enum constant of core/ferry.h ("FERRY_X = value") must be
  -- declared by the cdef with the same value: Lua reads them there.
  local names = {}
  local f = assert(io.open("core/ferry.h"))
  for name in f:read("*a"):gmatch("(FERRY_[%w_]+)%s*=%s*%-?[%dx]") do
    names[#names + 1] = name
  end
  f:close()

  it("declares each enum constant of ferry.h with the C value", function()
    assert.is_true(#names >= 40)
    local c_src = { '#include <stdio.h>', '#include "core/ferry.h"', 'int main(void) {' }
    for _, name in ipairs(names) do
      c_src[#c_src + 1] = string.format('printf("%s %%ld\\n", (long)%s);', name, name)
    end
    c_src[#c_src + 1] = "return 0; }"
    local src, bin = tmpfile() .. ".c", tmpfile()
    local out = assert(io.open(src, "w"))
    out:write(table.concat(c_src, "\n"))
    out:close()
    assert.is_true(os.execute("cc -I. -o " .. bin .. " " .. src) == 0)
    local p = io.popen(bin)
    local checked = 0
    for line in p:lines() do
      local name, v = line:match("^(%S+) (%-?%d+)$")
      local ok, lua_v = pcall(function() return tonumber(ffi.C[name]) end)
      assert.is_true(ok, name .. " is not declared by lua/ferry/cdef.lua")
      assert.equal(tonumber(v), lua_v, name)
      checked = checked + 1
    end
    p:close()
    os.remove(src) os.remove(bin)
    assert.equal(#names, checked)
  end)

  it("offers them by name, so Lua spells no number of ferry.h", function()
    local cdef = require("ferry.cdef")
    assert.equal(0, cdef.OK)
    assert.equal(-1, cdef.ERROR)
    assert.same({ debug = 0, info = 1, warn = 2, error = 3 }, cdef.LOG)
    assert.equal(tonumber(ffi.C.FERRY_FAIL_KINDS), #cdef.FAIL_KINDS)
    assert.equal(tonumber(ffi.C.FERRY_RETRIES_MAX), cdef.RETRIES_MAX)
  end)
end)

describe("ferry_proxy_*", function()
  local err = ffi.new("const char *[1]")

  it("creates a proxy with a fresh id and reads its fields", function()
    local n0 = core.ferry_proxy_count()
    local p = core.ferry_proxy_new("http://10.0.0.1:3128", 1, "10.0.0.1", 3128, nil, nil,
      nil, 3, err)
    assert.is_not_nil(p)
    assert.equal(n0 + 1, core.ferry_proxy_count())
    assert.equal(n0 + 1, p.id)
    assert.equal(3, p.weight)
    assert.equal(1, p.scheme)
    assert.equal(0, p.active)
    assert.equal(p, core.ferry_proxy_get(p.id))
  end)

  it("returns the same proxy, counters intact, for the same key", function()
    local a = core.ferry_proxy_new("k-same", 2, "10.0.0.2", 1080, "u", "p", nil, 1, err)
    core.proxy_failure(a, 1)
    core.proxy_success(a, 12.5)
    local b = core.ferry_proxy_new("k-same", 2, "10.0.0.9", 1081, nil, nil, nil, 5, err)
    assert.equal(a.id, b.id)
    assert.equal(1, tonumber(b.failures))
    assert.equal(1, tonumber(b.fail_kind[1]))
    assert.equal(1, tonumber(b.successes))
    assert.equal(5, b.weight)
    assert.equal(0, b.consecutive_failures)
    assert.is_true(b.latency_ewma_ms > 0)
  end)

  it("counts consecutive failures until a success", function()
    local p = core.ferry_proxy_new("k-consec", 1, "127.0.0.1", 9, nil, nil, nil, 1, err)
    core.proxy_failure(p, 0)
    core.proxy_failure(p, 0)
    assert.equal(2, p.consecutive_failures)
    assert.is_true(p.last_failure_at > 0)
    core.proxy_success(p, 1)
    assert.equal(0, p.consecutive_failures)
  end)

  it("rejects invalid arguments with a reason", function()
    assert.is_true(core.ferry_proxy_new("bad", 1, "", 80, nil, nil, nil, 1, err) == nil)
    assert.equal("invalid proxy arguments", ffi.string(err[0]))
    assert.is_true(core.ferry_proxy_new("bad", 9, "h", 80, nil, nil, nil, 1, err) == nil)
    -- Direct is no proxy, and FERRY_SCHEMES is past the connector table.
    assert.is_true(core.ferry_proxy_new("bad", 0, "h", 80, nil, nil, nil, 1, err) == nil)
    assert.is_true(core.ferry_proxy_new("bad", 8, "h", 80, nil, nil, nil, 1, err) == nil)
    assert.is_true(core.ferry_proxy_new("bad", 1, "h", 70000, nil, nil, nil, 1, err) == nil)
  end)

  it("sets and clears flags", function()
    local p = core.ferry_proxy_new("k-flags", 1, "127.0.0.1", 8, nil, nil, nil, 1, err)
    assert.equal(0, core.ferry_proxy_set_flag(p, 2, 1))
    assert.equal(2, p.flags)
    core.ferry_proxy_set_flag(p, 2, 0)
    assert.equal(0, p.flags)
    assert.equal(-1, core.ferry_proxy_set_flag(nil, 2, 1))
  end)

  it("finds every proxy again by key among 20 000", function()
    local ids = {}
    for i = 1, 20000 do
      ids[i] = core.ferry_proxy_new("bulk-" .. i, 1, "10.1.0.1", 1000 + i % 60000, nil, nil,
        nil, 1, err).id
    end
    for i = 1, 20000, 997 do
      local again = core.ferry_proxy_new("bulk-" .. i, 1, "10.1.0.1", 1000 + i % 60000, nil,
        nil, nil, 1, err)
      assert.equal(ids[i], again.id)
    end
    assert.equal(ids[20000] - ids[1], 19999)
  end)

  it("returns NULL for an unknown id", function()
    assert.is_true(core.ferry_proxy_get(0) == nil)
    assert.is_true(core.ferry_proxy_get(4000000) == nil)
  end)
end)

describe("base64", function()
  local function enc(s)
    local out = ffi.new("char[?]", #s * 2 + 8)
    local n = core.base64_encode(s, #s, out, #s * 2 + 8)
    return ffi.string(out, n)
  end
  local function dec(s)
    local out = ffi.new("unsigned char[?]", #s + 1)
    local n = core.base64_decode(s, #s, out, #s + 1)
    if n < 0 then return nil end
    return ffi.string(out, n)
  end

  it("encodes as RFC 4648 does", function()
    assert.equal("", enc(""))
    assert.equal("Zg==", enc("f"))
    assert.equal("Zm8=", enc("fo"))
    assert.equal("Zm9v", enc("foo"))
    assert.equal("YWxpY2U6c2VjcmV0", enc("alice:secret"))
  end)

  it("round-trips and rejects invalid input", function()
    for _, s in ipairs { "a", "ab", "abc", "user:p@ss:w0rd", string.rep("\255", 7) } do
      assert.equal(s, dec(enc(s)))
    end
    assert.is_nil(dec("not*base64"))
  end)
end)

describe("http_head_len", function()
  local function hl(s) return tonumber(core.http_head_len(s, #s)) end

  it("finds the end of a head by its empty line", function()
    assert.equal(18, hl("GET / HTTP/1.1\r\n\r\n"))
    assert.equal(16, hl("GET / HTTP/1.1\n\n"))
    assert.equal(18, hl("GET / HTTP/1.1\r\n\r\nBODY"))
  end)

  it("says 0 while the head is incomplete", function()
    assert.equal(0, hl(""))
    assert.equal(0, hl("GET / HTTP/1.1\r\nHost: x\r\n"))
    assert.equal(0, hl("GET / HTTP/1.1\r\nHost: x\r\n\r"))
  end)

  it("skips the empty lines a client may send before a request", function()
    local s = "\r\n\r\nGET"
    assert.equal(4, tonumber(core.http_skip_empty_lines(s, #s)))
  end)
end)

describe("log lines", function()
  it("writes one JSON object per line, with escapes", function()
    local cjson = require("cjson")
    local path = tmpfile()
    local fd = ffi.C.open(path, 577, 420) -- O_WRONLY|O_CREAT|O_TRUNC, 0644
    core.log_flush() -- earlier specs' event lines (health transitions) go where they were meant
    core.log_init(fd)
    core.ferry_log(2, "FERRY-9999", 'quote " backslash \\ newline \n tab \t end')
    core.log_flush()
    core.log_init(2)
    ffi.C.close(fd)
    local f = io.open(path)
    local line = f:read("*l")
    f:close()
    os.remove(path)
    local doc = cjson.decode(line)
    assert.equal("warn", doc.level)
    assert.equal("FERRY-9999", doc.code)
    assert.equal('quote " backslash \\ newline \n tab \t end', doc.msg)
    assert.matches("^%d%d%d%d%-%d%d%-%d%dT", doc.time)
  end)
end)
