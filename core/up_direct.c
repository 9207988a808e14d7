/* up_direct.c - the destination itself is the first hop: nothing to say. */
#include "conn.h"
#include "upstream.h"

static int direct_start(struct conn *c)
{
    (void)c;
    return UP_DONE;
}

static int direct_input(struct conn *c)
{
    (void)c;
    return UP_DONE;
}

const struct upstream_ops up_direct = { "direct", direct_start, direct_input };
