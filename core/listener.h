/* listener.h - listening sockets and inbound authentication. */
#ifndef FERRY_LISTENER_H
#define FERRY_LISTENER_H

#include "loop.h"

#include <sys/socket.h>

#define LISTENER_MAX 64
#define LISTENER_MAX_USERS 256
#define LISTENER_AUTH_FAIL_LIMIT 10     /* defaults of auth_fail_limit ... */
#define LISTENER_AUTH_FAIL_WINDOW 60.0  /* ... and auth_fail_window (config.lua's too) */

struct ctl;
struct inbound_ops;
struct ssl_ctx_st;

struct listener_user {
    char *token; /* ro: base64("user:pass"), compared in constant time */
    char *name;  /* ro: user name, for routing and logs */
};

struct listener {
    char *name;             /* ro */
    int fd;                 /* ro: -1 once closed */
    struct sockaddr_storage addr; /* ro: bound address, for reload matching */
    int conns;              /* ro: connections that point at this struct */
    const struct inbound_ops *in; /* ro: what it speaks (inbound.h); a reload may
                                  * change it for the connections still to come */
    ev_io io;               /* private */
    ev_timer retry;         /* private: re-enables accept after EMFILE */
    struct listener_user users[LISTENER_MAX_USERS]; /* ro */
    int nusers;             /* ro: 0 = no auth */
    unsigned open:1;        /* ro: allowed to be an open proxy */
    unsigned emfile_logged:1; /* private */
    unsigned closed:1;      /* ro: closed by a reload; freed when conns reach 0 */
    char *path;             /* ro: unix socket path (unlinked at close), or NULL */
    struct ssl_ctx_st *tls_ctx; /* ro: TLS listener's server context, or NULL (plain);
                                 * replaced by a reload, each SSL holds its own ref */
    unsigned auth_fail_limit; /* ro: wrong credentials per window that block a client */
    double auth_fail_window;  /* ro: seconds of that window, and of the block */
    /* Reverse listeners (conn_reverse.c, ferry_listener_set_reverse). */
    int rev_pool;             /* ro: pool index of its own pool, 0: none (404) */
    unsigned rev_fwd;         /* ro: FERRY_FWD_* headers added toward backends */
    unsigned rev_trust:1;     /* ro: incoming X-Forwarded-* are kept and appended to */
};

struct listener *listener_get(int idx);
/* 1 when l serves the admin plane (admin.c), not proxying. */
int listener_is_admin(const struct listener *l);
int listener_count(void);
/* Match a Proxy-Authorization value; returns the user name or NULL. */
const char *listener_auth(struct listener *l, const char *value, size_t len);
/* A "USER-key-value...:pass" credential (ctl.c's grammar, e.g.
 * alice-session-K-region-eu): authenticates USER (any user when the
 * listener has none) and merges the parameters into k; the user name
 * ("" without users) or NULL (k untouched). */
const char *listener_auth_ctl(struct listener *l, const char *value, size_t len, struct ctl *k);
/* A connection of l ended: a listener closed by a reload goes with its last one. */
void listener_conn_gone(struct listener *l);
/* Stop accepting on the data plane only (drain); admin listeners stay. */
void listener_stop_proxying(void);
/* Connections of data-plane listeners, closed-by-reload ones included. */
int listener_proxy_conns(void);
/* Stop accepting; the structs stay, since connections still point at them. */
void listener_stop_all(void);
/* Free everything: only once no connection is left. */
void listener_close_all(void);

#endif
