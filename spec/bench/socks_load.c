/* socks_load.c - the load side of the SOCKS5 and tunnel rows of make bench
 * (spec/bench/socks.sh).  Only 127.0.0.1 is ever dialled, and every loop
 * ends by itself: at a deadline, at EOF, or on the first error.
 *
 * PROTO says how the tunnel to the origin is opened through the proxy on
 * 127.0.0.1:PROXY_PORT:
 *   socks5   RFC 1928 greeting (method 0, no authentication), wait for the
 *            method reply, then CONNECT to 127.0.0.1:ORIGIN_PORT as an
 *            IPv4 address; the reply must be "succeeded"
 *   connect  "CONNECT 127.0.0.1:ORIGIN_PORT HTTP/1.1", a 2xx answer
 *   none     no proxy: PROXY_PORT is the origin itself (the ceiling)
 *
 *   socks_load stream PROTO PROXY_PORT ORIGIN_PORT PATH BYTES TIMEOUT
 *     one tunnel; "GET PATH HTTP/1.0" through it; the answer is read to
 *     the origin's close and discarded in the kernel (MSG_TRUNC: the load
 *     core copies nothing, so the proxy, not the client, is the limit).
 *     Prints "bytes N seconds S rate R"; exit 1 unless the answer is a
 *     200 of at least BYTES bytes.  The clock starts once the tunnel is up.
 *
 *   socks_load setup PROTO PROXY_PORT ORIGIN_PORT CONC SECONDS MODE
 *     CONC connections at a time for SECONDS; each opens a tunnel and then
 *       close  closes it at once (the cost of a setup alone), or
 *       relay  sends "GET /1k HTTP/1.0", reads the 200 to the origin's
 *              close, closes: a setup plus a small exchange.
 *     Prints "setups N errors N rate R/s".  An error is a refused or reset
 *     connection, a failed handshake or a non-200 answer; the slot then
 *     starts over.  Exit 1 when nothing succeeded.
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
#include <sys/epoll.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

enum proto { P_SOCKS5, P_CONNECT, P_NONE };
enum sstate { S_CONNECTING, S_METHOD, S_REPLY, S_HEAD, S_BODY };

#define SBUF 512
#define MAX_CONC 1000

struct slot {
    int fd;
    enum sstate st;
    size_t got;
    size_t body;
    char buf[SBUF];
};

static enum proto proto;
static struct sockaddr_in proxy_addr;
static uint16_t origin_port;
static char connect_req[128], get_req[256];
static size_t connect_len, get_len;
static const unsigned char greeting[3] = { 5, 1, 0 };
static unsigned char socks_req[10];

static double now(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + ts.tv_nsec / 1e9;
}

static int parse_proto(const char *s)
{
    if (strcmp(s, "socks5") == 0) {
        proto = P_SOCKS5;
    } else if (strcmp(s, "connect") == 0) {
        proto = P_CONNECT;
    } else if (strcmp(s, "none") == 0) {
        proto = P_NONE;
    } else {
        return -1;
    }
    return 0;
}

/* The requests every tunnel sends, built once. */
static void build_requests(const char *path)
{
    connect_len = (size_t)snprintf(connect_req, sizeof(connect_req),
                                   "CONNECT 127.0.0.1:%u HTTP/1.1\r\nHost: 127.0.0.1:%u\r\n\r\n",
                                   origin_port, origin_port);
    get_len = (size_t)snprintf(get_req, sizeof(get_req),
                               "GET %s HTTP/1.0\r\nHost: 127.0.0.1:%u\r\n\r\n", path, origin_port);
    socks_req[0] = 5;  /* version */
    socks_req[1] = 1;  /* CONNECT */
    socks_req[2] = 0;
    socks_req[3] = 1;  /* IPv4 */
    socks_req[4] = 127;
    socks_req[5] = 0;
    socks_req[6] = 0;
    socks_req[7] = 1;
    socks_req[8] = (unsigned char)(origin_port >> 8);
    socks_req[9] = (unsigned char)(origin_port & 0xff);
}

