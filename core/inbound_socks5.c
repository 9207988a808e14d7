/* inbound_socks5.c - SOCKS5 clients (RFC 1928) with username/password
 * (RFC 1929) against the listener's users.
 *
 * Only CONNECT: the request becomes c->host/c->port and is routed like an
 * HTTP CONNECT (conn_route), so pools, exchanges, retries, breakers and
 * accounting are the same.  Each message is parsed from cli.in once it
 * is whole, however the client splits it; nothing is consumed before.
 * Every length is bounded by its one-byte field and checked against what
 * has arrived. */
#include "authfail.h"
#include "conn.h"
#include "inbound.h"
#include "listener.h"
#include "log.h"
#include "proxy.h"

#include <arpa/inet.h>
#include <netinet/in.h>
#include <stdio.h>
#include <string.h>
#include <sys/socket.h>

enum s5in_step {
    S5IN_GREETING = 0, /* waiting for VER NMETHODS METHODS */
    S5IN_AUTH,         /* waiting for the RFC 1929 username/password */
    S5IN_REQUEST,      /* waiting for VER CMD RSV ATYP DST.ADDR DST.PORT */
    S5IN_ROUTED        /* the request is out: the answer is a reply (REP) */
};

#define S5_NO_AUTH 0x00
#define S5_USERPASS 0x02
#define S5_NO_METHOD 0xff

/* The REP of a reply for each failure ferry names (RFC 1928 section 6).
 * Failures not listed (0 here) are a general failure, 1. */
static const unsigned char rep_of[FERR_COUNT] = {
    [FERR_DENIED] = 2,             /* not allowed by ruleset */
    [FERR_AUTH_REQUIRED] = 2,
    [FERR_AUTH_THROTTLED] = 2,
    [FERR_SOCKS4_USERS] = 2,
    [FERR_NO_PROXY] = 3,           /* network unreachable: no way out */
    [FERR_ALL_DOWN] = 3,
    [FERR_RESOLVE_FAILED] = 4,     /* host unreachable: the name did not resolve */
    [FERR_TARGET_REFUSED] = 4,     /* the upstream proxy could not reach it */
    [FERR_CONNECT_FAILED] = 5,     /* connection refused */
    [FERR_CONNECT_TIMEOUT] = 6,    /* TTL expired: every timeout */
    [FERR_FIRST_BYTE_TIMEOUT] = 6,
    [FERR_HEAD_TIMEOUT] = 6,
    [FERR_UPSTREAM_STALLED] = 6,
    [FERR_QUEUE_TIMEOUT] = 6,     /* no upstream connection slot in time */
    [FERR_RATE_LIMITED] = 2,       /* rate budget spent: refused by policy, for now */
    [FERR_RATE_TIMEOUT] = 2,
    [FERR_SOCKS_COMMAND] = 7,      /* command not supported */
    [FERR_SOCKS_ATYP] = 8,         /* address type not supported */
    [FERR_SOCKS4_NO_IPV4] = 8,     /* the SOCKS4 hop cannot carry an IPv6 destination */
    [FERR_POOL_REFUSED] = 2,       /* a user name's -pool- the listener does not allow */
    [FERR_NO_REGION] = 3,          /* no proxy of the user name's -region- */
};

unsigned char inbound_socks5_rep(enum ferr e)
{
    unsigned char r = (unsigned)e < FERR_COUNT ? rep_of[e] : 0;
    return r != 0 ? r : 1;
}

static void s5_start(struct conn *c)
{
    inbound_handshake_start(c, "SOCKS5");
    c->in_step = S5IN_GREETING;
}

static int offered(const unsigned char *m, size_t n, unsigned char want)
{
    return memchr(m, want, n) != NULL;
}

/* VER NMETHODS METHODS: 1 when the greeting was taken. */
static int take_greeting(struct conn *c, const unsigned char *p, size_t n)
{
    if (p[0] != 5) {
        conn_fail(c, FERR_SOCKS_VERSION);
        return 0;
    }
    if (n < 2 || n < 2u + p[1]) {
        return 0;
    }
    /* Without users, username/password is still chosen when offered: its
     * user name may carry USER-key-value parameters (ctl.c). */
    unsigned char m = S5_NO_METHOD;
    if (offered(p + 2, p[1], S5_USERPASS)) {
        m = S5_USERPASS;
    } else if (c->l->nusers == 0 && offered(p + 2, p[1], S5_NO_AUTH)) {
        m = S5_NO_AUTH;
    }
    if (m == S5_NO_METHOD) {
        if (c->l->nusers > 0 && authfail_missing(c->l, c->client) == 0) {
            conn_fail_quiet(c, FERR_SOCKS_NO_METHOD);
        } else {
            conn_fail(c, FERR_SOCKS_NO_METHOD);
        }
        return 0;
    }
    buf_consume(&c->cli.in, 2u + p[1]);
    unsigned char reply[2] = { 5, m };
    c->bytes_out += buf_append(&c->cli.out, reply, sizeof(reply));
    c->in_step = m == S5_USERPASS ? S5IN_AUTH : S5IN_REQUEST;
    return 1;
}

