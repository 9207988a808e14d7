/* conn.c - connection lifecycle: accept, watchers, the pump, deferred close. */
#include "conn.h"
#include "inbound.h"
#include "intercept.h"
#include "listener.h"
#include "log.h"
#include "metrics.h"
#include "proxy.h"
#include "resolve.h"
#include "retry.h"
#include "transport.h"

#include <arpa/inet.h>
#include <errno.h>
#include <malloc.h>
#include <netinet/in.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

struct timeouts timeouts = {
    .client_head = 10, .connect = 5, .first_byte = 30,
    .idle = 300, .keepalive = 60, .request = 60, .upstream_idle = 30,
};

/* How long a closing client may keep sending before we stop listening. */
#define LINGER_SECS 2.0

static unsigned nconns;

/* After a burst the allocator keeps the freed buffers and conns as heap
 * it does not return.  Once the connection count, or the buffer blocks
 * in use (keep-alive clients gone idle), have fallen to a small part of
 * their peak, a one-shot timer (so the rest of the wave settles first)
 * drains the reuse pools and returns free pages to the kernel: one
 * malloc_trim per burst, not per close. */
#define TRIM_MIN_PEAK 512
#define TRIM_MIN_BLOCKS 128 /* 2 MiB of 16 KiB buffers */
#define TRIM_DELAY 1.0
static unsigned peak_conns;
static ev_timer trim_timer;

static void on_trim(struct ev_loop *lp, ev_timer *w, int revents)
{
    (void)lp;
    (void)w;
    (void)revents;
    buf_pool_drain();
    http_fields_drain();
    malloc_trim(0);
    peak_conns = nconns;
    buf_blocks_rebase();
}

static void conn_usage_dropped(void)
{
    int conns_fell = peak_conns >= TRIM_MIN_PEAK && nconns <= peak_conns / 16;
    int blocks_fell = buf_blocks_peak() >= TRIM_MIN_BLOCKS &&
                      buf_blocks_out() <= buf_blocks_peak() / 16;
    if ((conns_fell || blocks_fell) && !ev_is_active(&trim_timer)) {
        ev_timer_init(&trim_timer, on_trim, TRIM_DELAY, 0.);
        ev_timer_start(loop, &trim_timer);
    }
}

/* All live connections, so a stop can close them. */
static struct conn **live;
static unsigned nlive, cap_live;

unsigned conn_count(void)
{
    return nconns;
}

/* c->path while no request names one: never freed. */
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
    n = n < CONN_PATH_MAX - 1 ? n : CONN_PATH_MAX - 1;
    char *s = malloc(n + 1);
    if (s != NULL) { /* without memory the log shows no path; the request goes on */
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
    buf_trim(&c->cli.in);
    buf_trim(&c->up.in);
    buf_trim(&c->cli.out);
    buf_trim(&c->up.out);
    conn_usage_dropped();
}

static void on_client(struct ev_loop *lp, ev_io *w, int revents);
static void on_upstream(struct ev_loop *lp, ev_io *w, int revents);
static void on_timer(struct ev_loop *lp, ev_timer *w, int revents);

static void addr_text(const struct sockaddr *sa, char *out, size_t n)
{
    if (sa->sa_family == AF_INET) {
        inet_ntop(AF_INET, &((const struct sockaddr_in *)sa)->sin_addr, out, (socklen_t)n);
    } else if (sa->sa_family == AF_INET6) {
        inet_ntop(AF_INET6, &((const struct sockaddr_in6 *)sa)->sin6_addr, out, (socklen_t)n);
    } else if (sa->sa_family == AF_UNIX) {
        snprintf(out, n, "unix");
    } else {
        snprintf(out, n, "unknown");
    }
}

