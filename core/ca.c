/* ca.c - ferry's CA: make one, load and check one, issue leaves.
 *
 * Keys are ECDSA P-256: small, fast to sign with, accepted by every
 * client ferry's users run.  A loaded CA may have any key OpenSSL signs
 * with (an RSA CA made elsewhere works); leaves are always P-256 and
 * signed with SHA-256 (no digest for Ed25519/Ed448 CA keys). */
#include "ca.h"
#include "transport.h"

#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include <arpa/inet.h>
#include <openssl/bn.h>
#include <openssl/err.h>
#include <openssl/evp.h>
#include <openssl/pem.h>
#include <openssl/rand.h>
#include <openssl/x509.h>
#include <openssl/x509v3.h>

struct ca {
    int refs;                /* private: holders (the running config, handshakes' mint state) */
    X509 *cert;              /* private */
    EVP_PKEY *key;           /* private */
    NAME_CONSTRAINTS *nc;    /* private: the certificate's name constraints, or NULL */
};

/* The OpenSSL error queue's last reason, then the queue cleared. */
static const char *ssl_reason(void)
{
    unsigned long e = ERR_peek_last_error();
    const char *r = e != 0 ? ERR_reason_error_string(e) : NULL;
    ERR_clear_error();
    return r != NULL ? r : "failed";
}

/* Names ---------------------------------------------------------------- */

/* 1 when s is a DNS name a certificate may carry: 1..253 bytes of
 * labels of 1..63 letters, digits, '-' and '_' (no wildcards: ferry
 * mints for the exact name a client asked for). */
static int dns_name(const char *s)
{
    size_t n = strlen(s), label = 0;
    if (n == 0 || n > 253) {
        return 0;
    }
    for (size_t i = 0; i < n; i++) {
        char ch = s[i];
        if (ch == '.') {
            if (label == 0) {
                return 0;
            }
            label = 0;
        } else if ((ch >= 'a' && ch <= 'z') || (ch >= 'A' && ch <= 'Z') ||
                   (ch >= '0' && ch <= '9') || ch == '-' || ch == '_') {
            if (++label > 63) {
                return 0;
            }
        } else {
            return 0;
        }
    }
    return label > 0;
}

/* The address bytes of an IP literal (4 or 16), or 0. */
static int ip_literal(const char *s, unsigned char out[16])
{
    if (inet_pton(AF_INET, s, out) == 1) {
        return 4;
    }
    return inet_pton(AF_INET6, s, out) == 1 ? 16 : 0;
}

/* Certificates --------------------------------------------------------- */

static int set_serial(X509 *x)
{
    unsigned char b[16];
    if (RAND_bytes(b, sizeof(b)) != 1) {
        return -1;
    }
    b[0] &= 0x7f; /* positive (RFC 5280 §4.1.2.2) ... */
    b[0] |= 0x40; /* ... and 16 bytes long, never zero */
    BIGNUM *bn = BN_bin2bn(b, sizeof(b), NULL);
    int ok = bn != NULL && BN_to_ASN1_INTEGER(bn, X509_get_serialNumber(x)) != NULL;
    BN_free(bn);
    return ok ? 0 : -1;
}

/* One extension from its OpenSSL config text (the values given here are
 * ours or checked names, never free text). */
static int add_ext(X509 *x, X509V3_CTX *ctx, int nid, const char *value)
{
    X509_EXTENSION *e = X509V3_EXT_nconf_nid(NULL, ctx, nid, value);
    if (e == NULL) {
        return -1;
    }
    int ok = X509_add_ext(x, e, -1);
    X509_EXTENSION_free(e);
    return ok == 1 ? 0 : -1;
}

static const EVP_MD *sign_md(EVP_PKEY *key)
{
    int id = EVP_PKEY_base_id(key);
    return id == EVP_PKEY_ED25519 || id == EVP_PKEY_ED448 ? NULL : EVP_sha256();
}

