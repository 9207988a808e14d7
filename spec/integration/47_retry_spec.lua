-- Retries with back-off, retry on status and the retry budget, against
-- the real binary.  The members are spec/helpers/retry_backend.py
-- processes that answer any target (as backends in origin form, as HTTP
-- proxies in absolute form) and record each request with its time: one
-- answers 200 with its name, others 503, reset the connection, or stay
-- silent; a free port stands for a member that refuses connections.  The
-- same specs run through a forward listener with pools of proxies and
-- through a reverse listener with pools of backends; route() picks the
-- pool by the first path segment.
local procs = require("procs")

local ROOT = os.getenv("PWD")

-- The requests a member recorded: { t = seconds, method, target } each.
local function hits(port)
  local status, body = procs.curl { url = "http://127.0.0.1:" .. port .. "/__hits" }
  assert.equal(200, status, body)
  local out = {}
  for t, m, target in body:gmatch("(%S+) (%S+) (%S+)\n") do
    out[#out + 1] = { t = tonumber(t), method = m, target = target }
  end
  return out
end

local function count(port) return #hits(port) end

describe("retries", function()
  local M = {}       -- member name -> port
  local backend
  local REFUSED = procs.free_port()

  setup(function()
    local args = {}
    local function member(name, mode)
      M[name] = procs.free_port()
      args[#args + 1] = M[name] .. " " .. mode .. " " .. name
    end
    member("good", "ok")
    member("b503", "status:503")
    member("rst", "reset")
    member("silent", "silent")
    member("p503", "status:503")
    for i = 1, 5 do member("bk" .. i, "status:503") end
    member("st1", "status:503")
    member("st2", "status:503")
    backend = procs.spawn("retry_backend", "python3 " .. ROOT ..
      "/spec/helpers/retry_backend.py " .. table.concat(args, " "))
    for name, port in pairs(M) do
      assert(procs.wait_port(port, 10), "retry_backend " .. name .. " did not start")
    end
  end)

  teardown(function()
    if backend then procs.stop(backend) end
  end)

  for _, kind in ipairs({ "proxies", "backends" }) do
    describe("through " .. (kind == "proxies" and "a forward listener (pools of proxies)"
      or "a reverse listener (pools of backends)"), function()
      local ferry, F, A

      local function list(...)
        local out = {}
        for _, name in ipairs({ ... }) do
          out[#out + 1] = '"http://127.0.0.1:' .. (name == "refused" and REFUSED or M[name]) .. '"'
        end
        return kind .. " = { " .. table.concat(out, ", ") .. " }"
      end

      local function pool(name, fields, ...)
        return string.format('pool "%s" { strategy = "round_robin", breaker = false, %s%s }\n',
          name, list(...), fields ~= "" and (", " .. fields) or "")
      end

      local function config(extra)
        F, A = procs.free_port(), procs.free_port()
        local listen = kind == "proxies"
          and string.format('listen { name = "main", addr = "127.0.0.1:%d" }\n', F)
          or string.format('listen { name = "main", protocol = "reverse", addr = "127.0.0.1:%d", ' ..
            'pool = "refused" }\n', F)
        return listen .. string.format('admin { addr = "127.0.0.1:%d" }\n', A) .. extra ..
          'route(function(req) return (req.path:match("^/([%w_]+)")) end)\n'
      end

      -- One request; status, body, headers.
      local function req(path, flags)
        if kind == "proxies" then
          return procs.curl { proxy = "http://127.0.0.1:" .. F, url = "http://example.test" .. path,
            flags = flags }
        end
        return procs.curl { url = "http://127.0.0.1:" .. F .. path, flags = flags }
      end

      local function metric(name, labels) return procs.metric(A, name, labels) or 0 end

      -- The access line whose path is path (the last one), polled.
      local function access(path)
        local line
        procs.wait_for(function()
          for _, l in ipairs(procs.log_lines(ferry)) do
            if l.msg == "access" and l.path == path then line = l end
          end
          return line
        end)
        return assert(line, "no access line for " .. path)
      end

      setup(function()
        ferry = procs.ferry(config(
          pool("refused", "", "refused", "good") ..
          pool("reset", "", "rst", "good") ..
          pool("timeout", "timeouts = { first_byte = 0.3 }", "silent", "good") ..
          pool("status", 'retry = { on = { "reset", "503" } }', "b503", "good") ..
          pool("nostatus", "", "b503", "good") ..
          pool("post", 'retry = { on = { "503" } }', "p503", "good") ..
          pool("backoff", 'retry = { tries = 5, backoff = 0.1, max_backoff = 2, ' ..
            'on = { "503" } }', "bk1", "bk2", "bk3", "bk4", "bk5") ..
          pool("storm", 'retry = { tries = 2, backoff = 2, max_backoff = 2, jitter = "none", ' ..
            'on = { "503" }, budget = 20, budget_min = 3 }', "st1", "st2")), { F, A })
      end)

      teardown(function()
        if ferry then procs.stop_ferry(ferry) end
      end)

      for _, case in ipairs({ { "refused", "refused" }, { "reset", "reset" },
                              { "timeout", "timeout" }, { "status", "status" } }) do
        local pname, reason = case[1], case[2]
        it("gives the other member's answer when one " .. (pname == "status" and
          "answers a listed 503" or pname == "timeout" and "does not answer in time" or
          ("is " .. pname)), function()
          for i = 1, 4 do
            local status, body = req("/" .. pname .. "/" .. i)
            assert.equal(200, status, body)
            assert.equal("good", body)
          end
          assert.is_true(metric("ferry_retry_reasons_total",
            'pool="' .. pname .. '",reason="' .. reason .. '"') >= 1)
          local retried
          for _, l in ipairs(procs.log_lines(ferry)) do
            if l.msg == "access" and (l.path or ""):match("^/" .. pname .. "/") and l.retry then
              retried = l
            end
          end
          assert(retried, "no access line with a retry")
          assert.equal(2, retried.attempts)
          assert.equal(pname == "status" and "503" or reason, retried.retry)
        end)
      end

      it("retries no status unless the pool lists it", function()
        local seen = {}
        for i = 1, 4 do
          local status = req("/nostatus/" .. i)
          seen[status] = (seen[status] or 0) + 1
        end
        assert.equal(2, seen[503]) -- round robin over the two members
        assert.equal(2, seen[200])
        assert.equal(0, metric("ferry_retry_reasons_total", 'pool="nostatus",reason="status"'))
      end)

      it("never sends a POST again, unless it carries an Idempotency-Key", function()
        local before_bad, before_good = count(M.p503), count(M.good)
        local answers = {}
        for i = 1, 4 do
          local status = req("/post/" .. i, "-X POST --data-binary x" .. i)
          answers[status] = (answers[status] or 0) + 1
        end
        local bad, good = count(M.p503) - before_bad, count(M.good) - before_good
        assert.equal(4, bad + good)         -- one attempt per POST
        assert.equal(bad, answers[503])     -- each 503 went to the client as it was
        assert.is_true(bad >= 1)
        local line
        for _, l in ipairs(procs.log_lines(ferry)) do
          if l.msg == "access" and l.method == "POST" and l.status == 503 then line = l end
        end
        assert.equal("not_idempotent", assert(line).retry_stop)
        -- With an Idempotency-Key a 503 is retried like a GET's.
        for i = 1, 4 do
          local status, body = req("/post/k" .. i, "-X POST --data-binary y -H 'Idempotency-Key: k" ..
            i .. "'")
          assert.equal(200, status, body)
          assert.equal("good", body)
        end
      end)

      it("waits longer before each retry (exponential back-off)", function()
        local before = {}
        for i = 1, 5 do before[i] = count(M["bk" .. i]) end
        local status, body = req("/backoff/x")
        assert.equal(503, status)               -- every member answered 503: the last answer
        assert.matches("^bk%d 503$", body)
        local times = {}
        for i = 1, 5 do
          local h = hits(M["bk" .. i])
          for j = before[i] + 1, #h do times[#times + 1] = h[j].t end
        end
        assert.equal(5, #times)                 -- tries = 5, each on another member
        table.sort(times)
        local gap = {}
        for i = 1, 4 do gap[i] = times[i + 1] - times[i] end
        -- backoff 100 ms doubling, equal jitter: gap i in [50, 100) x 2^(i-1) ms.
        assert.is_true(gap[3] > gap[1], "gaps " .. table.concat(gap, " "))
        assert.is_true(gap[4] > gap[2], "gaps " .. table.concat(gap, " "))
        assert.is_true(gap[4] > 2 * gap[1], "gaps " .. table.concat(gap, " "))
        local line = access("/backoff/x")
        assert.equal(5, line.attempts)
        assert.equal("503,503,503,503", line.retry)
        assert.equal("FERRY-3131", line.code)
      end)

      it("stops a retry storm at the pool's retry budget", function()
        local before = count(M.st1) + count(M.st2)
        local urls = {}
        for i = 1, 50 do
          urls[#urls + 1] = "-o /dev/null " .. procs.quote((kind == "proxies" and
            "http://example.test" or ("http://127.0.0.1:" .. F)) .. "/storm/" .. i)
        end
        local cmd = "curl -s -S -Z --parallel-max 50 --max-time 20 -w '%{http_code}\\n' " ..
          (kind == "proxies" and ("-x http://127.0.0.1:" .. F .. " ") or "") ..
          table.concat(urls, " ") .. " 2>/dev/null"
        local p = io.popen(cmd)
        local out = p:read("*a")
        p:close()
        local n503 = 0
        for line in out:gmatch("[^\n]+") do n503 = n503 + (line == "503" and 1 or 0) end
        assert.equal(50, n503)                  -- every request got an answer: the 503
        local attempts = count(M.st1) + count(M.st2) - before
        local retried = metric("ferry_retries_total", 'pool="storm"')
        local refused = metric("ferry_retry_budget_exhausted_total", 'pool="storm"')
        -- Each request wanted one retry: the budget granted it or refused it.
        assert.equal(50, retried + refused)
        assert.equal(50 + retried, attempts)
        -- 20 % of at most 50 requests in flight: 10 retries at once, and a
        -- retry holds its place through its 2 s back-off.
        assert.is_true(retried <= 10, "retries " .. retried)
        assert.is_true(refused >= 40, "refused " .. refused)
        local logged = 0
        for _, l in ipairs(procs.log_lines(ferry)) do
          if l.code == "FERRY-3132" then logged = logged + 1 end
        end
        assert.equal(1, logged)                 -- once per window, not per refusal
      end)
    end)
  end

  describe("deadline", function()
    it("makes no retry whose back-off would end past timeouts.request", function()
      local F = procs.free_port()
      local ferry = procs.ferry(string.format([[
listen { name = "main", protocol = "reverse", addr = "127.0.0.1:%d", pool = "d" }
timeouts { request = 1 }
pool "d" { strategy = "round_robin", breaker = false,
  backends = { "http://127.0.0.1:%d", "http://127.0.0.1:%d", "http://127.0.0.1:%d" },
  retry = { tries = 9, backoff = 0.4, max_backoff = 5, jitter = "none", on = { "503" } } }
]], F, M.bk1, M.bk2, M.bk3), { F })
      local status = procs.curl { url = "http://127.0.0.1:" .. F .. "/d" }
      assert.equal(503, status)
      local line
      procs.wait_for(function()
        for _, l in ipairs(procs.log_lines(ferry)) do
          if l.msg == "access" and l.path == "/d" then line = l end
        end
        return line
      end)
      procs.stop_ferry(ferry)
      assert(line, "no access line")
      -- 0.4 s, then 0.8 s more would pass the 1 s deadline: two tries.
      assert.equal(2, line.attempts)
      assert.equal("deadline", line.retry_stop)
    end)
  end)
end)
