/* cache.c - the HTTP cache's store (see cache.h): a hash table of
 * entries by key, variants chained under the same key, one LRU list per
 * cache, every byte counted against the cache's size. */
#include "cache.h"
#include "log.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* At most this many caches (pools plus listeners with one). */
#define CACHE_MAX 256
/* Hash buckets: start small, double while entries outnumber them. */
#define CACHE_BUCKETS_MIN 64u
#define CACHE_BUCKETS_MAX (1u << 20)
/* Waiters one fill may hold; more go alone. */
#define CACHE_WAITERS_MAX 4096u

static struct cache *all[CACHE_MAX];
static unsigned ncache;
/* Pool index -> its cache (indexes are 0..4095, stable across reloads). */
#define POOL_INDEX_MAX 4096
static struct cache *by_pool[POOL_INDEX_MAX];
static unsigned nlisteners;
static int fixed_sites;

static uint32_t key_hash(const char *s)
{
    uint32_t h = 2166136261u; /* FNV-1a */
    for (; *s != '\0'; s++) {
        h = (h ^ (unsigned char)*s) * 16777619u;
    }
    return h;
}

struct cache *cache_of_pool(int pool)
{
    return pool >= 0 && pool < POOL_INDEX_MAX ? by_pool[pool] : NULL;
}

int cache_listeners_any(void)
{
    return nlisteners > 0;
}

void ferry_cache_fixed_sites(int on)
{
    fixed_sites = on != 0;
}

int cache_fixed_sites(void)
{
    return fixed_sites;
}

struct cache *cache_of_listener(const char *name)
{
    for (unsigned i = 0; i < ncache; i++) {
        struct cache *k = all[i];
        if (k->kind == FERRY_CACHE_LISTENER && k->configured && strcmp(k->label, name) == 0) {
            return k;
        }
    }
    return NULL;
}

/* LRU ---------------------------------------------------------------- */

static void lru_unlink(struct cache *k, struct cache_entry *e)
{
    if (e->lprev != NULL) {
        e->lprev->lnext = e->lnext;
    } else {
        k->lru_head = e->lnext;
    }
    if (e->lnext != NULL) {
        e->lnext->lprev = e->lprev;
    } else {
        k->lru_tail = e->lprev;
    }
    e->lprev = e->lnext = NULL;
}

static void lru_front(struct cache *k, struct cache_entry *e)
{
    e->lprev = NULL;
    e->lnext = k->lru_head;
    if (k->lru_head != NULL) {
        k->lru_head->lprev = e;
    }
    k->lru_head = e;
    if (k->lru_tail == NULL) {
        k->lru_tail = e;
    }
}

/* Entries ------------------------------------------------------------ */

struct cache_entry *cache_entry_new(const char *key, const char *vary, size_t vary_len,
                                    const char *vkey, const char *head, size_t head_len,
                                    const char *body, size_t body_len)
{
    size_t klen = strlen(key), vklen = strlen(vkey);
    /* One allocation: the struct, then key, Vary names, secondary key,
     * head, body. */
    size_t total = sizeof(struct cache_entry) + klen + 1 + vary_len + vklen + 1 + head_len +
                   body_len;
    struct cache_entry *e = malloc(total);
    if (e == NULL) {
        return NULL;
    }
    memset(e, 0, sizeof(*e));
    char *p = (char *)(e + 1);
    e->key = p;
    memcpy(p, key, klen + 1);
    p += klen + 1;
    if (vary_len > 0) {
        e->vary = p;
        memcpy(p, vary, vary_len);
        e->vary_len = vary_len;
        p += vary_len;
    }
    e->vkey = p;
    memcpy(p, vkey, vklen + 1);
    p += vklen + 1;
    e->head = p;
    memcpy(p, head, head_len);
    e->head_len = head_len;
    p += head_len;
    e->body = p;
    if (body_len > 0) {
        memcpy(p, body, body_len);
    }
    e->body_len = body_len;
    e->cost = total;
    e->refs = 1; /* the store's reference, once inserted; the builder's before */
    e->hash = key_hash(key);
    return e;
}

void cache_entry_unref(struct cache_entry *e)
{
    if (e != NULL && --e->refs == 0) {
        free(e);
    }
}

