/* budget.c - bounds on the Lua the core runs.
 *
 * Lua runs on the event loop's thread: a runaway script stalls every
 * connection.  Three bounds stop it:
 *  - a count hook counts VM instructions (user code runs interpreted, so
 *    the hook sees every instruction of it);
 *  - a wrapper around the state's allocator counts the live heap and
 *    the bytes allocated during the call, and refuses growth past the
 *    bound (LuaJIT then raises "not enough memory").  The allocation
 *    count also bounds work the hook never sees: a loop that appends to
 *    a growing string copies it in C on every turn;
 *  - a stop asked for by SIGTERM/SIGINT (a volatile counter set by the
 *    signal handler) is read by the hook, so a long evaluation ends and
 *    the loop gets to drain.
 * A whole evaluation (config load, console line) that trips a bound
 * does not get a fresh budget: the hook then runs at every instruction
 * and raises in any code but the runtime's own (root/lua/), so a user
 * pcall cannot swallow it, while the runtime still cleans up and
 * reports.  Per-request hooks keep the old rule: the error leaves a
 * fresh budget to the runtime's built-in fallback. */
#include "budget.h"
#include "ferry.h"

#include <lauxlib.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define HOOK_STEP 1000              /* the hook runs every this many instructions */
#define TRIP_SLACK (16u << 20)      /* heap the runtime may still use after a trip */
#define HOOK_MEMORY (64u << 20)     /* heap a per-request hook may add (twice: allocate) */
#define MIB (1024.0 * 1024.0)
#define REG_MSGS "ferry.budget.messages"

enum budget_mode {
    MODE_OFF = 0,  /* no call under a budget: nothing counted against a bound */
    MODE_HOOK = 1, /* a per-request hook: instructions only */
    MODE_EVAL = 2  /* a whole evaluation: every bound, sticky once tripped */
};

/* The call running now. */
struct budget_call {
    enum budget_mode mode;
    enum budget_trip trip;   /* what stopped it, once something did */
    uint64_t steps;          /* hook calls so far */
    uint64_t steps_max;      /* hook calls allowed; 0 = unbounded */
    int64_t heap_max;        /* the heap may grow to this; 0 = unbounded */
    uint64_t allocated;      /* bytes allocated during the call */
    uint64_t allocated_max;  /* 0 = unbounded */
    sig_atomic_t stop_seq;   /* stop_seq when the call began */
    int raised;              /* the trip's error was raised once, with its position */
    int extended;            /* the load's bounds were added (ferry_budget_enter_load) */
    const struct budget_limits *lim;
};

struct budget_limits budget_load = { 200000000u, 256u << 20, 512u << 20 };
struct budget_limits budget_admin = { 50000000u, 64u << 20, 128u << 20 };

static lua_State *state;
static lua_Alloc base_alloc;
static void *base_ud;
static int64_t heap;                  /* bytes the state holds, since install */
static struct budget_call cur;
static volatile sig_atomic_t stop_seq;
static char trusted[4096];            /* "@ROOT/lua/": the runtime's sources */
static size_t trusted_len;

static const char *limits_name(const struct budget_limits *lim)
{
    return lim == &budget_admin ? "ADMIN" : "LOAD";
}

static const char *trip_code(enum budget_trip t)
{
    switch (t) {
    case BUDGET_STEPS:
        return "FERRY-4011";
    case BUDGET_MEMORY:
        return "FERRY-4012";
    case BUDGET_ALLOCATED:
        return "FERRY-4013";
    case BUDGET_STOPPED:
        return "FERRY-4014";
    default:
        return "FERRY-4011";
    }
}

const char *budget_describe(enum budget_trip t, char *buf, size_t n)
{
    const struct budget_limits *lim = cur.lim != NULL ? cur.lim : &budget_load;
    const char *name = limits_name(lim);
    switch (t) {
    case BUDGET_MEMORY:
        snprintf(buf, n, "script exceeded its budget of %.0f MiB of memory "
                 "(FERRY_%s_MEMORY_MB) [%s]", (double)lim->memory / MIB, name, trip_code(t));
        break;
    case BUDGET_ALLOCATED:
        snprintf(buf, n, "script exceeded its budget of %.0f MiB allocated (a string built "
                 "piece by piece? FERRY_%s_MEMORY_MB) [%s]", (double)lim->allocated / MIB, name,
                 trip_code(t));
        break;
    case BUDGET_STOPPED:
        snprintf(buf, n, "script stopped: ferry is stopping (SIGTERM or SIGINT) [%s]",
                 trip_code(t));
        break;
    default:
        snprintf(buf, n, "script exceeded its budget of %llu instructions (runaway loop?) [%s]",
                 (unsigned long long)lim->steps, trip_code(t));
        break;
    }
    return buf;
}

static void eval_hook(lua_State *l, lua_Debug *ar);

/* A bound tripped: from now on the hook runs at every instruction, and
 * the runtime gets some room to clean up and report. */
