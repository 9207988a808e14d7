-- Ferry's CA: `ferry ca init` checked with the openssl CLI (P-256, CA
-- true and critical, key usage, name constraints, a 0600 key that is
-- never overwritten); leaves minted through the daemon's own path
-- (`ferry ca mint` runs a TLS handshake against mint_leg_accept) checked
-- with `openssl verify` (SAN, lifetime, key type, chain, SNI rule, name
-- constraints, a client that refuses the certificate, the cache); and
-- tls { ca_cert, ca_key } refused at start, by `ferry check` and at a
-- reload, where the old config keeps serving.
local procs = require("procs")

local q = procs.quote

-- Run a command; its exit code, standard output and standard error.
local function sh(cmd)
  local out = string.format("%s/ca-out-%d", procs.tmp, math.random(1, 1e9))
  local ok, _, code = os.execute(cmd .. " >" .. q(out) .. " 2>" .. q(out .. ".err"))
  if type(ok) == "number" then code = ok / 256 end -- Lua 5.1 / LuaJIT: the wait status
  if ok == true then code = 0 end
  local o, e = procs.read_file(out), procs.read_file(out .. ".err")
  os.remove(out) os.remove(out .. ".err")
  return code, o, e
end

local function ferry(args)
  return sh(q(procs.bin) .. " " .. args)
end

local function openssl(args)
  local code, out, err = sh("openssl " .. args)
  return code, out .. err
end

-- Epoch seconds of an `openssl x509 -enddate/-startdate` line.
local function x509_date(file, which)
  local _, out = openssl("x509 -noout -" .. which .. " -in " .. q(file))
  local d = out:match("=(.-)\n")
  local _, epoch = sh("date -u -d " .. q(d) .. " +%s")
  return tonumber(epoch)
end

-- Split a PEM bundle into files dir/name-1.pem, -2 ...; their count.
local function split_pem(text, prefix)
  local n = 0
  for pem in text:gmatch("%-%-%-%-%-BEGIN CERTIFICATE%-%-%-%-%-.-%-%-%-%-%-END CERTIFICATE%-%-%-%-%-") do
    n = n + 1
    procs.write_file(prefix .. "-" .. n .. ".pem", pem .. "\n")
  end
  return n
end