EVP_PKEY *ca_new_key(void)
{
    EVP_PKEY *key = NULL;
    EVP_PKEY_CTX *kc = EVP_PKEY_CTX_new_id(EVP_PKEY_EC, NULL);
    if (kc == NULL || EVP_PKEY_keygen_init(kc) != 1 ||
        EVP_PKEY_CTX_set_ec_paramgen_curve_nid(kc, NID_X9_62_prime256v1) != 1 ||
        EVP_PKEY_keygen(kc, &key) != 1) {
        EVP_PKEY_free(key);
        key = NULL;
    }
    EVP_PKEY_CTX_free(kc);
    return key;
}

/* subject: "CN=a,O=b", "/CN=a/O=b", or a bare common name. */
static X509_NAME *parse_subject(const char *subject, char *err, size_t room)
{
    X509_NAME *name = X509_NAME_new();
    char *copy = strdup(subject);
    if (name == NULL || copy == NULL) {
        snprintf(err, room, "out of memory");
        goto fail;
    }
    if (strchr(copy, '=') == NULL) {
        if (X509_NAME_add_entry_by_txt(name, "CN", MBSTRING_UTF8, (unsigned char *)copy, -1, -1,
                                       0) != 1) {
            snprintf(err, room, "--subject \"%s\": %s (at most 64 characters)", subject,
                     ssl_reason());
            goto fail;
        }
        free(copy);
        return name;
    }
    const char *sep = copy[0] == '/' ? "/" : ",";
    char *save = NULL;
    for (char *part = strtok_r(copy, sep, &save); part != NULL; part = strtok_r(NULL, sep, &save)) {
        while (*part == ' ') {
            part++;
        }
        char *eq = strchr(part, '=');
        if (eq == NULL || eq == part || eq[1] == '\0') {
            snprintf(err, room, "--subject \"%s\": \"%s\" is not FIELD=value", subject, part);
            goto fail;
        }
        *eq = '\0';
        if (X509_NAME_add_entry_by_txt(name, part, MBSTRING_UTF8, (unsigned char *)eq + 1, -1, -1,
                                       0) != 1) {
            snprintf(err, room, "--subject \"%s\": field %s: %s", subject, part, ssl_reason());
            goto fail;
        }
    }
    if (X509_NAME_entry_count(name) == 0) {
        snprintf(err, room, "--subject \"%s\" names nothing", subject);
        goto fail;
    }
    free(copy);
    return name;
fail:
    free(copy);
    X509_NAME_free(name);
    return NULL;
}

/* "critical,permitted;DNS:a,...,excluded;IP:0.0.0.0/0.0.0.0,excluded;IP:::/::":
 * only the given domains, and no IP address at all (a leaf for an
 * address would escape DNS constraints otherwise). */
static char *constraints_text(const struct ca_init_opts *o)
{
    static const char tail[] = "excluded;IP:0.0.0.0/0.0.0.0,excluded;IP:::/::";
    size_t n = sizeof("critical,") + sizeof(tail);
    for (int i = 0; i < o->nnames; i++) {
        n += strlen(o->names[i]) + sizeof("permitted;DNS:,");
    }
    char *s = malloc(n);
    if (s == NULL) {
        return NULL;
    }
    size_t at = (size_t)snprintf(s, n, "critical,");
    for (int i = 0; i < o->nnames; i++) {
        at += (size_t)snprintf(s + at, n - at, "permitted;DNS:%s,", o->names[i]);
    }
    snprintf(s + at, n - at, "%s", tail);
    return s;
}

