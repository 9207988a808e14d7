/* resolve.c - c-ares driven by libev watchers, never blocking the loop.
 *
 * c-ares cannot abandon a single query, so each lookup is wrapped: a
 * cancelled wrapper stays alive until c-ares answers, and its answer is
 * then dropped instead of reaching a connection that is already gone. */
#include "resolve.h"
#include "log.h"
#include "loop.h"

#include <ares.h>
#include <arpa/inet.h>
#include <netinet/in.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#define RESOLVE_MAX_SOCKS 16
#define CACHE_SLOTS 1024
#define CACHE_TTL 60.0
#define HOST_MAX 256

struct resolve_req {
    ev_timer later;     /* private: delivers an answer c-ares gave synchronously */
    resolve_cb cb;      /* ro */
    void *arg;          /* ro */
    int port;           /* ro */
    char host[HOST_MAX]; /* ro: for the cache */
    struct sockaddr_storage addr; /* private: held answer */
    socklen_t addr_len; /* private */
    int status;         /* private */
    unsigned cancelled:1; /* rw: answer is dropped */
    unsigned starting:1;  /* private: inside resolve_start */
};

struct sock_watch {
    ev_io io;             /* private */
    ares_socket_t fd;     /* ro: ARES_SOCKET_BAD when free */
};

struct cache_entry {
    char host[HOST_MAX];            /* ro: lower-case key */
    struct sockaddr_storage addr;   /* ro: port not meaningful */
    socklen_t len;                  /* ro */
    double expires;                 /* ro */
};

static ares_channel channel;
static struct sock_watch socks[RESOLVE_MAX_SOCKS];
static ev_timer timeout_timer;
static struct cache_entry *cache;
static int ready;

static unsigned hash_host(const char *h)
{
    unsigned v = 2166136261u;
    for (; *h; h++) {
        unsigned char ch = (unsigned char)*h;
        if (ch >= 'A' && ch <= 'Z') {
            ch = (unsigned char)(ch + 32);
        }
        v = (v ^ ch) * 16777619u;
    }
    return v;
}

static void set_port(struct sockaddr_storage *ss, int port)
{
    if (ss->ss_family == AF_INET) {
        ((struct sockaddr_in *)ss)->sin_port = htons((uint16_t)port);
    } else {
        ((struct sockaddr_in6 *)ss)->sin6_port = htons((uint16_t)port);
    }
}

int resolve_literal(const char *host, int port, struct sockaddr_storage *ss, socklen_t *len)
{
    memset(ss, 0, sizeof(*ss));
    struct sockaddr_in *a4 = (struct sockaddr_in *)ss;
    struct sockaddr_in6 *a6 = (struct sockaddr_in6 *)ss;
    if (inet_pton(AF_INET, host, &a4->sin_addr) == 1) {
        a4->sin_family = AF_INET;
        *len = sizeof(*a4);
    } else if (inet_pton(AF_INET6, host, &a6->sin6_addr) == 1) {
        a6->sin6_family = AF_INET6;
        *len = sizeof(*a6);
    } else {
        return 0;
    }
    set_port(ss, port);
    return 1;
}

int resolve_cached(const char *host, int port, struct sockaddr_storage *ss, socklen_t *len)
{
    if (cache == NULL) {
        return 0;
    }
    struct cache_entry *e = &cache[hash_host(host) % CACHE_SLOTS];
    if (e->len == 0 || e->expires < loop_now() || strcasecmp(e->host, host) != 0) {
        return 0;
    }
    memcpy(ss, &e->addr, e->len);
    *len = e->len;
    set_port(ss, port);
    return 1;
}

static void cache_put(const char *host, const struct sockaddr *sa, socklen_t len)
{
    if (cache == NULL || strlen(host) >= HOST_MAX || len > sizeof(struct sockaddr_storage)) {
        return;
    }
    struct cache_entry *e = &cache[hash_host(host) % CACHE_SLOTS];
    snprintf(e->host, sizeof(e->host), "%s", host);
    memcpy(&e->addr, sa, len);
    e->len = len;
    e->expires = loop_now() + CACHE_TTL;
}

static void arm_timeout(void)
{
    struct timeval tv, *tvp;
    ev_timer_stop(loop, &timeout_timer);
    tvp = ares_timeout(channel, NULL, &tv);
    if (tvp != NULL) {
        ev_timer_set(&timeout_timer, (double)tvp->tv_sec + (double)tvp->tv_usec / 1e6 + 0.001,
                     0.);
        ev_timer_start(loop, &timeout_timer);
    }
}

static void on_sock(struct ev_loop *l, ev_io *w, int revents)
{
    (void)l;
    struct sock_watch *s = (struct sock_watch *)w;
    ares_socket_t fd = s->fd;
    ares_process_fd(channel, (revents & EV_READ) ? fd : ARES_SOCKET_BAD,
                    (revents & EV_WRITE) ? fd : ARES_SOCKET_BAD);
    arm_timeout();
}

static void on_timeout(struct ev_loop *l, ev_timer *w, int revents)
{
    (void)l;
    (void)w;
    (void)revents;
    ares_process_fd(channel, ARES_SOCKET_BAD, ARES_SOCKET_BAD);
    arm_timeout();
}

