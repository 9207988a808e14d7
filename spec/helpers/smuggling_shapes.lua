-- smuggling_shapes.lua: request heads and chunked bodies that two
-- reasonable parsers could read differently, each to be refused with 400
-- by every HTTP listener (forward and reverse) so that the hidden request
-- in it never runs (spec/integration/19_smuggling_spec.lua,
-- 45_reverse_spec.lua).
local M = {}

M.SMUG = "GET /smuggled HTTP/1.1\r\nHost: x\r\n\r\n"

-- Request shapes: {name, bytes}; {H} is the origin's host:port, {N}
-- the length of the smuggled request, {S} the smuggled request.
M.REQUESTS = {
  { "whitespace before the colon of Content-Length",
    "POST http://{H}/a HTTP/1.1\r\nHost: {H}\r\nContent-Length : {N}\r\n\r\n{S}" },
  { "a tab before the colon of Content-Length",
    "POST http://{H}/a HTTP/1.1\r\nHost: {H}\r\nContent-Length\t: {N}\r\n\r\n{S}" },
  { "whitespace before the colon of Transfer-Encoding",
    "POST http://{H}/a HTTP/1.1\r\nHost: {H}\r\nTransfer-Encoding : chunked\r\n\r\n0\r\n\r\n{S}" },
  { "whitespace before the colon of Proxy-Authorization",
    "GET http://{H}/a HTTP/1.1\r\nHost: {H}\r\nProxy-Authorization : Basic Zm9vOmJhcg==\r\n\r\n" },
  { "a space inside a field name",
    "POST http://{H}/a HTTP/1.1\r\nHost: {H}\r\nContent Length: {N}\r\n\r\n{S}" },
  { "a bare CR inside a field line",
    "POST http://{H}/a HTTP/1.1\r\nHost: {H}\r\nX-A: 1\rContent-Length: {N}\r\n\r\n{S}" },
  { "a bare CR before the line's CRLF",
    "POST http://{H}/a HTTP/1.1\r\nHost: {H}\r\nX-A: 1\r\r\nContent-Length: {N}\r\n\r\n{S}" },
  { "a bare CR ending the head",
    "POST http://{H}/a HTTP/1.1\r\nHost: {H}\r\nX-A: 1\r\n\rContent-Length: {N}\r\n\r\n{S}" },
  { "a bare CR in the request line",
    "GET http://{H}/a\rHTTP/1.1\r\nHost: {H}\r\n\r\n" },
  { "obs-fold right after the request line",
    "POST http://{H}/a HTTP/1.1\r\n Content-Length: {N}\r\nHost: {H}\r\n\r\n{S}" },
  { "obs-fold after a field",
    "POST http://{H}/a HTTP/1.1\r\nHost: {H}\r\nX-A: 1\r\n Content-Length: {N}\r\n\r\n{S}" },
  { "a NUL in a field value",
    "POST http://{H}/a HTTP/1.1\r\nHost: {H}\r\nX-A: a\0b\r\nContent-Length: {N}\r\n\r\n{S}" },
  { "a control character in a field value",
    "POST http://{H}/a HTTP/1.1\r\nHost: {H}\r\nX-A: a\1b\r\nContent-Length: {N}\r\n\r\n{S}" },
  { "a vertical tab before a Transfer-Encoding value",
    "POST http://{H}/a HTTP/1.1\r\nHost: {H}\r\nTransfer-Encoding:\11chunked\r\n\r\n0\r\n\r\n{S}" },
  { "Content-Length and Transfer-Encoding together",
    "POST http://{H}/a HTTP/1.1\r\nHost: {H}\r\nContent-Length: 0\r\n" ..
    "Transfer-Encoding: chunked\r\n\r\n0\r\n\r\n{S}" },
  { "two different Content-Length fields",
    "POST http://{H}/a HTTP/1.1\r\nHost: {H}\r\nContent-Length: 0\r\nContent-Length: {N}\r\n\r\n{S}" },
  { "two equal Content-Length fields",
    "POST http://{H}/a HTTP/1.1\r\nHost: {H}\r\nContent-Length: {N}\r\nContent-Length: {N}\r\n\r\n{S}" },
  { "a Content-Length list",
    "POST http://{H}/a HTTP/1.1\r\nHost: {H}\r\nContent-Length: {N}, {N}\r\n\r\n{S}" },
  { "a signed Content-Length",
    "POST http://{H}/a HTTP/1.1\r\nHost: {H}\r\nContent-Length: +{N}\r\n\r\n{S}" },
  { "Transfer-Encoding on HTTP/1.0",
    "POST http://{H}/a HTTP/1.0\r\nHost: {H}\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n{S}" },
  { "Transfer-Encoding with chunked not last",
    "POST http://{H}/a HTTP/1.1\r\nHost: {H}\r\nTransfer-Encoding: chunked, identity\r\n\r\n{S}" },
  { "Transfer-Encoding without chunked",
    "POST http://{H}/a HTTP/1.1\r\nHost: {H}\r\nTransfer-Encoding: xchunked\r\n\r\n{S}" },
  { "Transfer-Encoding twice",
    "POST http://{H}/a HTTP/1.1\r\nHost: {H}\r\nTransfer-Encoding: chunked\r\n" ..
    "Transfer-Encoding: chunked\r\n\r\n0\r\n\r\n{S}" },
  { "chunked applied twice",
    "POST http://{H}/a HTTP/1.1\r\nHost: {H}\r\nTransfer-Encoding: chunked, chunked\r\n\r\n" ..
    "0\r\n\r\n{S}" },
  { "two Host fields",
    "GET http://{H}/a HTTP/1.1\r\nHost: {H}\r\nHost: other\r\n\r\n" },
  { "a request line with two spaces",
    "GET  http://{H}/a HTTP/1.1\r\nHost: {H}\r\n\r\n" },
  { "a space inside the request target",
    "GET http://{H}/a HTTP/1.1 /smuggled HTTP/1.1\r\nHost: {H}\r\n\r\n" },
}