static X509 *make_ca_cert(const struct ca_init_opts *o, EVP_PKEY *key, X509_NAME *subject,
                          char *err, size_t room)
{
    X509 *x = X509_new();
    char *nc = NULL;
    if (x == NULL || X509_set_version(x, 2) != 1 || set_serial(x) != 0 ||
        X509_set_subject_name(x, subject) != 1 || X509_set_issuer_name(x, subject) != 1 ||
        X509_gmtime_adj(X509_getm_notBefore(x), -CA_LEAF_BACKDATE) == NULL ||
        X509_time_adj_ex(X509_getm_notAfter(x), o->days, 0, NULL) == NULL ||
        X509_set_pubkey(x, key) != 1) {
        snprintf(err, room, "cannot build the certificate: %s", ssl_reason());
        goto fail;
    }
    X509V3_CTX ctx;
    X509V3_set_ctx(&ctx, x, x, NULL, NULL, 0);
    /* pathlen:0: this CA signs leaves only, never another CA. */
    if (add_ext(x, &ctx, NID_basic_constraints, "critical,CA:TRUE,pathlen:0") != 0 ||
        add_ext(x, &ctx, NID_key_usage, "critical,keyCertSign,cRLSign") != 0 ||
        add_ext(x, &ctx, NID_subject_key_identifier, "hash") != 0 ||
        add_ext(x, &ctx, NID_authority_key_identifier, "keyid:always") != 0) {
        snprintf(err, room, "cannot add the CA extensions: %s", ssl_reason());
        goto fail;
    }
    if (o->nnames > 0) {
        nc = constraints_text(o);
        if (nc == NULL || add_ext(x, &ctx, NID_name_constraints, nc) != 0) {
            snprintf(err, room, "cannot add the name constraints: %s", ssl_reason());
            goto fail;
        }
    }
    if (X509_sign(x, key, EVP_sha256()) <= 0) {
        snprintf(err, room, "cannot sign the certificate: %s", ssl_reason());
        goto fail;
    }
    free(nc);
    return x;
fail:
    free(nc);
    X509_free(x);
    return NULL;
}

/* ferry ca init -------------------------------------------------------- */

/* Write what fill puts in a BIO to path, created here and never an
 * existing file (O_EXCL: a CA key is never overwritten, and O_NOFOLLOW
 * is no help to a link planted at that name).  The mode is set at
 * creation, so there is no moment the file is readable by others. */
static int write_new(const char *path, mode_t mode, int excl, X509 *cert, EVP_PKEY *key,
                     char *err, size_t room)
{
    int flags = O_WRONLY | O_CREAT | O_NOFOLLOW | O_CLOEXEC | (excl ? O_EXCL : O_TRUNC);
    int fd = open(path, flags, mode);
    if (fd == -1) {
        if (errno == EEXIST) {
            snprintf(err, room, "FERRY-7600: %s exists: refusing to overwrite a CA key "
                     "(move it away first, or choose another directory)", path);
        } else {
            snprintf(err, room, "FERRY-7601: cannot create %s: %s", path, strerror(errno));
        }
        return -1;
    }
    if (fchmod(fd, mode) == -1) { /* the umask may have taken more bits away */
        snprintf(err, room, "FERRY-7601: cannot set the mode of %s: %s", path, strerror(errno));
        close(fd);
        unlink(path);
        return -1;
    }
    BIO *b = BIO_new_fd(fd, BIO_NOCLOSE);
    int ok = b != NULL;
    if (ok && key != NULL) {
        ok = PEM_write_bio_PrivateKey(b, key, NULL, NULL, 0, NULL, NULL) == 1;
    }
    if (ok && cert != NULL) {
        ok = PEM_write_bio_X509(b, cert) == 1;
    }
    ok = ok && BIO_flush(b) == 1;
    BIO_free(b);
    ok = ok && fsync(fd) == 0;
    if (close(fd) == -1) {
        ok = 0;
    }
    if (!ok) {
        snprintf(err, room, "FERRY-7601: cannot write %s: %s", path,
                 errno != 0 ? strerror(errno) : ssl_reason());
        unlink(path);
        return -1;
    }
    return 0;
}

/* mkdir -p, each new directory 0700. */
static int make_dirs(const char *dir)
{
    char path[4096];
    if ((size_t)snprintf(path, sizeof(path), "%s", dir) >= sizeof(path)) {
        errno = ENAMETOOLONG;
        return -1;
    }
    for (char *p = path + 1; ; p++) {
        if (*p != '/' && *p != '\0') {
            continue;
        }
        char c = *p;
        *p = '\0';
        if (mkdir(path, 0700) == -1 && errno != EEXIST) {
            return -1;
        }
        *p = c;
        if (c == '\0') {
            return 0;
        }
    }
}

