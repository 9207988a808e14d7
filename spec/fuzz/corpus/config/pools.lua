listen { name = "p", addr = "127.0.0.1:3128", users = { "alice:secret", { user = "bob", pass = "x" } } }
pool "residential" { strategy = "health_score", retries = 3,
  proxies = { "http://u:p%40ss@10.0.0.1:8080", { url = "socks5h://[::1]:1080", weight = 5, id = "v6", region = "eu",
    headers = { ["X-Token"] = "abc" } } },
  breaker = { failures = 5 }, timeouts = { connect = 2, first_byte = 10 } }
exchange "ex" { hosts = { "*.example.com", "api.example.org" }, pool = "residential" }
timeouts { connect = 3, idle = 120 }
log { level = "debug", access = false }
route(function(req) return "residential" end)
