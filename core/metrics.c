/* metrics.c - the counters for /metrics (metrics_text.c renders them).
 *
 * Everything here lives as long as the process: a reload changes the
 * config, never a counter.  Requests are counted by (listener, pool,
 * exchange, code, status class) in a table bounded to METRICS_SERIES_MAX
 * label sets; past the bound a request is counted in one "other" series and
 * in ferry_metrics_overflow_total, so memory and scrape size stay flat
 * whatever names clients and configs bring.  Per-pool families
 * (retries, connect and request duration histograms) are bounded by
 * METRICS_POOL_MAX pool indexes the same way.  Pools are kept by their stable
 * index (ferry_req.pool) and named at render time (ferry_pool_name). */
#include "metrics.h"
#include "conn.h"
#include "ferry.h"
#include "health.h"
#include "listener.h"
#include "log.h"
#include "loop.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#define SERIES_SLOTS 8192      /* open addressing, twice METRICS_SERIES_MAX */
#define NAME_LEN_MAX 256       /* longer names are counted as "other" */

static const double bounds[METRICS_BUCKETS] = { 0.005, 0.01, 0.025, 0.05, 0.1, 0.25,
                                                0.5,   1,    2.5,   5,    10 };
const char *const metrics_bound_text[METRICS_BUCKETS] = { "0.005", "0.01", "0.025", "0.05",
                                                          "0.1",   "0.25", "0.5",   "1",
                                                          "2.5",   "5",    "10" };
const char *const metrics_hook_kinds[METRICS_HOOK_KINDS] = { "runtime", "route", "strategy",
                                                             "breaker", "exchange", "other" };
/* Indexed by enum probe_result (probe.h). */
const char *const metrics_probe_results[METRICS_PROBE_RESULTS] = {
    [PROBE_OK] = "ok",           [PROBE_TIMEOUT] = "timeout",
    [PROBE_REFUSED] = "refused", [PROBE_CONNECT_FAILED] = "connect_failed",
    [PROBE_RESOLVE] = "resolve", [PROBE_HANDSHAKE] = "handshake",
    [PROBE_AUTH] = "auth",       [PROBE_STATUS] = "status",
    [PROBE_BAD_RESPONSE] = "bad_response", [PROBE_CLOSED] = "closed",
    [PROBE_FAILED] = "failed",
};
const char *const metrics_classes[METRICS_CLASSES] = { "none", "1xx", "2xx", "3xx",
                                                       "4xx",  "5xx", "other" };

struct metrics metrics = { .series_limit = METRICS_SERIES_MAX, .last_reload_ok = 1,
                           .version = "unknown" };
static uint32_t slot_of[SERIES_SLOTS]; /* hash slot -> series index + 1, 0 = free */
static int overflow_logged;

double metrics_wall_now(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    return (double)ts.tv_sec + ts.tv_nsec / 1e9;
}

void metrics_start(const char *v)
{
    metrics.version = v != NULL ? v : "unknown";
    metrics.started_at = metrics_wall_now();
    metrics.last_reload_ok_at = metrics.started_at;
}

/* Names -------------------------------------------------------------- */

static unsigned intern(struct metrics_names *t, const char *s)
{
    for (unsigned i = 0; i < t->n; i++) {
        if (strcmp(t->v[i], s) == 0) {
            return i;
        }
    }
    if (t->n >= METRICS_NAMES_MAX || strlen(s) > NAME_LEN_MAX) {
        return METRICS_NAME_OTHER;
    }
    char *copy = strdup(s);
    if (copy == NULL) {
        return METRICS_NAME_OTHER;
    }
    t->v[t->n] = copy;
    return t->n++;
}

const char *metrics_name(const struct metrics_names *t, unsigned i)
{
    return i < t->n ? t->v[i] : "other";
}

unsigned metrics_pool_slot(int pool)
{
    if (pool < 0) {
        return 0;
    }
    return pool < METRICS_POOL_MAX ? (unsigned)pool + 1 : METRICS_POOL_MAX + 1;
}

const char *metrics_pool_label(unsigned slot, char tmp[16])
{
    if (slot == 0) {
        return "none";
    }
    if (slot == 1) {
        return "direct";
    }
    if (slot > METRICS_POOL_MAX) {
        return "other";
    }
    const char *name = ferry_pool_name((int)slot - 1);
    if (name != NULL) {
        return name;
    }
    snprintf(tmp, 16, "%u", slot - 1);
    return tmp;
}

static struct metrics_pool *stats_of(int pool)
{
    unsigned s = metrics_pool_slot(pool);
    if (metrics.pools[s] == NULL) {
        metrics.pools[s] = calloc(1, sizeof(struct metrics_pool));
    }
    return metrics.pools[s];
}

static void observe(struct metrics_histo *h, double secs)
{
    if (!(secs >= 0)) {
        secs = 0;
    }
    for (int i = 0; i < METRICS_BUCKETS; i++) {
        if (secs <= bounds[i]) {
            h->bucket[i]++;
            break;
        }
    }
    h->count++;
    h->sum += secs;
}

const char *metrics_exchange_label(uint32_t ex)
{
    if (ex == 0) {
        return "";
    }
    return ex < 0xffff ? health_exchange_name(ex) : "other";
}

/* Requests ----------------------------------------------------------- */

static unsigned status_class(int status)
{
    if (status == 0) {
        return 0;
    }
    return status >= 100 && status <= 599 ? (unsigned)(status / 100) : 6;
}

static uint64_t series_key(unsigned lst, unsigned slot, uint32_t ex, unsigned code, unsigned cls)
{
    return (1ull << 63) | (uint64_t)lst << 48 | (uint64_t)slot << 32 |
           (uint64_t)(ex < 0xffff ? ex : 0xffff) << 16 | (uint64_t)code << 8 | cls;
}

