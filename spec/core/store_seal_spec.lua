-- Sealed credentials in the embedded store (core/store_seal.c, secret.c)
-- through FFI on build/libferry.so: what the file holds with a key, what
-- reads give back, a plaintext store sealed on open, a missing, wrong or
-- malformed key refused, a tampered value never read, sealed health keys,
-- and the constant-time secret comparison.
local ffi = require("ffi")
require("ferry.cdef")

ffi.cdef[[
struct ev_loop;
struct ev_loop *ev_default_loop(unsigned int flags);
extern struct ev_loop *loop;
void log_init(int fd);
int open(const char *path, int flags, int mode);
]]

local core = ffi.load("./build/libferry.so", true)
core.loop = core.ev_default_loop(0)
core.log_init(core.open("/dev/null", 1, 0))

local function sh(cmd)
  local p = io.popen(cmd)
  local out = p:read("*a")
  p:close()
  return (out:gsub("%s+$", ""))
end

local TMP = sh("pwd") .. "/spec/tmp/store-seal"
assert(os.execute("rm -rf " .. TMP .. " && mkdir -p " .. TMP) == 0, "cannot make " .. TMP)
local seq = 0
local function fresh_db()
  seq = seq + 1
  return string.format("%s/%d.db", TMP, seq)
end

-- All the file holds, as sqlite3 shows it.
local function dump(path)
  return sh("sqlite3 '" .. path .. "' .dump")
end

local function query(path, sql)
  return sh("sqlite3 '" .. path .. "' \"" .. sql .. "\"")
end

local KEY = string.rep("k", 32)
local OTHER = string.rep("o", 32)
local PW = "Pw-7730-secret"
local URL = "http://alice:" .. PW .. "@10.9.0.1:3128"
local SOCKS = "socks5://bob:" .. PW .. "x@10.9.0.2:1080"

local err = ffi.new("const char *[1]")
local function errstr() return err[0] ~= nil and ffi.string(err[0]) or nil end

