/* budget.h - bounds on the Lua the core runs: instructions, memory, and
 * a stop asked for by a signal while Lua is busy. */
#ifndef FERRY_BUDGET_H
#define FERRY_BUDGET_H

#include <lua.h>
#include <stddef.h>
#include <stdint.h>

/* What stopped a call (budget_end's answer). */
enum budget_trip {
    BUDGET_OK = 0,        /* the call stayed within its bounds */
    BUDGET_STEPS = 1,     /* VM instructions */
    BUDGET_MEMORY = 2,    /* live bytes of the Lua heap grew past the bound */
    BUDGET_ALLOCATED = 3, /* bytes allocated during the call (copying work) */
    BUDGET_STOPPED = 4    /* SIGTERM/SIGINT arrived while it ran */
};

/* The bounds of one kind of call; 0 in a field means unbounded. */
struct budget_limits {
    uint64_t steps;     /* VM instructions */
    uint64_t memory;    /* growth of the live heap, bytes */
    uint64_t allocated; /* bytes allocated in total, bytes */
};

/* Config load, plugin init and exchange scripts (start, SIGHUP,
 * ferry check); the admin plane (console lines, reload from the console,
 * /metrics).  Read from the environment by budget_install. */
extern struct budget_limits budget_load, budget_admin;

/* Wrap L's allocator and read FERRY_LOAD_* / FERRY_ADMIN_* from the
 * environment.  Code loaded from root/lua/ is the runtime's own: once a
 * whole evaluation tripped, only the rest (user code) is interrupted. */
void budget_install(lua_State *L, const char *root);
/* Give L its own allocator back, before lua_close. */
void budget_uninstall(lua_State *L);
/* Per-request hooks (dispatch, result): an instruction budget only; the
 * error leaves a fresh budget to the runtime's built-in fallback. */
void budget_begin_hook(lua_State *L, uint64_t steps);
/* A whole evaluation under lim: once a bound trips, user code raises
 * at every instruction until the call returns. */
void budget_begin_eval(lua_State *L, const struct budget_limits *lim);
/* End the call: hook off, bounds off, a full GC after a trip. */
enum budget_trip budget_end(lua_State *L);
/* "script exceeded its budget of ..." for a trip, with the bound. */
const char *budget_describe(enum budget_trip t, char *buf, size_t n);
/* Async-signal-safe: a whole evaluation running now stops. */
void budget_request_stop(void);

#endif
