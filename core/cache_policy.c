/* cache_policy.c - RFC 9111 for a shared cache: Cache-Control, what a
 * request and a response say, whether a response is stored, its
 * freshness and age, and what a stored entry may be used for.
 *
 * Pure functions over heads and numbers (see cache_policy.h); the
 * conditional-request, Vary and 304 rules are in cache_policy_cond.c,
 * dates in cache_policy_date.c. */
#include "cache_policy.h"

#include <math.h>
#include <string.h>

/* ------------------------------------------------------------------ */
/* Header access                                                        */

static unsigned char cp_lower(unsigned char c)
{
    return c >= 'A' && c <= 'Z' ? (unsigned char)(c + 32) : c;
}

/* Field i of h is called name (any case). */
static int cp_is(const struct cpol_head *h, unsigned i, const char *name)
{
    const struct http_field *f = &h->fields[i];
    const char *p = h->base + f->name.off;
    size_t n = strlen(name);
    if (f->name.len != n) {
        return 0;
    }
    for (size_t k = 0; k < n; k++) {
        if (cp_lower((unsigned char)p[k]) != cp_lower((unsigned char)name[k])) {
            return 0;
        }
    }
    return 1;
}

static const char *cp_value(const struct cpol_head *h, unsigned i, size_t *len)
{
    *len = h->fields[i].value.len;
    return h->base + h->fields[i].value.off;
}

const char *cpol_head_get(const struct cpol_head *h, const char *name, size_t *len)
{
    for (unsigned i = 0; i < h->nfields; i++) {
        if (cp_is(h, i, name)) {
            return cp_value(h, i, len);
        }
    }
    *len = 0;
    return NULL;
}

unsigned cpol_head_count(const struct cpol_head *h, const char *name)
{
    unsigned c = 0;
    for (unsigned i = 0; i < h->nfields; i++) {
        c += (unsigned)cp_is(h, i, name);
    }
    return c;
}

/* The value of name when exactly one line carries it. */
static const char *cp_single(const struct cpol_head *h, const char *name, size_t *len)
{
    return cpol_head_count(h, name) == 1 ? cpol_head_get(h, name, len) : NULL;
}

/* ------------------------------------------------------------------ */
/* Lists and numbers                                                    */

