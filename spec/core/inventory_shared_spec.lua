-- The shared inventory's pieces without a database (build/libferry.so):
-- ferry.store_pg's statements, rows and sealing, ferry.store's choice of
-- backend, the conflict rule of inventory.apply_row, and admin.defer's
-- early answer.  spec/integration/55_inventory_spec.lua runs the whole
-- with a real PostgreSQL and three nodes.
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

-- A fleet hub that records writes and answers them when told to.
local writes, reads = {}, {}
package.loaded["ferry.fleet"] = {
  node_id = function() return "node-a" end,
  write = function(key, sql, params, cb)
    writes[#writes + 1] = { key = key, sql = sql, params = params, cb = cb }
    return true
  end,
  read = function(sql, params, cb)
    reads[#reads + 1] = { sql = sql, params = params, cb = cb }
    return true
  end,
  on = function() end,
  on_up = function() end,
}
package.loaded["ferry.pg"] = { NULL = setmetatable({}, { __tostring = function() return "NULL" end }),
                               state = function() return "up" end }

local store = require("ferry.store")
local store_pg = require("ferry.store_pg")
local inventory = require("ferry.inventory")

local KEY = string.rep("k", 32)

describe("ferry.store_pg", function()
  after_each(function() store_pg.set_key(nil) end)

  it("seals a URL with credentials and opens it with the same key only", function()
    store_pg.set_key(KEY)
    local sealed = assert(store_pg.seal("http://u:secret@10.0.0.1:3128"))
    assert.is_nil(sealed:find("secret", 1, true))
    assert.equal("enc:v1:", sealed:sub(1, 7))
    assert.equal("http://u:secret@10.0.0.1:3128", store_pg.open(sealed))
    -- A URL without credentials stays as it is.
    assert.equal("http://10.0.0.1:3128", store_pg.seal("http://10.0.0.1:3128"))
    store_pg.set_key(string.rep("x", 32))
    local plain, why = store_pg.open(sealed)
    assert.is_nil(plain)
    assert.matches("another key", why)
    store_pg.set_key(nil)
    plain, why = store_pg.open(sealed)
    assert.is_nil(plain)
    assert.matches("no store key", why)
  end)

  it("reads a table row and a message alike", function()
    local r = store_pg.row_of({ key = "a", url = "http://10.0.0.1:1", pool = "main",
      opts = '{"weight":3}', enabled = "f", removed = "f", u = "1764633600123456" })
    assert.same({ key = "a", url = "http://10.0.0.1:1", pool = "main", opts = { weight = 3 },
                  enabled = false, removed = false, u = 1764633600123456 }, r)
    local cjson = require("cjson")
    local m = store_pg.row_of(cjson.decode('{"t":"proxy","n":"b","k":"a","op":"del",' ..
      '"u":"1764633600123999","r":true,"e":false,"pool":null,"url":null,"opts":null}'))
    assert.is_true(m.removed)
    assert.is_nil(m.pool)
    assert.is_nil(m.url)
    assert.equal(1764633600123999, m.u)
  end)

  it("writes each change as one statement with its NOTIFY, coalesced per key", function()
    store.use("pg")
    assert.equal("pg", store.backend())
    assert.is_true(store.async())
    writes = {}
    store_pg.set_key(KEY)
    assert.is_true(store.put("a", "http://u:p@10.0.0.1:1", "main", { weight = 2 }, true))
    assert.is_true(store.set_enabled("a", false, nil, { url = "http://u:p@10.0.0.1:1",
      pool = "main", opts = {} }))
    assert.is_true(store.delete("a"))
    assert.equal(3, #writes)
    for _, w in ipairs(writes) do
      assert.equal("proxy:a", w.key)
      assert.matches("pg_notify%('ferry_fleet'", w.sql)
      assert.matches("clock_timestamp%(%)", w.sql)
      assert.equal("node-a", w.params[6])
      -- The URL leaves sealed.
      assert.is_nil(tostring(w.params[2]):find("u:p@", 1, true))
    end
    assert.same({ "put", "set", "del" }, { writes[1].params[7], writes[2].params[7],
      writes[3].params[7] })
    assert.matches("removed = false", writes[1].sql)
    assert.matches("WHERE NOT p%.removed", writes[2].sql)
    assert.matches("removed = true", writes[3].sql)
    -- A key that is a URL with credentials is sealed too, the same way each
    -- time (ON CONFLICT (key) finds its row), and opens back.
    writes = {}
    local url_key = "http://u:p@10.0.0.9:1"
    assert.is_true(store.put(url_key, url_key, "main", {}, true))
    assert.is_true(store.delete(url_key))
    local k1, k2 = writes[1].params[1], writes[2].params[1]
    assert.equal("enc:v1:", k1:sub(1, 7))
    assert.equal(k1, k2)
    assert.equal(url_key, store_pg.row_of({ key = k1, url = writes[1].params[2], pool = "main",
      opts = "{}", enabled = "t", removed = "f", u = "1" }).key)
    store.use("sqlite")
    assert.equal("sqlite", store.backend())
    assert.is_false(store.async())
  end)
end)

describe("inventory.apply_row (the conflict rule)", function()
  before_each(function() inventory._reset() end)

  local function row(t)
    t.key = t.key or "p1"
    t.opts = t.opts or { id = "p1" }
    if t.removed == nil then t.removed = false end
    if t.enabled == nil then t.enabled = true end
    return t
  end

  it("adds, changes and removes by database time; an older row is ignored", function()
    assert.equal("changed", inventory.apply_row(row { url = "http://10.0.0.1:1", pool = "main",
      u = 100 }))
    assert.equal(1, inventory.count())
    assert.equal("same", inventory.apply_row(row { url = "http://10.0.0.1:1", pool = "main",
      u = 101 }))
    assert.equal("changed", inventory.apply_row(row { url = "http://10.0.0.1:1", pool = "main",
      enabled = false, u = 102 }))
    -- Older than what is held: ignored, whatever it says.
    assert.equal("older", inventory.apply_row(row { removed = true, u = 90 }))
    assert.equal(1, inventory.count())
    assert.equal("changed", inventory.apply_row(row { removed = true, u = 103 }))
    assert.equal(0, inventory.count())
    -- A replayed add older than the tombstone does not resurrect it.
    assert.equal("older", inventory.apply_row(row { url = "http://10.0.0.1:1", pool = "main",
      u = 102 }))
    assert.equal(0, inventory.count())
  end)

  it("asks for the row when a message had no room for the URL", function()
    assert.equal("read", inventory.apply_row(row { pool = "main", u = 5 }))
    assert.equal(0, inventory.count())
  end)

  it("drops rows the database no longer has, and only those", function()
    inventory.apply_row(row { key = "a", url = "http://10.0.0.1:1", pool = "main", u = 1 })
    inventory.apply_row(row { key = "b", url = "http://10.0.0.2:1", pool = "main", u = 1 })
    assert.equal(1, inventory.drop_unseen({ a = true }))
    assert.equal(1, inventory.count())
  end)
end)

describe("admin.defer", function()
  local admin = require("ferry.admin")

  it("an answer given before the handler returned goes at once", function()
    local w = admin.defer({ cid = "x" }, 5, 504, { error = "FERRY-7716" })
    assert.is_true(admin.answer(w, 201, { ok = true }))
    assert.same({ 201, { ok = true } }, { w.early[1], w.early[2] })
    -- A second answer is refused.
    assert.is_false(admin.answer(w, 200, {}))
  end)

  it("an answer nobody waits for any more is dropped", function()
    local w = admin.defer({ cid = "y" }, 5, 504, {})
    w.returned = true
    assert.is_false(admin.answer(w, 201, {}))
  end)

  it("says how many answers may still wait", function()
    assert.equal(32, admin.wait_room())
  end)
end)
