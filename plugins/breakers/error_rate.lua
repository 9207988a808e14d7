-- error_rate: open the breaker when, over the last `window` seconds, a
-- pair saw at least `min_requests` results and at least `threshold` of
-- them (a fraction) failed.  The window is the core's per-second ring of
-- results, so it survives reloads like the breaker itself.
local type, pairs, tostring = type, pairs, tostring

-- Settings every breaker has; the core acts on them, config.lua checks them.
local GENERIC = { policy = true, cooldown = true, trials = true, max_cooldown = true }
local OWN = { window = true, threshold = true, min_requests = true }

local function whole(v, lo, hi)
  return type(v) == "number" and v % 1 == 0 and v >= lo and v <= hi
end

return {
  name = "error_rate",
  version = "1",
  defaults = { window = 30, threshold = 0.5, min_requests = 20 },
  -- should_open is false for every success: ferry need not ask.
  ignores_successes = true,
  check = function(s)
    for k in pairs(s) do
      if not GENERIC[k] and not OWN[k] then
        return 'unknown setting "' .. tostring(k) ..
          '" (error_rate takes window, threshold, min_requests)'
      end
    end
    if not whole(s.window, 1, 60) then
      return "window must be a whole number of seconds from 1 to 60, got " .. tostring(s.window)
    end
    local t = s.threshold
    if type(t) ~= "number" or not (t > 0 and t <= 1) then
      return "threshold must be a fraction above 0 and at most 1, got " .. tostring(t)
    end
    if not whole(s.min_requests, 1, 1000000) then
      return "min_requests must be a whole number from 1 to 1000000, got " ..
        tostring(s.min_requests)
    end
    return nil
  end,
  -- The window already counts this result.  Only a failure can tip the
  -- rate over, so a success never pays for reading the window.
  should_open = function(s, _, r, window)
    if r.ok then return false end
    local ok, failed = window(s.window)
    local total = ok + failed
    return total >= s.min_requests and failed / total >= s.threshold
  end,
}
