-- What a fleet shares besides the inventory, against a real PostgreSQL 15
-- (spec/helpers/pg.lua) and three bin/ferry nodes (A, B, C) with the
-- same pools: bans and open breakers per (proxy, exchange), sticky pins,
-- broker lease counts (least_conn sees the fleet), and convergence after
-- PostgreSQL was stopped.
--
-- Two microsocks upstreams bind their outgoing connections to 127.0.0.2
-- (proxy "a") and 127.0.0.3 ("b"), so the origin (ban_origin.py) tells
-- them apart and answers "ok ADDR" or, for a path /ban/ADDR/STATUS[/RA],
-- that status.  Exchange "ex" (host 127.0.0.1) has a ban rule on 429 and
-- a select hook taking the proxies in order (a first when eligible);
-- exchange "other" (host localhost) uses the same pool with least_conn.
local procs = require("procs")
local pgh = require("pg")
local cjson = require("cjson.safe")

local ROOT = os.getenv("PWD")
-- Under ASan everything is slower: the windows (a ban's length, a
-- breaker's cooldown) and the polling bounds grow with it.
local K = procs.asan and 3 or 1
local BAN_S, COOLDOWN_S = 5 * K, 4 * K

describe("fleet: shared bans, breakers, pins and leases", function()
  local db, conninfo, origin
  local socks = {}
  local O = procs.free_port()
  local S = { procs.free_port(), procs.free_port() }
  local SRC = { "127.0.0.2", "127.0.0.3" }
  local nodes = {} -- name -> { proc, F, A }
  local NAMES = { "A", "B", "C" }
  local script

  local function config(name, n)
    return string.format([[
listen { name = "main", addr = "127.0.0.1:%d", allow_pool_header = { "s" } }
admin { addr = "127.0.0.1:%d" }
store { postgres = %q }
node { id = "%s", heartbeat = 1 }
pool "p" { strategy = "least_conn", retries = 0, all_down = "fail", health = { interval = 60 },
  breaker = { policy = "consecutive", failures = 2, cooldown = %d, max_cooldown = %d },
  proxies = { { url = "socks5://127.0.0.1:%d", id = "a" }, { url = "socks5://127.0.0.1:%d", id = "b" } } }
pool "s" { strategy = "sticky", retries = 0, health = { interval = 60 },
  proxies = { { url = "socks5://127.0.0.1:%d", id = "sa" }, { url = "socks5://127.0.0.1:%d", id = "sb" } } }
exchange "ex" { hosts = { "127.0.0.1" }, pool = "p", script = "%s",
  ban = { status = { 429 }, backoff = 30 } }
exchange "other" { hosts = { "localhost" }, pool = "p" }
]], n.F, n.A, conninfo, name, COOLDOWN_S, COOLDOWN_S, S[1], S[2], S[1], S[2], script)
  end

  local function start(name)
    local n = nodes[name] or { F = procs.free_port(), A = procs.free_port() }
    nodes[name] = n
    n.proc = procs.ferry(config(name, n), { n.F, n.A }, "ferry-" .. name)
    return n
  end

  -- The source address a request of node `name` left through ("127.0.0.2"
  -- is proxy a), and its status.
  local function via(name, host, path, headers)
    local status, body = procs.curl { proxy = "http://127.0.0.1:" .. nodes[name].F,
      url = "http://" .. (host or "127.0.0.1") .. ":" .. O .. (path or "/ready"),
      flags = headers, max_time = 5 }
    return body:match("^ok (%S+)") or body:match("^banned (%S+)"), status
  end

  local function metric(name, family, labels)
    return procs.metric(nodes[name].A, family, labels)
  end

  local function lines(name, code)
    local out = {}
    for _, l in ipairs(procs.log_lines(nodes[name].proc)) do
      if l.code == code then out[#out + 1] = l end
    end
    return out
  end

  local function post(name, path, body)
    local status, text = procs.curl { url = "http://127.0.0.1:" .. nodes[name].A .. path,
      flags = "-X POST -H 'Content-Type: application/json' --data-binary " ..
        procs.quote(cjson.encode(body)) }
    return status, cjson.decode(text) or text
  end

  local function pg_up(name)
    return procs.wait_for(function()
      return #lines(name, "FERRY-8071") > 0
    end, 20 * K, 0.05)
  end

  setup(function()
    assert(pgh.available(), "PostgreSQL 15 is not installed (make deps)")
    db = pgh.new()
    conninfo = db:create_db("shared56")
    origin = procs.spawn("ban_origin", "python3 " .. ROOT .. "/spec/helpers/ban_origin.py " .. O)
    assert(procs.wait_port(O), "ban_origin did not start")
    for i = 1, 2 do
      socks[i] = procs.spawn("microsocks", "microsocks -i 127.0.0.1 -p " .. S[i] .. " -b " ..
        SRC[i])
      assert(procs.wait_port(S[i]), "microsocks did not start")
    end
    script = procs.write_file(procs.tmp .. "/shared56-" .. O .. ".lua", [[
return {
  select = function(pool, req)
    local tried = req.tried or {}
    for _, p in ipairs(pool.proxies) do
      if not tried[p.id] and pool:eligible(p, req) then return p end
    end
  end,
}
]])
    for _, name in ipairs(NAMES) do start(name) end
    for _, name in ipairs(NAMES) do assert(pg_up(name), "node " .. name .. " did not connect") end
  end)

  teardown(function()
    for _, name in ipairs(NAMES) do
      if nodes[name] and nodes[name].proc then procs.stop_ferry(nodes[name].proc) end
    end
    for _, p in ipairs(socks) do procs.stop(p) end
    if origin then procs.stop(origin) end
    if db then db:cleanup() end
  end)

  it("a 429 ban seen on B keeps A and C away from that proxy, for that exchange, until it ends", function()
    for _, name in ipairs(NAMES) do assert.equal("127.0.0.2", via(name)) end
    -- B: proxy a answers 429 with Retry-After: BAN_S.
    local addr, status = via("B", "127.0.0.1", "/ban/127.0.0.2/429/" .. BAN_S)
    assert.equal(429, status)
    assert.equal("127.0.0.2", addr)
    assert.equal(1, #lines("B", "FERRY-8060"))
    assert.equal("ban", db:psql("select kind from ferry_bans where proxy = 'a' and " ..
      "exchange = 'ex'", "shared56"))
    -- A and C: exchange "ex" goes through b, within a second.
    for _, name in ipairs({ "A", "C" }) do
      assert.truthy(procs.wait_for(function() return #lines(name, "FERRY-8061") > 0 end, 2 * K, 0.02),
        "node " .. name .. " did not receive the ban")
      assert.equal("127.0.0.3", via(name))
      assert.equal(1, metric(name, "ferry_proxy_banned", 'proxy="a",pool="p",exchange="ex"'))
      -- Exchange "other" still uses a (least_conn alternates a and b).
      local seen = {}
      for _ = 1, 4 do seen[via(name, "localhost") or "none"] = true end
      assert.truthy(seen["127.0.0.2"], "node " .. name .. " left a for exchange other too")
    end
    -- The ban ends on A and C with its time (BAN_S from B's answer).
    for _, name in ipairs({ "A", "C" }) do
      assert.truthy(procs.wait_for(function() return via(name) == "127.0.0.2" end, BAN_S + 5 * K,
        0.2),
        "the ban did not end on node " .. name)
    end
    -- Nothing was echoed back: one ban row, written by B.
    assert.equal("B", db:psql("select node from ferry_bans where proxy = 'a' and kind = 'ban'",
      "shared56"))
    assert.equal(0, #lines("A", "FERRY-8060"))
    assert.equal(0, #lines("C", "FERRY-8060"))
    assert.equal(1, metric("B", "ferry_fleet_changes_total", 'kind="ban",dir="out"'))
    assert.equal(1, metric("A", "ferry_fleet_changes_total", 'kind="ban",dir="in"'))
    assert.is_nil(metric("A", "ferry_fleet_changes_total", 'kind="ban",dir="out"'))
  end)

  it("a breaker opened on the exchange's answers on C opens on A and B, and its close too", function()
    -- Two 503s through a on C: its (a, ex) breaker opens for COOLDOWN_S.
    for _ = 1, 2 do
      local addr, status = via("C", "127.0.0.1", "/ban/127.0.0.2/503")
      assert.equal(503, status)
      assert.equal("127.0.0.2", addr)
    end
    assert.equal(1, metric("C", "ferry_proxy_breaker_state", 'proxy="a",pool="p",exchange="ex"'))
    assert.equal(1, #lines("C", "FERRY-8062"))
    for _, name in ipairs({ "A", "B" }) do
      assert.truthy(procs.wait_for(function()
        return metric(name, "ferry_proxy_breaker_state", 'proxy="a",pool="p",exchange="ex"') == 1
      end, 2 * K, 0.05), "node " .. name .. " did not open the breaker")
      assert.equal("127.0.0.3", via(name))
      -- Only for exchange ex.
      assert.equal(0, metric(name, "ferry_proxy_breaker_state", 'proxy="a",pool="p",exchange="other"') or 0)
    end
    -- After the cooldown a trial through a on C succeeds: closed there, then on A and B.
    assert.truthy(procs.wait_for(function() return via("C") == "127.0.0.2" end,
      COOLDOWN_S + 5 * K, 0.2))
    assert.equal(0, metric("C", "ferry_proxy_breaker_state", 'proxy="a",pool="p",exchange="ex"'))
    for _, name in ipairs({ "A", "B" }) do
      assert.truthy(procs.wait_for(function()
        return metric(name, "ferry_proxy_breaker_state", 'proxy="a",pool="p",exchange="ex"') == 0
      end, 3 * K, 0.05), "node " .. name .. " did not close the breaker")
      assert.truthy(#lines(name, "FERRY-8065") >= 1)
    end
    assert.equal("0", db:psql("select count(*) from ferry_bans where kind = 'breaker'", "shared56"))
  end)

  it("a sticky session pinned on A keeps its proxy on B and C", function()
    local H = "-H 'X-Ferry-Pool: s' -H 'X-Ferry-Session: %s'"
    local pinned = {}
    for i = 1, 6 do
      pinned[i] = via("A", "localhost", "/ready", string.format(H, "sess-" .. i))
      assert.truthy(pinned[i])
    end
    -- A's pins spread over both proxies (ties rotate).
    local distinct = {}
    for _, v in ipairs(pinned) do distinct[v] = true end
    assert.truthy(distinct["127.0.0.2"] and distinct["127.0.0.3"])
    assert.truthy(procs.wait_for(function()
      return tonumber(db:psql("select count(*) from ferry_pins", "shared56")) >= 6
    end, 3 * K, 0.05))
    -- B and C, sessions asked in the reverse order: the same proxies.
    for _, name in ipairs({ "B", "C" }) do
      for i = 6, 1, -1 do
        assert.equal(pinned[i], via(name, "localhost", "/ready", string.format(H, "sess-" .. i)),
          "node " .. name .. ", session " .. i)
      end
    end
    for _, name in ipairs(NAMES) do
      assert.truthy(metric(name, "ferry_fleet_shared_held", 'what="pins"') >= 6)
    end
    -- Touching the pins again does not write them again (at most once per half TTL).
    local u0 = db:psql("select max(updated_at) from ferry_pins", "shared56")
    for i = 1, 6 do via("A", "localhost", "/ready", string.format(H, "sess-" .. i)) end
    procs.sleep(0.6)
    assert.equal(u0, db:psql("select max(updated_at) from ferry_pins", "shared56"))
  end)

  it("broker leases granted on A count in B's least_conn", function()
    local ids = {}
    for _ = 1, 3 do
      local status, body = post("A", "/api/v1/proxy/request",
        { exchange_id = "ex", connection_type = "http", client_id = "spec" })
      assert.equal(200, status, cjson.encode(body))
      ids[#ids + 1] = body.metadata.proxy_id
    end
    assert.same({ "a", "a", "a" }, ids)
    assert.truthy(procs.wait_for(function()
      return metric("B", "ferry_proxy_active_connections", 'proxy="a",pool="p"') == 3
    end, 3 * K, 0.05), "B does not count A's leases")
    assert.equal("3", db:psql("select held from ferry_leases where proxy = 'a' and node = 'A'",
      "shared56"))
    -- B's least_conn (exchange other) now avoids a.
    for _ = 1, 3 do assert.equal("127.0.0.3", via("B", "localhost")) end
    -- Feedback ends a lease on A: B's count follows.
    local status = post("A", "/api/v1/proxy/feedback", { proxy_url = "socks5://127.0.0.1:" .. S[1],
      exchange_id = "ex", success = true, client_id = "spec" })
    assert.equal(200, status)
    assert.truthy(procs.wait_for(function()
      return metric("B", "ferry_proxy_active_connections", 'proxy="a",pool="p"') == 2
    end, 3 * K, 0.05))
  end)

  it("a node gone or stopped no longer counts its leases", function()
    -- Node Z (not a ferry): its lease rows, its heartbeat old, then fresh, then stopped.
    db:psql("insert into ferry_nodes (id, heartbeat_at) values ('Z', now() - interval '1 hour')",
      "shared56")
    db:psql("insert into ferry_leases (proxy, node, held) values ('b', 'Z', 5)", "shared56")
    procs.sleep(2.5) -- more than one read of the live nodes' counts
    assert.equal(0, metric("B", "ferry_proxy_active_connections", 'proxy="b",pool="p"'))
    db:psql("update ferry_nodes set heartbeat_at = now() + interval '1 hour' where id = 'Z'",
      "shared56")
    assert.truthy(procs.wait_for(function()
      return metric("B", "ferry_proxy_active_connections", 'proxy="b",pool="p"') == 5
    end, 5 * K, 0.1), "a live node's leases are not counted")
    db:psql("update ferry_nodes set stopped = true where id = 'Z'", "shared56")
    assert.truthy(procs.wait_for(function()
      return metric("B", "ferry_proxy_active_connections", 'proxy="b",pool="p"') == 0
    end, 5 * K, 0.1), "a stopped node's leases still count")
    -- A real node that stops: its counts go to 0 as it drains (A held 2 on a).
    assert.equal(2, metric("B", "ferry_proxy_active_connections", 'proxy="a",pool="p"'))
    procs.stop_ferry(nodes.A.proc)
    assert.equal("0", db:psql("select held from ferry_leases where proxy = 'a' and node = 'A'",
      "shared56"))
    assert.truthy(procs.wait_for(function()
      return metric("B", "ferry_proxy_active_connections", 'proxy="a",pool="p"') == 0
    end, 3 * K, 0.05), "a stopped node's leases still count")
    start("A")
    assert.truthy(pg_up("A"))
  end)

  it("with PostgreSQL stopped a ban applies locally, and the others converge after it returns", function()
    db:stop()
    -- A bans a for 12 s (x K); its own traffic leaves a at once.
    local _, status = via("A", "127.0.0.1", "/ban/127.0.0.2/429/" .. 12 * K)
    assert.equal(429, status)
    assert.equal("127.0.0.3", via("A"))
    -- B and C keep serving, through a (they cannot know).
    assert.equal("127.0.0.2", via("B"))
    assert.equal("127.0.0.2", via("C"))
    db:start()
    for _, name in ipairs({ "B", "C" }) do
      assert.truthy(procs.wait_for(function() return via(name) == "127.0.0.3" end, 20 * K, 0.2),
        "node " .. name .. " did not converge")
    end
    -- The row was published after the outage with the time left, not stretched by it.
    local left = tonumber(db:psql("select extract(epoch from until - clock_timestamp()) from " ..
      "ferry_bans where proxy = 'a' and exchange = 'ex' and kind = 'ban'", "shared56"))
    assert.truthy(left and left <= 12 * K, tostring(left))
  end)
end)
