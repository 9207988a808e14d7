/* transport_tls_nest.c - TLS inside a leg's TLS: ferry's session with an
 * origin, carried through the tunnel of an https:// proxy.
 *
 * The inner SSL reads and writes through a BIO whose calls are reads and
 * writes of the outer session (the leg's transport_tls state, which the
 * nest takes over).  When the outer side cannot go on, the BIO says
 * "retry" and remembers which socket event the outer side waits for;
 * events() turns the inner session's wishes into those.  Decrypted
 * bytes the outer session holds and the inner one has not read yet are
 * reported by pending(), since no socket event will announce them. */
#include "transport.h"
#include "conn.h"

#include <errno.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>

#include <arpa/inet.h>
#include <openssl/bio.h>
#include <openssl/err.h>
#include <openssl/ssl.h>
#include <openssl/x509v3.h>

struct tls_nest {
    SSL *ssl;                    /* the inner session (with the origin) */
    struct leg outer;            /* the outer session: fd and transport_tls state */
    int bio_need;                /* socket event the outer side last waited for */
    int read_need, write_need;   /* socket events the inner read / write wait for */
    unsigned fail:2;             /* enum tls_fail of the last failure */
    char why[160];
};

static BIO_METHOD *nest_method;

static int clamp(size_t n)
{
    return n > INT_MAX ? INT_MAX : (int)n;
}

static int bio_read(BIO *b, char *p, int n)
{
    struct tls_nest *t = BIO_get_data(b);
    BIO_clear_retry_flags(b);
    ssize_t r = transport_tls.read(&t->outer, p, (size_t)n);
    if (r > 0) {
        return (int)r;
    }
    if (r < 0 && errno == EAGAIN) {
        t->bio_need = transport_tls.events(&t->outer, EV_READ);
        BIO_set_retry_read(b);
        return -1;
    }
    return r == 0 ? 0 : -1; /* end of the outer stream, or its failure */
}

static int bio_write(BIO *b, const char *p, int n)
{
    struct tls_nest *t = BIO_get_data(b);
    BIO_clear_retry_flags(b);
    ssize_t r = transport_tls.write(&t->outer, p, (size_t)n);
    if (r > 0) {
        return (int)r;
    }
    if (errno == EAGAIN) {
        t->bio_need = transport_tls.events(&t->outer, EV_WRITE);
        BIO_set_retry_write(b);
    }
    return -1;
}

static long bio_ctrl(BIO *b, int cmd, long num, void *ptr)
{
    (void)b;
    (void)num;
    (void)ptr;
    return cmd == BIO_CTRL_FLUSH ? 1 : 0;
}

static BIO_METHOD *method(void)
{
    if (nest_method == NULL) {
        nest_method = BIO_meth_new(BIO_get_new_index() | BIO_TYPE_SOURCE_SINK, "ferry-nest");
        if (nest_method != NULL) {
            BIO_meth_set_read(nest_method, bio_read);
            BIO_meth_set_write(nest_method, bio_write);
            BIO_meth_set_ctrl(nest_method, bio_ctrl);
        }
    }
    return nest_method;
}

static void note(struct tls_nest *t, int err)
{
    long vr = SSL_get_verify_result(t->ssl);
    unsigned long e = ERR_peek_last_error();
    t->fail = TLS_FAIL_PROTOCOL;
    if (vr != X509_V_OK) {
        t->fail = TLS_FAIL_VERIFY;
        snprintf(t->why, sizeof(t->why), "certificate verify failed: %s",
                 X509_verify_cert_error_string(vr));
    } else if (e != 0) {
        const char *r = ERR_reason_error_string(e);
        snprintf(t->why, sizeof(t->why), "%s", r != NULL ? r : "TLS error");
    } else if (err == SSL_ERROR_SYSCALL) {
        t->fail = TLS_FAIL_IO;
        snprintf(t->why, sizeof(t->why), "the proxy's TLS tunnel closed during TLS");
    } else {
        snprintf(t->why, sizeof(t->why), "TLS error %d", err);
    }
    ERR_clear_error();
}

/* The socket event an inner call that must wait depends on. */
static int need_of(const struct tls_nest *t, int err)
{
    (void)err;
    return t->bio_need != 0 ? t->bio_need : EV_READ;
}

static ssize_t nest_read(struct leg *lg, void *p, size_t n)
{
    struct tls_nest *t = lg->tls;
    ERR_clear_error();
    t->bio_need = 0;
    int r = SSL_read(t->ssl, p, clamp(n));
    t->read_need = EV_READ;
    if (r > 0) {
        return r;
    }
    int err = SSL_get_error(t->ssl, r);
    switch (err) {
    case SSL_ERROR_WANT_READ:
    case SSL_ERROR_WANT_WRITE:
        t->read_need = need_of(t, err);
        errno = EAGAIN;
        return -1;
    case SSL_ERROR_ZERO_RETURN:
        return 0;
    default:
        note(t, err);
        errno = ECONNRESET;
        return -1;
    }
}