static void trip_now(enum budget_trip t)
{
    if (cur.trip != BUDGET_OK) {
        return;
    }
    cur.trip = t;
    if (cur.heap_max != 0) {
        cur.heap_max = heap + TRIP_SLACK;
    }
    if (cur.allocated_max != 0) {
        cur.allocated_max = cur.allocated + TRIP_SLACK;
    }
    /* As lua.c does from its signal handler: safe at any point. */
    lua_sethook(state, eval_hook, LUA_MASKCOUNT, 1);
}

static void *budget_alloc(void *ud, void *ptr, size_t osize, size_t nsize)
{
    if (nsize > osize && cur.mode == MODE_HOOK) {
        /* A per-request hook: refused, and its runtime falls back. */
        uint64_t grow = nsize - osize;
        if (heap + (int64_t)grow > cur.heap_max || cur.allocated + grow > cur.allocated_max) {
            return NULL;
        }
    } else if (nsize > osize && cur.mode == MODE_EVAL) {
        uint64_t grow = nsize - osize;
        enum budget_trip t = BUDGET_OK;
        if (cur.heap_max != 0 && heap + (int64_t)grow > cur.heap_max) {
            t = BUDGET_MEMORY;
        } else if (cur.allocated_max != 0 && cur.allocated + grow > cur.allocated_max) {
            t = BUDGET_ALLOCATED;
        }
        if (t != BUDGET_OK) {
            trip_now(t);
            return NULL; /* LuaJIT raises "not enough memory" */
        }
    }
    void *p = base_alloc(ud, ptr, osize, nsize);
    if (p != NULL || nsize == 0) {
        heap += (int64_t)nsize - (int64_t)osize;
        if (nsize > osize) {
            cur.allocated += nsize - osize;
        }
    }
    return p;
}

/* Whether the function running now is user code (anything but the
 * runtime's own files). */
static int user_code(lua_State *l, lua_Debug *ar)
{
    if (lua_getinfo(l, "S", ar) == 0 || ar->source == NULL) {
        return 1;
    }
    return trusted_len == 0 || strncmp(ar->source, trusted, trusted_len) != 0;
}

/* Raise the trip's error: with the position the first time (there is
 * room: trip_now left some), then the prepared message, which needs no
 * allocation. */
static void raise_trip(lua_State *l)
{
    if (!cur.raised) {
        char msg[256];
        cur.raised = 1;
        luaL_where(l, 0); /* in a hook, level 0 is the interrupted function */
        lua_pushstring(l, budget_describe(cur.trip, msg, sizeof(msg)));
        lua_concat(l, 2);
        lua_error(l);
    }
    lua_getfield(l, LUA_REGISTRYINDEX, REG_MSGS);
    lua_rawgeti(l, -1, (int)cur.trip);
    lua_remove(l, -2);
    lua_error(l);
}

static void eval_hook(lua_State *l, lua_Debug *ar)
{
    if (cur.trip == BUDGET_OK) {
        if (stop_seq != cur.stop_seq) {
            trip_now(BUDGET_STOPPED);
        } else if (cur.steps_max != 0 && ++cur.steps > cur.steps_max) {
            trip_now(BUDGET_STEPS);
        } else {
            return;
        }
    }
    if (user_code(l, ar)) {
        raise_trip(l);
    }
}

static void request_hook(lua_State *l, lua_Debug *ar)
{
    (void)ar;
    if (++cur.steps > cur.steps_max) {
        char msg[128];
        cur.steps = 0; /* the fallback that catches this gets a fresh budget */
        /* lua_pushfstring knows no %llu: the number is formatted here. */
        snprintf(msg, sizeof(msg), "script exceeded its budget of %llu instructions "
                 "(runaway loop?)", (unsigned long long)(cur.steps_max * HOOK_STEP));
        luaL_error(l, "%s", msg);
    }
}

/* A bound from the environment: a whole number, else the default. */
static uint64_t env_number(const char *name, uint64_t dflt, uint64_t unit)
{
    const char *v = getenv(name);
    if (v == NULL || *v == '\0') {
        return dflt;
    }
    char *end = NULL;
    double d = strtod(v, &end);
    if (end == v || *end != '\0' || !(d >= 1) || d > 1e15) {
        fprintf(stderr, "ferry: ignoring %s=%s (expected a positive number)\n", name, v);
        return dflt;
    }
    return (uint64_t)d * unit;
}

static void read_env(struct budget_limits *lim, const char *name)
{
    char var[64];
    snprintf(var, sizeof(var), "FERRY_%s_INSTRUCTIONS", name);
    lim->steps = env_number(var, lim->steps, 1);
    snprintf(var, sizeof(var), "FERRY_%s_MEMORY_MB", name);
    uint64_t mem = env_number(var, 0, 1u << 20);
    if (mem != 0) {
        lim->memory = mem;
        lim->allocated = mem * 2; /* the copying a loop may do: twice the heap */
    }
}

