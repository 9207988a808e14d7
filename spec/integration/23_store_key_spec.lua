-- Proxy credentials sealed in the SQLite store (store { key } / key_file)
-- against the real daemon: what sqlite3 shows of the file, a restart
-- with the key that brings back proxies that carry traffic, a plaintext
-- store sealed when a key is configured, and a wrong or missing key
-- refused at start with a coded error that never shows a password.
local procs = require("procs")
local cjson = require("cjson.safe")

local q = procs.quote
local PW_CONFIG = "Cfg-pw-51873"    -- the config's proxy (keyed by its URL)
local PW_RUNTIME = "Run-pw-90264"   -- a proxy added over the API (keyed by its URL)
local KEY_HEX = string.rep("3a7f", 16)
local OTHER_HEX = string.rep("c401", 16)

local function sh(cmd)
  local p = io.popen(cmd)
  local out = p:read("*a")
  p:close()
  return out
end

-- bin/ferry in the foreground, bounded by `timeout` in case it serves.
local function run(args)
  local out = procs.tmp .. "/store-key-" .. math.random(1, 1e9)
  local ok, _, code = os.execute("timeout 20 " .. q(procs.bin) .. " " .. args .. " >" .. out ..
    " 2>&1")
  local text = procs.read_file(out)
  os.remove(out)
  if type(ok) == "number" then code = ok / 256 end
  return code, text
end

-- Everything sqlite3 can see in the file (after the WAL is merged).
local function dump(db)
  return sh("sqlite3 " .. q(db) .. " .dump 2>&1")
end

local function assert_no_secret(text)
  for _, s in ipairs { PW_CONFIG, PW_RUNTIME, "alice", "bob" } do
    assert.is_nil(text:find(s, 1, true), s .. " found in:\n" .. text)
  end
end

