/* upstream.h - how a connection reaches its destination: one vtable per
 * upstream protocol (direct, HTTP proxy, SOCKS5 proxy). */
#ifndef FERRY_UPSTREAM_H
#define FERRY_UPSTREAM_H

struct conn;

enum up_result {
    UP_DONE = 0,  /* the hop is ready for the request or the tunnel */
    UP_AGAIN = 1, /* waiting for more bytes from the upstream */
    UP_FAIL = -1  /* failed: conn.fail_kind and conn.fail_err say why */
};

struct upstream_ops {
    const char *name;
    /* TCP is up: queue the handshake's first bytes in c->up.out. */
    int (*start)(struct conn *c);
    /* Bytes arrived in c->up.in during the handshake: consume what is ours. */
    int (*input)(struct conn *c);
};

extern const struct upstream_ops up_direct;
extern const struct upstream_ops up_http;
extern const struct upstream_ops up_socks5;

#endif
