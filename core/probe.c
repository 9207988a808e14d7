/* probe.c - active health probes, one schedule per probed proxy.
 *
 * A probe reaches the proxy like real traffic does: the same address
 * (literal or c-ares), and for http and connect checks the same
 * connector (upstream_for), driven on a bare leg and hop of the probe's
 * own that it keeps, buffers included, for its next run.  Each probe has one ev_timer: the schedule while idle, the
 * probe's own deadline while it runs, so a probe never overlaps itself
 * and never has a second timer.
 *
 * Probes stay out of the way of traffic: all I/O is non-blocking on the
 * loop, starts are jittered so a thousand proxies do not probe in step,
 * and a global bound caps the probes in flight (over it, a probe waits a
 * short random delay).  A proxy that keeps failing is probed less often:
 * the interval doubles per failure past `fall`, up to 16x.
 *
 * A tcp check proves only that the kernel completes a handshake, which a
 * stopped or wedged proxy still does.  So after real traffic took the
 * proxy down for timeouts, resets or garbled handshakes (health.c sets
 * needs_answer), its tcp probe also says hello in the proxy's protocol
 * and passes only on an answer within the timeout: the connector's
 * hello (any HTTP response to `OPTIONS *` from an HTTP proxy, the method
 * choice from a SOCKS5 one).  Nothing is relayed, so no target is needed.
 *
 * A probe that cannot even start for a local reason (no file descriptor,
 * no memory, the resolver shutting down) says nothing about the proxy:
 * it is not reported to health, only tried again later.
 *
 * In a fleet each proxy is probed by one node (lua/ferry/fleet_probes.lua
 * divides them): a proxy another node probes keeps its schedule, whose
 * runs are skipped, so taking the duty back costs no allocation and the
 * other node's verdicts arrive through ferry_probe_shared. */
#include "probe.h"
#include "conn.h"
#include "health.h"
#include "log.h"
#include "metrics.h"
#include "proxy.h"
#include "resolve.h"
#include "transport.h"
#include "upstream.h"

#include <ares.h>
#include <errno.h>
#include <math.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#define PROBE_EXPECT_MAX 16
#define PROBE_PATH_MAX 512
#define PROBE_BACKOFF_MAX 16.0     /* the backoff never exceeds 16 intervals */
#define PROBE_JITTER 0.1           /* +-10 % of the interval */
#define PROBE_DEFER_MIN 0.05       /* seconds a probe waits when the bound is hit */
#define PROBE_DEFER_SPAN 0.2
#define PROBE_BUF 4096             /* each of the probe's two buffers, at least */
#define PROBE_REQUEST_MAX 65536    /* CONNECT or GET with the proxy's headers */
#define PROBE_WARN_WINDOW 10.0

enum probe_step {
    PS_IDLE = 0,   /* waiting for the schedule */
    PS_RESOLVE,    /* looking up the proxy's address */
    PS_CONNECT,    /* TCP connect to the proxy */
    PS_TLS,        /* TLS handshake with an https:// proxy */
    PS_HANDSHAKE,  /* CONNECT / SOCKS5 through the connector */
    PS_HTTP,       /* GET sent, waiting for the response head */
    PS_HELLO       /* tcp check that needs an answer: hello sent, waiting */
};

/* What a probe checks and how often: one ferry_probe_set call. */
struct probe_conf {
    int kind;                     /* enum ferry_probe_kind */
    char *host;                   /* target host (http, connect), else NULL */
    int port;
    char *path;                   /* request target of an http check */
    int expect[PROBE_EXPECT_MAX]; /* accepted statuses; none = 2xx/3xx */
    int nexpect;
    double interval, timeout;     /* seconds */
};

struct probe {
    struct proxy *p;             /* ro: the proxy probed */
    struct probe_conf conf;      /* ro: the parameters runs use */
    struct probe_conf next;      /* private: set while a run is in flight */
    ev_timer timer;              /* private: schedule, or the running probe's deadline */
    struct leg leg;              /* private: the probe socket, its watcher and buffers
                                  * (allocated at the first run, kept between runs) */
    struct hop hop;              /* private: the connector's attempt on leg */
    struct http_msg resp;        /* private: the answer's head */
    struct resolve_req *rr;      /* private: pending lookup */
    enum probe_step step;        /* private: PS_IDLE = not in flight */
    double started;              /* private: ev_time() when the run began */
    unsigned has_bufs:1;         /* private: leg's buffers are allocated */
    unsigned has_next:1;         /* private: next holds parameters to apply */
};

