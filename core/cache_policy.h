/* cache_policy.h - the rules of a shared HTTP cache (RFC 9111), as pure
 * functions.
 *
 * Nothing here does I/O, allocates or keeps state: every function reads
 * the heads and numbers it is given and writes only into structs and
 * buffers the caller owns, so the store (cache.c) decides where things
 * live and the rules can be specified and fuzzed on their own.
 *
 * Times are seconds since the epoch as doubles (the caller passes "now";
 * the request and response times of an exchange), lifetimes and ages
 * are seconds as doubles.  A head is a view of a parsed message
 * (struct cpol_head over http.h's field table); field names compare
 * case-insensitively, a field that appears on several lines is read as
 * their values joined by commas.
 *
 * ferry is a shared cache: `private` responses are never stored, and
 * s-maxage / proxy-revalidate apply.  There is no heuristic freshness
 * (no Last-Modified fraction): a response without Expires, max-age or
 * s-maxage is fresh only through the configured ttl, and that only for
 * a 200 (see cpol_entry_init). */
#ifndef FERRY_CACHE_POLICY_H
#define FERRY_CACHE_POLICY_H

#include <stddef.h>
#include <stdint.h>

#include "http.h"

/* A delta-seconds value that is absent. */
#define CPOL_ABSENT (-1.0)
/* A delta-seconds value too large to represent is taken as 2^31
 * (RFC 9111 1.2.2); max-stale without a value is "any staleness". */
#define CPOL_DELTA_MAX 2147483648.0
/* Field names kept by a Vary list, and the longest name kept. */
#define CPOL_VARY_MAX 16
#define CPOL_VARY_NAME_MAX 64
/* An IMF-fixdate ("Sun, 06 Nov 1994 08:49:37 GMT") is this long. */
#define CPOL_DATE_LEN 29

/* A read-only view of a message head's fields: spans of http.h's
 * table, relative to base.  cpol_head_of makes one from a parsed
 * http_msg and the buffer its head was parsed from. */
struct cpol_head {
    const char *base;               /* ro: the head bytes the spans point into */
    const struct http_field *fields; /* ro */
    unsigned nfields;               /* ro */
};

static inline struct cpol_head cpol_head_of(const struct http_msg *m, const char *base)
{
    struct cpol_head h = { base, m->fields, m->nfields };
    return h;
}

/* ------------------------------------------------------------------ */
/* Header access                                                        */

/* The value of the first field called name (lowercase or any case),
 * *len its length; NULL when absent. */
const char *cpol_head_get(const struct cpol_head *h, const char *name, size_t *len);
/* How many lines carry the field called name. */
unsigned cpol_head_count(const struct cpol_head *h, const char *name);

/* One element of a comma-separated list (RFC 9110 5.6.1) of the form
 * token [ "=" ( token / quoted-string ) ], as Cache-Control, Pragma and
 * Vary use it.  A double quote anywhere starts a quoted string (a
 * backslash escapes the next byte inside it) and commas inside it do not
 * split the list, so an element never ends inside quotes. */
struct cpol_elem {
    const char *name;               /* ro: the token (name_len 0: none) */
    size_t name_len;                /* ro */
    const char *arg;                /* ro: the argument, inside the quotes if quoted
                                     * (escapes left as they are) */
    size_t arg_len;                 /* ro */
    unsigned has_arg:1;             /* ro: "=" followed */
    unsigned quoted:1;              /* ro: the argument was a quoted-string */
    unsigned bad:1;                 /* ro: not of that form (no token, an unclosed
                                     * quote, bytes before the next comma) */
};
/* The next non-empty element of v[*pos..n): 1 and *e (and *pos moved
 * past it), 0 at the end of the list. */
int cpol_list_next(const char *v, size_t n, size_t *pos, struct cpol_elem *e);
/* delta-seconds (RFC 9111 1.2.2): 1*DIGIT, larger values are
 * CPOL_DELTA_MAX; 0 and *d, or -1 when not digits only. */
