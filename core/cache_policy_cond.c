/* cache_policy_cond.c - the parts of RFC 9111 / RFC 9110 that compare
 * heads: Vary (which stored variant a request selects), entity-tags and
 * conditional requests, the revalidation request's validators, merging
 * a 304 into a stored response, and which URIs an unsafe request
 * invalidates.  Pure functions, see cache_policy.h. */
#include "cache_policy.h"

#include <string.h>

static unsigned char cc_lower(unsigned char c)
{
    return c >= 'A' && c <= 'Z' ? (unsigned char)(c + 32) : c;
}

static int cc_ieq(const char *a, size_t an, const char *b, size_t bn)
{
    if (an != bn) {
        return 0;
    }
    for (size_t i = 0; i < an; i++) {
        if (cc_lower((unsigned char)a[i]) != cc_lower((unsigned char)b[i])) {
            return 0;
        }
    }
    return 1;
}

/* name (n bytes) is one of the NULL-terminated list (lowercase). */
static int cc_in(const char *name, size_t n, const char *const *list)
{
    for (; *list; list++) {
        if (cc_ieq(name, n, *list, strlen(*list))) {
            return 1;
        }
    }
    return 0;
}

static const char *cc_name(const struct cpol_head *h, unsigned i, size_t *n)
{
    *n = h->fields[i].name.len;
    return h->base + h->fields[i].name.off;
}

static const char *cc_value(const struct cpol_head *h, unsigned i, size_t *n)
{
    *n = h->fields[i].value.len;
    return h->base + h->fields[i].value.off;
}

/* ------------------------------------------------------------------ */
/* Vary                                                                 */

int cpol_vary_parse(const struct cpol_head *resp, struct cpol_vary *v)
{
    struct cpol_elem e;
    memset(v, 0, sizeof(*v));
    for (unsigned i = 0; i < resp->nfields; i++) {
        size_t n, pos = 0;
        const char *name = cc_name(resp, i, &n);
        if (!cc_ieq(name, n, "vary", 4)) {
            continue;
        }
        const char *val = cc_value(resp, i, &n);
        while (cpol_list_next(val, n, &pos, &e)) {
            if (e.name_len == 1 && e.name[0] == '*' && !e.has_arg && !e.bad) {
                v->star = 1;
                continue;
            }
            if (e.bad || e.has_arg || e.name_len >= CPOL_VARY_NAME_MAX) {
                v->overflow = 1;
                continue;
            }
            unsigned k;
            for (k = 0; k < v->n; k++) {
                if (cc_ieq(v->names[k], strlen(v->names[k]), e.name, e.name_len)) {
                    break;
                }
            }
            if (k < v->n) {
                continue;
            }
            if (v->n == CPOL_VARY_MAX) {
                v->overflow = 1;
                continue;
            }
            for (size_t j = 0; j < e.name_len; j++) {
                v->names[v->n][j] = (char)cc_lower((unsigned char)e.name[j]);
            }
            v->names[v->n][e.name_len] = '\0';
            v->n++;
        }
    }
    return v->star || v->overflow ? -1 : 0;
}

/* Reads the normalized value of one request field, byte by byte: its
 * lines joined by ",", each run of spaces and tabs one space, none
 * around commas or at the ends; empty lines are skipped. */
struct cc_norm {
    const struct cpol_head *h;
    const char *name;
    unsigned i;          /* the field line being read */
    size_t pos;          /* within its value */
    int started;         /* a byte was produced */
    int comma;           /* a comma is due before the next byte */
    int space;           /* a space is due before the next byte */
    int pending;         /* -1 none, else a byte produced but not yet taken */
};

static int cc_norm_field(struct cc_norm *r)
{
    size_t n;
    while (r->i < r->h->nfields) {
        const char *name = cc_name(r->h, r->i, &n);
        if (cc_ieq(name, n, r->name, strlen(r->name))) {
            return 1;
        }
        r->i++;
    }
    return 0;
}

