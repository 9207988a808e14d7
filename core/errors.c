/* errors.c - the one table of client-facing failures and their codes.
 * docs/errors.md lists every code (these and the log-only ones);
 * spec/unit/error_codes_spec.lua keeps the sources and that page in step. */
#include "errors.h"

#include <stdio.h>

/* Codes: 1xxx the client's fault, 2xxx policy, 3xxx upstream trouble. */
static const struct ferr_info table[FERR_COUNT] = {
    [FERR_BAD_REQUEST]        = { "FERRY-1001", 400, "Bad Request", "malformed request" },
    [FERR_NOT_ABSOLUTE]       = { "FERRY-1002", 400, "Bad Request",
                                  "a proxy request needs an absolute URL or CONNECT" },
    [FERR_BAD_SCHEME]         = { "FERRY-1003", 400, "Bad Request",
                                  "only http:// and https:// URLs can be proxied in absolute form" },
    [FERR_HEAD_TOO_LARGE]     = { "FERRY-1004", 431, "Request Header Fields Too Large",
                                  "request head too large" },
    [FERR_TOO_MANY_HEADERS]   = { "FERRY-1005", 431, "Request Header Fields Too Large",
                                  "too many header fields" },
    [FERR_HEAD_TIMEOUT]       = { "FERRY-1006", 408, "Request Timeout",
                                  "request head not received in time" },
    [FERR_AUTH_REQUIRED]      = { "FERRY-1007", 407, "Proxy Authentication Required",
                                  "proxy authentication required" },
    [FERR_DENIED]             = { "FERRY-2001", 403, "Forbidden", "request denied by policy" },
    [FERR_NO_PROXY]           = { "FERRY-2002", 503, "Service Unavailable",
                                  "no proxy available in the pool" },
    [FERR_ROUTE_ERROR]        = { "FERRY-2003", 503, "Service Unavailable",
                                  "routing failed" },
    [FERR_CONNECT_FAILED]     = { "FERRY-3001", 502, "Bad Gateway", "could not connect upstream" },
    [FERR_HANDSHAKE_FAILED]   = { "FERRY-3002", 502, "Bad Gateway",
                                  "upstream proxy refused the tunnel" },
    [FERR_UPSTREAM_AUTH]      = { "FERRY-3003", 502, "Bad Gateway",
                                  "upstream proxy rejected our credentials" },
    [FERR_RESOLVE_FAILED]     = { "FERRY-3004", 502, "Bad Gateway",
                                  "could not resolve the destination" },
    [FERR_UPSTREAM_RESET]     = { "FERRY-3005", 502, "Bad Gateway",
                                  "upstream closed the connection early" },
    [FERR_BAD_RESPONSE]       = { "FERRY-3006", 502, "Bad Gateway",
                                  "upstream sent an invalid response" },
    [FERR_CONNECT_TIMEOUT]    = { "FERRY-3007", 504, "Gateway Timeout",
                                  "upstream connect timed out" },
    [FERR_FIRST_BYTE_TIMEOUT] = { "FERRY-3008", 504, "Gateway Timeout",
                                  "upstream did not answer in time" },
    [FERR_OVERLOADED]         = { "FERRY-2004", 503, "Service Unavailable",
                                  "connection limit reached" },
    [FERR_ALL_DOWN]           = { "FERRY-2005", 503, "Service Unavailable",
                                  "no healthy proxy in the pool (all down, banned or open)" },
    [FERR_BAD_FRAMING]        = { "FERRY-1020", 400, "Bad Request",
                                  "ambiguous or invalid message framing (Content-Length, Transfer-Encoding)" },
    [FERR_BAD_CHUNK]          = { "FERRY-1021", 400, "Bad Request",
                                  "malformed chunked request body" },
    [FERR_AUTH_THROTTLED]     = { "FERRY-1040", 429, "Too Many Requests",
                                  "too many failed proxy authentications from this address; "
                                  "try again later" },
    [FERR_NOT_HTTP]           = { "FERRY-1010", 400, "Bad Request",
                                  "not an HTTP request (another protocol on an HTTP listener?)" },
    [FERR_BODY_TIMEOUT]       = { "FERRY-1011", 408, "Request Timeout",
                                  "request body stalled" },
    [FERR_UPSTREAM_STALLED]   = { "FERRY-3010", 504, "Gateway Timeout",
                                  "upstream stopped reading the request body" },
    [FERR_TARGET_REFUSED]     = { "FERRY-3030", 502, "Bad Gateway",
                                  "the upstream proxy could not reach the destination "
                                  "(refused, unreachable or timed out there)" },
    [FERR_RESPONSE_TOO_LARGE] = { "FERRY-3031", 502, "Bad Gateway",
                                  "the origin's response head is too large "
                                  "(over 16 KiB or 100 fields)" },
    [FERR_BAN_EXHAUSTED]      = { "FERRY-6033", 502, "Bad Gateway",
                                  "the exchange banned every proxy this request was tried on" },
    [FERR_RETRY_STATUS]       = { "FERRY-3133", 502, "Bad Gateway",
                                  "every member of the pool tried answered a status the pool "
                                  "retries on, and the last answer could not be kept" },
    [FERR_CACHE_ONLY_IF_CACHED] = { "FERRY-3140", 504, "Gateway Timeout",
                                  "only-if-cached: the cache holds no response it may send" },
    [FERR_QUEUE_FULL]         = { "FERRY-3060", 503, "Service Unavailable",
                                  "the upstream has all its connections busy and its queue is full" },
    [FERR_QUEUE_TIMEOUT]      = { "FERRY-3061", 503, "Service Unavailable",
                                  "no upstream connection became free within queue_timeout" },
    [FERR_SOCKS_VERSION]      = { "FERRY-1050", 400, "Bad Request",
                                  "not a SOCKS request (an HTTP client on a SOCKS listener?)" },
    [FERR_SOCKS_NO_METHOD]    = { "FERRY-1051", 407, "Proxy Authentication Required",
                                  "no acceptable SOCKS5 authentication method "
                                  "(this listener wants username/password)" },
    [FERR_SOCKS_COMMAND]      = { "FERRY-1052", 400, "Bad Request",
                                  "SOCKS command not supported (only CONNECT)" },
    [FERR_SOCKS_ATYP]         = { "FERRY-1053", 400, "Bad Request",
                                  "SOCKS address type not supported" },
    [FERR_SOCKS_MALFORMED]    = { "FERRY-1054", 400, "Bad Request",
                                  "malformed SOCKS message (empty or invalid name, port 0)" },
    [FERR_SOCKS4_USERS]       = { "FERRY-1055", 407, "Proxy Authentication Required",
                                  "SOCKS4 cannot authenticate and this listener has users; "
                                  "use SOCKS5 with username/password" },
    [FERR_UPSTREAM_TLS]       = { "FERRY-3040", 502, "Bad Gateway",
                                  "TLS with the upstream proxy failed "
                                  "(certificate or protocol; see the log)" },
    [FERR_TLS_PLAIN_HTTP]     = { "FERRY-1071", 400, "Bad Request",
                                  "this listener speaks TLS: use an https:// proxy URL" },
    [FERR_SOCKS4_NO_IPV4]     = { "FERRY-3050", 502, "Bad Gateway",
                                  "the destination has no IPv4 address, which a SOCKS4 proxy "
                                  "needs (use socks4a:// or socks5://)" },
    [FERR_MITM_MISDIRECTED]   = { "FERRY-1085", 421, "Misdirected Request",
                                  "the request names another host than the CONNECT it came "
                                  "through (Host header or target)" },
    [FERR_MITM_PLAIN_HTTP]    = { "FERRY-1086", 400, "Bad Request",
                                  "this tunnel is intercepted: ferry expects TLS after the 200 "
                                  "(use https:// through the proxy)" },
    [FERR_MITM_EARLY]         = { "FERRY-1087", 400, "Bad Request",
                                  "bytes arrived before the answer to an intercepted CONNECT" },
    [FERR_MITM_TARGET]        = { "FERRY-1088", 400, "Bad Request",
                                  "inside an intercepted tunnel a request needs an origin-form "
                                  "target (/path) or https:// to the same host" },
    [FERR_RATE_LIMITED]       = { "FERRY-2010", 429, "Too Many Requests",
                                  "no proxy has rate budget left for this exchange and its "
                                  "wait queue is full (see Retry-After)" },
    [FERR_RATE_TIMEOUT]       = { "FERRY-2011", 429, "Too Many Requests",
                                  "no rate budget for this exchange came within its "
                                  "queue_timeout (see Retry-After)" },
    [FERR_ORIGIN_VERIFY]      = { "FERRY-3042", 502, "Bad Gateway",
                                  "the origin's TLS certificate did not verify (see the log)" },
    [FERR_ORIGIN_TLS]         = { "FERRY-3043", 502, "Bad Gateway",
                                  "the TLS handshake with the origin failed (see the log)" },

    [FERR_REV_NO_SITE]        = { "FERRY-1100", 404, "Not Found",
                                  "no site is configured for this host" },
    [FERR_REV_CONNECT]        = { "FERRY-1101", 405, "Method Not Allowed",
                                  "CONNECT is not served here (this is a reverse proxy)" },
    [FERR_REV_TARGET]         = { "FERRY-1102", 400, "Bad Request",
                                  "the request target must be a path (origin form), an "
                                  "http(s):// URL or * for OPTIONS" },
    [FERR_REV_HOST]           = { "FERRY-1103", 400, "Bad Request",
                                  "missing or invalid Host header" },
    [FERR_REV_NOT_BACKENDS]   = { "FERRY-3100", 502, "Bad Gateway",
                                  "the route chose a pool without backends (see the log)" },
    [FERR_REV_NO_BACKEND]     = { "FERRY-3101", 503, "Service Unavailable",
                                  "no backend available" },
    [FERR_REV_ALL_DOWN]       = { "FERRY-3102", 503, "Service Unavailable",
                                  "no healthy backend (all down or circuits open)" },
    [FERR_REV_TLS]            = { "FERRY-3103", 502, "Bad Gateway",
                                  "TLS with the backend failed (certificate or protocol; "
                                  "see the log)" },
    [FERR_CTL_BAD]            = { "FERRY-1060", 400, "Bad Request",
                                  "invalid control header or user name parameter "
                                  "(X-Ferry-Region, X-Ferry-Rotate, X-Ferry-Pool)" },
    [FERR_POOL_UNKNOWN]       = { "FERRY-1061", 400, "Bad Request",
                                  "X-Ferry-Pool names no configured pool" },
    [FERR_POOL_REFUSED]       = { "FERRY-2020", 403, "Forbidden",
                                  "X-Ferry-Pool is not allowed on this listener for that pool" },
    [FERR_NO_REGION]          = { "FERRY-2021", 503, "Service Unavailable",
                                  "no proxy of the requested region (X-Ferry-Region) "
                                  "where the request goes" },
};

