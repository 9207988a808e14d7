/* proxy.h - the registry of upstream proxies and their passive accounting. */
#ifndef FERRY_PROXY_H
#define FERRY_PROXY_H

#include "ewma.h" /* latency_ewma_ms moves only through ewma_latency() */
#include "ferry.h"

#include <sys/socket.h>

/* C-side view of a proxy: the public stats first, so a struct proxy *
 * is also a struct ferry_proxy * for Lua. */
struct proxy {
    struct ferry_proxy pub;      /* rw: stats shared with Lua */
    char *key;                   /* ro: identity across reloads */
    char *host;                  /* ro: proxy host (name or literal) */
    int port;                    /* ro */
    char *user;                  /* ro: NULL when no credentials */
    char *pass;                  /* ro */
    char *auth_header;           /* ro: "Proxy-Authorization: Basic ...\r\n" or NULL */
    char *extra_headers;         /* ro: "Name: value\r\n"... or NULL */
    char *display;               /* ro: scheme://host:port, never credentials */
    char *label;                 /* ro: configured id or the number: X-Ferry-Proxy */
    double health_interval;      /* ro: seconds between passive-recovery trials */
    struct probe *probe;         /* private: probe.c's schedule, or NULL */
    unsigned passive_fails;      /* private: failed trials while down (backoff) */
    uint64_t target_failures;    /* ro: attempts the destination failed (conn_report_target) */
    struct sockaddr_storage addr; /* ro: literal address, valid if has_addr */
    socklen_t addr_len;          /* ro */
    struct ssl_ctx_st *tls_ctx;  /* ro: https:// proxies: client context, or NULL */
    char *tls_name;              /* ro: name for SNI and the certificate check; NULL: host */
    struct proxy *next_by_key;   /* private: hash chain of the key index */
    unsigned has_addr:1;         /* ro: host was an IP literal */
    unsigned tls_verify:1;       /* ro: check the proxy's certificate and name */
    unsigned needs_answer:1;     /* private: real traffic took it down (timeouts, resets,
                                  * garbled handshakes): until it is up again, a tcp probe
                                  * passes only when the proxy answers its protocol */
    unsigned probe_elsewhere:1;  /* private: the fleet gave its probes to another node
                                  * (probe.c skips its runs; ferry_probe_duty) */
    signed char probe_verdict;   /* private: up (1) or down (0) after the last local probe,
                                  * -1 none since this node took the duty */
};

struct ssl_ctx_st;

struct proxy *proxy_by_id(uint32_t id);
void proxy_attempt_begin(struct proxy *p);
void proxy_attempt_end(struct proxy *p);
void proxy_success(struct proxy *p, double latency_ms);
void proxy_failure(struct proxy *p, enum ferry_fail_kind kind);
void proxy_free_all(void);

/* Standard base64 encoding into out (NUL-terminated); returns length. */
size_t base64_encode(const unsigned char *in, size_t n, char *out, size_t room);
/* Decode; returns length or -1 on invalid input. */
long base64_decode(const char *in, size_t n, unsigned char *out, size_t room);

#endif
