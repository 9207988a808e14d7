/* conn_head.c - the heads ferry writes: requests upstream, responses and
 * interim responses to the client, and the answers ferry gives itself
 * (OPTIONS *, Max-Forwards: 0).
 *
 * Every head is rebuilt from the spans core/http.c parsed, never copied
 * as received: no byte the parser did not accept can reach the next hop.
 * What ferry adds or removes on the way is documented in docs/http.md. */
#include "conn.h"
#include "listener.h"
#include "proxy.h"
#include "upstream.h"

#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* Via (RFC 9110 §7.6.3): on by default, under this pseudonym. */
static int via_on = 1;
static char via_name[VIA_NAME_MAX + 1] = "ferry";

void ferry_set_http(int via, const char *name)
{
    via_on = via != 0;
    if (name != NULL && name[0] != '\0') {
        snprintf(via_name, sizeof(via_name), "%s", name);
    }
}

/* printf into a buffer, failing cleanly when it does not fit. */
struct out {
    char *p;
    size_t n, cap;
    int overflow;
};

static int out_open(struct out *o, struct buf *b)
{
    size_t room;
    o->p = buf_tail(b, &room);
    o->n = 0;
    o->cap = room;
    o->overflow = 0;
    return o->p == NULL ? -1 : 0;
}

