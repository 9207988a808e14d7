/* health.h - up/down of proxies, and the per-(proxy, exchange) state:
 * counters, breakers and bans.  Probes and real traffic both feed it. */
#ifndef FERRY_HEALTH_H
#define FERRY_HEALTH_H

#include "ferry.h"

struct proxy;

/* A probe ended: ok or not, how long it took, and why it failed (or, for
 * a pass, what it proved; NULL: a plain pass). */
void health_probe_result(struct proxy *p, int ok, double latency_ms, const char *why);
/* The fleet's probing node judged p up or down: step the hysteresis as
 * its probes would until p's up/down agrees (at most rise+fall steps). */
void health_probe_shared(struct proxy *p, int up, double latency_ms, const char *why);
/* Real traffic through p ended (called by proxy_success/proxy_failure). */
void health_passive(struct proxy *p, int ok, enum ferry_fail_kind kind);
/* The (proxy, exchange) result of one attempt: counters and the window. */
void health_pair_result(struct ferry_pxstate *x, int ok, double latency_ms);
/* p starts its slow start now (came up, re-enabled, added at runtime);
 * nothing before the first config is applied (ferry_health_started). */
void health_ramp_begin(struct proxy *p);
/* Some proxy's flags changed: bump ferry_health_epoch(). */
void health_flags_changed(void);
/* Set the starting point saved by the store: up or down (a transition is
 * logged and counted like any other) and the hysteresis counter, clamped
 * to the range of that state under the current rise/fall. */
void health_restore(struct proxy *p, int up, uint32_t counter);
/* The name of an exchange id, "-" for none. */
const char *health_exchange_name(uint32_t id);
/* Call fn on every (proxy, exchange) pair, in no particular order (metrics). */
void health_pairs_each(void (*fn)(const struct ferry_pxstate *x, void *arg), void *arg);
/* Free every pair state (exit). */
void health_free_all(void);

#endif
