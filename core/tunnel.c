/* tunnel.c - opaque relay for CONNECT and upgraded connections.
 *
 * Bytes that arrived before the tunnel opened sit in cli.in / up.in and go
 * out first.  After that each direction runs socket -> pipe -> socket
 * with splice(2), so payload never enters user space; a direction that
 * cannot get a pipe carries its bytes through its buffer instead, and
 * so does a tunnel with a TLS leg (its bytes must pass through OpenSSL).
 *
 * A tunnel at rest must cost nothing:
 * - A direction is read only while its pipe has room.  A pipe fills by
 *   slots (one per socket fragment) as well as by bytes, so a splice in
 *   that fails with EAGAIN while the pipe holds bytes means "full": that
 *   side stops reading until the other side takes bytes out.
 * - Pipes are sized by what the kernel grants: a per-user quota
 *   (fs.pipe-user-pages-soft) may refuse F_SETPIPE_SZ or hand out tiny
 *   pipes, and every bound here is the granted size.  A pipe starts at
 *   the default size and grows only when it fills by bytes (bulk
 *   traffic), and only while ferry's pipes stay within half the quota.
 * - A direction takes its pipe on its first read, from a small pool of
 *   empty pipes that ended tunnels give back, so a short tunnel costs no
 *   pipe2/fcntl/close at all.
 * EOF on one side becomes a half-close on the other once its bytes are
 * out; when both sides are done the close itself sends the FINs. */
#include "conn.h"
#include "listener.h"
#include "log.h"
#include "metrics.h"
#include "proxy.h"
#include "transport.h"

#include <errno.h>
#include <fcntl.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

/* Empty pipes of the default size kept for the next tunnels. */
#define TUNNEL_POOL_MAX 32

/* The kernel's default pipe: 16 slots of a page.  Smaller means the
 * user's pipe quota is spent and the kernel hands out two slots. */
#define TUNNEL_PIPE_DEFAULT (16 * 4096)

/* How often a warning about pipes may repeat, seconds. */
#define TUNNEL_WARN_EVERY 60.0

struct pooled_pipe {
    int r, w;
    unsigned cap;
};

static struct pooled_pipe pool[TUNNEL_POOL_MAX];
static unsigned npool;
static size_t held;          /* capacity of every pipe ferry holds, pooled too */
static size_t budget;        /* how much of that the user's quota allows, 0 = unknown */
static double warned_small, warned_none;

static void warn_small(unsigned cap, const char *why)
{
    if (loop_now() - warned_small >= TUNNEL_WARN_EVERY) {
        warned_small = loop_now();
        log_event(LOG_WARN, "FERRY-3020", NULL,
                  "tunnel pipe of %u bytes: %s (per-user pipe quota, "
                  "fs.pipe-user-pages-soft); tunnels go on with smaller pipes", cap, why);
    }
}

/* Pipe bytes ferry lets itself hold: half of an unprivileged user's soft
 * quota (the rest is left to the user's other processes), no bound for
 * root.  Read once; a wrong guess only costs a refused F_SETPIPE_SZ. */
static size_t pipe_budget(void)
{
    if (budget != 0) {
        return budget;
    }
    budget = SIZE_MAX;
    if (geteuid() != 0) {
        FILE *f = fopen("/proc/sys/fs/pipe-user-pages-soft", "r");
        unsigned long pages = 0;
        if (f != NULL) {
            if (fscanf(f, "%lu", &pages) != 1) {
                pages = 0;
            }
            fclose(f);
        }
        if (pages > 0) {
            budget = pages / 2 * (size_t)sysconf(_SC_PAGESIZE);
        }
    }
    return budget;
}

/* A pipe with its granted capacity, from the pool or new; -1 when none. */
static int pipe_take(struct tunnel_pipe *p)
{
    p->grow_tried = 0;
    if (npool > 0) {
        npool--;
        p->r = pool[npool].r;
        p->w = pool[npool].w;
        p->cap = pool[npool].cap;
        return 0;
    }
    int fds[2];
    if (pipe2(fds, O_NONBLOCK | O_CLOEXEC) == -1) {
        return -1;
    }
    int cap = fcntl(fds[1], F_GETPIPE_SZ);
    if (cap <= 0) {
        close(fds[0]);
        close(fds[1]);
        return -1;
    }
    if (cap < TUNNEL_PIPE_DEFAULT) {
        warn_small((unsigned)cap, "the kernel hands out small pipes");
    }
    p->r = fds[0];
    p->w = fds[1];
    p->cap = (unsigned)cap;
    held += (size_t)cap;
    return 0;
}

