-- The queue of lua/ferry/pg.lua against a fake core (no PostgreSQL):
-- FIFO, one in flight, coalescing by key, the bound, offline "fail",
-- setup queries first and alone until the session is ready, a write in
-- flight handed back on loss (merged into a later one with its key), a
-- read failed, parameters as text.
local real_ffi = require("ffi")
require("ferry.cdef")

local fake
local C = setmetatable({}, { __index = real_ffi.C })
C.ferry_now = function() return fake.now end
C.ferry_log = function(_, code, msg) fake.logs[#fake.logs + 1] = real_ffi.string(code) .. " " ..
  real_ffi.string(msg) end
C.ferry_pg_state = function() return fake.state end
C.ferry_pg_busy = function() return fake.busy end
C.ferry_pg_configure = function() return 0 end
C.ferry_pg_target = function() return "db:5432/ferry" end
C.ferry_pg_error = function() return "server closed the connection" end
C.ferry_pg_send = function(sql, n, ptrs)
  local params = {}
  for i = 1, n do params[i] = ptrs[i - 1] ~= nil and real_ffi.string(ptrs[i - 1]) or "NULL" end
  fake.sent[#fake.sent + 1] = real_ffi.string(sql) .. (n > 0 and (" " .. table.concat(params, ",")) or "")
  fake.busy = 1
  return 0
end
C.ferry_pg_result_status = function() return fake.res end
C.ferry_pg_result_error = function() return "bad" end
C.ferry_pg_result_sqlstate = function() return "42000" end
C.ferry_pg_nrows = function() return 0 end
C.ferry_pg_nfields = function() return 0 end
C.ferry_pg_affected = function() return 1 end
C.ferry_pg_stats = function() end

local ffi_shim = setmetatable({ C = C }, { __index = real_ffi })

local pg, UP, DOWN

local function load()
  package.loaded["ferry.pg"] = nil
  package.loaded.ffi = ffi_shim
  local ok, m = pcall(require, "ferry.pg")
  package.loaded.ffi = real_ffi
  assert(ok, m)
  return m
end

-- The core answers the query in flight.
local function answer(res)
  fake.busy = 0
  fake.res = res or real_ffi.C.FERRY_PG_RES_OK
  pg.event(real_ffi.C.FERRY_PG_EV_RESULT)
end

describe("pg queue", function()
  before_each(function()
    UP, DOWN = real_ffi.C.FERRY_PG_UP, real_ffi.C.FERRY_PG_DOWN
    fake = { now = 100, logs = {}, sent = {}, state = UP, busy = 0 }
    pg = load()
    pg.set_session(nil)
    assert(pg.configure("host=db", { queue = 3 }))
    pg.event(real_ffi.C.FERRY_PG_EV_UP) -- no session hook: ready at once
  end)

  it("sends one query at a time, in order, with parameters as text", function()
    local got = {}
    assert(pg.query("a", { "x", 42, 1.5, true, pg.NULL }, function(res) got[#got + 1] = res end))
    assert(pg.query("b", nil, function(res) got[#got + 1] = res end))
    assert.same({ "a x,42,1.5,true,NULL" }, fake.sent)
    answer()
    assert.same({ "a x,42,1.5,true,NULL", "b" }, fake.sent)
    answer()
    assert.equal(2, #got)
    assert.equal(1, got[1].affected)
  end)

  it("replaces a queued change with a later one of the same key, in place", function()
    local out = {}
    pg.query("first", nil, nil, { key = "k0" })      -- in flight
    pg.query("old", nil, function(_, e) out[#out + 1] = "old:" .. tostring(e) end, { key = "k" })
    pg.query("other", nil, nil, { key = "j" })
    pg.query("new", nil, function(_, e) out[#out + 1] = "new:" .. tostring(e) end, { key = "k" })
    answer()
    answer()
    answer()
    assert.same({ "first", "new", "other" }, fake.sent)
    assert.same({ "old:nil", "new:nil" }, out)
    assert.equal(1, pg.stats().coalesced)
  end)

  it("drops past the bound with FERRY-8006, once per window", function()
    pg.query("inflight")
    for i = 1, 3 do assert(pg.query("q" .. i)) end
    local ok, err = pg.query("q4")
    assert.is_nil(ok)
    assert.equal("the postgres queue is full", err)
    assert.is_nil((pg.query("q5")))
    assert.equal(2, pg.stats().dropped)
    local n = 0
    for _, l in ipairs(fake.logs) do if l:find("FERRY-8006", 1, true) then n = n + 1 end end
    assert.equal(1, n)
  end)

  it("on loss: fails the read in flight and queued reads, keeps writes, resends", function()
    local r1, r2
    pg.query("read1", nil, function(_, e) r1 = e end, { offline = "fail" })
    pg.query("write1", nil, nil, { key = "w" })
    pg.query("read2", nil, function(_, e) r2 = e end, { offline = "fail" })
    fake.state, fake.busy = DOWN, 0
    pg.event(real_ffi.C.FERRY_PG_EV_DOWN)
    assert.truthy(r1:find("lost", 1, true))
    assert.truthy(r2:find("lost", 1, true))
    local ok, err = pg.query("read3", nil, function() end, { offline = "fail" })
    assert.is_nil(ok)
    assert.truthy(err:find("down", 1, true))
    assert.equal("down", pg.state())
    fake.state = UP
    pg.event(real_ffi.C.FERRY_PG_EV_UP)
    assert.same({ "read1", "write1" }, fake.sent)
  end)

  it("hands a write in flight back, merged into a later one with its key", function()
    local out = {}
    pg.query("v1", nil, function(_, e) out[#out + 1] = "v1:" .. tostring(e) end, { key = "k" })
    pg.query("v2", nil, function(_, e) out[#out + 1] = "v2:" .. tostring(e) end, { key = "k" })
    fake.state, fake.busy = DOWN, 0
    pg.event(real_ffi.C.FERRY_PG_EV_DOWN)
    fake.state = UP
    pg.event(real_ffi.C.FERRY_PG_EV_UP)
    answer()
    -- v1 went out once, then only v2 (the later value) is sent again.
    assert.same({ "v1", "v2" }, fake.sent)
    assert.same({ "v1:nil", "v2:nil" }, out)
    assert.is_nil(fake.sent[3])
  end)

  it("runs the session setup first and alone, then the queue", function()
    local done
    pg.set_session({ setup = function(d) done = d
      pg.query("migrate", nil, nil, { setup = true }) end })
    fake.state, fake.busy = DOWN, 0
    pg.event(real_ffi.C.FERRY_PG_EV_DOWN)
    pg.query("queued-write")
    fake.state = UP
    pg.event(real_ffi.C.FERRY_PG_EV_UP)
    assert.same({ "migrate" }, fake.sent)
    assert.equal("connecting", pg.state())
    answer()
    assert.same({ "migrate" }, fake.sent)
    done(true)
    assert.equal("up", pg.state())
    assert.same({ "migrate", "queued-write" }, fake.sent)
  end)

  it("holds the queue when the setup refuses (a newer schema)", function()
    local done
    pg.set_session({ setup = function(d) done = d end })
    fake.state = DOWN
    pg.event(real_ffi.C.FERRY_PG_EV_DOWN)
    pg.query("w")
    fake.state = UP
    pg.event(real_ffi.C.FERRY_PG_EV_UP)
    done(false, "schema newer than this ferry")
    assert.equal("down", pg.state())
    assert.same({}, fake.sent)
    assert.equal("schema newer than this ferry", pg.stats().held)
  end)

  it("refuses bad parameters as misuse", function()
    assert.has_error(function() pg.query("x", { {} }) end)
    assert.has_error(function() pg.query("x", { 0 / 0 }) end)
    assert.has_error(function() pg.query("x", { "a\0b" }) end)
    assert.has_error(function() pg.query(5) end)
  end)
end)
