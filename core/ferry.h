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

#include <stddef.h>
#include <stdint.h>

/* Every constant below is an enum, so that the cdef declares it too and
 * Lua reads it from there (ffi.C.FERRY_OK) instead of repeating numbers. */

/* What the functions below return. */
enum ferry_rc { FERRY_OK = 0, FERRY_ERROR = -1 };

/* Levels of ferry_set_log and ferry_log (log.h's LOG_* are these). */
enum ferry_log_level {
    FERRY_LOG_DEBUG = 0,
    FERRY_LOG_INFO  = 1,
    FERRY_LOG_WARN  = 2,
    FERRY_LOG_ERROR = 3
};

/* What ferry_count_hook_error counts: the labels of ferry_hook_errors_total. */
enum ferry_hook_kind {
    FERRY_HOOK_RUNTIME  = 0, /* the runtime itself (counted by the core) */
    FERRY_HOOK_ROUTE    = 1, /* route() */
    FERRY_HOOK_STRATEGY = 2, /* a strategy plugin */
    FERRY_HOOK_BREAKER  = 3, /* a breaker plugin */
    FERRY_HOOK_EXCHANGE = 4  /* an exchange's hooks */
};

/* Retries one request may have after its first try: a pool's `retries`
 * is 0..FERRY_RETRIES_MAX (config.lua reads the bound from the cdef), so
 * a request makes at most FERRY_RETRIES_MAX + 1 attempts. */
enum { FERRY_RETRIES_MAX = 8 };

/* The runtime's answer to a dispatch: a proxy id, 0 for direct, or one
 * of these. */
enum ferry_dispatch {
    FERRY_DISPATCH_NO_PROXY    = -1, /* the pool has nothing usable */
    FERRY_DISPATCH_ROUTE_ERROR = -2, /* route failed or named nothing known */
    FERRY_DISPATCH_DENY        = -3, /* policy said no */
    FERRY_DISPATCH_ALL_DOWN    = -4, /* nothing healthy and the pool's all_down is "fail" */
    FERRY_DISPATCH_RATE        = -5, /* rate budgets: no proxy has tokens now (ferry_req.rate_wait) */
    /* Control headers (ctl.c): numbered apart, other answers come before. */
    FERRY_DISPATCH_POOL_REFUSED = -20, /* X-Ferry-Pool not allowed on the listener */
    FERRY_DISPATCH_POOL_UNKNOWN = -21, /* X-Ferry-Pool names no pool */
    FERRY_DISPATCH_NO_REGION    = -22, /* no proxy of the X-Ferry-Region region */
    /* Reverse listeners (conn_reverse.c). */
    FERRY_DISPATCH_NO_SITE      = -30, /* no route and no listener pool for this Host: 404 */
    FERRY_DISPATCH_NOT_BACKENDS = -31  /* the route chose "direct" or a pool of proxies */
};

/* Upstream kinds a proxy can be. */
enum ferry_scheme {
    FERRY_SCHEME_DIRECT = 0, /* no proxy: the pseudo-pool "direct" */
    FERRY_SCHEME_HTTP   = 1, /* HTTP proxy: absolute form and CONNECT */
    FERRY_SCHEME_SOCKS5 = 2, /* SOCKS5 proxy, destination sent as a name */
    FERRY_SCHEME_HTTPS  = 3, /* HTTP proxy spoken over TLS */
    FERRY_SCHEME_SOCKS4 = 4, /* SOCKS4 proxy: ferry resolves, sends an IPv4 address */
    FERRY_SCHEME_SOCKS4A = 5, /* SOCKS4a proxy: destination sent as a name */
    /* Reverse proxy (conn_reverse.c): a backend of a pool { backends = ... },
     * reached at its own address, requests in origin form. */
    FERRY_SCHEME_BACKEND = 6,     /* http:// backend */
    FERRY_SCHEME_BACKEND_TLS = 7, /* https:// backend: TLS to it, verified */
    FERRY_SCHEMES       = 8
};

/* Why an attempt through a proxy failed; indexes ferry_proxy.fail_kind. */
enum ferry_fail_kind {
    FERRY_FAIL_REFUSED   = 0, /* TCP connect refused or unreachable */
    FERRY_FAIL_TIMEOUT   = 1, /* connect, handshake or first byte timed out */
    FERRY_FAIL_HANDSHAKE = 2, /* CONNECT / SOCKS5 answer was a refusal or garbage */
    FERRY_FAIL_AUTH      = 3, /* the proxy rejected our credentials */
    FERRY_FAIL_HTTP5XX   = 4, /* the response through the proxy was a 5xx */
    FERRY_FAIL_RESET     = 5, /* the proxy closed or reset mid-exchange */
    FERRY_FAIL_TLS       = 6, /* TLS to an https:// proxy failed (certificate, protocol) */
    FERRY_FAIL_KINDS     = 7
};

