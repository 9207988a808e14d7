/* http.h - HTTP/1.x message heads and body framing, strictly.
 *
 * A message head is found by its blank line and parsed by ferry itself
 * (http.c): every byte of it must fit RFC 9112's grammar, or the head is
 * refused, so what ferry forwards (rebuilt from the parsed spans) can
 * never be read differently by the next hop.  Bodies are then fed
 * through http_body (http_body.c) only to learn where the message ends:
 * body bytes are relayed as they are, never copied into a whole-body
 * buffer.  http-parser is used for URL splitting and method names only. */
#ifndef FERRY_HTTP_H
#define FERRY_HTTP_H

#include <http_parser.h>
#include <stddef.h>
#include <stdint.h>
#include <string.h>
#include <strings.h>

#include "buf.h"

#define HTTP_MAX_FIELDS 100
/* Connection may name this many hop-by-hop fields; more is refused. */
#define HTTP_MAX_CONN_TOKENS 16
/* A chunk-size line (size and extensions) longer than this is refused. */
#define HTTP_CHUNK_LINE_MAX 4096
/* Trailer fields of a chunked body longer than this in all are refused. */
#define HTTP_TRAILER_MAX 8192

/* A span of the head buffer. */
struct http_span {
    uint32_t off; /* ro: from the head start */
    uint32_t len; /* ro */
};

struct http_field {
    struct http_span name;
    struct http_span value; /* ro: without leading and trailing whitespace */
    unsigned hop:1; /* rw: hop-by-hop or taken by ferry, not to be forwarded */
};

/* How the body of a message ends (RFC 9112 §6.3). */
enum http_framing {
    HTTP_FRAME_NONE = 0, /* no body */
    HTTP_FRAME_LENGTH,   /* Content-Length bytes */
    HTTP_FRAME_CHUNKED,  /* chunked transfer coding, through its trailer section */
    HTTP_FRAME_EOF       /* until the sender closes (responses only) */
};

/* One parsed message head plus the state that tracks its body. */
struct http_msg {
    /* ro: HTTP_MAX_FIELDS entries, taken when a head is parsed and given
     * back by http_msg_release, so an idle connection holds no table. */
    struct http_field *fields;
    unsigned nfields;                 /* ro */
    struct http_span url;             /* ro: request target */
    struct http_span reason;          /* ro: response reason phrase */
    struct http_span upgrade;         /* ro: Upgrade value, if any */
    struct http_span request_id;      /* ro: X-Request-Id value, if any */
    struct http_span proxy_auth;      /* ro: Proxy-Authorization value, if any */
    struct http_span host;            /* ro: Host value, if any */
    struct http_span idem_key;        /* ro: Idempotency-Key value, if any */
    struct http_span max_forwards;    /* ro: Max-Forwards value, if any */
    uint64_t content_length;          /* ro: of a HTTP_FRAME_LENGTH body */
    uint64_t left;                    /* private: body or chunk bytes still to come */
    uint32_t line;                    /* private: bytes of the current framing line */
    uint32_t trailer;                 /* private: trailer bytes so far */
    int status;                       /* ro: response status */
    int method;                       /* ro: enum http_method */
    unsigned major, minor;            /* ro: HTTP version */
    enum http_framing framing;        /* ro */
    unsigned char body_state;         /* private: http_body.c's step */
    unsigned char digits;             /* private: chunk-size digits so far */
    unsigned head_done:1;             /* ro: head parsed */
    unsigned msg_done:1;              /* ro: message complete */
    unsigned keep_alive:1;            /* ro: the sender allows another message */
    unsigned is_upgrade:1;            /* ro: CONNECT, an upgrade request, or 101 */
    unsigned has_body:1;              /* ro: a body follows the head */
};

/*
 * Length of the head at p (through its blank line), 0 when not all of
 * it is there yet.  Leading empty lines must be dropped by the caller
 * (http_skip_empty_lines).
 */
size_t http_head_len(const char *p, size_t n);
size_t http_skip_empty_lines(const char *p, size_t n);
/* 1 when p holds a CR followed by anything but LF: no head with one is
 * valid, so an unfinished head can be refused before it completes. */
int http_bare_cr(const char *p, size_t n);

enum http_parse_result {
    HTTP_PARSE_OK = 0,
    HTTP_PARSE_BAD = -1,      /* not HTTP/1.x by RFC 9112's grammar */
    HTTP_PARSE_TOO_MANY = -2, /* more than HTTP_MAX_FIELDS fields */
    HTTP_PARSE_FRAMING = -3   /* Content-Length / Transfer-Encoding ambiguous or invalid */
};

/* Parse the head at head (len bytes, as http_head_len measured it). */
int http_parse_request(struct http_msg *m, const char *head, size_t len);
/* Give back the field table (the spans and flags stay; nfields is 0). */
void http_msg_release(struct http_msg *m);
/* Free the tables kept for reuse (after a burst, and at exit). */
void http_fields_drain(void);
/* head_request: the request was HEAD, so the response has no body. */
int http_parse_response(struct http_msg *m, const char *head, size_t len, int head_request);

/* Start body framing over (http_parse_* calls it; a replay calls it again). */
void http_body_reset(struct http_msg *m);
/* Feed body bytes; returns how many belong to this message (relay
 * exactly those), or -1 on a framing error.  Sets msg_done at the end. */
long http_body(struct http_msg *m, const char *p, size_t n);
/* Like http_body, for a reader that wants the data without the chunked
 * framing: consumes framing up to one run of data and that run, and
 * says where the data lies in p (off, len; len 0: none yet).  The same
 * strict checks; -1 on a framing error.  Call until p is used up. */
long http_body_data(struct http_msg *m, const char *p, size_t n, size_t *off, size_t *len);
/* The peer closed: 1 if that legitimately ends the message. */
int http_body_eof(struct http_msg *m);
/* The body runs until the connection closes (no length, not chunked). */
int http_needs_eof(const struct http_msg *m);

const char *http_method_name(int method);
int http_method_idempotent(int method);
/* Inline: with a literal name, strlen folds to a constant and most calls
 * end at the length check (every field of a head meets many names). */
static inline int http_span_ieq(const char *base, struct http_span s, const char *lit)
{
    size_t n = strlen(lit);
    return s.len == n && strncasecmp(base + s.off, lit, n) == 0;
}
/* RFC 9110 token characters (field names, methods, codings). */
int http_is_tchar(unsigned char ch);
/* Characters of a field value: HTAB, SP, VCHAR, obs-text. */
int http_is_field_char(unsigned char ch);

#endif
