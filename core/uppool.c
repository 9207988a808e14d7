/* uppool.c - upstream slots, wait queues and idle connections (uppool.h). */
#include "uppool.h"
#include "conn.h"
#include "log.h"
#include "proxy.h"
#include "transport.h"
#include "upstream.h"

#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

/* Buckets of the upstream index (a power of two).  Entries exist only
 * while an upstream has a connection or a waiter, so the chains stay
 * short however many origins were ever seen. */
#define UPP_BUCKETS 4096
/* Seconds a kept connection may have been idle and still be reused
 * without a MSG_PEEK check: its watcher reports a hang-up in the next
 * loop iteration; within this window the retry on a reused connection
 * covers a hang-up not yet seen. */
#define UPP_PEEK_AFTER 1.0
/* Pool indexes with limits of their own (ferry_set_pool_name's range). */
#define UPP_POOLS_MAX 4096

struct upp_limits {
    unsigned max;          /* connections per upstream, 0: no cap */
    unsigned queue;        /* requests waiting for a slot */
    unsigned idle;         /* idle connections kept per upstream */
    unsigned max_requests; /* requests per connection, 0: no limit */
    double queue_timeout;  /* seconds a request waits */
    double idle_timeout;   /* seconds an idle connection is kept; 0: timeouts.upstream_idle */
    unsigned set:1;        /* configured (else the defaults apply) */
};

static const struct upp_limits upp_defaults = {
    .max = 0, .queue = 256, .idle = 256, .max_requests = 1000,
    .queue_timeout = 5.0, .idle_timeout = 0,
};

struct upp_idle {
    struct leg leg;                 /* the connection: socket, transport, own watcher */
    struct upp_entry *e;
    struct upp_idle *prev, *next;   /* the entry's list, newest first */
    struct upp_idle *gprev, *gnext; /* every idle connection, oldest first */
    ev_timer timer;                 /* idle expiry */
    char *host;                     /* destination of a hop bound to one (SOCKS5, or
                                     * TLS ferry originated), else NULL */
    int port;
    unsigned tls:1;                 /* a TLS session with the origin (c->origin_tls) */
    unsigned requests;              /* requests it served */
    int pool;                       /* pool index its idle gauge counts under */
    double since;                   /* loop_now() when it was kept */
};

struct upp_entry {
    struct upp_entry *next;         /* hash chain */
    struct proxy *proxy;            /* NULL: an origin reached directly */
    char *host;                     /* the origin (direct only) */
    int port;
    unsigned open;                  /* slots held: connections in use or being opened */
    unsigned nidle;
    struct upp_idle *idle, *idle_tail;
    struct conn *qhead, *qtail;     /* waiters, FIFO */
    unsigned nq;
};

static struct upp_entry *buckets[UPP_BUCKETS];
static struct upp_idle *g_oldest, *g_newest;
static unsigned g_idle;
static uint64_t g_evicted;

static struct upp_limits *limits;
static unsigned nlimits;

static struct ferry_conn_stats *proxy_stats, *pool_stats;
static uint32_t nproxy_stats, npool_stats;

static int grow(void *arrp, uint32_t *n, uint32_t want, size_t size)
{
    if (want < *n) {
        return 0;
    }
    uint32_t ncap = *n ? *n : 16;
    while (ncap <= want) {
        ncap *= 2;
    }
    void **arr = arrp;
    char *na = realloc(*arr, (size_t)ncap * size);
    if (na == NULL) {
        return -1;
    }
    memset(na + (size_t)*n * size, 0, (size_t)(ncap - *n) * size);
    *arr = na;
    *n = ncap;
    return 0;
}

static struct ferry_conn_stats *stats_proxy(const struct proxy *p)
{
    if (p == NULL || grow(&proxy_stats, &nproxy_stats, p->pub.id, sizeof(*proxy_stats)) < 0) {
        return NULL;
    }
    return &proxy_stats[p->pub.id];
}

