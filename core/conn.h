/* conn.h - one client connection and everything it is doing.
 *
 * A connection reads requests, asks Lua where each one goes, reaches
 * the destination through a connector, and relays.  Watcher interest is
 * never stored as flags: conn_update_io() derives it from the state and
 * the buffers after every callback. */
#ifndef FERRY_CONN_H
#define FERRY_CONN_H

#include "buf.h"
#include "ctl.h"
#include "errors.h"
#include "ferry.h"
#include "http.h"
#include "loop.h"
#include "upstream.h"

#include <stdint.h>
#include <sys/socket.h>

#define CONN_BUF_SIZE 16384
/* A tunnel pipe starts at the kernel's default size; one that fills by
 * bytes (bulk traffic) asks to grow to this, within ferry's share of the
 * user's pipe quota.  The kernel may grant less. */
#define TUNNEL_PIPE_SIZE (1024 * 1024)
#define HOST_MAX_LEN 255
/* The longest c->path kept for logs and route(), with its NUL. */
#define CONN_PATH_MAX 512
/* Priority of a connection's socket watchers, above its timer's (conn_new). */
#define CONN_IO_PRIORITY 1
/* A pump-only event fed to the client watcher (libev's custom bit). */
#define CONN_EV_PUMP EV_CUSTOM

enum conn_state {
    CS_HEAD = 0,  /* waiting for a request head (new or keep-alive) */
    CS_RESOLVE,   /* looking up the first hop's address */
    CS_CONNECT,   /* TCP connect to the first hop in progress */
    CS_HANDSHAKE, /* connector handshake: HTTP CONNECT or SOCKS5 */
    CS_BACKOFF,   /* waiting before the next attempt on another proxy */
    CS_QUEUE,     /* waiting for a connection slot of the upstream (uppool.c) */
    CS_RATE,      /* waiting for a rate-budget token of the exchange (rate.c) */
    CS_EXCHANGE,  /* plain HTTP: request body out, response back */
    CS_TUNNEL,    /* opaque relay both ways: CONNECT or a WebSocket after 101 */
    CS_DRAIN,     /* final bytes to the client, then a lingering close */
    CS_ADMIN_OUT, /* an admin answer larger than cli.out, fed in as the client reads */
    CS_MITM_HELLO, /* intercepted CONNECT: its answer leaves, then TLS starts (intercept.c) */
    CS_CACHE_OUT,  /* an answer from the HTTP cache, fed into cli.out as the client reads */
    CS_CACHE_WAIT, /* a cache miss waiting for another request's fill of the key (coalescing) */
    CS_ADMIN_WAIT  /* an admin answer that waits for the database (admin.c) */
};

struct inbound_ops;
struct listener;
struct mitm;
struct proxy;
struct report_cap;
struct resolve_req;
struct upstream_ops;
struct upp_entry;
struct transport_ops;

/* One direction of a spliced tunnel (tunnel.c). */
struct tunnel_pipe {
    int r, w;                    /* private: pipe ends, -1 until the first read */
    unsigned cap;                /* private: bytes the kernel granted */
    unsigned in;                 /* private: bytes sitting in the pipe */
    unsigned full:1;             /* private: a splice in found no free slot */
    unsigned none:1;             /* private: no pipe to be had: use the buffer */
    unsigned grow_tried:1;       /* private: asked to grow once already */
};

/* One socket side of a connection: the client's, or the first hop's.
 * Each has its own watcher (and callback), buffers and end-of-stream
 * flags; the conn ties two legs to the request in flight. */
struct leg {
    int fd;                      /* ro: the socket, -1 when none */
    ev_io io;                    /* private: its watcher */
    struct buf in, out;          /* rw: bytes read from it, bytes to write to it */
    int ev;                      /* private: events the watcher has now */
    const struct transport_ops *tr; /* ro: how bytes cross fd (transport.h); NULL: plain */
    void *tls;                   /* private: transport_tls.c's state, or NULL */
    unsigned eof:1;              /* the peer finished sending */
    unsigned shut:1;             /* shutdown(fd, SHUT_WR) done */
};

struct conn {
    struct listener *l;          /* ro: accepted here */
    const struct inbound_ops *in; /* rw: the client's protocol (inbound.h); mixed
                                  * listeners replace theirs after the first byte */
    int in_step;                 /* private: the inbound's handshake step */
    void *in_priv;               /* private: the inbound's own state, or NULL
                                  * (freed by its fini) */
    struct leg cli;              /* the client's socket */
    struct leg up;               /* the first hop's socket (fd -1 when none) */
    ev_timer timer;              /* private: the one timeout of the conn */
    enum conn_state state;       /* rw */
    struct http_msg req;         /* rw: current request head */
    struct http_msg resp;        /* rw: current response head / handshake */

