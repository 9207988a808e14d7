/* up_http.c - an HTTP proxy: CONNECT for tunnels; plain requests need no
 * handshake (they go out in absolute form, see conn_write_request_head). */
#include "conn.h"
#include "proxy.h"
#include "upstream.h"

#include <stdio.h>
#include <string.h>

static int http_start(struct conn *c)
{
    if (!c->is_connect) {
        return UP_DONE;
    }
    char line[HOST_MAX_LEN * 2 + 64];
    int v6 = strchr(c->host, ':') != NULL;
    int n = snprintf(line, sizeof(line),
                     v6 ? "CONNECT [%s]:%d HTTP/1.1\r\nHost: [%s]:%d\r\n"
                        : "CONNECT %s:%d HTTP/1.1\r\nHost: %s:%d\r\n",
                     c->host, c->port, c->host, c->port);
    buf_append(&c->up.out, line, (size_t)n);
    struct proxy *p = c->proxy;
    if (p->auth_header != NULL) {
        buf_append(&c->up.out, p->auth_header, strlen(p->auth_header));
    }
    if (p->extra_headers != NULL) {
        buf_append(&c->up.out, p->extra_headers, strlen(p->extra_headers));
    }
    buf_append(&c->up.out, "\r\n", 2);
    return UP_AGAIN;
}

static int fail(struct conn *c, enum ferry_fail_kind kind, enum ferr e)
{
    c->fail_kind = kind;
    c->fail_err = e;
    return UP_FAIL;
}

static int http_input(struct conn *c)
{
    const char *base = buf_head(&c->up.in);
    size_t hl = http_head_len(base, buf_len(&c->up.in));
    if (hl == 0) {
        if (buf_room(&c->up.in) == 0) {
            return fail(c, FERRY_FAIL_HANDSHAKE, FERR_HANDSHAKE_FAILED);
        }
        return UP_AGAIN;
    }
    /* The answer to CONNECT has no body we care about: parse as to HEAD. */
    if (http_parse_response(&c->resp, base, hl, 1) != HTTP_PARSE_OK) {
        return fail(c, FERRY_FAIL_HANDSHAKE, FERR_HANDSHAKE_FAILED);
    }
    int st = c->resp.status;
    if (st == 407) {
        return fail(c, FERRY_FAIL_AUTH, FERR_UPSTREAM_AUTH);
    }
    if (st == 502 || st == 504) {
        /* Bad Gateway / Gateway Timeout to CONNECT: the proxy could not
         * reach the destination.  Not the proxy's failure. */
        c->fail_target = 1;
        return fail(c, FERRY_FAIL_HTTP5XX, FERR_TARGET_REFUSED);
    }
    if (st < 200 || st > 299) {
        return fail(c, st >= 500 ? FERRY_FAIL_HTTP5XX : FERRY_FAIL_HANDSHAKE,
                    FERR_HANDSHAKE_FAILED);
    }
    /* Anything after the head already belongs to the tunnel. */
    buf_consume(&c->up.in, hl);
    return UP_DONE;
}

const struct upstream_ops up_http = { "http", http_start, http_input };
