-- config_driver.lua: the checks of fuzz_config (see fuzz_config.c).
--
-- The input is config text for ferry.config.load_string, and also a proxy
-- URL for ferry.url.parse.  What the loader promises the runtime and the
-- operator is checked; a broken promise raises "FINDING: ...".
--
-- The state is kept from one input to the next (fuzz_lua.c), as the
-- daemon keeps its one state across reloads: a config must leave the
-- libraries its sandbox shares with the runtime (string, table, math) as
-- it found them.  They are compared, and put back, after every input.
local config = require("ferry.config")
local url = require("ferry.url")

local format = string.format
local pairs, tostring, type = pairs, tostring, type

-- The libraries the sandbox hands to a config (config.lua's safe globals).
local SHARED = { string = string, table = table, math = math }
local saved = {}
for name, lib in pairs(SHARED) do
  local copy = {}
  for k, v in pairs(lib) do copy[k] = v end
  saved[name] = copy
end

-- The first change to a shared library, putting every change back.
local function restore_shared()
  local changed
  for name, lib in pairs(SHARED) do
    local copy = saved[name]
    for k, v in pairs(lib) do
      if copy[k] ~= v then
        changed = changed or name .. "." .. tostring(k)
        lib[k] = nil
      end
    end
    for k, v in pairs(copy) do
      if lib[k] ~= v then
        changed = changed or name .. "." .. tostring(k)
        lib[k] = v
      end
    end
  end
  return changed
end

local function finding(fmt, ...)
  error("FINDING: " .. format(fmt, ...), 0)
end

local NAME = "^[%w_.-]+$"
local TOKEN = "^[!#$%%&'*+%-.^_`|~%w]+$"

local function check_port(what, p)
  if type(p) ~= "number" or p % 1 ~= 0 or p < 1 or p > 65535 then
    finding("%s: port %s", what, tostring(p))
  end
end

-- The canonical schemes url.parse may return (socks5h becomes socks5).
local SCHEMES = { http = true, https = true, socks5 = true, socks4 = true, socks4a = true }
-- Backends (pool { backends = ... }) and how displays show them.
local BACKEND_SHOWN = { backend = "http", backend_tls = "https" }

-- A parsed proxy URL as url.parse and the runtime see it.
local function check_proxy(what, p, backend)
  if not (backend and BACKEND_SHOWN or SCHEMES)[p.scheme] then
    finding("%s: scheme %s", what, tostring(p.scheme))
  end
  if backend and p.user ~= nil then finding("%s: a backend with credentials", what) end
  if type(p.host) ~= "string" or p.host == "" or p.host:find("[%s%c@/]") then
    finding("%s: host %q", what, tostring(p.host))
  end
  check_port(what, p.port)
  if p.user ~= nil then
    if type(p.user) ~= "string" or p.user == "" or p.user:find("%z") or type(p.pass) ~= "string"
        or p.pass:find("%z") then
      finding("%s: credentials with NUL or empty user", what)
    end
    if p.scheme == "socks5" and (#p.user > 255 or #p.pass > 255) then
      finding("%s: SOCKS5 credentials over 255 bytes", what)
    end
    if (p.scheme == "socks4" or p.scheme == "socks4a") and (p.pass ~= "" or #p.user > 255) then
      finding("%s: SOCKS4 with a password or a user id over 255 bytes", what)
    end
  end
  local d = url.display(p)
  local host = p.host:find(":", 1, true) and "[" .. p.host .. "]" or p.host
  local want = format("%s://%s%s:%d", BACKEND_SHOWN[p.scheme] or p.scheme,
    p.user and "***@" or "", host, p.port)
  if d ~= want then finding("%s: display %q, expected %q", what, d, want) end
end

local function check_cfg(cfg)
  if type(cfg) ~= "table" or type(cfg.listeners) ~= "table" or #cfg.listeners == 0 then
    finding("a config without listeners")
  end
  for i, l in ipairs(cfg.listeners) do
    local what = format("listener %d", i)
    if type(l.name) ~= "string" or not l.name:match(NAME) or #l.name > 64 then
      finding("%s: name %q", what, tostring(l.name))
    end
    if l.protocol ~= "http" and l.protocol ~= "admin" and l.protocol ~= "reverse" then
      finding("%s: protocol", what)
    end
    if l.protocol == "reverse" and l.pool ~= nil and
        (not cfg.pools[l.pool] or cfg.pools[l.pool].kind ~= "backends") then
      finding("%s: a reverse listener whose pool has no backends", what)
    end
    if l.path == nil then check_port(what, l.port) end
    for _, u in ipairs(l.users) do
      if type(u.user) ~= "string" or u.user == "" or type(u.pass) ~= "string"
          or #u.user + #u.pass + 1 >= 512 then
        finding("%s: a user the core cannot hold", what)
      end
    end
  end
  for _, name in ipairs(cfg.pool_order) do
    local p = cfg.pools[name]
    if not p or not name:match(NAME) or #name > 64 then finding("pool %q", tostring(name)) end
    if #p.proxies == 0 then finding("pool %s without proxies", name) end
    for i, px in ipairs(p.proxies) do
      local what = format("pool %s proxy %d", name, i)
      check_proxy(what, px, p.kind == "backends")
      for k, v in pairs(px.headers or {}) do
        if type(k) ~= "string" or not k:match(TOKEN) or tostring(v):find("[\r\n%z]") then
          finding("%s: header %q can split the head", what, tostring(k))
        end
      end
    end
  end
  -- Load balancing (ferry.pool): a ramp of positive length, a cap the
  -- eligibility rule can count with, a primary in every pool.
  for _, name in ipairs(cfg.pool_order) do
    local p = cfg.pools[name]
    local ss = p.slowstart
    if ss ~= nil and not (type(ss) == "number" and ss > 0 and ss <= 3600) then
      finding("pool %s: slowstart %s", name, tostring(ss))
    end
    local me = p.max_ejected
    if me ~= nil and not ((type(me.percent) == "number" and me.percent >= 0 and me.percent <= 100)
        or (type(me.count) == "number" and me.count >= 0 and me.count % 1 == 0)) then
      finding("pool %s: max_ejected", name)
    end
    local primary = false
    for _, px in ipairs(p.proxies) do
      if not px.backup then primary = true end
    end
    if not primary then finding("pool %s: only backups", name) end
  end
  for _, ex in ipairs(cfg.exchanges) do
    if ex.pool ~= "direct" and not cfg.pools[ex.pool] then
      finding("exchange %s names an undeclared pool", tostring(ex.name))
    end
  end
  for k, v in pairs(cfg.timeouts) do
    if type(v) ~= "number" or v ~= v or v <= 0 or v > 86400 then
      finding("timeout %s = %s", k, tostring(v))
    end
  end
end

-- The password of a "scheme://user:pass@..." input, if any.
local function password_of(s)
  local userinfo = s:match("^%a[%w+.-]*://([^/?#]*)@")
  return userinfo and userinfo:match("^[^:]*:(.+)$")
end

return function(input)
  local ok, cfg, err = pcall(config.load_string, input, "config.lua")
  local changed = restore_shared()
  if changed then
    finding("a config changed %s, which the running daemon shares (%s)", changed,
      cfg and "config accepted" or "config refused")
  end
  if not ok then finding("config.load_string raised: %s", tostring(cfg)) end
  if cfg and input:byte(1) == 27 then
    -- LuaJIT does not verify bytecode: a binary chunk can read and write
    -- memory at will, so "a config describes, it does not act" needs text.
    finding("a precompiled (bytecode) config is accepted")
  end
  if cfg then
    check_cfg(cfg)
  elseif type(err) ~= "string" or not err:match("^config%.lua:%d+: ") then
    finding("a refused config whose message names no FILE:LINE: %q", tostring(err):sub(1, 200))
  end

  local b
  ok, b = pcall(url.parse_backend, input)
  if not ok then finding("url.parse_backend raised: %s", tostring(b)) end
  if b then check_proxy("url.parse_backend", b, true) end

  local p
  ok, p, err = pcall(url.parse, input)
  if not ok then finding("url.parse raised: %s", tostring(p)) end
  if p then
    check_proxy("url.parse", p)
  else
    if type(err) ~= "string" then finding("url.parse refused without a message") end
    -- "No message ever echoes credentials" (url.lua).
    local pw = password_of(input)
    if pw and #pw >= 6 and err:find(pw, 1, true) and not input:gsub(".-@", "", 1):find(pw, 1, true) then
      finding("url.parse's error echoes the password: %q", err)
    end
  end
end
