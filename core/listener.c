/* listener.c - accept loop with EMFILE back-off, and inbound Basic auth
 * (its throttling per client address is authfail.c's). */
#include "listener.h"
#include "authfail.h"
#include "conn.h"
#include "ferry.h"
#include "inbound.h"
#include "log.h"
#include "metrics.h"
#include "proxy.h"
#include "ctl.h"
#include "transport.h"

#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <unistd.h>

#define ACCEPT_BATCH 64
#define CONN_LIMIT 20000
#define ADMIN_CONN_LIMIT 64
/* Seconds between two warn lines about refused connections. */
#define OVERLOAD_WARN_WINDOW 10.0

static struct listener *listeners[LISTENER_MAX];
static int nlisteners;

/* Slots 0..nlisteners-1; a slot is NULL once its listener was closed by
 * a reload and its last connection ended, and ferry_listen reuses it. */
struct listener *listener_get(int idx)
{
    return idx >= 0 && idx < nlisteners ? listeners[idx] : NULL;
}

int listener_is_admin(const struct listener *l)
{
    return l->in == &inbound_admin;
}

int listener_count(void)
{
    return nlisteners;
}

/* A connection over a limit gets FERRY-2004 at once, without a conn:
 * counted by limit, logged once per window. */
static void reject_overloaded(const struct listener *l, int fd, int admin_limit)
{
    static double last_warn = -1e9;
    const struct ferr_info *info = ferr_info(FERR_OVERLOADED);
    metrics_overloaded(admin_limit);
    double now = loop_now();
    if (now - last_warn >= OVERLOAD_WARN_WINDOW) {
        last_warn = now;
        log_event(LOG_WARN, info->code, NULL, "listener %s: %s (%u connections%s), refusing",
                  l->name, info->message, admin_limit ? (unsigned)l->conns : conn_count(),
                  admin_limit ? " on this admin listener" : "");
    }
    if (l->in != &inbound_http && l->in != &inbound_reverse && !listener_is_admin(l)) {
        /* A SOCKS (or not yet sniffed) client would not read an HTTP answer. */
        close(fd);
        return;
    }
    char resp[FERR_ANSWER_MAX];
    size_t n = ferr_answer(resp, sizeof(resp), info, NULL);
    /* Best effort: the socket is fresh, so a short write is unlikely. */
    if (n > 0) {
        ssize_t w = write(fd, resp, n);
        (void)w;
    }
    close(fd);
}

static void on_accept(struct ev_loop *lp, ev_io *w, int revents)
{
    (void)lp;
    (void)revents;
    struct listener *l = (struct listener *)((char *)w - offsetof(struct listener, io));
    for (int i = 0; i < ACCEPT_BATCH; i++) {
        struct sockaddr_storage ss;
        socklen_t sl = sizeof(ss);
        int fd = accept4(l->fd, (struct sockaddr *)&ss, &sl, SOCK_NONBLOCK | SOCK_CLOEXEC);
        if (fd == -1) {
            if (errno == EMFILE || errno == ENFILE || errno == ENOBUFS || errno == ENOMEM) {
                /* Stop accepting for a moment instead of spinning on the
                 * pending connection we cannot take. */
                if (!l->emfile_logged) {
                    log_event(LOG_ERROR, "FERRY-5002", NULL,
                              "listener %s: out of file descriptors, pausing accept",
                              l->name);
                    l->emfile_logged = 1;
                }
                ev_io_stop(loop, &l->io);
                ev_timer_set(&l->retry, 0.5, 0.);
                ev_timer_start(loop, &l->retry);
            }
            return;
        }
        /* Admin answers can be large (metrics): few admin connections at once. */
        if (conn_count() >= CONN_LIMIT) {
            reject_overloaded(l, fd, 0);
            continue;
        }
        if (listener_is_admin(l) && l->conns >= ADMIN_CONN_LIMIT) {
            reject_overloaded(l, fd, 1);
            continue;
        }
        if (conn_new(l, fd, (struct sockaddr *)&ss) == NULL) {
            close(fd);
        }
    }
}

