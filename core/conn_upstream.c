/* conn_upstream.c - attempts: choose, resolve, connect, handshake, retry. */
#include "bridge.h"
#include "cache.h"
#include "conn.h"
#include "inbound.h"
#include "intercept.h"
#include "listener.h"
#include "log.h"
#include "metrics.h"
#include "origin_tls.h"
#include "proxy.h"
#include "rate.h"
#include "resolve.h"
#include "retry.h"
#include "transport.h"
#include "upstream.h"
#include "uppool.h"

#include <errno.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

static double min_d(double a, double b)
{
    return a < b ? a : b;
}

void conn_upstream_close(struct conn *c)
{
    hop_fini(&c->hop);
    if (c->rr != NULL) {
        resolve_cancel(c->rr);
        c->rr = NULL;
    }
    if (c->up.fd >= 0) {
        ev_io_stop(loop, &c->up.io);
        c->up.ev = 0;
        leg_tr_free(&c->up);
        close(c->up.fd);
        c->up.fd = -1;
        c->up.io.fd = -1;
    }
    uppool_drop(c);
    rate_drop(c);
    if (c->counted && c->proxy != NULL) {
        proxy_attempt_end(c->proxy);
    }
    c->counted = 0;
    c->up.eof = 0;
    c->up.shut = 0;
    buf_consume(&c->up.in, buf_len(&c->up.in));
    buf_consume(&c->up.out, buf_len(&c->up.out));
}

/* The response is complete: the connection goes back to its upstream's
 * pool (keep) or is closed.  Either way the conn holds none after. */
void conn_upstream_release(struct conn *c, int keep)
{
    if (c->counted && c->proxy != NULL) {
        proxy_attempt_end(c->proxy);
    }
    c->counted = 0;
    uppool_release(c, keep && !c->is_connect && !c->upgrade);
    conn_upstream_close(c);
}

/* The request's control parameters: its headers over its user name's.
 * -1: an invalid value, answered FERRY-1060. */
static int route_ctl(struct conn *c, struct ctl *eff)
{
    *eff = c->ctl_user;
    ctl_merge(eff, &c->ctl_hdr);
    memcpy(c->session, eff->session, sizeof(c->session));
    return eff->bad ? -1 : 0;
}

