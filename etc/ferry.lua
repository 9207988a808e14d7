-- /etc/ferry/ferry.lua: a starting point for a production config.
-- Validate with: ferry check -c /etc/ferry/ferry.lua

listen { name = "proxy", addr = "127.0.0.1:8080" }
-- A listener other hosts can reach must require credentials:
-- listen { name = "lan", addr = "10.0.0.5:8080", users = { env "FERRY_LAN_USER" } }
-- SOCKS clients (protocol "socks5", "socks4", or "mixed" for HTTP and SOCKS on one port):
-- listen { name = "socks", addr = "127.0.0.1:1080", protocol = "socks5" }

plugins { "/etc/ferry/plugins" }

timeouts { client_head = 10, connect = 5, first_byte = 30, idle = 300, keepalive = 60,
           request = 60 }
log { level = "info", access = true }

pool "exchanges" {
  strategy = "health_score",
  retries  = 2,
  proxies  = {
    -- "http://user:pass@203.0.113.10:3128",
    -- { url = "socks5://203.0.113.11:1080", weight = 2, region = "eu-west-1" },
    "http://127.0.0.1:3128",
  },
}

exchange "binance" { hosts = { "*.binance.com" }, pool = "exchanges" }

route(function(_req)
  return "direct"
end)
