/* conn_http.c - plain HTTP through the proxy: request heads in,
 * rewritten heads out, bodies relayed by their framing. */
#include "authfail.h"
#include "conn.h"
#include "rate.h"
#include "retry.h"
#include "ctl.h"
#include "health.h"
#include "inbound.h"
#include "listener.h"
#include "log.h"
#include "metrics.h"
#include "proxy.h"
#include "upstream.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

static unsigned long long cid_counter;

/* A fresh correlation id, given when the first byte of a head arrives so
 * that even a head that never completes is answered and logged with one. */
void conn_new_cid(struct conn *c)
{
    static unsigned long long seed;
    if (seed == 0) {
        seed = ((unsigned long long)random() << 32) ^ (unsigned long long)random() ^ 1;
    }
    unsigned long long v = (++cid_counter) * 0x9E3779B97F4A7C15ull ^ seed;
    /* 16 hex digits, as "%016llx" would (per request: no printf). */
    static const char hex[] = "0123456789abcdef";
    for (int i = 15; i >= 0; i--, v >>= 4) {
        c->cid[i] = hex[v & 0xf];
    }
    c->cid[16] = '\0';
}

/* The client's X-Request-Id replaces ours when it is sane. */
static void take_client_cid(struct conn *c, const char *base)
{
    struct http_span s = c->req.request_id;
    int ok = s.len > 0 && s.len < sizeof(c->cid);
    for (uint32_t i = 0; ok && i < s.len; i++) {
        char ch = base[s.off + i];
        ok = (ch >= '0' && ch <= '9') || (ch >= 'a' && ch <= 'z') ||
             (ch >= 'A' && ch <= 'Z') || ch == '-' || ch == '_' || ch == '.';
    }
    if (ok) {
        memcpy(c->cid, base + s.off, s.len);
        c->cid[s.len] = '\0';
    }
}

static void log_ctx_of(struct conn *c, struct log_ctx *ctx)
{
    ctx->cid = c->cid[0] ? c->cid : NULL;
    ctx->listener = c->l->name;
    ctx->pool = c->pool > 0 ? ferry_pool_name(c->pool) : NULL;
    ctx->exchange = c->exchange != 0 ? health_exchange_name(c->exchange) : NULL;
    ctx->proxy = c->proxy != NULL ? c->proxy->display : NULL;
    ctx->intercepted = c->mitm != NULL;
    ctx->scheme = c->origin_tls ? "https" : NULL;
    ctx->ban = NULL;
    ctx->ban_retries = 0;
    ctx->retry = NULL;
    ctx->retry_stop = NULL;
    ctx->cache = NULL;
}

void conn_log_done(struct conn *c, const char *code)
{
    struct log_ctx ctx;
    log_ctx_of(c, &ctx);
    ctx.ban = c->ban_note;               /* retry on ban (conn_banretry.c) */
    ctx.cache = c->cache_mark;           /* HTTP cache (conn_cache.c) */
    ctx.ban_retries = c->ban_retried;
    char why[FERRY_RETRIES_MAX * 16];
    ctx.retry = retry_log_text(c, why, sizeof(why)); /* retry.c */
    ctx.retry_stop = c->retry_stop;
    retry_request_end(c);
    log_access(&ctx, c->client, c->method[0] ? c->method : "-", c->host[0] ? c->host : "-",
               c->port, c->path[0] ? c->path : "-", c->status,
               c->bytes_in, c->bytes_out, (loop_now() - c->t_start) * 1000.0,
               (int)c->attempt + 1, code);
    metrics_request_end(c, code);
}

/* The request is over: drop its consumed bytes from cli.in and wait
 * for the next head.  Between requests the deadline is the end of the
 * keep-alive (a kept upstream went back to its pool: uppool.c times it out). */
static void await_next_head(struct conn *c, size_t consumed)
{
    buf_consume(&c->cli.in, consumed);
    c->fwd = 0;
    c->served++;
    c->state = CS_HEAD;
    c->cid[0] = '\0';
    c->deadline = loop_now() + timeouts.keepalive;
    conn_arm(c, timeouts.keepalive);
}

