/* hclient.c - a small non-blocking HTTP/1.1 client on the loop (hclient.h).
 *
 * Each request owns its socket, its resolver lookup and one ev_timer:
 * the timer is the deadline of the whole exchange, and also (at 0 s)
 * how an error found while starting reaches Lua from the loop rather
 * than from inside the caller.  Requests live on one list, bounded by
 * HCLIENT_MAX_INFLIGHT, and are unlinked before Lua hears of them, so a
 * callback may start another.  Bytes cross the socket through a leg's
 * transport (transport.h): plain, or TLS for https:// with the contexts
 * ferry_hclient_tls prepared at config time. */
#include "hclient.h"
#include "bridge.h"
#include "conn.h"
#include "loop.h"
#include "resolve.h"
#include "transport.h"

#include <ares.h>
#include <errno.h>
#include <http_parser.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

enum hstep { HS_CONNECT, HS_TLS, HS_WRITE, HS_READ };

struct hreq {
    struct hreq *next;
    int64_t id;
    int fd;
    struct leg leg;     /* fd and transport (only fd, tr and tls are used) */
    enum hstep step;
    int tls;            /* index in ctxs, or -1 */
    int ev;             /* events the watcher has now */
    char *host;
    int port;
    char *out;          /* the request bytes */
    size_t out_len, out_off;
    ev_io io;
    ev_timer timer;
    struct resolve_req *rr;
    http_parser parser;
    int complete;       /* the parser saw the end of the message */
    int last_was_value; /* header callbacks: a value ended the last line */
    char *head;         /* "name: value\n" lines */
    size_t head_len, head_cap;
    char *body;
    size_t body_len, body_cap;
    const char *error;  /* set: finish with it at the next timer run */
    char detail[160];
    double started;
};

static struct hreq *reqs;
static int inflight;
static int64_t next_id = 1;

/* TLS client contexts by (verify, ca), made at config time (the CA file
 * is read then, not on the loop's request path); freed at stop. */
#define HCLIENT_MAX_TLS 16
static struct {
    int verify;
    char *ca;
    struct ssl_ctx_st *ctx;
} ctxs[HCLIENT_MAX_TLS];
static int nctx;
static char tls_err[256];

int ferry_hclient_tls(int verify, const char *ca, const char **err)
{
    for (int i = 0; i < nctx; i++) {
        if (ctxs[i].verify == (verify != 0) &&
            ((ca == NULL && ctxs[i].ca == NULL) ||
             (ca != NULL && ctxs[i].ca != NULL && strcmp(ca, ctxs[i].ca) == 0))) {
            return i;
        }
    }
    if (nctx >= HCLIENT_MAX_TLS) {
        *err = "too many different TLS settings (16)";
        return -1;
    }
    char *copy = ca != NULL ? strdup(ca) : NULL;
    if (ca != NULL && copy == NULL) {
        *err = "out of memory";
        return -1;
    }
    struct ssl_ctx_st *ctx = tls_client_ctx(verify, ca, tls_err, sizeof(tls_err));
    if (ctx == NULL) {
        free(copy);
        *err = tls_err;
        return -1;
    }
    ctxs[nctx].verify = verify != 0;
    ctxs[nctx].ca = copy;
    ctxs[nctx].ctx = ctx;
    return nctx++;
}

int ferry_hclient_inflight(void)
{
    return inflight;
}

static void unlink_req(struct hreq *h)
{
    for (struct hreq **p = &reqs; *p != NULL; p = &(*p)->next) {
        if (*p == h) {
            *p = h->next;
            inflight--;
            return;
        }
    }
}

/* Close and free h (already unlinked). */
static void destroy(struct hreq *h)
{
    if (h->rr != NULL) {
        resolve_cancel(h->rr);
    }
    ev_timer_stop(loop, &h->timer);
    leg_tr_free(&h->leg);
    if (h->fd != -1) {
        ev_io_stop(loop, &h->io);
        close(h->fd);
    }
    free(h->host);
    free(h->out);
    free(h->head);
    free(h->body);
    free(h);
}