/* Bits of ferry_proxy.flags. */
enum ferry_proxy_flag {
    FERRY_PROXY_DOWN     = 0x1, /* marked down by health: probes or passive */
    FERRY_PROXY_DISABLED = 0x2, /* disabled by an operator */
    FERRY_PROXY_REMOVED  = 0x4  /* gone from the config: takes no new work */
};

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
    /* Health (health.c, probe.c).  Up/down follows a counter in
     * 0..rise+fall-1 with hysteresis: up at >= rise, down at 0. */
    uint32_t health;          /* ro: the hysteresis counter */
    uint32_t rise;            /* ro: successes that bring a down proxy up */
    uint32_t fall;            /* ro: failures that take an up proxy down */
    uint32_t probe_kind;      /* ro: enum ferry_probe_kind of its pool's health check */
    uint32_t probe_fails;     /* ro: consecutive failed probes (drives the backoff) */
    uint32_t downs;           /* ro: times it went down */
    uint64_t probes_ok;       /* ro: probes that passed */
    uint64_t probes_failed;   /* ro: probes that failed */
    double   probe_latency_ms; /* ro: duration of the last passed probe */
    double   last_probe_at;   /* ro: when the last probe ended, 0 = never */
    double   down_since;      /* ro: when it went down, 0 while up */
    double   retry_at;        /* ro: down without probes: a trial request may go
                               * through after this time (passive recovery) */
    /* Slow start (lua/ferry/pool.lua ramps a pool's share from it). */
    double   up_since;        /* ro: when it last came back (down -> up, re-enabled,
                               * added after start), 0 = up since ferry started */
};

/* Active health checks (probe.c). */
enum ferry_probe_kind {
    FERRY_PROBE_NONE    = 0, /* passive health only */
    FERRY_PROBE_TCP     = 1, /* TCP connect to the proxy itself */
    FERRY_PROBE_HTTP    = 2, /* GET url through the proxy, status in expect */
    FERRY_PROBE_CONNECT = 3  /* tunnel through the proxy (CONNECT / SOCKS5) to target */
};

/* Breaker states of a (proxy, exchange) pair. */
enum ferry_breaker {
    FERRY_BREAKER_CLOSED    = 0, /* traffic flows */
    FERRY_BREAKER_OPEN      = 1, /* never selected until breaker_until */
    FERRY_BREAKER_HALF_OPEN = 2  /* up to trials_max trial requests at a time */
};

/*
 * Health of one proxy for one exchange (exchange 0: traffic that matched
 * no exchange).  Created on first use, never freed or moved, so Lua may
 * keep the pointer.  Bans and breakers live here, so a proxy banned or
 * failing on one exchange stays usable for the others.
 */
struct ferry_pxstate {
    uint32_t proxy_id;        /* ro */
    uint32_t exchange;        /* ro: exchange id, 0 = none */
    uint32_t breaker;         /* ro: enum ferry_breaker */
    uint32_t trials;          /* ro: half-open trials in flight */
    uint32_t trials_max;      /* ro: half-open trials allowed at a time */
    uint32_t opens;           /* ro: opens since the last close (cooldown doubles) */
    uint32_t bans;            /* ro: bans in a row (backoff doubles) */
    uint32_t consecutive_failures; /* ro: reset by a success */
    /* Rate budget of the pair (rate.c): a token bucket refilled at the
     * exchange's limit/per.  Tokens now = rate_tokens + (now - rate_at)
     * * rate, capped; rate_at 0: never used (full); rate_at in the
     * future: empty until then (the exchange's Retry-After).  Next to
     * the breaker: eligibility reads both, from one cache line. */
    double   rate_tokens;     /* ro */
    double   rate_at;         /* ro */
    uint64_t requests;        /* ro: results reported for the pair */
    uint64_t successes;       /* ro */
    uint64_t failures;        /* ro */
    uint64_t bans_total;      /* ro */
    double   breaker_until;   /* ro: open until then */
    double   trial_at;        /* ro: when the last trial was let through */
    double   banned_until;    /* ro: banned until then, 0 = not banned */
    double   last_failure_at; /* ro */
    double   last_success_at; /* ro */
    double   latency_ewma_ms; /* ro: response latency, EWMA */
    double   opened_at;       /* ro: when the breaker last opened (max_ejected's order) */
};

/*
 * The outcome of one attempt through a proxy, handed to Lua (breakers,
 * ban rules, on_response) for the length of one call.
 */
struct ferry_result {
    uint32_t    proxy_id;
    uint32_t    exchange;     /* exchange id, 0 = none */
    int32_t     pool;         /* pool index */
    int32_t     ok;           /* 1: the attempt worked (tunnel up, non-5xx answer) */
    int32_t     kind;         /* enum ferry_fail_kind when !ok, else -1 */
    int32_t     status;       /* HTTP status, 0 when none (tunnel, connect failure) */
    double      latency_ms;   /* attempt start to response head (or tunnel up) */
    const char *head;         /* response head when captured, else NULL */
    uint32_t    head_len;
    const char *body;         /* first bytes of the body when captured, else NULL */
    uint32_t    body_len;
    const char *host;         /* destination host */
    uint32_t    host_len;
    /* written by Lua for the core (retry on ban, conn_banretry.c): */
    int32_t     banned;       /* rw: 1 when this result banned the (proxy, exchange) pair */
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
    uint32_t    tried[FERRY_RETRIES_MAX]; /* ro: proxies already tried for this request */
    /* written by Lua for the core: */
    int32_t     pool;        /* rw: pool index chosen (0 = direct, -1 until chosen) */
    int32_t     retries;     /* rw: retries allowed for this request */
    int32_t     connect_timeout_ms;    /* rw: 0 = global default */
    int32_t     first_byte_timeout_ms; /* rw: 0 = global default */
    const char *session;     /* ro: sticky key (X-Ferry-Session or user -session-KEY), or NULL */
    uint32_t    session_len;
    const char *head;        /* ro: the raw request head */
    uint32_t    head_len;
    uint32_t    exchange;    /* rw: exchange id chosen, 0 = none */
    uint32_t    flags;       /* rw: FERRY_REQ_* */
    const char *add_headers; /* rw: "Name: value\r\n"... to add upstream, or NULL */
    uint32_t    add_headers_len;
    const char *drop_headers; /* rw: "\nname\nname\n" (lower case) to remove, or NULL */
    uint32_t    drop_headers_len;
    double      rate_wait;   /* rw: with FERRY_DISPATCH_RATE, seconds until a token is due */
    /* Control parameters (X-Ferry-* headers or user name parameters, ctl.c). */
    const char *region;      /* ro: proxies of this region only, or NULL */
    uint32_t    region_len;
    const char *pool_header; /* ro: the pool the client asks for, or NULL */
    uint32_t    pool_header_len;
    uint32_t    rotate;      /* ro: 1: re-pin the sticky session now */
    int32_t     ban_retry;   /* rw: tries on other proxies after a ban (the exchange's ban.retry) */
    /* Reverse listeners (FERRY_REQ_REVERSE): */
    int32_t     site_pool;   /* ro: the listener's own pool index, 0 when it has none */
};

