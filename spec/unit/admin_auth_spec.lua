-- The admin plane's access rules in Lua: admin { token, tokens } as the
-- config checks them (scopes, lengths, characters, duplicates), the one
-- scope table (every route has a scope), and the strict parse of the
-- Authorization field (Bearer 1*SP token68 OWS, one field only).
local config = require("ferry.config")
local scopes = require("ferry.scopes")

local function load(src)
  return config.load_string(src, "cfg.lua")
end

local function err_of(src)
  local cfg, err = load(src)
  assert.is_nil(cfg)
  return err
end

local LONG = "tok-0123456789abcdef"

describe("admin tokens in the config", function()
  it("keeps the old single token as a full admin token", function()
    local cfg = assert(load('admin { addr = "127.0.0.1:9090", token = "t-0123456789" }'))
    assert.same({ { token = "t-0123456789", scopes = { admin = true } } }, cfg.admin.tokens)
  end)

  it("takes tokens with scopes, next to the old token", function()
    local cfg = assert(load(string.format([[
admin { addr = "0.0.0.0:9090", token = "t-0123456789", tokens = {
  { token = %q, scope = { "broker" } },
  { token = %q, scope = { "metrics", "inventory:read" } },
} }]], LONG, LONG .. "-2")))
    assert.same({
      { token = "t-0123456789", scopes = { admin = true } },
      { token = LONG, scopes = { broker = true } },
      { token = LONG .. "-2", scopes = { metrics = true, ["inventory:read"] = true } },
    }, cfg.admin.tokens)
  end)

  it("lets scoped tokens alone guard a non-loopback address", function()
    assert(load(string.format('admin { addr = "0.0.0.0:9090", tokens = { { token = %q, ' ..
      'scope = { "metrics" } } } }', LONG)))
  end)

  it("refuses unknown scopes, short, malformed and repeated tokens", function()
    local cases = {
      { string.format('{ { token = %q, scope = { "brokr" } } }', LONG),
        'tokens%[1%]%.scope%[1%]: unknown scope "brokr" %(known: admin, broker, ' ..
        'inventory:read, metrics%)' },
      { string.format('{ { token = %q } }', LONG), "tokens%[1%]: scope is required" },
      { string.format('{ { token = %q, scope = {} } }', LONG),
        "tokens%[1%]%.scope must be a non%-empty list" },
      { '{ { token = "short-token", scope = { "broker" } } }',
        "tokens%[1%]%.token: at least 16 characters" },
      { '{ { token = "", scope = { "broker" } } }', "tokens%[1%]%.token: at least 16" },
      { '{ { scope = { "broker" } } }', "tokens%[1%]%.token must be a string, got a nil" },
      { '{ { token = "has a space in it!!", scope = { "broker" } } }',
        "tokens%[1%]%.token: only letters, digits" },
      { string.format('{ { token = %q, scope = { "broker" } }, { token = %q, ' ..
        'scope = { "metrics" } } }', LONG, LONG),
        "tokens%[2%]%.token: the same token as tokens%[1%]%.token" },
      { string.format('{ { token = %q, scope = { "broker" }, note = 1 } }', LONG),
        'tokens%[1%]: unknown field "note"' },
      { '"x"', "tokens must be a list" },
    }
    for _, c in ipairs(cases) do
      local err = err_of('admin { addr = "127.0.0.1:9090", tokens = ' .. c[1] .. ' }')
      assert.matches("^cfg%.lua:1: admin", err)
      assert.matches(c[2], err)
    end
    assert.matches("tokens%[1%]%.token: the same token as token",
      err_of(string.format('admin { addr = "127.0.0.1:9090", token = %q, tokens = { ' ..
        '{ token = %q, scope = { "broker" } } } }', LONG, LONG)))
    assert.matches("token: only letters, digits",
      err_of('admin { addr = "127.0.0.1:9090", token = "pass word" }'))
  end)
end)

describe("the scope table", function()
  it("gives every route a known scope, and refuses a route without one", function()
    local admin = require("ferry.admin")
    for key, scope in pairs(scopes.ENDPOINTS) do
      assert.is_true(scope == "public" or scopes.NAMES[scope] ~= nil, key)
    end
    assert.has_error(function() admin.route("GET", "/api/v1/unscoped", function() end) end,
      "admin route GET /api/v1/unscoped has no scope in ferry.scopes")
  end)

  it("lets admin do everything and the others only their own", function()
    assert.is_true(scopes.allows({ admin = true }, "broker"))
    assert.is_true(scopes.allows({ broker = true }, "broker"))
    assert.is_false(scopes.allows({ broker = true }, "metrics"))
    assert.is_false(scopes.allows({ ["inventory:read"] = true }, "admin"))
    assert.is_true(scopes.allows({}, "public"))
  end)
end)

describe("Authorization parsing", function()
  local admin = require("ferry.admin")
  local function bearer(value, extra)
    local head = "GET / HTTP/1.1\r\nHost: x\r\nAuthorization: " .. value .. "\r\n" ..
      (extra or "") .. "\r\n"
    return admin.bearer(head, value)
  end

  it("takes Bearer, any case, one or more spaces, a token68, trailing blanks", function()
    assert.equal("abc-._~+/9", bearer("Bearer abc-._~+/9"))
    assert.equal("abc", bearer("bearer abc"))
    assert.equal("abc", bearer("BEARER    abc"))
    assert.equal("abc==", bearer("Bearer abc=="))
    assert.equal("abc", bearer("Bearer abc \t"))
  end)

  it("refuses anything else", function()
    for _, v in ipairs { "Bearer abc extra", "Bearer", "Bearer ", "Bearerabc", "Basic abc",
                         "Bearer\tabc", "Bearer abc,", "Bearer a=b", "Bearer ab\"c",
                         "Bearer abc, realm=x", " Bearer abc", "Bearer abc\tx" } do
      assert.is_nil(bearer(v), v)
    end
    assert.is_nil(admin.bearer("GET / HTTP/1.1\r\n\r\n", nil))
  end)

  it("refuses two Authorization fields, even when both are right", function()
    assert.is_nil(bearer("Bearer abc", "authorization: Bearer abc\r\n"))
  end)
end)