void budget_install(lua_State *L, const char *root)
{
    state = L;
    base_alloc = lua_getallocf(L, &base_ud);
    lua_setallocf(L, budget_alloc, base_ud);
    heap = 0;
    memset(&cur, 0, sizeof(cur));
    int n = snprintf(trusted, sizeof(trusted), "@%s/lua/", root);
    trusted_len = n > 0 && (size_t)n < sizeof(trusted) ? (size_t)n : 0;
    read_env(&budget_load, "LOAD");
    read_env(&budget_admin, "ADMIN");
}

void budget_uninstall(lua_State *L)
{
    if (base_alloc != NULL) {
        lua_setallocf(L, base_alloc, base_ud);
    }
    cur.mode = MODE_OFF;
}

void budget_begin_hook(lua_State *L, uint64_t steps)
{
    memset(&cur, 0, sizeof(cur));
    cur.mode = MODE_HOOK;
    cur.steps_max = steps / HOOK_STEP;
    cur.heap_max = heap + HOOK_MEMORY;
    cur.allocated_max = 2 * HOOK_MEMORY;
    lua_sethook(L, request_hook, LUA_MASKCOUNT, HOOK_STEP);
}

void budget_begin_eval(lua_State *L, const struct budget_limits *lim)
{
    memset(&cur, 0, sizeof(cur));
    cur.lim = lim;
    /* The messages a tripped call raises, made while memory is there. */
    lua_createtable(L, 4, 0);
    for (int t = BUDGET_STEPS; t <= BUDGET_STOPPED; t++) {
        char msg[256];
        lua_pushstring(L, budget_describe((enum budget_trip)t, msg, sizeof(msg)));
        lua_rawseti(L, -2, t);
    }
    lua_setfield(L, LUA_REGISTRYINDEX, REG_MSGS);
    cur.steps_max = lim->steps != 0 ? (lim->steps + HOOK_STEP - 1) / HOOK_STEP : 0;
    cur.heap_max = lim->memory != 0 ? heap + (int64_t)lim->memory : 0;
    cur.allocated_max = lim->allocated;
    cur.stop_seq = stop_seq;
    cur.mode = MODE_EVAL;
    lua_sethook(L, eval_hook, LUA_MASKCOUNT, HOOK_STEP);
}

enum budget_trip budget_end(lua_State *L)
{
    enum budget_trip t = cur.mode == MODE_EVAL ? cur.trip : BUDGET_OK;
    lua_sethook(L, NULL, 0, 0);
    cur.mode = MODE_OFF;
    if (t != BUDGET_OK) {
        lua_gc(L, LUA_GCCOLLECT, 0); /* what the runaway built is garbage now */
    }
    return t;
}

int ferry_budget_charge(double instructions)
{
    if (cur.mode == MODE_OFF || !(instructions > 0)) {
        return FERRY_OK;
    }
    if (cur.mode == MODE_EVAL && cur.trip != BUDGET_OK) {
        return FERRY_ERROR;
    }
    double steps = instructions / HOOK_STEP;
    if (cur.steps_max != 0 && (double)cur.steps + steps > (double)cur.steps_max) {
        if (cur.mode == MODE_EVAL) {
            trip_now(BUDGET_STEPS);
        } else {
            cur.steps = 0; /* as request_hook: the fallback gets a fresh budget */
        }
        return FERRY_ERROR;
    }
    cur.steps += (uint64_t)steps;
    return FERRY_OK;
}

const char *ferry_budget_message(void)
{
    static char msg[256];
    if (cur.mode == MODE_HOOK) {
        snprintf(msg, sizeof(msg), "script exceeded its budget of %llu instructions "
                 "(runaway loop?)", (unsigned long long)(cur.steps_max * HOOK_STEP));
        return msg;
    }
    return budget_describe(cur.trip != BUDGET_OK ? cur.trip : BUDGET_STEPS, msg, sizeof(msg));
}

void ferry_budget_enter_load(void)
{
    if (cur.mode != MODE_EVAL || cur.trip != BUDGET_OK || cur.extended ||
        cur.lim == &budget_load) {
        return;
    }
    cur.extended = 1;
    cur.lim = &budget_load; /* a trip from now on names the load's bounds */
    cur.steps_max += (budget_load.steps + HOOK_STEP - 1) / HOOK_STEP;
    if (cur.heap_max != 0) {
        cur.heap_max += (int64_t)budget_load.memory;
    }
    if (cur.allocated_max != 0) {
        cur.allocated_max += budget_load.allocated;
    }
}

const char *ferry_budget_tripped(void)
{
    static char msg[256];
    if (cur.mode != MODE_EVAL || cur.trip == BUDGET_OK) {
        return NULL;
    }
    return budget_describe(cur.trip, msg, sizeof(msg));
}

void budget_request_stop(void)
{
    stop_seq = stop_seq + 1;
}
