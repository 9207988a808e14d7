/* health.c - whether a proxy is up, and how it fares per exchange.
 *
 * Up/down uses one hysteresis counter per proxy (after HAProxy's rise
 * and fall): while up it sits in [rise, rise+fall-1] and each failure
 * takes one step down, so `fall` failures in a row take the proxy down;
 * while down it sits in [0, rise-1] and `rise` successes in a row bring
 * it back.  Probes and real traffic feed the same counter, except that
 * a refused connect from real traffic marks the proxy down at once: the
 * next client must not pay for a proxy we already know is gone.
 *
 * A connect says only that the kernel completed a handshake: a stopped
 * (SIGSTOP) or wedged proxy still accepts.  So when real traffic takes a
 * proxy down for timeouts, resets or garbled handshakes, a bare `tcp`
 * probe is not enough to bring it back: until it is up, its tcp probes
 * also ask the proxy to answer its protocol (probe.c).
 *
 * A proxy without probes has nothing to bring it back, so while down it
 * gets a trial request after `interval`, doubling per failed trial up to
 * 16x; one success brings it up.
 *
 * The (proxy, exchange) pairs hold what one exchange thinks of a proxy:
 * counters, a one-minute window of results, the breaker and bans.  They
 * are allocated once and never move, so Lua keeps pointers to them. */
#include "health.h"
#include "ewma.h"
#include "log.h"
#include "loop.h"
#include "proxy.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define EXCHANGE_MAX 1024
#define WINDOW_SECS 60
#define BACKOFF_MAX_FACTOR 16.0
/* A half-open trial that never reported back frees its slot after this. */
#define TRIAL_STALE_SECS 30.0

/* A pair's private side: the window of results, second by second. */
struct pxstate {
    struct ferry_pxstate pub;    /* rw: what Lua reads */
    struct pxstate *next;        /* private: hash chain */
    uint32_t stamp[WINDOW_SECS]; /* private: the second each slot counts */
    uint32_t ok[WINDOW_SECS];    /* private */
    uint32_t fail[WINDOW_SECS];  /* private */
};

static char *exchanges[EXCHANGE_MAX + 1]; /* id -> name; [0] unused */
static uint32_t nexchanges;

static struct pxstate **pairs;
static uint32_t npairs, nbuckets;

static uint32_t epoch;
/* Set once the first config is applied: proxies up at start do not ramp. */
static int started;

uint32_t ferry_health_epoch(void)
{
    return epoch;
}

void health_flags_changed(void)
{
    epoch++;
}

void ferry_health_started(void)
{
    started = 1;
}

void health_ramp_begin(struct proxy *p)
{
    p->pub.up_since = started ? loop_now() : 0;
}

static int is_up(const struct proxy *p)
{
    return !(p->pub.flags & FERRY_PROXY_DOWN);
}

static uint32_t full(const struct proxy *p)
{
    return p->pub.rise + p->pub.fall - 1;
}

static void go_down(struct proxy *p, const char *why)
{
    double now = loop_now();
    p->pub.flags |= FERRY_PROXY_DOWN;
    epoch++;
    p->pub.health = 0;
    p->pub.downs++;
    p->pub.down_since = now;
    p->passive_fails = 0;
    p->pub.retry_at = p->probe != NULL ? 0 : now + p->health_interval;
    struct log_ctx ctx = { .proxy = p->display };
    int asks = p->needs_answer && p->probe != NULL && p->pub.probe_kind == FERRY_PROBE_TCP;
    log_event(LOG_WARN, "FERRY-6001", &ctx, "proxy %s down: %s%s", p->label, why,
              asks ? " (its tcp probes now need an answer in its protocol)" : "");
}