static void cc_norm_init(struct cc_norm *r, const struct cpol_head *h, const char *name)
{
    memset(r, 0, sizeof(*r));
    r->h = h;
    r->name = name;
    r->pending = -1;
    cc_norm_field(r);
}

/* 1 when the request has the field at all. */
static int cc_norm_present(const struct cc_norm *r)
{
    return r->i < r->h->nfields;
}

/* The next byte of the normalized value, or -1 at its end. */
static int cc_norm_next(struct cc_norm *r)
{
    size_t n;
    for (;;) {
        if (r->pending >= 0) {
            int c = r->pending;
            r->pending = -1;
            return c;
        }
        if (r->i >= r->h->nfields) {
            return -1;
        }
        const char *v = cc_value(r->h, r->i, &n);
        if (r->pos >= n) {
            /* The end of a line works as a comma between lines. */
            r->comma = r->started;
            r->space = 0;
            r->pos = 0;
            r->i++;
            cc_norm_field(r);
            continue;
        }
        unsigned char c = (unsigned char)v[r->pos++];
        if (c == ' ' || c == '\t') {
            r->space = r->started && !r->comma;
            continue;
        }
        if (c == ',') {
            r->comma = r->started;
            r->space = 0;
            continue;
        }
        if (r->comma) {
            r->comma = r->space = 0;
            r->pending = c;
            return ',';
        }
        if (r->space) {
            r->space = 0;
            r->pending = c;
            return ' ';
        }
        r->started = 1;
        return c;
    }
}

long cpol_vary_key(const struct cpol_vary *v, const struct cpol_head *req, char *out, size_t cap)
{
    size_t len = 0;
    struct cc_norm r;
    if (cap == 0) {
        return -1;
    }
    for (unsigned k = 0; k < v->n; k++) {
        size_t nl = strlen(v->names[k]);
        cc_norm_init(&r, req, v->names[k]);
        if (len + nl + 2 >= cap) {
            return -1;
        }
        memcpy(out + len, v->names[k], nl);
        len += nl;
        out[len++] = cc_norm_present(&r) ? ':' : '!';
        for (int c = cc_norm_next(&r); c >= 0; c = cc_norm_next(&r)) {
            if (len + 2 >= cap) {
                return -1;
            }
            out[len++] = (char)c;
        }
        out[len++] = '\n';
    }
    out[len] = '\0';
    return (long)len;
}

int cpol_vary_match(const struct cpol_vary *v, const struct cpol_head *a, const struct cpol_head *b)
{
    struct cc_norm ra, rb;
    for (unsigned k = 0; k < v->n; k++) {
        int ca, cb;
        cc_norm_init(&ra, a, v->names[k]);
        cc_norm_init(&rb, b, v->names[k]);
        if (cc_norm_present(&ra) != cc_norm_present(&rb)) {
            return 0;
        }
        do {
            ca = cc_norm_next(&ra);
            cb = cc_norm_next(&rb);
            if (ca != cb) {
                return 0;
            }
        } while (ca >= 0);
    }
    return 1;
}

/* ------------------------------------------------------------------ */
/* Entity-tags                                                          */

/* The length of the entity-tag at s (RFC 9110 8.8.3:
 * [ "W/" ] DQUOTE *etagc DQUOTE), 0 if there is none; *weak set. */
static size_t cc_etag_len(const char *s, size_t n, int *weak)
{
    size_t i = 0;
    *weak = 0;
    if (n >= 2 && s[0] == 'W' && s[1] == '/') {
        *weak = 1;
        i = 2;
    }
    if (i >= n || s[i] != '"') {
        return 0;
    }
    for (i++; i < n; i++) {
        unsigned char c = (unsigned char)s[i];
        if (c == '"') {
            return i + 1;
        }
        if (c < 0x21 || c == 0x7f) {
            return 0;
        }
    }
    return 0;
}

