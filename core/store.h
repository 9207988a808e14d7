/* store.h - the embedded SQLite store: proxies added at runtime and the
 * last known health of every proxy.  One store per process.
 *
 * The API (declared in ferry.h, mirrored in lua/ferry/cdef.lua, wrapped
 * by lua/ferry/store.lua).  Every function returns FERRY_OK (0) or
 * FERRY_ERROR (-1) unless said otherwise, and on failure points *err at
 * a message (static storage, valid until the next store call; err may
 * be NULL).  Messages that concern the file name its path.
 *
 *   int ferry_store_open(const char *path, const char **err);
 *   int ferry_store_open_key(const char *path, const char *key, size_t key_len,
 *                            const char **err);
 *       Open (or create) the database at path.  Creates a missing parent
 *       directory (0700) and a missing file (0600: the store holds proxy
 *       credentials; a wider mode on an existing file is narrowed).
 *       Sets WAL mode, synchronous=NORMAL, busy_timeout 200 ms, runs
 *       PRAGMA quick_check, takes a write lock once (BEGIN IMMEDIATE) and
 *       creates or checks the schema (meta.schema_version).  Fails, with
 *       the path in the message, on: a file that is not a database or is
 *       corrupt (never recreated, truncated or repaired), a read-only
 *       file or directory, a database locked by another process, a
 *       schema newer than this build knows.  If a store is already open
 *       with the same path and key this is a no-op; otherwise the new
 *       one is opened first and replaces the old only on success.
 *       _key: key is the operator's 32-byte key (key_len 32), or NULL
 *       (open is open_key without a key).  With a key, values carrying
 *       credentials are sealed (store_seal.c): plain rows are sealed
 *       while opening, and reads open them again.  Fails with FERRY-0210
 *       (a key that is not 32 bytes), FERRY-0211 (a sealed store and no
 *       key) or FERRY-0212 (a sealed store and another key).
 *   void ferry_store_close(void);
 *       Close the store (checkpoints the WAL).  Harmless when closed.
 *   int ferry_store_is_open(void);
 *       1 when a store is open, else 0.
 *
 *   int ferry_store_put_proxy(const char *key, const char *url,
 *                             const char *pool, const char *opts_json,
 *                             int enabled, const char **err);
 *       Insert or replace the proxy with this key (its id or URL).  url
 *       keeps credentials.  pool may be NULL.  opts_json must be a JSON
 *       value (object: weight, region, id, headers) or NULL (stored as
 *       "{}").  added_at is set on first insert and kept on replace.
 *       Committed (durable in the WAL) before it returns FERRY_OK.
 *   int ferry_store_delete_proxy(const char *key, const char **err);
 *       Delete the proxy and its saved health.  Deleting a key that is
 *       not there is not an error.
 *   int ferry_store_set_enabled(const char *key, int enabled, const char **err);
 *       Set the enabled flag; FERRY_ERROR if the key is not in the store.
 *   const char *ferry_store_proxies_json(const char **err);
 *       Every stored proxy, oldest first, as a JSON array of objects
 *       {"key","url","pool","opts","enabled","added_at"} (pool may be
 *       null, opts is the stored JSON value, enabled a boolean, added_at
 *       seconds since the epoch).  The string is owned by C and valid
 *       until the next call or ferry_store_close().  NULL on failure,
 *       also (FERRY-0212) when a sealed value does not open: never
 *       ciphertext in place of a URL.
 *
 *   int ferry_store_save_health(const char **err);
 *       Save up/down, the hysteresis counter, consecutive failures,
 *       latency EWMA and success/failure counts of every proxy known to
 *       the core (ferry_proxy_count()), in one transaction.  Returns the
 *       number of proxies saved (>= 0) or FERRY_ERROR.
 *   int ferry_store_load_health(const char **err);
 *       Apply saved health to the proxies whose key has a saved row:
 *       a proxy saved down starts down (passive-recovery trials or probes
 *       bring it back as usual), counters and latency are set to the
 *       saved values.  Meant to run once, after the first config apply.
 *       Returns the number of proxies restored (>= 0) or FERRY_ERROR.
 *
 * All calls are synchronous on the caller's thread (the loop): writes are
 * single small transactions; save_health of 20 000 proxies is one
 * transaction of 20 000 rows.
 */
#ifndef FERRY_STORE_H
#define FERRY_STORE_H

#include "ferry.h"

/* Schema versions: 1 plain, 2 the same tables with credentials sealed
 * (store_seal.c); this build creates 1, seals to 2, understands both. */
#define STORE_SCHEMA_PLAIN 1
#define STORE_SCHEMA_SEALED 2
#define STORE_SCHEMA_VERSION STORE_SCHEMA_SEALED
/* How long a statement waits for another connection's lock. */
#define STORE_BUSY_TIMEOUT_MS 200

/* Private to store.c and store_seal.c. ----------------------------------- */
#include "secret.h"

struct sqlite3;

/* Format the error into the store's message buffer, point *err at it;
 * FERRY_ERROR. */
int store_fail(const char **err, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
/* An SQLite failure rc of `what` on the store at path, in an operator's words. */
int store_sql_fail(const char **err, const char *path, struct sqlite3 *h, int rc,
                   const char *what);

/* store_file.c: before opening, the parents and the file itself (0, or
 * FERRY_ERROR with *err); after opening, the mode narrowed to 0600. */
int store_make_parents(const char *path, const char **err);
int store_prepare_file(const char *path, const char **err);
void store_narrow_mode(const char *path);

/* In the opening transaction: check the key against the store (k NULL:
 * no key configured) and seal what is still plain.  version: the
 * store's schema version. */
int store_seal_init(struct sqlite3 *h, const char *path, long version,
                    const struct secret_key *k, const char **err);
/* v as it is stored: sealed when k is given and v carries credentials
 * (deterministic: for values looked up by equality).  *owned is what to
 * free afterwards; NULL only when sealing failed (out of memory). */
const char *store_sealed(const struct secret_key *k, const char *v, int deterministic,
                         char **owned);
/* A stored value as it was given: *out is v itself or opened (*owned, to
 * free).  0, or -1 when a sealed value does not open (no key, another
 * key, tampered with), -2 out of memory. */
int store_opened(const struct secret_key *k, const char *v, const char **out, char **owned);

#endif