/* The exchange is over: tell Lua, then free. */
static void finish(struct hreq *h, const char *error, const char *detail)
{
    unlink_req(h);
    leg_tr_free(&h->leg);
    if (h->fd != -1) { /* nothing more may arrive while Lua runs */
        ev_io_stop(loop, &h->io);
        close(h->fd);
        h->fd = -1;
    }
    struct ferry_hclient_result r;
    memset(&r, 0, sizeof(r));
    r.id = h->id;
    r.error = error;
    r.detail = detail;
    r.status = error == NULL ? (int)h->parser.status_code : 0;
    r.headers = h->head != NULL ? h->head : "";
    r.headers_len = h->head_len;
    r.body = h->body != NULL ? h->body : "";
    r.body_len = h->body_len;
    r.elapsed_ms = (ev_time() - h->started) * 1000.0;
    bridge_hclient_done(&r);
    destroy(h);
}

/* An error found while starting: reported from the loop, not the caller. */
static void fail_later(struct hreq *h, const char *error, const char *detail)
{
    h->error = error;
    snprintf(h->detail, sizeof(h->detail), "%s", detail);
    if (h->fd != -1) {
        ev_io_stop(loop, &h->io);
        h->ev = 0;
    }
    ev_timer_stop(loop, &h->timer);
    ev_timer_set(&h->timer, 0., 0.);
    ev_timer_start(loop, &h->timer);
}

static int grow(char **buf, size_t *cap, size_t need, size_t limit)
{
    if (need <= *cap) {
        return 0;
    }
    if (need > limit) {
        return -1;
    }
    size_t n = *cap != 0 ? *cap : 1024;
    while (n < need) {
        n *= 2;
    }
    if (n > limit) {
        n = limit;
    }
    char *p = realloc(*buf, n);
    if (p == NULL) {
        return -1;
    }
    *buf = p;
    *cap = n;
    return 0;
}

static int head_add(struct hreq *h, const char *s, size_t n)
{
    if (grow(&h->head, &h->head_cap, h->head_len + n + 1, HCLIENT_MAX_HEAD) != 0) {
        h->error = "head_limit";
        return -1;
    }
    memcpy(h->head + h->head_len, s, n);
    h->head_len += n;
    h->head[h->head_len] = '\0';
    return 0;
}

static int on_header_field(http_parser *p, const char *at, size_t n)
{
    struct hreq *h = p->data;
    if (h->last_was_value && head_add(h, "\n", 1) != 0) {
        return -1;
    }
    if (h->last_was_value || h->head_len == 0) {
        h->last_was_value = 0;
    }
    char low[64];
    while (n > 0) {
        size_t k = n < sizeof(low) ? n : sizeof(low);
        for (size_t i = 0; i < k; i++) {
            char c = at[i];
            low[i] = (c >= 'A' && c <= 'Z') ? (char)(c + 32) : c;
        }
        if (head_add(h, low, k) != 0) {
            return -1;
        }
        at += k;
        n -= k;
    }
    return 0;
}

static int on_header_value(http_parser *p, const char *at, size_t n)
{
    struct hreq *h = p->data;
    if (!h->last_was_value) {
        h->last_was_value = 1;
        if (head_add(h, ": ", 2) != 0) {
            return -1;
        }
    }
    return head_add(h, at, n);
}

static int on_headers_complete(http_parser *p)
{
    struct hreq *h = p->data;
    if (h->last_was_value && head_add(h, "\n", 1) != 0) {
        return -1;
    }
    h->last_was_value = 0;
    return 0;
}

static int on_body(http_parser *p, const char *at, size_t n)
{
    struct hreq *h = p->data;
    if (grow(&h->body, &h->body_cap, h->body_len + n + 1, HCLIENT_MAX_BODY + 1) != 0) {
        h->error = "body_limit";
        return -1;
    }
    memcpy(h->body + h->body_len, at, n);
    h->body_len += n;
    h->body[h->body_len] = '\0';
    return 0;
}

static int on_message_complete(http_parser *p)
{
    struct hreq *h = p->data;
    h->complete = 1;
    http_parser_pause(p, 1); /* bytes after the answer are not ours */
    return 0;
}

static http_parser_settings settings = {
    .on_header_field = on_header_field,
    .on_header_value = on_header_value,
    .on_headers_complete = on_headers_complete,
    .on_body = on_body,
    .on_message_complete = on_message_complete,
};

/* Feed n bytes (0: the peer closed). Finishes h when the answer is whole
 * or broken; returns 1 if h is gone. */
