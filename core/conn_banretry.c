/* conn_banretry.c - retry on ban.
 *
 * An exchange's ban rule or on_response verdict bans the (proxy,
 * exchange) pair.  With `ban.retry = N` the ban decision is also taken
 * for the request in flight: while nothing of the response has reached
 * the client, the request is idempotent (or carries Idempotency-Key) and
 * it is still whole in cli.in (c->replayable), the response is held in
 * cli.out (the client leg does not write) until Lua's verdict.  A banned
 * response is dropped, its upstream connection closed, and the request
 * goes again through another proxy (the banned one is in c->tried, and
 * the ban itself makes it ineligible for the exchange), up to N times.
 * When every try is banned the client gets the last answer with
 * X-Ferry-Error: FERRY-6030.
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

#include <stdlib.h>
#include <string.h>

/* The mark on an answer that was banned on every try. */
#define BAN_CODE "FERRY-6030"
#define BAN_HEADER "X-Ferry-Error: " BAN_CODE "\r\n"

/* The last banned answer, kept whole with its mark, for a retry that
 * finds no proxy left. */
struct ban_stash {
    int status;
    size_t len;
    char data[];
};

static int ban_idempotent(const struct conn *c)
{
    return http_method_idempotent(c->req.method) || c->req.idem_key.len > 0;
}

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
    c->ban_why = NULL;
    if (c->ban_retry == 0 || c->proxy == NULL || c->exchange == 0) {
        return 0;
    }
    /* Why a ban of this response could not be retried (access line). */
    if (!c->replayable) {
        c->ban_why = "no_replay";
    } else if (!ban_idempotent(c)) {
        c->ban_why = "not_idempotent";
    } else if (status == 101) {
        c->ban_why = "upgrade";
    }
    if (c->ban_why != NULL) {
        return 0;
    }
    if (!buf_empty(&c->cli.out)) {
        return -1; /* the previous response is still leaving: hold from an empty cli.out */
    }
    c->ban_hold = 1;
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

/* Keep the held answer, marked, when it is whole. */
static void ban_stash_keep(struct conn *c)
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
    s->len = ban_mark(s->data, buf_head(&c->cli.out), len);
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

static void ban_retry(struct conn *c)
{
    struct log_ctx ctx;
    ban_log_ctx(c, &ctx);
    log_event(LOG_INFO, "FERRY-6032", &ctx, "%s %s:%d: status %d banned the proxy; "
              "sending again through another one (retry %u of %u)", c->method, c->host,
              c->port, c->status, c->ban_retried + 1u, (unsigned)c->ban_retry);
    ban_stash_keep(c);
    size_t k = buf_len(&c->cli.out);
    buf_consume(&c->cli.out, k);
    c->bytes_out = c->bytes_out > k ? c->bytes_out - k : 0;
    c->sent_any = 0;
    c->status = 0;
    c->ban_hold = c->ban_decided = c->ban_banned = 0;
    c->ban_retried++;
    metrics_ban_retry(c->pool);
    conn_report_flush(c);
    /* The banned connection is closed, never pooled: its proxy is done
     * with this exchange for now. */
    conn_upstream_close(c);
    c->resp_head_done = c->resp_done = 0;
    c->dechunk = 0;
    c->keep_client = 0;
    c->attempt++;
    c->last_err = FERR_BAN_EXHAUSTED;
    c->fwd = 0;
    c->req_done = 0;
    c->state = CS_BACKOFF;
    conn_arm(c, 0.);
}

static int ban_can_retry(const struct conn *c)
{
    return c->ban_retried < c->ban_retry && c->replayable && loop_now() < c->deadline;
}

int conn_ban_stalled(struct conn *c)
{
    if (!c->ban_hold) {
        return 0;
    }
    if (!c->ban_decided) {
        conn_report_flush(c); /* the verdict on the prefix that came */
    }
    if (c->ban_decided && c->ban_banned && ban_can_retry(c)) {
        ban_retry(c);
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
    if (!c->ban_banned) {
        ban_release(c);
        return 0;
    }
    if (ban_can_retry(c)) {
        if (!c->resp_done && buf_room(&c->cli.out) > 0) {
            /* Read the rest, to keep it whole in case no proxy is left
             * (a stalled rest: conn_ban_stalled retries at the idle timeout). */
            return 0;
        }
        ban_retry(c);
        return 1;
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
    /* The retry that found no proxy never went out. */
    c->ban_retried--;
    c->attempt--;
    c->bytes_out += buf_append(&c->cli.out, s->data, s->len);
    c->status = s->status;
    c->code = BAN_CODE;
    c->ban_note = "exhausted";
    c->sent_any = 1;
    free(s);
    struct log_ctx ctx;
    ban_log_ctx(c, &ctx);
    log_event(LOG_WARN, BAN_CODE, &ctx, "%s %s:%d: banned on every try (%u), no proxy left; "
              "the client gets the last answer (status %d)", c->method, c->host, c->port,
              c->ban_retried + 1u, c->status);
    conn_log_done(c, c->code);
    c->state = CS_DRAIN;
    conn_arm(c, timeouts.idle < 30 ? timeouts.idle : 30);
    return 1;
}