static void log_done(struct conn *c)
{
    conn_log_done(c, c->code);
}

/* What the log can say of a head before (or without) parsing it: its
 * first word as the method and its target, printable bytes only. */
static void note_unparsed(struct conn *c, const char *base, size_t hl)
{
    size_t i = 0;
    while (i < hl && i + 1 < sizeof(c->method) && http_is_tchar((unsigned char)base[i])) {
        c->method[i] = base[i];
        i++;
    }
    c->method[i] = '\0';
    size_t t = i < hl && base[i] == ' ' ? i + 1 : hl, n = 0;
    while (t + n < hl && n + 1 < CONN_PATH_MAX && base[t + n] > 0x20 && base[t + n] < 0x7f) {
        n++;
    }
    conn_set_path(c, base + t, n);
}

static void write_http_error(struct conn *c, enum ferr e, int keep);

void conn_write_http_error(struct conn *c, enum ferr e)
{
    write_http_error(c, e, 0);
}

/* Inside an intercepted tunnel a refusal by policy (a spent rate budget,
 * a control value no proxy matches) answers one request of the client's
 * TLS connection, before anything went upstream: a bodiless request's
 * head is all the client sent, so the connection stays for the next
 * request instead of costing the client a new CONNECT and handshake. */
static int keeps_session(const struct conn *c, enum ferr e)
{
    if (c->mitm == NULL || c->head_len == 0 || c->req.has_body || !c->req.keep_alive ||
        c->cli.eof || c->upgrade) {
        return 0;
    }
    switch (e) {
    case FERR_RATE_LIMITED:
    case FERR_RATE_TIMEOUT:
    case FERR_NO_REGION:
    case FERR_CTL_BAD:
    case FERR_POOL_UNKNOWN:
    case FERR_POOL_REFUSED:
        return 1;
    default:
        return 0;
    }
}

static void write_http_error(struct conn *c, enum ferr e, int keep)
{
    const struct ferr_info *info = ferr_info(e);
    char body[FERR_BODY_MAX], head[512];
    size_t bl = ferr_body(body, sizeof(body), info->code, info->message, c->cid);
    char extra[64] = "";
    if (e == FERR_AUTH_REQUIRED) {
        snprintf(extra, sizeof(extra), "Proxy-Authenticate: Basic realm=\"ferry\"\r\n");
    } else if (e == FERR_AUTH_THROTTLED) {
        snprintf(extra, sizeof(extra), "Retry-After: %u\r\n", authfail_retry_after(c->client));
    } else if (e == FERR_RATE_LIMITED || e == FERR_RATE_TIMEOUT) {
        snprintf(extra, sizeof(extra), "Retry-After: %u\r\n", rate_retry_after(c));
    }
    int hl = snprintf(head, sizeof(head),
                      "HTTP/1.1 %d %s\r\nContent-Type: application/json\r\n"
                      "Content-Length: %zu\r\nX-Ferry-Error: %s\r\nX-Request-Id: %s\r\n"
                      "%s%s\r\n",
                      info->status, info->reason, bl, info->code, c->cid, extra,
                      keep ? "" : "Connection: close\r\n");
    c->bytes_out += buf_append(&c->cli.out, head, (size_t)hl);
    c->bytes_out += buf_append(&c->cli.out, body, bl);
}

/* The error answer, in the client's protocol (c->in); with `quiet`, no
 * warn line (a summary covers it). */
