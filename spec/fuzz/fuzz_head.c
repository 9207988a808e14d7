/* fuzz_head.c - request heads through ferry's parse and rewrite, then read
 * again: a differential check of the head ferry forwards.
 *
 * Input: byte 0 picks the upstream (bit 0 set: an HTTP proxy, so the head
 * goes out in absolute form with the proxy's Proxy-Authorization); the
 * rest is what a client sends.  conn_on_head (core/conn_http.c) runs on a
 * connection that has no socket and no loop (shim_conn.c); when it routes
 * the request, conn_write_request_head writes the upstream head.
 *
 * abort() when, for a plain (non-CONNECT) request ferry routes:
 *  - the strict reader of ref_http.c refuses the client's head, or reads
 *    another method, other fields or another framing (Content-Length n,
 *    chunked, none) than ferry;
 *  - ferry would relay no body although the head declares one;
 *  - the head written upstream is not exactly one head, or ferry's parser
 *    or the strict reader refuse it or read another method or framing;
 *  - its fields are not Host, then the client's end-to-end fields in
 *    order and unchanged, with only fields ferry writes itself among them
 *    (Via, Max-Forwards) or after them (Connection/Upgrade for an upgrade,
 *    the proxy's Proxy-Authorization, each exactly once when due);
 *  - its target is not origin-form ("/...") or absolute form naming the
 *    host and port ferry routed to.
 * CR or LF inside a written name or value fails the strict reading. */
#include "../../core/conn.h"
#include "../../core/inbound.h"
#include "../../core/listener.h"
#include "../../core/proxy.h"
#include "ref_http.h"
#include "shim_conn.h"

#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define FAIL(...)                                                                            \
    do {                                                                                     \
        fprintf(stderr, "fuzz_head: FINDING: " __VA_ARGS__);                                 \
        fputc('\n', stderr);                                                                 \
        abort();                                                                             \
    } while (0)

static struct listener lst = { .name = "fuzz", .fd = -1, .in = &inbound_http };
static struct proxy http_proxy;

struct framing {
    int kind; /* enum ref_framing */
    unsigned long long len;
};

/* The framing ferry read. */
static struct framing ferry_framing(const struct http_msg *m)
{
    struct framing f = { REF_NONE, 0 };
    if (m->framing == HTTP_FRAME_CHUNKED) {
        f.kind = REF_CHUNKED;
    } else if (m->framing == HTTP_FRAME_LENGTH) {
        f.kind = REF_LENGTH;
        f.len = m->content_length;
    }
    return f;
}

static struct framing ref_framing(const struct ref_head *h)
{
    struct framing f = { (int)h->framing, h->framing == REF_LENGTH ? h->length : 0 };
    return f;
}

/* Content-Length: 0 and no body at all frame a request alike. */
static int same_framing(struct framing a, struct framing b)
{
    if (a.kind == REF_LENGTH && a.len == 0) {
        a.kind = REF_NONE;
    }
    if (b.kind == REF_LENGTH && b.len == 0) {
        b.kind = REF_NONE;
    }
    return a.kind == b.kind && a.len == b.len;
}

static const char *framing_text(struct framing f, char *out, size_t room)
{
    if (f.kind == REF_CHUNKED) {
        snprintf(out, room, "chunked");
    } else if (f.kind == REF_LENGTH) {
        snprintf(out, room, "Content-Length %llu", f.len);
    } else {
        snprintf(out, room, "none");
    }
    return out;
}

static void check_framing(const char *what, struct framing a, struct framing b)
{
    if (!same_framing(a, b)) {
        char x[48], y[48];
        FAIL("%s: framing %s against %s", what, framing_text(a, x, sizeof(x)),
             framing_text(b, y, sizeof(y)));
    }
}

/* A body declared by the head must be relayed by ferry as one. */
static void check_relays_body(const char *what, const struct http_msg *m)
{
    struct framing f = ferry_framing(m);
    int declared = f.kind == REF_CHUNKED || (f.kind == REF_LENGTH && f.len > 0);
    if (declared && !m->has_body) {
        char x[48];
        FAIL("%s: the head declares a body (%s) that ferry will not relay as one%s", what,
             framing_text(f, x, sizeof(x)), m->is_upgrade ? " (an Upgrade request)" : "");
    }
}

