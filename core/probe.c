/* probe.c - active health probes, one schedule per probed proxy.
 *
 * A probe reaches the proxy like real traffic does: the same address
 * (literal or c-ares), and for http and connect checks the same
 * connector vtables (up_http, up_socks5), driven on a detached struct
 * conn that only the probe uses.  Each probe has one ev_timer: the
 * schedule while idle, the probe's own deadline while it runs, so a
 * probe never overlaps itself and never has a second timer.
 *
 * Probes stay out of the way of traffic: all I/O is non-blocking on the
 * loop, starts are jittered so a thousand proxies do not probe in step,
 * and a global bound caps the probes in flight (over it, a probe waits a
 * short random delay).  A proxy that keeps failing is probed less often:
 * the interval doubles per failure past `fall`, up to 16x. */
#include "probe.h"
#include "conn.h"
#include "health.h"
#include "log.h"
#include "proxy.h"
#include "resolve.h"
#include "upstream.h"

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
#define PROBE_BACKOFF_MAX 16.0
#define PROBE_JITTER 0.1           /* +-10 % of the interval */
#define PROBE_DEFER_MIN 0.05       /* seconds a probe waits when the bound is hit */
#define PROBE_DEFER_SPAN 0.2
#define PROBE_BUF 4096
#define PROBE_WARN_WINDOW 10.0

enum probe_step {
    PS_IDLE = 0,   /* waiting for the schedule */
    PS_RESOLVE,    /* looking up the proxy's address */
    PS_CONNECT,    /* TCP connect to the proxy */
    PS_HANDSHAKE,  /* CONNECT / SOCKS5 through the connector */
    PS_HTTP        /* GET sent, waiting for the response head */
};

struct probe {
    struct proxy *p;             /* ro: the proxy probed */
    int kind;                    /* ro: enum ferry_probe_kind */
    char *host;                  /* ro: target host (http, connect) */
    int port;                    /* ro */
    char *path;                  /* ro: request target of an http check */
    int expect[PROBE_EXPECT_MAX]; /* ro: accepted statuses; none = 2xx/3xx */
    int nexpect;                 /* ro */
    double interval, timeout;    /* ro: seconds */
    ev_timer timer;              /* private: schedule, or the running probe's deadline */
    ev_io io;                    /* private: the probe socket */
    struct conn *c;              /* private: detached conn while running */
    struct resolve_req *rr;      /* private: pending lookup */
    enum probe_step step;        /* private */
    double started;              /* private: when the running probe began */
    int ev;                      /* private: events io has now */
};

static int inflight;
static int concurrency = 64;
static double last_warn;
/* Every schedule, so probe_stop_all can find them. */
static struct probe **all;
static unsigned nall, cap_all;

static void schedule(struct probe *pr, double delay);
static void finish(struct probe *pr, int ok, const char *why);

void ferry_probe_set_concurrency(int n)
{
    concurrency = n > 0 ? n : 64;
}

int ferry_probe_inflight(void)
{
    return inflight;
}

static double jittered(double secs)
{
    double f = 1.0 + PROBE_JITTER * (2.0 * random() / (double)RAND_MAX - 1.0);
    return secs * f;
}

/* The wait before the next probe: the interval, doubled per failure
 * beyond `fall` while the proxy stays down, capped. */
static double next_delay(const struct probe *pr)
{
    const struct ferry_proxy *pub = &pr->p->pub;
    double f = 1.0;
    if ((pub->flags & FERRY_PROXY_DOWN) && pub->probe_fails > pub->fall) {
        unsigned k = pub->probe_fails - pub->fall;
        f = pow(2.0, k < 8 ? k : 8);
        if (f > PROBE_BACKOFF_MAX) {
            f = PROBE_BACKOFF_MAX;
        }
    }
    return jittered(pr->interval * f);
}

static void set_io(struct probe *pr, int fd, int events)
{
    if (pr->ev == events && ev_is_active(&pr->io)) {
        return;
    }
    ev_io_stop(loop, &pr->io);
    pr->ev = events;
    if (events != 0) {
        ev_io_set(&pr->io, fd, events);
        ev_io_start(loop, &pr->io);
    }
}

/* Stop everything the running probe holds.  The conn stays allocated
 * (its buffers trimmed) for the next run. */
