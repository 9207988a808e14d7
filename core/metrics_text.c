/* metrics_text.c - the Prometheus text (format 0.0.4) of /metrics.
 *
 * Rendered in C into one buffer that C owns, because a scrape of 10 000
 * proxies is ~200 000 lines and the loop must not stall building them
 * as Lua strings.  Lua hands over the members of the running pools
 * (proxy, label, pool index, health score) and gets back one pointer
 * and a length.  Every family has # HELP and # TYPE and all its samples
 * in one group; label values are escaped (\\, \", \n); credentials never
 * appear (proxies are named by their label, pools and exchanges by name). */
#include "authfail.h"
#include "conn.h"
#include "ferry.h"
#include "health.h"
#include "intercept.h"
#include "log.h"
#include "loop.h"
#include "metrics.h"
#include "mint.h"
#include "proxy.h"
#include "uppool.h"
#include "upstream.h"

#include <math.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define TEXT_MAX (256u << 20) /* the rendered text never grows past this */

/* The output buffer: whole lines only; when it cannot grow, the text
 * ends at the last complete line and everything after is dropped. */
struct text {
    char *p;      /* private */
    size_t n;     /* private: bytes used */
    size_t cap;   /* private */
    size_t line;  /* private: where the current line started */
    int full;     /* private: could not grow: drop the rest */
};

static struct text out;
static int truncated_logged;

static int reserve(struct text *t, size_t more)
{
    if (t->full) {
        return -1;
    }
    if (t->n + more <= t->cap) {
        return 0;
    }
    size_t cap = t->cap ? t->cap : 65536;
    while (cap < t->n + more) {
        cap *= 2;
    }
    char *p = cap <= TEXT_MAX ? realloc(t->p, cap) : NULL;
    if (p == NULL) {
        t->full = 1;
        t->n = t->line;
        return -1;
    }
    t->p = p;
    t->cap = cap;
    return 0;
}

static void put(struct text *t, const char *s, size_t n)
{
    if (reserve(t, n) == 0) {
        memcpy(t->p + t->n, s, n);
        t->n += n;
    }
}

static void puts_(struct text *t, const char *s)
{
    put(t, s, strlen(s));
}

/* A label value: \ " and newline escaped. */
static void put_esc(struct text *t, const char *s)
{
    size_t n = strlen(s);
    if (reserve(t, 2 * n) != 0) {
        return;
    }
    char *o = t->p + t->n;
    for (size_t i = 0; i < n; i++) {
        char ch = s[i];
        if (ch == '\\' || ch == '"') {
            *o++ = '\\';
            *o++ = ch;
        } else if (ch == '\n') {
            *o++ = '\\';
            *o++ = 'n';
        } else {
            *o++ = ch;
        }
    }
    t->n = (size_t)(o - t->p);
}

static void put_u64(struct text *t, uint64_t v)
{
    char b[24];
    int i = (int)sizeof(b);
    do {
        b[--i] = (char)('0' + v % 10);
        v /= 10;
    } while (v != 0);
    put(t, b + i, sizeof(b) - (size_t)i);
}

static void put_f64(struct text *t, double v)
{
    if (isnan(v)) {
        puts_(t, "NaN");
    } else if (isinf(v)) {
        puts_(t, v > 0 ? "+Inf" : "-Inf");
    } else if (v == floor(v) && fabs(v) < 9e15) {
        if (v < 0) {
            puts_(t, "-");
            v = -v;
        }
        put_u64(t, (uint64_t)v);
    } else {
        char b[32];
        int k = snprintf(b, sizeof(b), "%.15g", v);
        put(t, b, (size_t)k);
    }
}

static void eol(struct text *t)
{
    put(t, "\n", 1);
    if (!t->full) {
        t->line = t->n;
    }
}

static void family(struct text *t, const char *name, const char *type, const char *help)
{
    puts_(t, "# HELP ");
    puts_(t, name);
    puts_(t, " ");
    puts_(t, help);
    eol(t);
    puts_(t, "# TYPE ");
    puts_(t, name);
    puts_(t, " ");
    puts_(t, type);
    eol(t);
}

/* "name{labels} " before a value: labels is the inside of the braces, or NULL. */
static void sample_head(struct text *t, const char *name, const char *labels)
{
    puts_(t, name);
    if (labels != NULL) {
        puts_(t, "{");
        puts_(t, labels);
        puts_(t, "}");
    }
    puts_(t, " ");
}

static void sample_u64(struct text *t, const char *name, const char *labels, uint64_t v)
{
    sample_head(t, name, labels);
    put_u64(t, v);
    eol(t);
}

static void sample_f64(struct text *t, const char *name, const char *labels, double v)
{
    sample_head(t, name, labels);
    put_f64(t, v);
    eol(t);
}

/* Start a sample with one escaped label: name{key="value" */
static void open1(struct text *t, const char *name, const char *key, const char *value)
{
    puts_(t, name);
    puts_(t, "{");
    puts_(t, key);
    puts_(t, "=\"");
    put_esc(t, value);
    puts_(t, "\"");
}