static uint32_t key_hash(uint64_t k)
{
    k ^= k >> 29;
    k *= 0xbf58476d1ce4e5b9ull;
    k ^= k >> 32;
    return (uint32_t)k;
}

static void count_other(void)
{
    metrics.other++;
    metrics.overflow++;
    if (!overflow_logged) {
        overflow_logged = 1;
        log_event(LOG_WARN, "FERRY-7401", NULL,
                  "metrics: ferry_requests_total reached its limit of %u label sets; "
                  "new ones are counted under \"other\"", metrics.series_limit);
    }
}

void ferry_metrics_count_request(const char *listener, int pool, uint32_t exchange,
                                 const char *code, int status, double seconds)
{
    unsigned lst = intern(&metrics.listeners, listener != NULL ? listener : "");
    unsigned ci = 0; /* "ok" */
    if (code != NULL && *code != '\0') {
        unsigned k = intern(&metrics.codes, code);
        ci = k == METRICS_NAME_OTHER ? METRICS_NAME_OTHER : k + 1;
    }
    unsigned slot = metrics_pool_slot(pool);
    if (seconds >= 0 && pool >= 0) {
        struct metrics_pool *ps = stats_of(pool);
        if (ps != NULL) {
            observe(&ps->request, seconds);
        }
    }
    uint64_t key = series_key(lst, slot, exchange, ci, status_class(status));
    uint32_t h = key_hash(key) & (SERIES_SLOTS - 1);
    for (;;) {
        uint32_t s = slot_of[h];
        if (s == 0) {
            break;
        }
        if (metrics.series[s - 1].key == key) {
            metrics.series[s - 1].count++;
            return;
        }
        h = (h + 1) & (SERIES_SLOTS - 1);
    }
    if (metrics.nseries >= metrics.series_limit) {
        count_other();
        return;
    }
    metrics.series[metrics.nseries].key = key;
    metrics.series[metrics.nseries].count = 1;
    slot_of[h] = ++metrics.nseries;
}

void ferry_metrics_set_limit(uint32_t max_series)
{
    metrics.series_limit = max_series < 1                    ? 1
                         : max_series > METRICS_SERIES_MAX ? METRICS_SERIES_MAX
                                                           : max_series;
}

void metrics_request_end(struct conn *c, const char *code)
{
    int routed = c->metered;
    c->metered = 0;
    if (c->l == NULL) {
        return; /* a probe's detached conn */
    }
    /* Tunnels observed their duration when they came up. */
    double secs = -1;
    if (routed && c->state != CS_TUNNEL && !(c->is_connect && c->status == 200)) {
        secs = loop_now() - c->t_start;
    }
    ferry_metrics_count_request(c->l->name, routed ? c->pool : -1, routed ? c->exchange : 0,
                                code, c->status, secs);
}

void metrics_conn_closed(struct conn *c)
{
    if (!c->metered) {
        return;
    }
    const char *code = c->code;
    if (code == NULL && c->state != CS_TUNNEL) {
        code = "FERRY-7402"; /* the client went away before the response was complete */
    }
    metrics_request_end(c, code);
}

void metrics_upstream_ready(struct conn *c)
{
    if (!c->metered) {
        return;
    }
    struct metrics_pool *ps = stats_of(c->pool);
    if (ps == NULL) {
        return;
    }
    double now = loop_now();
    if (c->state == CS_HANDSHAKE) {
        observe(&ps->connect, now - c->t_attempt);
    }
    if (c->is_connect) {
        observe(&ps->request, now - c->t_start);
    }
}

void metrics_retry(int pool, int why)
{
    struct metrics_pool *ps = stats_of(pool);
    if (ps != NULL) {
        ps->retries++;
        if (why >= 0 && why < METRICS_RETRY_REASONS) {
            ps->retry_reasons[why]++;
        }
    }
}

void metrics_retry_budget_exhausted(int pool)
{
    struct metrics_pool *ps = stats_of(pool);
    if (ps != NULL) {
        ps->retry_budget_exhausted++;
    }
}

void metrics_ban_retry(int pool)
{
    struct metrics_pool *ps = stats_of(pool);
    if (ps != NULL) {
        ps->ban_retries++;
    }
}

void metrics_reuse_retry(int pool)
{
    struct metrics_pool *ps = stats_of(pool);
    if (ps != NULL) {
        ps->reuse_retries++;
    }
}

void ferry_metrics_count_reload(int ok)
{
    if (ok) {
        metrics.reloads_ok++;
        metrics.last_reload_ok = 1;
        metrics.last_reload_ok_at = metrics_wall_now();
    } else {
        metrics.reloads_failed++;
        metrics.last_reload_ok = 0;
    }
}

void metrics_hook_error(int kind)
{
    int last = METRICS_HOOK_KINDS - 1;
    metrics.hook_errors[kind >= 0 && kind < last ? kind : last]++;
}

void metrics_overloaded(int admin)
{
    metrics.overloaded[admin ? 1 : 0]++;
}

void ferry_count_hook_error(int kind)
{
    metrics_hook_error(kind);
}

void metrics_probe(enum probe_result r)
{
    metrics.probes[(unsigned)r < METRICS_PROBE_RESULTS ? r : PROBE_FAILED]++;
}

void metrics_free_all(void)
{
    for (unsigned i = 0; i < metrics.listeners.n; i++) {
        free(metrics.listeners.v[i]);
    }
    for (unsigned i = 0; i < metrics.codes.n; i++) {
        free(metrics.codes.v[i]);
    }
    metrics.listeners.n = metrics.codes.n = 0;
    for (unsigned i = 0; i < METRICS_POOL_SLOTS; i++) {
        free(metrics.pools[i]);
        metrics.pools[i] = NULL;
    }
}
