/* mint.c - the client side of interception: one server SSL_CTX whose
 * certificate is chosen per connection, leaves minted by ferry's CA and
 * kept in a bounded LRU cache by name.
 *
 * One leaf key per CA load: every leaf of that CA carries the same
 * P-256 public key.  Key generation is most of a mint's cost, a leaf
 * lives a day and never leaves memory, and a new CA (a reload) brings a
 * new key.  Signing a leaf (ECDSA, tens of microseconds) happens inside
 * the handshake, on the event loop, once per name per half lifetime.
 *
 * Per connection, the SSL object carries the CONNECT host (ex data,
 * freed with the SSL): the servername callback refuses an SNI naming
 * another host, the certificate callback installs the leaf, the info
 * callback notices a client that refuses it. */
#include "mint.h"
#include "ca.h"
#include "conn.h"
#include "ferry.h"
#include "log.h"
#include "transport.h"

#include <ctype.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>

#include <openssl/err.h>
#include <openssl/ssl.h>
#include <openssl/x509.h>

/* A cached leaf, on the LRU list and in one hash chain. */
struct leaf {
    struct leaf *prev, *next; /* private: LRU, most recent first */
    struct leaf *hnext;       /* private: hash chain */
    uint32_t hash;            /* private */
    X509 *cert;               /* private: one reference */
    time_t minted, expires;   /* private: wall clock */
    char name[];              /* private: lower case, no trailing dot */
};

/* What one connection's SSL carries (ex data). */
struct mint_hs {
    unsigned refused:1; /* the client sent a certificate alert */
    char host[];        /* the CONNECT host, normalized */
};

static struct {
    struct ca *ca;            /* the CA in use, or NULL */
    EVP_PKEY *key;            /* the leaves' key */
    X509 *tmpl;               /* every leaf starts as a copy of it (ca_leaf_template) */
    SSL_CTX *ctx;             /* server context of intercepted legs */
    STACK_OF(X509) *chain;    /* the CA certificate, sent after each leaf */
    struct leaf **buckets;    /* nbuckets chains */
    uint32_t nbuckets;        /* a power of two >= cap */
    struct leaf *head, *tail; /* LRU */
    struct mint_stats st;
} mint;

static int hs_index = -1;

static void hs_free(void *parent, void *ptr, CRYPTO_EX_DATA *ad, int idx, long argl, void *argp)
{
    (void)parent;
    (void)ad;
    (void)idx;
    (void)argl;
    (void)argp;
    free(ptr);
}

/* host as certificates and SNI compare it: lower case, no brackets
 * around an IPv6 literal, no trailing dot.  -1 when it does not fit. */
static int normalize(const char *host, char *out, size_t room)
{
    size_t n = strlen(host);
    if (n >= 2 && host[0] == '[' && host[n - 1] == ']') {
        host++;
        n -= 2;
    }
    if (n > 0 && host[n - 1] == '.') {
        n--;
    }
    if (n == 0 || n >= room) {
        return -1;
    }
    for (size_t i = 0; i < n; i++) {
        out[i] = (char)tolower((unsigned char)host[i]);
    }
    out[n] = '\0';
    return 0;
}

/* The cache ---------------------------------------------------------- */

static uint32_t name_hash(const char *s)
{
    uint32_t h = 2166136261u; /* FNV-1a */
    for (; *s != '\0'; s++) {
        h = (h ^ (unsigned char)*s) * 16777619u;
    }
    return h;
}

static void lru_unlink(struct leaf *e)
{
    if (e->prev != NULL) {
        e->prev->next = e->next;
    } else {
        mint.head = e->next;
    }
    if (e->next != NULL) {
        e->next->prev = e->prev;
    } else {
        mint.tail = e->prev;
    }
    e->prev = e->next = NULL;
}

static void lru_push(struct leaf *e)
{
    e->next = mint.head;
    if (mint.head != NULL) {
        mint.head->prev = e;
    }
    mint.head = e;
    if (mint.tail == NULL) {
        mint.tail = e;
    }
}

static void leaf_drop(struct leaf *e)
{
    struct leaf **pp = &mint.buckets[e->hash & (mint.nbuckets - 1)];
    while (*pp != e) {
        pp = &(*pp)->hnext;
    }
    *pp = e->hnext;
    lru_unlink(e);
    X509_free(e->cert); /* a handshake that sent it holds its own reference */
    free(e);
    mint.st.cached--;
}

