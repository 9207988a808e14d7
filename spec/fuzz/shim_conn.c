/* shim_conn.c - the world around core/conn_http.c, as the head harness
 * needs it: no event loop, no Lua, no sockets.
 *
 * conn_http.c is linked as it is; everything it calls outside http.c,
 * buf.c, errors.c and sticky.c lands here.  Routing stops at conn_route
 * (the harness then writes the upstream head itself), a failure is
 * recorded, and log lines are formatted (so a bad format argument still
 * shows under the sanitizers) and dropped.  When conn_http.c starts to
 * call something new, the link fails naming it: add a stub here. */
#include "shim_conn.h"

#include "../../core/authfail.h"
#include "../../core/conn.h"
#include "../../core/health.h"
#include "../../core/listener.h"
#include "../../core/log.h"
#include "../../core/metrics.h"
#include "../../core/proxy.h"
#include "../../core/rate.h"
#include "../../core/retry.h"

#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

struct ev_loop *loop;
struct timeouts timeouts = { .client_head = 10, .connect = 5, .first_byte = 30, .idle = 300,
                             .keepalive = 60, .request = 60 };
struct shim_state shim;

ev_tstamp ev_now(struct ev_loop *l)
{
    (void)l;
    return 1000.0;
}

/* The row of upstream.c's table conn_http.c and conn_head.c ask about. */
int upstream_absolute(unsigned scheme)
{
    return scheme == FERRY_SCHEME_HTTP || scheme == FERRY_SCHEME_HTTPS;
}

void conn_route(struct conn *c)
{
    (void)c;
    shim.routed++;
}

/* conn.c's path storage, as conn.c keeps it: "" when none, else heap. */
static char no_path[1];

void conn_set_path(struct conn *c, const char *p, size_t n)
{
    if (c->path != no_path) {
        free(c->path);
    }
    c->path = no_path;
    if (n == 0) {
        return;
    }
    char *s = malloc(n + 1);
    if (s != NULL) {
        memcpy(s, p, n);
        s[n] = '\0';
        c->path = s;
    }
}

void conn_idle_trim(struct conn *c)
{
    http_msg_release(&c->req);
    http_msg_release(&c->resp);
    conn_set_path(c, NULL, 0);
}

void conn_close(struct conn *c)
{
    (void)c;
    shim.closed++;
}

void conn_arm(struct conn *c, double secs)
{
    (void)c;
    (void)secs;
}

void conn_attempt_failed(struct conn *c, enum ferry_fail_kind kind, enum ferr e)
{
    (void)c;
    (void)kind;
    (void)e;
}

void conn_report(struct conn *c, int ok, enum ferry_fail_kind kind, int status)
{
    (void)c;
    (void)ok;
    (void)kind;
    (void)status;
}

void conn_report_head(struct conn *c, const char *head, size_t len, int status)
{
    (void)c;
    (void)head;
    (void)len;
    (void)status;
}

void conn_report_body(struct conn *c, const char *p, size_t n, int done)
{
    (void)c;
    (void)p;
    (void)n;
    (void)done;
}

void conn_report_flush(struct conn *c)
{
    (void)c;
}

void conn_report_target(struct conn *c)
{
    (void)c;
}

/* Retry on ban (conn_banretry.c): nothing is held in the harness. */
int conn_ban_hold_begin(struct conn *c, int status)
{
    (void)c;
    (void)status;
    return 0;
}

int conn_ban_settle(struct conn *c)
{
    (void)c;
    return 0;
}

void conn_ban_reset(struct conn *c)
{
    (void)c;
}

/* Retries (retry.c): no pool, no budget in the harness. */
void retry_request_end(struct conn *c)
{
    (void)c;
}

const char *retry_log_text(const struct conn *c, char *buf, size_t cap)
{
    (void)c;
    (void)buf;
    (void)cap;
    return NULL;
}

void conn_tunnel_begin(struct conn *c)
{
    (void)c;
}

void conn_upstream_close(struct conn *c)
{
    (void)c;
}

void conn_upstream_release(struct conn *c, int keep)
{
    (void)c;
    (void)keep;
}

const char *ferry_pool_name(int index)
{
    (void)index;
    return "fuzz";
}

const char *health_exchange_name(uint32_t id)
{
    (void)id;
    return "fuzz";
}

const char *listener_auth(struct listener *l, const char *value, size_t len)
{
    (void)l;
    (void)value;
    (void)len;
    return NULL;
}

const char *listener_auth_ctl(struct listener *l, const char *value, size_t len, struct ctl *k)
{
    (void)l;
    (void)value;
    (void)len;
    (void)k;
    return NULL;
}

/* The harness's listener has no users: no address is ever throttled. */
int authfail_blocked(const struct listener *l, const char *client)
{
    (void)l;
    (void)client;
    return 0;
}

int authfail_count(const struct listener *l, const char *client)
{
    (void)l;
    (void)client;
    return 0;
}

int authfail_missing(const struct listener *l, const char *client)
{
    (void)l;
    (void)client;
    return 0;
}

unsigned authfail_retry_after(const char *client)
{
    (void)client;
    return 1;
}

/* Rate budgets (rate.c): the harness never routes, so nothing waits. */
unsigned rate_retry_after(const struct conn *c)
{
    (void)c;
    return 1;
}

void log_event(int level, const char *code, const struct log_ctx *ctx, const char *fmt, ...)
{
    char line[1024];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(line, sizeof(line), fmt, ap);
    va_end(ap);
    (void)level;
    (void)ctx;
    shim.code = code;
}

void log_access(const struct log_ctx *ctx, const char *client, const char *method,
                const char *host, int port, const char *path, int status,
                unsigned long long bytes_in, unsigned long long bytes_out, double ms,
                int attempts, const char *code)
{
    char line[2048];
    snprintf(line, sizeof(line), "%s %s %s:%d%s %d %llu %llu %.1f %d %s",
             ctx->cid ? ctx->cid : "-", method, host, port, path, status, bytes_in,
             bytes_out, ms, attempts, code ? code : "-");
    (void)client;
    shim.status = status;
}

void metrics_request_end(struct conn *c, const char *code)
{
    (void)c;
    (void)code;
}


/* conn_reverse.c: the harnesses drive the forward listener only. */
int conn_is_reverse(const struct conn *c)
{
    (void)c;
    return 0;
}

enum ferr conn_reverse_err(enum ferr e)
{
    return e;
}

const char *conn_reverse_pool_host(int pool)
{
    (void)pool;
    return NULL;
}

/* The HTTP cache (conn_cache.c): no pool of a harness has a cache, so
 * c->cache stays NULL and none of these is reached; they only link. */
int conn_cache_response(struct conn *c, const char *base, size_t hl)
{
    (void)c;
    (void)base;
    (void)hl;
    return 0;
}

void conn_cache_tee(struct conn *c, const char *p, size_t n)
{
    (void)c;
    (void)p;
    (void)n;
}

void conn_cache_complete(struct conn *c)
{
    (void)c;
}

int conn_cache_rescue(struct conn *c, enum ferr e)
{
    (void)c;
    (void)e;
    return 0;
}

void conn_cache_end(struct conn *c)
{
    (void)c;
}

int conn_cache_drops(const struct conn *c, const char *name, size_t len)
{
    (void)c;
    (void)name;
    (void)len;
    return 0;
}

const char *conn_cache_validators(const struct conn *c, size_t *len)
{
    (void)c;
    *len = 0;
    return NULL;
}
