/* http.c - HTTP/1.x heads parsed strictly (RFC 9112 §2-§6, §11.2).
 *
 * ferry rebuilds every head it forwards from the spans found here, so
 * this parser decides what the next hop sees.  Anything that two
 * reasonable parsers could read differently is refused rather than
 * guessed at: a bare CR, whitespace before a colon or at the start of a
 * field line (obs-fold), control characters in values, and any
 * Content-Length / Transfer-Encoding combination that RFC 9112 §6.3 does
 * not give one meaning.  A bare LF ending a line is accepted (§2.2), as
 * http_head_len finds the end of the head the same way. */
#include "http.h"

#include <stdlib.h>
#include <string.h>
#include <strings.h>

size_t http_skip_empty_lines(const char *p, size_t n)
{
    size_t i = 0;
    while (i < n && (p[i] == '\r' || p[i] == '\n')) {
        i++;
    }
    return i;
}

size_t http_head_len(const char *p, size_t n)
{
    /* The head ends at the first empty line: "\n\r\n" or "\n\n". */
    if (n == 0) {
        return 0;
    }
    const char *end = p + n;
    const char *q = p;
    while ((q = memchr(q, '\n', (size_t)(end - q))) != NULL) {
        q++;
        if (q < end && *q == '\n') {
            return (size_t)(q + 1 - p);
        }
        if (q + 1 < end && q[0] == '\r' && q[1] == '\n') {
            return (size_t)(q + 2 - p);
        }
    }
    return 0;
}

int http_bare_cr(const char *p, size_t n)
{
    if (n == 0) {
        return 0; /* an empty buffer may have no storage at all */
    }
    const char *end = p + n;
    const char *q = p;
    while ((q = memchr(q, '\r', (size_t)(end - q))) != NULL) {
        if (++q < end && *q != '\n') {
            return 1;
        }
    }
    return 0;
}

/* tchar (RFC 9110 §5.6.2) by table: it runs for every byte of every
 * field name and method. */
static const unsigned char tchar_table[256] = {
    ['!'] = 1, ['#'] = 1, ['$'] = 1, ['%'] = 1, ['&'] = 1, ['\''] = 1, ['*'] = 1, ['+'] = 1,
    ['-'] = 1, ['.'] = 1, ['^'] = 1, ['_'] = 1, ['`'] = 1, ['|'] = 1, ['~'] = 1,
    ['0'] = 1, ['1'] = 1, ['2'] = 1, ['3'] = 1, ['4'] = 1, ['5'] = 1, ['6'] = 1, ['7'] = 1,
    ['8'] = 1, ['9'] = 1,
    ['A'] = 1, ['B'] = 1, ['C'] = 1, ['D'] = 1, ['E'] = 1, ['F'] = 1, ['G'] = 1, ['H'] = 1,
    ['I'] = 1, ['J'] = 1, ['K'] = 1, ['L'] = 1, ['M'] = 1, ['N'] = 1, ['O'] = 1, ['P'] = 1,
    ['Q'] = 1, ['R'] = 1, ['S'] = 1, ['T'] = 1, ['U'] = 1, ['V'] = 1, ['W'] = 1, ['X'] = 1,
    ['Y'] = 1, ['Z'] = 1,
    ['a'] = 1, ['b'] = 1, ['c'] = 1, ['d'] = 1, ['e'] = 1, ['f'] = 1, ['g'] = 1, ['h'] = 1,
    ['i'] = 1, ['j'] = 1, ['k'] = 1, ['l'] = 1, ['m'] = 1, ['n'] = 1, ['o'] = 1, ['p'] = 1,
    ['q'] = 1, ['r'] = 1, ['s'] = 1, ['t'] = 1, ['u'] = 1, ['v'] = 1, ['w'] = 1, ['x'] = 1,
    ['y'] = 1, ['z'] = 1,
};

int http_is_tchar(unsigned char ch)
{
    return tchar_table[ch];
}

int http_is_field_char(unsigned char ch)
{
    return ch == '\t' || (ch >= 0x20 && ch != 0x7f);
}

