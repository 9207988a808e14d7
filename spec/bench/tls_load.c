/* tls_load.c - the load side of the HTTPS rows of make bench
 * (spec/bench/https.sh): GETs over TLS through a proxy's CONNECT tunnel.
 * Only 127.0.0.1 is ever dialled, and every loop ends by itself at its
 * deadline.
 *
 *   tls_load PROXY_PORT HOST ORIGIN_PORT CAFILE CONC SECONDS REQS [NAMES [FIRST]]
 *
 * CONC connections at a time for SECONDS.  Each one:
 *   1. TCP to 127.0.0.1:PROXY_PORT; "CONNECT HOST:ORIGIN_PORT", a 2xx
 *      answer (PROXY_PORT 0: straight to 127.0.0.1:ORIGIN_PORT, no proxy,
 *      the ceiling);
 *   2. a full TLS handshake (no session resumption) with SNI HOST,
 *      verifying the certificate it gets against CAFILE for the name HOST;
 *      ALPN offers http/1.1 only;
 *   3. REQS times "GET /1k HTTP/1.1" (REQS 0: until the deadline), each
 *      answer a 200 read to its Content-Length (the last GET says
 *      "Connection: close"); then a close_notify, the connection is
 *      closed and the slot starts over.  REQS 1 makes the run handshake-
 *      heavy: a new client TLS connection per request.
 * With NAMES > 0, HOST holds one "%d": connection i uses HOST with
 * ((FIRST - 1 + i) mod NAMES) + 1 in it (FIRST defaults to 1), a new name per
 * connection in a cycle of NAMES (the proxy mints a certificate per name
 * unless it still caches it); FIRST lets a later run go on where one ended.
 *
 * With READY_FILE set in the environment the measurement starts once all
 * CONC connections are through their first handshake: the counters and
 * the clock start over then and READY_FILE is created (a keep-alive run
 * then measures requests, not the opening handshakes; the deadline moves
 * with it, and 30 s bound the wait).
 *
 * Prints "requests N errors E handshakes H seconds S rate R/s hs H/s".
 * An error is a refused or reset connection, a non-2xx CONNECT answer, a
 * failed handshake or verification, a non-200 answer or a malformed one;
 * the first few are described on stderr, and the slot starts over.  Exit 1
 * when no request succeeded.
 */
#ifndef _GNU_SOURCE
#define _GNU_SOURCE
#endif
#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <openssl/err.h>
#include <openssl/ssl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#define BUF 8192
#define MAX_CONC 1000
#define MAX_REPORTED 5

enum state { S_TCP, S_CONNECT, S_HANDSHAKE, S_SEND, S_HEAD, S_BODY };

struct slot {
    int fd;
    SSL *ssl;
    enum state st;
    char host[256];
    size_t got;          /* bytes in buf (CONNECT answer, response head) */
    size_t sent;         /* bytes of the GET written */
    long left;           /* body bytes still to read */
    int done;            /* requests answered on this connection */
    char buf[BUF];
};

static struct sockaddr_in dial;
static int use_proxy;
static unsigned origin_port;
static const char *host_fmt;
static long names, next_name, first_name;
static int reqs_per_conn;
static SSL_CTX *ctx;
static long requests, errors, handshakes, reported;

static double now(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + ts.tv_nsec / 1e9;
}

/* One line on stderr for the first few errors: enough to see why. */
static int fail(const struct slot *s, const char *what)
{
    if (reported++ < MAX_REPORTED) {
        unsigned long e = ERR_peek_error();
        fprintf(stderr, "tls_load: %s: %s%s%s\n", s->host, what, e ? ": " : "",
                e ? ERR_reason_error_string(e) : "");
    }
    ERR_clear_error();
    return -1;
}

static void slot_close(struct slot *s)
{
    if (s->ssl != NULL) {
        SSL_free(s->ssl);
        s->ssl = NULL;
    }
    if (s->fd >= 0) {
        close(s->fd);
        s->fd = -1;
    }
}