/* One request to the admin plane (admin.c), handed to the runtime's
 * admin entry point.  Everything points into the connection's buffer
 * and is valid during that call only. */
struct ferry_admin_req {
    const char *method;      /* ro */
    uint32_t    method_len;
    const char *target;      /* ro: path and query as sent */
    uint32_t    target_len;
    const char *head;        /* ro: the whole request head, for header lookups */
    uint32_t    head_len;
    const char *body;        /* ro: the whole body (bounded), or NULL */
    uint32_t    body_len;
    const char *peer;        /* ro: client address, "unix" on a unix socket */
    const char *listener;    /* ro: listener name */
    const char *cid;         /* ro: correlation id */
    int32_t     unix_socket; /* ro: 1 when it came through the unix socket */
};

/* Bits of ferry_req.flags. */
enum ferry_req_flag {
    FERRY_REQ_CAPTURE = 0x1, /* keep the response head and first body bytes for Lua */
    /* Interception: C sets NO_INTERCEPT before dispatch when this CONNECT
     * cannot be intercepted (a TLS listener, an address, no CA); dispatch
     * sets INTERCEPT for a CONNECT to an exchange with intercept = true. */
    FERRY_REQ_INTERCEPT = 0x100,
    FERRY_REQ_NO_INTERCEPT = 0x200,
    /* In: the request goes to its origin over TLS ferry originates (an
     * https:// target, or inside an intercepted tunnel).  Out: set by
     * the exchange's upgrade_tls for a plain http:// request (its port
     * 80 becomes 443).  Lua reads it as req.scheme. */
    FERRY_REQ_TLS = 0x40,
    /* In: the request came to a reverse listener (origin form, backends
     * only); CLIENT_TLS: over TLS (req.scheme "https"). */
    FERRY_REQ_REVERSE = 0x1000,
    FERRY_REQ_CLIENT_TLS = 0x2000,
    /* Out (performance): a success on a closed breaker needs no result
     * call, as the runtime's result() would do nothing with it (no
     * exchange; the pool's breaker, if any, never opens on a success).
     * C then skips bridge_result for it. */
    FERRY_REQ_QUIET_OK = 0x40000
};

/* The loop's idea of "now", in seconds (ev_now). */
double ferry_now(void);
/* The pointer the runtime entry point being called (dispatch, result,
 * admin) was given, as a typed FFI value: converting the lightuserdata
 * argument with ffi.cast is not compiled by LuaJIT (NYI), which kept
 * each dispatch interpreted. */
void *ferry_bridge_arg(void);

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
/* The name a proxy shows clients (X-Ferry-Proxy) and logs: its configured
 * id, else its number.  Never contains credentials. */
int ferry_proxy_set_label(struct ferry_proxy *p, const char *label);
const char *ferry_proxy_label(const struct ferry_proxy *p);

/* Broker (lua/ferry/broker.lua).  ferry_proxy_url writes the proxy's URL
 * WITH its credentials (percent-encoded) into out: length, or -1 when it
 * does not fit.  Only the broker hands it out, to authenticated callers;
 * it must never be logged.  ferry_proxy_lease adds delta to `active` (a
 * lease is an active use; never below 0).  ferry_proxy_report feeds one
 * result reported from outside the data plane into the same passive
 * health as real traffic: the proxy's counters and up/down, and the
 * (proxy, exchange) pair.  kind: enum ferry_fail_kind when !ok;
 * latency_ms < 0: no sample.  Breakers and bans stay Lua's (runtime). */
int ferry_proxy_url(const struct ferry_proxy *p, char *out, uint32_t room);
int ferry_proxy_lease(uint32_t id, int delta);
int ferry_proxy_report(uint32_t id, uint32_t exchange, int ok, int kind, double latency_ms);

/* Health (health.c).  rise/fall: hysteresis; interval: seconds between
 * passive-recovery trials of a down proxy without probes (backs off x2
 * per failed trial, capped at 16x). */
