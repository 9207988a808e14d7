/* console.c - `ferry console`: the client of the daemon's console socket.
 *
 * The daemon's console endpoint is HTTP/1.1 on a unix socket.  Each line
 * the user types goes out as one request,
 *
 *   POST /api/v1/console HTTP/1.1 / Content-Type: text/plain / the line
 *
 * and comes back as 2xx with what the line printed (text/plain), or as an
 * error status with a JSON body {"error":"FERRY-xxxx","message":"..."}.
 *
 * This is a separate short-lived process, not the daemon: plain blocking
 * I/O, one connection kept open for the whole session (reopened once when
 * the daemon closed it in between), every wait bounded by one deadline
 * per line (FERRY_CONSOLE_TIMEOUT seconds, default 10), every answer
 * bounded in size (64 MiB).
 *
 * On a terminal the line editor is libedit: history in ~/.ferry_history
 * (FERRY_HISTORY overrides, an empty value turns it off; 1000 entries),
 * TAB completes command names.  Otherwise stdin is read line by line.
 *
 * Exit status: 0 all answered, 1 the daemon answered an error, 2 usage
 * or no answer (cannot connect, timeout, connection lost, not HTTP). */
#include "console.h"

#include <ctype.h>
#include <errno.h>
#include <fcntl.h>
#include <histedit.h>
#include <locale.h>
#include <poll.h>
#include <pwd.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/time.h>
#include <sys/un.h>
#include <time.h>
#include <unistd.h>

#define DEFAULT_SOCKET "/tmp/ferry.sock"
#define DEFAULT_TIMEOUT 10.0             /* seconds per line: send, wait, read */
#define MAX_HEAD (16 * 1024)             /* response head (status line + fields) */
#define MAX_BODY ((size_t)64 << 20)      /* response body */
#define MAX_LINE ((size_t)1 << 20)       /* one console line sent */
#define MAX_CHUNK_LINE 1024              /* chunk-size line with extensions */
#define READ_STEP (64 * 1024)
#define HISTORY_SIZE 1000

/* Why a round trip did not produce an answer. */
enum io_rc {
    IO_OK = 0,
    IO_CONNECT = -1, /* connect failed: errno in client.err */
    IO_CLOSED = -2,  /* the daemon closed (or reset) the connection */
    IO_TIMEOUT = -3, /* the deadline passed */
    IO_PROTO = -4,   /* not an HTTP answer we understand: client.why */
    IO_TOOBIG = -5,  /* the answer is over MAX_BODY */
    IO_ERRNO = -6,   /* another socket error: errno in client.err */
    IO_INTR = -7     /* Ctrl-C in the interactive session */
};

/* Set by SIGINT in the interactive session: abandons the wait for an
 * answer.  While a line is typed, Ctrl-C is a key (cancel_line). */
static volatile sig_atomic_t interrupted;
static int cancelled;

static void on_sigint(int sig)
{
    (void)sig;
    interrupted = 1;
}

struct buf {
    char *p;
    size_t len, cap;
};

struct client {
    const char *path;
    int fd;
    double timeout;
    struct buf in; /* bytes read and not yet consumed */
    int err;
    const char *why;
};

struct answer {
    int status;
    struct buf body;
};

static const char *const commands[] = {
    "proxy.list", "proxy.health", "proxy.add", "proxy.remove", "proxy.enable",
    "proxy.disable", "pool.list", "pool.stats", "exchange.list", "reload",
    "stats", "help", "reset",
};
#define N_COMMANDS (sizeof(commands) / sizeof(commands[0]))

/* ---- buffers ---------------------------------------------------------- */

static int buf_reserve(struct buf *b, size_t extra)
{
    if (b->len + extra + 1 <= b->cap) {
        return 0;
    }
    size_t cap = b->cap ? b->cap : 256;
    while (cap < b->len + extra + 1) {
        cap *= 2;
    }
    char *p = realloc(b->p, cap);
    if (p == NULL) {
        return -1;
    }
    b->p = p;
    b->cap = cap;
    return 0;
}

static int buf_append(struct buf *b, const char *s, size_t n)
{
    if (buf_reserve(b, n) != 0) {
        return -1;
    }
    memcpy(b->p + b->len, s, n);
    b->len += n;
    b->p[b->len] = '\0';
    return 0;
}

static void buf_consume(struct buf *b, size_t n)
{
    memmove(b->p, b->p + n, b->len - n);
    b->len -= n;
}

static void buf_free(struct buf *b)
{
    free(b->p);
    b->p = NULL;
    b->len = b->cap = 0;
}

/* ---- the connection --------------------------------------------------- */

