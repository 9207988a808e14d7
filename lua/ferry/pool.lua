-- pool.lua: the pool object strategies receive, and the built-in round
-- robin the core falls back to when a strategy raises or returns junk.
local bit = require("bit")
local cdef = require("ferry.cdef")

local band = bit.band
local random = math.random
local ipairs, rawget, setmetatable = ipairs, rawget, setmetatable

local DOWN = cdef.PROXY_DOWN
local OFF = bit.bor(cdef.PROXY_DISABLED, cdef.PROXY_REMOVED)
local CLOSED, OPEN, HALF_OPEN = cdef.BREAKER_CLOSED, cdef.BREAKER_OPEN, cdef.BREAKER_HALF_OPEN
-- A half-open trial that never reported back frees its slot after this
-- (TRIAL_STALE_SECS in core/health.c).
local TRIAL_STALE = 30

local M = {}

local Pool = {}
Pool.__index = Pool

-- The (proxy, exchange) state of p, or nil when the pool has no source
-- of pair states (unit specs of strategies).  Cached on the proxy entry:
-- the C side never moves or frees a pair.
function Pool:pair(p, exid)
  local get = self.pair_of
  if not get then return nil end
  local xs = p.x
  if not xs then
    xs = {}
    p.x = xs
  end
  local x = xs[exid]
  if x == nil then
    x = get(p.id, exid)
    if x == nil then return nil end
    xs[exid] = x
  end
  return x
end

-- Whether the pair's breaker or a ban keeps p away from this exchange.
-- An open breaker whose cooldown is over turns half-open here, on the
-- first look after it: the state changes exactly when it matters.
function Pool:pair_blocked(x, now)
  if x.banned_until > now then return true end
  local b = x.breaker
  if b == OPEN then
    if now < x.breaker_until then return true end
    self.half_open(x, self.trials or 1)
    return false
  end
  if b == HALF_OPEN then
    return x.trials >= x.trials_max and now - x.trial_at < TRIAL_STALE
  end
  return false
end

-- The one region rule (X-Ferry-Region, user -region-, the broker's
-- "region"): a proxy is in region r when its configured region is
-- exactly r.  A proxy without a region is in none.
local function in_region(p, region)
  return p.region == region
end
M.in_region = in_region

