/* connect_rate.c - how many CONNECT tunnels a proxy sets up per second.
 *
 * usage: connect_rate PROXY_PORT TARGET(host:port) CONCURRENCY SECONDS
 * Keeps CONCURRENCY connections to 127.0.0.1:PROXY_PORT busy, each
 * sending CONNECT, waiting for the 2xx answer, closing, and starting
 * over; prints "tunnels N errors N rate R/s".  Stops by itself. */
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
    char buf[512];
};

static struct sockaddr_in proxy;
static char request[256];
static size_t request_len;

static double now(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + ts.tv_nsec / 1e9;
}

static int start(int ep, struct slot *s)
{
    s->got = 0;
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
    if (argc != 5) {
        fprintf(stderr, "usage: %s PROXY_PORT TARGET CONCURRENCY SECONDS\n", argv[0]);
        return 2;
    }
    proxy.sin_family = AF_INET;
    proxy.sin_port = htons((uint16_t)atoi(argv[1]));
    inet_pton(AF_INET, "127.0.0.1", &proxy.sin_addr);
    request_len = (size_t)snprintf(request, sizeof(request),
                                   "CONNECT %s HTTP/1.1\r\nHost: %s\r\n\r\n", argv[2], argv[2]);
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
                if (r <= 0) {
                    failed = 1;
                } else {
                    s->got += (size_t)r;
                    s->buf[s->got] = '\0';
                    if (strstr(s->buf, "\r\n\r\n") != NULL) {
                        if (strncmp(s->buf, "HTTP/1.1 2", 10) == 0 ||
                            strncmp(s->buf, "HTTP/1.0 2", 10) == 0) {
                            done = 1;
                        } else {
                            failed = 1;
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
