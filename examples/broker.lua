-- broker.lua: ferry as a proxy broker (docs/broker.md).
--
-- Clients lease a proxy URL for an exchange over the admin API, connect
-- through it themselves, and report back; ferry chooses with the same
-- pools, strategies, health and breakers as its own data plane.  Two
-- listeners of this same ferry play the upstream proxies, so it runs
-- with nothing else.  Try:
--   export FERRY_TOKEN=$(openssl rand -hex 16) FERRY_BROKER_TOKEN=$(openssl rand -hex 16)
--   ferry -c examples/broker.lua
--   curl -s -H "Authorization: Bearer $FERRY_BROKER_TOKEN" \
--     -d '{"exchange_id":"binance","connection_type":"https","region":"us-east-1"}' \
--     http://127.0.0.1:9090/api/v1/proxy/request
--   curl -s -H "Authorization: Bearer $FERRY_BROKER_TOKEN" \
--     -d '{"proxy_url":"http://127.0.0.1:8182","exchange_id":"binance","success":false,
--          "error_details":"connect timed out"}' \
--     http://127.0.0.1:9090/api/v1/proxy/feedback

-- The answers carry proxy credentials: keep the tokens secret.  Broker
-- clients get a token limited to the broker API; the full admin token
-- (console Lua, reload, inventory changes) stays with the operator.
admin { addr = "127.0.0.1:9090", socket = "/tmp/ferry-broker.sock",
        token = env("FERRY_TOKEN", "change-me-please"),
        tokens = { { token = env("FERRY_BROKER_TOKEN", "change-me-broker-token"),
                     scope = { "broker" } } } }

-- A lease counts as an active use of its proxy for ttl seconds, or until
-- its feedback comes.
broker { ttl = 300 }

listen { name = "node-eu", addr = "127.0.0.1:8181" }
listen { name = "node-us", addr = "127.0.0.1:8182" }

pool "binance" {
  strategy = "least_conn",  -- leases count as active uses
  all_down = "direct",      -- clients get fallback_policy = "direct_connection"
  breaker  = { policy = "consecutive", failures = 3, cooldown = 30 },
  proxies  = {
    { url = "http://127.0.0.1:8181", id = "node-eu", region = "eu-central-1" },
    { url = "http://127.0.0.1:8182", id = "node-us", region = "us-east-1" },
  },
}

exchange "binance" { hosts = { "*.binance.com", "binance.com" }, pool = "binance",
                     ban = { status = { 418, 429 }, backoff = 60 } }

-- The nodes themselves go direct.
route(function() return "direct" end)
