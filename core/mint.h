/* mint.h - TLS toward the client with certificates ferry's CA mints.
 *
 * For an intercepted CONNECT, the client's leg is put on TLS, server
 * side, and shown a leaf certificate for the CONNECT host, minted on
 * first use and kept in a bounded LRU cache in memory (never on disk).
 * The CA comes from tls { ca_cert, ca_key } (mint_use, through the
 * ferry_ca_* exports of ferry.h); a reload with another CA drops the
 * cache. */
#ifndef FERRY_MINT_H
#define FERRY_MINT_H

#include <stddef.h>
#include <stdint.h>

struct leg;
struct ca;

#define MINT_CACHE_DEFAULT 1000
#define MINT_CACHE_MAX 100000

/* A CA is loaded. */
int mint_ready(void);

/* Put the client leg on TLS, server side, for an intercepted CONNECT to
 * `host`: TLS 1.2+, ALPN offers http/1.1 only, certificate minted for
 * the client's SNI name (or for host when the client sends no SNI).
 * SNI rule: an SNI that differs from host (case-insensitive; a trailing
 * dot ignored) fails the handshake (alert unrecognized_name) with a
 * reason tls_leg_error() returns, starting with the FERRY code.
 * The handshake runs inside the leg's first reads (transport_tls.c);
 * the leg's input buffer must be empty (the SSL reads the socket).
 * -1: no CA loaded or out of memory (or the leg is already on TLS: a
 * TLS listener's client cannot be intercepted inside that TLS). */
int mint_leg_accept(struct leg *lg, const char *host);

/* 1 when the leg's handshake failed because the client refused ferry's
 * certificate (alert unknown_ca, bad_certificate, certificate_unknown...). */
int mint_client_refused(const struct leg *lg);

/* Optional, before answering the CONNECT: 0 when a leaf for host is ready
 * (cached, or minted now into the cache, so the handshake finds it);
 * -1 with the reason (FERRY-1082: no CA, a name that is neither a host
 * name nor an address, outside the CA's name constraints) otherwise,
 * when a blind tunnel or an error answer may serve the client better
 * than a handshake bound to fail. */
int mint_prepare(const char *host, char *err, size_t room);

/* Use ca (a reference is taken; NULL: none) with a leaf cache of cap
 * entries.  The same CA as now keeps the cache (a changed cap empties
 * it); another CA replaces the leaf key and drops the cache.  0, or -1
 * with nothing changed (out of memory). */
int mint_use(struct ca *ca, int cap);

/* What /metrics and the console show. */
struct mint_stats {
    uint64_t minted;       /* leaves signed */
    uint64_t hits;         /* handshakes served from the cache */
    uint64_t evictions;    /* leaves dropped because the cache was full */
    uint64_t refused;      /* handshakes the client ended refusing the certificate */
    uint64_t sni_mismatch; /* handshakes refused: SNI other than the CONNECT host */
    uint64_t failed;       /* leaves that could not be minted */
    uint32_t cached;       /* leaves held now */
    uint32_t cap;          /* the cache's bound */
    int ready;             /* a CA is loaded */
};
const struct mint_stats *mint_stats(void);

/* Drop the CA, the cache and the context (stop). */
void mint_free_all(void);

#endif