static void on_retry(struct ev_loop *lp, ev_timer *w, int revents)
{
    (void)lp;
    (void)revents;
    struct listener *l = (struct listener *)((char *)w - offsetof(struct listener, retry));
    l->emfile_logged = 0;
    ev_io_start(loop, &l->io);
}

/* host ("localhost" or an IP literal) and port as a socket address. */
static int listen_addr(const char *host, int port, struct sockaddr_storage *ss, socklen_t *sl)
{
    struct sockaddr_in *a4 = (struct sockaddr_in *)ss;
    struct sockaddr_in6 *a6 = (struct sockaddr_in6 *)ss;
    memset(ss, 0, sizeof(*ss));
    if (strcmp(host, "localhost") == 0) {
        host = "127.0.0.1";
    }
    if (inet_pton(AF_INET, host, &a4->sin_addr) == 1) {
        a4->sin_family = AF_INET;
        a4->sin_port = htons((uint16_t)port);
        *sl = sizeof(*a4);
        return 0;
    }
    if (inet_pton(AF_INET6, host, &a6->sin6_addr) == 1) {
        a6->sin6_family = AF_INET6;
        a6->sin6_port = htons((uint16_t)port);
        *sl = sizeof(*a6);
        return 0;
    }
    return -1;
}

static int free_slot(const char **err)
{
    int slot = 0;
    while (slot < nlisteners && listeners[slot] != NULL) {
        slot++;
    }
    if (slot >= LISTENER_MAX) {
        *err = "too many listeners";
        return -1;
    }
    return slot;
}

/* The listener struct for a bound, listening fd, accepting from now on.
 * On failure the fd is closed. */
static struct listener *start_listener(int slot, const char *name, int fd,
                                       const struct sockaddr_storage *ss, const char **err)
{
    struct listener *l = calloc(1, sizeof(*l));
    if (l == NULL || (l->name = strdup(name)) == NULL) {
        free(l);
        close(fd);
        *err = "out of memory";
        return NULL;
    }
    l->fd = fd;
    l->addr = *ss;
    ev_io_init(&l->io, on_accept, fd, EV_READ);
    ev_init(&l->retry, on_retry);
    ev_io_start(loop, &l->io);
    listeners[slot] = l;
    if (slot == nlisteners) {
        nlisteners++;
    }
    return l;
}

int ferry_listen(const char *name, const char *host, int port, const char *protocol, int open,
                 const char **err)
{
    const struct inbound_ops *in = inbound_by_name(protocol);
    if (in == NULL) {
        *err = "unsupported listener protocol";
        return -1;
    }
    int slot = free_slot(err);
    if (slot < 0) {
        return -1;
    }
    struct sockaddr_storage ss;
    socklen_t sl;
    if (listen_addr(host, port, &ss, &sl) != 0) {
        *err = "listen address must be an IP address";
        return -1;
    }
    int fd = socket(ss.ss_family, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    if (fd == -1) {
        *err = strerror(errno);
        return -1;
    }
    int one = 1;
    setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one));
    /* Accepted sockets inherit TCP_NODELAY from the listening socket on
     * Linux: one call here instead of one per connection. */
    setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
    if (bind(fd, (struct sockaddr *)&ss, sl) == -1 || listen(fd, 1024) == -1) {
        *err = strerror(errno);
        close(fd);
        return -1;
    }
    struct listener *l = start_listener(slot, name, fd, &ss, err);
    if (l == NULL) {
        return -1;
    }
    l->open = open ? 1 : 0;
    l->in = in;
    l->auth_fail_limit = LISTENER_AUTH_FAIL_LIMIT;
    l->auth_fail_window = LISTENER_AUTH_FAIL_WINDOW;
    l->rev_fwd = FERRY_FWD_FOR | FERRY_FWD_PROTO | FERRY_FWD_HOST | FERRY_FWD_VIA;
    log_event(LOG_INFO, "FERRY-0001", NULL, "listener %s on %s:%d (%s)", name, host, port,
              protocol);
    return slot;
}