static void fail_answer(struct conn *c, enum ferr e, int quiet)
{
    if (conn_is_reverse(c)) {
        e = conn_reverse_err(e); /* backends, not proxies */
    }
    const struct ferr_info *info = ferr_info(e);
    if (c->state == CS_HEAD && c->method[0] == '\0' && !buf_empty(&c->cli.in)) {
        /* A head that never completed: log what arrived of it. */
        note_unparsed(c, buf_head(&c->cli.in), buf_len(&c->cli.in));
    }
    struct log_ctx ctx;
    log_ctx_of(c, &ctx);
    c->code = info->code;
    c->status = info->status;
    if (quiet) {
        /* a summary line covers it */
    } else if (c->host[0] != '\0') {
        log_event(LOG_WARN, info->code, &ctx, "%s %s:%d: %s", c->method[0] ? c->method : "-",
                  c->host, c->port, info->message);
    } else {
        /* Refused before a destination was known: say what the target was. */
        log_event(LOG_WARN, info->code, &ctx, "%s %s: %s", c->method[0] ? c->method : "-",
                  c->path[0] ? c->path : "-", info->message);
    }
    conn_upstream_close(c);
    if (c->cache != NULL) {
        if (!c->sent_any && conn_cache_rescue(c, e)) {
            return; /* a stale entry answers (stale-if-error) */
        }
        conn_cache_end(c); /* a fill this request led is over: its waiters go on */
    }
    c->ban_hold = 0; /* whatever cli.out holds goes out now */
    if (c->sent_any) {
        /* Part of a response is already out: closing is the only signal. */
        log_done(c);
        conn_close(c);
        return;
    }
    if (keeps_session(c, e)) {
        write_http_error(c, e, 1);
        log_done(c);
        await_next_head(c, c->head_len);
        return;
    }
    if (c->mitm != NULL) {
        conn_write_http_error(c, e); /* inside an intercepted session: HTTP */
    } else {
        c->in->answer_fail(c, e);
    }
    c->sent_any = 1;
    log_done(c);
    c->state = CS_DRAIN;
    conn_arm(c, timeouts.idle < 30 ? timeouts.idle : 30);
}

void conn_fail(struct conn *c, enum ferr e)
{
    fail_answer(c, e, 0);
}

void conn_fail_quiet(struct conn *c, enum ferr e)
{
    fail_answer(c, e, 1);
}

/* Pull host, port and path out of the request target. */
static int parse_target(struct conn *c, const char *base)
{
    struct http_parser_url u;
    http_parser_url_init(&u);
    c->origin_tls = 0;
    const char *url = base + c->req.url.off;
    size_t ulen = c->req.url.len;
    if (http_parser_parse_url(url, ulen, c->is_connect, &u) != 0) {
        conn_fail(c, c->is_connect ? FERR_BAD_REQUEST : FERR_NOT_ABSOLUTE);
        return -1;
    }
    if (!c->is_connect) {
        if (!(u.field_set & (1 << UF_SCHEMA)) || !(u.field_set & (1 << UF_HOST))) {
            conn_fail(c, FERR_NOT_ABSOLUTE);
            return -1;
        }
        /* ws:// is http:// asking for an upgrade (aiohttp sends it so);
         * https:// (and wss://) is a request ferry sends over TLS it
         * originates itself (origin_tls.c). */
        struct http_span sch = { (uint32_t)(c->req.url.off + u.field_data[UF_SCHEMA].off),
                                 u.field_data[UF_SCHEMA].len };
        int upg = c->req.is_upgrade;
        if (http_span_ieq(base, sch, "https") || (upg && http_span_ieq(base, sch, "wss"))) {
            c->origin_tls = 1;
        } else if (!http_span_ieq(base, sch, "http") && !(upg && http_span_ieq(base, sch, "ws"))) {
            conn_fail(c, FERR_BAD_SCHEME);
            return -1;
        }
    }
    if (!(u.field_set & (1 << UF_HOST)) || u.field_data[UF_HOST].len == 0 ||
        u.field_data[UF_HOST].len > HOST_MAX_LEN || (c->is_connect && u.port == 0)) {
        conn_fail(c, FERR_BAD_REQUEST);
        return -1;
    }
    memcpy(c->host, url + u.field_data[UF_HOST].off, u.field_data[UF_HOST].len);
    c->host[u.field_data[UF_HOST].len] = '\0';
    c->port = (u.field_set & (1 << UF_PORT)) ? u.port : c->origin_tls ? 443 : 80;
    if (c->is_connect) {
        c->tpath.off = c->tpath.len = 0;
        conn_set_path(c, NULL, 0);
        return 0;
    }
    /* Path and query, without the fragment (never sent on the wire). */
    uint32_t start = (u.field_set & (1 << UF_PATH)) ? u.field_data[UF_PATH].off : 0;
    uint32_t end = start;
    if (u.field_set & (1 << UF_PATH)) {
        end = u.field_data[UF_PATH].off + u.field_data[UF_PATH].len;
    }
    if (u.field_set & (1 << UF_QUERY)) {
        if (!(u.field_set & (1 << UF_PATH))) {
            start = u.field_data[UF_QUERY].off - 1;
        }
        end = u.field_data[UF_QUERY].off + u.field_data[UF_QUERY].len;
    }
    c->tpath.off = c->req.url.off + start;
    c->tpath.len = end - start;
    conn_show_target(c, base);
    return 0;
}