static struct ferry_conn_stats *stats_pool(int pool)
{
    if (pool < 0 || pool >= UPP_POOLS_MAX ||
        grow(&pool_stats, &npool_stats, (uint32_t)pool, sizeof(*pool_stats)) < 0) {
        return NULL;
    }
    return &pool_stats[pool];
}

/* Add d to one field of the proxy's and the pool's stats. */
#define UPP_COUNT(p, pool, field, d) do {                       \
        struct ferry_conn_stats *s_ = stats_proxy(p);           \
        if (s_ != NULL) {                                       \
            s_->field += (d);                                   \
        }                                                       \
        s_ = stats_pool(pool);                                  \
        if (s_ != NULL) {                                       \
            s_->field += (d);                                   \
        }                                                       \
    } while (0)

static const struct upp_limits *limits_of(int pool)
{
    if (pool >= 0 && (unsigned)pool < nlimits && limits[pool].set) {
        return &limits[pool];
    }
    return &upp_defaults;
}

int ferry_pool_connections(int pool, int max, int queue, double queue_timeout, int idle,
                           double idle_timeout, int max_requests)
{
    if (pool < 0 || pool >= UPP_POOLS_MAX) {
        return FERRY_ERROR;
    }
    if ((unsigned)pool >= nlimits) {
        uint32_t n = nlimits;
        if (grow(&limits, &n, (uint32_t)pool, sizeof(*limits)) < 0) {
            return FERRY_ERROR;
        }
        nlimits = n;
    }
    struct upp_limits *l = &limits[pool];
    *l = upp_defaults;
    l->set = 1;
    if (max >= 0) {
        l->max = (unsigned)max;
    }
    if (queue >= 0) {
        l->queue = (unsigned)queue;
    }
    if (queue_timeout > 0) {
        l->queue_timeout = queue_timeout;
    }
    if (idle >= 0) {
        l->idle = (unsigned)idle;
    }
    if (idle_timeout > 0) {
        l->idle_timeout = idle_timeout;
    }
    if (max_requests >= 0) {
        l->max_requests = (unsigned)max_requests;
    }
    return FERRY_OK;
}

static void stats_copy(const struct ferry_conn_stats *s, struct ferry_conn_stats *out)
{
    if (s != NULL) {
        *out = *s;
    } else {
        memset(out, 0, sizeof(*out));
    }
}

int ferry_conn_stats_proxy(uint32_t id, struct ferry_conn_stats *out)
{
    stats_copy(id < nproxy_stats ? &proxy_stats[id] : NULL, out);
    return FERRY_OK;
}

int ferry_conn_stats_pool(int pool, struct ferry_conn_stats *out)
{
    stats_copy(pool >= 0 && (uint32_t)pool < npool_stats ? &pool_stats[pool] : NULL, out);
    return FERRY_OK;
}

uint32_t uppool_pool_count(void)
{
    return npool_stats;
}

uint64_t ferry_conn_idle_evicted(void)
{
    return g_evicted;
}

double uppool_queue_timeout(int pool)
{
    return limits_of(pool)->queue_timeout;
}

/* An HTTP proxy takes any absolute-form request on a kept connection,
 * a backend any request for it; a SOCKS hop is bound to the destination
 * it was opened for. */
static int hop_bound(const struct proxy *p)
{
    return p != NULL && !upstream_shared(p->pub.scheme);
}

static uint32_t key_hash(const struct proxy *p, const char *host, int port)
{
    uint32_t h = 2166136261u;
    if (p != NULL) {
        h = (h ^ p->pub.id) * 16777619u;
        return h;
    }
    for (const char *s = host; *s != '\0'; s++) {
        h = (h ^ (unsigned char)*s) * 16777619u;
    }
    return (h ^ (uint32_t)port) * 16777619u;
}