static double mono_now(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

static void client_close(struct client *c)
{
    if (c->fd >= 0) {
        close(c->fd);
        c->fd = -1;
    }
    c->in.len = 0;
}

static int client_connect(struct client *c)
{
    struct sockaddr_un sa;
    size_t n = strlen(c->path);
    memset(&sa, 0, sizeof(sa));
    sa.sun_family = AF_UNIX;
    if (n == 0 || n >= sizeof(sa.sun_path)) {
        c->err = n == 0 ? ENOENT : ENAMETOOLONG;
        return IO_CONNECT;
    }
    memcpy(sa.sun_path, c->path, n);
    int fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (fd < 0) {
        c->err = errno;
        return IO_CONNECT;
    }
    /* Bounds connect (a full backlog) and each send; reads use poll. */
    struct timeval tv;
    tv.tv_sec = (time_t)c->timeout;
    tv.tv_usec = (suseconds_t)((c->timeout - (double)tv.tv_sec) * 1e6);
    setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof(tv));
    setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof(tv));
    if (connect(fd, (struct sockaddr *)&sa, sizeof(sa)) != 0) {
        c->err = errno == EAGAIN ? ETIMEDOUT : errno;
        close(fd);
        return IO_CONNECT;
    }
    c->fd = fd;
    c->in.len = 0;
    return IO_OK;
}

/* A kept-alive connection the daemon has closed (or written to out of
 * turn) is no use for the next request. */
static int client_stale(const struct client *c)
{
    struct pollfd pfd = { .fd = c->fd, .events = POLLIN | POLLRDHUP };
    if (poll(&pfd, 1, 0) <= 0) {
        return 0;
    }
    return 1; /* readable, hung up or in error: nothing is due from it now */
}

static int send_all(struct client *c, const char *p, size_t n)
{
    while (n > 0) {
        if (interrupted) {
            return IO_INTR;
        }
        ssize_t k = send(c->fd, p, n, MSG_NOSIGNAL);
        if (k < 0) {
            if (errno == EINTR) {
                if (interrupted) {
                    return IO_INTR;
                }
                continue;
            }
            if (errno == EAGAIN || errno == EWOULDBLOCK) {
                return IO_TIMEOUT;
            }
            if (errno == EPIPE || errno == ECONNRESET || errno == ENOTCONN) {
                return IO_CLOSED;
            }
            c->err = errno;
            return IO_ERRNO;
        }
        p += k;
        n -= (size_t)k;
    }
    return IO_OK;
}

/* Read more bytes into c->in before the deadline; > 0 is the count. */
static int read_more(struct client *c, double deadline)
{
    if (buf_reserve(&c->in, READ_STEP) != 0) {
        c->err = ENOMEM;
        return IO_ERRNO;
    }
    for (;;) {
        double left = deadline - mono_now();
        if (interrupted) {
            return IO_INTR;
        }
        if (left <= 0) {
            return IO_TIMEOUT;
        }
        struct pollfd pfd = { .fd = c->fd, .events = POLLIN };
        int r = poll(&pfd, 1, (int)(left * 1000.0) + 1);
        if (r < 0) {
            if (errno == EINTR) {
                if (interrupted) {
                    return IO_INTR;
                }
                continue;
            }
            c->err = errno;
            return IO_ERRNO;
        }
        if (r == 0) {
            continue; /* the deadline check above ends it */
        }
        ssize_t k = recv(c->fd, c->in.p + c->in.len, READ_STEP, 0);
        if (k > 0) {
            c->in.len += (size_t)k;
            c->in.p[c->in.len] = '\0';
            return (int)k;
        }
        if (k == 0) {
            return IO_CLOSED;
        }
        if (errno == EINTR) {
            continue;
        }
        if (errno == EAGAIN || errno == EWOULDBLOCK) {
            return IO_TIMEOUT;
        }
        if (errno == ECONNRESET) {
            return IO_CLOSED;
        }
        c->err = errno;
        return IO_ERRNO;
    }
}

/* ---- the response ----------------------------------------------------- */

struct head {
    int status;
    int minor;
    int chunked;
    int close;
    int keep_alive;
    long long length; /* -1: none */
};

/* The end of the head in c->in (just past its empty line), or 0. */
static size_t head_end(const struct buf *in)
{
    size_t line = 0;
    for (size_t i = 0; i < in->len; i++) {
        if (in->p[i] != '\n') {
            continue;
        }
        size_t n = i - line;
        if (n == 0 || (n == 1 && in->p[line] == '\r')) {
            return i + 1;
        }
        line = i + 1;
    }
    return 0;
}

static int has_token(const char *v, size_t n, const char *token)
{
    size_t t = strlen(token);
    for (size_t i = 0; i + t <= n; i++) {
        if (strncasecmp(v + i, token, t) == 0) {
            return 1;
        }
    }
    return 0;
}

