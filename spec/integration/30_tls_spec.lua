-- TLS on both sides: curl -x https:// to ferry's TLS listener (absolute
-- form and CONNECT), plain HTTP sent to that port, https:// upstream
-- pools of stunnel4 in front of tinyproxy and of a second ferry's TLS
-- listener, certificates that must fail (expired, self-signed, wrong
-- name) with the failure kind "tls" and the next proxy used, and certs
-- reloaded on SIGHUP.  A throwaway CA and certs are made with the
-- openssl CLI for each run.
local procs = require("procs")
local socket = require("socket")

local q = procs.quote

local function run(cmd)
  local ok = os.execute(cmd .. " >/dev/null 2>&1")
  assert(ok == 0 or ok == true, "failed: " .. cmd)
end

-- A CA, and leaf certs signed by it (or self-signed) for given names.
local function make_pki(dir)
  run("mkdir -p " .. q(dir))
  local function p(f) return dir .. "/" .. f end
  procs.write_file(p("index.txt"), "")
  procs.write_file(p("serial"), "01\n")
  procs.write_file(p("ca.cnf"), table.concat({
    "[ ca ]", "default_ca = d", "[ d ]", "database = " .. p("index.txt"),
    "new_certs_dir = " .. dir, "serial = " .. p("serial"), "default_md = sha256",
    "policy = pol", "unique_subject = no", "[ pol ]", "commonName = supplied", "" }, "\n"))
  local function ca(name)
    run(string.format("openssl req -x509 -newkey rsa:2048 -nodes -keyout %s -out %s -days 3 " ..
      "-subj '/CN=ferry spec %s'", q(p(name .. ".key")), q(p(name .. ".pem")), name))
  end
  -- Signed by ca_name with validity [start, end) (openssl ca date form),
  -- for the DNS / IP names in san.
  local function leaf(name, ca_name, cn, san, startdate, enddate)
    procs.write_file(p(name .. ".ext"), "subjectAltName=" .. san .. "\n")
    run(string.format("openssl req -newkey rsa:2048 -nodes -keyout %s -out %s -subj '/CN=%s'",
      q(p(name .. ".key")), q(p(name .. ".csr")), cn))
    run(string.format("openssl ca -batch -config %s -cert %s -keyfile %s -in %s -out %s " ..
      "-startdate %s -enddate %s -extfile %s", q(p("ca.cnf")), q(p(ca_name .. ".pem")),
      q(p(ca_name .. ".key")), q(p(name .. ".csr")), q(p(name .. ".pem")), startdate, enddate,
      q(p(name .. ".ext"))))
  end
  local now = os.time()
  local from = os.date("!%Y%m%d%H%M%SZ", now - 3600)
  local to = os.date("!%Y%m%d%H%M%SZ", now + 3 * 86400)
  ca("ca")
  ca("ca2")
  leaf("good", "ca", "localhost", "DNS:localhost,IP:127.0.0.1", from, to)
  leaf("good2", "ca2", "localhost", "DNS:localhost,IP:127.0.0.1", from, to)
  leaf("expired", "ca", "localhost", "DNS:localhost,IP:127.0.0.1", "20200101000000Z",
    "20200102000000Z")
  leaf("wrong", "ca", "wrong.example", "DNS:wrong.example", from, to)
  run(string.format("openssl req -x509 -newkey rsa:2048 -nodes -keyout %s -out %s -days 3 " ..
    "-subj '/CN=localhost' -addext 'subjectAltName=DNS:localhost,IP:127.0.0.1'",
    q(p("self.key")), q(p("self.pem"))))
  return p
end

local function metric_total(port, name, labels)
  return procs.metric(port, name, labels) or 0
end