static void close_u64(struct text *t, uint64_t v)
{
    puts_(t, "} ");
    put_u64(t, v);
    eol(t);
}

static void close_f64(struct text *t, double v)
{
    puts_(t, "} ");
    put_f64(t, v);
    eol(t);
}

static void render_requests(struct text *t)
{
    family(t, "ferry_requests_total", "counter",
           "Requests that ended, by listener, pool, exchange, outcome code (ok or FERRY-xxxx) "
           "and the status class sent to the client.");
    char tmp[16];
    for (uint32_t i = 0; i < metrics.nseries; i++) {
        uint64_t k = metrics.series[i].key;
        unsigned lst = (unsigned)(k >> 48) & 0xff, slot = (unsigned)(k >> 32) & 0xffff;
        unsigned ex = (unsigned)(k >> 16) & 0xffff, ci = (unsigned)(k >> 8) & 0xff;
        unsigned cls = (unsigned)k & 0xff;
        open1(t, "ferry_requests_total", "listener", metrics_name(&metrics.listeners, lst));
        puts_(t, ",pool=\"");
        put_esc(t, metrics_pool_label(slot, tmp));
        puts_(t, "\",exchange=\"");
        put_esc(t, metrics_exchange_label(ex));
        puts_(t, "\",code=\"");
        put_esc(t, ci == 0 ? "ok" : metrics_name(&metrics.codes, ci - 1));
        puts_(t, "\",status_class=\"");
        puts_(t, metrics_classes[cls < METRICS_CLASSES ? cls : METRICS_CLASSES - 1]);
        puts_(t, "\"");
        close_u64(t, metrics.series[i].count);
    }
    if (metrics.other > 0) {
        sample_u64(t, "ferry_requests_total",
                   "listener=\"other\",pool=\"other\",exchange=\"other\",code=\"other\","
                   "status_class=\"other\"",
                   metrics.other);
    }
    family(t, "ferry_connections_refused_total", "counter",
           "Connections refused with FERRY-2004 at accept, by the limit that was reached: "
           "the process-wide connection limit or an admin listener's own.");
    sample_u64(t, "ferry_connections_refused_total", "limit=\"connections\"",
               metrics.overloaded[0]);
    sample_u64(t, "ferry_connections_refused_total", "limit=\"admin\"", metrics.overloaded[1]);
    family(t, "ferry_metrics_overflow_total", "counter",
           "Requests counted under the \"other\" label set because ferry_requests_total "
           "reached its series limit.");
    sample_u64(t, "ferry_metrics_overflow_total", NULL, metrics.overflow);
}

static void render_histo(struct text *t, const char *name, int which, const char *help)
{
    char base[64], tmp[16];
    family(t, name, "histogram", help);
    for (unsigned s = 0; s < METRICS_POOL_SLOTS; s++) {
        if (metrics.pools[s] == NULL) {
            continue;
        }
        const struct metrics_histo *h = which ? &metrics.pools[s]->request : &metrics.pools[s]->connect;
        if (h->count == 0) {
            continue;
        }
        const char *pool = metrics_pool_label(s, tmp);
        uint64_t cum = 0;
        snprintf(base, sizeof(base), "%s_bucket", name);
        for (int i = 0; i < METRICS_BUCKETS; i++) {
            cum += h->bucket[i];
            open1(t, base, "pool", pool);
            puts_(t, ",le=\"");
            puts_(t, metrics_bound_text[i]);
            puts_(t, "\"");
            close_u64(t, cum);
        }
        open1(t, base, "pool", pool);
        puts_(t, ",le=\"+Inf\"");
        close_u64(t, h->count);
        snprintf(base, sizeof(base), "%s_sum", name);
        open1(t, base, "pool", pool);
        close_f64(t, h->sum);
        snprintf(base, sizeof(base), "%s_count", name);
        open1(t, base, "pool", pool);
        close_u64(t, h->count);
    }
}

/* Failed inbound auth and its throttling (authfail.c). */
static void render_authfail(struct text *t)
{
    const struct authfail_stats *a = authfail_stats();
    family(t, "ferry_auth_failures_total", "counter",
           "Requests with wrong inbound proxy credentials (answered 407).");
    sample_u64(t, "ferry_auth_failures_total", NULL, a->failures);
    family(t, "ferry_auth_throttled_total", "counter",
           "Requests refused with 429 because their client address failed auth too often.");
    sample_u64(t, "ferry_auth_throttled_total", NULL, a->throttled);
    family(t, "ferry_auth_blocks_total", "counter",
           "Times a client address reached auth_fail_limit and was blocked.");
    sample_u64(t, "ferry_auth_blocks_total", NULL, a->blocks);
    family(t, "ferry_auth_blocked_clients", "gauge", "Client addresses blocked now.");
    sample_u64(t, "ferry_auth_blocked_clients", NULL, a->blocked);
    family(t, "ferry_auth_tracked_clients", "gauge",
           "Client addresses held in the bounded table of auth failures.");
    sample_u64(t, "ferry_auth_tracked_clients", NULL, a->tracked);
    family(t, "ferry_auth_evictions_total", "counter",
           "Tracked client addresses forgotten because the table was full.");
    sample_u64(t, "ferry_auth_evictions_total", NULL, a->evictions);
}