/* Bytes of header lines on_request may add, and of names it may drop. */
#define HEADER_EDITS_MAX 4096

void conn_clear_header_edits(struct conn *c)
{
    free(c->hdr_add);
    free(c->hdr_drop);
    c->hdr_add = c->hdr_drop = NULL;
    c->hdr_add_len = 0;
}

void conn_set_header_edits(struct conn *c, const char *add, size_t add_len, const char *drop,
                           size_t drop_len)
{
    conn_clear_header_edits(c);
    if (add_len > HEADER_EDITS_MAX || drop_len > HEADER_EDITS_MAX) {
        struct log_ctx ctx = { .cid = c->cid, .listener = c->l->name };
        log_event(LOG_WARN, "FERRY-4008", &ctx,
                  "on_request header edits over %d bytes ignored", HEADER_EDITS_MAX);
        return;
    }
    if (add != NULL && add_len > 0 && (c->hdr_add = malloc(add_len)) != NULL) {
        memcpy(c->hdr_add, add, add_len);
        c->hdr_add_len = add_len;
    }
    if (drop != NULL && drop_len > 0 && (c->hdr_drop = malloc(drop_len + 1)) != NULL) {
        memcpy(c->hdr_drop, drop, drop_len);
        c->hdr_drop[drop_len] = '\0';
    }
}

/* A new request on this connection starts with clean per-request state. */
static void reset_request(struct conn *c)
{
    c->session[0] = '\0';
    ctl_clear(&c->ctl_hdr);
    c->pool = 0;
    c->exchange = 0;
    conn_clear_header_edits(c);
    conn_ban_reset(c);
    retry_request_end(c);
    c->nretry_log = 0;
    c->retry_stop = NULL;
    conn_cache_end(c);
    c->cache_mark = NULL;
    c->fwd = 0;
    c->head_len = 0;
    c->status = 0;
    c->code = NULL;
    c->ntried = 0;
    c->attempt = 0;
    c->target_fails = 0;
    c->hop.fail_target = 0;
    c->dechunk = 0;
    c->retries = 0;
    c->proxy = NULL;
    c->req_done = c->resp_head_done = c->resp_done = 0;
    c->sent_any = 0;
    c->replayable = 1;
    c->replay_head = 0;
    c->keep_client = 0;
    c->upgrade = 0;
    c->user[0] = '\0';
    c->host[0] = '\0';
    c->port = 0;
    conn_set_path(c, NULL, 0);
    c->method[0] = '\0';
    c->bytes_in = buf_len(&c->cli.in);
    c->bytes_out = 0;
}

/* The longest method token a request line may start with. */
#define METHOD_MAX 31

/* 1 when the bytes so far can still begin a request line: a method token
 * (RFC 9110 tchar) and then a space.  A SOCKS5 greeting or a TLS
 * ClientHello fails on its first byte, so it is answered at once rather
 * than after timeouts.client_head. */
static int could_be_http(const char *p, size_t n)
{
    for (size_t i = 0; i < n; i++) {
        unsigned char ch = (unsigned char)p[i];
        if (ch == ' ') {
            return i > 0;
        }
        if (i >= METHOD_MAX ||
            !((ch >= 'a' && ch <= 'z') || (ch >= 'A' && ch <= 'Z') || (ch >= '0' && ch <= '9') ||
              (ch != '\0' && strchr("!#$%&'*+-.^_`|~", ch) != NULL))) {
            return 0;
        }
    }
    return 1;
}

/* A request ferry answers itself (OPTIONS *, Max-Forwards: 0), then
 * closes: a body the request may carry is never read. */
