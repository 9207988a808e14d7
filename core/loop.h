/* loop.h - the one libev loop of the process and its clock. */
#ifndef FERRY_LOOP_H
#define FERRY_LOOP_H

#include <ev.h>

extern struct ev_loop *loop;

static inline double loop_now(void) { return ev_now(loop); }

#endif