/* Upstream connections (uppool.c): one row per field, per pool and per proxy. */
struct conn_field {
    const char *name, *type, *help;
    size_t off;  /* in struct ferry_conn_stats */
    int gauge;   /* a uint32_t gauge, else a uint64_t counter */
};

#define CF(name, type, help, field, gauge) \
    { name, type, help, offsetof(struct ferry_conn_stats, field), gauge }
static const struct conn_field conn_fields[] = {
    CF("connections_opened_total", "counter", "Upstream connections opened", opened, 0),
    CF("connections_reused_total", "counter", "Requests sent on a kept upstream connection",
       reused, 0),
    CF("connections_active", "gauge", "Upstream connections in use or being opened now",
       active, 1),
    CF("connections_idle", "gauge", "Idle upstream connections kept now", idle, 1),
    CF("connections_retired_total", "counter",
       "Upstream connections closed after connections.max_requests", retired, 0),
    CF("queued_total", "counter", "Requests that waited for an upstream connection slot",
       queued, 0),
    CF("queue_waiting", "gauge", "Requests waiting for an upstream connection slot now",
       waiting, 1),
    CF("queue_timeouts_total", "counter",
       "Requests whose wait for a slot ran out (503 FERRY-3061)", queue_timeouts, 0),
    CF("queue_full_total", "counter",
       "Requests refused because the wait queue was full (503 FERRY-3060)", queue_full, 0),
};
#define CONN_FIELDS (sizeof(conn_fields) / sizeof(conn_fields[0]))

static uint64_t conn_value(const struct ferry_conn_stats *s, const struct conn_field *f)
{
    const char *p = (const char *)s + f->off;
    if (f->gauge) {
        uint32_t v;
        memcpy(&v, p, sizeof(v));
        return v;
    }
    uint64_t v;
    memcpy(&v, p, sizeof(v));
    return v;
}

static void conn_family(struct text *t, const char *prefix, const struct conn_field *f,
                        const char *by)
{
    char name[96], help[192];
    snprintf(name, sizeof(name), "%s%s", prefix, f->name);
    snprintf(help, sizeof(help), "%s, by %s.", f->help, by);
    family(t, name, f->type, help);
}

static void render_conn_pools(struct text *t)
{
    char lbl[128], name[96];
    uint32_t n = uppool_pool_count();
    for (size_t k = 0; k < CONN_FIELDS; k++) {
        conn_family(t, "ferry_upstream_", &conn_fields[k], "pool");
        snprintf(name, sizeof(name), "ferry_upstream_%s", conn_fields[k].name);
        for (uint32_t i = 0; i < n; i++) {
            struct ferry_conn_stats s, zero;
            memset(&zero, 0, sizeof(zero));
            ferry_conn_stats_pool((int)i, &s);
            if (memcmp(&s, &zero, sizeof(s)) == 0) {
                continue; /* never used */
            }
            open1(t, name, "pool", metrics_pool_label(metrics_pool_slot((int)i), lbl));
            close_u64(t, conn_value(&s, &conn_fields[k]));
        }
    }
    family(t, "ferry_upstream_idle_evicted_total", "counter",
           "Idle upstream connections closed because the global idle cap was reached.");
    sample_u64(t, "ferry_upstream_idle_evicted_total", NULL, ferry_conn_idle_evicted());
    uint64_t hs, reuse, verify;
    ferry_origin_tls_stats(&hs, &reuse, &verify);
    family(t, "ferry_origin_tls_handshakes_total", "counter",
           "TLS handshakes ferry made with origins (origination).");
    sample_u64(t, "ferry_origin_tls_handshakes_total", NULL, hs);
    family(t, "ferry_origin_tls_reused_total", "counter",
           "Requests sent on a kept TLS connection ferry originated (no handshake).");
    sample_u64(t, "ferry_origin_tls_reused_total", NULL, reuse);
    family(t, "ferry_origin_tls_verify_failures_total", "counter",
           "Origin certificates that did not verify (FERRY-3042).");
    sample_u64(t, "ferry_origin_tls_verify_failures_total", NULL, verify);
}

