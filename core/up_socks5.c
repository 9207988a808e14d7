/* up_socks5.c - RFC 1928 CONNECT with RFC 1929 username/password.
 *
 * The destination goes out as a domain name (ATYP 3) so the proxy
 * resolves it; IP literals go out as addresses.  Every step reads
 * exactly the bytes its message needs, however the peer splits them. */
#include "conn.h"
#include "proxy.h"
#include "upstream.h"

#include <arpa/inet.h>
#include <string.h>

enum s5_step {
    S5_METHOD = 0, /* waiting for the method choice */
    S5_AUTH,       /* waiting for the user/pass verdict */
    S5_REPLY       /* waiting for the CONNECT reply */
};

static int s5_start(struct hop *h)
{
    struct proxy *p = h->proxy;
    unsigned char hello[4] = { 5, 1, 0, 0 };
    size_t n = 3;
    if (p->user != NULL) {
        hello[1] = 2;
        hello[3] = 2; /* offer no-auth and user/pass */
        n = 4;
    }
    buf_append(&h->leg->out, hello, n);
    h->priv.step = S5_METHOD;
    return UP_AGAIN;
}

/* The destination goes out as a name, not an address (send_connect). */
static int sent_name(const struct hop *h)
{
    struct in_addr a4;
    struct in6_addr a6;
    return inet_pton(AF_INET, h->host, &a4) != 1 && inet_pton(AF_INET6, h->host, &a6) != 1;
}

static void send_connect(struct hop *h)
{
    unsigned char m[4 + 1 + HOST_MAX_LEN + 2];
    size_t n = 0;
    m[n++] = 5;
    m[n++] = 1; /* CONNECT */
    m[n++] = 0;
    struct in_addr a4;
    struct in6_addr a6;
    if (inet_pton(AF_INET, h->host, &a4) == 1) {
        m[n++] = 1;
        memcpy(m + n, &a4, 4);
        n += 4;
    } else if (inet_pton(AF_INET6, h->host, &a6) == 1) {
        m[n++] = 4;
        memcpy(m + n, &a6, 16);
        n += 16;
    } else {
        size_t hl = strlen(h->host);
        m[n++] = 3;
        m[n++] = (unsigned char)hl;
        memcpy(m + n, h->host, hl);
        n += hl;
    }
    m[n++] = (unsigned char)(h->port >> 8);
    m[n++] = (unsigned char)(h->port & 0xff);
    buf_append(&h->leg->out, m, n);
    h->priv.step = S5_REPLY;
}

static int send_auth(struct hop *h)
{
    struct proxy *p = h->proxy;
    size_t ul = strlen(p->user), pl = strlen(p->pass);
    if (ul > 255 || pl > 255) {
        return hop_fail(h, FERRY_FAIL_AUTH, FERR_UPSTREAM_AUTH);
    }
    unsigned char m[3 + 255 + 255];
    size_t n = 0;
    m[n++] = 1;
    m[n++] = (unsigned char)ul;
    memcpy(m + n, p->user, ul);
    n += ul;
    m[n++] = (unsigned char)pl;
    memcpy(m + n, p->pass, pl);
    n += pl;
    buf_append(&h->leg->out, m, n);
    h->priv.step = S5_AUTH;
    return UP_AGAIN;
}

static int s5_input(struct hop *h)
{
    for (;;) {
        const unsigned char *b = (const unsigned char *)buf_head(&h->leg->in);
        size_t have = buf_len(&h->leg->in);
        switch (h->priv.step) {
        case S5_METHOD:
            if (have < 2) {
                return UP_AGAIN;
            }
            if (b[0] != 5) {
                return hop_fail(h, FERRY_FAIL_HANDSHAKE, FERR_HANDSHAKE_FAILED);
            }
            if (b[1] == 0) {
                buf_consume(&h->leg->in, 2);
                send_connect(h);
            } else if (b[1] == 2 && h->proxy->user != NULL) {
                buf_consume(&h->leg->in, 2);
                if (send_auth(h) == UP_FAIL) {
                    return UP_FAIL;
                }
            } else if (b[1] == 0xff) {
                return hop_fail(h, h->proxy->user != NULL ? FERRY_FAIL_AUTH : FERRY_FAIL_HANDSHAKE,
                            h->proxy->user != NULL ? FERR_UPSTREAM_AUTH : FERR_HANDSHAKE_FAILED);
            } else {
                return hop_fail(h, FERRY_FAIL_HANDSHAKE, FERR_HANDSHAKE_FAILED);
            }
            break;
        case S5_AUTH:
            if (have < 2) {
                return UP_AGAIN;
            }
            if (b[0] != 1 || b[1] != 0) {
                return hop_fail(h, FERRY_FAIL_AUTH, FERR_UPSTREAM_AUTH);
            }
            buf_consume(&h->leg->in, 2);
            send_connect(h);
            break;
        case S5_REPLY: {
            if (have < 5) {
                return UP_AGAIN;
            }
            if (b[0] != 5) {
                return hop_fail(h, FERRY_FAIL_HANDSHAKE, FERR_HANDSHAKE_FAILED);
            }
            if ((b[1] >= 3 && b[1] <= 6) || (b[1] == 1 && sent_name(h))) {
                /* 3 network unreachable, 4 host unreachable, 5 refused,
                 * 6 TTL expired: the proxy works, the destination does
                 * not answer it.  Not the proxy's failure.  A general
                 * failure (1) for a name is the same: some proxies
                 * (microsocks) say so when the name does not resolve. */
                h->fail_target = 1;
                return hop_fail(h, FERRY_FAIL_HANDSHAKE, FERR_TARGET_REFUSED);
            }
            if (b[1] != 0) {
                /* 1 general failure for an address, 2 not allowed, 7
                 * command or 8 address type not supported: the proxy
                 * refused us. */
                return hop_fail(h, FERRY_FAIL_HANDSHAKE, FERR_HANDSHAKE_FAILED);
            }
            size_t need;
            if (b[3] == 1) {
                need = 4 + 4 + 2;
            } else if (b[3] == 4) {
                need = 4 + 16 + 2;
            } else if (b[3] == 3) {
                need = 4 + 1 + (size_t)b[4] + 2;
            } else {
                return hop_fail(h, FERRY_FAIL_HANDSHAKE, FERR_HANDSHAKE_FAILED);
            }
            if (have < need) {
                return UP_AGAIN;
            }
            buf_consume(&h->leg->in, need);
            return UP_DONE;
        }
        default:
            return hop_fail(h, FERRY_FAIL_HANDSHAKE, FERR_HANDSHAKE_FAILED);
        }
    }
}

/* The greeting real traffic would send, offering what it would offer. */
static void s5_hello(struct hop *h)
{
    static const char plain[] = { 5, 1, 0 }, creds[] = { 5, 2, 0, 2 };
    if (h->proxy->user != NULL) {
        buf_append(&h->leg->out, creds, sizeof(creds));
    } else {
        buf_append(&h->leg->out, plain, sizeof(plain));
    }
}

static int s5_hello_input(struct hop *h)
{
    if (buf_len(&h->leg->in) < 2) {
        return UP_AGAIN;
    }
    if (buf_head(&h->leg->in)[0] != 5) {
        return hop_fail(h, FERRY_FAIL_HANDSHAKE, FERR_HANDSHAKE_FAILED);
    }
    return UP_DONE;
}

const struct upstream_ops up_socks5 = {
    .name = "socks5",
    .start = s5_start,
    .input = s5_input,
    .hello = s5_hello,
    .hello_input = s5_hello_input,
    .hello_what = "a SOCKS5 greeting",
};
