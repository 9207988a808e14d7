/* conn_cache.c - the HTTP cache in a request's life.
 *
 * A GET or HEAD on a pool (or listener) with a cache is looked up by its
 * key: a fresh entry is answered here (CS_CACHE_OUT: stored head with
 * Age and X-Cache, then the body as the client reads; no Lua, no
 * upstream); a stale one is revalidated upstream with its validators (a
 * 304 refreshes it); a miss goes upstream while its body is teed into a
 * new entry up to max_object.  Concurrent misses of one key wait for the
 * first one's fill (CS_CACHE_WAIT, bounded by lock_timeout), woken by
 * their own timers.  Unsafe methods with a non-error answer invalidate
 * their target.  The rules (what is stored, fresh, servable) are all
 * core/cache_policy.c's; the store is core/cache.c. */
#include "cache.h"
#include "cache_policy.h"
#include "cache_range.h"
#include "conn.h"
#include "listener.h"
#include "log.h"
#include "proxy.h"
#include "transport.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* The longest secondary (Vary) key compared. */
#define VKEY_MAX 4096

enum cc_how {
    CC_LOOKUP = 0, /* GET or HEAD: served, revalidated or filled */
    CC_UNSAFE,     /* an unsafe method: its answer may invalidate */
    CC_BYPASS      /* nothing to do (a body, an upgrade) */
};

/* A response being stored: the head to keep and the body's data. */
struct cache_fill {
    struct http_msg m;           /* a second reading of the body's framing: its data */
    struct cpol_entry pol;
    char *head;
    size_t head_len;
    char vary[CPOL_VARY_MAX * CPOL_VARY_NAME_MAX];
    size_t vary_len;
    char *vkey;
    char *body;
    size_t len, cap;
};

struct conn_cache {
    struct cache *k;             /* referenced */
    char *key;
    struct cpol_req rq;
    struct cache_entry *e;       /* the entry served or revalidated (a reader's ref) */
    struct cache_lock *lock;     /* the fill lock this request holds */
    struct cache_lock *waiting;  /* the fill lock it waits on */
    struct cache_fill *fill;
    char *validators;            /* conditional fields of a revalidation */
    size_t vlen;
    char *out;                   /* the head of an answer from the cache */
    size_t out_len, out_off;
    size_t body_off;             /* body bytes of e queued */
    size_t body_end;             /* where the answer's body ends in e (a range: its last + 1) */
    unsigned how:2;
    unsigned before:1;           /* taken before dispatch: a resume routes */
    unsigned alone:1;            /* coalescing is over for this request */
    unsigned woken:1;            /* the fill it waited for ended */
    unsigned reval:1;            /* the request upstream revalidates e */
    unsigned head_only:1;        /* the answer has no body (HEAD, 304) */
};

static double min_d(double a, double b)
{
    return a < b ? a : b;
}

static struct cpol_head req_head(const struct conn *c)
{
    return cpol_head_of(&c->req, buf_head(&c->cli.in));
}

/* "http://host[:port]" then the target ("https://" on a TLS listener). */
static char *make_key(const struct conn *c, const char *pre, const char *path, int plen)
{
    int tls = c->l->tls_ctx != NULL;
    char host[HOST_MAX_LEN + 1];
    size_t i = 0;
    for (; i < HOST_MAX_LEN && c->host[i] != '\0'; i++) {
        char ch = c->host[i];
        host[i] = (ch >= 'A' && ch <= 'Z') ? (char)(ch + 32) : ch;
    }
    host[i] = '\0';
    int v6 = strchr(host, ':') != NULL;
    char port[16] = "";
    if (c->port != (tls ? 443 : 80)) {
        snprintf(port, sizeof(port), ":%d", c->port);
    }
    size_t n = strlen(host) + strlen(port) + strlen(pre) + (size_t)plen + 16;
    char *k = malloc(n);
    if (k != NULL) {
        snprintf(k, n, "%s://%s%s%s%s%s%.*s", tls ? "https" : "http", v6 ? "[" : "", host,
                 v6 ? "]" : "", port, pre, plen, path);
    }
    return k;
}

