/* ctl.h - per-request control parameters: the X-Ferry-* request headers
 * (X-Ferry-Session, -Region, -Rotate, -Pool) and the same parameters in a
 * proxy user name (USER-region-eu-session-K), read in one place for the
 * HTTP and SOCKS listeners.  docs/https.md "Control headers" has the
 * contract. */
#ifndef FERRY_CTL_H
#define FERRY_CTL_H

#include "http.h"

#include <stddef.h>

#define CTL_SESSION_MAX 128 /* a session key with its NUL (sticky_key_copy) */
#define CTL_NAME_MAX 65     /* a region or pool name (1..64 bytes) with its NUL */

struct ctl {
    char session[CTL_SESSION_MAX]; /* "" when not given */
    char region[CTL_NAME_MAX];     /* "" when not given */
    char pool[CTL_NAME_MAX];       /* "" when not given */
    unsigned char rotate;          /* 1: re-pin the sticky session now */
    unsigned char rotate_set;      /* rotate was given (0 or 1) */
    unsigned char bad;             /* a value is invalid: the request gets FERRY-1060 */
};

/* Nothing given (all zero: a calloc'd struct is clear too). */
void ctl_clear(struct ctl *k);
/* 1 when the field name is a control header: ferry's own, never forwarded. */
int ctl_is_header(const char *base, struct http_span name);
/* The control headers of m into k (the first of each name counts, an
 * empty one is ignored); every one of them, repeats too, is marked hop. */
void ctl_take_headers(struct http_msg *m, const char *base, struct ctl *k);
/* A user name USER-key-value...: the length of USER, and the parameters
 * into k (set fields only); 0 when it carries no well-formed parameters
 * (k untouched). */
size_t ctl_user_parse(const char *user, size_t len, struct ctl *k);
/* Fields given in over replace those of dst (bad is sticky). */
void ctl_merge(struct ctl *dst, const struct ctl *over);

#endif