int ferry_health_set(struct ferry_proxy *p, int rise, int fall, double interval);
/* Force up (1) or down (0), e.g. from the console; reason is logged. */
int ferry_health_mark(struct ferry_proxy *p, int up, const char *reason);
/* Bumped whenever any proxy's flags change (up/down, disabled, removed):
 * Lua recounts what it derives from flags only when this moves. */
uint32_t ferry_health_epoch(void);
/* The first config is applied: from now on a proxy that comes up, is
 * re-enabled or is added starts its slow start (up_since). */
void ferry_health_started(void);

/* Active probes (probe.c).  One probe schedule per proxy, the last call
 * wins; kind FERRY_PROBE_NONE stops probing.  host/port: the target of
 * a connect or http check; path: request target of an http check;
 * expect: accepted statuses ("200,204"; NULL or "" = any 2xx/3xx). */
int ferry_probe_set(struct ferry_proxy *p, int kind, const char *host, int port,
                    const char *path, const char *expect, double interval,
                    double timeout, const char **err);
/* Probes in flight at once, over all proxies (default 64). */
void ferry_probe_set_concurrency(int n);
/* Probes in flight now. */
int ferry_probe_inflight(void);
/* Fleet (lua/ferry/fleet_probes.lua): probing divided among nodes.
 * ferry_probe_duty: whether this node runs p's probes (1, the default)
 * or another node does (0; the schedule keeps its timer, its runs are
 * skipped).  ferry_probe_verdict: up (1) or down (0) right after p's
 * last local probe, -1 none since the duty came here.
 * ferry_probe_shared applies the result of the node that probes p as
 * local probes would: the hysteresis steps until p's up/down agrees
 * (passive health from this node's traffic still applies on top).
 * latency_ms < 0: no sample.  why is logged on a transition. */
int ferry_probe_duty(struct ferry_proxy *p, int here);
int ferry_probe_verdict(const struct ferry_proxy *p);
int ferry_probe_shared(struct ferry_proxy *p, int up, double latency_ms, const char *why);
/* Probe runs started on this node (all proxies), and the proxies with a
 * probe schedule that this node runs now (removed ones not counted). */
uint64_t ferry_probe_runs(void);
uint32_t ferry_probe_duties(void);

/* Upstream connections (uppool.c).  Limits of a pool index (0: direct):
 * connections per upstream (0: no cap), waiting requests, seconds a
 * request waits, idle connections per upstream, seconds one is kept
 * (0: timeouts.upstream_idle), requests per connection (0: no limit).
 * A negative count or a zero time keeps the default. */
int ferry_pool_connections(int pool, int max, int queue, double queue_timeout, int idle,
                           double idle_timeout, int max_requests);
/* Counters and gauges of one proxy (by id) or one pool index. */
struct ferry_conn_stats {
    uint64_t opened;          /* ro: connections opened */
    uint64_t reused;          /* ro: requests sent on a kept connection */
    uint64_t queued;          /* ro: requests that waited for a slot */
    uint64_t queue_timeouts;  /* ro: waits that ran out (FERRY-3061) */
    uint64_t queue_full;      /* ro: requests refused with the queue full (FERRY-3060) */
    uint64_t retired;         /* ro: connections closed after max_requests */
    uint32_t active;          /* ro: connections in use or being opened now */
    uint32_t idle;            /* ro: idle connections kept now */
    uint32_t waiting;         /* ro: requests waiting now */
    uint32_t pad_;
};
int ferry_conn_stats_proxy(uint32_t id, struct ferry_conn_stats *out);
int ferry_conn_stats_pool(int pool, struct ferry_conn_stats *out);
/* Idle connections closed because the global idle cap was reached. */
uint64_t ferry_conn_idle_evicted(void);

/* Retries of a pool index (retry.c): what is retried, the back-off and the
 * retry budget.  on: FERRY_RETRY_ON_* bits; statuses: 100 bytes, 1 where
 * a response of status 500 + i is retried (NULL: none); backoff: seconds
 * before the first retry, doubling up to max_backoff; jitter: enum
 * ferry_retry_jitter; budget: percent of the pool's requests in flight
 * that may be retries at once (< 0: no budget), never fewer than
 * budget_min.  Kept across reloads with the pool's budget counts. */
enum ferry_retry_on {
    FERRY_RETRY_ON_CONNECT = 0x1, /* connect-failure: anything before the request left */
    FERRY_RETRY_ON_REFUSED = 0x2, /* the connection was refused */
    FERRY_RETRY_ON_RESET   = 0x4, /* closed or reset before the response head */
    FERRY_RETRY_ON_TIMEOUT = 0x8  /* connect or first-byte timeout */
};
enum ferry_retry_jitter { FERRY_JITTER_NONE = 0, FERRY_JITTER_EQUAL = 1, FERRY_JITTER_FULL = 2 };
int ferry_pool_retry(int pool, uint32_t on, const uint8_t *statuses, double backoff,
                     double max_backoff, int jitter, double budget, int budget_min);

/* Pool names by the stable pool index of ferry_req.pool (1..4095), for
 * logs and metrics; index 0 is "direct".  NULL when unknown. */
int ferry_set_pool_name(int index, const char *name);
const char *ferry_pool_name(int index);

