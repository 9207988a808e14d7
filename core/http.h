/* http.h - the only place that knows http-parser.
 *
 * A message head is found by its blank line, parsed in one
 * http_parser_execute call (so every field arrives whole, as offsets
 * into the caller's buffer), and the body is then fed through the same
 * parser only to learn where the message ends: body bytes are relayed
 * as they are, never copied into a whole-body buffer. */
#ifndef FERRY_HTTP_H
#define FERRY_HTTP_H

#include <http_parser.h>
#include <stddef.h>
#include <stdint.h>

#include "buf.h"

#define HTTP_MAX_FIELDS 100
#define HTTP_MAX_CONN_TOKENS 8

/* A span of the head buffer. */
struct http_span {
    uint32_t off; /* ro: from the head start */
    uint32_t len; /* ro */
};

struct http_field {
    struct http_span name;
    struct http_span value;
    unsigned hop:1; /* ro: hop-by-hop, not to be forwarded */
};

/* One parsed message head plus the parser that tracks its body. */
struct http_msg {
    http_parser parser;               /* private */
    const char *base;                 /* private: head start during parse */
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
    int status;                       /* ro: response status */
    int method;                       /* ro: enum http_method */
    unsigned major, minor;            /* ro: HTTP version */
    unsigned head_done:1;             /* ro: head parsed */
    unsigned msg_done:1;              /* ro: message complete */
    unsigned keep_alive:1;            /* ro: per http_should_keep_alive */
    unsigned is_upgrade:1;            /* ro: CONNECT or Upgrade accepted by parser */
    unsigned has_body:1;              /* ro: a body follows the head */
    unsigned too_many:1;              /* private */
    unsigned last_value:1;            /* private: folding detection */
    unsigned folded:1;                /* private */
    unsigned skip_body:1;             /* private: response to HEAD */
};

/*
 * Length of the head at p (through its blank line), 0 when not all of
 * it is there yet.  Leading empty lines must be dropped by the caller
 * (http_skip_empty_lines).
 */
size_t http_head_len(const char *p, size_t n);
size_t http_skip_empty_lines(const char *p, size_t n);

enum http_parse_result {
    HTTP_PARSE_OK = 0,
    HTTP_PARSE_BAD = -1,
    HTTP_PARSE_TOO_MANY = -2
};

int http_parse_request(struct http_msg *m, const char *head, size_t len);
/* Give back the field table (the spans and flags stay; nfields is 0). */
void http_msg_release(struct http_msg *m);
/* Free the tables kept for reuse (after a burst, and at exit). */
void http_fields_drain(void);
/* head_request: the request was HEAD, so the response has no body. */
int http_parse_response(struct http_msg *m, const char *head, size_t len, int head_request);

/* Feed body bytes; returns how many belong to this message (relay
 * exactly those), or -1 on a framing error.  Sets msg_done at the end. */
long http_body(struct http_msg *m, const char *p, size_t n);
/* The peer closed: 1 if that legitimately ends the message. */
int http_body_eof(struct http_msg *m);
/* The body runs until the connection closes (no length, not chunked). */
int http_needs_eof(struct http_msg *m);

const char *http_method_name(int method);
int http_method_idempotent(int method);
int http_span_ieq(const char *base, struct http_span s, const char *lit);

#endif