/* Bytes a complete SOCKS5 reply takes, 0 while unknown, -1 when it is bad. */
static long socks_reply_len(const unsigned char *b, size_t n)
{
    if (n < 5) {
        return 0;
    }
    if (b[0] != 5 || b[1] != 0) {
        return -1;
    }
    switch (b[3]) {
    case 1: return 10;
    case 4: return 22;
    case 3: return 7 + (long)b[4];
    default: return -1;
    }
}

static int full_write(int fd, const void *p, size_t n)
{
    return write(fd, p, n) == (ssize_t)n ? 0 : -1;
}

/* ---- stream: one tunnel, blocking with timeouts ---- */

/* Read until pred says the handshake step is complete; bounded by the
 * socket's receive timeout and the buffer. */
static ssize_t read_some(int fd, char *buf, size_t have, size_t cap)
{
    if (have >= cap) {
        return -1;
    }
    ssize_t r = read(fd, buf + have, cap - have);
    return r <= 0 ? -1 : r;
}

static int stream_handshake(int fd)
{
    char b[SBUF] = { 0 };
    size_t n = 0;
    if (proto == P_SOCKS5) {
        if (full_write(fd, greeting, sizeof(greeting)) != 0) {
            return -1;
        }
        while (n < 2) {
            ssize_t r = read_some(fd, b, n, 2);
            if (r < 0) {
                return -1;
            }
            n += (size_t)r;
        }
        if (b[0] != 5 || b[1] != 0) {
            fprintf(stderr, "socks5: method reply %d %d\n", b[0], b[1]);
            return -1;
        }
        if (full_write(fd, socks_req, sizeof(socks_req)) != 0) {
            return -1;
        }
        n = 0;
        for (;;) {
            long want = socks_reply_len((unsigned char *)b, n);
            if (want < 0) {
                fprintf(stderr, "socks5: CONNECT refused (reply %d)\n", n > 1 ? b[1] : -1);
                return -1;
            }
            if (want > 0 && n >= (size_t)want) {
                return 0;
            }
            /* Read no further than the reply: the origin speaks next. */
            ssize_t r = read_some(fd, b, n, want > 0 ? (size_t)want : 5);
            if (r < 0) {
                return -1;
            }
            n += (size_t)r;
        }
    }
    if (proto == P_CONNECT) {
        if (full_write(fd, connect_req, connect_len) != 0) {
            return -1;
        }
        /* One byte at a time up to the blank line: the origin speaks next. */
        while (n < 4 || memcmp(b + n - 4, "\r\n\r\n", 4) != 0) {
            ssize_t r = read_some(fd, b, n, n + 1 < SBUF ? n + 1 : SBUF);
            if (r < 0) {
                return -1;
            }
            n += (size_t)r;
        }
        if (strncmp(b, "HTTP/1.1 2", 10) != 0 && strncmp(b, "HTTP/1.0 2", 10) != 0) {
            fprintf(stderr, "connect: %.*s\n", (int)(n > 40 ? 40 : n), b);
            return -1;
        }
    }
    return 0;
}

