/* log.c - structured log lines into a buffer that the loop flushes.
 *
 * Lines are gathered in memory and written once per loop iteration
 * (log_flush from an ev_prepare watcher), so an access line per request
 * does not cost a write(2) per request.  When the buffer fills, it is
 * flushed at once; the write may block briefly on a slow terminal,
 * which is the usual trade-off every buffered logger makes. */
#include "log.h"

#include <errno.h>
#include <fcntl.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/time.h>
#include <time.h>
#include <unistd.h>

#define LOG_BUF_SIZE 65536
#define LOG_LINE_MAX 4096

int log_level_min = LOG_INFO;
int log_access_on = 1;

/* A destination of lines: a file by name (reopened on SIGUSR1) or
 * standard error, with its own buffer. */
struct sink {
    int fd;                   /* private: 2 = standard error */
    char *path;               /* ro: NULL for standard error */
    char buf[LOG_BUF_SIZE];   /* private */
    size_t used;              /* private */
};

static struct sink events_sink = { 2, NULL, { 0 }, 0 };
static struct sink access_sink = { 2, NULL, { 0 }, 0 };
static int access_separate;   /* access lines go to access_sink */

static const char *level_names[] = { "debug", "info", "warn", "error" };

void log_init(int fd)
{
    events_sink.fd = fd;
}

static void sink_flush(struct sink *k)
{
    size_t off = 0;
    while (off < k->used) {
        ssize_t n = write(k->fd, k->buf + off, k->used - off);
        if (n == -1) {
            if (errno == EINTR) {
                continue;
            }
            break; /* a broken log fd must not stop the proxy */
        }
        off += (size_t)n;
    }
    k->used = 0;
}

void log_flush(void)
{
    sink_flush(&events_sink);
    sink_flush(&access_sink);
}

static int open_log(const char *path, const char **err)
{
    int fd = open(path, O_WRONLY | O_APPEND | O_CREAT | O_CLOEXEC, 0640);
    if (fd == -1) {
        *err = strerror(errno);
    }
    return fd;
}

/* Point k at path (NULL: standard error), flushing what it holds. */
static void sink_set(struct sink *k, int fd, const char *path)
{
    sink_flush(k);
    if (k->fd > 2) {
        close(k->fd);
    }
    free(k->path);
    k->fd = fd;
    k->path = path != NULL ? strdup(path) : NULL;
}

static int same_path(const char *a, const char *b)
{
    return (a == NULL && b == NULL) || (a != NULL && b != NULL && strcmp(a, b) == 0);
}

int log_set_files(const char *events, const char *access, const char **err)
{
    events = events != NULL && *events != '\0' ? events : NULL;
    access = access != NULL && *access != '\0' ? access : NULL;
    int efd = 2, afd = 2;
    if (events != NULL && !same_path(events, events_sink.path) &&
        (efd = open_log(events, err)) == -1) {
        return -1;
    }
    if (access != NULL && !same_path(access, events) && !same_path(access, access_sink.path) &&
        (afd = open_log(access, err)) == -1) {
        if (efd > 2) {
            close(efd);
        }
        return -1;
    }
    if (!same_path(events, events_sink.path)) {
        sink_set(&events_sink, efd, events);
    }
    access_separate = access != NULL && !same_path(access, events);
    if (!access_separate) {
        sink_set(&access_sink, 2, NULL);
    } else if (!same_path(access, access_sink.path)) {
        sink_set(&access_sink, afd, access);
    }
    return 0;
}

static void sink_reopen(struct sink *k)
{
    if (k->path == NULL) {
        return;
    }
    const char *err = NULL;
    int fd = open_log(k->path, &err);
    if (fd == -1) {
        return; /* keep writing to the old file rather than losing lines */
    }
    sink_flush(k);
    close(k->fd);
    k->fd = fd;
}

void log_reopen(void)
{
    sink_reopen(&events_sink);
    sink_reopen(&access_sink);
}

/* Append s as a JSON string body (no quotes), escaping as needed. */
static size_t json_escape(char *out, size_t room, const char *s)
{
    static const char hex[] = "0123456789abcdef";
    size_t o = 0;
    for (; *s != '\0' && o + 7 < room; s++) {
        unsigned char ch = (unsigned char)*s;
        if (ch == '"' || ch == '\\') {
            out[o++] = '\\';
            out[o++] = (char)ch;
        } else if (ch < 0x20 || ch == 0x7f) {
            out[o++] = '\\';
            out[o++] = 'u';
            out[o++] = '0';
            out[o++] = '0';
            out[o++] = hex[ch >> 4];
            out[o++] = hex[ch & 15];
        } else {
            out[o++] = (char)ch;
        }
    }
    return o;
}

