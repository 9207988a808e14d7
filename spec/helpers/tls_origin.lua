-- tls_origin.lua: a private CA, leaf certificates for given names, and
-- HTTPS origins (spec/helpers/tls_origin.py) serving them on 127.0.0.1,
-- for the TLS origination and interception specs.
--
--   local tls_origin = require("tls_origin")
--   local pki = tls_origin.pki(dir, { "localhost", "api.example" })
--     -> { dir, ca = "ca.pem", cert = "leaf.pem", key = "leaf.key",
--          other_ca, other_cert, other_key  (the same names, another CA),
--          wrong_cert, wrong_key            (CA-signed, for wrong.invalid only) }
--   local proc = tls_origin.start(port, pki.cert, pki.key)
--   tls_origin.bundle(pki)  -> a CA file holding ca.pem (for tls.ca / curl --cacert)
--   tls_origin.pattern(n)   -> the bytes /bytes?n=N answers
local procs = require("procs")

local M = {}
local q = procs.quote

local function run(cmd)
  local ok = os.execute(cmd .. " >/dev/null 2>&1")
  assert(ok == 0 or ok == true, "failed: " .. cmd)
end

-- Names as a subjectAltName list: IP literals as IP, the rest as DNS.
local function san(names)
  local t = {}
  for i, n in ipairs(names) do
    t[i] = (n:match("^[%d.]+$") or n:find(":", 1, true)) and ("IP:" .. n) or ("DNS:" .. n)
  end
  return table.concat(t, ",")
end

function M.pki(dir, names)
  run("mkdir -p " .. q(dir))
  local function p(f) return dir .. "/" .. f end
  local function ca(name)
    run(string.format("openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes " ..
      "-keyout %s -out %s -days 3 -subj '/CN=ferry spec %s' " ..
      "-addext basicConstraints=critical,CA:TRUE -addext keyUsage=critical,keyCertSign,cRLSign",
      q(p(name .. ".key")), q(p(name .. ".pem")), name))
  end
  local function leaf(name, ca_name, list)
    procs.write_file(p(name .. ".ext"), "subjectAltName=" .. san(list) .. "\n" ..
      "basicConstraints=CA:FALSE\nextendedKeyUsage=serverAuth\n")
    run(string.format("openssl req -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes " ..
      "-keyout %s -out %s -subj '/CN=%s'", q(p(name .. ".key")), q(p(name .. ".csr")), list[1]))
    run(string.format("openssl x509 -req -in %s -CA %s -CAkey %s -CAcreateserial -out %s " ..
      "-days 3 -sha256 -extfile %s", q(p(name .. ".csr")), q(p(ca_name .. ".pem")),
      q(p(ca_name .. ".key")), q(p(name .. ".pem")), q(p(name .. ".ext"))))
  end
  ca("ca")
  ca("other_ca")
  leaf("leaf", "ca", names)
  leaf("other", "other_ca", names)
  leaf("wrong", "ca", { "wrong.invalid" })
  return { dir = dir, ca = p("ca.pem"), cert = p("leaf.pem"), key = p("leaf.key"),
           other_ca = p("other_ca.pem"), other_cert = p("other.pem"), other_key = p("other.key"),
           wrong_cert = p("wrong.pem"), wrong_key = p("wrong.key") }
end

function M.start(port, cert, key)
  local proc = procs.spawn("tls-origin", "python3 " .. procs.root ..
    "/spec/helpers/tls_origin.py " .. port .. " " .. q(cert) .. " " .. q(key))
  assert(procs.wait_port(port, 20), "TLS origin did not start:\n" .. procs.read_file(proc.log))
  return proc
end

-- The bytes GET /bytes?n=N answers.
function M.pattern(n)
  local unit = {}
  for i = 0, 255 do unit[#unit + 1] = string.char(i) end
  unit = table.concat(unit)
  local reps = math.ceil(n / 256)
  return (unit:rep(reps)):sub(1, n)
end

return M
