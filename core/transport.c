/* transport.c - the plain transport, and the leg helpers every caller
 * uses instead of read(2)/write(2) on a connection's sockets. */
#include "transport.h"
#include "buf.h"
#include "conn.h"

#include <errno.h>
#include <sys/socket.h>
#include <unistd.h>

static ssize_t plain_read(struct leg *lg, void *p, size_t n)
{
    ssize_t r;
    do {
        r = read(lg->fd, p, n);
    } while (r == -1 && errno == EINTR);
    return r;
}

static ssize_t plain_write(struct leg *lg, const void *p, size_t n)
{
    ssize_t r;
    do {
        r = write(lg->fd, p, n);
    } while (r == -1 && errno == EINTR);
    return r;
}

static enum tr_hs plain_handshake(struct leg *lg)
{
    (void)lg;
    return TR_HS_DONE;
}

static void plain_shutdown(struct leg *lg)
{
    shutdown(lg->fd, SHUT_WR);
}

static void plain_free(struct leg *lg)
{
    (void)lg;
}

static int plain_events(const struct leg *lg, int want)
{
    (void)lg;
    return want;
}

static int plain_pending(const struct leg *lg)
{
    (void)lg;
    return 0;
}

static const char *plain_error(const struct leg *lg)
{
    (void)lg;
    return "";
}

const struct transport_ops transport_plain = {
    "plain", plain_read, plain_write, plain_handshake, plain_shutdown, plain_free,
    plain_events, plain_pending, plain_error,
};

const struct transport_ops *leg_tr(const struct leg *lg)
{
    return lg->tr != NULL ? lg->tr : &transport_plain;
}

int leg_plain(const struct leg *lg)
{
    return leg_tr(lg) == &transport_plain;
}

ssize_t leg_read(struct leg *lg, struct buf *b)
{
    return leg_read_upto(lg, b, 0);
}

ssize_t leg_read_upto(struct leg *lg, struct buf *b, size_t max)
{
    size_t room;
    char *t = buf_tail(b, &room);
    if (t == NULL) {
        errno = ENOMEM;
        return -1;
    }
    if (max > 0 && room > max) {
        room = max;
    }
    if (room == 0) {
        errno = ENOBUFS;
        return -1;
    }
    const struct transport_ops *tr = leg_tr(lg);
    ssize_t n = tr->read(lg, t, room);
    if (n <= 0) {
        return n;
    }
    b->end += (size_t)n;
    /* TLS hands out one record per read: take what it already decrypted
     * while there is room, since no socket event will announce it. */
    ssize_t total = n;
    while ((size_t)total < room && tr->pending(lg)) {
        n = tr->read(lg, t + total, room - (size_t)total);
        if (n <= 0) {
            break; /* an end or error shows again on the next read */
        }
        b->end += (size_t)n;
        total += n;
    }
    return total;
}

ssize_t leg_write(struct leg *lg, struct buf *b)
{
    if (buf_empty(b)) {
        return 0;
    }
    ssize_t n = leg_tr(lg)->write(lg, buf_head(b), buf_len(b));
    if (n > 0) {
        buf_consume(b, (size_t)n);
    }
    return n;
}

void leg_shutdown(struct leg *lg)
{
    leg_tr(lg)->shutdown(lg);
}

void leg_tr_free(struct leg *lg)
{
    leg_tr(lg)->free(lg);
    lg->tr = NULL;
    lg->tls = NULL;
}

int leg_events(const struct leg *lg, int want)
{
    return leg_tr(lg)->events(lg, want);
}

int leg_pending(const struct leg *lg)
{
    return leg_tr(lg)->pending(lg);
}
