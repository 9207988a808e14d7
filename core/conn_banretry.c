/* conn_banretry.c - responses held back for a retry: retry on ban, and
 * retry on status.
 *
 * An exchange's ban rule or on_response verdict bans the (proxy,
 * exchange) pair.  With `ban.retry = N` the ban decision is also taken
 * for the request in flight; and a pool whose `retry.on` lists a status
 * (503, 504, ...) retries a response with that status.  Either way, while
 * nothing of the response has reached the client, the request is
 * idempotent (or carries Idempotency-Key) and it is still whole in cli.in
 * (c->replayable), the response is held in cli.out (the client leg does
 * not write) until it is known whether it goes out.  A response to retry
 * is dropped, its upstream connection closed, and the request goes again
 * to another member (the one that answered is in c->tried; a ban also
 * makes it ineligible for the exchange).
 *
 * A ban: up to N times, at once, not spending the pool's retries; when
 * every try is banned the client gets the last answer with
 * X-Ferry-Error: FERRY-6030.  A status: within the pool's retries, after
 * its back-off and within its retry budget (retry.c); when no try is
 * left the client gets the last answer as the member sent it (FERRY-3131
 * on the access line).
 *
 * The hold is bounded by cli.out (CONN_BUF_SIZE): the verdict is taken
 * on the body prefix that fits (conn_report.c captures at most
 * CAPTURE_MAX bytes of it anyway). */
#include "conn.h"
#include "health.h"
#include "listener.h"
#include "log.h"
#include "metrics.h"
#include "proxy.h"
#include "retry.h"

#include <stdlib.h>
#include <string.h>

/* The mark on an answer that was banned on every try. */
#define BAN_CODE "FERRY-6030"
#define BAN_HEADER "X-Ferry-Error: " BAN_CODE "\r\n"

/* The last answer dropped for a retry, kept whole (a banned one with its
 * mark), for a retry that finds no member left. */
struct ban_stash {
    int status;
    int by_ban;   /* dropped for a ban (marked), else for its status */
    uint32_t proxy_id; /* the member that answered it */
    size_t len;
    char data[];
};

static int ban_idempotent(const struct conn *c)
{
    return http_method_idempotent(c->req.method) || c->req.idem_key.len > 0;
}

/* A ban of this request may be retried at all (the exchange's ban.retry). */
static int ban_on(const struct conn *c)
{
    return c->ban_retry != 0 && c->proxy != NULL && c->exchange != 0;
}

/* A held response with a status the pool retries may be sent again now:
 * a try left, replayable, the back-off ends before the deadline.  Else
 * c->retry_stop says why not. */
static int status_can_retry(struct conn *c)
{
    const char *stop = NULL;
    if ((int)(c->attempt - c->ban_retried) >= c->retries) {
        stop = c->retries > 0 ? "tries" : NULL;
    } else if (!c->replayable) {
        stop = "no_replay";
    } else if (loop_now() + c->retry_delay >= c->deadline) {
        stop = "deadline";
    } else {
        return 1;
    }
    c->retry_stop = stop;
    return 0;
}

static void status_exhausted(struct conn *c, int status, const char *why);

static void ban_log_ctx(struct conn *c, struct log_ctx *ctx)
{
    memset(ctx, 0, sizeof(*ctx));
    ctx->cid = c->cid;
    ctx->listener = c->l->name;
    ctx->pool = c->pool > 0 ? ferry_pool_name(c->pool) : NULL;
    ctx->exchange = c->exchange != 0 ? health_exchange_name(c->exchange) : NULL;
    ctx->proxy = c->proxy != NULL ? c->proxy->display : NULL;
}

void conn_ban_reset(struct conn *c)
{
    free(c->ban_stash);
    c->ban_stash = NULL;
    c->ban_note = NULL;
    c->ban_why = NULL;
    c->ban_retried = 0;
    c->ban_hold = c->ban_decided = c->ban_banned = 0;
}

