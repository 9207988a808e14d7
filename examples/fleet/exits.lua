-- exits.lua: the shared pool's upstream proxies for examples/fleet.
--
-- Four listeners that go direct play the exit proxies the fleet nodes
-- send their traffic through: the nodes' configs declare the first three;
-- the fourth is free for adding at runtime (README.md).  They live in a
-- process of their own so no fleet node's exchange rules see their
-- traffic (a node's exchange would otherwise claim the requests its own
-- exit listener carries).  run.sh starts this with FLEET_PORT set (the
-- base port, 8300 by default).
local base = tonumber(os.getenv("FLEET_PORT") or "8300")

listen { name = "exit1", addr = "127.0.0.1:" .. (base + 21) }
listen { name = "exit2", addr = "127.0.0.1:" .. (base + 22) }
listen { name = "exit3", addr = "127.0.0.1:" .. (base + 23) }
listen { name = "exit4", addr = "127.0.0.1:" .. (base + 24) }
log { level = "warn", access = false }

route(function() return "direct" end)