static void go_up(struct proxy *p, const char *why)
{
    double was = p->pub.down_since;
    p->pub.flags &= ~FERRY_PROXY_DOWN;
    epoch++;
    p->pub.health = full(p);
    p->pub.down_since = 0;
    p->pub.retry_at = 0;
    p->passive_fails = 0;
    p->needs_answer = 0;
    health_ramp_begin(p); /* slow start: its pools ramp its share from now */
    struct log_ctx ctx = { .proxy = p->display };
    log_event(LOG_INFO, "FERRY-6002", &ctx, "proxy %s up: %s (down %.1f s)", p->label, why,
              was > 0 ? loop_now() - was : 0.0);
}

/* One success or failure on the hysteresis counter. */
static void step(struct proxy *p, int ok, const char *why)
{
    if (ok) {
        if (is_up(p)) {
            p->pub.health = full(p);
        } else if (++p->pub.health >= p->pub.rise) {
            go_up(p, why);
        }
        return;
    }
    if (!is_up(p)) {
        p->pub.health = 0;
        return;
    }
    if (p->pub.health > 0) {
        p->pub.health--;
    }
    if (p->pub.health < p->pub.rise) {
        go_down(p, why);
    }
}

void health_probe_result(struct proxy *p, int ok, double latency_ms, const char *why)
{
    p->pub.last_probe_at = loop_now();
    if (ok) {
        p->pub.probes_ok++;
        p->pub.probe_fails = 0;
        p->pub.probe_latency_ms = latency_ms;
        step(p, 1, why != NULL ? why : "probe passed");
    } else {
        p->pub.probes_failed++;
        p->pub.probe_fails++;
        step(p, 0, why != NULL ? why : "probe failed");
    }
}

void health_probe_shared(struct proxy *p, int up, double latency_ms, const char *why)
{
    if (up && latency_ms >= 0) {
        p->pub.probe_latency_ms = latency_ms;
    }
    for (uint32_t n = p->pub.rise + p->pub.fall; n > 0 && is_up(p) != (up != 0); n--) {
        step(p, up, why);
    }
}

static const char *const fail_names[FERRY_FAIL_KINDS] = {
    "connect refused", "timeout", "handshake failed", "proxy auth failed", "5xx response",
    "connection reset", "TLS failed"
};

void health_passive(struct proxy *p, int ok, enum ferry_fail_kind kind)
{
    if (ok) {
        /* With probes, only probes bring a proxy back (a request reached
         * it only because the pool had nothing better). */
        if (is_up(p) || p->probe == NULL) {
            if (!is_up(p)) {
                go_up(p, "a trial request succeeded");
            } else {
                p->pub.health = full(p);
            }
        }
        return;
    }
    /* A 5xx says the proxy works; what lies behind it is the breaker's
     * and the exchange's business. */
    if (kind == FERRY_FAIL_HTTP5XX || (unsigned)kind >= FERRY_FAIL_KINDS) {
        return;
    }
    if (!is_up(p)) {
        if (p->probe == NULL) {
            /* A failed trial: wait twice as long before the next one. */
            p->passive_fails++;
            double f = pow(2.0, p->passive_fails < 4 ? p->passive_fails : 4);
            p->pub.retry_at = loop_now() + p->health_interval * fmin(f, BACKOFF_MAX_FACTOR);
        }
        return;
    }
    if (kind == FERRY_FAIL_REFUSED) {
        go_down(p, "connect refused by real traffic");
        return;
    }
    /* Failures a proxy that accepts TCP can still cause. */
    p->needs_answer = kind == FERRY_FAIL_TIMEOUT || kind == FERRY_FAIL_RESET ||
                      kind == FERRY_FAIL_HANDSHAKE;
    step(p, 0, fail_names[kind]);
    if (is_up(p)) {
        p->needs_answer = 0;
    }
}