void conn_route(struct conn *c)
{
    c->metered = 1;
    struct ctl eff;
    if (route_ctl(c, &eff) < 0) {
        conn_fail(c, FERR_CTL_BAD);
        return;
    }
    /* A listener's cache (or a reverse listener's pool's, without
     * route()) answers before any Lua runs. */
    if (c->cache == NULL && c->attempt == 0 &&
        (cache_listeners_any() || (c->l->rev_pool > 0 && cache_fixed_sites())) &&
        conn_cache_request(c, 1)) {
        return;
    }
    c->fresh_only = 0; /* only a replay, which starts its attempt itself, sets it */
    struct ferry_req r;
    memset(&r, 0, sizeof(r));
    r.host = c->host;
    r.host_len = (uint32_t)strlen(c->host);
    r.port = (uint32_t)c->port;
    r.method = c->method;
    r.method_len = (uint32_t)strlen(c->method);
    r.path = c->path;
    r.path_len = (uint32_t)strlen(c->path);
    r.client = c->client;
    r.client_len = (uint32_t)strlen(c->client);
    if (c->user[0] != '\0') {
        r.user = c->user;
        r.user_len = (uint32_t)strlen(c->user);
    }
    r.listener = c->l->name;
    r.listener_len = (uint32_t)strlen(c->l->name);
    r.is_connect = (uint32_t)c->is_connect;
    r.attempt = c->attempt;
    r.ntried = c->ntried;
    memcpy(r.tried, c->tried, sizeof(r.tried));
    if (c->session[0] != '\0') {
        r.session = c->session;
        r.session_len = (uint32_t)strlen(c->session);
    }
    if (eff.region[0] != '\0') {
        r.region = eff.region;
        r.region_len = (uint32_t)strlen(eff.region);
    }
    if (eff.pool[0] != '\0') {
        r.pool_header = eff.pool;
        r.pool_header_len = (uint32_t)strlen(eff.pool);
    }
    r.rotate = eff.rotate;
    r.head = buf_head(&c->cli.in);
    r.head_len = (uint32_t)c->head_len;
    r.retries = -1;
    r.pool = -1; /* until the runtime chooses one (0 = direct) */
    r.flags = c->origin_tls ? FERRY_REQ_TLS : 0;
    int reverse = conn_is_reverse(c);
    if (reverse) {
        r.flags |= FERRY_REQ_REVERSE | (c->l->tls_ctx != NULL ? FERRY_REQ_CLIENT_TLS : 0);
        r.site_pool = c->l->rev_pool;
    }
    if (c->is_connect && !conn_intercept_possible(c)) {
        r.flags |= FERRY_REQ_NO_INTERCEPT;
    }
    int64_t id = bridge_dispatch(&r);
    if (id > 0) {
        /* A user name's rotate is spent by the first route that chose a
         * proxy: on plain HTTP each request brings its own; on SOCKS and
         * in a tunnel (whose CONNECT ferry may answer itself) it moves
         * the pin once. */
        c->ctl_user.rotate = c->ctl_user.rotate_set = 0;
    }
    c->exchange = r.exchange;
    c->pool = r.pool;
    c->req_flags = r.flags;
    if ((r.flags & FERRY_REQ_TLS) && !c->origin_tls && !c->is_connect && id >= 0) {
        /* The exchange's upgrade_tls: http:// goes out as https://. */
        c->origin_tls = 1;
        if (c->port == 80) {
            c->port = 443;
        }
    }
    conn_set_header_edits(c, r.add_headers, r.add_headers_len, r.drop_headers,
                          r.drop_headers_len);
    if (id == BRIDGE_RATE) {
        rate_wait(c, r.rate_wait); /* queued, or answered 429 */
        return;
    }
    rate_routed(c);
    if (id < 0 && c->attempt > 0 && conn_ban_answer_last(c)) {
        return; /* every proxy left is banned: the last banned answer */
    }
    if (id == BRIDGE_NO_PROXY && c->attempt > 0) {
        /* Every proxy was tried: the client hears why the last one failed. */
        conn_fail(c, c->last_err);
        return;
    }
    if (id < 0) {
        enum ferr e = id == BRIDGE_DENY ? FERR_DENIED
                    : id == BRIDGE_NO_PROXY ? FERR_NO_PROXY
                    : id == BRIDGE_ALL_DOWN ? FERR_ALL_DOWN
                    : id == FERRY_DISPATCH_POOL_REFUSED ? FERR_POOL_REFUSED
                    : id == FERRY_DISPATCH_POOL_UNKNOWN ? FERR_POOL_UNKNOWN
                    : id == FERRY_DISPATCH_NO_REGION ? FERR_NO_REGION
                    : id == FERRY_DISPATCH_NO_SITE ? FERR_REV_NO_SITE
                    : id == FERRY_DISPATCH_NOT_BACKENDS ? FERR_REV_NOT_BACKENDS : FERR_ROUTE_ERROR;
        conn_fail(c, e);
        return;
    }
    if (c->is_connect && (r.flags & FERRY_REQ_INTERCEPT)) {
        conn_intercept_begin(c); /* ferry answers it and reads the requests inside */
        return;
    }
    c->proxy = id > 0 ? proxy_by_id((uint32_t)id) : NULL;
    if (id > 0 && c->proxy == NULL) {
        conn_fail(c, FERR_ROUTE_ERROR);
        return;
    }
    if (reverse && (c->proxy == NULL || !upstream_is_backend(c->proxy->pub.scheme))) {
        /* A reverse request never goes direct to its Host, nor through a proxy. */
        conn_fail(c, FERR_REV_NOT_BACKENDS);
        return;
    }
    if (conn_ban_no_other(c)) {
        return; /* a retry on ban found only banned proxies: the last answer */
    }
    if (c->attempt == 0) {
        c->ban_retry = (unsigned char)(r.ban_retry > 0 && r.ban_retry <= FERRY_RETRIES_MAX
                                           ? r.ban_retry : 0);
        int retries = r.retries < 0 ? 2 : r.retries;
        c->retries = retries < FERRY_RETRIES_MAX ? retries : FERRY_RETRIES_MAX;
        c->connect_timeout = r.connect_timeout_ms > 0 ? r.connect_timeout_ms / 1000.0
                                                      : timeouts.connect;
        c->first_byte_timeout = r.first_byte_timeout_ms > 0 ? r.first_byte_timeout_ms / 1000.0
                                                            : timeouts.first_byte;
        /* The pool's cache, once route chose the pool. */
        if (c->cache == NULL && cache_of_pool(c->pool) != NULL && conn_cache_request(c, 0)) {
            return;
        }
    }
    if (c->proxy != NULL && c->pool > 0) {
        retry_request_begin(c, c->pool); /* the pool's retry budget counts it */
    }
    conn_attempt(c);
}

