/* up_socks4.c - SOCKS4 and SOCKS4a CONNECT.
 *
 * SOCKS4 carries the destination as an IPv4 address, so ferry resolves
 * a name itself first (c-ares, on the loop) and fails clearly when the
 * destination has only an IPv6 address.  SOCKS4a sends the name after
 * the user id with the address 0.0.0.1, and the proxy resolves it.  The
 * user id is the proxy URL's user name; SOCKS4 has no password.  The
 * reply is eight bytes whatever the outcome. */
#include "conn.h"
#include "proxy.h"
#include "resolve.h"
#include "upstream.h"

#include <arpa/inet.h>
#include <netinet/in.h>
#include <string.h>

#define S4_REPLY_LEN 8
#define S4_USER_MAX 255

enum s4_step {
    S4_LOOKUP = 0, /* socks4: the destination's address is being looked up */
    S4_REPLY       /* the request is out: waiting for the reply */
};

/* VN 4, CD 1 (CONNECT), port, address, user id, NUL[, name, NUL]. */
static void send_request(struct hop *h, const unsigned char ip[4], const char *name)
{
    unsigned char m[8 + S4_USER_MAX + 1 + HOST_MAX_LEN + 1];
    size_t n = 0;
    m[n++] = 4;
    m[n++] = 1;
    m[n++] = (unsigned char)(h->port >> 8);
    m[n++] = (unsigned char)(h->port & 0xff);
    memcpy(m + n, ip, 4);
    n += 4;
    const char *user = h->proxy->user;
    size_t ul = user != NULL ? strlen(user) : 0;
    if (ul > S4_USER_MAX) {
        ul = S4_USER_MAX; /* url.lua refuses longer ones */
    }
    if (ul > 0) {
        memcpy(m + n, user, ul);
        n += ul;
    }
    m[n++] = 0;
    if (name != NULL) {
        size_t hl = strlen(name);
        memcpy(m + n, name, hl);
        n += hl;
        m[n++] = 0;
    }
    buf_append(&h->leg->out, m, n);
    h->priv.s4.step = S4_REPLY;
}

/* The destination has no IPv4 address: SOCKS4 cannot name it.  The
 * proxy is not at fault. */
static int no_ipv4(struct hop *h)
{
    h->fail_target = 1;
    return hop_fail(h, FERRY_FAIL_HANDSHAKE, FERR_SOCKS4_NO_IPV4);
}

/* Send the request for a looked-up address; UP_AGAIN or UP_FAIL. */
static int send_addr(struct hop *h, const struct sockaddr *sa)
{
    if (sa->sa_family != AF_INET) {
        return no_ipv4(h);
    }
    const struct sockaddr_in *a4 = (const struct sockaddr_in *)sa;
    send_request(h, (const unsigned char *)&a4->sin_addr, NULL);
    return UP_AGAIN;
}

static void on_resolved(void *arg, int status, const struct sockaddr *sa, socklen_t len)
{
    (void)len;
    struct hop *h = arg;
    h->priv.s4.rr = NULL;
    int r;
    if (status != 0) {
        h->fail_target = 1; /* the name does not resolve: not the proxy's fault */
        r = hop_fail(h, FERRY_FAIL_HANDSHAKE, FERR_RESOLVE_FAILED);
    } else {
        r = send_addr(h, sa);
    }
    if (h->wake != NULL) {
        h->wake(h, r);
    }
}

static int s4_start(struct hop *h)
{
    struct in_addr a4;
    struct in6_addr a6;
    if (inet_pton(AF_INET, h->host, &a4) == 1) {
        send_request(h, (const unsigned char *)&a4, NULL);
        return UP_AGAIN;
    }
    if (inet_pton(AF_INET6, h->host, &a6) == 1) {
        return no_ipv4(h);
    }
    struct sockaddr_storage ss;
    socklen_t sl;
    if (resolve_cached(h->host, h->port, &ss, &sl)) {
        return send_addr(h, (const struct sockaddr *)&ss);
    }
    if (h->wake == NULL) {
        h->fail_target = 1;
        return hop_fail(h, FERRY_FAIL_HANDSHAKE, FERR_RESOLVE_FAILED);
    }
    h->priv.s4.step = S4_LOOKUP;
    h->priv.s4.rr = resolve_start(h->host, h->port, on_resolved, h);
    if (h->priv.s4.rr == NULL) {
        return hop_fail(h, FERRY_FAIL_HANDSHAKE, FERR_RESOLVE_FAILED);
    }
    return UP_AGAIN;
}

