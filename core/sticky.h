/* sticky.h - the sticky-session table (ferry_sticky_* in ferry.h). */
#ifndef FERRY_STICKY_H
#define FERRY_STICKY_H

#include <stddef.h>

/* Free every entry (exit). */
void sticky_free_all(void);

/* A session key as the inbound side keeps it, in room bytes with its NUL
 * (room >= 32): as it is when it fits and holds no NUL, else its first
 * bytes, '#' and a 64-bit digest of the whole key, so long keys stay
 * apart.  Returns the length written. */
size_t sticky_key_copy(char *dst, size_t room, const char *src, size_t len);

#endif
