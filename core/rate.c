/* rate.c - token buckets per (proxy, exchange) and the wait queue of
 * requests without budget (rate.h). */
#include "rate.h"
#include "conn.h"
#include "log.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

/* Exchange ids with a budget of their own (ids are small and stable). */
#define RATE_EXCHANGES_MAX 4096
/* Retry-After never promises more than this (a bucket emptied by an
 * exchange's own Retry-After is capped by the runtime as well). */
#define RATE_RETRY_MAX 86400

struct rate_ex {
    double rate;               /* tokens per second, 0: no budget */
    double cap;                /* bucket size */
    double limit, per;         /* as configured, for stats */
    double queue_timeout;      /* seconds a request may wait */
    unsigned queue;            /* waiters allowed */
    unsigned nq;               /* waiters now */
    struct conn *qhead, *qtail;
    ev_timer timer;            /* wakes the head when a token is due */
    uint64_t waited, rejected, learned;
    uint32_t id;
};

static struct rate_ex **exs;   /* by exchange id, NULL until configured */
static uint32_t nexs;

static struct rate_ex *ex_of(uint32_t id)
{
    return id < nexs ? exs[id] : NULL;
}

static void on_ex_timer(struct ev_loop *lp, ev_timer *w, int revents);

static struct rate_ex *ex_make(uint32_t id)
{
    if (id == 0 || id >= RATE_EXCHANGES_MAX) {
        return NULL;
    }
    if (id >= nexs) {
        uint32_t n = nexs > 0 ? nexs : 16;
        while (n <= id) {
            n *= 2;
        }
        struct rate_ex **t = realloc(exs, n * sizeof(*t));
        if (t == NULL) {
            return NULL;
        }
        memset(t + nexs, 0, (n - nexs) * sizeof(*t));
        exs = t;
        nexs = n;
    }
    if (exs[id] == NULL) {
        struct rate_ex *e = calloc(1, sizeof(*e));
        if (e == NULL) {
            return NULL;
        }
        e->id = id;
        ev_init(&e->timer, on_ex_timer);
        exs[id] = e;
    }
    return exs[id];
}

/* Bring x's bucket to now: refill at e's rate, capped.  A bucket never
 * used starts full; one emptied until a future time stays as it is. */
static void refill(struct ferry_pxstate *x, const struct rate_ex *e, double now)
{
    if (x->rate_at == 0) {
        x->rate_tokens = e->cap;
        x->rate_at = now;
        return;
    }
    if (now > x->rate_at) {
        x->rate_tokens += (now - x->rate_at) * e->rate;
        x->rate_at = now;
    }
    if (x->rate_tokens > e->cap) {
        x->rate_tokens = e->cap; /* also after a reload made the bucket smaller */
    }
}

/* Wake the oldest waiter of e from its own timer (conn_on_timeout). */
static void wake_head(struct rate_ex *e)
{
    struct conn *c = e->qhead;
    if (c != NULL) {
        c->rate_woken = 1;
        conn_arm(c, 0);
    }
}

int ferry_rate_set(uint32_t exchange, double limit, double per, double burst, int queue,
                   double queue_timeout)
{
    struct rate_ex *e = ex_of(exchange);
    if (!(limit > 0) || !(per > 0)) {
        if (e != NULL) {
            e->rate = 0;
            e->limit = 0;
            wake_head(e); /* the waiters go on without a budget */
        }
        return FERRY_OK;
    }
    e = ex_make(exchange);
    if (e == NULL) {
        return FERRY_ERROR;
    }
    e->limit = limit;
    e->per = per;
    e->rate = limit / per;
    e->cap = burst > 0 ? burst : limit;
    e->queue = queue > 0 ? (unsigned)queue : 0;
    e->queue_timeout = queue_timeout > 0 ? queue_timeout : 0;
    /* Existing buckets keep their tokens: the new rate and capacity
     * apply from their next refill. */
    wake_head(e);
    return FERRY_OK;
}

int ferry_rate_take(struct ferry_pxstate *x, double weight)
{
    struct rate_ex *e = x != NULL ? ex_of(x->exchange) : NULL;
    if (e == NULL || e->rate <= 0 || !(weight >= 0)) {
        return FERRY_ERROR;
    }
    refill(x, e, loop_now());
    x->rate_tokens -= weight;
    return FERRY_OK;
}

int ferry_rate_learn(struct ferry_pxstate *x, double max, double until)
{
    struct rate_ex *e = x != NULL ? ex_of(x->exchange) : NULL;
    if (e == NULL || e->rate <= 0) {
        return FERRY_ERROR;
    }
    double now = loop_now();
    refill(x, e, now);
    int changed = 0;
    if (max >= 0 && x->rate_tokens > max) {
        x->rate_tokens = max;
        changed = 1;
    }
    if (until > now && until - now <= RATE_RETRY_MAX) {
        if (x->rate_tokens > 0) {
            x->rate_tokens = 0;
        }
        if (until > x->rate_at) {
            x->rate_at = until;
        }
        changed = 1;
    }
    if (changed) {
        e->learned++;
    }
    return FERRY_OK;
}

double ferry_rate_tokens(const struct ferry_pxstate *x)
{
    const struct rate_ex *e = x != NULL ? ex_of(x->exchange) : NULL;
    if (e == NULL || e->rate <= 0) {
        return 0;
    }
    if (x->rate_at == 0) {
        return e->cap;
    }
    double now = loop_now();
    double t = x->rate_tokens + (now > x->rate_at ? (now - x->rate_at) * e->rate : 0);
    return t < e->cap ? t : e->cap;
}

