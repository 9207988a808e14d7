-- rate.lua: what the console, the admin API and /metrics show of the
-- rate budgets per (proxy, exchange) (core/rate.c).
--
--   pairs(cur, name)  -> records { id, proxy, tokens, capacity, next_s,
--                        empty_s } of every proxy of exchange `name`'s
--                        pool, or nil and why
--   metrics_text(cur) -> the per-exchange lines of /metrics (totals only:
--                        a series per pair is too many at 10 000 proxies)
--   GET /api/v1/rate?exchange=NAME -> the same records as JSON
local ffi = require("ffi")
local admin = require("ferry.admin")
require("ferry.cdef")

local C = ffi.C
local format, concat = string.format, table.concat
local floor = math.floor

local M = {}

local stats = ffi.new("struct ferry_rate_stats")

local function round(v, step)
  return floor(v / step + 0.5) * step
end

-- The exchange `name` of the running config with a budget, or nil and why.
local function budgeted(cur, name)
  if type(name) ~= "string" then return nil, "expected an exchange name" end
  local e = cur and cur.exchanges[name]
  if not e then return nil, format('no exchange "%s"', name:sub(1, 64)) end
  if not e.rate then return nil, format('exchange "%s" has no rate budget', name) end
  return e
end
M.budgeted = budgeted

function M.pairs(cur, name)
  local e, why = budgeted(cur, name)
  if not e then return nil, why end
  local pool = cur.pools[e.pool]
  local now = C.ferry_now()
  local rt = e.rate
  local out = {}
  for _, p in ipairs(pool and pool.proxies or {}) do
    local x = pool:pair(p, e.id)
    if x ~= nil then
      local tokens = C.ferry_rate_tokens(x)
      -- Seconds until the next whole token (0 with one or more now), and
      -- how long an exchange's Retry-After keeps the bucket empty.
      local next_s = tokens >= 1 and 0 or (1 - tokens) / rt.rate
      local empty = x.rate_at > now and x.rate_at - now or 0
      out[#out + 1] = { id = p.id, proxy = p.label or tostring(p.id),
                        tokens = round(tokens, 0.01), capacity = rt.cap,
                        next_s = round(next_s + empty, 0.001), empty_s = round(empty, 0.001) }
    end
  end
  return out, e
end

-- Counters of exchange e (struct ferry_rate_stats), or nil.
function M.stats(e)
  if C.ferry_rate_stats(e.id, stats) ~= 0 then return nil end
  return { waited = tonumber(stats.waited), rejected = tonumber(stats.rejected),
           learned = tonumber(stats.learned), waiting = tonumber(stats.waiting),
           queue = tonumber(stats.queue) }
end

local HELP = {
  { "ferry_rate_waited_total", "counter",
    "Requests that waited for a rate-budget token, per exchange.", "waited" },
  { "ferry_rate_rejected_total", "counter",
    "Requests answered 429 for want of rate budget (FERRY-2010, FERRY-2011), per exchange.",
    "rejected" },
  { "ferry_rate_learned_total", "counter",
    "Answers of the exchange that emptied or capped a bucket (Retry-After, X-RateLimit-*," ..
    " on_response used), per exchange.", "learned" },
  { "ferry_rate_waiting", "gauge", "Requests waiting for a rate-budget token now, per exchange.",
    "waiting" },
}

-- Escape a label value (names are [%w_.-], but the rule is the format's).
local function label(v)
  return (v:gsub("[\\\"\n]", { ["\\"] = "\\\\", ['"'] = '\\"', ["\n"] = "\\n" }))
end

function M.metrics_text(cur)
  local rows = {}
  for _, ec in ipairs(cur and cur.cfg and cur.cfg.exchanges or {}) do
    local e = cur.exchanges[ec.name]
    local s = e and e.rate and M.stats(e)
    if s then rows[#rows + 1] = { name = ec.name, s = s } end
  end
  if #rows == 0 then return "" end
  local out = {}
  for _, h in ipairs(HELP) do
    out[#out + 1] = "# HELP " .. h[1] .. " " .. h[3]
    out[#out + 1] = "# TYPE " .. h[1] .. " " .. h[2]
    for _, r in ipairs(rows) do
      out[#out + 1] = format('%s{exchange="%s"} %d', h[1], label(r.name), r.s[h[4]])
    end
  end
  out[#out + 1] = ""
  return concat(out, "\n")
end

admin.route("GET", "/api/v1/rate", function(req, rt)
  local cur = rt.active()
  local name = req.query.exchange
  for k in pairs(req.query) do
    if k ~= "exchange" then
      return admin.err(req, 400, "FERRY-2012", format('unknown query parameter "%s"', k:sub(1, 64)))
    end
  end
  local list, e = M.pairs(cur, name)
  if not list then return admin.err(req, 404, "FERRY-2012", e) end
  local s = M.stats(e) or {}
  local body = { exchange = e.name, limit = e.rate.limit, per = e.rate.per,
                 capacity = e.rate.cap, waited = s.waited, rejected = s.rejected,
                 learned = s.learned, waiting = s.waiting, queue = s.queue,
                 pairs = #list > 0 and list or nil } -- no proxies: no "pairs"

  return 200, body
end)

return M