static struct http_span span_of(const char *base, const char *at, size_t len)
{
    struct http_span s = { (uint32_t)(at - base), (uint32_t)len };
    return s;
}

/* One line of the head: [b, e) without its terminator; *next after it.
 * A CR is only allowed right before the LF; any other is caught by the
 * character checks of the line's grammar. */
static int next_line(const char *p, size_t len, size_t *pos, const char **b, const char **e)
{
    const char *s = p + *pos;
    const char *lf = memchr(s, '\n', len - *pos);
    if (lf == NULL) {
        return -1;
    }
    *b = s;
    *e = (lf > s && lf[-1] == '\r') ? lf - 1 : lf;
    *pos = (size_t)(lf + 1 - p);
    return 0;
}

/* "HTTP/" DIGIT "." DIGIT, major 1 only: ferry speaks HTTP/1.x. */
static int parse_version(struct http_msg *m, const char *v)
{
    if (memcmp(v, "HTTP/", 5) != 0 || v[5] != '1' || v[6] != '.' || v[7] < '0' ||
        v[7] > '9') {
        return -1;
    }
    m->major = 1;
    m->minor = (unsigned)(v[7] - '0');
    return 0;
}

static const char *const method_names[] = {
#define XX(num, name, string) [num] = #string,
    HTTP_METHOD_MAP(XX)
#undef XX
};
#define METHOD_COUNT (sizeof(method_names) / sizeof(method_names[0]))

/* method SP request-target SP HTTP-version */
static int parse_request_line(struct http_msg *m, const char *base, const char *b, const char *e)
{
    const char *p = b;
    while (p < e && http_is_tchar((unsigned char)*p)) {
        p++;
    }
    size_t mlen = (size_t)(p - b);
    if (mlen == 0 || p == e || *p != ' ') {
        return -1;
    }
    m->method = -1;
    for (unsigned i = 0; i < METHOD_COUNT; i++) {
        if (method_names[i] != NULL && strlen(method_names[i]) == mlen &&
            memcmp(method_names[i], b, mlen) == 0) {
            m->method = (int)i;
            break;
        }
    }
    if (m->method < 0) {
        return -1;
    }
    const char *t = ++p;
    /* No space and no control (DEL included) in the target; raw UTF-8,
     * which some clients send unencoded, passes as it always did. */
    while (p < e && (unsigned char)*p > 0x20 && *p != 0x7f) {
        p++;
    }
    if (p == t || p == e || *p != ' ' || e - (p + 1) != 8) {
        return -1;
    }
    m->url = span_of(base, t, (size_t)(p - t));
    return parse_version(m, p + 1);
}

/* HTTP-version SP 3DIGIT [ SP reason-phrase ] */
static int parse_status_line(struct http_msg *m, const char *base, const char *b, const char *e)
{
    if (e - b < 12 || parse_version(m, b) < 0 || b[8] != ' ') {
        return -1;
    }
    int st = 0;
    for (int i = 9; i < 12; i++) {
        if (b[i] < '0' || b[i] > '9') {
            return -1;
        }
        st = st * 10 + (b[i] - '0');
    }
    if (st < 100) {
        return -1;
    }
    m->status = st;
    const char *r = b + 12;
    if (r < e && *r++ != ' ') {
        return -1;
    }
    for (const char *q = r; q < e; q++) {
        if (!http_is_field_char((unsigned char)*q)) {
            return -1;
        }
    }
    m->reason = span_of(base, r, (size_t)(e - r));
    return 0;
}

/* field-name ":" OWS field-value OWS, with nothing between name and colon. */
static int parse_field(struct http_msg *m, const char *base, const char *b, const char *e)
{
    const char *p = b;
    while (p < e && http_is_tchar((unsigned char)*p)) {
        p++;
    }
    if (p == b || p == e || *p != ':') {
        return HTTP_PARSE_BAD; /* incl. a leading space (obs-fold) or "Name :" */
    }
    if (m->nfields >= HTTP_MAX_FIELDS) {
        return HTTP_PARSE_TOO_MANY;
    }
    struct http_field *f = &m->fields[m->nfields++];
    memset(f, 0, sizeof(*f));
    f->name = span_of(base, b, (size_t)(p - b));
    const char *v = p + 1;
    for (const char *q = v; q < e; q++) {
        if (!http_is_field_char((unsigned char)*q)) {
            return HTTP_PARSE_BAD;
        }
    }
    while (v < e && (*v == ' ' || *v == '\t')) {
        v++;
    }
    while (e > v && (e[-1] == ' ' || e[-1] == '\t')) {
        e--;
    }
    f->value = span_of(base, v, (size_t)(e - v));
    return HTTP_PARSE_OK;
}

