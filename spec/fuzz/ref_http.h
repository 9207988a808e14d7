/* ref_http.h - a second, strict reading of HTTP/1.1 framing (RFC 9112),
 * for the differential fuzz harnesses only.
 *
 * It shares no code with core/http.c or http-parser: the harnesses ask
 * both readers about the same bytes, and a head or body that ferry
 * accepts must read the same here (same fields, same framing, same end).
 * Where RFC 9112 lets a recipient choose, this reader takes the choice
 * that can never be read two ways: a bare CR, whitespace before a colon,
 * obs-fold, a line led by whitespace, CR/LF/NUL in a value, anything but
 * CRLF after chunk data or in a chunk line, and Transfer-Encoding in an
 * HTTP/1.0 message or next to Content-Length are all refused.  It stays
 * lenient where no second reading exists (the request line, which ferry
 * rewrites from its own parse, and the content of chunk extensions). */
#ifndef FERRY_FUZZ_REF_HTTP_H
#define FERRY_FUZZ_REF_HTTP_H

#include <stddef.h>

#define REF_MAX_FIELDS 512

enum ref_framing {
    REF_NONE = 0,   /* no body (a request without CL or TE) */
    REF_LENGTH,     /* Content-Length: length */
    REF_CHUNKED     /* Transfer-Encoding ending in chunked */
};

struct ref_field {
    const char *name;
    size_t nlen;
    const char *value; /* without surrounding OWS */
    size_t vlen;
};

struct ref_head {
    const char *method;
    size_t mlen;
    const char *target;
    size_t tlen;
    int major, minor;
    int status;                    /* responses only */
    struct ref_field fields[REF_MAX_FIELDS];
    unsigned nfields;
    enum ref_framing framing;
    unsigned long long length;     /* REF_LENGTH */
};

/* Parse exactly one head of n bytes (through its blank line).  NULL when
 * a strict reader accepts it, else why not. */
const char *ref_parse_request(struct ref_head *h, const char *p, size_t n);

/* The status line only ("HTTP/d.d SP 3DIGIT [SP reason]"): the status,
 * or -1 when there is no well-formed status line at p. */
int ref_status_line(const char *p, size_t n);

/* A chunked body read one byte at a time. */
enum ref_chunk_result {
    REF_CHUNK_MORE = 0,
    REF_CHUNK_DONE,   /* the byte just fed ended the message */
    REF_CHUNK_BAD,    /* the byte just fed cannot continue a valid body */
    REF_CHUNK_HUGE    /* a chunk size no input can reach: nothing more to compare */
};

struct ref_chunked {
    int state;
    unsigned long long size;
    const char *why;  /* set with REF_CHUNK_BAD */
};

void ref_chunked_init(struct ref_chunked *r);
int ref_chunked_byte(struct ref_chunked *r, unsigned char ch);

int ref_tchar(unsigned char c);
int ref_ieq(const char *a, size_t n, const char *lit);

#endif