static void fill_free(struct cache *k, struct cache_fill *f)
{
    if (f != NULL) {
        k->st.filling -= f->cap;
        free(f->head);
        free(f->vkey);
        free(f->body);
        free(f);
    }
}

/* A waiter's fill ended: its own timer wakes it (never this call). */
static void wake(struct conn *w)
{
    if (w->cache != NULL) {
        w->cache->waiting = NULL;
        w->cache->woken = 1;
    }
    conn_arm(w, 0.);
}

static void lock_release(struct conn_cache *cc)
{
    if (cc->lock != NULL) {
        struct cache_lock *l = cc->lock;
        cc->lock = NULL;
        cache_lock_release(l, wake);
    }
}

/* The fill is given up (too large, bad framing, not stored after all). */
static void fill_abandon(struct conn_cache *cc)
{
    fill_free(cc->k, cc->fill);
    cc->fill = NULL;
    lock_release(cc);
}

void conn_cache_end(struct conn *c)
{
    struct conn_cache *cc = c->cache;
    if (cc == NULL) {
        return;
    }
    c->cache = NULL;
    if (cc->waiting != NULL) {
        cache_lock_leave(cc->waiting, c);
    }
    fill_abandon(cc);
    cache_entry_unref(cc->e);
    free(cc->key);
    free(cc->validators);
    free(cc->out);
    cache_unref(cc->k);
    free(cc);
}

/* Whether stored entry e is the variant the request selects. */
static int variant_of(void *arg, const struct cache_entry *e)
{
    const struct conn *c = arg;
    if (e->vary_len == 0) {
        return 1;
    }
    struct cpol_vary v;
    memset(&v, 0, sizeof(v));
    for (const char *p = e->vary; p < e->vary + e->vary_len && v.n < CPOL_VARY_MAX;
         p += strlen(p) + 1) {
        snprintf(v.names[v.n++], CPOL_VARY_NAME_MAX, "%s", p);
    }
    char key[VKEY_MAX];
    struct cpol_head rh = req_head(c);
    long n = cpol_vary_key(&v, &rh, key, sizeof(key));
    return n >= 0 && strcmp(key, e->vkey) == 0;
}

/* Parse a stored head (it ends with its blank line) for the rules. */
static int stored_parse(const struct cache_entry *e, struct http_msg *m)
{
    memset(m, 0, sizeof(*m));
    return http_parse_response(m, e->head, e->head_len, 0) == HTTP_PARSE_OK ? 0 : -1;
}

/* The byte range of e a GET with Range gets (cache_range.c); *first and
 * *last are set for CRANGE_PART. */
static enum cache_range range_of(const struct conn *c, const struct cache_entry *e,
                                 size_t *first, size_t *last)
{
    struct cpol_head rh = req_head(c);
    size_t rlen = 0, irlen = 0, elen = 0, llen = 0;
    if (c->req.method != HTTP_GET || e->status != 200 || cpol_head_count(&rh, "Range") != 1) {
        return CRANGE_FULL;
    }
    const char *range = cpol_head_get(&rh, "Range", &rlen);
    const char *ir = cpol_head_count(&rh, "If-Range") == 1 ? cpol_head_get(&rh, "If-Range", &irlen)
                                                            : NULL;
    if (cpol_head_count(&rh, "If-Range") > 1) {
        return CRANGE_FULL;
    }
    struct http_msg sm;
    if (stored_parse(e, &sm) < 0) {
        return CRANGE_FULL;
    }
    struct cpol_head sh = cpol_head_of(&sm, e->head);
    const char *etag = cpol_head_get(&sh, "ETag", &elen);
    const char *lm = cpol_head_get(&sh, "Last-Modified", &llen);
    enum cache_range r = cache_range_pick(range, rlen, ir, irlen, etag, elen, lm, llen,
                                          e->body_len, first, last);
    http_msg_release(&sm);
    return r;
}

/* Answer the request from e (the reference is taken over), marked
 * X-Cache: mark; a client's conditional gets a 304 when it matches.
 * upstream: an attempt was made (its proxy or backend stays on the
 * access line). */
