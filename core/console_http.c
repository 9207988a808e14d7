/* console_http.c - `ferry console`: the HTTP/1.1 connection to the
 * daemon's console socket (a unix socket).  Each line goes out as one
 * request,
 *
 *   POST /api/v1/console HTTP/1.1 / Content-Type: text/plain / the line
 *
 * and the answer is read back whole: its status and its body, framed by
 * Content-Length, chunked, or running to the end of the connection.
 *
 * Plain blocking I/O in a short-lived process: one connection kept open
 * for the whole session (reopened once when the daemon closed it in
 * between), every wait bounded by one deadline per line (client.timeout),
 * every answer bounded in size (64 MiB), and Ctrl-C in the interactive
 * session (client_interrupted) abandons the wait.  What the answer means
 * and how it prints is console.c's business. */
#include "console_http.h"

#include <ctype.h>
#include <errno.h>
#include <poll.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/time.h>
#include <sys/un.h>
#include <time.h>
#include <unistd.h>

#define MAX_HEAD (16 * 1024)             /* response head (status line + fields) */
#define MAX_BODY ((size_t)64 << 20)      /* response body */
#define MAX_CHUNK_LINE 1024              /* chunk-size line with extensions */
#define READ_STEP (64 * 1024)

volatile sig_atomic_t client_interrupted;

/* ---- buffers ---------------------------------------------------------- */

static int cbuf_reserve(struct cbuf *b, size_t extra)
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

int cbuf_append(struct cbuf *b, const char *s, size_t n)
{
    if (cbuf_reserve(b, n) != 0) {
        return -1;
    }
    memcpy(b->p + b->len, s, n);
    b->len += n;
    b->p[b->len] = '\0';
    return 0;
}

static void cbuf_consume(struct cbuf *b, size_t n)
{
    memmove(b->p, b->p + n, b->len - n);
    b->len -= n;
}

void cbuf_free(struct cbuf *b)
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

void client_close(struct client *c)
{
    if (c->fd >= 0) {
        close(c->fd);
        c->fd = -1;
    }
    c->in.len = 0;
}

/* Whether uid may own the console we talk to: ourselves, or root. */
static int trusted_uid(uid_t uid)
{
    return uid == geteuid() || uid == 0;
}

/* The console socket evaluates whatever Lua we send and we print what
 * it answers, so it must be the daemon of this user: a socket someone
 * else owns (or may replace, being group/world-writable) could collect
 * the lines typed -- proxy credentials included -- or lie about the
 * state.  lstat first, so a symlink is judged as itself. */
static int socket_untrusted(struct client *c)
{
    struct stat st;
    if (lstat(c->path, &st) != 0) {
        return 0; /* connect reports the missing path in its words */
    }
    if (!S_ISSOCK(st.st_mode)) {
        snprintf(c->why_buf, sizeof(c->why_buf), "not a socket");
    } else if (!trusted_uid(st.st_uid)) {
        snprintf(c->why_buf, sizeof(c->why_buf),
                 "owned by uid %lu, not by this user (uid %lu) or root",
                 (unsigned long)st.st_uid, (unsigned long)geteuid());
    } else if (st.st_mode & (S_IWGRP | S_IWOTH)) {
        snprintf(c->why_buf, sizeof(c->why_buf),
                 "mode %04o lets other users write to it (ferry makes it 0600)",
                 (unsigned)(st.st_mode & 07777));
    } else {
        return 0;
    }
    c->why = c->why_buf;
    return 1;
}

/* After connect: the process that listens must run as us or as root
 * (the path may have been swapped between lstat and connect). */
static int peer_untrusted(struct client *c, int fd)
{
    struct ucred cred;
    socklen_t len = sizeof(cred);
    if (getsockopt(fd, SOL_SOCKET, SO_PEERCRED, &cred, &len) != 0) {
        snprintf(c->why_buf, sizeof(c->why_buf), "cannot tell who listens on it: %s",
                 strerror(errno));
    } else if (!trusted_uid(cred.uid)) {
        snprintf(c->why_buf, sizeof(c->why_buf),
                 "the process listening on it (pid %ld) runs as uid %lu, not as this user "
                 "(uid %lu) or root",
                 (long)cred.pid, (unsigned long)cred.uid, (unsigned long)geteuid());
    } else {
        return 0;
    }
    c->why = c->why_buf;
    return 1;
}

