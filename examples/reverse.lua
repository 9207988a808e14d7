-- reverse.lua: ferry as a reverse proxy / load balancer for a site on
-- 127.0.0.1:8088 (docs/reverse.md).
--
--   bin/ferry -c examples/reverse.lua
--
-- It needs nothing else to run: /health and /metrics of the site go to
-- ferry's own admin plane (an HTTP backend like any other), so
--   curl -i http://127.0.0.1:8088/health
--   curl -s http://127.0.0.1:8088/metrics | grep 'role="backend"'
-- answer at once.  The rest of the site is balanced over two backends on
-- 9101 and 9102; start two small origins for them, e.g. in two shells:
--   mkdir -p /tmp/b1 /tmp/b2 && echo one >/tmp/b1/index.html && echo two >/tmp/b2/index.html
--   (cd /tmp/b1 && python3 -m http.server 9101 --bind 127.0.0.1)
--   (cd /tmp/b2 && python3 -m http.server 9102 --bind 127.0.0.1)
-- then
--   curl http://127.0.0.1:8088/            # "one", then "two", then "one"...
--   curl -H 'Host: api.example.com' http://127.0.0.1:8088/   # the api pool
--   curl -H 'Host: other.example' http://127.0.0.1:8089/    # 404 FERRY-1100
-- Without them a request for / is answered 502 (FERRY-3001: no backend
-- could be connected), then 503 (FERRY-3102) while both are down.
--   bin/ferry console -s /tmp/ferry-reverse.sock -e 'pool.stats("app")'
-- shows the connections kept per backend.

listen { name = "site", addr = "127.0.0.1:8088", protocol = "reverse", pool = "app" }
-- A listener without a pool of its own: hosts no route claims get 404.
listen { name = "strict", addr = "127.0.0.1:8089", protocol = "reverse" }
admin  { addr = "127.0.0.1:8090", socket = "/tmp/ferry-reverse.sock" }

pool "app" {
  strategy = "round_robin",
  all_down = "fail",
  health   = { check = "tcp", interval = 2 },
  backends = {
    { url = "http://127.0.0.1:9101", id = "app-1" },
    { url = "http://127.0.0.1:9102", id = "app-2" },
  },
}

-- The api site: the same backends, told which site they serve.
pool "api" {
  host     = "api.internal",
  all_down = "fail",
  backends = { "http://127.0.0.1:9101" },
}

-- ferry's own admin plane, as a backend.
pool "ops" { backends = { { url = "http://127.0.0.1:8090", id = "admin" } } }

route(function(req)
  if match_path(req.path, "/health", "/metrics") then return "ops" end
  if match_host(req.host, "api.example.com", "*.api.example.com") then return "api" end
  -- nil: the listener's own pool ("app"), or 404 on "strict"
end)
