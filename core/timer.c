/* timer.c - timers the runtime asks for (timer.every, timer.after).
 *
 * The ev_timers live in one fixed table, so a timer costs no allocation
 * and the count is bounded.  An id is the slot plus a generation, so a
 * cancel of a timer that already ended (its slot reused since) is a
 * no-op.  On expiry the runtime's timer function is called with the id
 * (bridge_timer); an after-timer's slot is free before the call, so the
 * callback may start new timers. */
#include "timer.h"
#include "bridge.h"
#include "ferry.h"
#include "log.h"
#include "loop.h"

#include <string.h>

/* One timer of the table. */
struct timer_slot {
    ev_timer w;        /* private: the loop's watcher */
    uint32_t gen;      /* private: bumped each time the slot is taken */
    unsigned used:1;   /* private: the slot holds a live timer */
    unsigned repeat:1; /* private: every-timer (else after) */
};

static struct timer_slot slots[TIMER_MAX];
static int nused;

#define TIMER_GEN_MAX (INT32_MAX / TIMER_MAX)

static int32_t slot_id(const struct timer_slot *s)
{
    return (int32_t)(s->gen * TIMER_MAX + (uint32_t)(s - slots));
}

static struct timer_slot *slot_of(int32_t id)
{
    if (id <= 0) {
        return NULL;
    }
    struct timer_slot *s = &slots[(uint32_t)id % TIMER_MAX];
    if (!s->used || s->gen != (uint32_t)id / TIMER_MAX) {
        return NULL;
    }
    return s;
}

static void slot_free(struct timer_slot *s)
{
    ev_timer_stop(loop, &s->w);
    s->used = 0;
    nused--;
}

static void on_timer(struct ev_loop *l, ev_timer *w, int revents)
{
    (void)l;
    (void)revents;
    struct timer_slot *s = (struct timer_slot *)w;
    int32_t id = slot_id(s);
    if (!s->repeat) {
        slot_free(s);
    }
    bridge_timer(id);
}

int32_t ferry_timer_start(double after, double every, const char **err)
{
    if (!(after >= 0) || !(every >= 0) || after > 1e9 || every > 1e9) {
        *err = "timer: seconds must be a number from 0 to 1e9";
        return FERRY_ERROR;
    }
    if (nused >= TIMER_MAX) {
        *err = "1024 timers running, the maximum";
        return FERRY_ERROR;
    }
    static uint32_t next; /* round robin, so a freed slot is not reused at once */
    struct timer_slot *s = NULL;
    for (int i = 0; i < TIMER_MAX; i++) {
        struct timer_slot *c = &slots[(next + (uint32_t)i) % TIMER_MAX];
        if (!c->used) {
            s = c;
            break;
        }
    }
    next = (uint32_t)(s - slots) + 1;
    s->gen = s->gen % TIMER_GEN_MAX + 1;
    s->used = 1;
    s->repeat = every > 0;
    nused++;
    ev_timer_init(&s->w, on_timer, after, every);
    ev_timer_start(loop, &s->w);
    return slot_id(s);
}

void ferry_timer_cancel(int32_t id)
{
    struct timer_slot *s = slot_of(id);
    if (s != NULL) {
        slot_free(s);
    }
}

int ferry_timer_count(void)
{
    return nused;
}

void timer_stop_all(void)
{
    for (int i = 0; i < TIMER_MAX; i++) {
        if (slots[i].used) {
            slot_free(&slots[i]);
        }
    }
}