static int parse_head(struct client *c, const char *p, size_t n, struct head *h)
{
    memset(h, 0, sizeof(*h));
    h->length = -1;
    if (n < 12 || memcmp(p, "HTTP/1.", 7) != 0 || !isdigit((unsigned char)p[7]) || p[8] != ' ' ||
        !isdigit((unsigned char)p[9]) || !isdigit((unsigned char)p[10]) ||
        !isdigit((unsigned char)p[11])) {
        c->why = "not an HTTP/1.x status line";
        return IO_PROTO;
    }
    h->minor = p[7] - '0';
    h->status = (p[9] - '0') * 100 + (p[10] - '0') * 10 + (p[11] - '0');
    const char *end = p + n;
    const char *line = memchr(p, '\n', n);
    line = line ? line + 1 : end;
    while (line < end) {
        const char *eol = memchr(line, '\n', (size_t)(end - line));
        if (eol == NULL) {
            eol = end;
        }
        size_t ln = (size_t)(eol - line);
        if (ln > 0 && line[ln - 1] == '\r') {
            ln--;
        }
        const char *vend = line + ln;
        const char *colon = memchr(line, ':', ln);
        if (ln > 0 && colon == NULL) {
            c->why = "a header field without a colon";
            return IO_PROTO;
        }
        if (colon != NULL) {
            size_t name = (size_t)(colon - line);
            const char *v = colon + 1;
            while (v < vend && (*v == ' ' || *v == '\t')) {
                v++;
            }
            size_t vn = (size_t)(vend - v);
            while (vn > 0 && (v[vn - 1] == ' ' || v[vn - 1] == '\t')) {
                vn--;
            }
            if (name == 14 && strncasecmp(line, "Content-Length", 14) == 0) {
                long long len = 0;
                if (vn == 0) {
                    c->why = "an empty Content-Length";
                    return IO_PROTO;
                }
                for (size_t i = 0; i < vn; i++) {
                    if (!isdigit((unsigned char)v[i])) {
                        c->why = "a malformed Content-Length";
                        return IO_PROTO;
                    }
                    len = len * 10 + (v[i] - '0');
                    if (len > (long long)MAX_BODY) {
                        return IO_TOOBIG;
                    }
                }
                if (h->length >= 0 && h->length != len) {
                    c->why = "two different Content-Length fields";
                    return IO_PROTO;
                }
                h->length = len;
            } else if (name == 17 && strncasecmp(line, "Transfer-Encoding", 17) == 0) {
                h->chunked = has_token(v, vn, "chunked");
            } else if (name == 10 && strncasecmp(line, "Connection", 10) == 0) {
                h->close |= has_token(v, vn, "close");
                h->keep_alive |= has_token(v, vn, "keep-alive");
            }
        }
        line = eol + 1;
    }
    if (h->minor == 0 && !h->keep_alive) {
        h->close = 1;
    }
    return IO_OK;
}

/* Move what the body is made of from c->in to a->body, chunk by chunk. */
enum chunk_state { CH_SIZE, CH_DATA, CH_CRLF, CH_TRAILER, CH_DONE };

struct chunker {
    enum chunk_state state;
    size_t left;
};

static int chunked_feed(struct client *c, struct chunker *k, struct answer *a)
{
    struct buf *in = &c->in;
    for (;;) {
        switch (k->state) {
        case CH_SIZE:
        case CH_TRAILER: {
            const char *nl = memchr(in->p, '\n', in->len);
            if (nl == NULL) {
                if (in->len > (k->state == CH_SIZE ? MAX_CHUNK_LINE : MAX_HEAD)) {
                    c->why = "an overlong chunk line";
                    return IO_PROTO;
                }
                return 0;
            }
            size_t n = (size_t)(nl - in->p) + 1;
            if (k->state == CH_TRAILER) {
                int empty = n == 1 || (n == 2 && in->p[0] == '\r');
                buf_consume(in, n);
                if (empty) {
                    k->state = CH_DONE;
                }
                continue;
            }
            size_t size = 0, i = 0;
            for (; i < n && isxdigit((unsigned char)in->p[i]); i++) {
                int d = isdigit((unsigned char)in->p[i]) ? in->p[i] - '0'
                                                         : (tolower((unsigned char)in->p[i]) - 'a' + 10);
                size = size * 16 + (size_t)d;
                if (size > MAX_BODY) {
                    return IO_TOOBIG;
                }
            }
            if (i == 0 || (in->p[i] != ';' && in->p[i] != '\r' && in->p[i] != '\n' &&
                           in->p[i] != ' ' && in->p[i] != '\t')) {
                c->why = "a malformed chunk size";
                return IO_PROTO;
            }
            if (size > MAX_BODY - a->body.len) {
                return IO_TOOBIG;
            }
            buf_consume(in, n);
            k->left = size;
            k->state = size == 0 ? CH_TRAILER : CH_DATA;
            continue;
        }
        case CH_DATA: {
            size_t take = k->left < in->len ? k->left : in->len;
            if (take > 0 && buf_append(&a->body, in->p, take) != 0) {
                c->err = ENOMEM;
                return IO_ERRNO;
            }
            buf_consume(in, take);
            k->left -= take;
            if (k->left > 0) {
                return 0;
            }
            k->state = CH_CRLF;
            continue;
        }
        case CH_CRLF:
            if (in->len >= 1 && in->p[0] == '\n') {
                buf_consume(in, 1);
            } else if (in->len < 2) {
                return 0;
            } else if (in->p[0] == '\r' && in->p[1] == '\n') {
                buf_consume(in, 2);
            } else {
                c->why = "chunk data longer than its size";
                return IO_PROTO;
            }
            k->state = CH_SIZE;
            continue;
        case CH_DONE:
            return 1;
        }
    }
}

