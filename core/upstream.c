/* upstream.c - the one table from a proxy's scheme to its connector and
 * the facts the rest of the core asks about it. */
#include "upstream.h"

#include <string.h>

static const struct upstream_scheme schemes[FERRY_SCHEMES] = {
    [FERRY_SCHEME_DIRECT]  = { "direct", &up_direct, 0, 0, 0, 0 },
    [FERRY_SCHEME_HTTP]    = { "http", &up_http, 8080, 0, 1, 1 },
    [FERRY_SCHEME_SOCKS5]  = { "socks5", &up_socks5, 1080, 0, 0, 0 },
    [FERRY_SCHEME_HTTPS]   = { "https", &up_http, 443, 1, 1, 1 },
    [FERRY_SCHEME_SOCKS4]  = { "socks4", &up_socks4, 1080, 0, 0, 0 },
    [FERRY_SCHEME_SOCKS4A] = { "socks4a", &up_socks4a, 1080, 0, 0, 0 },
    [FERRY_SCHEME_BACKEND] = { "backend", &up_backend, 80, 0, 0, 1, 1, "http" },
    [FERRY_SCHEME_BACKEND_TLS] = { "backend_tls", &up_backend, 443, 1, 0, 1, 1, "https" },
};

const struct upstream_scheme *upstream_scheme(unsigned scheme)
{
    return scheme < FERRY_SCHEMES && schemes[scheme].ops != NULL ? &schemes[scheme] : NULL;
}

const struct upstream_ops *upstream_for(unsigned scheme)
{
    const struct upstream_scheme *s = upstream_scheme(scheme);
    return s != NULL ? s->ops : NULL;
}

const char *upstream_name(unsigned scheme)
{
    const struct upstream_scheme *s = upstream_scheme(scheme);
    return s != NULL ? s->name : "?";
}

int upstream_uses_tls(unsigned scheme)
{
    const struct upstream_scheme *s = upstream_scheme(scheme);
    return s != NULL && s->tls;
}

int upstream_absolute(unsigned scheme)
{
    const struct upstream_scheme *s = upstream_scheme(scheme);
    return s != NULL && s->absolute;
}

int upstream_is_backend(unsigned scheme)
{
    const struct upstream_scheme *s = upstream_scheme(scheme);
    return s != NULL && s->backend;
}

int upstream_shared(unsigned scheme)
{
    const struct upstream_scheme *s = upstream_scheme(scheme);
    return s != NULL && (s->absolute || s->backend);
}

const char *upstream_url_name(unsigned scheme)
{
    const struct upstream_scheme *s = upstream_scheme(scheme);
    return s == NULL ? "?" : s->url != NULL ? s->url : s->name;
}

void hop_reset(struct hop *h)
{
    memset(&h->priv, 0, sizeof(h->priv));
    h->fail_kind = FERRY_FAIL_KINDS;
    h->fail_err = FERR_HANDSHAKE_FAILED;
    h->fail_target = 0;
}

void hop_fini(struct hop *h)
{
    if (h->ops != NULL && h->ops->fini != NULL) {
        h->ops->fini(h);
    }
}
