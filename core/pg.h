/* pg.h - the one PostgreSQL connection of the node (pg.c).  Its FFI
 * surface (ferry_pg_*) is in ferry.h; lua/ferry/pg.lua drives it. */
#ifndef FERRY_PG_H
#define FERRY_PG_H

/* 1 while the session is up and queries wait or are in flight: the
 * drain gives them a moment (main.c) before the daemon stops. */
int pg_pending(void);
/* Close the connection and free everything (the daemon stops). */
void pg_stop_all(void);

#endif
