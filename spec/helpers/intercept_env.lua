-- intercept_env.lua: what the interception specs run (spec/integration/
-- 38_intercept_spec.lua, 43_intercept_clients_spec.lua): ferry's CA made by
-- `ferry ca init`, a TLS origin with a private CA (tls_origin.lua) under
-- the names "localhost" and "exb", a WebSocket echo origin behind stunnel
-- with the same certificate, tinyproxy and microsocks as a round-robin
-- pool, and ferry with exchange "a" (localhost) intercepted through that
-- pool (a 429 bans, and is retried once on the other proxy), exchange "b"
-- (exb) blind and direct, and exchange "c" (127.0.0.1: an address, so
-- blind) through the same pool.
--
-- Host names: "localhost" resolves everywhere (ferry, tinyproxy,
-- microsocks).  "exb" is resolved by ferry alone, through HOSTALIASES (a
-- file mapping a one-label alias to a name, which c-ares' lookup honours;
-- glibc's files lookup does not, so the upstream proxies could not resolve
-- it, and the blind exchange goes direct).
--
--   local env = intercept_env.start()
--   env.F, env.FS, env.ADM   ferry's HTTP, SOCKS5 and admin ports
--   env.O, env.WS            the TLS origin's and the wss origin's ports
--   env.ca, env.pki          ferry's CA certificate; the origin's PKI
--   env.ferry, env.dir       ferry's process; a scratch directory
--   env.stop()
local procs = require("procs")
local tls_origin = require("tls_origin")

local M = {}
local q = procs.quote

-- Output (stdout and stderr) and exit status of a shell command.
function M.sh(cmd)
  local p = io.popen(cmd .. " 2>&1; echo \"rc=$?\"")
  local out = p:read("*a")
  p:close()
  local rc = tonumber(out:match("rc=(%d+)%s*$"))
  return (out:gsub("rc=%d+%s*$", "")), rc
end

local function start(env, procs_started)
  env.O, env.W, env.WS = procs.free_port(), procs.free_port(), procs.free_port()
  env.T, env.M = procs.free_port(), procs.free_port()
  env.F, env.FS, env.ADM = procs.free_port(), procs.free_port(), procs.free_port()
  env.pki = tls_origin.pki(env.dir .. "/pki", { "localhost", "exb", "127.0.0.1" })
  local out, rc = M.sh(q(procs.bin) .. " ca init " .. q(env.dir .. "/ca"))
  assert(rc == 0, out)
  env.ca = env.dir .. "/ca/ca.crt"
  -- Started here rather than by tls_origin.start, to wait longer on a busy machine.
  local origin = procs.spawn("tls-origin", "python3 " .. procs.root .. "/spec/helpers/tls_origin.py " ..
    env.O .. " " .. q(env.pki.cert) .. " " .. q(env.pki.key))
  procs_started[#procs_started + 1] = origin
  assert(procs.wait_port(env.O, 30), "TLS origin did not start:\n" .. procs.read_file(origin.log))
  local ws = procs.spawn("ws-origin", "python3 " .. procs.root .. "/spec/helpers/ws_origin.py " ..
    env.W)
  procs_started[#procs_started + 1] = ws
  assert(procs.wait_port(env.W, 30), "ws origin did not start")
  procs_started[#procs_started + 1] = procs.stunnel({ { accept = env.WS, connect = env.W,
    cert = env.pki.cert, key = env.pki.key } })
  procs_started[#procs_started + 1] = procs.tinyproxy(env.T)
  procs_started[#procs_started + 1] = procs.microsocks(env.M)
  local aliases = procs.write_file(env.dir .. "/hostaliases", "exb localhost\n")
  local cfg = procs.write_file(env.dir .. "/ferry.lua", string.format([[
listen { addr = "127.0.0.1:%d" }
listen { name = "s5", addr = "127.0.0.1:%d", protocol = "socks5" }
admin { addr = "127.0.0.1:%d" }
tls { ca_cert = %q, ca_key = %q }
pool "two" { strategy = "round_robin",
             proxies = { "http://127.0.0.1:%d", "socks5://127.0.0.1:%d" } }
exchange "a" { hosts = { "localhost" }, pool = "two", intercept = true,
               tls = { ca = %q }, ban = { status = { 429 }, backoff = 600, retry = 1 } }
exchange "b" { hosts = { "exb" }, pool = "direct" }
exchange "c" { hosts = { "127.0.0.1" }, pool = "two" }
]], env.F, env.FS, env.ADM, env.ca, env.dir .. "/ca/ca.key", env.T, env.M, env.pki.ca))
  env.ferry = procs.spawn("ferry", "env HOSTALIASES=" .. q(aliases) .. " " .. q(procs.bin) ..
    " -c " .. q(cfg))
  for _, port in ipairs({ env.F, env.FS, env.ADM }) do
    assert(procs.wait_port(port, procs.asan and 15 or 5), procs.read_file(env.ferry.log))
  end
end

function M.start()
  local env = { dir = procs.tmp .. "/intercept-" .. math.random(1, 1e9) }
  local started = {}
  local ok, err = pcall(start, env, started)
  function env.stop()
    -- stop_ferry raises on a sanitizer report: stop the rest first.
    local fok, ferr = true, nil
    if env.ferry then fok, ferr = pcall(procs.stop_ferry, env.ferry) end
    for _, p in ipairs(started) do procs.stop(p) end
    os.execute("rm -rf " .. q(env.dir))
    if not fok then error(ferr, 0) end
  end
  if not ok then
    env.stop() -- what did start must not outlive the spec
    error(err, 0)
  end
  return env
end

-- The access lines ferry wrote so far, those fn accepts when given.
function M.access(proc, fn)
  local out = {}
  for _, l in ipairs(procs.log_lines(proc)) do
    if l.msg == "access" and (fn == nil or fn(l)) then out[#out + 1] = l end
  end
  return out
end

-- The event lines (not access lines) with a code.
function M.events(proc, code)
  local out = {}
  for _, l in ipairs(procs.log_lines(proc)) do
    if l.code == code and l.msg ~= "access" then out[#out + 1] = l end
  end
  return out
end

return M
