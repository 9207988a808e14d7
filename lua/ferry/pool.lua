-- pool.lua: the pool object strategies receive, and the built-in round
-- robin the core falls back to when a strategy raises or returns junk.
local bit = require("bit")
local cdef = require("ferry.cdef")

local band, bxor, rshift, tobit = bit.band, bit.bxor, bit.rshift, bit.tobit
local random, floor = math.random, math.floor
local ipairs, rawget, setmetatable, sort = ipairs, rawget, setmetatable, table.sort

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

---------------------------------------------------------------------------
-- Slow start (pool field slowstart, seconds).  A member that came back
-- (down -> up, re-enabled, added after ferry started: core/health.c sets
-- c.up_since) gets ramp(p) of the traffic it would get at full weight:
-- ramp grows linearly from RAMP_MIN to 1 over slowstart seconds.  One
-- rule for every strategy: eligibility admits a ramping member with
-- probability ramp (Pool:eligible), the same draw for the whole request
-- (req.ramp_seed; hash and sticky seed it with the key so that a growing,
-- stable set of keys moves to the member).  Its effective weight,
-- weight x ramp, is what the console and the metrics show.
M.RAMP_MIN = 1 / 16

-- The ramp of p in this pool, 0 < ramp <= 1 (1: not ramping).
function Pool:ramp(p, now)
  local ss = self.slowstart
  if not ss then return 1 end
  local since = p.c.up_since
  if since == 0 then return 1 end
  local t = (now or self.now()) - since
  if t >= ss then return 1 end
  local r = t / ss
  if r < M.RAMP_MIN then r = M.RAMP_MIN end
  return r
end

function Pool:effective_weight(p, now)
  return (p.weight or 1) * self:ramp(p, now)
end