static int feed(struct hreq *h, const char *data, size_t n)
{
    size_t used = http_parser_execute(&h->parser, &settings, data, n);
    if (h->complete) {
        finish(h, NULL, NULL);
        return 1;
    }
    enum http_errno e = HTTP_PARSER_ERRNO(&h->parser);
    if (e != HPE_OK || (n > 0 && used != n)) {
        if (h->error != NULL) {
            finish(h, h->error, strcmp(h->error, "body_limit") == 0
                   ? "the answer's body is larger than 1 MiB"
                   : "the answer's head is larger than 16 KiB");
        } else {
            snprintf(h->detail, sizeof(h->detail), "not an HTTP answer (%s)",
                     http_errno_name(e));
            finish(h, "garbage", h->detail);
        }
        return 1;
    }
    if (n == 0) {
        finish(h, "reset", "the connection closed before the answer was whole");
        return 1;
    }
    return 0;
}

static void set_io(struct hreq *h, int events)
{
    if (events == h->ev) {
        return;
    }
    ev_io_stop(loop, &h->io);
    ev_io_set(&h->io, h->fd, events);
    h->ev = events;
    if (events != 0) {
        ev_io_start(loop, &h->io);
    }
}

static void fail_errno(struct hreq *h, const char *what, int e)
{
    snprintf(h->detail, sizeof(h->detail), "%s: %s", what, strerror(e));
    finish(h, e == ECONNREFUSED ? "refused" : "reset", h->detail);
}

static void do_read(struct hreq *h)
{
    const struct transport_ops *tr = leg_tr(&h->leg);
    char buf[16384];
    for (;;) {
        ssize_t k = tr->read(&h->leg, buf, sizeof(buf));
        if (k < 0) {
            if (errno == EAGAIN || errno == EWOULDBLOCK) {
                set_io(h, leg_events(&h->leg, EV_READ));
                return;
            }
            if (h->tls >= 0 && *tr->error(&h->leg) != '\0') {
                snprintf(h->detail, sizeof(h->detail), "TLS: %s", tr->error(&h->leg));
                finish(h, "reset", h->detail);
                return;
            }
            fail_errno(h, "recv", errno);
            return;
        }
        if (feed(h, buf, (size_t)k) || k == 0) {
            return;
        }
    }
}

static void do_write(struct hreq *h)
{
    const struct transport_ops *tr = leg_tr(&h->leg);
    while (h->out_off < h->out_len) {
        ssize_t k = tr->write(&h->leg, h->out + h->out_off, h->out_len - h->out_off);
        if (k < 0) {
            if (errno == EAGAIN || errno == EWOULDBLOCK) {
                set_io(h, leg_events(&h->leg, EV_WRITE));
                return;
            }
            fail_errno(h, "send", errno);
            return;
        }
        h->out_off += (size_t)k;
    }
    h->step = HS_READ;
    do_read(h);
}

static void do_tls(struct hreq *h)
{
    enum tr_hs r = leg_tr(&h->leg)->handshake(&h->leg);
    if (r == TR_HS_DONE) {
        h->step = HS_WRITE;
        do_write(h);
    } else if (r == TR_HS_READ) {
        set_io(h, EV_READ);
    } else if (r == TR_HS_WRITE) {
        set_io(h, EV_WRITE);
    } else {
        snprintf(h->detail, sizeof(h->detail), "TLS handshake failed: %s",
                 tls_leg_error(&h->leg));
        finish(h, "tls", h->detail);
    }
}

static void on_io(struct ev_loop *l, ev_io *w, int revents)
{
    (void)l;
    (void)revents;
    struct hreq *h = w->data;
    switch (h->step) {
    case HS_CONNECT: {
        int err = 0;
        socklen_t len = sizeof(err);
        if (getsockopt(h->fd, SOL_SOCKET, SO_ERROR, &err, &len) != 0) {
            err = errno;
        }
        if (err != 0) {
            fail_errno(h, "connect", err);
            return;
        }
        if (h->tls >= 0) {
            if (tls_leg_connect(&h->leg, ctxs[h->tls].ctx, h->host, ctxs[h->tls].verify) != 0) {
                finish(h, "local", "cannot set up TLS (out of memory)");
                return;
            }
            h->step = HS_TLS;
            do_tls(h);
        } else {
            h->step = HS_WRITE;
            do_write(h);
        }
        return;
    }
    case HS_TLS:
        do_tls(h);
        return;
    case HS_WRITE:
        do_write(h);
        return;
    case HS_READ:
        do_read(h);
        return;
    }
}