/* Compare two whole entity-tags; strong: both must be strong. */
static int cc_etag_eq(const char *a, size_t an, const char *b, size_t bn, int strong)
{
    int wa, wb;
    if (cc_etag_len(a, an, &wa) != an || an == 0 || cc_etag_len(b, bn, &wb) != bn || bn == 0) {
        return 0;
    }
    if (strong && (wa || wb)) {
        return 0;
    }
    a += wa ? 2 : 0;
    an -= wa ? 2 : 0;
    b += wb ? 2 : 0;
    bn -= wb ? 2 : 0;
    return an == bn && memcmp(a, b, an) == 0;
}

int cpol_etag_weak_eq(const char *a, size_t an, const char *b, size_t bn)
{
    return cc_etag_eq(a, an, b, bn, 0);
}

int cpol_etag_strong_eq(const char *a, size_t an, const char *b, size_t bn)
{
    return cc_etag_eq(a, an, b, bn, 1);
}

/* 1 when one If-None-Match line (v, n) matches etag; -1 if malformed. */
static int cc_inm_line(const char *v, size_t n, const char *etag, size_t etag_len)
{
    size_t i = 0;
    int any = 0, weak;
    while (i < n) {
        while (i < n && (v[i] == ' ' || v[i] == '\t' || v[i] == ',')) {
            i++;
        }
        if (i >= n) {
            break;
        }
        if (v[i] == '*') {
            any = 1;
            i++;
        } else {
            size_t l = cc_etag_len(v + i, n - i, &weak);
            if (l == 0) {
                return -1;
            }
            if (etag && cpol_etag_weak_eq(v + i, l, etag, etag_len)) {
                any = 1;
            }
            i += l;
        }
        while (i < n && (v[i] == ' ' || v[i] == '\t')) {
            i++;
        }
        if (i < n && v[i] != ',') {
            return -1;
        }
    }
    return any;
}

int cpol_inm_matches(const struct cpol_head *req, const char *etag, size_t etag_len)
{
    int match = 0;
    for (unsigned i = 0; i < req->nfields; i++) {
        size_t n;
        const char *name = cc_name(req, i, &n);
        if (!cc_ieq(name, n, "if-none-match", 13)) {
            continue;
        }
        const char *v = cc_value(req, i, &n);
        int r = cc_inm_line(v, n, etag, etag_len);
        if (r < 0) {
            return 0;
        }
        match |= r;
    }
    return match;
}

/* ------------------------------------------------------------------ */
/* Conditional requests                                                 */

enum cpol_cond cpol_conditional(const struct cpol_req *rq, const struct cpol_head *req,
                                const struct cpol_head *stored_resp, double now)
{
    size_t n;
    double t;
    if (rq->method != HTTP_GET && rq->method != HTTP_HEAD) {
        return CPOL_COND_FULL;
    }
    if (rq->has_inm) {
        const char *etag = cpol_head_count(stored_resp, "etag") == 1
                               ? cpol_head_get(stored_resp, "etag", &n) : NULL;
        return cpol_inm_matches(req, etag, etag ? n : 0) ? CPOL_COND_NOT_MODIFIED : CPOL_COND_FULL;
    }
    if (!rq->has_ims) {
        return CPOL_COND_FULL;
    }
    /* RFC 9111 4.3.2: Last-Modified, else the stored Date. */
    const char *lm = NULL;
    if (cpol_head_count(stored_resp, "last-modified") == 1) {
        lm = cpol_head_get(stored_resp, "last-modified", &n);
    } else if (cpol_head_count(stored_resp, "last-modified") == 0 &&
               cpol_head_count(stored_resp, "date") == 1) {
        lm = cpol_head_get(stored_resp, "date", &n);
    }
    if (!lm || cpol_date_parse(lm, n, now, &t) != 0) {
        return CPOL_COND_FULL;
    }
    return t <= rq->ims ? CPOL_COND_NOT_MODIFIED : CPOL_COND_FULL;
}

