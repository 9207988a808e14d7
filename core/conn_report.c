/* conn_report.c - the outcome of each attempt through a proxy, told to
 * the proxy's passive health, to its (proxy, exchange) pair and to Lua
 * (breakers, ban rules, on_response).
 *
 * When the exchange wants to read the response (FERRY_REQ_CAPTURE) the
 * report waits until the first CAPTURE_MAX body bytes have passed, or
 * the response ended, and hands Lua the head and that body prefix.  The
 * capture lives in its own allocation, made only then: a conn carries
 * one pointer for it, NULL the rest of the time. */
#include "bridge.h"
#include "conn.h"
#include "health.h"
#include "proxy.h"

#include <stdlib.h>
#include <string.h>

#define CAPTURE_MAX 4096

/* A response head and the first bytes of its body, for Lua. */
struct report_cap {
    size_t head;  /* head bytes at data's start */
    size_t len;   /* all bytes in data */
    size_t cap;   /* room in data */
    char data[];
};

static struct report_cap *cap_new(const char *head, size_t len, size_t room)
{
    struct report_cap *k = malloc(sizeof(*k) + len + room);
    if (k != NULL) {
        memcpy(k->data, head, len);
        k->head = k->len = len;
        k->cap = len + room;
    }
    return k;
}

static void cap_free(struct conn *c)
{
    free(c->cap);
    c->cap = NULL;
}

/* Report the attempt, with k (NULL or a capture, freed here) for Lua;
 * without one, head (NULL or the response head in up.in, hlen bytes)
 * still lets the ban read Retry-After. */
static void report_with(struct conn *c, struct report_cap *k, int ok,
                        enum ferry_fail_kind kind, int status, const char *head, size_t hlen)
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
    /* Lua would do nothing with this success (FERRY_REQ_QUIET_OK): no
     * call, which is a good part of a request's Lua time.  A half-open
     * breaker still hears of it (a success closes it). */
    if (ok && k == NULL && (c->req_flags & FERRY_REQ_QUIET_OK) && x != NULL &&
        x->breaker == FERRY_BREAKER_CLOSED) {
        conn_ban_verdict(c, 0);
        return;
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
    if (k != NULL) {
        r.head = k->data;
        r.head_len = (uint32_t)k->head;
        r.body = k->data + k->head;
        r.body_len = (uint32_t)(k->len - k->head);
    } else if (head != NULL) {
        r.head = head;
        r.head_len = (uint32_t)hlen;
    }
    bridge_result(&r);
    free(k);
    conn_ban_verdict(c, r.banned);
}

/* The waiting report goes out now, with what was captured. */
static void report_pending(struct conn *c, int ok, enum ferry_fail_kind kind, int status)
{
    struct report_cap *k = c->cap;
    c->cap = NULL;
    report_with(c, k, ok, kind, status, NULL, 0);
}

void conn_report(struct conn *c, int ok, enum ferry_fail_kind kind, int status)
{
    if (c->proxy == NULL || !c->counted) {
        return;
    }
    if (c->cap != NULL) {
        /* The response broke while its body was being captured. */
        report_pending(c, 0, kind, c->status);
        return;
    }
    report_with(c, NULL, ok, kind, status, NULL, 0);
}

void conn_report_head(struct conn *c, const char *head, size_t len, int status)
{
    if (c->proxy == NULL || !c->counted) {
        return;
    }
    int ok = status < 500;
    cap_free(c);
    if (!(c->req_flags & FERRY_REQ_CAPTURE)) {
        report_with(c, NULL, ok, FERRY_FAIL_HTTP5XX, status, head, len);
        return;
    }
    if (!c->resp.has_body) {
        report_with(c, cap_new(head, len, 0), ok, FERRY_FAIL_HTTP5XX, status, head, len);
        return;
    }
    c->cap = cap_new(head, len, CAPTURE_MAX);
    if (c->cap == NULL) {
        report_with(c, NULL, ok, FERRY_FAIL_HTTP5XX, status, head, len);
    }
}

void conn_report_body(struct conn *c, const char *p, size_t n, int done)
{
    struct report_cap *k = c->cap;
    if (k == NULL) {
        return;
    }
    size_t room = k->cap - k->len;
    size_t take = n < room ? n : room;
    memcpy(k->data + k->len, p, take);
    k->len += take;
    if (done || k->len == k->cap) {
        report_pending(c, c->status < 500, FERRY_FAIL_HTTP5XX, c->status);
    }
}

void conn_report_flush(struct conn *c)
{
    if (c->cap != NULL && c->proxy != NULL) {
        report_pending(c, c->status < 500, FERRY_FAIL_HTTP5XX, c->status);
    }
    cap_free(c);
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