/* The daemon closed in the middle of an answer. */
static int cut_short(struct client *c, int rc)
{
    if (rc == IO_CLOSED) {
        c->why = "the answer was cut short";
        return IO_PROTO;
    }
    return rc;
}

/* Read one answer.  *got says whether any byte of it arrived: a
 * connection that closes before that may be retried. */
static int read_answer(struct client *c, struct answer *a, double deadline, int *got)
{
    struct head h;
    size_t hn;
    int rc;
    *got = c->in.len > 0;
    for (;;) {
        while ((hn = head_end(&c->in)) == 0) {
            if (c->in.len > MAX_HEAD) {
                c->why = "a response head over 16 KiB";
                return IO_PROTO;
            }
            rc = read_more(c, deadline);
            if (rc < 0) {
                return *got ? cut_short(c, rc) : rc;
            }
            *got = 1;
        }
        if (hn > MAX_HEAD) {
            c->why = "a response head over 16 KiB";
            return IO_PROTO;
        }
        rc = parse_head(c, c->in.p, hn, &h);
        buf_consume(&c->in, hn);
        if (rc != IO_OK) {
            return rc;
        }
        if (h.status >= 200) {
            break;
        }
        /* 1xx: an interim answer, the real one follows */
    }
    a->status = h.status;
    a->body.len = 0;
    if (buf_reserve(&a->body, 0) != 0) {
        c->err = ENOMEM;
        return IO_ERRNO;
    }
    a->body.p[0] = '\0';
    if (h.status == 204 || h.status == 304) {
        /* no body */
    } else if (h.chunked) {
        struct chunker k = { CH_SIZE, 0 };
        while ((rc = chunked_feed(c, &k, a)) == 0) {
            rc = read_more(c, deadline);
            if (rc < 0) {
                return cut_short(c, rc);
            }
        }
        if (rc < 0) {
            return rc;
        }
    } else if (h.length >= 0) {
        size_t want = (size_t)h.length;
        if (buf_reserve(&a->body, want) != 0) {
            c->err = ENOMEM;
            return IO_ERRNO;
        }
        for (;;) {
            size_t take = want - a->body.len < c->in.len ? want - a->body.len : c->in.len;
            buf_append(&a->body, c->in.p, take); /* reserved above */
            buf_consume(&c->in, take);
            if (a->body.len == want) {
                break;
            }
            rc = read_more(c, deadline);
            if (rc < 0) {
                return cut_short(c, rc);
            }
        }
    } else {
        /* no framing: the body runs to the end of the connection */
        h.close = 1;
        for (;;) {
            if (a->body.len + c->in.len > MAX_BODY) {
                return IO_TOOBIG;
            }
            if (buf_append(&a->body, c->in.p, c->in.len) != 0) {
                c->err = ENOMEM;
                return IO_ERRNO;
            }
            c->in.len = 0;
            rc = read_more(c, deadline);
            if (rc == IO_CLOSED) {
                break;
            }
            if (rc < 0) {
                return rc;
            }
        }
    }
    /* Bytes past the answer were never asked for: start afresh. */
    if (h.close || c->in.len > 0) {
        client_close(c);
    }
    return IO_OK;
}

/* One line out, one answer back; a kept-alive connection the daemon
 * closed in between is reopened once. */
