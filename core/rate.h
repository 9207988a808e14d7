/* rate.h - rate budgets per (proxy, exchange): token buckets and the
 * wait queue of requests no proxy has budget for.
 *
 * The buckets live in struct ferry_pxstate (rate_tokens, rate_at), so
 * they survive reloads with the pair; the runtime checks them while it
 * selects (lua/ferry/pool.lua) and spends them when it dispatches.
 * This file owns the per-exchange parameters and the waiters: a request
 * the runtime answers FERRY_DISPATCH_RATE either waits in its exchange's
 * FIFO (bounded by rate.queue and rate.queue_timeout) or is answered 429
 * with Retry-After.  One timer per exchange wakes the oldest waiter when
 * the earliest bucket has tokens again; a waiter that got a proxy wakes
 * the next one, a waiter that found none goes back to the head and
 * re-arms the timer.  Waiters are woken by arming their own timer at
 * zero, never called from another callback (as in uppool.c). */
#ifndef FERRY_RATE_H
#define FERRY_RATE_H

struct conn;

/* The runtime found no budget for c: wait `wait` seconds for the earliest
 * token (queued) or answer 429 (queue full, queue 0, time up). */
void rate_wait(struct conn *c, double wait);
/* c was woken from the queue and routed again: wake the next waiter when
 * it got a proxy (c->state is not CS_RATE). */
void rate_routed(struct conn *c);
/* c's own timer fired in CS_RATE: woken (route again) or out of time (429). */
void rate_timer_fired(struct conn *c);
/* Leave the queue (close, and any new attempt). */
void rate_drop(struct conn *c);
/* Whole seconds (at least 1) until c's exchange has a token: Retry-After. */
unsigned rate_retry_after(const struct conn *c);
/* Stop the timers and free the tables (exit, after conn_close_all). */
void rate_free_all(void);

#endif
