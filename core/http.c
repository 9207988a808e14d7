/* http.c - http-parser glue: heads with limits, bodies by framing only. */
#include "http.h"

#include <stdlib.h>
#include <string.h>
#include <strings.h>

/* Exported by libhttp_parser 2.9 but missing from its header. */
int http_message_needs_eof(const http_parser *parser);

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

static struct http_msg *msg_of(http_parser *p)
{
    return (struct http_msg *)p->data;
}

static struct http_span span(struct http_msg *m, const char *at, size_t len)
{
    struct http_span s = { (uint32_t)(at - m->base), (uint32_t)len };
    return s;
}

static int on_url(http_parser *p, const char *at, size_t len)
{
    struct http_msg *m = msg_of(p);
    m->url = span(m, at, len);
    return 0;
}

static int on_status(http_parser *p, const char *at, size_t len)
{
    struct http_msg *m = msg_of(p);
    m->reason = span(m, at, len);
    return 0;
}

static int on_header_field(http_parser *p, const char *at, size_t len)
{
    struct http_msg *m = msg_of(p);
    if (m->nfields >= HTTP_MAX_FIELDS) {
        m->too_many = 1;
        return 1;
    }
    struct http_field *f = &m->fields[m->nfields++];
    memset(f, 0, sizeof(*f));
    f->name = span(m, at, len);
    m->last_value = 0;
    return 0;
}

static int on_header_value(http_parser *p, const char *at, size_t len)
{
    struct http_msg *m = msg_of(p);
    if (m->nfields == 0 || m->last_value) {
        /* obs-fold: RFC 9112 lets a proxy reject it; we do. */
        m->folded = 1;
        return 1;
    }
    m->fields[m->nfields - 1].value = span(m, at, len);
    m->last_value = 1;
    return 0;
}

int http_span_ieq(const char *base, struct http_span s, const char *lit)
{
    size_t n = strlen(lit);
    return s.len == n && strncasecmp(base + s.off, lit, n) == 0;
}

/* Headers that describe one hop and never travel further. */
static const char *const hop_names[] = {
    "Connection", "Keep-Alive", "Proxy-Connection", "Proxy-Authorization",
    "Proxy-Authenticate", "TE", "Trailer", "Upgrade", NULL
};

static void mark_hop_by_hop(struct http_msg *m)
{
    struct http_span tokens[HTTP_MAX_CONN_TOKENS];
    unsigned ntok = 0;
    const char *b = m->base;
    for (unsigned i = 0; i < m->nfields; i++) {
        struct http_field *f = &m->fields[i];
        for (const char *const *h = hop_names; *h != NULL; h++) {
            if (http_span_ieq(b, f->name, *h)) {
                f->hop = 1;
                break;
            }
        }
        if (http_span_ieq(b, f->name, "Upgrade")) {
            m->upgrade = f->value;
        } else if (http_span_ieq(b, f->name, "X-Request-Id")) {
            m->request_id = f->value;
        } else if (http_span_ieq(b, f->name, "Proxy-Authorization")) {
            m->proxy_auth = f->value;
        } else if (http_span_ieq(b, f->name, "Host")) {
            m->host = f->value;
        } else if (http_span_ieq(b, f->name, "Idempotency-Key")) {
            m->idem_key = f->value;
        }
        if (!http_span_ieq(b, f->name, "Connection") &&
            !http_span_ieq(b, f->name, "Proxy-Connection")) {
            continue;
        }
        /* Split the comma list; every token names another hop header. */
        uint32_t s = f->value.off, e = f->value.off + f->value.len;
        while (s < e && ntok < HTTP_MAX_CONN_TOKENS) {
            while (s < e && (b[s] == ' ' || b[s] == '\t' || b[s] == ',')) {
                s++;
            }
            uint32_t t = s;
            while (t < e && b[t] != ',' && b[t] != ' ' && b[t] != '\t') {
                t++;
            }
            if (t > s) {
                tokens[ntok].off = s;
                tokens[ntok].len = t - s;
                ntok++;
            }
            s = t;
        }
    }
    for (unsigned i = 0; i < m->nfields; i++) {
        struct http_field *f = &m->fields[i];
        for (unsigned k = 0; k < ntok && !f->hop; k++) {
            if (f->name.len == tokens[k].len &&
                strncasecmp(b + f->name.off, b + tokens[k].off, f->name.len) == 0) {
                /* Never let Connection strip the framing we rely on. */
                if (!http_span_ieq(b, f->name, "Transfer-Encoding") &&
                    !http_span_ieq(b, f->name, "Content-Length") &&
                    !http_span_ieq(b, f->name, "Host")) {
                    f->hop = 1;
                }
            }
        }
    }
}