int conn_ban_hold_begin(struct conn *c, int status)
{
    c->ban_hold = c->ban_decided = c->ban_banned = 0;
    c->hold_status = 0;
    c->ban_why = NULL;
    int ban = ban_on(c);
    int st = c->proxy != NULL && retry_on_status(c->pool, status);
    if (!ban && !st) {
        return 0;
    }
    /* Why this response could not be retried (access line). */
    const char *why = NULL;
    if (!c->replayable) {
        why = "no_replay";
    } else if (!ban_idempotent(c)) {
        why = "not_idempotent";
    } else if (status == 101) {
        why = "upgrade";
    }
    if (why != NULL) {
        c->ban_why = ban ? why : NULL;
        c->retry_stop = st ? why : c->retry_stop;
        return 0;
    }
    if (st) {
        c->retry_delay = retry_backoff(c->pool, c->attempt - c->ban_retried);
        st = status_can_retry(c);
        if (!st && !ban) {
            status_exhausted(c, status, c->retry_stop != NULL ? c->retry_stop : "no retry");
        }
    }
    if (!ban && !st) {
        return 0;
    }
    if (!buf_empty(&c->cli.out)) {
        return -1; /* the previous response is still leaving: hold from an empty cli.out */
    }
    c->ban_hold = 1;
    c->hold_status = (unsigned)st;
    if (!ban) {
        c->ban_decided = 1; /* no ban can retry it: the status decided */
    }
    return 1;
}

void conn_ban_verdict(struct conn *c, int banned)
{
    if (c->ban_hold) {
        c->ban_decided = 1;
        c->ban_banned = banned != 0;
    } else if (banned && c->ban_why != NULL) {
        c->ban_note = c->ban_why;
        struct log_ctx ctx;
        ban_log_ctx(c, &ctx);
        log_event(LOG_INFO, "FERRY-6031", &ctx, "%s %s:%d: banned, not retried (%s)", c->method,
                  c->host, c->port, c->ban_why);
    }
}

/* Put the mark right after the status line of the answer at p (len
 * bytes), into dst (room for len + the mark). */
static size_t ban_mark(char *dst, const char *p, size_t len)
{
    const char *eol = memchr(p, '\n', len);
    size_t at = eol != NULL ? (size_t)(eol - p) + 1 : 0;
    memcpy(dst, p, at);
    memcpy(dst + at, BAN_HEADER, sizeof(BAN_HEADER) - 1);
    memcpy(dst + at + sizeof(BAN_HEADER) - 1, p + at, len - at);
    return len + sizeof(BAN_HEADER) - 1;
}

/* Mark the held answer in cli.out; without room for the mark it goes
 * out unmarked (the access line still carries the code). */
static void ban_mark_held(struct conn *c)
{
    size_t len = buf_len(&c->cli.out);
    if (buf_room(&c->cli.out) < sizeof(BAN_HEADER) - 1) {
        return;
    }
    char *tmp = malloc(len + sizeof(BAN_HEADER));
    if (tmp == NULL) {
        return;
    }
    size_t n = ban_mark(tmp, buf_head(&c->cli.out), len);
    buf_consume(&c->cli.out, len);
    buf_append(&c->cli.out, tmp, n);
    c->bytes_out += n - len;
    free(tmp);
}

/* Keep the held answer when it is whole: marked when banned. */
static void ban_stash_keep(struct conn *c, int by_ban)
{
    free(c->ban_stash);
    c->ban_stash = NULL;
    if (!c->resp_done) {
        return;
    }
    size_t len = buf_len(&c->cli.out);
    struct ban_stash *s = malloc(sizeof(*s) + len + sizeof(BAN_HEADER));
    if (s == NULL) {
        return;
    }
    s->status = c->status;
    s->by_ban = by_ban;
    s->proxy_id = c->proxy != NULL ? c->proxy->pub.id : 0;
    if (by_ban) {
        s->len = ban_mark(s->data, buf_head(&c->cli.out), len);
    } else {
        memcpy(s->data, buf_head(&c->cli.out), len);
        s->len = len;
    }
    c->ban_stash = s;
}