int client_connect(struct client *c)
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
    if (socket_untrusted(c)) {
        return IO_UNTRUSTED;
    }
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
    if (peer_untrusted(c, fd)) {
        close(fd);
        return IO_UNTRUSTED;
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
        if (client_interrupted) {
            return IO_INTR;
        }
        ssize_t k = send(c->fd, p, n, MSG_NOSIGNAL);
        if (k < 0) {
            if (errno == EINTR) {
                if (client_interrupted) {
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
    if (cbuf_reserve(&c->in, READ_STEP) != 0) {
        c->err = ENOMEM;
        return IO_ERRNO;
    }
    for (;;) {
        double left = deadline - mono_now();
        if (client_interrupted) {
            return IO_INTR;
        }
        if (left <= 0) {
            return IO_TIMEOUT;
        }
        struct pollfd pfd = { .fd = c->fd, .events = POLLIN };
        int r = poll(&pfd, 1, (int)(left * 1000.0) + 1);
        if (r < 0) {
            if (errno == EINTR) {
                if (client_interrupted) {
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
static size_t head_end(const struct cbuf *in)
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
    struct cbuf *in = &c->in;
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
                cbuf_consume(in, n);
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
            cbuf_consume(in, n);
            k->left = size;
            k->state = size == 0 ? CH_TRAILER : CH_DATA;
            continue;
        }
        case CH_DATA: {
            size_t take = k->left < in->len ? k->left : in->len;
            if (take > 0 && cbuf_append(&a->body, in->p, take) != 0) {
                c->err = ENOMEM;
                return IO_ERRNO;
            }
            cbuf_consume(in, take);
            k->left -= take;
            if (k->left > 0) {
                return 0;
            }
            k->state = CH_CRLF;
            continue;
        }
        case CH_CRLF:
            if (in->len >= 1 && in->p[0] == '\n') {
                cbuf_consume(in, 1);
            } else if (in->len < 2) {
                return 0;
            } else if (in->p[0] == '\r' && in->p[1] == '\n') {
                cbuf_consume(in, 2);
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
        cbuf_consume(&c->in, hn);
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
    if (cbuf_reserve(&a->body, 0) != 0) {
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
        if (cbuf_reserve(&a->body, want) != 0) {
            c->err = ENOMEM;
            return IO_ERRNO;
        }
        for (;;) {
            size_t take = want - a->body.len < c->in.len ? want - a->body.len : c->in.len;
            cbuf_append(&a->body, c->in.p, take); /* reserved above */
            cbuf_consume(&c->in, take);
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
            if (cbuf_append(&a->body, c->in.p, c->in.len) != 0) {
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
int client_roundtrip(struct client *c, const char *line, size_t n, struct answer *a)
{
    char head[256];
    int hn = snprintf(head, sizeof(head),
                      "POST /api/v1/console HTTP/1.1\r\nHost: ferry\r\n"
                      "Content-Type: text/plain\r\nContent-Length: %zu\r\n\r\n",
                      n);
    struct cbuf req = { 0 };
    if (cbuf_append(&req, head, (size_t)hn) != 0 || cbuf_append(&req, line, n) != 0) {
        cbuf_free(&req);
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
    cbuf_free(&req);
    return rc;
}

/* ---- failures --------------------------------------------------------- */

/* Why there is no answer, on stderr, in the words of `ferry console`. */
void client_report(const struct client *c, int rc)
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
    case IO_UNTRUSTED:
        fprintf(stderr, "ferry console: refusing %s: %s\n", c->path, c->why);
        break;
    case IO_INTR:
        fprintf(stderr, "interrupted: the answer is dropped (the line may have run)\n");
        break;
    default:
        fprintf(stderr, "ferry console: %s: %s\n", c->path, strerror(c->err));
        break;
    }
}