static int on_headers_complete(http_parser *p)
{
    struct http_msg *m = msg_of(p);
    m->head_done = 1;
    return m->skip_body ? 1 : 0;
}

static int on_message_complete(http_parser *p)
{
    struct http_msg *m = msg_of(p);
    m->msg_done = 1;
    /* Stop exactly at the end of this message: what follows belongs to
     * the next one (pipelining) and must wait its turn. */
    http_parser_pause(p, 1);
    return 0;
}

static const http_parser_settings settings = {
    .on_url = on_url,
    .on_status = on_status,
    .on_header_field = on_header_field,
    .on_header_value = on_header_value,
    .on_headers_complete = on_headers_complete,
    .on_message_complete = on_message_complete,
};

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

static int parse_head(struct http_msg *m, enum http_parser_type type, const char *head,
                      size_t len, int skip_body)
{
    memset(m, 0, offsetof(struct http_msg, fields));
    m->nfields = 0;
    memset(&m->url, 0, sizeof(*m) - offsetof(struct http_msg, url));
    if (m->fields == NULL) {
        m->fields = nfields_pool > 0 ? fields_pool[--nfields_pool]
                                     : malloc(HTTP_MAX_FIELDS * sizeof(*m->fields));
        if (m->fields == NULL) {
            return HTTP_PARSE_BAD;
        }
    }
    http_parser_init(&m->parser, type);
    m->parser.data = m;
    m->base = head;
    m->skip_body = skip_body ? 1 : 0;
    size_t n = http_parser_execute(&m->parser, &settings, head, len);
    enum http_errno e = HTTP_PARSER_ERRNO(&m->parser);
    if (m->too_many) {
        return HTTP_PARSE_TOO_MANY;
    }
    if (e == HPE_PAUSED) {
        http_parser_pause(&m->parser, 0);
    } else if (e != HPE_OK || m->folded) {
        return HTTP_PARSE_BAD;
    }
    /* CONNECT and upgrades stop the parser right after the head. */
    m->is_upgrade = m->parser.upgrade ? 1 : 0;
    if (!m->head_done || (n != len && !m->is_upgrade && !m->msg_done)) {
        return HTTP_PARSE_BAD;
    }
    m->status = (int)m->parser.status_code;
    m->method = (int)m->parser.method;
    m->major = m->parser.http_major;
    m->minor = m->parser.http_minor;
    m->keep_alive = http_should_keep_alive(&m->parser) ? 1 : 0;
    m->has_body = !m->msg_done && !m->is_upgrade;
    mark_hop_by_hop(m);
    m->base = NULL;
    return HTTP_PARSE_OK;
}

int http_parse_request(struct http_msg *m, const char *head, size_t len)
{
    return parse_head(m, HTTP_REQUEST, head, len, 0);
}

int http_parse_response(struct http_msg *m, const char *head, size_t len, int head_request)
{
    return parse_head(m, HTTP_RESPONSE, head, len, head_request);
}

long http_body(struct http_msg *m, const char *p, size_t n)
{
    if (m->msg_done || n == 0) {
        return 0;
    }
    size_t used = http_parser_execute(&m->parser, &settings, p, n);
    enum http_errno e = HTTP_PARSER_ERRNO(&m->parser);
    if (e == HPE_PAUSED) {
        http_parser_pause(&m->parser, 0);
    } else if (e != HPE_OK) {
        return -1;
    }
    return (long)used;
}

int http_body_eof(struct http_msg *m)
{
    if (m->msg_done) {
        return 1;
    }
    http_parser_execute(&m->parser, &settings, NULL, 0);
    return m->msg_done;
}

int http_needs_eof(struct http_msg *m)
{
    return http_message_needs_eof(&m->parser);
}

const char *http_method_name(int method)
{
    return http_method_str((enum http_method)method);
}

int http_method_idempotent(int method)
{
    switch (method) {
    case HTTP_GET:
    case HTTP_HEAD:
    case HTTP_OPTIONS:
    case HTTP_PUT:
    case HTTP_DELETE:
        return 1;
    default:
        return 0;
    }
}
