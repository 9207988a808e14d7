/* retry.c - retry policy per pool and the retry budget.
 *
 * A pool says what it retries on (connect-failure, refused, reset,
 * timeout, statuses 500-599), how long a retry waits (exponential
 * back-off: backoff, 2 x backoff, ... capped at max_backoff, jittered),
 * and how many retries it lets run at once: its budget, a percentage of
 * the requests in flight in the pool, never below budget_min (Envoy's
 * retry budget).  A retry the budget refuses is not made: the request
 * ends with the failure it had, so a pool whose every member fails sees
 * about one attempt per request instead of tries x requests.
 *
 * Everything is kept by the pool's stable index (ferry_req.pool), in C:
 * a reload replaces the policy and keeps the counts of requests in
 * flight.  Pools without a policy (ferry_pool_retry never called for
 * them) have the proxy-pool defaults below. */
#include "retry.h"
#include "conn.h"
#include "listener.h"
#include "log.h"
#include "loop.h"
#include "metrics.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define RETRY_POOLS_MAX 4096      /* pool indexes (ferry_set_pool_name's range) */
#define RETRY_LOG_WINDOW 10.0     /* seconds between two budget lines of one pool */
#define RETRY_BACKOFF_DOUBLINGS 16 /* 2^16 x backoff: past any max_backoff allowed */

struct retry_pool {
    unsigned set:1;           /* a policy was given */
    uint32_t on;              /* FERRY_RETRY_ON_* */
    uint8_t status[100];      /* 1: retry a response of status 500 + i */
    double backoff, max_backoff;
    int jitter;               /* enum ferry_retry_jitter */
    double budget;            /* percent of active requests; < 0: no budget */
    unsigned budget_min;      /* retries always allowed at once */
    unsigned active;          /* requests of the pool in flight */
    unsigned retrying;        /* of them, holding a place in the budget */
    double log_at;            /* when the budget line was last written */
    unsigned long quiet;      /* refusals since, not logged */
};

const char *const retry_reason_names[RETRY_REASONS] = {
    [RETRY_REFUSED] = "refused", [RETRY_CONNECT] = "connect-failure",
    [RETRY_RESET] = "reset",     [RETRY_TIMEOUT] = "timeout",
    [RETRY_STATUS] = "status",
};

/* Proxy pools: every failure retried, 10 ms doubling up to 0.5 s, no budget. */
static const struct retry_pool retry_defaults = {
    .on = FERRY_RETRY_ON_CONNECT | FERRY_RETRY_ON_REFUSED | FERRY_RETRY_ON_RESET |
          FERRY_RETRY_ON_TIMEOUT,
    .backoff = 0.01, .max_backoff = 0.5, .jitter = FERRY_JITTER_EQUAL, .budget = -1,
};

static struct retry_pool *pools;
static unsigned npools;

/* The slot of a pool index, made on first use; NULL past the bound or
 * out of memory. */
static struct retry_pool *slot(int pool)
{
    if (pool <= 0 || pool >= RETRY_POOLS_MAX) {
        return NULL;
    }
    if ((unsigned)pool >= npools) {
        unsigned n = npools ? npools : 16;
        while (n <= (unsigned)pool) {
            n *= 2;
        }
        struct retry_pool *p = realloc(pools, n * sizeof(*p));
        if (p == NULL) {
            return NULL;
        }
        for (unsigned i = npools; i < n; i++) {
            p[i] = retry_defaults;
        }
        pools = p;
        npools = n;
    }
    return &pools[pool];
}

static const struct retry_pool *policy(int pool)
{
    return pool > 0 && (unsigned)pool < npools ? &pools[pool] : &retry_defaults;
}

int ferry_pool_retry(int pool, uint32_t on, const uint8_t *statuses, double backoff,
                     double max_backoff, int jitter, double budget, int budget_min)
{
    struct retry_pool *p = slot(pool);
    if (p == NULL || backoff < 0 || max_backoff < backoff || jitter < FERRY_JITTER_NONE ||
        jitter > FERRY_JITTER_FULL || budget_min < 0) {
        return FERRY_ERROR;
    }
    p->set = 1;
    p->on = on;
    if (statuses != NULL) {
        memcpy(p->status, statuses, sizeof(p->status));
    } else {
        memset(p->status, 0, sizeof(p->status));
    }
    p->backoff = backoff;
    p->max_backoff = max_backoff;
    p->jitter = jitter;
    p->budget = budget > 100 ? 100 : budget;
    p->budget_min = (unsigned)budget_min;
    return FERRY_OK;
}

enum retry_reason retry_reason_of(enum ferry_fail_kind kind, int before_send)
{
    switch (kind) {
    case FERRY_FAIL_REFUSED:
        return RETRY_REFUSED;
    case FERRY_FAIL_TIMEOUT:
        return RETRY_TIMEOUT;
    case FERRY_FAIL_RESET:
        return before_send ? RETRY_CONNECT : RETRY_RESET;
    default:
        return RETRY_CONNECT; /* TLS, handshake, proxy auth, a proxy's own 5xx */
    }
}

