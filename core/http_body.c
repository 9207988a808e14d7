/* http_body.c - where a message body ends, by its framing (RFC 9112 §6, §7).
 *
 * Bytes are only counted and checked, never copied.  The chunked coding
 * is read strictly: CRLF and nothing else ends a chunk-size line, a
 * chunk's data and each trailer field; chunk extensions and trailer
 * fields hold field characters only; sizes are bounded.  A peer that
 * bends any of this could be read differently by the next hop, so the
 * message is refused instead (ferry relays the bytes unchanged). */
#include "http.h"

/* Steps of the chunked reader. */
enum chunk_step {
    CK_SIZE = 0, /* chunk-size hex digits */
    CK_SIZE_WS,  /* whitespace after the size: a ';' must follow */
    CK_EXT,      /* chunk extensions up to CR */
    CK_SIZE_LF,  /* LF ending the chunk-size line */
    CK_DATA,     /* chunk data */
    CK_DATA_CR,  /* CR after chunk data */
    CK_DATA_LF,  /* LF after chunk data */
    CK_TR_START, /* start of a trailer field line, or CR of the last line */
    CK_TR_NAME,  /* trailer field name up to ':' */
    CK_TR_VALUE, /* trailer field value up to CR */
    CK_TR_LF,    /* LF ending a trailer field line */
    CK_END_LF    /* LF ending the message */
};

/* The largest chunk size: 15 hex digits, far above any real chunk and
 * below what a signed 64-bit reader of the next hop could wrap. */
#define CHUNK_SIZE_MAX 0xfffffffffffffffull

void http_body_reset(struct http_msg *m)
{
    m->msg_done = m->framing == HTTP_FRAME_NONE;
    m->left = m->framing == HTTP_FRAME_LENGTH ? m->content_length : 0;
    m->body_state = CK_SIZE;
    m->digits = 0;
    m->line = 0;
    m->trailer = 0;
}

static int hexval(unsigned char ch)
{
    if (ch >= '0' && ch <= '9') {
        return ch - '0';
    }
    if (ch >= 'a' && ch <= 'f') {
        return ch - 'a' + 10;
    }
    if (ch >= 'A' && ch <= 'F') {
        return ch - 'A' + 10;
    }
    return -1;
}

/* One byte of a chunk-size line or trailer section; -1 if it is wrong. */
static int chunk_byte(struct http_msg *m, unsigned char ch)
{
    switch ((enum chunk_step)m->body_state) {
    case CK_SIZE: {
        int h = hexval(ch);
        if (h >= 0) {
            if (m->left > (CHUNK_SIZE_MAX >> 4)) {
                return -1;
            }
            m->left = (m->left << 4) | (uint64_t)h;
            m->digits++;
            return 0;
        }
        if (m->digits == 0) {
            return -1;
        }
        if (ch == '\r') {
            m->body_state = CK_SIZE_LF;
        } else if (ch == ';') {
            m->body_state = CK_EXT;
        } else if (ch == ' ' || ch == '\t') {
            m->body_state = CK_SIZE_WS;
        } else {
            return -1;
        }
        return 0;
    }
    case CK_SIZE_WS:
        if (ch == ';') {
            m->body_state = CK_EXT;
        } else if (ch != ' ' && ch != '\t') {
            return -1;
        }
        return 0;
    case CK_EXT:
        if (ch == '\r') {
            m->body_state = CK_SIZE_LF;
        } else if (!http_is_field_char(ch)) {
            return -1; /* a bare LF, NUL or other control */
        }
        return 0;
    case CK_SIZE_LF:
        if (ch != '\n') {
            return -1;
        }
        m->line = 0;
        m->body_state = m->left > 0 ? CK_DATA : CK_TR_START;
        return 0;
    case CK_DATA_CR:
        if (ch != '\r') {
            return -1;
        }
        m->body_state = CK_DATA_LF;
        return 0;
    case CK_DATA_LF:
        if (ch != '\n') {
            return -1;
        }
        m->body_state = CK_SIZE;
        m->digits = 0;
        m->line = 0;
        return 0;
    case CK_TR_START:
        if (ch == '\r') {
            m->body_state = CK_END_LF;
        } else if (http_is_tchar(ch)) {
            m->body_state = CK_TR_NAME;
        } else {
            return -1; /* incl. obs-fold */
        }
        return 0;
    case CK_TR_NAME:
        if (ch == ':') {
            m->body_state = CK_TR_VALUE;
        } else if (!http_is_tchar(ch)) {
            return -1;
        }
        return 0;
    case CK_TR_VALUE:
        if (ch == '\r') {
            m->body_state = CK_TR_LF;
        } else if (!http_is_field_char(ch)) {
            return -1;
        }
        return 0;
    case CK_TR_LF:
        if (ch != '\n') {
            return -1;
        }
        m->body_state = CK_TR_START;
        return 0;
    case CK_END_LF:
        if (ch != '\n') {
            return -1;
        }
        m->msg_done = 1;
        return 0;
    case CK_DATA:
        break;
    }
    return -1;
}

static long chunked(struct http_msg *m, const char *p, size_t n)
{
    size_t i = 0;
    while (i < n && !m->msg_done) {
        if (m->body_state == CK_DATA) {
            size_t k = m->left < n - i ? (size_t)m->left : n - i;
            i += k;
            m->left -= k;
            if (m->left == 0) {
                m->body_state = CK_DATA_CR;
            }
            continue;
        }
        int in_trailer = m->body_state >= CK_TR_START;
        if (chunk_byte(m, (unsigned char)p[i]) < 0) {
            return -1;
        }
        i++;
        if (in_trailer ? ++m->trailer > HTTP_TRAILER_MAX : ++m->line > HTTP_CHUNK_LINE_MAX) {
            return -1;
        }
    }
    return (long)i;
}

long http_body(struct http_msg *m, const char *p, size_t n)
{
    if (m->msg_done || n == 0) {
        return 0;
    }
    switch (m->framing) {
    case HTTP_FRAME_LENGTH: {
        size_t k = m->left < n ? (size_t)m->left : n;
        m->left -= k;
        m->msg_done = m->left == 0;
        return (long)k;
    }
    case HTTP_FRAME_CHUNKED:
        return chunked(m, p, n);
    case HTTP_FRAME_EOF:
        return (long)n;
    case HTTP_FRAME_NONE:
        break;
    }
    return 0;
}

long http_body_data(struct http_msg *m, const char *p, size_t n, size_t *off, size_t *len)
{
    *off = *len = 0;
    if (m->framing != HTTP_FRAME_CHUNKED) {
        long k = http_body(m, p, n);
        *len = k > 0 ? (size_t)k : 0;
        return k;
    }
    size_t i = 0;
    /* Framing bytes (size line, CRLF after data, trailers) one by one:
     * there are few of them, and the strict reader checks each. */
    while (i < n && !m->msg_done && m->body_state != CK_DATA) {
        if (chunked(m, p + i, 1) < 0) {
            return -1;
        }
        i++;
    }
    if (i < n && !m->msg_done && m->body_state == CK_DATA) {
        size_t k = m->left < n - i ? (size_t)m->left : n - i;
        *off = i;
        *len = k;
        i += k;
        m->left -= k;
        if (m->left == 0) {
            m->body_state = CK_DATA_CR;
        }
    }
    return (long)i;
}

int http_body_eof(struct http_msg *m)
{
    if (m->framing == HTTP_FRAME_EOF) {
        m->msg_done = 1;
    }
    return m->msg_done;
}

int http_needs_eof(const struct http_msg *m)
{
    return m->framing == HTTP_FRAME_EOF;
}