void conn_answer_local(struct conn *c)
{
    if (conn_write_local_answer(c) < 0) {
        conn_fail(c, FERR_HEAD_TOO_LARGE);
        return;
    }
    c->status = 200;
    c->sent_any = 1;
    log_done(c);
    c->state = CS_DRAIN;
    conn_arm(c, timeouts.idle < 30 ? timeouts.idle : 30);
}

int conn_read_head(struct conn *c)
{
    buf_consume(&c->cli.in, http_skip_empty_lines(buf_head(&c->cli.in), buf_len(&c->cli.in)));
    if (buf_empty(&c->cli.in)) {
        return 0;
    }
    if (!c->head_started) {
        /* The request starts with its first byte: its id, its clock. */
        c->head_started = 1;
        reset_request(c);
        c->t_start = loop_now();
        conn_new_cid(c);
        conn_arm(c, timeouts.client_head);
    }
    if (!could_be_http(buf_head(&c->cli.in), buf_len(&c->cli.in))) {
        conn_fail(c, FERR_NOT_HTTP);
        return 0;
    }
    const char *base = buf_head(&c->cli.in);
    size_t hl = http_head_len(base, buf_len(&c->cli.in));
    if (hl == 0) {
        if (http_bare_cr(base, buf_len(&c->cli.in))) {
            conn_fail(c, FERR_BAD_REQUEST);
        } else if (buf_room(&c->cli.in) == 0) {
            conn_fail(c, FERR_HEAD_TOO_LARGE);
        } else if (c->cli.eof) {
            conn_close(c); /* the client gave up mid-head */
        }
        return 0;
    }
    c->head_len = hl;
    int r = http_parse_request(&c->req, base, hl);
    take_client_cid(c, base);
    note_unparsed(c, base, hl); /* parse_target replaces the path when it can */
    if (r != HTTP_PARSE_OK) {
        conn_fail(c, r == HTTP_PARSE_TOO_MANY ? FERR_TOO_MANY_HEADERS
                     : r == HTTP_PARSE_FRAMING ? FERR_BAD_FRAMING : FERR_BAD_REQUEST);
        return 0;
    }
    const char *mname = http_method_name(c->req.method);
    size_t mlen = strlen(mname);
    mlen = mlen < sizeof(c->method) - 1 ? mlen : sizeof(c->method) - 1;
    memcpy(c->method, mname, mlen);
    c->method[mlen] = '\0';
    /* Here, on the one head path of every request (plain, or inside an
     * intercepted tunnel): each control header stops at ferry. */
    ctl_take_headers(&c->req, base, &c->ctl_hdr);
    return 1;
}

void conn_on_head(struct conn *c)
{
    if (!conn_read_head(c)) {
        return;
    }
    const char *base = buf_head(&c->cli.in);
    c->is_connect = c->req.method == HTTP_CONNECT;
    const char *auth = base + c->req.proxy_auth.off;
    size_t auth_len = c->req.proxy_auth.len;
    ctl_clear(&c->ctl_user); /* each request's own credentials carry its parameters */
    if (c->l->nusers > 0) {
        if (authfail_blocked(c->l, c->client)) {
            conn_fail_quiet(c, FERR_AUTH_THROTTLED);
            return;
        }
        const char *user = NULL;
        if (auth_len > 0) {
            user = listener_auth(c->l, auth, auth_len);
            if (user == NULL) {
                user = listener_auth_ctl(c->l, auth, auth_len, &c->ctl_user);
            }
        }
        if (user == NULL) {
            /* Wrong credentials count towards a block; a missing header is
             * no guess.  Either logs once per address and window. */
            int log_it = auth_len > 0 ? authfail_count(c->l, c->client)
                                      : authfail_missing(c->l, c->client);
            if (log_it) {
                conn_fail(c, FERR_AUTH_REQUIRED);
            } else {
                conn_fail_quiet(c, FERR_AUTH_REQUIRED);
            }
            return;
        }
        snprintf(c->user, sizeof(c->user), "%s", user);
    } else if (auth_len > 0) {
        /* No users to check: USER-key-value parameters still count. */
        listener_auth_ctl(c->l, auth, auth_len, &c->ctl_user);
    }
    if (c->is_connect) {
        /* A CONNECT's control headers hold for the whole tunnel: requests
         * inside an intercepted one inherit them (their own win).  Its
         * rotate is for its own route only. */
        struct ctl keep = c->ctl_hdr;
        keep.rotate = keep.rotate_set = 0;
        ctl_merge(&c->ctl_user, &keep);
    }
    if (c->req.method == HTTP_OPTIONS && http_span_ieq(base, c->req.url, "*")) {
        conn_answer_local(c); /* OPTIONS * asks the proxy itself */
        return;
    }
    if (parse_target(c, base) < 0) {
        return;
    }
    conn_head_route(c, base);
}