static void outf(struct out *o, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static void outf(struct out *o, const char *fmt, ...)
{
    if (o->overflow) {
        return;
    }
    va_list ap;
    va_start(ap, fmt);
    int k = vsnprintf(o->p + o->n, o->cap - o->n, fmt, ap);
    va_end(ap);
    if (k < 0 || (size_t)k >= o->cap - o->n) {
        o->overflow = 1;
        return;
    }
    o->n += (size_t)k;
}

static void out_bytes(struct out *o, const char *p, size_t n)
{
    if (o->overflow || n > o->cap - o->n) {
        o->overflow = 1;
        return;
    }
    memcpy(o->p + o->n, p, n);
    o->n += n;
}

/* Heads are built from copies and integers, never formatted: printf was
 * a tenth of a proxied request's user time.  outf stays for the rare
 * heads (TRACE, OPTIONS). */
#define OUT_LIT(o, s) out_bytes((o), (s), sizeof(s) - 1)

static void out_str(struct out *o, const char *s)
{
    out_bytes(o, s, strlen(s));
}

static void out_uint(struct out *o, unsigned long v)
{
    char d[24];
    size_t i = sizeof(d);
    do {
        d[--i] = (char)('0' + v % 10);
        v /= 10;
    } while (v > 0);
    out_bytes(o, d + i, sizeof(d) - i);
}

static void out_field(struct out *o, const char *base, const struct http_field *f)
{
    /* Copied, not formatted: this runs for every header of every message. */
    out_bytes(o, base + f->name.off, f->name.len);
    out_bytes(o, ": ", 2);
    out_bytes(o, base + f->value.off, f->value.len);
    out_bytes(o, "\r\n", 2);
}

/* Whether this connection's messages get ferry's Via: http { via }, and
 * on a reverse listener its forwarded.via too. */
static int via_for(const struct conn *c)
{
    return via_on && (!conn_is_reverse(c) || (c->l->rev_fwd & FERRY_FWD_VIA));
}

size_t conn_via_stored(const struct conn *c, int minor, char *out, size_t cap)
{
    if (!via_for(c) || cap == 0) {
        return 0;
    }
    int n = snprintf(out, cap, "Via: 1.%d %s\r\n", minor, via_name);
    return n > 0 && (size_t)n < cap ? (size_t)n : 0;
}

/* Fields ferry writes itself whatever the message carried. */
static int ours(int via, const char *base, const struct http_field *f)
{
    return (via && http_span_ieq(base, f->name, "Via"));
}

/* Via: the received ones as one list, then ours with the version the
 * message arrived in. */
static void out_via(struct out *o, int via, const struct http_msg *m, const char *base)
{
    if (!via) {
        return;
    }
    out_bytes(o, "Via: ", 5);
    for (unsigned i = 0; i < m->nfields; i++) {
        const struct http_field *f = &m->fields[i];
        if (!f->hop && f->value.len > 0 && http_span_ieq(base, f->name, "Via")) {
            out_bytes(o, base + f->value.off, f->value.len);
            out_bytes(o, ", ", 2);
        }
    }
    out_uint(o, m->major);
    OUT_LIT(o, ".");
    out_uint(o, m->minor);
    OUT_LIT(o, " ");
    out_str(o, via_name);
    OUT_LIT(o, "\r\n");
}

/* Whether on_request asked to drop this request header field. */
static int dropped(const struct conn *c, const char *base, const struct http_field *f)
{
    char name[130];
    if (c->hdr_drop == NULL || f->name.len + 3 > sizeof(name)) {
        return 0;
    }
    name[0] = '\n';
    for (uint32_t i = 0; i < f->name.len; i++) {
        char ch = base[f->name.off + i];
        name[i + 1] = (ch >= 'A' && ch <= 'Z') ? (char)(ch + 32) : ch;
    }
    name[f->name.len + 1] = '\n';
    name[f->name.len + 2] = '\0';
    return strstr(c->hdr_drop, name) != NULL;
}

/* Max-Forwards counts down on TRACE and OPTIONS only (RFC 9110 §7.6.2). */
static int counts_hops(const struct conn *c)
{
    return c->req.method == HTTP_TRACE || c->req.method == HTTP_OPTIONS;
}

long conn_max_forwards(const struct conn *c, const char *base)
{
    struct http_span v = c->req.max_forwards;
    if (v.len == 0) {
        return -1;
    }
    long n = 0;
    for (uint32_t i = 0; i < v.len; i++) {
        char ch = base[v.off + i];
        if (ch < '0' || ch > '9' || i >= 9) {
            return -2;
        }
        n = n * 10 + (ch - '0');
    }
    return n;
}

/* X-Forwarded-* of a reverse listener (bits of FERRY_FWD_*), 0 when the
 * field is not one. */
static unsigned forwarded_kind(const char *base, const struct http_field *f)
{
    if (f->name.len < 15 || (base[f->name.off] | 0x20) != 'x') {
        return 0;
    }
    return http_span_ieq(base, f->name, "X-Forwarded-For") ? FERRY_FWD_FOR
         : http_span_ieq(base, f->name, "X-Forwarded-Proto") ? FERRY_FWD_PROTO
         : http_span_ieq(base, f->name, "X-Forwarded-Host") ? FERRY_FWD_HOST : 0;
}

/* A reverse listener's X-Forwarded-* for the backend.  Untrusted clients
 * (the default) lose theirs and the backend gets ferry's alone: the
 * client's address, the listener's scheme, the Host the client named.
 * Trusted ones (trust_forwarded, e.g. behind another proxy) keep theirs:
 * ferry appends the address to X-Forwarded-For and adds Proto and Host
 * only where the client sent none.  seen: the kinds the request had. */
static void out_forwarded(struct out *o, const struct conn *c, const char *base, unsigned seen)
{
    unsigned fwd = c->l->rev_fwd;
    int trust = c->l->rev_trust;
    if (fwd & FERRY_FWD_FOR) {
        out_bytes(o, "X-Forwarded-For: ", 17);
        for (unsigned i = 0; trust && i < c->req.nfields; i++) {
            const struct http_field *f = &c->req.fields[i];
            if (f->value.len > 0 && forwarded_kind(base, f) == FERRY_FWD_FOR) {
                out_bytes(o, base + f->value.off, f->value.len);
                out_bytes(o, ", ", 2);
            }
        }
        out_str(o, c->client);
        OUT_LIT(o, "\r\n");
    }
    if ((fwd & FERRY_FWD_PROTO) && !(trust && (seen & FERRY_FWD_PROTO))) {
        if (c->l->tls_ctx != NULL) {
            OUT_LIT(o, "X-Forwarded-Proto: https\r\n");
        } else {
            OUT_LIT(o, "X-Forwarded-Proto: http\r\n");
        }
    }
    if ((fwd & FERRY_FWD_HOST) && c->rev_host.len > 0 && !(trust && (seen & FERRY_FWD_HOST))) {
        out_bytes(o, "X-Forwarded-Host: ", 18);
        out_bytes(o, base + c->rev_host.off, c->rev_host.len);
        out_bytes(o, "\r\n", 2);
    }
}

/* The request's fields as forwarded: no hop-by-hop, no Host (written
 * first), none on_request drops, none ferry writes itself. */
static void out_request_fields(struct out *o, const struct conn *c, const char *base)
{
    int hops = counts_hops(c);
    int via = via_for(c);
    int reverse = conn_is_reverse(c);
    unsigned seen = 0;
    for (unsigned i = 0; i < c->req.nfields; i++) {
        const struct http_field *f = &c->req.fields[i];
        /* Control headers are ferry's (ctl.c), also on a replay's fresh
         * parse. */
        if (f->hop || http_span_ieq(base, f->name, "Host") || ours(via, base, f) ||
            ctl_is_header(base, f->name) ||
            (hops && http_span_ieq(base, f->name, "Max-Forwards")) || dropped(c, base, f) ||
            (c->cache != NULL && conn_cache_drops(c, base + f->name.off, f->name.len))) {
            continue;
        }
        unsigned k = reverse ? forwarded_kind(base, f) : 0;
        if (k != 0) {
            seen |= k;
            /* X-Forwarded-For is rewritten whole; trusted Proto and Host pass. */
            if (k == FERRY_FWD_FOR ? (c->l->rev_fwd & FERRY_FWD_FOR) || !c->l->rev_trust
                                   : !c->l->rev_trust) {
                continue;
            }
        }
        out_field(o, base, f);
    }
    size_t vlen;
    const char *validators = c->cache != NULL ? conn_cache_validators(c, &vlen) : NULL;
    if (validators != NULL) {
        out_bytes(o, validators, vlen); /* a revalidation of a stored response */
    }
    long mf = hops ? conn_max_forwards(c, base) : -1;
    if (mf > 0) {
        outf(o, "Max-Forwards: %ld\r\n", mf - 1);
    }
    if (reverse) {
        out_forwarded(o, c, base, seen);
    }
    out_via(o, via, &c->req, base);
}

/* The Host a reverse request carries to its backend: the pool's host,
 * else the authority the client named, else the backend's own. */
static void out_reverse_host(struct out *o, const struct conn *c, const char *base)
{
    const char *ph = conn_reverse_pool_host(c->pool);
    if (ph != NULL) {
        OUT_LIT(o, "Host: ");
        out_str(o, ph);
        OUT_LIT(o, "\r\n");
    } else if (c->rev_host.len > 0) {
        out_bytes(o, "Host: ", 6);
        out_bytes(o, base + c->rev_host.off, c->rev_host.len);
        out_bytes(o, "\r\n", 2);
    } else {
        const struct proxy *p = c->proxy;
        int v6 = strchr(p->host, ':') != NULL;
        outf(o, v6 ? "Host: [%s]:%d\r\n" : "Host: %s:%d\r\n", p->host, p->port);
    }
}

int conn_up_absolute(const struct conn *c)
{
    /* An originated TLS session runs inside a tunnel: the origin reads the head. */
    return c->proxy != NULL && upstream_absolute(c->proxy->pub.scheme) && !c->origin_tls;
}

void conn_target_path(const struct conn *c, const char *base, const char **pre,
                      const char **path, int *len)
{
    /* No path: "/" (or "*" for OPTIONS, RFC 9112 §3.2.4); a query alone
     * gets its "/" in front (http://host?x=1 is GET /?x=1). */
    *path = base + c->tpath.off;
    *len = (int)c->tpath.len;
    if (c->tpath.len == 0) {
        *pre = c->req.method == HTTP_OPTIONS ? "*" : "/";
    } else {
        *pre = base[c->tpath.off] == '/' ? "" : "/";
    }
}

void conn_show_target(struct conn *c, const char *base)
{
    const char *pre, *path;
    int plen;
    conn_target_path(c, base, &pre, &path, &plen);
    char shown[CONN_PATH_MAX];
    struct out o = { shown, 0, sizeof(shown), 0 };
    out_str(&o, pre);
    /* Cut as snprintf would: what fits, the log's path being bounded. */
    size_t room = o.cap - o.n;
    out_bytes(&o, path, (size_t)plen < room ? (size_t)plen : room);
    conn_set_path(c, shown, o.n);
}

int conn_write_request_head(struct conn *c)
{
    const char *base = buf_head(&c->cli.in);
    struct out o;
    if (out_open(&o, &c->up.out) < 0) {
        return -1;
    }
    int absolute = conn_up_absolute(c);
    const char *pre, *path;
    int plen;
    conn_target_path(c, base, &pre, &path, &plen);
    if (absolute && pre[0] == '*') {
        pre = ""; /* the next proxy gets OPTIONS http://host, and sends "*" on */
    }
    /* An HTTP/1.0 client gets an HTTP/1.0 exchange upstream, so the
     * response never arrives chunked to a client that cannot read it. */
    int minor = (c->req.major == 1 && c->req.minor == 0) ? 0 : 1;
    if (conn_is_reverse(c)) {
        out_str(&o, c->method);
        OUT_LIT(&o, " ");
        out_str(&o, pre);
        out_bytes(&o, path, (size_t)plen);
        if (minor == 0) {
            OUT_LIT(&o, " HTTP/1.0\r\n");
        } else {
            OUT_LIT(&o, " HTTP/1.1\r\n");
        }
        out_reverse_host(&o, c, base);
    } else {
        /* host, [v6], with :port unless it is the scheme's default */
        char hostport[HOST_MAX_LEN + 16];
        struct out h = { hostport, 0, sizeof(hostport), 0 };
        int v6 = strchr(c->host, ':') != NULL;
        if (v6) {
            OUT_LIT(&h, "[");
        }
        out_str(&h, c->host);
        if (v6) {
            OUT_LIT(&h, "]");
        }
        if (c->port != (c->origin_tls ? 443 : 80)) {
            OUT_LIT(&h, ":");
            out_uint(&h, (unsigned long)c->port);
        }
        out_str(&o, c->method);
        OUT_LIT(&o, " ");
        if (absolute) {
            OUT_LIT(&o, "http://");
            out_bytes(&o, hostport, h.n);
        }
        out_str(&o, pre);
        out_bytes(&o, path, (size_t)plen);
        if (minor == 0) {
            OUT_LIT(&o, " HTTP/1.0\r\nHost: ");
        } else {
            OUT_LIT(&o, " HTTP/1.1\r\nHost: ");
        }
        out_bytes(&o, hostport, h.n);
        OUT_LIT(&o, "\r\n");
    }
    out_request_fields(&o, c, base);
    if (c->hdr_add != NULL) {
        out_bytes(&o, c->hdr_add, c->hdr_add_len);
    }
    if (c->upgrade) {
        outf(&o, "Connection: Upgrade\r\nUpgrade: %.*s\r\n", (int)c->req.upgrade.len,
             base + c->req.upgrade.off);
    }
    if (absolute && c->proxy->auth_header != NULL) {
        out_str(&o, c->proxy->auth_header);
    }
    if (absolute && c->proxy->extra_headers != NULL) {
        out_str(&o, c->proxy->extra_headers);
    }
    OUT_LIT(&o, "\r\n");
    if (o.overflow) {
        return -1;
    }
    buf_commit(&c->up.out, o.n);
    return 0;
}

/* The longest proxy label X-Ferry-Proxy shows; longer ones are cut. */
#define LABEL_MAX 256

/* A proxy label as a header value: bytes that could end the line or fold
 * it (controls, DEL) become '?', so no label can add a header. */
static void header_safe(const char *label, char *out, size_t room)
{
    size_t n = 0;
    for (; label != NULL && label[n] != '\0' && n + 1 < room; n++) {
        unsigned char ch = (unsigned char)label[n];
        out[n] = (ch < 0x20 || ch == 0x7f) ? '?' : (char)ch;
    }
    out[n] = '\0';
}

/* Status line and the response's own fields, less what ferry says itself:
 * X-Ferry-Proxy and X-Request-Id from upstream go no further. */
static void out_response_fields(struct out *o, const struct conn *c, const char *base)
{
    const struct http_msg *m = &c->resp;
    int via = via_for(c);
    OUT_LIT(o, "HTTP/1.1 ");
    out_uint(o, (unsigned long)m->status);
    OUT_LIT(o, " ");
    out_bytes(o, base + m->reason.off, m->reason.len);
    OUT_LIT(o, "\r\n");
    for (unsigned i = 0; i < m->nfields; i++) {
        const struct http_field *f = &m->fields[i];
        if (f->hop || ours(via, base, f) || http_span_ieq(base, f->name, "X-Ferry-Proxy") ||
            http_span_ieq(base, f->name, "X-Request-Id") ||
            (c->dechunk && http_span_ieq(base, f->name, "Transfer-Encoding")) ||
            (c->cache != NULL && http_span_ieq(base, f->name, "X-Cache"))) {
            continue; /* dechunk: the data goes out delimited by the close */
        }
        out_field(o, base, f);
    }
    out_via(o, via, m, base);
    OUT_LIT(o, "X-Request-Id: ");
    out_str(o, c->cid);
    OUT_LIT(o, "\r\n");
    if (c->cache != NULL && c->cache_mark != NULL && strcmp(c->cache_mark, "BYPASS") != 0) {
        OUT_LIT(o, "X-Cache: ");
        out_str(o, c->cache_mark);
        OUT_LIT(o, "\r\n");
    }
}

int conn_write_response_head(struct conn *c, const char *base)
{
    struct out o;
    if (out_open(&o, &c->cli.out) < 0) {
        return -1;
    }
    const struct http_msg *m = &c->resp;
    out_response_fields(&o, c, base);
    if (c->proxy != NULL && !conn_is_reverse(c)) { /* a site's clients never see its backends */
        char label[LABEL_MAX];
        header_safe(c->proxy->label, label, sizeof(label));
        OUT_LIT(&o, "X-Ferry-Proxy: ");
        out_str(&o, label);
        OUT_LIT(&o, "\r\n");
    }
    if (m->status == 101) {
        OUT_LIT(&o, "Connection: Upgrade\r\nUpgrade: ");
        out_bytes(&o, base + m->upgrade.off, m->upgrade.len);
        OUT_LIT(&o, "\r\n");
    } else if (!c->keep_client) {
        OUT_LIT(&o, "Connection: close\r\n");
    } else if (c->req.minor == 0) {
        OUT_LIT(&o, "Connection: keep-alive\r\n");
    }
    OUT_LIT(&o, "\r\n");
    if (o.overflow) {
        return -1;
    }
    buf_commit(&c->cli.out, o.n);
    c->bytes_out += o.n;
    return 0;
}

int conn_write_interim(struct conn *c, const char *base)
{
    struct out o;
    if (out_open(&o, &c->cli.out) < 0) {
        return -1;
    }
    out_response_fields(&o, c, base);
    outf(&o, "\r\n");
    if (o.overflow) {
        return -1;
    }
    buf_commit(&c->cli.out, o.n);
    c->bytes_out += o.n;
    return 0;
}

void conn_write_connect_ok(struct conn *c)
{
    static const char ok[] = "HTTP/1.1 200 Connection established\r\n";
    buf_append(&c->cli.out, ok, sizeof(ok) - 1);
    if (c->proxy != NULL) {
        char label[LABEL_MAX];
        header_safe(c->proxy->label, label, sizeof(label));
        buf_append(&c->cli.out, "X-Ferry-Proxy: ", 15);
        buf_append(&c->cli.out, label, strlen(label));
        buf_append(&c->cli.out, "\r\n", 2);
    }
    if (c->cid[0] != '\0') {
        buf_append(&c->cli.out, "X-Request-Id: ", 14);
        buf_append(&c->cli.out, c->cid, strlen(c->cid));
        buf_append(&c->cli.out, "\r\n", 2);
    }
    buf_append(&c->cli.out, "\r\n", 2);
}

/* The methods a forward listener takes, for OPTIONS answered here. */
#define ALLOW "OPTIONS, GET, HEAD, POST, PUT, PATCH, DELETE, TRACE, CONNECT"

/* Fields a TRACE echo leaves out: credentials never travel back. */
static int secret(const char *base, const struct http_field *f)
{
    return http_span_ieq(base, f->name, "Proxy-Authorization") ||
           http_span_ieq(base, f->name, "Authorization") ||
           http_span_ieq(base, f->name, "Cookie");
}

int conn_write_local_answer(struct conn *c)
{
    const char *base = buf_head(&c->cli.in);
    struct out o;
    if (out_open(&o, &c->cli.out) < 0) {
        return -1;
    }
    if (c->req.method != HTTP_TRACE) {
        outf(&o, "HTTP/1.1 200 OK\r\nAllow: " ALLOW "\r\nContent-Length: 0\r\n"
                 "X-Request-Id: %s\r\nConnection: close\r\n\r\n", c->cid);
    } else {
        /* message/http: the request as ferry received (and parsed) it. */
        /* "TRACE " target " HTTP/x.y\r\n", each field, the blank line. */
        size_t body = 6 + c->req.url.len + 11 + 2;
        for (unsigned i = 0; i < c->req.nfields; i++) {
            const struct http_field *f = &c->req.fields[i];
            body += secret(base, f) ? 0 : f->name.len + f->value.len + 4;
        }
        outf(&o, "HTTP/1.1 200 OK\r\nContent-Type: message/http\r\nContent-Length: %zu\r\n"
                 "X-Request-Id: %s\r\nConnection: close\r\n\r\n", body, c->cid);
        outf(&o, "TRACE %.*s HTTP/%u.%u\r\n", (int)c->req.url.len, base + c->req.url.off,
             c->req.major, c->req.minor);
        for (unsigned i = 0; i < c->req.nfields; i++) {
            if (!secret(base, &c->req.fields[i])) {
                out_field(&o, base, &c->req.fields[i]);
            }
        }
        out_bytes(&o, "\r\n", 2);
    }
    if (o.overflow) {
        return -1;
    }
    buf_commit(&c->cli.out, o.n);
    c->bytes_out += o.n;
    return 0;
}