/* Leaves minted by ferry's CA for intercepted clients (mint.c). */
static void render_mint(struct text *t)
{
    const struct mint_stats *m = mint_stats();
    family(t, "ferry_tls_leaves_minted_total", "counter",
           "Leaf certificates ferry's CA minted for intercepted clients.");
    sample_u64(t, "ferry_tls_leaves_minted_total", NULL, m->minted);
    family(t, "ferry_tls_leaf_cache_hits_total", "counter",
           "Intercepted handshakes served a cached leaf certificate.");
    sample_u64(t, "ferry_tls_leaf_cache_hits_total", NULL, m->hits);
    family(t, "ferry_tls_leaf_cache_evictions_total", "counter",
           "Cached leaf certificates dropped because the cache reached tls.leaf_cache.");
    sample_u64(t, "ferry_tls_leaf_cache_evictions_total", NULL, m->evictions);
    family(t, "ferry_tls_leaf_cache_entries", "gauge", "Leaf certificates cached now.");
    sample_u64(t, "ferry_tls_leaf_cache_entries", NULL, m->cached);
    family(t, "ferry_tls_client_refusals_total", "counter",
           "Intercepted handshakes the client ended refusing ferry's certificate "
           "(FERRY-1081).");
    sample_u64(t, "ferry_tls_client_refusals_total", NULL, m->refused);
    family(t, "ferry_tls_sni_mismatches_total", "counter",
           "Intercepted handshakes refused because the SNI was not the CONNECT host "
           "(FERRY-1080).");
    sample_u64(t, "ferry_tls_sni_mismatches_total", NULL, m->sni_mismatch);
    family(t, "ferry_tls_mint_failures_total", "counter",
           "Leaf certificates that could not be minted (FERRY-1082).");
    sample_u64(t, "ferry_tls_mint_failures_total", NULL, m->failed);
}

/* Interception (intercept.c). */
static void render_intercept(struct text *t)
{
    const struct intercept_stats *s = intercept_stats();
    family(t, "ferry_intercept_tunnels_total", "counter",
           "CONNECTs that ferry answered itself to look inside (intercept = true).");
    sample_u64(t, "ferry_intercept_tunnels_total", NULL, s->tunnels);
    family(t, "ferry_intercept_requests_total", "counter",
           "Requests read inside intercepted CONNECTs.");
    sample_u64(t, "ferry_intercept_requests_total", NULL, s->requests);
    family(t, "ferry_intercept_handshake_failures_total", "counter",
           "Client TLS handshakes inside intercepted CONNECTs that failed, by reason.");
    for (int i = 0; i < INTERCEPT_HS_REASONS; i++) {
        char lbl[48];
        snprintf(lbl, sizeof(lbl), "reason=\"%s\"", intercept_hs_names[i]);
        sample_u64(t, "ferry_intercept_handshake_failures_total", lbl, s->hs_fail[i]);
    }
}

/* Retries by reason and the retry budget's refusals (retry.c). */
static void render_retry(struct text *t)
{
    static const char *const reasons[METRICS_RETRY_REASONS] = { "refused", "connect-failure",
                                                                "reset", "timeout", "status" };
    char lbl[16];
    family(t, "ferry_retry_reasons_total", "counter",
           "Retries by pool and by what the attempt they replace met.");
    for (unsigned s = 0; s < METRICS_POOL_SLOTS; s++) {
        for (int i = 0; metrics.pools[s] != NULL && i < METRICS_RETRY_REASONS; i++) {
            if (metrics.pools[s]->retry_reasons[i] > 0) {
                open1(t, "ferry_retry_reasons_total", "pool", metrics_pool_label(s, lbl));
                puts_(t, ",reason=\"");
                puts_(t, reasons[i]);
                puts_(t, "\"");
                close_u64(t, metrics.pools[s]->retry_reasons[i]);
            }
        }
    }
    family(t, "ferry_retry_budget_exhausted_total", "counter",
           "Retries not made because the pool's retry budget was spent (FERRY-3132), by pool.");
    for (unsigned s = 0; s < METRICS_POOL_SLOTS; s++) {
        if (metrics.pools[s] != NULL && metrics.pools[s]->retry_budget_exhausted > 0) {
            open1(t, "ferry_retry_budget_exhausted_total", "pool", metrics_pool_label(s, lbl));
            close_u64(t, metrics.pools[s]->retry_budget_exhausted);
        }
    }
}

/* The HTTP cache (cache.c): one series per cache, labelled by its pool
 * or listener; nothing when no cache is configured. */
struct cache_family {
    const char *name, *type, *help;
    size_t off; /* of the value in struct ferry_cache_stats */
};