static void connect_to(struct conn *c, const struct sockaddr *sa, socklen_t len);

static void on_resolved(void *arg, int status, const struct sockaddr *sa, socklen_t len)
{
    struct conn *c = arg;
    c->rr = NULL;
    c->refs++;
    if (status != 0) {
        struct log_ctx ctx = { .cid = c->cid, .listener = c->l->name };
        log_event(LOG_WARN, "FERRY-3004", &ctx, "resolve %s: %s",
                  c->proxy != NULL ? c->proxy->host : c->host, resolve_strerror(status));
        if (c->proxy != NULL) {
            conn_attempt_failed(c, FERRY_FAIL_REFUSED, FERR_RESOLVE_FAILED);
        } else {
            conn_fail(c, FERR_RESOLVE_FAILED);
        }
    } else {
        connect_to(c, sa, len);
    }
    if (!c->closing) {
        conn_pump(c);
    }
    c->refs--;
    if (c->closing) {
        conn_close(c);
    }
}

static void attempt_start(struct conn *c);

/* An attempt on a kept upstream failed before its first response byte:
 * the upstream most likely closed the idle connection while the request
 * was on its way (a keep-alive answer without a keep-alive peer).  That
 * says nothing about the proxy's health, so the same hop is tried again,
 * once, on a fresh connection: no failure is charged, no retry spent, no
 * proxy marked tried.  Only when the request may be sent twice: it is
 * still whole in cli.in, and it is idempotent (or carries Idempotency-Key) or
 * none of its bytes reached the socket.  1: the fresh attempt is on. */
static int reuse_replay(struct conn *c, enum ferr e)
{
    if (!c->reused || e != FERR_UPSTREAM_RESET || c->sent_any || !c->replayable) {
        return 0;
    }
    int idempotent = http_method_idempotent(c->req.method) || c->req.idem_key.len > 0;
    if (!idempotent && c->wrote_up) {
        return 0; /* the upstream may have acted on it */
    }
    struct log_ctx ctx = { .cid = c->cid, .listener = c->l->name,
                           .proxy = c->proxy != NULL ? c->proxy->display : NULL };
    log_event(LOG_INFO, "FERRY-3015", &ctx, "kept upstream for %s:%d closed before answering; "
              "sending again on a fresh connection", c->host, c->port);
    metrics_reuse_retry(c->pool);
    conn_upstream_close(c);
    c->fresh_only = 1;
    c->fwd = 0;
    c->req_done = 0;
    c->replay_head = 1;
    attempt_start(c);
    return 1;
}

void conn_attempt(struct conn *c)
{
    /* The last attempt's proxy is never needed: no dispatch follows it. */
    if (c->proxy != NULL && c->ntried < FERRY_RETRIES_MAX) {
        c->tried[c->ntried++] = c->proxy->pub.id;
    }
    attempt_start(c);
}

/* A connector that went on by itself (its own lookup ended). */
static void hop_woke(struct hop *h, int result)
{
    struct conn *c = h->owner;
    c->refs++;
    if (result == UP_DONE) {
        conn_upstream_ready(c);
    } else if (result == UP_FAIL) {
        conn_attempt_failed(c, h->fail_kind, h->fail_err);
    }
    if (!c->closing) {
        conn_pump(c);
    }
    c->refs--;
    if (c->closing) {
        conn_close(c);
    }
}

