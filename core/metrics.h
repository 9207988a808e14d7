/* metrics.h - the counters behind /metrics that C owns.
 *
 * They live for the whole process: a reload never resets them.  The
 * core calls the metrics_* hooks below where things happen; Lua reads
 * everything through the ferry_metrics_* exports of ferry.h, whose text
 * metrics_text.c renders. */
#ifndef FERRY_METRICS_H
#define FERRY_METRICS_H

#include "probe.h"

#include <stdint.h>

struct conn;

/* The process starts: the version for ferry_build_info, and the start time. */
void metrics_start(const char *version);
/* A request ends (its access line, or the end of its tunnel): counted
 * once by listener, pool, exchange, code and status class, and its
 * duration observed.  code: its FERRY code, NULL when it went well. */
void metrics_request_end(struct conn *c, const char *code);
/* A connection is destroyed: a routed request that neither logged nor
 * ended its tunnel (client gone mid-response, idle timeout, stop) is
 * counted now. */
void metrics_conn_closed(struct conn *c);
/* An upstream is ready for the request: a fresh connect (resolve,
 * connect and handshake) is observed per pool; a CONNECT's request
 * duration ends here, when its tunnel is up. */
void metrics_upstream_ready(struct conn *c);
/* An attempt is retried (pool index as in ferry_req.pool), for why
 * (enum retry_reason of retry.h). */
void metrics_retry(int pool, int why);
/* A retry the pool's retry budget refused (retry.c). */
void metrics_retry_budget_exhausted(int pool);
/* A kept upstream closed before answering: the request goes out again on a
 * fresh connection (conn_upstream.c). */
void metrics_reuse_retry(int pool);
/* A banned response was dropped and its request sent through another
 * proxy (conn_banretry.c). */
void metrics_ban_retry(int pool);
/* A Lua hook failed: 0 the runtime itself, 1 route, 2 strategy, 3 breaker,
 * 4 exchange hooks (enum ferry_hook_kind of ferry.h). */
void metrics_hook_error(int kind);
/* A probe ended with a verdict: PROBE_OK, or why it failed (probe.h). */
void metrics_probe(enum probe_result r);
/* A connection was refused with FERRY-2004: admin 0 the process-wide
 * connection limit, 1 an admin listener's own limit (listener.c). */
void metrics_overloaded(int admin);
/* Free what metrics allocated (exit). */
void metrics_free_all(void);

/* The counters, as metrics_text.c reads them ------------------------- */

#define METRICS_SERIES_MAX 4096  /* label sets of ferry_requests_total */
#define METRICS_NAMES_MAX 250    /* interned listener names, and codes */
#define METRICS_NAME_OTHER 255   /* the index of "other" */
#define METRICS_POOL_MAX 1024    /* pool indexes with their own series */
/* [0] no pool, [i + 1] pool i, [METRICS_POOL_MAX + 1] every other pool */
#define METRICS_POOL_SLOTS (METRICS_POOL_MAX + 2)
#define METRICS_BUCKETS 11
#define METRICS_HOOK_KINDS 6
#define METRICS_PROBE_RESULTS PROBE_RESULTS
#define METRICS_CLASSES 7
#define METRICS_RETRY_REASONS 5 /* enum retry_reason (retry.h) */

/* A duration histogram: per-bucket (not cumulative) counts, +Inf implied. */
struct metrics_histo {
    uint64_t bucket[METRICS_BUCKETS]; /* ro: observations in (bound[i-1], bound[i]] */
    uint64_t count;                   /* ro: all observations */
    double sum;                       /* ro: seconds */
};

/* What one pool index has seen. */
struct metrics_pool {
    uint64_t retries;             /* ro */
    uint64_t retry_reasons[METRICS_RETRY_REASONS]; /* ro: retries by enum retry_reason */
    uint64_t retry_budget_exhausted; /* ro: retries the retry budget refused */
    uint64_t reuse_retries;       /* ro: requests sent again after a kept upstream closed */
    uint64_t ban_retries;         /* ro: requests sent again after a ban (retry on ban) */
    struct metrics_histo connect; /* ro: resolve + connect + handshake of fresh upstreams */
    struct metrics_histo request; /* ro: request head to response end (tunnels: to up) */
};

/* Interned strings: small tables looked up by strcmp, never shrunk. */
struct metrics_names {
    char *v[METRICS_NAMES_MAX]; /* ro */
    unsigned n;                 /* ro */
};

/* One label set of ferry_requests_total: indexes packed by series_key. */
struct metrics_series {
    uint64_t key;   /* ro: listener << 48 | pool slot << 32 | exchange << 16 | code << 8 | class */
    uint64_t count; /* ro */
};

/* Everything counted.  Written only by metrics.c. */
struct metrics {
    struct metrics_names listeners;              /* ro */
    struct metrics_names codes;                  /* ro: code index i + 1; 0 is "ok" */
    struct metrics_pool *pools[METRICS_POOL_SLOTS]; /* ro: NULL until first used */
    struct metrics_series series[METRICS_SERIES_MAX]; /* ro: in order of appearance */
    uint32_t nseries;                            /* ro */
    uint32_t series_limit;                       /* ro */
    uint64_t other;                              /* ro: requests in the "other" series */
    uint64_t overflow;                           /* ro: ... counted there for the limit */
    uint64_t reloads_ok, reloads_failed;         /* ro */
    int last_reload_ok;                          /* ro */
    double last_reload_ok_at;                    /* ro: wall clock */
    uint64_t hook_errors[METRICS_HOOK_KINDS];    /* ro: by metrics_hook_kinds */
    uint64_t probes[METRICS_PROBE_RESULTS];      /* ro: by metrics_probe_results */
    uint64_t overloaded[2];                      /* ro: refused connections, by limit */
    const char *version;                         /* ro */
    double started_at;                           /* ro: wall clock */
};

extern struct metrics metrics;
extern const char *const metrics_bound_text[METRICS_BUCKETS];
extern const char *const metrics_hook_kinds[METRICS_HOOK_KINDS];
extern const char *const metrics_probe_results[METRICS_PROBE_RESULTS];
extern const char *const metrics_classes[METRICS_CLASSES];

/* The slot of a pool index in metrics.pools. */
unsigned metrics_pool_slot(int pool);
/* The pool label of a slot; tmp holds the number of an unnamed index. */
const char *metrics_pool_label(unsigned slot, char tmp[16]);
/* An interned name, "other" past the table. */
const char *metrics_name(const struct metrics_names *t, unsigned i);
/* The exchange label of an id: "" for none. */
const char *metrics_exchange_label(uint32_t ex);
/* Seconds since the epoch. */
double metrics_wall_now(void);

#endif