static void serve(struct conn *c, struct cache_entry *e, const char *mark, int upstream)
{
    struct conn_cache *cc = c->cache;
    double now = loop_now();
    if (cc->e != NULL && cc->e != e) {
        cache_entry_unref(cc->e);
    }
    cc->e = e;
    cc->reval = 0;
    int not_modified = 0;
    size_t cap = e->head_len + 512;
    char *h = malloc(cap);
    if (h == NULL) {
        conn_fail(c, FERR_OVERLOADED);
        return;
    }
    size_t n = 0;
    struct http_msg sm;
    if ((cc->rq.has_inm || cc->rq.has_ims) && stored_parse(e, &sm) == 0) {
        struct cpol_head sh = cpol_head_of(&sm, e->head);
        struct cpol_head rh = req_head(c);
        if (cpol_conditional(&cc->rq, &rh, &sh, now) == CPOL_COND_NOT_MODIFIED) {
            not_modified = 1;
            n += (size_t)snprintf(h, cap, "HTTP/1.1 304 Not Modified\r\n");
            for (unsigned i = 0; i < sm.nfields; i++) {
                const struct http_field *f = &sm.fields[i];
                if (cpol_field_in_304(e->head + f->name.off, f->name.len)) {
                    n += (size_t)snprintf(h + n, cap - n, "%.*s: %.*s\r\n", (int)f->name.len,
                                          e->head + f->name.off, (int)f->value.len,
                                          e->head + f->value.off);
                }
            }
        }
        http_msg_release(&sm);
    }
    size_t first = 0, last = 0;
    enum cache_range part = not_modified ? CRANGE_FULL : range_of(c, e, &first, &last);
    if (!not_modified) {
        memcpy(h, e->head, e->head_len - 2); /* without its blank line */
        n = e->head_len - 2;
    }
    if (part != CRANGE_FULL) {
        /* The stored status line gives way to 206 or 416 (a 200's head:
         * "HTTP/1.x 200 ...\r\n" then its fields). */
        const char *eol = memchr(h, '\n', n);
        size_t skip = eol != NULL ? (size_t)(eol - h) + 1 : n;
        const char *line = part == CRANGE_PART ? "HTTP/1.1 206 Partial Content\r\n"
                                               : "HTTP/1.1 416 Range Not Satisfiable\r\n";
        size_t ll = strlen(line);
        memmove(h + ll, h + skip, n - skip); /* cap has 512 spare bytes: ll < skip + 512 */
        memcpy(h, line, ll);
        n = n - skip + ll;
    }
    c->keep_client = c->req.keep_alive && !c->cli.eof;
    n += (size_t)snprintf(h + n, cap - n, "Age: %lld\r\nX-Cache: %s\r\n",
                          (long long)cpol_age_header(&e->pol, now), mark);
    /* As on every answer ferry relays; the stored head keeps the backend's own Via. */
    n += conn_via_stored(c, e->head_len > 7 && e->head[7] == '0' ? 0 : 1, h + n, cap - n);
    cc->body_off = 0;
    cc->body_end = e->body_len;
    if (part == CRANGE_PART) {
        n += (size_t)snprintf(h + n, cap - n, "Content-Range: bytes %zu-%zu/%zu\r\n"
                              "Content-Length: %zu\r\n", first, last, e->body_len,
                              last - first + 1);
        cc->body_off = first;
        cc->body_end = last + 1;
    } else if (part == CRANGE_UNSAT) {
        n += (size_t)snprintf(h + n, cap - n, "Content-Range: bytes */%zu\r\n"
                              "Content-Length: 0\r\n", e->body_len);
        cc->body_end = 0;
    } else if (!not_modified && e->status != 204 && e->status != 304) {
        n += (size_t)snprintf(h + n, cap - n, "Content-Length: %zu\r\n", e->body_len);
    }
    n += (size_t)snprintf(h + n, cap - n, "X-Request-Id: %s\r\n%s\r\n", c->cid,
                          !c->keep_client ? "Connection: close\r\n"
                          : c->req.minor == 0 ? "Connection: keep-alive\r\n" : "");
    free(cc->out);
    cc->out = h;
    cc->out_len = n < cap ? n : cap - 1;
    cc->out_off = 0;
    cc->head_only = not_modified || c->req.method == HTTP_HEAD || part == CRANGE_UNSAT;
    if (!upstream) {
        c->proxy = NULL; /* chosen by dispatch (if it ran), never used */
    }
    c->status = not_modified ? 304 : part == CRANGE_PART ? 206 : part == CRANGE_UNSAT ? 416
                                                                                  : e->status;
    c->cache_mark = mark;
    c->code = NULL;
    c->fwd = c->head_len;
    c->req_done = 1;
    c->resp_head_done = 1;
    c->resp_done = 0;
    c->sent_any = 1;
    c->replayable = 0;
    c->state = CS_CACHE_OUT;
    conn_arm(c, timeouts.idle);
    conn_cache_pump(c);
}

