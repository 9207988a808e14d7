/* bridge.c - LuaJIT bootstrap and the per-request call into Lua.
 *
 * The Lua C API is used only here, and only to boot the runtime and
 * call its entry points; everything the runtime needs from the core
 * goes through the ferry_* FFI functions of ferry.h. */
#include "bridge.h"
#include "log.h"

#include <lauxlib.h>
#include <lua.h>
#include <lualib.h>
#include <stdio.h>
#include <string.h>

/* A hook that runs longer than this many VM instructions is stopped. */
#define HOOK_BUDGET_STEPS 1000      /* hook calls ... */
#define HOOK_STEP 1000              /* ... every this many instructions */

static lua_State *L;
static int ref_dispatch = LUA_NOREF;
static int ref_result = LUA_NOREF;
static unsigned hook_steps;
static unsigned long long hook_errors;

static void budget_hook(lua_State *l, lua_Debug *ar)
{
    (void)ar;
    if (++hook_steps > HOOK_BUDGET_STEPS) {
        hook_steps = 0; /* the fallback that catches this gets a fresh budget */
        luaL_error(l, "script exceeded its budget of %d instructions (runaway loop?)",
                   HOOK_BUDGET_STEPS * HOOK_STEP);
    }
}

static int traceback(lua_State *l)
{
    const char *msg = lua_tostring(l, 1);
    luaL_traceback(l, l, msg != NULL ? msg : "(error object is not a string)", 1);
    return 1;
}

int bridge_init(const char *root, char *err, size_t errlen)
{
    L = luaL_newstate();
    if (L == NULL) {
        snprintf(err, errlen, "cannot create Lua state");
        return -1;
    }
    luaL_openlibs(L);
    lua_getglobal(L, "package");
    lua_pushfstring(L, "%s/lua/?.lua;%s/lua/?/init.lua", root, root);
    lua_setfield(L, -2, "path");
    lua_pop(L, 1);
    lua_pushcfunction(L, traceback);
    lua_getglobal(L, "require");
    lua_pushstring(L, "ferry.runtime");
    if (lua_pcall(L, 1, 1, -3) != 0) {
        snprintf(err, errlen, "%s", lua_tostring(L, -1));
        lua_settop(L, 0);
        return -1;
    }
    lua_getfield(L, -1, "set_root");
    lua_pushstring(L, root);
    lua_call(L, 1, 0);
    lua_getfield(L, -1, "dispatch");
    ref_dispatch = luaL_ref(L, LUA_REGISTRYINDEX);
    lua_getfield(L, -1, "result");
    ref_result = luaL_ref(L, LUA_REGISTRYINDEX);
    lua_setglobal(L, "__ferry_runtime");
    lua_settop(L, 0);
    return 0;
}

/* Call runtime[fn](config, apply): true, or nil and a message. */
static int call_load(const char *fn, const char *config, int apply, char *err, size_t errlen)
{
    lua_pushcfunction(L, traceback);
    lua_getglobal(L, "__ferry_runtime");
    lua_getfield(L, -1, fn);
    lua_remove(L, -2);
    lua_pushstring(L, config);
    lua_pushboolean(L, apply);
    int rc = 0;
    if (lua_pcall(L, 2, 2, 1) != 0) {
        snprintf(err, errlen, "%s", lua_tostring(L, -1));
        rc = -1;
    } else if (!lua_toboolean(L, -2)) {
        const char *m = lua_tostring(L, -1);
        snprintf(err, errlen, "%s", m != NULL ? m : "config rejected");
        rc = -1;
    }
    lua_settop(L, 0);
    return rc;
}

int bridge_load(const char *config, int apply, char *err, size_t errlen)
{
    return call_load("load", config, apply, err, errlen);
}

int bridge_reload(const char *config, char *err, size_t errlen)
{
    return call_load("reload", config, 1, err, errlen);
}

/* Run a runtime entry point on one pointer under the instruction budget.
 * Returns the lua_pcall code; the result (if any) is left on the stack. */
static int call_budgeted(int ref, void *arg)
{
    lua_rawgeti(L, LUA_REGISTRYINDEX, ref);
    lua_pushlightuserdata(L, arg);
    hook_steps = 0;
    lua_sethook(L, budget_hook, LUA_MASKCOUNT, HOOK_STEP);
    int rc = lua_pcall(L, 1, 1, 0);
    lua_sethook(L, NULL, 0, 0);
    return rc;
}

void bridge_result(struct ferry_result *r)
{
    if (L == NULL || ref_result == LUA_NOREF) {
        return;
    }
    if (call_budgeted(ref_result, r) != 0) {
        hook_errors++;
        log_event(LOG_ERROR, "FERRY-4001", NULL, "result hook failed: %s", lua_tostring(L, -1));
    }
    lua_settop(L, 0);
}

int64_t bridge_dispatch(struct ferry_req *r)
{
    int rc = call_budgeted(ref_dispatch, r);
    int64_t id;
    if (rc != 0) {
        /* The runtime guards plugins itself; reaching here means the
         * runtime's own code failed, or a hook ran away. */
        hook_errors++;
        log_event(LOG_ERROR, "FERRY-4001", NULL, "dispatch failed: %s", lua_tostring(L, -1));
        id = BRIDGE_ROUTE_ERROR;
    } else if (lua_type(L, -1) != LUA_TNUMBER) {
        log_event(LOG_ERROR, "FERRY-4001", NULL, "dispatch returned a %s",
                  lua_typename(L, lua_type(L, -1)));
        id = BRIDGE_ROUTE_ERROR;
    } else {
        id = (int64_t)lua_tonumber(L, -1);
    }
    lua_settop(L, 0);
    return id;
}

void ferry_count_hook_error(int kind)
{
    (void)kind;
    hook_errors++;
}

void bridge_fini(void)
{
    if (L != NULL) {
        lua_close(L);
        L = NULL;
    }
}