int ca_init(const struct ca_init_opts *o, char *err, size_t room)
{
    char keypath[4096], certpath[4096];
    if (o->days < 1 || o->days > CA_DAYS_MAX) {
        snprintf(err, room, "FERRY-7602: --days must be 1 to %d", CA_DAYS_MAX);
        return -1;
    }
    for (int i = 0; i < o->nnames; i++) {
        const char *n = o->names[i][0] == '.' ? o->names[i] + 1 : o->names[i];
        unsigned char ip[16];
        if (!dns_name(n) || ip_literal(n, ip) != 0) {
            snprintf(err, room, "FERRY-7602: --name-constraint \"%s\" is not a DNS domain "
                     "(such as example.com)", o->names[i]);
            return -1;
        }
    }
    if ((size_t)snprintf(keypath, sizeof(keypath), "%s/ca.key", o->dir) >= sizeof(keypath) ||
        (size_t)snprintf(certpath, sizeof(certpath), "%s/ca.crt", o->dir) >= sizeof(certpath)) {
        snprintf(err, room, "FERRY-7602: directory name too long");
        return -1;
    }
    if (make_dirs(o->dir) != 0) {
        snprintf(err, room, "FERRY-7601: cannot create directory %s: %s", o->dir,
                 strerror(errno));
        return -1;
    }
    if (access(keypath, F_OK) == 0) { /* say so before the work; O_EXCL decides */
        snprintf(err, room, "FERRY-7600: %s exists: refusing to overwrite a CA key "
                 "(move it away first, or choose another directory)", keypath);
        return -1;
    }
    char why[512] = "";
    int rc = -1;
    X509_NAME *subject = NULL;
    X509 *cert = NULL;
    EVP_PKEY *key = ca_new_key();
    if (key == NULL) {
        snprintf(err, room, "FERRY-7601: cannot make a P-256 key: %s", ssl_reason());
        goto out;
    }
    subject = parse_subject(o->subject != NULL ? o->subject : "CN=ferry CA,O=ferry", why,
                            sizeof(why));
    if (subject == NULL) {
        snprintf(err, room, "FERRY-7602: %s", why);
        goto out;
    }
    cert = make_ca_cert(o, key, subject, why, sizeof(why));
    if (cert == NULL) {
        snprintf(err, room, "FERRY-7601: %s", why);
        goto out;
    }
    if (write_new(keypath, 0600, 1, NULL, key, err, room) != 0) {
        goto out;
    }
    if (write_new(certpath, 0644, 0, cert, NULL, err, room) != 0) {
        unlink(keypath); /* a key without its certificate is of no use */
        goto out;
    }
    rc = 0;
out:
    X509_free(cert);
    X509_NAME_free(subject);
    EVP_PKEY_free(key);
    return rc;
}

/* Loading -------------------------------------------------------------- */

