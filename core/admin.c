/* admin.c - requests on admin listeners (TCP and the console socket).
 *
 * The admin plane speaks the same HTTP as the data plane, through the
 * same head parser, but nothing is relayed: the whole request (head and
 * a body bounded by the connection buffer) goes to the runtime's admin
 * router in Lua, and its answer comes back.  An answer larger than the
 * output buffer (metrics of a big inventory) is kept whole on the heap
 * and fed into cli.out as the client reads it, so the loop never waits. */
#include "bridge.h"
#include "conn.h"
#include "ferry.h"
#include "inbound.h"
#include "listener.h"
#include "log.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define ADMIN_IDLE_SECS 30.0

/* The answer being written to one admin connection (c->in_priv). */
struct admin_out {
    char *body;         /* the rest of the answer, or NULL */
    size_t len, off;    /* its size, and the bytes already in cli.out */
    unsigned keep:1;    /* keep the connection after the answer */
    /* An answer that waits (CS_ADMIN_WAIT): the fallback until the
     * handler's real one arrives (ready), sent when the bound runs out. */
    unsigned ready:1;
    double token;
    int wstatus;
    char wctype[96];
    char *wbody, *wheaders;
    size_t wlen, req_body_len;
};

/* The connections whose answer waits, by token: bounded, so a database
 * that never answers cannot pile up connections without end. */
static struct {
    double token;
    struct conn *c;
} waiting[FERRY_ADMIN_WAIT_MAX];
static unsigned nwaiting;

/* c's answer state, made on first use; NULL without memory. */
static struct admin_out *out_of(struct conn *c)
{
    if (c->in_priv == NULL) {
        c->in_priv = calloc(1, sizeof(struct admin_out));
    }
    return c->in_priv;
}

static const char *reason_of(int status)
{
    switch (status) {
    case 200: return "OK";
    case 201: return "Created";
    case 204: return "No Content";
    case 400: return "Bad Request";
    case 401: return "Unauthorized";
    case 403: return "Forbidden";
    case 404: return "Not Found";
    case 405: return "Method Not Allowed";
    case 409: return "Conflict";
    case 411: return "Length Required";
    case 413: return "Payload Too Large";
    case 422: return "Unprocessable Entity";
    case 500: return "Internal Server Error";
    case 503: return "Service Unavailable";
    case 504: return "Gateway Timeout";
    default: return status < 400 ? "OK" : "Error";
    }
}

/* Forget c's waiting answer, if any (answered, expired or closed). */
static void wait_clear(struct conn *c, struct admin_out *o)
{
    for (unsigned i = 0; i < nwaiting; i++) {
        if (waiting[i].c == c) {
            waiting[i] = waiting[--nwaiting];
            break;
        }
    }
    free(o->wbody);
    free(o->wheaders);
    o->wbody = o->wheaders = NULL;
    o->token = 0;
    o->ready = 0;
}

static void admin_free(struct conn *c)
{
    struct admin_out *o = c->in_priv;
    if (o != NULL) {
        wait_clear(c, o);
        free(o->body);
        free(o);
        c->in_priv = NULL;
    }
}

/* Move what fits of the pending answer into cli.out; at its end the
 * connection waits for the next request, or drains and closes. */
void admin_pump(struct conn *c)
{
    struct admin_out *o = c->in_priv;
    if (o != NULL && o->body != NULL && o->off < o->len) {
        o->off += buf_append(&c->cli.out, o->body + o->off, o->len - o->off);
        if (o->off < o->len) {
            return;
        }
    }
    int keep = o != NULL && o->keep;
    admin_free(c);
    c->state = keep ? CS_HEAD : CS_DRAIN;
    if (c->state == CS_HEAD) {
        conn_arm(c, timeouts.keepalive);
    }
}

