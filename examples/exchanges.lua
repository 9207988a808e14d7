-- exchanges.lua: one pool per exchange, each with its health check,
-- breaker and ban rules, on a machine with nothing else running.
--
-- Three local listeners play the upstream proxy nodes (they go direct);
-- the front listener on :8090 sends each exchange's traffic through its
-- own pool.  Health probes, breakers and bans then act per exchange: a
-- node banned by one exchange keeps carrying the others.
--   curl -x http://127.0.0.1:8090 https://api.binance.com/api/v3/time
-- (needs the Internet; without it, watch the probes and the access log).

listen { name = "front", addr = "127.0.0.1:8090" }
listen { name = "node1", addr = "127.0.0.1:8091" }
listen { name = "node2", addr = "127.0.0.1:8092" }
listen { name = "node3", addr = "127.0.0.1:8093" }

local nodes = {
  { url = "http://127.0.0.1:8091", id = "node1" },
  { url = "http://127.0.0.1:8092", id = "node2" },
  { url = "http://127.0.0.1:8093", id = "node3", weight = 2 },
}

pool "binance" {
  strategy = "health_score",
  -- A tunnel through each node to a local port proves the node relays.
  health   = { check = "connect", target = "127.0.0.1:8091", interval = 5, rise = 2, fall = 3 },
  breaker  = { policy = "consecutive", failures = 5, cooldown = 30 },
  all_down = "any",
  proxies  = nodes,
}

pool "binance_sapi" {
  strategy = "sticky",        -- the same node per X-Ferry-Session
  session_ttl = 300,
  health   = { check = "tcp", interval = 5 },
  proxies  = nodes,
}

pool "bybit" {
  strategy = "least_conn",
  health   = { check = "tcp", interval = 2 },
  breaker  = { policy = "error_rate", window = 30, threshold = 0.5, min_requests = 20,
               cooldown = 15 },
  panic    = 50,              -- under half healthy: use them all rather than overload a few
  proxies  = nodes,
}

pool "okx" {
  strategy = "round_robin",
  all_down = "fail",          -- better a clear 503 than an unhealthy path
  proxies  = nodes,
}

exchange "binance" { hosts = { "*.binance.com", "binance.com" }, pool = "binance",
                     ban = { status = { 403, 418, 429 }, backoff = 60 },
                     script = "exchanges/binance.lua" }
exchange "bybit"   { hosts = { "*.bybit.com" }, pool = "bybit",
                     script = "exchanges/bybit.lua" }
exchange "okx"     { hosts = { "*.okx.com" }, pool = "okx",
                     ban = { status = { 429 }, body = { "Too Many Requests" }, backoff = 30 } }

-- The nodes go direct; anything else through the front goes direct too.
route(function(req) return "direct" end)