static void cache_clear(void)
{
    while (mint.head != NULL) {
        leaf_drop(mint.head);
    }
}

/* The leaf for name: cached while younger than half its lifetime, else
 * minted now.  NULL and err when it cannot be. */
static struct leaf *leaf_get(const char *name, char *err, size_t room)
{
    time_t now = time(NULL);
    uint32_t h = name_hash(name);
    for (struct leaf *e = mint.buckets[h & (mint.nbuckets - 1)]; e != NULL; e = e->hnext) {
        if (e->hash != h || strcmp(e->name, name) != 0) {
            continue;
        }
        if (now - e->minted < (e->expires - e->minted) / 2) {
            lru_unlink(e);
            lru_push(e);
            mint.st.hits++;
            return e;
        }
        leaf_drop(e); /* half its life gone: a fresh one follows */
        break;
    }
    time_t expires = 0;
    X509 *x = ca_issue(mint.ca, mint.tmpl, name, now, &expires, err, room);
    if (x == NULL || ca_permits(mint.ca, x, err, room) != 0) {
        X509_free(x);
        mint.st.failed++;
        return NULL;
    }
    size_t n = strlen(name);
    struct leaf *e = malloc(sizeof(*e) + n + 1);
    if (e == NULL) {
        X509_free(x);
        snprintf(err, room, "FERRY-1082: out of memory minting for %s", name);
        mint.st.failed++;
        return NULL;
    }
    while (mint.st.cached >= mint.st.cap && mint.tail != NULL) {
        leaf_drop(mint.tail);
        mint.st.evictions++;
    }
    memcpy(e->name, name, n + 1);
    e->hash = h;
    e->cert = x;
    e->minted = now;
    e->expires = expires;
    e->prev = e->next = NULL;
    e->hnext = mint.buckets[h & (mint.nbuckets - 1)];
    mint.buckets[h & (mint.nbuckets - 1)] = e;
    lru_push(e);
    mint.st.cached++;
    mint.st.minted++;
    return e;
}

/* Handshake callbacks ------------------------------------------------ */

/* The SNI rule: none, or the CONNECT host itself. */
static int on_servername(SSL *ssl, int *al, void *arg)
{
    (void)arg;
    const struct mint_hs *hs = SSL_get_ex_data(ssl, hs_index);
    const char *sni = SSL_get_servername(ssl, TLSEXT_NAMETYPE_host_name);
    char name[HOST_MAX_LEN + 1];
    if (hs == NULL || sni == NULL) {
        return SSL_TLSEXT_ERR_OK;
    }
    if (normalize(sni, name, sizeof(name)) != 0 || strcmp(name, hs->host) != 0) {
        char why[160];
        snprintf(why, sizeof(why), "FERRY-1080: the client's TLS SNI \"%.48s\" is not the "
                 "CONNECT host \"%.48s\"", sni, hs->host);
        tls_ssl_fail(ssl, why);
        mint.st.sni_mismatch++;
        *al = SSL_AD_UNRECOGNIZED_NAME;
        return SSL_TLSEXT_ERR_ALERT_FATAL;
    }
    return SSL_TLSEXT_ERR_OK;
}

/* Called for every handshake before the certificate is chosen (with or
 * without SNI): the leaf for the host, then the CA after it. */
static int on_cert(SSL *ssl, void *arg)
{
    (void)arg;
    const struct mint_hs *hs = SSL_get_ex_data(ssl, hs_index);
    char why[160];
    if (hs == NULL) {
        return 0;
    }
    if (mint.ca == NULL) {
        tls_ssl_fail(ssl, "FERRY-1082: no CA is loaded any more (tls { ca_cert, ca_key })");
        return 0;
    }
    struct leaf *e = leaf_get(hs->host, why, sizeof(why));
    if (e == NULL) {
        tls_ssl_fail(ssl, why);
        return 0;
    }
    if (SSL_use_cert_and_key(ssl, e->cert, mint.key, mint.chain, 1) != 1) {
        ERR_clear_error();
        tls_ssl_fail(ssl, "FERRY-1082: cannot use the minted certificate");
        return 0;
    }
    return 1;
}

