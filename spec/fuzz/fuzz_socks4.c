/* fuzz_socks4.c - a SOCKS4 proxy's reply (core/up_socks4.c), fed whole,
 * byte by byte and in random pieces, against a reading of the SOCKS4
 * protocol written here.
 *
 * Input: byte 0: bit 0 picks socks4a (else socks4), bit 1 gives the proxy
 * a user id, the rest seeds the pieces; byte 1 is the length of the
 * destination host that follows (socks4 gets an IPv4 literal when the
 * host is not one: its lookups are not fuzzed); the rest is what the
 * proxy answers.
 *
 * abort() when
 *  - the three feedings disagree (result, failure, bytes taken);
 *  - ferry opens the tunnel on anything but an 8-byte reply with VN 0
 *    (or 4) and CD 90, takes another number of bytes, fails where the
 *    reply grants, or waits once the reply is complete;
 *  - a refusal about the destination (91) is charged to the proxy, or a
 *    granted request's first tunnel bytes are not those after the reply;
 *  - what ferry sent is not one request naming the port, the address (or
 *    0.0.0.x and the name), and the user id. */
#include "../../core/conn.h"
#include "../../core/proxy.h"
#include "../../core/resolve.h"
#include "../../core/upstream.h"

#include <arpa/inet.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define FAIL(...)                                                                            \
    do {                                                                                     \
        fprintf(stderr, "fuzz_socks4: FINDING: " __VA_ARGS__);                               \
        fputc('\n', stderr);                                                                 \
        abort();                                                                             \
    } while (0)

/* up_socks4.c asks the resolver only for names; the harness gives it
 * IPv4 and IPv6 literals for socks4, and these are never reached. */
int resolve_cached(const char *host, int port, struct sockaddr_storage *ss, socklen_t *len)
{
    (void)host;
    (void)port;
    (void)ss;
    (void)len;
    FAIL("socks4 looked up a literal");
}

struct resolve_req *resolve_start(const char *host, int port, resolve_cb cb, void *arg)
{
    (void)host;
    (void)port;
    (void)cb;
    (void)arg;
    FAIL("socks4 looked up a literal");
}

void resolve_cancel(struct resolve_req *r)
{
    (void)r;
}

static struct proxy px;
static char host[HOST_MAX_LEN + 1];

struct outcome {
    int result;    /* enum up_result */
    int kind, err; /* on UP_FAIL */
    int target;    /* fail_target on UP_FAIL */
    size_t taken;  /* bytes consumed (UP_DONE) */
};

static uint64_t rng;

static size_t next_piece(size_t left)
{
    rng ^= rng << 13;
    rng ^= rng >> 7;
    rng ^= rng << 17;
    size_t k = (size_t)(rng % 5) + 1;
    return k < left ? k : left;
}

static int is_v6(const char *h)
{
    struct in6_addr a6;
    return inet_pton(AF_INET6, h, &a6) == 1;
}

/* What ferry sent: VN 4, CD 1, port 443, the address or 0.0.0.x + name, the user id. */
static void check_sent(struct leg *g, int s4a)
{
    const unsigned char *s = (const unsigned char *)buf_head(&g->out);
    size_t n = buf_len(&g->out);
    unsigned char want[8 + 256 + HOST_MAX_LEN + 2];
    size_t w = 0;
    want[w++] = 4;
    want[w++] = 1;
    want[w++] = 443 >> 8;
    want[w++] = 443 & 0xff;
    struct in_addr a4;
    int literal = inet_pton(AF_INET, host, &a4) == 1;
    if (literal) {
        memcpy(want + w, &a4, 4);
    } else {
        memcpy(want + w, "\0\0\0\1", 4);
    }
    w += 4;
    if (px.user != NULL) {
        memcpy(want + w, px.user, strlen(px.user));
        w += strlen(px.user);
    }
    want[w++] = 0;
    if (!literal && s4a) {
        memcpy(want + w, host, strlen(host));
        w += strlen(host);
        want[w++] = 0;
    }
    if (n != w || memcmp(s, want, w) != 0) {
        FAIL("the SOCKS4 request does not name %s:443 (%zu bytes, %zu expected)", host, n, w);
    }
}