local function open(path, key)
  err[0] = nil
  local rc = core.ferry_store_open_key(path, key, key and #key or 0, err)
  return rc, errstr()
end

local function put(key, url, pool)
  assert.equal(0, core.ferry_store_put_proxy(key, url, pool, nil, 1, err), errstr())
end

local function list()
  local s = core.ferry_store_proxies_json(err)
  assert(s ~= nil, errstr())
  return require("cjson").decode(ffi.string(s))
end

describe("store sealed with a key", function()
  after_each(function() core.ferry_store_close() end)

  it("keeps URLs with credentials and URL keys sealed; reads give them back", function()
    local path = fresh_db()
    assert.equal(0, open(path, KEY))
    put(URL, URL, "main")            -- a proxy keyed by its URL
    put("named", SOCKS, "main")      -- a proxy with an id
    put("plain", "http://10.9.0.3:8080", "main")
    local text = dump(path)
    assert.is_nil(text:find(PW, 1, true), text)
    assert.is_nil(text:find("alice", 1, true), text)
    -- Ids and URLs without credentials stay readable for an operator.
    assert.matches("'named'", text, 1, true)
    assert.matches("http://10.9.0.3:8080", text, 1, true)
    assert.equal("3", query(path, "SELECT count(*) FROM proxies WHERE url LIKE 'enc:v1:%' " ..
      "OR url = 'http://10.9.0.3:8080'"))
    assert.equal("2", query(path, "SELECT value FROM meta WHERE key = 'schema_version'"))
    local l = list()
    assert.same({ URL, "named", "plain" }, { l[1].key, l[2].key, l[3].key })
    assert.same({ URL, SOCKS, "http://10.9.0.3:8080" }, { l[1].url, l[2].url, l[3].url })
    put(URL, URL, "other")  -- the same key: replaced, not added
    assert.equal("3", query(path, "SELECT count(*) FROM proxies"))
    assert.equal("other", list()[1].pool)
    assert.equal(0, core.ferry_store_set_enabled(URL, 0, err), errstr())
    assert.is_false(list()[1].enabled)
    assert.equal(0, core.ferry_store_delete_proxy(URL, err), errstr())
    assert.equal(2, #list())
    -- Two seals of one URL differ (random nonces), and both open.
    put("twin1", URL, "main")
    put("twin2", URL, "main")
    local a = query(path, "SELECT url FROM proxies WHERE key = 'twin1'")
    local b = query(path, "SELECT url FROM proxies WHERE key = 'twin2'")
    assert.matches("^enc:v1:", a)
    assert.are_not.equal(a, b)
    l = list()
    assert.same({ URL, URL }, { l[3].url, l[4].url })
  end)

  it("opens again with the same key, and refuses another key or none", function()
    local path = fresh_db()
    assert.equal(0, open(path, KEY))
    put(URL, URL, "main")
    core.ferry_store_close()
    local before = dump(path)

    local rc, msg = open(path, OTHER)
    assert.equal(-1, rc)
    assert.matches("FERRY-0212", msg, 1, true)
    assert.matches(path, msg, 1, true)
    rc, msg = open(path, nil)
    assert.equal(-1, rc)
    assert.matches("FERRY-0211", msg, 1, true)
    assert.equal(0, core.ferry_store_is_open())
    assert.equal(before, dump(path))

    assert.equal(0, open(path, KEY))
    assert.equal(URL, list()[1].url)
  end)

  it("refuses a key that is not 32 bytes", function()
    local rc, msg = open(fresh_db(), "short")
    assert.equal(-1, rc)
    assert.matches("FERRY-0210", msg, 1, true)
  end)

  it("seals a plaintext store's credentials when it is opened with a key", function()
    local path = fresh_db()
    assert.equal(0, open(path, nil))
    put(URL, URL, "main")
    put("named", SOCKS, nil)
    core.ferry_store_close()
    assert.matches(PW, dump(path), 1, true)
    assert.equal("1", query(path, "SELECT value FROM meta WHERE key = 'schema_version'"))

    assert.equal(0, open(path, KEY))
    assert.is_nil(dump(path):find(PW, 1, true))
    local l = list()
    assert.same({ URL, "named" }, { l[1].key, l[2].key })
    assert.same({ URL, SOCKS }, { l[1].url, l[2].url })
    -- Opening again changes nothing more.
    core.ferry_store_close()
    local sealed = dump(path)
    assert.equal(0, open(path, KEY))
    assert.equal(sealed, dump(path))
  end)

  it("never reads a sealed value that was tampered with", function()
    local path = fresh_db()
    assert.equal(0, open(path, KEY))
    put("named", SOCKS, "main")
    core.ferry_store_close()
    -- Flip one base64 character of the sealed URL.
    local v = query(path, "SELECT url FROM proxies WHERE key = 'named'")
    local i = #v - 5
    local flipped = v:sub(1, i - 1) .. (v:sub(i, i) == "A" and "B" or "A") .. v:sub(i + 1)
    assert.equal("", query(path, "UPDATE proxies SET url = '" .. flipped .. "'"))
    assert.equal(0, open(path, KEY))
    assert.is_true(core.ferry_store_proxies_json(err) == nil)
    assert.matches("FERRY-0212", errstr(), 1, true)
    assert.is_nil(errstr():find(PW, 1, true))
  end)

  it("keeps health rows of proxies keyed by their URL sealed, and restores them", function()
    local path = fresh_db()
    assert.equal(0, open(path, KEY))
    local p = core.ferry_proxy_new(URL, 1, "10.9.0.9", 3128, "alice", PW, nil, 1, err)
    assert(p ~= nil, errstr())
    core.ferry_health_mark(p, 0, "spec")
    assert.is_true(core.ferry_store_save_health(err) >= 1, errstr())
    assert.is_nil(dump(path):find(PW, 1, true))
    core.ferry_store_close()
    core.ferry_health_mark(p, 1, "spec")
    assert.equal(0, open(path, KEY))
    assert.is_true(core.ferry_store_load_health(err) >= 1, errstr())
    assert.equal(1, bit.band(p.flags, 1)) -- saved down, restored down
  end)
end)

describe("ferry_secret_equal", function()
  local function eq(a, b) return core.ferry_secret_equal(a, #a, b, #b) == 1 end

  it("is true only for the same bytes", function()
    assert.is_true(eq("token-0123456789", "token-0123456789"))
    assert.is_false(eq("token-0123456789", "token-0123456788"))
    assert.is_false(eq("token-0123456789", "token-012345678"))
    assert.is_false(eq("token-0123456789", ""))
    assert.is_true(eq("", ""))
    assert.is_false(eq("a\0b", "a\0c"))
  end)
end)