static void release(struct probe *pr)
{
    struct conn *c = pr->c;
    if (pr->rr != NULL) {
        resolve_cancel(pr->rr);
        pr->rr = NULL;
    }
    ev_io_stop(loop, &pr->io);
    pr->ev = 0;
    if (c != NULL) {
        if (c->ufd >= 0) {
            close(c->ufd);
            c->ufd = -1;
        }
        buf_consume(&c->uin, buf_len(&c->uin));
        buf_consume(&c->uout, buf_len(&c->uout));
        buf_trim(&c->uin);
        buf_trim(&c->uout);
    }
}

static void finish(struct probe *pr, int ok, const char *why)
{
    double ms = (loop_now() - pr->started) * 1000.0;
    release(pr);
    pr->step = PS_IDLE;
    inflight--;
    ev_timer_stop(loop, &pr->timer);
    health_probe_result(pr->p, ok, ms, why);
    schedule(pr, next_delay(pr));
}

static int status_expected(const struct probe *pr, int st)
{
    if (pr->nexpect == 0) {
        return st >= 200 && st < 400;
    }
    for (int i = 0; i < pr->nexpect; i++) {
        if (pr->expect[i] == st) {
            return 1;
        }
    }
    return 0;
}

/* Queue the GET of an http check: absolute form to an HTTP proxy,
 * origin form inside a SOCKS5 tunnel. */
static void queue_get(struct probe *pr)
{
    struct conn *c = pr->c;
    struct proxy *p = pr->p;
    char line[1024];
    const char *lb = strchr(pr->host, ':') != NULL ? "[" : "";
    const char *rb = *lb != '\0' ? "]" : "";
    int absolute = p->pub.scheme == FERRY_SCHEME_HTTP;
    int n = absolute
        ? snprintf(line, sizeof(line), "GET http://%s%s%s:%d%s HTTP/1.1\r\nHost: %s%s%s:%d\r\n",
                   lb, pr->host, rb, pr->port, pr->path, lb, pr->host, rb, pr->port)
        : snprintf(line, sizeof(line), "GET %s HTTP/1.1\r\nHost: %s%s%s:%d\r\n", pr->path,
                   lb, pr->host, rb, pr->port);
    if (n < 0 || (size_t)n >= sizeof(line)) {
        n = 0; /* cannot happen: ferry_probe_set bounds host and path */
    }
    buf_append(&c->uout, line, (size_t)n);
    if (absolute && p->auth_header != NULL) {
        buf_append(&c->uout, p->auth_header, strlen(p->auth_header));
    }
    if (absolute && p->extra_headers != NULL) {
        buf_append(&c->uout, p->extra_headers, strlen(p->extra_headers));
    }
    static const char tail[] = "User-Agent: ferry-probe\r\nConnection: close\r\n\r\n";
    buf_append(&c->uout, tail, sizeof(tail) - 1);
    pr->step = PS_HTTP;
}

/* The connector finished its handshake (or needed none). */
static void handshake_done(struct probe *pr)
{
    if (pr->kind == FERRY_PROBE_CONNECT) {
        finish(pr, 1, NULL);
        return;
    }
    buf_consume(&pr->c->uin, buf_len(&pr->c->uin));
    queue_get(pr);
}

static void connected(struct probe *pr)
{
    struct conn *c = pr->c;
    if (pr->kind == FERRY_PROBE_TCP) {
        finish(pr, 1, NULL);
        return;
    }
    pr->step = PS_HANDSHAKE;
    c->hs_state = 0;
    int r = c->ops->start(c);
    if (r == UP_DONE) {
        handshake_done(pr);
    } else if (r == UP_FAIL) {
        finish(pr, 0, "probe handshake failed");
    }
}

static void on_response(struct probe *pr)
{
    struct conn *c = pr->c;
    const char *base = buf_head(&c->uin);
    size_t hl = http_head_len(base, buf_len(&c->uin));
    if (hl == 0) {
        if (buf_room(&c->uin) == 0) {
            finish(pr, 0, "probe response head too large");
        }
        return;
    }
    if (http_parse_response(&c->resp, base, hl, 1) != HTTP_PARSE_OK) {
        finish(pr, 0, "probe response is not HTTP");
        return;
    }
    char why[64];
    int st = c->resp.status;
    if (status_expected(pr, st)) {
        finish(pr, 1, NULL);
    } else {
        snprintf(why, sizeof(why), "probe got status %d", st);
        finish(pr, 0, why);
    }
}

