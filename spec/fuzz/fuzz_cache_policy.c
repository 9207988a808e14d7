/* fuzz_cache_policy.c - the HTTP cache rules (core/cache_policy*.c) on
 * arbitrary header text.
 *
 * Input: byte 0 picks the status (from a small table) and the method;
 * bytes 1..8 are a time (the "now" of the rules and a date to format);
 * the rest is text, used four ways: as a date, as one Cache-Control
 * value, as a head ("name: value" lines), and as a URI.  Every buffer
 * handed to the rules is a heap copy of exactly its length, so any read
 * past a value is an ASan report.
 *
 * abort() when
 *  - a date that parses is not a whole second, or its IMF-fixdate does
 *    not parse back to it; a formatted time does not parse back to the
 *    same second; the three forms of one instant disagree;
 *  - a Cache-Control value read whole differs from the same value split
 *    into lines at its top-level commas (found by a quote-aware scan
 *    written here), for responses and for requests;
 *  - a Vary key has another length than it says, two requests' keys
 *    agree where cpol_vary_match says they do not (or the reverse), or
 *    a request does not match itself;
 *  - the serving decision breaks its promises: FRESH with no freshness
 *    left, a stale answer for a must-revalidate entry, a negative age, an
 *    Age header outside 0..2^31;
 *  - entity-tag comparison is not symmetric, or strong equality holds
 *    where weak does not;
 *  - a merged 304, the validators or a URI span say another length than
 *    they wrote (no NUL there: values may hold NUL bytes), or point
 *    outside their input. */
#include "../../core/cache_policy.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define FAIL(...)                                                                            \
    do {                                                                                     \
        fprintf(stderr, "fuzz_cache_policy: FINDING: " __VA_ARGS__);                         \
        fputc('\n', stderr);                                                                 \
        abort();                                                                             \
    } while (0)

#define FZ_FIELDS 64

static const int fz_status[8] = { 200, 304, 404, 206, 302, 503, 204, 301 };
static const int fz_method[4] = { HTTP_GET, HTTP_HEAD, HTTP_POST, HTTP_DELETE };

static char *fz_copy(const char *p, size_t n)
{
    char *c = malloc(n ? n : 1);
    if (!c) {
        abort();
    }
    memcpy(c, p, n);
    return c;
}

/* ------------------------------------------------------------------ */
/* Dates                                                                */

static const char *const fz_wday[7] = { "Thu", "Fri", "Sat", "Sun", "Mon", "Tue", "Wed" };
static const char *const fz_wday_long[7] = { "Thursday", "Friday", "Saturday", "Sunday",
                                             "Monday", "Tuesday", "Wednesday" };
static const char *const fz_mon[12] = { "Jan", "Feb", "Mar", "Apr", "May", "Jun",
                                        "Jul", "Aug", "Sep", "Oct", "Nov", "Dec" };

static int fz_date(const char *s, size_t n, double now, double *t)
{
    char *c = fz_copy(s, n);
    int r = cpol_date_parse(c, n, now, t);
    free(c);
    return r;
}

/* The RFC 850 and asctime forms of t, built from the fields of the
 * IMF-fixdate the formatter wrote ("Sun, 06 Nov 1994 08:49:37 GMT"). */
static void fz_other_forms(double t)
{
    char imf[CPOL_DATE_LEN + 1], buf[64];
    double back;
    int wd = -1, mon = -1;
    cpol_date_format(t, imf);
    for (int i = 0; i < 7; i++) {
        if (memcmp(imf, fz_wday[i], 3) == 0) {
            wd = i;
        }
    }
    for (int i = 0; i < 12; i++) {
        if (memcmp(imf + 8, fz_mon[i], 3) == 0) {
            mon = i;
        }
    }
    if (wd < 0 || mon < 0) {
        FAIL("formatter wrote %s", imf);
    }
    int day = (imf[5] - '0') * 10 + (imf[6] - '0');
    /* asctime: "Sun Nov  6 08:49:37 1994". */
    snprintf(buf, sizeof(buf), "%s %s %2d %.8s %.4s", fz_wday[wd], fz_mon[mon], day, imf + 17,
             imf + 12);
    if (fz_date(buf, strlen(buf), t, &back) != 0 || back != floor(t)) {
        FAIL("asctime %s of %s", buf, imf);
    }
    /* RFC 850, read with now = t: the century is the one of t. */
    snprintf(buf, sizeof(buf), "%s, %.2s-%s-%.2s %.8s GMT", fz_wday_long[wd], imf + 5,
             fz_mon[mon], imf + 14, imf + 17);
    if (imf[12] != '0' || imf[13] != '0' || imf[14] != '0' || imf[15] != '0') {
        if (fz_date(buf, strlen(buf), t, &back) != 0 || back != floor(t)) {
            FAIL("rfc850 %s of %s", buf, imf);
        }
    }
}

