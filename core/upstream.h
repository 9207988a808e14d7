/* upstream.h - how a connection reaches its destination: one connector
 * (ops table) per upstream protocol, chosen by the proxy's scheme in one
 * table (upstream.c).
 *
 * A connector works on a struct hop: one attempt to make the socket of
 * a leg (TCP up, to the first hop) ready for the request or the tunnel.
 * A client connection embeds one hop per attempt; a probe drives a bare
 * leg and a hop of its own.  Adding a protocol is one up_x.c with its
 * ops and one entry in the table. */
#ifndef FERRY_UPSTREAM_H
#define FERRY_UPSTREAM_H

#include "errors.h"
#include "ferry.h"

#include <stdint.h>

struct leg;
struct proxy;
struct http_msg;
struct resolve_req;
struct hop;

enum up_result {
    UP_DONE = 0,  /* the hop is ready for the request or the tunnel */
    UP_AGAIN = 1, /* waiting: for bytes from the upstream, or for hop.wake */
    UP_FAIL = -1  /* failed: hop.fail_kind and hop.fail_err say why */
};

/* The owner's callback for a connector that went on without a read (an
 * asynchronous lookup ended): result UP_AGAIN means bytes were queued in
 * leg->out; UP_FAIL, the attempt failed (hop.fail_*). */
typedef void (*hop_wake_fn)(struct hop *h, int result);

/* Private per-attempt state of the connectors: one member each. */
union hop_priv {
    int step;                    /* a connector that needs only a step */
    struct {
        int step;
        struct resolve_req *rr;  /* socks4: the destination's lookup */
    } s4;
};

struct hop {
    struct leg *leg;             /* ro: the socket to the first hop; in/out buffers */
    struct proxy *proxy;         /* ro: the proxy, NULL for direct */
    const char *host;            /* ro: the destination (name or literal) */
    int port;                    /* ro */
    int is_connect;              /* ro: a tunnel, not a plain request */
    struct http_msg *resp;       /* ro: where an HTTP answer is parsed */
    const struct upstream_ops *ops; /* ro: the connector of this attempt */
    hop_wake_fn wake;            /* ro: the owner's callback (may be NULL: no lookups) */
    void *owner;                 /* ro: for wake */
    union hop_priv priv;         /* private: the connector's */
    enum ferry_fail_kind fail_kind; /* set by a failing connector */
    enum ferr fail_err;
    unsigned fail_target:1;      /* the destination failed, not the proxy */
};

struct upstream_ops {
    const char *name;
    /* TCP is up: queue the handshake's first bytes in h->leg->out. */
    int (*start)(struct hop *h);
    /* Bytes arrived in h->leg->in during the handshake: consume what is ours. */
    int (*input)(struct hop *h);
    /* The attempt ends, whatever its outcome: free what start took
     * (pending lookups).  Safe to call more than once. */
    void (*fini)(struct hop *h);
    /* Probes: queue a greeting the proxy answers in its protocol without
     * relaying anything (NULL: none; a tcp check passes on connect). */
    void (*hello)(struct hop *h);
    /* The answer to hello: UP_DONE it speaks the protocol, UP_FAIL not. */
    int (*hello_input)(struct hop *h);
    /* What hello is, for probe logs: "a SOCKS5 greeting". */
    const char *hello_what;
};

/* What ferry knows about a scheme: one row per enum ferry_scheme. */
struct upstream_scheme {
    const char *name;            /* in URLs, displays and metrics */
    const struct upstream_ops *ops;
    int default_port;
    unsigned tls:1;              /* a TLS session to the proxy comes first */
    unsigned absolute:1;         /* plain requests go out in absolute form, so
                                  * one connection serves any destination */
    unsigned probe_http:1;       /* http checks: a GET to the proxy itself
                                  * (else a tunnel first, then the GET) */
    unsigned backend:1;          /* a backend (reverse proxy): the hop is the
                                  * destination, one connection serves any request */
    const char *url;             /* the scheme in displays when not name ("http"
                                  * for a backend), NULL: name */
};

/* The row of a scheme, NULL when the core has no connector for it. */
const struct upstream_scheme *upstream_scheme(unsigned scheme);
/* The connector for a proxy of this scheme (direct for FERRY_SCHEME_DIRECT);
 * NULL when none. */
const struct upstream_ops *upstream_for(unsigned scheme);
/* The scheme's name ("http", "socks5"...), "?" when unknown. */
const char *upstream_name(unsigned scheme);
/* 1 when a TLS session to the proxy comes before the connector. */
int upstream_uses_tls(unsigned scheme);
/* 1 when plain requests go out in absolute form (an HTTP proxy). */
int upstream_absolute(unsigned scheme);
/* 1 for a backend of a reverse pool (FERRY_SCHEME_BACKEND*). */
int upstream_is_backend(unsigned scheme);
/* 1 when one kept connection serves any request to this hop, whatever
 * its destination (an HTTP proxy in absolute form, a backend). */
int upstream_shared(unsigned scheme);
/* The scheme as displays show it: "http" for a plain backend. */
const char *upstream_url_name(unsigned scheme);

/* Connector helper: record why the attempt failed; returns UP_FAIL. */
static inline int hop_fail(struct hop *h, enum ferry_fail_kind kind, enum ferr e)
{
    h->fail_kind = kind;
    h->fail_err = e;
    return UP_FAIL;
}

/* Clear the outcome and private state for a new attempt. */
void hop_reset(struct hop *h);
/* End the attempt: the connector's fini. */
void hop_fini(struct hop *h);

extern const struct upstream_ops up_direct;
extern const struct upstream_ops up_http;
extern const struct upstream_ops up_socks5;
extern const struct upstream_ops up_socks4;
extern const struct upstream_ops up_socks4a;
extern const struct upstream_ops up_backend;

/* up_http.c: OPTIONS * to an HTTP server (a proxy or a backend), any
 * HTTP answer passes: the hello of tcp probes that need an answer. */
void up_http_hello(struct hop *h);
int up_http_hello_input(struct hop *h);

#endif
