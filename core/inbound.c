/* inbound.c - listener protocols by name, what SOCKS handshakes share,
 * and the mixed listener that tells them apart. */
#include "inbound.h"
#include "conn.h"

#include <stddef.h>
#include <stdio.h>
#include <string.h>

static const struct inbound_ops *const all[] = {
    &inbound_http, &inbound_admin, &inbound_socks5, &inbound_socks4, &inbound_mixed,
    &inbound_reverse,
};

const struct inbound_ops *inbound_by_name(const char *name)
{
    for (size_t i = 0; name != NULL && i < sizeof(all) / sizeof(all[0]); i++) {
        if (strcmp(all[i]->name, name) == 0) {
            return all[i];
        }
    }
    return NULL;
}

void inbound_handshake_start(struct conn *c, const char *proto)
{
    c->in_step = 0;
    c->t_start = loop_now();
    conn_new_cid(c);
    /* The log names the protocol until a request names its method. */
    snprintf(c->method, sizeof(c->method), "%s", proto);
    /* The whole handshake, not each message, must fit in the head time. */
    conn_arm(c, timeouts.client_head);
}

void inbound_route_tunnel(struct conn *c)
{
    c->is_connect = 1;
    c->req.method = HTTP_CONNECT; /* never idempotent: no replay once sent */
    snprintf(c->method, sizeof(c->method), "CONNECT");
    c->head_len = 0;
    conn_set_path(c, NULL, 0);
    c->deadline = c->t_start + timeouts.request;
    conn_route(c);
}

int inbound_looks_http(const struct conn *c)
{
    if (buf_empty(&c->cli.in)) {
        return 0;
    }
    unsigned char b = (unsigned char)buf_head(&c->cli.in)[0];
    return (b >= 'A' && b <= 'Z') || (b >= 'a' && b <= 'z');
}

/* mixed: the first byte tells SOCKS5 (5), SOCKS4 (4) and HTTP apart; the
 * connection then belongs to that protocol for good. */
static void mixed_start(struct conn *c)
{
    conn_arm(c, timeouts.client_head);
}

static void mixed_input(struct conn *c)
{
    if (buf_empty(&c->cli.in)) {
        return;
    }
    unsigned char b = (unsigned char)buf_head(&c->cli.in)[0];
    c->in = b == 5 ? &inbound_socks5 : b == 4 ? &inbound_socks4 : &inbound_http;
    c->in->start(c);
    c->in->input(c);
}

/* Failures come only once a protocol was chosen; a timeout before
 * the first byte closes without a word. */
static void mixed_answer_ok(struct conn *c)
{
    (void)c;
}

static void mixed_answer_fail(struct conn *c, enum ferr e)
{
    (void)c;
    (void)e;
}

const struct inbound_ops inbound_mixed = {
    .name = "mixed",
    .start = mixed_start,
    .input = mixed_input,
    .answer_ok = mixed_answer_ok,
    .answer_fail = mixed_answer_fail,
    .fini = NULL,
};