struct conn *conn_new(struct listener *l, int fd, const struct sockaddr *sa)
{
    if (nlive == cap_live) {
        unsigned ncap = cap_live ? cap_live * 2 : 256;
        struct conn **nl = realloc(live, ncap * sizeof(*nl));
        if (nl == NULL) {
            return NULL;
        }
        live = nl;
        cap_live = ncap;
    }
    struct conn *c = calloc(1, sizeof(*c));
    if (c == NULL) {
        return NULL;
    }
    c->cli.fd = fd;
    /* A TLS listener's handshake runs inside the first reads, under the
     * head timeout armed below. */
    if (l->tls_ctx != NULL && tls_leg_accept(&c->cli, l->tls_ctx) != 0) {
        free(c);
        return NULL;
    }
    c->l = l;
    c->in = l->in;
    l->conns++;
    c->up.fd = -1;
    buf_init(&c->cli.in, CONN_BUF_SIZE);
    buf_init(&c->cli.out, CONN_BUF_SIZE);
    buf_init(&c->up.in, CONN_BUF_SIZE);
    buf_init(&c->up.out, CONN_BUF_SIZE);
    addr_text(sa, c->client, sizeof(c->client));
    ev_io_init(&c->cli.io, on_client, fd, 0);
    ev_init(&c->up.io, on_upstream);
    c->up.io.fd = -1;
    ev_init(&c->timer, on_timer);
    /* libev runs the watchers pending in one loop iteration by priority
     * (the same priority in no set order).  After a late iteration (a
     * stalled process, a long callback) the expired timer and the readable
     * sockets are pending together: I/O first, so a response already in
     * the socket is read before its first-byte timeout is declared (the
     * read re-arms or stops the timer, which drops its pending event).
     * A poll that reports nothing runs the timer alone: conn_on_timeout
     * reads the upstream before it declares a first-byte timeout.  Only
     * the order within one iteration changes; listeners, probes and other
     * timers keep the default priority. */
    ev_set_priority(&c->cli.io, CONN_IO_PRIORITY);
    ev_set_priority(&c->up.io, CONN_IO_PRIORITY);
    c->state = CS_HEAD;
    c->path = no_path;
    conn_tunnel_init(c);
    c->last_io = loop_now();
    live[nlive++] = c;
    nconns++;
    if (nconns > peak_conns) {
        peak_conns = nconns;
    }
    c->refs++;
    c->in->start(c);
    conn_pump(c);
    c->refs--;
    if (c->closing) {
        conn_close(c);
    }
    return c;
}

static void conn_destroy(struct conn *c)
{
    /* Watchers and pending work first, then the descriptors. */
    ev_io_stop(loop, &c->cli.io);
    ev_timer_stop(loop, &c->timer);
    if (c->rr != NULL) {
        resolve_cancel(c->rr);
        c->rr = NULL;
    }
    conn_report_flush(c);
    metrics_conn_closed(c);
    retry_request_end(c);
    conn_clear_header_edits(c);
    conn_intercept_free(c);
    conn_ban_reset(c);
    conn_cache_end(c);
    if (c->in->fini != NULL) {
        c->in->fini(c);
    }
    conn_upstream_close(c);
    conn_tunnel_close_pipes(c);
    leg_tr_free(&c->cli);
    close(c->cli.fd);
    buf_free(&c->cli.in);
    buf_free(&c->cli.out);
    buf_free(&c->up.in);
    buf_free(&c->up.out);
    http_msg_release(&c->req);
    http_msg_release(&c->resp);
    conn_set_path(c, NULL, 0);
    for (unsigned i = 0; i < nlive; i++) {
        if (live[i] == c) {
            live[i] = live[--nlive];
            break;
        }
    }
    nconns--;
    conn_usage_dropped();
    listener_conn_gone(c->l);
    free(c);
}

void conn_close(struct conn *c)
{
    c->closing = 1;
    if (c->refs == 0) {
        conn_destroy(c);
    }
}

void conn_close_all(void)
{
    ev_timer_stop(loop, &trim_timer);
    while (nlive > 0) {
        struct conn *c = live[nlive - 1];
        c->refs = 0;
        conn_close(c);
    }
    free(live);
    live = NULL;
    cap_live = 0;
    conn_tunnel_pool_free();
}

/* While the request body is on its way each direction that still has
 * bytes to move must move one within timeouts.idle: the upload while the
 * request is not done, the response once its head is out.  The
 * first-byte wait between the two is a fixed timer, not this. */
double conn_exchange_idle_left(const struct conn *c)
{
    double now = loop_now();
    double left = c->last_io + c->timeout - now;
    int any = 0;
    if (!c->req_done) {
        left = c->last_up + timeouts.idle - now;
        any = 1;
    }
    if (c->resp_head_done && !c->resp_done) {
        double d = c->last_down + timeouts.idle - now;
        left = any && left < d ? left : d;
    }
    return left;
}

void conn_arm(struct conn *c, double secs)
{
    ev_timer_stop(loop, &c->timer);
    c->timeout = secs;
    c->last_io = loop_now();
    ev_timer_set(&c->timer, secs, 0.);
    ev_timer_start(loop, &c->timer);
}

