/* uppool.h - upstream connections shared by every client connection.
 *
 * An upstream is a proxy, or an origin (host, port) reached directly.
 * Each has a count of its open connections (in use, connecting or idle)
 * bounded by its pool's `max`, a FIFO of requests waiting for a slot
 * (`queue`, `queue_timeout`), and a list of idle keep-alive connections
 * (`idle`, `idle_timeout`) any client connection may take.  An idle
 * connection is a whole struct leg moved out of the conn that used it:
 * its socket and transport state travel with it; its buffers stay with
 * the conn (they are empty when it is kept).  A watcher closes an idle
 * connection the upstream hung up or spoke on, a timer one idle too long.
 *
 * A conn holds at most one slot (c->upp_entry, c->upp_slot).  Waiters
 * are woken by arming their own timer at zero, never called from
 * another conn's callback. */
#ifndef FERRY_UPPOOL_H
#define FERRY_UPPOOL_H

#include "ferry.h"

struct conn;
struct proxy;

/* Idle connections kept over all upstreams; past it the oldest goes. */
#define UPPOOL_IDLE_GLOBAL_MAX 8192

enum uppool_take {
    UPPOOL_GO = 0,   /* a slot is held; c->up.fd >= 0 when a kept connection came with it */
    UPPOOL_WAIT,     /* queued: the conn's timer fires when a slot is granted or time ran out */
    UPPOOL_FULL      /* the queue is full: answer at once */
};

/* may_reuse of uppool_acquire: the request could be sent again on a fresh
 * connection should the kept one turn out dead, so a connection kept
 * moments ago is reused without a MSG_PEEK check. */
#define UPPOOL_REUSE_REPLAYABLE 2
/* Take a slot for the attempt c is about to make (c->proxy, c->host,
 * c->port, c->pool).  may_reuse: a kept connection may come with it
 * (nonzero; UPPOOL_REUSE_REPLAYABLE, see above). */
enum uppool_take uppool_acquire(struct conn *c, int may_reuse);
/* Seconds a request of this pool waits in the queue. */
double uppool_queue_timeout(int pool);
/* The conn's queue timer fired: 1 if a slot was granted meanwhile, 0 if
 * its wait ran out (it left the queue; counted). */
int uppool_queue_fired(struct conn *c);
/* The response is complete.  keep: the connection may serve another
 * request; it goes to a waiter, to the idle list, or is closed.  The
 * slot is given back either way; c->up no longer holds a socket after. */
void uppool_release(struct conn *c, int keep);
/* The conn's upstream socket was closed (or never opened): give back
 * its slot, or leave the queue. */
void uppool_drop(struct conn *c);
/* Count a fresh connection the attempt opens. */
void uppool_opened(struct conn *c);
/* The kept connection handed to c is still open and silent. */
int uppool_alive(int fd);
/* A proxy left the config: close its idle connections. */
void uppool_proxy_removed(struct proxy *p);
/* Pool indexes with stats: ferry_conn_stats_pool answers 0..count-1. */
uint32_t uppool_pool_count(void);
/* Close every idle connection (stop). */
void uppool_free_all(void);

#endif
