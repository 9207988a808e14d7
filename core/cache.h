/* cache.h - the HTTP cache's store: responses in memory, bounded in bytes.
 *
 * One `struct cache` per pool or listener that configures `cache = {...}`.
 * Entries are keyed by a method-independent key ("http://host[:port]/target");
 * one key holds the variants its responses' Vary selects (each variant
 * keeps the request values of the Vary names it was stored under).
 * Every byte of an entry (struct, key, Vary values, head, body) counts
 * against `size`; least-recently-used whole entries go first.  Entries
 * are reference counted: one being served survives eviction and purge
 * until its last reader lets go.
 *
 * Which responses are stored and for how long is core/cache_policy.c's;
 * the request path that uses the store is core/conn_cache.c.  Caches are
 * C state: a reload that keeps a cache keeps its entries. */
#ifndef FERRY_CACHE_H
#define FERRY_CACHE_H

#include "cache_policy.h"
#include "ferry.h"

#include <stddef.h>
#include <stdint.h>

struct conn;

struct cache_entry {
    struct cache_entry *hnext;          /* private: hash chain */
    struct cache_entry *lprev, *lnext;  /* private: LRU list, most recent first */
    struct cache *owner;                /* private: NULL once out of the store */
    uint32_t hash;                      /* private */
    int refs;                           /* private: the store's own + readers */
    size_t cost;                        /* ro: bytes counted against size */
    int status;                         /* ro */
    double request_time, response_time; /* ro: when the exchange that stored it ran */
    char *key;                          /* ro: NUL-terminated */
    char *vary;                         /* ro: the Vary names, "name\0name\0...",
                                         * lower-case; NULL: no Vary */
    size_t vary_len;
    char *vkey;                         /* ro: the secondary key (cpol_vary_key) of
                                         * the request that stored it, "" without Vary */
    struct cpol_entry pol;              /* ro: what the rules need (freshness, age) */
    char *head;                         /* ro: status line and fields, CRLF each,
                                         * no framing fields, no blank line */
    size_t head_len;
    char *body;                         /* ro */
    size_t body_len;
    unsigned dead:1;                    /* private: out of the store, freed at last unref */
};

/* A fill in progress for one key: the first miss goes upstream, the
 * others wait for it (coalescing). */
struct cache_lock {
    struct cache_lock *next;            /* private: the cache's list */
    struct cache *owner;                /* private: referenced until released */
    unsigned linked:1;                  /* private: in owner's list (0 once it left) */
    char *key;                          /* private */
    struct conn *filler;                /* private: the request that fetches it */
    struct conn **waiters;              /* private */
    unsigned nwait, capwait;            /* private */
};

struct cache {
    char name[72];                      /* ro: "pool NAME" or "listener NAME" */
    char label[65];                     /* ro: NAME */
    int kind;                           /* ro: FERRY_CACHE_POOL or FERRY_CACHE_LISTENER */
    int index;                          /* ro: pool index (pools) */
    uint64_t size, max_object;          /* ro: bounds in bytes */
    double ttl;                         /* ro: freshness of a 200 without its own */
    double lock_timeout;                /* ro: how long a miss waits for another's fill */
    int refs;                           /* private: 1 while configured + conns using it */
    unsigned configured:1;              /* private: in the running config */
    unsigned seen:1;                    /* private: set again by this reload */
    struct cache_entry **table;         /* private */
    uint32_t nbuckets;                  /* private */
    struct cache_entry *lru_head, *lru_tail; /* private */
    struct cache_lock *locks;           /* private */
    struct ferry_cache_stats st;        /* ro: counters and gauges */
    double fill_log_at;                 /* private: last FERRY-3160 (fills over size) */
    uint64_t fill_quiet;                /* private: fills refused since, not logged */
};

/* The cache of pool index `pool`, or NULL (the common case: one load). */
struct cache *cache_of_pool(int pool);
/* The cache of the listener named `name`, or NULL. */
struct cache *cache_of_listener(const char *name);
/* 1 when some listener has a cache (skip the name lookup otherwise). */
int cache_listeners_any(void);
/* 1 when a reverse listener's own pool serves all its requests (no route()). */
int cache_fixed_sites(void);

void cache_ref(struct cache *k);
void cache_unref(struct cache *k);

/* The variant of key that match accepts (the request's values of its
 * Vary names select it), with a reader's reference (cache_entry_unref),
 * or NULL. */
typedef int (*cache_match_fn)(void *arg, const struct cache_entry *e);
struct cache_entry *cache_lookup(struct cache *k, const char *key, cache_match_fn match,
                                 void *arg);
void cache_entry_unref(struct cache_entry *e);
/* Store e (built by cache_entry_new) under its key, replacing the variant
 * with the same secondary key; evicts to stay within size.  Takes e. */
int cache_insert(struct cache *k, struct cache_entry *e);
/* An entry ready to insert (pol still to fill); NULL when it cannot be
 * allocated.  vary: "name\0name\0..." (vary_len bytes); vkey: the
 * secondary key. */
struct cache_entry *cache_entry_new(const char *key, const char *vary, size_t vary_len,
                                    const char *vkey, const char *head, size_t head_len,
                                    const char *body, size_t body_len);
/* Drop every variant of key; 1 when something went. */
int cache_invalidate(struct cache *k, const char *key);
/* Drop the entry (a purge or a replaced variant). */
void cache_remove(struct cache_entry *e);

/* Coalescing: the lock of key, or NULL. */
struct cache_lock *cache_lock_find(struct cache *k, const char *key);
/* Take the lock of key for c (the filler); NULL without memory. */
struct cache_lock *cache_lock_take(struct cache *k, const char *key, struct conn *c);
/* c waits on l; -1 without memory (c goes alone). */
int cache_lock_wait(struct cache_lock *l, struct conn *c);
/* c no longer waits on l. */
void cache_lock_leave(struct cache_lock *l, struct conn *c);
/* The fill ended (stored or not): every waiter is woken, the lock freed. */
void cache_lock_release(struct cache_lock *l, void (*wake)(struct conn *));

/* Entries whose key starts with prefix (a prefix starting with '/' matches
 * the target of any host); "" purges all.  Counted. */
uint64_t cache_purge(struct cache *k, const char *prefix);
/* Evict least-recently-used entries until bytes <= the size bound. */
void cache_shrink(struct cache *k);
/* Every cache, for metrics and the console. */
unsigned cache_count(void);
struct cache *cache_at(unsigned i);
/* Free every cache (at stop). */
void cache_free_all(void);

#endif