static void set_events(ev_io *w, int *have, int fd, int want)
{
    if (*have == want && (want == 0 || w->fd == fd)) {
        return;
    }
    ev_io_stop(loop, w);
    if (want != 0) {
        /* w->fd == fd: the same open socket libev knows (a leg's io.fd
         * is reset to -1 when its socket closes or moves away; a kept
         * socket moving in keeps its number): only the mask changes.
         * ev_io_set would force a re-registration, an EEXIST round. */
        if (w->fd == fd) {
            ev_io_modify(w, want);
        } else {
            ev_io_set(w, fd, want);
        }
        ev_io_start(loop, w);
    }
    *have = want;
}

/* Interest follows from state and buffers, after every callback: what
 * the conn wishes to do with each leg (read, write), turned into socket
 * events by the leg's transport (a TLS read may have to wait for
 * writability, a handshake for either). */
void conn_update_io(struct conn *c)
{
    int ce = 0, ue = 0;
    int tunnel = c->state == CS_TUNNEL;
    /* Tunnels read into their pipe while it has room (tunnel.c). */
    int c_room = tunnel ? conn_tunnel_can_read_client(c) : buf_room(&c->cli.in) > 0;
    int u_room = tunnel ? conn_tunnel_can_read_upstream(c) : buf_room(&c->up.in) > 0;
    /* An intercepted CONNECT reads nothing until TLS is on (intercept.c). */
    if (!c->cli.eof && c_room && c->state != CS_MITM_HELLO) {
        ce |= EV_READ;
    }
    /* A response held for a ban verdict stays in cli.out (conn_banretry.c). */
    if ((!buf_empty(&c->cli.out) && !c->ban_hold) || c->state == CS_ADMIN_OUT ||
        c->state == CS_CACHE_OUT ||
        (tunnel && (!buf_empty(&c->up.in) || c->puc.in > 0))) {
        ce |= EV_WRITE;
    }
    if (c->up.fd >= 0) {
        int reading = c->state == CS_HANDSHAKE || c->state == CS_EXCHANGE || tunnel;
        if (reading && !c->up.eof && u_room) {
            ue |= EV_READ;
        }
        if (c->state == CS_CONNECT || !buf_empty(&c->up.out) ||
            (tunnel && (!buf_empty(&c->cli.in) || c->pcu.in > 0))) {
            ue |= EV_WRITE;
        }
    }
    int cw = ce, uw = ue;
    ce = leg_events(&c->cli, cw);
    ue = c->up.fd >= 0 ? leg_events(&c->up, uw) : 0;
    set_events(&c->cli.io, &c->cli.ev, c->cli.fd, ce);
    set_events(&c->up.io, &c->up.ev, c->up.fd, ue);
    /* TLS may hold decrypted bytes that no socket event will announce
     * (a read stopped by a full buffer): read them now that there is room. */
    if ((cw & EV_READ) && leg_pending(&c->cli)) {
        ev_feed_event(loop, &c->cli.io, EV_READ);
    }
    if ((uw & EV_READ) && leg_pending(&c->up)) {
        ev_feed_event(loop, &c->up.io, EV_READ);
    }
    if (c->pump_again) {
        /* Stopping a watcher clears its pending events, so feed after
         * set_events; conn_destroy's ev_io_stop drops it for good. */
        ev_feed_event(loop, &c->cli.io, CONN_EV_PUMP);
    }
}

/* Write what cli.out holds: bytes written (0 when the socket is full), or
 * -1 when the client went away. */
static ssize_t flush_client(struct conn *c)
{
    ssize_t total = 0;
    while (!buf_empty(&c->cli.out) && !c->ban_hold) {
        ssize_t n = leg_write(&c->cli, &c->cli.out);
        if (n > 0) {
            c->last_io = c->last_down = loop_now();
            total += n;
            continue;
        }
        if (n == -1 && (errno == EAGAIN || errno == EWOULDBLOCK)) {
            break;
        }
        return -1;
    }
    return total;
}

/* The same for up.out: bytes written, or -1 on an upstream error. */
static ssize_t flush_upstream(struct conn *c)
{
    if (c->up.fd < 0 || c->state == CS_CONNECT) {
        return 0;
    }
    ssize_t total = 0;
    while (!buf_empty(&c->up.out)) {
        ssize_t n = leg_write(&c->up, &c->up.out);
        if (n > 0) {
            c->last_io = c->last_up = loop_now();
            c->wrote_up = 1;
            total += n;
            continue;
        }
        if (n == -1 && (errno == EAGAIN || errno == EWOULDBLOCK)) {
            break;
        }
        return -1;
    }
    return total;
}