/* The hop of this attempt: the connector of the proxy's scheme on the up leg. */
static void hop_begin(struct conn *c)
{
    struct hop *h = &c->hop;
    hop_fini(h);
    h->leg = &c->up;
    h->proxy = c->proxy;
    h->host = c->host;
    h->port = c->port;
    /* Originated TLS needs a byte stream to the origin: a tunnel. */
    h->is_connect = c->is_connect || c->origin_tls;
    h->resp = &c->resp;
    h->ops = upstream_for(c->proxy != NULL ? c->proxy->pub.scheme : FERRY_SCHEME_DIRECT);
    h->wake = hop_woke;
    h->owner = c;
    hop_reset(h);
}

static void attempt_go(struct conn *c, int peeked);

static void attempt_start(struct conn *c)
{
    c->t_attempt = loop_now();
    c->reused = 0;
    c->pooled = 0;
    c->wrote_up = 0;
    hop_begin(c);
    /* Tunnels and upgrades never travel on a kept connection; a replay
     * goes out on a fresh one. */
    int may_reuse = !c->is_connect && !c->upgrade && !c->fresh_only;
    if (may_reuse && c->replayable &&
        (http_method_idempotent(c->req.method) || c->req.idem_key.len > 0)) {
        may_reuse = UPPOOL_REUSE_REPLAYABLE; /* reuse_replay covers a dead one */
    }
    conn_upstream_close(c);
    switch (uppool_acquire(c, may_reuse)) {
    case UPPOOL_FULL:
        conn_fail(c, FERR_QUEUE_FULL);
        return;
    case UPPOOL_WAIT:
        c->state = CS_QUEUE;
        conn_arm(c, min_d(uppool_queue_timeout(c->pool), c->deadline - loop_now()));
        return;
    case UPPOOL_GO:
        break;
    }
    attempt_go(c, 1);
}

/* A slot is held: use the kept connection that came with it, or open one.
 * peeked: uppool_acquire has just checked the kept connection (one
 * MSG_PEEK per reuse); one handed over through the queue is checked here. */
static void attempt_go(struct conn *c, int peeked)
{
    c->t_attempt = loop_now();
    c->fresh_only = 0; /* kept until here: a waiter that replays takes no kept connection */
    if (c->up.fd >= 0 && !peeked && !uppool_alive(c->up.fd)) {
        ev_io_stop(loop, &c->up.io);
        c->up.ev = 0;
        leg_tr_free(&c->up);
        close(c->up.fd); /* hung up while handed over: the slot stays */
        c->up.fd = -1;
        c->up.io.fd = -1;
    }
    if (c->proxy != NULL) {
        proxy_attempt_begin(c->proxy);
        c->counted = 1;
    }
    if (c->up.fd >= 0) {
        c->reused = 1;
        c->pooled = 1;
        conn_upstream_ready(c);
        return;
    }
    c->up.eof = 0;
    c->up.shut = 0;
    c->up_requests = 0;
    uppool_opened(c);
    conn_arm(c, min_d(c->connect_timeout, c->deadline - loop_now()));
    struct sockaddr_storage ss;
    socklen_t len;
    const char *host = c->proxy != NULL ? c->proxy->host : c->host;
    int port = c->proxy != NULL ? c->proxy->port : c->port;
    if (c->proxy != NULL && c->proxy->has_addr) {
        memcpy(&ss, &c->proxy->addr, c->proxy->addr_len);
        connect_to(c, (struct sockaddr *)&ss, c->proxy->addr_len);
        return;
    }
    if (resolve_literal(host, port, &ss, &len) || resolve_cached(host, port, &ss, &len)) {
        connect_to(c, (struct sockaddr *)&ss, len);
        return;
    }
    c->state = CS_RESOLVE;
    c->rr = resolve_start(host, port, on_resolved, c);
    if (c->rr == NULL) {
        conn_fail(c, FERR_RESOLVE_FAILED);
    }
}

/* The connector's handshake, once the transport under it is ready. */
static void connector_start(struct conn *c)
{
    int r = c->hop.ops->start(&c->hop);
    if (r == UP_DONE) {
        conn_upstream_ready(c);
    } else if (r == UP_FAIL) {
        conn_attempt_failed(c, c->hop.fail_kind, c->hop.fail_err);
    }
}

