/* up_direct.c - the destination itself is the first hop: nothing to say. */
#include "upstream.h"

static int direct_start(struct hop *h)
{
    (void)h;
    return UP_DONE;
}

static int direct_input(struct hop *h)
{
    (void)h;
    return UP_DONE;
}

const struct upstream_ops up_direct = {
    .name = "direct",
    .start = direct_start,
    .input = direct_input,
};
