/* fuzz_connect.c - an HTTP proxy's answer to CONNECT (core/up_http.c),
 * fed whole, byte by byte and in random pieces.
 *
 * Input: byte 0 seeds the random pieces; the rest is what the upstream
 * proxy sends after ferry's CONNECT.  up_http.start queues the CONNECT,
 * then up_http.input runs after every piece, as the event loop would.
 *
 * abort() when
 *  - the three feedings disagree (result, failure kind and code, bytes
 *    taken as the head);
 *  - a tunnel opens on an answer whose status line a strict reader does
 *    not find, or whose status is not 2xx;
 *  - the bytes left for the tunnel are not exactly those after the head;
 *  - the CONNECT ferry wrote is not one well-formed head. */
#include "../../core/conn.h"
#include "../../core/proxy.h"
#include "../../core/upstream.h"
#include "ref_http.h"

#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define FAIL(...)                                                                            \
    do {                                                                                     \
        fprintf(stderr, "fuzz_connect: FINDING: " __VA_ARGS__);                              \
        fputc('\n', stderr);                                                                 \
        abort();                                                                             \
    } while (0)

static struct proxy px;

struct outcome {
    int result;        /* enum up_result */
    int kind, err;     /* fail_kind, fail_err on UP_FAIL */
    size_t head;       /* bytes taken as the answer's head (UP_DONE) */
    size_t left;       /* bytes left in up.in for the tunnel (UP_DONE) */
};

static uint64_t rng;

static size_t next_piece(size_t left)
{
    rng ^= rng << 13;
    rng ^= rng >> 7;
    rng ^= rng << 17;
    size_t k = (rng & 0x100) ? (size_t)(rng % 2048) + 1 : (size_t)(rng % 9) + 1;
    return k < left ? k : left;
}

/* A bare leg and hop, as a probe drives them. */
struct attempt {
    struct leg g;
    struct hop h;
    struct http_msg resp;
};

static struct attempt *new_attempt(void)
{
    struct attempt *a = calloc(1, sizeof(*a));
    if (a == NULL) {
        abort();
    }
    a->g.fd = -1;
    buf_init(&a->g.in, CONN_BUF_SIZE);
    buf_init(&a->g.out, CONN_BUF_SIZE);
    a->h.leg = &a->g;
    a->h.proxy = &px;
    a->h.host = "example.com";
    a->h.port = 443;
    a->h.is_connect = 1;
    a->h.resp = &a->resp;
    a->h.ops = &up_http;
    return a;
}

static void free_attempt(struct attempt *a)
{
    http_msg_release(&a->resp);
    buf_free(&a->g.in);
    buf_free(&a->g.out);
    free(a);
}

static void check_request(struct leg *g)
{
    static struct ref_head h;
    const char *p = buf_head(&g->out);
    size_t n = buf_len(&g->out);
    const char *why = ref_parse_request(&h, p, n);
    if (why != NULL || !ref_ieq(h.method, h.mlen, "CONNECT")) {
        FAIL("the CONNECT ferry writes is not one well-formed head: %s", why ? why : "method");
    }
}

/* piece: 0 all at once, 1 byte by byte, 2 random pieces. */
static struct outcome run(const char *p, size_t n, int piece, int check)
{
    struct outcome o = { UP_AGAIN, 0, 0, 0, 0 };
    struct attempt *a = new_attempt();
    if (up_http.start(&a->h) != UP_AGAIN) {
        FAIL("up_http.start did not wait for an answer");
    }
    if (check) {
        check_request(&a->g);
    }
    size_t pos = 0;
    do {
        size_t k = piece == 0 ? n - pos : piece == 1 ? 1 : next_piece(n - pos);
        if (k > n - pos) {
            k = n - pos; /* no input at all: input() runs once on an empty buffer */
        }
        size_t got = k > 0 ? buf_append(&a->g.in, p + pos, k) : 0;
        pos += got;
        o.result = up_http.input(&a->h);
        if (got < k && o.result == UP_AGAIN) {
            FAIL("the buffer is full, yet up_http.input waits for more");
        }
        if (got < k) {
            break;
        }
    } while (o.result == UP_AGAIN && pos < n);
    if (o.result == UP_FAIL) {
        o.kind = (int)a->h.fail_kind;
        o.err = (int)a->h.fail_err;
    } else if (o.result == UP_DONE) {
        o.left = buf_len(&a->g.in);
        o.head = pos - o.left;
        if (check && memcmp(buf_head(&a->g.in), p + o.head, o.left) != 0) {
            FAIL("the tunnel's first bytes are not those after the answer's head");
        }
    }
    free_attempt(a);
    return o;
}

static void same(const char *what, struct outcome a, struct outcome b)
{
    if (a.result != b.result || a.kind != b.kind || a.err != b.err || a.head != b.head) {
        FAIL("whole and %s feeding differ: result %d/%d, kind %d/%d, err %d/%d, head %zu/%zu",
             what, a.result, b.result, a.kind, b.kind, a.err, b.err, a.head, b.head);
    }
}

int LLVMFuzzerInitialize(int *argc, char ***argv)
{
    (void)argc;
    (void)argv;
    px.pub.scheme = FERRY_SCHEME_HTTP;
    px.auth_header = "Proxy-Authorization: Basic Zm9vOmJhcg==\r\n";
    px.extra_headers = "X-Fuzz: 1\r\n";
    px.display = "http://fuzz-proxy:8080";
    px.label = "fuzz";
    return 0;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (size < 1) {
        return 0;
    }
    const char *p = (const char *)data + 1;
    size_t n = size - 1;
    struct outcome whole = run(p, n, 0, 1);
    struct outcome bytes = run(p, n, 1, 0);
    rng = ((uint64_t)data[0] << 40) ^ (uint64_t)n ^ 0x9E3779B97F4A7C15ull;
    struct outcome pieces = run(p, n, 2, 0);
    same("byte-by-byte", whole, bytes);
    same("random-piece", whole, pieces);
    if (whole.result == UP_DONE) {
        int st = ref_status_line(p, n);
        if (st < 200 || st > 299) {
            size_t line = 0;
            while (line < n && p[line] != '\r' && p[line] != '\n') {
                line++;
            }
            FAIL("a tunnel opens on an answer with no 2xx status line (strictly %d): \"%.*s\"",
                 st, (int)(line < 80 ? line : 80), p);
        }
    }
    return 0;
}