-- How many proxies of the pool are in `region`; cached per pool until
-- its proxy list is replaced or changes length.
function Pool:region_size(region)
  local per, list = self.regions, self.proxies
  if not per or per.list ~= list or per.n ~= #list then
    per = { list = list, n = #list }
    self.regions = per
  end
  local k = per[region]
  if not k then
    k = 0
    for _, p in ipairs(self.proxies) do
      if in_region(p, region) then k = k + 1 end
    end
    per[region] = k
  end
  return k
end

-- Usable for this request: in the request's region when it names one,
-- not disabled or removed, not tried by it yet
-- (a retry must go through a different proxy), and unless the pool is
-- relaxed (panic, all_down = "any"): not down, not banned for the
-- request's exchange, breaker not open.  A down proxy without probes is
-- usable again for a trial once its retry_at has passed.
function Pool:eligible(p, req)
  local c = p.c
  local flags = c.flags
  if flags ~= 0 then
    if band(flags, OFF) ~= 0 then return false end
    if band(flags, DOWN) ~= 0 and not self.relaxed then
      local retry = c.retry_at
      if retry == 0 or self.now() < retry then return false end
    end
  end
  if not req then return true end
  -- rawget: the runtime sets region before choosing; a request table
  -- never reads it lazily here, in the hot loop.
  local region = rawget(req, "region")
  if region and not in_region(p, region) then return false end
  local tried = req.tried
  if tried and tried[p.id] then return false end
  if not self.pair_of then return true end
  -- The pair, from the entry's cache first (pool:pair fills it).
  local exid = req.exid or 0
  local xs = p.x
  local x = xs and xs[exid]
  if x == nil then x = self:pair(p, exid) end
  -- A rate budget binds even a relaxed pool (panic, all_down = "any"):
  -- spending past it is what gets an address banned.  req.rate is the
  -- exchange's { rate = tokens per second }, req.weight the request's
  -- cost (at most the bucket), req.now the dispatch's clock
  -- (runtime.lua); the bucket's tokens are core/rate.c's refill, read
  -- without writing.
  local rt = rawget(req, "rate")
  if rt and x ~= nil then
    local at = x.rate_at
    if at ~= 0 and x.rate_tokens + (req.now - at) * rt.rate < req.weight then return false end
  end
  if self.relaxed then return true end
  if x ~= nil and (x.breaker ~= CLOSED or x.banned_until ~= 0) then
    return not self:pair_blocked(x, self.now())
  end
  return true
end

-- name: pool name; proxies: array of { id, display, weight, region, c };
-- opts.latency_ceiling (ms, default 1000), opts.now (seconds clock,
-- default os.time; the runtime passes ferry_now).
function M.new(name, proxies, opts)
  opts = opts or {}
  return setmetatable({
    name = name,
    proxies = proxies or {},
    -- Scratch space owned by the strategy; kept across requests.
    state = {},
    latency_ceiling = opts.latency_ceiling or 1000,
    now = opts.now or os.time,
    -- Cursor of the fallback round robin.  Kept outside `state` so a
    -- broken strategy cannot corrupt the thing that stands in for it.
    rr = 0,
  }, Pool)
end

-- Seconds until some proxy of the pool eligible for req (health aside
-- when relaxed) has req.weight tokens of req.rate's budget, or nil when
-- none is eligible even with budget.  O(n): only when no proxy has
-- budget now (the request is about to wait or be refused).
function Pool:rate_wait(req)
  local rt = rawget(req, "rate")
  req.rate = false
  local best
  local list, now, w, rate = self.proxies, req.now, req.weight, rt.rate
  for i = 1, #list do
    local p = list[i]
    if self:eligible(p, req) then
      local x = self:pair(p, req.exid)
      local wait = 0
      if x ~= nil and x.rate_at ~= 0 then
        -- tokens(T) = rate_tokens + (T - rate_at) * rate, from rate_at on
        wait = x.rate_at + (w - x.rate_tokens) / rate - now
      end
      if wait < 0 then wait = 0 end
      if not best or wait < best then best = wait end
    end
  end
  req.rate = rt
  return best
end

-- Pools up to SCAN_MAX proxies are scanned whole by the strategies that
-- look for the best proxy.  Larger ones compare SAMPLE random eligible
-- candidates instead (the "power of k choices" of Envoy's least_request
-- and NGINX's random two): within a few percent of the best, at a cost
-- that does not grow with the pool.
M.SCAN_MAX = 64
M.SAMPLE = 16

-- Up to SAMPLE eligible proxies drawn at random into pool.state.sample;
-- returns that array and its length (0 when draws keep missing: most
-- proxies are unusable, and the caller scans the whole pool).
function Pool:sample(req)
  local list, st = self.proxies, self.state
  local n = #list
  local out = st.sample
  if not out then
    out = {}
    st.sample = out
  end
  local m, want = 0, M.SAMPLE
  for _ = 1, want * 4 do
    local p = list[random(n)]
    if self:eligible(p, req) then
      m = m + 1
      out[m] = p
      if m == want then break end
    end
  end
  return out, m
end

-- The eligible proxy with the lowest key(p), and among equal keys the
-- lowest key2(p) when given.  The scan starts just after the strategy's
-- cursor (pool.state.cursor) and only a strictly lower key displaces the
-- current best, so ties go to the next proxy in rotation instead of
-- always to the first one.  The cursor moves to the winner.
-- Two keys rather than one combined number: folding a tie-breaker into
-- the fraction of a large counter loses it to double rounding.
function Pool:lowest(req, key, key2)
  local list, st = self.proxies, self.state
  local n = #list
  if n > M.SCAN_MAX then
    local cand, m = self:sample(req)
    if m > 0 then
      -- Candidates come in random order: ties need no rotation.
      local best, best_k, best_k2 = cand[1], key(cand[1]), key2 and key2(cand[1])
      for i = 2, m do
        local p = cand[i]
        local v = key(p)
        if v < best_k then
          best, best_k, best_k2 = p, v, key2 and key2(p)
        elseif key2 and v == best_k then
          local v2 = key2(p)
          if v2 < best_k2 then best, best_k2 = p, v2 end
        end
      end
      return best
    end
  end
  local start = st.cursor or 0
  local best, best_i, best_k, best_k2
  for k = 1, n do
    local i = (start + k - 1) % n + 1
    local p = list[i]
    if self:eligible(p, req) then
      local v = key(p)
      if not best or v < best_k then
        best, best_i, best_k = p, i, v
        best_k2 = key2 and key2(p)
      elseif key2 and v == best_k then
        local v2 = key2(p)
        if v2 < best_k2 then best, best_i, best_k2 = p, i, v2 end
      end
    end
  end
  if best then st.cursor = best_i end
  return best
end

-- The core's fallback: the next eligible proxy after pool.rr, or nil when
-- none is.  O(1) amortized while most proxies are eligible, O(n) at worst.
function M.round_robin(pool, req)
  local list = pool.proxies
  local n = #list
  local i = pool.rr or 0
  for _ = 1, n do
    i = i % n + 1
    local p = list[i]
    if pool:eligible(p, req) then
      pool.rr = i
      return p
    end
  end
  return nil
end

return M
