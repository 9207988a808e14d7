/* console_http.h - private to `ferry console`: one HTTP/1.1 connection to
 * the daemon's console socket (console_http.c), used by the REPL and the
 * command (console.c).  Not part of the daemon. */
#ifndef FERRY_CONSOLE_HTTP_H
#define FERRY_CONSOLE_HTTP_H

#include <signal.h>
#include <stddef.h>

/* Why a round trip did not produce an answer. */
enum io_rc {
    IO_OK = 0,
    IO_CONNECT = -1, /* connect failed: errno in client.err */
    IO_CLOSED = -2,  /* the daemon closed (or reset) the connection */
    IO_TIMEOUT = -3, /* the deadline passed */
    IO_PROTO = -4,   /* not an HTTP answer we understand: client.why */
    IO_TOOBIG = -5,  /* the answer is over MAX_BODY */
    IO_ERRNO = -6,   /* another socket error: errno in client.err */
    IO_INTR = -7,    /* Ctrl-C in the interactive session */
    IO_UNTRUSTED = -8 /* the socket is not the daemon's of this user: client.why */
};

/* A growable byte buffer, always NUL-terminated once allocated (not the
 * daemon's bounded struct buf of buf.h). */
struct cbuf {
    char *p;
    size_t len, cap;
};

/* The session's connection to the daemon. */
struct client {
    const char *path;  /* ro: the console socket */
    int fd;            /* private: -1 while not connected */
    double timeout;    /* ro: seconds per line: send, wait, read */
    struct cbuf in;    /* private: bytes read and not yet consumed */
    int err;           /* ro: errno of IO_CONNECT and IO_ERRNO */
    const char *why;   /* ro: what IO_PROTO or IO_UNTRUSTED found; reset per line */
    char why_buf[160]; /* private: room for an IO_UNTRUSTED reason */
};

/* One answer of the daemon: its status and its body (de-chunked). */
struct answer {
    int status;
    struct cbuf body;
};

/* Set by SIGINT in the interactive session: abandons the wait for an
 * answer (a send or a read in progress returns IO_INTR). */
extern volatile sig_atomic_t client_interrupted;

int cbuf_append(struct cbuf *b, const char *s, size_t n);
void cbuf_free(struct cbuf *b);

/* Returns IO_OK, IO_CONNECT (errno in c->err), or IO_UNTRUSTED (c->why)
 * when the socket or the process behind it belongs to another user, or
 * the socket is writable by group or others. */
int client_connect(struct client *c);
void client_close(struct client *c);

/* One line out, one answer back into a (IO_OK), else an enum io_rc; a
 * kept-alive connection the daemon closed in between is reopened once. */
int client_roundtrip(struct client *c, const char *line, size_t n, struct answer *a);

/* Say on stderr why a round trip (or the connect) returned rc. */
void client_report(const struct client *c, int rc);

#endif
