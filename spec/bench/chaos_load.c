/* chaos_load.c - the load side of make chaos (spec/bench/chaos.sh).
 *
 *   chaos_load load PROXY_PORT URL CONNS RATE SECONDS TIMEOUT BODY_LEN
 *     CONNS keep-alive connections to the proxy on 127.0.0.1 send
 *     "GET URL" (absolute form) at RATE requests/s in total (0: as fast as
 *     the connections allow) for SECONDS, then wait for the answers still
 *     due (each at most TIMEOUT seconds).  Every request is accounted:
 *     sent = answered + transport errors, answers by status, and a 200
 *     whose body is not BODY_LEN bytes of 'x' is an error too.  wrk cannot
 *     say this much, hence this client.
 *
 *   chaos_load tunnels PROXY_PORT TARGET N HOLD PID
 *     opens N CONNECT tunnels to TARGET (host:port) through the proxy,
 *     holds them silent for HOLD seconds and prints the CPU time process
 *     PID used meanwhile (from /proc).
 *
 * Output: "key value..." lines, read by chaos.sh.  Every loop is bounded
 * in time; only 127.0.0.1 is ever dialled.
 */
#ifndef _GNU_SOURCE
#define _GNU_SOURCE
#endif
#include <arpa/inet.h>
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/epoll.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#define RBUF 65536
#define MAX_CONNS 4096
#define MAX_CODES 32

enum cstate { C_DOWN, C_CONNECTING, C_IDLE, C_BUSY };

struct lconn {
    int fd;
    enum cstate st;
    double t_sent;   /* when the request in flight was written */
    double retry_at; /* after a failed connect: not before then */
    size_t wpos;     /* bytes of the request written */
    size_t rlen;     /* bytes in rbuf */
    int head_done;
    int status;
    long body_left;  /* -1: until close */
    int close_after;
    int body_bad;
    char rbuf[RBUF];
    char code[24];   /* X-Ferry-Error of this answer */
};

static double now_s(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

static int dial(int port, int nonblock)
{
    int fd = socket(AF_INET, SOCK_STREAM | (nonblock ? SOCK_NONBLOCK : 0), 0);
    if (fd < 0) {
        return -1;
    }
    int one = 1;
    setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
    struct sockaddr_in a = { .sin_family = AF_INET, .sin_port = htons((uint16_t)port) };
    a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    if (connect(fd, (struct sockaddr *)&a, sizeof(a)) < 0 && errno != EINPROGRESS) {
        close(fd);
        return -1;
    }
    return fd;
}

/* ---- load mode ---- */

static struct {
    long sent, answered, closed, timeouts, bad_body, connect_err, bad_answer;
    long by_status[600];
    char codes[MAX_CODES][24];
    long code_n[MAX_CODES];
    long lat_hist[64]; /* bucket i: latency < 2^i / 10 ms */
    double lat_max;
} st;

static int ep;
static char req[2048];
static size_t req_len;
static long body_len;

static void count_code(const char *code)
{
    for (int i = 0; i < MAX_CODES; i++) {
        if (st.codes[i][0] == 0) {
            snprintf(st.codes[i], sizeof(st.codes[i]), "%s", code);
        }
        if (strcmp(st.codes[i], code) == 0) {
            st.code_n[i]++;
            return;
        }
    }
}

static void count_latency(double s)
{
    double ms10 = s * 1e4; /* tenths of ms */
    int b = 0;
    while (b < 63 && (double)(1ul << b) <= ms10) {
        b++;
    }
    st.lat_hist[b]++;
    if (s > st.lat_max) {
        st.lat_max = s;
    }
}

static double latency_pct(double p)
{
    long total = 0, acc = 0;
    for (int i = 0; i < 64; i++) {
        total += st.lat_hist[i];
    }
    for (int i = 0; i < 64; i++) {
        acc += st.lat_hist[i];
        if (total > 0 && (double)acc >= p * (double)total) {
            double ub = (double)(1ul << i) / 10.0; /* upper bound of the bucket, ms */
            return ub < st.lat_max * 1000 ? ub : st.lat_max * 1000;
        }
    }
    return 0;
}

static void lc_open(struct lconn *c, int port)
{
    c->fd = dial(port, 1);
    c->rlen = 0;
    c->head_done = 0;
    if (c->fd < 0) {
        st.connect_err++;
        c->st = C_DOWN;
        c->retry_at = now_s() + 0.1;
        return;
    }
    c->st = C_CONNECTING;
    struct epoll_event ev = { .events = EPOLLIN | EPOLLOUT | EPOLLRDHUP, .data.ptr = c };
    epoll_ctl(ep, EPOLL_CTL_ADD, c->fd, &ev);
}

static void lc_close(struct lconn *c)
{
    if (c->fd >= 0) {
        epoll_ctl(ep, EPOLL_CTL_DEL, c->fd, NULL);
        close(c->fd);
    }
    c->fd = -1;
    c->st = C_DOWN;
}

/* A request in flight ended without a whole answer. */
static void lc_lost(struct lconn *c, long *counter)
{
    (*counter)++;
    lc_close(c);
}

static void lc_send(struct lconn *c)
{
    ssize_t n = write(c->fd, req + c->wpos, req_len - c->wpos);
    if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK)) {
        n = 0;
    }
    if (n < 0) {
        lc_lost(c, &st.closed); /* counted as sent: the proxy may have part of it */
        return;
    }
    c->wpos += (size_t)n;
    struct epoll_event ev = { .events = EPOLLIN | EPOLLRDHUP |
                                        (c->wpos < req_len ? EPOLLOUT : 0), .data.ptr = c };
    epoll_ctl(ep, EPOLL_CTL_MOD, c->fd, &ev);
}

