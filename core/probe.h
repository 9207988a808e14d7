/* probe.h - active health probes (the ferry_probe_* exports are in ferry.h). */
#ifndef FERRY_PROBE_H
#define FERRY_PROBE_H

/* How a probe run ended: its verdict, and the label of ferry_probes_total
 * (metrics.c's metrics_probe_results, in this order). */
enum probe_result {
    PROBE_OK = 0,         /* the proxy passed */
    PROBE_TIMEOUT,        /* the run did not end within its timeout */
    PROBE_REFUSED,        /* the TCP connect was refused */
    PROBE_CONNECT_FAILED, /* the TCP connect failed otherwise */
    PROBE_RESOLVE,        /* the proxy's host did not resolve */
    PROBE_HANDSHAKE,      /* CONNECT / SOCKS5 refused or garbled */
    PROBE_AUTH,           /* the proxy rejected our credentials */
    PROBE_STATUS,         /* the http check got a status it does not expect */
    PROBE_BAD_RESPONSE,   /* not HTTP, or a head too large */
    PROBE_CLOSED,         /* the proxy closed the connection */
    PROBE_FAILED,         /* anything else */
    PROBE_RESULTS
};

/* Stop every probe and free its schedule (exit). */
void probe_stop_all(void);

#endif