/* The user name and password as the HTTP listener sees them: a Basic
 * credential, checked by the same code against the same users. */
static const char *check_user(struct conn *c, const unsigned char *u, size_t ulen,
                              const unsigned char *pw, size_t plen)
{
    char cred[2 * 255 + 2];
    char basic[sizeof("Basic ") + 4 * sizeof(cred) / 3 + 4];
    memcpy(cred, u, ulen);
    cred[ulen] = ':';
    memcpy(cred + ulen + 1, pw, plen);
    memcpy(basic, "Basic ", 6);
    size_t tl = base64_encode((const unsigned char *)cred, ulen + 1 + plen, basic + 6,
                              sizeof(basic) - 6);
    const char *user = NULL;
    if (c->l->nusers > 0) {
        user = listener_auth(c->l, basic, 6 + tl);
    }
    if (user == NULL) {
        /* USER-key-value...: the parameters, and the user without them. */
        user = listener_auth_ctl(c->l, basic, 6 + tl, &c->ctl_user);
    }
    if (user == NULL && c->l->nusers == 0) {
        user = ""; /* nothing to check */
    }
    return user;
}

/* VER ULEN UNAME PLEN PASSWD: 1 when accepted. */
static int take_auth(struct conn *c, const unsigned char *p, size_t n)
{
    if (p[0] != 1) {
        conn_fail(c, FERR_SOCKS_MALFORMED);
        return 0;
    }
    if (n < 2 || n < 3u + p[1]) {
        return 0;
    }
    size_t ulen = p[1], plen = p[2 + ulen];
    if (n < 3 + ulen + plen) {
        return 0;
    }
    if (c->l->nusers > 0 && authfail_blocked(c->l, c->client)) {
        conn_fail_quiet(c, FERR_AUTH_THROTTLED);
        return 0;
    }
    const char *user = ulen == 0 || memchr(p + 2, ':', ulen) != NULL
                       ? NULL : check_user(c, p + 2, ulen, p + 3 + ulen, plen);
    if (user == NULL) {
        ctl_clear(&c->ctl_user);
        if (c->l->nusers > 0 && authfail_count(c->l, c->client) == 0) {
            conn_fail_quiet(c, FERR_AUTH_REQUIRED);
        } else {
            conn_fail(c, FERR_AUTH_REQUIRED);
        }
        return 0;
    }
    snprintf(c->user, sizeof(c->user), "%s", user);
    buf_consume(&c->cli.in, 3 + ulen + plen);
    unsigned char ok[2] = { 1, 0 };
    c->bytes_out += buf_append(&c->cli.out, ok, sizeof(ok));
    c->in_step = S5IN_REQUEST;
    return 1;
}

/* A domain name as a host: printable, no blanks, not empty. */
static int name_ok(const unsigned char *s, size_t n)
{
    for (size_t i = 0; i < n; i++) {
        if (s[i] <= 0x20 || s[i] >= 0x7f) {
            return 0;
        }
    }
    return n > 0;
}

/* VER CMD RSV ATYP DST.ADDR DST.PORT: 1 when routed.  Fields are checked
 * as they arrive, so a wrong command is answered before its address. */