int ferry_rate_stats(uint32_t exchange, struct ferry_rate_stats *out)
{
    const struct rate_ex *e = ex_of(exchange);
    memset(out, 0, sizeof(*out));
    if (e == NULL) {
        return FERRY_ERROR;
    }
    out->waited = e->waited;
    out->rejected = e->rejected;
    out->learned = e->learned;
    out->waiting = e->nq;
    out->queue = e->queue;
    out->limit = e->rate > 0 ? e->limit : 0;
    out->per = e->per;
    out->capacity = e->cap;
    return FERRY_OK;
}

static void queue_remove(struct rate_ex *e, struct conn *c)
{
    if (c->rate_prev != NULL) {
        c->rate_prev->rate_next = c->rate_next;
    } else {
        e->qhead = c->rate_next;
    }
    if (c->rate_next != NULL) {
        c->rate_next->rate_prev = c->rate_prev;
    } else {
        e->qtail = c->rate_prev;
    }
    c->rate_prev = c->rate_next = NULL;
    c->rate_queued = 0;
    e->nq--;
}

static void arm_ex(struct rate_ex *e, double wait)
{
    if (wait < 0.001) {
        wait = 0.001; /* never a busy loop: the runtime's estimate rounds down */
    }
    double due = loop_now() + wait;
    if (ev_is_active(&e->timer) && ev_now(loop) + ev_timer_remaining(loop, &e->timer) <= due) {
        return;
    }
    ev_timer_stop(loop, &e->timer);
    ev_timer_set(&e->timer, wait, 0.);
    ev_timer_start(loop, &e->timer);
}

static void on_ex_timer(struct ev_loop *lp, ev_timer *w, int revents)
{
    (void)lp;
    (void)revents;
    struct rate_ex *e = (struct rate_ex *)((char *)w - offsetof(struct rate_ex, timer));
    wake_head(e);
}

static void reject(struct conn *c, struct rate_ex *e, enum ferr err)
{
    if (e != NULL) {
        e->rejected++;
    }
    conn_fail(c, err);
}

void rate_wait(struct conn *c, double wait)
{
    int woken = c->rate_woken;
    c->rate_woken = 0;
    rate_drop(c);
    struct rate_ex *e = ex_of(c->exchange);
    if (!(wait >= 0) || wait > RATE_RETRY_MAX) {
        wait = RATE_RETRY_MAX;
    }
    c->rate_wait = wait;
    double now = loop_now();
    if (c->rate_since < c->t_start) {
        c->rate_since = 0; /* a new request on the connection */
    }
    if (e == NULL || e->queue == 0 || (!woken && e->nq >= e->queue)) {
        reject(c, e, FERR_RATE_LIMITED);
        return;
    }
    double left = (c->rate_since > 0 ? c->rate_since : now) + e->queue_timeout - now;
    if (c->deadline - now < left) {
        left = c->deadline - now;
    }
    if (left <= 0) {
        reject(c, e, FERR_RATE_TIMEOUT);
        return;
    }
    if (c->rate_since == 0) {
        c->rate_since = now;
        e->waited++;
    }
    /* A woken waiter that still found nothing keeps its place. */
    if (woken) {
        c->rate_next = e->qhead;
        if (e->qhead != NULL) {
            e->qhead->rate_prev = c;
        } else {
            e->qtail = c;
        }
        e->qhead = c;
    } else {
        c->rate_prev = e->qtail;
        if (e->qtail != NULL) {
            e->qtail->rate_next = c;
        } else {
            e->qhead = c;
        }
        e->qtail = c;
    }
    e->nq++;
    c->rate_queued = 1;
    c->state = CS_RATE;
    conn_arm(c, left);
    arm_ex(e, wait);
}

void rate_routed(struct conn *c)
{
    if (!c->rate_woken) {
        return;
    }
    c->rate_woken = 0;
    struct rate_ex *e = ex_of(c->exchange);
    if (e != NULL) {
        wake_head(e); /* the next waiter may find a token too */
    }
}

void rate_timer_fired(struct conn *c)
{
    struct rate_ex *e = ex_of(c->exchange);
    if (c->rate_woken) {
        if (e != NULL && c->rate_queued) {
            queue_remove(e, c);
        }
        conn_route(c); /* rate_woken still set: rate_wait / rate_routed read it */
        return;
    }
    rate_drop(c);
    reject(c, e, FERR_RATE_TIMEOUT);
}

void rate_drop(struct conn *c)
{
    if (!c->rate_queued) {
        return;
    }
    struct rate_ex *e = ex_of(c->exchange);
    if (e != NULL) {
        int head = e->qhead == c;
        queue_remove(e, c);
        if (head && c->rate_woken) {
            wake_head(e); /* it was the one woken: pass the turn on */
        }
    } else {
        c->rate_queued = 0;
    }
}

unsigned rate_retry_after(const struct conn *c)
{
    double w = ceil(c->rate_wait);
    if (w < 1) {
        return 1;
    }
    return w > RATE_RETRY_MAX ? RATE_RETRY_MAX : (unsigned)w;
}

void rate_free_all(void)
{
    for (uint32_t i = 0; i < nexs; i++) {
        if (exs[i] != NULL) {
            ev_timer_stop(loop, &exs[i]->timer);
            free(exs[i]);
        }
    }
    free(exs);
    exs = NULL;
    nexs = 0;
}
