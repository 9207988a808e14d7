exclude_files = { "spec/tmp/**" }
std = "luajit"
ignore = { "212/self" }
max_line_length = 110
files["spec"] = { std = "+busted" }
files["examples"] = { globals = { "listen", "pool", "exchange", "route", "timeouts", "log",
  "plugins", "admin", "store", "env", "broker", "tls", "match_host", "match_path", "node" } }
files["etc"] = files["examples"]
