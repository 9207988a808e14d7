/* tunnel.c - opaque relay for CONNECT and upgraded connections.
 *
 * Each direction writes straight from the reading side's buffer (cin
 * to the upstream, uin to the client), so bytes are copied once.  A
 * side is read only while its buffer has room: backpressure.  EOF on
 * one side becomes a half-close on the other once its bytes are out. */
#include "conn.h"
#include "listener.h"
#include "log.h"

#include <errno.h>
#include <sys/socket.h>
#include <unistd.h>

void conn_tunnel_begin(struct conn *c)
{
    c->state = CS_TUNNEL;
    conn_arm(c, timeouts.idle);
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
    struct log_ctx ctx = { c->cid, c->l->name, NULL, NULL };
    log_access(&ctx, c->client, c->method, c->host, c->port, c->path, c->status,
               c->bytes_in, c->bytes_out, (loop_now() - c->t_start) * 1000.0,
               (int)c->attempt + 1, why);
    conn_close(c);
}

int conn_tunnel(struct conn *c)
{
    /* Bytes queued before the tunnel opened (a 200 or 101 head) go first. */
    if (buf_empty(&c->uout) && relay(&c->cin, c->ufd, NULL) < 0) {
        tunnel_end(c, "FERRY-3005");
        return -1;
    }
    if (buf_empty(&c->cout) && relay(&c->uin, c->cfd, &c->bytes_out) < 0) {
        tunnel_end(c, NULL);
        return -1;
    }
    if (c->client_eof && buf_empty(&c->cin) && buf_empty(&c->uout) && !c->shut_u) {
        shutdown(c->ufd, SHUT_WR);
        c->shut_u = 1;
    }
    if (c->upstream_eof && buf_empty(&c->uin) && buf_empty(&c->cout) && !c->shut_c) {
        shutdown(c->cfd, SHUT_WR);
        c->shut_c = 1;
    }
    if (c->shut_u && c->shut_c) {
        tunnel_end(c, NULL);
        return -1;
    }
    return 0;
}