-- Chunked request bodies: the head is fine, the framing is not.
M.CHUNKED = "POST http://{H}/a HTTP/1.1\r\nHost: {H}\r\nTransfer-Encoding: chunked\r\n\r\n"
M.BODIES = {
  { "chunk data followed by two bytes other than CRLF", "5\r\nhelloXX0\r\n\r\n{S}" },
  { "chunk data followed by a bare LF", "5\r\nhello\n0\r\n\r\n{S}" },
  { "a bare LF inside a chunk extension", "5;a\nb\r\nhello\r\n0\r\n\r\n{S}" },
  { "a bare CR inside a chunk extension", "5;a\rb\r\nhello\r\n0\r\n\r\n{S}" },
  { "a bare LF ending a chunk-size line", "5\nhello\r\n0\r\n\r\n{S}" },
  { "a bare CR inside a chunk-size line", "5\rX\r\nhello\r\n0\r\n\r\n{S}" },
  { "a chunk size over 64 bits", "10000000000000005\r\nhello\r\n0\r\n\r\n{S}" },
  { "a chunk size with a 0x prefix", "0x5\r\nhello\r\n0\r\n\r\n{S}" },
  { "a negative chunk size", "-5\r\nhello\r\n0\r\n\r\n{S}" },
  { "an empty chunk size", "\r\nhello\r\n0\r\n\r\n{S}" },
  { "whitespace after a chunk size without an extension", "5 \r\nhello\r\n0\r\n\r\n{S}" },
  { "a trailer field with a bare LF", "0\r\nX-T: a\nX: b\r\n\r\n{S}" },
  { "a trailer field with whitespace before the colon", "0\r\nX-T : a\r\n\r\n{S}" },
  { "an obs-folded trailer field", "0\r\nX-T: a\r\n b\r\n\r\n{S}" },
}

-- A shape's text with its placeholders filled for origin host:port h.
function M.fill(text, h)
  return (text:gsub("{H}", h):gsub("{N}", tostring(#M.SMUG)):gsub("{S}", M.SMUG))
end

return M