static ssize_t nest_write(struct leg *lg, const void *p, size_t n)
{
    struct tls_nest *t = lg->tls;
    ERR_clear_error();
    t->bio_need = 0;
    int r = SSL_write(t->ssl, p, clamp(n));
    t->write_need = EV_WRITE;
    if (r > 0) {
        return r;
    }
    int err = SSL_get_error(t->ssl, r);
    if (err == SSL_ERROR_WANT_READ || err == SSL_ERROR_WANT_WRITE) {
        t->write_need = need_of(t, err);
        errno = EAGAIN;
        return -1;
    }
    note(t, err);
    errno = EPIPE;
    return -1;
}

static enum tr_hs nest_handshake(struct leg *lg)
{
    struct tls_nest *t = lg->tls;
    ERR_clear_error();
    t->bio_need = 0;
    int r = SSL_do_handshake(t->ssl);
    if (r == 1) {
        t->read_need = EV_READ;
        t->write_need = EV_WRITE;
        return TR_HS_DONE;
    }
    int err = SSL_get_error(t->ssl, r);
    if (err == SSL_ERROR_WANT_READ || err == SSL_ERROR_WANT_WRITE) {
        t->read_need = t->write_need = need_of(t, err);
        return t->read_need == EV_WRITE ? TR_HS_WRITE : TR_HS_READ;
    }
    note(t, err);
    return TR_HS_FAIL;
}

static void nest_shutdown(struct leg *lg)
{
    struct tls_nest *t = lg->tls;
    if (SSL_is_init_finished(t->ssl)) {
        ERR_clear_error();
        (void)SSL_shutdown(t->ssl);
        ERR_clear_error();
    }
    transport_tls.shutdown(&t->outer);
}

static void nest_free(struct leg *lg)
{
    struct tls_nest *t = lg->tls;
    if (t != NULL) {
        SSL_free(t->ssl); /* and its BIO */
        transport_tls.free(&t->outer);
        free(t);
    }
}

static int nest_events(const struct leg *lg, int want)
{
    const struct tls_nest *t = lg->tls;
    int ev = 0;
    if (want & EV_READ) {
        ev |= t->read_need;
    }
    if (want & EV_WRITE) {
        ev |= t->write_need;
    }
    return ev;
}

static int nest_pending(const struct leg *lg)
{
    const struct tls_nest *t = lg->tls;
    return SSL_pending(t->ssl) > 0 || transport_tls.pending(&t->outer);
}

static const char *nest_error(const struct leg *lg)
{
    const struct tls_nest *t = lg->tls;
    return t != NULL ? t->why : "";
}

const struct transport_ops transport_tls_nest = {
    "tls-in-tls", nest_read, nest_write, nest_handshake, nest_shutdown, nest_free,
    nest_events, nest_pending, nest_error,
};

int tls_nest_fail(const struct leg *lg)
{
    const struct tls_nest *t = lg->tr == &transport_tls_nest ? lg->tls : NULL;
    return t != NULL ? (int)t->fail : TLS_FAIL_NONE;
}

int tls_nest_handshaking(const struct leg *lg)
{
    const struct tls_nest *t = lg->tr == &transport_tls_nest ? lg->tls : NULL;
    return t != NULL && !SSL_is_init_finished(t->ssl);
}

int tls_leg_connect_inner(struct leg *lg, SSL_CTX *ctx, const char *host, int verify)
{
    if (lg->tr != &transport_tls || method() == NULL) {
        return -1;
    }
    struct tls_nest *t = calloc(1, sizeof(*t));
    if (t == NULL) {
        return -1;
    }
    t->ssl = SSL_new(ctx);
    BIO *b = t->ssl != NULL ? BIO_new(method()) : NULL;
    if (b == NULL) {
        SSL_free(t->ssl);
        free(t);
        ERR_clear_error();
        return -1;
    }
    BIO_set_data(b, t);
    BIO_set_init(b, 1);
    SSL_set_bio(t->ssl, b, b);
    unsigned char ip[16];
    int literal = inet_pton(AF_INET, host, ip) == 1 || inet_pton(AF_INET6, host, ip) == 1;
    int ok = literal || SSL_set_tlsext_host_name(t->ssl, host) == 1;
    if (ok && verify) {
        if (literal) {
            ok = X509_VERIFY_PARAM_set1_ip_asc(SSL_get0_param(t->ssl), host) == 1;
        } else {
            SSL_set_hostflags(t->ssl, X509_CHECK_FLAG_NO_PARTIAL_WILDCARDS);
            ok = SSL_set1_host(t->ssl, host) == 1;
        }
    }
    if (!ok) {
        SSL_free(t->ssl);
        free(t);
        ERR_clear_error();
        return -1;
    }
    SSL_set_connect_state(t->ssl);
    /* The nest takes the outer session over; the leg now speaks through it. */
    t->outer.fd = lg->fd;
    t->outer.tr = lg->tr;
    t->outer.tls = lg->tls;
    t->read_need = EV_READ;
    t->write_need = EV_WRITE;
    lg->tr = &transport_tls_nest;
    lg->tls = t;
    return 0;
}

void tls_nest_cleanup(void)
{
    BIO_meth_free(nest_method);
    nest_method = NULL;
}