    /* The current request, copied out of the head for routing and logs. */
    char host[HOST_MAX_LEN + 1];
    int port;
    char method[24];
    char *path;                  /* path and query, truncated for logs; "" when none
                                  * (conn_set_path; heap only while a request runs) */
    char client[48];             /* client address text (INET6_ADDRSTRLEN fits) */
    char user[128];              /* inbound user, if authenticated */
    char cid[40];                /* correlation id */
    struct http_span tpath;      /* path and query within the head */
    size_t head_len;             /* request head bytes at cli.in's start */
    size_t fwd;                  /* request bytes already sent upstream */
    int is_connect;              /* CONNECT tunnel */
    int status;                  /* status sent to the client */
    const char *code;            /* FERRY code of the outcome, or NULL */
    double t_start;              /* request start */
    double t_attempt;            /* current attempt start */
    double deadline;             /* the request must end by then */
    double last_io;              /* for idle timeouts */
    double last_up, last_down;   /* last request-body / response byte moved (exchange idle) */
    double timeout;              /* idle timeout of the current state */
    unsigned long long bytes_in, bytes_out;
    unsigned served;             /* requests completed on this conn */

    /* Routing and attempts. */
    struct proxy *proxy;         /* NULL: direct */
    struct hop hop;              /* the connector's attempt on the up leg (hop_begin) */
    struct resolve_req *rr;      /* pending lookup, cancelled on close */
    uint32_t tried[FERRY_RETRIES_MAX]; /* proxies of the earlier attempts, for dispatch */
    unsigned ntried;
    unsigned attempt;
    int retries;
    double connect_timeout, first_byte_timeout;
    enum ferr last_err;          /* why the previous attempt failed */
    unsigned target_fails;       /* attempts of this request the destination failed */

    /* The upstream connection slot (uppool.c). */
    struct upp_entry *upp_entry; /* private: the upstream holding the slot or the wait */
    struct conn *upp_next;       /* private: next waiter in its queue */
    int upp_pool;                /* private: pool index the slot or wait is counted under */
    unsigned up_requests;        /* requests up.fd served before the current one */

    /* Tunnels move bytes socket -> pipe -> socket with splice(2). */
    struct tunnel_pipe pcu;      /* private: client to upstream */
    struct tunnel_pipe puc;      /* private: upstream to client */

    int refs;                    /* handlers on the stack */
    unsigned counted:1;          /* proxy_attempt_begin was called */
    unsigned closing:1;          /* free once refs drop to 0 */
    unsigned req_done:1;         /* request fully sent upstream */
    unsigned resp_head_done:1;
    unsigned resp_done:1;
    unsigned replayable:1;       /* request still whole in cli.in: may retry */
    unsigned sent_any:1;         /* response bytes reached cli.out this request */
    unsigned keep_client:1;      /* keep the client open after this response */
    unsigned upgrade:1;          /* request asks for a protocol upgrade */
    unsigned upp_slot:1;         /* private: holds a slot of upp_entry */
    unsigned upp_queued:1;       /* private: waits in upp_entry's queue */
    unsigned upp_granted:1;      /* private: a slot came while waiting */
    unsigned pooled:1;           /* this attempt runs on a kept connection: no latency sample */
    unsigned fresh_only:1;       /* the next attempt opens a fresh connection (a replay) */
    unsigned head_started:1;     /* bytes of the next head have arrived */
    unsigned metered:1;          /* routed, outcome not counted yet (metrics.c) */
    unsigned pump_again:1;       /* private: a CONN_EV_PUMP is fed to cli.io */
    unsigned dechunk:1;          /* relay a chunked response's data to a 1.0 client */
    unsigned reused:1;           /* this attempt runs on a kept upstream that has
                                  * not answered a byte yet (conn_upstream.c) */
    unsigned wrote_up:1;         /* bytes of this attempt reached the upstream socket */
    unsigned replay_head:1;      /* the head must be parsed again before it is resent */

    /* Health reporting (conn_report.c). */
    uint32_t exchange;           /* exchange id of the request, 0 = none */
    int pool;                    /* pool index of the request, 0 = direct */
    unsigned req_flags;          /* FERRY_REQ_* set by dispatch */
    struct report_cap *cap;      /* private: set only while the report waits for
                                  * the body prefix Lua wants (conn_report.c) */

