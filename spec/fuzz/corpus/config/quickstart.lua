-- quickstart.lua: a ferry that needs nothing outside this machine.
--
-- Three listeners play upstream proxy nodes (each goes direct), and the
-- front listener on :8080 rotates requests across them.  Try:
--   curl -x http://127.0.0.1:8080 http://127.0.0.1:PORT/
-- and watch the access log name a different node each time.  The admin
-- plane listens on :8090 (loopback, so no token) and on a console socket:
--   curl http://127.0.0.1:8090/metrics
--   bin/ferry console -s /tmp/ferry-quickstart.sock -e 'proxy.list()'

listen { name = "front", addr = "127.0.0.1:8080" }
listen { name = "node1", addr = "127.0.0.1:8081" }
listen { name = "node2", addr = "127.0.0.1:8082" }
listen { name = "node3", addr = "127.0.0.1:8083" }
admin  { addr = "127.0.0.1:8090", socket = "/tmp/ferry-quickstart.sock" }

pool "nodes" {
  strategy = "round_robin",
  retries  = 2,
  proxies  = {
    "http://127.0.0.1:8081",
    "http://127.0.0.1:8082",
    "http://127.0.0.1:8083",
  },
}

timeouts { connect = 3, first_byte = 30 }

-- The front listener uses the pool; the nodes themselves go direct.
route(function(req)
  if req.listener == "front" then
    return "nodes"
  end
  return "direct"
end)