int ferry_health_set(struct ferry_proxy *fp, int rise, int fall, double interval)
{
    struct proxy *p = (struct proxy *)fp;
    if (p == NULL || rise < 1 || fall < 1 || rise > 1000 || fall > 1000 || !(interval > 0)) {
        return FERRY_ERROR;
    }
    p->pub.rise = (uint32_t)rise;
    p->pub.fall = (uint32_t)fall;
    p->health_interval = interval;
    if (is_up(p)) {
        p->pub.health = full(p);
    } else {
        if (p->pub.health >= p->pub.rise) {
            p->pub.health = p->pub.rise - 1;
        }
        /* Probes may have been taken away: passive trials take over. */
        if (p->probe == NULL && p->pub.retry_at == 0) {
            p->pub.retry_at = loop_now() + interval;
        } else if (p->probe != NULL) {
            p->pub.retry_at = 0;
        }
    }
    return FERRY_OK;
}

int ferry_health_mark(struct ferry_proxy *fp, int up, const char *reason)
{
    struct proxy *p = (struct proxy *)fp;
    if (p == NULL) {
        return FERRY_ERROR;
    }
    const char *why = reason != NULL ? reason : "marked by the operator";
    if (up && !is_up(p)) {
        go_up(p, why);
    } else if (!up && is_up(p)) {
        go_down(p, why);
    }
    return FERRY_OK;
}

void health_restore(struct proxy *p, int up, uint32_t counter)
{
    if (up) {
        if (!is_up(p)) {
            go_up(p, "up when last saved (store)");
            p->pub.up_since = 0; /* a starting point, not a return */
        }
        p->pub.health = counter >= p->pub.rise && counter <= full(p) ? counter : full(p);
    } else {
        if (is_up(p)) {
            go_down(p, "down when last saved (store)");
        }
        p->pub.health = counter < p->pub.rise ? counter : p->pub.rise - 1;
    }
}

/* Pool names, by the stable index apply.lua gives each pool ---------- */

#define POOL_NAMES_MAX 4096
static char *pool_names[POOL_NAMES_MAX];

int ferry_set_pool_name(int index, const char *name)
{
    if (index <= 0 || index >= POOL_NAMES_MAX || name == NULL) {
        return FERRY_ERROR;
    }
    if (pool_names[index] != NULL && strcmp(pool_names[index], name) == 0) {
        return FERRY_OK;
    }
    char *copy = strdup(name);
    if (copy == NULL) {
        return FERRY_ERROR;
    }
    free(pool_names[index]);
    pool_names[index] = copy;
    return FERRY_OK;
}

const char *ferry_pool_name(int index)
{
    if (index == 0) {
        return "direct";
    }
    return index > 0 && index < POOL_NAMES_MAX && pool_names[index] != NULL ? pool_names[index]
                                                                            : NULL;
}

/* Exchanges --------------------------------------------------------- */

uint32_t ferry_exchange_id(const char *name)
{
    if (name == NULL || *name == '\0') {
        return 0;
    }
    for (uint32_t i = 1; i <= nexchanges; i++) {
        if (strcmp(exchanges[i], name) == 0) {
            return i;
        }
    }
    if (nexchanges >= EXCHANGE_MAX) {
        return 0;
    }
    char *copy = strdup(name);
    if (copy == NULL) {
        return 0;
    }
    exchanges[++nexchanges] = copy;
    return nexchanges;
}

const char *health_exchange_name(uint32_t id)
{
    return id > 0 && id <= nexchanges ? exchanges[id] : "-";
}

/* Pairs ------------------------------------------------------------- */

static uint32_t pair_hash(uint32_t proxy_id, uint32_t exchange)
{
    uint64_t k = ((uint64_t)proxy_id << 16) ^ exchange;
    k *= 0x9e3779b97f4a7c15ull;
    return (uint32_t)(k >> 32);
}

static int grow_pairs(void)
{
    uint32_t nb = nbuckets ? nbuckets * 2 : 1024;
    struct pxstate **fresh = calloc(nb, sizeof(*fresh));
    if (fresh == NULL) {
        return -1;
    }
    for (uint32_t i = 0; i < nbuckets; i++) {
        struct pxstate *x = pairs[i];
        while (x != NULL) {
            struct pxstate *next = x->next;
            uint32_t b = pair_hash(x->pub.proxy_id, x->pub.exchange) & (nb - 1);
            x->next = fresh[b];
            fresh[b] = x;
            x = next;
        }
    }
    free(pairs);
    pairs = fresh;
    nbuckets = nb;
    return 0;
}

