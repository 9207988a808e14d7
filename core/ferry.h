/*
 * ferry.h - the one FFI surface between the C core and the Lua runtime.
 *
 * Everything declared here is exported from bin/ferry (linked with
 * -rdynamic) and mirrored, declaration for declaration, by
 * lua/ferry/cdef.lua.  Keep the two in step: spec/core checks them.
 *
 * Conventions (after lua-resty-core): functions take a handle and
 * scalars, return FERRY_OK / FERRY_ERROR, and report a reason through
 * `const char **err`.  Lua never frees what C returns.
 */
#ifndef FERRY_H
#define FERRY_H

#include <stdint.h>

#define FERRY_OK     0
#define FERRY_ERROR -1

/* Upstream kinds a proxy can be. */
enum ferry_scheme {
    FERRY_SCHEME_DIRECT = 0, /* no proxy: the pseudo-pool "direct" */
    FERRY_SCHEME_HTTP   = 1, /* HTTP proxy: absolute form and CONNECT */
    FERRY_SCHEME_SOCKS5 = 2  /* SOCKS5 proxy, destination sent as a name */
};

/* Why an attempt through a proxy failed; indexes ferry_proxy.fail_kind. */
enum ferry_fail_kind {
    FERRY_FAIL_REFUSED   = 0, /* TCP connect refused or unreachable */
    FERRY_FAIL_TIMEOUT   = 1, /* connect, handshake or first byte timed out */
    FERRY_FAIL_HANDSHAKE = 2, /* CONNECT / SOCKS5 answer was a refusal or garbage */
    FERRY_FAIL_AUTH      = 3, /* the proxy rejected our credentials */
    FERRY_FAIL_HTTP5XX   = 4, /* the response through the proxy was a 5xx */
    FERRY_FAIL_RESET     = 5, /* the proxy closed or reset mid-exchange */
    FERRY_FAIL_KINDS     = 6
};

/* Bits of ferry_proxy.flags. */
#define FERRY_PROXY_DOWN     0x1u /* marked down by health (issue 3) */
#define FERRY_PROXY_DISABLED 0x2u /* disabled by an operator */
#define FERRY_PROXY_REMOVED  0x4u /* gone from the config: takes no new work */

/*
 * Live state of one upstream proxy.  Owned by C, survives reloads,
 * read by Lua strategies without copying.  Lua must treat every field
 * as read-only and change state only through the functions below.
 */
struct ferry_proxy {
    uint32_t id;              /* ro: stable, 1-based, never reused */
    uint32_t flags;           /* ro: FERRY_PROXY_* bits */
    int32_t  active;          /* ro: attempts and connections using it now */
    uint32_t weight;          /* ro: for weighted strategies, >= 1 */
    uint32_t consecutive_failures; /* ro: reset by a success */
    uint32_t scheme;          /* ro: enum ferry_scheme */
    uint64_t requests;        /* ro: attempts started through it */
    uint64_t successes;       /* ro: attempts that ended well */
    uint64_t failures;        /* ro: attempts that failed, all kinds */
    uint64_t fail_kind[FERRY_FAIL_KINDS]; /* ro: failures by kind */
    double   latency_ewma_ms; /* ro: connect+handshake time, EWMA; 0 = no sample */
    double   last_failure_at; /* ro: ferry_now() of the last failure, 0 = never */
    double   last_success_at; /* ro: ferry_now() of the last success, 0 = never */
};

/*
 * One request being routed, handed to Lua as a pointer for the length
 * of a dispatch call.  Strings are not NUL-terminated: use the _len.
 */
struct ferry_req {
    const char *host;        /* ro: destination host */
    uint32_t    host_len;
    uint32_t    port;        /* ro: destination port */
    const char *method;      /* ro: request method ("CONNECT" for tunnels) */
    uint32_t    method_len;
    const char *path;        /* ro: path and query ("" for CONNECT) */
    uint32_t    path_len;
    const char *client;      /* ro: client address, text */
    uint32_t    client_len;
    const char *user;        /* ro: inbound proxy user, or NULL */
    uint32_t    user_len;
    const char *listener;    /* ro: listener name */
    uint32_t    listener_len;
    uint32_t    is_connect;  /* ro: 1 for CONNECT tunnels */
    uint32_t    attempt;     /* ro: 0 on the first try, 1.. on retries */
    uint32_t    ntried;      /* ro: how many ids are in tried[] */
    uint32_t    tried[8];    /* ro: proxies already tried for this request */
    /* written by Lua for the core: */
    int32_t     pool;        /* rw: pool index chosen (0 = direct) */
    int32_t     retries;     /* rw: retries allowed for this request */
    int32_t     connect_timeout_ms;    /* rw: 0 = global default */
    int32_t     first_byte_timeout_ms; /* rw: 0 = global default */
};

/* The loop's idea of "now", in seconds (ev_now). */
double ferry_now(void);

/*
 * Create a proxy, or find the existing one with the same key (so a
 * reload keeps its state).  `key` identifies it across reloads (the
 * URL or the configured id).  Returns NULL and sets *err on failure.
 */
struct ferry_proxy *ferry_proxy_new(const char *key, int scheme,
                                    const char *host, int port,
                                    const char *user, const char *pass,
                                    const char *extra_headers,
                                    int weight, const char **err);
struct ferry_proxy *ferry_proxy_get(uint32_t id);
int ferry_proxy_set_flag(struct ferry_proxy *p, uint32_t flag, int on);
/* Proxies known to the core, ids 1..ferry_proxy_count(). */
uint32_t ferry_proxy_count(void);

/* Open a listener.  protocol: "http".  Returns an index >= 0 or -1. */
int ferry_listen(const char *name, const char *host, int port,
                 const char *protocol, int open, const char **err);
/* Add an inbound credential ("user:pass", Basic) to a listener. */
int ferry_listener_add_user(int listener, const char *user,
                            const char *pass, const char **err);

/* Global timeouts in milliseconds; 0 leaves a value unchanged. */
void ferry_set_timeouts(int client_head_ms, int connect_ms,
                        int first_byte_ms, int idle_ms,
                        int keepalive_ms, int request_ms);
/* Log level: 0 debug, 1 info, 2 warn, 3 error; access log on/off. */
void ferry_set_log(int level, int access);
/* Write one coded event line to the log (level as above). */
void ferry_log(int level, const char *code, const char *msg);
/* Count a Lua hook error (strategy, route) for metrics. */
void ferry_count_hook_error(int kind);

#endif