static int cmd_stream(char **argv)
{
    double want = atof(argv[6]);
    double timeout = atof(argv[7]);
    if (want <= 0 || timeout <= 0 || timeout > 600) {
        fprintf(stderr, "BYTES > 0, TIMEOUT 0..600\n");
        return 2;
    }
    build_requests(argv[5]);
    int fd = socket(AF_INET, SOCK_STREAM, 0);
    struct timeval tv = { .tv_sec = 5 };
    setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof(tv));
    setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof(tv));
    int one = 1;
    setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
    if (connect(fd, (struct sockaddr *)&proxy_addr, sizeof(proxy_addr)) != 0) {
        perror("connect");
        return 1;
    }
    if (stream_handshake(fd) != 0) {
        fprintf(stderr, "handshake failed\n");
        return 1;
    }
    double t0 = now(), end = t0 + timeout;
    if (full_write(fd, get_req, get_len) != 0) {
        return 1;
    }
    char head[16];
    size_t hn = 0;
    while (hn < sizeof(head)) {
        ssize_t r = read(fd, head + hn, sizeof(head) - hn);
        if (r <= 0) {
            fprintf(stderr, "no answer\n");
            return 1;
        }
        hn += (size_t)r;
    }
    if (strncmp(head, "HTTP/1.1 200", 12) != 0 && strncmp(head, "HTTP/1.0 200", 12) != 0) {
        fprintf(stderr, "answer: %.12s\n", head);
        return 1;
    }
    double total = (double)hn;
    static char sink[1 << 16];
    while (now() < end) {
        /* MSG_TRUNC on TCP: the kernel drops the bytes, no copy. */
        ssize_t r = recv(fd, sink, 1 << 30, MSG_TRUNC);
        if (r == 0) {
            break;
        }
        if (r < 0) {
            if (errno == EINTR) {
                continue;
            }
            perror("recv");
            break;
        }
        total += (double)r;
    }
    double el = now() - t0;
    close(fd);
    printf("bytes %.0f seconds %.3f rate %.0f\n", total, el, total / el);
    return total >= want ? 0 : 1;
}

/* ---- setup: CONC slots, epoll ---- */

static int relay;

static int slot_start(int ep, struct slot *s)
{
    s->got = 0;
    s->body = 0;
    s->st = S_CONNECTING;
    s->fd = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK, 0);
    if (s->fd == -1) {
        return -1;
    }
    int one = 1;
    setsockopt(s->fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
    if (connect(s->fd, (struct sockaddr *)&proxy_addr, sizeof(proxy_addr)) == -1 &&
        errno != EINPROGRESS) {
        close(s->fd);
        s->fd = -1;
        return -1;
    }
    struct epoll_event ev = { .events = EPOLLOUT, .data.ptr = s };
    epoll_ctl(ep, EPOLL_CTL_ADD, s->fd, &ev);
    return 0;
}

static void slot_want_read(int ep, struct slot *s)
{
    struct epoll_event ev = { .events = EPOLLIN, .data.ptr = s };
    epoll_ctl(ep, EPOLL_CTL_MOD, s->fd, &ev);
}

/* The tunnel is up: done (close mode) or send the GET (relay mode).
 * Returns 1 done, 0 continue, -1 failed. */
static int slot_tunneled(struct slot *s)
{
    if (!relay) {
        return 1;
    }
    s->st = S_BODY;
    s->got = 0;
    return full_write(s->fd, get_req, get_len) == 0 ? 0 : -1;
}