int cpol_delta_parse(const char *s, size_t n, double *d);

/* ------------------------------------------------------------------ */
/* HTTP-date (RFC 9110 5.6.7)                                           */

/* Parse an HTTP-date in any of its three forms: IMF-fixdate
 * ("Sun, 06 Nov 1994 08:49:37 GMT"), obsolete RFC 850
 * ("Sunday, 06-Nov-94 08:49:37 GMT"; a two-digit year more than 50
 * years in the future is taken in the past century) and asctime
 * ("Sun Nov  6 08:49:37 1994").  Leading and trailing whitespace is
 * allowed, nothing else: 0 and *t (seconds since the epoch) on success,
 * -1 on anything invalid (a bad day of week, Feb 30, hour 24...).
 * now is used for the RFC 850 century rule only. */
int cpol_date_parse(const char *s, size_t n, double now, double *t);
/* Format t (truncated to whole seconds, clamped to years 1..9999) as
 * IMF-fixdate into out, which must hold CPOL_DATE_LEN + 1 bytes (NUL
 * terminated).  Returns CPOL_DATE_LEN.  cpol_date_parse reads it back
 * to the same second. */
size_t cpol_date_format(double t, char *out);

/* ------------------------------------------------------------------ */
/* Cache-Control (RFC 9111 5.2)                                         */

/* A response's directives.  Absent deltas are CPOL_ABSENT.  A directive
 * given twice with different values keeps the smaller one; a max-age or
 * s-maxage whose value is missing or invalid is 0 (the response is
 * stale at once); an invalid stale-while-revalidate / stale-if-error
 * disables it (no stale serving).  Restricting directives (no-store,
 * no-cache, private, must-revalidate, proxy-revalidate) count even when
 * malformed; public and immutable only when well-formed.  no-cache and private with a field list
 * are read as their unqualified forms.  Unknown directives are
 * ignored. */
struct cpol_resp_cc {
    double max_age;                 /* ro */
    double s_maxage;                /* ro */
    double swr;                     /* ro: stale-while-revalidate */
    double sie;                     /* ro: stale-if-error */
    unsigned present:1;             /* ro: some Cache-Control line was there */
    unsigned no_store:1;            /* ro */
    unsigned no_cache:1;            /* ro */
    unsigned private_:1;            /* ro */
    unsigned public_:1;             /* ro */
    unsigned must_revalidate:1;     /* ro */
    unsigned proxy_revalidate:1;    /* ro */
    unsigned immutable:1;           /* ro */
    unsigned no_transform:1;        /* ro */
    unsigned swr_bad:1;             /* private: an invalid stale-while-revalidate seen */
    unsigned sie_bad:1;             /* private: an invalid stale-if-error seen */
};

/* A request's directives.  max-stale without a value is CPOL_DELTA_MAX.
 * An invalid max-age reads as 0 (revalidate); an invalid max-stale,
 * min-fresh or stale-if-error is ignored (also when another line has a
 * valid one).  Repeated: the smaller max-age / max-stale /
 * stale-if-error, the larger min-fresh.  `Pragma: no-cache` sets no_cache when the
 * request has no Cache-Control line (cpol_req_cc_parse). */
struct cpol_req_cc {
    double max_age;                 /* ro */
    double max_stale;               /* ro */
    double min_fresh;               /* ro */
    double sie;                     /* ro: stale-if-error (RFC 5861 3) */
    unsigned present:1;             /* ro: some Cache-Control line was there */
    unsigned no_cache:1;            /* ro: also from Pragma: no-cache */
    unsigned no_store:1;            /* ro */
    unsigned only_if_cached:1;      /* ro */
    unsigned no_transform:1;        /* ro */
    unsigned max_stale_bad:1;       /* private: an invalid max-stale seen */
    unsigned min_fresh_bad:1;       /* private: an invalid min-fresh seen */
    unsigned sie_bad:1;             /* private: an invalid stale-if-error seen */
};