static const struct cache_family cache_families[] = {
    { "ferry_cache_hits_total", "counter", "Requests answered fresh from the cache.",
      offsetof(struct ferry_cache_stats, hits) },
    { "ferry_cache_misses_total", "counter", "Cacheable requests that went to the upstream.",
      offsetof(struct ferry_cache_stats, misses) },
    { "ferry_cache_stale_total", "counter",
      "Requests answered with a stale entry (stale-if-error, stale-while-revalidate, max-stale).",
      offsetof(struct ferry_cache_stats, stale) },
    { "ferry_cache_revalidated_total", "counter",
      "Stale entries the upstream confirmed with a 304.",
      offsetof(struct ferry_cache_stats, revalidated) },
    { "ferry_cache_coalesced_total", "counter",
      "Misses that waited for another request's fetch of the same key.",
      offsetof(struct ferry_cache_stats, coalesced) },
    { "ferry_cache_evictions_total", "counter",
      "Entries dropped, least recently used first, to stay within size.",
      offsetof(struct ferry_cache_stats, evictions) },
    { "ferry_cache_purged_total", "counter",
      "Entries dropped by purge or by an unsafe request's invalidation.",
      offsetof(struct ferry_cache_stats, purged) },
    { "ferry_cache_too_large_total", "counter",
      "Responses over max_object: relayed whole, not stored.",
      offsetof(struct ferry_cache_stats, too_large) },
    { "ferry_cache_fill_refused_total", "counter",
      "Answers relayed, not stored, because the fills under way held the cache's size.",
      offsetof(struct ferry_cache_stats, fill_refused) },
    { "ferry_cache_filling_bytes", "gauge",
      "Bytes the fills under way hold now (answers being copied into new entries).",
      offsetof(struct ferry_cache_stats, filling) },
    { "ferry_cache_bytes", "gauge",
      "Bytes the cache holds now (heads, bodies, keys, bookkeeping).",
      offsetof(struct ferry_cache_stats, bytes) },
    { "ferry_cache_entries", "gauge", "Entries the cache holds now.",
      offsetof(struct ferry_cache_stats, entries) },
    { "ferry_cache_size_bytes", "gauge", "The cache's byte bound (size).",
      offsetof(struct ferry_cache_stats, size) },
};

static void render_cache(struct text *t)
{
    int n = ferry_cache_count();
    if (n <= 0) {
        return;
    }
    for (size_t f = 0; f < sizeof(cache_families) / sizeof(cache_families[0]); f++) {
        const struct cache_family *cf = &cache_families[f];
        family(t, cf->name, cf->type, cf->help);
        for (int i = 0; i < n; i++) {
            struct ferry_cache_stats st;
            const char *name;
            int kind;
            if (ferry_cache_info(i, &st, &name, &kind) != FERRY_OK) {
                continue;
            }
            uint64_t v;
            memcpy(&v, (const char *)&st + cf->off, sizeof(v));
            open1(t, cf->name, kind == FERRY_CACHE_LISTENER ? "listener" : "pool", name);
            close_u64(t, v);
        }
    }
}

static void render_core(struct text *t)
{
    char lbl[128];
    family(t, "ferry_build_info", "gauge", "Always 1; the labels say which ferry this is.");
    puts_(t, "ferry_build_info{version=\"");
    put_esc(t, metrics.version);
    puts_(t, "\"} 1");
    eol(t);
    family(t, "ferry_process_start_time_seconds", "gauge",
           "When the process started, in seconds since the epoch.");
    if (metrics.started_at == 0) {
        metrics_start(NULL); /* not the daemon (specs): the first scrape starts the clock */
    }
    sample_f64(t, "ferry_process_start_time_seconds", NULL, metrics.started_at);
    family(t, "ferry_connections_open", "gauge", "Client connections open now.");
    sample_u64(t, "ferry_connections_open", NULL, conn_count());
    render_requests(t);
    family(t, "ferry_retries_total", "counter",
           "Attempts retried on another member of the pool (failures and retried "
           "statuses), by pool.");
    for (unsigned s = 0; s < METRICS_POOL_SLOTS; s++) {
        if (metrics.pools[s] != NULL && metrics.pools[s]->retries > 0) {
            open1(t, "ferry_retries_total", "pool", metrics_pool_label(s, lbl));
            close_u64(t, metrics.pools[s]->retries);
        }
    }
    render_retry(t);
    family(t, "ferry_upstream_reuse_retries_total", "counter",
           "Requests sent again on a fresh connection after a kept upstream connection "
           "closed before answering, by pool.");
    for (unsigned s = 0; s < METRICS_POOL_SLOTS; s++) {
        if (metrics.pools[s] != NULL && metrics.pools[s]->reuse_retries > 0) {
            open1(t, "ferry_upstream_reuse_retries_total", "pool", metrics_pool_label(s, lbl));
            close_u64(t, metrics.pools[s]->reuse_retries);
        }
    }
    family(t, "ferry_ban_retries_total", "counter",
           "Requests sent again through another proxy after an exchange banned the one "
           "they went through (ban.retry), by pool.");
    for (unsigned s = 0; s < METRICS_POOL_SLOTS; s++) {
        if (metrics.pools[s] != NULL && metrics.pools[s]->ban_retries > 0) {
            open1(t, "ferry_ban_retries_total", "pool", metrics_pool_label(s, lbl));
            close_u64(t, metrics.pools[s]->ban_retries);
        }
    }
    render_conn_pools(t);
    render_intercept(t);
    render_cache(t);
    render_histo(t, "ferry_connect_duration_seconds", 0,
                 "Time to reach the upstream (resolve, connect, proxy handshake) of fresh "
                 "upstream connections, by pool.");
    render_histo(t, "ferry_request_duration_seconds", 1,
                 "Time from the request head to the end of the response (CONNECT: to the "
                 "tunnel being up), by pool.");
    family(t, "ferry_reloads_total", "counter", "Config reloads, by result.");
    sample_u64(t, "ferry_reloads_total", "result=\"ok\"", metrics.reloads_ok);
    sample_u64(t, "ferry_reloads_total", "result=\"error\"", metrics.reloads_failed);
    family(t, "ferry_config_last_reload_successful", "gauge",
           "1 if the last reload succeeded (or none was tried), 0 if it was refused.");
    sample_u64(t, "ferry_config_last_reload_successful", NULL, (uint64_t)metrics.last_reload_ok);
    family(t, "ferry_config_last_reload_success_timestamp_seconds", "gauge",
           "When the running config was loaded, in seconds since the epoch.");
    sample_f64(t, "ferry_config_last_reload_success_timestamp_seconds", NULL,
               metrics.last_reload_ok_at);
    family(t, "ferry_hook_errors_total", "counter",
           "Lua hooks that raised or returned garbage (a fallback was used), by kind.");
    for (int i = 0; i < METRICS_HOOK_KINDS; i++) {
        snprintf(lbl, sizeof(lbl), "kind=\"%s\"", metrics_hook_kinds[i]);
        sample_u64(t, "ferry_hook_errors_total", lbl, metrics.hook_errors[i]);
    }
    family(t, "ferry_probes_total", "counter", "Active health probes that ended, by result.");
    for (int i = 0; i < METRICS_PROBE_RESULTS; i++) {
        snprintf(lbl, sizeof(lbl), "result=\"%s\"", metrics_probe_results[i]);
        sample_u64(t, "ferry_probes_total", lbl, metrics.probes[i]);
    }
    family(t, "ferry_probes_in_flight", "gauge", "Active health probes running now.");
    sample_u64(t, "ferry_probes_in_flight", NULL, (uint64_t)ferry_probe_inflight());
    family(t, "ferry_sticky_sessions", "gauge", "Sticky session pins held now.");
    sample_u64(t, "ferry_sticky_sessions", NULL, ferry_sticky_count());
    render_authfail(t);
    render_mint(t);
}

