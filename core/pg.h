/* pg.h - the one PostgreSQL connection of the node (pg.c).  Its FFI
 * surface (ferry_pg_*) is in ferry.h; lua/ferry/pg.lua drives it. */
#ifndef FERRY_PG_H
#define FERRY_PG_H

/* Close the connection and free everything (the daemon stops). */
void pg_stop_all(void);

#endif