/* The final response is out: stop sending, and read what the client
 * still sends until it closes, so our close does not reset the socket
 * and destroy the response before the client has read it. */
static void drain(struct conn *c)
{
    if (!buf_empty(&c->cli.out)) {
        return;
    }
    if (!c->cli.shut) {
        leg_shutdown(&c->cli);
        c->cli.shut = 1;
        conn_arm(c, LINGER_SECS);
    }
    if (c->cli.eof) {
        conn_close(c);
        return;
    }
    buf_consume(&c->cli.in, buf_len(&c->cli.in));
}

/* Everything a pump round can change.  A round that changes none of it
 * and writes nothing made no progress; any other round may have made
 * room somewhere (a flush that empties up.out lets the request body move
 * on), so the pump goes round again. */
struct pump_mark {
    enum conn_state state;
    size_t cli_in, cli_out, up_in, up_out, fwd, in_cu, in_uc;
    unsigned flags;
};

static void pump_mark(const struct conn *c, struct pump_mark *m)
{
    memset(m, 0, sizeof(*m));
    m->state = c->state;
    m->cli_in = buf_len(&c->cli.in);
    m->cli_out = buf_len(&c->cli.out);
    m->up_in = buf_len(&c->up.in);
    m->up_out = buf_len(&c->up.out);
    m->fwd = c->fwd;
    m->in_cu = c->pcu.in;
    m->in_uc = c->puc.in;
    m->flags = (unsigned)c->req_done | (unsigned)c->resp_head_done << 1 |
               (unsigned)c->resp_done << 2 | (unsigned)c->cli.shut << 3 |
               (unsigned)c->up.shut << 4 | (unsigned)(c->up.fd >= 0) << 5;
}

static int pump_moved(const struct pump_mark *a, const struct pump_mark *b)
{
    return a->state != b->state || a->cli_in != b->cli_in || a->cli_out != b->cli_out ||
           a->up_in != b->up_in || a->up_out != b->up_out || a->fwd != b->fwd ||
           a->in_cu != b->in_cu || a->in_uc != b->in_uc || a->flags != b->flags;
}

/* Rounds one pump may run before it yields to other connections. */
#define PUMP_ROUNDS 8

/* Move every part of the connection forward as far as it can go. */
void conn_pump(struct conn *c)
{
    int moving = 0;
    for (int round = 0; round < PUMP_ROUNDS && !c->closing; round++) {
        struct pump_mark before, after;
        pump_mark(c, &before);
        switch (c->state) {
        case CS_HEAD:
            if (c->mitm != NULL) {
                conn_intercept_input(c); /* a request inside an intercepted CONNECT */
            } else {
                c->in->input(c); /* a request head, or a handshake */
            }
            break;
        case CS_MITM_HELLO:
            conn_intercept_pump(c);
            break;
        case CS_EXCHANGE:
            conn_exchange(c); /* failures switch state; the flush below still runs */
            break;
        case CS_TUNNEL:
            conn_tunnel(c);
            break;
        case CS_DRAIN:
            drain(c);
            break;
        case CS_ADMIN_OUT:
            admin_pump(c);
            break;
        case CS_CACHE_OUT:
            conn_cache_pump(c); /* an answer from the HTTP cache */
            break;
        default:
            break;
        }
        if (c->closing) {
            return;
        }
        ssize_t wc = flush_client(c);
        if (wc < 0) {
            conn_close(c);
            return;
        }
        ssize_t wu = flush_upstream(c);
        if (wu < 0) {
            if (c->state == CS_TUNNEL) {
                conn_close(c);
                return;
            }
            conn_attempt_failed(c, FERRY_FAIL_RESET, FERR_UPSTREAM_RESET);
            if (c->closing) {
                return;
            }
        }
        pump_mark(c, &after);
        moving = wc > 0 || wu > 0 || pump_moved(&before, &after);
        if (!moving) {
            break;
        }
    }
    if (c->closing) {
        return;
    }
    if (c->state == CS_DRAIN) {
        drain(c);
        if (c->closing) {
            return;
        }
    }
    /* Still moving after the last round: the work may need no socket
     * event at all (the bytes are already here), so pump again on a
     * later loop turn instead of waiting for one that may never come. */
    if (c->state == CS_HEAD) {
        /* The last answer may have left only now: an idle conn keeps no buffer. */
        buf_trim(&c->cli.in);
        buf_trim(&c->cli.out);
    }
    c->pump_again = moving;
    conn_update_io(c);
}