void conn_head_route(struct conn *c, const char *base)
{
    if (c->req.method == HTTP_TRACE || c->req.method == HTTP_OPTIONS) {
        long mf = conn_max_forwards(c, base);
        if (mf == -2) {
            conn_fail(c, FERR_BAD_REQUEST);
            return;
        }
        if (mf == 0) {
            conn_answer_local(c); /* the last hop allowed: RFC 9110 §7.6.2 */
            return;
        }
    }
    c->upgrade = !c->is_connect && c->req.is_upgrade && c->req.upgrade.len > 0;
    c->deadline = c->t_start + timeouts.request;
    c->head_started = 0;
    conn_route(c);
}

void conn_finish(struct conn *c)
{
    struct proxy *p = c->proxy;
    int keep_up = c->resp.keep_alive && c->req_done && buf_empty(&c->up.in) &&
                  !c->up.eof && c->up.fd >= 0 &&
                  (p == NULL || !(p->pub.flags & FERRY_PROXY_REMOVED));
    conn_report_flush(c);
    log_done(c);
    conn_cache_end(c);
    conn_upstream_release(c, keep_up);
    if (!c->req_done) {
        c->keep_client = 0; /* the rest of the request body is unread */
    }
    if (!c->keep_client) {
        c->state = CS_DRAIN;
        conn_arm(c, timeouts.idle < 30 ? timeouts.idle : 30);
        return;
    }
    await_next_head(c, c->fwd);
    conn_idle_trim(c);
}

/* Request body: relay exactly the bytes that belong to this request. */
static int relay_request_body(struct conn *c)
{
    if (c->req_done) {
        return 0;
    }
    if (!c->req.has_body) {
        c->req_done = 1;
        return 0;
    }
    size_t avail = buf_len(&c->cli.in) - c->fwd;
    size_t room = buf_room(&c->up.out);
    if (avail > 0 && room > 0) {
        const char *p = buf_head(&c->cli.in) + c->fwd;
        long n = http_body(&c->req, p, avail < room ? avail : room);
        if (n < 0) {
            conn_fail(c, FERR_BAD_CHUNK);
            return -1;
        }
        buf_append(&c->up.out, p, (size_t)n);
        c->fwd += (size_t)n;
        if (c->req.msg_done) {
            c->req_done = 1;
            if (!c->resp_head_done) {
                /* First byte is counted from the end of the request. */
                conn_arm(c, c->first_byte_timeout);
            }
        }
    }
    if (!c->req_done && buf_room(&c->cli.in) == 0 && c->fwd > 0) {
        /* The body outgrew the buffer: what was sent is gone for good,
         * so this request can no longer be replayed on another proxy. */
        buf_consume(&c->cli.in, c->fwd);
        c->fwd = 0;
        c->replayable = 0;
    }
    if (!c->req_done && c->cli.eof && buf_len(&c->cli.in) == c->fwd) {
        struct log_ctx ctx;
        log_ctx_of(c, &ctx);
        log_event(LOG_WARN, "FERRY-1008", &ctx, "client closed mid-request body");
        c->code = "FERRY-1008";
        log_done(c);
        conn_close(c);
        return -1;
    }
    return 0;
}

/* The origin's answer is oversized or not HTTP.  The connector's
 * handshake succeeded (SOCKS5 reply, direct connect), so it is not the
 * proxy's fault: the proxy is not charged.  An HTTP proxy in absolute
 * form may have written a garbled answer itself: that is charged as a
 * plain failed request (breakers see it, health does not); an oversized
 * head never is.  No retry: the same request would get the same answer
 * through any proxy. */