/* A pipe that filled by bytes carries bulk traffic: ask once for a larger
 * one (fewer wake-ups per byte), while ferry's pipes stay in budget. */
static void pipe_grow(struct tunnel_pipe *p)
{
    p->grow_tried = 1;
    if (p->cap >= TUNNEL_PIPE_SIZE || held + TUNNEL_PIPE_SIZE - p->cap > pipe_budget()) {
        return;
    }
    int cap = fcntl(p->w, F_SETPIPE_SZ, TUNNEL_PIPE_SIZE);
    if (cap == -1) {
        warn_small(p->cap, "the kernel refused a larger one");
        return;
    }
    held += (size_t)cap - p->cap;
    p->cap = (unsigned)cap;
}

static void pipe_close(struct tunnel_pipe *p)
{
    held -= p->cap;
    close(p->r);
    close(p->w);
    p->r = p->w = -1;
}

/* Give an empty pipe of the default size back to the pool; close the
 * rest (a grown pipe would hold quota while it waits). */
static void pipe_give(struct tunnel_pipe *p)
{
    if (p->r < 0) {
        return;
    }
    if (p->in == 0 && p->cap <= TUNNEL_PIPE_DEFAULT && npool < TUNNEL_POOL_MAX) {
        pool[npool].r = p->r;
        pool[npool].w = p->w;
        pool[npool].cap = p->cap;
        npool++;
        p->r = p->w = -1;
    } else {
        pipe_close(p);
    }
    p->in = 0;
    p->full = 0;
}

void conn_tunnel_init(struct conn *c)
{
    c->pcu = (struct tunnel_pipe){ .r = -1, .w = -1 };
    c->puc = (struct tunnel_pipe){ .r = -1, .w = -1 };
}

void conn_tunnel_close_pipes(struct conn *c)
{
    pipe_give(&c->pcu);
    pipe_give(&c->puc);
}

void conn_tunnel_pool_free(void)
{
    while (npool > 0) {
        npool--;
        held -= pool[npool].cap;
        close(pool[npool].r);
        close(pool[npool].w);
    }
}

/* May this direction read now?  A pipe: while it has room and the last
 * splice in did not find it full.  Buffers: while the buffer has room.
 * No pipe yet: yes, the read takes one. */
static int can_read(const struct tunnel_pipe *p, const struct buf *b)
{
    if (p->r >= 0) {
        return !p->full && p->in < p->cap;
    }
    return p->none ? buf_room(b) > 0 : 1;
}

int conn_tunnel_can_read_client(const struct conn *c)
{
    return can_read(&c->pcu, &c->cli.in);
}

int conn_tunnel_can_read_upstream(const struct conn *c)
{
    return can_read(&c->puc, &c->up.in);
}

void conn_tunnel_begin(struct conn *c)
{
    c->state = CS_TUNNEL;
    if (!leg_plain(&c->cli) || !leg_plain(&c->up)) {
        c->pcu.none = c->puc.none = 1; /* splice only between plain sockets */
    }
    conn_arm(c, timeouts.idle);
}

/* Socket to pipe.  Returns 0 when the direction has no pipe (the caller
 * reads into the buffer), 1 when the read event was taken. */
static int tunnel_read(struct conn *c, int fd, struct tunnel_pipe *p, unsigned *eof,
                       unsigned long long *count)
{
    if (c->state != CS_TUNNEL || p->none) {
        return 0;
    }
    if (p->r < 0 && pipe_take(p) != 0) {
        p->none = 1;
        if (loop_now() - warned_none >= TUNNEL_WARN_EVERY) {
            warned_none = loop_now();
            log_event(LOG_WARN, "FERRY-3021", NULL,
                      "no pipe for a tunnel (%s): it relays through its buffers",
                      strerror(errno));
        }
        return 0;
    }
    if (p->full || p->in >= p->cap) {
        return 1; /* a stale event: reading resumes once the pipe drains */
    }
    ssize_t n = splice(fd, NULL, p->w, NULL, p->cap - p->in, SPLICE_F_MOVE | SPLICE_F_NONBLOCK);
    if (n > 0) {
        p->in += (unsigned)n;
        if (count != NULL) {
            *count += (unsigned long long)n;
        }
        c->last_io = loop_now();
        if (p->in >= p->cap && !p->grow_tried) {
            pipe_grow(p);
        }
    } else if (n == 0) {
        *eof = 1;
    } else if (errno == EAGAIN || errno == EWOULDBLOCK) {
        /* The socket was readable, so the pipe had no free slot; with
         * an empty pipe the event was merely stale. */
        if (p->in > 0) {
            p->full = 1;
        }
    } else if (errno != EINTR) {
        *eof = 1; /* reset: nothing more will come */
    }
    return 1;
}