/* Start empty (all deltas absent, no flag). */
void cpol_resp_cc_init(struct cpol_resp_cc *cc);
void cpol_req_cc_init(struct cpol_req_cc *cc);
/* Add the directives of one Cache-Control field line (value, n bytes).
 * Feeding the lines of a head one by one gives the same result as
 * feeding them joined by commas. */
void cpol_resp_cc_add(struct cpol_resp_cc *cc, const char *value, size_t n);
void cpol_req_cc_add(struct cpol_req_cc *cc, const char *value, size_t n);
/* Every Cache-Control line of a head (and Pragma for a request). */
void cpol_resp_cc_parse(const struct cpol_head *h, struct cpol_resp_cc *cc);
void cpol_req_cc_parse(const struct cpol_head *h, struct cpol_req_cc *cc);

/* ------------------------------------------------------------------ */
/* What a request and a response say, read once                         */

struct cpol_req {
    struct cpol_req_cc cc;          /* ro */
    int method;                     /* ro: enum http_method */
    double ims;                     /* ro: If-Modified-Since when has_ims */
    unsigned authorization:1;       /* ro: carries Authorization */
    unsigned has_inm:1;             /* ro: carries If-None-Match */
    unsigned has_ims:1;             /* ro: carries one valid If-Modified-Since (a GET or a
                                     * HEAD without If-None-Match: else it is ignored) */
};

struct cpol_resp {
    struct cpol_resp_cc cc;         /* ro */
    int status;                     /* ro */
    double date;                    /* ro: Date when has_date */
    double expires;                 /* ro: Expires when has_expires; an invalid one, or
                                     * several lines, read as 0 (already expired) */
    double age;                     /* ro: Age when has_age (the largest valid line) */
    double last_modified;           /* ro: Last-Modified when has_last_modified */
    unsigned has_date:1;            /* ro: one valid Date line */
    unsigned has_expires:1;         /* ro: some Expires line, valid or not */
    unsigned has_age:1;             /* ro */
    unsigned has_last_modified:1;   /* ro: one valid Last-Modified line */
    unsigned has_etag:1;            /* ro: a valid entity-tag */
    unsigned set_cookie:1;          /* ro: carries Set-Cookie */
    unsigned vary_star:1;           /* ro: Vary names "*" */
    unsigned explicit_fresh:1;      /* ro: Expires, max-age or s-maxage present */
};

/* now: for the RFC 850 century rule of the dates. */
void cpol_req_parse(const struct cpol_head *h, int method, double now, struct cpol_req *r);
void cpol_resp_parse(const struct cpol_head *h, int status, double now, struct cpol_resp *r);

/* ------------------------------------------------------------------ */
/* Storing (RFC 9111 3)                                                 */

/* Why a response is not stored (CPOL_STORE: it is). */
enum cpol_store {
    CPOL_STORE = 0,        /* store it */
    CPOL_NS_METHOD,        /* the request was not a GET */
    CPOL_NS_STATUS,        /* status not cacheable, or not understood (206, 1xx...) */
    CPOL_NS_NO_STORE,      /* no-store in the request or the response */
    CPOL_NS_PRIVATE,       /* private: a shared cache must not store it */
    CPOL_NS_AUTH,          /* request with Authorization, response not public /
                            * s-maxage / must-revalidate */
    CPOL_NS_COOKIE,        /* Set-Cookie without public / s-maxage */
    CPOL_NS_VARY,          /* Vary: *, or a Vary list too long to key on */
    CPOL_NS_FRESHNESS      /* no freshness (no explicit freshness, no ttl that
                            * applies) and no validator to revalidate with */
};
const char *cpol_store_name(enum cpol_store s);

/* Statuses cacheable without explicit freshness (RFC 9110 15.1):
 * 200 203 204 300 301 308 404 405 410 414 501. */
int cpol_status_heuristic(int status);

/* The facts of a stored response that the rules need later.  Plain
 * values: the store keeps one per entry (copy it freely). */
