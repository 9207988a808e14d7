/* ca_cli.c - `ferry ca init` and `ferry ca mint`.
 *
 * init writes a new CA (ca.c).  mint shows what an intercepted client
 * would be shown: it loads DIR's CA as the daemon does, puts one end of
 * a socket pair on TLS through mint_leg_accept (the daemon's own path:
 * SNI rule, cache, chain, ALPN) and runs a client handshake on the
 * other end, then prints the chain the client received.  For debugging
 * a client that refuses the certificate, and for the specs. */
#include "ca.h"
#include "conn.h"
#include "mint.h"
#include "transport.h"

#include <arpa/inet.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#include <openssl/err.h>
#include <openssl/pem.h>
#include <openssl/ssl.h>
#include <openssl/x509.h>

#define CA_NAMES_MAX 64

static void ca_usage(FILE *out)
{
    fprintf(out,
            "usage: ferry ca init DIR [--name-constraint DOMAIN]... [--days N] [--subject S]\n"
            "           writes DIR/ca.key (mode 0600, never overwritten) and DIR/ca.crt\n"
            "       ferry ca mint DIR NAME... [--sni NAME | --no-sni] [--verify CAFILE]\n"
            "                     [--repeat N] [--cache N] [--prepare] [--unchecked] [--bench N]\n"
            "           the certificate chain an intercepted client gets for the last NAME (PEM)\n");
}

static void print_done(const struct ca_init_opts *o)
{
    printf("wrote %s/ca.key (ECDSA P-256, mode 0600: keep it secret) and %s/ca.crt "
           "(valid %d days)\n", o->dir, o->dir, o->days);
    if (o->nnames > 0) {
        printf("name constraints: only");
        for (int i = 0; i < o->nnames; i++) {
            printf(" %s", o->names[i]);
        }
        printf(" (and their subdomains); no IP addresses\n");
    } else {
        printf("no name constraints: clients that trust this CA accept any name it signs "
               "(--name-constraint limits it)\n");
    }
    printf("config:  tls { ca_cert = \"%s/ca.crt\", ca_key = \"%s/ca.key\" }\n"
           "clients: trust %s/ca.crt (docs/https.md, \"Ferry's CA\")\n",
           o->dir, o->dir, o->dir);
}

static int cmd_init(int argc, char **argv)
{
    const char *names[CA_NAMES_MAX];
    struct ca_init_opts o = { NULL, NULL, CA_DAYS_DEFAULT, names, 0 };
    for (int i = 0; i < argc; i++) {
        const char *a = argv[i];
        const char *v = i + 1 < argc ? argv[i + 1] : NULL;
        if (strcmp(a, "--name-constraint") == 0 && v != NULL) {
            if (o.nnames == CA_NAMES_MAX) {
                fprintf(stderr, "ferry ca init: FERRY-7602: at most %d --name-constraint\n",
                        CA_NAMES_MAX);
                return 2;
            }
            names[o.nnames++] = v;
            i++;
        } else if (strcmp(a, "--days") == 0 && v != NULL) {
            char *end = NULL;
            long d = strtol(v, &end, 10);
            if (*v == '\0' || *end != '\0' || d < 1 || d > CA_DAYS_MAX) {
                fprintf(stderr, "ferry ca init: FERRY-7602: --days must be 1 to %d, not \"%s\"\n",
                        CA_DAYS_MAX, v);
                return 2;
            }
            o.days = (int)d;
            i++;
        } else if (strcmp(a, "--subject") == 0 && v != NULL) {
            o.subject = v;
            i++;
        } else if (a[0] != '-' && o.dir == NULL) {
            o.dir = a;
        } else {
            fprintf(stderr, "ferry ca init: unknown or incomplete argument \"%s\"\n", a);
            ca_usage(stderr);
            return 2;
        }
    }
    if (o.dir == NULL) {
        fprintf(stderr, "ferry ca init: which directory? (ferry ca init DIR)\n");
        ca_usage(stderr);
        return 2;
    }
    char err[1024];
    if (ca_init(&o, err, sizeof(err)) != 0) {
        fprintf(stderr, "ferry ca init: %s\n", err);
        return 1;
    }
    print_done(&o);
    return 0;
}

/* ferry ca mint ------------------------------------------------------- */

#define CA_MINT_NAMES_MAX 64

