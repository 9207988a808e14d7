/* errors.c - the one table of client-facing failures and their codes. */
#include "errors.h"

/* Codes: 1xxx the client's fault, 2xxx policy, 3xxx upstream trouble. */
static const struct ferr_info table[FERR_COUNT] = {
    [FERR_BAD_REQUEST]        = { "FERRY-1001", 400, "Bad Request", "malformed request" },
    [FERR_NOT_ABSOLUTE]       = { "FERRY-1002", 400, "Bad Request",
                                  "a proxy request needs an absolute URL or CONNECT" },
    [FERR_BAD_SCHEME]         = { "FERRY-1003", 400, "Bad Request",
                                  "only http:// URLs can be proxied in absolute form; use CONNECT for https" },
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
    [FERR_SOCKS4_NO_IPV4]     = { "FERRY-3050", 502, "Bad Gateway",
                                  "the destination has no IPv4 address, which a SOCKS4 proxy "
                                  "needs (use socks4a:// or socks5://)" },
};

const struct ferr_info *ferr_info(enum ferr e)
{
    if ((unsigned)e >= FERR_COUNT) {
        e = FERR_BAD_REQUEST;
    }
    return &table[e];
}
