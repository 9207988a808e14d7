/* fuzz_socks5.c - a SOCKS5 proxy's answers (core/up_socks5.c: method
 * choice, RFC 1929 verdict, CONNECT reply), fed whole, byte by byte and in
 * random pieces, against a reading of RFC 1928 written here.
 *
 * Input: byte 0: bit 0 gives the proxy credentials, the rest seeds the
 * pieces; byte 1 is the length of the destination host that follows (an
 * IP literal goes out as an address, anything else as a name); the rest
 * is what the proxy answers.
 *
 * abort() when
 *  - the three feedings disagree (result, failure, bytes taken);
 *  - ferry opens the tunnel where RFC 1928 has not, or takes another
 *    number of bytes than the answers are long, or fails where the reply
 *    is a success, or waits once the reply is complete;
 *  - the bytes left for the tunnel are not exactly those after the reply;
 *  - what ferry sent is not greeting, credentials (when chosen) and a
 *    CONNECT naming the host and port. */
#include "../../core/conn.h"
#include "../../core/proxy.h"
#include "../../core/upstream.h"

#include <arpa/inet.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define FAIL(...)                                                                            \
    do {                                                                                     \
        fprintf(stderr, "fuzz_socks5: FINDING: " __VA_ARGS__);                               \
        fputc('\n', stderr);                                                                 \
        abort();                                                                             \
    } while (0)

static struct proxy px;
static char host[HOST_MAX_LEN + 1];

struct outcome {
    int result;    /* enum up_result */
    int kind, err; /* on UP_FAIL */
    size_t taken;  /* bytes consumed (UP_DONE) */
};

static uint64_t rng;

static size_t next_piece(size_t left)
{
    rng ^= rng << 13;
    rng ^= rng >> 7;
    rng ^= rng << 17;
    size_t k = (size_t)(rng % 7) + 1;
    return k < left ? k : left;
}

/* What RFC 1928/1929 say the answers are: UP_DONE with the bytes they
 * take, UP_FAIL, or UP_AGAIN when they are not complete yet. */
static struct outcome reference(const unsigned char *b, size_t n, int creds)
{
    struct outcome o = { UP_AGAIN, 0, 0, 0 };
    size_t pos = 0;
    if (n < 2) {
        return o;
    }
    if (b[0] != 5) {
        o.result = UP_FAIL;
        return o;
    }
    if (b[1] == 2 && creds) {
        if (n < 4) {
            return o;
        }
        if (b[2] != 1 || b[3] != 0) {
            o.result = UP_FAIL;
            return o;
        }
        pos = 4;
    } else if (b[1] == 0) {
        pos = 2;
    } else {
        o.result = UP_FAIL; /* 0xff, or a method ferry did not offer */
        return o;
    }
    /* VER REP RSV ATYP BND.ADDR BND.PORT */
    if (n - pos < 2) {
        return o;
    }
    if (b[pos] != 5 || b[pos + 1] != 0) {
        o.result = UP_FAIL;
        return o;
    }
    if (n - pos < 4) {
        return o;
    }
    size_t need;
    switch (b[pos + 3]) {
    case 1:
        need = 4 + 4 + 2;
        break;
    case 4:
        need = 4 + 16 + 2;
        break;
    case 3:
        if (n - pos < 5) {
            return o;
        }
        need = 4 + 1 + (size_t)b[pos + 4] + 2;
        break;
    default:
        o.result = UP_FAIL;
        return o;
    }
    if (n - pos < need) {
        return o;
    }
    o.result = UP_DONE;
    o.taken = pos + need;
    return o;
}

/* What ferry sent: greeting, credentials when the proxy chose them, CONNECT. */
static void check_sent(struct leg *g, const unsigned char *ans, int creds)
{
    const unsigned char *s = (const unsigned char *)buf_head(&g->out);
    size_t n = buf_len(&g->out), i = 0;
    static const unsigned char hello0[] = { 5, 1, 0 }, hello2[] = { 5, 2, 0, 2 };
    if (creds ? (n < 4 || memcmp(s, hello2, 4)) : (n < 3 || memcmp(s, hello0, 3))) {
        FAIL("a malformed greeting");
    }
    i = creds ? 4 : 3;
    if (creds && ans[1] == 2) {
        size_t ul = strlen(px.user), pl = strlen(px.pass);
        if (n - i < 3 + ul + pl || s[i] != 1 || s[i + 1] != ul || memcmp(s + i + 2, px.user, ul) ||
            s[i + 2 + ul] != pl || memcmp(s + i + 3 + ul, px.pass, pl)) {
            FAIL("malformed RFC 1929 credentials");
        }
        i += 3 + ul + pl;
    }
    unsigned char want[4 + 1 + HOST_MAX_LEN + 2];
    size_t w = 0;
    want[w++] = 5;
    want[w++] = 1;
    want[w++] = 0;
    struct in_addr a4;
    struct in6_addr a6;
    if (inet_pton(AF_INET, host, &a4) == 1) {
        want[w++] = 1;
        memcpy(want + w, &a4, 4);
        w += 4;
    } else if (inet_pton(AF_INET6, host, &a6) == 1) {
        want[w++] = 4;
        memcpy(want + w, &a6, 16);
        w += 16;
    } else {
        want[w++] = 3;
        want[w++] = (unsigned char)strlen(host);
        memcpy(want + w, host, strlen(host));
        w += strlen(host);
    }
    want[w++] = 443 >> 8;
    want[w++] = 443 & 0xff;
    if (n - i != w || memcmp(s + i, want, w) != 0) {
        FAIL("the CONNECT request does not name %s:443 (%zu bytes, %zu expected)", host, n - i,
             w);
    }
}

