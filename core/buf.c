/* buf.c - bounded byte buffers for sockets. */
#include "buf.h"

#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

/* Released blocks of the common size wait here for the next user, so
 * a keep-alive connection that trims its buffers between requests does
 * not cost a malloc/free (and a brk) per request.  Bounded: beyond
 * POOL_MAX blocks, memory goes back to the allocator. */
#define POOL_BLOCK 16384
#define POOL_MAX 64

static void *pool[POOL_MAX];
static int npool;

/* Blocks held by buffers now, and the most since buf_blocks_rebase. */
static size_t nout, nout_peak;

static char *block_get(size_t cap)
{
    char *p = cap == POOL_BLOCK && npool > 0 ? pool[--npool] : malloc(cap);
    if (p != NULL && ++nout > nout_peak) {
        nout_peak = nout;
    }
    return p;
}

static void block_put(char *p, size_t cap)
{
    nout--;
    if (cap == POOL_BLOCK && npool < POOL_MAX) {
        pool[npool++] = p;
        return;
    }
    free(p);
}

size_t buf_blocks_out(void)
{
    return nout;
}

size_t buf_blocks_peak(void)
{
    return nout_peak;
}

void buf_blocks_rebase(void)
{
    nout_peak = nout;
}

void buf_pool_drain(void)
{
    while (npool > 0) {
        free(pool[--npool]);
    }
}

void buf_init(struct buf *b, size_t cap)
{
    b->data = NULL;
    b->cap = cap;
    b->start = 0;
    b->end = 0;
}

void buf_free(struct buf *b)
{
    if (b->data != NULL) {
        block_put(b->data, b->cap);
    }
    b->data = NULL;
    b->start = b->end = 0;
}

void buf_trim(struct buf *b)
{
    if (b->data != NULL && buf_empty(b)) {
        buf_free(b);
    }
}

void buf_consume(struct buf *b, size_t n)
{
    b->start += n;
    if (b->start >= b->end) {
        b->start = b->end = 0;
    }
}

char *buf_tail(struct buf *b, size_t *room)
{
    if (b->data == NULL) {
        b->data = block_get(b->cap);
        if (b->data == NULL) {
            *room = 0;
            return NULL;
        }
    }
    /* Compact only when the tail is short: moving bytes costs, so
     * keep appending in place while there is a useful amount of room. */
    if (b->start > 0 && b->cap - b->end < b->cap / 4) {
        memmove(b->data, b->data + b->start, buf_len(b));
        b->end -= b->start;
        b->start = 0;
    }
    *room = b->cap - b->end;
    return b->data + b->end;
}

void buf_commit(struct buf *b, size_t n)
{
    b->end += n;
}

size_t buf_append(struct buf *b, const void *p, size_t n)
{
    size_t room;
    char *t = buf_tail(b, &room);
    if (t == NULL) {
        return 0;
    }
    if (room < n && b->start > 0) {
        memmove(b->data, b->data + b->start, buf_len(b));
        b->end -= b->start;
        b->start = 0;
        t = b->data + b->end;
        room = b->cap - b->end;
    }
    if (n > room) {
        n = room;
    }
    memcpy(t, p, n);
    b->end += n;
    return n;
}

ssize_t buf_read_fd(struct buf *b, int fd)
{
    size_t room;
    char *t = buf_tail(b, &room);
    if (t == NULL) {
        errno = ENOMEM;
        return -1;
    }
    if (room == 0) {
        errno = ENOBUFS;
        return -1;
    }
    ssize_t n;
    do {
        n = read(fd, t, room);
    } while (n == -1 && errno == EINTR);
    if (n > 0) {
        b->end += (size_t)n;
    }
    return n;
}

ssize_t buf_write_fd(struct buf *b, int fd)
{
    if (buf_empty(b)) {
        return 0;
    }
    ssize_t n;
    do {
        n = write(fd, buf_head(b), buf_len(b));
    } while (n == -1 && errno == EINTR);
    if (n > 0) {
        buf_consume(b, (size_t)n);
    }
    return n;
}