static size_t trim(const char *p, size_t n, const char **out)
{
    while (n > 0 && (*p == ' ' || *p == '\t')) {
        p++;
        n--;
    }
    while (n > 0 && (p[n - 1] == ' ' || p[n - 1] == '\t')) {
        n--;
    }
    *out = p;
    return n;
}

static int same_bytes(const char *a, size_t an, const char *b, size_t bn)
{
    return an == bn && memcmp(a, b, an) == 0;
}

/* Ferry's fields and the strict reader's: the same lines, in order. */
static void check_fields(const char *what, const struct http_msg *m, const char *base,
                         const struct ref_head *r)
{
    if (m->nfields != r->nfields) {
        FAIL("%s: ferry reads %u fields, the strict reader %u", what, m->nfields, r->nfields);
    }
    for (unsigned i = 0; i < m->nfields; i++) {
        const struct http_field *f = &m->fields[i];
        const char *v;
        size_t vn = trim(base + f->value.off, f->value.len, &v);
        if (!same_bytes(base + f->name.off, f->name.len, r->fields[i].name, r->fields[i].nlen) ||
            !same_bytes(v, vn, r->fields[i].value, r->fields[i].vlen)) {
            FAIL("%s: field %u reads \"%.*s: %.*s\" in ferry and \"%.*s: %.*s\" strictly", what,
                 i, (int)f->name.len, base + f->name.off, (int)vn, v, (int)r->fields[i].nlen,
                 r->fields[i].name, (int)r->fields[i].vlen, r->fields[i].value);
        }
    }
}

/* Fields ferry writes itself (hop-by-hop ones it sets, and Via and
 * Max-Forwards, which a proxy rewrites): never a client's unchanged. */
static int ferry_own(const char *name, size_t n)
{
    return ref_ieq(name, n, "Connection") || ref_ieq(name, n, "Upgrade") ||
           ref_ieq(name, n, "Proxy-Authorization") || ref_ieq(name, n, "Via") ||
           ref_ieq(name, n, "Max-Forwards");
}

struct want_field {
    const char *name;
    size_t nlen;
    const char *value;
    size_t vlen;
};

static void check_target(const struct conn *c, const struct ref_head *w, int absolute)
{
    if (!absolute) {
        if (w->tlen == 1 && w->target[0] == '*' && c->req.method == HTTP_OPTIONS) {
            return; /* asterisk-form */
        }
        if (w->tlen == 0 || w->target[0] != '/') {
            FAIL("origin-form target \"%.*s\" does not start with /", (int)w->tlen, w->target);
        }
        return;
    }
    struct http_parser_url u;
    http_parser_url_init(&u);
    if (http_parser_parse_url(w->target, w->tlen, 0, &u) != 0 ||
        !(u.field_set & (1 << UF_HOST))) {
        FAIL("absolute-form target \"%.*s\" does not parse", (int)w->tlen, w->target);
    }
    int port = (u.field_set & (1 << UF_PORT)) ? u.port : 80;
    if (!same_bytes(w->target + u.field_data[UF_HOST].off, u.field_data[UF_HOST].len, c->host,
                    strlen(c->host)) ||
        port != c->port) {
        FAIL("absolute-form target \"%.*s\" does not name %s:%d", (int)w->tlen, w->target,
             c->host, c->port);
    }
    if (!(u.field_set & (1 << UF_PATH)) ||
        w->target[u.field_data[UF_PATH].off] != '/') {
        FAIL("absolute-form target \"%.*s\" has no path", (int)w->tlen, w->target);
    }
}

static struct ref_head orig_ref, out_ref;
static struct http_msg out_msg;
static struct want_field want[HTTP_MAX_FIELDS];