void conn_cache_pump(struct conn *c)
{
    struct conn_cache *cc = c->cache;
    if (cc == NULL || cc->out == NULL || cc->e == NULL) {
        conn_close(c);
        return;
    }
    if (cc->out_off < cc->out_len) {
        size_t k = buf_append(&c->cli.out, cc->out + cc->out_off, cc->out_len - cc->out_off);
        cc->out_off += k;
        c->bytes_out += k;
        if (cc->out_off < cc->out_len) {
            return;
        }
    }
    const struct cache_entry *e = cc->e;
    while (!cc->head_only && cc->body_off < cc->body_end) {
        const char *p = e->body + cc->body_off;
        size_t left = cc->body_end - cc->body_off;
        if (!buf_empty(&c->cli.out)) {
            /* Behind the head: through the buffer, as far as it has room. */
            size_t k = buf_append(&c->cli.out, p, left);
            cc->body_off += k;
            c->bytes_out += k;
            return;
        }
        /* The rest goes from the entry to the socket, no copy. */
        ssize_t n = leg_tr(&c->cli)->write(&c->cli, p, left);
        if (n > 0) {
            cc->body_off += (size_t)n;
            c->bytes_out += (unsigned long long)n;
            c->last_io = c->last_down = loop_now();
            continue;
        }
        if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK)) {
            return; /* the client watcher asks for writability in CS_CACHE_OUT */
        }
        conn_close(c); /* the client went away */
        return;
    }
    c->resp_done = 1;
    conn_finish(c);
}

/* The validators of a revalidation of e; 0 when it goes out as a plain GET. */
static void take_validators(struct conn_cache *cc, const struct cache_entry *e)
{
    struct http_msg sm;
    if (stored_parse(e, &sm) < 0) {
        return;
    }
    struct cpol_head sh = cpol_head_of(&sm, e->head);
    char buf[1024];
    long n = cpol_validators(&sh, buf, sizeof(buf));
    http_msg_release(&sm);
    if (n > 0 && (cc->validators = malloc((size_t)n + 1)) != NULL) {
        memcpy(cc->validators, buf, (size_t)n + 1);
        cc->vlen = (size_t)n;
    }
}

static void resume(struct conn *c)
{
    if (c->cache != NULL && c->cache->before) {
        conn_route(c);
    } else {
        conn_attempt(c);
    }
}

/* Look the request up and act: 1 when answered or waiting. */
static int decide(struct conn *c)
{
    struct conn_cache *cc = c->cache;
    struct cache *k = cc->k;
    double now = loop_now();
    struct cache_entry *e = cache_lookup(k, cc->key, variant_of, c);
    if (e != NULL) {
        switch (cpol_serve(&e->pol, &cc->rq, now)) {
        case CPOL_SERVE_FRESH:
            k->st.hits++;
            serve(c, e, "HIT", 0);
            return 1;
        case CPOL_SERVE_STALE:
        case CPOL_SERVE_STALE_BG: /* served stale; the next use past the window revalidates */
            k->st.stale++;
            serve(c, e, "STALE", 0);
            return 1;
        case CPOL_ONLY_IF_CACHED_FAIL:
            cache_entry_unref(e);
            conn_fail(c, FERR_CACHE_ONLY_IF_CACHED);
            return 1;
        case CPOL_REVALIDATE:
            break;
        }
    } else if (cc->rq.cc.only_if_cached) {
        conn_fail(c, FERR_CACHE_ONLY_IF_CACHED);
        return 1;
    }
    /* A miss (or a revalidation): a GET waits for a fill of the same key
     * already under way, or becomes that fill. */
    if (c->req.method == HTTP_GET && !cc->alone) {
        struct cache_lock *l = cache_lock_find(k, cc->key);
        if (l != NULL && cache_lock_wait(l, c) == 0) {
            cache_entry_unref(e);
            cc->waiting = l;
            k->st.coalesced++;
            c->state = CS_CACHE_WAIT;
            conn_arm(c, min_d(k->lock_timeout, c->deadline - now));
            return 1;
        }
        if (l == NULL) {
            cc->lock = cache_lock_take(k, cc->key, c);
        }
    }
    if (e != NULL) {
        cc->e = e;
        cc->reval = 1;
        take_validators(cc, e);
    }
    c->cache_mark = "MISS";
    return 0;
}