static void want(int ep, struct slot *s, uint32_t events)
{
    struct epoll_event ev = { .events = events, .data.ptr = s };
    epoll_ctl(ep, EPOLL_CTL_MOD, s->fd, &ev);
}

static int slot_start(int ep, struct slot *s)
{
    if (names > 0) {
        const char *d = strstr(host_fmt, "%d");
        snprintf(s->host, sizeof(s->host), "%.*s%ld%s", (int)(d - host_fmt), host_fmt,
                 (first_name + next_name++) % names + 1, d + 2);
    } else {
        snprintf(s->host, sizeof(s->host), "%s", host_fmt);
    }
    s->got = 0;
    s->done = 0;
    s->st = S_TCP;
    s->fd = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK, 0);
    if (s->fd == -1) {
        return -1;
    }
    int one = 1;
    setsockopt(s->fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
    if (connect(s->fd, (struct sockaddr *)&dial, sizeof(dial)) == -1 && errno != EINPROGRESS) {
        close(s->fd);
        s->fd = -1;
        return -1;
    }
    struct epoll_event ev = { .events = EPOLLOUT, .data.ptr = s };
    epoll_ctl(ep, EPOLL_CTL_ADD, s->fd, &ev);
    return 0;
}

/* Map an SSL call's WANT_* to the readiness to wait for; -1 on failure. */
static int ssl_wait(int ep, struct slot *s, int rc, const char *what)
{
    switch (SSL_get_error(s->ssl, rc)) {
    case SSL_ERROR_WANT_READ:
        want(ep, s, EPOLLIN);
        return 0;
    case SSL_ERROR_WANT_WRITE:
        want(ep, s, EPOLLOUT);
        return 0;
    default:
        return fail(s, what);
    }
}

static int start_tls(int ep, struct slot *s)
{
    s->ssl = SSL_new(ctx);
    if (s->ssl == NULL || SSL_set_fd(s->ssl, s->fd) != 1 ||
        SSL_set_tlsext_host_name(s->ssl, s->host) != 1 || SSL_set1_host(s->ssl, s->host) != 1) {
        return fail(s, "SSL setup");
    }
    s->st = S_HANDSHAKE;
    int rc = SSL_connect(s->ssl);
    if (rc == 1) {
        return 1;
    }
    return ssl_wait(ep, s, rc, "handshake");
}

/* The next GET on this connection. */
static int send_get(int ep, struct slot *s)
{
    char req[512];
    int last = reqs_per_conn > 0 && s->done + 1 >= reqs_per_conn;
    int n = snprintf(req, sizeof(req), "GET /1k HTTP/1.1\r\nHost: %s:%u\r\n%s\r\n", s->host,
                     origin_port, last ? "Connection: close\r\n" : "");
    s->st = S_SEND;
    int rc = SSL_write(s->ssl, req, n);
    if (rc == n) {
        s->st = S_HEAD;
        s->got = 0;
        want(ep, s, EPOLLIN);
        return 0;
    }
    /* SSL_write with the default mode retries the same buffer: the GET
     * is rebuilt identically on the retry. */
    return ssl_wait(ep, s, rc, "write");
}

/* A complete response head is in buf: check it, find the body length. */
static int parse_head(struct slot *s, size_t head_len)
{
    if (strncmp(s->buf, "HTTP/1.1 200", 12) != 0 && strncmp(s->buf, "HTTP/1.0 200", 12) != 0) {
        char line[64];
        snprintf(line, sizeof(line), "answer %.40s", s->buf);
        for (char *p = line; *p; p++) {
            if (*p == '\r' || *p == '\n') {
                *p = '\0';
            }
        }
        return fail(s, line);
    }
    const char *cl = strcasestr(s->buf, "\r\ncontent-length:");
    if (cl == NULL || cl > s->buf + head_len) {
        return fail(s, "answer without Content-Length");
    }
    s->left = atol(cl + 17) - (long)(s->got - head_len);
    if (s->left < 0) {
        return fail(s, "more bytes than the answer holds");
    }
    s->st = S_BODY;
    return 0;
}