/* Per proxy ---------------------------------------------------------- */

/* `proxy="L",pool="P"` of each member, escaped once per render. */
struct prefixes {
    struct text buf; /* private: all prefixes, NUL-separated */
    size_t *off;     /* private: member -> offset in buf */
};

static const char *prefix(const struct prefixes *px, uint32_t i)
{
    return px->buf.p + px->off[i];
}

/* A member's pool label: by name whatever its index (members are bounded). */
static const char *pool_name(int pool, char tmp[16])
{
    const char *name = pool < 0 ? "none" : ferry_pool_name(pool);
    if (name == NULL) {
        snprintf(tmp, 16, "%d", pool);
        return tmp;
    }
    return name;
}

static int build_prefixes(struct prefixes *px, const struct ferry_metrics_member *m, uint32_t n)
{
    char tmp[16], num[16];
    memset(px, 0, sizeof(*px));
    px->off = malloc((n ? n : 1) * sizeof(size_t));
    if (px->off == NULL) {
        return -1;
    }
    for (uint32_t i = 0; i < n; i++) {
        px->off[i] = px->buf.n;
        const char *label = m[i].label;
        if (label == NULL && m[i].proxy != NULL) {
            snprintf(num, sizeof(num), "%u", m[i].proxy->id);
            label = num;
        }
        puts_(&px->buf, "proxy=\"");
        put_esc(&px->buf, label != NULL ? label : "");
        puts_(&px->buf, "\",pool=\"");
        put_esc(&px->buf, pool_name(m[i].pool, tmp));
        /* A backend of a reverse pool says so; a proxy's labels stay as they were. */
        if (m[i].proxy != NULL && upstream_is_backend(m[i].proxy->scheme)) {
            puts_(&px->buf, "\",role=\"backend");
        }
        put(&px->buf, "\"", 2); /* with its NUL */
        px->buf.line = px->buf.n;
    }
    return px->buf.full ? -1 : 0;
}

enum proxy_field {
    PF_REQUESTS, PF_SUCCESSES, PF_ACTIVE, PF_UP, PF_DISABLED, PF_SCORE, PF_LATENCY, PF_DOWNS,
    PF_TARGET
};

