-- node-b.lua: node "node-b" of the 3-node fleet of examples/fleet
-- (start the whole fleet with examples/fleet/run.sh; see README.md).
--
-- The three node configs differ only in the node id and the ports.
-- Every node keeps its own memory of the inventory, bans and breakers and
-- decides from it; PostgreSQL (FERRY_PG, a libpq connection string) only
-- carries the changes between them.  run.sh sets FLEET_PORT (the base
-- port, 8300 by default) and FLEET_DIR (where the console sockets go).
local base = tonumber(os.getenv("FLEET_PORT") or "8300")
local dir = os.getenv("FLEET_DIR") or "/tmp"

store { postgres = env "FERRY_PG" }
node  { id = "node-b", advertise = "127.0.0.1:" .. (base + 12), heartbeat = 2 }

-- Clients use this node as their proxy here.
listen { name = "proxy", addr = "127.0.0.1:" .. (base + 2) }
-- Loopback, so no token; the console socket is for `ferry console`.
admin  { addr = "127.0.0.1:" .. (base + 12), socket = dir .. "/node-b.sock" }
log    { level = "info", access = false }

-- The exits of exits.lua.  Proxies added at runtime on any node
-- (POST /api/v1/proxies, console proxy.add) join this pool on every node.
pool "exits" {
  strategy = "round_robin",
  retries  = 1,
  health   = { check = "tcp", interval = 2 },
  proxies  = {
    { url = "http://127.0.0.1:" .. (base + 21), id = "exit1" },
    { url = "http://127.0.0.1:" .. (base + 22), id = "exit2" },
    { url = "http://127.0.0.1:" .. (base + 23), id = "exit3" },
  },
}

-- The origin of origin.py plays an exchange: a 429 from it bans the exit
-- the request went through, for this exchange, on every node of the fleet.
exchange "demo" { hosts = { "127.0.0.1" }, pool = "exits",
                  ban = { status = { 429 }, backoff = 60 } }

route(function() return "exits" end)