int cpol_field_in_304(const char *name, size_t n)
{
    static const char *const keep[] = { "cache-control", "content-location", "date", "etag",
                                        "expires", "vary", "last-modified", NULL };
    return cc_in(name, n, keep);
}

int cpol_field_conditional(const char *name, size_t n)
{
    static const char *const cond[] = { "if-none-match", "if-modified-since", "if-match",
                                        "if-unmodified-since", "if-range", NULL };
    return cc_in(name, n, cond);
}

/* Append "name: value\r\n"; -1 if it does not fit (with the NUL). */
static int cc_put(char *out, size_t cap, size_t *len, const char *name, size_t nl,
                  const char *value, size_t vl)
{
    if (cap - *len < nl + vl + 5) {
        return -1;
    }
    memcpy(out + *len, name, nl);
    *len += nl;
    memcpy(out + *len, ": ", 2);
    *len += 2;
    memcpy(out + *len, value, vl);
    *len += vl;
    memcpy(out + *len, "\r\n", 3); /* with the NUL */
    *len += 2;
    return 0;
}

long cpol_validators(const struct cpol_head *stored_resp, char *out, size_t cap)
{
    size_t len = 0, n;
    const char *v;
    double t;
    if (cap == 0) {
        return -1;
    }
    out[0] = '\0';
    if (cpol_head_count(stored_resp, "etag") == 1) {
        v = cpol_head_get(stored_resp, "etag", &n);
        if (cpol_etag_weak_eq(v, n, v, n) && cc_put(out, cap, &len, "If-None-Match", 13, v, n) != 0) {
            return -1;
        }
    }
    if (cpol_head_count(stored_resp, "last-modified") == 1) {
        v = cpol_head_get(stored_resp, "last-modified", &n);
        /* Any valid date; now only matters for two-digit years. */
        if (cpol_date_parse(v, n, 0.0, &t) == 0 &&
            cc_put(out, cap, &len, "If-Modified-Since", 17, v, n) != 0) {
            return -1;
        }
    }
    return (long)len;
}

/* ------------------------------------------------------------------ */
/* Updating a stored response                                           */

static const char *const cc_hop[] = { "connection", "keep-alive", "proxy-connection", "te",
                                      "transfer-encoding", "upgrade", "trailer",
                                      "proxy-authenticate", "proxy-authentication-info",
                                      "proxy-authorization", NULL };

int cpol_field_storable(const char *name, size_t n)
{
    return !cc_in(name, n, cc_hop);
}

int cpol_field_updatable(const char *name, size_t n)
{
    static const char *const fixed[] = { "content-length", "content-encoding", "content-range",
                                         NULL };
    return cpol_field_storable(name, n) && !cc_in(name, n, fixed);
}

/* The validator of a head: its single valid ETag (*etag), and its single
 * Last-Modified text (*lm). */
static void cc_validators(const struct cpol_head *h, const char **etag, size_t *etag_len,
                          const char **lm, size_t *lm_len)
{
    *etag = NULL;
    *lm = NULL;
    if (cpol_head_count(h, "etag") == 1) {
        *etag = cpol_head_get(h, "etag", etag_len);
        if (!cpol_etag_weak_eq(*etag, *etag_len, *etag, *etag_len)) {
            *etag = NULL;
        }
    }
    if (cpol_head_count(h, "last-modified") == 1) {
        *lm = cpol_head_get(h, "last-modified", lm_len);
    }
}

int cpol_304_selects(const struct cpol_head *stored_resp, const struct cpol_head *resp304)
{
    const char *se, *sl, *ne, *nl;
    size_t sel = 0, sll = 0, nel = 0, nll = 0;
    int weak;
    cc_validators(stored_resp, &se, &sel, &sl, &sll);
    cc_validators(resp304, &ne, &nel, &nl, &nll);
    if (ne) {
        cc_etag_len(ne, nel, &weak);
        return se && (weak ? cpol_etag_weak_eq(se, sel, ne, nel)
                           : cpol_etag_strong_eq(se, sel, ne, nel));
    }
    if (nl) {
        double a, b;
        return sl && cpol_date_parse(sl, sll, 0.0, &a) == 0 &&
               cpol_date_parse(nl, nll, 0.0, &b) == 0 && a == b;
    }
    return 1;
}

