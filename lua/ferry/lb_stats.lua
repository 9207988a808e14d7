-- lb_stats.lua: what slow start, max_ejected and backups look like now,
-- for the console (pool.stats, proxy.health) and /metrics.  Read only:
-- every number comes from ferry.pool (Pool:ramp, Pool:ejection), the
-- one place that decides them.
local format, concat = string.format, table.concat
local ipairs, pairs, sort = ipairs, pairs, table.sort

local M = {}

local function cap_text(me)
  if not me then return nil end
  if me.percent then return format("%g%%", me.percent) end
  return tostring(me.count)
end

local function round2(x)
  return math.floor(x * 100 + 0.5) / 100
end

-- Pool fields: slowstart, max_ejected, ejected/spared (traffic without
-- an exchange), backups and whether they serve, the members ramping.
function M.pool(p, now)
  now = now or p.now()
  local s = { slowstart = p.slowstart, max_ejected = cap_text(p.max_ejected) }
  if p.max_ejected or p.has_backup then
    local v = p:ejection(0, now)
    s.ejected = v.primary.ejected + (v.backup and v.backup.ejected or 0)
    s.spared = (v.primary.spared or 0) + (v.backup and v.backup.spared or 0)
  end
  if p.has_backup then
    local n = 0
    for _, x in ipairs(p.proxies) do
      if x.backup then n = n + 1 end
    end
    s.backups = n
    s.backup_serving = p.backup_serving or false
  end
  if p.slowstart then
    local ramping = {}
    for _, x in ipairs(p.proxies) do
      local r = p:ramp(x, now)
      if r < 1 then
        ramping[#ramping + 1] = format("%s %.0f%% (weight %g)", x.label or tostring(x.id),
          r * 100, round2(p:effective_weight(x, now)))
      end
    end
    s.ramping = #ramping > 0 and concat(ramping, ", ") or "-"
  end
  return s
end

-- One proxy's ramp in each pool that ramps it: "pool 40% (weight 0.8)", or nil.
function M.proxy(cur, cid, now)
  local parts = {}
  for _, name in ipairs(cur.cfg.pool_order) do
    local p = cur.pools[name]
    local x = p and p.slowstart and p.by_id[cid]
    if x then
      local r = p:ramp(x, now)
      if r < 1 then
        parts[#parts + 1] = format("%s %.0f%% (weight %g)", name, r * 100,
          round2(p:effective_weight(x, now)))
      end
    end
  end
  return #parts > 0 and concat(parts, ", ") or nil
end

local function label(s)
  return (tostring(s):gsub('[\\"\n]', { ["\\"] = "\\\\", ['"'] = '\\"', ["\n"] = "\\n" }))
end

-- Gauges of the pools that use these features (nothing for the others).
function M.metrics_text(cur)
  local names = {}
  for name, p in pairs(cur and cur.pools or {}) do
    if p.slowstart or p.max_ejected or p.has_backup then names[#names + 1] = name end
  end
  if #names == 0 then return "" end
  sort(names)
  local w, e, sp, b = {}, {}, {}, {}
  for _, name in ipairs(names) do
    local p = cur.pools[name]
    local now = p.now()
    if p.slowstart then
      for _, x in ipairs(p.proxies) do
        w[#w + 1] = format('ferry_pool_member_effective_weight{pool="%s",proxy="%s"} %g',
          label(name), label(x.label or x.id), round2(p:effective_weight(x, now)))
      end
    end
    if p.max_ejected or p.has_backup then
      local v = p:ejection(0, now)
      for _, t in ipairs({ { "primary", v.primary }, { "backup", v.backup } }) do
        if t[2] then
          e[#e + 1] = format('ferry_pool_ejected{pool="%s",tier="%s"} %d', label(name), t[1],
            t[2].ejected)
          sp[#sp + 1] = format('ferry_pool_ejected_spared{pool="%s",tier="%s"} %d', label(name),
            t[1], t[2].spared or 0)
        end
      end
    end
    if p.has_backup then
      b[#b + 1] = format('ferry_pool_backup_serving{pool="%s"} %d', label(name),
        p.backup_serving and 1 or 0)
    end
  end
  local out = {}
  if #w > 0 then
    out[#out + 1] = "# HELP ferry_pool_member_effective_weight A member's weight times its " ..
      "slow-start ramp (0..1)."
    out[#out + 1] = "# TYPE ferry_pool_member_effective_weight gauge"
    for _, l in ipairs(w) do out[#out + 1] = l end
  end
  if #e > 0 then
    out[#out + 1] = "# HELP ferry_pool_ejected Members down or with an open breaker " ..
      "(traffic without an exchange), by tier."
    out[#out + 1] = "# TYPE ferry_pool_ejected gauge"
    for _, l in ipairs(e) do out[#out + 1] = l end
    out[#out + 1] = "# HELP ferry_pool_ejected_spared Ejected members kept eligible by " ..
      "max_ejected."
    out[#out + 1] = "# TYPE ferry_pool_ejected_spared gauge"
    for _, l in ipairs(sp) do out[#out + 1] = l end
  end
  if #b > 0 then
    out[#out + 1] = "# HELP ferry_pool_backup_serving 1 while the pool's backups take its " ..
      "traffic."
    out[#out + 1] = "# TYPE ferry_pool_backup_serving gauge"
    for _, l in ipairs(b) do out[#out + 1] = l end
  end
  out[#out + 1] = ""
  return concat(out, "\n")
end

return M