static void fz_dates(const char *text, size_t n, double now, double t)
{
    char out[CPOL_DATE_LEN + 1];
    double v, back;
    if (fz_date(text, n, now, &v) == 0) {
        if (v != floor(v)) {
            FAIL("date not a whole second: %f", v);
        }
        cpol_date_format(v, out);
        if (strlen(out) != CPOL_DATE_LEN || fz_date(out, CPOL_DATE_LEN, now, &back) != 0 ||
            back != v) {
            FAIL("date %.0f formats as %s, which does not read back", v, out);
        }
    }
    cpol_date_format(t, out);
    if (fz_date(out, CPOL_DATE_LEN, now, &back) != 0) {
        FAIL("formatted %s does not parse", out);
    }
    double c = isfinite(t) ? floor(t) : 0.0;
    if (c >= -62135596800.0 && c <= 253402300799.0 && back != c) {
        FAIL("%f formats as %s, reads back as %f", t, out, back);
    }
    fz_other_forms(back);
}

/* ------------------------------------------------------------------ */
/* Cache-Control whole and split                                        */

static int fz_resp_cc_eq(const struct cpol_resp_cc *a, const struct cpol_resp_cc *b)
{
    return a->max_age == b->max_age && a->s_maxage == b->s_maxage && a->swr == b->swr &&
           a->sie == b->sie && a->present == b->present && a->no_store == b->no_store &&
           a->no_cache == b->no_cache && a->private_ == b->private_ &&
           a->public_ == b->public_ && a->must_revalidate == b->must_revalidate &&
           a->proxy_revalidate == b->proxy_revalidate && a->immutable == b->immutable &&
           a->no_transform == b->no_transform;
}

static int fz_req_cc_eq(const struct cpol_req_cc *a, const struct cpol_req_cc *b)
{
    return a->max_age == b->max_age && a->max_stale == b->max_stale &&
           a->min_fresh == b->min_fresh && a->sie == b->sie && a->present == b->present &&
           a->no_cache == b->no_cache && a->no_store == b->no_store &&
           a->only_if_cached == b->only_if_cached && a->no_transform == b->no_transform;
}

static void fz_cache_control(const char *text, size_t n)
{
    struct cpol_resp_cc rw, rs;
    struct cpol_req_cc qw, qs;
    char *whole = fz_copy(text, n);
    cpol_resp_cc_init(&rw);
    cpol_req_cc_init(&qw);
    cpol_resp_cc_add(&rw, whole, n);
    cpol_req_cc_add(&qw, whole, n);
    free(whole);

    /* Split at commas outside quoted strings (a backslash escapes the
     * next byte inside quotes; a quote opens one anywhere). */
    cpol_resp_cc_init(&rs);
    cpol_req_cc_init(&qs);
    size_t start = 0;
    int inq = 0;
    for (size_t i = 0; i <= n; i++) {
        if (i < n && inq) {
            if (text[i] == '\\' && i + 1 < n) {
                i++;
            } else if (text[i] == '"') {
                inq = 0;
            }
            continue;
        }
        if (i < n && text[i] == '"') {
            inq = 1;
            continue;
        }
        if (i == n || text[i] == ',') {
            size_t end = i < n ? i : n;
            char *piece = fz_copy(text + start, end - start);
            cpol_resp_cc_add(&rs, piece, end - start);
            cpol_req_cc_add(&qs, piece, end - start);
            free(piece);
            start = i + 1;
        }
    }
    if (!fz_resp_cc_eq(&rw, &rs)) {
        FAIL("response Cache-Control whole (max-age %g s-maxage %g) and split (%g %g) differ",
             rw.max_age, rw.s_maxage, rs.max_age, rs.s_maxage);
    }
    if (!fz_req_cc_eq(&qw, &qs)) {
        FAIL("request Cache-Control whole (max-age %g max-stale %g) and split (%g %g) differ",
             qw.max_age, qw.max_stale, qs.max_age, qs.max_stale);
    }
}

