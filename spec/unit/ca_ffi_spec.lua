-- Ferry's CA through the FFI surface of build/libferry.so, as apply.lua
-- drives it at start and reload: a CA that does not load says why with
-- its code; the one in use is replaced, kept (same CA: the cache bound
-- may change) or dropped; the minting counters read back.
local ffi = require("ffi")
require("ferry.cdef")
pcall(ffi.cdef, [[
void log_init(int fd);
int open(const char *path, int flags, int mode);
]])
local core = ffi.load("./build/libferry.so", true)
core.log_init(ffi.C.open("/dev/null", 1, 0)) -- log lines go nowhere

local dir = os.tmpname()

local function stats()
  local m = ffi.new("struct ferry_mint_stats")
  core.ferry_mint_stats(m)
  return m
end

local function load(cert, key)
  local err = ffi.new("const char *[1]")
  local ca = core.ferry_ca_load(cert, key, err)
  if ca == nil then return nil, ffi.string(err[0]) end
  return ffi.gc(ca, core.ferry_ca_release)
end

local function use(ca, cap)
  local err = ffi.new("const char *[1]")
  assert.equal(0, core.ferry_ca_use(ca, cap, err))
end

describe("ferry_ca_*", function()
  setup(function()
    os.remove(dir)
    local bin = os.getenv("FERRY_BIN") or "bin/ferry"
    for _, d in ipairs { "a", "b" } do
      assert(os.execute(bin .. " ca init " .. dir .. "/" .. d .. " >/dev/null") == 0)
    end
  end)

  teardown(function()
    use(nil, 0)
    os.execute("rm -rf " .. dir)
  end)

  it("refuses what does not load, with the code and the file", function()
    local ca, err = load(dir .. "/a/ca.crt", dir .. "/b/ca.key")
    assert.is_nil(ca)
    assert.truthy(err:find("^FERRY%-0181: ca_key .*/b/ca.key is not the key of ca_cert"), err)
    ca, err = load(dir .. "/a/ca.crt", dir .. "/nope.key")
    assert.is_nil(ca)
    assert.truthy(err:find("FERRY-0180: ca_key " .. dir .. "/nope.key: cannot read", 1, true), err)
    ca, err = load(dir .. "/a/ca.key", dir .. "/a/ca.key")
    assert.is_nil(ca)
    assert.truthy(err:find("FERRY%-0180: ca_cert .* not a PEM certificate"), err)
  end)

  it("puts a CA in use, keeps it across a reload, replaces and drops it", function()
    use(nil, 0)
    assert.equal(0, stats().ready)
    local a = assert(load(dir .. "/a/ca.crt", dir .. "/a/ca.key"))
    use(a, 10)
    assert.equal(1, stats().ready)
    assert.equal(10, stats().cap)
    -- The same CA loaded again (a reload): kept, with the new bound.
    local a2 = assert(load(dir .. "/a/ca.crt", dir .. "/a/ca.key"))
    use(a2, 20)
    assert.equal(20, stats().cap)
    -- The core holds its own reference: the handles may go.
    a, a2 = nil, nil -- luacheck: ignore
    collectgarbage()
    collectgarbage()
    assert.equal(1, stats().ready)
    local b = assert(load(dir .. "/b/ca.crt", dir .. "/b/ca.key"))
    use(b, 0) -- 0: the default bound
    assert.equal(1000, stats().cap)
    assert.equal(0, stats().cached)
    use(nil, 0)
    assert.equal(0, stats().ready)
    assert.equal(0, stats().cap)
  end)
end)