    /* Per-request policy from Lua and the client (conn_http.c). */
    char session[CTL_SESSION_MAX]; /* sticky session key of the route, "" when none
                                  * (ctl_user under ctl_hdr, set by conn_route) */
    char *hdr_add;               /* header lines on_request adds, or NULL */
    size_t hdr_add_len;
    char *hdr_drop;              /* "\nname\n..." on_request drops (NUL-terminated), or NULL */

    /* Interception (intercept.c): the CONNECT this session came through,
     * NULL while the client leg is not an intercepted TLS session. */
    struct mitm *mitm;
    /* Rate budgets: the wait for a token of the exchange (rate.c). */
    struct conn *rate_prev, *rate_next; /* private: the exchange's FIFO */
    double rate_since;           /* private: when this request began waiting, 0: not yet */
    double rate_wait;            /* private: seconds to the next token (Retry-After) */
    unsigned rate_queued:1;      /* private: in the exchange's FIFO */
    unsigned rate_woken:1;       /* private: its turn came: route again */
    /* TLS origination (origin_tls.c).  A caller that hands conn_route a
     * request ferry must send over TLS (an interception of a client's
     * tunnel) sets, before conn_route: c->host and c->port (the origin),
     * c->origin_tls = 1, c->req parsed from the head at cli.in's start
     * with c->head_len, c->tpath, c->method and c->path (origin form),
     * c->is_connect = 0, c->upgrade, c->deadline.  conn_route asks the
     * runtime (req.scheme is "https"), the attempt tunnels to host:port
     * through the chosen proxy, runs the TLS handshake with the origin,
     * then sends the head in origin form; kept connections are pooled by
     * (proxy, host, port, TLS). */
    unsigned origin_tls:1;  /* this request goes to its origin over TLS ferry originates (origination) */
    /* Control parameters (ctl.c; taken in conn_http.c, used by conn_route).  ctl_user: from the user
     * name, per request on plain HTTP, for the whole connection on SOCKS;
     * a CONNECT's headers join it, so requests inside an intercepted
     * tunnel inherit them.  ctl_hdr: this request's X-Ferry-* headers,
     * which win. */
    struct ctl ctl_user;
    struct ctl ctl_hdr;
    /* Retry on ban (conn_banretry.c): a response that may be banned is
     * held in cli.out until Lua's verdict, then retried or let out. */
    struct ban_stash *ban_stash; /* private: the last banned answer, whole, or NULL */
    const char *ban_note;        /* why a ban was not retried (access line `ban`), or NULL */
    const char *ban_why;         /* why this response could not be held, or NULL */
    unsigned char ban_retry;     /* tries on other proxies a ban allows (dispatch) */
    unsigned char ban_retried;   /* tries made so far because of a ban */
    unsigned ban_hold:1;         /* cli.out holds this response until the verdict */
    unsigned ban_decided:1;      /* the verdict on the held response is in */
    unsigned ban_banned:1;       /* ... and it banned the pair */
    /* Retries with back-off and a budget (retry.c): the pool's place this
     * request holds, why each retry was made, why one was not. */
    int retry_pool;              /* private: pool index counted under (retry_counted) */
    uint16_t retry_log[FERRY_RETRIES_MAX]; /* reason of each retry (enum retry_reason),
                                  * or the status (>= 100) that was retried */
    unsigned char nretry_log;
    const char *retry_stop;      /* why a retry the pool's `on` asked for was not made
                                  * (access line `retry_stop`), or NULL */
    double retry_delay;          /* the back-off chosen for a held status retry */
    unsigned retry_counted:1;    /* private: counted in the pool's requests in flight */
    unsigned retry_taken:1;      /* private: holds a place in the pool's retry budget */
    unsigned hold_status:1;      /* the held response has a status the pool retries on */
    /* HTTP cache (conn_cache.c): the request's state in the cache of its
     * pool or listener, NULL when none applies (no cost without a cache). */
    struct conn_cache *cache;
    const char *cache_mark;      /* X-Cache of the answer / access line `cache`, or NULL */
    /* Reverse listeners (conn_reverse.c): the authority the request named
     * (its Host, or an absolute target's), sent on as Host and
     * X-Forwarded-Host; within the head at cli.in's start. */
    struct http_span rev_host;
};

struct conn *conn_new(struct listener *l, int fd, const struct sockaddr *sa);
/* Close now or, with handlers on the stack, as soon as they return. */
void conn_close(struct conn *c);
void conn_update_io(struct conn *c);
void conn_pump(struct conn *c);
void conn_arm(struct conn *c, double secs);
/* Seconds until the stalled direction of an exchange runs out of idle time. */
double conn_exchange_idle_left(const struct conn *c);
unsigned conn_count(void);
/* Copy up to CONN_PATH_MAX - 1 bytes of p as the request's c->path (n = 0: none). */
void conn_set_path(struct conn *c, const char *p, size_t n);
/* Between requests: give back every buffer and table an idle conn does not need. */
void conn_idle_trim(struct conn *c);
void conn_close_all(void);

