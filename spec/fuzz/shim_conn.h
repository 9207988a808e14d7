/* shim_conn.h - what the stubs of shim_conn.c saw during one input. */
#ifndef FERRY_FUZZ_SHIM_CONN_H
#define FERRY_FUZZ_SHIM_CONN_H

struct shim_state {
    int routed;        /* conn_route calls: the head was accepted */
    int closed;        /* conn_close calls */
    int status;        /* status of the last access line (an error answer) */
    const char *code;  /* code of the last log event */
};

extern struct shim_state shim;

#endif
