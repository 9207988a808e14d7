/* ca.h - ferry's own certificate authority: made by `ferry ca init`,
 * loaded from tls { ca_cert, ca_key }, and the issuer of the short-lived
 * leaf certificates that intercepted client connections are shown
 * (mint.c keeps them; ca_cli.c is the command line).
 *
 * Nothing here touches the event loop or writes anything but the files
 * `ferry ca init` is asked to write.  Errors come back as text in the
 * caller's buffer, starting with their FERRY code. */
#ifndef FERRY_CA_H
#define FERRY_CA_H

#include <stddef.h>
#include <time.h>

struct x509_st;
struct evp_pkey_st;

/* A loaded CA: its certificate and key, shared by reference (a reload
 * may load a new one while handshakes still hold the old). */
struct ca;

/* What `ferry ca init` makes. */
struct ca_init_opts {
    const char *dir;          /* writes dir/ca.key and dir/ca.crt */
    const char *subject;      /* "CN=...,O=..." or "/CN=.../O=...", or a bare CN; NULL: default */
    int days;                 /* validity, 1..36500 */
    const char *const *names; /* permitted DNS subtrees (name constraints), or NULL */
    int nnames;
};

#define CA_DAYS_DEFAULT 3650
#define CA_DAYS_MAX 36500
#define CA_LEAF_SECS 86400    /* a leaf lives a day ... */
#define CA_LEAF_BACKDATE 3600 /* ... from an hour ago (clients with a slow clock) */

/* Write a new CA into o->dir.  0, or -1 with the reason in err. */
int ca_init(const struct ca_init_opts *o, char *err, size_t room);

/* Load and check a CA: both files PEM, an unencrypted key that matches
 * the certificate, a certificate that is a CA (basicConstraints CA:TRUE,
 * keyUsage keyCertSign when present) valid now.  NULL and err on failure. */
struct ca *ca_load(const char *cert, const char *key, char *err, size_t room);
struct ca *ca_ref(struct ca *ca);
void ca_unref(struct ca *ca);
/* 1 when a and b are the same certificate with the same key. */
int ca_same(const struct ca *a, const struct ca *b);
struct x509_st *ca_cert(const struct ca *ca);

/* The start of every leaf for key: a version 3 certificate carrying its
 * public half, or NULL.  Leaves are copies of it: setting a provider's
 * key on a certificate encodes and decodes it again (most of a mint's
 * cost with OpenSSL 3), copying an encoded one does not. */
struct x509_st *ca_leaf_template(struct evp_pkey_st *key);

/* A leaf for name (a DNS name, lower case, or an IP literal), a copy of
 * tmpl (its key), valid from now - CA_LEAF_BACKDATE for CA_LEAF_SECS but
 * never past the CA's own end; *expires gets its notAfter.  NULL and
 * err on failure (a name that is neither). */
struct x509_st *ca_issue(const struct ca *ca, struct x509_st *tmpl, const char *name,
                         time_t now, time_t *expires, char *err, size_t room);

/* 0 when the CA's name constraints (if any) allow leaf, as clients will
 * check them; -1 and err otherwise. */
int ca_permits(const struct ca *ca, struct x509_st *leaf, char *err, size_t room);

/* `ferry ca ...` (ca_cli.c): argv after "ca".  The exit code. */
int ca_main(int argc, char **argv);

/* A new ECDSA P-256 key, or NULL. */
struct evp_pkey_st *ca_new_key(void);

#endif