struct cpol_entry {
    double request_time;            /* ro: the backend request went out */
    double response_time;           /* ro: its response head arrived */
    double corrected_initial_age;   /* ro: RFC 9111 4.2.3 */
    double lifetime;                /* ro: freshness lifetime (0: always stale) */
    double swr;                     /* ro: stale-while-revalidate window, CPOL_ABSENT */
    double sie;                     /* ro: stale-if-error window, CPOL_ABSENT */
    double last_modified;           /* ro: when has_last_modified */
    double date;                    /* ro: Date (response_time if none) */
    unsigned has_last_modified:1;   /* ro */
    unsigned no_cache:1;            /* ro: response no-cache: revalidate every use */
    unsigned must_revalidate:1;     /* ro: must-revalidate, proxy-revalidate or
                                     * s-maxage: never served stale */
    unsigned has_etag:1;            /* ro */
    unsigned immutable:1;           /* ro: informational (no reload semantics here) */
    unsigned ttl_rule:1;            /* ro: lifetime came from the configured ttl */
};

/* Decide whether a response is stored, and fill *e for it when it is
 * (also when not: e is then informational).  ttl: the configured
 * lifetime for a 200 without explicit freshness (0: none); it applies
 * neither to a request with Authorization nor to a response with
 * Set-Cookie unless the response says public or s-maxage.  Freshness
 * lifetime: s-maxage, else max-age, else Expires - Date (Date defaults
 * to response_time; an invalid Expires is 0), else ttl, else 0.  A
 * response with lifetime 0 is stored only when it has a validator
 * (ETag or Last-Modified) so the entry saves a body on revalidation.
 * The Vary list is checked by cpol_vary_parse (CPOL_NS_VARY when it
 * fails), which the caller runs too to build the key. */
enum cpol_store cpol_entry_init(struct cpol_entry *e, const struct cpol_req *rq,
                                const struct cpol_resp *rs, const struct cpol_head *resp_head,
                                double request_time, double response_time, double ttl);

/* Current age (RFC 9111 4.2.3): corrected_initial_age + (now - response_time),
 * never negative. */
double cpol_entry_age(const struct cpol_entry *e, double now);
/* The Age field value to send: the age in whole seconds, clamped to
 * 0..2^31. */
int64_t cpol_age_header(const struct cpol_entry *e, double now);
/* Freshness left: lifetime - age (negative when stale). */
double cpol_entry_ttl(const struct cpol_entry *e, double now);

/* ------------------------------------------------------------------ */
/* Serving a stored entry (RFC 9111 4.2, 4.2.4, 5.2.1; RFC 5861)         */

enum cpol_serve {
    CPOL_SERVE_FRESH = 0,     /* fresh enough for this request: X-Cache HIT */
    CPOL_SERVE_STALE,         /* stale, but the request's max-stale accepts it:
                               * serve, no revalidation needed (X-Cache STALE) */
    CPOL_SERVE_STALE_BG,      /* stale within stale-while-revalidate: serve it now
                               * and revalidate in the background (X-Cache STALE) */
    CPOL_REVALIDATE,          /* send a conditional request; a 304 refreshes the
                               * entry (X-Cache REVALIDATED), else MISS */
    CPOL_ONLY_IF_CACHED_FAIL  /* only-if-cached and not servable: answer 504 */
};
const char *cpol_serve_name(enum cpol_serve s);

/* What to do with entry e for request rq at now.  Fresh means
 * age < lifetime, and also within the request's max-age and min-fresh.
 * Revalidation is required by no-cache (either side) and by staleness,
 * except that max-stale (request) or stale-while-revalidate (response)
 * lets a stale entry be served; must-revalidate / proxy-revalidate /
 * s-maxage forbid every stale use.  A request with only-if-cached gets
 * CPOL_ONLY_IF_CACHED_FAIL instead of CPOL_REVALIDATE. */
enum cpol_serve cpol_serve(const struct cpol_entry *e, const struct cpol_req *rq, double now);