/* One readiness event.  Returns 1 done, 0 continue, -1 failed. */
static int slot_event(int ep, struct slot *s, uint32_t events)
{
    if (s->st == S_CONNECTING) {
        if (!(events & EPOLLOUT) || (events & (EPOLLERR | EPOLLHUP))) {
            return -1;
        }
        slot_want_read(ep, s);
        switch (proto) {
        case P_SOCKS5:
            s->st = S_METHOD;
            return full_write(s->fd, greeting, sizeof(greeting));
        case P_CONNECT:
            s->st = S_HEAD;
            return full_write(s->fd, connect_req, connect_len);
        case P_NONE:
            return slot_tunneled(s);
        }
        return -1;
    }
    ssize_t r = read(s->fd, s->buf + s->got, SBUF - 1 - s->got);
    if (r < 0 && errno == EAGAIN) {
        return 0;
    }
    if (s->st == S_BODY) {
        if (r == 0) {
            /* The origin closed: the answer is complete. */
            return s->got >= 12 && strncmp(s->buf, "HTTP/1.1 200", 12) == 0 ? 1 : -1;
        }
        if (r < 0) {
            return -1;
        }
        /* Keep the status line, count the rest. */
        s->body += (size_t)r;
        s->got += (size_t)r;
        if (s->got > 64) {
            s->got = 64;
        }
        return 0;
    }
    if (r <= 0) {
        return -1;
    }
    s->got += (size_t)r;
    switch (s->st) {
    case S_METHOD:
        if (s->got < 2) {
            return 0;
        }
        if (s->got > 2 || s->buf[0] != 5 || s->buf[1] != 0) {
            return -1;
        }
        s->st = S_REPLY;
        s->got = 0;
        return full_write(s->fd, socks_req, sizeof(socks_req));
    case S_REPLY: {
        long want = socks_reply_len((unsigned char *)s->buf, s->got);
        if (want < 0 || (want > 0 && s->got > (size_t)want)) {
            return -1;
        }
        return want > 0 && s->got == (size_t)want ? slot_tunneled(s) : 0;
    }
    case S_HEAD:
        s->buf[s->got] = '\0';
        if (strstr(s->buf, "\r\n\r\n") == NULL) {
            return s->got >= SBUF - 1 ? -1 : 0;
        }
        if (strncmp(s->buf, "HTTP/1.1 2", 10) != 0 && strncmp(s->buf, "HTTP/1.0 2", 10) != 0) {
            return -1;
        }
        return slot_tunneled(s);
    default:
        return -1;
    }
}

static int cmd_setup(char **argv)
{
    int conc = atoi(argv[5]);
    double secs = atof(argv[6]);
    if (conc < 1 || conc > MAX_CONC || secs <= 0 || secs > 120) {
        fprintf(stderr, "CONC 1..%d, SECONDS 0..120\n", MAX_CONC);
        return 2;
    }
    if (strcmp(argv[7], "relay") == 0) {
        relay = 1;
    } else if (strcmp(argv[7], "close") != 0) {
        fprintf(stderr, "MODE is close or relay\n");
        return 2;
    }
    build_requests("/1k");
    int ep = epoll_create1(0);
    struct slot *slots = calloc((size_t)conc, sizeof(*slots));
    if (ep < 0 || slots == NULL) {
        return 1;
    }
    long ok = 0, errors = 0;
    double t0 = now(), end = t0 + secs;
    for (int i = 0; i < conc; i++) {
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
            ok += rc > 0;
            errors += rc < 0;
            close(s->fd);
            /* A failed start leaves the slot empty; a few failures in a
             * row (fd or port exhaustion) are counted, not retried hot. */
            if (slot_start(ep, s) != 0) {
                errors++;
            }
        }
    }
    double el = now() - t0;
    printf("setups %ld errors %ld rate %.0f/s\n", ok, errors, ok / el);
    for (int i = 0; i < conc; i++) {
        if (slots[i].fd > 0) {
            close(slots[i].fd);
        }
    }
    free(slots);
    close(ep);
    return ok > 0 ? 0 : 1;
}

int main(int argc, char **argv)
{
    int is_stream = argc == 8 && strcmp(argv[1], "stream") == 0;
    int is_setup = argc == 8 && strcmp(argv[1], "setup") == 0;
    if ((!is_stream && !is_setup) || parse_proto(argv[2]) != 0) {
        fprintf(stderr,
                "usage: %s stream socks5|connect|none PROXY_PORT ORIGIN_PORT PATH BYTES TIMEOUT\n"
                "       %s setup  socks5|connect|none PROXY_PORT ORIGIN_PORT CONC SECONDS close|relay\n",
                argv[0], argv[0]);
        return 2;
    }
    proxy_addr.sin_family = AF_INET;
    proxy_addr.sin_port = htons((uint16_t)atoi(argv[3]));
    inet_pton(AF_INET, "127.0.0.1", &proxy_addr.sin_addr);
    origin_port = (uint16_t)atoi(argv[4]);
    return is_stream ? cmd_stream(argv) : cmd_setup(argv);
}
