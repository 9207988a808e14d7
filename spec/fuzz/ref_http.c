/* ref_http.c - the strict reference reader of ref_http.h. */
#include "ref_http.h"

#include <string.h>

int ref_tchar(unsigned char c)
{
    if ((c >= '0' && c <= '9') || (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z')) {
        return 1;
    }
    return c != '\0' && strchr("!#$%&'*+-.^_`|~", c) != NULL;
}

int ref_ieq(const char *a, size_t n, const char *lit)
{
    size_t k = strlen(lit);
    if (n != k) {
        return 0;
    }
    for (size_t i = 0; i < n; i++) {
        char x = a[i], y = lit[i];
        if (x >= 'A' && x <= 'Z') {
            x = (char)(x + 32);
        }
        if (y >= 'A' && y <= 'Z') {
            y = (char)(y + 32);
        }
        if (x != y) {
            return 0;
        }
    }
    return 1;
}

static int ows(char c)
{
    return c == ' ' || c == '\t';
}

/* The next line of [*pos, n): its bytes without the terminator (LF, or
 * CRLF: RFC 9112 2.2 lets a recipient take a lone LF as the end of a
 * head line; a lone CR is refused before lines are split). */
static int next_line(const char *p, size_t n, size_t *pos, const char **line, size_t *len)
{
    const char *s = p + *pos;
    const char *lf = memchr(s, '\n', n - *pos);
    if (lf == NULL) {
        return 0;
    }
    size_t l = (size_t)(lf - s);
    if (l > 0 && s[l - 1] == '\r') {
        l--;
    }
    *line = s;
    *len = l;
    *pos = (size_t)(lf - p) + 1;
    return 1;
}

static const char *parse_version(struct ref_head *h, const char *v, size_t n)
{
    /* HTTP-version = "HTTP/" DIGIT "." DIGIT */
    if (n != 8 || memcmp(v, "HTTP/", 5) != 0 || v[5] < '0' || v[5] > '9' || v[6] != '.' ||
        v[7] < '0' || v[7] > '9') {
        return "malformed HTTP-version";
    }
    h->major = v[5] - '0';
    h->minor = v[7] - '0';
    return NULL;
}

static const char *request_line(struct ref_head *h, const char *s, size_t n)
{
    size_t i = 0;
    while (i < n && ref_tchar((unsigned char)s[i])) {
        i++;
    }
    if (i == 0 || i == n || s[i] != ' ') {
        return "method is not a token followed by SP";
    }
    h->method = s;
    h->mlen = i;
    /* Lenient between the words: ferry rewrites this line from its own parse. */
    while (i < n && s[i] == ' ') {
        i++;
    }
    size_t t = i;
    while (i < n && (unsigned char)s[i] > 0x20 && s[i] != 0x7f) {
        i++;
    }
    if (i == t || i == n || s[i] != ' ') {
        return "request-target is empty or holds whitespace or a control";
    }
    h->target = s + t;
    h->tlen = i - t;
    while (i < n && s[i] == ' ') {
        i++;
    }
    return parse_version(h, s + i, n - i);
}

static const char *field_line(struct ref_head *h, const char *s, size_t n)
{
    if (n > 0 && ows(s[0])) {
        return "a field line starts with whitespace (obs-fold or a continuation)";
    }
    size_t i = 0;
    while (i < n && ref_tchar((unsigned char)s[i])) {
        i++;
    }
    if (i == 0) {
        return "a field name is empty or not a token";
    }
    if (i == n || s[i] != ':') {
        return "a field name is followed by something other than a colon";
    }
    if (h->nfields >= REF_MAX_FIELDS) {
        return "too many fields for the reference reader";
    }
    struct ref_field *f = &h->fields[h->nfields++];
    f->name = s;
    f->nlen = i;
    i++;
    while (i < n && ows(s[i])) {
        i++;
    }
    size_t e = n;
    while (e > i && ows(s[e - 1])) {
        e--;
    }
    for (size_t k = i; k < e; k++) {
        /* RFC 9110 5.5: CR, LF and NUL in a value are never passed on;
         * other controls may be kept. */
        if (s[k] == '\0' || s[k] == '\r' || s[k] == '\n') {
            return "NUL, CR or LF in a field value";
        }
    }
    f->value = s + i;
    f->vlen = e - i;
    return NULL;
}

/* Content-Length = 1*DIGIT, once. */
static const char *content_length(struct ref_head *h, const struct ref_field *f)
{
    if (h->framing == REF_LENGTH) {
        return "Content-Length given twice";
    }
    if (f->vlen == 0) {
        return "empty Content-Length";
    }
    unsigned long long v = 0;
    for (size_t i = 0; i < f->vlen; i++) {
        char c = f->value[i];
        if (c < '0' || c > '9') {
            return "Content-Length is not 1*DIGIT";
        }
        if (v > (~0ull >> 1) / 10) {
            return "Content-Length overflows";
        }
        v = v * 10 + (unsigned)(c - '0');
    }
    h->framing = REF_LENGTH;
    h->length = v;
    return NULL;
}

/* Transfer-Encoding list elements, in order across fields: chunked must
 * come last, and only once (RFC 9112 6.1, 6.3). */
static const char *transfer_encoding(const struct ref_head *h, int *chunked_last)
{
    int seen_chunked = 0, any = 0;
    *chunked_last = 0;
    for (unsigned k = 0; k < h->nfields; k++) {
        const struct ref_field *f = &h->fields[k];
        if (!ref_ieq(f->name, f->nlen, "Transfer-Encoding")) {
            continue;
        }
        size_t i = 0;
        while (i <= f->vlen) {
            size_t s = i;
            while (i < f->vlen && f->value[i] != ',') {
                i++;
            }
            size_t a = s, b = i;
            while (a < b && ows(f->value[a])) {
                a++;
            }
            while (b > a && ows(f->value[b - 1])) {
                b--;
            }
            i++;
            if (a == b) {
                continue; /* empty list elements are ignored */
            }
            if (seen_chunked) {
                return "a transfer coding after chunked";
            }
            any = 1;
            if (ref_ieq(f->value + a, b - a, "chunked")) {
                seen_chunked = 1;
            }
        }
    }
    if (!any) {
        return "Transfer-Encoding without a coding";
    }
    if (!seen_chunked) {
        return "a request Transfer-Encoding that does not end in chunked";
    }
    *chunked_last = 1;
    return NULL;
}

const char *ref_parse_request(struct ref_head *h, const char *p, size_t n)
{
    memset(h, 0, sizeof(*h));
    for (size_t i = 0; i < n; i++) {
        if (p[i] == '\r' && (i + 1 == n || p[i + 1] != '\n')) {
            return "bare CR";
        }
        if (p[i] == '\0') {
            return "NUL in the head";
        }
    }
    size_t pos = 0, len;
    const char *line;
    if (!next_line(p, n, &pos, &line, &len)) {
        return "no request line";
    }
    const char *why = request_line(h, line, len);
    if (why != NULL) {
        return why;
    }
    int te = 0;
    for (;;) {
        if (!next_line(p, n, &pos, &line, &len)) {
            return "no blank line ends the head";
        }
        if (len == 0) {
            break;
        }
        if ((why = field_line(h, line, len)) != NULL) {
            return why;
        }
        struct ref_field *f = &h->fields[h->nfields - 1];
        if (ref_ieq(f->name, f->nlen, "Content-Length")) {
            if ((why = content_length(h, f)) != NULL) {
                return why;
            }
        } else if (ref_ieq(f->name, f->nlen, "Transfer-Encoding")) {
            te = 1;
        }
    }
    if (pos != n) {
        return "bytes after the blank line";
    }
    if (te) {
        if (h->major == 0 || (h->major == 1 && h->minor == 0)) {
            return "Transfer-Encoding in an HTTP/1.0 request";
        }
        if (h->framing == REF_LENGTH) {
            return "both Content-Length and Transfer-Encoding";
        }
        int chunked;
        if ((why = transfer_encoding(h, &chunked)) != NULL) {
            return why;
        }
        h->framing = REF_CHUNKED;
    }
    return NULL;
}

int ref_status_line(const char *p, size_t n)
{
    struct ref_head h;
    if (n < 12 || parse_version(&h, p, 8) != NULL || p[8] != ' ') {
        return -1;
    }
    int st = 0;
    for (int i = 9; i < 12; i++) {
        if (p[i] < '0' || p[i] > '9') {
            return -1;
        }
        st = st * 10 + (p[i] - '0');
    }
    /* Then SP reason, or (leniently) the end of the line. */
    if (n > 12 && p[12] != ' ' && p[12] != '\r' && p[12] != '\n') {
        return -1;
    }
    return st;
}

/* Chunked body states (RFC 9112 7.1), CRLF exactly where the grammar
 * has it: a lone LF in a chunked body is where two readers part ways. */
enum {
    RC_SIZE0 = 0, /* first hex digit of a chunk size */
    RC_SIZE,      /* more hex digits, an extension, or CR */
    RC_SIZE_WS,   /* BWS after the size: only more of it, ; or CR */
    RC_EXT,       /* chunk extensions: anything visible up to CR */
    RC_SIZE_LF,   /* LF ending a chunk line */
    RC_DATA,      /* chunk data, size bytes left */
    RC_DATA_CR,   /* CR after chunk data */
    RC_DATA_LF,   /* LF after chunk data */
    RC_TR_START,  /* a trailer field line, or the final CRLF */
    RC_TR_NAME,
    RC_TR_VALUE,
    RC_TR_LF,
    RC_END_LF,
    RC_DONE,
    RC_HUGE
};

void ref_chunked_init(struct ref_chunked *r)
{
    memset(r, 0, sizeof(*r));
    r->state = RC_SIZE0;
}

static int hexval(unsigned char c)
{
    if (c >= '0' && c <= '9') {
        return c - '0';
    }
    if (c >= 'a' && c <= 'f') {
        return c - 'a' + 10;
    }
    if (c >= 'A' && c <= 'F') {
        return c - 'A' + 10;
    }
    return -1;
}

static int bad(struct ref_chunked *r, const char *why)
{
    r->why = why;
    return REF_CHUNK_BAD;
}

int ref_chunked_byte(struct ref_chunked *r, unsigned char ch)
{
    int h;
    switch (r->state) {
    case RC_SIZE0:
        if ((h = hexval(ch)) < 0) {
            return bad(r, "a chunk line does not start with a hex digit");
        }
        r->size = (unsigned long long)h;
        r->state = RC_SIZE;
        return REF_CHUNK_MORE;
    case RC_SIZE:
        if ((h = hexval(ch)) >= 0) {
            if (r->size > (1ull << 40)) {
                r->state = RC_HUGE; /* parsers differ on where they stop; no input gets there */
                return REF_CHUNK_HUGE;
            }
            r->size = r->size * 16 + (unsigned)h;
            return REF_CHUNK_MORE;
        }
        /* fall through: what may follow the size */
    case RC_SIZE_WS:
        if (ch == ' ' || ch == '\t') {
            r->state = RC_SIZE_WS;
            return REF_CHUNK_MORE;
        }
        if (ch == ';') {
            r->state = RC_EXT;
            return REF_CHUNK_MORE;
        }
        if (ch == '\r') {
            r->state = RC_SIZE_LF;
            return REF_CHUNK_MORE;
        }
        return bad(r, "a chunk size followed by something other than BWS, ; or CRLF");
    case RC_EXT:
        /* What an extension says is ignored by every reader; only where
         * the line ends matters, so controls other than HTAB are refused. */
        if (ch == '\r') {
            r->state = RC_SIZE_LF;
            return REF_CHUNK_MORE;
        }
        if ((ch < 0x20 && ch != '\t') || ch == 0x7f) {
            return bad(r, "a control (bare LF, NUL ...) in a chunk extension");
        }
        return REF_CHUNK_MORE;
    case RC_SIZE_LF:
        if (ch != '\n') {
            return bad(r, "a bare CR in a chunk line");
        }
        r->state = r->size == 0 ? RC_TR_START : RC_DATA;
        return REF_CHUNK_MORE;
    case RC_DATA:
        if (--r->size == 0) {
            r->state = RC_DATA_CR;
        }
        return REF_CHUNK_MORE;
    case RC_DATA_CR:
        if (ch != '\r') {
            return bad(r, "chunk data not followed by CRLF");
        }
        r->state = RC_DATA_LF;
        return REF_CHUNK_MORE;
    case RC_DATA_LF:
        if (ch != '\n') {
            return bad(r, "chunk data followed by CR and not LF");
        }
        r->state = RC_SIZE0;
        return REF_CHUNK_MORE;
    case RC_TR_START:
        if (ch == '\r') {
            r->state = RC_END_LF;
            return REF_CHUNK_MORE;
        }
        if (!ref_tchar(ch)) {
            return bad(r, "a trailer line that starts with no field name");
        }
        r->state = RC_TR_NAME;
        return REF_CHUNK_MORE;
    case RC_TR_NAME:
        if (ch == ':') {
            r->state = RC_TR_VALUE;
        } else if (!ref_tchar(ch)) {
            return bad(r, "a trailer field name followed by something other than a colon");
        }
        return REF_CHUNK_MORE;
    case RC_TR_VALUE:
        if (ch == '\r') {
            r->state = RC_TR_LF;
        } else if (ch == '\n' || ch == '\0') {
            return bad(r, "a bare LF or NUL in a trailer field");
        }
        return REF_CHUNK_MORE;
    case RC_TR_LF:
        if (ch != '\n') {
            return bad(r, "a bare CR in a trailer field");
        }
        r->state = RC_TR_START;
        return REF_CHUNK_MORE;
    case RC_END_LF:
        if (ch != '\n') {
            return bad(r, "the final CR of a chunked body not followed by LF");
        }
        r->state = RC_DONE;
        return REF_CHUNK_DONE;
    case RC_HUGE:
        return REF_CHUNK_HUGE;
    default:
        return bad(r, "bytes after the end of the chunked body");
    }
}
