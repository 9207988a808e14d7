/* connect_rate.c - how many CONNECT tunnels a proxy sets up per second.
 *
 * usage: connect_rate PROXY_PORT TARGET(host:port) CONCURRENCY SECONDS [MODE]
 * Keeps CONCURRENCY connections to 127.0.0.1:PROXY_PORT busy and prints
 * "tunnels N errors N rate R/s".  Stops by itself.  MODE:
 *   connect  (default) send CONNECT, wait for the 2xx answer, close
 *   relay    the same, then "GET /1k HTTP/1.0" through the tunnel and
 *            read the answer to the origin's close: setup plus relay
 *   raw      no CONNECT: the GET straight away (a TCP-mode relay such as
 *            haproxy "mode tcp" in front of the origin), read to close
 *   stall    open CONCURRENCY tunnels once and hold them for SECONDS
 *            without reading a byte: the proxy's cost of tunnels at rest */
#define _GNU_SOURCE
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

struct slot {
    int fd;
    size_t got;
    int tunneled;   /* relay: the 2xx came, the GET is sent */
    char buf[512];
};

enum mode { M_CONNECT, M_RELAY, M_RAW, M_STALL };

static struct sockaddr_in proxy;
static char request[256], get[256];
static size_t request_len, get_len;
static enum mode mode;

static double now(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + ts.tv_nsec / 1e9;
}

static int start(int ep, struct slot *s)
{
    s->got = 0;
    s->tunneled = 0;
    s->fd = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK, 0);
    if (s->fd == -1) {
        return -1;
    }
    int one = 1;
    setsockopt(s->fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
    if (connect(s->fd, (struct sockaddr *)&proxy, sizeof(proxy)) == -1 && errno != EINPROGRESS) {
        close(s->fd);
        return -1;
    }
    struct epoll_event ev = { .events = EPOLLOUT, .data.ptr = s };
    epoll_ctl(ep, EPOLL_CTL_ADD, s->fd, &ev);
    return 0;
}

int main(int argc, char **argv)
{
    if (argc != 5 && argc != 6) {
        fprintf(stderr, "usage: %s PROXY_PORT TARGET CONCURRENCY SECONDS [connect|relay|raw|stall]\n",
                argv[0]);
        return 2;
    }
    proxy.sin_family = AF_INET;
    proxy.sin_port = htons((uint16_t)atoi(argv[1]));
    inet_pton(AF_INET, "127.0.0.1", &proxy.sin_addr);
    request_len = (size_t)snprintf(request, sizeof(request),
                                   "CONNECT %s HTTP/1.1\r\nHost: %s\r\n\r\n", argv[2], argv[2]);
    get_len = (size_t)snprintf(get, sizeof(get), "GET /1k HTTP/1.0\r\nHost: %s\r\n\r\n", argv[2]);
    const char *m = argc > 5 ? argv[5] : "connect";
    mode = strcmp(m, "relay") == 0 ? M_RELAY : strcmp(m, "raw") == 0 ? M_RAW
         : strcmp(m, "stall") == 0 ? M_STALL : M_CONNECT;
    if (mode == M_RAW) {
        memcpy(request, get, get_len + 1);
        request_len = get_len;
    }
    int conc = atoi(argv[3]);
    double secs = atof(argv[4]);
    if (conc < 1 || conc > 1000 || secs <= 0 || secs > 120) {
        fprintf(stderr, "concurrency 1..1000, seconds 0..120\n");
        return 2;
    }
    int ep = epoll_create1(0);
    struct slot *slots = calloc((size_t)conc, sizeof(*slots));
    long ok = 0, errors = 0;
    double t0 = now(), end = t0 + secs;
    for (int i = 0; i < conc; i++) {
        if (start(ep, &slots[i]) != 0) {
            errors++;
        }
    }
    struct epoll_event evs[256];
    while (now() < end) {
        int n = epoll_wait(ep, evs, 256, 100);
        for (int i = 0; i < n; i++) {
            struct slot *s = evs[i].data.ptr;
            int done = 0, failed = 0;
            if (evs[i].events & EPOLLOUT) {
                if (write(s->fd, request, request_len) != (ssize_t)request_len) {
                    failed = 1;
                } else {
                    struct epoll_event ev = { .events = EPOLLIN, .data.ptr = s };
                    epoll_ctl(ep, EPOLL_CTL_MOD, s->fd, &ev);
                }
            } else if (evs[i].events & (EPOLLIN | EPOLLERR | EPOLLHUP)) {
                ssize_t r = read(s->fd, s->buf + s->got, sizeof(s->buf) - 1 - s->got);
                if (r == 0 && (s->tunneled || mode == M_RAW) && s->got > 0) {
                    /* The origin's answer, read to its close. */
                    done = strncmp(s->buf, "HTTP/1.1 200", 12) == 0;
                    failed = !done;
                } else if (r <= 0) {
                    failed = 1;
                } else if (s->tunneled || mode == M_RAW) {
                    /* Keep the first bytes (the status line), count the rest. */
                    s->got += (size_t)r;
                    if (s->got > 64) {
                        s->got = 64;
                    }
                } else {
                    s->got += (size_t)r;
                    s->buf[s->got] = '\0';
                    if (strstr(s->buf, "\r\n\r\n") != NULL) {
                        if (strncmp(s->buf, "HTTP/1.1 2", 10) != 0 &&
                            strncmp(s->buf, "HTTP/1.0 2", 10) != 0) {
                            failed = 1;
                        } else if (mode == M_STALL) {
                            ok++; /* hold it: never read again */
                            epoll_ctl(ep, EPOLL_CTL_DEL, s->fd, NULL);
                        } else if (mode == M_RELAY) {
                            s->tunneled = 1;
                            s->got = 0;
                            failed = write(s->fd, get, get_len) != (ssize_t)get_len;
                        } else {
                            done = 1;
                        }
                    } else if (s->got >= sizeof(s->buf) - 1) {
                        failed = 1;
                    }
                }
            }
            if (done || failed) {
                ok += done;
                errors += failed;
                close(s->fd);
                if (start(ep, s) != 0) {
                    errors++;
                }
            }
        }
    }
    double el = now() - t0;
    printf("tunnels %ld errors %ld rate %.0f/s\n", ok, errors, ok / el);
    return 0;
}