static void check_rewrite(struct conn *c, const char *base, int absolute)
{
    const char *out = buf_head(&c->up.out);
    size_t olen = buf_len(&c->up.out);
    if (http_head_len(out, olen) != olen) {
        FAIL("the head written upstream is not exactly one head (%zu of %zu bytes)",
             http_head_len(out, olen), olen);
    }
    const char *why = ref_parse_request(&out_ref, out, olen);
    if (why != NULL) {
        FAIL("the head written upstream is refused by the strict reader: %s\n%.*s", why,
             (int)olen, out);
    }
    if (!same_bytes(out_ref.method, out_ref.mlen, orig_ref.method, orig_ref.mlen)) {
        FAIL("method %.*s written as %.*s", (int)orig_ref.mlen, orig_ref.method,
             (int)out_ref.mlen, out_ref.method);
    }
    int minor10 = c->req.major == 1 && c->req.minor == 0;
    if (out_ref.major != 1 || out_ref.minor != (minor10 ? 0 : 1)) {
        FAIL("HTTP/%u.%u written as HTTP/%d.%d", c->req.major, c->req.minor, out_ref.major,
             out_ref.minor);
    }
    check_framing("written head, strictly read", ferry_framing(&c->req), ref_framing(&out_ref));
    check_target(c, &out_ref, absolute);

    /* Host first; then the client's end-to-end fields, in order and
     * unchanged; among and after them only fields ferry writes itself. */
    static char hostport[HOST_MAX_LEN + 16];
    int v6 = strchr(c->host, ':') != NULL;
    if (c->port == (c->origin_tls ? 443 : 80)) { /* the scheme's default port goes unsaid */
        snprintf(hostport, sizeof(hostport), v6 ? "[%s]" : "%s", c->host);
    } else {
        snprintf(hostport, sizeof(hostport), v6 ? "[%s]:%d" : "%s:%d", c->host, c->port);
    }
    if (out_ref.nfields == 0 || !ref_ieq(out_ref.fields[0].name, out_ref.fields[0].nlen, "Host") ||
        !same_bytes(out_ref.fields[0].value, out_ref.fields[0].vlen, hostport, strlen(hostport))) {
        FAIL("the head written upstream does not start with Host: %s", hostport);
    }
    unsigned nw = 0;
    for (unsigned i = 0; i < c->req.nfields; i++) {
        const struct http_field *f = &c->req.fields[i];
        const char *name = base + f->name.off;
        if (f->hop || http_span_ieq(base, f->name, "Host") ||
            http_span_ieq(base, f->name, "X-Ferry-Session") || ferry_own(name, f->name.len)) {
            continue;
        }
        struct want_field *w = &want[nw++];
        w->name = name;
        w->nlen = f->name.len;
        w->vlen = trim(base + f->value.off, f->value.len, &w->value);
    }
    /* Counts of ferry's own fields: +1 with the value due, +100 with another. */
    unsigned k = 0, nconn = 0, nupg = 0, nauth = 0;
    const char *upg;
    size_t upg_len = trim(base + c->req.upgrade.off, c->req.upgrade.len, &upg);
    for (unsigned i = 1; i < out_ref.nfields; i++) {
        const struct ref_field *f = &out_ref.fields[i];
        if (ref_ieq(f->name, f->nlen, "Host")) {
            FAIL("a second Host field written upstream");
        }
        if (ferry_own(f->name, f->nlen)) {
            if (ref_ieq(f->name, f->nlen, "Connection")) {
                nconn += same_bytes(f->value, f->vlen, "Upgrade", 7) ? 1 : 100;
            } else if (ref_ieq(f->name, f->nlen, "Upgrade")) {
                nupg += same_bytes(f->value, f->vlen, upg, upg_len) ? 1 : 100;
            } else if (ref_ieq(f->name, f->nlen, "Proxy-Authorization")) {
                nauth += same_bytes(f->value, f->vlen, "Basic Zm9vOmJhcg==", 18) ? 1 : 100;
            }
            continue;
        }
        if (k >= nw || !same_bytes(f->name, f->nlen, want[k].name, want[k].nlen) ||
            !same_bytes(f->value, f->vlen, want[k].value, want[k].vlen)) {
            FAIL("written field %u is \"%.*s: %.*s\", expected the client's \"%.*s: %.*s\"", i,
                 (int)f->nlen, f->name, (int)f->vlen, f->value, k < nw ? (int)want[k].nlen : 0,
                 k < nw ? want[k].name : "", k < nw ? (int)want[k].vlen : 0,
                 k < nw ? want[k].value : "");
        }
        k++;
    }
    if (k != nw) {
        FAIL("%u of the client's %u end-to-end fields written upstream", k, nw);
    }
    if (nconn != c->upgrade || nupg != c->upgrade) {
        FAIL("Connection/Upgrade written %u/%u times (+100 per wrong value) for an upgrade %d",
             nconn, nupg, c->upgrade);
    }
    if (nauth != (unsigned)absolute) {
        FAIL("Proxy-Authorization written %u times (+100 per value not the proxy's), absolute "
             "form %d", nauth, absolute);
    }

    /* And ferry itself (a ferry node upstream) reads it the same. */
    int r = http_parse_request(&out_msg, out, olen);
    if (r == HTTP_PARSE_TOO_MANY && out_ref.nfields > HTTP_MAX_FIELDS) {
        return;
    }
    if (r != HTTP_PARSE_OK) {
        FAIL("ferry's parser refuses the head ferry wrote (%d)\n%.*s", r, (int)olen, out);
    }
    if (out_msg.method != c->req.method) {
        FAIL("ferry reads its written head as %s, sent %s", http_method_name(out_msg.method),
             http_method_name(c->req.method));
    }
    check_framing("written head, read by ferry", ferry_framing(&c->req),
                  ferry_framing(&out_msg));
    check_relays_body("written head", &out_msg);
    check_fields("written head", &out_msg, out, &out_ref);
    for (unsigned i = 0; i < out_msg.nfields; i++) {
        const struct http_field *f = &out_msg.fields[i];
        if (memchr(out + f->name.off, '\r', f->name.len) ||
            memchr(out + f->name.off, '\n', f->name.len) ||
            memchr(out + f->value.off, '\r', f->value.len) ||
            memchr(out + f->value.off, '\n', f->value.len)) {
            FAIL("CR or LF inside written field %u", i);
        }
    }
}