/* Exchanges: a stable small id per name (1..), 0 for NULL or "". */
uint32_t ferry_exchange_id(const char *name);
/* The (proxy, exchange) state, created on first use; NULL if out of memory. */
struct ferry_pxstate *ferry_pxstate_get(uint32_t proxy_id, uint32_t exchange);
/* Results in the last `seconds` (1..60): out[0] successes, out[1] failures. */
void ferry_pxstate_window(const struct ferry_pxstate *x, int seconds, uint32_t *out);
/* Breaker transitions: open for `seconds`, half-open with `trials` slots,
 * or closed.  Logged as events. */
int ferry_breaker_open(struct ferry_pxstate *x, double seconds);
int ferry_breaker_half_open(struct ferry_pxstate *x, int trials);
int ferry_breaker_close(struct ferry_pxstate *x);
/* Take a half-open trial slot: 1 if this request may be the trial. */
int ferry_breaker_trial(struct ferry_pxstate *x);
/* Ban the pair for `seconds` (0 lifts the ban); counts bans in a row. */
int ferry_ban(struct ferry_pxstate *x, double seconds, const char *reason);

/* Rate budgets per (proxy, exchange) (rate.c).  ferry_rate_set: the
 * exchange's bucket (limit tokens per `per` seconds, capacity burst, 0:
 * limit) and its wait queue (queue requests, queue_timeout seconds);
 * limit 0 turns budgets off for it.  Existing buckets keep their tokens.
 * ferry_rate_take: refill, then spend weight tokens (may go below 0).
 * ferry_rate_learn: clamp the tokens to at most max (max < 0: no clamp),
 * and when until > now keep the bucket empty until then.
 * ferry_rate_tokens: the tokens now (refilled, capped). */
int ferry_rate_set(uint32_t exchange, double limit, double per, double burst, int queue,
                   double queue_timeout);
int ferry_rate_take(struct ferry_pxstate *x, double weight);
int ferry_rate_learn(struct ferry_pxstate *x, double max, double until);
double ferry_rate_tokens(const struct ferry_pxstate *x);
/* Per exchange: requests that waited, answered 429, waiting now. */
struct ferry_rate_stats {
    uint64_t waited;          /* ro: requests that entered the wait queue */
    uint64_t rejected;        /* ro: requests answered 429 (FERRY-2010, FERRY-2011) */
    uint64_t learned;         /* ro: answers that emptied or clamped a bucket */
    uint32_t waiting;         /* ro: requests waiting now */
    uint32_t queue;           /* ro: the configured queue bound */
    double   limit;           /* ro: tokens per `per` seconds, 0 = off */
    double   per;             /* ro */
    double   capacity;        /* ro: bucket size */
};
int ferry_rate_stats(uint32_t exchange, struct ferry_rate_stats *out);

/* Sticky sessions (sticky.c): key -> proxy id with a TTL, bounded in
 * size (oldest entries go first when full). */
uint32_t ferry_sticky_get(const char *key, uint32_t len);
int ferry_sticky_set(const char *key, uint32_t len, uint32_t proxy_id, double ttl);
void ferry_sticky_drop(const char *key, uint32_t len);
uint32_t ferry_sticky_count(void);

/* The embedded SQLite store (store.c; the full contract is in store.h).
 * Errors name the database path.  proxies_json: a JSON array owned by C,
 * valid until the next call.  save/load_health: count (>= 0) or -1. */
int ferry_store_open(const char *path, const char **err);
int ferry_store_open_key(const char *path, const char *key, size_t key_len, const char **err);
void ferry_store_close(void);
int ferry_store_is_open(void);
int ferry_store_put_proxy(const char *key, const char *url, const char *pool,
                          const char *opts_json, int enabled, const char **err);
int ferry_store_delete_proxy(const char *key, const char **err);
int ferry_store_set_enabled(const char *key, int enabled, const char **err);
const char *ferry_store_proxies_json(const char **err);
int ferry_store_save_health(const char **err);
int ferry_store_load_health(const char **err);

/* Admin answers that wait (admin.c): a handler of the admin router may
 * answer later.  It returns a token and a bound with a fallback answer;
 * ferry_admin_answer(token, ...) sends the real answer, copied, on the
 * next loop turn.  1: delivered; 0: no request waits on that token (its
 * connection closed, or the bound ran out and the fallback went).  At
 * most FERRY_ADMIN_WAIT_MAX answers wait at once (half the connections
 * an admin listener takes, so the admin plane stays reachable meanwhile):
 * ferry_admin_wait_room() says how many more may. */
enum { FERRY_ADMIN_WAIT_MAX = 32 };
int ferry_admin_answer(double token, int status, const char *ctype, const char *body,
                       size_t blen, const char *headers);
int ferry_admin_wait_room(void);

/* Sealing for Lua (secret_ffi.c): key is the store's 32-byte key.
 * seal: a malloc'd sealed string or NULL (deterministic: the nonce derived
 * from the value, for values looked up by equality, as store keys); open: 0 and *plain (malloc'd),
 * -1 not ours to open (another key, tampered with), -2 out of memory.
 * Free both with ferry_secret_free (it wipes). */
char *ferry_secret_seal_text(const char *key, size_t key_len, const char *plain,
                             int deterministic);
int ferry_secret_open_text(const char *key, size_t key_len, const char *sealed, char **plain);
int ferry_secret_is_sealed(const char *s);
void ferry_secret_free(char *p);