/* The held response goes out as it is. */
static void ban_release(struct conn *c)
{
    c->ban_hold = 0;
    c->replayable = 0;
    if (c->req_done) {
        buf_consume(&c->cli.in, c->fwd);
        c->fwd = 0;
    }
    free(c->ban_stash);
    c->ban_stash = NULL;
}

/* Drop the held answer and send the request again: at once after a ban,
 * after the pool's back-off for a status. */
static void hold_retry(struct conn *c, int by_ban)
{
    struct log_ctx ctx;
    ban_log_ctx(c, &ctx);
    if (by_ban) {
        log_event(LOG_INFO, "FERRY-6032", &ctx, "%s %s:%d: status %d banned the proxy; "
                  "sending again through another one (retry %u of %u)", c->method, c->host,
                  c->port, c->status, c->ban_retried + 1u, (unsigned)c->ban_retry);
    } else {
        log_event(LOG_INFO, "FERRY-3130", &ctx, "%s %s:%d: status %d is one the pool retries "
                  "on; sending again to another member in %.0f ms (retry %u of %d)",
                  c->method, c->host, c->port, c->status, c->retry_delay * 1000.0,
                  c->attempt - c->ban_retried + 1u, c->retries);
        retry_note(c, RETRY_STATUS, c->status);
    }
    ban_stash_keep(c, by_ban);
    size_t k = buf_len(&c->cli.out);
    buf_consume(&c->cli.out, k);
    c->bytes_out = c->bytes_out > k ? c->bytes_out - k : 0;
    c->sent_any = 0;
    c->status = 0;
    c->ban_hold = c->ban_decided = c->ban_banned = 0;
    c->hold_status = 0;
    if (by_ban) {
        c->ban_retried++;
        metrics_ban_retry(c->pool);
    }
    conn_report_flush(c);
    /* The connection is closed, never pooled: a banned proxy is done with
     * this exchange for now, a failing member gets a fresh start. */
    conn_upstream_close(c);
    c->resp_head_done = c->resp_done = 0;
    c->dechunk = 0;
    c->keep_client = 0;
    c->attempt++;
    c->last_err = by_ban ? FERR_BAN_EXHAUSTED : FERR_RETRY_STATUS;
    c->fwd = 0;
    c->req_done = 0;
    c->state = CS_BACKOFF;
    conn_arm(c, by_ban ? 0. : c->retry_delay);
}

static int ban_can_retry(const struct conn *c)
{
    return c->ban_retried < c->ban_retry && c->replayable && loop_now() < c->deadline;
}

/* The client gets a retried status after all: say so once (access line
 * code FERRY-3131), when retries were made for it. */
static void status_exhausted(struct conn *c, int status, const char *why)
{
    if (c->nretry_log == 0) {
        return;
    }
    c->code = "FERRY-3131";
    struct log_ctx ctx;
    ban_log_ctx(c, &ctx);
    log_event(LOG_WARN, "FERRY-3131", &ctx, "%s %s:%d: retries of a status the pool retries "
              "on ended after %u tries (%s); the client gets the last answer (status %d)",
              c->method, c->host, c->port, c->attempt + 1u, why, status);
}

int conn_ban_stalled(struct conn *c)
{
    if (!c->ban_hold) {
        return 0;
    }
    if (!c->ban_decided) {
        conn_report_flush(c); /* the verdict on the prefix that came */
    }
    if (c->ban_decided && c->ban_banned && ban_on(c) && ban_can_retry(c)) {
        hold_retry(c, 1);
        return 1;
    }
    if (c->hold_status && status_can_retry(c) && retry_budget_take(c)) {
        hold_retry(c, 0);
        return 1;
    }
    return 0;
}

