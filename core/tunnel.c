/* tunnel.c - opaque relay for CONNECT and upgraded connections.
 *
 * Bytes that arrived before the tunnel opened sit in cin / uin and go
 * out first.  After that each direction runs socket -> pipe -> socket
 * with splice(2), so payload never enters user space; where pipes are
 * not available the buffers carry everything.  A side is read only
 * while its pipe (or buffer) has room: backpressure.  EOF on one side
 * becomes a half-close on the other once its bytes are out. */
#include "conn.h"
#include "listener.h"
#include "log.h"
#include "metrics.h"
#include "proxy.h"

#include <errno.h>
#include <fcntl.h>
#include <sys/socket.h>
#include <unistd.h>

static void close_pipe(int p[2])
{
    for (int i = 0; i < 2; i++) {
        if (p[i] >= 0) {
            close(p[i]);
            p[i] = -1;
        }
    }
}

void conn_tunnel_close_pipes(struct conn *c)
{
    close_pipe(c->pipe_cu);
    close_pipe(c->pipe_uc);
    c->in_cu = c->in_uc = 0;
}

int conn_tunnel_spliced(const struct conn *c)
{
    return c->pipe_cu[0] >= 0;
}

static int open_pipe(int p[2])
{
    if (pipe2(p, O_NONBLOCK | O_CLOEXEC) == -1) {
        p[0] = p[1] = -1;
        return -1;
    }
    /* A larger pipe means fewer wake-ups per byte; failure is harmless. */
    (void)fcntl(p[1], F_SETPIPE_SZ, TUNNEL_PIPE_SIZE);
    return 0;
}

void conn_tunnel_begin(struct conn *c)
{
    c->state = CS_TUNNEL;
    if (open_pipe(c->pipe_cu) == 0 && open_pipe(c->pipe_uc) != 0) {
        close_pipe(c->pipe_cu); /* short of descriptors: use the buffers */
    }
    conn_arm(c, timeouts.idle);
}

/* Socket to pipe: >0 moved, 0 EOF, -1 nothing now (EAGAIN), -2 error. */
static ssize_t splice_in(int fd, int pipe_w, size_t room)
{
    ssize_t n = splice(fd, NULL, pipe_w, NULL, room, SPLICE_F_MOVE | SPLICE_F_NONBLOCK);
    if (n >= 0) {
        return n;
    }
    return (errno == EAGAIN || errno == EWOULDBLOCK || errno == EINTR) ? -1 : -2;
}

int conn_tunnel_read_client(struct conn *c)
{
    if (c->state != CS_TUNNEL || !conn_tunnel_spliced(c)) {
        return 0;
    }
    if (c->in_cu >= TUNNEL_PIPE_SIZE) {
        return 1;
    }
    ssize_t n = splice_in(c->cfd, c->pipe_cu[1], TUNNEL_PIPE_SIZE - c->in_cu);
    if (n > 0) {
        c->in_cu += (size_t)n;
        c->bytes_in += (unsigned long long)n;
        c->last_io = loop_now();
    } else if (n == 0 || n == -2) {
        c->client_eof = 1;
    }
    return 1;
}

int conn_tunnel_read_upstream(struct conn *c)
{
    if (c->state != CS_TUNNEL || !conn_tunnel_spliced(c)) {
        return 0;
    }
    if (c->in_uc >= TUNNEL_PIPE_SIZE) {
        return 1;
    }
    ssize_t n = splice_in(c->ufd, c->pipe_uc[1], TUNNEL_PIPE_SIZE - c->in_uc);
    if (n > 0) {
        c->in_uc += (size_t)n;
        c->last_io = loop_now();
    } else if (n == 0 || n == -2) {
        c->upstream_eof = 1;
    }
    return 1;
}

/* Pipe to socket: 0 ok or would block, -1 on a dead peer. */
static int splice_out(int pipe_r, size_t *in_pipe, int fd, unsigned long long *count)
{
    while (*in_pipe > 0) {
        ssize_t n = splice(pipe_r, NULL, fd, NULL, *in_pipe, SPLICE_F_MOVE | SPLICE_F_NONBLOCK);
        if (n > 0) {
            *in_pipe -= (size_t)n;
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

/* Write src to fd: 0 ok or would block, -1 on a dead peer. */
static int relay(struct buf *src, int fd, unsigned long long *count)
{
    while (!buf_empty(src)) {
        ssize_t n = buf_write_fd(src, fd);
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
    struct log_ctx ctx = { .cid = c->cid, .listener = c->l->name, .proxy = c->proxy != NULL ? c->proxy->display : NULL };
    log_access(&ctx, c->client, c->method, c->host, c->port, c->path, c->status,
               c->bytes_in, c->bytes_out, (loop_now() - c->t_start) * 1000.0,
               (int)c->attempt + 1, why);
    metrics_request_end(c, why);
    conn_close(c);
}

int conn_tunnel(struct conn *c)
{
    /* Client to upstream: earlier bytes (cin) first, then the pipe. */
    if (buf_empty(&c->uout)) {
        if (relay(&c->cin, c->ufd, NULL) < 0 ||
            (buf_empty(&c->cin) && splice_out(c->pipe_cu[0], &c->in_cu, c->ufd, NULL) < 0)) {
            tunnel_end(c, "FERRY-3005");
            return -1;
        }
    }
    /* Upstream to client: a queued 200 / 101 head (cout) goes first. */
    if (buf_empty(&c->cout)) {
        if (relay(&c->uin, c->cfd, &c->bytes_out) < 0 ||
            (buf_empty(&c->uin) &&
             splice_out(c->pipe_uc[0], &c->in_uc, c->cfd, &c->bytes_out) < 0)) {
            tunnel_end(c, NULL);
            return -1;
        }
    }
    int cu_empty = buf_empty(&c->cin) && buf_empty(&c->uout) && c->in_cu == 0;
    int uc_empty = buf_empty(&c->uin) && buf_empty(&c->cout) && c->in_uc == 0;
    if (c->client_eof && cu_empty && !c->shut_u) {
        shutdown(c->ufd, SHUT_WR);
        c->shut_u = 1;
    }
    if (c->upstream_eof && uc_empty && !c->shut_c) {
        shutdown(c->cfd, SHUT_WR);
        c->shut_c = 1;
    }
    if (c->shut_u && c->shut_c) {
        tunnel_end(c, NULL);
        return -1;
    }
    return 0;
}
