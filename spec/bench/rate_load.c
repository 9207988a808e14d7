/* rate_load.c - fixed-rate (open-loop) GETs and their latency, for
 * spec/bench/reverse.sh's p99 row.
 *
 *   rate_load PORT PATH CONNS RATE SECONDS
 *
 * Request i is due at t0 + i / RATE, whatever happened to the ones before
 * (open loop: a slow answer does not slow the schedule down).  A due
 * request goes out on an idle one of CONNS keep-alive connections to
 * 127.0.0.1:PORT ("GET PATH HTTP/1.1", origin form); when none is idle it
 * waits for one, and its latency, always counted from the moment it was
 * due, includes that wait: the figure a client sending at that rate sees
 * (no coordinated omission).  Exactly RATE x SECONDS requests are due;
 * then the answers still owed are awaited for at most DRAIN_S seconds.
 * An answer is a 200 with a Content-Length body; anything else (another
 * status, no Content-Length, a closed or refused connection, no answer in
 * time) is an error and the connection is opened again.  Percentiles are
 * exact (every latency kept, sorted).
 *
 * Output, one line:
 *   sent N ok N errors N secs S p50_ms X p99_ms X p999_ms X max_ms X
 * With RATE_LOAD_LATENCIES=FILE in the environment, every latency (ms,
 * one a line) is appended to FILE too, so runs can be pooled.
 * Every loop is bounded in time; only 127.0.0.1 is dialled.
 */
#ifndef _GNU_SOURCE
#define _GNU_SOURCE
#endif
#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/epoll.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#define RBUF 16384
#define MAX_CONNS 1024
#define MAX_REQS 20000000L
#define DRAIN_S 10.0

struct rconn {
    int fd;
    int busy;        /* a request in flight */
    double due;      /* when that request was due */
    size_t rlen;     /* bytes in rbuf not yet consumed */
    int head_done;
    long body_left;
    char rbuf[RBUF];
};

static double now_s(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

static int g_ep, g_port;
static char g_req[512];
static size_t g_req_len;
static double *g_lat;
static long g_ok, g_err;

static int dial(void)
{
    int fd = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK, 0);
    if (fd < 0) {
        return -1;
    }
    int one = 1;
    setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
    struct sockaddr_in a = { .sin_family = AF_INET, .sin_port = htons((uint16_t)g_port) };
    a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    if (connect(fd, (struct sockaddr *)&a, sizeof(a)) < 0 && errno != EINPROGRESS) {
        close(fd);
        return -1;
    }
    return fd;
}

static void conn_open(struct rconn *c, int idx)
{
    c->fd = dial();
    c->busy = 0;
    c->rlen = 0;
    if (c->fd >= 0) {
        struct epoll_event ev = { .events = EPOLLIN, .data.u32 = (uint32_t)idx };
        epoll_ctl(g_ep, EPOLL_CTL_ADD, c->fd, &ev);
    }
}

/* The connection failed (with a request in flight: an error): reopen it. */
static void conn_fail(struct rconn *c, int idx)
{
    if (c->busy) {
        g_err++;
    }
    if (c->fd >= 0) {
        close(c->fd);
    }
    conn_open(c, idx);
}

/* Parses what rbuf holds of the answer; 1 when it is complete, 0 when
 * more is needed, -1 when it is not a 200 with a Content-Length. */
static int conn_parse(struct rconn *c)
{
    if (!c->head_done) {
        char *end = memmem(c->rbuf, c->rlen, "\r\n\r\n", 4);
        if (!end) {
            return c->rlen == RBUF ? -1 : 0;
        }
        size_t hlen = (size_t)(end - c->rbuf) + 4;
        *end = '\0';
        if (strncmp(c->rbuf, "HTTP/1.1 200 ", 13) != 0) {
            return -1;
        }
        c->body_left = -1;
        for (char *l = strstr(c->rbuf, "\r\n"); l; l = strstr(l + 2, "\r\n")) {
            if (strncasecmp(l + 2, "content-length:", 15) == 0) {
                c->body_left = atol(l + 17);
            }
        }
        if (c->body_left < 0) {
            return -1;
        }
        c->head_done = 1;
        memmove(c->rbuf, c->rbuf + hlen, c->rlen - hlen);
        c->rlen -= hlen;
    }
    size_t take = c->rlen < (size_t)c->body_left ? c->rlen : (size_t)c->body_left;
    c->body_left -= (long)take;
    memmove(c->rbuf, c->rbuf + take, c->rlen - take);
    c->rlen -= take;
    return c->body_left == 0 ? 1 : 0;
}

static void conn_read(struct rconn *c, int idx)
{
    for (int rounds = 0; rounds < 64; rounds++) {
        ssize_t n = read(c->fd, c->rbuf + c->rlen, RBUF - c->rlen);
        if (n < 0 && errno == EAGAIN) {
            return;
        }
        if (n <= 0 || !c->busy) { /* closed, failed, or bytes nobody asked for */
            conn_fail(c, idx);
            return;
        }
        c->rlen += (size_t)n;
        int r = conn_parse(c);
        if (r < 0) {
            conn_fail(c, idx);
            return;
        }
        if (r == 1) {
            g_lat[g_ok++] = now_s() - c->due;
            c->busy = 0;
            return;
        }
    }
}

