/* transport_tls.c - TLS over a leg's socket with OpenSSL, never blocking.
 *
 * The SSL object reads and writes the non-blocking socket itself (a
 * socket BIO that does not own the fd).  A server leg (a TLS listener's
 * client) runs its handshake inside its first reads: the head timeout
 * bounds it like a slow request head.  A client leg (an https:// proxy)
 * steps it explicitly under the upstream watcher (conn_upstream.c).
 *
 * OpenSSL may want the other readiness than the one the caller waits
 * for: a read that must write first, a write that must read.  Each
 * remembers that in one bit until its next call, and events() turns a
 * wish to read or write into the socket events that serve it. */
#include "transport.h"
#include "conn.h"

#include <errno.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>

#include <arpa/inet.h>
#include <openssl/err.h>
#include <openssl/ssl.h>
#include <openssl/x509v3.h>

struct tls_leg {
    SSL *ssl;
    unsigned read_wants_write:1;
    unsigned write_wants_read:1;
    unsigned starved:1;          /* the last read wanted socket bytes: what OpenSSL
                                  * holds is a partial record (tls_pending) */
    unsigned plain_http:1;       /* the peer spoke plain HTTP to us */
    unsigned why_set:1;          /* why came from a callback (tls_ssl_fail): keep it */
    unsigned fail:2;             /* enum tls_fail of the last failure */
    char why[160];               /* the last failure, for logs */
};

/* The text of the OpenSSL error queue's last entry (and a failed
 * certificate check's reason, which is more useful) into t->why. */
static void note_error(struct tls_leg *t, int err)
{
    long vr = SSL_get_verify_result(t->ssl);
    unsigned long e = ERR_peek_last_error();
    t->fail = TLS_FAIL_PROTOCOL;
    if (t->why_set) {
        /* A callback of ours failed the handshake and said why (mint.c). */
    } else if (vr != X509_V_OK) {
        t->fail = TLS_FAIL_VERIFY;
        snprintf(t->why, sizeof(t->why), "certificate verify failed: %s",
                 X509_verify_cert_error_string(vr));
    } else if (e != 0) {
        const char *r = ERR_reason_error_string(e);
        int reason = ERR_GET_REASON(e);
        t->plain_http = reason == SSL_R_HTTP_REQUEST || reason == SSL_R_HTTPS_PROXY_REQUEST;
        snprintf(t->why, sizeof(t->why), "%s", r != NULL ? r : "TLS error");
    } else if (err == SSL_ERROR_SYSCALL) {
        t->fail = TLS_FAIL_IO;
        snprintf(t->why, sizeof(t->why), "%s", errno != 0 ? strerror(errno)
                                                        : "connection closed during TLS");
    } else {
        snprintf(t->why, sizeof(t->why), "TLS error %d", err);
    }
    ERR_clear_error();
}

static int clamp(size_t n)
{
    return n > INT_MAX ? INT_MAX : (int)n;
}

static ssize_t tls_read(struct leg *lg, void *p, size_t n)
{
    struct tls_leg *t = lg->tls;
    ERR_clear_error();
    int r = SSL_read(t->ssl, p, clamp(n));
    t->read_wants_write = 0;
    t->starved = 0;
    if (r > 0) {
        return r;
    }
    int err = SSL_get_error(t->ssl, r);
    switch (err) {
    case SSL_ERROR_WANT_READ:
        t->starved = 1;
        errno = EAGAIN;
        return -1;
    case SSL_ERROR_WANT_WRITE:
        t->read_wants_write = 1;
        errno = EAGAIN;
        return -1;
    case SSL_ERROR_ZERO_RETURN:
        return 0; /* close_notify, or a bare FIN (SSL_OP_IGNORE_UNEXPECTED_EOF) */
    default:
        note_error(t, err);
        errno = ECONNRESET;
        return -1;
    }
}

