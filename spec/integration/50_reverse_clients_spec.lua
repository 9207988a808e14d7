-- Real clients of a site behind the reverse listener: Python requests
-- (one keep-alive Session), Node's http module (a keep-alive agent) and
-- wget, against two spec origins as backends.  Each client sees whole
-- answers from both backends, bodies intact both ways.
local procs = require("procs")

local q = procs.quote

local function run(cmd)
  local p = io.popen(cmd .. " 2>&1; echo \"rc=$?\"")
  local out = p:read("*a")
  p:close()
  local rc = tonumber(out:match("rc=(%d+)%s*$"))
  return rc, (out:gsub("rc=%d+%s*$", ""))
end

local function have(bin)
  return run("command -v " .. bin .. " >/dev/null") == 0
end

local function need(bin)
  if not have(bin) then
    pending(bin .. " is not installed")
    return false
  end
  return true
end

local PY = [[
import hashlib, json, os, sys
import requests
base = sys.argv[1]
s = requests.Session()
who = [s.get(base + "/whoami", timeout=20).text.strip() for _ in range(6)]
big = os.urandom(1 << 20)
r = s.post(base + "/echo", data=big, timeout=20)
print(json.dumps({"who": who, "echo_ok": r.content == big, "status": r.status_code,
                  "via": r.headers.get("Via")}))
]]

local NODE = [[
const http = require('http');
const agent = new http.Agent({ keepAlive: true, maxSockets: 1 });
const base = process.argv[1];
const who = [];
function one(i) {
  if (i === 6) { console.log(JSON.stringify({ who })); agent.destroy(); return; }
  http.get(base + '/whoami', { agent, headers: { Host: 'node.example' } }, (res) => {
    let b = '';
    res.on('data', (d) => { b += d; });
    res.on('end', () => { who.push(res.statusCode + ' ' + b.trim()); one(i + 1); });
  }).on('error', (e) => { console.log(JSON.stringify({ error: String(e) })); });
}
one(0);
]]

describe("reverse listener clients", function()
  local O1, O2, F = procs.free_port(), procs.free_port(), procs.free_port()
  local o1, o2, ferry
  local base = "http://127.0.0.1:" .. F
  local both = { ["origin " .. O1] = true, ["origin " .. O2] = true }

  setup(function()
    o1, o2 = procs.origin(O1), procs.origin(O2)
    ferry = procs.ferry(string.format([[
listen { name = "site", addr = "127.0.0.1:%d", protocol = "reverse", pool = "app" }
pool "app" { strategy = "round_robin",
             backends = { "http://127.0.0.1:%d", "http://127.0.0.1:%d" } }
]], F, O1, O2), { F })
  end)

  teardown(function()
    if ferry then procs.stop_ferry(ferry) end
    procs.stop(o1)
    procs.stop(o2)
  end)

  it("serves Python requests: a keep-alive session, 1 MiB echoed", function()
    if not need("python3") then return end
    local path = string.format("%s/rev-client-%d.py", procs.tmp, F)
    procs.write_file(path, PY)
    local rc, out = run("timeout 60 python3 " .. q(path) .. " " .. q(base))
    assert.equal(0, rc, out)
    local res = require("cjson").decode(out:match("{.*}"))
    assert.equal(6, #res.who)
    local seen = {}
    for _, w in ipairs(res.who) do
      assert.is_true(both[w], w)
      seen[w] = true
    end
    assert.is_true(seen["origin " .. O1] and seen["origin " .. O2])
    assert.is_true(res.echo_ok)
    assert.equal(200, res.status)
    assert.equal("1.1 ferry", res.via)
    os.remove(path)
  end)

  it("serves Node's http module with a keep-alive agent", function()
    if not need("node") then return end
    local rc, out = run("timeout 60 node -e " .. q(NODE) .. " " .. q(base))
    assert.equal(0, rc, out)
    local res = require("cjson").decode(out:match("{.*}"))
    assert.is_nil(res.error)
    assert.equal(6, #res.who)
    local n = { ["200 origin " .. O1] = 0, ["200 origin " .. O2] = 0 }
    for _, w in ipairs(res.who) do
      assert.is_not_nil(n[w], w)
      n[w] = n[w] + 1
    end
    assert.same({ ["200 origin " .. O1] = 3, ["200 origin " .. O2] = 3 }, n)
  end)

  it("serves wget, a 1 MiB download whole", function()
    if not need("wget") then return end
    local file = string.format("%s/rev-wget-%d.bin", procs.tmp, F)
    local rc, out = run("timeout 60 wget -q -O " .. q(file) .. " " .. q(base .. "/bytes/1048576"))
    assert.equal(0, rc, out)
    assert.equal(1048576, procs.file_size(file))
    rc, out = run("timeout 60 wget -q -O - " .. q(base .. "/whoami"))
    assert.equal(0, rc, out)
    assert.is_true(both[out:gsub("%s+$", "")], out)
    os.remove(file)
  end)
end)
