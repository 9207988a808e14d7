/* store_seal.c - proxy credentials sealed in the store (store.h).
 *
 * With a key (store { key = ... } or key_file), every stored value that
 * carries credentials -- a value with an "@", i.e. a proxy URL with
 * userinfo -- is kept sealed (secret.h): proxies.url with a random nonce;
 * proxies.key and health.key, which are looked up by equality, with a
 * nonce derived from the value.  Ids and URLs without credentials stay
 * readable for an operator's sqlite3 shell.
 *
 * meta.key_check holds a sealed constant: opening it proves the key is
 * the one the store was sealed with, before any row is read.  A sealed
 * store has schema version 2, so a ferry that knows nothing of keys
 * refuses it instead of handing out ciphertext as URLs.  Opening a
 * plaintext store with a key seals its rows in the opening transaction;
 * opening a sealed store without a key, or with another key, fails. */
#include "store.h"
#include "log.h"

#include <sqlite3.h>
#include <stdlib.h>
#include <string.h>

static const char key_check_text[] = "ferry store key check";

/* Whether a value carries credentials and is not sealed yet. */
static int needs_seal(const char *v)
{
    return v != NULL && strchr(v, '@') != NULL && !secret_is_sealed(v);
}

const char *store_sealed(const struct secret_key *k, const char *v, int deterministic,
                         char **owned)
{
    *owned = NULL;
    if (k == NULL || !needs_seal(v)) {
        return v;
    }
    *owned = secret_seal(k, v, deterministic);
    return *owned;
}

int store_opened(const struct secret_key *k, const char *v, const char **out, char **owned)
{
    *owned = NULL;
    *out = v;
    if (!secret_is_sealed(v)) {
        return 0;
    }
    if (k == NULL) {
        return -1;
    }
    int rc = secret_open(k, v, owned);
    *out = *owned;
    return rc;
}

/* SQL: ferry_seal(value, deterministic) -> the value as stored. */
static void sql_seal(sqlite3_context *ctx, int argc, sqlite3_value **argv)
{
    const struct secret_key *k = sqlite3_user_data(ctx);
    const char *v = (const char *)sqlite3_value_text(argv[0]);
    char *owned = NULL;
    const char *out = store_sealed(k, v, sqlite3_value_int(argv[1]), &owned);
    if (out == NULL && v != NULL) {
        sqlite3_result_error_nomem(ctx);
        return;
    }
    sqlite3_result_text(ctx, out, -1, SQLITE_TRANSIENT);
    free(owned);
}

static void free_key(void *p)
{
    secret_key_wipe(p);
    free(p);
}

/* Seal what is not sealed yet: runtime proxies' URLs and keys, and the
 * health rows of any proxy keyed by its URL.  Returns the rows changed,
 * or -1 with the SQLite error code in *rc. */
static int seal_rows(sqlite3 *h, const struct secret_key *k, int *rc)
{
    static const char *const sqls[] = {
        "UPDATE proxies SET url = ferry_seal(url, 0)"
        " WHERE instr(url, '@') > 0 AND substr(url, 1, 7) <> 'enc:v1:'",
        "UPDATE proxies SET key = ferry_seal(key, 1)"
        " WHERE instr(key, '@') > 0 AND substr(key, 1, 7) <> 'enc:v1:'",
        "UPDATE OR REPLACE health SET key = ferry_seal(key, 1)"
        " WHERE instr(key, '@') > 0 AND substr(key, 1, 7) <> 'enc:v1:'",
    };
    struct secret_key *copy = malloc(sizeof(*copy));
    if (copy == NULL) {
        *rc = SQLITE_NOMEM;
        return -1;
    }
    memcpy(copy, k, sizeof(*copy));
    *rc = sqlite3_create_function_v2(h, "ferry_seal", 2, SQLITE_UTF8, copy, sql_seal, NULL,
                                     NULL, free_key);
    if (*rc != SQLITE_OK) {
        return -1; /* v2 has called free_key already */
    }
    int changed = 0;
    for (size_t i = 0; i < sizeof(sqls) / sizeof(sqls[0]) && *rc == SQLITE_OK; i++) {
        *rc = sqlite3_exec(h, sqls[i], NULL, NULL, NULL);
        changed += sqlite3_changes(h);
    }
    /* Unregistered: the function holds the key, no longer than needed. */
    sqlite3_create_function_v2(h, "ferry_seal", 2, SQLITE_UTF8, NULL, NULL, NULL, NULL, NULL);
    return *rc == SQLITE_OK ? changed : -1;
}