static void lc_start(struct lconn *c)
{
    c->st = C_BUSY;
    c->t_sent = now_s();
    c->wpos = 0;
    c->rlen = 0;
    c->head_done = 0;
    c->status = 0;
    c->body_left = -1;
    c->close_after = 0;
    c->body_bad = 0;
    c->code[0] = 0;
    st.sent++;
    lc_send(c);
}

static void lc_answered(struct lconn *c)
{
    st.answered++;
    st.by_status[c->status]++;
    if (c->status == 200 && c->body_bad) {
        st.bad_body++;
    }
    if (c->code[0]) {
        count_code(c->code);
    }
    count_latency(now_s() - c->t_sent);
    if (c->close_after) {
        lc_close(c);
    } else {
        c->st = C_IDLE;
    }
}

/* Parse the head at rbuf[0..end); 0 on success. */
static int lc_head(struct lconn *c, size_t end)
{
    c->rbuf[end - 1] = 0;
    int minor = 0;
    if (sscanf(c->rbuf, "HTTP/1.%d %d", &minor, &c->status) != 2 || c->status < 100 ||
        c->status > 599) {
        return -1;
    }
    c->close_after = minor == 0;
    char *save = NULL;
    for (char *l = strtok_r(c->rbuf, "\r\n", &save); l; l = strtok_r(NULL, "\r\n", &save)) {
        if (strncasecmp(l, "Content-Length:", 15) == 0) {
            c->body_left = strtol(l + 15, NULL, 10);
        } else if (strncasecmp(l, "Connection:", 11) == 0 && strcasestr(l + 11, "close")) {
            c->close_after = 1;
        } else if (strncasecmp(l, "Connection:", 11) == 0 && strcasestr(l + 11, "keep-alive")) {
            c->close_after = 0;
        } else if (strncasecmp(l, "Transfer-Encoding:", 18) == 0) {
            return -1; /* the origin serves Content-Length; chunked means something else */
        } else if (strncasecmp(l, "X-Ferry-Error:", 14) == 0) {
            snprintf(c->code, sizeof(c->code), "%s", l + 14 + strspn(l + 14, " "));
        }
    }
    if (c->body_left < 0) {
        c->close_after = 1;
    }
    if (c->status == 200 && c->body_left != body_len) {
        c->body_bad = 1;
    }
    return 0;
}

/* Account body bytes; -1 when the answer ran past its Content-Length. */
static int lc_body(struct lconn *c, const char *p, size_t n)
{
    if (c->status == 200) {
        for (size_t i = 0; i < n; i++) {
            if (p[i] != 'x') {
                c->body_bad = 1;
                break;
            }
        }
    }
    if (c->body_left >= 0) {
        c->body_left -= (long)n;
        if (c->body_left < 0) {
            return -1; /* more than announced: the answers are shifted */
        }
    }
    return 0;
}

