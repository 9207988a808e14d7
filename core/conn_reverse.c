/* conn_reverse.c - the reverse listener: requests for the sites ferry
 * fronts, sent on to the backends of a pool.
 *
 * A request arrives in origin form (an absolute http(s):// target is
 * taken too, as RFC 9112 §3.2.2 asks of servers, its authority then
 * replacing Host).  The head goes through the forward listener's strict
 * parser (conn_read_head): what is refused there is refused here.  Its
 * Host (lower-cased, without the port) and path go to the runtime,
 * which picks the pool (route(), else the listener's own, else 404) and
 * the backend; the rest of the exchange is the forward path's, with the
 * backend connector (up_backend.c) and the headers conn_head.c writes
 * for a reverse request (Host kept, X-Forwarded-*, Via). */
#include "conn.h"
#include "inbound.h"
#include "listener.h"

#include <stdlib.h>
#include <string.h>
#include <strings.h>

/* Pool indexes with settings of their own (as uppool.c's). */
#define REV_POOLS_MAX 4096

static char **pool_host; /* [pool index]: Host sent to its backends, or NULL */
static unsigned npool_host;

int ferry_pool_set_host(int pool, const char *host)
{
    if (pool <= 0 || pool >= REV_POOLS_MAX) {
        return FERRY_ERROR;
    }
    if ((unsigned)pool >= npool_host) {
        if (host == NULL) {
            return FERRY_OK;
        }
        unsigned n = npool_host ? npool_host : 16;
        while (n <= (unsigned)pool) {
            n *= 2;
        }
        char **np = realloc(pool_host, n * sizeof(*np));
        if (np == NULL) {
            return FERRY_ERROR;
        }
        memset(np + npool_host, 0, (n - npool_host) * sizeof(*np));
        pool_host = np;
        npool_host = n;
    }
    char *fresh = NULL;
    if (host != NULL && (fresh = strdup(host)) == NULL) {
        return FERRY_ERROR;
    }
    free(pool_host[pool]);
    pool_host[pool] = fresh;
    return FERRY_OK;
}

const char *conn_reverse_pool_host(int pool)
{
    return pool > 0 && (unsigned)pool < npool_host ? pool_host[pool] : NULL;
}

void conn_reverse_free(void)
{
    for (unsigned i = 0; i < npool_host; i++) {
        free(pool_host[i]);
    }
    free(pool_host);
    pool_host = NULL;
    npool_host = 0;
}

int conn_is_reverse(const struct conn *c)
{
    return c->in == &inbound_reverse;
}

enum ferr conn_reverse_err(enum ferr e)
{
    switch (e) {
    case FERR_NO_PROXY:
        return FERR_REV_NO_BACKEND;
    case FERR_ALL_DOWN:
        return FERR_REV_ALL_DOWN;
    case FERR_UPSTREAM_TLS:
        return FERR_REV_TLS;
    default:
        return e;
    }
}

static int is_digit(char ch)
{
    return ch >= '0' && ch <= '9';
}

/* A reg-name byte ferry routes on: letters, digits, - . _ ~ (RFC 3986
 * unreserved; no percent-encoding or sub-delims in a host to route). */
static int name_char(char ch)
{
    return (ch >= 'a' && ch <= 'z') || (ch >= 'A' && ch <= 'Z') || is_digit(ch) || ch == '-' ||
           ch == '.' || ch == '_' || ch == '~';
}

/* host[:port] or [v6][:port] at p (n bytes) into c->host (lower case,
 * no brackets) and c->port (the listener's default when absent).
 * -1: not an authority ferry routes. */
static int take_authority(struct conn *c, const char *p, size_t n)
{
    size_t i = 0, hs, he;
    if (n > 0 && p[0] == '[') {
        hs = i = 1;
        while (i < n && p[i] != ']') {
            char ch = p[i++];
            if (!(is_digit(ch) || (ch >= 'a' && ch <= 'f') || (ch >= 'A' && ch <= 'F') ||
                  ch == ':' || ch == '.')) {
                return -1;
            }
        }
        if (i >= n || i == 1) {
            return -1; /* no "]", or "[]" */
        }
        he = i++;
    } else {
        hs = 0;
        while (i < n && name_char(p[i])) {
            i++;
        }
        he = i;
        if (he == 0) {
            return -1;
        }
    }
    long port = c->l->tls_ctx != NULL ? 443 : 80;
    if (i < n) {
        if (p[i] != ':' || i + 1 == n || n - i - 1 > 5) {
            return -1;
        }
        port = 0;
        for (i++; i < n; i++) {
            if (!is_digit(p[i])) {
                return -1;
            }
            port = port * 10 + (p[i] - '0');
        }
        if (port < 1 || port > 65535) {
            return -1;
        }
    }
    if (he - hs > HOST_MAX_LEN) {
        return -1;
    }
    for (size_t k = hs; k < he; k++) {
        char ch = p[k];
        c->host[k - hs] = (ch >= 'A' && ch <= 'Z') ? (char)(ch + 32) : ch;
    }
    c->host[he - hs] = '\0';
    c->port = (int)port;
    return 0;
}