static struct upp_entry **entry_slot(const struct proxy *p, const char *host, int port)
{
    struct upp_entry **pp = &buckets[key_hash(p, host, port) & (UPP_BUCKETS - 1)];
    for (; *pp != NULL; pp = &(*pp)->next) {
        struct upp_entry *e = *pp;
        if (p != NULL ? e->proxy == p
                      : e->proxy == NULL && e->port == port && strcmp(e->host, host) == 0) {
            break;
        }
    }
    return pp;
}

static struct upp_entry *entry_get(struct conn *c)
{
    struct upp_entry **pp = entry_slot(c->proxy, c->host, c->port);
    if (*pp != NULL) {
        return *pp;
    }
    struct upp_entry *e = calloc(1, sizeof(*e));
    if (e == NULL) {
        return NULL;
    }
    e->proxy = c->proxy;
    e->port = c->proxy == NULL ? c->port : 0;
    if (c->proxy == NULL && (e->host = strdup(c->host)) == NULL) {
        free(e);
        return NULL;
    }
    *pp = e;
    return e;
}

static void entry_maybe_free(struct upp_entry *e)
{
    if (e == NULL || e->open > 0 || e->nidle > 0 || e->nq > 0) {
        return;
    }
    struct upp_entry **pp = entry_slot(e->proxy, e->host != NULL ? e->host : "", e->port);
    if (*pp == e) {
        *pp = e->next;
    }
    free(e->host);
    free(e);
}

static void slot_take(struct upp_entry *e, struct conn *c)
{
    e->open++;
    c->upp_entry = e;
    c->upp_slot = 1;
    c->upp_pool = c->pool;
    UPP_COUNT(e->proxy, c->pool, active, 1);
}

static void slot_give(struct conn *c)
{
    struct upp_entry *e = c->upp_entry;
    e->open--;
    c->upp_slot = 0;
    UPP_COUNT(e->proxy, c->upp_pool, active, (uint32_t)-1);
}

static void queue_remove(struct upp_entry *e, struct conn *c)
{
    struct conn **pp = &e->qhead;
    struct conn *prev = NULL;
    while (*pp != NULL && *pp != c) {
        prev = *pp;
        pp = &(*pp)->upp_next;
    }
    if (*pp == c) {
        *pp = c->upp_next;
        if (e->qtail == c) {
            e->qtail = prev;
        }
        e->nq--;
        UPP_COUNT(e->proxy, c->upp_pool, waiting, (uint32_t)-1);
    }
    c->upp_next = NULL;
    c->upp_queued = 0;
}

/* Take a connection out of every list and stop its watchers. */
static void idle_unlink(struct upp_idle *i)
{
    struct upp_entry *e = i->e;
    ev_io_stop(loop, &i->leg.io);
    ev_timer_stop(loop, &i->timer);
    if (i->prev != NULL) {
        i->prev->next = i->next;
    } else {
        e->idle = i->next;
    }
    if (i->next != NULL) {
        i->next->prev = i->prev;
    } else {
        e->idle_tail = i->prev;
    }
    if (i->gprev != NULL) {
        i->gprev->gnext = i->gnext;
    } else {
        g_oldest = i->gnext;
    }
    if (i->gnext != NULL) {
        i->gnext->gprev = i->gprev;
    } else {
        g_newest = i->gprev;
    }
    e->nidle--;
    g_idle--;
    UPP_COUNT(e->proxy, i->pool, idle, (uint32_t)-1);
}

/* Close a leg no conn owns, with its transport state (TLS). */
static void leg_close(struct leg *g)
{
    leg_tr_free(g);
    if (g->fd >= 0) {
        close(g->fd);
        g->fd = -1;
    }
}

/* Close an idle connection; its entry may be left empty (the caller
 * grants and frees). */
static void idle_close_quiet(struct upp_idle *i)
{
    idle_unlink(i);
    leg_close(&i->leg);
    free(i->host);
    free(i);
}

/* Give free slots to waiters, oldest first.  An idle connection the
 * first waiter cannot use (a SOCKS5 hop bound elsewhere) makes room. */
