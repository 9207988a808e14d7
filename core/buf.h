/* buf.h - a bounded byte buffer: one allocation, lazily made, never grown. */
#ifndef FERRY_BUF_H
#define FERRY_BUF_H

#include <stddef.h>
#include <sys/types.h>

/* Bytes live in data[start, end); room is cap - end after compaction. */
struct buf {
    char  *data;  /* private: NULL until the first write */
    size_t cap;   /* ro: fixed capacity */
    size_t start; /* ro: first unread byte */
    size_t end;   /* ro: one past the last byte */
};

void   buf_init(struct buf *b, size_t cap);
/* Give pooled blocks back to the allocator (at exit, for leak checks). */
void   buf_pool_drain(void);
/* Blocks buffers hold now; the most held since the last rebase. */
size_t buf_blocks_out(void);
size_t buf_blocks_peak(void);
void   buf_blocks_rebase(void);
void   buf_free(struct buf *b);
/* Drop the allocation when empty, so idle connections stay small. */
void   buf_trim(struct buf *b);

static inline size_t buf_len(const struct buf *b) { return b->end - b->start; }
/* An unallocated buffer is empty; its head is a valid pointer, never
 * NULL + 0 (undefined behaviour, reported by clang's UBSan). */
static inline char *buf_head(const struct buf *b)
{
    static char none[1];
    return b->data != NULL ? b->data + b->start : none;
}
static inline int    buf_empty(const struct buf *b) { return b->end == b->start; }
/* Free space, counting what compaction would reclaim. */
static inline size_t buf_room(const struct buf *b) { return b->cap - buf_len(b); }

void   buf_consume(struct buf *b, size_t n);
/* Append up to n bytes; returns how many fitted. */
size_t buf_append(struct buf *b, const void *p, size_t n);
/* Make room contiguous at the tail; returns the tail pointer and its size. */
char  *buf_tail(struct buf *b, size_t *room);
void   buf_commit(struct buf *b, size_t n);
/* read(2) into the buffer: >0 bytes, 0 EOF, -1 error (errno; EAGAIN included). */
ssize_t buf_read_fd(struct buf *b, int fd);
/* write(2) from the buffer: bytes written, or -1 (errno). */
ssize_t buf_write_fd(struct buf *b, int fd);

#endif