/* Take e out of its cache's table and LRU; the store's reference goes. */
static void entry_detach(struct cache *k, struct cache_entry *e)
{
    struct cache_entry **pp = &k->table[e->hash & (k->nbuckets - 1)];
    while (*pp != NULL && *pp != e) {
        pp = &(*pp)->hnext;
    }
    if (*pp == e) {
        *pp = e->hnext;
    }
    e->hnext = NULL;
    lru_unlink(k, e);
    k->st.bytes -= e->cost;
    k->st.entries--;
    e->owner = NULL;
    e->dead = 1;
    cache_entry_unref(e);
}

void cache_remove(struct cache_entry *e)
{
    if (e != NULL && e->owner != NULL) {
        struct cache *k = e->owner;
        k->st.purged++;
        entry_detach(k, e);
    }
}

struct cache_entry *cache_lookup(struct cache *k, const char *key, cache_match_fn match,
                                 void *arg)
{
    if (k == NULL || k->nbuckets == 0) {
        return NULL;
    }
    uint32_t h = key_hash(key);
    for (struct cache_entry *e = k->table[h & (k->nbuckets - 1)]; e != NULL; e = e->hnext) {
        if (e->hash == h && strcmp(e->key, key) == 0 && match(arg, e)) {
            lru_unlink(k, e);
            lru_front(k, e);
            e->refs++;
            return e;
        }
    }
    return NULL;
}

static void evict_one(struct cache *k)
{
    struct cache_entry *e = k->lru_tail;
    if (e != NULL) {
        k->st.evictions++;
        entry_detach(k, e);
    }
}

void cache_shrink(struct cache *k)
{
    while (k->st.bytes > k->size && k->lru_tail != NULL) {
        evict_one(k);
    }
}

static int table_grow(struct cache *k)
{
    uint32_t n = k->nbuckets == 0 ? CACHE_BUCKETS_MIN : k->nbuckets * 2;
    if (n > CACHE_BUCKETS_MAX) {
        return 0;
    }
    struct cache_entry **t = calloc(n, sizeof(*t));
    if (t == NULL) {
        return k->nbuckets > 0 ? 0 : -1;
    }
    for (uint32_t i = 0; i < k->nbuckets; i++) {
        struct cache_entry *e = k->table[i];
        while (e != NULL) {
            struct cache_entry *next = e->hnext;
            e->hnext = t[e->hash & (n - 1)];
            t[e->hash & (n - 1)] = e;
            e = next;
        }
    }
    free(k->table);
    k->table = t;
    k->nbuckets = n;
    return 0;
}

/* The same variant: the same secondary key (a response without Vary has
 * the empty one, and replaces whatever variants its key had). */
static int same_vary(const struct cache_entry *a, const struct cache_entry *b)
{
    return a->vkey[0] == '\0' || b->vkey[0] == '\0' || strcmp(a->vkey, b->vkey) == 0;
}

int cache_insert(struct cache *k, struct cache_entry *e)
{
    if (e->cost > k->size) {
        cache_entry_unref(e);
        return -1;
    }
    if ((k->nbuckets == 0 || k->st.entries >= k->nbuckets) && table_grow(k) < 0) {
        cache_entry_unref(e);
        return -1;
    }
    /* The variant stored under the same Vary values is replaced. */
    struct cache_entry *o = k->table[e->hash & (k->nbuckets - 1)];
    while (o != NULL) {
        struct cache_entry *next = o->hnext;
        if (o->hash == e->hash && strcmp(o->key, e->key) == 0 && same_vary(o, e)) {
            entry_detach(k, o);
        }
        o = next;
    }
    /* Room first, so e itself is never the one evicted. */
    while (k->st.bytes + e->cost > k->size && k->lru_tail != NULL) {
        evict_one(k);
    }
    e->owner = k;
    struct cache_entry **b = &k->table[e->hash & (k->nbuckets - 1)];
    e->hnext = *b;
    *b = e;
    lru_front(k, e);
    k->st.bytes += e->cost;
    k->st.entries++;
    k->st.stored++;
    return 0;
}

