/* fuzz_lua.c - the LuaJIT state of the Lua harnesses (see fuzz_lua.h). */
#include "fuzz_lua.h"

#include <lauxlib.h>
#include <lua.h>
#include <luajit.h>
#include <lualib.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#ifndef FUZZ_ROOT
#define FUZZ_ROOT "."
#endif

#define MEM_CAP (64u << 20)      /* bytes a state may hold */
#define STEP 1000                /* instructions between count hooks */
#define MAX_STEPS 2000           /* 2 M instructions per input */
#define COV_SIZE (1u << 15)

/* libFuzzer reads this section as extra coverage counters. */
__attribute__((section("__libfuzzer_extra_counters"), used)) static uint8_t lua_cov[COV_SIZE];

static struct {
    size_t used;
    unsigned steps;
    uint32_t prev;
    int out_of_memory;
    int out_of_steps;
} st;

static void *cap_alloc(void *ud, void *ptr, size_t osize, size_t nsize)
{
    (void)ud;
    size_t old = ptr != NULL ? osize : 0;
    if (nsize == 0) {
        free(ptr);
        st.used -= old;
        return NULL;
    }
    if (nsize > old && st.used - old + nsize > MEM_CAP) {
        st.out_of_memory = 1;
        return NULL;
    }
    void *p = realloc(ptr, nsize);
    if (p == NULL) {
        st.out_of_memory = 1;
        return NULL;
    }
    st.used = st.used - old + nsize;
    return p;
}

static uint32_t source_hash(const char *s, int line)
{
    /* Sources differ in their tails ("@.../config.lua", "=[C]"). */
    size_t n = strlen(s);
    const char *p = n > 24 ? s + n - 24 : s;
    uint32_t h = 2166136261u;
    for (; *p; p++) {
        h = (h ^ (uint8_t)*p) * 16777619u;
    }
    return h ^ ((uint32_t)line * 2654435761u);
}

static void hook(lua_State *L, lua_Debug *ar)
{
    if (ar->event == LUA_HOOKLINE) {
        if (lua_getinfo(L, "S", ar) && ar->source != NULL) {
            uint32_t h = source_hash(ar->source, ar->currentline);
            lua_cov[(h ^ (st.prev >> 1)) % COV_SIZE]++;
            st.prev = h;
        }
        if (!st.out_of_steps) {
            return;
        }
    } else if (!st.out_of_steps && ++st.steps > MAX_STEPS) {
        st.out_of_steps = 1;
        /* From now on every instruction fails, so no pcall in the code
         * under test can catch the stop and carry on. */
        lua_sethook(L, hook, LUA_MASKCOUNT | LUA_MASKLINE, 1);
    }
    if (st.out_of_steps) {
        luaL_error(L, "fuzz: instruction budget exhausted");
    }
}

static int silent(lua_State *L)
{
    (void)L;
    return 0;
}

static void finding(const char *who, const char *msg, const char *data, size_t n)
{
    fprintf(stderr, "%s: FINDING: %s\n", who, msg);
    fprintf(stderr, "%s: input (%zu bytes): %.*s\n", who, n, (int)(n < 300 ? n : 300), data);
    abort();
}

static lua_State *kept;      /* the state reused by drivers that allow it */
static const char *kept_driver;

static lua_State *open_state(const char *who, const char *driver, const char *data, size_t n)
{
    st.used = 0;
    lua_State *L = lua_newstate(cap_alloc, NULL);
    if (L == NULL) {
        return NULL;
    }
    luaL_openlibs(L);
    luaJIT_setmode(L, 0, LUAJIT_MODE_ENGINE | LUAJIT_MODE_OFF);
    lua_pushcfunction(L, silent);
    lua_setglobal(L, "print");
    /* Ferry's modules first, then the drivers, then the system's (cjson). */
    if (luaL_dostring(L, "package.path = '" FUZZ_ROOT "/lua/?.lua;" FUZZ_ROOT
                         "/spec/fuzz/?.lua;' .. package.path") != 0) {
        finding(who, lua_tostring(L, -1), data, n);
    }
    lua_getglobal(L, "require");
    lua_pushstring(L, driver);
    if (lua_pcall(L, 1, 1, 0) != 0) {
        finding(who, lua_tostring(L, -1), data, n); /* the setup itself is broken */
    }
    lua_setglobal(L, "fuzz_driver");
    return L;
}

void fuzz_lua_run(const char *who, const char *driver, int fresh, const char *data, size_t n)
{
    st.steps = 0;
    st.prev = 0;
    st.out_of_memory = st.out_of_steps = 0;
    lua_State *L = kept;
    if (L == NULL || fresh || kept_driver != driver) {
        if (L != NULL) {
            lua_close(L);
        }
        L = kept = open_state(who, driver, data, n);
        kept_driver = driver;
        if (L == NULL) {
            return;
        }
    }
    lua_getglobal(L, "fuzz_driver");
    lua_sethook(L, hook, LUA_MASKCOUNT | LUA_MASKLINE, STEP);
    lua_pushlstring(L, data, n);
    int rc = lua_pcall(L, 1, 0, 0);
    lua_sethook(L, NULL, 0, 0);
    if (rc != 0 && !st.out_of_memory && !st.out_of_steps) {
        const char *msg = lua_tostring(L, -1);
        char buf[2048];
        if (msg != NULL && strncmp(msg, "FINDING: ", 9) == 0) {
            snprintf(buf, sizeof(buf), "%s", msg + 9);
        } else {
            snprintf(buf, sizeof(buf), "an error left the code under test: %s",
                     msg != NULL ? msg : "(not a string)");
        }
        finding(who, buf, data, n);
    }
    lua_settop(L, 0);
    if (fresh || st.out_of_memory || st.out_of_steps) {
        /* A stopped run may have left the state half-way: start over. */
        lua_close(L);
        kept = NULL;
    }
}