/* c-ares tells us which sockets it wants watched, and for what. */
static void sock_state(void *data, ares_socket_t fd, int readable, int writable)
{
    (void)data;
    struct sock_watch *s = NULL, *free_slot = NULL;
    for (int i = 0; i < RESOLVE_MAX_SOCKS; i++) {
        if (socks[i].fd == fd) {
            s = &socks[i];
            break;
        }
        if (free_slot == NULL && socks[i].fd == ARES_SOCKET_BAD) {
            free_slot = &socks[i];
        }
    }
    if (s != NULL) {
        ev_io_stop(loop, &s->io);
    }
    if (!readable && !writable) {
        if (s != NULL) {
            s->fd = ARES_SOCKET_BAD;
        }
        return;
    }
    if (s == NULL) {
        s = free_slot;
        if (s == NULL) {
            log_event(LOG_ERROR, "FERRY-5001", NULL, "resolver socket table full");
            return;
        }
        s->fd = fd;
    }
    ev_io_set(&s->io, fd, (readable ? EV_READ : 0) | (writable ? EV_WRITE : 0));
    ev_io_start(loop, &s->io);
}

int resolve_init(void)
{
    if (ares_library_init(ARES_LIB_INIT_ALL) != ARES_SUCCESS) {
        return -1;
    }
    struct ares_options opts;
    memset(&opts, 0, sizeof(opts));
    opts.sock_state_cb = sock_state;
    opts.timeout = 2000;
    opts.tries = 2;
    if (ares_init_options(&channel, &opts,
                          ARES_OPT_SOCK_STATE_CB | ARES_OPT_TIMEOUTMS | ARES_OPT_TRIES) !=
        ARES_SUCCESS) {
        return -1;
    }
    for (int i = 0; i < RESOLVE_MAX_SOCKS; i++) {
        socks[i].fd = ARES_SOCKET_BAD;
        ev_init(&socks[i].io, on_sock);
    }
    ev_init(&timeout_timer, on_timeout);
    cache = calloc(CACHE_SLOTS, sizeof(*cache));
    ready = 1;
    return cache != NULL ? 0 : -1;
}

void resolve_fini(void)
{
    if (!ready) {
        return;
    }
    /* Runs every pending callback with ARES_EDESTRUCTION, freeing wrappers. */
    ares_destroy(channel);
    for (int i = 0; i < RESOLVE_MAX_SOCKS; i++) {
        ev_io_stop(loop, &socks[i].io);
    }
    ev_timer_stop(loop, &timeout_timer);
    ares_library_cleanup();
    free(cache);
    cache = NULL;
    ready = 0;
}

static void deliver(struct resolve_req *r)
{
    if (!r->cancelled) {
        r->cb(r->arg, r->status, r->status == 0 ? (struct sockaddr *)&r->addr : NULL,
              r->addr_len);
    }
    free(r);
}

static void on_later(struct ev_loop *l, ev_timer *w, int revents)
{
    (void)l;
    (void)revents;
    deliver((struct resolve_req *)w);
}

static void on_answer(void *arg, int status, int timeouts, struct ares_addrinfo *res)
{
    (void)timeouts;
    struct resolve_req *r = arg;
    const struct ares_addrinfo_node *pick = NULL;
    if (status == ARES_SUCCESS && res != NULL) {
        /* Prefer IPv4: most proxies and exchanges are reached over it. */
        for (const struct ares_addrinfo_node *n = res->nodes; n != NULL; n = n->ai_next) {
            if (n->ai_family == AF_INET) {
                pick = n;
                break;
            }
            if (pick == NULL && n->ai_family == AF_INET6) {
                pick = n;
            }
        }
    }
    if (pick != NULL) {
        cache_put(r->host, pick->ai_addr, pick->ai_addrlen);
        memcpy(&r->addr, pick->ai_addr, pick->ai_addrlen);
        r->addr_len = pick->ai_addrlen;
        set_port(&r->addr, r->port);
        r->status = 0;
    } else {
        r->status = status == ARES_SUCCESS ? ARES_ENODATA : status;
    }
    if (res != NULL) {
        ares_freeaddrinfo(res);
    }
    if (r->starting) {
        /* Keep the promise that callbacks never run inside resolve_start. */
        ev_timer_start(loop, &r->later);
        return;
    }
    deliver(r);
}

struct resolve_req *resolve_start(const char *host, int port, resolve_cb cb, void *arg)
{
    if (!ready || strlen(host) >= HOST_MAX) {
        return NULL;
    }
    struct resolve_req *r = calloc(1, sizeof(*r));
    if (r == NULL) {
        return NULL;
    }
    r->cb = cb;
    r->arg = arg;
    r->port = port;
    snprintf(r->host, sizeof(r->host), "%s", host);
    ev_timer_init(&r->later, on_later, 0., 0.);
    struct ares_addrinfo_hints hints;
    memset(&hints, 0, sizeof(hints));
    hints.ai_family = AF_UNSPEC;
    hints.ai_socktype = SOCK_STREAM;
    r->starting = 1;
    ares_getaddrinfo(channel, r->host, NULL, &hints, on_answer, r);
    r->starting = 0;
    arm_timeout();
    return r;
}

void resolve_cancel(struct resolve_req *r)
{
    if (r != NULL) {
        r->cancelled = 1;
    }
}

const char *resolve_strerror(int status)
{
    return ares_strerror(status);
}
