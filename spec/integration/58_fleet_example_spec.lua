-- examples/fleet as shipped: run.sh starts PostgreSQL 15, the exits, the
-- origin and three ferry nodes; each node answers through its proxy
-- listener, lists the other two as live, takes a proxy added on another
-- node, and counts a ban another node saw; SIGTERM to run.sh stops every
-- process it started and removes its directory.  Only the base port is
-- chosen here (FLEET_PORT), so the ports never clash with other specs.
local procs = require("procs")
local socket = require("socket")
local cjson = require("cjson.safe")

local ROOT = procs.root

-- A base port whose 30 ports above it are free on 127.0.0.1.
local function free_base()
  for _ = 1, 50 do
    local base = procs.free_port()
    local ok = base + 30 < 32768
    for _, d in ipairs({ 1, 2, 3, 11, 12, 13, 21, 22, 23, 24, 30 }) do
      if ok then
        local s = socket.bind("127.0.0.1", base + d)
        if s then s:close() else ok = false end
      end
    end
    if ok then return base end
  end
  error("no free run of ports")
end

local function get_json(port, path)
  local status, body = procs.curl { url = "http://127.0.0.1:" .. port .. path, max_time = 5 }
  return status, cjson.decode(body or "")
end

describe("examples/fleet", function()
  local B, run, dir
  local PG_BIN = os.getenv("FERRY_PG_BIN") or "/usr/lib/postgresql/15/bin"
  local have_pg = os.execute("test -x " .. procs.quote(PG_BIN .. "/postgres")) == 0

  setup(function()
    assert(have_pg, "PostgreSQL 15 is not installed (make deps installs postgresql-15)")
    B = free_base()
    run = procs.spawn("fleet-example", "env FLEET_PORT=" .. B .. " FLEET_KEEP=1 FERRY_BIN=" ..
      procs.quote(procs.bin) .. " PG_BIN=" .. procs.quote(PG_BIN) .. " " ..
      procs.quote(ROOT .. "/examples/fleet/run.sh"))
    local up = procs.wait_for(function()
      return procs.read_file(run.log):match("ferry fleet of 3 nodes is up") or
        not procs.alive(run)
    end, 90, 0.1)
    assert(up and procs.alive(run), "run.sh did not start the fleet:\n" .. procs.read_file(run.log))
    dir = procs.read_file(run.log):match("data in (/tmp/ferry%-fleet%.[%w]+)")
    assert(dir, procs.read_file(run.log))
  end)

  teardown(function()
    if run then procs.stop(run) end
    if dir then os.execute("rm -rf " .. procs.quote(dir)) end
  end)

  it("answers through each node's proxy listener", function()
    for i = 1, 3 do
      local status, body = procs.curl { proxy = "http://127.0.0.1:" .. (B + i),
        url = "http://127.0.0.1:" .. (B + 30) .. "/" }
      assert.equal(200, status)
      assert.equal("hello from the origin\n", body)
    end
  end)

  it("lists the three nodes as live on every node", function()
    for i = 1, 3 do
      local seen = procs.wait_for(function()
        local status, l = get_json(B + 10 + i, "/api/v1/nodes")
        if status ~= 200 or type(l) ~= "table" or type(l.nodes) ~= "table" then return nil end
        local live = {}
        for _, n in ipairs(l.nodes) do
          if n.state == "live" then live[#live + 1] = n.id end
        end
        table.sort(live)
        return #live == 3 and l or nil
      end, 20, 0.2)
      assert.is_truthy(seen, "node " .. i .. " does not list 3 live nodes")
      assert.equal("node-" .. string.char(96 + i), seen.self)
      assert.same({ "node-a", "node-b", "node-c" },
        { seen.nodes[1].id, seen.nodes[2].id, seen.nodes[3].id })
    end
    -- The console socket run.sh prints says the same.
    local p = io.popen(procs.quote(procs.bin) .. " console -s " .. procs.quote(dir .. "/node-b.sock") ..
      " -e 'node.list()' 2>&1")
    local out = p:read("*a")
    p:close()
    local live = {}
    for id, state in out:gmatch("\n(node%-%a)%s+%S+%s+%S+%s+(%a+)") do
      if state == "live" then live[#live + 1] = id end
    end
    assert.same({ "node-a", "node-b", "node-c" }, live, out)
  end)

  it("puts a proxy added on node-a into node-c's inventory", function()
    local status, body = procs.curl { url = "http://127.0.0.1:" .. (B + 11) .. "/api/v1/proxies",
      flags = "-X POST -d " .. procs.quote(cjson.encode({ pool = "exits", id = "exit4",
        url = "http://127.0.0.1:" .. (B + 24) })) }
    assert.equal(201, status, body)
    local p = procs.wait_for(function()
      local s, j = get_json(B + 13, "/api/v1/proxies/exit4")
      return s == 200 and j or nil
    end, 5, 0.05)
    assert.is_truthy(p, "node-c does not know exit4")
    assert.equal("http://127.0.0.1:" .. (B + 24), p.url)
  end)

  it("counts on node-c the ban a 429 through node-b caused", function()
    local function banned(port)
      local s, text = procs.curl { url = "http://127.0.0.1:" .. port .. "/api/v1/console",
        flags = "-X POST --data-binary 'exchange.list()'" }
      if s ~= 200 then return nil end
      return tonumber(text:match("\ndemo%s+exits%s+%S+%s+%S+%s+%S+%s+(%d+)"))
    end
    assert.equal(0, banned(B + 13))
    local status, body = procs.curl { proxy = "http://127.0.0.1:" .. (B + 2),
      url = "http://127.0.0.1:" .. (B + 30) .. "/429" }
    assert.equal(429, status)
    assert.equal("slow down\n", body)
    assert.equal(1, banned(B + 12))
    assert.is_truthy(procs.wait_for(function() return banned(B + 13) == 1 end, 5, 0.05),
      "node-c does not count the ban")
    assert.is_truthy(procs.wait_for(function() return banned(B + 11) == 1 end, 5, 0.05),
      "node-a does not count the ban")
  end)

  it("stops everything it started on SIGTERM", function()
    local pg_port = tonumber(procs.read_file(run.log):match("PostgreSQL on 127%.0%.0%.1:(%d+)"))
    assert.is_truthy(pg_port)
    procs.signal(run, "TERM")
    assert.is_truthy(procs.wait_for(function() return not procs.alive(run) end, 30, 0.1),
      "run.sh did not end")
    assert.matches("fleet stopped", procs.read_file(run.log))
    for _, port in ipairs({ B + 1, B + 11, B + 12, B + 13, B + 21, B + 30, pg_port }) do
      local c = socket.tcp()
      c:settimeout(0.5)
      assert.is_falsy(c:connect("127.0.0.1", port), "port " .. port .. " still open")
      c:close()
    end
    -- No sanitizer report in any node's log (FLEET_KEEP kept them).
    for _, n in ipairs({ "node-a", "node-b", "node-c", "exits" }) do
      local log = procs.read_file(dir .. "/" .. n .. ".log")
      assert.is_falsy(log:match("Sanitizer"), n .. ":\n" .. log)
    end
  end)
end)
