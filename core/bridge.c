/* bridge.c - LuaJIT bootstrap and the per-request call into Lua.
 *
 * The Lua C API is used only here, and only to boot the runtime and
 * call its entry points; everything the runtime needs from the core
 * goes through the ferry_* FFI functions of ferry.h. */
#include "bridge.h"
#include "budget.h"
#include "log.h"
#include "metrics.h"

#include <lauxlib.h>
#include <lua.h>
#include <lualib.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* A per-request hook that runs longer than this many VM instructions is
 * stopped.  Config loads and admin requests (metrics of 10 000 proxies,
 * console lines) run under budget_load and budget_admin (budget.c). */
#define HOOK_BUDGET 1000000

static lua_State *L;
static int ref_dispatch = LUA_NOREF;
static int ref_result = LUA_NOREF;
static int ref_admin = LUA_NOREF;
static int ref_timer = LUA_NOREF;
static int ref_pg = LUA_NOREF;

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
    budget_install(L, root);
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
    lua_getfield(L, -1, "admin");
    ref_admin = luaL_ref(L, LUA_REGISTRYINDEX);
    lua_getfield(L, -1, "result");
    ref_result = luaL_ref(L, LUA_REGISTRYINDEX);
    lua_getfield(L, -1, "timer");
    ref_timer = luaL_ref(L, LUA_REGISTRYINDEX);
    lua_getfield(L, -1, "pg_event");
    ref_pg = luaL_ref(L, LUA_REGISTRYINDEX);
    lua_setglobal(L, "__ferry_runtime");
    lua_settop(L, 0);
    return 0;
}

/* The message of a load that a budget stopped: LuaJIT's "not enough
 * memory" (a refused allocation) says which bound, and a message that
 * names no bound gets it appended. */
static void budget_message(enum budget_trip t, const char *msg, char *err, size_t errlen)
{
    char what[256];
    budget_describe(t, what, sizeof(what));
    const char *oom = msg != NULL ? strstr(msg, "not enough memory") : NULL;
    /* Where the runaway was is in the message; the runtime's stack is noise. */
    const char *tb = msg != NULL ? strstr(msg, "\nstack traceback:") : NULL;
    int len = tb != NULL ? (int)(tb - msg) : (int)(msg != NULL ? strlen(msg) : 0);
    if (msg == NULL) {
        snprintf(err, errlen, "%s", what);
    } else if (oom != NULL && oom - msg < len) {
        int tail = len - (int)(oom - msg) - (int)strlen("not enough memory");
        snprintf(err, errlen, "%.*s%s%.*s", (int)(oom - msg), msg, what, tail > 0 ? tail : 0,
                 oom + strlen("not enough memory"));
    } else if (strstr(msg, "[FERRY-401") == NULL) {
        snprintf(err, errlen, "%.*s: %s", len, msg, what);
    } else {
        snprintf(err, errlen, "%.*s", len, msg);
    }
}

/* Call runtime[fn](config, apply) under the load budget: true, or nil
 * and a message. */