static int inflight;
static int concurrency = 64;
static uint64_t runs; /* probe runs started here */
static double last_full_warn, last_local_warn;
/* Every schedule, so probe_stop_all can find them. */
static struct probe **all;
static unsigned nall, cap_all;

static void schedule(struct probe *pr, double delay);
static void handshake_failed(struct probe *pr);

void ferry_probe_set_concurrency(int n)
{
    concurrency = n > 0 ? n : 64;
}

int ferry_probe_inflight(void)
{
    return inflight;
}

static double uniform(void)
{
    return random() / (double)RAND_MAX;
}

static double jittered(double secs)
{
    return secs * (1.0 + PROBE_JITTER * (2.0 * uniform() - 1.0));
}

/* The wait before the next probe: the interval, doubled per failed
 * probe beyond `fall` while the proxy stays down, capped at 16x. */
static double next_delay(const struct probe *pr)
{
    const struct ferry_proxy *pub = &pr->p->pub;
    double f = 1.0;
    if ((pub->flags & FERRY_PROXY_DOWN) && pub->probe_fails > pub->fall) {
        unsigned k = pub->probe_fails - pub->fall;
        f = k >= 4 ? PROBE_BACKOFF_MAX : ldexp(1.0, (int)k);
    }
    return jittered(pr->conf.interval * f);
}

static void conf_free(struct probe_conf *pc)
{
    free(pc->host);
    free(pc->path);
    pc->host = pc->path = NULL;
}

static void set_io(struct probe *pr, int fd, int events)
{
    struct leg *g = &pr->leg;
    if (g->ev == events && ev_is_active(&g->io)) {
        return;
    }
    ev_io_stop(loop, &g->io);
    g->ev = events;
    if (events != 0) {
        ev_io_set(&g->io, fd, events);
        ev_io_start(loop, &g->io);
    }
}

/* End a run: stop the watchers and the lookups, then close the socket.
 * The leg's buffers stay for the next run. */
static void release(struct probe *pr)
{
    struct leg *g = &pr->leg;
    if (pr->rr != NULL) {
        resolve_cancel(pr->rr);
        pr->rr = NULL;
    }
    hop_fini(&pr->hop);
    ev_io_stop(loop, &g->io);
    g->ev = 0;
    ev_timer_stop(loop, &pr->timer);
    if (g->fd >= 0) {
        leg_tr_free(g);
        close(g->fd);
        g->fd = -1;
    }
    if (pr->has_bufs) {
        buf_consume(&g->in, buf_len(&g->in));
        buf_consume(&g->out, buf_len(&g->out));
    }
    http_msg_release(&pr->resp);
    if (pr->step != PS_IDLE) {
        pr->step = PS_IDLE;
        inflight--;
    }
    /* A reload during the run: its parameters apply from now on. */
    if (pr->has_next) {
        conf_free(&pr->conf);
        pr->conf = pr->next;
        memset(&pr->next, 0, sizeof(pr->next));
        pr->has_next = 0;
    }
}

/* The run has a verdict on the proxy: report it, then wait. */
static void finish(struct probe *pr, enum probe_result r, const char *why)
{
    double ms = (ev_time() - pr->started) * 1000.0;
    release(pr);
    health_probe_result(pr->p, r == PROBE_OK, ms > 0 ? ms : 0, why);
    pr->p->probe_verdict = (pr->p->pub.flags & FERRY_PROXY_DOWN) ? 0 : 1;
    metrics_probe(r);
    schedule(pr, next_delay(pr));
}

/* The run could not happen for a reason of ours, not the proxy's: no
 * verdict, try again at the next interval. */
static void abandon(struct probe *pr, const char *why)
{
    release(pr);
    double now = loop_now();
    if (now - last_local_warn >= PROBE_WARN_WINDOW) {
        last_local_warn = now;
        struct log_ctx ctx = { .proxy = pr->p->display };
        log_event(LOG_WARN, "FERRY-6011", &ctx, "a probe of proxy %s could not run: %s",
                  pr->p->label, why);
    }
    schedule(pr, jittered(pr->conf.interval));
}