static int roundtrip(struct client *c, const char *line, size_t n, struct answer *a)
{
    char head[256];
    int hn = snprintf(head, sizeof(head),
                      "POST /api/v1/console HTTP/1.1\r\nHost: ferry\r\n"
                      "Content-Type: text/plain\r\nContent-Length: %zu\r\n\r\n",
                      n);
    struct buf req = { 0 };
    if (buf_append(&req, head, (size_t)hn) != 0 || buf_append(&req, line, n) != 0) {
        buf_free(&req);
        c->err = ENOMEM;
        return IO_ERRNO;
    }
    int rc = IO_CLOSED;
    for (int attempt = 0; attempt < 2; attempt++) {
        if (c->fd >= 0 && client_stale(c)) {
            client_close(c);
        }
        int reused = c->fd >= 0;
        if (!reused && (rc = client_connect(c)) != IO_OK) {
            break;
        }
        double deadline = mono_now() + c->timeout;
        int got = 0;
        rc = send_all(c, req.p, req.len);
        if (rc == IO_OK) {
            rc = read_answer(c, a, deadline, &got);
        }
        if (rc == IO_OK) {
            break;
        }
        client_close(c);
        if (!(reused && !got && rc == IO_CLOSED)) {
            break;
        }
    }
    buf_free(&req);
    return rc;
}

/* ---- answers ---------------------------------------------------------- */

static void put_utf8(struct buf *b, unsigned cp)
{
    char s[4];
    size_t n;
    if (cp < 0x80) {
        s[0] = (char)cp;
        n = 1;
    } else if (cp < 0x800) {
        s[0] = (char)(0xC0 | (cp >> 6));
        s[1] = (char)(0x80 | (cp & 0x3F));
        n = 2;
    } else if (cp < 0x10000) {
        s[0] = (char)(0xE0 | (cp >> 12));
        s[1] = (char)(0x80 | ((cp >> 6) & 0x3F));
        s[2] = (char)(0x80 | (cp & 0x3F));
        n = 3;
    } else {
        s[0] = (char)(0xF0 | (cp >> 18));
        s[1] = (char)(0x80 | ((cp >> 12) & 0x3F));
        s[2] = (char)(0x80 | ((cp >> 6) & 0x3F));
        s[3] = (char)(0x80 | (cp & 0x3F));
        n = 4;
    }
    buf_append(b, s, n);
}

static int hex4(const char *p, unsigned *out)
{
    unsigned v = 0;
    for (int i = 0; i < 4; i++) {
        if (!isxdigit((unsigned char)p[i])) {
            return -1;
        }
        v = v * 16 + (unsigned)(isdigit((unsigned char)p[i]) ? p[i] - '0'
                                                             : tolower((unsigned char)p[i]) - 'a' + 10);
    }
    *out = v;
    return 0;
}

/* The string value of a top-level "key" of a JSON object, decoded into
 * out; -1 when there is none.  Enough for the daemon's error bodies. */
static int json_string_field(const char *json, const char *key, struct buf *out)
{
    size_t kn = strlen(key);
    for (const char *p = strchr(json, '"'); p != NULL; p = strchr(p + 1, '"')) {
        if (strncmp(p + 1, key, kn) != 0 || p[1 + kn] != '"') {
            continue;
        }
        const char *before = p;
        while (before > json && isspace((unsigned char)before[-1])) {
            before--;
        }
        if (before == json || (before[-1] != '{' && before[-1] != ',')) {
            continue;
        }
        const char *v = p + kn + 2;
        while (isspace((unsigned char)*v)) {
            v++;
        }
        if (*v++ != ':') {
            continue;
        }
        while (isspace((unsigned char)*v)) {
            v++;
        }
        if (*v++ != '"') {
            return -1;
        }
        out->len = 0;
        for (;;) {
            char ch = *v++;
            if (ch == '\0') {
                return -1;
            }
            if (ch == '"') {
                return buf_append(out, "", 0);
            }
            if (ch != '\\') {
                buf_append(out, &ch, 1);
                continue;
            }
            unsigned cp;
            switch (*v++) {
            case '"': ch = '"'; break;
            case '\\': ch = '\\'; break;
            case '/': ch = '/'; break;
            case 'b': ch = '\b'; break;
            case 'f': ch = '\f'; break;
            case 'n': ch = '\n'; break;
            case 'r': ch = '\r'; break;
            case 't': ch = '\t'; break;
            case 'u':
                if (hex4(v, &cp) != 0) {
                    return -1;
                }
                v += 4;
                if (cp >= 0xD800 && cp < 0xDC00 && v[0] == '\\' && v[1] == 'u') {
                    unsigned lo;
                    if (hex4(v + 2, &lo) == 0 && lo >= 0xDC00 && lo < 0xE000) {
                        cp = 0x10000 + ((cp - 0xD800) << 10) + (lo - 0xDC00);
                        v += 6;
                    }
                }
                put_utf8(out, cp);
                continue;
            default:
                return -1;
            }
            buf_append(out, &ch, 1);
        }
    }
    return -1;
}

