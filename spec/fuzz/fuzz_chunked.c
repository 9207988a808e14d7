/* fuzz_chunked.c - message bodies through http_body (core/http.c), fed
 * whole, byte by byte and split at random points, against the strict
 * chunked reader of ref_http.c.
 *
 * Input: byte 0 picks the message: bit 0 a response (else a request),
 * bit 1 Content-Length framing with the length in byte 1 (else chunked),
 * the other bits seed the random split.  The rest is the body.
 *
 * abort() when
 *  - the three feedings disagree on error, bytes consumed or the end;
 *  - http_body consumes less than it was given without ending the
 *    message (the relay relies on "all of it, or up to the end");
 *  - ferry ends a chunked body anywhere but where the strict reader
 *    does, or accepts a byte at or past the one the strict reader refuses
 *    (that byte would already be relayed upstream);
 *  - a Content-Length body ends anywhere but at its length;
 *  - a body cut short by EOF counts as complete. */
#include "../../core/http.h"
#include "ref_http.h"

#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define FAIL(...)                                                                            \
    do {                                                                                     \
        fprintf(stderr, "fuzz_chunked: FINDING: " __VA_ARGS__);                              \
        fputc('\n', stderr);                                                                 \
        abort();                                                                             \
    } while (0)

struct outcome {
    int err;       /* http_body returned -1 */
    size_t err_at; /* start of the piece that failed (the byte, fed byte by byte) */
    size_t used;   /* bytes consumed before the end or the error */
    int done;      /* msg_done */
};

static struct http_msg m;
static char head[256];

static void start(int response, int cl, unsigned len)
{
    size_t hl;
    if (response) {
        hl = (size_t)snprintf(head, sizeof(head), cl ? "HTTP/1.1 200 OK\r\nContent-Length: %u\r\n\r\n"
                                                      : "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n",
                              len);
        if (http_parse_response(&m, head, hl, 0) != HTTP_PARSE_OK) {
            FAIL("the fixed response head does not parse");
        }
    } else {
        hl = (size_t)snprintf(head, sizeof(head),
                              cl ? "POST /up HTTP/1.1\r\nHost: a\r\nContent-Length: %u\r\n\r\n"
                                 : "POST /up HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n",
                              len);
        if (http_parse_request(&m, head, hl) != HTTP_PARSE_OK) {
            FAIL("the fixed request head does not parse");
        }
    }
}

static uint64_t rng;

static size_t next_piece(size_t left)
{
    rng ^= rng << 13;
    rng ^= rng >> 7;
    rng ^= rng << 17;
    size_t k = (size_t)(rng % 17) + 1;
    if (rng & 0x100) {
        k = (size_t)(rng % 1024) + 1;
    }
    return k < left ? k : left;
}

/* piece: 0 all at once, 1 byte by byte, 2 random pieces. */
static struct outcome feed(const char *p, size_t n, int piece)
{
    struct outcome o = { 0, 0, 0, 0 };
    size_t pos = 0;
    while (pos < n && !m.msg_done) {
        size_t k = piece == 0 ? n - pos : piece == 1 ? 1 : next_piece(n - pos);
        long r = http_body(&m, p + pos, k);
        if (r < 0) {
            o.err = 1;
            o.err_at = pos;
            break;
        }
        if ((size_t)r > k) {
            FAIL("http_body consumed %ld of %zu bytes", r, k);
        }
        pos += (size_t)r;
        if ((size_t)r < k && !m.msg_done) {
            FAIL("http_body consumed %ld of %zu bytes without ending the message", r, k);
        }
    }
    o.used = pos;
    o.done = m.msg_done;
    return o;
}

static void same(const char *what, struct outcome a, struct outcome b)
{
    if (a.err != b.err || (!a.err && (a.used != b.used || a.done != b.done))) {
        FAIL("whole and %s feeding differ: err %d/%d, used %zu/%zu, done %d/%d", what, a.err,
             b.err, a.used, b.used, a.done, b.done);
    }
}

static void check_chunked(const char *p, size_t n, struct outcome o)
{
    struct ref_chunked r;
    ref_chunked_init(&r);
    size_t i = 0;
    int res = REF_CHUNK_MORE;
    for (; i < n; i++) {
        res = ref_chunked_byte(&r, (unsigned char)p[i]);
        if (res != REF_CHUNK_MORE) {
            break;
        }
    }
    if (res == REF_CHUNK_HUGE) {
        return; /* no input reaches the end of such a chunk */
    }
    if (res == REF_CHUNK_BAD) {
        /* Byte i is refused: ferry must not have taken it. */
        size_t taken = o.err ? o.err_at : o.used;
        if (o.done && o.used <= i) {
            FAIL("ferry ends the chunked body at %zu, the strict reader wants more", o.used);
        }
        if (taken > i) {
            FAIL("ferry takes a chunked-body byte the strict reader refuses: %s; byte %zu, "
                 "0x%02x", r.why, i, (unsigned char)p[i]);
        }
        return;
    }
    if (res == REF_CHUNK_DONE) {
        size_t end = i + 1;
        if (o.err) {
            if (o.err_at >= end) {
                FAIL("ferry fails at byte %zu after the body's end at %zu", o.err_at, end);
            }
            return; /* stricter than the reference: safe */
        }
        if (!o.done || o.used != end) {
            FAIL("the strict reader ends the chunked body at %zu, ferry %s %zu", end,
                 o.done ? "at" : "reads on past", o.used);
        }
        return;
    }
    /* The strict reader wants more. */
    if (o.done) {
        FAIL("ferry ends the chunked body at %zu, the strict reader wants more", o.used);
    }
}

static int one_input(const uint8_t *data, size_t size)
{
    if (size < 2) {
        return 0;
    }
    int response = data[0] & 1;
    int cl = (data[0] >> 1) & 1;
    unsigned len = data[1];
    const char *body = (const char *)data + 2;
    size_t n = size - 2;

    start(response, cl, len);
    if (!m.has_body) {
        return 0; /* Content-Length: 0 */
    }
    struct outcome whole = feed(body, n, 0);
    start(response, cl, len);
    struct outcome bytes = feed(body, n, 1);
    int eof_done = !bytes.err && !bytes.done ? http_body_eof(&m) : 0;
    start(response, cl, len);
    rng = ((uint64_t)data[0] << 32) ^ (uint64_t)n ^ 0x9E3779B97F4A7C15ull;
    struct outcome pieces = feed(body, n, 2);

    same("byte-by-byte", whole, bytes);
    same("random-piece", whole, pieces);
    if (eof_done) {
        FAIL("EOF after %zu of an unfinished body counts as its end", bytes.used);
    }
    if (cl) {
        size_t end = len;
        if (bytes.err || bytes.done != (n >= end) || bytes.used != (n >= end ? end : n)) {
            FAIL("Content-Length %u body of %zu bytes: err %d, done %d, used %zu", len, n,
                 bytes.err, bytes.done, bytes.used);
        }
        return 0;
    }
    check_chunked(body, n, bytes);
    return 0;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    one_input(data, size);
    http_msg_release(&m); /* the field table goes back after every input */
    return 0;
}
