/* cache_range.c: which part of a stored body a Range request gets. */
#include "cache_range.h"

#include <stdint.h>
#include <string.h>
#include <strings.h>

/* Digits at p[*i..n): the value, or -1 (none, or over 2^62). */
static int64_t digits(const char *p, size_t n, size_t *i)
{
    int64_t v = 0;
    size_t s = *i;
    while (*i < n && p[*i] >= '0' && p[*i] <= '9') {
        if (v > (INT64_MAX - 9) / 10 / 2) {
            return -1;
        }
        v = v * 10 + (p[*i] - '0');
        (*i)++;
    }
    return *i > s ? v : -1;
}

static int same(const char *a, size_t an, const char *b, size_t bn)
{
    return a != NULL && b != NULL && an == bn && memcmp(a, b, an) == 0;
}

enum cache_range cache_range_pick(const char *range, size_t rlen, const char *if_range,
                                  size_t irlen, const char *etag, size_t elen, const char *lm,
                                  size_t llen, size_t len, size_t *first, size_t *last)
{
    if (range == NULL || rlen < 7 || strncasecmp(range, "bytes=", 6) != 0) {
        return CRANGE_FULL;
    }
    if (if_range != NULL) {
        /* A weak ETag never matches (RFC 9110 §13.1.5). */
        int strong = irlen > 0 && if_range[0] == '"' && same(if_range, irlen, etag, elen);
        if (!strong && !same(if_range, irlen, lm, llen)) {
            return CRANGE_FULL;
        }
    }
    size_t i = 6;
    while (i < rlen && (range[i] == ' ' || range[i] == '\t')) {
        i++;
    }
    int64_t a = -1, b = -1;
    if (i < rlen && range[i] == '-') {
        i++;
        b = digits(range, rlen, &i); /* a suffix: the last b bytes */
        if (b < 0) {
            return CRANGE_FULL;
        }
    } else {
        a = digits(range, rlen, &i);
        if (a < 0 || i >= rlen || range[i] != '-') {
            return CRANGE_FULL;
        }
        i++;
        if (i < rlen && range[i] >= '0' && range[i] <= '9') {
            b = digits(range, rlen, &i);
            if (b < 0 || b < a) {
                return CRANGE_FULL; /* invalid: ignored */
            }
        }
    }
    while (i < rlen && (range[i] == ' ' || range[i] == '\t')) {
        i++;
    }
    if (i != rlen) {
        return CRANGE_FULL; /* a list, or trailing bytes: the whole body */
    }
    if (a < 0) {
        if (b == 0 || len == 0) {
            return CRANGE_UNSAT;
        }
        *first = (size_t)b >= len ? 0 : len - (size_t)b;
        *last = len - 1;
        return CRANGE_PART;
    }
    if ((uint64_t)a >= len) {
        return CRANGE_UNSAT;
    }
    *first = (size_t)a;
    *last = (b < 0 || (uint64_t)b >= len) ? len - 1 : (size_t)b;
    return CRANGE_PART;
}
