-- Real clients through ferry: curl, wget, Python (urllib, requests), Node's
-- http module (the way axios talks to a proxy) and git, each byte-exact
-- (sha256 of what arrived against what was sent), over three paths: direct,
-- an HTTP upstream (tinyproxy) and a SOCKS5 upstream (microsocks).
--
-- Origins: spec/helpers/relay_origin.py (generated bodies, upload sinks),
-- spec/helpers/static_origin.py (a static tree with Range: wget, git's dumb
-- protocol) and spec/helpers/ws_origin.py (WebSocket echo).  A client
-- binary that is missing makes its specs pending, never passing.
local procs = require("procs")
local cjson = require("cjson.safe")

local MB = 1024 * 1024
local q = procs.quote

-- Run a shell command; returns its exit code and its output (stdout+stderr).
local function run(cmd)
  local p = io.popen("(" .. cmd .. ") 2>&1; echo \"rc=$?\"")
  local out = p:read("*a")
  p:close()
  local rc = tonumber(out:match("rc=(%d+)%s*$"))
  return rc, out:gsub("rc=%d+%s*$", "")
end

local function have(bin)
  return run("command -v " .. bin .. " >/dev/null") == 0
end

local sha256_file = procs.sha256_file

local file_size = procs.file_size

local function tmpname(tag)
  return string.format("%s/clients-%s-%d", procs.tmp, tag, math.random(1, 1e9))
end

-- A file of n random bytes, made once per size.
local bodies = {}
local function body(n)
  if not bodies[n] then
    local path = tmpname("body-" .. n)
    run(string.format("head -c %d /dev/urandom > %s", n, q(path)))
    bodies[n] = { path = path, sha = sha256_file(path), n = n }
  end
  return bodies[n]
end

local header = procs.last_header

