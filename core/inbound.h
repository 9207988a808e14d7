/* inbound.h - what a listener speaks to its clients.
 *
 * Each listener kind is one const table of these operations; a
 * connection points at its listener's table (c->in) and the core calls
 * through it for everything that depends on the client's protocol:
 * reading the request (an HTTP head, a SOCKS handshake) and answering
 * once the route is ready or has failed.  Routing, connectors, relaying
 * and accounting are shared by every kind.
 *
 * Adding a protocol: one new file exporting a table, and its name in
 * inbound_by_name (inbound.c). */
#ifndef FERRY_INBOUND_H
#define FERRY_INBOUND_H

#include "errors.h"

struct conn;

struct inbound_ops {
    const char *name; /* ro: the listener's protocol in the config */
    /* A connection was accepted (state CS_HEAD, no byte read yet). */
    void (*start)(struct conn *c);
    /* Bytes arrived in cli.in while the conn is in CS_HEAD: take what is
     * complete (a head, a handshake message) and move on; wait for more
     * otherwise.  Ends by routing (conn_route), answering, or waiting. */
    void (*input)(struct conn *c);
    /* The tunnel to c->host:c->port is up: tell the client it may talk. */
    void (*answer_ok)(struct conn *c);
    /* Write the client's answer to failure e (conn_fail does the logging,
     * the accounting and the draining close around it). */
    void (*answer_fail)(struct conn *c, enum ferr e);
    /* Free what the protocol keeps per connection (conn_destroy); NULL: nothing. */
    void (*fini)(struct conn *c);
};

extern const struct inbound_ops inbound_http;   /* forward proxy (conn_http.c) */
extern const struct inbound_ops inbound_admin;  /* admin plane (admin.c) */
extern const struct inbound_ops inbound_socks5; /* RFC 1928/1929 (inbound_socks5.c) */
extern const struct inbound_ops inbound_socks4; /* SOCKS4 and 4a (inbound_socks4.c) */
extern const struct inbound_ops inbound_mixed;  /* first byte picks one (inbound.c) */
extern const struct inbound_ops inbound_reverse; /* reverse proxy (conn_reverse.c) */

/* SOCKS handshakes (inbound.c): a fresh request at accept, its clock and
 * id; proto names it in logs until the request is read. */
void inbound_handshake_start(struct conn *c, const char *proto);
/* c->host and c->port are set: route it as a CONNECT would be. */
void inbound_route_tunnel(struct conn *c);

/* 1 when cli.in starts with a letter, as an HTTP method does: a SOCKS
 * listener then answers its version error in HTTP, for people to read. */
int inbound_looks_http(const struct conn *c);
/* The SOCKS5 REP code (RFC 1928 section 6) that answers failure e. */
unsigned char inbound_socks5_rep(enum ferr e);

/* The table of a config protocol name, or NULL when there is none. */
const struct inbound_ops *inbound_by_name(const char *name);

#endif