static void origin_failed(struct conn *c, enum ferr e)
{
    if (e == FERR_BAD_RESPONSE && conn_up_absolute(c)) {
        conn_report(c, 0, FERRY_FAIL_HTTP5XX, 0);
    } else {
        conn_report_target(c);
    }
    conn_fail(c, e);
}

static int take_response_head(struct conn *c)
{
    while (!c->resp_head_done) {
        const char *base = buf_head(&c->up.in);
        size_t hl = http_head_len(base, buf_len(&c->up.in));
        if (hl == 0) {
            if (buf_room(&c->up.in) == 0) {
                origin_failed(c, FERR_RESPONSE_TOO_LARGE);
                return -1;
            }
            if (http_bare_cr(base, buf_len(&c->up.in))) {
                origin_failed(c, FERR_BAD_RESPONSE);
                return -1;
            }
            if (c->up.eof) {
                conn_attempt_failed(c, FERRY_FAIL_RESET, FERR_UPSTREAM_RESET);
                return -1;
            }
            return 0;
        }
        int is_head = c->req.method == HTTP_HEAD;
        int pr = http_parse_response(&c->resp, base, hl, is_head);
        if (pr != HTTP_PARSE_OK) {
            origin_failed(c, pr == HTTP_PARSE_TOO_MANY ? FERR_RESPONSE_TOO_LARGE
                                                       : FERR_BAD_RESPONSE);
            return -1;
        }
        int st = c->resp.status;
        if (st >= 100 && st < 200 && st != 101) {
            /* Interim responses are rewritten like final ones; an
             * HTTP/1.0 client never gets one (RFC 9110 §15.2). */
            if (c->req.minor > 0) {
                if (conn_write_interim(c, base) < 0) {
                    if (buf_empty(&c->cli.out)) {
                        origin_failed(c, FERR_RESPONSE_TOO_LARGE);
                        return -1;
                    }
                    return 0; /* wait for the client to take earlier bytes */
                }
            }
            buf_consume(&c->up.in, hl);
            /* Not sent_any: a final answer (an error too) may still follow
             * an interim one; replayable = 0 already stops retries. */
            c->replayable = 0;
            continue;
        }
        if (st == 407 && conn_up_absolute(c)) {
            conn_attempt_failed(c, FERRY_FAIL_AUTH, FERR_UPSTREAM_AUTH);
            return -1;
        }
        /* A chunked answer to an HTTP/1.0 client (an origin may send one
         * though we asked in 1.0): the client cannot read the coding
         * (RFC 9112 §6.1), so it gets the data, delimited by the close. */
        c->dechunk = c->req.minor == 0 && c->resp.framing == HTTP_FRAME_CHUNKED;
        c->keep_client = c->req.keep_alive && !http_needs_eof(&c->resp) && !c->cli.eof &&
                         !c->dechunk;
        if (c->cache != NULL && conn_cache_response(c, base, hl)) {
            return 0; /* the cache answers (refreshed by a 304, or stale on error) */
        }
        if (conn_ban_hold_begin(c, st) < 0) {
            return 0; /* a ban may retry it: start holding once cli.out drained */
        }
        if (conn_write_response_head(c, base) < 0) {
            if (buf_empty(&c->cli.out)) {
                origin_failed(c, FERR_RESPONSE_TOO_LARGE);
                return -1;
            }
            return 0; /* wait for the client to take earlier bytes */
        }
        buf_consume(&c->up.in, hl);
        c->resp_head_done = 1;
        c->sent_any = 1;
        c->status = st;
        if (!c->ban_hold) { /* a held response may still be replaced by a retry */
            c->replayable = 0;
            if (c->req_done) {
                buf_consume(&c->cli.in, c->fwd);
                c->fwd = 0;
            }
        }
        conn_report_head(c, base, hl, st);
        if (st == 101 && c->upgrade) {
            conn_tunnel_begin(c);
            return 1;
        }
        c->last_down = loop_now();
        conn_arm(c, timeouts.idle);
    }
    return 0;
}