/* 1 when the two secrets are equal, else 0; in constant time (secret.c). */
int ferry_secret_equal(const char *a, size_t alen, const char *b, size_t blen);
/* HMAC-SHA256 of data under key into out (32 bytes); 0, or -1 (secret.c). */
int ferry_secret_hmac(const char *key, size_t klen, const char *data, size_t n,
                      unsigned char *out);

/* Open a listener.  protocol: "http" (forward proxy), "socks5", "socks4",
 * "mixed" (HTTP, SOCKS5 and SOCKS4 by the first byte) or "admin".
 * Returns an index >= 0 or -1. */
int ferry_listen(const char *name, const char *host, int port,
                 const char *protocol, int open, const char **err);
/* Add an inbound credential ("user:pass", Basic) to a listener. */
int ferry_listener_add_user(int listener, const char *user,
                            const char *pass, const char **err);
/* An admin listener on a unix socket, created with mode 0600; a stale
 * socket file is replaced, a live one refused.  Index or -1. */
int ferry_listen_unix(const char *name, const char *path, const char **err);
/* Throttle failed inbound auth on a listener: `limit` wrong credentials
 * from one client address within `window` seconds block the address for
 * `window` seconds (429, FERRY-1040).  limit 1..1000000, window 0.1..86400. */
int ferry_listener_set_auth_throttle(int listener, int limit, double window);
/* Reload: 1 if the listener serves the admin plane. */
int ferry_listener_is_admin(int listener);
/* Reload: the open unix listener at path, or -1. */
int ferry_listener_find_unix(const char *path);
/* Reload: the open listener bound to host:port, or -1. */
int ferry_listener_find(const char *host, int port);
/* Reload: rename, forget users, set the open flag of a kept listener. */
int ferry_listener_reset(int listener, const char *name, int open);
/* Reload: what a kept listener speaks to the connections still to come
 * (a protocol name as for ferry_listen; admin and proxy kinds are not
 * swapped in place).  FERRY_OK or FERRY_ERROR. */
int ferry_listener_set_protocol(int listener, const char *protocol);
/* Reload: stop accepting and close the socket; its connections finish. */
int ferry_listener_close(int listener);
/* TLS listeners: a server context from PEM files (TLS 1.2+, ALPN
 * http/1.1), or NULL and *err.  Made before a reload commits, so a broken
 * cert fails the reload and the old context stays. */
void *ferry_tls_server_new(const char *cert, const char *key, const char **err);
void ferry_tls_ctx_free(void *ctx);
/* Give the listener ctx (owned from now on; NULL: plain again). */
int ferry_listener_set_tls(int listener, void *ctx);
/* Ferry's CA (tls { ca_cert, ca_key, leaf_cache }; mint.c): a loaded and
 * checked CA, or NULL and *err (starting with its FERRY code).  Loaded
 * before a reload commits, so a broken CA fails the reload and the old
 * one keeps minting.  Lua releases what it loads (ffi.gc); ferry_ca_use
 * takes its own reference (NULL: no CA), dropping the leaf cache when
 * the CA changed. */
void *ferry_ca_load(const char *cert, const char *key, const char **err);
void ferry_ca_release(void *ca);
int ferry_ca_use(void *ca, int leaf_cache, const char **err);
/* Leaf minting counters (mint.h's struct mint_stats). */
struct ferry_mint_stats {
    uint64_t minted, hits, evictions, refused, sni_mismatch, failed;
    uint32_t cached, cap;
    int ready;
};
void ferry_mint_stats(struct ferry_mint_stats *out);
/* https:// proxies: verify the certificate (against ca, a PEM file, or
 * the system store when NULL) and its name (sni, or the proxy's host).
 * On failure the proxy keeps its previous settings. */
int ferry_proxy_set_tls(struct ferry_proxy *p, int verify, const char *ca, const char *sni,
                        const char **err);

/* TLS origination (origin_tls.c).  ferry_origin_tls_ctx: the client
 * context for (verify, CA file or NULL for the system store), loaded once
 * and kept while an exchange uses it; NULL and *err when the file does
 * not load.  ferry_exchange_set_tls: the exchange's context (NULL: the
 * system store, verified), verify and SNI name (NULL: the host).
 * ferry_origin_tls_sweep: free contexts no exchange uses (after a commit).
 * ferry_origin_tls_stats: handshakes made, kept connections reused,
 * verification failures. */
void *ferry_origin_tls_ctx(int verify, const char *ca, const char **err);
int ferry_exchange_set_tls(uint32_t exchange, void *ctx, int verify, const char *sni);
void ferry_origin_tls_sweep(void);
void ferry_origin_tls_stats(uint64_t *handshakes, uint64_t *reuses, uint64_t *verify_failures);

/* Event and access log files (NULL or "": standard error; access NULL:
 * with the events).  Reopened by name on SIGUSR1. */
int ferry_set_log_files(const char *events, const char *access, const char **err);
/* 1 once a stop signal came: draining (admin /health answers 503). */
int ferry_draining(void);
/* The config file the daemon runs (console reload()). */
const char *ferry_config_path(void);
/* The version ferry was built as ("0.1.0"): what a fleet node registers. */
const char *ferry_version_string(void);
/* Charge work done in C on a script's behalf (a plain find over a long
 * string, a sort) to the instruction budget of the Lua call running now:
 * FERRY_OK, or FERRY_ERROR once that exhausts it (raise
 * ferry_budget_message() then).  Without a budget: always FERRY_OK. */
