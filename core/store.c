/* store.c - the embedded SQLite store (see store.h for the API).
 *
 * One connection for the process, opened by ferry_store_open() and kept
 * until ferry_store_close().  WAL mode: readers (an operator's sqlite3
 * shell) never block us and we never block them; writers wait at most
 * STORE_BUSY_TIMEOUT_MS, then fail with a message rather than stall the
 * loop.  Opening is strict: a file that is not a database, a corrupt
 * one, a read-only one or one another process holds locked is an error
 * naming the path, never recreated, truncated or repaired behind the
 * operator's back.
 *
 * Schema version 1:
 *   meta    (key TEXT PRIMARY KEY, value TEXT)   -- schema_version
 *   proxies (key TEXT PRIMARY KEY, url TEXT NOT NULL, pool TEXT,
 *            opts TEXT NOT NULL, enabled INTEGER NOT NULL, added_at REAL NOT NULL)
 *   health  (key TEXT PRIMARY KEY, up INTEGER, health_counter INTEGER,
 *            consecutive_failures INTEGER, latency_ewma_ms REAL,
 *            successes INTEGER, failures INTEGER, saved_at REAL)
 * Schema version 2: the same tables, with values that carry credentials
 * sealed and meta.key_check set (store_seal.c).
 */
#include "store.h"
#include "health.h"
#include "proxy.h"

#include <math.h>
#include <openssl/crypto.h>
#include <openssl/sha.h>
#include <sqlite3.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

static sqlite3 *db;       /* the open store, or NULL */
static char *db_path;     /* its path as given to ferry_store_open */
static char errbuf[1024]; /* the last error message */
static char *json_out;    /* the last ferry_store_proxies_json() answer */
static struct secret_key skey; /* derived from the store's key, when keyed */
static int keyed;              /* the open store has a key: values are sealed */
static unsigned char key_id[SHA256_DIGEST_LENGTH]; /* SHA-256 of that key */

/* The key of the open store, or NULL. */
static const struct secret_key *the_key(void)
{
    return keyed ? &skey : NULL;
}

/* Free a JSON answer that may hold credentials. */
static void free_secret_text(char *p, size_t n)
{
    if (p != NULL) {
        OPENSSL_cleanse(p, n);
        free(p);
    }
}

static const char *const schema_sql =
    "CREATE TABLE IF NOT EXISTS meta ("
    "  key TEXT PRIMARY KEY, value TEXT);"
    "CREATE TABLE IF NOT EXISTS proxies ("
    "  key TEXT PRIMARY KEY, url TEXT NOT NULL, pool TEXT, opts TEXT NOT NULL,"
    "  enabled INTEGER NOT NULL, added_at REAL NOT NULL);"
    "CREATE TABLE IF NOT EXISTS health ("
    "  key TEXT PRIMARY KEY, up INTEGER NOT NULL, health_counter INTEGER NOT NULL,"
    "  consecutive_failures INTEGER NOT NULL, latency_ewma_ms REAL NOT NULL,"
    "  successes INTEGER NOT NULL, failures INTEGER NOT NULL, saved_at REAL NOT NULL);";

int store_fail(const char **err, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(errbuf, sizeof(errbuf), fmt, ap);
    va_end(ap);
    if (err != NULL) {
        *err = errbuf;
    }
    return FERRY_ERROR;
}