static void per_member(struct text *t, const struct ferry_metrics_member *m, uint32_t n,
                       const struct prefixes *px, const char *name, enum proxy_field f)
{
    for (uint32_t i = 0; i < n; i++) {
        const struct ferry_proxy *p = m[i].proxy;
        if (p == NULL || (f == PF_SCORE && !(m[i].score >= 0))) {
            continue;
        }
        puts_(t, name);
        puts_(t, "{");
        puts_(t, prefix(px, i));
        switch (f) {
        case PF_REQUESTS: close_u64(t, p->requests); break;
        case PF_SUCCESSES: close_u64(t, p->successes); break;
        case PF_ACTIVE: close_f64(t, p->active); break;
        case PF_UP: close_u64(t, !(p->flags & FERRY_PROXY_DOWN)); break;
        case PF_DISABLED: close_u64(t, (p->flags & FERRY_PROXY_DISABLED) != 0); break;
        case PF_SCORE: close_f64(t, m[i].score); break;
        case PF_LATENCY: close_f64(t, p->latency_ewma_ms / 1000.0); break;
        case PF_DOWNS: close_u64(t, p->downs); break;
        case PF_TARGET: {
            const struct proxy *rp = proxy_by_id(p->id);
            close_u64(t, rp != NULL ? rp->target_failures : 0);
            break;
        }
        }
    }
}

/* Per (proxy, exchange) pair, for the proxies among the members. */
struct pair_walk {
    struct text *t;                          /* ro */
    const struct prefixes *px;               /* ro */
    const uint32_t *member_of;               /* ro: proxy id -> member index + 1 */
    uint32_t nids;                           /* ro: entries in member_of */
    int which;                               /* ro: 0 breaker, 1 banned, 2 bans */
    double now;                              /* ro */
};

static void pair_line(const struct ferry_pxstate *x, void *arg)
{
    const struct pair_walk *w = arg;
    if (x->proxy_id >= w->nids || w->member_of[x->proxy_id] == 0) {
        return;
    }
    static const char *const names[] = { "ferry_proxy_breaker_state", "ferry_proxy_banned",
                                         "ferry_proxy_bans_total" };
    struct text *t = w->t;
    puts_(t, names[w->which]);
    puts_(t, "{");
    puts_(t, prefix(w->px, w->member_of[x->proxy_id] - 1));
    puts_(t, ",exchange=\"");
    put_esc(t, metrics_exchange_label(x->exchange));
    puts_(t, "\"");
    if (w->which == 0) {
        /* The pool turns an open breaker half-open when it next selects
         * the member; past its cooldown it already takes a trial, so
         * show it half-open rather than open until traffic comes. */
        uint32_t state = x->breaker;
        if (state == FERRY_BREAKER_OPEN && w->now >= x->breaker_until) {
            state = FERRY_BREAKER_HALF_OPEN;
        }
        close_u64(t, state);
    } else if (w->which == 1) {
        close_u64(t, x->banned_until > w->now);
    } else {
        close_u64(t, x->bans_total);
    }
}

static void render_pairs(struct text *t, const struct ferry_metrics_member *m, uint32_t n,
                         const struct prefixes *px)
{
    static const char *const help[][3] = {
        { "ferry_proxy_breaker_state", "gauge",
          "Circuit breaker of a (proxy, exchange) pair: 0 closed, 1 open, 2 half-open." },
        { "ferry_proxy_banned", "gauge", "1 while an exchange bans the proxy." },
        { "ferry_proxy_bans_total", "counter", "Bans of the proxy by an exchange." },
    };
    uint32_t nids = ferry_proxy_count() + 1;
    uint32_t *member_of = calloc(nids, sizeof(uint32_t));
    if (member_of == NULL) {
        return;
    }
    for (uint32_t i = 0; i < n; i++) {
        const struct ferry_proxy *p = m[i].proxy;
        if (p != NULL && p->id < nids && member_of[p->id] == 0) {
            member_of[p->id] = i + 1;
        }
    }
    struct pair_walk w = { t, px, member_of, nids, 0, loop != NULL ? loop_now() : metrics_wall_now() };
    for (w.which = 0; w.which < 3; w.which++) {
        family(t, help[w.which][0], help[w.which][1], help[w.which][2]);
        health_pairs_each(pair_line, &w);
    }
    free(member_of);
}

static void render_pools(struct text *t, const struct ferry_metrics_member *m, uint32_t n)
{
    uint32_t *total = calloc(METRICS_POOL_SLOTS, sizeof(uint32_t));
    uint32_t *up = calloc(METRICS_POOL_SLOTS, sizeof(uint32_t));
    char tmp[16];
    if (total != NULL && up != NULL) {
        for (uint32_t i = 0; i < n; i++) {
            if (m[i].proxy == NULL) {
                continue;
            }
            unsigned s = metrics_pool_slot(m[i].pool);
            total[s]++;
            up[s] += m[i].proxy->flags == 0;
        }
        family(t, "ferry_pool_proxies", "gauge", "Proxies configured in the pool.");
        for (unsigned s = 0; s < METRICS_POOL_SLOTS; s++) {
            if (total[s] > 0) {
                open1(t, "ferry_pool_proxies", "pool", metrics_pool_label(s, tmp));
                close_u64(t, total[s]);
            }
        }
        family(t, "ferry_pool_proxies_up", "gauge",
               "Proxies of the pool that are up and enabled.");
        for (unsigned s = 0; s < METRICS_POOL_SLOTS; s++) {
            if (total[s] > 0) {
                open1(t, "ferry_pool_proxies_up", "pool", metrics_pool_label(s, tmp));
                close_u64(t, up[s]);
            }
        }
    }
    free(total);
    free(up);
}