-- A 32-bit finalizer (MurmurHash3's): nearby inputs spread out.
local function mix(h)
  h = bxor(h, rshift(h, 16))
  h = tobit(h * 0x45d9f3b)
  h = bxor(h, rshift(h, 16))
  h = tobit(h * 0x45d9f3b)
  return bxor(h, rshift(h, 16))
end
M.mix = mix

-- The request's draw for p in [0, 1): fixed for the request, so that
-- every look at p (strategies look more than once) agrees.
local function draw(req, p)
  local seed = rawget(req, "ramp_seed")
  if not seed then
    seed = random(0, 0x7fffffff)
    req.ramp_seed = seed
  end
  return band(mix(bxor(seed, tobit(p.id * 2654435761 % 4294967296))), 0xffffff) / 0x1000000
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
      if (retry == 0 or self.now() < retry) and not (self.spare and self.spare[p]) then
        return false
      end
    end
  end
  -- Backups serve only when the pool's selection asks for them (Pool:select).
  local tier = self.tier
  if tier ~= nil and (p.backup or false) ~= tier then return false end
  if not req then return true end
  -- rawget: the runtime sets region before choosing; a request table
  -- never reads it lazily here, in the hot loop.
  local region = rawget(req, "region")
  if region and not in_region(p, region) then return false end
  local tried = req.tried
  if tried and tried[p.id] then return false end
  if self.slowstart and not self.relaxed and c.up_since ~= 0 and not rawget(req, "ramp_off") then
    local r = self:ramp(p)
    if r < 1 and draw(req, p) >= r then
      req.ramp_skipped = true
      return false
    end
  end
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
    local now = self.now()
    -- Kept eligible by max_ejected: its breaker aside, a ban still binds.
    if self.spare and self.spare[p] then return x.banned_until <= now end
    return not self:pair_blocked(x, now)
  end
  return true
end

---------------------------------------------------------------------------
-- max_ejected and backups: which members a selection may use.
--
-- A member is *ejected* when it is down (and not due for a trial) or
-- its breaker is open for the request's exchange; since then: its
-- down_since, or the breaker's opened_at.  Bans, rate budgets, disabled
-- and removed members are no ejections: they are never kept eligible.
-- Members are in two tiers: primaries and backups (entry backup = true).
-- max_ejected caps the ejected members of a tier at once (a count, or a
-- share of the tier's enabled members, rounded down): past the cap, the
-- ones ejected last are *spared*, eligible as if healthy (Envoy's
-- max_ejection_percent).  The view is counted again when the health
-- epoch moves (flags, breakers) or after VIEW_TTL seconds (bans, cooldowns).
local VIEW_TTL = 1

local function by_time(a, b)
  if a.at ~= b.at then return a.at < b.at end
  return a.p.id < b.p.id
end

-- { healthy = n, spare = { [entry] = true } | nil } of one tier.
local function tier_view(self, backup, exid, now, cap_pct, cap_n)
  local list = self.proxies
  local members, healthy, ejected = 0, 0, {}
  for i = 1, #list do
    local p = list[i]
    local c = p.c
    if (p.backup or false) == backup and band(c.flags, OFF) == 0 then
      members = members + 1
      local at
      if band(c.flags, DOWN) ~= 0 and not (c.retry_at ~= 0 and now >= c.retry_at) then
        at = c.down_since
      end
      local x = self.pair_of and self:pair(p, exid)
      local banned = x ~= nil and x.banned_until > now
      if x ~= nil and x.breaker == OPEN and now < x.breaker_until then
        if not at or x.opened_at > at then at = x.opened_at end
      end
      if at then
        ejected[#ejected + 1] = { p = p, at = at }
      elseif not banned then
        healthy = healthy + 1
      end
    end
  end
  local v = { healthy = healthy, ejected = #ejected, members = members }
  local cap = cap_n
  if cap_pct then cap = floor(members * cap_pct / 100) end
  if cap and #ejected > cap then
    sort(ejected, by_time)
    v.spare = {}
    for i = cap + 1, #ejected do v.spare[ejected[i].p] = true end
    v.spared = #ejected - cap
  end
  return v
end

-- The view of exchange exid's traffic, cached per exchange.
function Pool:ejection(exid, now)
  now = now or self.now()
  local views = self.views
  if not views then
    views = {}
    self.views = views
  end
  local epoch = self.epoch and self.epoch() or 0
  local v = views[exid]
  if v and v.epoch == epoch and now - v.at < VIEW_TTL and v.n == #self.proxies then return v end
  local me = self.max_ejected
  local pct, n = me and me.percent, me and me.count
  v = { epoch = epoch, at = now, n = #self.proxies,
        primary = tier_view(self, false, exid, now, pct, n) }
  if self.has_backup then v.backup = tier_view(self, true, exid, now, pct, n) end
  views[exid] = v
  return v
end

-- The pool's choice for req with fn(pool, req, arg) (the strategy, through
-- the runtime's checks), tiers, max_ejected and slow start applied:
-- the primaries first, unless none is healthy and a backup is; then
-- the other tier.  Within a tier, when slow start left every candidate
-- out, the choice is made again without it (a ramping member alone
-- still serves).  Returns the entry or nil.
function Pool:select(req, fn, arg)
  if not self.has_backup and not self.max_ejected then
    local p = fn(self, req, arg)
    if p or not self.slowstart or not rawget(req, "ramp_skipped") then return p end
    req.ramp_off = true
    p = fn(self, req, arg)
    req.ramp_off, req.ramp_skipped = nil, nil
    return p
  end
  local v = self:ejection(req.exid or 0)
  local first = false
  if self.has_backup and v.primary.healthy == 0 and v.backup.healthy > 0 then first = true end
  local p
  for k = 1, self.has_backup and 2 or 1 do
    local tier = first
    if k == 2 then tier = not first end
    local tv = tier and v.backup or v.primary
    if self.has_backup then self.tier = tier end
    self.spare = tv.spare
    req.ramp_skipped = nil
    local ok, r = pcall(fn, self, req, arg)
    if ok and not r and self.slowstart and rawget(req, "ramp_skipped") then
      req.ramp_off = true
      ok, r = pcall(fn, self, req, arg)
      req.ramp_off = nil
    end
    self.tier, self.spare = nil, nil
    if not ok then error(r, 0) end
    if r then
      p = r
      -- What the runtime reports (log lines once in a while, metrics).
      self.spared = tv.spared
      if tv.spared and tv.spare[r] then self.spared_used = (self.spared_used or 0) + 1 end
      break
    end
  end
  req.ramp_skipped = nil
  return p
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
    -- Load-balancing fields (apply.lua): slowstart (seconds, nil = off),
    -- max_ejected ({ percent } or { count }, nil = no cap), has_backup,
    -- epoch (the core's health epoch, for Pool:ejection's cache).
    slowstart = opts.slowstart,
    max_ejected = opts.max_ejected,
    has_backup = opts.has_backup,
    epoch = opts.epoch,
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
