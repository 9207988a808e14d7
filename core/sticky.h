/* sticky.h - the sticky-session table (ferry_sticky_* in ferry.h). */
#ifndef FERRY_STICKY_H
#define FERRY_STICKY_H

/* Free every entry (exit). */
void sticky_free_all(void);

#endif