/* 1 when the backend failed (connect failure, reset, timeout, or an
 * answer status cpol_status_is_failure names) and e may be served stale
 * instead: within the stale-if-error window of the response or of the
 * request, or the request's max-stale; never when must-revalidate,
 * proxy-revalidate, s-maxage or no-cache (either side) forbid it. */
int cpol_stale_on_error(const struct cpol_entry *e, const struct cpol_req *rq, double now);
/* 500, 502, 503, 504: answers that count as a backend failure. */
int cpol_status_is_failure(int status);

/* ------------------------------------------------------------------ */
/* Vary (RFC 9111 4.1)                                                  */

/* The request fields a response varies on: lowercase, deduplicated, in
 * first-seen order. */
struct cpol_vary {
    unsigned n;                                         /* ro */
    unsigned star:1;                                    /* ro: Vary: * */
    unsigned overflow:1;                                /* ro: more than CPOL_VARY_MAX names,
                                                         * or one longer than
                                                         * CPOL_VARY_NAME_MAX-1, or not a token */
    char names[CPOL_VARY_MAX][CPOL_VARY_NAME_MAX];      /* ro: NUL terminated */
};
/* Read every Vary line of a response.  Returns 0 when the response can
 * be keyed (v->n may be 0), -1 when star or overflow is set (do not
 * store). */
int cpol_vary_parse(const struct cpol_head *resp, struct cpol_vary *v);
/* Write the secondary key of request req for Vary list v into out (cap
 * bytes, NUL terminated): for each name, "name:" and its normalized
 * value ("name!" when the request lacks the field), then "\n".  The
 * value of the field's lines is joined by ",", runs of spaces and tabs
 * become one space, whitespace around commas and at the ends is
 * dropped.  Two requests select the same variant iff their keys are
 * equal.  Returns the key length, or -1 if it does not fit. */
long cpol_vary_key(const struct cpol_vary *v, const struct cpol_head *req, char *out, size_t cap);
/* 1 when requests a and b agree on every field of v (the same rule as
 * comparing their keys, without a buffer). */
int cpol_vary_match(const struct cpol_vary *v, const struct cpol_head *a, const struct cpol_head *b);

/* ------------------------------------------------------------------ */
/* Validators and conditional requests (RFC 9110 8.8, 13)               */

/* Entity-tag comparison (RFC 9110 8.8.3.2): weak ignores the W/ prefix
 * of either, strong needs both strong.  0 when unequal or either is not
 * a valid entity-tag. */
int cpol_etag_weak_eq(const char *a, size_t an, const char *b, size_t bn);
int cpol_etag_strong_eq(const char *a, size_t an, const char *b, size_t bn);
/* 1 when an If-None-Match value (all its lines joined by commas: "*"
 * or a list of entity-tags) matches etag weakly ("*" matches any
 * stored response).  A malformed list never matches. */
int cpol_inm_matches(const struct cpol_head *req, const char *etag, size_t etag_len);

/* What a client's conditional GET or HEAD gets from a stored response
 * (RFC 9110 13.2.2): If-None-Match is evaluated when present (weak
 * comparison with the stored ETag), else If-Modified-Since against the
 * stored Last-Modified (or Date when there is none).  Other methods, and
 * requests without either, get the full response. */
enum cpol_cond {
    CPOL_COND_FULL = 0,       /* answer with the stored response */
    CPOL_COND_NOT_MODIFIED    /* answer 304 (fields: cpol_field_in_304) */
};
enum cpol_cond cpol_conditional(const struct cpol_req *rq, const struct cpol_head *req,
                                const struct cpol_head *stored_resp, double now);
/* 1 for the fields a 304 built from a stored response carries:
 * Cache-Control, Content-Location, Date, ETag, Expires, Vary (and
 * Last-Modified). */
int cpol_field_in_304(const char *name, size_t n);