/* Print an answer: the body to stdout, or the error to stderr. */
static int show_answer(const struct answer *a)
{
    const struct buf *b = &a->body;
    if (a->status >= 200 && a->status < 300) {
        if (b->len > 0) {
            fwrite(b->p, 1, b->len, stdout);
            if (b->p[b->len - 1] != '\n') {
                fputc('\n', stdout);
            }
        }
        fflush(stdout);
        return CONSOLE_EXIT_OK;
    }
    struct buf msg = { 0 };
    fflush(stdout);
    if (b->len > 0 && json_string_field(b->p, "message", &msg) == 0) {
        fprintf(stderr, "error: %s\n", msg.p);
    } else {
        size_t n = b->len;
        while (n > 0 && isspace((unsigned char)b->p[n - 1])) {
            n--;
        }
        fprintf(stderr, "error: the daemon answered %d%s%.*s\n", a->status, n > 0 ? ": " : "",
                (int)(n > 512 ? 512 : n), n > 0 ? b->p : "");
    }
    buf_free(&msg);
    return CONSOLE_EXIT_ERROR;
}

static void show_failure(const struct client *c, int rc)
{
    switch (rc) {
    case IO_CONNECT:
        fprintf(stderr, "ferry console: cannot connect to %s: %s\n", c->path, strerror(c->err));
        break;
    case IO_CLOSED:
        fprintf(stderr, "ferry console: %s: the daemon closed the connection without an answer\n",
                c->path);
        break;
    case IO_TIMEOUT:
        fprintf(stderr, "ferry console: %s: no answer within %g s\n", c->path, c->timeout);
        break;
    case IO_PROTO:
        fprintf(stderr, "ferry console: %s: not an answer ferry understands (%s)\n", c->path,
                c->why ? c->why : "malformed");
        break;
    case IO_TOOBIG:
        fprintf(stderr, "ferry console: %s: the answer is larger than %zu MiB\n", c->path,
                MAX_BODY >> 20);
        break;
    case IO_INTR:
        fprintf(stderr, "interrupted: the answer is dropped (the line may have run)\n");
        break;
    default:
        fprintf(stderr, "ferry console: %s: %s\n", c->path, strerror(c->err));
        break;
    }
}

/* Send one line and print its answer; returns an exit status. */
static int eval_line(struct client *c, const char *line)
{
    size_t n = strlen(line);
    if (n > MAX_LINE) {
        fprintf(stderr, "error: the line is longer than %zu KiB\n", MAX_LINE >> 10);
        return CONSOLE_EXIT_ERROR;
    }
    struct answer a = { 0 };
    c->why = NULL;
    int rc = roundtrip(c, line, n, &a);
    int status;
    if (rc != IO_OK) {
        show_failure(c, rc);
        status = CONSOLE_EXIT_NOANSWER;
    } else {
        status = show_answer(&a);
    }
    buf_free(&a.body);
    return status;
}

/* ---- lines ------------------------------------------------------------ */

/* Trim in place; returns the start of the trimmed text. */
static char *trim(char *s)
{
    while (isspace((unsigned char)*s)) {
        s++;
    }
    size_t n = strlen(s);
    while (n > 0 && isspace((unsigned char)s[n - 1])) {
        s[--n] = '\0';
    }
    return s;
}

static int is_exit(const char *s)
{
    return strcmp(s, "exit") == 0 || strcmp(s, "quit") == 0 || strcmp(s, "exit()") == 0 ||
           strcmp(s, "quit()") == 0;
}

/* stdin is not a terminal: each line is evaluated, without prompts.  A
 * line the daemon refuses is reported and the next one runs; losing the
 * daemon ends it. */
static int run_lines(struct client *c, FILE *in)
{
    char *raw = NULL;
    size_t cap = 0;
    int worst = CONSOLE_EXIT_OK;
    while (getline(&raw, &cap, in) >= 0) {
        char *line = trim(raw);
        if (*line == '\0') {
            continue;
        }
        if (is_exit(line)) {
            break;
        }
        int st = eval_line(c, line);
        if (st > worst) {
            worst = st;
        }
        if (st == CONSOLE_EXIT_NOANSWER) {
            break;
        }
    }
    free(raw);
    return worst;
}

/* ---- the interactive session ------------------------------------------ */

static char *prompt(EditLine *el)
{
    static char text[] = "ferry> ";
    (void)el;
    return text;
}

static int is_word(int ch)
{
    return isalnum(ch) || ch == '_' || ch == '.';
}

/* TAB: complete the command name before the cursor; with several
 * candidates, extend to their common prefix or list them. */
