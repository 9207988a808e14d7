-- exchanges.lua: one pool per exchange, each with its health check,
-- breaker and ban rules, on a machine with nothing else running.
--
-- Three local listeners play the upstream proxy nodes (they go direct);
-- the front listener on :8090 sends each exchange's traffic through its
-- own pool.  Health probes, breakers and bans then act per exchange: a
-- node banned by one exchange keeps carrying the others.
--   bin/ferry check -c examples/exchanges.lua
--   bin/ferry -c examples/exchanges.lua
--   curl -x http://127.0.0.1:8090 https://api.binance.com/api/v3/time
--   curl -x http://127.0.0.1:8090 http://api.binance.com/api/v3/time
-- (these need the Internet; without it, watch the probes in the log).
-- The second is plain HTTP to ferry: binance has upgrade_tls, so ferry
-- opens and verifies the TLS session itself, and its ban rules see the
-- real status (docs/https.md#origination).
--
-- Exchanges match destination hosts on every listener, the nodes' too:
-- each exchange script sends what reaches a node straight out, or a
-- request would go round the nodes forever (see exchanges/*.lua).

-- Clients may steer their own requests with control headers (or the
-- same as user name parameters, alice-region-eu-session-K): a region
-- (X-Ferry-Region: eu), a sticky pin moved now (X-Ferry-Rotate: 1), and
-- on this listener a pool among the two named (X-Ferry-Pool), e.g.
--   curl -x http://127.0.0.1:8090 -H 'X-Ferry-Region: eu' http://api.binance.com/api/v3/time
-- (docs/https.md, Control headers).
listen { name = "front", addr = "127.0.0.1:8090",
         allow_pool_header = { "binance", "binance_sapi" } }
listen { name = "node1", addr = "127.0.0.1:8091" }
listen { name = "node2", addr = "127.0.0.1:8092" }
listen { name = "node3", addr = "127.0.0.1:8093" }

local nodes = {
  { url = "http://127.0.0.1:8091", id = "node1", region = "eu" },
  { url = "http://127.0.0.1:8092", id = "node2", region = "eu" },
  { url = "http://127.0.0.1:8093", id = "node3", region = "us", weight = 2 },
}

pool "binance" {
  strategy = "health_score",
  -- A tunnel through each node to a local port proves the node relays.
  -- In production: target = "api.binance.com:443".
  health   = { check = "connect", target = "127.0.0.1:8091", interval = 5, timeout = 2,
               rise = 2, fall = 3 },
  breaker  = { policy = "consecutive", failures = 5, cooldown = 30, max_cooldown = 600 },
  all_down = "any",           -- a doubtful node beats no answer
  proxies  = nodes,
}

-- Binance's /sapi endpoints keep one node per session (X-Ferry-Session):
-- the exchange script sends them here.
pool "binance_sapi" {
  strategy    = "sticky",
  session_ttl = 300,
  health      = { check = "tcp", interval = 5 },
  breaker     = { policy = "consecutive", failures = 3, cooldown = 10 },
  proxies     = nodes,
}

pool "bybit" {
  strategy = "least_conn",
  health   = { check = "tcp", interval = 2, rise = 1, fall = 2 },
  breaker  = { policy = "error_rate", window = 30, threshold = 0.5, min_requests = 20,
               cooldown = 15, trials = 2 },
  panic    = 50,              -- under half healthy: use them all rather than overload a few
  proxies  = nodes,
}

pool "okx" {
  strategy = "round_robin",
  health   = { check = "connect", target = "127.0.0.1:8092", interval = 10 },
  breaker  = { policy = "consecutive", failures = 3, cooldown = 60 },
  all_down = "fail",          -- better a clear 503 than an unhealthy path
  proxies  = nodes,
}

exchange "binance" { hosts = { "*.binance.com", "binance.com" }, pool = "binance",
                     upgrade_tls = true, -- http:// goes out as verified https://
                     -- A banned GET goes again through another node (retry = 2);
                     -- a ban lasts the answer's Retry-After when it has one.
                     ban = { status = { 403, 418, 429 }, backoff = 60, max_backoff = 3600,
                             body = { "IP banned" }, retry = 2 },
                     -- 1200 weight per minute per address; the script weighs
                     -- each request and reads X-MBX-USED-WEIGHT-1M back
                     -- (docs/https.md#rate-budgets).
                     rate = { limit = 1200, per = 60, queue = 256, queue_timeout = 5 },
                     script = "exchanges/binance.lua" }
-- Interception (docs/https.md#interception): with a CA of ferry's own,
--   bin/ferry ca init /tmp/ferry-ca
--   FERRY_CA=/tmp/ferry-ca bin/ferry -c examples/exchanges.lua
--   curl --cacert /tmp/ferry-ca/ca.crt -x http://127.0.0.1:8090 https://api.bybit.com/v5/market/time
-- ferry answers bybit's CONNECTs itself, terminates the client's TLS with
-- a leaf its CA minted, and routes, bans and retries each request inside.
-- Without FERRY_CA bybit's hosts stay blind tunnels.
local ca = env("FERRY_CA", "")
if ca ~= "" then tls { ca_cert = ca .. "/ca.crt", ca_key = ca .. "/ca.key" } end

exchange "bybit"   { hosts = { "*.bybit.com" }, pool = "bybit", intercept = ca ~= "",
                     ban = { status = { 403 }, backoff = 300, retry = 1 },
                     script = "exchanges/bybit.lua" }
exchange "okx"     { hosts = { "*.okx.com" }, pool = "okx",
                     ban = { status = { 429 }, body = { "Too Many Requests" }, backoff = 30 },
                     script = "exchanges/okx.lua" }

-- Anything else, on any listener, goes direct.
route(function() return "direct" end)