/* Headers that describe one hop and never travel further.  Trailer is
 * not one of them (RFC 9110 §6.6.2): it describes the message. */
static const struct {
    const char *name;
    uint32_t len; /* compared first: no strlen per field and name */
} hop_names[] = {
#define HOP(s) { s, sizeof(s) - 1 }
    HOP("Connection"), HOP("Keep-Alive"), HOP("Proxy-Connection"),
    HOP("Proxy-Authorization"), HOP("Proxy-Authenticate"), HOP("TE"), HOP("Upgrade"),
#undef HOP
};

/* What framing and hop-by-hop handling learn from the fields. */
struct head_facts {
    struct http_span tokens[HTTP_MAX_CONN_TOKENS]; /* Connection-listed names */
    unsigned ntok;
    unsigned ncl, nte, nhost;
    struct http_span cl, te;
    unsigned close:1, keep_alive:1, upgrade:1;
};

/* Split a comma list of tokens; fn sees each.  -1 when an element is not
 * a token: such lists are refused, not guessed at.  Empty elements are
 * skipped when empty_ok (RFC 9110 §5.6.1), refused otherwise. */
static int each_token(const char *b, struct http_span v, int empty_ok, void *arg,
                      int (*fn)(void *, const char *, struct http_span))
{
    uint32_t s = v.off, e = v.off + v.len;
    if (s == e) {
        return empty_ok ? 0 : -1;
    }
    while (s <= e) {
        while (s < e && (b[s] == ' ' || b[s] == '\t')) {
            s++;
        }
        uint32_t t = s;
        while (t < e && http_is_tchar((unsigned char)b[t])) {
            t++;
        }
        struct http_span tok = { s, t - s };
        while (t < e && (b[t] == ' ' || b[t] == '\t')) {
            t++;
        }
        if (t < e && b[t] != ',') {
            return -1;
        }
        if (tok.len == 0 ? !empty_ok : fn(arg, b, tok) < 0) {
            return -1;
        }
        s = t + 1;
    }
    return 0;
}

static int conn_token(void *arg, const char *b, struct http_span tok)
{
    struct head_facts *h = arg;
    if (http_span_ieq(b, tok, "close")) {
        h->close = 1;
    } else if (http_span_ieq(b, tok, "keep-alive")) {
        h->keep_alive = 1;
    } else if (http_span_ieq(b, tok, "upgrade")) {
        h->upgrade = 1;
    }
    if (h->ntok >= HTTP_MAX_CONN_TOKENS) {
        return -1;
    }
    h->tokens[h->ntok++] = tok;
    return 0;
}

