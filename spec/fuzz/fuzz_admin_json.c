/* fuzz_admin_json.c - admin request bodies through the admin plane's one
 * JSON-object decoder (admin.decode_object in lua/ferry/admin.lua) and the
 * validators built on it (the broker's lease request and feedback, the
 * inventory API's proxy fields and entries), in a fresh LuaJIT state per
 * input (fuzz_lua.c).
 *
 * The checks live in admin_json_driver.lua: nothing raises; a refusal is
 * a 400 with a FERRY-7xxx code and a message; what is accepted holds no
 * JSON null and nothing its schema refuses (types, lengths, enums,
 * ranges), and a proxy entry's display never shows its password. */
#include "fuzz_lua.h"

#include <stddef.h>
#include <stdint.h>

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    fuzz_lua_run("fuzz_admin_json", "admin_json_driver", 0, (const char *)data, size);
    return 0;
}