static void tls_failed(struct conn *c, const char *why)
{
    struct log_ctx ctx = { .cid = c->cid, .listener = c->l->name,
                           .proxy = c->proxy != NULL ? c->proxy->display : NULL };
    log_event(LOG_WARN, "FERRY-3041", &ctx, "TLS with %s failed: %s",
              c->proxy != NULL ? c->proxy->display : c->host, why[0] ? why : "unknown error");
    conn_attempt_failed(c, FERRY_FAIL_TLS, FERR_UPSTREAM_TLS);
}

/* The TLS handshake with the origin failed.  A certificate that does not
 * verify, or a TLS error from the other end, is the destination's doing:
 * not charged to the proxy, retried once at most (conn_report_target).
 * A reset or close under it is a failure of the path like any other. */
static void origin_tls_failed(struct conn *c, const char *why)
{
    int kind = tls_leg_fail(&c->up);
    struct log_ctx ctx = { .cid = c->cid, .listener = c->l->name,
                           .proxy = c->proxy != NULL ? c->proxy->display : NULL };
    enum ferr e = kind == TLS_FAIL_VERIFY ? FERR_ORIGIN_VERIFY : FERR_ORIGIN_TLS;
    log_event(LOG_WARN, "FERRY-3045", &ctx,
              "TLS with origin %s:%d failed: %s", c->host, c->port,
              why != NULL && why[0] ? why : "unknown error");
    if (kind == TLS_FAIL_VERIFY) {
        origin_tls_count_verify_failure();
    }
    if (kind == TLS_FAIL_IO) {
        conn_attempt_failed(c, FERRY_FAIL_RESET, e);
        return;
    }
    c->hop.fail_target = 1;
    conn_attempt_failed(c, FERRY_FAIL_TLS, e);
}

/* The transport c->up has once its TLS session with the origin is set
 * up: inside the proxy's TLS for an https:// proxy, else on the socket. */
static const struct transport_ops *origin_transport(const struct conn *c)
{
    int nest = c->proxy != NULL && upstream_uses_tls(c->proxy->pub.scheme);
    return nest ? &transport_tls_nest : &transport_tls;
}

/* One step of a TLS handshake under the upstream watcher and the connect
 * timer (CS_HANDSHAKE): with an https:// proxy before its connector, or
 * with the origin after it (origin_tls), or both in that order. */
static void tls_step(struct conn *c)
{
    int origin = c->origin_tls && c->up.tr == origin_transport(c);
    enum tr_hs r = leg_tr(&c->up)->handshake(&c->up);
    if (r == TR_HS_DONE) {
        if (origin) {
            conn_upstream_ready(c);
        } else {
            connector_start(c);
        }
    } else if (r == TR_HS_FAIL) {
        if (origin) {
            origin_tls_failed(c, tls_leg_error(&c->up));
        } else {
            tls_failed(c, tls_leg_error(&c->up));
        }
    }
}

/* The tunnel to the origin is up: start TLS with it.  1: started (or
 * failed), the caller stops here. */
static int origin_tls_begin(struct conn *c)
{
    if (!c->origin_tls || c->up.tr == origin_transport(c)) {
        return 0; /* plain, or a kept connection already on TLS with the origin */
    }
    c->state = CS_HANDSHAKE;
    if (!buf_empty(&c->up.in)) {
        /* The origin spoke before our ClientHello: not a TLS server. */
        origin_tls_failed(c, "the origin sent bytes before the TLS handshake");
        return 1;
    }
    if (origin_tls_connect(c) != 0) {
        origin_tls_failed(c, "cannot set up TLS (out of memory)");
        return 1;
    }
    tls_step(c);
    return 1;
}

static void connected(struct conn *c)
{
    c->state = CS_HANDSHAKE;
    struct proxy *p = c->proxy;
    if (p == NULL || !upstream_uses_tls(p->pub.scheme)) {
        connector_start(c);
        return;
    }
    if (p->tls_ctx == NULL ||
        tls_leg_connect(&c->up, p->tls_ctx, p->tls_name != NULL ? p->tls_name : p->host,
                        p->tls_verify) != 0) {
        tls_failed(c, "cannot set up TLS (out of memory)");
        return;
    }
    tls_step(c);
}