int cache_invalidate(struct cache *k, const char *key)
{
    if (k == NULL || k->nbuckets == 0) {
        return 0;
    }
    uint32_t h = key_hash(key);
    int n = 0;
    struct cache_entry *e = k->table[h & (k->nbuckets - 1)];
    while (e != NULL) {
        struct cache_entry *next = e->hnext;
        if (e->hash == h && strcmp(e->key, key) == 0) {
            k->st.purged++;
            entry_detach(k, e);
            n++;
        }
        e = next;
    }
    return n > 0;
}

/* Whether key falls under prefix: a prefix starting with '/' is matched
 * against the target part of the key (after "scheme://host[:port]"). */
static int under_prefix(const char *key, const char *prefix, size_t plen)
{
    if (plen == 0) {
        return 1;
    }
    if (prefix[0] == '/') {
        const char *sl = strstr(key, "://");
        key = sl != NULL ? strchr(sl + 3, '/') : NULL;
        if (key == NULL) {
            return 0;
        }
    }
    return strncmp(key, prefix, plen) == 0;
}

uint64_t cache_purge(struct cache *k, const char *prefix)
{
    size_t plen = strlen(prefix);
    uint64_t n = 0;
    struct cache_entry *e = k->lru_head;
    while (e != NULL) {
        struct cache_entry *next = e->lnext;
        if (under_prefix(e->key, prefix, plen)) {
            k->st.purged++;
            entry_detach(k, e);
            n++;
        }
        e = next;
    }
    return n;
}

/* Locks (coalescing) --------------------------------------------------- */

struct cache_lock *cache_lock_find(struct cache *k, const char *key)
{
    for (struct cache_lock *l = k->locks; l != NULL; l = l->next) {
        if (strcmp(l->key, key) == 0) {
            return l;
        }
    }
    return NULL;
}

struct cache_lock *cache_lock_take(struct cache *k, const char *key, struct conn *c)
{
    struct cache_lock *l = calloc(1, sizeof(*l));
    if (l == NULL || (l->key = strdup(key)) == NULL) {
        free(l);
        return NULL;
    }
    l->owner = k;
    l->linked = 1;
    l->filler = c;
    l->next = k->locks;
    k->locks = l;
    cache_ref(k);
    return l;
}

int cache_lock_wait(struct cache_lock *l, struct conn *c)
{
    if (l->nwait == l->capwait) {
        unsigned n = l->capwait ? l->capwait * 2 : 8;
        if (n > CACHE_WAITERS_MAX) {
            return -1;
        }
        struct conn **w = realloc(l->waiters, n * sizeof(*w));
        if (w == NULL) {
            return -1;
        }
        l->waiters = w;
        l->capwait = n;
    }
    l->waiters[l->nwait++] = c;
    return 0;
}

void cache_lock_leave(struct cache_lock *l, struct conn *c)
{
    for (unsigned i = 0; i < l->nwait; i++) {
        if (l->waiters[i] == c) {
            memmove(&l->waiters[i], &l->waiters[i + 1], (l->nwait - i - 1) * sizeof(*l->waiters));
            l->nwait--;
            return;
        }
    }
}

void cache_lock_release(struct cache_lock *l, void (*wake)(struct conn *))
{
    struct cache *k = l->owner;
    if (l->linked) {
        struct cache_lock **pp = &k->locks;
        while (*pp != NULL && *pp != l) {
            pp = &(*pp)->next;
        }
        if (*pp == l) {
            *pp = l->next;
        }
    }
    /* Waiters are woken by their own timers (wake arms them at zero),
     * never from inside this call: each looks the key up again. */
    for (unsigned i = 0; i < l->nwait; i++) {
        wake(l->waiters[i]);
    }
    free(l->waiters);
    free(l->key);
    free(l);
    cache_unref(k);
}

/* Caches ------------------------------------------------------------- */

void cache_ref(struct cache *k)
{
    k->refs++;
}

static void cache_empty(struct cache *k)
{
    while (k->lru_head != NULL) {
        entry_detach(k, k->lru_head);
    }
}

void cache_unref(struct cache *k)
{
    if (--k->refs > 0) {
        return;
    }
    cache_empty(k);
    free(k->table);
    free(k);
}