int retry_on(int pool, enum retry_reason why, int before_send)
{
    uint32_t on = policy(pool)->on;
    if (before_send && (on & FERRY_RETRY_ON_CONNECT)) {
        return 1; /* connect-failure: nothing of the request left */
    }
    switch (why) {
    case RETRY_REFUSED:
        return (on & (FERRY_RETRY_ON_REFUSED | FERRY_RETRY_ON_CONNECT)) != 0;
    case RETRY_CONNECT: /* a proxy's refusal (407, a 5xx to CONNECT) after the head left */
        return (on & FERRY_RETRY_ON_CONNECT) != 0;
    case RETRY_RESET:
        return (on & FERRY_RETRY_ON_RESET) != 0;
    case RETRY_TIMEOUT:
        return (on & FERRY_RETRY_ON_TIMEOUT) != 0;
    default:
        return 0;
    }
}

int retry_on_status(int pool, int status)
{
    return status >= 500 && status <= 599 && policy(pool)->status[status - 500];
}

double retry_backoff(int pool, unsigned n)
{
    const struct retry_pool *p = policy(pool);
    unsigned k = n < RETRY_BACKOFF_DOUBLINGS ? n : RETRY_BACKOFF_DOUBLINGS;
    double d = p->backoff * (double)(1u << k);
    if (d > p->max_backoff) {
        d = p->max_backoff;
    }
    double r = (double)random() / ((double)RAND_MAX + 1.0);
    switch (p->jitter) {
    case FERRY_JITTER_FULL:
        return d * r; /* anywhere in [0, d) */
    case FERRY_JITTER_EQUAL:
        return d / 2 + d / 2 * r; /* [d/2, d): never at once, still spread */
    default:
        return d;
    }
}

void retry_request_begin(struct conn *c, int pool)
{
    if (c->retry_counted) {
        return;
    }
    struct retry_pool *p = slot(pool);
    if (p == NULL) {
        return;
    }
    p->active++;
    c->retry_pool = pool;
    c->retry_counted = 1;
}

/* The most retries the pool lets run at once now. */
static unsigned budget_allowed(const struct retry_pool *p)
{
    unsigned share = (unsigned)((double)p->active * p->budget / 100.0);
    return share > p->budget_min ? share : p->budget_min;
}

static void budget_log(struct conn *c, struct retry_pool *p)
{
    double now = loop_now();
    if (p->log_at > 0 && now - p->log_at < RETRY_LOG_WINDOW) {
        p->quiet++;
        return;
    }
    struct log_ctx ctx = { .cid = c->cid, .listener = c->l->name,
                           .pool = ferry_pool_name(c->retry_pool) };
    log_event(LOG_WARN, "FERRY-3132", &ctx, "retry budget of the pool exhausted: %u of %u "
              "requests in flight are retries (budget %g%%, at least %u); the request ends "
              "with its failure (%lu more refused in the last %.0f s)",
              p->retrying, p->active, p->budget, p->budget_min, p->quiet, RETRY_LOG_WINDOW);
    p->log_at = now;
    p->quiet = 0;
}

int retry_budget_take(struct conn *c)
{
    if (!c->retry_counted || c->retry_taken) {
        return 1; /* not counted (no pool), or already retrying: one place a request */
    }
    struct retry_pool *p = &pools[c->retry_pool];
    if (p->budget < 0) {
        return 1;
    }
    if (p->retrying >= budget_allowed(p)) {
        metrics_retry_budget_exhausted(c->retry_pool);
        budget_log(c, p);
        c->retry_stop = "budget";
        return 0;
    }
    p->retrying++;
    c->retry_taken = 1;
    return 1;
}

void retry_request_end(struct conn *c)
{
    if (c->retry_counted) {
        struct retry_pool *p = &pools[c->retry_pool];
        p->active -= p->active > 0;
        if (c->retry_taken) {
            p->retrying -= p->retrying > 0;
        }
    }
    c->retry_counted = 0;
    c->retry_taken = 0;
}

void retry_note(struct conn *c, enum retry_reason why, int status)
{
    metrics_retry(c->pool, why);
    if (c->nretry_log < FERRY_RETRIES_MAX) {
        c->retry_log[c->nretry_log++] = (uint16_t)(why == RETRY_STATUS ? status : (int)why);
    }
}

const char *retry_log_text(const struct conn *c, char *buf, size_t cap)
{
    if (c->nretry_log == 0 || cap == 0) {
        return NULL;
    }
    size_t n = 0;
    buf[0] = '\0';
    for (unsigned i = 0; i < c->nretry_log && n < cap; i++) {
        unsigned v = c->retry_log[i];
        int w = v >= 100 ? snprintf(buf + n, cap - n, "%s%u", i ? "," : "", v)
                         : snprintf(buf + n, cap - n, "%s%s", i ? "," : "",
                                    retry_reason_names[v % RETRY_REASONS]);
        if (w < 0) {
            break;
        }
        n += (size_t)w;
    }
    return buf;
}

void retry_free_all(void)
{
    free(pools);
    pools = NULL;
    npools = 0;
}