/* conn_http.c */
/* Parse the HTTP head at cli.in's start: 1 when c->req holds it, 0 while
 * it is incomplete or after it was answered with an error. */
int conn_read_head(struct conn *c);
/* The forward proxy's input: a head, then routing (inbound_http). */
void conn_on_head(struct conn *c);
/* Give c a fresh correlation id. */
void conn_new_cid(struct conn *c);
/* Write the HTTP error answer for e to cli.out (no logging, no state). */
void conn_write_http_error(struct conn *c, enum ferr e);
int conn_exchange(struct conn *c);
void conn_fail(struct conn *c, enum ferr e);
/* conn_fail without the warn line: a summary line is written elsewhere. */
void conn_fail_quiet(struct conn *c, enum ferr e);
void conn_finish(struct conn *c);
/* The request's access line (pool, exchange, proxy and all) and its
 * count in the metrics, for plain requests and tunnels alike; code:
 * its FERRY code, NULL when it went well. */
void conn_log_done(struct conn *c, const char *code);
/* Header edits of on_request for this request (copied; bounded). */
void conn_set_header_edits(struct conn *c, const char *add, size_t add_len, const char *drop,
                           size_t drop_len);
void conn_clear_header_edits(struct conn *c);

/* conn_head.c: every head ferry writes, rebuilt from parsed spans. */
#define VIA_NAME_MAX 64
int conn_write_request_head(struct conn *c);
/* The response head for the client (base: the head in up.in); -1: no room. */
int conn_write_response_head(struct conn *c, const char *base);
/* An answer from the HTTP cache: ferry's Via for a stored response that
 * arrived as HTTP/1.minor ("Via: 1.1 ferry\r\n" into out, cap bytes), 0
 * when Via is off (http { via }, a reverse listener's forwarded.via). */
size_t conn_via_stored(const struct conn *c, int minor, char *out, size_t cap);
/* A 1xx interim response, rewritten like a final one; -1: no room. */
int conn_write_interim(struct conn *c, const char *base);
/* The 200 answer to CONNECT, with X-Ferry-Proxy when a proxy carries it. */
void conn_write_connect_ok(struct conn *c);
/* Ferry's own answer to OPTIONS (Allow) or TRACE (message/http echo). */
int conn_write_local_answer(struct conn *c);
/* Max-Forwards of the request: -1 absent, -2 not a number. */
long conn_max_forwards(const struct conn *c, const char *base);
/* A request head read and its target taken (forward or reverse): the
 * Max-Forwards rule of TRACE/OPTIONS, the upgrade flag, the deadline,
 * then routing. */
void conn_head_route(struct conn *c, const char *base);
/* 1 when the request head goes to an HTTP proxy in absolute form (not
 * inside an originated TLS session). */
int conn_up_absolute(const struct conn *c);
/* The request target as sent upstream: pre, then len bytes at path. */
void conn_target_path(const struct conn *c, const char *base, const char **pre,
                      const char **path, int *len);
/* c->path for logs and route(): the target as sent upstream. */
void conn_show_target(struct conn *c, const char *base);

/* conn_http.c: a request ferry answers itself (OPTIONS *, Max-Forwards: 0),
 * then closes. */
void conn_answer_local(struct conn *c);

/* conn_reverse.c */
/* 1 when c came to a reverse listener. */
int conn_is_reverse(const struct conn *c);
/* The answer a reverse client gets for failure e (its own codes where
 * the forward one names proxies). */
enum ferr conn_reverse_err(enum ferr e);
/* The Host a backend pool sends instead of the client's, or NULL. */
const char *conn_reverse_pool_host(int pool);
/* Free the per-pool settings (stop). */
void conn_reverse_free(void);

/* admin.c */
/* The head of a request on an admin listener is in cli.in. */
void admin_on_head(struct conn *c);
/* Feed the rest of a large answer into cli.out (state CS_ADMIN_OUT). */
void admin_pump(struct conn *c);
/* A waiting admin answer is ready, or its bound ran out (state CS_ADMIN_WAIT). */
void admin_wait_fired(struct conn *c);

/* conn_upstream.c */
void conn_route(struct conn *c);
void conn_attempt(struct conn *c);
void conn_attempt_failed(struct conn *c, enum ferry_fail_kind kind, enum ferr e);
void conn_upstream_event(struct conn *c, int revents);
void conn_upstream_ready(struct conn *c);
void conn_upstream_close(struct conn *c);
void conn_upstream_release(struct conn *c, int keep);
void conn_on_timeout(struct conn *c);

