/* origin_tls.c - contexts and per-exchange settings of TLS origination.
 *
 * Client contexts are kept by (CA file, verify) so a reload that names
 * the same file reuses the loaded store instead of parsing it again; a
 * file whose size or mtime changed is loaded afresh.  Contexts no
 * exchange uses after a commit are freed (ferry_origin_tls_sweep); an
 * SSL in flight holds its own reference, so that is always safe. */
#include "origin_tls.h"
#include "conn.h"
#include "ferry.h"
#include "transport.h"

#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include <openssl/ssl.h>

/* Distinct (CA file, verify) pairs loaded at once. */
#define ORIGIN_CTX_MAX 64
/* Exchange ids (health.c's EXCHANGE_MAX). */
#define ORIGIN_EXCHANGES_MAX 1024

struct origin_ctx {
    SSL_CTX *ctx;
    char *ca;            /* NULL: the system store */
    int verify;
    time_t mtime;
    off_t size;
};

struct origin_ex {
    SSL_CTX *ctx;        /* borrowed from ctxs[]; NULL: the default */
    char *sni;           /* NULL: the host */
    int verify;
};

static struct origin_ctx ctxs[ORIGIN_CTX_MAX];
static unsigned nctxs;
static struct origin_ex exs[ORIGIN_EXCHANGES_MAX + 1];
static uint64_t n_handshakes, n_reuses, n_verify_failures;

static int same_file(const struct origin_ctx *o, const struct stat *st)
{
    return o->ca == NULL || (st->st_mtime == o->mtime && st->st_size == o->size);
}

void *ferry_origin_tls_ctx(int verify, const char *ca, const char **err)
{
    static char why[256];
    struct stat st;
    memset(&st, 0, sizeof(st));
    if (ca != NULL && *ca == '\0') {
        ca = NULL;
    }
    if (!verify) {
        ca = NULL; /* no store is consulted */
    }
    if (ca != NULL && stat(ca, &st) != 0) {
        *err = "cannot read the CA file";
        return NULL;
    }
    for (unsigned i = 0; i < nctxs; i++) {
        struct origin_ctx *o = &ctxs[i];
        int name_eq = (o->ca == NULL && ca == NULL) ||
                      (o->ca != NULL && ca != NULL && strcmp(o->ca, ca) == 0);
        if (name_eq && o->verify == (verify != 0) && same_file(o, &st)) {
            return o->ctx;
        }
    }
    if (nctxs >= ORIGIN_CTX_MAX) {
        *err = "too many distinct origin CA files (64)";
        return NULL;
    }
    SSL_CTX *ctx = tls_client_ctx(verify, ca, why, sizeof(why));
    if (ctx == NULL) {
        *err = why;
        return NULL;
    }
    char *copy = ca != NULL ? strdup(ca) : NULL;
    if (ca != NULL && copy == NULL) {
        tls_ctx_free(ctx);
        *err = "out of memory";
        return NULL;
    }
    struct origin_ctx *o = &ctxs[nctxs++];
    o->ctx = ctx;
    o->ca = copy;
    o->verify = verify != 0;
    o->mtime = st.st_mtime;
    o->size = st.st_size;
    return ctx;
}

int ferry_exchange_set_tls(uint32_t exchange, void *ctx, int verify, const char *sni)
{
    if (exchange == 0 || exchange > ORIGIN_EXCHANGES_MAX) {
        return FERRY_ERROR;
    }
    char *copy = sni != NULL && *sni ? strdup(sni) : NULL;
    if (sni != NULL && *sni && copy == NULL) {
        return FERRY_ERROR;
    }
    struct origin_ex *x = &exs[exchange];
    free(x->sni);
    x->sni = copy;
    x->ctx = ctx;
    x->verify = verify != 0;
    return FERRY_OK;
}

static int ctx_in_use(const SSL_CTX *ctx)
{
    for (unsigned i = 1; i <= ORIGIN_EXCHANGES_MAX; i++) {
        if (exs[i].ctx == ctx) {
            return 1;
        }
    }
    return 0;
}

void ferry_origin_tls_sweep(void)
{
    for (unsigned i = 0; i < nctxs;) {
        struct origin_ctx *o = &ctxs[i];
        /* The default (system store, verified) stays for requests of no exchange. */
        if ((o->ca == NULL && o->verify) || ctx_in_use(o->ctx)) {
            i++;
            continue;
        }
        tls_ctx_free(o->ctx);
        free(o->ca);
        ctxs[i] = ctxs[--nctxs];
    }
}

int origin_tls_connect(struct conn *c)
{
    const struct origin_ex *x = c->exchange > 0 && c->exchange <= ORIGIN_EXCHANGES_MAX
                              ? &exs[c->exchange] : NULL;
    SSL_CTX *ctx = x != NULL ? x->ctx : NULL;
    int verify = x != NULL && x->ctx != NULL ? x->verify : 1;
    if (ctx == NULL) {
        const char *err;
        ctx = ferry_origin_tls_ctx(1, NULL, &err);
        if (ctx == NULL) {
            return -1;
        }
    }
    const char *name = x != NULL && x->sni != NULL ? x->sni : c->host;
    /* Through an https:// proxy the session runs inside the proxy's TLS. */
    int r = c->up.tr == &transport_tls ? tls_leg_connect_inner(&c->up, ctx, name, verify)
                                       : tls_leg_connect(&c->up, ctx, name, verify);
    if (r != 0) {
        return -1;
    }
    n_handshakes++;
    return 0;
}

void origin_tls_count_reuse(void)
{
    n_reuses++;
}

void origin_tls_count_verify_failure(void)
{
    n_verify_failures++;
}

void ferry_origin_tls_stats(uint64_t *handshakes, uint64_t *reuses, uint64_t *verify_failures)
{
    *handshakes = n_handshakes;
    *reuses = n_reuses;
    *verify_failures = n_verify_failures;
}

void origin_tls_free_all(void)
{
    tls_nest_cleanup();
    for (unsigned i = 1; i <= ORIGIN_EXCHANGES_MAX; i++) {
        free(exs[i].sni);
        memset(&exs[i], 0, sizeof(exs[i]));
    }
    for (unsigned i = 0; i < nctxs; i++) {
        tls_ctx_free(ctxs[i].ctx);
        free(ctxs[i].ca);
    }
    nctxs = 0;
}