static int call_load(const char *fn, const char *config, int apply, char *err, size_t errlen)
{
    lua_pushcfunction(L, traceback);
    lua_getglobal(L, "__ferry_runtime");
    lua_getfield(L, -1, fn);
    lua_remove(L, -2);
    lua_pushstring(L, config);
    lua_pushboolean(L, apply);
    int rc = 0;
    const char *msg = NULL;
    budget_begin_eval(L, &budget_load);
    if (lua_pcall(L, 2, 2, 1) != 0) {
        msg = lua_tostring(L, -1);
        rc = -1;
    } else if (!lua_toboolean(L, -2)) {
        msg = lua_tostring(L, -1);
        if (msg == NULL) {
            msg = "config rejected";
        }
        rc = -1;
    }
    enum budget_trip t = budget_end(L);
    if (t != BUDGET_OK) {
        budget_message(t, msg, err, errlen);
        rc = -1;
    } else if (rc != 0) {
        snprintf(err, errlen, "%s", msg != NULL ? msg : "(error object is not a string)");
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

/* Run a runtime entry point on one pointer: per request under the hook
 * budget, or (lim) as a whole evaluation.  Returns the lua_pcall code;
 * the result (if any) is left on the stack. */
static void *bridge_arg;

void *ferry_bridge_arg(void)
{
    return bridge_arg;
}

static int call_budgeted_n(int ref, void *arg, int nresults, const struct budget_limits *lim)
{
    lua_rawgeti(L, LUA_REGISTRYINDEX, ref);
    lua_pushlightuserdata(L, arg);
    if (lim != NULL) {
        budget_begin_eval(L, lim);
    } else {
        budget_begin_hook(L, HOOK_BUDGET);
    }
    void *outer = bridge_arg; /* entry points do not nest today; if one ever does */
    bridge_arg = arg;
    int rc = lua_pcall(L, 1, nresults, 0);
    bridge_arg = outer;
    budget_end(L);
    return rc;
}

static int call_budgeted(int ref, void *arg)
{
    return call_budgeted_n(ref, arg, 1, NULL);
}

int bridge_admin(const struct ferry_admin_req *r, struct bridge_answer *out)
{
    memset(out, 0, sizeof(*out));
    if (L == NULL || ref_admin == LUA_NOREF) {
        return -1;
    }
    /* status, content type, body, headers[, token, wait]: with a token
     * the answer waits (admin.c) and the rest is its fallback. */
    int rc = call_budgeted_n(ref_admin, (void *)r, 6, &budget_admin);
    if (rc == 0) {
        out->token = lua_isnumber(L, -2) ? lua_tonumber(L, -2) : 0;
        out->wait = lua_isnumber(L, -1) ? lua_tonumber(L, -1) : 0;
        lua_pop(L, 2);
    }
    if (rc != 0 || !lua_isnumber(L, -4) || !lua_isstring(L, -2)) {
        metrics_hook_error(FERRY_HOOK_RUNTIME);
        log_event(LOG_ERROR, "FERRY-7001", NULL, "admin handler failed: %s",
                  rc != 0 ? lua_tostring(L, -1) : "it returned something that is not an answer");
        lua_settop(L, 0);
        return -1;
    }
    size_t blen = 0, hlen = 0;
    const char *ctype = lua_tostring(L, -3);
    const char *body = lua_tolstring(L, -2, &blen);
    const char *hdrs = lua_isstring(L, -1) ? lua_tolstring(L, -1, &hlen) : NULL;
    out->status = (int)lua_tonumber(L, -4);
    snprintf(out->content_type, sizeof(out->content_type), "%s",
             ctype != NULL ? ctype : "text/plain");
    out->body = malloc(blen + 1);
    out->headers = hdrs != NULL ? malloc(hlen + 1) : NULL;
    if (out->body == NULL || (hdrs != NULL && out->headers == NULL)) {
        free(out->body);
        free(out->headers);
        out->body = out->headers = NULL;
        lua_settop(L, 0);
        return -1;
    }
    memcpy(out->body, body, blen);
    out->body[blen] = '\0';
    out->body_len = blen;
    if (hdrs != NULL) {
        memcpy(out->headers, hdrs, hlen);
        out->headers[hlen] = '\0';
    }
    lua_settop(L, 0);
    return 0;
}

void bridge_result(struct ferry_result *r)
{
    if (L == NULL || ref_result == LUA_NOREF) {
        return;
    }
    if (call_budgeted(ref_result, r) != 0) {
        metrics_hook_error(FERRY_HOOK_RUNTIME);
        log_event(LOG_ERROR, "FERRY-4001", NULL, "result hook failed: %s", lua_tostring(L, -1));
    }
    lua_settop(L, 0);
}

/* An event of the loop for the runtime: ref(n) under the admin bounds
 * (a fleet resync may walk every proxy).  The runtime calls each user
 * callback under pcall itself; reaching the error branch means its own
 * code failed.  Never nested in another call of the runtime: the core
 * calls it only from watchers. */
static void call_event(int ref, lua_Integer n, const char *code, const char *what_failed)
{
    if (L == NULL || ref == LUA_NOREF) {
        return;
    }
    lua_pushcfunction(L, traceback);
    lua_rawgeti(L, LUA_REGISTRYINDEX, ref);
    lua_pushinteger(L, n);
    budget_begin_eval(L, &budget_admin);
    int rc = lua_pcall(L, 1, 0, 1);
    enum budget_trip t = budget_end(L);
    if (rc != 0 || t != BUDGET_OK) {
        char what[256];
        metrics_hook_error(FERRY_HOOK_RUNTIME);
        log_event(LOG_ERROR, code, NULL, "%s %d failed: %s", what_failed, (int)n,
                  t != BUDGET_OK ? budget_describe(t, what, sizeof(what))
                                 : lua_tostring(L, -1));
    }
    lua_settop(L, 0);
}

void bridge_timer(int32_t id)
{
    call_event(ref_timer, id, "FERRY-8000", "timer");
}

void bridge_pg(int ev)
{
    call_event(ref_pg, ev, "FERRY-8008", "postgres event");
}

int64_t bridge_dispatch(struct ferry_req *r)
{
    int rc = call_budgeted(ref_dispatch, r);
    int64_t id;
    if (rc != 0) {
        /* The runtime guards plugins itself; reaching here means the
         * runtime's own code failed, or a hook ran away. */
        metrics_hook_error(FERRY_HOOK_RUNTIME);
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

/* A request of core/hclient.c ended: ferry.hclient's done(result), under
 * the admin budget (the broker client may commit a config from there). */
static int ref_hclient = LUA_NOREF;

void bridge_hclient_done(struct ferry_hclient_result *r)
{
    if (L == NULL) {
        return;
    }
    if (ref_hclient == LUA_NOREF) {
        lua_getglobal(L, "require");
        lua_pushstring(L, "ferry.hclient");
        if (lua_pcall(L, 1, 1, 0) != 0 || !lua_istable(L, -1)) {
            log_event(LOG_ERROR, "FERRY-8101", NULL, "http client: cannot load ferry.hclient: %s",
                      lua_isstring(L, -1) ? lua_tostring(L, -1) : "not a module");
            lua_settop(L, 0);
            return;
        }
        lua_getfield(L, -1, "done");
        ref_hclient = luaL_ref(L, LUA_REGISTRYINDEX);
        lua_settop(L, 0);
    }
    if (call_budgeted_n(ref_hclient, r, 0, &budget_admin) != 0) {
        metrics_hook_error(FERRY_HOOK_RUNTIME);
        log_event(LOG_ERROR, "FERRY-8101", NULL, "http client callback failed: %s",
                  lua_tostring(L, -1));
    }
    lua_settop(L, 0);
}

int bridge_drain(int busy)
{
    if (L == NULL) {
        return 0;
    }
    lua_pushcfunction(L, traceback);
    lua_getglobal(L, "__ferry_runtime");
    lua_getfield(L, -1, "drain");
    lua_remove(L, -2);
    int hold = 0;
    if (lua_isfunction(L, -1)) {
        lua_pushinteger(L, busy);
        if (lua_pcall(L, 1, 1, 1) != 0) {
            log_event(LOG_ERROR, "FERRY-4001", NULL, "drain hook failed: %s", lua_tostring(L, -1));
        } else {
            hold = lua_toboolean(L, -1);
        }
    }
    lua_settop(L, 0);
    return hold;
}

void bridge_stop(void)
{
    if (L == NULL) {
        return;
    }
    lua_pushcfunction(L, traceback);
    lua_getglobal(L, "__ferry_runtime");
    lua_getfield(L, -1, "stop");
    lua_remove(L, -2);
    if (lua_isfunction(L, -1) && lua_pcall(L, 0, 0, 1) != 0) {
        log_event(LOG_ERROR, "FERRY-4001", NULL, "stop hook failed: %s", lua_tostring(L, -1));
    }
    lua_settop(L, 0);
}

void bridge_fini(void)
{
    if (L != NULL) {
        budget_uninstall(L); /* LuaJIT frees its own arena only behind its own allocator */
        lua_close(L);
        L = NULL;
    }
}
