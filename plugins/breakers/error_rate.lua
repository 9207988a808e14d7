-- error_rate: open the breaker when, over the last `window` seconds, a
-- pair saw at least `min_requests` results and at least `threshold` of
-- them (a fraction) failed.  The window is the core's per-second ring of
-- results, so it survives reloads like the breaker itself.
local type = type

local function whole(v, lo, hi)
  return type(v) == "number" and v % 1 == 0 and v >= lo and v <= hi
end

return {
  name = "error_rate",
  version = "1",
  defaults = { window = 30, threshold = 0.5, min_requests = 20 },
  check = function(s)
    if not whole(s.window, 1, 60) then
      return "window must be a whole number of seconds from 1 to 60"
    end
    local t = s.threshold
    if type(t) ~= "number" or not (t > 0 and t <= 1) then
      return "threshold must be a fraction above 0 and at most 1"
    end
    if not whole(s.min_requests, 1, 1000000) then
      return "min_requests must be a whole number of at least 1"
    end
    return nil
  end,
  should_open = function(s, _, r, window)
    if r.ok then return false end -- only a failure can tip the rate over
    local ok, failed = window(s.window)
    local total = ok + failed
    return total >= s.min_requests and failed / total >= s.threshold
  end,
}