static ssize_t tls_write(struct leg *lg, const void *p, size_t n)
{
    struct tls_leg *t = lg->tls;
    ERR_clear_error();
    int r = SSL_write(t->ssl, p, clamp(n));
    t->write_wants_read = 0;
    t->starved = 0; /* a write may read records (a key update) */
    if (r > 0) {
        return r;
    }
    int err = SSL_get_error(t->ssl, r);
    if (err == SSL_ERROR_WANT_WRITE) {
        errno = EAGAIN;
        return -1;
    }
    if (err == SSL_ERROR_WANT_READ) {
        t->write_wants_read = 1;
        errno = EAGAIN;
        return -1;
    }
    note_error(t, err);
    errno = EPIPE;
    return -1;
}

static enum tr_hs tls_handshake(struct leg *lg)
{
    struct tls_leg *t = lg->tls;
    ERR_clear_error();
    int r = SSL_do_handshake(t->ssl);
    t->starved = 0;
    if (r == 1) {
        return TR_HS_DONE;
    }
    int err = SSL_get_error(t->ssl, r);
    if (err == SSL_ERROR_WANT_READ) {
        return TR_HS_READ;
    }
    if (err == SSL_ERROR_WANT_WRITE) {
        return TR_HS_WRITE;
    }
    note_error(t, err);
    return TR_HS_FAIL;
}

static void tls_shutdown(struct leg *lg)
{
    struct tls_leg *t = lg->tls;
    if (SSL_is_init_finished(t->ssl)) {
        /* close_notify; a full socket loses it, which peers tolerate
         * (they see a bare FIN, as from most HTTPS stacks). */
        ERR_clear_error();
        (void)SSL_shutdown(t->ssl);
        ERR_clear_error();
    }
    shutdown(lg->fd, SHUT_WR);
}

static void tls_free(struct leg *lg)
{
    struct tls_leg *t = lg->tls;
    if (t != NULL) {
        SSL_free(t->ssl);
        free(t);
    }
}

static int tls_events(const struct leg *lg, int want)
{
    const struct tls_leg *t = lg->tls;
    if (want == 0) {
        return 0;
    }
    if (!SSL_is_init_finished(t->ssl) && SSL_want(t->ssl) != SSL_NOTHING) {
        /* A handshake under way waits for what OpenSSL last asked for. */
        return SSL_want(t->ssl) == SSL_WRITING ? EV_WRITE : EV_READ;
    }
    int ev = 0;
    if (want & EV_READ) {
        ev |= t->read_wants_write ? EV_WRITE : EV_READ;
    }
    if (want & EV_WRITE) {
        ev |= t->write_wants_read ? EV_READ : EV_WRITE;
    }
    return ev;
}

/* Bytes OpenSSL holds that no socket event will announce.  With read
 * ahead, SSL_pending misses whole records read but not yet decrypted;
 * SSL_has_pending counts them, and a partial record too: after a read
 * that starved (wanted the socket), what it holds waits for more bytes,
 * which a socket event will announce (reporting it would spin). */
static int tls_pending(const struct leg *lg)
{
    const struct tls_leg *t = lg->tls;
    return SSL_pending(t->ssl) > 0 || (!t->starved && SSL_has_pending(t->ssl));
}

static const char *tls_error(const struct leg *lg)
{
    const struct tls_leg *t = lg->tls;
    return t != NULL ? t->why : "";
}

const struct transport_ops transport_tls = {
    "tls", tls_read, tls_write, tls_handshake, tls_shutdown, tls_free,
    tls_events, tls_pending, tls_error,
};

int tls_leg_saw_http(const struct leg *lg)
{
    const struct tls_leg *t = lg->tr == &transport_tls ? lg->tls : NULL;
    return t != NULL && t->plain_http;
}

int tls_leg_fail(const struct leg *lg)
{
    if (lg->tr == &transport_tls_nest) {
        return tls_nest_fail(lg);
    }
    const struct tls_leg *t = lg->tr == &transport_tls ? lg->tls : NULL;
    return t != NULL ? (int)t->fail : TLS_FAIL_NONE;
}

const char *tls_leg_error(const struct leg *lg)
{
    return leg_tr(lg)->error(lg);
}