static int status_expected(const struct probe_conf *pc, int st)
{
    if (pc->nexpect == 0) {
        return st >= 200 && st < 400;
    }
    for (int i = 0; i < pc->nexpect; i++) {
        if (pc->expect[i] == st) {
            return 1;
        }
    }
    return 0;
}

/* Queue the GET of an http check: absolute form to an HTTP proxy (with
 * its credentials and headers), origin form inside a tunnel and to a
 * backend (check = "http", path = ...). */
static void queue_get(struct probe *pr)
{
    struct buf *out = &pr->leg.out;
    struct proxy *p = pr->p;
    const struct probe_conf *pc = &pr->conf;
    char line[PROBE_PATH_MAX + 2 * HOST_MAX_LEN + 96];
    const char *lb = strchr(pc->host, ':') != NULL ? "[" : "";
    const char *rb = *lb != '\0' ? "]" : "";
    int absolute = upstream_absolute(p->pub.scheme);
    int n;
    if (upstream_is_backend(p->pub.scheme)) {
        /* A backend is asked itself, in origin form; host is the whole
         * Host value (the check's host, else the backend's host:port). */
        n = snprintf(line, sizeof(line), "GET %s HTTP/1.1\r\nHost: %s\r\n", pc->path, pc->host);
    } else if (absolute) {
        n = snprintf(line, sizeof(line), "GET http://%s%s%s:%d%s HTTP/1.1\r\nHost: %s%s%s:%d\r\n",
                     lb, pc->host, rb, pc->port, pc->path, lb, pc->host, rb, pc->port);
    } else {
        n = snprintf(line, sizeof(line), "GET %s HTTP/1.1\r\nHost: %s%s%s:%d\r\n", pc->path, lb,
                     pc->host, rb, pc->port);
    }
    if (n < 0 || (size_t)n >= sizeof(line)) {
        n = 0; /* cannot happen: ferry_probe_set bounds host and path */
    }
    buf_append(out, line, (size_t)n);
    if (absolute && p->auth_header != NULL) {
        buf_append(out, p->auth_header, strlen(p->auth_header));
    }
    if (absolute && p->extra_headers != NULL) {
        buf_append(out, p->extra_headers, strlen(p->extra_headers));
    }
    static const char tail[] = "User-Agent: ferry-probe\r\nConnection: close\r\n\r\n";
    buf_append(out, tail, sizeof(tail) - 1);
    pr->step = PS_HTTP;
}

/* The connector finished its handshake (or needed none). */
static void handshake_done(struct probe *pr)
{
    if (pr->conf.kind == FERRY_PROBE_CONNECT) {
        finish(pr, PROBE_OK, NULL);
        return;
    }
    buf_consume(&pr->leg.in, buf_len(&pr->leg.in));
    queue_get(pr);
}

/* Queue the hello of a tcp check that needs an answer: the connector's
 * greeting, one the proxy answers in its protocol (OPTIONS * to an HTTP
 * proxy, the method offer to a SOCKS5 one). */
static void queue_hello(struct probe *pr)
{
    pr->hop.ops->hello(&pr->hop);
    pr->step = PS_HELLO;
}

/* What came back to the hello: enough to judge, or wait for more. */
static void on_hello_answer(struct probe *pr)
{
    const struct hop *h = &pr->hop;
    int r = h->ops->hello_input(&pr->hop);
    if (r == UP_AGAIN) {
        return;
    }
    char why[96];
    if (r == UP_DONE) {
        snprintf(why, sizeof(why), "probe passed: the proxy answered %s", h->ops->hello_what);
        finish(pr, PROBE_OK, why);
    } else if (h->fail_err == FERR_HEAD_TOO_LARGE) {
        finish(pr, PROBE_BAD_RESPONSE, "probe response head too large");
    } else if (h->fail_err == FERR_BAD_RESPONSE) {
        finish(pr, PROBE_BAD_RESPONSE, "probe response is not HTTP");
    } else {
        snprintf(why, sizeof(why), "probe handshake failed: the answer to %s is not in its protocol",
                 h->ops->hello_what);
        finish(pr, PROBE_HANDSHAKE, why);
    }
}

