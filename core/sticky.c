/* sticky.c - sticky sessions: a session key pinned to a proxy, with a TTL.
 *
 * The table lives in C so pins survive reloads.  Open addressing with
 * linear probing over a power-of-two array; expired entries are reused
 * in place, and a full table evicts the oldest entry of the probe run
 * (bounded work per insert).  Keys are binary-safe: the strategy builds
 * them as "pool\0session". */
#include "sticky.h"
#include "ferry.h"
#include "loop.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define STICKY_MAX 100000      /* entries kept at most */
#define STICKY_SLOTS 262144    /* power of two, load <= ~0.38 */
#define STICKY_KEY_MAX 255
#define STICKY_PROBE 32        /* slots looked at per operation */

struct sticky_entry {
    char *key;          /* NULL: free slot */
    uint32_t len;
    uint32_t proxy_id;
    double expires;     /* loop time */
    double created;
};

static struct sticky_entry *slots;
static uint32_t live;

static uint32_t hash_bytes(const char *k, uint32_t n)
{
    uint32_t h = 2166136261u;
    for (uint32_t i = 0; i < n; i++) {
        h = (h ^ (unsigned char)k[i]) * 16777619u;
    }
    return h ^ (h >> 15);
}

static int ensure(void)
{
    if (slots == NULL) {
        slots = calloc(STICKY_SLOTS, sizeof(*slots));
    }
    return slots != NULL ? 0 : -1;
}

static void clear(struct sticky_entry *e)
{
    free(e->key);
    e->key = NULL;
    live--;
}

/* The live entry for key, or NULL; expired entries met on the way are
 * freed (but their slots stay usable: probing never stops at a hole
 * within STICKY_PROBE, so no tombstones are needed). */
static struct sticky_entry *find(const char *key, uint32_t len, double now)
{
    uint32_t h = hash_bytes(key, len);
    for (uint32_t i = 0; i < STICKY_PROBE; i++) {
        struct sticky_entry *e = &slots[(h + i) & (STICKY_SLOTS - 1)];
        if (e->key == NULL) {
            continue;
        }
        if (e->expires <= now) {
            clear(e);
            continue;
        }
        if (e->len == len && memcmp(e->key, key, len) == 0) {
            return e;
        }
    }
    return NULL;
}

uint32_t ferry_sticky_get(const char *key, uint32_t len)
{
    if (key == NULL || len == 0 || len > STICKY_KEY_MAX || ensure() != 0) {
        return 0;
    }
    struct sticky_entry *e = find(key, len, loop_now());
    return e != NULL ? e->proxy_id : 0;
}

int ferry_sticky_set(const char *key, uint32_t len, uint32_t proxy_id, double ttl)
{
    if (key == NULL || len == 0 || len > STICKY_KEY_MAX || proxy_id == 0 || !(ttl > 0) ||
        ensure() != 0) {
        return FERRY_ERROR;
    }
    double now = loop_now();
    struct sticky_entry *e = find(key, len, now);
    if (e != NULL) {
        e->proxy_id = proxy_id;
        e->expires = now + ttl;
        return FERRY_OK;
    }
    /* A free slot in the run, else the oldest entry of the run. */
    uint32_t h = hash_bytes(key, len);
    struct sticky_entry *victim = NULL;
    for (uint32_t i = 0; i < STICKY_PROBE; i++) {
        struct sticky_entry *s = &slots[(h + i) & (STICKY_SLOTS - 1)];
        if (s->key == NULL) {
            victim = s;
            break;
        }
        if (victim == NULL || s->created < victim->created) {
            victim = s;
        }
    }
    if (victim->key == NULL && live >= STICKY_MAX) {
        /* Full: take the oldest of the run rather than grow past the bound. */
        victim = NULL;
        for (uint32_t i = 0; i < STICKY_PROBE; i++) {
            struct sticky_entry *s = &slots[(h + i) & (STICKY_SLOTS - 1)];
            if (s->key != NULL && (victim == NULL || s->created < victim->created)) {
                victim = s;
            }
        }
        if (victim == NULL) {
            return FERRY_ERROR;
        }
    }
    char *copy = malloc(len);
    if (copy == NULL) {
        return FERRY_ERROR;
    }
    memcpy(copy, key, len);
    if (victim->key != NULL) {
        clear(victim);
    }
    victim->key = copy;
    victim->len = len;
    victim->proxy_id = proxy_id;
    victim->created = now;
    victim->expires = now + ttl;
    live++;
    return FERRY_OK;
}

void ferry_sticky_drop(const char *key, uint32_t len)
{
    if (key == NULL || len == 0 || len > STICKY_KEY_MAX || slots == NULL) {
        return;
    }
    struct sticky_entry *e = find(key, len, loop_now());
    if (e != NULL) {
        clear(e);
    }
}

uint32_t ferry_sticky_count(void)
{
    return live;
}

size_t sticky_key_copy(char *dst, size_t room, const char *src, size_t len)
{
    if (room == 0) {
        return 0;
    }
    const char *nul = memchr(src, '\0', len);
    if (len < room && nul == NULL) {
        memcpy(dst, src, len);
        dst[len] = '\0';
        return len;
    }
    uint64_t h = 14695981039346656037ull; /* FNV-1a */
    for (size_t i = 0; i < len; i++) {
        h = (h ^ (unsigned char)src[i]) * 1099511628211ull;
    }
    size_t keep = room > 18 ? room - 18 : 0;
    if (nul != NULL && (size_t)(nul - src) < keep) {
        keep = (size_t)(nul - src);
    }
    memcpy(dst, src, keep);
    snprintf(dst + keep, room - keep, "#%016llx", (unsigned long long)h);
    return strlen(dst);
}

void sticky_free_all(void)
{
    if (slots == NULL) {
        return;
    }
    for (uint32_t i = 0; i < STICKY_SLOTS; i++) {
        free(slots[i].key);
    }
    free(slots);
    slots = NULL;
    live = 0;
}