describe("TLS", function()
  local pki = procs.tmp .. "/tls-" .. math.random(1, 1e9)
  local p
  local O, T = procs.free_port(), procs.free_port()
  local FA, FA_ADM = procs.free_port(), procs.free_port()
  local S_GOOD, S_EXP, S_SELF, S_WRONG =
    procs.free_port(), procs.free_port(), procs.free_port(), procs.free_port()
  local B_ST, B_FE, B_BAD, B_ADM = procs.free_port(), procs.free_port(), procs.free_port(),
    procs.free_port()
  local B_PROBE = procs.free_port()
  local origin, tiny, stunnel, fa, fb
  local base = "http://127.0.0.1:" .. O

  setup(function()
    p = make_pki(pki)
    -- The certs the TLS listener serves, copied so a reload can swap them.
    run(string.format("cp %s %s && cp %s %s", q(p("good.pem")), q(p("served.pem")),
      q(p("good.key")), q(p("served.key"))))
    origin = procs.relay_origin(O)
    tiny = procs.tinyproxy(T)
    stunnel = procs.stunnel {
      { accept = S_GOOD, connect = T, cert = p("good.pem"), key = p("good.key") },
      { accept = S_EXP, connect = T, cert = p("expired.pem"), key = p("expired.key") },
      { accept = S_SELF, connect = T, cert = p("self.pem"), key = p("self.key") },
      { accept = S_WRONG, connect = T, cert = p("wrong.pem"), key = p("wrong.key") },
    }
    fa = procs.ferry(string.format([[
listen { name = "tls", addr = "127.0.0.1:%d", tls = { cert = %q, key = %q } }
admin { addr = "127.0.0.1:%d" }
route(function() return "direct" end)
]], FA, p("served.pem"), p("served.key"), FA_ADM), { FA, FA_ADM }, "ferry-tls")
    fb = procs.ferry(string.format([[
listen { name = "st", addr = "127.0.0.1:%d" }
listen { name = "fe", addr = "127.0.0.1:%d" }
listen { name = "bad", addr = "127.0.0.1:%d" }
listen { name = "probed", addr = "127.0.0.1:%d" }
admin { addr = "127.0.0.1:%d" }
pool "st" { retries = 0, proxies = {
  { id = "stunnel", url = "https://localhost:%d", tls = { ca = %q } } } }
pool "fe" { retries = 0, proxies = {
  { id = "ferry", url = "https://127.0.0.1:%d", tls = { ca = %q, verify = true } } } }
pool "bad" { retries = 3, strategy = "round_robin", proxies = {
  { id = "expired", url = "https://localhost:%d", tls = { ca = %q } },
  { id = "self", url = "https://localhost:%d", tls = { ca = %q } },
  { id = "wrong", url = "https://127.0.0.1:%d", tls = { ca = %q, sni = "localhost" } },
  { id = "good", url = "https://127.0.0.1:%d", tls = { ca = %q } } } }
pool "probed" { health = { check = "tcp", interval = 0.3, rise = 1, fall = 1 }, proxies = {
  { id = "probe-good", url = "https://localhost:%d", tls = { ca = %q } },
  { id = "probe-expired", url = "https://localhost:%d", tls = { ca = %q } } } }
pool "http-probed" { health = { check = "http", url = "%s/gen?n=10&framing=cl", interval = 0.3,
                                rise = 1, fall = 1 },
  proxies = { { id = "probe-ferry", url = "https://127.0.0.1:%d", tls = { ca = %q } } } }
route(function(req) return req.listener end)
]], B_ST, B_FE, B_BAD, B_PROBE, B_ADM, S_GOOD, p("ca.pem"), FA, p("ca.pem"), S_EXP, p("ca.pem"),
      S_SELF, p("ca.pem"), S_WRONG, p("ca.pem"), S_GOOD, p("ca.pem"),
      S_GOOD, p("ca.pem"), S_EXP, p("ca.pem"), base, FA, p("ca.pem")),
      { B_ST, B_FE, B_BAD, B_PROBE, B_ADM }, "ferry-front")
  end)

  teardown(function()
    if fb then procs.stop_ferry(fb) end
    if fa then procs.stop_ferry(fa) end
    for _, pr in ipairs { origin, tiny, stunnel } do procs.stop(pr) end
    os.execute("rm -rf " .. q(pki))
  end)

  -- curl through ferry's TLS listener into a file; status, sha256, size, headers.
  local function fetch(path, opts)
    opts = opts or {}
    local out = string.format("%s/tls-body-%d", procs.tmp, math.random(1, 1e9))
    local hfile = out .. ".h"
    local cmd = string.format("curl -s --max-time 20 -o %s -D %s -w '%%{http_code}' %s %s -x %s " ..
      "--proxy-cacert %s %s 2>/dev/null", q(out), q(hfile), opts.tunnel and "-p" or "",
      opts.rate and ("--limit-rate " .. opts.rate) or "",
      q(opts.proxy or ("https://127.0.0.1:" .. FA)), q(opts.ca or p("ca.pem")), q(base .. path))
    local ph = io.popen(cmd)
    local code = tonumber(ph:read("*a")) or 0
    ph:close()
    local size = procs.file_size(out)
    local sum, headers = size >= 0 and procs.sha256_file(out) or nil, procs.read_file(hfile)
    os.remove(out)
    os.remove(hfile)
    return code, sum, size, headers
  end

  for _, n in ipairs { 1000000, 8000000 } do
    it("serves curl -x https:// in absolute form (" .. n .. " bytes, sha256)", function()
      local code, sum, size, headers = fetch("/gen?n=" .. n .. "&framing=cl")
      assert.equal(200, code)
      assert.equal(n, size)
      assert.equal(procs.last_header(headers, "X-Body-Sha256"), sum)
    end)

    it("carries a CONNECT tunnel through the TLS listener (" .. n .. " bytes)", function()
      local code, sum, size, headers = fetch("/gen?n=" .. n .. "&framing=cl", { tunnel = true })
      assert.equal(200, code)
      assert.equal(n, size)
      assert.equal(procs.last_header(headers, "X-Body-Sha256"), sum)
    end)
  end

  it("refuses a client that does not trust the listener's certificate", function()
    local code = fetch("/gen?n=10&framing=cl", { ca = p("ca2.pem") })
    assert.equal(0, code)
  end)

  it("answers plain HTTP sent to the TLS port at once, and closes", function()
    local c = socket.tcp()
    c:settimeout(5)
    assert(c:connect("127.0.0.1", FA))
    c:send("GET " .. base .. "/ HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
    local data, err, partial = c:receive("*a")
    c:close()
    local got = data or partial or ""
    assert.equal("closed", err or "closed")
    assert.matches("^HTTP/1.1 400", got)
    assert.matches("FERRY%-1071", got)
    -- The one error writer: Content-Length is the body's length.
    local head, body = got:match("^(.-\r\n)\r\n(.*)$")
    assert.equal(#body, tonumber(head:match("\r\nContent%-Length: (%d+)\r\n")))
  end)

  it("closes at once on bytes that are neither TLS nor HTTP, with a logged code", function()
    local c = socket.tcp()
    c:settimeout(5)
    assert(c:connect("127.0.0.1", FA))
    c:send("\0\1\2 hello there\r\n\r\n")
    local _, err = c:receive("*a")
    c:close()
    assert.equal("closed", err)
    assert(procs.wait_for(function()
      return procs.read_file(fa.log):find("FERRY-1070", 1, true)
    end), "no FERRY-1070 line")
  end)

  it("uses stunnel in front of tinyproxy as an https:// upstream", function()
    local code, sum, size, headers = fetch("/gen?n=1000000&framing=cl",
      { proxy = "http://127.0.0.1:" .. B_ST })
    assert.equal(200, code)
    assert.equal(1000000, size)
    assert.equal(procs.last_header(headers, "X-Body-Sha256"), sum)
    code, sum, size, headers = fetch("/gen?n=1000000&framing=cl",
      { proxy = "http://127.0.0.1:" .. B_ST, tunnel = true })
    assert.equal(200, code)
    assert.equal(1000000, size)
    assert.equal(procs.last_header(headers, "X-Body-Sha256"), sum)
  end)

  it("uses another ferry's TLS listener as an https:// upstream", function()
    for _, tunnel in ipairs { false, true } do
      local code, sum, size, headers = fetch("/gen?n=8000000&framing=cl",
        { proxy = "http://127.0.0.1:" .. B_FE, tunnel = tunnel })
      assert.equal(200, code)
      assert.equal(8000000, size)
      assert.equal(procs.last_header(headers, "X-Body-Sha256"), sum)
    end
  end)

  it("relays to a slow reader on both TLS legs without losing bytes OpenSSL holds", function()
    -- The client reads at 4 MB/s: buffers fill on every leg, and records
    -- decrypted into a full buffer wait inside OpenSSL until room appears.
    for _, tunnel in ipairs { false, true } do
      local code, sum, size, headers = fetch("/gen?n=3000000&framing=cl",
        { proxy = "http://127.0.0.1:" .. B_FE, tunnel = tunnel, rate = "4M" })
      assert.equal(200, code)
      assert.equal(3000000, size)
      assert.equal(procs.last_header(headers, "X-Body-Sha256"), sum)
      code, sum, size, headers = fetch("/gen?n=3000000&framing=cl",
        { tunnel = tunnel, rate = "4M" })
      assert.equal(200, code)
      assert.equal(3000000, size)
      assert.equal(procs.last_header(headers, "X-Body-Sha256"), sum)
    end
  end)

  it("carries request bodies over both TLS legs (2 MB upload, sha256 at the origin)", function()
    local file = string.format("%s/tls-up-%d", procs.tmp, math.random(1, 1e9))
    os.execute("head -c 2000000 /dev/urandom > " .. q(file))
    assert.equal(2000000, procs.file_size(file))
    local want = procs.sha256_file(file)
    for _, proxy in ipairs { "https://127.0.0.1:" .. FA, "http://127.0.0.1:" .. B_FE } do
      local ph = io.popen(string.format("curl -s --max-time 20 -x %s --proxy-cacert %s " ..
        "-H 'Content-Type: application/octet-stream' --data-binary @%s %s 2>/dev/null", q(proxy),
        q(p("ca.pem")), q(file), q(base .. "/sink")))
      local body = ph:read("*a")
      ph:close()
      assert.matches('"len": ?2000000', body)
      assert.matches(want, body, 1, true)
    end
    os.remove(file)
  end)

  it("fails expired, self-signed and wrong-name certs as kind tls and uses the next proxy",
    function()
      local kinds = function(id)
        return metric_total(B_ADM, "ferry_proxy_failures_total",
          string.format('proxy="%s",pool="bad",kind="tls"', id))
      end
      local all = procs.wait_for(function()
        local code = fetch("/gen?n=1000&framing=cl", { proxy = "http://127.0.0.1:" .. B_BAD })
        assert.equal(200, code)
        return kinds("expired") >= 1 and kinds("self") >= 1 and kinds("wrong") >= 1
      end, 20, 0.05)
      assert.truthy(all)
      assert.equal(0, kinds("good"))
      local log = procs.read_file(fb.log)
      assert.truthy(log:find("FERRY-3041", 1, true))
      assert.truthy(log:find("certificate has expired", 1, true))
      assert.truthy(log:find("self%-signed certificate") or log:find("self signed certificate"))
      assert.truthy(log:find("hostname mismatch", 1, true))
    end)

  it("probes https:// proxies through TLS: a tcp check verifies the cert, an http check passes",
    function()
      local function up(id, pool)
        return procs.metric(B_ADM, "ferry_proxy_up", string.format('proxy="%s",pool="%s"', id, pool))
      end
      local function probes(id, pool, result)
        return metric_total(B_ADM, "ferry_proxy_probes_total",
          string.format('proxy="%s",pool="%s",result="%s"', id, pool, result))
      end
      assert(procs.wait_for(function()
        return up("probe-expired", "probed") == 0 and probes("probe-good", "probed", "ok") >= 2
          and probes("probe-ferry", "http-probed", "ok") >= 2
      end, 15), "probes did not settle:\n" .. procs.read_file(fb.log):sub(-3000))
      assert.equal(1, up("probe-good", "probed"))
      assert.equal(1, up("probe-ferry", "http-probed"))
      assert.equal(0, probes("probe-good", "probed", "failed"))
      assert.truthy(procs.read_file(fb.log):find("probe TLS failed: certificate verify failed",
        1, true))
    end)

  it("keeps the old cert when a reload brings a broken one, serves a new one after SIGHUP",
    function()
      procs.write_file(p("served.pem"), "not a certificate\n")
      procs.signal(fa, "HUP")
      assert(procs.wait_for(function()
        return procs.read_file(fa.log):find("FERRY-0150", 1, true)
      end), "no FERRY-0150 line:\n" .. procs.read_file(fa.log))
      assert.equal(200, (fetch("/gen?n=10&framing=cl")))
      run(string.format("cp %s %s && cp %s %s", q(p("good2.pem")), q(p("served.pem")),
        q(p("good2.key")), q(p("served.key"))))
      procs.signal(fa, "HUP")
      assert(procs.wait_for(function()
        return fetch("/gen?n=10&framing=cl", { ca = p("ca2.pem") }) == 200
      end, 10, 0.1), "the new cert is not served")
      assert.equal(0, (fetch("/gen?n=10&framing=cl", { ca = p("ca.pem") })))
    end)
end)