struct ca *ca_load(const char *certfile, const char *keyfile, char *err, size_t room)
{
    struct ca *ca = calloc(1, sizeof(*ca));
    if (ca == NULL) {
        snprintf(err, room, "FERRY-0180: out of memory");
        return NULL;
    }
    ca->refs = 1;
    errno = 0;
    BIO *b = BIO_new_file(certfile, "r");
    if (b == NULL) {
        snprintf(err, room, "FERRY-0180: ca_cert %s: cannot read: %s", certfile,
                 errno != 0 ? strerror(errno) : ssl_reason());
        goto fail;
    }
    ca->cert = PEM_read_bio_X509(b, NULL, tls_no_password, NULL);
    BIO_free(b);
    if (ca->cert == NULL) {
        snprintf(err, room, "FERRY-0180: ca_cert %s: not a PEM certificate (%s)", certfile,
                 ssl_reason());
        goto fail;
    }
    errno = 0;
    b = BIO_new_file(keyfile, "r");
    if (b == NULL) {
        snprintf(err, room, "FERRY-0180: ca_key %s: cannot read: %s", keyfile,
                 errno != 0 ? strerror(errno) : ssl_reason());
        goto fail;
    }
    ca->key = PEM_read_bio_PrivateKey(b, NULL, tls_no_password, NULL);
    BIO_free(b);
    if (ca->key == NULL) {
        snprintf(err, room, "FERRY-0180: ca_key %s: not an unencrypted PEM private key (%s)",
                 keyfile, ssl_reason());
        goto fail;
    }
    if (X509_check_private_key(ca->cert, ca->key) != 1) {
        ERR_clear_error();
        snprintf(err, room, "FERRY-0181: ca_key %s is not the key of ca_cert %s", keyfile,
                 certfile);
        goto fail;
    }
    uint32_t flags = X509_get_extension_flags(ca->cert);
    if (!(flags & EXFLAG_CA) ||
        ((flags & EXFLAG_KUSAGE) && !(X509_get_key_usage(ca->cert) & KU_KEY_CERT_SIGN))) {
        snprintf(err, room, "FERRY-0182: ca_cert %s is not a CA certificate (it needs "
                 "basicConstraints CA:TRUE and keyUsage keyCertSign; `ferry ca init` makes one)",
                 certfile);
        goto fail;
    }
    if (X509_cmp_current_time(X509_get0_notAfter(ca->cert)) <= 0) {
        snprintf(err, room, "FERRY-0182: ca_cert %s has expired", certfile);
        goto fail;
    }
    if (X509_cmp_current_time(X509_get0_notBefore(ca->cert)) >= 0) {
        snprintf(err, room, "FERRY-0182: ca_cert %s is not valid yet (check the clock)",
                 certfile);
        goto fail;
    }
    int crit = 0;
    ca->nc = X509_get_ext_d2i(ca->cert, NID_name_constraints, &crit, NULL);
    ERR_clear_error();
    return ca;
fail:
    ERR_clear_error();
    ca_unref(ca);
    return NULL;
}

struct ca *ca_ref(struct ca *ca)
{
    ca->refs++;
    return ca;
}

void ca_unref(struct ca *ca)
{
    if (ca == NULL || --ca->refs > 0) {
        return;
    }
    NAME_CONSTRAINTS_free(ca->nc);
    X509_free(ca->cert);
    EVP_PKEY_free(ca->key);
    free(ca);
}

int ca_same(const struct ca *a, const struct ca *b)
{
    return a != NULL && b != NULL && X509_cmp(a->cert, b->cert) == 0;
}

X509 *ca_cert(const struct ca *ca)
{
    return ca->cert;
}

/* Leaves --------------------------------------------------------------- */

/* subjectAltName: the one name, as a DNS name or an address. */
static int add_san(X509 *x, const char *name, int critical)
{
    unsigned char ip[16];
    int iplen = ip_literal(name, ip);
    GENERAL_NAMES *gens = sk_GENERAL_NAME_new_null();
    GENERAL_NAME *g = GENERAL_NAME_new();
    ASN1_OCTET_STRING *os = iplen ? ASN1_OCTET_STRING_new() : NULL;
    ASN1_IA5STRING *ia5 = iplen ? NULL : ASN1_IA5STRING_new();
    int ok = gens != NULL && g != NULL && (os != NULL || ia5 != NULL);
    if (ok && iplen) {
        ok = ASN1_OCTET_STRING_set(os, ip, iplen) == 1;
        if (ok) {
            GENERAL_NAME_set0_value(g, GEN_IPADD, os);
            os = NULL;
        }
    } else if (ok) {
        ok = ASN1_STRING_set(ia5, name, -1) == 1;
        if (ok) {
            GENERAL_NAME_set0_value(g, GEN_DNS, ia5);
            ia5 = NULL;
        }
    }
    if (ok && sk_GENERAL_NAME_push(gens, g) > 0) {
        g = NULL;
    } else {
        ok = 0;
    }
    ok = ok && X509_add1_ext_i2d(x, NID_subject_alt_name, gens, critical, X509V3_ADD_DEFAULT) == 1;
    ASN1_OCTET_STRING_free(os);
    ASN1_IA5STRING_free(ia5);
    GENERAL_NAME_free(g);
    GENERAL_NAMES_free(gens);
    return ok ? 0 : -1;
}