unsigned cache_count(void)
{
    return ncache;
}

struct cache *cache_at(unsigned i)
{
    return i < ncache ? all[i] : NULL;
}

static void index_rebuild(void)
{
    memset(by_pool, 0, sizeof(by_pool));
    nlisteners = 0;
    for (unsigned i = 0; i < ncache; i++) {
        struct cache *k = all[i];
        if (k->kind == FERRY_CACHE_POOL && k->index >= 0 && k->index < POOL_INDEX_MAX) {
            by_pool[k->index] = k;
        } else if (k->kind == FERRY_CACHE_LISTENER) {
            nlisteners++;
        }
    }
}

void ferry_cache_reload_begin(void)
{
    for (unsigned i = 0; i < ncache; i++) {
        all[i]->seen = 0;
    }
}

/* A cache the config no longer has: out of every index; its entries go
 * (those being served live on until their readers finish); conns that
 * fill or wait on it hold a reference until they are done. */
static void cache_retire(struct cache *k)
{
    k->configured = 0;
    cache_empty(k);
    for (struct cache_lock *l = k->locks; l != NULL; l = l->next) {
        l->linked = 0; /* released by its filler; no new waiters find it */
    }
    k->locks = NULL;
    cache_unref(k);
}

void ferry_cache_reload_end(void)
{
    unsigned j = 0;
    for (unsigned i = 0; i < ncache; i++) {
        if (all[i]->seen) {
            all[j++] = all[i];
        } else {
            cache_retire(all[i]);
        }
    }
    ncache = j;
    index_rebuild();
}

int ferry_cache_set(int kind, const char *name, int index, double size, double max_object,
                    double ttl, double lock_timeout)
{
    if (name == NULL || size < 1 || max_object < 0) {
        return FERRY_ERROR;
    }
    struct cache *k = NULL;
    for (unsigned i = 0; i < ncache; i++) {
        if (all[i]->kind == kind && strcmp(all[i]->label, name) == 0) {
            k = all[i];
        }
    }
    if (k == NULL) {
        if (ncache == CACHE_MAX || (k = calloc(1, sizeof(*k))) == NULL) {
            return FERRY_ERROR;
        }
        k->kind = kind;
        snprintf(k->label, sizeof(k->label), "%s", name);
        snprintf(k->name, sizeof(k->name), "%s %s",
                 kind == FERRY_CACHE_LISTENER ? "listener" : "pool", name);
        k->refs = 1;
        k->configured = 1;
        all[ncache++] = k;
    }
    k->seen = 1;
    k->index = index;
    k->size = (uint64_t)size;
    k->max_object = (uint64_t)max_object;
    k->ttl = ttl;
    k->lock_timeout = lock_timeout > 0 ? lock_timeout : 5.0;
    k->st.size = k->size;
    k->st.max_object = k->max_object;
    cache_shrink(k); /* a smaller size applies at once */
    index_rebuild();
    return FERRY_OK;
}

int ferry_cache_count(void)
{
    return (int)ncache;
}

int ferry_cache_info(int i, struct ferry_cache_stats *out, const char **name, int *kind)
{
    if (i < 0 || (unsigned)i >= ncache) {
        return FERRY_ERROR;
    }
    *out = all[i]->st;
    *name = all[i]->label;
    *kind = all[i]->kind;
    return FERRY_OK;
}

double ferry_cache_purge(const char *name, const char *prefix)
{
    uint64_t n = 0;
    for (unsigned i = 0; i < ncache; i++) {
        if (name == NULL || name[0] == '\0' || strcmp(all[i]->label, name) == 0) {
            n += cache_purge(all[i], prefix != NULL ? prefix : "");
        }
    }
    if (n > 0) {
        log_event(LOG_INFO, "FERRY-3145", NULL, "cache purge %s%s%s: %llu entries dropped",
                  name != NULL && name[0] ? name : "(all caches)", prefix && prefix[0] ? " " : "",
                  prefix != NULL ? prefix : "", (unsigned long long)n);
    }
    return (double)n;
}

void cache_free_all(void)
{
    for (unsigned i = 0; i < ncache; i++) {
        cache_retire(all[i]);
    }
    ncache = 0;
    index_rebuild();
}