int conn_ban_settle(struct conn *c)
{
    if (!c->ban_hold) {
        return 0;
    }
    if (!c->ban_decided) {
        /* The capture cannot grow: the answer ended, or cli.out is full. */
        if (c->resp_done || buf_room(&c->cli.out) == 0) {
            conn_report_flush(c);
        }
        if (!c->ban_decided) {
            if (c->cap != NULL) {
                return 0; /* the report waits for the body prefix Lua reads */
            }
            c->ban_decided = 1; /* no report went to Lua: no ban */
        }
    }
    int banned = c->ban_banned && ban_on(c);
    int by_ban = banned && ban_can_retry(c);
    int by_status = !by_ban && c->hold_status && status_can_retry(c);
    if (by_ban || by_status) {
        if (!c->resp_done && buf_room(&c->cli.out) > 0) {
            /* Read the rest, to keep it whole in case no member is left
             * (a stalled rest: conn_ban_stalled retries at the idle timeout). */
            return 0;
        }
        if (by_status && !retry_budget_take(c)) {
            status_exhausted(c, c->status, "retry budget spent");
            ban_release(c); /* the answer it had */
            return 0;
        }
        hold_retry(c, by_ban);
        return 1;
    }
    if (!banned) {
        if (c->hold_status) {
            status_exhausted(c, c->status, c->retry_stop != NULL ? c->retry_stop : "no retry");
        }
        ban_release(c);
        return 0;
    }
    struct log_ctx ctx;
    ban_log_ctx(c, &ctx);
    if (!c->replayable && c->ban_retried == 0) {
        /* The body outgrew the buffer while the answer was held. */
        c->ban_note = "no_replay";
        log_event(LOG_INFO, "FERRY-6031", &ctx, "%s %s:%d: banned, not retried (no_replay)",
                  c->method, c->host, c->port);
        ban_release(c);
        return 0;
    }
    c->ban_note = "exhausted";
    c->code = BAN_CODE;
    log_event(LOG_WARN, BAN_CODE, &ctx, "%s %s:%d: banned on every try (%u), the client gets "
              "the last answer (status %d)", c->method, c->host, c->port,
              c->ban_retried + 1u, c->status);
    ban_mark_held(c);
    ban_release(c);
    return 0;
}

int conn_ban_no_other(struct conn *c)
{
    if (c->ban_retried == 0 || c->last_err != FERR_BAN_EXHAUSTED || c->proxy == NULL) {
        return 0;
    }
    struct ferry_pxstate *x = ferry_pxstate_get(c->proxy->pub.id, c->exchange);
    if (x == NULL || x->banned_until <= loop_now()) {
        return 0;
    }
    /* The answer came through the proxy of the last try, not this one. */
    c->proxy = c->ntried > 0 ? proxy_by_id(c->tried[c->ntried - 1]) : NULL;
    if (!conn_ban_answer_last(c)) {
        conn_fail(c, FERR_BAN_EXHAUSTED);
    }
    return 1;
}

int conn_ban_answer_last(struct conn *c)
{
    struct ban_stash *s = c->ban_stash;
    if (s == NULL) {
        return 0;
    }
    c->ban_stash = NULL;
    /* The retry that found no member never went out. */
    c->attempt--;
    c->bytes_out += buf_append(&c->cli.out, s->data, s->len);
    c->status = s->status;
    c->sent_any = 1;
    if (s->by_ban) {
        c->ban_retried--;
        c->code = BAN_CODE;
        c->ban_note = "exhausted";
        struct log_ctx ctx;
        ban_log_ctx(c, &ctx);
        log_event(LOG_WARN, BAN_CODE, &ctx, "%s %s:%d: banned on every try (%u), no proxy "
                  "left; the client gets the last answer (status %d)", c->method, c->host,
                  c->port, c->ban_retried + 1u, c->status);
    } else {
        c->proxy = proxy_by_id(s->proxy_id); /* the access line names who answered */
        status_exhausted(c, c->status, "no other member left");
        c->nretry_log -= c->nretry_log > 0; /* the retry that found none */
        c->retry_stop = "no_member";
    }
    free(s);
    conn_log_done(c, c->code);
    c->state = CS_DRAIN;
    conn_arm(c, timeouts.idle < 30 ? timeouts.idle : 30);
    return 1;
}