int conn_cache_request(struct conn *c, int before_dispatch)
{
    struct cache *k = before_dispatch ? cache_of_listener(c->l->name) : cache_of_pool(c->pool);
    if (k == NULL && before_dispatch && c->l->rev_pool > 0 && cache_fixed_sites()) {
        /* A reverse listener without route(): its pool is known already. */
        k = cache_of_pool(c->l->rev_pool);
        c->pool = k != NULL ? c->l->rev_pool : c->pool;
    }
    if (k == NULL || c->cache != NULL || c->is_connect || c->origin_tls || c->mitm != NULL) {
        return 0;
    }
    struct conn_cache *cc = calloc(1, sizeof(*cc));
    if (cc == NULL) {
        return 0;
    }
    const char *pre, *path;
    int plen;
    conn_target_path(c, buf_head(&c->cli.in), &pre, &path, &plen);
    if ((cc->key = make_key(c, pre, path, plen)) == NULL) {
        free(cc);
        return 0;
    }
    cache_ref(k);
    cc->k = k;
    cc->before = before_dispatch != 0;
    c->cache = cc;
    int m = c->req.method;
    if (m != HTTP_GET && m != HTTP_HEAD) {
        cc->how = CC_UNSAFE;
        c->cache_mark = "BYPASS";
        return 0;
    }
    if (c->req.has_body || c->upgrade) {
        cc->how = CC_BYPASS;
        c->cache_mark = "BYPASS";
        k->st.bypass++;
        return 0;
    }
    struct cpol_head rh = req_head(c);
    cpol_req_parse(&rh, m, loop_now(), &cc->rq);
    cc->how = CC_LOOKUP;
    if (decide(c)) {
        return 1;
    }
    k->st.misses += cc->reval ? 0 : 1;
    return 0;
}

void conn_cache_wait_fired(struct conn *c)
{
    struct conn_cache *cc = c->cache;
    if (cc == NULL) {
        conn_close(c);
        return;
    }
    if (cc->waiting != NULL) {
        /* lock_timeout ran out: go alone */
        cache_lock_leave(cc->waiting, c);
        cc->waiting = NULL;
        struct log_ctx ctx = { .cid = c->cid, .listener = c->l->name };
        log_event(LOG_INFO, "FERRY-3141", &ctx, "cache: %s waited %.1fs for another request's "
                  "fill of the same key; going alone", c->path, cc->k->lock_timeout);
    }
    cc->alone = 1; /* the fill is over: what it stored is found, or each goes alone */
    cc->woken = 0;
    if (decide(c)) {
        return;
    }
    cc->k->st.misses += cc->reval ? 0 : 1;
    resume(c);
}

int conn_cache_drops(const struct conn *c, const char *name, size_t len)
{
    return c->cache != NULL && c->cache->reval && cpol_field_conditional(name, len);
}

const char *conn_cache_validators(const struct conn *c, size_t *len)
{
    const struct conn_cache *cc = c->cache;
    if (cc == NULL || !cc->reval || cc->validators == NULL) {
        return NULL;
    }
    *len = cc->vlen;
    return cc->validators;
}

/* Drop the target of an unsafe request, and what its Location and
 * Content-Location name on the same host. */