/* ------------------------------------------------------------------ */
/* Heads                                                                */

struct fz_head {
    char *buf;
    struct http_field fields[FZ_FIELDS];
    struct cpol_head h;
};

static int fz_ows(char c)
{
    return c == ' ' || c == '\t';
}

/* "name: value" lines of text[0..n); value trimmed like http.c does. */
static void fz_head_make(struct fz_head *fh, const char *text, size_t n)
{
    size_t i = 0;
    unsigned nf = 0;
    fh->buf = fz_copy(text, n);
    while (i < n && nf < FZ_FIELDS) {
        size_t e = i;
        while (e < n && text[e] != '\n') {
            e++;
        }
        size_t colon = i;
        while (colon < e && text[colon] != ':') {
            colon++;
        }
        size_t vs = colon < e ? colon + 1 : e, ve = e;
        while (vs < ve && fz_ows(text[vs])) {
            vs++;
        }
        while (ve > vs && fz_ows(text[ve - 1])) {
            ve--;
        }
        struct http_field *f = &fh->fields[nf++];
        memset(f, 0, sizeof(*f));
        f->name.off = (uint32_t)i;
        f->name.len = (uint32_t)(colon - i);
        f->value.off = (uint32_t)vs;
        f->value.len = (uint32_t)(ve - vs);
        f->hop = (colon - i) % 7 == 3;
        i = e + 1;
    }
    fh->h.base = fh->buf;
    fh->h.fields = fh->fields;
    fh->h.nfields = nf;
}

static void fz_vary(const struct cpol_head *resp, const struct cpol_head *a,
                    const struct cpol_head *b)
{
    struct cpol_vary v;
    char ka[2048], kb[2048];
    cpol_vary_parse(resp, &v);
    if (v.n > CPOL_VARY_MAX) {
        FAIL("vary lists %u names", v.n);
    }
    long la = cpol_vary_key(&v, a, ka, sizeof(ka));
    long lb = cpol_vary_key(&v, b, kb, sizeof(kb));
    if ((la >= 0 && ka[la] != '\0') || (lb >= 0 && kb[lb] != '\0')) {
        FAIL("vary key length");
    }
    if (cpol_vary_match(&v, a, a) != 1 || cpol_vary_match(&v, b, b) != 1) {
        FAIL("a request does not match itself");
    }
    int m = cpol_vary_match(&v, a, b);
    if (m != cpol_vary_match(&v, b, a)) {
        FAIL("vary match not symmetric");
    }
    if (la >= 0 && lb >= 0 && m != (la == lb && memcmp(ka, kb, (size_t)la) == 0)) {
        FAIL("vary match %d but keys \"%s\" and \"%s\"", m, ka, kb);
    }
    /* A key that does not fit a small buffer reports so. */
    char small[8];
    long ls = cpol_vary_key(&v, a, small, sizeof(small));
    if (ls >= 0 && (la < 0 || ls != la)) {
        FAIL("vary key fits in 8 bytes but not in 2048");
    }
}

static void fz_serve(const struct cpol_head *req, const struct cpol_head *resp, int method,
                     int status, double now)
{
    struct cpol_req rq;
    struct cpol_resp rs;
    struct cpol_entry e;
    cpol_req_parse(req, method, now, &rq);
    cpol_resp_parse(resp, status, now, &rs);
    enum cpol_store st = cpol_entry_init(&e, &rq, &rs, resp, now - 1, now, 300);
    if (st > CPOL_NS_FRESHNESS || !cpol_store_name(st)) {
        FAIL("store verdict %d", st);
    }
    for (int k = 0; k < 4; k++) {
        double at = now + (double)k * 37.5;
        double age = cpol_entry_age(&e, at);
        int64_t ah = cpol_age_header(&e, at);
        enum cpol_serve s = cpol_serve(&e, &rq, at);
        if (!(age >= 0) || ah < 0 || ah > (int64_t)CPOL_DELTA_MAX) {
            FAIL("age %f, Age header %lld", age, (long long)ah);
        }
        if (s == CPOL_SERVE_FRESH && !(cpol_entry_ttl(&e, at) > 0)) {
            FAIL("fresh with %f left", cpol_entry_ttl(&e, at));
        }
        if ((s == CPOL_SERVE_STALE || s == CPOL_SERVE_STALE_BG) &&
            (e.must_revalidate || e.no_cache || rq.cc.no_cache)) {
            FAIL("stale served against must-revalidate / no-cache");
        }
        if (cpol_stale_on_error(&e, &rq, at) && (e.must_revalidate || e.no_cache)) {
            FAIL("stale on error against must-revalidate / no-cache");
        }
        (void)cpol_serve_name(s);
    }
    (void)cpol_conditional(&rq, req, resp, now);
}

