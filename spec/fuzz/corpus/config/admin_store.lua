admin { addr = "127.0.0.1:9901", socket = "/tmp/ferry-fuzz.sock", token = "0123456789abcdef" }
store { path = "ferry.db" }
broker { ttl = 60 }
pool "p" { proxies = { "http://127.0.0.1:1" } }