static void grant(struct upp_entry *e)
{
    while (e->qhead != NULL) {
        struct conn *w = e->qhead;
        const struct upp_limits *lim = limits_of(w->upp_pool);
        if (lim->max > 0 && e->open + e->nidle >= lim->max) {
            if (e->nidle == 0) {
                return;
            }
            idle_close_quiet(e->idle_tail);
            continue;
        }
        queue_remove(e, w);
        slot_take(e, w);
        w->upp_granted = 1;
        conn_arm(w, 0); /* it goes on from its own timer */
    }
}

static void idle_close(struct upp_idle *i)
{
    struct upp_entry *e = i->e;
    idle_close_quiet(i);
    grant(e);
    entry_maybe_free(e);
}

/* An idle connection is readable: the upstream hung up, or sent bytes
 * nobody asked for.  Either way it cannot carry another request. */
static void on_idle_io(struct ev_loop *lp, ev_io *w, int revents)
{
    (void)lp;
    (void)revents;
    idle_close((struct upp_idle *)((char *)w - offsetof(struct upp_idle, leg.io)));
}

static void on_idle_timer(struct ev_loop *lp, ev_timer *w, int revents)
{
    (void)lp;
    (void)revents;
    idle_close((struct upp_idle *)((char *)w - offsetof(struct upp_idle, timer)));
}

int uppool_alive(int fd)
{
    char b;
    ssize_t n = recv(fd, &b, 1, MSG_PEEK | MSG_DONTWAIT);
    return n == -1 && (errno == EAGAIN || errno == EWOULDBLOCK);
}

/* Move leg src into c->up.  The conn keeps its own buffers and watcher;
 * everything else (socket, transport state) comes with the leg. */
static void leg_move_in(struct conn *c, const struct leg *src)
{
    struct buf in = c->up.in, out = c->up.out;
    ev_io io = c->up.io;
    c->up = *src;
    c->up.in = in;
    c->up.out = out;
    c->up.io = io;
    c->up.ev = 0;
    c->up.io.fd = src->fd; /* the same open socket: no re-registration (conn.c set_events) */
}

/* Empty c->up after its socket moved elsewhere. */
static void leg_reset(struct conn *c)
{
    ev_io_stop(loop, &c->up.io);
    struct buf in = c->up.in, out = c->up.out;
    ev_io io = c->up.io;
    memset(&c->up, 0, sizeof(c->up));
    c->up.in = in;
    c->up.out = out;
    c->up.io = io;
    c->up.fd = -1;
    c->up.io.fd = -1;
}

static void conn_leg_close(struct conn *c)
{
    ev_io_stop(loop, &c->up.io);
    c->up.ev = 0;
    leg_tr_free(&c->up);
    if (c->up.fd >= 0) {
        close(c->up.fd);
        c->up.fd = -1;
        c->up.io.fd = -1;
    }
}

static int idle_fits(const struct upp_idle *i, const struct conn *c)
{
    /* An originated TLS session speaks to one origin only, and a plain
     * request never goes into one (nor the reverse). */
    return i->tls == c->origin_tls &&
           (i->host == NULL || (i->port == c->port && strcmp(i->host, c->host) == 0));
}

/* The connection c is done with is bound to its destination. */
static int conn_bound(const struct upp_entry *e, const struct conn *c)
{
    return hop_bound(e->proxy) || c->origin_tls;
}

