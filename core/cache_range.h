/* cache_range.h: a byte range of a stored 200 (RFC 9110 §14), so a
 * Range request answered from the HTTP cache gets 206 as from nginx's
 * proxy_cache.  Pure functions: no conn, no allocation. */
#ifndef FERRY_CACHE_RANGE_H
#define FERRY_CACHE_RANGE_H

#include <stddef.h>

enum cache_range {
    CRANGE_FULL = 0, /* send the whole body with 200 (no, several or unreadable ranges) */
    CRANGE_PART,     /* send [first, last] with 206 */
    CRANGE_UNSAT     /* 416: the one range starts past the end */
};

/* range: the request's single Range value (NULL: none); if_range: its
 * If-Range (NULL: none); etag / lm: the stored ETag and Last-Modified
 * (NULL: none); len: the stored body's length.  Only one "bytes=" range
 * is served (a list is answered whole, as RFC 9110 §14.2 allows);
 * If-Range must equal the strong ETag or the Last-Modified exactly. */
enum cache_range cache_range_pick(const char *range, size_t rlen, const char *if_range,
                                  size_t irlen, const char *etag, size_t elen, const char *lm,
                                  size_t llen, size_t len, size_t *first, size_t *last);

#endif
