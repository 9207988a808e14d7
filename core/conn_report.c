/* conn_report.c - the outcome of each attempt through a proxy, told to
 * the proxy's passive health, to its (proxy, exchange) pair and to Lua
 * (breakers, ban rules, on_response).
 *
 * When the exchange wants to read the response (FERRY_REQ_CAPTURE) the
 * report waits until the first CAPTURE_MAX body bytes have passed, or
 * the response ended, and hands Lua the head and that body prefix. */
#include "bridge.h"
#include "conn.h"
#include "health.h"
#include "proxy.h"

#include <stdlib.h>
#include <string.h>

#define CAPTURE_MAX 4096

static void report_now(struct conn *c, int ok, enum ferry_fail_kind kind, int status)
{
    struct proxy *p = c->proxy;
    double ms = (loop_now() - c->t_attempt) * 1000.0;
    if (ok) {
        proxy_success(p, -1);
    } else {
        proxy_failure(p, kind);
    }
    struct ferry_pxstate *x = ferry_pxstate_get(p->pub.id, c->exchange);
    if (x != NULL) {
        /* A kept connection's time to the head has no setup in it: no sample. */
        health_pair_result(x, ok, ok && !c->pooled ? ms : -1);
    }
    struct ferry_result r;
    memset(&r, 0, sizeof(r));
    r.proxy_id = p->pub.id;
    r.exchange = c->exchange;
    r.pool = c->pool;
    r.ok = ok;
    r.kind = ok ? -1 : (int32_t)kind;
    r.status = status;
    r.latency_ms = ms;
    r.host = c->host;
    r.host_len = (uint32_t)strlen(c->host);
    if (c->cap != NULL) {
        r.head = c->cap;
        r.head_len = (uint32_t)c->cap_head;
        r.body = c->cap + c->cap_head;
        r.body_len = (uint32_t)(c->cap_len - c->cap_head);
    }
    bridge_result(&r);
    free(c->cap);
    c->cap = NULL;
    c->cap_head = c->cap_len = 0;
    c->report_pending = 0;
}

void conn_report(struct conn *c, int ok, enum ferry_fail_kind kind, int status)
{
    if (c->proxy == NULL || !c->counted) {
        return;
    }
    if (c->report_pending) {
        /* The response broke while its body was being captured. */
        report_now(c, 0, kind, c->status);
        return;
    }
    report_now(c, ok, kind, status);
}

void conn_report_head(struct conn *c, const char *head, size_t len, int status)
{
    if (c->proxy == NULL || !c->counted) {
        return;
    }
    int ok = status < 500;
    if (!(c->req_flags & FERRY_REQ_CAPTURE) || !c->resp.has_body) {
        if (c->req_flags & FERRY_REQ_CAPTURE) {
            c->cap = malloc(len);
            if (c->cap != NULL) {
                memcpy(c->cap, head, len);
                c->cap_head = c->cap_len = len;
            }
        }
        report_now(c, ok, FERRY_FAIL_HTTP5XX, status);
        return;
    }
    free(c->cap);
    c->cap = malloc(len + CAPTURE_MAX);
    if (c->cap == NULL) {
        report_now(c, ok, FERRY_FAIL_HTTP5XX, status);
        return;
    }
    memcpy(c->cap, head, len);
    c->cap_head = c->cap_len = len;
    c->report_pending = 1;
}

void conn_report_body(struct conn *c, const char *p, size_t n, int done)
{
    if (!c->report_pending) {
        return;
    }
    size_t room = c->cap_head + CAPTURE_MAX - c->cap_len;
    size_t take = n < room ? n : room;
    memcpy(c->cap + c->cap_len, p, take);
    c->cap_len += take;
    if (done || c->cap_len == c->cap_head + CAPTURE_MAX) {
        report_now(c, c->status < 500, FERRY_FAIL_HTTP5XX, c->status);
    }
}

void conn_report_flush(struct conn *c)
{
    if (c->report_pending && c->proxy != NULL) {
        report_now(c, c->status < 500, FERRY_FAIL_HTTP5XX, c->status);
    }
    free(c->cap);
    c->cap = NULL;
    c->cap_head = c->cap_len = 0;
    c->report_pending = 0;
}

void conn_report_target(struct conn *c)
{
    if (c->proxy == NULL || !c->counted) {
        return;
    }
    /* The proxy did its part: no success, no failure, only this count
     * (ferry_proxy_target_failures_total). */
    c->proxy->target_failures++;
}