static unsigned char complete(EditLine *el, int ch)
{
    (void)ch;
    const LineInfo *li = el_line(el);
    const char *start = li->cursor;
    while (start > li->buffer && is_word((unsigned char)start[-1])) {
        start--;
    }
    size_t len = (size_t)(li->cursor - start);
    const char *match[N_COMMANDS];
    size_t n = 0;
    for (size_t i = 0; i < N_COMMANDS; i++) {
        if (strncmp(commands[i], start, len) == 0) {
            match[n++] = commands[i];
        }
    }
    if (n == 0) {
        return CC_ERROR;
    }
    size_t common = strlen(match[0]);
    for (size_t i = 1; i < n; i++) {
        size_t j = 0;
        while (j < common && match[i][j] == match[0][j]) {
            j++;
        }
        common = j;
    }
    if (common > len) {
        char add[64];
        snprintf(add, sizeof(add), "%.*s", (int)(common - len), match[0] + len);
        return el_insertstr(el, add) == 0 ? CC_REFRESH : CC_ERROR;
    }
    if (n == 1) {
        return CC_NORM; /* already complete */
    }
    FILE *out = stdout;
    fputc('\n', out);
    for (size_t i = 0; i < n; i++) {
        fprintf(out, "%s%s", i ? "  " : "", match[i]);
    }
    fputc('\n', out);
    fflush(out);
    return CC_REDISPLAY;
}

/* Ctrl-C while typing: el_gets returns, the line is dropped. */
static unsigned char cancel_line(EditLine *el, int ch)
{
    (void)el;
    (void)ch;
    cancelled = 1;
    return CC_NEWLINE;
}

/* Ctrl-Z while typing: stop like a shell job (EL_SIGNAL restores the
 * terminal around it). */
static unsigned char suspend(EditLine *el, int ch)
{
    (void)el;
    (void)ch;
    raise(SIGTSTP);
    return CC_REDISPLAY;
}

/* The history file: FERRY_HISTORY (empty: none), else ~/.ferry_history. */
static char *history_path(void)
{
    const char *env = getenv("FERRY_HISTORY");
    if (env != NULL) {
        return *env ? strdup(env) : NULL;
    }
    const char *home = getenv("HOME");
    if (home == NULL || *home == '\0') {
        const struct passwd *pw = getpwuid(getuid());
        home = pw != NULL ? pw->pw_dir : NULL;
    }
    if (home == NULL || *home == '\0') {
        return NULL;
    }
    size_t n = strlen(home) + sizeof("/.ferry_history");
    char *p = malloc(n);
    if (p != NULL) {
        snprintf(p, n, "%s/.ferry_history", home);
    }
    return p;
}