int tls_leg_handshaking(const struct leg *lg)
{
    if (lg->tr == &transport_tls_nest) {
        return tls_nest_handshaking(lg);
    }
    const struct tls_leg *t = lg->tr == &transport_tls ? lg->tls : NULL;
    return t != NULL && !SSL_is_init_finished(t->ssl);
}

struct ssl_st *tls_leg_ssl(const struct leg *lg)
{
    const struct tls_leg *t = lg->tr == &transport_tls ? lg->tls : NULL;
    return t != NULL ? t->ssl : NULL;
}

void tls_ssl_fail(struct ssl_st *ssl, const char *why)
{
    struct tls_leg *t = SSL_get_app_data(ssl);
    if (t != NULL && !t->why_set) {
        snprintf(t->why, sizeof(t->why), "%s", why);
        t->why_set = 1;
    }
}

static struct tls_leg *leg_new(struct leg *lg, SSL_CTX *ctx)
{
    struct tls_leg *t = calloc(1, sizeof(*t));
    if (t == NULL) {
        return NULL;
    }
    t->ssl = SSL_new(ctx);
    if (t->ssl == NULL || SSL_set_fd(t->ssl, lg->fd) != 1) {
        SSL_free(t->ssl);
        free(t);
        ERR_clear_error();
        return NULL;
    }
    SSL_set_app_data(t->ssl, t); /* tls_ssl_fail finds the leg's state */
    /* Read a record's header and body in one read(), and whatever else
     * arrived: half the read() calls (tls_pending reports what it holds). */
    SSL_set_read_ahead(t->ssl, 1);
    lg->tls = t;
    lg->tr = &transport_tls;
    return t;
}

int tls_leg_accept(struct leg *lg, SSL_CTX *ctx)
{
    struct tls_leg *t = leg_new(lg, ctx);
    if (t == NULL) {
        return -1;
    }
    SSL_set_accept_state(t->ssl);
    return 0;
}

int tls_leg_connect(struct leg *lg, SSL_CTX *ctx, const char *host, int verify)
{
    struct tls_leg *t = leg_new(lg, ctx);
    if (t == NULL) {
        return -1;
    }
    unsigned char ip[16];
    int literal = inet_pton(AF_INET, host, ip) == 1 || inet_pton(AF_INET6, host, ip) == 1;
    int ok = 1;
    if (!literal) {
        /* RFC 6066: SNI carries names only, never addresses. */
        ok = SSL_set_tlsext_host_name(t->ssl, host) == 1;
    }
    if (ok && verify) {
        if (literal) {
            ok = X509_VERIFY_PARAM_set1_ip_asc(SSL_get0_param(t->ssl), host) == 1;
        } else {
            SSL_set_hostflags(t->ssl, X509_CHECK_FLAG_NO_PARTIAL_WILDCARDS);
            ok = SSL_set1_host(t->ssl, host) == 1;
        }
    }
    if (!ok) {
        leg_tr_free(lg);
        ERR_clear_error();
        return -1;
    }
    SSL_set_connect_state(t->ssl);
    return 0;
}

/* Contexts ------------------------------------------------------------ */

static void ctx_error(char *errbuf, size_t room, const char *what, const char *file)
{
    unsigned long e = ERR_peek_last_error();
    const char *r = e != 0 ? ERR_reason_error_string(e) : NULL;
    snprintf(errbuf, room, "%s %s: %s", what, file != NULL ? file : "",
             r != NULL ? r : "failed");
    ERR_clear_error();
}

int tls_no_password(char *buf, int size, int rwflag, void *u)
{
    (void)buf;
    (void)size;
    (void)rwflag;
    (void)u;
    return 0;
}

