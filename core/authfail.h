/* authfail.h - failed inbound proxy authentication, throttled per client
 * address (a fail2ban in the loop): wrong credentials are counted per
 * address in a window; an address that reaches the listener's limit has
 * every request refused with 429 (FERRY-1040) for one window, without
 * its credentials being looked at.  Logged once per window per address,
 * with a summary when the block ends.  Bounded: a fixed table. */
#ifndef FERRY_AUTHFAIL_H
#define FERRY_AUTHFAIL_H

#include <stdint.h>

struct listener;

#define AUTHFAIL_SLOTS 4096 /* client addresses tracked at once */
#define AUTHFAIL_WAYS 8     /* an address lives in one set of this many slots */

/* What /metrics shows. */
struct authfail_stats {
    uint64_t failures;   /* ro: requests with wrong credentials (answered 407) */
    uint64_t throttled;  /* ro: requests refused with 429 from a blocked address */
    uint64_t blocks;     /* ro: times an address reached its limit */
    uint64_t evictions;  /* ro: tracked addresses pushed out by a full set */
    uint32_t blocked;    /* ro: addresses blocked now */
    uint32_t tracked;    /* ro: addresses in the table now */
};

/* 1 when requests from client (address text) are refused now. */
int authfail_blocked(const struct listener *l, const char *client);
/* A request from client carried wrong credentials: count it (and maybe
 * block the address).  Returns 1 when this failure should have its own
 * log line (the first of the address's window), 0 when a later summary
 * covers it. */
int authfail_count(const struct listener *l, const char *client);
/* A request from client came without credentials: never blocks; returns
 * 1 when it should have its own log line (once per address and window). */
int authfail_missing(const struct listener *l, const char *client);
/* Whole seconds (at least 1) until client's block ends: Retry-After. */
unsigned authfail_retry_after(const char *client);
const struct authfail_stats *authfail_stats(void);
/* Forget everything and stop the sweep timer (exit, specs). */
void authfail_reset(void);

#endif