static void on_io(struct ev_loop *l, ev_io *w, int revents)
{
    (void)l;
    struct probe *pr = w->data;
    struct conn *c = pr->c;
    if (pr->step == PS_CONNECT) {
        int err = 0;
        socklen_t el = sizeof(err);
        if (getsockopt(c->ufd, SOL_SOCKET, SO_ERROR, &err, &el) == -1) {
            err = errno;
        }
        if (err != 0) {
            finish(pr, 0, err == ECONNREFUSED ? "probe connect refused" : "probe connect failed");
            return;
        }
        connected(pr);
    } else {
        if ((revents & EV_WRITE) && !buf_empty(&c->uout)) {
            if (buf_write_fd(&c->uout, c->ufd) < 0 && errno != EAGAIN && errno != EWOULDBLOCK) {
                finish(pr, 0, "probe write failed");
                return;
            }
        }
        if (revents & EV_READ) {
            ssize_t n = buf_read_fd(&c->uin, c->ufd);
            if (n == 0 || (n < 0 && errno != EAGAIN && errno != EWOULDBLOCK)) {
                finish(pr, 0, "probe connection closed by the proxy");
                return;
            }
            if (pr->step == PS_HANDSHAKE) {
                int r = c->ops->input(c);
                if (r == UP_DONE) {
                    handshake_done(pr);
                } else if (r == UP_FAIL) {
                    finish(pr, 0, c->fail_kind == FERRY_FAIL_AUTH ? "probe: proxy auth failed"
                                                                    : "probe handshake failed");
                    return;
                }
            } else if (pr->step == PS_HTTP) {
                on_response(pr);
            }
        }
    }
    if (pr->step == PS_IDLE) {
        return; /* finished above */
    }
    set_io(pr, c->ufd, EV_READ | (buf_empty(&c->uout) ? 0 : EV_WRITE));
}