struct ferry_pxstate *ferry_pxstate_get(uint32_t proxy_id, uint32_t exchange)
{
    if (proxy_by_id(proxy_id) == NULL || exchange > nexchanges) {
        return NULL;
    }
    if (nbuckets > 0) {
        uint32_t b = pair_hash(proxy_id, exchange) & (nbuckets - 1);
        for (struct pxstate *x = pairs[b]; x != NULL; x = x->next) {
            if (x->pub.proxy_id == proxy_id && x->pub.exchange == exchange) {
                return &x->pub;
            }
        }
    }
    if (npairs >= nbuckets && grow_pairs() != 0) {
        return NULL;
    }
    struct pxstate *x = calloc(1, sizeof(*x));
    if (x == NULL) {
        return NULL;
    }
    x->pub.proxy_id = proxy_id;
    x->pub.exchange = exchange;
    x->pub.trials_max = 1;
    uint32_t b = pair_hash(proxy_id, exchange) & (nbuckets - 1);
    x->next = pairs[b];
    pairs[b] = x;
    npairs++;
    return &x->pub;
}

void health_pair_result(struct ferry_pxstate *fx, int ok, double latency_ms)
{
    struct pxstate *x = (struct pxstate *)fx;
    double now = loop_now();
    x->pub.requests++;
    if (ok) {
        x->pub.successes++;
        x->pub.consecutive_failures = 0;
        x->pub.last_success_at = now;
        if (latency_ms >= 0) {
            ewma_latency(&x->pub.latency_ewma_ms, latency_ms);
        }
    } else {
        x->pub.failures++;
        x->pub.consecutive_failures++;
        x->pub.last_failure_at = now;
    }
    if (x->pub.breaker == FERRY_BREAKER_HALF_OPEN && x->pub.trials > 0) {
        x->pub.trials--;
    }
    uint32_t sec = (uint32_t)now;
    uint32_t i = sec % WINDOW_SECS;
    if (x->stamp[i] != sec) {
        x->stamp[i] = sec;
        x->ok[i] = x->fail[i] = 0;
    }
    if (ok) {
        x->ok[i]++;
    } else {
        x->fail[i]++;
    }
}

void health_pairs_each(void (*fn)(const struct ferry_pxstate *x, void *arg), void *arg)
{
    for (uint32_t i = 0; i < nbuckets; i++) {
        for (const struct pxstate *x = pairs[i]; x != NULL; x = x->next) {
            fn(&x->pub, arg);
        }
    }
}

void ferry_pxstate_window(const struct ferry_pxstate *fx, int seconds, uint32_t *out)
{
    const struct pxstate *x = (const struct pxstate *)fx;
    out[0] = out[1] = 0;
    if (x == NULL) {
        return;
    }
    if (seconds < 1) {
        seconds = 1;
    } else if (seconds > WINDOW_SECS) {
        seconds = WINDOW_SECS;
    }
    uint32_t now = (uint32_t)loop_now();
    for (int i = 0; i < WINDOW_SECS; i++) {
        /* Unsigned difference: stamps from the future cannot occur. */
        if (x->stamp[i] != 0 && now - x->stamp[i] < (uint32_t)seconds) {
            out[0] += x->ok[i];
            out[1] += x->fail[i];
        }
    }
}

static void pair_event(int level, const char *code, const struct ferry_pxstate *x,
                       const char *what, double seconds)
{
    struct proxy *p = proxy_by_id(x->proxy_id);
    struct log_ctx ctx = { .proxy = p != NULL ? p->display : NULL,
                           .exchange = health_exchange_name(x->exchange) };
    /* A duration only when there is one: "breaker open for 30.0 s", but
     * "breaker half-open", not "breaker half-open0.0". */
    char dur[64] = "";
    if (seconds > 0) {
        snprintf(dur, sizeof(dur), " for %.1f s", seconds);
    }
    log_event(level, code, &ctx, "proxy %s, exchange %s: %s%s", p != NULL ? p->label : "?",
              health_exchange_name(x->exchange), what, dur);
}

