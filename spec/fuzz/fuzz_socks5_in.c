/* fuzz_socks5_in.c - what a SOCKS5 client sends to ferry's SOCKS5
 * listener (core/inbound_socks5.c: greeting, RFC 1929 credentials,
 * CONNECT request), fed whole, byte by byte and in random pieces, against
 * a reading of RFC 1928/1929 written here.
 *
 * Input: byte 0: bit 0 gives the listener a user ("fuzzuser:fuzzpass"),
 * the rest seeds the pieces; the rest is what the client sends.
 *
 * abort() when
 *  - the three feedings disagree (routed or not, the failure, host, port,
 *    bytes taken, bytes answered);
 *  - ferry routes where the reference has not, or to another host or
 *    port, or after taking another number of bytes; or fails where the
 *    reference routes, or with another failure; or waits once the
 *    reference has decided;
 *  - the bytes left in cli.in after routing are not those after the
 *    request;
 *  - the answers are not the method choice and RFC 1929 verdict the
 *    reference expects, followed (on failure) by the reply of its code. */
#include "../../core/authfail.h"
#include "../../core/conn.h"
#include "../../core/inbound.h"
#include "../../core/listener.h"
#include "../../core/proxy.h"

#include <arpa/inet.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define FAIL(...)                                                                            \
    do {                                                                                     \
        fprintf(stderr, "fuzz_socks5_in: FINDING: " __VA_ARGS__);                            \
        fputc('\n', stderr);                                                                 \
        abort();                                                                             \
    } while (0)

struct ev_loop *loop;
struct timeouts timeouts = { .client_head = 10, .request = 60 };

ev_tstamp ev_now(struct ev_loop *l)
{
    (void)l;
    return 1000.0;
}

static struct listener lst = { .name = "fuzz", .fd = -1 };

/* What one feeding ended in. */
struct outcome {
    int routed;             /* inbound_route_tunnel was called */
    int failed;             /* enum ferr + 1, 0 when none */
    char host[HOST_MAX_LEN + 1];
    int port;
    size_t taken;           /* bytes consumed from cli.in */
    unsigned char out[64];  /* what ferry answered */
    size_t nout;
};

static struct outcome *cur;

/* The world around inbound_socks5.c. */
void inbound_handshake_start(struct conn *c, const char *proto)
{
    (void)proto;
    c->in_step = 0;
}

void inbound_route_tunnel(struct conn *c)
{
    if (cur->routed || cur->failed) {
        FAIL("routed twice, or after a failure");
    }
    cur->routed = 1;
    c->state = CS_CONNECT; /* the conn leaves CS_HEAD, as conn_route does */
}

int inbound_looks_http(const struct conn *c)
{
    unsigned char b = buf_empty(&c->cli.in) ? 0 : (unsigned char)buf_head(&c->cli.in)[0];
    return (b >= 'A' && b <= 'Z') || (b >= 'a' && b <= 'z');
}

static void failed(struct conn *c, enum ferr e)
{
    if (cur->routed || cur->failed) {
        FAIL("failed twice, or after routing");
    }
    cur->failed = (int)e + 1;
    c->in->answer_fail(c, e);
    c->state = CS_DRAIN;
}

void conn_fail(struct conn *c, enum ferr e)
{
    failed(c, e);
}

void conn_fail_quiet(struct conn *c, enum ferr e)
{
    failed(c, e);
}

void conn_write_http_error(struct conn *c, enum ferr e)
{
    (void)e;
    buf_append(&c->cli.out, "HTTP", 4);
}

int authfail_blocked(const struct listener *l, const char *client)
{
    (void)l;
    (void)client;
    return 0;
}

int authfail_count(const struct listener *l, const char *client)
{
    (void)l;
    (void)client;
    return 1;
}

int authfail_missing(const struct listener *l, const char *client)
{
    (void)l;
    (void)client;
    return 1;
}

static const char cred[] = "fuzzuser:fuzzpass";

size_t base64_encode(const unsigned char *in, size_t n, char *out, size_t room)
{
    static const char a[] = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    size_t o = 0;
    for (size_t i = 0; i < n; i += 3) {
        unsigned v = (unsigned)in[i] << 16 | (i + 1 < n ? (unsigned)in[i + 1] << 8 : 0) |
                     (i + 2 < n ? in[i + 2] : 0);
        if (o + 5 > room) {
            abort();
        }
        out[o++] = a[v >> 18 & 63];
        out[o++] = a[v >> 12 & 63];
        out[o++] = i + 1 < n ? a[v >> 6 & 63] : '=';
        out[o++] = i + 2 < n ? a[v & 63] : '=';
    }
    out[o] = '\0';
    return o;
}

