/* bridge.h - the Lua side of the core: boot the runtime, ask it questions. */
#ifndef FERRY_BRIDGE_H
#define FERRY_BRIDGE_H

#include "ferry.h"

#include <stddef.h>
#include <stdint.h>

/* Negative answers of bridge_dispatch (enum ferry_dispatch). */
#define BRIDGE_NO_PROXY    FERRY_DISPATCH_NO_PROXY
#define BRIDGE_ROUTE_ERROR FERRY_DISPATCH_ROUTE_ERROR
#define BRIDGE_DENY        FERRY_DISPATCH_DENY
#define BRIDGE_ALL_DOWN    FERRY_DISPATCH_ALL_DOWN
#define BRIDGE_RATE        FERRY_DISPATCH_RATE

/* Create the Lua state and load lua/ferry/runtime.lua from root. */
int bridge_init(const char *root, char *err, size_t errlen);
/* Validate a config; with apply, also open listeners and create proxies. */
int bridge_load(const char *config, int apply, char *err, size_t errlen);
/* Route one request: a proxy id, 0 for direct, or BRIDGE_*. */
int64_t bridge_dispatch(struct ferry_req *r);
/* Tell Lua the outcome of an attempt (breakers, bans, on_response). */
void bridge_result(struct ferry_result *r);
/* Reload the config (SIGHUP): 0, or -1 with err (the old one stays). */
int bridge_reload(const char *config, char *err, size_t errlen);
/* The admin router's answer: owned by the caller (free body and headers). */
struct bridge_answer {
    int status;
    char content_type[96];
    char *body;
    size_t body_len;
    char *headers;  /* extra "Name: value\r\n" lines, or NULL */
    double token;   /* > 0: the answer waits (admin.c); the above is its fallback */
    double wait;    /* seconds the fallback waits before it goes */
};
/* Answer one admin request: 0, or -1 when the runtime failed (logged). */
int bridge_admin(const struct ferry_admin_req *r, struct bridge_answer *out);
/* A core/hclient.c request ended: hand it to lua/ferry/hclient.lua. */
struct ferry_hclient_result;
void bridge_hclient_done(struct ferry_hclient_result *r);
/* A timer of ferry_timer_start expired: runtime.timer(id). */
void bridge_timer(int32_t id);
/* An event of the PostgreSQL connection (enum ferry_pg_event): runtime.pg_event(ev). */
void bridge_pg(int ev);
/* Each drain tick after SIGTERM: runtime.drain(busy), busy = proxy
 * connections still open.  1 while the runtime asks the loop to run on
 * (a fleet node announcing that it stops; it bounds its own wait). */
int bridge_drain(int busy);
/* The daemon is stopping: let the runtime persist (runtime.stop). */
void bridge_stop(void);
void bridge_fini(void);

#endif