/* A TLS listener's handshake failed.  A client that spoke plain HTTP
 * (an http:// proxy URL for a TLS port) is answered in plain HTTP: the
 * leg drops TLS and the usual error answer goes out.  1: answered. */
static int conn_tls_refused(struct conn *c)
{
    if (tls_leg_saw_http(&c->cli)) {
        leg_tr_free(&c->cli);
        conn_fail(c, FERR_TLS_PLAIN_HTTP);
        return 1;
    }
    struct log_ctx ctx = { .cid = c->cid, .listener = c->l->name };
    log_event(LOG_INFO, "FERRY-1070", &ctx, "TLS handshake with client %s failed: %s",
              c->client, tls_leg_error(&c->cli));
    c->code = "FERRY-1070";
    return 0;
}

static void read_client(struct conn *c)
{
    if (c->state == CS_MITM_HELLO) {
        return; /* a stale event: the bytes are TLS's, read once it is on */
    }
    int handshaking = tls_leg_handshaking(&c->cli);
    ssize_t n = leg_read(&c->cli, &c->cli.in);
    if (n > 0) {
        c->bytes_in += (unsigned long long)n;
        c->last_io = c->last_up = loop_now();
    } else if (n == 0) {
        c->cli.eof = 1;
    } else if (errno != EAGAIN && errno != EWOULDBLOCK && errno != ENOBUFS) {
        int answered = handshaking && (c->mitm != NULL ? conn_intercept_tls_failed(c)
                                                       : conn_tls_refused(c));
        if (!answered) {
            c->cli.eof = 1; /* reset: nothing more will come */
        }
    }
}

static void on_client(struct ev_loop *lp, ev_io *w, int revents)
{
    (void)lp;
    struct conn *c = (struct conn *)((char *)w - offsetof(struct conn, cli.io));
    c->refs++;
    if (revents & CONN_EV_PUMP) {
        c->pump_again = 0;
    }
    /* A TLS read may wait for writability (tls_events): try it on either. */
    int readable = (revents & EV_READ) ||
                   ((revents & EV_WRITE) && !leg_plain(&c->cli) && !c->cli.eof);
    if (readable && !conn_tunnel_read_client(c)) {
        read_client(c);
    }
    conn_pump(c);
    if (!c->closing && c->cli.eof && c->state == CS_HEAD && buf_empty(&c->cli.out)) {
        conn_close(c); /* an idle or half-sent client left */
    }
    c->refs--;
    if (c->closing) {
        conn_close(c);
    }
}

static void on_upstream(struct ev_loop *lp, ev_io *w, int revents)
{
    (void)lp;
    struct conn *c = (struct conn *)((char *)w - offsetof(struct conn, up.io));
    c->refs++;
    conn_upstream_event(c, revents);
    if (!c->closing) {
        conn_pump(c);
    }
    c->refs--;
    if (c->closing) {
        conn_close(c);
    }
}

static void on_timer(struct ev_loop *lp, ev_timer *w, int revents)
{
    (void)lp;
    (void)revents;
    struct conn *c = (struct conn *)((char *)w - offsetof(struct conn, timer));
    c->refs++;
    /* Idle timeouts are pushed back lazily: activity only stamps
     * last_io, and the timer re-arms itself for the remainder. */
    double left = c->last_io + c->timeout - loop_now();
    int activity_based = c->state == CS_TUNNEL || c->state == CS_DRAIN ||
                         c->state == CS_ADMIN_OUT || c->state == CS_CACHE_OUT;
    if (c->state == CS_EXCHANGE && (!c->req_done || c->resp_head_done)) {
        activity_based = 1;
        left = conn_exchange_idle_left(c);
    }
    if (activity_based && left > 0.001) {
        ev_timer_set(&c->timer, left, 0.);
        ev_timer_start(loop, &c->timer);
    } else {
        conn_on_timeout(c);
        if (!c->closing) {
            conn_pump(c);
        }
    }
    c->refs--;
    if (c->closing) {
        conn_close(c);
    }
}