/* Alerts a client sends when it does not accept the certificate. */
static int refusal_alert(int desc)
{
    switch (desc) {
    case SSL_AD_BAD_CERTIFICATE:
    case SSL_AD_UNSUPPORTED_CERTIFICATE:
    case SSL_AD_CERTIFICATE_REVOKED:
    case SSL_AD_CERTIFICATE_EXPIRED:
    case SSL_AD_CERTIFICATE_UNKNOWN:
    case SSL_AD_UNKNOWN_CA:
        return 1;
    default:
        return 0;
    }
}

static void on_info(const SSL *ssl, int where, int ret)
{
    if ((where & SSL_CB_READ_ALERT) != SSL_CB_READ_ALERT || !refusal_alert(ret & 0xff)) {
        return;
    }
    struct mint_hs *hs = SSL_get_ex_data(ssl, hs_index);
    if (hs == NULL || hs->refused) {
        return;
    }
    hs->refused = 1;
    mint.st.refused++;
    char why[160];
    snprintf(why, sizeof(why), "FERRY-1081: the client refused ferry's certificate for %.64s "
             "(alert %s): does it trust ferry's CA?", hs->host, SSL_alert_desc_string_long(ret));
    tls_ssl_fail((SSL *)ssl, why);
}

/* The API ------------------------------------------------------------ */

int mint_ready(void)
{
    return mint.ca != NULL;
}

int mint_leg_accept(struct leg *lg, const char *host)
{
    char name[HOST_MAX_LEN + 1];
    if (mint.ca == NULL || !leg_plain(lg) || normalize(host, name, sizeof(name)) != 0) {
        return -1; /* no TLS inside a TLS listener's TLS: the SSL reads the socket itself */
    }
    size_t n = strlen(name);
    struct mint_hs *hs = calloc(1, sizeof(*hs) + n + 1);
    if (hs == NULL) {
        return -1;
    }
    memcpy(hs->host, name, n + 1);
    if (tls_leg_accept(lg, mint.ctx) != 0) {
        free(hs);
        return -1;
    }
    if (SSL_set_ex_data(tls_leg_ssl(lg), hs_index, hs) != 1) {
        ERR_clear_error();
        free(hs);
        leg_tr_free(lg);
        return -1;
    }
    return 0;
}

int mint_prepare(const char *host, char *err, size_t room)
{
    char name[HOST_MAX_LEN + 1];
    if (mint.ca == NULL) {
        snprintf(err, room, "FERRY-1082: no CA is loaded (tls { ca_cert, ca_key })");
        return -1;
    }
    if (normalize(host, name, sizeof(name)) != 0) {
        snprintf(err, room, "FERRY-1082: cannot mint a certificate for \"%.64s\"", host);
        return -1;
    }
    return leaf_get(name, err, room) != NULL ? 0 : -1;
}

int mint_client_refused(const struct leg *lg)
{
    SSL *ssl = tls_leg_ssl(lg);
    const struct mint_hs *hs = ssl != NULL ? SSL_get_ex_data(ssl, hs_index) : NULL;
    return hs != NULL && hs->refused;
}

const struct mint_stats *mint_stats(void)
{
    mint.st.ready = mint.ca != NULL;
    return &mint.st;
}

static uint32_t buckets_for(int cap)
{
    uint32_t n = 16;
    while (n < (uint32_t)cap) {
        n <<= 1;
    }
    return n;
}

/* Drop the CA and everything made from it; the counters stay. */
static void mint_reset(void)
{
    if (mint.buckets != NULL) {
        cache_clear();
    }
    free(mint.buckets);
    mint.buckets = NULL;
    mint.nbuckets = 0;
    sk_X509_pop_free(mint.chain, X509_free);
    mint.chain = NULL;
    SSL_CTX_free(mint.ctx); /* handshakes under way hold their own reference */
    mint.ctx = NULL;
    X509_free(mint.tmpl);
    mint.tmpl = NULL;
    EVP_PKEY_free(mint.key);
    mint.key = NULL;
    ca_unref(mint.ca);
    mint.ca = NULL;
}

static SSL_CTX *new_ctx(void)
{
    char why[256];
    SSL_CTX *ctx = tls_server_ctx_bare(why, sizeof(why));
    if (ctx == NULL) {
        return NULL;
    }
    SSL_CTX_set_tlsext_servername_callback(ctx, on_servername);
    SSL_CTX_set_cert_cb(ctx, on_cert, NULL);
    SSL_CTX_set_info_callback(ctx, on_info);
    return ctx;
}