/* conn_report.c: attempt outcomes to health, breakers and Lua. */
void conn_report(struct conn *c, int ok, enum ferry_fail_kind kind, int status);
/* The response head arrived (status decides ok); may wait for the body. */
void conn_report_head(struct conn *c, const char *head, size_t len, int status);
/* Response body bytes passed to the client; done at its end. */
void conn_report_body(struct conn *c, const char *p, size_t n, int done);
/* The request ends: send a report still waiting, free the capture. */
void conn_report_flush(struct conn *c);
/* The attempt failed because of the destination, not the proxy (a SOCKS5
 * or CONNECT refusal about the target, an origin's oversized or garbled
 * response head): counted per proxy, never charged to its health,
 * its (proxy, exchange) pair or the breakers. */
void conn_report_target(struct conn *c);

/* conn_banretry.c */
/* At a final response head: 1 when it is to be held until the ban
 * verdict, 0 when it goes out as it comes, -1 to wait until cli.out
 * (an earlier response) has drained. */
int conn_ban_hold_begin(struct conn *c, int status);
/* The report of this attempt went to Lua: record its ban verdict. */
void conn_ban_verdict(struct conn *c, int banned);
/* After each exchange step: act on a verdict that came in (retry on
 * another proxy, or let the held response out).  1: the attempt was
 * replaced by a retry, the caller stops. */
int conn_ban_settle(struct conn *c);
/* Dispatch found no proxy for a retry on ban: answer the last banned
 * response when it was kept.  1 when answered. */
int conn_ban_answer_last(struct conn *c);
/* After the dispatch of a retry on ban: 1 when it chose a proxy that is
 * banned for the exchange too (all_down = "any" picks one anyway), and
 * the client was answered with the last banned answer instead. */
int conn_ban_no_other(struct conn *c);
/* The response went idle while held: 1 when a banned one was retried. */
int conn_ban_stalled(struct conn *c);
void conn_ban_reset(struct conn *c);

/* conn_cache.c */
/* Before dispatch (a listener's cache) or after it (the pool's): 1 when
 * the cache took the request (answered it, or it waits for a fill). */
int conn_cache_request(struct conn *c, int before_dispatch);
/* A final response head is parsed in c->resp (base: up.in's head of hl
 * bytes): 1 when the cache answers instead (a 304 refreshed the entry,
 * stale on error), 0 to relay it (teeing the body when it is stored). */
int conn_cache_response(struct conn *c, const char *base, size_t hl);
/* Raw response body bytes relayed to the client (framing included). */
void conn_cache_tee(struct conn *c, const char *p, size_t n);
/* The response was relayed whole: store what was teed. */
void conn_cache_complete(struct conn *c);
/* The request failed with e before any answer: 1 when a stale entry
 * answered instead (stale-if-error). */
int conn_cache_rescue(struct conn *c, enum ferr e);
/* State CS_CACHE_OUT: feed the stored answer; CS_CACHE_WAIT's timer. */
void conn_cache_pump(struct conn *c);
void conn_cache_wait_fired(struct conn *c);
/* The request is over (or failed): locks, entries, fills let go. */
void conn_cache_end(struct conn *c);
/* For the head sent upstream on a revalidation: 1 for a client field to
 * leave out; the validators to add (NULL when none). */
int conn_cache_drops(const struct conn *c, const char *name, size_t len);
const char *conn_cache_validators(const struct conn *c, size_t *len);

/* tunnel.c */
void conn_tunnel_begin(struct conn *c);
int conn_tunnel(struct conn *c);
/* Splice-mode reads; return 1 if the tunnel took the read event. */
int conn_tunnel_read_client(struct conn *c);
int conn_tunnel_read_upstream(struct conn *c);
/* Read interest of each side of a tunnel: room in its pipe or buffer. */
int conn_tunnel_can_read_client(const struct conn *c);
int conn_tunnel_can_read_upstream(const struct conn *c);
/* No pipes yet (conn_new); give them back (empty ones are reused). */
void conn_tunnel_init(struct conn *c);
void conn_tunnel_close_pipes(struct conn *c);
/* Close the pipes kept for reuse (at stop). */
void conn_tunnel_pool_free(void);

/* Global timeouts, seconds. */
struct timeouts {
    double client_head, connect, first_byte, idle, keepalive, request;
    double upstream_idle; /* an upstream kept open between requests */
};
extern struct timeouts timeouts;

#endif