static void check_routed(struct conn *c, int absolute)
{
    const char *base = buf_head(&c->cli.in);
    size_t hl = c->head_len;
    const char *why = ref_parse_request(&orig_ref, base, hl);
    if (why != NULL) {
        FAIL("ferry routed a head the strict reader refuses: %s\n%.*s", why, (int)hl, base);
    }
    const char *name = http_method_name(c->req.method);
    if (!same_bytes(orig_ref.method, orig_ref.mlen, name, strlen(name))) {
        FAIL("ferry reads method %s, the strict reader %.*s", name, (int)orig_ref.mlen,
             orig_ref.method);
    }
    check_fields("client head", &c->req, base, &orig_ref);
    check_framing("client head", ferry_framing(&c->req), ref_framing(&orig_ref));
    check_relays_body("client head", &c->req);

    c->proxy = absolute ? &http_proxy : NULL;
    if (conn_write_request_head(c) < 0) {
        return; /* does not fit the upstream buffer: ferry answers an error */
    }
    /* An https:// target goes out in origin form inside the TLS ferry
     * originates, even through an absolute-form proxy (its credentials
     * went with the CONNECT). */
    check_rewrite(c, base, absolute && !c->origin_tls);
}

int LLVMFuzzerInitialize(int *argc, char ***argv)
{
    (void)argc;
    (void)argv;
    http_proxy.pub.scheme = FERRY_SCHEME_HTTP;
    http_proxy.auth_header = "Proxy-Authorization: Basic Zm9vOmJhcg==\r\n";
    http_proxy.display = "http://fuzz-proxy:8080";
    http_proxy.label = "fuzz";
    return 0;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (size < 1) {
        return 0;
    }
    int absolute = data[0] & 1;
    struct conn *c = calloc(1, sizeof(*c));
    if (c == NULL) {
        return 0;
    }
    memset(&shim, 0, sizeof(shim));
    c->l = &lst;
    c->in = &inbound_http;
    c->cli.fd = c->up.fd = -1;
    buf_init(&c->cli.in, CONN_BUF_SIZE);
    buf_init(&c->cli.out, CONN_BUF_SIZE);
    buf_init(&c->up.in, CONN_BUF_SIZE);
    buf_init(&c->up.out, CONN_BUF_SIZE);
    snprintf(c->client, sizeof(c->client), "127.0.0.1");
    conn_set_path(c, NULL, 0);
    buf_append(&c->cli.in, data + 1, size - 1);

    conn_on_head(c);
    if (shim.routed && !c->is_connect) {
        check_routed(c, absolute);
    }

    conn_clear_header_edits(c);
    conn_idle_trim(c);
    http_msg_release(&out_msg);
    buf_free(&c->cli.in);
    buf_free(&c->cli.out);
    buf_free(&c->up.in);
    buf_free(&c->up.out);
    free(c);
    return 0;
}