static void invalidate(struct conn *c, const char *base)
{
    struct conn_cache *cc = c->cache;
    cache_invalidate(cc->k, cc->key);
    static const char *const names[] = { "location", "content-location" };
    struct cpol_head h = cpol_head_of(&c->resp, base);
    for (unsigned i = 0; i < 2; i++) {
        size_t vlen, off, len;
        const char *v = cpol_head_get(&h, names[i], &vlen);
        if (v != NULL && cpol_same_host_uri(v, vlen, c->host, strlen(c->host), &off, &len)) {
            char *key = make_key(c, "", v + off, (int)len);
            if (key != NULL) {
                cache_invalidate(cc->k, key);
                free(key);
            }
        }
    }
}

/* The stored head of a response: status line, the fields a cache keeps
 * (no framing, no Age: each answer computes its own), the blank line. */
static char *stored_head(const struct conn *c, const char *base, size_t hl, size_t *len)
{
    const struct http_msg *m = &c->resp;
    /* Each field may grow by ": " and CRLF around what it had. */
    size_t cap = hl + 4 * (size_t)m->nfields + 64 + m->reason.len;
    char *h = malloc(cap);
    if (h == NULL) {
        return NULL;
    }
    size_t n = (size_t)snprintf(h, cap, "HTTP/1.1 %d %.*s\r\n", m->status, (int)m->reason.len,
                                base + m->reason.off);
    for (unsigned i = 0; i < m->nfields; i++) {
        const struct http_field *f = &m->fields[i];
        const char *name = base + f->name.off;
        struct http_span s = f->name;
        if (f->hop || !cpol_field_storable(name, s.len) ||
            http_span_ieq(base, s, "Content-Length") || http_span_ieq(base, s, "Age") ||
            http_span_ieq(base, s, "X-Cache") || http_span_ieq(base, s, "X-Request-Id") ||
            http_span_ieq(base, s, "X-Ferry-Proxy")) {
            continue;
        }
        if (n + s.len + f->value.len + 4 + 3 > cap) {
            free(h);
            return NULL;
        }
        memcpy(h + n, name, s.len);
        memcpy(h + n + s.len, ": ", 2);
        memcpy(h + n + s.len + 2, base + f->value.off, f->value.len);
        memcpy(h + n + s.len + 2 + f->value.len, "\r\n", 2);
        n += s.len + f->value.len + 4;
    }
    if (n + 3 > cap) {
        free(h);
        return NULL;
    }
    memcpy(h + n, "\r\n", 3);
    *len = n + 2;
    return h;
}

/* Start teeing this response into a new entry. */
static void fill_begin(struct conn *c, const char *base, size_t hl, const struct cpol_entry *pol,
                       const struct cpol_vary *v)
{
    struct conn_cache *cc = c->cache;
    fill_free(cc->k, cc->fill);
    cc->fill = NULL;
    struct cache_fill *f = calloc(1, sizeof(*f));
    if (f == NULL) {
        return;
    }
    f->pol = *pol;
    char vkey[VKEY_MAX];
    struct cpol_head rh = req_head(c);
    long vn = cpol_vary_key(v, &rh, vkey, sizeof(vkey));
    f->head = stored_head(c, base, hl, &f->head_len);
    f->vkey = vn >= 0 ? strdup(vkey) : NULL;
    if (f->head == NULL || f->vkey == NULL) {
        fill_free(cc->k, f);
        return;
    }
    for (unsigned i = 0; i < v->n; i++) {
        size_t l = strlen(v->names[i]) + 1;
        memcpy(f->vary + f->vary_len, v->names[i], l);
        f->vary_len += l;
    }
    f->m.framing = c->resp.framing;
    f->m.content_length = c->resp.content_length;
    http_body_reset(&f->m);
    cc->fill = f;
}

/* A 304 for the entry being revalidated: the entry with the merged
 * head and fresh times (stored again when the rules allow), or NULL
 * when the 304 does not select it. */
