/* resolve.h - asynchronous DNS on the loop (c-ares), with a small cache. */
#ifndef FERRY_RESOLVE_H
#define FERRY_RESOLVE_H

#include <sys/socket.h>

/* status 0: sa/len hold an address with the port set; otherwise an error. */
typedef void (*resolve_cb)(void *arg, int status, const struct sockaddr *sa, socklen_t len);

struct resolve_req;

int resolve_init(void);
void resolve_fini(void);
/* Fill *ss for an IP literal; 1 if host was one. */
int resolve_literal(const char *host, int port, struct sockaddr_storage *ss, socklen_t *len);
/* A fresh cached answer, if any; 1 on hit. */
int resolve_cached(const char *host, int port, struct sockaddr_storage *ss, socklen_t *len);
/* Start a lookup; cb runs later from the loop, never from inside this call.
 * Returns NULL when the lookup could not start. */
struct resolve_req *resolve_start(const char *host, int port, resolve_cb cb, void *arg);
/* The callback will not run; safe to call until it has run. */
void resolve_cancel(struct resolve_req *r);
const char *resolve_strerror(int status);

#endif