static int cp_tchar(unsigned char c)
{
    if ((c >= '0' && c <= '9') || (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z')) {
        return 1;
    }
    return c != 0 && strchr("!#$%&'*+-.^_`|~", c) != NULL;
}

static int cp_ows(char c)
{
    return c == ' ' || c == '\t';
}

/* Past a quoted string whose opening quote is at v[i]: the index after
 * the closing quote, or n when it never closes (*closed 0). */
static size_t cp_skip_quoted(const char *v, size_t n, size_t i, int *closed)
{
    for (i++; i < n; i++) {
        if (v[i] == '\\') {
            i++;
        } else if (v[i] == '"') {
            *closed = 1;
            return i + 1;
        }
    }
    *closed = 0;
    return n;
}

int cpol_list_next(const char *v, size_t n, size_t *pos, struct cpol_elem *e)
{
    size_t i = *pos;
    int closed;
    if (v == NULL) {
        return 0; /* an absent value is an empty list */
    }
    while (i < n && (cp_ows(v[i]) || v[i] == ',')) {
        i++;
    }
    if (i >= n) {
        *pos = n;
        return 0;
    }
    memset(e, 0, sizeof(*e));
    e->name = v + i;
    while (i < n && cp_tchar((unsigned char)v[i])) {
        i++;
    }
    e->name_len = (size_t)(v + i - e->name);
    e->bad = e->name_len == 0;
    if (!e->bad && i < n && v[i] == '=') {
        e->has_arg = 1;
        i++;
        if (i < n && v[i] == '"') {
            size_t q = i;
            i = cp_skip_quoted(v, n, i, &closed);
            e->quoted = 1;
            e->arg = v + q + 1;
            e->arg_len = closed ? i - q - 2 : n - q - 1;
            e->bad = !closed;
        } else {
            e->arg = v + i;
            while (i < n && cp_tchar((unsigned char)v[i])) {
                i++;
            }
            e->arg_len = (size_t)(v + i - e->arg);
        }
    }
    while (i < n && cp_ows(v[i])) {
        i++;
    }
    /* Anything else up to the next comma makes the element malformed;
     * quoted strings in it are skipped whole. */
    while (i < n && v[i] != ',') {
        e->bad = 1;
        if (v[i] == '"') {
            i = cp_skip_quoted(v, n, i, &closed);
        } else {
            i++;
        }
    }
    *pos = i;
    return 1;
}

int cpol_delta_parse(const char *s, size_t n, double *d)
{
    double v = 0;
    if (n == 0) {
        return -1;
    }
    for (size_t i = 0; i < n; i++) {
        if (s[i] < '0' || s[i] > '9') {
            return -1;
        }
        if (v < CPOL_DELTA_MAX) {
            v = v * 10 + (s[i] - '0');
        }
    }
    *d = v > CPOL_DELTA_MAX ? CPOL_DELTA_MAX : v;
    return 0;
}

static int cp_elem_is(const struct cpol_elem *e, const char *name)
{
    size_t n = strlen(name);
    if (e->name_len != n) {
        return 0;
    }
    for (size_t k = 0; k < n; k++) {
        if (cp_lower((unsigned char)e->name[k]) != (unsigned char)name[k]) {
            return 0;
        }
    }
    return 1;
}

/* The argument of e as delta-seconds: 0 and *d, -1 when malformed. */
static int cp_elem_delta(const struct cpol_elem *e, double *d)
{
    if (e->bad || !e->has_arg) {
        return -1;
    }
    return cpol_delta_parse(e->arg, e->arg_len, d);
}

/* Keep the smaller of a repeated delta (CPOL_ABSENT: none yet). */
static void cp_min(double *slot, double v)
{
    if (*slot < 0 || v < *slot) {
        *slot = v;
    }
}

/* ------------------------------------------------------------------ */
/* Cache-Control                                                        */

void cpol_resp_cc_init(struct cpol_resp_cc *cc)
{
    memset(cc, 0, sizeof(*cc));
    cc->max_age = cc->s_maxage = cc->swr = cc->sie = CPOL_ABSENT;
}

void cpol_req_cc_init(struct cpol_req_cc *cc)
{
    memset(cc, 0, sizeof(*cc));
    cc->max_age = cc->max_stale = cc->min_fresh = cc->sie = CPOL_ABSENT;
}

/* A stale-* window: the smallest valid value, none once one is invalid. */
static void cp_window(double *slot, unsigned *bad, const struct cpol_elem *e)
{
    double d;
    if (*bad) {
        return;
    }
    if (cp_elem_delta(e, &d) != 0) {
        *bad = 1;
        *slot = CPOL_ABSENT;
        return;
    }
    cp_min(slot, d);
}

static void cp_resp_directive(struct cpol_resp_cc *cc, const struct cpol_elem *e)
{
    double d;
    unsigned bad;
    if (cp_elem_is(e, "max-age") || cp_elem_is(e, "s-maxage")) {
        double *slot = cp_elem_is(e, "max-age") ? &cc->max_age : &cc->s_maxage;
        cp_min(slot, cp_elem_delta(e, &d) == 0 ? d : 0.0);
    } else if (cp_elem_is(e, "no-store")) {
        cc->no_store = 1;
    } else if (cp_elem_is(e, "no-cache")) {
        cc->no_cache = 1;
    } else if (cp_elem_is(e, "private")) {
        cc->private_ = 1;
    } else if (cp_elem_is(e, "must-revalidate")) {
        cc->must_revalidate = 1;
    } else if (cp_elem_is(e, "proxy-revalidate")) {
        cc->proxy_revalidate = 1;
    } else if (cp_elem_is(e, "no-transform")) {
        cc->no_transform = 1;
    } else if (cp_elem_is(e, "public")) {
        cc->public_ |= !e->bad && !e->has_arg;
    } else if (cp_elem_is(e, "immutable")) {
        cc->immutable |= !e->bad && !e->has_arg;
    } else if (cp_elem_is(e, "stale-while-revalidate")) {
        bad = cc->swr_bad;
        cp_window(&cc->swr, &bad, e);
        cc->swr_bad = bad;
    } else if (cp_elem_is(e, "stale-if-error")) {
        bad = cc->sie_bad;
        cp_window(&cc->sie, &bad, e);
        cc->sie_bad = bad;
    }
}

void cpol_resp_cc_add(struct cpol_resp_cc *cc, const char *value, size_t n)
{
    struct cpol_elem e;
    size_t pos = 0;
    cc->present = 1;
    while (cpol_list_next(value, n, &pos, &e)) {
        cp_resp_directive(cc, &e);
    }
}

static void cp_req_directive(struct cpol_req_cc *cc, const struct cpol_elem *e)
{
    double d;
    unsigned bad;
    if (cp_elem_is(e, "max-age")) {
        cp_min(&cc->max_age, cp_elem_delta(e, &d) == 0 ? d : 0.0);
    } else if (cp_elem_is(e, "max-stale")) {
        if (!e->has_arg && !e->bad) {
            d = CPOL_DELTA_MAX;
        } else if (cp_elem_delta(e, &d) != 0) {
            cc->max_stale_bad = 1;
        }
        if (cc->max_stale_bad) {
            cc->max_stale = CPOL_ABSENT;
        } else {
            cp_min(&cc->max_stale, d);
        }
    } else if (cp_elem_is(e, "min-fresh")) {
        if (cp_elem_delta(e, &d) != 0) {
            cc->min_fresh_bad = 1;
        }
        if (cc->min_fresh_bad) {
            cc->min_fresh = CPOL_ABSENT;
        } else if (d > cc->min_fresh) {
            cc->min_fresh = d;
        }
    } else if (cp_elem_is(e, "no-cache")) {
        cc->no_cache = 1;
    } else if (cp_elem_is(e, "no-store")) {
        cc->no_store = 1;
    } else if (cp_elem_is(e, "only-if-cached")) {
        cc->only_if_cached = 1;
    } else if (cp_elem_is(e, "no-transform")) {
        cc->no_transform = 1;
    } else if (cp_elem_is(e, "stale-if-error")) {
        bad = cc->sie_bad;
        cp_window(&cc->sie, &bad, e);
        cc->sie_bad = bad;
    }
}

void cpol_req_cc_add(struct cpol_req_cc *cc, const char *value, size_t n)
{
    struct cpol_elem e;
    size_t pos = 0;
    cc->present = 1;
    while (cpol_list_next(value, n, &pos, &e)) {
        cp_req_directive(cc, &e);
    }
}

void cpol_resp_cc_parse(const struct cpol_head *h, struct cpol_resp_cc *cc)
{
    size_t n;
    cpol_resp_cc_init(cc);
    for (unsigned i = 0; i < h->nfields; i++) {
        if (cp_is(h, i, "cache-control")) {
            const char *v = cp_value(h, i, &n);
            cpol_resp_cc_add(cc, v, n);
        }
    }
}

void cpol_req_cc_parse(const struct cpol_head *h, struct cpol_req_cc *cc)
{
    size_t n;
    struct cpol_elem e;
    cpol_req_cc_init(cc);
    for (unsigned i = 0; i < h->nfields; i++) {
        if (cp_is(h, i, "cache-control")) {
            const char *v = cp_value(h, i, &n);
            cpol_req_cc_add(cc, v, n);
        }
    }
    if (cc->present) {
        return;
    }
    /* RFC 9111 5.4: Pragma: no-cache only counts without Cache-Control. */
    for (unsigned i = 0; i < h->nfields; i++) {
        if (cp_is(h, i, "pragma")) {
            const char *v = cp_value(h, i, &n);
            size_t pos = 0;
            while (cpol_list_next(v, n, &pos, &e)) {
                cc->no_cache |= cp_elem_is(&e, "no-cache") && !e.has_arg;
            }
        }
    }
}

/* ------------------------------------------------------------------ */
/* Requests and responses                                               */

void cpol_req_parse(const struct cpol_head *h, int method, double now, struct cpol_req *r)
{
    size_t n;
    memset(r, 0, sizeof(*r));
    cpol_req_cc_parse(h, &r->cc);
    r->method = method;
    r->authorization = cpol_head_count(h, "authorization") > 0;
    r->has_inm = cpol_head_count(h, "if-none-match") > 0;
    /* RFC 9110 13.1.3: If-Modified-Since is ignored with If-None-Match,
     * for other methods than GET and HEAD, and unless it is one valid
     * date. */
    const char *ims = cp_single(h, "if-modified-since", &n);
    if (ims && !r->has_inm && (method == HTTP_GET || method == HTTP_HEAD) &&
        cpol_date_parse(ims, n, now, &r->ims) == 0) {
        r->has_ims = 1;
    }
}

void cpol_resp_parse(const struct cpol_head *h, int status, double now, struct cpol_resp *r)
{
    size_t n;
    const char *v;
    struct cpol_vary vary;
    memset(r, 0, sizeof(*r));
    cpol_resp_cc_parse(h, &r->cc);
    r->status = status;
    v = cp_single(h, "date", &n);
    r->has_date = v && cpol_date_parse(v, n, now, &r->date) == 0;
    /* RFC 9111 5.3: an invalid Expires (or several: "consider the
     * response stale") means already expired. */
    if (cpol_head_count(h, "expires") > 0) {
        r->has_expires = 1;
        v = cp_single(h, "expires", &n);
        if (!v || cpol_date_parse(v, n, now, &r->expires) != 0) {
            r->expires = 0.0;
        }
    }
    for (unsigned i = 0; i < h->nfields; i++) {
        double d;
        if (cp_is(h, i, "age")) {
            v = cp_value(h, i, &n);
            if (cpol_delta_parse(v, n, &d) == 0 && (!r->has_age || d > r->age)) {
                r->age = d;
                r->has_age = 1;
            }
        }
    }
    v = cp_single(h, "last-modified", &n);
    r->has_last_modified = v && cpol_date_parse(v, n, now, &r->last_modified) == 0;
    v = cp_single(h, "etag", &n);
    r->has_etag = v && cpol_etag_weak_eq(v, n, v, n);
    r->set_cookie = cpol_head_count(h, "set-cookie") > 0;
    cpol_vary_parse(h, &vary);
    r->vary_star = vary.star;
    r->explicit_fresh = r->has_expires || r->cc.max_age >= 0 || r->cc.s_maxage >= 0;
}

/* ------------------------------------------------------------------ */
/* Storing and freshness                                                */

const char *cpol_store_name(enum cpol_store s)
{
    switch (s) {
    case CPOL_STORE: return "store";
    case CPOL_NS_METHOD: return "method";
    case CPOL_NS_STATUS: return "status";
    case CPOL_NS_NO_STORE: return "no-store";
    case CPOL_NS_PRIVATE: return "private";
    case CPOL_NS_AUTH: return "authorization";
    case CPOL_NS_COOKIE: return "set-cookie";
    case CPOL_NS_VARY: return "vary";
    case CPOL_NS_FRESHNESS: return "freshness";
    }
    return "?";
}

int cpol_status_heuristic(int status)
{
    switch (status) {
    case 200: case 203: case 204: case 300: case 301: case 308:
    case 404: case 405: case 410: case 414: case 501:
        return 1;
    }
    return 0;
}

/* Statuses ferry understands well enough to store at all: final ones,
 * but not 206 (no range support) nor 304 (it only updates). */
static int cp_status_storable(int status)
{
    return status >= 200 && status <= 599 && status != 206 && status != 304;
}

/* Freshness lifetime from the response alone (RFC 9111 4.2.1), or -1
 * when it has no explicit freshness. */
static double cp_explicit_lifetime(const struct cpol_resp *rs, double response_time)
{
    if (rs->cc.s_maxage >= 0) {
        return rs->cc.s_maxage;
    }
    if (rs->cc.max_age >= 0) {
        return rs->cc.max_age;
    }
    if (rs->has_expires) {
        double date = rs->has_date ? rs->date : response_time;
        double l = rs->expires - date;
        return l > 0 ? fmin(l, CPOL_DELTA_MAX) : 0.0;
    }
    return -1;
}

enum cpol_store cpol_entry_init(struct cpol_entry *e, const struct cpol_req *rq,
                                const struct cpol_resp *rs, const struct cpol_head *resp_head,
                                double request_time, double response_time, double ttl)
{
    struct cpol_vary vary;
    const struct cpol_resp_cc *cc = &rs->cc;
    int shared_ok = cc->public_ || cc->s_maxage >= 0;

    memset(e, 0, sizeof(*e));
    e->request_time = request_time;
    e->response_time = response_time;
    e->date = rs->has_date ? rs->date : response_time;
    /* RFC 9111 4.2.3. */
    double apparent = fmax(0.0, response_time - e->date);
    double delay = fmax(0.0, response_time - request_time);
    double corrected_age = (rs->has_age ? rs->age : 0.0) + delay;
    e->corrected_initial_age = fmin(fmax(apparent, corrected_age), CPOL_DELTA_MAX);
    e->swr = cc->swr;
    e->sie = cc->sie;
    e->has_last_modified = rs->has_last_modified;
    e->last_modified = rs->has_last_modified ? rs->last_modified : 0.0;
    e->has_etag = rs->has_etag;
    e->no_cache = cc->no_cache;
    e->must_revalidate = cc->must_revalidate || cc->proxy_revalidate || cc->s_maxage >= 0;
    e->immutable = cc->immutable;

    double lifetime = cp_explicit_lifetime(rs, response_time);
    if (lifetime < 0 && rs->status == 200 && ttl > 0 &&
        ((!rq->authorization && !rs->set_cookie) || shared_ok)) {
        lifetime = fmin(ttl, CPOL_DELTA_MAX);
        e->ttl_rule = 1;
    }
    e->lifetime = lifetime > 0 ? lifetime : 0.0;

    if (rq->method != HTTP_GET) {
        return CPOL_NS_METHOD;
    }
    if (!cp_status_storable(rs->status)) {
        return CPOL_NS_STATUS;
    }
    if (rq->cc.no_store || cc->no_store) {
        return CPOL_NS_NO_STORE;
    }
    if (cc->private_) {
        return CPOL_NS_PRIVATE;
    }
    if (rq->authorization && !shared_ok && !cc->must_revalidate) {
        return CPOL_NS_AUTH;
    }
    if (rs->set_cookie && !shared_ok) {
        return CPOL_NS_COOKIE;
    }
    if (rs->vary_star || (resp_head && cpol_vary_parse(resp_head, &vary) != 0)) {
        return CPOL_NS_VARY;
    }
    /* RFC 9111 3: some explicit freshness, public, or a status that is
     * cacheable by default. */
    if (!rs->explicit_fresh && !cc->public_ && !cpol_status_heuristic(rs->status)) {
        return CPOL_NS_STATUS;
    }
    /* An entry that can never be used without asking the backend is
     * only worth its memory when it can be revalidated with a 304, or
     * served stale on error. */
    int validator = rs->has_etag || rs->has_last_modified;
    int stale_use = !e->must_revalidate && !e->no_cache && (e->swr > 0 || e->sie > 0);
    if ((e->lifetime <= 0 || e->no_cache) && !validator && !stale_use) {
        return CPOL_NS_FRESHNESS;
    }
    return CPOL_STORE;
}

double cpol_entry_age(const struct cpol_entry *e, double now)
{
    double resident = now - e->response_time;
    double age = e->corrected_initial_age + (resident > 0 ? resident : 0.0);
    return age > 0 ? age : 0.0;
}

int64_t cpol_age_header(const struct cpol_entry *e, double now)
{
    double a = floor(cpol_entry_age(e, now));
    if (!(a >= 0)) {
        return 0;
    }
    return a > CPOL_DELTA_MAX ? (int64_t)CPOL_DELTA_MAX : (int64_t)a;
}

double cpol_entry_ttl(const struct cpol_entry *e, double now)
{
    return e->lifetime - cpol_entry_age(e, now);
}

/* ------------------------------------------------------------------ */
/* Serving                                                              */

const char *cpol_serve_name(enum cpol_serve s)
{
    switch (s) {
    case CPOL_SERVE_FRESH: return "fresh";
    case CPOL_SERVE_STALE: return "stale";
    case CPOL_SERVE_STALE_BG: return "stale-revalidate";
    case CPOL_REVALIDATE: return "revalidate";
    case CPOL_ONLY_IF_CACHED_FAIL: return "only-if-cached";
    }
    return "?";
}

static enum cpol_serve cp_decide(const struct cpol_entry *e, const struct cpol_req *rq, double now)
{
    const struct cpol_req_cc *cc = &rq->cc;
    double age = cpol_entry_age(e, now);
    double left = e->lifetime - age;

    if (e->no_cache || cc->no_cache) {
        return CPOL_REVALIDATE;
    }
    /* max-age bounds the age whether or not max-stale allows staleness. */
    if (cc->max_age >= 0 && age > cc->max_age) {
        return CPOL_REVALIDATE;
    }
    if (left > 0) {
        return cc->min_fresh >= 0 && left < cc->min_fresh ? CPOL_REVALIDATE : CPOL_SERVE_FRESH;
    }
    if (e->must_revalidate) {
        return CPOL_REVALIDATE;
    }
    if (cc->max_stale >= 0 && -left <= cc->max_stale) {
        return CPOL_SERVE_STALE;
    }
    /* A client asking for some freshness left does not get a stale
     * answer on the backend's behalf. */
    if (e->swr >= 0 && -left <= e->swr && cc->min_fresh < 0) {
        return CPOL_SERVE_STALE_BG;
    }
    return CPOL_REVALIDATE;
}

enum cpol_serve cpol_serve(const struct cpol_entry *e, const struct cpol_req *rq, double now)
{
    enum cpol_serve s = cp_decide(e, rq, now);
    if (s == CPOL_REVALIDATE && rq->cc.only_if_cached) {
        return CPOL_ONLY_IF_CACHED_FAIL;
    }
    return s;
}

int cpol_stale_on_error(const struct cpol_entry *e, const struct cpol_req *rq, double now)
{
    double stale = cpol_entry_age(e, now) - e->lifetime;
    if (e->must_revalidate || e->no_cache || rq->cc.no_cache) {
        return 0;
    }
    return (e->sie >= 0 && stale <= e->sie) || (rq->cc.sie >= 0 && stale <= rq->cc.sie) ||
           (rq->cc.max_stale >= 0 && stale <= rq->cc.max_stale);
}

int cpol_status_is_failure(int status)
{
    return status == 500 || status == 502 || status == 503 || status == 504;
}

const char *cpol_xcache_name(enum cpol_xcache x)
{
    switch (x) {
    case CPOL_X_MISS: return "MISS";
    case CPOL_X_HIT: return "HIT";
    case CPOL_X_STALE: return "STALE";
    case CPOL_X_REVALIDATED: return "REVALIDATED";
    }
    return "MISS";
}