static void fz_etags(const struct cpol_head *h)
{
    for (unsigned i = 0; i < h->nfields; i++) {
        for (unsigned j = 0; j < h->nfields; j++) {
            const char *a = h->base + h->fields[i].value.off;
            const char *b = h->base + h->fields[j].value.off;
            size_t an = h->fields[i].value.len, bn = h->fields[j].value.len;
            int w = cpol_etag_weak_eq(a, an, b, bn), s = cpol_etag_strong_eq(a, an, b, bn);
            if (w != cpol_etag_weak_eq(b, bn, a, an) || s != cpol_etag_strong_eq(b, bn, a, an) ||
                (s && !w)) {
                FAIL("entity-tag comparison of fields %u and %u", i, j);
            }
        }
        (void)cpol_inm_matches(h, h->base + h->fields[i].value.off, h->fields[i].value.len);
    }
}

static void fz_writers(const struct cpol_head *a, const struct cpol_head *b)
{
    char big[16384], small[64];
    long l = cpol_merge_304(a, b, big, sizeof(big));
    if (l >= 0 && big[l] != '\0') {
        FAIL("merge length %ld, no NUL there", l);
    }
    long ls = cpol_merge_304(a, b, small, sizeof(small));
    if (ls >= 0 && ls != l) {
        FAIL("merge fits in 64 bytes (%ld) but not the same in 16384 (%ld)", ls, l);
    }
    l = cpol_validators(a, big, sizeof(big));
    if (l >= 0 && big[l] != '\0') {
        FAIL("validators length");
    }
    (void)cpol_304_selects(a, b);
    for (unsigned i = 0; i < a->nfields; i++) {
        const char *nm = a->base + a->fields[i].name.off;
        size_t nl = a->fields[i].name.len;
        (void)cpol_field_storable(nm, nl);
        (void)cpol_field_updatable(nm, nl);
        (void)cpol_field_in_304(nm, nl);
        (void)cpol_field_conditional(nm, nl);
    }
}

static void fz_uri(const char *text, size_t n)
{
    char *c = fz_copy(text, n);
    size_t off = 0, len = 0;
    size_t split = n / 3;
    if (cpol_same_host_uri(c + split, n - split, c, split, &off, &len) == 1 &&
        (off > n - split || len > n - split - off)) {
        FAIL("uri span %zu+%zu outside %zu", off, len, n - split);
    }
    free(c);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (size < 9) {
        return 0;
    }
    int status = fz_status[data[0] & 7];
    int method = fz_method[(data[0] >> 3) & 3];
    int64_t raw;
    memcpy(&raw, data + 1, 8);
    /* A now within the calendar most of the time; raw bits sometimes. */
    double now = (data[0] & 0x80) ? (double)(raw % 253402300800LL) : 1796169600.0;
    double t;
    memcpy(&t, data + 1, 8);
    const char *text = (const char *)data + 9;
    size_t n = size - 9;

    fz_dates(text, n, now, (data[0] & 0x40) ? t : (double)(raw % 300000000000LL));
    fz_cache_control(text, n);

    struct fz_head all, first, second;
    size_t half = n / 2;
    while (half < n && text[half] != '\n') {
        half++;
    }
    fz_head_make(&all, text, n);
    fz_head_make(&first, text, half);
    fz_head_make(&second, text + (half < n ? half + 1 : n), half < n ? n - half - 1 : 0);
    fz_vary(&all.h, &first.h, &second.h);
    fz_serve(&first.h, &second.h, method, status, now);
    fz_serve(&all.h, &all.h, method, status, now);
    fz_etags(&first.h);
    fz_writers(&first.h, &second.h);
    fz_writers(&second.h, &first.h);
    fz_uri(text, n);
    free(all.buf);
    free(first.buf);
    free(second.buf);
    return 0;
}