static void connect_to(struct hreq *h, const struct sockaddr *sa, socklen_t len)
{
    int fd = socket(sa->sa_family, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    if (fd == -1) {
        snprintf(h->detail, sizeof(h->detail), "socket: %s", strerror(errno));
        fail_later(h, "local", h->detail);
        return;
    }
    int one = 1;
    setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
    h->fd = fd;
    h->leg.fd = fd;
    ev_io_init(&h->io, on_io, fd, EV_WRITE);
    h->io.data = h;
    if (connect(fd, sa, len) != 0 && errno != EINPROGRESS) {
        int e = errno;
        char d[160];
        snprintf(d, sizeof(d), "connect: %s", strerror(e));
        fail_later(h, e == ECONNREFUSED ? "refused" : "reset", d);
        return;
    }
    h->ev = EV_WRITE;
    ev_io_start(loop, &h->io); /* writable: connected (or failed: SO_ERROR) */
}

static void on_resolved(void *arg, int status, const struct sockaddr *sa, socklen_t len)
{
    struct hreq *h = arg;
    h->rr = NULL;
    if (status != 0) {
        char d[160];
        snprintf(d, sizeof(d), "the host did not resolve (%s)", resolve_strerror(status));
        fail_later(h, "resolve", d);
        return;
    }
    connect_to(h, sa, len);
}

static void on_timer(struct ev_loop *l, ev_timer *w, int revents)
{
    (void)l;
    (void)revents;
    struct hreq *h = w->data;
    if (h->error != NULL) {
        finish(h, h->error, h->detail);
    } else {
        finish(h, "timeout", "no whole answer within the timeout");
    }
}

int64_t ferry_hclient_request(const char *host, int port, const char *head, const char *body,
                              size_t body_len, double timeout, int tls)
{
    if (inflight >= HCLIENT_MAX_INFLIGHT) {
        return -1;
    }
    if (tls >= nctx) {
        return -2;
    }
    struct hreq *h = calloc(1, sizeof(*h));
    if (h == NULL) {
        return -2;
    }
    h->fd = -1;
    h->leg.fd = -1;
    h->tls = tls;
    h->port = port;
    h->host = strdup(host);
    int is_v6 = strchr(host, ':') != NULL;
    const char *fmt = is_v6 ? "%s\r\nHost: [%s]:%d\r\nConnection: close\r\n"
                              "Content-Length: %zu\r\n\r\n"
                            : "%s\r\nHost: %s:%d\r\nConnection: close\r\n"
                              "Content-Length: %zu\r\n\r\n";
    int n = snprintf(NULL, 0, fmt, head, host, port, body_len);
    h->out = n > 0 ? malloc((size_t)n + body_len + 1) : NULL;
    if (h->host == NULL || h->out == NULL) {
        free(h->host);
        free(h->out);
        free(h);
        return -2;
    }
    snprintf(h->out, (size_t)n + 1, fmt, head, host, port, body_len);
    if (body_len > 0) {
        memcpy(h->out + n, body, body_len);
    }
    h->out_len = (size_t)n + body_len;
    http_parser_init(&h->parser, HTTP_RESPONSE);
    h->parser.data = h;
    h->id = next_id++;
    h->started = ev_time();
    h->next = reqs;
    reqs = h;
    inflight++;
    ev_timer_init(&h->timer, on_timer, timeout > 0 ? timeout : 5., 0.);
    h->timer.data = h;
    ev_timer_start(loop, &h->timer);
    struct sockaddr_storage ss;
    socklen_t len;
    if (resolve_literal(host, port, &ss, &len) || resolve_cached(host, port, &ss, &len)) {
        connect_to(h, (struct sockaddr *)&ss, len);
    } else {
        h->rr = resolve_start(host, port, on_resolved, h);
        if (h->rr == NULL) {
            fail_later(h, "resolve", "cannot start a DNS lookup");
        }
    }
    return h->id;
}

int ferry_hclient_cancel(int64_t id)
{
    for (struct hreq *h = reqs; h != NULL; h = h->next) {
        if (h->id == id) {
            unlink_req(h);
            destroy(h);
            return 1;
        }
    }
    return 0;
}

void hclient_free_all(void)
{
    while (reqs != NULL) {
        struct hreq *h = reqs;
        unlink_req(h);
        destroy(h);
    }
    for (int i = 0; i < nctx; i++) {
        tls_ctx_free(ctxs[i].ctx);
        free(ctxs[i].ca);
    }
    nctx = 0;
}