X509 *ca_leaf_template(EVP_PKEY *key)
{
    /* Whole and signed (by its own key), or it could not be copied. */
    X509 *x = X509_new();
    if (x == NULL || X509_set_version(x, 2) != 1 || X509_set_pubkey(x, key) != 1 ||
        ASN1_INTEGER_set(X509_get_serialNumber(x), 1) != 1 ||
        X509_gmtime_adj(X509_getm_notBefore(x), 0) == NULL ||
        X509_gmtime_adj(X509_getm_notAfter(x), 0) == NULL || X509_sign(x, key, EVP_sha256()) <= 0) {
        X509_free(x);
        ERR_clear_error();
        return NULL;
    }
    return x;
}

X509 *ca_issue(const struct ca *ca, X509 *tmpl, const char *name, time_t now,
               time_t *expires, char *err, size_t room)
{
    unsigned char ip[16];
    int literal = ip_literal(name, ip) != 0;
    if (!literal && !dns_name(name)) {
        snprintf(err, room, "FERRY-1082: cannot mint a certificate for \"%.64s\": not a host "
                 "name or an IP address", name);
        return NULL;
    }
    /* CN holds 64 characters at most (RFC 5280 ub-common-name); clients
     * read the SAN anyway, which is critical when the subject is empty. */
    int with_cn = !literal && strlen(name) <= 64;
    time_t until = now + CA_LEAF_SECS;
    const ASN1_TIME *ca_end = X509_get0_notAfter(ca->cert);
    ASN1_TIME *t_until = ASN1_TIME_set(NULL, until);
    int day = 0, sec = 0;
    if (t_until != NULL && ASN1_TIME_diff(&day, &sec, ca_end, t_until) == 1 &&
        (day > 0 || sec > 0)) {
        /* never past the CA's own end: until - (days, secs past it) */
        until -= (time_t)day * 86400 + sec;
    }
    ASN1_TIME_free(t_until);
    X509 *x = X509_dup(tmpl);
    X509_NAME *subj = X509_NAME_new();
    int ok = x != NULL && subj != NULL && set_serial(x) == 0 &&
             X509_set_issuer_name(x, X509_get_subject_name(ca->cert)) == 1 &&
             ASN1_TIME_set(X509_getm_notBefore(x), now - CA_LEAF_BACKDATE) != NULL &&
             ASN1_TIME_set(X509_getm_notAfter(x), until) != NULL;
    if (ok && with_cn) {
        ok = X509_NAME_add_entry_by_NID(subj, NID_commonName, MBSTRING_ASC,
                                        (const unsigned char *)name, -1, -1, 0) == 1;
    }
    ok = ok && X509_set_subject_name(x, subj) == 1;
    X509_NAME_free(subj);
    X509V3_CTX ctx;
    if (ok) {
        X509V3_set_ctx(&ctx, ca->cert, x, NULL, NULL, 0);
        ok = add_ext(x, &ctx, NID_basic_constraints, "critical,CA:FALSE") == 0 &&
             add_ext(x, &ctx, NID_key_usage, "critical,digitalSignature") == 0 &&
             add_ext(x, &ctx, NID_ext_key_usage, "serverAuth") == 0 &&
             add_ext(x, &ctx, NID_subject_key_identifier, "hash") == 0 &&
             add_ext(x, &ctx, NID_authority_key_identifier, "keyid:always") == 0 &&
             add_san(x, name, !with_cn) == 0;
    }
    ok = ok && X509_sign(x, ca->key, sign_md(ca->key)) > 0;
    if (!ok) {
        snprintf(err, room, "FERRY-1082: cannot mint a certificate for %s: %s", name,
                 ssl_reason());
        X509_free(x);
        return NULL;
    }
    *expires = until;
    return x;
}

int ca_permits(const struct ca *ca, X509 *leaf, char *err, size_t room)
{
    if (ca->nc == NULL) {
        return 0;
    }
    (void)X509_get_extension_flags(leaf); /* fills the SAN cache the check reads */
    int r = NAME_CONSTRAINTS_check(leaf, ca->nc);
    ERR_clear_error();
    if (r == X509_V_OK) {
        return 0;
    }
    snprintf(err, room, "FERRY-1082: the name is outside the name constraints of ferry's CA "
             "(clients would refuse its certificate): %s", X509_verify_cert_error_string(r));
    return -1;
}