static int take_fields(struct http_msg *m, const char *b, struct head_facts *h)
{
    for (unsigned i = 0; i < m->nfields; i++) {
        struct http_field *f = &m->fields[i];
        for (size_t k = 0; k < sizeof(hop_names) / sizeof(hop_names[0]); k++) {
            if (f->name.len == hop_names[k].len &&
                strncasecmp(b + f->name.off, hop_names[k].name, hop_names[k].len) == 0) {
                f->hop = 1;
                break;
            }
        }
        if (http_span_ieq(b, f->name, "Content-Length")) {
            h->ncl++;
            h->cl = f->value;
        } else if (http_span_ieq(b, f->name, "Transfer-Encoding")) {
            h->nte++;
            h->te = f->value;
        } else if (http_span_ieq(b, f->name, "Host")) {
            h->nhost++;
            m->host = f->value;
        } else if (http_span_ieq(b, f->name, "Upgrade")) {
            m->upgrade = f->value;
        } else if (http_span_ieq(b, f->name, "X-Request-Id")) {
            m->request_id = f->value;
        } else if (http_span_ieq(b, f->name, "Proxy-Authorization")) {
            m->proxy_auth = f->value;
        } else if (http_span_ieq(b, f->name, "Idempotency-Key")) {
            m->idem_key = f->value;
        } else if (http_span_ieq(b, f->name, "Max-Forwards")) {
            m->max_forwards = f->value;
        } else if ((http_span_ieq(b, f->name, "Connection") ||
                    http_span_ieq(b, f->name, "Proxy-Connection")) &&
                   each_token(b, f->value, 1, h, conn_token) < 0) {
            return HTTP_PARSE_BAD;
        }
    }
    for (unsigned i = 0; i < m->nfields; i++) {
        struct http_field *f = &m->fields[i];
        /* Never let Connection strip the framing or the Host we rely on. */
        if (f->hop || http_span_ieq(b, f->name, "Transfer-Encoding") ||
            http_span_ieq(b, f->name, "Content-Length") || http_span_ieq(b, f->name, "Host")) {
            continue;
        }
        for (unsigned k = 0; k < h->ntok; k++) {
            if (f->name.len == h->tokens[k].len &&
                strncasecmp(b + f->name.off, b + h->tokens[k].off, f->name.len) == 0) {
                f->hop = 1;
                break;
            }
        }
    }
    return HTTP_PARSE_OK;
}

/* Transfer codings: chunked must be the last and appear once. */
struct codings {
    unsigned n, chunked, chunked_last;
};

static int coding(void *arg, const char *b, struct http_span tok)
{
    struct codings *c = arg;
    c->n++;
    c->chunked_last = http_span_ieq(b, tok, "chunked");
    c->chunked += c->chunked_last;
    return 0;
}

/* RFC 9112 §6.3, with every ambiguous case refused. */
static int decide_framing(struct http_msg *m, const char *b, const struct head_facts *h,
                          int request, int no_body)
{
    if (h->nte > 0) {
        struct codings c = { 0, 0, 0 };
        /* TE on HTTP/1.0, repeated, or with chunked anywhere but once at
         * the end: no single reading exists.  TE with Content-Length is
         * refused in a request; in a response TE wins and the
         * Content-Length is not forwarded (RFC 9112 §6.3, item 3). */
        if ((request && h->ncl > 0) || m->minor == 0 || h->nte > 1 ||
            each_token(b, h->te, 0, &c, coding) < 0 || c.chunked > 1 ||
            (c.chunked == 1 && !c.chunked_last)) {
            return HTTP_PARSE_FRAMING;
        }
        for (unsigned i = 0; i < m->nfields; i++) {
            if (http_span_ieq(b, m->fields[i].name, "Content-Length")) {
                m->fields[i].hop = 1;
            }
        }
        if (!c.chunked && request) {
            return HTTP_PARSE_FRAMING; /* §6.3: a request body must be chunked last */
        }
        m->framing = c.chunked ? HTTP_FRAME_CHUNKED : HTTP_FRAME_EOF;
    } else if (h->ncl > 0) {
        if (h->ncl > 1 || h->cl.len == 0 || h->cl.len > 18) {
            return HTTP_PARSE_FRAMING;
        }
        uint64_t v = 0;
        for (uint32_t i = 0; i < h->cl.len; i++) {
            char ch = b[h->cl.off + i];
            if (ch < '0' || ch > '9') {
                return HTTP_PARSE_FRAMING;
            }
            v = v * 10 + (uint64_t)(ch - '0');
        }
        m->content_length = v;
        m->framing = v > 0 ? HTTP_FRAME_LENGTH : HTTP_FRAME_NONE;
    } else {
        m->framing = request ? HTTP_FRAME_NONE : HTTP_FRAME_EOF;
    }
    if (no_body) {
        m->framing = HTTP_FRAME_NONE;
    }
    return HTTP_PARSE_OK;
}

/* Field tables given back wait here for the next head: bounded, the
 * rest goes back to the allocator. */