static struct outcome run(const unsigned char *p, size_t n, int piece, int creds, int check)
{
    struct outcome o = { UP_AGAIN, 0, 0, 0 };
    /* A bare leg and hop, as a probe drives them. */
    struct leg g;
    struct hop h;
    memset(&g, 0, sizeof(g));
    memset(&h, 0, sizeof(h));
    g.fd = -1;
    buf_init(&g.in, CONN_BUF_SIZE);
    buf_init(&g.out, CONN_BUF_SIZE);
    px.user = creds ? "fuzzuser" : NULL;
    px.pass = creds ? "fuzzpass" : NULL;
    h.leg = &g;
    h.proxy = &px;
    h.host = host;
    h.port = 443;
    h.is_connect = 1;
    h.ops = &up_socks5;
    if (up_socks5.start(&h) != UP_AGAIN) {
        FAIL("up_socks5.start did not wait for an answer");
    }
    size_t pos = 0;
    while (pos < n && o.result == UP_AGAIN) {
        size_t k = piece == 0 ? n - pos : piece == 1 ? 1 : next_piece(n - pos);
        size_t got = buf_append(&g.in, p + pos, k);
        pos += got;
        o.result = up_socks5.input(&h);
        if (got < k) {
            break;
        }
    }
    if (o.result == UP_FAIL) {
        o.kind = (int)h.fail_kind;
        o.err = (int)h.fail_err;
    } else if (o.result == UP_DONE) {
        o.taken = pos - buf_len(&g.in);
        if (check) {
            if (memcmp(buf_head(&g.in), p + o.taken, buf_len(&g.in)) != 0) {
                FAIL("the tunnel's first bytes are not those after the reply");
            }
            check_sent(&g, p, creds);
        }
    }
    buf_free(&g.in);
    buf_free(&g.out);
    return o;
}

static void same(const char *what, struct outcome a, struct outcome b)
{
    if (a.result != b.result || a.kind != b.kind || a.err != b.err || a.taken != b.taken) {
        FAIL("whole and %s feeding differ: result %d/%d, kind %d/%d, err %d/%d, taken %zu/%zu",
             what, a.result, b.result, a.kind, b.kind, a.err, b.err, a.taken, b.taken);
    }
}

int LLVMFuzzerInitialize(int *argc, char ***argv)
{
    (void)argc;
    (void)argv;
    px.pub.scheme = FERRY_SCHEME_SOCKS5;
    px.display = "socks5://fuzz-proxy:1080";
    px.label = "fuzz";
    return 0;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (size < 2 || (size_t)data[1] > size - 2) {
        return 0;
    }
    int creds = data[0] & 1;
    size_t hl = data[1];
    memset(host, 0, sizeof(host));
    memcpy(host, data + 2, hl);
    if (host[0] == '\0') {
        snprintf(host, sizeof(host), "example.com");
    }
    const unsigned char *p = data + 2 + hl;
    size_t n = size - 2 - hl;

    struct outcome whole = run(p, n, 0, creds, 1);
    struct outcome bytes = run(p, n, 1, creds, 0);
    rng = ((uint64_t)data[0] << 40) ^ (uint64_t)n ^ 0x9E3779B97F4A7C15ull;
    struct outcome pieces = run(p, n, 2, creds, 0);
    same("byte-by-byte", whole, bytes);
    same("random-piece", whole, pieces);

    struct outcome ref = reference(p, n, creds);
    if (whole.result == UP_DONE && (ref.result != UP_DONE || ref.taken != whole.taken)) {
        FAIL("ferry opens the tunnel after %zu bytes; RFC 1928 says %s %zu", whole.taken,
             ref.result == UP_DONE ? "done after" : "not done at", ref.taken);
    }
    if (ref.result == UP_DONE && whole.result != UP_DONE && n < CONN_BUF_SIZE) {
        FAIL("a complete successful reply (%zu bytes) leaves ferry %s", ref.taken,
             whole.result == UP_FAIL ? "failed" : "waiting");
    }
    if (whole.result == UP_FAIL && ref.result == UP_AGAIN) {
        FAIL("ferry fails on answers that are fine so far");
    }
    return 0;
}