/* Send status with body; body is taken over (freed here or later). */
static void answer(struct conn *c, int status, const char *ctype, char *body, size_t blen,
                   const char *extra)
{
    char head[1024];
    struct admin_out *o = out_of(c);
    if (o == NULL) {
        free(body);
        conn_close(c);
        return;
    }
    int keep = o->keep;
    int n = snprintf(head, sizeof(head),
                     "HTTP/1.1 %d %s\r\nContent-Type: %s\r\nContent-Length: %zu\r\n"
                     "X-Request-Id: %s\r\nCache-Control: no-store\r\n%s%s\r\n",
                     status, reason_of(status), ctype, blen, c->cid,
                     extra != NULL ? extra : "", keep ? "" : "Connection: close\r\n");
    if (n < 0 || (size_t)n >= sizeof(head)) {
        /* Only the extra headers can make it this long: go without them. */
        n = snprintf(head, sizeof(head),
                     "HTTP/1.1 %d %s\r\nContent-Type: %s\r\nContent-Length: %zu\r\n"
                     "X-Request-Id: %s\r\n%s\r\n",
                     status, reason_of(status), ctype, blen, c->cid,
                     keep ? "" : "Connection: close\r\n");
    }
    buf_append(&c->cli.out, head, (size_t)n);
    c->status = status;
    c->sent_any = 1;
    c->bytes_out = (unsigned long long)n + blen;
    if (c->req.method == HTTP_HEAD) {
        free(body);
        body = NULL;
        blen = 0;
    }
    o->body = body;
    o->len = blen;
    o->off = 0;
    c->state = CS_ADMIN_OUT;
    /* A slow reader gets idle time, not head time; a reader that stopped
     * does not hold a large answer for long. */
    conn_arm(c, timeouts.idle < ADMIN_IDLE_SECS ? timeouts.idle : ADMIN_IDLE_SECS);
    admin_pump(c);
}

/* A JSON error answer that the router did not make itself. */
static void answer_error(struct conn *c, int status, const char *code, const char *message)
{
    char *body = malloc(FERR_BODY_MAX);
    if (body == NULL) {
        conn_close(c);
        return;
    }
    size_t n = ferr_body(body, FERR_BODY_MAX, code, message, c->cid);
    char extra[64];
    snprintf(extra, sizeof(extra), "X-Ferry-Error: %s\r\n", code);
    struct admin_out *o = out_of(c);
    if (o != NULL) {
        o->keep = 0;
    }
    answer(c, status, "application/json", body, n, extra);
}

/* c->path was copied from the head before the request left cli.in. */
static void log_admin(struct conn *c, size_t body_len)
{
    struct log_ctx ctx = { .cid = c->cid, .listener = c->l->name };
    log_access(&ctx, c->client, c->method, "admin", 0, c->path, c->status,
               (unsigned long long)(c->head_len + body_len), c->bytes_out,
               (loop_now() - c->t_start) * 1000.0, 0, c->status >= 400 ? "FERRY-7000" : NULL);
}

int ferry_admin_wait_room(void)
{
    return (int)(FERRY_ADMIN_WAIT_MAX - nwaiting);
}

/* Keep the fallback of a waiting answer (taken over: body, headers); the
 * connection reads nothing more until the answer goes.  0, or -1 when
 * no slot is free (the fallback goes now). */
static int wait_begin(struct conn *c, struct admin_out *o, const struct bridge_answer *a,
                      size_t req_body_len)
{
    if (nwaiting >= FERRY_ADMIN_WAIT_MAX) {
        return -1;
    }
    waiting[nwaiting].token = a->token;
    waiting[nwaiting].c = c;
    nwaiting++;
    o->token = a->token;
    o->wstatus = a->status;
    snprintf(o->wctype, sizeof(o->wctype), "%s", a->content_type);
    o->wbody = a->body;
    o->wlen = a->body_len;
    o->wheaders = a->headers;
    o->req_body_len = req_body_len;
    o->ready = 0;
    c->state = CS_ADMIN_WAIT;
    conn_arm(c, a->wait > 0 ? a->wait : 0.001);
    return 0;
}

int ferry_admin_answer(double token, int status, const char *ctype, const char *body,
                       size_t blen, const char *headers)
{
    struct conn *c = NULL;
    for (unsigned i = 0; i < nwaiting; i++) {
        if (waiting[i].token == token) {
            c = waiting[i].c;
            break;
        }
    }
    struct admin_out *o = c != NULL ? c->in_priv : NULL;
    if (o == NULL || o->ready || c->state != CS_ADMIN_WAIT) {
        return 0;
    }
    char *b = malloc(blen + 1);
    char *h = headers != NULL ? strdup(headers) : NULL;
    if (b == NULL || (headers != NULL && h == NULL)) {
        free(b);
        free(h);
        return 0; /* the fallback goes when the bound runs out */
    }
    if (blen > 0) {
        memcpy(b, body, blen);
    }
    b[blen] = '\0';
    free(o->wbody);
    free(o->wheaders);
    o->wbody = b;
    o->wlen = blen;
    o->wheaders = h;
    o->wstatus = status;
    snprintf(o->wctype, sizeof(o->wctype), "%s", ctype != NULL ? ctype : "text/plain");
    o->ready = 1;
    /* Sent from the connection's own timer on the next loop turn: never
     * inside the caller's stack (a database callback in Lua). */
    conn_arm(c, 0.);
    return 1;
}