struct line {
    char b[LOG_LINE_MAX];
    size_t n;
};

static void put_raw(struct line *l, const char *s)
{
    size_t len = strlen(s);
    if (l->n + len < sizeof(l->b)) {
        memcpy(l->b + l->n, s, len);
        l->n += len;
    }
}

static void put_str(struct line *l, const char *key, const char *val)
{
    if (val == NULL) {
        return;
    }
    /* Room for the key, its quotes, at least one escaped character and
     * the closing quote and brace; a field that does not fit is left out. */
    if (l->n + strlen(key) + 16 >= sizeof(l->b)) {
        return;
    }
    put_raw(l, ",\"");
    put_raw(l, key);
    put_raw(l, "\":\"");
    l->n += json_escape(l->b + l->n, sizeof(l->b) - l->n - 4, val);
    put_raw(l, "\"");
}

static void put_num(struct line *l, const char *key, double v, int decimals)
{
    char tmp[64];
    snprintf(tmp, sizeof(tmp), ",\"%s\":%.*f", key, decimals, v);
    put_raw(l, tmp);
}

static void line_start(struct line *l, int level, const char *code)
{
    struct timeval tv;
    struct tm tm;
    gettimeofday(&tv, NULL);
    gmtime_r(&tv.tv_sec, &tm);
    l->n = (size_t)snprintf(l->b, sizeof(l->b),
                            "{\"time\":\"%04d-%02d-%02dT%02d:%02d:%02d.%03ldZ\","
                            "\"level\":\"%s\"",
                            tm.tm_year + 1900, tm.tm_mon + 1, tm.tm_mday, tm.tm_hour,
                            tm.tm_min, tm.tm_sec, (long)(tv.tv_usec / 1000),
                            level_names[level & 3]);
    put_str(l, "code", code);
}

static void line_ctx(struct line *l, const struct log_ctx *ctx)
{
    if (ctx == NULL) {
        return;
    }
    put_str(l, "cid", ctx->cid);
    put_str(l, "listener", ctx->listener);
    put_str(l, "pool", ctx->pool);
    put_str(l, "exchange", ctx->exchange);
    put_str(l, "proxy", ctx->proxy);
    if (ctx->intercepted) {
        put_raw(l, ",\"intercepted\":true");
    }
    put_str(l, "scheme", ctx->scheme);
    if (ctx->ban_retries > 0) {
        put_num(l, "ban_retries", ctx->ban_retries, 0);
    }
    put_str(l, "ban", ctx->ban);
    put_str(l, "retry", ctx->retry);
    put_str(l, "retry_stop", ctx->retry_stop);
    put_str(l, "cache", ctx->cache);
}

static void line_end(struct line *l, struct sink *k)
{
    if (l->n + 2 > sizeof(l->b)) {
        l->n = sizeof(l->b) - 2; /* truncated: still one valid-looking line */
    }
    l->b[l->n++] = '}';
    l->b[l->n++] = '\n';
    if (k->used + l->n > sizeof(k->buf)) {
        sink_flush(k);
    }
    memcpy(k->buf + k->used, l->b, l->n);
    k->used += l->n;
}

void log_event(int level, const char *code, const struct log_ctx *ctx, const char *fmt, ...)
{
    if (level < log_level_min) {
        return;
    }
    struct line l;
    char msg[1024];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof(msg), fmt, ap);
    va_end(ap);
    line_start(&l, level, code);
    put_str(&l, "msg", msg);
    line_ctx(&l, ctx);
    line_end(&l, &events_sink);
    if (level >= LOG_WARN) {
        log_flush(); /* warnings must not wait behind a busy loop */
    }
}

void log_access(const struct log_ctx *ctx, const char *client, const char *method,
                const char *host, int port, const char *path, int status,
                unsigned long long bytes_in, unsigned long long bytes_out,
                double ms, int attempts, const char *code)
{
    if (!log_access_on || LOG_INFO < log_level_min) {
        return;
    }
    struct line l;
    line_start(&l, LOG_INFO, code != NULL ? code : "FERRY-0200");
    put_str(&l, "msg", "access");
    line_ctx(&l, ctx);
    put_str(&l, "client", client);
    put_str(&l, "method", method);
    put_str(&l, "host", host);
    put_num(&l, "port", port, 0);
    put_str(&l, "path", path);
    put_num(&l, "status", status, 0);
    put_num(&l, "bytes_in", (double)bytes_in, 0);
    put_num(&l, "bytes_out", (double)bytes_out, 0);
    put_num(&l, "ms", ms, 3);
    put_num(&l, "attempts", attempts, 0);
    line_end(&l, access_separate ? &access_sink : &events_sink);
}