static int take_request(struct conn *c, const unsigned char *p, size_t n)
{
    if (p[0] != 5) {
        conn_fail(c, FERR_SOCKS_VERSION);
        return 0;
    }
    if (n >= 2 && p[1] != 1) {
        conn_fail(c, FERR_SOCKS_COMMAND); /* BIND (2), UDP ASSOCIATE (3), others */
        return 0;
    }
    if (n < 4) {
        return 0;
    }
    size_t alen, at = 4;
    switch (p[3]) {
    case 1:
        alen = 4;
        break;
    case 4:
        alen = 16;
        break;
    case 3:
        if (n < 5) {
            return 0;
        }
        alen = p[4];
        at = 5;
        if (alen == 0) {
            conn_fail(c, FERR_SOCKS_MALFORMED);
            return 0;
        }
        break;
    default:
        conn_fail(c, FERR_SOCKS_ATYP);
        return 0;
    }
    if (n < at + alen + 2) {
        return 0;
    }
    const unsigned char *a = p + at;
    int port = a[alen] << 8 | a[alen + 1];
    if (p[3] == 1) {
        inet_ntop(AF_INET, a, c->host, sizeof(c->host));
    } else if (p[3] == 4) {
        inet_ntop(AF_INET6, a, c->host, sizeof(c->host));
    } else if (name_ok(a, alen)) {
        memcpy(c->host, a, alen); /* alen <= 255 = HOST_MAX_LEN */
        c->host[alen] = '\0';
    } else {
        conn_fail(c, FERR_SOCKS_MALFORMED);
        return 0;
    }
    c->port = port;
    if (port == 0) {
        conn_fail(c, FERR_SOCKS_MALFORMED);
        return 0;
    }
    buf_consume(&c->cli.in, at + alen + 2);
    c->in_step = S5IN_ROUTED;
    inbound_route_tunnel(c);
    return 1;
}

static void s5_input(struct conn *c)
{
    int more = 1;
    while (more && !c->closing && c->state == CS_HEAD && !buf_empty(&c->cli.in)) {
        const unsigned char *p = (const unsigned char *)buf_head(&c->cli.in);
        size_t n = buf_len(&c->cli.in);
        switch (c->in_step) {
        case S5IN_GREETING:
            more = take_greeting(c, p, n);
            break;
        case S5IN_AUTH:
            more = take_auth(c, p, n);
            break;
        case S5IN_REQUEST:
            more = take_request(c, p, n);
            break;
        default:
            more = 0;
            break;
        }
    }
}

/* A reply: VER REP RSV ATYP BND.ADDR BND.PORT, the bound address being
 * ferry's end of the first hop when there is one. */
static void write_reply(struct conn *c, unsigned char rep)
{
    unsigned char m[4 + 16 + 2] = { 5, rep, 0, 1 };
    size_t n = 4 + 4 + 2;
    struct sockaddr_storage ss;
    socklen_t sl = sizeof(ss);
    if (rep == 0 && c->up.fd >= 0 && getsockname(c->up.fd, (struct sockaddr *)&ss, &sl) == 0) {
        if (ss.ss_family == AF_INET) {
            const struct sockaddr_in *s4 = (const struct sockaddr_in *)&ss;
            memcpy(m + 4, &s4->sin_addr, 4);
            memcpy(m + 8, &s4->sin_port, 2);
        } else if (ss.ss_family == AF_INET6) {
            const struct sockaddr_in6 *s6 = (const struct sockaddr_in6 *)&ss;
            m[3] = 4;
            memcpy(m + 4, &s6->sin6_addr, 16);
            memcpy(m + 20, &s6->sin6_port, 2);
            n = 4 + 16 + 2;
        }
    }
    c->bytes_out += buf_append(&c->cli.out, m, n);
}

static void s5_answer_ok(struct conn *c)
{
    write_reply(c, 0);
}

/* The answer a failure gets depends on where the handshake stands. */
static void s5_answer_fail(struct conn *c, enum ferr e)
{
    static const unsigned char no_method[2] = { 5, S5_NO_METHOD };
    static const unsigned char auth_failed[2] = { 1, 1 };
    switch (c->in_step) {
    case S5IN_GREETING:
        if (e == FERR_SOCKS_NO_METHOD) {
            c->bytes_out += buf_append(&c->cli.out, no_method, sizeof(no_method));
        } else if (e == FERR_SOCKS_VERSION && inbound_looks_http(c)) {
            /* Letters: an HTTP client on a SOCKS port.  Tell it in HTTP. */
            conn_write_http_error(c, e);
        }
        /* Otherwise there is no message to answer with: the close says it. */
        break;
    case S5IN_AUTH:
        c->bytes_out += buf_append(&c->cli.out, auth_failed, sizeof(auth_failed));
        break;
    default:
        write_reply(c, inbound_socks5_rep(e));
        break;
    }
}

const struct inbound_ops inbound_socks5 = {
    .name = "socks5",
    .start = s5_start,
    .input = s5_input,
    .answer_ok = s5_answer_ok,
    .answer_fail = s5_answer_fail,
    .fini = NULL,
};
