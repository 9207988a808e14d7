-- The shared parts of the fleet (lua/ferry/fleet_bans.lua,
-- fleet_leases.lua, fleet_pins.lua, fleet_shared.lua) against stand-ins
-- for the core (pair states as real struct ferry_pxstate, a clock the
-- spec moves) and for the hub (writes and reads recorded, answered by
-- the spec).
local ffi = require("ffi")
require("ferry.cdef")
local ctx = require("ferry.fleet_ctx")
local bans = require("ferry.fleet_bans")
local leases = require("ferry.fleet_leases")
local pins = require("ferry.fleet_pins")
local shared = require("ferry.fleet_shared")
local changes = require("ferry.fleet_changes")

local OPEN, CLOSED = 1, 0

-- The world a test runs in.
local function world()
  local w = { t = 1000.0, logs = {}, writes = {}, reads = {}, timers = {}, active = {},
              pins = {}, states = {}, up = true, handlers = {}, ups = {} }
  local C = {}
  function C.ferry_now() return w.t end
  function C.ferry_log(level, code, msg) w.logs[#w.logs + 1] = { level = level, code = code, msg = msg } end
  function C.ferry_pxstate_get(id, ex)
    local k = tonumber(id) .. ":" .. tonumber(ex)
    if not w.states[k] then
      local x = ffi.new("struct ferry_pxstate")
      x.proxy_id, x.exchange = id, ex
      w.states[k] = x
    end
    return w.states[k]
  end
  function C.ferry_ban(x, secs, _reason)
    if secs == 0 then
      x.banned_until, x.bans = 0, 0
      return 0
    end
    x.banned_until = w.t + secs
    x.bans = x.bans + 1
    return 0
  end
  function C.ferry_breaker_open(x, secs)
    x.breaker, x.breaker_until, x.opens = OPEN, w.t + secs, x.opens + 1
    return 0
  end
  function C.ferry_breaker_close(x)
    x.breaker, x.breaker_until, x.opens = CLOSED, 0, 0
    return 0
  end
  function C.ferry_proxy_lease(id, delta)
    w.active[id] = math.max(0, (w.active[id] or 0) + delta)
    return 0
  end
  function C.ferry_sticky_set(key, _len, id, ttl)
    w.pins[key] = { id = tonumber(id), expires = w.t + ttl }
    return 0
  end
  function C.ferry_sticky_get(key)
    local p = w.pins[key]
    return p and p.expires > w.t and p.id or 0
  end
  local fleet = {}
  function fleet.enabled() return true end
  function fleet.up() return w.up end
  function fleet.node_id() return "A" end
  function fleet.write(key, sql, params, cb)
    w.writes[#w.writes + 1] = { key = key, sql = sql, params = params, cb = cb }
    return true
  end
  function fleet.read(sql, params, cb)
    w.reads[#w.reads + 1] = { sql = sql, params = params, cb = cb }
    return true
  end
  function fleet.on(kind, fn) w.handlers[kind] = fn end
  function fleet.on_up(fn) w.ups[#w.ups + 1] = fn end
  function fleet.on_drain(fn) w.drain = fn end
  local timer = {}
  function timer.after(s, fn)
    w.timers[#w.timers + 1] = { at = w.t + s, fn = fn }
    return #w.timers
  end
  function timer.every(s, fn)
    w.timers[#w.timers + 1] = { at = w.t + s, fn = fn, every = s }
    return #w.timers
  end
  function timer.cancel(h) if w.timers[h] then w.timers[h].cancelled = true end end
  -- Run the timers due by now.
  function w.tick()
    for _, t in ipairs(w.timers) do
      if not t.cancelled and t.at <= w.t then
        if t.every then t.at = t.at + t.every else t.cancelled = true end
        t.fn(w.t)
      end
    end
  end
  -- The writes whose coalescing key starts with prefix.
  function w.keyed(prefix)
    local out = {}
    for _, wr in ipairs(w.writes) do
      if wr.key:sub(1, #prefix) == prefix then out[#out + 1] = wr end
    end
    return out
  end
  function w.codes(code)
    local n = 0
    for _, l in ipairs(w.logs) do if l.code == code then n = n + 1 end end
    return n
  end
  ctx.set_deps { C = C, fleet = fleet, timer = timer }
  shared._reset()
  changes._reset()
  local exchanges = { bin = { id = 1, name = "bin", pool = "p" },
                      okx = { id = 2, name = "okx", pool = "p" },
                      plain = { id = 3, name = "plain", pool = "nb" } }
  local run = {
    cfg = { pool_order = { "p", "site" }, pools = {
      p = { proxies = { { cid = 1, id = "px1" }, { cid = 2, url = "http://u:pw@10.0.0.2:3128" } } },
      site = { kind = "backends", proxies = { { cid = 9, url = "http://10.0.0.9:80" } } },
    } },
    exchanges = exchanges,
    exchange_by_id = { [1] = exchanges.bin, [2] = exchanges.okx, [3] = exchanges.plain },
    pools = { p = { breaker = { settings = {} } }, nb = {} },
  }
  shared.committed(run)
  w.C, w.run = C, run
  return w
end

describe("fleet: bans", function()
  it("shares a ban with the seconds left and the proxy's key and exchange name", function()
    local w = world()
    local x = w.C.ferry_pxstate_get(1, 1)
    w.C.ferry_ban(x, 60, "status 429")
    bans.banned(x, "status 429")
    assert.equal(1, #w.writes)
    local wr = w.writes[1]
    assert.truthy(wr.sql:find("INSERT INTO ferry_bans", 1, true))
    assert.truthy(wr.sql:find("pg_notify", 1, true))
    assert.same({ "px1", "bin", "ban", 60, "status 429", "A" }, wr.params)
    assert.equal(1, changes.get("ban", "out"))
    assert.equal(1, w.codes("FERRY-8060"))
    -- The answer's database time is held: an older message is ignored.
    wr.cb({ rows = { { u = "5000.5" } } })
    assert.equal("ignored", bans.apply({ k = "ban", p = "px1", x = "bin", s = 30, u = 5000.4, n = "B" }))
    assert.equal(1, changes.get("ban", "ignored"))
  end)

  it("logs a failed write once, without the credentials a proxy key may hold", function()
    local w = world()
    local x = w.C.ferry_pxstate_get(2, 1)
    w.C.ferry_ban(x, 60, "r")
    bans.banned(x, "r")
    w.writes[1].cb(nil, "ERROR: something about (proxy)=(http://u:pw@10.0.0.2:3128) (SQLSTATE XX000)")
    assert.equal(1, w.codes("FERRY-8069"))
    for _, l in ipairs(w.logs) do assert.falsy(l.msg:find("pw", 1, true), l.msg) end
  end)

  it("does not share a proxy of no pool, traffic without an exchange, or with the fleet off", function()
    local w = world()
    local x = w.C.ferry_pxstate_get(7, 1)
    w.C.ferry_ban(x, 60, "x")
    bans.banned(x, "x")
    local y = w.C.ferry_pxstate_get(1, 0)
    w.C.ferry_ban(y, 60, "x")
    bans.banned(y, "x")
    assert.equal(0, #w.writes)
  end)

  it("applies a received ban to the pair for the time left, without publishing it again", function()
    local w = world()
    assert.equal("in", bans.apply({ k = "ban", p = "http://10.0.0.2:3128", x = "bin", s = 42.5,
      u = 100, n = "B", r = "status 429" }))
    local x = w.C.ferry_pxstate_get(2, 1)
    assert.equal(1042.5, x.banned_until)
    assert.equal(1, x.bans)
    assert.equal(0, #w.writes)
    -- Only that exchange: the other one is untouched.
    assert.equal(0, w.C.ferry_pxstate_get(2, 2).banned_until)
    assert.equal(1, w.codes("FERRY-8061"))
    -- No credentials in the log line: the proxy is named by its number.
    for _, l in ipairs(w.logs) do assert.falsy(l.msg:find("pw", 1, true)) end
    -- A newer message of the same ban moves its end; an older one does not.
    assert.equal("in", bans.apply({ k = "ban", p = "http://10.0.0.2:3128", x = "bin", s = 10,
      u = 101, n = "C" }))
    assert.equal(1010, x.banned_until)
    assert.equal(1, x.bans) -- the same ban, not one more in a row
    assert.equal("ignored", bans.apply({ k = "ban", p = "http://10.0.0.2:3128", x = "bin",
      s = 500, u = 100.5, n = "C" }))
    assert.equal(1010, x.banned_until)
  end)

  it("ignores a ban for a proxy or exchange this node does not run, and a malformed one", function()
    local w = world()
    assert.equal("ignored", bans.apply({ k = "ban", p = "nope", x = "bin", s = 5, u = 1, n = "B" }))
    assert.equal("ignored", bans.apply({ k = "ban", p = "px1", x = "kraken", s = 5, u = 1, n = "B" }))
    assert.equal("ignored", bans.apply({ k = "ban", p = "http://10.0.0.9:80", x = "bin", s = 5, u = 1 }))
    assert.equal("ignored", bans.apply({ k = "ban", x = "bin", s = 5, u = 1 }))
    assert.equal(4, changes.get("ban", "ignored"))
    assert.equal(1, w.codes("FERRY-8075"))
  end)

  it("shares a ban that grows only when it grows by a second or more", function()
    local w = world()
    local x = w.C.ferry_pxstate_get(1, 1)
    w.C.ferry_ban(x, 60, "r")
    bans.banned(x, "r")
    x.banned_until = x.banned_until + 0.5
    bans.banned(x, "r")
    assert.equal(1, #w.writes)
    x.banned_until = x.banned_until + 5
    bans.banned(x, "r")
    assert.equal(2, #w.writes)
    assert.equal(65.5, w.writes[2].params[4])
  end)

  it("keeps a ban made while the database is down, publishing it on reconnect with the time left", function()
    local w = world()
    w.up = false
    local x = w.C.ferry_pxstate_get(1, 1)
    w.C.ferry_ban(x, 60, "r")
    bans.banned(x, "r")
    assert.equal(0, #w.writes)
    w.t = w.t + 20
    w.up = true
    bans.resync()
    assert.equal(1, #w.reads)
    assert.truthy(w.reads[1].sql:find("until > clock_timestamp()", 1, true))
    -- The first read of a process takes its own rows too (a restart keeps its bans).
    assert.same({ "" }, w.reads[1].params)
    -- Another node's ban held by the database comes back with the read.
    w.reads[1].cb({ rows = { { proxy = "px1", exchange = "okx", kind = "ban", reason = "status 418",
      node = "B", s = "12.5", u = "777.25" } } })
    assert.equal(w.t + 12.5, w.C.ferry_pxstate_get(1, 2).banned_until)
    assert.equal(1, #w.writes)
    assert.equal(40, w.writes[1].params[4]) -- 60 - 20 s down, not 60
    -- A ban that ended while down is not published.
    w.writes = {}
    w.t = w.t + 100
    bans.republish()
    assert.equal(0, #w.writes)
  end)
end)

describe("fleet: breakers", function()
  -- What breaker.lua does on a result that opens (closes) the breaker.
  local function open(w, x, r)
    w.C.ferry_breaker_open(x, 30)
    bans.breaker_opened(x, r)
  end
  local function close(w, x)
    w.C.ferry_breaker_close(x)
    bans.breaker_closed(x)
  end

  it("is fed by breaker.lua on every open and close", function()
    local src = assert(io.open("lua/ferry/breaker.lua")):read("*a")
    local _, opened = src:gsub("fleet_bans%.breaker_opened%(x, r%)", "")
    local _, closed = src:gsub("fleet_bans%.breaker_closed%(x%)", "")
    local _, opens = src:gsub("C%.ferry_breaker_open%(", "")
    local _, closes = src:gsub("C%.ferry_breaker_close%(", "")
    assert.equal(opens, opened)
    assert.equal(closes, closed)
  end)

  it("shares a breaker opened on the exchange's answers, not one opened on connect failures", function()
    local w = world()
    local x = w.C.ferry_pxstate_get(1, 1)
    open(w, x, { ok = false, kind = "refused", status = 0 })
    assert.equal(OPEN, x.breaker)
    assert.equal(0, #w.writes)
    local y = w.C.ferry_pxstate_get(1, 2)
    open(w, y, { ok = false, kind = "http5xx", status = 503 })
    assert.equal(1, #w.writes)
    assert.same({ "px1", "okx", "breaker", 30, "status 503", "A" }, w.writes[1].params)
    assert.equal(1, w.codes("FERRY-8062"))
    assert.equal(1, changes.get("breaker", "out"))
  end)

  it("shares the close of a shared breaker as its removal, and not the close of a local one", function()
    local w = world()
    local local_x = w.C.ferry_pxstate_get(1, 1)
    open(w, local_x, { ok = false, kind = "timeout", status = 0 })
    close(w, local_x)
    assert.equal(CLOSED, local_x.breaker)
    assert.equal(0, #w.writes)
    local x = w.C.ferry_pxstate_get(1, 2)
    open(w, x, { ok = false, kind = "http5xx", status = 502 })
    close(w, x)
    assert.equal(2, #w.writes)
    assert.truthy(w.writes[2].sql:find("DELETE FROM ferry_bans", 1, true))
    assert.same({ "px1", "okx", "breaker", "A" }, w.writes[2].params)
    assert.equal(1, w.codes("FERRY-8064"))
  end)

  it("opens a received breaker for the cooldown left and closes it on a later removal", function()
    local w = world()
    assert.equal("in", bans.apply({ k = "breaker", p = "px1", x = "bin", s = 25, u = 10, n = "B",
      r = "status 503" }))
    local x = w.C.ferry_pxstate_get(1, 1)
    assert.equal(OPEN, x.breaker)
    assert.equal(1025, x.breaker_until)
    assert.equal("in", bans.apply({ k = "breaker", p = "px1", x = "bin", d = true, u = 11, n = "C" }))
    assert.equal(CLOSED, x.breaker)
    assert.equal(1, w.codes("FERRY-8065"))
    assert.equal(0, #w.writes)
  end)

  it("ignores a breaker of an exchange whose pool has no breaker here", function()
    local w = world()
    assert.equal("ignored", bans.apply({ k = "breaker", p = "px1", x = "plain", s = 25, u = 10,
      n = "B" }))
    assert.equal(CLOSED, w.C.ferry_pxstate_get(1, 3).breaker)
  end)

  it("keeps a breaker open for this node's own network when another node closes its own", function()
    local w = world()
    local x = w.C.ferry_pxstate_get(1, 1)
    open(w, x, { ok = false, kind = "refused", status = 0 })
    assert.equal("in", bans.apply({ k = "breaker", p = "px1", x = "bin", d = true, u = 11, n = "C" }))
    assert.equal(OPEN, x.breaker)
  end)

  it("removes the row of a shared breaker that closed while the database was down", function()
    local w = world()
    local x = w.C.ferry_pxstate_get(1, 1)
    open(w, x, { ok = false, kind = "http5xx", status = 500 })
    assert.equal(1, #w.writes)
    w.up = false
    close(w, x)
    assert.equal(1, #w.writes)
    w.up = true
    bans.republish()
    assert.equal(2, #w.writes)
    assert.truthy(w.writes[2].sql:find("DELETE FROM ferry_bans", 1, true))
    assert.same({ "px1", "bin", "breaker", "A" }, w.writes[2].params)
    bans.republish()
    assert.equal(2, #w.writes)
  end)

  it("closes a received breaker whose row is gone when it reads back after a reconnect", function()
    local w = world()
    bans.apply({ k = "breaker", p = "px1", x = "bin", s = 300, u = 10, n = "B" })
    local x = w.C.ferry_pxstate_get(1, 1)
    assert.equal(OPEN, x.breaker)
    bans.resync()
    w.reads[1].cb({ rows = {} })
    assert.equal(CLOSED, x.breaker)
  end)
end)

describe("fleet: leases", function()
  it("writes this node's count per proxy coalesced, at most once per flush", function()
    local w = world()
    for _ = 1, 5 do leases.delta(1, 1) end
    leases.delta(1, -1)
    assert.equal(0, #w.writes)
    w.t = w.t + leases.FLUSH
    w.tick()
    assert.equal(1, #w.writes)
    assert.same({ "px1", "A", 4 }, w.writes[1].params)
    assert.equal("lease:px1", w.writes[1].key)
    assert.equal(1, changes.get("lease", "out"))
  end)

  it("adds the other nodes' counts to the proxy's active count and takes them back", function()
    local w = world()
    assert.equal("in", leases.apply({ p = "px1", n = "B", h = 3, u = 10 }))
    assert.equal("in", leases.apply({ p = "px1", n = "C", h = 2, u = 10 }))
    assert.equal(5, w.active[1])
    assert.equal("in", leases.apply({ p = "px1", n = "B", h = 1, u = 11 }))
    assert.equal(3, w.active[1])
    assert.equal("ignored", leases.apply({ p = "px1", n = "B", h = 9, u = 10.5 }))
    assert.equal(3, w.active[1])
    -- A proxy this node does not run: kept, counted once it runs it.
    assert.equal("in", leases.apply({ p = "px7", n = "B", h = 4, u = 10 }))
    assert.same({ own = 0, remote = 4 }, leases.counts("px7"))
  end)

  it("stops counting a node the live read leaves out (gone or stopped)", function()
    local w = world()
    leases.apply({ p = "px1", n = "B", h = 3, u = 10 })
    leases.apply({ p = "px1", n = "C", h = 2, u = 10 })
    leases.apply({ p = "px1", n = "D", h = 7, u = 30 })
    leases.resync()
    assert.equal(1, #w.reads)
    assert.same({ "A", 6 }, w.reads[1].params)
    -- C is gone; D's message came after the read (u 30 > now 20): kept.
    w.reads[1].cb({ rows = { { now = "20", leases = '[["px1","B",3,10]]' } } })
    assert.equal(10, w.active[1])
    assert.same({ own = 0, remote = 10 }, leases.counts("px1"))
  end)

  it("starts over on reconnect: its rows reset, then its live counts", function()
    local w = world()
    w.up = false
    leases.delta(2, 1)
    leases.delta(2, 1)
    w.t = w.t + 1
    w.tick()
    assert.equal(0, #w.writes)
    w.up = true
    leases.republish()
    assert.equal(2, #w.writes)
    assert.truthy(w.writes[1].sql:find("UPDATE ferry_leases SET held = 0", 1, true))
    assert.same({ "http://10.0.0.2:3128", "A", 2 }, w.writes[2].params)
  end)
end)

describe("fleet: sticky pins", function()
  it("writes a pin on creation and change, then at most once per half TTL", function()
    local w = world()
    local t = pins.table
    local key = "p\0sess-1"
    for _ = 1, 10 do t.ferry_sticky_set(key, #key, 1, 600) end
    w.t = w.t + pins.FLUSH
    w.tick()
    assert.equal(1, #w.keyed("pins:"))
    local batch = require("cjson").decode(w.keyed("pins:")[1].params[1])
    assert.same({ { k = "p%00sess-1", p = "px1", s = 600 - pins.FLUSH } }, batch)
    assert.equal("A", w.keyed("pins:")[1].params[2])
    -- Touched again within TTL/2: nothing.
    w.t = w.t + 200
    t.ferry_sticky_set(key, #key, 1, 600)
    w.t = w.t + 1
    w.tick()
    assert.equal(1, #w.keyed("pins:"))
    -- After TTL/2: a refresh; a change of proxy: at once.
    w.t = w.t + 200
    t.ferry_sticky_set(key, #key, 1, 600)
    t.ferry_sticky_set(key, #key, 2, 600)
    w.t = w.t + 1
    w.tick()
    assert.equal(2, #w.keyed("pins:"))
    batch = require("cjson").decode(w.keyed("pins:")[2].params[1])
    assert.equal("http://10.0.0.2:3128", batch[1].p)
    assert.equal(2, w.pins[key].id)
  end)

  it("sets a received pin for the time left when this node runs the proxy", function()
    local w = world()
    assert.equal("in", pins.apply({ k = "p%00sess-9", p = "http://10.0.0.2:3128", s = 120,
      u = 50, n = "B" }))
    assert.same({ id = 2, expires = 1120 }, w.pins["p\0sess-9"])
    assert.equal("ignored", pins.apply({ k = "p%00sess-9", p = "px1", s = 120, u = 49, n = "C" }))
    assert.equal("ignored", pins.apply({ k = "p%00x", p = "nope", s = 120, u = 60, n = "C" }))
    -- Not written back: the sticky strategy's touch within the TTL/2 stays quiet.
    pins.table.ferry_sticky_set("p\0sess-9", 10, 2, 600)
    w.t = w.t + 1
    w.tick()
    assert.equal(0, #w.keyed("pins:"))
  end)

  it("encodes keys as printable text and back", function()
    local raw = "pool\0se%s\1\255ion"
    local enc = pins.encode(raw)
    assert.falsy(enc:find("[%z\1-\31\127-\255]"))
    assert.equal(raw, pins.decode(enc))
  end)

  it("bounds the pins waiting to be written and says so once", function()
    local w = world()
    local old = pins.PENDING_MAX
    pins.PENDING_MAX = 3
    for i = 1, 6 do pins.table.ferry_sticky_set("p\0s" .. i, 4, 1, 600) end
    pins.PENDING_MAX = old
    assert.equal(3, pins.stats().pending)
    assert.equal(3, pins.stats().dropped)
    assert.equal(1, w.codes("FERRY-8070"))
    assert.truthy(shared.metrics_text():find("\nferry_fleet_pins_dropped_total 3\n", 1, true))
  end)
end)

describe("fleet: wiring", function()
  it("listens to ban, lease and pin messages and reads back everything on connect", function()
    local w = world()
    assert.is_function(w.handlers.ban)
    assert.is_function(w.handlers.lease)
    assert.is_function(w.handlers.pin)
    assert.equal(1, #w.ups)
    w.ups[1]()
    assert.equal(3, #w.reads)
    for _, r in ipairs(w.reads) do r.cb({ rows = { { now = "1", leases = "[]" } } }) end
    assert.equal(1, w.codes("FERRY-8071"))
  end)

  it("deletes expired rows with bounded statements every EXPIRE seconds", function()
    local w = world()
    w.t = w.t + shared.EXPIRE
    w.tick()
    local sql = {}
    for _, wr in ipairs(w.keyed("expire:")) do sql[#sql + 1] = wr.sql end
    assert.equal(3, #sql)
    for _, q in ipairs(sql) do
      assert.truthy(q:find("DELETE FROM ferry_", 1, true))
      assert.truthy(q:find("LIMIT 1000", 1, true))
    end
  end)

  it("sets this node's lease counts to 0 when it stops", function()
    local w = world()
    assert.is_function(w.drain)
    w.drain()
    assert.equal(1, #w.writes)
    assert.truthy(w.writes[1].sql:find("UPDATE ferry_leases SET held = 0", 1, true))
    assert.same({ "A" }, w.writes[1].params)
  end)

  it("renders ferry_fleet_changes_total once", function()
    world()
    changes.count("ban", "out")
    changes.count("pin", "in", 3)
    local text = changes.text()
    assert.truthy(text:find('ferry_fleet_changes_total{kind="pin",dir="in"} 3', 1, true))
    local _, n = text:gsub("# TYPE ferry_fleet_changes_total", "")
    assert.equal(1, n)
  end)
end)