/* TCP (and TLS, for an https:// proxy) is up: the check proper. */
static void transport_ready(struct probe *pr)
{
    struct hop *h = &pr->hop;
    if (pr->conf.kind == FERRY_PROBE_TCP) {
        /* Decided now, not at the start: real traffic may have taken the
         * proxy down while this run was connecting. */
        if (pr->p->needs_answer && (pr->p->pub.flags & FERRY_PROXY_DOWN) &&
            h->ops->hello != NULL) {
            queue_hello(pr);
        } else {
            finish(pr, PROBE_OK, NULL);
        }
        return;
    }
    pr->step = PS_HANDSHAKE;
    int r = h->ops->start(h);
    if (r == UP_DONE) {
        handshake_done(pr);
    } else if (r == UP_FAIL) {
        handshake_failed(pr);
    }
}

/* One step of the TLS handshake with an https:// proxy: a tcp check of
 * one passes only once its certificate verified, like real traffic. */
static void tls_step(struct probe *pr)
{
    struct leg *g = &pr->leg;
    enum tr_hs r = leg_tr(g)->handshake(g);
    if (r == TR_HS_DONE) {
        transport_ready(pr);
    } else if (r == TR_HS_FAIL) {
        char why[200];
        snprintf(why, sizeof(why), "probe TLS failed: %s", tls_leg_error(g));
        finish(pr, PROBE_HANDSHAKE, why);
    }
}

static void connected(struct probe *pr)
{
    struct proxy *p = pr->p;
    if (!upstream_uses_tls(p->pub.scheme)) {
        transport_ready(pr);
        return;
    }
    if (p->tls_ctx == NULL ||
        tls_leg_connect(&pr->leg, p->tls_ctx, p->tls_name != NULL ? p->tls_name : p->host,
                        p->tls_verify) != 0) {
        abandon(pr, "cannot set up TLS (out of memory)");
        return;
    }
    pr->step = PS_TLS;
    tls_step(pr);
}

static void on_response(struct probe *pr)
{
    struct buf *in = &pr->leg.in;
    const char *base = buf_head(in);
    size_t hl = http_head_len(base, buf_len(in));
    if (hl == 0) {
        if (buf_room(in) == 0) {
            finish(pr, PROBE_BAD_RESPONSE, "probe response head too large");
        }
        return;
    }
    if (http_parse_response(&pr->resp, base, hl, 1) != HTTP_PARSE_OK) {
        finish(pr, PROBE_BAD_RESPONSE, "probe response is not HTTP");
        return;
    }
    int st = pr->resp.status;
    if (status_expected(&pr->conf, st)) {
        finish(pr, PROBE_OK, NULL);
        return;
    }
    char why[64];
    int auth = st == 407 && upstream_absolute(pr->p->pub.scheme);
    snprintf(why, sizeof(why), auth ? "probe: proxy auth failed (407)" : "probe got status %d", st);
    finish(pr, auth ? PROBE_AUTH : PROBE_STATUS, why);
}

/* The connector refused the handshake: say why as precisely as it can. */
static void handshake_failed(struct probe *pr)
{
    const struct hop *h = &pr->hop;
    char why[64];
    if (h->fail_kind == FERRY_FAIL_AUTH) {
        finish(pr, PROBE_AUTH, "probe: proxy auth failed");
    } else if (h->fail_err == FERR_RESOLVE_FAILED) {
        finish(pr, PROBE_FAILED, "probe: the check's target did not resolve");
    } else if (upstream_absolute(pr->p->pub.scheme) && pr->resp.status > 0) {
        snprintf(why, sizeof(why), "probe handshake failed: CONNECT answered %d",
                 pr->resp.status);
        finish(pr, PROBE_HANDSHAKE, why);
    } else {
        finish(pr, PROBE_HANDSHAKE, "probe handshake failed");
    }
}

/* Readable or writable socket of a handshake or an http check. */
static void on_exchange(struct probe *pr, int revents)
{
    struct leg *g = &pr->leg;
    if (pr->step == PS_TLS) {
        tls_step(pr);
        return;
    }
    if ((revents & EV_WRITE) && !buf_empty(&g->out)) {
        if (leg_write(g, &g->out) == -1 && errno != EAGAIN && errno != EWOULDBLOCK) {
            finish(pr, PROBE_CLOSED, "probe: the proxy closed the connection");
            return;
        }
    }
    /* A TLS read may wait for writability (tls_events): try it on either. */
    if (!(revents & EV_READ) && leg_plain(g)) {
        return;
    }
    ssize_t n = leg_read(g, &g->in);
    if (n == -1 && (errno == EAGAIN || errno == EWOULDBLOCK)) {
        return;
    }
    if (n == 0 || n == -1) {
        finish(pr, PROBE_CLOSED, "probe: the proxy closed the connection");
        return;
    }
    if (pr->step == PS_HTTP) {
        on_response(pr);
        return;
    }
    if (pr->step == PS_HELLO) {
        on_hello_answer(pr);
        return;
    }
    int r = pr->hop.ops->input(&pr->hop);
    if (r == UP_DONE) {
        handshake_done(pr);
    } else if (r == UP_FAIL) {
        handshake_failed(pr);
    }
}