/* A response is complete.  Returns 1 when the connection is finished. */
static int answered(int ep, struct slot *s)
{
    requests++;
    s->done++;
    if (reqs_per_conn > 0 && s->done >= reqs_per_conn) {
        SSL_shutdown(s->ssl);   /* one close_notify, not waited for */
        return 1;
    }
    return send_get(ep, s);
}

/* Read what TLS has: head, then body.  Returns 1 finished, 0 continue. */
static int slot_read(int ep, struct slot *s)
{
    for (;;) {
        int rc;
        if (s->st == S_HEAD) {
            rc = SSL_read(s->ssl, s->buf + s->got, (int)(BUF - 1 - s->got));
        } else {
            char sink[BUF];
            rc = SSL_read(s->ssl, sink, s->left < BUF ? (int)s->left : BUF);
        }
        if (rc <= 0) {
            return ssl_wait(ep, s, rc, s->st == S_HEAD ? "read head" : "read body");
        }
        if (s->st == S_HEAD) {
            s->got += (size_t)rc;
            s->buf[s->got] = '\0';
            char *end = strstr(s->buf, "\r\n\r\n");
            if (end == NULL) {
                if (s->got >= BUF - 1) {
                    return fail(s, "answer head too large");
                }
                continue;
            }
            if (parse_head(s, (size_t)(end + 4 - s->buf)) != 0) {
                return -1;
            }
        } else {
            s->left -= rc;
        }
        if (s->st == S_BODY && s->left == 0) {
            /* The next GET is out (or the connection done): its answer
             * comes with a new readiness event. */
            return answered(ep, s);
        }
    }
}

/* The proxy's answer to CONNECT: a 2xx head, and nothing after it. */
static int read_connect(int ep, struct slot *s)
{
    ssize_t r = read(s->fd, s->buf + s->got, BUF - 1 - s->got);
    if (r < 0 && errno == EAGAIN) {
        return 0;
    }
    if (r <= 0) {
        return fail(s, "CONNECT: no answer");
    }
    s->got += (size_t)r;
    s->buf[s->got] = '\0';
    char *end = strstr(s->buf, "\r\n\r\n");
    if (end == NULL) {
        return s->got >= BUF - 1 ? fail(s, "CONNECT: answer too large") : 0;
    }
    if (strncmp(s->buf, "HTTP/1.1 2", 10) != 0 && strncmp(s->buf, "HTTP/1.0 2", 10) != 0) {
        return fail(s, "CONNECT refused");
    }
    if (end + 4 != s->buf + s->got) {
        return fail(s, "CONNECT: bytes after the answer");
    }
    return start_tls(ep, s);
}

/* One readiness event.  Returns 1 finished, 0 continue, -1 failed. */
static int slot_event(int ep, struct slot *s, uint32_t events)
{
    int rc;
    switch (s->st) {
    case S_TCP:
        if (events & (EPOLLERR | EPOLLHUP)) {
            return fail(s, "connect refused");
        }
        if (!use_proxy) {
            rc = start_tls(ep, s);
            break;
        }
        {
            char req[512];
            int n = snprintf(req, sizeof(req), "CONNECT %s:%u HTTP/1.1\r\nHost: %s:%u\r\n\r\n",
                             s->host, origin_port, s->host, origin_port);
            if (write(s->fd, req, (size_t)n) != n) {
                return fail(s, "CONNECT: write");
            }
        }
        s->st = S_CONNECT;
        want(ep, s, EPOLLIN);
        return 0;
    case S_CONNECT:
        rc = read_connect(ep, s);
        break;
    case S_HANDSHAKE:
        rc = SSL_connect(s->ssl);
        rc = rc == 1 ? 1 : ssl_wait(ep, s, rc, "handshake");
        break;
    case S_SEND:
        return send_get(ep, s) < 0 ? -1 : 0;
    default:
        return slot_read(ep, s);
    }
    if (rc == 1) {   /* the handshake is done */
        handshakes++;
        return send_get(ep, s) < 0 ? -1 : 0;
    }
    return rc;
}