static void render_proxies(struct text *t, const struct ferry_metrics_member *m, uint32_t n)
{
    static const char *const kinds[FERRY_FAIL_KINDS] = { "refused", "timeout", "handshake",
                                                         "auth",    "http5xx", "reset",
                                                         "tls" };
    static const struct {
        const char *name, *type, *help;
        enum proxy_field f;
    } simple[] = {
        { "ferry_proxy_requests_total", "counter", "Attempts started through the proxy.",
          PF_REQUESTS },
        { "ferry_proxy_successes_total", "counter", "Attempts through the proxy that worked.",
          PF_SUCCESSES },
        { "ferry_proxy_active_connections", "gauge",
          "Attempts and connections using the proxy now.", PF_ACTIVE },
        { "ferry_proxy_up", "gauge", "1 unless health checks or traffic marked the proxy down.",
          PF_UP },
        { "ferry_proxy_disabled", "gauge", "1 when an operator disabled the proxy.",
          PF_DISABLED },
        { "ferry_proxy_health_score", "gauge",
          "Health score 0-100 (70 % success rate, 30 % latency, x0.9 after a recent error).",
          PF_SCORE },
        { "ferry_proxy_latency_seconds", "gauge",
          "Connect and handshake time through the proxy, moving average (0: no sample).",
          PF_LATENCY },
        { "ferry_proxy_downs_total", "counter", "Times the proxy went down.", PF_DOWNS },
        { "ferry_proxy_target_failures_total", "counter",
          "Attempts the destination failed, not the proxy (refused or unreachable target, "
          "oversized origin response head); never charged to health.", PF_TARGET },
    };
    struct prefixes px;
    if (build_prefixes(&px, m, n) != 0) {
        free(px.buf.p);
        free(px.off);
        return;
    }
    render_pools(t, m, n);
    for (size_t k = 0; k < sizeof(simple) / sizeof(simple[0]); k++) {
        family(t, simple[k].name, simple[k].type, simple[k].help);
        per_member(t, m, n, &px, simple[k].name, simple[k].f);
    }
    family(t, "ferry_proxy_failures_total", "counter",
           "Attempts through the proxy that failed, by kind.");
    for (uint32_t i = 0; i < n; i++) {
        if (m[i].proxy == NULL) {
            continue;
        }
        for (int k = 0; k < FERRY_FAIL_KINDS; k++) {
            puts_(t, "ferry_proxy_failures_total{");
            puts_(t, prefix(&px, i));
            puts_(t, ",kind=\"");
            puts_(t, kinds[k]);
            puts_(t, "\"");
            close_u64(t, m[i].proxy->fail_kind[k]);
        }
    }
    family(t, "ferry_proxy_probes_total", "counter",
           "Active health probes of the proxy, by result.");
    for (uint32_t i = 0; i < n; i++) {
        if (m[i].proxy == NULL) {
            continue;
        }
        puts_(t, "ferry_proxy_probes_total{");
        puts_(t, prefix(&px, i));
        puts_(t, ",result=\"ok\"");
        close_u64(t, m[i].proxy->probes_ok);
        puts_(t, "ferry_proxy_probes_total{");
        puts_(t, prefix(&px, i));
        puts_(t, ",result=\"failed\"");
        close_u64(t, m[i].proxy->probes_failed);
    }
    for (size_t k = 0; k < CONN_FIELDS; k++) {
        char name[96];
        snprintf(name, sizeof(name), "ferry_proxy_%s", conn_fields[k].name);
        conn_family(t, "ferry_proxy_", &conn_fields[k], "proxy");
        for (uint32_t i = 0; i < n; i++) {
            if (m[i].proxy == NULL) {
                continue;
            }
            struct ferry_conn_stats s;
            ferry_conn_stats_proxy(m[i].proxy->id, &s);
            puts_(t, name);
            puts_(t, "{");
            puts_(t, prefix(&px, i));
            close_u64(t, conn_value(&s, &conn_fields[k]));
        }
    }
    render_pairs(t, m, n, &px);
    free(px.buf.p);
    free(px.off);
}

const char *ferry_metrics_text(const struct ferry_metrics_member *m, uint32_t n,
                               const char *extra, size_t *len)
{
    out.n = out.line = 0;
    out.full = 0;
    render_core(&out);
    if (m != NULL && n > 0) {
        render_proxies(&out, m, n);
    }
    if (extra != NULL) {
        puts_(&out, extra);
    }
    if (out.full && !truncated_logged) {
        truncated_logged = 1;
        log_event(LOG_ERROR, "FERRY-7403", NULL,
                  "metrics: the text outgrew its %u MiB bound and was cut short",
                  TEXT_MAX >> 20);
    }
    if (reserve(&out, 1) == 0) {
        out.p[out.n] = '\0';
    }
    if (len != NULL) {
        *len = out.n;
    }
    return out.p != NULL ? out.p : "";
}
