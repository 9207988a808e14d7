/* retry.h - what a pool retries on, how long it waits, and its retry
 * budget (retry.c).  Policies and budget counts are kept per stable pool
 * index, so they outlive a reload; the rules of when a request may be
 * sent again at all (idempotency, nothing sent to the client yet) stay
 * with the callers (conn_upstream.c for failures, conn_banretry.c for
 * held responses). */
#ifndef FERRY_RETRY_H
#define FERRY_RETRY_H

#include "ferry.h"

struct conn;

/* Why a request was sent again: the access line's `retry` and the
 * `reason` label of ferry_retry_reasons_total. */
enum retry_reason {
    RETRY_REFUSED = 0, /* the connection was refused (or the name did not resolve) */
    RETRY_CONNECT,     /* another failure before the request left: TLS, proxy handshake */
    RETRY_RESET,       /* closed or reset before the response head */
    RETRY_TIMEOUT,     /* connect, first byte, or the request body not taken */
    RETRY_STATUS,      /* a response status listed in `on` */
    RETRY_REASONS
};
extern const char *const retry_reason_names[RETRY_REASONS];

/* The reason of an attempt that failed with kind, before (1) or after
 * the request was sent. */
enum retry_reason retry_reason_of(enum ferry_fail_kind kind, int before_send);
/* 1 when the pool retries this reason (a failure before the request left
 * also retries under connect-failure). */
int retry_on(int pool, enum retry_reason why, int before_send);
/* 1 when the pool retries a response with this status. */
int retry_on_status(int pool, int status);
/* Seconds to wait before retry number n (0: the first), jittered. */
double retry_backoff(int pool, unsigned n);

/* The request was sent to the pool (counted in its active requests);
 * idempotent. */
void retry_request_begin(struct conn *c, int pool);
/* Take a place in the pool's retry budget for a retry of c: 1 when
 * allowed (or the pool has no budget), 0 when exhausted (counted, logged
 * once per window, c->retry_stop = "budget"). */
int retry_budget_take(struct conn *c);
/* The request ended (or a tunnel came up: its retries are over):
 * its places go back.  Idempotent. */
void retry_request_end(struct conn *c);
/* One retry of c for why (status: the HTTP status when why is
 * RETRY_STATUS): counted for metrics and the access line. */
void retry_note(struct conn *c, enum retry_reason why, int status);
/* The access line's `retry` field ("refused,503"), or NULL when none. */
const char *retry_log_text(const struct conn *c, char *buf, size_t cap);
void retry_free_all(void);

#endif