static void ctx_common(SSL_CTX *ctx)
{
    SSL_CTX_set_min_proto_version(ctx, TLS1_2_VERSION);
    /* A peer that closes without close_notify ends the stream like a FIN;
     * renegotiation would let a peer make reads write. */
    SSL_CTX_set_options(ctx, SSL_OP_IGNORE_UNEXPECTED_EOF | SSL_OP_NO_RENEGOTIATION);
    /* Writes come from ring-less buffers that compact and grow: partial
     * writes, a retry from a moved pointer, and no idle 34 KiB per conn. */
    SSL_CTX_set_mode(ctx, SSL_MODE_ENABLE_PARTIAL_WRITE | SSL_MODE_ACCEPT_MOVING_WRITE_BUFFER |
                          SSL_MODE_RELEASE_BUFFERS);
    SSL_CTX_set_default_passwd_cb(ctx, tls_no_password);
}

static const unsigned char alpn_http11[] = "\x08http/1.1";

/* http/1.1 when the client offers it; otherwise no ALPN at all (a
 * client that offers only h2 still gets HTTP/1.1, as before ALPN). */
static int alpn_select(SSL *ssl, const unsigned char **out, unsigned char *outlen,
                       const unsigned char *in, unsigned inlen, void *arg)
{
    (void)ssl;
    (void)arg;
    unsigned char *o = NULL;
    if (SSL_select_next_proto(&o, outlen, alpn_http11, sizeof(alpn_http11) - 1, in, inlen) !=
        OPENSSL_NPN_NEGOTIATED) {
        return SSL_TLSEXT_ERR_NOACK;
    }
    *out = o;
    return SSL_TLSEXT_ERR_OK;
}

SSL_CTX *tls_server_ctx(const char *cert, const char *key, char *errbuf, size_t room)
{
    SSL_CTX *ctx = SSL_CTX_new(TLS_server_method());
    if (ctx == NULL) {
        ctx_error(errbuf, room, "TLS context", NULL);
        return NULL;
    }
    ctx_common(ctx);
    if (SSL_CTX_use_certificate_chain_file(ctx, cert) != 1) {
        ctx_error(errbuf, room, "cannot load certificate", cert);
    } else if (SSL_CTX_use_PrivateKey_file(ctx, key, SSL_FILETYPE_PEM) != 1) {
        ctx_error(errbuf, room, "cannot load key", key);
    } else if (SSL_CTX_check_private_key(ctx) != 1) {
        ctx_error(errbuf, room, "key does not match certificate", key);
    } else {
        SSL_CTX_set_alpn_select_cb(ctx, alpn_select, NULL);
        return ctx;
    }
    SSL_CTX_free(ctx);
    return NULL;
}

SSL_CTX *tls_server_ctx_bare(char *errbuf, size_t room)
{
    SSL_CTX *ctx = SSL_CTX_new(TLS_server_method());
    if (ctx == NULL) {
        ctx_error(errbuf, room, "TLS context", NULL);
        return NULL;
    }
    ctx_common(ctx);
    SSL_CTX_set_alpn_select_cb(ctx, alpn_select, NULL);
    return ctx;
}

SSL_CTX *tls_client_ctx(int verify, const char *ca, char *errbuf, size_t room)
{
    SSL_CTX *ctx = SSL_CTX_new(TLS_client_method());
    if (ctx == NULL) {
        ctx_error(errbuf, room, "TLS context", NULL);
        return NULL;
    }
    ctx_common(ctx);
    SSL_CTX_set_alpn_protos(ctx, alpn_http11, sizeof(alpn_http11) - 1);
    if (!verify) {
        SSL_CTX_set_verify(ctx, SSL_VERIFY_NONE, NULL);
        return ctx;
    }
    SSL_CTX_set_verify(ctx, SSL_VERIFY_PEER, NULL);
    int ok = ca != NULL ? SSL_CTX_load_verify_locations(ctx, ca, NULL)
                        : SSL_CTX_set_default_verify_paths(ctx);
    if (ok != 1) {
        ctx_error(errbuf, room, "cannot load CA file", ca != NULL ? ca : "(system store)");
        SSL_CTX_free(ctx);
        return NULL;
    }
    return ctx;
}

void tls_ctx_free(SSL_CTX *ctx)
{
    SSL_CTX_free(ctx);
}
