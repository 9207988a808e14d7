-- lua/ferry/text.lua: masking and trimming in linear time.  The old
-- masking, gsub("(%a[%w+.-]*://)[^%s/@\"'`]*@", "%1***@"), backtracked
-- quadratically inside C on a long run of letters (a 1 MiB console
-- answer ran for hours); the old trims ("%s+$", "^%s*(.-)%s*$") on long
-- runs of blanks.  The new ones give the same answers, and their work
-- is a bounded number of plain or single-class searches per "://".
local text = require("ferry.text")

local function old_mask(s)
  return (s:gsub("(%a[%w+.-]*://)[^%s/@\"'`]*@", "%1***@"))
end

-- VM instructions fn() runs, interpreted (a count hook sees them all).
local function instructions(fn)
  jit.off()
  local n = 0
  debug.sethook(function() n = n + 1 end, "", 1)
  fn()
  debug.sethook()
  jit.on()
  return n
end

describe("text.mask", function()
  it("hides userinfo after every scheme://", function()
    assert.equal("http://***@h:1", text.mask("http://u:p@h:1"))
    assert.equal("x socks5://***@127.0.0.1:1 and http://***@d/e@f",
      text.mask("x socks5://alice:pw@127.0.0.1:1 and http://b:c@d/e@f"))
    assert.equal("'http://***@h'", text.mask("'http://u:p@h'"))
    assert.equal("http://h/a@b", text.mask("http://h/a@b")) -- an @ in the path is not userinfo
    assert.equal("http://u p@h", text.mask("http://u p@h"))
    assert.equal("no url", text.mask("no url"))
    assert.equal("", text.mask(""))
  end)

  it("answers as the old pattern did wherever a scheme precedes ://", function()
    math.randomseed(7)
    local alphabet = { "a", "b", "1", ":", "/", "@", " ", "'", ".", "+" }
    local compared = 0
    for _ = 1, 20000 do
      local parts = {}
      for i = 1, math.random(0, 24) do parts[i] = alphabet[math.random(#alphabet)] end
      if math.random() < 0.5 then table.insert(parts, math.random(#parts + 1), "a://") end
      local s = table.concat(parts)
      -- The new mask also hides userinfo after a "://" without a scheme.
      local schemeless = false
      local at = s:find("://", 1, true)
      while at do
        local run = s:sub(1, at - 1):match("[%w+.-]*$")
        if not run:find("%a") then schemeless = true end
        at = s:find("://", at + 1, true)
      end
      if not schemeless then
        assert.equal(old_mask(s), text.mask(s), s)
        compared = compared + 1
      end
    end
    assert.is_true(compared > 5000)
  end)

  it("does a bounded amount of work per :// on 1 MiB inputs", function()
    local letters = string.rep("ab", 512 * 1024)
    assert.equal(letters, text.mask(letters))
    assert.is_true(instructions(function() text.mask(letters) end) < 100)
    local urls = string.rep("x://u:p@h ", 100000)
    local masked
    local n = instructions(function() masked = text.mask(urls) end)
    assert.equal(string.rep("x://***@h ", 100000), masked)
    assert.is_true(n < 100 * 100000, n .. " instructions")
    local hostile = string.rep("a://", 262144) -- every userinfo run stops at once
    n = instructions(function() masked = text.mask(hostile) end)
    assert.equal(hostile, masked)
    assert.is_true(n < 100 * 262144, n .. " instructions")
  end)
end)

describe("text.trim and rtrim", function()
  it("trim blanks as %s does, blanks only spaces and tabs", function()
    assert.equal("a b", text.trim(" \t\r\n a b \v\f "))
    assert.equal("", text.trim("   "))
    assert.equal("", text.trim(""))
    assert.equal("abc", text.rtrim("abc \t\n"))
    assert.equal("abc \n", text.rtrim("abc \n \t", true))
    assert.equal("x", text.rtrim("x"))
  end)

  it("look at each trailing blank once", function()
    local s = string.rep(" ", 1000000) .. "x" .. string.rep(" ", 1000)
    local out
    local n = instructions(function() out = text.trim(s) end)
    assert.equal("x", out)
    assert.is_true(n < 20 * 1000 + 100, n .. " instructions")
  end)
end)