#define FIELDS_POOL_MAX 64
static struct http_field *fields_pool[FIELDS_POOL_MAX];
static int nfields_pool;

void http_msg_release(struct http_msg *m)
{
    if (m->fields != NULL) {
        if (nfields_pool < FIELDS_POOL_MAX) {
            fields_pool[nfields_pool++] = m->fields;
        } else {
            free(m->fields);
        }
        m->fields = NULL;
    }
    m->nfields = 0;
}

void http_fields_drain(void)
{
    while (nfields_pool > 0) {
        free(fields_pool[--nfields_pool]);
    }
}

static int parse_head(struct http_msg *m, const char *head, size_t len, int request,
                      int head_request)
{
    memset(&m->url, 0, sizeof(*m) - offsetof(struct http_msg, url));
    m->nfields = 0;
    if (m->fields == NULL) {
        m->fields = nfields_pool > 0 ? fields_pool[--nfields_pool]
                                     : malloc(HTTP_MAX_FIELDS * sizeof(*m->fields));
        if (m->fields == NULL) {
            return HTTP_PARSE_BAD;
        }
    }
    size_t pos = 0;
    const char *b, *e;
    if (next_line(head, len, &pos, &b, &e) < 0) {
        return HTTP_PARSE_BAD;
    }
    if (request ? parse_request_line(m, head, b, e) : parse_status_line(m, head, b, e)) {
        return HTTP_PARSE_BAD;
    }
    for (;;) {
        if (next_line(head, len, &pos, &b, &e) < 0) {
            return HTTP_PARSE_BAD;
        }
        if (b == e) {
            break;
        }
        int r = parse_field(m, head, b, e);
        if (r != HTTP_PARSE_OK) {
            return r;
        }
    }
    if (pos != len) {
        return HTTP_PARSE_BAD; /* the blank line is not where http_head_len saw it */
    }
    struct head_facts h;
    memset(&h, 0, sizeof(h));
    if (take_fields(m, head, &h) != HTTP_PARSE_OK) {
        return HTTP_PARSE_BAD;
    }
    if (request && h.nhost > 1) {
        return HTTP_PARSE_BAD; /* RFC 9112 §3.2 */
    }
    int no_body = request ? m->method == HTTP_CONNECT
                          : head_request || m->status < 200 || m->status == 204 ||
                            m->status == 304;
    int r = decide_framing(m, head, &h, request, no_body);
    if (r != HTTP_PARSE_OK) {
        return r;
    }
    if (request) {
        /* An upgrade request with a body is served as a plain request. */
        m->is_upgrade = m->method == HTTP_CONNECT ||
                        (h.upgrade && m->upgrade.len > 0 && m->framing == HTTP_FRAME_NONE);
    } else {
        m->is_upgrade = m->status == 101;
    }
    /* A response framed despite a Content-Length beside its coding is
     * the last on its connection: the sender's framing is suspect. */
    m->keep_alive = (m->minor >= 1 ? !h.close : h.keep_alive && !h.close) &&
                    m->framing != HTTP_FRAME_EOF && !(h.nte > 0 && h.ncl > 0);
    m->has_body = m->framing != HTTP_FRAME_NONE;
    m->head_done = 1;
    http_body_reset(m);
    return HTTP_PARSE_OK;
}

int http_parse_request(struct http_msg *m, const char *head, size_t len)
{
    return parse_head(m, head, len, 1, 0);
}

int http_parse_response(struct http_msg *m, const char *head, size_t len, int head_request)
{
    return parse_head(m, head, len, 0, head_request);
}

const char *http_method_name(int method)
{
    if (method < 0 || (unsigned)method >= METHOD_COUNT || method_names[method] == NULL) {
        return "<unknown>";
    }
    return method_names[method];
}

int http_method_idempotent(int method)
{
    switch (method) {
    case HTTP_GET:
    case HTTP_HEAD:
    case HTTP_OPTIONS:
    case HTTP_PUT:
    case HTTP_DELETE:
    case HTTP_TRACE:
        return 1;
    default:
        return 0;
    }
}