/* The listener's one user, compared as listener.c would. */
const char *listener_auth(struct listener *l, const char *value, size_t len)
{
    char want[64] = "Basic ";
    base64_encode((const unsigned char *)cred, strlen(cred), want + 6, sizeof(want) - 6);
    if (l->nusers > 0 && len == strlen(want) && memcmp(value, want, len) == 0) {
        return "fuzzuser";
    }
    return NULL;
}

const char *listener_auth_ctl(struct listener *l, const char *value, size_t len, struct ctl *k)
{
    (void)value;
    (void)len;
    (void)k;
    return l->nusers > 0 ? NULL : "";
}

void conn_set_path(struct conn *c, const char *p, size_t n)
{
    (void)c;
    (void)p;
    (void)n;
}

void conn_arm(struct conn *c, double secs)
{
    (void)c;
    (void)secs;
}

static uint64_t rng;

static size_t next_piece(size_t left)
{
    rng ^= rng << 13;
    rng ^= rng >> 7;
    rng ^= rng << 17;
    size_t k = (size_t)(rng % 7) + 1;
    return k < left ? k : left;
}

static void run(const unsigned char *p, size_t n, int piece, int users, struct outcome *o)
{
    memset(o, 0, sizeof(*o));
    cur = o;
    struct conn *c = calloc(1, sizeof(*c));
    if (c == NULL) {
        abort();
    }
    lst.nusers = users;
    c->l = &lst;
    c->in = &inbound_socks5;
    c->cli.fd = c->up.fd = -1;
    buf_init(&c->cli.in, CONN_BUF_SIZE);
    buf_init(&c->cli.out, CONN_BUF_SIZE);
    snprintf(c->client, sizeof(c->client), "127.0.0.1");
    c->state = CS_HEAD;
    c->in->start(c);
    size_t pos = 0;
    while (pos < n && !o->routed && !o->failed) {
        size_t k = piece == 0 ? n - pos : piece == 1 ? 1 : next_piece(n - pos);
        size_t got = buf_append(&c->cli.in, p + pos, k);
        pos += got;
        c->in->input(c);
        if (got < k) {
            break;
        }
    }
    if (o->routed) {
        o->taken = pos - buf_len(&c->cli.in);
        if (memcmp(buf_head(&c->cli.in), p + o->taken, buf_len(&c->cli.in)) != 0) {
            FAIL("the tunnel's first bytes are not those after the request");
        }
        memcpy(o->host, c->host, sizeof(o->host));
        o->port = c->port;
    }
    o->nout = buf_len(&c->cli.out) < sizeof(o->out) ? buf_len(&c->cli.out) : sizeof(o->out);
    memcpy(o->out, buf_head(&c->cli.out), o->nout);
    buf_free(&c->cli.in);
    buf_free(&c->cli.out);
    free(c);
}

static void same(const char *what, const struct outcome *a, const struct outcome *b)
{
    if (a->routed != b->routed || a->failed != b->failed || a->taken != b->taken ||
        a->port != b->port || strcmp(a->host, b->host) != 0 || a->nout != b->nout ||
        memcmp(a->out, b->out, a->nout) != 0) {
        FAIL("whole and %s feeding differ: routed %d/%d, failed %d/%d, taken %zu/%zu, "
             "%s:%d / %s:%d, %zu/%zu answer bytes", what, a->routed, b->routed, a->failed,
             b->failed, a->taken, b->taken, a->host, a->port, b->host, b->port, a->nout,
             b->nout);
    }
}

