-- consecutive: open the breaker after `failures` failed results in a row
-- on a (proxy, exchange) pair.  The core handles the rest: cooldown,
-- half-open trials, a doubled cooldown after a failed trial.
local type = type

return {
  name = "consecutive",
  version = "1",
  defaults = { failures = 5 },
  check = function(s)
    local f = s.failures
    if type(f) ~= "number" or f < 1 or f % 1 ~= 0 or f > 1000 then
      return "failures must be a whole number from 1 to 1000"
    end
    return nil
  end,
  should_open = function(s, x)
    return x.consecutive_failures >= s.failures
  end,
}
