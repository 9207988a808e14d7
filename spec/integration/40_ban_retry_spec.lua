-- Retry on ban (ban.retry) and Retry-After as a ban's length, against
-- the real binary.  Three microsocks upstreams bind their outgoing
-- connections to 127.0.0.2, .3 and .4, so the origin (ban_origin.py)
-- tells them apart by source address and bans the ones a path names.
-- An exchange select hook takes the proxies in order (a, b, c), skipping
-- the ones tried and the ones banned, so every spec knows which proxy a
-- try goes through.  Each spec starts its own ferry: bans start clean.
local procs = require("procs")
local socket = require("socket")

local ROOT = os.getenv("PWD")

describe("retry on ban", function()
  local O = procs.free_port()
  local S = { procs.free_port(), procs.free_port(), procs.free_port() }
  local SRC = { "127.0.0.2", "127.0.0.3", "127.0.0.4" }
  local URL = {}
  local origin
  local socks = {}
  local ferry, F, A
  local script

  local function ok_through(i)
    local status, body = procs.curl { url = "http://127.0.0.1:" .. O .. "/ready",
      flags = "--socks5 127.0.0.1:" .. S[i], max_time = 2 }
    return status == 200 and body:match("^ok " .. SRC[i]:gsub("%.", "%%.")) ~= nil
  end

  setup(function()
    origin = procs.spawn("ban_origin", "python3 " .. ROOT .. "/spec/helpers/ban_origin.py " .. O)
    assert(procs.wait_port(O), "ban_origin did not start")
    for i = 1, 3 do
      socks[i] = procs.spawn("microsocks", "microsocks -i 127.0.0.1 -p " .. S[i] .. " -b " ..
        SRC[i])
      assert(procs.wait_port(S[i]), "microsocks did not start")
      -- Up and reaching the origin from its own address.
      assert(procs.wait_for(function() return ok_through(i) end, 10), "microsocks " .. i)
      URL[i] = "socks5://127.0.0.1:" .. S[i]
    end
    script = procs.write_file(procs.tmp .. "/banretry-" .. O .. ".lua", [[
return {
  -- In order: the first proxy neither tried nor banned for the exchange.
  select = function(pool, req)
    for _, p in ipairs(pool.proxies) do
      if not req.tried[p.id] and pool:eligible(p, req) then return p end
    end
  end,
  on_response = function(res)
    if res.status == 418 then return { ban = 7 } end
  end,
}
]])
  end)

  teardown(function()
    if ferry then procs.stop_ferry(ferry) end
    for _, p in ipairs(socks) do procs.stop(p) end
    if origin then procs.stop(origin) end
  end)

  -- A ferry whose exchange "A" (host 127.0.0.1) has `ban`; exchange "B"
  -- (localhost) has none.  opts.all_down: the pool's policy.
  local function start(ban, opts)
    opts = opts or {}
    if ferry then procs.stop_ferry(ferry) end
    F, A = procs.free_port(), procs.free_port()
    ferry = procs.ferry(string.format([[
listen { name = "main", addr = "127.0.0.1:%d" }
admin { addr = "127.0.0.1:%d" }
timeouts { idle = %s }
pool "p" { strategy = "round_robin", retries = 1, breaker = false, all_down = "%s",
  proxies = { { url = "%s", id = "a" }, { url = "%s", id = "b" }, { url = "%s", id = "c" } } }
exchange "A" { hosts = { "127.0.0.1" }, pool = "p", script = "%s", ban = %s }
exchange "B" { hosts = { "localhost" }, pool = "p", script = "%s" }
]], F, A, opts.idle or 300, opts.all_down or "any", URL[1], URL[2], URL[3], script, ban, script), { F, A })
  end

  local function get(path, flags, host)
    return procs.curl { proxy = "http://127.0.0.1:" .. F,
      url = "http://" .. (host or "127.0.0.1") .. ":" .. O .. path, flags = flags }
  end

  -- The access line of request id cid (polled: ferry flushes its log after the turn).
  local function access(cid)
    local line
    procs.wait_for(function()
      for _, l in ipairs(procs.log_lines(ferry)) do
        if l.msg == "access" and l.cid == cid then line = l end
      end
      return line
    end)
    return assert(line, "no access line for " .. tostring(cid))
  end

  local function lines_with(code)
    local out = {}
    for _, l in ipairs(procs.log_lines(ferry)) do
      if l.code == code then out[#out + 1] = l end
    end
    return out
  end

  -- Seconds left of proxy `id`'s ban on exchange "A", from the console
  -- of the admin API (its BANNED_S column); nil when not banned.
  local function banned_s(id)
    local status, body = procs.curl { url = "http://127.0.0.1:" .. A .. "/api/v1/console",
      flags = "-X POST --data-binary 'proxy.list(\"A\")'" }
    assert.equal(200, status, body)
    local cols, row
    for line in body:gmatch("[^\n]+") do
      local fields = {}
      for f in line:gmatch("%S+") do fields[#fields + 1] = f end
      if fields[1] == "ID" then cols = fields end
      if cols and fields[2] == id then row = fields end
    end
    assert(cols and row, body)
    for i, name in ipairs(cols) do
      if name == "BANNED_S" then return tonumber(row[i]) end
    end
    error("no BANNED_S column:\n" .. body)
  end

  local function hits()
    local _, body = procs.curl { url = "http://127.0.0.1:" .. O .. "/hits" }
    return body
  end

  it("sends a banned GET again through another proxy: the client never sees the 429", function()
    start("{ status = { 429 }, backoff = 30, retry = 2 }")
    local before = select(2, hits():gsub("\n", ""))
    local status, body, headers = get("/ban/127.0.0.2/429")
    assert.equal(200, status)
    assert.equal("ok 127.0.0.3 0", body)
    assert.is_nil(procs.last_header(headers, "X-Ferry-Error"))
    -- The origin did answer 429 once, through a.
    local seen = {}
    local n = 0
    for addr, path in hits():gmatch("(%S+) (%S+)\n") do
      n = n + 1
      if n > before then seen[#seen + 1] = addr .. " " .. path end
    end
    assert.same({ "127.0.0.2 /ban/127.0.0.2/429", "127.0.0.3 /ban/127.0.0.2/429" }, seen)
    local l = access(procs.last_header(headers, "X-Request-Id"))
    assert.equal(200, l.status)
    assert.equal(2, l.attempts)
    assert.equal(1, l.ban_retries)
    assert.equal(URL[2], l.proxy)
    assert.equal("FERRY-0200", l.code)
    local ban = lines_with("FERRY-6006")
    assert.equal(1, #ban)
    assert.equal(URL[1], ban[1].proxy)
    assert.equal("A", ban[1].exchange)
    assert.equal(1, #lines_with("FERRY-6032"))
    assert.equal(1, procs.metric(A, "ferry_ban_retries_total", 'pool="p"'))
    -- Banned for A only: B still goes through a first.
    assert.is_truthy(banned_s("a"))
    status, body = get("/x", nil, "localhost")
    assert.equal(200, status)
    assert.equal("ok 127.0.0.2 0", body)
    -- And on A the next request skips a without a retry.
    status, body, headers = get("/ban/127.0.0.2/429")
    assert.equal(200, status)
    assert.equal("ok 127.0.0.3 0", body)
    assert.equal(1, access(procs.last_header(headers, "X-Request-Id")).attempts)
  end)

  it("takes a ban's length from Retry-After, clamped to max_backoff, and ignores garbage",
    function()
    start("{ status = { 429 }, backoff = 30, max_backoff = 50, retry = 2 }")
    -- a: Retry-After 5 (not the backoff of 30 s).
    assert.equal(200, (get("/ban/127.0.0.2/429/5")))
    local s = banned_s("a")
    assert.is_true(s >= 4 and s <= 5, tostring(s))
    -- /metrics says banned or not (1 / 0), not the seconds left (docs/https.md).
    assert.equal(1, procs.metric(A, "ferry_proxy_banned", 'proxy="a",pool="p",exchange="A"'))
    assert.equal(0, procs.metric(A, "ferry_proxy_banned", 'proxy="b",pool="p",exchange="A"'))
    -- b: 10^12 s, clamped to max_backoff (a is still banned: b goes first).
    assert.equal(200, (get("/ban/127.0.0.3/429/1000000000000")))
    s = banned_s("b")
    assert.is_true(s >= 49 and s <= 50, tostring(s))
    assert.equal(1, #lines_with("FERRY-3075"))
    -- c: garbage, ignored with a line: the backoff applies.
    start("{ status = { 429 }, backoff = 30, max_backoff = 50, retry = 2 }")
    assert.equal(200, (get("/ban/127.0.0.2/429/soon")))
    s = banned_s("a")
    assert.is_true(s >= 29 and s <= 30, tostring(s))
    assert.equal(200, (get("/ban/127.0.0.3/429/-5")))
    s = banned_s("b")
    assert.is_true(s >= 29 and s <= 30, tostring(s))
    local why = lines_with("FERRY-6034")
    assert.equal(1, #why) -- once per window and exchange
    assert.matches('Retry-After "soon"', why[1].msg, 1, true)
    -- An HTTP-date 40 s ahead (c is the one proxy left: its 429 is the answer).
    local date = os.date("!%a, %d %b %Y %H:%M:%S GMT", os.time() + 40):gsub(" ", "%%20")
    assert.equal(429, (get("/ban/127.0.0.4/429/" .. date)))
    s = banned_s("c")
    assert.is_true(s >= 37 and s <= 40, tostring(s))
  end)

  it("counts answers in flight when a ban began as that ban, not as bans in a row", function()
    start("{ status = { 429 }, backoff = 30, max_backoff = 3600, retry = 2 }")
    -- Four GETs at once: all go through a (the first proxy not banned) and
    -- the origin answers them 429 only once all four have arrived.
    local out = procs.tmp .. "/held-" .. O .. ".txt"
    local one = "curl -s -o /dev/null -w '%{http_code}\\n' --max-time 20 -x http://127.0.0.1:" ..
      F .. " http://127.0.0.1:" .. O .. "/held/127.0.0.2/429/4"
    os.execute("(" .. one .. " & " .. one .. " & " .. one .. " & " .. one .. " & wait) > " ..
      out .. " 2>&1")
    local f = assert(io.open(out))
    local codes = f:read("*a")
    f:close()
    assert.equal("200\n200\n200\n200\n", codes) -- each retried through b
    assert.equal(4, procs.metric(A, "ferry_ban_retries_total", 'pool="p"'))
    -- One ban of backoff's length, not 30 * 2^3 s.
    local s = banned_s("a")
    assert.is_true(s >= 28 and s <= 30, tostring(s))
    assert.equal(1, #lines_with("FERRY-6006"))
  end)

  it("answers the last 429, marked with X-Ferry-Error, when every try is banned", function()
    start("{ status = { 429 }, backoff = 30, retry = 2 }")
    local status, body, headers = get("/ban/all/429")
    assert.equal(429, status)
    assert.equal("banned 127.0.0.4", body)
    assert.equal("FERRY-6030", procs.last_header(headers, "X-Ferry-Error"))
    local l = access(procs.last_header(headers, "X-Request-Id"))
    assert.equal("FERRY-6030", l.code)
    assert.equal(429, l.status)
    assert.equal(3, l.attempts)
    assert.equal(2, l.ban_retries)
    assert.equal("exhausted", l.ban)
    assert.equal(3, #lines_with("FERRY-6006"))
    assert.equal(1, #lines_with("FERRY-6030") - 1) -- the warn line, besides the access line
  end)

  it("answers the last banned answer when no proxy is left for a retry", function()
    start("{ status = { 429 }, backoff = 30, retry = 5 }", { all_down = "fail" })
    local status, body, headers = get("/ban/all/429")
    assert.equal(429, status)
    assert.equal("banned 127.0.0.4", body)
    assert.equal("FERRY-6030", procs.last_header(headers, "X-Ferry-Error"))
    local l = access(procs.last_header(headers, "X-Request-Id"))
    assert.equal("FERRY-6030", l.code)
    assert.equal(2, l.ban_retries)
    assert.equal(3, l.attempts)
    assert.equal(URL[3], l.proxy)
    assert.equal("exhausted", l.ban)
  end)

  it("does not retry through a proxy banned too (all_down = \"any\"): the last answer", function()
    start("{ status = { 429 }, backoff = 30, retry = 5 }")
    local status, body, headers = get("/ban/all/429")
    assert.equal(429, status)
    assert.equal("banned 127.0.0.4", body)
    assert.equal("FERRY-6030", procs.last_header(headers, "X-Ferry-Error"))
    local l = access(procs.last_header(headers, "X-Request-Id"))
    assert.equal(2, l.ban_retries)
    assert.equal(3, l.attempts)
    assert.equal(URL[3], l.proxy)
    assert.equal(3, #lines_with("FERRY-6006")) -- no fourth try hit the origin
  end)

  it("retries a POST only with Idempotency-Key", function()
    start("{ status = { 429 }, backoff = 1, max_backoff = 1, retry = 2 }")
    local status, body, headers = get("/ban/127.0.0.2/429", "--data-binary hello")
    assert.equal(429, status)
    assert.equal("banned 127.0.0.2", body)
    assert.is_nil(procs.last_header(headers, "X-Ferry-Error"))
    local l = access(procs.last_header(headers, "X-Request-Id"))
    assert.equal(1, l.attempts)
    assert.equal("not_idempotent", l.ban)
    assert.equal(1, #lines_with("FERRY-6031"))
    -- Wait out the 1 s ban of a, so that the keyed POST meets it first.
    assert(procs.wait_for(function() return banned_s("a") == nil end, 5))
    status, body, headers = get("/ban/127.0.0.2/429",
      "--data-binary hello -H 'Idempotency-Key: k-1'")
    assert.equal(200, status)
    assert.equal("ok 127.0.0.3 5", body) -- the body went again, whole
    l = access(procs.last_header(headers, "X-Request-Id"))
    assert.equal(2, l.attempts)
    assert.equal(1, l.ban_retries)
  end)

  it("retries on a body marker of the rule", function()
    start("{ body = { 'IP banned' }, backoff = 30, retry = 1 }")
    local status, body, headers = get("/marker/127.0.0.2")
    assert.equal(200, status)
    assert.equal("ok 127.0.0.3 0", body)
    local l = access(procs.last_header(headers, "X-Request-Id"))
    assert.equal(2, l.attempts)
    assert.equal(1, l.ban_retries)
    assert.matches('body marker "IP banned"', lines_with("FERRY-6006")[1].msg, 1, true)
  end)

  it("retries on a ban verdict of on_response, for the seconds it gives", function()
    start("{ backoff = 30, retry = 1 }")
    local status, body, headers = get("/ban/127.0.0.2/418")
    assert.equal(200, status)
    assert.equal("ok 127.0.0.3 0", body)
    local l = access(procs.last_header(headers, "X-Request-Id"))
    assert.equal(1, l.ban_retries)
    local s = banned_s("a")
    assert.is_true(s >= 6 and s <= 7, tostring(s))
    assert.matches("on_response", lines_with("FERRY-6006")[1].msg, 1, true)
  end)

  it("does not retry a body too large to keep, and says so in the access line", function()
    start("{ status = { 429 }, backoff = 30, retry = 2 }")
    local big = procs.tmp .. "/banretry-big-" .. O
    procs.write_file(big, string.rep("0123456789abcdef", 4096)) -- 64 KiB, over the 16 KiB buffer
    local status, body, headers = get("/ban/127.0.0.2/429",
      "-X PUT --data-binary @" .. big)
    os.remove(big)
    assert.equal(429, status)
    assert.equal("banned 127.0.0.2", body)
    assert.is_nil(procs.last_header(headers, "X-Ferry-Error"))
    local l = access(procs.last_header(headers, "X-Request-Id"))
    assert.equal(1, l.attempts)
    assert.equal("no_replay", l.ban)
    assert.matches("no_replay", lines_with("FERRY-6031")[1].msg, 1, true)
    -- A small PUT is retried.
    status, body = get("/ban/127.0.0.3/429", "-X PUT --data-binary hello")
    assert.equal(200, status)
    assert.equal("ok 127.0.0.4 5", body)
  end)

  it("retries a banned answer whose body stalls, at the idle timeout", function()
    start("{ status = { 429 }, backoff = 30, retry = 1 }", { idle = 1 })
    local status, body, headers = get("/stall/127.0.0.2")
    assert.equal(200, status)
    assert.equal("ok 127.0.0.3 0", body)
    local l = access(procs.last_header(headers, "X-Request-Id"))
    assert.equal(1, l.ban_retries)
    assert.equal(2, l.attempts)
  end)

  it("keeps the client connection across held answers", function()
    start("{ status = { 429 }, backoff = 30, retry = 2 }")
    local c = assert(socket.connect("127.0.0.1", F))
    c:settimeout(10)
    local got = {}
    for _, path in ipairs { "/ban/127.0.0.2/429", "/y", "/ban/127.0.0.3/429", "/ban/all/429" } do
      assert(c:send("GET http://127.0.0.1:" .. O .. path .. " HTTP/1.1\r\nHost: 127.0.0.1:" ..
        O .. "\r\n\r\n"))
      local status, body, head = procs.read_response(c)
      got[#got + 1] = tostring(status) .. " " .. tostring(body) ..
        (head and head:match("X%-Ferry%-Error: (%S+)") and " marked" or "")
    end
    c:close()
    -- The last: every proxy banned (all_down = "any" picks one anyway), marked.
    assert.matches("^429 banned 127%.0%.0%.[234] marked$", got[4])
    got[4] = nil
    assert.same({ "200 ok 127.0.0.3 0", "200 ok 127.0.0.3 0", "200 ok 127.0.0.4 0" }, got)
  end)

  it("with retry = 0 (or no retry) the client gets the banning answer, as before", function()
    start("{ status = { 429 }, backoff = 30, retry = 0 }")
    local status, body, headers = get("/ban/127.0.0.2/429")
    assert.equal(429, status)
    assert.equal("banned 127.0.0.2", body)
    assert.is_nil(procs.last_header(headers, "X-Ferry-Error"))
    local l = access(procs.last_header(headers, "X-Request-Id"))
    assert.equal(1, l.attempts)
    assert.is_nil(l.ban)
    assert.is_nil(l.ban_retries)
    assert.equal(1, #lines_with("FERRY-6006"))
    assert.is_truthy(banned_s("a"))
    assert.is_nil(procs.metric(A, "ferry_ban_retries_total", 'pool="p"'))
  end)

  -- Origination produces the same requests: a plain client asks for
  -- https://, ferry speaks TLS to the origin through the proxies, and a
  -- ban inside that TLS is retried the same way.
  it("retries a ban of an https:// request ferry originates", function()
    local tls_origin = require("tls_origin")
    local dir = procs.tmp .. "/banretry-tls-" .. O
    local pki = tls_origin.pki(dir, { "127.0.0.1" })
    local TO = procs.free_port()
    local tls = procs.spawn("ban_origin_tls", "python3 " .. ROOT ..
      "/spec/helpers/ban_origin.py " .. TO .. " " .. pki.cert .. " " .. pki.key)
    assert(procs.wait_port(TO, 20), "TLS ban_origin did not start")
    if ferry then procs.stop_ferry(ferry) end
    F, A = procs.free_port(), procs.free_port()
    ferry = procs.ferry(string.format([[
listen { name = "main", addr = "127.0.0.1:%d" }
admin { addr = "127.0.0.1:%d" }
pool "p" { strategy = "round_robin", retries = 1, breaker = false,
  proxies = { { url = "%s", id = "a" }, { url = "%s", id = "b" }, { url = "%s", id = "c" } } }
exchange "A" { hosts = { "127.0.0.1" }, pool = "p", script = "%s", tls = { ca = "%s" },
  ban = { status = { 429 }, backoff = 30, retry = 2 } }
]], F, A, URL[1], URL[2], URL[3], script, pki.ca), { F, A })
    local ok, err = pcall(function()
      local c = assert(socket.connect("127.0.0.1", F))
      c:settimeout(15)
      assert(c:send("GET https://127.0.0.1:" .. TO .. "/ban/127.0.0.2/429 HTTP/1.1\r\n" ..
        "Host: 127.0.0.1:" .. TO .. "\r\nConnection: close\r\n\r\n"))
      local status, body, headers = procs.read_response(c)
      c:close()
      assert.equal(200, status, tostring(body))
      assert.equal("ok 127.0.0.3 0", body)
      local l = access(procs.last_header(headers, "X-Request-Id"))
      assert.equal(1, l.ban_retries)
      assert.equal(2, l.attempts)
      assert.equal(URL[1], lines_with("FERRY-6006")[1].proxy)
    end)
    procs.stop(tls)
    os.execute("rm -rf " .. procs.quote(dir))
    assert(ok, err)
  end)
end)