static void lc_readable(struct lconn *c)
{
    for (int rounds = 0; rounds < 64; rounds++) {
        ssize_t n = read(c->fd, c->rbuf + c->rlen, RBUF - c->rlen - 1);
        if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK)) {
            return;
        }
        if (n <= 0) {
            if (c->st != C_BUSY) {
                lc_close(c); /* the proxy closed an idle connection: not a loss */
            } else if (c->head_done && c->body_left < 0) {
                lc_answered(c); /* read-until-close answer ends here */
                lc_close(c);
            } else {
                lc_lost(c, &st.closed);
            }
            return;
        }
        if (c->st != C_BUSY) {
            st.bad_answer++; /* bytes nobody asked for */
            lc_close(c);
            return;
        }
        c->rlen += (size_t)n;
        if (!c->head_done) {
            c->rbuf[c->rlen] = 0;
            char *e = strstr(c->rbuf, "\r\n\r\n");
            if (e == NULL) {
                if (c->rlen >= RBUF - 1) {
                    lc_lost(c, &st.bad_answer);
                }
                continue;
            }
            size_t hl = (size_t)(e - c->rbuf) + 4;
            size_t rest = c->rlen - hl;
            if (lc_head(c, hl) < 0) {
                lc_lost(c, &st.bad_answer);
                return;
            }
            if (c->status < 200) {
                /* 1xx: not expected from nginx; drop the interim answer */
                memmove(c->rbuf, c->rbuf + hl, rest);
                c->rlen = rest;
                continue;
            }
            c->head_done = 1;
            if (lc_body(c, c->rbuf + hl, rest) < 0) {
                lc_lost(c, &st.bad_answer);
                return;
            }
        } else if (lc_body(c, c->rbuf, c->rlen) < 0) {
            lc_lost(c, &st.bad_answer);
            return;
        }
        c->rlen = 0;
        if (c->body_left == 0) {
            lc_answered(c);
            return;
        }
    }
}

static int run_load(int argc, char **argv)
{
    if (argc != 9) {
        fprintf(stderr, "usage: %s load PROXY_PORT URL CONNS RATE SECONDS TIMEOUT BODY_LEN\n",
                argv[0]);
        return 2;
    }
    int port = atoi(argv[2]);
    const char *url = argv[3];
    int nconns = atoi(argv[4]);
    double rate = atof(argv[5]);
    double secs = atof(argv[6]);
    double timeout = atof(argv[7]);
    body_len = atol(argv[8]);
    if (nconns < 1 || nconns > MAX_CONNS || secs <= 0 || timeout <= 0) {
        fprintf(stderr, "bad arguments\n");
        return 2;
    }
    const char *host = strstr(url, "://");
    host = host ? host + 3 : url;
    size_t hlen = strcspn(host, "/");
    req_len = (size_t)snprintf(req, sizeof(req),
                               "GET %s HTTP/1.1\r\nHost: %.*s\r\nUser-Agent: ferry-chaos\r\n\r\n",
                               url, (int)hlen, host);
    ep = epoll_create1(0);
    struct lconn *cs = calloc((size_t)nconns, sizeof(*cs));
    if (cs == NULL || ep < 0) {
        return 2;
    }
    for (int i = 0; i < nconns; i++) {
        cs[i].fd = -1;
        lc_open(&cs[i], port);
    }
    double t0 = now_s(), next_report = t0 + 5, t_end = t0 + secs;
    double hard_end = t_end + timeout + 2; /* the drain is bounded too */
    int rot = 0;
    struct epoll_event evs[256];
    for (;;) {
        double t = now_s();
        if (t >= hard_end) {
            break;
        }
        /* Issue what the schedule allows on idle connections: at a fixed
         * rate, exactly RATE x SECONDS requests (the last ones may go out
         * up to a second late if the connections were all busy). */
        long total = rate > 0 ? (long)(rate * secs + 0.5) : -1;
        int sending = total < 0 ? t < t_end : st.sent < total && t < t_end + 1;
        long due = rate > 0 ? (long)((t - t0) * rate) + 1 : -1;
        if (due > total) {
            due = total;
        }
        int busy = 0;
        rot = (rot + 1) % nconns; /* spread requests over the connections */
        for (int k = 0; k < nconns; k++) {
            struct lconn *c = &cs[(rot + k) % nconns];
            if (c->st == C_DOWN && sending && t >= c->retry_at) {
                lc_open(c, port);
            }
            if (c->st == C_BUSY && t - c->t_sent > timeout) {
                lc_lost(c, &st.timeouts);
            }
            if (c->st == C_IDLE && sending && (due < 0 || st.sent < due)) {
                lc_start(c);
            }
            busy += c->st == C_BUSY;
        }
        if (!sending && busy == 0) {
            break;
        }
        if (t >= next_report) {
            printf("progress %.0f s: sent %ld answered %ld 200 %ld lost %ld\n", t - t0,
                   st.sent, st.answered, st.by_status[200],
                   st.closed + st.timeouts + st.bad_answer + st.connect_err);
            fflush(stdout);
            next_report += 5;
        }
        int n = epoll_wait(ep, evs, 256, 1);
        for (int i = 0; i < n; i++) {
            struct lconn *c = evs[i].data.ptr;
            if (c->fd < 0) {
                continue;
            }
            if (c->st == C_CONNECTING) {
                int err = 0;
                socklen_t el = sizeof(err);
                getsockopt(c->fd, SOL_SOCKET, SO_ERROR, &err, &el);
                if (err != 0) {
                    st.connect_err++;
                    lc_close(c);
                    c->retry_at = now_s() + 0.1; /* a proxy that refuses: 10 tries/s */
                    continue;
                }
                c->st = C_IDLE;
                struct epoll_event ev = { .events = EPOLLIN | EPOLLRDHUP, .data.ptr = c };
                epoll_ctl(ep, EPOLL_CTL_MOD, c->fd, &ev);
                continue;
            }
            if ((evs[i].events & EPOLLOUT) && c->st == C_BUSY && c->wpos < req_len) {
                lc_send(c);
                if (c->fd < 0) {
                    continue;
                }
            }
            if (evs[i].events & (EPOLLIN | EPOLLRDHUP | EPOLLHUP | EPOLLERR)) {
                lc_readable(c);
            }
        }
    }
    for (int i = 0; i < nconns; i++) {
        if (cs[i].st == C_BUSY) {
            lc_lost(&cs[i], &st.timeouts);
        }
        lc_close(&cs[i]);
    }
    double el = now_s() - t0;
    printf("seconds %.1f\n", el);
    printf("sent %ld\n", st.sent);
    printf("answered %ld\n", st.answered);
    for (int s = 100; s < 600; s++) {
        if (st.by_status[s]) {
            printf("status %d %ld\n", s, st.by_status[s]);
        }
    }
    for (int i = 0; i < MAX_CODES && st.codes[i][0]; i++) {
        printf("code %s %ld\n", st.codes[i], st.code_n[i]);
    }
    printf("closed %ld\n", st.closed);
    printf("timeouts %ld\n", st.timeouts);
    printf("bad_answer %ld\n", st.bad_answer);
    printf("bad_body %ld\n", st.bad_body);
    printf("connect_errors %ld\n", st.connect_err);
    printf("latency_ms p50 %.1f p99 %.1f p999 %.1f max %.1f\n", latency_pct(0.5),
           latency_pct(0.99), latency_pct(0.999), st.lat_max * 1000);
    free(cs);
    return 0;
}