int main(int argc, char **argv)
{
    if (argc < 8 || argc > 10) {
        fprintf(stderr,
                "usage: %s PROXY_PORT HOST ORIGIN_PORT CAFILE CONC SECONDS REQS [NAMES [FIRST]]\n",
                argv[0]);
        return 2;
    }
    int proxy_port = atoi(argv[1]);
    host_fmt = argv[2];
    origin_port = (unsigned)atoi(argv[3]);
    int conc = atoi(argv[5]);
    double secs = atof(argv[6]);
    reqs_per_conn = atoi(argv[7]);
    names = argc >= 9 ? atol(argv[8]) : 0;
    first_name = argc == 10 ? atol(argv[9]) - 1 : 0;
    if (conc < 1 || conc > MAX_CONC || secs <= 0 || secs > 120 || reqs_per_conn < 0 ||
        names < 0 || (names > 0) != (strstr(host_fmt, "%d") != NULL) || first_name < 0 ||
        strlen(host_fmt) > 200) {
        fprintf(stderr, "CONC 1..%d, SECONDS 0..120, REQS >= 0; HOST has %%d when NAMES > 0\n",
                MAX_CONC);
        return 2;
    }
    use_proxy = proxy_port != 0;
    dial.sin_family = AF_INET;
    dial.sin_port = htons((uint16_t)(use_proxy ? proxy_port : (int)origin_port));
    inet_pton(AF_INET, "127.0.0.1", &dial.sin_addr);

    ctx = SSL_CTX_new(TLS_client_method());
    static const unsigned char alpn[] = "\x08http/1.1";
    if (ctx == NULL || SSL_CTX_load_verify_locations(ctx, argv[4], NULL) != 1 ||
        SSL_CTX_set_alpn_protos(ctx, alpn, sizeof(alpn) - 1) != 0) {
        fprintf(stderr, "tls_load: cannot load CA file %s\n", argv[4]);
        return 2;
    }
    SSL_CTX_set_verify(ctx, SSL_VERIFY_PEER, NULL);
    /* Every connection pays a full handshake: nothing to resume from. */
    SSL_CTX_set_session_cache_mode(ctx, SSL_SESS_CACHE_OFF);
    SSL_CTX_set_options(ctx, SSL_OP_NO_TICKET);

    int ep = epoll_create1(0);
    struct slot *slots = calloc((size_t)conc, sizeof(*slots));
    if (ep < 0 || slots == NULL) {
        return 1;
    }
    double t0 = now(), end = t0 + secs;
    const char *ready_file = getenv("READY_FILE");
    int waiting = ready_file != NULL && *ready_file != '\0';
    if (waiting) {
        end = t0 + 30;
    }
    for (int i = 0; i < conc; i++) {
        slots[i].fd = -1;
        if (slot_start(ep, &slots[i]) != 0) {
            errors++;
        }
    }
    struct epoll_event evs[256];
    while (now() < end) {
        int n = epoll_wait(ep, evs, 256, 100);
        for (int i = 0; i < n; i++) {
            struct slot *s = evs[i].data.ptr;
            int rc = slot_event(ep, s, evs[i].events);
            if (rc == 0) {
                continue;
            }
            errors += rc < 0;
            slot_close(s);
            if (slot_start(ep, s) != 0) {
                errors++;
            }
        }
        if (waiting && handshakes >= conc) {
            waiting = 0;
            requests = errors = handshakes = 0;
            t0 = now();
            end = t0 + secs;
            FILE *f = fopen(ready_file, "w");
            if (f != NULL) {
                fclose(f);
            }
        }
    }
    if (waiting) {
        fprintf(stderr, "tls_load: %ld of %d connections ready after 30 s\n", handshakes, conc);
        requests = 0;
    }
    double el = now() - t0;
    printf("requests %ld errors %ld handshakes %ld seconds %.3f rate %.0f/s hs %.0f/s\n", requests,
           errors, handshakes, el, requests / el, handshakes / el);
    for (int i = 0; i < conc; i++) {
        slot_close(&slots[i]);
    }
    free(slots);
    close(ep);
    SSL_CTX_free(ctx);
    return requests > 0 ? 0 : 1;
}