/* Write the validators of a revalidation request into out (cap bytes,
 * NUL terminated): "If-None-Match: <ETag>\r\n" when the stored response
 * has an ETag and "If-Modified-Since: <Last-Modified>\r\n" when it has a
 * Last-Modified.  The caller drops the client's own conditional fields
 * (If-None-Match, If-Modified-Since, If-Match, If-Unmodified-Since,
 * If-Range) from the request it forwards.  Returns the length (0: no
 * validator, revalidation is a plain GET), -1 if it does not fit. */
long cpol_validators(const struct cpol_head *stored_resp, char *out, size_t cap);
/* 1 for a client conditional field the cache drops when it revalidates. */
int cpol_field_conditional(const char *name, size_t n);

/* 1 when a 304 (resp304) validates the stored response (RFC 9111
 * 4.3.4): a strong ETag in the 304 must equal the stored one strongly,
 * a weak one weakly; without an ETag, a Last-Modified in both must be
 * equal; a 304 with no validator answers the validators this entry
 * sent, and selects it.  A 304 that names another representation must
 * not update this entry (revalidate with a plain GET instead). */
int cpol_304_selects(const struct cpol_head *stored_resp, const struct cpol_head *resp304);

/* Merge a 304 into a stored response's fields (RFC 9111 3.2, 4.3.4):
 * write "Name: value\r\n" lines into out (cap bytes, NUL terminated):
 * every stored field whose name the 304 does not carry, then every
 * field of the 304 except those a cache must not take from it
 * (Content-Length, Content-Encoding, Content-Range, Transfer-Encoding,
 * hop-by-hop fields: cpol_field_updatable).  Stored fields are kept in
 * their order; the status line and the final CRLF are the caller's.
 * The stored Age is always dropped (the 304's own Age, if any, is
 * taken): it measured the old response.  Re-run cpol_resp_parse and
 * cpol_entry_init on the result with the revalidation's times.
 * Returns the length, -1 if it does not fit. */
long cpol_merge_304(const struct cpol_head *stored, const struct cpol_head *resp304,
                    char *out, size_t cap);
/* 1 when a field of a 304 (or a HEAD) may replace the stored one. */
int cpol_field_updatable(const char *name, size_t n);
/* 1 for a field of a response that is stored with it (not hop-by-hop:
 * Connection, Keep-Alive, Proxy-Connection, TE, Transfer-Encoding,
 * Upgrade, Trailer, Proxy-Authenticate, Proxy-Authentication-Info are
 * not; the caller also drops fields with http.h's hop flag, which
 * Connection named).  Age is
 * stored (cpol_entry_init reads it) but never sent as is: answers carry
 * cpol_age_header. */
int cpol_field_storable(const char *name, size_t n);

/* ------------------------------------------------------------------ */
/* Invalidation (RFC 9111 4.4)                                          */

/* 1 when a response with status to a request of method invalidates
 * stored responses: an unsafe method (anything but GET, HEAD, OPTIONS,
 * TRACE) and a non-error status (2xx, 3xx). */
int cpol_invalidates(int method, int status);
/* For a Location or Content-Location value: 1 and the path-and-query
 * span (*off, *len within value) when it names a URI on host (the
 * request's Host, with an optional port; case-insensitive), either as
 * an absolute http/https URI or as an absolute path; 0 otherwise (other
 * host, relative reference, malformed).  Ports are not compared
 * (invalidating more than needed is harmless); the fragment is not part
 * of the span; *len 0 means "/", a span starting with "?" means "/"
 * and that query.  Invalidate that path too. */
int cpol_same_host_uri(const char *value, size_t n, const char *host, size_t host_len,
                       size_t *off, size_t *len);

/* ------------------------------------------------------------------ */
/* X-Cache                                                              */

enum cpol_xcache {
    CPOL_X_MISS = 0,          /* answered by the backend */
    CPOL_X_HIT,               /* a fresh stored response */
    CPOL_X_STALE,             /* a stale stored response (max-stale, SWR, on error) */
    CPOL_X_REVALIDATED        /* a stored response the backend confirmed with 304 */
};
/* "MISS", "HIT", "STALE", "REVALIDATED". */
const char *cpol_xcache_name(enum cpol_xcache x);

#endif