void admin_wait_fired(struct conn *c)
{
    struct admin_out *o = c->in_priv;
    if (o == NULL) {
        conn_close(c);
        return;
    }
    if (!o->ready) {
        /* Logged with the fallback's own code (X-Ferry-Error), else 7716. */
        char code[16] = "FERRY-7716";
        const char *at = o->wheaders != NULL ? strstr(o->wheaders, "X-Ferry-Error: FERRY-") : NULL;
        if (at != NULL) {
            snprintf(code, sizeof(code), "%.10s", at + strlen("X-Ferry-Error: "));
        }
        struct log_ctx ctx = { .cid = c->cid, .listener = c->l->name };
        log_event(LOG_WARN, code, &ctx, "admin %s %s: the answer waited past its bound; "
                  "answering %d", c->method, c->path, o->wstatus);
    }
    char *body = o->wbody, *extra = o->wheaders;
    size_t blen = o->wlen, req_body_len = o->req_body_len;
    char ctype[96];
    int status = o->wstatus;
    snprintf(ctype, sizeof(ctype), "%s", o->wctype);
    o->wbody = o->wheaders = NULL;
    wait_clear(c, o);
    answer(c, status, ctype, body, blen, extra);
    free(extra);
    log_admin(c, req_body_len);
}

void admin_on_head(struct conn *c)
{
    const char *base = buf_head(&c->cli.in);
    conn_set_path(c, base + c->req.url.off, c->req.url.len);
    int chunked = c->req.framing == HTTP_FRAME_CHUNKED;
    uint64_t clen = c->req.framing == HTTP_FRAME_LENGTH ? c->req.content_length : 0;
    struct admin_out *o = out_of(c);
    if (o == NULL) {
        conn_close(c);
        return;
    }
    o->keep = c->req.keep_alive && !c->cli.eof;
    if (chunked) {
        answer_error(c, 411, "FERRY-7002", "the admin API takes bodies with a Content-Length");
        log_admin(c, 0);
        return;
    }
    if (clen > CONN_BUF_SIZE - c->head_len) {
        answer_error(c, 413, "FERRY-7003", "request body too large for the admin API");
        log_admin(c, 0);
        return;
    }
    if (buf_len(&c->cli.in) < c->head_len + clen) {
        if (c->cli.eof) {
            conn_close(c); /* gave up mid-body */
        }
        return; /* the rest of the body is on its way */
    }
    struct ferry_admin_req r = {
        .method = c->method,
        .method_len = (uint32_t)strlen(c->method),
        .target = base + c->req.url.off,
        .target_len = c->req.url.len,
        .head = base,
        .head_len = (uint32_t)c->head_len,
        .body = clen > 0 ? base + c->head_len : NULL,
        .body_len = (uint32_t)clen,
        .peer = c->client,
        .listener = c->l->name,
        .cid = c->cid,
        .unix_socket = c->l->path != NULL,
    };
    struct bridge_answer a;
    c->refs++; /* the router may do anything, even close listeners */
    int rc = bridge_admin(&r, &a);
    c->refs--;
    buf_consume(&c->cli.in, c->head_len + (size_t)clen);
    c->head_started = 0;
    if (rc != 0) {
        answer_error(c, 500, "FERRY-7001", "the admin handler failed; see the log");
    } else if (a.token > 0 && !c->closing && wait_begin(c, o, &a, (size_t)clen) == 0) {
        return; /* logged when it goes (admin_wait_fired) */
    } else {
        answer(c, a.status, a.content_type, a.body, a.body_len, a.headers);
        free(a.headers);
    }
    log_admin(c, (size_t)clen);
}

static void admin_start(struct conn *c)
{
    conn_arm(c, timeouts.client_head);
}

static void admin_input(struct conn *c)
{
    if (conn_read_head(c)) {
        admin_on_head(c);
    }
}

/* The admin plane speaks HTTP: failures before the router (a garbled
 * head) are answered like the forward proxy's, and nothing tunnels. */
const struct inbound_ops inbound_admin = {
    .name = "admin",
    .start = admin_start,
    .input = admin_input,
    .answer_ok = conn_write_connect_ok,
    .answer_fail = conn_write_http_error,
    .fini = admin_free,
};
