/* authfail.c - throttling of failed inbound proxy authentication.
 *
 * Without it a client can try thousands of passwords a second, and each
 * try writes a warn line.  Per client address we count wrong
 * credentials in a window of the listener's `auth_fail_window` seconds,
 * starting at the address's first failure.  The failure that reaches
 * `auth_fail_limit` blocks the address for one window: its requests get
 * 429 at once, before their credentials are compared, so a guess in
 * that time learns nothing, and nothing waits on a timer (a tarpit
 * would hold a connection per guess).  A request with no credentials at
 * all is not a guess (browsers ask first): it never blocks, but it too
 * logs at most one line per address and window.
 *
 * Log lines per address and window: the first failure (FERRY-1007, as
 * before), the block (FERRY-1040), and when the block ends a summary of
 * what was refused (FERRY-1041) -- not one line per guess.
 *
 * The table is fixed: AUTHFAIL_SLOTS entries in sets of AUTHFAIL_WAYS,
 * an address hashed to one set; a full set gives up its least recently
 * seen entry (a blocked one only when every entry of the set is blocked),
 * counted and logged at most once a minute (FERRY-1042).  Lookups cost
 * one set; a sweep timer runs only while some address is blocked. */
#include "authfail.h"
#include "listener.h"
#include "log.h"
#include "loop.h"

#include <math.h>
#include <stdio.h>
#include <string.h>

#define AUTHFAIL_SETS (AUTHFAIL_SLOTS / AUTHFAIL_WAYS)
#define ADDR_MAX 48              /* an IPv6 address as text, with room */
#define SWEEP_SECS 0.25          /* how late a block's end may be noticed */
#define EVICT_WARN_WINDOW 60.0

/* One client address. */
struct entry {
    char addr[ADDR_MAX];   /* "" = free */
    uint32_t fails;        /* wrong credentials in the current window */
    uint32_t refused;      /* requests refused while blocked */
    double window_start;   /* first failure of the current window */
    double window;         /* seconds: the window that applies (listener's) */
    double blocked_until;  /* 0 = not blocked */
    double last_seen;      /* for eviction */
    double quiet_until;    /* requests without credentials log no line until then */
};

static struct entry table[AUTHFAIL_SLOTS];
static struct authfail_stats stats;
static ev_timer sweep;
static int sweep_ready;
static double last_evict_warn = -EVICT_WARN_WINDOW;

static uint32_t addr_hash(const char *s)
{
    uint32_t h = 2166136261u; /* FNV-1a */
    for (; *s != '\0'; s++) {
        h = (h ^ (unsigned char)*s) * 16777619u;
    }
    return h;
}

static struct entry *set_of(const char *client)
{
    return &table[(addr_hash(client) % AUTHFAIL_SETS) * AUTHFAIL_WAYS];
}

static struct entry *find(const char *client)
{
    struct entry *set = set_of(client);
    for (int i = 0; i < AUTHFAIL_WAYS; i++) {
        if (set[i].addr[0] != '\0' && strcmp(set[i].addr, client) == 0) {
            return &set[i];
        }
    }
    return NULL;
}

static void entry_free(struct entry *e)
{
    if (e->blocked_until > 0) {
        stats.blocked--;
    }
    memset(e, 0, sizeof(*e));
    stats.tracked--;
}

/* The block of e is over: say what it refused, and start afresh. */
static void block_end(struct entry *e)
{
    log_event(LOG_INFO, "FERRY-1041", NULL,
              "client %s is no longer throttled: %u failed proxy authentications, then %u "
              "requests refused with 429, in %.1f s",
              e->addr, e->fails, e->refused, loop_now() - e->window_start);
    entry_free(e);
}

static void on_sweep(struct ev_loop *l, ev_timer *w, int revents)
{
    (void)l;
    (void)revents;
    double now = loop_now();
    for (int i = 0; i < AUTHFAIL_SLOTS && stats.blocked > 0; i++) {
        if (table[i].blocked_until > 0 && table[i].blocked_until <= now) {
            block_end(&table[i]);
        }
    }
    if (stats.blocked == 0) {
        ev_timer_stop(loop, w);
    }
}

