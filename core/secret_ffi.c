/* secret_ffi.c - sealing for Lua: the PostgreSQL store (lua/ferry/store_pg.lua)
 * seals a proxy URL that carries credentials with the store's key, in the
 * same form as the SQLite store (store_seal.c), so every node that has
 * the key opens it and the database never holds the password in clear. */
#include "ferry.h"
#include "secret.h"

#include <stdlib.h>
#include <string.h>

/* The derived keys of master (32 bytes): 0, or -1. */
static int derive(struct secret_key *k, const char *master, size_t len)
{
    if (master == NULL || len != SECRET_KEY_LEN) {
        return -1;
    }
    return secret_key_derive(k, (const unsigned char *)master, len);
}

char *ferry_secret_seal_text(const char *key, size_t key_len, const char *plain, int deterministic)
{
    struct secret_key k;
    if (plain == NULL || derive(&k, key, key_len) != 0) {
        return NULL;
    }
    char *out = secret_seal(&k, plain, deterministic);
    secret_key_wipe(&k);
    return out;
}

int ferry_secret_open_text(const char *key, size_t key_len, const char *sealed, char **plain)
{
    struct secret_key k;
    *plain = NULL;
    if (sealed == NULL || derive(&k, key, key_len) != 0) {
        return -1;
    }
    int rc = secret_open(&k, sealed, plain);
    secret_key_wipe(&k);
    return rc;
}

int ferry_secret_is_sealed(const char *s)
{
    return s != NULL && secret_is_sealed(s);
}

void ferry_secret_free(char *p)
{
    if (p != NULL) {
        /* An opened value is a URL with a password: wiped before it goes. */
        memset(p, 0, strlen(p));
        free(p);
    }
}
