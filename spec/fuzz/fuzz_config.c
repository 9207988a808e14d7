/* fuzz_config.c - the config loader (lua/ferry/config.lua) on fuzzed
 * config text, in a LuaJIT state kept across inputs as the daemon keeps
 * its own across reloads (fuzz_lua.c: a memory cap and an instruction cap,
 * so a config that loops or allocates without end is stopped, counted as
 * harmless, and its state replaced).
 *
 * The checks live in config_driver.lua: load_string never raises; a
 * refused config has a "config.lua:LINE: " message; bytecode is refused
 * (LuaJIT does not verify it); an accepted one keeps
 * the promises the runtime relies on (listeners, ports, pool names, proxy
 * URLs and their log-safe display, header values that cannot split a
 * head, exchanges naming declared pools); and no config, accepted or
 * refused, changes the string, table or math library it shares with the
 * running daemon.  The same bytes also go to
 * url.parse, whose errors must never echo a password. */
#include "fuzz_lua.h"

#include <stddef.h>
#include <stdint.h>

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    fuzz_lua_run("fuzz_config", "config_driver", 0, (const char *)data, size);
    return 0;
}