enum uppool_take uppool_acquire(struct conn *c, int may_reuse)
{
    struct upp_entry *e = entry_get(c);
    if (e == NULL) {
        return UPPOOL_GO; /* no memory for the index: go without a slot */
    }
    c->upp_entry = e;
    const struct upp_limits *lim = limits_of(c->pool);
    if (may_reuse) {
        struct upp_idle *next;
        for (struct upp_idle *i = e->idle; i != NULL; i = next) {
            next = i->next;
            if (!idle_fits(i, c)) {
                continue;
            }
            /* Kept under UPP_PEEK_AFTER ago and no event seen (on_idle_io
             * would have closed it): skip the MSG_PEEK syscall.  A hang-up
             * in that window fails the send, which the retry on a reused
             * connection covers (conn_upstream.c), when the request may
             * be sent again (UPPOOL_REUSE_REPLAYABLE). */
            if ((may_reuse != UPPOOL_REUSE_REPLAYABLE || loop_now() - i->since >= UPP_PEEK_AFTER) &&
                !uppool_alive(i->leg.fd)) {
                idle_close_quiet(i); /* hung up unseen: the watcher has not run yet */
                continue;
            }
            idle_unlink(i);
            slot_take(e, c);
            leg_move_in(c, &i->leg);
            c->up_requests = i->requests;
            free(i->host);
            free(i);
            UPP_COUNT(e->proxy, c->pool, reused, 1);
            return UPPOOL_GO;
        }
    }
    /* At the cap, an idle connection this request cannot use makes room. */
    while (lim->max > 0 && e->open + e->nidle >= lim->max && e->nidle > 0 && e->nq == 0) {
        idle_close_quiet(e->idle_tail);
    }
    if (e->nq == 0 && (lim->max == 0 || e->open + e->nidle < lim->max)) {
        slot_take(e, c);
        c->up_requests = 0;
        return UPPOOL_GO;
    }
    c->upp_pool = c->pool;
    if (e->nq >= lim->queue) {
        UPP_COUNT(e->proxy, c->pool, queue_full, 1);
        c->upp_entry = NULL;
        entry_maybe_free(e);
        return UPPOOL_FULL;
    }
    c->upp_next = NULL;
    if (e->qtail != NULL) {
        e->qtail->upp_next = c;
    } else {
        e->qhead = c;
    }
    e->qtail = c;
    e->nq++;
    c->upp_queued = 1;
    c->upp_granted = 0;
    UPP_COUNT(e->proxy, c->pool, queued, 1);
    UPP_COUNT(e->proxy, c->pool, waiting, 1);
    return UPPOOL_WAIT;
}

int uppool_queue_fired(struct conn *c)
{
    if (c->upp_granted) {
        c->upp_granted = 0;
        return 1;
    }
    struct upp_entry *e = c->upp_entry;
    if (e != NULL && c->upp_queued) {
        queue_remove(e, c);
        UPP_COUNT(e->proxy, c->upp_pool, queue_timeouts, 1);
        c->upp_entry = NULL;
        entry_maybe_free(e);
    }
    return 0;
}

void uppool_drop(struct conn *c)
{
    struct upp_entry *e = c->upp_entry;
    c->upp_granted = 0;
    if (e == NULL) {
        return;
    }
    if (c->upp_queued) {
        queue_remove(e, c);
    } else if (c->upp_slot) {
        slot_give(c);
        grant(e);
    }
    c->upp_entry = NULL;
    entry_maybe_free(e);
}

void uppool_opened(struct conn *c)
{
    UPP_COUNT(c->proxy, c->pool, opened, 1);
}

/* Past the global idle cap the oldest idle connection anywhere goes. */
static void evict_global(void)
{
    while (g_idle > UPPOOL_IDLE_GLOBAL_MAX && g_oldest != NULL) {
        if (g_evicted++ == 0) {
            log_event(LOG_INFO, "FERRY-0170", NULL, "%d idle upstream connections kept: "
                      "the oldest are closed to make room", UPPOOL_IDLE_GLOBAL_MAX);
        }
        idle_close(g_oldest);
    }
}

