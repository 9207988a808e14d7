local url = require("ferry.url")

describe("url.parse", function()
  it("parses an http proxy with credentials", function()
    local p = url.parse("http://user:pass@10.0.0.1:3128")
    assert.same({ scheme = "http", host = "10.0.0.1", port = 3128, user = "user", pass = "pass" }, p)
  end)

  it("accepts socks5h as socks5 and brackets IPv6 hosts", function()
    local p = url.parse("SOCKS5H://[::1]:1080")
    assert.equal("socks5", p.scheme)
    assert.equal("::1", p.host)
    assert.equal(1080, p.port)
  end)

  it("fills default ports per scheme", function()
    assert.equal(8080, url.parse("http://proxy.example").port)
    assert.equal(1080, url.parse("socks5://proxy.example").port)
    assert.equal(443, url.parse("https://proxy.example").port)
    assert.equal(1080, url.parse("socks4://proxy.example").port)
    assert.equal(1080, url.parse("socks4a://proxy.example").port)
  end)

  it("parses https, socks4 and socks4a proxies (schemes case-insensitive)", function()
    assert.same({ scheme = "https", host = "p.example", port = 8443, user = "u", pass = "pw" },
      url.parse("HTTPS://u:pw@p.example:8443"))
    assert.same({ scheme = "socks4", host = "10.0.0.2", port = 1081 },
      url.parse("socks4://10.0.0.2:1081"))
    assert.same({ scheme = "socks4a", host = "::1", port = 1080 }, url.parse("Socks4A://[::1]"))
  end)

  it("takes a SOCKS4 user id from the user part, and refuses a password", function()
    local p = url.parse("socks4://alice@h:1080")
    assert.equal("alice", p.user)
    assert.equal("", p.pass)
    assert.equal("bob", url.parse("socks4a://bob@h").user)
    for _, u in ipairs { "socks4://alice:secret@h:1080", "socks4a://alice:@h:1080" } do
      local q, err = url.parse(u)
      assert.is_nil(q)
      assert.matches("SOCKS4 has no password", err)
      assert.not_matches("secret", err)
    end
    local q, err = url.parse("socks4://" .. string.rep("u", 256) .. "@h:1")
    assert.is_nil(q)
    assert.matches("limited to 255 bytes", err)
  end)

  it("shows socks4 proxies like the others", function()
    assert.equal("socks4a://***@h:1080", url.display(url.parse("socks4a://id@h")))
  end)

  it("percent-decodes credentials and allows an empty password", function()
    local p = url.parse("http://me%40corp:p%3Aw@h:1/")
    assert.equal("me@corp", p.user)
    assert.equal("p:w", p.pass)
    assert.equal("", url.parse("http://onlyuser@h:1").pass)
  end)

  it("rejects what is not a proxy URL, saying why", function()
    local cases = {
      ["ftp://h:1"] = 'unsupported scheme "ftp"',
      ["http://h:99999"] = 'invalid port "99999"',
      ["http://h:0"] = 'invalid port "0"',
      ["http://h:x1"] = 'invalid port "x1"',
      ["http://:80"] = "missing host",
      ["http://h:1/path"] = "must not have a path",
      ["http://h:1?q=1"] = "query or fragment",
      ["http://h 1:80"] = "whitespace",
      ["no-scheme:80"] = "missing scheme",
      ["http://h:1\r\n"] = "control characters",
      ["http://%zz@h:1"] = "percent-escape",
    }
    for input, why in pairs(cases) do
      local p, err = url.parse(input)
      assert.is_nil(p, input)
      assert.truthy(err:find(why, 1, true), input .. " -> " .. tostring(err))
    end
    assert.has_error(function() url.parse(42) end) -- misuse raises, per STYLE
  end)
end)

describe("url.display", function()
  it("never shows the password and masks the user", function()
    local p = url.parse("http://alice:s3cret@10.0.0.1:3128")
    local d = url.display(p)
    assert.equal("http://***@10.0.0.1:3128", d)
    assert.is_nil(d:find("s3cret", 1, true))
    assert.is_nil(d:find("alice", 1, true))
  end)

  it("shows scheme://host:port without credentials, IPv6 bracketed", function()
    assert.equal("socks5://[::1]:1080", url.display(url.parse("socks5://[::1]:1080")))
    assert.equal("http://h:8080", url.display(url.parse("http://h")))
  end)
end)

describe("url.parse_hostport", function()
  it("splits host and port", function()
    assert.same({ "127.0.0.1", 8080 }, { url.parse_hostport("127.0.0.1:8080") })
    assert.same({ "::1", 80 }, { url.parse_hostport("[::1]:80") })
    assert.same({ "example.com", 443 }, { url.parse_hostport("example.com", 443) })
  end)

  it("refuses a missing port without a default", function()
    local h, err = url.parse_hostport("example.com")
    assert.is_nil(h)
    assert.matches("missing port", err)
    assert.is_nil((url.parse_hostport("h:")))
    assert.is_nil((url.parse_hostport("")))
  end)
end)
