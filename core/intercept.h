/* intercept.h - CONNECTs that ferry answers itself and looks into
 * (exchanges with intercept = true): see intercept.c. */
#ifndef FERRY_INTERCEPT_H
#define FERRY_INTERCEPT_H

#include <stdint.h>

struct conn;

/* Why a client's TLS handshake inside an intercepted CONNECT failed. */
enum intercept_hs {
    INTERCEPT_HS_REFUSED = 0, /* the client refused ferry's certificate */
    INTERCEPT_HS_PLAIN_HTTP,  /* plain HTTP instead of TLS */
    INTERCEPT_HS_NOT_TLS,     /* bytes that are not TLS at all */
    INTERCEPT_HS_SNI,         /* the SNI names another host than the CONNECT */
    INTERCEPT_HS_OTHER,       /* anything else (protocol, cipher, closed) */
    INTERCEPT_HS_REASONS
};

struct intercept_stats {
    uint64_t tunnels;                           /* ro: CONNECTs answered by ferry */
    uint64_t requests;                          /* ro: requests read inside them */
    uint64_t hs_fail[INTERCEPT_HS_REASONS];     /* ro: failed client handshakes */
};

const struct intercept_stats *intercept_stats(void);
/* The names of enum intercept_hs for /metrics. */
extern const char *const intercept_hs_names[INTERCEPT_HS_REASONS];

/* 1 when this CONNECT could be intercepted (a name, a plain listener, a CA). */
int conn_intercept_possible(const struct conn *c);
/* Dispatch marked the CONNECT: answer it and wait to start TLS. */
void conn_intercept_begin(struct conn *c);
/* CS_MITM_HELLO: once the answer has left, the client leg goes on TLS. */
void conn_intercept_pump(struct conn *c);
/* CS_HEAD of an intercepted session: the next request inside. */
void conn_intercept_input(struct conn *c);
/* The client's handshake failed: classify, count, log.  1: answered. */
int conn_intercept_tls_failed(struct conn *c);
/* The request goes to its origin over TLS that ferry originates. */
void conn_intercept_origin(struct conn *c);
void conn_intercept_free(struct conn *c);

#endif
