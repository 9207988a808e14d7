-- broker_client.lua: a ferry whose pool leases its proxies from a broker
-- (docs/broker.md#client), here the one of examples/broker.lua:
--   export FERRY_BROKER_TOKEN=$(openssl rand -hex 16)
--   ferry -c examples/broker.lua &          # the broker, on 127.0.0.1:9090
--   ferry -c examples/broker_client.lua &   # its client, on 127.0.0.1:8282
--   curl -x http://127.0.0.1:8282 https://api.binance.com/api/v3/time
--   ferry console -s /tmp/ferry-broker-client.sock -e "broker_client.stats()"
-- Stop the broker: once the leases run out the pool serves through its
-- embedded proxy; start it again: leases come back.

listen { name = "proxy", addr = "127.0.0.1:8282" }
admin { addr = "127.0.0.1:9292", socket = "/tmp/ferry-broker-client.sock" }

pool "binance" {
  strategy = "round_robin",
  broker = {
    -- The second endpoint is used while the first fails (here: nothing listens on 9091).
    endpoints = { "http://127.0.0.1:9090", "http://127.0.0.1:9091" },
    token = env("FERRY_BROKER_TOKEN", "change-me-broker-token"),
    exchange = "binance", region = "eu-central-1", connection_type = "https",
    leases = 2, timeout = 2, renew = 0.8,
    feedback = { interval = 1, batch = 100, queue = 10000 },
    breaker = { failures = 3, backoff = 1, max_backoff = 30 },
  },
  -- The fallback while no lease is valid.
  proxies = { { url = "http://127.0.0.1:8182", id = "embedded" } },
}

exchange "binance" { hosts = { "*.binance.com", "binance.com" }, pool = "binance" }
