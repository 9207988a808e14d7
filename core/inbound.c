/* inbound.c - listener protocols by name. */
#include "inbound.h"
#include "conn.h"

#include <stddef.h>
#include <string.h>

static const struct inbound_ops *const all[] = {
    &inbound_http, &inbound_admin,
};

const struct inbound_ops *inbound_by_name(const char *name)
{
    for (size_t i = 0; name != NULL && i < sizeof(all) / sizeof(all[0]); i++) {
        if (strcmp(all[i]->name, name) == 0) {
            return all[i];
        }
    }
    return NULL;
}