/* meta.key_check of h (malloc'd), or NULL with *rc (SQLITE_OK: absent). */
static char *read_key_check(sqlite3 *h, int *rc)
{
    sqlite3_stmt *st = NULL;
    char *out = NULL;
    *rc = sqlite3_prepare_v2(h, "SELECT value FROM meta WHERE key = 'key_check'", -1, &st, NULL);
    if (*rc != SQLITE_OK) {
        return NULL;
    }
    *rc = sqlite3_step(st);
    if (*rc == SQLITE_ROW) {
        const unsigned char *t = sqlite3_column_text(st, 0);
        out = strdup(t != NULL ? (const char *)t : "");
        *rc = out != NULL ? SQLITE_OK : SQLITE_NOMEM;
    } else if (*rc == SQLITE_DONE) {
        *rc = SQLITE_OK;
    }
    sqlite3_finalize(st);
    return out;
}

/* Does the key open the store's check value? */
static int key_matches(const struct secret_key *k, const char *check)
{
    char *plain = NULL;
    int ok = secret_open(k, check, &plain) == 0 && strcmp(plain, key_check_text) == 0;
    free(plain);
    return ok;
}

static int write_key_check(sqlite3 *h, const struct secret_key *k)
{
    char *sealed = secret_seal(k, key_check_text, 0);
    sqlite3_stmt *st = NULL;
    if (sealed == NULL) {
        return SQLITE_NOMEM;
    }
    int rc = sqlite3_prepare_v2(h,
        "INSERT OR REPLACE INTO meta(key, value) VALUES('key_check', ?1),"
        " ('schema_version', ?2)", -1, &st, NULL);
    if (rc == SQLITE_OK) {
        sqlite3_bind_text(st, 1, sealed, -1, SQLITE_STATIC);
        sqlite3_bind_int(st, 2, STORE_SCHEMA_SEALED);
        rc = sqlite3_step(st);
        rc = rc == SQLITE_DONE ? SQLITE_OK : rc;
    }
    sqlite3_finalize(st);
    free(sealed);
    return rc;
}

int store_seal_init(sqlite3 *h, const char *path, long version, const struct secret_key *k,
                    const char **err)
{
    int rc;
    char *check = read_key_check(h, &rc);
    if (rc != SQLITE_OK) {
        return store_sql_fail(err, path, h, rc, "reading the key check");
    }
    int sealed = check != NULL || version >= STORE_SCHEMA_SEALED;
    if (k == NULL) {
        free(check);
        if (sealed) {
            return store_fail(err, "FERRY-0211: store %s holds credentials sealed with a key, "
                              "and the config gives none (store { key = ... } or key_file)",
                              path);
        }
        return FERRY_OK;
    }
    if (sealed && (check == NULL || !key_matches(k, check))) {
        free(check);
        return store_fail(err, "FERRY-0212: store %s was sealed with another key than the one "
                          "configured; nothing was read (give the store's key, or restore a "
                          "backup)", path);
    }
    free(check);
    int changed = seal_rows(h, k, &rc);
    if (changed < 0) {
        return store_sql_fail(err, path, h, rc, "sealing credentials");
    }
    if (!sealed) {
        rc = write_key_check(h, k);
        if (rc != SQLITE_OK) {
            return store_sql_fail(err, path, h, rc, "writing the key check");
        }
    }
    if (changed > 0 || !sealed) {
        log_event(LOG_INFO, "FERRY-0213", NULL,
                  "store %s: credentials are sealed with the configured key (%d %s sealed now)",
                  path, changed, changed == 1 ? "value" : "values");
    }
    return FERRY_OK;
}