describe("ferry ca", function()
  local dir = procs.tmp .. "/ca-" .. math.random(1, 1e9)
  local ca, nc = dir .. "/plain", dir .. "/constrained"

  setup(function()
    os.execute("mkdir -p " .. q(dir))
  end)

  teardown(function()
    os.execute("rm -rf " .. q(dir))
  end)

  it("init writes a P-256 CA, critical CA:TRUE and keyCertSign, and a 0600 key", function()
    -- A permissive umask must not make the key readable by others.
    local code, out, err = sh("umask 000; " .. q(procs.bin) .. " ca init " .. q(ca))
    assert.equal(0, code, err)
    assert.truthy(out:find("ca.key", 1, true))
    local _, mode = sh("stat -c %a " .. q(ca .. "/ca.key"))
    assert.equal("600", (mode:gsub("%s+$", "")))
    local c, text = openssl("x509 -noout -text -in " .. q(ca .. "/ca.crt"))
    assert.equal(0, c, text)
    assert.truthy(text:find("ASN1 OID: prime256v1", 1, true), text)
    assert.truthy(text:find("Basic Constraints: critical\n%s+CA:TRUE"), text)
    assert.truthy(text:find("Key Usage: critical\n%s+Certificate Sign, CRL Sign"), text)
    assert.truthy(text:find("Subject Key Identifier", 1, true), text)
    assert.falsy(text:find("Name Constraints", 1, true))
    local v, vout = openssl("verify -CAfile " .. q(ca .. "/ca.crt") .. " " .. q(ca .. "/ca.crt"))
    assert.equal(0, v, vout)
    local k, kout = openssl("pkey -noout -text -in " .. q(ca .. "/ca.key"))
    assert.equal(0, k, kout)
    assert.truthy(kout:find("prime256v1", 1, true), kout)
    -- Valid for the default 3650 days.
    local days = (x509_date(ca .. "/ca.crt", "enddate") - os.time()) / 86400
    assert.is_true(days > 3649 and days < 3651, tostring(days))
  end)

  it("init refuses to overwrite an existing key", function()
    local sum = procs.sha256_file(ca .. "/ca.key")
    local crt = procs.sha256_file(ca .. "/ca.crt")
    local code, _, err = ferry("ca init " .. q(ca))
    assert.is_not.equal(0, code)
    assert.truthy(err:find("FERRY-7600", 1, true), err)
    assert.truthy(err:find("refusing to overwrite", 1, true), err)
    assert.equal(sum, procs.sha256_file(ca .. "/ca.key"))
    assert.equal(crt, procs.sha256_file(ca .. "/ca.crt"))
  end)

  it("init puts critical name constraints in when asked, and takes --days and --subject",
    function()
      local code, out, err = ferry("ca init " .. q(nc) .. " --name-constraint example.com " ..
        "--name-constraint example.org --days 30 --subject '/CN=Spec CA/O=Acme'")
      assert.equal(0, code, err)
      assert.truthy(out:find("example.com example.org", 1, true), out)
      local _, text = openssl("x509 -noout -text -in " .. q(nc .. "/ca.crt"))
      assert.truthy(text:find("Name Constraints: critical", 1, true), text)
      assert.truthy(text:find("Permitted:%s+DNS:example.com%s+DNS:example.org"), text)
      -- No address may be certified: IP SANs would escape DNS constraints.
      assert.truthy(text:find("Excluded:%s+IP:0.0.0.0/0.0.0.0"), text)
      assert.truthy(text:find("Subject: CN = Spec CA, O = Acme", 1, true), text)
      local days = (x509_date(nc .. "/ca.crt", "enddate") - os.time()) / 86400
      assert.is_true(days > 29 and days < 31, tostring(days))
    end)

  it("init refuses bad arguments before writing anything", function()
    for _, args in ipairs { "--days 0", "--days 40000", "--days x",
                            "--name-constraint 'bad name!'", "--name-constraint 10.0.0.1",
                            "--subject 'XX=1'" } do
      local d = dir .. "/bad"
      local code, _, err = ferry("ca init " .. q(d) .. " " .. args)
      assert.is_not.equal(0, code, args)
      assert.truthy(err:find("FERRY-7602", 1, true), args .. ": " .. err)
      assert.is_nil(io.open(d .. "/ca.key"), args)
    end
    local code, _, err = ferry("ca init")
    assert.equal(2, code)
    assert.truthy(err:find("usage", 1, true), err)
  end)

  it("mint: a P-256 leaf for the name, chained to the CA, living a day from an hour ago",
    function()
      local code, out, err = ferry("ca mint " .. q(ca) .. " api.example.com")
      assert.equal(0, code, err)
      -- ALPN: http/1.1 chosen although the client offered h2 first.
      assert.truthy(err:find("ALPN http/1.1", 1, true), err)
      local prefix = dir .. "/leaf"
      assert.equal(2, split_pem(out, prefix)) -- leaf + CA
      local leaf = prefix .. "-1.pem"
      local v, vout = openssl("verify -CAfile " .. q(ca .. "/ca.crt") .. " " .. q(leaf))
      assert.equal(0, v, vout)
      assert.equal(procs.sha256_file(ca .. "/ca.crt"), procs.sha256_file(prefix .. "-2.pem"))
      local _, text = openssl("x509 -noout -text -in " .. q(leaf))
      assert.truthy(text:find("DNS:api.example.com", 1, true), text)
      assert.truthy(text:find("Subject: CN = api.example.com", 1, true), text)
      assert.truthy(text:find("ASN1 OID: prime256v1", 1, true), text)
      assert.truthy(text:find("ecdsa-with-SHA256", 1, true), text)
      assert.truthy(text:find("TLS Web Server Authentication", 1, true), text)
      assert.truthy(text:find("Authority Key Identifier", 1, true), text)
      assert.truthy(text:find("CA:FALSE", 1, true), text)
      -- A 128-bit serial.
      local serial = text:match("Serial Number:%s+([%x:]+)")
      assert.equal(16, select(2, serial:gsub("%x%x", "")), serial)
      local nb, na = x509_date(leaf, "startdate"), x509_date(leaf, "enddate")
      assert.is_true(math.abs(na - nb - 25 * 3600) <= 2, tostring(na - nb))
      assert.is_true(math.abs(os.time() - 3600 - nb) <= 60, tostring(os.time() - nb))
      -- openssl verify checks the purpose too.
      local p, pout = openssl("verify -purpose sslserver -CAfile " .. q(ca .. "/ca.crt") .. " " ..
        q(leaf))
      assert.equal(0, p, pout)
    end)

  it("mint: an IP literal gets an IP SAN; a client without SNI gets the CONNECT host's leaf",
    function()
      local code, out, err = ferry("ca mint " .. q(ca) .. " 127.0.0.1")
      assert.equal(0, code, err)
      split_pem(out, dir .. "/ip")
      local _, text = openssl("x509 -noout -text -in " .. q(dir .. "/ip-1.pem"))
      assert.truthy(text:find("IP Address:127.0.0.1", 1, true), text)
      local v, vout = openssl("verify -CAfile " .. q(ca .. "/ca.crt") .. " " .. q(dir .. "/ip-1.pem"))
      assert.equal(0, v, vout)
      code, out, err = ferry("ca mint " .. q(ca) .. " Name.Example.NET. --no-sni")
      assert.equal(0, code, err)
      split_pem(out, dir .. "/nosni")
      _, text = openssl("x509 -noout -text -in " .. q(dir .. "/nosni-1.pem"))
      assert.truthy(text:find("DNS:name.example.net\n", 1, true), text)
    end)

  it("mint: an SNI other than the CONNECT host fails the handshake with FERRY-1080", function()
    local code, out, err = ferry("ca mint " .. q(ca) .. " api.example.com --sni evil.example.com")
    assert.equal(1, code)
    assert.equal("", out)
    assert.truthy(err:find("FERRY-1080", 1, true), err)
    -- Case and a trailing dot do not matter.
    code, out, err = ferry("ca mint " .. q(ca) .. " api.example.com --sni API.Example.COM.")
    assert.truthy(out:find("BEGIN CERTIFICATE", 1, true))
    assert.equal(0, code, err)
  end)

  it("mint: names outside the CA's name constraints are refused; clients would fail them too",
    function()
      local code, out, err = ferry("ca mint " .. q(nc) .. " www.example.org")
      assert.equal(0, code, err)
      split_pem(out, dir .. "/in")
      local v, vout = openssl("verify -CAfile " .. q(nc .. "/ca.crt") .. " " .. q(dir .. "/in-1.pem"))
      assert.equal(0, v, vout)
      for _, name in ipairs { "www.other.net", "127.0.0.1" } do
        code, out, err = ferry("ca mint " .. q(nc) .. " " .. name)
        assert.equal(1, code, name)
        assert.equal("", out)
        assert.truthy(err:find("FERRY-1082", 1, true), err)
        assert.truthy(err:find("name constraints", 1, true), err)
        -- mint_prepare says so before any handshake.
        code, out, err = ferry("ca mint " .. q(nc) .. " " .. name .. " --prepare")
        assert.equal(1, code, name)
        assert.equal("", out)
        assert.truthy(err:find(name .. ": FERRY-1082: the name is outside", 1, true), err)
        -- What a client would make of it, minted without ferry's check.
        code, out, err = ferry("ca mint " .. q(nc) .. " " .. name .. " --unchecked")
        assert.equal(0, code, err)
        split_pem(out, dir .. "/out")
        v, vout = openssl("verify -CAfile " .. q(nc .. "/ca.crt") .. " " .. q(dir .. "/out-1.pem"))
        assert.is_not.equal(0, v)
        assert.truthy(vout:find("subtree violation", 1, true), vout)
      end
    end)

  it("mint: a client that does not trust the CA refuses it, and ferry says so (FERRY-1081)",
    function()
      local code, _, err = ferry("ca mint " .. q(ca) .. " api.example.com --verify " ..
        q(nc .. "/ca.crt"))
      assert.equal(1, code)
      assert.truthy(err:find("FERRY-1081", 1, true), err)
      assert.truthy(err:find("[client refused]", 1, true), err)
      code, _, err = ferry("ca mint " .. q(ca) .. " api.example.com --verify " ..
        q(ca .. "/ca.crt"))
      assert.equal(0, code, err)
    end)

  it("mint: one leaf per name, then the cache", function()
    local code, _, err = ferry("ca mint " .. q(ca) .. " api.example.com --repeat 5")
    assert.equal(0, code, err)
    assert.truthy(err:find("minted 1, cache hits 4, evictions 0, cached 1", 1, true), err)
    -- mint_prepare mints into the cache: the handshake after it is a hit.
    code, _, err = ferry("ca mint " .. q(ca) .. " api.example.com --prepare")
    assert.equal(0, code, err)
    assert.truthy(err:find("minted 1, cache hits 1, evictions 0, cached 1", 1, true), err)
    -- A bounded LRU: with room for two, a third name evicts the least recently used.
    code, _, err = ferry("ca mint " .. q(ca) .. " a.example b.example a.example c.example " ..
      "a.example b.example --cache 2")
    assert.equal(0, code, err)
    -- a b [a hit] c (evicts b) [a hit] b (evicts c)
    assert.truthy(err:find("minted 4, cache hits 2, evictions 2, cached 2", 1, true), err)
    -- The minting rate, names inside the constraints of a constrained CA.
    local out
    code, out, err = ferry("ca mint " .. q(nc) .. " example.org --bench 20")
    assert.equal(0, code, err)
    assert.truthy(out:match("^20 leaves minted in [%d.]+ ms: %d+ per second"), out)
  end)

  it("mint: a leaf never outlives its CA", function()
    local short = dir .. "/short"
    assert.equal(0, (ferry("ca init " .. q(short) .. " --days 1")))
    local code, out, err = ferry("ca mint " .. q(short) .. " api.example.com")
    assert.equal(0, code, err)
    split_pem(out, dir .. "/short")
    assert.is_true(x509_date(dir .. "/short-1.pem", "enddate") <=
                   x509_date(short .. "/ca.crt", "enddate"))
  end)
end)

