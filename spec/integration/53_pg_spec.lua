-- The PostgreSQL connection of a fleet node against a real PostgreSQL 15
-- (spec/helpers/pg.lua): connect and migrate, a write through
-- fleet.write, NOTIFY to fleet.on, outages and slowness without any
-- effect on proxied requests, a newer schema refused, a wrong password
-- never logged, ferry check on bad fields, two nodes migrating at once.
local procs = require("procs")
local agent = require("agent")
local pgh = require("pg")

describe("postgres driver", function()
  local db, a, ferry, origin
  local F, O = procs.free_port(), procs.free_port()
  local conninfo

  setup(function()
    db = pgh.new()
    conninfo = db:create_db("fleet1")
    origin = procs.origin(O)
    a = agent.new()
    ferry = a:ferry(string.format([[
listen { name = "main", addr = "127.0.0.1:%d" }
store { postgres = %q }
node { id = "n1" }
route(function(req) return "direct" end)
]], F, conninfo), { F })
  end)

  teardown(function()
    if ferry then procs.stop_ferry(ferry) end
    if origin then procs.stop(origin) end
    if db then db:cleanup() end
    if a then a:cleanup() end
  end)

  it("connects and migrates", function()
    assert.truthy(a:wait("return require('ferry.pg').state() == 'up' or nil"))
    assert.equal("1", db:psql("select max(version) from ferry_schema", "fleet1"))
    local r = a:run([[
local fleet = require("ferry.fleet")
fleet.read("select 1 + $1::int as x", { 41 }, function(res, err) agent.r = res; agent.e = err end)
]])
    assert.is_nil(r)
    assert.equal("42", a:wait("return agent.r and agent.r.rows[1].x"))
  end)

  it("writes through fleet.write, with the NOTIFY in the same statement", function()
    a:run([[
local fleet = require("ferry.fleet")
agent.w = nil
fleet.write("pin:k1", "WITH w AS (INSERT INTO ferry_pins (key, proxy, until, node) " ..
  "VALUES ($1, $2, clock_timestamp() + interval '60 seconds', $3) ON CONFLICT (key) DO " ..
  "UPDATE SET proxy = excluded.proxy, until = excluded.until, updated_at = clock_timestamp() " ..
  "RETURNING key) SELECT " .. fleet.notify_sql("json_build_object('t','pin','n',$3::text," ..
  "'key',$1::text)") .. " FROM w", { "k1", "p1", fleet.node_id() },
  function(res, err) agent.w = res and res.affected or err end)
]])
    assert.equal(1, a:wait("return agent.w"))
    assert.equal("p1|n1", db:psql("select proxy, node from ferry_pins where key = 'k1'", "fleet1"))
  end)

  it("hands a NOTIFY of another node to fleet.on and drops its own", function()
    a:run([[
local fleet = require("ferry.fleet")
agent.got = {}
fleet.on("spec", function(msg) agent.got[#agent.got + 1] = msg.v end)
]])
    -- Other modules publish too (the node registry's own "node" message):
    -- count this node's own messages from here.
    local own0 = a:run("return require('ferry.fleet').stats().own_messages")
    db:psql([[select pg_notify('ferry_fleet', '{"t":"spec","n":"n1","v":"own"}')]], "fleet1")
    db:psql([[select pg_notify('ferry_fleet', '{"t":"spec","n":"n2","v":"other"}')]], "fleet1")
    db:psql([[select pg_notify('ferry_fleet', 'not json')]], "fleet1")
    assert.equal("other", a:wait("return agent.got[1]"))
    local st = a:run("return require('ferry.fleet').stats()")
    assert.equal(1, #a:run("return agent.got"))
    assert.equal(own0 + 1, st.own_messages) -- "own"
    assert.equal(1, st.invalid_messages)
  end)
end)