int conn_tunnel_read_client(struct conn *c)
{
    unsigned eof = 0;
    int took = tunnel_read(c, c->cli.fd, &c->pcu, &eof, &c->bytes_in);
    if (eof) {
        c->cli.eof = 1;
    }
    return took;
}

int conn_tunnel_read_upstream(struct conn *c)
{
    unsigned eof = 0;
    int took = tunnel_read(c, c->up.fd, &c->puc, &eof, NULL);
    if (eof) {
        c->up.eof = 1;
    }
    return took;
}

/* Pipe to socket: 0 ok or would block, -1 on a dead peer.  Any byte
 * taken out frees slots, so the read side may go on. */
static int splice_out(struct tunnel_pipe *p, int fd, unsigned long long *count)
{
    while (p->in > 0) {
        ssize_t n = splice(p->r, NULL, fd, NULL, p->in, SPLICE_F_MOVE | SPLICE_F_NONBLOCK);
        if (n > 0) {
            p->in -= (unsigned)n;
            p->full = 0;
            if (count != NULL) {
                *count += (unsigned long long)n;
            }
            continue;
        }
        if (n == -1 && (errno == EAGAIN || errno == EWOULDBLOCK || errno == EINTR)) {
            return 0;
        }
        return -1;
    }
    return 0;
}

/* Write src to a leg: 0 ok or would block, -1 on a dead peer. */
static int relay(struct buf *src, struct leg *to, unsigned long long *count)
{
    while (!buf_empty(src)) {
        ssize_t n = leg_write(to, src);
        if (n > 0) {
            if (count != NULL) {
                *count += (unsigned long long)n;
            }
            continue;
        }
        if (n == -1 && (errno == EAGAIN || errno == EWOULDBLOCK)) {
            return 0;
        }
        return -1;
    }
    return 0;
}

static void tunnel_end(struct conn *c, const char *why)
{
    conn_log_done(c, why);
    conn_close(c);
}

int conn_tunnel(struct conn *c)
{
    /* Client to upstream: earlier bytes (cli.in) first, then the pipe. */
    if (buf_empty(&c->up.out)) {
        if (relay(&c->cli.in, &c->up, NULL) < 0 ||
            (buf_empty(&c->cli.in) && splice_out(&c->pcu, c->up.fd, NULL) < 0)) {
            tunnel_end(c, "FERRY-3005");
            return -1;
        }
    }
    /* Upstream to client: a queued 200 / 101 head (cli.out) goes first. */
    if (buf_empty(&c->cli.out)) {
        if (relay(&c->up.in, &c->cli, &c->bytes_out) < 0 ||
            (buf_empty(&c->up.in) && splice_out(&c->puc, c->cli.fd, &c->bytes_out) < 0)) {
            tunnel_end(c, NULL);
            return -1;
        }
    }
    int cu_done = c->cli.eof && buf_empty(&c->cli.in) && buf_empty(&c->up.out) && c->pcu.in == 0;
    int uc_done = c->up.eof && buf_empty(&c->up.in) && buf_empty(&c->cli.out) &&
                  c->puc.in == 0;
    /* Both sides read to their end: nothing is left unread, so closing
     * sends a clean FIN each way without a shutdown first. */
    if (cu_done && uc_done) {
        tunnel_end(c, NULL);
        return -1;
    }
    if (cu_done && !c->up.shut) {
        leg_shutdown(&c->up);
        c->up.shut = 1;
    }
    if (uc_done && !c->cli.shut) {
        leg_shutdown(&c->cli);
        c->cli.shut = 1;
    }
    return 0;
}