static double wall_now(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

/* An SQLite failure of `what` on the store at path, in words an operator
 * can act on. */
int store_sql_fail(const char **err, const char *path, sqlite3 *h, int rc, const char *what)
{
    const char *msg = h != NULL ? sqlite3_errmsg(h) : sqlite3_errstr(rc);
    switch (rc & 0xff) {
    case SQLITE_BUSY:
    case SQLITE_LOCKED:
        return store_fail(err, "store %s: database is locked by another process (%s: %s)", path,
                          what, msg);
    case SQLITE_NOTADB:
    case SQLITE_CORRUPT:
        return store_fail(err, "store %s: not a SQLite database, or corrupt (%s: %s); refusing to "
                          "use it: restore a backup or move the file aside", path, what, msg);
    case SQLITE_READONLY:
    case SQLITE_PERM:
        return store_fail(err, "store %s: read-only (%s: %s)", path, what, msg);
    default:
        return store_fail(err, "store %s: %s: %s", path, what, msg);
    }
}

/* Run sql and return the text of the first column of its first row
 * (copied into out), or "" when it returns no row. */
static int query_text(sqlite3 *h, const char *sql, char *out, size_t room)
{
    sqlite3_stmt *st = NULL;
    int rc = sqlite3_prepare_v2(h, sql, -1, &st, NULL);
    if (rc != SQLITE_OK) {
        return rc;
    }
    out[0] = '\0';
    rc = sqlite3_step(st);
    if (rc == SQLITE_ROW) {
        const unsigned char *t = sqlite3_column_text(st, 0);
        snprintf(out, room, "%s", t != NULL ? (const char *)t : "");
        while ((rc = sqlite3_step(st)) == SQLITE_ROW) {
            /* drain: quick_check may list several problems */
        }
    }
    sqlite3_finalize(st);
    return rc == SQLITE_DONE ? SQLITE_OK : rc;
}

/* Check, migrate and lock-test an opened handle. */
static int init_db(sqlite3 *h, const char *path, const struct secret_key *k,
                   const char **err)
{
    char buf[512];
    int rc;

    if (sqlite3_db_readonly(h, "main") == 1) {
        return store_fail(err, "store %s: file is read-only", path);
    }
    sqlite3_extended_result_codes(h, 1);
    sqlite3_busy_timeout(h, STORE_BUSY_TIMEOUT_MS);

    /* The first read: a file that is not a database fails here, before
     * anything is written to it. */
    rc = query_text(h, "PRAGMA quick_check", buf, sizeof(buf));
    if (rc != SQLITE_OK) {
        return store_sql_fail(err, path, h, rc, "quick_check");
    }
    if (strcmp(buf, "ok") != 0) {
        return store_fail(err, "store %s: database is corrupt (quick_check: %s); refusing to use "
                          "it: restore a backup or move the file aside", path, buf);
    }

    rc = query_text(h, "PRAGMA journal_mode=WAL", buf, sizeof(buf));
    if (rc != SQLITE_OK) {
        return store_sql_fail(err, path, h, rc, "setting WAL mode");
    }
    if (strcmp(buf, "wal") != 0) {
        return store_fail(err, "store %s: cannot use WAL mode (journal_mode is %s)", path, buf);
    }
    rc = sqlite3_exec(h, "PRAGMA synchronous=NORMAL", NULL, NULL, NULL);
    if (rc != SQLITE_OK) {
        return store_sql_fail(err, path, h, rc, "setting synchronous");
    }

    /* Take the write lock once: a database another process holds fails
     * now, at start, not on the first write. */
    rc = sqlite3_exec(h, "BEGIN IMMEDIATE", NULL, NULL, NULL);
    if (rc != SQLITE_OK) {
        return store_sql_fail(err, path, h, rc, "taking the write lock");
    }
    rc = query_text(h, "SELECT (SELECT count(*) FROM sqlite_master WHERE type='table' "
                    "AND name='meta') || ' ' || (SELECT count(*) FROM sqlite_master)",
                    buf, sizeof(buf));
    if (rc != SQLITE_OK) {
        store_sql_fail(err, path, h, rc, "reading the schema");
        goto rollback;
    }
    if (strncmp(buf, "0 ", 2) == 0 && strcmp(buf, "0 0") != 0) {
        store_fail(err, "store %s: a SQLite database that is not a ferry store (no meta table); "
                   "refusing to use it", path);
        goto rollback;
    }
    rc = sqlite3_exec(h, schema_sql, NULL, NULL, NULL);
    if (rc != SQLITE_OK) {
        store_sql_fail(err, path, h, rc, "creating the schema");
        goto rollback;
    }
    rc = query_text(h, "SELECT value FROM meta WHERE key='schema_version'", buf, sizeof(buf));
    if (rc != SQLITE_OK) {
        store_sql_fail(err, path, h, rc, "reading the schema version");
        goto rollback;
    }
    long v = STORE_SCHEMA_PLAIN;
    if (buf[0] == '\0') {
        char sql[128];
        snprintf(sql, sizeof(sql),
                 "INSERT INTO meta(key, value) VALUES('schema_version', '%d')",
                 STORE_SCHEMA_PLAIN);
        rc = sqlite3_exec(h, sql, NULL, NULL, NULL);
        if (rc != SQLITE_OK) {
            store_sql_fail(err, path, h, rc, "writing the schema version");
            goto rollback;
        }
    } else {
        char *end = NULL;
        v = strtol(buf, &end, 10);
        if (end == buf || *end != '\0' || v < 1) {
            store_fail(err, "store %s: bad schema version '%s'", path, buf);
            goto rollback;
        }
        if (v > STORE_SCHEMA_VERSION) {
            store_fail(err, "store %s: schema version %ld is newer than this ferry knows (%d)",
                       path, v, STORE_SCHEMA_VERSION);
            goto rollback;
        }
        /* 1 -> 2 is sealing, below; other migrations go here. */
    }
    if (store_seal_init(h, path, v, k, err) != FERRY_OK) {
        goto rollback;
    }
    rc = sqlite3_exec(h, "COMMIT", NULL, NULL, NULL);
    if (rc != SQLITE_OK) {
        store_sql_fail(err, path, h, rc, "committing the schema");
        goto rollback;
    }
    return FERRY_OK;

rollback:
    if (!sqlite3_get_autocommit(h)) {
        sqlite3_exec(h, "ROLLBACK", NULL, NULL, NULL);
    }
    return FERRY_ERROR;
}

int ferry_store_open(const char *path, const char **err)
{
    return ferry_store_open_key(path, NULL, 0, err);
}

int ferry_store_open_key(const char *path, const char *key, size_t key_len, const char **err)
{
    if (path == NULL || *path == '\0') {
        return store_fail(err, "store: empty path");
    }
    if (key != NULL && key_len != SECRET_KEY_LEN) {
        return store_fail(err, "FERRY-0210: store %s: the key must be %d bytes, got %zu", path,
                          SECRET_KEY_LEN, key_len);
    }
    unsigned char id[SHA256_DIGEST_LENGTH] = { 0 };
    if (key != NULL) {
        SHA256((const unsigned char *)key, key_len, id);
    }
    if (db != NULL && strcmp(db_path, path) == 0 && keyed == (key != NULL) &&
        CRYPTO_memcmp(id, key_id, sizeof(id)) == 0) {
        return FERRY_OK;
    }
    struct secret_key k;
    memset(&k, 0, sizeof(k));
    if (key != NULL && secret_key_derive(&k, (const unsigned char *)key, key_len) != 0) {
        return store_fail(err, "FERRY-0210: store %s: cannot derive keys (libcrypto)", path);
    }
    if (store_make_parents(path, err) != FERRY_OK || store_prepare_file(path, err) != FERRY_OK) {
        goto fail;
    }
    char *copy = strdup(path);
    if (copy == NULL) {
        store_fail(err, "store %s: out of memory", path);
        goto fail;
    }
    sqlite3 *h = NULL;
    int rc = sqlite3_open_v2(path, &h, SQLITE_OPEN_READWRITE | SQLITE_OPEN_NOMUTEX, NULL);
    if (rc != SQLITE_OK) {
        store_sql_fail(err, path, h, rc, "open");
        sqlite3_close(h);
        free(copy);
        goto fail;
    }
    if (init_db(h, path, key != NULL ? &k : NULL, err) != FERRY_OK) {
        sqlite3_close(h);
        free(copy);
        goto fail;
    }
    store_narrow_mode(path);
    ferry_store_close();
    db = h;
    db_path = copy;
    if (key != NULL) {
        skey = k;
        keyed = 1;
        memcpy(key_id, id, sizeof(id));
    }
    secret_key_wipe(&k);
    return FERRY_OK;

fail:
    secret_key_wipe(&k);
    return FERRY_ERROR;
}

void ferry_store_close(void)
{
    if (json_out != NULL) {
        free_secret_text(json_out, strlen(json_out));
    }
    json_out = NULL;
    if (db != NULL) {
        sqlite3_close(db);
        db = NULL;
    }
    free(db_path);
    db_path = NULL;
    secret_key_wipe(&skey);
    OPENSSL_cleanse(key_id, sizeof(key_id));
    keyed = 0;
}

int ferry_store_is_open(void)
{
    return db != NULL;
}

/* Helpers for the calls on the open store ------------------------------ */

static int need_open(const char **err)
{
    if (db == NULL) {
        return store_fail(err, "store: not open");
    }
    return FERRY_OK;
}

static int run_fail(const char **err, int rc, const char *what)
{
    int r = store_sql_fail(err, db_path, db, rc, what);
    if (!sqlite3_get_autocommit(db)) {
        sqlite3_exec(db, "ROLLBACK", NULL, NULL, NULL);
    }
    return r;
}

static int begin(const char *how, const char **err, const char *what)
{
    int rc = sqlite3_exec(db, how, NULL, NULL, NULL);
    return rc == SQLITE_OK ? FERRY_OK : run_fail(err, rc, what);
}

static int commit(const char **err, const char *what)
{
    int rc = sqlite3_exec(db, "COMMIT", NULL, NULL, NULL);
    return rc == SQLITE_OK ? FERRY_OK : run_fail(err, rc, what);
}

static int64_t clamp_i64(uint64_t v)
{
    return v > (uint64_t)INT64_MAX ? INT64_MAX : (int64_t)v;
}

/* Proxies ----------------------------------------------------------------- */

/* Bind v as it is stored: sealed when the store has a key and v carries
 * credentials (deterministic: for values looked up by equality). */
static int bind_stored(sqlite3_stmt *st, int col, const char *v, int deterministic)
{
    char *owned = NULL;
    const char *k = store_sealed(the_key(), v, deterministic, &owned);
    int rc = k != NULL ? sqlite3_bind_text(st, col, k, -1, SQLITE_TRANSIENT) : SQLITE_NOMEM;
    if (owned != NULL) {
        OPENSSL_cleanse(owned, strlen(owned));
        free(owned);
    }
    return rc;
}

int ferry_store_put_proxy(const char *key, const char *url, const char *pool,
                          const char *opts_json, int enabled, const char **err)
{
    if (need_open(err) != FERRY_OK) {
        return FERRY_ERROR;
    }
    if (key == NULL || *key == '\0' || url == NULL || *url == '\0') {
        return store_fail(err, "store: put_proxy needs a key and a url");
    }
    const char *opts = opts_json != NULL && *opts_json != '\0' ? opts_json : "{}";
    if (begin("BEGIN IMMEDIATE", err, "put proxy") != FERRY_OK) {
        return FERRY_ERROR;
    }
    sqlite3_stmt *st = NULL;
    int rc = sqlite3_prepare_v2(db, "SELECT json_valid(?1)", -1, &st, NULL);
    if (rc != SQLITE_OK) {
        return run_fail(err, rc, "put proxy");
    }
    sqlite3_bind_text(st, 1, opts, -1, SQLITE_STATIC);
    rc = sqlite3_step(st);
    int valid = rc == SQLITE_ROW && sqlite3_column_int(st, 0) == 1;
    sqlite3_finalize(st);
    if (!valid) {
        if (rc != SQLITE_ROW) {
            return run_fail(err, rc, "put proxy");
        }
        sqlite3_exec(db, "ROLLBACK", NULL, NULL, NULL);
        return store_fail(err, "store: put_proxy: opts is not valid JSON");
    }
    rc = sqlite3_prepare_v2(db,
        "INSERT INTO proxies(key, url, pool, opts, enabled, added_at)"
        " VALUES(?1, ?2, ?3, ?4, ?5, ?6)"
        " ON CONFLICT(key) DO UPDATE SET url = excluded.url, pool = excluded.pool,"
        " opts = excluded.opts, enabled = excluded.enabled", -1, &st, NULL);
    if (rc != SQLITE_OK) {
        return run_fail(err, rc, "put proxy");
    }
    if (bind_stored(st, 1, key, 1) != SQLITE_OK || bind_stored(st, 2, url, 0) != SQLITE_OK) {
        sqlite3_finalize(st);
        return run_fail(err, SQLITE_NOMEM, "put proxy");
    }
    if (pool != NULL) {
        sqlite3_bind_text(st, 3, pool, -1, SQLITE_STATIC);
    } else {
        sqlite3_bind_null(st, 3);
    }
    sqlite3_bind_text(st, 4, opts, -1, SQLITE_STATIC);
    sqlite3_bind_int(st, 5, enabled ? 1 : 0);
    sqlite3_bind_double(st, 6, wall_now());
    rc = sqlite3_step(st);
    sqlite3_finalize(st);
    if (rc != SQLITE_DONE) {
        return run_fail(err, rc, "put proxy");
    }
    return commit(err, "put proxy");
}

int ferry_store_delete_proxy(const char *key, const char **err)
{
    if (need_open(err) != FERRY_OK) {
        return FERRY_ERROR;
    }
    if (key == NULL || *key == '\0') {
        return store_fail(err, "store: delete_proxy needs a key");
    }
    if (begin("BEGIN IMMEDIATE", err, "delete proxy") != FERRY_OK) {
        return FERRY_ERROR;
    }
    static const char *const sqls[] = {
        "DELETE FROM proxies WHERE key = ?1",
        "DELETE FROM health WHERE key = ?1",
    };
    for (size_t i = 0; i < sizeof(sqls) / sizeof(sqls[0]); i++) {
        sqlite3_stmt *st = NULL;
        int rc = sqlite3_prepare_v2(db, sqls[i], -1, &st, NULL);
        if (rc != SQLITE_OK) {
            return run_fail(err, rc, "delete proxy");
        }
        rc = bind_stored(st, 1, key, 1);
        rc = rc == SQLITE_OK ? sqlite3_step(st) : rc;
        sqlite3_finalize(st);
        if (rc != SQLITE_DONE) {
            return run_fail(err, rc, "delete proxy");
        }
    }
    return commit(err, "delete proxy");
}

int ferry_store_set_enabled(const char *key, int enabled, const char **err)
{
    if (need_open(err) != FERRY_OK) {
        return FERRY_ERROR;
    }
    if (key == NULL || *key == '\0') {
        return store_fail(err, "store: set_enabled needs a key");
    }
    sqlite3_stmt *st = NULL;
    /* One statement: autocommit makes it its own transaction. */
    int rc = sqlite3_prepare_v2(db, "UPDATE proxies SET enabled = ?2 WHERE key = ?1", -1, &st,
                                NULL);
    if (rc != SQLITE_OK) {
        return run_fail(err, rc, "set enabled");
    }
    rc = bind_stored(st, 1, key, 1);
    sqlite3_bind_int(st, 2, enabled ? 1 : 0);
    rc = rc == SQLITE_OK ? sqlite3_step(st) : rc;
    sqlite3_finalize(st);
    if (rc != SQLITE_DONE) {
        return run_fail(err, rc, "set enabled");
    }
    if (sqlite3_changes(db) == 0) {
        /* A key with credentials is a URL: never in a message. */
        return store_fail(err, "store: no proxy with key %s",
                          strchr(key, '@') != NULL ? "(a URL with credentials)" : key);
    }
    return FERRY_OK;
}

/* A growing string for the JSON answer. */
struct sbuf {
    char *p;
    size_t n, cap;
    int oom;
};

static void sb_add(struct sbuf *b, const char *s, size_t n)
{
    if (b->oom) {
        return;
    }
    if (b->n + n + 1 > b->cap) {
        size_t cap = b->cap ? b->cap : 4096;
        while (b->n + n + 1 > cap) {
            cap *= 2;
        }
        char *fresh = realloc(b->p, cap);
        if (fresh == NULL) {
            b->oom = 1;
            return;
        }
        b->p = fresh;
        b->cap = cap;
    }
    memcpy(b->p + b->n, s, n);
    b->n += n;
    b->p[b->n] = '\0';
}

static void sb_str(struct sbuf *b, const char *s)
{
    sb_add(b, s, strlen(s));
}

/* A JSON string, or null for NULL.  Bytes >= 0x80 pass through (UTF-8). */
static void sb_json_string(struct sbuf *b, const unsigned char *s)
{
    if (s == NULL) {
        sb_str(b, "null");
        return;
    }
    sb_add(b, "\"", 1);
    const unsigned char *run = s;
    for (; *s != '\0'; s++) {
        const char *esc = NULL;
        char u[8];
        switch (*s) {
        case '"': esc = "\\\""; break;
        case '\\': esc = "\\\\"; break;
        case '\b': esc = "\\b"; break;
        case '\f': esc = "\\f"; break;
        case '\n': esc = "\\n"; break;
        case '\r': esc = "\\r"; break;
        case '\t': esc = "\\t"; break;
        default:
            if (*s < 0x20 || *s == 0x7f) {
                snprintf(u, sizeof(u), "\\u%04x", *s);
                esc = u;
            }
        }
        if (esc != NULL) {
            sb_add(b, (const char *)run, (size_t)(s - run));
            sb_str(b, esc);
            run = s + 1;
        }
    }
    sb_add(b, (const char *)run, (size_t)(s - run));
    sb_add(b, "\"", 1);
}

/* A stored text value as a JSON string, opened when sealed; -1 when it
 * does not open (nothing is added then), -2 out of memory. */
static int sb_stored(struct sbuf *b, const unsigned char *v)
{
    const char *plain = NULL;
    char *owned = NULL;
    int rc = store_opened(the_key(), (const char *)v, &plain, &owned);
    if (rc == 0) {
        sb_json_string(b, (const unsigned char *)plain);
    }
    if (owned != NULL) {
        OPENSSL_cleanse(owned, strlen(owned));
        free(owned);
    }
    return rc;
}

const char *ferry_store_proxies_json(const char **err)
{
    if (need_open(err) != FERRY_OK) {
        return NULL;
    }
    sqlite3_stmt *st = NULL;
    int rc = sqlite3_prepare_v2(db,
        "SELECT key, url, pool, CASE WHEN json_valid(opts) THEN opts END, enabled, added_at"
        " FROM proxies ORDER BY added_at, key", -1, &st, NULL);
    if (rc != SQLITE_OK) {
        run_fail(err, rc, "list proxies");
        return NULL;
    }
    struct sbuf b = { NULL, 0, 0, 0 };
    sb_add(&b, "[", 1);
    int first = 1, sealed_rc = 0;
    while ((rc = sqlite3_step(st)) == SQLITE_ROW) {
        sb_str(&b, first ? "{\"key\":" : ",{\"key\":");
        first = 0;
        sealed_rc = sb_stored(&b, sqlite3_column_text(st, 0));
        sb_str(&b, ",\"url\":");
        sealed_rc = sealed_rc != 0 ? sealed_rc : sb_stored(&b, sqlite3_column_text(st, 1));
        if (sealed_rc != 0) {
            break;
        }
        sb_str(&b, ",\"pool\":");
        sb_json_string(&b, sqlite3_column_text(st, 2));
        sb_str(&b, ",\"opts\":");
        const unsigned char *opts = sqlite3_column_text(st, 3);
        sb_str(&b, opts != NULL ? (const char *)opts : "null");
        sb_str(&b, sqlite3_column_int(st, 4) ? ",\"enabled\":true" : ",\"enabled\":false");
        double at = sqlite3_column_double(st, 5);
        char num[64];
        if (isfinite(at)) {
            snprintf(num, sizeof(num), ",\"added_at\":%.6f}", at);
        } else {
            snprintf(num, sizeof(num), ",\"added_at\":null}");
        }
        sb_str(&b, num);
    }
    sqlite3_finalize(st);
    sb_add(&b, "]", 1);
    if (sealed_rc == -1) {
        free_secret_text(b.p, b.n);
        store_fail(err, "FERRY-0212: store %s: a sealed proxy does not open with the configured "
                   "key; nothing was read", db_path);
        return NULL;
    }
    if (rc != SQLITE_DONE && sealed_rc == 0) {
        free_secret_text(b.p, b.n);
        run_fail(err, rc, "list proxies");
        return NULL;
    }
    if (b.oom || sealed_rc != 0) {
        free_secret_text(b.p, b.n);
        store_fail(err, "store %s: out of memory listing proxies", db_path);
        return NULL;
    }
    if (json_out != NULL) {
        free_secret_text(json_out, strlen(json_out));
    }
    json_out = b.p;
    return json_out;
}

/* Health ------------------------------------------------------------------ */

int ferry_store_save_health(const char **err)
{
    if (need_open(err) != FERRY_OK) {
        return FERRY_ERROR;
    }
    if (begin("BEGIN IMMEDIATE", err, "save health") != FERRY_OK) {
        return FERRY_ERROR;
    }
    sqlite3_stmt *st = NULL;
    int rc = sqlite3_prepare_v2(db,
        "INSERT OR REPLACE INTO health(key, up, health_counter, consecutive_failures,"
        " latency_ewma_ms, successes, failures, saved_at) VALUES(?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)",
        -1, &st, NULL);
    if (rc != SQLITE_OK) {
        return run_fail(err, rc, "save health");
    }
    double now = wall_now();
    uint32_t n = ferry_proxy_count();
    int saved = 0;
    for (uint32_t id = 1; id <= n; id++) {
        const struct proxy *p = proxy_by_id(id);
        /* A removed proxy's row went with it (delete_proxy): not back. */
        if (p == NULL || p->key == NULL || (p->pub.flags & FERRY_PROXY_REMOVED)) {
            continue;
        }
        double lat = isfinite(p->pub.latency_ewma_ms) && p->pub.latency_ewma_ms > 0
            ? p->pub.latency_ewma_ms : 0;
        if (bind_stored(st, 1, p->key, 1) != SQLITE_OK) {
            sqlite3_finalize(st);
            return run_fail(err, SQLITE_NOMEM, "save health");
        }
        sqlite3_bind_int(st, 2, (p->pub.flags & FERRY_PROXY_DOWN) ? 0 : 1);
        sqlite3_bind_int64(st, 3, p->pub.health);
        sqlite3_bind_int64(st, 4, p->pub.consecutive_failures);
        sqlite3_bind_double(st, 5, lat);
        sqlite3_bind_int64(st, 6, clamp_i64(p->pub.successes));
        sqlite3_bind_int64(st, 7, clamp_i64(p->pub.failures));
        sqlite3_bind_double(st, 8, now);
        rc = sqlite3_step(st);
        sqlite3_reset(st);
        if (rc != SQLITE_DONE) {
            sqlite3_finalize(st);
            return run_fail(err, rc, "save health");
        }
        saved++;
    }
    sqlite3_finalize(st);
    return commit(err, "save health") == FERRY_OK ? saved : FERRY_ERROR;
}

static uint32_t clamp_u32(sqlite3_int64 v)
{
    return v < 0 ? 0 : v > (sqlite3_int64)UINT32_MAX ? UINT32_MAX : (uint32_t)v;
}

int ferry_store_load_health(const char **err)
{
    if (need_open(err) != FERRY_OK) {
        return FERRY_ERROR;
    }
    if (begin("BEGIN", err, "load health") != FERRY_OK) {
        return FERRY_ERROR;
    }
    sqlite3_stmt *st = NULL;
    int rc = sqlite3_prepare_v2(db,
        "SELECT up, health_counter, consecutive_failures, latency_ewma_ms, successes, failures"
        " FROM health WHERE key = ?1", -1, &st, NULL);
    if (rc != SQLITE_OK) {
        return run_fail(err, rc, "load health");
    }
    uint32_t n = ferry_proxy_count();
    int restored = 0;
    for (uint32_t id = 1; id <= n; id++) {
        struct proxy *p = proxy_by_id(id);
        if (p == NULL || p->key == NULL) {
            continue;
        }
        rc = bind_stored(st, 1, p->key, 1);
        rc = rc == SQLITE_OK ? sqlite3_step(st) : rc;
        if (rc == SQLITE_ROW) {
            int up = sqlite3_column_int(st, 0) != 0;
            uint32_t counter = clamp_u32(sqlite3_column_int64(st, 1));
            double lat = sqlite3_column_double(st, 3);
            sqlite3_int64 ok = sqlite3_column_int64(st, 4);
            sqlite3_int64 bad = sqlite3_column_int64(st, 5);
            p->pub.consecutive_failures = clamp_u32(sqlite3_column_int64(st, 2));
            p->pub.latency_ewma_ms = isfinite(lat) && lat > 0 ? lat : 0;
            p->pub.successes = ok > 0 ? (uint64_t)ok : 0;
            p->pub.failures = bad > 0 ? (uint64_t)bad : 0;
            /* Keep requests >= successes + failures for ratios; the
             * per-kind failure counts stay this process's own. */
            if (p->pub.requests < p->pub.successes + p->pub.failures) {
                p->pub.requests = p->pub.successes + p->pub.failures;
            }
            health_restore(p, up, counter);
            restored++;
            rc = SQLITE_DONE;
        }
        sqlite3_reset(st);
        if (rc != SQLITE_DONE) {
            sqlite3_finalize(st);
            return run_fail(err, rc, "load health");
        }
    }
    sqlite3_finalize(st);
    return commit(err, "load health") == FERRY_OK ? restored : FERRY_ERROR;
}