static void on_io(struct ev_loop *l, ev_io *w, int revents)
{
    (void)l;
    struct probe *pr = w->data;
    struct leg *g = &pr->leg;
    if (pr->step == PS_CONNECT) {
        int err = 0;
        socklen_t el = sizeof(err);
        if (getsockopt(g->fd, SOL_SOCKET, SO_ERROR, &err, &el) == -1) {
            err = errno;
        }
        if (err != 0) {
            finish(pr, err == ECONNREFUSED ? PROBE_REFUSED : PROBE_CONNECT_FAILED,
                   err == ECONNREFUSED ? "probe connect refused" : "probe connect failed");
            return;
        }
        connected(pr);
    } else {
        on_exchange(pr, revents);
    }
    if (pr->step != PS_IDLE) {
        set_io(pr, g->fd, leg_events(g, EV_READ | (buf_empty(&g->out) ? 0 : EV_WRITE)));
    }
}

/* Errors of socket()/connect() that are ours, not the proxy's. */
static int local_error(int e)
{
    return e == EMFILE || e == ENFILE || e == ENOBUFS || e == ENOMEM || e == EADDRNOTAVAIL;
}

static void connect_to(struct probe *pr, const struct sockaddr *sa, socklen_t len)
{
    struct leg *g = &pr->leg;
    int fd = socket(sa->sa_family, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    if (fd == -1) {
        abandon(pr, strerror(errno));
        return;
    }
    int one = 1;
    setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
    g->fd = fd;
    pr->step = PS_CONNECT;
    if (connect(fd, sa, len) == 0) {
        connected(pr);
        if (pr->step != PS_IDLE) {
            set_io(pr, fd, leg_events(g, EV_READ | (buf_empty(&g->out) ? 0 : EV_WRITE)));
        }
        return;
    }
    if (errno == EINPROGRESS) {
        set_io(pr, fd, EV_WRITE);
    } else if (local_error(errno)) {
        abandon(pr, strerror(errno));
    } else {
        finish(pr, errno == ECONNREFUSED ? PROBE_REFUSED : PROBE_CONNECT_FAILED,
               errno == ECONNREFUSED ? "probe connect refused" : "probe connect failed");
    }
}

static void on_resolved(void *arg, int status, const struct sockaddr *sa, socklen_t len)
{
    struct probe *pr = arg;
    pr->rr = NULL;
    if (status == ARES_EDESTRUCTION || status == ARES_ECANCELLED || status == ARES_ENOMEM) {
        abandon(pr, "the resolver is shutting down or out of memory");
        return;
    }
    if (status != 0) {
        finish(pr, PROBE_RESOLVE, "probe: the proxy's host did not resolve");
        return;
    }
    connect_to(pr, sa, len);
}

/* Bytes of the most the probe queues at once: a CONNECT or a GET with
 * the proxy's credentials and headers (an upper bound). */
static size_t request_size(const struct proxy *p, const char *host, const char *path)
{
    size_t n = 160 + (path != NULL ? strlen(path) : 0) + 2 * (host != NULL ? strlen(host) : 0);
    if (upstream_absolute(p->pub.scheme)) {
        n += (p->auth_header != NULL ? strlen(p->auth_header) : 0) +
             (p->extra_headers != NULL ? strlen(p->extra_headers) : 0);
    } else {
        /* SOCKS5 hello, auth, CONNECT; or a SOCKS4 request with its user id */
        n += 3 + 255 + 255 + 4 + HOST_MAX_LEN + 2 + (p->user != NULL ? strlen(p->user) : 0);
    }
    return n < PROBE_BUF ? PROBE_BUF : n;
}

/* A connector woke the probe by itself (its own lookup ended). */
static void probe_woke(struct hop *h, int result)
{
    struct probe *pr = h->owner;
    if (result == UP_DONE) {
        handshake_done(pr);
    } else if (result == UP_FAIL) {
        handshake_failed(pr);
    }
    if (pr->step != PS_IDLE) {
        set_io(pr, pr->leg.fd, EV_READ | (buf_empty(&pr->leg.out) ? 0 : EV_WRITE));
    }
}

/* Ready the leg and the hop for a run.  The buffers are set up at the
 * first run and reused by every later one. */
static void probe_hop(struct probe *pr)
{
    struct leg *g = &pr->leg;
    const struct probe_conf *pc = &pr->conf;
    /* The request must fit whole: grow out if the proxy's headers grew
     * (by a reload), which is the only time it reallocates. */
    size_t need = request_size(pr->p, pc->host, pc->path);
    if (!pr->has_bufs || need > g->out.cap) {
        if (pr->has_bufs) {
            buf_free(&g->out);
        } else {
            buf_init(&g->in, PROBE_BUF);
        }
        buf_init(&g->out, need);
        pr->has_bufs = 1;
    }
    struct hop *h = &pr->hop;
    const struct upstream_scheme *sc = upstream_scheme(pr->p->pub.scheme);
    h->leg = g;
    h->proxy = pr->p;
    h->host = pc->host != NULL ? pc->host : "";
    h->port = pc->port;
    h->is_connect = pc->kind == FERRY_PROBE_CONNECT ||
                    (pc->kind == FERRY_PROBE_HTTP && sc != NULL && !sc->probe_http);
    h->resp = &pr->resp;
    h->ops = sc != NULL ? sc->ops : &up_direct;
    h->wake = probe_woke;
    h->owner = pr;
    hop_reset(h);
    pr->resp.status = 0;
}

static void start(struct probe *pr)
{
    struct proxy *p = pr->p;
    probe_hop(pr);
    inflight++;
    runs++;
    pr->step = PS_RESOLVE;
    pr->started = ev_time();
    /* The same timer is now the deadline of connect + handshake + answer. */
    ev_timer_stop(loop, &pr->timer);
    ev_timer_set(&pr->timer, pr->conf.timeout, 0.);
    ev_timer_start(loop, &pr->timer);
    struct sockaddr_storage ss;
    socklen_t len;
    if (p->has_addr) {
        connect_to(pr, (struct sockaddr *)&p->addr, p->addr_len);
        return;
    }
    if (resolve_literal(p->host, p->port, &ss, &len) || resolve_cached(p->host, p->port, &ss, &len)) {
        connect_to(pr, (struct sockaddr *)&ss, len);
        return;
    }
    pr->rr = resolve_start(p->host, p->port, on_resolved, pr);
    if (pr->rr == NULL) {
        abandon(pr, "cannot start a DNS lookup");
    }
}

static void on_timer(struct ev_loop *l, ev_timer *w, int revents)
{
    (void)l;
    (void)revents;
    struct probe *pr = w->data;
    if (pr->step != PS_IDLE) {
        finish(pr, PROBE_TIMEOUT, "probe timed out");
        return;
    }
    if ((pr->p->pub.flags & FERRY_PROXY_REMOVED) || pr->p->probe_elsewhere) {
        schedule(pr, jittered(pr->conf.interval));
        return;
    }
    if (inflight >= concurrency) {
        double now = loop_now();
        if (now - last_full_warn >= PROBE_WARN_WINDOW) {
            last_full_warn = now;
            log_event(LOG_WARN, "FERRY-6010", NULL,
                      "%d probes in flight, the concurrency bound: probes are deferred",
                      inflight);
        }
        schedule(pr, PROBE_DEFER_MIN + PROBE_DEFER_SPAN * uniform());
        return;
    }
    start(pr);
}

static void schedule(struct probe *pr, double delay)
{
    ev_timer_stop(loop, &pr->timer);
    ev_timer_set(&pr->timer, delay, 0.);
    ev_timer_start(loop, &pr->timer);
}

/* "200,204" (spaces allowed) into pc->expect; NULL or "" = none. */
static int parse_expect(struct probe_conf *pc, const char *expect, const char **err)
{
    pc->nexpect = 0;
    const char *s = expect != NULL ? expect : "";
    for (;;) {
        while (*s == ' ') {
            s++;
        }
        if (*s == '\0') {
            return 0;
        }
        char *end;
        long v = strtol(s, &end, 10);
        if (end == s || v < 100 || v > 599) {
            *err = "expect: HTTP statuses from 100 to 599, separated by commas";
            return -1;
        }
        if (pc->nexpect >= PROBE_EXPECT_MAX) {
            *err = "expect: at most 16 statuses";
            return -1;
        }
        pc->expect[pc->nexpect++] = (int)v;
        while (*end == ' ') {
            end++;
        }
        if (*end != ',' && *end != '\0') {
            *err = "expect: HTTP statuses from 100 to 599, separated by commas";
            return -1;
        }
        s = *end == ',' ? end + 1 : end;
    }
}

/* Check the arguments of ferry_probe_set and fill a conf (strings copied). */
static int conf_make(struct probe_conf *pc, const struct proxy *p, int kind, const char *host,
                     int port, const char *path, const char *expect, double interval,
                     double timeout, const char **err)
{
    memset(pc, 0, sizeof(*pc));
    if (kind < FERRY_PROBE_TCP || kind > FERRY_PROBE_CONNECT) {
        *err = "unknown check kind";
        return -1;
    }
    if (!(interval > 0) || !(timeout > 0) || interval > 86400 || timeout > 86400) {
        *err = "interval and timeout must be positive (seconds, at most a day)";
        return -1;
    }
    if (p->host == NULL || p->port < 1 || p->port > 65535) {
        *err = "the proxy has no address to probe";
        return -1;
    }
    if (kind != FERRY_PROBE_TCP) {
        if (upstream_scheme(p->pub.scheme) == NULL || p->pub.scheme == FERRY_SCHEME_DIRECT) {
            *err = "http and connect checks need an http, https, socks5, socks4 or socks4a proxy";
            return -1;
        }
        if (host == NULL || *host == '\0' || strlen(host) > HOST_MAX_LEN) {
            *err = "an http or connect check needs a target host";
            return -1;
        }
        if (port < 1 || port > 65535) {
            *err = "the check's target port must be 1..65535";
            return -1;
        }
    }
    if (path != NULL && (strlen(path) > PROBE_PATH_MAX || strpbrk(path, " \r\n") != NULL)) {
        *err = "the check's path must be at most 512 bytes, without spaces or line breaks";
        return -1;
    }
    if (path != NULL && *path != '\0' && *path != '/') {
        *err = "the check's path must start with /";
        return -1;
    }
    if (host != NULL && strpbrk(host, " \r\n/") != NULL) {
        *err = "the check's target host is not a host name";
        return -1;
    }
    if (kind == FERRY_PROBE_HTTP && parse_expect(pc, expect, err) != 0) {
        return -1;
    }
    if (request_size(p, host, path) > PROBE_REQUEST_MAX) {
        *err = "the proxy's headers make the probe's request longer than 64 KiB";
        return -1;
    }
    pc->kind = kind;
    pc->port = kind != FERRY_PROBE_TCP ? port : 0;
    pc->interval = interval;
    pc->timeout = timeout;
    pc->host = kind != FERRY_PROBE_TCP ? strdup(host) : NULL;
    pc->path = strdup(path != NULL && *path != '\0' ? path : "/");
    if (pc->path == NULL || (kind != FERRY_PROBE_TCP && pc->host == NULL)) {
        conf_free(pc);
        *err = "out of memory";
        return -1;
    }
    return 0;
}

static void forget(struct probe *pr)
{
    for (unsigned i = 0; i < nall; i++) {
        if (all[i] == pr) {
            all[i] = all[--nall];
            break;
        }
    }
}

/* Stop a schedule, with its run if one is in flight (no verdict), and free it. */
static void probe_free(struct probe *pr)
{
    release(pr);
    ev_timer_stop(loop, &pr->timer);
    if (pr->has_bufs) {
        buf_free(&pr->leg.in);
        buf_free(&pr->leg.out);
    }
    conf_free(&pr->conf);
    conf_free(&pr->next);
    free(pr);
}

/* A new schedule for p, registered; NULL when out of memory. */
static struct probe *probe_new(struct proxy *p)
{
    if (nall == cap_all) {
        unsigned ncap = cap_all != 0 ? cap_all * 2 : 64;
        struct probe **grown = realloc(all, ncap * sizeof(*grown));
        if (grown == NULL) {
            return NULL;
        }
        all = grown;
        cap_all = ncap;
    }
    struct probe *pr = calloc(1, sizeof(*pr));
    if (pr == NULL) {
        return NULL;
    }
    pr->p = p;
    ev_init(&pr->timer, on_timer);
    pr->timer.data = pr;
    pr->leg.fd = -1;
    ev_init(&pr->leg.io, on_io);
    pr->leg.io.data = pr;
    all[nall++] = pr;
    p->probe = pr;
    return pr;
}

int ferry_probe_set(struct ferry_proxy *fp, int kind, const char *host, int port,
                    const char *path, const char *expect, double interval, double timeout,
                    const char **err)
{
    struct proxy *p = (struct proxy *)fp;
    if (p == NULL) {
        *err = "no proxy";
        return FERRY_ERROR;
    }
    if (kind == FERRY_PROBE_NONE) {
        if (p->probe != NULL) {
            forget(p->probe);
            probe_free(p->probe);
            p->probe = NULL;
        }
        p->pub.probe_kind = FERRY_PROBE_NONE;
        return FERRY_OK;
    }
    struct probe_conf conf;
    if (conf_make(&conf, p, kind, host, port, path, expect, interval, timeout, err) != 0) {
        return FERRY_ERROR;
    }
    struct probe *pr = p->probe;
    if (pr == NULL) {
        pr = probe_new(p);
        if (pr == NULL) {
            conf_free(&conf);
            *err = "out of memory";
            return FERRY_ERROR;
        }
        pr->conf = conf;
        /* The first probe at a random point of the first interval. */
        schedule(pr, interval * uniform());
    } else if (pr->step != PS_IDLE) {
        /* A run in flight finishes with the parameters it started with. */
        conf_free(&pr->next);
        pr->next = conf;
        pr->has_next = 1;
    } else {
        /* A reload: keep the schedule (and any backoff) unless the
         * interval changed; then start afresh at a random point of it. */
        int moved = conf.interval != pr->conf.interval;
        conf_free(&pr->conf);
        pr->conf = conf;
        if (moved) {
            schedule(pr, interval * uniform());
        }
    }
    p->pub.probe_kind = (uint32_t)kind;
    return FERRY_OK;
}

void probe_stop_all(void)
{
    for (unsigned i = 0; i < nall; i++) {
        all[i]->p->probe = NULL;
        probe_free(all[i]);
    }
    free(all);
    all = NULL;
    nall = cap_all = 0;
}

int ferry_probe_duty(struct ferry_proxy *fp, int here)
{
    struct proxy *p = (struct proxy *)fp;
    if (p == NULL) {
        return FERRY_ERROR;
    }
    unsigned elsewhere = here ? 0 : 1;
    if (p->probe_elsewhere == elsewhere) {
        return FERRY_OK;
    }
    p->probe_elsewhere = elsewhere;
    p->probe_verdict = -1;
    /* The duty came here: the first run within one interval, not after
     * the skipped one's backoff. */
    struct probe *pr = p->probe;
    if (here && pr != NULL && pr->step == PS_IDLE) {
        schedule(pr, pr->conf.interval * uniform());
    }
    return FERRY_OK;
}

int ferry_probe_verdict(const struct ferry_proxy *fp)
{
    const struct proxy *p = (const struct proxy *)fp;
    return p != NULL ? p->probe_verdict : -1;
}

int ferry_probe_shared(struct ferry_proxy *fp, int up, double latency_ms, const char *why)
{
    struct proxy *p = (struct proxy *)fp;
    if (p == NULL || !p->probe_elsewhere) {
        return FERRY_ERROR; /* its own probes decide */
    }
    health_probe_shared(p, up, latency_ms, why != NULL ? why : (up ? "probe passed" : "probe failed"));
    return FERRY_OK;
}

uint64_t ferry_probe_runs(void)
{
    return runs;
}

uint32_t ferry_probe_duties(void)
{
    uint32_t n = 0;
    for (unsigned i = 0; i < nall; i++) {
        const struct proxy *p = all[i]->p;
        if (!p->probe_elsewhere && !(p->pub.flags & FERRY_PROXY_REMOVED)) {
            n++;
        }
    }
    return n;
}