static struct cache_entry *refresh(struct conn *c, const char *base, size_t hl)
{
    struct conn_cache *cc = c->cache;
    struct cache_entry *old = cc->e;
    double now = loop_now();
    struct http_msg sm;
    if (stored_parse(old, &sm) < 0) {
        return NULL;
    }
    struct cpol_head sh = cpol_head_of(&sm, old->head);
    struct cpol_head h304 = cpol_head_of(&c->resp, base);
    struct cache_entry *e = NULL;
    size_t cap = old->head_len + hl + 64;
    char *merged = malloc(cap);
    const char *eol = memchr(old->head, '\n', old->head_len);
    if (merged != NULL && eol != NULL && cpol_304_selects(&sh, &h304)) {
        size_t sl = (size_t)(eol - old->head) + 1;
        memcpy(merged, old->head, sl);
        long n = cpol_merge_304(&sh, &h304, merged + sl, cap - sl - 3);
        if (n >= 0) {
            memcpy(merged + sl + n, "\r\n", 3);
            e = cache_entry_new(old->key, old->vary, old->vary_len, old->vkey, merged,
                                sl + (size_t)n + 2, old->body, old->body_len);
        }
    }
    http_msg_release(&sm);
    free(merged);
    if (e == NULL) {
        return NULL;
    }
    e->status = old->status;
    e->pol = old->pol;
    struct http_msg nm;
    if (stored_parse(e, &nm) == 0) {
        struct cpol_head nh = cpol_head_of(&nm, e->head);
        struct cpol_resp rs;
        cpol_resp_parse(&nh, e->status, now, &rs);
        if (cpol_entry_init(&e->pol, &cc->rq, &rs, &nh, c->t_attempt, now, cc->k->ttl) ==
                CPOL_STORE && cc->k->configured) {
            e->refs++; /* ours, besides the store's */
            cache_insert(cc->k, e); /* a refusal drops the store's reference only */
            http_msg_release(&nm);
            return e;
        }
        cache_remove(old); /* the 304 forbids storing it any more */
    }
    http_msg_release(&nm);
    return e;
}

int conn_cache_response(struct conn *c, const char *base, size_t hl)
{
    struct conn_cache *cc = c->cache;
    if (cc == NULL) {
        return 0;
    }
    int st = c->resp.status;
    if (cc->how == CC_UNSAFE) {
        if (cpol_invalidates(c->req.method, st)) {
            invalidate(c, base);
        }
        return 0;
    }
    if (cc->how != CC_LOOKUP) {
        return 0;
    }
    struct cache *k = cc->k;
    double now = loop_now();
    if (cc->e != NULL && cc->reval) {
        if (st == 304) {
            struct cache_entry *e = refresh(c, base, hl);
            if (e != NULL) {
                conn_report_head(c, base, hl, st);
                buf_consume(&c->up.in, hl);
                int keep = c->resp.keep_alive && c->req_done && buf_empty(&c->up.in) &&
                           !c->up.eof;
                conn_upstream_release(c, keep);
                k->st.revalidated++;
                lock_release(cc);
                serve(c, e, "REVALIDATED", 1);
                return 1;
            }
        } else if (cpol_status_is_failure(st) && cpol_stale_on_error(&cc->e->pol, &cc->rq, now)) {
            conn_report_head(c, base, hl, st);
            conn_upstream_close(c);
            k->st.stale++;
            lock_release(cc);
            struct cache_entry *e = cc->e;
            cc->e = NULL;
            serve(c, e, "STALE", 1);
            return 1;
        }
        /* Any other answer replaces the stored one. */
        k->st.misses++;
        cc->reval = 0;
        if (!cpol_status_is_failure(st)) {
            cache_remove(cc->e);
        }
    }
    if (c->req.method != HTTP_GET) {
        lock_release(cc);
        return 0;
    }
    struct cpol_head h = cpol_head_of(&c->resp, base);
    struct cpol_resp rs;
    struct cpol_entry pol;
    struct cpol_vary v;
    cpol_resp_parse(&h, st, now, &rs);
    enum cpol_store s = cpol_entry_init(&pol, &cc->rq, &rs, &h, c->t_attempt, now, k->ttl);
    if (s == CPOL_STORE && cpol_vary_parse(&h, &v) < 0) {
        s = CPOL_NS_VARY;
    }
    int store = s == CPOL_STORE;
    if (store && c->resp.framing == HTTP_FRAME_LENGTH && c->resp.content_length > k->max_object) {
        k->st.too_large++; /* relayed, not stored */
        store = 0;
    }
    if (!store) {
        lock_release(cc);
        return 0;
    }
    fill_begin(c, base, hl, &pol, &v);
    if (cc->fill == NULL) {
        lock_release(cc);
    }
    return 0;
}

