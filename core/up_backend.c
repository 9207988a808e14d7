/* up_backend.c - a backend of a reverse pool: the hop is the destination.
 *
 * The socket goes to the backend's own address (TLS first for an
 * https:// backend, as for an https:// proxy: upstream.c's table), and
 * the request follows in origin form with nothing said before it. */
#include "upstream.h"

static int backend_start(struct hop *h)
{
    (void)h;
    return UP_DONE;
}

static int backend_input(struct hop *h)
{
    (void)h;
    return UP_DONE;
}

const struct upstream_ops up_backend = {
    .name = "backend",
    .start = backend_start,
    .input = backend_input,
    .hello = up_http_hello,
    .hello_input = up_http_hello_input,
    .hello_what = "an HTTP request",
};