/* Lines may hold credentials (proxy.add): the file is private. */
static void history_store(History *h, const char *path, int *warned)
{
    HistEvent ev;
    int fd = open(path, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
    FILE *f = fd >= 0 ? fdopen(fd, "w") : NULL;
    int ok = f != NULL && history(h, &ev, H_SAVE_FP, f) >= 0;
    if (f != NULL) {
        ok = (fclose(f) == 0) && ok;
    } else if (fd >= 0) {
        close(fd);
    }
    if (!ok && !*warned) {
        fprintf(stderr, "ferry console: cannot write the history to %s: %s\n", path,
                strerror(errno));
        *warned = 1;
    }
}

static int run_tty(struct client *c)
{
    HistEvent ev;
    int warned = 0;
    setlocale(LC_CTYPE, "");
    char *hpath = history_path();
    History *hist = history_init();
    if (hist == NULL) {
        fprintf(stderr, "ferry console: cannot start the line editor\n");
        free(hpath);
        return CONSOLE_EXIT_NOANSWER;
    }
    history(hist, &ev, H_SETSIZE, HISTORY_SIZE);
    history(hist, &ev, H_SETUNIQUE, 1);
    if (hpath != NULL) {
        history(hist, &ev, H_LOAD, hpath); /* a missing file is a first session */
    }
    EditLine *el = el_init("ferry", stdin, stdout, stderr);
    if (el == NULL) {
        fprintf(stderr, "ferry console: cannot start the line editor\n");
        history_end(hist);
        free(hpath);
        return CONSOLE_EXIT_NOANSWER;
    }
    /* Ctrl-C drops the answer being waited for (SIGINT; no SA_RESTART,
     * so the poll sees it) or the line being typed (a key: the editor's
     * terminal mode has no ISIG, Ctrl-Z is a key too), not the session. */
    struct sigaction sa;
    memset(&sa, 0, sizeof(sa));
    sa.sa_handler = on_sigint;
    sigemptyset(&sa.sa_mask);
    sigaction(SIGINT, &sa, NULL);
    el_set(el, EL_EDITOR, "emacs");
    el_set(el, EL_SIGNAL, 1); /* the terminal is restored on signals */
    el_set(el, EL_SETTY, "-d", "-isig", NULL);
    el_set(el, EL_PROMPT, prompt);
    el_set(el, EL_HIST, history, hist);
    el_set(el, EL_ADDFN, "ferry-complete", "Complete a ferry command name", complete);
    el_set(el, EL_BIND, "^I", "ferry-complete", NULL);
    el_set(el, EL_ADDFN, "ferry-cancel", "Drop the line being typed", cancel_line);
    el_set(el, EL_BIND, "^C", "ferry-cancel", NULL);
    el_set(el, EL_ADDFN, "ferry-suspend", "Suspend the console", suspend);
    el_set(el, EL_BIND, "^Z", "ferry-suspend", NULL);
    el_source(el, NULL); /* ~/.editrc, if any */
    printf("ferry console on %s; help() lists the commands, exit or Ctrl-D ends\n", c->path);
    fflush(stdout);
    for (;;) {
        int count = 0;
        cancelled = 0;
        const char *got = el_gets(el, &count);
        interrupted = 0;
        if (cancelled) {
            fputs("^C\n", stdout); /* a fresh prompt */
            continue;
        }
        if (got == NULL || count <= 0) {
            fputc('\n', stdout);
            break;
        }
        char *copy = strdup(got);
        if (copy == NULL) {
            break;
        }
        char *line = trim(copy);
        if (*line == '\0') {
            free(copy);
            continue;
        }
        if (is_exit(line)) {
            free(copy);
            break;
        }
        history(hist, &ev, H_ENTER, line);
        if (hpath != NULL) {
            history_store(hist, hpath, &warned);
        }
        eval_line(c, line); /* errors are printed; the session goes on */
        free(copy);
    }
    el_end(el);
    history_end(hist);
    free(hpath);
    return CONSOLE_EXIT_OK;
}

/* ---- the command ------------------------------------------------------ */

static void usage(FILE *out)
{
    fprintf(out,
            "usage: ferry console [-s SOCKET] [-e EXPR]...\n"
            "  -s, --socket SOCKET  the daemon's console socket (default: $FERRY_SOCKET,\n"
            "                       else " DEFAULT_SOCKET ")\n"
            "  -e, --eval EXPR      evaluate EXPR, print the answer and exit\n"
            "without -e: a REPL on a terminal, else one line of stdin at a time\n");
}

int console_main(int argc, char **argv)
{
    const char *path = NULL;
    const char **exprs = calloc((size_t)argc + 1, sizeof(*exprs));
    int n_exprs = 0;
    if (exprs == NULL) {
        fprintf(stderr, "ferry console: out of memory\n");
        return CONSOLE_EXIT_NOANSWER;
    }
    for (int i = 0; i < argc; i++) {
        const char *a = argv[i];
        int has_value = i + 1 < argc;
        if ((strcmp(a, "-s") == 0 || strcmp(a, "--socket") == 0) && has_value) {
            path = argv[++i];
        } else if ((strcmp(a, "-e") == 0 || strcmp(a, "--eval") == 0) && has_value) {
            exprs[n_exprs++] = argv[++i];
        } else if (strcmp(a, "-h") == 0 || strcmp(a, "--help") == 0) {
            usage(stdout);
            free(exprs);
            return CONSOLE_EXIT_OK;
        } else {
            int wants_value = strcmp(a, "-s") == 0 || strcmp(a, "--socket") == 0 ||
                              strcmp(a, "-e") == 0 || strcmp(a, "--eval") == 0;
            fprintf(stderr, "ferry console: %s \"%s\"\n",
                    wants_value ? "a value is missing after" :
                    a[0] == '-' ? "unknown option" : "unknown argument", a);
            usage(stderr);
            free(exprs);
            return CONSOLE_EXIT_NOANSWER;
        }
    }
    if (path == NULL) {
        path = getenv("FERRY_SOCKET");
    }
    if (path == NULL || *path == '\0') {
        path = DEFAULT_SOCKET;
    }
    struct client c = { .path = path, .fd = -1, .timeout = DEFAULT_TIMEOUT };
    const char *t = getenv("FERRY_CONSOLE_TIMEOUT");
    if (t != NULL && *t != '\0') {
        char *end;
        double v = strtod(t, &end);
        if (*end == '\0' && v > 0 && v <= 86400) {
            c.timeout = v;
        }
    }
    int rc = client_connect(&c);
    if (rc != IO_OK) {
        show_failure(&c, rc);
        free(exprs);
        return CONSOLE_EXIT_NOANSWER;
    }
    int status = CONSOLE_EXIT_OK;
    if (n_exprs > 0) {
        for (int i = 0; i < n_exprs && status != CONSOLE_EXIT_NOANSWER; i++) {
            int st = eval_line(&c, exprs[i]);
            if (st > status) {
                status = st;
            }
        }
    } else if (isatty(STDIN_FILENO)) {
        status = run_tty(&c);
    } else {
        status = run_lines(&c, stdin);
    }
    client_close(&c);
    buf_free(&c.in);
    free(exprs);
    return status;
}