describe("store sealed with a key", function()
  local origin, s1, s2
  local O, S1, S2 = procs.free_port(), procs.free_port(), procs.free_port()
  local base = "http://127.0.0.1:" .. O .. "/"

  setup(function()
    origin = procs.origin(O)
    s1 = procs.microsocks(S1, "alice", PW_CONFIG)
    s2 = procs.microsocks(S2, "bob", PW_RUNTIME)
  end)

  teardown(function()
    for _, p in ipairs { origin, s1, s2 } do procs.stop(p) end
  end)

  -- A config: the pool's own proxy through S1, the store with `key_line`.
  local function config(F, sock, db, key_line)
    return string.format([[
listen { name = "main", addr = "127.0.0.1:%d" }
admin  { socket = %q }
store  { path = %q%s }
pool "p" { strategy = "round_robin", retries = 0, all_down = "fail",
  proxies = { "socks5://alice:%s@127.0.0.1:%d" } }
route(function() return "p" end)
]], F, sock, db, key_line and (", " .. key_line) or "", PW_CONFIG, S1)
  end

  local function api(sock, method, path, body)
    local out = sh("curl -s -S --max-time 10 --unix-socket " .. q(sock) .. " -X " .. method ..
      " -w '\\n%{http_code}' " .. (body and ("--data-binary " .. q(body) .. " ") or "") ..
      q("http://ferry" .. path))
    local resp, code = out:match("^(.*)\n(%d+)$")
    return tonumber(code), resp
  end

  -- Start ferry, add the runtime proxy and disable the config's one, so
  -- traffic proves the runtime proxy works; then stop (health is saved).
  local function populate(F, sock, db, key_line)
    local ferry = procs.ferry(config(F, sock, db, key_line), { F })
    local code, body = api(sock, "POST", "/api/v1/proxies", cjson.encode {
      pool = "p", url = string.format("socks5://bob:%s@127.0.0.1:%d", PW_RUNTIME, S2) })
    assert.equal(201, code, body)
    code, body = api(sock, "POST", "/api/v1/proxies/1/disable")
    assert.equal(200, code, body)
    assert.equal(200, (procs.curl { url = base, proxy = "http://127.0.0.1:" .. F }))
    procs.stop_ferry(ferry)
    return ferry
  end

  it("keeps no credential readable in the file, and a restart with the key serves", function()
    local F = procs.free_port()
    local sock = string.format("%s/store-key-%d.sock", procs.tmp, F)
    local db = string.format("%s/store-key-%d.db", procs.tmp, F)
    local keyfile = string.format("%s/store-key-%d.key", procs.tmp, F)
    populate(F, sock, db, string.format("key = %q", KEY_HEX))
    local text = dump(db)
    assert_no_secret(text)
    assert.matches("enc:v1:", text, 1, true)
    assert.equal("2", sh("sqlite3 " .. q(db) ..
      " \"SELECT value FROM meta WHERE key = 'schema_version'\""):match("%d+"))

    -- The same key from a file of 32 raw bytes: the proxies come back
    -- and carry traffic; the config's proxy stays disabled.
    procs.write_file(keyfile, (KEY_HEX:gsub("%x%x", function(h)
      return string.char(tonumber(h, 16)) end)))
    local ferry = procs.ferry(config(F, sock, db, string.format("key_file = %q", keyfile)), { F })
    local code, body = api(sock, "GET", "/api/v1/proxies")
    assert.equal(200, code, body)
    local list = cjson.decode(body)
    assert.equal(2, list.total)
    local states = {}
    for _, p in ipairs(list.proxies) do states[p.source] = p.state end
    assert.same({ config = "disabled", runtime = "up" }, states)
    assert.equal(200, (procs.curl { url = base, proxy = "http://127.0.0.1:" .. F }))
    procs.stop_ferry(ferry)
    assert_no_secret(dump(db))
    assert_no_secret(procs.read_file(ferry.log))
  end)

  it("refuses to start with another key or with none, with a coded error", function()
    local F = procs.free_port()
    local sock = string.format("%s/store-key-%d.sock", procs.tmp, F)
    local db = string.format("%s/store-key-%d.db", procs.tmp, F)
    populate(F, sock, db, string.format("key = %q", KEY_HEX))
    local before = dump(db)
    local cfg = procs.write_file(procs.tmp .. "/store-key-wrong-" .. F .. ".lua",
      config(F, sock, db, string.format("key = %q", OTHER_HEX)))
    local code, out = run("-c " .. q(cfg))
    assert.equal(1, code, out)
    assert.matches("FERRY-0212", out, 1, true)
    assert_no_secret(out)
    procs.write_file(cfg, config(F, sock, db, nil))
    code, out = run("-c " .. q(cfg))
    assert.equal(1, code, out)
    assert.matches("FERRY-0211", out, 1, true)
    assert_no_secret(out)
    -- Neither attempt changed the file.
    assert.equal(before, dump(db))
  end)

  it("seals a plaintext store when a key is configured", function()
    local F = procs.free_port()
    local sock = string.format("%s/store-key-%d.sock", procs.tmp, F)
    local db = string.format("%s/store-key-%d.db", procs.tmp, F)
    populate(F, sock, db, nil)
    -- Without a key the credentials are in the file (mode 0600).
    local plain = dump(db)
    assert.matches(PW_RUNTIME, plain, 1, true)
    assert.matches(PW_CONFIG, plain, 1, true)
    local ferry = procs.ferry(config(F, sock, db, string.format("key = %q", KEY_HEX)), { F })
    assert.equal(200, (procs.curl { url = base, proxy = "http://127.0.0.1:" .. F }))
    local sealed
    for _, l in ipairs(procs.log_lines(ferry)) do
      if l.code == "FERRY-0213" then sealed = l end
    end
    assert.is_table(sealed, procs.read_file(ferry.log))
    procs.stop_ferry(ferry)
    assert_no_secret(dump(db))
  end)

  -- The log lines with code, after a reload was asked for.
  local function logged(ferry, code)
    local out = {}
    for _, l in ipairs(procs.log_lines(ferry)) do
      if l.code == code then out[#out + 1] = l end
    end
    return out
  end

  it("a reload seals a plaintext store, and one with another key is refused", function()
    local F = procs.free_port()
    local sock = string.format("%s/store-key-%d.sock", procs.tmp, F)
    local db = string.format("%s/store-key-%d.db", procs.tmp, F)
    populate(F, sock, db, nil)
    local ferry = procs.ferry(config(F, sock, db, nil), { F })
    procs.write_file(ferry.config, config(F, sock, db, string.format("key = %q", KEY_HEX)))
    procs.signal(ferry, "HUP")
    assert.is_true(procs.wait_for(function() return #logged(ferry, "FERRY-0101") == 1 end, 10),
      procs.read_file(ferry.log))
    assert.equal(1, #logged(ferry, "FERRY-0213"))
    assert_no_secret(dump(db))

    procs.write_file(ferry.config, config(F, sock, db, string.format("key = %q", OTHER_HEX)))
    procs.signal(ferry, "HUP")
    assert.is_true(procs.wait_for(function() return #logged(ferry, "FERRY-0102") == 1 end, 10),
      procs.read_file(ferry.log))
    assert.matches("FERRY-0212", logged(ferry, "FERRY-0102")[1].msg, 1, true)
    -- The running config and its store go on: traffic, and a change
    -- sealed with the key that is running.
    assert.equal(200, (procs.curl { url = base, proxy = "http://127.0.0.1:" .. F }))
    local frank = string.format("socks5://frank:%s@127.0.0.1:%d", PW_RUNTIME, S2)
    local code, body = api(sock, "POST", "/api/v1/proxies", cjson.encode {
      pool = "p", url = frank })
    assert.equal(201, code, body)
    procs.stop_ferry(ferry)
    assert_no_secret(dump(db))
    ferry = procs.ferry(config(F, sock, db, string.format("key = %q", KEY_HEX)), { F })
    code, body = api(sock, "GET", "/api/v1/proxies?pool=p")
    assert.equal(200, code, body)
    assert.equal(3, cjson.decode(body).total, body)
    procs.stop_ferry(ferry)
    local text = dump(db)
    assert_no_secret(text)
    assert.is_nil(text:find("frank", 1, true))
  end)

  it("refuses a key that is not 32 bytes, and key with key_file, at check", function()
    local F = procs.free_port()
    local db = string.format("%s/store-key-%d.db", procs.tmp, F)
    local cfg = procs.tmp .. "/store-key-check-" .. F .. ".lua"
    for _, case in ipairs {
      { 'key = "0123abcd"', "store: key: not a 32%-byte key" },
      { string.format("key = %q", KEY_HEX:sub(1, 62) .. "zz"), "store: key: not a 32%-byte key" },
      { string.format("key = %q, key_file = %q", KEY_HEX, cfg), "give key or key_file, not both" },
      { 'key_file = "/nonexistent/ferry.key"', "store: key_file: cannot read" },
    } do
      procs.write_file(cfg, config(F, "/tmp/unused.sock", db, case[1]))
      local code, out = run("check -c " .. q(cfg))
      assert.equal(1, code, out)
      assert.matches(case[2], out)
    end
    -- base64 of the same 32 bytes is a key too.
    local raw = procs.write_file(cfg .. ".raw", (KEY_HEX:gsub("%x%x", function(h)
      return string.char(tonumber(h, 16)) end)))
    local b64 = sh("base64 -w0 " .. q(raw))
    assert.equal(44, #b64)
    procs.write_file(cfg, config(F, "/tmp/unused.sock", db, string.format("key = %q", b64)))
    local code, out = run("check -c " .. q(cfg))
    assert.equal(0, code, out)
  end)
end)