const struct ferr_info *ferr_info(enum ferr e)
{
    if ((unsigned)e >= FERR_COUNT) {
        e = FERR_BAD_REQUEST;
    }
    return &table[e];
}

/* A JSON string of s, quotes included, at dst[at..]; returns the new end.
 * Stops short of cap - 1 and keeps whole escapes. */
static size_t json_string(char *dst, size_t cap, size_t at, const char *s)
{
    char esc[8];
    if (at + 1 < cap) {
        dst[at++] = '"';
    }
    for (; *s != '\0'; s++) {
        unsigned char ch = (unsigned char)*s;
        size_t n;
        if (ch == '"' || ch == '\\') {
            esc[0] = '\\';
            esc[1] = (char)ch;
            n = 2;
        } else if (ch < 0x20) {
            n = (size_t)snprintf(esc, sizeof(esc), "\\u%04x", ch);
        } else {
            esc[0] = (char)ch;
            n = 1;
        }
        if (at + n + 1 >= cap) {
            break;
        }
        for (size_t i = 0; i < n; i++) {
            dst[at++] = esc[i];
        }
    }
    if (at + 1 < cap) {
        dst[at++] = '"';
    }
    return at;
}

static size_t put(char *dst, size_t cap, size_t at, const char *s)
{
    for (; *s != '\0' && at + 1 < cap; s++) {
        dst[at++] = *s;
    }
    return at;
}

size_t ferr_body(char *dst, size_t cap, const char *code, const char *message, const char *cid)
{
    if (cap == 0) {
        return 0;
    }
    size_t at = put(dst, cap, 0, "{\"error\":");
    at = json_string(dst, cap, at, code);
    at = put(dst, cap, at, ",\"message\":");
    at = json_string(dst, cap, at, message);
    if (cid != NULL) {
        at = put(dst, cap, at, ",\"request_id\":");
        at = json_string(dst, cap, at, cid);
    }
    at = put(dst, cap, at, "}\n");
    dst[at] = '\0';
    return at;
}

size_t ferr_answer(char *dst, size_t cap, const struct ferr_info *info, const char *cid)
{
    char body[FERR_BODY_MAX];
    size_t bl = ferr_body(body, sizeof(body), info->code, info->message, cid);
    int n = snprintf(dst, cap,
                     "HTTP/1.1 %d %s\r\nX-Ferry-Error: %s\r\nContent-Type: application/json\r\n"
                     "Content-Length: %zu\r\nConnection: close\r\n\r\n%s",
                     info->status, info->reason, info->code, bl, body);
    return n > 0 && (size_t)n < cap ? (size_t)n : 0;
}
