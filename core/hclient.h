/* hclient.h - a small non-blocking HTTP/1.1 client on the loop, for Lua.
 *
 * One request is one connection: resolve (c-ares), connect, write the
 * request, read the answer (Content-Length, chunked or until close) and
 * close.  One deadline covers the whole exchange; the body is bounded.
 * The answer goes to Lua through the bridge (lua/ferry/hclient.lua's
 * done), never from inside ferry_hclient_request.  https:// goes through
 * the core's TLS client (transport_tls.c), certificates verified unless
 * the caller's context says otherwise. */
#ifndef FERRY_HCLIENT_H
#define FERRY_HCLIENT_H

#include <stddef.h>
#include <stdint.h>

/* Requests in flight at once; one more is refused (-1). */
#define HCLIENT_MAX_INFLIGHT 64
/* The largest answer body kept; a larger one ends the request (body_limit). */
#define HCLIENT_MAX_BODY (1024 * 1024)
/* The largest head (status line and headers) accepted. */
#define HCLIENT_MAX_HEAD (16 * 1024)

/* What Lua reads in done(): valid only during that call. */
struct ferry_hclient_result {
    int64_t id;
    int status;             /* the HTTP status, 0 when there was no answer */
    const char *error;      /* NULL, or "refused", "timeout", "resolve", "reset",
                             * "tls", "garbage", "body_limit", "head_limit", "local" */
    const char *detail;     /* a sentence about the error (no secrets) */
    const char *headers;    /* "name: value\n" lines, names lower-case */
    size_t headers_len;
    const char *body;
    size_t body_len;
    double elapsed_ms;
};

/* A TLS client context for https:// requests: verify the peer (against
 * the PEM file ca, or the system store when NULL) or not.  Made once per
 * setting (the CA file is read now: call it at config time); returns its
 * index for ferry_hclient_request, or -1 with *err. */
int ferry_hclient_tls(int verify, const char *ca, const char **err);
/* Start a request to host:port, over TLS with context tls (-1: plain;
 * the certificate must name host).  head: the request line and headers
 * without the final empty line (the client adds Host, Connection: close
 * and Content-Length).  Returns its id (> 0), -1 when HCLIENT_MAX_INFLIGHT
 * are in flight, -2 when memory ran out or tls is unknown. */
int64_t ferry_hclient_request(const char *host, int port, const char *head, const char *body,
                              size_t body_len, double timeout, int tls);
/* Requests in flight now. */
int ferry_hclient_inflight(void);
/* Drop request id: its done() will not run. 1 if it was in flight. */
int ferry_hclient_cancel(int64_t id);
/* Stop: close and free every request without calling back. */
void hclient_free_all(void);

#endif
