-- Body framing in the C core (core/http.c, core/http_body.c) through FFI:
-- where a message ends, fed whole or one byte at a time, and what is
-- refused.  The struct is opaque here: a generous buffer holds it.
local ffi = require("ffi")

ffi.cdef[[
int http_parse_request(void *m, const char *head, size_t len);
int http_parse_response(void *m, const char *head, size_t len, int head_request);
long http_body(void *m, const char *p, size_t n);
int http_body_eof(void *m);
int http_needs_eof(const void *m);
int http_bare_cr(const char *p, size_t n);
]]

local core = ffi.load("./build/libferry.so")

local function msg()
  return ffi.new("char[?]", 65536)
end

local function request(head)
  local m = msg()
  local r = core.http_parse_request(m, head, #head)
  return m, r
end

-- Feed body in pieces of `step` bytes; returns bytes taken (or -1), done.
local function feed(m, body, step)
  local taken, i = 0, 1
  while i <= #body do
    local piece = body:sub(i, i + step - 1)
    local n = tonumber(core.http_body(m, piece, #piece))
    if n < 0 then return -1, false end
    taken = taken + n
    if n < #piece then break end
    i = i + step
  end
  return taken, core.http_body_eof(m) == 1
end

local CHUNKED = "POST http://h/ HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\n\r\n"

describe("chunked request bodies", function()
  local good = "5;a=b;c=\"d e\"\r\nhello\r\n1A\r\n" .. string.rep("z", 26) ..
    "\r\n0\r\nX-Sum: 31\r\nX-Other: a b\r\n\r\n"

  for _, step in ipairs({ 1, 2, 3, 7, #good }) do
    it("ends exactly at the last CRLF when fed " .. step .. " bytes at a time", function()
      local m, r = request(CHUNKED)
      assert.equal(0, r)
      local taken, done = feed(m, good .. "GET /next HTTP/1.1\r\n\r\n", step)
      assert.equal(#good, taken)
      assert.is_true(done)
    end)
  end

  local bad = {
    ["data then XX"] = "5\r\nhelloXX0\r\n\r\n",
    ["data then LF"] = "5\r\nhello\n0\r\n\r\n",
    ["data then CR CR"] = "5\r\nhello\r\r0\r\n\r\n",
    ["LF in an extension"] = "5;a\nb\r\nhello\r\n0\r\n\r\n",
    ["NUL in an extension"] = "5;a\0b\r\nhello\r\n0\r\n\r\n",
    ["bare LF after the size"] = "5\nhello\r\n0\r\n\r\n",
    ["bare CR after the size"] = "5\rhello\r\n0\r\n\r\n",
    ["16 hex digits"] = "1000000000000000\r\n",
    ["17 hex digits"] = "10000000000000005\r\nhello\r\n0\r\n\r\n",
    ["0x prefix"] = "0x5\r\nhello\r\n0\r\n\r\n",
    ["a sign"] = "+5\r\nhello\r\n0\r\n\r\n",
    ["no digits"] = "\r\nhello\r\n0\r\n\r\n",
    ["trailing space without ;"] = "5 \r\nhello\r\n0\r\n\r\n",
    ["trailer with a bare LF"] = "0\r\nX: a\n\r\n",
    ["trailer with space before colon"] = "0\r\nX : a\r\n\r\n",
    ["folded trailer"] = "0\r\nX: a\r\n b\r\n\r\n",
    ["end with a bare LF"] = "0\r\n\n",
    ["oversized chunk line"] = "5;" .. string.rep("a", 5000) .. "\r\nhello\r\n0\r\n\r\n",
    ["oversized trailers"] = "0\r\n" .. string.rep("X-A: " .. string.rep("v", 90) .. "\r\n", 100) ..
      "\r\n",
  }
  for name, body in pairs(bad) do
    it("refuses " .. name .. ", whole or byte by byte", function()
      for _, step in ipairs({ 1, #body }) do
        local m = request(CHUNKED)
        local taken = feed(m, body, step)
        assert.equal(-1, taken)
      end
    end)
  end

  it("takes the largest chunk size, 15 hex digits", function()
    local m = request(CHUNKED)
    assert.equal(#"fffffffffffffff\r\nab", feed(m, "fffffffffffffff\r\nab", 1))
  end)
end)

describe("request heads and their framing", function()
  it("takes exactly Content-Length bytes and leaves the next request", function()
    local m = request("POST http://h/ HTTP/1.1\r\nHost: h\r\nContent-Length: 5\r\n\r\n")
    local taken, done = feed(m, "helloGET /next", 3)
    assert.equal(5, taken)
    assert.is_true(done)
  end)

  local refused = {
    ["TE with CL"] = { "Transfer-Encoding: chunked\r\nContent-Length: 5\r\n", -3 },
    ["TE on HTTP/1.0"] = { "Transfer-Encoding: chunked\r\n", -3, "1.0" },
    ["TE gzip only"] = { "Transfer-Encoding: gzip\r\n", -3 },
    ["TE chunked, gzip"] = { "Transfer-Encoding: chunked, gzip\r\n", -3 },
    ["TE chunked;x=1"] = { "Transfer-Encoding: chunked;x=1\r\n", -3 },
    ["TE chunked,"] = { "Transfer-Encoding: chunked,\r\n", -3 },
    ["CL twice"] = { "Content-Length: 5\r\nContent-Length: 5\r\n", -3 },
    ["CL 19 digits"] = { "Content-Length: 1000000000000000000\r\n", -3 },
    ["CL empty"] = { "Content-Length: \r\n", -3 },
    ["CL 5 5"] = { "Content-Length: 5 5\r\n", -3 },
    ["space before colon"] = { "Content-Length : 5\r\n", -1 },
    ["leading space"] = { " X: y\r\n", -1 },
    ["DEL in a value"] = { "X: a\127\r\n", -1 },
    ["empty name"] = { ": y\r\n", -1 },
    ["two Host"] = { "Host: other\r\n", -1 },
    ["17 Connection tokens"] = { "Connection: " .. string.rep("a, ", 16) .. "b\r\n", -1 },
  }
  for name, case in pairs(refused) do
    it("refuses " .. name, function()
      local head = "POST http://h/ HTTP/" .. (case[3] or "1.1") .. "\r\nHost: h\r\n" .. case[1] ..
        "\r\n"
      local _, r = request(head)
      assert.equal(case[2], r)
    end)
  end

  it("takes gzip, chunked as chunked, and LF-only line ends", function()
    local m, r = request("POST http://h/ HTTP/1.1\nHost: h\nTransfer-Encoding: gzip, chunked\n\n")
    assert.equal(0, r)
    assert.equal(5, (feed(m, "0\r\n\r\n", 5)))
  end)

  it("refuses unknown methods and versions other than 1.x", function()
    assert.equal(-1, select(2, request("get http://h/ HTTP/1.1\r\n\r\n")))
    assert.equal(-1, select(2, request("GET http://h/ HTTP/2.0\r\n\r\n")))
    assert.equal(-1, select(2, request("GET http://h/ HTTP/1.10\r\n\r\n")))
    assert.equal(0, select(2, request("M-SEARCH * HTTP/1.1\r\n\r\n")))
    assert.equal(0, select(2, request("GET http://h/caf\195\169 HTTP/1.1\r\n\r\n")))
    assert.equal(-1, select(2, request("GET http://h/a\127b HTTP/1.1\r\n\r\n")))
    assert.equal(-1, select(2, request("GET http://h/a\tb HTTP/1.1\r\n\r\n")))
  end)

  it("finds a bare CR before the head completes", function()
    assert.equal(1, core.http_bare_cr("GET / HTTP/1.1\r\nX: a\rb", 23))
    assert.equal(0, core.http_bare_cr("GET / HTTP/1.1\r\nX: a\r", 21))
  end)
end)

describe("response framing", function()
  local function response(head, head_request)
    local m = msg()
    return m, core.http_parse_response(m, head, #head, head_request and 1 or 0)
  end

  it("reads until close when the last coding is not chunked", function()
    local m, r = response("HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip\r\n\r\n")
    assert.equal(0, r)
    assert.equal(1, core.http_needs_eof(m))
    assert.equal(3, tonumber(core.http_body(m, "abc", 3)))
    assert.equal(1, core.http_body_eof(m))
  end)

  it("lets Transfer-Encoding win over Content-Length, and refuses it on HTTP/1.0", function()
    local m, r = response("HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n" ..
      "Content-Length: 3\r\n\r\n")
    assert.equal(0, r)
    assert.equal(5, tonumber(core.http_body(m, "0\r\n\r\nabc", 8)))
    assert.equal(-3, select(2, response("HTTP/1.0 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n")))
  end)

  it("has no body for HEAD, 1xx, 204 and 304", function()
    for _, case in ipairs({ { "200 OK", true }, { "100 Continue" }, { "204 No Content" },
                            { "304 Not Modified" } }) do
      local m, r = response("HTTP/1.1 " .. case[1] .. "\r\nContent-Length: 10\r\n\r\n", case[2])
      assert.equal(0, r)
      assert.equal(1, core.http_body_eof(m))
    end
  end)

  it("takes a status line without a reason phrase", function()
    assert.equal(0, select(2, response("HTTP/1.1 200\r\nContent-Length: 0\r\n\r\n")))
    assert.equal(-1, select(2, response("HTTP/1.1 20 OK\r\n\r\n")))
    assert.equal(-1, select(2, response("HTTP/1.1  200 OK\r\n\r\n")))
  end)
end)
