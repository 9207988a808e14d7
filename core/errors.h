/* errors.h - every failure ferry reports to a client has a name here. */
#ifndef FERRY_ERRORS_H
#define FERRY_ERRORS_H

#include <stddef.h>

/* Indexes into the error table (errors.c); docs/errors.md lists them. */
enum ferr {
    FERR_BAD_REQUEST = 0,  /* malformed request line or headers */
    FERR_NOT_ABSOLUTE,     /* a forward proxy needs absolute-form or CONNECT */
    FERR_BAD_SCHEME,       /* absolute-form URL that is not http:// */
    FERR_HEAD_TOO_LARGE,   /* request head over the limit */
    FERR_TOO_MANY_HEADERS, /* more header fields than allowed */
    FERR_HEAD_TIMEOUT,     /* the client did not finish its head in time */
    FERR_AUTH_REQUIRED,    /* inbound Proxy-Authorization missing or wrong */
    FERR_DENIED,           /* refused by policy (route returned "deny") */
    FERR_NO_PROXY,         /* the pool has no proxy that can be used */
    FERR_ROUTE_ERROR,      /* route() failed or named an unknown pool */
    FERR_CONNECT_FAILED,   /* every attempt to reach the upstream failed */
    FERR_HANDSHAKE_FAILED, /* the proxy refused or garbled CONNECT / SOCKS5 */
    FERR_UPSTREAM_AUTH,    /* the upstream proxy rejected our credentials */
    FERR_RESOLVE_FAILED,   /* DNS lookup of the destination failed */
    FERR_UPSTREAM_RESET,   /* the upstream closed before a complete response */
    FERR_BAD_RESPONSE,     /* the upstream answered something that is not HTTP */
    FERR_CONNECT_TIMEOUT,  /* connect or handshake timed out on every attempt */
    FERR_FIRST_BYTE_TIMEOUT, /* the upstream did not answer in time */
    FERR_OVERLOADED,       /* a connection limit was hit */
    FERR_ALL_DOWN,         /* nothing healthy in the pool and all_down = "fail" */
    FERR_BAD_FRAMING,      /* Content-Length / Transfer-Encoding ambiguous or invalid */
    FERR_BAD_CHUNK,        /* malformed chunked request body */
    FERR_AUTH_THROTTLED,   /* the client address failed inbound auth too often (authfail.c) */
    FERR_NOT_HTTP,         /* the first bytes cannot start an HTTP request line */
    FERR_BODY_TIMEOUT,     /* the client stopped sending its request body */
    FERR_UPSTREAM_STALLED, /* the upstream stopped reading the request body */
    FERR_TARGET_REFUSED,   /* the upstream proxy could not reach the destination */
    FERR_RESPONSE_TOO_LARGE, /* the origin's response head is over the limit */
    FERR_QUEUE_FULL,       /* the upstream's connection queue is full (uppool.c) */
    FERR_QUEUE_TIMEOUT,    /* no upstream connection slot came in queue_timeout */
    FERR_SOCKS_VERSION,    /* a SOCKS listener got another version byte (HTTP?) */
    FERR_SOCKS_NO_METHOD,  /* no SOCKS5 auth method both sides accept */
    FERR_SOCKS_COMMAND,    /* a SOCKS command other than CONNECT (BIND, UDP ASSOCIATE) */
    FERR_SOCKS_ATYP,       /* a SOCKS5 address type that is not IPv4, IPv6 or a name */
    FERR_SOCKS_MALFORMED,  /* a SOCKS message with a bad field (empty name, port 0) */
    FERR_SOCKS4_USERS,     /* SOCKS4 on a listener with users: it has no password */
    FERR_UPSTREAM_TLS,     /* TLS to an https:// proxy failed (certificate, protocol) */
    FERR_TLS_PLAIN_HTTP,   /* plain HTTP sent to a TLS listener */
    FERR_SOCKS4_NO_IPV4,   /* a SOCKS4 proxy cannot reach a destination without IPv4 */
    /* Interception (intercept.c). */
    FERR_MITM_MISDIRECTED, /* a request inside names another host than its CONNECT */
    FERR_MITM_PLAIN_HTTP,  /* plain HTTP where TLS was due after an intercepted CONNECT */
    FERR_MITM_EARLY,       /* bytes sent before the answer to an intercepted CONNECT */
    FERR_MITM_TARGET,      /* a request target inside that is not origin-form or https */
    FERR_RATE_LIMITED,     /* no proxy has rate budget and the exchange's queue is full or 0 */
    FERR_RATE_TIMEOUT,     /* no rate budget came within the exchange's queue_timeout */
    /* TLS origination (origin_tls.c) */
    FERR_ORIGIN_VERIFY,    /* the origin's certificate did not verify */
    FERR_ORIGIN_TLS,       /* the TLS handshake with the origin failed */
    /* Control headers and user name parameters (ctl.c, part 6 of HTTPS). */
    FERR_CTL_BAD,          /* an X-Ferry-Region/-Rotate/-Pool value (or user parameter) is invalid */
    FERR_POOL_UNKNOWN,     /* X-Ferry-Pool names no configured pool */
    FERR_POOL_REFUSED,     /* X-Ferry-Pool on a listener that does not allow that pool */
    FERR_NO_REGION,        /* no proxy of the X-Ferry-Region region where the request goes */
    FERR_BAN_EXHAUSTED,    /* retry on ban: every proxy was banned, no answer was kept */
    FERR_RETRY_STATUS,     /* every member answered a status the pool retries; none was kept */
    /* The HTTP cache (conn_cache.c). */
    FERR_CACHE_ONLY_IF_CACHED, /* only-if-cached and nothing stored may answer */
    /* Reverse listeners (conn_reverse.c). */
    FERR_REV_NO_SITE,      /* no route and no listener pool for this Host: 404 */
    FERR_REV_CONNECT,      /* CONNECT on a reverse listener */
    FERR_REV_TARGET,       /* a target that is not origin-form, absolute http(s) or OPTIONS * */
    FERR_REV_HOST,         /* Host missing (HTTP/1.1) or not a host[:port] */
    FERR_REV_NOT_BACKENDS, /* the route chose "direct" or a pool of proxies */
    FERR_REV_NO_BACKEND,   /* the backend pool has nothing usable */
    FERR_REV_ALL_DOWN,     /* no healthy backend and all_down = "fail" */
    FERR_REV_TLS,          /* TLS with the backend failed (certificate, protocol) */
    FERR_COUNT
};

struct ferr_info {
    const char *code;    /* FERRY-xxxx */
    int status;          /* HTTP status sent to the client */
    const char *reason;  /* status reason phrase */
    const char *message; /* one sentence for humans */
};

const struct ferr_info *ferr_info(enum ferr e);

/* Room for any error body ferr_body writes from a table message. */
#define FERR_BODY_MAX 512

/* The one JSON body of an error answer, client or admin:
 * {"error":code,"message":message,"request_id":cid} and a newline
 * (no request_id when cid is NULL), strings escaped.  Writes at most
 * cap - 1 bytes and a NUL; returns the body's length, so that
 * Content-Length is always that number. */
size_t ferr_body(char *dst, size_t cap, const char *code, const char *message, const char *cid);

/* Room for any answer ferr_answer writes. */
#define FERR_ANSWER_MAX (FERR_BODY_MAX + 256)

/* A whole error answer that closes the connection (status line,
 * X-Ferry-Error, Content-Type, Content-Length, Connection: close, then
 * ferr_body), for a socket with no request to answer on (refused at
 * accept, plain HTTP to a TLS port).  Returns its length, or 0 when it
 * does not fit in cap. */
size_t ferr_answer(char *dst, size_t cap, const struct ferr_info *info, const char *cid);

#endif