int ferry_budget_charge(double instructions);
/* The error of the budget exhausted last ("script exceeded ..."). */
const char *ferry_budget_message(void);
/* The error of the bound the running evaluation tripped, or NULL. */
const char *ferry_budget_tripped(void);
/* An admin request is about to apply a config (reload, an inventory
 * change): it gets the config load's bounds on top of its own, once. */
void ferry_budget_enter_load(void);
/* ferry check: whether a file ferry would open for writing (a log, the
 * store) can be: an existing one opened read-write, a missing one's
 * directory writable.  Creates nothing.  FERRY_OK, or FERRY_ERROR, err. */
int ferry_path_writable(const char *path, const char **err);
/* ferry check: whether a unix socket could be bound at path (missing, or
 * a stale socket, in a writable directory).  FERRY_OK, or FERRY_ERROR. */
int ferry_socket_path_usable(const char *path, const char **err);

/* Global timeouts in milliseconds; 0 leaves a value unchanged. */
void ferry_set_timeouts(int client_head_ms, int connect_ms,
                        int first_byte_ms, int idle_ms,
                        int keepalive_ms, int request_ms, int upstream_idle_ms);
/* Log level (enum ferry_log_level); access log on/off. */
void ferry_set_log(int level, int access);
/* HTTP behaviour: add Via (1/0) under name (a token of at most 64 bytes). */
void ferry_set_http(int via, const char *via_name);
/* Reverse listeners (conn_reverse.c).  ferry_listener_set_reverse: the
 * listener's own pool index (0: none, a Host no route takes is 404), the
 * FERRY_FWD_* headers it adds toward backends, and whether incoming
 * X-Forwarded-* are trusted (kept and appended to) or dropped.
 * ferry_pool_set_host: the Host a backend pool sends (NULL: the client's). */
enum ferry_fwd {
    FERRY_FWD_FOR = 0x1,   /* X-Forwarded-For */
    FERRY_FWD_PROTO = 0x2, /* X-Forwarded-Proto */
    FERRY_FWD_HOST = 0x4,  /* X-Forwarded-Host */
    FERRY_FWD_VIA = 0x8    /* Via, both ways (with http { via }) */
};
int ferry_listener_set_reverse(int listener, int pool, unsigned forwarded, int trust);
int ferry_pool_set_host(int pool, const char *host);
/* Timers (timer.c; lua/ferry/timer.lua): fire `after` seconds from now,
 * then every `every` seconds (0: once).  Returns the id (> 0), or
 * FERRY_ERROR with err (1024 timers at once at most).  On expiry the
 * runtime's timer(id) is called.  Cancelling an ended id is a no-op. */
int32_t ferry_timer_start(double after, double every, const char **err);
void ferry_timer_cancel(int32_t id);
int ferry_timer_count(void);
/* The PostgreSQL connection of a fleet node (pg.c; lua/ferry/pg.lua
 * keeps the queue).  Events reach the runtime as runtime.pg_event(ev);
 * during one, the getters below read its details. */
enum ferry_pg_state {
    FERRY_PG_OFF = 0,        /* not configured */
    FERRY_PG_CONNECTING = 1, /* connecting, or setting the session up */
    FERRY_PG_UP = 2,         /* ready for a query */
    FERRY_PG_DOWN = 3        /* lost or refused: retrying with back-off */
};
enum ferry_pg_event {
    FERRY_PG_EV_UP = 1,      /* the session is ready (again) */
    FERRY_PG_EV_DOWN = 2,    /* a ready session was lost (the query in flight with it) */
    FERRY_PG_EV_RESULT = 3,  /* the query in flight ended */
    FERRY_PG_EV_NOTIFY = 4   /* a notification (channel, payload) */
};
enum ferry_pg_result {
    FERRY_PG_RES_NONE = 0,   /* no result */
    FERRY_PG_RES_OK = 1,     /* a command without rows */
    FERRY_PG_RES_ROWS = 2,   /* rows (maybe none) */
    FERRY_PG_RES_ERROR = 3   /* the server's error (ferry_pg_result_error) */
};
struct ferry_pg_stats {
    uint64_t connects;   /* ro: sessions set up */
    uint64_t reconnects; /* ro: sessions set up after a loss or a failed attempt */
    uint64_t queries;    /* ro: queries sent */
    uint64_t errors;     /* ro: queries that failed, and sessions lost */
    uint64_t notifies;   /* ro: notifications received */
    double   up_since;   /* ro: ferry_now() when the session came up */
    double   down_since; /* ro: when the outage began, 0 when up */
    double   attempts;   /* ro: failed attempts in this outage */
    double   timeout;    /* ro: statement_timeout, seconds */
    int32_t  state;      /* ro: enum ferry_pg_state */
    int32_t  inflight;   /* ro: 1 while a query is in flight */
};
/* 0, or FERRY_ERROR with err when conninfo does not parse (nothing shown of it). */
int ferry_pg_check(const char *conninfo, const char **err);
/* Connect to conninfo (the same string again: nothing changes; NULL or
 * "": close).  timeout > 0: statement_timeout in seconds from the next
 * session. */