static struct outcome run(const unsigned char *p, size_t n, int piece, int s4a, int check)
{
    struct outcome o = { UP_AGAIN, 0, 0, 0, 0 };
    const struct upstream_ops *ops = s4a ? &up_socks4a : &up_socks4;
    struct leg g;
    struct hop h;
    memset(&g, 0, sizeof(g));
    memset(&h, 0, sizeof(h));
    g.fd = -1;
    buf_init(&g.in, CONN_BUF_SIZE);
    buf_init(&g.out, CONN_BUF_SIZE);
    h.leg = &g;
    h.proxy = &px;
    h.host = host;
    h.port = 443;
    h.is_connect = 1;
    h.ops = ops;
    int r = ops->start(&h);
    if (is_v6(host)) {
        if (r != UP_FAIL || h.fail_err != FERR_SOCKS4_NO_IPV4 || !h.fail_target) {
            FAIL("an IPv6 destination is not refused as FERRY-3050 about the destination");
        }
        o.result = UP_FAIL;
        o.kind = (int)h.fail_kind;
        o.err = (int)h.fail_err;
        o.target = 1;
        buf_free(&g.in);
        buf_free(&g.out);
        return o;
    }
    if (r != UP_AGAIN) {
        FAIL("start did not wait for the reply");
    }
    if (check) {
        check_sent(&g, s4a);
    }
    size_t pos = 0;
    while (pos < n && o.result == UP_AGAIN) {
        size_t k = piece == 0 ? n - pos : piece == 1 ? 1 : next_piece(n - pos);
        size_t got = buf_append(&g.in, p + pos, k);
        pos += got;
        o.result = ops->input(&h);
        if (got < k) {
            break;
        }
    }
    if (o.result == UP_FAIL) {
        o.kind = (int)h.fail_kind;
        o.err = (int)h.fail_err;
        o.target = h.fail_target;
    } else if (o.result == UP_DONE) {
        o.taken = pos - buf_len(&g.in);
        if (check && memcmp(buf_head(&g.in), p + o.taken, buf_len(&g.in)) != 0) {
            FAIL("the tunnel's first bytes are not those after the reply");
        }
    }
    if (ops->fini != NULL) {
        ops->fini(&h);
    }
    buf_free(&g.in);
    buf_free(&g.out);
    return o;
}

static void same(const char *what, struct outcome a, struct outcome b)
{
    if (a.result != b.result || a.kind != b.kind || a.err != b.err || a.taken != b.taken ||
        a.target != b.target) {
        FAIL("whole and %s feeding differ: result %d/%d, kind %d/%d, err %d/%d, taken %zu/%zu",
             what, a.result, b.result, a.kind, b.kind, a.err, b.err, a.taken, b.taken);
    }
}

int LLVMFuzzerInitialize(int *argc, char ***argv)
{
    (void)argc;
    (void)argv;
    px.pub.scheme = FERRY_SCHEME_SOCKS4;
    px.display = "socks4://fuzz-proxy:1080";
    px.label = "fuzz";
    return 0;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (size < 2 || (size_t)data[1] > size - 2) {
        return 0;
    }
    int s4a = data[0] & 1;
    px.user = (data[0] & 2) ? "fuzzuser" : NULL;
    size_t hl = data[1];
    memset(host, 0, sizeof(host));
    memcpy(host, data + 2, hl);
    struct in_addr a4;
    if (host[0] == '\0' || (!s4a && inet_pton(AF_INET, host, &a4) != 1 && !is_v6(host))) {
        snprintf(host, sizeof(host), "192.0.2.7");
    }
    const unsigned char *p = data + 2 + hl;
    size_t n = size - 2 - hl;

    struct outcome whole = run(p, n, 0, s4a, 1);
    struct outcome bytes = run(p, n, 1, s4a, 0);
    rng = ((uint64_t)data[0] << 40) ^ (uint64_t)n ^ 0x9E3779B97F4A7C15ull;
    struct outcome pieces = run(p, n, 2, s4a, 0);
    same("byte-by-byte", whole, bytes);
    same("random-piece", whole, pieces);
    if (is_v6(host)) {
        return 0;
    }
    /* The reading of SOCKS4 here: 8 bytes, VN 0 (or 4), CD 90 grants. */
    if (n < 8) {
        if (whole.result != UP_AGAIN) {
            FAIL("an incomplete reply (%zu bytes) is not waited for", n);
        }
        return 0;
    }
    int vn_ok = p[0] == 0 || p[0] == 4;
    if (vn_ok && p[1] == 90) {
        if (whole.result != UP_DONE || whole.taken != 8) {
            FAIL("a granted reply leaves ferry at %d after %zu bytes", whole.result, whole.taken);
        }
    } else if (whole.result != UP_FAIL) {
        FAIL("a reply with VN %u CD %u opens the tunnel", p[0], p[1]);
    } else if (vn_ok && p[1] == 91 && !whole.target) {
        FAIL("a 91 about the destination is charged to the proxy");
    } else if (whole.target && !(vn_ok && p[1] == 91)) {
        FAIL("a reply with VN %u CD %u is blamed on the destination", p[0], p[1]);
    }
    return 0;
}
