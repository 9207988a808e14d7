/* fuzz_lua.h - the LuaJIT state of the Lua harnesses.
 *
 * A state has ferry's lua/ on package.path, the JIT off (so hooks see
 * every instruction), print silenced, memory capped by the state's
 * allocator (64 MiB) and instructions capped by a count hook (2 M): a
 * runaway is stopped and the input counted as harmless, not as a hang.
 * A line hook turns the Lua lines run into libFuzzer extra counters, so
 * the fuzzer is guided by coverage of Lua code too. */
#ifndef FERRY_FUZZ_LUA_H
#define FERRY_FUZZ_LUA_H

#include <stddef.h>

/* Run DRIVER (a module under spec/fuzz: it returns a function of the
 * input) on data: in a new state when fresh (the input is code that may
 * change what the next one sees), else in the state of the previous
 * input unless that one was stopped.  A driver reports a broken invariant by
 * raising "FINDING: ..."; any error that leaves it is a finding too,
 * unless the state ran out of its memory or instruction budget.  Prints
 * and abort()s on a finding; returns normally otherwise. */
void fuzz_lua_run(const char *who, const char *driver, int fresh, const char *data, size_t n);

#endif
