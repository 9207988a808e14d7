/* timer.h - Lua timers on the loop: C owns the ev_timers, Lua owns the
 * callbacks (lua/ferry/timer.lua keeps them by id). */
#ifndef FERRY_TIMER_H
#define FERRY_TIMER_H

#include <stdint.h>

/* At most this many timers at once; one more is refused (FERRY-8001). */
#define TIMER_MAX 1024

/* Stop every timer (the daemon stops). */
void timer_stop_all(void);

#endif