/* RFC 1928/1929 as ferry applies them: the outcome, and the answers. */
static void reference(const unsigned char *b, size_t n, int users, struct outcome *o)
{
    memset(o, 0, sizeof(*o));
    size_t pos = 0;
#define NEED(k) do { if (n - pos < (k)) return; } while (0)
#define FAILS(e) do { o->failed = (int)(e) + 1; return; } while (0)
    NEED(1);
    if (b[0] != 5) {
        if ((b[0] >= 'A' && b[0] <= 'Z') || (b[0] >= 'a' && b[0] <= 'z')) {
            memcpy(o->out, "HTTP", 4);
            o->nout = 4;
        }
        FAILS(FERR_SOCKS_VERSION);
    }
    NEED(2);
    NEED(2u + b[1]);
    int userpass = memchr(b + 2, 2, b[1]) != NULL;
    int none = !users && memchr(b + 2, 0, b[1]) != NULL;
    if (!userpass && !none) {
        o->out[o->nout++] = 5;
        o->out[o->nout++] = 0xff;
        FAILS(FERR_SOCKS_NO_METHOD);
    }
    o->out[o->nout++] = 5;
    o->out[o->nout++] = userpass ? 2 : 0;
    pos = 2u + b[1];
    if (userpass) {
        NEED(1);
        if (b[pos] != 1) {
            o->out[o->nout++] = 1;
            o->out[o->nout++] = 1;
            FAILS(FERR_SOCKS_MALFORMED);
        }
        NEED(2);
        NEED(3u + b[pos + 1]);
        size_t ul = b[pos + 1], pl = b[pos + 2 + ul];
        NEED(3 + ul + pl);
        int ok = ul > 0 && memchr(b + pos + 2, ':', ul) == NULL;
        if (ok && users) {
            ok = ul + 1 + pl == strlen(cred) && memcmp(b + pos + 2, cred, ul) == 0 &&
                 cred[ul] == ':' && memcmp(b + pos + 3 + ul, cred + ul + 1, pl) == 0;
        }
        o->out[o->nout++] = 1;
        o->out[o->nout++] = ok ? 0 : 1;
        if (!ok) {
            FAILS(FERR_AUTH_REQUIRED);
        }
        pos += 3 + ul + pl;
    }
    enum ferr e = FERR_COUNT;
    NEED(1);
    if (b[pos] != 5) {
        e = FERR_SOCKS_VERSION;
    } else if (n - pos >= 2 && b[pos + 1] != 1) {
        e = FERR_SOCKS_COMMAND;
    }
    size_t at = 4, alen = 0;
    if (e == FERR_COUNT) {
        NEED(4);
        if (b[pos + 3] == 1) {
            alen = 4;
        } else if (b[pos + 3] == 4) {
            alen = 16;
        } else if (b[pos + 3] == 3) {
            NEED(5);
            alen = b[pos + 4];
            at = 5;
            e = alen == 0 ? FERR_SOCKS_MALFORMED : e;
        } else {
            e = FERR_SOCKS_ATYP;
        }
    }
    if (e == FERR_COUNT) {
        NEED(at + alen + 2);
        const unsigned char *a = b + pos + at;
        o->port = a[alen] << 8 | a[alen + 1];
        if (b[pos + 3] == 1) {
            inet_ntop(AF_INET, a, o->host, sizeof(o->host));
        } else if (b[pos + 3] == 4) {
            inet_ntop(AF_INET6, a, o->host, sizeof(o->host));
        } else {
            for (size_t i = 0; i < alen; i++) {
                e = a[i] <= 0x20 || a[i] >= 0x7f ? FERR_SOCKS_MALFORMED : e;
            }
            memcpy(o->host, a, alen);
        }
        e = o->port == 0 ? FERR_SOCKS_MALFORMED : e;
    }
    if (e != FERR_COUNT) {
        unsigned char r[10] = { 5, inbound_socks5_rep(e), 0, 1 };
        memcpy(o->out + o->nout, r, sizeof(r));
        o->nout += sizeof(r);
        o->host[0] = '\0';
        o->port = 0;
        FAILS(e);
    }
    o->routed = 1;
    o->taken = pos + at + alen + 2;
#undef NEED
#undef FAILS
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (size < 1) {
        return 0;
    }
    int users = data[0] & 1;
    const unsigned char *p = data + 1;
    size_t n = size - 1;
    static struct outcome whole, bytes, pieces, ref;
    run(p, n, 0, users, &whole);
    run(p, n, 1, users, &bytes);
    rng = ((uint64_t)data[0] << 40) ^ (uint64_t)n ^ 0x9E3779B97F4A7C15ull;
    run(p, n, 2, users, &pieces);
    same("byte-by-byte", &whole, &bytes);
    same("random-piece", &whole, &pieces);
    reference(p, n, users, &ref);
    same("reference", &ref, &whole);
    return 0;
}