static void connect_to(struct conn *c, const struct sockaddr *sa, socklen_t len)
{
    int fd = socket(sa->sa_family, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    if (fd == -1) {
        conn_fail(c, FERR_OVERLOADED);
        return;
    }
    int one = 1;
    setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
    c->up.fd = fd;
    c->up.ev = 0;
    c->up.io.fd = -1; /* a fresh socket: libev registers it anew */
    if (connect(fd, sa, len) == 0) {
        connected(c);
        return;
    }
    if (errno == EINPROGRESS) {
        c->state = CS_CONNECT;
        return;
    }
    conn_attempt_failed(c, FERRY_FAIL_REFUSED, FERR_CONNECT_FAILED);
}

void conn_upstream_ready(struct conn *c)
{
    if (origin_tls_begin(c)) {
        return;
    }
    if (c->origin_tls && c->pooled) {
        origin_tls_count_reuse();
    }
    metrics_upstream_ready(c);
    double ms = (loop_now() - c->t_attempt) * 1000.0;
    if (c->proxy != NULL && !c->pooled) { /* a kept connection has no setup time */
        ewma_latency(&c->proxy->pub.latency_ewma_ms, ms);
    }
    if (c->is_connect) {
        buf_consume(&c->cli.in, c->head_len);
        c->in->answer_ok(c);
        c->sent_any = 1;
        c->status = 200;
        retry_request_end(c); /* a tunnel is no request the retry budget weighs */
        conn_report(c, 1, FERRY_FAIL_KINDS, 0);
        conn_tunnel_begin(c);
        return;
    }
    if (c->attempt > 0 || c->replay_head) {
        /* A replay: parse the head again to restart body framing. */
        http_parse_request(&c->req, buf_head(&c->cli.in), c->head_len);
    }
    c->fwd = c->head_len;
    c->req_done = !c->req.has_body;
    c->resp_head_done = c->resp_done = 0;
    if (conn_write_request_head(c) < 0) {
        conn_fail(c, FERR_HEAD_TOO_LARGE);
        return;
    }
    c->state = CS_EXCHANGE;
    if (c->req_done) {
        conn_arm(c, min_d(c->first_byte_timeout, c->deadline - loop_now()));
    } else {
        /* The body goes first: idle-timed while it moves; the first-byte
         * wait starts at its end (relay_request_body). */
        c->last_up = loop_now();
        conn_arm(c, timeouts.idle);
    }
}

/* The attempt failed before any response byte reached the client: 1 when
 * the request goes again to another member after a back-off (CS_BACKOFF),
 * 0 when it ends with this failure.  A request that never left goes
 * again whatever its method; one that was sent only when it is still
 * whole in cli.in and idempotent (or carries Idempotency-Key).  The
 * pool's `on` says which failures, its retries how many, the deadline
 * and the pool's retry budget whether one more fits. */
static int retry_failed(struct conn *c, enum ferry_fail_kind kind, int before_send, int target)
{
    if (c->target_fails > 1) {
        return 0;
    }
    enum retry_reason why = retry_reason_of(kind, before_send);
    int idempotent = http_method_idempotent(c->req.method) || c->req.idem_key.len > 0;
    unsigned spent = c->attempt - c->ban_retried; /* tries again after a ban are not counted */
    const char *stop = NULL;
    if (!target && !retry_on(c->pool, why, before_send)) {
        return 0; /* not a failure the pool retries: nothing to note */
    }
    if (c->sent_any) {
        stop = "responded";
    } else if (!before_send && !c->replayable) {
        stop = "no_replay";
    } else if (!before_send && !idempotent) {
        stop = "not_idempotent";
    } else if ((int)spent >= c->retries) {
        if (c->retries == 0) {
            return 0; /* a pool without retries: nothing wanted, nothing to note */
        }
        stop = "tries";
    }
    double backoff = stop == NULL ? retry_backoff(c->pool, spent) : 0;
    if (stop == NULL && loop_now() + backoff >= c->deadline) {
        stop = "deadline";
    }
    if (stop != NULL) {
        c->retry_stop = stop;
        return 0;
    }
    if (!retry_budget_take(c)) {
        return 0;
    }
    c->attempt++;
    retry_note(c, why, 0);
    c->state = CS_BACKOFF;
    c->fwd = 0;
    c->req_done = 0;
    conn_arm(c, backoff);
    return 1;
}

void conn_attempt_failed(struct conn *c, enum ferry_fail_kind kind, enum ferr e)
{
    if (reuse_replay(c, e)) {
        return;
    }
    int before_send = c->state == CS_RESOLVE || c->state == CS_CONNECT ||
                      c->state == CS_HANDSHAKE;
    struct proxy *p = c->proxy;
    int target = c->hop.fail_target; /* the destination failed: not charged, one retry */
    c->hop.fail_target = 0;
    if (target) {
        c->target_fails++;
        conn_report_target(c);
    } else {
        conn_report(c, 0, kind, 0);
    }
    static const char *const kinds[FERRY_FAIL_KINDS] = { "refused", "timeout", "handshake",
                                                         "auth", "http5xx", "reset", "tls" };
    struct log_ctx ctx = { .cid = c->cid, .listener = c->l->name,
                           .proxy = p != NULL ? p->display : NULL };
    const char *why = target ? "destination" : kinds[kind % FERRY_FAIL_KINDS];
    if (p != NULL && upstream_is_backend(p->pub.scheme)) {
        /* A backend is the destination itself; the client's Host is not. */
        log_event(LOG_WARN, ferr_info(e)->code, &ctx, "attempt %u to backend %s failed: %s",
                  c->attempt + 1, p->display, why);
    } else {
        log_event(LOG_WARN, ferr_info(e)->code, &ctx, "attempt %u to %s:%d failed: %s",
                  c->attempt + 1, c->host, c->port, why);
    }
    conn_upstream_close(c);
    if (p == NULL || !retry_failed(c, kind, before_send, target)) {
        conn_fail(c, e);
        return;
    }
    c->last_err = e;
}

/* Room a rebuilt response head may take beyond the upstream's own (Via,
 * X-Request-Id...).  The read that brings a response head leaves it free
 * in up.in, so that the head and the body bytes read with it fit cli.out
 * together and leave in one write: a full buffer's worth would leave the
 * few bytes the head grew by for a write of their own. */
#define HEAD_SLACK 1024

/* At most this many bytes for the next upstream read (0: no bound). */
static size_t head_read_max(const struct conn *c)
{
    size_t have = buf_len(&c->up.in);
    if (c->state != CS_EXCHANGE || c->resp_head_done || have >= CONN_BUF_SIZE - HEAD_SLACK) {
        return 0;
    }
    return CONN_BUF_SIZE - HEAD_SLACK - have;
}

void conn_upstream_event(struct conn *c, int revents)
{
    if (c->state == CS_CONNECT) {
        if (!(revents & EV_WRITE)) {
            return;
        }
        int err = 0;
        socklen_t el = sizeof(err);
        if (getsockopt(c->up.fd, SOL_SOCKET, SO_ERROR, &err, &el) == -1) {
            err = errno;
        }
        if (err == ECONNRESET) {
            /* Accepted, then reset before we looked: a reset, not a refusal
             * (which would take the proxy down at once). */
            conn_attempt_failed(c, FERRY_FAIL_RESET, FERR_UPSTREAM_RESET);
            return;
        }
        if (err != 0) {
            conn_attempt_failed(c, err == ETIMEDOUT ? FERRY_FAIL_TIMEOUT : FERRY_FAIL_REFUSED,
                                FERR_CONNECT_FAILED);
            return;
        }
        connected(c);
        return;
    }
    if (c->state == CS_HANDSHAKE && tls_leg_handshaking(&c->up)) {
        tls_step(c);
        return;
    }
    /* A TLS read may wait for writability (tls_events): try it on either. */
    if ((revents & EV_WRITE) && !leg_plain(&c->up) && !c->up.eof) {
        revents |= EV_READ;
    }
    if ((revents & EV_READ) && conn_tunnel_read_upstream(c)) {
        return;
    }
    if (revents & EV_READ) {
        ssize_t n = leg_read_upto(&c->up, &c->up.in, head_read_max(c));
        if (n > 0) {
            c->last_io = c->last_down = loop_now();
            c->reused = 0; /* the kept upstream answered: it was alive */
        } else if (n == 0 || (errno != EAGAIN && errno != EWOULDBLOCK && errno != ENOBUFS)) {
            c->up.eof = 1;
        }
        if (c->state == CS_HANDSHAKE) {
            int r = c->hop.ops->input(&c->hop);
            if (r == UP_DONE) {
                conn_upstream_ready(c);
            } else if (r == UP_FAIL) {
                conn_attempt_failed(c, c->hop.fail_kind, c->hop.fail_err);
            } else if (c->up.eof) {
                conn_attempt_failed(c, FERRY_FAIL_RESET, FERR_HANDSHAKE_FAILED);
            }
        }
    }
}

/* No request-body byte moved for timeouts.idle.  Bytes waiting in up.out
 * mean the upstream stopped reading; none, that the client stopped
 * sending. */
static void exchange_body_stalled(struct conn *c)
{
    int upstream = !buf_empty(&c->up.out);
    enum ferr e = upstream ? FERR_UPSTREAM_STALLED : FERR_BODY_TIMEOUT;
    if (!c->resp_head_done) {
        if (upstream) {
            conn_attempt_failed(c, FERRY_FAIL_TIMEOUT, e);
        } else {
            conn_fail(c, e);
        }
        return;
    }
    /* The response has begun: closing is the only signal left. */
    struct log_ctx ctx = { .cid = c->cid, .listener = c->l->name };
    log_event(LOG_WARN, ferr_info(e)->code, &ctx, "%s", ferr_info(e)->message);
    c->code = ferr_info(e)->code;
    conn_close(c);
}

/* The first-byte timer ran out: read what the upstream socket holds
 * first.  A late loop can find the timer expired while the answer sits
 * unread: the I/O priority (conn_new) orders the two when one poll
 * reports both, but a poll that reports no event at all (epoll_wait
 * fails with EINTR after the process was stopped and continued) runs
 * the timer alone.  1: bytes or the upstream's end arrived. */
static int answer_waiting(struct conn *c)
{
    if (c->up.fd < 0 || c->up.eof || buf_room(&c->up.in) == 0) {
        return 0;
    }
    size_t had = buf_len(&c->up.in);
    conn_upstream_event(c, EV_READ);
    return buf_len(&c->up.in) != had || c->up.eof;
}

void conn_on_timeout(struct conn *c)
{
    switch (c->state) {
    case CS_HEAD:
        if (!buf_empty(&c->cli.in)) {
            conn_fail(c, FERR_HEAD_TIMEOUT);
        } else {
            conn_close(c); /* idle keep-alive or silent client */
        }
        break;
    case CS_RESOLVE:
    case CS_CONNECT:
    case CS_HANDSHAKE:
        conn_attempt_failed(c, FERRY_FAIL_TIMEOUT, FERR_CONNECT_TIMEOUT);
        break;
    case CS_BACKOFF:
        conn_route(c);
        break;
    case CS_RATE:
        rate_timer_fired(c);
        break;
    case CS_QUEUE:
        if (uppool_queue_fired(c)) {
            attempt_go(c, 0);
        } else {
            conn_fail(c, FERR_QUEUE_TIMEOUT);
        }
        break;
    case CS_EXCHANGE:
        if (!c->req_done && loop_now() - c->last_up >= timeouts.idle - 0.001) {
            exchange_body_stalled(c);
        } else if (!c->resp_head_done && answer_waiting(c)) {
            /* The answer began in time; the rest of its head gets the idle time. */
            conn_arm(c, min_d(timeouts.idle, c->deadline - loop_now()));
        } else if (!c->resp_head_done) {
            conn_attempt_failed(c, FERRY_FAIL_TIMEOUT, FERR_FIRST_BYTE_TIMEOUT);
        } else if (conn_ban_stalled(c)) {
            /* a banned answer held for the rest of its body: retried now */
        } else {
            struct log_ctx ctx = { .cid = c->cid, .listener = c->l->name };
            log_event(LOG_WARN, "FERRY-3009", &ctx, "response idle timeout");
            c->code = "FERRY-3009"; /* the outcome metrics count at close */
            conn_close(c);
        }
        break;
    case CS_CACHE_WAIT:
        conn_cache_wait_fired(c);
        break;
    case CS_ADMIN_WAIT:
        admin_wait_fired(c); /* its answer is ready, or its bound ran out */
        break;
    case CS_TUNNEL:
    case CS_DRAIN:
    case CS_ADMIN_OUT:
    case CS_MITM_HELLO:
    case CS_CACHE_OUT:
        conn_close(c);
        break;
    }
}
