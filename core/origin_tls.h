/* origin_tls.h - TLS ferry originates toward the destination itself.
 *
 * A request whose c->origin_tls is set (an absolute https:// target, an
 * exchange with upgrade_tls, or a request read inside an intercepted
 * tunnel) reaches its first hop as a tunnel (CONNECT, SOCKS, or TCP to
 * the origin), then runs a TLS client handshake with the origin on the
 * up leg before the request head goes out in origin form.  Which CA
 * store, whether to verify and which SNI name come from the request's
 * exchange (ferry_exchange_set_tls); a request of no exchange verifies
 * against the system store with the host as the name. */
#ifndef FERRY_ORIGIN_TLS_H
#define FERRY_ORIGIN_TLS_H

#include <stdint.h>

struct conn;

/* Put c->up on TLS toward c->host for c->exchange's settings and count
 * the handshake.  -1: out of memory. */
int origin_tls_connect(struct conn *c);
/* A kept originated connection carries another request. */
void origin_tls_count_reuse(void);
/* A handshake failed because the certificate did not verify. */
void origin_tls_count_verify_failure(void);
/* Free every context and setting (stop). */
void origin_tls_free_all(void);

#endif
