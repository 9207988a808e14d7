/* transport.h - how a leg's bytes cross its socket: plain, or TLS.
 *
 * Every read and write of a connection's sockets goes through its leg's
 * transport, so a connector or the relay never knows whether the bytes
 * are encrypted.  A leg with tr == NULL is plain.  Read and write keep
 * read(2)/write(2)'s contract (bytes; 0 from read: end of stream; -1
 * with errno, EAGAIN when the socket must become ready first), so the
 * callers written for plain sockets did not change shape.  A transport
 * that needs the other readiness than the one the caller waits for
 * (TLS: a read that must write, a write that must read) says so through
 * events(), from which conn_update_io derives watcher interest. */
#ifndef FERRY_TRANSPORT_H
#define FERRY_TRANSPORT_H

#include <stddef.h>
#include <sys/types.h>

struct buf;
struct leg;

enum tr_hs {
    TR_HS_DONE = 0,  /* the transport is ready for data */
    TR_HS_READ = 1,  /* wait until the socket is readable, then step again */
    TR_HS_WRITE = 2, /* wait until the socket is writable, then step again */
    TR_HS_FAIL = -1  /* failed: tr->error(leg) says why */
};

struct transport_ops {
    const char *name;
    ssize_t (*read)(struct leg *lg, void *p, size_t n);
    ssize_t (*write)(struct leg *lg, const void *p, size_t n);
    /* One non-blocking step of an explicit handshake (a client side). */
    enum tr_hs (*handshake)(struct leg *lg);
    /* No more bytes from us: close_notify for TLS, then SHUT_WR. */
    void (*shutdown)(struct leg *lg);
    /* Free the transport's state; the fd stays the caller's. */
    void (*free)(struct leg *lg);
    /* Socket events (EV_READ / EV_WRITE) that serve a wish to read
     * and/or write (the same bits). */
    int (*events)(const struct leg *lg, int want);
    /* Bytes already decrypted that no socket event will announce. */
    int (*pending)(const struct leg *lg);
    /* Why the last handshake or read failed, for logs ("" when unknown). */
    const char *(*error)(const struct leg *lg);
};

extern const struct transport_ops transport_plain;
extern const struct transport_ops transport_tls;
extern const struct transport_ops transport_tls_nest;

/* The leg's transport: tr, or plain when none is set. */
const struct transport_ops *leg_tr(const struct leg *lg);
/* 1 when the leg's bytes cross the socket as they are (splice may move them). */
int leg_plain(const struct leg *lg);
/* buf_read_fd / buf_write_fd through the leg's transport. */
ssize_t leg_read(struct leg *lg, struct buf *b);
/* leg_read taking at most max bytes (0: as many as fit). */
ssize_t leg_read_upto(struct leg *lg, struct buf *b, size_t max);
ssize_t leg_write(struct leg *lg, struct buf *b);
void leg_shutdown(struct leg *lg);
/* Free the transport state and go back to plain (the fd is not closed). */
void leg_tr_free(struct leg *lg);
int leg_events(const struct leg *lg, int want);
int leg_pending(const struct leg *lg);

/* transport_tls.c: contexts and per-leg setup. */
struct ssl_ctx_st;
/* A server context for a TLS listener (TLS 1.2+, ALPN http/1.1); NULL
 * and *err (static text, or a copy in errbuf) on failure. */
struct ssl_ctx_st *tls_server_ctx(const char *cert, const char *key, char *errbuf, size_t room);
/* A server context like tls_server_ctx's without a certificate: the
 * caller chooses one per connection (mint.c). */
struct ssl_ctx_st *tls_server_ctx_bare(char *errbuf, size_t room);
/* A client context for an https:// proxy: system store, or ca only. */
struct ssl_ctx_st *tls_client_ctx(int verify, const char *ca, char *errbuf, size_t room);
void tls_ctx_free(struct ssl_ctx_st *ctx);
/* The password callback of every PEM read: an encrypted key would make
 * OpenSSL ask on the terminal, so it is refused. */
int tls_no_password(char *buf, int size, int rwflag, void *u);
/* Put the leg on TLS: server side (the handshake runs inside the first
 * reads), or client side with SNI / name check (host: the name the
 * certificate must carry; an IP literal is checked as an address and
 * sent without SNI).  -1: out of memory. */
int tls_leg_accept(struct leg *lg, struct ssl_ctx_st *ctx);
int tls_leg_connect(struct leg *lg, struct ssl_ctx_st *ctx, const char *host, int verify);
/* transport_tls_nest.c: a second TLS session inside the leg's TLS (an
 * origin reached through an https:// proxy's tunnel).  The leg must be
 * on transport_tls; the nest takes that state over.  -1: out of memory. */
int tls_leg_connect_inner(struct leg *lg, struct ssl_ctx_st *ctx, const char *host, int verify);
/* 1 while the inner handshake has not finished; its failure kind. */
int tls_nest_handshaking(const struct leg *lg);
int tls_nest_fail(const struct leg *lg);
/* Free the BIO method (stop). */
void tls_nest_cleanup(void);
/* 1 while the leg's TLS handshake has not finished. */
int tls_leg_handshaking(const struct leg *lg);
/* 1 when the handshake failed because the peer sent plain HTTP. */
int tls_leg_saw_http(const struct leg *lg);
/* What kind of failure the leg's last TLS step had: */
enum tls_fail {
    TLS_FAIL_NONE = 0,
    TLS_FAIL_VERIFY,   /* the peer's certificate did not verify */
    TLS_FAIL_PROTOCOL, /* a TLS error or alert (not TLS, no common version...) */
    TLS_FAIL_IO        /* the socket failed or closed during TLS */
};
int tls_leg_fail(const struct leg *lg);
/* Why the leg's last TLS step failed ("" when it did not). */
const char *tls_leg_error(const struct leg *lg);
/* The leg's SSL object, NULL when the leg is not on TLS (mint.c sets
 * per-connection state and callbacks on it). */
struct ssl_st;
struct ssl_st *tls_leg_ssl(const struct leg *lg);
/* From a callback inside the handshake of a leg set up here: the reason
 * tls_leg_error will give, kept over what the error queue says (the
 * first reason set stays). */
void tls_ssl_fail(struct ssl_st *ssl, const char *why);

#endif