/* The bodies of the fills under way together stay within the cache's
 * size (each one within max_object): many concurrent misses of large
 * objects would otherwise hold max_object each, far beyond size.  The
 * fill that would pass it is given up (the answer is relayed whole,
 * not stored): FERRY-3160 once per window, ferry_cache_fill_refused_total. */
#define FILL_LOG_WINDOW 10.0
static int fill_over_budget(struct conn_cache *cc, size_t more)
{
    struct cache *k = cc->k;
    k->st.fill_refused++;
    double now = loop_now();
    if (k->fill_log_at > 0 && now - k->fill_log_at < FILL_LOG_WINDOW) {
        k->fill_quiet++;
        return -2;
    }
    log_event(LOG_WARN, "FERRY-3160", NULL, "cache %s: the fills under way hold %llu bytes and "
              "%zu more would pass its size (%llu): this answer is relayed, not stored "
              "(%llu more in the last %.0f s)", k->label, (unsigned long long)k->st.filling,
              more, (unsigned long long)k->size, (unsigned long long)k->fill_quiet,
              FILL_LOG_WINDOW);
    k->fill_log_at = now;
    k->fill_quiet = 0;
    return -2;
}

static int fill_append(struct conn_cache *cc, const char *p, size_t n)
{
    struct cache_fill *f = cc->fill;
    if (f->len + n > cc->k->max_object) {
        return -1;
    }
    if (f->len + n > f->cap) {
        size_t cap = f->cap ? f->cap * 2 : 16384;
        while (cap < f->len + n) {
            cap *= 2;
        }
        cap = cap < cc->k->max_object ? cap : cc->k->max_object;
        struct cache *k = cc->k;
        if (k->st.filling - f->cap + cap > k->size) {
            return fill_over_budget(cc, cap - f->cap);
        }
        char *b = realloc(f->body, cap);
        if (b == NULL) {
            return -1;
        }
        k->st.filling += cap - f->cap;
        f->body = b;
        f->cap = cap;
    }
    memcpy(f->body + f->len, p, n);
    f->len += n;
    return 0;
}

void conn_cache_tee(struct conn *c, const char *p, size_t n)
{
    struct conn_cache *cc = c->cache;
    if (cc == NULL || cc->fill == NULL) {
        return;
    }
    while (n > 0) {
        size_t off, len;
        long k = http_body_data(&cc->fill->m, p, n, &off, &len);
        if (k < 0) {
            fill_abandon(cc);
            return;
        }
        if (k == 0) {
            break;
        }
        int r = len > 0 ? fill_append(cc, p + off, len) : 0;
        if (r < 0) {
            if (r == -1) {
                cc->k->st.too_large++;
            }
            fill_abandon(cc); /* relayed whole, not stored */
            return;
        }
        p += k;
        n -= (size_t)k;
    }
}

void conn_cache_complete(struct conn *c)
{
    struct conn_cache *cc = c->cache;
    if (cc == NULL || cc->fill == NULL) {
        return;
    }
    struct cache_fill *f = cc->fill;
    struct cache_entry *e = NULL;
    if (c->resp.msg_done && cc->k->configured) {
        e = cache_entry_new(cc->key, f->vary, f->vary_len, f->vkey, f->head, f->head_len,
                            f->body, f->len);
    }
    if (e != NULL) {
        e->status = c->resp.status;
        e->pol = f->pol;
        cache_insert(cc->k, e);
    }
    fill_abandon(cc); /* the fill is over either way: waiters look again */
}

int conn_cache_rescue(struct conn *c, enum ferr e)
{
    struct conn_cache *cc = c->cache;
    if (cc == NULL || cc->e == NULL || !cc->reval || c->sent_any) {
        return 0;
    }
    int st = ferr_info(e)->status;
    if ((st != 502 && st != 503 && st != 504) ||
        !cpol_stale_on_error(&cc->e->pol, &cc->rq, loop_now())) {
        return 0;
    }
    cc->k->st.stale++;
    fill_abandon(cc);
    struct cache_entry *en = cc->e;
    cc->e = NULL;
    serve(c, en, "STALE", 1);
    return 1;
}