struct mint_opts {
    const char *dir, *name, *sni, *verify;
    const char *names[CA_MINT_NAMES_MAX]; /* handshakes in this order, name the last */
    int nnames, no_sni, repeat, cache, unchecked, bench, prepare;
};

static double clock_s(clockid_t id)
{
    struct timespec ts;
    clock_gettime(id, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

static double now_s(void)
{
    return clock_s(CLOCK_MONOTONIC);
}

/* --bench N: the cost of minting alone, N leaves for N names (h0.NAME,
 * h1.NAME ...) signed as the daemon signs them (issue and the
 * name-constraint check). */
static int mint_bench(struct ca *ca, int n, const char *suffix)
{
    EVP_PKEY *key = ca_new_key();
    X509 *tmpl = key != NULL ? ca_leaf_template(key) : NULL;
    if (tmpl == NULL) {
        fprintf(stderr, "ferry ca mint: cannot make a key\n");
        EVP_PKEY_free(key);
        return 1;
    }
    double t0 = now_s(), c0 = clock_s(CLOCK_PROCESS_CPUTIME_ID);
    int rc = 0;
    for (int i = 0; i < n && rc == 0; i++) {
        char name[300], err[512];
        time_t expires;
        snprintf(name, sizeof(name), "h%d.%.240s", i, suffix);
        X509 *x = ca_issue(ca, tmpl, name, time(NULL), &expires, err, sizeof(err));
        if (x == NULL || ca_permits(ca, x, err, sizeof(err)) != 0) {
            fprintf(stderr, "ferry ca mint: %s\n", err);
            rc = 1;
        }
        X509_free(x);
    }
    double ms = (now_s() - t0) * 1000.0, cpu = clock_s(CLOCK_PROCESS_CPUTIME_ID) - c0;
    if (rc == 0) {
        printf("%d leaves minted in %.1f ms: %.0f per second, %.0f per CPU-second\n", n, ms,
               n / (ms / 1000.0), cpu > 0 ? n / cpu : 0.0);
    }
    X509_free(tmpl);
    EVP_PKEY_free(key);
    return rc;
}

/* A client handshake against a leg set up by mint_leg_accept, both ends
 * in this process over a socket pair.  0 and the client's SSL (the
 * caller frees it), or -1 and why. */
static int handshake(const struct mint_opts *o, SSL_CTX *cctx, SSL **out, char *why,
                     size_t room)
{
    int sp[2];
    struct leg lg;
    memset(&lg, 0, sizeof(lg));
    if (socketpair(AF_UNIX, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0, sp) == -1) {
        snprintf(why, room, "socketpair failed");
        return -1;
    }
    lg.fd = sp[0];
    int rc = -1;
    SSL *cl = NULL;
    if (o->prepare && mint_prepare(o->name, why, room) != 0) {
        goto out;
    }
    if (mint_leg_accept(&lg, o->name) != 0) {
        snprintf(why, room, "mint_leg_accept failed (no CA, or a name that does not fit)");
        goto out;
    }
    cl = SSL_new(cctx);
    if (cl == NULL || SSL_set_fd(cl, sp[1]) != 1) {
        snprintf(why, room, "cannot make the client");
        goto out;
    }
    unsigned char ip[16];
    const char *sni = o->sni != NULL ? o->sni : o->name;
    if (!o->no_sni && inet_pton(AF_INET, sni, ip) != 1 && inet_pton(AF_INET6, sni, ip) != 1) {
        SSL_set_tlsext_host_name(cl, sni);
    }
    SSL_set_connect_state(cl);
    int cdone = 0, sdone = 0, cfail = 0, sfail = 0;
    for (int i = 0; i < 200 && !(cdone && sdone) && !cfail && !sfail; i++) {
        if (!cdone) {
            int r = SSL_do_handshake(cl);
            int e = r == 1 ? SSL_ERROR_NONE : SSL_get_error(cl, r);
            cdone = r == 1;
            cfail = !cdone && e != SSL_ERROR_WANT_READ && e != SSL_ERROR_WANT_WRITE;
        }
        if (!sdone) {
            enum tr_hs h = leg_tr(&lg)->handshake(&lg);
            sdone = h == TR_HS_DONE;
            sfail = h == TR_HS_FAIL;
        }
    }
    if (cfail && !sfail) {
        /* The client gave up first (its alert is on the way): let ferry's side read it. */
        (void)leg_tr(&lg)->handshake(&lg);
        sfail = 1;
    }
    if (sfail || cfail || !cdone) {
        const char *r = tls_leg_error(&lg);
        unsigned long e = ERR_peek_last_error();
        snprintf(why, room, "handshake failed: %s%s%s", *r != '\0' ? r : "(no reason)",
                 mint_client_refused(&lg) ? " [client refused]" : "",
                 e != 0 && *r == '\0' ? ERR_reason_error_string(e) : "");
        goto out;
    }
    *out = cl;
    cl = NULL;
    rc = 0;
out:
    ERR_clear_error();
    SSL_free(cl);
    leg_tr_free(&lg);
    close(sp[0]);
    close(sp[1]);
    return rc;
}

static void describe(SSL *cl, const char *name)
{
    const unsigned char *alpn = NULL;
    unsigned alen = 0;
    SSL_get0_alpn_selected(cl, &alpn, &alen);
    STACK_OF(X509) *chain = SSL_get_peer_cert_chain(cl);
    int n = chain != NULL ? sk_X509_num(chain) : 0;
    for (int i = 0; i < n; i++) {
        PEM_write_X509(stdout, sk_X509_value(chain, i));
    }
    const struct mint_stats *st = mint_stats();
    fprintf(stderr, "ferry ca mint: %s: %s, chain of %d, ALPN %.*s; minted %llu, cache hits "
            "%llu, evictions %llu, cached %u\n", name, SSL_get_version(cl), n,
            alen > 0 ? (int)alen : 4, alen > 0 ? (const char *)alpn : "none",
            (unsigned long long)st->minted, (unsigned long long)st->hits,
            (unsigned long long)st->evictions, st->cached);
}

/* --unchecked: the leaf as ca.c issues it, without the daemon's check of
 * the CA's name constraints, to see what clients make of it. */
static int mint_unchecked(struct ca *ca, const char *name)
{
    char err[512];
    EVP_PKEY *key = ca_new_key();
    X509 *tmpl = key != NULL ? ca_leaf_template(key) : NULL;
    time_t expires;
    X509 *x = tmpl != NULL ? ca_issue(ca, tmpl, name, time(NULL), &expires, err, sizeof(err))
                           : NULL;
    int made = tmpl != NULL;
    X509_free(tmpl);
    if (x == NULL) {
        fprintf(stderr, "ferry ca mint: %s\n", made ? err : "cannot make a key");
        EVP_PKEY_free(key);
        return 1;
    }
    if (ca_permits(ca, x, err, sizeof(err)) != 0) {
        fprintf(stderr, "ferry ca mint: warning: %s\n", err);
    }
    PEM_write_X509(stdout, x);
    PEM_write_X509(stdout, ca_cert(ca));
    X509_free(x);
    EVP_PKEY_free(key);
    return 0;
}

static int mint_run(const struct mint_opts *o, struct ca *ca)
{
    if (o->unchecked) {
        return mint_unchecked(ca, o->name);
    }
    if (o->bench > 0) {
        return mint_bench(ca, o->bench, o->name);
    }
    if (mint_use(ca, o->cache) != 0) {
        fprintf(stderr, "ferry ca mint: out of memory\n");
        return 1;
    }
    SSL_CTX *cctx = SSL_CTX_new(TLS_client_method());
    static const unsigned char offer[] = "\x02h2\x08http/1.1";
    if (cctx == NULL || SSL_CTX_set_alpn_protos(cctx, offer, sizeof(offer) - 1) != 0) {
        fprintf(stderr, "ferry ca mint: cannot make a TLS client\n");
        SSL_CTX_free(cctx);
        return 1;
    }
    if (o->verify != NULL) {
        SSL_CTX_set_verify(cctx, SSL_VERIFY_PEER, NULL);
        if (SSL_CTX_load_verify_locations(cctx, o->verify, NULL) != 1) {
            fprintf(stderr, "ferry ca mint: --verify %s: cannot load\n", o->verify);
            SSL_CTX_free(cctx);
            return 1;
        }
    }
    int rc = 0;
    double t0 = now_s();
    struct mint_opts one = *o;
    for (int r = 0; r < o->repeat && rc == 0; r++) {
        for (int i = 0; i < o->nnames && rc == 0; i++) {
            char why[512];
            SSL *cl = NULL;
            one.name = o->names[i];
            if (handshake(&one, cctx, &cl, why, sizeof(why)) != 0) {
                fprintf(stderr, "ferry ca mint: %s: %s\n", one.name, why);
                rc = 1;
            } else if (r == o->repeat - 1 && i == o->nnames - 1) {
                describe(cl, one.name);
            }
            SSL_free(cl);
        }
    }
    if (rc == 0 && o->repeat * o->nnames > 1) {
        fprintf(stderr, "ferry ca mint: %d handshakes (both ends in this process) in %.1f ms\n",
                o->repeat * o->nnames, (now_s() - t0) * 1000.0);
    }
    SSL_CTX_free(cctx);
    return rc;
}

static int cmd_mint(int argc, char **argv)
{
    struct mint_opts o;
    memset(&o, 0, sizeof(o));
    o.repeat = 1;
    o.cache = MINT_CACHE_DEFAULT;
    for (int i = 0; i < argc; i++) {
        const char *a = argv[i];
        const char *v = i + 1 < argc ? argv[i + 1] : NULL;
        if (strcmp(a, "--sni") == 0 && v != NULL) {
            o.sni = v;
            i++;
        } else if (strcmp(a, "--no-sni") == 0) {
            o.no_sni = 1;
        } else if (strcmp(a, "--verify") == 0 && v != NULL) {
            o.verify = v;
            i++;
        } else if (strcmp(a, "--repeat") == 0 && v != NULL) {
            o.repeat = atoi(v);
            if (o.repeat < 1 || o.repeat > 100000) {
                fprintf(stderr, "ferry ca mint: --repeat must be 1 to 100000\n");
                return 2;
            }
            i++;
        } else if (strcmp(a, "--cache") == 0 && v != NULL) {
            o.cache = atoi(v);
            if (o.cache < 1 || o.cache > MINT_CACHE_MAX) {
                fprintf(stderr, "ferry ca mint: --cache must be 1 to %d\n", MINT_CACHE_MAX);
                return 2;
            }
            i++;
        } else if (strcmp(a, "--bench") == 0 && v != NULL) {
            o.bench = atoi(v);
            if (o.bench < 1 || o.bench > 10000000) {
                fprintf(stderr, "ferry ca mint: --bench must be 1 to 10000000\n");
                return 2;
            }
            i++;
        } else if (strcmp(a, "--prepare") == 0) {
            o.prepare = 1; /* mint_prepare first, as the interception may */
        } else if (strcmp(a, "--unchecked") == 0) {
            o.unchecked = 1;
        } else if (a[0] != '-' && o.dir == NULL) {
            o.dir = a;
        } else if (a[0] != '-' && o.nnames < CA_MINT_NAMES_MAX) {
            o.names[o.nnames++] = a;
            o.name = a;
        } else {
            fprintf(stderr, "ferry ca mint: unknown or incomplete argument \"%s\"\n", a);
            ca_usage(stderr);
            return 2;
        }
    }
    if (o.dir == NULL || o.name == NULL) {
        ca_usage(stderr);
        return 2;
    }
    char cert[4096], key[4096], err[1024];
    snprintf(cert, sizeof(cert), "%s/ca.crt", o.dir);
    snprintf(key, sizeof(key), "%s/ca.key", o.dir);
    struct ca *ca = ca_load(cert, key, err, sizeof(err));
    if (ca == NULL) {
        fprintf(stderr, "ferry ca mint: %s\n", err);
        return 1;
    }
    int rc = mint_run(&o, ca);
    mint_free_all();
    ca_unref(ca);
    return rc;
}

int ca_main(int argc, char **argv)
{
    if (argc >= 1 && strcmp(argv[0], "init") == 0) {
        return cmd_init(argc - 1, argv + 1);
    }
    if (argc >= 1 && strcmp(argv[0], "mint") == 0) {
        return cmd_mint(argc - 1, argv + 1);
    }
    if (argc >= 1 && (strcmp(argv[0], "-h") == 0 || strcmp(argv[0], "--help") == 0)) {
        ca_usage(stdout);
        return 0;
    }
    fprintf(stderr, "ferry ca: %s\n", argc >= 1 ? "unknown subcommand" : "what? (init, mint)");
    ca_usage(stderr);
    return 2;
}
