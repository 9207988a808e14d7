/* ctl.c - the control parameters of a request: which names are control
 * headers (the one list), how their values are checked, and the user
 * name grammar shared by Proxy-Authorization and SOCKS user names:
 *
 *   username = USER 1*( "-" key "-" value )
 *   key      = "region" / "session" / "pool" / "rotate"
 *
 * USER is everything before the first "-key-"; a value runs to the next
 * "-key-" or the end.  So neither USER nor a value may contain one of
 * the four markers, and "alice-session-K" keeps meaning what it always
 * did. */
#include "ctl.h"
#include "sticky.h"

#include <string.h>
#include <strings.h>

enum ctl_key { CTL_REGION = 0, CTL_SESSION, CTL_POOL, CTL_ROTATE, CTL_NKEYS };

/* Parameter names in user names, by enum ctl_key. */
static const char *const user_keys[CTL_NKEYS] = { "region", "session", "pool", "rotate" };
/* The control headers, by enum ctl_key. */
static const char *const header_names[CTL_NKEYS] = { "X-Ferry-Region", "X-Ferry-Session",
                                                     "X-Ferry-Pool", "X-Ferry-Rotate" };

void ctl_clear(struct ctl *k)
{
    memset(k, 0, sizeof(*k));
}

/* A region as proxies declare it: 1..64 bytes, no control characters. */
static int region_ok(const char *v, size_t n)
{
    if (n == 0 || n >= CTL_NAME_MAX) {
        return 0;
    }
    for (size_t i = 0; i < n; i++) {
        unsigned char ch = (unsigned char)v[i];
        if (ch < 0x20 || ch == 0x7f) {
            return 0;
        }
    }
    return 1;
}

/* A pool name as config.lua allows it: 1..64 letters, digits, _ . - */
static int pool_ok(const char *v, size_t n)
{
    if (n == 0 || n >= CTL_NAME_MAX) {
        return 0;
    }
    for (size_t i = 0; i < n; i++) {
        char ch = v[i];
        if (!((ch >= 'a' && ch <= 'z') || (ch >= 'A' && ch <= 'Z') || (ch >= '0' && ch <= '9') ||
              ch == '_' || ch == '.' || ch == '-')) {
            return 0;
        }
    }
    return 1;
}

static void set_name(struct ctl *k, char *dst, int ok, const char *v, size_t n)
{
    if (!ok) {
        k->bad = 1;
        return;
    }
    memcpy(dst, v, n);
    dst[n] = '\0';
}

static void ctl_set(struct ctl *k, enum ctl_key key, const char *v, size_t n)
{
    switch (key) {
    case CTL_REGION:
        set_name(k, k->region, region_ok(v, n), v, n);
        break;
    case CTL_POOL:
        set_name(k, k->pool, pool_ok(v, n), v, n);
        break;
    case CTL_SESSION:
        sticky_key_copy(k->session, sizeof(k->session), v, n);
        break;
    case CTL_ROTATE:
        if (n == 1 && (v[0] == '0' || v[0] == '1')) {
            k->rotate = (unsigned char)(v[0] - '0');
            k->rotate_set = 1;
        } else {
            k->bad = 1;
        }
        break;
    default:
        break;
    }
}

static int header_key(const char *base, struct http_span name)
{
    /* Every control header starts so: one compare skips the rest. */
    if (name.len < 8 || strncasecmp(base + name.off, "X-Ferry-", 8) != 0) {
        return -1;
    }
    for (int i = 0; i < CTL_NKEYS; i++) {
        size_t n = strlen(header_names[i]);
        if (name.len == n && strncasecmp(base + name.off, header_names[i], n) == 0) {
            return i;
        }
    }
    return -1;
}

int ctl_is_header(const char *base, struct http_span name)
{
    return header_key(base, name) >= 0;
}

void ctl_take_headers(struct http_msg *m, const char *base, struct ctl *k)
{
    unsigned seen = 0;
    for (unsigned i = 0; i < m->nfields; i++) {
        struct http_field *f = &m->fields[i];
        int key = header_key(base, f->name);
        if (key < 0) {
            continue;
        }
        f->hop = 1;
        if (!(seen & (1u << key)) && f->value.len > 0) {
            ctl_set(k, (enum ctl_key)key, base + f->value.off, f->value.len);
            seen |= 1u << key;
        }
    }
}

/* The key of a "-key-" marker at u[i..n), with its length in *mlen; -1
 * when none starts there. */
static int marker_at(const char *u, size_t n, size_t i, size_t *mlen)
{
    if (u[i] != '-') {
        return -1;
    }
    for (int k = 0; k < CTL_NKEYS; k++) {
        size_t kl = strlen(user_keys[k]);
        if (i + kl + 2 <= n && memcmp(u + i + 1, user_keys[k], kl) == 0 && u[i + 1 + kl] == '-') {
            *mlen = kl + 2;
            return k;
        }
    }
    return -1;
}

size_t ctl_user_parse(const char *u, size_t n, struct ctl *out)
{
    size_t i = 1, mlen = 0;
    int key = -1;
    while (i < n && (key = marker_at(u, n, i, &mlen)) < 0) {
        i++;
    }
    if (key < 0) {
        return 0;
    }
    size_t base = i;
    struct ctl k;
    ctl_clear(&k);
    while (key >= 0) {
        size_t v = i + mlen, e = v, next_len = 0;
        int next = -1;
        while (e < n && (next = marker_at(u, n, e, &next_len)) < 0) {
            e++;
        }
        if (e == v) {
            return 0; /* an empty value: not parameters */
        }
        ctl_set(&k, (enum ctl_key)key, u + v, e - v); /* a repeated key: the last wins */
        key = next;
        i = e;
        mlen = next_len;
    }
    ctl_merge(out, &k);
    return base;
}

void ctl_merge(struct ctl *dst, const struct ctl *over)
{
    if (over->session[0] != '\0') {
        memcpy(dst->session, over->session, sizeof(dst->session));
    }
    if (over->region[0] != '\0') {
        memcpy(dst->region, over->region, sizeof(dst->region));
    }
    if (over->pool[0] != '\0') {
        memcpy(dst->pool, over->pool, sizeof(dst->pool));
    }
    if (over->rotate_set) {
        dst->rotate = over->rotate;
        dst->rotate_set = 1;
    }
    dst->bad |= over->bad;
}