local function statuses(headers)
  local out = {}
  for code in headers:gmatch("HTTP/1%.%d (%d%d%d)") do out[#out + 1] = tonumber(code) end
  return out
end

local function need(bin)
  if not have(bin) then
    pending(bin .. " is not installed")
    return false
  end
  return true
end

-- A directory tree for the static origin: a small linked site, a file
-- for Range resumes, and a ~30 MB bare git repository for dumb HTTP.
local function make_tree(root)
  local site = root .. "/site"
  run("mkdir -p " .. q(site .. "/sub"))
  local links = {}
  for i = 1, 3 do
    procs.write_file(string.format("%s/p%d.html", site, i),
      string.format('<html><a href="sub/s%d.html">s</a> page %d</html>\n', i, i))
    procs.write_file(string.format("%s/sub/s%d.html", site, i),
      string.format("<html>sub %d %s</html>\n", i, string.rep("x", i * 1000)))
    links[#links + 1] = string.format('<a href="p%d.html">%d</a>', i, i)
  end
  procs.write_file(site .. "/index.html", "<html>" .. table.concat(links) .. "</html>\n")
  run(string.format("head -c %d /dev/urandom > %s", 3 * MB + 17, q(root .. "/resume.bin")))
  -- Random blobs do not compress: the pack stays ~30 MB.
  -- A bare repository written straight from a work tree: loose objects
  -- (zlib level 1), no clone or repack, so setup stays short.
  local src = root .. "/src"
  local git = string.format("git --git-dir=%s --work-tree=%s -c core.compression=1 ",
    q(root .. "/repo.git"), q(src))
  local rc, out = run(string.format(
    "mkdir -p %s && git init -q --bare %s && for i in 1 2 3 4 5 6; do head -c 5000000 " ..
    "/dev/urandom > %s/blob$i; done && seq 1 2000 > %s/small.txt && %s add -A && " ..
    "%s -c user.email=spec@ferry -c user.name=spec commit -qm clients && %s update-server-info",
    q(src), q(root .. "/repo.git"), q(src), q(src), git, git, git))
  assert(rc == 0, "could not make the git repository:\n" .. out)
  local _, head = run(git .. "rev-parse HEAD")
  return { head = head:match("%x+"), blob_sha = sha256_file(src .. "/blob6"),
           resume_sha = sha256_file(root .. "/resume.bin") }
end

describe("real clients through ferry", function()
  local O, S, W = procs.free_port(), procs.free_port(), procs.free_port()
  local T, K = procs.free_port(), procs.free_port()
  local F = { direct = procs.free_port(), tiny = procs.free_port(), socks = procs.free_port() }
  local A = procs.free_port()
  local paths = { "direct", "tiny", "socks" }
  local relay = "http://127.0.0.1:" .. O
  local static = "http://127.0.0.1:" .. S
  local root = tmpname("www")
  local procs_started = {}
  local tree, ferry

  setup(function()
    run("mkdir -p " .. q(root))
    -- Start every helper first, then build the tree while they come up.
    local function start(name, script, ...)
      local p = procs.spawn(name, "python3 " .. q(procs.root .. "/spec/helpers/" .. script) ..
        " " .. table.concat({ ... }, " "))
      procs_started[#procs_started + 1] = p
      return p
    end
    local waits = { [O] = start("relay-origin", "relay_origin.py", O),
                    [S] = start("static-origin", "static_origin.py", S, q(root)),
                    [W] = start("ws-origin", "ws_origin.py", W) }
    procs_started[#procs_started + 1] = procs.tinyproxy(T)
    procs_started[#procs_started + 1] = procs.microsocks(K)
    ferry = procs.ferry(string.format([[
listen { name = "direct", addr = "127.0.0.1:%d" }
listen { name = "tiny", addr = "127.0.0.1:%d" }
listen { name = "socks", addr = "127.0.0.1:%d" }
pool "tiny" { retries = 0, proxies = { "http://127.0.0.1:%d" } }
pool "socks" { retries = 0, proxies = { "socks5://127.0.0.1:%d" } }
admin { addr = "127.0.0.1:%d" }
timeouts { connect = 3, first_byte = 30 }
route(function(req) return req.listener end)
]], F.direct, F.tiny, F.socks, T, K, A), { F.direct, F.tiny, F.socks, A })
    tree = have("git") and make_tree(root) or {}
    for port, p in pairs(waits) do
      assert(procs.wait_port(port, 15), p.name .. " did not start:\n" .. procs.read_file(p.log))
    end
  end)

  teardown(function()
    if ferry then procs.stop_ferry(ferry) end
    -- Signal every helper first: each then exits while the next is waited for.
    for _, p in ipairs(procs_started) do procs.signal(p, "TERM") end
    for _, p in ipairs(procs_started) do procs.stop(p) end
    for _, b in pairs(bodies) do os.remove(b.path) end
    run("rm -rf " .. q(root))
  end)

  local function proxy(path) return "http://127.0.0.1:" .. F[path] end

  -- curl through `path`: status of the last answer, headers, output file.
  local function curl(path, url, flags, max_time)
    local out, hfile = tmpname("out"), tmpname("h")
    local _, code = run(string.format("curl -s -S --max-time %d -x %s -D %s -o %s " ..
      "-w '%%{http_code}' %s %s", max_time or 30, q(proxy(path)), q(hfile), q(out),
      flags or "", q(url)))
    local headers = procs.read_file(hfile)
    os.remove(hfile)
    return tonumber(code:match("(%d%d%d)%s*$")) or 0, headers, out, code
  end

  -- Upload with curl to the relay origin's sink: it answers the length
  -- and sha256 of what it read.
  local function sink_answer(b)
    return string.format('{"len": %d, "sha256": "%s"}', b.n, b.sha)
  end

  describe("curl", function()
    for _, path in ipairs(paths) do
      it("downloads 0 B .. 4 MB byte-exact in each framing via " .. path, function()
        if not need("curl") then return end
        for _, n in ipairs { 0, 1024, MB + 3, 4 * MB } do
          for _, framing in ipairs { "cl", "chunked", "close" } do
            local status, headers, out = curl(path,
              string.format("%s/gen?n=%d&framing=%s", relay, n, framing))
            local got, size = sha256_file(out), file_size(out)
            os.remove(out)
            assert.equal(200, status, framing .. " " .. n)
            assert.equal(n, size, framing .. " " .. n)
            assert.equal(header(headers, "X-Body-Sha256"), got)
            assert.equal("1.1 ferry", header(headers, "Via"))
            assert.truthy(header(headers, "X-Request-Id"))
          end
        end
      end)

      it("uploads 1 KB .. 4 MB with -T (PUT), POST and chunked via " .. path, function()
        if not need("curl") then return end
        for _, n in ipairs { 1024, MB, 4 * MB } do
          local b = body(n)
          for _, flags in ipairs { "-T " .. q(b.path),
                                   "--data-binary @" .. q(b.path),
                                   "-H 'Transfer-Encoding: chunked' -T " .. q(b.path) } do
            -- No Expect: tinyproxy holds a 100-continue upload for curl's 1 s
            -- wait (the Expect path has its own spec).
            local status, _, out = curl(path, relay .. "/sink", "-H 'Expect:' " .. flags)
            local answer = procs.read_file(out)
            os.remove(out)
            assert.equal(200, status, flags)
            assert.equal(sink_answer(b), answer, flags)
          end
        end
      end)

      it("carries a slow upload and a slow download (--limit-rate) via " .. path, function()
        if not need("curl") then return end
        local b = body(384 * 1024)
        local status, _, out = curl(path, relay .. "/sink",
          "--limit-rate 256k -H 'Transfer-Encoding: chunked' -T " .. q(b.path))
        assert.equal(200, status)
        assert.equal(sink_answer(b), procs.read_file(out))
        os.remove(out)
        local headers
        status, headers, out = curl(path, relay .. "/gen?n=393216&framing=cl", "--limit-rate 256k")
        assert.equal(200, status)
        assert.equal(393216, file_size(out))
        assert.equal(header(headers, "X-Body-Sha256"), sha256_file(out))
        os.remove(out)
      end)

      it("answers HEAD with the length and no body, then serves the next request, via "
        .. path, function()
        if not need("curl") then return end
        local status, headers, out = curl(path, static .. "/resume.bin", "-I")
        assert.equal(200, status)
        assert.equal(tostring(3 * MB + 17), header(headers, "Content-Length"))
        os.remove(out)
        -- HEAD then GET on one connection: a body wrongly expected after the
        -- HEAD would shift the GET's answer.
        local size_path = tmpname("head")
        local _, o = run(string.format("curl -s --max-time 20 -x %s -o /dev/null -w '%%{http_code} '"
          .. " -I %s --next -x %s -o %s -w '%%{http_code} %%{num_connects}' %s", q(proxy(path)),
          q(static .. "/resume.bin"), q(proxy(path)), q(size_path), q(static .. "/site/p1.html")))
        local got = procs.read_file(size_path)
        os.remove(size_path)
        assert.equal("200 200 0", o)
        assert.equal("<html><a href=\"sub/s1.html\">s</a> page 1</html>\n", got)
      end)

      it("passes 100 Continue for an Expect upload and the final answer via " .. path, function()
        if not need("curl") then return end
        local b = body(MB)
        local status, headers, out = curl(path, relay .. "/sink",
          "-H 'Expect: 100-continue' --data-binary @" .. q(b.path))
        assert.equal(200, status)
        assert.same({ 100, 200 }, statuses(headers))
        assert.equal(sink_answer(b), procs.read_file(out))
        os.remove(out)
      end)

      it("keeps the client connection alive across several URLs in one curl via " .. path,
        function()
        if not need("curl") then return end
        local outs, args = {}, {}
        for i, n in ipairs { 1000, 70000, 1, 250000 } do
          outs[i] = tmpname("ka")
          args[#args + 1] = "-o " .. q(outs[i]) .. " " .. q(string.format(
            "%s/gen?n=%d&framing=%s", relay, n, i % 2 == 0 and "chunked" or "cl"))
        end
        args[#args + 1] = "-o /dev/null " .. q(static .. "/site/p2.html")
        local rc, o = run(string.format("curl -s --max-time 30 -x %s -w '%%{http_code}:" ..
          "%%{num_connects} ' %s", q(proxy(path)), table.concat(args, " ")))
        local sizes = {}
        for i, out in ipairs(outs) do
          sizes[i] = file_size(out)
          os.remove(out)
        end
        assert.equal(0, rc)
        -- Only the first transfer opens a connection to ferry.
        assert.equal("200:1 200:0 200:0 200:0 200:0 ", o)
        assert.same({ 1000, 70000, 1, 250000 }, sizes)
      end)

      it("tunnels with -p (CONNECT) 4 MB down and 4 MB up via " .. path, function()
        if not need("curl") then return end
        local status, headers, out = curl(path, relay .. "/gen?n=4194304&framing=cl", "-p")
        assert.same({ 200, 200 }, statuses(headers))
        assert.equal(200, status)
        assert.equal(header(headers, "X-Body-Sha256"), sha256_file(out))
        os.remove(out)
        local b = body(4 * MB)
        status, _, out = curl(path, relay .. "/sink", "-p -T " .. q(b.path))
        assert.equal(200, status)
        assert.equal(sink_answer(b), procs.read_file(out))
        os.remove(out)
      end)
    end

    it("uploads 100 MB with -T, direct", function()
      if not need("curl") then return end
      local b = body(100 * 1000 * 1000)
      local status, _, out = curl("direct", relay .. "/sink", "-T " .. q(b.path), 60)
      assert.equal(200, status)
      assert.equal(sink_answer(b), procs.read_file(out))
      os.remove(out)
      os.remove(b.path)
      bodies[b.n] = nil
    end)

    for _, path in ipairs { "direct", "tiny" } do
      it("serves every keep-alive request when the origin closes after each answer "
        .. "without Connection: close, via " .. path, function()
        if not need("curl") then return end
        local urls = {}
        for i = 1, 40 do urls[i] = q(static .. "/close-after") end
        local _, o = run(string.format("curl -s --max-time 30 -x %s -w '%%{http_code}\\n' %s",
          q(proxy(path)), table.concat(urls, " ")))
        local codes = {}
        for c in o:gmatch("(%d%d%d)\n") do codes[#codes + 1] = c end
        assert.equal(40, #codes)
        for _, c in ipairs(codes) do assert.equal("200", c) end
        assert.equal(40, select(2, o:gsub("ok\n", "")))
      end)
    end
  end)

  describe("an origin's oversized answer", function()
    it("is a 502 for the client and never takes the SOCKS5 proxy that carried it down",
      function()
      if not need("curl") then return end
      for _ = 1, 8 do
        local status, headers, out = curl("socks", static .. "/big-head")
        os.remove(out)
        assert.equal(502, status)
        assert.equal("FERRY-3031", header(headers, "X-Ferry-Error"))
      end
      assert.equal(0, procs.metric(A, "ferry_proxy_downs_total", 'proxy="2",pool="socks"'))
      assert.equal(0, procs.metric(A, "ferry_proxy_failures_total",
        'proxy="2",pool="socks",kind="handshake"'))
      assert.equal(1, procs.metric(A, "ferry_proxy_up", 'proxy="2",pool="socks"'))
    end)
  end)

  describe("wget", function()
    for _, path in ipairs(paths) do
      it("mirrors a small site recursively via " .. path, function()
        if not need("wget") then return end
        local dir = tmpname("wget")
        local rc, o = run(string.format("mkdir -p %s && cd %s && http_proxy=%s timeout 60 wget "
          .. "-q -r -l 3 -e robots=off -nH %s", q(dir), q(dir), q(proxy(path)),
          q(static .. "/site/index.html")))
        assert.equal(0, rc, o)
        local _, list = run("cd " .. q(dir) .. " && find . -type f | sort")
        assert.equal("./site/index.html\n./site/p1.html\n./site/p2.html\n./site/p3.html\n" ..
          "./site/sub/s1.html\n./site/sub/s2.html\n./site/sub/s3.html\n", list)
        local _, diff = run("diff -r " .. q(dir .. "/site") .. " " .. q(root .. "/site"))
        assert.equal("", diff)
        run("rm -rf " .. q(dir))
      end)

      it("resumes a partial download with -c (Range, 206) via " .. path, function()
        if not need("wget") then return end
        local dir = tmpname("wgetc")
        run(string.format("mkdir -p %s && head -c 1234567 %s > %s/resume.bin", q(dir),
          q(root .. "/resume.bin"), q(dir)))
        local rc, o = run(string.format("cd %s && http_proxy=%s timeout 60 wget -c -S %s",
          q(dir), q(proxy(path)), q(static .. "/resume.bin")))
        assert.equal(0, rc, o)
        assert.truthy(o:find("HTTP/1.1 206", 1, true), o)
        assert.truthy(o:find("Content-Range: bytes 1234567-" .. (3 * MB + 16) .. "/"
          .. (3 * MB + 17), 1, true), o)
        assert.equal(tree.resume_sha, sha256_file(dir .. "/resume.bin"))
        run("rm -rf " .. q(dir))
      end)
    end
  end)

  describe("python", function()
    local script = [==[
import hashlib, json, sys, urllib.request, urllib.error
proxy, relay, static, path, mode = sys.argv[1:6]
out = {}
if mode == "urllib":
    op = urllib.request.build_opener(urllib.request.ProxyHandler({"http": proxy}))
    r = op.open(relay + "/gen?n=3000000&framing=chunked", timeout=30)
    data = r.read()
    out["get"] = [r.status, len(data), hashlib.sha256(data).hexdigest() == r.headers["X-Body-Sha256"]]
    payload = open(path, "rb").read()
    r = op.open(urllib.request.Request(relay + "/sink", data=payload, method="POST"), timeout=30)
    out["post"] = [r.status, json.loads(r.read())]
    pieces = iter([payload[:70000], payload[70000:]])
    r = op.open(urllib.request.Request(relay + "/sink", data=pieces, method="PUT"), timeout=30)
    out["chunked"] = [r.status, json.loads(r.read())]
    try:
        op.open(static + "/no-such-file", timeout=30)
        out["missing"] = 200
    except urllib.error.HTTPError as e:
        out["missing"] = e.code
else:
    import requests
    s = requests.Session()
    s.proxies = {"http": proxy}
    conns = []
    for n in (1, 200000, 65536):
        r = s.get(relay + "/gen?n=%d&framing=cl" % n, timeout=30)
        conns.append(r.headers["X-Origin-Conn"])
        out.setdefault("gets", []).append([r.status_code, len(r.content),
            hashlib.sha256(r.content).hexdigest() == r.headers["X-Body-Sha256"]])
    out["origin_conns"] = len(set(conns))
    payload = open(path, "rb").read()
    def gen():
        for i in range(0, len(payload), 100000):
            yield payload[i:i + 100000]
    r = s.post(relay + "/sink", data=gen(), timeout=30)
    out["chunked"] = [r.status_code, r.json()]
    r = s.put(relay + "/sink", data=payload, timeout=30)
    out["put"] = [r.status_code, r.json()]
    r = s.head(static + "/resume.bin", timeout=30)
    out["head"] = [r.status_code, r.headers.get("Content-Length"), len(r.content)]
print(json.dumps(out))
]==]
    local script_path

    teardown(function()
      if script_path then os.remove(script_path) end
    end)

    local function py(path, mode, b)
      script_path = script_path or procs.write_file(tmpname("client.py"), script)
      local rc, o = run(string.format("timeout 90 python3 %s %s %s %s %s %s", q(script_path),
        q(proxy(path)), q(relay), q(static), q(b.path), mode))
      assert.equal(0, rc, o)
      return assert(cjson.decode(o:match("[^\n]+\n?$")), o)
    end

    for _, path in ipairs(paths) do
      it("urllib.request GETs, POSTs, streams a chunked PUT and sees a 404 via " .. path,
        function()
        if not need("python3") then return end
        local b = body(2 * MB)
        local r = py(path, "urllib", b)
        assert.same({ 200, 3000000, true }, r.get)
        assert.same({ 200, { len = b.n, sha256 = b.sha } }, r.post)
        assert.same({ 200, { len = b.n, sha256 = b.sha } }, r.chunked)
        assert.equal(404, r.missing)
      end)

      it("requests keeps one session alive, uploads chunked and PUT, HEADs via " .. path,
        function()
        if run("python3 -c 'import requests'") ~= 0 then
          pending("python3 requests is not installed")
          return
        end
        local b = body(2 * MB)
        local r = py(path, "requests", b)
        assert.same({ { 200, 1, true }, { 200, 200000, true }, { 200, 65536, true } }, r.gets)
        -- tinyproxy opens a new origin connection per request; ferry direct
        -- and microsocks keep the one the client's session holds.
        if path ~= "tiny" then assert.equal(1, r.origin_conns) end
        assert.same({ 200, { len = b.n, sha256 = b.sha } }, r.chunked)
        assert.same({ 200, { len = b.n, sha256 = b.sha } }, r.put)
        assert.same({ 200, tostring(3 * MB + 17), 0 }, r.head)
      end)
    end
  end)

  describe("node http (axios-style absolute-form, CONNECT, WebSocket upgrade)", function()
    local function node(path, mode, url, file)
      local rc, o = run(string.format("timeout 60 node %s %d %s %s %s",
        q(procs.root .. "/spec/helpers/node_client.js"), F[path], mode, q(url),
        file and q(file) or ""))
      assert.equal(0, rc, o)
      return assert(cjson.decode(o:match("[^\n]+\n?$")), o)
    end

    for _, path in ipairs(paths) do
      it("GETs three times on one keep-alive socket, byte-exact, via " .. path, function()
        if not need("node") then return end
        local r = node(path, "get", relay .. "/gen?n=300000&framing=chunked")
        assert.equal(1, r.sockets)
        assert.equal(3, #r.results)
        for _, res in ipairs(r.results) do
          assert.equal(200, res.status)
          assert.equal(300000, res.len)
          assert.equal(res.body_sha, res.sha256)
          assert.equal("1.1 ferry", res.via)
        end
      end)

      it("POSTs with Content-Length and streams a chunked POST via " .. path, function()
        if not need("node") then return end
        local b = body(5 * MB)
        for _, mode in ipairs { "post", "chunked" } do
          local r = node(path, mode, relay .. "/sink", b.path)
          assert.equal(200, r.status, mode)
          assert.equal(sink_answer(b), r.text, mode)
        end
      end)

      it("opens a CONNECT tunnel with http.request and GETs 3 MB over it via " .. path, function()
        if not need("node") then return end
        local r = node(path, "connect", static .. "/resume.bin")
        assert.equal(200, r.connect)
        assert.equal(200, r.status)
        assert.equal(3 * MB + 17, r.len)
        assert.equal(tree.resume_sha, r.sha256)
      end)
    end

    -- tinyproxy drops Upgrade (it carries no WebSocket over plain HTTP), so
    -- the upgrade runs direct and via SOCKS5 only.
    for _, path in ipairs { "direct", "socks" } do
      it("upgrades an absolute-form GET to WebSocket and echoes 270 KB via " .. path, function()
        if not need("node") then return end
        for _, scheme in ipairs { "http", "ws" } do
          local r = node(path, "ws", string.format("%s://127.0.0.1:%d/chat?x=1", scheme, W))
          assert.is_true(r.upgrade, scheme)
          assert.equal(101, r.status)
          assert.is_true(r.accept_ok)
          assert.equal("GET /chat?x=1 HTTP/1.1", r.request_line)
          assert.equal(3, r.echoed)
          assert.is_true(r.same)
        end
      end)
    end
  end)

  describe("git", function()
    for _, path in ipairs(paths) do
      it("clones a ~30 MB repository over dumb HTTP via " .. path, function()
        if not need("git") then return end
        local dir = tmpname("clone")
        local rc, o = run(string.format("timeout 90 git -c http.proxy=%s clone -q %s %s",
          q(proxy(path)), q(static .. "/repo.git"), q(dir)))
        assert.equal(0, rc, o)
        local _, head = run("git -C " .. q(dir) .. " rev-parse HEAD")
        assert.equal(tree.head, head:match("%x+"))
        assert.equal(tree.blob_sha, sha256_file(dir .. "/blob6"))
        local frc, fsck = run("git -C " .. q(dir) .. " fsck --full")
        assert.equal(0, frc, fsck)
        run("rm -rf " .. q(dir))
      end)
    end
  end)
end)