/* ---- tunnels mode ---- */

/* CPU time of a process, all its threads, in ns (schedstat), and in clock
 * ticks (stat: utime + stime). */
static void proc_cpu(int pid, unsigned long long *ns, unsigned long long *ticks)
{
    char path[64];
    *ns = 0;
    *ticks = 0;
    snprintf(path, sizeof(path), "/proc/%d/task", pid);
    DIR *d = opendir(path);
    if (d != NULL) {
        struct dirent *e;
        int guard = 0;
        while ((e = readdir(d)) != NULL && guard++ < 4096) {
            if (e->d_name[0] == '.') {
                continue;
            }
            char p2[320];
            snprintf(p2, sizeof(p2), "/proc/%d/task/%s/schedstat", pid, e->d_name);
            FILE *f = fopen(p2, "r");
            unsigned long long v = 0;
            if (f != NULL) {
                if (fscanf(f, "%llu", &v) == 1) {
                    *ns += v;
                }
                fclose(f);
            }
        }
        closedir(d);
    }
    snprintf(path, sizeof(path), "/proc/%d/stat", pid);
    FILE *f = fopen(path, "r");
    if (f != NULL) {
        char line[1024];
        if (fgets(line, sizeof(line), f) != NULL) {
            char *p = strrchr(line, ')'); /* the name may hold spaces */
            unsigned long long ut = 0, stt = 0;
            if (p != NULL && sscanf(p + 2, "%*c %*d %*d %*d %*d %*d %*u %*u %*u %*u %*u %llu %llu",
                                    &ut, &stt) == 2) {
                *ticks = ut + stt;
            }
        }
        fclose(f);
    }
}