/* The 304 carries an updatable field called name. */
static int cc_304_replaces(const struct cpol_head *r304, const char *name, size_t n)
{
    for (unsigned i = 0; i < r304->nfields; i++) {
        size_t m;
        const char *nm = cc_name(r304, i, &m);
        if (!r304->fields[i].hop && cc_ieq(nm, m, name, n) && cpol_field_updatable(nm, m)) {
            return 1;
        }
    }
    return 0;
}

long cpol_merge_304(const struct cpol_head *stored, const struct cpol_head *resp304,
                    char *out, size_t cap)
{
    size_t len = 0, nl, vl;
    if (cap == 0) {
        return -1;
    }
    out[0] = '\0';
    for (unsigned i = 0; i < stored->nfields; i++) {
        const char *name = cc_name(stored, i, &nl);
        const char *value = cc_value(stored, i, &vl);
        if (cc_ieq(name, nl, "age", 3) || cc_304_replaces(resp304, name, nl)) {
            continue;
        }
        if (cc_put(out, cap, &len, name, nl, value, vl) != 0) {
            return -1;
        }
    }
    for (unsigned i = 0; i < resp304->nfields; i++) {
        const char *name = cc_name(resp304, i, &nl);
        const char *value = cc_value(resp304, i, &vl);
        if (resp304->fields[i].hop || !cpol_field_updatable(name, nl)) {
            continue;
        }
        if (cc_put(out, cap, &len, name, nl, value, vl) != 0) {
            return -1;
        }
    }
    return (long)len;
}

/* ------------------------------------------------------------------ */
/* Invalidation                                                         */

int cpol_invalidates(int method, int status)
{
    int safe = method == HTTP_GET || method == HTTP_HEAD || method == HTTP_OPTIONS ||
               method == HTTP_TRACE;
    return !safe && status >= 200 && status <= 399;
}

/* The host name of an authority or Host value (without a port or the
 * brackets' port). */
static size_t cc_hostname_len(const char *a, size_t n)
{
    if (n > 0 && a[0] == '[') {
        const char *close = memchr(a, ']', n);
        return close ? (size_t)(close - a) + 1 : n;
    }
    const char *colon = memchr(a, ':', n);
    return colon ? (size_t)(colon - a) : n;
}

int cpol_same_host_uri(const char *value, size_t n, const char *host, size_t host_len,
                       size_t *off, size_t *len)
{
    size_t i = 0, end;
    if (n >= 2 && value[0] == '/' && value[1] == '/') {
        i = 2;
    } else if (n >= 7 && cc_ieq(value, 7, "http://", 7)) {
        i = 7;
    } else if (n >= 8 && cc_ieq(value, 8, "https://", 8)) {
        i = 8;
    } else if (n >= 1 && value[0] == '/') {
        i = 0;
        goto path;
    } else {
        return 0;
    }
    {
        size_t a = i;
        while (i < n && value[i] != '/' && value[i] != '?' && value[i] != '#') {
            if (value[i] == '@') {
                return 0; /* userinfo: not a URI ferry compares */
            }
            i++;
        }
        size_t hn = cc_hostname_len(value + a, i - a);
        if (hn == 0 || !cc_ieq(value + a, hn, host, cc_hostname_len(host, host_len))) {
            return 0;
        }
    }
path:
    end = i;
    while (end < n && value[end] != '#') {
        end++;
    }
    for (size_t k = i; k < end; k++) {
        unsigned char c = (unsigned char)value[k];
        if (c <= 0x20 || c >= 0x7f) {
            return 0;
        }
    }
    *off = i;
    *len = end - i;
    return 1;
}