static void sweep_start(void)
{
    if (!sweep_ready) {
        ev_timer_init(&sweep, on_sweep, SWEEP_SECS, SWEEP_SECS);
        sweep_ready = 1;
    }
    if (!ev_is_active(&sweep)) {
        ev_timer_again(loop, &sweep);
    }
}

/* Whether e still means something: blocked, failures in an open
 * window, or its log line still holding back others. */
static int live(const struct entry *e, double now)
{
    return e->blocked_until > 0 || (e->fails > 0 && now - e->window_start < e->window) ||
           e->quiet_until > now;
}

/* An entry for client: its own, a free or stale one, or else the set's
 * least recently seen (unblocked ones first). */
static struct entry *take(const char *client)
{
    struct entry *e = find(client);
    if (e != NULL) {
        return e;
    }
    double now = loop_now();
    struct entry *set = set_of(client), *victim = NULL;
    for (int i = 0; i < AUTHFAIL_WAYS && victim == NULL; i++) {
        if (set[i].addr[0] == '\0' || !live(&set[i], now)) {
            victim = &set[i];
        }
    }
    for (int pass = 0; pass < 2 && victim == NULL; pass++) {
        for (int i = 0; i < AUTHFAIL_WAYS; i++) {
            int blocked = set[i].blocked_until > 0;
            if ((pass == 1 || !blocked) &&
                (victim == NULL || set[i].last_seen < victim->last_seen)) {
                victim = &set[i];
            }
        }
    }
    if (victim->addr[0] != '\0' && live(victim, now)) {
        stats.evictions++;
        if (now - last_evict_warn >= EVICT_WARN_WINDOW) {
            last_evict_warn = now;
            log_event(LOG_WARN, "FERRY-1042", NULL,
                      "the table of failed proxy authentications is full (%d addresses): "
                      "client %s is forgotten to track %s",
                      AUTHFAIL_SLOTS, victim->addr, client);
        }
    }
    if (victim->addr[0] != '\0') {
        entry_free(victim);
    }
    snprintf(victim->addr, sizeof(victim->addr), "%s", client);
    stats.tracked++;
    return victim;
}

int authfail_blocked(const struct listener *l, const char *client)
{
    (void)l;
    struct entry *e = find(client);
    if (e == NULL || e->blocked_until <= 0) {
        return 0;
    }
    double now = loop_now();
    if (e->blocked_until <= now) {
        block_end(e); /* the sweep has not come round yet */
        return 0;
    }
    e->last_seen = now;
    e->refused++;
    stats.throttled++;
    return 1;
}

int authfail_count(const struct listener *l, const char *client)
{
    double now = loop_now();
    stats.failures++;
    struct entry *e = take(client);
    e->last_seen = now;
    int first = 0;
    if (e->fails == 0 || now - e->window_start >= e->window) {
        e->fails = 0;
        e->refused = 0;
        e->window_start = now;
        e->window = l->auth_fail_window;
        first = 1;
    }
    e->fails++;
    if (e->fails >= l->auth_fail_limit && e->blocked_until <= 0) {
        e->blocked_until = now + e->window;
        stats.blocked++;
        stats.blocks++;
        struct log_ctx ctx = { .listener = l->name };
        log_event(LOG_WARN, "FERRY-1040", &ctx,
                  "client %s: %u failed proxy authentications in %.1f s: its requests are "
                  "refused with 429 for %g s",
                  client, e->fails, now - e->window_start, e->window);
        sweep_start();
    }
    return first;
}

int authfail_missing(const struct listener *l, const char *client)
{
    double now = loop_now();
    struct entry *e = take(client);
    e->last_seen = now;
    if (e->quiet_until > now) {
        return 0;
    }
    e->quiet_until = now + l->auth_fail_window;
    return 1;
}

unsigned authfail_retry_after(const char *client)
{
    const struct entry *e = find(client);
    double left = e != NULL ? e->blocked_until - loop_now() : 0;
    return left > 1 ? (unsigned)ceil(left) : 1;
}

const struct authfail_stats *authfail_stats(void)
{
    return &stats;
}

void authfail_reset(void)
{
    if (sweep_ready) {
        ev_timer_stop(loop, &sweep);
    }
    /* The counters are for the process's life; only the table goes. */
    memset(table, 0, sizeof(table));
    stats.blocked = stats.tracked = 0;
}