describe("tls { ca_cert, ca_key }", function()
  local dir = procs.tmp .. "/cacfg-" .. math.random(1, 1e9)
  local O, P, A = procs.free_port(), procs.free_port(), procs.free_port()
  local origin, f

  local function cfg(cert, key)
    return string.format([[
listen { addr = "127.0.0.1:%d" }
admin { addr = "127.0.0.1:%d" }
tls { ca_cert = %q, ca_key = %q, leaf_cache = 10 }
]], P, A, cert, key)
  end

  setup(function()
    os.execute("mkdir -p " .. q(dir))
    assert.equal(0, (ferry("ca init " .. q(dir .. "/a"))))
    assert.equal(0, (ferry("ca init " .. q(dir .. "/b"))))
    -- A certificate and key that match but make no CA.
    assert.equal(0, (sh("openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes " ..
      "-keyout " .. q(dir .. "/leaf.key") .. " -out " .. q(dir .. "/leaf.crt") ..
      " -subj /CN=leaf -days 2 -addext basicConstraints=critical,CA:FALSE")))
    origin = procs.origin(O)
  end)

  teardown(function()
    if f then procs.stop_ferry(f) end
    if origin then procs.stop(origin) end
    os.execute("rm -rf " .. q(dir))
  end)

  local bad = {
    { "a/ca.crt", "b/ca.key", "FERRY-0181" },
    { "leaf.crt", "leaf.key", "FERRY-0182" },
    { "a/ca.crt", "a/missing.key", "FERRY-0180" },
    { "a/ca.crt", "a/ca.crt", "FERRY-0180" },
  }

  it("ferry check and ferry run refuse a CA that does not load, with its code", function()
    local good = procs.write_file(dir .. "/good.lua", cfg(dir .. "/a/ca.crt", dir .. "/a/ca.key"))
    local code, out, err = ferry("check -c " .. q(good))
    assert.equal(0, code, err)
    assert.truthy(out:find("ok", 1, true))
    local _
    -- A key others may read loads, with a warning.
    os.execute("chmod 644 " .. q(dir .. "/a/ca.key"))
    code, _, err = ferry("check -c " .. q(good))
    os.execute("chmod 600 " .. q(dir .. "/a/ca.key"))
    assert.equal(0, code, err)
    assert.truthy(err:find("FERRY-0184", 1, true), err)
    assert.truthy(err:find("mode 644", 1, true), err)
    for i, b in ipairs(bad) do
      local file = procs.write_file(dir .. "/bad" .. i .. ".lua",
        cfg(dir .. "/" .. b[1], dir .. "/" .. b[2]))
      code, _, err = ferry("check -c " .. q(file))
      assert.equal(1, code, b[3])
      assert.truthy(err:find(b[3], 1, true), b[3] .. ": " .. err)
      code, _, err = ferry("run -c " .. q(file))
      assert.equal(1, code, b[3])
      assert.truthy(err:find(b[3], 1, true), b[3] .. ": " .. err)
    end
  end)

  it("a reload with a broken CA is refused and the old config keeps serving", function()
    f = procs.ferry(cfg(dir .. "/a/ca.crt", dir .. "/a/ca.key"), { P, A })
    local base = "http://127.0.0.1:" .. O
    local status = procs.curl { url = base .. "/bytes/100", proxy = "127.0.0.1:" .. P }
    assert.equal(200, status)
    assert.equal(0, procs.metric(A, "ferry_tls_leaves_minted_total"))
    local function count(code)
      local n = 0
      for _, l in ipairs(procs.log_lines(f)) do
        if l.code == code or (l.msg or ""):find(code, 1, true) then n = n + 1 end
      end
      return n
    end
    assert.equal(1, count("FERRY-0183")) -- the CA in use, once
    local failed = 0
    for _, b in ipairs(bad) do
      procs.write_file(f.config, cfg(dir .. "/" .. b[1], dir .. "/" .. b[2]))
      procs.signal(f, "HUP")
      failed = failed + 1
      assert(procs.wait_for(function()
        return procs.metric(A, "ferry_reloads_total", 'result="error"') == failed
      end), "reload not refused: " .. b[3])
      assert.truthy(count(b[3]) >= 1, b[3] .. "\n" .. procs.read_file(f.log))
      status = procs.curl { url = base .. "/bytes/100", proxy = "127.0.0.1:" .. P }
      assert.equal(200, status)
    end
    assert.equal(1, count("FERRY-0183"))
    -- The same CA again: the reload goes through and the CA stays as it was.
    procs.write_file(f.config, cfg(dir .. "/a/ca.crt", dir .. "/a/ca.key"))
    procs.signal(f, "HUP")
    assert(procs.wait_for(function()
      return procs.metric(A, "ferry_reloads_total", 'result="ok"') == 1
    end))
    assert.equal(1, count("FERRY-0183"))
    -- Another CA: in use from this reload on.
    procs.write_file(f.config, cfg(dir .. "/b/ca.crt", dir .. "/b/ca.key"))
    procs.signal(f, "HUP")
    assert(procs.wait_for(function() return count("FERRY-0183") == 2 end))
    assert.equal(2, procs.metric(A, "ferry_reloads_total", 'result="ok"'))
    -- And none: a config without tls {} drops it.
    procs.write_file(f.config, string.format('listen { addr = "127.0.0.1:%d" }\n' ..
      'admin { addr = "127.0.0.1:%d" }\n', P, A))
    procs.signal(f, "HUP")
    assert(procs.wait_for(function()
      return procs.metric(A, "ferry_reloads_total", 'result="ok"') == 3
    end))
    status = procs.curl { url = base .. "/bytes/100", proxy = "127.0.0.1:" .. P }
    assert.equal(200, status)
    procs.stop_ferry(f)
    f = nil
  end)
end)