int ferry_pg_configure(const char *conninfo, double timeout, const char **err);
int ferry_pg_state(void);
/* Send a query (up, nothing in flight): params are text or NULL. */
int ferry_pg_send(const char *sql, int nparams, const char *const *values, const char **err);
int ferry_pg_busy(void);
/* host:port/dbname of the conninfo; the last connection error (no password). */
const char *ferry_pg_target(void);
const char *ferry_pg_error(void);
/* The result of a RESULT event. */
int ferry_pg_result_status(void);
const char *ferry_pg_result_error(void);
const char *ferry_pg_result_sqlstate(void);
int ferry_pg_nrows(void);
int ferry_pg_nfields(void);
const char *ferry_pg_fname(int col);
const char *ferry_pg_value(int row, int col, int *len);
double ferry_pg_affected(void);
/* The notification of a NOTIFY event. */
const char *ferry_pg_notify_channel(void);
const char *ferry_pg_notify_payload(void);
void ferry_pg_stats(struct ferry_pg_stats *out);
/* Write one coded event line to the log (level as above). */
void ferry_log(int level, const char *code, const char *msg);
/* Count a Lua hook error for metrics (enum ferry_hook_kind; the core
 * counts FERRY_HOOK_RUNTIME itself). */
void ferry_count_hook_error(int kind);

/* Metrics (metrics.c, metrics_text.c).  Counters C owns: they survive
 * reloads and never reset.  The core counts its own requests, retries,
 * latencies, hook errors and probes; Lua adds reloads. */

/* One proxy of one running pool, for the per-proxy families. */
struct ferry_metrics_member {
    const struct ferry_proxy *proxy; /* its live state; NULL: left out */
    const char *label;               /* its label (configured id); NULL: its number */
    int32_t     pool;                /* pool index, as ferry_req.pool */
    double      score;               /* health score 0..100 (health.lua); < 0: left out */
};

/* Count one finished request by listener, pool index (-1: none chosen),
 * exchange id, code (NULL or "": "ok") and status sent (0: none);
 * seconds >= 0 is observed in the pool's request duration histogram.
 * The core counts its own requests; this is for other front ends and specs. */
void ferry_metrics_count_request(const char *listener, int pool, uint32_t exchange,
                                 const char *code, int status, double seconds);
/* A config reload ended: ok 1, or 0 when it was refused. */
void ferry_metrics_count_reload(int ok);
/* Label sets ferry_requests_total may hold (1..4096, the default 4096);
 * requests with a new label set past it are counted under "other". */
void ferry_metrics_set_limit(uint32_t max_series);
/* The Prometheus text (0.0.4) of everything C counts, and of the n
 * members' per-proxy, per-pool and per-(proxy, exchange) families, then
 * extra (families Lua keeps, or NULL).  The buffer belongs to C and
 * stays valid until the next call; *len: bytes. */
const char *ferry_metrics_text(const struct ferry_metrics_member *members, uint32_t n,
                               const char *extra, size_t *len);

/* The HTTP cache (cache.c, conn_cache.c): one store per pool or listener
 * that configures `cache = { size, max_object, ttl, lock_timeout }`. */
enum ferry_cache_kind {
    FERRY_CACHE_POOL = 0,
    FERRY_CACHE_LISTENER = 1
};
struct ferry_cache_stats {
    uint64_t hits;           /* ro: answered fresh from the store */
    uint64_t misses;         /* ro: went upstream with nothing usable stored */
    uint64_t stale;          /* ro: answered stale (stale-if-error, stale-while-revalidate) */
    uint64_t revalidated;    /* ro: a stored entry confirmed by a 304 */
    uint64_t coalesced;      /* ro: misses that waited for another request's fill */
    uint64_t evictions;      /* ro: entries dropped for room */
    uint64_t stored;         /* ro: entries stored */
    uint64_t purged;         /* ro: entries dropped by purge or invalidation */
    uint64_t too_large;      /* ro: responses over max_object, relayed, not stored */
    uint64_t bypass;         /* ro: requests the cache did not take (method, no-store...) */
    uint64_t bytes;          /* ro: bytes held now (entries, keys, heads, bodies) */
    uint64_t entries;        /* ro: entries held now */
    uint64_t size;           /* ro: the byte bound */
    uint64_t max_object;     /* ro: the largest body stored */
    uint64_t filling;        /* ro: bytes the fills under way hold now (at most size) */
    uint64_t fill_refused;   /* ro: fills given up because the fills under way held size */
};
/* A reload starts: caches set again before ferry_cache_reload_end stay
 * (with their entries), the others are dropped. */
void ferry_cache_reload_begin(void);
void ferry_cache_reload_end(void);
/* The cache of a pool (kind POOL, index: pool index) or a listener (kind
 * LISTENER, name: the listener's); a smaller size evicts at once. */
int ferry_cache_set(int kind, const char *name, int index, double size, double max_object,
                    double ttl, double lock_timeout);
/* Caches now, and one of them by position (0..): its name, kind, counters. */
int ferry_cache_count(void);
int ferry_cache_info(int i, struct ferry_cache_stats *out, const char **name, int *kind);
/* Drop the entries whose key starts with prefix ("" all; "/x" the target
 * /x... of any host) in the cache named name (NULL: every cache);
 * returns how many went. */
double ferry_cache_purge(const char *name, const char *prefix);
/* 1 when the config has no route(): a reverse listener's own pool then
 * serves every request, and its cache answers before any Lua runs. */
void ferry_cache_fixed_sites(int on);

#endif
