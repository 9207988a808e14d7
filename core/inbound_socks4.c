/* inbound_socks4.c - SOCKS4 and SOCKS4a clients, CONNECT only.
 *
 * Request: VN=4 CD DSTPORT(2) DSTIP(4) USERID NUL, and for 4a (DSTIP
 * 0.0.0.x, x != 0) a host name NUL after it.  Reply: VN=0 CD DSTPORT
 * DSTIP, CD 90 granted or 91 rejected (ferry has no identd, so 92 and
 * 93 are never sent).
 *
 * SOCKS4 carries a user id but no password, so it cannot be checked: on
 * a listener with users every SOCKS4 request is refused (91, FERRY-1055)
 * and only SOCKS5 with username/password gets in.  Without users the
 * user id is ignored, except that USER-key-value parameters (a sticky
 * session, a region...) count as in the HTTP listener's user name. */
#include "conn.h"
#include "inbound.h"
#include "listener.h"
#include "log.h"
#include "ctl.h"

#include <arpa/inet.h>
#include <stdio.h>
#include <string.h>

/* USERID and the 4a host name: each at most this long, NUL excluded. */
#define S4_FIELD_MAX 255

#define S4_GRANTED 90
#define S4_REJECTED 91

enum s4in_step {
    S4IN_REQUEST = 0, /* waiting for the whole request */
    S4IN_ROUTED       /* the request is out */
};

static void s4_start(struct conn *c)
{
    inbound_handshake_start(c, "SOCKS4");
    c->in_step = S4IN_REQUEST;
}

/* The end of a NUL-terminated field at p[at..n): its length, -1 when its
 * NUL has not arrived yet, -2 when it is longer than allowed. */
static long field_len(const unsigned char *p, size_t n, size_t at)
{
    size_t avail = n > at ? n - at : 0;
    size_t look = avail < S4_FIELD_MAX + 1 ? avail : S4_FIELD_MAX + 1;
    const unsigned char *z = memchr(p + at, 0, look);
    if (z != NULL) {
        return (long)(z - (p + at));
    }
    return avail > S4_FIELD_MAX ? -2 : -1;
}

/* A USER-key-value... user id carries control parameters (ctl.c). */
static void take_params(struct conn *c, const unsigned char *id, size_t n)
{
    ctl_user_parse((const char *)id, n, &c->ctl_user);
}

static void s4_input(struct conn *c)
{
    if (c->in_step != S4IN_REQUEST || buf_empty(&c->cli.in)) {
        return;
    }
    const unsigned char *p = (const unsigned char *)buf_head(&c->cli.in);
    size_t n = buf_len(&c->cli.in);
    if (p[0] != 4) {
        conn_fail(c, FERR_SOCKS_VERSION);
        return;
    }
    if (n >= 2 && p[1] != 1) {
        conn_fail(c, FERR_SOCKS_COMMAND); /* BIND (2) */
        return;
    }
    if (c->l->nusers > 0) {
        conn_fail(c, FERR_SOCKS4_USERS);
        return;
    }
    long ulen = field_len(p, n, 8);
    if (ulen < 0) {
        if (ulen == -2) {
            conn_fail(c, FERR_SOCKS_MALFORMED);
        }
        return;
    }
    size_t end = 8 + (size_t)ulen + 1;
    int is_4a = p[4] == 0 && p[5] == 0 && p[6] == 0 && p[7] != 0;
    int port = p[2] << 8 | p[3];
    if (is_4a) {
        long hlen = field_len(p, n, end);
        if (hlen < 0) {
            if (hlen == -2) {
                conn_fail(c, FERR_SOCKS_MALFORMED);
            }
            return;
        }
        const unsigned char *h = p + end;
        for (long i = 0; i < hlen; i++) {
            if (h[i] <= 0x20 || h[i] >= 0x7f) {
                hlen = 0;
            }
        }
        if (hlen == 0) {
            conn_fail(c, FERR_SOCKS_MALFORMED);
            return;
        }
        memcpy(c->host, h, (size_t)hlen);
        c->host[hlen] = '\0';
        end += (size_t)hlen + 1;
    } else {
        inet_ntop(AF_INET, p + 4, c->host, sizeof(c->host));
    }
    c->port = port;
    if (port == 0) {
        conn_fail(c, FERR_SOCKS_MALFORMED);
        return;
    }
    take_params(c, p + 8, (size_t)ulen);
    buf_consume(&c->cli.in, end);
    c->in_step = S4IN_ROUTED;
    inbound_route_tunnel(c);
}

static void write_reply(struct conn *c, unsigned char cd)
{
    unsigned char m[8] = { 0, cd, 0, 0, 0, 0, 0, 0 };
    c->bytes_out += buf_append(&c->cli.out, m, sizeof(m));
}

static void s4_answer_ok(struct conn *c)
{
    write_reply(c, S4_GRANTED);
}

static void s4_answer_fail(struct conn *c, enum ferr e)
{
    if (e == FERR_SOCKS_VERSION) {
        if (inbound_looks_http(c)) {
            conn_write_http_error(c, e); /* an HTTP client on a SOCKS port */
        }
        return;
    }
    if (e == FERR_HEAD_TIMEOUT && c->in_step == S4IN_REQUEST) {
        return; /* half a request: nothing to answer */
    }
    write_reply(c, S4_REJECTED);
}

const struct inbound_ops inbound_socks4 = {
    .name = "socks4",
    .start = s4_start,
    .input = s4_input,
    .answer_ok = s4_answer_ok,
    .answer_fail = s4_answer_fail,
    .fini = NULL,
};