/* An absolute http(s):// target: its authority names the site (Host is
 * ignored, RFC 9112 §3.2.2), the rest is the path sent on.  0, or -1
 * when it is not one. */
static int absolute_target(struct conn *c, const char *base)
{
    const char *u = base + c->req.url.off;
    size_t n = c->req.url.len, skip;
    if (n > 7 && strncasecmp(u, "http://", 7) == 0) {
        skip = 7;
    } else if (n > 8 && strncasecmp(u, "https://", 8) == 0) {
        skip = 8;
    } else {
        return -1;
    }
    size_t a = skip, e = skip;
    while (e < n && u[e] != '/' && u[e] != '?' && u[e] != '#') {
        e++;
    }
    if (take_authority(c, u + a, e - a) < 0) {
        return -1; /* userinfo ("@") included: never routed */
    }
    c->rev_host.off = c->req.url.off + (uint32_t)a;
    c->rev_host.len = (uint32_t)(e - a);
    size_t f = e;
    while (f < n && u[f] != '#') {
        f++; /* the fragment is never sent */
    }
    c->tpath.off = c->req.url.off + (uint32_t)e;
    c->tpath.len = (uint32_t)(f - e);
    return 0;
}

/* Host, path and the authority sent on.  0, or -1 after answering. */
static int reverse_target(struct conn *c, const char *base)
{
    c->origin_tls = 0;
    c->rev_host.off = c->rev_host.len = 0;
    const char *u = base + c->req.url.off;
    size_t n = c->req.url.len;
    if (n > 0 && u[0] == '/') {
        c->tpath = c->req.url;
    } else if (n == 1 && u[0] == '*' && c->req.method == HTTP_OPTIONS) {
        c->tpath.off = c->tpath.len = 0; /* sent on as "*" (conn_target_path) */
    } else if (absolute_target(c, base) == 0) {
        conn_show_target(c, base);
        return 0;
    } else {
        conn_fail(c, FERR_REV_TARGET);
        return -1;
    }
    c->host[0] = '\0';
    c->port = c->l->tls_ctx != NULL ? 443 : 80;
    struct http_span h = c->req.host;
    if (h.len == 0) {
        /* HTTP/1.1 needs a Host (RFC 9112 §3.2); HTTP/1.0 goes to the
         * listener's pool with an empty req.host. */
        if (c->req.major == 1 && c->req.minor >= 1) {
            conn_fail(c, FERR_REV_HOST);
            return -1;
        }
    } else if (take_authority(c, base + h.off, h.len) < 0) {
        conn_fail(c, FERR_REV_HOST);
        return -1;
    } else {
        c->rev_host = h;
    }
    conn_show_target(c, base);
    return 0;
}

/* A request head on a reverse listener. */
static void reverse_on_head(struct conn *c)
{
    if (!conn_read_head(c)) {
        return;
    }
    const char *base = buf_head(&c->cli.in);
    c->is_connect = 0;
    ctl_clear(&c->ctl_user);
    if (c->req.method == HTTP_CONNECT) {
        conn_fail(c, FERR_REV_CONNECT);
        return;
    }
    if (reverse_target(c, base) < 0) {
        return;
    }
    conn_head_route(c, base);
}

static void reverse_start(struct conn *c)
{
    conn_arm(c, timeouts.client_head);
}

/* Never called: a reverse listener opens no tunnel of its own (CONNECT
 * is refused before routing). */
static void reverse_answer_ok(struct conn *c)
{
    (void)c;
}

const struct inbound_ops inbound_reverse = {
    .name = "reverse",
    .start = reverse_start,
    .input = reverse_on_head,
    .answer_ok = reverse_answer_ok,
    .answer_fail = conn_write_http_error,
    .fini = NULL,
};