int mint_use(struct ca *ca, int cap)
{
    if (cap < 1 || cap > MINT_CACHE_MAX) {
        cap = MINT_CACHE_DEFAULT;
    }
    if (ca == NULL) {
        mint_reset();
        mint.st.cap = 0;
        return 0;
    }
    if (hs_index < 0) {
        hs_index = SSL_get_ex_new_index(0, NULL, NULL, NULL, hs_free);
        if (hs_index < 0) {
            return -1;
        }
    }
    uint32_t nb = buckets_for(cap);
    struct leaf **buckets = calloc(nb, sizeof(*buckets));
    if (buckets == NULL) {
        return -1;
    }
    if (ca_same(ca, mint.ca)) {
        /* The same CA: its leaves stay good; only a new bound rebuilds the table. */
        if ((uint32_t)cap != mint.st.cap) {
            cache_clear();
            free(mint.buckets);
            mint.buckets = buckets;
            mint.nbuckets = nb;
            mint.st.cap = (uint32_t)cap;
        } else {
            free(buckets);
        }
        return 0;
    }
    EVP_PKEY *key = ca_new_key();
    X509 *tmpl = key != NULL ? ca_leaf_template(key) : NULL;
    SSL_CTX *ctx = tmpl != NULL ? new_ctx() : NULL;
    STACK_OF(X509) *chain = sk_X509_new_null();
    if (key == NULL || tmpl == NULL || ctx == NULL || chain == NULL ||
        X509_up_ref(ca_cert(ca)) != 1) {
        goto fail;
    }
    if (sk_X509_push(chain, ca_cert(ca)) <= 0) {
        X509_free(ca_cert(ca));
        goto fail;
    }
    mint_reset();
    mint.ca = ca_ref(ca);
    mint.key = key;
    mint.tmpl = tmpl;
    mint.ctx = ctx;
    mint.chain = chain;
    mint.buckets = buckets;
    mint.nbuckets = nb;
    mint.st.cap = (uint32_t)cap;
    return 0;
fail:
    ERR_clear_error();
    sk_X509_pop_free(chain, X509_free);
    SSL_CTX_free(ctx);
    X509_free(tmpl);
    EVP_PKEY_free(key);
    free(buckets);
    return -1;
}

void mint_free_all(void)
{
    mint_reset();
}

/* FFI (ferry.h) ------------------------------------------------------- */

void *ferry_ca_load(const char *cert, const char *key, const char **err)
{
    static char why[512];
    if (cert == NULL || key == NULL) {
        *err = "FERRY-0180: ca_cert and ca_key are both required";
        return NULL;
    }
    struct ca *ca = ca_load(cert, key, why, sizeof(why));
    if (ca == NULL) {
        *err = why;
        return NULL;
    }
    struct stat st;
    if (stat(key, &st) == 0 && (st.st_mode & 077) != 0) {
        log_event(LOG_WARN, "FERRY-0184", NULL, "tls: ca_key %s is readable by other users "
                  "(mode %03o): whoever reads it can impersonate sites to clients that trust "
                  "the CA; chmod 600 it", key, (unsigned)(st.st_mode & 0777));
    }
    return ca;
}

void ferry_ca_release(void *ca)
{
    ca_unref(ca);
}

int ferry_ca_use(void *ca, int leaf_cache, const char **err)
{
    struct ca *was = mint.ca;
    if (mint_use(ca, leaf_cache) != 0) {
        *err = "FERRY-0180: out of memory setting up ferry's CA";
        return FERRY_ERROR;
    }
    if (ca != NULL && mint.ca != was) {
        char subject[256];
        X509_NAME_oneline(X509_get_subject_name(ca_cert(ca)), subject, sizeof(subject));
        log_event(LOG_INFO, "FERRY-0183", NULL, "ferry's CA %s is in use: leaves are minted "
                  "by it from now on (cache of %u)", subject, mint.st.cap);
    }
    return FERRY_OK;
}

void ferry_mint_stats(struct ferry_mint_stats *out)
{
    const struct mint_stats *s = mint_stats();
    out->minted = s->minted;
    out->hits = s->hits;
    out->evictions = s->evictions;
    out->refused = s->refused;
    out->sni_mismatch = s->sni_mismatch;
    out->failed = s->failed;
    out->cached = s->cached;
    out->cap = s->cap;
    out->ready = s->ready;
}