/* Whether something answers on the unix socket at path. */
static int unix_socket_alive(const struct sockaddr_un *sun)
{
    int fd = socket(AF_UNIX, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    if (fd == -1) {
        return 0;
    }
    /* A local connect answers at once: refused when nobody listens, and
     * EAGAIN (never a wait) when someone does but its backlog is full. */
    int alive = connect(fd, (const struct sockaddr *)sun, sizeof(*sun)) == 0 || errno == EAGAIN;
    close(fd);
    return alive;
}

int ferry_listen_unix(const char *name, const char *path, const char **err)
{
    struct sockaddr_un sun;
    if (path == NULL || strlen(path) >= sizeof(sun.sun_path) || path[0] == '\0') {
        *err = "socket path is empty or too long";
        return -1;
    }
    int slot = free_slot(err);
    if (slot < 0) {
        return -1;
    }
    memset(&sun, 0, sizeof(sun));
    sun.sun_family = AF_UNIX;
    memcpy(sun.sun_path, path, strlen(path));
    struct stat st;
    if (lstat(path, &st) == 0) {
        /* A stale socket of an earlier run goes; anything else stays. */
        if (!S_ISSOCK(st.st_mode)) {
            *err = "the path exists and is not a socket";
            return -1;
        }
        if (unix_socket_alive(&sun)) {
            *err = "another process is listening on this socket";
            return -1;
        }
        unlink(path);
    }
    int fd = socket(AF_UNIX, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    if (fd == -1) {
        *err = strerror(errno);
        return -1;
    }
    /* Created 0600 from the start: no window where others may connect. */
    mode_t old = umask(0177);
    int rc = bind(fd, (struct sockaddr *)&sun, sizeof(sun));
    umask(old);
    if (rc == -1 || listen(fd, 128) == -1) {
        *err = strerror(errno);
        close(fd);
        return -1;
    }
    struct sockaddr_storage ss;
    memset(&ss, 0, sizeof(ss));
    memcpy(&ss, &sun, sizeof(sun));
    struct listener *l = start_listener(slot, name, fd, &ss, err);
    if (l == NULL || (l->path = strdup(path)) == NULL) {
        if (l != NULL) {
            *err = "out of memory";
            ferry_listener_close(slot);
        }
        unlink(path);
        return -1;
    }
    l->in = &inbound_admin;
    log_event(LOG_INFO, "FERRY-0001", NULL, "listener %s on unix:%s (admin)", name, path);
    return slot;
}

int ferry_listener_is_admin(int idx)
{
    struct listener *l = listener_get(idx);
    return l != NULL && listener_is_admin(l);
}

int ferry_listener_find_unix(const char *path)
{
    for (int i = 0; i < nlisteners; i++) {
        struct listener *l = listeners[i];
        if (l != NULL && !l->closed && l->path != NULL && strcmp(l->path, path) == 0) {
            return i;
        }
    }
    return -1;
}

int ferry_listener_add_user(int idx, const char *user, const char *pass, const char **err)
{
    struct listener *l = listener_get(idx);
    if (l == NULL || user == NULL || pass == NULL) {
        *err = "invalid listener or user";
        return FERRY_ERROR;
    }
    if (l->nusers >= LISTENER_MAX_USERS) {
        *err = "too many users on one listener";
        return FERRY_ERROR;
    }
    char cred[512], enc[700];
    int n = snprintf(cred, sizeof(cred), "%s:%s", user, pass);
    if (n < 0 || (size_t)n >= sizeof(cred)) {
        *err = "credentials too long";
        return FERRY_ERROR;
    }
    base64_encode((const unsigned char *)cred, (size_t)n, enc, sizeof(enc));
    struct listener_user *u = &l->users[l->nusers];
    u->token = strdup(enc);
    u->name = strdup(user);
    if (u->token == NULL || u->name == NULL) {
        *err = "out of memory";
        return FERRY_ERROR;
    }
    l->nusers++;
    return FERRY_OK;
}

int ferry_listener_set_auth_throttle(int idx, int limit, double window)
{
    struct listener *l = listener_get(idx);
    if (l == NULL || limit < 1 || limit > 1000000 || !(window >= 0.1 && window <= 86400)) {
        return FERRY_ERROR;
    }
    l->auth_fail_limit = (unsigned)limit;
    l->auth_fail_window = window;
    return FERRY_OK;
}

/* Compare without an early exit, so timing does not reveal a prefix. */
static int same_token(const char *a, const char *b, size_t blen)
{
    size_t alen = strlen(a);
    unsigned diff = (unsigned)(alen ^ blen);
    for (size_t i = 0; i < blen; i++) {
        diff |= (unsigned char)(a[i % (alen ? alen : 1)] ^ b[i]);
    }
    return diff == 0;
}

/* "Basic <token>" with blanks trimmed: the token, or NULL. */
static const char *basic_token(const char *value, size_t len, size_t *tlen)
{
    if (len < 6 || strncasecmp(value, "Basic ", 6) != 0) {
        return NULL;
    }
    value += 6;
    len -= 6;
    while (len > 0 && *value == ' ') {
        value++;
        len--;
    }
    while (len > 0 && (value[len - 1] == ' ' || value[len - 1] == '\t')) {
        len--;
    }
    *tlen = len;
    return value;
}

const char *listener_auth(struct listener *l, const char *value, size_t len)
{
    size_t tlen;
    const char *tok = basic_token(value, len, &tlen);
    if (tok == NULL) {
        return NULL;
    }
    for (int i = 0; i < l->nusers; i++) {
        if (same_token(l->users[i].token, tok, tlen)) {
            return l->users[i].name;
        }
    }
    return NULL;
}

static void forget_users(struct listener *l)
{
    for (int u = 0; u < l->nusers; u++) {
        free(l->users[u].token);
        free(l->users[u].name);
    }
    l->nusers = 0;
}

static void listener_free(struct listener *l)
{
    forget_users(l);
    tls_ctx_free(l->tls_ctx);
    free(l->path);
    free(l->name);
    free(l);
}

const char *listener_auth_ctl(struct listener *l, const char *value, size_t len, struct ctl *k)
{
    size_t tlen;
    const char *tok = basic_token(value, len, &tlen);
    unsigned char dec[520];
    long n = tok != NULL ? base64_decode(tok, tlen, dec, sizeof(dec) - 1) : -1;
    if (n <= 0) {
        return NULL;
    }
    const unsigned char *colon = memchr(dec, ':', (size_t)n);
    if (colon == NULL) {
        return NULL;
    }
    /* USER-key-value...: the grammar is ctl.c's, for every listener kind. */
    struct ctl got;
    ctl_clear(&got);
    size_t ulen = ctl_user_parse((const char *)dec, (size_t)(colon - dec), &got);
    if (ulen == 0) {
        return NULL;
    }
    /* Re-encode "user:pass" without the parameters and check it as usual. */
    char cred[520], enc[700];
    size_t plen = (size_t)(dec + n - colon);
    memcpy(cred, dec, ulen);
    memcpy(cred + ulen, colon, plen);
    base64_encode((const unsigned char *)cred, ulen + plen, enc, sizeof(enc));
    const char *user = "";
    if (l->nusers > 0) {
        user = NULL;
        for (int i = 0; i < l->nusers; i++) {
            if (same_token(l->users[i].token, enc, strlen(enc))) {
                user = l->users[i].name;
            }
        }
        if (user == NULL) {
            return NULL;
        }
    }
    ctl_merge(k, &got);
    return user;
}

int ferry_listener_find(const char *host, int port)
{
    struct sockaddr_storage ss;
    socklen_t sl;
    if (host == NULL || listen_addr(host, port, &ss, &sl) != 0) {
        return -1;
    }
    for (int i = 0; i < nlisteners; i++) {
        struct listener *l = listeners[i];
        if (l != NULL && !l->closed && memcmp(&l->addr, &ss, sl) == 0) {
            return i;
        }
    }
    return -1;
}

int ferry_listener_reset(int idx, const char *name, int open)
{
    struct listener *l = listener_get(idx);
    char *fresh = name != NULL ? strdup(name) : NULL;
    if (l == NULL || l->closed || fresh == NULL) {
        free(fresh);
        return FERRY_ERROR;
    }
    free(l->name);
    l->name = fresh;
    l->open = open ? 1 : 0;
    forget_users(l);
    return FERRY_OK;
}

int ferry_listener_set_reverse(int idx, int pool, unsigned forwarded, int trust)
{
    struct listener *l = listener_get(idx);
    if (l == NULL || l->closed || pool < 0) {
        return FERRY_ERROR;
    }
    l->rev_pool = pool;
    l->rev_fwd = forwarded;
    l->rev_trust = trust ? 1 : 0;
    return FERRY_OK;
}

int ferry_listener_set_protocol(int idx, const char *protocol)
{
    struct listener *l = listener_get(idx);
    const struct inbound_ops *in = inbound_by_name(protocol);
    if (l == NULL || l->closed || in == NULL ||
        (in == &inbound_admin) != listener_is_admin(l)) {
        return FERRY_ERROR;
    }
    l->in = in;
    return FERRY_OK;
}

void *ferry_tls_server_new(const char *cert, const char *key, const char **err)
{
    static char why[256];
    if (cert == NULL || key == NULL) {
        *err = "cert and key are both required";
        return NULL;
    }
    struct ssl_ctx_st *ctx = tls_server_ctx(cert, key, why, sizeof(why));
    if (ctx == NULL) {
        *err = why;
    }
    return ctx;
}

void ferry_tls_ctx_free(void *ctx)
{
    tls_ctx_free(ctx);
}

int ferry_listener_set_tls(int idx, void *ctx)
{
    struct listener *l = listener_get(idx);
    if (l == NULL || l->closed || listener_is_admin(l)) {
        return FERRY_ERROR;
    }
    tls_ctx_free(l->tls_ctx);
    l->tls_ctx = ctx;
    return FERRY_OK;
}

/* Stop accepting: watchers first, then the socket. */
static void stop_accepting(struct listener *l)
{
    ev_io_stop(loop, &l->io);
    ev_timer_stop(loop, &l->retry);
    if (l->fd >= 0) {
        close(l->fd);
        l->fd = -1;
        if (l->path != NULL) {
            unlink(l->path);
        }
    }
}

int ferry_listener_close(int idx)
{
    struct listener *l = listener_get(idx);
    if (l == NULL || l->closed) {
        return FERRY_ERROR;
    }
    stop_accepting(l);
    l->closed = 1;
    log_event(LOG_INFO, "FERRY-0103", NULL, "listener %s closed by reload (%d connections finish)",
              l->name, l->conns);
    if (l->conns == 0) {
        listeners[idx] = NULL;
        listener_free(l);
    }
    return FERRY_OK;
}

void listener_conn_gone(struct listener *l)
{
    if (--l->conns > 0 || !l->closed) {
        return;
    }
    for (int i = 0; i < nlisteners; i++) {
        if (listeners[i] == l) {
            listeners[i] = NULL;
            break;
        }
    }
    listener_free(l);
}

void listener_stop_proxying(void)
{
    for (int i = 0; i < nlisteners; i++) {
        if (listeners[i] != NULL && !listener_is_admin(listeners[i])) {
            stop_accepting(listeners[i]);
        }
    }
}

int listener_proxy_conns(void)
{
    int n = 0;
    for (int i = 0; i < nlisteners; i++) {
        if (listeners[i] != NULL && !listener_is_admin(listeners[i])) {
            n += listeners[i]->conns;
        }
    }
    return n;
}

void listener_stop_all(void)
{
    for (int i = 0; i < nlisteners; i++) {
        if (listeners[i] != NULL) {
            stop_accepting(listeners[i]);
        }
    }
}

void listener_close_all(void)
{
    listener_stop_all();
    authfail_reset();
    for (int i = 0; i < nlisteners; i++) {
        if (listeners[i] != NULL) {
            listener_free(listeners[i]);
            listeners[i] = NULL;
        }
    }
    nlisteners = 0;
}
