-- consecutive: open the breaker after `failures` failed results in a row
-- on a (proxy, exchange) pair.  The core handles the rest: cooldown,
-- half-open trials, a doubled cooldown after a failed trial.
local type, pairs, tostring = type, pairs, tostring

-- Settings every breaker has; the core acts on them, config.lua checks them.
local GENERIC = { policy = true, cooldown = true, trials = true, max_cooldown = true }

return {
  name = "consecutive",
  version = "1",
  defaults = { failures = 5 },
  -- should_open is false for every success: ferry need not ask.
  ignores_successes = true,
  check = function(s)
    for k in pairs(s) do
      if not GENERIC[k] and k ~= "failures" then
        return 'unknown setting "' .. tostring(k) .. '" (consecutive takes failures)'
      end
    end
    local f = s.failures
    if type(f) ~= "number" or f % 1 ~= 0 or f < 1 or f > 1000 then
      return "failures must be a whole number from 1 to 1000, got " .. tostring(f)
    end
    return nil
  end,
  -- x.consecutive_failures already counts this result.
  should_open = function(s, x, r)
    return not r.ok and x.consecutive_failures >= s.failures
  end,
}