static int run_tunnels(int argc, char **argv)
{
    if (argc != 7) {
        fprintf(stderr, "usage: %s tunnels PROXY_PORT TARGET N HOLD PID\n", argv[0]);
        return 2;
    }
    int port = atoi(argv[2]);
    const char *target = argv[3];
    int n = atoi(argv[4]);
    double hold = atof(argv[5]);
    int pid = atoi(argv[6]);
    if (n < 1 || n > MAX_CONNS || hold <= 0) {
        fprintf(stderr, "bad arguments\n");
        return 2;
    }
    /* ferry alone first, for the same time: probes and timers cost
     * something even without tunnels. */
    unsigned long long ns0, tk0, ns1, tk1;
    struct timespec ts = { (time_t)hold, (long)((hold - (double)(time_t)hold) * 1e9) };
    proc_cpu(pid, &ns0, &tk0);
    double t0 = now_s();
    nanosleep(&ts, NULL);
    proc_cpu(pid, &ns1, &tk1);
    double idle_ns = (double)(ns1 - ns0), idle_el = now_s() - t0;
    int *fds = calloc((size_t)n, sizeof(int));
    char cmd[512];
    int cl = snprintf(cmd, sizeof(cmd), "CONNECT %s HTTP/1.1\r\nHost: %s\r\n\r\n", target, target);
    int up = 0;
    for (int i = 0; i < n; i++) {
        fds[i] = dial(port, 0);
        if (fds[i] < 0 || write(fds[i], cmd, (size_t)cl) != cl) {
            continue;
        }
        /* Read the answer head, at most 5 s, byte by byte so nothing past
         * it is consumed (nothing should follow). */
        char head[1024];
        size_t hl = 0;
        double end = now_s() + 5;
        while (hl < sizeof(head) - 1 && now_s() < end) {
            struct pollfd pf = { .fd = fds[i], .events = POLLIN };
            if (poll(&pf, 1, 100) <= 0) {
                continue;
            }
            if (read(fds[i], head + hl, 1) != 1) {
                break;
            }
            hl++;
            head[hl] = 0;
            if (hl >= 4 && memcmp(head + hl - 4, "\r\n\r\n", 4) == 0) {
                break;
            }
        }
        head[hl] = 0;
        if (strncmp(head, "HTTP/1.1 200", 12) == 0 || strncmp(head, "HTTP/1.0 200", 12) == 0) {
            up++;
        }
    }
    struct timespec settle = { 0, 500 * 1000 * 1000 };
    nanosleep(&settle, NULL);
    proc_cpu(pid, &ns0, &tk0);
    t0 = now_s();
    nanosleep(&ts, NULL);
    proc_cpu(pid, &ns1, &tk1);
    double el = now_s() - t0;
    /* Still open and silent: nothing readable, no hang-up. */
    int open_after = 0;
    for (int i = 0; i < n; i++) {
        if (fds[i] < 0) {
            continue;
        }
        struct pollfd pf = { .fd = fds[i], .events = POLLIN | POLLRDHUP };
        if (poll(&pf, 1, 0) == 0) {
            open_after++;
        }
    }
    for (int i = 0; i < n; i++) {
        if (fds[i] >= 0) {
            close(fds[i]);
        }
    }
    long hz = sysconf(_SC_CLK_TCK);
    printf("tunnels_up %d\n", up);
    printf("tunnels_open_after %d\n", open_after);
    printf("hold_seconds %.2f\n", el);
    printf("idle_cpu_ms %.2f\n", idle_ns / 1e6);
    printf("idle_cpu_pct %.3f\n", 100.0 * idle_ns / 1e9 / idle_el);
    printf("cpu_ms %.2f\n", (double)(ns1 - ns0) / 1e6);
    printf("cpu_ticks %llu\n", tk1 - tk0);
    printf("cpu_pct %.3f\n", 100.0 * (double)(ns1 - ns0) / 1e9 / el);
    printf("clk_tck %ld\n", hz);
    free(fds);
    return 0;
}

int main(int argc, char **argv)
{
    signal(SIGPIPE, SIG_IGN);
    if (argc > 1 && strcmp(argv[1], "load") == 0) {
        return run_load(argc, argv);
    }
    if (argc > 1 && strcmp(argv[1], "tunnels") == 0) {
        return run_tunnels(argc, argv);
    }
    fprintf(stderr, "usage: %s load|tunnels ...\n", argv[0]);
    return 2;
}