void uppool_release(struct conn *c, int keep)
{
    struct upp_entry *e = c->upp_entry;
    const struct upp_limits *lim = limits_of(c->pool);
    unsigned served = c->up_requests + 1;
    if (c->up.fd < 0 || e == NULL || !c->upp_slot || leg_pending(&c->up)) {
        keep = 0; /* leg_pending: decrypted bytes nobody asked for */
    }
    if (keep && lim->max_requests > 0 && served >= lim->max_requests) {
        keep = 0;
        UPP_COUNT(e->proxy, c->pool, retired, 1);
    }
    struct conn *w = keep ? e->qhead : NULL;
    if (w != NULL) {
        /* A waiter takes the slot, and the connection when it can use it. */
        queue_remove(e, w);
        slot_give(c);
        slot_take(e, w);
        if (!w->is_connect && !w->upgrade && !w->fresh_only && w->origin_tls == c->origin_tls &&
            (!conn_bound(e, c) || (w->port == c->port && strcmp(w->host, c->host) == 0))) {
            leg_move_in(w, &c->up);
            w->up_requests = served;
            leg_reset(c);
            UPP_COUNT(e->proxy, w->pool, reused, 1);
        } else {
            conn_leg_close(c);
        }
        c->upp_entry = NULL;
        w->upp_granted = 1;
        conn_arm(w, 0);
        return;
    }
    struct upp_idle *i = keep && lim->idle > 0 ? calloc(1, sizeof(*i)) : NULL;
    if (i != NULL && conn_bound(e, c) && (i->host = strdup(c->host)) == NULL) {
        free(i);
        i = NULL;
    }
    if (i == NULL) {
        conn_leg_close(c);
        uppool_drop(c);
        return;
    }
    ev_io_stop(loop, &c->up.io);
    i->leg = c->up;
    memset(&i->leg.in, 0, sizeof(i->leg.in)); /* the buffers stay with the conn */
    memset(&i->leg.out, 0, sizeof(i->leg.out));
    i->leg.ev = EV_READ;
    /* The socket stays open from the conn's watcher to this one: set
     * fd and mask without ev_io_set's forced re-registration (EEXIST). */
    ev_init(&i->leg.io, on_idle_io);
    i->leg.io.fd = i->leg.fd;
    i->leg.io.events = EV_READ;
    ev_io_start(loop, &i->leg.io);
    double secs = lim->idle_timeout > 0 ? lim->idle_timeout : timeouts.upstream_idle;
    ev_timer_init(&i->timer, on_idle_timer, secs, 0.);
    ev_timer_start(loop, &i->timer);
    leg_reset(c);
    i->e = e;
    i->port = c->port;
    i->tls = c->origin_tls;
    i->requests = served;
    i->pool = c->pool;
    i->since = loop_now();
    slot_give(c);
    c->upp_entry = NULL;
    i->next = e->idle;
    if (e->idle != NULL) {
        e->idle->prev = i;
    } else {
        e->idle_tail = i;
    }
    e->idle = i;
    i->gprev = g_newest;
    if (g_newest != NULL) {
        g_newest->gnext = i;
    } else {
        g_oldest = i;
    }
    g_newest = i;
    e->nidle++;
    g_idle++;
    UPP_COUNT(e->proxy, i->pool, idle, 1);
    while (e->nidle > lim->idle) {
        idle_close_quiet(e->idle_tail);
    }
    evict_global();
}

void uppool_proxy_removed(struct proxy *p)
{
    struct upp_entry *e = *entry_slot(p, "", 0);
    if (e == NULL) {
        return;
    }
    while (e->idle != NULL) {
        idle_close_quiet(e->idle);
    }
    grant(e);
    entry_maybe_free(e);
}

void uppool_free_all(void)
{
    while (g_oldest != NULL) {
        idle_close(g_oldest);
    }
    for (unsigned b = 0; b < UPP_BUCKETS; b++) {
        while (buckets[b] != NULL) {
            struct upp_entry *e = buckets[b];
            buckets[b] = e->next;
            free(e->host);
            free(e);
        }
    }
    free(limits);
    limits = NULL;
    nlimits = 0;
    free(proxy_stats);
    proxy_stats = NULL;
    nproxy_stats = 0;
    free(pool_stats);
    pool_stats = NULL;
    npool_stats = 0;
}