/* Names go to the proxy: 0.0.0.1 says "the name follows the user id". */
static int s4a_start(struct hop *h)
{
    struct in_addr a4;
    struct in6_addr a6;
    if (inet_pton(AF_INET, h->host, &a4) == 1) {
        send_request(h, (const unsigned char *)&a4, NULL);
        return UP_AGAIN;
    }
    if (inet_pton(AF_INET6, h->host, &a6) == 1) {
        return no_ipv4(h);
    }
    static const unsigned char marker[4] = { 0, 0, 0, 1 };
    send_request(h, marker, h->host);
    return UP_AGAIN;
}

static int s4_input(struct hop *h)
{
    if (h->priv.s4.step != S4_REPLY) {
        /* Bytes before our request: the proxy speaks first, not SOCKS4. */
        return buf_empty(&h->leg->in) ? UP_AGAIN
                                      : hop_fail(h, FERRY_FAIL_HANDSHAKE, FERR_HANDSHAKE_FAILED);
    }
    const unsigned char *b = (const unsigned char *)buf_head(&h->leg->in);
    if (buf_len(&h->leg->in) < S4_REPLY_LEN) {
        return UP_AGAIN;
    }
    /* VN is 0; some proxies echo 4. */
    if (b[0] != 0 && b[0] != 4) {
        return hop_fail(h, FERRY_FAIL_HANDSHAKE, FERR_HANDSHAKE_FAILED);
    }
    switch (b[1]) {
    case 90: /* granted */
        buf_consume(&h->leg->in, S4_REPLY_LEN);
        return UP_DONE;
    case 91: /* rejected or failed: the proxy could not reach the destination */
        h->fail_target = 1;
        return hop_fail(h, FERRY_FAIL_HANDSHAKE, FERR_TARGET_REFUSED);
    case 92: /* the proxy could not reach our identd */
    case 93: /* identd and the user id disagree */
        return hop_fail(h, FERRY_FAIL_AUTH, FERR_UPSTREAM_AUTH);
    default:
        return hop_fail(h, FERRY_FAIL_HANDSHAKE, FERR_HANDSHAKE_FAILED);
    }
}

static void s4_fini(struct hop *h)
{
    if (h->priv.s4.rr != NULL) {
        resolve_cancel(h->priv.s4.rr);
        h->priv.s4.rr = NULL;
    }
}

/* A request for 0.0.0.0 port 0: every SOCKS4 proxy answers it at once
 * (with a refusal) without relaying anything. */
static void s4_hello(struct hop *h)
{
    static const unsigned char req[] = { 4, 1, 0, 0, 0, 0, 0, 0, 0 };
    buf_append(&h->leg->out, req, sizeof(req));
}

static int s4_hello_input(struct hop *h)
{
    const unsigned char *b = (const unsigned char *)buf_head(&h->leg->in);
    if (buf_len(&h->leg->in) < 2) {
        return UP_AGAIN;
    }
    if ((b[0] != 0 && b[0] != 4) || b[1] < 90 || b[1] > 93) {
        return hop_fail(h, FERRY_FAIL_HANDSHAKE, FERR_HANDSHAKE_FAILED);
    }
    return UP_DONE;
}

const struct upstream_ops up_socks4 = {
    .name = "socks4",
    .start = s4_start,
    .input = s4_input,
    .fini = s4_fini,
    .hello = s4_hello,
    .hello_input = s4_hello_input,
    .hello_what = "a SOCKS4 request",
};

const struct upstream_ops up_socks4a = {
    .name = "socks4a",
    .start = s4a_start,
    .input = s4_input,
    .fini = s4_fini,
    .hello = s4_hello,
    .hello_input = s4_hello_input,
    .hello_what = "a SOCKS4 request",
};