static int conn_send(struct rconn *c, double due)
{
    /* A request is a few hundred bytes: one write, or the connection is
     * given up (a fresh loopback socket always takes it whole). */
    if (write(c->fd, g_req, g_req_len) != (ssize_t)g_req_len) {
        return -1;
    }
    c->busy = 1;
    c->due = due;
    c->head_done = 0;
    return 0;
}

static int cmp_d(const void *a, const void *b)
{
    double x = *(const double *)a, y = *(const double *)b;
    return x < y ? -1 : x > y;
}

static double pct(double p)
{
    if (g_ok == 0) {
        return 0;
    }
    long i = (long)(p * (double)g_ok);
    return 1000 * g_lat[i < g_ok ? i : g_ok - 1];
}

int main(int argc, char **argv)
{
    if (argc != 6) {
        fprintf(stderr, "usage: rate_load PORT PATH CONNS RATE SECONDS\n");
        return 2;
    }
    g_port = atoi(argv[1]);
    int nconn = atoi(argv[3]);
    double rate = atof(argv[4]), secs = atof(argv[5]);
    long total = (long)(rate * secs + 0.5);
    if (g_port <= 0 || nconn <= 0 || nconn > MAX_CONNS || rate <= 0 || secs <= 0 ||
        total <= 0 || total > MAX_REQS) {
        fprintf(stderr, "rate_load: bad arguments (CONNS 1..%d, RATE x SECONDS <= %ld)\n",
                MAX_CONNS, MAX_REQS);
        return 2;
    }
    g_req_len = (size_t)snprintf(g_req, sizeof(g_req),
                                 "GET %s HTTP/1.1\r\nHost: bench.local\r\n\r\n", argv[2]);
    g_lat = malloc(sizeof(double) * (size_t)total);
    struct rconn *cs = calloc((size_t)nconn, sizeof(*cs));
    g_ep = epoll_create1(0);
    if (!g_lat || !cs || g_ep < 0) {
        return 1;
    }
    for (int i = 0; i < nconn; i++) {
        conn_open(&cs[i], i);
    }
    double t0 = now_s() + 0.2; /* the connections are up by then */
    long next = 0;             /* the next request to send */
    int cursor = 0;            /* where the search for an idle conn starts */
    struct epoll_event evs[256];
    for (;;) {
        double t = now_s();
        /* Every request due by now goes out while a connection is idle. */
        while (next < total && t0 + (double)next / rate <= t) {
            int k, found = -1;
            for (k = 0; k < nconn; k++) {
                int i = (cursor + k) % nconn;
                if (cs[i].fd >= 0 && !cs[i].busy) {
                    found = i;
                    break;
                }
            }
            if (found < 0) {
                break; /* waits for an answer; its latency keeps counting */
            }
            cursor = (found + 1) % nconn;
            if (conn_send(&cs[found], t0 + (double)next / rate) < 0) {
                conn_fail(&cs[found], found);
                g_err++; /* this request: never sent whole */
            }
            next++;
        }
        long inflight = 0;
        for (int i = 0; i < nconn; i++) {
            inflight += cs[i].busy;
        }
        if (next >= total && inflight == 0) {
            break;
        }
        double end = t0 + secs + DRAIN_S;
        if (t > end) { /* answers owed too long: errors */
            g_err += inflight + (total - next);
            break;
        }
        double wake = next < total ? t0 + (double)next / rate : end;
        double wait = wake - t;
        if (wait < 0) {
            wait = 0;
        }
        struct timespec ts = { (time_t)wait, (long)((wait - (double)(time_t)wait) * 1e9) };
        int n = epoll_pwait2(g_ep, evs, 256, &ts, NULL);
        for (int e = 0; e < n; e++) {
            int i = (int)evs[e].data.u32;
            conn_read(&cs[i], i);
        }
        /* A connection refused at dial time: try again. */
        for (int i = 0; i < nconn; i++) {
            if (cs[i].fd < 0) {
                conn_open(&cs[i], i);
            }
        }
    }
    double took = now_s() - t0;
    qsort(g_lat, (size_t)g_ok, sizeof(double), cmp_d);
    const char *dump = getenv("RATE_LOAD_LATENCIES");
    FILE *df = dump != NULL ? fopen(dump, "a") : NULL;
    for (long i = 0; df != NULL && i < g_ok; i++) {
        fprintf(df, "%.3f\n", 1000 * g_lat[i]);
    }
    if (df != NULL) {
        fclose(df);
    }
    printf("sent %ld ok %ld errors %ld secs %.2f p50_ms %.2f p99_ms %.2f p999_ms %.2f max_ms %.2f\n",
           next, g_ok, g_err, took, pct(0.5), pct(0.99), pct(0.999),
           g_ok ? 1000 * g_lat[g_ok - 1] : 0.0);
    for (int i = 0; i < nconn; i++) {
        if (cs[i].fd >= 0) {
            close(cs[i].fd);
        }
    }
    free(cs);
    free(g_lat);
    return 0;
}