static void connect_to(struct probe *pr, const struct sockaddr *sa, socklen_t len)
{
    struct conn *c = pr->c;
    int fd = socket(sa->sa_family, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    if (fd == -1) {
        finish(pr, 0, "probe socket failed");
        return;
    }
    int one = 1;
    setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
    c->ufd = fd;
    pr->step = PS_CONNECT;
    if (connect(fd, sa, len) == 0) {
        connected(pr);
        if (pr->step != PS_IDLE) {
            set_io(pr, fd, EV_READ | (buf_empty(&c->uout) ? 0 : EV_WRITE));
        }
        return;
    }
    if (errno != EINPROGRESS) {
        finish(pr, 0, "probe connect failed");
        return;
    }
    set_io(pr, fd, EV_WRITE);
}

static void on_resolved(void *arg, int status, const struct sockaddr *sa, socklen_t len)
{
    struct probe *pr = arg;
    pr->rr = NULL;
    if (status != 0) {
        finish(pr, 0, "probe: proxy host did not resolve");
        return;
    }
    connect_to(pr, sa, len);
}

/* A detached conn for the connector vtables: only the fields they use. */
static struct conn *probe_conn(struct probe *pr)
{
    if (pr->c == NULL) {
        pr->c = calloc(1, sizeof(*pr->c));
        if (pr->c == NULL) {
            return NULL;
        }
        buf_init(&pr->c->uin, PROBE_BUF);
        buf_init(&pr->c->uout, PROBE_BUF);
        pr->c->ufd = -1;
    }
    struct conn *c = pr->c;
    c->proxy = pr->p;
    c->ops = pr->p->pub.scheme == FERRY_SCHEME_HTTP ? &up_http : &up_socks5;
    c->is_connect = pr->kind == FERRY_PROBE_CONNECT ||
                    (pr->kind == FERRY_PROBE_HTTP && pr->p->pub.scheme == FERRY_SCHEME_SOCKS5);
    if (pr->host != NULL) {
        snprintf(c->host, sizeof(c->host), "%s", pr->host);
    }
    c->port = pr->port;
    return c;
}

static void start(struct probe *pr)
{
    struct proxy *p = pr->p;
    if (probe_conn(pr) == NULL) {
        schedule(pr, pr->interval);
        return;
    }
    inflight++;
    pr->started = loop_now();
    ev_timer_set(&pr->timer, pr->timeout, 0.);
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
    pr->step = PS_RESOLVE;
    pr->rr = resolve_start(p->host, p->port, on_resolved, pr);
    if (pr->rr == NULL) {
        finish(pr, 0, "probe: cannot start the lookup");
    }
}

static void on_timer(struct ev_loop *l, ev_timer *w, int revents)
{
    (void)l;
    (void)revents;
    struct probe *pr = w->data;
    if (pr->step != PS_IDLE) {
        finish(pr, 0, "probe timed out");
        return;
    }
    if (pr->p->pub.flags & FERRY_PROXY_REMOVED) {
        schedule(pr, pr->interval);
        return;
    }
    if (inflight >= concurrency) {
        double now = loop_now();
        if (now - last_warn >= PROBE_WARN_WINDOW) {
            last_warn = now;
            log_event(LOG_WARN, "FERRY-6010", NULL,
                      "%d probes in flight, the concurrency bound: probes are deferred",
                      inflight);
        }
        schedule(pr, PROBE_DEFER_MIN + PROBE_DEFER_SPAN * random() / (double)RAND_MAX);
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

static int parse_expect(struct probe *pr, const char *expect, const char **err)
{
    pr->nexpect = 0;
    if (expect == NULL) {
        return 0;
    }
    const char *s = expect;
    while (*s != '\0') {
        char *end;
        long v = strtol(s, &end, 10);
        if (end == s || v < 100 || v > 599 || pr->nexpect >= PROBE_EXPECT_MAX) {
            *err = "expect: statuses 100..599, at most 16, separated by commas";
            return -1;
        }
        pr->expect[pr->nexpect++] = (int)v;
        s = *end == ',' ? end + 1 : end;
        if (*end != ',' && *end != '\0') {
            *err = "expect: statuses separated by commas";
            return -1;
        }
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

static void probe_free(struct probe *pr)
{
    if (pr->step != PS_IDLE) {
        release(pr);
        inflight--;
    }
    ev_timer_stop(loop, &pr->timer);
    if (pr->c != NULL) {
        buf_free(&pr->c->uin);
        buf_free(&pr->c->uout);
        free(pr->c);
    }
    free(pr->host);
    free(pr->path);
    free(pr);
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
    if (kind < FERRY_PROBE_TCP || kind > FERRY_PROBE_CONNECT) {
        *err = "unknown check kind";
        return FERRY_ERROR;
    }
    if (!(interval > 0) || !(timeout > 0)) {
        *err = "interval and timeout must be positive";
        return FERRY_ERROR;
    }
    if (path != NULL && strlen(path) > 512) {
        *err = "the check's path is longer than 512 bytes";
        return FERRY_ERROR;
    }
    if (kind != FERRY_PROBE_TCP &&
        (host == NULL || *host == '\0' || strlen(host) > HOST_MAX_LEN || port < 1 || port > 65535)) {
        *err = "an http or connect check needs a target host and port";
        return FERRY_ERROR;
    }
    struct probe fresh;
    memset(&fresh, 0, sizeof(fresh));
    if (parse_expect(&fresh, expect, err) != 0) {
        return FERRY_ERROR;
    }
    char *h = host != NULL ? strdup(host) : NULL;
    char *pa = strdup(path != NULL && *path != '\0' ? path : "/");
    struct probe *pr = p->probe;
    int created = pr == NULL;
    if (created) {
        pr = calloc(1, sizeof(*pr));
    }
    if (created && pr != NULL && nall == cap_all) {
        unsigned ncap = cap_all ? cap_all * 2 : 64;
        struct probe **grown = realloc(all, ncap * sizeof(*grown));
        if (grown == NULL) {
            free(pr);
            pr = NULL;
        } else {
            all = grown;
            cap_all = ncap;
        }
    }
    if (pr == NULL || pa == NULL || (host != NULL && h == NULL)) {
        free(h);
        free(pa);
        if (created) {
            free(pr);
        }
        *err = "out of memory";
        return FERRY_ERROR;
    }
    /* A probe in flight keeps its connection; the new parameters apply
     * from the next run. */
    free(pr->host);
    free(pr->path);
    pr->host = h;
    pr->path = pa;
    pr->port = port;
    pr->kind = kind;
    memcpy(pr->expect, fresh.expect, sizeof(pr->expect));
    pr->nexpect = fresh.nexpect;
    pr->interval = interval;
    pr->timeout = timeout;
    p->pub.probe_kind = (uint32_t)kind;
    if (created) {
        pr->p = p;
        ev_init(&pr->timer, on_timer);
        pr->timer.data = pr;
        ev_init(&pr->io, on_io);
        pr->io.data = pr;
        all[nall++] = pr;
        p->probe = pr;
        /* First probe at a random point of the first interval. */
        schedule(pr, interval * random() / (double)RAND_MAX);
    } else if (pr->step == PS_IDLE) {
        schedule(pr, interval * random() / (double)RAND_MAX);
    }
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
