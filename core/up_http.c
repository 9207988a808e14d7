/* up_http.c - an HTTP proxy: CONNECT for tunnels; plain requests need no
 * handshake (they go out in absolute form, see conn_write_request_head). */
#include "conn.h"
#include "proxy.h"
#include "upstream.h"

#include <stdio.h>
#include <string.h>

static void append_proxy_headers(struct hop *h)
{
    const struct proxy *p = h->proxy;
    if (p->auth_header != NULL) {
        buf_append(&h->leg->out, p->auth_header, strlen(p->auth_header));
    }
    if (p->extra_headers != NULL) {
        buf_append(&h->leg->out, p->extra_headers, strlen(p->extra_headers));
    }
}

static int http_start(struct hop *h)
{
    if (!h->is_connect) {
        return UP_DONE;
    }
    char line[HOST_MAX_LEN * 2 + 64];
    int v6 = strchr(h->host, ':') != NULL;
    int n = snprintf(line, sizeof(line),
                     v6 ? "CONNECT [%s]:%d HTTP/1.1\r\nHost: [%s]:%d\r\n"
                        : "CONNECT %s:%d HTTP/1.1\r\nHost: %s:%d\r\n",
                     h->host, h->port, h->host, h->port);
    if (n < 0 || (size_t)n >= sizeof(line)) {
        return hop_fail(h, FERRY_FAIL_HANDSHAKE, FERR_HANDSHAKE_FAILED);
    }
    buf_append(&h->leg->out, line, (size_t)n);
    append_proxy_headers(h);
    buf_append(&h->leg->out, "\r\n", 2);
    return UP_AGAIN;
}

static int http_input(struct hop *h)
{
    struct buf *in = &h->leg->in;
    const char *base = buf_head(in);
    size_t hl = http_head_len(base, buf_len(in));
    if (hl == 0) {
        if (buf_room(in) == 0) {
            return hop_fail(h, FERRY_FAIL_HANDSHAKE, FERR_HANDSHAKE_FAILED);
        }
        return UP_AGAIN;
    }
    /* The answer to CONNECT has no body we care about: parse as to HEAD. */
    if (http_parse_response(h->resp, base, hl, 1) != HTTP_PARSE_OK) {
        return hop_fail(h, FERRY_FAIL_HANDSHAKE, FERR_HANDSHAKE_FAILED);
    }
    int st = h->resp->status;
    if (st == 407) {
        return hop_fail(h, FERRY_FAIL_AUTH, FERR_UPSTREAM_AUTH);
    }
    if (st == 502 || st == 504) {
        /* Bad Gateway / Gateway Timeout to CONNECT: the proxy could not
         * reach the destination.  Not the proxy's failure. */
        h->fail_target = 1;
        return hop_fail(h, FERRY_FAIL_HTTP5XX, FERR_TARGET_REFUSED);
    }
    if (st < 200 || st > 299) {
        return hop_fail(h, st >= 500 ? FERRY_FAIL_HTTP5XX : FERRY_FAIL_HANDSHAKE,
                        FERR_HANDSHAKE_FAILED);
    }
    /* Anything after the head already belongs to the tunnel. */
    buf_consume(in, hl);
    return UP_DONE;
}

/* A request the proxy answers itself (RFC 9110 9.3.7: OPTIONS * addresses
 * the server, not a resource). */
void up_http_hello(struct hop *h)
{
    const struct proxy *p = h->proxy;
    char line[HOST_MAX_LEN + 128];
    const char *lb = strchr(p->host, ':') != NULL ? "[" : "";
    int n = snprintf(line, sizeof(line),
                     "OPTIONS * HTTP/1.1\r\nHost: %s%s%s:%d\r\nUser-Agent: ferry-probe\r\n"
                     "Connection: close\r\n\r\n",
                     lb, p->host, *lb != '\0' ? "]" : "", p->port);
    if (n < 0 || (size_t)n >= sizeof(line)) {
        n = snprintf(line, sizeof(line), "OPTIONS * HTTP/1.1\r\nHost: proxy\r\n"
                                         "Connection: close\r\n\r\n");
    }
    buf_append(&h->leg->out, line, (size_t)n);
}

/* Any status: the proxy is running and speaks HTTP. */
int up_http_hello_input(struct hop *h)
{
    struct buf *in = &h->leg->in;
    const char *base = buf_head(in);
    size_t hl = http_head_len(base, buf_len(in));
    if (hl == 0) {
        return buf_room(in) == 0 ? hop_fail(h, FERRY_FAIL_HANDSHAKE, FERR_HEAD_TOO_LARGE)
                                 : UP_AGAIN;
    }
    if (http_parse_response(h->resp, base, hl, 1) != HTTP_PARSE_OK) {
        return hop_fail(h, FERRY_FAIL_HANDSHAKE, FERR_BAD_RESPONSE);
    }
    return UP_DONE;
}

const struct upstream_ops up_http = {
    .name = "http",
    .start = http_start,
    .input = http_input,
    .hello = up_http_hello,
    .hello_input = up_http_hello_input,
    .hello_what = "an HTTP request",
};
