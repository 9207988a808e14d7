/* log.h - one JSON object per line, buffered, flushed before the loop sleeps. */
#ifndef FERRY_LOG_H
#define FERRY_LOG_H

#include "ferry.h"

/* The levels of ferry.h, under the core's short names. */
enum log_level {
    LOG_DEBUG = FERRY_LOG_DEBUG,
    LOG_INFO = FERRY_LOG_INFO,
    LOG_WARN = FERRY_LOG_WARN,
    LOG_ERROR = FERRY_LOG_ERROR
};

/* Optional context fields of a line; NULL fields are left out. */
struct log_ctx {
    const char *cid;      /* correlation id */
    const char *listener;
    const char *pool;
    const char *proxy;    /* proxy id/display, never with credentials */
    const char *exchange;
    int intercepted;      /* inside a CONNECT ferry intercepted: "intercepted":true */
    const char *scheme;   /* "https" when ferry originated TLS to the origin, else NULL */
    const char *ban;      /* access lines: why a ban was not retried, or NULL */
    unsigned ban_retries; /* access lines: tries made again because of a ban */
    const char *retry;    /* access lines: why each retry was made ("refused,503"), or NULL */
    const char *retry_stop; /* access lines: why a retry was not made, or NULL */
    const char *cache;    /* access lines: HIT, MISS, STALE, REVALIDATED, BYPASS, or NULL */
};

extern int log_level_min;
extern int log_access_on;

void log_init(int fd);
void log_flush(void);
/* Send event lines to events and access lines to access (NULL or "":
 * standard error; access defaults to the events file).  0, or -1 with
 * err, changing nothing. */
int log_set_files(const char *events, const char *access, const char **err);
/* SIGUSR1: open the files again by name (after logrotate moved them). */
void log_reopen(void);
/* A coded event line: fmt is printf-style and becomes "msg". */
void log_event(int level, const char *code, const struct log_ctx *ctx,
               const char *fmt, ...) __attribute__((format(printf, 4, 5)));
/* The access line of one finished request. */
void log_access(const struct log_ctx *ctx, const char *client, const char *method,
                const char *host, int port, const char *path, int status,
                unsigned long long bytes_in, unsigned long long bytes_out,
                double ms, int attempts, const char *code);

#endif