/* take_back: all of cli.out is this response, written in this very call,
 * so none of it has left ferry yet. */
static int relay_response_body(struct conn *c, int take_back)
{
    if (!c->resp.has_body) {
        c->resp_done = 1;
        return 0;
    }
    size_t avail = buf_len(&c->up.in);
    size_t room = buf_room(&c->cli.out);
    while (c->dechunk && avail > 0 && room > 0 && !c->resp.msg_done) {
        /* The data of a chunked response for an HTTP/1.0 client: at most
         * room bytes of input, so the data always fits in cli.out. */
        size_t off, len;
        const char *in = buf_head(&c->up.in);
        long n = http_body_data(&c->resp, in, avail < room ? avail : room, &off, &len);
        if (n < 0) {
            if (take_back) {
                size_t k = buf_len(&c->cli.out);
                buf_consume(&c->cli.out, k);
                c->bytes_out = c->bytes_out > k ? c->bytes_out - k : 0;
                c->sent_any = 0;
            }
            conn_fail(c, FERR_BAD_RESPONSE);
            return -1;
        }
        c->bytes_out += buf_append(&c->cli.out, in + off, len);
        if (c->cache != NULL) {
            conn_cache_tee(c, in, (size_t)n); /* the fill reads the chunked framing itself */
        }
        conn_report_body(c, in + off, len, c->resp.msg_done);
        buf_consume(&c->up.in, (size_t)n);
        avail = buf_len(&c->up.in);
        room = buf_room(&c->cli.out);
    }
    if (!c->dechunk && avail > 0 && room > 0) {
        long n = http_body(&c->resp, buf_head(&c->up.in), avail < room ? avail : room);
        if (n < 0) {
            if (take_back) {
                /* Nothing of this response left ferry yet: take it back
                 * and answer a clean 502 instead of a cut message. */
                size_t k = buf_len(&c->cli.out);
                buf_consume(&c->cli.out, k);
                c->bytes_out = c->bytes_out > k ? c->bytes_out - k : 0;
                c->sent_any = 0;
            }
            conn_fail(c, FERR_BAD_RESPONSE);
            return -1;
        }
        c->bytes_out += buf_append(&c->cli.out, buf_head(&c->up.in), (size_t)n);
        if (c->cache != NULL) {
            conn_cache_tee(c, buf_head(&c->up.in), (size_t)n);
        }
        conn_report_body(c, buf_head(&c->up.in), (size_t)n, c->resp.msg_done);
        buf_consume(&c->up.in, (size_t)n);
    }
    if (!c->resp.msg_done && c->up.eof && buf_empty(&c->up.in)) {
        if (!http_body_eof(&c->resp)) {
            conn_report(c, 0, FERRY_FAIL_RESET, c->status);
            conn_fail(c, FERR_UPSTREAM_RESET); /* truncated: close the client */
            return -1;
        }
    }
    if (c->resp.msg_done) {
        c->resp_done = 1;
    }
    return 0;
}

int conn_exchange(struct conn *c)
{
    if (relay_request_body(c) < 0) {
        return -1;
    }
    int fresh = !c->resp_head_done && buf_empty(&c->cli.out);
    if (!c->resp_head_done) {
        int r = take_response_head(c);
        if (r != 0 || c->closing || c->state != CS_EXCHANGE) {
            return r < 0 ? -1 : 0;
        }
    }
    /* A held response has not left ferry yet either (conn_banretry.c). */
    if (c->resp_head_done && !c->resp_done && relay_response_body(c, fresh || c->ban_hold) < 0) {
        return -1;
    }
    if (conn_ban_settle(c)) {
        return 0;
    }
    if (c->resp_done) {
        if (c->cache != NULL) {
            conn_cache_complete(c);
        }
        conn_finish(c);
    }
    return 0;
}

static void http_start(struct conn *c)
{
    conn_arm(c, timeouts.client_head);
}

const struct inbound_ops inbound_http = {
    .name = "http",
    .start = http_start,
    .input = conn_on_head,
    .answer_ok = conn_write_connect_ok,
    .answer_fail = conn_write_http_error,
    .fini = NULL,
};