int ferry_breaker_open(struct ferry_pxstate *x, double seconds)
{
    if (x == NULL || !(seconds > 0)) {
        return FERRY_ERROR;
    }
    x->breaker = FERRY_BREAKER_OPEN;
    x->breaker_until = loop_now() + seconds;
    x->opened_at = loop_now();
    x->opens++;
    x->trials = 0;
    epoch++; /* max_ejected counts open breakers (lua/ferry/pool.lua) */
    pair_event(LOG_WARN, "FERRY-6003", x, "breaker open", seconds);
    return FERRY_OK;
}

int ferry_breaker_half_open(struct ferry_pxstate *x, int trials)
{
    if (x == NULL || trials < 1) {
        return FERRY_ERROR;
    }
    x->breaker = FERRY_BREAKER_HALF_OPEN;
    x->trials_max = (uint32_t)trials;
    x->trials = 0;
    epoch++;
    pair_event(LOG_INFO, "FERRY-6004", x, "breaker half-open", 0);
    return FERRY_OK;
}

int ferry_breaker_close(struct ferry_pxstate *x)
{
    if (x == NULL) {
        return FERRY_ERROR;
    }
    int was = (int)x->breaker;
    x->breaker = FERRY_BREAKER_CLOSED;
    x->opens = 0;
    x->trials = 0;
    x->breaker_until = 0;
    if (was != FERRY_BREAKER_CLOSED) {
        epoch++;
        pair_event(LOG_INFO, "FERRY-6005", x, "breaker closed", 0);
    }
    return FERRY_OK;
}

int ferry_breaker_trial(struct ferry_pxstate *x)
{
    if (x == NULL || x->breaker != FERRY_BREAKER_HALF_OPEN) {
        return 1;
    }
    double now = loop_now();
    if (x->trials >= x->trials_max && now - x->trial_at < TRIAL_STALE_SECS) {
        return 0;
    }
    if (x->trials >= x->trials_max) {
        x->trials = 0; /* the earlier trials never reported back */
    }
    x->trials++;
    x->trial_at = now;
    return 1;
}

int ferry_ban(struct ferry_pxstate *x, double seconds, const char *reason)
{
    if (x == NULL || seconds < 0 || seconds != seconds) {
        return FERRY_ERROR;
    }
    if (seconds == 0) {
        x->banned_until = 0;
        x->bans = 0;
        return FERRY_OK;
    }
    x->banned_until = loop_now() + seconds;
    x->bans++;
    x->bans_total++;
    struct proxy *p = proxy_by_id(x->proxy_id);
    struct log_ctx ctx = { .proxy = p != NULL ? p->display : NULL,
                           .exchange = health_exchange_name(x->exchange) };
    log_event(LOG_WARN, "FERRY-6006", &ctx, "proxy %s banned by exchange %s for %.0f s (%s, ban %u in a row)",
              p != NULL ? p->label : "?", health_exchange_name(x->exchange), seconds,
              reason != NULL ? reason : "ban", x->bans);
    return FERRY_OK;
}

void health_free_all(void)
{
    for (uint32_t i = 0; i < nbuckets; i++) {
        struct pxstate *x = pairs[i];
        while (x != NULL) {
            struct pxstate *next = x->next;
            free(x);
            x = next;
        }
    }
    free(pairs);
    pairs = NULL;
    npairs = nbuckets = 0;
    for (int i = 0; i < POOL_NAMES_MAX; i++) {
        free(pool_names[i]);
        pool_names[i] = NULL;
    }
    for (uint32_t i = 1; i <= nexchanges; i++) {
        free(exchanges[i]);
        exchanges[i] = NULL;
    }
    nexchanges = 0;
}
